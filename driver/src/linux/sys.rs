//! Thin typed wrappers over the raw Linux calls the driver needs and that `nix` does
//! not cover exactly (register sets, signal masks, pidfds, clone3, pagemap reads).
//!
//! # Safety
//! Every `unsafe` block here passes the kernel a pointer to a live, correctly sized
//! Rust value or buffer owned by the caller for the duration of the call; the kernel
//! writes at most the length given. Nothing here keeps a pointer past the call.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The x86_64 `user_regs_struct`, in the kernel's order (27 words).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}
const _: () = assert!(std::mem::size_of::<UserRegs>() == 27 * 8);
const _: () =
    assert!(std::mem::size_of::<UserRegs>() == std::mem::size_of::<libc::user_regs_struct>());

impl UserRegs {
    /// The registers as the 27-word array the image stores.
    pub fn to_words(&self) -> [u64; 27] {
        [
            self.r15,
            self.r14,
            self.r13,
            self.r12,
            self.rbp,
            self.rbx,
            self.r11,
            self.r10,
            self.r9,
            self.r8,
            self.rax,
            self.rcx,
            self.rdx,
            self.rsi,
            self.rdi,
            self.orig_rax,
            self.rip,
            self.cs,
            self.eflags,
            self.rsp,
            self.ss,
            self.fs_base,
            self.gs_base,
            self.ds,
            self.es,
            self.fs,
            self.gs,
        ]
    }

    /// Inverse of [`UserRegs::to_words`].
    pub fn from_words(w: &[u64; 27]) -> Self {
        UserRegs {
            r15: w[0],
            r14: w[1],
            r13: w[2],
            r12: w[3],
            rbp: w[4],
            rbx: w[5],
            r11: w[6],
            r10: w[7],
            r9: w[8],
            r8: w[9],
            rax: w[10],
            rcx: w[11],
            rdx: w[12],
            rsi: w[13],
            rdi: w[14],
            orig_rax: w[15],
            rip: w[16],
            cs: w[17],
            eflags: w[18],
            rsp: w[19],
            ss: w[20],
            fs_base: w[21],
            gs_base: w[22],
            ds: w[23],
            es: w[24],
            fs: w[25],
            gs: w[26],
        }
    }
}

fn check(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `ptrace(req, tid, addr, data)` returning the raw result.
fn ptrace_raw(req: libc::c_uint, tid: i32, addr: usize, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: callers pass either integers or pointers to live buffers sized for `req`
    // (see each wrapper); ptrace writes no more than the request defines.
    let rc = unsafe {
        libc::ptrace(
            req,
            tid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    check(rc)
}

pub const PTRACE_O_TRACESYSGOOD: usize = 0x1;
pub const PTRACE_O_TRACECLONE: usize = 0x8;
pub const PTRACE_O_EXITKILL: usize = 0x10_0000;
pub const PTRACE_EVENT_CLONE: i32 = 3;
pub const PTRACE_EVENT_EXIT: i32 = 6;
pub const PTRACE_EVENT_STOP: i32 = 128;
const NT_PRSTATUS: usize = 1;
const NT_X86_XSTATE: usize = 0x202;
const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;

// `nix` where its types cover the request; the raw call for requests that carry
// a signal (`nix`'s `Signal` cannot name real-time signals, which a program may
// have pending) and for register sets (`NT_X86_XSTATE`, our `UserRegs` layout).
fn pid(tid: i32) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(tid)
}

pub fn ptrace_seize(tid: i32, options: usize) -> io::Result<()> {
    let opts = nix::sys::ptrace::Options::from_bits_truncate(options as libc::c_int);
    nix::sys::ptrace::seize(pid(tid), opts).map_err(io::Error::from)
}
pub fn ptrace_interrupt(tid: i32) -> io::Result<()> {
    nix::sys::ptrace::interrupt(pid(tid)).map_err(io::Error::from)
}
pub fn ptrace_cont(tid: i32, sig: i32) -> io::Result<()> {
    ptrace_raw(libc::PTRACE_CONT, tid, 0, sig as usize).map(drop)
}
pub fn ptrace_syscall(tid: i32, sig: i32) -> io::Result<()> {
    ptrace_raw(libc::PTRACE_SYSCALL, tid, 0, sig as usize).map(drop)
}
pub fn ptrace_detach(tid: i32, sig: i32) -> io::Result<()> {
    ptrace_raw(libc::PTRACE_DETACH, tid, 0, sig as usize).map(drop)
}
pub fn ptrace_geteventmsg(tid: i32) -> io::Result<u64> {
    nix::sys::ptrace::getevent(pid(tid))
        .map(|m| m as u64)
        .map_err(io::Error::from)
}

pub fn ptrace_getregs(tid: i32) -> io::Result<UserRegs> {
    let mut regs = UserRegs::default();
    let mut iov = libc::iovec {
        iov_base: &mut regs as *mut UserRegs as *mut libc::c_void,
        iov_len: std::mem::size_of::<UserRegs>(),
    };
    ptrace_raw(
        libc::PTRACE_GETREGSET,
        tid,
        NT_PRSTATUS,
        &mut iov as *mut _ as usize,
    )?;
    Ok(regs)
}

pub fn ptrace_setregs(tid: i32, regs: &UserRegs) -> io::Result<()> {
    let mut copy = *regs;
    let mut iov = libc::iovec {
        iov_base: &mut copy as *mut UserRegs as *mut libc::c_void,
        iov_len: std::mem::size_of::<UserRegs>(),
    };
    ptrace_raw(
        libc::PTRACE_SETREGSET,
        tid,
        NT_PRSTATUS,
        &mut iov as *mut _ as usize,
    )
    .map(drop)
}

/// Reads the thread's XSAVE area (standard format) into `buf`; returns its length.
pub fn ptrace_get_xstate(tid: i32, buf: &mut [u8]) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    ptrace_raw(
        libc::PTRACE_GETREGSET,
        tid,
        NT_X86_XSTATE,
        &mut iov as *mut _ as usize,
    )?;
    Ok(iov.iov_len)
}

pub fn ptrace_set_xstate(tid: i32, buf: &[u8]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    ptrace_raw(
        libc::PTRACE_SETREGSET,
        tid,
        NT_X86_XSTATE,
        &mut iov as *mut _ as usize,
    )
    .map(drop)
}

pub fn ptrace_getsigmask(tid: i32) -> io::Result<u64> {
    let mut mask: u64 = 0;
    ptrace_raw(PTRACE_GETSIGMASK, tid, 8, &mut mask as *mut u64 as usize)?;
    Ok(mask)
}

pub fn ptrace_setsigmask(tid: i32, mask: u64) -> io::Result<()> {
    let copy = mask;
    ptrace_raw(PTRACE_SETSIGMASK, tid, 8, &copy as *const u64 as usize).map(drop)
}

/// Result of one `waitpid(tid, __WALL)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitStatus {
    Exited(i32, i32),
    Signaled(i32, i32),
    /// A ptrace stop: (tid, signal, event).
    Stopped(i32, i32, i32),
}

pub fn waitpid(pid: i32, nohang: bool) -> io::Result<Option<WaitStatus>> {
    let mut status: libc::c_int = 0;
    let flags = libc::__WALL | if nohang { libc::WNOHANG } else { 0 };
    loop {
        // SAFETY: `status` is a live c_int the kernel writes.
        let rc = unsafe { libc::waitpid(pid, &mut status, flags) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if rc == 0 {
            return Ok(None);
        }
        let s = status;
        return Ok(Some(if libc::WIFEXITED(s) {
            WaitStatus::Exited(rc, libc::WEXITSTATUS(s))
        } else if libc::WIFSIGNALED(s) {
            WaitStatus::Signaled(rc, libc::WTERMSIG(s))
        } else {
            WaitStatus::Stopped(rc, libc::WSTOPSIG(s), (s >> 16) & 0xff)
        }));
    }
}

/// Sends `sig` to process `pid` (`nix`; a real-time signal, which `nix`'s
/// `Signal` cannot name, by the raw call).
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    use nix::sys::signal::Signal;
    match Signal::try_from(sig) {
        Ok(s) => {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), s).map_err(io::Error::from)
        }
        Err(_) => {
            // SAFETY: kill(2) takes two integers and touches no memory of ours.
            check(unsafe { libc::kill(pid, sig) } as libc::c_long).map(drop)
        }
    }
}

/// Waits up to `timeout_ms` for `fd` to turn readable; whether it did.
pub fn wait_readable(fd: std::os::fd::BorrowedFd<'_>, timeout_ms: u16) -> io::Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    loop {
        match poll(&mut fds, timeout_ms) {
            Ok(n) => return Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// `clock`'s time in ns (`nix`).
pub fn clock_ns(clock: libc::clockid_t) -> i128 {
    nix::time::clock_gettime(nix::time::ClockId::from_raw(clock)).map_or(0, |t| {
        t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128
    })
}

/// A pipe (read end, write end) with `O_CLOEXEC` and the extra `flags` (`nix`).
pub fn pipe(nonblock: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::OFlag;
    let mut flags = OFlag::O_CLOEXEC;
    if nonblock {
        flags |= OFlag::O_NONBLOCK;
    }
    nix::unistd::pipe2(flags).map_err(io::Error::from)
}

/// A close-on-exec stream socket, TCP or MPTCP (`nix` has no MPTCP protocol).
pub fn stream_socket(v6: bool, mptcp: bool) -> io::Result<OwnedFd> {
    const IPPROTO_MPTCP: libc::c_int = 262;
    let dom = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    let proto = if mptcp { IPPROTO_MPTCP } else { 0 };
    // SAFETY: socket(2) with integer arguments.
    let fd = check(
        unsafe { libc::socket(dom, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, proto) } as libc::c_long,
    )? as RawFd;
    // SAFETY: the kernel just returned this new fd; we are its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Takes ownership of a descriptor `nix` returned as a raw number.
pub fn own_new_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: callers pass a descriptor the kernel just created for them, which
    // nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The effective uid (`nix`).
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// This thread at nice 19 until dropped (then back to where it was).
#[derive(Debug)]
pub struct LowPriority(i32);

impl LowPriority {
    pub fn new() -> LowPriority {
        // SAFETY: gettid(2) and getpriority/setpriority(2) on this thread, integers only.
        unsafe {
            let tid = libc::gettid() as libc::id_t;
            let was = libc::getpriority(libc::PRIO_PROCESS, tid);
            libc::setpriority(libc::PRIO_PROCESS, tid, 19);
            LowPriority(was)
        }
    }
}

impl Default for LowPriority {
    fn default() -> LowPriority {
        LowPriority::new()
    }
}

impl Drop for LowPriority {
    fn drop(&mut self) {
        // SAFETY: as above; raising it back needs CAP_SYS_NICE, which a driver that
        // may ptrace the program has as root (otherwise it stays low: harmless).
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, self.0) };
    }
}

/// Sends `sig` to thread `tid` of process `pid`.
pub fn tgkill(pid: i32, tid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: tgkill takes three integers and touches no memory of ours.
    check(unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) }).map(|_| ())
}

/// A new anonymous memory file (close-on-exec), through `nix`.
pub fn memfd(name: &str) -> io::Result<OwnedFd> {
    let name = std::ffi::CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    nix::sys::memfd::memfd_create(&name, nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
        .map_err(io::Error::from)
}

pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = check(rc)? as RawFd;
    // SAFETY: the kernel just returned this new fd; we are its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Duplicates `target_fd` of the process behind `pidfd` into this process.
pub fn pidfd_getfd(pidfd: RawFd, target_fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes three integers.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, target_fd, 0) };
    let fd = check(rc)? as RawFd;
    // SAFETY: the kernel just returned this new fd; we are its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads `len` bytes at `addr` in process `pid` into `buf` using `process_vm_readv`
/// with as many iovecs as needed. Returns the number of bytes read.
pub fn read_remote(pid: i32, local: &mut [u8], remote: &[(u64, usize)]) -> io::Result<usize> {
    let mut done = 0usize;
    let mut riov_all: Vec<libc::iovec> = remote
        .iter()
        .map(|&(a, l)| libc::iovec {
            iov_base: a as *mut libc::c_void,
            iov_len: l,
        })
        .collect();
    let total: usize = remote.iter().map(|r| r.1).sum();
    if total > local.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "local buffer too small",
        ));
    }
    let mut idx = 0usize;
    while idx < riov_all.len() {
        let n = (riov_all.len() - idx).min(1024);
        let want: usize = riov_all[idx..idx + n].iter().map(|v| v.iov_len).sum();
        let liov = libc::iovec {
            iov_base: local[done..].as_mut_ptr() as *mut libc::c_void,
            iov_len: want,
        };
        // SAFETY: `liov` covers `want` bytes inside `local` (checked against `total`);
        // the remote iovecs describe the other process's memory, which the kernel checks.
        let rc =
            unsafe { libc::process_vm_readv(pid, &liov, 1, riov_all[idx..].as_ptr(), n as u64, 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut got = rc as usize;
        done += got;
        if got == want {
            idx += n;
            continue;
        }
        // Partial read: advance through the iovecs; an iovec that made no progress is an error.
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "process_vm_readv made no progress at remote address {:#x}",
                    riov_all[idx].iov_base as u64
                ),
            ));
        }
        while got > 0 {
            let v = &mut riov_all[idx];
            if got >= v.iov_len {
                got -= v.iov_len;
                idx += 1;
            } else {
                v.iov_base = (v.iov_base as u64 + got as u64) as *mut libc::c_void;
                v.iov_len -= got;
                got = 0;
            }
        }
    }
    Ok(done)
}

/// Writes `data` to `addr` in process `pid`.
pub fn write_remote(pid: i32, addr: u64, data: &[u8]) -> io::Result<()> {
    let liov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let riov = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: `liov` covers exactly `data`; the kernel validates the remote range.
    let rc = unsafe { libc::process_vm_writev(pid, &liov, 1, &riov, 1, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if rc as usize != data.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short remote write at {addr:#x}"),
        ));
    }
    Ok(())
}

/// `pread` into `buf` at `offset`, retrying on EINTR; returns bytes read.
pub fn pread(fd: RawFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is a live mutable slice of `buf.len()` bytes.
        let rc = unsafe {
            libc::pread(
                fd,
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                offset as i64,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        return Ok(rc as usize);
    }
}

/// The XSAVE area size for the features this CPU and kernel enable (CPUID 0xD.0 EBX)
/// and XCR0. An image records both; restoring on another layout is refused.
pub fn host_xsave_layout() -> (u32, u64) {
    let r = core::arch::x86_64::__cpuid_count(0xd, 0);
    let xcr0_lo: u32;
    let xcr0_hi: u32;
    // SAFETY: XGETBV with ECX=0 reads XCR0; it is allowed in user mode when
    // CR4.OSXSAVE is set, which Linux sets on every CPU with XSAVE.
    unsafe {
        core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") xcr0_lo, out("edx") xcr0_hi, options(nomem, nostack));
    }
    (r.ebx, (u64::from(xcr0_hi) << 32) | u64::from(xcr0_lo))
}

/// Writes each `(bytes, remote address)` pair into process `pid` with
/// `process_vm_writev`, up to 1024 pairs a call. Errors name the first address of
/// the call that failed.
pub fn write_remote_vec(pid: i32, pairs: &[(&[u8], u64)]) -> io::Result<()> {
    for chunk in pairs.chunks(1024) {
        let local: Vec<libc::iovec> = chunk
            .iter()
            .map(|(b, _)| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        let remote: Vec<libc::iovec> = chunk
            .iter()
            .map(|(b, a)| libc::iovec {
                iov_base: *a as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        let want: usize = chunk.iter().map(|(b, _)| b.len()).sum();
        // SAFETY: every local iovec covers a live slice of `pairs`; the kernel checks
        // the remote ranges.
        let rc = unsafe {
            libc::process_vm_writev(
                pid,
                local.as_ptr(),
                local.len() as u64,
                remote.as_ptr(),
                remote.len() as u64,
                0,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if rc as usize != want {
            // A short write: finish the rest one pair at a time (rare).
            let mut done = rc as usize;
            for (b, a) in chunk {
                if done >= b.len() {
                    done -= b.len();
                    continue;
                }
                write_remote(pid, a + done as u64, &b[done..])?;
                done = 0;
            }
        }
    }
    Ok(())
}
