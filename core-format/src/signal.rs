//! `SignalTable`: the dispositions of signals 1..=64.
//!
//! Payload: 64 entries of 32 bytes, entry `n - 1` for signal `n`:
//!
//! | off | size | field |
//! |---|---|---|
//! | 0 | 8 | handler (u64; 0 = SIG_DFL, 1 = SIG_IGN) |
//! | 8 | 8 | flags (u64, `SA_*` as the kernel's `struct sigaction`) |
//! | 16 | 8 | restorer (u64) |
//! | 24 | 8 | mask (u64, bit n-1 = signal n) |

use core::fmt;

use static_assertions::const_assert_eq;

use crate::error::Error;
use crate::wire::{emit_all, parse_all, Reader};

/// Number of signals in the table.
pub const NUM_SIGNALS: usize = 64;
/// Length of one entry.
pub const SIGACTION_ENTRY_LEN: usize = 32;
/// Payload length of a SignalTable.
pub const SIGNAL_TABLE_LEN: usize = NUM_SIGNALS * SIGACTION_ENTRY_LEN;
const_assert_eq!(SIGNAL_TABLE_LEN, 2048);

/// One signal's disposition (the kernel's `struct sigaction` on x86_64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SigAction {
    /// `sa_handler`: 0 = SIG_DFL, 1 = SIG_IGN, else an address.
    pub handler: u64,
    /// `sa_flags`.
    pub flags: u64,
    /// `sa_restorer`.
    pub restorer: u64,
    /// `sa_mask`.
    pub mask: u64,
}

impl SigAction {
    /// SIG_DFL with no flags.
    pub const DEFAULT: SigAction = SigAction {
        handler: 0,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
}

/// The 64 signal dispositions (one frame).
#[derive(Clone, Copy)]
pub struct SignalTable<'a> {
    repr: Repr<'a>,
}

#[derive(Clone, Copy)]
enum Repr<'a> {
    Wire(&'a [u8]),
    Actions(&'a [SigAction; NUM_SIGNALS]),
}

impl<'a> SignalTable<'a> {
    /// A table over the caller's actions (`actions[n - 1]` for signal `n`).
    pub const fn new(actions: &'a [SigAction; NUM_SIGNALS]) -> Self {
        SignalTable {
            repr: Repr::Actions(actions),
        }
    }

    /// The disposition of signal `signo` (1..=64), `None` outside that range.
    pub fn get(&self, signo: u32) -> Option<SigAction> {
        let i = (signo as usize).checked_sub(1)?;
        if i >= NUM_SIGNALS {
            return None;
        }
        match self.repr {
            Repr::Actions(a) => Some(a[i]),
            Repr::Wire(bytes) => {
                let entry = bytes.get(i * SIGACTION_ENTRY_LEN..(i + 1) * SIGACTION_ENTRY_LEN)?;
                let mut r = Reader::new(entry);
                Some(SigAction {
                    handler: r.u64().ok()?,
                    flags: r.u64().ok()?,
                    restorer: r.u64().ok()?,
                    mask: r.u64().ok()?,
                })
            }
        }
    }

    /// `(signo, action)` for signals 1..=64.
    pub fn iter(&self) -> impl Iterator<Item = (u32, SigAction)> + '_ {
        (1..=NUM_SIGNALS as u32).filter_map(|s| self.get(s).map(|a| (s, a)))
    }

    /// All 64 actions as an array.
    pub fn to_array(&self) -> [SigAction; NUM_SIGNALS] {
        let mut out = [SigAction::DEFAULT; NUM_SIGNALS];
        for (s, a) in self.iter() {
            out[s as usize - 1] = a;
        }
        out
    }

    /// Parses a SignalTable payload (exactly 2048 bytes).
    pub fn parse(payload: &'a [u8]) -> Result<Self, Error> {
        parse_all(payload, |r| {
            Ok(SignalTable {
                repr: Repr::Wire(r.bytes(SIGNAL_TABLE_LEN)?),
            })
        })
    }

    /// Payload length in bytes (always 2048).
    pub fn buffer_len(&self) -> usize {
        SIGNAL_TABLE_LEN
    }

    /// Writes the payload.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        emit_all(out, SIGNAL_TABLE_LEN, |w| {
            for (_, a) in self.iter() {
                w.u64(a.handler);
                w.u64(a.flags);
                w.u64(a.restorer);
                w.u64(a.mask);
            }
            Ok(())
        })
    }
}

impl PartialEq for SignalTable<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}
impl Eq for SignalTable<'_> {}

impl fmt::Debug for SignalTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only non-default entries: 64 defaults are noise.
        f.debug_map()
            .entries(self.iter().filter(|(_, a)| *a != SigAction::DEFAULT))
            .finish()
    }
}
