//! Cancelling a dump: SIGINT, SIGTERM or SIGHUP before the commit point ends the
//! dump with the program resumed untouched (see docs/guarantees.md).
//!
//! The command's signal handler only records the signal; the dump checks it at
//! each step boundary and in every write of the image, and unwinds from there, so
//! the usual error paths (which resume the program) do the rest.

use std::sync::atomic::{AtomicI32, Ordering};

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

/// From now on SIGINT, SIGTERM and SIGHUP request cancellation instead of killing
/// the driver.
pub fn catch() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe;
        // signal(2) gives it SA_RESTART semantics, so waits are not cut short.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// The signal that asked for cancellation, if one did.
pub fn requested() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The error a cancelled step returns.
#[derive(Debug, thiserror::Error)]
#[error("cancelled by signal {signal} ({name}) {stage}; nothing was committed and the program was left as it was")]
pub struct Cancelled {
    pub signal: i32,
    pub name: &'static str,
    pub stage: &'static str,
}

/// `Err` once cancellation was requested; `stage` says where the dump was.
pub fn check(stage: &'static str) -> Result<(), Cancelled> {
    match requested() {
        None => Ok(()),
        Some(signal) => Err(Cancelled {
            signal,
            name: match signal {
                libc::SIGINT => "SIGINT",
                libc::SIGTERM => "SIGTERM",
                libc::SIGHUP => "SIGHUP",
                _ => "signal",
            },
            stage,
        }),
    }
}
