//! Continuous checkpoints (issue 8, first slice): `cs-driver checkpoint` attaches
//! once and writes a full epoch then deltas into a folder; `restore DIR` folds the
//! chain.
//!
//! - The chain is exact: kvstore under load (4 connections) is checkpointed at
//!   20 Hz with `CS_TEST_VERIFY_CHAIN=1`, which makes the driver compare, in every
//!   freeze, the memory the chain reconstructs with a full read of every present
//!   page, byte for byte, at 256 MiB. Both toolchains. A delta broken on purpose
//!   (`CS_TEST_BREAK_TRACKER`: a written page, a released page or a new mapping
//!   left out) fails the check, so the check is not vacuous.
//! - Restore from the newest epoch and from an older `--epoch`: a key written and
//!   acknowledged before an epoch's freeze is there, a key written after it is
//!   not; every preloaded value verifies; the load client's history is
//!   linearizable; the checkpointer left no userfaultfd or scratch mapping behind.
//! - The checkpointer SIGKILLed at seeded random moments: the program keeps
//!   serving, and the folder restores its newest epoch.
//!
//! - 200 epochs of a launched program under load with `--keep`; lockserver and
//!   the MapReduce coordinator at 50 Hz; `--no-tracking`; a failed epoch write.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use cs_tests::check::preload::verify_preload;
use cs_tests::check::{history, kv};
use cs_tests::driver::{self, restore_detached_with};
use cs_tests::fixture::{fixture_bin, kv_load, lock_clients, temp_dir, GoToolchain, Service};
use cs_tests::procs::{
    check_serving, kv_get, kv_put, kv_request, rwx_mappings, uffd_fds, wait_gone,
};

const MARKER: &str = "epochs-marker";

fn checkpoint(pid: u32, dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Child {
    let _ = driver::stub();
    Command::new(driver::driver())
        .args(["checkpoint", &pid.to_string(), "-o"])
        .arg(dir)
        .args(extra)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cs-driver checkpoint")
}

fn finish(mut c: Child, limit: Duration) -> (std::process::ExitStatus, String) {
    let t = Instant::now();
    let status = loop {
        if let Some(s) = c.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < limit,
            "checkpoint did not end within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    if let Some(mut e) = c.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status, err)
}

/// (epoch, wall time in ns) of every epoch in `dir`, from `inspect DIR`.
fn epochs(dir: &Path) -> Vec<(u64, u64)> {
    let out = driver::cs_ok(&["inspect", dir.to_str().unwrap()]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(2)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let e = f.first()?.parse().ok()?;
            let t: f64 = f.get(2)?.parse().ok()?;
            Some((e, (t * 1e9) as u64))
        })
        .collect()
}

/// Committed epochs in `dir`.
fn committed(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                !n.starts_with('.') && (n.ends_with(".full") || n.ends_with(".delta"))
            })
            .count()
    })
}

/// Waits until `more` epochs beyond the present ones are committed in `dir`.
fn wait_epochs(dir: &Path, more: usize) {
    let want = committed(dir) + more;
    let t = Instant::now();
    while committed(dir) < want {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no new epoch in 60 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn the_chain_is_exact_and_restores_newest_and_older_epochs() {
    for tc in GoToolchain::ALL {
        let mib = 256;
        let dir = temp_dir("epochs");
        let ck = dir.path().join("ck");
        let store = Service::start(
            &fixture_bin(tc, "kvstore"),
            &["-addr", "127.0.0.1:0", "-preload-mib", &mib.to_string()],
        )
        .expect("start kvstore");
        let (pid, addr) = (store.pid(), store.addr().to_string());
        kv_put(&addr, MARKER, MARKER);
        let fds_before = (uffd_fds(pid), rwx_mappings(pid));
        let hist = dir.path().join("history.jsonl");
        let mut client = kv_load(tc, &addr, "3s", &hist).spawn().expect("kvclient");
        let ckp = checkpoint(
            pid,
            &ck,
            &["--interval", "50"],
            &[("CS_TEST_VERIFY_CHAIN", "1")],
        );
        assert!(
            client.wait().unwrap().success(),
            "{tc:?}: the load client failed"
        );
        // Two keys: one before an epoch's freeze, one after it.
        // Epochs are counted, not timed: the test mode's full read in every freeze
        // makes an epoch slow on a busy machine.
        let t = Instant::now();
        while committed(&ck) < 8 {
            assert!(
                t.elapsed() < Duration::from_secs(300),
                "{tc:?}: fewer than 8 epochs in 300 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        kv_put(&addr, "before", "1");
        let t_before = now_ns();
        wait_epochs(&ck, 2);
        let t_after = now_ns();
        kv_put(&addr, "after", "2");
        wait_epochs(&ck, 2);
        // SAFETY: kill(2) with integers.
        unsafe { libc::kill(ckp.id() as i32, libc::SIGINT) };
        let (status, said) = finish(ckp, Duration::from_secs(60));
        assert!(
            status.success(),
            "{tc:?}: checkpoint failed ({status}):\n{said}"
        );
        assert!(said.contains("runs on"), "{tc:?}: {said}");
        let list = epochs(&ck);
        eprintln!(
            "{tc:?}: {} epochs; last lines:\n{}",
            list.len(),
            said.lines().rev().take(3).collect::<Vec<_>>().join("\n")
        );
        assert!(list.len() >= 10, "{tc:?}: only {} epochs", list.len());
        check_serving(pid, &addr, 1, MARKER)
            .unwrap_or_else(|e| panic!("{tc:?}: after checkpointing: {e}"));
        // Sockets come and go with clients; what a checkpointer could leave is a
        // userfaultfd (its tracker) or its scratch mapping.
        assert_eq!(
            (uffd_fds(pid), rwx_mappings(pid)),
            fds_before,
            "{tc:?}: the checkpointer left something in the program"
        );
        let history = history::load_kv(&[&hist]).expect("history");
        let verdict = kv::check_kv(&history, &kv::KvCheckOptions::default());
        assert!(
            matches!(verdict, kv::KvVerdict::Linearizable { .. }),
            "{tc:?}: {verdict}"
        );

        let older = list
            .iter()
            .find(|&&(_, t)| t > t_before && t < t_after)
            .unwrap_or_else(|| panic!("{tc:?}: no epoch between the two writes: {list:?}"))
            .0;
        drop(store);
        wait_gone(pid);
        let r = restore_detached_with(&ck, dir.path(), &["--epoch", &older.to_string()])
            .unwrap_or_else(|e| panic!("{tc:?}: restore --epoch {older}: {e}"));
        check_serving(r.pid, &addr, 2, MARKER)
            .unwrap_or_else(|e| panic!("{tc:?}: epoch {older}: {e}"));
        assert_eq!(
            kv_get(&addr, "before", Duration::from_secs(5)),
            Ok(Some("1".into())),
            "{tc:?}: epoch {older} lost an acknowledged write from before it"
        );
        assert_eq!(
            kv_get(&addr, "after", Duration::from_secs(5)),
            Ok(None),
            "{tc:?}: epoch {older} holds a write from after it"
        );
        verify_preload(&addr, mib, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{tc:?}: epoch {older}: {e}"));
        drop(r);
        let r = restore_detached_with(&ck, dir.path(), &[])
            .unwrap_or_else(|e| panic!("{tc:?}: restore of the newest epoch: {e}"));
        check_serving(r.pid, &addr, 3, MARKER).unwrap_or_else(|e| panic!("{tc:?}: newest: {e}"));
        assert_eq!(
            kv_get(&addr, "after", Duration::from_secs(5)),
            Ok(Some("2".into())),
            "{tc:?}: the newest epoch lost a write"
        );
        verify_preload(&addr, mib, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{tc:?}: newest: {e}"));
    }
}

/// A delta made wrong on purpose (`CS_TEST_BREAK_TRACKER=MODE`) fails the chain
/// check of `CS_TEST_VERIFY_CHAIN` once the program does what MODE leaves out;
/// the checkpoint ends with the page named and the program serves on.
fn broken_tracker_is_caught(mode: &str, provoke: &dyn Fn(&str)) {
    let tc = GoToolchain::Go127;
    let dir = temp_dir("epochs-broken");
    let ck = dir.path().join("ck");
    let store = Service::start(
        &fixture_bin(tc, "kvstore"),
        &["-addr", "127.0.0.1:0", "-preload-mib", "32"],
    )
    .expect("start kvstore");
    let (pid, addr) = (store.pid(), store.addr().to_string());
    kv_put(&addr, MARKER, MARKER);
    let ckp = checkpoint(
        pid,
        &ck,
        &["--interval", "50"],
        &[
            ("CS_TEST_VERIFY_CHAIN", "1"),
            ("CS_TEST_BREAK_TRACKER", mode),
        ],
    );
    // Epoch 1 is full (nothing to break); then provoke until the check fails.
    let t = Instant::now();
    while committed(&ck) < 1 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{mode}: no epoch in 60 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut ckp = ckp;
    let status = loop {
        if let Some(s) = ckp.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{mode}: the broken tracker went unnoticed for 60 s"
        );
        provoke(&addr);
        std::thread::sleep(Duration::from_millis(20));
    };
    let (_, said) = finish(ckp, Duration::from_secs(5));
    assert!(!status.success(), "{mode}: checkpoint succeeded:\n{said}");
    assert!(
        said.contains("chain check") && said.contains("the page at"),
        "{mode}: not the chain check's error:\n{said}"
    );
    check_serving(pid, &addr, 1, MARKER).unwrap_or_else(|e| panic!("{mode}: {e}"));
    assert_eq!(uffd_fds(pid), 0, "{mode}: tracker left in the program");
}

/// A pre-copy round whose copy fails (a page unmapped under it while the program
/// runs; here forced by `CS_TEST_PRE_ROUND_FAIL`, which also leaves the staged
/// bytes unwritten) makes the freeze copy every staged page again: the chain stays
/// exact under load, and the newest epoch restores.
#[test]
fn a_failed_pre_copy_round_is_copied_again_in_the_freeze() {
    let tc = GoToolchain::Go127;
    let dir = temp_dir("epochs-prefail");
    let ck = dir.path().join("ck");
    let store = Service::start(
        &fixture_bin(tc, "kvstore"),
        &["-addr", "127.0.0.1:0", "-preload-mib", "32"],
    )
    .expect("start kvstore");
    let (pid, addr) = (store.pid(), store.addr().to_string());
    kv_put(&addr, MARKER, MARKER);
    let hist = dir.path().join("history.jsonl");
    let mut client = kv_load(tc, &addr, "2s", &hist).spawn().expect("kvclient");
    let ckp = checkpoint(
        pid,
        &ck,
        &["--interval", "50", "--count", "20"],
        &[
            ("CS_TEST_VERIFY_CHAIN", "1"),
            ("CS_TEST_PRE_ROUND_FAIL", "1"),
        ],
    );
    assert!(client.wait().unwrap().success(), "the load client failed");
    let (status, said) = finish(ckp, Duration::from_secs(120));
    assert!(status.success(), "checkpoint failed ({status}):\n{said}");
    kv_put(&addr, "last", "x");
    drop(store);
    wait_gone(pid);
    let r = restore_detached_with(&ck, dir.path(), &[]).expect("restore of the newest epoch");
    check_serving(r.pid, &addr, 1, MARKER).expect("restored");
    verify_preload(&addr, 32, Duration::from_secs(60)).expect("preloaded values");
}

#[test]
fn a_delta_missing_a_written_page_fails_the_chain_check() {
    let n = std::cell::Cell::new(0u32);
    broken_tracker_is_caught("written", &|addr| {
        n.set(n.get() + 1);
        kv_put(addr, &format!("w{}", n.get()), &"x".repeat(3000));
    });
}

#[test]
fn a_delta_missing_a_released_page_fails_the_chain_check() {
    broken_tracker_is_caught("released", &|addr| {
        for op in ["ALLOC 32 keep", "FREE os"] {
            let r = kv_request(addr, op, Duration::from_secs(20)).expect(op);
            assert!(r.contains("OK"), "{op}: {r}");
        }
    });
}

#[test]
fn a_delta_missing_a_new_mapping_fails_the_chain_check() {
    // The heap grows into new mappings; at most 8 x 96 MiB.
    let n = std::cell::Cell::new(0u32);
    broken_tracker_is_caught("mapping", &|addr| {
        if n.get() < 8 {
            n.set(n.get() + 1);
            let r = kv_request(addr, "ALLOC 96 keep", Duration::from_secs(20)).expect("ALLOC");
            assert!(r.contains("OK"), "ALLOC: {r}");
        }
    });
}

#[test]
fn a_killed_checkpointer_leaves_the_program_serving_and_a_restorable_folder() {
    const TRIALS: u64 = 12;
    let mib = 32;
    let dir = temp_dir("epochs-kill");
    let store = Service::start(
        &fixture_bin(GoToolchain::Go127, "kvstore"),
        &["-addr", "127.0.0.1:0", "-preload-mib", &mib.to_string()],
    )
    .expect("start kvstore");
    let (pid, addr) = (store.pid(), store.addr().to_string());
    kv_put(&addr, MARKER, MARKER);
    let mut seed = 0x9e37_79b9_u64;
    let mut restorable = Vec::new();
    for trial in 0..TRIALS {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(50 + seed % 1000);
        let ck = dir.path().join(format!("ck{trial}"));
        let mut c = checkpoint(pid, &ck, &["--interval", "30", "--keep", "2"], &[]);
        std::thread::sleep(delay);
        let _ = c.kill();
        let _ = c.wait();
        check_serving(pid, &addr, trial as usize, MARKER)
            .unwrap_or_else(|e| panic!("trial {trial}, killed after {delay:?}: {e}"));
        let committed = committed(&ck);
        eprintln!("trial {trial}: killed after {delay:?}, {committed} epochs committed");
        if committed > 0 {
            restorable.push(ck);
        }
    }
    assert!(
        // Kills before the first full epoch is committed test the program's side
        // only; on a busy machine most can land there.
        !restorable.is_empty(),
        "too few folders got an epoch: {restorable:?}"
    );
    // The newest committed epoch of the last folder restores whole.
    let last = restorable.last().unwrap().clone();
    drop(store);
    wait_gone(pid);
    let r = restore_detached_with(&last, dir.path(), &[])
        .unwrap_or_else(|e| panic!("restoring {}: {e}", last.display()));
    check_serving(r.pid, &addr, 5, MARKER).expect("restored from a killed checkpointer's folder");
    verify_preload(&addr, mib, Duration::from_secs(60)).expect("preloaded values");
}

/// Appends to `path` a history (client 999) of a GET of every key `prefix0 ..
/// prefix{n-1}` on the program at `addr`, as it answers now.
fn read_back(addr: &str, prefix: &str, n: usize, path: &Path) {
    let mut out = String::new();
    for i in 0..n {
        let key = format!("{prefix}{i}");
        let invoke = now_ns();
        let got = kv_get(addr, &key, Duration::from_secs(5)).expect("GET after restore");
        let complete = now_ns();
        let line = serde_json::json!({
            "client": 999, "op": "get", "key": key,
            "output": got.clone().unwrap_or_default(), "found": got.is_some(),
            "invoke_ns": invoke, "complete_ns": complete,
            "invoke_wall_ns": invoke, "complete_wall_ns": complete, "status": "ok",
        });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

#[test]
fn two_hundred_epochs_of_a_launched_program_under_load_with_keep() {
    use std::io::BufRead;
    use std::sync::{Arc, Mutex};
    let mib = 32;
    let dir = temp_dir("epochs-200");
    let ck = dir.path().join("ck");
    let _ = driver::stub();
    let mut drv = Command::new(driver::driver())
        .args(["checkpoint", "-o"])
        .arg(&ck)
        .args(["--interval", "20", "--keep", "5", "--"])
        .arg(fixture_bin(GoToolchain::Go127, "kvstore"))
        .args(["-addr", "127.0.0.1:0", "-preload-mib", &mib.to_string()])
        .env("CS_TEST_VERIFY_CHAIN", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cs-driver checkpoint -- kvstore");
    let mut ready = String::new();
    std::io::BufReader::new(drv.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let f: Vec<&str> = ready.split_whitespace().collect();
    assert_eq!(
        f.first(),
        Some(&"READY"),
        "the launched kvstore said {ready:?}"
    );
    let (pid, addr): (u32, String) = (f[1].parse().unwrap(), f[2].to_string());
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let err = drv.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(l);
            }
        })
    };
    let newest = || {
        lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| {
                l.strip_prefix("cs-driver: epoch ")?
                    .split(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .unwrap_or(0)
    };
    kv_put(&addr, MARKER, MARKER);
    let hist = dir.path().join("history.jsonl");
    let client = kv_load(GoToolchain::Go127, &addr, "3s", &hist)
        .status()
        .expect("kvclient");
    assert!(client.success(), "the load client failed");
    // Every acknowledged write is older than the next epoch; then at least 200,
    // and at least 100 with the program idle, over which nothing of it may grow.
    let after_load = newest() + 2;
    let t = Instant::now();
    while newest() < after_load {
        assert!(t.elapsed() < Duration::from_secs(60), "epochs stalled");
        std::thread::sleep(Duration::from_millis(20));
    }
    let idle_from = resources(pid);
    let idle_epoch = newest();
    let t = Instant::now();
    while newest() < (idle_epoch + 100).max(200) {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "epochs stalled at {}:\n{}",
            newest(),
            lines.lock().unwrap().join("\n")
        );
        assert!(
            drv.try_wait().unwrap().is_none(),
            "checkpoint ended:\n{}",
            lines.lock().unwrap().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) with integers.
    unsafe { libc::kill(drv.id() as i32, libc::SIGINT) };
    let status = drv.wait().unwrap();
    // The launched program shares the driver's stderr: the reader ends only once
    // the program is gone too; wait for the driver's last line instead.
    let t = Instant::now();
    while !lines.lock().unwrap().iter().any(|l| l.contains("runs on"))
        && t.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let said = lines.lock().unwrap().join("\n");
    assert!(status.success(), "checkpoint failed ({status}):\n{said}");
    let epochs = newest();
    let folds = said.matches("folded the chain").count();
    eprintln!("{epochs} epochs, {folds} folds");
    assert!(folds > 0, "--keep 5 never folded:\n{said}");
    let files = committed(&ck);
    assert!(files <= 5 + 1 + 2, "--keep 5 left {files} epoch files");
    let idle_to = resources(pid);
    eprintln!("idle over epochs {idle_epoch}..{epochs}: {idle_from:?} -> {idle_to:?}");
    assert_eq!(
        (idle_from.fds, idle_from.threads),
        (idle_to.fds, idle_to.threads),
        "fds or threads changed over {} idle epochs",
        epochs - idle_epoch
    );
    assert!(
        idle_to.rss_kib <= idle_from.rss_kib + 8 * 1024,
        "RSS grew by {} KiB over {} idle epochs",
        idle_to.rss_kib - idle_from.rss_kib,
        epochs - idle_epoch
    );
    check_serving(pid, &addr, 4, MARKER).expect("after 200 epochs");
    assert_eq!(
        (uffd_fds(pid), rwx_mappings(pid).len()),
        (0, 0),
        "the checkpointer left something in the program"
    );
    let history = history::load_kv(&[&hist]).expect("history");
    assert!(matches!(
        kv::check_kv(&history, &kv::KvCheckOptions::default()),
        kv::KvVerdict::Linearizable { .. }
    ));

    // The machine "dies": the newest epoch must hold every acknowledged write.
    // SAFETY: kill(2) with integers.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_gone(pid);
    reader.join().unwrap();
    let r = restore_detached_with(&ck, dir.path(), &[]).expect("restore of the newest epoch");
    check_serving(r.pid, &addr, 6, MARKER).expect("restored");
    verify_preload(&addr, mib, Duration::from_secs(60)).expect("preloaded values");
    let reads = dir.path().join("after.jsonl");
    read_back(&addr, "k", 50, &reads);
    let all = history::load_kv(&[&hist, &reads]).expect("histories");
    let verdict = kv::check_kv(&all, &kv::KvCheckOptions::default());
    assert!(
        matches!(verdict, kv::KvVerdict::Linearizable { .. }),
        "the restored program's values do not follow the client's history: {verdict}"
    );
}

/// What a checkpointer could leak into a program: memory, fds, threads.
#[derive(Debug, Clone, Copy)]
struct Resources {
    rss_kib: u64,
    fds: usize,
    threads: usize,
}

fn resources(pid: u32) -> Resources {
    let rss_kib = cs_tests::procs::status_field(pid, pid, "VmRSS:")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count();
    let threads = cs_tests::procs::tids(pid).len();
    Resources {
        rss_kib,
        fds,
        threads,
    }
}

/// lockserver under 3 lock clients for 3 s while checkpointed at 50 Hz: no
/// double grant, no wrong answer, and its newest epoch restores and serves.
fn lockserver_at_50_hz(tc: GoToolchain) {
    use cs_tests::check::history::load_lock;
    use cs_tests::check::lock::check_locks;
    let dir = temp_dir("epochs-lock");
    let ck = dir.path().join("ck");
    let server = Service::start(
        &fixture_bin(tc, "lockserver"),
        &["-addr", "127.0.0.1:0", "-log-stats", "0"],
    )
    .expect("start lockserver");
    let (pid, addr) = (server.pid(), server.addr().to_string());
    let ckp = checkpoint(pid, &ck, &["--interval", "20", "--keep", "20"], &[]);
    let histories: Vec<std::path::PathBuf> = (1..=3)
        .map(|i| dir.path().join(format!("lock-{i}.jsonl")))
        .collect();
    let clients = lock_clients(tc, &addr, "3s", &histories);
    for c in clients {
        let run = c
            .wait(Duration::from_secs(120))
            .expect("lockclient finishes");
        run.assert_success();
        let s = run.summary().expect("summary");
        assert_eq!(s["wrong"], 0, "{tc}: {s}");
    }
    // SAFETY: kill(2) with integers.
    unsafe { libc::kill(ckp.id() as i32, libc::SIGINT) };
    let (status, said) = finish(ckp, Duration::from_secs(60));
    assert!(status.success(), "{tc}: checkpoint failed:\n{said}");
    let epochs = said.matches("cs-driver: epoch ").count();
    // 150 at 50 Hz on an idle machine; a busy one (CI beside other tests) made 48.
    assert!(
        epochs >= 25,
        "{tc}: only {epochs} epochs in 3 s at 50 Hz:\n{said}"
    );
    let report = check_locks(&load_lock(&histories).expect("histories"));
    assert!(
        report.ok(),
        "{tc}: mutual exclusion violated while checkpointed: {report}"
    );
    assert!(report.holds.len() >= 50, "{tc}: too little work: {report}");
    drop(server);
    wait_gone(pid);
    let r = restore_detached_with(&ck, dir.path(), &[]).expect("restore lockserver");
    cs_tests::fixture::wait_until_accepting(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{tc}: the restored lockserver does not accept: {e}"));
    assert!(
        r.alive(),
        "{tc}: restored lockserver died:\n{}",
        r.stderr_tail()
    );
}

#[test]
fn lockserver_checkpointed_at_50_hz_go127() {
    lockserver_at_50_hz(GoToolchain::Go127);
}

#[test]
fn lockserver_checkpointed_at_50_hz_go119() {
    lockserver_at_50_hz(GoToolchain::Go119);
}

/// The MapReduce coordinator checkpointed at 50 Hz while three workers run; the
/// coordinator then dies mid-job and its newest epoch, restored, finishes the job
/// with a correct output.
fn mapreduce_at_50_hz(tc: GoToolchain) {
    use cs_tests::check::mr::check_mr;
    use cs_tests::fixture::{gen_mr_inputs, Client};
    let dir = temp_dir("epochs-mr");
    let ck = dir.path().join("ck");
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    let coord_bin = fixture_bin(tc, "mrcoord");
    gen_mr_inputs(tc, &input);
    let coord = Service::start(
        &coord_bin,
        &[
            "-addr",
            "127.0.0.1:0",
            "-inputs",
            input.to_str().unwrap(),
            "-nreduce",
            "4",
            "-log-stats",
            "0",
        ],
    )
    .expect("start mrcoord");
    let pid = coord.pid();
    let ckp = checkpoint(pid, &ck, &["--interval", "20"], &[]);
    let workers: Vec<Client> = (1..=3)
        .map(|i| {
            let mut c = Command::new(fixture_bin(tc, "mrworker"));
            c.args(["-coord", coord.addr(), "-out", output.to_str().unwrap()])
                .args(["-id", &format!("w{i}"), "-map-delay", "300ms"]);
            Client::spawn(c).expect("start mrworker")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(600));
    // The machine dies: the checkpointer with it, then the coordinator.
    let mut ckp = ckp;
    let _ = ckp.kill();
    let _ = ckp.wait();
    let before = coord.stdout_tail(4096);
    assert!(
        !before.contains("DONE"),
        "{tc}: the job ended before the coordinator died"
    );
    drop(coord);
    wait_gone(pid);
    std::thread::sleep(Duration::from_millis(300));
    let restored = restore_detached_with(&ck, dir.path(), &[]).expect("restore mrcoord");
    for w in workers {
        w.wait(Duration::from_secs(120))
            .expect("worker finishes")
            .assert_success();
    }
    let report = check_mr(&input, &output).unwrap_or_else(|e| panic!("{tc}: {e}"));
    assert!(report.ok(), "{tc}: {report}");
    assert_eq!(report.output_files, 4);
    let out = std::fs::read_to_string(&restored.stdout).unwrap_or_default();
    assert!(
        out.contains("DONE"),
        "{tc}: the restored coordinator never said DONE; stdout: {out}"
    );
}

#[test]
fn mapreduce_coordinator_checkpointed_at_50_hz_go127() {
    mapreduce_at_50_hz(GoToolchain::Go127);
}

#[test]
fn mapreduce_coordinator_checkpointed_at_50_hz_go119() {
    mapreduce_at_50_hz(GoToolchain::Go119);
}

/// Without write tracking (a kernel without userfaultfd write-protect, or
/// `--no-tracking`) every epoch is a full one, and the newest restores.
#[test]
fn without_tracking_every_epoch_is_full() {
    let mib = 16;
    let dir = temp_dir("epochs-full");
    let ck = dir.path().join("ck");
    let store = Service::start(
        &fixture_bin(GoToolchain::Go127, "kvstore"),
        &["-addr", "127.0.0.1:0", "-preload-mib", &mib.to_string()],
    )
    .expect("start kvstore");
    let (pid, addr) = (store.pid(), store.addr().to_string());
    kv_put(&addr, MARKER, MARKER);
    let c = checkpoint(
        pid,
        &ck,
        &["--interval", "50", "--count", "5", "--no-tracking"],
        &[],
    );
    let (status, said) = finish(c, Duration::from_secs(60));
    assert!(status.success(), "{said}");
    assert!(said.contains("every epoch is a full one"), "{said}");
    let out = driver::cs_ok(&["inspect", ck.to_str().unwrap()]);
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(listing.matches(" full ").count(), 5, "{listing}");
    assert!(!listing.contains("delta"), "{listing}");
    drop(store);
    wait_gone(pid);
    // From a read-only copy of the folder (root ignores file modes: a read-only
    // bind mount): the fold goes to the temporary directory instead.
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let sh = |cmd: &str| {
        let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
        assert!(
            st.success(),
            "{cmd}: {st} (the test needs root to bind-mount)"
        );
    };
    let (ckp, rop) = (ck.display(), ro.display());
    sh(&format!(
        "mount --bind '{ckp}' '{rop}' && mount -o remount,ro,bind '{rop}'"
    ));
    let r = restore_detached_with(&ro, dir.path(), &[]);
    sh(&format!("umount '{rop}'"));
    let r = r.expect("restore from a read-only folder");
    check_serving(r.pid, &addr, 1, MARKER).expect("restored");
    verify_preload(&addr, mib, Duration::from_secs(60)).expect("preloaded values");
}

/// An epoch that cannot be written (a full disk; here the `CS_FAULT_WRITE_AT`
/// switch) ends the checkpoint with an error naming it; the program runs on with
/// nothing of the driver left in it, and nothing half-written is committed.
#[test]
fn a_failed_epoch_write_ends_the_checkpoint_and_leaves_the_program_running() {
    let dir = temp_dir("epochs-fail");
    let ck = dir.path().join("ck");
    let store = Service::start(
        &fixture_bin(GoToolchain::Go127, "kvstore"),
        &["-addr", "127.0.0.1:0", "-preload-mib", "16"],
    )
    .expect("start kvstore");
    let (pid, addr) = (store.pid(), store.addr().to_string());
    kv_put(&addr, MARKER, MARKER);
    let c = checkpoint(
        pid,
        &ck,
        &["--interval", "50", "--count", "5"],
        &[("CS_FAULT_WRITE_AT", "4096")],
    );
    let (status, said) = finish(c, Duration::from_secs(60));
    assert!(!status.success(), "the checkpoint succeeded: {said}");
    assert!(
        said.contains("injected write failure at byte 4096"),
        "{said}"
    );
    assert_eq!(committed(&ck), 0, "a failed epoch was committed");
    check_serving(pid, &addr, 2, MARKER).expect("after a failed checkpoint");
    assert_eq!(
        (uffd_fds(pid), rwx_mappings(pid).len()),
        (0, 0),
        "the driver left something in the program"
    );
}
