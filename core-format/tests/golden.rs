//! Golden bytes: the exact encoding of one frame of every kind, checked in under
//! `tests/golden/`. A change to any of them is a format change: bump the format
//! version, never re-bless silently. Re-bless (for a deliberate new kind only) with
//! `CS_BLESS=1 cargo test -p core-format --test golden`.

mod common;

use std::path::PathBuf;

use core_format::*;

fn golden_path(kind: FrameKind) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{kind:?}.hex"))
}

fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::new();
    for (i, line) in bytes.chunks(16).enumerate() {
        s.push_str(&format!("{:08x}:", i * 16));
        for b in line {
            s.push_str(&format!(" {b:02x}"));
        }
        s.push('\n');
    }
    s
}

/// Parses `offset: hex hex ...` lines; text after `#` is a comment.
pub fn from_hex(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap();
        let line = match line.split_once(':') {
            Some((_, rest)) => rest,
            None => line,
        };
        for tok in line.split_whitespace() {
            out.push(u8::from_str_radix(tok, 16).expect("hex byte"));
        }
    }
    out
}

#[test]
fn golden_frames_of_every_kind() {
    let bless = std::env::var_os("CS_BLESS").is_some();
    for bytes in common::one_of_each() {
        let (record, _) = parse_frame(&bytes).unwrap();
        let path = golden_path(record.kind());
        if bless {
            std::fs::write(&path, to_hex(&bytes)).unwrap();
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let want = from_hex(&text);
        assert_eq!(
            to_hex(&bytes),
            to_hex(&want),
            "{:?} encoding changed",
            record.kind()
        );
        // And the checked-in bytes parse to the sample record.
        let (parsed, n) = parse_frame(&want).unwrap();
        assert_eq!(n, want.len());
        assert_eq!(parsed, record);
    }
}

#[test]
fn golden_header_layout_by_hand() {
    // Ack { epoch: 7 }: every header byte spelled out, checksums from xxh3.
    let bytes = common::frame_bytes(&Record::Ack(Ack { epoch: 7 }));
    assert_eq!(&bytes[0..4], b"CSYN");
    assert_eq!(&bytes[4..6], &[1, 0]); // major 1
    assert_eq!(&bytes[6..8], &[1, 0]); // minor 1
    assert_eq!(&bytes[8..10], &[17, 0]); // kind Ack
    assert_eq!(&bytes[10..12], &[0, 0]); // flags
    assert_eq!(&bytes[12..16], &[8, 0, 0, 0]); // payload length
    let payload = 7u64.to_le_bytes();
    assert_eq!(
        &bytes[16..24],
        &xxhash_rust::xxh3::xxh3_64(&payload).to_le_bytes()
    );
    assert_eq!(&bytes[24..28], &[0, 0, 0, 0]);
    assert_eq!(
        &bytes[28..32],
        &(xxhash_rust::xxh3::xxh3_64(&bytes[..28]) as u32).to_le_bytes()
    );
    assert_eq!(&bytes[32..], &payload);
}
