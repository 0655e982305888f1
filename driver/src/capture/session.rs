//! A capture session: one program, attached once, emitting epochs (issue 8).
//!
//! [`Session::start`] claims the program ([`crate::capture::attach`]: lock,
//! refusals), pre-copies its memory under a write-protect tracker and takes epoch 1,
//! a full epoch, exactly as `dump --leave-running` does; but the tracker, the lock
//! and the pidfd are kept. Every [`Session::epoch`] after that is a short freeze
//! that captures threads, mappings, fds and signal state in full (they are small)
//! and only the pages that changed since the previous epoch:
//!
//! - in a tracked mapping, one `PAGEMAP_SCAN` lists the pages written since the
//!   last scan and protects them again in the same walk
//!   ([`crate::capture::track::written_and_reprotect`]); every listed page is read: one the
//!   program released (`MADV_DONTNEED`) reads as zeros in an anonymous mapping (a
//!   zero run in the epoch) and as its file's bytes in a file mapping;
//! - a mapping that is not tracked (new since the last epoch: Go's heap growth, a
//!   fresh `mmap`) is registered and protected in the freeze, and all of it is
//!   carried: its present pages, and zero runs for the rest when it is anonymous,
//!   so that nothing an older epoch held at those addresses survives the fold.
//!
//! The kernel facts this relies on are pinned in `track::epoch_facts`. Without a
//! tracker (an old kernel) every epoch is a full one.

use std::time::{Duration, Instant};

use crate::capture::track::{self, Tracker};
use crate::capture::{
    self, capture_frozen, clip_spans, copy_jobs, grow, place, refuse_shared_anon, stores_pages,
    subtract, Attached, Capture, CaptureTimes, Held, Memory, Options, PageRun, Vma, VmaKind, PAGE,
};
use crate::error::CaptureError;
use crate::linux::procfs::MapEntry;
use crate::linux::staging::Staging;

/// One program under continuous checkpointing.
#[derive(Debug)]
pub struct Session {
    attached: Attached,
    tracker: Option<Tracker>,
    next: u64,
    /// Why epochs are full ones (no write tracking), when they are.
    pub note: Option<String>,
    /// Test mode (`CS_TEST_VERIFY_CHAIN=1`): the memory the chain so far
    /// reconstructs, page by page, checked against a full read in every freeze.
    model: Option<Model>,
    /// Test mode (`CS_TEST_BREAK_TRACKER`): a delta made wrong on purpose, to show
    /// that the chain check catches it.
    broken: Option<Broken>,
    /// A staging buffer handed back by [`Session::recycle`], already faulted in,
    /// for the next epoch.
    spare: Option<Staging>,
}

/// What `CS_TEST_BREAK_TRACKER` leaves out of every delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Broken {
    /// `written`: the last page of every run in a mapping tracked before.
    Written,
    /// `released`: every run of zeros (pages the program gave back) in a mapping
    /// tracked before.
    Released,
    /// `mapping`: everything in mappings new since the last epoch.
    Mapping,
}

impl Broken {
    fn from_env() -> Option<Broken> {
        match std::env::var("CS_TEST_BREAK_TRACKER").ok()?.as_str() {
            "written" => Some(Broken::Written),
            "released" => Some(Broken::Released),
            "mapping" => Some(Broken::Mapping),
            _ => None,
        }
    }

    fn apply(self, c: &mut Capture) {
        if c.epoch.full {
            return;
        }
        let new = std::mem::take(&mut c.new_mappings);
        let in_new = |a: u64| new.iter().any(|&(s, e)| s <= a && a < e);
        let data = c.pages.staging.as_slice();
        let zero = |s: &PageRun| {
            data[s.offset..s.offset + (s.npages * PAGE) as usize]
                .iter()
                .all(|&b| b == 0)
        };
        let mut spans = Vec::with_capacity(c.pages.runs.len());
        for s in c.pages.runs.drain(..) {
            match self {
                Broken::Written if !in_new(s.start) => {
                    if s.npages > 1 {
                        spans.push(PageRun {
                            npages: s.npages - 1,
                            ..s
                        });
                    }
                }
                Broken::Released if !in_new(s.start) && zero(&s) => {}
                Broken::Mapping if in_new(s.start) => {}
                _ => spans.push(s),
            }
        }
        c.pages.runs = spans;
        if self == Broken::Mapping {
            c.epoch.zeros.retain(|&(s, _)| !in_new(s));
        }
        c.new_mappings = new;
    }
}

/// The chain's memory: page address -> contents (absent: zero).
type Model = std::collections::BTreeMap<u64, Box<[u8]>>;

/// Applies an epoch to the model: its pages, its zero runs, and only what lies in
/// its stored mappings survives (as in the fold).
fn apply(model: &mut Model, c: &Capture) {
    if c.epoch.full {
        model.clear();
    }
    let data = c.pages.staging.as_slice();
    for s in &c.pages.runs {
        for i in 0..s.npages {
            let off = s.offset + (i * PAGE) as usize;
            model.insert(s.start + i * PAGE, data[off..off + PAGE as usize].into());
        }
    }
    for &(start, end) in &c.epoch.zeros {
        for a in (start..end).step_by(PAGE as usize) {
            model.remove(&a);
        }
    }
    let stored: Vec<(u64, u64)> = c
        .epoch
        .vmas
        .iter()
        .filter(|v| stores_pages(v) && !v.reservation)
        .map(|v| (v.start, v.end))
        .collect();
    model.retain(|&a, _| {
        let i = stored.partition_point(|&(_, e)| e <= a);
        stored.get(i).is_some_and(|&(s, _)| s <= a)
    });
}

/// Compares every present stored page of the frozen program with the model.
fn verify(pid: i32, epoch: u64, vmas: &[Vma], model: &Model) -> Result<(), CaptureError> {
    use crate::linux::procfs::{PM_FILE, PM_PRESENT, PM_SWAP};
    let pagemap = crate::linux::procfs::Pagemap::open(pid)?;
    let mut entries = Vec::new();
    let zero = vec![0u8; PAGE as usize];
    let mismatch = |addr: u64, what: &str| CaptureError::ChainMismatch {
        pid,
        detail: format!("epoch {epoch}: the page at {addr:#x} {what}"),
    };
    // Present pages are read in runs of up to 256 (one call each), then compared.
    let mut buf = vec![0u8; 256 * PAGE as usize];
    let mut check_run = |start: u64, n: usize| -> Result<(), CaptureError> {
        let len = n * PAGE as usize;
        crate::linux::sys::read_remote(pid, &mut buf[..len], &[(start, len)]).map_err(
            |source| CaptureError::Memory {
                pid,
                addr: start,
                len,
                source,
            },
        )?;
        for k in 0..n {
            let addr = start + k as u64 * PAGE;
            let want = model.get(&addr).map_or(&zero[..], |b| &b[..]);
            if &buf[k * PAGE as usize..(k + 1) * PAGE as usize] != want {
                return Err(mismatch(addr, "differs from what the chain holds"));
            }
        }
        Ok(())
    };
    for v in vmas.iter().filter(|v| stores_pages(v) && !v.reservation) {
        let file_backed = matches!(v.kind, VmaKind::File { .. });
        pagemap.read(v.start, v.end, &mut entries)?;
        let mut run: Option<(u64, usize)> = None;
        for (i, e) in entries.iter().enumerate() {
            let addr = v.start + i as u64 * PAGE;
            let present = e & (PM_PRESENT | PM_SWAP) != 0;
            let skip = file_backed && (!present || e & PM_FILE != 0);
            if present && !skip {
                match run.as_mut() {
                    Some((s, n)) if *s + *n as u64 * PAGE == addr && *n < 256 => *n += 1,
                    _ => {
                        if let Some((s, n)) = run.take() {
                            check_run(s, n)?;
                        }
                        run = Some((addr, 1));
                    }
                }
                continue;
            }
            if skip {
                continue; // the file's bytes: not the chain's business
            }
            if model.get(&addr).is_some_and(|b| b[..] != zero[..]) {
                return Err(mismatch(addr, "is absent but the chain holds data for it"));
            }
        }
        if let Some((s, n)) = run.take() {
            check_run(s, n)?;
        }
    }
    Ok(())
}

impl Session {
    /// Attaches to `pid` and takes epoch 1 (full, pre-copied); the program runs on.
    pub fn start(pid: i32, opts: Options) -> Result<(Session, Capture), CaptureError> {
        let (mut c, held) = capture::capture_held(pid, opts)?;
        let (pause, tracker, attached) = held.resume_keeping();
        c.times.pause = pause;
        let note = c.precopy_note.clone();
        let attached = attached.ok_or(CaptureError::ProcessGone { pid })?;
        let model = std::env::var_os("CS_TEST_VERIFY_CHAIN").map(|_| {
            let mut m = Model::new();
            apply(&mut m, &c);
            m
        });
        Ok((
            Session {
                attached,
                tracker,
                next: 2,
                note,
                model,
                broken: Broken::from_env(),
                spare: None,
            },
            c,
        ))
    }

    /// The program's pid.
    pub fn pid(&self) -> i32 {
        self.attached.pid
    }

    /// Takes an epoch's staging buffer back once the epoch is written, for the
    /// next epoch (no new mapping to fault in per epoch). Buffers grown past
    /// 64 MiB (a full epoch's) are dropped, not kept.
    pub fn recycle(&mut self, c: Capture) {
        let staging = c.pages.staging;
        if staging.capacity() <= 64 << 20 {
            self.spare = Some(staging);
        }
    }

    /// Freezes the program, captures what changed since the previous epoch, and
    /// resumes it. The epoch is a delta when the session tracks writes.
    pub fn epoch(&mut self) -> Result<Capture, CaptureError> {
        let mut staging = match self.spare.take() {
            Some(s) => s,
            None => Staging::prefaulted(4 << 20).map_err(|e| CaptureError::ProcIo {
                path: "staging buffer".into(),
                source: e,
            })?,
        };
        let full = self.tracker.is_none();
        let pid = self.attached.pid;
        let t = Instant::now();
        let pre = match self.tracker.as_ref() {
            Some(tracker) => Some(pre_round(
                pid,
                tracker,
                &self.attached.maps_before,
                &mut staging,
            )?),
            None => None,
        };
        let pre_time = t.elapsed();
        let memory = match (self.tracker.as_mut(), pre.as_ref()) {
            (Some(t), Some(p)) => Memory::Delta(t, p),
            _ => Memory::Full,
        };
        let times = CaptureTimes {
            precopy: pre_time,
            staged_pages: pre.as_ref().map_or(0, |p| p.bytes as u64 / PAGE),
            ..CaptureTimes::default()
        };
        let (mut c, frozen) = capture_frozen(&mut self.attached, staging, memory, times, None)?;
        let at = frozen.frozen_at;
        c.epoch.number = self.next;
        c.epoch.full = full;
        if let Some(b) = self.broken {
            b.apply(&mut c);
        }
        if let Some(model) = self.model.as_mut() {
            // Still frozen: the chain must equal the memory exactly.
            apply(model, &c);
            verify(pid, c.epoch.number, &c.epoch.vmas, model)?;
        }
        frozen.resume();
        c.times.pause = at.elapsed();
        tracing::debug!(
            pid,
            epoch = c.epoch.number,
            pause_us = c.times.pause.as_micros() as u64,
            staged_pages = c.times.staged_pages,
            paused_pages = c.times.paused_pages,
            new_mappings = c.new_mappings.len(),
            "epoch captured"
        );
        tracing::trace!(pid, epoch = c.epoch.number, new = ?c.new_mappings, "mappings carried whole");
        // After the resume (an epoch never kills, so a refusal only stops the
        // session): no epoch that restore would refuse is written.
        crate::capture::refuse::captured(&c)?;
        self.next += 1;
        Ok(c)
    }
}

/// What an epoch's pre-copy round staged while the program ran.
#[derive(Debug)]
pub(crate) struct PreRound {
    /// Pages listed as written (and protected again), in address order, back to
    /// back from offset 0 of the staging buffer.
    pub(crate) staged: Vec<PageRun>,
    pub(crate) bytes: usize,
    /// The copy failed (a page was unmapped under it): the staged bytes are not
    /// to be used, and every staged page is copied again in the freeze.
    pub(crate) stale: bool,
}

/// The pre-copy round of a delta, while the program runs: one `PAGEMAP_SCAN`
/// over the address space lists the pages written since the last epoch and
/// protects them again (mappings the tracker does not know are skipped), then
/// those pages are copied into `staging`. A page written after the scan is
/// listed again by the freeze's scan and copied again there; a page released
/// after it likewise (a released page is listed, see `track::epoch_facts`). So
/// the freeze copies only what the program wrote in the short time since this
/// round, and the pause grows with the write rate rather than with the whole
/// dirty set of the interval.
fn pre_round(
    pid: i32,
    tracker: &Tracker,
    maps: &[MapEntry],
    staging: &mut Staging,
) -> Result<PreRound, CaptureError> {
    // User space only: `[vsyscall]` lies in the kernel's half, where the scan
    // fails with EFAULT.
    let user = |m: &&MapEntry| m.end <= 1 << 63;
    let (Some(first), Some(last)) = (maps.iter().find(user), maps.iter().rfind(user)) else {
        return Ok(PreRound {
            staged: Vec::new(),
            bytes: 0,
            stale: false,
        });
    };
    let scan_err = |e| CaptureError::ProcIo {
        path: format!("PAGEMAP_SCAN of /proc/{pid}/pagemap (pre-copy round)"),
        source: e,
    };
    let mut staged: Vec<PageRun> = Vec::new();
    let mut bytes = 0usize;
    let mut listed = Vec::new();
    // Rounds, as a live migration's pre-copy does: each lists (and protects again)
    // what was written since the previous one and copies it; a page written again
    // is copied again into its slot. A round that finds little ends them: the
    // freeze then copies only what was written since the last round.
    for _ in 0..PRE_ROUNDS {
        listed.clear();
        track::written_and_reprotect(
            &tracker.pagemap,
            first.start,
            last.end,
            track::Walk::Skipping,
            &mut listed,
        )
        .map_err(scan_err)?;
        let written: Vec<(u64, u64)> = listed.iter().map(|r| (r.start, r.end)).collect();
        let found = written.iter().map(|r| (r.1 - r.0) / PAGE).sum::<u64>();
        let held: Vec<(u64, u64)> = staged
            .iter()
            .map(|s| (s.start, s.start + s.npages * PAGE))
            .collect();
        let region = |(start, end): (u64, u64), categories: u64| track::PageRegion {
            start,
            end,
            categories,
        };
        let mut regions: Vec<track::PageRegion> = subtract(&held, &written)
            .into_iter()
            .map(|r| region(r, track::PAGE_IS_WPALLOWED))
            .chain(
                written
                    .iter()
                    .map(|&r| region(r, track::PAGE_IS_WPALLOWED | track::PAGE_IS_WRITTEN)),
            )
            .collect();
        regions.sort_unstable_by_key(|r| r.start);
        let (spans, jobs, len) = place(&regions, &staged, bytes);
        grow(staging, len)?;
        staged = spans;
        bytes = len;
        // The program runs: a listed page can be unmapped before it is read. Then
        // the freeze copies every staged page again instead. Test switch
        // `CS_TEST_PRE_ROUND_FAIL=1`: the copy is skipped and taken as failed (the
        // staged bytes are then garbage, so only the freeze's copy can make the
        // chain exact).
        let failed = if std::env::var_os("CS_TEST_PRE_ROUND_FAIL").is_some() {
            true
        } else {
            copy_jobs(pid, jobs, staging.as_mut_slice()).is_err()
        };
        if failed {
            return Ok(PreRound {
                staged,
                bytes,
                stale: true,
            });
        }
        if found < PRE_ROUND_ENOUGH {
            break;
        }
    }
    Ok(PreRound {
        staged,
        bytes,
        stale: false,
    })
}

/// At most this many pre-copy rounds before a freeze.
const PRE_ROUNDS: usize = 2;
/// A round that finds fewer written pages than this is the last (copying them
/// in the freeze costs ~1 µs a page).
const PRE_ROUND_ENOUGH: u64 = 64;

impl Held {
    /// Resumes the program and hands back the pause, the tracker and the claim, for
    /// a session that goes on with them.
    pub(crate) fn resume_keeping(mut self) -> (Duration, Option<Tracker>, Option<Attached>) {
        let (pre, attached) = self.take_parts();
        let pause = self.resume();
        (pause, pre.map(|p| p.into_tracker()), attached)
    }
}

/// Address ranges a delta learns besides its pages.
#[derive(Debug, Default)]
pub(crate) struct DeltaRanges {
    /// Anonymous ranges that read as zero (released, or never touched in a new
    /// mapping).
    pub(crate) zeros: Vec<(u64, u64)>,
    /// Mappings new since the last epoch.
    pub(crate) new_mappings: Vec<(u64, u64)>,
}

/// The memory of an epoch delta (see the module docs). Records released ranges of
/// anonymous memory and new mappings in `out`; returns the spans, the copy time and the pages
/// copied in the freeze. The pre-copy round's pages in tracked mappings keep their
/// staged bytes unless the freeze's scan lists them again.
pub(crate) fn capture_delta(
    pid: i32,
    maps: &[MapEntry],
    vmas: &[Vma],
    staging: &mut Staging,
    tracker: &mut Tracker,
    pre: &PreRound,
    out: &mut DeltaRanges,
) -> Result<(Vec<PageRun>, Duration, u64), CaptureError> {
    let scan_err = |e| CaptureError::ProcIo {
        path: format!("PAGEMAP_SCAN of /proc/{pid}/pagemap"),
        source: e,
    };
    let region = |(start, end): (u64, u64), categories: u64| track::PageRegion {
        start,
        end,
        categories,
    };
    let clean = track::PAGE_IS_WPALLOWED;
    let dirty = track::PAGE_IS_WPALLOWED | track::PAGE_IS_WRITTEN;
    // What to store, in address order: clean regions keep their staged bytes.
    let mut regions: Vec<track::PageRegion> = Vec::new();
    let mut listed = Vec::new();
    let mut present = Vec::new();
    for (m, v) in maps.iter().zip(vmas) {
        if !stores_pages(v) {
            continue;
        }
        refuse_shared_anon(pid, m, v)?;
        let file_backed = matches!(v.kind, VmaKind::File { .. });
        let tracked = track::is_tracked(&tracker.pagemap, m.start).map_err(scan_err)?;
        if tracked {
            listed.clear();
            track::written_and_reprotect(
                &tracker.pagemap,
                m.start,
                m.end,
                track::Walk::Tracked,
                &mut listed,
            )
            .map_err(scan_err)?;
            // Every listed page is read, present or not: a released anonymous
            // page reads as zeros (the encoder writes a zero run for it) and one
            // of a file mapping as the file's bytes. The read maps the zero page
            // at an absent address; the page keeps its write-protect marker, so
            // it is not listed again unless written.
            let written: Vec<(u64, u64)> = listed.iter().map(|r| (r.start, r.end)).collect();
            let staged = clip_spans(&pre.staged, m.start, m.end);
            let mut mine: Vec<track::PageRegion> = if pre.stale {
                staged.iter().map(|&r| region(r, dirty)).collect()
            } else {
                subtract(&staged, &written)
                    .into_iter()
                    .map(|r| region(r, clean))
                    .collect()
            };
            let again = if pre.stale {
                subtract(&written, &staged)
            } else {
                written
            };
            mine.extend(again.into_iter().map(|r| region(r, dirty)));
            mine.sort_unstable_by_key(|r| r.start);
            regions.extend(mine);
        } else {
            // New since the last epoch: start tracking it now (nothing runs until
            // the resume), and carry all of it. Pages the pre-copy round staged
            // here belonged to a mapping that is gone: they are left out.
            if m.write && !m.shared {
                tracker.protect(m.start, m.end);
            }
            out.new_mappings.push((m.start, m.end));
            present.clear();
            track::scan(
                &tracker.pagemap,
                m.start,
                m.end,
                track::Query::stored(0),
                &mut present,
            )
            .map_err(scan_err)?;
            let mut at = m.start;
            for p in &present {
                if p.start > at && !file_backed {
                    out.zeros.push((at, p.start));
                }
                regions.push(region((p.start, p.end), dirty));
                at = p.end;
            }
            if at < m.end && !file_backed {
                out.zeros.push((at, m.end));
            }
        }
    }
    let (spans, jobs, len) = place(&regions, &pre.staged, pre.bytes);
    grow(staging, len)?;
    let copied = jobs.iter().map(|j| j.len() as u64).sum::<u64>() / PAGE;
    let t = Instant::now();
    copy_jobs(pid, jobs, staging.as_mut_slice())?;
    Ok((spans, t.elapsed(), copied))
}
