//! `VmaTable`: memory mappings, one frame holding a table of [`Vma`] entries.
//!
//! Payload: `count: u32`, then `count` entries, each a 32-byte fixed part and the path:
//!
//! | off | size | field |
//! |---|---|---|
//! | 0 | 8 | start (u64, page aligned) |
//! | 8 | 8 | end (u64, page aligned, > start) |
//! | 16 | 8 | file offset (u64, page aligned) |
//! | 24 | 4 | flags (u32, [`VmaFlags`]) |
//! | 28 | 1 | prot (u8, [`Prot`]) |
//! | 29 | 1 | kind (u8, [`VmaKind`]) |
//! | 30 | 2 | path length (u16, ≤ 4096; non-zero exactly when kind is File) |
//! | 32 | n | path bytes |
//!
//! An epoch may carry several VmaTable frames (a process with very many mappings);
//! the validator treats them as one list that must be in increasing address order.

use static_assertions::const_assert_eq;

use crate::error::Error;
use crate::page::PAGE_SIZE;
use crate::process::MAX_PATH_BYTES;
use crate::table::{Table, TableEntry};
use crate::wire::{emit_all, parse_all, Reader};

/// Length of a VMA entry's fixed part.
pub const VMA_ENTRY_FIXED_LEN: usize = 32;
const_assert_eq!(VMA_ENTRY_FIXED_LEN, 8 + 8 + 8 + 4 + 1 + 1 + 2);
/// Most VMAs in one table (Linux's default `vm.max_map_count` is 65530).
pub const MAX_VMAS_PER_TABLE: u32 = 65536;

/// Page protection bits (PROT_READ/WRITE/EXEC values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Prot(u8);

impl Prot {
    /// PROT_NONE.
    pub const NONE: Prot = Prot(0);
    /// PROT_READ.
    pub const READ: Prot = Prot(1);
    /// PROT_WRITE.
    pub const WRITE: Prot = Prot(2);
    /// PROT_EXEC.
    pub const EXEC: Prot = Prot(4);
    const ALL: u8 = 7;

    /// The bits, refusing undefined ones.
    pub fn from_bits(bits: u8) -> Result<Self, Error> {
        if bits & !Self::ALL != 0 {
            return Err(Error::RecordUnknownBits {
                field: "vma.prot",
                value: u64::from(bits),
            });
        }
        Ok(Prot(bits))
    }
    /// The raw bits.
    pub fn bits(self) -> u8 {
        self.0
    }
    /// True if every bit of `other` is set.
    pub fn contains(self, other: Prot) -> bool {
        self.0 & other.0 == other.0
    }
    /// True for PROT_NONE.
    pub fn is_none(self) -> bool {
        self.0 == 0
    }
}

impl core::ops::BitOr for Prot {
    type Output = Prot;
    fn bitor(self, rhs: Prot) -> Prot {
        Prot(self.0 | rhs.0)
    }
}

/// Mapping flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VmaFlags(u32);

impl VmaFlags {
    /// No flags: a private mapping.
    pub const EMPTY: VmaFlags = VmaFlags(0);
    /// MAP_SHARED (VmFlags `sh`).
    pub const SHARED: VmaFlags = VmaFlags(1 << 0);
    /// MAP_GROWSDOWN (`gd`).
    pub const GROWSDOWN: VmaFlags = VmaFlags(1 << 1);
    /// MAP_DROPPABLE (`dp`): contents may be dropped; restore as zero.
    pub const DROPPABLE: VmaFlags = VmaFlags(1 << 2);
    /// A PROT_NONE address-space reservation (Go arenas): recorded, never read.
    /// Requires `prot == NONE`.
    pub const RESERVATION: VmaFlags = VmaFlags(1 << 3);
    /// MAP_NORESERVE (`nr`).
    pub const NORESERVE: VmaFlags = VmaFlags(1 << 4);
    /// MADV_DONTDUMP (`dd`).
    pub const DONTDUMP: VmaFlags = VmaFlags(1 << 5);
    /// MADV_WIPEONFORK (`wf`).
    pub const WIPEONFORK: VmaFlags = VmaFlags(1 << 6);
    /// MADV_HUGEPAGE (`hg`).
    pub const HUGEPAGE: VmaFlags = VmaFlags(1 << 7);
    /// MADV_NOHUGEPAGE (`nh`).
    pub const NOHUGEPAGE: VmaFlags = VmaFlags(1 << 8);
    /// VM_LOCKED (`lo`).
    pub const LOCKED: VmaFlags = VmaFlags(1 << 9);
    const ALL: u32 = (1 << 10) - 1;

    /// The bits, refusing undefined ones.
    pub fn from_bits(bits: u32) -> Result<Self, Error> {
        if bits & !Self::ALL != 0 {
            return Err(Error::RecordUnknownBits {
                field: "vma.flags",
                value: u64::from(bits),
            });
        }
        Ok(VmaFlags(bits))
    }
    /// The raw bits.
    pub fn bits(self) -> u32 {
        self.0
    }
    /// True if every bit of `other` is set.
    pub fn contains(self, other: VmaFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for VmaFlags {
    type Output = VmaFlags;
    fn bitor(self, rhs: VmaFlags) -> VmaFlags {
        VmaFlags(self.0 | rhs.0)
    }
}

/// What backs a mapping. 0 is reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum VmaKind {
    /// Anonymous memory.
    Anonymous = 1,
    /// A file mapping (path and offset).
    File = 2,
    /// `[vdso]`.
    Vdso = 3,
    /// `[vvar]`.
    Vvar = 4,
    /// `[vvar_vclock]`.
    VvarVclock = 5,
    /// `[stack]`.
    Stack = 6,
    /// `[heap]`.
    Heap = 7,
    /// `[vsyscall]`.
    Vsyscall = 8,
}

impl VmaKind {
    /// The kind for a raw tag.
    pub fn from_raw(raw: u8) -> Result<Self, Error> {
        Ok(match raw {
            1 => VmaKind::Anonymous,
            2 => VmaKind::File,
            3 => VmaKind::Vdso,
            4 => VmaKind::Vvar,
            5 => VmaKind::VvarVclock,
            6 => VmaKind::Stack,
            7 => VmaKind::Heap,
            8 => VmaKind::Vsyscall,
            _ => {
                return Err(Error::RecordBadTag {
                    field: "vma.kind",
                    value: u32::from(raw),
                })
            }
        })
    }
}

/// One memory mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Vma<'a> {
    /// First byte (page aligned).
    pub start: u64,
    /// One past the last byte (page aligned, > start).
    pub end: u64,
    /// Protection.
    pub prot: Prot,
    /// Flags.
    pub flags: VmaFlags,
    /// Backing.
    pub kind: VmaKind,
    /// File offset (page aligned; 0 unless File).
    pub file_offset: u64,
    /// Path (non-empty exactly when `kind == File`).
    pub path: &'a [u8],
}

impl Vma<'_> {
    /// Length in bytes.
    pub fn len_bytes(&self) -> u64 {
        self.end - self.start
    }

    /// True if page contents must never be read or restored here.
    pub fn is_reservation(&self) -> bool {
        self.prot.is_none() || self.flags.contains(VmaFlags::RESERVATION)
    }

    fn check(&self) -> Result<(), Error> {
        let page = PAGE_SIZE as u64;
        if !self.start.is_multiple_of(page) {
            return Err(Error::RecordUnalignedAddress {
                field: "vma.start",
                addr: self.start,
            });
        }
        if !self.end.is_multiple_of(page) {
            return Err(Error::RecordUnalignedAddress {
                field: "vma.end",
                addr: self.end,
            });
        }
        if self.start >= self.end {
            return Err(Error::RecordBadRange {
                start: self.start,
                end: self.end,
            });
        }
        if !self.file_offset.is_multiple_of(page) {
            return Err(Error::RecordUnalignedAddress {
                field: "vma.file_offset",
                addr: self.file_offset,
            });
        }
        Prot::from_bits(self.prot.0)?;
        VmaFlags::from_bits(self.flags.0)?;
        if self.flags.contains(VmaFlags::RESERVATION) && !self.prot.is_none() {
            return Err(Error::RecordBadValue {
                field: "vma.prot of a reservation",
                value: u64::from(self.prot.0),
            });
        }
        if self.path.len() > MAX_PATH_BYTES {
            return Err(Error::RecordOverCapacity {
                field: "vma.path",
                len: self.path.len() as u64,
                max: MAX_PATH_BYTES as u64,
            });
        }
        if (self.kind == VmaKind::File) == self.path.is_empty() {
            return Err(Error::RecordBadValue {
                field: "vma.path length for this kind",
                value: self.path.len() as u64,
            });
        }
        Ok(())
    }
}

impl<'a> TableEntry<'a> for Vma<'a> {
    fn parse_entry(bytes: &'a [u8]) -> Result<(Self, usize), Error> {
        let mut r = Reader::new(bytes);
        let start = r.u64()?;
        let end = r.u64()?;
        let file_offset = r.u64()?;
        let flags = VmaFlags::from_bits(r.u32()?)?;
        let prot = Prot::from_bits(r.u8()?)?;
        let kind = VmaKind::from_raw(r.u8()?)?;
        let path_len = r.u16()?;
        if usize::from(path_len) > MAX_PATH_BYTES {
            return Err(Error::RecordOverCapacity {
                field: "vma.path",
                len: u64::from(path_len),
                max: MAX_PATH_BYTES as u64,
            });
        }
        let path = r.bytes(usize::from(path_len))?;
        let vma = Vma {
            start,
            end,
            prot,
            flags,
            kind,
            file_offset,
            path,
        };
        vma.check()?;
        Ok((vma, r.position()))
    }

    fn entry_len(&self) -> usize {
        VMA_ENTRY_FIXED_LEN + self.path.len()
    }

    fn emit_entry(&self, out: &mut [u8]) -> Result<usize, Error> {
        self.check()?;
        emit_all(out, self.entry_len(), |w| {
            w.u64(self.start);
            w.u64(self.end);
            w.u64(self.file_offset);
            w.u32(self.flags.0);
            w.u8(self.prot.0);
            w.u8(self.kind as u8);
            w.u16(self.path.len() as u16);
            w.bytes(self.path);
            Ok(())
        })
    }
}

/// A table of VMAs (one frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmaTable<'a> {
    /// The mappings, in increasing address order (checked by the validator).
    pub vmas: Table<'a, Vma<'a>>,
}

impl<'a> VmaTable<'a> {
    /// A table over the caller's VMAs.
    pub const fn new(vmas: &'a [Vma<'a>]) -> Self {
        VmaTable {
            vmas: Table::from_slice(vmas),
        }
    }

    /// Parses a VmaTable payload.
    pub fn parse(payload: &'a [u8]) -> Result<Self, Error> {
        parse_all(payload, |r| {
            Ok(VmaTable {
                vmas: Table::parse(r, "vma count", MAX_VMAS_PER_TABLE)?,
            })
        })
    }

    /// Payload length in bytes.
    pub fn buffer_len(&self) -> usize {
        self.vmas.wire_len()
    }

    /// Writes the payload.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        emit_all(out, self.buffer_len(), |w| {
            self.vmas.emit(w, "vma count", MAX_VMAS_PER_TABLE)
        })
    }
}
