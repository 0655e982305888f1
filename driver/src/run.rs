//! `cs-driver run`: launch a program traced from its first instruction.
//!
//! The child waits on a pipe before `exec`; the driver seizes it (`PTRACE_SEIZE` with
//! clone and exec events, so every thread the Go runtime creates is traced from its
//! birth), lets it exec, and sees the `PTRACE_EVENT_EXEC` stop at the program's first
//! instruction. The tracer loop then passes signals through unchanged, keeps group
//! stops (SIGSTOP/SIGTSTP) in effect with `PTRACE_LISTEN`, and returns the program's
//! exit status (128 + signal number when killed).

use std::ffi::CString;

use crate::linux::sys::{self, WaitStatus};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("argument {0:?} contains a NUL byte")]
    Nul(String),
    #[error("{op}: {source}")]
    Sys {
        op: &'static str,
        source: std::io::Error,
    },
    #[error("cannot execute {prog}: {source}")]
    Exec {
        prog: String,
        source: std::io::Error,
    },
}

const PTRACE_O_TRACEEXEC: usize = 0x10;
const PTRACE_EVENT_EXEC: i32 = 4;
const PTRACE_LISTEN: libc::c_uint = 0x4208;

/// Runs `argv` traced; `started` receives the program's pid. Returns its exit code.
pub fn run(argv: &[String], started: impl FnOnce(i32)) -> Result<i32, RunError> {
    let cargs: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| RunError::Nul(a.clone())))
        .collect::<Result<_, _>>()?;
    let mut ptrs: Vec<*const libc::c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // Two pipes: `go` (the driver tells the child to exec once it is seized) and
    // `err` (close-on-exec: EOF means the exec happened, 4 bytes are an errno).
    let mut go = [0 as libc::c_int; 2];
    let mut err = [0 as libc::c_int; 2];
    // SAFETY: live arrays of two ints for pipe2 to fill.
    let rc = unsafe { libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC) };
    // SAFETY: as above.
    let rc2 = unsafe { libc::pipe2(err.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc < 0 || rc2 < 0 {
        return Err(RunError::Sys {
            op: "pipe2",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: fork(2); the child only calls async-signal-safe functions before exec.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(RunError::Sys {
            op: "fork",
            source: std::io::Error::last_os_error(),
        });
    }
    if pid == 0 {
        // SAFETY: read/execvp/write/_exit on data prepared before the fork.
        unsafe {
            libc::close(go[1]);
            libc::close(err[0]);
            let mut b = [0u8; 1];
            libc::read(go[0], b.as_mut_ptr() as *mut libc::c_void, 1);
            libc::execvp(ptrs[0], ptrs.as_ptr());
            let e = std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(0)
                .to_le_bytes();
            libc::write(err[1], e.as_ptr() as *const libc::c_void, 4);
            libc::_exit(127);
        }
    }
    // SAFETY: closing our copies of the child's ends.
    unsafe {
        libc::close(go[0]);
        libc::close(err[1]);
    }
    let opts = sys::PTRACE_O_TRACECLONE | sys::PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACEEXEC;
    let seized = sys::ptrace_seize(pid, opts);
    // SAFETY: one byte from a live array, then closing our end: the child execs.
    unsafe {
        libc::write(go[1], [1u8].as_ptr() as *const libc::c_void, 1);
        libc::close(go[1]);
    }
    seized.map_err(|e| RunError::Sys {
        op: "PTRACE_SEIZE",
        source: e,
    })?;
    let mut e = [0u8; 4];
    // SAFETY: reading 4 bytes into a live array; EOF (0) means the exec succeeded.
    let n = unsafe { libc::read(err[0], e.as_mut_ptr() as *mut libc::c_void, 4) };
    // SAFETY: closing our read end.
    unsafe { libc::close(err[0]) };
    if n == 4 {
        // Let the failed child run to its _exit and reap it.
        while let Ok(Some(st)) = sys::waitpid(pid, false) {
            match st {
                WaitStatus::Exited(..) | WaitStatus::Signaled(..) => break,
                WaitStatus::Stopped(t, sig, _) => {
                    let _ = sys::ptrace_cont(t, if sig == libc::SIGTRAP { 0 } else { sig });
                }
            }
        }
        return Err(RunError::Exec {
            prog: argv[0].clone(),
            source: std::io::Error::from_raw_os_error(i32::from_le_bytes(e)),
        });
    }
    started(pid);
    loop {
        let st = match sys::waitpid(-1, false) {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => return Ok(255),
            Err(e) => {
                return Err(RunError::Sys {
                    op: "waitpid",
                    source: e,
                })
            }
        };
        match st {
            WaitStatus::Exited(t, code) if t == pid => return Ok(code),
            WaitStatus::Signaled(t, sig) if t == pid => return Ok(128 + sig),
            WaitStatus::Exited(..) | WaitStatus::Signaled(..) => {}
            WaitStatus::Stopped(t, _, ev)
                if ev == sys::PTRACE_EVENT_CLONE
                    || ev == PTRACE_EVENT_EXEC
                    || ev == sys::PTRACE_EVENT_EXIT =>
            {
                let _ = sys::ptrace_cont(t, 0);
            }
            WaitStatus::Stopped(t, sig, sys::PTRACE_EVENT_STOP) => {
                if matches!(
                    sig,
                    libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
                ) {
                    // A group stop: stay stopped, but keep reporting.
                    // SAFETY: ptrace(PTRACE_LISTEN) with integers.
                    unsafe { libc::ptrace(PTRACE_LISTEN, t, 0, 0) };
                } else {
                    let _ = sys::ptrace_cont(t, 0);
                }
            }
            WaitStatus::Stopped(t, sig, _) if sig == (libc::SIGTRAP | 0x80) => {
                let _ = sys::ptrace_cont(t, 0);
            }
            WaitStatus::Stopped(t, sig, _) => {
                let _ = sys::ptrace_cont(t, sig);
            }
        }
    }
}
