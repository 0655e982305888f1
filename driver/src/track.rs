//! Write tracking of another process's memory: a userfaultfd in write-protect
//! mode with `UFFD_FEATURE_WP_ASYNC`, read through `PAGEMAP_SCAN` (Linux >= 6.7).
//!
//! The uffd must be created *inside* the target (it binds to the caller's mm), so
//! [`Tracker::create`] stops the process briefly, injects `userfaultfd()`, pulls the
//! new fd out with `pidfd_getfd`, and injects `close()` on the target's copy. From
//! then on the driver works on its own copy: `UFFDIO_REGISTER` and
//! `UFFDIO_WRITEPROTECT` act on the target's mm while it runs. With `WP_ASYNC` the
//! kernel resolves a write to a protected page itself (no fault message, ~1 us per
//! page once) and the page's PTE loses its uffd-wp bit, which `PAGEMAP_SCAN`
//! reports as `PAGE_IS_WRITTEN`.
//!
//! What the capture relies on (tested below on the running kernel): a page that is
//! present, in a write-protect-registered VMA (`PAGE_IS_WPALLOWED`) and not
//! `PAGE_IS_WRITTEN` holds the bytes it held when it was protected, or was not
//! present then. A page dropped by `MADV_DONTNEED` and faulted back by a read comes
//! back as written (anonymous zaps keep no marker), so it is copied again.
//!
//! Dropping the last reference to the uffd unregisters every range: the tracker
//! holds it for as long as tracking is wanted.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::error::CaptureError;
use crate::freeze::Frozen;
use crate::inject::{self, Injector};
use crate::sys;

pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PAGE_IS_FILE: u64 = 1 << 2;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;

const SYS_CLOSE: u64 = 3;
const SYS_USERFAULTFD: u64 = 323;
const UFFD_USER_MODE_ONLY: u64 = 1;

/// `PAGEMAP_SCAN` result: `[start, end)` with the categories asked for in `return_mask`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioWriteprotect {
    start: u64,
    len: u64,
    mode: u64,
}

// _IOWR(type, nr, size) = 3 << 30 | size << 16 | type << 8 | nr
pub(crate) const fn iowr(ty: u64, nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (ty << 8) | nr
}
const PAGEMAP_SCAN: u64 = iowr(b'f' as u64, 16, std::mem::size_of::<PmScanArg>());
const UFFDIO_API: u64 = iowr(0xaa, 0x3f, std::mem::size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = iowr(0xaa, 0x00, std::mem::size_of::<UffdioRegister>());
const UFFDIO_WRITEPROTECT: u64 = iowr(0xaa, 0x06, std::mem::size_of::<UffdioWriteprotect>());
static_assertions::const_assert_eq!(PAGEMAP_SCAN, 0xc060_6610);
static_assertions::const_assert_eq!(UFFDIO_API, 0xc018_aa3f);
static_assertions::const_assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
static_assertions::const_assert_eq!(UFFDIO_WRITEPROTECT, 0xc018_aa06);

const UFFD_API: u64 = 0xaa;
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;

pub(crate) fn ioctl<T>(fd: RawFd, req: u64, arg: &mut T) -> std::io::Result<i64> {
    // SAFETY: `arg` is a live, correctly sized `#[repr(C)]` value of the type the
    // request `req` is defined with (the numbers are pinned above); the kernel reads
    // and writes only that value and, for PAGEMAP_SCAN, the vector it points to,
    // which the caller keeps alive for the call.
    let rc = unsafe { libc::ioctl(fd, req as libc::c_ulong, arg as *mut T) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc as i64)
    }
}

/// Which pages a scan returns: after XOR with `inverted`, a page must have every bit
/// of `all` and (if non-zero) one bit of `any`; results carry `categories & ret`.
#[derive(Clone, Copy, Debug)]
pub struct Query {
    pub inverted: u64,
    pub all: u64,
    pub any: u64,
    pub ret: u64,
}

impl Query {
    /// The pages an image stores: present or swapped, and not an unmodified page
    /// of a file's page cache (a private file mapping's pages that were never
    /// written are the file's).
    pub fn stored(ret: u64) -> Query {
        Query {
            inverted: PAGE_IS_FILE,
            all: PAGE_IS_FILE,
            any: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            ret,
        }
    }
}

/// Runs `PAGEMAP_SCAN` over `[start, end)` of the mm behind `pagemap` and appends
/// the regions. Continues only when the vector came back full (`walk_end` is only
/// advanced then; DESIGN.md).
pub fn scan(
    pagemap: &File,
    start: u64,
    end: u64,
    q: Query,
    out: &mut Vec<PageRegion>,
) -> std::io::Result<()> {
    let mut vec = vec![PageRegion::default(); 4096];
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        start,
        end,
        vec: vec.as_mut_ptr() as u64,
        vec_len: vec.len() as u64,
        category_inverted: q.inverted,
        category_mask: q.all,
        category_anyof_mask: q.any,
        return_mask: q.ret,
        ..Default::default()
    };
    loop {
        let n = ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg)? as usize;
        out.extend_from_slice(&vec[..n.min(vec.len())]);
        if n < vec.len() || arg.walk_end >= end {
            return Ok(());
        }
        arg.start = arg.walk_end;
    }
}

/// A userfaultfd living in the target's mm, held by the driver.
#[derive(Debug)]
pub struct Tracker {
    uffd: OwnedFd,
    pub pagemap: File,
    /// Ranges registered and write-protected, in address order.
    pub protected: Vec<(u64, u64)>,
}

impl Tracker {
    /// Creates the uffd inside `pid` (a short stop of the whole process) and
    /// enables asynchronous write-protect tracking.
    pub fn create(
        pid: i32,
        pidfd: RawFd,
        vdso: Option<(u64, u64)>,
    ) -> Result<Tracker, CaptureError> {
        let pagemap_path = format!("/proc/{pid}/pagemap");
        let pagemap = File::open(&pagemap_path).map_err(|e| CaptureError::ProcIo {
            path: pagemap_path,
            source: e,
        })?;
        let injector = Injector::new(pid, vdso)?;
        let frozen = Frozen::freeze(pid)?;
        let tid = *frozen
            .tids
            .first()
            .ok_or(CaptureError::ProcessGone { pid })?;
        let regs = sys::ptrace_getregs(tid)
            .map_err(CaptureError::ptrace("GETREGSET(NT_PRSTATUS)", tid))?;
        let regs = inject::normalized(&regs, inject::restart_kind(&regs));
        let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64 | UFFD_USER_MODE_ONLY;
        let fd = injector.syscall(tid, &regs, SYS_USERFAULTFD, [flags, 0, 0, 0, 0, 0])?;
        if fd < 0 {
            frozen.resume();
            inject::redeliver_deferred(pid);
            return Err(CaptureError::Inject {
                tid,
                nr: SYS_USERFAULTFD,
                detail: format!("userfaultfd: errno {}", -fd),
            });
        }
        let ours = sys::pidfd_getfd(pidfd, fd as i32);
        let rc = injector.syscall(tid, &regs, SYS_CLOSE, [fd as u64, 0, 0, 0, 0, 0])?;
        frozen.resume();
        inject::redeliver_deferred(pid);
        let uffd = ours.map_err(|e| CaptureError::Fd {
            pid,
            fd: fd as i32,
            detail: format!("pidfd_getfd of the injected userfaultfd: {e}"),
        })?;
        if rc < 0 {
            return Err(CaptureError::Inject {
                tid,
                nr: SYS_CLOSE,
                detail: format!("close of the injected userfaultfd {fd}: errno {}", -rc),
            });
        }
        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED,
            ioctls: 0,
        };
        ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut api).map_err(|e| CaptureError::Fd {
            pid,
            fd: fd as i32,
            detail: format!("UFFDIO_API with WP_ASYNC | WP_UNPOPULATED: {e}"),
        })?;
        Ok(Tracker {
            uffd,
            pagemap,
            protected: Vec::new(),
        })
    }

    /// Registers `[start, end)` for write-protect tracking and protects it. A range
    /// the kernel refuses (a kind uffd cannot track, or a mapping that changed since
    /// it was listed) is left out and reported as `false`: its pages are then
    /// copied during the pause.
    pub fn protect(&mut self, start: u64, end: u64) -> bool {
        let fd = self.uffd.as_raw_fd();
        let mut reg = UffdioRegister {
            start,
            len: end - start,
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        if ioctl(fd, UFFDIO_REGISTER, &mut reg).is_err() {
            return false;
        }
        let mut wp = UffdioWriteprotect {
            start,
            len: end - start,
            mode: UFFDIO_WRITEPROTECT_MODE_WP,
        };
        if ioctl(fd, UFFDIO_WRITEPROTECT, &mut wp).is_err() {
            return false;
        }
        self.protected.push((start, end));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tracker on this test process's own mm (no injection needed).
    fn own_tracker() -> Tracker {
        let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64 | UFFD_USER_MODE_ONLY;
        // SAFETY: userfaultfd takes one integer and returns a new fd or -1.
        let fd = unsafe { libc::syscall(SYS_USERFAULTFD as libc::c_long, flags) };
        assert!(
            fd >= 0,
            "userfaultfd() failed: {} (the tests need root or vm.unprivileged_userfaultfd=1)",
            std::io::Error::last_os_error()
        );
        // SAFETY: the kernel just returned this fd; nothing else owns it.
        let uffd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as RawFd) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED,
            ioctls: 0,
        };
        ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut api).expect("UFFDIO_API (kernel >= 6.7)");
        Tracker {
            uffd,
            pagemap: File::open("/proc/self/pagemap").expect("pagemap"),
            protected: Vec::new(),
        }
    }

    fn categories(t: &Tracker, base: u64, pages: usize) -> Vec<u64> {
        let mut out = Vec::new();
        let q = Query {
            inverted: 0,
            all: 0,
            any: 0,
            ret: PAGE_IS_PRESENT | PAGE_IS_WRITTEN | PAGE_IS_WPALLOWED,
        };
        scan(&t.pagemap, base, base + pages as u64 * 4096, q, &mut out).expect("PAGEMAP_SCAN");
        let mut per = vec![0u64; pages];
        for r in out {
            for a in (r.start..r.end).step_by(4096) {
                per[((a - base) / 4096) as usize] = r.categories;
            }
        }
        per
    }

    /// The facts the pre-copy relies on, checked on the running kernel.
    #[test]
    fn write_protect_tracking_reports_what_changed() {
        let pages = 8usize;
        let len = pages * 4096;
        // SAFETY: a fresh private anonymous mapping owned by this test.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let base = p as u64;
        // SAFETY: `p..p+len` is the mapping made above, alive until the munmap below.
        let mem = unsafe { std::slice::from_raw_parts_mut(p as *mut u8, len) };
        for i in 0..6 {
            mem[i * 4096] = 1 + i as u8; // pages 0..6 present, 6 and 7 never touched
        }
        let mut t = own_tracker();
        assert!(t.protect(base, base + len as u64), "register + protect");
        let c = categories(&t, base, pages);
        for (i, c) in c.iter().enumerate().take(6) {
            assert_eq!(
                *c,
                PAGE_IS_PRESENT | PAGE_IS_WPALLOWED,
                "page {i} right after protect"
            );
        }
        mem[4096] = 9; // page 1 written
                       // SAFETY: page 2 lies in our mapping; MADV_DONTNEED drops it.
        let rc = unsafe {
            libc::madvise(
                (base + 2 * 4096) as *mut libc::c_void,
                4096,
                libc::MADV_DONTNEED,
            )
        };
        assert_eq!(rc, 0);
        // SAFETY: reading our own mapped memory (volatile: the read must fault).
        let back = unsafe { std::ptr::read_volatile(mem.as_ptr().add(2 * 4096)) };
        assert_eq!(back, 0, "a dropped anonymous page reads back as zero");
        // SAFETY: as above, page 6 was never touched.
        let fresh = unsafe { std::ptr::read_volatile(mem.as_ptr().add(6 * 4096)) };
        assert_eq!(fresh, 0);
        mem[7 * 4096] = 5; // a first write to a never-touched page
        let c = categories(&t, base, pages);
        assert_eq!(c[0], PAGE_IS_PRESENT | PAGE_IS_WPALLOWED, "untouched page");
        assert_ne!(c[1] & PAGE_IS_WRITTEN, 0, "a written page is reported");
        assert!(
            c[2] & PAGE_IS_PRESENT == 0 || c[2] & PAGE_IS_WRITTEN != 0,
            "a page dropped and read back must not look unchanged: {:#x}",
            c[2]
        );
        assert_ne!(c[7] & PAGE_IS_WRITTEN, 0, "first write to a new page");
        // Page 6 (read-faulted after the protect) may look unwritten: the capture
        // copies any present page it did not stage, so it is still right.
        drop(t);
        // SAFETY: unmapping the mapping made above; `mem` is not used after this.
        unsafe { libc::munmap(p, len) };
    }

    #[test]
    fn the_stored_query_skips_clean_file_pages() {
        let t = own_tracker();
        // The test binary's text: a private file mapping whose pages are the file's.
        let here = the_stored_query_skips_clean_file_pages as *const () as u64 & !4095;
        let mut out = Vec::new();
        scan(
            &t.pagemap,
            here,
            here + 4096,
            Query::stored(PAGE_IS_PRESENT),
            &mut out,
        )
        .expect("scan");
        assert!(out.is_empty(), "{out:?}");
        let q = Query {
            ret: PAGE_IS_PRESENT | PAGE_IS_FILE,
            ..Query::stored(0)
        };
        let mut out = Vec::new();
        let q = Query {
            inverted: 0,
            all: PAGE_IS_PRESENT,
            any: 0,
            ..q
        };
        scan(&t.pagemap, here, here + 4096, q, &mut out).expect("scan");
        assert_eq!(out.len(), 1, "the text page is present: {out:?}");
        assert_ne!(out[0].categories & PAGE_IS_FILE, 0);
    }
}
