//! A read-only, shared-nothing mapping of a whole file (an epoch file), handed out
//! as a byte slice.

use std::fs::File;
use std::os::fd::AsRawFd;

/// Why a file could not be mapped.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("the file is empty")]
    Empty,
    #[error("{0}")]
    Io(std::io::Error),
}

/// A read-only mapping of an image file.
pub struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl std::fmt::Debug for Mapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapped").field("len", &self.len).finish()
    }
}

impl Mapped {
    pub fn new(file: &File) -> Result<Mapped, MapError> {
        let len = file.metadata().map_err(MapError::Io)?.len() as usize;
        if len == 0 {
            return Err(MapError::Empty);
        }
        // SAFETY: a private read-only mapping of a whole regular file we opened; the
        // slice handed out by `bytes` lives as long as `self`.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(MapError::Io(std::io::Error::last_os_error()));
        }
        // Not inherited by a fork: the restorer's namespace init is a fork of the
        // driver that never execs, and must not keep the epoch files mapped (a
        // folder on a mount could then not be unmounted while the program runs).
        // SAFETY: madvise on the mapping just made; failing only leaves it inherited.
        unsafe { libc::madvise(ptr, len, libc::MADV_DONTFORK) };
        Ok(Mapped { ptr, len })
    }

    /// Maps every page of the file in now (`MADV_POPULATE_READ`), so that readers
    /// that go through the kernel (`UFFDIO_COPY`) take no fault per 64 KiB.
    pub fn populate(&self) {
        // SAFETY: madvise on our own live mapping; a failure only costs speed.
        unsafe {
            libc::madvise(self.ptr, self.len, 22 /* MADV_POPULATE_READ */)
        };
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes until drop.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmapping the region we mapped; no slice outlives `self`.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

// SAFETY: the mapping is read-only and owned by this value; `bytes` hands out
// shared slices only.
unsafe impl Send for Mapped {}
// SAFETY: as above: nothing writes through the mapping.
unsafe impl Sync for Mapped {}
