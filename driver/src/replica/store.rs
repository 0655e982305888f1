//! The backup's committed state: an in-memory epoch store (issue 9).
//!
//! [`EpochStore::apply`] takes one received epoch's bytes (a core-format epoch,
//! full or delta). It first decodes and verifies all of them
//! ([`crate::image::decode`]: every frame and page checksum, the validator, the
//! commit), then checks that the epoch fits: a full epoch replaces everything,
//! whatever its number; a delta applies only directly on the committed epoch
//! before it. Only then does it change anything, so a half-received, corrupted or
//! misplaced epoch never changes what the backup would restore, and a failed
//! apply leaves the store exactly as it was.
//!
//! # What the store holds
//!
//! The newest committed epoch's metadata (as a full epoch with no zero runs,
//! [`EpochStore::epoch`]) and, for every page, its newest version, with the
//! rules of [`crate::image::chain::open`]: an epoch's page runs overwrite, its
//! zero runs remove (the program released the page; it reads as zero), and only
//! pages inside the newest epoch's stored mappings stay. One difference, on
//! purpose: the store drops the pages of a mapping as soon as an epoch no longer
//! holds it, where the fold of a chain of files filters once, at its end. The
//! two agree unless an address leaves the stored mappings and comes back later
//! without the epoch that brings it back carrying all of it (a new anonymous
//! mapping is carried whole: its present pages and zero runs for the rest). That
//! per-epoch rule is the one the checkpointer's own chain check
//! (`CS_TEST_VERIFY_CHAIN`) compares with the live program, and it keeps the
//! memory bounded by the pages the newest epoch covers.
//!
//! # Layout: 2 MiB chunks with page slots
//!
//! Pages live in chunks of [`CHUNK_PAGES`] pages, keyed by the program address
//! of their first page (2 MiB aligned). Each chunk is its own anonymous mapping
//! of 2 MiB (`MAP_NORESERVE`, no huge pages) with one slot per page and a bitmap
//! of the slots that hold a page. So:
//! - memory follows the stored pages: a slot never written is never backed, and
//!   a released or dropped page is given back at once (`MADV_DONTNEED`; an empty
//!   chunk is unmapped). What a chunk costs beyond its pages is its bitmap and a
//!   mapping of address space;
//! - applying costs what the epoch holds, not the heap: a written page is one
//!   lookup and one 4 KiB copy into its slot, whatever its neighbours are (no
//!   run is ever split, joined or moved, as contiguous per-run or per-mapping
//!   buffers would need when a page in the middle is released or a gap is filled);
//!   a zero run or a mapping that went away visits only the chunks it overlaps;
//! - the restorable view ([`EpochStore::into_restorable`]) gives runs coalesced
//!   within a chunk (at most 512 pages, 2 MiB: large enough for the lazy fill's
//!   copies), each one contiguous slice of its chunk.
//!
//! A full epoch is built in new chunks beside the old state, which it then
//! replaces: for that moment both are held.
//!
//! The chunks are not inherited by a fork (`MADV_DONTFORK`): restore forks a
//! namespace init that never execs and lives as long as the restored program; it
//! must neither copy the store's page tables nor keep its memory alive.
//!
//! # Persistence (optional)
//!
//! With [`EpochStore::persist_to`], each epoch's bytes are also written, before
//! the store changes, to `DIR/<epoch>.full|.delta` ([`chain::name`]) through
//! [`ImageOut`] (temporary file, fsync, rename, directory fsync): the folder is
//! always a chain that `cs-driver restore DIR` restores. A full epoch first
//! removes the files numbered at or above its own (newest first: a crash
//! meanwhile leaves an older, still whole, chain), is committed, and then the
//! older files are removed (oldest first, as `--keep` does). If its write fails
//! after that first removal, the folder is left holding an older whole chain.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use crate::capture::stores_pages;
use crate::image::{self, chain, ImageError, ImageOut, WriteStats};
use crate::model::{Epoch, PageRun, PageSource, PAGE};

/// Pages per chunk (2 MiB of page slots).
pub const CHUNK_PAGES: u64 = 512;
const CHUNK_BYTES: u64 = CHUNK_PAGES * PAGE;
const WORDS: usize = (CHUNK_PAGES / 64) as usize;

/// The name epochs are given in decode errors.
const SOURCE: &str = "received epoch";

/// Why an epoch was not applied (the store is unchanged).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("epoch refused: {source}")]
    Verify { source: ImageError },
    #[error("delta epoch {epoch} refused: no full epoch is committed to apply it on")]
    NoBase { epoch: u64 },
    #[error("delta epoch {epoch} refused: the committed epoch is {committed}, so only delta {} applies", committed.saturating_add(1))]
    OutOfOrder { epoch: u64, committed: u64 },
    #[error("epoch {epoch}: cannot map a {} KiB page chunk for the store: {source}", CHUNK_BYTES >> 10)]
    Alloc { epoch: u64, source: std::io::Error },
    #[error("epoch {epoch}: cannot persist it under {dir}: {source}")]
    Persist {
        epoch: u64,
        dir: PathBuf,
        source: ImageError,
    },
    #[error("cannot persist the store under {dir}: it already holds {count} epoch file(s); give an empty folder")]
    PersistDirInUse { dir: PathBuf, count: usize },
}

/// What an apply did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The epoch now committed.
    pub epoch: u64,
    pub full: bool,
    /// Pages the epoch stored (inside its stored mappings).
    pub pages_written: u64,
    /// Stored pages its zero runs removed.
    pub pages_released: u64,
    /// Stored pages removed because their mapping is no longer stored.
    pub pages_dropped: u64,
    /// Pages the store holds now.
    pub stored_pages: u64,
    /// Chunks the apply looked at or changed: its cost, which follows the
    /// epoch and the pages it removes, never the whole store.
    pub chunks_visited: u64,
}

/// One chunk: an anonymous mapping of [`CHUNK_PAGES`] page slots and which hold a
/// page.
struct Chunk {
    ptr: NonNull<u8>,
    present: [u64; WORDS],
    count: u32,
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunk").field("pages", &self.count).finish()
    }
}

// SAFETY: a chunk owns its mapping; its bytes are written only through `&mut
// Chunk` and read through `&Chunk`, so Rust's aliasing rules cover them.
unsafe impl Send for Chunk {}
// SAFETY: as above: shared references only read.
unsafe impl Sync for Chunk {}

impl Chunk {
    fn new() -> std::io::Result<Chunk> {
        let len = CHUNK_BYTES as usize;
        // SAFETY: a fresh private anonymous mapping at an address the kernel picks;
        // it touches no existing memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: madvise on the mapping just made. A failure only costs memory (a
        // huge page for a few slots, or the mapping inherited by a fork).
        unsafe {
            libc::madvise(p, len, libc::MADV_NOHUGEPAGE);
            libc::madvise(p, len, libc::MADV_DONTFORK);
        }
        Ok(Chunk {
            ptr: NonNull::new(p as *mut u8).ok_or_else(|| std::io::Error::other("mmap gave 0"))?,
            present: [0; WORDS],
            count: 0,
        })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps CHUNK_BYTES readable bytes until drop; writes need
        // `&mut self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), CHUNK_BYTES as usize) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` maps CHUNK_BYTES writable bytes until drop; `&mut self`
        // makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), CHUNK_BYTES as usize) }
    }

    fn has(&self, slot: usize) -> bool {
        self.present[slot / 64] & (1 << (slot % 64)) != 0
    }

    /// Stores `data` (one page) in `slot`.
    fn put(&mut self, slot: usize, data: &[u8]) {
        let at = slot * PAGE as usize;
        self.bytes_mut()[at..at + PAGE as usize].copy_from_slice(data);
        if !self.has(slot) {
            self.present[slot / 64] |= 1 << (slot % 64);
            self.count += 1;
        }
    }

    /// Removes the pages of slots `from..to`; returns how many were stored.
    fn release(&mut self, from: usize, to: usize) -> u64 {
        let mut removed = 0;
        for slot in from..to {
            if self.has(slot) {
                self.present[slot / 64] &= !(1 << (slot % 64));
                removed += 1;
            }
        }
        if removed > 0 {
            self.count -= removed as u32;
            let at = from * PAGE as usize;
            // SAFETY: madvise on a page-aligned range inside our own mapping, whose
            // bytes no reference holds (`&mut self`); the slots are free now.
            unsafe {
                libc::madvise(
                    self.ptr.as_ptr().add(at) as *mut libc::c_void,
                    (to - from) * PAGE as usize,
                    libc::MADV_DONTNEED,
                )
            };
        }
        removed
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; no slice outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, CHUNK_BYTES as usize) };
    }
}

fn chunk_base(addr: u64) -> u64 {
    addr & !(CHUNK_BYTES - 1)
}

fn slot(addr: u64) -> usize {
    ((addr - chunk_base(addr)) / PAGE) as usize
}

/// Pages by address, in chunks.
#[derive(Debug, Default)]
struct Pages {
    chunks: BTreeMap<u64, Chunk>,
    stored: u64,
}

impl Pages {
    /// Stores one page; its chunk must exist.
    fn put(&mut self, addr: u64, data: &[u8]) {
        if let Some(c) = self.chunks.get_mut(&chunk_base(addr)) {
            let before = c.count;
            c.put(slot(addr), data);
            self.stored += u64::from(c.count - before);
        }
    }

    /// Removes every stored page in `[start, end)`; returns (pages removed,
    /// chunks visited).
    fn release(&mut self, start: u64, end: u64) -> (u64, u64) {
        if start >= end {
            return (0, 0);
        }
        let (mut removed, mut visited) = (0, 0);
        let mut empty = Vec::new();
        for (&base, c) in self.chunks.range_mut(chunk_base(start)..end) {
            visited += 1;
            let from = slot(start.max(base));
            let to = match end.checked_sub(base) {
                Some(d) if d < CHUNK_BYTES => d.div_ceil(PAGE) as usize,
                _ => CHUNK_PAGES as usize,
            };
            removed += c.release(from, to);
            if c.count == 0 {
                empty.push(base);
            }
        }
        for b in empty {
            self.chunks.remove(&b);
        }
        self.stored -= removed;
        (removed, visited)
    }

    fn get(&self, addr: u64) -> Option<&[u8]> {
        let c = self.chunks.get(&chunk_base(addr))?;
        let s = slot(addr);
        c.has(s)
            .then(|| &c.bytes()[s * PAGE as usize..(s + 1) * PAGE as usize])
    }

    fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        self.chunks.iter().flat_map(|(&base, c)| {
            (0..CHUNK_PAGES as usize)
                .filter(|&s| c.has(s))
                .map(move |s| {
                    (
                        base + s as u64 * PAGE,
                        &c.bytes()[s * PAGE as usize..(s + 1) * PAGE as usize],
                    )
                })
        })
    }
}

/// The runs of `chunks` (in address order): maximal runs of stored slots within
/// each chunk; `offset` = ordinal of the chunk × chunk size + byte offset in it.
fn layout<'a>(chunks: impl Iterator<Item = (u64, &'a Chunk)>) -> Vec<PageRun> {
    let mut runs: Vec<PageRun> = Vec::new();
    for (k, (base, c)) in chunks.enumerate() {
        let mut open = false;
        for s in 0..CHUNK_PAGES as usize {
            if !c.has(s) {
                open = false;
                continue;
            }
            match runs.last_mut() {
                Some(r) if open => r.npages += 1,
                _ => {
                    runs.push(PageRun {
                        start: base + s as u64 * PAGE,
                        npages: 1,
                        offset: k * CHUNK_BYTES as usize + s * PAGE as usize,
                    });
                    open = true;
                }
            }
        }
    }
    runs
}

/// The bytes of run `r` of a layout, `c` being its chunk.
fn run_bytes<'a>(c: Option<&'a Chunk>, r: &PageRun) -> &'a [u8] {
    let at = r.offset % CHUNK_BYTES as usize;
    let len = (r.npages * PAGE) as usize;
    c.and_then(|c| c.bytes().get(at..at + len))
        .unwrap_or_default()
}

/// The committed state handed to restore on promotion: the store's chunks, frozen.
#[derive(Debug)]
pub struct StorePages {
    chunks: Vec<Chunk>,
    runs: Vec<PageRun>,
}

impl PageSource for StorePages {
    fn runs(&self) -> &[PageRun] {
        &self.runs
    }

    fn bytes(&self, i: usize) -> &[u8] {
        self.runs.get(i).map_or(&[][..], |r| {
            run_bytes(self.chunks.get(r.offset / CHUNK_BYTES as usize), r)
        })
    }
}

/// A borrowed view of the store's pages as a [`PageSource`] (for encoding).
#[derive(Debug)]
struct View<'a> {
    chunks: Vec<&'a Chunk>,
    runs: Vec<PageRun>,
}

impl PageSource for View<'_> {
    fn runs(&self) -> &[PageRun] {
        &self.runs
    }

    fn bytes(&self, i: usize) -> &[u8] {
        self.runs.get(i).map_or(&[][..], |r| {
            run_bytes(self.chunks.get(r.offset / CHUNK_BYTES as usize).copied(), r)
        })
    }
}

/// The address ranges whose pages an epoch keeps (its stored mappings), sorted
/// and merged.
fn stored_ranges(e: &Epoch) -> Vec<(u64, u64)> {
    let mut r: Vec<(u64, u64)> = e
        .vmas
        .iter()
        .filter(|v| stores_pages(v) && !v.reservation && v.start < v.end)
        .map(|v| (v.start, v.end))
        .collect();
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (s, e) in r {
        match out.last_mut() {
            Some(l) if s <= l.1 => l.1 = l.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

fn inside(ranges: &[(u64, u64)], a: u64) -> bool {
    let i = ranges.partition_point(|&(_, e)| e <= a);
    ranges.get(i).is_some_and(|&(s, _)| s <= a)
}

/// `a` minus `b`, both sorted and merged.
fn subtract(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(s, e) in a {
        let mut at = s;
        while j < b.len() && b[j].1 <= at {
            j += 1;
        }
        let mut k = j;
        while at < e {
            match b.get(k) {
                Some(&(bs, be)) if bs < e => {
                    if bs > at {
                        out.push((at, bs));
                    }
                    at = at.max(be);
                    k += 1;
                }
                _ => {
                    out.push((at, e));
                    at = e;
                }
            }
        }
    }
    out
}

/// Every page of `runs` inside `ranges`: (address, its bytes in `bytes`).
fn pages_of<'b>(
    runs: &'b [PageRun],
    ranges: &'b [(u64, u64)],
    bytes: &'b [u8],
) -> impl Iterator<Item = (u64, &'b [u8])> + 'b {
    runs.iter()
        .flat_map(move |r| {
            (0..r.npages).map(move |k| {
                let at = (k * PAGE) as usize;
                (
                    r.start + k * PAGE,
                    r.offset
                        .checked_add(at)
                        .and_then(|o| bytes.get(o..o.checked_add(PAGE as usize)?)),
                )
            })
        })
        .filter(move |&(a, _)| inside(ranges, a))
        .filter_map(|(a, d)| Some((a, d?)))
}

/// The backup's committed state: the newest committed epoch and its pages.
#[derive(Debug, Default)]
pub struct EpochStore {
    epoch: Option<Epoch>,
    /// The committed epoch's stored ranges: every stored page lies inside them.
    ranges: Vec<(u64, u64)>,
    pages: Pages,
    persist: Option<PathBuf>,
}

impl EpochStore {
    pub fn new() -> EpochStore {
        EpochStore::default()
    }

    /// The committed epoch's number.
    pub fn committed(&self) -> Option<u64> {
        self.epoch.as_ref().map(|e| e.number)
    }

    /// The newest committed epoch, as a full epoch with no zero runs.
    pub fn epoch(&self) -> Option<&Epoch> {
        self.epoch.as_ref()
    }

    /// Pages held.
    pub fn stored_pages(&self) -> u64 {
        self.pages.stored
    }

    /// The bytes of the page at `addr`, if stored.
    pub fn page(&self, addr: u64) -> Option<&[u8]> {
        self.pages.get(addr)
    }

    /// Every stored page, in address order.
    pub fn pages(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        self.pages.iter()
    }

    /// Verifies `bytes` as one epoch and, if it fits, makes it the committed
    /// state (see the module docs). On any error nothing changed.
    pub fn apply(&mut self, bytes: &[u8]) -> Result<Applied, StoreError> {
        let (mut epoch, runs, _) =
            image::decode(bytes, SOURCE).map_err(|source| StoreError::Verify { source })?;
        let n = epoch.number;
        if !epoch.full {
            match self.committed() {
                None => return Err(StoreError::NoBase { epoch: n }),
                Some(c) if c.checked_add(1) != Some(n) => {
                    return Err(StoreError::OutOfOrder {
                        epoch: n,
                        committed: c,
                    })
                }
                Some(_) => {}
            }
        }
        let ranges = stored_ranges(&epoch);
        let alloc = |source| StoreError::Alloc { epoch: n, source };
        let mut done = Applied {
            epoch: n,
            full: epoch.full,
            ..Applied::default()
        };
        // Everything that can fail comes first: new chunks, then the file.
        let mut fresh: BTreeMap<u64, Chunk> = BTreeMap::new();
        let mut last = None;
        for (a, _) in pages_of(&runs, &ranges, bytes) {
            let base = chunk_base(a);
            if last != Some(base) {
                // Pages come in address order: this counts the chunks written.
                done.chunks_visited += 1;
                last = Some(base);
            }
            let have = !epoch.full && self.pages.chunks.contains_key(&base);
            if !have && !fresh.contains_key(&base) {
                fresh.insert(base, Chunk::new().map_err(alloc)?);
            }
        }
        if let Some(dir) = &self.persist {
            persist_epoch(dir, n, epoch.full, bytes).map_err(|source| StoreError::Persist {
                epoch: n,
                dir: dir.clone(),
                source,
            })?;
        }
        // From here on nothing fails.
        if epoch.full {
            self.pages = Pages {
                chunks: fresh,
                stored: 0,
            };
        } else {
            self.pages.chunks.append(&mut fresh);
        }
        for (a, data) in pages_of(&runs, &ranges, bytes) {
            self.pages.put(a, data);
            done.pages_written += 1;
        }
        if !epoch.full {
            for &(s, e) in &epoch.zeros {
                let (removed, visited) = self.pages.release(s, e);
                done.pages_released += removed;
                done.chunks_visited += visited;
            }
            for (s, e) in subtract(&self.ranges, &ranges) {
                let (removed, visited) = self.pages.release(s, e);
                done.pages_dropped += removed;
                done.chunks_visited += visited;
            }
        }
        epoch.full = true;
        epoch.zeros.clear();
        self.epoch = Some(epoch);
        self.ranges = ranges;
        done.stored_pages = self.pages.stored;
        Ok(done)
    }

    /// From now on, also writes each applied epoch under `dir` (created if
    /// missing; it must hold no epoch file). A store that already holds a
    /// committed epoch writes it there first, as a full epoch.
    pub fn persist_to(&mut self, dir: &Path) -> Result<(), StoreError> {
        let epoch = self.committed().unwrap_or(0);
        let perr = |source| StoreError::Persist {
            epoch,
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| {
            perr(ImageError::Io {
                path: dir.display().to_string(),
                source: e,
            })
        })?;
        let there = chain::list(dir).map_err(perr)?;
        if !there.is_empty() {
            return Err(StoreError::PersistDirInUse {
                dir: dir.to_path_buf(),
                count: there.len(),
            });
        }
        if let Some(e) = &self.epoch {
            let chunks: Vec<&Chunk> = self.pages.chunks.values().collect();
            let runs = layout(self.pages.chunks.iter().map(|(&b, c)| (b, c)));
            let view = View { chunks, runs };
            let mut out = ImageOut::create(&dir.join(chain::name(e.number, true))).map_err(perr)?;
            out.write_epoch(e, Some(&view), &mut |_, _| {})
                .map_err(perr)?;
            out.commit().map_err(perr)?;
        }
        self.persist = Some(dir.to_path_buf());
        Ok(())
    }

    /// The committed state for restore (on promotion): the epoch and its pages.
    /// `None` when nothing is committed.
    pub fn into_restorable(self) -> Option<(Epoch, Arc<dyn PageSource>)> {
        let epoch = self.epoch?;
        let runs = layout(self.pages.chunks.iter().map(|(&b, c)| (b, c)));
        let chunks: Vec<Chunk> = self.pages.chunks.into_values().collect();
        Some((epoch, Arc::new(StorePages { chunks, runs })))
    }
}

/// Writes epoch `n`'s bytes under `dir` crash-safely (see the module docs).
fn persist_epoch(dir: &Path, n: u64, full: bool, bytes: &[u8]) -> Result<(), ImageError> {
    let remove = |f: &chain::EpochFile| {
        std::fs::remove_file(&f.path).map_err(|e| ImageError::Io {
            path: f.path.display().to_string(),
            source: e,
        })
    };
    let old = if full { chain::list(dir)? } else { Vec::new() };
    for f in old.iter().rev().filter(|f| f.epoch >= n) {
        remove(f)?;
    }
    let mut out = ImageOut::create(&dir.join(chain::name(n, full)))?;
    out.write_with(|w: &mut dyn Write| {
        w.write_all(bytes).map_err(|e| ImageError::Io {
            path: "epoch".into(),
            source: e,
        })?;
        Ok(WriteStats {
            bytes: bytes.len() as u64,
            ..WriteStats::default()
        })
    })?;
    out.commit()?;
    // Older epochs are not needed any more; one left behind is harmless.
    for f in old.iter().filter(|f| f.epoch < n) {
        let _ = remove(f);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::creds::ThreadCreds;
    use crate::capture::inject::Restart;
    use crate::linux::sys::UserRegs;
    use crate::model::{Process, Thread, Vma, VmaKind, PROT_R, PROT_W};

    const A: u64 = 0x10_0000_0000;
    /// Not chunk aligned: its runs cross chunk boundaries.
    const B: u64 = 0x20_001f_0000;
    const C: u64 = 0x30_0000_0000;
    const F: u64 = 0x40_0010_0000;
    const R: u64 = 0x50_0000_0000;
    const S: u64 = 0x60_0000_0000;

    /// Page bytes of a synthetic epoch.
    struct TestPages {
        data: Vec<u8>,
        runs: Vec<PageRun>,
    }

    impl PageSource for TestPages {
        fn runs(&self) -> &[PageRun] {
            &self.runs
        }

        fn bytes(&self, i: usize) -> &[u8] {
            let r = &self.runs[i];
            &self.data[r.offset..r.offset + (r.npages * PAGE) as usize]
        }
    }

    /// The contents of page `addr` in version `v`.
    fn content(addr: u64, v: u64) -> Vec<u8> {
        let mut p = vec![(addr >> 12) as u8 ^ v as u8; PAGE as usize];
        p[..8].copy_from_slice(&addr.to_le_bytes());
        p[8..16].copy_from_slice(&v.to_le_bytes());
        p
    }

    fn vma(start: u64, npages: u64, prot: u8, kind: VmaKind) -> Vma {
        Vma {
            start,
            end: start + npages * PAGE,
            prot,
            shared: false,
            growsdown: false,
            droppable: false,
            reservation: false,
            noreserve: false,
            hugepage: false,
            nohugepage: false,
            dontdump: false,
            wipeonfork: false,
            kind,
        }
    }

    fn anon(start: u64, npages: u64) -> Vma {
        vma(start, npages, PROT_R | PROT_W, VmaKind::Anonymous)
    }

    fn file(start: u64, npages: u64, shared: bool) -> Vma {
        let kind = VmaKind::File {
            path: b"/lib/x.so".to_vec(),
            offset: 0,
        };
        Vma {
            shared,
            ..vma(start, npages, PROT_R, kind)
        }
    }

    fn reservation(start: u64, npages: u64) -> Vma {
        Vma {
            reservation: true,
            ..vma(start, npages, 0, VmaKind::Anonymous)
        }
    }

    fn epoch(number: u64, full: bool, vmas: Vec<Vma>, zeros: Vec<(u64, u64)>) -> Epoch {
        Epoch {
            number,
            full,
            wall_ns: number * 1_000_000,
            process: Process {
                pid: 100,
                exe: b"/bin/prog".to_vec(),
                cwd: b"/".to_vec(),
                comm: b"prog".to_vec(),
                xsave_size: 576,
                kernel_release: b"6.x".to_vec(),
                ..Process::default()
            },
            threads: vec![Thread {
                host_tid: 100,
                tid: 100,
                comm: b"prog".to_vec(),
                regs: UserRegs {
                    rip: 0x40_1000 + number,
                    ..UserRegs::default()
                },
                restart: Restart::None,
                xsave: vec![0; 576],
                sigmask: 0,
                altstack: (0, 0, 0),
                creds: ThreadCreds::default(),
            }],
            vmas,
            zeros,
            ..Epoch::default()
        }
    }

    /// Encodes `e` with `pages` (address, version), sorted by address.
    fn encode(e: &Epoch, pages: &[(u64, u64)]) -> Vec<u8> {
        let mut src = TestPages {
            data: Vec::new(),
            runs: Vec::new(),
        };
        let mut sorted = pages.to_vec();
        sorted.sort_unstable();
        for &(a, v) in &sorted {
            let offset = src.data.len();
            src.data.extend(content(a, v));
            match src.runs.last_mut() {
                Some(r) if r.start + r.npages * PAGE == a => r.npages += 1,
                _ => src.runs.push(PageRun {
                    start: a,
                    npages: 1,
                    offset,
                }),
            }
        }
        let mut out = Vec::new();
        image::encode_epoch(e, Some(&src), &mut out, &mut |_, _| {}).expect("encode");
        out
    }

    fn pages_at(start: u64, n: u64, v: u64) -> Vec<(u64, u64)> {
        (0..n).map(|k| (start + k * PAGE, v)).collect()
    }

    /// A chain with every kind of change: (epoch bytes, full) in order.
    fn scenario() -> Vec<(Vec<u8>, bool)> {
        let b_pages = 1100; // crosses three chunk boundaries
        let fixed = || vec![file(C, 8, false), reservation(R, 16), file(S, 4, true)];
        let mut out = Vec::new();
        // 1: full: A, B, a private file mapping; a reservation and a shared file
        // mapping hold no pages.
        let mut v1 = vec![anon(A, 64), anon(B, b_pages)];
        v1.extend(fixed());
        let mut p = pages_at(A, 40, 1);
        p.extend(pages_at(B, 700, 1));
        p.extend(pages_at(B + 900 * PAGE, 100, 1));
        p.extend(pages_at(C, 3, 1));
        out.push((encode(&epoch(1, true, v1.clone(), vec![]), &p), true));
        // 2: writes (overwrites and new pages), zero runs across a chunk boundary
        // and over a page never stored.
        let mut p = pages_at(A + 10 * PAGE, 5, 2);
        p.extend(pages_at(B + 650 * PAGE, 100, 2));
        p.extend(pages_at(C + 5 * PAGE, 1, 2));
        let z = vec![
            (A, A + 4 * PAGE),
            (B + 250 * PAGE, B + 300 * PAGE),
            (B + 800 * PAGE, B + 810 * PAGE),
        ];
        out.push((encode(&epoch(2, false, v1.clone(), z), &p), false));
        // 3: A is gone; a new mapping F, carried whole (present pages, zeros for
        // the rest); writes in B.
        let mut v3 = vec![anon(B, b_pages), anon(F, 600)];
        v3.extend(fixed());
        v3.sort_by_key(|v| v.start);
        let mut p = pages_at(F + 10 * PAGE, 50, 3);
        p.extend(pages_at(F + 520 * PAGE, 10, 3));
        p.extend(pages_at(B + 5 * PAGE, 3, 3));
        let z = vec![
            (F, F + 10 * PAGE),
            (F + 60 * PAGE, F + 520 * PAGE),
            (F + 530 * PAGE, F + 600 * PAGE),
        ];
        out.push((encode(&epoch(3, false, v3, z), &p), false));
        // 4: B shrinks to 600 pages (its tail goes), a whole chunk of B released,
        // F written.
        let mut v4 = vec![anon(B, 600), anon(F, 600)];
        v4.extend(fixed());
        v4.sort_by_key(|v| v.start);
        let p = pages_at(F + 20 * PAGE, 5, 4);
        let base = chunk_base(B) + CHUNK_BYTES;
        let z = vec![(base, base + CHUNK_BYTES)];
        out.push((encode(&epoch(4, false, v4.clone(), z), &p), false));
        // 5: nothing changed.
        out.push((encode(&epoch(5, false, v4, vec![]), &[]), false));
        out
    }

    type Snapshot = (Option<u64>, u64, Vec<(u64, Vec<u8>)>, Option<Vec<Vma>>);

    fn snapshot(s: &EpochStore) -> Snapshot {
        (
            s.committed(),
            s.stored_pages(),
            s.pages().map(|(a, d)| (a, d.to_vec())).collect(),
            s.epoch().map(|e| e.vmas.clone()),
        )
    }

    fn source_pages(src: &dyn PageSource) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        for (i, r) in src.runs().iter().enumerate() {
            let b = src.bytes(i);
            assert_eq!(b.len() as u64, r.npages * PAGE, "run {i} at {:#x}", r.start);
            for k in 0..r.npages as usize {
                out.push((
                    r.start + (k as u64) * PAGE,
                    b[k * PAGE as usize..(k + 1) * PAGE as usize].to_vec(),
                ));
            }
        }
        out
    }

    /// A scratch folder removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let p = std::env::temp_dir().join(format!(
                "cs-store-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn write_epoch_file(dir: &Path, bytes: &[u8], n: u64, full: bool) {
        std::fs::write(dir.join(chain::name(n, full)), bytes).unwrap();
    }

    fn fold(dir: &Path) -> (Epoch, Vec<(u64, Vec<u8>)>) {
        let all = chain::list(dir).unwrap();
        let ch = chain::chain_for(&all, None, dir).unwrap();
        let (e, p) = chain::open(&ch).unwrap();
        (e, source_pages(&p))
    }

    #[test]
    fn the_store_holds_what_the_fold_of_the_same_chain_holds() {
        let dir = Scratch::new("fold");
        let mut store = EpochStore::new();
        for (i, (bytes, full)) in scenario().iter().enumerate() {
            let n = i as u64 + 1;
            let done = store
                .apply(bytes)
                .unwrap_or_else(|e| panic!("epoch {n}: {e}"));
            assert_eq!((done.epoch, done.full), (n, *full));
            write_epoch_file(&dir.0, bytes, n, *full);
            let (fe, fp) = fold(&dir.0);
            let mine: Vec<(u64, Vec<u8>)> = store.pages().map(|(a, d)| (a, d.to_vec())).collect();
            assert_eq!(mine.len(), fp.len(), "epoch {n}: page count");
            for (m, f) in mine.iter().zip(&fp) {
                assert_eq!(m.0, f.0, "epoch {n}: page address");
                assert!(m.1 == f.1, "epoch {n}: page {:#x} differs", m.0);
            }
            assert_eq!(done.stored_pages, fp.len() as u64);
            let e = store.epoch().unwrap();
            assert_eq!((e.number, e.full, e.zeros.len()), (fe.number, true, 0));
            assert_eq!(e.vmas, fe.vmas);
            assert_eq!(e.threads[0].regs, fe.threads[0].regs);
        }
        // The scenario did what it claims: A's pages are gone, the released and
        // dropped ranges are empty, F holds its writes.
        assert!(store.page(A + 10 * PAGE).is_none());
        assert!(store.page(B + 260 * PAGE).is_none());
        assert!(store.page(B + 900 * PAGE).is_none(), "B's tail was dropped");
        assert!(store.page(B + 6 * PAGE) == Some(&content(B + 6 * PAGE, 3)[..]));
        assert_eq!(store.page(B + 660 * PAGE), None, "beyond B's new end");
        assert!(
            store.page(B + 100 * PAGE).is_none(),
            "released with its chunk"
        );
        assert!(store.page(B + 540 * PAGE) == Some(&content(B + 540 * PAGE, 1)[..]));
        assert!(store.page(F + 22 * PAGE) == Some(&content(F + 22 * PAGE, 4)[..]));
        assert!(store.page(F + 30 * PAGE) == Some(&content(F + 30 * PAGE, 3)[..]));
        assert!(store.page(C + 5 * PAGE) == Some(&content(C + 5 * PAGE, 2)[..]));
        // Empty chunks are unmapped: every chunk holds a page.
        assert!(store.pages.chunks.values().all(|c| c.count > 0));
        let counted: u64 = store
            .pages
            .chunks
            .values()
            .map(|c| u64::from(c.count))
            .sum();
        assert_eq!(counted, store.stored_pages());
    }

    #[test]
    fn bad_misplaced_and_unbased_epochs_are_refused_and_change_nothing() {
        let sc = scenario();
        let mut store = EpochStore::new();
        // A delta before any full epoch.
        let e = store.apply(&sc[1].0).unwrap_err();
        assert!(matches!(e, StoreError::NoBase { epoch: 2 }), "{e}");
        assert_eq!(snapshot(&store), snapshot(&EpochStore::new()));
        store.apply(&sc[0].0).unwrap();
        store.apply(&sc[1].0).unwrap();
        let before = snapshot(&store);
        // A gap, a repeat and an older delta.
        for (i, got) in [(3, 4), (1, 2)] {
            let e = store.apply(&sc[i].0).unwrap_err();
            assert!(
                matches!(e, StoreError::OutOfOrder { epoch, committed: 2 } if epoch == got),
                "{e}"
            );
            let text = e.to_string();
            assert!(
                text.contains(&got.to_string()) && text.contains('2'),
                "{text}"
            );
            assert!(snapshot(&store) == before);
        }
        // Truncated anywhere, and one flipped bit in a page, in the commit, in a
        // header.
        let good = &sc[2].0;
        for cut in [0, 1, 64, good.len() / 2, good.len() - 1] {
            let e = store.apply(&good[..cut]).unwrap_err();
            assert!(matches!(e, StoreError::Verify { .. }), "cut {cut}: {e}");
            assert!(snapshot(&store) == before, "cut {cut}");
        }
        for at in [3, 100, good.len() / 2, good.len() - 5] {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            let e = store.apply(&bad).unwrap_err();
            assert!(matches!(e, StoreError::Verify { .. }), "flip at {at}: {e}");
            assert!(snapshot(&store) == before, "flip at {at}");
        }
        // The good one still applies.
        assert_eq!(store.apply(good).unwrap().epoch, 3);
    }

    #[test]
    fn a_full_epoch_replaces_everything_whatever_its_number() {
        let sc = scenario();
        let mut store = EpochStore::new();
        for (b, _) in &sc {
            store.apply(b).unwrap();
        }
        let fresh = encode(
            &epoch(2, true, vec![anon(A, 4)], vec![]),
            &pages_at(A, 2, 9),
        );
        let done = store.apply(&fresh).unwrap();
        assert_eq!((done.epoch, done.stored_pages), (2, 2));
        let got: Vec<u64> = store.pages().map(|(a, _)| a).collect();
        assert_eq!(got, vec![A, A + PAGE]);
        assert!(store.page(A) == Some(&content(A, 9)[..]));
        // Deltas now follow epoch 2.
        let d = encode(&epoch(3, false, vec![anon(A, 4)], vec![(A, A + PAGE)]), &[]);
        assert_eq!(store.apply(&d).unwrap().stored_pages, 1);
    }

    #[test]
    fn the_restorable_state_encodes_back_to_the_same_pages() {
        let mut store = EpochStore::new();
        for (b, _) in scenario() {
            store.apply(&b).unwrap();
        }
        let before = snapshot(&store);
        let (e, src) = store.into_restorable().unwrap();
        // Runs: sorted, disjoint, each one slice of its bytes, coalesced (two
        // runs touch only across a chunk boundary).
        let runs = src.runs();
        assert!(!runs.is_empty());
        for w in runs.windows(2) {
            let end = w[0].start + w[0].npages * PAGE;
            assert!(end <= w[1].start, "{w:?}");
            assert!(end < w[1].start || w[1].start % CHUNK_BYTES == 0, "{w:?}");
        }
        assert!(runs.iter().any(|r| r.npages >= 50), "{runs:?}");
        assert!(source_pages(&*src) == before.2);
        let mut bytes = Vec::new();
        image::encode_epoch(&e, Some(&*src), &mut bytes, &mut |_, _| {}).unwrap();
        let (d, druns, _) = image::decode(&bytes, "re-encoded").unwrap();
        assert!(d.full && d.zeros.is_empty());
        assert_eq!((d.number, &d.vmas), (e.number, &e.vmas));
        let ranges: Vec<(u64, u64)> = vec![(0, u64::MAX)];
        let decoded: Vec<(u64, Vec<u8>)> = pages_of(&druns, &ranges, &bytes)
            .map(|(a, p)| (a, p.to_vec()))
            .collect();
        assert!(decoded == before.2);
        // And a store fed the re-encoded epoch holds the same.
        let mut again = EpochStore::new();
        again.apply(&bytes).unwrap();
        assert!(snapshot(&again) == before);
    }

    /// A small seeded generator (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn mutated_epochs_never_panic_and_never_change_the_store_when_refused() {
        let sc = scenario();
        let mut store = EpochStore::new();
        store.apply(&sc[0].0).unwrap();
        store.apply(&sc[1].0).unwrap();
        let before = snapshot(&store);
        let mut rng = Rng(0x5eed_cafe_f00d_0001);
        let (mut refused, mut accepted) = (0, 0);
        for round in 0..400 {
            let (src, _) = &sc[if round % 2 == 0 { 2 } else { 0 }];
            let mut m = src.clone();
            match rng.below(5) {
                0 => {
                    for _ in 0..=rng.below(4) {
                        let i = rng.below(m.len());
                        m[i] ^= 1 << rng.below(8);
                    }
                }
                1 => m.truncate(rng.below(m.len())),
                2 => {
                    let i = rng.below(m.len());
                    m.insert(i, rng.next() as u8);
                }
                3 => {
                    let i = rng.below(m.len());
                    m.remove(i);
                }
                _ => {
                    // A header-sized stretch overwritten with random bytes.
                    let i = rng.below(m.len());
                    for b in m.iter_mut().skip(i).take(32) {
                        *b = rng.next() as u8;
                    }
                }
            }
            match store.apply(&m) {
                Err(_) => {
                    refused += 1;
                    assert!(snapshot(&store) == before, "round {round}");
                }
                Ok(_) => {
                    // Only a mutation that left the bytes valid gets here.
                    accepted += 1;
                    assert!(m == *src, "round {round}: a changed epoch was accepted");
                    store = EpochStore::new();
                    store.apply(&sc[0].0).unwrap();
                    store.apply(&sc[1].0).unwrap();
                }
            }
        }
        assert!(refused > 350, "refused {refused}, accepted {accepted}");
    }

    #[test]
    fn applying_costs_the_epoch_not_the_heap() {
        // 32 MiB stored over 16 chunks, then deltas of one page.
        let v = vec![anon(A, 8192)];
        let full = encode(&epoch(1, true, v.clone(), vec![]), &pages_at(A, 8192, 1));
        let mut store = EpochStore::new();
        let d = store.apply(&full).unwrap();
        assert_eq!((d.stored_pages, d.chunks_visited), (8192, 16));
        let one = encode(
            &epoch(2, false, v.clone(), vec![]),
            &pages_at(A + 4000 * PAGE, 1, 2),
        );
        let d = store.apply(&one).unwrap();
        assert_eq!(
            (d.pages_written, d.chunks_visited, d.stored_pages),
            (1, 1, 8192)
        );
        let z = vec![(A + 5000 * PAGE, A + 5001 * PAGE)];
        let d = store.apply(&encode(&epoch(3, false, v, z), &[])).unwrap();
        assert_eq!(
            (d.pages_released, d.chunks_visited, d.stored_pages),
            (1, 1, 8191)
        );
        assert_eq!(store.pages.chunks.len(), 16);
        // A mapping going away visits only its own chunks.
        let w = vec![anon(A, 1024)];
        let d = store
            .apply(&encode(&epoch(4, false, w, vec![]), &[]))
            .unwrap();
        assert_eq!((d.pages_dropped, d.chunks_visited), (8191 - 1024, 14));
        assert_eq!(store.pages.chunks.len(), 2, "emptied chunks are unmapped");
    }

    #[test]
    fn persisted_epochs_restore_as_a_folder() {
        let dir = Scratch::new("persist");
        let state = dir.0.join("state");
        let sc = scenario();
        let mut store = EpochStore::new();
        store.persist_to(&state).unwrap();
        for (b, _) in &sc {
            store.apply(b).unwrap();
            let (e, p) = fold(&state);
            assert_eq!(e.number, store.committed().unwrap());
            assert!(p == snapshot(&store).2, "epoch {}", e.number);
        }
        let names = |d: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&state).len(), 5, "{:?}", names(&state));
        // A new full epoch with a lower number (a new session) replaces the folder.
        let fresh = encode(
            &epoch(2, true, vec![anon(A, 4)], vec![]),
            &pages_at(A, 2, 9),
        );
        store.apply(&fresh).unwrap();
        assert_eq!(names(&state), vec![chain::name(2, true)]);
        assert!(fold(&state).1 == snapshot(&store).2);
        // A folder that holds epochs is refused.
        let e = EpochStore::new().persist_to(&state).unwrap_err();
        assert!(
            matches!(e, StoreError::PersistDirInUse { count: 1, .. }),
            "{e}"
        );
        // A store with state writes it first, as a full epoch.
        let mut other = EpochStore::new();
        for (b, _) in &sc[..3] {
            other.apply(b).unwrap();
        }
        let second = dir.0.join("second");
        other.persist_to(&second).unwrap();
        assert_eq!(names(&second), vec![chain::name(3, true)]);
        assert!(fold(&second).1 == snapshot(&other).2);
        // A write that fails leaves the store as it was.
        std::fs::remove_dir_all(&second).unwrap();
        std::fs::write(&second, b"not a folder").unwrap();
        let before = snapshot(&other);
        let e = other.apply(&sc[3].0).unwrap_err();
        assert!(matches!(e, StoreError::Persist { epoch: 4, .. }), "{e}");
        assert!(snapshot(&other) == before);
    }
}
