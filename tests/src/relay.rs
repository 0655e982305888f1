//! A man-in-the-middle TCP relay for the replication channel's hostile-network
//! tests (`tests/tests/replication_hostile.rs`).
//!
//! The primary connects to the relay, which connects to the backup and forwards
//! both directions faithfully. It reads the primary's direction record by record,
//! as docs/channel.md lays the stream out: a 16-byte clear preamble, then records
//! of a `u16` big-endian length and that many bytes. The first record is the
//! Noise handshake message; the transport records after it are numbered from 0
//! (the channel's nonce, which the backup's refusal names). The relay never sees
//! plaintext: it has no key, it only knows where records start and end.
//!
//! A test [`arms`](Relay::hold_next) the relay: the next transport record that
//! matches a [`Target`] (a long one is epoch data: heartbeats and epoch
//! begin/commit records are under 100 bytes) is held back, not forwarded, while
//! everything before it was, and every connection's forwarding from the primary
//! waits. The test can then read the backup's committed state, knowing that nothing
//! more reaches it, and [`strike`](Relay::strike) with a [`Fault`]. After the
//! fault the relay forwards nothing more from the primary: the connection is left
//! to the backup to close (or closed at once for [`Fault::Truncate`]), and every
//! later connection is closed as soon as it is accepted.
//!
//! Every action is logged with its time ([`Relay::report`]) for failure messages.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The channel's clear preamble: `checksync-ch` and the version (docs/channel.md).
pub const PREAMBLE_LEN: usize = 16;

/// What the relay does to the held record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward the record with one byte of its body (ciphertext, past the length
    /// prefix) inverted.
    FlipBody,
    /// Forward the record with the top bit of its length prefix flipped, so it
    /// claims 32768 bytes fewer (the held record must be long enough).
    FlipLength,
    /// Send the last record forwarded before it again, in its place.
    Replay,
    /// Forward the length prefix and the first half of the body, then close the
    /// connection on both sides.
    Truncate,
}

/// Which record from the primary the relay holds back. Every record the channel
/// sends is full (65535 bytes) except the last of each message, so record lengths
/// show where messages end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The next transport record of at least this many bytes.
    AtLeast(usize),
    /// The next record of at least this many bytes that starts a message directly
    /// after a message of several records, with nothing in between. In an epoch's
    /// stream that is the second or a later EpochData of one epoch (an epoch's first
    /// EpochData follows its small EpochBegin), so the backup has already staged
    /// part of that epoch.
    LaterChunk(usize),
}

impl Target {
    fn min_len(self) -> usize {
        match self {
            Target::AtLeast(n) | Target::LaterChunk(n) => n,
        }
    }

    /// Whether a record of `len` bytes, after records of `prev` and `prev2` bytes
    /// (the one just before it, and the one before that), is the target.
    fn matches(self, len: usize, prev: Option<usize>, prev2: Option<usize>) -> bool {
        len >= self.min_len()
            && match self {
                Target::AtLeast(_) => true,
                Target::LaterChunk(_) => {
                    prev.is_some_and(|p| p < MAX_RECORD) && prev2 == Some(MAX_RECORD)
                }
            }
    }
}

/// The largest record; every record but the last of a message has this length.
pub const MAX_RECORD: usize = 65535;

/// The record the relay holds back (or held, once struck).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The relay's connection number, from 1.
    pub conn: u64,
    /// The transport record's number on that connection: the channel's nonce.
    pub record: u64,
    /// Its length (the length prefix's value).
    pub len: usize,
}

#[derive(Debug, Clone)]
enum Phase {
    Forward,
    Armed(Target),
    Holding(Held),
    Strike(Fault),
    Struck(Held, Result<(), String>),
}

struct State {
    phase: Phase,
    log: Vec<String>,
    /// Every connection's two sockets, to shut them down when the relay goes.
    socks: Vec<(TcpStream, TcpStream)>,
    stopping: bool,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
    start: Instant,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note(&self, st: &mut State, what: String) {
        let t = self.start.elapsed().as_secs_f64();
        st.log.push(format!("[{t:8.3} s] {what}"));
    }

    fn log(&self, what: String) {
        let mut st = self.lock();
        self.note(&mut st, what);
    }
}

/// A running relay; stopped (every socket shut down) on drop.
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("addr", &self.addr).finish()
    }
}

impl Relay {
    /// Listens on `listen` (port 0: any) and relays each connection to `target`.
    pub fn start(listen: SocketAddr, target: SocketAddr) -> io::Result<Relay> {
        let listener = TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                phase: Phase::Forward,
                log: Vec::new(),
                socks: Vec::new(),
                stopping: false,
            }),
            cv: Condvar::new(),
            start: Instant::now(),
        });
        shared.log(format!("listening on {addr}, relaying to {target}"));
        let sh = shared.clone();
        let accept = thread::Builder::new()
            .name("relay-accept".into())
            .spawn(move || accept_loop(listener, target, sh))?;
        Ok(Relay {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// The address the primary should connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Arms the relay and waits until it holds the `target` record from the
    /// primary (everything before it was forwarded).
    pub fn hold_next(&self, target: Target, limit: Duration) -> Result<Held, String> {
        let mut st = self.shared.lock();
        if !matches!(st.phase, Phase::Forward) {
            return Err(format!(
                "hold_next: the relay is in phase {:?}, not forwarding",
                st.phase
            ));
        }
        st.phase = Phase::Armed(target);
        self.shared.note(
            &mut st,
            format!("armed: holding the next record from the primary that is {target:?}"),
        );
        let t = Instant::now();
        loop {
            if let Phase::Holding(h) = st.phase {
                return Ok(h);
            }
            let left = limit.saturating_sub(t.elapsed());
            if left.is_zero() {
                st.phase = Phase::Forward;
                drop(st);
                return Err(format!(
                    "no {target:?} record from the primary within {limit:?}\n{}",
                    self.report()
                ));
            }
            st = self
                .shared
                .cv
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Applies `fault` to the held record and waits until it is done. From then on
    /// nothing more from the primary is forwarded.
    pub fn strike(&self, fault: Fault, limit: Duration) -> Result<Held, String> {
        let mut st = self.shared.lock();
        let Phase::Holding(h) = st.phase else {
            return Err(format!(
                "strike: the relay holds no record (phase {:?})",
                st.phase
            ));
        };
        if fault == Fault::FlipLength && h.len < 0x8000 + 17 {
            return Err(format!(
                "strike: a {}-byte record is too short to flip its length's top bit",
                h.len
            ));
        }
        st.phase = Phase::Strike(fault);
        self.shared.cv.notify_all();
        let t = Instant::now();
        loop {
            if let Phase::Struck(h, r) = &st.phase {
                let (h, r) = (*h, r.clone());
                drop(st);
                return r.map(|()| h).map_err(|e| format!("{e}\n{}", self.report()));
            }
            let left = limit.saturating_sub(t.elapsed());
            if left.is_zero() {
                drop(st);
                return Err(format!(
                    "the fault was not applied within {limit:?}\n{}",
                    self.report()
                ));
            }
            st = self
                .shared
                .cv
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Everything the relay did, one line per action.
    pub fn report(&self) -> String {
        let st = self.shared.lock();
        format!("relay actions:\n  {}", st.log.join("\n  "))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            st.stopping = true;
            for (p, b) in st.socks.drain(..) {
                let _ = p.shutdown(Shutdown::Both);
                let _ = b.shutdown(Shutdown::Both);
            }
            self.shared.cv.notify_all();
        }
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, sh: Arc<Shared>) {
    let mut conn = 0u64;
    loop {
        if sh.lock().stopping {
            return;
        }
        let (p, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => {
                sh.log(format!("accept failed: {e}"));
                thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        conn += 1;
        if matches!(sh.lock().phase, Phase::Strike(_) | Phase::Struck(..)) {
            sh.log(format!(
                "conn {conn} from {peer}: closed at once (after the fault nothing is forwarded)"
            ));
            let _ = p.shutdown(Shutdown::Both);
            continue;
        }
        let _ = p.set_nonblocking(false);
        let b = match TcpStream::connect_timeout(&target, Duration::from_secs(5)) {
            Ok(b) => b,
            Err(e) => {
                sh.log(format!(
                    "conn {conn} from {peer}: connecting to {target} failed: {e}"
                ));
                let _ = p.shutdown(Shutdown::Both);
                continue;
            }
        };
        let _ = p.set_nodelay(true);
        let _ = b.set_nodelay(true);
        let clones = (|| Some((p.try_clone().ok()?, b.try_clone().ok()?)))();
        let Some((p2, b2)) = clones else {
            sh.log(format!("conn {conn}: cannot clone its sockets"));
            continue;
        };
        {
            let mut st = sh.lock();
            if let (Ok(p3), Ok(b3)) = (p.try_clone(), b.try_clone()) {
                st.socks.push((p3, b3));
            }
            sh.note(
                &mut st,
                format!("conn {conn} from {peer}: relaying to {target}"),
            );
        }
        let sh1 = sh.clone();
        let _ = thread::Builder::new()
            .name(format!("relay-p2b-{conn}"))
            .spawn(move || primary_to_backup(conn, p, b, sh1));
        let sh2 = sh.clone();
        let _ = thread::Builder::new()
            .name(format!("relay-b2p-{conn}"))
            .spawn(move || backup_to_primary(conn, b2, p2, sh2));
    }
}

fn close_both(p: &TcpStream, b: &TcpStream) {
    let _ = p.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
}

/// Copies the backup's bytes to the primary until either side ends, then closes both.
fn backup_to_primary(conn: u64, mut b: TcpStream, mut p: TcpStream, sh: Arc<Shared>) {
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    let why = loop {
        match b.read(&mut buf) {
            Ok(0) => break "the backup closed its side".to_string(),
            Ok(n) => {
                if let Err(e) = p.write_all(&buf[..n]) {
                    break format!("writing to the primary failed: {e}");
                }
                total += n as u64;
            }
            Err(e) => break format!("reading from the backup failed: {e}"),
        }
    };
    sh.log(format!(
        "conn {conn}: {why} after {total} bytes backup->primary; closing both sides"
    ));
    close_both(&p, &b);
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` on a clean end before the first.
fn read_exact_or_end(r: &mut TcpStream, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        let n = r.read(&mut buf[got..])?;
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the stream ended {got} bytes into {} bytes", buf.len()),
            ));
        }
        got += n;
    }
    Ok(true)
}

/// Forwards the primary's stream record by record, applying the armed fault.
fn primary_to_backup(conn: u64, mut p: TcpStream, mut b: TcpStream, sh: Arc<Shared>) {
    let mut preamble = [0u8; PREAMBLE_LEN];
    match read_exact_or_end(&mut p, &mut preamble) {
        Ok(true) => {}
        Ok(false) => {
            sh.log(format!(
                "conn {conn}: the primary closed before its preamble"
            ));
            close_both(&p, &b);
            return;
        }
        Err(e) => {
            sh.log(format!("conn {conn}: reading the preamble: {e}"));
            close_both(&p, &b);
            return;
        }
    }
    if b.write_all(&preamble).is_err() {
        close_both(&p, &b);
        return;
    }
    // Records seen: the first is the handshake message, then transport records.
    let mut seen = 0u64;
    let mut last: Option<Vec<u8>> = None;
    // The lengths of the two transport records before this one (older first).
    let mut lens: [Option<usize>; 2] = [None, None];
    let mut body = vec![0u8; MAX_RECORD];
    let why = loop {
        let mut head = [0u8; 2];
        match read_exact_or_end(&mut p, &mut head) {
            Ok(true) => {}
            Ok(false) => break "the primary closed its side".to_string(),
            Err(e) => break format!("reading a record's length from the primary: {e}"),
        }
        let len = usize::from(u16::from_be_bytes(head));
        match read_exact_or_end(&mut p, &mut body[..len]) {
            Ok(true) => {}
            Ok(false) => break format!("the primary closed before a {len}-byte record's body"),
            Err(e) => break format!("reading a {len}-byte record from the primary: {e}"),
        }
        let record = seen.checked_sub(1);
        seen += 1;
        let (prev, prev2) = (lens[1], lens[0]);
        lens = [lens[1], record.map(|_| len)];
        let mut st = sh.lock();
        // Another connection's record is held: this one waits for the fault too,
        // so nothing reaches the backup meanwhile.
        while matches!(st.phase, Phase::Holding(_) | Phase::Strike(_)) && !st.stopping {
            st = sh.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.stopping {
            return;
        }
        if let Phase::Struck(..) = st.phase {
            // Nothing more from the primary after the fault; the backup closes.
            sh.note(
                &mut st,
                format!("conn {conn}: dropped a {len}-byte record from the primary (after the fault); no more forwarding on this connection"),
            );
            return;
        }
        let hold = match (st.phase.clone(), record) {
            (Phase::Armed(t), Some(r)) if t.matches(len, prev, prev2) && last.is_some() => {
                Some(Held {
                    conn,
                    record: r,
                    len,
                })
            }
            _ => None,
        };
        let Some(h) = hold else {
            drop(st);
            let mut wire = Vec::with_capacity(2 + len);
            wire.extend_from_slice(&head);
            wire.extend_from_slice(&body[..len]);
            if let Err(e) = b.write_all(&wire) {
                break format!("writing to the backup failed: {e}");
            }
            if record.is_some() {
                last = Some(wire);
            }
            continue;
        };
        st.phase = Phase::Holding(h);
        sh.note(
            &mut st,
            format!(
                "conn {conn}: HOLDING transport record {} ({} bytes); {} records forwarded before it",
                h.record, h.len, seen - 1
            ),
        );
        sh.cv.notify_all();
        let fault = loop {
            if st.stopping {
                return;
            }
            if let Phase::Strike(f) = st.phase {
                break f;
            }
            st = sh.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        };
        drop(st);
        let result = apply(fault, &head, &body[..len], last.as_deref(), &mut b, &p);
        let mut st = sh.lock();
        let what = match &result {
            Ok(w) => w.clone(),
            Err(e) => format!("{fault:?} failed: {e}"),
        };
        sh.note(
            &mut st,
            format!("conn {conn}: STRUCK record {}: {what}", h.record),
        );
        st.phase = Phase::Struck(h, result.map(|_| ()));
        sh.cv.notify_all();
        // Leave the connection to the backup (the other thread closes both sides
        // when it ends); forward nothing more.
        return;
    };
    sh.log(format!(
        "conn {conn}: {why} after {seen} records primary->backup; closing both sides"
    ));
    close_both(&p, &b);
}

/// Sends the faulty version of the held record `head`+`body` to the backup.
fn apply(
    fault: Fault,
    head: &[u8; 2],
    body: &[u8],
    last: Option<&[u8]>,
    b: &mut TcpStream,
    p: &TcpStream,
) -> Result<String, String> {
    let len = body.len();
    let send = |b: &mut TcpStream, bytes: &[u8]| {
        b.write_all(bytes)
            .and_then(|()| b.flush())
            .map_err(|e| format!("writing to the backup: {e}"))
    };
    match fault {
        Fault::FlipBody => {
            let at = len / 2;
            let mut wire = head.to_vec();
            wire.extend_from_slice(body);
            wire[2 + at] ^= 0xff;
            send(b, &wire)?;
            Ok(format!(
                "forwarded it with body byte {at} of {len} inverted ({:#04x} -> {:#04x})",
                body[at],
                body[at] ^ 0xff
            ))
        }
        Fault::FlipLength => {
            let claimed = len ^ 0x8000;
            let mut wire = (claimed as u16).to_be_bytes().to_vec();
            wire.extend_from_slice(body);
            send(b, &wire)?;
            Ok(format!(
                "forwarded it with its length prefix's top bit flipped ({len} -> {claimed})"
            ))
        }
        Fault::Replay => {
            let last = last.ok_or("no earlier record to replay")?;
            send(b, last)?;
            Ok(format!(
                "sent the previous record again ({} bytes) in its place",
                last.len().saturating_sub(2)
            ))
        }
        Fault::Truncate => {
            let half = len / 2;
            let mut wire = head.to_vec();
            wire.extend_from_slice(&body[..half]);
            send(b, &wire)?;
            // A FIN towards the backup after the half record (no RST: the relay
            // keeps reading the backup's side until it closes).
            let _ = b.shutdown(Shutdown::Write);
            let _ = p.shutdown(Shutdown::Both);
            Ok(format!(
                "forwarded its length and {half} of its {len} bytes, then closed the connection (FIN to the backup, the primary's side shut down)"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Target, MAX_RECORD};

    #[test]
    fn a_later_chunk_starts_right_after_a_multi_record_message() {
        let t = Target::LaterChunk(40_000);
        // ... full, tail of a chunk message, then a new chunk message.
        assert!(t.matches(MAX_RECORD, Some(145), Some(MAX_RECORD)));
        // An epoch's first chunk follows its EpochBegin, after a commit or heartbeat.
        assert!(!t.matches(MAX_RECORD, Some(70), Some(77)));
        // The middle of a message.
        assert!(!t.matches(MAX_RECORD, Some(MAX_RECORD), Some(MAX_RECORD)));
        // Too short, and the first records of a connection.
        assert!(!t.matches(1000, Some(145), Some(MAX_RECORD)));
        assert!(!t.matches(MAX_RECORD, None, None));
        let a = Target::AtLeast(40_000);
        assert!(a.matches(40_000, None, None));
        assert!(!a.matches(39_999, Some(145), Some(MAX_RECORD)));
    }
}
