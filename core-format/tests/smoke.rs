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
