//! `cs-driver primary`: protect a program and stream its epochs to a backup.
//!
//! Threads and tasks:
//! - the **capture thread** owns the [`Session`]: on each `CaptureEpoch` it reads
//!   the proxy's output sequence, freezes, captures, resumes, encodes the epoch
//!   and reports it. A full epoch after the first (a new backup, or a NeedBase)
//!   restarts the session: a fresh full capture, as `dump --leave-running`.
//! - the **link task** connects to the backup (retrying every 200 ms), runs the
//!   channel handshake (role primary; its hello carries the program's address,
//!   `app=ADDR`), then reads and decodes messages; a writer task sends the queued
//!   encoded messages.
//! - the **proxy** ([`super::proxy::serve_committed`]) on the public address.
//! - the **loop** (this thread): the [`Primary`] machine and its actions.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smol::channel::Sender;

use super::proxy::{serve_committed, Outbox};
use super::status::{SharedStats, Stats};
use super::{host_compat, ms_since, next_events, node_id, NodeError, HELLO_APP};
use crate::capture::{self, session::Session};
use crate::channel::{self, Channel, Role};
use crate::replica::msg::{self, EpochKind, EpochStream, Msg};
use crate::replica::primary::{Captured, PAction, PInput, Primary, PrimaryStart};
use crate::replica::Config;

/// What `cs-driver primary` was given.
#[derive(Debug, Clone)]
pub struct PrimaryArgs {
    pub backup: String,
    pub key: PathBuf,
    pub public: SocketAddr,
    pub app: SocketAddr,
    pub cfg: Config,
    pub pid: Option<i32>,
    pub argv: Vec<String>,
    pub status: Option<SocketAddr>,
    pub precopy: bool,
    /// Hold the program's output until the backup acked the epoch after it. Off:
    /// output is released at once (a failover may then take back replies the
    /// clients saw; for measuring what output commit costs).
    pub output_commit: bool,
}

struct Done {
    epoch: u64,
    kind: EpochKind,
    bytes: Vec<u8>,
    output_seq: u64,
    pause: Duration,
    /// The capture (pre-copy rounds, freeze, copy) and the encode, wall time.
    capture: Duration,
    encode: Duration,
}

enum Ev {
    LinkUp(u64, Sender<Vec<u8>>, Sender<()>),
    LinkMsg(u64, Msg),
    LinkDown(u64, String),
    Captured(Result<Done, NodeError>),
    Output(u64),
}

struct Link {
    id: u64,
    q: Sender<Vec<u8>>,
    close: Sender<()>,
}

/// Runs the primary until the program ends (its exit code) or an error.
pub fn run(a: PrimaryArgs) -> Result<i32, NodeError> {
    let key = channel::key::load(&a.key)?;
    a.cfg.check()?;
    let (pid, child) = launch_or_attach(&a)?;
    let stats: SharedStats = Arc::new(Mutex::new(Stats::new("primary")));
    if let Some(s) = a.status {
        super::status::start(s, stats.clone())?;
    }
    let public = super::listen_freebind(a.public)?;
    tracing::info!(pid, public = %a.public, app = %a.app, backup = %a.backup, "protecting the program");
    protect(Protect {
        pid,
        child,
        start: PrimaryStart {
            node_id: node_id(),
            compat: host_compat(),
            term: 1,
            first_epoch: 1,
            output_seq: 0,
        },
        backup: a.backup,
        key,
        public,
        app: a.app,
        cfg: a.cfg,
        precopy: a.precopy,
        output_commit: a.output_commit,
        stats,
        outbox: Arc::new(Outbox::new()),
        ready: None,
    })
}

/// What [`protect`] runs on: the program, where its backup is, and the public
/// address's listener. Both a first primary and a promoted backup (re-protection)
/// run it.
pub(crate) struct Protect {
    pub pid: i32,
    /// The program, when this driver launched it (then it is reaped here).
    pub child: Option<std::process::Child>,
    pub start: PrimaryStart,
    pub backup: String,
    pub key: channel::Key,
    pub public: async_net::TcpListener,
    pub app: SocketAddr,
    pub cfg: Config,
    pub precopy: bool,
    /// See [`PrimaryArgs::output_commit`].
    pub output_commit: bool,
    pub stats: SharedStats,
    /// The proxy's output sequence (a caller that must keep the public address
    /// served if protection ends can release it all).
    pub outbox: Arc<Outbox>,
    /// When given, the capture thread waits for `true` before its first capture
    /// (a restored program's page fill must end first); `false` ends protection.
    pub ready: Option<mpsc::Receiver<bool>>,
}

/// Protects `p.pid`: serves the public address with output commit, captures the
/// epochs the [`Primary`] machine asks for and streams them to the backup. Runs
/// until the program ends (its exit code), the primary is fenced, or an error.
pub(crate) fn protect(p: Protect) -> Result<i32, NodeError> {
    let Protect {
        pid,
        mut child,
        start,
        backup,
        key,
        public,
        app,
        cfg,
        precopy,
        output_commit,
        stats,
        outbox,
        ready,
    } = p;
    let (ev_tx, ev_rx) = smol::channel::unbounded::<Ev>();

    // The proxy.
    let (wait_tx, wait_rx) = smol::channel::unbounded::<u64>();
    smol::spawn(serve_committed(public, app, outbox.clone(), wait_tx)).detach();
    if !output_commit {
        tracing::warn!("output commit is off: replies leave before the backup holds the state that made them, and a failover may take them back");
        outbox.release(u64::MAX);
    } else {
        let ev = ev_tx.clone();
        smol::spawn(async move {
            while let Ok(s) = wait_rx.recv().await {
                if ev.send(Ev::Output(s)).await.is_err() {
                    return;
                }
            }
        })
        .detach();
    }

    // The capture thread.
    let (cap_tx, cap_rx) = mpsc::channel::<(u64, bool)>();
    {
        let (ev, outbox) = (ev_tx.clone(), outbox.clone());
        let opts = capture::Options { precopy };
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || {
                if let Some(r) = ready {
                    if !r.recv().unwrap_or(false) {
                        let _ = ev.send_blocking(Ev::Captured(Err(NodeError::Usage(
                            "the program's pages never all arrived: it cannot be captured".into(),
                        ))));
                        return;
                    }
                }
                capture_thread(pid, opts, cap_rx, outbox, ev)
            })
            .map_err(|e| NodeError::Launch {
                program: "the capture thread".into(),
                detail: e.to_string(),
            })?;
    }

    // The link task.
    {
        let (ev, backup) = (ev_tx.clone(), backup.clone());
        let hello = format!("{HELLO_APP}{app}").into_bytes();
        smol::spawn(link_task(backup, key, hello, ev, stats.clone())).detach();
    }

    stats.lock().unwrap_or_else(|e| e.into_inner()).role = "primary";
    let mut m = Primary::new(cfg.clone(), start)?;
    let start = Instant::now();
    let mut link: Option<Link> = None;
    let mut captured: std::collections::HashMap<u64, Vec<u8>> = Default::default();
    // When each epoch not yet acked was asked for (the ack-latency histogram).
    let mut asked: std::collections::BTreeMap<u64, Instant> = Default::default();
    let mut acts = Vec::new();
    let mut unprotected_logged = false;
    smol::block_on(async {
        loop {
            let evs = next_events(&ev_rx).await;
            let mut inputs = Vec::new();
            for e in evs {
                match e {
                    Ev::LinkUp(id, q, close) => {
                        if let Some(old) = link.take() {
                            let _ = old.close.try_send(());
                        }
                        link = Some(Link { id, q, close });
                        inputs.push(PInput::Connected);
                    }
                    Ev::LinkMsg(id, msg) if link.as_ref().is_some_and(|l| l.id == id) => {
                        if let Msg::Ack { epoch, .. } = msg {
                            let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                            s.acked = s.acked.max(epoch);
                            s.last_ack = Some(Instant::now());
                            while let Some(e) = asked.first_entry() {
                                if *e.key() > epoch {
                                    break;
                                }
                                let (n, at) = e.remove_entry();
                                let ms = at.elapsed().as_secs_f64() * 1000.0;
                                s.ack_ms.observe(ms);
                                tracing::trace!(epoch = n, ms, "acked");
                            }
                        }
                        inputs.push(PInput::Received(msg));
                    }
                    Ev::LinkDown(id, why) if link.as_ref().is_some_and(|l| l.id == id) => {
                        tracing::warn!("the link to the backup is down: {why}");
                        link = None;
                        inputs.push(PInput::Disconnected);
                    }
                    Ev::LinkMsg(..) | Ev::LinkDown(..) => {}
                    Ev::Captured(Ok(d)) => {
                        let checksum = msg::payload_checksum(&d.bytes);
                        {
                            let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                            s.epoch = d.epoch;
                            s.epochs += 1;
                            if d.kind == EpochKind::Full {
                                s.full_epochs += 1;
                            }
                            s.pause_ms.observe(d.pause.as_secs_f64() * 1000.0);
                            s.epoch_bytes.observe(d.bytes.len() as f64);
                        }
                        tracing::debug!(
                            epoch = d.epoch,
                            full = d.kind == EpochKind::Full,
                            bytes = d.bytes.len(),
                            pause_ms = d.pause.as_secs_f64() * 1000.0,
                            capture_ms = d.capture.as_secs_f64() * 1000.0,
                            encode_ms = d.encode.as_secs_f64() * 1000.0,
                            "epoch captured"
                        );
                        inputs.push(PInput::EpochCaptured(Captured {
                            epoch: d.epoch,
                            kind: d.kind,
                            len: d.bytes.len() as u64,
                            checksum,
                            output_seq: d.output_seq,
                        }));
                        captured.insert(d.epoch, d.bytes);
                    }
                    Ev::Captured(Err(e)) => {
                        if let Some(code) = child_exit(&mut child) {
                            tracing::info!("the program ended (exit code {code})");
                            return Ok(code);
                        }
                        return Err(e);
                    }
                    Ev::Output(seq) => inputs.push(PInput::OutputWaiting { seq }),
                }
            }
            inputs.push(PInput::Tick);
            for input in inputs {
                let now = ms_since(start);
                m.step(now, input, &mut acts);
                for act in acts.drain(..) {
                    match act {
                        PAction::Send(msg) => send(&link, &msg),
                        PAction::CaptureEpoch { epoch, full } => {
                            if full {
                                asked.clear();
                            }
                            asked.insert(epoch, Instant::now());
                            let _ = cap_tx.send((epoch, full));
                        }
                        PAction::StreamEpoch {
                            term,
                            epoch,
                            kind,
                            checksum,
                            ..
                        } => {
                            if let Some(bytes) = captured.remove(&epoch) {
                                for msg in EpochStream::new(
                                    term,
                                    epoch,
                                    kind,
                                    &bytes,
                                    checksum,
                                    cfg.chunk_bytes,
                                ) {
                                    send(&link, &msg);
                                }
                            }
                        }
                        PAction::DiscardEpoch { epoch } => {
                            captured.remove(&epoch);
                        }
                        PAction::ReleaseOutput { upto_seq } => outbox.release(upto_seq),
                        PAction::Protected { backup, epoch } => {
                            unprotected_logged = false;
                            stats.lock().unwrap_or_else(|e| e.into_inner()).protected = true;
                            tracing::info!(
                                backup = format_args!("{backup:#x}"),
                                epoch,
                                "PROTECTED: the backup committed a full base"
                            );
                        }
                        PAction::Unprotected { why } => {
                            stats.lock().unwrap_or_else(|e| e.into_inner()).protected = false;
                            if !unprotected_logged {
                                tracing::warn!("UNPROTECTED: {why}; the program's output is released without a backup holding its state");
                                unprotected_logged = true;
                            }
                        }
                        PAction::CloseLink => {
                            if let Some(l) = link.take() {
                                let _ = l.close.try_send(());
                            }
                        }
                        PAction::Fenced { term } => {
                            tracing::error!(term, "FENCED: a newer primary exists; stopping the program, its held output is dropped");
                            stats.lock().unwrap_or_else(|e| e.into_inner()).role = "fenced";
                            let _ = crate::linux::sys::kill(pid, libc::SIGKILL);
                            return Err(NodeError::Fenced { term });
                        }
                    }
                }
            }
            {
                let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                s.term = m.term();
                s.output_produced = outbox.produced();
                s.output_released = outbox.released();
            }
            if let Some(code) = child_exit(&mut child) {
                tracing::info!("the program ended (exit code {code})");
                return Ok(code);
            }
        }
    })
}

fn send(link: &Option<Link>, msg: &Msg) {
    if let Some(l) = link {
        match msg.to_bytes() {
            Ok(b) => {
                let _ = l.q.try_send(b);
            }
            Err(e) => tracing::error!("cannot encode {}: {e}", msg.name()),
        }
    }
}

/// The launched program's exit code once it ended. `try_wait` is not used: its
/// `waitpid` would also take the ptrace stops the capture thread's freezes cause.
/// A zombie (or a vanished process) has ended; only then is it reaped.
fn child_exit(child: &mut Option<std::process::Child>) -> Option<i32> {
    let c = child.as_mut()?;
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", c.id())).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    if !matches!(state, None | Some("Z") | Some("X")) {
        return None;
    }
    let st = c.wait().ok()?;
    use std::os::unix::process::ExitStatusExt;
    Some(st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)))
}

fn capture_thread(
    pid: i32,
    opts: capture::Options,
    rx: mpsc::Receiver<(u64, bool)>,
    outbox: Arc<Outbox>,
    ev: Sender<Ev>,
) {
    let mut session: Option<Session> = None;
    while let Ok((epoch, full)) = rx.recv() {
        // Every byte numbered up to here was read from the program before the
        // freeze below begins.
        let output_seq = outbox.produced();
        // A failed capture is retried (twice) as a fresh full one: the program
        // runs on unchanged after a failed capture, and a transient failure (seen:
        // an encode refusing unsorted pages while the program grew its heap during
        // the pre-copy) should not end its protection.
        let mut r = Err(NodeError::Usage("no capture attempted".into()));
        for attempt in 0..3 {
            r = capture_one(
                pid,
                opts,
                &mut session,
                epoch,
                full || attempt > 0,
                output_seq,
            );
            match &r {
                Ok(_) => break,
                Err(e) => {
                    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                        break;
                    }
                    tracing::warn!("epoch {epoch}: capture attempt {} failed: {e}", attempt + 1);
                }
            }
        }
        let failed = r.is_err();
        if ev.send_blocking(Ev::Captured(r)).is_err() || failed {
            return;
        }
    }
}

fn capture_one(
    pid: i32,
    opts: capture::Options,
    session: &mut Option<Session>,
    epoch: u64,
    full: bool,
    output_seq: u64,
) -> Result<Done, NodeError> {
    let cap_err = |source| NodeError::Capture { pid, source };
    let t = Instant::now();
    let mut c = match session.as_mut() {
        Some(s) if !full => s.epoch().map_err(cap_err)?,
        _ => {
            *session = None;
            let (s, c) = Session::start(pid, opts).map_err(cap_err)?;
            if let Some(note) = &s.note {
                tracing::warn!("{note}; every epoch will be a full one");
            }
            *session = Some(s);
            c
        }
    };
    c.epoch.number = epoch;
    let capture = t.elapsed();
    let t = Instant::now();
    let mut bytes = Vec::new();
    crate::image::encode(&c, &mut bytes).map_err(|e| NodeError::Encode {
        epoch,
        detail: e.to_string(),
    })?;
    Ok(Done {
        epoch,
        kind: if c.epoch.full {
            EpochKind::Full
        } else {
            EpochKind::Delta
        },
        bytes,
        output_seq,
        pause: c.times.pause,
        capture,
        encode: t.elapsed(),
    })
}

async fn link_task(
    backup: String,
    key: channel::Key,
    hello: Vec<u8>,
    ev: Sender<Ev>,
    stats: SharedStats,
) {
    let mut id = 0u64;
    let mut last_err = String::new();
    loop {
        id += 1;
        let conn = smol::future::or(
            async {
                let s = async_net::TcpStream::connect(backup.as_str())
                    .await
                    .map_err(|e| format!("connecting to {backup}: {e}"))?;
                let _ = s.set_nodelay(true);
                Channel::connect(s, &key, Role::Primary, &hello)
                    .await
                    .map_err(|e| format!("handshake with {backup}: {e}"))
            },
            async {
                smol::Timer::after(Duration::from_secs(2)).await;
                Err(format!("connecting to {backup}: no answer within 2 s"))
            },
        )
        .await;
        let ch = match conn {
            Ok(c) => c,
            Err(e) => {
                if e != last_err {
                    tracing::warn!("{e} (retrying)");
                    last_err = e;
                }
                smol::Timer::after(Duration::from_millis(200)).await;
                continue;
            }
        };
        last_err.clear();
        tracing::info!("connected to the backup at {backup}");
        let (mut tx, mut rx) = ch.split();
        let (q_tx, q_rx) = smol::channel::unbounded::<Vec<u8>>();
        let (close_tx, close_rx) = smol::channel::bounded::<()>(1);
        let writer = {
            let (close_tx, stats) = (close_tx.clone(), stats.clone());
            smol::spawn(async move {
                while let Ok(b) = q_rx.recv().await {
                    let before = tx.wire_bytes();
                    if let Err(e) = tx.send(&b).await {
                        let _ = close_tx.try_send(());
                        return Err(e.to_string());
                    }
                    stats.lock().unwrap_or_else(|e| e.into_inner()).wire_bytes +=
                        tx.wire_bytes() - before;
                    // Sending a large epoch never waits while the socket has room: let
                    // this connection's reader (the backup's heartbeats and acks) and
                    // the proxy run between messages, or the backup seems silent.
                    smol::future::yield_now().await;
                }
                let _ = tx.close().await;
                Ok(())
            })
        };
        if ev.send(Ev::LinkUp(id, q_tx, close_tx)).await.is_err() {
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
                Some(Err(e)) => break e.to_string(),
                Some(Ok(bytes)) => match msg::decode(&bytes) {
                    Ok((m, used)) if used == bytes.len() => {
                        if ev.send(Ev::LinkMsg(id, m)).await.is_err() {
                            return;
                        }
                        smol::future::yield_now().await;
                    }
                    Ok((m, _)) => break format!("{} with trailing bytes refused", m.name()),
                    Err(e) => break format!("refused a message from the backup: {e}"),
                },
            }
        };
        writer.cancel().await;
        if ev.send(Ev::LinkDown(id, why)).await.is_err() {
            return;
        }
        smol::Timer::after(Duration::from_millis(200)).await;
    }
}

/// Launches `argv` (waiting until it left execve with its vDSO mapped, as
/// `checkpoint` does) or takes `--pid`.
fn launch_or_attach(a: &PrimaryArgs) -> Result<(i32, Option<std::process::Child>), NodeError> {
    match (a.pid, a.argv.split_first()) {
        (Some(p), None) => Ok((p, None)),
        (None, Some((prog, args))) => {
            let launch = |detail: String| NodeError::Launch {
                program: prog.clone(),
                detail,
            };
            let c = capture::launch(prog, args).map_err(|e| launch(e.to_string()))?;
            let p = c.id() as i32;
            Ok((p, Some(c)))
        }
        _ => Err(NodeError::Usage(
            "give either --pid PID or `-- PROGRAM ARGS`, not both".into(),
        )),
    }
}
