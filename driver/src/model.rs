//! The epoch: one owned model of everything a checkpoint holds, shared by every
//! stage. A capture produces one ([`crate::capture::Capture`] adds the staged page
//! bytes and timings), the image file is its codec ([`crate::image`]), `inspect`
//! renders it, and restore rebuilds a process from it plus a [`PageSource`] (an
//! image file, a chain of epochs, or a backup's in-memory store).

use crate::capture::creds::ThreadCreds;
use crate::capture::fds::FdCapture;
use crate::capture::identity::FileIdentity;
use crate::capture::inject::Restart;
use crate::linux::sys::UserRegs;

pub const PAGE: u64 = 4096;

/// One epoch of a program: its state at one freeze. A full epoch restores on its
/// own; a delta holds the metadata in full and only the pages that changed since
/// the previous epoch of its chain.
#[derive(Clone, Debug, Default)]
pub struct Epoch {
    /// Epoch number in its chain (1 for a lone `dump`).
    pub number: u64,
    /// A full epoch, or a delta of a chain.
    pub full: bool,
    /// Wall-clock time of the freeze, ns since the Unix epoch.
    pub wall_ns: u64,
    pub process: Process,
    /// Every thread, ordered by the tid the program sees.
    pub threads: Vec<Thread>,
    /// Signal handlers for 1..=64 (index 0 = signal 1).
    pub sigactions: Vec<SigAction>,
    /// The mappings, in address order.
    pub vmas: Vec<Vma>,
    pub fds: Vec<FdCapture>,
    /// Identity of every mapped file (checked before a restore starts anything).
    pub files: Vec<FileIdentity>,
    /// In a delta: page ranges `[start, end)` that read as zero (released since
    /// the previous epoch, or never touched in a mapping new since then).
    pub zeros: Vec<(u64, u64)>,
}

/// Process-wide state.
#[derive(Clone, Debug, Default)]
pub struct Process {
    /// The pid the program sees (innermost NSpid).
    pub pid: i32,
    pub exe: Vec<u8>,
    pub cwd: Vec<u8>,
    pub comm: Vec<u8>,
    pub umask: u32,
    pub rlimits: Vec<Rlimit>,
    pub auxv: Vec<u8>,
    pub mm: MmLayout,
    pub xsave_size: u32,
    pub xcr0: u64,
    /// The program's CLOCK_MONOTONIC / CLOCK_BOOTTIME at the freeze (its time
    /// namespace included).
    pub monotonic_ns: u64,
    pub boottime_ns: u64,
    pub kernel_release: Vec<u8>,
    /// The program was in a job-control stop (SIGSTOP): it is restored stopped.
    pub stopped: bool,
}

impl Epoch {
    /// The thread ids the program sees, in order.
    pub fn tids(&self) -> Vec<i32> {
        self.threads.iter().map(|t| t.tid).collect()
    }

    /// Every thread's credentials, by the tid the program sees.
    pub fn creds(&self) -> Vec<(i32, ThreadCreds)> {
        self.threads
            .iter()
            .map(|t| (t.tid, t.creds.clone()))
            .collect()
    }
}

/// Where the bytes of an epoch's stored pages come from: runs of consecutive
/// pages in address order, each readable as one slice. What `at` means is the
/// source's business (an offset in a staging buffer or an image file, an index
/// in a store); consumers only ask for [`PageSource::bytes`].
pub trait PageSource: Send + Sync {
    /// The stored runs, sorted by address and disjoint.
    fn runs(&self) -> &[PageRun];
    /// The bytes of `runs()[i]`: `npages * PAGE` long.
    fn bytes(&self, i: usize) -> &[u8];
    /// Brings every byte into memory ahead of a bulk copy (a hint).
    fn populate(&self) {}
}

/// Address-ordered lookup of the run holding `addr`.
pub fn run_at(runs: &[PageRun], addr: u64) -> Option<usize> {
    let i = runs.partition_point(|r| r.start + r.npages * PAGE <= addr);
    runs.get(i).filter(|r| r.start <= addr).map(|_| i)
}

/// One thread's state.
#[derive(Clone, Debug)]
pub struct Thread {
    /// Thread id in the driver's pid namespace.
    pub host_tid: i32,
    /// Thread id as the program sees it (innermost NSpid).
    pub tid: i32,
    pub comm: Vec<u8>,
    /// Registers exactly as found at the stop.
    pub regs: UserRegs,
    pub restart: Restart,
    pub xsave: Vec<u8>,
    pub sigmask: u64,
    pub altstack: (u64, u32, u64),
    /// Ids, groups, capabilities, securebits, no_new_privs, seccomp (and dumpable).
    pub creds: crate::capture::creds::ThreadCreds,
}

/// What a mapping is backed by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmaKind {
    Anonymous,
    File { path: Vec<u8>, offset: u64 },
    Vdso,
    Vvar,
    VvarVclock,
    Stack,
    Heap,
    Vsyscall,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub prot: u8,
    pub shared: bool,
    pub growsdown: bool,
    /// `MAP_DROPPABLE` (VmFlags `dp`): contents are never stored; restored zeroed, as
    /// after a fork with wipe-on-fork (Go's vgetrandom state then reseeds).
    pub droppable: bool,
    /// Mapped without read access: an address-space reservation, never read.
    pub reservation: bool,
    /// MAP_NORESERVE (VmFlags `nr`).
    pub noreserve: bool,
    /// madvise state that splits VMAs and must come back: `hg`, `nh`, `dd`, `wf`.
    pub hugepage: bool,
    pub nohugepage: bool,
    pub dontdump: bool,
    pub wipeonfork: bool,
    pub kind: VmaKind,
}

pub const PROT_R: u8 = 1;
pub const PROT_W: u8 = 2;
pub const PROT_X: u8 = 4;

/// A run of consecutive stored pages; `offset` locates its bytes in their
/// source (see [`PageSource`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRun {
    pub start: u64,
    pub npages: u64,
    pub offset: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SigAction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// Fields of `/proc/PID/stat` that describe the mm layout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmLayout {
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
}
