//! `Record`: any frame's payload as a validated plain form, and whole-frame helpers.
//!
//! Order of work on input bytes: header view (length) → [`FrameHeader::parse`]
//! (magic, version, header checksum, kind, length bound) → the frame's length against
//! the input → payload checksum → [`Record::parse`] (the payload's syntax and bounds).
//! [`parse_frame`] does all of it. Semantic checks across records are
//! [`crate::validate`]'s job.

use crate::control::{Ack, ErrorFrame, Heartbeat, Hello};
use crate::creds::Credentials;
use crate::epoch::{EpochBegin, EpochCommit};
use crate::error::Error;
use crate::fd::FdTable;
use crate::files::MappedFiles;
use crate::header::{
    payload_checksum, FrameHeader, FrameHeaderView, FrameKind, HEADER_LEN, MAX_PAYLOAD_BYTES,
};
use crate::page::{verify_page_run_payload, PageRun};
use crate::process::ProcessInfo;
use crate::signal::SignalTable;
use crate::thread::ThreadState;
use crate::vma::VmaTable;

/// One frame's payload, by kind. Variable-size fields borrow from the input.
// No allocator in the stub: records live briefly on the stack, so the size
// difference between variants (ProcessInfo's inline rlimits) is accepted.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// Process-wide facts.
    ProcessInfo(ProcessInfo<'a>),
    /// Memory mappings.
    VmaTable(VmaTable<'a>),
    /// Page contents.
    PageRun(PageRun<'a>),
    /// One thread.
    ThreadState(ThreadState<'a>),
    /// Signal dispositions.
    SignalTable(SignalTable<'a>),
    /// Open fds.
    FdTable(FdTable<'a>),
    /// Epoch start.
    EpochBegin(EpochBegin),
    /// Epoch commit.
    EpochCommit(EpochCommit),
    /// One thread's credentials.
    Credentials(Credentials<'a>),
    /// Identity of the mapped files.
    MappedFiles(MappedFiles<'a>),
    /// Replication handshake.
    Hello(Hello),
    /// Epoch applied.
    Ack(Ack),
    /// Liveness.
    Heartbeat(Heartbeat),
    /// Peer error.
    Error(ErrorFrame<'a>),
}

macro_rules! each_record {
    ($self:expr, $r:ident => $e:expr) => {
        match $self {
            Record::ProcessInfo($r) => $e,
            Record::VmaTable($r) => $e,
            Record::PageRun($r) => $e,
            Record::ThreadState($r) => $e,
            Record::SignalTable($r) => $e,
            Record::FdTable($r) => $e,
            Record::EpochBegin($r) => $e,
            Record::EpochCommit($r) => $e,
            Record::Credentials($r) => $e,
            Record::MappedFiles($r) => $e,
            Record::Hello($r) => $e,
            Record::Ack($r) => $e,
            Record::Heartbeat($r) => $e,
            Record::Error($r) => $e,
        }
    };
}

impl<'a> Record<'a> {
    /// Parses `payload` as the kind `header` names. Checks the payload's length against
    /// the header but not its checksum (see [`FrameHeader::verify_payload`], or use
    /// [`parse_frame`], which does both).
    pub fn parse(header: &FrameHeader, payload: &'a [u8]) -> Result<Self, Error> {
        if payload.len() != header.payload_len as usize {
            return Err(Error::PayloadLengthMismatch {
                header_len: header.payload_len,
                actual_len: payload.len() as u64,
            });
        }
        Self::parse_payload(header.kind, payload)
    }

    /// Parses `payload` as a record of `kind` (no header involved).
    pub fn parse_payload(kind: FrameKind, payload: &'a [u8]) -> Result<Self, Error> {
        Ok(match kind {
            FrameKind::ProcessInfo => Record::ProcessInfo(ProcessInfo::parse(payload)?),
            FrameKind::VmaTable => Record::VmaTable(VmaTable::parse(payload)?),
            FrameKind::PageRun => Record::PageRun(PageRun::parse(payload)?),
            FrameKind::ThreadState => Record::ThreadState(ThreadState::parse(payload)?),
            FrameKind::SignalTable => Record::SignalTable(SignalTable::parse(payload)?),
            FrameKind::FdTable => Record::FdTable(FdTable::parse(payload)?),
            FrameKind::EpochBegin => Record::EpochBegin(EpochBegin::parse(payload)?),
            FrameKind::EpochCommit => Record::EpochCommit(EpochCommit::parse(payload)?),
            FrameKind::Credentials => Record::Credentials(Credentials::parse(payload)?),
            FrameKind::MappedFiles => Record::MappedFiles(MappedFiles::parse(payload)?),
            FrameKind::Hello => Record::Hello(Hello::parse(payload)?),
            FrameKind::Ack => Record::Ack(Ack::parse(payload)?),
            FrameKind::Heartbeat => Record::Heartbeat(Heartbeat::parse(payload)?),
            FrameKind::Error => Record::Error(ErrorFrame::parse(payload)?),
        })
    }

    /// The frame kind.
    pub fn kind(&self) -> FrameKind {
        match self {
            Record::ProcessInfo(_) => FrameKind::ProcessInfo,
            Record::VmaTable(_) => FrameKind::VmaTable,
            Record::PageRun(_) => FrameKind::PageRun,
            Record::ThreadState(_) => FrameKind::ThreadState,
            Record::SignalTable(_) => FrameKind::SignalTable,
            Record::FdTable(_) => FrameKind::FdTable,
            Record::EpochBegin(_) => FrameKind::EpochBegin,
            Record::EpochCommit(_) => FrameKind::EpochCommit,
            Record::Credentials(_) => FrameKind::Credentials,
            Record::MappedFiles(_) => FrameKind::MappedFiles,
            Record::Hello(_) => FrameKind::Hello,
            Record::Ack(_) => FrameKind::Ack,
            Record::Heartbeat(_) => FrameKind::Heartbeat,
            Record::Error(_) => FrameKind::Error,
        }
    }

    /// Payload length in bytes.
    pub fn payload_len(&self) -> usize {
        each_record!(self, r => r.buffer_len())
    }

    /// Whole frame length in bytes: [`HEADER_LEN`] plus the payload.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    /// Writes the payload only.
    pub fn emit_payload(&self, out: &mut [u8]) -> Result<usize, Error> {
        each_record!(self, r => r.emit(out))
    }

    /// Writes the whole frame (header + payload) at the start of `out`; returns its
    /// length. Allocates nothing. Fails with [`Error::EmitBufferTooSmall`] or with the
    /// error [`Record::parse`] would give for an invalid form.
    pub fn emit_frame(&self, out: &mut [u8]) -> Result<usize, Error> {
        Ok(self.emit_frame_header(out)?.frame_len())
    }

    /// Like [`Record::emit_frame`], returning the header written (for an
    /// [`crate::EpochDigest`]).
    pub fn emit_frame_header(&self, out: &mut [u8]) -> Result<FrameHeader, Error> {
        let payload_len = self.payload_len();
        if payload_len > MAX_PAYLOAD_BYTES as usize {
            return Err(Error::LengthOverCapacity {
                len_bytes: payload_len.min(u32::MAX as usize) as u32,
                max_bytes: MAX_PAYLOAD_BYTES,
            });
        }
        let total = HEADER_LEN + payload_len;
        let available = out.len();
        let Some(frame) = out.get_mut(..total) else {
            return Err(Error::EmitBufferTooSmall {
                needed: total as u64,
                available: available as u64,
            });
        };
        let (head, payload) = frame.split_at_mut(HEADER_LEN);
        let n = self.emit_payload(payload)?;
        debug_assert_eq!(n, payload_len);
        let header = FrameHeader::for_payload(self.kind(), payload);
        header.emit(head)?;
        Ok(header)
    }
}

/// A parsed frame: its header and its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The validated header.
    pub header: FrameHeader,
    /// The record.
    pub record: Record<'a>,
}

/// Parses the frame at the start of `bytes`, verifying both checksums. Returns the
/// frame and its length, so a caller can walk a buffer of frames.
pub fn parse_frame_with_header(bytes: &[u8]) -> Result<(Frame<'_>, usize), Error> {
    let header = FrameHeader::parse(&FrameHeaderView::new_checked(bytes)?)?;
    let len = header.frame_len();
    let Some(payload) = bytes.get(HEADER_LEN..len) else {
        return Err(Error::Truncated {
            needed: len as u64,
            available: bytes.len() as u64,
        });
    };
    let record = parse_verified(&header, payload)?;
    Ok((Frame { header, record }, len))
}

/// Verifies `payload` against `header` (length, checksum; for page runs also the data
/// checksum, in the same pass) and parses it.
pub fn parse_verified<'a>(header: &FrameHeader, payload: &'a [u8]) -> Result<Record<'a>, Error> {
    if payload.len() != header.payload_len as usize {
        return Err(Error::PayloadLengthMismatch {
            header_len: header.payload_len,
            actual_len: payload.len() as u64,
        });
    }
    if header.kind == FrameKind::PageRun {
        verify_page_run_payload(payload, header.payload_checksum)?;
        return Ok(Record::PageRun(PageRun::parse_unverified(payload)?));
    }
    let computed = payload_checksum(payload);
    if computed != header.payload_checksum {
        return Err(Error::PayloadBadChecksum {
            stored: header.payload_checksum,
            computed,
        });
    }
    Record::parse(header, payload)
}

/// Parses the frame at the start of `bytes`, verifying both checksums; returns the
/// record and the frame's length.
pub fn parse_frame(bytes: &[u8]) -> Result<(Record<'_>, usize), Error> {
    parse_frame_with_header(bytes).map(|(f, n)| (f.record, n))
}

/// Iterates over a buffer holding whole frames back to back (an image file read into
/// memory). Stops after the first error.
pub fn frames(bytes: &[u8]) -> Frames<'_> {
    Frames {
        bytes,
        offset: 0,
        failed: false,
    }
}

/// Iterator returned by [`frames`].
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    bytes: &'a [u8],
    offset: usize,
    failed: bool,
}

impl<'a> Frames<'a> {
    /// Offset of the next frame in the buffer (of the failing frame after an error).
    pub fn offset(&self) -> usize {
        self.offset
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, Error>;
    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.bytes.get(self.offset..)?;
        if rest.is_empty() || self.failed {
            return None;
        }
        match parse_frame_with_header(rest) {
            Ok((frame, len)) => {
                self.offset += len;
                Some(Ok(frame))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}
