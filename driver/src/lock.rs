//! One driver per program: an advisory lock taken before a driver changes
//! anything in a program, and held until it is done with it.
//!
//! Two drivers on one program corrupt each other silently: the second one's
//! write-protect tracker or freeze sees the first one's state (a tracker that
//! already cleared the written bits, threads already stopped by another tracer)
//! and produces an image with most pages missing. So every `dump` takes an
//! exclusive `flock` on a file named after the program's pid *and start time*
//! (a reused pid is another program), and so does a `restore` while it still
//! fills the program's memory lazily: a dump during the fill would read the pages
//! not yet filled as absent.
//!
//! The kernel drops the lock when its holder dies, so a killed driver never
//! leaves a program locked. The file says who holds it (driver pid and role) for
//! the error message. A dump that finds a lazy fill waits for it (a fill ends on
//! its own within seconds); one that finds another dump refuses.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What the holder of a program's lock is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A `dump` (pre-copy, freeze, capture, image write).
    Dump,
    /// A `restore` whose lazy page fill still runs.
    Fill,
}

impl Role {
    fn word(self) -> &'static str {
        match self {
            Role::Dump => "dump",
            Role::Fill => "fill",
        }
    }
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("process {pid} is being {what} by cs-driver pid {holder}; one driver at a time may work on a program")]
    Busy {
        pid: i32,
        holder: i32,
        what: &'static str,
    },
    #[error("process {pid}'s memory is still being filled by cs-driver pid {holder} (a lazy restore) after {waited:?}")]
    FillTooLong {
        pid: i32,
        holder: i32,
        waited: Duration,
    },
    #[error("lock file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("process {pid}: {detail}")]
    Proc { pid: i32, detail: String },
}

/// Where lock files live: `$CS_LOCK_DIR`, else `/run/checksync` (root), else a
/// per-user folder in the temporary directory.
pub fn lock_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CS_LOCK_DIR") {
        return PathBuf::from(d);
    }
    let uid = crate::linux::sys::euid();
    if uid == 0 {
        PathBuf::from("/run/checksync")
    } else {
        std::env::temp_dir().join(format!("checksync-{uid}"))
    }
}

/// The program's start time in clock ticks since boot (`/proc/PID/stat` field 22):
/// with the pid, it names one program for the machine's uptime.
pub fn start_time(pid: i32) -> Result<u64, LockError> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| LockError::Proc {
        pid,
        detail: format!("cannot read {path}: {e}"),
    })?;
    // Fields after the command name, which is in parentheses and may hold anything.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    // rest starts at field 3 (state); field 22 is index 19 of it.
    rest.split_whitespace()
        .nth(19)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| LockError::Proc {
            pid,
            detail: format!("{path} has no start time"),
        })
}

/// An exclusive claim on one program, released (and its file removed) on drop or
/// when the holding driver dies.
#[derive(Debug)]
pub struct ProgramLock {
    _file: File,
    path: PathBuf,
}

/// How long a dump waits for a restore's lazy fill to end.
pub const FILL_WAIT: Duration = Duration::from_secs(120);

impl ProgramLock {
    /// Takes the lock on `pid` for `role`. Another dump: [`LockError::Busy`]. A
    /// lazy fill: waits up to `fill_wait` for it (calling `waiting` once), then
    /// [`LockError::FillTooLong`].
    pub fn acquire(
        pid: i32,
        role: Role,
        fill_wait: Duration,
        waiting: &mut dyn FnMut(i32),
    ) -> Result<ProgramLock, LockError> {
        Self::acquire_in(&lock_dir(), pid, role, fill_wait, waiting)
    }

    /// [`ProgramLock::acquire`] with the lock files in `dir`.
    pub fn acquire_in(
        dir: &std::path::Path,
        pid: i32,
        role: Role,
        fill_wait: Duration,
        waiting: &mut dyn FnMut(i32),
    ) -> Result<ProgramLock, LockError> {
        let io = |path: &std::path::Path| {
            let path = path.display().to_string();
            move |source| LockError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(format!("{pid}-{}.lock", start_time(pid)?));
        let started = Instant::now();
        let mut told = false;
        loop {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
                .map_err(io(&path))?;
            // SAFETY: flock(2) on a descriptor this function owns.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                // The holder before us may have removed the file after we opened
                // it: then our lock is on a name nobody else can find. Retry.
                let ours = file.metadata().map_err(io(&path))?.ino();
                match std::fs::metadata(&path) {
                    Ok(m) if m.ino() == ours => {}
                    _ => continue,
                }
                file.set_len(0).map_err(io(&path))?;
                file.rewind().map_err(io(&path))?;
                writeln!(file, "{} {}", std::process::id(), role.word()).map_err(io(&path))?;
                return Ok(ProgramLock { _file: file, path });
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(&path)(err));
            }
            let (holder, what) = read_holder(&mut file);
            if what == Role::Fill.word() && role == Role::Dump {
                if started.elapsed() >= fill_wait {
                    return Err(LockError::FillTooLong {
                        pid,
                        holder,
                        waited: started.elapsed(),
                    });
                }
                if !told {
                    told = true;
                    waiting(holder);
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            return Err(LockError::Busy {
                pid,
                holder,
                what: if what == Role::Fill.word() {
                    "restored (its memory is still being filled)"
                } else {
                    "dumped"
                },
            });
        }
    }

    /// The lock file (for tests and messages).
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

fn read_holder(file: &mut File) -> (i32, String) {
    let mut s = String::new();
    let _ = file.rewind();
    let _ = file.read_to_string(&mut s);
    let mut it = s.split_whitespace();
    let pid = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (pid, it.next().unwrap_or("dump").to_string())
}

impl Drop for ProgramLock {
    fn drop(&mut self) {
        // Removed while still held, so that a waiter that opened it retries on a
        // fresh file (see the inode check in `acquire`); the lock goes with the fd.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_dump_is_refused_and_a_fill_is_waited_for() {
        let dir = std::env::temp_dir().join(format!("cs-lock-test-{}", std::process::id()));
        let me = std::process::id() as i32;
        let acquire = |role, wait, waiting: &mut dyn FnMut(i32)| {
            ProgramLock::acquire_in(&dir, me, role, wait, waiting)
        };
        let first = acquire(Role::Dump, FILL_WAIT, &mut |_| {}).unwrap();
        let err = acquire(Role::Dump, FILL_WAIT, &mut |_| {}).unwrap_err();
        assert!(
            matches!(err, LockError::Busy { holder, .. } if holder == me),
            "{err}"
        );
        drop(first);
        let fill = acquire(Role::Fill, FILL_WAIT, &mut |_| {}).unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(fill);
        });
        let mut waited = false;
        let dump = acquire(Role::Dump, FILL_WAIT, &mut |_| waited = true);
        t.join().unwrap();
        assert!(dump.is_ok() && waited);
        let again = acquire(Role::Fill, Duration::ZERO, &mut |_| {});
        assert!(matches!(again, Err(LockError::Busy { .. })));
        drop(dump);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
