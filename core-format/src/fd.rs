//! `FdTable`: the open file descriptors, one frame holding a table of [`Fd`] entries.
//!
//! Payload: `count: u32`, then `count` entries:
//!
//! | off | size | field |
//! |---|---|---|
//! | 0 | 4 | fd (i32, ≥ 0) |
//! | 4 | 4 | fd flags (u32, [`FdFlags`]) |
//! | 8 | 4 | file status flags (u32, `O_*` as `F_GETFL` returns them) |
//! | 12 | 4 | kind (u32, tag of [`FdKind`]) |
//! | 16 | 4 | body length (u32) |
//! | 20 | n | body, by kind (see `docs/format.md`) |
//!
//! Every body is consumed exactly; a socket address is `family u8` (1 = IPv4,
//! 2 = IPv6), `port u16`, then 4 address bytes, or 16 address bytes, flowinfo u32 and
//! scope id u32. `Other` is parsable (so `inspect` can show it) but the validator
//! refuses it: the restorer cannot recreate it.

use core::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use static_assertions::const_assert_eq;

use crate::error::Error;
use crate::process::MAX_PATH_BYTES;
use crate::table::{Table, TableEntry};
use crate::wire::{check_cap, emit_all, parse_all, Reader, Writer};

/// Length of an fd entry's fixed part.
pub const FD_ENTRY_FIXED_LEN: usize = 20;
/// Length of one epoll registration.
pub const EPOLL_ENTRY_LEN: usize = 16;
const_assert_eq!(EPOLL_ENTRY_LEN, 4 + 4 + 8);
/// Most bytes buffered in a pipe that a checkpoint carries (1 MiB, the default pipe-max-size).
pub const MAX_PIPE_BUFFER_BYTES: usize = 1 << 20;
/// Longest unix socket path (`sun_path`).
pub const MAX_UNIX_PATH_BYTES: usize = 108;
/// Longest description of an `Other` fd.
pub const MAX_OTHER_DESCRIPTION_BYTES: usize = 4096;
/// Most fds in one table (Linux's `fs.nr_open` ceiling).
pub const MAX_FDS_PER_TABLE: u32 = 1 << 20;
/// Most registrations in one epoll entry.
pub const MAX_EPOLL_REGISTRATIONS: u32 = 1 << 20;

/// fd flags (`F_GETFD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FdFlags(u32);

impl FdFlags {
    /// No flags.
    pub const EMPTY: FdFlags = FdFlags(0);
    /// FD_CLOEXEC.
    pub const CLOEXEC: FdFlags = FdFlags(1);

    /// The bits, refusing undefined ones.
    pub fn from_bits(bits: u32) -> Result<Self, Error> {
        if bits & !1 != 0 {
            return Err(Error::RecordUnknownBits {
                field: "fd.fd_flags",
                value: u64::from(bits),
            });
        }
        Ok(FdFlags(bits))
    }
    /// The raw bits.
    pub fn bits(self) -> u32 {
        self.0
    }
}

/// Which end of a pipe. 0 is reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum PipeEnd {
    /// The read end.
    Read = 1,
    /// The write end.
    Write = 2,
}

/// Transport of an inet socket. 0 is reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum InetProtocol {
    /// IPPROTO_TCP.
    Tcp = 1,
    /// IPPROTO_MPTCP.
    Mptcp = 2,
}

/// Type of a unix socket. 0 is reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum UnixType {
    /// SOCK_STREAM.
    Stream = 1,
    /// SOCK_DGRAM.
    Dgram = 2,
    /// SOCK_SEQPACKET.
    SeqPacket = 3,
}

/// One epoll registration (`epoll_ctl(EPOLL_CTL_ADD, tfd, {events, data})`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EpollRegistration {
    /// Target fd (≥ 0).
    pub tfd: i32,
    /// Event mask.
    pub events: u32,
    /// User data.
    pub data: u64,
}

impl<'a> TableEntry<'a> for EpollRegistration {
    fn parse_entry(bytes: &'a [u8]) -> Result<(Self, usize), Error> {
        let mut r = Reader::new(bytes);
        let reg = EpollRegistration {
            tfd: r.i32()?,
            events: r.u32()?,
            data: r.u64()?,
        };
        check_fd("epoll.tfd", reg.tfd)?;
        Ok((reg, EPOLL_ENTRY_LEN))
    }
    fn entry_len(&self) -> usize {
        EPOLL_ENTRY_LEN
    }
    fn emit_entry(&self, out: &mut [u8]) -> Result<usize, Error> {
        check_fd("epoll.tfd", self.tfd)?;
        emit_all(out, EPOLL_ENTRY_LEN, |w| {
            w.i32(self.tfd);
            w.u32(self.events);
            w.u64(self.data);
            Ok(())
        })
    }
}

/// What an fd refers to, with what is needed to recreate it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind<'a> {
    /// A regular file (or directory) opened by path.
    RegularFile {
        /// Path.
        path: &'a [u8],
        /// File offset.
        offset: u64,
        /// `st_mode`.
        mode: u32,
    },
    /// One end of a pipe.
    Pipe {
        /// Pipe inode number: both ends of one pipe share it.
        pipe_id: u64,
        /// Which end.
        end: PipeEnd,
        /// Bytes buffered in the pipe (≤ 1 MiB; carried by one end only).
        buffered: &'a [u8],
    },
    /// An eventfd.
    Eventfd {
        /// Counter value.
        count: u64,
        /// EFD_SEMAPHORE.
        semaphore: bool,
    },
    /// An epoll instance with its registrations.
    Epoll {
        /// Registrations.
        registrations: Table<'a, EpollRegistration>,
    },
    /// A listening TCP or MPTCP socket.
    TcpListen {
        /// Bound address.
        addr: SocketAddr,
        /// TCP or MPTCP.
        protocol: InetProtocol,
        /// `listen` backlog.
        backlog: u32,
        /// SO_REUSEADDR.
        reuseaddr: bool,
    },
    /// A listening unix socket.
    UnixListen {
        /// Bound path; a leading 0 byte means an abstract name.
        path: &'a [u8],
        /// Socket type.
        socket_type: UnixType,
        /// `listen` backlog.
        backlog: u32,
    },
    /// A connected TCP or MPTCP socket.
    TcpConnected {
        /// Local address.
        local: SocketAddr,
        /// Peer address (same family).
        peer: SocketAddr,
        /// TCP or MPTCP.
        protocol: InetProtocol,
    },
    /// A connected unix socket.
    UnixConnected {
        /// Socket type.
        socket_type: UnixType,
        /// Local bound path (may be empty).
        path: &'a [u8],
        /// Peer path (may be empty).
        peer_path: &'a [u8],
    },
    /// A terminal (stdio).
    Tty {
        /// Its path.
        path: &'a [u8],
    },
    /// Anything else: shown by `inspect`, refused by the validator and the restorer.
    Other {
        /// What it is (e.g. the `/proc/PID/fd` link target).
        description: &'a [u8],
    },
}

impl FdKind<'_> {
    /// The wire tag.
    pub fn tag(&self) -> u32 {
        match self {
            FdKind::RegularFile { .. } => 1,
            FdKind::Pipe { .. } => 2,
            FdKind::Eventfd { .. } => 3,
            FdKind::Epoll { .. } => 4,
            FdKind::TcpListen { .. } => 5,
            FdKind::UnixListen { .. } => 6,
            FdKind::TcpConnected { .. } => 7,
            FdKind::UnixConnected { .. } => 8,
            FdKind::Tty { .. } => 9,
            FdKind::Other { .. } => 10,
        }
    }
}

/// One open file descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fd<'a> {
    /// The fd number (≥ 0).
    pub fd: i32,
    /// fd flags.
    pub fd_flags: FdFlags,
    /// File status flags (`O_*`).
    pub status_flags: u32,
    /// What it is.
    pub kind: FdKind<'a>,
}

fn check_fd(field: &'static str, fd: i32) -> Result<(), Error> {
    if fd < 0 {
        return Err(Error::RecordBadValue {
            field,
            value: fd as u32 as u64,
        });
    }
    Ok(())
}

fn read_sockaddr(r: &mut Reader<'_>) -> Result<SocketAddr, Error> {
    let family = r.u8()?;
    let port = r.u16()?;
    match family {
        1 => Ok(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(r.array::<4>()?),
            port,
        ))),
        2 => {
            let ip = Ipv6Addr::from(r.array::<16>()?);
            let flowinfo = r.u32()?;
            let scope_id = r.u32()?;
            Ok(SocketAddr::V6(SocketAddrV6::new(
                ip, port, flowinfo, scope_id,
            )))
        }
        v => Err(Error::RecordBadTag {
            field: "sockaddr.family",
            value: u32::from(v),
        }),
    }
}

fn sockaddr_len(a: &SocketAddr) -> usize {
    match a {
        SocketAddr::V4(_) => 3 + 4,
        SocketAddr::V6(_) => 3 + 16 + 8,
    }
}

fn write_sockaddr(w: &mut Writer<'_>, a: &SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            w.u8(1);
            w.u16(v4.port());
            w.bytes(&v4.ip().octets());
        }
        SocketAddr::V6(v6) => {
            w.u8(2);
            w.u16(v6.port());
            w.bytes(&v6.ip().octets());
            w.u32(v6.flowinfo());
            w.u32(v6.scope_id());
        }
    }
}

fn read_protocol(r: &mut Reader<'_>) -> Result<InetProtocol, Error> {
    match r.u8()? {
        1 => Ok(InetProtocol::Tcp),
        2 => Ok(InetProtocol::Mptcp),
        v => Err(Error::RecordBadTag {
            field: "socket.protocol",
            value: u32::from(v),
        }),
    }
}

fn read_unix_type(r: &mut Reader<'_>) -> Result<UnixType, Error> {
    match r.u32()? {
        1 => Ok(UnixType::Stream),
        2 => Ok(UnixType::Dgram),
        3 => Ok(UnixType::SeqPacket),
        v => Err(Error::RecordBadTag {
            field: "unix.socket_type",
            value: v,
        }),
    }
}

impl<'a> FdKind<'a> {
    fn read(tag: u32, r: &mut Reader<'a>) -> Result<Self, Error> {
        Ok(match tag {
            1 => FdKind::RegularFile {
                offset: r.u64()?,
                mode: r.u32()?,
                path: r.len_prefixed("file.path", MAX_PATH_BYTES)?,
            },
            2 => FdKind::Pipe {
                pipe_id: r.u64()?,
                end: match r.u32()? {
                    1 => PipeEnd::Read,
                    2 => PipeEnd::Write,
                    v => {
                        return Err(Error::RecordBadTag {
                            field: "pipe.end",
                            value: v,
                        })
                    }
                },
                buffered: r.len_prefixed("pipe.buffered", MAX_PIPE_BUFFER_BYTES)?,
            },
            3 => FdKind::Eventfd {
                count: r.u64()?,
                semaphore: r.bool("eventfd.semaphore")?,
            },
            4 => FdKind::Epoll {
                registrations: Table::parse(r, "epoll registrations", MAX_EPOLL_REGISTRATIONS)?,
            },
            5 => {
                let protocol = read_protocol(r)?;
                let reuseaddr = r.bool("tcp_listen.reuseaddr")?;
                let backlog = r.u32()?;
                let addr = read_sockaddr(r)?;
                FdKind::TcpListen {
                    addr,
                    protocol,
                    backlog,
                    reuseaddr,
                }
            }
            6 => FdKind::UnixListen {
                socket_type: read_unix_type(r)?,
                backlog: r.u32()?,
                path: r.len_prefixed("unix.path", MAX_UNIX_PATH_BYTES)?,
            },
            7 => {
                let protocol = read_protocol(r)?;
                let local = read_sockaddr(r)?;
                let peer = read_sockaddr(r)?;
                let kind = FdKind::TcpConnected {
                    local,
                    peer,
                    protocol,
                };
                kind.check()?;
                kind
            }
            8 => FdKind::UnixConnected {
                socket_type: read_unix_type(r)?,
                path: r.len_prefixed("unix.path", MAX_UNIX_PATH_BYTES)?,
                peer_path: r.len_prefixed("unix.peer_path", MAX_UNIX_PATH_BYTES)?,
            },
            9 => FdKind::Tty {
                path: r.len_prefixed("tty.path", MAX_PATH_BYTES)?,
            },
            10 => FdKind::Other {
                description: r.len_prefixed("other.description", MAX_OTHER_DESCRIPTION_BYTES)?,
            },
            v => {
                return Err(Error::RecordBadTag {
                    field: "fd.kind",
                    value: v,
                })
            }
        })
    }

    fn check(&self) -> Result<(), Error> {
        match self {
            FdKind::RegularFile { path, .. } => check_cap("file.path", path.len(), MAX_PATH_BYTES),
            FdKind::Pipe { buffered, .. } => {
                check_cap("pipe.buffered", buffered.len(), MAX_PIPE_BUFFER_BYTES)
            }
            FdKind::Eventfd { .. } | FdKind::TcpListen { .. } => Ok(()),
            FdKind::Epoll { registrations } => {
                check_cap(
                    "epoll registrations",
                    registrations.len(),
                    MAX_EPOLL_REGISTRATIONS as usize,
                )?;
                registrations
                    .iter()
                    .try_for_each(|reg| check_fd("epoll.tfd", reg.tfd))
            }
            FdKind::UnixListen { path, .. } => {
                check_cap("unix.path", path.len(), MAX_UNIX_PATH_BYTES)
            }
            FdKind::TcpConnected { local, peer, .. } => {
                if local.is_ipv4() != peer.is_ipv4() {
                    return Err(Error::RecordBadValue {
                        field: "tcp_connected.peer family",
                        value: u64::from(peer.is_ipv4()),
                    });
                }
                Ok(())
            }
            FdKind::UnixConnected {
                path, peer_path, ..
            } => {
                check_cap("unix.path", path.len(), MAX_UNIX_PATH_BYTES)?;
                check_cap("unix.peer_path", peer_path.len(), MAX_UNIX_PATH_BYTES)
            }
            FdKind::Tty { path } => check_cap("tty.path", path.len(), MAX_PATH_BYTES),
            FdKind::Other { description } => check_cap(
                "other.description",
                description.len(),
                MAX_OTHER_DESCRIPTION_BYTES,
            ),
        }
    }

    fn body_len(&self) -> usize {
        match self {
            FdKind::RegularFile { path, .. } => 8 + 4 + 4 + path.len(),
            FdKind::Pipe { buffered, .. } => 8 + 4 + 4 + buffered.len(),
            FdKind::Eventfd { .. } => 8 + 1,
            FdKind::Epoll { registrations } => registrations.wire_len(),
            FdKind::TcpListen { addr, .. } => 1 + 1 + 4 + sockaddr_len(addr),
            FdKind::UnixListen { path, .. } => 4 + 4 + 4 + path.len(),
            FdKind::TcpConnected { local, peer, .. } => {
                1 + sockaddr_len(local) + sockaddr_len(peer)
            }
            FdKind::UnixConnected {
                path, peer_path, ..
            } => 4 + 4 + path.len() + 4 + peer_path.len(),
            FdKind::Tty { path } => 4 + path.len(),
            FdKind::Other { description } => 4 + description.len(),
        }
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), Error> {
        match self {
            FdKind::RegularFile { path, offset, mode } => {
                w.u64(*offset);
                w.u32(*mode);
                w.len_prefixed(path);
            }
            FdKind::Pipe {
                pipe_id,
                end,
                buffered,
            } => {
                w.u64(*pipe_id);
                w.u32(*end as u32);
                w.len_prefixed(buffered);
            }
            FdKind::Eventfd { count, semaphore } => {
                w.u64(*count);
                w.bool(*semaphore);
            }
            FdKind::Epoll { registrations } => {
                registrations.emit(w, "epoll registrations", MAX_EPOLL_REGISTRATIONS)?
            }
            FdKind::TcpListen {
                addr,
                protocol,
                backlog,
                reuseaddr,
            } => {
                w.u8(*protocol as u8);
                w.bool(*reuseaddr);
                w.u32(*backlog);
                write_sockaddr(w, addr);
            }
            FdKind::UnixListen {
                path,
                socket_type,
                backlog,
            } => {
                w.u32(*socket_type as u32);
                w.u32(*backlog);
                w.len_prefixed(path);
            }
            FdKind::TcpConnected {
                local,
                peer,
                protocol,
            } => {
                w.u8(*protocol as u8);
                write_sockaddr(w, local);
                write_sockaddr(w, peer);
            }
            FdKind::UnixConnected {
                socket_type,
                path,
                peer_path,
            } => {
                w.u32(*socket_type as u32);
                w.len_prefixed(path);
                w.len_prefixed(peer_path);
            }
            FdKind::Tty { path } => w.len_prefixed(path),
            FdKind::Other { description } => w.len_prefixed(description),
        }
        Ok(())
    }
}

impl<'a> TableEntry<'a> for Fd<'a> {
    fn parse_entry(bytes: &'a [u8]) -> Result<(Self, usize), Error> {
        let mut r = Reader::new(bytes);
        let fd = r.i32()?;
        check_fd("fd", fd)?;
        let fd_flags = FdFlags::from_bits(r.u32()?)?;
        let status_flags = r.u32()?;
        let tag = r.u32()?;
        let body_len = r.u32()? as usize;
        let body = r.bytes(body_len)?;
        let kind = parse_all(body, |br| FdKind::read(tag, br)).map_err(|e| match e {
            Error::RecordTruncated { offset, needed } => Error::RecordTruncated {
                offset: offset.saturating_add(FD_ENTRY_FIXED_LEN as u32),
                needed,
            },
            other => other,
        })?;
        Ok((
            Fd {
                fd,
                fd_flags,
                status_flags,
                kind,
            },
            r.position(),
        ))
    }

    fn entry_len(&self) -> usize {
        FD_ENTRY_FIXED_LEN + self.kind.body_len()
    }

    fn emit_entry(&self, out: &mut [u8]) -> Result<usize, Error> {
        check_fd("fd", self.fd)?;
        self.kind.check()?;
        emit_all(out, self.entry_len(), |w| {
            w.i32(self.fd);
            w.u32(self.fd_flags.0);
            w.u32(self.status_flags);
            w.u32(self.kind.tag());
            w.u32(self.kind.body_len() as u32);
            self.kind.write(w)
        })
    }
}

/// A table of open fds (one frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdTable<'a> {
    /// The fds, in increasing fd order (checked by the validator).
    pub fds: Table<'a, Fd<'a>>,
}

impl<'a> FdTable<'a> {
    /// A table over the caller's fds.
    pub const fn new(fds: &'a [Fd<'a>]) -> Self {
        FdTable {
            fds: Table::from_slice(fds),
        }
    }

    /// Parses an FdTable payload.
    pub fn parse(payload: &'a [u8]) -> Result<Self, Error> {
        parse_all(payload, |r| {
            Ok(FdTable {
                fds: Table::parse(r, "fd count", MAX_FDS_PER_TABLE)?,
            })
        })
    }

    /// Payload length in bytes.
    pub fn buffer_len(&self) -> usize {
        self.fds.wire_len()
    }

    /// Writes the payload.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        emit_all(out, self.buffer_len(), |w| {
            self.fds.emit(w, "fd count", MAX_FDS_PER_TABLE)
        })
    }
}
