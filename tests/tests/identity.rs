//! Issue 7, item 5: a restore refuses an executable that is not the one the program
//! had mapped at the checkpoint, naming it, before anything is started.
//!
//! A kvstore runs from a copy of its binary; it is dumped (and killed); then the
//! copy is changed on disk and `cs-driver restore` must fail with the copy's path
//! and what differs, start no process, and never say "Bad address":
//! - replaced: another fixture binary (the lock server) copied over it;
//! - patched: one byte of its code flipped in place, the size kept and the mtime
//!   put back (only the content differs).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cs_tests::driver::{self, cs};
use cs_tests::fixture::{fixture_bin, temp_dir, FixtureError, GoToolchain, Service};

/// Starts `exe` (a fresh copy), retrying ETXTBSY: another test thread may fork while
/// the copy's write fd is open, and its child holds that fd until it execs.
fn start_copy(exe: &Path) -> Service {
    let mut tries = 0;
    loop {
        match Service::start(exe, &["-addr", "127.0.0.1:0"]) {
            Err(FixtureError::Spawn { source, .. })
                if source.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 =>
            {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break other.expect("start the copy"),
        }
    }
}

/// Runs `f` until it stops failing with ETXTBSY (the dumped program may take a
/// moment to be gone).
fn retry_busy<T>(mut f: impl FnMut() -> std::io::Result<T>) -> T {
    let mut tries = 0;
    loop {
        match f() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 250 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other.expect("writing the copied executable"),
        }
    }
}

/// Processes whose `/proc/PID/exe` is `exe`.
fn running(exe: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read_link(e.path().join("exe")).is_ok_and(|l| l == exe) {
            out.push(pid);
        }
    }
    out
}

/// Dumps a kvstore running from a copy; returns (dir, copy, image, address).
fn dumped_copy(name: &str) -> (tempfile::TempDir, PathBuf, PathBuf, String) {
    let dir = temp_dir(name);
    let exe = dir.path().join("kvstore-copy");
    std::fs::copy(fixture_bin(GoToolchain::Go127, "kvstore"), &exe).expect("copy kvstore");
    let store = start_copy(&exe);
    let addr = store.addr().to_string();
    let image = dir.path().join("kv.img");
    driver::dump(store.pid(), &image, false);
    drop(store);
    (dir, exe, image, addr)
}

/// `cs-driver restore IMAGE` must fail naming `exe` and `what`, leaving nothing.
/// (Detached, so that a restore that wrongly succeeds ends the command too.)
fn assert_refused(image: &Path, exe: &Path, addr: &str, what: &str) {
    let log = image.with_extension("out");
    let log = log.to_str().expect("utf-8");
    let out = cs(&[
        "restore",
        image.to_str().expect("utf-8"),
        "--detach",
        "--stdout",
        log,
        "--stderr",
        log,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        let pid: i32 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0);
        if pid > 0 {
            // SAFETY: kill(2) with integers, on the process this test restored.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        panic!("restore of a changed executable succeeded (pid {pid}):\n{err}");
    }
    assert!(
        err.contains(exe.to_str().expect("utf-8")),
        "the error does not name {}:\n{err}",
        exe.display()
    );
    assert!(
        err.contains(what),
        "the error does not say {what:?}:\n{err}"
    );
    assert!(
        err.contains("not the file the program had mapped"),
        "unclear error:\n{err}"
    );
    assert!(!err.contains("Bad address"), "{err}");
    assert!(
        running(exe).is_empty(),
        "a process runs {} after a refused restore",
        exe.display()
    );
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "something serves the dumped program's address after a refused restore"
    );
}

#[test]
fn restore_refuses_a_replaced_executable() {
    let (_dir, exe, image, addr) = dumped_copy("replaced-exe");
    let other = fixture_bin(GoToolchain::Go127, "lockserver");
    let before = std::fs::metadata(&exe).expect("stat").len();
    retry_busy(|| std::fs::copy(&other, &exe));
    assert_ne!(std::fs::metadata(&exe).expect("stat").len(), before);
    assert_refused(&image, &exe, &addr, "size");
}

#[test]
fn restore_refuses_a_patched_executable_with_its_size_and_mtime_kept() {
    let (_dir, exe, image, addr) = dumped_copy("patched-exe");
    let meta = std::fs::metadata(&exe).expect("stat");
    let mtime = meta.modified().expect("mtime");
    // 0x2000: inside .text of every Go fixture (text starts at file offset 0x1000
    // and is megabytes long).
    let f = retry_busy(|| {
        std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .open(&exe)
    });
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 0x2000).expect("read");
    b[0] ^= 0x01;
    f.write_all_at(&b, 0x2000).expect("patch");
    f.set_modified(mtime).expect("put the mtime back");
    drop(f);
    let after = std::fs::metadata(&exe).expect("stat");
    assert_eq!(after.len(), meta.len());
    assert_eq!(after.modified().expect("mtime"), mtime);
    assert_refused(&image, &exe, &addr, "content differs");
}

#[test]
fn restore_of_an_unchanged_copy_still_works() {
    let (dir, exe, image, addr) = dumped_copy("unchanged-exe");
    let restored = driver::restore_detached(&image, dir.path()).expect("restore");
    assert!(restored.alive(), "{}", restored.stderr_tail());
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/exe", restored.pid)).expect("exe"),
        exe
    );
    cs_tests::fixture::wait_until_accepting(&addr, Duration::from_secs(10)).expect("serving");
}

/// An image whose recorded vDSO function table is not this kernel's (here: one
/// bit of the recorded digest flipped, the image re-sealed) is refused before
/// anything starts: a Go program keeps its vDSO function addresses.
#[test]
fn restore_refuses_an_image_whose_vdso_functions_differ() {
    use cs_tests::image_edit::ImageFrames;
    let (_dir, exe, image, addr) = dumped_copy("vdso-digest");
    let ours = cs_driver::linux::vdso::digest(&cs_driver::linux::vdso::own().expect("own vDSO"));
    let bytes = std::fs::read(&image).expect("read image");
    let mut frames = ImageFrames::parse(&bytes).expect("parse");
    let i = frames.indices(core_format::FrameKind::MappedFiles)[0];
    let payload = &mut frames.frames[i].payload;
    let at = payload
        .windows(16)
        .position(|w| w == ours)
        .expect("the image records this kernel's vDSO digest");
    payload[at] ^= 0x01;
    std::fs::write(&image, frames.to_bytes().expect("re-seal")).expect("write");
    let out = cs(&["restore", image.to_str().expect("utf-8"), "--detach"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "restored:\n{err}");
    assert!(err.contains("vDSO's functions differ"), "{err}");
    assert!(running(&exe).is_empty(), "a process runs after the refusal");
    assert!(std::net::TcpStream::connect(&addr).is_err());
}
