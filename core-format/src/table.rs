//! `Table`: a list of variable-size entries that is either borrowed from a parsed
//! payload or from the caller's slice.
//!
//! Parsing validates every entry once and keeps the raw bytes; iteration re-reads
//! them (it cannot fail after that validation, and never panics). Building a record
//! for emission uses [`Table::from_slice`]. Both forms compare equal when their
//! entries do, so `parse(emit(x)) == x` holds for tables too.

use core::fmt;
use core::marker::PhantomData;

use crate::error::Error;
use crate::wire::{Reader, Writer};

/// One entry of a [`Table`]: a self-delimiting encoding.
pub trait TableEntry<'a>: Sized + Clone {
    /// Parses one entry at the start of `bytes`; returns it and its encoded length.
    fn parse_entry(bytes: &'a [u8]) -> Result<(Self, usize), Error>;
    /// Encoded length of this entry in bytes.
    fn entry_len(&self) -> usize;
    /// Writes this entry at the start of `out`; returns its length. Refuses an entry
    /// that [`TableEntry::parse_entry`] would refuse.
    fn emit_entry(&self, out: &mut [u8]) -> Result<usize, Error>;
}

/// A counted list of entries (on the wire: `count: u32` then the entries).
pub struct Table<'a, T> {
    repr: Repr<'a, T>,
}

enum Repr<'a, T> {
    Wire { bytes: &'a [u8], count: u32 },
    Items(&'a [T]),
}

impl<T> Clone for Repr<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Repr<'_, T> {}
impl<T> Clone for Table<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Table<'_, T> {}

impl<'a, T: TableEntry<'a>> Table<'a, T> {
    /// A table over the caller's entries, for emission.
    pub const fn from_slice(items: &'a [T]) -> Self {
        Table {
            repr: Repr::Items(items),
        }
    }

    /// An empty table.
    pub const fn empty() -> Self {
        Table {
            repr: Repr::Items(&[]),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        match self.repr {
            Repr::Wire { count, .. } => count as usize,
            Repr::Items(items) => items.len(),
        }
    }

    /// True if there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries in order.
    pub fn iter(&self) -> TableIter<'a, T> {
        match self.repr {
            Repr::Wire { bytes, count } => TableIter {
                inner: IterRepr::Wire { bytes, left: count },
                _p: PhantomData,
            },
            Repr::Items(items) => TableIter {
                inner: IterRepr::Items(items.iter()),
                _p: PhantomData,
            },
        }
    }

    /// Reads `count: u32` and that many entries, at most `max_count`.
    pub(crate) fn parse(
        r: &mut Reader<'a>,
        field: &'static str,
        max_count: u32,
    ) -> Result<Self, Error> {
        let count = r.u32()?;
        Self::parse_counted(r, field, count, max_count)
    }

    /// Reads `count` entries (the count was read elsewhere), at most `max_count`.
    pub(crate) fn parse_counted(
        r: &mut Reader<'a>,
        field: &'static str,
        count: u32,
        max_count: u32,
    ) -> Result<Self, Error> {
        if count > max_count {
            return Err(Error::RecordOverCapacity {
                field,
                len: u64::from(count),
                max: u64::from(max_count),
            });
        }
        let from = r.position();
        for _ in 0..count {
            r.parse_with(T::parse_entry)?;
        }
        Ok(Table {
            repr: Repr::Wire {
                bytes: r.consumed_since(from),
                count,
            },
        })
    }

    /// Encoded length: the count plus every entry.
    pub(crate) fn wire_len(&self) -> usize {
        4 + match self.repr {
            Repr::Wire { bytes, .. } => bytes.len(),
            Repr::Items(items) => items.iter().map(T::entry_len).sum(),
        }
    }

    pub(crate) fn emit(
        &self,
        w: &mut Writer<'_>,
        field: &'static str,
        max_count: u32,
    ) -> Result<(), Error> {
        let count = self.len();
        if count > max_count as usize {
            return Err(Error::RecordOverCapacity {
                field,
                len: count as u64,
                max: u64::from(max_count),
            });
        }
        w.u32(count as u32);
        match self.repr {
            Repr::Wire { bytes, .. } => w.bytes(bytes),
            Repr::Items(items) => {
                for item in items {
                    w.emit_with(|out| item.emit_entry(out))?;
                }
            }
        }
        Ok(())
    }
}

impl<'a, T: TableEntry<'a> + PartialEq> PartialEq for Table<'a, T> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<'a, T: TableEntry<'a> + Eq> Eq for Table<'a, T> {}

impl<'a, T: TableEntry<'a> + fmt::Debug> fmt::Debug for Table<'a, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a, T: TableEntry<'a>> IntoIterator for &Table<'a, T> {
    type Item = T;
    type IntoIter = TableIter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Iterator over a [`Table`]'s entries (by value; entries are small and borrow).
pub struct TableIter<'a, T> {
    inner: IterRepr<'a, T>,
    _p: PhantomData<T>,
}

enum IterRepr<'a, T> {
    Wire { bytes: &'a [u8], left: u32 },
    Items(core::slice::Iter<'a, T>),
}

impl<T> fmt::Debug for TableIter<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TableIter")
    }
}

impl<'a, T: TableEntry<'a>> Iterator for TableIter<'a, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        match &mut self.inner {
            IterRepr::Wire { bytes, left } => {
                if *left == 0 {
                    return None;
                }
                // Validated when the table was parsed; an error here is impossible,
                // and ends the iteration rather than panicking.
                let (entry, used) = T::parse_entry(bytes).ok()?;
                *bytes = bytes.get(used..).unwrap_or_default();
                *left -= 1;
                Some(entry)
            }
            IterRepr::Items(it) => it.next().cloned(),
        }
    }
}
