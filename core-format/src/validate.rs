//! Semantic validation of one epoch, after every frame has parsed.
//!
//! [`CheckpointValidator`] is fed an epoch's frames in stream order and keeps only
//! O(1) state plus a caller-provided scratch slice of [`VmaRange`]s (no allocator
//! needed: the stub passes a static array, the driver a `Vec`). The rules, each with
//! its own error variant:
//!
//! 1. The first frame is `EpochBegin`, the second `ProcessInfo`; no control frames
//!    (Hello/Ack/Heartbeat/Error) inside an epoch; nothing after `EpochCommit`.
//! 2. ProcessInfo: page size 4096; XSAVE size a multiple of 64 and at least 576; mm
//!    layout pairs ordered (start ≤ end). (The arch is known once parsed.)
//! 3. VmaTable frames (one or more, all before the first PageRun): VMAs in increasing
//!    address order without overlap, across frames.
//! 4. PageRuns in increasing address order without overlap; every page inside a VMA
//!    (adjacent VMAs may share a run) and none in a PROT_NONE VMA or reservation.
//! 5. ThreadStates in strictly increasing tid order (so tids are unique), each with an
//!    XSAVE blob of `ProcessInfo.xsave_size_bytes`; one of them is the main thread
//!    (`tid == pid`); their number equals `ProcessInfo.thread_count`.
//! 6. Exactly one SignalTable (SIGKILL and SIGSTOP at SIG_DFL) and one FdTable (fds in
//!    increasing order, none of kind `Other`).
//! 7. Exactly one MappedFiles (its paths ordered: checked when parsing). Credentials
//!    frames in strictly increasing tid order, one of them for the main thread, as
//!    many as `ProcessInfo.thread_count` (format minor 1).
//! 8. EpochCommit: same epoch number as EpochBegin, `frame_count` and `digest` equal to
//!    those of the frames before it ([`crate::EpochDigest`]).
//!
//! Only after [`CheckpointValidator::finish`] accepts may the epoch be applied.

use crate::epoch::{EpochBegin, EpochCommit, EpochDigest, EpochKind};
use crate::error::Error;
use crate::fd::FdKind;
use crate::header::{FrameHeader, FrameKind};
use crate::page::PageRun;
use crate::process::ProcessInfo;
use crate::record::{Frame, Record};
use crate::signal::SignalTable;
use crate::thread::ThreadState;
use crate::vma::VmaTable;

/// What the validator keeps of each VMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VmaRange {
    /// Start address.
    pub start: u64,
    /// End address.
    pub end: u64,
    /// PROT_NONE or a reservation: page runs may not touch it.
    pub reservation: bool,
}

/// What an accepted epoch held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochSummary {
    /// Epoch number.
    pub epoch: u64,
    /// Full or delta.
    pub kind: EpochKind,
    /// Frames before the commit (the EpochBegin included).
    pub frames: u32,
    /// Thread states.
    pub threads: u32,
    /// VMAs.
    pub vmas: u32,
    /// Page-run frames.
    pub page_runs: u32,
    /// Pages in those runs.
    pub pages: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    ExpectBegin,
    ExpectProcessInfo,
    Body,
    Committed,
}

#[derive(Debug, Clone, Copy)]
struct ProcFacts {
    pid: u32,
    thread_count: u32,
    xsave_size_bytes: u32,
}

/// Validates one epoch frame by frame (see the module docs).
#[derive(Debug)]
pub struct CheckpointValidator<S> {
    vmas: S,
    nvmas: usize,
    phase: Phase,
    begin: Option<EpochBegin>,
    proc_facts: Option<ProcFacts>,
    digest: EpochDigest,
    threads: u32,
    last_tid: Option<u32>,
    main_thread_seen: bool,
    seen_vma_table: bool,
    seen_signal_table: bool,
    seen_fd_table: bool,
    seen_mapped_files: bool,
    creds: u32,
    last_creds_tid: Option<u32>,
    main_creds_seen: bool,
    page_runs: u32,
    pages: u64,
    last_run_end: Option<u64>,
    vma_cursor: usize,
}

impl<S: AsRef<[VmaRange]> + AsMut<[VmaRange]>> CheckpointValidator<S> {
    /// A validator that can hold as many VMAs as `scratch` has entries.
    pub fn new(scratch: S) -> Self {
        CheckpointValidator {
            vmas: scratch,
            nvmas: 0,
            phase: Phase::ExpectBegin,
            begin: None,
            proc_facts: None,
            digest: EpochDigest::new(),
            threads: 0,
            last_tid: None,
            main_thread_seen: false,
            seen_vma_table: false,
            seen_signal_table: false,
            seen_fd_table: false,
            seen_mapped_files: false,
            creds: 0,
            last_creds_tid: None,
            main_creds_seen: false,
            page_runs: 0,
            pages: 0,
            last_run_end: None,
            vma_cursor: 0,
        }
    }

    /// The VMAs seen so far.
    pub fn vmas(&self) -> &[VmaRange] {
        &self.vmas.as_ref()[..self.nvmas]
    }

    /// Feeds the next frame of the epoch.
    pub fn push(&mut self, frame: &Frame<'_>) -> Result<(), Error> {
        self.push_parts(&frame.header, &frame.record)
    }

    /// Feeds the next frame as its header and record.
    pub fn push_parts(&mut self, header: &FrameHeader, record: &Record<'_>) -> Result<(), Error> {
        let kind = record.kind();
        if kind.is_control() {
            return Err(Error::ValidateUnexpectedControl { kind });
        }
        match self.phase {
            Phase::Committed => return Err(Error::ValidateRecordAfterCommit { kind }),
            Phase::ExpectBegin => {
                let Record::EpochBegin(b) = record else {
                    return Err(Error::ValidateMissingEpochBegin { found: kind });
                };
                self.begin = Some(*b);
                self.phase = Phase::ExpectProcessInfo;
            }
            Phase::ExpectProcessInfo => {
                let Record::ProcessInfo(p) = record else {
                    return Err(Error::ValidateMissingProcessInfo { found: kind });
                };
                self.process_info(p)?;
                self.phase = Phase::Body;
            }
            Phase::Body => match record {
                Record::EpochBegin(_) | Record::ProcessInfo(_) => {
                    return Err(Error::ValidateDuplicateRecord { kind })
                }
                Record::VmaTable(t) => self.vma_table(t)?,
                Record::PageRun(r) => self.page_run(r)?,
                Record::ThreadState(t) => self.thread(t)?,
                Record::SignalTable(t) => self.signal_table(t)?,
                Record::FdTable(t) => self.fd_table(t)?,
                Record::Credentials(c) => self.credentials(c)?,
                Record::MappedFiles(_) => {
                    if self.seen_mapped_files {
                        return Err(Error::ValidateDuplicateRecord { kind });
                    }
                    self.seen_mapped_files = true;
                }
                Record::EpochCommit(c) => {
                    self.commit(c)?;
                    self.phase = Phase::Committed;
                    return Ok(());
                }
                Record::Hello(_) | Record::Ack(_) | Record::Heartbeat(_) | Record::Error(_) => {
                    return Err(Error::ValidateUnexpectedControl { kind })
                }
            },
        }
        self.digest.update_header(header);
        Ok(())
    }

    /// Accepts the epoch if its commit has been seen and verified.
    pub fn finish(self) -> Result<EpochSummary, Error> {
        if self.phase != Phase::Committed {
            return Err(Error::ValidateMissingCommit);
        }
        let Some(begin) = self.begin else {
            return Err(Error::ValidateMissingCommit);
        };
        Ok(EpochSummary {
            epoch: begin.epoch,
            kind: begin.kind,
            frames: self.digest.frame_count(),
            threads: self.threads,
            vmas: self.nvmas as u32,
            page_runs: self.page_runs,
            pages: self.pages,
        })
    }

    fn process_info(&mut self, p: &ProcessInfo<'_>) -> Result<(), Error> {
        if p.page_size != crate::PAGE_SIZE as u32 {
            return Err(Error::ValidateUnsupportedPageSize {
                page_size: p.page_size,
            });
        }
        if p.xsave_size_bytes < 576 || !p.xsave_size_bytes.is_multiple_of(64) {
            return Err(Error::ValidateBadXsaveSize {
                xsave_size_bytes: p.xsave_size_bytes,
            });
        }
        let mm = &p.mm;
        for (field, start, end) in [
            ("code", mm.start_code, mm.end_code),
            ("data", mm.start_data, mm.end_data),
            ("brk", mm.start_brk, mm.brk),
            ("arg", mm.arg_start, mm.arg_end),
            ("env", mm.env_start, mm.env_end),
        ] {
            if start > end {
                return Err(Error::ValidateBadMmLayout { field });
            }
        }
        self.proc_facts = Some(ProcFacts {
            pid: p.pid,
            thread_count: p.thread_count,
            xsave_size_bytes: p.xsave_size_bytes,
        });
        Ok(())
    }

    fn vma_table(&mut self, t: &VmaTable<'_>) -> Result<(), Error> {
        if self.page_runs > 0 {
            return Err(Error::ValidateVmaAfterPageRun {
                start: t.vmas.iter().next().map_or(0, |v| v.start),
            });
        }
        self.seen_vma_table = true;
        let capacity = self.vmas.as_ref().len();
        for v in t.vmas.iter() {
            if let Some(prev) = self.vmas().last() {
                if v.start < prev.end {
                    return Err(Error::ValidateOverlappingVma {
                        start: v.start,
                        prev_end: prev.end,
                    });
                }
            }
            if self.nvmas >= capacity {
                return Err(Error::ValidateTooManyVmas {
                    capacity: capacity as u32,
                });
            }
            self.vmas.as_mut()[self.nvmas] = VmaRange {
                start: v.start,
                end: v.end,
                reservation: v.is_reservation(),
            };
            self.nvmas += 1;
        }
        Ok(())
    }

    fn page_run(&mut self, r: &PageRun<'_>) -> Result<(), Error> {
        let (start, end) = (r.start, r.end());
        if let Some(prev_end) = self.last_run_end {
            if start < prev_end {
                return Err(Error::ValidatePageRunOrder { start, prev_end });
            }
        }
        // Runs are increasing, so the cursor only moves forward.
        let n = self.nvmas;
        let mut c = self.vma_cursor;
        {
            let vmas = &self.vmas.as_ref()[..n];
            while c < n && vmas[c].end <= start {
                c += 1;
            }
            let mut addr = start;
            while addr < end {
                let Some(v) = vmas.get(c).filter(|v| v.start <= addr) else {
                    return Err(Error::ValidatePageRunOutsideVma { addr });
                };
                if v.reservation {
                    return Err(Error::ValidatePageRunInReservation { addr });
                }
                addr = end.min(v.end);
                if addr < end {
                    c += 1;
                }
            }
        }
        self.vma_cursor = c;
        self.last_run_end = Some(end);
        self.page_runs += 1;
        self.pages += u64::from(r.npages);
        Ok(())
    }

    fn thread(&mut self, t: &ThreadState<'_>) -> Result<(), Error> {
        if let Some(last) = self.last_tid {
            if t.tid == last {
                return Err(Error::ValidateDuplicateTid { tid: t.tid });
            }
            if t.tid < last {
                return Err(Error::ValidateThreadOrder { tid: t.tid });
            }
        }
        self.last_tid = Some(t.tid);
        if let Some(p) = self.proc_facts {
            if t.xsave.len() != p.xsave_size_bytes as usize {
                return Err(Error::ValidateXsaveSize {
                    tid: t.tid,
                    len_bytes: t.xsave.len() as u32,
                    expected: p.xsave_size_bytes,
                });
            }
            if t.tid == p.pid {
                self.main_thread_seen = true;
            }
        }
        self.threads += 1;
        Ok(())
    }

    fn credentials(&mut self, c: &crate::Credentials<'_>) -> Result<(), Error> {
        if self.last_creds_tid.is_some_and(|last| c.tid <= last) {
            return Err(Error::ValidateCredentialsOrder { tid: c.tid });
        }
        self.last_creds_tid = Some(c.tid);
        if self.proc_facts.is_some_and(|p| p.pid == c.tid) {
            self.main_creds_seen = true;
        }
        self.creds += 1;
        Ok(())
    }

    fn signal_table(&mut self, t: &SignalTable<'_>) -> Result<(), Error> {
        if self.seen_signal_table {
            return Err(Error::ValidateDuplicateRecord {
                kind: FrameKind::SignalTable,
            });
        }
        self.seen_signal_table = true;
        for signo in [9u32, 19] {
            if t.get(signo).is_some_and(|a| a.handler != 0) {
                return Err(Error::ValidateSignalNotCatchable { signo });
            }
        }
        Ok(())
    }

    fn fd_table(&mut self, t: &crate::FdTable<'_>) -> Result<(), Error> {
        if self.seen_fd_table {
            return Err(Error::ValidateDuplicateRecord {
                kind: FrameKind::FdTable,
            });
        }
        self.seen_fd_table = true;
        let mut last: Option<i32> = None;
        for fd in t.fds.iter() {
            if last.is_some_and(|l| fd.fd <= l) {
                return Err(Error::ValidateDuplicateFd { fd: fd.fd });
            }
            last = Some(fd.fd);
            if matches!(fd.kind, FdKind::Other { .. }) {
                return Err(Error::ValidateUnsupportedFd { fd: fd.fd });
            }
        }
        Ok(())
    }

    fn commit(&mut self, c: &EpochCommit) -> Result<(), Error> {
        let begin = self.begin.map_or(0, |b| b.epoch);
        if c.epoch != begin {
            return Err(Error::ValidateEpochMismatch {
                begin,
                commit: c.epoch,
            });
        }
        for (seen, kind) in [
            (self.seen_vma_table, FrameKind::VmaTable),
            (self.seen_signal_table, FrameKind::SignalTable),
            (self.seen_fd_table, FrameKind::FdTable),
            (self.seen_mapped_files, FrameKind::MappedFiles),
        ] {
            if !seen {
                return Err(Error::ValidateMissingRecord { kind });
            }
        }
        if let Some(p) = self.proc_facts {
            if self.threads != p.thread_count {
                return Err(Error::ValidateThreadCount {
                    expected: p.thread_count,
                    found: self.threads,
                });
            }
            if !self.main_thread_seen {
                return Err(Error::ValidateMissingMainThread { pid: p.pid });
            }
            if self.creds != p.thread_count {
                return Err(Error::ValidateCredentialsCount {
                    expected: p.thread_count,
                    found: self.creds,
                });
            }
            if !self.main_creds_seen {
                return Err(Error::ValidateMissingMainCredentials { pid: p.pid });
            }
        }
        if c.frame_count != self.digest.frame_count() {
            return Err(Error::ValidateFrameCount {
                expected: c.frame_count,
                found: self.digest.frame_count(),
            });
        }
        if c.digest != self.digest.digest() {
            return Err(Error::ValidateEpochDigest {
                expected: c.digest,
                computed: self.digest.digest(),
            });
        }
        Ok(())
    }
}

/// Validates a whole epoch held in memory (std): sizes the VMA scratch from the frames.
#[cfg(feature = "std")]
pub fn validate_epoch(frames: &[Frame<'_>]) -> Result<EpochSummary, Error> {
    let nvmas: usize = frames
        .iter()
        .map(|f| match &f.record {
            Record::VmaTable(t) => t.vmas.len(),
            _ => 0,
        })
        .sum();
    let mut v = CheckpointValidator::new(std::vec![VmaRange::default(); nvmas]);
    for f in frames {
        v.push(f)?;
    }
    v.finish()
}
