//! Releasing the restored threads: each steps through `rt_sigreturn` at the stub's
//! gadget into its own registers, credentials are given back, `/proc/PID/exe` is
//! pointed at the program again, and the threads are detached.

use super::*;

/// Steps every thread through `rt_sigreturn` at the stub's gadget, unmaps the stub
/// from the main thread, and lets the program run.
pub(super) fn finish_threads(
    host_pid: i32,
    report: &Report<'_>,
    plan: &Epoch,
    exe_fd: Option<RawFd>,
) -> Result<(), CaptureError> {
    let tids = procfs::list_tids(host_pid)?;
    let mut by_inner = std::collections::HashMap::new();
    let mut seized = Vec::new();
    let release = |seized: &[i32]| {
        for &t in seized {
            let _ = sys::ptrace_detach(t, 0);
        }
    };
    for &t in &tids {
        let st = procfs::read_status_task(host_pid, t)?;
        by_inner.insert(*st.ns_pid.last().unwrap_or(&t), t);
        sys::ptrace_seize(t, sys::PTRACE_O_TRACESYSGOOD | sys::PTRACE_O_EXITKILL)
            .map_err(CaptureError::ptrace("SEIZE", t))?;
        seized.push(t);
        sys::ptrace_interrupt(t).map_err(CaptureError::ptrace("INTERRUPT", t))?;
        loop {
            match sys::waitpid(t, false).map_err(CaptureError::ptrace("waitpid", t))? {
                Some(WaitStatus::Stopped(_, _, sys::PTRACE_EVENT_STOP)) => break,
                Some(WaitStatus::Stopped(_, sig, _)) => {
                    sys::ptrace_cont(t, sig).map_err(CaptureError::ptrace("CONT", t))?;
                }
                other => {
                    return Err(CaptureError::UnexpectedStop {
                        tid: t,
                        phase: "restore finish",
                        detail: format!("{other:?}"),
                    })
                }
            }
        }
    }
    // Signals that arrive during the injected syscalls are held back until the
    // threads are released.
    let deferred = Deferred::default();
    let inj = Injector {
        pid: host_pid,
        gadget: report.gadget,
        deferred: deferred.clone(),
    };
    let mut main_regs = None;
    let mut stopped = Vec::new();
    for (i, (inner, rsp)) in report.threads().enumerate() {
        let t = *by_inner
            .get(&(inner as i32))
            .ok_or(CaptureError::UnexpectedStop {
                tid: inner as i32,
                phase: "restore finish",
                detail: "the stub reported a thread that does not exist".into(),
            })?;
        let mut r = sys::ptrace_getregs(t).map_err(CaptureError::ptrace("GETREGS", t))?;
        r.rax = 15; // rt_sigreturn
        r.rsp = rsp;
        let after = inj.step(t, &r)?;
        if i == 0 {
            main_regs = Some((t, after));
        }
        stopped.push(crate::capture::creds::Stopped {
            host_tid: t,
            tid: inner as i32,
            regs: after,
        });
    }
    let (main, regs) = main_regs.ok_or(CaptureError::ProcessGone { pid: host_pid })?;
    let len = report.stub_end - report.stub_start;
    let rc = inj.syscall(main, &regs, 11, [report.stub_start, len, 0, 0, 0, 0])?;
    if rc != 0 {
        release(&seized);
        return Err(CaptureError::Inject {
            tid: main,
            nr: 11,
            detail: format!("munmap of the stub: errno {}", -rc),
        });
    }
    if let Some(fd) = exe_fd {
        if let Err(e) = set_exe(host_pid, main, &regs, plan, fd, &deferred) {
            tracing::warn!(
                pid = host_pid,
                "/proc/{host_pid}/exe still names the restore stub: {e}"
            );
        }
    }
    // After the steps that need privileges (they may be dropped here), before
    // the stop below (injected syscalls would take it).
    let vdso = plan
        .vmas
        .iter()
        .find(|v| v.kind == VmaKind::Vdso)
        .map(|v| (v.start, v.end));
    crate::capture::creds::apply(host_pid, &stopped, &plan.creds(), vdso, &deferred)?;
    // Test switch `CS_TEST_RELEASE_STOPPED=1`: released stopped, so that a test
    // can read the restored state before the program changes it (then SIGCONT).
    if plan.process.stopped || std::env::var_os("CS_TEST_RELEASE_STOPPED").is_some() {
        // Queued while every thread is still traced: each one takes the stop on
        // its way back to user mode, before it runs an instruction.
        let _ = sys::kill(host_pid, libc::SIGSTOP);
    }
    release(&seized);
    deferred.redeliver(host_pid);
    Ok(())
}

/// Points `/proc/PID/exe` back at the program's executable: with the stub unmapped,
/// `PR_SET_MM_MAP` may change the exe file (it is refused with EBUSY while the old one
/// is still mapped). Runs in the main thread at a `syscall` of the restored vDSO,
/// with the `prctl_mm_map` and auxv in a scratch page; then closes the inherited fd.
pub(super) fn set_exe(
    pid: i32,
    main: i32,
    regs: &sys::UserRegs,
    plan: &Epoch,
    fd: RawFd,
    deferred: &Deferred,
) -> Result<(), CaptureError> {
    let vdso = plan
        .vmas
        .iter()
        .find(|v| v.kind == VmaKind::Vdso)
        .map(|v| (v.start, v.end));
    let inj = Injector::new(pid, vdso, deferred)?;
    let fail = |nr: u64, what: &str, rc: i64| CaptureError::Inject {
        tid: main,
        nr,
        detail: format!("{what}: errno {}", -rc),
    };
    let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let scratch = inj.syscall(main, regs, 9, [0, 4096, prot, flags, u64::MAX, 0])?;
    if scratch < 0 {
        return Err(fail(9, "mmap", scratch));
    }
    let scratch = scratch as u64;
    let result = (|| {
        let auxv = &plan.process.auxv[..plan.process.auxv.len().min(2048)];
        let m = &plan.process.mm;
        let mut st = Vec::with_capacity(104 + auxv.len());
        for v in [
            m.start_code,
            m.end_code,
            m.start_data,
            m.end_data,
            m.start_brk,
            m.brk,
            m.start_stack,
            m.arg_start,
            m.arg_end,
            m.env_start,
            m.env_end,
            scratch + 128,
        ] {
            st.extend_from_slice(&v.to_le_bytes());
        }
        st.extend_from_slice(&(auxv.len() as u32).to_le_bytes());
        st.extend_from_slice(&(fd as u32).to_le_bytes());
        st.resize(128, 0);
        st.extend_from_slice(auxv);
        sys::write_remote(pid, scratch, &st).map_err(|source| CaptureError::Memory {
            pid,
            addr: scratch,
            len: st.len(),
            source,
        })?;
        let rc = inj.syscall(
            main,
            regs,
            157,
            [
                libc::PR_SET_MM as u64,
                libc::PR_SET_MM_MAP as u64,
                scratch,
                104,
                0,
                0,
            ],
        )?;
        if rc < 0 {
            return Err(fail(157, "prctl(PR_SET_MM_MAP, exe_fd)", rc));
        }
        Ok(())
    })();
    let _ = inj.syscall(main, regs, 3, [fd as u64, 0, 0, 0, 0, 0]);
    let _ = inj.syscall(main, regs, 11, [scratch, 4096, 0, 0, 0, 0]);
    result
}
