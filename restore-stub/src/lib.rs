//! The restore stub's logic, kept in a library so the normal test harness can run it,
//! and so the driver shares the stub's argument and report layouts.
//!
//! - [`sigframe`]: builds the x86_64 `rt_sigframe` a thread enters the program through.
//! - [`report`]: the fixed little-endian message the stub writes to the driver when the
//!   address space and threads are ready (or when it failed, naming phase, errno, address).
//! - [`arch`]: the raw syscall layer (x86_64 only).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_op_in_unsafe_fn)]

pub mod arch;
pub mod report;
pub mod sigframe;

/// Where the stub is linked (see build.rs); the driver refuses images whose VMAs
/// overlap the stub's extent.
pub const STUB_BASE: u64 = 0x3000_0000_0000;
/// Upper bound of the stub's extent (image + bss), checked against the ELF at build time
/// by a test.
pub const STUB_MAX_LEN: u64 = 64 << 20;
/// Most threads the stub restores.
pub const MAX_THREADS: usize = 256;
/// Most VMAs the stub restores.
pub const MAX_VMAS: usize = 8192;
/// Per-thread area in the stub's bss: stack + signal frame.
pub const THREAD_SLOT_BYTES: usize = 64 << 10;
/// Part of each slot used as the thread's stub stack (the rest holds its frame).
pub const THREAD_STACK_BYTES: usize = 32 << 10;

/// Parses a non-negative decimal integer (the stub's arguments).
pub fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal() {
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(parse_decimal(b"1023"), Some(1023));
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"12a"), None);
        assert_eq!(parse_decimal(b"99999999999999999999"), None);
    }
}
