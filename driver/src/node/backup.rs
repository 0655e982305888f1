//! `cs-driver backup`: hold a primary's committed state and take over on its loss.
//!
//! The accept task runs the channel handshake for every connection (role backup)
//! and refuses, with a logged reason, anything without the key; a connection's
//! reader decodes messages (a message that does not decode closes that
//! connection, nothing of it is used) and a writer task sends the queued replies.
//! The loop (this thread) feeds the [`Backup`] machine and runs its actions:
//! staging in memory, and on `Commit` the verified apply to the [`EpochStore`]
//! (on a blocking thread) before the `Ack` that follows it is sent.
//!
//! If the store refuses an epoch whose transfer checksum matched (a primary bug,
//! or a payload altered before it was framed), the commit did not happen: this
//! backup drops its store and machine, closes its connections and starts empty,
//! so the primary reconnects and sends a new base. Nothing it acked is lost: the
//! refused epoch was never acked.
//!
//! On `Promote` it restores the store's committed epoch with
//! [`crate::restore::restore`] (lazy fill), and serves the public address
//! ([`super::proxy::serve_plain`]) towards the program's own address, which the
//! primary sent in its channel hello (`app=ADDR`). After that it keeps listening as a
//! serving node (stale primaries are refused), and runs unprotected: accepting a
//! new backup (re-protection) is not built yet.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smol::channel::Sender;

use super::primary::{protect, Protect};
use super::proxy::Outbox;
use super::status::{SharedStats, Stats};
use super::{host_compat, ms_since, next_events, node_id, NodeError, HELLO_APP};
use crate::channel::{self, Channel, Role};
use crate::replica::backup::{BAction, BInput, Backup};
use crate::replica::msg::{self, EpochKind, Msg};
use crate::replica::primary::PrimaryStart;
use crate::replica::store::{Applied, EpochStore, StoreError};
use crate::replica::Config;
use crate::restore::{self, RestoreOptions};

/// What `cs-driver backup` was given.
#[derive(Debug, Clone)]
pub struct BackupArgs {
    pub listen: SocketAddr,
    pub key: PathBuf,
    pub public: Option<SocketAddr>,
    pub state_dir: Option<PathBuf>,
    pub cfg: Config,
    pub status: Option<SocketAddr>,
    pub restore: RestoreOptions,
    /// After a promotion, protect the program by streaming its epochs to a backup
    /// at this address (re-protection); without it the promoted program runs
    /// unprotected.
    pub peer: Option<String>,
    /// Capture with write tracking (deltas) once re-protecting.
    pub precopy: bool,
}

enum Ev {
    Conn {
        id: u64,
        q: Sender<Vec<u8>>,
        close: Sender<()>,
        app: Option<SocketAddr>,
        peer: SocketAddr,
    },
    Msg(u64, Msg),
    Down(u64, String),
    ProgramExited(i32),
    /// The apply thread of generation `gen` applied (or refused) an epoch.
    Applied {
        gen: u64,
        term: u64,
        epoch: u64,
        kind: EpochKind,
        result: Result<Applied, StoreError>,
    },
    /// Re-protection ended while the program runs on (fenced, or an error).
    ProtectionEnded(NodeError),
}

struct Conn {
    q: Sender<Vec<u8>>,
    close: Sender<()>,
    app: Option<SocketAddr>,
}

/// Runs the backup until its promoted program ends (its exit code) or an error.
pub fn run(a: BackupArgs) -> Result<i32, NodeError> {
    let key = channel::key::load(&a.key)?;
    let peer_key = key.clone();
    a.cfg.check()?;
    restore::check_privileges().map_err(|e| NodeError::Restore {
        epoch: 0,
        source: e,
    })?;
    let stats: SharedStats = Arc::new(Mutex::new(Stats::new("backup")));
    if let Some(s) = a.status {
        super::status::start(s, stats.clone())?;
    }
    let new_store = || -> Result<EpochStore, NodeError> {
        let mut s = EpochStore::new();
        if let Some(d) = &a.state_dir {
            std::fs::create_dir_all(d).map_err(|e| NodeError::Net {
                what: "creating the state dir",
                addr: d.display().to_string(),
                source: e,
            })?;
            s.persist_to(d)?;
        }
        Ok(s)
    };
    let listener =
        smol::block_on(async_net::TcpListener::bind(a.listen)).map_err(|e| NodeError::Net {
            what: "listening on",
            addr: a.listen.to_string(),
            source: e,
        })?;
    tracing::info!(listen = %a.listen, "backup waiting for a primary");
    let (ev_tx, ev_rx) = smol::channel::unbounded::<Ev>();
    smol::spawn(accept_task(listener, key, ev_tx.clone())).detach();
    // Epochs are applied on their own thread, so this loop goes on receiving,
    // staging and heartbeating while a large base is verified and applied.
    let mut gen = 1u64;
    let mut applier = Applier::start(new_store()?, gen, ev_tx.clone())?;
    // The newest epoch the store applied (its term and number), and the Acks
    // waiting for an apply: an Ack, or a heartbeat's committed epoch, never
    // runs ahead of the store.
    let mut applied: Option<(u64, u64)> = None;
    let mut held_acks: Vec<(Option<u64>, u64, u64)> = Vec::new();

    let start = Instant::now();
    let compat = host_compat();
    let me = node_id();
    let mut m = Backup::new(a.cfg.clone(), me, compat)?;
    let mut conns: HashMap<u64, Conn> = HashMap::new();
    // The connection of the last Welcome: where a tick's sends go.
    let mut current: Option<u64> = None;
    let mut staged: Option<(u64, Vec<u8>)> = None;
    let mut app: Option<SocketAddr> = None;
    let mut acts = Vec::new();
    let mut restored_pid: Option<i32> = None;
    let send_to = |conns: &HashMap<u64, Conn>, to: Option<u64>, msg: &Msg| {
        if let Some(c) = to.and_then(|id| conns.get(&id)) {
            if let Ok(b) = msg.to_bytes() {
                let _ = c.q.try_send(b);
            }
        }
    };
    smol::block_on(async {
        loop {
            let evs = next_events(&ev_rx).await;
            let mut inputs: Vec<(Option<u64>, BInput)> = Vec::new();
            for e in evs {
                match e {
                    Ev::Conn {
                        id,
                        q,
                        close,
                        app,
                        peer,
                    } => {
                        tracing::info!(%peer, "a primary connected (channel authenticated)");
                        conns.insert(id, Conn { q, close, app });
                    }
                    // A connection closed by a reset sends nothing more in.
                    Ev::Msg(id, msg) if conns.contains_key(&id) => {
                        inputs.push((Some(id), BInput::Received(msg)))
                    }
                    Ev::Msg(..) => {}
                    Ev::Down(id, why) => {
                        conns.remove(&id);
                        tracing::info!("a primary's connection ended: {why}");
                        if current == Some(id) {
                            current = None;
                            inputs.push((None, BInput::Disconnected));
                        }
                    }
                    Ev::Applied { gen: g, .. } if g != gen => {}
                    Ev::Applied {
                        term,
                        kind,
                        result: Ok(done),
                        ..
                    } => {
                        applied = Some((term, done.epoch));
                        {
                            let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                            s.term = term;
                            s.epoch = done.epoch;
                            s.acked = done.epoch;
                            s.epochs += 1;
                            if kind == EpochKind::Full {
                                s.full_epochs += 1;
                            }
                        }
                        if kind == EpochKind::Full {
                            tracing::info!(
                                epoch = done.epoch,
                                term,
                                pages = done.stored_pages,
                                "committed a full base"
                            );
                        } else {
                            tracing::debug!(
                                epoch = done.epoch,
                                term,
                                pages = done.pages_written,
                                "committed a delta"
                            );
                        }
                        held_acks.retain(|&(to, t, e)| {
                            if t == term && e <= done.epoch {
                                send_to(&conns, to, &Msg::Ack { term: t, epoch: e });
                                false
                            } else {
                                true
                            }
                        });
                    }
                    Ev::Applied {
                        epoch,
                        result: Err(e),
                        ..
                    } => {
                        tracing::error!(epoch, "the store refused epoch {epoch} after its transfer checksum matched: {e}; dropping this backup's state and starting empty (the primary will send a new base)");
                        for (_, c) in conns.drain() {
                            let _ = c.close.try_send(());
                        }
                        current = None;
                        staged = None;
                        gen += 1;
                        applier = Applier::start(new_store()?, gen, ev_tx.clone())?;
                        applied = None;
                        held_acks.clear();
                        m = Backup::new(a.cfg.clone(), me, compat)?;
                        *stats.lock().unwrap_or_else(|e| e.into_inner()) = Stats::new("backup");
                        inputs.clear();
                    }
                    Ev::ProgramExited(code) => {
                        tracing::info!("the restored program ended (exit code {code})");
                        return Ok(code);
                    }
                    Ev::ProtectionEnded(e @ NodeError::Fenced { .. }) => return Err(e),
                    Ev::ProtectionEnded(e) => {
                        tracing::error!("UNPROTECTED: re-protection ended: {e}; the program is served without a backup");
                    }
                }
            }
            inputs.push((None, BInput::Tick));
            for (from, input) in inputs {
                m.step(ms_since(start), input, &mut acts);
                let batch: Vec<BAction> = std::mem::take(&mut acts);
                for act in batch {
                    match act {
                        BAction::Send(msg) => {
                            if matches!(msg, Msg::Welcome { .. }) {
                                current = from;
                                if let Some(c) = from.and_then(|id| conns.get(&id)) {
                                    app = c.app;
                                }
                            }
                            let to = from.or(current);
                            if let Msg::Refuse { reason } = &msg {
                                tracing::warn!("REFUSED a primary: {reason}");
                            }
                            let msg = match msg {
                                // Held until the store applied it.
                                Msg::Ack { term, epoch }
                                    if applied.is_none_or(|x| x < (term, epoch)) =>
                                {
                                    held_acks.push((to, term, epoch));
                                    continue;
                                }
                                // A heartbeat acknowledges only what the store applied.
                                Msg::Heartbeat { term, epoch } => Msg::Heartbeat {
                                    term,
                                    epoch: match applied {
                                        Some((t, e)) if t == term => epoch.min(e),
                                        _ => 0,
                                    },
                                },
                                msg => msg,
                            };
                            send_to(&conns, to, &msg);
                        }
                        BAction::StageBegin { epoch, .. } => staged = Some((epoch, Vec::new())),
                        BAction::StageData {
                            epoch,
                            offset,
                            bytes,
                        } => {
                            if let Some((e, buf)) = staged.as_mut() {
                                if *e == epoch && buf.len() as u64 == offset {
                                    buf.extend_from_slice(&bytes);
                                }
                            }
                        }
                        BAction::StageAbort { epoch } => {
                            if let Some((_, b)) = staged.take() {
                                tracing::warn!(epoch, "the staged epoch {epoch} is discarded ({} bytes received), never applied", b.len());
                            }
                        }
                        BAction::Commit { term, epoch, kind } => {
                            let bytes = match staged.take() {
                                Some((e, b)) if e == epoch => b,
                                _ => Vec::new(),
                            };
                            applier.apply(term, epoch, kind, bytes);
                        }
                        BAction::Promote { term, epoch } => {
                            // Every apply asked for so far is done (or refused, which
                            // left the store as it was) when the store comes back.
                            let st = applier.take_store().await;
                            // Results still queued from the finished apply thread
                            // are of no use to a serving node.
                            gen += 1;
                            let epoch = match st.as_ref().and_then(|s| s.committed()) {
                                Some(e) if e != epoch => {
                                    tracing::warn!(epoch, "epoch {epoch} was never applied here (the store refused it); promoting the store's epoch {e}, the newest this backup acknowledged");
                                    e
                                }
                                _ => epoch,
                            };
                            let pid = promote(
                                &a,
                                &peer_key,
                                st,
                                app,
                                (term, epoch),
                                &stats,
                                ev_tx.clone(),
                            )
                            .await?;
                            restored_pid = Some(pid);
                        }
                        BAction::CannotPromote { why } => {
                            tracing::warn!(
                                "the primary is silent, and this backup cannot take over: {why}"
                            );
                        }
                        BAction::Superseded { term } => {
                            tracing::error!(term, "SUPERSEDED: a primary of a newer term exists; stopping the program this node serves");
                            if let Some(p) = restored_pid.take() {
                                let _ = crate::linux::sys::kill(p, libc::SIGKILL);
                            }
                            return Err(NodeError::Fenced { term });
                        }
                    }
                }
            }
        }
    })
}

/// The thread that applies committed epochs to the [`EpochStore`], in order.
struct Applier {
    jobs: std::sync::mpsc::Sender<Job>,
}

enum Job {
    Apply {
        term: u64,
        epoch: u64,
        kind: EpochKind,
        bytes: Vec<u8>,
    },
    /// Hand the store over (after every apply before it) and stop.
    Take(smol::channel::Sender<EpochStore>),
}

impl Applier {
    /// Starts the thread; its results come back as [`Ev::Applied`] of `gen`.
    fn start(mut store: EpochStore, gen: u64, ev: Sender<Ev>) -> Result<Applier, NodeError> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("apply".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    match job {
                        Job::Apply {
                            term,
                            epoch,
                            kind,
                            bytes,
                        } => {
                            let result = store.apply(&bytes);
                            drop(bytes);
                            let _ = ev.send_blocking(Ev::Applied {
                                gen,
                                term,
                                epoch,
                                kind,
                                result,
                            });
                        }
                        Job::Take(back) => {
                            let _ = back.send_blocking(store);
                            return;
                        }
                    }
                }
            })
            .map_err(|e| NodeError::Launch {
                program: "the apply thread".into(),
                detail: e.to_string(),
            })?;
        Ok(Applier { jobs: tx })
    }

    fn apply(&self, term: u64, epoch: u64, kind: EpochKind, bytes: Vec<u8>) {
        let _ = self.jobs.send(Job::Apply {
            term,
            epoch,
            kind,
            bytes,
        });
    }

    /// The store once every apply asked for before is done; `None` if the thread
    /// is gone.
    async fn take_store(&self) -> Option<EpochStore> {
        let (tx, rx) = smol::channel::bounded(1);
        self.jobs.send(Job::Take(tx)).ok()?;
        rx.recv().await.ok()
    }
}

async fn promote(
    a: &BackupArgs,
    key: &channel::Key,
    store: Option<EpochStore>,
    app: Option<SocketAddr>,
    (term, epoch): (u64, u64),
    stats: &SharedStats,
    ev: Sender<Ev>,
) -> Result<i32, NodeError> {
    let t = Instant::now();
    tracing::warn!(
        epoch,
        term,
        "the primary is silent: PROMOTING epoch {epoch} as term {term}"
    );
    let st = store.ok_or(NodeError::NothingToPromote { epoch })?;
    let opts = a.restore.clone();
    let restored = smol::unblock(move || {
        let (e, pages) = st
            .into_restorable()
            .ok_or(NodeError::NothingToPromote { epoch })?;
        let ns_pid = e.process.pid;
        restore::restore(&e, pages, &opts)
            .map(|r| (r, ns_pid))
            .map_err(|source| NodeError::Restore { epoch, source })
    })
    .await;
    let (mut r, ns_pid) = restored?;
    let host_pid = r.host_pid;
    // Every page must be in before the program can be captured again: the fill's
    // userfaultfd and the capture's write tracker cannot share a mapping.
    let (filled_tx, filled_rx) = std::sync::mpsc::channel::<bool>();
    let lazy = r.lazy.take();
    std::thread::spawn(move || {
        let ok = match lazy.map(|l| l.wait()) {
            Some(Err(e)) => {
                tracing::error!("the promoted program's page fill failed: {e}");
                false
            }
            _ => true,
        };
        let _ = filled_tx.send(ok);
    });
    {
        let ev = ev.clone();
        std::thread::spawn(move || {
            let code = r.wait();
            let _ = ev.send_blocking(Ev::ProgramExited(code));
        });
    }
    {
        let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
        s.role = "serving";
        s.term = term;
        s.promoted_epoch = Some(epoch);
    }
    let protected = match (a.public, app, &a.peer) {
        (Some(public), Some(app), Some(peer)) => {
            let listener = super::listen_freebind(public)?;
            let outbox = Arc::new(Outbox::new());
            let p = Protect {
                pid: host_pid,
                child: None,
                start: PrimaryStart {
                    node_id: node_id(),
                    compat: host_compat(),
                    term,
                    first_epoch: epoch + 1,
                    output_seq: 0,
                },
                backup: peer.clone(),
                key: key.clone(),
                public: listener,
                app,
                cfg: a.cfg.clone(),
                precopy: a.precopy,
                output_commit: true,
                stats: stats.clone(),
                outbox: outbox.clone(),
                ready: Some(filled_rx),
            };
            std::thread::Builder::new()
                .name("re-protect".into())
                .spawn(move || {
                    if let Err(e) = protect(p) {
                        // Whatever ended protection, the public address stays served.
                        outbox.release(u64::MAX);
                        let _ = ev.send_blocking(Ev::ProtectionEnded(e));
                    }
                })
                .map_err(|e| NodeError::Launch {
                    program: "the re-protection thread".into(),
                    detail: e.to_string(),
                })?;
            tracing::warn!(%public, %app, backup = %peer, "serving the public address; re-protecting: streaming to a backup at {peer} once one is there");
            true
        }
        (Some(public), Some(app), None) => {
            let l = super::listen_freebind(public)?;
            smol::spawn(super::proxy::serve_plain(l, app)).detach();
            tracing::warn!(%public, %app, "serving the public address");
            false
        }
        (Some(_), None, _) => {
            tracing::warn!("the primary never said where its program listens (no app= in its hello): not serving the public address");
            false
        }
        (None, ..) => false,
    };
    tracing::warn!(
        epoch,
        term,
        host_pid,
        pid = ns_pid,
        restore_ms = t.elapsed().as_secs_f64() * 1000.0,
        "PROMOTED at epoch {epoch}: the program runs here now ({})",
        if protected {
            "protected again once a backup commits a base"
        } else {
            "unprotected: no --peer to protect it to"
        }
    );
    Ok(host_pid)
}

async fn accept_task(listener: async_net::TcpListener, key: channel::Key, ev: Sender<Ev>) {
    let key = Arc::new(key);
    let mut next_id = 0u64;
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            smol::Timer::after(Duration::from_millis(10)).await;
            continue;
        };
        next_id += 1;
        let (id, key, ev) = (next_id, key.clone(), ev.clone());
        smol::spawn(async move {
            let _ = stream.set_nodelay(true);
            let hs = smol::future::or(
                async {
                    Channel::accept(stream, &key, Role::Backup, b"")
                        .await
                        .map_err(|e| e.to_string())
                },
                async {
                    smol::Timer::after(Duration::from_secs(5)).await;
                    Err("no handshake within 5 s".to_string())
                },
            )
            .await;
            let ch = match hs {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(%peer, "REFUSED a connection: {e}");
                    return;
                }
            };
            let app = std::str::from_utf8(ch.peer_hello())
                .ok()
                .and_then(|h| h.strip_prefix(HELLO_APP))
                .and_then(|s| s.parse().ok());
            let (mut tx, mut rx) = ch.split();
            let (q_tx, q_rx) = smol::channel::unbounded::<Vec<u8>>();
            let (close_tx, close_rx) = smol::channel::bounded::<()>(1);
            let writer = {
                let close_tx = close_tx.clone();
                smol::spawn(async move {
                    while let Ok(b) = q_rx.recv().await {
                        if tx.send(&b).await.is_err() {
                            let _ = close_tx.try_send(());
                            return;
                        }
                        // Sends complete without waiting while the socket has room:
                        // let the other tasks of this executor (this connection's
                        // reader among them) run between messages.
                        smol::future::yield_now().await;
                    }
                })
            };
            if ev
                .send(Ev::Conn {
                    id,
                    q: q_tx,
                    close: close_tx,
                    app,
                    peer,
                })
                .await
                .is_err()
            {
                return;
            }
            let why = loop {
                let got = smol::future::or(async { Some(rx.recv().await) }, async {
                    let _ = close_rx.recv().await;
                    None
                })
                .await;
                match got {
                    None => break "closed by this side".to_string(),
                    Some(Err(e)) => {
                        if matches!(e, channel::ChannelError::Truncated { .. }) {
                            // What a primary that died mid-stream leaves: no refusal.
                            tracing::warn!(%peer, "the primary's stream was cut short: {e}; nothing of an unfinished message is used");
                        } else if e.is_refusal() {
                            tracing::error!(%peer, "REFUSED data from the primary: {e}");
                        }
                        break e.to_string();
                    }
                    Some(Ok(bytes)) => match msg::decode(&bytes) {
                        Ok((m, used)) if used == bytes.len() => {
                            if ev.send(Ev::Msg(id, m)).await.is_err() {
                                return;
                            }
                            // A stream of epoch data is always ready to read: let the
                            // writer's heartbeats and acks out between messages.
                            smol::future::yield_now().await;
                        }
                        Ok((m, _)) => {
                            tracing::error!(%peer, "REFUSED a {} with trailing bytes", m.name());
                            break "a message with trailing bytes".to_string();
                        }
                        Err(e) => {
                            tracing::error!(%peer, "REFUSED a message: {e}");
                            break format!("a message that does not decode: {e}");
                        }
                    },
                }
            };
            writer.cancel().await;
            let _ = ev.send(Ev::Down(id, why)).await;
        })
        .detach();
    }
}
