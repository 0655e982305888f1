//! `ProcessInfo`: process-wide facts, the first record of every epoch.
//!
//! Payload layout (little-endian, offsets in bytes):
//!
//! | off | size | field |
//! |---|---|---|
//! | 0 | 4 | pid (u32, as the program sees it) |
//! | 4 | 2 | arch (u16, [`Arch`]) |
//! | 6 | 2 | rlimit count (u16, at most [`MAX_RLIMITS`]) |
//! | 8 | 4 | page_size (u32) |
//! | 12 | 4 | xsave_size_bytes (u32) |
//! | 16 | 8 | xcr0 (u64) |
//! | 24 | 4 | thread_count (u32) |
//! | 28 | 4 | umask (u32, at most 0o777) |
//! | 32 | 8 | clock_monotonic_ns (u64) |
//! | 40 | 8 | clock_boottime_ns (u64) |
//! | 48 | 88 | mm layout: 11 × u64 in [`MmLayout`] field order |
//! | 136 | 20 × n | rlimits: resource u32, soft u64, hard u64 |
//! | .. | 4 + n | auxv (u32 length ≤ 1024, bytes), then likewise exe path, cwd, comm (≤ 16), kernel release, Go version |

use heapless::Vec;
use static_assertions::const_assert_eq;

use crate::error::Error;
use crate::wire::{check_cap, emit_all, parse_all, Reader, Writer};

/// Most rlimit entries a ProcessInfo carries.
pub const MAX_RLIMITS: usize = 16;
/// Longest auxv blob in bytes.
pub const MAX_AUXV_BYTES: usize = 1024;
/// Longest path in bytes (Linux PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest `comm` in bytes (Linux TASK_COMM_LEN).
pub const MAX_COMM_BYTES: usize = 16;
/// Longest kernel release or Go version string in bytes.
pub const MAX_VERSION_STRING_BYTES: usize = 128;
/// Length of the fixed part of a ProcessInfo payload (before the rlimits).
pub const PROCESS_INFO_FIXED_LEN: usize = 136;
/// Length of one rlimit entry.
pub const RLIMIT_ENTRY_LEN: usize = 20;
const_assert_eq!(PROCESS_INFO_FIXED_LEN, 48 + 11 * 8);

/// CPU architecture of the checkpointed process. 0 is reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Arch {
    /// x86_64 (Linux `user_regs_struct` and XSAVE).
    X86_64 = 1,
}

impl Arch {
    /// The arch for a raw tag.
    pub fn from_raw(raw: u16) -> Result<Self, Error> {
        match raw {
            1 => Ok(Arch::X86_64),
            _ => Err(Error::RecordBadTag {
                field: "arch",
                value: u32::from(raw),
            }),
        }
    }
}

/// One resource limit (`getrlimit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rlimit {
    /// `RLIMIT_*` number.
    pub resource: u32,
    /// Soft limit (`u64::MAX` = infinity).
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// The mm layout values of `/proc/PID/stat` (and `PR_SET_MM_MAP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[allow(missing_docs)]
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

impl MmLayout {
    /// The values in wire order.
    pub fn to_array(&self) -> [u64; 11] {
        [
            self.start_code,
            self.end_code,
            self.start_data,
            self.end_data,
            self.start_brk,
            self.brk,
            self.start_stack,
            self.arg_start,
            self.arg_end,
            self.env_start,
            self.env_end,
        ]
    }

    /// From values in wire order.
    pub fn from_array(v: [u64; 11]) -> Self {
        MmLayout {
            start_code: v[0],
            end_code: v[1],
            start_data: v[2],
            end_data: v[3],
            start_brk: v[4],
            brk: v[5],
            start_stack: v[6],
            arg_start: v[7],
            arg_end: v[8],
            env_start: v[9],
            env_end: v[10],
        }
    }
}

/// Process-wide facts at the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo<'a> {
    /// Pid as the program sees it (its own PID namespace).
    pub pid: u32,
    /// CPU architecture.
    pub arch: Arch,
    /// Page size in bytes (4096 is the only one validated).
    pub page_size: u32,
    /// Size of every thread's XSAVE blob in bytes.
    pub xsave_size_bytes: u32,
    /// XCR0: the XSAVE feature mask the blobs were saved with.
    pub xcr0: u64,
    /// Number of threads (= number of ThreadState records in the epoch).
    pub thread_count: u32,
    /// umask (at most 0o777).
    pub umask: u32,
    /// CLOCK_MONOTONIC at the checkpoint, ns.
    pub clock_monotonic_ns: u64,
    /// CLOCK_BOOTTIME at the checkpoint, ns.
    pub clock_boottime_ns: u64,
    /// mm layout values.
    pub mm: MmLayout,
    /// Resource limits (at most [`MAX_RLIMITS`]).
    pub rlimits: Vec<Rlimit, MAX_RLIMITS>,
    /// Raw auxv bytes (at most [`MAX_AUXV_BYTES`]).
    pub auxv: &'a [u8],
    /// Executable path.
    pub exe_path: &'a [u8],
    /// Working directory.
    pub cwd_path: &'a [u8],
    /// Process `comm` (at most 16 bytes).
    pub comm: &'a [u8],
    /// Kernel release (`uname -r`), may be empty.
    pub kernel_release: &'a [u8],
    /// Go version of the program, may be empty.
    pub go_version: &'a [u8],
}

impl<'a> ProcessInfo<'a> {
    /// Parses a ProcessInfo payload.
    pub fn parse(payload: &'a [u8]) -> Result<Self, Error> {
        parse_all(payload, Self::read)
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, Error> {
        let pid = r.u32()?;
        let arch = Arch::from_raw(r.u16()?)?;
        let nrlimits = r.u16()?;
        let page_size = r.u32()?;
        let xsave_size_bytes = r.u32()?;
        let xcr0 = r.u64()?;
        let thread_count = r.u32()?;
        let umask = r.u32()?;
        if umask > 0o777 {
            return Err(Error::RecordUnknownBits {
                field: "umask",
                value: u64::from(umask),
            });
        }
        let clock_monotonic_ns = r.u64()?;
        let clock_boottime_ns = r.u64()?;
        let mut mm = [0u64; 11];
        for v in &mut mm {
            *v = r.u64()?;
        }
        if usize::from(nrlimits) > MAX_RLIMITS {
            return Err(Error::RecordOverCapacity {
                field: "rlimits",
                len: u64::from(nrlimits),
                max: MAX_RLIMITS as u64,
            });
        }
        let mut rlimits = Vec::new();
        for _ in 0..nrlimits {
            let rl = Rlimit {
                resource: r.u32()?,
                soft: r.u64()?,
                hard: r.u64()?,
            };
            // Capacity checked above.
            let _ = rlimits.push(rl);
        }
        Ok(ProcessInfo {
            pid,
            arch,
            page_size,
            xsave_size_bytes,
            xcr0,
            thread_count,
            umask,
            clock_monotonic_ns,
            clock_boottime_ns,
            mm: MmLayout::from_array(mm),
            rlimits,
            auxv: r.len_prefixed("auxv", MAX_AUXV_BYTES)?,
            exe_path: r.len_prefixed("exe_path", MAX_PATH_BYTES)?,
            cwd_path: r.len_prefixed("cwd_path", MAX_PATH_BYTES)?,
            comm: r.len_prefixed("comm", MAX_COMM_BYTES)?,
            kernel_release: r.len_prefixed("kernel_release", MAX_VERSION_STRING_BYTES)?,
            go_version: r.len_prefixed("go_version", MAX_VERSION_STRING_BYTES)?,
        })
    }

    /// Payload length in bytes.
    pub fn buffer_len(&self) -> usize {
        PROCESS_INFO_FIXED_LEN
            + RLIMIT_ENTRY_LEN * self.rlimits.len()
            + 6 * 4
            + self.auxv.len()
            + self.exe_path.len()
            + self.cwd_path.len()
            + self.comm.len()
            + self.kernel_release.len()
            + self.go_version.len()
    }

    /// Writes the payload; refuses values that [`ProcessInfo::parse`] would refuse.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        if self.umask > 0o777 {
            return Err(Error::RecordUnknownBits {
                field: "umask",
                value: u64::from(self.umask),
            });
        }
        check_cap("auxv", self.auxv.len(), MAX_AUXV_BYTES)?;
        check_cap("exe_path", self.exe_path.len(), MAX_PATH_BYTES)?;
        check_cap("cwd_path", self.cwd_path.len(), MAX_PATH_BYTES)?;
        check_cap("comm", self.comm.len(), MAX_COMM_BYTES)?;
        check_cap(
            "kernel_release",
            self.kernel_release.len(),
            MAX_VERSION_STRING_BYTES,
        )?;
        check_cap(
            "go_version",
            self.go_version.len(),
            MAX_VERSION_STRING_BYTES,
        )?;
        emit_all(out, self.buffer_len(), |w| {
            self.write(w);
            Ok(())
        })
    }

    fn write(&self, w: &mut Writer<'_>) {
        w.u32(self.pid);
        w.u16(self.arch as u16);
        w.u16(self.rlimits.len() as u16);
        w.u32(self.page_size);
        w.u32(self.xsave_size_bytes);
        w.u64(self.xcr0);
        w.u32(self.thread_count);
        w.u32(self.umask);
        w.u64(self.clock_monotonic_ns);
        w.u64(self.clock_boottime_ns);
        for v in self.mm.to_array() {
            w.u64(v);
        }
        for rl in &self.rlimits {
            w.u32(rl.resource);
            w.u64(rl.soft);
            w.u64(rl.hard);
        }
        w.len_prefixed(self.auxv);
        w.len_prefixed(self.exe_path);
        w.len_prefixed(self.cwd_path);
        w.len_prefixed(self.comm);
        w.len_prefixed(self.kernel_release);
        w.len_prefixed(self.go_version);
    }
}
