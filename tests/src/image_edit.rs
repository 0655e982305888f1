//! Editing checkpoint images for negative tests: make exactly one thing wrong.
//!
//! An image is split into frames ([`ImageFrames::parse`], which verifies it the way a
//! reader does), edited at the level of frames or records, and written back with
//! [`ImageFrames::to_bytes`], which re-seals everything a careless edit would also
//! break: every payload checksum, every header checksum, then the EpochCommit's
//! digest and frame count (`docs/format.md`, "EpochBegin, EpochCommit"). So a
//! version bump is refused for its version, not for a checksum, and a rewritten
//! ProcessInfo is refused for what it says, not for the digest.
//!
//! Order of use: parse → record-level edits ([`ImageFrames::set_version`],
//! [`ImageFrames::set_cpu_layout`]) → [`ImageFrames::to_bytes`] → byte-level damage
//! on the result (a flipped byte, a cut, a bad magic), which is never re-sealed.
//! [`ImageFrames::offsets`] gives each frame's byte offset in the re-sealed bytes, for
//! checking the offset a reader names in its error.

use std::ops::Range;

use core_format as cf;

/// One frame of an image, owned and editable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditFrame {
    /// What the payload is.
    pub kind: cf::FrameKind,
    /// Format major version written in the header.
    pub version_major: u16,
    /// Format minor version written in the header.
    pub version_minor: u16,
    /// The payload bytes (their checksum is recomputed by [`ImageFrames::to_bytes`]).
    pub payload: Vec<u8>,
}

impl EditFrame {
    /// Header plus payload length in bytes.
    pub fn len_bytes(&self) -> usize {
        cf::HEADER_LEN + self.payload.len()
    }
}

/// Why an image could not be split or re-sealed.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The input is not a valid image (at this frame).
    #[error("frame at byte offset {offset}: {source}")]
    Frame {
        /// Offset of the frame in the input.
        offset: usize,
        /// What core-format refused.
        source: cf::Error,
    },
    /// An edit needs a frame the image does not have.
    #[error("the image has no {0:?} frame")]
    Missing(cf::FrameKind),
    /// A record could not be parsed or re-emitted after an edit.
    #[error("frame {index} ({kind:?}): {source}")]
    Record {
        /// Index of the frame.
        index: usize,
        /// Its kind.
        kind: cf::FrameKind,
        /// What core-format refused.
        source: cf::Error,
    },
}

/// An image split into frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFrames {
    /// The frames in file order.
    pub frames: Vec<EditFrame>,
}

fn emit_record(rec: &cf::Record<'_>) -> Result<Vec<u8>, cf::Error> {
    let mut out = vec![0u8; rec.payload_len()];
    let n = rec.emit_payload(&mut out)?;
    out.truncate(n);
    Ok(out)
}

impl ImageFrames {
    /// Splits `bytes` into frames, verifying both checksums of every frame and the
    /// syntax of every record (not the epoch's semantics: see [`ImageFrames::validate`]).
    pub fn parse(bytes: &[u8]) -> Result<Self, EditError> {
        let mut frames = Vec::new();
        let mut offset = 0;
        while offset < bytes.len() {
            let (frame, len) = cf::parse_frame_with_header(&bytes[offset..])
                .map_err(|source| EditError::Frame { offset, source })?;
            frames.push(EditFrame {
                kind: frame.header.kind,
                version_major: frame.header.version_major,
                version_minor: frame.header.version_minor,
                payload: bytes[offset + cf::HEADER_LEN..offset + len].to_vec(),
            });
            offset += len;
        }
        Ok(ImageFrames { frames })
    }

    /// Byte offset of every frame in [`ImageFrames::to_bytes`]'s output.
    pub fn offsets(&self) -> Vec<usize> {
        let mut at = 0;
        self.frames
            .iter()
            .map(|f| {
                let here = at;
                at += f.len_bytes();
                here
            })
            .collect()
    }

    /// Total length in bytes of [`ImageFrames::to_bytes`]'s output.
    pub fn len_bytes(&self) -> usize {
        self.frames.iter().map(EditFrame::len_bytes).sum()
    }

    /// The byte range of frame `index`'s payload in [`ImageFrames::to_bytes`]'s output.
    pub fn payload_range(&self, index: usize) -> Range<usize> {
        let start = self.offsets()[index] + cf::HEADER_LEN;
        start..start + self.frames[index].payload.len()
    }

    /// Indices of the frames of `kind`, in file order.
    pub fn indices(&self, kind: cf::FrameKind) -> Vec<usize> {
        (0..self.frames.len())
            .filter(|&i| self.frames[i].kind == kind)
            .collect()
    }

    /// Writes every frame's header with this version (the header checksum follows).
    pub fn set_version(&mut self, major: u16, minor: u16) {
        for f in &mut self.frames {
            f.version_major = major;
            f.version_minor = minor;
        }
    }

    /// The XSAVE size in bytes and XCR0 the image's ProcessInfo records.
    pub fn cpu_layout(&self) -> Result<(u32, u64), EditError> {
        let i = *self
            .indices(cf::FrameKind::ProcessInfo)
            .first()
            .ok_or(EditError::Missing(cf::FrameKind::ProcessInfo))?;
        let p = cf::ProcessInfo::parse(&self.frames[i].payload).map_err(|source| {
            EditError::Record {
                index: i,
                kind: cf::FrameKind::ProcessInfo,
                source,
            }
        })?;
        Ok((p.xsave_size_bytes, p.xcr0))
    }

    /// Makes the image look taken on a CPU with another XSAVE layout: ProcessInfo gets
    /// `xsave_size_bytes` and `xcr0`, and every thread's XSAVE blob is cut or
    /// zero-extended to the new size with its XSTATE_BV (bytes 512..520) masked by the
    /// new XCR0, so that the epoch stays semantically valid (the validator requires
    /// each blob to have the process's XSAVE size).
    pub fn set_cpu_layout(&mut self, xsave_size_bytes: u32, xcr0: u64) -> Result<(), EditError> {
        let infos = self.indices(cf::FrameKind::ProcessInfo);
        if infos.is_empty() {
            return Err(EditError::Missing(cf::FrameKind::ProcessInfo));
        }
        for i in infos {
            let kind = cf::FrameKind::ProcessInfo;
            let err = |source| EditError::Record {
                index: i,
                kind,
                source,
            };
            let old = std::mem::take(&mut self.frames[i].payload);
            let mut p = cf::ProcessInfo::parse(&old).map_err(err)?;
            p.xsave_size_bytes = xsave_size_bytes;
            p.xcr0 = xcr0;
            self.frames[i].payload = emit_record(&cf::Record::ProcessInfo(p)).map_err(err)?;
        }
        for i in self.indices(cf::FrameKind::ThreadState) {
            let kind = cf::FrameKind::ThreadState;
            let err = |source| EditError::Record {
                index: i,
                kind,
                source,
            };
            let old = std::mem::take(&mut self.frames[i].payload);
            let mut t = cf::ThreadState::parse(&old).map_err(err)?;
            let mut xsave = t.xsave.to_vec();
            xsave.resize(xsave_size_bytes as usize, 0);
            if let Some(bv) = xsave.get_mut(512..520) {
                let masked = u64::from_le_bytes(bv.try_into().expect("8 bytes")) & xcr0;
                bv.copy_from_slice(&masked.to_le_bytes());
            }
            t.xsave = &xsave;
            self.frames[i].payload = emit_record(&cf::Record::ThreadState(t)).map_err(err)?;
        }
        Ok(())
    }

    /// The image bytes, re-sealed: payload checksums, header checksums, and each
    /// EpochCommit's digest and frame count over the frames since its EpochBegin.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EditError> {
        let mut out = Vec::with_capacity(self.len_bytes());
        let mut digest = cf::EpochDigest::new();
        for (index, f) in self.frames.iter().enumerate() {
            let commit_payload;
            let payload: &[u8] = match f.kind {
                cf::FrameKind::EpochCommit => {
                    let err = |source| EditError::Record {
                        index,
                        kind: f.kind,
                        source,
                    };
                    let old = cf::EpochCommit::parse(&f.payload).map_err(err)?;
                    commit_payload =
                        emit_record(&cf::Record::EpochCommit(digest.commit(old.epoch)))
                            .map_err(err)?;
                    &commit_payload
                }
                cf::FrameKind::EpochBegin => {
                    digest = cf::EpochDigest::new();
                    &f.payload
                }
                _ => &f.payload,
            };
            let header = cf::FrameHeader {
                version_major: f.version_major,
                version_minor: f.version_minor,
                kind: f.kind,
                payload_len: payload.len() as u32,
                payload_checksum: cf::header::payload_checksum(payload),
            }
            .to_bytes();
            if f.kind != cf::FrameKind::EpochCommit {
                digest.update(&header);
            }
            out.extend_from_slice(&header);
            out.extend_from_slice(payload);
        }
        Ok(out)
    }

    /// Runs core-format's reader over [`ImageFrames::to_bytes`]: frame checks, then the
    /// epoch validator (what `cs-driver` runs before it restores anything).
    pub fn validate(&self) -> Result<cf::EpochSummary, EditError> {
        let bytes = self.to_bytes()?;
        let mut frames = Vec::new();
        let mut offset = 0;
        while offset < bytes.len() {
            let (frame, len) = cf::parse_frame_with_header(&bytes[offset..])
                .map_err(|source| EditError::Frame { offset, source })?;
            frames.push(frame);
            offset += len;
        }
        cf::validate_epoch(&frames).map_err(|source| EditError::Frame { offset, source })
    }
}

/// `bytes` with the byte at `at` inverted.
pub fn flip_byte(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[at] ^= 0xff;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID: u32 = 100;
    const XSAVE_LEN: usize = 1024;

    /// A small valid one-epoch image: two threads, one VMA, one stored page.
    fn sample_image() -> Vec<u8> {
        let info = cf::ProcessInfo {
            pid: PID,
            arch: cf::Arch::X86_64,
            page_size: 4096,
            xsave_size_bytes: XSAVE_LEN as u32,
            xcr0: 0xe7,
            thread_count: 2,
            umask: 0o022,
            clock_monotonic_ns: 1,
            clock_boottime_ns: 2,
            mm: cf::MmLayout::default(),
            rlimits: Default::default(),
            auxv: b"",
            exe_path: b"/app",
            cwd_path: b"/",
            comm: b"app",
            kernel_release: b"",
            go_version: b"",
        };
        let vmas = [cf::Vma {
            start: 0x400000,
            end: 0x402000,
            prot: cf::Prot::READ,
            flags: cf::VmaFlags::EMPTY,
            kind: cf::VmaKind::Anonymous,
            file_offset: 0,
            path: b"",
        }];
        let acts = [cf::SigAction::DEFAULT; cf::NUM_SIGNALS];
        let mut xsave = vec![0x11u8; XSAVE_LEN];
        xsave[512..520].copy_from_slice(&0xe7u64.to_le_bytes());
        let thread = |tid| cf::ThreadState {
            tid,
            comm: b"app",
            regs: [0; cf::NUM_GREGS],
            xsave: &xsave,
            sigmask: 0,
            altstack: cf::SigAltStack {
                sp: 0,
                flags: 2,
                size: 0,
            },
            restart: cf::Restart::None,
            stopped: false,
        };
        let creds = |tid| cf::Credentials {
            tid,
            uids: cf::IdSet::default(),
            gids: cf::IdSet::default(),
            securebits: 0,
            no_new_privs: false,
            seccomp: cf::Seccomp::Disabled,
            dumpable: 1,
            caps: cf::CapSets::default(),
            groups: cf::Table::empty(),
        };
        let page = vec![0x5au8; cf::PAGE_SIZE];
        let records = [
            cf::Record::EpochBegin(cf::EpochBegin {
                epoch: 4,
                kind: cf::EpochKind::Full,
                wall_time_ns: 0,
            }),
            cf::Record::ProcessInfo(info),
            cf::Record::VmaTable(cf::VmaTable::new(&vmas)),
            cf::Record::SignalTable(cf::SignalTable::new(&acts)),
            cf::Record::FdTable(cf::FdTable::new(&[])),
            cf::Record::ThreadState(thread(PID)),
            cf::Record::ThreadState(thread(PID + 1)),
            cf::Record::MappedFiles(cf::MappedFiles::new(&[])),
            cf::Record::Credentials(creds(PID)),
            cf::Record::Credentials(creds(PID + 1)),
            cf::Record::PageRun(cf::PageRun::raw(0x401000, &page).unwrap()),
        ];
        let mut out = Vec::new();
        let mut digest = cf::EpochDigest::new();
        for r in records.iter().chain(
            [cf::Record::EpochCommit(cf::EpochCommit {
                epoch: 0,
                frame_count: 0,
                digest: 0,
            })]
            .iter(),
        ) {
            let r = match r {
                cf::Record::EpochCommit(_) => cf::Record::EpochCommit(digest.commit(4)),
                other => other.clone(),
            };
            let mut buf = vec![0u8; r.buffer_len()];
            let header = r.emit_frame_header(&mut buf).unwrap();
            digest.update_header(&header);
            out.extend_from_slice(&buf);
        }
        out
    }

    #[test]
    fn unedited_image_comes_back_byte_for_byte() {
        let bytes = sample_image();
        let img = ImageFrames::parse(&bytes).unwrap();
        assert_eq!(img.frames.len(), 12);
        assert_eq!(img.to_bytes().unwrap(), bytes);
        assert_eq!(img.len_bytes(), bytes.len());
        let s = img.validate().unwrap();
        assert_eq!(s.epoch, 4);
        let offs = img.offsets();
        let run = img.indices(cf::FrameKind::PageRun)[0];
        assert_eq!(img.payload_range(run).start, offs[run] + cf::HEADER_LEN);
        assert_eq!(&bytes[offs[run] + cf::HEADER_LEN..][..4], &[0x5a; 4]);
    }

    #[test]
    fn version_edits_keep_the_header_checksum_right() {
        let mut img = ImageFrames::parse(&sample_image()).unwrap();
        img.set_version(cf::FORMAT_MAJOR + 1, 0);
        let bytes = img.to_bytes().unwrap();
        let view = cf::FrameHeaderView::new_checked(&bytes[..]).unwrap();
        assert_eq!(view.header_checksum(), view.compute_header_checksum());
        assert!(matches!(
            cf::FrameHeader::parse(&view),
            Err(cf::Error::HeaderUnsupportedMajor { found: 2, .. })
        ));
        img.set_version(cf::FORMAT_MAJOR, cf::FORMAT_MINOR + 1);
        let bytes = img.to_bytes().unwrap();
        assert!(matches!(
            cf::FrameHeader::parse_bytes(&bytes),
            Err(cf::Error::HeaderNewerMinor { .. })
        ));
    }

    #[test]
    fn cpu_layout_edit_stays_valid_with_a_fixed_digest() {
        let mut img = ImageFrames::parse(&sample_image()).unwrap();
        img.set_cpu_layout(832, 0x7).unwrap();
        assert_eq!(img.cpu_layout().unwrap(), (832, 0x7));
        img.validate().unwrap();
        let t = img.indices(cf::FrameKind::ThreadState)[0];
        let ts = cf::ThreadState::parse(&img.frames[t].payload).unwrap();
        assert_eq!(ts.xsave.len(), 832);
        assert_eq!(ts.xsave[512..520], 0x7u64.to_le_bytes());
        // Without the re-sealed digest the same edit is refused by the validator.
        let mut stale = ImageFrames::parse(&sample_image()).unwrap();
        let commit = stale.frames.pop().unwrap();
        stale.set_cpu_layout(832, 0x7).unwrap();
        let mut bytes = stale.to_bytes().unwrap();
        bytes.extend_from_slice(
            &cf::FrameHeader::for_payload(commit.kind, &commit.payload).to_bytes(),
        );
        bytes.extend_from_slice(&commit.payload);
        let frames: Vec<cf::Frame<'_>> = cf::frames(&bytes).collect::<Result<_, _>>().unwrap();
        assert!(matches!(
            cf::validate_epoch(&frames),
            Err(cf::Error::ValidateEpochDigest { .. })
        ));
    }

    #[test]
    fn damage_is_reported_with_the_frame_offset() {
        let bytes = sample_image();
        let img = ImageFrames::parse(&bytes).unwrap();
        let run = img.indices(cf::FrameKind::PageRun)[0];
        let bad = flip_byte(&bytes, img.payload_range(run).start + 7);
        match ImageFrames::parse(&bad) {
            Err(EditError::Frame { offset, source }) => {
                assert_eq!(offset, img.offsets()[run]);
                assert!(
                    matches!(source, cf::Error::PayloadBadChecksum { .. }),
                    "{source}"
                );
            }
            other => panic!("flipped page byte accepted: {other:?}"),
        }
    }
}
