//! Issue 7, item 6: a program's credentials come back with it.
//!
//! A kvstore started by root as uid 1001 / gid 1001 with supplementary groups is
//! dumped and restored by root; the restored program's `/proc/PID/status` and every
//! `/proc/PID/task/TID/status` must show the same Uid, Gid, Groups, CapInh, CapPrm,
//! CapEff, CapBnd, CapAmb, NoNewPrivs, Seccomp and Seccomp_filters lines as the
//! original's, and the store still serves. A second program also holds an ambient
//! capability (cap_net_bind_service, so also permitted, effective and inheritable),
//! a reduced bounding set, no_new_privs and a securebit (the restorer reads the
//! securebits back itself and fails if they differ).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cs_tests::driver;
use cs_tests::fixture::{fixture_bin, run_client, temp_dir, FixtureError, GoToolchain, Service};

const UID: u32 = 1001;
const GID: u32 = 1001;
const GROUPS: [libc::gid_t; 3] = [1001, 2001, 2002];
const CREDS: [&str; 11] = [
    "Uid",
    "Gid",
    "Groups",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
    "Seccomp",
    "Seccomp_filters",
];

const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_SYS_BOOT: libc::c_ulong = 22;
const SECBIT_NOROOT: libc::c_ulong = 1;

/// The credential lines of one status file.
fn cred_lines(status_path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(status_path)
        .unwrap_or_else(|e| panic!("{}: {e}", status_path.display()));
    let lines: Vec<String> = text
        .lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(k, _)| CREDS.contains(&k.trim()))
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        lines.len(),
        CREDS.len(),
        "{}: {text}",
        status_path.display()
    );
    lines
}

/// The process's lines, then every task's (all must be alike; returned once).
fn creds_of(pid: u32) -> Vec<String> {
    let proc_lines = cred_lines(Path::new(&format!("/proc/{pid}/status")));
    let mut tasks = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .flatten()
    {
        let t = cred_lines(&e.path().join("status"));
        assert_eq!(t, proc_lines, "task {:?} of {pid}", e.file_name());
        tasks += 1;
    }
    assert!(tasks > 1, "a Go program has several threads");
    proc_lines
}

fn kv(addr: &str, cmd: &str) -> String {
    let run = run_client(
        &fixture_bin(GoToolchain::Go127, "kvclient"),
        &["-addr", addr, "-cmd", cmd],
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("kvclient -cmd {cmd:?}: {e}"));
    run.assert_success();
    run.stdout.trim().to_string()
}

/// What the child does before exec, as root, to become uid 1001.
#[derive(Clone, Copy, PartialEq)]
enum Setup {
    Plain,
    /// Plus an ambient cap_net_bind_service, bounding set without cap_sys_boot,
    /// SECBIT_NOROOT and no_new_privs.
    Privileged,
    /// Plus no_new_privs and an allow-everything seccomp filter.
    Seccomp,
}

/// The child side (async-signal-safe syscalls only).
fn become_user(setup: Setup) -> std::io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: plain syscalls on constants, a static array and live locals (the
    // seccomp program), in the forked child.
    unsafe {
        check(libc::setgroups(GROUPS.len(), GROUPS.as_ptr()))?;
        check(libc::setresgid(GID, GID, GID))?;
        if setup == Setup::Privileged {
            check(libc::prctl(libc::PR_CAPBSET_DROP, CAP_SYS_BOOT, 0, 0, 0))?;
            check(libc::prctl(libc::PR_SET_SECUREBITS, SECBIT_NOROOT, 0, 0, 0))?;
            check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0))?;
        }
        check(libc::setresuid(UID, UID, UID))?;
        if setup == Setup::Privileged {
            // Version 3 header; effective, permitted, inheritable per 32-bit half.
            let hdr: [u32; 2] = [0x2008_0522, 0];
            let bit = 1u32 << CAP_NET_BIND_SERVICE;
            let data: [u32; 6] = [bit, bit, bit, 0, 0, 0];
            check(libc::syscall(libc::SYS_capset, hdr.as_ptr(), data.as_ptr()) as libc::c_int)?;
            check(libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                CAP_NET_BIND_SERVICE as libc::c_ulong,
                0,
                0,
            ))?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        }
        if setup == Setup::Seccomp {
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            // One instruction: BPF_RET | BPF_K, SECCOMP_RET_ALLOW.
            let allow = [libc::sock_filter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: 0x7fff_0000,
            }];
            let prog = libc::sock_fprog {
                len: 1,
                filter: allow.as_ptr() as *mut libc::sock_filter,
            };
            check(libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &prog as *const libc::sock_fprog as libc::c_ulong,
                0,
                0,
            ))?;
        }
    }
    Ok(())
}

fn start_as_user(exe: &Path, setup: Setup) -> Service {
    let mut tries = 0;
    loop {
        let mut cmd = Command::new(exe);
        cmd.args(["-addr", "127.0.0.1:0", "-preload-mib", "8"]);
        cmd.current_dir("/");
        // SAFETY: the closure only makes async-signal-safe syscalls.
        unsafe { cmd.pre_exec(move || become_user(setup)) };
        match Service::spawn(cmd, Service::READY_TIMEOUT) {
            Err(FixtureError::Spawn { source, .. })
                if source.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 =>
            {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break other.expect("start kvstore as uid 1001"),
        }
    }
}

/// A dumped kvstore of `setup`: (dir, its executable, image, address, credential lines).
fn dumped(setup: Setup) -> (tempfile::TempDir, PathBuf, PathBuf, String, Vec<String>) {
    let dir = temp_dir("creds");
    // Reachable and executable by uid 1001.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let exe = dir.path().join("kvstore");
    std::fs::copy(fixture_bin(GoToolchain::Go127, "kvstore"), &exe).expect("copy kvstore");
    let store = start_as_user(&exe, setup);
    let addr = store.addr().to_string();
    let pid = store.pid();
    kv(&addr, "PUT who uid-1001");
    let before = creds_of(pid);
    assert!(
        before[0].starts_with("Uid: 1001 1001 1001 1001"),
        "{before:?}"
    );
    assert!(
        before[2].contains("2001") && before[2].contains("2002"),
        "{before:?}"
    );
    if setup == Setup::Privileged {
        assert!(
            before.contains(&"CapAmb: 0000000000000400".to_string()),
            "{before:?}"
        );
        assert!(before.contains(&"NoNewPrivs: 1".to_string()), "{before:?}");
    }
    let image = dir.path().join("kv.img");
    driver::dump(pid, &image, false);
    drop(store);
    (dir, exe, image, addr, before)
}

fn round_trip(setup: Setup) {
    let (dir, _exe, image, addr, before) = dumped(setup);
    let restored = driver::restore_detached(&image, dir.path()).expect("restore");
    let after = creds_of(restored.pid);
    assert_eq!(after, before, "credentials differ after the restore");
    assert_eq!(
        kv(&addr, "GET who"),
        "uid-1001",
        "{}",
        restored.stderr_tail()
    );
    kv(&addr, "PUT again yes");
    assert_eq!(kv(&addr, "GET again"), "yes");
    // Still the same after it ran for a while (no thread changed back).
    assert_eq!(creds_of(restored.pid), before);
}

#[test]
fn a_uid_1001_program_comes_back_with_its_credentials() {
    round_trip(Setup::Plain);
}

#[test]
fn ambient_capabilities_bounding_set_securebits_and_no_new_privs_come_back() {
    round_trip(Setup::Privileged);
}

/// Runs `cs-driver restore IMAGE --detach` with `limit` applied to the driver first;
/// it must fail saying `why`, and nothing may have been started.
fn assert_refused(setup: Setup, limit: fn() -> std::io::Result<()>, why: &str) {
    let (dir, exe, image, addr, _) = dumped(setup);
    let log = dir.path().join("restored.log");
    let mut cmd = Command::new(driver::driver());
    cmd.arg("restore")
        .arg(&image)
        .arg("--detach")
        .arg("--stdout")
        .arg(&log)
        .arg("--stderr")
        .arg(&log);
    // SAFETY: the closure only makes async-signal-safe syscalls.
    unsafe { cmd.pre_exec(limit) };
    let out = cmd.output().expect("spawn cs-driver");
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        let pid: i32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        if pid > 0 {
            // SAFETY: kill(2) with integers, on the process this test restored.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        panic!("the restore should have been refused:\n{err}");
    }
    assert!(
        err.contains("cannot give the program its credentials back") && err.contains(why),
        "unclear refusal (want {why:?}):\n{err}"
    );
    eprintln!("refused as it should be: {}", err.trim());
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "something serves {addr}"
    );
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        assert!(
            std::fs::read_link(e.path().join("exe")).map_or(true, |l| l != exe),
            "process {:?} runs the program after a refused restore",
            e.file_name()
        );
    }
}

#[test]
fn a_restorer_without_the_capability_in_its_bounding_set_refuses() {
    fn limit() -> std::io::Result<()> {
        // SAFETY: prctl with integers.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAPBSET_DROP,
                CAP_NET_BIND_SERVICE as libc::c_ulong,
                0,
                0,
                0,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    assert_refused(Setup::Privileged, limit, "cap_net_bind_service");
}

#[test]
fn a_restorer_with_no_new_privs_refuses_a_program_without_it() {
    fn limit() -> std::io::Result<()> {
        // SAFETY: prctl with integers.
        let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    assert_refused(Setup::Plain, limit, "no_new_privs");
}

#[test]
fn a_program_under_seccomp_is_refused_by_dump_and_left_running() {
    // Restore refuses seccomp (filters are not captured), so dump refuses it first
    // and never kills such a program.
    let dir = temp_dir("creds-seccomp");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let exe = dir.path().join("kvstore");
    std::fs::copy(fixture_bin(GoToolchain::Go127, "kvstore"), &exe).expect("copy kvstore");
    let store = start_as_user(&exe, Setup::Seccomp);
    let addr = store.addr().to_string();
    kv(&addr, "PUT still here");
    let image = dir.path().join("kv.img");
    let out = driver::cs(&[
        "dump",
        &store.pid().to_string(),
        "-o",
        image.to_str().expect("utf-8"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "dump of a seccomp program succeeded:\n{err}"
    );
    assert!(err.contains("seccomp"), "{err}");
    assert!(!image.exists(), "an image was left");
    assert_eq!(
        kv(&addr, "GET still"),
        "here",
        "the program must still serve"
    );
}
