//! The checkpoint image file: one full epoch of core-format frames.
//!
//! Order written (and required by the stub): EpochBegin, ProcessInfo, VmaTable,
//! SignalTable, FdTable, ThreadState × n, MappedFiles, Credentials × n, PageRun × m,
//! EpochCommit. Page runs are
//! stored raw or as zero runs, so the stub can `pread` page data straight into place.
//!
//! Reading maps the file and checks every frame (header and payload checksums, page
//! run checksums, the epoch digest) and the epoch's semantics with core-format's
//! validator before anything is restored; any failure names the frame and its offset.

pub mod chain;
pub mod inspect;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use core_format as cf;

use crate::capture::creds::ThreadCreds;
use crate::capture::fds::{FdCapture, FdKind, SockFamily};
use crate::capture::identity::FileIdentity;
use crate::capture::inject::Restart;
use crate::capture::Capture;
use crate::linux::mapped::{MapError, Mapped};
use crate::linux::procfs::EpollEntry;
use crate::linux::sys::UserRegs;
use crate::model::{
    Epoch, MmLayout, PageRun, PageSource, Process, Rlimit, SigAction, Thread, Vma, VmaKind, PAGE,
    PROT_R, PROT_W, PROT_X,
};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: frame at byte offset {offset}: {source}")]
    Frame {
        path: String,
        offset: u64,
        source: cf::Error,
    },
    #[error("{path}: {detail}")]
    Content { path: String, detail: String },
    #[error("encoding the image: {0}")]
    Encode(cf::Error),
}

/// Sizes written.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteStats {
    pub bytes: u64,
    pub page_frames: u32,
    pub pages: u64,
    pub zero_pages: u64,
}

fn prot_of(p: u8) -> cf::Prot {
    cf::Prot::from_bits(p).unwrap_or(cf::Prot::NONE)
}

fn vma_record<'a>(v: &'a Vma) -> cf::Vma<'a> {
    let mut flags = cf::VmaFlags::EMPTY;
    if v.shared {
        flags = flags | cf::VmaFlags::SHARED;
    }
    if v.growsdown {
        flags = flags | cf::VmaFlags::GROWSDOWN;
    }
    if v.droppable {
        flags = flags | cf::VmaFlags::DROPPABLE | cf::VmaFlags::WIPEONFORK;
    }
    if v.reservation {
        flags = flags | cf::VmaFlags::RESERVATION;
    }
    if v.noreserve {
        flags = flags | cf::VmaFlags::NORESERVE;
    }
    for (on, f) in [
        (v.hugepage, cf::VmaFlags::HUGEPAGE),
        (v.nohugepage, cf::VmaFlags::NOHUGEPAGE),
        (v.dontdump, cf::VmaFlags::DONTDUMP),
        (v.wipeonfork, cf::VmaFlags::WIPEONFORK),
    ] {
        if on {
            flags = flags | f;
        }
    }
    let (kind, off, path): (cf::VmaKind, u64, &[u8]) = match &v.kind {
        VmaKind::Anonymous => (cf::VmaKind::Anonymous, 0, b""),
        VmaKind::File { path, offset } => (cf::VmaKind::File, *offset, path),
        VmaKind::Vdso => (cf::VmaKind::Vdso, 0, b""),
        VmaKind::Vvar => (cf::VmaKind::Vvar, 0, b""),
        VmaKind::VvarVclock => (cf::VmaKind::VvarVclock, 0, b""),
        VmaKind::Stack => (cf::VmaKind::Stack, 0, b""),
        VmaKind::Heap => (cf::VmaKind::Heap, 0, b""),
        VmaKind::Vsyscall => (cf::VmaKind::Vsyscall, 0, b""),
    };
    cf::Vma {
        start: v.start,
        end: v.end,
        prot: prot_of(v.prot),
        flags,
        kind,
        file_offset: off,
        path,
    }
}

fn sockaddr(family: SockFamily, addr: &[u8], port: u16) -> SocketAddr {
    let ip = match family {
        SockFamily::Inet => {
            let a: [u8; 4] = addr.try_into().unwrap_or([0; 4]);
            IpAddr::V4(Ipv4Addr::from(a))
        }
        SockFamily::Inet6 => {
            let a: [u8; 16] = addr.try_into().unwrap_or([0; 16]);
            IpAddr::V6(Ipv6Addr::from(a))
        }
    };
    SocketAddr::new(ip, port)
}

fn unix_type(t: i32) -> cf::UnixType {
    match t {
        libc::SOCK_DGRAM => cf::UnixType::Dgram,
        libc::SOCK_SEQPACKET => cf::UnixType::SeqPacket,
        _ => cf::UnixType::Stream,
    }
}

fn proto(mptcp: bool) -> cf::InetProtocol {
    if mptcp {
        cf::InetProtocol::Mptcp
    } else {
        cf::InetProtocol::Tcp
    }
}

/// Writes a whole checkpoint as one full epoch, crash-safely (see [`ImageOut`]).
pub fn write_image(c: &Capture, path: &Path) -> Result<WriteStats, ImageError> {
    write_image_with(c, path, &mut |_, _| {})
}

/// [`write_image`], calling `progress(pages written, pages in all)` as page runs are
/// written (a 1 GiB image takes seconds).
pub fn write_image_with(
    c: &Capture,
    path: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<WriteStats, ImageError> {
    let mut out = ImageOut::create(path)?;
    let stats = out.write(c, progress)?;
    out.commit()?;
    Ok(stats)
}

/// An image being written: a temporary file beside the target, mode 0600, that
/// becomes the target only by [`ImageOut::commit`] (fsync the file, rename it over
/// the target, fsync the directory). Until then the target path is untouched; a
/// dropped `ImageOut` removes its temporary file. A driver killed before the commit
/// leaves only the temporary file, which the next dump to the same path removes.
///
/// Test switches: `CS_FAULT_WRITE_AT=N` makes the write fail with an injected I/O
/// error once N bytes are written, so the failure paths are tested without
/// filling a disk; `CS_TEST_WRITE_DELAY_MS=M` sleeps M ms before each write to
/// the file (8 MiB at a time), so that tests can act while an image is written.
#[derive(Debug)]
pub struct ImageOut {
    target: std::path::PathBuf,
    tmp: std::path::PathBuf,
    dir: std::path::PathBuf,
    file: Option<File>,
    committed: bool,
}

const TMP_MARK: &str = ".cs-tmp-";

impl ImageOut {
    /// Checks the target and opens the temporary file. Call before touching the
    /// program: every way the output can be wrong (a missing directory, a
    /// directory as the path, no permission) fails here.
    pub fn create(path: &Path) -> Result<ImageOut, ImageError> {
        let err = |p: &Path, detail: String| ImageError::Content {
            path: p.display().to_string(),
            detail,
        };
        let name = path
            .file_name()
            .ok_or_else(|| err(path, "names no file (it ends in `/` or `..`)".into()))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(err(&dir, "is not a directory".into())),
            Err(e) => {
                return Err(ImageError::Io {
                    path: format!("output directory {}", dir.display()),
                    source: e,
                })
            }
        }
        if let Ok(m) = std::fs::symlink_metadata(path) {
            if m.is_dir() {
                return Err(err(path, "is a directory; name an image file".into()));
            }
            if !m.is_file() && !m.file_type().is_symlink() {
                return Err(err(path, "exists and is not a regular file".into()));
            }
        }
        let mut prefix = std::ffi::OsString::from(".");
        prefix.push(name);
        prefix.push(TMP_MARK);
        remove_stale_temps(&dir, &prefix);
        let mut tmp_name = prefix;
        tmp_name.push(std::process::id().to_string());
        let tmp = dir.join(tmp_name);
        use std::os::unix::fs::OpenOptionsExt;
        // A leftover of this very pid (a pid reused since) goes first.
        let _ = std::fs::remove_file(&tmp);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(|e| ImageError::Io {
                path: format!("{} (temporary file for {})", tmp.display(), path.display()),
                source: e,
            })?;
        Ok(ImageOut {
            target: path.to_path_buf(),
            tmp,
            dir,
            file: Some(file),
            committed: false,
        })
    }

    /// Encodes the capture into the temporary file and fsyncs it.
    pub fn write(
        &mut self,
        c: &Capture,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<WriteStats, ImageError> {
        self.write_epoch(&c.epoch, Some(&c.pages), progress)
    }

    /// Encodes an epoch with its pages into the temporary file and fsyncs it.
    pub fn write_epoch(
        &mut self,
        e: &Epoch,
        pages: Option<&dyn PageSource>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<WriteStats, ImageError> {
        self.write_with(|w| encode_epoch(e, pages, w, progress))
    }

    /// Writes the frames `f` produces into the temporary file, then fsyncs it.
    pub fn write_with(
        &mut self,
        f: impl FnOnce(&mut dyn Write) -> Result<WriteStats, ImageError>,
    ) -> Result<WriteStats, ImageError> {
        let tmp = self.tmp.display().to_string();
        let io = |e: std::io::Error| ImageError::Io {
            path: tmp.clone(),
            source: e,
        };
        let file = self.file.take().ok_or_else(|| ImageError::Content {
            path: tmp.clone(),
            detail: "written twice".into(),
        })?;
        let guarded = Guarded {
            file,
            written: 0,
            fail_at: std::env::var("CS_FAULT_WRITE_AT")
                .ok()
                .and_then(|v| v.parse().ok()),
            delay: std::env::var("CS_TEST_WRITE_DELAY_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map(std::time::Duration::from_millis),
        };
        let mut w = BufWriter::with_capacity(8 << 20, guarded);
        let stats = f(&mut w).map_err(|e| match e {
            ImageError::Io { source, .. } => io(source),
            other => other,
        })?;
        let guarded = w.into_inner().map_err(|e| io(e.into_error()))?;
        crate::cancel::check("before the image was synced").map_err(|e| io(cancelled(e)))?;
        guarded.file.sync_all().map_err(io)?;
        self.file = Some(guarded.file);
        Ok(stats)
    }

    /// The commit point: the written image replaces the target atomically and
    /// durably. After an error here the target is either untouched or the
    /// complete new image.
    pub fn commit(mut self) -> Result<(), ImageError> {
        crate::cancel::check("before the image was committed").map_err(|e| ImageError::Io {
            path: self.target.display().to_string(),
            source: cancelled(e),
        })?;
        if self.file.is_none() {
            return Err(ImageError::Content {
                path: self.tmp.display().to_string(),
                detail: "committed before it was written".into(),
            });
        }
        std::fs::rename(&self.tmp, &self.target).map_err(|e| ImageError::Io {
            path: format!(
                "renaming {} to {}",
                self.tmp.display(),
                self.target.display()
            ),
            source: e,
        })?;
        self.committed = true;
        let d = File::open(&self.dir).and_then(|d| d.sync_all());
        d.map_err(|e| ImageError::Io {
            path: format!("fsync of directory {}", self.dir.display()),
            source: e,
        })
    }

    /// The path the image gets at the commit.
    pub fn target_path(&self) -> &Path {
        &self.target
    }

    /// The temporary file's path.
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }
}

impl Drop for ImageOut {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Not `ErrorKind::Interrupted`: `write_all` would retry that forever. The
/// typed error rides inside (`get_ref` downcasts to it).
fn cancelled(e: crate::cancel::Cancelled) -> std::io::Error {
    std::io::Error::other(e)
}

/// Removes `PREFIX<pid>` files in `dir` whose driver is gone.
fn remove_stale_temps(dir: &Path, prefix: &std::ffi::OsStr) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.as_bytes().strip_prefix(prefix.as_bytes()) else {
            continue;
        };
        let Some(pid) = std::str::from_utf8(rest)
            .ok()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The image file's writer: checks for cancellation and applies the test fault.
struct Guarded {
    file: File,
    written: u64,
    fail_at: Option<u64>,
    delay: Option<std::time::Duration>,
}

impl Write for Guarded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(d) = self.delay {
            std::thread::sleep(d);
        }
        crate::cancel::check("while the image was written").map_err(cancelled)?;
        let mut n = buf.len();
        if let Some(at) = self.fail_at {
            if self.written >= at {
                return Err(std::io::Error::other(format!(
                    "injected write failure at byte {at} (CS_FAULT_WRITE_AT)"
                )));
            }
            n = n.min((at - self.written) as usize);
        }
        let n = self.file.write(&buf[..n])?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Opens an image for reading, refusing what cannot be one before reading it: a
/// directory, a device, a FIFO (opened without blocking: a FIFO with no writer
/// would hang), a socket, or a file that reports no size (`/proc` files).
pub fn open_image(path: &Path) -> Result<File, ImageError> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let what = |detail: &str| ImageError::Content {
        path: path.display().to_string(),
        detail: detail.to_string(),
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| ImageError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
    let m = file.metadata().map_err(|e| ImageError::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    let t = m.file_type();
    if t.is_dir() {
        return Err(what("is a directory, not an image file"));
    }
    if t.is_fifo() {
        return Err(what(
            "is a FIFO, not an image file (images are read in place)",
        ));
    }
    if t.is_char_device() || t.is_block_device() {
        return Err(what("is a device, not an image file"));
    }
    if t.is_socket() || !t.is_file() {
        return Err(what("is not a regular file"));
    }
    if m.len() == 0 {
        let mut probe = [0u8; 1];
        use std::io::Read;
        return Err(if (&file).read(&mut probe).unwrap_or(0) > 0 {
            what("reports a size of 0 but has contents (a /proc or /sys file?): not an image")
        } else {
            what("is empty (0 bytes): not an image")
        });
    }
    Ok(file)
}

/// Encodes a capture as frames into `w`.
pub fn encode<W: Write>(c: &Capture, w: &mut W) -> Result<WriteStats, ImageError> {
    encode_epoch(&c.epoch, Some(&c.pages), w, &mut |_, _| {})
}

/// Encodes `e` as frames into `w`: its metadata, then (with `pages`) its page runs
/// and zero runs, then the commit. Without `pages` the result is the metadata the
/// restore stub reads (it never reads page runs: the driver fills the pages).
pub fn encode_epoch<W: Write + ?Sized>(
    e: &Epoch,
    pages: Option<&dyn PageSource>,
    w: &mut W,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<WriteStats, ImageError> {
    let c = e;
    let p = &e.process;
    let mut stats = WriteStats::default();
    let mut digest = cf::EpochDigest::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut put =
        |rec: cf::Record<'_>, w: &mut W, digest: &mut cf::EpochDigest, stats: &mut WriteStats| {
            buf.resize(rec.buffer_len(), 0);
            let n = rec.emit_frame(&mut buf).map_err(ImageError::Encode)?;
            if !matches!(rec, cf::Record::EpochCommit(_)) {
                let mut h = [0u8; cf::HEADER_LEN];
                h.copy_from_slice(&buf[..cf::HEADER_LEN]);
                digest.update(&h);
            }
            w.write_all(&buf[..n]).map_err(|e| ImageError::Io {
                path: "image".into(),
                source: e,
            })?;
            stats.bytes += n as u64;
            Ok::<(), ImageError>(())
        };
    // The freeze's wall-clock time: an epoch holds what was there at its freeze.
    let wall = c.wall_ns;
    put(
        cf::Record::EpochBegin(cf::EpochBegin {
            epoch: c.number,
            kind: if c.full {
                cf::EpochKind::Full
            } else {
                cf::EpochKind::Delta
            },
            wall_time_ns: wall,
        }),
        w,
        &mut digest,
        &mut stats,
    )?;
    let mut rl: heapless::Vec<cf::Rlimit, 16> = heapless::Vec::new();
    for r in p.rlimits.iter().take(16) {
        let _ = rl.push(cf::Rlimit {
            resource: r.resource,
            soft: r.soft,
            hard: r.hard,
        });
    }
    let m = &p.mm;
    let info = cf::ProcessInfo {
        pid: p.pid as u32,
        arch: cf::Arch::X86_64,
        page_size: 4096,
        xsave_size_bytes: p.xsave_size,
        xcr0: p.xcr0,
        thread_count: c.threads.len() as u32,
        umask: p.umask,
        clock_monotonic_ns: p.monotonic_ns,
        clock_boottime_ns: p.boottime_ns,
        mm: cf::MmLayout {
            start_code: m.start_code,
            end_code: m.end_code,
            start_data: m.start_data,
            end_data: m.end_data,
            start_brk: m.start_brk,
            brk: m.brk,
            start_stack: m.start_stack,
            arg_start: m.arg_start,
            arg_end: m.arg_end,
            env_start: m.env_start,
            env_end: m.env_end,
        },
        rlimits: rl,
        auxv: &p.auxv[..p.auxv.len().min(1024)],
        exe_path: &p.exe,
        cwd_path: &p.cwd,
        comm: &p.comm[..p.comm.len().min(16)],
        kernel_release: &p.kernel_release[..p.kernel_release.len().min(64)],
        go_version: b"",
    };
    put(cf::Record::ProcessInfo(info), w, &mut digest, &mut stats)?;
    let vmas: Vec<cf::Vma<'_>> = c.vmas.iter().map(vma_record).collect();
    for chunk in vmas.chunks(4096) {
        put(
            cf::Record::VmaTable(cf::VmaTable::new(chunk)),
            w,
            &mut digest,
            &mut stats,
        )?;
    }
    let mut acts = [cf::SigAction::DEFAULT; cf::NUM_SIGNALS];
    for (i, a) in c.sigactions.iter().enumerate().take(cf::NUM_SIGNALS) {
        acts[i] = cf::SigAction {
            handler: a.handler,
            flags: a.flags,
            restorer: a.restorer,
            mask: a.mask,
        };
    }
    put(
        cf::Record::SignalTable(cf::SignalTable::new(&acts)),
        w,
        &mut digest,
        &mut stats,
    )?;
    let epolls: Vec<Vec<cf::EpollRegistration>> = c
        .fds
        .iter()
        .map(|f| match &f.kind {
            FdKind::Epoll { entries } => entries
                .iter()
                .map(|e| cf::EpollRegistration {
                    tfd: e.tfd,
                    events: e.events,
                    data: e.data,
                })
                .collect(),
            _ => Vec::new(),
        })
        .collect();
    let fds: Vec<cf::Fd<'_>> = c
        .fds
        .iter()
        .zip(&epolls)
        .map(|(f, regs)| cf::Fd {
            fd: f.fd,
            fd_flags: if f.cloexec {
                cf::FdFlags::CLOEXEC
            } else {
                cf::FdFlags::EMPTY
            },
            status_flags: f.status_flags,
            kind: match &f.kind {
                FdKind::Stdio { path } => cf::FdKind::Tty { path },
                FdKind::Regular { path, offset } => cf::FdKind::RegularFile {
                    path,
                    offset: *offset,
                    mode: 0,
                },
                FdKind::Pipe {
                    id,
                    write_end,
                    contents,
                } => cf::FdKind::Pipe {
                    pipe_id: *id,
                    end: if *write_end {
                        cf::PipeEnd::Write
                    } else {
                        cf::PipeEnd::Read
                    },
                    buffered: contents,
                },
                FdKind::Eventfd { count, semaphore } => cf::FdKind::Eventfd {
                    count: *count,
                    semaphore: *semaphore,
                },
                FdKind::Epoll { .. } => cf::FdKind::Epoll {
                    registrations: cf::Table::from_slice(regs),
                },
                FdKind::TcpListen {
                    family,
                    mptcp,
                    addr,
                    port,
                    backlog,
                    reuseaddr,
                } => cf::FdKind::TcpListen {
                    addr: sockaddr(*family, addr, *port),
                    protocol: proto(*mptcp),
                    backlog: *backlog,
                    reuseaddr: *reuseaddr,
                },
                FdKind::UnixListen { path, sock_type } => cf::FdKind::UnixListen {
                    path,
                    socket_type: unix_type(*sock_type),
                    backlog: 4096,
                },
                FdKind::TcpConnected {
                    family,
                    mptcp,
                    local,
                    peer,
                } => cf::FdKind::TcpConnected {
                    local: sockaddr(*family, &local.0, local.1),
                    peer: sockaddr(*family, &peer.0, peer.1),
                    protocol: proto(*mptcp),
                },
                FdKind::UnixConnected { sock_type } => cf::FdKind::UnixConnected {
                    socket_type: unix_type(*sock_type),
                    path: b"",
                    peer_path: b"",
                },
                FdKind::Other { what } => cf::FdKind::Other {
                    description: &what[..what.len().min(4096)],
                },
            },
        })
        .collect();
    put(
        cf::Record::FdTable(cf::FdTable::new(&fds)),
        w,
        &mut digest,
        &mut stats,
    )?;
    for t in &c.threads {
        let restart = match t.restart {
            Restart::None => cf::Restart::None,
            Restart::Restart => cf::Restart::Restart,
            Restart::Eintr => cf::Restart::Eintr,
        };
        let ts = cf::ThreadState {
            tid: t.tid as u32,
            comm: &t.comm[..t.comm.len().min(16)],
            regs: t.regs.to_words(),
            xsave: &t.xsave,
            sigmask: t.sigmask,
            altstack: cf::SigAltStack {
                sp: t.altstack.0,
                flags: t.altstack.1,
                size: t.altstack.2,
            },
            restart,
            stopped: p.stopped,
        };
        put(cf::Record::ThreadState(ts), w, &mut digest, &mut stats)?;
    }
    put_identity(c, &mut put, w, &mut digest, &mut stats)?;
    // Pages in address order: stored runs and zero runs merged.
    let (addrs, src) = match pages {
        Some(pages) => page_table(pages, &c.zeros),
        None => (Vec::new(), PageTable::default()),
    };
    let src = TablePages { pages, table: &src };
    let mut enc = cf::PageRunEncoder::new(&addrs).map_err(ImageError::Encode)?;
    let mut out = vec![0u8; if addrs.is_empty() { 0 } else { 8 << 20 }];
    while !enc.is_done() {
        let r = enc
            .encode_into_digest(&src, &mut out, &mut digest)
            .map_err(ImageError::Encode)?;
        w.write_all(&out[..r.bytes_written])
            .map_err(|e| ImageError::Io {
                path: "image".into(),
                source: e,
            })?;
        stats.bytes += r.bytes_written as u64;
        stats.page_frames += r.frames;
        stats.pages += u64::from(r.pages);
        stats.zero_pages += u64::from(r.zero_pages);
        progress(stats.pages, addrs.len() as u64);
    }
    let commit = digest.commit(c.number);
    put(cf::Record::EpochCommit(commit), w, &mut digest, &mut stats)?;
    Ok(stats)
}

/// Per page, in address order: (run index, byte offset in the run), or
/// [`ZERO_PAGE`] for a page of a zero range.
#[derive(Default)]
struct PageTable {
    at: Vec<(usize, usize)>,
}

/// The addresses of every stored and zero page of an epoch, in order, and where
/// each page's bytes are. A page in both (cannot happen in a capture) is stored.
fn page_table(pages: &dyn PageSource, zeros: &[(u64, u64)]) -> (Vec<u64>, PageTable) {
    let runs = pages.runs();
    let mut all: Vec<(u64, (usize, usize))> = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        for k in 0..r.npages {
            all.push((r.start + k * PAGE, (i, (k * PAGE) as usize)));
        }
    }
    if !zeros.is_empty() {
        for &(start, end) in zeros {
            all.extend(
                (start..end)
                    .step_by(PAGE as usize)
                    .map(|a| (a, (ZERO_PAGE, 0))),
            );
        }
        // Stable: a stored page sorts before a zero page at the same address.
        all.sort_by_key(|p| p.0);
        all.dedup_by_key(|p| p.0);
    }
    let addrs = all.iter().map(|p| p.0).collect();
    let at = all.into_iter().map(|p| p.1).collect();
    (addrs, PageTable { at })
}

/// A [`PageSource`] seen page by page, for core-format's run encoder.
struct TablePages<'a> {
    pages: Option<&'a dyn PageSource>,
    table: &'a PageTable,
}

impl cf::PageSource for TablePages<'_> {
    fn page(&self, index: usize, _addr: u64) -> &[u8] {
        match (self.table.at.get(index), self.pages) {
            (Some(&(ZERO_PAGE, _)), _) => &ZEROS,
            (Some(&(run, off)), Some(p)) => p
                .bytes(run)
                .get(off..off + PAGE as usize)
                .unwrap_or_default(),
            _ => &[],
        }
    }
}

/// The offset that stands for a page of zeros (a released page in a delta).
const ZERO_PAGE: usize = usize::MAX;
static ZEROS: [u8; 4096] = [0; 4096];

/// A verified epoch file: the epoch, its page runs in the mapped file, and sizes.
#[derive(Debug)]
pub struct Decoded {
    pub epoch: Epoch,
    pub pages: ImagePages,
    pub stats: ImageStats,
}

/// Frame and page counts of a verified image.
#[derive(Clone, Copy, Debug, Default)]
pub struct ImageStats {
    pub page_frames: u64,
    pub pages_stored: u64,
    pub pages_zero: u64,
    pub bytes: u64,
}

/// The stored pages of a mapped image file (`offset` = file offset of a run's
/// data).
#[derive(Debug)]
pub struct ImagePages {
    map: Mapped,
    runs: Vec<PageRun>,
}

impl ImagePages {
    /// The whole file's bytes.
    pub fn file_bytes(&self) -> &[u8] {
        self.map.bytes()
    }
}

impl PageSource for ImagePages {
    fn runs(&self) -> &[PageRun] {
        &self.runs
    }

    fn bytes(&self, i: usize) -> &[u8] {
        let r = &self.runs[i];
        let len = (r.npages * PAGE) as usize;
        self.map
            .bytes()
            .get(r.offset..r.offset + len)
            .unwrap_or_default()
    }

    fn populate(&self) {
        self.map.populate();
    }
}

/// Reads and fully verifies an image file: one full epoch. A delta epoch is
/// refused (it restores only as part of its folder's chain).
pub fn read_image(file: &File, path: &str) -> Result<Decoded, ImageError> {
    let d = read_image_any(file, path)?;
    if !d.epoch.full {
        return Err(ImageError::Content {
            path: path.into(),
            detail: format!(
                "is delta epoch {}: it restores only with the rest of its chain (restore the folder that holds it)",
                d.epoch.number
            ),
        });
    }
    Ok(d)
}

/// Reads and fully verifies one epoch file, full or delta.
pub fn read_image_any(file: &File, path: &str) -> Result<Decoded, ImageError> {
    let map = Mapped::new(file).map_err(|e| match e {
        MapError::Empty => ImageError::Content {
            path: path.into(),
            detail: "the image is empty".into(),
        },
        MapError::Io(source) => ImageError::Io {
            path: path.into(),
            source,
        },
    })?;
    let (epoch, runs, stats) = decode(map.bytes(), path)?;
    Ok(Decoded {
        epoch,
        pages: ImagePages { map, runs },
        stats,
    })
}

/// Decodes and fully verifies one epoch's bytes (`path` names them in errors):
/// the epoch, its raw page runs (`offset` = byte offset of a run's data in
/// `bytes`) and sizes. Nothing is returned unless every frame, checksum and the
/// commit verify.
pub fn decode(bytes: &[u8], path: &str) -> Result<(Epoch, Vec<PageRun>, ImageStats), ImageError> {
    let frame_err = |offset: usize, source: cf::Error| ImageError::Frame {
        path: path.into(),
        offset: offset as u64,
        source,
    };
    let mut validator = cf::CheckpointValidator::new(vec![cf::VmaRange::default(); 1 << 16]);
    let mut e = Epoch {
        full: true,
        ..Epoch::default()
    };
    let mut stats = ImageStats {
        bytes: bytes.len() as u64,
        ..ImageStats::default()
    };
    let mut runs: Vec<PageRun> = Vec::new();
    let mut creds: Vec<(i32, ThreadCreds)> = Vec::new();
    let mut off = 0usize;
    let mut committed = false;
    // Page-run payloads (nearly all of the bytes): checked in parallel after the walk.
    let mut deferred: Vec<DeferredRun> = Vec::new();
    while off < bytes.len() {
        if committed {
            return Err(ImageError::Content {
                path: path.into(),
                detail: format!(
                    "{} bytes of trailing data after the epoch commit at offset {off}",
                    bytes.len() - off
                ),
            });
        }
        let (frame, len) = parse_deferring_runs(&bytes[off..], off, &mut deferred)
            .map_err(|e| frame_err(off, e))?;
        validator.push(&frame).map_err(|e| frame_err(off, e))?;
        // Only page runs and the commit may follow the first page run.
        if !deferred.is_empty()
            && !matches!(
                frame.record,
                cf::Record::PageRun(_) | cf::Record::EpochCommit(_)
            )
        {
            return Err(ImageError::Content {
                path: path.into(),
                detail: format!(
                    "a {:?} frame at byte offset {off} follows the page runs",
                    frame.header.kind
                ),
            });
        }
        match &frame.record {
            cf::Record::ProcessInfo(p) => {
                let m = &p.mm;
                e.process = Process {
                    pid: p.pid as i32,
                    exe: p.exe_path.to_vec(),
                    cwd: p.cwd_path.to_vec(),
                    comm: p.comm.to_vec(),
                    umask: p.umask,
                    rlimits: p
                        .rlimits
                        .iter()
                        .map(|r| Rlimit {
                            resource: r.resource,
                            soft: r.soft,
                            hard: r.hard,
                        })
                        .collect(),
                    auxv: p.auxv.to_vec(),
                    mm: MmLayout {
                        start_code: m.start_code,
                        end_code: m.end_code,
                        start_data: m.start_data,
                        end_data: m.end_data,
                        start_brk: m.start_brk,
                        brk: m.brk,
                        start_stack: m.start_stack,
                        arg_start: m.arg_start,
                        arg_end: m.arg_end,
                        env_start: m.env_start,
                        env_end: m.env_end,
                    },
                    xsave_size: p.xsave_size_bytes,
                    xcr0: p.xcr0,
                    monotonic_ns: p.clock_monotonic_ns,
                    boottime_ns: p.clock_boottime_ns,
                    kernel_release: p.kernel_release.to_vec(),
                    stopped: false,
                };
            }
            cf::Record::VmaTable(t) => {
                for v in t.vmas.iter() {
                    e.vmas.push(vma_from(&v));
                }
            }
            cf::Record::ThreadState(t) => {
                e.process.stopped |= t.stopped;
                e.threads.push(thread_from(t));
            }
            cf::Record::SignalTable(t) => {
                e.sigactions = t
                    .iter()
                    .map(|(_, a)| SigAction {
                        handler: a.handler,
                        flags: a.flags,
                        restorer: a.restorer,
                        mask: a.mask,
                    })
                    .collect();
            }
            cf::Record::FdTable(t) => {
                for f in t.fds.iter() {
                    e.fds.push(fd_from(&f));
                }
            }
            cf::Record::PageRun(r) => {
                stats.page_frames += 1;
                match r.encoding {
                    cf::PageEncoding::Zero => {
                        stats.pages_zero += u64::from(r.npages);
                        let end = r.start + u64::from(r.npages) * PAGE;
                        match e.zeros.last_mut() {
                            Some(z) if z.1 == r.start => z.1 = end,
                            _ => e.zeros.push((r.start, end)),
                        }
                    }
                    cf::PageEncoding::Raw => {
                        stats.pages_stored += u64::from(r.npages);
                        // Raw data sits at the start of the payload (trailer layout).
                        runs.push(PageRun {
                            start: r.start,
                            npages: u64::from(r.npages),
                            offset: off + cf::HEADER_LEN,
                        });
                    }
                    cf::PageEncoding::Lz4 => {
                        return Err(frame_err(
                            off,
                            cf::Error::PageRunBadCompression { start: r.start },
                        ));
                    }
                }
            }
            cf::Record::EpochBegin(b) => {
                e.number = b.epoch;
                e.full = b.kind == cf::EpochKind::Full;
                e.wall_ns = b.wall_time_ns;
            }
            cf::Record::EpochCommit(_) => committed = true,
            cf::Record::MappedFiles(t) => e.files = files_from(t),
            cf::Record::Credentials(c) => creds.push((c.tid as i32, creds_from(c))),
            _ => {}
        }
        off += len;
    }
    validator.finish().map_err(|e| frame_err(off, e))?;
    if !committed {
        return Err(ImageError::Content {
            path: path.into(),
            detail: "the image ends before its epoch commit".into(),
        });
    }
    verify_runs(bytes, &deferred).map_err(|(off, e)| frame_err(off, e))?;
    for (tid, c) in creds {
        if let Some(t) = e.threads.iter_mut().find(|t| t.tid == tid) {
            t.creds = c;
        }
    }
    Ok((e, runs, stats))
}

fn thread_from(t: &cf::ThreadState<'_>) -> Thread {
    Thread {
        host_tid: 0,
        tid: t.tid as i32,
        comm: t.comm.to_vec(),
        regs: UserRegs::from_words(&t.regs),
        restart: match t.restart {
            cf::Restart::None => Restart::None,
            cf::Restart::Restart => Restart::Restart,
            cf::Restart::Eintr => Restart::Eintr,
        },
        xsave: t.xsave.to_vec(),
        sigmask: t.sigmask,
        altstack: (t.altstack.sp, t.altstack.flags, t.altstack.size),
        creds: ThreadCreds::default(),
    }
}

/// A page run whose payload checksums are still to be checked.
struct DeferredRun {
    /// Offset of the frame in the image.
    frame: usize,
    payload: std::ops::Range<usize>,
    checksum: u64,
}

/// Parses the frame at the start of `bytes` (at `base` in the image). Every
/// frame's header checksum is checked here; a page run's payload checksums are
/// left for [`verify_runs`] (its record is parsed with every bound checked, and
/// nothing is applied before the checks are done), any other frame is verified
/// in full.
fn parse_deferring_runs<'a>(
    bytes: &'a [u8],
    base: usize,
    deferred: &mut Vec<DeferredRun>,
) -> Result<(cf::Frame<'a>, usize), cf::Error> {
    let header = cf::FrameHeader::parse(&cf::FrameHeaderView::new_checked(bytes)?)?;
    if header.kind != cf::FrameKind::PageRun {
        return cf::parse_frame_with_header(bytes);
    }
    let len = header.frame_len();
    let payload = bytes.get(cf::HEADER_LEN..len).ok_or(cf::Error::Truncated {
        needed: len as u64,
        available: bytes.len() as u64,
    })?;
    let run = cf::PageRun::parse_unverified(payload)?;
    deferred.push(DeferredRun {
        frame: base,
        payload: base + cf::HEADER_LEN..base + len,
        checksum: header.payload_checksum,
    });
    Ok((
        cf::Frame {
            header,
            record: cf::Record::PageRun(run),
        },
        len,
    ))
}

/// Hashing piece of [`verify_runs`]: the next one is prefetched meanwhile.
const PIECE: usize = 8 << 10;

/// Asks for `piece` in the cache ahead of its use. The hardware prefetcher stops at
/// 4 KiB page boundaries, and page-cache pages are 4 KiB: with this, two threads
/// hash a 1.5 GB image in ~85-110 ms instead of ~107-120 (a throwaway bench here).
fn prefetch(piece: &[u8]) {
    for line in piece.chunks(64) {
        // SAFETY: a prefetch is a hint and never faults; the address lies inside a
        // live slice (SSE is part of the x86_64 baseline).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr() as *const i8
            )
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = line;
    }
}

/// Checks the deferred page runs on every core (hashing a page-cache image is
/// bound by one core's memory latency, ~5.7 GB/s here; two cores nearly double
/// it). Returns the failure at the lowest offset.
fn verify_runs(bytes: &[u8], runs: &[DeferredRun]) -> Result<(), (usize, cf::Error)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
        .min(runs.len().max(1));
    let next = AtomicUsize::new(0);
    let check = || -> Option<(usize, cf::Error)> {
        let mut first: Option<(usize, cf::Error)> = None;
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(r) = runs.get(i) else { break };
            if let Err(e) = cf::page::verify_page_run_payload_with(
                &bytes[r.payload.clone()],
                r.checksum,
                PIECE,
                prefetch,
            ) {
                if first.as_ref().is_none_or(|f| r.frame < f.0) {
                    first = Some((r.frame, e));
                }
            }
        }
        first
    };
    let failures: Vec<(usize, cf::Error)> = if workers == 1 {
        check().into_iter().collect()
    } else {
        std::thread::scope(|sc| {
            let hs: Vec<_> = (0..workers).map(|_| sc.spawn(check)).collect();
            hs.into_iter()
                .filter_map(|h| h.join().ok().flatten())
                .collect()
        })
    };
    match failures.into_iter().min_by_key(|f| f.0) {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

fn vma_from(v: &cf::Vma<'_>) -> Vma {
    let kind = match v.kind {
        cf::VmaKind::Anonymous => VmaKind::Anonymous,
        cf::VmaKind::File => VmaKind::File {
            path: v.path.to_vec(),
            offset: v.file_offset,
        },
        cf::VmaKind::Vdso => VmaKind::Vdso,
        cf::VmaKind::Vvar => VmaKind::Vvar,
        cf::VmaKind::VvarVclock => VmaKind::VvarVclock,
        cf::VmaKind::Stack => VmaKind::Stack,
        cf::VmaKind::Heap => VmaKind::Heap,
        cf::VmaKind::Vsyscall => VmaKind::Vsyscall,
    };
    let p = v.prot.bits();
    Vma {
        start: v.start,
        end: v.end,
        prot: p & (PROT_R | PROT_W | PROT_X),
        shared: v.flags.contains(cf::VmaFlags::SHARED),
        growsdown: v.flags.contains(cf::VmaFlags::GROWSDOWN),
        droppable: v.flags.contains(cf::VmaFlags::DROPPABLE),
        reservation: v.is_reservation(),
        noreserve: v.flags.contains(cf::VmaFlags::NORESERVE),
        hugepage: v.flags.contains(cf::VmaFlags::HUGEPAGE),
        nohugepage: v.flags.contains(cf::VmaFlags::NOHUGEPAGE),
        dontdump: v.flags.contains(cf::VmaFlags::DONTDUMP),
        wipeonfork: v.flags.contains(cf::VmaFlags::WIPEONFORK),
        kind,
    }
}

fn addr_parts(a: &SocketAddr) -> (SockFamily, Vec<u8>, u16) {
    match a {
        SocketAddr::V4(v) => (SockFamily::Inet, v.ip().octets().to_vec(), v.port()),
        SocketAddr::V6(v) => (SockFamily::Inet6, v.ip().octets().to_vec(), v.port()),
    }
}

fn sock_type(t: cf::UnixType) -> i32 {
    match t {
        cf::UnixType::Stream => libc::SOCK_STREAM,
        cf::UnixType::Dgram => libc::SOCK_DGRAM,
        cf::UnixType::SeqPacket => libc::SOCK_SEQPACKET,
    }
}

fn fd_from(f: &cf::Fd<'_>) -> FdCapture {
    let kind = match &f.kind {
        cf::FdKind::Tty { path } => FdKind::Stdio {
            path: path.to_vec(),
        },
        cf::FdKind::RegularFile { path, offset, .. } => FdKind::Regular {
            path: path.to_vec(),
            offset: *offset,
        },
        cf::FdKind::Pipe {
            pipe_id,
            end,
            buffered,
        } => FdKind::Pipe {
            id: *pipe_id,
            write_end: *end == cf::PipeEnd::Write,
            contents: buffered.to_vec(),
        },
        cf::FdKind::Eventfd { count, semaphore } => FdKind::Eventfd {
            count: *count,
            semaphore: *semaphore,
        },
        cf::FdKind::Epoll { registrations } => FdKind::Epoll {
            entries: registrations
                .iter()
                .map(|r| EpollEntry {
                    tfd: r.tfd,
                    events: r.events,
                    data: r.data,
                })
                .collect(),
        },
        cf::FdKind::TcpListen {
            addr,
            protocol,
            backlog,
            reuseaddr,
        } => {
            let (family, a, port) = addr_parts(addr);
            FdKind::TcpListen {
                family,
                mptcp: *protocol == cf::InetProtocol::Mptcp,
                addr: a,
                port,
                backlog: *backlog,
                reuseaddr: *reuseaddr,
            }
        }
        cf::FdKind::UnixListen {
            path, socket_type, ..
        } => FdKind::UnixListen {
            path: path.to_vec(),
            sock_type: sock_type(*socket_type),
        },
        cf::FdKind::TcpConnected {
            local,
            peer,
            protocol,
        } => {
            let (family, la, lp) = addr_parts(local);
            let (_, pa, pp) = addr_parts(peer);
            FdKind::TcpConnected {
                family,
                mptcp: *protocol == cf::InetProtocol::Mptcp,
                local: (la, lp),
                peer: (pa, pp),
            }
        }
        cf::FdKind::UnixConnected { socket_type, .. } => FdKind::UnixConnected {
            sock_type: sock_type(*socket_type),
        },
        cf::FdKind::Other { description } => FdKind::Other {
            what: description.to_vec(),
        },
    };
    FdCapture {
        fd: f.fd,
        cloexec: f.fd_flags.bits() & 1 != 0,
        status_flags: f.status_flags,
        kind,
    }
}

/// The MappedFiles frame and one Credentials frame per thread (format 1.1).
type PutFrame<'p, W> = dyn FnMut(cf::Record<'_>, &mut W, &mut cf::EpochDigest, &mut WriteStats) -> Result<(), ImageError>
    + 'p;

fn put_identity<W: Write + ?Sized>(
    c: &Epoch,
    put: &mut PutFrame<'_, W>,
    w: &mut W,
    digest: &mut cf::EpochDigest,
    stats: &mut WriteStats,
) -> Result<(), ImageError> {
    let files: Vec<cf::MappedFile<'_>> = c
        .files
        .iter()
        .map(|f| {
            let mut hash = [0u8; cf::HASH_BYTES];
            let hash_kind = match f.hash {
                Some(h) => {
                    hash[..16].copy_from_slice(&h);
                    cf::HashKind::Xxh3_128
                }
                None => cf::HashKind::None,
            };
            cf::MappedFile {
                path: &f.path,
                dev: f.dev,
                ino: f.ino,
                size: f.size,
                mtime_sec: f.mtime_sec,
                mtime_nsec: f.mtime_nsec,
                hash_kind,
                hash,
            }
        })
        .collect();
    put(
        cf::Record::MappedFiles(cf::MappedFiles::new(&files)),
        w,
        digest,
        stats,
    )?;
    // dumpable is the process's (asked once, of the first thread).
    let dumpable = c.threads.first().map_or(1, |t| t.creds.dumpable);
    for t in &c.threads {
        let k = &t.creds;
        let groups: Vec<cf::Gid> = k.groups.iter().map(|&g| cf::Gid(g)).collect();
        let ids = |v: [u32; 4]| cf::IdSet {
            real: v[0],
            effective: v[1],
            saved: v[2],
            fs: v[3],
        };
        let rec = cf::Credentials {
            tid: t.tid as u32,
            uids: ids(k.uids),
            gids: ids(k.gids),
            securebits: k.securebits,
            no_new_privs: k.no_new_privs,
            seccomp: match k.seccomp {
                0 => cf::Seccomp::Disabled,
                1 => cf::Seccomp::Strict,
                _ => cf::Seccomp::Filter,
            },
            dumpable,
            caps: cf::CapSets {
                inheritable: k.caps[0],
                permitted: k.caps[1],
                effective: k.caps[2],
                bounding: k.caps[3],
                ambient: k.caps[4],
            },
            groups: cf::Table::from_slice(&groups),
        };
        put(cf::Record::Credentials(rec), w, digest, stats)?;
    }
    Ok(())
}

fn files_from(t: &cf::MappedFiles<'_>) -> Vec<FileIdentity> {
    t.files
        .iter()
        .map(|f| FileIdentity {
            path: f.path.to_vec(),
            dev: f.dev,
            ino: f.ino,
            size: f.size,
            mtime_sec: f.mtime_sec,
            mtime_nsec: f.mtime_nsec,
            hash: match f.hash_kind {
                cf::HashKind::Xxh3_128 => {
                    let mut h = [0u8; 16];
                    h.copy_from_slice(&f.hash[..16]);
                    Some(h)
                }
                cf::HashKind::None => None,
            },
        })
        .collect()
}

fn creds_from(c: &cf::Credentials<'_>) -> ThreadCreds {
    let ids = |v: cf::IdSet| [v.real, v.effective, v.saved, v.fs];
    let mut groups: Vec<u32> = c.groups.iter().map(|g| g.0).collect();
    groups.sort_unstable();
    ThreadCreds {
        uids: ids(c.uids),
        gids: ids(c.gids),
        groups,
        caps: [
            c.caps.inheritable,
            c.caps.permitted,
            c.caps.effective,
            c.caps.bounding,
            c.caps.ambient,
        ],
        securebits: c.securebits,
        no_new_privs: c.no_new_privs,
        seccomp: c.seccomp.proc_value(),
        dumpable: c.dumpable,
    }
}
