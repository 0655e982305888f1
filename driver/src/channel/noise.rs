//! The handshake and the record layer behind [`Channel`] (design: the parent module).

use std::fmt;
use std::sync::{Arc, OnceLock};

use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use snow::{Builder, HandshakeState, StatelessTransportState};

use super::{ChannelError, Key, Options, Role, CHANNEL_VERSION, NOISE_PARAMS};

/// Clear preamble: magic, then the version as u32 big endian.
const MAGIC: [u8; 12] = *b"checksync-ch";
const PREAMBLE_LEN: usize = 16;
static_assertions::const_assert_eq!(MAGIC.len() + 4, PREAMBLE_LEN);
const PROLOGUE_LABEL: &[u8] = b"checksync channel prologue\0";

/// Largest Noise message (handshake or transport), hence largest record body.
const MAX_RECORD: usize = 65535;
/// The ChaChaPoly tag ending every transport message.
const TAG_LEN: usize = 16;
/// Largest plaintext of one record.
const MAX_PLAIN: usize = MAX_RECORD - TAG_LEN;

/// Record kinds: the first byte of every transport plaintext.
pub(super) const KIND_FIRST: u8 = 1;
pub(super) const KIND_MORE: u8 = 2;
pub(super) const KIND_CLOSE: u8 = 3;
/// A *first* record: kind, the message's total length (u64 BE), then data.
const FIRST_HEADER: usize = 1 + 8;
/// A *more* record: kind, then data.
const MORE_HEADER: usize = 1;

/// Which end of the Noise handshake this side plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Initiator,
    Responder,
}

/// The first error of a channel, shared by its two halves.
#[derive(Debug, Default)]
struct Poison(OnceLock<String>);

impl Poison {
    fn check(&self) -> Result<(), ChannelError> {
        match self.0.get() {
            Some(cause) => Err(ChannelError::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    fn set(&self, cause: String) {
        // The first error is the one worth reporting; later ones follow from it.
        let _ = self.0.set(cause);
    }
}

/// The sending direction: a nonce counter and the buffers of one record.
struct Tx {
    cipher: Arc<StatelessTransportState>,
    nonce: u64,
    plain: Box<[u8]>,
    wire: Box<[u8]>,
    /// Set while a send or close is in flight; still set if that future was dropped.
    busy: bool,
    closed: bool,
    poison: Arc<Poison>,
    /// Bytes written to the stream after the handshake (records with their
    /// length prefixes).
    written: u64,
}

impl Tx {
    fn new(cipher: Arc<StatelessTransportState>, poison: Arc<Poison>) -> Tx {
        Tx {
            cipher,
            nonce: 0,
            plain: vec![0; MAX_PLAIN].into_boxed_slice(),
            wire: vec![0; 2 + MAX_RECORD].into_boxed_slice(),
            busy: false,
            closed: false,
            poison,
            written: 0,
        }
    }

    /// Poisons the channel if an earlier send was cancelled part-way.
    fn check_cancelled(&mut self) -> Result<(), ChannelError> {
        if self.busy {
            self.poison.set(
                "an earlier send or close was cancelled part-way, leaving a partial message \
                 on the wire"
                    .into(),
            );
        }
        self.poison.check()
    }

    fn usable(&mut self) -> Result<(), ChannelError> {
        self.check_cancelled()?;
        if self.closed {
            return Err(ChannelError::Closed);
        }
        Ok(())
    }

    async fn send<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        msg: &[u8],
        max: usize,
    ) -> Result<(), ChannelError> {
        self.usable()?;
        if msg.len() > max {
            // The caller's mistake, found before a byte is written: not poisoning.
            return Err(ChannelError::MessageTooLarge {
                len: msg.len(),
                max,
            });
        }
        self.busy = true;
        let result = self.send_records(w, msg).await;
        self.busy = false;
        if let Err(e) = &result {
            self.poison.set(e.to_string());
        }
        result
    }

    async fn send_records<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        msg: &[u8],
    ) -> Result<(), ChannelError> {
        let total = msg.len() as u64;
        let mut rest = msg;
        let mut first = true;
        loop {
            let header = if first {
                self.plain[0] = KIND_FIRST;
                self.plain[1..FIRST_HEADER].copy_from_slice(&total.to_be_bytes());
                FIRST_HEADER
            } else {
                self.plain[0] = KIND_MORE;
                MORE_HEADER
            };
            let take = rest.len().min(MAX_PLAIN - header);
            self.plain[header..header + take].copy_from_slice(&rest[..take]);
            self.write_record(w, header + take).await?;
            rest = &rest[take..];
            first = false;
            if rest.is_empty() {
                break;
            }
        }
        w.flush().await.map_err(|source| ChannelError::Io {
            during: "sending a message",
            source,
        })
    }

    async fn close<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> Result<(), ChannelError> {
        self.usable()?;
        self.busy = true;
        let result = self.close_inner(w).await;
        self.busy = false;
        self.closed = true;
        if let Err(e) = &result {
            self.poison.set(e.to_string());
        }
        result
    }

    async fn close_inner<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> Result<(), ChannelError> {
        self.plain[0] = KIND_CLOSE;
        self.write_record(w, 1).await?;
        let io = |source| ChannelError::Io {
            during: "closing the channel",
            source,
        };
        w.flush().await.map_err(io)?;
        w.close().await.map_err(io)
    }

    /// Encrypts `plain[..len]` under the next nonce and writes it as one record.
    async fn write_record<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        len: usize,
    ) -> Result<(), ChannelError> {
        if self.nonce == u64::MAX {
            return Err(ChannelError::Exhausted);
        }
        let n = self
            .cipher
            .write_message(self.nonce, &self.plain[..len], &mut self.wire[2..])
            .map_err(noise_err)?;
        let n16 = u16::try_from(n).map_err(|_| ChannelError::Noise {
            detail: format!("a {n}-byte transport message does not fit a record"),
        })?;
        self.nonce += 1;
        self.wire[..2].copy_from_slice(&n16.to_be_bytes());
        w.write_all(&self.wire[..2 + n])
            .await
            .map_err(|source| ChannelError::Io {
                during: "sending a record",
                source,
            })?;
        self.written += 2 + n as u64;
        Ok(())
    }

    /// Test hook: one record with arbitrary plaintext, as a keyed but hostile peer
    /// would send it.
    #[cfg(test)]
    async fn send_raw<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        plain: &[u8],
    ) -> Result<(), ChannelError> {
        self.plain[..plain.len()].copy_from_slice(plain);
        self.write_record(w, plain.len()).await?;
        w.flush().await.map_err(|source| ChannelError::Io {
            during: "sending a test record",
            source,
        })
    }
}

/// A message being reassembled from its records.
struct Partial {
    buf: Vec<u8>,
    total: usize,
}

/// The receiving direction. Every byte read is stored here before the next await,
/// which is what makes `recv` cancellation-safe.
struct Rx {
    cipher: Arc<StatelessTransportState>,
    nonce: u64,
    head: [u8; 2],
    head_got: usize,
    record: Box<[u8]>,
    record_got: usize,
    plain: Box<[u8]>,
    partial: Option<Partial>,
    peer_closed: bool,
    poison: Arc<Poison>,
}

impl Rx {
    fn new(cipher: Arc<StatelessTransportState>, poison: Arc<Poison>) -> Rx {
        Rx {
            cipher,
            nonce: 0,
            head: [0; 2],
            head_got: 0,
            record: vec![0; MAX_RECORD].into_boxed_slice(),
            record_got: 0,
            plain: vec![0; MAX_RECORD].into_boxed_slice(),
            partial: None,
            peer_closed: false,
            poison,
        }
    }

    async fn recv<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        max: usize,
    ) -> Result<Vec<u8>, ChannelError> {
        self.poison.check()?;
        if self.peer_closed {
            return Err(ChannelError::PeerClosed);
        }
        let result = self.recv_inner(r, max).await;
        match &result {
            Ok(_) => {}
            Err(ChannelError::PeerClosed) => self.peer_closed = true,
            Err(e) => self.poison.set(e.to_string()),
        }
        result
    }

    async fn recv_inner<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        max: usize,
    ) -> Result<Vec<u8>, ChannelError> {
        loop {
            let len = self.read_record(r).await?;
            if let Some(msg) = self.open_record(len, max)? {
                return Ok(msg);
            }
        }
    }

    /// Reads the next whole record into `self.record`; returns its length.
    async fn read_record<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<usize, ChannelError> {
        let io = |source| ChannelError::Io {
            during: "receiving a record",
            source,
        };
        while self.head_got < 2 {
            let n = r.read(&mut self.head[self.head_got..]).await.map_err(io)?;
            if n == 0 {
                return Err(self.eof(None));
            }
            self.head_got += n;
        }
        let len = usize::from(u16::from_be_bytes(self.head));
        if len < TAG_LEN + 1 {
            // The length is not authenticated; no authentic record is this short.
            return Err(ChannelError::Tampered { record: self.nonce });
        }
        while self.record_got < len {
            let n = r
                .read(&mut self.record[self.record_got..len])
                .await
                .map_err(io)?;
            if n == 0 {
                return Err(self.eof(Some(len)));
            }
            self.record_got += n;
        }
        self.head_got = 0;
        self.record_got = 0;
        Ok(len)
    }

    fn eof(&self, record_len: Option<usize>) -> ChannelError {
        let record = self.nonce;
        let mut detail = match record_len {
            Some(len) => format!(
                "the stream ended {} bytes into record {record} ({len} bytes)",
                self.record_got
            ),
            None if self.head_got > 0 => {
                format!("the stream ended inside the length of record {record}")
            }
            None if self.partial.is_none() => {
                format!("the stream ended before record {record} without the peer's close record")
            }
            None => format!("the stream ended before record {record}"),
        };
        if let Some(p) = &self.partial {
            detail += &format!(", {} bytes into a {}-byte message", p.buf.len(), p.total);
        }
        ChannelError::Truncated { detail }
    }

    /// Authenticates and interprets the record in `self.record[..len]`; returns a
    /// message once its last record is in.
    fn open_record(&mut self, len: usize, max: usize) -> Result<Option<Vec<u8>>, ChannelError> {
        let record = self.nonce;
        if record == u64::MAX {
            return Err(ChannelError::Exhausted);
        }
        let n = self
            .cipher
            .read_message(record, &self.record[..len], &mut self.plain)
            .map_err(|_| ChannelError::Tampered { record })?;
        self.nonce += 1;
        let protocol = |detail: String| ChannelError::Protocol { detail };
        let Some((&kind, body)) = self.plain[..n].split_first() else {
            return Err(protocol(format!("record {record} is empty")));
        };
        match kind {
            KIND_FIRST => {
                if let Some(p) = &self.partial {
                    return Err(protocol(format!(
                        "record {record} starts a message while a {}-byte message still lacks {} bytes",
                        p.total,
                        p.total - p.buf.len()
                    )));
                }
                let Some((declared, data)) = body.split_first_chunk::<8>() else {
                    return Err(protocol(format!(
                        "record {record} starts a message without its length"
                    )));
                };
                let declared = u64::from_be_bytes(*declared);
                let total = match usize::try_from(declared) {
                    Ok(total) if total <= max => total,
                    _ => return Err(ChannelError::TooLarge { declared, max }),
                };
                if data.len() > total {
                    return Err(protocol(format!(
                        "record {record} carries {} bytes of a message declared as {total}",
                        data.len()
                    )));
                }
                if data.len() == total {
                    return Ok(Some(data.to_vec()));
                }
                if data.is_empty() {
                    return Err(protocol(format!(
                        "record {record} starts a {total}-byte message with no data"
                    )));
                }
                let mut buf = Vec::new();
                buf.try_reserve_exact(total)
                    .map_err(|_| ChannelError::OutOfMemory { len: total })?;
                buf.extend_from_slice(data);
                self.partial = Some(Partial { buf, total });
                Ok(None)
            }
            KIND_MORE => {
                let Some(p) = self.partial.as_mut() else {
                    return Err(protocol(format!(
                        "record {record} continues a message that was never started"
                    )));
                };
                let left = p.total - p.buf.len();
                if body.is_empty() || body.len() > left {
                    return Err(protocol(format!(
                        "record {record} carries {} bytes where {left} are expected",
                        body.len()
                    )));
                }
                p.buf.extend_from_slice(body);
                if p.buf.len() == p.total {
                    return Ok(self.partial.take().map(|p| p.buf));
                }
                Ok(None)
            }
            KIND_CLOSE => {
                if !body.is_empty() {
                    return Err(protocol(format!(
                        "close record {record} carries {} bytes",
                        body.len()
                    )));
                }
                if let Some(p) = &self.partial {
                    return Err(protocol(format!(
                        "the peer closed the channel {} bytes into a {}-byte message",
                        p.buf.len(),
                        p.total
                    )));
                }
                Err(ChannelError::PeerClosed)
            }
            other => Err(protocol(format!(
                "record {record} has unknown kind {other}"
            ))),
        }
    }
}

/// An established channel over `S`. See the parent module for the protocol, the
/// failures and cancellation.
pub struct Channel<S> {
    io: S,
    tx: Tx,
    rx: Rx,
    opts: Options,
    peer_role: Role,
    peer_hello: Vec<u8>,
}

impl<S> fmt::Debug for Channel<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("peer_role", &self.peer_role)
            .field("sent_records", &self.tx.nonce)
            .field("received_records", &self.rx.nonce)
            .field("poisoned", &self.rx.poison.0.get())
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Channel<S> {
    /// Runs the handshake as the connecting side (Noise initiator) with default
    /// [`Options`]. `hello` is free-form information for the peer (its
    /// [`peer_hello`](Self::peer_hello)), sent encrypted after the handshake.
    pub async fn connect(
        stream: S,
        key: &Key,
        role: Role,
        hello: &[u8],
    ) -> Result<Channel<S>, ChannelError> {
        Self::connect_with(stream, key, role, hello, Options::default()).await
    }

    /// [`connect`](Self::connect) with explicit limits.
    pub async fn connect_with(
        stream: S,
        key: &Key,
        role: Role,
        hello: &[u8],
        opts: Options,
    ) -> Result<Channel<S>, ChannelError> {
        handshake(
            stream,
            key,
            role,
            hello,
            opts,
            Side::Initiator,
            CHANNEL_VERSION,
        )
        .await
    }

    /// Runs the handshake as the accepting side (Noise responder) with default
    /// [`Options`]. Returns only after the peer proved it holds the key.
    pub async fn accept(
        stream: S,
        key: &Key,
        role: Role,
        hello: &[u8],
    ) -> Result<Channel<S>, ChannelError> {
        Self::accept_with(stream, key, role, hello, Options::default()).await
    }

    /// [`accept`](Self::accept) with explicit limits.
    pub async fn accept_with(
        stream: S,
        key: &Key,
        role: Role,
        hello: &[u8],
        opts: Options,
    ) -> Result<Channel<S>, ChannelError> {
        handshake(
            stream,
            key,
            role,
            hello,
            opts,
            Side::Responder,
            CHANNEL_VERSION,
        )
        .await
    }

    /// Sends one message of at most [`Options::max_message`] bytes. Not
    /// cancellation-safe: dropping the future part-way poisons the channel.
    pub async fn send(&mut self, msg: &[u8]) -> Result<(), ChannelError> {
        self.tx.send(&mut self.io, msg, self.opts.max_message).await
    }

    /// Receives the next whole, authenticated message. Cancellation-safe.
    pub async fn recv(&mut self) -> Result<Vec<u8>, ChannelError> {
        self.tx.check_cancelled()?;
        self.rx.recv(&mut self.io, self.opts.max_message).await
    }

    /// Sends the authenticated close record and shuts the stream's write side: the
    /// peer's `recv` then returns [`ChannelError::PeerClosed`] rather than
    /// `Truncated`. Receiving stays possible. Not cancellation-safe.
    pub async fn close(&mut self) -> Result<(), ChannelError> {
        self.tx.close(&mut self.io).await
    }

    /// The role the peer claimed in its (authenticated) hello.
    pub fn peer_role(&self) -> Role {
        self.peer_role
    }

    /// The hello information the peer sent.
    pub fn peer_hello(&self) -> &[u8] {
        &self.peer_hello
    }

    /// Splits into a sending and a receiving half that can be used concurrently. An
    /// error in either poisons both.
    pub fn split(self) -> (ChannelSender<WriteHalf<S>>, ChannelReceiver<ReadHalf<S>>) {
        let (r, w) = smol::io::split(self.io);
        (
            ChannelSender {
                io: w,
                tx: self.tx,
                max: self.opts.max_message,
            },
            ChannelReceiver {
                io: r,
                rx: self.rx,
                max: self.opts.max_message,
            },
        )
    }

    #[cfg(test)]
    pub(super) async fn send_raw_record(&mut self, plain: &[u8]) -> Result<(), ChannelError> {
        self.tx.send_raw(&mut self.io, plain).await
    }

    /// Test hook: bytes of an unfinished record or message held by the receiver.
    #[cfg(test)]
    pub(super) fn rx_buffered(&self) -> usize {
        self.rx.head_got + self.rx.record_got + self.rx.partial.as_ref().map_or(0, |p| p.buf.len())
    }
}

/// The sending half of a [`Channel`].
pub struct ChannelSender<W> {
    io: W,
    tx: Tx,
    max: usize,
}

impl<W> fmt::Debug for ChannelSender<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelSender")
            .field("sent_records", &self.tx.nonce)
            .field("closed", &self.tx.closed)
            .finish_non_exhaustive()
    }
}

impl<W: AsyncWrite + Unpin> ChannelSender<W> {
    /// As [`Channel::send`].
    pub async fn send(&mut self, msg: &[u8]) -> Result<(), ChannelError> {
        self.tx.send(&mut self.io, msg, self.max).await
    }

    /// Bytes this side wrote to the stream since the handshake: every record
    /// with its length prefix and tag.
    pub fn wire_bytes(&self) -> u64 {
        self.tx.written
    }

    /// As [`Channel::close`].
    pub async fn close(&mut self) -> Result<(), ChannelError> {
        self.tx.close(&mut self.io).await
    }
}

/// The receiving half of a [`Channel`].
pub struct ChannelReceiver<R> {
    io: R,
    rx: Rx,
    max: usize,
}

impl<R> fmt::Debug for ChannelReceiver<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelReceiver")
            .field("received_records", &self.rx.nonce)
            .finish_non_exhaustive()
    }
}

impl<R: AsyncRead + Unpin> ChannelReceiver<R> {
    /// As [`Channel::recv`] (cancellation-safe).
    pub async fn recv(&mut self) -> Result<Vec<u8>, ChannelError> {
        self.rx.recv(&mut self.io, self.max).await
    }
}

fn noise_err(e: snow::Error) -> ChannelError {
    ChannelError::Noise {
        detail: e.to_string(),
    }
}

fn preamble(version: u32) -> [u8; PREAMBLE_LEN] {
    let mut p = [0u8; PREAMBLE_LEN];
    p[..MAGIC.len()].copy_from_slice(&MAGIC);
    p[MAGIC.len()..].copy_from_slice(&version.to_be_bytes());
    p
}

async fn write_flush<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    during: &'static str,
) -> Result<(), ChannelError> {
    let io = |source| ChannelError::Io { during, source };
    w.write_all(bytes).await.map_err(io)?;
    w.flush().await.map_err(io)
}

async fn read_full<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), ChannelError> {
    let mut got = 0;
    while got < buf.len() {
        let n = r
            .read(&mut buf[got..])
            .await
            .map_err(|source| ChannelError::Io {
                during: what,
                source,
            })?;
        if n == 0 {
            return Err(ChannelError::Truncated {
                detail: format!(
                    "the stream ended {got} bytes into {what} ({} bytes)",
                    buf.len()
                ),
            });
        }
        got += n;
    }
    Ok(())
}

/// Writes one handshake record (`u16` BE length, body).
async fn write_hs_record<W: AsyncWrite + Unpin>(
    w: &mut W,
    body: &[u8],
    during: &'static str,
) -> Result<(), ChannelError> {
    let len = u16::try_from(body.len()).map_err(|_| ChannelError::Noise {
        detail: format!("a {}-byte handshake message", body.len()),
    })?;
    let mut rec = Vec::with_capacity(2 + body.len());
    rec.extend_from_slice(&len.to_be_bytes());
    rec.extend_from_slice(body);
    write_flush(w, &rec, during).await
}

/// Reads one handshake record into `buf` (at least [`MAX_RECORD`] bytes long).
async fn read_hs_record<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    what: &'static str,
) -> Result<usize, ChannelError> {
    let mut head = [0u8; 2];
    read_full(r, &mut head, what).await?;
    let len = usize::from(u16::from_be_bytes(head));
    read_full(r, &mut buf[..len], what).await?;
    Ok(len)
}

/// Preamble exchange, Noise handshake and hello exchange (the parent module's
/// "Wire format"). `version` is a parameter only so tests can play another release.
pub(super) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    key: &Key,
    role: Role,
    hello: &[u8],
    opts: Options,
    side: Side,
    version: u32,
) -> Result<Channel<S>, ChannelError> {
    let our_hello: Vec<u8> = [&[role.to_byte()][..], hello].concat();
    if our_hello.len() > opts.max_hello {
        return Err(ChannelError::MessageTooLarge {
            len: our_hello.len(),
            max: opts.max_hello,
        });
    }

    // 1. Clear preambles, so a version mismatch is named on both sides.
    let ours = preamble(version);
    write_flush(&mut io, &ours, "sending the preamble").await?;
    let mut theirs = [0u8; PREAMBLE_LEN];
    read_full(&mut io, &mut theirs, "the peer's preamble").await?;
    if theirs[..MAGIC.len()] != MAGIC {
        return Err(ChannelError::NotAPeer {
            got: theirs.escape_ascii().to_string(),
        });
    }
    let their_version = u32::from_be_bytes([theirs[12], theirs[13], theirs[14], theirs[15]]);
    if their_version != version {
        return Err(ChannelError::VersionMismatch {
            ours: version,
            theirs: their_version,
        });
    }

    // 2. Noise, with everything said in clear bound into the prologue.
    let (init_pre, resp_pre) = match side {
        Side::Initiator => (ours, theirs),
        Side::Responder => (theirs, ours),
    };
    let prologue = [
        PROLOGUE_LABEL,
        NOISE_PARAMS.as_bytes(),
        &init_pre,
        &resp_pre,
    ]
    .concat();
    let params = NOISE_PARAMS.parse().map_err(noise_err)?;
    let builder = Builder::new(params)
        .psk(0, key.as_bytes())
        .map_err(noise_err)?
        .prologue(&prologue)
        .map_err(noise_err)?;
    let mut msg = vec![0u8; MAX_RECORD];
    let mut payload = vec![0u8; MAX_RECORD];
    let state: HandshakeState = match side {
        Side::Initiator => {
            let mut hs = builder.build_initiator().map_err(noise_err)?;
            let n = hs.write_message(&[], &mut msg).map_err(noise_err)?;
            write_hs_record(&mut io, &msg[..n], "sending the handshake").await?;
            let len = read_hs_record(&mut io, &mut msg, "the peer's handshake reply").await?;
            if len == 0 {
                return Err(ChannelError::WrongKey {
                    detail: "the peer could not authenticate our handshake with its key",
                });
            }
            hs.read_message(&msg[..len], &mut payload)
                .map_err(|_| ChannelError::WrongKey {
                    detail: "the peer's handshake reply did not authenticate with our key",
                })?;
            hs
        }
        Side::Responder => {
            let mut hs = builder.build_responder().map_err(noise_err)?;
            let len = read_hs_record(&mut io, &mut msg, "the peer's handshake").await?;
            if hs.read_message(&msg[..len], &mut payload).is_err() {
                // An unauthenticated hint so the initiator can name the cause; a
                // forger gains nothing it could not get by resetting the connection.
                let _ = write_hs_record(&mut io, &[], "refusing the handshake").await;
                return Err(ChannelError::WrongKey {
                    detail: "the peer's handshake did not authenticate with our key",
                });
            }
            let n = hs.write_message(&[], &mut msg).map_err(noise_err)?;
            write_hs_record(&mut io, &msg[..n], "answering the handshake").await?;
            hs
        }
    };
    if !state.is_handshake_finished() {
        return Err(ChannelError::Noise {
            detail: "handshake not finished after two messages".into(),
        });
    }
    let cipher = Arc::new(state.into_stateless_transport_mode().map_err(noise_err)?);
    let poison = Arc::new(Poison::default());
    let mut ch = Channel {
        io,
        tx: Tx::new(Arc::clone(&cipher), Arc::clone(&poison)),
        rx: Rx::new(cipher, poison),
        opts,
        peer_role: role,
        peer_hello: Vec::new(),
    };

    // 3. Hellos: the initiator's first, so `accept` returns only after key
    // confirmation. The responder answers before judging the roles, so a role
    // mismatch is reported on both sides.
    let their_hello = match side {
        Side::Initiator => {
            ch.tx.send(&mut ch.io, &our_hello, opts.max_hello).await?;
            recv_hello(&mut ch).await?
        }
        Side::Responder => {
            let h = recv_hello(&mut ch).await?;
            ch.tx.send(&mut ch.io, &our_hello, opts.max_hello).await?;
            h
        }
    };
    let Some((&role_byte, info)) = their_hello.split_first() else {
        return Err(ChannelError::Protocol {
            detail: "the peer's hello is empty".into(),
        });
    };
    let peer_role = Role::from_byte(role_byte).ok_or_else(|| ChannelError::Protocol {
        detail: format!("the peer's hello names unknown role {role_byte}"),
    })?;
    if peer_role == role {
        return Err(ChannelError::RoleMismatch { ours: role });
    }
    ch.peer_role = peer_role;
    ch.peer_hello = info.to_vec();
    Ok(ch)
}

async fn recv_hello<S: AsyncRead + Unpin>(ch: &mut Channel<S>) -> Result<Vec<u8>, ChannelError> {
    match ch.rx.recv(&mut ch.io, ch.opts.max_hello).await {
        Ok(h) => Ok(h),
        Err(ChannelError::Tampered { .. }) => Err(ChannelError::WrongKey {
            detail: "key confirmation failed: the peer's first encrypted message did not \
                     authenticate (a replayed or altered handshake)",
        }),
        Err(ChannelError::PeerClosed) => Err(ChannelError::Protocol {
            detail: "the peer closed the channel before its hello".into(),
        }),
        Err(e) => Err(e),
    }
}
