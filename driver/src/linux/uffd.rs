//! The userfaultfd and `PAGEMAP_SCAN` ioctls the driver uses, as typed calls.
//!
//! Layouts follow `linux/userfaultfd.h` and `linux/fs.h` (Linux 6.7+ for
//! `PAGEMAP_SCAN` and `UFFD_FEATURE_WP_ASYNC`); the request numbers are computed
//! from the struct sizes and pinned against the kernel's values below.

use std::io;
use std::os::fd::RawFd;

pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
/// `userfaultfd(2)` flag: only faults from user mode are reported.
pub const UFFD_USER_MODE_ONLY: u64 = 1;
/// `uffd_msg.event` of a page fault.
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// `sizeof(struct uffd_msg)`; the fault address is at byte 16.
pub const UFFD_MSG_LEN: usize = 32;

const UFFD_API: u64 = 0xaa;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;

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

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
struct UffdioZeropage {
    start: u64,
    len: u64,
    mode: u64,
    zeropage: i64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

/// `PAGEMAP_SCAN` result: `[start, end)` with the categories asked for.
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

// _IOWR(type, nr, size) = 3 << 30 | size << 16 | type << 8 | nr; _IOR has 2 << 30.
const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}
const PAGEMAP_SCAN: u64 = ioc(3, b'f' as u64, 16, std::mem::size_of::<PmScanArg>());
const UFFDIO_API: u64 = ioc(3, 0xaa, 0x3f, std::mem::size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = ioc(3, 0xaa, 0x00, std::mem::size_of::<UffdioRegister>());
const UFFDIO_WAKE: u64 = ioc(2, 0xaa, 0x02, std::mem::size_of::<UffdioRange>());
const UFFDIO_COPY: u64 = ioc(3, 0xaa, 0x03, std::mem::size_of::<UffdioCopy>());
const UFFDIO_ZEROPAGE: u64 = ioc(3, 0xaa, 0x04, std::mem::size_of::<UffdioZeropage>());
const UFFDIO_WRITEPROTECT: u64 = ioc(3, 0xaa, 0x06, std::mem::size_of::<UffdioWriteprotect>());
static_assertions::const_assert_eq!(PAGEMAP_SCAN, 0xc060_6610);
static_assertions::const_assert_eq!(UFFDIO_API, 0xc018_aa3f);
static_assertions::const_assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
static_assertions::const_assert_eq!(UFFDIO_WAKE, 0x8010_aa02);
static_assertions::const_assert_eq!(UFFDIO_COPY, 0xc028_aa03);
static_assertions::const_assert_eq!(UFFDIO_ZEROPAGE, 0xc020_aa04);
static_assertions::const_assert_eq!(UFFDIO_WRITEPROTECT, 0xc018_aa06);

/// `ioctl(fd, req, arg)`. Private: each caller below passes the struct its request
/// number was computed from.
fn ioctl<T>(fd: RawFd, req: u64, arg: &mut T) -> io::Result<i64> {
    // SAFETY: `arg` is a live, correctly sized `#[repr(C)]` value of the type the
    // request `req` is defined with (the numbers are pinned above); the kernel reads
    // and writes only that value and, for PAGEMAP_SCAN, the vector it points to,
    // which `pagemap_scan` keeps alive for the call.
    let rc = unsafe { libc::ioctl(fd, req as libc::c_ulong, arg as *mut T) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as i64)
    }
}

/// `UFFDIO_API` handshake asking for `features`.
pub fn api(fd: RawFd, features: u64) -> io::Result<()> {
    let mut a = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    ioctl(fd, UFFDIO_API, &mut a).map(drop)
}

/// `UFFDIO_REGISTER` of `[start, end)` in `mode`.
pub fn register(fd: RawFd, start: u64, end: u64, mode: u64) -> io::Result<()> {
    let mut r = UffdioRegister {
        start,
        len: end - start,
        mode,
        ioctls: 0,
    };
    ioctl(fd, UFFDIO_REGISTER, &mut r).map(drop)
}

/// `UFFDIO_WRITEPROTECT` (protect) of `[start, end)`.
pub fn write_protect(fd: RawFd, start: u64, end: u64) -> io::Result<()> {
    let mut w = UffdioWriteprotect {
        start,
        len: end - start,
        mode: UFFDIO_WRITEPROTECT_MODE_WP,
    };
    ioctl(fd, UFFDIO_WRITEPROTECT, &mut w).map(drop)
}

/// `UFFDIO_COPY` of `len` bytes from our address `src` to the registered `dst`.
/// On failure also returns how many bytes were copied before it.
pub fn copy(fd: RawFd, dst: u64, src: u64, len: u64) -> Result<(), (io::Error, u64)> {
    let mut c = UffdioCopy {
        dst,
        src,
        len,
        mode: 0,
        copy: 0,
    };
    ioctl(fd, UFFDIO_COPY, &mut c)
        .map(drop)
        .map_err(|e| (e, c.copy.max(0) as u64))
}

/// `UFFDIO_ZEROPAGE` of `[start, start + len)`.
pub fn zeropage(fd: RawFd, start: u64, len: u64) -> io::Result<()> {
    let mut z = UffdioZeropage {
        start,
        len,
        mode: 0,
        zeropage: 0,
    };
    ioctl(fd, UFFDIO_ZEROPAGE, &mut z).map(drop)
}

/// `UFFDIO_WAKE` of the threads waiting on `[start, start + len)`.
pub fn wake(fd: RawFd, start: u64, len: u64) -> io::Result<()> {
    let mut r = UffdioRange { start, len };
    ioctl(fd, UFFDIO_WAKE, &mut r).map(drop)
}

/// `PAGEMAP_SCAN` query: after XOR with `inverted`, a page must have every bit of
/// `all` and (if non-zero) one bit of `any`; results carry `categories & ret`.
#[derive(Clone, Copy, Debug)]
pub struct ScanQuery {
    pub inverted: u64,
    pub all: u64,
    pub any: u64,
    pub ret: u64,
}

/// Runs `PAGEMAP_SCAN` over `[start, end)` of the mm behind the pagemap `fd` and
/// appends the regions. Continues only when the vector came back full (`walk_end`
/// is only advanced then; DESIGN.md).
pub fn pagemap_scan(
    fd: RawFd,
    start: u64,
    end: u64,
    q: ScanQuery,
    out: &mut Vec<PageRegion>,
) -> io::Result<()> {
    pagemap_scan_flags(fd, start, end, q, 0, out)
}

/// `PM_SCAN_WP_MATCHING`: write-protect the pages the scan reports, in the same
/// walk (an epoch's "list what changed and start tracking again" in one call).
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC`: refuse (EPERM) unless the range's uffd uses `WP_ASYNC`.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// [`pagemap_scan`] with `PM_SCAN_*` flags.
pub fn pagemap_scan_flags(
    fd: RawFd,
    start: u64,
    end: u64,
    q: ScanQuery,
    flags: u64,
    out: &mut Vec<PageRegion>,
) -> io::Result<()> {
    // One result buffer per thread, reused: an epoch's freeze makes one call per
    // written run, and allocating and zeroing 96 KiB each time cost ~9% of it
    // (perf, benches/README.md).
    thread_local! {
        static BUF: std::cell::RefCell<Vec<PageRegion>> =
            std::cell::RefCell::new(vec![PageRegion::default(); 4096]);
    }
    BUF.with(|b| scan_into(fd, start, end, q, flags, &mut b.borrow_mut(), out))
}

fn scan_into(
    fd: RawFd,
    start: u64,
    end: u64,
    q: ScanQuery,
    flags: u64,
    vec: &mut [PageRegion],
    out: &mut Vec<PageRegion>,
) -> io::Result<()> {
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        flags,
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
        let n = ioctl(fd, PAGEMAP_SCAN, &mut arg)? as usize;
        out.extend_from_slice(&vec[..n.min(vec.len())]);
        if n < vec.len() || arg.walk_end >= end {
            return Ok(());
        }
        arg.start = arg.walk_end;
    }
}
