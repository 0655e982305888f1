//! `cs-restore-stub`: static, `no_std`, `no_main` restorer.
#![no_std]
#![no_main]

use core::arch::global_asm;

// The kernel enters at `_start` with rsp pointing at argc; align and call Rust.
global_asm!(
    ".globl _start",
    "_start:",
    "xor rbp, rbp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {entry}",
    "ud2",
    entry = sym stub_entry,
);

extern "C" fn stub_entry(_sp: *const usize) -> ! {
    exit(restore_stub::EXIT_OK)
}

fn exit(code: i32) -> ! {
    // SAFETY: exit_group(2) takes one integer and never returns; no memory is touched.
    unsafe {
        core::arch::asm!("syscall", in("rax") 231usize, in("rdi") code as isize, options(noreturn, nostack));
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // No formatting, no unwinding: trap.
    // SAFETY: `ud2` raises SIGILL and never returns; it reads or writes no memory.
    unsafe { core::arch::asm!("ud2", options(noreturn, nostack)) }
}
