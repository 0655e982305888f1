//! x86_64 Linux raw syscalls.
//!
//! # Safety
//! [`syscall6`] executes the `syscall` instruction with the given number and
//! arguments. The kernel reads or writes user memory only through pointers the
//! caller passes as arguments; the caller guarantees they are valid for the call.
//! The instruction clobbers rcx and r11 (declared) and nothing else.

/// Syscall numbers used by the stub.
pub mod nr {
    pub const READ: usize = 0;
    pub const WRITE: usize = 1;
    pub const OPEN: usize = 2;
    pub const CLOSE: usize = 3;
    pub const FCNTL: usize = 72;
    pub const PREAD64: usize = 17;
    pub const MMAP: usize = 9;
    pub const MPROTECT: usize = 10;
    pub const MUNMAP: usize = 11;
    pub const MADVISE: usize = 28;
    pub const RT_SIGACTION: usize = 13;
    pub const RT_SIGPROCMASK: usize = 14;
    pub const RT_SIGRETURN: usize = 15;
    pub const GETPID: usize = 39;
    pub const EXIT: usize = 60;
    pub const PRCTL: usize = 157;
    pub const ARCH_PRCTL: usize = 158;
    pub const GETTID: usize = 186;
    pub const FUTEX: usize = 202;
    pub const EXIT_GROUP: usize = 231;
    pub const USERFAULTFD: usize = 323;
    pub const CLONE3: usize = 435;
}

/// Raw six-argument syscall; returns the kernel's result (negative errno on failure).
///
/// # Safety
/// Pointer arguments must be valid for what syscall `n` does with them.
#[inline(always)]
pub unsafe fn syscall6(
    n: usize,
    a1: usize,
    a2: usize,
    a3: usize,
    a4: usize,
    a5: usize,
    a6: usize,
) -> isize {
    let ret: isize;
    // SAFETY: the caller guarantees the arguments are valid for syscall `n`; the
    // `syscall` instruction clobbers only rcx and r11, declared here.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") n as isize => ret,
            in("rdi") a1, in("rsi") a2, in("rdx") a3, in("r10") a4, in("r8") a5, in("r9") a6,
            lateout("rcx") _, lateout("r11") _,
            options(nostack)
        );
    }
    ret
}

/// Syscall with up to three arguments.
///
/// # Safety
/// As [`syscall6`].
#[inline(always)]
pub unsafe fn syscall3(n: usize, a1: usize, a2: usize, a3: usize) -> isize {
    // SAFETY: forwarded contract.
    unsafe { syscall6(n, a1, a2, a3, 0, 0, 0) }
}

/// `exit_group(code)`.
pub fn exit_group(code: i32) -> ! {
    // SAFETY: exit_group takes an integer and does not return.
    unsafe {
        syscall3(nr::EXIT_GROUP, code as usize, 0, 0);
    }
    #[allow(clippy::empty_loop)]
    loop {}
}

/// `getpid()`.
pub fn getpid() -> i32 {
    // SAFETY: no arguments.
    unsafe { syscall3(nr::GETPID, 0, 0, 0) as i32 }
}

/// `gettid()`.
pub fn gettid() -> i32 {
    // SAFETY: no arguments.
    unsafe { syscall3(nr::GETTID, 0, 0, 0) as i32 }
}

pub const PROT_READ: usize = 1;
pub const PROT_WRITE: usize = 2;
pub const PROT_EXEC: usize = 4;
pub const MAP_SHARED: usize = 0x01;
pub const MAP_PRIVATE: usize = 0x02;
pub const MAP_DROPPABLE: usize = 0x08;
pub const MAP_FIXED: usize = 0x10;
pub const MAP_ANONYMOUS: usize = 0x20;
pub const MAP_GROWSDOWN: usize = 0x100;
pub const MAP_NORESERVE: usize = 0x4000;
pub const MAP_FIXED_NOREPLACE: usize = 0x100000;
pub const FUTEX_WAIT_PRIVATE: usize = 128;
pub const FUTEX_WAKE_PRIVATE: usize = 129;
pub const ARCH_SET_FS: usize = 0x1002;
pub const ARCH_MAP_VDSO_64: usize = 0x2003;
pub const PR_SET_NAME: usize = 15;
pub const PR_SET_MM: usize = 35;
pub const PR_SET_MM_MAP: usize = 14;
pub const CLONE_VM: u64 = 0x100;
pub const CLONE_FS: u64 = 0x200;
pub const CLONE_FILES: u64 = 0x400;
pub const CLONE_SIGHAND: u64 = 0x800;
pub const CLONE_THREAD: u64 = 0x10000;
pub const CLONE_SYSVSEM: u64 = 0x40000;
/// The flags Go's runtime creates its threads with.
pub const GO_THREAD_FLAGS: u64 =
    CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM;

/// `struct clone_args` (clone3), 88 bytes.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}
const _: () = assert!(core::mem::size_of::<CloneArgs>() == 88);

/// `struct prctl_mm_map`, 104 bytes (PR_SET_MM_MAP_SIZE on this kernel).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct PrctlMmMap {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub auxv: u64,
    pub auxv_size: u32,
    pub exe_fd: u32,
}
const _: () = assert!(core::mem::size_of::<PrctlMmMap>() == 104);

/// The kernel's `struct sigaction` for rt_sigaction (x86_64), 32 bytes.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelSigaction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}
const _: () = assert!(core::mem::size_of::<KernelSigaction>() == 32);
