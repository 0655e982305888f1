//! CheckSync's checkpoint and replication wire format.
//!
//! One format serves the image file and the replication stream. It is shared by the
//! restore stub (no_std, no allocator) and the driver (std). The byte layout is in
//! `docs/format.md`; this crate is its only implementation.
//!
//! # API summary
//!
//! Frames: a fixed 32-byte header ([`header`]) and a payload.
//! - [`FrameHeaderView::new_checked`]`(bytes)` → byte view (no accessor panics after it);
//!   [`FrameHeader::parse`]`(&view)` → validated header (magic, version, header checksum,
//!   kind, length bound); [`FrameHeader::verify_payload`]; [`FrameHeader::to_bytes`].
//! - [`Record`]`<'a>`: one variant per [`FrameKind`] (ProcessInfo, VmaTable, PageRun,
//!   ThreadState, SignalTable, FdTable, EpochBegin, EpochCommit, Credentials,
//!   MappedFiles, Hello, Ack, Heartbeat, Error). [`Record::parse`]`(&header, payload)`, [`Record::buffer_len`] (whole frame),
//!   [`Record::emit_frame`]`(&mut out) -> Result<usize>` (no allocation),
//!   [`Record::emit_frame_header`] (same, returns the header for an [`EpochDigest`]).
//!   Every record type also has `parse(payload)`, `buffer_len()` (payload) and
//!   `emit(&mut out)`.
//! - [`parse_frame`]`(bytes) -> Result<(Record, consumed)>` verifies both checksums;
//!   [`parse_frame_with_header`] also returns the header; [`frames`]`(bytes)` iterates a
//!   buffer of frames.
//! - [`StreamDecoder`]`::new(buffer)`: `feed(&[u8]) -> taken`, then
//!   `next_frame() -> Result<Option<Frame>>` until `None`; same frames for every split.
//! - [`PageRunEncoder`]: sorted dirty page addresses + a [`PageSource`] → PageRun frames
//!   (Raw or Zero, ≤ 1024 pages each) written into caller buffers, resumable.
//! - [`EpochDigest`]: running digest of an epoch's frame headers; `commit(epoch)` makes
//!   the [`EpochCommit`].
//! - [`CheckpointValidator`]: fed an epoch's frames in order (`push(&Frame)`), then
//!   `finish()`; every semantic failure is its own `Validate*` [`Error`] variant. With
//!   `std`, [`validate_epoch`] runs it over a slice.
//! - [`Error`]: one `#[non_exhaustive]` enum, phase-prefixed variants.
//!
//! # Order of use
//!
//! Writing an epoch: `EpochBegin`, `ProcessInfo`, `VmaTable`(s), `SignalTable`,
//! `FdTable`, `MappedFiles`, `ThreadState`s and `Credentials` (one per thread) in
//! increasing tid order, `PageRun`s in increasing address
//! order, then `EpochCommit` from the [`EpochDigest`] of every frame before it. Every
//! epoch, full or delta, carries the whole non-memory state; a delta epoch's page runs
//! carry only the pages written since the previous epoch.
//!
//! Reading: decode frames (checksums), parse records (syntax and bounds), validate the
//! epoch (semantics), and apply it only once `finish()` has accepted the commit.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "std")]
extern crate std;

pub mod control;
pub mod creds;
pub mod encode;
pub mod epoch;
pub mod error;
pub mod fd;
pub mod files;
pub mod header;
pub mod page;
pub mod process;
pub mod record;
pub mod signal;
pub mod stream;
pub mod table;
pub mod thread;
pub mod validate;
pub mod vma;
mod wire;

pub use control::{Ack, ErrorCode, ErrorFrame, Heartbeat, Hello, MAX_ERROR_DETAIL_BYTES};
pub use creds::{CapSets, Credentials, Gid, IdSet, Seccomp, MAX_GROUPS};
pub use encode::{
    max_encoded_len, EncodeProgress, PageRunEncoder, PageSource, RegionPages, StagedPages,
};
pub use epoch::{EpochBegin, EpochCommit, EpochDigest, EpochKind};
pub use error::Error;
pub use fd::{EpollRegistration, Fd, FdFlags, FdKind, FdTable, InetProtocol, PipeEnd, UnixType};
pub use files::{HashKind, MappedFile, MappedFiles, HASH_BYTES, MAX_MAPPED_FILES};
pub use header::{
    FrameHeader, FrameHeaderView, FrameKind, FORMAT_MAJOR, FORMAT_MINOR, HEADER_LEN, MAGIC,
    MAX_FRAME_LEN, MAX_PAYLOAD_BYTES,
};
pub use page::{PageEncoding, PageRun, MAX_RUN_PAGES, PAGE_SIZE};
pub use process::{Arch, MmLayout, ProcessInfo, Rlimit};
pub use record::{
    frames, parse_frame, parse_frame_with_header, parse_verified, Frame, Frames, Record,
};
pub use signal::{SigAction, SignalTable, NUM_SIGNALS};
pub use stream::StreamDecoder;
pub use table::{Table, TableEntry};
pub use thread::{reg, Restart, SigAltStack, ThreadState, NUM_GREGS};
#[cfg(feature = "std")]
pub use validate::validate_epoch;
pub use validate::{CheckpointValidator, EpochSummary, VmaRange};
pub use vma::{Prot, Vma, VmaFlags, VmaKind, VmaTable};
