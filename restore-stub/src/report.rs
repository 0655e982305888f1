//! The stub's report to the driver, written once to the report fd.
//!
//! Fixed little-endian layout:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `b"CSRP"` |
//! | 4 | 4 | status: 0 ok, else a [`Phase`] code |
//! | 8 | 4 | thread count `n` |
//! | 12 | 4 | reserved (0) |
//! | 16 | 8 | errno (negative kernel result) or 0 |
//! | 24 | 8 | address or value the failure concerns |
//! | 32 | 8 | address of the stub's `syscall` gadget |
//! | 40 | 8 | stub extent start |
//! | 48 | 8 | stub extent end |
//! | 56 | 16 × n | per thread: tid u32, reserved u32, rsp for rt_sigreturn u64 |
//!
//! On success the first entry is the main thread (tid == pid).

use crate::MAX_THREADS;

pub const MAGIC: [u8; 4] = *b"CSRP";
/// Sent before the report when the stub hands page filling to the driver, followed
/// by an i32 (little-endian): the number of a userfaultfd the stub made for lazy
/// filling, or a negative errno if it could not make one. The stub closes its
/// uffd once the driver says go (the driver takes a copy first).
pub const PAGES_MAGIC: [u8; 4] = *b"CSPG";
/// Length of the hand-over message.
pub const PAGES_MSG_LEN: usize = 8;
pub const HEADER_LEN: usize = 56;
pub const ENTRY_LEN: usize = 16;
pub const MAX_LEN: usize = HEADER_LEN + ENTRY_LEN * MAX_THREADS;

/// Where the stub failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Phase {
    Args = 1,
    UnmapOld = 2,
    ReadImage = 3,
    Format = 4,
    MapVma = 5,
    OpenFile = 6,
    FillPages = 7,
    Protect = 8,
    Sigaction = 9,
    SetMm = 10,
    Vdso = 11,
    CloneThread = 12,
    TooManyThreads = 13,
    TooManyVmas = 14,
    NoMainThread = 15,
    Frame = 16,
    PageOutsideVma = 17,
    Unknown = 0xffff,
}

impl Phase {
    pub fn from_raw(v: u32) -> Phase {
        use Phase::*;
        [
            Args,
            UnmapOld,
            ReadImage,
            Format,
            MapVma,
            OpenFile,
            FillPages,
            Protect,
            Sigaction,
            SetMm,
            Vdso,
            CloneThread,
            TooManyThreads,
            TooManyVmas,
            NoMainThread,
            Frame,
            PageOutsideVma,
        ]
        .into_iter()
        .find(|p| *p as u32 == v)
        .unwrap_or(Unknown)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Phase::Args => "parsing the stub's arguments",
            Phase::UnmapOld => "unmapping the stub's initial mappings",
            Phase::ReadImage => "reading the image stream",
            Phase::Format => "parsing an image record",
            Phase::MapVma => "mapping a VMA",
            Phase::OpenFile => "opening a mapped file",
            Phase::FillPages => "filling pages",
            Phase::Protect => "setting a VMA's protection",
            Phase::Sigaction => "installing a signal handler",
            Phase::SetMm => "setting the mm layout (PR_SET_MM_MAP)",
            Phase::Vdso => "mapping the vDSO at its checkpointed address",
            Phase::CloneThread => "creating a thread with its tid (clone3 set_tid)",
            Phase::TooManyThreads => "too many threads for the stub",
            Phase::TooManyVmas => "too many VMAs for the stub",
            Phase::NoMainThread => "no thread whose tid equals the pid",
            Phase::Frame => "building a signal frame",
            Phase::PageOutsideVma => "a page run outside every restored VMA",
            Phase::Unknown => "an unknown phase",
        }
    }
}

/// A decoded report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report<'a> {
    pub status: u32,
    pub errno: i64,
    pub addr: u64,
    pub gadget: u64,
    pub stub_start: u64,
    pub stub_end: u64,
    entries: &'a [u8],
}

/// Why a report could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportError {
    Short,
    BadMagic,
    TooManyThreads,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

impl<'a> Report<'a> {
    pub fn parse(b: &'a [u8]) -> Result<Report<'a>, ReportError> {
        if b.len() < HEADER_LEN {
            return Err(ReportError::Short);
        }
        if b[0..4] != MAGIC {
            return Err(ReportError::BadMagic);
        }
        let n = u32_at(b, 8) as usize;
        if n > MAX_THREADS {
            return Err(ReportError::TooManyThreads);
        }
        let need = HEADER_LEN + n * ENTRY_LEN;
        if b.len() < need {
            return Err(ReportError::Short);
        }
        Ok(Report {
            status: u32_at(b, 4),
            errno: u64_at(b, 16) as i64,
            addr: u64_at(b, 24),
            gadget: u64_at(b, 32),
            stub_start: u64_at(b, 40),
            stub_end: u64_at(b, 48),
            entries: &b[HEADER_LEN..need],
        })
    }

    /// (tid, rsp) per thread.
    pub fn threads(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.entries
            .chunks_exact(ENTRY_LEN)
            .map(|c| (u32_at(c, 0), u64_at(c, 8)))
    }

    pub fn thread_count(&self) -> usize {
        self.entries.len() / ENTRY_LEN
    }
}

/// Writes a report header into `out` (at least [`HEADER_LEN`] bytes).
#[allow(clippy::too_many_arguments)]
pub fn write_header(
    out: &mut [u8],
    status: u32,
    n: u32,
    errno: i64,
    addr: u64,
    gadget: u64,
    start: u64,
    end: u64,
) {
    out[0..4].copy_from_slice(&MAGIC);
    out[4..8].copy_from_slice(&status.to_le_bytes());
    out[8..12].copy_from_slice(&n.to_le_bytes());
    out[12..16].copy_from_slice(&0u32.to_le_bytes());
    out[16..24].copy_from_slice(&errno.to_le_bytes());
    out[24..32].copy_from_slice(&addr.to_le_bytes());
    out[32..40].copy_from_slice(&gadget.to_le_bytes());
    out[40..48].copy_from_slice(&start.to_le_bytes());
    out[48..56].copy_from_slice(&end.to_le_bytes());
}

/// Writes entry `i` (tid, rsp) after the header.
pub fn write_entry(out: &mut [u8], i: usize, tid: u32, rsp: u64) {
    let o = HEADER_LEN + i * ENTRY_LEN;
    out[o..o + 4].copy_from_slice(&tid.to_le_bytes());
    out[o + 4..o + 8].copy_from_slice(&0u32.to_le_bytes());
    out[o + 8..o + 16].copy_from_slice(&rsp.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut b = [0u8; HEADER_LEN + 2 * ENTRY_LEN];
        write_header(
            &mut b,
            0,
            2,
            0,
            0,
            0x3000_0000_1000,
            0x3000_0000_0000,
            0x3000_0100_0000,
        );
        write_entry(&mut b, 0, 100, 0x7000_0008);
        write_entry(&mut b, 1, 101, 0x7001_0008);
        let r = Report::parse(&b).unwrap();
        assert_eq!(r.gadget, 0x3000_0000_1000);
        assert_eq!(
            r.threads().collect::<Vec<_>>(),
            vec![(100, 0x7000_0008), (101, 0x7001_0008)]
        );
        assert_eq!(Report::parse(&b[..HEADER_LEN + 8]), Err(ReportError::Short));
        b[0] = b'X';
        assert_eq!(Report::parse(&b), Err(ReportError::BadMagic));
        assert_eq!(Phase::from_raw(5), Phase::MapVma);
        assert_eq!(Phase::from_raw(999), Phase::Unknown);
    }
}
