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

/// Writes the fuzz seed corpus: `CS_WRITE_FUZZ_SEEDS=1 cargo test -p core-format
/// --test smoke -- --ignored`. Seeds are whole frames (for the frame walker and the
/// stream) and `kind byte + payload` inputs (for the payload parsers).
#[test]
#[ignore]
fn write_fuzz_seeds() {
    if std::env::var_os("CS_WRITE_FUZZ_SEEDS").is_none() {
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/format");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, frame) in common::one_of_each().iter().enumerate() {
        std::fs::write(dir.join(format!("seed-frame-{i:02}")), frame).unwrap();
        let (record, _) = parse_frame(frame).unwrap();
        let sel = FrameKind::ALL
            .iter()
            .position(|k| *k == record.kind())
            .unwrap() as u8;
        let mut payload = vec![sel];
        payload.extend_from_slice(&frame[HEADER_LEN..]);
        std::fs::write(dir.join(format!("seed-payload-{i:02}")), payload).unwrap();
    }
    std::fs::write(dir.join("seed-epoch"), common::epoch_stream(3)).unwrap();
    let (lz4, _) = lz4_run_frame();
    std::fs::write(dir.join("seed-frame-lz4"), &lz4).unwrap();
    let mut payload = vec![2u8]; // FrameKind::ALL[2] = PageRun
    payload.extend_from_slice(&lz4[HEADER_LEN..]);
    std::fs::write(dir.join("seed-payload-lz4"), payload).unwrap();
    let zero = common::frame_bytes(&Record::PageRun(PageRun::zero(0x10000, 7).unwrap()));
    std::fs::write(dir.join("seed-frame-zero"), zero).unwrap();
}

#[test]
#[ignore]
fn print_zero_run_frame() {
    let b = common::frame_bytes(&Record::PageRun(PageRun::zero(0x402000, 3).unwrap()));
    for (i, l) in b.chunks(16).enumerate() {
        print!("{:08x}:", i * 16);
        for x in l {
            print!(" {x:02x}");
        }
        println!();
    }
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
