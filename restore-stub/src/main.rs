//! `cs-restore-stub`: the static, `no_std`, `no_main` restorer.
//!
//! Invoked by the driver as `cs-restore-stub IMAGE_FD REPORT_FD` in a fresh process
//! whose pid, fds, cwd, umask, rlimits and namespaces the driver already prepared.
//! `IMAGE_FD` carries a verified checkpoint stream with raw page runs, in order:
//! ProcessInfo, VmaTable(s), SignalTable, ThreadState(s), PageRun(s), EpochCommit.
//!
//! Order of work:
//! 1. switch to the stack in our bss and unmap everything but the stub itself
//!    (the kernel's stack, vDSO and vvar could sit where the target needs memory);
//! 2. map every VMA at its address (writable while filling), fill stored pages by
//!    reading straight into place, then set each VMA's final protection;
//! 3. install signal handlers, `PR_SET_MM_MAP` the mm layout and auxv, map the vDSO
//!    at the checkpointed address (`ARCH_MAP_VDSO_64`);
//! 4. build every thread's `rt_sigframe`, create the threads with their tids
//!    (`clone3` + `set_tid`); each sets its fs_base and name and parks;
//! 5. report to the driver (gadget address, frames, the stub's extent) and park.
//!
//! The driver then steps each thread through `rt_sigreturn` at the gadget and
//! unmaps the stub from the main thread (see the driver's `restore` module).
//!
//! What stub code must not do: allocate (there is no allocator), format text, or
//! panic (the panic handler traps); touch target memory except through the image's
//! VMAs after they are mapped; use fs-relative (TLS) addressing.
#![no_std]
#![no_main]

use core::arch::global_asm;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, Ordering};

use core_format::{
    FdTable, FrameHeader, FrameKind, ProcessInfo, SignalTable, ThreadState, VmaFlags, VmaKind,
    VmaTable,
};
use restore_stub::arch::{self, nr, syscall3, syscall6, CloneArgs, KernelSigaction, PrctlMmMap};
use restore_stub::report::{self, Phase};
use restore_stub::sigframe::{self, ThreadInput};
use restore_stub::{MAX_THREADS, MAX_VMAS, THREAD_SLOT_BYTES, THREAD_STACK_BYTES};

mod mem;

const STACK_BYTES: usize = 256 << 10;
const PAGE: u64 = 4096;
const TASK_END: u64 = 0x7fff_ffff_f000;
const FRAME_BUF_BYTES: usize = core_format::MAX_PAYLOAD_BYTES as usize;

/// A bss buffer handed out as raw pointers; the stub is single-threaded while it
/// uses them, and each thread slot is written only by the thread that owns it.
#[repr(C, align(4096))]
struct Bss<const N: usize>(UnsafeCell<[u8; N]>);
// SAFETY: see the type's docs: accesses are serialised by the restore order.
unsafe impl<const N: usize> Sync for Bss<N> {}
impl<const N: usize> Bss<N> {
    const fn new() -> Self {
        Bss(UnsafeCell::new([0; N]))
    }
    fn ptr(&self) -> *mut u8 {
        self.0.get() as *mut u8
    }
}

static STUB_STACK: Bss<STACK_BYTES> = Bss::new();
static FRAME_BUF: Bss<FRAME_BUF_BYTES> = Bss::new();
static THREAD_AREA: Bss<{ MAX_THREADS * THREAD_SLOT_BYTES }> = Bss::new();
static VMA_LIST: Bss<{ MAX_VMAS * 32 }> = Bss::new();
static AUXV: Bss<4096> = Bss::new();
static REPORT: Bss<{ report::MAX_LEN }> = Bss::new();
/// Threads that finished their setup.
static READY: AtomicU32 = AtomicU32::new(0);
/// Never changes: parked threads wait on it.
static PARK: AtomicU32 = AtomicU32::new(0);

// The kernel enters at `_start` with rsp pointing at argc. Keep that pointer, move
// to our own stack in the bss (the kernel's stack may overlap the target's memory).
global_asm!(
    ".globl _start",
    "_start:",
    "xor ebp, ebp",
    "mov rdi, rsp",
    "lea rsp, [rip + {stack} + {size}]",
    "and rsp, -16",
    "call {entry}",
    "ud2",
    // `stub_clone3(args, size, entry, arg)`: clone3 whose child calls `entry(arg)` on
    // the new stack. r12/r13 carry entry/arg into the child (it starts with a copy of
    // the parent's registers); the parent restores them before returning.
    ".globl stub_clone3",
    "stub_clone3:",
    "push r12",
    "push r13",
    "mov r12, rdx",
    "mov r13, rcx",
    "mov eax, 435",
    "syscall",
    "test rax, rax",
    "jz 2f",
    "pop r13",
    "pop r12",
    "ret",
    "2:",
    "xor ebp, ebp",
    "and rsp, -16",
    "mov rdi, r13",
    "call r12",
    "ud2",
    // A bare `syscall` the driver points threads at for the final rt_sigreturn and
    // munmap; they never fall through (the driver stops them at syscall exit).
    ".globl stub_syscall_gadget",
    "stub_syscall_gadget:",
    "syscall",
    "ud2",
    stack = sym STUB_STACK,
    size = const STACK_BYTES,
    entry = sym stub_main,
);

unsafe extern "C" {
    fn stub_clone3(
        args: *const CloneArgs,
        size: usize,
        entry: extern "C" fn(usize) -> !,
        arg: usize,
    ) -> isize;
    fn stub_syscall_gadget();
    static __ehdr_start: u8;
    static _end: u8;
}

/// A failure: phase, kernel result, and the address or value concerned.
#[derive(Clone, Copy)]
struct Fail(Phase, i64, u64);

type R<T> = Result<T, Fail>;

fn check(rc: isize, phase: Phase, addr: u64) -> R<usize> {
    if rc < 0 {
        Err(Fail(phase, rc as i64, addr))
    } else {
        Ok(rc as usize)
    }
}

/// Per-thread slot: [stack | frame]. The frame's address is 64-byte aligned.
fn slot(i: usize) -> *mut u8 {
    // SAFETY: i < MAX_THREADS is checked by every caller before calling.
    unsafe { THREAD_AREA.ptr().add(i * THREAD_SLOT_BYTES) }
}

/// What each thread slot records besides its frame.
#[derive(Clone, Copy)]
#[repr(C)]
struct SlotInfo {
    tid: u32,
    _pad: u32,
    fs_base: u64,
    rsp: u64,
    comm: [u8; 16],
}
const SLOT_INFO_OFF: usize = THREAD_STACK_BYTES - 64;

fn slot_info(i: usize) -> *mut SlotInfo {
    // SAFETY: the info block sits at the top of the slot's stack area, inside the slot.
    unsafe { slot(i).add(SLOT_INFO_OFF) as *mut SlotInfo }
}

fn frame_base(i: usize) -> *mut u8 {
    // SAFETY: THREAD_STACK_BYTES < THREAD_SLOT_BYTES; the slot is page aligned.
    unsafe { slot(i).add(THREAD_STACK_BYTES) }
}

struct Args {
    image_fd: usize,
    report_fd: usize,
    /// With a third argument the driver fills the pages itself (in parallel, with
    /// process_vm_writev): at the first page run the stub writes `CSPG` to the report
    /// fd, waits for one byte on this fd, and then skips every page run.
    go_fd: Option<usize>,
}

fn parse_args(sp: *const usize) -> R<Args> {
    // SAFETY: at process entry rsp points at argc, followed by argc argv pointers,
    // each to a NUL-terminated string on the initial stack.
    let (argc, argv) = unsafe { (*sp, sp.add(1) as *const *const u8) };
    if argc < 3 {
        return Err(Fail(Phase::Args, 0, argc as u64));
    }
    let arg = |i: usize| -> &'static [u8] {
        // SAFETY: i < argc; the string is NUL-terminated (kernel guarantee).
        unsafe {
            let p = *argv.add(i);
            let mut n = 0;
            while *p.add(n) != 0 {
                n += 1;
            }
            core::slice::from_raw_parts(p, n)
        }
    };
    let image_fd = restore_stub::parse_decimal(arg(1)).ok_or(Fail(Phase::Args, 0, 1))? as usize;
    let report_fd = restore_stub::parse_decimal(arg(2)).ok_or(Fail(Phase::Args, 0, 2))? as usize;
    let go_fd = if argc > 3 {
        Some(restore_stub::parse_decimal(arg(3)).ok_or(Fail(Phase::Args, 0, 3))? as usize)
    } else {
        None
    };
    Ok(Args {
        image_fd,
        report_fd,
        go_fd,
    })
}

fn stub_extent() -> (u64, u64) {
    // SAFETY: linker-defined symbols; only their addresses are taken.
    let (s, e) = unsafe { (&__ehdr_start as *const u8 as u64, &_end as *const u8 as u64) };
    (s & !(PAGE - 1), (e + PAGE - 1) & !(PAGE - 1))
}

/// `pread` of exactly `len` bytes at `off` (the image is a seekable file or memfd).
fn read_exact(fd: usize, dst: *mut u8, len: usize, off: u64) -> R<()> {
    let mut done = 0;
    while done < len {
        // SAFETY: dst..dst+len is writable memory the caller mapped or owns.
        let rc = unsafe {
            syscall6(
                nr::PREAD64,
                fd,
                dst as usize + done,
                len - done,
                off as usize + done,
                0,
                0,
            )
        };
        if rc == -4 {
            continue;
        }
        if rc <= 0 {
            return Err(Fail(Phase::ReadImage, rc as i64, done as u64));
        }
        done += rc as usize;
    }
    Ok(())
}

/// Restored VMA bookkeeping: start, end, final prot, flags(bit0: needs mprotect).
#[derive(Clone, Copy)]
#[repr(C)]
struct VmaRec {
    start: u64,
    end: u64,
    prot: u64,
    fixup: u64,
}

fn vma_rec(i: usize) -> *mut VmaRec {
    // SAFETY: i < MAX_VMAS is checked by callers.
    unsafe { (VMA_LIST.ptr() as *mut VmaRec).add(i) }
}

struct State {
    pid: u32,
    xsave_len: usize,
    nvmas: usize,
    nthreads: usize,
    /// Index of the main thread's slot.
    main_slot: Option<usize>,
    vdso_at: Option<u64>,
    mm: PrctlMmMap,
    have_mm: bool,
}

fn map_vma(st: &mut State, v: &core_format::Vma<'_>) -> R<()> {
    let len = (v.end - v.start) as usize;
    let prot_final = v.prot.bits() as usize;
    match v.kind {
        VmaKind::Vsyscall | VmaKind::Vdso | VmaKind::VvarVclock => return Ok(()),
        VmaKind::Vvar => {
            st.vdso_at = Some(v.start);
            return Ok(());
        }
        _ => {}
    }
    let reservation = v.is_reservation();
    // A shared file mapping is the file itself: mapped shared, nothing to fill.
    let shared = v.flags.contains(VmaFlags::SHARED);
    // Writable while pages are filled; fixed up to the final protection afterwards.
    let prot = if reservation || shared && prot_final == 0 {
        0
    } else if shared {
        prot_final
    } else {
        prot_final | arch::PROT_WRITE
    };
    let mut flags = arch::MAP_FIXED_NOREPLACE;
    if v.flags.contains(VmaFlags::DROPPABLE) {
        flags |= arch::MAP_DROPPABLE;
    } else if shared {
        flags |= arch::MAP_SHARED;
    } else {
        flags |= arch::MAP_PRIVATE;
    }
    if v.flags.contains(VmaFlags::NORESERVE) {
        flags |= arch::MAP_NORESERVE;
    }
    if v.flags.contains(VmaFlags::GROWSDOWN) {
        flags |= arch::MAP_GROWSDOWN;
    }
    let rc = if v.kind == VmaKind::File {
        let mut path = [0u8; 4097];
        if v.path.len() >= path.len() {
            return Err(Fail(Phase::OpenFile, -36, v.start));
        }
        path[..v.path.len()].copy_from_slice(v.path);
        // SAFETY: `path` is NUL-terminated and lives across the call.
        let fd = unsafe {
            syscall3(
                nr::OPEN,
                path.as_ptr() as usize,
                // O_CLOEXEC, and O_RDWR only for a writable shared mapping.
                0o2000000
                    | if shared && prot_final & arch::PROT_WRITE != 0 {
                        2
                    } else {
                        0
                    },
                0,
            )
        };
        let fd = check(fd, Phase::OpenFile, v.start)?;
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; the range
        // was checked against the stub's extent by the driver.
        let rc = unsafe {
            syscall6(
                nr::MMAP,
                v.start as usize,
                len,
                prot,
                flags,
                fd,
                v.file_offset as usize,
            )
        };
        // SAFETY: closing the fd we opened.
        unsafe { syscall3(nr::CLOSE, fd, 0, 0) };
        rc
    } else {
        // SAFETY: as above, an anonymous mapping at a free address.
        unsafe {
            syscall6(
                nr::MMAP,
                v.start as usize,
                len,
                prot,
                flags | arch::MAP_ANONYMOUS,
                usize::MAX,
                0,
            )
        }
    };
    let got = check(rc, Phase::MapVma, v.start)?;
    if got as u64 != v.start {
        return Err(Fail(Phase::MapVma, -17, v.start));
    }
    // madvise state that shows in VmFlags (and keeps VMAs apart as in the original).
    for (flag, advice) in [
        (VmaFlags::HUGEPAGE, 14usize),
        (VmaFlags::NOHUGEPAGE, 15),
        (VmaFlags::DONTDUMP, 16),
        (VmaFlags::WIPEONFORK, 18),
    ] {
        if v.flags.contains(flag)
            && !(flag == VmaFlags::WIPEONFORK && v.flags.contains(VmaFlags::DROPPABLE))
        {
            // SAFETY: madvise on the range we just mapped.
            let rc = unsafe { syscall3(nr::MADVISE, v.start as usize, len, advice) };
            check(rc, Phase::MapVma, v.start)?;
        }
    }
    if st.nvmas >= MAX_VMAS {
        return Err(Fail(Phase::TooManyVmas, 0, st.nvmas as u64));
    }
    // SAFETY: index checked above; VMA_LIST is only used by this thread.
    unsafe {
        *vma_rec(st.nvmas) = VmaRec {
            start: v.start,
            end: v.end,
            prot: prot_final as u64,
            fixup: u64::from(prot != prot_final),
        };
    }
    st.nvmas += 1;
    Ok(())
}

/// True if `[start, end)` is covered by restored, accessible VMAs (a run may span
/// adjacent VMAs, e.g. the end of a file's data and the anonymous bss after it).
fn page_in_vmas(st: &State, start: u64, end: u64) -> bool {
    let mut cur = start;
    while cur < end {
        let next = (0..st.nvmas).find_map(|i| {
            // SAFETY: i < nvmas <= MAX_VMAS.
            let r = unsafe { *vma_rec(i) };
            (cur >= r.start && cur < r.end && r.prot != 0).then_some(r.end)
        });
        match next {
            Some(e) => cur = e,
            None => return false,
        }
    }
    true
}

fn take_thread(st: &mut State, t: &ThreadState<'_>) -> R<()> {
    let is_main = t.tid == st.pid;
    // Slot 0 is the main thread's (this thread); the others take slots from 1.
    let idx = if is_main { 0 } else { st.nthreads.max(1) };
    if idx >= MAX_THREADS {
        return Err(Fail(Phase::TooManyThreads, 0, t.tid as u64));
    }
    let base = frame_base(idx);
    let room = THREAD_SLOT_BYTES - THREAD_STACK_BYTES;
    // SAFETY: the frame area of slot `idx` is `room` bytes of our bss.
    let out = unsafe { core::slice::from_raw_parts_mut(base, room) };
    let restart = match t.restart {
        core_format::Restart::None => sigframe::Restart::None,
        core_format::Restart::Restart => sigframe::Restart::Restart,
        core_format::Restart::Eintr => sigframe::Restart::Eintr,
    };
    let input = ThreadInput {
        regs: &t.regs,
        restart,
        xsave: t.xsave,
        sigmask: t.sigmask,
        altstack: (t.altstack.sp, t.altstack.flags, t.altstack.size),
    };
    let rsp = sigframe::build(out, base as u64, &input)
        .map_err(|_| Fail(Phase::Frame, 0, t.tid as u64))?;
    let mut comm = [0u8; 16];
    let n = t.comm.len().min(15);
    comm[..n].copy_from_slice(&t.comm[..n]);
    // SAFETY: slot info lives in slot `idx`, owned by this (single) thread for now.
    unsafe {
        *slot_info(idx) = SlotInfo {
            tid: t.tid,
            _pad: 0,
            fs_base: t.regs[sigframe::reg::FS_BASE],
            rsp,
            comm,
        };
    }
    if is_main {
        st.main_slot = Some(0);
    }
    st.nthreads = st.nthreads.max(idx + 1);
    Ok(())
}

/// Every VMA is mapped (and writable): lets the driver fill them, now or lazily
/// through a userfaultfd made here (this mm's). Reports `CSPG` and the uffd's
/// number on `report_fd`, then waits for one byte on `go`.
fn hand_over(report_fd: usize, go: usize) -> R<()> {
    // SAFETY: userfaultfd takes flags; write/read/close on our own fds from live
    // buffers.
    unsafe {
        let ufd = syscall3(
            nr::USERFAULTFD,
            0o2_000_000 | 0o4_000, /* O_CLOEXEC | O_NONBLOCK */
            0,
            0,
        );
        let mut msg = [0u8; restore_stub::report::PAGES_MSG_LEN];
        msg[..4].copy_from_slice(&restore_stub::report::PAGES_MAGIC);
        msg[4..].copy_from_slice(&(ufd as i32).to_le_bytes());
        syscall3(nr::WRITE, report_fd, msg.as_ptr() as usize, msg.len());
        let mut b = [0u8; 1];
        let rc = syscall3(nr::READ, go, b.as_mut_ptr() as usize, 1);
        if rc != 1 {
            return Err(Fail(Phase::FillPages, rc as i64, 0));
        }
        syscall3(nr::CLOSE, go, 0, 0);
        if ufd >= 0 {
            syscall3(nr::CLOSE, ufd as usize, 0, 0);
        }
    }
    Ok(())
}

/// A PageRun frame whose payload starts at `off` and is `plen` bytes: the trailer
/// (start, npages, encoding, data checksum) is read first, then the data straight
/// into place. The driver verified every checksum before starting the stub.
fn fill_pages(st: &State, fd: usize, off: u64, plen: usize) -> R<()> {
    if plen < 24 {
        return Err(Fail(Phase::Format, 0, off));
    }
    let data_len = plen - 24;
    let mut t = [0u8; 24];
    read_exact(fd, t.as_mut_ptr(), 24, off + data_len as u64)?;
    let start = u64::from_le_bytes([t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]]);
    let npages = u64::from(u32::from_le_bytes([t[8], t[9], t[10], t[11]]));
    let encoding = u32::from_le_bytes([t[12], t[13], t[14], t[15]]);
    let len = npages * PAGE;
    if start % PAGE != 0 || npages == 0 || npages > u64::from(core_format::MAX_RUN_PAGES) {
        return Err(Fail(Phase::Format, 0, start));
    }
    if !page_in_vmas(st, start, start + len) {
        return Err(Fail(Phase::PageOutsideVma, 0, start));
    }
    match encoding {
        1 if data_len as u64 == len => {
            // Fault the run in with one call (cheaper than a trap per page while
            // the kernel copies into it); a failure here only costs speed.
            // SAFETY: madvise on pages of a VMA we mapped writable.
            unsafe {
                syscall3(
                    nr::MADVISE,
                    start as usize,
                    len as usize,
                    23, /* MADV_POPULATE_WRITE */
                )
            };
            read_exact(fd, start as *mut u8, len as usize, off)
        }
        2 if data_len == 0 => Ok(()),
        _ => Err(Fail(Phase::Format, i64::from(encoding), start)),
    }
}

fn set_signals(t: &SignalTable<'_>) -> R<()> {
    for (signo, a) in t.iter() {
        if signo == 9 || signo == 19 || (a.handler == 0 && a.flags == 0 && a.mask == 0) {
            continue;
        }
        let ka = KernelSigaction {
            handler: a.handler,
            flags: a.flags,
            restorer: a.restorer,
            mask: a.mask,
        };
        // SAFETY: `ka` is a live kernel sigaction; no old action is requested.
        let rc = unsafe {
            syscall6(
                nr::RT_SIGACTION,
                signo as usize,
                &ka as *const _ as usize,
                0,
                8,
                0,
                0,
            )
        };
        check(rc, Phase::Sigaction, signo as u64)?;
    }
    Ok(())
}

fn take_process(st: &mut State, p: &ProcessInfo<'_>) -> R<()> {
    st.pid = p.pid;
    st.xsave_len = p.xsave_size_bytes as usize;
    let n = p.auxv.len().min(4096);
    // SAFETY: AUXV is 4096 bytes of our bss; n <= 4096.
    unsafe { core::ptr::copy_nonoverlapping(p.auxv.as_ptr(), AUXV.ptr(), n) };
    let m = &p.mm;
    st.mm = PrctlMmMap {
        start_code: m.start_code,
        end_code: m.end_code,
        start_data: m.start_data,
        end_data: m.end_data,
        start_brk: m.start_brk,
        brk: m.brk,
        start_stack: m.start_stack,
        arg_start: m.arg_start,
        arg_end: m.arg_end,
        env_start: m.env_start,
        env_end: m.env_end,
        auxv: AUXV.ptr() as u64,
        auxv_size: n as u32,
        exe_fd: u32::MAX,
    };
    st.have_mm = true;
    Ok(())
}

fn restore(args: &Args) -> R<State> {
    let mut st = State {
        pid: 0,
        xsave_len: 0,
        nvmas: 0,
        nthreads: 0,
        main_slot: None,
        vdso_at: None,
        mm: PrctlMmMap::default(),
        have_mm: false,
    };
    // 1. Nothing but the stub stays mapped.
    let (lo, hi) = stub_extent();
    // SAFETY: unmapping address ranges outside the stub's own image and bss; the
    // arguments were parsed already and no other memory is in use.
    unsafe {
        check(syscall3(nr::MUNMAP, 0, lo as usize, 0), Phase::UnmapOld, 0)?;
        check(
            syscall3(nr::MUNMAP, hi as usize, (TASK_END - hi) as usize, 0),
            Phase::UnmapOld,
            hi,
        )?;
    }
    // 2. Records, in stream order.
    let fd = args.image_fd;
    let mut hdr = [0u8; core_format::HEADER_LEN];
    let mut pos: u64 = 0;
    loop {
        read_exact(fd, hdr.as_mut_ptr(), hdr.len(), pos)?;
        let h = FrameHeader::parse_bytes(&hdr).map_err(|_| Fail(Phase::Format, 0, pos))?;
        let plen = h.payload_len as usize;
        let payload_at = pos + hdr.len() as u64;
        pos = payload_at + plen as u64;
        if h.kind == FrameKind::PageRun {
            match args.go_fd {
                None => fill_pages(&st, fd, payload_at, plen)?,
                Some(go) => {
                    hand_over(args.report_fd, go)?;
                    // The driver verified the image, including that nothing but
                    // page runs and the epoch commit follow the first page run.
                    break;
                }
            }
            continue;
        }
        if plen > FRAME_BUF_BYTES {
            return Err(Fail(Phase::Format, 0, plen as u64));
        }
        read_exact(fd, FRAME_BUF.ptr(), plen, payload_at)?;
        // SAFETY: the first `plen` bytes of FRAME_BUF were just filled.
        let payload = unsafe { core::slice::from_raw_parts(FRAME_BUF.ptr(), plen) };
        h.verify_payload(payload)
            .map_err(|_| Fail(Phase::Format, 1, h.kind as u64))?;
        let fmt = |_| Fail(Phase::Format, 2, h.kind as u64);
        match h.kind {
            FrameKind::ProcessInfo => {
                take_process(&mut st, &ProcessInfo::parse(payload).map_err(fmt)?)?
            }
            FrameKind::VmaTable => {
                let t = VmaTable::parse(payload).map_err(fmt)?;
                for v in t.vmas.iter() {
                    map_vma(&mut st, &v)?;
                }
            }
            FrameKind::SignalTable => set_signals(&SignalTable::parse(payload).map_err(fmt)?)?,
            FrameKind::ThreadState => {
                take_thread(&mut st, &ThreadState::parse(payload).map_err(fmt)?)?
            }
            FrameKind::FdTable => {
                // The driver installed every fd without FD_CLOEXEC so they survive our
                // exec; put the program's close-on-exec flags back.
                let t = FdTable::parse(payload).map_err(fmt)?;
                for f in t.fds.iter() {
                    if f.fd_flags.bits() & 1 != 0
                        && f.fd as usize != args.image_fd
                        && f.fd as usize != args.report_fd
                    {
                        // SAFETY: fcntl(F_SETFD) with integers.
                        unsafe {
                            syscall3(
                                nr::FCNTL,
                                f.fd as usize,
                                2, /* F_SETFD */
                                1, /* FD_CLOEXEC */
                            )
                        };
                    }
                }
            }
            FrameKind::EpochCommit => {
                // Metadata only (the driver fills every page from its page
                // source): hand over at the end of the frames.
                if let Some(go) = args.go_fd {
                    hand_over(args.report_fd, go)?;
                }
                break;
            }
            _ => {}
        }
    }
    // 3. Final protections.
    for i in 0..st.nvmas {
        // SAFETY: i < nvmas.
        let r = unsafe { *vma_rec(i) };
        if r.fixup != 0 {
            // SAFETY: changing protection of a VMA we mapped.
            let rc = unsafe {
                syscall3(
                    nr::MPROTECT,
                    r.start as usize,
                    (r.end - r.start) as usize,
                    r.prot as usize,
                )
            };
            check(rc, Phase::Protect, r.start)?;
        }
    }
    if st.have_mm {
        // SAFETY: `st.mm` is a live prctl_mm_map whose auxv points at AUXV.
        let rc = unsafe {
            syscall6(
                nr::PRCTL,
                arch::PR_SET_MM,
                arch::PR_SET_MM_MAP,
                &st.mm as *const _ as usize,
                104,
                0,
                0,
            )
        };
        check(rc, Phase::SetMm, st.mm.start_brk)?;
    }
    if let Some(at) = st.vdso_at {
        // SAFETY: maps a fresh vvar/vdso block at a free address (no vDSO is mapped).
        let rc = unsafe { syscall3(nr::ARCH_PRCTL, arch::ARCH_MAP_VDSO_64, at as usize, 0) };
        check(rc, Phase::Vdso, at)?;
    }
    if st.main_slot.is_none() {
        return Err(Fail(Phase::NoMainThread, 0, st.pid as u64));
    }
    // 4. Threads (slot 0 is the main thread, us).
    for i in 1..st.nthreads {
        // SAFETY: i < nthreads <= MAX_THREADS.
        let info = unsafe { *slot_info(i) };
        let tid = info.tid as i32;
        let args = CloneArgs {
            flags: arch::GO_THREAD_FLAGS,
            stack: slot(i) as u64,
            stack_size: (SLOT_INFO_OFF & !15) as u64,
            set_tid: &tid as *const i32 as u64,
            set_tid_size: 1,
            ..CloneArgs::default()
        };
        // SAFETY: `args` and `tid` outlive the call; the child runs `thread_main` on
        // its own slot's stack.
        let rc = unsafe { stub_clone3(&args, core::mem::size_of::<CloneArgs>(), thread_main, i) };
        check(rc, Phase::CloneThread, tid as u64)?;
    }
    let want = (st.nthreads.max(1) - 1) as u32;
    loop {
        let v = READY.load(Ordering::Acquire);
        if v >= want {
            break;
        }
        // SAFETY: futex wait on a live static word.
        unsafe {
            syscall6(
                nr::FUTEX,
                READY.as_ptr() as usize,
                arch::FUTEX_WAIT_PRIVATE,
                v as usize,
                0,
                0,
                0,
            )
        };
    }
    Ok(st)
}

fn name_and_tls(info: &SlotInfo) {
    // SAFETY: comm is a NUL-terminated 16-byte buffer; arch_prctl takes an integer.
    // fs_base is the program's; the stub uses no TLS.
    unsafe {
        syscall3(nr::PRCTL, arch::PR_SET_NAME, info.comm.as_ptr() as usize, 0);
        syscall3(nr::ARCH_PRCTL, arch::ARCH_SET_FS, info.fs_base as usize, 0);
    }
}

fn park() -> ! {
    loop {
        // SAFETY: futex wait on a live static word that never changes.
        unsafe {
            syscall6(
                nr::FUTEX,
                PARK.as_ptr() as usize,
                arch::FUTEX_WAIT_PRIVATE,
                0,
                0,
                0,
                0,
            )
        };
    }
}

extern "C" fn thread_main(i: usize) -> ! {
    // SAFETY: slot `i` was filled before this thread was created.
    let info = unsafe { *slot_info(i) };
    name_and_tls(&info);
    READY.fetch_add(1, Ordering::Release);
    // SAFETY: futex wake on a live static word.
    unsafe {
        syscall6(
            nr::FUTEX,
            READY.as_ptr() as usize,
            arch::FUTEX_WAKE_PRIVATE,
            1,
            0,
            0,
            0,
        )
    };
    park()
}

fn write_report(fd: usize, len: usize) {
    // SAFETY: REPORT holds `len` initialised bytes.
    unsafe { syscall3(nr::WRITE, fd, REPORT.ptr() as usize, len) };
}

extern "C" fn stub_main(sp: *const usize) -> ! {
    // SAFETY: REPORT is report::MAX_LEN bytes of our bss, used only here.
    let rep = unsafe { core::slice::from_raw_parts_mut(REPORT.ptr(), report::MAX_LEN) };
    let (lo, hi) = stub_extent();
    let gadget = stub_syscall_gadget as *const () as u64;
    let args = match parse_args(sp) {
        Ok(a) => a,
        Err(Fail(p, e, a)) => {
            report::write_header(rep, p as u32, 0, e, a, gadget, lo, hi);
            write_report(2, report::HEADER_LEN);
            arch::exit_group(2);
        }
    };
    match restore(&args) {
        Ok(st) => {
            let n = st.nthreads.max(1);
            report::write_header(rep, 0, n as u32, 0, 0, gadget, lo, hi);
            for i in 0..n {
                // SAFETY: i < nthreads.
                let info = unsafe { *slot_info(i) };
                report::write_entry(rep, i, info.tid, info.rsp);
            }
            // SAFETY: slot 0 holds the main thread's info.
            let main = unsafe { *slot_info(0) };
            name_and_tls(&main);
            // SAFETY: closing our own fds; the report is written first.
            unsafe {
                syscall3(nr::CLOSE, args.image_fd, 0, 0);
                write_report(args.report_fd, report::HEADER_LEN + n * report::ENTRY_LEN);
                syscall3(nr::CLOSE, args.report_fd, 0, 0);
            }
            park()
        }
        Err(Fail(p, e, a)) => {
            report::write_header(rep, p as u32, 0, e, a, gadget, lo, hi);
            write_report(args.report_fd, report::HEADER_LEN);
            arch::exit_group(3)
        }
    }
}

/// The precompiled `core` keeps references to the unwinding personality routine; with
/// `panic = "abort"` nothing ever unwinds, so it is never called.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // No formatting, no unwinding: trap.
    // SAFETY: `ud2` raises SIGILL and never returns; it touches no memory.
    unsafe { core::arch::asm!("ud2", options(noreturn, nostack)) }
}
