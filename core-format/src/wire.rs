//! Bounded little-endian cursors used by every payload parser and emitter.
//!
//! [`Reader`] never reads past its input: every read checks the remaining length first
//! and fails with [`Error::RecordTruncated`]. [`Writer`] never writes past its output:
//! a write that does not fit sets a sticky overflow flag that [`Writer::finish`] turns
//! into [`Error::EmitBufferTooSmall`], so emit code stays linear and cannot panic.

use crate::error::Error;

/// A cursor over a payload being parsed.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Takes the next `len` bytes, bounded against the remaining input.
    pub(crate) fn bytes(&mut self, len: usize) -> Result<&'a [u8], Error> {
        if len > self.remaining() {
            return Err(Error::RecordTruncated {
                offset: self.pos as u32,
                needed: len as u64,
            });
        }
        let out = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, Error> {
        Ok(i32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A boolean byte: 0 or 1, anything else is refused.
    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, Error> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(Error::RecordBadValue {
                field,
                value: u64::from(v),
            }),
        }
    }

    /// A `u32` length prefix followed by that many bytes; the length is checked
    /// against `max` before it is used, then against the remaining input.
    pub(crate) fn len_prefixed(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<&'a [u8], Error> {
        let len = self.u32()?;
        if len as usize > max {
            return Err(Error::RecordOverCapacity {
                field,
                len: u64::from(len),
                max: max as u64,
            });
        }
        self.bytes(len as usize)
    }

    /// Fails unless the input has been consumed exactly.
    pub(crate) fn finish(&self) -> Result<(), Error> {
        if self.remaining() != 0 {
            return Err(Error::RecordTrailingBytes {
                extra: self.remaining() as u32,
            });
        }
        Ok(())
    }
}

/// A cursor over an output buffer being emitted into.
#[derive(Debug)]
pub(crate) struct Writer<'o> {
    buf: &'o mut [u8],
    pos: usize,
    overflow: bool,
}

impl<'o> Writer<'o> {
    pub(crate) fn new(buf: &'o mut [u8]) -> Self {
        Writer {
            buf,
            pos: 0,
            overflow: false,
        }
    }

    pub(crate) fn bytes(&mut self, data: &[u8]) {
        match self
            .buf
            .get_mut(self.pos..self.pos.saturating_add(data.len()))
        {
            Some(dst) if !self.overflow => {
                dst.copy_from_slice(data);
                self.pos += data.len();
            }
            _ => self.overflow = true,
        }
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }

    pub(crate) fn i32(&mut self, v: i32) {
        self.bytes(&v.to_le_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    pub(crate) fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    /// Writes a `u32` length prefix and the bytes. The caller has already checked
    /// the length against the field's capacity.
    pub(crate) fn len_prefixed(&mut self, data: &[u8]) {
        self.u32(data.len() as u32);
        self.bytes(data);
    }

    /// Number of bytes written, or [`Error::EmitBufferTooSmall`] if anything did not fit.
    pub(crate) fn finish(self, needed: usize) -> Result<usize, Error> {
        if self.overflow {
            return Err(Error::EmitBufferTooSmall {
                needed: needed as u64,
                available: self.buf.len() as u64,
            });
        }
        Ok(self.pos)
    }
}

/// Checks a variable-length field against its capacity before emitting it.
pub(crate) fn check_cap(field: &'static str, len: usize, max: usize) -> Result<(), Error> {
    if len > max {
        return Err(Error::RecordOverCapacity {
            field,
            len: len as u64,
            max: max as u64,
        });
    }
    Ok(())
}

impl Writer<'_> {
    /// Lets `f` emit into the rest of the buffer (used for table entries).
    pub(crate) fn emit_with(
        &mut self,
        f: impl FnOnce(&mut [u8]) -> Result<usize, Error>,
    ) -> Result<(), Error> {
        if self.overflow {
            return Ok(());
        }
        let rest = self.buf.get_mut(self.pos..).unwrap_or_default();
        match f(rest) {
            Ok(n) => {
                self.pos += n;
                Ok(())
            }
            Err(Error::EmitBufferTooSmall { .. }) => {
                self.overflow = true;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

impl<'a> Reader<'a> {
    /// Lets `f` parse from the rest of the input; `f` returns how much it consumed.
    pub(crate) fn parse_with<T>(
        &mut self,
        f: impl FnOnce(&'a [u8]) -> Result<(T, usize), Error>,
    ) -> Result<T, Error> {
        let rest = &self.buf[self.pos..];
        let (value, used) = f(rest).map_err(|e| match e {
            Error::RecordTruncated { offset, needed } => Error::RecordTruncated {
                offset: offset.saturating_add(self.pos as u32),
                needed,
            },
            other => other,
        })?;
        self.pos += used.min(rest.len());
        Ok(value)
    }

    /// Bytes consumed so far.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// The input from `from` up to the current position.
    pub(crate) fn consumed_since(&self, from: usize) -> &'a [u8] {
        &self.buf[from.min(self.pos)..self.pos]
    }
}

/// Parses a whole payload with `f`, refusing trailing bytes.
pub(crate) fn parse_all<'a, T>(
    payload: &'a [u8],
    f: impl FnOnce(&mut Reader<'a>) -> Result<T, Error>,
) -> Result<T, Error> {
    let mut r = Reader::new(payload);
    let value = f(&mut r)?;
    r.finish()?;
    Ok(value)
}

/// Emits a payload of exactly `len` bytes with `f` into the start of `out`.
pub(crate) fn emit_all(
    out: &mut [u8],
    len: usize,
    f: impl FnOnce(&mut Writer<'_>) -> Result<(), Error>,
) -> Result<usize, Error> {
    let available = out.len();
    let Some(dst) = out.get_mut(..len) else {
        return Err(Error::EmitBufferTooSmall {
            needed: len as u64,
            available: available as u64,
        });
    };
    let mut w = Writer::new(dst);
    f(&mut w)?;
    let n = w.finish(len)?;
    debug_assert_eq!(n, len, "buffer_len disagrees with emit");
    Ok(n)
}
