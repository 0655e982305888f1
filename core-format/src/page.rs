//! `PageRun`: the contents of up to 1024 consecutive pages.
//!
//! Payload layout: the stored data first, then a 24-byte trailer (`n` = payload
//! length − 24):
//!
//! | off | size | field |
//! |---|---|---|
//! | 0 | n | data: Raw `npages * 4096` bytes; Zero none; Lz4 1..`npages * 4096` bytes |
//! | n | 8 | start address (u64, page aligned) |
//! | n+8 | 4 | npages (u32, 1..=1024) |
//! | n+12 | 4 | encoding (u32, [`PageEncoding`]) |
//! | n+16 | 8 | data checksum: xxh3-64 of the data bytes |
//!
//! Why a trailer: the data checksum is the xxh3 of `payload[..n]` and the header's
//! payload checksum is the xxh3 of the whole payload, which *starts* with those same
//! bytes. One streaming xxh3 pass over the data gives the first (`digest()` does not
//! consume the state), then the trailer is fed and the second is read: both checksums
//! for the price of one pass, on the encoder's hot path and on the decoder's
//! ([`verify_page_run_payload`]). Page data also lands at frame offset 32.
//!
//! The data checksum travels with the run so that a run kept apart from its frame
//! (the backup's staged epoch, an image rewritten by `inspect`) stays checkable.
//! [`PageRun::parse`] verifies it. LZ4 data is only carried here; whether it
//! decompresses to exactly `npages * 4096` bytes is checked by the std consumer
//! ([`PageRun::decode_into`] with the `std` feature).

use static_assertions::const_assert_eq;
use xxhash_rust::xxh3::{xxh3_64, Xxh3Default};

use crate::error::Error;
use crate::wire::{emit_all, parse_all};

/// Page size in bytes: the only one this format handles.
pub const PAGE_SIZE: usize = 4096;
/// Most pages in one run (4 MiB); the encoder splits longer runs.
pub const MAX_RUN_PAGES: u32 = 1024;
/// Length of the trailer of a PageRun payload.
pub const PAGE_RUN_TRAILER_LEN: usize = 24;
const_assert_eq!(PAGE_RUN_TRAILER_LEN, 8 + 4 + 4 + 8);
static_assertions::const_assert!(
    PAGE_RUN_TRAILER_LEN + MAX_RUN_PAGES as usize * PAGE_SIZE <= crate::MAX_PAYLOAD_BYTES as usize
);

/// How a run's pages are stored. 0 is reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum PageEncoding {
    /// The pages' bytes as they are.
    Raw = 1,
    /// Every page is zero; no data.
    Zero = 2,
    /// The pages' bytes as one LZ4 block.
    Lz4 = 3,
}

impl PageEncoding {
    /// The encoding for a raw tag.
    pub fn from_raw(raw: u32) -> Result<Self, Error> {
        Ok(match raw {
            1 => PageEncoding::Raw,
            2 => PageEncoding::Zero,
            3 => PageEncoding::Lz4,
            _ => {
                return Err(Error::RecordBadTag {
                    field: "page_run.encoding",
                    value: raw,
                })
            }
        })
    }
}

/// xxh3-64 of a run's stored data (the empty slice for Zero runs).
pub fn data_checksum(data: &[u8]) -> u64 {
    xxh3_64(data)
}

/// The 24-byte trailer of a PageRun payload.
pub fn trailer(
    start: u64,
    npages: u32,
    encoding: PageEncoding,
    data_checksum: u64,
) -> [u8; PAGE_RUN_TRAILER_LEN] {
    let mut t = [0u8; PAGE_RUN_TRAILER_LEN];
    t[0..8].copy_from_slice(&start.to_le_bytes());
    t[8..12].copy_from_slice(&npages.to_le_bytes());
    t[12..16].copy_from_slice(&(encoding as u32).to_le_bytes());
    t[16..24].copy_from_slice(&data_checksum.to_le_bytes());
    t
}

/// Verifies a PageRun payload's header checksum and data checksum in one pass over
/// the data (see the module docs). `payload_checksum` is the header's value.
pub fn verify_page_run_payload(payload: &[u8], payload_checksum: u64) -> Result<(), Error> {
    verify_page_run_payload_with(payload, payload_checksum, usize::MAX, |_| {})
}

/// [`verify_page_run_payload`], hashing the data in pieces of `piece` bytes and
/// calling `ahead` with each piece just before the one before it is hashed: a
/// caller reading a large mapped image can prefetch there (the hardware prefetcher
/// stops at every 4 KiB page boundary).
pub fn verify_page_run_payload_with(
    payload: &[u8],
    payload_checksum: u64,
    piece: usize,
    mut ahead: impl FnMut(&[u8]),
) -> Result<(), Error> {
    let Some(data_len) = payload.len().checked_sub(PAGE_RUN_TRAILER_LEN) else {
        // Too short to hold a trailer: only the plain payload checksum can be checked.
        let computed = xxh3_64(payload);
        if computed != payload_checksum {
            return Err(Error::PayloadBadChecksum {
                stored: payload_checksum,
                computed,
            });
        }
        return Ok(());
    };
    let (data, tr) = payload.split_at(data_len);
    let mut h = Xxh3Default::new();
    let mut pieces = data.chunks(piece.max(1)).peekable();
    if let Some(first) = pieces.peek() {
        ahead(first);
    }
    while let Some(p) = pieces.next() {
        if let Some(next) = pieces.peek() {
            ahead(next);
        }
        h.update(p);
    }
    let data_sum = h.digest();
    h.update(tr);
    let computed = h.digest();
    if computed != payload_checksum {
        return Err(Error::PayloadBadChecksum {
            stored: payload_checksum,
            computed,
        });
    }
    let mut stored = [0u8; 8];
    stored.copy_from_slice(&tr[16..24]);
    let stored = u64::from_le_bytes(stored);
    if stored != data_sum {
        let mut start = [0u8; 8];
        start.copy_from_slice(&tr[0..8]);
        return Err(Error::PageRunBadChecksum {
            start: u64::from_le_bytes(start),
            stored,
            computed: data_sum,
        });
    }
    Ok(())
}

/// Consecutive pages and their contents. `Debug` shows the data's length, not its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageRun<'a> {
    /// Address of the first page (page aligned).
    pub start: u64,
    /// Number of pages, 1..=[`MAX_RUN_PAGES`].
    pub npages: u32,
    /// How `data` stores them.
    pub encoding: PageEncoding,
    /// xxh3-64 of `data`.
    pub data_checksum: u64,
    /// The stored bytes.
    pub data: &'a [u8],
}

impl core::fmt::Debug for PageRun<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PageRun")
            .field("start", &format_args!("{:#x}", self.start))
            .field("npages", &self.npages)
            .field("encoding", &self.encoding)
            .field(
                "data_checksum",
                &format_args!("{:#018x}", self.data_checksum),
            )
            .field("data_len_bytes", &self.data.len())
            .finish()
    }
}

impl<'a> PageRun<'a> {
    /// A raw run over whole pages of `data` (computes the checksum).
    pub fn raw(start: u64, data: &'a [u8]) -> Result<Self, Error> {
        let run = PageRun {
            start,
            // Rounded up, so a partial page is reported as a bad length.
            npages: data.len().div_ceil(PAGE_SIZE).min(u32::MAX as usize) as u32,
            encoding: PageEncoding::Raw,
            data_checksum: data_checksum(data),
            data,
        };
        run.check_shape()?;
        Ok(run)
    }

    /// A run of `npages` zero pages.
    pub fn zero(start: u64, npages: u32) -> Result<Self, Error> {
        let run = PageRun {
            start,
            npages,
            encoding: PageEncoding::Zero,
            data_checksum: data_checksum(&[]),
            data: &[],
        };
        run.check_shape()?;
        Ok(run)
    }

    /// A run whose `npages` pages are the LZ4 block `compressed`.
    pub fn lz4(start: u64, npages: u32, compressed: &'a [u8]) -> Result<Self, Error> {
        let run = PageRun {
            start,
            npages,
            encoding: PageEncoding::Lz4,
            data_checksum: data_checksum(compressed),
            data: compressed,
        };
        run.check_shape()?;
        Ok(run)
    }

    /// One past the last byte of the run.
    pub fn end(&self) -> u64 {
        self.start
            .saturating_add(u64::from(self.npages) * PAGE_SIZE as u64)
    }

    /// Length in bytes of the pages (not of the stored data).
    pub fn len_bytes(&self) -> usize {
        self.npages as usize * PAGE_SIZE
    }

    /// Checks everything except the data checksum.
    fn check_shape(&self) -> Result<(), Error> {
        if !self.start.is_multiple_of(PAGE_SIZE as u64) {
            return Err(Error::RecordUnalignedAddress {
                field: "page_run.start",
                addr: self.start,
            });
        }
        if self.npages == 0 || self.npages > MAX_RUN_PAGES {
            return Err(Error::RecordBadPageCount {
                npages: self.npages,
            });
        }
        let len_bytes = u64::from(self.npages) * PAGE_SIZE as u64;
        if self.start.checked_add(len_bytes).is_none() {
            return Err(Error::RecordBadRange {
                start: self.start,
                end: self.start.wrapping_add(len_bytes),
            });
        }
        let data_len = self.data.len() as u64;
        match self.encoding {
            PageEncoding::Raw if data_len != len_bytes => Err(Error::RecordBadLength {
                field: "page_run.data (raw)",
                len: data_len,
                expected: len_bytes,
            }),
            PageEncoding::Zero if data_len != 0 => Err(Error::RecordBadLength {
                field: "page_run.data (zero)",
                len: data_len,
                expected: 0,
            }),
            PageEncoding::Lz4 if data_len == 0 || data_len >= len_bytes => {
                Err(Error::RecordBadLength {
                    field: "page_run.data (lz4, must be shorter than raw)",
                    len: data_len,
                    expected: len_bytes - 1,
                })
            }
            _ => Ok(()),
        }
    }

    fn check(&self) -> Result<(), Error> {
        self.check_shape()?;
        let computed = data_checksum(self.data);
        if computed != self.data_checksum {
            return Err(Error::PageRunBadChecksum {
                start: self.start,
                stored: self.data_checksum,
                computed,
            });
        }
        Ok(())
    }

    /// Parses a PageRun payload, verifying the data checksum.
    pub fn parse(payload: &'a [u8]) -> Result<Self, Error> {
        let run = Self::parse_unverified(payload)?;
        run.check()?;
        Ok(run)
    }

    /// Parses without verifying the data checksum: every length and bound is still
    /// checked. The caller verifies the payload with [`verify_page_run_payload`]
    /// (before, or after but before any of the data is used; a reader of a large
    /// image checks runs in parallel that way).
    pub fn parse_unverified(payload: &'a [u8]) -> Result<Self, Error> {
        let Some(data_len) = payload.len().checked_sub(PAGE_RUN_TRAILER_LEN) else {
            return Err(Error::RecordTruncated {
                offset: 0,
                needed: PAGE_RUN_TRAILER_LEN as u64,
            });
        };
        let run = parse_all(payload, |r| {
            let data = r.bytes(data_len)?;
            let start = r.u64()?;
            let npages = r.u32()?;
            let encoding = PageEncoding::from_raw(r.u32()?)?;
            let data_checksum = r.u64()?;
            Ok(PageRun {
                start,
                npages,
                encoding,
                data_checksum,
                data,
            })
        })?;
        run.check_shape()?;
        Ok(run)
    }

    /// Payload length in bytes.
    pub fn buffer_len(&self) -> usize {
        self.data.len() + PAGE_RUN_TRAILER_LEN
    }

    /// Writes the payload; refuses a run [`PageRun::parse`] would refuse (including a
    /// wrong data checksum).
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        self.check()?;
        emit_all(out, self.buffer_len(), |w| {
            w.bytes(self.data);
            w.bytes(&trailer(
                self.start,
                self.npages,
                self.encoding,
                self.data_checksum,
            ));
            Ok(())
        })
    }

    /// Writes the run's page contents (`npages * 4096` bytes) into `out`: copies Raw
    /// data, zero-fills Zero runs, decompresses Lz4 runs (checking the size; with the
    /// `std` feature only, else [`Error::PageRunBadCompression`]).
    pub fn decode_into(&self, out: &mut [u8]) -> Result<(), Error> {
        let len = self.len_bytes();
        let available = out.len();
        let Some(dst) = out.get_mut(..len) else {
            return Err(Error::EmitBufferTooSmall {
                needed: len as u64,
                available: available as u64,
            });
        };
        match self.encoding {
            PageEncoding::Raw => dst.copy_from_slice(self.data),
            PageEncoding::Zero => dst.fill(0),
            #[cfg(feature = "std")]
            PageEncoding::Lz4 => match lz4_flex::block::decompress_into(self.data, dst) {
                Ok(n) if n == len => {}
                _ => return Err(Error::PageRunBadCompression { start: self.start }),
            },
            #[cfg(not(feature = "std"))]
            PageEncoding::Lz4 => return Err(Error::PageRunBadCompression { start: self.start }),
        }
        Ok(())
    }
}

/// LZ4-compresses `pages` (whole pages) into `out`, returning the compressed length, or
/// `None` when compression does not make the run smaller (store it Raw then).
#[cfg(feature = "std")]
pub fn compress_lz4(pages: &[u8], out: &mut std::vec::Vec<u8>) -> Option<usize> {
    out.clear();
    out.resize(lz4_flex::block::get_maximum_output_size(pages.len()), 0);
    let n = lz4_flex::block::compress_into(pages, out).ok()?;
    out.truncate(n);
    (n > 0 && n < pages.len()).then_some(n)
}
