//! Running the real `cs-driver` (and its `cs-restore-stub`) from tests.
//!
//! The binaries are taken from the same cargo profile folder as the running test
//! (`target/release` under `scripts/test.sh`). They must be built first:
//! `cargo build --release -p cs-driver && cargo build --release -p restore-stub --features bin`
//! (scripts/test.sh does this). A missing binary fails the test with that command.
//! `CS_SHOW_DRIVER=1` prints the driver's stderr of successful restores.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The cargo profile folder the running test binary lives in.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary in target/<profile>/deps")
        .to_path_buf()
}

fn bin(name: &str) -> PathBuf {
    let p = profile_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build it first with `cargo build --release -p cs-driver && cargo build --release -p restore-stub --features bin` \
         (scripts/test.sh does this), in the same profile as the tests",
        p.display()
    );
    p
}

/// Path of `cs-driver`.
pub fn driver() -> PathBuf {
    bin("cs-driver")
}

/// Path of `cs-restore-stub`.
pub fn stub() -> PathBuf {
    bin("cs-restore-stub")
}

/// Runs `cs-driver ARGS`, returning its output (never panics on a non-zero exit).
pub fn cs(args: &[&str]) -> Output {
    let _ = stub();
    Command::new(driver())
        .args(args)
        .output()
        .expect("spawning cs-driver")
}

/// Runs `cs-driver ARGS` and panics with its stderr unless it succeeds.
pub fn cs_ok(args: &[&str]) -> Output {
    let out = cs(args);
    assert!(
        out.status.success(),
        "cs-driver {:?} failed ({}):\n{}",
        args,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `cs-driver dump PID -o IMAGE [--leave-running]`.
pub fn dump(pid: u32, image: &Path, leave_running: bool) -> Output {
    let pid = pid.to_string();
    let img = image.to_str().expect("utf-8 path");
    let mut args = vec!["dump", pid.as_str(), "-o", img];
    if leave_running {
        args.push("--leave-running");
    }
    cs_ok(&args)
}

/// A program restored with `--detach`; killed (and its namespace with it) on drop.
#[derive(Debug)]
pub struct Restored {
    pub pid: u32,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// What `cs-driver restore` itself wrote on stderr.
    pub driver_stderr: String,
}

impl Restored {
    /// The end of the program's stderr, for failure messages.
    pub fn stderr_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn alive(&self) -> bool {
        // SAFETY: kill(2) with signal 0 only checks for existence.
        let alive = unsafe { libc::kill(self.pid as i32, 0) } == 0;
        let zombie = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .map(|r| r.trim_start().starts_with('Z'))
                    .unwrap_or(true)
            })
            .unwrap_or(true);
        alive && !zombie
    }

    pub fn kill(&self) {
        // SAFETY: kill(2) with integers.
        unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        let t = Instant::now();
        while self.alive() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `cs-driver restore IMAGE --detach` with the program's output in files in `dir`.
pub fn restore_detached(image: &Path, dir: &Path) -> Result<Restored, String> {
    restore_detached_with(image, dir, &[])
}

/// [`restore_detached`] with more arguments for `cs-driver restore`.
pub fn restore_detached_with(image: &Path, dir: &Path, extra: &[&str]) -> Result<Restored, String> {
    restore_detached_then(image, dir, extra, |_| ()).map(|(r, ())| r)
}

/// [`restore_detached_with`], calling `at_release(pid)` as soon as the driver
/// prints the pid (the program runs by then; with the default lazy fill the
/// command itself returns only once every page is in).
pub fn restore_detached_then<T>(
    image: &Path,
    dir: &Path,
    extra: &[&str],
    at_release: impl FnOnce(u32) -> T,
) -> Result<(Restored, T), String> {
    restore_detached_env(image, dir, extra, &[], at_release)
}

/// [`restore_detached_then`] with environment variables for the driver (its test
/// switches).
pub fn restore_detached_env<T>(
    image: &Path,
    dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
    at_release: impl FnOnce(u32) -> T,
) -> Result<(Restored, T), String> {
    use std::io::{BufRead, BufReader, Read};
    let _ = stub();
    let stdout = dir.join("restored.stdout");
    let stderr = dir.join("restored.stderr");
    let mut child = Command::new(driver())
        .arg("restore")
        .arg(image)
        .args(["--detach", "--stdout"])
        .arg(&stdout)
        .arg("--stderr")
        .arg(&stderr)
        .args(extra)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning cs-driver restore: {e}"))?;
    let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    // Drain stderr meanwhile, so a chatty driver never blocks on it.
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let mut line = String::new();
    let _ = out.read_line(&mut line);
    let pid: Option<u32> = line.trim().parse().ok();
    let early = pid.map(at_release);
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    let status = child
        .wait()
        .map_err(|e| format!("waiting for cs-driver: {e}"))?;
    let driver_stderr = err_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(format!(
            "cs-driver restore failed ({status}): {driver_stderr}"
        ));
    }
    if std::env::var_os("CS_SHOW_DRIVER").is_some() {
        eprintln!("driver stderr: {driver_stderr}");
    }
    let (Some(pid), Some(early)) = (pid, early) else {
        return Err(format!("restore printed no pid: {line:?}"));
    };
    Ok((
        Restored {
            pid,
            stdout,
            stderr,
            driver_stderr,
        },
        early,
    ))
}

/// The innermost NSpid of every task of `pid`, sorted: the ids the program sees.
pub fn seen_tids(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in rd.flatten() {
            let st = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
            if let Some(l) = st.lines().find(|l| l.starts_with("NSpid:")) {
                if let Some(v) = l.split_whitespace().last().and_then(|x| x.parse().ok()) {
                    out.push(v);
                }
            }
        }
    }
    out.sort_unstable();
    out
}

/// `/proc/PID/maps` as (start, end, perms, name) without inode/device columns.
pub fn maps(pid: u32) -> Vec<(u64, u64, String, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (a, b) = f.first()?.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
                f.get(1)?.to_string(),
                f.get(5).map(|s| s.to_string()).unwrap_or_default(),
            ))
        })
        .collect()
}

#[derive(Debug)]
/// A long-running `cs-driver` (primary, backup) whose stdout and stderr go to a
/// log file; killed and reaped on drop.
pub struct Logged {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl Logged {
    /// Starts `cmd` with its output appended to a new file `log`.
    pub fn spawn(mut cmd: Command, log: &Path) -> Logged {
        let f = std::fs::File::create(log).expect("driver log");
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(f.try_clone().expect("log fd"))
            .stderr(f)
            .spawn()
            .expect("spawning cs-driver");
        Logged {
            child,
            log: log.to_path_buf(),
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `what`; panics with the log after `limit`
    /// or when the process ends first.
    pub fn wait_for(&mut self, what: &str, limit: std::time::Duration) {
        let t = std::time::Instant::now();
        while !self.log().contains(what) {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "{} ended ({st}) before logging {what:?}:\n{}",
                    self.log.display(),
                    self.log()
                );
            }
            assert!(
                t.elapsed() < limit,
                "no {what:?} in {} within {limit:?}:\n{}",
                self.log.display(),
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
