//! First round-trip checks over one record of every kind, the stream and the epoch.

mod common;

use core_format::*;

#[test]
fn every_kind_round_trips_through_a_frame() {
    let frames = common::one_of_each();
    assert_eq!(frames.len(), FrameKind::ALL.len());
    for bytes in &frames {
        let (record, n) = parse_frame(bytes).unwrap();
        assert_eq!(n, bytes.len());
        assert_eq!(common::frame_bytes(&record), *bytes, "{:?}", record.kind());
    }
}

#[test]
fn epoch_stream_validates_and_decodes_byte_by_byte() {
    let stream = common::epoch_stream(9);
    let all: Vec<Frame<'_>> = frames(&stream).collect::<Result<_, _>>().unwrap();
    let summary = validate_epoch(&all).unwrap();
    assert_eq!(summary.epoch, 9);
    assert_eq!(summary.threads, 2);
    assert_eq!(summary.pages, 4);

    let mut dec = StreamDecoder::with_max_frame();
    let mut got = Vec::new();
    for b in &stream {
        assert_eq!(dec.feed(std::slice::from_ref(b)), 1);
        while let Some(f) = dec.next_frame().unwrap() {
            got.push(common::frame_bytes(&f.record));
        }
    }
    assert!(dec.is_idle());
    let want: Vec<Vec<u8>> = all.iter().map(|f| common::frame_bytes(&f.record)).collect();
    assert_eq!(got, want);
}

/// The committed fuzz seed corpus is exactly what the current encoder produces
/// (regenerate with `CS_WRITE_FUZZ_SEEDS=1 cargo test -p core-format --test smoke`).
/// Seeds are whole frames (for the frame walker and the stream) and `kind byte +
/// payload` inputs (for the payload parsers).
#[test]
fn fuzz_seeds_are_current() {
    let write = std::env::var_os("CS_WRITE_FUZZ_SEEDS").is_some();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/format");
    let check = |name: String, bytes: &[u8]| {
        let path = dir.join(&name);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, bytes).unwrap();
        } else {
            let committed = std::fs::read(&path).unwrap_or_else(|e| {
                panic!("fuzz seed {name} missing ({e}); regenerate with CS_WRITE_FUZZ_SEEDS=1")
            });
            assert_eq!(
                committed, bytes,
                "fuzz seed {name} is stale; regenerate with CS_WRITE_FUZZ_SEEDS=1"
            );
        }
    };
    for (i, frame) in common::one_of_each().iter().enumerate() {
        check(format!("seed-frame-{i:02}"), frame);
        let (record, _) = parse_frame(frame).unwrap();
        let sel = FrameKind::ALL
            .iter()
            .position(|k| *k == record.kind())
            .unwrap() as u8;
        let mut payload = vec![sel];
        payload.extend_from_slice(&frame[HEADER_LEN..]);
        check(format!("seed-payload-{i:02}"), &payload);
    }
    check("seed-epoch".to_string(), &common::epoch_stream(3));
    let (lz4, _) = lz4_run_frame();
    check("seed-frame-lz4".to_string(), &lz4);
    let mut payload = vec![2u8]; // FrameKind::ALL[2] = PageRun
    payload.extend_from_slice(&lz4[HEADER_LEN..]);
    check("seed-payload-lz4".to_string(), &payload);
    let zero = common::frame_bytes(&Record::PageRun(PageRun::zero(0x10000, 7).unwrap()));
    check("seed-frame-zero".to_string(), &zero);
}

/// A two-page LZ4 run frame over compressible pages, and those pages.
fn lz4_run_frame() -> (Vec<u8>, Vec<u8>) {
    let pages: Vec<u8> = (0..2 * PAGE_SIZE).map(|i| (i / 100) as u8).collect();
    let mut compressed = Vec::new();
    let n = page::compress_lz4(&pages, &mut compressed).expect("compressible");
    let run = PageRun::lz4(0x20000, 2, &compressed[..n]).unwrap();
    (common::frame_bytes(&Record::PageRun(run)), pages)
}

#[test]
fn lz4_runs_round_trip_through_the_std_helpers() {
    let (frame, pages) = lz4_run_frame();
    let (record, _) = parse_frame(&frame).unwrap();
    let Record::PageRun(run) = record else {
        panic!()
    };
    assert_eq!(run.encoding, PageEncoding::Lz4);
    assert!(run.data.len() < pages.len());
    let mut out = vec![0u8; pages.len()];
    run.decode_into(&mut out).unwrap();
    assert_eq!(out, pages);
    // Random bytes do not compress: the helper says to store them Raw.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..PAGE_SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    let mut scratch = Vec::new();
    assert_eq!(page::compress_lz4(&noise, &mut scratch), None);
}
