//! Sockets as restore brings them back when what they were cannot be: a
//! connection to a peer outside the program comes back closed by that peer (the
//! peer is not part of the image; at failover, connections break and clients
//! reconnect, docs/conformance.md), as a socket of the same family, type and
//! protocol, so the program sees end-of-file on it, never a socket of another
//! kind. Connections with both ends in the program are refused by the dump
//! (`capture::fds`), as are unconnected and datagram unix sockets.
//!
//! Also: a listening unix socket's file gets the original file's mode and owner
//! back (bind creates it from the restorer's umask).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use crate::capture::fds::SockFamily;

fn own(fd: libc::c_int) -> OwnedFd {
    // SAFETY: callers pass a descriptor they just created and nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// A unix socket of `sock_type` whose peer has closed: end-of-file on read,
/// EPIPE on write.
pub fn unix(sock_type: i32) -> Result<OwnedFd, String> {
    let mut sv = [0 as libc::c_int; 2];
    // SAFETY: `sv` is a live array of two ints for socketpair to fill.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            sock_type | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    } < 0
    {
        return Err(os_err("socketpair"));
    }
    drop(own(sv[1]));
    Ok(own(sv[0]))
}

/// A TCP (or MPTCP) socket of `family`, connected over loopback to a peer that
/// then closed: end-of-file on read, like a connection whose peer went away.
pub fn tcp(family: SockFamily, mptcp: bool) -> Result<OwnedFd, String> {
    let (dom, len) = match family {
        SockFamily::Inet => (libc::AF_INET, std::mem::size_of::<libc::sockaddr_in>()),
        SockFamily::Inet6 => (libc::AF_INET6, std::mem::size_of::<libc::sockaddr_in6>()),
    };
    let sock = |proto: i32| -> Result<OwnedFd, String> {
        // SAFETY: socket(2) with integer arguments.
        let fd = unsafe { libc::socket(dom, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, proto) };
        if fd < 0 {
            return Err(os_err("socket"));
        }
        Ok(own(fd))
    };
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match family {
        SockFamily::Inet => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        }
        SockFamily::Inet6 => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr[15] = 1;
        }
    }
    let sa = &mut ss as *mut _ as *mut libc::sockaddr;
    let mut sl = len as libc::socklen_t;
    let listener = sock(0)?;
    // SAFETY: `ss` holds a loopback address of `len` bytes, port 0.
    if unsafe { libc::bind(listener.as_raw_fd(), sa, sl) } < 0 {
        return Err(os_err("bind a loopback listener for a closed connection"));
    }
    // SAFETY: listen(2) with integers.
    if unsafe { libc::listen(listener.as_raw_fd(), 1) } < 0 {
        return Err(os_err("listen on loopback"));
    }
    // SAFETY: `ss` is large enough for any address and `sl` says how large.
    if unsafe { libc::getsockname(listener.as_raw_fd(), sa, &mut sl) } < 0 {
        return Err(os_err("getsockname of the loopback listener"));
    }
    let conn = sock(if mptcp { 262 } else { 0 })?;
    // SAFETY: `ss` now holds the listener's address of `sl` bytes.
    if unsafe { libc::connect(conn.as_raw_fd(), sa, sl) } < 0 {
        return Err(os_err("connect over loopback"));
    }
    // SAFETY: accept4 without an address.
    let peer = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if peer < 0 {
        return Err(os_err("accept over loopback"));
    }
    drop(own(peer));
    drop(listener);
    // The FIN crosses loopback at once; wait until the socket reports it, so the
    // program never sees the moment before.
    let mut pfd = libc::pollfd {
        fd: conn.as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: polls one live pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, Duration::from_secs(1).as_millis() as i32) };
    if rc != 1 {
        return Err("the loopback peer's close did not arrive".into());
    }
    Ok(conn)
}

/// Gives the socket file just bound at `path` the mode and owner of the file
/// it replaces.
pub fn keep_mode_and_owner(path: &[u8], old: &std::fs::Metadata) -> Result<(), String> {
    let c =
        std::ffi::CString::new(path).map_err(|_| "unix socket path contains NUL".to_string())?;
    let fail = |what: &str| {
        format!(
            "giving {} its {what} back: {}",
            String::from_utf8_lossy(path),
            std::io::Error::last_os_error()
        )
    };
    // SAFETY: `c` is a NUL-terminated path; the mode is an integer.
    if unsafe { libc::chmod(c.as_ptr(), old.mode() & 0o7777) } < 0 {
        return Err(fail(&format!("mode {:o}", old.mode() & 0o7777)));
    }
    // SAFETY: `c` is a NUL-terminated path; the ids are integers.
    if unsafe { libc::lchown(c.as_ptr(), old.uid(), old.gid()) } < 0 {
        return Err(fail(&format!("owner {}:{}", old.uid(), old.gid())));
    }
    Ok(())
}
