//! Property tests: `parse(emit(x)) == x` for every record and whole epochs, the
//! page-run encoder against a one-page-at-a-time oracle, and the stream decoder
//! against every split of its input.

mod common;

use common::strategies::*;
use core_format::encode::{is_zero_page, RegionPages};
use core_format::*;
use proptest::prelude::*;

/// Emits `record` as a frame, parses it back, and checks equality and lengths.
fn round_trip(record: &Record<'_>) {
    let mut buf = vec![0u8; record.buffer_len()];
    let n = record.emit_frame(&mut buf).unwrap();
    assert_eq!(n, buf.len());
    let (back, m) = parse_frame(&buf).unwrap();
    assert_eq!(m, n);
    assert_eq!(&back, record);
    // Canonical: re-emitting the parsed form gives the same bytes.
    let mut again = vec![0u8; back.buffer_len()];
    back.emit_frame(&mut again).unwrap();
    assert_eq!(again, buf);
    // A buffer one byte short is refused, not overrun.
    let mut short = vec![0u8; n - 1];
    assert!(matches!(
        record.emit_frame(&mut short),
        Err(Error::EmitBufferTooSmall { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn process_info_round_trips(spec in proc_spec()) {
        round_trip(&Record::ProcessInfo(spec.build()));
    }

    #[test]
    fn vma_table_round_trips(specs in vma_list(20)) {
        let vmas: Vec<Vma<'_>> = specs.iter().map(VmaSpec::build).collect();
        round_trip(&Record::VmaTable(VmaTable::new(&vmas)));
    }

    #[test]
    fn thread_state_round_trips(spec in thread_spec(0usize..3000)) {
        round_trip(&Record::ThreadState(spec.build()));
    }

    #[test]
    fn signal_table_round_trips(actions in sigactions()) {
        let t = SignalTable::new(&actions);
        round_trip(&Record::SignalTable(t));
        prop_assert_eq!(t.to_array(), actions);
    }

    #[test]
    fn fd_table_round_trips(specs in prop::collection::vec(fd_spec(), 0..12)) {
        let fds: Vec<Fd<'_>> = specs.iter().map(FdSpec::build).collect();
        round_trip(&Record::FdTable(FdTable::new(&fds)));
    }

    #[test]
    fn credentials_round_trip(spec in creds_spec()) {
        round_trip(&Record::Credentials(spec.build()));
    }

    #[test]
    fn mapped_files_round_trip(specs in mapped_files(12)) {
        let files: Vec<MappedFile<'_>> = specs.iter().map(MappedFileSpec::build).collect();
        round_trip(&Record::MappedFiles(MappedFiles::new(&files)));
    }

    #[test]
    fn page_run_round_trips(spec in run_spec()) {
        round_trip(&Record::PageRun(spec.build()));
    }

    /// Piecewise verification (the restore's prefetching reader) agrees with the
    /// one-pass check on intact and on corrupted payloads, and offers every piece.
    #[test]
    fn piecewise_run_verification_agrees(
        spec in run_spec(),
        piece in 1usize..20_000,
        flip in any::<prop::sample::Index>(),
    ) {
        let run = spec.build();
        let rec = Record::PageRun(run);
        let mut buf = vec![0u8; rec.buffer_len()];
        rec.emit_frame(&mut buf).unwrap();
        let header = FrameHeader::parse_bytes(&buf).unwrap();
        for corrupt in [false, true] {
            let mut frame = buf.clone();
            if corrupt {
                let i = HEADER_LEN + flip.index(frame.len() - HEADER_LEN);
                frame[i] ^= 0x40;
            }
            let payload = &frame[HEADER_LEN..];
            let whole = page::verify_page_run_payload(payload, header.payload_checksum);
            let mut offered = 0usize;
            let pieces = page::verify_page_run_payload_with(
                payload,
                header.payload_checksum,
                piece,
                |p| offered += p.len(),
            );
            prop_assert_eq!(&whole, &pieces);
            prop_assert_eq!(whole.is_ok(), !corrupt);
            if payload.len() >= 24 {
                prop_assert_eq!(offered, payload.len() - 24);
            }
        }
    }

    #[test]
    fn control_and_epoch_frames_round_trip(
        e in any::<(u64, u64, u32, u64, u16, [u8; 32], [u8; 32])>(),
        code in 1u32..20,
        detail in bytes(256),
        delta in any::<bool>(),
    ) {
        let (a, b, c, d, v, nonce, mac) = e;
        round_trip(&Record::EpochBegin(EpochBegin {
            epoch: a,
            kind: if delta { EpochKind::Delta } else { EpochKind::Full },
            wall_time_ns: b,
        }));
        round_trip(&Record::EpochCommit(EpochCommit { epoch: a, frame_count: c, digest: d }));
        round_trip(&Record::Hello(Hello { protocol_version: v, node_id: a, nonce, mac }));
        round_trip(&Record::Ack(Ack { epoch: a }));
        round_trip(&Record::Heartbeat(Heartbeat { seq: a, epoch: b, time_ms: d }));
        round_trip(&Record::Error(ErrorFrame {
            code: ErrorCode::from_raw(code).unwrap(),
            epoch: a,
            detail: &detail,
        }));
    }
}

// ---- page-run encoder vs. a one-page-at-a-time oracle ----

/// The oracle: walk the pages one at a time; a page joins the open run if it is the
/// next address, of the same zero-ness, and the run has fewer than 1024 pages.
fn oracle_runs(addrs: &[u64], mem: &RegionPages<'_>) -> Vec<(u64, u32, bool, Vec<u8>)> {
    let mut runs: Vec<(u64, u32, bool, Vec<u8>)> = Vec::new();
    for (i, &a) in addrs.iter().enumerate() {
        let page = mem.page(i, a);
        let zero = page.iter().all(|&b| b == 0);
        if let Some(last) = runs.last_mut() {
            if last.0 + u64::from(last.1) * 4096 == a && last.2 == zero && last.1 < 1024 {
                last.1 += 1;
                if !zero {
                    last.3.extend_from_slice(page);
                }
                continue;
            }
        }
        runs.push((a, 1, zero, if zero { Vec::new() } else { page.to_vec() }));
    }
    runs
}

fn decode_runs(buf: &[u8]) -> Vec<(u64, u32, bool, Vec<u8>)> {
    frames(buf)
        .map(|f| match f.unwrap().record {
            Record::PageRun(r) => (
                r.start,
                r.npages,
                r.encoding == PageEncoding::Zero,
                r.data.to_vec(),
            ),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

/// A memory image of `npages` pages where page contents come from `kinds`:
/// 0 = zero, 1 = one non-zero byte at a seeded offset, else random-ish bytes.
fn memory(npages: usize, kinds: &[u8], seed: u64) -> Vec<u8> {
    let mut mem = vec![0u8; npages * 4096];
    let mut x = seed | 1;
    for (p, page) in mem.chunks_mut(4096).enumerate() {
        match kinds[p % kinds.len()] % 3 {
            0 => {}
            1 => page[(x as usize >> 7) % 4096] = 1 + (p as u8 % 200),
            _ => {
                for b in page.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
            }
        }
    }
    mem
}

fn dirty_set(npages: usize, picks: &[bool]) -> Vec<u64> {
    (0..npages)
        .filter(|&p| picks[p % picks.len()])
        .map(|p| 0x10_0000 + p as u64 * 4096)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn encoder_matches_one_page_at_a_time_oracle(
        npages in 1usize..2600,
        kinds in prop::collection::vec(0u8..3, 1..40),
        picks in prop::collection::vec(prop::bool::weighted(0.8), 1..50),
        seed in any::<u64>(),
    ) {
        let mem = memory(npages, &kinds, seed);
        let src = RegionPages { base: 0x10_0000, data: &mem };
        let addrs = dirty_set(npages, &picks);
        let mut out = vec![0u8; encode::max_encoded_len(addrs.len())];
        let mut enc = PageRunEncoder::new(&addrs).unwrap();
        let mut digest = EpochDigest::new();
        let p = enc.encode_into_digest(&src, &mut out, &mut digest).unwrap();
        prop_assert!(p.done || addrs.is_empty());
        prop_assert_eq!(p.pages as usize, addrs.len());
        let got = decode_runs(&out[..p.bytes_written]);
        prop_assert_eq!(got.len(), p.frames as usize);
        let zero: u32 = got.iter().filter(|r| r.2).map(|r| r.1).sum();
        prop_assert_eq!(p.zero_pages, zero, "zero pages reported vs. zero runs written");
        prop_assert_eq!(got, oracle_runs(&addrs, &src));
        // The digest the encoder kept equals one recomputed from the frames.
        let mut again = EpochDigest::new();
        again.update_frames(&out[..p.bytes_written]).unwrap();
        prop_assert_eq!(again, digest);
    }

    #[test]
    fn encoder_with_small_buffers_carries_the_same_pages(
        npages in 1usize..600,
        kinds in prop::collection::vec(0u8..3, 1..10),
        picks in prop::collection::vec(any::<bool>(), 1..20),
        buf_len in 4200usize..40_000,
        seed in any::<u64>(),
    ) {
        let mem = memory(npages, &kinds, seed);
        let src = RegionPages { base: 0x10_0000, data: &mem };
        let addrs = dirty_set(npages, &picks);
        let mut enc = PageRunEncoder::new(&addrs).unwrap();
        let mut out = vec![0u8; buf_len];
        let mut restored = vec![0xEEu8; mem.len()];
        let mut pages = 0usize;
        while !enc.is_done() {
            let p = enc.encode_into(&src, &mut out).unwrap();
            prop_assert!(p.frames > 0);
            for f in frames(&out[..p.bytes_written]) {
                let Record::PageRun(run) = f.unwrap().record else { panic!() };
                let off = (run.start - 0x10_0000) as usize;
                run.decode_into(&mut restored[off..]).unwrap();
                pages += run.npages as usize;
            }
        }
        prop_assert_eq!(pages, addrs.len());
        for &a in &addrs {
            let off = (a - 0x10_0000) as usize;
            prop_assert_eq!(&restored[off..off + 4096], &mem[off..off + 4096]);
        }
    }
}

// ---- whole epochs and the stream decoder ----

/// Builds a valid epoch from generated parts; returns its stream bytes.
fn build_epoch(
    epoch: u64,
    vma_specs: &[VmaSpec],
    threads: &[ThreadSpec],
    fd_specs: &[FdSpec],
    actions: &[SigAction; NUM_SIGNALS],
    pick_seed: u64,
    (creds, file_specs): &IdentitySpecs,
) -> Vec<u8> {
    let files: Vec<MappedFile<'_>> = file_specs.iter().map(MappedFileSpec::build).collect();
    let creds: Vec<Credentials<'_>> = threads
        .iter()
        .map(|t| Credentials {
            tid: t.tid,
            ..creds.build()
        })
        .collect();
    let vmas: Vec<Vma<'_>> = vma_specs.iter().map(VmaSpec::build).collect();
    let fds: Vec<Fd<'_>> = fd_specs.iter().map(FdSpec::build).collect();
    let thread_states: Vec<ThreadState<'_>> = threads.iter().map(ThreadSpec::build).collect();
    let mut info = common::process_info();
    info.pid = threads[0].tid;
    info.thread_count = threads.len() as u32;
    info.xsave_size_bytes = threads[0].xsave.len() as u32;

    // Dirty pages: a seeded subset of the pages of readable VMAs.
    let mut addrs = Vec::new();
    let mut x = pick_seed | 1;
    for v in &vmas {
        if v.is_reservation() {
            continue;
        }
        let mut a = v.start;
        while a < v.end {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if !x.is_multiple_of(3) {
                addrs.push(a);
            }
            a += 4096;
        }
    }
    let staged: Vec<u8> = addrs
        .iter()
        .flat_map(|a| {
            let mut p = vec![0u8; 4096];
            if a % 0x3000 != 0 {
                p[..8].copy_from_slice(&a.to_le_bytes());
            }
            p
        })
        .collect();

    let mut records: Vec<Record<'_>> = vec![
        Record::EpochBegin(EpochBegin {
            epoch,
            kind: EpochKind::Delta,
            wall_time_ns: epoch * 10,
        }),
        Record::ProcessInfo(info),
    ];
    // Split the VMA table in two frames when there are several.
    let half = vmas.len() / 2;
    records.push(Record::VmaTable(VmaTable::new(&vmas[..half])));
    records.push(Record::VmaTable(VmaTable::new(&vmas[half..])));
    records.push(Record::FdTable(FdTable::new(&fds)));
    records.extend(thread_states.iter().map(|t| Record::ThreadState(*t)));
    records.push(Record::SignalTable(SignalTable::new(actions)));
    records.push(Record::MappedFiles(MappedFiles::new(&files)));
    records.extend(creds.iter().map(|c| Record::Credentials(*c)));

    let mut out = Vec::new();
    let mut digest = EpochDigest::new();
    for r in &records {
        let b = common::frame_bytes(r);
        digest.update_frames(&b).unwrap();
        out.extend_from_slice(&b);
    }
    let mut enc = PageRunEncoder::new(&addrs).unwrap();
    let mut buf = vec![0u8; encode::max_encoded_len(addrs.len())];
    let p = enc
        .encode_into_digest(&StagedPages { data: &staged }, &mut buf, &mut digest)
        .unwrap();
    out.extend_from_slice(&buf[..p.bytes_written]);
    out.extend_from_slice(&common::frame_bytes(&Record::EpochCommit(
        digest.commit(epoch),
    )));
    out
}

/// The credentials (one set, given to every thread) and mapped files of an epoch.
type IdentitySpecs = (CredsSpec, Vec<MappedFileSpec>);

fn epoch_parts() -> impl Strategy<
    Value = (
        Vec<VmaSpec>,
        Vec<ThreadSpec>,
        Vec<FdSpec>,
        [SigAction; NUM_SIGNALS],
        u64,
        IdentitySpecs,
    ),
> {
    (
        vma_list(10),
        (9usize..20).prop_flat_map(|k| prop::collection::vec(thread_spec(Just(k * 64)), 1..4)),
        prop::collection::vec(fd_spec(), 0..6),
        sigactions(),
        any::<u64>(),
        (creds_spec(), mapped_files(4)),
    )
        .prop_map(|(vmas, mut threads, mut fds, mut actions, seed, ids)| {
            // Make the parts valid: increasing unique tids, one XSAVE size, increasing
            // fds of restorable kinds, SIGKILL/SIGSTOP at SIG_DFL.
            let xs = threads[0].xsave.len();
            for (i, t) in threads.iter_mut().enumerate() {
                t.tid = 100 + i as u32 * 7;
                t.xsave.resize(xs, 0);
            }
            for (i, f) in fds.iter_mut().enumerate() {
                f.fd = i as i32 * 3;
                if f.tag == 10 {
                    f.tag = 9;
                }
            }
            actions[8].handler = 0;
            actions[18].handler = 0;
            (vmas, threads, fds, actions, seed, ids)
        })
}

/// Decodes `stream` fed in chunks of the given sizes (cycled).
/// The buffer is 256 KiB (larger than any frame these tests make; zeroing a
/// MAX_FRAME_LEN buffer per decode would dominate the exhaustive split tests).
fn decode_in_chunks(stream: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut dec = StreamDecoder::new(vec![0u8; 256 << 10]);
    let mut got = Vec::new();
    let mut rest = stream;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        i += 1;
        let mut input = &rest[..n];
        rest = &rest[n..];
        while !input.is_empty() {
            let taken = dec.feed(input);
            input = &input[taken..];
            while let Some(f) = dec.next_frame().unwrap() {
                got.push(common::frame_bytes(&f.record));
            }
        }
    }
    assert!(dec.is_idle());
    got
}

fn frames_of(stream: &[u8]) -> Vec<Vec<u8>> {
    frames(stream)
        .map(|f| common::frame_bytes(&f.unwrap().record))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn whole_epochs_round_trip_and_validate(
        (vmas, threads, fds, actions, seed, ids) in epoch_parts(),
        epoch in 1u64..1000,
        sizes in prop::collection::vec(1usize..5000, 1..8),
    ) {
        let stream = build_epoch(epoch, &vmas, &threads, &fds, &actions, seed, &ids);
        // Every frame re-encodes to its own bytes, so the stream is reproduced exactly.
        let whole = frames_of(&stream);
        prop_assert_eq!(whole.concat(), stream.clone());
        // Same frames for a random split.
        prop_assert_eq!(decode_in_chunks(&stream, &sizes), whole);
        // And the epoch is valid.
        let parsed: Vec<Frame<'_>> = frames(&stream).collect::<Result<_, _>>().unwrap();
        let summary = validate_epoch(&parsed).unwrap();
        prop_assert_eq!(summary.epoch, epoch);
        prop_assert_eq!(summary.threads as usize, threads.len());
        prop_assert_eq!(summary.vmas as usize, vmas.len());
    }
}

#[test]
fn stream_decoder_same_frames_for_every_two_chunk_split() {
    let stream = common::epoch_stream(5);
    let want = frames_of(&stream);
    for cut in 0..=stream.len() {
        let got = decode_in_chunks(&stream, &[cut.max(1), stream.len()]);
        assert_eq!(got, want, "split at {cut}");
    }
}

#[test]
fn stream_decoder_same_frames_for_every_three_chunk_split_of_small_frames() {
    let mut stream = Vec::new();
    for f in common::one_of_each() {
        if f.len() < 200 {
            stream.extend_from_slice(&f);
        }
    }
    let want = frames_of(&stream);
    for a in 1..stream.len() {
        for b in (a + 1)..stream.len() {
            let got = decode_in_chunks(&stream, &[a, b - a, stream.len()]);
            assert_eq!(got, want, "splits at {a}, {b}");
        }
    }
}

#[test]
fn stream_decoder_with_a_small_buffer_takes_chunks_in_parts() {
    // A buffer just big enough for the largest frame: feed() takes what fits.
    let stream = common::epoch_stream(5);
    let want = frames_of(&stream);
    let largest = want.iter().map(Vec::len).max().unwrap();
    let mut dec = StreamDecoder::new(vec![0u8; largest]);
    let mut got = Vec::new();
    let mut input = &stream[..];
    while !input.is_empty() {
        let n = dec.feed(input);
        input = &input[n..];
        while let Some(f) = dec.next_frame().unwrap() {
            got.push(common::frame_bytes(&f.record));
        }
    }
    assert_eq!(got, want);
}

#[test]
fn zero_page_detection() {
    let mut p = vec![0u8; 4096];
    assert!(is_zero_page(&p));
    for i in [0, 7, 63, 64, 4095] {
        p[i] = 1;
        assert!(!is_zero_page(&p), "byte {i}");
        p[i] = 0;
    }
}
