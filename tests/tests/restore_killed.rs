//! A restore whose driver dies while pages are still being filled lazily must not
//! leave the program running with missing memory.
//!
//! By default `cs-driver restore` lets the program run as soon as its address
//! space is laid out and fills pages through a userfaultfd it holds. If the driver
//! died then, closing that uffd would turn every page not yet filled into a zero
//! page under the running program. The namespace init therefore waits for a "done"
//! byte from the driver and kills the program when it reads EOF instead.
//!
//! kvstore (Go 1.27.3) with 256 MiB preloaded is dumped, then restored in the
//! foreground; the driver is SIGKILLed the moment it reports the program released
//! (the background fill of ~350 MiB takes 100 ms or more here, the kill lands
//! within about a millisecond). Checked: the driver had not reported every page
//! in; the namespace init (adopted by this test, a child subreaper) exits with
//! 128 + SIGKILL, so the program was killed for the driver's death rather than
//! crashing on zeroed memory by itself; within 5 s the program's process is gone
//! and its address refuses connections. A second restore of the same image, left alone, serves every
//! preloaded value: the image and the mechanism were fine, only the kill mattered.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cs_tests::check::preload::{preload_count, verify_preload};
use cs_tests::driver::{self, Restored};
use cs_tests::fixture::{fixture_bin, temp_dir, GoToolchain, Service};

fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0): look at the state too.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The parent pid of `pid` (from /proc/PID/stat).
fn ppid(pid: i32) -> i32 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = s.rsplit(')').next().expect("stat fields");
    rest.split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("ppid field")
}

#[test]
fn a_killed_lazy_restore_takes_the_program_down() {
    // The namespace init outlives the driver; as a subreaper this test becomes its
    // parent and can read how it ended (128 + the program's fatal signal).
    // SAFETY: prctl with integers.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");
    let dir = temp_dir("cs-restore-killed");
    let store = Service::start(
        &fixture_bin(GoToolchain::Go127, "kvstore"),
        &["-addr", "127.0.0.1:0", "-preload-mib", "256"],
    )
    .expect("start kvstore");
    let addr = store.addr().to_string();
    let image = dir.path().join("kv.img");
    driver::dump(store.pid(), &image, false);
    drop(store);

    let out = dir.path().join("restored.out");
    let mut child = Command::new(driver::driver())
        .args([
            "restore",
            image.to_str().expect("utf-8"),
            "--stdout",
            out.to_str().expect("utf-8"),
            "--stderr",
            out.to_str().expect("utf-8"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cs-driver restore");
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    let mut said = String::new();
    let (host_pid, init_pid) = loop {
        line.clear();
        let n = err.read_line(&mut line).expect("read driver stderr");
        assert!(
            n > 0,
            "the driver ended before releasing the program: {said}"
        );
        said.push_str(&line);
        // "cs-driver: restored pid P (host pid H) from IMAGE in X ms"
        if let Some(rest) = line.split("(host pid ").nth(1) {
            let pid: i32 = rest
                .split(')')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("host pid in the driver's line");
            let init = ppid(pid);
            // SAFETY: kill(2) with integers: SIGKILL to the driver we spawned.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            break (pid, init);
        }
    };
    let _ = child.wait();
    let mut rest = String::new();
    while err.read_line(&mut rest).unwrap_or(0) > 0 {}
    said.push_str(&rest);
    assert!(
        !said.contains("every page of pid"),
        "the fill finished before the kill, so nothing was tested; driver said:\n{said}"
    );
    // The init kills the program when the driver is gone, and exits with
    // 128 + SIGKILL. (Left running on zero pages instead, the program might crash
    // by itself: another exit status; or run on: no exit.)
    let t = Instant::now();
    let status = loop {
        let mut st = 0;
        // SAFETY: waitpid(2) on our (adopted) child with a live status word.
        let r = unsafe { libc::waitpid(init_pid, &mut st, libc::WNOHANG) };
        if r == init_pid {
            break Some(st);
        }
        if r < 0 || t.elapsed() > Duration::from_secs(10) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let status = status.unwrap_or_else(|| {
        panic!("the namespace init (pid {init_pid}) did not end within 10 s of the driver's death")
    });
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 128 + libc::SIGKILL,
        "the namespace init ended with status {status:#x}, not 128 + SIGKILL: the program was not killed for its driver's death"
    );
    // The thread group leader turns zombie first; the listener closes when the
    // last thread is gone.
    let serving = || std::net::TcpStream::connect(&addr).is_ok();
    let t = Instant::now();
    while (alive(host_pid) || serving()) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !alive(host_pid),
        "the program (host pid {host_pid}) still runs 5 s after its driver died mid-fill"
    );
    assert!(!serving(), "something still serves {addr} 5 s later");

    // The same image, restored without interference, is whole.
    let restored: Restored = driver::restore_detached(&image, dir.path()).expect("second restore");
    let report = verify_preload(&addr, 256, Duration::from_secs(60)).unwrap_or_else(|e| {
        panic!(
            "preload check after the second restore: {e}\n{}",
            restored.stderr_tail()
        )
    });
    assert_eq!(report.keys, preload_count(256));
}
