//! What is checked before anything is started: privileges, the CPU's XSAVE
//! layout, mapped files' identity, credentials, the vDSO and the address-space
//! layout. No side effects.

use super::*;

/// Checks, before anything else, that this driver may restore at all: new pid and
/// time namespaces, `clone3` with `set_tid` and `PR_SET_MM_MAP` need CAP_SYS_ADMIN
/// (this kernel accepts it for the last two in place of CAP_CHECKPOINT_RESTORE /
/// CAP_SYS_RESOURCE; the sandbox these tests run in has no CAP_SYS_RESOURCE).
/// Without it the restore would only fail halfway (EPERM from `unshare`).
pub fn check_privileges() -> Result<(), RestoreError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_ADMIN: u32 = 21;
    let missing: Vec<&str> = [(CAP_SYS_ADMIN, "CAP_SYS_ADMIN")]
        .into_iter()
        .filter(|(bit, _)| eff & (1 << bit) == 0)
        .map(|(_, name)| name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let uid = sys::euid();
    Err(RestoreError::Privilege(format!(
        "restore must run as root: it creates pid and time namespaces, gives threads their old ids and sets the program's memory layout (CAP_SYS_ADMIN); this driver runs as uid {uid} without {}",
        missing.join(", ")
    )))
}

/// Checks that the image can be restored on this machine, without side effects.
pub fn precheck(plan: &Epoch) -> Result<(), RestoreError> {
    check_cpu(plan)?;
    precheck_layout(plan)?;
    crate::capture::identity::check_all(&plan.files, &plan.vmas).map_err(|m| {
        RestoreError::FileChanged {
            path: m.path,
            detail: m.detail,
        }
    })?;
    crate::capture::creds::precheck(&plan.creds()).map_err(RestoreError::Credentials)
}

/// The image's XSAVE layout (size and XCR0) must be this machine's.
pub fn check_cpu(plan: &Epoch) -> Result<(), RestoreError> {
    let (host_size, host_xcr0) = sys::host_xsave_layout();
    if plan.process.xsave_size != host_size || plan.process.xcr0 != host_xcr0 {
        return Err(RestoreError::CpuMismatch {
            image_size: plan.process.xsave_size,
            image_xcr0: plan.process.xcr0,
            host_size,
            host_xcr0,
        });
    }
    Ok(())
}

/// The vDSO functions recorded at the dump (a digest, see [`crate::linux::vdso`])
/// must sit where this kernel's vDSO has them. Images without the record (older
/// format writers) are not checked.
pub(super) fn check_vdso_symbols(plan: &Epoch) -> Result<(), RestoreError> {
    use crate::linux::vdso;
    let Some(rec) = plan.files.iter().find(|f| f.path == vdso::VDSO_ENTRY) else {
        return Ok(());
    };
    let ours = vdso::own()?;
    if rec.hash != Some(vdso::digest(&ours)) {
        let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        return Err(RestoreError::VdsoSymbols {
            image: rec.size,
            host: ours.len(),
            image_kernel: String::from_utf8_lossy(&plan.process.kernel_release).into_owned(),
            host_kernel,
        });
    }
    Ok(())
}

pub(super) fn precheck_layout(plan: &Epoch) -> Result<(), RestoreError> {
    // Every file the program had mapped must still be there (the stub maps them by path).
    for v in &plan.vmas {
        if let VmaKind::File { path, .. } = &v.kind {
            let p = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
            if let Err(source) = std::fs::metadata(p) {
                return Err(RestoreError::MappedFile {
                    path: p.to_path_buf(),
                    start: v.start,
                    source,
                });
            }
        }
    }
    let stub_start = restore_stub::STUB_BASE;
    let stub_end = stub_start + restore_stub::STUB_MAX_LEN;
    for v in &plan.vmas {
        if v.start < stub_end && v.end > stub_start {
            return Err(RestoreError::StubOverlap {
                start: v.start,
                end: v.end,
                stub_start,
                stub_end,
            });
        }
    }
    check_vdso_symbols(plan)?;
    // The vDSO block is remapped whole; the sizes of its parts must match ours.
    let describe = |v: &[(VmaKind, u64)]| {
        v.iter()
            .map(|(k, l)| format!("{k:?} {l} B"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let special = |vm: &mut dyn Iterator<Item = (VmaKind, u64, u64)>| {
        let mut v: Vec<(VmaKind, u64, u64)> = vm
            .filter(|(k, _, _)| matches!(k, VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock))
            .collect();
        v.sort_by_key(|x| x.1);
        v
    };
    let image = special(&mut plan.vmas.iter().map(|v| (v.kind.clone(), v.start, v.end)));
    let own = procfs::read_maps(std::process::id() as i32).map_err(RestoreError::OwnMaps)?;
    let host = special(&mut own.iter().map(|m| {
        let k = match m.name.as_str() {
            "[vdso]" => VmaKind::Vdso,
            "[vvar]" => VmaKind::Vvar,
            "[vvar_vclock]" => VmaKind::VvarVclock,
            _ => VmaKind::Anonymous,
        };
        (k, m.start, m.end)
    }));
    let shape = |v: &[(VmaKind, u64, u64)]| -> Vec<(VmaKind, u64)> {
        v.iter().map(|(k, s, e)| (k.clone(), e - s)).collect()
    };
    let contiguous = image.windows(2).all(|w| w[0].2 == w[1].1);
    if shape(&image) != shape(&host) || !contiguous {
        return Err(RestoreError::VdsoMismatch {
            image: describe(&shape(&image)),
            host: describe(&shape(&host)),
        });
    }
    for f in &plan.fds {
        if let FdKind::Other { what } = &f.kind {
            return Err(RestoreError::Fd {
                fd: f.fd,
                detail: format!(
                    "cannot restore a descriptor of this kind: {}",
                    String::from_utf8_lossy(what)
                ),
            });
        }
    }
    Ok(())
}
