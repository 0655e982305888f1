//! Running a syscall inside a frozen thread (what CRIU's compel calls parasite-free
//! injection): point the thread at a `syscall` instruction already mapped in the
//! target (found in its `[vdso]`), step it through syscall entry and exit with
//! `PTRACE_SYSCALL`, read the result, and put its registers back.
//!
//! Registers are put back *normalised*: a thread that was stopped inside an
//! interrupted syscall gets the restart applied (see [`restart_kind`]), because the
//! kernel's own restart logic does not run again after a syscall-exit stop.

use crate::error::CaptureError;
use crate::linux::sys::{self, UserRegs, WaitStatus};

/// What happens to a syscall the thread was blocked in when it was stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// Not in an interrupted syscall.
    None,
    /// Re-execute it: `rax = orig_rax`, `rip -= 2`.
    Restart,
    /// Report `-EINTR` to the program (the kernel's restart block cannot move).
    Eintr,
}

const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;

/// Classifies the stop state of a thread from its registers.
pub fn restart_kind(r: &UserRegs) -> Restart {
    if (r.orig_rax as i64) < 0 {
        return Restart::None;
    }
    match -(r.rax as i64) {
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => Restart::Restart,
        ERESTART_RESTARTBLOCK => Restart::Eintr,
        _ => Restart::None,
    }
}

/// Registers with the restart applied and `orig_rax = -1`, so that resuming them
/// anywhere (this process or a restored one) does what the kernel would have done.
pub fn normalized(r: &UserRegs, kind: Restart) -> UserRegs {
    let mut n = *r;
    match kind {
        Restart::None => {}
        Restart::Restart => {
            n.rax = r.orig_rax;
            n.rip = r.rip.wrapping_sub(2);
        }
        Restart::Eintr => n.rax = (-(libc::EINTR as i64)) as u64,
    }
    n.orig_rax = u64::MAX;
    n
}

const SYS_FUTEX: u64 = 202;

/// Picks the thread and `syscall` instruction for single injected syscalls: a
/// thread parked in a restartable `futex` wait, at its own `syscall` instruction
/// (its normalised `rip`), verified to hold `0f 05`. Returns (tid, normalised
/// registers, site).
///
/// Why: if the driver dies while the thread is inside the injected syscall, the
/// thread runs on from the instruction after it with the injected syscall's result
/// in rax, i.e. as if its own futex wait had returned that value. Futex waits are
/// allowed to wake spuriously (Go's `futexsleep` ignores the result and its callers
/// re-check), so the program carries on. At a `syscall` borrowed from the vDSO the
/// thread would instead run on into whatever vDSO code follows: a kill inside the
/// scratch `munmap` there once made a kvstore's netpoller fail with "epollwait ...
/// failed with 5" (tests/tests/dump_killed.rs).
pub fn parked_site(pid: i32, threads: &[(i32, UserRegs)]) -> Option<(i32, UserRegs, u64)> {
    threads.iter().find_map(|&(tid, raw)| {
        if raw.orig_rax != SYS_FUTEX || restart_kind(&raw) != Restart::Restart {
            return None;
        }
        let n = normalized(&raw, Restart::Restart);
        let mut insn = [0u8; 2];
        sys::read_remote(pid, &mut insn, &[(n.rip, 2)]).ok()?;
        (insn == [0x0f, 0x05]).then_some((tid, n, n.rip))
    })
}

/// Where single injected syscalls run: a thread, its normalised registers (put
/// back after each call) and the `syscall` instruction used.
#[derive(Debug)]
pub struct Site {
    pub inj: Injector,
    pub tid: i32,
    pub regs: UserRegs,
}

impl Site {
    /// A parked futex waiter at its own `syscall` ([`parked_site`]), else
    /// `fallback` (tid, normalised registers) at a `syscall` in the `[vdso]`.
    pub fn choose(
        pid: i32,
        threads: &[(i32, UserRegs)],
        vdso: Option<(u64, u64)>,
        fallback: (i32, UserRegs),
        deferred: &Deferred,
    ) -> Result<Site, CaptureError> {
        Ok(match parked_site(pid, threads) {
            Some((tid, regs, gadget)) => Site {
                inj: Injector {
                    pid,
                    gadget,
                    deferred: deferred.clone(),
                },
                tid,
                regs,
            },
            None => Site {
                inj: Injector::new(pid, vdso, deferred)?,
                tid: fallback.0,
                regs: fallback.1,
            },
        })
    }

    /// Runs `nr(args)` in the site's thread; returns the raw result.
    pub fn syscall(&self, nr: u64, args: [u64; 6]) -> Result<i64, CaptureError> {
        self.inj.syscall(self.tid, &self.regs, nr, args)
    }

    /// [`Site::syscall`], with a negative result turned into an error naming the
    /// thread, the syscall and `what` it was for.
    pub fn call(&self, nr: u64, args: [u64; 6], what: &str) -> Result<u64, CaptureError> {
        let rc = self.syscall(nr, args)?;
        if rc < 0 {
            return Err(CaptureError::Inject {
                tid: self.tid,
                nr,
                detail: format!("{what}: errno {}", -rc),
            });
        }
        Ok(rc as u64)
    }
}

/// Signals that arrived for threads while they ran injected code, held back
/// (re-sending one at once would stop the thread on it again) and sent once the
/// threads are released. Owned by whoever holds the threads stopped (a
/// [`crate::capture::freeze::Frozen`] sends them at its resume); every injector
/// working on those threads holds a handle to the same list.
#[derive(Clone, Debug, Default)]
pub struct Deferred(std::sync::Arc<std::sync::Mutex<Vec<(i32, i32)>>>);

impl Deferred {
    /// Records `sig` for `tid`.
    pub fn push(&self, tid: i32, sig: i32) {
        if let Ok(mut d) = self.0.lock() {
            d.push((tid, sig));
        }
    }

    /// Sends the held-back signals to their threads of `pid` (once the threads
    /// run again; a no-op for a killed process).
    pub fn redeliver(&self, pid: i32) {
        let list = self
            .0
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default();
        for (tid, sig) in list {
            let _ = sys::tgkill(pid, tid, sig);
        }
    }
}

/// Runs syscalls in stopped threads of one process.
#[derive(Debug, Clone)]
pub struct Injector {
    pub pid: i32,
    /// Address of a `0f 05` (`syscall`) byte pair in an executable mapping.
    pub gadget: u64,
    /// Where signals that arrive during an injection are held back.
    pub deferred: Deferred,
}

impl Injector {
    /// Finds a `syscall` instruction in the target's `[vdso]`.
    pub fn new(
        pid: i32,
        vdso: Option<(u64, u64)>,
        deferred: &Deferred,
    ) -> Result<Injector, CaptureError> {
        let (start, end) = vdso.ok_or(CaptureError::NoSyscallGadget { pid })?;
        let mut buf = vec![0u8; (end - start) as usize];
        let len = buf.len();
        sys::read_remote(pid, &mut buf, &[(start, len)]).map_err(|source| {
            CaptureError::Memory {
                pid,
                addr: start,
                len,
                source,
            }
        })?;
        let off = buf
            .windows(2)
            .position(|w| w == [0x0f, 0x05])
            .ok_or(CaptureError::NoSyscallGadget { pid })?;
        Ok(Injector {
            pid,
            gadget: start + off as u64,
            deferred: deferred.clone(),
        })
    }

    /// Executes syscall `nr(args)` in stopped thread `tid`; its registers are left as
    /// `restore_to`. Returns the raw (possibly negative errno) result.
    pub fn syscall(
        &self,
        tid: i32,
        restore_to: &UserRegs,
        nr: u64,
        args: [u64; 6],
    ) -> Result<i64, CaptureError> {
        let mut r = *restore_to;
        r.rax = nr;
        r.rdi = args[0];
        r.rsi = args[1];
        r.rdx = args[2];
        r.r10 = args[3];
        r.r8 = args[4];
        r.r9 = args[5];
        let out = self
            .step(tid, &r)
            .inspect_err(|_| put_back(tid, restore_to))?;
        sys::ptrace_setregs(tid, restore_to).map_err(CaptureError::ptrace("SETREGS", tid))?;
        Ok(out.rax as i64)
    }

    /// Like [`Injector::syscall`], but with rsp at `frame_rsp` (an `rt_sigframe`
    /// holding the thread's own state, for the trampoline's fallback path).
    pub fn syscall_framed(
        &self,
        tid: i32,
        restore_to: &UserRegs,
        frame_rsp: u64,
        nr: u64,
        args: [u64; 6],
    ) -> Result<i64, CaptureError> {
        let mut r = *restore_to;
        r.rax = nr;
        r.rsp = frame_rsp;
        r.rdi = args[0];
        r.rsi = args[1];
        r.rdx = args[2];
        r.r10 = args[3];
        r.r8 = args[4];
        r.r9 = args[5];
        let out = self
            .step(tid, &r)
            .inspect_err(|_| put_back(tid, restore_to))?;
        sys::ptrace_setregs(tid, restore_to).map_err(CaptureError::ptrace("SETREGS", tid))?;
        Ok(out.rax as i64)
    }

    /// Runs the syscall described by `regs` (number in rax) at the gadget and returns
    /// the thread's registers at syscall exit, leaving the thread stopped there.
    pub fn step(&self, tid: i32, regs: &UserRegs) -> Result<UserRegs, CaptureError> {
        let mut r = *regs;
        r.orig_rax = u64::MAX;
        r.rip = self.gadget;
        sys::ptrace_setregs(tid, &r).map_err(CaptureError::ptrace("SETREGS", tid))?;
        for phase in ["syscall entry", "syscall exit"] {
            sys::ptrace_syscall(tid, 0).map_err(CaptureError::ptrace("SYSCALL", tid))?;
            self.wait_syscall_stop(tid, phase, regs.rax)?;
        }
        sys::ptrace_getregs(tid).map_err(CaptureError::ptrace("GETREGS", tid))
    }

    fn wait_syscall_stop(
        &self,
        tid: i32,
        phase: &'static str,
        nr: u64,
    ) -> Result<(), CaptureError> {
        let mut retraps = 0;
        loop {
            match sys::waitpid(tid, false).map_err(CaptureError::ptrace("waitpid", tid))? {
                Some(WaitStatus::Stopped(_, sig, 0)) if sig == (libc::SIGTRAP | 0x80) => {
                    return Ok(())
                }
                Some(WaitStatus::Stopped(_, sig, 0)) => {
                    // A signal arrived for this thread (Go preempts with SIGURG).
                    // Re-sending it now would stop the thread on it again, forever;
                    // hold it back and send it once the process is released.
                    self.deferred.push(tid, sig);
                    sys::ptrace_syscall(tid, 0).map_err(CaptureError::ptrace("SYSCALL", tid))?;
                }
                // A group-stopped thread (SIGSTOP) that is resumed traps once more
                // with its stop before it runs (tests/tests/dump_safety.rs);
                // resume it again.
                Some(WaitStatus::Stopped(_, _, sys::PTRACE_EVENT_STOP)) if retraps < 8 => {
                    retraps += 1;
                    sys::ptrace_syscall(tid, 0).map_err(CaptureError::ptrace("SYSCALL", tid))?;
                }
                Some(WaitStatus::Stopped(_, _, ev)) => {
                    return Err(CaptureError::Inject {
                        tid,
                        nr,
                        detail: format!("unexpected ptrace event {ev} at {phase}"),
                    })
                }
                Some(other) => {
                    return Err(CaptureError::Inject {
                        tid,
                        nr,
                        detail: format!("thread ended at {phase}: {other:?}"),
                    })
                }
                None => {}
            }
        }
    }
}

/// Best effort after a failed injection: the thread's own registers go back (with
/// `orig_rax = -1`, so that a thread stopped at the entry of the injected syscall
/// skips it), so that it never resumes pointing into driver code or memory.
pub fn put_back(tid: i32, regs: &UserRegs) {
    let mut r = *regs;
    r.orig_rax = u64::MAX;
    let _ = sys::ptrace_setregs(tid, &r);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_classification() {
        let mut r = UserRegs {
            orig_rax: 202,
            rax: (-512i64) as u64,
            rip: 0x1002,
            ..Default::default()
        };
        assert_eq!(restart_kind(&r), Restart::Restart);
        let n = normalized(&r, Restart::Restart);
        assert_eq!((n.rax, n.rip, n.orig_rax), (202, 0x1000, u64::MAX));
        r.rax = (-516i64) as u64;
        assert_eq!(restart_kind(&r), Restart::Eintr);
        assert_eq!(normalized(&r, Restart::Eintr).rax as i64, -4);
        r.orig_rax = u64::MAX;
        assert_eq!(restart_kind(&r), Restart::None);
        r.orig_rax = 0;
        r.rax = 5;
        assert_eq!(restart_kind(&r), Restart::None);
    }
}
