//! Issue 11's conformance suite: every kind of kernel state a process can hold is
//! either restored faithfully or refused by `dump`, by name, while the program
//! runs on untouched. Nothing in between.
//!
//! Each program in `tests/conformance/*.c` sets up one kind of state, prints
//! `READY`, and polls for `DIR/check`; then it checks every property of that state
//! and writes `PASS` or `FAIL: <what>` to `DIR/result` (protocol:
//! `tests/conformance/conform.h`). Its header names the kind, its area, what
//! is expected (`restored` or `refused`) and, for a refusal, words the refusal
//! must contain. For each program this test:
//!
//! 1. compiles it with the system `cc` (cached by a hash of the source, the
//!    shared header and the flags, in `target/<profile>/conformance/`);
//! 2. starts it, waits for `READY`, and runs `cs-driver dump PID -o IMAGE` (kill
//!    mode);
//! 3. if the dump refuses: the message must name the kind, no image may exist,
//!    and the program must still be running, not stopped or traced, and pass its
//!    own check without any restore (it was not touched): **refused**;
//! 4. if the dump succeeds: `cs-driver restore IMAGE --detach`, then the check
//!    must pass in the restored program: **restored**.
//!
//! Anything else fails the test, naming the program: a restore that fails after
//! the dump killed the program (refused too late), a `FAIL` after restore
//! (silently wrong), or an outcome other than the one the program's header and
//! `docs/conformance.md` promise. A table of every program's outcome is printed
//! at the end (`--nocapture` shows it on success too).
//!
//! `CS_CONFORMANCE_ONLY=name,name` runs only those programs;
//! `CS_CONFORMANCE_JOBS=N` sets how many run at once (default 3).
//!
//! glibc programs register rseq on every thread, which restore does not give back
//! yet (issue 10); the programs run with `GLIBC_TUNABLES=glibc.pthread.rseq=0`
//! (docs/conformance.md).
//!
//! Does not prove: that the kinds listed are all there are (the list grows with
//! the issue); properties a program does not check; behaviour under load or
//! with many objects of one kind.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use cs_tests::driver;
use cs_tests::fixture::temp_dir;
use cs_tests::procs::{alive, tracer, unhealthy_threads};

const CFLAGS: &[&str] = &["-O1", "-g", "-Wall", "-Wextra", "-Werror", "-pthread"];
/// `GLIBC_TUNABLES` for the programs without a `// tunables:` line;
/// `CS_CONFORMANCE_TUNABLES` overrides it.
const TUNABLES: &str = "glibc.pthread.rseq=0";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const RESULT_TIMEOUT: Duration = Duration::from_secs(15);
const SILENT: &str = "silently wrong after restore: ";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Restored,
    Refused,
    /// A known gap: silently wrong today, neither fixable nor refusable within
    /// what the image carries (the header's `// gap:` says why and what it
    /// needs). Reported in the table, never as restored; `CS_CONFORMANCE_STRICT=1`
    /// fails on it.
    Gap,
}

/// How the harness plays the other end of a connection the program holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Peer {
    /// A TCP listener of the harness; its port is the program's second argument.
    TcpListen,
    /// A unix listener of the harness at `DIR/peer.sock`, the second argument.
    UnixListen,
    /// The harness connects to the program's `DIR/pending.sock` after `READY`,
    /// sends `queued-hello`, and waits for `DIR/queued` before the dump.
    UnixConnect,
}

#[derive(Clone, Debug)]
struct Program {
    name: String,
    source: PathBuf,
    kind: String,
    area: String,
    expect: Expect,
    /// Words the refusal must contain (every one).
    refusal: Vec<String>,
    peer: Option<Peer>,
    /// `GLIBC_TUNABLES` for this program (`// tunables:`), else [`TUNABLES`].
    tunables: Option<String>,
}

#[derive(Clone, Debug)]
enum Outcome {
    Restored,
    /// Refused at dump, the program untouched; the refusal's lines.
    Refused(String),
    /// Anything else: silently wrong, refused too late, or the harness failed.
    Wrong(String),
}

fn conformance_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance")
}

fn programs() -> Vec<Program> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(conformance_dir()).expect("tests/conformance exists");
    for e in rd.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("c") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let field = |key: &str| -> Vec<String> {
            text.lines()
                .take_while(|l| l.starts_with("//"))
                .filter_map(|l| l.strip_prefix(&format!("// {key}:")))
                .map(|v| v.trim().to_string())
                .collect()
        };
        let one = |key: &str| {
            field(key)
                .into_iter()
                .next()
                .unwrap_or_else(|| panic!("{name}.c has no `// {key}:` header line"))
        };
        let expect = match one("expect").as_str() {
            "restored" => Expect::Restored,
            "refused" => Expect::Refused,
            "gap" => Expect::Gap,
            x => panic!("{name}.c: expect must be restored, refused or gap, not {x:?}"),
        };
        let peer = field("peer").first().map(|p| match p.as_str() {
            "tcp-listen" => Peer::TcpListen,
            "unix-listen" => Peer::UnixListen,
            "unix-connect" => Peer::UnixConnect,
            x => panic!("{name}.c: unknown peer {x:?}"),
        });
        let refusal = field("refusal");
        assert!(
            expect != Expect::Refused || !refusal.is_empty(),
            "{name}.c is expected to be refused but names no `// refusal:` words"
        );
        assert!(
            expect != Expect::Gap || !field("gap").is_empty(),
            "{name}.c is a known gap but does not say why (`// gap:`)"
        );
        out.push(Program {
            kind: one("kind"),
            area: one("area"),
            name,
            source: path,
            expect,
            refusal,
            peer,
            tunables: field("tunables").into_iter().next(),
        });
    }
    out.sort_by(|a, b| (&a.area, &a.name).cmp(&(&b.area, &b.name)));
    out
}

/// FNV-1a, 64 bits: names the cached binary after what it was built from.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter().chain(&[0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn compile(p: &Program) -> Result<PathBuf, String> {
    let src = std::fs::read(&p.source).map_err(|e| e.to_string())?;
    let header = std::fs::read(conformance_dir().join("conform.h")).map_err(|e| e.to_string())?;
    let flags = CFLAGS.join(" ");
    let h = fnv(&[&src, &header, flags.as_bytes()]);
    let dir = driver::profile_dir().join("conformance");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let bin = dir.join(format!("{}-{h:016x}", p.name));
    if bin.exists() {
        return Ok(bin);
    }
    let tmp = dir.join(format!(".{}-{h:016x}.{}", p.name, std::process::id()));
    let out = Command::new("cc")
        .args(CFLAGS)
        .arg("-I")
        .arg(conformance_dir())
        .arg(&p.source)
        .arg("-o")
        .arg(&tmp)
        .output()
        .map_err(|e| format!("running cc (the system C compiler is needed): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cc failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::rename(&tmp, &bin).map_err(|e| e.to_string())?;
    Ok(bin)
}

/// A child killed and reaped on drop.
struct Prog(Child);

impl Drop for Prog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_file(path: &Path, timeout: Duration) -> Option<String> {
    let t = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            return Some(s.trim().to_string());
        }
        if t.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Creates `DIR/check` and waits for `DIR/result`.
fn trigger_check(dir: &Path) -> Result<String, String> {
    std::fs::write(dir.join("check"), b"check").map_err(|e| e.to_string())?;
    wait_for_file(&dir.join("result"), RESULT_TIMEOUT)
        .ok_or_else(|| format!("no result within {RESULT_TIMEOUT:?}"))
}

fn tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(10)..].join(" | ")
}

/// Holds the harness's end of a peer connection until dropped.
#[derive(Default)]
struct PeerEnd {
    held: Arc<Mutex<Vec<Box<dyn Send>>>>,
}

/// Accepts one connection on `accept` in a thread, reads what the program
/// sends and holds the connection open.
fn serve<S: Read + Send + 'static>(
    accept: impl FnOnce() -> std::io::Result<S> + Send + 'static,
    peer: &PeerEnd,
) {
    let held = peer.held.clone();
    std::thread::spawn(move || {
        if let Ok(mut s) = accept() {
            let mut b = [0u8; 4];
            let _ = s.read_exact(&mut b);
            held.lock().unwrap().push(Box::new(s));
        }
    });
}

fn run_one(p: &Program, bin: &Path) -> Outcome {
    match run_inner(p, bin) {
        Ok(o) => o,
        Err(e) => Outcome::Wrong(e),
    }
}

fn run_inner(p: &Program, bin: &Path) -> Result<Outcome, String> {
    let dir_guard = temp_dir(&format!("conf-{}", p.name));
    let dir = dir_guard.path().to_path_buf();
    let peer = PeerEnd::default();
    let mut cmd = Command::new(bin);
    cmd.arg(&dir);
    match p.peer {
        Some(Peer::TcpListen) => {
            let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            cmd.arg(l.local_addr().unwrap().port().to_string());
            serve(move || l.accept().map(|(s, _)| s), &peer);
        }
        Some(Peer::UnixListen) => {
            let path = dir.join("peer.sock");
            let l = std::os::unix::net::UnixListener::bind(&path).map_err(|e| e.to_string())?;
            cmd.arg(&path);
            serve(move || l.accept().map(|(s, _)| s), &peer);
        }
        Some(Peer::UnixConnect) | None => {}
    }
    let stderr = std::fs::File::create(dir.join("program.stderr")).map_err(|e| e.to_string())?;
    let mut child = Prog(
        cmd.env(
            "GLIBC_TUNABLES",
            p.tunables.clone().unwrap_or_else(|| {
                std::env::var("CS_CONFORMANCE_TUNABLES").unwrap_or_else(|_| TUNABLES.into())
            }),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?,
    );
    let pid = child.0.id();
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(READY_TIMEOUT)
        .map_err(|_| format!("no READY within {READY_TIMEOUT:?}"))?;
    if line.trim() != "READY" {
        return Err(format!(
            "program said {:?} instead of READY (stderr: {})",
            line.trim(),
            tail(&dir.join("program.stderr"))
        ));
    }
    if p.peer == Some(Peer::UnixConnect) {
        let mut s = std::os::unix::net::UnixStream::connect(dir.join("pending.sock"))
            .map_err(|e| format!("peer connect: {e}"))?;
        s.write_all(b"queued-hello").map_err(|e| e.to_string())?;
        peer.held.lock().unwrap().push(Box::new(s));
        wait_for_file(&dir.join("queued"), READY_TIMEOUT)
            .ok_or("the program never saw the queued connection")?;
    }

    let image = dir.join("image");
    let out = driver::cs(&["dump", &pid.to_string(), "-o", image.to_str().unwrap()]);
    let msg = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        // Refused (or failed): the program must be untouched and still right.
        if image.exists() {
            return Err(format!("the dump failed but left an image: {msg}"));
        }
        if !alive(pid) {
            return Err(format!("the dump failed and the program is gone: {msg}"));
        }
        let t = Instant::now();
        let mut bad = unhealthy_threads(pid);
        while bad.as_ref().is_some_and(|b| !b.is_empty()) && t.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(10));
            bad = unhealthy_threads(pid);
        }
        if bad != Some(vec![]) || tracer(pid) != Some(0) {
            return Err(format!(
                "the dump failed and left threads stopped or traced ({bad:?}): {msg}"
            ));
        }
        let verdict = trigger_check(&dir)?;
        if verdict != "PASS" {
            return Err(format!(
                "the dump failed, and the untouched program then said {verdict:?}: {msg}"
            ));
        }
        return Ok(Outcome::Refused(msg));
    }
    // Dumped and killed: it must come back right.
    let t = Instant::now();
    while child.0.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    if alive(pid) {
        return Err("the dump succeeded but did not kill the program".into());
    }
    let restored = match driver::restore_detached(&image, &dir) {
        Ok(r) => r,
        Err(e) => {
            return Ok(Outcome::Wrong(format!(
                "dumped and killed, then restore failed (refused too late): {e}"
            )))
        }
    };
    let verdict = match trigger_check(&dir) {
        Ok(v) => v,
        Err(e) => {
            return Ok(Outcome::Wrong(format!(
                "restored, but {e} (alive: {}; stderr: {})",
                restored.alive(),
                restored.stderr_tail().replace('\n', " | ")
            )))
        }
    };
    drop(restored);
    if verdict == "PASS" {
        Ok(Outcome::Restored)
    } else {
        Ok(Outcome::Wrong(format!("{SILENT}{verdict}")))
    }
}

/// The problem with an outcome, given what the program expects; `None` if fine.
fn judge(p: &Program, o: &Outcome) -> Option<String> {
    match (o, p.expect) {
        (Outcome::Wrong(e), Expect::Gap) if e.starts_with(SILENT) => {
            std::env::var_os("CS_CONFORMANCE_STRICT")
                .map(|_| format!("known gap (CS_CONFORMANCE_STRICT): {e}"))
        }
        (Outcome::Wrong(e), _) => Some(e.clone()),
        (Outcome::Restored, Expect::Gap) => Some(
            "restored faithfully, but listed as a known gap: update its header and docs/conformance.md"
                .into(),
        ),
        (Outcome::Refused(msg), Expect::Gap) => Some(format!(
            "refused at dump, but listed as a known gap: update its header and docs/conformance.md: {}",
            msg.trim()
        )),
        (Outcome::Restored, Expect::Restored) => None,
        (Outcome::Restored, Expect::Refused) => Some(
            "restored faithfully, but expected to be refused: update its header and docs/conformance.md"
                .into(),
        ),
        (Outcome::Refused(msg), Expect::Restored) => Some(format!(
            "refused at dump (the program ran on), but expected to be restored: {}",
            msg.trim()
        )),
        (Outcome::Refused(msg), Expect::Refused) => {
            let missing: Vec<&String> = p
                .refusal
                .iter()
                .filter(|w| !msg.contains(w.as_str()))
                .collect();
            if !msg.contains("so it was not dumped") {
                Some(format!("the dump failed, but not with a refusal: {}", msg.trim()))
            } else if !missing.is_empty() {
                Some(format!(
                    "refused, but the refusal does not name {missing:?}: {}",
                    msg.trim()
                ))
            } else {
                None
            }
        }
    }
}

fn selected() -> Vec<Program> {
    let all = programs();
    match std::env::var("CS_CONFORMANCE_ONLY") {
        Ok(only) if !only.is_empty() => {
            let names: Vec<&str> = only.split(',').map(str::trim).collect();
            for n in &names {
                assert!(
                    all.iter().any(|p| p.name == *n),
                    "CS_CONFORMANCE_ONLY names {n}, which is not in tests/conformance"
                );
            }
            all.into_iter()
                .filter(|p| names.contains(&p.name.as_str()))
                .collect()
        }
        _ => all,
    }
}

/// The refusal line that names the kind (the first item of the message).
fn refusal_line(msg: &str) -> String {
    msg.lines()
        .find_map(|l| l.trim().strip_prefix("- "))
        .unwrap_or("")
        .to_string()
}

#[test]
fn every_kind_is_restored_or_refused_at_dump() {
    let progs = selected();
    assert!(!progs.is_empty(), "no conformance programs found");
    let jobs: usize = std::env::var("CS_CONFORMANCE_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let queue = Arc::new(Mutex::new(
        progs.iter().cloned().enumerate().collect::<VecDeque<_>>(),
    ));
    let results = Arc::new(Mutex::new(vec![None; progs.len()]));
    let started = Instant::now();
    let workers: Vec<_> = (0..jobs)
        .map(|_| {
            let queue = queue.clone();
            let results = results.clone();
            std::thread::spawn(move || loop {
                let Some((i, p)) = queue.lock().unwrap().pop_front() else {
                    break;
                };
                let t = Instant::now();
                let outcome = match compile(&p) {
                    Ok(bin) => run_one(&p, &bin),
                    Err(e) => Outcome::Wrong(format!("build: {e}")),
                };
                results.lock().unwrap()[i] = Some((outcome, t.elapsed()));
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a worker panicked");
    }
    let results = results.lock().unwrap().clone();

    let mut table =
        String::from("\n| program | area | outcome | s | detail |\n|---|---|---|---|---|\n");
    let mut failures = Vec::new();
    for (p, r) in progs.iter().zip(results) {
        let (o, took) = r.expect("every program ran");
        let problem = judge(p, &o);
        let (word, detail) = match (&o, &problem) {
            (_, Some(e)) => ("WRONG", e.clone()),
            (Outcome::Restored, None) => ("restored", String::new()),
            (Outcome::Refused(m), None) => ("refused at dump", refusal_line(m)),
            (Outcome::Wrong(e), None) => ("KNOWN GAP", e.clone()),
        };
        table.push_str(&format!(
            "| {} | {} | {} | {:.1} | {} |\n",
            p.name,
            p.area,
            word,
            took.as_secs_f64(),
            detail.replace('\n', " ").replace('|', "/")
        ));
        if let Some(e) = problem {
            failures.push(format!("{} ({}): {}", p.name, p.kind, e));
        }
    }
    eprintln!(
        "{table}\n{} programs in {:.1} s",
        progs.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {} conformance programs are not restored faithfully nor refused at dump:\n  - {}",
        failures.len(),
        progs.len(),
        failures.join("\n  - ")
    );
}

/// docs/conformance.md lists every program with the outcome its header promises
/// (the suite above checks the header against the real outcome).
#[test]
fn the_docs_table_lists_every_program_with_its_outcome() {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/conformance.md");
    let doc = std::fs::read_to_string(&doc_path).expect("docs/conformance.md exists");
    let mut problems = Vec::new();
    for p in programs() {
        let tag = format!("`{}`", p.name);
        let rows: Vec<&str> = doc
            .lines()
            .filter(|l| l.starts_with('|') && l.contains(&tag))
            .collect();
        let want = match p.expect {
            Expect::Restored => "restored",
            Expect::Refused => "refused at dump",
            Expect::Gap => "known gap",
        };
        match rows.as_slice() {
            [] => problems.push(format!("{} is not in the table", p.name)),
            [row] => {
                let cells: Vec<&str> = row.split('|').map(str::trim).collect();
                if !cells.iter().any(|c| c.starts_with(want)) {
                    problems.push(format!("{}'s row does not say {want:?}: {row}", p.name));
                }
            }
            _ => problems.push(format!("{} has {} rows", p.name, rows.len())),
        }
    }
    assert!(
        problems.is_empty(),
        "docs/conformance.md is out of date:\n  - {}",
        problems.join("\n  - ")
    );
}
