//! Starting the restored process: the namespace init (B), the program's process
//! (C) that execs the static stub, the stub's inputs (the epoch's metadata in a
//! memfd) and its report.

use super::*;

pub(super) fn stub_path(opts: &RestoreOptions) -> Result<PathBuf, RestoreError> {
    let p = match &opts.stub {
        Some(p) => p.clone(),
        None => match std::env::var_os("CS_RESTORE_STUB") {
            Some(p) => PathBuf::from(p),
            None => std::env::current_exe()
                .map_err(sys_err("locating our own executable"))?
                .with_file_name("cs-restore-stub"),
        },
    };
    std::fs::metadata(&p).map_err(|source| RestoreError::Stub {
        path: p.clone(),
        source,
    })?;
    Ok(p)
}

pub(super) fn now_ns(clock: libc::clockid_t) -> i128 {
    sys::clock_ns(clock)
}

pub(super) fn offset_line(clock_id: i32, off_ns: i128) -> String {
    let secs = off_ns.div_euclid(1_000_000_000);
    let nsecs = off_ns.rem_euclid(1_000_000_000);
    format!("{clock_id} {secs} {nsecs}\n")
}

/// Writes `msg` and `errno` to the pre-exec error pipe and exits; async-signal-safe.
pub(super) fn child_fail(errfd: RawFd, msg: &'static [u8]) -> ! {
    let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let eb = e.to_le_bytes();
    // SAFETY: write(2) from live buffers, then _exit; no allocation.
    unsafe {
        libc::write(errfd, eb.as_ptr() as *const libc::c_void, 4);
        libc::write(errfd, msg.as_ptr() as *const libc::c_void, msg.len());
        libc::_exit(127);
    }
}

pub(super) fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = f.read(&mut buf[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// The epoch's metadata frames (no page runs) in a memory file, for the stub.
pub(super) fn metadata_fd(plan: &Epoch) -> Result<OwnedFd, RestoreError> {
    let fd = sys::memfd("cs-epoch-meta").map_err(sys_err("memfd_create"))?;
    let mut f = File::from(fd);
    crate::image::encode_epoch(
        plan,
        None,
        &mut std::io::BufWriter::new(&mut f),
        &mut |_, _| {},
    )?;
    Ok(f.into())
}

/// Reads one report: the fixed header, then as many entries as it announces (the
/// stub does not close the pipe's other copies, so EOF cannot delimit it). `prefix`
/// are bytes of it already read.
pub(super) fn read_report(mut f: File, prefix: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; restore_stub::report::HEADER_LEN];
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut got = prefix.len();
    while got < buf.len() {
        let n = f.read(&mut buf[got..])?;
        if n == 0 {
            buf.truncate(got);
            return Ok(buf);
        }
        got += n;
    }
    let n = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
    let n = n.min(restore_stub::MAX_THREADS);
    buf.resize(
        restore_stub::report::HEADER_LEN + n * restore_stub::report::ENTRY_LEN,
        0,
    );
    f.read_exact(&mut buf[got..])?;
    // Then wait for end-of-file: the stub closes the report fd right after writing,
    // and it must have done so before its threads are taken over (else the fd stays
    // open in the program). Every other write end is closed by now.
    let mut rest = Vec::new();
    f.read_to_end(&mut rest)?;
    Ok(buf)
}

pub(super) fn read_preexec_error(err_r: OwnedFd) -> RestoreError {
    let mut buf = Vec::new();
    let _ = File::from(err_r).read_to_end(&mut buf);
    if buf.len() < 4 {
        return RestoreError::PreExec("the new process exited without a report".into());
    }
    let errno = i32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    RestoreError::PreExec(format!(
        "{}: {}",
        String::from_utf8_lossy(&buf[4..]),
        std::io::Error::from_raw_os_error(errno)
    ))
}

/// Everything the namespace init and the program's process use after the fork,
/// prepared before it (they may not allocate).
#[derive(Clone, Copy)]
pub(super) struct ChildSetup<'a> {
    pub(super) moves: &'a [FdMove],
    pub(super) adds: &'a [EpollAdd],
    pub(super) out_fd: Option<&'a OwnedFd>,
    pub(super) err_fd: Option<&'a OwnedFd>,
    pub(super) cwd: &'a CString,
    pub(super) rlimits: &'a [(u32, libc::rlimit64)],
    pub(super) argv: &'a [*const libc::c_char; 5],
    pub(super) envp: &'a [*const libc::c_char; 1],
    /// Pre-exec error pipe.
    pub(super) errw: RawFd,
    /// The program's executable, inherited for PR_SET_MM_MAP (-1 if none).
    pub(super) exe_raw: RawFd,
    /// Control fds the init closes after creating the program's process.
    pub(super) close_in_init: &'a [RawFd],
    /// Fd ranges the program's process closes before the exec.
    pub(super) close_gaps: &'a [(u32, u32)],
    /// Read end of the `done` pipe (kept by the init only).
    pub(super) done_r: RawFd,
    /// The program's umask.
    pub(super) umask: libc::mode_t,
}

/// Code of the namespace init (B). Never returns.
pub(super) fn init_main(set_tid: &[libc::pid_t; 1], setup: &ChildSetup<'_>) -> ! {
    let ChildSetup {
        moves,
        out_fd,
        err_fd,
        errw,
        close_in_init,
        done_r,
        ..
    } = *setup;
    // SAFETY: everything below is raw syscalls on data prepared before the fork.
    unsafe {
        // A mount namespace with a /proc of the new pid namespace, so that the
        // program's /proc/<getpid()> and /proc/self/task/<gettid()> are its own
        // (with the host's /proc they name another process). Mounts made on the
        // host later still reach it: / is made a slave, not private.
        if libc::unshare(libc::CLONE_NEWNS) < 0 {
            child_fail(errw, b"unshare(CLONE_NEWNS)");
        }
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ) < 0
        {
            child_fail(errw, b"making / a mount slave in the new mount namespace");
        }
        if libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ) < 0
        {
            child_fail(errw, b"mounting /proc for the new pid namespace");
        }
        let mut args: libc::clone_args = std::mem::zeroed();
        args.exit_signal = libc::SIGCHLD as u64;
        args.set_tid = set_tid.as_ptr() as u64;
        args.set_tid_size = 1;
        let c = libc::syscall(
            libc::SYS_clone3,
            &args as *const _,
            std::mem::size_of::<libc::clone_args>(),
        );
        if c < 0 {
            child_fail(errw, b"clone3 with set_tid (is the pid free?)");
        }
        if c == 0 {
            program_main(setup);
        }
        // Close everything we hold (the driver waits for EOF on some of these),
        // then reap until the program is gone.
        for m in moves {
            libc::close(m.tmp.as_raw_fd());
        }
        for &fd in close_in_init {
            libc::close(fd);
        }
        for f in [out_fd, err_fd].into_iter().flatten() {
            libc::close(f.as_raw_fd());
        }
        // The init needs no stdio; holding the driver's would keep its pipes open.
        for fd in 0..3 {
            libc::close(fd);
        }
        libc::close(errw);
        // Until the driver says every page is in, its death kills the program.
        let mut b = [0u8; 1];
        loop {
            let n = libc::read(done_r, b.as_mut_ptr() as *mut libc::c_void, 1);
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if n != 1 {
                libc::kill(c as libc::pid_t, libc::SIGKILL);
            }
            break;
        }
        libc::close(done_r);
        loop {
            let mut status = 0;
            let r = libc::waitpid(-1, &mut status, 0);
            if r < 0 && *libc::__errno_location() == libc::ECHILD {
                libc::_exit(0);
            }
            if r == c as i32 {
                if libc::WIFEXITED(status) {
                    libc::_exit(libc::WEXITSTATUS(status));
                }
                if libc::WIFSIGNALED(status) {
                    libc::_exit(128 + libc::WTERMSIG(status));
                }
            }
        }
    }
}

/// Code of the program's process (C) before the exec. Never returns.
///
/// # Safety
/// Call only in a freshly forked child: it replaces the fd table and execs.
pub(super) unsafe fn program_main(setup: &ChildSetup<'_>) -> ! {
    let ChildSetup {
        moves,
        adds,
        out_fd,
        err_fd,
        cwd,
        rlimits,
        argv,
        envp,
        errw,
        exe_raw,
        close_gaps,
        umask,
        ..
    } = *setup;
    // SAFETY: raw syscalls only, on data prepared before the fork.
    unsafe {
        // Without O_CLOEXEC even where the program had it: the fds must survive the
        // exec of the stub, which sets FD_CLOEXEC back from the image's fd table.
        for m in moves {
            if libc::dup3(m.tmp.as_raw_fd(), m.target, 0) < 0 {
                child_fail(errw, b"dup3 of a prepared fd into place");
            }
        }
        for m in moves {
            libc::close(m.tmp.as_raw_fd());
        }
        if let Some(f) = out_fd {
            libc::dup2(f.as_raw_fd(), 1);
        }
        if let Some(f) = err_fd {
            libc::dup2(f.as_raw_fd(), 2);
        }
        for a in adds {
            let mut ev = libc::epoll_event {
                events: a.events,
                u64: a.data,
            };
            if libc::epoll_ctl(a.epfd, libc::EPOLL_CTL_ADD, a.tfd, &mut ev) < 0 {
                child_fail(errw, b"epoll_ctl(ADD) of a checkpointed registration");
            }
        }
        if libc::chdir(cwd.as_ptr()) < 0 {
            child_fail(errw, b"chdir to the checkpointed working directory");
        }
        libc::umask(umask);
        for (res, lim) in rlimits {
            // Hard limits cannot be raised here (no CAP_SYS_RESOURCE): keep ours if lower.
            let mut cur = libc::rlimit64 {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::prlimit64(
                0,
                *res as libc::__rlimit_resource_t,
                std::ptr::null(),
                &mut cur,
            );
            let want = libc::rlimit64 {
                rlim_cur: lim.rlim_cur.min(cur.rlim_max),
                rlim_max: cur.rlim_max,
            };
            libc::prlimit64(
                0,
                *res as libc::__rlimit_resource_t,
                &want,
                std::ptr::null_mut(),
            );
        }
        // Default dispositions and an empty mask: the stub installs the program's.
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // Nothing but the program's fds and the stub's reaches the exec.
        for &(lo, hi) in close_gaps {
            libc::syscall(libc::SYS_close_range, lo, hi, 0);
        }
        // The stub's two fds (and the executable's) must survive the exec.
        if exe_raw >= 0 {
            libc::fcntl(exe_raw, libc::F_SETFD, 0);
        }
        for a in [argv[1], argv[2], argv[3]] {
            let mut fd = 0i32;
            let mut p = a;
            while *p != 0 {
                fd = fd * 10 + (*p as u8 - b'0') as i32;
                p = p.add(1);
            }
            libc::fcntl(fd, libc::F_SETFD, 0);
        }
        libc::execve(argv[0], argv.as_ptr(), envp.as_ptr());
        child_fail(errw, b"exec of the restore stub");
    }
}

/// The program's pid in our namespace: the only child of the namespace init.
pub(super) fn program_pid(init_pid: i32) -> Result<i32, RestoreError> {
    let path = format!("/proc/{init_pid}/task/{init_pid}/children");
    let s = std::fs::read_to_string(&path).map_err(sys_err(format!("reading {path}")))?;
    s.split_whitespace()
        .next()
        .and_then(|x| x.parse().ok())
        .ok_or_else(|| RestoreError::NoReport(format!("{path} lists no child")))
}
