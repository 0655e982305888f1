//! The 32-byte frame header: a byte view and its validated plain form.
//!
//! Every frame is this header followed by `payload_len` payload bytes. All fields
//! are little-endian at fixed offsets (see `mod field` and `docs/format.md`):
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `b"CSYN"` |
//! | 4..6 | format major version (u16) |
//! | 6..8 | format minor version (u16) |
//! | 8..10 | frame kind (u16, [`FrameKind`]) |
//! | 10..12 | flags (u16, reserved, 0) |
//! | 12..16 | payload length in bytes (u32, at most [`MAX_PAYLOAD_BYTES`]) |
//! | 16..24 | payload checksum: xxh3-64 of the payload (u64) |
//! | 24..28 | reserved (u32, 0) |
//! | 28..32 | header checksum: low 32 bits of xxh3-64 of bytes 0..28 (u32) |
//!
//! [`FrameHeaderView::new_checked`] only checks that the buffer holds a whole header;
//! after it succeeds **no accessor can panic**, whatever the bytes are. Meaning is
//! checked by [`FrameHeader::parse`], in this order: magic, major version, header
//! checksum, minor version, reserved fields, kind, payload length. The major version
//! is checked before the checksum because another major may lay the header out
//! differently after byte 8; every later field is only trusted once the checksum
//! has matched, so a corrupted length is never used to size a read.

use core::ops::Range;

use static_assertions::const_assert_eq;
use xxhash_rust::xxh3::xxh3_64;

use crate::error::Error;

/// Format magic: the first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"CSYN";
/// Major format version written and read by this build.
pub const FORMAT_MAJOR: u16 = 1;
/// Minor format version written by this build; frames with a minor up to this load.
pub const FORMAT_MINOR: u16 = 1;
/// Length of the frame header in bytes.
pub const HEADER_LEN: usize = 32;
/// Largest payload a frame may carry: one 4 MiB page run plus its 24-byte prefix, rounded up.
pub const MAX_PAYLOAD_BYTES: u32 = 4 * 1024 * 1024 + 64;
/// Largest frame (header + payload) in bytes: the buffer size that always suffices.
pub const MAX_FRAME_LEN: usize = HEADER_LEN + MAX_PAYLOAD_BYTES as usize;

/// Byte ranges of the header fields.
pub mod field {
    use core::ops::Range;
    /// Magic `b"CSYN"`.
    pub const MAGIC: Range<usize> = 0..4;
    /// Format major version, u16.
    pub const VERSION_MAJOR: Range<usize> = 4..6;
    /// Format minor version, u16.
    pub const VERSION_MINOR: Range<usize> = 6..8;
    /// Frame kind, u16.
    pub const KIND: Range<usize> = 8..10;
    /// Flags, u16, reserved (0).
    pub const FLAGS: Range<usize> = 10..12;
    /// Payload length in bytes, u32.
    pub const PAYLOAD_LEN: Range<usize> = 12..16;
    /// xxh3-64 of the payload, u64.
    pub const PAYLOAD_CHECKSUM: Range<usize> = 16..24;
    /// Reserved u32 (0).
    pub const RESERVED: Range<usize> = 24..28;
    /// Low 32 bits of xxh3-64 over bytes `0..HEADER_CHECKSUM.start`, u32.
    pub const HEADER_CHECKSUM: Range<usize> = 28..32;
}

const_assert_eq!(field::HEADER_CHECKSUM.end, HEADER_LEN);
const_assert_eq!(field::MAGIC.end, field::VERSION_MAJOR.start);
const_assert_eq!(field::VERSION_MAJOR.end, field::VERSION_MINOR.start);
const_assert_eq!(field::VERSION_MINOR.end, field::KIND.start);
const_assert_eq!(field::KIND.end, field::FLAGS.start);
const_assert_eq!(field::FLAGS.end, field::PAYLOAD_LEN.start);
const_assert_eq!(field::PAYLOAD_LEN.end, field::PAYLOAD_CHECKSUM.start);
const_assert_eq!(field::PAYLOAD_CHECKSUM.end, field::RESERVED.start);
const_assert_eq!(field::RESERVED.end, field::HEADER_CHECKSUM.start);
const_assert_eq!(field::HEADER_CHECKSUM.start, 28);

/// What a frame carries. 0 is reserved and never valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum FrameKind {
    /// [`crate::ProcessInfo`]: process-wide facts. First record of every epoch.
    ProcessInfo = 1,
    /// [`crate::VmaTable`]: a table of memory mappings.
    VmaTable = 2,
    /// [`crate::PageRun`]: contents of consecutive pages.
    PageRun = 3,
    /// [`crate::ThreadState`]: one thread's registers and signal state.
    ThreadState = 4,
    /// [`crate::SignalTable`]: the 64 signal dispositions.
    SignalTable = 5,
    /// [`crate::FdTable`]: the open file descriptors.
    FdTable = 6,
    /// [`crate::EpochBegin`]: opens an epoch.
    EpochBegin = 7,
    /// [`crate::EpochCommit`]: closes an epoch; the epoch applies only once this verifies.
    EpochCommit = 8,
    /// [`crate::Credentials`]: one thread's ids, groups and capabilities (minor 1).
    Credentials = 9,
    /// [`crate::MappedFiles`]: identity of every mapped file (minor 1).
    MappedFiles = 10,
    /// [`crate::Hello`]: replication handshake.
    Hello = 16,
    /// [`crate::Ack`]: the backup applied an epoch.
    Ack = 17,
    /// [`crate::Heartbeat`]: liveness, both ways.
    Heartbeat = 18,
    /// [`crate::ErrorFrame`]: a peer reports an error with a reason code.
    Error = 19,
}

impl FrameKind {
    /// Every kind, in tag order.
    pub const ALL: [FrameKind; 14] = [
        FrameKind::ProcessInfo,
        FrameKind::VmaTable,
        FrameKind::PageRun,
        FrameKind::ThreadState,
        FrameKind::SignalTable,
        FrameKind::FdTable,
        FrameKind::EpochBegin,
        FrameKind::EpochCommit,
        FrameKind::Credentials,
        FrameKind::MappedFiles,
        FrameKind::Hello,
        FrameKind::Ack,
        FrameKind::Heartbeat,
        FrameKind::Error,
    ];

    /// The kind for a raw tag; 0 and unknown tags are [`Error::UnknownKind`].
    pub fn from_raw(raw: u16) -> Result<Self, Error> {
        Ok(match raw {
            1 => FrameKind::ProcessInfo,
            2 => FrameKind::VmaTable,
            3 => FrameKind::PageRun,
            4 => FrameKind::ThreadState,
            5 => FrameKind::SignalTable,
            6 => FrameKind::FdTable,
            7 => FrameKind::EpochBegin,
            8 => FrameKind::EpochCommit,
            9 => FrameKind::Credentials,
            10 => FrameKind::MappedFiles,
            16 => FrameKind::Hello,
            17 => FrameKind::Ack,
            18 => FrameKind::Heartbeat,
            19 => FrameKind::Error,
            _ => return Err(Error::UnknownKind { kind: raw }),
        })
    }

    /// The raw tag.
    pub fn raw(self) -> u16 {
        self as u16
    }

    /// True for replication control frames (Hello, Ack, Heartbeat, Error), which are
    /// never part of a checkpoint.
    pub fn is_control(self) -> bool {
        matches!(
            self,
            FrameKind::Hello | FrameKind::Ack | FrameKind::Heartbeat | FrameKind::Error
        )
    }
}

/// xxh3-64 of a payload: the checksum stored in the header.
pub fn payload_checksum(payload: &[u8]) -> u64 {
    xxh3_64(payload)
}

/// The header checksum of a header's first 28 bytes.
pub fn header_checksum(first_28: &[u8]) -> u32 {
    xxh3_64(first_28) as u32
}

/// A byte view of a frame header. See the module docs for what is checked when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeaderView<B: AsRef<[u8]>> {
    buffer: B,
}

impl<B: AsRef<[u8]>> FrameHeaderView<B> {
    /// Wraps `buffer` if it holds at least [`HEADER_LEN`] bytes. After this no accessor
    /// can panic. Fields are not validated: use [`FrameHeader::parse`] for that.
    pub fn new_checked(buffer: B) -> Result<Self, Error> {
        let len = buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated {
                needed: HEADER_LEN as u64,
                available: len as u64,
            });
        }
        Ok(FrameHeaderView { buffer })
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> B {
        self.buffer
    }

    fn bytes<const N: usize>(&self, range: Range<usize>) -> [u8; N] {
        let mut out = [0u8; N];
        // new_checked guaranteed HEADER_LEN bytes and every range lies below it.
        if let Some(src) = self.buffer.as_ref().get(range) {
            out.copy_from_slice(src);
        }
        out
    }

    /// Bytes 0..4.
    pub fn magic(&self) -> [u8; 4] {
        self.bytes(field::MAGIC)
    }
    /// Format major version.
    pub fn version_major(&self) -> u16 {
        u16::from_le_bytes(self.bytes(field::VERSION_MAJOR))
    }
    /// Format minor version.
    pub fn version_minor(&self) -> u16 {
        u16::from_le_bytes(self.bytes(field::VERSION_MINOR))
    }
    /// The raw frame kind tag (may be unknown).
    pub fn kind_raw(&self) -> u16 {
        u16::from_le_bytes(self.bytes(field::KIND))
    }
    /// The flags word (reserved).
    pub fn flags(&self) -> u16 {
        u16::from_le_bytes(self.bytes(field::FLAGS))
    }
    /// Announced payload length in bytes (not yet trusted).
    pub fn payload_len(&self) -> u32 {
        u32::from_le_bytes(self.bytes(field::PAYLOAD_LEN))
    }
    /// Stored payload checksum.
    pub fn payload_checksum(&self) -> u64 {
        u64::from_le_bytes(self.bytes(field::PAYLOAD_CHECKSUM))
    }
    /// The reserved word.
    pub fn reserved(&self) -> u32 {
        u32::from_le_bytes(self.bytes(field::RESERVED))
    }
    /// Stored header checksum.
    pub fn header_checksum(&self) -> u32 {
        u32::from_le_bytes(self.bytes(field::HEADER_CHECKSUM))
    }
    /// Header checksum computed over bytes 0..28.
    pub fn compute_header_checksum(&self) -> u32 {
        let first: [u8; 28] = self.bytes(0..field::HEADER_CHECKSUM.start);
        header_checksum(&first)
    }
}

/// A validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// Format major version (always [`FORMAT_MAJOR`] once parsed).
    pub version_major: u16,
    /// Format minor version (at most [`FORMAT_MINOR`] once parsed).
    pub version_minor: u16,
    /// What the payload is.
    pub kind: FrameKind,
    /// Payload length in bytes, at most [`MAX_PAYLOAD_BYTES`].
    pub payload_len: u32,
    /// xxh3-64 of the payload.
    pub payload_checksum: u64,
}

impl FrameHeader {
    /// A header of this build's version for `payload`.
    pub fn for_payload(kind: FrameKind, payload: &[u8]) -> Self {
        FrameHeader {
            version_major: FORMAT_MAJOR,
            version_minor: FORMAT_MINOR,
            kind,
            payload_len: payload.len() as u32,
            payload_checksum: payload_checksum(payload),
        }
    }

    /// Validates a header view (see the module docs for the order of checks).
    pub fn parse<B: AsRef<[u8]>>(view: &FrameHeaderView<B>) -> Result<Self, Error> {
        let magic = view.magic();
        if magic != MAGIC {
            return Err(Error::HeaderBadMagic { found: magic });
        }
        let major = view.version_major();
        if major != FORMAT_MAJOR {
            return Err(Error::HeaderUnsupportedMajor {
                found: major,
                supported: FORMAT_MAJOR,
            });
        }
        let stored = view.header_checksum();
        let computed = view.compute_header_checksum();
        if stored != computed {
            return Err(Error::HeaderBadChecksum { stored, computed });
        }
        let minor = view.version_minor();
        if minor > FORMAT_MINOR {
            return Err(Error::HeaderNewerMinor {
                found: minor,
                supported: FORMAT_MINOR,
            });
        }
        if view.flags() != 0 || view.reserved() != 0 {
            return Err(Error::HeaderReservedNonZero {
                flags: view.flags(),
                reserved: view.reserved(),
            });
        }
        let kind = FrameKind::from_raw(view.kind_raw())?;
        let payload_len = view.payload_len();
        if payload_len > MAX_PAYLOAD_BYTES {
            return Err(Error::LengthOverCapacity {
                len_bytes: payload_len,
                max_bytes: MAX_PAYLOAD_BYTES,
            });
        }
        Ok(FrameHeader {
            version_major: major,
            version_minor: minor,
            kind,
            payload_len,
            payload_checksum: view.payload_checksum(),
        })
    }

    /// Parses the header at the start of `bytes`.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self, Error> {
        FrameHeader::parse(&FrameHeaderView::new_checked(bytes)?)
    }

    /// Always [`HEADER_LEN`].
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Header plus payload length in bytes.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.payload_len as usize
    }

    /// The 32 header bytes, header checksum included.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[field::MAGIC].copy_from_slice(&MAGIC);
        out[field::VERSION_MAJOR].copy_from_slice(&self.version_major.to_le_bytes());
        out[field::VERSION_MINOR].copy_from_slice(&self.version_minor.to_le_bytes());
        out[field::KIND].copy_from_slice(&self.kind.raw().to_le_bytes());
        out[field::PAYLOAD_LEN].copy_from_slice(&self.payload_len.to_le_bytes());
        out[field::PAYLOAD_CHECKSUM].copy_from_slice(&self.payload_checksum.to_le_bytes());
        let sum = header_checksum(&out[..field::HEADER_CHECKSUM.start]);
        out[field::HEADER_CHECKSUM].copy_from_slice(&sum.to_le_bytes());
        out
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `out`.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        match out.get_mut(..HEADER_LEN) {
            Some(dst) => {
                dst.copy_from_slice(&self.to_bytes());
                Ok(HEADER_LEN)
            }
            None => Err(Error::EmitBufferTooSmall {
                needed: HEADER_LEN as u64,
                available: out.len() as u64,
            }),
        }
    }

    /// Checks `payload` against the stored length and checksum.
    pub fn verify_payload(&self, payload: &[u8]) -> Result<(), Error> {
        if payload.len() != self.payload_len as usize {
            return Err(Error::PayloadLengthMismatch {
                header_len: self.payload_len,
                actual_len: payload.len() as u64,
            });
        }
        let computed = payload_checksum(payload);
        if computed != self.payload_checksum {
            return Err(Error::PayloadBadChecksum {
                stored: self.payload_checksum,
                computed,
            });
        }
        Ok(())
    }
}
