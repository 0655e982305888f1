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
