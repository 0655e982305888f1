//! Restoring a process from a verified image.
//!
//! ```text
//! driver ──fork──> A: unshare(NEWTIME|NEWPID), write timens offsets,
//!   │                 fork ──> B (pid 1 of the new pid + time namespaces), A exits
//!   │                          B: clone3(set_tid = [pid]) ──> C
//!   │                             C: dup3 the prepared fds into place, epoll_ctl,
//!   │                                chdir, umask, rlimits, default signals,
//!   │                                exec cs-restore-stub IMAGE_FD REPORT_FD
//!   │                             stub: lays out memory, threads, parks; reports
//!   │<──────────────── report (gadget, frames, stub extent) ──┘
//!   └─ ptrace every thread of C: rt_sigreturn at the gadget (registers, XSAVE,
//!      mask, altstack), munmap the stub from the main thread, detach.
//! ```
//!
//! Everything that can fail on bad input is checked before the first fork: CPU
//! layout, stub overlap, vDSO layout, fd kinds. Objects the fds need (listening
//! sockets, eventfds, pipes with contents, files at offsets, epoll instances) are
//! created in the driver, above every target fd number, and only `dup3`ed into place
//! in C, where no allocation may happen (the driver may have other threads).

pub mod closed;
pub mod lazy;
mod plan;
mod rebuild;
mod release;
mod stub;

use lazy::fill_pages;
pub use plan::{check_cpu, check_privileges, precheck};
use rebuild::*;
use release::*;
use stub::*;

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use restore_stub::report::{Phase, Report};

use crate::capture::fds::{FdCapture, FdKind, SockFamily};
use crate::capture::inject::{Deferred, Injector};
use crate::error::CaptureError;
use crate::linux::procfs;
use crate::linux::sys::{self, WaitStatus};
use crate::model::{Epoch, PageSource, VmaKind};

#[derive(Debug, Default, Clone)]
pub struct RestoreOptions {
    /// Path of `cs-restore-stub`; default: next to the running executable.
    pub stub: Option<PathBuf>,
    /// Files for the program's stdout / stderr instead of the driver's.
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
    /// Copy every page in before the program runs, instead of filling lazily
    /// through a userfaultfd while it runs ([`crate::restore::lazy`]).
    pub eager: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("image was taken on another CPU layout: XSAVE {image_size} bytes / XCR0 {image_xcr0:#x}, this machine has {host_size} bytes / XCR0 {host_xcr0:#x}")]
    CpuMismatch {
        image_size: u32,
        image_xcr0: u64,
        host_size: u32,
        host_xcr0: u64,
    },
    #[error("VMA {start:#x}-{end:#x} overlaps the restore stub's fixed range {stub_start:#x}-{stub_end:#x}")]
    StubOverlap {
        start: u64,
        end: u64,
        stub_start: u64,
        stub_end: u64,
    },
    #[error("vDSO layout differs: image has {image}, this kernel has {host}")]
    VdsoMismatch { image: String, host: String },
    #[error("the vDSO's functions differ from the image's ({image} functions recorded on kernel {image_kernel}; this kernel {host_kernel} has {host}, digest differs): the program keeps its vDSO function addresses, so it cannot run on this kernel's vDSO")]
    VdsoSymbols {
        image: u64,
        host: usize,
        image_kernel: String,
        host_kernel: String,
    },
    #[error("reading this kernel's vDSO: {0}")]
    Vdso(#[from] crate::linux::vdso::VdsoError),
    #[error("fd {fd}: {detail}")]
    Fd { fd: i32, detail: String },
    #[error("{path} (mapped at {start:#x}) cannot be opened: {source}")]
    MappedFile {
        path: PathBuf,
        start: u64,
        source: std::io::Error,
    },
    #[error("{path} is not the file the program had mapped at the checkpoint: {detail}; refusing to restore")]
    FileChanged { path: String, detail: String },
    #[error("cannot give the program its credentials back: {0}; refusing to restore")]
    Credentials(String),
    #[error("cannot find the restore stub at {path}: {source}")]
    Stub {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{op} failed: {source}")]
    Sys { op: String, source: std::io::Error },
    #[error("the new process failed before the stub ran: {0}")]
    PreExec(String),
    #[error("the restore stub failed while {phase} (errno {errno}, at {addr:#x})", phase = phase.describe())]
    StubFailed { phase: Phase, errno: i64, addr: u64 },
    #[error("the restore stub sent no usable report ({0})")]
    NoReport(String),
    #[error("{0}")]
    Privilege(String),
    #[error("finishing the threads: {0}")]
    Finish(#[from] CaptureError),
    #[error("reading the driver's own maps (for the vDSO layout): {0}")]
    OwnMaps(CaptureError),
    #[error("the page source holds no data for the page run at {addr:#x}")]
    PageSource { addr: u64 },
    #[error("writing the epoch's metadata for the stub: {0}")]
    Meta(#[from] crate::image::ImageError),
}

fn sys_err(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> RestoreError {
    let op = op.into();
    move |source| RestoreError::Sys { op, source }
}

fn last_err(op: &str) -> RestoreError {
    RestoreError::Sys {
        op: op.to_string(),
        source: std::io::Error::last_os_error(),
    }
}

/// A restored, running process.
#[derive(Debug)]
pub struct Restored {
    /// The program's pid in the driver's namespace.
    pub host_pid: i32,
    /// The namespace init process (parent of the program), a child of the driver.
    pub init_pid: i32,
    /// From the command's start until the threads were released.
    pub elapsed: Duration,
    /// The lazy page fill still running, if the pages are filled lazily.
    pub lazy: Option<crate::restore::lazy::LazyFill>,
}

impl Restored {
    /// Waits for the program to end; returns its exit code (128+signal when killed).
    pub fn wait(&self) -> i32 {
        loop {
            match sys::waitpid(self.init_pid, false) {
                Ok(Some(WaitStatus::Exited(_, c))) => return c,
                Ok(Some(WaitStatus::Signaled(_, s))) => return 128 + s,
                Ok(_) => continue,
                Err(_) => return 255,
            }
        }
    }
}

/// Starts the restored process from `plan` (a full epoch, verified) and lets it
/// run; its memory comes from `pages`, copied in before it runs or, by default,
/// lazily while it runs ([`lazy`]).
pub fn restore(
    plan: &Epoch,
    pages: std::sync::Arc<dyn PageSource>,
    opts: &RestoreOptions,
) -> Result<Restored, RestoreError> {
    let t0 = Instant::now();
    precheck(plan)?;
    let stub = stub_path(opts)?;
    let stub_c = CString::new(stub.as_os_str().as_bytes()).map_err(|_| RestoreError::Stub {
        path: stub.clone(),
        source: std::io::Error::other("path contains NUL"),
    })?;
    let max_fd = plan.fds.iter().map(|f| f.fd).max().unwrap_or(2).max(2);
    let floor = max_fd + 1;
    let (moves, adds) = prepare_fds(&plan.fds, floor)?;
    // Control fds, also above every target number.
    // The stub reads the epoch's metadata frames from a sealed-off memory file;
    // it never reads pages (the driver fills them).
    let image_fd = lift(metadata_fd(plan)?, floor)?;
    // The program's executable, inherited by the new process so that /proc/PID/exe
    // can point at it again once the stub is gone (PR_SET_MM_MAP exe_fd).
    let exe_fd: Option<OwnedFd> =
        match std::fs::File::open(std::ffi::OsStr::from_bytes(&plan.process.exe)) {
            Ok(f) => Some(lift(f.into(), floor)?),
            Err(_) => None,
        };
    let exe_raw = exe_fd.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
    let (rep_r, rep_w) = pipe_cloexec("pipe2(report)")?;
    let rep_w = lift(rep_w, floor)?;
    let (err_r, err_w) = pipe_cloexec("pipe2(errors)")?;
    let err_w = lift(err_w, floor)?;
    let (pid_r, pid_w) = pipe_cloexec("pipe2(pid)")?;
    let (go_r, go_w) = pipe_cloexec("pipe2(go)")?;
    // The init waits for one byte on `done` (all pages in) and kills the program
    // if it reads EOF instead: the driver died with pages still missing.
    let (done_r, done_w) = pipe_cloexec("pipe2(done)")?;
    let done_r = lift(done_r, floor)?;
    let done_w = lift(done_w, floor)?;
    let go_r = lift(go_r, floor)?;
    let redirect = |p: &Option<PathBuf>| -> Result<Option<OwnedFd>, RestoreError> {
        match p {
            None => Ok(None),
            Some(path) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(sys_err(format!("opening {}", path.display())))?;
                Ok(Some(lift(f.into(), floor)?))
            }
        }
    };
    let out_fd = redirect(&opts.stdout)?;
    let err_fd = redirect(&opts.stderr)?;
    let cwd = CString::new(plan.process.cwd.clone())
        .unwrap_or_else(|_| CString::new("/").expect("no NUL"));
    let arg1 = CString::new(image_fd.as_raw_fd().to_string()).expect("digits");
    let arg2 = CString::new(rep_w.as_raw_fd().to_string()).expect("digits");
    let arg3 = CString::new(go_r.as_raw_fd().to_string()).expect("digits");
    let argv = [
        stub_c.as_ptr(),
        arg1.as_ptr(),
        arg2.as_ptr(),
        arg3.as_ptr(),
        std::ptr::null(),
    ];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let mono = plan.process.monotonic_ns as i128 - now_ns(libc::CLOCK_MONOTONIC);
    let boot = plan.process.boottime_ns as i128 - now_ns(libc::CLOCK_BOOTTIME);
    let offsets = format!(
        "{}{}",
        offset_line(libc::CLOCK_MONOTONIC, mono),
        offset_line(libc::CLOCK_BOOTTIME, boot)
    );
    let timens_path = c"/proc/self/timens_offsets";
    let set_tid: [libc::pid_t; 1] = [plan.process.pid];
    let rlimits: Vec<(u32, libc::rlimit64)> = plan
        .process
        .rlimits
        .iter()
        .map(|r| {
            (
                r.resource,
                libc::rlimit64 {
                    rlim_cur: r.soft,
                    rlim_max: r.hard,
                },
            )
        })
        .collect();
    let (err_w_raw, pid_w_raw) = (err_w.as_raw_fd(), pid_w.as_raw_fd());
    let rep_r_raw = rep_r.as_raw_fd();
    let go_w_raw = go_w.as_raw_fd();

    // Every other descriptor the driver has (inherited from whoever started it, e.g.
    // a build tool's jobserver pipe) must not reach the program: the new process
    // closes all numbers but these before the exec.
    let mut keep: Vec<u32> = vec![0, 1, 2];
    keep.extend(plan.fds.iter().map(|f| f.fd as u32));
    keep.extend(
        [
            image_fd.as_raw_fd(),
            rep_w.as_raw_fd(),
            go_r.as_raw_fd(),
            err_w.as_raw_fd(),
        ]
        .map(|f| f as u32),
    );
    if exe_raw >= 0 {
        keep.push(exe_raw as u32);
    }
    keep.sort_unstable();
    keep.dedup();
    let mut close_gaps: Vec<(u32, u32)> = Vec::new();
    let mut next = 0u32;
    for &k in &keep {
        if k > next {
            close_gaps.push((next, k - 1));
        }
        next = k + 1;
    }
    close_gaps.push((next, u32::MAX));
    // SAFETY: fork(2). The child runs only async-signal-safe syscalls on data
    // prepared above, then execs or _exits.
    let a = unsafe { libc::fork() };
    if a < 0 {
        return Err(last_err("fork"));
    }
    if a == 0 {
        // A: new time and pid namespaces for our children.
        // SAFETY: unshare/open/write/close/fork/_exit are async-signal-safe syscalls.
        unsafe {
            if libc::unshare(libc::CLONE_NEWTIME | libc::CLONE_NEWPID) < 0 {
                child_fail(err_w_raw, b"unshare(CLONE_NEWTIME|CLONE_NEWPID)");
            }
            let fd = libc::open(timens_path.as_ptr(), libc::O_WRONLY);
            if fd < 0 || libc::write(fd, offsets.as_ptr() as *const libc::c_void, offsets.len()) < 0
            {
                child_fail(err_w_raw, b"writing /proc/self/timens_offsets");
            }
            libc::close(fd);
            let b = libc::fork();
            if b < 0 {
                child_fail(err_w_raw, b"fork (namespace init)");
            }
            if b > 0 {
                let pb = b.to_le_bytes();
                libc::write(pid_w_raw, pb.as_ptr() as *const libc::c_void, 4);
                libc::_exit(0);
            }
            // B: pid 1 of the new namespace.
            let close_in_init = [
                image_fd.as_raw_fd(),
                rep_w.as_raw_fd(),
                rep_r_raw,
                exe_raw,
                go_r.as_raw_fd(),
                go_w_raw,
                done_w.as_raw_fd(),
            ];
            let setup = ChildSetup {
                moves: &moves,
                adds: &adds,
                out_fd: out_fd.as_ref(),
                err_fd: err_fd.as_ref(),
                cwd: &cwd,
                rlimits: &rlimits,
                argv: &argv,
                envp: &envp,
                errw: err_w_raw,
                exe_raw,
                close_in_init: &close_in_init,
                close_gaps: &close_gaps,
                done_r: done_r.as_raw_fd(),
                umask: (plan.process.umask & 0o777) as libc::mode_t,
            };
            init_main(&set_tid, &setup)
        }
    }
    drop(pid_w);
    drop(err_w);
    drop(rep_w);
    drop(done_r);
    let mut done_w = Some(done_w);
    // Reap A, learn B.
    let _ = sys::waitpid(a, false);
    let mut pb = [0u8; 4];
    let init_pid = match File::from(pid_r).read_exact(&mut pb) {
        Ok(()) => i32::from_le_bytes(pb),
        Err(_) => return Err(read_preexec_error(err_r)),
    };
    drop(moves);
    // Wait for the stub's report (or a pre-exec failure, or the child's death).
    drop(go_r);
    let mut rep_file = File::from(rep_r);
    let mut first = [0u8; 4];
    let got = read_full(&mut rep_file, &mut first).map_err(sys_err("reading the stub's report"))?;
    let mut lazy_fill = None;
    let rep = if got == 4 && first == restore_stub::report::PAGES_MAGIC {
        // The stub mapped every VMA and made a userfaultfd (its number follows).
        let mut ufd = [0u8; 4];
        let n = read_full(&mut rep_file, &mut ufd).map_err(sys_err("reading the stub's report"))?;
        let stub_ufd = if n == 4 { i32::from_le_bytes(ufd) } else { -1 };
        let host = program_pid(init_pid)?;
        // Lazily: register the anonymous memory; what is outside it is filled now.
        let prepared = if opts.eager || stub_ufd < 0 {
            None
        } else {
            crate::restore::lazy::prepare(host, stub_ufd, &plan.vmas).ok()
        };
        let registered = prepared.as_ref().map_or(&[][..], |p| &p.registered[..]);
        let (now, later) = lazy::split_runs(pages.runs(), registered);
        let filled = fill_pages(host, &*pages, &now);
        let started = match (filled, prepared) {
            (Ok(()), Some(p)) => crate::restore::lazy::LazyFill::start(
                p,
                pages.clone(),
                later,
                host,
                done_w.take().expect("done pipe"),
            )
            .map(Some),
            (Ok(()), None) => Ok(None),
            (Err(e), _) => Err(e),
        };
        // Either way, let the stub go on (it reports or is killed below).
        let _ = (&File::from(go_w)).write_all(&[1]);
        match started {
            Ok(l) => lazy_fill = l,
            Err(e) => {
                // The half-restored program must not run.
                let _ = sys::kill(host, libc::SIGKILL);
                drop(done_w);
                let _ = sys::waitpid(init_pid, false);
                return Err(e);
            }
        }
        read_report(rep_file, &[]).map_err(sys_err("reading the stub's report"))?
    } else {
        drop(go_w);
        read_report(rep_file, &first[..got]).map_err(sys_err("reading the stub's report"))?
    };
    if rep.is_empty() {
        let e = read_preexec_error(err_r);
        drop(done_w.take());
        let _ = sys::waitpid(init_pid, false);
        return Err(e);
    }
    let report = Report::parse(&rep).map_err(|e| RestoreError::NoReport(format!("{e:?}")))?;
    if report.status != 0 {
        drop(done_w.take());
        let _ = sys::waitpid(init_pid, false);
        return Err(RestoreError::StubFailed {
            phase: Phase::from_raw(report.status),
            errno: report.errno,
            addr: report.addr,
        });
    }
    let host_pid = program_pid(init_pid)?;
    let exe_in_target = exe_fd.as_ref().map(|f| f.as_raw_fd());
    drop(exe_fd);
    if let Err(e) = finish_threads(host_pid, &report, plan, exe_in_target) {
        // The half-restored program must not run.
        let _ = sys::kill(host_pid, libc::SIGKILL);
        drop(done_w.take());
        let _ = sys::waitpid(init_pid, false);
        return Err(e.into());
    }
    if let Some(d) = done_w {
        crate::restore::lazy::signal_done(d);
    }
    Ok(Restored {
        host_pid,
        init_pid,
        elapsed: t0.elapsed(),
        lazy: lazy_fill,
    })
}
