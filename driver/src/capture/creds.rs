//! Credentials: captured per thread, given back per thread at restore.
//!
//! Capture: ids, groups, capability sets, no_new_privs and seccomp come from
//! `/proc/PID/task/TID/status` (read in the freeze with the thread's other state);
//! securebits (and, once, the process's dumpable flag) have no procfs view and are
//! asked for with an injected `prctl` ([`query_thread`]).
//!
//! Restore: [`precheck`] refuses, before anything is started, an image whose
//! credentials this restorer cannot give back. [`apply`] runs in every thread once it
//! is back in the program's own state (after `rt_sigreturn`, the stub unmapped and
//! `/proc/PID/exe` set, which needs privileges), as injected syscalls, in this
//! order: securebits `NO_SETUID_FIXUP` (so that the id changes leave capabilities
//! alone), `setgroups`, `setresgid`, `setfsgid`, `setresuid`, `setfsuid`, `capset`
//! (inheritable), bounding-set drops, ambient raises, the image's securebits, `capset`
//! (all three sets), `no_new_privs`; then `PR_SET_DUMPABLE` once. Every thread is then
//! read back and compared; any difference fails the restore (the caller kills the
//! program before it has run).

use crate::capture::inject::Injector;
use crate::error::CaptureError;
use crate::linux::procfs::{self, Status};
use crate::linux::sys::UserRegs;

/// One thread's credentials.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThreadCreds {
    /// Real, effective, saved, filesystem uid.
    pub uids: [u32; 4],
    /// Real, effective, saved, filesystem gid.
    pub gids: [u32; 4],
    /// Supplementary groups, sorted (the kernel keeps them sorted).
    pub groups: Vec<u32>,
    /// Inheritable, permitted, effective, bounding, ambient.
    pub caps: [u64; 5],
    pub securebits: u32,
    pub no_new_privs: bool,
    /// 0 none, 1 strict, 2 filter (as `/proc/PID/status` shows it).
    pub seccomp: u32,
    /// `PR_GET_DUMPABLE` of the process (0, 1 or 2).
    pub dumpable: u8,
}

const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SETPCAP: u32 = 8;
const SECBIT_NOROOT: u32 = 1;
const SECBIT_NO_SETUID_FIXUP: u32 = 1 << 2;
const SECBIT_KEEP_CAPS: u32 = 1 << 4;
/// Every `*_LOCKED` securebit (bits 1, 3, 5, 7, 9, 11).
const SECBIT_LOCKS: u32 = 0xaaa;
const CAP_NAMES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// Names the capabilities in `bits` (`cap_net_admin,cap_sys_time`).
pub fn cap_names(bits: u64) -> String {
    (0..64u32)
        .filter(|b| bits & (1u64 << b) != 0)
        .map(|b| match CAP_NAMES.get(b as usize) {
            Some(n) => format!("cap_{n}"),
            None => format!("cap_{b}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl ThreadCreds {
    /// The status part (securebits and dumpable left 0 / 1 for [`query_thread`]).
    pub fn from_status(st: &Status) -> ThreadCreds {
        let mut groups = st.groups.clone();
        groups.sort_unstable();
        ThreadCreds {
            uids: st.uids,
            gids: st.gids,
            groups,
            caps: st.caps,
            securebits: 0,
            no_new_privs: st.no_new_privs,
            seccomp: st.seccomp,
            dumpable: 1,
        }
    }

    /// Everything `/proc/PID/status` shows equals (groups compared sorted).
    fn status_matches(&self, st: &Status) -> bool {
        let mut g = st.groups.clone();
        g.sort_unstable();
        self.uids == st.uids
            && self.gids == st.gids
            && self.groups == g
            && self.caps == st.caps
            && self.no_new_privs == st.no_new_privs
            && self.seccomp == st.seccomp
    }

    /// What differs from `st` and `securebits`, in words.
    fn describe_difference(&self, st: &Status, securebits: u32) -> String {
        let mut d = Vec::new();
        let mut g = st.groups.clone();
        g.sort_unstable();
        if self.uids != st.uids {
            d.push(format!("uids {:?} (want {:?})", st.uids, self.uids));
        }
        if self.gids != st.gids {
            d.push(format!("gids {:?} (want {:?})", st.gids, self.gids));
        }
        if self.groups != g {
            d.push(format!("groups {g:?} (want {:?})", self.groups));
        }
        for (i, name) in [
            "inheritable",
            "permitted",
            "effective",
            "bounding",
            "ambient",
        ]
        .iter()
        .enumerate()
        {
            if self.caps[i] != st.caps[i] {
                d.push(format!(
                    "{name} capabilities {:#x} (want {:#x})",
                    st.caps[i], self.caps[i]
                ));
            }
        }
        if self.no_new_privs != st.no_new_privs {
            d.push(format!(
                "no_new_privs {} (want {})",
                st.no_new_privs, self.no_new_privs
            ));
        }
        if self.seccomp != st.seccomp {
            d.push(format!("seccomp {} (want {})", st.seccomp, self.seccomp));
        }
        if self.securebits != securebits {
            d.push(format!(
                "securebits {securebits:#x} (want {:#x})",
                self.securebits
            ));
        }
        d.join(", ")
    }
}

fn prctl_query(
    inj: &Injector,
    tid: i32,
    regs: &UserRegs,
    frame_rsp: Option<u64>,
    option: i32,
) -> Result<i64, CaptureError> {
    let args = [option as u64, 0, 0, 0, 0, 0];
    let rc = match frame_rsp {
        Some(rsp) => inj.syscall_framed(tid, regs, rsp, SYS_PRCTL, args)?,
        None => inj.syscall(tid, regs, SYS_PRCTL, args)?,
    };
    if rc < 0 {
        return Err(CaptureError::Inject {
            tid,
            nr: SYS_PRCTL,
            detail: format!("prctl({option}) query: errno {}", -rc),
        });
    }
    Ok(rc)
}

/// Asks a frozen thread for its securebits and, with `dumpable`, the process's
/// dumpable flag (injected `prctl`s at the capture's safe trampoline, with rsp at the
/// thread's safety frame).
pub fn query_thread(
    inj: &Injector,
    tid: i32,
    regs: &UserRegs,
    frame_rsp: u64,
    dumpable: bool,
) -> Result<(u32, Option<u8>), CaptureError> {
    let sb = prctl_query(inj, tid, regs, Some(frame_rsp), libc::PR_GET_SECUREBITS)? as u32;
    let d = if dumpable {
        Some(prctl_query(inj, tid, regs, Some(frame_rsp), libc::PR_GET_DUMPABLE)? as u8)
    } else {
        None
    };
    Ok((sb, d))
}

fn own_securebits() -> u32 {
    // SAFETY: prctl(PR_GET_SECUREBITS) takes no pointers.
    let rc = unsafe { libc::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0) };
    rc.max(0) as u32
}

/// Refuses (with the reason) an image whose credentials this restorer cannot give
/// back. Nothing has been started yet when it runs. `creds` are the image's, by the
/// tid the program sees.
pub fn precheck(creds: &[(i32, ThreadCreds)]) -> Result<(), String> {
    let me = procfs::read_status_path("/proc/thread-self/status")
        .map_err(|e| format!("reading our own credentials: {e}"))?;
    let my_sb = own_securebits();
    // What the stub's threads hold: ours after an exec of a file without file
    // capabilities by (e)uid 0: permitted = effective = bounding | inheritable.
    let stub_perm = me.caps[3] | me.caps[0];
    for (tid, c) in creds {
        if c.seccomp != 0 {
            return Err(format!(
                "thread {tid} ran under seccomp (mode {}); seccomp filters cannot be restored",
                c.seccomp
            ));
        }
        if me.seccomp != 0 {
            return Err(format!(
                "this restorer runs under seccomp (mode {}), which the restored program would \
                 inherit; it had none",
                me.seccomp
            ));
        }
        if me.no_new_privs && !c.no_new_privs {
            return Err(format!(
                "this restorer runs with no_new_privs, which cannot be cleared, and thread {tid} \
                 did not have it"
            ));
        }
        let mut my_groups = me.groups.clone();
        my_groups.sort_unstable();
        let same = c.uids == me.uids
            && c.gids == me.gids
            && c.groups == my_groups
            && c.caps == [me.caps[0], stub_perm, stub_perm, me.caps[3], me.caps[4]]
            && c.securebits == my_sb & !SECBIT_KEEP_CAPS;
        if same {
            continue;
        }
        if me.uids[1] != 0 {
            return Err(format!(
                "thread {tid} ran as uid {} gid {} with other credentials than this restorer \
                 (euid {}); only root can give them back",
                c.uids[1], c.gids[1], me.uids[1]
            ));
        }
        let need = (1u64 << CAP_SETUID) | (1u64 << CAP_SETGID) | (1u64 << CAP_SETPCAP);
        if me.caps[3] & need != need || me.caps[2] & need != need {
            return Err(format!(
                "giving thread {tid} its credentials back needs {} in this restorer's \
                 effective and bounding sets",
                cap_names(need)
            ));
        }
        if my_sb & (SECBIT_LOCKS | SECBIT_NOROOT) != 0 {
            return Err(format!(
                "this restorer's securebits {my_sb:#x} are locked or noroot; thread {tid}'s \
                 credentials cannot be set"
            ));
        }
        let [inh, perm, _, bnd, _] = c.caps;
        let missing =
            (perm & !stub_perm) | (bnd & !me.caps[3]) | (inh & !(me.caps[0] | me.caps[3]));
        if missing != 0 {
            return Err(format!(
                "thread {tid} held capabilities this restorer cannot grant (not in its bounding \
                 set): {}",
                cap_names(missing)
            ));
        }
    }
    Ok(())
}

const SYS_MMAP: u64 = 9;
const SYS_MUNMAP: u64 = 11;
const SYS_SETRESUID: u64 = 117;
const SYS_SETRESGID: u64 = 119;
const SYS_SETGROUPS: u64 = 116;
const SYS_SETFSUID: u64 = 122;
const SYS_SETFSGID: u64 = 123;
const SYS_CAPSET: u64 = 126;
const SYS_PRCTL: u64 = 157;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// One thread to finish: its tid in our namespace, the tid the program sees, and its
/// registers (the program's own, after `rt_sigreturn`).
#[derive(Clone, Copy, Debug)]
pub struct Stopped {
    pub host_tid: i32,
    pub tid: i32,
    pub regs: UserRegs,
}

/// Gives every thread its credentials back and checks them (see the module docs).
/// `threads[0]` is the main thread. `vdso` is the restored vDSO (for a `syscall`).
pub fn apply(
    pid: i32,
    threads: &[Stopped],
    creds: &[(i32, ThreadCreds)],
    vdso: Option<(u64, u64)>,
    deferred: &crate::capture::inject::Deferred,
) -> Result<(), CaptureError> {
    let inj = Injector::new(pid, vdso, deferred)?;
    let main = threads.first().ok_or(CaptureError::ProcessGone { pid })?;
    let want = |t: &Stopped| {
        creds
            .iter()
            .find(|(tid, _)| *tid == t.tid)
            .map(|(_, c)| c)
            .ok_or_else(|| CaptureError::Inject {
                tid: t.host_tid,
                nr: SYS_SETRESUID,
                detail: format!("the image has no credentials for thread {}", t.tid),
            })
    };
    let call = |t: &Stopped, nr: u64, args: [u64; 6], what: &str| -> Result<i64, CaptureError> {
        let rc = inj.syscall(t.host_tid, &t.regs, nr, args)?;
        if rc < 0 {
            return Err(CaptureError::Inject {
                tid: t.host_tid,
                nr,
                detail: format!("{what} (restoring credentials): errno {}", -rc),
            });
        }
        Ok(rc)
    };
    let most_groups = creds.iter().map(|(_, c)| c.groups.len()).max().unwrap_or(0);
    let len = (4096 + most_groups as u64 * 4).div_ceil(4096) * 4096;
    let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let scratch = call(main, SYS_MMAP, [0, len, prot, flags, u64::MAX, 0], "mmap")? as u64;
    let result = (|| {
        let mut changed = false;
        for t in threads {
            let c = want(t)?;
            let st = procfs::read_status_task(pid, t.host_tid)?;
            let sb = prctl_query(&inj, t.host_tid, &t.regs, None, libc::PR_GET_SECUREBITS)? as u32;
            if c.status_matches(&st) && c.securebits == sb {
                continue;
            }
            changed = true;
            set_thread(t, c, &st, scratch, &call)?;
        }
        let d = prctl_query(&inj, main.host_tid, &main.regs, None, libc::PR_GET_DUMPABLE)?;
        let want_d = want(main)?.dumpable;
        if changed || d != i64::from(want_d) {
            let set = u64::from(want_d == 1);
            call(
                main,
                SYS_PRCTL,
                [libc::PR_SET_DUMPABLE as u64, set, 0, 0, 0, 0],
                "prctl(PR_SET_DUMPABLE)",
            )?;
        }
        // Read every thread back.
        for t in threads {
            let c = want(t)?;
            let st = procfs::read_status_task(pid, t.host_tid)?;
            let sb = prctl_query(&inj, t.host_tid, &t.regs, None, libc::PR_GET_SECUREBITS)? as u32;
            if !c.status_matches(&st) || c.securebits != sb {
                return Err(CaptureError::Inject {
                    tid: t.host_tid,
                    nr: SYS_SETRESUID,
                    detail: format!(
                        "thread {} did not get its credentials back: {}",
                        t.tid,
                        c.describe_difference(&st, sb)
                    ),
                });
            }
        }
        let d = prctl_query(&inj, main.host_tid, &main.regs, None, libc::PR_GET_DUMPABLE)?;
        let want_d = i64::from(want(main)?.dumpable);
        // 2 (suid_dumpable) cannot be set with prctl; 0 is the closest.
        if d != want_d && !(want_d == 2 && d == 0) {
            return Err(CaptureError::Inject {
                tid: main.host_tid,
                nr: SYS_PRCTL,
                detail: format!("dumpable is {d}, the image has {want_d}"),
            });
        }
        Ok(())
    })();
    let _ = inj.syscall(
        main.host_tid,
        &main.regs,
        SYS_MUNMAP,
        [scratch, len, 0, 0, 0, 0],
    );
    result
}

/// Runs one syscall in a stopped thread; an errno is an error naming `what`.
type SyscallIn<'a> = dyn Fn(&Stopped, u64, [u64; 6], &str) -> Result<i64, CaptureError> + 'a;

/// The syscalls that give one thread `c`, its current state being `st`.
fn set_thread(
    t: &Stopped,
    c: &ThreadCreds,
    st: &Status,
    scratch: u64,
    call: &SyscallIn<'_>,
) -> Result<(), CaptureError> {
    let pid = t.host_tid;
    let put = |addr: u64, bytes: &[u8]| {
        crate::linux::sys::write_remote(pid, addr, bytes).map_err(|source| CaptureError::Memory {
            pid,
            addr,
            len: bytes.len(),
            source,
        })
    };
    // capset's header (version 3, pid 0 = this thread) at +0, its two data words at +16.
    let capset = |eff: u64, perm: u64, inh: u64, what: &str| -> Result<(), CaptureError> {
        let mut b = Vec::with_capacity(40);
        b.extend_from_slice(&LINUX_CAPABILITY_VERSION_3.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.resize(16, 0);
        for half in [0, 32] {
            for v in [eff, perm, inh] {
                b.extend_from_slice(&((v >> half) as u32).to_le_bytes());
            }
        }
        put(scratch, &b)?;
        call(t, SYS_CAPSET, [scratch, scratch + 16, 0, 0, 0, 0], what)?;
        Ok(())
    };
    let pr = |opt: i32, a: u64, b: u64, what: &str| {
        call(t, SYS_PRCTL, [opt as u64, a, b, 0, 0, 0], what).map(|_| ())
    };
    pr(
        libc::PR_SET_SECUREBITS,
        u64::from(SECBIT_NO_SETUID_FIXUP),
        0,
        "prctl(PR_SET_SECUREBITS, NO_SETUID_FIXUP)",
    )?;
    let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
    put(scratch + 4096, &groups)?;
    call(
        t,
        SYS_SETGROUPS,
        [c.groups.len() as u64, scratch + 4096, 0, 0, 0, 0],
        "setgroups",
    )?;
    let [r, e, s, fs] = c.gids.map(u64::from);
    call(t, SYS_SETRESGID, [r, e, s, 0, 0, 0], "setresgid")?;
    // setfsgid/setfsuid return the old id, never an error; the read-back checks them.
    let _ = call(t, SYS_SETFSGID, [fs, 0, 0, 0, 0, 0], "setfsgid");
    let [r, e, s, fs] = c.uids.map(u64::from);
    call(t, SYS_SETRESUID, [r, e, s, 0, 0, 0], "setresuid")?;
    let _ = call(t, SYS_SETFSUID, [fs, 0, 0, 0, 0, 0], "setfsuid");
    let [inh, perm, eff, bnd, amb] = c.caps;
    // Still fully privileged (NO_SETUID_FIXUP): set the inheritable set first, since
    // ambient raises need their capability in it.
    capset(st.caps[2], st.caps[1], inh, "capset(inheritable)")?;
    for cap in 0..64u64 {
        if st.caps[3] & !bnd & (1 << cap) != 0 {
            pr(libc::PR_CAPBSET_DROP, cap, 0, "prctl(PR_CAPBSET_DROP)")?;
        }
    }
    pr(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as u64,
        0,
        "prctl(PR_CAP_AMBIENT_CLEAR_ALL)",
    )?;
    for cap in 0..64u64 {
        if amb & (1 << cap) != 0 {
            call(
                t,
                SYS_PRCTL,
                [
                    libc::PR_CAP_AMBIENT as u64,
                    libc::PR_CAP_AMBIENT_RAISE as u64,
                    cap,
                    0,
                    0,
                    0,
                ],
                "prctl(PR_CAP_AMBIENT_RAISE)",
            )?;
        }
    }
    pr(
        libc::PR_SET_SECUREBITS,
        u64::from(c.securebits),
        0,
        "prctl(PR_SET_SECUREBITS)",
    )?;
    capset(eff, perm, inh, "capset")?;
    if c.no_new_privs {
        pr(
            libc::PR_SET_NO_NEW_PRIVS,
            1,
            0,
            "prctl(PR_SET_NO_NEW_PRIVS)",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names() {
        assert_eq!(cap_names(0), "");
        assert_eq!(
            cap_names((1 << 10) | (1 << 21)),
            "cap_net_bind_service,cap_sys_admin"
        );
        assert_eq!(cap_names(1 << 40), "cap_checkpoint_restore");
        assert_eq!(cap_names(1 << 50), "cap_50");
    }
}
