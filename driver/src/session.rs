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
//!   ([`crate::track::written_and_reprotect`]); every listed page is read: one the
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

use crate::capture::{
    self, capture_frozen, copy_pages, refuse_shared_anon, stores_pages, Attached, Capture,
    CaptureTimes, Held, Memory, Options, PageSpan, VmaCapture, VmaKind, PAGE,
};
use crate::error::CaptureError;
use crate::inject;
use crate::procfs::MapEntry;
use crate::staging::Staging;
use crate::track::{self, Tracker};

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
}

/// The chain's memory: page address -> contents (absent: zero).
type Model = std::collections::BTreeMap<u64, Box<[u8]>>;

/// Applies an epoch to the model: its pages, its zero runs, and only what lies in
/// its stored mappings survives (as in the fold).
fn apply(model: &mut Model, c: &Capture) {
    if c.full {
        model.clear();
    }
    let data = c.staging.as_slice();
    for s in &c.spans {
        for i in 0..s.npages {
            let off = s.offset + (i * PAGE) as usize;
            model.insert(s.start + i * PAGE, data[off..off + PAGE as usize].into());
        }
    }
    for &(start, end) in &c.zeros {
        for a in (start..end).step_by(PAGE as usize) {
            model.remove(&a);
        }
    }
    let stored: Vec<(u64, u64)> = c
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
fn verify(pid: i32, epoch: u64, vmas: &[VmaCapture], model: &Model) -> Result<(), CaptureError> {
    let pagemap = crate::procfs::Pagemap::open(pid)?;
    let mut entries = Vec::new();
    let mut page = vec![0u8; PAGE as usize];
    let zero = vec![0u8; PAGE as usize];
    let mismatch = |addr: u64, what: &str| CaptureError::ChainMismatch {
        pid,
        detail: format!("epoch {epoch}: the page at {addr:#x} {what}"),
    };
    for v in vmas.iter().filter(|v| stores_pages(v) && !v.reservation) {
        let file_backed = matches!(v.kind, VmaKind::File { .. });
        pagemap.read(v.start, v.end, &mut entries)?;
        for (i, e) in entries.iter().enumerate() {
            let addr = v.start + i as u64 * PAGE;
            let present = e & (crate::procfs::PM_PRESENT | crate::procfs::PM_SWAP) != 0;
            if file_backed && (!present || e & crate::procfs::PM_FILE != 0) {
                continue; // the file's bytes: not the chain's business
            }
            let want = model.get(&addr).map_or(&zero[..], |b| &b[..]);
            if !present {
                if want != &zero[..] {
                    return Err(mismatch(addr, "is absent but the chain holds data for it"));
                }
                continue;
            }
            crate::sys::read_remote(pid, &mut page, &[(addr, PAGE as usize)]).map_err(
                |source| CaptureError::Memory {
                    pid,
                    addr,
                    len: PAGE as usize,
                    source,
                },
            )?;
            if page != want {
                return Err(mismatch(addr, "differs from what the chain holds"));
            }
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
            },
            c,
        ))
    }

    /// The program's pid.
    pub fn pid(&self) -> i32 {
        self.attached.pid
    }

    /// Freezes the program, captures what changed since the previous epoch, and
    /// resumes it. The epoch is a delta when the session tracks writes.
    pub fn epoch(&mut self) -> Result<Capture, CaptureError> {
        let staging = Staging::prefaulted(4 << 20).map_err(|e| CaptureError::ProcIo {
            path: "staging buffer".into(),
            source: e,
        })?;
        let full = self.tracker.is_none();
        let memory = match self.tracker.as_mut() {
            Some(t) => Memory::Delta(t),
            None => Memory::Full,
        };
        let (mut c, frozen) = capture_frozen(
            &mut self.attached,
            staging,
            memory,
            CaptureTimes::default(),
            None,
        )?;
        let at = frozen.frozen_at;
        let pid = frozen.pid;
        c.epoch = self.next;
        c.full = full;
        if let Some(model) = self.model.as_mut() {
            // Still frozen: the chain must equal the memory exactly.
            apply(model, &c);
            verify(pid, c.epoch, &c.vmas, model)?;
        }
        frozen.resume();
        inject::redeliver_deferred(pid);
        c.times.pause = at.elapsed();
        // After the resume (an epoch never kills, so a refusal only stops the
        // session): no epoch that restore would refuse is written.
        crate::refuse::captured(&c)?;
        self.next += 1;
        Ok(c)
    }
}

impl Held {
    /// Resumes the program and hands back the pause, the tracker and the claim, for
    /// a session that goes on with them.
    pub(crate) fn resume_keeping(mut self) -> (Duration, Option<Tracker>, Option<Attached>) {
        let (pre, attached) = self.take_parts();
        let pause = self.resume();
        (pause, pre.map(|p| p.into_tracker()), attached)
    }
}

/// The memory of an epoch delta (see the module docs). Appends released ranges of
/// anonymous memory to `zeros`; returns the copied spans like the full capture.
pub(crate) fn capture_delta(
    pid: i32,
    maps: &[MapEntry],
    vmas: &[VmaCapture],
    staging: &mut Staging,
    tracker: &mut Tracker,
    zeros: &mut Vec<(u64, u64)>,
) -> Result<(Vec<PageSpan>, Duration, u64), CaptureError> {
    let scan_err = |e| CaptureError::ProcIo {
        path: format!("PAGEMAP_SCAN of /proc/{pid}/pagemap"),
        source: e,
    };
    // Ranges to copy, in address order.
    let mut copy: Vec<(u64, u64)> = Vec::new();
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
            track::written_and_reprotect(&tracker.pagemap, m.start, m.end, &mut listed)
                .map_err(scan_err)?;
            // Every listed page is read, present or not: a released anonymous
            // page reads as zeros (the encoder writes a zero run for it) and one
            // of a file mapping as the file's bytes. No presence scan per run:
            // with scattered writes that was one ioctl per page. The read maps
            // the zero page at an absent address; the page keeps its
            // write-protect marker, so it is not listed again unless written.
            copy.extend(listed.iter().map(|r| (r.start, r.end)));
        } else {
            // New since the last epoch: start tracking it now (nothing runs until
            // the resume), and carry all of it.
            if m.write && !m.shared {
                tracker.protect(m.start, m.end);
            }
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
                    zeros.push((at, p.start));
                }
                copy.push((p.start, p.end));
                at = p.end;
            }
            if at < m.end && !file_backed {
                zeros.push((at, m.end));
            }
        }
    }
    let mut spans: Vec<PageSpan> = Vec::with_capacity(copy.len());
    let mut total = 0u64;
    for (start, end) in copy {
        let npages = (end - start) / PAGE;
        match spans.last_mut() {
            Some(s) if s.start + s.npages * PAGE == start => s.npages += npages,
            _ => spans.push(PageSpan {
                start,
                npages,
                offset: (total * PAGE) as usize,
            }),
        }
        total += npages;
    }
    let t = Instant::now();
    copy_pages(pid, &spans, staging, total)?;
    Ok((spans, t.elapsed(), total))
}
