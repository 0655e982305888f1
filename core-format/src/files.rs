//! `MappedFiles`: the identity of every file the process maps (kind 10, once per
//! epoch), so that a restore can refuse a file that is no longer the one mapped at
//! the checkpoint.
//!
//! Payload: `count: u32` (≤ [`MAX_MAPPED_FILES`]), then `count` entries in strictly
//! increasing path order (bytewise), each a 72-byte fixed part and the path:
//!
//! | off | size | field |
//! |---|---|---|
//! | 0 | 8 | device (u64, `st_dev`) |
//! | 8 | 8 | inode (u64, `st_ino`) |
//! | 16 | 8 | size in bytes (u64, `st_size`) |
//! | 24 | 8 | mtime seconds (i64, `st_mtime`) |
//! | 32 | 4 | mtime nanoseconds (u32, < 10⁹) |
//! | 36 | 2 | hash kind (u16, [`HashKind`]) |
//! | 38 | 2 | path length (u16, 1..=4096) |
//! | 40 | 32 | content hash; bytes past the hash kind's length are zero |
//! | 72 | n | path |

use static_assertions::const_assert_eq;

use crate::error::Error;
use crate::process::MAX_PATH_BYTES;
use crate::table::{Table, TableEntry};
use crate::wire::{emit_all, parse_all, Reader};

/// Length of an entry's fixed part.
pub const MAPPED_FILE_FIXED_LEN: usize = 72;
const_assert_eq!(MAPPED_FILE_FIXED_LEN, 8 * 4 + 4 + 2 + 2 + 32);
/// Most files in the table (one per VMA at most).
pub const MAX_MAPPED_FILES: u32 = 65536;
/// Room for a content hash.
pub const HASH_BYTES: usize = 32;

/// How a file's content was hashed. 0 is reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum HashKind {
    /// Not hashed (the hash bytes are all zero).
    None = 1,
    /// XXH3-128 of the whole file, little-endian (16 bytes).
    Xxh3_128 = 2,
}

impl HashKind {
    /// The kind for a raw tag.
    pub fn from_raw(raw: u16) -> Result<Self, Error> {
        match raw {
            1 => Ok(HashKind::None),
            2 => Ok(HashKind::Xxh3_128),
            _ => Err(Error::RecordBadTag {
                field: "mapped_file.hash_kind",
                value: u32::from(raw),
            }),
        }
    }

    /// Number of meaningful hash bytes.
    pub fn len(self) -> usize {
        match self {
            HashKind::None => 0,
            HashKind::Xxh3_128 => 16,
        }
    }

    /// True for [`HashKind::None`].
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
}

/// The identity of one mapped file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MappedFile<'a> {
    /// Path as the kernel showed it in `/proc/PID/maps`.
    pub path: &'a [u8],
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// `st_size`.
    pub size: u64,
    /// `st_mtime` seconds.
    pub mtime_sec: i64,
    /// `st_mtime` nanoseconds (< 10⁹).
    pub mtime_nsec: u32,
    /// Hash kind.
    pub hash_kind: HashKind,
    /// Hash bytes; those past `hash_kind.len()` are zero.
    pub hash: [u8; HASH_BYTES],
}

impl MappedFile<'_> {
    fn check(&self) -> Result<(), Error> {
        if self.path.is_empty() || self.path.len() > MAX_PATH_BYTES {
            return Err(Error::RecordOverCapacity {
                field: "mapped_file.path (1..=4096 bytes)",
                len: self.path.len() as u64,
                max: MAX_PATH_BYTES as u64,
            });
        }
        if self.mtime_nsec >= 1_000_000_000 {
            return Err(Error::RecordBadValue {
                field: "mapped_file.mtime_nsec",
                value: u64::from(self.mtime_nsec),
            });
        }
        if self.hash[self.hash_kind.len()..].iter().any(|&b| b != 0) {
            return Err(Error::RecordBadValue {
                field: "mapped_file.hash bytes past its kind's length",
                value: self.hash_kind as u64,
            });
        }
        Ok(())
    }
}

impl<'a> TableEntry<'a> for MappedFile<'a> {
    fn parse_entry(bytes: &'a [u8]) -> Result<(Self, usize), Error> {
        let mut r = Reader::new(bytes);
        let dev = r.u64()?;
        let ino = r.u64()?;
        let size = r.u64()?;
        let mtime_sec = r.u64()? as i64;
        let mtime_nsec = r.u32()?;
        let hash_kind = HashKind::from_raw(r.u16()?)?;
        let path_len = usize::from(r.u16()?);
        if path_len == 0 || path_len > MAX_PATH_BYTES {
            return Err(Error::RecordOverCapacity {
                field: "mapped_file.path (1..=4096 bytes)",
                len: path_len as u64,
                max: MAX_PATH_BYTES as u64,
            });
        }
        let hash = r.array::<HASH_BYTES>()?;
        let path = r.bytes(path_len)?;
        let f = MappedFile {
            path,
            dev,
            ino,
            size,
            mtime_sec,
            mtime_nsec,
            hash_kind,
            hash,
        };
        f.check()?;
        Ok((f, r.position()))
    }

    fn entry_len(&self) -> usize {
        MAPPED_FILE_FIXED_LEN + self.path.len()
    }

    fn emit_entry(&self, out: &mut [u8]) -> Result<usize, Error> {
        self.check()?;
        emit_all(out, self.entry_len(), |w| {
            w.u64(self.dev);
            w.u64(self.ino);
            w.u64(self.size);
            w.u64(self.mtime_sec as u64);
            w.u32(self.mtime_nsec);
            w.u16(self.hash_kind as u16);
            w.u16(self.path.len() as u16);
            w.bytes(&self.hash);
            w.bytes(self.path);
            Ok(())
        })
    }
}

/// The table of mapped files (one frame per epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedFiles<'a> {
    /// The files, in strictly increasing path order.
    pub files: Table<'a, MappedFile<'a>>,
}

impl<'a> MappedFiles<'a> {
    /// A table over the caller's entries.
    pub const fn new(files: &'a [MappedFile<'a>]) -> Self {
        MappedFiles {
            files: Table::from_slice(files),
        }
    }

    fn check_order(&self) -> Result<(), Error> {
        let mut prev: Option<&[u8]> = None;
        for (i, f) in self.files.iter().enumerate() {
            if prev.is_some_and(|p| f.path <= p) {
                return Err(Error::RecordBadValue {
                    field: "mapped_files: path repeated or out of order at entry",
                    value: i as u64,
                });
            }
            prev = Some(f.path);
        }
        Ok(())
    }

    /// Parses a MappedFiles payload.
    pub fn parse(payload: &'a [u8]) -> Result<Self, Error> {
        let t = parse_all(payload, |r| {
            Ok(MappedFiles {
                files: Table::parse(r, "mapped_files count", MAX_MAPPED_FILES)?,
            })
        })?;
        t.check_order()?;
        Ok(t)
    }

    /// Payload length in bytes.
    pub fn buffer_len(&self) -> usize {
        self.files.wire_len()
    }

    /// Writes the payload.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        self.check_order()?;
        emit_all(out, self.buffer_len(), |w| {
            self.files.emit(w, "mapped_files count", MAX_MAPPED_FILES)
        })
    }

    /// The entry for `path`, if any.
    pub fn get(&self, path: &[u8]) -> Option<MappedFile<'a>> {
        self.files.iter().find(|f| f.path == path)
    }
}
