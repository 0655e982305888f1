//! Freezing a process: seize every thread with ptrace and park it in a
//! `PTRACE_EVENT_STOP`, including threads born while the freeze is under way.
//!
//! Order: seize + interrupt every listed thread, wait for each one's stop (following
//! clone events to pick up new threads, letting pending signals through), then list
//! the threads again; repeat until the listing matches the stopped set.
//!
//! Dropping a [`Frozen`] detaches every thread, so any error path leaves the program
//! running. If the driver itself dies, the kernel detaches the tracees the same way
//! (no `PTRACE_O_EXITKILL` here, on purpose).

use std::collections::BTreeMap;
use std::time::Instant;

use crate::error::CaptureError;
use crate::linux::procfs;
use crate::linux::sys::{self, WaitStatus};

/// A process whose every thread is stopped under our ptrace.
#[derive(Debug)]
pub struct Frozen {
    pub pid: i32,
    /// Thread ids as seen from the driver's pid namespace, sorted.
    pub tids: Vec<i32>,
    /// When the first thread was interrupted.
    pub frozen_at: Instant,
    /// The program was in a job-control stop (SIGSTOP and kin). Detaching leaves
    /// it stopped: a traced thread resumed from a group stop traps once more with
    /// its stop signal, and stays stopped once untraced (shown by a probe on this
    /// kernel; see docs/guarantees.md).
    pub group_stopped: bool,
    /// Signals held back by injections into these threads, sent at the resume.
    pub deferred: crate::capture::inject::Deferred,
    released: bool,
}

const SEIZE_OPTIONS: usize = sys::PTRACE_O_TRACECLONE | sys::PTRACE_O_TRACESYSGOOD;

impl Frozen {
    /// Stops every thread of `pid`.
    pub fn freeze(pid: i32) -> Result<Frozen, CaptureError> {
        let frozen_at = Instant::now();
        // tid -> stopped?
        let mut threads: BTreeMap<i32, bool> = BTreeMap::new();
        let mut guard = Frozen {
            pid,
            tids: Vec::new(),
            frozen_at,
            group_stopped: false,
            deferred: Default::default(),
            released: false,
        };
        loop {
            let listed = procfs::list_tids(pid).map_err(|_| CaptureError::ProcessGone { pid })?;
            if listed.is_empty() {
                return Err(CaptureError::ProcessGone { pid });
            }
            let mut new = 0;
            for &t in &listed {
                if threads.contains_key(&t) {
                    continue;
                }
                match sys::ptrace_seize(t, SEIZE_OPTIONS) {
                    Ok(()) => {}
                    // The thread exited between the listing and the seize.
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
                    Err(e) => {
                        return Err(CaptureError::Ptrace {
                            op: "SEIZE",
                            tid: t,
                            source: e,
                        })
                    }
                }
                guard.tids.push(t);
                threads.insert(t, false);
                sys::ptrace_interrupt(t).map_err(CaptureError::ptrace("INTERRUPT", t))?;
                new += 1;
            }
            if new == 0
                && threads.values().all(|s| *s)
                && listed.iter().all(|t| threads.contains_key(t))
            {
                break;
            }
            // Wait for every thread not yet stopped.
            while let Some((&t, _)) = threads.iter().find(|(_, s)| !**s) {
                match sys::waitpid(t, false).map_err(CaptureError::ptrace("waitpid", t))? {
                    None => {}
                    Some(WaitStatus::Stopped(t, sig, sys::PTRACE_EVENT_STOP)) => {
                        // A group-stopped thread reports its stop signal, an
                        // interrupted running one SIGTRAP.
                        if matches!(
                            sig,
                            libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
                        ) {
                            guard.group_stopped = true;
                        }
                        threads.insert(t, true);
                    }
                    Some(WaitStatus::Stopped(t, _sig, sys::PTRACE_EVENT_CLONE)) => {
                        let child = sys::ptrace_geteventmsg(t)
                            .map_err(CaptureError::ptrace("GETEVENTMSG", t))?
                            as i32;
                        // Auto-attached by PTRACE_O_TRACECLONE; it reports its own stop.
                        if let std::collections::btree_map::Entry::Vacant(e) = threads.entry(child)
                        {
                            e.insert(false);
                            guard.tids.push(child);
                        }
                        sys::ptrace_cont(t, 0).map_err(CaptureError::ptrace("CONT", t))?;
                        sys::ptrace_interrupt(t).map_err(CaptureError::ptrace("INTERRUPT", t))?;
                    }
                    Some(WaitStatus::Stopped(t, sig, 0)) if sig != (libc::SIGTRAP | 0x80) => {
                        // Signal-delivery-stop: deliver it and stop afterwards.
                        sys::ptrace_cont(t, sig).map_err(CaptureError::ptrace("CONT", t))?;
                        sys::ptrace_interrupt(t).map_err(CaptureError::ptrace("INTERRUPT", t))?;
                    }
                    Some(WaitStatus::Stopped(t, _sig, _ev)) => {
                        sys::ptrace_cont(t, 0).map_err(CaptureError::ptrace("CONT", t))?;
                        sys::ptrace_interrupt(t).map_err(CaptureError::ptrace("INTERRUPT", t))?;
                    }
                    Some(WaitStatus::Exited(t, _)) | Some(WaitStatus::Signaled(t, _)) => {
                        threads.remove(&t);
                        guard.tids.retain(|x| *x != t);
                        if t == pid {
                            return Err(CaptureError::ProcessGone { pid });
                        }
                    }
                }
            }
        }
        guard.tids = threads.keys().copied().collect();
        Ok(guard)
    }

    /// Lets every thread run again.
    pub fn resume(mut self) {
        self.detach_all();
    }

    /// Kills the process while it is still frozen (it never runs again), then
    /// collects the exit of every thread: threads that die while traced stay
    /// zombies until their tracer reaps them, and so would the whole process.
    pub fn kill(mut self) {
        let _ = sys::kill(self.pid, libc::SIGKILL);
        self.released = true;
        // The leader's exit is reported only once every other thread is gone.
        let mut order: Vec<i32> = self
            .tids
            .iter()
            .copied()
            .filter(|t| *t != self.pid)
            .collect();
        order.push(self.pid);
        for &t in &order {
            loop {
                match sys::waitpid(t, false) {
                    Ok(Some(WaitStatus::Exited(..)))
                    | Ok(Some(WaitStatus::Signaled(..)))
                    | Err(_) => break,
                    // A stop that raced with the kill: let it run into the kill.
                    Ok(Some(WaitStatus::Stopped(..))) => {
                        let _ = sys::ptrace_cont(t, 0);
                    }
                    Ok(None) => {}
                }
            }
        }
    }

    fn detach_all(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        // The leader's exit is reported only once every other thread is gone.
        let mut order: Vec<i32> = self
            .tids
            .iter()
            .copied()
            .filter(|t| *t != self.pid)
            .collect();
        order.push(self.pid);
        for &t in &order {
            let _ = sys::ptrace_detach(t, 0);
        }
        self.deferred.redeliver(self.pid);
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.detach_all();
    }
}
