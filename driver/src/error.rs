//! Typed errors: one variant per step that can fail, naming what it worked on.

use std::io;

/// Errors while freezing and capturing a process.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot read {path}: {source}")]
    ProcIo { path: String, source: io::Error },
    #[error("{path}: {source}")]
    ProcParse {
        path: String,
        source: procfs::ProcError,
    },
    #[error("cannot parse {path}: {detail}")]
    Proc { path: String, detail: String },
    #[error("ptrace {op} on thread {tid} failed: {source}")]
    Ptrace {
        op: &'static str,
        tid: i32,
        source: io::Error,
    },
    #[error("thread {tid} stopped unexpectedly during {phase}: {detail}")]
    UnexpectedStop {
        tid: i32,
        phase: &'static str,
        detail: String,
    },
    #[error("process {pid} exited during the freeze")]
    ProcessGone { pid: i32 },
    #[error("injected syscall {nr} in thread {tid} failed: {detail}")]
    Inject { tid: i32, nr: u64, detail: String },
    #[error("no `syscall` instruction found in an executable mapping of process {pid}")]
    NoSyscallGadget { pid: i32 },
    #[error("reading {len} bytes of memory at {addr:#x} in process {pid}: {source}")]
    Memory {
        pid: i32,
        addr: u64,
        len: usize,
        source: io::Error,
    },
    #[error("fd {fd} of process {pid}: {detail}")]
    Fd { pid: i32, fd: i32, detail: String },
    #[error("process {pid} uses something CheckSync cannot capture yet: {what}")]
    Unsupported { pid: i32, what: String },
    #[error("process {pid} holds what CheckSync cannot restore yet, so it was not dumped (nothing in it was changed):\n  - {}", items.join("\n  - "))]
    Unrestorable { pid: i32, items: Vec<String> },
    #[error("chain check of process {pid} (CS_TEST_VERIFY_CHAIN): {detail}")]
    ChainMismatch { pid: i32, detail: String },
    #[error("process {pid} cannot be captured now: {source}")]
    Busy {
        pid: i32,
        source: crate::lock::LockError,
    },
    #[error("process {pid} cannot be captured now: it is traced by pid {tracer} ({comm}); detach the debugger, tracer or other driver first")]
    Traced { pid: i32, tracer: i32, comm: String },
    #[error("{0}")]
    Cancelled(#[from] crate::cancel::Cancelled),
    #[error("thread {tid}: XSAVE area is {got} bytes, expected {want}")]
    Xsave { tid: i32, got: usize, want: usize },
}

impl CaptureError {
    pub(crate) fn ptrace(op: &'static str, tid: i32) -> impl FnOnce(io::Error) -> CaptureError {
        move |source| CaptureError::Ptrace { op, tid, source }
    }
}
