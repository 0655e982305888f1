//! Probes for the kernel features a restore relies on ([`feature`] bits), sent in
//! the replication handshake so a backup that could not restore the primary's
//! epochs refuses before anything is sent.

use std::os::fd::{FromRawFd, OwnedFd};

use crate::replica::msg::feature;

/// The [`feature::RESTORE`] bits this machine has. `CS_TEST_HIDE_KERNEL_FEATURES`
/// (a number, e.g. `16` for MPTCP) clears bits, so tests can play a machine that
/// lacks them.
pub fn restore_features() -> u64 {
    let mut bits = 0;
    if userfaultfd_works() {
        bits |= feature::USERFAULTFD;
    }
    if std::path::Path::new("/proc/self/ns/time").exists() {
        bits |= feature::TIME_NS;
    }
    let release = kernel_release();
    if release >= (5, 5) {
        bits |= feature::CLONE3_SET_TID;
    }
    if release >= (6, 11) {
        bits |= feature::MAP_DROPPABLE;
    }
    if std::fs::read_to_string("/proc/sys/net/mptcp/enabled").is_ok_and(|s| s.trim() == "1") {
        bits |= feature::MPTCP;
    }
    let hidden = std::env::var("CS_TEST_HIDE_KERNEL_FEATURES")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    bits & !hidden
}

/// The running kernel's major and minor version (0.0 if unreadable).
pub fn kernel_release() -> (u32, u32) {
    let Ok(u) = nix::sys::utsname::uname() else {
        return (0, 0);
    };
    let r = u.release().to_string_lossy();
    let mut it = r.split(|c: char| !c.is_ascii_digit());
    let major = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let minor = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (major, minor)
}

/// Whether a userfaultfd opens and completes its API handshake.
fn userfaultfd_works() -> bool {
    // SAFETY: userfaultfd(2) takes only integer flags and returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_userfaultfd,
            libc::O_CLOEXEC as u64 | super::uffd::UFFD_USER_MODE_ONLY,
        )
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    use std::os::fd::AsRawFd;
    super::uffd::api(fd.as_raw_fd(), 0).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The project's machines (Linux 6.18, root) have every feature a restore needs.
    #[test]
    fn this_machine_has_every_restore_feature() {
        let bits = restore_features();
        assert_eq!(
            bits,
            feature::RESTORE,
            "missing here: {}",
            feature::names(feature::RESTORE & !bits)
        );
        assert!(kernel_release() >= (6, 11), "{:?}", kernel_release());
    }

    #[test]
    fn names_name_every_bit() {
        assert_eq!(
            feature::names(feature::MPTCP | feature::TIME_NS),
            "time namespaces, MPTCP (net.mptcp.enabled=1)"
        );
        assert!(feature::names(1 << 40).contains("unknown bits 0x10000000000"));
    }
}
