//! Rebuilding the program's kernel objects in the driver, above every target fd
//! number: files at their offsets, pipes with their contents, eventfds, epoll sets,
//! listening and dead sockets. The program's process only `dup3`s them into place.

use super::*;

/// One prepared descriptor: `tmp` (ours, above every target number) goes to `target`.
#[derive(Debug)]
pub(super) struct FdMove {
    pub(super) tmp: OwnedFd,
    pub(super) target: i32,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct EpollAdd {
    pub(super) epfd: i32,
    pub(super) tfd: i32,
    pub(super) events: u32,
    pub(super) data: u64,
}

/// A close-on-exec pipe (read end, write end).
pub(super) fn pipe_cloexec(op: &str) -> Result<(OwnedFd, OwnedFd), RestoreError> {
    sys::pipe(false).map_err(sys_err(op))
}

/// Moves `fd` to a number >= `floor` (close-on-exec) and returns it.
pub(super) fn lift(fd: OwnedFd, floor: i32) -> Result<OwnedFd, RestoreError> {
    use nix::fcntl::{fcntl, FcntlArg};
    let n = fcntl(fd.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(floor))
        .map_err(|e| sys_err("fcntl(F_DUPFD_CLOEXEC)")(e.into()))?;
    Ok(sys::own_new_fd(n))
}

pub(super) fn set_status_flags(fd: RawFd, flags: u32) -> Result<(), RestoreError> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let settable =
        OFlag::O_APPEND | OFlag::O_NONBLOCK | OFlag::O_ASYNC | OFlag::O_DIRECT | OFlag::O_NOATIME;
    let want = OFlag::from_bits_truncate(flags as libc::c_int) & settable;
    fcntl(fd, FcntlArg::F_SETFL(want))
        .map(drop)
        .map_err(|e| sys_err("fcntl(F_SETFL)")(e.into()))
}

pub(super) fn sockaddr_for(
    family: SockFamily,
    addr: &[u8],
    port: u16,
) -> Result<nix::sys::socket::SockaddrStorage, String> {
    let ip: std::net::IpAddr = match family {
        SockFamily::Inet => <[u8; 4]>::try_from(addr)
            .map_err(|_| format!("IPv4 address of {} bytes", addr.len()))?
            .into(),
        SockFamily::Inet6 => <[u8; 16]>::try_from(addr)
            .map_err(|_| format!("IPv6 address of {} bytes", addr.len()))?
            .into(),
    };
    Ok(std::net::SocketAddr::new(ip, port).into())
}

/// A listening socket on the checkpointed address. A listener without SO_REUSEADDR
/// (Go sets it; raw `syscall.Socket` users may not) cannot bind while TIME_WAIT
/// connections of the dead original hold its port: those belong to the program's
/// previous life, so they are destroyed (`ss -K`, sock_diag SOCK_DESTROY) and the
/// bind is tried once more.
pub(super) fn listen_tcp_reclaiming(
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

pub(super) fn listen_tcp(
    family: SockFamily,
    mptcp: bool,
    addr: &[u8],
    port: u16,
    backlog: u32,
    reuseaddr: bool,
) -> Result<OwnedFd, (String, Option<i32>)> {
    use nix::sys::socket::{bind, listen, setsockopt, sockopt, Backlog};
    let errno = |e: nix::errno::Errno| Some(e as i32);
    let fd = sys::stream_socket(family == SockFamily::Inet6, mptcp).map_err(|e| {
        (
            format!("socket({}): {e}", if mptcp { "MPTCP" } else { "TCP" }),
            e.raw_os_error(),
        )
    })?;
    setsockopt(&fd, sockopt::ReuseAddr, &reuseaddr)
        .map_err(|e| (format!("SO_REUSEADDR: {e}"), errno(e)))?;
    let sa = sockaddr_for(family, addr, port).map_err(|e| (e, None))?;
    bind(fd.as_raw_fd(), &sa).map_err(|e| (format!("bind to port {port}: {e}"), errno(e)))?;
    let backlog = Backlog::new(backlog.min(i32::MAX as u32) as i32).unwrap_or(Backlog::MAXCONN);
    listen(&fd, backlog).map_err(|e| (format!("listen on port {port}: {e}"), errno(e)))?;
    Ok(fd)
}

pub(super) fn listen_unix(path: &[u8], sock_type: i32) -> Result<OwnedFd, String> {
    use nix::sys::socket::{
        bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
    };
    let ty = SockType::try_from(sock_type).map_err(|e| format!("socket type {sock_type}: {e}"))?;
    let fd = socket(AddressFamily::Unix, ty, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| format!("socket(AF_UNIX): {e}"))?;
    // The socket file of the original process: its mode and owner are the
    // program's (a dump refuses a listener whose file is gone), and it would make
    // bind fail.
    let mut old_file = None;
    let addr = match path.strip_prefix(&[0u8][..]) {
        Some(abstract_name) => UnixAddr::new_abstract(abstract_name),
        None => {
            let p = std::ffi::OsStr::from_bytes(path);
            old_file = std::fs::symlink_metadata(p).ok();
            let _ = std::fs::remove_file(p);
            UnixAddr::new(p)
        }
    }
    .map_err(|e| format!("unix socket address {}: {e}", String::from_utf8_lossy(path)))?;
    bind(fd.as_raw_fd(), &addr)
        .map_err(|e| format!("bind to {}: {e}", String::from_utf8_lossy(path)))?;
    if let Some(m) = old_file {
        super::closed::keep_mode_and_owner(path, &m)?;
    }
    listen(&fd, Backlog::new(4096).unwrap_or(Backlog::MAXCONN))
        .map_err(|e| format!("listen on {}: {e}", String::from_utf8_lossy(path)))?;
    Ok(fd)
}

/// Creates every fd object the program had, at numbers above all of its own.
pub(super) fn prepare_fds(
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
                use nix::fcntl::OFlag;
                let acc = f.status_flags & libc::O_ACCMODE as u32;
                let flags = OFlag::from_bits_truncate(
                    acc as i32 | (f.status_flags & libc::O_APPEND as u32) as i32,
                ) | OFlag::O_CLOEXEC;
                let p = std::ffi::OsStr::from_bytes(path);
                let fd = nix::fcntl::open(p, flags, nix::sys::stat::Mode::empty())
                    .map(sys::own_new_fd)
                    .map_err(|e| {
                        err(format!("reopening {}: {e}", String::from_utf8_lossy(path)))
                    })?;
                // Char devices may refuse a seek, which is fine.
                let _ = nix::unistd::lseek(
                    fd.as_raw_fd(),
                    *offset as i64,
                    nix::unistd::Whence::SeekSet,
                );
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
                        use nix::fcntl::{fcntl, FcntlArg};
                        let _ = fcntl(w.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(1 << 20));
                    }
                    if !contents.is_empty() {
                        let n = nix::unistd::write(&w, contents).unwrap_or(0);
                        if n != contents.len() {
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
                use nix::sys::eventfd::{EfdFlags, EventFd};
                let mut flags = EfdFlags::EFD_CLOEXEC;
                if *semaphore {
                    flags |= EfdFlags::EFD_SEMAPHORE;
                }
                let efd = EventFd::from_value_and_flags(0, flags)
                    .map_err(|e| sys_err("eventfd")(e.into()))?;
                if *count > 0 {
                    efd.write(*count)
                        .map_err(|e| sys_err("eventfd write")(e.into()))?;
                }
                OwnedFd::from(efd)
            }
            FdKind::Epoll { entries } => {
                use nix::sys::epoll::{Epoll, EpollCreateFlags};
                let fd = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
                    .map(|e| e.0)
                    .map_err(|e| sys_err("epoll_create1")(e.into()))?;
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
                super::closed::tcp(*family, *mptcp).map_err(err)?
            }
            FdKind::UnixConnected { sock_type } => super::closed::unix(*sock_type).map_err(err)?,
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
