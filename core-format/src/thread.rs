//! `ThreadState`: one thread's registers, XSAVE area and signal state.
//!
//! Payload layout:
//!
//! | off | size | field |
//! |---|---|---|
//! | 0 | 4 | tid (u32, as the program sees it) |
//! | 4 | 4 | restart (u32, [`Restart`]) |
//! | 8 | 8 | signal mask (u64, bit n-1 = signal n) |
//! | 16 | 8 | sigaltstack sp (u64) |
//! | 24 | 8 | sigaltstack size (u64) |
//! | 32 | 4 | sigaltstack flags (u32) |
//! | 36 | 4 | comm length (u32, ≤ 16) |
//! | 40 | 4 | XSAVE length (u32, ≤ [`MAX_XSAVE_BYTES`]) |
//! | 44 | 4 | thread flags (u32): bit 0 [`THREAD_STOPPED`]; other bits refused |
//! | 48 | 216 | general registers: 27 × u64 in `user_regs_struct` order ([`reg`]) |
//! | 264 | n | comm bytes |
//! | .. | m | XSAVE bytes (length checked against ProcessInfo by the validator) |

use static_assertions::const_assert_eq;

use crate::error::Error;
use crate::process::MAX_COMM_BYTES;
use crate::wire::{check_cap, emit_all, parse_all};

/// Number of general registers (Linux x86_64 `user_regs_struct`).
pub const NUM_GREGS: usize = 27;
/// Largest XSAVE blob in bytes (AMX state is about 11 KiB).
pub const MAX_XSAVE_BYTES: usize = 16384;
/// Thread flag: in a job-control stop at the checkpoint.
pub const THREAD_STOPPED: u32 = 1;
/// Length of the fixed part of a ThreadState payload.
pub const THREAD_STATE_FIXED_LEN: usize = 264;
const_assert_eq!(THREAD_STATE_FIXED_LEN, 48 + NUM_GREGS * 8);
const_assert_eq!(reg::GS + 1, NUM_GREGS);

/// Indices into [`ThreadState::regs`], in Linux x86_64 `user_regs_struct` order.
#[allow(missing_docs)]
pub mod reg {
    pub const R15: usize = 0;
    pub const R14: usize = 1;
    pub const R13: usize = 2;
    pub const R12: usize = 3;
    pub const RBP: usize = 4;
    pub const RBX: usize = 5;
    pub const R11: usize = 6;
    pub const R10: usize = 7;
    pub const R9: usize = 8;
    pub const R8: usize = 9;
    pub const RAX: usize = 10;
    pub const RCX: usize = 11;
    pub const RDX: usize = 12;
    pub const RSI: usize = 13;
    pub const RDI: usize = 14;
    pub const ORIG_RAX: usize = 15;
    pub const RIP: usize = 16;
    pub const CS: usize = 17;
    pub const EFLAGS: usize = 18;
    pub const RSP: usize = 19;
    pub const SS: usize = 20;
    pub const FS_BASE: usize = 21;
    pub const GS_BASE: usize = 22;
    pub const DS: usize = 23;
    pub const ES: usize = 24;
    pub const FS: usize = 25;
    pub const GS: usize = 26;
}

/// What to do about the system call a thread was stopped in. 0 is reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Restart {
    /// Not in a system call, or nothing to adjust: resume with the registers as saved.
    None = 1,
    /// Re-execute the call: `rax = orig_rax`, `rip -= 2` (for -ERESTARTSYS,
    /// -ERESTARTNOHAND, -ERESTARTNOINTR).
    Restart = 2,
    /// Return -EINTR to the program (for -ERESTART_RESTARTBLOCK).
    Eintr = 3,
}

impl Restart {
    /// The value for a raw tag.
    pub fn from_raw(raw: u32) -> Result<Self, Error> {
        Ok(match raw {
            1 => Restart::None,
            2 => Restart::Restart,
            3 => Restart::Eintr,
            _ => {
                return Err(Error::RecordBadTag {
                    field: "thread.restart",
                    value: raw,
                })
            }
        })
    }
}

/// `sigaltstack` state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SigAltStack {
    /// `ss_sp`.
    pub sp: u64,
    /// `ss_flags`.
    pub flags: u32,
    /// `ss_size` in bytes.
    pub size: u64,
}

/// One thread at the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ThreadState<'a> {
    /// Thread id as the program sees it.
    pub tid: u32,
    /// Thread `comm` (≤ 16 bytes).
    pub comm: &'a [u8],
    /// General registers, indexed by [`reg`].
    pub regs: [u64; NUM_GREGS],
    /// XSAVE area as returned by `PTRACE_GETREGSET NT_X86_XSTATE`.
    pub xsave: &'a [u8],
    /// Blocked signals (bit n-1 = signal n).
    pub sigmask: u64,
    /// Alternate signal stack.
    pub altstack: SigAltStack,
    /// Syscall restart state.
    pub restart: Restart,
    /// The thread was in a job-control stop (SIGSTOP and kin): it is restored
    /// stopped, and runs again on SIGCONT.
    pub stopped: bool,
}

impl<'a> ThreadState<'a> {
    /// Parses a ThreadState payload.
    pub fn parse(payload: &'a [u8]) -> Result<Self, Error> {
        parse_all(payload, |r| {
            let tid = r.u32()?;
            let restart = Restart::from_raw(r.u32()?)?;
            let sigmask = r.u64()?;
            let sp = r.u64()?;
            let size = r.u64()?;
            let flags = r.u32()?;
            let comm_len = r.u32()? as usize;
            let xsave_len = r.u32()? as usize;
            let tflags = r.u32()?;
            if tflags & !THREAD_STOPPED != 0 {
                return Err(Error::RecordUnknownBits {
                    field: "thread.flags",
                    value: u64::from(tflags),
                });
            }
            check_cap("thread.comm", comm_len, MAX_COMM_BYTES)?;
            check_cap("thread.xsave", xsave_len, MAX_XSAVE_BYTES)?;
            let mut regs = [0u64; NUM_GREGS];
            for v in &mut regs {
                *v = r.u64()?;
            }
            Ok(ThreadState {
                tid,
                comm: r.bytes(comm_len)?,
                regs,
                xsave: r.bytes(xsave_len)?,
                sigmask,
                altstack: SigAltStack { sp, flags, size },
                restart,
                stopped: tflags & THREAD_STOPPED != 0,
            })
        })
    }

    /// Payload length in bytes.
    pub fn buffer_len(&self) -> usize {
        THREAD_STATE_FIXED_LEN + self.comm.len() + self.xsave.len()
    }

    /// Writes the payload.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        check_cap("thread.comm", self.comm.len(), MAX_COMM_BYTES)?;
        check_cap("thread.xsave", self.xsave.len(), MAX_XSAVE_BYTES)?;
        emit_all(out, self.buffer_len(), |w| {
            w.u32(self.tid);
            w.u32(self.restart as u32);
            w.u64(self.sigmask);
            w.u64(self.altstack.sp);
            w.u64(self.altstack.size);
            w.u32(self.altstack.flags);
            w.u32(self.comm.len() as u32);
            w.u32(self.xsave.len() as u32);
            w.u32(if self.stopped { THREAD_STOPPED } else { 0 });
            for v in self.regs {
                w.u64(v);
            }
            w.bytes(self.comm);
            w.bytes(self.xsave);
            Ok(())
        })
    }
}
