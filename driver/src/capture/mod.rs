//! Capturing a frozen process into memory ([`Capture`]), the one input of every
//! consumer (the image writer today, the replication stream next).
//!
//! Order inside the freeze: stop every thread ([`Frozen::freeze`]); read each thread's
//! registers, XSAVE area and signal mask; inject the queries that only the target can
//! answer (per-thread `sigaltstack`, `rt_sigaction` for caught signals) through a
//! scratch page mapped by an injected `mmap` and removed again; then read the
//! mappings (after the scratch page is gone), the present pages (pagemap) into the
//! staging buffer, and the fds. The program stays frozen in a [`Held`] until the
//! caller resumes it (then writes the image) or commits the image and kills it.

pub mod creds;
pub mod fds;
pub mod freeze;
pub mod identity;
pub mod inject;
pub mod refuse;
pub mod session;
pub mod track;

use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use crate::capture::freeze::Frozen;
use crate::error::CaptureError;
use crate::linux::procfs::{self, MapEntry, Pagemap, PM_FILE, PM_PRESENT, PM_SWAP};
use crate::linux::staging::Staging;
use crate::linux::sys::{self, UserRegs};
use crate::lock::{ProgramLock, Role};
pub use crate::model::{
    Epoch, MmLayout, PageRun, PageSource, Process, Rlimit, SigAction, Thread, Vma, VmaKind, PAGE,
    PROT_R, PROT_W, PROT_X,
};
use inject::{Injector, Restart, Site};
use track::Tracker;

/// Scratch space per thread for its safety frame (XSAVE areas reach ~11 KiB with AMX).
const FRAME_SLOT: u64 = 16 << 10;

/// Timings of the phases of one capture.
#[derive(Clone, Copy, Debug, Default)]
pub struct CaptureTimes {
    pub freeze: Duration,
    pub threads: Duration,
    pub inject: Duration,
    pub memory: Duration,
    /// Of `memory`: the process_vm_readv copy into the staging buffer.
    pub copy: Duration,
    pub fds: Duration,
    /// From the first interrupt to the resume (or kill).
    pub pause: Duration,
    /// Pre-copy, while the program runs: creating the write tracker (which stops
    /// the program for `prefreeze`), protecting, and copying every present page.
    pub precopy: Duration,
    pub prefreeze: Duration,
    /// Pages copied before the freeze, and pages (re)copied inside it.
    pub staged_pages: u64,
    pub paused_pages: u64,
}

/// How to capture.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Copy every present page while the program still runs, with write-protect
    /// tracking, and inside the freeze copy only the pages written since
    /// ([`crate::capture::track`]). Without it the whole memory is copied in the freeze.
    pub precopy: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { precopy: true }
    }
}

/// One capture: the epoch, the staged bytes of its pages, and how it went.
#[derive(Debug)]
pub struct Capture {
    pub epoch: Epoch,
    /// The program's pid in the driver's pid namespace.
    pub host_pid: i32,
    /// The stored pages: runs into the staging buffer.
    pub pages: Staged,
    pub times: CaptureTimes,
    /// Why the pre-copy was not used, when it was asked for and could not be.
    pub precopy_note: Option<String>,
    /// In a delta: mappings new since the last epoch (registered with the tracker
    /// in this freeze and carried whole).
    pub new_mappings: Vec<(u64, u64)>,
}

impl Capture {
    pub fn npages(&self) -> u64 {
        self.pages.runs.iter().map(|s| s.npages).sum()
    }
}

/// Page runs whose bytes sit in a staging buffer (`offset` = byte offset in it).
#[derive(Debug)]
pub struct Staged {
    pub staging: Staging,
    pub runs: Vec<PageRun>,
}

impl PageSource for Staged {
    fn runs(&self) -> &[PageRun] {
        &self.runs
    }

    fn bytes(&self, i: usize) -> &[u8] {
        let r = &self.runs[i];
        let len = (r.npages * PAGE) as usize;
        self.staging
            .as_slice()
            .get(r.offset..r.offset + len)
            .unwrap_or_default()
    }
}

/// What to do with the process after the capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    Resume,
    Kill,
}

const SYS_CLOSE: u64 = 3;
const SYS_MMAP: u64 = 9;
const SYS_MUNMAP: u64 = 11;
const SYS_RT_SIGACTION: u64 = 13;
const SYS_SIGALTSTACK: u64 = 131;

/// Freezes `pid`, captures it, then resumes or kills it (with the default options).
pub fn capture(pid: i32, after: After) -> Result<Capture, CaptureError> {
    capture_with(pid, after, Options::default())
}

/// Freezes `pid`, captures it, then resumes or kills it.
pub fn capture_with(pid: i32, after: After, opts: Options) -> Result<Capture, CaptureError> {
    let (mut c, held) = capture_held(pid, opts)?;
    c.times.pause = match after {
        After::Resume => held.resume(),
        After::Kill => held.kill(),
    };
    Ok(c)
}

/// A captured program still frozen, and the driver's claim on it. Dropping it
/// resumes the program as it was (a group-stopped one stays stopped): every error
/// path after the capture leaves the program running.
#[derive(Debug)]
pub struct Held {
    frozen: Option<Frozen>,
    /// The pre-copy's tracker; closing it ends the write tracking.
    pre: Option<Precopy>,
    frozen_at: Instant,
    /// The lock and pidfd (and, for an epoch session, what it keeps).
    attached: Option<Attached>,
}

impl Held {
    /// The pre-copy (with its tracker) and the claim, taken out (for a session).
    pub(crate) fn take_parts(&mut self) -> (Option<Precopy>, Option<Attached>) {
        (self.pre.take(), self.attached.take())
    }

    /// Lets the program run again; returns the pause (from the first interrupt).
    pub fn resume(mut self) -> Duration {
        if let Some(f) = self.frozen.take() {
            f.resume();
        }
        let pause = self.frozen_at.elapsed();
        self.pre = None;
        pause
    }

    /// Kills the program, still frozen (it never runs again), and waits until it is
    /// gone; returns the time from the first interrupt to the kill.
    pub fn kill(mut self) -> Duration {
        let pause;
        if let Some(f) = self.frozen.take() {
            f.kill();
            pause = self.frozen_at.elapsed();
            // Wait until it is really gone (its sockets closed), so a restore that
            // follows at once can bind the same addresses.
            // A pidfd turns readable at exit.
            if let Some(a) = self.attached.as_ref() {
                let _ = sys::wait_readable(a.pidfd.as_fd(), 10_000);
            }
        } else {
            pause = self.frozen_at.elapsed();
        }
        self.pre = None;
        pause
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(f) = self.frozen.take() {
            f.resume();
        }
    }
}

/// Refuses a program another tracer holds (a debugger, strace, a driver of an
/// older version that took no lock).
fn refuse_traced(pid: i32) -> Result<(), CaptureError> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).map_err(|e| CaptureError::ProcIo {
        path: path.clone(),
        source: e,
    })?;
    let tracer = text
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse::<i32>().ok())
        .unwrap_or(0);
    if tracer != 0 {
        let comm = fs::read_to_string(format!("/proc/{tracer}/comm")).unwrap_or_default();
        return Err(CaptureError::Traced {
            pid,
            tracer,
            comm: comm.trim().to_string(),
        });
    }
    Ok(())
}

/// A program the driver has claimed: its lock, a pidfd, and the facts that do not
/// change while it runs, read once before any freeze ([`attach`]).
#[derive(Debug)]
pub struct Attached {
    pub pid: i32,
    ns_pid: i32,
    pidfd: OwnedFd,
    _lock: ProgramLock,
    host_xsave: u32,
    xcr0: u64,
    exe: Vec<u8>,
    cwd: Vec<u8>,
    comm: Vec<u8>,
    auxv: Vec<u8>,
    rlimits: Vec<Rlimit>,
    kernel_release: Vec<u8>,
    vdso: Option<(u64, u64)>,
    /// The newest full read of the mappings (their VmFlags for the freeze's fast read).
    pub(crate) maps_before: Vec<MapEntry>,
    mapped_files: Vec<crate::capture::identity::FileIdentity>,
    /// What the injected queries found last time (a session's epochs reuse it).
    queried: Option<Queried>,
}

/// What the injected queries found in the last capture of a session: each
/// thread's alternate signal stack, securebits and dumpable flag, and the signal
/// handlers. An epoch reuses them instead of injecting code again when the same
/// threads run and `SigCgt`/`SigIgn` are unchanged, and queries afresh every
/// [`REQUERY_EVERY`] epochs regardless. Why this is safe for Go: the runtime sets
/// a thread's alternate stack once when the thread starts, and installs one
/// handler (`runtime.sighandler`) for every signal it catches, so a change shows
/// as a new thread or in the caught/ignored sets. A program that swaps one handler
/// for another, or moves a thread's alternate stack, is seen at the next re-query
/// (docs/epochs.md).
#[derive(Debug, Clone)]
pub struct Queried {
    /// (host tid, alternate stack, securebits, dumpable) per thread.
    threads: Vec<QueriedThread>,
    sigactions: Vec<SigAction>,
    sig_cgt: u64,
    sig_ign: u64,
    age: u32,
}

type QueriedThread = (i32, (u64, u32, u64), u32, u8);

/// Epochs between two full runs of the injected queries in a session.
pub const REQUERY_EVERY: u32 = 50;

impl Queried {
    fn from(
        threads: &[Thread],
        sigactions: &[SigAction],
        status: &procfs::Status,
        before: Option<&Queried>,
    ) -> Queried {
        let same = before.is_some_and(|b| b.sigactions == sigactions);
        Queried {
            threads: threads
                .iter()
                .map(|t| (t.host_tid, t.altstack, t.creds.securebits, t.creds.dumpable))
                .collect(),
            sigactions: sigactions.to_vec(),
            sig_cgt: status.sig_cgt,
            sig_ign: status.sig_ign,
            age: if same {
                before.map_or(0, |b| b.age + 1)
            } else {
                0
            },
        }
    }

    fn still_valid(&self, threads: &[Thread], status: &procfs::Status) -> bool {
        self.age > 0
            && !self.age.is_multiple_of(REQUERY_EVERY)
            && status.sig_cgt == self.sig_cgt
            && status.sig_ign == self.sig_ign
            && threads.len() == self.threads.len()
            && threads
                .iter()
                .zip(&self.threads)
                .all(|(t, q)| t.host_tid == q.0)
    }

    fn apply(&self, threads: &mut [Thread]) -> Vec<SigAction> {
        for (t, q) in threads.iter_mut().zip(&self.threads) {
            t.altstack = q.1;
            t.creds.securebits = q.2;
            t.creds.dumpable = q.3;
        }
        self.sigactions.clone()
    }
}

/// Claims `pid` for one driver and reads what does not change while it runs.
///
/// Takes the program's lock first ([`crate::lock`]): another dump on it is
/// refused, a restore's lazy fill is waited for. A program traced by someone else
/// is refused, and so is one holding what restore could not bring back
/// ([`crate::capture::refuse`]). Nothing in the program is changed here.
pub fn attach(pid: i32) -> Result<Attached, CaptureError> {
    let lock = ProgramLock::acquire(pid, Role::Dump, crate::lock::FILL_WAIT, &mut |holder| {
        tracing::info!(
            pid,
            holder,
            "process {pid} is being restored by cs-driver pid {holder}; waiting until its memory is filled"
        )
    })
    .map_err(|source| CaptureError::Busy { pid, source })?;
    refuse_traced(pid)?;
    let status = procfs::read_status(pid)?;
    let ns_pid = *status.ns_pid.last().ok_or_else(|| CaptureError::Proc {
        path: format!("/proc/{pid}/status"),
        detail: "no NSpid line".into(),
    })?;
    let pidfd = sys::pidfd_open(pid).map_err(|e| CaptureError::ProcIo {
        path: format!("pidfd_open({pid})"),
        source: e,
    })?;
    let (host_xsave, xcr0) = sys::host_xsave_layout();
    let rd = |what: &str| -> Result<Vec<u8>, CaptureError> {
        let path = format!("/proc/{pid}/{what}");
        fs::read_link(&path)
            .map(|p| p.as_os_str().as_bytes().to_vec())
            .map_err(|e| CaptureError::ProcIo { path, source: e })
    };
    let exe = rd("exe")?;
    let cwd = rd("cwd")?;
    let comm = fs::read(format!("/proc/{pid}/comm")).unwrap_or_default();
    let comm = comm.strip_suffix(b"\n").unwrap_or(&comm).to_vec();
    let auxv = procfs::read_auxv(pid)?;
    let rlimits = read_rlimits(pid);
    let kernel_release = fs::read("/proc/sys/kernel/osrelease").unwrap_or_default();
    let kernel_release = kernel_release
        .strip_suffix(b"\n")
        .unwrap_or(&kernel_release)
        .to_vec();
    let maps_before = procfs::read_maps(pid)?;
    // What restore would refuse is refused now, before the program is touched.
    crate::capture::refuse::before_freeze(pid, pidfd.as_raw_fd(), &maps_before)?;
    let mut mapped_files = crate::capture::identity::read_mapped(pid, &maps_before)?;
    // The vDSO does not move: its place is taken from the read before the freeze.
    let vdso = maps_before
        .iter()
        .find(|m| m.name == "[vdso]")
        .map(|m| (m.start, m.end));
    // Its function table, for restore to compare with its kernel's (linux::vdso).
    if let Some((start, end)) = vdso {
        match crate::linux::vdso::of_process(pid, start, end) {
            Ok(syms) => mapped_files.push(crate::capture::identity::FileIdentity {
                path: crate::linux::vdso::VDSO_ENTRY.to_vec(),
                dev: 0,
                ino: 0,
                size: syms.len() as u64,
                mtime_sec: 0,
                mtime_nsec: 0,
                hash: Some(crate::linux::vdso::digest(&syms)),
            }),
            Err(e) => tracing::warn!(pid, "the vDSO's symbols are not recorded: {e}"),
        }
    }
    Ok(Attached {
        pid,
        ns_pid,
        pidfd,
        _lock: lock,
        host_xsave,
        xcr0,
        exe,
        cwd,
        comm,
        auxv,
        rlimits,
        kernel_release,
        vdso,
        maps_before,
        mapped_files,
        queried: None,
    })
}

impl Attached {
    /// The resident size of the mappings whose pages are stored.
    fn rss_bytes(&self) -> u64 {
        self.maps_before
            .iter()
            .filter(|m| m.read && !m.shared && !m.has_flag("dp") && !m.name.starts_with("[v"))
            .map(|m| m.rss_kb * 1024)
            .sum()
    }

    /// The pidfd of the program.
    pub fn pidfd(&self) -> RawFd {
        self.pidfd.as_raw_fd()
    }
}

/// Where the frozen capture gets the memory from.
pub(crate) enum Memory<'a> {
    /// Every present page, copied in the freeze.
    Full,
    /// The pre-copy's pages plus those written since ([`capture_memory_tracked`]).
    Precopied(&'a Precopy),
    /// Only what changed since the tracker last protected it (an epoch delta),
    /// with the pages its pre-copy round staged ([`crate::capture::session`]).
    Delta(&'a mut Tracker, &'a crate::capture::session::PreRound),
}

/// Freezes the attached program and captures it into `staging`; the program is
/// left frozen in the returned [`Frozen`] (dropping it resumes the program).
pub(crate) fn capture_frozen(
    a: &mut Attached,
    mut staging: Staging,
    memory: Memory<'_>,
    mut times: CaptureTimes,
    precopy_note: Option<String>,
) -> Result<(Capture, Frozen), CaptureError> {
    let pid = a.pid;
    crate::cancel::check("before the freeze")?;
    // Signal dispositions change while the program runs: read them now.
    let status = procfs::read_status(pid)?;
    let wall_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let t0 = Instant::now();
    let frozen = Frozen::freeze(pid)?;
    times.freeze = t0.elapsed();
    let tids = frozen.tids.clone();
    let stopped = frozen.group_stopped;

    let t = Instant::now();
    let mut threads = Vec::with_capacity(tids.len());
    for &tid in &tids {
        threads.push(capture_thread(pid, tid, a.host_xsave as usize)?);
    }
    // The image lists threads by the tid the program sees (the order of host tids
    // differs once the program lives in a nested pid namespace).
    threads.sort_by_key(|t| t.tid);
    times.threads = t.elapsed();

    let t = Instant::now();
    let sigactions = match a
        .queried
        .as_ref()
        .filter(|q| q.still_valid(&threads, &status))
    {
        // An epoch of a session: nothing the injected queries read can have
        // changed (see [`Queried`]), so none is run.
        Some(q) => q.apply(&mut threads),
        None => {
            // Single injected syscalls run at a parked futex waiter's own `syscall`.
            let list: Vec<(i32, UserRegs)> = threads.iter().map(|t| (t.host_tid, t.regs)).collect();
            let first = threads.first().ok_or(CaptureError::ProcessGone { pid })?;
            let site = Site::choose(
                pid,
                &list,
                a.vdso,
                (
                    first.host_tid,
                    inject::normalized(&first.regs, first.restart),
                ),
                &frozen.deferred,
            )?;
            if a.queried.is_none() {
                remove_stale_scratch(&site, &a.maps_before)?;
                remove_stale_tracker_fds(&site)?;
            }
            inject_queries(&site, &mut threads, &status)?
        }
    };
    a.queried = Some(Queried::from(
        &threads,
        &sigactions,
        &status,
        a.queried.as_ref(),
    ));
    times.inject = t.elapsed();

    let t = Instant::now();
    let maps = procfs::read_maps_fast(pid, &a.maps_before)?;
    let mm = procfs::read_mm_layout(pid, &maps)?;
    let vmas = maps.iter().map(vma_of).collect::<Result<Vec<_>, _>>()?;
    let mut ranges = crate::capture::session::DeltaRanges::default();
    let (spans, copy, copied) = match memory {
        Memory::Precopied(p) => capture_memory_tracked(pid, &maps, &vmas, &mut staging, p)?,
        Memory::Full => capture_memory(pid, &maps, &vmas, &mut staging)?,
        Memory::Delta(tracker, pre) => crate::capture::session::capture_delta(
            pid,
            &maps,
            &vmas,
            &mut staging,
            tracker,
            pre,
            &mut ranges,
        )?,
    };
    times.copy = copy;
    times.paused_pages = copied;
    times.memory = t.elapsed();

    let t = Instant::now();
    let fds = fds::capture_fds(pid, a.pidfd.as_raw_fd())?;
    times.fds = t.elapsed();

    let (monotonic_ns, boottime_ns) = process_clocks(pid)?;
    crate::cancel::check("after the capture")?;
    a.mapped_files = crate::capture::identity::complete(std::mem::take(&mut a.mapped_files), &vmas);
    a.maps_before = maps;
    let c = Capture {
        epoch: Epoch {
            number: 1,
            full: true,
            wall_ns,
            process: Process {
                pid: a.ns_pid,
                exe: a.exe.clone(),
                cwd: a.cwd.clone(),
                comm: a.comm.clone(),
                umask: status.umask,
                rlimits: a.rlimits.clone(),
                auxv: a.auxv.clone(),
                mm,
                xsave_size: a.host_xsave,
                xcr0: a.xcr0,
                monotonic_ns,
                boottime_ns,
                kernel_release: a.kernel_release.clone(),
                stopped,
            },
            threads,
            sigactions,
            vmas,
            fds,
            files: a.mapped_files.clone(),
            zeros: ranges.zeros,
        },
        host_pid: pid,
        pages: Staged {
            staging,
            runs: spans,
        },
        times,
        precopy_note,
        new_mappings: ranges.new_mappings,
    };
    Ok((c, frozen))
}

/// Freezes `pid` and captures it, leaving it frozen in the returned [`Held`]
/// ([`attach`], then the pre-copy, then the freeze).
pub fn capture_held(pid: i32, opts: Options) -> Result<(Capture, Held), CaptureError> {
    let mut a = attach(pid)?;
    // The staging buffer is faulted in now, before the freeze: the resident size
    // of the mappings whose pages are stored, plus room for growth.
    let rss_bytes = a.rss_bytes();
    let mut staging = Staging::prefaulted((rss_bytes + rss_bytes / 8 + (4 << 20)) as usize)
        .map_err(|e| CaptureError::ProcIo {
            path: "staging buffer".into(),
            source: e,
        })?;
    let mut times = CaptureTimes::default();
    let mut precopy_note = None;
    let pre = if opts.precopy {
        let t = Instant::now();
        let pre = precopy(pid, a.pidfd(), a.vdso, &a.maps_before, &mut staging);
        times.precopy = t.elapsed();
        match pre {
            Ok(p) => {
                times.prefreeze = p.prefreeze;
                times.staged_pages = p.bytes as u64 / PAGE;
                Some(p)
            }
            Err(e) => {
                precopy_note = Some(format!("pre-copy not used: {e}"));
                None
            }
        }
    } else {
        None
    };
    let memory = match &pre {
        Some(p) => Memory::Precopied(p),
        None => Memory::Full,
    };
    let (c, frozen) = capture_frozen(&mut a, staging, memory, times, precopy_note)?;
    // The program may have opened something since the first check: the capture
    // itself is checked too, still frozen (a refusal here resumes it, unchanged).
    crate::capture::refuse::captured(&c)?;
    let held = Held {
        frozen_at: frozen.frozen_at,
        frozen: Some(frozen),
        pre,
        attached: Some(a),
    };
    Ok((c, held))
}

fn capture_thread(pid: i32, tid: i32, xsave_size: usize) -> Result<Thread, CaptureError> {
    let regs =
        sys::ptrace_getregs(tid).map_err(CaptureError::ptrace("GETREGSET(NT_PRSTATUS)", tid))?;
    let mut xsave = vec![0u8; xsave_size.max(4096)];
    let n = sys::ptrace_get_xstate(tid, &mut xsave)
        .map_err(CaptureError::ptrace("GETREGSET(NT_X86_XSTATE)", tid))?;
    if n != xsave_size {
        return Err(CaptureError::Xsave {
            tid,
            got: n,
            want: xsave_size,
        });
    }
    xsave.truncate(n);
    let sigmask = sys::ptrace_getsigmask(tid).map_err(CaptureError::ptrace("GETSIGMASK", tid))?;
    let st = procfs::read_status_task(pid, tid)?;
    let comm = fs::read(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
    let comm = comm.strip_suffix(b"\n").unwrap_or(&comm).to_vec();
    Ok(Thread {
        host_tid: tid,
        tid: *st.ns_pid.last().unwrap_or(&tid),
        comm,
        restart: inject::restart_kind(&regs),
        regs,
        xsave,
        sigmask,
        altstack: (0, 0, 0),
        creds: crate::capture::creds::ThreadCreds::from_status(&st),
    })
}

/// Per-thread sigaltstack and the process's signal handlers, by injected syscalls.
///
/// Safe against the driver dying: except for the scratch `mmap` and `munmap`
/// themselves (two single syscalls at `site`, see [`inject::parked_site`]), every
/// injected syscall runs
/// at a trampoline in the scratch mapping, `syscall; mov eax, 15; syscall`, with rsp
/// at an `rt_sigframe` holding the thread's own state. The driver normally stops the
/// thread at the first syscall's exit and puts its registers back; if the driver was
/// killed instead, the thread runs on into `rt_sigreturn` and resumes exactly where
/// it was frozen. The sigaltstack query writes its answer straight into the frame's
/// `uc_stack`, so the frame is right before it is ever needed.
fn inject_queries(
    site: &Site,
    threads: &mut [Thread],
    status: &procfs::Status,
) -> Result<Vec<SigAction>, CaptureError> {
    let pid = site.inj.pid;
    let first = threads.first().ok_or(CaptureError::ProcessGone { pid })?;
    let t0 = first.host_tid;
    let t0_regs = inject::normalized(&first.regs, first.restart);
    // Page 0: trampoline, flags, batch code; page 1: batch results; then frames.
    let len = 2 * PAGE + threads.len() as u64 * FRAME_SLOT;
    let prot = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    // At a fixed address when it is free, so that a scratch left by a driver killed
    // even before it wrote the marker is still recognised by the next dump.
    let fixed = flags | libc::MAP_FIXED_NOREPLACE as u64;
    let mut scratch = site.syscall(SYS_MMAP, [SCRATCH_ADDR, len, prot, fixed, u64::MAX, 0])?;
    if scratch < 0 {
        // Taken (EEXIST): anywhere, as before.
        scratch = site.syscall(SYS_MMAP, [0, len, prot, flags, u64::MAX, 0])?;
    }
    if scratch < 0 {
        return Err(CaptureError::Inject {
            tid: site.tid,
            nr: SYS_MMAP,
            detail: format!("mmap scratch: errno {}", -scratch),
        });
    }
    let scratch = scratch as u64;
    let mem_err = |addr: u64, len: usize| {
        move |source| CaptureError::Memory {
            pid,
            addr,
            len,
            source,
        }
    };
    let result = (|| {
        // syscall; mov eax, 15 (rt_sigreturn); syscall; ud2; then the marker that
        // lets a later dump recognise this mapping if it is ever left behind.
        let mut tramp = vec![
            0x0f, 0x05, 0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x0f, 0x0b,
        ];
        tramp.resize(SCRATCH_MARK_AT, 0xcc);
        tramp.extend_from_slice(SCRATCH_MARK);
        sys::write_remote(pid, scratch, &tramp).map_err(mem_err(scratch, tramp.len()))?;
        let safe = Injector {
            pid,
            gadget: scratch,
            deferred: site.inj.deferred.clone(),
        };
        let mut frames = Vec::with_capacity(threads.len());
        let mut frame = vec![0u8; FRAME_SLOT as usize];
        for (i, th) in threads.iter_mut().enumerate() {
            let at = scratch + 2 * PAGE + i as u64 * FRAME_SLOT;
            let words = th.regs.to_words();
            let input = restore_stub::sigframe::ThreadInput {
                regs: &words,
                restart: match th.restart {
                    Restart::None => restore_stub::sigframe::Restart::None,
                    Restart::Restart => restore_stub::sigframe::Restart::Restart,
                    Restart::Eintr => restore_stub::sigframe::Restart::Eintr,
                },
                xsave: &th.xsave,
                sigmask: th.sigmask,
                // Filled in by the sigaltstack query below, before it can be used.
                altstack: (0, 2 /* SS_DISABLE */, 0),
            };
            let rsp = restore_stub::sigframe::build(&mut frame, at, &input).map_err(|e| {
                CaptureError::Inject {
                    tid: th.host_tid,
                    nr: SYS_SIGALTSTACK,
                    detail: format!("building the safety frame: {e:?}"),
                }
            })?;
            let n = restore_stub::sigframe::frame_len(th.xsave.len());
            sys::write_remote(pid, at, &frame[..n]).map_err(mem_err(at, n))?;
            let regs = inject::normalized(&th.regs, th.restart);
            let uc_stack = at + 24;
            let rc = safe.syscall_framed(
                th.host_tid,
                &regs,
                rsp,
                SYS_SIGALTSTACK,
                [0, uc_stack, 0, 0, 0, 0],
            )?;
            if rc < 0 {
                return Err(CaptureError::Inject {
                    tid: th.host_tid,
                    nr: SYS_SIGALTSTACK,
                    detail: format!("errno {}", -rc),
                });
            }
            let mut buf = [0u8; 24];
            sys::read_remote(pid, &mut buf, &[(uc_stack, 24)]).map_err(mem_err(uc_stack, 24))?;
            let w = |i: usize| u64::from_le_bytes(buf[i..i + 8].try_into().expect("8 bytes"));
            th.altstack = (w(0), w(8) as u32, w(16));
            let (sb, dumpable) =
                crate::capture::creds::query_thread(&safe, th.host_tid, &regs, rsp, i == 0)?;
            th.creds.securebits = sb;
            th.creds.dumpable = dumpable.unwrap_or(1);
            frames.push(rsp);
        }
        crate::capture::refuse::armed_itimers(&safe, t0, &t0_regs, frames[0], scratch + PAGE)?;
        let mut acts = vec![SigAction::default(); 64];
        let mut sigs = Vec::new();
        for sig in 1..=64u64 {
            let bit = 1u64 << (sig - 1);
            if status.sig_ign & bit != 0 {
                acts[sig as usize - 1].handler = 1; // SIG_IGN
            }
            if status.sig_cgt & bit != 0 {
                sigs.push(sig);
            }
        }
        let results = batch_sigactions(&safe, t0, &t0_regs, frames[0], &sigs)?;
        for (sig, a) in sigs.iter().zip(results) {
            acts[*sig as usize - 1] = a;
        }
        Ok(acts)
    })();
    if result.is_err() {
        // No thread may resume pointing into the scratch mapping.
        for th in threads.iter() {
            inject::put_back(th.host_tid, &inject::normalized(&th.regs, th.restart));
        }
    }
    site.call(SYS_MUNMAP, [scratch, len, 0, 0, 0, 0], "munmap scratch")?;
    result
}

/// Where the scratch mapping goes when that range is free: the middle of the 47-bit
/// user address space, far from Go's heap hints (`0xc000000000`) and from the
/// kernel's top-down mmap area.
const SCRATCH_ADDR: u64 = 0x3c5c_0000_0000;

/// Where and what the marker of a scratch mapping is (page 0, after the trampoline).
const SCRATCH_MARK_AT: usize = 16;
const SCRATCH_MARK: &[u8; 32] = b"CheckSync scratch, safe to unmap";

/// Unmaps scratch mappings an earlier driver left in the program when it was killed
/// between its `mmap` and `munmap` (the program itself resumed intact; see
/// docs/restore.md). A candidate is a private anonymous rwx mapping at
/// [`SCRATCH_ADDR`], or whose first page carries the trampoline and
/// [`SCRATCH_MARK`]; it is not in use, since no other driver can trace the program
/// while this one does.
fn remove_stale_scratch(site: &Site, smaps: &[MapEntry]) -> Result<(), CaptureError> {
    let pid = site.inj.pid;
    for m in smaps {
        if !(m.read && m.write && m.exec && !m.shared && m.name.is_empty()) {
            continue;
        }
        let mut head = [0u8; SCRATCH_MARK_AT + 32];
        let n = head.len();
        let marked = sys::read_remote(pid, &mut head, &[(m.start, n)]).is_ok()
            && head[..2] == [0x0f, 0x05]
            && &head[SCRATCH_MARK_AT..] == SCRATCH_MARK;
        if !marked && m.start != SCRATCH_ADDR {
            continue;
        }
        site.call(
            SYS_MUNMAP,
            [m.start, m.end - m.start, 0, 0, 0, 0],
            &format!(
                "munmap of a scratch mapping left by a killed driver at {:#x}",
                m.start
            ),
        )?;
    }
    Ok(())
}

/// Closes userfaultfds an earlier driver left in the program when it was killed
/// between the pre-copy tracker's injected `userfaultfd` and `close`. Such an fd
/// never had its `UFFDIO_API` handshake (the driver does that on its own copy after
/// the close), which fdinfo shows: bit 31 of the `API:` features (the kernel's
/// "initialized" flag) is clear. An uninitialized uffd is unusable, and a program
/// holding any uffd could not be restored anyway (the fd kind is refused).
/// Whether fd `fd` of `pid` is a userfaultfd that never had its `UFFDIO_API`
/// handshake: a tracker left by a killed driver.
pub fn is_stale_tracker(pid: i32, fd: i32) -> bool {
    let is_uffd = fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .is_ok_and(|l| l.as_os_str().as_bytes() == b"anon_inode:[userfaultfd]");
    if !is_uffd {
        return false;
    }
    let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
    let features = info
        .lines()
        .find_map(|l| l.strip_prefix("API:"))
        .and_then(|v| v.trim().split(':').nth(1))
        .and_then(|f| u64::from_str_radix(f, 16).ok());
    features.is_some_and(|f| f & (1 << 31) == 0)
}

fn remove_stale_tracker_fds(site: &Site) -> Result<(), CaptureError> {
    let pid = site.inj.pid;
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Ok(());
    };
    for e in dir.flatten() {
        let Ok(fd) = e.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        if !is_stale_tracker(pid, fd as i32) {
            continue;
        }
        site.call(
            SYS_CLOSE,
            [fd, 0, 0, 0, 0, 0],
            &format!("close of a userfaultfd left by a killed driver (fd {fd})"),
        )?;
    }
    Ok(())
}

/// Queries the handlers of `sigs` in one run of injected code: the scratch page
/// gets `rt_sigaction(sig, NULL, &out[i], 8)` for each signal, then `rt_sigreturn`
/// (rsp is at the thread's safety frame). The driver steps it from syscall stop to
/// syscall stop without touching registers, skips the final `rt_sigreturn` and puts
/// the registers back: no register traffic per signal. If the driver dies meanwhile,
/// the thread runs on into `rt_sigreturn` and resumes where it was frozen. (An
/// earlier version waited on a futex and was interrupted; a driver killed in that
/// window once left the program's main thread with a bad epoll_wait result.)
fn batch_sigactions(
    safe: &Injector,
    tid: i32,
    regs: &UserRegs,
    frame_rsp: u64,
    sigs: &[u64],
) -> Result<Vec<SigAction>, CaptureError> {
    let pid = safe.pid;
    let base = safe.gadget; // the scratch mapping
    let code_at = base + 256;
    let out = base + PAGE;
    let mut code: Vec<u8> = Vec::with_capacity(64 * 30 + 64);
    for (i, &sig) in sigs.iter().enumerate() {
        code.extend_from_slice(&[0xb8, 13, 0, 0, 0]); // mov eax, 13
        code.push(0xbf); // mov edi, sig
        code.extend_from_slice(&(sig as u32).to_le_bytes());
        code.extend_from_slice(&[0x31, 0xf6]); // xor esi, esi
        code.extend_from_slice(&[0x48, 0xba]); // movabs rdx, out + 32 i
        code.extend_from_slice(&(out + 32 * i as u64).to_le_bytes());
        code.extend_from_slice(&[0x41, 0xba, 8, 0, 0, 0]); // mov r10d, 8
        code.extend_from_slice(&[0x0f, 0x05]); // syscall
    }
    code.extend_from_slice(&[0xb8, 15, 0, 0, 0, 0x0f, 0x05, 0x0f, 0x0b]); // rt_sigreturn; ud2
    if code_at + code.len() as u64 > base + PAGE {
        return Err(CaptureError::Inject {
            tid,
            nr: SYS_RT_SIGACTION,
            detail: "batch code too long".into(),
        });
    }
    let merr = |addr: u64, len: usize| {
        move |source| CaptureError::Memory {
            pid,
            addr,
            len,
            source,
        }
    };
    let sentinel = vec![0xa5u8; 32 * sigs.len()];
    sys::write_remote(pid, out, &sentinel).map_err(merr(out, sentinel.len()))?;
    sys::write_remote(pid, code_at, &code).map_err(merr(code_at, code.len()))?;
    let mut r = *regs;
    r.rip = code_at;
    r.rsp = frame_rsp;
    r.orig_rax = u64::MAX;
    sys::ptrace_setregs(tid, &r).map_err(CaptureError::ptrace("SETREGS", tid))?;
    // Step from syscall stop to syscall stop (no register traffic) until the entry
    // of the closing rt_sigreturn; there the thread's own registers go back, the
    // skipped syscall's exit stop is taken, and they are set once more.
    let mut entries = 0usize;
    loop {
        sys::ptrace_syscall(tid, 0).map_err(CaptureError::ptrace("SYSCALL", tid))?;
        match sys::waitpid(tid, false).map_err(CaptureError::ptrace("waitpid", tid))? {
            Some(sys::WaitStatus::Stopped(_, sig, 0)) if sig == (libc::SIGTRAP | 0x80) => {
                entries += 1;
                // Stops alternate entry/exit; entry number `sigs.len() + 1` is
                // rt_sigreturn (stop index 2 * sigs.len()).
                if entries == 2 * sigs.len() + 1 {
                    break;
                }
            }
            Some(sys::WaitStatus::Stopped(_, sig, 0)) => {
                // A signal for this thread arrived: hold it back until the release.
                safe.deferred.push(tid, sig);
            }
            Some(sys::WaitStatus::Stopped(..)) => {}
            other => {
                return Err(CaptureError::UnexpectedStop {
                    tid,
                    phase: "signal handler query",
                    detail: format!("{other:?}"),
                })
            }
        }
    }
    let at_entry = sys::ptrace_getregs(tid).map_err(CaptureError::ptrace("GETREGS", tid))?;
    if at_entry.orig_rax != 15 {
        return Err(CaptureError::Inject {
            tid,
            nr: SYS_RT_SIGACTION,
            detail: format!(
                "expected the closing rt_sigreturn, stopped at syscall {}",
                at_entry.orig_rax as i64
            ),
        });
    }
    // Skip rt_sigreturn (orig_rax = -1) and run to its exit stop, then put the
    // thread's own registers back.
    let mut skip = *regs;
    skip.orig_rax = u64::MAX;
    sys::ptrace_setregs(tid, &skip).map_err(CaptureError::ptrace("SETREGS", tid))?;
    sys::ptrace_syscall(tid, 0).map_err(CaptureError::ptrace("SYSCALL", tid))?;
    loop {
        match sys::waitpid(tid, false).map_err(CaptureError::ptrace("waitpid", tid))? {
            Some(sys::WaitStatus::Stopped(_, sig, 0)) if sig == (libc::SIGTRAP | 0x80) => break,
            Some(sys::WaitStatus::Stopped(_, sig, 0)) => {
                safe.deferred.push(tid, sig);
                sys::ptrace_syscall(tid, 0).map_err(CaptureError::ptrace("SYSCALL", tid))?;
            }
            Some(sys::WaitStatus::Stopped(..)) => {
                sys::ptrace_syscall(tid, 0).map_err(CaptureError::ptrace("SYSCALL", tid))?;
            }
            other => {
                return Err(CaptureError::UnexpectedStop {
                    tid,
                    phase: "signal handler query",
                    detail: format!("{other:?}"),
                })
            }
        }
    }
    sys::ptrace_setregs(tid, regs).map_err(CaptureError::ptrace("SETREGS", tid))?;
    let mut buf = vec![0u8; 32 * sigs.len()];
    let n = buf.len();
    sys::read_remote(pid, &mut buf, &[(out, n)]).map_err(merr(out, n))?;
    let mut acts = Vec::with_capacity(sigs.len());
    for (i, c) in buf.chunks_exact(32).enumerate() {
        if c.iter().all(|b| *b == 0xa5) {
            return Err(CaptureError::Inject {
                tid,
                nr: SYS_RT_SIGACTION,
                detail: format!("rt_sigaction({}) wrote nothing", sigs[i]),
            });
        }
        let w = |o: usize| u64::from_le_bytes(c[o..o + 8].try_into().expect("8 bytes"));
        acts.push(SigAction {
            handler: w(0),
            flags: w(8),
            restorer: w(16),
            mask: w(24),
        });
    }
    Ok(acts)
}

fn vma_of(m: &MapEntry) -> Result<Vma, CaptureError> {
    let kind = match m.name.as_str() {
        "[vdso]" => VmaKind::Vdso,
        "[vvar]" => VmaKind::Vvar,
        "[vvar_vclock]" => VmaKind::VvarVclock,
        "[stack]" => VmaKind::Stack,
        "[heap]" => VmaKind::Heap,
        "[vsyscall]" => VmaKind::Vsyscall,
        n if n.starts_with('/') && m.inode != 0 => VmaKind::File {
            path: n.as_bytes().to_vec(),
            offset: m.offset,
        },
        _ => VmaKind::Anonymous,
    };
    let prot = (if m.read { PROT_R } else { 0 })
        | (if m.write { PROT_W } else { 0 })
        | (if m.exec { PROT_X } else { 0 });
    Ok(Vma {
        start: m.start,
        end: m.end,
        prot,
        shared: m.shared,
        growsdown: m.has_flag("gd"),
        droppable: m.has_flag("dp"),
        reservation: !m.read && !m.write && !m.exec,
        noreserve: m.has_flag("nr"),
        hugepage: m.has_flag("hg"),
        nohugepage: m.has_flag("nh"),
        dontdump: m.has_flag("dd"),
        wipeonfork: m.has_flag("wf"),
        kind,
    })
}

/// Whether a mapping's pages are stored in the image.
pub fn stores_pages(v: &Vma) -> bool {
    // A shared file mapping's contents are the file's: it is mapped again, not stored.
    let shared_file = v.shared && matches!(v.kind, VmaKind::File { .. });
    v.prot & PROT_R != 0
        && !shared_file
        && !v.droppable
        && !matches!(
            v.kind,
            VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vsyscall
        )
}

fn capture_memory(
    pid: i32,
    maps: &[MapEntry],
    vmas: &[Vma],
    staging: &mut Staging,
) -> Result<(Vec<PageRun>, Duration, u64), CaptureError> {
    let pagemap = Pagemap::open(pid)?;
    let mut entries = Vec::new();
    let mut spans: Vec<PageRun> = Vec::new();
    let mut total: u64 = 0;
    for (m, v) in maps.iter().zip(vmas) {
        if !stores_pages(v) {
            continue;
        }
        refuse_shared_anon(pid, m, v)?;
        let file_backed = matches!(v.kind, VmaKind::File { .. });
        pagemap.read(m.start, m.end, &mut entries)?;
        for (i, e) in entries.iter().enumerate() {
            let keep = (e & (PM_PRESENT | PM_SWAP)) != 0 && !(file_backed && e & PM_FILE != 0);
            if !keep {
                continue;
            }
            let addr = m.start + i as u64 * PAGE;
            match spans.last_mut() {
                Some(s) if s.start + s.npages * PAGE == addr => s.npages += 1,
                _ => spans.push(PageRun {
                    start: addr,
                    npages: 1,
                    offset: (total * PAGE) as usize,
                }),
            }
            total += 1;
        }
    }
    grow(staging, (total * PAGE) as usize)?;
    let t = Instant::now();
    copy_jobs(pid, jobs_of(&spans), staging.as_mut_slice())?;
    Ok((spans, t.elapsed(), total))
}

pub(crate) fn refuse_shared_anon(pid: i32, m: &MapEntry, v: &Vma) -> Result<(), CaptureError> {
    if v.shared {
        return Err(CaptureError::Unsupported {
            pid,
            what: crate::capture::refuse::shared_memory(m),
        });
    }
    Ok(())
}

pub(crate) fn grow(staging: &mut Staging, len: usize) -> Result<(), CaptureError> {
    staging.set_len(len).map_err(|e| CaptureError::ProcIo {
        path: "staging buffer".into(),
        source: e,
    })
}

impl Precopy {
    /// The write tracker, kept for the epochs that follow.
    pub(crate) fn into_tracker(self) -> Tracker {
        self.tracker
    }
}

/// The state the pre-copy leaves for the freeze.
#[derive(Debug)]
pub struct Precopy {
    tracker: Tracker,
    /// Pages copied while the program ran, in address order, back to back from
    /// offset 0 of the staging buffer.
    staged: Vec<PageRun>,
    bytes: usize,
    prefreeze: Duration,
}

/// Write-protects the program's private writable memory, then copies every present
/// page while the program runs. Pages written afterwards are found in the freeze.
fn precopy(
    pid: i32,
    pidfd: i32,
    vdso: Option<(u64, u64)>,
    smaps: &[MapEntry],
    staging: &mut Staging,
) -> Result<Precopy, CaptureError> {
    let t = Instant::now();
    let mut tracker = Tracker::create(pid, pidfd, vdso)?;
    let prefreeze = t.elapsed();
    for m in smaps {
        let v = vma_of(m)?;
        if stores_pages(&v) && m.write && !m.shared {
            // A range the kernel refuses is simply copied in the freeze.
            tracker.protect(m.start, m.end);
        }
    }
    let mut regions = Vec::new();
    for &(start, end) in &tracker.protected {
        track::scan(
            &tracker.pagemap,
            start,
            end,
            track::Query::stored(0),
            &mut regions,
        )
        .map_err(|e| CaptureError::ProcIo {
            path: format!("PAGEMAP_SCAN of /proc/{pid}/pagemap"),
            source: e,
        })?;
    }
    let mut staged: Vec<PageRun> = Vec::with_capacity(regions.len());
    let mut bytes = 0usize;
    for r in &regions {
        let npages = (r.end - r.start) / PAGE;
        match staged.last_mut() {
            Some(s) if s.start + s.npages * PAGE == r.start => s.npages += npages,
            _ => staged.push(PageRun {
                start: r.start,
                npages,
                offset: bytes,
            }),
        }
        bytes += (npages * PAGE) as usize;
    }
    grow(staging, bytes)?;
    copy_jobs(pid, jobs_of(&staged), staging.as_mut_slice())?;
    Ok(Precopy {
        tracker,
        staged,
        bytes,
        prefreeze,
    })
}

/// The freeze's half of the pre-copy: one `PAGEMAP_SCAN` per stored mapping lists
/// the present pages with their written / tracked state. A page that is tracked,
/// unwritten and was staged keeps its staged bytes; a written page that was staged
/// is copied again into its slot; any other present page (new, or in a mapping
/// that is not tracked) is copied to the end of the buffer. Staged pages that are
/// no longer present are left out.
fn capture_memory_tracked(
    pid: i32,
    maps: &[MapEntry],
    vmas: &[Vma],
    staging: &mut Staging,
    pre: &Precopy,
) -> Result<(Vec<PageRun>, Duration, u64), CaptureError> {
    let mut regions = Vec::new();
    let q = track::Query::stored(track::PAGE_IS_WRITTEN | track::PAGE_IS_WPALLOWED);
    let pagemap = &pre.tracker.pagemap;
    let scan_err = |e| CaptureError::ProcIo {
        path: format!("PAGEMAP_SCAN of /proc/{pid}/pagemap"),
        source: e,
    };
    let mut written = Vec::new();
    for (m, v) in maps.iter().zip(vmas) {
        if !stores_pages(v) {
            continue;
        }
        refuse_shared_anon(pid, m, v)?;
        let anon = matches!(v.kind, VmaKind::Anonymous | VmaKind::Heap | VmaKind::Stack);
        if anon && track::is_tracked(pagemap, m.start).map_err(scan_err)? {
            // The written-only query is the kernel's fast path (the uffd-wp bit
            // only, ~10x cheaper than computing every category): in a tracked
            // mapping it lists exactly the pages written since the protect, plus
            // any that lost their marker by being dropped (copying those reads
            // their zeros). Everything else present was staged and is clean; a
            // page that appeared by a read fault is the zero page and needs no
            // storing.
            written.clear();
            track::scan(
                pagemap,
                m.start,
                m.end,
                track::Query::written_only(),
                &mut written,
            )
            .map_err(scan_err)?;
            let dirty: Vec<(u64, u64)> = written.iter().map(|r| (r.start, r.end)).collect();
            let staged = clip_spans(&pre.staged, m.start, m.end);
            let mut mine: Vec<track::PageRegion> = subtract(&staged, &dirty)
                .into_iter()
                .map(|(start, end)| track::PageRegion {
                    start,
                    end,
                    categories: track::PAGE_IS_WPALLOWED,
                })
                .chain(dirty.iter().map(|&(start, end)| track::PageRegion {
                    start,
                    end,
                    categories: track::PAGE_IS_WPALLOWED | track::PAGE_IS_WRITTEN,
                }))
                .collect();
            mine.sort_unstable_by_key(|r| r.start);
            regions.extend(mine);
        } else {
            track::scan(pagemap, m.start, m.end, q, &mut regions).map_err(scan_err)?;
        }
    }
    let (spans, jobs, append) = place(&regions, &pre.staged, pre.bytes);
    grow(staging, append)?;
    let copied = jobs.iter().map(|j| j.len as u64).sum::<u64>() / PAGE;
    let t = Instant::now();
    copy_jobs(pid, jobs, staging.as_mut_slice())?;
    Ok((spans, t.elapsed(), copied))
}

/// Places the pages of `regions` (sorted, disjoint) in the staging buffer, which
/// holds `staged` (sorted, `staged_bytes` long) from an earlier copy: a clean
/// region (`PAGE_IS_WPALLOWED` without `PAGE_IS_WRITTEN`) keeps its staged bytes;
/// any other region that was staged is copied again into its slot, and one that
/// was not is copied to the end of the buffer. Returns the spans, the copy jobs
/// and the buffer's new length. Staged pages outside `regions` are left out.
pub(crate) fn place(
    regions: &[track::PageRegion],
    staged: &[PageRun],
    staged_bytes: usize,
) -> (Vec<PageRun>, Vec<Job>, usize) {
    let staged_end = |i: usize| staged[i].start + staged[i].npages * PAGE;
    let mut spans: Vec<PageRun> = Vec::with_capacity(regions.len());
    let mut jobs: Vec<Job> = Vec::new();
    let mut append = staged_bytes;
    let mut si = 0usize;
    let push = |spans: &mut Vec<PageRun>, start: u64, end: u64, offset: usize| {
        let npages = (end - start) / PAGE;
        match spans.last_mut() {
            Some(s)
                if s.start + s.npages * PAGE == start
                    && s.offset + (s.npages * PAGE) as usize == offset =>
            {
                s.npages += npages
            }
            _ => spans.push(PageRun {
                start,
                npages,
                offset,
            }),
        }
    };
    for r in regions {
        let clean = r.categories & track::PAGE_IS_WPALLOWED != 0
            && r.categories & track::PAGE_IS_WRITTEN == 0;
        let mut a = r.start;
        while a < r.end {
            while si < staged.len() && staged_end(si) <= a {
                si += 1;
            }
            if si < staged.len() && staged[si].start <= a {
                let e = r.end.min(staged_end(si));
                let off = staged[si].offset + (a - staged[si].start) as usize;
                push(&mut spans, a, e, off);
                if !clean {
                    jobs.push(Job {
                        remote: a,
                        len: (e - a) as usize,
                        local: off,
                    });
                }
                a = e;
            } else {
                let e = r.end.min(staged.get(si).map_or(u64::MAX, |s| s.start));
                push(&mut spans, a, e, append);
                jobs.push(Job {
                    remote: a,
                    len: (e - a) as usize,
                    local: append,
                });
                append += (e - a) as usize;
                a = e;
            }
        }
    }
    (spans, jobs, append)
}

/// One job per span: its pages to its place in the staging buffer.
fn jobs_of(spans: &[PageRun]) -> Vec<Job> {
    spans
        .iter()
        .map(|s| Job {
            remote: s.start,
            len: (s.npages * PAGE) as usize,
            local: s.offset,
        })
        .collect()
}

/// The parts of `spans` (sorted, disjoint) inside `[start, end)`, as address ranges.
pub(crate) fn clip_spans(spans: &[PageRun], start: u64, end: u64) -> Vec<(u64, u64)> {
    let first = spans.partition_point(|s| s.start + s.npages * PAGE <= start);
    spans[first..]
        .iter()
        .take_while(|s| s.start < end)
        .map(|s| (s.start.max(start), (s.start + s.npages * PAGE).min(end)))
        .filter(|(a, b)| a < b)
        .collect()
}

/// `a` minus `b`: both sorted lists of disjoint `[start, end)` ranges.
pub(crate) fn subtract(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(a.len());
    let mut j = 0usize;
    for &(mut s, e) in a {
        while j < b.len() && b[j].1 <= s {
            j += 1;
        }
        let mut k = j;
        while s < e {
            match b.get(k) {
                Some(&(bs, be)) if bs < e => {
                    if bs > s {
                        out.push((s, bs));
                    }
                    s = s.max(be);
                    k += 1;
                }
                _ => {
                    out.push((s, e));
                    s = e;
                }
            }
        }
    }
    out
}

/// Copy `len` bytes at `remote` in the target to `local` in the staging buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Job {
    remote: u64,
    len: usize,
    local: usize,
}

impl Job {
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// Runs copy jobs (disjoint local ranges) with one `process_vm_readv` stream per
/// core: each stream pins and copies 4 KiB source pages at ~1 us a page here, so
/// the copy scales with the cores until memory bandwidth binds. Jobs whose local
/// ranges follow each other go into one call.
pub(crate) fn copy_jobs(pid: i32, mut jobs: Vec<Job>, dst: &mut [u8]) -> Result<(), CaptureError> {
    jobs.sort_unstable_by_key(|j| j.local);
    let total: usize = jobs.iter().map(|j| j.len).sum();
    if total == 0 {
        return Ok(());
    }
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    // Below 1 MiB a second stream costs more to start than it saves.
    let workers = if total < (1 << 20) { 1 } else { workers };
    let share = total.div_ceil(workers).next_multiple_of(PAGE as usize);
    // Cut the jobs into per-worker groups of about `share` bytes each.
    let mut groups: Vec<Vec<Job>> = vec![Vec::new()];
    let mut filled = 0usize;
    for j in jobs {
        let mut j = j;
        while j.len > 0 {
            if filled == share {
                groups.push(Vec::new());
                filled = 0;
            }
            let n = j.len.min(share - filled);
            groups
                .last_mut()
                .expect("one group")
                .push(Job { len: n, ..j });
            filled += n;
            j.remote += n as u64;
            j.local += n;
            j.len -= n;
        }
    }
    // Hand each group the part of `dst` from its first job to the next group's.
    let mut parts = Vec::with_capacity(groups.len());
    let mut rest = dst;
    let mut consumed = 0usize;
    for (i, g) in groups.iter().enumerate() {
        let from = g.first().map_or(consumed, |j| j.local);
        let to = groups
            .get(i + 1)
            .and_then(|n| n.first())
            .map_or(consumed + rest.len(), |j| j.local);
        let (_, r) = rest.split_at_mut(from - consumed);
        let (mine, r) = r.split_at_mut(to - from);
        parts.push((from, mine));
        rest = r;
        consumed = to;
    }
    let run = |g: &[Job], base: usize, part: &mut [u8]| -> Result<(), CaptureError> {
        let mut i = 0;
        while i < g.len() {
            // Jobs with adjacent local ranges share one call.
            let mut k = i + 1;
            while k < g.len() && g[k].local == g[k - 1].local + g[k - 1].len {
                k += 1;
            }
            let remote: Vec<(u64, usize)> = g[i..k].iter().map(|j| (j.remote, j.len)).collect();
            let len: usize = remote.iter().map(|r| r.1).sum();
            let at = g[i].local - base;
            sys::read_remote(pid, &mut part[at..at + len], &remote).map_err(|source| {
                CaptureError::Memory {
                    pid,
                    addr: g[i].remote,
                    len,
                    source,
                }
            })?;
            i = k;
        }
        Ok(())
    };
    if groups.len() == 1 {
        let (base, part) = parts.pop().expect("one part");
        return run(&groups[0], base, part);
    }
    std::thread::scope(|sc| {
        let handles: Vec<_> = groups
            .iter()
            .zip(parts)
            .map(|(g, (base, part))| sc.spawn(move || run(g, base, part)))
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or(Err(CaptureError::ProcessGone { pid })))
    })
}

fn read_rlimits(pid: i32) -> Vec<Rlimit> {
    let mut out = Vec::new();
    for res in 0..16u32 {
        let mut old = libc::rlimit64 {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit64 writes one rlimit64 into `old`; no new limit is passed.
        let rc = unsafe {
            libc::prlimit64(
                pid,
                res as libc::__rlimit_resource_t,
                std::ptr::null(),
                &mut old,
            )
        };
        if rc == 0 {
            out.push(Rlimit {
                resource: res,
                soft: old.rlim_cur,
                hard: old.rlim_max,
            });
        }
    }
    out
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    sys::clock_ns(clock) as u64
}

/// The target's CLOCK_MONOTONIC and CLOCK_BOOTTIME: ours plus its time namespace offsets.
fn process_clocks(pid: i32) -> Result<(u64, u64), CaptureError> {
    let path = format!("/proc/{pid}/timens_offsets");
    let text = fs::read_to_string(&path).unwrap_or_default();
    let mut off = [0i128; 2];
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 3 {
            continue;
        }
        let v =
            f[1].parse::<i128>().unwrap_or(0) * 1_000_000_000 + f[2].parse::<i128>().unwrap_or(0);
        match f[0] {
            "monotonic" | "1" => off[0] = v,
            "boottime" | "7" => off[1] = v,
            _ => {}
        }
    }
    let m = clock_ns(libc::CLOCK_MONOTONIC) as i128 + off[0];
    let b = clock_ns(libc::CLOCK_BOOTTIME) as i128 + off[1];
    Ok((m.max(0) as u64, b.max(0) as u64))
}

/// Launches `prog args` for a capture and returns once it has left `execve` with
/// its vDSO mapped. `spawn` returns when the old mm is released, before exec has
/// mapped the new program (its vDSO, auxv and stack come after): attaching then
/// once found no vDSO. `/proc/PID/syscall` no longer saying 59 and a `[vdso]` in
/// its maps mean the exec is done.
pub fn launch(prog: &str, args: &[String]) -> std::io::Result<std::process::Child> {
    let mut c = std::process::Command::new(prog).args(args).spawn()?;
    let p = c.id();
    let t = std::time::Instant::now();
    let execed = || {
        let sc = std::fs::read_to_string(format!("/proc/{p}/syscall")).unwrap_or_default();
        let maps = std::fs::read_to_string(format!("/proc/{p}/maps")).unwrap_or_default();
        !sc.is_empty() && sc.split_whitespace().next() != Some("59") && maps.contains("[vdso]")
    };
    while !execed() {
        if t.elapsed() > std::time::Duration::from_secs(5) {
            let _ = c.kill();
            let _ = c.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("pid {p} did not finish its exec within 5 s (killed)"),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_subtraction() {
        let a = [(0, 10), (20, 30), (40, 50)];
        let b = [(5, 8), (9, 22), (25, 26), (45, 60)];
        assert_eq!(
            subtract(&a, &b),
            vec![(0, 5), (8, 9), (22, 25), (26, 30), (40, 45)]
        );
        assert_eq!(subtract(&a, &[]), a.to_vec());
        assert_eq!(subtract(&[], &b), vec![]);
        assert_eq!(subtract(&[(0, 10)], &[(0, 10)]), vec![]);
    }

    #[test]
    fn spans_are_clipped_to_a_mapping() {
        let sp = |start: u64, npages: u64| PageRun {
            start,
            npages,
            offset: 0,
        };
        let spans = [sp(0x1000, 2), sp(0x5000, 4), sp(0xa000, 1)];
        assert_eq!(
            clip_spans(&spans, 0x2000, 0x7000),
            vec![(0x2000, 0x3000), (0x5000, 0x7000)]
        );
        assert_eq!(clip_spans(&spans, 0xb000, 0xc000), vec![]);
    }
}
