//! The replication protocol's messages and their byte encoding.
//!
//! Every message is a 20-byte envelope followed by a body; all integers are
//! little-endian at fixed offsets.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `"CSRP"` |
//! | 4 | 2 | envelope version (u16), must be [`ENVELOPE_VERSION`] |
//! | 6 | 1 | message type (u8, below; 0 is invalid) |
//! | 7 | 1 | reserved, 0 |
//! | 8 | 4 | body length (u32), at most [`MAX_BODY`] |
//! | 12 | 8 | xxh3-64 of envelope bytes 0..12 followed by the body |
//! | 20 | n | body |
//!
//! Types: Hello 1, Welcome 2, Refuse 3, EpochBegin 4, EpochData 5, EpochCommit 6,
//! Ack 7, Heartbeat 8, NeedBase 9. Bodies are listed on [`Msg`]'s variants.
//!
//! Decoding ([`decode`]) checks, in order: length of the envelope, magic, envelope
//! version, reserved byte, type, body length against [`MAX_BODY`], body length against
//! the input ([`DecodeError::Truncated`], so a stream reader knows how many bytes to
//! wait for), checksum, then the body field by field; every body is consumed
//! exactly. The only allocation is an [`Msg::EpochData`] chunk, whose length is
//! checked against [`MAX_CHUNK`] and the body before anything is allocated. Nothing
//! panics on any input (the unit tests below and the simulation's corrupted
//! messages exercise this).
//!
//! The checksum only detects accidents. The replication connection is
//! authenticated and encrypted separately, so a tampered record is refused there
//! before it reaches this decoder.
//!
//! Epoch payloads are opaque here. They travel as an [`Msg::EpochBegin`], chunks of
//! at most [`MAX_CHUNK`] bytes ([`Msg::EpochData`], in order) and an
//! [`Msg::EpochCommit`] carrying the xxh3-64 of the whole payload. [`EpochStream`]
//! cuts a payload into that sequence.

use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// `"CSRP"`: CheckSync replication protocol.
pub const MAGIC: [u8; 4] = *b"CSRP";
/// Layout version of the envelope and bodies; another value is refused by the decoder.
pub const ENVELOPE_VERSION: u16 = 1;
/// Protocol version carried in [`Msg::Hello`]; the backup refuses any other value
/// (an older one is a downgrade).
pub const PROTOCOL_VERSION: u16 = 1;
/// Length of the envelope.
pub const HEADER_LEN: usize = 20;
/// Largest [`Msg::EpochData`] chunk: 1 MiB.
pub const MAX_CHUNK: usize = 1 << 20;
/// Fixed part of an EpochData body: term, epoch, offset, chunk length.
const EPOCH_DATA_FIXED: usize = 8 + 8 + 8 + 4;
/// Largest body: an EpochData with a full chunk.
pub const MAX_BODY: usize = EPOCH_DATA_FIXED + MAX_CHUNK;

const T_HELLO: u8 = 1;
const T_WELCOME: u8 = 2;
const T_REFUSE: u8 = 3;
const T_EPOCH_BEGIN: u8 = 4;
const T_EPOCH_DATA: u8 = 5;
const T_EPOCH_COMMIT: u8 = 6;
const T_ACK: u8 = 7;
const T_HEARTBEAT: u8 = 8;
const T_NEED_BASE: u8 = 9;

/// What the restoring side needs to match: the backup compares the primary's
/// values with its own before anything else is sent ([`Compat::check_primary`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compat {
    /// XCR0: the XSAVE feature mask.
    pub xsave_mask: u64,
    /// XSAVE area size in bytes.
    pub xsave_size: u32,
    /// Kernel features the epochs need on the restoring side ([`feature`] bits).
    pub kernel_features: u64,
}

/// The kernel feature bits of [`Compat::kernel_features`]: what a restore of a
/// primary's epochs relies on. The shell probes them (`linux::features`).
pub mod feature {
    /// `userfaultfd(2)` with its API handshake: the lazy page fill.
    pub const USERFAULTFD: u64 = 1 << 0;
    /// Time namespaces: the program's monotonic and boot clocks carry on.
    pub const TIME_NS: u64 = 1 << 1;
    /// `clone3` with `set_tid` (Linux 5.5): threads get their old ids.
    pub const CLONE3_SET_TID: u64 = 1 << 2;
    /// `MAP_DROPPABLE` (Linux 6.11): the vDSO getrandom state of Go >= 1.24.
    pub const MAP_DROPPABLE: u64 = 1 << 3;
    /// MPTCP enabled (`net.mptcp.enabled`): Go >= 1.24 listens with MPTCP.
    pub const MPTCP: u64 = 1 << 4;
    /// Every bit a restore needs.
    pub const RESTORE: u64 = USERFAULTFD | TIME_NS | CLONE3_SET_TID | MAP_DROPPABLE | MPTCP;

    /// The features' names, for messages.
    pub const NAMES: [(u64, &str); 5] = [
        (USERFAULTFD, "userfaultfd"),
        (TIME_NS, "time namespaces"),
        (CLONE3_SET_TID, "clone3 set_tid"),
        (MAP_DROPPABLE, "MAP_DROPPABLE"),
        (MPTCP, "MPTCP (net.mptcp.enabled=1)"),
    ];

    /// The names of the bits set in `bits` (unknown bits in hex).
    pub fn names(bits: u64) -> String {
        let mut v: Vec<String> = NAMES
            .iter()
            .filter(|(b, _)| bits & b != 0)
            .map(|(_, n)| (*n).to_string())
            .collect();
        let unknown = bits & !NAMES.iter().fold(0, |a, (b, _)| a | b);
        if unknown != 0 {
            v.push(format!("unknown bits {unknown:#x}"));
        }
        v.join(", ")
    }
}

impl Compat {
    /// Checks a primary's values against this (the backup's) machine. The XSAVE
    /// layout must be identical, as restore requires of an image; every kernel
    /// feature the primary's epochs need must be present here.
    pub fn check_primary(&self, primary: &Compat) -> Result<(), RefuseReason> {
        if primary.xsave_mask != self.xsave_mask || primary.xsave_size != self.xsave_size {
            return Err(RefuseReason::Xsave {
                ours_mask: self.xsave_mask,
                ours_size: self.xsave_size,
                theirs_mask: primary.xsave_mask,
                theirs_size: primary.xsave_size,
            });
        }
        let missing = primary.kernel_features & !self.kernel_features;
        if missing != 0 {
            return Err(RefuseReason::KernelFeatures { missing });
        }
        Ok(())
    }
}

/// Whether an epoch stands alone or applies on top of the previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochKind {
    Full,
    Delta,
}

impl EpochKind {
    fn code(self) -> u8 {
        match self {
            EpochKind::Full => 1,
            EpochKind::Delta => 2,
        }
    }
}

/// Why a backup refuses a primary (or a stale primary's messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefuseReason {
    /// Code 1. `theirs < ours` is a downgrade.
    #[error("protocol version {theirs} refused: this node speaks version {ours}{}", if theirs < ours { " (a downgrade is refused)" } else { "" })]
    Version { ours: u16, theirs: u16 },
    /// Code 2.
    #[error("XSAVE layout differs: this node has XCR0 {ours_mask:#x} / {ours_size} bytes, the primary {theirs_mask:#x} / {theirs_size} bytes")]
    Xsave {
        ours_mask: u64,
        ours_size: u32,
        theirs_mask: u64,
        theirs_size: u32,
    },
    /// Code 3.
    #[error(
        "kernel features the primary's epochs need are missing on this node: {}",
        feature::names(*missing)
    )]
    KernelFeatures { missing: u64 },
    /// Code 4: the sender's term is older than one this node has seen.
    #[error("stale term: this node has seen term {current}")]
    StaleTerm { current: u64 },
    /// Code 5: this node serves the program itself (at `term`) and is no backup.
    #[error("this node is serving at term {term}")]
    Serving { term: u64 },
    /// Code 6: an epoch is larger than the backup accepts.
    #[error("epoch of {len} bytes is larger than this node's limit of {max} bytes")]
    EpochTooLarge { len: u64, max: u64 },
}

/// One protocol message. Bodies (after the envelope), in order of fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Primary to backup, first message of a connection. Body (46 bytes): protocol
    /// version u16, node id u64, term u64, session u64, xsave mask u64, xsave size
    /// u32, kernel features u64.
    Hello {
        protocol_version: u16,
        node_id: u64,
        term: u64,
        /// Numbers the primary's connections within its term: a repeated Hello of
        /// the same session is a duplicate, an older one is stale.
        session: u64,
        compat: Compat,
    },
    /// Backup accepts. Body (24): node id u64, term u64, session u64.
    Welcome {
        node_id: u64,
        term: u64,
        session: u64,
    },
    /// Backup refuses. Body: code u8, then the reason's fields (see [`RefuseReason`]):
    /// Version ours u16, theirs u16; Xsave ours mask u64, ours size u32, theirs mask
    /// u64, theirs size u32; KernelFeatures missing u64; StaleTerm current u64;
    /// Serving term u64; EpochTooLarge len u64, max u64.
    Refuse { reason: RefuseReason },
    /// Body (25): term u64, epoch u64, kind u8 (Full 1, Delta 2), total length u64.
    EpochBegin {
        term: u64,
        epoch: u64,
        kind: EpochKind,
        total_len: u64,
    },
    /// Body: term u64, epoch u64, offset u64, length u32 (≤ [`MAX_CHUNK`]), bytes.
    EpochData {
        term: u64,
        epoch: u64,
        offset: u64,
        bytes: Vec<u8>,
    },
    /// Body (32): term u64, epoch u64, length u64, xxh3-64 of the whole payload u64.
    EpochCommit {
        term: u64,
        epoch: u64,
        len: u64,
        checksum: u64,
    },
    /// Backup committed `epoch` (and so every epoch of its chain before it).
    /// Body (16): term u64, epoch u64.
    Ack { term: u64, epoch: u64 },
    /// Liveness, both ways. From the primary `epoch` is the last epoch it finished
    /// sending, from the backup its last committed (promotable) epoch, or 0.
    /// Body (16): term u64, epoch u64.
    Heartbeat { term: u64, epoch: u64 },
    /// Backup could not apply `epoch` (lost, out of order, corrupted, or a delta
    /// without its base) and needs a full base. Body (16): term u64, epoch u64.
    NeedBase { term: u64, epoch: u64 },
}

impl Msg {
    /// The term a message carries, if any.
    pub fn term(&self) -> Option<u64> {
        match self {
            Msg::Hello { term, .. }
            | Msg::Welcome { term, .. }
            | Msg::EpochBegin { term, .. }
            | Msg::EpochData { term, .. }
            | Msg::EpochCommit { term, .. }
            | Msg::Ack { term, .. }
            | Msg::Heartbeat { term, .. }
            | Msg::NeedBase { term, .. } => Some(*term),
            Msg::Refuse { .. } => None,
        }
    }

    /// Short name for logs and errors.
    pub fn name(&self) -> &'static str {
        type_name(self.type_code())
    }

    fn type_code(&self) -> u8 {
        match self {
            Msg::Hello { .. } => T_HELLO,
            Msg::Welcome { .. } => T_WELCOME,
            Msg::Refuse { .. } => T_REFUSE,
            Msg::EpochBegin { .. } => T_EPOCH_BEGIN,
            Msg::EpochData { .. } => T_EPOCH_DATA,
            Msg::EpochCommit { .. } => T_EPOCH_COMMIT,
            Msg::Ack { .. } => T_ACK,
            Msg::Heartbeat { .. } => T_HEARTBEAT,
            Msg::NeedBase { .. } => T_NEED_BASE,
        }
    }

    /// Appends the encoded message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&ENVELOPE_VERSION.to_le_bytes());
        out.push(self.type_code());
        out.push(0);
        out.extend_from_slice(&[0; 4]); // body length, patched below
        out.extend_from_slice(&[0; 8]); // checksum, patched below
        let body = out.len();
        match self {
            Msg::Hello {
                protocol_version,
                node_id,
                term,
                session,
                compat,
            } => {
                put16(out, *protocol_version);
                put64(out, *node_id);
                put64(out, *term);
                put64(out, *session);
                put64(out, compat.xsave_mask);
                put32(out, compat.xsave_size);
                put64(out, compat.kernel_features);
            }
            Msg::Welcome {
                node_id,
                term,
                session,
            } => {
                put64(out, *node_id);
                put64(out, *term);
                put64(out, *session);
            }
            Msg::Refuse { reason } => encode_reason(out, reason),
            Msg::EpochBegin {
                term,
                epoch,
                kind,
                total_len,
            } => {
                put64(out, *term);
                put64(out, *epoch);
                out.push(kind.code());
                put64(out, *total_len);
            }
            Msg::EpochData {
                term,
                epoch,
                offset,
                bytes,
            } => {
                if bytes.len() > MAX_CHUNK {
                    out.truncate(start);
                    return Err(EncodeError::ChunkTooLarge {
                        len: bytes.len(),
                        max: MAX_CHUNK,
                    });
                }
                put64(out, *term);
                put64(out, *epoch);
                put64(out, *offset);
                put32(out, bytes.len() as u32);
                out.extend_from_slice(bytes);
            }
            Msg::EpochCommit {
                term,
                epoch,
                len,
                checksum,
            } => {
                put64(out, *term);
                put64(out, *epoch);
                put64(out, *len);
                put64(out, *checksum);
            }
            Msg::Ack { term, epoch }
            | Msg::Heartbeat { term, epoch }
            | Msg::NeedBase { term, epoch } => {
                put64(out, *term);
                put64(out, *epoch);
            }
        }
        let body_len = (out.len() - body) as u32;
        out[start + 8..start + 12].copy_from_slice(&body_len.to_le_bytes());
        let sum = envelope_checksum(&out[start..start + 12], &out[body..]);
        out[start + 12..start + 20].copy_from_slice(&sum.to_le_bytes());
        Ok(())
    }

    /// The encoded message.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut v = Vec::new();
        self.encode(&mut v)?;
        Ok(v)
    }
}

fn type_name(code: u8) -> &'static str {
    match code {
        T_HELLO => "Hello",
        T_WELCOME => "Welcome",
        T_REFUSE => "Refuse",
        T_EPOCH_BEGIN => "EpochBegin",
        T_EPOCH_DATA => "EpochData",
        T_EPOCH_COMMIT => "EpochCommit",
        T_ACK => "Ack",
        T_HEARTBEAT => "Heartbeat",
        T_NEED_BASE => "NeedBase",
        _ => "unknown",
    }
}

fn encode_reason(out: &mut Vec<u8>, reason: &RefuseReason) {
    match *reason {
        RefuseReason::Version { ours, theirs } => {
            out.push(1);
            put16(out, ours);
            put16(out, theirs);
        }
        RefuseReason::Xsave {
            ours_mask,
            ours_size,
            theirs_mask,
            theirs_size,
        } => {
            out.push(2);
            put64(out, ours_mask);
            put32(out, ours_size);
            put64(out, theirs_mask);
            put32(out, theirs_size);
        }
        RefuseReason::KernelFeatures { missing } => {
            out.push(3);
            put64(out, missing);
        }
        RefuseReason::StaleTerm { current } => {
            out.push(4);
            put64(out, current);
        }
        RefuseReason::Serving { term } => {
            out.push(5);
            put64(out, term);
        }
        RefuseReason::EpochTooLarge { len, max } => {
            out.push(6);
            put64(out, len);
            put64(out, max);
        }
    }
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn envelope_checksum(head: &[u8], body: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(head);
    h.update(body);
    h.digest()
}

/// The xxh3-64 of an epoch payload, as [`Msg::EpochCommit`] carries it.
pub fn payload_checksum(payload: &[u8]) -> u64 {
    xxh3_64(payload)
}

/// Encoding refused a message that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("EpochData chunk of {len} bytes exceeds the limit of {max}")]
    ChunkTooLarge { len: usize, max: usize },
}

/// Why bytes are not a message. Offsets count from the start of the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ends before the envelope or the body it announces: a stream
    /// reader waits until it holds `need` bytes.
    #[error("truncated message: {need} bytes needed, {have} present")]
    Truncated { need: usize, have: usize },
    #[error("bad magic {found:02x?} at offset 0 (expected \"CSRP\")")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported envelope version {found} at offset 4 (this build reads {supported})")]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("reserved byte at offset 7 is {value:#x}, must be 0")]
    ReservedNonZero { value: u8 },
    #[error("unknown message type {found} at offset 6")]
    UnknownType { found: u8 },
    #[error("{msg} body length {len} at offset 8 exceeds the limit of {max}")]
    BodyTooLong {
        msg: &'static str,
        len: u32,
        max: usize,
    },
    #[error("{msg} checksum mismatch: header says {stored:#018x}, bytes give {computed:#018x}")]
    BadChecksum {
        msg: &'static str,
        stored: u64,
        computed: u64,
    },
    #[error("{msg}.{field} at offset {offset} runs past the end of the body")]
    FieldTruncated {
        msg: &'static str,
        field: &'static str,
        offset: usize,
    },
    #[error("{msg}.{field} at offset {offset}: invalid value {value}")]
    BadValue {
        msg: &'static str,
        field: &'static str,
        offset: usize,
        value: u64,
    },
    #[error("{msg}.{field} at offset {offset}: {value} exceeds the limit of {max}")]
    FieldTooLarge {
        msg: &'static str,
        field: &'static str,
        offset: usize,
        value: u64,
        max: u64,
    },
    #[error("{msg} has {extra} trailing bytes at offset {offset}")]
    TrailingBytes {
        msg: &'static str,
        offset: usize,
        extra: usize,
    },
}

/// Decodes one message from the front of `buf`; returns it and the number of bytes
/// it used.
pub fn decode(buf: &[u8]) -> Result<(Msg, usize), DecodeError> {
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::Truncated {
            need: HEADER_LEN,
            have: buf.len(),
        });
    }
    let magic = [buf[0], buf[1], buf[2], buf[3]];
    if magic != MAGIC {
        return Err(DecodeError::BadMagic { found: magic });
    }
    let version = u16::from_le_bytes([buf[4], buf[5]]);
    if version != ENVELOPE_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: version,
            supported: ENVELOPE_VERSION,
        });
    }
    let ty = buf[6];
    if buf[7] != 0 {
        return Err(DecodeError::ReservedNonZero { value: buf[7] });
    }
    let msg = type_name(ty);
    if !(T_HELLO..=T_NEED_BASE).contains(&ty) {
        return Err(DecodeError::UnknownType { found: ty });
    }
    let body_len = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    if body_len as usize > MAX_BODY {
        return Err(DecodeError::BodyTooLong {
            msg,
            len: body_len,
            max: MAX_BODY,
        });
    }
    let total = HEADER_LEN + body_len as usize;
    if buf.len() < total {
        return Err(DecodeError::Truncated {
            need: total,
            have: buf.len(),
        });
    }
    let body = &buf[HEADER_LEN..total];
    let mut stored = [0u8; 8];
    stored.copy_from_slice(&buf[12..20]);
    let stored = u64::from_le_bytes(stored);
    let computed = envelope_checksum(&buf[..12], body);
    if stored != computed {
        return Err(DecodeError::BadChecksum {
            msg,
            stored,
            computed,
        });
    }
    let mut r = Reader { body, pos: 0, msg };
    let m = match ty {
        T_HELLO => Msg::Hello {
            protocol_version: r.u16("protocol_version")?,
            node_id: r.u64("node_id")?,
            term: r.u64("term")?,
            session: r.u64("session")?,
            compat: Compat {
                xsave_mask: r.u64("xsave_mask")?,
                xsave_size: r.u32("xsave_size")?,
                kernel_features: r.u64("kernel_features")?,
            },
        },
        T_WELCOME => Msg::Welcome {
            node_id: r.u64("node_id")?,
            term: r.u64("term")?,
            session: r.u64("session")?,
        },
        T_REFUSE => Msg::Refuse {
            reason: decode_reason(&mut r)?,
        },
        T_EPOCH_BEGIN => Msg::EpochBegin {
            term: r.u64("term")?,
            epoch: r.u64("epoch")?,
            kind: {
                let at = r.offset();
                match r.u8("kind")? {
                    1 => EpochKind::Full,
                    2 => EpochKind::Delta,
                    v => return Err(r.bad("kind", at, v as u64)),
                }
            },
            total_len: r.u64("total_len")?,
        },
        T_EPOCH_DATA => {
            let term = r.u64("term")?;
            let epoch = r.u64("epoch")?;
            let offset = r.u64("offset")?;
            let at = r.offset();
            let len = r.u32("len")? as usize;
            if len > MAX_CHUNK {
                return Err(DecodeError::FieldTooLarge {
                    msg,
                    field: "len",
                    offset: at,
                    value: len as u64,
                    max: MAX_CHUNK as u64,
                });
            }
            // `take` checks `len` against the body before the copy allocates.
            let bytes = r.take(len, "bytes")?.to_vec();
            Msg::EpochData {
                term,
                epoch,
                offset,
                bytes,
            }
        }
        T_EPOCH_COMMIT => Msg::EpochCommit {
            term: r.u64("term")?,
            epoch: r.u64("epoch")?,
            len: r.u64("len")?,
            checksum: r.u64("checksum")?,
        },
        T_ACK => Msg::Ack {
            term: r.u64("term")?,
            epoch: r.u64("epoch")?,
        },
        T_HEARTBEAT => Msg::Heartbeat {
            term: r.u64("term")?,
            epoch: r.u64("epoch")?,
        },
        _ => Msg::NeedBase {
            term: r.u64("term")?,
            epoch: r.u64("epoch")?,
        },
    };
    r.finish()?;
    Ok((m, total))
}

fn decode_reason(r: &mut Reader<'_>) -> Result<RefuseReason, DecodeError> {
    let at = r.offset();
    Ok(match r.u8("reason")? {
        1 => RefuseReason::Version {
            ours: r.u16("ours")?,
            theirs: r.u16("theirs")?,
        },
        2 => RefuseReason::Xsave {
            ours_mask: r.u64("ours_mask")?,
            ours_size: r.u32("ours_size")?,
            theirs_mask: r.u64("theirs_mask")?,
            theirs_size: r.u32("theirs_size")?,
        },
        3 => RefuseReason::KernelFeatures {
            missing: r.u64("missing")?,
        },
        4 => RefuseReason::StaleTerm {
            current: r.u64("current")?,
        },
        5 => RefuseReason::Serving {
            term: r.u64("term")?,
        },
        6 => RefuseReason::EpochTooLarge {
            len: r.u64("len")?,
            max: r.u64("max")?,
        },
        v => return Err(r.bad("reason", at, v as u64)),
    })
}

struct Reader<'a> {
    body: &'a [u8],
    pos: usize,
    msg: &'static str,
}

impl<'a> Reader<'a> {
    fn offset(&self) -> usize {
        HEADER_LEN + self.pos
    }

    fn bad(&self, field: &'static str, offset: usize, value: u64) -> DecodeError {
        DecodeError::BadValue {
            msg: self.msg,
            field,
            offset,
            value,
        }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let rest = &self.body[self.pos..];
        if rest.len() < n {
            return Err(DecodeError::FieldTruncated {
                msg: self.msg,
                field,
                offset: self.offset(),
            });
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.pos == self.body.len() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                msg: self.msg,
                offset: self.offset(),
                extra: self.body.len() - self.pos,
            })
        }
    }
}

/// The messages carrying one epoch: EpochBegin, EpochData chunks in order,
/// EpochCommit. The checksum is the one the capture computed; it is sent as given,
/// so a payload that changed on the way out is caught by the backup.
#[derive(Debug)]
pub struct EpochStream<'a> {
    term: u64,
    epoch: u64,
    kind: EpochKind,
    payload: &'a [u8],
    checksum: u64,
    chunk: usize,
    next: StreamPos,
}

#[derive(Debug, Clone, Copy)]
enum StreamPos {
    Begin,
    Data(usize),
    Commit,
    Done,
}

impl<'a> EpochStream<'a> {
    /// `chunk` is clamped to `1..=MAX_CHUNK`.
    pub fn new(
        term: u64,
        epoch: u64,
        kind: EpochKind,
        payload: &'a [u8],
        checksum: u64,
        chunk: usize,
    ) -> Self {
        EpochStream {
            term,
            epoch,
            kind,
            payload,
            checksum,
            chunk: chunk.clamp(1, MAX_CHUNK),
            next: StreamPos::Begin,
        }
    }
}

impl Iterator for EpochStream<'_> {
    type Item = Msg;

    fn next(&mut self) -> Option<Msg> {
        let (term, epoch) = (self.term, self.epoch);
        match self.next {
            StreamPos::Begin => {
                self.next = if self.payload.is_empty() {
                    StreamPos::Commit
                } else {
                    StreamPos::Data(0)
                };
                Some(Msg::EpochBegin {
                    term,
                    epoch,
                    kind: self.kind,
                    total_len: self.payload.len() as u64,
                })
            }
            StreamPos::Data(off) => {
                let end = (off + self.chunk).min(self.payload.len());
                self.next = if end == self.payload.len() {
                    StreamPos::Commit
                } else {
                    StreamPos::Data(end)
                };
                Some(Msg::EpochData {
                    term,
                    epoch,
                    offset: off as u64,
                    bytes: self.payload[off..end].to_vec(),
                })
            }
            StreamPos::Commit => {
                self.next = StreamPos::Done;
                Some(Msg::EpochCommit {
                    term,
                    epoch,
                    len: self.payload.len() as u64,
                    checksum: self.checksum,
                })
            }
            StreamPos::Done => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Msg> {
        vec![
            Msg::Hello {
                protocol_version: PROTOCOL_VERSION,
                node_id: 7,
                term: 3,
                session: 2,
                compat: Compat {
                    xsave_mask: 0xe7,
                    xsave_size: 2688,
                    kernel_features: 0b101,
                },
            },
            Msg::Welcome {
                node_id: 8,
                term: 3,
                session: 2,
            },
            Msg::Refuse {
                reason: RefuseReason::Version { ours: 2, theirs: 1 },
            },
            Msg::Refuse {
                reason: RefuseReason::Xsave {
                    ours_mask: 1,
                    ours_size: 2,
                    theirs_mask: 3,
                    theirs_size: 4,
                },
            },
            Msg::Refuse {
                reason: RefuseReason::KernelFeatures { missing: 4 },
            },
            Msg::Refuse {
                reason: RefuseReason::StaleTerm { current: 9 },
            },
            Msg::Refuse {
                reason: RefuseReason::Serving { term: 9 },
            },
            Msg::Refuse {
                reason: RefuseReason::EpochTooLarge { len: 10, max: 5 },
            },
            Msg::EpochBegin {
                term: 3,
                epoch: 11,
                kind: EpochKind::Delta,
                total_len: 1 << 33,
            },
            Msg::EpochData {
                term: 3,
                epoch: 11,
                offset: 4096,
                bytes: (0..=255).collect(),
            },
            Msg::EpochData {
                term: 3,
                epoch: 11,
                offset: 0,
                bytes: vec![],
            },
            Msg::EpochCommit {
                term: 3,
                epoch: 11,
                len: 4352,
                checksum: 0xdead_beef,
            },
            Msg::Ack { term: 3, epoch: 11 },
            Msg::Heartbeat { term: 3, epoch: 0 },
            Msg::NeedBase { term: 3, epoch: 12 },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in samples() {
            let b = m.to_bytes().unwrap();
            let (d, used) = decode(&b).unwrap();
            assert_eq!(d, m);
            assert_eq!(used, b.len());
            // Two messages back to back: the first one's length is reported.
            let mut two = b.clone();
            two.extend_from_slice(&b);
            assert_eq!(decode(&two).unwrap().1, b.len());
        }
    }

    #[test]
    fn hello_layout_is_pinned() {
        let b = samples()[0].to_bytes().unwrap();
        assert_eq!(b.len(), HEADER_LEN + 46);
        assert_eq!(&b[0..4], b"CSRP");
        assert_eq!(&b[4..8], &[1, 0, 1, 0]);
        assert_eq!(&b[8..12], &46u32.to_le_bytes());
        assert_eq!(&b[20..22], &PROTOCOL_VERSION.to_le_bytes());
        assert_eq!(&b[22..30], &7u64.to_le_bytes());
    }

    #[test]
    fn every_truncation_is_refused() {
        for m in samples() {
            let b = m.to_bytes().unwrap();
            for n in 0..b.len() {
                match decode(&b[..n]) {
                    Err(DecodeError::Truncated { need, have }) => {
                        assert_eq!(have, n);
                        assert!(need > n && need <= b.len());
                    }
                    other => panic!("{} cut to {n} bytes: {other:?}", m.name()),
                }
            }
        }
    }

    /// A body shorter than its type needs, with a valid checksum: the field that
    /// runs out is named.
    #[test]
    fn short_body_names_the_field() {
        let mut b = Msg::Ack { term: 1, epoch: 2 }.to_bytes().unwrap();
        b.truncate(HEADER_LEN + 12);
        reseal(&mut b);
        assert_eq!(
            decode(&b).unwrap_err(),
            DecodeError::FieldTruncated {
                msg: "Ack",
                field: "epoch",
                offset: HEADER_LEN + 8
            }
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut b = Msg::Heartbeat { term: 1, epoch: 2 }.to_bytes().unwrap();
        b.push(0);
        reseal(&mut b);
        assert_eq!(
            decode(&b).unwrap_err(),
            DecodeError::TrailingBytes {
                msg: "Heartbeat",
                offset: HEADER_LEN + 16,
                extra: 1
            }
        );
    }

    /// Rewrites the body length and checksum after a test edited the bytes.
    fn reseal(b: &mut [u8]) {
        let body_len = (b.len() - HEADER_LEN) as u32;
        b[8..12].copy_from_slice(&body_len.to_le_bytes());
        let sum = envelope_checksum(&b[..12], &b[HEADER_LEN..]);
        b[12..20].copy_from_slice(&sum.to_le_bytes());
    }

    #[test]
    fn envelope_errors() {
        let good = Msg::Ack { term: 1, epoch: 2 }.to_bytes().unwrap();

        let mut b = good.clone();
        b[0] = b'X';
        assert!(matches!(decode(&b), Err(DecodeError::BadMagic { .. })));

        let mut b = good.clone();
        b[4] = 2;
        assert_eq!(
            decode(&b).unwrap_err(),
            DecodeError::UnsupportedVersion {
                found: 2,
                supported: 1
            }
        );

        let mut b = good.clone();
        b[6] = 0;
        assert_eq!(
            decode(&b).unwrap_err(),
            DecodeError::UnknownType { found: 0 }
        );
        b[6] = 10;
        assert_eq!(
            decode(&b).unwrap_err(),
            DecodeError::UnknownType { found: 10 }
        );

        let mut b = good.clone();
        b[7] = 1;
        assert_eq!(
            decode(&b).unwrap_err(),
            DecodeError::ReservedNonZero { value: 1 }
        );

        let mut b = good.clone();
        b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&b),
            Err(DecodeError::BodyTooLong { len: u32::MAX, .. })
        ));

        let mut b = good.clone();
        let last = b.len() - 1;
        b[last] ^= 1;
        assert!(matches!(decode(&b), Err(DecodeError::BadChecksum { .. })));
    }

    /// A chunk length larger than MAX_CHUNK is refused by its field, before any
    /// allocation, even though the body (and its checksum) are otherwise sound; a
    /// chunk length larger than the body is refused as truncated.
    #[test]
    fn oversized_chunk_is_refused_before_allocation() {
        let m = Msg::EpochData {
            term: 1,
            epoch: 1,
            offset: 0,
            bytes: vec![1, 2, 3],
        };
        let mut b = m.to_bytes().unwrap();
        let len_at = HEADER_LEN + 24;
        b[len_at..len_at + 4].copy_from_slice(&(MAX_CHUNK as u32 + 1).to_le_bytes());
        reseal(&mut b);
        assert_eq!(
            decode(&b).unwrap_err(),
            DecodeError::FieldTooLarge {
                msg: "EpochData",
                field: "len",
                offset: len_at,
                value: MAX_CHUNK as u64 + 1,
                max: MAX_CHUNK as u64
            }
        );
        b[len_at..len_at + 4].copy_from_slice(&4u32.to_le_bytes());
        reseal(&mut b);
        assert_eq!(
            decode(&b).unwrap_err(),
            DecodeError::FieldTruncated {
                msg: "EpochData",
                field: "bytes",
                offset: len_at + 4
            }
        );
        let big = Msg::EpochData {
            term: 1,
            epoch: 1,
            offset: 0,
            bytes: vec![0; MAX_CHUNK + 1],
        };
        assert!(matches!(
            big.to_bytes(),
            Err(EncodeError::ChunkTooLarge { .. })
        ));
    }

    #[test]
    fn bad_tags_are_named() {
        let m = Msg::EpochBegin {
            term: 1,
            epoch: 1,
            kind: EpochKind::Full,
            total_len: 0,
        };
        let mut b = m.to_bytes().unwrap();
        b[HEADER_LEN + 16] = 3;
        reseal(&mut b);
        assert_eq!(
            decode(&b).unwrap_err(),
            DecodeError::BadValue {
                msg: "EpochBegin",
                field: "kind",
                offset: HEADER_LEN + 16,
                value: 3
            }
        );
        let mut b = Msg::Refuse {
            reason: RefuseReason::StaleTerm { current: 1 },
        }
        .to_bytes()
        .unwrap();
        b[HEADER_LEN] = 0;
        reseal(&mut b);
        assert!(matches!(
            decode(&b),
            Err(DecodeError::BadValue {
                field: "reason",
                value: 0,
                ..
            })
        ));
    }

    /// Every single-bit flip of every sample is refused (the envelope checks or
    /// the checksum), and random bytes never panic the decoder.
    #[test]
    fn bit_flips_and_noise_are_caught() {
        for m in samples() {
            let b = m.to_bytes().unwrap();
            for i in 0..b.len() * 8 {
                let mut c = b.clone();
                c[i / 8] ^= 1 << (i % 8);
                assert!(decode(&c).is_err(), "{} bit {i} flipped decoded", m.name());
            }
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for n in 0..2000usize {
            let mut v = Vec::with_capacity(n % 80);
            for _ in 0..n % 80 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.push(x as u8);
            }
            if n % 3 == 0 && v.len() >= 8 {
                v[..4].copy_from_slice(&MAGIC);
                v[4..6].copy_from_slice(&1u16.to_le_bytes());
                v[7] = 0;
            }
            let _ = decode(&v);
        }
    }

    #[test]
    fn epoch_stream_chunks_in_order() {
        let payload: Vec<u8> = (0..100u8).collect();
        let sum = payload_checksum(&payload);
        let msgs: Vec<Msg> = EpochStream::new(2, 5, EpochKind::Full, &payload, sum, 30).collect();
        assert_eq!(msgs.len(), 1 + 4 + 1);
        let mut joined = Vec::new();
        for m in &msgs[1..5] {
            let Msg::EpochData { offset, bytes, .. } = m else {
                panic!("{m:?}")
            };
            assert_eq!(*offset as usize, joined.len());
            joined.extend_from_slice(bytes);
        }
        assert_eq!(joined, payload);
        assert_eq!(
            msgs[5],
            Msg::EpochCommit {
                term: 2,
                epoch: 5,
                len: 100,
                checksum: sum
            }
        );
        let empty: Vec<Msg> = EpochStream::new(2, 6, EpochKind::Delta, &[], 0, 30).collect();
        assert_eq!(empty.len(), 2);
    }

    #[test]
    fn compat_rules() {
        let here = Compat {
            xsave_mask: 0xe7,
            xsave_size: 2688,
            kernel_features: 0b111,
        };
        assert_eq!(
            here.check_primary(&Compat {
                kernel_features: 0b011,
                ..here
            }),
            Ok(())
        );
        assert_eq!(
            here.check_primary(&Compat {
                kernel_features: 0b1001,
                ..here
            }),
            Err(RefuseReason::KernelFeatures { missing: 0b1000 })
        );
        assert!(matches!(
            here.check_primary(&Compat {
                xsave_mask: 0x7,
                ..here
            }),
            Err(RefuseReason::Xsave { .. })
        ));
        assert!(matches!(
            here.check_primary(&Compat {
                xsave_size: 2432,
                ..here
            }),
            Err(RefuseReason::Xsave { .. })
        ));
    }
}
