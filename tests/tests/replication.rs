//! Live replication end to end (issue 9): `cs-driver primary` protects a kvstore
//! on the primary "machine" of a netns [`Pair`], `cs-driver backup` holds its
//! epochs on the backup machine, and a kvclient load runs through the public
//! address. Then the primary machine is powered off (unplugged, every process
//! killed: the client and the backup see silence). The backup promotes, restores
//! the kvstore from its in-memory store and serves the public port; the test moves
//! the floating public address to the backup machine (as an address manager
//! would: `claim_public`), and the client reconnects to the same address.
//!
//! Checked: the client's history is linearizable (an operation whose reply never
//! came may or may not have happened), a value acknowledged before the death is
//! there after it, every preloaded value is intact, and the client carried on
//! after the failover.

use std::path::Path;
use std::time::{Duration, Instant};

use cs_tests::check::{history, kv, preload::verify_preload};
use cs_tests::driver::{self, Logged};
use cs_tests::fixture::{fixture_bin, kv_load, temp_dir, Client, GoToolchain};
use cs_tests::netns::Pair;
use cs_tests::procs::{kv_get, kv_request};

const APP: &str = "127.0.0.1:7000";
const PRELOAD_MIB: u64 = 64;

fn failover_under_load(tc: GoToolchain) {
    let pair = Pair::new().expect("the netns harness (run as root, with iproute2)");
    let dir = temp_dir("replication");
    let key = dir.path().join("key");
    driver::cs_ok(&["keygen", key.to_str().unwrap()]);
    let preload = PRELOAD_MIB.to_string();
    let (primary, mut backup, public) = start_protected(
        &pair,
        dir.path(),
        &key,
        &fixture_bin(tc, "kvstore"),
        &["-addr", APP, "-preload-mib", &preload],
    );

    let hist = dir.path().join("history.jsonl");
    let client = Client::spawn(kv_load(tc, &public, "16s", &hist)).expect("kvclient");
    std::thread::sleep(Duration::from_secs(3));
    // A write acknowledged through the proxy: its reply left only after the
    // backup held the state that made it.
    let marker = format!("acked-{}", std::process::id());
    let r = kv_request(
        &public,
        &format!("PUT marker {marker}"),
        Duration::from_secs(10),
    )
    .expect("PUT marker through the public address");
    assert!(r.contains("OK"), "PUT marker answered {r:?}");
    // The death comes at a moment that differs between runs (printed, so a
    // failing run can be repeated with CS_REPL_DEATH_MS).
    let death_ms: u64 = std::env::var("CS_REPL_DEATH_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            // RandomState is seeded from the OS's randomness.
            use std::hash::BuildHasher;
            let n = std::collections::hash_map::RandomState::new().hash_one(tc.version());
            200 + n % 3000
        });
    eprintln!("{tc:?}: the primary machine dies {death_ms} ms after the marker write (CS_REPL_DEATH_MS={death_ms})");
    std::thread::sleep(Duration::from_millis(death_ms));

    let promoted_after = machine_death(&pair, &mut backup);

    let run = client.wait(Duration::from_secs(90)).expect("kvclient");
    run.assert_success();
    let summary = run.summary().expect("kvclient summary");
    assert_eq!(
        summary["wrong"], 0,
        "the client saw wrong values: {summary}"
    );
    assert!(
        summary["reconnects"].as_u64().unwrap_or(0) > 0,
        "the client never reconnected, so it never reached the backup: {summary}"
    );

    let ops = history::load_kv(&[&hist]).expect("history");
    let verdict = kv::check_kv(&ops, &kv::KvCheckOptions::default());
    assert!(
        verdict.is_linearizable(),
        "{tc:?}: history not linearizable: {verdict:?}\nbackup log:\n{}",
        backup.log()
    );
    let got = kv_get(&public, "marker", Duration::from_secs(10)).expect("GET marker");
    assert_eq!(
        got.as_deref(),
        Some(marker.as_str()),
        "{tc:?}: an acknowledged write was lost in the failover"
    );
    verify_preload(&public, PRELOAD_MIB, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{tc:?}: preload after failover: {e}"));
    let blog = backup.log();
    assert!(blog.contains("committed a full base"), "{blog}");
    eprintln!(
        "{tc:?}: promoted {:.1} s after the power-off; {} ops in the history; client: {summary}",
        promoted_after.as_secs_f64(),
        ops.len()
    );
    drop(primary);
    drop(backup);
    pair.close().expect("tear down the pair");
}

#[test]
fn kvstore_fails_over_to_the_backup_when_the_primary_machine_dies() {
    for tc in GoToolchain::ALL {
        failover_under_load(tc);
    }
}

/// Starts a backup (key `bkey`) and a primary (key `pkey`) protecting a small
/// kvstore on `pair`, each with a status endpoint; returns (primary, backup,
/// public, primary status, backup status).
fn start_pair(
    pair: &Pair,
    dir: &Path,
    pkey: &Path,
    bkey: &Path,
) -> (Logged, Logged, String, String, String) {
    let listen = format!("{}:9100", pair.backup().addr());
    let public = format!("{}:8000", pair.public_addr());
    let pstatus = format!("{}:9200", pair.primary().addr());
    let bstatus = format!("{}:9200", pair.backup().addr());
    pair.primary()
        .claim_public()
        .expect("public address on the primary");
    let mut bcmd = pair.backup().command(driver::driver());
    bcmd.args(["backup", "--listen", &listen, "--key"])
        .arg(bkey)
        .args(["--serve", &public, "--status", &bstatus]);
    let mut backup = Logged::spawn(bcmd, &dir.join("backup.log"));
    backup.wait_for("backup waiting for a primary", Duration::from_secs(10));
    let mut pcmd = pair.primary().command(driver::driver());
    pcmd.args(["primary", "--backup", &listen, "--key"])
        .arg(pkey)
        .args([
            "--serve",
            &format!("{public}={APP}"),
            "--status",
            &pstatus,
            "--",
        ])
        .arg(fixture_bin(GoToolchain::Go127, "kvstore"))
        .args(["-addr", APP, "-preload-mib", "8"]);
    let mut primary = Logged::spawn(pcmd, &dir.join("primary.log"));
    primary.wait_for("READY", Duration::from_secs(30));
    (primary, backup, public, pstatus, bstatus)
}

fn status(addr: &str) -> String {
    let out = driver::cs_ok(&["status", addr]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn put_get(public: &str, key: &str, value: &str) {
    let r = kv_request(
        public,
        &format!("PUT {key} {value}"),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("PUT {key} through {public}: {e}"));
    assert!(r.contains("OK"), "PUT {key} answered {r:?}");
    let got = kv_get(public, key, Duration::from_secs(10)).expect("GET");
    assert_eq!(got.as_deref(), Some(value));
}

#[test]
fn a_primary_with_another_key_is_refused_and_nothing_is_applied() {
    let pair = Pair::new().expect("the netns harness (run as root, with iproute2)");
    let dir = temp_dir("replication-key");
    let (pkey, bkey) = (dir.path().join("pkey"), dir.path().join("bkey"));
    driver::cs_ok(&["keygen", pkey.to_str().unwrap()]);
    driver::cs_ok(&["keygen", bkey.to_str().unwrap()]);
    let (mut primary, mut backup, public, pstatus, bstatus) =
        start_pair(&pair, dir.path(), &pkey, &bkey);
    backup.wait_for("REFUSED a connection", Duration::from_secs(20));
    primary.wait_for("same key file", Duration::from_secs(20));
    // The program serves, unprotected: output is released without a backup.
    put_get(&public, "k", "v1");
    std::thread::sleep(Duration::from_millis(500));
    let b = status(&bstatus);
    assert!(b.contains("\nchecksync_epochs_total 0\n"), "{b}");
    assert!(b.contains("\nchecksync_epoch 0\n"), "{b}");
    let p = status(&pstatus);
    assert!(p.contains("\nchecksync_protected 0\n"), "{p}");
    let blog = backup.log();
    assert!(!blog.contains("committed"), "{blog}");
    assert!(!blog.contains("a primary connected"), "{blog}");
    drop(primary);
    drop(backup);
    pair.close().expect("tear down the pair");
}

/// The handshake compares kernel features: a backup that lacks one the primary's
/// epochs need (played with `CS_TEST_HIDE_KERNEL_FEATURES`, here MPTCP) refuses
/// before anything of the program is sent, and both sides say which.
#[test]
fn a_backup_without_a_kernel_feature_refuses_the_primary() {
    let pair = Pair::new().expect("the netns harness (run as root, with iproute2)");
    let dir = temp_dir("replication-features");
    let key = dir.path().join("key");
    driver::cs_ok(&["keygen", key.to_str().unwrap()]);
    let listen = format!("{}:9100", pair.backup().addr());
    let public = format!("{}:8000", pair.public_addr());
    let bstatus = format!("{}:9200", pair.backup().addr());
    pair.primary().claim_public().expect("public");
    let mut bcmd = pair.backup().command(driver::driver());
    bcmd.args(["backup", "--listen", &listen, "--key"])
        .arg(&key)
        .args(["--serve", &public, "--status", &bstatus])
        .env("CS_TEST_HIDE_KERNEL_FEATURES", "16");
    let mut backup = Logged::spawn(bcmd, &dir.path().join("backup.log"));
    backup.wait_for("backup waiting for a primary", Duration::from_secs(10));
    let mut pcmd = pair.primary().command(driver::driver());
    pcmd.args(["primary", "--backup", &listen, "--key"])
        .arg(&key)
        .args(["--serve", &format!("{public}={APP}"), "--"])
        .arg(fixture_bin(GoToolchain::Go127, "kvstore"))
        .args(["-addr", APP, "-preload-mib", "8"]);
    let mut primary = Logged::spawn(pcmd, &dir.path().join("primary.log"));
    backup.wait_for(
        "REFUSED a primary: kernel features the primary's epochs need are missing on this node: MPTCP",
        Duration::from_secs(30),
    );
    primary.wait_for("MPTCP", Duration::from_secs(30));
    primary.wait_for("UNPROTECTED", Duration::from_secs(30));
    primary.wait_for("READY", Duration::from_secs(30));
    put_get(&public, "k", "v");
    let b = status(&bstatus);
    assert!(b.contains("\nchecksync_epochs_total 0\n"), "{b}");
    assert!(!backup.log().contains("committed"), "{}", backup.log());
    drop(primary);
    drop(backup);
    pair.close().expect("tear down the pair");
}

#[test]
fn the_backup_killed_leaves_the_primary_serving_unprotected_until_a_new_backup_joins() {
    let pair = Pair::new().expect("the netns harness (run as root, with iproute2)");
    let dir = temp_dir("replication-backup-dies");
    let key = dir.path().join("key");
    driver::cs_ok(&["keygen", key.to_str().unwrap()]);
    let (mut primary, backup, public, pstatus, _) = start_pair(&pair, dir.path(), &key, &key);
    primary.wait_for("PROTECTED", Duration::from_secs(30));
    put_get(&public, "before", "1");
    let p = status(&pstatus);
    assert!(p.contains("\nchecksync_protected 1\n"), "{p}");
    pair.backup()
        .kill_all()
        .expect("kill the backup machine's processes");
    drop(backup);
    primary.wait_for("UNPROTECTED", Duration::from_secs(20));
    put_get(&public, "after", "2");
    let p = status(&pstatus);
    assert!(p.contains("\nchecksync_protected 0\n"), "{p}");
    assert!(p.contains("checksync_role{role=\"primary\"} 1"), "{p}");

    // A new backup joins on the same address: the primary (which kept trying)
    // streams it a fresh base and is protected again.
    let listen = format!("{}:9100", pair.backup().addr());
    let mut bcmd = pair.backup().command(driver::driver());
    bcmd.args(["backup", "--listen", &listen, "--key"])
        .arg(&key)
        .args(["--serve", &public]);
    let mut backup2 = Logged::spawn(bcmd, &dir.path().join("backup2.log"));
    backup2.wait_for("committed a full base", Duration::from_secs(30));
    let t = Instant::now();
    while !status(&pstatus).contains("\nchecksync_protected 1\n") {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the primary is not protected again: {}\n{}",
            status(&pstatus),
            primary.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let plog = primary.log();
    let after_unprotected = &plog[plog.find("UNPROTECTED").expect("logged")..];
    assert!(
        after_unprotected.contains("PROTECTED: the backup committed"),
        "{plog}"
    );
    put_get(&public, "again", "3");
    // The new backup holds the state: it takes over with every value.
    pair.primary()
        .power_off()
        .expect("power off the primary machine");
    pair.primary().release_public().expect("release");
    pair.backup().claim_public().expect("claim");
    backup2.wait_for("PROMOTED at epoch", Duration::from_secs(30));
    for (k, v) in [("before", "1"), ("after", "2"), ("again", "3")] {
        let t = Instant::now();
        let got = loop {
            match kv_get(&public, k, Duration::from_secs(2)) {
                Ok(v) => break v,
                Err(e) => assert!(
                    t.elapsed() < Duration::from_secs(30),
                    "the promoted new backup does not answer: {e}\n{}",
                    backup2.log()
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(
            got.as_deref(),
            Some(v),
            "{k} after the new backup took over"
        );
    }
    drop(primary);
    drop(backup2);
    pair.close().expect("tear down the pair");
}

/// The two-node policy's documented weakness, and its fencing: a partition makes
/// both sides serve (the primary unprotected, the backup promoted); when it heals,
/// the old primary's reconnect is refused, it is fenced and stops its program, and
/// the promoted side serves alone.
#[test]
fn after_a_partition_heals_the_old_primary_is_fenced() {
    let pair = Pair::new().expect("the netns harness (run as root, with iproute2)");
    let dir = temp_dir("replication-partition");
    let key = dir.path().join("key");
    driver::cs_ok(&["keygen", key.to_str().unwrap()]);
    let (mut primary, mut backup, public, pstatus, bstatus) =
        start_pair(&pair, dir.path(), &key, &key);
    primary.wait_for("PROTECTED", Duration::from_secs(30));
    put_get(&public, "before", "1");

    pair.partition().expect("partition");
    backup.wait_for("PROMOTED at epoch", Duration::from_secs(30));
    primary.wait_for("UNPROTECTED", Duration::from_secs(30));
    // Split brain: the old primary still answers on the public address it holds.
    put_get(&public, "split", "old-primary");
    let b = status(&bstatus);
    assert!(b.contains("checksync_role{role=\"serving\"} 1"), "{b}");
    let p = status(&pstatus);
    assert!(p.contains("checksync_role{role=\"primary\"} 1"), "{p}");

    pair.heal_partition().expect("heal");
    primary.wait_for("FENCED", Duration::from_secs(30));
    let t = Instant::now();
    let st = loop {
        if let Some(st) = primary.child.try_wait().expect("wait") {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the fenced primary did not exit:\n{}",
            primary.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!st.success(), "a fenced primary exits with an error");
    let t = Instant::now();
    while !pair.primary().pids().is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the fenced primary's program still runs: {:?}",
            pair.primary().pids()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    pair.primary().release_public().expect("release");
    pair.backup().claim_public().expect("claim");
    // The promoted side has what was acknowledged before the partition, and not
    // the split's write on the old primary (lost, as docs/replication.md says).
    let t = Instant::now();
    let got = loop {
        match kv_get(&public, "before", Duration::from_secs(2)) {
            Ok(v) => break v,
            Err(e) => assert!(
                t.elapsed() < Duration::from_secs(30),
                "the promoted backup does not answer on the public address: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(got.as_deref(), Some("1"));
    assert_eq!(
        kv_get(&public, "split", Duration::from_secs(5)).expect("GET split"),
        None
    );
    drop(primary);
    drop(backup);
    pair.close().expect("tear down the pair");
}

/// A `cs-driver backup` on `m`, listening on its 9100 and re-protecting towards
/// `peer`'s 9100 once it promotes.
fn start_backup(
    m: &cs_tests::netns::Machine,
    peer: &cs_tests::netns::Machine,
    key: &Path,
    public: &str,
    dir: &Path,
    name: &str,
) -> Logged {
    let mut cmd = m.command(driver::driver());
    cmd.args(["backup", "--listen", &format!("{}:9100", m.addr()), "--key"])
        .arg(key)
        .args([
            "--serve",
            public,
            "--peer",
            &format!("{}:9100", peer.addr()),
            "--app-stdout",
        ])
        .arg(dir.join(format!("{name}.out")))
        .arg("--app-stderr")
        .arg(dir.join(format!("{name}.err")));
    let mut d = Logged::spawn(cmd, &dir.join(format!("{name}.log")));
    d.wait_for("backup waiting for a primary", Duration::from_secs(10));
    d
}

/// A moment that differs between runs: `lo..lo+span` ms, from the OS's randomness.
fn random_ms(lo: u64, span: u64) -> u64 {
    use std::hash::BuildHasher;
    let n = std::collections::hash_map::RandomState::new().hash_one(lo ^ span);
    lo + n % span
}

/// Issue 9, acceptance 1 and 4: failover after failover. The kvstore starts on
/// machine A protected by a backup on B. Each round, the serving machine has a
/// backup on the other one (a fresh base streamed while it serves), a load client
/// runs through the public address, a write is acknowledged, and at a random
/// moment the serving machine is powered off; the other promotes, takes the
/// public address, and the dead machine is plugged in again and started as an
/// empty backup, which the promoted side protects itself to (`--peer`). After
/// `CS_REPL_DEATHS` (default 10) deaths: every round's history together is
/// linearizable, every acknowledged marker is there, and the preload is intact.
fn failover_after_failover(tc: GoToolchain) {
    let deaths: usize = std::env::var("CS_REPL_DEATHS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let pair = Pair::new().expect("the netns harness (run as root, with iproute2)");
    let dir = temp_dir("replication-chain");
    let key = dir.path().join("key");
    driver::cs_ok(&["keygen", key.to_str().unwrap()]);
    let _ = driver::stub();
    let public = format!("{}:8000", pair.public_addr());
    let machines = [pair.primary(), pair.backup()];
    machines[0].claim_public().expect("public address on A");

    let mut standby = start_backup(machines[1], machines[0], &key, &public, dir.path(), "b-0");
    let mut pcmd = machines[0].command(driver::driver());
    pcmd.args([
        "primary",
        "--backup",
        &format!("{}:9100", machines[1].addr()),
        "--key",
    ])
    .arg(&key)
    .args(["--serve", &format!("{public}={APP}"), "--"])
    .arg(fixture_bin(tc, "kvstore"))
    .args(["-addr", APP, "-preload-mib", &PRELOAD_MIB.to_string()]);
    let mut serving = Logged::spawn(pcmd, &dir.path().join("a-primary.log"));
    serving.wait_for("READY", Duration::from_secs(60));
    let mut on = 0usize; // the machine that serves
    let mut histories = Vec::new();
    let mut markers = Vec::new();
    let mut promoted_s = Vec::new();
    for round in 0..deaths {
        let hist = dir.path().join(format!("history-{round}.jsonl"));
        let mut load = kv_load(tc, &public, "8s", &hist);
        load.args(["-client-id-base", &(1 + 10 * round).to_string()]);
        let client = Client::spawn(load).expect("kvclient");
        histories.push(hist);
        // Protection: the serving side's (primary or promoted) base committed on
        // the standby, streamed while the client runs.
        serving.wait_for("PROTECTED: the backup committed", Duration::from_secs(60));
        let marker = format!("m{round}-{}", std::process::id());
        let r = kv_request(
            &public,
            &format!("PUT marker{round} {marker}"),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("round {round}: PUT marker: {e}"));
        assert!(r.contains("OK"), "round {round}: PUT marker answered {r:?}");
        markers.push(marker);
        let death_ms = random_ms(100, 2500);
        eprintln!(
            "{tc:?} round {round}: machine {} dies {death_ms} ms after the marker",
            machines[on].name()
        );
        std::thread::sleep(Duration::from_millis(death_ms));
        let died = Instant::now();
        machines[on].power_off().expect("power off");
        machines[on].release_public().expect("release public");
        let other = 1 - on;
        machines[other].claim_public().expect("claim public");
        standby.wait_for("PROMOTED at epoch", Duration::from_secs(30));
        promoted_s.push(died.elapsed().as_secs_f64());
        let run = client.wait(Duration::from_secs(90)).expect("kvclient");
        run.assert_success();
        let summary = run.summary().expect("kvclient summary");
        assert_eq!(
            summary["wrong"], 0,
            "round {round}: wrong values: {summary}"
        );
        // The dead machine comes back empty and joins as the new standby.
        machines[on].heal().expect("plug the machine in again");
        let name = format!("{}-{}", ["a", "b"][on], round + 1);
        let next = start_backup(
            machines[on],
            machines[other],
            &key,
            &public,
            dir.path(),
            &name,
        );
        drop(std::mem::replace(
            &mut serving,
            std::mem::replace(&mut standby, next),
        ));
        on = other;
    }

    let ops = history::load_kv(&histories).expect("histories");
    let verdict = kv::check_kv(&ops, &kv::KvCheckOptions::default());
    assert!(
        verdict.is_linearizable(),
        "{tc:?}: the history over {deaths} failovers is not linearizable: {verdict:?}"
    );
    for (round, m) in markers.iter().enumerate() {
        let got = kv_get(&public, &format!("marker{round}"), Duration::from_secs(10))
            .expect("GET marker");
        assert_eq!(
            got.as_deref(),
            Some(m.as_str()),
            "{tc:?}: round {round}'s acknowledged write was lost"
        );
    }
    verify_preload(&public, PRELOAD_MIB, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{tc:?}: preload after {deaths} failovers: {e}"));
    promoted_s.sort_by(f64::total_cmp);
    eprintln!(
        "{tc:?}: {deaths} machine deaths, {} ops; promoted after (s, sorted) {promoted_s:.2?}",
        ops.len()
    );
    drop(serving);
    drop(standby);
    pair.close().expect("tear down the pair");
}

#[test]
fn failover_after_failover_under_load() {
    for tc in GoToolchain::ALL {
        failover_after_failover(tc);
    }
}

/// A backup on the pair's backup machine and a primary on its primary machine
/// launching `program args` (listening on [`APP`]); returns once the backup
/// committed a base. The public address is on the primary machine.
fn start_protected(
    pair: &Pair,
    dir: &Path,
    key: &Path,
    program: &Path,
    args: &[&str],
) -> (Logged, Logged, String) {
    let _ = driver::stub();
    let listen = format!("{}:9100", pair.backup().addr());
    let public = format!("{}:8000", pair.public_addr());
    pair.primary()
        .claim_public()
        .expect("public address on the primary");
    let mut bcmd = pair.backup().command(driver::driver());
    bcmd.args(["backup", "--listen", &listen, "--key"])
        .arg(key)
        .args(["--serve", &public, "--app-stdout"])
        .arg(dir.join("restored.out"))
        .arg("--app-stderr")
        .arg(dir.join("restored.err"));
    let mut backup = Logged::spawn(bcmd, &dir.join("backup.log"));
    backup.wait_for("backup waiting for a primary", Duration::from_secs(10));
    let mut pcmd = pair.primary().command(driver::driver());
    pcmd.args(["primary", "--backup", &listen, "--key"])
        .arg(key)
        .args(["--serve", &format!("{public}={APP}"), "--"])
        .arg(program)
        .args(args);
    let mut primary = Logged::spawn(pcmd, &dir.join("primary.log"));
    primary.wait_for("PROTECTED: the backup committed", Duration::from_secs(60));
    primary.wait_for("READY", Duration::from_secs(60));
    (primary, backup, public)
}

/// Powers the primary machine off, moves the public address to the backup
/// machine and waits for the promotion; returns how long it took.
fn machine_death(pair: &Pair, backup: &mut Logged) -> Duration {
    let died = Instant::now();
    pair.primary()
        .power_off()
        .expect("power off the primary machine");
    pair.primary().release_public().expect("release public");
    pair.backup().claim_public().expect("public on the backup");
    backup.wait_for("PROMOTED at epoch", Duration::from_secs(30));
    died.elapsed()
}

/// Issue 9, acceptance 2: lockserver under three lock clients (through the
/// public address) fails over at a random moment; never two holders of a lock.
fn lockserver_failover(tc: GoToolchain) {
    use cs_tests::check::history::load_lock;
    use cs_tests::check::lock::check_locks;
    use cs_tests::fixture::lock_clients;
    let pair = Pair::new().expect("the netns harness (run as root, with iproute2)");
    let dir = temp_dir("replication-lock");
    let key = dir.path().join("key");
    driver::cs_ok(&["keygen", key.to_str().unwrap()]);
    let (primary, mut backup, public) = start_protected(
        &pair,
        dir.path(),
        &key,
        &fixture_bin(tc, "lockserver"),
        &["-addr", APP, "-log-stats", "0"],
    );
    let histories: Vec<std::path::PathBuf> = (1..=3)
        .map(|i| dir.path().join(format!("lock-{i}.jsonl")))
        .collect();
    let clients = lock_clients(tc, &public, "6s", &histories);
    let death_ms = random_ms(500, 2500);
    eprintln!("{tc:?}: the lockserver's machine dies after {death_ms} ms of load");
    std::thread::sleep(Duration::from_millis(death_ms));
    let took = machine_death(&pair, &mut backup);
    let mut reconnects = 0;
    for c in clients {
        let run = c.wait(Duration::from_secs(120)).expect("lockclient");
        run.assert_success();
        let s = run.summary().expect("summary");
        assert_eq!(s["wrong"], 0, "{tc:?}: {s}");
        reconnects += s["reconnects"].as_u64().unwrap_or(0);
    }
    assert!(
        reconnects > 0,
        "{tc:?}: no client reconnected to the backup"
    );
    let report = check_locks(&load_lock(&histories).expect("histories"));
    assert!(
        report.ok(),
        "{tc:?}: mutual exclusion violated across the failover: {report}\n{}",
        backup.log()
    );
    assert!(
        report.holds.len() >= 50,
        "{tc:?}: too little work: {report}"
    );
    eprintln!(
        "{tc:?}: promoted {:.2} s after the death; {} holds checked",
        took.as_secs_f64(),
        report.holds.len()
    );
    drop(primary);
    drop(backup);
    pair.close().expect("tear down the pair");
}

#[test]
fn lockserver_fails_over_without_two_holders() {
    for tc in GoToolchain::ALL {
        lockserver_failover(tc);
    }
}

/// Issue 9, acceptance 3: the MapReduce coordinator fails over mid-job; its
/// workers (clients of the public address) carry on and the output is correct.
fn mapreduce_failover(tc: GoToolchain) {
    use cs_tests::check::mr::check_mr;
    use cs_tests::fixture::gen_mr_inputs;
    let pair = Pair::new().expect("the netns harness (run as root, with iproute2)");
    let dir = temp_dir("replication-mr");
    let key = dir.path().join("key");
    driver::cs_ok(&["keygen", key.to_str().unwrap()]);
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    let coord_bin = fixture_bin(tc, "mrcoord");
    gen_mr_inputs(tc, &input);
    let (primary, mut backup, public) = start_protected(
        &pair,
        dir.path(),
        &key,
        &coord_bin,
        &[
            "-addr",
            APP,
            "-inputs",
            input.to_str().unwrap(),
            "-nreduce",
            "4",
            "-log-stats",
            "0",
        ],
    );
    let workers: Vec<Client> = (1..=3)
        .map(|i| {
            let mut c = std::process::Command::new(fixture_bin(tc, "mrworker"));
            c.args(["-coord", &public, "-out", output.to_str().unwrap()])
                .args(["-id", &format!("w{i}"), "-map-delay", "300ms"]);
            Client::spawn(c).expect("start mrworker")
        })
        .collect();
    let death_ms = random_ms(300, 600);
    std::thread::sleep(Duration::from_millis(death_ms));
    let plog = primary.log();
    let took = machine_death(&pair, &mut backup);
    let out_dir_files = std::fs::read_dir(&output).map(|d| d.count()).unwrap_or(0);
    eprintln!(
        "{tc:?}: the coordinator's machine died {death_ms} ms into the job ({out_dir_files} files in the output folder then); promoted after {:.2} s",
        took.as_secs_f64()
    );
    for w in workers {
        w.wait(Duration::from_secs(120))
            .expect("worker finishes")
            .assert_success();
    }
    let report = check_mr(&input, &output).unwrap_or_else(|e| panic!("{tc:?}: {e}"));
    assert!(report.ok(), "{tc:?}: {report}");
    assert_eq!(report.output_files, 4);
    let out = std::fs::read_to_string(dir.path().join("restored.out")).unwrap_or_default();
    assert!(
        out.contains("DONE"),
        "{tc:?}: the promoted coordinator never said DONE; its stdout: {out}\nprimary log:\n{plog}"
    );
    drop(primary);
    drop(backup);
    pair.close().expect("tear down the pair");
}

#[test]
fn mapreduce_coordinator_fails_over_mid_job() {
    for tc in GoToolchain::ALL {
        mapreduce_failover(tc);
    }
}
