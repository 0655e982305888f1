//! Epoch markers and the epoch digest.
//!
//! An epoch is the frames from an [`EpochBegin`] up to its [`EpochCommit`]. The commit
//! carries the number of frames before it (the EpochBegin included) and a digest that
//! chains their 32-byte headers:
//!
//! ```text
//! digest_0     = 0
//! digest_{i+1} = xxh3_64_with_seed(header_i[0..32], seed = digest_i)
//! ```
//!
//! Each header holds its frame's kind, length and payload checksum, so the digest
//! binds every byte of the epoch, the frames' order and their number, while costing
//! one 32-byte hash per frame (never a second pass over page data).
//!
//! Payloads: EpochBegin is `epoch u64, wall_time_ns u64, kind u32` (20 bytes);
//! EpochCommit is `epoch u64, digest u64, frame_count u32` (20 bytes).

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::error::Error;
use crate::header::{FrameHeader, FrameHeaderView, HEADER_LEN};
use crate::wire::{emit_all, parse_all};

/// Payload length of EpochBegin and of EpochCommit.
pub const EPOCH_MARKER_LEN: usize = 20;

/// What an epoch carries. 0 is reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum EpochKind {
    /// Every present page: restorable on its own.
    Full = 1,
    /// Only pages written since the previous epoch; applies on top of it.
    Delta = 2,
}

/// Opens an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EpochBegin {
    /// Epoch number (increasing; fences a stale primary).
    pub epoch: u64,
    /// Full or delta.
    pub kind: EpochKind,
    /// Wall-clock time of the freeze, ns since the Unix epoch.
    pub wall_time_ns: u64,
}

impl EpochBegin {
    /// Parses an EpochBegin payload.
    pub fn parse(payload: &[u8]) -> Result<Self, Error> {
        parse_all(payload, |r| {
            let epoch = r.u64()?;
            let wall_time_ns = r.u64()?;
            let kind = match r.u32()? {
                1 => EpochKind::Full,
                2 => EpochKind::Delta,
                v => {
                    return Err(Error::RecordBadTag {
                        field: "epoch.kind",
                        value: v,
                    })
                }
            };
            Ok(EpochBegin {
                epoch,
                kind,
                wall_time_ns,
            })
        })
    }

    /// Payload length in bytes.
    pub fn buffer_len(&self) -> usize {
        EPOCH_MARKER_LEN
    }

    /// Writes the payload.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        emit_all(out, EPOCH_MARKER_LEN, |w| {
            w.u64(self.epoch);
            w.u64(self.wall_time_ns);
            w.u32(self.kind as u32);
            Ok(())
        })
    }
}

/// Closes an epoch: it applies only if this verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EpochCommit {
    /// Same number as the EpochBegin.
    pub epoch: u64,
    /// Frames before this one in the epoch, the EpochBegin included.
    pub frame_count: u32,
    /// [`EpochDigest`] of those frames.
    pub digest: u64,
}

impl EpochCommit {
    /// Parses an EpochCommit payload.
    pub fn parse(payload: &[u8]) -> Result<Self, Error> {
        parse_all(payload, |r| {
            Ok(EpochCommit {
                epoch: r.u64()?,
                digest: r.u64()?,
                frame_count: r.u32()?,
            })
        })
    }

    /// Payload length in bytes.
    pub fn buffer_len(&self) -> usize {
        EPOCH_MARKER_LEN
    }

    /// Writes the payload.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        emit_all(out, EPOCH_MARKER_LEN, |w| {
            w.u64(self.epoch);
            w.u64(self.digest);
            w.u32(self.frame_count);
            Ok(())
        })
    }
}

/// Running digest of an epoch's frames (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EpochDigest {
    digest: u64,
    frames: u32,
}

impl EpochDigest {
    /// The digest of no frames.
    pub const fn new() -> Self {
        EpochDigest {
            digest: 0,
            frames: 0,
        }
    }

    /// Adds one frame by its 32 header bytes.
    pub fn update(&mut self, header: &[u8; HEADER_LEN]) {
        self.digest = xxh3_64_with_seed(header, self.digest);
        self.frames = self.frames.wrapping_add(1);
    }

    /// Adds one frame by its parsed header.
    pub fn update_header(&mut self, header: &FrameHeader) {
        self.update(&header.to_bytes());
    }

    /// Adds every frame in `bytes`, a sequence of whole frames as emitted (e.g. by the
    /// page-run encoder). Reads only the headers. Returns how many frames were added.
    pub fn update_frames(&mut self, mut bytes: &[u8]) -> Result<u32, Error> {
        let mut n = 0;
        while !bytes.is_empty() {
            let header = FrameHeader::parse(&FrameHeaderView::new_checked(bytes)?)?;
            let len = header.frame_len();
            if bytes.len() < len {
                return Err(Error::Truncated {
                    needed: len as u64,
                    available: bytes.len() as u64,
                });
            }
            let mut h = [0u8; HEADER_LEN];
            h.copy_from_slice(&bytes[..HEADER_LEN]);
            self.update(&h);
            bytes = &bytes[len..];
            n += 1;
        }
        Ok(n)
    }

    /// The digest so far.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Frames added so far.
    pub fn frame_count(&self) -> u32 {
        self.frames
    }

    /// The commit marker for `epoch` closing the frames added so far.
    pub fn commit(&self, epoch: u64) -> EpochCommit {
        EpochCommit {
            epoch,
            frame_count: self.frames,
            digest: self.digest,
        }
    }
}
