//! `Credentials`: one thread's identity and privileges (kind 9, one frame per thread).
//!
//! Linux keeps credentials per thread; Go keeps them equal across threads, other
//! programs may not, so every thread has its own frame.
//!
//! Payload layout (little-endian, offsets in bytes):
//!
//! | off | size | field |
//! |---|---|---|
//! | 0 | 4 | tid (u32, as the program sees it) |
//! | 4 | 16 | uids: real, effective, saved, fs (4 × u32) |
//! | 20 | 16 | gids: real, effective, saved, fs (4 × u32) |
//! | 36 | 4 | securebits (u32, bits 0..=11) |
//! | 40 | 1 | no_new_privs (bool) |
//! | 41 | 1 | seccomp (u8, [`Seccomp`]) |
//! | 42 | 1 | dumpable (u8, 0..=2, `PR_GET_DUMPABLE`; the same in every thread) |
//! | 43 | 1 | reserved (u8, 0) |
//! | 44 | 4 | supplementary group count n (u32, ≤ [`MAX_GROUPS`]) |
//! | 48 | 40 | capability sets: inheritable, permitted, effective, bounding, ambient (5 × u64) |
//! | 88 | 4·n | supplementary gids (u32 each) |
//!
//! Rules checked when parsing: effective ⊆ permitted, ambient ⊆ permitted ∩
//! inheritable (the kernel keeps both), no undefined securebits, reserved byte zero.

use static_assertions::const_assert_eq;

use crate::error::Error;
use crate::table::{Table, TableEntry};
use crate::wire::{emit_all, parse_all, Reader};

/// Most supplementary groups (Linux `NGROUPS_MAX`).
pub const MAX_GROUPS: u32 = 65536;
/// Length of the fixed part of a Credentials payload.
pub const CREDENTIALS_FIXED_LEN: usize = 88;
const_assert_eq!(CREDENTIALS_FIXED_LEN, 4 + 16 + 16 + 4 + 4 + 4 + 5 * 8);
/// The securebits Linux defines (SECBIT_NOROOT .. SECBIT_EXEC_DENY_INTERACTIVE_LOCKED).
pub const SECUREBITS_DEFINED: u32 = 0xfff;

/// Seccomp mode of a thread. 0 is reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Seccomp {
    /// No seccomp (`Seccomp: 0` in `/proc/PID/status`).
    Disabled = 1,
    /// Strict mode (`Seccomp: 1`).
    Strict = 2,
    /// One or more filters (`Seccomp: 2`).
    Filter = 3,
}

impl Seccomp {
    /// The mode for a raw tag.
    pub fn from_raw(raw: u8) -> Result<Self, Error> {
        match raw {
            1 => Ok(Seccomp::Disabled),
            2 => Ok(Seccomp::Strict),
            3 => Ok(Seccomp::Filter),
            _ => Err(Error::RecordBadTag {
                field: "credentials.seccomp",
                value: u32::from(raw),
            }),
        }
    }

    /// The number `/proc/PID/status` shows (`Seccomp:` line).
    pub fn proc_value(self) -> u32 {
        self as u32 - 1
    }
}

/// Real, effective, saved and filesystem ids (uids or gids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct IdSet {
    /// Real id.
    pub real: u32,
    /// Effective id.
    pub effective: u32,
    /// Saved set-id.
    pub saved: u32,
    /// Filesystem id.
    pub fs: u32,
}

/// The five capability sets, one bit per capability (bit n = capability n).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CapSets {
    /// CapInh.
    pub inheritable: u64,
    /// CapPrm.
    pub permitted: u64,
    /// CapEff.
    pub effective: u64,
    /// CapBnd.
    pub bounding: u64,
    /// CapAmb.
    pub ambient: u64,
}

/// One supplementary group id (a [`Table`] entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Gid(pub u32);

impl<'a> TableEntry<'a> for Gid {
    fn parse_entry(bytes: &'a [u8]) -> Result<(Self, usize), Error> {
        let mut r = Reader::new(bytes);
        Ok((Gid(r.u32()?), 4))
    }
    fn entry_len(&self) -> usize {
        4
    }
    fn emit_entry(&self, out: &mut [u8]) -> Result<usize, Error> {
        emit_all(out, 4, |w| {
            w.u32(self.0);
            Ok(())
        })
    }
}

/// One thread's credentials at the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials<'a> {
    /// Thread id as the program sees it.
    pub tid: u32,
    /// User ids.
    pub uids: IdSet,
    /// Group ids.
    pub gids: IdSet,
    /// Securebits (`PR_GET_SECUREBITS`), only bits in [`SECUREBITS_DEFINED`].
    pub securebits: u32,
    /// `PR_GET_NO_NEW_PRIVS`.
    pub no_new_privs: bool,
    /// Seccomp mode.
    pub seccomp: Seccomp,
    /// `PR_GET_DUMPABLE` (0, 1 or 2): process-wide, repeated in every thread's frame.
    pub dumpable: u8,
    /// Capability sets.
    pub caps: CapSets,
    /// Supplementary groups, in the kernel's order.
    pub groups: Table<'a, Gid>,
}

impl<'a> Credentials<'a> {
    fn check(&self) -> Result<(), Error> {
        if self.securebits & !SECUREBITS_DEFINED != 0 {
            return Err(Error::RecordUnknownBits {
                field: "credentials.securebits",
                value: u64::from(self.securebits),
            });
        }
        if self.dumpable > 2 {
            return Err(Error::RecordBadValue {
                field: "credentials.dumpable",
                value: u64::from(self.dumpable),
            });
        }
        let c = &self.caps;
        if c.effective & !c.permitted != 0 {
            return Err(Error::RecordBadValue {
                field: "credentials.cap_effective outside cap_permitted",
                value: c.effective & !c.permitted,
            });
        }
        if c.ambient & !(c.permitted & c.inheritable) != 0 {
            return Err(Error::RecordBadValue {
                field: "credentials.cap_ambient outside permitted and inheritable",
                value: c.ambient & !(c.permitted & c.inheritable),
            });
        }
        Ok(())
    }

    /// Parses a Credentials payload.
    pub fn parse(payload: &'a [u8]) -> Result<Self, Error> {
        parse_all(payload, |r| {
            let tid = r.u32()?;
            let mut ids = [0u32; 8];
            for v in &mut ids {
                *v = r.u32()?;
            }
            let securebits = r.u32()?;
            let no_new_privs = r.bool("credentials.no_new_privs")?;
            let seccomp = Seccomp::from_raw(r.u8()?)?;
            let dumpable = r.u8()?;
            let reserved = r.u8()?;
            if reserved != 0 {
                return Err(Error::RecordBadValue {
                    field: "credentials.reserved",
                    value: u64::from(reserved),
                });
            }
            // The group count comes before the capability sets and is bounded by
            // `Table::parse` before any group is read.
            let ngroups_at = r.position();
            let ngroups = r.u32()?;
            let caps = CapSets {
                inheritable: r.u64()?,
                permitted: r.u64()?,
                effective: r.u64()?,
                bounding: r.u64()?,
                ambient: r.u64()?,
            };
            let groups = Table::parse_counted(r, "credentials.groups", ngroups, MAX_GROUPS)
                .map_err(|e| match e {
                    Error::RecordTruncated { needed, .. } => Error::RecordTruncated {
                        offset: ngroups_at as u32,
                        needed,
                    },
                    other => other,
                })?;
            let c = Credentials {
                tid,
                uids: IdSet {
                    real: ids[0],
                    effective: ids[1],
                    saved: ids[2],
                    fs: ids[3],
                },
                gids: IdSet {
                    real: ids[4],
                    effective: ids[5],
                    saved: ids[6],
                    fs: ids[7],
                },
                securebits,
                no_new_privs,
                seccomp,
                dumpable,
                caps,
                groups,
            };
            c.check()?;
            Ok(c)
        })
    }

    /// Payload length in bytes.
    pub fn buffer_len(&self) -> usize {
        CREDENTIALS_FIXED_LEN + 4 * self.groups.len()
    }

    /// Writes the payload; refuses values that [`Credentials::parse`] would refuse.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        self.check()?;
        if self.groups.len() > MAX_GROUPS as usize {
            return Err(Error::RecordOverCapacity {
                field: "credentials.groups",
                len: self.groups.len() as u64,
                max: u64::from(MAX_GROUPS),
            });
        }
        emit_all(out, self.buffer_len(), |w| {
            w.u32(self.tid);
            for id in [self.uids, self.gids] {
                w.u32(id.real);
                w.u32(id.effective);
                w.u32(id.saved);
                w.u32(id.fs);
            }
            w.u32(self.securebits);
            w.bool(self.no_new_privs);
            w.u8(self.seccomp as u8);
            w.u8(self.dumpable);
            w.u8(0);
            w.u32(self.groups.len() as u32);
            let c = &self.caps;
            for v in [
                c.inheritable,
                c.permitted,
                c.effective,
                c.bounding,
                c.ambient,
            ] {
                w.u64(v);
            }
            for g in self.groups.iter() {
                w.u32(g.0);
            }
            Ok(())
        })
    }
}
