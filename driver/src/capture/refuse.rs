//! Never kill what cannot be restored: the checks a dump makes before it freezes
//! the program, and again on what it captured before it commits and kills.
//!
//! Everything `restore` would refuse is refused here first, all of it in one
//! message (a user fixing one item at a time would otherwise dump again and
//! again), while the program has not been touched: its fds are classified the
//! way the capture classifies them (`pidfd_getfd` copies; nothing in the program
//! changes), its mappings and threads counted against the stub's limits, its
//! children named (the dump captures one process; a child would be left running,
//! unfrozen). The same checks run on the capture itself, because the program may
//! have opened something between the check and the freeze; a refusal there
//! resumes it unchanged (docs/guarantees.md).

use std::os::fd::RawFd;

use crate::capture::fds::{self, FdCapture, FdKind};
use crate::capture::inject::Injector;
use crate::capture::{Capture, VmaKind};
use crate::error::CaptureError;
use crate::linux::procfs::MapEntry;
use crate::linux::sys::UserRegs;

/// Descriptors restore cannot recreate, one line each. A tracker userfaultfd a
/// killed driver left is not one of them: the dump closes it in the freeze.
fn unrestorable_fds(pid: i32, fds: &[FdCapture]) -> Vec<String> {
    fds.iter()
        .filter(|f| !crate::capture::is_stale_tracker(pid, f.fd))
        .filter_map(|f| match &f.kind {
            FdKind::Other { what } => Some(format!(
                "fd {}: {} (a kind restore cannot recreate yet)",
                f.fd,
                String::from_utf8_lossy(what)
            )),
            _ => None,
        })
        .collect()
}

/// The program's child processes: (pid, comm).
pub fn children(pid: i32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for c in list
            .split_whitespace()
            .filter_map(|c| c.parse::<i32>().ok())
        {
            let comm = std::fs::read_to_string(format!("/proc/{c}/comm")).unwrap_or_default();
            out.push((c, comm.trim().to_string()));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// POSIX timers (`timer_create`), listed in `/proc/PID/timers`: not restored yet,
/// and a restored program would find them gone (`timer_gettime`: EINVAL).
fn posix_timers(pid: i32) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/timers")).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("ID:"))
        .map(|id| format!("POSIX timer {} (timer_create)", id.trim()))
        .collect()
}

/// How a shared mapping that is not a file's is named in a refusal.
pub fn shared_memory(m: &MapEntry) -> String {
    format!(
        "shared memory that is not a file mapping at {:#x}-{:#x} ({})",
        m.start,
        m.end,
        if m.name.is_empty() {
            "anonymous"
        } else {
            &m.name
        }
    )
}

fn mapping_items(maps: &[MapEntry]) -> Vec<String> {
    let mut items = Vec::new();
    if maps.len() > restore_stub::MAX_VMAS {
        items.push(format!(
            "{} mappings: the restore stub handles at most {}",
            maps.len(),
            restore_stub::MAX_VMAS
        ));
    }
    for m in maps {
        let file = m.name.starts_with('/') && m.inode != 0;
        // MAP_SHARED|MAP_ANONYMOUS shows as a deleted /dev/zero; SysV segments too.
        let shmem = m.name == "/dev/zero (deleted)" || m.name.starts_with("/SYSV");
        if m.shared && (shmem || (!file && !m.name.starts_with('['))) {
            items.push(shared_memory(m));
        } else if file && m.name.ends_with(" (deleted)") {
            items.push(format!(
                "mapping {:#x}-{:#x} of a file deleted since it was mapped: {}",
                m.start, m.end, m.name
            ));
        }
        items.extend(mapping_state(m));
    }
    items
}

/// State of a mapping that the image does not carry (smaps VmFlags and Rss,
/// read before the freeze): restore would bring the mapping back without it.
fn mapping_state(m: &MapEntry) -> Vec<String> {
    let at = |what: &str| format!("{what} at {:#x}-{:#x} {}", m.start, m.end, m.name);
    let mut items = Vec::new();
    if !m.read && !m.shared && m.rss_kb > 0 {
        // The capture stores readable memory only; these pages would come back zero.
        items.push(at(&format!(
            "{} KiB of pages holding data under PROT_NONE",
            m.rss_kb
        )));
    }
    if m.has_flag("dc") {
        items.push(at("MADV_DONTFORK (VmFlags dc), not carried"));
    }
    if m.has_flag("lo") {
        items.push(at("mlock'ed memory (VmFlags lo), not carried"));
    }
    let file = m.name.starts_with('/') && m.inode != 0;
    if file && m.shared && !m.write && m.has_flag("mw") {
        // Restore opens the file for what the mapping's protection needs now
        // (read-only), so a later mprotect(PROT_WRITE) would fail with EACCES.
        items.push(at(
            "shared file mapping made read-only from a file opened for writing (a later \
             mprotect(PROT_WRITE) would fail after restore)",
        ));
    }
    items
}

/// Threads other than the main one with a robust futex list: pthreads of glibc
/// or musl, which also registered a clear-child-tid address. Restore gives
/// neither back yet, so joining such a thread would hang and a robust mutex it
/// holds would never report its owner's death. (The main thread's registration
/// matters only to other threads, which this refuses.)
fn robust_threads(pid: i32, tids: impl Iterator<Item = i32>) -> Vec<String> {
    tids.filter(|&t| t != pid)
        .filter_map(|t| {
            let mut head: usize = 0;
            let mut len: usize = 0;
            // SAFETY: get_robust_list writes one pointer and one size into the two
            // live locals passed.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_get_robust_list,
                    t,
                    &mut head as *mut usize,
                    &mut len as *mut usize,
                )
            };
            (rc == 0 && head != 0).then(|| {
                format!(
                    "thread {t} has a robust futex list and a clear-child-tid address (a \
                     pthread): restore does not register them again yet, so pthread_join on it \
                     would hang"
                )
            })
        })
        .collect()
}

/// Signals pending while blocked (`/proc` SigPnd of a thread, ShdPnd of the
/// process): the image does not carry them, the restored program would never
/// receive them. Unblocked pending signals are being delivered and are not
/// counted. Checked before the freeze only, and only what stays pending over
/// 20 ms: a signal can be pending and blocked for an instant (Go blocks every
/// signal around `clone`, for one), and a dump must not fail on that; one
/// blocked for good stays. (Inside the freeze the same instant would end a
/// checkpoint session; a signal that arrives after this check is in the same
/// place as one arriving during the freeze: not carried.)
fn pending_signals(pid: i32, tids: &[i32]) -> Vec<String> {
    let mut pending = pending_blocked(pid, tids);
    for _ in 0..2 {
        if pending.values().all(|set| *set == 0) {
            return Vec::new();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        let again = pending_blocked(pid, tids);
        for (who, set) in pending.iter_mut() {
            *set &= again.get(who).copied().unwrap_or(0);
        }
    }
    let names = |set: u64| -> String {
        (1..=64)
            .filter(|s| set & (1u64 << (s - 1)) != 0)
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    pending
        .into_iter()
        .filter(|(_, set)| *set != 0)
        .map(|(who, set)| match who {
            0 => format!(
                "process-wide pending signal(s) {} (blocked in every thread): not carried",
                names(set)
            ),
            t => format!(
                "thread {t} has pending signal(s) {} (blocked): not carried",
                names(set)
            ),
        })
        .collect()
}

/// Pending and blocked signal sets: by tid, and the process's under key 0.
fn pending_blocked(pid: i32, tids: &[i32]) -> std::collections::BTreeMap<i32, u64> {
    let field = |path: &str, name: &str| -> u64 {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let mut out = std::collections::BTreeMap::new();
    let mut blocked_by_all = u64::MAX;
    for &t in tids {
        let path = format!("/proc/{pid}/task/{t}/status");
        let blocked = field(&path, "SigBlk:");
        blocked_by_all &= blocked;
        out.insert(t, field(&path, "SigPnd:") & blocked);
    }
    out.insert(
        0,
        field(&format!("/proc/{pid}/status"), "ShdPnd:") & blocked_by_all,
    );
    out
}

/// What is wrong across fds: two fds sharing one open file description (a
/// `dup`), which restore would open separately (offsets and flags would no
/// longer be shared), file locks held (restore does not take them again), and,
/// when `frozen`, epoll registrations whose fd number now names something else
/// (while the program runs, an fd closed and reused between the two reads
/// would look the same).
fn fd_relations(pid: i32, fds: &[FdCapture], frozen: bool) -> Vec<String> {
    let mut items = Vec::new();
    let fdinfo =
        |fd: i32| std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
    let link = |fd: i32| std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok();
    // Shared descriptions: only fds with the same link target can share one.
    let mut by_target: std::collections::BTreeMap<std::path::PathBuf, Vec<&FdCapture>> =
        Default::default();
    for f in fds.iter().filter(|f| f.fd > 2) {
        if let Some(l) = link(f.fd) {
            by_target.entry(l).or_default().push(f);
        }
    }
    for group in by_target.values().filter(|g| g.len() > 1) {
        for (i, a) in group.iter().enumerate() {
            for b in &group[i + 1..] {
                let same = same_description(pid, a.fd, b.fd);
                let pipe_end = |f: &FdCapture| match &f.kind {
                    FdKind::Pipe { id, write_end, .. } => Some((*id, *write_end)),
                    _ => None,
                };
                match (pipe_end(a), pipe_end(b)) {
                    // Restore makes one description per pipe end and dups it.
                    (Some(x), Some(y)) if x == y => {
                        if same == Some(false) {
                            items.push(format!(
                                "fds {} and {} are one end of one pipe opened twice: restore \
                                 would make them share one open file description",
                                a.fd, b.fd
                            ));
                        }
                    }
                    _ => {
                        if same == Some(true) {
                            items.push(format!(
                                "fds {} and {} share one open file description (dup): restore \
                                 would open them separately, so their offset and flags would no \
                                 longer be shared",
                                a.fd, b.fd
                            ));
                        }
                    }
                }
            }
        }
    }
    for f in fds {
        let info = fdinfo(f.fd);
        let locks = info.lines().filter(|l| l.starts_with("lock:")).count();
        if locks > 0 {
            items.push(format!(
                "fd {} holds {locks} file lock(s) (flock, POSIX or OFD): restore does not take \
                 them again",
                f.fd
            ));
        }
        if let (FdKind::Epoll { .. }, true) = (&f.kind, frozen) {
            let held = fds::held_inodes(pid);
            for l in info.lines().filter(|l| l.starts_with("tfd:")) {
                let toks: Vec<&str> = l.split_whitespace().collect();
                let after = |name: &str| {
                    toks.iter()
                        .position(|t| *t == name)
                        .and_then(|p| toks.get(p + 1).copied())
                };
                // `ino:40f` is one token, unlike `tfd:        4`.
                let ino = toks
                    .iter()
                    .find_map(|t| t.strip_prefix("ino:"))
                    .and_then(|v| u64::from_str_radix(v, 16).ok());
                let (Some(tfd), Some(ino)) =
                    (after("tfd:").and_then(|v| v.parse::<i32>().ok()), ino)
                else {
                    continue;
                };
                use std::os::unix::fs::MetadataExt;
                let now = std::fs::metadata(format!("/proc/{pid}/fd/{tfd}")).map(|m| m.ino());
                // A file no fd holds any more was left out of the capture
                // (`fds::live_epoll_entries`): the kernel drops its registration
                // with the file's last reference.
                if now.as_ref().ok() != Some(&ino) && held.contains(&ino) {
                    items.push(format!(
                        "fd {}: epoll set registers fd {tfd}, which is now closed or another \
                         file (it was registered and then dup'ed and closed): restore would \
                         register the wrong file",
                        f.fd
                    ));
                }
            }
        }
    }
    items
}

/// Process attributes the image does not carry, which a restored program
/// inherits from the restorer instead: each thread's nice value, CPU affinity,
/// scheduling policy and I/O priority, the process's `oom_score_adj`,
/// personality, timer slack and THP_enabled (PR_SET_THP_DISABLE). Refused where the
/// program's differ from this driver's own (a restore run like this dump gives
/// the program the driver's).
fn inherited_attributes(pid: i32, tids: &[i32]) -> Vec<String> {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let nice = |stat: &str| -> Option<String> {
        // Field 19 of stat, the 17th after the `)` that ends comm.
        stat.rsplit(')')
            .next()?
            .split_whitespace()
            .nth(16)
            .map(str::to_string)
    };
    let affinity = |status: &str| -> Option<String> {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|v| v.trim().to_string())
    };
    // Fields 40 and 41 of stat: rt_priority and policy.
    let policy = |stat: &str| -> Option<String> {
        let f: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
        Some(format!("{}/{}", f.get(38)?, f.get(37)?))
    };
    let ioprio = |tid: i32| -> i64 {
        const IOPRIO_WHO_PROCESS: i64 = 1;
        // SAFETY: ioprio_get takes integers only.
        unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid) }
    };
    let my_stat = read("/proc/thread-self/stat");
    let my_nice = nice(&my_stat);
    let my_policy = policy(&my_stat);
    let my_cpus = affinity(&read("/proc/thread-self/status"));
    let my_ioprio = ioprio(0);
    let mut items = Vec::new();
    for &t in tids {
        let stat = read(&format!("/proc/{pid}/task/{t}/stat"));
        let p = policy(&stat);
        if p.is_some() && p != my_policy {
            items.push(format!(
                "thread {t} has scheduling policy/priority {} (the restored program would get {}): not carried",
                p.unwrap_or_default(),
                my_policy.clone().unwrap_or_default()
            ));
        }
        let io = ioprio(t);
        if io >= 0 && io != my_ioprio {
            items.push(format!(
                "thread {t} has I/O priority {io:#x} (the restored program would get \
                 {my_ioprio:#x}): not carried"
            ));
        }
        let n = nice(&read(&format!("/proc/{pid}/task/{t}/stat")));
        if n.is_some() && n != my_nice {
            items.push(format!(
                "thread {t} runs at nice {} (the restored program would get {}): not carried",
                n.unwrap_or_default(),
                my_nice.clone().unwrap_or_default()
            ));
        }
        let c = affinity(&read(&format!("/proc/{pid}/task/{t}/status")));
        if c.is_some() && c != my_cpus {
            items.push(format!(
                "thread {t} has CPU affinity {} (the restored program would get {}): not carried",
                c.unwrap_or_default(),
                my_cpus.clone().unwrap_or_default()
            ));
        }
    }
    let thp = |status: &str| -> Option<String> {
        status
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:"))
            .map(|v| v.trim().to_string())
    };
    let (theirs, mine) = (
        thp(&read(&format!("/proc/{pid}/status"))),
        thp(&read("/proc/self/status")),
    );
    if theirs.is_some() && theirs != mine {
        items.push(format!(
            "THP_enabled {} (PR_SET_THP_DISABLE; the restored program would get {}): not carried",
            theirs.unwrap_or_default(),
            mine.unwrap_or_default()
        ));
    }
    for (file, what) in [
        ("oom_score_adj", "oom_score_adj"),
        ("personality", "personality"),
        ("timerslack_ns", "timer slack (ns)"),
    ] {
        let theirs = read(&format!("/proc/{pid}/{file}"));
        let mine = read(&format!("/proc/self/{file}"));
        if theirs.trim() != mine.trim() && !theirs.is_empty() {
            items.push(format!(
                "{what} {} (the restored program would get {}): not carried",
                theirs.trim(),
                mine.trim()
            ));
        }
    }
    items
}

/// Threads with an rseq registration (glibc registers one per thread since
/// 2.35): restore does not register it again yet (issue 10), so the kernel would
/// stop updating the area and stop aborting rseq critical sections (per-CPU
/// caches of tcmalloc and the like would corrupt, `sched_getcpu` would go stale).
/// Read with `PTRACE_GET_RSEQ_CONFIGURATION`, so only inside the freeze, by the
/// thread that froze them. glibc programs can opt out with
/// `GLIBC_TUNABLES=glibc.pthread.rseq=0`.
fn rseq_threads(tids: &[i32]) -> Vec<String> {
    const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
    tids.iter()
        .filter_map(|&t| {
            // struct ptrace_rseq_configuration: u64 pointer, u32 size, signature,
            // flags, pad.
            let mut conf = [0u64; 3];
            // SAFETY: the request writes at most `size_of_val(&conf)` (its `addr`
            // argument) bytes into the live local array passed as `data`.
            let rc = unsafe {
                libc::ptrace(
                    PTRACE_GET_RSEQ_CONFIGURATION,
                    t,
                    std::mem::size_of_val(&conf),
                    conf.as_mut_ptr(),
                )
            };
            (rc > 0 && conf[0] != 0).then(|| {
                format!(
                    "thread {t} registered rseq at {:#x}: restore does not register it again \
                     yet (glibc programs: GLIBC_TUNABLES=glibc.pthread.rseq=0 turns it off)",
                    conf[0]
                )
            })
        })
        .collect()
}

/// Armed interval timers (`setitimer`), read by injected `getitimer` calls in
/// the freeze (nothing outside the program can read them; so this check cannot
/// run before the freeze): restore does not arm them again, so they are refused.
/// `out` is 32 bytes of the driver's scratch memory in the program. Called from
/// the capture's injected queries; the refusal resumes the program unchanged.
pub(crate) fn armed_itimers(
    inj: &Injector,
    tid: i32,
    regs: &UserRegs,
    frame_rsp: u64,
    out: u64,
) -> Result<(), CaptureError> {
    let mut items = Vec::new();
    for (which, name) in [
        (0u64, "ITIMER_REAL"),
        (1, "ITIMER_VIRTUAL"),
        (2, "ITIMER_PROF"),
    ] {
        let rc = inj.syscall_framed(
            tid,
            regs,
            frame_rsp,
            libc::SYS_getitimer as u64,
            [which, out, 0, 0, 0, 0],
        )?;
        if rc < 0 {
            return Err(CaptureError::Inject {
                tid,
                nr: libc::SYS_getitimer as u64,
                detail: format!("getitimer({name}): errno {}", -rc),
            });
        }
        // struct itimerval: it_interval, then it_value (two timevals of 16 bytes).
        let mut buf = [0u8; 32];
        crate::linux::sys::read_remote(inj.pid, &mut buf, &[(out, 32)]).map_err(|source| {
            CaptureError::Memory {
                pid: inj.pid,
                addr: out,
                len: 32,
                source,
            }
        })?;
        if buf[16..].iter().any(|b| *b != 0) {
            items.push(format!(
                "interval timer {name} armed (setitimer): restore does not arm it again"
            ));
        }
    }
    refusal(inj.pid, items)
}

/// Whether fds `a` and `b` of `pid` are one open file description (`kcmp`);
/// `None` if the kernel cannot say.
fn same_description(pid: i32, a: i32, b: i32) -> Option<bool> {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp takes integers only.
    let rc = unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, KCMP_FILE, a, b) };
    (rc >= 0).then_some(rc == 0)
}

/// Threads under seccomp: filters are not captured, so restore refuses them
/// (docs/credentials.md).
fn seccomp_items(threads: impl Iterator<Item = (i32, u32)>) -> Vec<String> {
    threads
        .filter(|(_, mode)| *mode != 0)
        .map(|(tid, mode)| {
            format!(
                "thread {tid} runs under seccomp (mode {mode}): restore cannot give filters back"
            )
        })
        .collect()
}

fn refusal(pid: i32, items: Vec<String>) -> Result<(), CaptureError> {
    if items.is_empty() {
        Ok(())
    } else {
        Err(CaptureError::Unrestorable { pid, items })
    }
}

/// Before anything in the program changes: children, fds, mappings, threads.
pub fn before_freeze(pid: i32, pidfd: RawFd, maps: &[MapEntry]) -> Result<(), CaptureError> {
    let mut items: Vec<String> = children(pid)
        .into_iter()
        .map(|(c, comm)| {
            format!("child process {c} ({comm}): a dump captures one process and would leave it running")
        })
        .collect();
    let fds = fds::capture_fds(pid, pidfd)?;
    items.extend(unrestorable_fds(pid, &fds));
    items.extend(fd_relations(pid, &fds, false));
    items.extend(mapping_items(maps));
    items.extend(posix_timers(pid));
    let tids = crate::linux::procfs::list_tids(pid)?;
    items.extend(robust_threads(pid, tids.iter().copied()));
    items.extend(pending_signals(pid, &tids));
    items.extend(inherited_attributes(pid, &tids));
    items.extend(seccomp_items(tids.iter().map(|&t| {
        let mode = crate::linux::procfs::read_status_task(pid, t).map_or(0, |s| s.seccomp);
        (t, mode)
    })));
    let threads = tids.len();
    if threads > restore_stub::MAX_THREADS {
        items.push(format!(
            "{threads} threads: the restore stub handles at most {}",
            restore_stub::MAX_THREADS
        ));
    }
    refusal(pid, items)
}

/// On the capture, before the image is committed and the program killed.
pub fn captured(cap: &Capture) -> Result<(), CaptureError> {
    let c = &cap.epoch;
    let host_pid = cap.host_pid;
    let mut items = unrestorable_fds(host_pid, &c.fds);
    items.extend(fd_relations(host_pid, &c.fds, true));
    let tids: Vec<i32> = c.threads.iter().map(|t| t.host_tid).collect();
    items.extend(robust_threads(host_pid, tids.iter().copied()));
    items.extend(inherited_attributes(host_pid, &tids));
    items.extend(rseq_threads(&tids));
    if c.vmas.len() > restore_stub::MAX_VMAS {
        items.push(format!(
            "{} mappings: the restore stub handles at most {}",
            c.vmas.len(),
            restore_stub::MAX_VMAS
        ));
    }
    if c.threads.len() > restore_stub::MAX_THREADS {
        items.push(format!(
            "{} threads: the restore stub handles at most {}",
            c.threads.len(),
            restore_stub::MAX_THREADS
        ));
    }
    for v in &c.vmas {
        if let VmaKind::File { path, .. } = &v.kind {
            if path.ends_with(b" (deleted)") {
                items.push(format!(
                    "mapping {:#x}-{:#x} of a deleted file: {}",
                    v.start,
                    v.end,
                    String::from_utf8_lossy(path)
                ));
            }
        }
    }
    items.extend(seccomp_items(
        c.threads.iter().map(|t| (t.host_tid, t.creds.seccomp)),
    ));
    items.extend(posix_timers(host_pid));
    let kids = children(host_pid);
    items.extend(
        kids.into_iter()
            .map(|(p, comm)| format!("child process {p} ({comm})")),
    );
    refusal(host_pid, items)
}
