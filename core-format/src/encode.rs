//! The page-run encoder: dirty pages → PageRun frames, on the replication hot path.
//!
//! Input: the dirty page addresses of an epoch in strictly increasing order, and a
//! [`PageSource`] that gives each page's 4096 bytes (typically the staging buffer the
//! pages were copied into during the pause: [`StagedPages`]). Output: whole PageRun
//! frames written back to back into caller buffers.
//!
//! Grouping rule (the property tests' oracle states it one page at a time): a run is a
//! maximal sequence of pages that are consecutive in address, all zero or all
//! non-zero, and at most [`MAX_RUN_PAGES`] long. All-zero runs are encoded `Zero`
//! (no data); others `Raw`. When the output buffer cannot take the next page, the
//! open run is closed there and [`PageRunEncoder::encode_into`] returns; the next call
//! continues with the next page (so runs may also end at buffer boundaries).
//!
//! Cost per page: one zero test of the source page (stops at the first non-zero
//! word), one copy into the frame, and one streaming xxh3 pass over the copy while it
//! is in L1; the same pass yields the run's data checksum and the frame's payload
//! checksum (see [`crate::page`]). Nothing is allocated.

use xxhash_rust::xxh3::{xxh3_64, Xxh3Default};

use crate::epoch::EpochDigest;
use crate::error::Error;
use crate::header::{FrameHeader, FrameKind, FORMAT_MAJOR, FORMAT_MINOR, HEADER_LEN};
use crate::page::{
    data_checksum, trailer, PageEncoding, MAX_RUN_PAGES, PAGE_RUN_TRAILER_LEN, PAGE_SIZE,
};

/// Where the encoder gets page contents.
pub trait PageSource {
    /// The 4096 bytes of the dirty page `addr`, the `index`-th address given to the
    /// encoder. Any other length is [`Error::EncodeBadPage`].
    fn page(&self, index: usize, addr: u64) -> &[u8];
}

/// Pages copied back to back in address order: page `i` is `data[i * 4096..][..4096]`.
#[derive(Debug, Clone, Copy)]
pub struct StagedPages<'a> {
    /// The staging buffer.
    pub data: &'a [u8],
}

impl PageSource for StagedPages<'_> {
    fn page(&self, index: usize, _addr: u64) -> &[u8] {
        let start = index.saturating_mul(PAGE_SIZE);
        self.data
            .get(start..start.saturating_add(PAGE_SIZE))
            .unwrap_or_default()
    }
}

/// A contiguous memory image: the page at `addr` is `data[addr - base..][..4096]`.
#[derive(Debug, Clone, Copy)]
pub struct RegionPages<'a> {
    /// Address of `data[0]`.
    pub base: u64,
    /// The memory.
    pub data: &'a [u8],
}

impl PageSource for RegionPages<'_> {
    fn page(&self, _index: usize, addr: u64) -> &[u8] {
        let Some(off) = addr.checked_sub(self.base) else {
            return &[];
        };
        let off = off as usize;
        self.data
            .get(off..off.saturating_add(PAGE_SIZE))
            .unwrap_or_default()
    }
}

/// What one [`PageRunEncoder::encode_into`] call produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EncodeProgress {
    /// Bytes written at the start of the output buffer (whole frames).
    pub bytes_written: usize,
    /// Frames written.
    pub frames: u32,
    /// Pages encoded.
    pub pages: u32,
    /// Of `pages`, those found all-zero and written as Zero runs (no data stored).
    pub zero_pages: u32,
    /// True when every page has been encoded.
    pub done: bool,
}

/// Encodes dirty pages into PageRun frames (see the module docs).
#[derive(Debug, Clone)]
pub struct PageRunEncoder<'p> {
    addrs: &'p [u64],
    next: usize,
}

/// Smallest frame: header + trailer (a Zero run).
const MIN_FRAME: usize = HEADER_LEN + PAGE_RUN_TRAILER_LEN;

/// True if every byte of `page` is zero.
#[inline]
pub fn is_zero_page(page: &[u8]) -> bool {
    let mut chunks = page.chunks_exact(64);
    for c in &mut chunks {
        let mut acc = 0u64;
        for w in c.chunks_exact(8) {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            acc |= u64::from_ne_bytes(b);
        }
        if acc != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

impl<'p> PageRunEncoder<'p> {
    /// An encoder over `addrs`, which must be page aligned and strictly increasing.
    pub fn new(addrs: &'p [u64]) -> Result<Self, Error> {
        let mut prev: Option<u64> = None;
        for &a in addrs {
            if a % PAGE_SIZE as u64 != 0 {
                return Err(Error::EncodeUnalignedPage { addr: a });
            }
            if prev.is_some_and(|p| a <= p) || a.checked_add(PAGE_SIZE as u64).is_none() {
                return Err(Error::EncodeUnsortedPages { addr: a });
            }
            prev = Some(a);
        }
        Ok(PageRunEncoder { addrs, next: 0 })
    }

    /// True when every page has been encoded.
    pub fn is_done(&self) -> bool {
        self.next >= self.addrs.len()
    }

    /// Pages not yet encoded.
    pub fn remaining_pages(&self) -> usize {
        self.addrs.len() - self.next
    }

    /// Encodes as many pages as fit into `out`. Returns what was written; fails with
    /// [`Error::EmitBufferTooSmall`] only if not even one page fits.
    pub fn encode_into<S: PageSource + ?Sized>(
        &mut self,
        src: &S,
        out: &mut [u8],
    ) -> Result<EncodeProgress, Error> {
        self.encode(src, out, None)
    }

    /// Like [`PageRunEncoder::encode_into`], also adding every frame to `digest`.
    pub fn encode_into_digest<S: PageSource + ?Sized>(
        &mut self,
        src: &S,
        out: &mut [u8],
        digest: &mut EpochDigest,
    ) -> Result<EncodeProgress, Error> {
        self.encode(src, out, Some(digest))
    }

    fn page<'s, S: PageSource + ?Sized>(&self, src: &'s S, i: usize) -> Result<&'s [u8], Error> {
        let addr = self.addrs[i];
        let page = src.page(i, addr);
        if page.len() != PAGE_SIZE {
            return Err(Error::EncodeBadPage {
                addr,
                len: page.len() as u64,
            });
        }
        Ok(page)
    }

    fn encode<S: PageSource + ?Sized>(
        &mut self,
        src: &S,
        out: &mut [u8],
        mut digest: Option<&mut EpochDigest>,
    ) -> Result<EncodeProgress, Error> {
        let mut progress = EncodeProgress::default();
        let mut pos = 0usize;
        let empty_sum = data_checksum(&[]);
        while self.next < self.addrs.len() {
            let first = self.next;
            let start = self.addrs[first];
            let first_page = self.page(src, first)?;
            let zero = is_zero_page(first_page);
            let room = out.len() - pos;
            let mut npages = 1u32;
            let frame_len = if zero {
                if room < MIN_FRAME {
                    break;
                }
                while self.next + (npages as usize) < self.addrs.len() && npages < MAX_RUN_PAGES {
                    let i = self.next + npages as usize;
                    if self.addrs[i] != start + u64::from(npages) * PAGE_SIZE as u64
                        || !is_zero_page(self.page(src, i)?)
                    {
                        break;
                    }
                    npages += 1;
                }
                let t = trailer(start, npages, PageEncoding::Zero, empty_sum);
                out[pos + HEADER_LEN..pos + MIN_FRAME].copy_from_slice(&t);
                let header = FrameHeader {
                    version_major: FORMAT_MAJOR,
                    version_minor: FORMAT_MINOR,
                    kind: FrameKind::PageRun,
                    payload_len: PAGE_RUN_TRAILER_LEN as u32,
                    payload_checksum: xxh3_64(&t),
                };
                let h = header.to_bytes();
                out[pos..pos + HEADER_LEN].copy_from_slice(&h);
                if let Some(d) = digest.as_deref_mut() {
                    d.update(&h);
                }
                MIN_FRAME
            } else {
                if room < MIN_FRAME + PAGE_SIZE {
                    break;
                }
                // Pages that fit in this buffer after the first one.
                let fit = (room - MIN_FRAME) / PAGE_SIZE;
                let max = (MAX_RUN_PAGES as usize).min(fit);
                let data_start = pos + HEADER_LEN;
                let mut hasher = Xxh3Default::new();
                {
                    let dst = &mut out[data_start..data_start + PAGE_SIZE];
                    dst.copy_from_slice(first_page);
                    hasher.update(dst);
                }
                while self.next + (npages as usize) < self.addrs.len() && (npages as usize) < max {
                    let i = self.next + npages as usize;
                    if self.addrs[i] != start + u64::from(npages) * PAGE_SIZE as u64 {
                        break;
                    }
                    let page = self.page(src, i)?;
                    if is_zero_page(page) {
                        break;
                    }
                    let off = data_start + npages as usize * PAGE_SIZE;
                    let dst = &mut out[off..off + PAGE_SIZE];
                    dst.copy_from_slice(page);
                    hasher.update(dst);
                    npages += 1;
                }
                let data_len = npages as usize * PAGE_SIZE;
                let t = trailer(start, npages, PageEncoding::Raw, hasher.digest());
                let t_off = data_start + data_len;
                out[t_off..t_off + PAGE_RUN_TRAILER_LEN].copy_from_slice(&t);
                hasher.update(&t);
                let header = FrameHeader {
                    version_major: FORMAT_MAJOR,
                    version_minor: FORMAT_MINOR,
                    kind: FrameKind::PageRun,
                    payload_len: (data_len + PAGE_RUN_TRAILER_LEN) as u32,
                    payload_checksum: hasher.digest(),
                };
                let h = header.to_bytes();
                out[pos..pos + HEADER_LEN].copy_from_slice(&h);
                if let Some(d) = digest.as_deref_mut() {
                    d.update(&h);
                }
                MIN_FRAME + data_len
            };
            pos += frame_len;
            self.next += npages as usize;
            progress.frames += 1;
            progress.pages += npages;
            if zero {
                progress.zero_pages += npages;
            }
        }
        progress.bytes_written = pos;
        progress.done = self.is_done();
        if progress.frames == 0 && !progress.done {
            return Err(Error::EmitBufferTooSmall {
                needed: (MIN_FRAME + PAGE_SIZE) as u64,
                available: out.len() as u64,
            });
        }
        Ok(progress)
    }
}

/// Upper bound of the bytes [`PageRunEncoder`] writes for `npages` dirty pages, whatever
/// their grouping (every page may be a frame of its own).
pub const fn max_encoded_len(npages: usize) -> usize {
    npages * (PAGE_SIZE + MIN_FRAME)
}
