//! `StreamDecoder`: frames out of a byte stream delivered in pieces of any size.
//!
//! ```text
//! network ──chunk──▶ feed() ──copies into──▶ [ buffer: start..end ]
//!                                               │ whole frame?
//!                                   next_frame() ◀── header checked, payload checksum
//!                                               │   verified, record parsed (borrows buffer)
//!                     frame consumed on the next feed()/next_frame()
//! ```
//!
//! The decoder owns one buffer given at construction (a `&mut [u8]`, an array, or
//! with `std` a `Vec<u8>`); it never allocates per frame. Use a buffer of at least
//! [`crate::MAX_FRAME_LEN`] bytes to accept every valid frame; a frame longer than the
//! buffer is [`Error::StreamFrameTooLarge`]. A chunk larger than the free space is
//! taken in part: `feed` returns how much it took, so the caller loops:
//!
//! ```
//! # use core_format::{StreamDecoder, MAX_FRAME_LEN};
//! # fn handle(_: core_format::Frame<'_>) {}
//! # fn run(chunks: &[&[u8]]) -> Result<(), core_format::Error> {
//! let mut buf = vec![0u8; MAX_FRAME_LEN];
//! let mut dec = StreamDecoder::new(&mut buf[..]);
//! for chunk in chunks {
//!     let mut input = *chunk;
//!     while !input.is_empty() {
//!         let n = dec.feed(input);
//!         input = &input[n..];
//!         while let Some(frame) = dec.next_frame()? {
//!             handle(frame);
//!         }
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Errors are sticky: a stream whose framing is lost cannot be resynchronised, so
//! after the first error every call returns it again. [`StreamDecoder::stream_offset`]
//! gives the stream offset of the frame being decoded, for the caller's error report.

use crate::error::Error;
use crate::header::{FrameHeader, FrameHeaderView, HEADER_LEN};
use crate::record::{parse_verified, Frame};

/// Decodes frames from chunks of a byte stream (see the module docs).
#[derive(Debug)]
pub struct StreamDecoder<B> {
    buf: B,
    start: usize,
    end: usize,
    /// Bytes of the frame handed out by the last `next_frame`, dropped lazily.
    pending_consume: usize,
    /// Stream offset of `buf[start]`.
    offset: u64,
    failed: Option<Error>,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> StreamDecoder<B> {
    /// A decoder using `buf` as its only storage.
    pub fn new(buf: B) -> Self {
        StreamDecoder {
            buf,
            start: 0,
            end: 0,
            pending_consume: 0,
            offset: 0,
            failed: None,
        }
    }

    /// Buffer capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.buf.as_ref().len()
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered_len(&self) -> usize {
        self.end - self.start - self.pending_consume
    }

    /// True when no partial frame is buffered (a clean place for the stream to end).
    pub fn is_idle(&self) -> bool {
        self.buffered_len() == 0
    }

    /// Stream offset of the next (or failing) frame.
    pub fn stream_offset(&self) -> u64 {
        self.offset + self.pending_consume as u64
    }

    fn consume_pending(&mut self) {
        self.start += self.pending_consume;
        self.offset += self.pending_consume as u64;
        self.pending_consume = 0;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Copies as much of `data` as fits; returns how many bytes were taken. Takes
    /// nothing after an error.
    pub fn feed(&mut self, data: &[u8]) -> usize {
        if self.failed.is_some() {
            return 0;
        }
        self.consume_pending();
        let cap = self.capacity();
        if cap - self.end < data.len() && self.start > 0 {
            let (start, end) = (self.start, self.end);
            self.buf.as_mut().copy_within(start..end, 0);
            self.end -= start;
            self.start = 0;
        }
        let n = data.len().min(cap - self.end);
        self.buf.as_mut()[self.end..self.end + n].copy_from_slice(&data[..n]);
        self.end += n;
        n
    }

    /// The next whole frame, `Ok(None)` if more input is needed. The frame borrows the
    /// decoder's buffer; it is consumed by the next call to `feed` or `next_frame`.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, Error> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        self.consume_pending();
        match self.frame_len() {
            Ok(Some(len)) => {
                let bytes = &self.buf.as_ref()[self.start..self.start + len];
                match parse_checked(bytes) {
                    Ok(frame) => {
                        self.pending_consume = len;
                        Ok(Some(frame))
                    }
                    Err(e) => {
                        self.failed = Some(e);
                        Err(e)
                    }
                }
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.failed = Some(e);
                Err(e)
            }
        }
    }

    /// Length of the frame at `start` if it is wholly buffered.
    fn frame_len(&self) -> Result<Option<usize>, Error> {
        let avail = &self.buf.as_ref()[self.start..self.end];
        if avail.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = FrameHeader::parse(&FrameHeaderView::new_checked(avail)?)?;
        let len = header.frame_len();
        if len > self.capacity() {
            return Err(Error::StreamFrameTooLarge {
                frame_len: len as u64,
                capacity: self.capacity() as u64,
            });
        }
        Ok((avail.len() >= len).then_some(len))
    }
}

fn parse_checked(bytes: &[u8]) -> Result<Frame<'_>, Error> {
    let header = FrameHeader::parse(&FrameHeaderView::new_checked(bytes)?)?;
    let payload = &bytes[HEADER_LEN..];
    Ok(Frame {
        header,
        record: parse_verified(&header, payload)?,
    })
}

#[cfg(feature = "std")]
impl StreamDecoder<std::vec::Vec<u8>> {
    /// A decoder with a heap buffer of [`crate::MAX_FRAME_LEN`] bytes.
    pub fn with_max_frame() -> Self {
        StreamDecoder::new(std::vec![0u8; crate::MAX_FRAME_LEN])
    }
}
