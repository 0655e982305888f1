//! Readers for the `/proc/PID/...` files capture needs: maps with smaps VmFlags,
//! stat (mm layout), status (signal sets, NSpid), fdinfo, auxv, pagemap.
//!
//! `stat` and `status` are parsed by the `procfs` crate, except each thread's
//! status in the freeze ([`read_status_task`], see there). The others stay here:
//! `maps` is read in every freeze and re-reads only what changed
//! ([`read_maps_fast`]), smaps' `VmFlags` and fdinfo's epoll `tfd` lines are not
//! in the crate's types, and pagemap is binary.
//!
//! Every reader returns an error naming the file and the line it could not parse.

use std::fs;
use std::io;
use std::os::unix::fs::FileExt;

use crate::error::CaptureError;
use crate::model::MmLayout;

/// One line of `/proc/PID/maps` plus its smaps `VmFlags`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    pub inode: u64,
    /// Path or pseudo-name (`[vdso]`, `[stack]`, ...); empty for anonymous.
    pub name: String,
    /// Two-letter smaps VmFlags (`rd`, `wr`, `dp`, `wf`, `gd`, ...).
    pub vm_flags: Vec<String>,
    /// Resident set of the mapping (smaps `Rss:`), in KiB.
    pub rss_kb: u64,
}

impl MapEntry {
    pub fn has_flag(&self, f: &str) -> bool {
        self.vm_flags.iter().any(|x| x == f)
    }
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

fn bad(path: &str, line: usize, what: &str) -> CaptureError {
    CaptureError::Proc {
        path: path.to_string(),
        detail: format!("line {line}: {what}"),
    }
}

fn read(path: &str) -> Result<String, CaptureError> {
    fs::read_to_string(path).map_err(|e| CaptureError::ProcIo {
        path: path.to_string(),
        source: e,
    })
}

/// Parses `/proc/PID/smaps` (a superset of maps, with VmFlags per mapping).
pub fn read_maps(pid: i32) -> Result<Vec<MapEntry>, CaptureError> {
    let path = format!("/proc/{pid}/smaps");
    let text = read(&path)?;
    Ok(newest_view(parse_smaps(&path, &text)?))
}

/// Of a maps listing read while the program ran, the newest view of each range.
/// The kernel prints the file in several reads and resumes each after the last
/// mapping it printed: a mapping that grew in between (Go's heap) is printed again,
/// with the same start and a larger end (seen here: a kvstore's heap listed as
/// both 196 and 200 MiB during its preload, which made the pre-copy stage its pages
/// twice and the image encoder refuse the capture). Entries come in address order;
/// one that starts before the previous one ends is the later view and replaces it.
pub fn newest_view(mut maps: Vec<MapEntry>) -> Vec<MapEntry> {
    let mut out: Vec<MapEntry> = Vec::with_capacity(maps.len());
    for m in maps.drain(..) {
        while out.last().is_some_and(|p| m.start < p.end) {
            let p = out.pop().expect("checked");
            if p.start < m.start {
                // The earlier view's part before the later one still stands.
                out.push(MapEntry { end: m.start, ..p });
                break;
            }
        }
        out.push(m);
    }
    out
}

/// The mappings, read during the freeze from `/proc/PID/maps` (cheap), with the
/// VmFlags taken from an `smaps` read before the freeze (`smaps` walks the page
/// tables for its counters: ~17 ms for a 1 GiB Go heap here). A mapping that is
/// not in `before` (created or changed since) makes it read `smaps` after all.
pub fn read_maps_fast(pid: i32, before: &[MapEntry]) -> Result<Vec<MapEntry>, CaptureError> {
    let path = format!("/proc/{pid}/maps");
    let text = read(&path)?;
    let mut maps = parse_smaps(&path, &text)?;
    let known: std::collections::HashMap<(u64, u64), &MapEntry> =
        before.iter().map(|m| ((m.start, m.end), m)).collect();
    for m in &mut maps {
        match known.get(&(m.start, m.end)) {
            Some(b)
                if b.read == m.read
                    && b.write == m.write
                    && b.exec == m.exec
                    && b.name == m.name =>
            {
                m.vm_flags = b.vm_flags.clone();
            }
            _ => return read_maps(pid),
        }
    }
    Ok(maps)
}

pub fn parse_smaps(path: &str, text: &str) -> Result<Vec<MapEntry>, CaptureError> {
    let mut out: Vec<MapEntry> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        if let Some(rest) = line.strip_prefix("Rss:") {
            if let Some(last) = out.last_mut() {
                last.rss_kb = rest
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .unwrap_or(0);
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("VmFlags:") {
            let last = out
                .last_mut()
                .ok_or_else(|| bad(path, lineno, "VmFlags before any mapping"))?;
            last.vm_flags = rest.split_whitespace().map(str::to_string).collect();
            continue;
        }
        // A mapping header line starts with "start-end ".
        let first = line.split_whitespace().next().unwrap_or("");
        let Some((a, b)) = first.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            continue;
        };
        // Five space-separated fields, then the name (which may contain spaces).
        let mut rest = line;
        let mut fields = [""; 5];
        for f in fields.iter_mut() {
            rest = rest.trim_start();
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            *f = &rest[..end];
            rest = &rest[end..];
        }
        let [_range, perms, offset, _dev, inode] = fields;
        if inode.is_empty() {
            return Err(bad(path, lineno, "fewer than five fields"));
        }
        let name = rest.trim();
        let pb = perms.as_bytes();
        if pb.len() < 4 {
            return Err(bad(path, lineno, "short permissions"));
        }
        out.push(MapEntry {
            start,
            end,
            read: pb[0] == b'r',
            write: pb[1] == b'w',
            exec: pb[2] == b'x',
            shared: pb[3] == b's',
            offset: u64::from_str_radix(offset, 16).map_err(|_| bad(path, lineno, "bad offset"))?,
            inode: inode.parse().map_err(|_| bad(path, lineno, "bad inode"))?,
            name: name.to_string(),
            vm_flags: Vec::new(),
            rss_kb: 0,
        });
    }
    Ok(out)
}

pub fn read_mm_layout(pid: i32, maps: &[MapEntry]) -> Result<MmLayout, CaptureError> {
    use procfs::FromRead;
    let path = format!("/proc/{pid}/stat");
    let text = read(&path)?;
    let st = procfs::process::Stat::from_read(text.as_bytes()).map_err(|source| {
        CaptureError::ProcParse {
            path: path.clone(),
            source,
        }
    })?;
    let need = |v: Option<u64>, what: &str| v.ok_or_else(|| bad(&path, 1, what));
    let start_brk = need(st.start_brk, "start_brk")?;
    let brk = maps
        .iter()
        .find(|m| m.name == "[heap]")
        .map(|m| m.end)
        .unwrap_or(start_brk);
    Ok(MmLayout {
        start_code: st.startcode,
        end_code: st.endcode,
        start_stack: st.startstack,
        start_data: need(st.start_data, "start_data")?,
        end_data: need(st.end_data, "end_data")?,
        start_brk,
        brk,
        arg_start: need(st.arg_start, "arg_start")?,
        arg_end: need(st.arg_end, "arg_end")?,
        env_start: need(st.env_start, "env_start")?,
        env_end: need(st.env_end, "env_end")?,
    })
}

/// What capture needs from `/proc/PID/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub sig_cgt: u64,
    pub sig_ign: u64,
    pub umask: u32,
    /// NSpid: the pid in each nested namespace, outermost first.
    pub ns_pid: Vec<i32>,
    /// Uid / Gid: real, effective, saved, filesystem.
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    /// Supplementary groups (Groups), in the kernel's (sorted) order.
    pub groups: Vec<u32>,
    /// CapInh, CapPrm, CapEff, CapBnd, CapAmb.
    pub caps: [u64; 5],
    pub no_new_privs: bool,
    /// Seccomp mode as shown (0 none, 1 strict, 2 filter).
    pub seccomp: u32,
}

pub fn read_status(pid: i32) -> Result<Status, CaptureError> {
    parse_status_file(&format!("/proc/{pid}/status"))
}

/// `/proc/PID/task/TID/status`.
pub fn read_status_task(pid: i32, tid: i32) -> Result<Status, CaptureError> {
    parse_status_fast(&format!("/proc/{pid}/task/{tid}/status"))
}

/// A status file by path (`/proc/thread-self/status`).
pub fn read_status_path(path: &str) -> Result<Status, CaptureError> {
    parse_status_file(path)
}

fn parse_status_file(path: &str) -> Result<Status, CaptureError> {
    use procfs::FromRead;
    let text = read(path)?;
    let s = procfs::process::Status::from_read(text.as_bytes()).map_err(|source| {
        CaptureError::ProcParse {
            path: path.to_string(),
            source,
        }
    })?;
    let need = |what: &str| bad(path, 1, &format!("no {what} line"));
    Ok(Status {
        sig_cgt: s.sigcgt,
        sig_ign: s.sigign,
        umask: s.umask.ok_or_else(|| need("Umask"))?,
        ns_pid: s.nspid.ok_or_else(|| need("NSpid"))?,
        uids: [s.ruid, s.euid, s.suid, s.fuid],
        gids: [s.rgid, s.egid, s.sgid, s.fgid],
        groups: s.groups.iter().map(|&g| g as u32).collect(),
        caps: [
            s.capinh,
            s.capprm,
            s.capeff,
            s.capbnd.ok_or_else(|| need("CapBnd"))?,
            s.capamb.ok_or_else(|| need("CapAmb"))?,
        ],
        no_new_privs: s.nonewprivs.ok_or_else(|| need("NoNewPrivs"))? == 1,
        seccomp: s.seccomp.ok_or_else(|| need("Seccomp"))?,
    })
}

/// The freeze's reader: every thread's status is read in every epoch's pause,
/// and this hand parser of the few lines capture needs takes about a third of
/// the `procfs` crate's time (9 vs 25 us a file here, which is 0.1 ms of an
/// epoch's pause for a Go program's threads).
fn parse_status_fast(path: &str) -> Result<Status, CaptureError> {
    let path = path.to_string();
    let text = read(&path)?;
    let mut st = Status::default();
    for (i, line) in text.lines().enumerate() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        let hex = || u64::from_str_radix(v, 16).map_err(|_| bad(&path, i + 1, k));
        match k {
            "SigCgt" => st.sig_cgt = hex()?,
            "SigIgn" => st.sig_ign = hex()?,
            "Umask" => st.umask = u32::from_str_radix(v, 8).map_err(|_| bad(&path, i + 1, k))?,
            "Uid" | "Gid" => {
                let ids: Vec<u32> = v
                    .split_whitespace()
                    .map(|s| s.parse().map_err(|_| bad(&path, i + 1, k)))
                    .collect::<Result<_, _>>()?;
                let ids: [u32; 4] = ids.try_into().map_err(|_| bad(&path, i + 1, k))?;
                if k == "Uid" {
                    st.uids = ids;
                } else {
                    st.gids = ids;
                }
            }
            "Groups" => {
                st.groups = v
                    .split_whitespace()
                    .map(|s| s.parse().map_err(|_| bad(&path, i + 1, k)))
                    .collect::<Result<_, _>>()?
            }
            "CapInh" => st.caps[0] = hex()?,
            "CapPrm" => st.caps[1] = hex()?,
            "CapEff" => st.caps[2] = hex()?,
            "CapBnd" => st.caps[3] = hex()?,
            "CapAmb" => st.caps[4] = hex()?,
            "NoNewPrivs" => st.no_new_privs = v == "1",
            "Seccomp" => st.seccomp = v.parse().map_err(|_| bad(&path, i + 1, k))?,
            "NSpid" => {
                st.ns_pid = v
                    .split_whitespace()
                    .map(|s| s.parse().map_err(|_| bad(&path, i + 1, k)))
                    .collect::<Result<_, _>>()?
            }
            _ => {}
        }
    }
    Ok(st)
}

/// Thread ids of a process (as this pid namespace sees them), sorted.
pub fn list_tids(pid: i32) -> Result<Vec<i32>, CaptureError> {
    let path = format!("/proc/{pid}/task");
    let rd = fs::read_dir(&path).map_err(|e| CaptureError::ProcIo {
        path: path.clone(),
        source: e,
    })?;
    let mut tids = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| CaptureError::ProcIo {
            path: path.clone(),
            source: e,
        })?;
        if let Some(t) = ent.file_name().to_str().and_then(|s| s.parse().ok()) {
            tids.push(t);
        }
    }
    tids.sort_unstable();
    Ok(tids)
}

/// `/proc/PID/auxv` raw bytes.
pub fn read_auxv(pid: i32) -> Result<Vec<u8>, CaptureError> {
    let path = format!("/proc/{pid}/auxv");
    fs::read(&path).map_err(|e| CaptureError::ProcIo { path, source: e })
}

/// One `tfd:` line of an epoll fdinfo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpollEntry {
    pub tfd: i32,
    pub events: u32,
    pub data: u64,
}

/// Parsed `/proc/PID/fdinfo/FD`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FdInfo {
    pub pos: u64,
    /// `flags:` in octal: file status flags plus O_CLOEXEC for the descriptor.
    pub flags: u32,
    pub epoll: Vec<EpollEntry>,
    /// The inode of each `tfd:` line's file (`ino:`), in the order of `epoll`.
    pub epoll_inodes: Vec<Option<u64>>,
    pub eventfd_count: Option<u64>,
    pub eventfd_semaphore: bool,
}

pub fn read_fdinfo(pid: i32, fd: i32) -> Result<FdInfo, CaptureError> {
    let path = format!("/proc/{pid}/fdinfo/{fd}");
    let text = read(&path)?;
    parse_fdinfo(&path, &text)
}

pub fn parse_fdinfo(path: &str, text: &str) -> Result<FdInfo, CaptureError> {
    let mut info = FdInfo::default();
    for (i, line) in text.lines().enumerate() {
        let l = i + 1;
        if let Some(v) = line.strip_prefix("pos:") {
            info.pos = v.trim().parse().map_err(|_| bad(path, l, "pos"))?;
        } else if let Some(v) = line.strip_prefix("flags:") {
            info.flags = u32::from_str_radix(v.trim(), 8).map_err(|_| bad(path, l, "flags"))?;
        } else if let Some(v) = line.strip_prefix("eventfd-count:") {
            info.eventfd_count =
                Some(u64::from_str_radix(v.trim(), 16).map_err(|_| bad(path, l, "eventfd-count"))?);
        } else if let Some(v) = line.strip_prefix("eventfd-semaphore:") {
            info.eventfd_semaphore = v.trim() == "1";
        } else if line.starts_with("tfd:") {
            let toks: Vec<&str> = line.split_whitespace().collect();
            let field = |name: &str| {
                toks.iter()
                    .position(|t| *t == name)
                    .and_then(|p| toks.get(p + 1).copied())
            };
            let tfd = field("tfd:")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad(path, l, "tfd"))?;
            let events = field("events:")
                .and_then(|s| u32::from_str_radix(s, 16).ok())
                .ok_or_else(|| bad(path, l, "events"))?;
            let data = field("data:")
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .ok_or_else(|| bad(path, l, "data"))?;
            info.epoll.push(EpollEntry { tfd, events, data });
            // `ino:1cfb3` is one token, unlike `tfd:        7`.
            info.epoll_inodes.push(
                toks.iter()
                    .find_map(|t| t.strip_prefix("ino:"))
                    .and_then(|v| u64::from_str_radix(v, 16).ok()),
            );
        }
    }
    Ok(info)
}

/// pagemap bits.
pub const PM_PRESENT: u64 = 1 << 63;
pub const PM_SWAP: u64 = 1 << 62;
pub const PM_FILE: u64 = 1 << 61;
pub const PM_EXCLUSIVE: u64 = 1 << 56;

/// Open `/proc/PID/pagemap` for repeated reads.
pub struct Pagemap {
    file: fs::File,
    path: String,
}

impl std::fmt::Debug for Pagemap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pagemap").field("path", &self.path).finish()
    }
}

impl Pagemap {
    pub fn open(pid: i32) -> Result<Self, CaptureError> {
        let path = format!("/proc/{pid}/pagemap");
        let file = fs::File::open(&path).map_err(|e| CaptureError::ProcIo {
            path: path.clone(),
            source: e,
        })?;
        Ok(Pagemap { file, path })
    }

    /// Reads the entries of pages `[start, end)` into `out` (cleared first).
    pub fn read(&self, start: u64, end: u64, out: &mut Vec<u64>) -> Result<(), CaptureError> {
        let n = ((end - start) / 4096) as usize;
        out.clear();
        out.resize(n, 0);
        // SAFETY-free view: reinterpret through a byte buffer.
        let mut bytes = vec![0u8; n * 8];
        let mut done = 0;
        while done < bytes.len() {
            let got = self
                .file
                .read_at(&mut bytes[done..], (start / 4096) * 8 + done as u64)
                .map_err(|e| CaptureError::ProcIo {
                    path: self.path.clone(),
                    source: e,
                })?;
            if got == 0 {
                return Err(CaptureError::ProcIo {
                    path: self.path.clone(),
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("short read at {start:#x}"),
                    ),
                });
            }
            done += got;
        }
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
            *o = u64::from_le_bytes(c.try_into().expect("chunks_exact(8)"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_mapping_printed_twice_while_it_grew_keeps_its_newest_view() {
        let m = |start: u64, end: u64| MapEntry {
            start,
            end,
            read: true,
            write: true,
            exec: false,
            shared: false,
            offset: 0,
            inode: 0,
            name: String::new(),
            vm_flags: Vec::new(),
            rss_kb: 0,
        };
        let got = newest_view(vec![
            m(0x1000, 0x2000),
            m(0x5000, 0x8000),
            m(0x5000, 0x9000),
            m(0xa000, 0xb000),
        ]);
        let ranges: Vec<(u64, u64)> = got.iter().map(|e| (e.start, e.end)).collect();
        assert_eq!(
            ranges,
            vec![(0x1000, 0x2000), (0x5000, 0x9000), (0xa000, 0xb000)]
        );
        // A later view that starts inside an earlier one trims it.
        let got = newest_view(vec![m(0x5000, 0x9000), m(0x7000, 0xa000)]);
        let ranges: Vec<(u64, u64)> = got.iter().map(|e| (e.start, e.end)).collect();
        assert_eq!(ranges, vec![(0x5000, 0x7000), (0x7000, 0xa000)]);
    }

    use super::*;

    #[test]
    fn smaps_lines() {
        let t = "00400000-00500000 r-xp 00000000 fe:00 1234 /bin/app\nSize: 4 kB\nVmFlags: rd ex mr mw me\n7f0-7f1 rw-p 00000000 00:00 0 \nVmFlags: rd wr mr mw me nr wf dd dp\n7ffc-7ffd rw-p 00000000 00:00 0                          [stack]\n";
        let m = parse_smaps("t", t).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].name, "/bin/app");
        assert!(m[0].exec && !m[0].write);
        assert!(m[1].has_flag("dp"));
        assert_eq!(m[1].name, "");
        assert_eq!(m[2].name, "[stack]");
    }

    #[test]
    fn fdinfo_epoll_and_eventfd() {
        let t = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\ntfd:        7 events:       1d data:             2222  pos:0 ino:1cfb3 sdev:f\ntfd:        6 events: 80000019 data: deadbeef00000001  pos:0 ino:40e sdev:10\n";
        let i = parse_fdinfo("t", t).unwrap();
        assert_eq!(i.flags, 0o2000002);
        assert_eq!(i.epoll.len(), 2);
        assert_eq!(i.epoll_inodes, vec![Some(0x1cfb3), Some(0x40e)]);
        assert_eq!(
            i.epoll[1],
            EpollEntry {
                tfd: 6,
                events: 0x8000_0019,
                data: 0xdead_beef_0000_0001
            }
        );
        let e = parse_fdinfo(
            "t",
            "pos:\t0\nflags:\t04002\neventfd-count:                a\neventfd-semaphore: 0\n",
        )
        .unwrap();
        assert_eq!(e.eventfd_count, Some(10));
    }
}
