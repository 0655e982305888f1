//! Two "machines" on one host for replication tests (issue 9).
//!
//! A [`Machine`] is a named network namespace with its own loopback and one
//! interface, `eth0`, plugged into a per-pair switch: a bridge in a third
//! namespace. The test process (the client) has one veth into the same
//! switch, so it reaches both machines directly, and the machines reach each
//! other:
//!
//! ```text
//!   test process (its own netns)                 switch netns csnet<K>sw
//!   csnet<K>c  198.18.K.254/24 ──── veth ──── port-c ─┐
//!                                                      br0
//!   netns csnet<K>p: eth0 198.18.K.1/24 ─ veth ─ port-p ┤  (primary)
//!   netns csnet<K>b: eth0 198.18.K.2/24 ─ veth ─ port-b ┘  (backup)
//!   public (floating) address 198.18.K.100/32, on whichever machine serves
//! ```
//!
//! `K` is a slot, 1 to 254, held with an `flock` on `/run/cs-netns/slot-K`
//! for the pair's life. The slot gives every name and the subnet, so pairs of
//! parallel tests, in one test process or several, never share a name or an
//! address: the root namespace's routes are shared by every process, so a
//! subnet must be unique host-wide, which a pid-derived name alone would not
//! guarantee. A lock dies with its process, so a test killed before its
//! [`Drop`] leaves a slot that the next owner tears down first (its processes
//! killed, its links and namespaces deleted); the first [`Pair::new`] in a
//! process also sweeps every unheld slot. Names are short (`csnet254c` is the
//! only name in the shared namespace, 9 characters, under the 15 allowed).
//!
//! The addresses are in 198.18.0.0/15, the block set aside for network
//! benchmark tests (RFC 2544), so they do not meet real networks.
//!
//! Faults:
//! - [`Machine::kill_all`] SIGKILLs every process in the machine's namespace
//!   until none is left: the program crashed, the machine's kernel still
//!   answers (a connect is refused, open connections see FIN or RST).
//! - [`Machine::power_off`] first unplugs the machine ([`Machine::isolate`]),
//!   then kills everything: peers see silence, as when a machine dies.
//! - [`Machine::isolate`] / [`Machine::heal`]: the cable is pulled or put back
//!   (the switch port goes down; the machine's `eth0` stays up without
//!   carrier, so its packets are dropped, not refused).
//! - [`Pair::partition`] / [`Pair::heal_partition`]: the two machines cannot
//!   reach each other, the client still reaches both (bridge port isolation).
//!
//! Programs run in a machine through [`Machine::command`], which enters the
//! namespace with `setns` between fork and exec. See docs/testing-replication.md.

use std::collections::BTreeSet;
use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The first two octets of every harness address (198.18.0.0/15, RFC 2544).
pub const NET_PREFIX: [u8; 2] = [198, 18];
/// Host part of the primary's address.
pub const PRIMARY_HOST: u8 = 1;
/// Host part of the backup's address.
pub const BACKUP_HOST: u8 = 2;
/// Host part of the floating public address.
pub const PUBLIC_HOST: u8 = 100;
/// Host part of the client's (test process's) address.
pub const CLIENT_HOST: u8 = 254;
/// The highest slot; slots are 1..=MAX_SLOT.
pub const MAX_SLOT: u8 = 254;

/// Where the slot locks live (tmpfs: cleared at boot, like the namespaces).
const LOCK_DIR: &str = "/run/cs-netns";
/// Where `ip netns` keeps named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// The machines' interface name (inside their own namespaces).
const MACHINE_IF: &str = "eth0";
/// The bridge's name inside the switch namespace.
const BRIDGE: &str = "br0";
/// The switch ports (inside the switch namespace). Always given after `name`
/// or `dev`: `ip` reads a bare `b` as `broadcast`.
const CLIENT_PORT: &str = "port-c";
const PRIMARY_PORT: &str = "port-p";
const BACKUP_PORT: &str = "port-b";
/// How long [`Machine::kill_all`] waits for the processes to be gone.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the harness could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// Not running as root.
    #[error(
        "the network-namespace harness needs root (it creates namespaces, veths and a \
         bridge); this test runs as uid {euid}: run the tests as root"
    )]
    NotRoot {
        /// The effective uid.
        euid: u32,
    },
    /// No usable `ip` program.
    #[error(
        "the network-namespace harness needs `ip` from iproute2 ({program:?}: {why}): \
         install iproute2 (apt-get install iproute2)"
    )]
    IpMissing {
        /// The program that was tried.
        program: String,
        /// What went wrong.
        why: String,
    },
    /// An `ip` command failed.
    #[error("`ip {args}` failed ({status}): {stderr}")]
    Ip {
        /// Its arguments (and batch lines, if any).
        args: String,
        /// Its exit status.
        status: String,
        /// Its stderr.
        stderr: String,
    },
    /// A file-system or system-call operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Every slot is held.
    #[error("all {MAX_SLOT} network slots ({LOCK_DIR}/slot-*) are held by running tests")]
    NoFreeSlot,
    /// Processes survived SIGKILL for too long.
    #[error(
        "namespace {ns}: {} process(es) still there {waited:?} after the first SIGKILL \
         (pid, state, wchan): {survivors:?}", survivors.len()
    )]
    Survivors {
        /// The namespace.
        ns: String,
        /// How long it was given.
        waited: Duration,
        /// Who is left.
        survivors: Vec<(u32, String, String)>,
    },
    /// Something is left after a teardown.
    #[error("slot {slot}: after teardown, still present: {left:?}")]
    Leftovers {
        /// The slot.
        slot: u8,
        /// What is left.
        left: Vec<String>,
    },
}

fn io_err(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> NetnsError {
    let path = path.into();
    move |source| NetnsError::Io { what, path, source }
}

// ---------------------------------------------------------------------------
// Prerequisites and `ip`

/// Checks that the harness can run here: effective uid 0 and an iproute2 `ip`
/// in PATH. [`Pair::new`] calls it first, so a test fails with this message.
pub fn preflight() -> Result<(), NetnsError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    check_prerequisites(euid, OsStr::new("ip"))
}

fn check_prerequisites(euid: u32, ip_program: &OsStr) -> Result<(), NetnsError> {
    if euid != 0 {
        return Err(NetnsError::NotRoot { euid });
    }
    let program = ip_program.to_string_lossy().into_owned();
    let out = Command::new(ip_program)
        .arg("-V")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NetnsError::IpMissing {
            program: program.clone(),
            why: if e.kind() == io::ErrorKind::NotFound {
                format!(
                    "not found in PATH={}",
                    std::env::var("PATH").unwrap_or_default()
                )
            } else {
                e.to_string()
            },
        })?;
    let version = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !version.contains("iproute2") {
        return Err(NetnsError::IpMissing {
            program,
            why: format!(
                "`-V` printed {:?} ({}), not an iproute2 version",
                version.trim(),
                out.status
            ),
        });
    }
    Ok(())
}

/// Runs `ip [-n ns] args...`, or with `batch` lines fed to `ip -batch -`.
fn ip_run(ns: Option<&str>, args: &[&str], batch: &[String]) -> Result<String, NetnsError> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    cmd.args(args);
    if !batch.is_empty() {
        cmd.args(["-batch", "-"]);
    }
    let shown = {
        let mut words: Vec<String> = Vec::new();
        if let Some(ns) = ns {
            words.extend(["-n".into(), ns.to_string()]);
        }
        words.extend(args.iter().map(|a| a.to_string()));
        if !batch.is_empty() {
            words.push(format!("-batch - <<< {batch:?}"));
        }
        words.join(" ")
    };
    let mut child = cmd
        .stdin(if batch.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetnsError::IpMissing {
            program: "ip".into(),
            why: e.to_string(),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let text: String = batch.iter().map(|l| format!("{l}\n")).collect();
        // A write error (ip exited early) shows up in its status below.
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| NetnsError::Ip {
        args: shown.clone(),
        status: "not waited for".into(),
        stderr: e.to_string(),
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetnsError::Ip {
            args: shown,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn ip(ns: Option<&str>, args: &[&str]) -> Result<String, NetnsError> {
    ip_run(ns, args, &[])
}

fn ip_batch(ns: Option<&str>, lines: &[String]) -> Result<(), NetnsError> {
    ip_run(ns, &[], lines).map(drop)
}

/// Whether an interface of this name exists in the calling thread's namespace.
fn link_exists(name: &str) -> bool {
    let Ok(c) = CString::new(name) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

// ---------------------------------------------------------------------------
// Locks and slots

fn flock(file: &File, path: &Path, blocking: bool) -> Result<bool, NetnsError> {
    let op = if blocking {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    loop {
        // SAFETY: the fd is open (owned by `file`) for the whole call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if !blocking => return Ok(false),
            _ => return Err(io_err("locking", path)(e)),
        }
    }
}

fn lock_file(name: &str) -> Result<(File, PathBuf), NetnsError> {
    std::fs::create_dir_all(LOCK_DIR).map_err(io_err("creating", LOCK_DIR))?;
    let path = Path::new(LOCK_DIR).join(name);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err("opening", &path))?;
    Ok((f, path))
}

/// Runs `f` holding the host-wide setup lock (`ip netns add` races with itself
/// when the first namespaces of a boot are created in parallel).
fn with_setup_lock<T>(f: impl FnOnce() -> Result<T, NetnsError>) -> Result<T, NetnsError> {
    let (file, path) = lock_file("setup.lock")?;
    flock(&file, &path, true)?;
    let r = f();
    drop(file);
    r
}

/// A slot held by this process (its `flock`), released when dropped.
#[derive(Debug)]
struct SlotLock {
    slot: u8,
    _file: File,
}

impl SlotLock {
    fn try_lock(slot: u8) -> Result<Option<SlotLock>, NetnsError> {
        let (file, path) = lock_file(&format!("slot-{slot}"))?;
        Ok(flock(&file, &path, false)?.then_some(SlotLock { slot, _file: file }))
    }
}

/// The names a slot uses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Names {
    switch: String,
    primary: String,
    backup: String,
    /// The client's interface, in the test process's namespace.
    client_if: String,
}

impl Names {
    fn of(slot: u8) -> Names {
        Names {
            switch: format!("csnet{slot}sw"),
            primary: format!("csnet{slot}p"),
            backup: format!("csnet{slot}b"),
            client_if: format!("csnet{slot}c"),
        }
    }

    fn namespaces(&self) -> [&str; 3] {
        [&self.primary, &self.backup, &self.switch]
    }

    /// What of this slot exists now (namespace files, the client interface).
    fn present(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .namespaces()
            .iter()
            .filter(|n| Path::new(NETNS_DIR).join(n).exists())
            .map(|n| format!("netns {n}"))
            .collect();
        if link_exists(&self.client_if) {
            v.push(format!("link {}", self.client_if));
        }
        v
    }
}

fn addr(slot: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(NET_PREFIX[0], NET_PREFIX[1], slot, host)
}

/// Kills, deletes and checks everything of `slot`. Best effort: every step
/// runs; the first error is returned.
fn teardown(slot: u8) -> Result<(), NetnsError> {
    let names = Names::of(slot);
    let mut first: Option<NetnsError> = None;
    let mut note = |r: Result<(), NetnsError>| {
        if let Err(e) = r {
            first.get_or_insert(e);
        }
    };
    for ns in names.namespaces() {
        if Path::new(NETNS_DIR).join(ns).exists() {
            note(Netns::open(ns).and_then(|n| n.kill_all(KILL_TIMEOUT).map(drop)));
        }
    }
    // The client veth is the one name in the shared namespace: delete it
    // synchronously (with it goes its peer in the switch).
    if link_exists(&names.client_if) {
        note(ip(None, &["link", "del", &names.client_if]).map(drop));
    }
    for ns in names.namespaces() {
        if Path::new(NETNS_DIR).join(ns).exists() {
            // Deleting the machines' veths now (not when the kernel gets to
            // the namespace's cleanup) leaves nothing behind when this returns.
            let _ = ip(Some(ns), &["link", "del", MACHINE_IF]);
            note(ip(None, &["netns", "del", ns]).map(drop));
        }
    }
    let left = names.present();
    if !left.is_empty() {
        note(Err(NetnsError::Leftovers { slot, left }));
    }
    first.map_or(Ok(()), Err)
}

/// Tears down every slot that has leftovers and no owner (its test was killed
/// before it could clean up). Returns the slots swept.
pub fn sweep_stale() -> Result<Vec<u8>, NetnsError> {
    preflight()?;
    let mut swept = Vec::new();
    for slot in 1..=MAX_SLOT {
        if Names::of(slot).present().is_empty() {
            continue;
        }
        if let Some(lock) = SlotLock::try_lock(slot)? {
            teardown(slot)?;
            swept.push(slot);
            drop(lock);
        }
    }
    Ok(swept)
}

static SWEPT: OnceLock<()> = OnceLock::new();

fn acquire_slot() -> Result<SlotLock, NetnsError> {
    SWEPT.get_or_init(|| {
        // Best effort: a slot that cannot be swept now is torn down by its
        // next owner (below), which reports the error.
        let _ = sweep_stale();
    });
    for slot in 1..=MAX_SLOT {
        if let Some(lock) = SlotLock::try_lock(slot)? {
            if !Names::of(slot).present().is_empty() {
                teardown(slot)?;
            }
            return Ok(lock);
        }
    }
    Err(NetnsError::NoFreeSlot)
}

// ---------------------------------------------------------------------------
// Namespaces and processes

/// An open named network namespace.
#[derive(Debug, Clone)]
struct Netns {
    name: String,
    /// Kept open so commands can `setns` into it (and to identify it).
    fd: Arc<OwnedFd>,
    /// (st_dev, st_ino) of the nsfs inode.
    id: (u64, u64),
}

impl Netns {
    fn open(name: &str) -> Result<Netns, NetnsError> {
        let path = Path::new(NETNS_DIR).join(name);
        let f = File::open(&path).map_err(io_err("opening", &path))?;
        let m = f.metadata().map_err(io_err("stat", &path))?;
        Ok(Netns {
            name: name.to_string(),
            fd: Arc::new(OwnedFd::from(f)),
            id: (m.dev(), m.ino()),
        })
    }

    /// Pids of live processes with a thread in this namespace (zombies have
    /// no namespace link and are not listed), never this process.
    fn pids(&self) -> Vec<u32> {
        let me = std::process::id();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut v: Vec<u32> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&p| p != me && self.holds(p))
            .collect();
        v.sort_unstable();
        v
    }

    /// Whether any thread of `pid` is in this namespace. Every thread is
    /// looked at: the leader may be a zombie while others run, and a thread
    /// may have entered a namespace on its own.
    fn holds(&self, pid: u32) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.flatten().any(|t| {
            std::fs::metadata(t.path().join("ns/net")).is_ok_and(|m| (m.dev(), m.ino()) == self.id)
        })
    }

    /// SIGKILLs every process in the namespace, again and again, until none
    /// is left (a process being restored may spawn more while it dies).
    /// Returns the pids signalled.
    fn kill_all(&self, timeout: Duration) -> Result<Vec<u32>, NetnsError> {
        let start = Instant::now();
        let mut killed = BTreeSet::new();
        let mut pause = Duration::from_micros(500);
        loop {
            let found = self.pids();
            if found.is_empty() {
                return Ok(killed.into_iter().collect());
            }
            if start.elapsed() > timeout {
                return Err(NetnsError::Survivors {
                    ns: self.name.clone(),
                    waited: start.elapsed(),
                    survivors: found.iter().map(|&p| describe(p)).collect(),
                });
            }
            for pid in found {
                if self.kill(pid) {
                    killed.insert(pid);
                }
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// SIGKILLs `pid` if it is (still) in this namespace, through a pidfd so a
    /// reused pid is never signalled: the pidfd is opened first, the
    /// namespace checked next, and the signal goes to the pidfd's process,
    /// which fails if that process died (its pid may then name another).
    fn kill(&self, pid: u32) -> bool {
        let Ok(pid_t) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
        // no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid_t, 0) };
        let Ok(fd) = RawFd::try_from(fd) else {
            return false;
        };
        if fd < 0 {
            return false;
        }
        // SAFETY: `fd` was just returned by pidfd_open and is owned by nobody else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
        if !self.holds(pid) {
            return false;
        }
        // SAFETY: pidfd_send_signal on an open pidfd with a null siginfo (the
        // kernel fills it in) and no flags; no memory is passed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        rc == 0
    }
}

/// (pid, state line, wchan) for an error message.
fn describe(pid: u32) -> (u32, String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    (
        pid,
        format!("{} {}", field("Name:"), field("State:")),
        wchan,
    )
}

/// `setns(fd, CLONE_NEWNET)` for the calling thread.
fn enter_netns(fd: RawFd) -> io::Result<()> {
    // SAFETY: setns takes an fd and a flag; no memory is passed. An fd that is
    // not a network namespace makes it fail with EINVAL, reported as an error.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

// ---------------------------------------------------------------------------
// Machine

/// Which machine of a [`Pair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Starts as the serving machine.
    Primary,
    /// Starts as the standby.
    Backup,
}

/// One "machine": a network namespace with loopback and `eth0` on the pair's
/// switch. Owned by its [`Pair`], which tears it down.
#[derive(Debug)]
pub struct Machine {
    role: Role,
    ns: Netns,
    addr: Ipv4Addr,
    public: Ipv4Addr,
    /// The switch namespace and this machine's port in it.
    switch: String,
    port: &'static str,
    /// The client's interface (its neighbour entry for the public address is
    /// flushed when the address moves).
    client_if: String,
}

impl Machine {
    /// Which machine this is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The namespace's name (`ip netns` / `/run/netns`).
    pub fn name(&self) -> &str {
        &self.ns.name
    }

    /// The machine's own address on `eth0`, reachable from the client and the
    /// other machine.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The pair's floating public address (served by whichever machine has
    /// claimed it).
    pub fn public_addr(&self) -> Ipv4Addr {
        self.public
    }

    /// The name of the machine's interface inside its namespace.
    pub fn interface(&self) -> &'static str {
        MACHINE_IF
    }

    /// A command that runs `program` inside this machine: the child enters the
    /// namespace (`setns`) between fork and exec. It keeps the mount
    /// namespace, file system and pid of the test process's view; only the
    /// network is the machine's (`/sys/class/net` still shows the test's).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        self.enter(&mut cmd);
        cmd
    }

    /// Makes an existing command run inside this machine (as [`Machine::command`]).
    pub fn enter<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        let fd = Arc::clone(&self.ns.fd);
        // SAFETY: the hook runs in the forked child before exec, where only
        // async-signal-safe work is allowed: it makes one system call (setns)
        // on an fd number read from the Arc, which the closure keeps open, and
        // builds an io::Error from errno without allocating.
        unsafe {
            cmd.pre_exec(move || enter_netns(fd.as_raw_fd()));
        }
        cmd
    }

    /// Pids of the live processes in this machine (zombies excluded).
    pub fn pids(&self) -> Vec<u32> {
        self.ns.pids()
    }

    /// "Machine death" of the processes: SIGKILLs everything in the
    /// namespace, repeatedly, until nothing is left (a zombie counts as gone:
    /// it holds no sockets and no namespace), up to [`KILL_TIMEOUT`]. The
    /// machine's kernel stays up: connections to it are refused and open ones
    /// see the kernel's FIN/RST. Returns the pids signalled.
    pub fn kill_all(&self) -> Result<Vec<u32>, NetnsError> {
        self.ns.kill_all(KILL_TIMEOUT)
    }

    /// As [`Machine::kill_all`], waiting up to `timeout`.
    pub fn kill_all_within(&self, timeout: Duration) -> Result<Vec<u32>, NetnsError> {
        self.ns.kill_all(timeout)
    }

    /// A machine's death as the others see it: unplug it ([`Machine::isolate`]),
    /// then kill everything in it. No FIN or RST reaches anyone. It stays
    /// unplugged until [`Machine::heal`]; its addresses stay configured.
    pub fn power_off(&self) -> Result<Vec<u32>, NetnsError> {
        self.isolate()?;
        self.kill_all()
    }

    /// Pulls the machine's cable: its switch port goes down, so nothing gets in
    /// or out; senders on both sides see silence (no error, no refusal).
    pub fn isolate(&self) -> Result<(), NetnsError> {
        ip(
            Some(&self.switch),
            &["link", "set", "dev", self.port, "down"],
        )
        .map(drop)
    }

    /// Puts the cable back (undoes [`Machine::isolate`]).
    pub fn heal(&self) -> Result<(), NetnsError> {
        ip(Some(&self.switch), &["link", "set", "dev", self.port, "up"]).map(drop)
    }

    /// Whether the machine is unplugged.
    pub fn is_isolated(&self) -> Result<bool, NetnsError> {
        let out = ip(
            Some(&self.switch),
            &["-o", "link", "show", "dev", self.port],
        )?;
        Ok(!link_flags(&out).contains(&"UP"))
    }

    /// Adds the public address to this machine's `eth0` (idempotent), and
    /// makes the client forget which machine had it, so its next packet asks
    /// again (ARP). The other machine keeps the address if it has it: take it
    /// away with [`Machine::release_public`], or power that machine off.
    pub fn claim_public(&self) -> Result<(), NetnsError> {
        let a = format!("{}/32", self.public);
        ip(
            Some(self.name()),
            &["addr", "replace", &a, "dev", MACHINE_IF],
        )?;
        let p = self.public.to_string();
        ip(None, &["neigh", "flush", "to", &p, "dev", &self.client_if]).map(drop)
    }

    /// Removes the public address from this machine, if it has it.
    pub fn release_public(&self) -> Result<(), NetnsError> {
        if !self.holds_public()? {
            return Ok(());
        }
        let a = format!("{}/32", self.public);
        ip(Some(self.name()), &["addr", "del", &a, "dev", MACHINE_IF]).map(drop)
    }

    /// Whether this machine has the public address.
    pub fn holds_public(&self) -> Result<bool, NetnsError> {
        let out = ip(
            Some(self.name()),
            &["-o", "-4", "addr", "show", "dev", MACHINE_IF],
        )?;
        let want = format!("inet {}/32 ", self.public);
        Ok(out.lines().any(|l| l.contains(&want)))
    }
}

/// The flags of a one-line `ip -o link show` (between `<` and `>`).
fn link_flags(line: &str) -> Vec<&str> {
    line.split_once('<')
        .and_then(|(_, r)| r.split_once('>'))
        .map(|(f, _)| f.split(',').collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Pair

/// Two machines on one switch with the test process as their client. Dropping
/// it (also while a test panics) kills every process in both machines and
/// deletes the namespaces, veths and bridge; [`Pair::close`] does the same and
/// reports failures.
#[derive(Debug)]
pub struct Pair {
    primary: Machine,
    backup: Machine,
    names: Names,
    torn_down: bool,
    // Last: the slot is released only after the teardown (in Drop).
    slot: SlotLock,
}

impl Pair {
    /// Builds a pair in a free slot. Fails with [`NetnsError::NotRoot`] or
    /// [`NetnsError::IpMissing`] when the harness cannot run here.
    pub fn new() -> Result<Pair, NetnsError> {
        preflight()?;
        let slot = acquire_slot()?;
        let k = slot.slot;
        match Self::build(k) {
            Ok((primary, backup)) => Ok(Pair {
                primary,
                backup,
                names: Names::of(k),
                torn_down: false,
                slot,
            }),
            Err(e) => {
                let _ = teardown(k);
                Err(e)
            }
        }
    }

    fn build(k: u8) -> Result<(Machine, Machine), NetnsError> {
        let n = Names::of(k);
        with_setup_lock(|| {
            for ns in n.namespaces() {
                ip(None, &["netns", "add", ns])?;
            }
            Ok(())
        })?;
        let me = std::process::id().to_string();
        let mut sw = vec![
            format!("link add {BRIDGE} type bridge stp_state 0"),
            format!("link set {BRIDGE} up"),
            format!(
                "link add name {CLIENT_PORT} type veth peer name {} netns {me}",
                n.client_if
            ),
        ];
        for (port, ns) in [(PRIMARY_PORT, &n.primary), (BACKUP_PORT, &n.backup)] {
            sw.push(format!(
                "link add name {port} type veth peer name {MACHINE_IF} netns {ns}"
            ));
        }
        for port in [CLIENT_PORT, PRIMARY_PORT, BACKUP_PORT] {
            sw.push(format!("link set dev {port} master {BRIDGE} up"));
        }
        ip_batch(Some(&n.switch), &sw)?;
        for (ns, host) in [(&n.primary, PRIMARY_HOST), (&n.backup, BACKUP_HOST)] {
            ip_batch(
                Some(ns),
                &[
                    "link set lo up".into(),
                    format!("addr add {}/24 dev {MACHINE_IF}", addr(k, host)),
                    format!("link set {MACHINE_IF} up"),
                ],
            )?;
        }
        ip_batch(
            None,
            &[
                format!("addr add {}/24 dev {}", addr(k, CLIENT_HOST), n.client_if),
                format!("link set {} up", n.client_if),
            ],
        )?;
        tune_neighbours(&n.client_if)?;
        let machine = |role, name: &str, host, port| -> Result<Machine, NetnsError> {
            Ok(Machine {
                role,
                ns: Netns::open(name)?,
                addr: addr(k, host),
                public: addr(k, PUBLIC_HOST),
                switch: n.switch.clone(),
                port,
                client_if: n.client_if.clone(),
            })
        };
        Ok((
            machine(Role::Primary, &n.primary, PRIMARY_HOST, PRIMARY_PORT)?,
            machine(Role::Backup, &n.backup, BACKUP_HOST, BACKUP_PORT)?,
        ))
    }

    /// The machine that starts as primary.
    pub fn primary(&self) -> &Machine {
        &self.primary
    }

    /// The machine that starts as backup.
    pub fn backup(&self) -> &Machine {
        &self.backup
    }

    /// The slot (third octet of every address of this pair).
    pub fn slot(&self) -> u8 {
        self.slot.slot
    }

    /// The floating public address clients use.
    pub fn public_addr(&self) -> Ipv4Addr {
        addr(self.slot.slot, PUBLIC_HOST)
    }

    /// The test process's address on the pair's switch.
    pub fn client_addr(&self) -> Ipv4Addr {
        addr(self.slot.slot, CLIENT_HOST)
    }

    /// The test process's interface to the switch.
    pub fn client_interface(&self) -> &str {
        &self.names.client_if
    }

    /// The names of the pair's three namespaces (primary, backup, switch).
    pub fn namespace_names(&self) -> [String; 3] {
        [
            self.names.primary.clone(),
            self.names.backup.clone(),
            self.names.switch.clone(),
        ]
    }

    /// Cuts the machines off from each other; the client still reaches both
    /// (the two machine ports become isolated bridge ports, which forward only
    /// to and from the client's port). Packets between them are dropped.
    pub fn partition(&self) -> Result<(), NetnsError> {
        self.set_isolated("on")
    }

    /// Undoes [`Pair::partition`].
    pub fn heal_partition(&self) -> Result<(), NetnsError> {
        self.set_isolated("off")
    }

    fn set_isolated(&self, on: &str) -> Result<(), NetnsError> {
        let lines: Vec<String> = [PRIMARY_PORT, BACKUP_PORT]
            .iter()
            .map(|p| format!("link set dev {p} type bridge_slave isolated {on}"))
            .collect();
        ip_batch(Some(&self.names.switch), &lines)
    }

    /// Tears everything down now (as Drop does) and reports what failed.
    pub fn close(mut self) -> Result<(), NetnsError> {
        self.torn_down = true;
        teardown(self.slot.slot)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if !self.torn_down {
            self.torn_down = true;
            // Errors cannot be reported from Drop; whatever is left is torn
            // down by the slot's next owner or the next process's sweep.
            let _ = teardown(self.slot.slot);
        }
    }
}

/// Makes the client re-resolve a neighbour that went quiet within about a
/// second or two, instead of ~30 s plus unicast probes: when the public
/// address moves without the harness (a promoted backup adds it itself), the
/// client's ARP entry still names the old machine.
fn tune_neighbours(ifname: &str) -> Result<(), NetnsError> {
    let dir = Path::new("/proc/sys/net/ipv4/neigh").join(ifname);
    for (k, v) in [
        ("base_reachable_time_ms", "1000"),
        ("delay_first_probe_time", "1"),
        ("ucast_solicit", "1"),
        ("mcast_resolicit", "3"),
    ] {
        let p = dir.join(k);
        std::fs::write(&p, v).map_err(io_err("writing", &p))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_do_not_collide() {
        let mut seen = BTreeSet::new();
        for k in 1..=MAX_SLOT {
            let n = Names::of(k);
            // Only the client interface lives in a shared namespace; IFNAMSIZ is 16.
            assert!(n.client_if.len() <= 15, "{}", n.client_if);
            for name in n.namespaces().into_iter().chain([n.client_if.as_str()]) {
                assert!(seen.insert(name.to_string()), "{name} used twice");
            }
        }
        // Machine-side names are fixed and short.
        assert!(MACHINE_IF.len() <= 15 && BRIDGE.len() <= 15);
    }

    #[test]
    fn addresses_are_distinct_per_slot_and_role() {
        let mut seen = BTreeSet::new();
        for k in 1..=MAX_SLOT {
            for h in [PRIMARY_HOST, BACKUP_HOST, PUBLIC_HOST, CLIENT_HOST] {
                let a = addr(k, h);
                assert!(seen.insert(a), "{a} twice");
                // Inside the RFC 2544 block and in the slot's own /24.
                assert_eq!(a.octets()[..2], NET_PREFIX);
                assert_eq!(a.octets()[2], k);
            }
        }
    }

    #[test]
    fn prerequisites_are_named() {
        let e = check_prerequisites(1000, OsStr::new("ip")).unwrap_err();
        assert!(matches!(e, NetnsError::NotRoot { euid: 1000 }), "{e}");
        assert!(e.to_string().contains("root"), "{e}");
        let e = check_prerequisites(0, OsStr::new("cs-no-such-ip-program")).unwrap_err();
        assert!(matches!(e, NetnsError::IpMissing { .. }), "{e}");
        assert!(e.to_string().contains("iproute2"), "{e}");
        // A program that runs but is not iproute2's ip.
        let e = check_prerequisites(0, OsStr::new("true")).unwrap_err();
        assert!(e.to_string().contains("not an iproute2"), "{e}");
    }

    #[test]
    fn link_flags_are_parsed() {
        let l = "3: p@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master br0";
        assert_eq!(link_flags(l), ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"]);
        assert!(!link_flags("3: p@if2: <BROADCAST,MULTICAST> mtu").contains(&"UP"));
        assert!(link_flags("garbage").is_empty());
    }
}
