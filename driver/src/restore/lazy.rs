//! Lazy page filling for `restore`: the program runs before its memory is in place.
//!
//! The stub creates a userfaultfd when it hands page filling over to the driver
//! and reports its number; the driver takes a copy with `pidfd_getfd` and
//! registers the program's private anonymous mappings in MISSING mode. Once the
//! threads are released, a first touch of a page that is not there yet stops the
//! touching thread and queues a fault message; a server thread answers it with
//! `UFFDIO_COPY` of the surrounding 64 KiB of the page run from the (already
//! verified) image, or `UFFDIO_ZEROPAGE` for a page the image does not store. A
//! filler thread meanwhile copies every run in address order; a page the server
//! put there first is skipped (`EEXIST`). `UFFDIO_COPY` writes into freshly
//! allocated pages without zeroing them first, so this is also less work than
//! `process_vm_writev` into new memory.
//!
//! When every stored page is in, the uffd is closed (which unregisters the
//! ranges: later first touches are ordinary zero-fill faults) and the driver tells
//! the namespace init so through the `done` pipe. If the driver dies before that,
//! the init reads EOF instead and kills the program: a program whose missing pages
//! would silently read as zeros must not run on.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::linux::sys;
use crate::linux::uffd;
use crate::lock::{ProgramLock, Role};
use crate::model::{PageRun, PageSource, Vma, VmaKind, PAGE};
use crate::restore::RestoreError;

/// What one fault brings in: the aligned 64 KiB around it, within its run.
const FAULT_WINDOW: u64 = 64 << 10;
/// What the filler copies per call.
const FILL_CHUNK: u64 = 1 << 20;

/// Whether a mapping's stored pages can be filled lazily: private anonymous
/// memory (uffd MISSING mode covers anonymous, shmem and hugetlb only).
fn lazy_kind(v: &Vma) -> bool {
    !v.shared
        && !v.droppable
        && !v.growsdown
        && !v.reservation
        && matches!(v.kind, VmaKind::Anonymous | VmaKind::Heap)
}

/// The driver's copy of the stub's uffd, with the ranges registered on it.
#[derive(Debug)]
pub struct Prepared {
    uffd: OwnedFd,
    /// Registered ranges, in address order.
    pub registered: Vec<(u64, u64)>,
}

/// Takes the stub's uffd (`stub_fd` in `pid`) and registers the lazily filled
/// mappings of `vmas` (adjacent ones in one range: the kernel merged them when the
/// stub mapped them). A range the kernel refuses is filled eagerly instead.
pub fn prepare(pid: i32, stub_fd: i32, vmas: &[Vma]) -> std::io::Result<Prepared> {
    let pidfd = sys::pidfd_open(pid)?;
    let fd = sys::pidfd_getfd(pidfd.as_raw_fd(), stub_fd)?;
    uffd::api(fd.as_raw_fd(), 0)?;
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut sorted: Vec<&Vma> = vmas.iter().filter(|v| lazy_kind(v)).collect();
    sorted.sort_by_key(|v| v.start);
    for v in sorted {
        match ranges.last_mut() {
            Some(r) if r.1 == v.start => r.1 = v.end,
            _ => ranges.push((v.start, v.end)),
        }
    }
    let mut registered = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        if uffd::register(
            fd.as_raw_fd(),
            start,
            end,
            uffd::UFFDIO_REGISTER_MODE_MISSING,
        )
        .is_ok()
        {
            registered.push((start, end));
        }
    }
    Ok(Prepared {
        uffd: fd,
        registered,
    })
}

/// A piece of one run of a [`PageSource`]: `len` bytes at `addr`, whose data
/// starts `skip` bytes into run `run` of the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub addr: u64,
    pub len: usize,
    pub run: usize,
    pub skip: usize,
}

impl Piece {
    fn end(&self) -> u64 {
        self.addr + self.len as u64
    }

    /// The bytes of this piece in `pages`.
    pub fn data<'a>(&self, pages: &'a dyn PageSource) -> Option<&'a [u8]> {
        pages.bytes(self.run).get(self.skip..self.skip + self.len)
    }
}

/// Splits a source's runs into pieces filled now (outside every registered
/// range) and pieces filled lazily (inside one). A run may cross a mapping
/// boundary (say a file-backed `.data` followed by an anonymous `.bss`): it is
/// cut there.
pub fn split_runs(runs: &[PageRun], registered: &[(u64, u64)]) -> (Vec<Piece>, Vec<Piece>) {
    let (mut now, mut later) = (Vec::new(), Vec::new());
    for (run, r) in runs.iter().enumerate() {
        let end = r.start + r.npages * PAGE;
        let mut a = r.start;
        while a < end {
            // The first registered range that ends after `a`.
            let i = registered.partition_point(|x| x.1 <= a);
            let (piece_end, inside) = match registered.get(i) {
                Some(x) if x.0 <= a => (end.min(x.1), true),
                Some(x) => (end.min(x.0), false),
                None => (end, false),
            };
            let piece = Piece {
                addr: a,
                len: (piece_end - a) as usize,
                run,
                skip: (a - r.start) as usize,
            };
            if inside {
                later.push(piece);
            } else {
                now.push(piece);
            }
            a = piece_end;
        }
    }
    (now, later)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_cut_at_registered_ranges() {
        let reg = [(0x2000, 0x4000), (0x8000, 0x9000)];
        let run = |start, npages| PageRun {
            start,
            npages,
            offset: 0,
        };
        let runs = [run(0x1000, 4), run(0x8000, 1), run(0x9000, 1)];
        let (now, later) = split_runs(&runs, &reg);
        let p = |addr, len, run, skip| Piece {
            addr,
            len,
            run,
            skip,
        };
        assert_eq!(
            now,
            vec![
                p(0x1000, 0x1000, 0, 0),
                p(0x4000, 0x1000, 0, 0x3000),
                p(0x9000, 0x1000, 2, 0)
            ]
        );
        assert_eq!(
            later,
            vec![p(0x2000, 0x2000, 0, 0x1000), p(0x8000, 0x1000, 1, 0)]
        );
    }
}

/// What the lazy fill did.
#[derive(Clone, Copy, Debug, Default)]
pub struct LazyStats {
    /// Faults answered, and pages they brought in.
    pub faults: u64,
    pub fault_pages: u64,
    /// Pages the background filler copied.
    pub filled_pages: u64,
    /// From the start of the fill until every page was in.
    pub elapsed: Duration,
}

/// The running fill; [`LazyFill::wait`] returns when every page is in.
#[derive(Debug)]
pub struct LazyFill {
    handle: Option<JoinHandle<Result<LazyStats, RestoreError>>>,
}

struct Shared {
    uffd: OwnedFd,
    pages: Arc<dyn PageSource>,
    /// Lazily filled pieces, sorted by address.
    runs: Vec<Piece>,
    filled: AtomicBool,
    faults: AtomicU64,
    fault_pages: AtomicU64,
}

enum Copy {
    Done,
    /// A page in the range was already there (the other thread was first), or
    /// the range is no longer one registered mapping (the program unmapped or
    /// replaced part of it, `ENOENT`, or it now crosses a mapping boundary,
    /// `EINVAL`): retry page by page; a single page in a mapping the program
    /// replaced needs no contents.
    Exists,
    /// The program's mm is gone (it exited).
    Gone,
}

impl Shared {
    fn run_at(&self, addr: u64) -> Option<&Piece> {
        let i = self.runs.partition_point(|r| r.end() <= addr);
        self.runs.get(i).filter(|r| r.addr <= addr)
    }

    /// `UFFDIO_COPY` of `[dst, dst + len)` from the piece `r`.
    fn copy(&self, r: &Piece, dst: u64, len: u64) -> std::io::Result<Copy> {
        let data = r.data(&*self.pages).ok_or_else(|| {
            std::io::Error::other(format!(
                "the page source has no data for {:#x}..{:#x}",
                r.addr,
                r.end()
            ))
        })?;
        let src = data.as_ptr() as u64 + (dst - r.addr);
        let mut done = 0u64;
        loop {
            match uffd::copy(self.uffd.as_raw_fd(), dst + done, src + done, len - done) {
                Ok(()) => return Ok(Copy::Done),
                Err((e, copied)) => {
                    done += copied;
                    match e.raw_os_error() {
                        Some(libc::EAGAIN) if done < len => continue,
                        Some(libc::EEXIST) | Some(libc::ENOENT) | Some(libc::EINVAL) => {
                            return Ok(Copy::Exists)
                        }
                        Some(libc::ESRCH) => return Ok(Copy::Gone),
                        _ => {
                            return Err(std::io::Error::new(
                                e.kind(),
                                format!("UFFDIO_COPY of {:#x}..{:#x}: {e}", dst + done, dst + len),
                            ))
                        }
                    }
                }
            }
        }
    }

    fn wake(&self, addr: u64) {
        let _ = uffd::wake(self.uffd.as_raw_fd(), addr, PAGE);
    }

    /// Answers one fault at `addr`.
    fn serve(&self, addr: u64) -> std::io::Result<()> {
        let page = addr & !(PAGE - 1);
        self.faults.fetch_add(1, Ordering::Relaxed);
        if let Some(r) = self.run_at(page) {
            let end = r.end();
            let lo = (page & !(FAULT_WINDOW - 1)).max(r.addr);
            let hi = (lo + FAULT_WINDOW).min(end);
            match self.copy(r, lo, hi - lo)? {
                Copy::Done => {
                    self.fault_pages
                        .fetch_add((hi - lo) / PAGE, Ordering::Relaxed);
                    return Ok(());
                }
                Copy::Gone => return Ok(()),
                Copy::Exists => {}
            }
            // Part of the window was there already: just the page itself.
            match self.copy(r, page, PAGE)? {
                Copy::Done => {
                    self.fault_pages.fetch_add(1, Ordering::Relaxed);
                }
                Copy::Exists => self.wake(page),
                Copy::Gone => {}
            }
            return Ok(());
        }
        // A page the image does not store: it was never touched, so it reads zero.
        match uffd::zeropage(self.uffd.as_raw_fd(), page, PAGE) {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EEXIST)
                        | Some(libc::ESRCH)
                        | Some(libc::EAGAIN)
                        | Some(libc::ENOENT)
                ) =>
            {
                self.wake(page);
                Ok(())
            }
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!("UFFDIO_ZEROPAGE of {page:#x}: {e}"),
            )),
        }
    }

    /// The fault server: reads fault messages until the filler is done and the
    /// queue is empty.
    fn server(&self) -> std::io::Result<()> {
        let fd = self.uffd.as_raw_fd();
        let mut msgs = [0u8; uffd::UFFD_MSG_LEN * 64];
        loop {
            let ready = sys::wait_readable(self.uffd.as_fd(), 10).map_err(|e| {
                std::io::Error::new(e.kind(), format!("poll on the userfaultfd: {e}"))
            })?;
            if !ready {
                if self.filled.load(Ordering::Acquire) {
                    return Ok(());
                }
                continue;
            }
            // SAFETY: read(2) into a live buffer of its length.
            let n = unsafe { libc::read(fd, msgs.as_mut_ptr() as *mut libc::c_void, msgs.len()) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EAGAIN) || e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("reading fault messages from the userfaultfd: {e}"),
                ));
            }
            for m in msgs[..n as usize].chunks_exact(uffd::UFFD_MSG_LEN) {
                if m[0] != uffd::UFFD_EVENT_PAGEFAULT {
                    continue;
                }
                let addr = u64::from_le_bytes(m[16..24].try_into().expect("8 bytes"));
                self.serve(addr)?;
            }
        }
    }

    /// The background filler: every run, in address order.
    fn filler(&self) -> std::io::Result<u64> {
        self.pages.populate();
        // Test switch: a slow fill, so that tests can act while it runs.
        let delay = std::env::var("CS_TEST_FILL_DELAY_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis);
        let mut pages = 0u64;
        for r in &self.runs {
            let end = r.end();
            let mut a = r.addr;
            while a < end {
                let n = (end - a).min(FILL_CHUNK);
                if let Some(d) = delay {
                    std::thread::sleep(d);
                }
                match self.copy(r, a, n)? {
                    Copy::Done => {
                        pages += n / PAGE;
                        a += n;
                    }
                    // Fill page by page across what the server put in.
                    Copy::Exists => {
                        for p in (a..a + n).step_by(PAGE as usize) {
                            match self.copy(r, p, PAGE)? {
                                Copy::Done => pages += 1,
                                Copy::Exists => {}
                                Copy::Gone => return Ok(pages),
                            }
                        }
                        a += n;
                    }
                    Copy::Gone => return Ok(pages),
                }
            }
        }
        Ok(pages)
    }
}

impl LazyFill {
    /// Starts serving faults and filling `runs` (pieces of `pages`) into the
    /// process whose ranges `prep` registered. `done` is written once every page
    /// is in.
    pub fn start(
        prep: Prepared,
        pages: Arc<dyn PageSource>,
        mut runs: Vec<Piece>,
        host_pid: i32,
        done: OwnedFd,
    ) -> Result<LazyFill, RestoreError> {
        if let Some(r) = runs.iter().find(|r| r.data(&*pages).is_none()) {
            return Err(RestoreError::PageSource { addr: r.addr });
        }
        runs.sort_unstable_by_key(|r| r.addr);
        // Held until every page is in: a dump now would read the pages not yet
        // filled as absent (crate::lock).
        let lock = match ProgramLock::acquire(host_pid, Role::Fill, Duration::ZERO, &mut |_| {}) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(pid = host_pid, "no fill lock on the restored program: {e}");
                None
            }
        };
        let shared = Arc::new(Shared {
            uffd: prep.uffd,
            pages,
            runs,
            filled: AtomicBool::new(false),
            faults: AtomicU64::new(0),
            fault_pages: AtomicU64::new(0),
        });
        let handle = std::thread::Builder::new()
            .name("lazy-fill".into())
            .spawn(move || run(shared, host_pid, done, lock))
            .map_err(|e| RestoreError::Sys {
                op: "starting the page filler".into(),
                source: e,
            })?;
        Ok(LazyFill {
            handle: Some(handle),
        })
    }

    /// Blocks until every page is in (or the fill failed and the program was killed).
    pub fn wait(mut self) -> Result<LazyStats, RestoreError> {
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(RestoreError::Sys {
                op: "lazy page fill".into(),
                source: std::io::Error::other("the filler thread panicked"),
            }),
            None => Ok(LazyStats::default()),
        }
    }
}

fn run(
    shared: Arc<Shared>,
    host_pid: i32,
    done: OwnedFd,
    lock: Option<ProgramLock>,
) -> Result<LazyStats, RestoreError> {
    let t = Instant::now();
    let (served, filled) = std::thread::scope(|sc| {
        let server = sc.spawn(|| {
            // The program waits on every fault: answer ahead of everything else.
            // SAFETY: setpriority(2) on this thread (tid from gettid) with integers;
            // failing (no CAP_SYS_NICE) only costs latency.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, -10) };
            shared.server()
        });
        // The background copy only uses what the program and the server leave.
        // (On an idle kvstore this made no measurable difference to the time to
        // the first answer; it matters when the program itself is busy.)
        let idle = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_setscheduler(2) on the calling thread (0) with a live param.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &idle) };
        let filled = shared.filler();
        shared.filled.store(true, Ordering::Release);
        let served = server
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("fault server panicked")));
        (served, filled)
    });
    let result = served.and(filled).map_err(|e| RestoreError::Sys {
        op: "filling the restored program's pages (userfaultfd)".into(),
        source: e,
    });
    let stats = LazyStats {
        faults: shared.faults.load(Ordering::Relaxed),
        fault_pages: shared.fault_pages.load(Ordering::Relaxed),
        filled_pages: *result.as_ref().unwrap_or(&0),
        elapsed: t.elapsed(),
    };
    if result.is_err() {
        // Pages are missing: the program must not run on with zeros in their place.
        let _ = sys::kill(host_pid, libc::SIGKILL);
    }
    // Unregister (last reference), then let the namespace init stand down.
    drop(shared);
    drop(lock);
    let _ = File::from(done).write_all(b"D");
    result.map(|_| stats)
}

/// Writes the "fill done" byte on a pipe that had no lazy fill behind it.
pub fn signal_done(done: OwnedFd) {
    let _ = File::from(done).write_all(b"D");
}

/// Copies `pieces` of `pages` into the new process (whose VMAs the stub has
/// mapped writable), split across cores like the dump's copy.
pub(super) fn fill_pages(
    pid: i32,
    pages: &dyn PageSource,
    pieces: &[Piece],
) -> Result<(), RestoreError> {
    if pieces.is_empty() {
        return Ok(());
    }
    pages.populate();
    let total: usize = pieces.iter().map(|r| r.len).sum();
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    let share = total.div_ceil(workers);
    let mut jobs: Vec<Vec<(&[u8], u64)>> = vec![Vec::new()];
    let mut acc = 0usize;
    for p in pieces {
        let data = p
            .data(pages)
            .ok_or(RestoreError::PageSource { addr: p.addr })?;
        if acc >= share {
            jobs.push(Vec::new());
            acc = 0;
        }
        jobs.last_mut().expect("one job").push((data, p.addr));
        acc += p.len;
    }
    std::thread::scope(|sc| {
        let hs: Vec<_> = jobs
            .iter()
            .map(|j| sc.spawn(move || sys::write_remote_vec(pid, j)))
            .collect();
        hs.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(std::io::Error::other("copy thread panicked")))
        })
    })
    .map_err(super::sys_err(
        "writing pages into the new process (process_vm_writev)",
    ))
}
