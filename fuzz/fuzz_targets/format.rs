//! Arbitrary bytes into every parser of core-format.
//!
//! 1. The input as a buffer of frames (`frames`): every frame that parses must emit
//!    back to the same bytes, and parse again to an equal record.
//! 2. The input as one payload of the kind its first byte selects, bypassing the
//!    checksums (so the payload parsers are reached): a payload that parses must emit
//!    back to exactly the same bytes.
//! 3. The streaming decoder, fed the input in chunks whose sizes come from the input:
//!    it must yield the same frames as (1), then the same error or a clean stop.
//! 4. The epoch validator over the frames of (1); the header view's accessors; page
//!    run decoding (including LZ4) into a buffer.
#![no_main]

use core_format::*;
use libfuzzer_sys::fuzz_target;

/// Returns the frame as this build emits it (an older minor version is written as
/// this build's; everything else must be byte for byte the original).
fn check_frame_round_trip(frame: &Frame<'_>, original: &[u8]) -> Vec<u8> {
    let record = &frame.record;
    let mut buf = vec![0u8; record.buffer_len()];
    let n = record
        .emit_frame(&mut buf)
        .expect("a parsed record must emit");
    assert_eq!(n, buf.len());
    assert_eq!(
        &buf[HEADER_LEN..],
        &original[HEADER_LEN..],
        "emit(parse(frame)) differs"
    );
    assert_eq!(
        &frame.header.to_bytes()[..],
        &original[..HEADER_LEN],
        "the parsed header re-encodes differently"
    );
    let (again, m) = parse_frame(&buf).expect("an emitted frame must parse");
    assert_eq!(m, n);
    assert_eq!(&again, record);
    buf
}

fn check_payload_round_trip(record: &Record<'_>, payload: &[u8]) {
    let mut buf = vec![0u8; record.payload_len()];
    let n = record
        .emit_payload(&mut buf)
        .expect("a parsed payload must emit");
    assert_eq!(n, payload.len());
    assert_eq!(&buf[..], payload, "emit(parse(payload)) differs");
    let again = Record::parse_payload(record.kind(), &buf).expect("must parse again");
    assert_eq!(&again, record);
    if let Record::PageRun(run) = record {
        let mut pages = vec![0u8; run.len_bytes()];
        let _ = run.decode_into(&mut pages);
    }
}

fn stream_matches(data: &[u8], whole: &[Result<Vec<u8>, Error>]) {
    let mut dec = StreamDecoder::new(vec![0u8; 1 << 16]);
    let mut got: Vec<Result<Vec<u8>, Error>> = Vec::new();
    let mut seed = data.len() as u32 ^ 0x9e37_79b9;
    let mut rest = data;
    'outer: while !rest.is_empty() {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let want = 1 + (seed >> 16) as usize % 97;
        let chunk = &rest[..want.min(rest.len())];
        let mut input = chunk;
        while !input.is_empty() {
            let n = dec.feed(input);
            input = &input[n..];
            loop {
                match dec.next_frame() {
                    Ok(Some(f)) => {
                        let mut buf = vec![0u8; f.record.buffer_len()];
                        f.record.emit_frame(&mut buf).unwrap();
                        got.push(Ok(buf));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        got.push(Err(e));
                        break 'outer;
                    }
                }
            }
            if n == 0 {
                break 'outer;
            }
        }
        rest = &rest[chunk.len()..];
    }
    // The slice walker reports a truncated tail as an error; the stream just waits.
    let whole_trimmed: Vec<_> = whole
        .iter()
        .filter(|r| !matches!(r, Err(Error::Truncated { .. })))
        .cloned()
        .collect();
    let got_trimmed: Vec<_> = got
        .into_iter()
        .filter(|r| !matches!(r, Err(Error::StreamFrameTooLarge { .. })))
        .collect();
    let k = got_trimmed.len().min(whole_trimmed.len());
    assert_eq!(&got_trimmed[..k], &whole_trimmed[..k], "stream and slice disagree");
}

fuzz_target!(|data: &[u8]| {
    // 1. A buffer of frames.
    let mut whole: Vec<Result<Vec<u8>, Error>> = Vec::new();
    let mut parsed: Vec<Frame<'_>> = Vec::new();
    let mut off = 0;
    for f in frames(data) {
        match f {
            Ok(frame) => {
                let len = frame.header.frame_len();
                let again = check_frame_round_trip(&frame, &data[off..off + len]);
                off += len;
                whole.push(Ok(again));
                parsed.push(frame);
            }
            Err(e) => whole.push(Err(e)),
        }
    }

    // 4. Validator and header view.
    let _ = validate_epoch(&parsed);
    if let Ok(view) = FrameHeaderView::new_checked(data) {
        let _ = (
            view.magic(),
            view.version_major(),
            view.version_minor(),
            view.kind_raw(),
            view.flags(),
            view.payload_len(),
            view.payload_checksum(),
            view.reserved(),
            view.header_checksum(),
            view.compute_header_checksum(),
        );
        let _ = FrameHeader::parse(&view);
    }

    // 2. One payload of a chosen kind.
    if let Some((&sel, payload)) = data.split_first() {
        let kind = FrameKind::ALL[sel as usize % FrameKind::ALL.len()];
        if let Ok(record) = Record::parse_payload(kind, payload) {
            check_payload_round_trip(&record, payload);
        }
    }

    // 3. The stream.
    stream_matches(data, &whole);
});
