//! `cs-driver run`, foreground `restore` and `inspect` on real processes: signals are
//! forwarded and exit statuses passed through; `run` traces from the start.
//!
//! What these do not prove: replication, or signals other than the forwarded set
//! (INT, TERM, HUP, QUIT, USR1, USR2).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cs_tests::driver::{self, cs, cs_ok};
use cs_tests::fixture::{
    fixture_bin, temp_dir, wait_until_accepting, FixtureError, GoToolchain, Service,
};

fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        if t.elapsed() > within {
            let _ = child.kill();
            panic!("process {} did not exit within {within:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn run_passes_the_exit_status_through() {
    let out = cs(&["run", "--", "sh", "-c", "exit 7"]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cs(&["run", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGTERM),
        "killed by a signal: 128 + signo"
    );
    let out = cs(&["run", "--", "/nonexistent/program"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/program") && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn run_traces_a_go_service_and_forwards_sigterm() {
    let mut child = Command::new(driver::driver())
        .args(["run", "--"])
        .arg(fixture_bin(GoToolchain::Go127, "kvstore"))
        .args(["-addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn cs-driver run");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("READY line");
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.first(), Some(&"READY"), "{line}");
    let (pid, addr) = (f[1], f[2]);
    wait_until_accepting(addr, Duration::from_secs(10))
        .expect("kvstore serves under cs-driver run");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let tracer = status
        .lines()
        .find(|l| l.starts_with("TracerPid:"))
        .unwrap_or_default();
    assert!(
        tracer.ends_with(&child.id().to_string()),
        "kvstore is not traced by the driver: {tracer}"
    );
    // SAFETY: kill(2) with integers.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = wait_exit(&mut child, Duration::from_secs(10));
    assert_eq!(
        st.code(),
        Some(0),
        "kvstore exits 0 on SIGTERM, and the driver passes that on"
    );
}

#[test]
fn foreground_restore_forwards_signals_and_status() {
    let dir = temp_dir("cs-fg-restore");
    let store = Service::start(
        &fixture_bin(GoToolchain::Go127, "kvstore"),
        &["-addr", "127.0.0.1:0"],
    )
    .expect("start kvstore");
    let addr = store.addr().to_string();
    let image = dir.path().join("kv.img");
    driver::dump(store.pid(), &image, false);
    drop(store);
    let mut child = Command::new(driver::driver())
        .args(["restore", image.to_str().expect("utf-8")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cs-driver restore");
    wait_until_accepting(&addr, Duration::from_secs(10)).expect("restored kvstore serves");
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the driver stays while the program runs"
    );
    // SAFETY: kill(2) with integers.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = wait_exit(&mut child, Duration::from_secs(10));
    assert_eq!(
        st.code(),
        Some(0),
        "the restored kvstore got SIGTERM and exited 0"
    );
}

#[test]
fn inspect_summarises_an_image() {
    let dir = temp_dir("cs-inspect");
    let store = Service::start(
        &fixture_bin(GoToolchain::Go127, "kvstore"),
        &["-addr", "127.0.0.1:0", "-preload-mib", "4"],
    )
    .expect("start kvstore");
    let image = dir.path().join("kv.img");
    driver::dump(store.pid(), &image, true);
    let out = cs_ok(&["inspect", "-v", image.to_str().expect("utf-8")]);
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "all checksums verified",
        "threads:",
        "vmas:",
        "reservation",
        "[vdso]",
        "pages:",
        "MPTCP listener",
        "epoll",
        "signals: handled",
    ] {
        assert!(
            text.contains(want),
            "inspect output lacks {want:?}:\n{text}"
        );
    }
    assert!(text.contains(&format!("pid {}", store.pid())), "{text}");
}

#[test]
fn restore_refuses_an_image_whose_executable_is_gone() {
    let dir = temp_dir("cs-missing-exe");
    let exe = dir.path().join("kvstore-copy");
    std::fs::copy(fixture_bin(GoToolchain::Go127, "kvstore"), &exe).expect("copy kvstore");
    // Another test thread may fork while the copy's write fd is open; its
    // child holds that fd until it execs, and exec of the copy then fails
    // with ETXTBSY for that short window. Retry only that error.
    let mut tries = 0;
    let store = loop {
        match Service::start(&exe, &["-addr", "127.0.0.1:0"]) {
            Err(FixtureError::Spawn { source, .. })
                if source.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 =>
            {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break other.expect("start the copy"),
        }
    };
    let addr = store.addr().to_string();
    let image = dir.path().join("kv.img");
    driver::dump(store.pid(), &image, false);
    drop(store);
    std::fs::remove_file(&exe).expect("remove the executable");
    let out = cs(&["restore", image.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kvstore-copy") && err.contains("mapped at 0x400000"),
        "{err}"
    );
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "nothing may have been started"
    );
}
