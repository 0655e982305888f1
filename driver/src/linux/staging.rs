//! The staging buffer the pause copies pages into.
//!
//! First touches of fresh anonymous memory cost 1.3-2 us per 4 KiB page here
//! (DESIGN.md, probes/fault_bench), so a buffer faulted in during the pause would
//! cost more than the copy itself. [`Staging::prefaulted`] maps and populates the
//! buffer *before* the freeze, sized from smaps' Rss, with transparent huge pages
//! requested (`MADV_HUGEPAGE`, then `MADV_POPULATE_WRITE`); during the pause the copy
//! only writes into memory that is already there.
//!
//! # Safety
//! The buffer is a private anonymous mapping owned by this value: `ptr..ptr+cap` is
//! mapped read-write for its whole life, and only `..len` is handed out as a slice.

use std::io;

#[derive(Debug)]
pub struct Staging {
    ptr: *mut u8,
    cap: usize,
    len: usize,
}

// SAFETY: the mapping is owned exclusively by this value (see the module docs).
unsafe impl Send for Staging {}
// SAFETY: shared access only reads (`as_slice`); every mutation takes `&mut self`.
unsafe impl Sync for Staging {}

const MADV_POPULATE_WRITE: i32 = 23;

fn map(cap: usize) -> io::Result<*mut u8> {
    // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            cap,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p as *mut u8)
}

fn populate(ptr: *mut u8, len: usize) {
    if len == 0 {
        return;
    }
    // SAFETY: madvise on our own mapping; failures only cost speed.
    unsafe {
        libc::madvise(ptr as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        libc::madvise(ptr as *mut libc::c_void, len, MADV_POPULATE_WRITE);
    }
}

impl Staging {
    /// An empty buffer of `cap` bytes, already faulted in.
    pub fn prefaulted(cap: usize) -> io::Result<Staging> {
        let cap = cap.max(4096).next_multiple_of(2 << 20);
        let ptr = map(cap)?;
        populate(ptr, cap);
        Ok(Staging { ptr, cap, len: 0 })
    }

    /// Bytes mapped (and faulted in) behind the buffer.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Makes the buffer `len` bytes long, growing (and faulting in) if it must.
    pub fn set_len(&mut self, len: usize) -> io::Result<()> {
        if len > self.cap {
            let cap = len.next_multiple_of(2 << 20);
            // SAFETY: mremap of our own mapping; MAYMOVE updates `ptr` below and no
            // slice of the old address is alive (we hold `&mut self`).
            let p = unsafe {
                libc::mremap(
                    self.ptr as *mut libc::c_void,
                    self.cap,
                    cap,
                    libc::MREMAP_MAYMOVE,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            self.ptr = p as *mut u8;
            self.cap = cap;
        }
        self.len = len;
        Ok(())
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `..len` lies inside the live mapping (module docs).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above; `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl std::ops::Deref for Staging {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; no slice outlives `self`.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.cap) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_keeps_contents() {
        let mut s = Staging::prefaulted(8192).unwrap();
        s.set_len(4096).unwrap();
        s.as_mut_slice()[4095] = 7;
        s.set_len(8 << 20).unwrap();
        assert_eq!(s[4095], 7);
        assert_eq!(s.len(), 8 << 20);
    }
}
