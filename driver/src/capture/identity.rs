//! The identity of the files a program maps: read before the freeze, written to the
//! image (`MappedFiles`), checked by the restorer before it starts anything.
//!
//! Each distinct mapped file is described by `st_dev`, `st_ino`, `st_size` and
//! `st_mtime` of the file *the process has mapped* (through
//! `/proc/PID/map_files/START-END`, so a path that was replaced since the program
//! mapped it is noticed at dump time already). Files mapped executable (the
//! program's code: its executable, shared libraries) are also hashed whole
//! (XXH3-128), so a same-size patch whose mtime was put back is caught too. The
//! hash is computed while the program runs, never inside the pause.

use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::capture::{Vma, VmaKind};
use crate::error::CaptureError;
use crate::linux::procfs::MapEntry;

/// What is recorded about one mapped file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileIdentity {
    /// Path as `/proc/PID/maps` shows it (the restorer opens it by this path).
    pub path: Vec<u8>,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// XXH3-128 of the whole file (little-endian bytes), for files mapped executable.
    pub hash: Option<[u8; 16]>,
}

fn of_metadata(path: &[u8], m: &std::fs::Metadata) -> FileIdentity {
    FileIdentity {
        path: path.to_vec(),
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_sec: m.mtime(),
        mtime_nsec: m.mtime_nsec().clamp(0, 999_999_999) as u32,
        hash: None,
    }
}

/// XXH3-128 of everything readable from `f`.
pub fn hash_file(f: &mut File) -> std::io::Result<[u8; 16]> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
    }
    Ok(h.digest128().to_le_bytes())
}

/// Reads the identity of every file `maps` (read before the freeze) shows mapped,
/// sorted by path. Files mapped executable are hashed.
pub fn read_mapped(pid: i32, maps: &[MapEntry]) -> Result<Vec<FileIdentity>, CaptureError> {
    let mut out: Vec<FileIdentity> = Vec::new();
    for m in maps.iter().filter(|m| m.name.starts_with('/')) {
        let path = m.name.as_bytes();
        let hash_it = m.exec;
        // A path seen before is read again only if this mapping is the first
        // executable one (the hash is wanted).
        if let Some(known) = out.iter().find(|f| f.path == path) {
            if !hash_it || known.hash.is_some() {
                continue;
            }
        }
        // The mapped file itself, even if its path now names another one.
        let link = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
        let opened = File::open(&link).or_else(|_| File::open(Path::new(&m.name)));
        let mut f = opened.map_err(|e| CaptureError::ProcIo {
            path: format!("{} (mapped at {:#x})", m.name, m.start),
            source: e,
        })?;
        let meta = f.metadata().map_err(|e| CaptureError::ProcIo {
            path: m.name.clone(),
            source: e,
        })?;
        let mut id = of_metadata(path, &meta);
        if hash_it {
            id.hash = Some(hash_file(&mut f).map_err(|e| CaptureError::ProcIo {
                path: format!("{} (hashing it)", m.name),
                source: e,
            })?);
        }
        out.retain(|f| f.path != path);
        out.push(id);
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Adds an entry (stat by path, no hash) for every file-backed VMA that `before`
/// lacks: a file the program mapped between the first read and the freeze. Runs
/// after the pause.
pub fn complete(mut before: Vec<FileIdentity>, vmas: &[Vma]) -> Vec<FileIdentity> {
    for v in vmas {
        let VmaKind::File { path, .. } = &v.kind else {
            continue;
        };
        if before.iter().any(|f| &f.path == path) {
            continue;
        }
        if let Ok(meta) = std::fs::metadata(std::ffi::OsStr::from_bytes(path)) {
            before.push(of_metadata(path, &meta));
        }
    }
    before.sort_by(|a, b| a.path.cmp(&b.path));
    before.dedup_by(|a, b| a.path == b.path);
    before
}

/// One mapped file that is not what the image recorded.
#[derive(Debug)]
pub struct Mismatch {
    pub path: String,
    /// What differs, e.g. `size 123 -> 456, content hash differs`.
    pub detail: String,
}

fn show_time(sec: i64, nsec: u32) -> String {
    format!("{sec}.{nsec:09}")
}

/// Compares the file at `want.path` now with the recorded identity; returns what
/// differs (empty if nothing does), or the error opening it.
pub fn differences(want: &FileIdentity) -> std::io::Result<Vec<String>> {
    let p = Path::new(std::ffi::OsStr::from_bytes(&want.path));
    let mut f = File::open(p)?;
    let meta = f.metadata()?;
    let now = of_metadata(&want.path, &meta);
    let mut d = Vec::new();
    if now.dev != want.dev || now.ino != want.ino {
        d.push(format!(
            "another file (device {:#x} inode {} -> device {:#x} inode {})",
            want.dev, want.ino, now.dev, now.ino
        ));
    }
    if now.size != want.size {
        d.push(format!("size {} -> {} bytes", want.size, now.size));
    }
    if (now.mtime_sec, now.mtime_nsec) != (want.mtime_sec, want.mtime_nsec) {
        d.push(format!(
            "mtime {} -> {}",
            show_time(want.mtime_sec, want.mtime_nsec),
            show_time(now.mtime_sec, now.mtime_nsec)
        ));
    }
    if let Some(h) = want.hash {
        if hash_file(&mut f)? != h {
            d.push("content differs (XXH3-128 of the whole file)".into());
        }
    }
    Ok(d)
}

/// Checks every file the image maps against its recorded identity. A file-backed
/// VMA whose path has no recorded identity is refused too.
pub fn check_all(ids: &[FileIdentity], vmas: &[Vma]) -> Result<(), Mismatch> {
    let mut paths: Vec<&Vec<u8>> = vmas
        .iter()
        .filter_map(|v| match &v.kind {
            VmaKind::File { path, .. } => Some(path),
            _ => None,
        })
        .collect();
    paths.sort();
    paths.dedup();
    for path in paths {
        let shown = String::from_utf8_lossy(path).into_owned();
        let Some(want) = ids.iter().find(|f| &f.path == path) else {
            return Err(Mismatch {
                path: shown,
                detail: "the image records no identity for this mapped file".into(),
            });
        };
        match differences(want) {
            Ok(d) if d.is_empty() => {}
            Ok(d) => {
                return Err(Mismatch {
                    path: shown,
                    detail: d.join(", "),
                })
            }
            Err(e) => {
                return Err(Mismatch {
                    path: shown,
                    detail: format!("cannot be opened: {e}"),
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_described() {
        let dir = std::env::temp_dir().join(format!("cs-ident-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        std::fs::write(&p, b"hello world").unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        let path = p.as_os_str().as_bytes().to_vec();
        let mut id = of_metadata(&path, &meta);
        id.hash = Some(hash_file(&mut File::open(&p).unwrap()).unwrap());
        assert!(differences(&id).unwrap().is_empty());
        // Same size and mtime, other content.
        let t = meta.modified().unwrap();
        std::fs::write(&p, b"hello World").unwrap();
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(t)
            .unwrap();
        let d = differences(&id).unwrap();
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].contains("content"), "{d:?}");
        std::fs::write(&p, b"longer than before").unwrap();
        let d = differences(&id).unwrap().join(", ");
        assert!(d.contains("size 11 -> 18"), "{d}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
