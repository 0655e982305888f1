//! The one error type of the format.
//!
//! Variants are prefixed by the phase that found the problem:
//!
//! | prefix | phase |
//! |---|---|
//! | `Header*`, `Truncated`, `LengthOverCapacity`, `UnknownKind` | reading the 32-byte frame header |
//! | `Payload*` | checking the payload against the header |
//! | `Record*`, `PageRun*` | parsing (or emitting) one record's payload: syntax and bounds |
//! | `Emit*` | writing a frame into a caller buffer |
//! | `Stream*` | the streaming decoder |
//! | `Encode*` | the page-run encoder |
//! | `Validate*` | the semantic check of a whole epoch ([`crate::validate`]) |
//!
//! Values carry what was found (and what was expected) where that helps; they never
//! carry a file or stream offset: the caller adds that (see
//! [`crate::StreamDecoder::stream_offset`]).

use core::fmt;

use crate::header::FrameKind;

/// Everything that can go wrong reading, writing or validating the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    // ---- frame header ----
    /// Fewer bytes than a header, or than the frame the header announces.
    Truncated {
        /// Bytes needed for the header or frame.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// The first four bytes are not `CSYN`.
    HeaderBadMagic {
        /// The bytes found.
        found: [u8; 4],
    },
    /// The frame was written by another major version of the format.
    HeaderUnsupportedMajor {
        /// Major version found in the frame.
        found: u16,
        /// Major version this build reads.
        supported: u16,
    },
    /// Same major version, but a newer minor than this build knows.
    HeaderNewerMinor {
        /// Minor version found in the frame.
        found: u16,
        /// Newest minor version this build reads.
        supported: u16,
    },
    /// The header checksum does not match header bytes 0..28.
    HeaderBadChecksum {
        /// Checksum stored in the header.
        stored: u32,
        /// Checksum computed over the header.
        computed: u32,
    },
    /// The reserved flags or reserved header word are not zero.
    HeaderReservedNonZero {
        /// The flags field.
        flags: u16,
        /// The reserved word.
        reserved: u32,
    },
    /// The frame kind is 0 (reserved) or not known to this version.
    UnknownKind {
        /// The raw kind value.
        kind: u16,
    },
    /// The payload length exceeds [`crate::MAX_PAYLOAD_BYTES`].
    LengthOverCapacity {
        /// Announced payload length in bytes.
        len_bytes: u32,
        /// The limit.
        max_bytes: u32,
    },

    // ---- payload ----
    /// The payload's xxh3-64 does not match the header.
    PayloadBadChecksum {
        /// Checksum stored in the header.
        stored: u64,
        /// Checksum computed over the payload.
        computed: u64,
    },
    /// The payload slice handed to [`crate::Record::parse`] is not as long as the header says.
    PayloadLengthMismatch {
        /// Length announced by the header.
        header_len: u32,
        /// Length of the slice given.
        actual_len: u64,
    },

    // ---- record syntax ----
    /// A field runs past the end of the payload.
    RecordTruncated {
        /// Offset in the payload where the field starts.
        offset: u32,
        /// Bytes the field needs.
        needed: u64,
    },
    /// Bytes left over after the last field of a record.
    RecordTrailingBytes {
        /// Number of unread bytes.
        extra: u32,
    },
    /// An enum tag is 0 (reserved) or unknown.
    RecordBadTag {
        /// Which field.
        field: &'static str,
        /// The raw value.
        value: u32,
    },
    /// A bit set that is not defined for this field.
    RecordUnknownBits {
        /// Which field.
        field: &'static str,
        /// The raw value.
        value: u64,
    },
    /// A variable-length field or count exceeds its fixed capacity.
    RecordOverCapacity {
        /// Which field.
        field: &'static str,
        /// Length or count found.
        len: u64,
        /// The capacity.
        max: u64,
    },
    /// A field has a length that its context forbids (e.g. raw page data that is not
    /// `npages * 4096` bytes, a v4 address that is not 4 bytes).
    RecordBadLength {
        /// Which field.
        field: &'static str,
        /// Length found.
        len: u64,
        /// Length expected.
        expected: u64,
    },
    /// An address that must be page aligned is not.
    RecordUnalignedAddress {
        /// Which field.
        field: &'static str,
        /// The address.
        addr: u64,
    },
    /// A range with `start >= end`, or whose end overflows.
    RecordBadRange {
        /// Start of the range.
        start: u64,
        /// End of the range.
        end: u64,
    },
    /// A page count outside `1..=MAX_RUN_PAGES`.
    RecordBadPageCount {
        /// The count found.
        npages: u32,
    },
    /// Any other out-of-domain value (a negative fd, a boolean byte that is not 0/1, ...).
    RecordBadValue {
        /// Which field.
        field: &'static str,
        /// The raw value.
        value: u64,
    },
    /// The per-run checksum of a page run's stored bytes does not match.
    PageRunBadChecksum {
        /// Start address of the run.
        start: u64,
        /// Checksum stored in the run.
        stored: u64,
        /// Checksum computed over the stored bytes.
        computed: u64,
    },
    /// LZ4 data that does not decompress to exactly `npages * 4096` bytes (std helpers).
    PageRunBadCompression {
        /// Start address of the run.
        start: u64,
    },

    // ---- emit ----
    /// The caller's output buffer is too small for the frame.
    EmitBufferTooSmall {
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },

    // ---- stream ----
    /// A frame is longer than the decoder's buffer.
    StreamFrameTooLarge {
        /// Length of the whole frame (header + payload).
        frame_len: u64,
        /// The decoder's capacity.
        capacity: u64,
    },

    // ---- page-run encoder ----
    /// Dirty page addresses must be strictly increasing.
    EncodeUnsortedPages {
        /// The address found out of order (or repeated).
        addr: u64,
    },
    /// A dirty page address that is not page aligned.
    EncodeUnalignedPage {
        /// The address.
        addr: u64,
    },
    /// The page source returned a slice that is not exactly one page.
    EncodeBadPage {
        /// The page's address.
        addr: u64,
        /// Length of the slice returned.
        len: u64,
    },

    // ---- epoch validation ----
    /// The first frame of an epoch is not `EpochBegin`.
    ValidateMissingEpochBegin {
        /// The kind found instead.
        found: FrameKind,
    },
    /// The frame after `EpochBegin` is not `ProcessInfo`.
    ValidateMissingProcessInfo {
        /// The kind found instead.
        found: FrameKind,
    },
    /// A record that may appear once per epoch appeared again.
    ValidateDuplicateRecord {
        /// Its kind.
        kind: FrameKind,
    },
    /// A record every epoch must carry is missing at the commit.
    ValidateMissingRecord {
        /// Its kind.
        kind: FrameKind,
    },
    /// A replication control frame inside an epoch.
    ValidateUnexpectedControl {
        /// Its kind.
        kind: FrameKind,
    },
    /// A frame after the epoch's commit.
    ValidateRecordAfterCommit {
        /// Its kind.
        kind: FrameKind,
    },
    /// The epoch ended without `EpochCommit`.
    ValidateMissingCommit,
    /// The page size is not 4096.
    ValidateUnsupportedPageSize {
        /// The page size found.
        page_size: u32,
    },
    /// The XSAVE size is below 576 bytes or not a multiple of 64.
    ValidateBadXsaveSize {
        /// The size found.
        xsave_size_bytes: u32,
    },
    /// An mm layout pair with start > end.
    ValidateBadMmLayout {
        /// Which pair.
        field: &'static str,
    },
    /// VMAs overlap or are not in increasing address order.
    ValidateOverlappingVma {
        /// Start of the offending VMA.
        start: u64,
        /// End of the VMA before it.
        prev_end: u64,
    },
    /// More VMAs than the validator's scratch space holds.
    ValidateTooManyVmas {
        /// The scratch capacity.
        capacity: u32,
    },
    /// A VMA table frame after the first page run.
    ValidateVmaAfterPageRun {
        /// Start of the first VMA of the late table.
        start: u64,
    },
    /// Page runs overlap or are not in increasing address order.
    ValidatePageRunOrder {
        /// Start of the offending run.
        start: u64,
        /// End of the run before it.
        prev_end: u64,
    },
    /// A page of the run lies in no VMA.
    ValidatePageRunOutsideVma {
        /// First page not covered.
        addr: u64,
    },
    /// A page of the run lies in a PROT_NONE VMA or a reservation.
    ValidatePageRunInReservation {
        /// First such page.
        addr: u64,
    },
    /// The number of thread states differs from `ProcessInfo.thread_count`.
    ValidateThreadCount {
        /// `thread_count` from ProcessInfo.
        expected: u32,
        /// Thread states seen.
        found: u32,
    },
    /// Two thread states carry the same tid.
    ValidateDuplicateTid {
        /// The tid.
        tid: u32,
    },
    /// Thread states are not in increasing tid order.
    ValidateThreadOrder {
        /// The tid found out of order.
        tid: u32,
    },
    /// No thread state has `tid == pid` (the main thread).
    ValidateMissingMainThread {
        /// The pid.
        pid: u32,
    },
    /// The number of Credentials frames differs from `ProcessInfo.thread_count`.
    ValidateCredentialsCount {
        /// `thread_count` from ProcessInfo.
        expected: u32,
        /// Credentials frames seen.
        found: u32,
    },
    /// Credentials frames are not in strictly increasing tid order (or repeat a tid).
    ValidateCredentialsOrder {
        /// The tid found out of order.
        tid: u32,
    },
    /// No Credentials frame has `tid == pid` (the main thread).
    ValidateMissingMainCredentials {
        /// The pid.
        pid: u32,
    },
    /// A thread's XSAVE blob differs in size from `ProcessInfo.xsave_size_bytes`.
    ValidateXsaveSize {
        /// The thread.
        tid: u32,
        /// Its blob's length.
        len_bytes: u32,
        /// The process's XSAVE size.
        expected: u32,
    },
    /// SIGKILL or SIGSTOP with a handler other than SIG_DFL.
    ValidateSignalNotCatchable {
        /// The signal number.
        signo: u32,
    },
    /// Two fd entries with the same number, or fds not in increasing order.
    ValidateDuplicateFd {
        /// The fd.
        fd: i32,
    },
    /// An fd the restorer cannot recreate (`FdKind::Other`).
    ValidateUnsupportedFd {
        /// The fd.
        fd: i32,
    },
    /// `EpochCommit.epoch` differs from `EpochBegin.epoch`.
    ValidateEpochMismatch {
        /// Epoch of the begin marker.
        begin: u64,
        /// Epoch of the commit marker.
        commit: u64,
    },
    /// `EpochCommit.frame_count` differs from the frames seen.
    ValidateFrameCount {
        /// Count in the commit marker.
        expected: u32,
        /// Frames seen.
        found: u32,
    },
    /// `EpochCommit.digest` differs from the digest of the frames seen.
    ValidateEpochDigest {
        /// Digest in the commit marker.
        expected: u64,
        /// Digest computed.
        computed: u64,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Error::*;
        match *self {
            Truncated { needed, available } => {
                write!(f, "truncated frame: need {needed} bytes, have {available}")
            }
            HeaderBadMagic { found } => write!(f, "bad frame magic {found:02x?} (expected \"CSYN\")"),
            HeaderUnsupportedMajor { found, supported } => write!(
                f,
                "unsupported format major version {found} (this build reads {supported})"
            ),
            HeaderNewerMinor { found, supported } => write!(
                f,
                "format minor version {found} is newer than this build's {supported}"
            ),
            HeaderBadChecksum { stored, computed } => write!(
                f,
                "header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ),
            HeaderReservedNonZero { flags, reserved } => write!(
                f,
                "reserved header fields not zero: flags {flags:#06x}, reserved {reserved:#010x}"
            ),
            UnknownKind { kind } => write!(f, "unknown frame kind {kind}"),
            LengthOverCapacity { len_bytes, max_bytes } => write!(
                f,
                "payload length {len_bytes} bytes exceeds the limit of {max_bytes}"
            ),
            PayloadBadChecksum { stored, computed } => write!(
                f,
                "payload checksum mismatch: stored {stored:#018x}, computed {computed:#018x}"
            ),
            PayloadLengthMismatch { header_len, actual_len } => write!(
                f,
                "payload is {actual_len} bytes but the header says {header_len}"
            ),
            RecordTruncated { offset, needed } => write!(
                f,
                "record truncated: field at payload offset {offset} needs {needed} bytes"
            ),
            RecordTrailingBytes { extra } => write!(f, "{extra} unexpected bytes after the record"),
            RecordBadTag { field, value } => write!(f, "{field}: unknown or reserved tag {value}"),
            RecordUnknownBits { field, value } => {
                write!(f, "{field}: undefined bits set in {value:#x}")
            }
            RecordOverCapacity { field, len, max } => {
                write!(f, "{field}: length {len} exceeds the capacity {max}")
            }
            RecordBadLength { field, len, expected } => {
                write!(f, "{field}: length {len}, expected {expected}")
            }
            RecordUnalignedAddress { field, addr } => {
                write!(f, "{field}: address {addr:#x} is not page aligned")
            }
            RecordBadRange { start, end } => write!(f, "empty or inverted range {start:#x}..{end:#x}"),
            RecordBadPageCount { npages } => {
                write!(f, "page count {npages} outside 1..={}", crate::MAX_RUN_PAGES)
            }
            RecordBadValue { field, value } => write!(f, "{field}: invalid value {value:#x}"),
            PageRunBadChecksum { start, stored, computed } => write!(
                f,
                "page run at {start:#x}: data checksum mismatch, stored {stored:#018x}, computed {computed:#018x}"
            ),
            PageRunBadCompression { start } => write!(
                f,
                "page run at {start:#x}: LZ4 data does not decompress to the run's size"
            ),
            EmitBufferTooSmall { needed, available } => write!(
                f,
                "output buffer too small: need {needed} bytes, have {available}"
            ),
            StreamFrameTooLarge { frame_len, capacity } => write!(
                f,
                "frame of {frame_len} bytes does not fit the decoder buffer of {capacity}"
            ),
            EncodeUnsortedPages { addr } => {
                write!(f, "dirty page {addr:#x} is not above the previous one")
            }
            EncodeUnalignedPage { addr } => write!(f, "dirty page {addr:#x} is not page aligned"),
            EncodeBadPage { addr, len } => {
                write!(f, "page source returned {len} bytes for page {addr:#x}")
            }
            ValidateMissingEpochBegin { found } => {
                write!(f, "epoch does not start with EpochBegin (found {found:?})")
            }
            ValidateMissingProcessInfo { found } => write!(
                f,
                "ProcessInfo must follow EpochBegin (found {found:?})"
            ),
            ValidateDuplicateRecord { kind } => write!(f, "more than one {kind:?} in the epoch"),
            ValidateMissingRecord { kind } => write!(f, "the epoch has no {kind:?}"),
            ValidateUnexpectedControl { kind } => {
                write!(f, "control frame {kind:?} inside an epoch")
            }
            ValidateRecordAfterCommit { kind } => write!(f, "{kind:?} after EpochCommit"),
            ValidateMissingCommit => write!(f, "the epoch has no EpochCommit"),
            ValidateUnsupportedPageSize { page_size } => {
                write!(f, "unsupported page size {page_size}")
            }
            ValidateBadXsaveSize { xsave_size_bytes } => write!(
                f,
                "XSAVE size {xsave_size_bytes} is not a multiple of 64 of at least 576"
            ),
            ValidateBadMmLayout { field } => write!(f, "mm layout: {field} start above end"),
            ValidateOverlappingVma { start, prev_end } => write!(
                f,
                "VMA at {start:#x} overlaps or precedes the previous VMA ending at {prev_end:#x}"
            ),
            ValidateTooManyVmas { capacity } => {
                write!(f, "more than {capacity} VMAs (validator scratch space)")
            }
            ValidateVmaAfterPageRun { start } => {
                write!(f, "VMA table (first VMA {start:#x}) after a page run")
            }
            ValidatePageRunOrder { start, prev_end } => write!(
                f,
                "page run at {start:#x} overlaps or precedes the previous run ending at {prev_end:#x}"
            ),
            ValidatePageRunOutsideVma { addr } => write!(f, "page {addr:#x} lies in no VMA"),
            ValidatePageRunInReservation { addr } => write!(
                f,
                "page {addr:#x} lies in a PROT_NONE VMA or reservation"
            ),
            ValidateThreadCount { expected, found } => write!(
                f,
                "ProcessInfo says {expected} threads but the epoch has {found} thread states"
            ),
            ValidateDuplicateTid { tid } => write!(f, "tid {tid} appears twice"),
            ValidateThreadOrder { tid } => write!(f, "thread {tid} is out of tid order"),
            ValidateMissingMainThread { pid } => write!(f, "no thread state for the main thread {pid}"),
            ValidateCredentialsCount { expected, found } => write!(
                f,
                "ProcessInfo says {expected} threads but the epoch has {found} Credentials frames"
            ),
            ValidateCredentialsOrder { tid } => {
                write!(f, "Credentials of thread {tid} repeated or out of tid order")
            }
            ValidateMissingMainCredentials { pid } => {
                write!(f, "no Credentials frame for the main thread {pid}")
            }
            ValidateXsaveSize { tid, len_bytes, expected } => write!(
                f,
                "thread {tid}: XSAVE blob is {len_bytes} bytes, the process's XSAVE size is {expected}"
            ),
            ValidateSignalNotCatchable { signo } => {
                write!(f, "signal {signo} cannot have a handler")
            }
            ValidateDuplicateFd { fd } => write!(f, "fd {fd} repeated or out of order"),
            ValidateUnsupportedFd { fd } => write!(f, "fd {fd} is of a kind that cannot be restored"),
            ValidateEpochMismatch { begin, commit } => write!(
                f,
                "EpochCommit for epoch {commit} closes epoch {begin}"
            ),
            ValidateFrameCount { expected, found } => write!(
                f,
                "EpochCommit counts {expected} frames, {found} were seen"
            ),
            ValidateEpochDigest { expected, computed } => write!(
                f,
                "epoch digest mismatch: commit says {expected:#018x}, computed {computed:#018x}"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}
