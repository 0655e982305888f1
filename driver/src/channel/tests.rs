//! Channel tests over real loopback TCP, with a record-aware proxy in the middle for
//! the attacks (alter, replay, reorder, drop, truncate).

use std::net::Shutdown;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_net::{TcpListener, TcpStream};
use smol::future::{self, FutureExt};
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::Timer;

use super::noise::{handshake, Side, KIND_CLOSE, KIND_FIRST, KIND_MORE};
use super::*;

type Ch = Channel<TcpStream>;

/// Runs a test future with a hang guard (a failure, not a timing assertion).
fn run<T>(fut: impl std::future::Future<Output = T>) -> T {
    smol::block_on(fut.or(async {
        Timer::after(Duration::from_secs(120)).await;
        panic!("channel test hung for 120 s");
    }))
}

fn key(b: u8) -> Key {
    Key::from_bytes([b; KEY_LEN_FOR_TESTS])
}
const KEY_LEN_FOR_TESTS: usize = key::KEY_LEN;

/// Deterministic bytes that differ per `seed` and per position.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, server) = future::zip(TcpStream::connect(addr), listener.accept()).await;
    (client.unwrap(), server.unwrap().0)
}

async fn pair_with(
    ck: &Key,
    sk: &Key,
    copts: Options,
    sopts: Options,
) -> (Result<Ch, ChannelError>, Result<Ch, ChannelError>) {
    let (c, s) = tcp_pair().await;
    future::zip(
        Channel::connect_with(c, ck, Role::Primary, b"primary says hi", copts),
        Channel::accept_with(s, sk, Role::Backup, b"backup says hi", sopts),
    )
    .await
}

async fn pair() -> (Ch, Ch) {
    let k = key(7);
    let (c, s) = pair_with(&k, &k, Options::default(), Options::default()).await;
    (c.unwrap(), s.unwrap())
}

/// What the proxy forwards for one client-to-server record.
#[derive(Default)]
struct Out {
    /// Written in order; the gate (if any) is awaited between the first and the rest.
    write: Vec<Vec<u8>>,
    gate: Option<smol::channel::Receiver<()>>,
    /// Shut the server-facing connection after writing.
    then_close: bool,
}

impl Out {
    fn pass(rec: Vec<u8>) -> Out {
        Out {
            write: vec![rec],
            ..Out::default()
        }
    }
}

/// Record index of the client's first application record: 0 is the Noise handshake
/// message, 1 the hello (transport record 0).
const FIRST_APP: usize = 2;

/// Relays the preamble, then client-to-server records through `edit`; the other
/// direction is copied unchanged.
async fn proxy(
    client_side: TcpStream,
    server_side: TcpStream,
    mut edit: impl FnMut(usize, Vec<u8>) -> Out + Send + 'static,
) {
    let down = {
        let (from, mut to) = (server_side.clone(), client_side.clone());
        async move {
            let _ = smol::io::copy(from, &mut to).await;
            let _ = to.shutdown(Shutdown::Write);
        }
    };
    let up = {
        let (mut from, mut to) = (client_side, server_side);
        async move {
            let mut pre = [0u8; 16];
            if from.read_exact(&mut pre).await.is_err() || to.write_all(&pre).await.is_err() {
                return;
            }
            for i in 0.. {
                let mut head = [0u8; 2];
                if from.read_exact(&mut head).await.is_err() {
                    break;
                }
                let len = usize::from(u16::from_be_bytes(head));
                let mut rec = head.to_vec();
                rec.resize(2 + len, 0);
                if from.read_exact(&mut rec[2..]).await.is_err() {
                    break;
                }
                let out = edit(i, rec);
                for (n, chunk) in out.write.iter().enumerate() {
                    if n == 1 {
                        if let Some(gate) = &out.gate {
                            let _ = gate.recv().await;
                        }
                    }
                    if to.write_all(chunk).await.is_err() {
                        return;
                    }
                }
                if out.then_close {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        }
    };
    future::zip(down, up).await;
}

/// A client and a server channel with [`proxy`] between them.
async fn proxied(
    edit: impl FnMut(usize, Vec<u8>) -> Out + Send + 'static,
) -> (Result<Ch, ChannelError>, Result<Ch, ChannelError>) {
    let k = key(7);
    let (client_app, client_side) = tcp_pair().await;
    let (server_side, server_app) = tcp_pair().await;
    smol::spawn(proxy(client_side, server_side, edit)).detach();
    future::zip(
        Channel::connect(client_app, &k, Role::Primary, b"p"),
        Channel::accept(server_app, &k, Role::Backup, b"b"),
    )
    .await
}

fn assert_tampered(err: ChannelError, record: u64) {
    match err {
        ChannelError::Tampered { record: r } => assert_eq!(r, record, "wrong record named"),
        other => panic!("expected Tampered {{ record: {record} }}, got {other:?}"),
    }
}

fn assert_poisoned(err: ChannelError, cause: &str) {
    match err {
        ChannelError::Poisoned { cause: c } => assert!(c.contains(cause), "cause: {c}"),
        other => panic!("expected Poisoned, got {other:?}"),
    }
}

#[test]
fn round_trip_small_and_large_messages_both_ways() {
    run(async {
        let (mut c, mut s) = pair().await;
        assert_eq!(c.peer_role(), Role::Backup);
        assert_eq!(c.peer_hello(), b"backup says hi");
        assert_eq!(s.peer_role(), Role::Primary);
        assert_eq!(s.peer_hello(), b"primary says hi");

        // Record boundaries: 65510 bytes fill one first record, 65518 one more record.
        let sizes = [
            0,
            1,
            100,
            65510,
            65511,
            65510 + 65518,
            65510 + 65518 + 1,
            3 << 20,
            (5 << 20) + 12345,
        ];
        let msgs: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| pattern(n, i as u64 + 1))
            .collect();
        let send_all = async {
            for m in &msgs {
                c.send(m).await.unwrap();
            }
        };
        let recv_all = async {
            let mut got = Vec::new();
            for _ in &msgs {
                got.push(s.recv().await.unwrap());
            }
            got
        };
        let ((), got) = future::zip(send_all, recv_all).await;
        assert_eq!(got.len(), msgs.len());
        for (i, (g, m)) in got.iter().zip(&msgs).enumerate() {
            assert!(
                g == m,
                "message {i}: {} bytes received, {} sent",
                g.len(),
                m.len()
            );
        }

        // The other direction, same channel.
        let big = pattern(2 << 20, 99);
        let ((), back) = future::zip(async { s.send(&big).await.unwrap() }, async {
            c.recv().await.unwrap()
        })
        .await;
        assert!(back == big);

        // An authenticated close: the peer sees PeerClosed (again on every call), the
        // closer can no longer send but can still receive.
        c.close().await.unwrap();
        assert!(matches!(s.recv().await, Err(ChannelError::PeerClosed)));
        assert!(matches!(s.recv().await, Err(ChannelError::PeerClosed)));
        assert!(matches!(c.send(b"x").await, Err(ChannelError::Closed)));
        s.send(b"last words").await.unwrap();
        assert_eq!(c.recv().await.unwrap(), b"last words");
    });
}

#[test]
fn split_halves_carry_both_directions_at_once() {
    run(async {
        let (c, s) = pair().await;
        let (mut c_tx, mut c_rx) = c.split();
        let (mut s_tx, mut s_rx) = s.split();
        const N: u64 = 12;
        let primary_sends = async {
            for i in 0..N {
                c_tx.send(&pattern(700_000, i)).await.unwrap();
            }
        };
        let backup_acks = async {
            for i in 0..N {
                let m = s_rx.recv().await.unwrap();
                assert!(m == pattern(700_000, i), "epoch {i} corrupted");
                s_tx.send(&i.to_be_bytes()).await.unwrap();
            }
        };
        let primary_reads_acks = async {
            let mut acks = Vec::new();
            for _ in 0..N {
                acks.push(u64::from_be_bytes(
                    c_rx.recv().await.unwrap().try_into().unwrap(),
                ));
            }
            acks
        };
        let (((), ()), acks) =
            future::zip(future::zip(primary_sends, backup_acks), primary_reads_acks).await;
        assert_eq!(acks, (0..N).collect::<Vec<_>>());
    });
}

#[test]
fn wrong_key_is_refused_on_both_sides() {
    run(async {
        let (c, s) = pair_with(&key(1), &key(2), Options::default(), Options::default()).await;
        let (c, s) = (c.unwrap_err(), s.unwrap_err());
        assert!(matches!(c, ChannelError::WrongKey { .. }), "client: {c}");
        assert!(matches!(s, ChannelError::WrongKey { .. }), "server: {s}");
        assert!(c.is_refusal() && s.is_refusal());
        assert!(s.to_string().contains("same key file"), "{s}");
    });
}

#[test]
fn version_mismatch_is_named_on_both_sides() {
    run(async {
        let k = key(3);
        let (c, s) = tcp_pair().await;
        let newer = CHANNEL_VERSION + 1;
        let (c, s) = future::zip(
            handshake(
                c,
                &k,
                Role::Primary,
                b"",
                Options::default(),
                Side::Initiator,
                newer,
            ),
            handshake(
                s,
                &k,
                Role::Backup,
                b"",
                Options::default(),
                Side::Responder,
                CHANNEL_VERSION,
            ),
        )
        .await;
        match c.unwrap_err() {
            ChannelError::VersionMismatch { ours, theirs } => {
                assert_eq!((ours, theirs), (newer, CHANNEL_VERSION))
            }
            other => panic!("client: {other}"),
        }
        let s = s.unwrap_err();
        match &s {
            ChannelError::VersionMismatch { ours, theirs } => {
                assert_eq!((*ours, *theirs), (CHANNEL_VERSION, newer))
            }
            other => panic!("server: {other}"),
        }
        let msg = s.to_string();
        assert!(msg.contains(&format!("version {CHANNEL_VERSION}")), "{msg}");
        assert!(msg.contains(&format!("version {newer}")), "{msg}");
    });
}

#[test]
fn something_that_is_not_a_peer_is_named() {
    run(async {
        let (mut c, s) = tcp_pair().await;
        let k = key(3);
        let (_, s) = future::zip(
            async { c.write_all(b"GET / HTTP/1.1\r\n\r\n").await },
            Channel::accept(s, &k, Role::Backup, b""),
        )
        .await;
        let err = s.unwrap_err();
        assert!(matches!(err, ChannelError::NotAPeer { .. }), "{err}");
        assert!(err.to_string().contains("GET / HTTP"), "{err}");
    });
}

#[test]
fn two_primaries_are_refused_on_both_sides() {
    run(async {
        let k = key(4);
        let (c, s) = tcp_pair().await;
        let (c, s) = future::zip(
            Channel::connect(c, &k, Role::Primary, b""),
            Channel::accept(s, &k, Role::Primary, b""),
        )
        .await;
        for e in [c.unwrap_err(), s.unwrap_err()] {
            assert!(
                matches!(
                    e,
                    ChannelError::RoleMismatch {
                        ours: Role::Primary
                    }
                ),
                "{e}"
            );
        }
    });
}

#[test]
fn an_altered_handshake_is_refused() {
    run(async {
        // The Noise handshake message: flip a bit of the ephemeral key.
        let (c, s) = proxied(|i, mut rec| {
            if i == 0 {
                rec[2 + 5] ^= 0x40;
            }
            Out::pass(rec)
        })
        .await;
        assert!(matches!(s.unwrap_err(), ChannelError::WrongKey { .. }));
        assert!(matches!(c.unwrap_err(), ChannelError::WrongKey { .. }));

        // The initiator's hello (key confirmation).
        let (c, s) = proxied(|i, mut rec| {
            if i == 1 {
                rec[2 + 3] ^= 1;
            }
            Out::pass(rec)
        })
        .await;
        let s = s.unwrap_err();
        assert!(
            matches!(s, ChannelError::WrongKey { detail } if detail.contains("key confirmation")),
            "{s}"
        );
        assert!(c.is_err());
    });
}

#[test]
fn a_tampered_byte_is_refused_and_nothing_is_returned() {
    run(async {
        // A single-record message.
        let (c, s) = proxied(|i, mut rec| {
            if i == FIRST_APP {
                rec[2 + 20] ^= 0x01;
            }
            Out::pass(rec)
        })
        .await;
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        c.send(&pattern(100, 1)).await.unwrap();
        assert_tampered(s.recv().await.unwrap_err(), 1);
        assert_poisoned(s.recv().await.unwrap_err(), "record 1");
        assert_poisoned(s.send(b"x").await.unwrap_err(), "record 1");

        // The last record of a four-record message: the first three authenticated,
        // yet nothing of the message is returned.
        let (c, s) = proxied(|i, mut rec| {
            if i == FIRST_APP + 3 {
                let last = rec.len() - 1;
                rec[last] ^= 0x80; // the tag
            }
            Out::pass(rec)
        })
        .await;
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        let msg = pattern(3 * 65518 + 10, 2);
        let (sent, got) = future::zip(c.send(&msg), s.recv()).await;
        sent.unwrap();
        assert_tampered(got.unwrap_err(), 4);

        // The clear length of a record: the body is misread and fails.
        let (c, s) = proxied(|i, mut rec| {
            if i == FIRST_APP {
                rec[1] = rec[1].wrapping_sub(1);
            }
            Out::pass(rec)
        })
        .await;
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        c.send(b"0123456789").await.unwrap();
        c.send(b"abcdefghij").await.unwrap();
        assert_tampered(s.recv().await.unwrap_err(), 1);
    });
}

#[test]
fn a_replayed_record_is_refused() {
    run(async {
        // Within a session: the same record twice.
        let (c, s) = proxied(|i, rec| {
            if i == FIRST_APP {
                Out {
                    write: vec![rec.clone(), rec],
                    ..Out::default()
                }
            } else {
                Out::pass(rec)
            }
        })
        .await;
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        c.send(b"transfer 100").await.unwrap();
        assert_eq!(s.recv().await.unwrap(), b"transfer 100");
        assert_tampered(s.recv().await.unwrap_err(), 2);

        // Across sessions: a record recorded in one session, injected into the next at
        // the same position. Fresh ephemeral keys make it fail.
        let recorded: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let rec1 = Arc::clone(&recorded);
        let (c, s) = proxied(move |i, rec| {
            if i == FIRST_APP {
                *rec1.lock().unwrap() = Some(rec.clone());
            }
            Out::pass(rec)
        })
        .await;
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        c.send(b"same words").await.unwrap();
        assert_eq!(s.recv().await.unwrap(), b"same words");
        let old = recorded.lock().unwrap().clone().unwrap();
        let (c, s) =
            proxied(move |i, rec| Out::pass(if i == FIRST_APP { old.clone() } else { rec })).await;
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        c.send(b"same words").await.unwrap();
        assert_tampered(s.recv().await.unwrap_err(), 1);
    });
}

/// A proxy edit that swaps records `a` and `a + 1`.
fn swap_at(a: usize) -> impl FnMut(usize, Vec<u8>) -> Out + Send + 'static {
    let mut held = None;
    move |i, rec| {
        if i == a {
            held = Some(rec);
            Out::default()
        } else if i == a + 1 {
            Out {
                write: vec![rec, held.take().unwrap()],
                ..Out::default()
            }
        } else {
            Out::pass(rec)
        }
    }
}

#[test]
fn reordered_records_are_refused() {
    run(async {
        // Two messages swapped.
        let (c, s) = proxied(swap_at(FIRST_APP)).await;
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        c.send(b"first").await.unwrap();
        c.send(b"second").await.unwrap();
        assert_tampered(s.recv().await.unwrap_err(), 1);

        // Two records inside one message swapped.
        let (c, s) = proxied(swap_at(FIRST_APP + 1)).await;
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        let msg = pattern(3 * 65518, 5);
        let (sent, got) = future::zip(c.send(&msg), s.recv()).await;
        sent.unwrap();
        assert_tampered(got.unwrap_err(), 2);

        // A record dropped.
        let (c, s) = proxied(|i, rec| {
            if i == FIRST_APP {
                Out::default()
            } else {
                Out::pass(rec)
            }
        })
        .await;
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        c.send(b"lost").await.unwrap();
        c.send(b"kept").await.unwrap();
        assert_tampered(s.recv().await.unwrap_err(), 1);
    });
}

#[test]
fn a_truncated_stream_is_refused() {
    run(async {
        // EOF in the middle of a record.
        let (c, s) = proxied(|i, rec| {
            if i == FIRST_APP {
                Out {
                    write: vec![rec[..rec.len() / 2].to_vec()],
                    then_close: true,
                    ..Out::default()
                }
            } else {
                Out::pass(rec)
            }
        })
        .await;
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        c.send(&pattern(1000, 3)).await.unwrap();
        let err = s.recv().await.unwrap_err();
        assert!(
            matches!(&err, ChannelError::Truncated { detail } if detail.contains("into record 1")),
            "{err}"
        );
        assert_poisoned(s.recv().await.unwrap_err(), "truncated");

        // EOF between the records of a message.
        let (c, s) = proxied(|i, rec| {
            if i == FIRST_APP + 2 {
                Out {
                    then_close: true,
                    ..Out::default()
                }
            } else {
                Out::pass(rec)
            }
        })
        .await;
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        let msg = pattern(4 * 65518, 4);
        let (_, got) = future::zip(c.send(&msg), s.recv()).await;
        let err = got.unwrap_err();
        assert!(
            matches!(&err, ChannelError::Truncated { detail }
                if detail.contains(&format!("into a {}-byte message", msg.len()))),
            "{err}"
        );

        // EOF between messages without the close record: still a truncation.
        let (c, mut s) = pair().await;
        let mut c = c;
        c.send(b"one").await.unwrap();
        drop(c);
        assert_eq!(s.recv().await.unwrap(), b"one");
        let err = s.recv().await.unwrap_err();
        assert!(
            matches!(&err, ChannelError::Truncated { detail } if detail.contains("close record")),
            "{err}"
        );

        // EOF during the handshake.
        let (c, s) = proxied(|i, rec| {
            if i == 0 {
                Out {
                    write: vec![rec[..10].to_vec()],
                    then_close: true,
                    ..Out::default()
                }
            } else {
                Out::pass(rec)
            }
        })
        .await;
        assert!(matches!(s.unwrap_err(), ChannelError::Truncated { .. }));
        assert!(c.is_err());
    });
}

#[test]
fn an_oversized_declared_length_is_refused_before_allocation() {
    run(async {
        let k = key(9);
        let small = Options {
            max_message: 1 << 20,
            ..Options::default()
        };
        let big = Options {
            max_message: 4 << 20,
            ..Options::default()
        };
        let (c, s) = pair_with(&k, &k, big, small).await;
        let (mut c, s) = (c.unwrap(), s.unwrap());
        let msg = pattern(2 << 20, 8);
        let (_, err) = future::zip(c.send(&msg), async move {
            let mut s = s;
            let err = s.recv().await.unwrap_err();
            // Poisoned afterwards; dropping the channel lets the sender finish.
            assert_poisoned(s.recv().await.unwrap_err(), "declared");
            err
        })
        .await;
        match err {
            ChannelError::TooLarge { declared, max } => {
                assert_eq!((declared, max), (msg.len() as u64, 1 << 20))
            }
            other => panic!("{other}"),
        }

        // A keyed peer declaring 2^64 - 1 bytes.
        let (mut c, mut s) = pair().await;
        let mut rec = vec![KIND_FIRST];
        rec.extend_from_slice(&u64::MAX.to_be_bytes());
        rec.extend_from_slice(b"tiny");
        c.send_raw_record(&rec).await.unwrap();
        match s.recv().await.unwrap_err() {
            ChannelError::TooLarge { declared, max } => {
                assert_eq!((declared, max), (u64::MAX, DEFAULT_MAX_MESSAGE))
            }
            other => panic!("{other}"),
        }
    });
}

#[test]
fn an_oversized_outgoing_message_is_refused_without_poisoning() {
    run(async {
        let k = key(9);
        let opts = Options {
            max_message: 1000,
            ..Options::default()
        };
        let (c, s) = pair_with(&k, &k, opts, opts).await;
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        match c.send(&[0; 1001]).await.unwrap_err() {
            ChannelError::MessageTooLarge { len, max } => assert_eq!((len, max), (1001, 1000)),
            other => panic!("{other}"),
        }
        c.send(&[5; 1000]).await.unwrap();
        assert_eq!(s.recv().await.unwrap(), vec![5; 1000]);

        // So is a hello over the hello limit, before anything is sent.
        let (c, _s) = tcp_pair().await;
        let err = Channel::connect(c, &k, Role::Primary, &vec![0; DEFAULT_MAX_HELLO])
            .await
            .unwrap_err();
        assert!(matches!(err, ChannelError::MessageTooLarge { .. }), "{err}");
    });
}

#[test]
fn malformed_records_from_a_keyed_peer_are_protocol_errors() {
    run(async {
        let mut first_10_with_11 = vec![KIND_FIRST];
        first_10_with_11.extend_from_slice(&10u64.to_be_bytes());
        first_10_with_11.extend_from_slice(&[1; 11]);
        let mut first_100_with_10 = vec![KIND_FIRST];
        first_100_with_10.extend_from_slice(&100u64.to_be_bytes());
        first_100_with_10.extend_from_slice(&[1; 10]);
        let cases: Vec<(&str, Vec<Vec<u8>>, &str)> = vec![
            (
                "more without first",
                vec![vec![KIND_MORE, 1, 2]],
                "never started",
            ),
            ("unknown kind", vec![vec![9, 1]], "unknown kind 9"),
            ("overlong first", vec![first_10_with_11], "declared as 10"),
            (
                "first without length",
                vec![vec![KIND_FIRST, 0, 0]],
                "without its length",
            ),
            (
                "close mid-message",
                vec![first_100_with_10.clone(), vec![KIND_CLOSE]],
                "closed the channel 10 bytes into a 100-byte message",
            ),
            (
                "overlong continuation",
                vec![first_100_with_10.clone(), vec![KIND_MORE; 92]],
                "91 bytes where 90 are expected",
            ),
            (
                "first inside a message",
                vec![first_100_with_10.clone(), first_100_with_10],
                "still lacks 90 bytes",
            ),
        ];
        for (name, records, want) in cases {
            let (mut c, mut s) = pair().await;
            for r in &records {
                c.send_raw_record(r).await.unwrap();
            }
            let err = s.recv().await.unwrap_err();
            assert!(
                matches!(&err, ChannelError::Protocol { detail } if detail.contains(want)),
                "{name}: {err}"
            );
        }
    });
}

#[test]
fn a_cancelled_recv_loses_nothing() {
    run(async {
        let (gate_tx, gate_rx) = smol::channel::bounded::<()>(1);
        let (c, s) = proxied(move |i, rec| {
            if i == FIRST_APP {
                // Half the record, then wait for the test's signal.
                Out {
                    write: vec![rec[..500].to_vec(), rec[500..].to_vec()],
                    gate: Some(gate_rx.clone()),
                    ..Out::default()
                }
            } else {
                Out::pass(rec)
            }
        })
        .await;
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        let msg = pattern(1000, 6);
        c.send(&msg).await.unwrap();
        // Poll and drop `recv` futures until one of them has read part of the record.
        let mut cancelled = 0;
        while s.rx_buffered() == 0 {
            assert!(cancelled < 10_000, "the first half never arrived");
            assert!(
                future::poll_once(s.recv()).await.is_none(),
                "half a record made a message"
            );
            cancelled += 1;
            if s.rx_buffered() == 0 {
                Timer::after(Duration::from_millis(2)).await;
            }
        }
        // Once more with bytes held, then let the rest through.
        assert!(future::poll_once(s.recv()).await.is_none());
        assert!(s.rx_buffered() > 0);
        gate_tx.send(()).await.unwrap();
        assert_eq!(s.recv().await.unwrap(), msg);
        // The channel is in step: more messages pass.
        c.send(b"after").await.unwrap();
        assert_eq!(s.recv().await.unwrap(), b"after");
    });
}

#[test]
fn a_cancelled_send_poisons_the_channel() {
    run(async {
        let (mut c, _s) = pair().await;
        // The peer reads nothing: a 60 MiB send cannot complete in one poll.
        let big = vec![0x5a; 60 << 20];
        assert!(
            future::poll_once(c.send(&big)).await.is_none(),
            "60 MiB fit the socket buffers; the test cannot cancel mid-send"
        );
        assert_poisoned(c.send(b"x").await.unwrap_err(), "cancelled part-way");
        assert_poisoned(c.recv().await.unwrap_err(), "cancelled part-way");
    });
}
