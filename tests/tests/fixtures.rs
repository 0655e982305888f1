//! End-to-end runs of the Go fixtures, without CheckSync: each service built
//! with each toolchain is started, driven by its load client(s) for a few
//! seconds, and judged by its checker from what the clients recorded.
//!
//! These tests establish the baseline the dump/restore tests rely on: the
//! fixtures and the checkers agree when nothing is done to the service. A
//! missing Go toolchain or binary fails the test (`scripts/setup.sh` fixes it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cs_tests::check::history::{load_kv, load_lock, KvInput, KvOp, LockInput, LockOp, Status};
use cs_tests::check::kv::{check_kv, KvCheckOptions, KvVerdict};
use cs_tests::check::lock::{check_locks, LockViolation};
use cs_tests::check::mr::check_mr;
use cs_tests::check::preload::{preload_count, verify_preload};
use cs_tests::fixture::{
    fixture_bin, gen_mr_inputs, run_client, temp_dir, Client, ClientRun, GoToolchain, Service,
};

const PRELOAD_MIB: u64 = 8;
const LOAD_SECONDS: u32 = 3;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// The summary JSON of a load client, asserting it ran cleanly: exit 0, some
/// operations, no errors (fail/unknown) and no answer it could tell was wrong.
fn clean_summary(run: &ClientRun) -> serde_json::Value {
    run.assert_success();
    let s = run
        .summary()
        .unwrap_or_else(|| panic!("{}: no JSON summary line: {}", run.program, run.stdout));
    assert!(
        s["ops"].as_u64().unwrap_or(0) > 0,
        "{}: no ops: {s}",
        run.program
    );
    assert_eq!(
        s["errors"], 0,
        "{}: errors: {s}\n{}",
        run.program, run.stderr
    );
    assert_eq!(
        s["wrong"], 0,
        "{}: wrong answers: {s}\n{}",
        run.program, run.stderr
    );
    s
}

/// kvstore with 8 MiB preloaded, one kvclient (4 connections, 20 keys, half
/// writes) for 3 s recording a history; then linearizability of the history and
/// every preloaded value read back.
///
/// Then checks that the checkers catch a stale read injected into the recorded
/// history and a preloaded value overwritten in the store.
///
/// Does not prove: linearizability beyond this one run's interleavings (the
/// store is a map behind one mutex, so this mostly checks the client, the
/// history contract and the checker end to end); anything about failures,
/// reconnects or unknown outcomes (none happen here); that the TTL sweep or the
/// ticker key behave (the client does not touch them); the preload check reads
/// values after the load, so it does not show they were readable during it.
fn kv_linearizable_and_preload_intact(tc: GoToolchain) {
    let started = Instant::now();
    let store = Service::start(
        &fixture_bin(tc, "kvstore"),
        &[
            "-addr",
            "127.0.0.1:0",
            "-preload-mib",
            &PRELOAD_MIB.to_string(),
            "-log-stats",
            "0",
        ],
    )
    .unwrap_or_else(|e| panic!("{tc}: {e}"));
    let dir = temp_dir("kv");
    let hist = dir.path().join("kv-history.jsonl");
    let run = Client::spawn({
        let mut c = Command::new(fixture_bin(tc, "kvclient"));
        c.args([
            "-addr",
            store.addr(),
            "-duration",
            &format!("{LOAD_SECONDS}s"),
        ])
        .args(["-conns", "4", "-keys", "20", "-write-frac", "0.5", "-quiet"])
        .args(["-history", p(&hist)]);
        c
    })
    .and_then(|c| c.wait(CLIENT_TIMEOUT))
    .unwrap_or_else(|e| panic!("{tc}: {e}"));
    let summary = clean_summary(&run);

    let ops = load_kv(&[&hist]).unwrap_or_else(|e| panic!("{tc}: {e}"));
    assert_eq!(
        ops.len() as u64,
        summary["ops"].as_u64().unwrap(),
        "{tc}: history lines vs summary ops"
    );
    assert!(
        ops.iter().all(|o| o.status == Status::Ok),
        "{tc}: non-ok op"
    );
    let t = Instant::now();
    let verdict = check_kv(&ops, &KvCheckOptions::default());
    let check_time = t.elapsed();
    assert!(
        matches!(verdict, KvVerdict::Linearizable { keys: 20, .. }),
        "{tc}: {verdict}"
    );

    let report = verify_preload(store.addr(), PRELOAD_MIB, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{tc}: preload: {e}"));
    assert_eq!(report.keys, preload_count(PRELOAD_MIB));

    // The checkers have teeth on this run's data: a stale read injected into
    // the real history, and one preloaded value overwritten in the real store.
    let mut stale = ops.clone();
    stale.push(stale_read(&ops).unwrap_or_else(|| panic!("{tc}: no two sequential puts")));
    match check_kv(&stale, &KvCheckOptions::default()) {
        KvVerdict::NotLinearizable(c) => assert!(c.ops.len() <= 3, "{tc}: {c}"),
        other => panic!("{tc}: injected stale read not caught: {other}"),
    }
    let put = run_client(
        &fixture_bin(tc, "kvclient"),
        &["-addr", store.addr(), "-cmd", "PUT pre/5 overwritten"],
        CLIENT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{tc}: {e}"));
    put.assert_success();
    let err = verify_preload(store.addr(), PRELOAD_MIB, Duration::from_secs(30))
        .expect_err("overwritten preload value not caught");
    assert!(
        err.to_string().contains("first bad key pre/5"),
        "{tc}: {err}"
    );
    assert!(
        store.stderr_tail(64 << 10).contains("preloaded"),
        "{tc}: kvstore did not log its preload"
    );
    eprintln!(
        "{tc} kv: {} ops ({summary}), {verdict} in {check_time:.1?}, {} preloaded keys intact, {:.1?} in all",
        ops.len(),
        report.keys,
        started.elapsed()
    );
}

/// A read, after two puts of one key that ran one after the other, of the first
/// put's value.
fn stale_read(ops: &[KvOp]) -> Option<KvOp> {
    let mut puts: Vec<&KvOp> = ops
        .iter()
        .filter(|o| matches!(o.input, KvInput::Put(_)))
        .collect();
    puts.sort_by_key(|o| o.invoke_ns);
    for (i, p1) in puts.iter().enumerate() {
        let done1 = p1.complete_ns?;
        let Some(p2) = puts[i + 1..]
            .iter()
            .find(|p2| p2.key == p1.key && p2.invoke_ns > done1)
        else {
            continue;
        };
        let KvInput::Put(v) = &p1.input else {
            continue;
        };
        let after = p2.complete_ns? + 1;
        return Some(KvOp {
            client: "999999".into(),
            key: p1.key.clone(),
            input: KvInput::Get {
                output: Some(v.clone()),
            },
            invoke_ns: after,
            complete_ns: Some(after + 1),
            status: Status::Ok,
            origin: None,
        });
    }
    None
}

/// lockserver, three lockclient processes (2 connections each, 4 locks, 1 ms
/// holds, a HOLDER query while holding) for 3 s with histories; then mutual
/// exclusion over the merged histories (wall clock), and that a grant injected
/// into the middle of a recorded hold is caught.
///
/// Does not prove: exclusion in the gaps between a release being sent and a
/// grant arriving (the checker only uses certain intervals); anything about
/// leases, waits that time out under failures, or resent requests after a lost
/// reply (none happen here).
fn lock_mutual_exclusion(tc: GoToolchain) {
    let started = Instant::now();
    let server = Service::start(
        &fixture_bin(tc, "lockserver"),
        &["-addr", "127.0.0.1:0", "-log-stats", "0"],
    )
    .unwrap_or_else(|e| panic!("{tc}: {e}"));
    let dir = temp_dir("lock");
    let histories: Vec<PathBuf> = (1..=3)
        .map(|i| dir.path().join(format!("lock-history-{i}.jsonl")))
        .collect();
    let clients: Vec<Client> = histories
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let mut c = Command::new(fixture_bin(tc, "lockclient"));
            c.args([
                "-addr",
                server.addr(),
                "-duration",
                &format!("{LOAD_SECONDS}s"),
            ])
            .args(["-conns", "2", "-locks", "4", "-hold", "1ms", "-quiet"])
            .args(["-client-id-base", &format!("{}", 100 * (i + 1))])
            .args(["-seed", &format!("{}", i + 1), "-history", p(h)]);
            Client::spawn(c).unwrap_or_else(|e| panic!("{tc}: {e}"))
        })
        .collect();
    for c in clients {
        let run = c
            .wait(CLIENT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{tc}: {e}"));
        clean_summary(&run);
    }

    let ops = load_lock(&histories).unwrap_or_else(|e| panic!("{tc}: {e}"));
    let report = check_locks(&ops);
    assert!(report.ok(), "{tc}: {report}");
    // The run must have exercised the property: many grants, and grants that
    // had to wait for another client's release.
    assert!(report.holds.len() >= 50, "{tc}: only {report}");
    let waited = ops
        .iter()
        .filter(|o| matches!(o.input, LockInput::Acquire { granted: true, .. }))
        .filter(|o| o.complete_ns.unwrap_or(0) - o.invoke_ns > 500_000)
        .count();
    assert!(waited > 0, "{tc}: no acquire ever waited: no contention");
    assert!(report.holder_queries > 0, "{tc}: no holder queries");

    // The checker has teeth on this run's data: one more client granted the
    // lock in the middle of a real hold must be reported.
    let h = &report.holds[report.holds.len() / 2];
    let mid = h.from_ns + (h.until_ns - h.from_ns) / 2;
    let intruder = |input, t: u64| LockOp {
        client: "999999".into(),
        lock: h.lock.clone(),
        input,
        invoke_ns: t,
        complete_ns: Some(t),
        status: Status::Ok,
        origin: None,
    };
    let mut bad = ops.clone();
    bad.push(intruder(
        LockInput::Acquire {
            granted: true,
            lease_ms: None,
        },
        mid,
    ));
    bad.push(intruder(
        LockInput::Release {
            released: Some(true),
        },
        h.until_ns,
    ));
    let bad_report = check_locks(&bad);
    assert!(
        bad_report.violations.iter().any(|v| matches!(v,
            LockViolation::Overlap { first, second } if first.client == h.client && second.client == "999999")),
        "{tc}: injected overlap not caught: {bad_report}"
    );
    eprintln!(
        "{tc} lock: {} ops, {report}, {waited} grants waited > 0.5 ms, {:.1?} in all",
        ops.len(),
        started.elapsed()
    );
}

/// mrcoord over 4 MiB of generated input in 8 files (4 reduce tasks), three
/// mrworker processes until they exit on "done"; then the mr-out-* files
/// against a sequential word count, with the Rust checker and with `cs-check`.
///
/// Does not prove: task reassignment after a silent worker, or surviving a
/// coordinator that goes away (no worker or coordinator fails here); that the
/// checker's tokenization matches Go's beyond ASCII (the inputs are ASCII).
fn mapreduce_word_count(tc: GoToolchain) {
    let started = Instant::now();
    let dir = temp_dir("mr");
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    let coord_bin = fixture_bin(tc, "mrcoord");
    gen_mr_inputs(tc, &input);
    let coord = Service::start(
        &coord_bin,
        &[
            "-addr",
            "127.0.0.1:0",
            "-inputs",
            p(&input),
            "-nreduce",
            "4",
            "-log-stats",
            "0",
        ],
    )
    .unwrap_or_else(|e| panic!("{tc}: {e}"));
    let workers: Vec<Client> = (1..=3)
        .map(|i| {
            let mut c = Command::new(fixture_bin(tc, "mrworker"));
            c.args(["-coord", coord.addr(), "-out", p(&output)]).args([
                "-id",
                &format!("w{i}"),
                "-map-delay",
                "50ms",
            ]);
            Client::spawn(c).unwrap_or_else(|e| panic!("{tc}: {e}"))
        })
        .collect();
    for w in workers {
        w.wait(CLIENT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{tc}: {e}"))
            .assert_success();
    }
    // The coordinator says DONE on stdout when the last reduce task completes,
    // before any worker is told "done".
    let deadline = Instant::now() + Duration::from_secs(5);
    while !coord.stdout_tail(4096).contains("\nDONE ") {
        assert!(
            Instant::now() < deadline,
            "{tc}: no DONE from mrcoord; stdout: {}",
            coord.stdout_tail(4096)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = check_mr(&input, &output).unwrap_or_else(|e| panic!("{tc}: {e}"));
    assert!(report.ok(), "{tc}: {report}");
    assert_eq!(report.input_files, 8);
    assert_eq!(report.output_files, 4);
    assert!(report.total_words > 100_000, "{tc}: {report}");

    let cli = run_client(
        Path::new(env!("CARGO_BIN_EXE_cs-check")),
        &["mr", p(&input), p(&output)],
        CLIENT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{tc}: {e}"));
    cli.assert_success();
    eprintln!("{tc} mr: {report}, {:.1?} in all", started.elapsed());
}

#[test]
fn kv_go127() {
    kv_linearizable_and_preload_intact(GoToolchain::Go127);
}

#[test]
fn kv_go119() {
    kv_linearizable_and_preload_intact(GoToolchain::Go119);
}

#[test]
fn lock_go127() {
    lock_mutual_exclusion(GoToolchain::Go127);
}

#[test]
fn lock_go119() {
    lock_mutual_exclusion(GoToolchain::Go119);
}

#[test]
fn mr_go127() {
    mapreduce_word_count(GoToolchain::Go127);
}

#[test]
fn mr_go119() {
    mapreduce_word_count(GoToolchain::Go119);
}
