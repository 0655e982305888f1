//! Corrupt images are refused by `cs-driver inspect` and `cs-driver restore` with a
//! clear error, and no process is started (issue 4, acceptance item 5).
//!
//! One good image is made with the real driver (kvstore, Go 1.27.3, 8 MiB preloaded,
//! plus a marker key, dumped in the default mode, which kills it). Derived from it
//! ([`cs_tests::image_edit`]): flipped page bytes (raw, and with the frame checksums
//! re-sealed so that only the page run's own data checksum is left to notice),
//! truncations (mid-header, mid-payload, right before the commit, inside the commit),
//! a wrong magic (first frame and a later one), a future major and a newer minor
//! version (every header re-emitted with a correct header checksum, the epoch digest
//! re-sealed), two other CPU layouts (ProcessInfo's XSAVE size and XCR0 rewritten, the
//! thread XSAVE blobs resized to match and the epoch digest re-sealed, so the epoch
//! still passes core-format's validator and only the CPU check can refuse it), an
//! empty file and a missing file.
//!
//! For every derived file, `inspect` and `restore` (attached, without `--detach`: a
//! program it started would keep it running into the timeout) must exit non-zero by
//! themselves (not killed by a signal, not timed out), say on stderr what is wrong
//! ("checksum", "truncated", "magic", "major", "minor", "XSAVE"/"CPU", ...) and, for
//! damage inside a frame, the byte offset of that frame; and no process may have been
//! started: this test process is a child subreaper, so anything the driver forks
//! stays in its process tree, which must not grow; no process may run in a child PID
//! namespace as the original pid; and the original listen address must stay closed.
//!
//! Controls, so that it fails for the right reasons: the image editor re-emits the
//! driver's image byte for byte; the edited version headers carry correct header
//! checksums; the CPU-layout images validate; `inspect` accepts the good image; and at
//! the end the good image does restore, serves its marker and its preloaded values,
//! and the process checks above do see that restored program.
//!
//! What it does not prove: that every possible corruption is caught (one damaged byte
//! or cut per case; the parser itself is fuzzed in core-format); that a process the
//! driver forked *and reaped again* before exiting would be noticed (only processes
//! alive or unreaped after the command are seen); that the restore stub would refuse
//! a bad image by itself (the driver refuses first, so the stub never runs here); an
//! image changed between the driver's check and the stub's reads; images of the Go
//! 1.19 fixture (the format path does not depend on the toolchain).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use core_format as cf;
use cs_tests::check::preload::verify_preload;
use cs_tests::driver;
use cs_tests::fixture::{
    fixture_bin, run_client, temp_dir, wait_until_accepting, GoToolchain, Service,
};
use cs_tests::image_edit::{flip_byte, ImageFrames};

const PRELOAD_MIB: u64 = 8;
/// Generous: a refusal takes milliseconds; a restore that started the program never ends.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// How one `cs-driver` run ended.
struct Run {
    /// `None` when it was still running at the timeout (it was killed then).
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Runs `cs-driver ARGS` with its output in files under `dir` (a program it started
/// could hold pipes open), killing it after `timeout`.
fn run_driver(args: &[&str], dir: &Path, tag: &str, timeout: Duration) -> Run {
    let out_path = dir.join(format!("{tag}.stdout"));
    let err_path = dir.join(format!("{tag}.stderr"));
    let started = Instant::now();
    let mut child = Command::new(driver::driver())
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create stdout file"))
        .stderr(File::create(&err_path).expect("create stderr file"))
        .spawn()
        .expect("spawn cs-driver");
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for cs-driver") {
            break Some(s);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Run {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        elapsed: started.elapsed(),
    }
}

/// Makes this test process the reaper of orphans in its subtree, so that whatever the
/// driver forks stays visible below us after the driver exits.
fn become_subreaper() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integers and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(
        rc,
        0,
        "prctl(PR_SET_CHILD_SUBREAPER) failed: {}; without it a process started by the \
         driver could escape the check",
        std::io::Error::last_os_error()
    );
}

/// Every process below this one: pid -> "comm (state)".
fn descendants() -> BTreeMap<u32, String> {
    let me = std::process::id();
    let mut parent_of: BTreeMap<u32, (u32, String)> = BTreeMap::new();
    for e in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let mut rest = stat[close + 1..].split_whitespace();
        let state = rest.next().unwrap_or("?").to_string();
        let Some(ppid) = rest.next().and_then(|p| p.parse().ok()) else {
            continue;
        };
        parent_of.insert(pid, (ppid, format!("{comm} ({state})")));
    }
    parent_of
        .iter()
        .filter(|(&pid, _)| {
            let mut p = pid;
            for _ in 0..64 {
                match parent_of.get(&p) {
                    Some((pp, _)) if *pp == me => return true,
                    Some((pp, _)) if *pp > 1 => p = *pp,
                    _ => return false,
                }
            }
            false
        })
        .map(|(&pid, (_, what))| (pid, what.clone()))
        .collect()
}

/// Processes in a child PID namespace whose innermost pid is `ns_pid`: a restored
/// instance of the checkpointed program sees its old pid there.
fn restored_instances(ns_pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        if let Some(line) = status.lines().find(|l| l.starts_with("NSpid:")) {
            let ids: Vec<u32> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            if ids.len() >= 2 && ids.last() == Some(&ns_pid) {
                out.push(pid);
            }
        }
    }
    out
}

fn accepting(addr: &str) -> bool {
    let sock: std::net::SocketAddr = addr.parse().expect("socket address");
    std::net::TcpStream::connect_timeout(&sock, Duration::from_millis(300)).is_ok()
}

fn kill_pid(pid: u32) {
    // SAFETY: kill(2) with integers; the pid is one this test saw in its own subtree.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

/// One derived file and what its refusal must say.
struct Case {
    name: &'static str,
    /// The file's bytes; `None` for a file that does not exist.
    bytes: Option<Vec<u8>>,
    /// Substrings the error on stderr must contain (ASCII case-insensitive).
    expect: Vec<&'static str>,
    /// For damage inside a frame: the byte offset the error must name.
    offset: Option<usize>,
}

/// The checkpointed program: where it was and what it held.
struct Original {
    ns_pid: u32,
    addr: String,
}

/// Checks one command on one case; returns what went wrong (empty when all is well).
fn check_refusal(
    case: &Case,
    command: &str,
    path: &Path,
    dir: &Path,
    orig: &Original,
) -> Vec<String> {
    let path_s = path.to_str().expect("utf-8 path");
    let before = descendants();
    let run = run_driver(
        &[command, path_s],
        dir,
        &format!("{}-{command}", case.name),
        COMMAND_TIMEOUT,
    );
    let after = descendants();
    // Shown with --nocapture or on failure: what each refusal said.
    eprintln!(
        "{:<34} {:<8} {:?} in {:?}: {}",
        case.name,
        command,
        run.status.and_then(|s| s.code()),
        run.elapsed,
        run.stderr.trim()
    );
    let mut problems = Vec::new();
    let say = |what: String| format!("[{} / {command}] {what}", case.name);
    match run.status {
        None => problems.push(say(format!(
            "still running after {:?} (killed): did it start the program?",
            run.elapsed
        ))),
        Some(s) if s.success() => problems.push(say("exited 0: the image was accepted".into())),
        Some(s) if s.code().is_none() => {
            problems.push(say(format!("died by a signal ({s}), not with an error")))
        }
        Some(_) => {}
    }
    let err = run.stderr.to_ascii_lowercase();
    for want in &case.expect {
        if !err.contains(&want.to_ascii_lowercase()) {
            problems.push(say(format!("error does not mention {want:?}")));
        }
    }
    if let Some(off) = case.offset {
        if !err.contains(&format!("offset {off}")) {
            problems.push(say(format!("error does not name the byte offset {off}")));
        }
    }
    if run.stdout.contains("checksums verified") || err.contains("restored pid") {
        problems.push(say(
            "printed a summary or a restore as if it succeeded".into()
        ));
    }
    let started: Vec<(u32, String)> = after
        .iter()
        .filter(|(pid, _)| !before.contains_key(pid))
        .map(|(p, w)| (*p, w.clone()))
        .collect();
    if !started.is_empty() {
        problems.push(say(format!(
            "processes were started and are still there: {started:?}"
        )));
    }
    let instances = restored_instances(orig.ns_pid);
    if !instances.is_empty() {
        problems.push(say(format!(
            "processes run as pid {} in a child pid namespace: {instances:?}",
            orig.ns_pid
        )));
    }
    if accepting(&orig.addr) {
        problems.push(say(format!(
            "the original address {} accepts connections again",
            orig.addr
        )));
    }
    for (pid, _) in &started {
        kill_pid(*pid);
    }
    for pid in instances {
        kill_pid(pid);
    }
    if !problems.is_empty() {
        problems.push(format!(
            "    exit: {:?}; stderr: {}",
            run.status,
            run.stderr.trim()
        ));
    }
    problems
}

/// A layout that is not `host`'s: an AVX2-only CPU (832 bytes, x87|SSE|AVX), or, when
/// that is the host, an AVX-512 one.
fn other_layout(host: (u32, u64)) -> (u32, u64) {
    if host == (832, 0x7) {
        (2688, 0xe7)
    } else {
        (832, 0x7)
    }
}

fn kv_get(addr: &str, key: &str) -> String {
    let run = run_client(
        &fixture_bin(GoToolchain::Go127, "kvclient"),
        &["-addr", addr, "-cmd", &format!("GET {key}")],
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("kvclient GET {key}: {e}"));
    run.assert_success();
    run.stdout.trim().to_string()
}

fn cases(good: &[u8], img: &ImageFrames) -> Vec<Case> {
    let offs = img.offsets();
    let raw_runs: Vec<usize> = img
        .indices(cf::FrameKind::PageRun)
        .into_iter()
        .filter(|&i| img.frames[i].payload.len() > cf::PAGE_SIZE)
        .collect();
    let (first_run, last_run) = (
        *raw_runs.first().expect("a stored page run"),
        *raw_runs.last().expect("a stored page run"),
    );
    let vma = img.indices(cf::FrameKind::VmaTable)[0];
    let commit = *img
        .indices(cf::FrameKind::EpochCommit)
        .last()
        .expect("an EpochCommit");
    let seal = |f: &dyn Fn(&mut ImageFrames)| {
        let mut e = img.clone();
        f(&mut e);
        e.to_bytes().expect("re-seal the edited image")
    };
    let host = img.cpu_layout().expect("the good image's CPU layout");
    let other = other_layout(host);
    let other_xcr0 = (host.0, host.1 ^ (1 << 9)); // PKRU toggled, same size
    let last_payload = img.payload_range(last_run);
    let mut magic0 = good.to_vec();
    magic0[0] = b'X';
    let mut magic_vma = good.to_vec();
    magic_vma[offs[vma] + 3] = b'X';
    let case = |name, bytes, expect, offset| Case {
        name,
        bytes,
        expect,
        offset,
    };
    // The signal table moved to just before the commit: every checksum re-sealed,
    // but the stub, which stops at the first page run, would never see it.
    let sig = img.indices(cf::FrameKind::SignalTable)[0];
    let moved = img.frames[sig].len_bytes();
    let late_signals = seal(&|e| {
        let f = e.frames.remove(sig);
        let at = e.frames.len() - 1;
        e.frames.insert(at, f);
    });
    let late_at = offs[commit] - moved;
    vec![
        case(
            "frame-after-the-page-runs",
            Some(late_signals),
            vec!["follows the page runs"],
            Some(late_at),
        ),
        case(
            "page-byte-flipped",
            Some(flip_byte(good, img.payload_range(first_run).start + 123)),
            vec!["checksum"],
            Some(offs[first_run]),
        ),
        // Two damaged runs, checked in parallel: the error names the first one.
        case(
            "page-bytes-flipped-in-two-runs",
            Some(flip_byte(
                &flip_byte(good, last_payload.end - 24 - 1),
                img.payload_range(first_run).start + 7,
            )),
            vec!["checksum"],
            Some(offs[first_run]),
        ),
        case(
            "page-byte-flipped-last-run",
            Some(flip_byte(good, last_payload.end - 24 - 1)),
            vec!["checksum"],
            Some(offs[last_run]),
        ),
        // Payload checksum and epoch digest re-sealed: only the page run's own data
        // checksum is left to notice.
        case(
            "page-byte-flipped-frame-resealed",
            Some(seal(&|e| e.frames[first_run].payload[4000] ^= 0xff)),
            vec!["data checksum"],
            Some(offs[first_run]),
        ),
        case(
            "cut-mid-first-header",
            Some(good[..16].to_vec()),
            vec!["truncated"],
            Some(0),
        ),
        case(
            "cut-mid-page-run-header",
            Some(good[..offs[first_run] + 16].to_vec()),
            vec!["truncated"],
            Some(offs[first_run]),
        ),
        case(
            "cut-mid-page-run-payload",
            Some(good[..last_payload.start + last_payload.len() / 2].to_vec()),
            vec!["truncated"],
            Some(offs[last_run]),
        ),
        case(
            "cut-before-commit",
            Some(good[..offs[commit]].to_vec()),
            vec!["commit"],
            Some(offs[commit]),
        ),
        case(
            "cut-mid-commit",
            Some(good[..good.len() - 4].to_vec()),
            vec!["truncated"],
            Some(offs[commit]),
        ),
        case(
            "bad-magic-first-frame",
            Some(magic0),
            vec!["magic"],
            Some(0),
        ),
        case(
            "bad-magic-vma-table",
            Some(magic_vma),
            vec!["magic"],
            Some(offs[vma]),
        ),
        case(
            "future-major",
            Some(seal(&|e| {
                e.set_version(cf::FORMAT_MAJOR + 1, cf::FORMAT_MINOR)
            })),
            vec!["major"],
            Some(0),
        ),
        case(
            "newer-minor",
            Some(seal(&|e| {
                e.set_version(cf::FORMAT_MAJOR, cf::FORMAT_MINOR + 1)
            })),
            vec!["minor"],
            Some(0),
        ),
        case(
            "other-xsave-layout",
            Some(seal(&|e| {
                e.set_cpu_layout(other.0, other.1).expect("set CPU layout")
            })),
            vec!["XSAVE", "CPU"],
            None,
        ),
        case(
            "other-xcr0-same-size",
            Some(seal(&|e| {
                e.set_cpu_layout(other_xcr0.0, other_xcr0.1)
                    .expect("set CPU layout")
            })),
            vec!["XCR0", "CPU"],
            None,
        ),
        case("empty-file", Some(Vec::new()), vec!["empty"], None),
        case(
            "missing-file",
            None,
            vec!["no such file", "missing-file.img"],
            None,
        ),
    ]
}

/// The edits are what they claim: the version-edited images carry correct header
/// checksums in every frame, and the CPU-layout images are valid epochs apart from
/// the layout (core-format's validator accepts them).
fn check_controls(cases: &[Case], img: &ImageFrames, host: (u32, u64)) {
    for c in cases {
        let Some(bytes) = &c.bytes else { continue };
        match c.name {
            "future-major" | "newer-minor" => {
                // Only header words changed, so the frames sit where they did.
                for (i, off) in img.offsets().into_iter().enumerate() {
                    let view = cf::FrameHeaderView::new_checked(&bytes[off..]).expect("header");
                    assert_eq!(
                        view.header_checksum(),
                        view.compute_header_checksum(),
                        "{}: frame {i} has a wrong header checksum, so a refusal could be \
                         for that rather than for the version",
                        c.name
                    );
                }
            }
            "other-xsave-layout" | "other-xcr0-same-size" => {
                let e = ImageFrames::parse(bytes).expect("the CPU-layout image parses");
                assert_ne!(e.cpu_layout().expect("layout"), host, "{}", c.name);
                e.validate().unwrap_or_else(|err| {
                    panic!(
                        "{}: core-format itself refuses the edited image ({err}), so the CPU \
                         check would not be what refuses it",
                        c.name
                    )
                });
            }
            _ => {}
        }
    }
}

#[test]
fn corrupt_images_are_refused_and_start_nothing() {
    let _ = driver::stub();
    become_subreaper();
    let dir = temp_dir("bad-images");
    let tc = GoToolchain::Go127;
    let store = Service::start(
        &fixture_bin(tc, "kvstore"),
        &[
            "-addr",
            "127.0.0.1:0",
            "-preload-mib",
            &PRELOAD_MIB.to_string(),
        ],
    )
    .expect("start kvstore");
    let orig = Original {
        ns_pid: store.pid(),
        addr: store.addr().to_string(),
    };
    let put = run_client(
        &fixture_bin(tc, "kvclient"),
        &["-addr", &orig.addr, "-cmd", "PUT marker bad-images-marker"],
        Duration::from_secs(20),
    )
    .expect("kvclient PUT");
    put.assert_success();
    let image = dir.path().join("good.img");
    let pid = store.pid().to_string();
    let dumped = run_driver(
        &["dump", &pid, "-o", image.to_str().unwrap()],
        dir.path(),
        "good-dump",
        Duration::from_secs(120),
    );
    assert!(
        dumped.status.is_some_and(|s| s.success()),
        "the dump that makes the good image failed or hung ({:?} after {:?}; the driver \
         needs ptrace over a process it did not start: root, or kernel.yama.ptrace_scope \
         = 0): {}",
        dumped.status,
        dumped.elapsed,
        dumped.stderr
    );
    drop(store);

    let good = std::fs::read(&image).expect("read the good image");
    let img = ImageFrames::parse(&good).expect("the driver's image parses frame by frame");
    assert!(
        img.to_bytes().expect("re-seal") == good,
        "the image editor does not re-emit the driver's image byte for byte; its edits \
         could not be trusted to change only one thing"
    );
    let summary = img.validate().expect("the driver's image validates");
    assert!(summary.pages > 0, "no stored pages in {summary:?}");
    let host = img.cpu_layout().expect("CPU layout");

    let ok = run_driver(
        &["inspect", image.to_str().unwrap()],
        dir.path(),
        "good-inspect",
        COMMAND_TIMEOUT,
    );
    assert!(
        ok.status.is_some_and(|s| s.success()) && ok.stdout.contains("checksums verified"),
        "inspect refuses the untouched image ({:?}): {}",
        ok.status,
        ok.stderr
    );

    let cases = cases(&good, &img);
    check_controls(&cases, &img, host);
    let mut problems = Vec::new();
    for case in &cases {
        let path: PathBuf = dir.path().join(format!("{}.img", case.name));
        if let Some(bytes) = &case.bytes {
            std::fs::write(&path, bytes).expect("write the derived image");
        }
        for command in ["inspect", "restore"] {
            problems.extend(check_refusal(case, command, &path, dir.path(), &orig));
        }
    }

    // Positive control: the untouched image restores and serves, and the process
    // checks used above do see the program it starts.
    let restored = driver::restore_detached(&image, dir.path());
    match &restored {
        Err(e) => problems.push(format!(
            "[control] the untouched image does not restore: {e}"
        )),
        Ok(r) => {
            let seen: BTreeSet<u32> = descendants().into_keys().collect();
            if !seen.contains(&r.pid) {
                problems.push(format!(
                    "[control] the restored program {} is not in this test's process tree \
                     {seen:?}: the no-process check is blind",
                    r.pid
                ));
            }
            if !restored_instances(orig.ns_pid).contains(&r.pid) {
                problems.push(format!(
                    "[control] the restored program {} is not found as pid {} in a child \
                     pid namespace: that check is blind",
                    r.pid, orig.ns_pid
                ));
            }
            match wait_until_accepting(&orig.addr, Duration::from_secs(10)) {
                Err(e) => problems.push(format!(
                    "[control] the restored kvstore does not accept at {}: {e}\n{}",
                    orig.addr,
                    r.stderr_tail()
                )),
                Ok(()) => {
                    let v = kv_get(&orig.addr, "marker");
                    if !v.contains("bad-images-marker") {
                        problems.push(format!("[control] restored marker = {v:?}"));
                    }
                    if let Err(e) = verify_preload(&orig.addr, PRELOAD_MIB, Duration::from_secs(30))
                    {
                        problems.push(format!("[control] restored preload: {e}"));
                    }
                }
            }
        }
    }
    drop(restored);

    assert!(
        problems.is_empty(),
        "{} problem(s) over {} derived images:\n{}",
        problems.len(),
        cases.len(),
        problems.join("\n")
    );
}
