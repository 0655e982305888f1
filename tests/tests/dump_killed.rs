//! A dump interrupted by SIGKILL of the driver leaves the program running and
//! serving (issue 4, acceptance item 6).
//!
//! kvstore (Go 1.27.3) runs with 256 MiB preloaded, so that a capture takes tens to
//! hundreds of milliseconds. One complete `dump --leave-running` first measures the
//! pause and shows the setup works. Then `cs-driver dump PID -o IMAGE --leave-running`
//! is started again and again and SIGKILLed at these points:
//! - fixed delays after the driver was spawned (0, 2, 5, 10, 20, 40 ms); the driver
//!   prefaults its staging buffer before it freezes, so these mostly land before the
//!   freeze;
//! - fixed delays after the driver was seen attached (the main thread's TracerPid
//!   set: 0, 0.5, 1, 2, 5, 10, 20, 40 ms): in the pre-copy's short stop and the
//!   pre-copy after it;
//! - fixed delays after the main thread was seen traced a second time, i.e. after
//!   the freeze that follows the pre-copy began (0, 0.5, 1, 2, 4 ms), inside the
//!   pause;
//! - the moment a thread is seen, while traced, in one of the syscalls the
//!   driver makes it run (`/proc/PID/task/PID/syscall`: number and instruction
//!   pointer): the pre-copy tracker's `userfaultfd` and `close` and the scratch
//!   `mmap` and `munmap`, all single syscalls at a parked futex waiter's own
//!   `syscall` instruction (any thread), and the `sigaltstack` query and the batched
//!   `rt_sigaction` queries in the scratch mapping (main thread). These are the windows where the
//!   driver has rewritten a thread's registers. Two tries each; a try that does not
//!   see its window kills the driver anyway (counted as a miss);
//! - eight seeded random delays in the first 150 ms after the first attach (seed
//!   printed; `CS_DUMP_KILL_SEED` sets it). The first attach is the pre-copy's short
//!   stop; most of these land while the pages are copied with the program running
//!   under write-protect tracking, some inside the freeze.
//!
//! Every interrupted dump uses `--leave-running`: the default mode kills the program
//! once the capture is done, so a SIGKILL landing after that point would make a dead
//! program the right outcome. With `--leave-running` the program must survive every
//! kill point, which is what is checked.
//!
//! After each kill: the driver died of the SIGKILL (or had finished: counted, not
//! failed); within 3 s every thread of the program is neither stopped ('t'/'T') nor
//! traced nor a zombie; it answers a GET of a preloaded key with the right value and
//! of a marker key. A driver killed between its scratch mmap and munmap leaves that
//! anonymous writable+executable mapping in the program (a known gap, see
//! docs/restore.md): such leaks are counted and printed, not failed, but the next
//! dump must remove them: after the final complete dump none may remain. The same
//! holds for a userfaultfd left by a kill between the pre-copy tracker's injected
//! `userfaultfd` and `close`. At the end
//! every preloaded value verifies and a complete dump of the program still works.
//!
//! What it does not prove: that a kill at *every* instant is harmless (the kill
//! points are sampled; the windows of the injected syscalls are short and only hit
//! when the poll sees them); the Go 1.19 toolchain; a program under load while it is
//! dumped (kvstore is idle); SIGKILL of the driver's default mode (deliberately out,
//! see above); the state of the program's memory beyond the preloaded values and
//! the marker; that a partial image left behind is refused (that is bad_images.rs).

use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cs_tests::check::preload::{preload_count, verify_preload};
use cs_tests::driver;
use cs_tests::fixture::{fixture_bin, temp_dir, GoToolchain, Service};
use cs_tests::procs::{
    alive, check_serving, crash_summary, kv_put, rwx_mappings, tracer, uffd_fds,
};

const PRELOAD_MIB: u64 = 256;
const MARKER: &str = "dump-killed-marker";

/// Where in a dump the driver is killed.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// This long after the driver was spawned.
    AfterSpawn(Duration),
    /// This long after the program's main thread was seen traced.
    AfterAttach(Duration),
    /// This long after the main thread was seen traced a second time: the
    /// freeze after the pre-copy (the first attach is the pre-copy's short stop).
    AfterFreeze(Duration),
    /// When the main thread is seen (while traced) in syscall `nr` with its
    /// instruction pointer in `Code`: the driver's injected code.
    InSyscall(u64, Code, &'static str),
}

impl std::fmt::Display for KillAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KillAt::AfterSpawn(d) => write!(f, "{d:?} after spawn"),
            KillAt::AfterAttach(d) => write!(f, "{d:?} after attach"),
            KillAt::AfterFreeze(d) => write!(f, "{d:?} after the freeze began"),
            KillAt::InSyscall(nr, code, name) => {
                write!(f, "in syscall {nr} run from {code:?} ({name})")
            }
        }
    }
}

/// Where the driver runs code in the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Code {
    /// A parked futex waiter's own `syscall` instruction in the program's text,
    /// where single injected syscalls run (tracker userfaultfd/close, scratch
    /// mmap/munmap); any thread.
    Site,
    /// Its scratch mapping, the only writable+executable one (trampolines, the
    /// batched signal-handler queries and their futex wait).
    Scratch,
}

/// What one interrupted dump did.
#[derive(Debug)]
struct Interrupted {
    /// From the spawn to the SIGKILL.
    at: Duration,
    /// The driver died of the SIGKILL (false: it had finished first).
    landed: bool,
    /// For [`KillAt::InSyscall`]: the syscall was seen before the kill.
    hit: bool,
    /// For [`KillAt::AfterAttach`]: the attach was seen.
    attached: bool,
    /// The driver's stderr, when it exited by itself.
    driver_said: String,
}

/// The syscall the main thread is stopped or blocked in and its instruction
/// pointer (`None` while it runs).
fn main_syscall(pid: u32) -> Option<(u64, u64)> {
    task_syscall(pid, pid)
}

fn task_syscall(pid: u32, tid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    let f: Vec<&str> = s.split_whitespace().collect();
    let nr = f.first()?.parse().ok()?;
    let pc = u64::from_str_radix(f.last()?.trim_start_matches("0x"), 16).ok()?;
    Some((nr, pc))
}

/// The syscall any thread is in: (nr, pc) of each task.
fn all_syscalls(pid: u32) -> Vec<(u64, u64)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|tid| task_syscall(pid, tid))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pc` lies in the `[vdso]` or in a writable+executable mapping.
fn pc_in(pid: u32, pc: u64, code: Code) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let Some((a, b)) = f.first().and_then(|r| r.split_once('-')) else {
                return false;
            };
            let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
                return false;
            };
            let wanted = match code {
                Code::Scratch => f.get(1) == Some(&"rwxp"),
                // The program's own text (a futex waiter's `syscall`).
                Code::Site => {
                    f.get(1) == Some(&"r-xp") && f.get(5).is_some_and(|p| p.starts_with('/'))
                }
            };
            wanted && (a..b).contains(&pc)
        })
}

fn spin_for(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

fn spawn_dump(pid: u32, image: &Path, log: &Path) -> Child {
    Command::new(driver::driver())
        .args([
            "dump",
            &pid.to_string(),
            "-o",
            image.to_str().expect("utf-8 path"),
            "--leave-running",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log).expect("driver log"))
        .spawn()
        .expect("spawn cs-driver dump")
}

/// A complete `--leave-running` dump (killed after `timeout`): Ok(the driver's
/// report) or Err(why).
fn complete_dump(pid: u32, image: &Path, log: &Path, timeout: Duration) -> Result<String, String> {
    let mut child = spawn_dump(pid, image, log);
    let t = Instant::now();
    let status = loop {
        match child.try_wait().expect("wait for cs-driver") {
            Some(s) => break s,
            None if t.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "did not finish in {timeout:?}: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                ));
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let said = std::fs::read_to_string(log).unwrap_or_default();
    if status.success() {
        Ok(said.trim().to_string())
    } else {
        Err(format!("{status}: {}", said.trim()))
    }
}

/// Starts a `--leave-running` dump of `pid` and SIGKILLs the driver at `at`.
fn interrupted_dump(pid: u32, image: &Path, log: &Path, at: KillAt) -> Interrupted {
    let mut child = spawn_dump(pid, image, log);
    let spawned = Instant::now();
    let running = |c: &mut Child| matches!(c.try_wait(), Ok(None));
    let (mut hit, mut attached) = (false, false);
    match at {
        KillAt::AfterSpawn(d) => spin_for(d),
        KillAt::AfterAttach(d) => {
            while running(&mut child) && spawned.elapsed() < Duration::from_secs(5) {
                if tracer(pid).is_some_and(|t| t != 0) {
                    attached = true;
                    break;
                }
            }
            spin_for(d);
        }
        KillAt::AfterFreeze(d) => {
            // Traced, untraced (the pre-copy runs), traced again.
            let traced = || tracer(pid).is_some_and(|t| t != 0);
            let mut phase = 0;
            while running(&mut child) && spawned.elapsed() < Duration::from_secs(5) {
                let t = traced();
                phase = match (phase, t) {
                    (0, true) => 1,
                    (1, false) => 2,
                    (2, true) => 3,
                    (p, _) => p,
                };
                if phase == 3 {
                    attached = true;
                    break;
                }
            }
            spin_for(d);
        }
        KillAt::InSyscall(nr, code, _) => {
            // Wait for the attach, then poll the main thread's syscall (one read per
            // round, to see the short windows). The injections come within
            // milliseconds of the freeze; give up 2 s after the attach.
            while running(&mut child) && spawned.elapsed() < Duration::from_secs(5) {
                if tracer(pid).is_some_and(|t| t != 0) {
                    attached = true;
                    break;
                }
            }
            let since = Instant::now();
            while attached && running(&mut child) && since.elapsed() < Duration::from_secs(2) {
                let seen = match code {
                    Code::Scratch => main_syscall(pid).into_iter().collect(),
                    Code::Site => all_syscalls(pid),
                };
                // Still traced and at the driver's code: its injection, not the
                // program's own call (Go calls mmap, futex, sigaltstack too).
                if seen.iter().any(|&(n, pc)| n == nr && pc_in(pid, pc, code)) {
                    hit = tracer(pid).is_some_and(|t| t != 0);
                    if hit {
                        break;
                    }
                }
            }
        }
    }
    let at = spawned.elapsed();
    let _ = child.kill();
    let status = child.wait().expect("wait for cs-driver");
    let landed = status.signal() == Some(libc::SIGKILL);
    Interrupted {
        at,
        landed,
        hit,
        attached,
        driver_said: if landed {
            String::new()
        } else {
            std::fs::read_to_string(log).unwrap_or_default()
        },
    }
}

/// xorshift64*: a seeded stream of kill delays without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn kill_points(seed: u64) -> Vec<KillAt> {
    let ms = |m: f64| Duration::from_secs_f64(m / 1000.0);
    let mut v: Vec<KillAt> = [0.0, 2.0, 5.0, 10.0, 20.0, 40.0]
        .into_iter()
        .map(|m| KillAt::AfterSpawn(ms(m)))
        .collect();
    v.extend(
        [0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0]
            .into_iter()
            .map(|m| KillAt::AfterAttach(ms(m))),
    );
    for _ in 0..2 {
        v.extend([
            KillAt::InSyscall(323, Code::Site, "userfaultfd for the pre-copy tracker"),
            KillAt::InSyscall(3, Code::Site, "close of the tracker's fd in the program"),
            KillAt::InSyscall(9, Code::Site, "mmap of the scratch page"),
            KillAt::InSyscall(131, Code::Scratch, "sigaltstack query, trampoline"),
            KillAt::InSyscall(13, Code::Scratch, "batched rt_sigaction queries"),
            KillAt::InSyscall(11, Code::Site, "munmap of the scratch page"),
        ]);
    }
    v.extend(
        [0.0, 0.5, 1.0, 2.0, 4.0]
            .into_iter()
            .map(|m| KillAt::AfterFreeze(ms(m))),
    );
    let mut rng = Rng(seed | 1);
    for _ in 0..8 {
        // The first attach is the pre-copy's short stop; the pre-copy then runs
        // (the program running, write-protected) for ~50-150 ms before the freeze.
        let us = rng.next() % 150_000;
        v.push(KillAt::AfterAttach(Duration::from_micros(us)));
    }
    v
}

#[test]
fn killed_dump_leaves_the_program_serving() {
    let started = Instant::now();
    let _ = driver::stub();
    let dir = temp_dir("dump-killed");
    let mut store = Service::start(
        &fixture_bin(GoToolchain::Go127, "kvstore"),
        &[
            "-addr",
            "127.0.0.1:0",
            "-preload-mib",
            &PRELOAD_MIB.to_string(),
        ],
    )
    .expect("start kvstore");
    let pid = store.pid();
    kv_put(store.addr(), MARKER, MARKER);
    let image = dir.path().join("kv.img");
    let log = dir.path().join("driver.stderr");
    let nkeys = preload_count(PRELOAD_MIB);

    // A complete dump first: the setup works, and how long the capture pauses.
    let full = Instant::now();
    let said = complete_dump(pid, &image, &log, Duration::from_secs(120)).unwrap_or_else(|e| {
        panic!(
            "a complete `dump --leave-running` fails, so no kill point can mean anything \
             (the driver needs ptrace over a process it did not start: root, or \
             kernel.yama.ptrace_scope = 0): {e}"
        )
    });
    eprintln!("complete dump in {:?}: {said}", full.elapsed());
    check_serving(store.pid(), store.addr(), 0, MARKER)
        .unwrap_or_else(|e| panic!("after a complete dump: {e}"));

    let seed = std::env::var("CS_DUMP_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_cafe_u64);
    eprintln!("random kill delays from seed {seed} (CS_DUMP_KILL_SEED)");
    let points = kill_points(seed);
    let rwx_at_start = rwx_mappings(pid);
    let uffd_at_start = uffd_fds(pid);
    let mut problems = Vec::new();
    let mut leaked: Vec<String> = Vec::new();
    let (mut landed, mut directed_hits, mut directed) = (0, 0, 0);
    for (i, at) in points.iter().enumerate() {
        let rwx_before = rwx_mappings(pid);
        let uffd_before = uffd_fds(pid);
        let r = interrupted_dump(pid, &image, &log, *at);
        landed += usize::from(r.landed);
        if let KillAt::InSyscall(..) = at {
            directed += 1;
            directed_hits += usize::from(r.hit);
        }
        let health = check_serving(pid, store.addr(), (i * 7919) % nkeys, MARKER);
        eprintln!(
            "kill {i:>2} {at}: SIGKILL at {:?} after spawn, {}{}{} -> {}",
            r.at,
            if r.landed {
                "landed"
            } else {
                "driver had finished"
            },
            if r.hit { ", in the syscall" } else { "" },
            if r.attached { ", after attach" } else { "" },
            match &health {
                Ok(t) => format!("serving (settled in {t:?})"),
                Err(_) => "NOT SERVING".to_string(),
            }
        );
        if !r.landed && !r.driver_said.contains("dumped pid") {
            problems.push(format!(
                "kill {i} {at}: the driver exited by itself without dumping: {}",
                r.driver_said.trim()
            ));
        }
        if let Err(e) = health {
            // Let a crashing program finish its report, then say how it ended.
            let t = Instant::now();
            let end = loop {
                match store.try_wait() {
                    Ok(Some(s)) => break format!("it exited ({s})"),
                    _ if t.elapsed() > Duration::from_secs(3) => {
                        break if alive(pid) {
                            "it is still running".to_string()
                        } else {
                            "it is dying".to_string()
                        }
                    }
                    _ => std::thread::sleep(Duration::from_millis(10)),
                }
            };
            problems.push(format!(
                "kill {i} {at} (SIGKILL {:?} after spawn, {}): {e}; {end}; its stderr \
                 says:\n{}",
                r.at,
                if r.hit {
                    "main thread seen in the injected syscall"
                } else {
                    "no syscall targeted or seen"
                },
                crash_summary(&store.stderr_tail(64 << 10))
            ));
            break; // the program is gone or wedged: later kill points say nothing
        }
        let rwx_after = rwx_mappings(pid);
        let new: Vec<&String> = rwx_after
            .iter()
            .filter(|m| !rwx_before.contains(m))
            .collect();
        // Known gap, documented in docs/restore.md: a driver killed between its
        // scratch mmap and munmap leaves that anonymous mapping behind (the thread
        // itself resumes intact through its rt_sigreturn fallback). Counted and
        // reported, not failed; a second leak in one run would still be a bug in
        // the bookkeeping below only if the program stopped serving.
        if !new.is_empty() {
            leaked.push(format!("kill {i} {at}: {new:?}"));
        }
        // The same kind of window: a kill between the tracker's injected
        // `userfaultfd` and `close` leaves that fd in the program (counted).
        let uffd_after = uffd_fds(pid);
        if uffd_after > uffd_before {
            leaked.push(format!(
                "kill {i} {at}: {} userfaultfd fd(s) left in the program",
                uffd_after - uffd_before
            ));
        }
    }
    if problems.is_empty() {
        if let Err(e) = verify_preload(store.addr(), PRELOAD_MIB, Duration::from_secs(60)) {
            problems.push(format!("after all kills, the preloaded values: {e}"));
        }
        if let Err(e) = complete_dump(pid, &image, &log, Duration::from_secs(120)) {
            problems.push(format!("after all kills, a complete dump fails: {e}"));
        } else if let Err(e) = check_serving(pid, store.addr(), nkeys - 1, MARKER) {
            problems.push(format!("after the final complete dump: {e}"));
        }
        // A dump removes the scratch mappings earlier (killed) drivers left.
        let stale: Vec<String> = rwx_mappings(pid)
            .into_iter()
            .filter(|m| !rwx_at_start.contains(m))
            .collect();
        if !stale.is_empty() {
            problems.push(format!(
                "after the final complete dump, scratch mappings of killed drivers are still \
                 there: {stale:?}"
            ));
        }
        // And the userfaultfds a killed tracker left (they would make the next
        // image unrestorable: a uffd is a refused fd kind).
        let uffds = uffd_fds(pid);
        if uffds > uffd_at_start {
            problems.push(format!(
                "after the final complete dump, {} userfaultfd(s) of killed drivers are still \
                 open in the program",
                uffds - uffd_at_start
            ));
        }
    }
    eprintln!(
        "{} kill points, {landed} landed during a dump, {directed_hits} of {directed} \
         injected-syscall windows seen, {} left the driver's scratch mapping or tracker fd behind; {:?} in all",
        points.len(),
        leaked.len(),
        started.elapsed()
    );
    for l in &leaked {
        eprintln!("  left behind: {l}");
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        landed * 2 >= points.len(),
        "only {landed} of {} kills landed while the driver was running: the dump is too \
         fast here for these kill points to test anything",
        points.len()
    );
    assert!(
        directed_hits > 0,
        "none of the {directed} injected-syscall windows was seen (is \
         /proc/PID/task/PID/syscall readable here?), so the riskiest kill points were not tested"
    );
}
