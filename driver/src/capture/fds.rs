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
                entries: info.epoll.clone(),
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
        } else if bracketed(&link, b"socket:[").is_some() {
            socket_kind(pidfd, fd, somaxconn).map_err(fderr)?
        } else if link.first() == Some(&b'/') && !link.ends_with(b" (deleted)") && is_regular(&link)
        {
            FdKind::Regular {
                path: link.clone(),
                offset: info.pos,
            }
        } else {
            FdKind::Other { what: link.clone() }
        };
        out.push(FdCapture {
            fd,
            cloexec: info.flags & O_CLOEXEC != 0,
            status_flags: info.flags & !O_CLOEXEC,
            kind,
        });
    }
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

fn socket_kind(pidfd: RawFd, fd: i32, somaxconn: u32) -> Result<FdKind, String> {
    let copy: OwnedFd = sys::pidfd_getfd(pidfd, fd).map_err(|e| format!("pidfd_getfd: {e}"))?;
    let s = copy.as_raw_fd();
    let domain = getsockopt_int(s, libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    let sock_type = getsockopt_int(s, libc::SOL_SOCKET, libc::SO_TYPE)?;
    let protocol = getsockopt_int(s, libc::SOL_SOCKET, libc::SO_PROTOCOL)?;
    let listening = getsockopt_int(s, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? != 0;
    match domain {
        libc::AF_INET | libc::AF_INET6 => {
            if sock_type != libc::SOCK_STREAM {
                return Ok(FdKind::Other {
                    what: format!("inet socket of type {sock_type}").into_bytes(),
                });
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
                    return Ok(FdKind::Other {
                        what: b"TCP listener with SO_REUSEPORT".to_vec(),
                    });
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
            if listening {
                Ok(FdKind::UnixListen { path, sock_type })
            } else {
                Ok(FdKind::UnixConnected { sock_type })
            }
        }
        d => Ok(FdKind::Other {
            what: format!("socket of domain {d}").into_bytes(),
        }),
    }
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
