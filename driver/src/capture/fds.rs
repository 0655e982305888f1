//! File descriptor capture: classify every fd of the target from `/proc/PID/fd` and
//! fdinfo, and pull sockets and pipes out with `pidfd_getfd` to query what fdinfo
//! does not say (socket family, protocol, addresses, listening state; pipe contents
//! via `tee`, which copies without consuming).

use std::ffi::OsStr;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use crate::error::CaptureError;
use crate::linux::procfs::{self, EpollEntry};
use crate::linux::sys;

/// A captured fd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdCapture {
    pub fd: i32,
    pub cloexec: bool,
    /// File status flags (O_NONBLOCK, O_APPEND, access mode, ...), without O_CLOEXEC.
    pub status_flags: u32,
    pub kind: FdKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockFamily {
    Inet,
    Inet6,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FdKind {
    /// fds 0-2: the restorer wires them to its own stdio (or to files named by flags).
    Stdio {
        path: Vec<u8>,
    },
    Regular {
        path: Vec<u8>,
        offset: u64,
    },
    Pipe {
        id: u64,
        write_end: bool,
        contents: Vec<u8>,
    },
    Eventfd {
        count: u64,
        semaphore: bool,
    },
    Epoll {
        entries: Vec<EpollEntry>,
    },
    TcpListen {
        family: SockFamily,
        mptcp: bool,
        addr: Vec<u8>,
        port: u16,
        backlog: u32,
        reuseaddr: bool,
    },
    UnixListen {
        path: Vec<u8>,
        sock_type: i32,
    },
    TcpConnected {
        family: SockFamily,
        mptcp: bool,
        local: (Vec<u8>, u16),
        peer: (Vec<u8>, u16),
    },
    UnixConnected {
        sock_type: i32,
    },
    Other {
        what: Vec<u8>,
    },
}

const IPPROTO_MPTCP: i32 = 262;
const O_CLOEXEC: u32 = libc::O_CLOEXEC as u32;

pub fn capture_fds(pid: i32, pidfd: RawFd) -> Result<Vec<FdCapture>, CaptureError> {
    let dir = format!("/proc/{pid}/fd");
    let rd = fs::read_dir(&dir).map_err(|e| CaptureError::ProcIo {
        path: dir.clone(),
        source: e,
    })?;
    let mut fds: Vec<i32> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    fds.sort_unstable();
    let somaxconn = fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096);
    let mut out = Vec::with_capacity(fds.len());
    for fd in fds {
        let link = fs::read_link(format!("{dir}/{fd}")).map_err(|e| CaptureError::ProcIo {
            path: format!("{dir}/{fd}"),
            source: e,
        })?;
        let link = link.as_os_str().as_bytes().to_vec();
        let info = procfs::read_fdinfo(pid, fd)?;
        let fderr = |detail: String| CaptureError::Fd { pid, fd, detail };
        let kind = if fd <= 2 {
            FdKind::Stdio { path: link.clone() }
        } else if link == b"anon_inode:[eventpoll]" {
            FdKind::Epoll {
                entries: live_epoll_entries(pid, fd, &info),
            }
        } else if link == b"anon_inode:[eventfd]" {
            FdKind::Eventfd {
                count: info
                    .eventfd_count
                    .ok_or_else(|| fderr("eventfd without eventfd-count".into()))?,
                semaphore: info.eventfd_semaphore,
            }
        } else if let Some(ino) = bracketed(&link, b"pipe:[") {
            let write_end = info.flags & 3 == libc::O_WRONLY as u32;
            let capacity = pipe_capacity(pidfd, fd).map_err(fderr)?;
            if capacity != DEFAULT_PIPE_CAPACITY {
                // Not carried in the image: restore makes pipes of the default size.
                FdKind::Other {
                    what: format!(
                        "pipe:[{ino}] with a capacity of {capacity} bytes set by F_SETPIPE_SZ \
                         (restore makes pipes of the default {DEFAULT_PIPE_CAPACITY})"
                    )
                    .into_bytes(),
                }
            } else {
                let contents = if write_end {
                    Vec::new()
                } else {
                    pipe_contents(pidfd, fd).map_err(fderr)?
                };
                FdKind::Pipe {
                    id: ino,
                    write_end,
                    contents,
                }
            }
        } else if bracketed(&link, b"socket:[").is_some() {
            socket_kind(pid, pidfd, fd, somaxconn).map_err(fderr)?
        } else if link.first() == Some(&b'/') && !link.ends_with(b" (deleted)") && is_regular(&link)
        {
            FdKind::Regular {
                path: link.clone(),
                offset: info.pos,
            }
        } else {
            FdKind::Other {
                what: describe_other(&link),
            }
        };
        out.push(FdCapture {
            fd,
            cloexec: info.flags & O_CLOEXEC != 0,
            status_flags: info.flags & !O_CLOEXEC,
            kind,
        });
    }
    both_ends_inside(&mut out);
    // A pipe's contents belong to the pipe: keep them on one read end only.
    let mut seen = std::collections::HashSet::new();
    for f in &mut out {
        if let FdKind::Pipe {
            id,
            contents,
            write_end: false,
        } = &mut f.kind
        {
            if !seen.insert(*id) {
                contents.clear();
            }
        }
    }
    Ok(out)
}

/// Files the restorer can reopen by path: regular files and character devices
/// (`/dev/null`, `/dev/urandom`, ...).
fn is_regular(path: &[u8]) -> bool {
    use std::os::unix::fs::FileTypeExt;
    fs::metadata(OsStr::from_bytes(path))
        .map(|m| m.is_file() || m.file_type().is_char_device())
        .unwrap_or(false)
}

fn bracketed(link: &[u8], prefix: &[u8]) -> Option<u64> {
    let rest = link.strip_prefix(prefix)?.strip_suffix(b"]")?;
    std::str::from_utf8(rest).ok()?.parse().ok()
}

fn getsockopt_int(fd: RawFd, level: i32, opt: i32) -> Result<i32, String> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are live locals sized for an int option.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            opt,
            &mut v as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if rc < 0 {
        return Err(format!(
            "getsockopt({level}, {opt}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(v)
}

fn sockaddr(fd: RawFd, peer: bool) -> Result<(Vec<u8>, u16, Vec<u8>), String> {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = &mut ss as *mut _ as *mut libc::sockaddr;
    // SAFETY: `ss` is large enough for any address; `len` says how large.
    let rc = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    if rc < 0 {
        return Err(format!(
            "get{}name: {}",
            if peer { "peer" } else { "sock" },
            std::io::Error::last_os_error()
        ));
    }
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: &libc::sockaddr_in = unsafe { &*(p as *const libc::sockaddr_in) };
            Ok((
                sin.sin_addr.s_addr.to_ne_bytes().to_vec(),
                u16::from_be(sin.sin_port),
                Vec::new(),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 = unsafe { &*(p as *const libc::sockaddr_in6) };
            Ok((
                sin6.sin6_addr.s6_addr.to_vec(),
                u16::from_be(sin6.sin6_port),
                Vec::new(),
            ))
        }
        libc::AF_UNIX => {
            // SAFETY: the family says the storage holds a sockaddr_un of `len` bytes.
            let sun: &libc::sockaddr_un = unsafe { &*(p as *const libc::sockaddr_un) };
            let n = (len as usize).saturating_sub(2).min(sun.sun_path.len());
            let path: Vec<u8> = sun.sun_path[..n].iter().map(|c| *c as u8).collect();
            // Trim a trailing NUL of a pathname socket (abstract ones start with NUL).
            let path = if path.first() != Some(&0) {
                path.split(|c| *c == 0).next().unwrap_or(&[]).to_vec()
            } else {
                path
            };
            Ok((Vec::new(), 0, path))
        }
        f => Err(format!("unsupported address family {f}")),
    }
}

fn socket_kind(pid: i32, pidfd: RawFd, fd: i32, somaxconn: u32) -> Result<FdKind, String> {
    let copy: OwnedFd = sys::pidfd_getfd(pidfd, fd).map_err(|e| format!("pidfd_getfd: {e}"))?;
    let s = copy.as_raw_fd();
    let domain = getsockopt_int(s, libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    let sock_type = getsockopt_int(s, libc::SOL_SOCKET, libc::SO_TYPE)?;
    let protocol = getsockopt_int(s, libc::SOL_SOCKET, libc::SO_PROTOCOL)?;
    let listening = getsockopt_int(s, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? != 0;
    let other = |what: String| {
        Ok(FdKind::Other {
            what: what.into_bytes(),
        })
    };
    match domain {
        libc::AF_INET | libc::AF_INET6 => {
            if sock_type != libc::SOCK_STREAM {
                return other(format!("inet socket of type {sock_type}"));
            }
            let family = if domain == libc::AF_INET {
                SockFamily::Inet
            } else {
                SockFamily::Inet6
            };
            let mptcp = protocol == IPPROTO_MPTCP;
            let (addr, port, _) = sockaddr(s, false)?;
            if listening {
                let reuseaddr = getsockopt_int(s, libc::SOL_SOCKET, libc::SO_REUSEADDR)? != 0;
                // Not carried in the image yet: refused rather than restored without
                // it (a server that rebinds on reload would then fail every reload).
                if getsockopt_int(s, libc::SOL_SOCKET, libc::SO_REUSEPORT)? != 0 {
                    return other("TCP listener with SO_REUSEPORT".into());
                }
                // Binding a specific IPv6 address sets IPV6_V6ONLY by itself (and so
                // does restore's bind); only a wildcard listener's is the program's.
                let skip: &[&str] = if addr.iter().any(|b| *b != 0) {
                    &["IPV6_V6ONLY"]
                } else {
                    &[]
                };
                let changed = changed_options(s, domain, sock_type, protocol, skip)?;
                if !changed.is_empty() {
                    return other(format!(
                        "TCP listener with socket options restore does not set yet (accepted \
                         connections inherit them): {}",
                        changed.join(", ")
                    ));
                }
                Ok(FdKind::TcpListen {
                    family,
                    mptcp,
                    addr,
                    port,
                    backlog: somaxconn,
                    reuseaddr,
                })
            } else {
                let peer = sockaddr(s, true)
                    .map(|(a, p, _)| (a, p))
                    .unwrap_or((Vec::new(), 0));
                Ok(FdKind::TcpConnected {
                    family,
                    mptcp,
                    local: (addr, port),
                    peer,
                })
            }
        }
        libc::AF_UNIX => {
            let (_, _, path) = sockaddr(s, false)?;
            let named = if path.is_empty() {
                String::new()
            } else {
                format!(
                    " bound to {}",
                    String::from_utf8_lossy(&path).replace('\0', "@")
                )
            };
            if sock_type == libc::SOCK_DGRAM {
                // Neither its bound name, its connection nor its queued datagrams
                // are carried.
                return other(format!("unix datagram socket{named}"));
            }
            if listening {
                if let Some(why) = unix_path_problem(&path) {
                    return other(format!("unix listener{named}: {why}"));
                }
                let changed = changed_options(s, domain, sock_type, protocol, &[])?;
                if !changed.is_empty() {
                    return other(format!(
                        "unix listener{named} with socket options restore does not set yet: {}",
                        changed.join(", ")
                    ));
                }
                return Ok(FdKind::UnixListen { path, sock_type });
            }
            if sockaddr(s, true).is_err() {
                return other(format!(
                    "unix socket{named} that is neither listening nor connected"
                ));
            }
            // The peer's credentials are those of the process that made the other
            // end (socketpair, connect or listen): this program means both ends are
            // its own, and a restore would break a channel nobody outside can mend.
            if peer_pid(s)? == pid {
                return other(format!(
                    "unix socket{named} connected to another socket of the program (socketpair \
                     or a connection to itself): both ends are the program's, and restore \
                     would break the pair"
                ));
            }
            Ok(FdKind::UnixConnected { sock_type })
        }
        d => other(format!("socket of domain {d}")),
    }
}

/// Why a listening unix socket's name would not come back as it is, if so: a
/// relative path is resolved against the restorer's directory, and a socket
/// file the program removed (or replaced) would be recreated.
fn unix_path_problem(path: &[u8]) -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    match path.first() {
        None => Some("not bound to a name".into()),
        Some(0) => None,
        Some(b'/') => match fs::symlink_metadata(OsStr::from_bytes(path)) {
            Ok(m) if m.file_type().is_socket() => None,
            Ok(_) => Some("its path is no longer a socket file".into()),
            Err(e) => Some(format!("its socket file is gone ({e})")),
        },
        Some(_) => Some("bound to a relative path".into()),
    }
}

/// The pid (in the driver's namespace) of the process that made a unix
/// socket's peer (`SO_PEERCRED`).
fn peer_pid(s: RawFd) -> Result<i32, String> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are live locals sized for a ucred.
    let rc = unsafe {
        libc::getsockopt(
            s,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if rc < 0 {
        return Err(format!(
            "getsockopt(SO_PEERCRED): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(cred.pid)
}

/// Options a program may set on a listening socket, which restore does not set
/// (it makes a fresh socket with SO_REUSEADDR only), compared against a fresh
/// socket of the same domain, type and protocol made here: (level, option, name).
const LISTENER_OPTIONS: &[(i32, i32, &str)] = &[
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE, "SO_KEEPALIVE"),
    (libc::SOL_SOCKET, libc::SO_LINGER, "SO_LINGER"),
    (libc::SOL_SOCKET, libc::SO_PRIORITY, "SO_PRIORITY"),
    (libc::SOL_SOCKET, libc::SO_RCVBUF, "SO_RCVBUF"),
    (libc::SOL_SOCKET, libc::SO_SNDBUF, "SO_SNDBUF"),
    (libc::SOL_SOCKET, libc::SO_RCVLOWAT, "SO_RCVLOWAT"),
    (libc::SOL_SOCKET, libc::SO_RCVTIMEO, "SO_RCVTIMEO"),
    (libc::SOL_SOCKET, libc::SO_SNDTIMEO, "SO_SNDTIMEO"),
    (libc::SOL_SOCKET, libc::SO_BINDTODEVICE, "SO_BINDTODEVICE"),
    (libc::SOL_SOCKET, libc::SO_MARK, "SO_MARK"),
    (libc::SOL_SOCKET, libc::SO_OOBINLINE, "SO_OOBINLINE"),
    (libc::SOL_SOCKET, libc::SO_BROADCAST, "SO_BROADCAST"),
    (libc::SOL_SOCKET, libc::SO_DONTROUTE, "SO_DONTROUTE"),
    (libc::SOL_SOCKET, libc::SO_PASSCRED, "SO_PASSCRED"),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMP, "SO_TIMESTAMP"),
    (libc::SOL_SOCKET, libc::SO_BUSY_POLL, "SO_BUSY_POLL"),
    (libc::IPPROTO_TCP, libc::TCP_NODELAY, "TCP_NODELAY"),
    (libc::IPPROTO_TCP, libc::TCP_MAXSEG, "TCP_MAXSEG"),
    (libc::IPPROTO_TCP, libc::TCP_CORK, "TCP_CORK"),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, "TCP_KEEPIDLE"),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, "TCP_KEEPINTVL"),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, "TCP_KEEPCNT"),
    (libc::IPPROTO_TCP, libc::TCP_SYNCNT, "TCP_SYNCNT"),
    (libc::IPPROTO_TCP, libc::TCP_LINGER2, "TCP_LINGER2"),
    (
        libc::IPPROTO_TCP,
        libc::TCP_DEFER_ACCEPT,
        "TCP_DEFER_ACCEPT",
    ),
    (
        libc::IPPROTO_TCP,
        libc::TCP_WINDOW_CLAMP,
        "TCP_WINDOW_CLAMP",
    ),
    (libc::IPPROTO_TCP, libc::TCP_CONGESTION, "TCP_CONGESTION"),
    (
        libc::IPPROTO_TCP,
        libc::TCP_USER_TIMEOUT,
        "TCP_USER_TIMEOUT",
    ),
    (libc::IPPROTO_TCP, libc::TCP_FASTOPEN, "TCP_FASTOPEN"),
    (
        libc::IPPROTO_TCP,
        libc::TCP_NOTSENT_LOWAT,
        "TCP_NOTSENT_LOWAT",
    ),
    (libc::IPPROTO_IP, libc::IP_TOS, "IP_TOS"),
    (libc::IPPROTO_IP, libc::IP_TTL, "IP_TTL"),
    (libc::IPPROTO_IP, libc::IP_FREEBIND, "IP_FREEBIND"),
    (libc::IPPROTO_IP, libc::IP_TRANSPARENT, "IP_TRANSPARENT"),
    (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, "IPV6_V6ONLY"),
    (libc::IPPROTO_IPV6, libc::IPV6_TCLASS, "IPV6_TCLASS"),
    (
        libc::IPPROTO_IPV6,
        libc::IPV6_UNICAST_HOPS,
        "IPV6_UNICAST_HOPS",
    ),
];

/// An option's raw value, or `None` where the socket does not have it.
fn getsockopt_bytes(fd: RawFd, level: i32, opt: i32) -> Option<Vec<u8>> {
    let mut buf = [0u8; 64];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `buf` is a live 64-byte buffer and `len` says so.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            opt,
            buf.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0).then(|| buf[..(len as usize).min(buf.len())].to_vec())
}

/// The names of the [`LISTENER_OPTIONS`] in which `s` differs from a fresh socket.
fn changed_options(
    s: RawFd,
    domain: i32,
    ty: i32,
    protocol: i32,
    skip: &[&str],
) -> Result<Vec<&'static str>, String> {
    // SAFETY: socket(2) with integer arguments.
    let fresh = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) };
    if fresh < 0 {
        return Err(format!(
            "socket({domain}, {ty}, {protocol}) to compare options with: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: socket(2) just returned this fd; nobody else owns it.
    let fresh = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fresh) };
    let applies = |level: i32| match level {
        libc::IPPROTO_TCP => domain != libc::AF_UNIX && ty == libc::SOCK_STREAM,
        libc::IPPROTO_IP => domain == libc::AF_INET,
        libc::IPPROTO_IPV6 => domain == libc::AF_INET6,
        _ => true,
    };
    Ok(LISTENER_OPTIONS
        .iter()
        .filter(|(level, _, name)| applies(*level) && !skip.contains(name))
        .filter(|(level, opt, _)| {
            getsockopt_bytes(s, *level, *opt) != getsockopt_bytes(fresh.as_raw_fd(), *level, *opt)
        })
        .map(|(_, _, name)| *name)
        .collect())
}

/// TCP connections between two fds of the program: restore would break both
/// ends of a channel nobody outside can mend (connections to outside peers break
/// by design, docs/conformance.md). Both are marked unrestorable.
fn both_ends_inside(fds: &mut [FdCapture]) {
    type End = (Vec<u8>, u16);
    let ends: Vec<(i32, End, End)> = fds
        .iter()
        .filter_map(|f| match &f.kind {
            FdKind::TcpConnected { local, peer, .. } if peer.1 != 0 => {
                Some((f.fd, local.clone(), peer.clone()))
            }
            _ => None,
        })
        .collect();
    for f in fds.iter_mut() {
        let FdKind::TcpConnected { local, peer, .. } = &f.kind else {
            continue;
        };
        if let Some((other, _, _)) = ends
            .iter()
            .find(|(fd, l, p)| *fd != f.fd && l == peer && p == local)
        {
            f.kind = FdKind::Other {
                what: format!(
                    "TCP connection with both ends in the program (fds {} and {other}): \
                     restore would break it",
                    f.fd
                )
                .into_bytes(),
            };
        }
    }
}

/// What a pipe holds by default: 16 pages.
const DEFAULT_PIPE_CAPACITY: i32 = 16 * 4096;

/// `F_GETPIPE_SZ` of the program's pipe fd.
fn pipe_capacity(pidfd: RawFd, fd: i32) -> Result<i32, String> {
    let copy = sys::pidfd_getfd(pidfd, fd).map_err(|e| format!("pidfd_getfd: {e}"))?;
    // SAFETY: fcntl with integer arguments.
    let n = unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if n < 0 {
        return Err(format!(
            "fcntl(F_GETPIPE_SZ): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(n)
}

/// An fd restore cannot reopen, named by its link and what it is.
fn describe_other(link: &[u8]) -> Vec<u8> {
    use std::os::unix::fs::FileTypeExt;
    let mut what = link.to_vec();
    let kind = if link.starts_with(b"/memfd:") {
        Some("a memfd")
    } else if link.ends_with(b" (deleted)") {
        Some("a file deleted while open")
    } else if link.first() == Some(&b'/') {
        fs::metadata(OsStr::from_bytes(link)).ok().map(|m| {
            let t = m.file_type();
            if t.is_dir() {
                "a directory"
            } else if t.is_fifo() {
                "a FIFO"
            } else if t.is_socket() {
                "a socket file"
            } else if t.is_block_device() {
                "a block device"
            } else {
                "a file restore cannot reopen"
            }
        })
    } else {
        // anon_inode:[timerfd], anon_inode:inotify, anon_inode:[pidfd], ... name
        // themselves.
        None
    };
    if let Some(k) = kind {
        what.extend_from_slice(format!(" ({k})").as_bytes());
    }
    what
}

/// Copies the bytes buffered in a pipe without consuming them (`tee` into a scratch pipe).
fn pipe_contents(pidfd: RawFd, fd: i32) -> Result<Vec<u8>, String> {
    let copy = sys::pidfd_getfd(pidfd, fd).map_err(|e| format!("pidfd_getfd: {e}"))?;
    let (r, w) = sys::pipe(true).map_err(|e| format!("pipe2: {e}"))?;
    // Room for a whole default pipe buffer and more.
    // SAFETY: fcntl with integer arguments.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    // SAFETY: tee takes fds, a length and flags; no memory.
    let n = unsafe {
        libc::tee(
            copy.as_raw_fd(),
            w.as_raw_fd(),
            1 << 20,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EAGAIN) {
            return Ok(Vec::new());
        }
        return Err(format!("tee: {e}"));
    }
    let mut buf = vec![0u8; n as usize];
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: reading into the unfilled tail of `buf`.
        let got = unsafe {
            libc::read(
                r.as_raw_fd(),
                buf[done..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - done,
            )
        };
        if got <= 0 {
            return Err(format!(
                "reading teed pipe data: {}",
                std::io::Error::last_os_error()
            ));
        }
        done += got as usize;
    }
    Ok(buf)
}

/// The inode numbers the program's fds refer to now.
pub(crate) fn held_inodes(pid: i32) -> std::collections::HashSet<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| std::fs::metadata(e.path()).ok().map(|m| m.ino()))
                .collect()
        })
        .unwrap_or_default()
}

/// An epoll set's registrations without those whose file no fd of the program
/// refers to any more. Such a registration outlives its fd only while something
/// else still holds the file (the kernel drops it with the file's last
/// reference; seen in a Go kvstore under load, a closed connection's socket for a
/// moment after its `close`): the program cannot reach that file again, and the
/// kernel is about to drop the registration. A registration whose file is held
/// at another fd (dup'ed, then closed) is kept, and refused at dump
/// (`refuse::fd_relations`).
fn live_epoll_entries(pid: i32, fd: i32, info: &procfs::FdInfo) -> Vec<EpollEntry> {
    use std::os::unix::fs::MetadataExt;
    let (entries, inodes) = (&info.epoll, &info.epoll_inodes);
    if inodes.len() != entries.len() {
        return entries.clone();
    }
    // The usual case costs one stat per registration: its fd still names its file.
    // Only a mismatch reads the whole fd table.
    let mut held: Option<std::collections::HashSet<u64>> = None;
    entries
        .iter()
        .zip(inodes)
        .filter(|(e, ino)| {
            let Some(ino) = **ino else { return true };
            let now = std::fs::metadata(format!("/proc/{pid}/fd/{}", e.tfd)).map(|m| m.ino());
            if now.ok() == Some(ino) {
                return true;
            }
            let keep = held.get_or_insert_with(|| held_inodes(pid)).contains(&ino);
            if !keep {
                tracing::debug!(
                    pid,
                    epoll = fd,
                    tfd = e.tfd,
                    "an epoll registration whose file no fd holds any more is left out"
                );
            }
            keep
        })
        .map(|(e, _)| *e)
        .collect()
}
