//! Issue 9, acceptance test 6: a hostile network between the primary and the
//! backup. "Wrong key, a tampered frame, a truncated stream: refused with a clear
//! error; the backup's committed state unchanged." (The wrong key is
//! `replication::a_primary_with_another_key_is_refused_and_nothing_is_applied`.)
//!
//! `cs-driver primary` (a kvstore, 8 MiB preload, on the primary machine of a netns
//! [`Pair`]) reaches `cs-driver backup` (on the backup machine) only through a
//! [`Relay`] in the test process: a man in the middle on the client's address. The
//! relay forwards faithfully until the backup committed a full base and a few
//! deltas and a write was acknowledged, then holds back one record of epoch data.
//! While it is held, the backup's committed epoch N is read from its status
//! endpoint (it no longer changes: nothing more reaches the backup). Then the relay
//! tampers with the held record, replays an earlier one in its place, or forwards
//! half of it and closes the connection, and forwards nothing more.
//!
//! Checked: the backup logs a refusal naming what failed (the record's number, or
//! where the stream ended); the epoch it was receiving is discarded, not committed;
//! its committed epoch stays N; and when the primary machine is powered off it
//! promotes exactly epoch N, and the restored kvstore serves its preload and the
//! value acknowledged before the fault. On a failure the relay's actions and both
//! drivers' logs are printed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cs_tests::check::preload::verify_preload;
use cs_tests::driver::{self, Logged};
use cs_tests::fixture::{fixture_bin, temp_dir, GoToolchain};
use cs_tests::netns::Pair;
use cs_tests::procs::{kv_get, kv_request};
use cs_tests::relay::{Fault, Held, Relay, Target};

const APP: &str = "127.0.0.1:7000";
const PRELOAD_MIB: u64 = 8;
/// Both drivers' `--timeout`: long enough that holding a record for a few seconds
/// (while the test reads the backup's state) neither promotes the backup nor
/// stalls its staged epoch (the stall timeout is half of it).
const TIMEOUT_MS: u64 = 8000;
/// The held record is at least this long: epoch data (heartbeats and epoch
/// begin/commit records are under 100 bytes), and long enough for
/// [`Fault::FlipLength`] (it subtracts 32768).
const HELD_MIN_LEN: usize = 40_000;

/// Prints the relay's actions and both logs if the test panics.
struct OnFailure<'a> {
    relay: &'a Relay,
    logs: [PathBuf; 2],
}

impl Drop for OnFailure<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.relay.report());
            for l in &self.logs {
                eprintln!(
                    "---- {} ----\n{}",
                    l.display(),
                    std::fs::read_to_string(l).unwrap_or_default()
                );
            }
        }
    }
}

fn status(addr: &str) -> String {
    let out = driver::cs_ok(&["status", addr]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the series `name` (no labels) in a status text.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the status:\n{text}"))
}

/// The backup's (committed epoch, epochs committed) once they read the same
/// `reads` times in a row, 250 ms apart.
fn stable_epoch(addr: &str, reads: usize, limit: Duration) -> (u64, u64) {
    let t = Instant::now();
    let read = || {
        let s = status(addr);
        (
            metric(&s, "checksync_epoch"),
            metric(&s, "checksync_epochs_total"),
        )
    };
    let mut last = read();
    let mut same = 1;
    while same < reads {
        assert!(
            t.elapsed() < limit,
            "the backup's epoch did not settle within {limit:?} (last {last:?})"
        );
        std::thread::sleep(Duration::from_millis(250));
        let now = read();
        if now == last {
            same += 1;
        } else {
            (last, same) = (now, 1);
        }
    }
    last
}

/// The last epoch the backup logged as discarded (its staged one) and the bytes
/// of it received, if any.
fn discarded_epoch(log: &str) -> Option<(u64, u64)> {
    let i = log.rfind(DISCARDED)? + DISCARDED.len();
    let number = |s: &str| -> Option<u64> {
        let d: String = s.chars().take_while(char::is_ascii_digit).collect();
        d.parse().ok()
    };
    let epoch = number(&log[i..])?;
    let j = log[i..].find(" is discarded (")? + i + " is discarded (".len();
    Some((epoch, number(&log[j..])?))
}

const DISCARDED: &str = "the staged epoch ";

fn hostile(fault: Fault) {
    let pair = Pair::new().expect("the netns harness (run as root, with iproute2)");
    let dir = temp_dir("replication-hostile");
    let key = dir.path().join("key");
    driver::cs_ok(&["keygen", key.to_str().unwrap()]);
    let _ = driver::stub();
    let listen: SocketAddr = format!("{}:9100", pair.backup().addr()).parse().unwrap();
    let public = format!("{}:8000", pair.public_addr());
    let bstatus = format!("{}:9200", pair.backup().addr());
    let pstatus = format!("{}:9200", pair.primary().addr());
    let relay = Relay::start(SocketAddr::new(pair.client_addr().into(), 0), listen)
        .expect("starting the relay");
    let (blog, plog) = (
        dir.path().join("backup.log"),
        dir.path().join("primary.log"),
    );
    let _report = OnFailure {
        relay: &relay,
        logs: [blog.clone(), plog.clone()],
    };
    pair.primary()
        .claim_public()
        .expect("public address on the primary");

    let timeout = TIMEOUT_MS.to_string();
    let mut bcmd = pair.backup().command(driver::driver());
    bcmd.args(["backup", "--listen", &listen.to_string(), "--key"])
        .arg(&key)
        .args([
            "--serve",
            &public,
            "--status",
            &bstatus,
            "--timeout",
            &timeout,
        ])
        .arg("--app-stdout")
        .arg(dir.path().join("restored.out"))
        .arg("--app-stderr")
        .arg(dir.path().join("restored.err"))
        // Every commit logged (deltas are at debug), for the failure output.
        .env(
            "RUST_LOG",
            "warn,cs_driver=info,cs_driver::node::backup=debug",
        );
    let mut backup = Logged::spawn(bcmd, &blog);
    backup.wait_for("backup waiting for a primary", Duration::from_secs(10));

    let mut pcmd = pair.primary().command(driver::driver());
    pcmd.args(["primary", "--backup", &relay.addr().to_string(), "--key"])
        .arg(&key)
        .args([
            "--serve",
            &format!("{public}={APP}"),
            "--status",
            &pstatus,
            "--timeout",
            &timeout,
            "--",
        ])
        .arg(fixture_bin(GoToolchain::Go127, "kvstore"))
        .args(["-addr", APP, "-preload-mib", &PRELOAD_MIB.to_string()]);
    let mut primary = Logged::spawn(pcmd, &plog);
    primary.wait_for("PROTECTED", Duration::from_secs(60));
    primary.wait_for("READY", Duration::from_secs(60));

    // A write acknowledged through the proxy: its reply left only once the backup
    // had committed an epoch holding it.
    let marker = format!("acked-{}", std::process::id());
    let r = kv_request(
        &public,
        &format!("PUT marker {marker}"),
        Duration::from_secs(20),
    )
    .expect("PUT marker through the public address");
    assert!(r.contains("OK"), "PUT marker answered {r:?}");
    // A full base and some deltas committed.
    let t = Instant::now();
    loop {
        let s = status(&bstatus);
        if metric(&s, "checksync_full_epochs_total") >= 1
            && metric(&s, "checksync_epochs_total") >= 5
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the backup did not commit a base and 4 deltas within 30 s:\n{s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A record of epoch data; for the body flip and the truncation, one of a
    // later chunk of its epoch, so the backup has staged part of the epoch.
    let target = match fault {
        Fault::FlipBody | Fault::Truncate => Target::LaterChunk(HELD_MIN_LEN),
        Fault::FlipLength | Fault::Replay => Target::AtLeast(HELD_MIN_LEN),
    };
    let held: Held = relay
        .hold_next(target, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    // Nothing more reaches the backup: what it committed now is what it holds
    // before the fault.
    let (n0, total0) = stable_epoch(&bstatus, 4, Duration::from_secs(5));
    // The backup's log from the fault on.
    let mark = backup.log().len();
    let struck = relay
        .strike(fault, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(struck, held);
    eprintln!(
        "{fault:?}: record {held:?} struck; the backup had committed epoch {n0} ({total0} epochs)"
    );

    // The refusal names what failed.
    match fault {
        Fault::FlipBody | Fault::FlipLength | Fault::Replay => {
            backup.wait_for(
                &format!(
                    "REFUSED data from the primary: record {} from the peer failed authentication",
                    held.record
                ),
                Duration::from_secs(20),
            );
        }
        Fault::Truncate => {
            backup.wait_for(
                &format!(
                    "the stream was truncated: the stream ended {} bytes into record {} ({} bytes)",
                    held.len / 2,
                    held.record,
                    held.len
                ),
                Duration::from_secs(20),
            );
            backup.wait_for("the primary's stream was cut short", Duration::from_secs(5));
        }
    }
    // The epoch it was receiving is discarded, not committed.
    let t = Instant::now();
    while !backup.log()[mark..].contains(DISCARDED) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the backup did not discard the epoch it was receiving:\n{}",
            backup.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = backup.log()[mark..].to_string();
    let (staged, staged_bytes) = discarded_epoch(&log).expect("the discarded epoch's number");
    assert!(
        staged > n0,
        "the discarded epoch {staged} is not newer than the committed {n0}:\n{log}"
    );
    if matches!(target, Target::LaterChunk(_)) {
        assert!(
            staged_bytes > 0,
            "the held record was meant to follow a chunk of its epoch, yet the backup had staged none of epoch {staged}:\n{log}"
        );
    }
    // The committed state does not move while nothing is forwarded (the primary
    // reconnects; the relay closes every new connection).
    for _ in 0..8 {
        let s = status(&bstatus);
        assert_eq!(
            (
                metric(&s, "checksync_epoch"),
                metric(&s, "checksync_epochs_total")
            ),
            (n0, total0),
            "the backup's committed state moved after the fault:\n{s}"
        );
        assert!(
            s.contains("checksync_role{role=\"backup\"} 1"),
            "the backup promoted too soon (its timeout is {TIMEOUT_MS} ms):\n{s}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let log = backup.log()[mark..].to_string();
    assert!(
        !log.contains("committed a"),
        "the backup committed an epoch after the fault:\n{log}"
    );

    // The primary machine dies; the backup promotes what it committed before.
    pair.primary()
        .power_off()
        .expect("power off the primary machine");
    pair.primary()
        .release_public()
        .expect("release the public address");
    pair.backup()
        .claim_public()
        .expect("public address on the backup");
    backup.wait_for(
        &format!("PROMOTED at epoch {n0}:"),
        Duration::from_secs(TIMEOUT_MS / 1000 + 30),
    );
    let s = status(&bstatus);
    assert_eq!(metric(&s, "checksync_promoted_epoch"), n0, "{s}");

    let t = Instant::now();
    let got = loop {
        match kv_get(&public, "marker", Duration::from_secs(2)) {
            Ok(v) => break v,
            Err(e) => assert!(
                t.elapsed() < Duration::from_secs(30),
                "the promoted backup does not answer on the public address: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        got.as_deref(),
        Some(marker.as_str()),
        "a write acknowledged before the fault is not in the promoted epoch {n0}"
    );
    verify_preload(&public, PRELOAD_MIB, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("preload after the promotion of epoch {n0}: {e}"));
    eprintln!("{}", relay.report());
    let blog = backup.log();
    let said: Vec<&str> = blog[mark..]
        .lines()
        .filter(|l| {
            ["REFUSED", "cut short", DISCARDED, "PROMOTED"]
                .iter()
                .any(|w| l.contains(w))
        })
        .collect();
    eprintln!("{fault:?}: the backup said:\n  {}", said.join("\n  "));
    drop(primary);
    drop(backup);
    pair.close().expect("tear down the pair");
}

#[test]
fn a_tampered_frame_is_refused_and_the_committed_state_is_promoted() {
    hostile(Fault::FlipBody);
}

#[test]
fn a_tampered_length_prefix_is_refused_and_the_committed_state_is_promoted() {
    hostile(Fault::FlipLength);
}

#[test]
fn a_replayed_frame_is_refused_and_the_committed_state_is_promoted() {
    hostile(Fault::Replay);
}

#[test]
fn a_truncated_stream_discards_the_partial_epoch_and_the_committed_state_is_promoted() {
    hostile(Fault::Truncate);
}
