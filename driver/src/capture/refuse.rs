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
use crate::capture::{Capture, VmaKind};
use crate::error::CaptureError;
use crate::linux::procfs::MapEntry;

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
    }
    items
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
    items.extend(unrestorable_fds(pid, &fds::capture_fds(pid, pidfd)?));
    items.extend(mapping_items(maps));
    items.extend(posix_timers(pid));
    let tids = crate::linux::procfs::list_tids(pid)?;
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
