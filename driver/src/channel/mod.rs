//! The authenticated, encrypted channel between a primary and its backup.
//!
//! One connection per pair, async on `smol`. [`Channel::connect`] and
//! [`Channel::accept`] run the handshake over any `AsyncRead + AsyncWrite + Unpin`
//! stream (an `async_net::TcpStream` in production); afterwards [`Channel::send`] and
//! [`Channel::recv`] carry application messages of up to [`Options::max_message`]
//! bytes (64 MiB by default: an epoch is large). [`Channel::split`] gives a sending
//! and a receiving half, so acknowledgements can flow while an epoch is sent.
//!
//! # Why `Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s`
//!
//! The only credential is the shared key file both sides are given ([`key`]). A
//! pattern with static key pairs (`XXpsk3`, `IKpsk2`) would add keys that nothing
//! pins: authentication would still rest on the pre-shared key alone, for an extra
//! round trip and key material to manage. `NNpsk0` gives, in one round trip:
//!
//! - **mutual authentication by the key**: the key is mixed in before the first
//!   message, so the responder rejects a peer without it on that first message, having
//!   sent nothing but its clear preamble, and the initiator rejects a responder without
//!   it on the reply;
//! - **forward secrecy** from the ephemeral-ephemeral Diffie-Hellman: a key file
//!   stolen later does not decrypt recorded sessions (it does let the thief
//!   impersonate either side from then on: replace the file on both sides);
//! - **key confirmation before use**: the handshake messages carry no payload, and
//!   `accept` returns only after the initiator's first *transport* message (its
//!   hello) authenticated, which a replayed first handshake message cannot produce.
//!
//! The prologue binds the protocol label, the Noise parameters and both sides' clear
//! preambles (magic and version), so an edited preamble (a downgrade) fails the
//! handshake even where the edit itself went unnoticed.
//!
//! Anyone holding the key can play either role; the roles each side claims travel in
//! the encrypted hellos and two primaries (or two backups) are refused.
//!
//! # Wire format (see docs/channel.md)
//!
//! 1. Each side sends a 16-byte clear preamble (`checksync-ch` + version, u32 big
//!    endian) and reads the peer's: a different version is [`ChannelError::VersionMismatch`]
//!    on both sides, before any cryptography.
//! 2. Noise handshake, two records. A responder that cannot authenticate the first
//!    answers with an empty record (an unauthenticated hint only) so the initiator can
//!    report [`ChannelError::WrongKey`] too rather than a bare disconnect.
//! 3. Transport records: `u16` big-endian length, then that many bytes of one Noise
//!    transport message (<= 65535). Nonces are implicit counters, so a record that is
//!    altered, replayed, reordered or dropped fails authentication
//!    ([`ChannelError::Tampered`]). Inside, a kind byte: *first* (followed by the
//!    whole message's length, u64 big endian, and the first chunk), *more*
//!    (a further chunk) or *close* (the authenticated end of the stream).
//!
//! # Failures
//!
//! Every failure is a typed [`ChannelError`]; this module never prints, the caller
//! logs it with the peer's address. After any error except [`ChannelError::MessageTooLarge`]
//! (the caller's own message, refused before a byte is written) and
//! [`ChannelError::PeerClosed`], the channel is poisoned: every later call returns
//! [`ChannelError::Poisoned`] naming the first error. A message is returned only once
//! all its records authenticated: nothing of a refused message reaches the caller.
//! Writing to a vanished peer is an `Io` error (EPIPE), not a signal: this relies on
//! SIGPIPE being ignored, as the Rust runtime arranges for every binary.
//!
//! # Cancellation
//!
//! Timeouts are the caller's (`smol::Timer` with `FutureExt::or`).
//!
//! - `recv` is cancellation-safe: every byte read is kept in the channel, and a new
//!   `recv` continues where the dropped one stopped.
//! - `send` and `close` are not: a future dropped part-way leaves a partial message on
//!   the wire, so the channel is poisoned (the next call on it says so). Time out a
//!   send only to abandon the connection.
//! - `connect` / `accept` own the stream: dropping them drops the connection.

pub mod key;
mod noise;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::path::Path;

pub use key::{Key, KeyError, KeyInfo};
pub use noise::{Channel, ChannelReceiver, ChannelSender};

/// The channel protocol version, sent in clear and bound into the handshake.
pub const CHANNEL_VERSION: u32 = 1;

/// The Noise protocol: see the module documentation for the choice.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";

/// Default largest application message: 64 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 64 << 20;

/// Default largest hello (role byte + caller's hello info): 64 KiB.
pub const DEFAULT_MAX_HELLO: usize = 64 << 10;

/// `cs-driver keygen FILE`: writes a fresh shared key (see [`key::generate`]) and
/// returns what to tell the operator.
pub fn keygen_command(path: &Path) -> Result<KeyInfo, KeyError> {
    let key = key::generate(path)?;
    Ok(KeyInfo {
        path: path.to_owned(),
        fingerprint: key.fingerprint(),
    })
}

/// Which side of the replication pair this end is. Independent of who connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Backup,
}

impl Role {
    fn to_byte(self) -> u8 {
        match self {
            Role::Primary => 1,
            Role::Backup => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Role> {
        match b {
            1 => Some(Role::Primary),
            2 => Some(Role::Backup),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Backup => "backup",
        })
    }
}

/// Limits of one channel end. Each side enforces its own: a sender refuses to send
/// more than its `max_message`, a receiver refuses a declared length over its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Largest application message sent or accepted, in bytes.
    pub max_message: usize,
    /// Largest hello (1 role byte + hello info) sent or accepted, in bytes.
    pub max_hello: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            max_message: DEFAULT_MAX_MESSAGE,
            max_hello: DEFAULT_MAX_HELLO,
        }
    }
}

/// Everything that can go wrong on the channel. See the module docs for poisoning.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("channel I/O failed while {during}: {source}")]
    Io {
        during: &'static str,
        source: io::Error,
    },
    #[error("the peer is not a CheckSync channel endpoint: its first bytes are \"{got}\"")]
    NotAPeer { got: String },
    #[error("channel version mismatch: this side speaks version {ours}, the peer version {theirs}; run the same CheckSync release on both sides")]
    VersionMismatch { ours: u32, theirs: u32 },
    #[error("handshake refused: {detail}; both sides must be given the same key file (compare the key fingerprints)")]
    WrongKey { detail: &'static str },
    #[error("the peer is also a {ours}: a channel joins a primary and a backup")]
    RoleMismatch { ours: Role },
    #[error("record {record} from the peer failed authentication (altered, replayed, reordered or dropped on the way); nothing of it was used")]
    Tampered { record: u64 },
    #[error("the stream was truncated: {detail}")]
    Truncated { detail: String },
    #[error("the peer declared a message of {declared} bytes; this side accepts at most {max} (refused before reading or allocating it)")]
    TooLarge { declared: u64, max: usize },
    #[error("a message of {len} bytes is over this channel's limit of {max}; nothing was sent")]
    MessageTooLarge { len: usize, max: usize },
    #[error("cannot allocate {len} bytes for a message from the peer")]
    OutOfMemory { len: usize },
    #[error("protocol violation by the peer: {detail}")]
    Protocol { detail: String },
    #[error("the peer closed the channel")]
    PeerClosed,
    #[error("this side already closed the channel")]
    Closed,
    #[error("the channel's nonce space is exhausted; reconnect")]
    Exhausted,
    #[error("Noise setup failed: {detail}")]
    Noise { detail: String },
    #[error("the channel is unusable after an earlier error: {cause}")]
    Poisoned { cause: String },
}

impl ChannelError {
    /// Whether the peer (or something on the path) sent bytes that failed a check, as
    /// opposed to a plain I/O or local failure: worth a louder log line.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ChannelError::NotAPeer { .. }
                | ChannelError::VersionMismatch { .. }
                | ChannelError::WrongKey { .. }
                | ChannelError::RoleMismatch { .. }
                | ChannelError::Tampered { .. }
                | ChannelError::Truncated { .. }
                | ChannelError::TooLarge { .. }
                | ChannelError::Protocol { .. }
        )
    }
}
