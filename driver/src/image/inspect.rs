//! `cs-driver inspect`: a readable summary of a verified image.

use std::fmt::Write;

use crate::capture::fds::FdKind;
use crate::capture::{VmaKind, PROT_R, PROT_W, PROT_X};
use crate::image::Decoded;

fn size(bytes: u64) -> String {
    const K: u64 = 1024;
    if bytes >= K * K * K {
        format!("{:.1} GiB", bytes as f64 / (K * K * K) as f64)
    } else if bytes >= K * K {
        format!("{:.1} MiB", bytes as f64 / (K * K) as f64)
    } else if bytes >= K {
        format!("{:.1} KiB", bytes as f64 / K as f64)
    } else {
        format!("{bytes} B")
    }
}

fn prot(p: u8) -> String {
    format!(
        "{}{}{}",
        if p & PROT_R != 0 { 'r' } else { '-' },
        if p & PROT_W != 0 { 'w' } else { '-' },
        if p & PROT_X != 0 { 'x' } else { '-' }
    )
}

fn kind(v: &crate::capture::Vma) -> String {
    let base = match &v.kind {
        VmaKind::Anonymous if v.reservation => "reservation".to_string(),
        VmaKind::Anonymous => "anonymous".to_string(),
        VmaKind::File { path, offset } => {
            format!("file {} @{offset:#x}", String::from_utf8_lossy(path))
        }
        VmaKind::Vdso => "[vdso]".into(),
        VmaKind::Vvar => "[vvar]".into(),
        VmaKind::VvarVclock => "[vvar_vclock]".into(),
        VmaKind::Stack => "[stack]".into(),
        VmaKind::Heap => "[heap]".into(),
        VmaKind::Vsyscall => "[vsyscall]".into(),
    };
    if v.droppable {
        format!("{base} (droppable)")
    } else {
        base
    }
}

fn fd_kind(k: &FdKind) -> String {
    match k {
        FdKind::Stdio { path } => format!("stdio ({})", String::from_utf8_lossy(path)),
        FdKind::Regular { path, offset } => {
            format!("file {} at offset {offset}", String::from_utf8_lossy(path))
        }
        FdKind::Pipe {
            id,
            write_end,
            contents,
        } => {
            format!(
                "pipe {id} {} end, {} bytes buffered",
                if *write_end { "write" } else { "read" },
                contents.len()
            )
        }
        FdKind::Eventfd { count, semaphore } => {
            format!(
                "eventfd count {count}{}",
                if *semaphore { " (semaphore)" } else { "" }
            )
        }
        FdKind::Epoll { entries } => format!("epoll with {} registrations", entries.len()),
        FdKind::TcpListen {
            mptcp, addr, port, ..
        } => {
            let ip = if addr.len() == 4 {
                std::net::Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).to_string()
            } else {
                format!("{addr:?}")
            };
            format!(
                "{} listener on {ip}:{port}",
                if *mptcp { "MPTCP" } else { "TCP" }
            )
        }
        FdKind::UnixListen { path, .. } => {
            format!("unix listener {}", String::from_utf8_lossy(path))
        }
        FdKind::TcpConnected { mptcp, peer, .. } => {
            format!(
                "{} connection to port {} (restored as disconnected)",
                if *mptcp { "MPTCP" } else { "TCP" },
                peer.1
            )
        }
        FdKind::UnixConnected { .. } => "unix connection (restored as disconnected)".into(),
        FdKind::Other { what } => format!("UNSUPPORTED: {}", String::from_utf8_lossy(what)),
    }
}

/// Renders the summary as text.
pub fn render(d: &Decoded, verbose: bool) -> String {
    let mut o = String::new();
    let e = &d.epoch;
    let p = &e.process;
    let st = &d.stats;
    let _ = writeln!(
        o,
        "image: {} bytes, epoch {}, all checksums verified",
        st.bytes, e.number
    );
    let _ = writeln!(
        o,
        "process: pid {} ({}), exe {}, cwd {}, kernel {}",
        p.pid,
        String::from_utf8_lossy(&p.comm),
        String::from_utf8_lossy(&p.exe),
        String::from_utf8_lossy(&p.cwd),
        String::from_utf8_lossy(&p.kernel_release)
    );
    let _ = writeln!(o, "cpu: XSAVE {} bytes, XCR0 {:#x}", p.xsave_size, p.xcr0);
    let _ = writeln!(
        o,
        "clocks: monotonic {:.3} s, boottime {:.3} s",
        p.monotonic_ns as f64 / 1e9,
        p.boottime_ns as f64 / 1e9
    );
    let _ = writeln!(o, "threads: {}", e.threads.len());
    for t in &e.threads {
        let _ = writeln!(
            o,
            "  tid {:>7} {:<16} rip {:#014x} rsp {:#014x} syscall-restart {:?}",
            t.tid,
            String::from_utf8_lossy(&t.comm),
            t.regs.rip,
            t.regs.rsp,
            t.restart
        );
    }
    // Credentials: one line per distinct set (Go keeps them alike in every thread).
    let mut sets: Vec<(&crate::capture::creds::ThreadCreds, Vec<i32>)> = Vec::new();
    for t in &e.threads {
        match sets.iter_mut().find(|(k, _)| **k == t.creds) {
            Some((_, tids)) => tids.push(t.tid),
            None => sets.push((&t.creds, vec![t.tid])),
        }
    }
    for (c, tids) in &sets {
        let who = if sets.len() == 1 {
            "all threads".to_string()
        } else {
            format!("threads {tids:?}")
        };
        let _ = writeln!(
            o,
            "credentials ({who}): uid {:?} gid {:?} groups {:?}; caps inh {:#x} prm {:#x} eff {:#x} bnd {:#x} amb {:#x}; securebits {:#x}, no_new_privs {}, seccomp {}, dumpable {}",
            c.uids,
            c.gids,
            c.groups,
            c.caps[0],
            c.caps[1],
            c.caps[2],
            c.caps[3],
            c.caps[4],
            c.securebits,
            u8::from(c.no_new_privs),
            c.seccomp,
            c.dumpable
        );
    }
    let _ = writeln!(o, "mapped files: {}", e.files.len());
    for f in &e.files {
        let _ = writeln!(
            o,
            "  {} dev {:#x} inode {} {} B mtime {}.{:09}{}",
            String::from_utf8_lossy(&f.path),
            f.dev,
            f.ino,
            f.size,
            f.mtime_sec,
            f.mtime_nsec,
            match f.hash {
                Some(h) => format!(
                    " xxh3-128 {}",
                    h.iter()
                        .rev()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                ),
                None => String::new(),
            }
        );
    }
    let mapped: u64 = e.vmas.iter().map(|v| v.end - v.start).sum();
    let reserved: u64 = e
        .vmas
        .iter()
        .filter(|v| v.reservation)
        .map(|v| v.end - v.start)
        .sum();
    let _ = writeln!(
        o,
        "vmas: {} ({} mapped, of which {} PROT_NONE reservations)",
        e.vmas.len(),
        size(mapped),
        size(reserved)
    );
    if verbose {
        for v in &e.vmas {
            let _ = writeln!(
                o,
                "  {:#014x}-{:#014x} {} {:>10} {}",
                v.start,
                v.end,
                prot(v.prot),
                size(v.end - v.start),
                kind(v)
            );
        }
    }
    let _ = writeln!(
        o,
        "pages: {} stored ({}), {} zero (not stored), in {} page-run frames",
        st.pages_stored,
        size(st.pages_stored * 4096),
        st.pages_zero,
        st.page_frames
    );
    let _ = writeln!(o, "fds: {}", e.fds.len());
    for f in &e.fds {
        let _ = writeln!(
            o,
            "  fd {:>4}{} {}",
            f.fd,
            if f.cloexec { " cloexec" } else { "        " },
            fd_kind(&f.kind)
        );
    }
    let handled: Vec<String> = e
        .sigactions
        .iter()
        .enumerate()
        .filter(|(_, a)| a.handler > 1)
        .map(|(i, _)| (i + 1).to_string())
        .collect();
    let ignored: Vec<String> = e
        .sigactions
        .iter()
        .enumerate()
        .filter(|(_, a)| a.handler == 1)
        .map(|(i, _)| (i + 1).to_string())
        .collect();
    let _ = writeln!(
        o,
        "signals: handled {}; ignored {}",
        handled.join(","),
        if ignored.is_empty() {
            "none".into()
        } else {
            ignored.join(",")
        }
    );
    o
}
