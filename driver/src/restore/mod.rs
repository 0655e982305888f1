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

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
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

/// Checks, before anything else, that this driver may restore at all: new pid and
/// time namespaces, `clone3` with `set_tid` and `PR_SET_MM_MAP` need CAP_SYS_ADMIN
/// (this kernel accepts it for the last two in place of CAP_CHECKPOINT_RESTORE /
/// CAP_SYS_RESOURCE; the sandbox these tests run in has no CAP_SYS_RESOURCE).
/// Without it the restore would only fail halfway (EPERM from `unshare`).
pub fn check_privileges() -> Result<(), RestoreError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_ADMIN: u32 = 21;
    let missing: Vec<&str> = [(CAP_SYS_ADMIN, "CAP_SYS_ADMIN")]
        .into_iter()
        .filter(|(bit, _)| eff & (1 << bit) == 0)
        .map(|(_, name)| name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    let uid = unsafe { libc::geteuid() };
    Err(RestoreError::Privilege(format!(
        "restore must run as root: it creates pid and time namespaces, gives threads their old ids and sets the program's memory layout (CAP_SYS_ADMIN); this driver runs as uid {uid} without {}",
        missing.join(", ")
    )))
}

/// Checks that the image can be restored on this machine, without side effects.
pub fn precheck(plan: &Epoch) -> Result<(), RestoreError> {
    check_cpu(plan)?;
    precheck_layout(plan)?;
    crate::capture::identity::check_all(&plan.files, &plan.vmas).map_err(|m| {
        RestoreError::FileChanged {
            path: m.path,
            detail: m.detail,
        }
    })?;
    crate::capture::creds::precheck(&plan.creds()).map_err(RestoreError::Credentials)
}

/// The image's XSAVE layout (size and XCR0) must be this machine's.
pub fn check_cpu(plan: &Epoch) -> Result<(), RestoreError> {
    let (host_size, host_xcr0) = sys::host_xsave_layout();
    if plan.process.xsave_size != host_size || plan.process.xcr0 != host_xcr0 {
        return Err(RestoreError::CpuMismatch {
            image_size: plan.process.xsave_size,
            image_xcr0: plan.process.xcr0,
            host_size,
            host_xcr0,
        });
    }
    Ok(())
}

fn precheck_layout(plan: &Epoch) -> Result<(), RestoreError> {
    // Every file the program had mapped must still be there (the stub maps them by path).
    for v in &plan.vmas {
        if let VmaKind::File { path, .. } = &v.kind {
            let p = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
            if let Err(source) = std::fs::metadata(p) {
                return Err(RestoreError::MappedFile {
                    path: p.to_path_buf(),
                    start: v.start,
                    source,
                });
            }
        }
    }
    let stub_start = restore_stub::STUB_BASE;
    let stub_end = stub_start + restore_stub::STUB_MAX_LEN;
    for v in &plan.vmas {
        if v.start < stub_end && v.end > stub_start {
            return Err(RestoreError::StubOverlap {
                start: v.start,
                end: v.end,
                stub_start,
                stub_end,
            });
        }
    }
    // The vDSO block is remapped whole; the sizes of its parts must match ours.
    let describe = |v: &[(VmaKind, u64)]| {
        v.iter()
            .map(|(k, l)| format!("{k:?} {l} B"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let special = |vm: &mut dyn Iterator<Item = (VmaKind, u64, u64)>| {
        let mut v: Vec<(VmaKind, u64, u64)> = vm
            .filter(|(k, _, _)| matches!(k, VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock))
            .collect();
        v.sort_by_key(|x| x.1);
        v
    };
    let image = special(&mut plan.vmas.iter().map(|v| (v.kind.clone(), v.start, v.end)));
    let own = procfs::read_maps(std::process::id() as i32).map_err(|e| RestoreError::Sys {
        op: "reading our own maps".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let host = special(&mut own.iter().map(|m| {
        let k = match m.name.as_str() {
            "[vdso]" => VmaKind::Vdso,
            "[vvar]" => VmaKind::Vvar,
            "[vvar_vclock]" => VmaKind::VvarVclock,
            _ => VmaKind::Anonymous,
        };
        (k, m.start, m.end)
    }));
    let shape = |v: &[(VmaKind, u64, u64)]| -> Vec<(VmaKind, u64)> {
        v.iter().map(|(k, s, e)| (k.clone(), e - s)).collect()
    };
    let contiguous = image.windows(2).all(|w| w[0].2 == w[1].1);
    if shape(&image) != shape(&host) || !contiguous {
        return Err(RestoreError::VdsoMismatch {
            image: describe(&shape(&image)),
            host: describe(&shape(&host)),
        });
    }
    for f in &plan.fds {
        if let FdKind::Other { what } = &f.kind {
            return Err(RestoreError::Fd {
                fd: f.fd,
                detail: format!(
                    "cannot restore a descriptor of this kind: {}",
                    String::from_utf8_lossy(what)
                ),
            });
        }
    }
    Ok(())
}

/// One prepared descriptor: `tmp` (ours, above every target number) goes to `target`.
#[derive(Debug)]
struct FdMove {
    tmp: OwnedFd,
    target: i32,
}

#[derive(Debug, Clone, Copy)]
struct EpollAdd {
    epfd: i32,
    tfd: i32,
    events: u32,
    data: u64,
}

fn cvt(rc: libc::c_int, op: &str) -> Result<RawFd, RestoreError> {
    if rc < 0 {
        Err(last_err(op))
    } else {
        Ok(rc)
    }
}

fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: callers pass a descriptor they just created and nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A close-on-exec pipe (read end, write end).
fn pipe_cloexec(op: &str) -> Result<(OwnedFd, OwnedFd), RestoreError> {
    let mut p = [0 as libc::c_int; 2];
    // SAFETY: `p` is a live array of two ints for pipe2 to fill.
    cvt(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, op)?;
    Ok((own(p[0]), own(p[1])))
}

/// Moves `fd` to a number >= `floor` (close-on-exec) and returns it.
fn lift(fd: OwnedFd, floor: i32) -> Result<OwnedFd, RestoreError> {
    // SAFETY: F_DUPFD_CLOEXEC duplicates a valid fd; no memory is involved.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, floor) };
    Ok(own(cvt(n, "fcntl(F_DUPFD_CLOEXEC)")?))
}

fn set_status_flags(fd: RawFd, flags: u32) -> Result<(), RestoreError> {
    let settable =
        (libc::O_APPEND | libc::O_NONBLOCK | libc::O_ASYNC | libc::O_DIRECT | libc::O_NOATIME)
            as u32;
    // SAFETY: fcntl(F_SETFL) with an integer.
    cvt(
        unsafe { libc::fcntl(fd, libc::F_SETFL, (flags & settable) as libc::c_int) },
        "fcntl(F_SETFL)",
    )
    .map(drop)
}

fn sockaddr_for(
    family: SockFamily,
    addr: &[u8],
    port: u16,
) -> Result<(libc::sockaddr_storage, libc::socklen_t), String> {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match family {
        SockFamily::Inet => {
            let a: [u8; 4] = addr
                .try_into()
                .map_err(|_| format!("IPv4 address of {} bytes", addr.len()))?;
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = port.to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a);
            Ok((
                ss,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ))
        }
        SockFamily::Inet6 => {
            let a: [u8; 16] = addr
                .try_into()
                .map_err(|_| format!("IPv6 address of {} bytes", addr.len()))?;
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = port.to_be();
            sin6.sin6_addr.s6_addr = a;
            Ok((
                ss,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            ))
        }
    }
}

/// A listening socket on the checkpointed address. A listener without SO_REUSEADDR
/// (Go sets it; raw `syscall.Socket` users may not) cannot bind while TIME_WAIT
/// connections of the dead original hold its port: those belong to the program's
/// previous life, so they are destroyed (`ss -K`, sock_diag SOCK_DESTROY) and the
/// bind is tried once more.
fn listen_tcp_reclaiming(
    family: SockFamily,
    mptcp: bool,
    addr: &[u8],
    port: u16,
    backlog: u32,
    reuseaddr: bool,
) -> Result<OwnedFd, String> {
    let first = match listen_tcp(family, mptcp, addr, port, backlog, reuseaddr) {
        Err((e, Some(libc::EADDRINUSE))) => e,
        other => return other.map_err(|(e, _)| e),
    };
    // The port is held: by TIME_WAIT sockets of the program's old connections,
    // or by the listener of a program killed a moment ago (a kill-mode dump), which
    // the kernel may still be tearing down (an MPTCP listener's subflows go
    // asynchronously). Destroy TIME_WAIT sockets, and retry for up to 2 s.
    let filter = format!("sport = :{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut wait = Duration::from_millis(5);
    loop {
        let killed = std::process::Command::new("ss")
            .args(["-K", "-tan", "state", "time-wait", &filter])
            .output()
            .map_err(|x| {
                format!(
                    "{first}; and `ss -K` to reclaim the port from TIME_WAIT could not run: {x}"
                )
            })?;
        if !killed.status.success() {
            return Err(format!(
                "{first}; `ss -K` failed: {}",
                String::from_utf8_lossy(&killed.stderr)
            ));
        }
        match listen_tcp(family, mptcp, addr, port, backlog, reuseaddr) {
            Err((e, Some(libc::EADDRINUSE))) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_millis(200));
            }
            other => {
                return other.map_err(|(e2, _)| {
                    format!("{e2} (even after destroying TIME_WAIT sockets on the port and retrying for 2 s)")
                })
            }
        }
    }
}

fn listen_tcp(
    family: SockFamily,
    mptcp: bool,
    addr: &[u8],
    port: u16,
    backlog: u32,
    reuseaddr: bool,
) -> Result<OwnedFd, (String, Option<i32>)> {
    let dom = if family == SockFamily::Inet {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let proto = if mptcp { 262 } else { 0 };
    // SAFETY: socket(2) with integer arguments.
    let fd = unsafe { libc::socket(dom, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err((
            format!("socket({}): {e}", if mptcp { "MPTCP" } else { "TCP" }),
            e.raw_os_error(),
        ));
    }
    let fd = own(fd);
    let one: libc::c_int = i32::from(reuseaddr);
    // SAFETY: `one` is a live c_int for the option value.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const libc::c_void,
            4,
        )
    };
    let (ss, len) = sockaddr_for(family, addr, port).map_err(|e| (e, None))?;
    // SAFETY: `ss` holds a valid address of `len` bytes.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &ss as *const _ as *const libc::sockaddr,
            len,
        )
    } < 0
    {
        let e = std::io::Error::last_os_error();
        return Err((format!("bind to port {port}: {e}"), e.raw_os_error()));
    }
    // SAFETY: listen(2) with integers.
    if unsafe { libc::listen(fd.as_raw_fd(), backlog.min(i32::MAX as u32) as i32) } < 0 {
        let e = std::io::Error::last_os_error();
        return Err((format!("listen on port {port}: {e}"), e.raw_os_error()));
    }
    Ok(fd)
}

fn listen_unix(path: &[u8], sock_type: i32) -> Result<OwnedFd, String> {
    // SAFETY: socket(2) with integer arguments.
    let fd = unsafe { libc::socket(libc::AF_UNIX, sock_type | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!(
            "socket(AF_UNIX): {}",
            std::io::Error::last_os_error()
        ));
    }
    let fd = own(fd);
    // SAFETY: sockaddr_un is plain data; all-zero is valid.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if path.len() >= sun.sun_path.len() {
        return Err("unix socket path too long".into());
    }
    for (d, s) in sun.sun_path.iter_mut().zip(path) {
        *d = *s as libc::c_char;
    }
    // The socket file of the original process: its mode and owner are the
    // program's (a dump refuses a listener whose file is gone), and it would make
    // bind fail.
    let old_file = (path.first() != Some(&0))
        .then(|| std::fs::symlink_metadata(std::ffi::OsStr::from_bytes(path)).ok())
        .flatten();
    if path.first() != Some(&0) {
        let _ = std::fs::remove_file(std::ffi::OsStr::from_bytes(path));
    }
    let len = (2 + path.len()) as libc::socklen_t;
    // SAFETY: `sun` holds a valid address of `len` bytes.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sun as *const _ as *const libc::sockaddr,
            len,
        )
    } < 0
    {
        return Err(format!(
            "bind to {}: {}",
            String::from_utf8_lossy(path),
            std::io::Error::last_os_error()
        ));
    }
    if let Some(m) = old_file {
        closed::keep_mode_and_owner(path, &m)?;
    }
    // SAFETY: listen(2) with integers.
    if unsafe { libc::listen(fd.as_raw_fd(), 4096) } < 0 {
        return Err(format!("listen: {}", std::io::Error::last_os_error()));
    }
    Ok(fd)
}

/// Creates every fd object the program had, at numbers above all of its own.
fn prepare_fds(
    fds: &[FdCapture],
    floor: i32,
) -> Result<(Vec<FdMove>, Vec<EpollAdd>), RestoreError> {
    let mut moves = Vec::new();
    let mut adds = Vec::new();
    let mut pipes: std::collections::HashMap<u64, (Option<OwnedFd>, Option<OwnedFd>)> =
        Default::default();
    for f in fds {
        let err = |detail: String| RestoreError::Fd { fd: f.fd, detail };
        let obj: OwnedFd = match &f.kind {
            FdKind::Stdio { .. } => continue,
            FdKind::Regular { path, offset } => {
                let c = CString::new(path.clone()).map_err(|_| err("path contains NUL".into()))?;
                let acc = f.status_flags & libc::O_ACCMODE as u32;
                let flags =
                    acc as i32 | libc::O_CLOEXEC | (f.status_flags & libc::O_APPEND as u32) as i32;
                // SAFETY: `c` is a NUL-terminated path.
                let fd = unsafe { libc::open(c.as_ptr(), flags) };
                if fd < 0 {
                    return Err(err(format!(
                        "reopening {}: {}",
                        String::from_utf8_lossy(path),
                        std::io::Error::last_os_error()
                    )));
                }
                let fd = own(fd);
                // SAFETY: lseek with integers; char devices may refuse, which is fine.
                unsafe { libc::lseek(fd.as_raw_fd(), *offset as i64, libc::SEEK_SET) };
                fd
            }
            FdKind::Pipe {
                id,
                write_end,
                contents,
            } => {
                let e = pipes.entry(*id).or_insert((None, None));
                if e.0.is_none() && e.1.is_none() {
                    let (r, w) = pipe_cloexec("pipe2")?;
                    // A dump refuses pipes of another capacity than the default (it
                    // is not carried), so the contents fit; an older image's may not.
                    if contents.len() > 16 * 4096 {
                        // SAFETY: fcntl with integers.
                        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
                    }
                    if !contents.is_empty() {
                        // SAFETY: writing `contents` from a live slice.
                        let n = unsafe {
                            libc::write(
                                w.as_raw_fd(),
                                contents.as_ptr() as *const libc::c_void,
                                contents.len(),
                            )
                        };
                        if n != contents.len() as isize {
                            return Err(err(format!(
                                "refilling pipe with {} bytes failed",
                                contents.len()
                            )));
                        }
                    }
                    *e = (Some(r), Some(w));
                }
                let end = if *write_end { &e.1 } else { &e.0 };
                let end = end
                    .as_ref()
                    .ok_or_else(|| err("pipe end used twice".into()))?;
                end.try_clone().map_err(sys_err("dup pipe end"))?
            }
            FdKind::Eventfd { count, semaphore } => {
                let flags = libc::EFD_CLOEXEC | if *semaphore { libc::EFD_SEMAPHORE } else { 0 };
                // SAFETY: eventfd(2) with integers; counts above u32 are written below.
                let fd = own(cvt(unsafe { libc::eventfd(0, flags) }, "eventfd")?);
                if *count > 0 {
                    let v = count.to_ne_bytes();
                    // SAFETY: writing 8 bytes from a live array.
                    unsafe { libc::write(fd.as_raw_fd(), v.as_ptr() as *const libc::c_void, 8) };
                }
                fd
            }
            FdKind::Epoll { entries } => {
                // SAFETY: epoll_create1 with a flag.
                let fd = own(cvt(
                    unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) },
                    "epoll_create1",
                )?);
                for e in entries {
                    adds.push(EpollAdd {
                        epfd: f.fd,
                        tfd: e.tfd,
                        events: e.events,
                        data: e.data,
                    });
                }
                fd
            }
            FdKind::TcpListen {
                family,
                mptcp,
                addr,
                port,
                backlog,
                reuseaddr,
            } => listen_tcp_reclaiming(*family, *mptcp, addr, *port, *backlog, *reuseaddr)
                .map_err(err)?,
            FdKind::UnixListen { path, sock_type } => listen_unix(path, *sock_type).map_err(err)?,
            FdKind::TcpConnected { family, mptcp, .. } => {
                closed::tcp(*family, *mptcp).map_err(err)?
            }
            FdKind::UnixConnected { sock_type } => closed::unix(*sock_type).map_err(err)?,
            FdKind::Other { what } => {
                return Err(err(format!(
                    "cannot restore: {}",
                    String::from_utf8_lossy(what)
                )));
            }
        };
        set_status_flags(obj.as_raw_fd(), f.status_flags)?;
        moves.push(FdMove {
            tmp: lift(obj, floor)?,
            target: f.fd,
        });
    }
    Ok((moves, adds))
}

fn stub_path(opts: &RestoreOptions) -> Result<PathBuf, RestoreError> {
    let p = match &opts.stub {
        Some(p) => p.clone(),
        None => match std::env::var_os("CS_RESTORE_STUB") {
            Some(p) => PathBuf::from(p),
            None => std::env::current_exe()
                .map_err(sys_err("locating our own executable"))?
                .with_file_name("cs-restore-stub"),
        },
    };
    std::fs::metadata(&p).map_err(|source| RestoreError::Stub {
        path: p.clone(),
        source,
    })?;
    Ok(p)
}

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

fn offset_line(clock_id: i32, off_ns: i128) -> String {
    let secs = off_ns.div_euclid(1_000_000_000);
    let nsecs = off_ns.rem_euclid(1_000_000_000);
    format!("{clock_id} {secs} {nsecs}\n")
}

/// Writes `msg` and `errno` to the pre-exec error pipe and exits; async-signal-safe.
fn child_fail(errfd: RawFd, msg: &'static [u8]) -> ! {
    let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let eb = e.to_le_bytes();
    // SAFETY: write(2) from live buffers, then _exit; no allocation.
    unsafe {
        libc::write(errfd, eb.as_ptr() as *const libc::c_void, 4);
        libc::write(errfd, msg.as_ptr() as *const libc::c_void, msg.len());
        libc::_exit(127);
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
                // SAFETY: kill(2) with integers: the half-restored program must not run.
                unsafe { libc::kill(host, libc::SIGKILL) };
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
        // SAFETY: kill(2) with integers: the half-restored program must not run.
        unsafe { libc::kill(host_pid, libc::SIGKILL) };
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

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = f.read(&mut buf[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// The epoch's metadata frames (no page runs) in a memory file, for the stub.
fn metadata_fd(plan: &Epoch) -> Result<OwnedFd, RestoreError> {
    let fd = sys::memfd("cs-epoch-meta").map_err(sys_err("memfd_create"))?;
    let mut f = File::from(fd);
    crate::image::encode_epoch(
        plan,
        None,
        &mut std::io::BufWriter::new(&mut f),
        &mut |_, _| {},
    )?;
    Ok(f.into())
}

/// Copies `pieces` of `pages` into the new process (whose VMAs the stub has
/// mapped writable), split across cores like the dump's copy.
fn fill_pages(
    pid: i32,
    pages: &dyn PageSource,
    pieces: &[lazy::Piece],
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
    .map_err(sys_err(
        "writing pages into the new process (process_vm_writev)",
    ))
}

/// Reads one report: the fixed header, then as many entries as it announces (the
/// stub does not close the pipe's other copies, so EOF cannot delimit it). `prefix`
/// are bytes of it already read.
fn read_report(mut f: File, prefix: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; restore_stub::report::HEADER_LEN];
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut got = prefix.len();
    while got < buf.len() {
        let n = f.read(&mut buf[got..])?;
        if n == 0 {
            buf.truncate(got);
            return Ok(buf);
        }
        got += n;
    }
    let n = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
    let n = n.min(restore_stub::MAX_THREADS);
    buf.resize(
        restore_stub::report::HEADER_LEN + n * restore_stub::report::ENTRY_LEN,
        0,
    );
    f.read_exact(&mut buf[got..])?;
    // Then wait for end-of-file: the stub closes the report fd right after writing,
    // and it must have done so before its threads are taken over (else the fd stays
    // open in the program). Every other write end is closed by now.
    let mut rest = Vec::new();
    f.read_to_end(&mut rest)?;
    Ok(buf)
}

fn read_preexec_error(err_r: OwnedFd) -> RestoreError {
    let mut buf = Vec::new();
    let _ = File::from(err_r).read_to_end(&mut buf);
    if buf.len() < 4 {
        return RestoreError::PreExec("the new process exited without a report".into());
    }
    let errno = i32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    RestoreError::PreExec(format!(
        "{}: {}",
        String::from_utf8_lossy(&buf[4..]),
        std::io::Error::from_raw_os_error(errno)
    ))
}

/// Everything the namespace init and the program's process use after the fork,
/// prepared before it (they may not allocate).
#[derive(Clone, Copy)]
struct ChildSetup<'a> {
    moves: &'a [FdMove],
    adds: &'a [EpollAdd],
    out_fd: Option<&'a OwnedFd>,
    err_fd: Option<&'a OwnedFd>,
    cwd: &'a CString,
    rlimits: &'a [(u32, libc::rlimit64)],
    argv: &'a [*const libc::c_char; 5],
    envp: &'a [*const libc::c_char; 1],
    /// Pre-exec error pipe.
    errw: RawFd,
    /// The program's executable, inherited for PR_SET_MM_MAP (-1 if none).
    exe_raw: RawFd,
    /// Control fds the init closes after creating the program's process.
    close_in_init: &'a [RawFd],
    /// Fd ranges the program's process closes before the exec.
    close_gaps: &'a [(u32, u32)],
    /// Read end of the `done` pipe (kept by the init only).
    done_r: RawFd,
    /// The program's umask.
    umask: libc::mode_t,
}

/// Code of the namespace init (B). Never returns.
fn init_main(set_tid: &[libc::pid_t; 1], setup: &ChildSetup<'_>) -> ! {
    let ChildSetup {
        moves,
        out_fd,
        err_fd,
        errw,
        close_in_init,
        done_r,
        ..
    } = *setup;
    // SAFETY: everything below is raw syscalls on data prepared before the fork.
    unsafe {
        let mut args: libc::clone_args = std::mem::zeroed();
        args.exit_signal = libc::SIGCHLD as u64;
        args.set_tid = set_tid.as_ptr() as u64;
        args.set_tid_size = 1;
        let c = libc::syscall(
            libc::SYS_clone3,
            &args as *const _,
            std::mem::size_of::<libc::clone_args>(),
        );
        if c < 0 {
            child_fail(errw, b"clone3 with set_tid (is the pid free?)");
        }
        if c == 0 {
            program_main(setup);
        }
        // Close everything we hold (the driver waits for EOF on some of these),
        // then reap until the program is gone.
        for m in moves {
            libc::close(m.tmp.as_raw_fd());
        }
        for &fd in close_in_init {
            libc::close(fd);
        }
        for f in [out_fd, err_fd].into_iter().flatten() {
            libc::close(f.as_raw_fd());
        }
        // The init needs no stdio; holding the driver's would keep its pipes open.
        for fd in 0..3 {
            libc::close(fd);
        }
        libc::close(errw);
        // Until the driver says every page is in, its death kills the program.
        let mut b = [0u8; 1];
        loop {
            let n = libc::read(done_r, b.as_mut_ptr() as *mut libc::c_void, 1);
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if n != 1 {
                libc::kill(c as libc::pid_t, libc::SIGKILL);
            }
            break;
        }
        libc::close(done_r);
        loop {
            let mut status = 0;
            let r = libc::waitpid(-1, &mut status, 0);
            if r < 0 && *libc::__errno_location() == libc::ECHILD {
                libc::_exit(0);
            }
            if r == c as i32 {
                if libc::WIFEXITED(status) {
                    libc::_exit(libc::WEXITSTATUS(status));
                }
                if libc::WIFSIGNALED(status) {
                    libc::_exit(128 + libc::WTERMSIG(status));
                }
            }
        }
    }
}

/// Code of the program's process (C) before the exec. Never returns.
///
/// # Safety
/// Call only in a freshly forked child: it replaces the fd table and execs.
unsafe fn program_main(setup: &ChildSetup<'_>) -> ! {
    let ChildSetup {
        moves,
        adds,
        out_fd,
        err_fd,
        cwd,
        rlimits,
        argv,
        envp,
        errw,
        exe_raw,
        close_gaps,
        umask,
        ..
    } = *setup;
    // SAFETY: raw syscalls only, on data prepared before the fork.
    unsafe {
        // Without O_CLOEXEC even where the program had it: the fds must survive the
        // exec of the stub, which sets FD_CLOEXEC back from the image's fd table.
        for m in moves {
            if libc::dup3(m.tmp.as_raw_fd(), m.target, 0) < 0 {
                child_fail(errw, b"dup3 of a prepared fd into place");
            }
        }
        for m in moves {
            libc::close(m.tmp.as_raw_fd());
        }
        if let Some(f) = out_fd {
            libc::dup2(f.as_raw_fd(), 1);
        }
        if let Some(f) = err_fd {
            libc::dup2(f.as_raw_fd(), 2);
        }
        for a in adds {
            let mut ev = libc::epoll_event {
                events: a.events,
                u64: a.data,
            };
            if libc::epoll_ctl(a.epfd, libc::EPOLL_CTL_ADD, a.tfd, &mut ev) < 0 {
                child_fail(errw, b"epoll_ctl(ADD) of a checkpointed registration");
            }
        }
        if libc::chdir(cwd.as_ptr()) < 0 {
            child_fail(errw, b"chdir to the checkpointed working directory");
        }
        libc::umask(umask);
        for (res, lim) in rlimits {
            // Hard limits cannot be raised here (no CAP_SYS_RESOURCE): keep ours if lower.
            let mut cur = libc::rlimit64 {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::prlimit64(
                0,
                *res as libc::__rlimit_resource_t,
                std::ptr::null(),
                &mut cur,
            );
            let want = libc::rlimit64 {
                rlim_cur: lim.rlim_cur.min(cur.rlim_max),
                rlim_max: cur.rlim_max,
            };
            libc::prlimit64(
                0,
                *res as libc::__rlimit_resource_t,
                &want,
                std::ptr::null_mut(),
            );
        }
        // Default dispositions and an empty mask: the stub installs the program's.
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // Nothing but the program's fds and the stub's reaches the exec.
        for &(lo, hi) in close_gaps {
            libc::syscall(libc::SYS_close_range, lo, hi, 0);
        }
        // The stub's two fds (and the executable's) must survive the exec.
        if exe_raw >= 0 {
            libc::fcntl(exe_raw, libc::F_SETFD, 0);
        }
        for a in [argv[1], argv[2], argv[3]] {
            let mut fd = 0i32;
            let mut p = a;
            while *p != 0 {
                fd = fd * 10 + (*p as u8 - b'0') as i32;
                p = p.add(1);
            }
            libc::fcntl(fd, libc::F_SETFD, 0);
        }
        libc::execve(argv[0], argv.as_ptr(), envp.as_ptr());
        child_fail(errw, b"exec of the restore stub");
    }
}

/// The program's pid in our namespace: the only child of the namespace init.
fn program_pid(init_pid: i32) -> Result<i32, RestoreError> {
    let path = format!("/proc/{init_pid}/task/{init_pid}/children");
    let s = std::fs::read_to_string(&path).map_err(sys_err(format!("reading {path}")))?;
    s.split_whitespace()
        .next()
        .and_then(|x| x.parse().ok())
        .ok_or_else(|| RestoreError::NoReport(format!("{path} lists no child")))
}

/// Steps every thread through `rt_sigreturn` at the stub's gadget, unmaps the stub
/// from the main thread, and lets the program run.
fn finish_threads(
    host_pid: i32,
    report: &Report<'_>,
    plan: &Epoch,
    exe_fd: Option<RawFd>,
) -> Result<(), CaptureError> {
    let tids = procfs::list_tids(host_pid)?;
    let mut by_inner = std::collections::HashMap::new();
    let mut seized = Vec::new();
    let release = |seized: &[i32]| {
        for &t in seized {
            let _ = sys::ptrace_detach(t, 0);
        }
    };
    for &t in &tids {
        let st = procfs::read_status_task(host_pid, t)?;
        by_inner.insert(*st.ns_pid.last().unwrap_or(&t), t);
        sys::ptrace_seize(t, sys::PTRACE_O_TRACESYSGOOD | sys::PTRACE_O_EXITKILL)
            .map_err(CaptureError::ptrace("SEIZE", t))?;
        seized.push(t);
        sys::ptrace_interrupt(t).map_err(CaptureError::ptrace("INTERRUPT", t))?;
        loop {
            match sys::waitpid(t, false).map_err(CaptureError::ptrace("waitpid", t))? {
                Some(WaitStatus::Stopped(_, _, sys::PTRACE_EVENT_STOP)) => break,
                Some(WaitStatus::Stopped(_, sig, _)) => {
                    sys::ptrace_cont(t, sig).map_err(CaptureError::ptrace("CONT", t))?;
                }
                other => {
                    return Err(CaptureError::UnexpectedStop {
                        tid: t,
                        phase: "restore finish",
                        detail: format!("{other:?}"),
                    })
                }
            }
        }
    }
    // Signals that arrive during the injected syscalls are held back until the
    // threads are released.
    let deferred = Deferred::default();
    let inj = Injector {
        pid: host_pid,
        gadget: report.gadget,
        deferred: deferred.clone(),
    };
    let mut main_regs = None;
    let mut stopped = Vec::new();
    for (i, (inner, rsp)) in report.threads().enumerate() {
        let t = *by_inner
            .get(&(inner as i32))
            .ok_or(CaptureError::UnexpectedStop {
                tid: inner as i32,
                phase: "restore finish",
                detail: "the stub reported a thread that does not exist".into(),
            })?;
        let mut r = sys::ptrace_getregs(t).map_err(CaptureError::ptrace("GETREGS", t))?;
        r.rax = 15; // rt_sigreturn
        r.rsp = rsp;
        let after = inj.step(t, &r)?;
        if i == 0 {
            main_regs = Some((t, after));
        }
        stopped.push(crate::capture::creds::Stopped {
            host_tid: t,
            tid: inner as i32,
            regs: after,
        });
    }
    let (main, regs) = main_regs.ok_or(CaptureError::ProcessGone { pid: host_pid })?;
    let len = report.stub_end - report.stub_start;
    let rc = inj.syscall(main, &regs, 11, [report.stub_start, len, 0, 0, 0, 0])?;
    if rc != 0 {
        release(&seized);
        return Err(CaptureError::Inject {
            tid: main,
            nr: 11,
            detail: format!("munmap of the stub: errno {}", -rc),
        });
    }
    if let Some(fd) = exe_fd {
        if let Err(e) = set_exe(host_pid, main, &regs, plan, fd, &deferred) {
            eprintln!("cs-driver: warning: /proc/{host_pid}/exe still names the restore stub: {e}");
        }
    }
    // After the steps that need privileges (they may be dropped here), before
    // the stop below (injected syscalls would take it).
    let vdso = plan
        .vmas
        .iter()
        .find(|v| v.kind == VmaKind::Vdso)
        .map(|v| (v.start, v.end));
    crate::capture::creds::apply(host_pid, &stopped, &plan.creds(), vdso, &deferred)?;
    if plan.process.stopped {
        // Queued while every thread is still traced: each one takes the stop on
        // its way back to user mode, before it runs an instruction.
        // SAFETY: kill(2) with integers.
        unsafe { libc::kill(host_pid, libc::SIGSTOP) };
    }
    release(&seized);
    deferred.redeliver(host_pid);
    Ok(())
}

/// Points `/proc/PID/exe` back at the program's executable: with the stub unmapped,
/// `PR_SET_MM_MAP` may change the exe file (it is refused with EBUSY while the old one
/// is still mapped). Runs in the main thread at a `syscall` of the restored vDSO,
/// with the `prctl_mm_map` and auxv in a scratch page; then closes the inherited fd.
fn set_exe(
    pid: i32,
    main: i32,
    regs: &sys::UserRegs,
    plan: &Epoch,
    fd: RawFd,
    deferred: &Deferred,
) -> Result<(), CaptureError> {
    let vdso = plan
        .vmas
        .iter()
        .find(|v| v.kind == VmaKind::Vdso)
        .map(|v| (v.start, v.end));
    let inj = Injector::new(pid, vdso, deferred)?;
    let fail = |nr: u64, what: &str, rc: i64| CaptureError::Inject {
        tid: main,
        nr,
        detail: format!("{what}: errno {}", -rc),
    };
    let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let scratch = inj.syscall(main, regs, 9, [0, 4096, prot, flags, u64::MAX, 0])?;
    if scratch < 0 {
        return Err(fail(9, "mmap", scratch));
    }
    let scratch = scratch as u64;
    let result = (|| {
        let auxv = &plan.process.auxv[..plan.process.auxv.len().min(2048)];
        let m = &plan.process.mm;
        let mut st = Vec::with_capacity(104 + auxv.len());
        for v in [
            m.start_code,
            m.end_code,
            m.start_data,
            m.end_data,
            m.start_brk,
            m.brk,
            m.start_stack,
            m.arg_start,
            m.arg_end,
            m.env_start,
            m.env_end,
            scratch + 128,
        ] {
            st.extend_from_slice(&v.to_le_bytes());
        }
        st.extend_from_slice(&(auxv.len() as u32).to_le_bytes());
        st.extend_from_slice(&(fd as u32).to_le_bytes());
        st.resize(128, 0);
        st.extend_from_slice(auxv);
        sys::write_remote(pid, scratch, &st).map_err(|source| CaptureError::Memory {
            pid,
            addr: scratch,
            len: st.len(),
            source,
        })?;
        let rc = inj.syscall(
            main,
            regs,
            157,
            [
                libc::PR_SET_MM as u64,
                libc::PR_SET_MM_MAP as u64,
                scratch,
                104,
                0,
                0,
            ],
        )?;
        if rc < 0 {
            return Err(fail(157, "prctl(PR_SET_MM_MAP, exe_fd)", rc));
        }
        Ok(())
    })();
    let _ = inj.syscall(main, regs, 3, [fd as u64, 0, 0, 0, 0, 0]);
    let _ = inj.syscall(main, regs, 11, [scratch, 4096, 0, 0, 0, 0]);
    result
}
