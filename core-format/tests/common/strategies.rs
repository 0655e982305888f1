//! proptest strategies producing owned record specs; `build` borrows them as records.
#![allow(dead_code)]

use core::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use core_format::*;
use proptest::collection::vec;
use proptest::prelude::*;

pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

/// Short byte strings most of the time, the field's capacity sometimes.
pub fn field_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![4 => bytes(max.min(24)), 1 => bytes(max)]
}

#[derive(Debug, Clone)]
pub struct ProcSpec {
    pub fixed: (u32, u32, u32, u64, u32, u32, u64, u64),
    pub mm: [u64; 11],
    pub rlimits: Vec<Rlimit>,
    pub strings: [Vec<u8>; 6],
}

pub fn proc_spec() -> impl Strategy<Value = ProcSpec> {
    (
        (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            0u32..=0o777,
            any::<u64>(),
            any::<u64>(),
        ),
        any::<[u64; 11]>(),
        vec(
            (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(resource, soft, hard)| Rlimit {
                resource,
                soft,
                hard,
            }),
            0..=16,
        ),
        (
            field_bytes(1024),
            field_bytes(4096),
            field_bytes(4096),
            bytes(16),
            field_bytes(128),
            field_bytes(128),
        ),
    )
        .prop_map(|(fixed, mm, rlimits, s)| ProcSpec {
            fixed,
            mm,
            rlimits,
            strings: [s.0, s.1, s.2, s.3, s.4, s.5],
        })
}

impl ProcSpec {
    pub fn build(&self) -> ProcessInfo<'_> {
        let f = self.fixed;
        ProcessInfo {
            pid: f.0,
            arch: Arch::X86_64,
            page_size: f.1,
            xsave_size_bytes: f.2,
            xcr0: f.3,
            thread_count: f.4,
            umask: f.5,
            clock_monotonic_ns: f.6,
            clock_boottime_ns: f.7,
            mm: MmLayout::from_array(self.mm),
            rlimits: self.rlimits.iter().copied().collect(),
            auxv: &self.strings[0],
            exe_path: &self.strings[1],
            cwd_path: &self.strings[2],
            comm: &self.strings[3],
            kernel_release: &self.strings[4],
            go_version: &self.strings[5],
        }
    }
}

#[derive(Debug, Clone)]
pub struct VmaSpec {
    pub start: u64,
    pub end: u64,
    pub prot: u8,
    pub flags: u32,
    pub kind: u8,
    pub offset: u64,
    pub path: Vec<u8>,
}

impl VmaSpec {
    pub fn build(&self) -> Vma<'_> {
        Vma {
            start: self.start,
            end: self.end,
            prot: Prot::from_bits(self.prot).unwrap(),
            flags: VmaFlags::from_bits(self.flags).unwrap(),
            kind: VmaKind::from_raw(self.kind).unwrap(),
            file_offset: self.offset,
            path: &self.path,
        }
    }
}

/// One VMA at `start_page` of `npages` pages (any valid prot/flags/kind combination).
pub fn vma_spec_at(start_page: u64, npages: u64) -> impl Strategy<Value = VmaSpec> {
    (
        0u8..8,
        0u32..1024,
        1u8..=8,
        0u64..1_000_000,
        prop::collection::vec(1u8..=255, 1..64),
    )
        .prop_map(move |(prot, flags, kind, off_pages, path)| {
            let flags = if prot != 0 {
                flags & !VmaFlags::RESERVATION.bits()
            } else {
                flags
            };
            VmaSpec {
                start: start_page * 4096,
                end: (start_page + npages) * 4096,
                prot,
                flags,
                kind,
                offset: off_pages * 4096,
                path: if kind == VmaKind::File as u8 {
                    path
                } else {
                    Vec::new()
                },
            }
        })
}

/// Sorted, disjoint VMAs.
pub fn vma_list(max: usize) -> impl Strategy<Value = Vec<VmaSpec>> {
    vec((0u64..8, 1u64..16), 0..=max).prop_flat_map(|gaps| {
        let mut page = 16u64;
        let mut v = Vec::new();
        for (gap, len) in gaps {
            page += gap;
            v.push(vma_spec_at(page, len));
            page += len;
        }
        v
    })
}

#[derive(Debug, Clone)]
pub struct ThreadSpec {
    pub tid: u32,
    pub comm: Vec<u8>,
    pub regs: Vec<u64>,
    pub xsave: Vec<u8>,
    pub sigmask: u64,
    pub alt: (u64, u32, u64),
    pub restart: u32,
    pub stopped: bool,
}

pub fn thread_spec(xsave_len: impl Strategy<Value = usize>) -> impl Strategy<Value = ThreadSpec> {
    (
        any::<u32>(),
        bytes(16),
        vec(any::<u64>(), NUM_GREGS),
        xsave_len.prop_flat_map(|n| vec(any::<u8>(), n)),
        any::<u64>(),
        any::<(u64, u32, u64)>(),
        (1u32..=3, any::<bool>()),
    )
        .prop_map(
            |(tid, comm, regs, xsave, sigmask, alt, (restart, stopped))| ThreadSpec {
                tid,
                comm,
                regs,
                xsave,
                sigmask,
                alt,
                restart,
                stopped,
            },
        )
}

impl ThreadSpec {
    pub fn build(&self) -> ThreadState<'_> {
        let mut regs = [0u64; NUM_GREGS];
        regs.copy_from_slice(&self.regs);
        ThreadState {
            tid: self.tid,
            comm: &self.comm,
            regs,
            xsave: &self.xsave,
            sigmask: self.sigmask,
            altstack: SigAltStack {
                sp: self.alt.0,
                flags: self.alt.1,
                size: self.alt.2,
            },
            restart: Restart::from_raw(self.restart).unwrap(),
            stopped: self.stopped,
        }
    }
}

pub fn sigactions() -> impl Strategy<Value = [SigAction; NUM_SIGNALS]> {
    vec(any::<(u64, u64, u64, u64)>(), NUM_SIGNALS).prop_map(|v| {
        let mut a = [SigAction::DEFAULT; NUM_SIGNALS];
        for (i, (handler, flags, restorer, mask)) in v.into_iter().enumerate() {
            a[i] = SigAction {
                handler,
                flags,
                restorer,
                mask,
            };
        }
        a
    })
}

pub fn sockaddr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(a, p)| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(a), p))),
        (any::<[u8; 16]>(), any::<u16>(), any::<u32>(), any::<u32>()).prop_map(|(a, p, f, s)| {
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(a), p, f, s))
        }),
    ]
}

/// An fd kind, owned: tag, numbers, byte strings, registrations, addresses.
#[derive(Debug, Clone)]
pub struct FdSpec {
    pub fd: i32,
    pub cloexec: bool,
    pub status: u32,
    pub tag: u8,
    pub n: (u64, u32, bool, u8),
    pub b1: Vec<u8>,
    pub b2: Vec<u8>,
    pub regs: Vec<EpollRegistration>,
    pub a1: SocketAddr,
    pub a2: SocketAddr,
}

pub fn fd_spec() -> impl Strategy<Value = FdSpec> {
    (
        0i32..=i32::MAX,
        any::<bool>(),
        any::<u32>(),
        1u8..=10,
        any::<(u64, u32, bool, u8)>(),
        field_bytes(108),
        field_bytes(108),
        vec(
            (0i32..1000, any::<u32>(), any::<u64>())
                .prop_map(|(tfd, events, data)| EpollRegistration { tfd, events, data }),
            0..8,
        ),
        sockaddr(),
        sockaddr(),
    )
        .prop_map(
            |(fd, cloexec, status, tag, n, b1, b2, regs, a1, a2)| FdSpec {
                fd,
                cloexec,
                status,
                tag,
                n,
                b1,
                b2,
                regs,
                a1,
                a2,
            },
        )
}

impl FdSpec {
    pub fn build(&self) -> Fd<'_> {
        let (num, small, flag, sel) = self.n;
        let unix_type = match sel % 3 {
            0 => UnixType::Stream,
            1 => UnixType::Dgram,
            _ => UnixType::SeqPacket,
        };
        let protocol = if flag {
            InetProtocol::Tcp
        } else {
            InetProtocol::Mptcp
        };
        // Same family for a connected socket's two ends.
        let peer = match (self.a1, self.a2) {
            (SocketAddr::V4(_), SocketAddr::V6(p)) => {
                SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, p.port()))
            }
            (SocketAddr::V6(_), SocketAddr::V4(p)) => {
                SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, p.port(), 0, 0))
            }
            (_, p) => p,
        };
        let kind = match self.tag {
            1 => FdKind::RegularFile {
                path: &self.b1,
                offset: num,
                mode: small,
            },
            2 => FdKind::Pipe {
                pipe_id: num,
                end: if flag { PipeEnd::Read } else { PipeEnd::Write },
                buffered: &self.b1,
            },
            3 => FdKind::Eventfd {
                count: num,
                semaphore: flag,
            },
            4 => FdKind::Epoll {
                registrations: Table::from_slice(&self.regs),
            },
            5 => FdKind::TcpListen {
                addr: self.a1,
                protocol,
                backlog: small,
                reuseaddr: sel & 1 == 1,
            },
            6 => FdKind::UnixListen {
                path: &self.b1,
                socket_type: unix_type,
                backlog: small,
            },
            7 => FdKind::TcpConnected {
                local: self.a1,
                peer,
                protocol,
            },
            8 => FdKind::UnixConnected {
                socket_type: unix_type,
                path: &self.b1,
                peer_path: &self.b2,
            },
            9 => FdKind::Tty { path: &self.b1 },
            _ => FdKind::Other {
                description: &self.b1,
            },
        };
        Fd {
            fd: self.fd,
            fd_flags: if self.cloexec {
                FdFlags::CLOEXEC
            } else {
                FdFlags::EMPTY
            },
            status_flags: self.status,
            kind,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunSpec {
    pub start_page: u64,
    pub npages: u32,
    pub encoding: u32,
    pub data: Vec<u8>,
}

pub fn run_spec() -> impl Strategy<Value = RunSpec> {
    (0u64..(1 << 40), 1u32..=4, 1u32..=3).prop_flat_map(|(start_page, npages, encoding)| {
        let data = match encoding {
            1 => vec(any::<u8>(), npages as usize * 4096).boxed(),
            2 => Just(Vec::new()).boxed(),
            _ => vec(any::<u8>(), 1..64).boxed(),
        };
        let npages = if encoding == 2 { npages * 200 } else { npages };
        data.prop_map(move |data| RunSpec {
            start_page,
            npages,
            encoding,
            data,
        })
    })
}

impl RunSpec {
    pub fn build(&self) -> PageRun<'_> {
        let start = self.start_page * 4096;
        match self.encoding {
            1 => PageRun::raw(start, &self.data).unwrap(),
            2 => PageRun::zero(start, self.npages).unwrap(),
            _ => PageRun::lz4(start, self.npages, &self.data).unwrap(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CredsSpec {
    pub tid: u32,
    pub ids: [u32; 8],
    pub securebits: u32,
    pub no_new_privs: bool,
    pub seccomp: u8,
    pub dumpable: u8,
    /// inheritable, permitted, effective (masked into permitted), bounding, ambient
    /// (masked into permitted ∩ inheritable).
    pub caps: [u64; 5],
    pub groups: Vec<Gid>,
}

pub fn creds_spec() -> impl Strategy<Value = CredsSpec> {
    (
        any::<u32>(),
        any::<[u32; 8]>(),
        0u32..=0xfff,
        any::<bool>(),
        1u8..=3,
        0u8..=2,
        any::<[u64; 5]>(),
        prop_oneof![4 => vec(any::<u32>(), 0..8), 1 => vec(any::<u32>(), 0..300)],
    )
        .prop_map(
            |(tid, ids, securebits, no_new_privs, seccomp, dumpable, mut caps, groups)| {
                caps[2] &= caps[1];
                caps[4] &= caps[0] & caps[1];
                CredsSpec {
                    tid,
                    ids,
                    securebits,
                    no_new_privs,
                    seccomp,
                    dumpable,
                    caps,
                    groups: groups.into_iter().map(Gid).collect(),
                }
            },
        )
}

impl CredsSpec {
    pub fn build(&self) -> Credentials<'_> {
        let id = |o: usize| IdSet {
            real: self.ids[o],
            effective: self.ids[o + 1],
            saved: self.ids[o + 2],
            fs: self.ids[o + 3],
        };
        Credentials {
            tid: self.tid,
            uids: id(0),
            gids: id(4),
            securebits: self.securebits,
            no_new_privs: self.no_new_privs,
            seccomp: Seccomp::from_raw(self.seccomp).unwrap(),
            dumpable: self.dumpable,
            caps: CapSets {
                inheritable: self.caps[0],
                permitted: self.caps[1],
                effective: self.caps[2],
                bounding: self.caps[3],
                ambient: self.caps[4],
            },
            groups: Table::from_slice(&self.groups),
        }
    }
}

#[derive(Debug, Clone)]
pub struct MappedFileSpec {
    pub path: Vec<u8>,
    pub fixed: (u64, u64, u64, i64, u32),
    pub hash_kind: u16,
    pub hash: [u8; HASH_BYTES],
}

pub fn mapped_file_spec() -> impl Strategy<Value = MappedFileSpec> {
    (
        prop_oneof![4 => vec(any::<u8>(), 1..=24), 1 => vec(any::<u8>(), 1..=4096)],
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<i64>(),
            0u32..1_000_000_000,
        ),
        1u16..=2,
        any::<[u8; HASH_BYTES]>(),
    )
        .prop_map(|(path, fixed, hash_kind, mut hash)| {
            let used = HashKind::from_raw(hash_kind).unwrap().len();
            hash[used..].fill(0);
            MappedFileSpec {
                path,
                fixed,
                hash_kind,
                hash,
            }
        })
}

/// Files with unique paths in increasing order, as the table requires.
pub fn mapped_files(max: usize) -> impl Strategy<Value = Vec<MappedFileSpec>> {
    vec(mapped_file_spec(), 0..=max).prop_map(|mut v| {
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v.dedup_by(|a, b| a.path == b.path);
        v
    })
}

impl MappedFileSpec {
    pub fn build(&self) -> MappedFile<'_> {
        MappedFile {
            path: &self.path,
            dev: self.fixed.0,
            ino: self.fixed.1,
            size: self.fixed.2,
            mtime_sec: self.fixed.3,
            mtime_nsec: self.fixed.4,
            hash_kind: HashKind::from_raw(self.hash_kind).unwrap(),
            hash: self.hash,
        }
    }
}
