//! Replication control frames: Hello, Ack, Heartbeat, Error.
//!
//! They travel on the replication connection between epochs and are never part of a
//! checkpoint. Payloads:
//!
//! | frame | layout |
//! |---|---|
//! | Hello (74 bytes) | protocol_version u16, node_id u64, nonce [32], mac [32] |
//! | Ack (8 bytes) | epoch u64 |
//! | Heartbeat (24 bytes) | seq u64, epoch u64, time_ms u64 |
//! | Error (16 + n bytes) | code u32, epoch u64, detail length u32 (≤ 256), detail bytes |
//!
//! How `mac` is computed (which key, over which bytes) belongs to the replication
//! protocol, not to this crate.

use crate::error::Error;
use crate::wire::{check_cap, emit_all, parse_all};

/// Payload length of Hello.
pub const HELLO_LEN: usize = 2 + 8 + 32 + 32;
/// Payload length of Ack.
pub const ACK_LEN: usize = 8;
/// Payload length of Heartbeat.
pub const HEARTBEAT_LEN: usize = 24;
/// Longest Error detail in bytes.
pub const MAX_ERROR_DETAIL_BYTES: usize = 256;

/// Handshake: who is speaking and proof that it holds the shared key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hello {
    /// Replication protocol version.
    pub protocol_version: u16,
    /// Sender's node id.
    pub node_id: u64,
    /// Sender's fresh random nonce.
    pub nonce: [u8; 32],
    /// Authentication code (defined by the replication protocol).
    pub mac: [u8; 32],
}

impl Hello {
    /// Parses a Hello payload.
    pub fn parse(payload: &[u8]) -> Result<Self, Error> {
        parse_all(payload, |r| {
            Ok(Hello {
                protocol_version: r.u16()?,
                node_id: r.u64()?,
                nonce: r.array()?,
                mac: r.array()?,
            })
        })
    }
    /// Payload length in bytes.
    pub fn buffer_len(&self) -> usize {
        HELLO_LEN
    }
    /// Writes the payload.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        emit_all(out, HELLO_LEN, |w| {
            w.u16(self.protocol_version);
            w.u64(self.node_id);
            w.bytes(&self.nonce);
            w.bytes(&self.mac);
            Ok(())
        })
    }
}

/// The backup has applied `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ack {
    /// The epoch applied.
    pub epoch: u64,
}

impl Ack {
    /// Parses an Ack payload.
    pub fn parse(payload: &[u8]) -> Result<Self, Error> {
        parse_all(payload, |r| Ok(Ack { epoch: r.u64()? }))
    }
    /// Payload length in bytes.
    pub fn buffer_len(&self) -> usize {
        ACK_LEN
    }
    /// Writes the payload.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        emit_all(out, ACK_LEN, |w| {
            w.u64(self.epoch);
            Ok(())
        })
    }
}

/// Liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Heartbeat {
    /// Sender's heartbeat sequence number.
    pub seq: u64,
    /// Latest epoch the sender sent (primary) or applied (backup).
    pub epoch: u64,
    /// Sender's monotonic time, ms.
    pub time_ms: u64,
}

impl Heartbeat {
    /// Parses a Heartbeat payload.
    pub fn parse(payload: &[u8]) -> Result<Self, Error> {
        parse_all(payload, |r| {
            Ok(Heartbeat {
                seq: r.u64()?,
                epoch: r.u64()?,
                time_ms: r.u64()?,
            })
        })
    }
    /// Payload length in bytes.
    pub fn buffer_len(&self) -> usize {
        HEARTBEAT_LEN
    }
    /// Writes the payload.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        emit_all(out, HEARTBEAT_LEN, |w| {
            w.u64(self.seq);
            w.u64(self.epoch);
            w.u64(self.time_ms);
            Ok(())
        })
    }
}

/// Reason code of an Error frame. 0 is reserved; codes this build does not know
/// parse as [`ErrorCode::Unknown`] so a newer peer's reason is still shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Malformed or unexpected frame.
    Protocol,
    /// Authentication failed.
    Auth,
    /// A checksum did not verify.
    BadChecksum,
    /// The epoch failed validation.
    Invalid,
    /// The epoch is older than one already applied (stale primary).
    StaleEpoch,
    /// The sender failed internally.
    Internal,
    /// The sender is shutting down.
    Shutdown,
    /// A code this build does not know (never 0 nor a known code).
    Unknown(u32),
}

impl ErrorCode {
    /// The code for a raw value.
    pub fn from_raw(raw: u32) -> Result<Self, Error> {
        Ok(match raw {
            0 => {
                return Err(Error::RecordBadTag {
                    field: "error.code",
                    value: 0,
                })
            }
            1 => ErrorCode::Protocol,
            2 => ErrorCode::Auth,
            3 => ErrorCode::BadChecksum,
            4 => ErrorCode::Invalid,
            5 => ErrorCode::StaleEpoch,
            6 => ErrorCode::Internal,
            7 => ErrorCode::Shutdown,
            n => ErrorCode::Unknown(n),
        })
    }

    /// The raw value.
    pub fn raw(self) -> u32 {
        match self {
            ErrorCode::Protocol => 1,
            ErrorCode::Auth => 2,
            ErrorCode::BadChecksum => 3,
            ErrorCode::Invalid => 4,
            ErrorCode::StaleEpoch => 5,
            ErrorCode::Internal => 6,
            ErrorCode::Shutdown => 7,
            ErrorCode::Unknown(n) => n,
        }
    }
}

/// A peer reports an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorFrame<'a> {
    /// Why.
    pub code: ErrorCode,
    /// The epoch concerned (0 if none).
    pub epoch: u64,
    /// Human-readable detail (≤ 256 bytes).
    pub detail: &'a [u8],
}

impl<'a> ErrorFrame<'a> {
    /// Parses an Error payload.
    pub fn parse(payload: &'a [u8]) -> Result<Self, Error> {
        parse_all(payload, |r| {
            Ok(ErrorFrame {
                code: ErrorCode::from_raw(r.u32()?)?,
                epoch: r.u64()?,
                detail: r.len_prefixed("error.detail", MAX_ERROR_DETAIL_BYTES)?,
            })
        })
    }
    /// Payload length in bytes.
    pub fn buffer_len(&self) -> usize {
        16 + self.detail.len()
    }
    /// Writes the payload; refuses `Unknown` holding 0 or a known code.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        let raw = self.code.raw();
        if ErrorCode::from_raw(raw)? != self.code {
            return Err(Error::RecordBadTag {
                field: "error.code",
                value: raw,
            });
        }
        check_cap("error.detail", self.detail.len(), MAX_ERROR_DETAIL_BYTES)?;
        emit_all(out, self.buffer_len(), |w| {
            w.u32(raw);
            w.u64(self.epoch);
            w.len_prefixed(self.detail);
            Ok(())
        })
    }
}
