//! `dump` refuses, before it touches the program, what restore could not bring
//! back (issue 7's rule "never kill what cannot be restored"; issue 10/11 list the
//! kinds). One Python program holds one of each kind the driver does not restore
//! yet: a UDP socket, a timerfd, an inotify instance, a memfd, a directory fd, a
//! file deleted while open, a shared anonymous mapping and a child process. The
//! dump (kill mode) must fail naming every one of them in one message, and the
//! program must be untouched: alive, not stopped or traced, nothing of the driver
//! left in it, and still able to answer on its stdin and exit normally.
//!
//! Does not prove: that every kind a program can hold is classified (issue 11's
//! conformance suite is the place for that); the refusal inside the freeze (when
//! the program opens something between the check and the freeze), which uses the
//! same classification.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use cs_tests::driver;
use cs_tests::fixture::temp_dir;
use cs_tests::procs::{alive, rwx_mappings, tracer, uffd_fds, unhealthy_threads};

const HOLDER: &str = r#"
import ctypes, mmap, os, socket, subprocess, sys, tempfile
libc = ctypes.CDLL(None, use_errno=True)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", 0))
tfd = libc.timerfd_create(1, 0)
ino = libc.inotify_init1(0)
mfd = os.memfd_create("cs-refuse")
dfd = os.open(tempfile.gettempdir(), os.O_RDONLY)
path = tempfile.mktemp(prefix="cs-refuse-")
gone = open(path, "w"); os.unlink(path)
shm = mmap.mmap(-1, 8192)
shm[0:5] = b"hello"
child = subprocess.Popen(["sleep", "300"])
rp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
rp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
rp.bind(("127.0.0.1", 0)); rp.listen(8)
class sigevent(ctypes.Structure):
    _fields_ = [("value", ctypes.c_void_p), ("signo", ctypes.c_int), ("notify", ctypes.c_int), ("pad", ctypes.c_byte * 48)]
ev = sigevent(None, 0, 1, (ctypes.c_byte * 48)())  # SIGEV_NONE
tid = ctypes.c_void_p()
assert libc.timer_create(1, ctypes.byref(ev), ctypes.byref(tid)) == 0
assert min(tfd, ino) >= 0
print("READY", os.getpid(), tfd, ino, mfd, dfd, gone.fileno(), udp.fileno(), child.pid, rp.fileno(), flush=True)
for line in sys.stdin:
    if line.strip() == "exit":
        child.kill(); child.wait()
        print("BYE", flush=True)
        sys.exit(0)
"#;

#[test]
fn dump_refuses_what_restore_cannot_bring_back_and_leaves_the_program_untouched() {
    let dir = temp_dir("refuse");
    let mut prog = Command::new("python3")
        .args(["-c", HOLDER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 is needed for this test (Debian's python3 package)");
    let mut out = BufReader::new(prog.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.first(), Some(&"READY"), "holder said {line:?}");
    let n = |i: usize| f[i].parse::<u32>().unwrap();
    let (pid, tfd, ino, mfd, dfd, gone, udp, child) =
        (n(1), n(2), n(3), n(4), n(5), n(6), n(7), n(8));
    let reuseport = n(9);
    let (rwx, uffds) = (rwx_mappings(pid), uffd_fds(pid));

    let image = dir.path().join("holder.img");
    let o = driver::cs(&["dump", &pid.to_string(), "-o", image.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "the dump succeeded: {err}");
    eprintln!("{err}");
    let expected = [
        format!("fd {udp}: inet socket of type 2"),
        format!("fd {tfd}: anon_inode:[timerfd]"),
        format!("fd {ino}: anon_inode:inotify"),
        format!("fd {mfd}: /memfd:cs-refuse (deleted)"),
        format!("fd {dfd}: /"),
        format!("fd {gone}: /"),
        "shared memory that is not a file mapping".to_string(),
        format!("child process {child} (sleep)"),
        format!("fd {reuseport}: TCP listener with SO_REUSEPORT"),
        "(timer_create)".to_string(),
        "cannot restore yet, so it was not dumped".to_string(),
    ];
    for e in &expected {
        assert!(
            err.contains(e.as_str()),
            "the refusal does not name {e:?}:\n{err}"
        );
    }
    assert!(!image.exists(), "an image was written");
    assert!(alive(pid), "the program died");
    assert_eq!(
        unhealthy_threads(pid),
        Some(vec![]),
        "threads stopped or traced"
    );
    assert_eq!(tracer(pid), Some(0));
    assert_eq!(
        rwx_mappings(pid),
        rwx,
        "the driver's scratch was left in it"
    );
    assert_eq!(uffd_fds(pid), uffds, "a userfaultfd was left in it");

    let mut stdin = prog.stdin.take().unwrap();
    writeln!(stdin, "exit").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "BYE", "the program no longer answers");
    let t = std::time::Instant::now();
    while prog.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(prog.wait().unwrap().code(), Some(0));
}
