//! The replication shell: `cs-driver primary`, `backup` and `status` (issue 9).
//!
//! The protocol lives, without I/O, in [`crate::replica`]; this module wraps it
//! with real sockets, threads and clocks:
//!
//! - [`primary`]: launches or attaches to the program, captures the epochs the
//!   [`crate::replica::primary::Primary`] machine asks for on a capture thread
//!   (the freeze never waits for async I/O), streams them over the
//!   [`crate::channel::Channel`], and runs the output-commit proxy.
//! - [`backup`]: accepts a primary, feeds the [`crate::replica::backup::Backup`]
//!   machine, applies committed epochs to the [`crate::replica::store::EpochStore`]
//!   and, on promotion, restores the program from it and serves the public address.
//! - [`proxy`]: the public address's TCP proxy, with or without output commit.
//! - [`status`]: the Prometheus-text status endpoint both drivers can serve.
//!
//! Both event loops work the same way: events (messages, link changes, captures,
//! output) arrive on one queue; the loop drains every queued event into the
//! machine, then gives it a `Tick`, and runs the actions in the order given. A
//! message that waited in the queue is fed before the tick that would otherwise
//! take its sender for silent.
//!
//! The library prints nothing: progress and the loud notices (unprotected,
//! promoted, fenced) are `tracing` events, which the CLI shows on stderr.

pub mod backup;
pub mod primary;
pub mod proxy;
pub mod status;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::channel::{ChannelError, KeyError};
use crate::error::CaptureError;
use crate::replica::msg::Compat;
use crate::replica::store::StoreError;
use crate::replica::ConfigError;
use crate::restore::RestoreError;

/// How often each loop gives its machine a tick.
pub const TICK: Duration = Duration::from_millis(5);

/// The events waiting on `rx`, at least one unless a [`TICK`] passes first: what
/// each driver loop feeds its state machine before the next tick.
pub(crate) async fn next_events<T>(rx: &smol::channel::Receiver<T>) -> Vec<T> {
    let first = smol::future::or(async { rx.recv().await.ok() }, async {
        smol::Timer::after(TICK).await;
        None
    })
    .await;
    let mut evs: Vec<T> = first.into_iter().collect();
    while let Ok(e) = rx.try_recv() {
        evs.push(e);
    }
    evs
}

/// The channel hello the primary sends: the program's own address, where the
/// restored program will listen again after a failover.
const HELLO_APP: &str = "app=";

/// What went wrong in a primary or backup shell.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("key file: {0}")]
    Key(#[from] KeyError),
    #[error("replication config: {0}")]
    Config(#[from] ConfigError),
    #[error("{what} {addr}: {source}")]
    Net {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("launching {program}: {detail}")]
    Launch { program: String, detail: String },
    #[error("capturing process {pid}: {source}")]
    Capture {
        pid: i32,
        #[source]
        source: CaptureError,
    },
    #[error("encoding epoch {epoch}: {detail}")]
    Encode { epoch: u64, detail: String },
    #[error("restoring the promoted epoch {epoch}: {source}")]
    Restore {
        epoch: u64,
        #[source]
        source: RestoreError,
    },
    #[error("asked to promote epoch {epoch}, but the store holds no committed epoch")]
    NothingToPromote { epoch: u64 },
    #[error("the backup's store: {0}")]
    Store(#[from] StoreError),
    #[error("channel: {0}")]
    Channel(#[from] ChannelError),
    #[error("fenced: a node serves at term {term}, newer than this primary's; the program was stopped and its held output dropped")]
    Fenced { term: u64 },
    #[error("{0}")]
    Usage(String),
}

/// What a restore of this machine's epochs needs, and what this machine offers:
/// the XSAVE layout and the kernel features a restore relies on. A primary sends
/// its own; a backup refuses one with a feature it lacks (conservatively: a
/// program that never uses MPTCP would not need it).
pub fn host_compat() -> Compat {
    let (size, mask) = crate::linux::sys::host_xsave_layout();
    Compat {
        xsave_mask: mask,
        xsave_size: size,
        kernel_features: crate::linux::features::restore_features(),
    }
}

/// A node id that differs between runs and machines (time and pid).
pub fn node_id() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let v = t ^ (u64::from(std::process::id()) << 40);
    v.max(1)
}

/// Milliseconds since `start` (the machines' clock).
fn ms_since(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// Parses `ADDR` as a socket address, naming the flag when it is not one.
pub fn parse_addr(flag: &str, s: &str) -> Result<SocketAddr, NodeError> {
    s.parse().map_err(|_| {
        NodeError::Usage(format!(
            "{flag} {s:?} is not an IP:PORT socket address (e.g. 127.0.0.1:7000)"
        ))
    })
}

/// A TCP listener on `addr`, bound with `IP_FREEBIND`: the address need not be
/// on this machine yet (a floating public address that moves here at failover).
pub fn listen_freebind(addr: SocketAddr) -> Result<async_net::TcpListener, NodeError> {
    use nix::sys::socket::{
        bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
        SockaddrStorage,
    };
    use std::os::fd::AsRawFd;
    let err = |e: nix::Error| NodeError::Net {
        what: "listening on",
        addr: addr.to_string(),
        source: std::io::Error::from(e),
    };
    let fam = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(fam, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map_err(err)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(err)?;
    setsockopt(&fd, sockopt::IpFreebind, &true).map_err(err)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(err)?;
    listen(&fd, Backlog::new(128).map_err(err)?).map_err(err)?;
    let std_listener = std::net::TcpListener::from(fd);
    async_net::TcpListener::try_from(std_listener).map_err(|e| NodeError::Net {
        what: "listening on",
        addr: addr.to_string(),
        source: e,
    })
}
