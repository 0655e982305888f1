//! Sample records shared by the integration tests.
#![allow(dead_code)]

pub mod strategies;

use core::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use core_format::*;

pub const XSAVE_LEN: usize = 576;
pub static XSAVE: [u8; XSAVE_LEN] = [0xAB; XSAVE_LEN];
pub static PAGE_A: [u8; PAGE_SIZE] = [0x5A; PAGE_SIZE];

pub fn process_info() -> ProcessInfo<'static> {
    let mut rlimits = heapless::Vec::new();
    rlimits
        .push(Rlimit {
            resource: 7,
            soft: 1024,
            hard: 4096,
        })
        .unwrap();
    ProcessInfo {
        pid: 100,
        arch: Arch::X86_64,
        page_size: 4096,
        xsave_size_bytes: XSAVE_LEN as u32,
        xcr0: 0xe7,
        thread_count: 2,
        umask: 0o022,
        clock_monotonic_ns: 1_000_000,
        clock_boottime_ns: 2_000_000,
        mm: MmLayout {
            start_code: 0x400000,
            end_code: 0x401000,
            start_data: 0x402000,
            end_data: 0x403000,
            start_brk: 0x404000,
            brk: 0x405000,
            start_stack: 0x7ffff000,
            arg_start: 0x7fffe000,
            arg_end: 0x7fffe010,
            env_start: 0x7fffe010,
            env_end: 0x7fffe020,
        },
        rlimits,
        auxv: &[6, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0],
        exe_path: b"/app",
        cwd_path: b"/",
        comm: b"app",
        kernel_release: b"6.18.0",
        go_version: b"go1.27.3",
    }
}

pub static VMAS: [Vma<'static>; 4] = [
    Vma {
        start: 0x400000,
        end: 0x402000,
        prot: Prot::READ,
        flags: VmaFlags::EMPTY,
        kind: VmaKind::File,
        file_offset: 0,
        path: b"/app",
    },
    Vma {
        start: 0x402000,
        end: 0x406000,
        prot: Prot::READ,
        flags: VmaFlags::EMPTY,
        kind: VmaKind::Anonymous,
        file_offset: 0,
        path: b"",
    },
    Vma {
        start: 0xc000000000,
        end: 0xc004000000,
        prot: Prot::NONE,
        flags: VmaFlags::RESERVATION,
        kind: VmaKind::Anonymous,
        file_offset: 0,
        path: b"",
    },
    Vma {
        start: 0x7fff0000,
        end: 0x80000000,
        prot: Prot::READ,
        flags: VmaFlags::GROWSDOWN,
        kind: VmaKind::Stack,
        file_offset: 0,
        path: b"",
    },
];

/// The VMAs in increasing address order (VMAS above is deliberately not, for the
/// validator's negative test).
pub fn sorted_vmas() -> Vec<Vma<'static>> {
    let mut v = VMAS.to_vec();
    v.sort_by_key(|v| v.start);
    v
}

pub fn thread(tid: u32) -> ThreadState<'static> {
    let mut regs = [0u64; NUM_GREGS];
    for (i, r) in regs.iter_mut().enumerate() {
        *r = i as u64 * 0x1111;
    }
    ThreadState {
        tid,
        comm: b"app",
        regs,
        xsave: &XSAVE,
        sigmask: 0x1000,
        altstack: SigAltStack {
            sp: 0xc000100000,
            flags: 0,
            size: 32768,
        },
        restart: Restart::Restart,
        stopped: false,
    }
}

pub static GROUPS: [Gid; 3] = [Gid(4), Gid(27), Gid(1001)];

/// A uid-1001 thread with one ambient capability (CAP_NET_BIND_SERVICE).
pub fn credentials(tid: u32) -> Credentials<'static> {
    Credentials {
        tid,
        uids: IdSet {
            real: 1001,
            effective: 1001,
            saved: 1001,
            fs: 1001,
        },
        gids: IdSet {
            real: 1001,
            effective: 1002,
            saved: 1001,
            fs: 1002,
        },
        securebits: 0x10,
        no_new_privs: true,
        seccomp: Seccomp::Disabled,
        dumpable: 1,
        caps: CapSets {
            inheritable: 1 << 10,
            permitted: 1 << 10,
            effective: 1 << 10,
            bounding: (1 << 41) - 1,
            ambient: 1 << 10,
        },
        groups: Table::from_slice(&GROUPS),
    }
}

pub static MAPPED: [MappedFile<'static>; 2] = [
    MappedFile {
        path: b"/app",
        dev: 0xfd01,
        ino: 1234,
        size: 8192,
        mtime_sec: 1_700_000_000,
        mtime_nsec: 123_456_789,
        hash_kind: HashKind::Xxh3_128,
        hash: {
            let mut h = [0u8; HASH_BYTES];
            let mut i = 0;
            while i < 16 {
                h[i] = 0xa0 + i as u8;
                i += 1;
            }
            h
        },
    },
    MappedFile {
        path: b"/usr/lib/data",
        dev: 0xfd01,
        ino: 99,
        size: 4096,
        mtime_sec: -5,
        mtime_nsec: 0,
        hash_kind: HashKind::None,
        hash: [0; HASH_BYTES],
    },
];

pub static SIGACTIONS: [SigAction; NUM_SIGNALS] = {
    let mut a = [SigAction::DEFAULT; NUM_SIGNALS];
    a[10] = SigAction {
        handler: 0x401000,
        flags: 0x1c000004,
        restorer: 0x401100,
        mask: u64::MAX,
    };
    a
};

pub static EPOLL_REGS: [EpollRegistration; 2] = [
    EpollRegistration {
        tfd: 3,
        events: 0x8000_0001,
        data: 0x7f00_0000_1234,
    },
    EpollRegistration {
        tfd: 5,
        events: 4,
        data: 9,
    },
];

pub fn fds() -> Vec<Fd<'static>> {
    let v4 = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 8080));
    let v6 = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 9090, 0, 0));
    let peer6 = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 40000, 0, 0));
    let kinds: Vec<FdKind<'static>> = vec![
        FdKind::Tty {
            path: b"/dev/pts/0",
        },
        FdKind::RegularFile {
            path: b"/tmp/log",
            offset: 4242,
            mode: 0o100644,
        },
        FdKind::Pipe {
            pipe_id: 777,
            end: PipeEnd::Write,
            buffered: b"hello",
        },
        FdKind::Eventfd {
            count: 3,
            semaphore: true,
        },
        FdKind::Epoll {
            registrations: Table::from_slice(&EPOLL_REGS),
        },
        FdKind::TcpListen {
            addr: v4,
            protocol: InetProtocol::Tcp,
            backlog: 128,
            reuseaddr: true,
        },
        FdKind::TcpListen {
            addr: v6,
            protocol: InetProtocol::Mptcp,
            backlog: 64,
            reuseaddr: false,
        },
        FdKind::UnixListen {
            path: b"\0abstract",
            socket_type: UnixType::Stream,
            backlog: 16,
        },
        FdKind::TcpConnected {
            local: v6,
            peer: peer6,
            protocol: InetProtocol::Tcp,
        },
        FdKind::UnixConnected {
            socket_type: UnixType::SeqPacket,
            path: b"",
            peer_path: b"/run/x.sock",
        },
    ];
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, kind)| Fd {
            fd: i as i32,
            fd_flags: if i > 2 {
                FdFlags::CLOEXEC
            } else {
                FdFlags::EMPTY
            },
            status_flags: 0o2,
            kind,
        })
        .collect()
}

pub fn other_fd() -> Fd<'static> {
    Fd {
        fd: 42,
        fd_flags: FdFlags::EMPTY,
        status_flags: 0,
        kind: FdKind::Other {
            description: b"anon_inode:[timerfd]",
        },
    }
}

/// Emits `record` as a frame into a fresh Vec.
pub fn frame_bytes(record: &Record<'_>) -> Vec<u8> {
    let mut out = vec![0u8; record.buffer_len()];
    let n = record.emit_frame(&mut out).expect("emit_frame");
    assert_eq!(n, out.len());
    out
}

/// A complete, valid epoch as one byte stream: begin, process info, VMAs, signals, fds,
/// threads 100 and 101, a raw and a zero page run, commit.
pub fn epoch_stream(epoch: u64) -> Vec<u8> {
    let vmas = sorted_vmas();
    let fds = fds();
    let t100 = thread(100);
    let t101 = thread(101);
    let records: Vec<Record<'_>> = vec![
        Record::EpochBegin(EpochBegin {
            epoch,
            kind: EpochKind::Full,
            wall_time_ns: 1_700_000_000_000_000_000,
        }),
        Record::ProcessInfo(process_info()),
        Record::VmaTable(VmaTable::new(&vmas)),
        Record::SignalTable(SignalTable::new(&SIGACTIONS)),
        Record::FdTable(FdTable::new(&fds)),
        Record::MappedFiles(MappedFiles::new(&MAPPED)),
        Record::ThreadState(t100),
        Record::ThreadState(t101),
        Record::Credentials(credentials(100)),
        Record::Credentials(credentials(101)),
        Record::PageRun(PageRun::raw(0x402000, &PAGE_A).unwrap()),
        Record::PageRun(PageRun::zero(0x403000, 3).unwrap()),
    ];
    let mut out = Vec::new();
    let mut digest = EpochDigest::new();
    for r in &records {
        let bytes = frame_bytes(r);
        digest.update_frames(&bytes).unwrap();
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(&frame_bytes(&Record::EpochCommit(digest.commit(epoch))));
    out
}

/// One record of every kind.
pub fn one_of_each() -> Vec<Vec<u8>> {
    let vmas = sorted_vmas();
    let fds = fds();
    let records: Vec<Record<'_>> = vec![
        Record::ProcessInfo(process_info()),
        Record::VmaTable(VmaTable::new(&vmas)),
        Record::PageRun(PageRun::raw(0x402000, &PAGE_A).unwrap()),
        Record::ThreadState(thread(100)),
        Record::SignalTable(SignalTable::new(&SIGACTIONS)),
        Record::FdTable(FdTable::new(&fds)),
        Record::EpochBegin(EpochBegin {
            epoch: 7,
            kind: EpochKind::Delta,
            wall_time_ns: 5,
        }),
        Record::EpochCommit(EpochCommit {
            epoch: 7,
            frame_count: 3,
            digest: 0x1234,
        }),
        Record::Credentials(credentials(100)),
        Record::MappedFiles(MappedFiles::new(&MAPPED)),
        Record::Hello(Hello {
            protocol_version: 1,
            node_id: 2,
            nonce: [3; 32],
            mac: [4; 32],
        }),
        Record::Ack(Ack { epoch: 7 }),
        Record::Heartbeat(Heartbeat {
            seq: 1,
            epoch: 7,
            time_ms: 1000,
        }),
        Record::Error(ErrorFrame {
            code: ErrorCode::StaleEpoch,
            epoch: 6,
            detail: b"stale",
        }),
    ];
    records.iter().map(frame_bytes).collect()
}
