//! The x86_64 `rt_sigframe` a restored thread enters the program through.
//!
//! `rt_sigreturn` reads the frame at `rsp - 8` (just past `pretcode`) and restores:
//! every general register and rip/eflags from `uc_mcontext`, the FPU/XSAVE state from
//! the area `uc_mcontext.fpstate` points at (64-byte aligned, with the software
//! reserved bytes saying "XSTATE" and `FP_XSTATE_MAGIC2` just past the area), the
//! signal mask from `uc_sigmask`, and the alternate signal stack from `uc_stack`.
//! It does not restore fs_base: the thread sets it with `arch_prctl` first.
//!
//! Layout written by [`build`] at `base` (64-byte aligned):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | pretcode (unused: 0) |
//! | 8 | 8 | uc_flags = FP_XSTATE \| SIGCONTEXT_SS \| STRICT_RESTORE_SS |
//! | 16 | 8 | uc_link = 0 |
//! | 24 | 24 | uc_stack: ss_sp, ss_flags (+4 pad), ss_size |
//! | 48 | 256 | uc_mcontext (`struct sigcontext`) |
//! | 304 | 8 | uc_sigmask |
//! | 312 | 128 | siginfo (zero) |
//! | 448 | xsave + 4 | fpstate, then FP_XSTATE_MAGIC2 |

/// Offset of `uc_mcontext` in the frame.
pub const MCONTEXT: usize = 48;
/// Offset of the XSAVE area in the frame.
pub const FPSTATE: usize = 448;
/// `FP_XSTATE_MAGIC1` in the XSAVE software-reserved bytes.
pub const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
/// `FP_XSTATE_MAGIC2`, just past the XSAVE area.
pub const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
const UC_FP_XSTATE: u64 = 1;
const UC_SIGCONTEXT_SS: u64 = 2;
const UC_STRICT_RESTORE_SS: u64 = 4;
/// Offset of `sw_reserved` inside the legacy FXSAVE area.
const SW_RESERVED: usize = 464;

/// `user_regs_struct` indices (the image's register order).
pub use core_format::reg;

/// How to treat the syscall a thread was stopped in (mirrors the image's tag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    None,
    Restart,
    Eintr,
}

/// What a frame is built from.
#[derive(Clone, Copy, Debug)]
pub struct ThreadInput<'a> {
    pub regs: &'a [u64; 27],
    pub restart: Restart,
    pub xsave: &'a [u8],
    pub sigmask: u64,
    pub altstack: (u64, u32, u64),
}

/// Why a frame could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// `out` is too small for the frame and XSAVE area.
    TooSmall,
    /// `base` is not 64-byte aligned.
    Unaligned,
    /// The XSAVE area is shorter than the 576-byte legacy area + header.
    XsaveTooShort,
}

/// Bytes a frame takes for an XSAVE area of `xsave_len` bytes.
pub const fn frame_len(xsave_len: usize) -> usize {
    FPSTATE + xsave_len + 4
}

fn put(out: &mut [u8], off: usize, v: u64) {
    out[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Registers after the syscall restart is applied.
pub fn restarted(regs: &[u64; 27], restart: Restart) -> [u64; 27] {
    let mut r = *regs;
    match restart {
        Restart::None => {}
        Restart::Restart => {
            r[reg::RAX] = regs[reg::ORIG_RAX];
            r[reg::RIP] = regs[reg::RIP].wrapping_sub(2);
        }
        Restart::Eintr => r[reg::RAX] = (-4i64) as u64,
    }
    r[reg::ORIG_RAX] = u64::MAX;
    r
}

/// Writes the frame for `t` into `out`, which will live at address `base`.
/// Returns the `rsp` to run `rt_sigreturn` with (`base + 8`).
pub fn build(out: &mut [u8], base: u64, t: &ThreadInput<'_>) -> Result<u64, FrameError> {
    if !base.is_multiple_of(64) {
        return Err(FrameError::Unaligned);
    }
    if t.xsave.len() < 576 {
        return Err(FrameError::XsaveTooShort);
    }
    let len = frame_len(t.xsave.len());
    if out.len() < len {
        return Err(FrameError::TooSmall);
    }
    out[..FPSTATE].fill(0);
    let r = restarted(t.regs, t.restart);
    put(
        out,
        8,
        UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS,
    );
    put(out, 24, t.altstack.0);
    put(out, 32, u64::from(t.altstack.1));
    put(out, 40, t.altstack.2);
    let mc = |i: usize| MCONTEXT + i * 8;
    let order = [
        reg::R8,
        reg::R9,
        reg::R10,
        reg::R11,
        reg::R12,
        reg::R13,
        reg::R14,
        reg::R15,
        reg::RDI,
        reg::RSI,
        reg::RBP,
        reg::RBX,
        reg::RDX,
        reg::RAX,
        reg::RCX,
        reg::RSP,
        reg::RIP,
        reg::EFLAGS,
    ];
    for (i, &ri) in order.iter().enumerate() {
        put(out, mc(i), r[ri]);
    }
    // cs, gs, fs, ss as four u16 in one word; __pad0 etc. stay zero.
    let segs = (r[reg::CS] & 0xffff) | ((r[reg::SS] & 0xffff) << 48);
    put(out, mc(18), segs);
    put(out, mc(23), base + FPSTATE as u64);
    put(out, 304, t.sigmask);
    // The XSAVE area, then make sure its software-reserved bytes announce the
    // extended state and the second magic follows it.
    let xs = &mut out[FPSTATE..FPSTATE + t.xsave.len()];
    xs.copy_from_slice(t.xsave);
    let sw = &xs[SW_RESERVED..SW_RESERVED + 20];
    let magic1 = u32::from_le_bytes([sw[0], sw[1], sw[2], sw[3]]);
    let declared = u32::from_le_bytes([sw[16], sw[17], sw[18], sw[19]]) as usize;
    let xstate_size = if magic1 == FP_XSTATE_MAGIC1 && declared >= 576 && declared <= t.xsave.len()
    {
        declared
    } else {
        // Fill in the software-reserved bytes ourselves: magic1, extended size,
        // features (from the XSAVE header's XSTATE_BV), xstate size.
        let bv = u64::from_le_bytes(xs[512..520].try_into().unwrap_or([0; 8]));
        let size = t.xsave.len();
        xs[SW_RESERVED..SW_RESERVED + 4].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
        xs[SW_RESERVED + 4..SW_RESERVED + 8].copy_from_slice(&((size + 4) as u32).to_le_bytes());
        xs[SW_RESERVED + 8..SW_RESERVED + 16].copy_from_slice(&(bv | 3).to_le_bytes());
        xs[SW_RESERVED + 16..SW_RESERVED + 20].copy_from_slice(&(size as u32).to_le_bytes());
        size
    };
    let m2 = FPSTATE + xstate_size;
    out[m2..m2 + 4].copy_from_slice(&FP_XSTATE_MAGIC2.to_le_bytes());
    Ok(base + 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_fields() {
        let mut regs = [0u64; 27];
        for (i, r) in regs.iter_mut().enumerate() {
            *r = 0x1000 + i as u64;
        }
        regs[reg::ORIG_RAX] = 202;
        regs[reg::RAX] = (-512i64) as u64;
        regs[reg::CS] = 0x33;
        regs[reg::SS] = 0x2b;
        let mut xsave = [0u8; 832];
        xsave[SW_RESERVED..SW_RESERVED + 4].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
        xsave[SW_RESERVED + 16..SW_RESERVED + 20].copy_from_slice(&832u32.to_le_bytes());
        let t = ThreadInput {
            regs: &regs,
            restart: Restart::Restart,
            xsave: &xsave,
            sigmask: 0x55,
            altstack: (0xa000, 0, 0x8000),
        };
        let mut out = [0xffu8; 2048];
        let rsp = build(&mut out, 0x7000_0000, &t).unwrap();
        assert_eq!(rsp, 0x7000_0008);
        let get = |o: usize| u64::from_le_bytes(out[o..o + 8].try_into().unwrap());
        assert_eq!(get(MCONTEXT + 13 * 8), 202, "rax = orig_rax after restart");
        assert_eq!(
            get(MCONTEXT + 16 * 8),
            0x1000 + reg::RIP as u64 - 2,
            "rip moved back over `syscall`"
        );
        assert_eq!(get(MCONTEXT + 15 * 8), 0x1000 + reg::RSP as u64);
        assert_eq!(get(MCONTEXT + 18 * 8), 0x33 | (0x2b << 48));
        assert_eq!(get(MCONTEXT + 23 * 8), 0x7000_0000 + FPSTATE as u64);
        assert_eq!(get(304), 0x55);
        assert_eq!(get(24), 0xa000);
        assert_eq!(
            &out[FPSTATE + 832..FPSTATE + 836],
            &FP_XSTATE_MAGIC2.to_le_bytes()
        );
        assert_eq!(build(&mut out, 0x7000_0001, &t), Err(FrameError::Unaligned));
        assert_eq!(
            build(&mut out[..500], 0x7000_0000, &t),
            Err(FrameError::TooSmall)
        );
    }

    #[test]
    fn eintr_and_none() {
        let mut regs = [7u64; 27];
        regs[reg::RAX] = 99;
        assert_eq!(restarted(&regs, Restart::Eintr)[reg::RAX] as i64, -4);
        let n = restarted(&regs, Restart::None);
        assert_eq!(n[reg::RAX], 99);
        assert_eq!(n[reg::ORIG_RAX], u64::MAX);
    }
}
