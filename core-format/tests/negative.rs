//! One negative case per error variant. The single test below runs them all and then
//! checks, against the variant list in `src/error.rs`, that no variant was left out.

mod common;

use std::collections::BTreeSet;

use core_format::encode::RegionPages;
use core_format::*;

/// Recomputes the header's payload checksum and header checksum after an edit.
fn reseal(frame: &mut [u8]) {
    let payload_sum = xxhash_rust::xxh3::xxh3_64(&frame[HEADER_LEN..]);
    frame[16..24].copy_from_slice(&payload_sum.to_le_bytes());
    reseal_header(frame);
}

fn reseal_header(frame: &mut [u8]) {
    let sum = xxhash_rust::xxh3::xxh3_64(&frame[..28]) as u32;
    frame[28..32].copy_from_slice(&sum.to_le_bytes());
}

fn ack() -> Vec<u8> {
    common::frame_bytes(&Record::Ack(Ack { epoch: 7 }))
}

fn parse(bytes: &[u8]) -> Result<usize, Error> {
    parse_frame(bytes).map(|(_, n)| n)
}

/// The records of a valid epoch (begin .. page runs; the commit is added by `run`).
fn valid<'a>(vmas: &'a [Vma<'a>], fds: &'a [Fd<'a>]) -> Vec<Record<'a>> {
    vec![
        Record::EpochBegin(EpochBegin {
            epoch: 4,
            kind: EpochKind::Full,
            wall_time_ns: 0,
        }),
        Record::ProcessInfo(common::process_info()),
        Record::VmaTable(VmaTable::new(vmas)),
        Record::SignalTable(SignalTable::new(&common::SIGACTIONS)),
        Record::FdTable(FdTable::new(fds)),
        Record::ThreadState(common::thread(100)),
        Record::ThreadState(common::thread(101)),
        Record::MappedFiles(MappedFiles::new(&common::MAPPED)),
        Record::Credentials(common::credentials(100)),
        Record::Credentials(common::credentials(101)),
        Record::PageRun(PageRun::raw(0x402000, &common::PAGE_A).unwrap()),
        Record::PageRun(PageRun::zero(0x403000, 3).unwrap()),
    ]
}

/// Emits `records`, appends a commit (from the digest, then `tweak`ed), appends
/// `after`, and validates the frames.
fn run(
    records: &[Record<'_>],
    tweak: impl FnOnce(&mut EpochCommit),
    after: Option<Record<'_>>,
) -> Result<EpochSummary, Error> {
    let mut bytes = Vec::new();
    let mut digest = EpochDigest::new();
    for r in records {
        let b = common::frame_bytes(r);
        digest.update_frames(&b).unwrap();
        bytes.extend_from_slice(&b);
    }
    let mut commit = digest.commit(4);
    tweak(&mut commit);
    bytes.extend_from_slice(&common::frame_bytes(&Record::EpochCommit(commit)));
    if let Some(a) = after {
        bytes.extend_from_slice(&common::frame_bytes(&a));
    }
    let frames: Vec<Frame<'_>> = frames(&bytes).collect::<Result<_, _>>().unwrap();
    validate_epoch(&frames)
}

fn plain(records: &[Record<'_>]) -> Result<EpochSummary, Error> {
    run(records, |_| {}, None)
}

/// Replaces the record at `i`.
fn with<'a>(mut v: Vec<Record<'a>>, i: usize, r: Record<'a>) -> Vec<Record<'a>> {
    v[i] = r;
    v
}

fn variants_in_source() -> BTreeSet<String> {
    let src = include_str!("../src/error.rs");
    src.lines()
        .filter_map(|l| {
            let name = l.strip_prefix("    ")?;
            let name = name.strip_suffix(" {").or_else(|| name.strip_suffix(','))?;
            (name.chars().next()?.is_ascii_uppercase()
                && name.chars().all(|c| c.is_ascii_alphanumeric()))
            .then(|| name.to_string())
        })
        .collect()
}

#[test]
fn every_error_variant_has_a_negative_case() {
    let mut covered = BTreeSet::new();
    macro_rules! neg {
        ($variant:ident, $e:expr) => {{
            let r = $e;
            match r {
                Err(e @ Error::$variant { .. }) => {
                    assert!(!e.to_string().is_empty());
                    covered.insert(stringify!($variant).to_string());
                }
                other => panic!(
                    "{}: expected {}, got {:?}",
                    line!(),
                    stringify!($variant),
                    other
                ),
            }
        }};
    }

    // ---- header ----
    neg!(Truncated, parse(&ack()[..20]));
    neg!(Truncated, parse(&ack()[..35]));
    let mut b = ack();
    b[0] = b'X';
    neg!(HeaderBadMagic, parse(&b));
    let mut b = ack();
    b[4] = 2;
    neg!(HeaderUnsupportedMajor, parse(&b));
    let mut b = ack();
    b[6] = 2;
    reseal_header(&mut b);
    neg!(HeaderNewerMinor, parse(&b));
    let mut b = ack();
    b[12] = 9; // a corrupted length is caught by the header checksum
    neg!(HeaderBadChecksum, parse(&b));
    let mut b = ack();
    b[10] = 1;
    reseal_header(&mut b);
    neg!(HeaderReservedNonZero, parse(&b));
    let mut b = ack();
    b[24] = 1;
    reseal_header(&mut b);
    neg!(HeaderReservedNonZero, parse(&b));
    let mut b = ack();
    b[8] = 99;
    reseal_header(&mut b);
    neg!(UnknownKind, parse(&b));
    let mut b = ack();
    b[8] = 0;
    reseal_header(&mut b);
    neg!(UnknownKind, parse(&b));
    let mut b = ack();
    b[12..16].copy_from_slice(&(MAX_PAYLOAD_BYTES + 1).to_le_bytes());
    reseal_header(&mut b);
    neg!(LengthOverCapacity, parse(&b));
    let mut dec = StreamDecoder::new(vec![0u8; 1 << 16]);
    dec.feed(&b);
    neg!(LengthOverCapacity, dec.next_frame());
    neg!(LengthOverCapacity, dec.next_frame()); // sticky

    // ---- payload ----
    let mut b = ack();
    b[33] ^= 1;
    neg!(PayloadBadChecksum, parse(&b));
    let header = FrameHeader::parse_bytes(&ack()).unwrap();
    neg!(PayloadLengthMismatch, Record::parse(&header, &[0u8; 7]));

    // ---- record syntax ----
    neg!(
        RecordTruncated,
        Record::parse_payload(FrameKind::Ack, &[0u8; 7])
    );
    neg!(
        RecordTruncated,
        Record::parse_payload(FrameKind::PageRun, &[0u8; 10])
    );
    neg!(
        RecordTrailingBytes,
        Record::parse_payload(FrameKind::Ack, &[0u8; 9])
    );
    let pi = common::frame_bytes(&Record::ProcessInfo(common::process_info()));
    let mut p = pi[HEADER_LEN..].to_vec();
    p[4] = 2; // arch
    neg!(
        RecordBadTag,
        Record::parse_payload(FrameKind::ProcessInfo, &p)
    );
    let mut e = common::frame_bytes(&Record::Error(ErrorFrame {
        code: ErrorCode::Auth,
        epoch: 0,
        detail: b"",
    }))[HEADER_LEN..]
        .to_vec();
    e[0] = 0; // error code 0 is reserved
    neg!(RecordBadTag, Record::parse_payload(FrameKind::Error, &e));
    neg!(
        RecordBadTag,
        Record::Error(ErrorFrame {
            code: ErrorCode::Unknown(2),
            epoch: 0,
            detail: b""
        })
        .emit_frame(&mut [0u8; 100])
    );
    let mut info = common::process_info();
    info.umask = 0o1000;
    neg!(
        RecordUnknownBits,
        Record::ProcessInfo(info).emit_frame(&mut [0u8; 1000])
    );
    neg!(RecordUnknownBits, Prot::from_bits(8));
    neg!(RecordUnknownBits, VmaFlags::from_bits(1 << 20));
    neg!(RecordUnknownBits, FdFlags::from_bits(2));
    let mut info = common::process_info();
    info.comm = b"seventeen-bytes!!";
    neg!(
        RecordOverCapacity,
        Record::ProcessInfo(info).emit_frame(&mut [0u8; 1000])
    );
    let mut p = pi[HEADER_LEN..].to_vec();
    p[6] = 17; // rlimit count
    neg!(
        RecordOverCapacity,
        Record::parse_payload(FrameKind::ProcessInfo, &p)
    );
    let mut p = Vec::new();
    p.extend_from_slice(&5u32.to_le_bytes()); // code
    p.extend_from_slice(&0u64.to_le_bytes()); // epoch
    p.extend_from_slice(&u32::MAX.to_le_bytes()); // detail length: bounded before use
    neg!(
        RecordOverCapacity,
        Record::parse_payload(FrameKind::Error, &p)
    );
    neg!(RecordBadLength, PageRun::raw(0x1000, &[1u8; 100]));
    neg!(RecordBadLength, PageRun::lz4(0x1000, 1, &[1u8; 4096]));
    let mut zrun = PageRun::zero(0x1000, 1).unwrap();
    zrun.data = b"x";
    neg!(
        RecordBadLength,
        Record::PageRun(zrun).emit_frame(&mut [0u8; 100])
    );
    neg!(RecordUnalignedAddress, PageRun::zero(0x1001, 1));
    let mut v = common::VMAS[1];
    v.end = 0x402001;
    neg!(
        RecordUnalignedAddress,
        Record::VmaTable(VmaTable::new(&[v])).emit_frame(&mut [0u8; 100])
    );
    let mut v = common::VMAS[1];
    v.end = v.start;
    neg!(
        RecordBadRange,
        Record::VmaTable(VmaTable::new(&[v])).emit_frame(&mut [0u8; 100])
    );
    neg!(RecordBadRange, PageRun::zero(u64::MAX - 4095, 2));
    neg!(RecordBadPageCount, PageRun::zero(0, 0));
    neg!(RecordBadPageCount, PageRun::zero(0, MAX_RUN_PAGES + 1));
    let mut fd = common::fds()[0];
    fd.fd = -1;
    neg!(
        RecordBadValue,
        Record::FdTable(FdTable::new(&[fd])).emit_frame(&mut [0u8; 100])
    );
    let mut v = common::VMAS[1];
    v.path = b"/not-a-file-mapping";
    neg!(
        RecordBadValue,
        Record::VmaTable(VmaTable::new(&[v])).emit_frame(&mut [0u8; 100])
    );
    let mut v = common::VMAS[2];
    v.prot = Prot::READ; // a reservation must be PROT_NONE
    neg!(
        RecordBadValue,
        Record::VmaTable(VmaTable::new(&[v])).emit_frame(&mut [0u8; 100])
    );
    let efd = [Fd {
        fd: 3,
        fd_flags: FdFlags::EMPTY,
        status_flags: 0,
        kind: FdKind::Eventfd {
            count: 1,
            semaphore: true,
        },
    }];
    let mut p = common::frame_bytes(&Record::FdTable(FdTable::new(&efd)))[HEADER_LEN..].to_vec();
    *p.last_mut().unwrap() = 2; // the semaphore bool
    neg!(
        RecordBadValue,
        Record::parse_payload(FrameKind::FdTable, &p)
    );
    let mut raw = common::frame_bytes(&Record::PageRun(
        PageRun::raw(0x1000, &common::PAGE_A).unwrap(),
    ));
    raw[HEADER_LEN + 5] ^= 1;
    neg!(PageRunBadChecksum, PageRun::parse(&raw[HEADER_LEN..]));
    reseal(&mut raw); // a writer that checksummed the frame but not the run
    neg!(PageRunBadChecksum, parse(&raw));
    let lz = PageRun::lz4(0x1000, 1, &[0xFFu8; 10]).unwrap();
    neg!(PageRunBadCompression, lz.decode_into(&mut [0u8; 4096]));

    // ---- emit, stream, encoder ----
    neg!(
        EmitBufferTooSmall,
        Record::Ack(Ack { epoch: 1 }).emit_frame(&mut [0u8; 39])
    );
    neg!(
        EmitBufferTooSmall,
        FrameHeader::parse_bytes(&ack())
            .unwrap()
            .emit(&mut [0u8; 31])
    );
    let mut dec = StreamDecoder::new([0u8; 64]);
    dec.feed(&common::frame_bytes(&Record::Hello(Hello {
        protocol_version: 1,
        node_id: 1,
        nonce: [0; 32],
        mac: [0; 32],
    })));
    neg!(StreamFrameTooLarge, dec.next_frame());
    neg!(EncodeUnsortedPages, PageRunEncoder::new(&[0x2000, 0x1000]));
    neg!(EncodeUnsortedPages, PageRunEncoder::new(&[0x2000, 0x2000]));
    neg!(EncodeUnalignedPage, PageRunEncoder::new(&[0x1001]));
    let mut enc = PageRunEncoder::new(&[0x1000, 0x2000]).unwrap();
    neg!(
        EncodeBadPage,
        enc.encode_into(&StagedPages { data: &[1u8; 4096] }, &mut [0u8; 20000])
    );
    let mut enc = PageRunEncoder::new(&[0x1000]).unwrap();
    let mem = [1u8; 4096];
    neg!(
        EmitBufferTooSmall,
        enc.encode_into(
            &RegionPages {
                base: 0x1000,
                data: &mem
            },
            &mut [0u8; 4000]
        )
    );

    // ---- validation ----
    let vmas = common::sorted_vmas();
    let fds = common::fds();
    let ok = valid(&vmas, &fds);
    assert!(plain(&ok).is_ok());
    neg!(ValidateMissingEpochBegin, plain(&ok[1..]));
    let mut v = ok.clone();
    v.remove(1);
    neg!(ValidateMissingProcessInfo, plain(&v));
    let mut v = ok.clone();
    v.insert(4, v[3].clone());
    neg!(ValidateDuplicateRecord, plain(&v));
    let mut v = ok.clone();
    v.insert(3, v[1].clone());
    neg!(ValidateDuplicateRecord, plain(&v));
    let mut v = ok.clone();
    v.remove(4);
    neg!(ValidateMissingRecord, plain(&v));
    let mut v = ok.clone();
    v.insert(
        5,
        Record::Heartbeat(Heartbeat {
            seq: 1,
            epoch: 4,
            time_ms: 0,
        }),
    );
    neg!(ValidateUnexpectedControl, plain(&v));
    neg!(
        ValidateRecordAfterCommit,
        run(&ok, |_| {}, Some(ok[5].clone()))
    );
    let mut val = CheckpointValidator::new(vec![VmaRange::default(); 8]);
    for r in &ok {
        let b = common::frame_bytes(r);
        val.push(&parse_frame_with_header(&b).unwrap().0).unwrap();
    }
    neg!(ValidateMissingCommit, val.finish());
    let mut info = common::process_info();
    info.page_size = 8192;
    neg!(
        ValidateUnsupportedPageSize,
        plain(&with(ok.clone(), 1, Record::ProcessInfo(info)))
    );
    let mut info = common::process_info();
    info.xsave_size_bytes = 577;
    neg!(
        ValidateBadXsaveSize,
        plain(&with(ok.clone(), 1, Record::ProcessInfo(info)))
    );
    let mut info = common::process_info();
    info.mm.start_code = info.mm.end_code + 1;
    neg!(
        ValidateBadMmLayout,
        plain(&with(ok.clone(), 1, Record::ProcessInfo(info)))
    );
    neg!(
        ValidateOverlappingVma,
        plain(&with(
            ok.clone(),
            2,
            Record::VmaTable(VmaTable::new(&common::VMAS))
        ))
    );
    let mut val = CheckpointValidator::new([VmaRange::default(); 2]);
    let mut res = Ok(());
    for r in &ok[..3] {
        let b = common::frame_bytes(r);
        res = res.and_then(|_| val.push(&parse_frame_with_header(&b).unwrap().0));
    }
    neg!(ValidateTooManyVmas, res);
    let mut v = ok.clone();
    v.push(Record::VmaTable(VmaTable::new(&vmas[3..])));
    neg!(ValidateVmaAfterPageRun, plain(&v));
    let mut v = ok.clone();
    v.swap(10, 11);
    neg!(ValidatePageRunOrder, plain(&v));
    let mut v = ok.clone();
    v.push(Record::PageRun(PageRun::zero(0x7ffff000, 2).unwrap())); // crosses the stack end
    neg!(ValidatePageRunOutsideVma, plain(&v));
    let mut v = ok.clone();
    v.push(Record::PageRun(PageRun::zero(0xc000000000, 1).unwrap()));
    neg!(ValidatePageRunInReservation, plain(&v));
    let mut info = common::process_info();
    info.thread_count = 3;
    neg!(
        ValidateThreadCount,
        plain(&with(ok.clone(), 1, Record::ProcessInfo(info)))
    );
    neg!(
        ValidateDuplicateTid,
        plain(&with(
            ok.clone(),
            6,
            Record::ThreadState(common::thread(100))
        ))
    );
    let mut v = ok.clone();
    v.swap(5, 6);
    neg!(ValidateThreadOrder, plain(&v));
    let mut info = common::process_info();
    info.pid = 99;
    neg!(
        ValidateMissingMainThread,
        plain(&with(ok.clone(), 1, Record::ProcessInfo(info)))
    );
    let mut v = ok.clone();
    v.remove(9);
    neg!(ValidateCredentialsCount, plain(&v));
    let mut v = ok.clone();
    v.swap(8, 9);
    neg!(ValidateCredentialsOrder, plain(&v));
    neg!(
        ValidateCredentialsOrder,
        plain(&with(
            ok.clone(),
            9,
            Record::Credentials(common::credentials(100))
        ))
    );
    neg!(
        ValidateMissingMainCredentials,
        plain(&with(
            ok.clone(),
            8,
            Record::Credentials(common::credentials(99))
        ))
    );
    let mut v = ok.clone();
    v.remove(7);
    neg!(ValidateMissingRecord, plain(&v));
    let mut v = ok.clone();
    v.insert(8, Record::MappedFiles(MappedFiles::new(&common::MAPPED)));
    neg!(ValidateDuplicateRecord, plain(&v));
    let big = [0u8; 640];
    let mut t = common::thread(101);
    t.xsave = &big;
    neg!(
        ValidateXsaveSize,
        plain(&with(ok.clone(), 6, Record::ThreadState(t)))
    );
    let mut actions = common::SIGACTIONS;
    actions[8].handler = 0x401000; // SIGKILL
    neg!(
        ValidateSignalNotCatchable,
        plain(&with(
            ok.clone(),
            3,
            Record::SignalTable(SignalTable::new(&actions))
        ))
    );
    let mut dup = fds.clone();
    dup[1].fd = 0;
    neg!(
        ValidateDuplicateFd,
        plain(&with(ok.clone(), 4, Record::FdTable(FdTable::new(&dup))))
    );
    let mut other = fds.clone();
    other.push(common::other_fd());
    neg!(
        ValidateUnsupportedFd,
        plain(&with(ok.clone(), 4, Record::FdTable(FdTable::new(&other))))
    );
    neg!(ValidateEpochMismatch, run(&ok, |c| c.epoch += 1, None));
    neg!(ValidateFrameCount, run(&ok, |c| c.frame_count += 1, None));
    neg!(ValidateEpochDigest, run(&ok, |c| c.digest ^= 1, None));

    let all = variants_in_source();
    assert!(
        all.len() > 40,
        "parsed {} variants from src/error.rs",
        all.len()
    );
    let missing: Vec<_> = all.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "error variants without a negative case: {missing:?}"
    );
}

#[test]
fn header_view_accessors_never_panic_after_new_checked() {
    assert!(matches!(
        FrameHeaderView::new_checked(&[0u8; 31][..]),
        Err(Error::Truncated { .. })
    ));
    let v = FrameHeaderView::new_checked([0xFFu8; 32]).unwrap();
    assert_eq!(v.magic(), [0xFF; 4]);
    assert_eq!(v.payload_len(), u32::MAX);
    assert_eq!(v.kind_raw(), u16::MAX);
    assert!(FrameHeader::parse(&v).is_err());
}

#[test]
fn a_newer_minor_is_refused_but_an_older_or_equal_one_loads() {
    // This build is 1.1: frames of 1.0 and 1.1 load, 1.2 does not.
    assert_eq!(FORMAT_MAJOR, 1);
    assert_eq!(FORMAT_MINOR, 1);
    assert!(parse(&ack()).is_ok());
    let mut b = ack();
    b[6] = 0;
    reseal_header(&mut b);
    assert!(parse(&b).is_ok());
    b[6] = 2;
    reseal_header(&mut b);
    assert!(matches!(
        parse(&b),
        Err(Error::HeaderNewerMinor {
            found: 2,
            supported: 1
        })
    ));
}

#[test]
fn credentials_and_mapped_files_refuse_bad_values() {
    let payload = |r: &Record<'_>| common::frame_bytes(r)[HEADER_LEN..].to_vec();
    let bad = |kind: FrameKind, p: &[u8]| Record::parse_payload(kind, p).unwrap_err();
    let ok = payload(&Record::Credentials(common::credentials(100)));
    assert!(Record::parse_payload(FrameKind::Credentials, &ok).is_ok());
    // Effective (offset 64) outside permitted (56).
    let mut p = ok.clone();
    p[64] |= 1;
    assert!(matches!(
        bad(FrameKind::Credentials, &p),
        Error::RecordBadValue { .. }
    ));
    // Ambient (80) outside inheritable (48).
    let mut p = ok.clone();
    p[80] |= 2;
    assert!(matches!(
        bad(FrameKind::Credentials, &p),
        Error::RecordBadValue { .. }
    ));
    // Undefined securebits, seccomp tag 0, dumpable 3, reserved byte, bool 2.
    let mut p = ok.clone();
    p[37] = 0x10;
    assert!(matches!(
        bad(FrameKind::Credentials, &p),
        Error::RecordUnknownBits { .. }
    ));
    for (at, v) in [(41, 0u8), (41, 4), (42, 3), (43, 1), (40, 2)] {
        let mut p = ok.clone();
        p[at] = v;
        assert!(
            Record::parse_payload(FrameKind::Credentials, &p).is_err(),
            "{at}={v}"
        );
    }
    // A huge group count is refused before anything is read for it.
    let mut p = ok.clone();
    p[44..48].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        bad(FrameKind::Credentials, &p),
        Error::RecordOverCapacity { .. }
    ));
    let mut p = ok.clone();
    p[44..48].copy_from_slice(&1000u32.to_le_bytes());
    assert!(matches!(
        bad(FrameKind::Credentials, &p),
        Error::RecordTruncated { .. }
    ));

    let ok = payload(&Record::MappedFiles(MappedFiles::new(&common::MAPPED)));
    assert!(Record::parse_payload(FrameKind::MappedFiles, &ok).is_ok());
    // Entry 0 starts at 4: hash kind at 4+36, path length at 4+38, hash at 4+40.
    for (at, v) in [
        (40usize, 0u8),
        (40, 3),
        (42, 0),
        (4 + 40 + 20, 1),
        (4 + 35, 0x40),
    ] {
        let mut p = ok.clone();
        p[at] = v;
        assert!(
            Record::parse_payload(FrameKind::MappedFiles, &p).is_err(),
            "{at}={v}"
        );
    }
    // Paths out of order.
    let rev = [common::MAPPED[1], common::MAPPED[0]];
    assert!(MappedFiles::new(&rev).emit(&mut [0u8; 512]).is_err());
}

#[test]
fn a_page_run_may_span_adjacent_vmas() {
    let vmas = common::sorted_vmas();
    let fds = common::fds();
    let mut v = valid(&vmas, &fds);
    v.truncate(10);
    let two = [7u8; 2 * PAGE_SIZE];
    // 0x401000..0x403000 crosses from the file mapping into the anonymous one.
    v.push(Record::PageRun(PageRun::raw(0x401000, &two).unwrap()));
    let s = plain(&v).unwrap();
    assert_eq!((s.page_runs, s.pages), (1, 2));
}
