//! The "durable store" fixture of issue 10 and the kernel-state snapshot tool
//! ([`cs_tests::kstate`]) that the restore side will use to check it.
//!
//! Each variant (Go 1.27.3 and Go 1.19.8; `durable-cgo`, dynamically linked
//! against glibc, and the static `durable`) is started with a config file, asked
//! where it keeps each object (`STATE`), and snapshotted. The test checks that
//! the snapshot sees every object the fixture promises, the way the kernel
//! reports it (not the way the fixture believes it): the WAL directory fd, the
//! WAL file without O_APPEND, at position 0 (pwrite) and preallocated, the
//! flock and the OFD lock with their ranges, the read-only MAP_SHARED mapping
//! 1024 times its file with `rr` (MADV_RANDOM), the read-write MAP_SHARED data
//! mapping, the unconnected autobound unix datagram socket, both ends of the
//! self-connection, the SO_REUSEPORT listeners (MPTCP with Go 1.27), the
//! timerfd, the inotify watch on the config file's inode, rseq on every thread
//! of the cgo build (and on none of the static one's), glibc mapped (cgo) or
//! not (static), and the cgo resolver (Go's own `netdns=2` report).
//!
//! Then `durableclient` loads it for 3 s (a snapshot taken in the middle must
//! read every thread's rseq and leave no thread stopped or traced, with no
//! operation failing) and checks every acknowledged write;
//! a second snapshot must not differ from the first in the stable parts (the
//! promised fds, file-backed mappings, threads present in both); writing the
//! config file (inotify -> reload) must show in the diff as exactly the admin
//! listener moving to a new fd and the timerfd's new interval. Finally the
//! store is killed and restarted on its directory, and every acknowledged
//! write is still there (WAL replay).
//!
//! Not covered: checkpoint/restore itself (not built for these programs yet);
//! fsync durability against power loss (a killed process leaves the page
//! cache); the diff's treatment of volatile parts beyond what is narrowed away.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cs_tests::fixture::{
    fixture_bin, run_client, temp_dir, Client, ClientRun, GoToolchain, Service,
};
use cs_tests::kstate::{diff, FdDetail, FdKind, LockKind, Snapshot, SockType};
use serde_json::Value;

const LOAD: &str = "3s";
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);
/// glibc's RSEQ_SIG on x86.
const RSEQ_SIG: u32 = 0x5305_3053;
const O_APPEND: u32 = libc::O_APPEND as u32;
const O_DIRECTORY: u32 = libc::O_DIRECTORY as u32;
const O_CLOEXEC: u32 = libc::O_CLOEXEC as u32;
const IN_CLOSE_WRITE: u32 = 0x8;

/// One request line as the anonymous client 0; the reply's payload after
/// `1 OK `, or why not.
fn call(addr: &str, op: &str) -> Result<String, String> {
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("0 1 {op}\n").as_bytes())
        .map_err(|e| format!("send {op}: {e}"))?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| format!("read reply to {op}: {e}"))?;
    let line = line.trim_end();
    line.strip_prefix("1 OK ")
        .map(str::to_string)
        .ok_or_else(|| format!("{op} answered {line:?}"))
}

fn state(addr: &str) -> Value {
    let s = call(addr, "STATE").unwrap_or_else(|e| panic!("STATE: {e}"));
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("STATE is not JSON ({e}): {s}"))
}

/// An integer of the STATE JSON at `pointer` (e.g. `/wal/fd`).
fn num(st: &Value, pointer: &str) -> i64 {
    st.pointer(pointer)
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("STATE has no number at {pointer}: {st}"))
}

fn text<'a>(st: &'a Value, pointer: &str) -> &'a str {
    st.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("STATE has no string at {pointer}: {st}"))
}

fn fd(st: &Value, pointer: &str) -> i32 {
    i32::try_from(num(st, pointer)).expect("fd fits i32")
}

fn hex_addr(st: &Value, pointer: &str) -> u64 {
    let s = text(st, pointer);
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .unwrap_or_else(|e| panic!("{pointer} = {s:?}: {e}"))
}

/// The fds STATE names: every object the fixture promises.
fn promised_fds(st: &Value) -> BTreeSet<i32> {
    [
        "/wal/dir_fd",
        "/wal/fd",
        "/data/fd",
        "/meta/fd",
        "/index/fd",
        "/listeners/main/fd",
        "/listeners/admin/fd",
        "/self/client_fd",
        "/self/server_fd",
        "/dgram/fd",
        "/timerfd/fd",
        "/inotify/fd",
    ]
    .iter()
    .map(|p| fd(st, p))
    .collect()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write_config(path: &Path, tick_ms: u32) {
    std::fs::write(
        path,
        format!("{{\"admin_addr\": \"\", \"tick_ms\": {tick_ms}}}\n"),
    )
    .expect("write the config file");
}

fn start(tc: GoToolchain, cgo: bool, data: &Path, config: &Path) -> Service {
    let name = if cgo { "durable-cgo" } else { "durable" };
    let mut cmd = Command::new(fixture_bin(tc, name));
    cmd.arg("-data")
        .arg(data)
        .args([
            "-addr",
            "127.0.0.1:0",
            "-admin-addr",
            "127.0.0.1:0",
            "-log-stats",
            "0",
        ])
        .arg("-config")
        .arg(config)
        // Package net reports which resolver it uses on stderr.
        .env("GODEBUG", "netdns=2");
    Service::spawn(cmd, Service::READY_TIMEOUT).unwrap_or_else(|e| panic!("{tc} {name}: {e}"))
}

fn clean(run: &ClientRun) -> Value {
    run.assert_success();
    let s = run
        .summary()
        .unwrap_or_else(|| panic!("{}: no JSON summary: {}", run.program, run.stdout));
    s
}

/// Checks the first snapshot against what the fixture promises; returns the
/// list of what is wrong (empty when all is well).
fn check_objects(
    tc: GoToolchain,
    cgo: bool,
    st: &Value,
    s: &Snapshot,
    config: &Path,
) -> Vec<String> {
    let mut bad = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            bad.push(what);
        }
    };
    let entry = |n: i32| {
        s.fd(n)
            .unwrap_or_else(|| panic!("fd {n} from STATE is not in the snapshot: {:#?}", s.fds))
    };

    // WAL directory fd, kept open for fsync.
    let wal_dir = entry(fd(st, "/wal/dir_fd"));
    check(
        wal_dir.kind == FdKind::Dir
            && wal_dir.target == text(st, "/wal/dir")
            && wal_dir.flags & O_DIRECTORY != 0,
        format!("WAL dir fd: {wal_dir:?}"),
    );
    // WAL file: no O_APPEND, position 0 (records are written with pwrite at
    // an explicit offset), preallocated ahead of the last record.
    let wal = entry(fd(st, "/wal/fd"));
    let wal_path = text(st, "/wal/path");
    let wal_len = std::fs::metadata(wal_path).map(|m| m.len()).unwrap_or(0);
    let wal_off = num(st, "/wal/offset") as u64;
    check(
        wal.kind == FdKind::File
            && wal.target == wal_path
            && wal.flags & O_APPEND == 0
            && wal.pos == 0,
        format!("WAL fd: {wal:?}"),
    );
    check(
        wal_len >= wal_off + (512 << 10),
        format!(
            "WAL {wal_path}: size {wal_len}, last record ends at {wal_off}: not preallocated ahead"
        ),
    );
    // Every fd the fixture opened itself is close-on-exec.
    for p in [
        "/wal/dir_fd",
        "/wal/fd",
        "/data/fd",
        "/meta/fd",
        "/index/fd",
        "/timerfd/fd",
        "/inotify/fd",
    ] {
        let e = entry(fd(st, p));
        check(
            e.flags & O_CLOEXEC != 0,
            format!("{p}: not O_CLOEXEC: {e:?}"),
        );
    }

    // flock on the data file, OFD lock on [0, 127] of meta.
    let data_path = text(st, "/data/path");
    let data_fd = fd(st, "/data/fd");
    let flock = s.locks_on(data_path);
    check(
        flock.len() == 1
            && flock[0].line.kind == LockKind::Flock
            && flock[0].line.access == "WRITE"
            && flock[0].fds == vec![data_fd]
            && flock[0].line.pid == i64::from(s.pid),
        format!("flock on {data_path}: {flock:?}"),
    );
    let meta_path = text(st, "/meta/path");
    let ofd = s.locks_on(meta_path);
    check(
        ofd.len() == 1
            && ofd[0].line.kind == LockKind::Ofd
            && ofd[0].line.access == "WRITE"
            && (ofd[0].line.start, ofd[0].line.end) == (0, Some(127))
            && ofd[0].fds == vec![fd(st, "/meta/fd")]
            && ofd[0].line.pid == -1,
        format!("OFD lock on {meta_path}: {ofd:?}"),
    );

    // Read-only MAP_SHARED mapping, much larger than its file, MADV_RANDOM.
    let index_path = text(st, "/index/path");
    let index_len = std::fs::metadata(index_path).map(|m| m.len()).unwrap_or(0);
    match s.mapping_at(hex_addr(st, "/index/map_addr")) {
        Some(m) => check(
            m.path == index_path
                && m.perms == "r--s"
                && m.len() == num(st, "/index/map_len") as u64
                && m.len() >= 1000 * index_len
                && index_len > 0
                && m.has_flag("rr")
                && m.has_flag("sh")
                && !m.has_flag("wr"),
            format!("index mapping (file {index_len} bytes): {m}"),
        ),
        None => check(false, format!("no mapping at the index's address: {st}")),
    }
    // Read-write MAP_SHARED mapping of the data file.
    match s.mapping_at(hex_addr(st, "/data/map_addr")) {
        Some(m) => check(
            m.path == data_path
                && m.perms == "rw-s"
                && m.len() == num(st, "/data/map_len") as u64
                && m.has_flag("sh")
                && m.has_flag("wr"),
            format!("data mapping: {m}"),
        ),
        None => check(
            false,
            format!("no mapping at the data file's address: {st}"),
        ),
    }

    // Unconnected unix datagram socket with an autobind name (@ + 5 hex digits).
    let dg = entry(fd(st, "/dgram/fd"));
    match dg.socket() {
        Some(so) => check(
            so.family == libc::AF_UNIX
                && so.sock_type == SockType::Dgram
                && so.local == text(st, "/dgram/addr")
                && so.local.len() == 6
                && so.local.starts_with('@')
                && so.local[1..].chars().all(|c| c.is_ascii_hexdigit())
                && so.peer.is_none()
                && !so.listening,
            format!("dgram socket: {so:?}"),
        ),
        None => check(false, format!("dgram fd is not a socket: {dg:?}")),
    }

    // Listeners with SO_REUSEPORT; MPTCP by Go 1.27's default, TCP with Go 1.19.
    let want_proto = match tc {
        GoToolchain::Go127 => "mptcp",
        GoToolchain::Go119 => "tcp",
    };
    for name in ["main", "admin"] {
        let e = entry(fd(st, &format!("/listeners/{name}/fd")));
        match e.socket() {
            Some(so) => check(
                so.listening
                    && so.sock_type == SockType::Stream
                    && so.local == text(st, &format!("/listeners/{name}/addr"))
                    && so.protocol_name() == want_proto
                    && so.protocol_name() == text(st, &format!("/listeners/{name}/proto"))
                    && so.opt("SO_REUSEPORT") == Some(1)
                    && so.opt("SO_REUSEADDR") == Some(1),
                format!("{name} listener ({tc}, want {want_proto}): {so:?}"),
            ),
            None => check(false, format!("{name} listener fd is not a socket: {e:?}")),
        }
    }

    // The self-connection: both ends in this process, each the other's peer.
    let main_addr = text(st, "/listeners/main/addr");
    let client_addr = text(st, "/self/client_addr");
    let (c, v) = (
        entry(fd(st, "/self/client_fd")).socket(),
        entry(fd(st, "/self/server_fd")).socket(),
    );
    match (c, v) {
        (Some(c), Some(v)) => {
            check(
                c.local == client_addr
                    && c.peer.as_deref() == Some(main_addr)
                    && v.local == main_addr
                    && v.peer.as_deref() == Some(client_addr)
                    && !c.listening
                    && !v.listening,
                format!("self-connection: client {c:?}, server {v:?}"),
            );
            for (end, so) in [("client", c), ("server", v)] {
                check(
                    so.opt("TCP_NODELAY") == Some(1) && so.opt("SO_KEEPALIVE") == Some(1),
                    format!("self-connection {end} end options (Go sets TCP_NODELAY and keep-alive): {so:?}"),
                );
            }
        }
        _ => check(
            false,
            format!("self-connection fds are not sockets: {c:?} {v:?}"),
        ),
    }

    // timerfd: CLOCK_MONOTONIC, periodic at the config's tick, armed.
    let tf = entry(fd(st, "/timerfd/fd"));
    match &tf.detail {
        FdDetail::Timerfd(t) => check(
            t.clockid == libc::CLOCK_MONOTONIC && t.interval_ns == 100_000_000 && t.armed,
            format!("timerfd: {t:?}"),
        ),
        other => check(false, format!("timerfd fd: {other:?} ({tf})")),
    }
    // inotify: one watch, on the config file's inode, for IN_CLOSE_WRITE.
    let ino = std::fs::metadata(config).map(|m| m.ino()).unwrap_or(0);
    let inf = entry(fd(st, "/inotify/fd"));
    match &inf.detail {
        FdDetail::Inotify(w) => check(
            w.len() == 1
                && i64::from(w[0].wd) == num(st, "/inotify/wd")
                && w[0].ino == ino
                && w[0].mask & IN_CLOSE_WRITE != 0,
            format!("inotify (config inode {ino}): {w:?}"),
        ),
        other => check(false, format!("inotify fd: {other:?} ({inf})")),
    }

    // rseq: glibc registers it on every thread of the cgo build; the static
    // Go runtime never does.
    check(s.threads.len() > 1, format!("threads: {:?}", s.threads));
    for (tid, t) in &s.threads {
        match &t.rseq {
            Ok(r) if cgo => check(
                r.registered() && r.signature == RSEQ_SIG && r.abi_size >= 32,
                format!("cgo thread {tid}: {r}"),
            ),
            Ok(r) => check(!r.registered(), format!("static thread {tid}: {r}")),
            Err(e) => check(false, format!("thread {tid}: rseq not read: {e}")),
        }
    }
    // glibc is mapped in the cgo build only.
    let libc_mapped = s.maps.iter().any(|m| m.path.contains("/libc.so"));
    check(
        libc_mapped == cgo,
        format!("libc mapped: {libc_mapped}, cgo build: {cgo}"),
    );
    check(
        st.pointer("/cgo").and_then(Value::as_bool) == Some(cgo)
            && text(st, "/dns/resolver") == if cgo { "cgo" } else { "go" }
            && st
                .pointer("/dns/addrs")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty()),
        format!("cgo/resolver in STATE: {st}"),
    );
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    check(
        text(st, "/user/uid") == uid.to_string() && !text(st, "/user/username").is_empty(),
        format!("os/user in STATE: {}", st["user"]),
    );
    bad
}

fn durable_fixture(tc: GoToolchain, cgo: bool) {
    let variant = format!("{tc} {}", if cgo { "durable-cgo" } else { "durable" });
    let dir = temp_dir("durable");
    let data = dir.path().join("data");
    let config = dir.path().join("durable.json");
    write_config(&config, 100);
    let store = start(tc, cgo, &data, &config);
    let (pid, addr) = (store.pid(), store.addr().to_string());

    // The self-connection is made and pinging, the datagram loop running.
    wait_for("the first self ping and heartbeat", || {
        let st = state(&addr);
        num(&st, "/self/server_fd") >= 0
            && num(&st, "/self/pings") >= 1
            && num(&st, "/dgram/recv") >= 1
    });
    let st1 = state(&addr);
    let s1 = Snapshot::take(pid).unwrap_or_else(|e| panic!("{variant}: snapshot: {e}"));
    let bad = check_objects(tc, cgo, &st1, &s1, &config);
    assert!(
        bad.is_empty(),
        "{variant}: the snapshot does not show what the fixture promises:\n  {}\nSTATE: {st1}",
        bad.join("\n  ")
    );
    let resolver = if cgo {
        "hostLookupOrder(localhost) = cgo"
    } else {
        "hostLookupOrder(localhost) = files"
    };
    assert!(
        store.stderr_tail(1 << 16).contains(resolver),
        "{variant}: package net did not report {resolver:?}:\n{}",
        store.stderr_tail(4096)
    );

    // Load, then every acknowledged write is there.
    let client = fixture_bin(tc, "durableclient");
    let hist = dir.path().join("h.jsonl");
    let h = hist.to_str().expect("utf-8 path");
    let mut cmd = Command::new(&client);
    cmd.args([
        "-addr",
        &addr,
        "-conns",
        "4",
        "-duration",
        LOAD,
        "-history",
        h,
        "-quiet",
    ]);
    let running = Client::spawn(cmd).expect("start durableclient");
    // A snapshot in the middle of the load: every thread's rseq is read (Go
    // preempts with SIGURG: a thread may be caught in a signal stop, which
    // the detach must hand back), and the store serves on without an error.
    std::thread::sleep(Duration::from_millis(1000));
    let mid = Snapshot::take(pid).unwrap_or_else(|e| panic!("{variant}: snapshot under load: {e}"));
    for (tid, t) in &mid.threads {
        match &t.rseq {
            Ok(r) => assert_eq!(
                r.registered(),
                cgo,
                "{variant}: thread {tid} under load: {r}"
            ),
            Err(e) => panic!("{variant}: thread {tid} under load: rseq not read: {e}"),
        }
    }
    assert!(
        cs_tests::procs::unhealthy_threads(pid).is_some_and(|b| b.is_empty()),
        "{variant}: threads left stopped or traced after the snapshot: {:?}",
        cs_tests::procs::unhealthy_threads(pid)
    );
    let load = running
        .wait(CLIENT_TIMEOUT)
        .expect("durableclient load run");
    let sum = clean(&load);
    assert!(
        sum["ops"].as_u64().unwrap_or(0) > 0 && sum["errors"] == 0 && sum["wrong"] == 0,
        "{variant}: load summary {sum}\n{}",
        load.stderr
    );
    let verify = |addr: &str| {
        let v = run_client(&client, &["-addr", addr, "-verify", h], CLIENT_TIMEOUT)
            .expect("durableclient -verify");
        let r = clean(&v);
        assert!(
            r["bad"] == 0
                && r["acked_writes"].as_u64().unwrap_or(0) > 0
                && r["checked"] == r["keys"],
            "{variant}: verify {r}\n{}",
            v.stderr
        );
        r
    };
    let verified = verify(&addr);

    // The stable parts did not change: the promised fds, file-backed mappings,
    // the threads present both times.
    let st2 = state(&addr);
    assert_eq!(
        promised_fds(&st1),
        promised_fds(&st2),
        "{variant}: STATE's fds moved during the load"
    );
    assert!(num(&st2, "/wal/last_lsn") > num(&st1, "/wal/last_lsn"));
    let s2 = Snapshot::take(pid).unwrap_or_else(|e| panic!("{variant}: snapshot: {e}"));
    let stable = promised_fds(&st1);
    let common = s1.common_threads(&s2);
    let view = |s: &Snapshot| s.only_fds(&stable).file_mappings().only_threads(&common);
    let (v1, v2) = (view(&s1), view(&s2));
    assert_eq!(v1.fds.len(), stable.len(), "{variant}: narrowing lost fds");
    assert!(!v1.maps.is_empty() && !v1.locks.is_empty() && !v1.threads.is_empty());
    let d = diff(&v1, &v2);
    assert!(
        d.is_empty(),
        "{variant}: the stable parts changed under load:\n  {}",
        d.join("\n  ")
    );

    // A real change: writing the config file reloads it (inotify). The admin
    // listener is rebound at the same address by a new socket (made while the
    // old one still listened: SO_REUSEPORT), so it moves to another fd, and
    // the timerfd gets the new interval. The diff must say exactly that.
    write_config(&config, 50);
    wait_for("the inotify reload", || {
        num(&state(&addr), "/config/reloads") == 1
    });
    let st3 = state(&addr);
    let s3 = Snapshot::take(pid).unwrap_or_else(|e| panic!("{variant}: snapshot: {e}"));
    let (old_admin, new_admin) = (
        fd(&st2, "/listeners/admin/fd"),
        fd(&st3, "/listeners/admin/fd"),
    );
    let admin_addr = text(&st2, "/listeners/admin/addr");
    assert_ne!(
        old_admin, new_admin,
        "{variant}: the reload kept the admin fd"
    );
    assert_eq!(admin_addr, text(&st3, "/listeners/admin/addr"));
    // Each snapshot narrowed to the fds its own STATE names (the new admin
    // listener's number may have been a passing connection's before).
    let common = s2.common_threads(&s3);
    let view = |s: &Snapshot, st: &Value| {
        s.only_fds(&promised_fds(st))
            .file_mappings()
            .only_threads(&common)
    };
    let d = diff(&view(&s2, &st2), &view(&s3, &st3));
    let timer = fd(&st3, "/timerfd/fd");
    let want = [
        format!("fd {old_admin}: only before: socket "),
        format!("fd {new_admin}: only after: socket "),
        format!("fd {timer}: timerfd interval 100000000 ns -> 50000000 ns"),
    ];
    for w in &want {
        assert!(
            d.iter().any(|l| l.starts_with(w.as_str())),
            "{variant}: the diff after the reload does not say {w:?}:\n  {}",
            d.join("\n  ")
        );
    }
    assert_eq!(
        d.len(),
        want.len(),
        "{variant}: the diff after the reload names more than the admin listener and the timer:\n  {}",
        d.join("\n  ")
    );
    assert!(
        d.iter()
            .any(|l| l.contains("listening") && l.contains(admin_addr)),
        "{variant}: {d:#?}"
    );

    // Killed and restarted on the same directory: the WAL brings back every
    // acknowledged write.
    drop(store); // SIGKILL
    let again = start(tc, cgo, &data, &config);
    let after = verify(again.addr());
    assert_eq!(after, verified, "{variant}: verify after the restart");
    again.stop(Duration::from_secs(5)).expect("stop the store");
}

#[test]
fn durable_go127_cgo() {
    durable_fixture(GoToolchain::Go127, true);
}

#[test]
fn durable_go127_static() {
    durable_fixture(GoToolchain::Go127, false);
}

#[test]
fn durable_go119_cgo() {
    durable_fixture(GoToolchain::Go119, true);
}

#[test]
fn durable_go119_static() {
    durable_fixture(GoToolchain::Go119, false);
}
