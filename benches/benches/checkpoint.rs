//! Checkpoint pause, image size and restore time of the kvstore fixture (issue 4,
//! "Benchmarks").
//!
//! For each preload size (16, 256, 1024 MiB), in this order:
//! 1. start `kvstore -addr 127.0.0.1:0 -preload-mib N` (Go 1.27.3 build) and wait for
//!    its `READY <pid> <addr>` line;
//! 2. `pause/<N>MiB`: `cs_driver::capture::capture(pid, After::Resume)` (what
//!    `cs-driver dump --leave-running` does before it writes anything), 100 ms of the
//!    program running between two captures. Criterion gets the summed
//!    `times.pause` (first interrupt to resume) through `iter_custom`, so it reports
//!    the pause the program feels, not the whole call (which also allocates and frees
//!    the staging buffer outside the pause). The capture pre-copies: it
//!    write-protects the memory and copies every page while the program runs,
//!    then copies inside the freeze only what was written since (the pre-copy's
//!    own short stop, to create the tracker, is reported beside it);
//!    `pause_full/<N>MiB` is the same capture with the pre-copy off (every page
//!    copied inside the freeze), measured right after, side by side;
//! 3. three more captures with a client pinging the program over TCP, one request at
//!    a time: the longest gap between two replies that overlaps a capture is the
//!    stall a client saw, a cross-check of `times.pause` from outside the driver;
//! 4. one capture with `After::Kill` (what `cs-driver dump` without
//!    `--leave-running` does), `cs_driver::image::write_image` into a scratch file:
//!    its size against the process's VmRSS just before;
//! 5. at 256 and 1024 MiB, `restore/<N>MiB`: the real `target/release/cs-driver
//!    restore IMAGE --detach --stdout F --stderr F` on that image, timed from the
//!    command's start until a TCP connection to the restored kvstore's address
//!    answers `0 1 GET tick`. A poller thread starts connecting with the command
//!    (every 0.25 ms while refused), so the time does not wait for the command to
//!    exit if the program serves earlier. Then the restored pid is killed and the
//!    next iteration waits until it is gone and the address can be bound again
//!    (untimed). The default restore fills pages lazily (the program runs while a
//!    userfaultfd brings pages in; `--detach` exits once every page is in);
//!    `restore_eager/<N>MiB` is the same with `--eager` (every page copied in
//!    before the program runs), measured right after, side by side.
//!
//! Before the first size and after the last, `memcpy/start` and `memcpy/end`: one
//! core copying 256 MiB between pre-faulted buffers, the side-by-side baseline (the
//! machine is shared; the two show how much it drifted during the run).
//!
//! After criterion's report a table of medians is printed, with the ratios to the
//! issue's targets, to CRIU 4.2's figures on the same machine (fixed numbers, not
//! measured here) and to a memcpy of the same pages at this run's rate; then the
//! image sizes, the median of each phase of the pause, the client-seen stall, and the
//! restore's parts.
//!
//! Needs root (ptrace, pid and time namespaces), the Go fixtures
//! (`bash scripts/build-fixtures.sh`) and the release binaries in `target/release`
//! (`cargo build --release -p cs-driver && cargo build --release -p restore-stub
//! --features bin`); without them it exits with that message. The pause part runs the
//! driver library compiled into this bench (the working tree's source); the restore
//! part runs whatever `target/release/cs-driver` was last built (a warning is printed
//! when a source file is newer than it).
//!
//! Run: `cargo bench -p cs-benches --bench checkpoint` (about 2 minutes; ~5 GiB of
//! memory at the 1 GiB step: the kvstore, the staging buffer, the restored copy).
//! Run it whole: a criterion filter skips the measurement but not the set-up.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, BenchmarkId, Criterion, SamplingMode};
use cs_benches::criterion_median_ns;
use cs_driver::capture::{capture, capture_with, After, CaptureTimes, Options, PAGE};
use cs_driver::image::write_image;

/// Preload sizes (MiB) whose pause is measured.
const PAUSE_MIB: [u64; 3] = [16, 256, 1024];
/// Preload sizes (MiB) whose restore is measured.
const RESTORE_MIB: [u64; 2] = [256, 1024];
/// The program runs this long between two captures.
const SETTLE: Duration = Duration::from_millis(100);
/// Captures with the TCP prober running, per size.
const PROBE_RUNS: usize = 3;
/// The fixture toolchain.
const GO: &str = "go1.27.3";

/// Issue 4's targets (ms) and CRIU 4.2's figures on this machine (ms), by preload MiB.
fn pause_target_ms(mib: u64) -> Option<f64> {
    match mib {
        256 => Some(40.0),
        1024 => Some(150.0),
        _ => None,
    }
}
fn pause_criu_ms(mib: u64) -> Option<f64> {
    match mib {
        256 => Some(145.0),
        1024 => Some(550.0),
        _ => None,
    }
}
fn restore_target_ms(mib: u64) -> Option<f64> {
    (mib == 1024).then_some(150.0)
}
fn restore_criu_ms(mib: u64) -> Option<f64> {
    (mib == 1024).then_some(570.0)
}

// ---------------------------------------------------------------------------------
// Processes this bench started, also killed from a panic hook, so none is left
// behind (holding memory and its port) whether the panic unwinds or aborts (the
// workspace's release profile says `panic = "abort"`; then no destructor runs).

static LIVE: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn track(pid: i32) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}

fn untrack(pid: i32) {
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|&p| p != pid);
}

fn sigkill(pid: i32) {
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Ok(live) = LIVE.try_lock() {
            for &pid in live.iter() {
                sigkill(pid);
            }
        }
        default(info);
    }));
}

// ---------------------------------------------------------------------------------
// Paths and preconditions.

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ has a parent")
        .to_path_buf()
}

/// `target/release` of the default target dir, where the driver and stub are built.
fn release_dir() -> PathBuf {
    workspace().join("target/release")
}

fn fixture(name: &str) -> PathBuf {
    workspace().join("go-fixtures/build").join(GO).join(name)
}

const BUILD_BINS: &str =
    "cargo build --release -p cs-driver && cargo build --release -p restore-stub --features bin";

/// Everything the bench needs, or the message saying how to get it.
fn preflight() -> Result<(), String> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        return Err(format!(
            "must run as root (ptrace of a process it did not start, pid and time \
             namespaces); effective uid is {euid}"
        ));
    }
    let kv = fixture("kvstore");
    if !kv.exists() {
        return Err(format!(
            "{} is missing: build the Go fixtures with `bash scripts/build-fixtures.sh`",
            kv.display()
        ));
    }
    for bin in ["cs-driver", "cs-restore-stub"] {
        let p = release_dir().join(bin);
        if !p.exists() {
            return Err(format!(
                "{} is missing: build the release binaries with `{BUILD_BINS}` \
                 (default target dir)",
                p.display()
            ));
        }
    }
    Ok(())
}

fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for e in fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let t = if p.is_dir() {
            newest_mtime(&p)
        } else {
            e.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(t);
    }
    newest
}

/// Warns when a driver, stub or format source file is newer than the release binaries
/// (the restore part would measure old code).
fn warn_if_stale() {
    let built = ["cs-driver", "cs-restore-stub"]
        .iter()
        .filter_map(|b| fs::metadata(release_dir().join(b)).ok()?.modified().ok())
        .min();
    let src = ["driver/src", "restore-stub/src", "core-format/src"]
        .iter()
        .filter_map(|d| newest_mtime(&workspace().join(d)))
        .max();
    if let (Some(built), Some(src)) = (built, src) {
        if src > built {
            eprintln!(
                "checkpoint: WARNING: driver/stub/format sources are newer than \
                 target/release/cs-driver; the restore figures measure the old build \
                 (rebuild with `{BUILD_BINS}`)"
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// The kvstore under test.

#[derive(Debug)]
struct KvStore {
    child: Child,
    pid: i32,
    addr: SocketAddr,
    /// Kept open: the program's stdout is this pipe, and writing to a closed one
    /// would kill it.
    _stdout: BufReader<ChildStdout>,
    startup: Duration,
}

impl KvStore {
    fn start(preload_mib: u64) -> KvStore {
        let t = Instant::now();
        let mut child = Command::new(fixture("kvstore"))
            .args(["-addr", "127.0.0.1:0", "-preload-mib"])
            .arg(preload_mib.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning kvstore: {e}"));
        let pid = child.id() as i32;
        track(pid);
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let (tx, rx) = mpsc::channel();
        let reader = thread::spawn(move || {
            let mut line = String::new();
            let r = stdout.read_line(&mut line);
            let _ = tx.send(r.map(|_| line));
            stdout
        });
        let line = match rx.recv_timeout(Duration::from_secs(300)) {
            Ok(Ok(line)) => line,
            other => panic!("kvstore -preload-mib {preload_mib}: no READY line: {other:?}"),
        };
        let stdout = reader.join().expect("reader thread");
        let f: Vec<&str> = line.split_whitespace().collect();
        let addr = match f.as_slice() {
            ["READY", p, a] if p.parse() == Ok(pid) => a.parse().expect("READY address"),
            _ => panic!("kvstore printed {line:?}, want READY {pid} <addr>"),
        };
        KvStore {
            child,
            pid,
            addr,
            _stdout: stdout,
            startup: t.elapsed(),
        }
    }

    /// Reaps the process once it has been killed (by a capture with `After::Kill`).
    fn reap(mut self) {
        let _ = self.child.wait();
        untrack(self.pid);
    }
}

impl Drop for KvStore {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            sigkill(self.pid);
            let _ = self.child.wait();
        }
        untrack(self.pid);
    }
}

fn vm_rss_kib(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Whether `pid` has exited (gone, or a zombie nobody reaped yet).
fn exited(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit(')')
            .next()
            .map(|r| matches!(r.trim_start().chars().next(), Some('Z' | 'X')))
            .unwrap_or(true),
        Err(_) => true,
    }
}

/// Waits until `pid` has exited and `addr` can be bound again.
fn wait_gone(pid: i32, addr: SocketAddr) {
    let t = Instant::now();
    while !exited(pid) || TcpListener::bind(addr).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "pid {pid} still alive or {addr} still bound 20 s after SIGKILL"
        );
        thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------------
// Measurements.

/// One `pause` capture: its phases and the number of pages it copied.
#[derive(Clone, Copy, Debug)]
struct PauseSample {
    times: CaptureTimes,
}

fn capture_resume(kv: &KvStore) -> PauseSample {
    capture_resume_with(kv, Options::default())
}

fn capture_resume_with(kv: &KvStore, opts: Options) -> PauseSample {
    let c = capture_with(kv.pid, After::Resume, opts)
        .unwrap_or_else(|e| panic!("capture of kvstore pid {} failed: {e}", kv.pid));
    if let Some(note) = &c.precopy_note {
        panic!("the pre-copy was asked for and not used: {note}");
    }
    PauseSample { times: c.times }
}

/// One capture with a TCP client pinging the program: (pause, longest reply gap
/// overlapping the capture).
fn probed_capture(kv: &KvStore) -> (Duration, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut conn = TcpStream::connect(kv.addr).expect("connecting the prober");
    conn.set_nodelay(true).expect("TCP_NODELAY");
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let prober = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut rd = BufReader::new(conn.try_clone().expect("clone"));
            let mut replies = vec![Instant::now()];
            let mut line = String::new();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                writeln!(conn, "0 {seq} PING").expect("prober write");
                line.clear();
                rd.read_line(&mut line).expect("prober read");
                assert!(
                    line.starts_with(&format!("{seq} OK")),
                    "prober got {line:?}"
                );
                replies.push(Instant::now());
            }
            replies
        })
    };
    thread::sleep(SETTLE);
    let t0 = Instant::now();
    let s = capture_resume(kv);
    let t1 = Instant::now();
    thread::sleep(SETTLE);
    stop.store(true, Ordering::Relaxed);
    let replies = prober.join().expect("prober thread");
    let gap = replies
        .windows(2)
        .filter(|w| w[1] > t0 && w[0] < t1)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    (s.times.pause, gap)
}

/// One restore: command start to exit, to serving, and what the driver reported.
#[derive(Clone, Copy, Debug)]
struct RestoreSample {
    command: Duration,
    serving: Duration,
    driver_reported_ms: Option<f64>,
    /// Lazy fill: from the release until every page was in (the driver's figure).
    fill_ms: Option<f64>,
    /// The driver's figure for reading and verifying the image.
    check_ms: Option<f64>,
}

/// Connects to `addr` until a `GET tick` is answered; the time since `t0`.
fn poll_serving(addr: SocketAddr, t0: Instant, stop: &AtomicBool) -> Option<Duration> {
    while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(30) {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            thread::sleep(Duration::from_micros(250));
            continue;
        };
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(b"0 1 GET tick\n").is_err() {
            continue;
        }
        let mut line = String::new();
        if BufReader::new(&s).read_line(&mut line).is_ok() && line.starts_with("1 OK ") {
            return Some(t0.elapsed());
        }
    }
    None
}

fn restore_once(image: &Path, addr: SocketAddr, dir: &Path, eager: bool) -> RestoreSample {
    let out_file = dir.join("restored.stdout");
    let err_file = dir.join("restored.stderr");
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let poller = {
        let stop = stop.clone();
        thread::spawn(move || poll_serving(addr, t0, &stop))
    };
    let out = Command::new(release_dir().join("cs-driver"))
        .arg("restore")
        .arg(image)
        .arg("--detach")
        .arg("--stdout")
        .arg(&out_file)
        .arg("--stderr")
        .arg(&err_file)
        .args(if eager { &["--eager"][..] } else { &[][..] })
        .stdin(Stdio::null())
        .output()
        .expect("spawning cs-driver restore");
    let command = t0.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        stop.store(true, Ordering::Relaxed);
        let _ = poller.join();
        panic!(
            "cs-driver restore {} failed ({}):\n{stderr}",
            image.display(),
            out.status
        );
    }
    let pid: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("cs-driver restore printed no pid: {out:?}"));
    track(pid);
    let serving = poller.join().expect("poller thread");
    let Some(serving) = serving else {
        let tail = fs::read_to_string(&err_file).unwrap_or_default();
        let tail = &tail[tail.len().saturating_sub(2000)..];
        panic!("restored pid {pid} did not answer GET tick on {addr} within 30 s; its stderr ends:\n{tail}");
    };
    // "cs-driver: restored pid P (host pid H) from IMAGE in 12.3 ms"
    // "cs-driver: image checked in 118.0 ms; restored pid P (host pid H) from IMAGE in 4.2 ms"
    let line = stderr.lines().find(|l| l.contains("; restored pid"));
    let check_ms = line
        .and_then(|l| l.split("image checked in ").nth(1))
        .and_then(|t| t.split(" ms").next()?.trim().parse().ok());
    let driver_reported_ms = line
        .and_then(|l| l.rsplit_once(" in "))
        .and_then(|(_, t)| t.trim().strip_suffix("ms")?.trim().parse().ok());
    // "cs-driver: every page of pid P is in 466.2 ms after the fill began (...)"
    let fill_ms = stderr
        .lines()
        .find(|l| l.starts_with("cs-driver: every page"))
        .and_then(|l| l.split(" is in ").nth(1))
        .and_then(|t| t.split(" ms").next()?.trim().parse().ok());
    sigkill(pid);
    wait_gone(pid, addr);
    untrack(pid);
    RestoreSample {
        command,
        serving,
        driver_reported_ms,
        fill_ms,
        check_ms,
    }
}

// ---------------------------------------------------------------------------------
// Driving criterion.

/// What one preload size produced, for the summary.
#[derive(Debug, Default)]
struct SizeReport {
    mib: u64,
    startup: Duration,
    threads: usize,
    rss_kib: u64,
    npages: u64,
    image_bytes: u64,
    zero_pages: u64,
    write_time: Duration,
    /// The first capture of the process (criterion's warm-up).
    first: Option<PauseSample>,
    /// Measured captures (the warm-up one excluded).
    pauses: Vec<PauseSample>,
    /// The same without the pre-copy: every page copied inside the freeze.
    pauses_full: Vec<PauseSample>,
    /// (pause, longest client-seen reply gap).
    probes: Vec<(Duration, Duration)>,
    /// Measured restores (the warm-up one excluded).
    restores: Vec<RestoreSample>,
    /// The same with `--eager`.
    restores_eager: Vec<RestoreSample>,
}

fn configure(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    // One iteration per sample for anything longer than 50 ms; the warm-up is one
    // call. Criterion will say the 10 samples do not fit in 0.5 s: expected.
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(500));
}

/// Runs `one` as criterion's samples of `group/id` (criterion gets the durations it
/// returns) and returns every sample's value, criterion's warm-up call first.
fn measure_all<S>(
    c: &mut Criterion,
    group: &str,
    id: &BenchmarkId,
    mut one: impl FnMut() -> (Duration, S),
) -> Vec<S> {
    let mut all = Vec::new();
    let mut g = c.benchmark_group(group);
    configure(&mut g);
    g.bench_function(id.clone(), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (d, s) = one();
                total += d;
                all.push(s);
            }
            total
        })
    });
    g.finish();
    all
}

/// [`measure_all`] without the warm-up sample.
fn measure<S>(
    c: &mut Criterion,
    group: &str,
    id: &BenchmarkId,
    one: impl FnMut() -> (Duration, S),
) -> Vec<S> {
    let mut all = measure_all(c, group, id, one);
    if !all.is_empty() {
        all.remove(0);
    }
    all
}

fn bench_size(c: &mut Criterion, mib: u64, dir: &Path) -> SizeReport {
    let kv = KvStore::start(mib);
    let mut rep = SizeReport {
        mib,
        startup: kv.startup,
        ..Default::default()
    };
    let id = BenchmarkId::from_parameter(format!("{mib}MiB"));

    let all = measure_all(c, "pause", &id, || {
        thread::sleep(SETTLE);
        let s = capture_resume(&kv);
        (s.times.pause, s)
    });
    rep.first = all.first().copied();
    rep.pauses = all.get(1..).unwrap_or_default().to_vec();
    // Side by side in the same run: every page copied inside the freeze.
    rep.pauses_full = measure(c, "pause_full", &id, || {
        thread::sleep(SETTLE);
        let s = capture_resume_with(&kv, Options { precopy: false });
        (s.times.pause, s)
    });

    for _ in 0..PROBE_RUNS {
        rep.probes.push(probed_capture(&kv));
    }

    thread::sleep(SETTLE);
    rep.rss_kib = vm_rss_kib(kv.pid);
    let cap = capture(kv.pid, After::Kill)
        .unwrap_or_else(|e| panic!("capture (kill) of kvstore pid {} failed: {e}", kv.pid));
    let (pid, addr) = (kv.pid, kv.addr);
    kv.reap();
    rep.threads = cap.epoch.threads.len();
    rep.npages = cap.npages();
    let image = dir.join(format!("kvstore-{mib}MiB.img"));
    let t = Instant::now();
    let stats = write_image(&cap, &image)
        .unwrap_or_else(|e| panic!("write_image {}: {e}", image.display()));
    rep.write_time = t.elapsed();
    drop(cap);
    rep.image_bytes = fs::metadata(&image).map(|m| m.len()).unwrap_or(stats.bytes);
    rep.zero_pages = stats.zero_pages;
    wait_gone(pid, addr);

    if RESTORE_MIB.contains(&mib) {
        rep.restores = measure(c, "restore", &id, || {
            let s = restore_once(&image, addr, dir, false);
            (s.serving, s)
        });
        // Side by side: every page copied in before the program runs.
        rep.restores_eager = measure(c, "restore_eager", &id, || {
            let s = restore_once(&image, addr, dir, true);
            (s.serving, s)
        });
    }
    let _ = fs::remove_file(&image);
    rep
}

/// Bytes of the memcpy baseline's buffers.
const MEMCPY_BYTES: usize = 256 << 20;

/// `memcpy/<when>`: one core copying 256 MiB between two pre-faulted buffers, the
/// floor for any pause or restore that moves the same bytes. Run at the start and at
/// the end, so the summary shows how much the machine drifted during the run.
fn bench_memcpy(c: &mut Criterion, src: &[u8], dst: &mut [u8], when: &str) {
    let mut g = c.benchmark_group("memcpy");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(2))
        .throughput(criterion::Throughput::Bytes(src.len() as u64));
    g.bench_function(BenchmarkId::from_parameter(when), |b| {
        b.iter(|| {
            dst.copy_from_slice(src);
            std::hint::black_box(&mut *dst);
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------
// The summary.

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.1}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{:.2}", a / b),
        _ => "—".into(),
    }
}

/// `<target>/criterion`, where criterion writes (unless CRITERION_HOME says otherwise).
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    // The bench binary is <target>/<profile>/deps/checkpoint-<hash>.
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .nth(3)
        .expect("<target>/<profile>/deps/<bench>")
        .join("criterion")
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|x| x.1.trim().to_string())
        })
        .unwrap_or_default();
    let ncpu = thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kib| kib / (1 << 20) as f64);
    format!(
        "{ncpu} vCPU {cpu}, {mem_gib:.0} GiB, Linux {}",
        kernel.trim()
    )
}

/// One row of the pause-by-phase table: the median of each phase over `samples`.
fn phase_row(size: &str, what: &str, samples: &[PauseSample]) {
    let col = |f: &dyn Fn(&PauseSample) -> f64| fmt_ms(median(samples.iter().map(f).collect()));
    let rest = |s: &PauseSample| {
        let t = &s.times;
        ms(t.pause) - ms(t.freeze + t.threads + t.inject + t.memory + t.fds)
    };
    let gbs = median(
        samples
            .iter()
            .filter(|s| !s.times.copy.is_zero())
            .map(|s| (s.times.paused_pages * PAGE) as f64 / s.times.copy.as_secs_f64() / 1e9)
            .collect(),
    );
    println!(
        "| {size} | {what} ({}) | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        samples.len(),
        col(&|s| ms(s.times.pause)),
        col(&|s| ms(s.times.freeze)),
        col(&|s| ms(s.times.threads)),
        col(&|s| ms(s.times.inject)),
        col(&|s| ms(s.times.memory)),
        col(&|s| ms(s.times.copy)),
        col(&|s| ms(s.times.fds)),
        col(&rest),
        median(
            samples
                .iter()
                .map(|s| s.times.paused_pages as f64)
                .collect()
        )
        .map_or("—".into(), |p| format!("{p:.0}")),
        gbs.map_or("—".into(), |g| format!("{g:.2}")),
        col(&|s| ms(s.times.precopy)),
        col(&|s| ms(s.times.prefreeze)),
    );
}

fn summary(reports: &[SizeReport], load_before: &str) {
    let crit = criterion_dir();
    let crit_ms = |group: &str, mib: u64| {
        criterion_median_ns(&crit.join(group), &format!("{mib}MiB")).map(|ns| ns / 1e6)
    };
    let mib_of = |bytes: f64| bytes / (1 << 20) as f64;

    println!("\ncheckpoint: kvstore ({GO}), medians; {}", machine());
    println!("load average before / after: {load_before} / {}", loadavg());
    println!();
    let memcpy_gbs = |when: &str| {
        criterion_median_ns(&crit.join("memcpy"), when).map(|ns| MEMCPY_BYTES as f64 / ns)
    };
    let (m0, m1) = (memcpy_gbs("start"), memcpy_gbs("end"));
    let memcpy = match (m0, m1) {
        (Some(a), Some(b)) => Some((a + b) / 2.0),
        _ => None,
    };
    let gbs = |v: Option<f64>| v.map_or("—".into(), |g| format!("{g:.2}"));
    println!(
        "memcpy baseline (one core, 256 MiB, pre-faulted), GB/s: {} at the start, {} at the end",
        gbs(m0),
        gbs(m1)
    );
    println!();
    println!("| measure | preload | samples | median ms | target ms | median/target | CRIU 4.2 ms | median/CRIU | memcpy of the pages ms | median/memcpy |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let row =
        |what: &str, r: &SizeReport, m: Option<f64>, n: usize, t: Option<f64>, k: Option<f64>| {
            // What one core needs to copy the present pages once, at this run's memcpy rate.
            let floor = memcpy.map(|g| (r.npages * PAGE) as f64 / g / 1e6);
            println!(
                "| {what} | {} MiB | {n} | {} | {} | {} | {} | {} | {} | {} |",
                r.mib,
                fmt_ms(m),
                fmt_ms(t),
                ratio(m, t),
                fmt_ms(k),
                ratio(m, k),
                fmt_ms(floor),
                ratio(m, floor)
            );
        };
    type Count = fn(&SizeReport) -> usize;
    let pause_rows: [(&str, &str, Count); 2] = [
        ("pause (freeze to resume)", "pause", |r| r.pauses.len()),
        ("pause without pre-copy (--no-precopy)", "pause_full", |r| {
            r.pauses_full.len()
        }),
    ];
    for (what, group, n) in pause_rows {
        for r in reports {
            let (t, k) = (pause_target_ms(r.mib), pause_criu_ms(r.mib));
            row(what, r, crit_ms(group, r.mib), n(r), t, k);
        }
    }
    let restore_rows: [(&str, &str, Count); 2] = [
        ("restore (command start to serving)", "restore", |r| {
            r.restores.len()
        }),
        (
            "restore --eager (command start to serving)",
            "restore_eager",
            |r| r.restores_eager.len(),
        ),
    ];
    for (what, group, n) in restore_rows {
        for r in reports.iter().filter(|r| RESTORE_MIB.contains(&r.mib)) {
            let (t, k) = (restore_target_ms(r.mib), restore_criu_ms(r.mib));
            row(what, r, crit_ms(group, r.mib), n(r), t, k);
        }
    }

    println!();
    println!("| preload | threads | VmRSS MiB | present pages MiB | image MiB | image/RSS | zero pages not stored | write_image ms (after resume) | kvstore start s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in reports {
        let rss = r.rss_kib as f64 / 1024.0;
        let img = mib_of(r.image_bytes as f64);
        println!(
            "| {} MiB | {} | {rss:.0} | {:.0} | {img:.0} | {:.2} | {} | {:.0} | {:.1} |",
            r.mib,
            r.threads,
            mib_of((r.npages * PAGE) as f64),
            if rss > 0.0 { img / rss } else { 0.0 },
            r.zero_pages,
            ms(r.write_time),
            r.startup.as_secs_f64()
        );
    }

    println!();
    println!(
        "Pause by phase, ms (median of each column over the measured captures, so the \
         columns do not add up exactly; `first` is the process's first capture, \
         criterion's warm-up, not in the medians):"
    );
    println!("| preload | captures | pause | freeze | threads | inject | memory | of which copy | fds | rest | pages copied in the pause | copy GB/s | pre-copy (program running) | its stop |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in reports {
        phase_row(&format!("{} MiB", r.mib), "pre-copy", &r.pauses);
        if let Some(f) = r.first {
            phase_row(&format!("{} MiB", r.mib), "pre-copy, first", &[f]);
        }
        phase_row(&format!("{} MiB", r.mib), "no pre-copy", &r.pauses_full);
    }
    println!();
    println!(
        "Cross-check from outside the driver: a TCP client sends PING one at a time during \
         {PROBE_RUNS} captures per size; the longest gap between two replies that overlaps \
         the capture (medians, ms):"
    );
    println!("| preload | client-seen stall | times.pause of those captures |");
    println!("|---|---|---|");
    for r in reports {
        println!(
            "| {} MiB | {} | {} |",
            r.mib,
            fmt_ms(median(r.probes.iter().map(|p| ms(p.1)).collect())),
            fmt_ms(median(r.probes.iter().map(|p| ms(p.0)).collect())),
        );
    }

    println!();
    println!("Restore by part (medians, ms from the command's start):");
    println!("| preload | fill | image check (driver's figure) | then released (driver's figure) | serving (GET tick answered) | every page in (driver's figure, from the release) | command exited |");
    println!("|---|---|---|---|---|---|---|");
    for r in reports.iter().filter(|r| !r.restores.is_empty()) {
        for (fill, v) in [("lazy", &r.restores), ("eager", &r.restores_eager)] {
            println!(
                "| {} MiB | {fill} | {} | {} | {} | {} | {} |",
                r.mib,
                fmt_ms(median(v.iter().filter_map(|s| s.check_ms).collect())),
                fmt_ms(median(
                    v.iter().filter_map(|s| s.driver_reported_ms).collect()
                )),
                fmt_ms(median(v.iter().map(|s| ms(s.serving)).collect())),
                fmt_ms(median(v.iter().filter_map(|s| s.fill_ms).collect())),
                fmt_ms(median(v.iter().map(|s| ms(s.command)).collect())),
            );
        }
    }
}

fn main() -> ExitCode {
    if let Err(msg) = preflight() {
        eprintln!("checkpoint bench: {msg}");
        return ExitCode::FAILURE;
    }
    warn_if_stale();
    install_panic_hook();
    let dir = std::env::temp_dir().join(format!("cs-bench-checkpoint-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("scratch dir");
    let load_before = loadavg();

    let mut c = Criterion::default().configure_from_args();
    let src = cs_benches::random_memory(MEMCPY_BYTES, 0x5eed);
    let mut dst = vec![1u8; MEMCPY_BYTES];
    bench_memcpy(&mut c, &src, &mut dst, "start");
    let reports: Vec<SizeReport> = PAUSE_MIB
        .iter()
        .map(|&mib| bench_size(&mut c, mib, &dir))
        .collect();
    bench_memcpy(&mut c, &src, &mut dst, "end");
    drop((src, dst));
    c.final_summary();
    let _ = fs::remove_dir_all(&dir);
    summary(&reports, &load_before);
    ExitCode::SUCCESS
}
