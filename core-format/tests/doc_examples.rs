//! The hex examples of `docs/format.md` are real frames: each parses, re-encodes to the
//! same bytes and holds the values its caption names.

use core_format::*;

const DOC: &str = include_str!("../../docs/format.md");

/// `(name, bytes)` for every ```hex block, named by the preceding "Example `name`" line.
fn examples() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut name = String::new();
    let mut lines = DOC.lines();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("Example `") {
            name = rest.split('`').next().unwrap().to_string();
        }
        if line.trim() == "```hex" {
            let mut bytes = Vec::new();
            for l in lines.by_ref() {
                if l.trim() == "```" {
                    break;
                }
                let l = l.split('#').next().unwrap();
                let l = l.split_once(':').map_or(l, |(_, r)| r);
                for tok in l.split_whitespace() {
                    bytes.push(u8::from_str_radix(tok, 16).expect("hex byte in docs/format.md"));
                }
            }
            out.push((std::mem::take(&mut name), bytes));
        }
    }
    out
}

#[test]
fn doc_examples_parse_and_reencode() {
    let examples = examples();
    assert_eq!(examples.len(), 5, "examples in docs/format.md");
    for (name, bytes) in &examples {
        let (record, n) = parse_frame(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(n, bytes.len(), "{name}");
        let mut again = vec![0u8; record.buffer_len()];
        record.emit_frame(&mut again).unwrap();
        assert_eq!(&again, bytes, "{name} re-encodes differently");
        let expected = match name.as_str() {
            "ack" => Record::Ack(Ack { epoch: 7 }),
            "heartbeat" => Record::Heartbeat(Heartbeat {
                seq: 1,
                epoch: 7,
                time_ms: 1000,
            }),
            "epoch_begin" => Record::EpochBegin(EpochBegin {
                epoch: 7,
                kind: EpochKind::Delta,
                wall_time_ns: 5,
            }),
            "zero_run" => Record::PageRun(PageRun::zero(0x402000, 3).unwrap()),
            "error" => Record::Error(ErrorFrame {
                code: ErrorCode::StaleEpoch,
                epoch: 6,
                detail: b"stale",
            }),
            other => panic!("unknown example {other}"),
        };
        assert_eq!(record, expected, "{name}");
    }
}

#[test]
fn doc_constants_match_the_crate() {
    assert!(DOC.contains("4 MiB + 64 = 4194368"));
    assert_eq!(MAX_PAYLOAD_BYTES, 4194368);
    assert!(DOC.contains("0x2d06800538d394c2"));
    assert_eq!(page::data_checksum(&[]), 0x2d06800538d394c2);
    assert_eq!(HEADER_LEN, 32);
    assert_eq!(MAX_FRAME_LEN, 4194368 + 32);
}
