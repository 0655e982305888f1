//! Kernel-state snapshots of a live process, to compare before and after a
//! checkpoint/restore (or any other change) with fd numbers as keys.
//!
//! [`Snapshot::take`] reads, for process `pid`:
//! - every fd: its kind and target (`readlink /proc/PID/fd/N`), the file's
//!   device and inode, `flags` and `pos` from `/proc/PID/fdinfo/N`, the `lock:`
//!   lines there (the locks that belong to that open file), and what fdinfo says
//!   of timerfds (clock, interval, armed), inotify (watches), eventfds and epoll
//!   (targets);
//! - for each socket, through a copy taken with `pidfd_getfd` (same open file
//!   description, closed again at once): domain, type (stream / dgram /
//!   seqpacket), `SO_PROTOCOL` (tcp, mptcp, ...), listening, local and peer
//!   address, and `SO_REUSEADDR`, `SO_REUSEPORT`, `SO_KEEPALIVE`, `SO_RCVBUF`,
//!   `SO_SNDBUF`, `TCP_NODELAY` (TCP and MPTCP streams), `IPV6_V6ONLY` (IPv6).
//!   An option the socket refuses is recorded as its errno (MPTCP answers some
//!   options differently from TCP);
//! - the locks it holds: the fdinfo `lock:` lines (flock and OFD locks are
//!   attributed to the fds of their open file; OFD locks show pid -1 in
//!   `/proc/locks`), plus any `/proc/locks` line with its pid not already seen;
//! - its mappings from `/proc/PID/smaps`: range, perms, offset, device, inode,
//!   path, `VmFlags` (`rr` is MADV_RANDOM, `sh` shared, `um`/`uw` userfaultfd);
//! - each thread's rseq registration through ptrace
//!   (`PTRACE_GET_RSEQ_CONFIGURATION`): one thread at a time it is seized,
//!   interrupted, read and detached (a signal caught in that stop is delivered
//!   on detach), so the process runs on; [`Options::rseq`] turns this off (a
//!   process cannot trace its own threads, or another tracer may hold them).
//!
//! [`diff`] names every difference between two snapshots, comparing what a
//! restore must preserve: inode numbers of sockets, pipes and anonymous files,
//! pids in lock lines and volatile counters (timer ticks, eventfd counts, RSS)
//! are recorded but not compared. Narrow a snapshot first to compare only its
//! stable parts ([`Snapshot::only_fds`], [`Snapshot::file_mappings`],
//! [`Snapshot::only_threads`]).
//!
//! Errors: a process that is gone, an unreadable or unparsable `/proc` file and
//! a failed `pidfd_open`/`pidfd_getfd` end the snapshot with a [`KstateError`]
//! naming the file or fd. An fd that closes while it is read is left out (it
//! was not there for the whole snapshot); per-thread ptrace failures are kept
//! in [`ThreadState::rseq`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// Why a snapshot could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum KstateError {
    /// The process does not exist (any more).
    #[error("process {pid} is gone (reading {path})")]
    Gone {
        /// The process.
        pid: u32,
        /// What was being read.
        path: String,
    },
    /// A `/proc` file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// A `/proc` line is not in the format this module knows.
    #[error("{path}: cannot parse {line:?}: {what}")]
    Parse {
        /// The file.
        path: String,
        /// The line.
        line: String,
        /// What is wrong with it.
        what: &'static str,
    },
    /// `pidfd_open` failed.
    #[error("pidfd_open({pid}): {source}")]
    PidfdOpen {
        /// The process.
        pid: u32,
        /// The cause.
        source: io::Error,
    },
    /// `pidfd_getfd` failed for a socket (other than it being closed meanwhile).
    #[error("pidfd_getfd(pid {pid}, fd {fd}): {source}")]
    PidfdGetfd {
        /// The process.
        pid: u32,
        /// The fd.
        fd: i32,
        /// The cause.
        source: io::Error,
    },
    /// An fd kept changing to another object while it was read.
    #[error("fd {fd} of pid {pid} changed to another object three times while it was read")]
    Unstable {
        /// The process.
        pid: u32,
        /// The fd.
        fd: i32,
    },
}

/// What an fd refers to, from its `/proc/PID/fd` link and the file's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdKind {
    /// A regular file (also memfd and deleted files).
    File,
    /// A directory.
    Dir,
    /// A character device (`/dev/null`, ...).
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A named pipe opened by path.
    Fifo,
    /// `socket:[inode]`.
    Socket,
    /// `pipe:[inode]`.
    Pipe,
    /// `anon_inode:NAME` (NAME without brackets: `timerfd`, `inotify`,
    /// `eventpoll`, `eventfd`, `pidfd`, `userfaultfd`, ...).
    AnonInode(String),
    /// Anything else (namespaces, ...): see the target.
    Other,
}

impl FdKind {
    /// Whether the target is a path (compared by [`diff`]); otherwise it holds
    /// an inode number that a restore does not keep.
    pub fn has_path(&self) -> bool {
        matches!(
            self,
            FdKind::File | FdKind::Dir | FdKind::CharDevice | FdKind::BlockDevice | FdKind::Fifo
        )
    }
}

impl fmt::Display for FdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FdKind::File => f.write_str("file"),
            FdKind::Dir => f.write_str("dir"),
            FdKind::CharDevice => f.write_str("chardev"),
            FdKind::BlockDevice => f.write_str("blockdev"),
            FdKind::Fifo => f.write_str("fifo"),
            FdKind::Socket => f.write_str("socket"),
            FdKind::Pipe => f.write_str("pipe"),
            FdKind::AnonInode(n) => write!(f, "anon_inode:{n}"),
            FdKind::Other => f.write_str("other"),
        }
    }
}

/// Kind of a file lock, as `/proc/locks` names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum LockKind {
    /// `flock(2)`.
    Flock,
    /// Open file description lock (`F_OFD_SETLK`), `OFDLCK`.
    Ofd,
    /// Classic POSIX record lock (`F_SETLK`), owned by the process.
    Posix,
    /// A lease, `LEASE`.
    Lease,
    /// Another name (`ACCESS`, `DELEG`, ...).
    Other(String),
}

impl fmt::Display for LockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockKind::Flock => f.write_str("FLOCK"),
            LockKind::Ofd => f.write_str("OFDLCK"),
            LockKind::Posix => f.write_str("POSIX"),
            LockKind::Lease => f.write_str("LEASE"),
            LockKind::Other(s) => f.write_str(s),
        }
    }
}

/// One lock line (`/proc/locks` format, also fdinfo's `lock:` lines).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LockLine {
    /// FLOCK, OFDLCK, POSIX, ...
    pub kind: LockKind,
    /// `READ`, `WRITE` (or `UNLCK`, ...).
    pub access: String,
    /// The pid column (-1 for OFD locks; not compared by [`diff`]).
    pub pid: i64,
    /// Device major, minor and inode of the locked file (`None` for `<none>`).
    pub file: Option<(u32, u32, u64)>,
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive), `None` for `EOF`.
    pub end: Option<u64>,
}

impl LockLine {
    /// The compared part: kind, access and range.
    fn shape(&self) -> String {
        let end = self
            .end
            .map_or_else(|| "EOF".to_string(), |e| e.to_string());
        format!("{} {} {}-{}", self.kind, self.access, self.start, end)
    }
}

/// A lock the process holds, with where it is seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLock {
    /// The lock.
    pub line: LockLine,
    /// The path of one of the process's fds on the locked file, if any.
    pub path: Option<String>,
    /// The fds whose fdinfo lists it (empty: only in `/proc/locks`).
    pub fds: Vec<i32>,
}

impl HeldLock {
    fn identity(&self) -> String {
        let file = match (&self.path, self.line.file) {
            (Some(p), _) => p.clone(),
            (None, Some((ma, mi, ino))) => format!("{ma:02x}:{mi:02x}:{ino}"),
            (None, None) => "<none>".into(),
        };
        format!("{} on {file} (fds {:?})", self.line.shape(), self.fds)
    }
}

/// A socket's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockType {
    /// SOCK_STREAM.
    Stream,
    /// SOCK_DGRAM.
    Dgram,
    /// SOCK_SEQPACKET.
    Seqpacket,
    /// SOCK_RAW.
    Raw,
    /// Another value.
    Other(i32),
}

impl fmt::Display for SockType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SockType::Stream => f.write_str("stream"),
            SockType::Dgram => f.write_str("dgram"),
            SockType::Seqpacket => f.write_str("seqpacket"),
            SockType::Raw => f.write_str("raw"),
            SockType::Other(n) => write!(f, "type-{n}"),
        }
    }
}

/// A socket option's value, or the errno getsockopt answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptValue {
    /// The integer value.
    Int(i32),
    /// getsockopt failed with this errno.
    Errno(i32),
}

impl fmt::Display for OptValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptValue::Int(v) => write!(f, "{v}"),
            OptValue::Errno(e) => write!(f, "error {}", errno_name(*e)),
        }
    }
}

/// IPPROTO_MPTCP.
pub const IPPROTO_MPTCP: i32 = 262;

/// What a socket is, read through a `pidfd_getfd` copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketInfo {
    /// The socket inode (from the fd link; not compared).
    pub inode: u64,
    /// `SO_DOMAIN` (AF_INET, AF_INET6, AF_UNIX, ...).
    pub family: i32,
    /// `SO_TYPE`.
    pub sock_type: SockType,
    /// `SO_PROTOCOL` (6 tcp, 262 mptcp, 17 udp, 0 for unix).
    pub protocol: i32,
    /// `SO_ACCEPTCONN`.
    pub listening: bool,
    /// getsockname: `1.2.3.4:5`, `[::1]:5`, `@name` (abstract), `/path`,
    /// `(unnamed)`.
    pub local: String,
    /// getpeername, `None` when not connected.
    pub peer: Option<String>,
    /// Option name -> value (see the module doc for which).
    pub options: BTreeMap<&'static str, OptValue>,
}

impl SocketInfo {
    /// The value of option `name` if it was read and succeeded.
    pub fn opt(&self, name: &str) -> Option<i32> {
        match self.options.get(name) {
            Some(OptValue::Int(v)) => Some(*v),
            _ => None,
        }
    }

    /// `tcp`, `mptcp`, `udp`, `unix`, ...
    pub fn protocol_name(&self) -> String {
        match (self.family, self.protocol) {
            (libc::AF_UNIX, _) => "unix".into(),
            (_, 6) => "tcp".into(),
            (_, IPPROTO_MPTCP) => "mptcp".into(),
            (_, 17) => "udp".into(),
            (_, p) => format!("proto-{p}"),
        }
    }
}

impl fmt::Display for SocketInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            family_name(self.family),
            self.sock_type,
            self.protocol_name()
        )?;
        if self.listening {
            f.write_str(" listening")?;
        }
        write!(f, " {}", self.local)?;
        if let Some(p) = &self.peer {
            write!(f, " -> {p}")?;
        }
        Ok(())
    }
}

/// A timerfd's settings from fdinfo (the remaining time and tick count are
/// volatile and not kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerfdInfo {
    /// `clockid` (1: CLOCK_MONOTONIC).
    pub clockid: i32,
    /// `settime flags`.
    pub settime_flags: u32,
    /// `it_interval` in ns (0: one-shot).
    pub interval_ns: u64,
    /// `it_value` is not zero.
    pub armed: bool,
}

/// One inotify watch from fdinfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct InotifyWatch {
    /// Watch descriptor.
    pub wd: i32,
    /// Inode of the watched file.
    pub ino: u64,
    /// The kernel's device number of the watched file's superblock.
    pub sdev: u64,
    /// Event mask.
    pub mask: u32,
    /// Ignored mask.
    pub ignored_mask: u32,
}

/// One epoll target from fdinfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpollTarget {
    /// Event mask.
    pub events: u32,
    /// The registration's user data.
    pub data: u64,
}

/// What fdinfo (or the socket) adds for some kinds of fd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdDetail {
    /// Nothing beyond flags and pos.
    None,
    /// A socket.
    Socket(SocketInfo),
    /// A timerfd.
    Timerfd(TimerfdInfo),
    /// An inotify instance and its watches.
    Inotify(Vec<InotifyWatch>),
    /// An eventfd (the count is volatile and not kept).
    Eventfd {
        /// EFD_SEMAPHORE.
        semaphore: bool,
    },
    /// An epoll instance: target fd -> registration.
    Epoll(BTreeMap<i32, EpollTarget>),
}

/// One fd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdEntry {
    /// What it is.
    pub kind: FdKind,
    /// `readlink /proc/PID/fd/N`.
    pub target: String,
    /// `st_dev` and `st_ino` of the open file.
    pub dev_ino: Option<(u64, u64)>,
    /// fdinfo `flags` (open flags incl. O_CLOEXEC as 02000000).
    pub flags: u32,
    /// fdinfo `pos`.
    pub pos: u64,
    /// fdinfo `lock:` lines.
    pub locks: Vec<LockLine>,
    /// Kind-specific detail.
    pub detail: FdDetail,
}

impl FdEntry {
    /// The socket detail, if this is a socket.
    pub fn socket(&self) -> Option<&SocketInfo> {
        match &self.detail {
            FdDetail::Socket(s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for FdEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            FdDetail::Socket(s) => write!(f, "socket {s}"),
            FdDetail::Timerfd(t) => write!(
                f,
                "timerfd clock {} interval {} ns{}",
                t.clockid,
                t.interval_ns,
                if t.armed { " armed" } else { "" }
            ),
            FdDetail::Inotify(w) => write!(f, "inotify, {} watch(es)", w.len()),
            FdDetail::Eventfd { .. } => f.write_str("eventfd"),
            FdDetail::Epoll(t) => write!(f, "epoll, {} target(s)", t.len()),
            FdDetail::None if self.kind.has_path() => {
                write!(f, "{} {} flags 0{:o}", self.kind, self.target, self.flags)
            }
            FdDetail::None => write!(f, "{}", self.kind),
        }
    }
}

/// One mapping from `/proc/PID/smaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// `rwxp` / `rw-s` ...
    pub perms: String,
    /// File offset.
    pub offset: u64,
    /// `maj:min` of the file's device.
    pub dev: String,
    /// The file's inode (0 for anonymous).
    pub inode: u64,
    /// The path, `[heap]`-like name, or "" for anonymous memory.
    pub path: String,
    /// `VmFlags` (two-letter flags, in the kernel's order).
    pub vm_flags: Vec<String>,
}

impl Mapping {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether it is empty (never, for a real mapping).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// MAP_SHARED (`s` in perms).
    pub fn shared(&self) -> bool {
        self.perms.ends_with('s')
    }

    /// Whether `VmFlags` has `flag` (e.g. `rr` for MADV_RANDOM).
    pub fn has_flag(&self, flag: &str) -> bool {
        self.vm_flags.iter().any(|f| f == flag)
    }
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:x}-{:x} {} {:x} {} [{}]",
            self.start,
            self.end,
            self.perms,
            self.offset,
            if self.path.is_empty() {
                "(anonymous)"
            } else {
                &self.path
            },
            self.vm_flags.join(" ")
        )
    }
}

/// A thread's rseq registration (`struct ptrace_rseq_configuration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RseqConfig {
    /// Address of the registered `struct rseq` (0: none).
    pub abi_pointer: u64,
    /// Its registered size.
    pub abi_size: u32,
    /// The abort signature.
    pub signature: u32,
    /// Flags.
    pub flags: u32,
}

impl RseqConfig {
    /// Whether the thread has registered rseq.
    pub fn registered(&self) -> bool {
        self.abi_pointer != 0
    }
}

impl fmt::Display for RseqConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.registered() {
            return f.write_str("rseq not registered");
        }
        write!(
            f,
            "rseq at {:#x} size {} signature {:#x} flags {}",
            self.abi_pointer, self.abi_size, self.signature, self.flags
        )
    }
}

/// One thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadState {
    /// The rseq registration, or why it could not be read (`Err`), or
    /// `Err("not read")` when [`Options::rseq`] is off.
    pub rseq: Result<RseqConfig, String>,
}

/// A process's kernel state at one moment (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The process.
    pub pid: u32,
    /// fd number -> entry.
    pub fds: BTreeMap<i32, FdEntry>,
    /// Locks it holds.
    pub locks: Vec<HeldLock>,
    /// Mappings in address order.
    pub maps: Vec<Mapping>,
    /// Thread id -> state.
    pub threads: BTreeMap<u32, ThreadState>,
}

/// How to take a snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Read each thread's rseq registration with ptrace (default on).
    pub rseq: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { rseq: true }
    }
}

impl Snapshot {
    /// Takes a snapshot of `pid` with the default [`Options`].
    pub fn take(pid: u32) -> Result<Snapshot, KstateError> {
        Snapshot::take_with(pid, Options::default())
    }

    /// Takes a snapshot of `pid`: fds (and locks), mappings, then threads.
    pub fn take_with(pid: u32, opts: Options) -> Result<Snapshot, KstateError> {
        let fds = read_fds(pid)?;
        let locks = held_locks(pid, &fds)?;
        let maps = read_smaps(pid)?;
        let mut threads = BTreeMap::new();
        for tid in list_dir_numbers(pid, &format!("/proc/{pid}/task"))? {
            let rseq = if opts.rseq {
                read_rseq(tid)
            } else {
                Err("not read".to_string())
            };
            if rseq.as_ref().is_err_and(|e| e == GONE) {
                continue; // exited while listed
            }
            threads.insert(tid as u32, ThreadState { rseq });
        }
        Ok(Snapshot {
            pid,
            fds,
            locks,
            maps,
            threads,
        })
    }

    /// The entry of fd `fd`.
    pub fn fd(&self, fd: i32) -> Option<&FdEntry> {
        self.fds.get(&fd)
    }

    /// The mapping containing `addr`.
    pub fn mapping_at(&self, addr: u64) -> Option<&Mapping> {
        self.maps.iter().find(|m| m.start <= addr && addr < m.end)
    }

    /// The mappings of file `path`.
    pub fn mappings_of(&self, path: &str) -> Vec<&Mapping> {
        self.maps.iter().filter(|m| m.path == path).collect()
    }

    /// The locks held on file `path`.
    pub fn locks_on(&self, path: &str) -> Vec<&HeldLock> {
        self.locks
            .iter()
            .filter(|l| l.path.as_deref() == Some(path))
            .collect()
    }

    /// The same snapshot with only the given fds (and only the locks seen on
    /// them).
    pub fn only_fds(&self, keep: &BTreeSet<i32>) -> Snapshot {
        let mut s = self.clone();
        s.fds.retain(|fd, _| keep.contains(fd));
        s.locks.retain(|l| l.fds.iter().any(|fd| keep.contains(fd)));
        for l in &mut s.locks {
            l.fds.retain(|fd| keep.contains(fd));
        }
        s
    }

    /// The same snapshot with only file-backed mappings (path starting with `/`).
    pub fn file_mappings(&self) -> Snapshot {
        let mut s = self.clone();
        s.maps.retain(|m| m.path.starts_with('/'));
        s
    }

    /// The same snapshot with only the given threads.
    pub fn only_threads(&self, keep: &BTreeSet<u32>) -> Snapshot {
        let mut s = self.clone();
        s.threads.retain(|t, _| keep.contains(t));
        s
    }

    /// Thread ids present in both snapshots.
    pub fn common_threads(&self, other: &Snapshot) -> BTreeSet<u32> {
        self.threads
            .keys()
            .filter(|t| other.threads.contains_key(t))
            .copied()
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Reading /proc

/// Reads a /proc file; `Ok(None)` when it does not exist (any more).
fn read_proc(path: &str) -> Result<Option<String>, KstateError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH)) => Ok(None),
        Err(source) => Err(KstateError::Read {
            path: path.into(),
            source,
        }),
    }
}

fn list_dir_numbers(pid: u32, dir: &str) -> Result<Vec<i32>, KstateError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            return Err(KstateError::Gone {
                pid,
                path: dir.into(),
            })
        }
        Err(source) => {
            return Err(KstateError::Read {
                path: dir.into(),
                source,
            })
        }
    };
    let mut out: Vec<i32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    out.sort_unstable();
    Ok(out)
}

fn parse_err(path: &str, line: &str, what: &'static str) -> KstateError {
    KstateError::Parse {
        path: path.into(),
        line: line.chars().take(200).collect(),
        what,
    }
}

fn read_fds(pid: u32) -> Result<BTreeMap<i32, FdEntry>, KstateError> {
    let numbers = list_dir_numbers(pid, &format!("/proc/{pid}/fd"))?;
    let pidfd = pidfd_open(pid)?;
    let mut fds = BTreeMap::new();
    for fd in numbers {
        if let Some(e) = read_fd(pid, &pidfd, fd)? {
            fds.insert(fd, e);
        }
    }
    Ok(fds)
}

/// One fd; `None` when it closed meanwhile.
fn read_fd(pid: u32, pidfd: &OwnedFd, fd: i32) -> Result<Option<FdEntry>, KstateError> {
    for _attempt in 0..3 {
        let link = format!("/proc/{pid}/fd/{fd}");
        let target = match std::fs::read_link(&link) {
            Ok(t) => t.to_string_lossy().into_owned(),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(source) => return Err(KstateError::Read { path: link, source }),
        };
        let meta = std::fs::metadata(&link).ok();
        let kind = classify(&target, meta.as_ref());
        let info_path = format!("/proc/{pid}/fdinfo/{fd}");
        let Some(info) = read_proc(&info_path)? else {
            return Ok(None);
        };
        let mut entry = parse_fdinfo(&info_path, &info, kind, target)?;
        entry.dev_ino = meta.as_ref().map(|m| (m.dev(), m.ino()));
        if entry.kind == FdKind::Socket {
            let inode = bracket_number(&entry.target).unwrap_or(0);
            match socket_info(pid, pidfd, fd, inode)? {
                SocketRead::Info(s) => entry.detail = FdDetail::Socket(s),
                SocketRead::Closed => return Ok(None),
                SocketRead::Changed => continue,
            }
        }
        return Ok(Some(entry));
    }
    Err(KstateError::Unstable { pid, fd })
}

/// The kind of an fd from its link target and (for paths) the file's type.
fn classify(target: &str, meta: Option<&std::fs::Metadata>) -> FdKind {
    if target.starts_with("socket:[") {
        return FdKind::Socket;
    }
    if target.starts_with("pipe:[") {
        return FdKind::Pipe;
    }
    if let Some(n) = target.strip_prefix("anon_inode:") {
        return FdKind::AnonInode(n.trim_start_matches('[').trim_end_matches(']').to_string());
    }
    if !target.starts_with('/') {
        return FdKind::Other;
    }
    match meta.map(|m| m.file_type()) {
        Some(t) if t.is_dir() => FdKind::Dir,
        Some(t) if t.is_char_device() => FdKind::CharDevice,
        Some(t) if t.is_block_device() => FdKind::BlockDevice,
        Some(t) if t.is_fifo() => FdKind::Fifo,
        Some(t) if t.is_socket() => FdKind::Socket,
        _ => FdKind::File,
    }
}

/// `socket:[123]` -> 123.
fn bracket_number(target: &str) -> Option<u64> {
    let open = target.find('[')?;
    target[open + 1..].strip_suffix(']')?.parse().ok()
}

/// Parses fdinfo text (`path` only names it in errors).
fn parse_fdinfo(
    path: &str,
    text: &str,
    kind: FdKind,
    target: String,
) -> Result<FdEntry, KstateError> {
    let mut e = FdEntry {
        kind,
        target,
        dev_ino: None,
        flags: 0,
        pos: 0,
        locks: Vec::new(),
        detail: FdDetail::None,
    };
    let mut timer = TimerfdInfo {
        clockid: -1,
        settime_flags: 0,
        interval_ns: 0,
        armed: false,
    };
    let mut watches = Vec::new();
    let mut epoll = BTreeMap::new();
    let mut semaphore = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "pos" => e.pos = value.parse().map_err(|_| parse_err(path, line, "pos"))?,
            "flags" => {
                e.flags =
                    u32::from_str_radix(value, 8).map_err(|_| parse_err(path, line, "flags"))?
            }
            "lock" => e.locks.push(parse_lock_line(value).ok_or_else(|| {
                parse_err(
                    path,
                    line,
                    "lock line (want \"N: KIND MODE ACCESS PID MAJ:MIN:INO START END\")",
                )
            })?),
            "clockid" => {
                timer.clockid = value
                    .parse()
                    .map_err(|_| parse_err(path, line, "clockid"))?
            }
            "settime flags" => {
                timer.settime_flags = u32::from_str_radix(value, 8)
                    .map_err(|_| parse_err(path, line, "settime flags"))?
            }
            "it_value" => {
                let (s, ns) =
                    parse_pair(value).ok_or_else(|| parse_err(path, line, "it_value (s, ns)"))?;
                timer.armed = s != 0 || ns != 0;
            }
            "it_interval" => {
                let (s, ns) = parse_pair(value)
                    .ok_or_else(|| parse_err(path, line, "it_interval (s, ns)"))?;
                timer.interval_ns = s.saturating_mul(1_000_000_000).saturating_add(ns);
            }
            "inotify wd" => watches
                .push(parse_inotify(line).ok_or_else(|| parse_err(path, line, "inotify watch"))?),
            "tfd" => {
                let (tfd, t) =
                    parse_epoll(value).ok_or_else(|| parse_err(path, line, "epoll target"))?;
                epoll.insert(tfd, t);
            }
            "eventfd-semaphore" => semaphore = Some(value == "1"),
            _ => {}
        }
    }
    e.detail = match &e.kind {
        FdKind::AnonInode(n) if n == "timerfd" => FdDetail::Timerfd(timer),
        FdKind::AnonInode(n) if n == "inotify" => {
            watches.sort();
            FdDetail::Inotify(watches)
        }
        FdKind::AnonInode(n) if n == "eventpoll" => FdDetail::Epoll(epoll),
        FdKind::AnonInode(n) if n == "eventfd" => FdDetail::Eventfd {
            semaphore: semaphore.unwrap_or(false),
        },
        _ => FdDetail::None,
    };
    Ok(e)
}

/// `(12, 345)` -> (12, 345).
fn parse_pair(v: &str) -> Option<(u64, u64)> {
    let inner = v.trim().strip_prefix('(')?.strip_suffix(')')?;
    let (a, b) = inner.split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// `key:value` words of a line, e.g. `ino:9a2630` -> ("ino", "9a2630").
fn words(line: &str) -> BTreeMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|w| w.split_once(':'))
        .collect()
}

/// `inotify wd:1 ino:9a2630 sdev:fe00000 mask:c0c ignored_mask:0 ...`
fn parse_inotify(line: &str) -> Option<InotifyWatch> {
    let w = words(line.strip_prefix("inotify")?);
    let hex64 = |k: &str| u64::from_str_radix(w.get(k)?, 16).ok();
    let hex32 = |k: &str| u32::from_str_radix(w.get(k)?, 16).ok();
    Some(InotifyWatch {
        wd: w.get("wd")?.parse().ok()?,
        ino: hex64("ino")?,
        sdev: hex64("sdev")?,
        mask: hex32("mask")?,
        ignored_mask: hex32("ignored_mask")?,
    })
}

/// `      20 events: 8000201d data: 3f9e9bb069000001  pos:0 ino:af326 sdev:9`
fn parse_epoll(v: &str) -> Option<(i32, EpollTarget)> {
    let mut it = v.split_whitespace();
    let tfd = it.next()?.parse().ok()?;
    let mut events = None;
    let mut data = None;
    while let Some(w) = it.next() {
        match w {
            "events:" => events = u32::from_str_radix(it.next()?, 16).ok(),
            "data:" => data = u64::from_str_radix(it.next()?, 16).ok(),
            _ => {}
        }
    }
    Some((
        tfd,
        EpollTarget {
            events: events?,
            data: data?,
        },
    ))
}

/// One `/proc/locks` line (or the part of an fdinfo `lock:` line after the
/// tab): `1: FLOCK  ADVISORY  WRITE 1297 fe:00:10105601 0 EOF`. Blocked
/// waiters (`1: -> FLOCK ...`) give `None` too: they are not held.
pub fn parse_lock_line(line: &str) -> Option<LockLine> {
    let mut it = line.split_whitespace();
    it.next()?.strip_suffix(':')?;
    let kind = it.next()?;
    if kind == "->" {
        return None;
    }
    let _mode = it.next()?; // ADVISORY / MANDATORY / ACTIVE / BREAKING ...
    let access = it.next()?.to_string();
    let pid = it.next()?.parse().ok()?;
    let file = it.next()?;
    let file = if file.starts_with("<none>") {
        None
    } else {
        let mut p = file.split(':');
        let ma = u32::from_str_radix(p.next()?, 16).ok()?;
        let mi = u32::from_str_radix(p.next()?, 16).ok()?;
        let ino = p.next()?.parse().ok()?;
        Some((ma, mi, ino))
    };
    let start = it.next()?.parse().ok()?;
    let end = match it.next()? {
        "EOF" => None,
        n => Some(n.parse().ok()?),
    };
    let kind = match kind {
        "FLOCK" => LockKind::Flock,
        "OFDLCK" => LockKind::Ofd,
        "POSIX" => LockKind::Posix,
        "LEASE" => LockKind::Lease,
        other => LockKind::Other(other.to_string()),
    };
    Some(LockLine {
        kind,
        access,
        pid,
        file,
        start,
        end,
    })
}

/// The locks `pid` holds: every fdinfo `lock:` line (grouped by lock, with
/// the fds that list it), then `/proc/locks` lines with this pid not seen yet.
fn held_locks(pid: u32, fds: &BTreeMap<i32, FdEntry>) -> Result<Vec<HeldLock>, KstateError> {
    let path_of = |file: Option<(u32, u32, u64)>| -> Option<String> {
        let (ma, mi, ino) = file?;
        fds.values()
            .find(|e| {
                e.kind.has_path()
                    && e.dev_ino.is_some_and(|(dev, i)| {
                        i == ino && libc::major(dev) == ma && libc::minor(dev) == mi
                    })
            })
            .map(|e| e.target.clone())
    };
    let mut held: Vec<HeldLock> = Vec::new();
    for (fd, e) in fds {
        for l in &e.locks {
            match held.iter_mut().find(|h| &h.line == l) {
                Some(h) => h.fds.push(*fd),
                None => held.push(HeldLock {
                    line: l.clone(),
                    path: path_of(l.file),
                    fds: vec![*fd],
                }),
            }
        }
    }
    let path = "/proc/locks";
    let text = read_proc(path)?.ok_or_else(|| KstateError::Read {
        path: path.into(),
        source: io::ErrorKind::NotFound.into(),
    })?;
    for line in text.lines() {
        if line.contains("->") {
            continue; // a waiter, not a holder
        }
        // Lines of other processes may be of kinds this parser does not know:
        // only an unparsable line cannot be attributed, so it is skipped.
        let Some(l) = parse_lock_line(line) else {
            continue;
        };
        if l.pid == i64::from(pid) && !held.iter().any(|h| h.line == l) {
            held.push(HeldLock {
                path: path_of(l.file),
                line: l,
                fds: Vec::new(),
            });
        }
    }
    held.sort_by(|a, b| a.line.cmp(&b.line).then(a.fds.cmp(&b.fds)));
    Ok(held)
}

fn read_smaps(pid: u32) -> Result<Vec<Mapping>, KstateError> {
    let path = format!("/proc/{pid}/smaps");
    let text = read_proc(&path)?.ok_or(KstateError::Gone {
        pid,
        path: path.clone(),
    })?;
    parse_smaps(&path, &text)
}

/// Parses smaps text: header lines and their `VmFlags` (other fields are
/// sizes, volatile, and skipped).
pub fn parse_smaps(path: &str, text: &str) -> Result<Vec<Mapping>, KstateError> {
    let mut maps: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                maps.push(parse_map_header(path, line, start, end)?);
                continue;
            }
        }
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            let m = maps
                .last_mut()
                .ok_or_else(|| parse_err(path, line, "VmFlags before any mapping"))?;
            m.vm_flags = flags.split_whitespace().map(str::to_string).collect();
        }
    }
    Ok(maps)
}

fn parse_map_header(path: &str, line: &str, start: u64, end: u64) -> Result<Mapping, KstateError> {
    // start-end perms offset dev inode [path, which may contain spaces]
    let mut rest = line;
    let mut fields = Vec::with_capacity(5);
    for _ in 0..5 {
        rest = rest.trim_start();
        let n = rest.find(char::is_whitespace).unwrap_or(rest.len());
        fields.push(&rest[..n]);
        rest = &rest[n..];
    }
    let bad = |what| parse_err(path, line, what);
    if fields.iter().any(|f| f.is_empty()) {
        return Err(bad(
            "mapping header (want \"start-end perms offset dev inode [path]\")",
        ));
    }
    Ok(Mapping {
        start,
        end,
        perms: fields[1].to_string(),
        offset: u64::from_str_radix(fields[2], 16).map_err(|_| bad("offset"))?,
        dev: fields[3].to_string(),
        inode: fields[4].parse().map_err(|_| bad("inode"))?,
        path: rest.trim_start().to_string(),
        vm_flags: Vec::new(),
    })
}

// ---------------------------------------------------------------------------
// Sockets through pidfd_getfd

fn pidfd_open(pid: u32) -> Result<OwnedFd, KstateError> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no
    // memory is passed.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if rc < 0 {
        let source = io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::ESRCH) {
            return Err(KstateError::Gone {
                pid,
                path: "pidfd_open".into(),
            });
        }
        return Err(KstateError::PidfdOpen { pid, source });
    }
    // SAFETY: rc is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
}

enum SocketRead {
    Info(SocketInfo),
    /// The fd was closed before the copy.
    Closed,
    /// The fd now refers to another socket or file: read it again.
    Changed,
}

fn socket_info(pid: u32, pidfd: &OwnedFd, fd: i32, inode: u64) -> Result<SocketRead, KstateError> {
    // SAFETY: pidfd_getfd takes a pidfd, an fd number and flags and returns
    // a new descriptor (O_CLOEXEC) or -1; no memory is passed.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if rc < 0 {
        let source = io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::EBADF) {
            return Ok(SocketRead::Closed);
        }
        return Err(KstateError::PidfdGetfd { pid, fd, source });
    }
    // SAFETY: rc is a new descriptor that nothing else owns; dropping it
    // closes only this copy (the target's fd and open file stay).
    let copy = unsafe { OwnedFd::from_raw_fd(rc as RawFd) };
    let c = copy.as_raw_fd();
    // Is it still the socket the link named?
    // SAFETY: st is valid for writes of one stat; c is open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(c, &mut st) } != 0 || st.st_ino != inode {
        return Ok(SocketRead::Changed);
    }
    if getsockopt_int(c, libc::SOL_SOCKET, libc::SO_DOMAIN).is_err() {
        return Ok(SocketRead::Changed); // not a socket any more
    }
    let int = |level, name| getsockopt_int(c, level, name).unwrap_or(-1);
    let family = int(libc::SOL_SOCKET, libc::SO_DOMAIN);
    let sock_type = match int(libc::SOL_SOCKET, libc::SO_TYPE) {
        libc::SOCK_STREAM => SockType::Stream,
        libc::SOCK_DGRAM => SockType::Dgram,
        libc::SOCK_SEQPACKET => SockType::Seqpacket,
        libc::SOCK_RAW => SockType::Raw,
        n => SockType::Other(n),
    };
    let protocol = int(libc::SOL_SOCKET, libc::SO_PROTOCOL);
    let listening = int(libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == 1;
    let local = sock_name(c, false).unwrap_or_else(|e| format!("(getsockname: {})", errno_name(e)));
    let peer = match sock_name(c, true) {
        Ok(p) => Some(p),
        Err(libc::ENOTCONN) => None,
        Err(e) => Some(format!("(getpeername: {})", errno_name(e))),
    };
    let mut options = BTreeMap::new();
    let mut opt = |name: &'static str, level, optname| {
        let v = match getsockopt_int(c, level, optname) {
            Ok(v) => OptValue::Int(v),
            Err(e) => OptValue::Errno(e),
        };
        options.insert(name, v);
    };
    opt("SO_REUSEADDR", libc::SOL_SOCKET, libc::SO_REUSEADDR);
    opt("SO_REUSEPORT", libc::SOL_SOCKET, libc::SO_REUSEPORT);
    opt("SO_KEEPALIVE", libc::SOL_SOCKET, libc::SO_KEEPALIVE);
    opt("SO_RCVBUF", libc::SOL_SOCKET, libc::SO_RCVBUF);
    opt("SO_SNDBUF", libc::SOL_SOCKET, libc::SO_SNDBUF);
    let inet = family == libc::AF_INET || family == libc::AF_INET6;
    if inet && sock_type == SockType::Stream {
        opt("TCP_NODELAY", libc::IPPROTO_TCP, libc::TCP_NODELAY);
    }
    if family == libc::AF_INET6 {
        opt("IPV6_V6ONLY", libc::IPPROTO_IPV6, libc::IPV6_V6ONLY);
    }
    Ok(SocketRead::Info(SocketInfo {
        inode,
        family,
        sock_type,
        protocol,
        listening,
        local,
        peer,
        options,
    }))
}

/// getsockopt of an int option; Err(errno).
fn getsockopt_int(fd: RawFd, level: i32, name: i32) -> Result<i32, i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for writes and len says v's size; fd is an
    // open descriptor of this process.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(v)
    } else {
        Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// getsockname (or getpeername) formatted; Err(errno).
fn sock_name(fd: RawFd, peer: bool) -> Result<String, i32> {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let sa = (&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr>();
    // SAFETY: sa points to ss, valid for writes of len bytes; fd is open.
    let rc = unsafe {
        if peer {
            libc::getpeername(fd, sa, &mut len)
        } else {
            libc::getsockname(fd, sa, &mut len)
        }
    };
    if rc != 0 {
        return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    let len = (len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: ss is plain data of at least len bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts((&ss as *const libc::sockaddr_storage).cast::<u8>(), len)
    };
    Ok(format_sockaddr(bytes))
}

/// Formats a raw sockaddr (`len` bytes as the kernel returned them).
pub fn format_sockaddr(b: &[u8]) -> String {
    if b.len() < 2 {
        return "(unnamed)".into();
    }
    let family = i32::from(u16::from_ne_bytes([b[0], b[1]]));
    let port = |b: &[u8]| u16::from_be_bytes([b[2], b[3]]);
    match family {
        libc::AF_INET if b.len() >= 8 => {
            format!("{}:{}", Ipv4Addr::new(b[4], b[5], b[6], b[7]), port(b))
        }
        libc::AF_INET6 if b.len() >= 24 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[8..24]);
            format!("[{}]:{}", Ipv6Addr::from(a), port(b))
        }
        libc::AF_UNIX => {
            let path = &b[2..];
            if path.is_empty() {
                "(unnamed)".into()
            } else if path[0] == 0 {
                format!("@{}", escape(&path[1..]))
            } else {
                let end = path.iter().position(|&c| c == 0).unwrap_or(path.len());
                escape(&path[..end])
            }
        }
        libc::AF_NETLINK if b.len() >= 12 => {
            let pid = u32::from_ne_bytes([b[4], b[5], b[6], b[7]]);
            let groups = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
            format!("netlink pid {pid} groups {groups:#x}")
        }
        f => format!("({} address, {} bytes)", family_name(f), b.len()),
    }
}

fn escape(b: &[u8]) -> String {
    let mut s = String::new();
    for &c in b {
        if c.is_ascii_graphic() || c == b' ' {
            s.push(char::from(c));
        } else {
            s.push_str(&format!("\\x{c:02x}"));
        }
    }
    s
}

/// `inet`, `inet6`, `unix`, `netlink`, or `family-N`.
pub fn family_name(f: i32) -> String {
    match f {
        libc::AF_INET => "inet".into(),
        libc::AF_INET6 => "inet6".into(),
        libc::AF_UNIX => "unix".into(),
        libc::AF_NETLINK => "netlink".into(),
        n => format!("family-{n}"),
    }
}

/// The symbolic name of an errno this module meets.
pub fn errno_name(e: i32) -> String {
    let n = match e {
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        libc::EINVAL => "EINVAL",
        libc::ENOTCONN => "ENOTCONN",
        libc::EBADF => "EBADF",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EPERM => "EPERM",
        libc::ESRCH => "ESRCH",
        libc::EIO => "EIO",
        _ => return format!("errno {e}"),
    };
    n.into()
}

// ---------------------------------------------------------------------------
// rseq through ptrace

/// `PTRACE_GET_RSEQ_CONFIGURATION` (Linux 5.13).
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;

/// `struct ptrace_rseq_configuration`.
#[repr(C)]
#[derive(Default)]
struct RawRseqConfig {
    rseq_abi_pointer: u64,
    rseq_abi_size: u32,
    signature: u32,
    flags: u32,
    pad: u32,
}

/// The error text of a thread that exited while it was read.
const GONE: &str = "thread exited";

fn ptrace(req: libc::c_uint, tid: i32, addr: usize, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: the requests used here (SEIZE, INTERRUPT, DETACH,
    // GET_RSEQ_CONFIGURATION) read or write at most `addr` bytes at `data`,
    // which the callers pass as a valid, large enough buffer (or 0).
    let r = unsafe {
        libc::ptrace(
            req,
            tid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Seizes thread `tid`, interrupts it, reads its rseq configuration and
/// detaches (delivering a signal it was stopped for). The thread runs on
/// unless it exited. Errors are texts (kept in the snapshot), [`GONE`] for
/// a thread that is not there any more.
fn read_rseq(tid: i32) -> Result<RseqConfig, String> {
    if let Err(e) = ptrace(libc::PTRACE_SEIZE, tid, 0, 0) {
        return Err(match e.raw_os_error() {
            Some(libc::ESRCH) => GONE.into(),
            _ => format!("PTRACE_SEIZE: {e}"),
        });
    }
    // From here the thread is traced: PTRACE_DETACH needs it stopped, so it
    // is interrupted and waited for whatever happens.
    if let Err(e) = ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) {
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Err(GONE.into()); // exited: nothing to detach
        }
        return Err(format!(
            "PTRACE_INTERRUPT: {e} (thread stays traced by this thread until it exits)"
        ));
    }
    let status = loop {
        let mut status = 0;
        // SAFETY: status is valid for writes; waitpid has no other memory effects.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        if r == tid {
            break status;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(format!("waitpid: {e}"));
        }
    };
    if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
        return Err(GONE.into());
    }
    // An interrupt or group stop (PTRACE_EVENT_STOP): detach with no signal
    // (a stopped process stays stopped); a signal-delivery stop: hand the
    // signal back on detach.
    let resend = if (status >> 16) == libc::PTRACE_EVENT_STOP {
        0
    } else {
        libc::WSTOPSIG(status)
    };
    let mut raw = RawRseqConfig::default();
    let read = ptrace(
        PTRACE_GET_RSEQ_CONFIGURATION,
        tid,
        std::mem::size_of::<RawRseqConfig>(),
        (&mut raw as *mut RawRseqConfig) as usize,
    );
    let detached = ptrace(libc::PTRACE_DETACH, tid, 0, resend as usize);
    if let Err(e) = detached {
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(format!("PTRACE_DETACH: {e}"));
        }
    }
    match read {
        Ok(n) if n as usize >= std::mem::size_of::<RawRseqConfig>() - 4 => Ok(RseqConfig {
            abi_pointer: raw.rseq_abi_pointer,
            abi_size: raw.rseq_abi_size,
            signature: raw.signature,
            flags: raw.flags,
        }),
        Ok(n) => Err(format!("PTRACE_GET_RSEQ_CONFIGURATION returned {n} bytes")),
        Err(e) => Err(format!("PTRACE_GET_RSEQ_CONFIGURATION: {e}")),
    }
}

// ---------------------------------------------------------------------------
// diff

/// Every difference between two snapshots, one line each, naming the fd,
/// lock, mapping or thread and the values before and after. Empty when they
/// agree on everything compared (see the module doc for what is not).
pub fn diff(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for (fd, b) in &before.fds {
        match after.fds.get(fd) {
            None => out.push(format!("fd {fd}: only before: {b}")),
            Some(a) => diff_fd(*fd, b, a, &mut out),
        }
    }
    for (fd, a) in &after.fds {
        if !before.fds.contains_key(fd) {
            out.push(format!("fd {fd}: only after: {a}"));
        }
    }

    let ids =
        |s: &Snapshot| -> BTreeSet<String> { s.locks.iter().map(HeldLock::identity).collect() };
    let (lb, la) = (ids(before), ids(after));
    for l in lb.difference(&la) {
        out.push(format!("lock {l}: only before"));
    }
    for l in la.difference(&lb) {
        out.push(format!("lock {l}: only after"));
    }

    let mb: BTreeMap<u64, &Mapping> = before.maps.iter().map(|m| (m.start, m)).collect();
    let ma: BTreeMap<u64, &Mapping> = after.maps.iter().map(|m| (m.start, m)).collect();
    for (start, b) in &mb {
        let Some(a) = ma.get(start) else {
            out.push(format!("mapping {start:x}: only before: {b}"));
            continue;
        };
        let mut what = Vec::new();
        if b.end != a.end {
            what.push(format!("end {:x} -> {:x}", b.end, a.end));
        }
        if b.perms != a.perms {
            what.push(format!("perms {} -> {}", b.perms, a.perms));
        }
        if b.offset != a.offset {
            what.push(format!("offset {:x} -> {:x}", b.offset, a.offset));
        }
        if b.path != a.path {
            what.push(format!("path {:?} -> {:?}", b.path, a.path));
        }
        if b.vm_flags != a.vm_flags {
            what.push(format!(
                "VmFlags [{}] -> [{}]",
                b.vm_flags.join(" "),
                a.vm_flags.join(" ")
            ));
        }
        for w in what {
            out.push(format!("mapping {start:x} ({}): {w}", b.path));
        }
    }
    for (start, a) in &ma {
        if !mb.contains_key(start) {
            out.push(format!("mapping {start:x}: only after: {a}"));
        }
    }

    for (tid, b) in &before.threads {
        match after.threads.get(tid) {
            None => out.push(format!("thread {tid}: only before")),
            Some(a) if a.rseq != b.rseq => out.push(format!(
                "thread {tid}: {} -> {}",
                show_rseq(&b.rseq),
                show_rseq(&a.rseq)
            )),
            Some(_) => {}
        }
    }
    for tid in after.threads.keys() {
        if !before.threads.contains_key(tid) {
            out.push(format!("thread {tid}: only after"));
        }
    }
    out
}

fn show_rseq(r: &Result<RseqConfig, String>) -> String {
    match r {
        Ok(c) => c.to_string(),
        Err(e) => format!("rseq unknown ({e})"),
    }
}

fn diff_fd(fd: i32, b: &FdEntry, a: &FdEntry, out: &mut Vec<String>) {
    let mut push = |what: String| out.push(format!("fd {fd}: {what}"));
    if b.kind != a.kind {
        push(format!("kind {} ({b}) -> {} ({a})", b.kind, a.kind));
        return;
    }
    if b.kind.has_path() && b.target != a.target {
        push(format!("target {} -> {}", b.target, a.target));
    }
    if b.flags != a.flags {
        push(format!("flags 0{:o} -> 0{:o}", b.flags, a.flags));
    }
    if b.pos != a.pos {
        push(format!("pos {} -> {}", b.pos, a.pos));
    }
    let shapes = |e: &FdEntry| e.locks.iter().map(LockLine::shape).collect::<Vec<_>>();
    if shapes(b) != shapes(a) {
        push(format!("locks {:?} -> {:?}", shapes(b), shapes(a)));
    }
    match (&b.detail, &a.detail) {
        (FdDetail::Socket(x), FdDetail::Socket(y)) => {
            if x.family != y.family {
                push(format!(
                    "socket family {} -> {}",
                    family_name(x.family),
                    family_name(y.family)
                ));
            }
            if x.sock_type != y.sock_type {
                push(format!("socket type {} -> {}", x.sock_type, y.sock_type));
            }
            if x.protocol != y.protocol {
                push(format!(
                    "protocol {} -> {}",
                    x.protocol_name(),
                    y.protocol_name()
                ));
            }
            if x.listening != y.listening {
                push(format!("listening {} -> {}", x.listening, y.listening));
            }
            if x.local != y.local {
                push(format!("local address {} -> {}", x.local, y.local));
            }
            if x.peer != y.peer {
                push(format!("peer address {:?} -> {:?}", x.peer, y.peer));
            }
            let names: BTreeSet<&str> = x.options.keys().chain(y.options.keys()).copied().collect();
            for n in names {
                let (p, q) = (x.options.get(n), y.options.get(n));
                if p != q {
                    let show =
                        |v: Option<&OptValue>| v.map_or("absent".to_string(), |v| v.to_string());
                    push(format!("{n} {} -> {}", show(p), show(q)));
                }
            }
        }
        (FdDetail::Timerfd(x), FdDetail::Timerfd(y)) => {
            if x.clockid != y.clockid {
                push(format!("timerfd clock {} -> {}", x.clockid, y.clockid));
            }
            if x.interval_ns != y.interval_ns {
                push(format!(
                    "timerfd interval {} ns -> {} ns",
                    x.interval_ns, y.interval_ns
                ));
            }
            if x.settime_flags != y.settime_flags {
                push(format!(
                    "timerfd settime flags {:o} -> {:o}",
                    x.settime_flags, y.settime_flags
                ));
            }
            if x.armed != y.armed {
                push(format!("timerfd armed {} -> {}", x.armed, y.armed));
            }
        }
        (FdDetail::Inotify(x), FdDetail::Inotify(y)) if x != y => {
            push(format!("inotify watches {x:?} -> {y:?}"));
        }
        (FdDetail::Eventfd { semaphore: x }, FdDetail::Eventfd { semaphore: y }) if x != y => {
            push(format!("eventfd semaphore {x} -> {y}"));
        }
        (FdDetail::Epoll(x), FdDetail::Epoll(y)) => {
            for (t, e) in x {
                match y.get(t) {
                    None => push(format!("epoll target {t} only before")),
                    Some(f) if f != e => push(format!(
                        "epoll target {t}: events {:x} data {:x} -> events {:x} data {:x}",
                        e.events, e.data, f.events, f.data
                    )),
                    Some(_) => {}
                }
            }
            for t in y.keys() {
                if !x.contains_key(t) {
                    push(format!("epoll target {t} only after"));
                }
            }
        }
        (x, y) if std::mem::discriminant(x) != std::mem::discriminant(y) => {
            push(format!("detail {x:?} -> {y:?}"));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    #[test]
    fn lock_lines() {
        let l = parse_lock_line("1: FLOCK  ADVISORY  WRITE 1297 fe:00:10105601 0 EOF").unwrap();
        assert_eq!(l.kind, LockKind::Flock);
        assert_eq!(l.access, "WRITE");
        assert_eq!(l.pid, 1297);
        assert_eq!(l.file, Some((0xfe, 0, 10105601)));
        assert_eq!((l.start, l.end), (0, None));
        let l = parse_lock_line("2: OFDLCK ADVISORY  READ -1 08:11:77 0 127").unwrap();
        assert_eq!(
            (l.kind, l.access.as_str(), l.pid, l.file, l.end),
            (LockKind::Ofd, "READ", -1, Some((8, 0x11, 77)), Some(127))
        );
        let l = parse_lock_line("3: POSIX  ADVISORY  WRITE 42 00:2d:5 100 199").unwrap();
        assert_eq!((l.kind, l.start, l.end), (LockKind::Posix, 100, Some(199)));
        let l = parse_lock_line("4: LEASE  ACTIVE    READ 42 00:2d:5 0 EOF").unwrap();
        assert_eq!(l.kind, LockKind::Lease);
        assert!(parse_lock_line("5: -> FLOCK  ADVISORY  WRITE 9 fe:00:1 0 EOF").is_none());
        assert!(parse_lock_line("garbage").is_none());
        assert!(parse_lock_line("1: FLOCK ADVISORY WRITE x fe:00:1 0 EOF").is_none());
    }

    #[test]
    fn fdinfo_kinds() {
        let file = "pos:\t28\nflags:\t0100002\nmnt_id:\t27\nino:\t5\n\
                    lock:\t1: FLOCK  ADVISORY  WRITE 1297 fe:00:10105601 0 EOF\n";
        let e = parse_fdinfo("t", file, FdKind::File, "/x".into()).unwrap();
        assert_eq!((e.pos, e.flags, e.locks.len()), (28, 0o100002, 1));
        let timer = "pos:\t0\nflags:\t02004002\nclockid: 1\nticks: 0\nsettime flags: 00\n\
                     it_value: (0, 195453099)\nit_interval: (1, 200000000)\n";
        let e = parse_fdinfo(
            "t",
            timer,
            FdKind::AnonInode("timerfd".into()),
            String::new(),
        )
        .unwrap();
        assert_eq!(
            e.detail,
            FdDetail::Timerfd(TimerfdInfo {
                clockid: 1,
                settime_flags: 0,
                interval_ns: 1_200_000_000,
                armed: true
            })
        );
        let ino = "pos:\t0\nflags:\t02004000\ninotify wd:1 ino:9a2630 sdev:fe00000 mask:c0c \
                   ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:30269a00caeef48c\n";
        let e = parse_fdinfo("t", ino, FdKind::AnonInode("inotify".into()), String::new()).unwrap();
        assert_eq!(
            e.detail,
            FdDetail::Inotify(vec![InotifyWatch {
                wd: 1,
                ino: 0x9a2630,
                sdev: 0xfe00000,
                mask: 0xc0c,
                ignored_mask: 0
            }])
        );
        let ep = "pos:\t0\nflags:\t02\ntfd:       20 events: 8000201d data: 3f9e9bb069000001  pos:0 ino:af326 sdev:9\n\
                  tfd:       13 events:       19 data:                0  pos:0 ino:40f sdev:10\n";
        let e = parse_fdinfo(
            "t",
            ep,
            FdKind::AnonInode("eventpoll".into()),
            String::new(),
        )
        .unwrap();
        let FdDetail::Epoll(t) = e.detail else {
            panic!("{:?}", e.detail)
        };
        assert_eq!(t.len(), 2);
        assert_eq!(
            t[&13],
            EpollTarget {
                events: 0x19,
                data: 0
            }
        );
        assert_eq!(t[&20].data, 0x3f9e9bb069000001);
        let bad = "pos:\tx\n";
        let err = parse_fdinfo("/proc/1/fdinfo/3", bad, FdKind::File, String::new()).unwrap_err();
        assert!(err.to_string().contains("/proc/1/fdinfo/3"), "{err}");
    }

    #[test]
    fn smaps_headers_and_flags() {
        let text = "7f2744000000-7f2748000000 r--s 00000000 fe:00 10105605                   /tmp/a b/index.dat\n\
                    Size:              65536 kB\nRss: 4 kB\nVmFlags: rd sh mr mw me ms rr \n\
                    7f2748000000-7f2748021000 rw-p 00001000 00:00 0 \nVmFlags: rd wr mr mw me ac nh \n";
        let m = parse_smaps("t", text).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].path, "/tmp/a b/index.dat");
        assert!(m[0].shared() && m[0].has_flag("rr") && !m[0].has_flag("wr"));
        assert_eq!((m[0].len(), m[0].inode), (64 << 20, 10105605));
        assert_eq!((m[1].path.as_str(), m[1].offset), ("", 0x1000));
        assert!(!m[1].shared());
        assert!(parse_smaps("t", "VmFlags: rd\n").is_err());
        assert!(parse_smaps("t", "1000-2000 r--p\n").is_err());
    }

    #[test]
    fn sockaddrs() {
        let mut un = vec![libc::AF_UNIX as u8, 0];
        assert_eq!(format_sockaddr(&un), "(unnamed)");
        un.extend_from_slice(b"\x0001e2f");
        assert_eq!(format_sockaddr(&un), "@01e2f");
        let mut p = vec![libc::AF_UNIX as u8, 0];
        p.extend_from_slice(b"/run/x.sock\0\0\0");
        assert_eq!(format_sockaddr(&p), "/run/x.sock");
        let v4 = [
            libc::AF_INET as u8,
            0,
            0x1f,
            0x90,
            127,
            0,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ];
        assert_eq!(format_sockaddr(&v4), "127.0.0.1:8080");
        let mut v6 = vec![libc::AF_INET6 as u8, 0, 0, 80, 0, 0, 0, 0];
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&[0; 4]);
        assert_eq!(format_sockaddr(&v6), "[::1]:80");
        assert_eq!(format_sockaddr(&[1]), "(unnamed)");
    }

    fn sample() -> Snapshot {
        let mut fds = BTreeMap::new();
        fds.insert(
            5,
            FdEntry {
                kind: FdKind::File,
                target: "/d/data.db".into(),
                dev_ino: Some((1, 2)),
                flags: 0o2100002,
                pos: 0,
                locks: vec![parse_lock_line("1: FLOCK  ADVISORY  WRITE 7 00:01:2 0 EOF").unwrap()],
                detail: FdDetail::None,
            },
        );
        let mut options = BTreeMap::new();
        options.insert("SO_REUSEPORT", OptValue::Int(1));
        options.insert("TCP_NODELAY", OptValue::Errno(libc::EOPNOTSUPP));
        fds.insert(
            7,
            FdEntry {
                kind: FdKind::Socket,
                target: "socket:[99]".into(),
                dev_ino: None,
                flags: 0o2004002,
                pos: 0,
                locks: vec![],
                detail: FdDetail::Socket(SocketInfo {
                    inode: 99,
                    family: libc::AF_INET,
                    sock_type: SockType::Stream,
                    protocol: IPPROTO_MPTCP,
                    listening: true,
                    local: "127.0.0.1:5".into(),
                    peer: None,
                    options,
                }),
            },
        );
        let line = parse_lock_line("1: FLOCK  ADVISORY  WRITE 7 00:01:2 0 EOF").unwrap();
        let mut threads = BTreeMap::new();
        threads.insert(
            7,
            ThreadState {
                rseq: Ok(RseqConfig {
                    abi_pointer: 0x1000,
                    abi_size: 32,
                    signature: 0x53053053,
                    flags: 0,
                }),
            },
        );
        Snapshot {
            pid: 7,
            fds,
            locks: vec![HeldLock {
                line,
                path: Some("/d/data.db".into()),
                fds: vec![5],
            }],
            maps: parse_smaps(
                "t",
                "1000-3000 rw-s 00000000 fe:00 5 /d/data.db\nVmFlags: rd wr sh\n",
            )
            .unwrap(),
            threads,
        }
    }

    #[test]
    fn diff_names_each_difference() {
        let a = sample();
        assert!(diff(&a, &a.clone()).is_empty());

        // Inode numbers and lock pids are not compared: a restored copy has new ones.
        let mut b = a.clone();
        if let FdDetail::Socket(s) = &mut b.fds.get_mut(&7).unwrap().detail {
            s.inode = 1234;
        }
        b.fds.get_mut(&7).unwrap().target = "socket:[1234]".into();
        b.fds.get_mut(&5).unwrap().locks[0].pid = 8;
        b.locks[0].line.pid = 8;
        assert!(diff(&a, &b).is_empty(), "{:?}", diff(&a, &b));

        let mut b = a.clone();
        b.fds.get_mut(&5).unwrap().pos = 9;
        if let FdDetail::Socket(s) = &mut b.fds.get_mut(&7).unwrap().detail {
            s.options.insert("SO_REUSEPORT", OptValue::Int(0));
            s.local = "127.0.0.1:6".into();
        }
        b.maps[0].vm_flags.push("rr".into());
        b.threads.get_mut(&7).unwrap().rseq = Ok(RseqConfig {
            abi_pointer: 0,
            abi_size: 0,
            signature: 0,
            flags: 0,
        });
        let e = b.fds.remove(&5).unwrap();
        b.fds.insert(6, e);
        b.locks[0].fds = vec![6];
        let d = diff(&a, &b);
        let want = [
            "fd 5: only before: file /d/data.db",
            "fd 6: only after: file /d/data.db",
            "fd 7: local address 127.0.0.1:5 -> 127.0.0.1:6",
            "fd 7: SO_REUSEPORT 1 -> 0",
            "(fds [5]): only before",
            "(fds [6]): only after",
            "mapping 1000 (/d/data.db): VmFlags [rd wr sh] -> [rd wr sh rr]",
            "thread 7: rseq at 0x1000 size 32 signature 0x53053053 flags 0 -> rseq not registered",
        ];
        for w in want {
            assert!(d.iter().any(|l| l.contains(w)), "{w:?} not in {d:#?}");
        }
        assert_eq!(d.len(), want.len(), "{d:#?}");

        // Narrowing: only fd 7, no threads, file mappings only.
        let keep: BTreeSet<i32> = [7].into();
        let (na, nb) = (a.only_fds(&keep), b.only_fds(&keep));
        assert!(na.locks.is_empty() && na.fds.len() == 1);
        let no_threads = BTreeSet::new();
        let d = diff(&na.only_threads(&no_threads), &nb.only_threads(&no_threads));
        assert_eq!(d.len(), 3, "{d:#?}"); // address, SO_REUSEPORT, VmFlags
    }

    #[test]
    fn kind_change_is_one_line() {
        let a = sample();
        let mut b = a.clone();
        let sock = b.fds.remove(&7).unwrap();
        b.fds.insert(5, sock);
        let d = diff(&a, &b);
        assert!(d.iter().any(|l| l.starts_with("fd 5: kind file")), "{d:#?}");
        assert!(
            d.iter()
                .any(|l| l.starts_with("fd 7: only before: socket inet stream mptcp listening")),
            "{d:#?}"
        );
    }

    /// The snapshot of this very process (no ptrace: a process cannot trace
    /// its own threads) sees a flock, an OFD lock on a range, and a socket's
    /// options through pidfd_getfd; a change made on purpose shows in the diff.
    #[test]
    fn own_process_locks_and_socket_options() {
        let dir = crate::fixture::temp_dir("kstate");
        let path = dir.path().join("f");
        let f1 = std::fs::File::create(&path).unwrap();
        let f2 = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        // SAFETY: flock on an open fd; no memory is passed.
        assert_eq!(unsafe { libc::flock(f1.as_raw_fd(), libc::LOCK_EX) }, 0);
        // SAFETY: libc::flock is plain data; all zeroes (l_pid 0, as
        // F_OFD_SETLK wants) is a valid value.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as i16;
        fl.l_start = 10;
        fl.l_len = 20;
        // SAFETY: fcntl with a pointer to fl, valid for reads and writes.
        let rc = unsafe { libc::fcntl(f2.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let lfd = l.as_raw_fd();
        let pid = std::process::id();
        let opts = Options { rseq: false };
        let s1 = Snapshot::take_with(pid, opts).unwrap();

        let p = path.to_str().unwrap();
        let locks = s1.locks_on(p);
        assert!(
            locks.iter().any(|h| h.line.kind == LockKind::Flock
                && h.fds == vec![f1.as_raw_fd()]
                && h.line.pid == i64::from(pid)),
            "{locks:#?}"
        );
        assert!(
            locks.iter().any(|h| h.line.kind == LockKind::Ofd
                && h.fds == vec![f2.as_raw_fd()]
                && (h.line.start, h.line.end) == (10, Some(29))),
            "{locks:#?}"
        );
        let e = s1.fd(lfd).unwrap();
        let s = e.socket().unwrap();
        assert_eq!(
            (s.family, s.sock_type, s.listening),
            (libc::AF_INET, SockType::Stream, true)
        );
        assert_eq!(s.local, l.local_addr().unwrap().to_string());
        assert_eq!(s.opt("SO_REUSEPORT"), Some(0));
        assert!(s1.threads.values().all(|t| t.rseq.is_err()));

        // Change on purpose: SO_REUSEPORT on, OFD lock released.
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads sizeof(int) bytes from &one.
        let rc = unsafe {
            libc::setsockopt(
                lfd,
                libc::SOL_SOCKET,
                libc::SO_REUSEPORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        drop(f2);
        let s2 = Snapshot::take_with(pid, opts).unwrap();
        let keep: BTreeSet<i32> = [f1.as_raw_fd(), lfd].into();
        // Mappings are left out: other test threads of this process allocate
        // (a malloc arena grows) while this runs.
        let d: Vec<String> = diff(&s1.only_fds(&keep), &s2.only_fds(&keep))
            .into_iter()
            .filter(|l| !l.starts_with("mapping "))
            .collect();
        assert_eq!(d, vec![format!("fd {lfd}: SO_REUSEPORT 0 -> 1")]);
        let d = diff(&s1, &s2);
        assert!(
            d.iter()
                .any(|l| l.contains("OFDLCK WRITE 10-29") && l.ends_with("only before")),
            "{d:#?}"
        );
    }

    /// `sleep` is linked against glibc, which registers rseq: ptrace reads it,
    /// and the process runs on untraced.
    #[test]
    fn rseq_of_a_glibc_child_and_it_keeps_running() {
        let mut child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        // Wait until it is past exec (its comm is sleep) and asleep.
        let t = Instant::now();
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains("(sleep) S"))
            .unwrap_or(true)
        {
            assert!(t.elapsed() < Duration::from_secs(10), "sleep did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        let s = Snapshot::take(pid).unwrap();
        assert_eq!(s.threads.len(), 1);
        let r = s.threads[&pid].rseq.clone().unwrap();
        assert!(r.registered(), "{r}");
        assert!(r.abi_size >= 32, "{r}");
        assert_eq!(r.signature, 0x53053053, "{r}"); // glibc's RSEQ_SIG on x86
        assert!(
            s.maps.iter().any(|m| m.path.contains("libc.so")),
            "{:#?}",
            s.maps
        );
        // Untraced, not stopped, and back asleep (the stop woke it briefly).
        let t = Instant::now();
        loop {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            assert!(status.contains("TracerPid:\t0"), "{status}");
            assert!(
                !status.contains("State:\tt") && !status.contains("State:\tT"),
                "{status}"
            );
            if status.contains("State:\tS") {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(5), "{status}");
            std::thread::sleep(Duration::from_millis(5));
        }
        let again = Snapshot::take(pid).unwrap();
        assert!(diff(&s, &again).is_empty(), "{:#?}", diff(&s, &again));
        child.kill().unwrap();
        child.wait().unwrap();
        let e = Snapshot::take(pid).unwrap_err();
        assert!(matches!(e, KstateError::Gone { .. }), "{e}");
    }
}
