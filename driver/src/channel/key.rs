//! The shared key file: the one secret the primary and the backup both hold.
//!
//! `cs-driver keygen FILE` writes 32 bytes from the kernel's random number generator
//! as text:
//!
//! ```text
//! checksync-key-v1
//! 3f9a…(64 hex digits)
//! ```
//!
//! The file is created with `O_EXCL` (an existing file, or a symlink, is never
//! overwritten) and mode 0600, written, fsynced, and its directory fsynced. Loading
//! refuses a file that group or others may access (the mode is named, with the
//! `chmod` that fixes it), anything that is not a regular file, and any deviation from
//! the format. No error ever quotes the file's content: a mangled key is still a key.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use snow::params::HashChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver};

/// Length of the shared key in bytes (a Noise pre-shared key).
pub const KEY_LEN: usize = 32;

/// First line of a key file; the `v1` names the format, not the channel protocol.
pub const KEY_HEADER: &str = "checksync-key-v1";

/// A well-formed key file is 82 bytes; anything past this is not read.
const MAX_KEY_FILE: u64 = 4096;

/// Mode bits that must be clear: any access by group or others.
const GROUP_OTHER_BITS: u32 = 0o077;

/// The shared secret. `Debug` shows only its fingerprint; the bytes are zeroed on drop
/// (best effort: copies the compiler made are out of reach).
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    bytes: [u8; KEY_LEN],
}

/// What `keygen` wrote, for the command line to report.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub path: PathBuf,
    /// [`Key::fingerprint`] of the new key.
    pub fingerprint: String,
}

impl fmt::Display for KeyInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "wrote a new shared key to {} (mode 0600, fingerprint {}); give the same file to \
             the other side over a secure path",
            self.path.display(),
            self.fingerprint
        )
    }
}

/// Why a key file could not be written or used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path} already exists; refusing to overwrite it (remove it first if a new key is really meant: both sides then need the new file)")]
    Exists { path: PathBuf },
    #[error("cannot create key file {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot write key file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read key file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("key file {path} is not a regular file (it is {kind})")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("key file {path} has mode {mode:04o}: group or others may access it; it must be 0600 or stricter (chmod 600 {path})")]
    InsecureMode { path: PathBuf, mode: u32 },
    #[error("key file {path} is not a CheckSync key: {detail}")]
    Format { path: PathBuf, detail: String },
    #[error("the kernel's random number generator failed: {source}")]
    Random { source: io::Error },
}

impl Key {
    /// A key from raw bytes (tests, or a caller with its own secret store). Refuses
    /// nothing: [`load`] is where untrusted input is checked.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        Key { bytes }
    }

    /// A fresh key from `getrandom(2)`.
    pub fn random() -> Result<Key, KeyError> {
        let mut bytes = [0u8; KEY_LEN];
        fill_random(&mut bytes).map_err(|source| KeyError::Random { source })?;
        Ok(Key { bytes })
    }

    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// 16 hex digits of BLAKE2s over a label and the key: lets an operator check that
    /// both sides hold the same file without showing the key. (64 bits of a
    /// cryptographic hash say nothing usable about the other 192.)
    pub fn fingerprint(&self) -> String {
        // The `use-blake2` feature is enabled in the workspace manifest, so the
        // default resolver always has BLAKE2s.
        let mut hash = DefaultResolver
            .resolve_hash(&HashChoice::Blake2s)
            .expect("snow is built with BLAKE2s (use-blake2)");
        let mut out = [0u8; 32];
        hash.input(b"checksync-key-fingerprint-v1\0");
        hash.input(&self.bytes);
        hash.result(&mut out);
        hex(&out[..8])
    }

    fn to_file_text(&self) -> String {
        format!("{KEY_HEADER}\n{}\n", hex(&self.bytes))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        self.bytes.fill(0);
        std::hint::black_box(&self.bytes);
    }
}

/// Writes a fresh key to `path`: `O_EXCL`, mode 0600, fsynced with its directory.
/// Refuses an existing path. On a failure after creation the partial file is removed,
/// so a retry is not blocked by it.
pub fn generate(path: &Path) -> Result<Key, KeyError> {
    let key = Key::random()?;
    write_new(path, &key)?;
    Ok(key)
}

fn write_new(path: &Path, key: &Key) -> Result<(), KeyError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true) // O_CREAT | O_EXCL: also refuses a dangling symlink
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                KeyError::Exists {
                    path: path.to_owned(),
                }
            } else {
                KeyError::Create {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
    let written = (|| {
        // The umask may have narrowed 0600 (never widened it): make it exactly 0600.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        let mut text = key.to_file_text().into_bytes();
        let result = file.write_all(&text);
        // Best effort: the hex copy of the key does not outlive this call.
        text.fill(0);
        std::hint::black_box(&text);
        result?;
        file.sync_all()?;
        sync_parent(path)
    })();
    if let Err(source) = written {
        let _ = fs::remove_file(path);
        return Err(KeyError::Write {
            path: path.to_owned(),
            source,
        });
    }
    Ok(())
}

fn sync_parent(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Reads and checks a key file.
pub fn load(path: &Path) -> Result<Key, KeyError> {
    let read_err = |source| KeyError::Read {
        path: path.to_owned(),
        source,
    };
    // O_NONBLOCK: opening a FIFO must not hang; it has no effect on a regular file.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(read_err)?;
    // Checked on the open file, not the path: no window for a swap in between.
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(KeyError::NotRegular {
            path: path.to_owned(),
            kind: file_kind(&meta),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & GROUP_OTHER_BITS != 0 {
        return Err(KeyError::InsecureMode {
            path: path.to_owned(),
            mode,
        });
    }
    let mut raw = Vec::with_capacity(128);
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut raw)
        .map_err(read_err)?;
    let parsed = parse(&raw);
    raw.fill(0);
    std::hint::black_box(&raw);
    parsed.map_err(|detail| KeyError::Format {
        path: path.to_owned(),
        detail,
    })
}

fn file_kind(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// Parses the file text. Errors describe the shape, never the content.
fn parse(raw: &[u8]) -> Result<Key, String> {
    if raw.is_empty() {
        return Err("the file is empty".into());
    }
    if raw.len() as u64 > MAX_KEY_FILE {
        return Err(format!(
            "the file is larger than {MAX_KEY_FILE} bytes (a key file is {} bytes)",
            KEY_HEADER.len() + 2 * KEY_LEN + 2
        ));
    }
    let text = std::str::from_utf8(raw).map_err(|_| "the file is not text".to_string())?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    if header != KEY_HEADER {
        return Err(if header.starts_with("checksync-key-") {
            format!("unsupported key format on line 1 (this build reads `{KEY_HEADER}`)")
        } else {
            format!("line 1 is not `{KEY_HEADER}`")
        });
    }
    let hexline = lines
        .next()
        .ok_or_else(|| "line 2 (the key) is missing".to_string())?;
    if hexline.len() != 2 * KEY_LEN {
        return Err(format!(
            "line 2 has {} characters; a key is {} hex digits ({KEY_LEN} bytes)",
            hexline.len(),
            2 * KEY_LEN
        ));
    }
    let mut bytes = [0u8; KEY_LEN];
    let digit = |col: usize| {
        (hexline.as_bytes()[col] as char)
            .to_digit(16)
            .ok_or_else(|| format!("line 2 has a non-hex character at column {}", col + 1))
    };
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = (digit(2 * i)? * 16 + digit(2 * i + 1)?) as u8;
    }
    if let Some((n, _)) = lines.enumerate().find(|(_, l)| !l.trim().is_empty()) {
        return Err(format!(
            "unexpected content on line {} after the key",
            n + 3
        ));
    }
    if bytes.iter().all(|&b| b == 0) {
        return Err("the key is all zeros (not a generated key)".into());
    }
    Ok(Key { bytes })
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Fills `buf` from `getrandom(2)` (blocking until the kernel pool is initialised,
/// which it is long before anything runs CheckSync).
fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a live, exclusively borrowed buffer of `rest.len()` bytes;
        // getrandom writes at most that many bytes into it and keeps no pointer.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        done += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh empty directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(PathBuf);
    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "cs-key-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn write_mode(path: &Path, content: &[u8], mode: u32) {
        fs::write(path, content).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn generate_writes_0600_text_that_loads_back() {
        let dir = TempDir::new("gen");
        let path = dir.path().join("key");
        let key = generate(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(KEY_HEADER));
        let hexline = lines.next().unwrap();
        assert_eq!(hexline, hex(key.as_bytes()));
        assert_eq!(lines.next(), None);
        assert_eq!(load(&path).unwrap(), key);
        // Two keys differ (32 random bytes), and so do their fingerprints.
        let other = generate(&dir.path().join("key2")).unwrap();
        assert_ne!(other, key);
        assert_ne!(other.fingerprint(), key.fingerprint());
        assert_eq!(key.fingerprint().len(), 16);
        assert!(!format!("{key:?}").contains(hexline));
    }

    #[test]
    fn generate_refuses_an_existing_file_and_leaves_it_alone() {
        let dir = TempDir::new("excl");
        let path = dir.path().join("key");
        let first = generate(&path).unwrap();
        let before = fs::read(&path).unwrap();
        let err = generate(&path).unwrap_err();
        assert!(matches!(err, KeyError::Exists { .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()));
        assert_eq!(fs::read(&path).unwrap(), before);
        assert_eq!(load(&path).unwrap(), first);
        // A dangling symlink is not followed either.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &link).unwrap();
        assert!(matches!(
            generate(&link).unwrap_err(),
            KeyError::Exists { .. }
        ));
        assert!(!dir.path().join("elsewhere").exists());
    }

    #[test]
    fn keygen_info_names_path_and_fingerprint() {
        let dir = TempDir::new("info");
        let path = dir.path().join("k");
        let info = crate::channel::keygen_command(&path).unwrap();
        assert_eq!(info.fingerprint, load(&path).unwrap().fingerprint());
        let shown = info.to_string();
        assert!(shown.contains(&path.display().to_string()) && shown.contains(&info.fingerprint));
    }

    #[test]
    fn load_refuses_group_or_other_access_and_names_the_mode() {
        let dir = TempDir::new("mode");
        let path = dir.path().join("key");
        generate(&path).unwrap();
        for mode in [0o640, 0o604, 0o620, 0o601, 0o644] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = load(&path).unwrap_err();
            match &err {
                KeyError::InsecureMode { mode: m, .. } => assert_eq!(*m, mode),
                other => panic!("mode {mode:o}: {other}"),
            }
            let msg = err.to_string();
            assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        load(&path).unwrap();
    }

    #[test]
    fn load_refuses_corrupt_files_without_quoting_them() {
        let dir = TempDir::new("corrupt");
        let good = Key::from_bytes([0xab; KEY_LEN]).to_file_text();
        let hexkey = "ab".repeat(KEY_LEN);
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", vec![], "empty"),
            ("no header", format!("{hexkey}\n").into_bytes(), "line 1"),
            (
                "future format",
                format!("checksync-key-v2\n{hexkey}\n").into_bytes(),
                "unsupported key format",
            ),
            (
                "header only",
                format!("{KEY_HEADER}\n").into_bytes(),
                "missing",
            ),
            (
                "short",
                format!("{KEY_HEADER}\n{}\n", &hexkey[..62]).into_bytes(),
                "62 characters",
            ),
            (
                "long",
                format!("{KEY_HEADER}\n{hexkey}00\n").into_bytes(),
                "66 characters",
            ),
            (
                "non-hex",
                format!("{KEY_HEADER}\n{}zb\n", &hexkey[..62]).into_bytes(),
                "column 63",
            ),
            ("trailing", format!("{good}more\n").into_bytes(), "line 3"),
            (
                "zeros",
                format!("{KEY_HEADER}\n{}\n", "0".repeat(64)).into_bytes(),
                "all zeros",
            ),
            ("binary", vec![0xff; 82], "not text"),
            ("huge", vec![b'a'; 5000], "larger than"),
        ];
        for (name, content, want) in cases {
            let path = dir.path().join(name);
            write_mode(&path, &content, 0o600);
            let err = load(&path).unwrap_err();
            assert!(matches!(err, KeyError::Format { .. }), "{name}: {err}");
            let msg = err.to_string();
            assert!(msg.contains(want), "{name}: {msg}");
            assert!(msg.contains(&path.display().to_string()), "{name}: {msg}");
            assert!(!msg.contains(&hexkey[..16]), "{name} quotes the key: {msg}");
        }
        // The good text loads; trailing blank lines and CRLF are tolerated.
        let path = dir.path().join("good");
        write_mode(&path, format!("{good}\n").as_bytes(), 0o600);
        assert_eq!(load(&path).unwrap(), Key::from_bytes([0xab; KEY_LEN]));
        write_mode(&path, good.replace('\n', "\r\n").as_bytes(), 0o600);
        assert_eq!(load(&path).unwrap(), Key::from_bytes([0xab; KEY_LEN]));
    }

    #[test]
    fn load_refuses_non_regular_and_missing_files() {
        let dir = TempDir::new("kind");
        let err = load(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                KeyError::NotRegular {
                    kind: "a directory",
                    ..
                }
            ),
            "{err}"
        );
        let err = load(&dir.path().join("absent")).unwrap_err();
        assert!(matches!(err, KeyError::Read { .. }), "{err}");
        assert!(err.to_string().contains("absent"));
    }
}
