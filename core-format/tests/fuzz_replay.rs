//! Replays the fuzz seed corpus and every saved fuzz crash through the fuzz target's
//! checks on stable Rust, so a fixed crash stays fixed without nightly.
//! To add a regression: copy `fuzz/artifacts/format/crash-*` into
//! `core-format/tests/fuzz_regressions/`.

use std::path::{Path, PathBuf};

use core_format::*;

fn inputs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root.join("../fuzz/corpus/format")).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("seed-")
        {
            files.push(p);
        }
    }
    for entry in std::fs::read_dir(root.join("tests/fuzz_regressions")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_none_or(|e| e != "md") {
            files.push(p);
        }
    }
    files.sort();
    files
}

/// The fuzz target's checks (fuzz/fuzz_targets/format.rs), minus the stream part,
/// which `proptests.rs` covers.
fn check(data: &[u8]) {
    let mut parsed = Vec::new();
    let mut off = 0;
    for f in frames(data) {
        let Ok(frame) = f else { break };
        let len = frame.header.frame_len();
        let mut buf = vec![0u8; frame.record.buffer_len()];
        frame.record.emit_frame(&mut buf).unwrap();
        // An older minor is re-emitted as this build's; the rest is byte for byte.
        assert_eq!(&buf[HEADER_LEN..], &data[off + HEADER_LEN..off + len]);
        assert_eq!(&frame.header.to_bytes()[..], &data[off..off + HEADER_LEN]);
        off += len;
        parsed.push(frame);
    }
    let _ = validate_epoch(&parsed);
    if let Some((&sel, payload)) = data.split_first() {
        let kind = FrameKind::ALL[sel as usize % FrameKind::ALL.len()];
        if let Ok(record) = Record::parse_payload(kind, payload) {
            let mut buf = vec![0u8; record.payload_len()];
            record.emit_payload(&mut buf).unwrap();
            assert_eq!(&buf[..], payload);
            if let Record::PageRun(run) = record {
                let mut pages = vec![0u8; run.len_bytes()];
                let _ = run.decode_into(&mut pages);
            }
        }
    }
}

#[test]
fn fuzz_seeds_and_regressions_replay_cleanly() {
    let files = inputs();
    assert!(files.len() >= 25, "seed corpus missing? {files:?}");
    for f in files {
        check(&std::fs::read(&f).unwrap());
    }
}

#[test]
fn seeds_cover_every_frame_kind() {
    let mut kinds = std::collections::BTreeSet::new();
    for f in inputs() {
        for frame in frames(&std::fs::read(&f).unwrap()).flatten() {
            kinds.insert(frame.record.kind());
        }
    }
    assert_eq!(kinds.len(), FrameKind::ALL.len());
}
