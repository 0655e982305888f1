//! Replication protocol: the primary's and the backup's state machines, without I/O.
//!
//! [`primary::Primary`] and [`backup::Backup`] take inputs (messages, timer
//! ticks, link events, the shell's captures and output) with the current time in
//! milliseconds and push actions (send this, capture an epoch, release output up to
//! here, commit, promote). They never read a clock, a socket or a thread; the shell
//! around them does, and runs their actions **in the order given** (an Ack follows the
//! Commit it acknowledges, a Heartbeat follows the epoch it announces). A seeded
//! deterministic simulation (`sim.rs`, tests only) drives both through a faulty
//! network and crashes.
//!
//! # Message flow
//!
//! ```text
//! primary                                   backup (listens)
//!   connect ------------------------------->
//!   Hello{version, node, term, session, compat}
//!                                           checks version, XSAVE, kernel features, term
//!   <-------------------- Welcome{node, term, session} | Refuse{reason}
//!   (nothing about the program is sent before the Welcome)
//!   CaptureEpoch{full} to the shell; it freezes, captures, resumes
//!   EpochBegin{term, epoch, Full, len}, EpochData{..offset..}*, EpochCommit{len, xxh3}
//!                                           stage; verify length and checksum; commit
//!   <--------------------------------------- Ack{term, epoch}
//!   ReleaseOutput{upto_seq}: output produced before that epoch's freeze
//!   ... then Delta epochs, each the pages written since the previous capture ...
//!   Heartbeat{term, last epoch sent} <-----> Heartbeat{term, last committed epoch}
//!   <--------------------------------------- NeedBase{term, epoch}  (chain broken)
//!   a Full epoch again
//! ```
//!
//! Epoch payloads are opaque to this layer (they are core-format epochs, see
//! docs/format.md). The backup applies a delta only directly on top of the
//! epoch before it, committed in the same term after a full base of the current
//! session; anything else (a lost, reordered, duplicated or corrupted part) makes it
//! ask for a full base with [`msg::Msg::NeedBase`], repeated with its heartbeats
//! until a full base commits. A staged epoch never touches the store before its
//! EpochCommit arrives and its length and checksum verify, so the backup's
//! restorable state is always one whole committed epoch.
//!
//! # Output commit
//!
//! The shell's proxy forwards client bytes to the program at once and holds the
//! program's bytes, numbered by a cumulative sequence. Each capture reports the
//! sequence at its freeze; the primary releases output up to an epoch's freeze
//! sequence only once the backup acked that epoch (an Ack or a heartbeat's committed
//! epoch). An epoch starts every [`Config::epoch_interval_ms`], and, as
//! [`Config::output_epochs`] says, at once when output is waiting that no epoch in
//! flight covers (or only when none is in flight, or never). Without a backup the primary runs
//! **unprotected**: output is released as soon as it is reported (the Remus policy
//! carries on), and the primary says so with an `Unprotected` action. From the
//! backup's Welcome on, output is held again; the new backup's full base is frozen
//! after everything released so far, so once it commits, it covers all of it.
//!
//! For a promoted backup to cover output the old primary produced before a freeze
//! but never released, each epoch must carry the proxy's held bytes up to its freeze
//! sequence, and the promoted side must send them (the client's TCP sequence numbers
//! make a repeat of bytes it already had harmless once connection state is carried).
//! That belongs to the shell and the epoch format; this layer only guarantees the
//! ordering.
//!
//! # Backpressure
//!
//! At most [`Config::window`] epochs are in flight (sent, not acked). While the
//! window is full the primary asks for no capture; the tracker keeps the written
//! pages dirty, so the next epoch covers more pages. The primary holds no epoch
//! bytes itself: the shell streams each captured epoch once and can free it.
//!
//! # Timeouts
//!
//! Both sides send a heartbeat every [`Config::heartbeat_interval_ms`] once a
//! session exists. Any valid message of the session counts as a sign of life.
//! - **Backup silent** for [`Config::peer_timeout_ms`] (or the link lost): the
//!   primary goes unprotected, releases what it held, closes the link and the shell
//!   reconnects when it can. A new backup gets a new session and a full base.
//! - **Primary silent** for [`Config::peer_timeout_ms`]: the backup promotes if
//!   it has a promotable committed epoch (a full base of the current session and
//!   the deltas after it): [`backup::BAction::Promote`] with the next term. A backup
//!   that never completed a base says so ([`backup::NoPromotion`]) and waits for a
//!   new primary. A clean link close alone does not promote: a live primary that
//!   reconnects would otherwise find the backup serving.
//! - **Stall**: a staged epoch that gets no data for [`Config::stall_timeout_ms`],
//!   or an epoch the primary's heartbeat announces that is not committed within it,
//!   makes the backup ask for a full base.
//!
//! # Terms and fencing
//!
//! The first primary has term 1. A backup promotes with its term + 1 and keeps
//! listening as a *serving* node: it refuses every Hello and epoch of its term or
//! older (`Refuse{StaleTerm}`), so it never accepts a stale primary's epochs, even
//! ones delayed on the old connection. A primary that learns of a higher term
//! (a refusal, any message, or [`primary::PInput::HigherTerm`] from its own listener)
//! is **fenced**: it must stop serving and never release its held output. A serving
//! node whose listener receives a Hello of a higher term reports
//! [`backup::BAction::Superseded`] and becomes an ordinary backup of the newer primary
//! (its old state is not promotable until the new base commits).
//!
//! Re-protection: the promoted node runs a new [`primary::Primary`] (term, epoch
//! numbering after the promoted epoch), connects to a new backup (typically the old
//! primary's machine restarted empty) and streams a fresh full base while it
//! serves, then deltas.
//!
//! # What a partition can do (two-node policy)
//!
//! The policy assumes **fail-stop**: silence means death. A partition breaks that
//! assumption. Both sides time out: the primary carries on unprotected, releasing
//! output no backup holds, and the backup promotes: **both serve (split brain)**, and
//! the promoted side lacks whatever the old primary released after the backup's last
//! commit. When the partition heals, the first contact fences the lower term (a
//! `Refuse{StaleTerm}` to its Hello or heartbeat, or its listener seeing the higher
//! term); its clients' work since the split is lost. A delay longer than the timeout
//! has the same effect. Avoiding it needs a third party (a witness or lease that
//! allows one side to serve); that is future work. The simulation checks the
//! invariants strictly under fail-stop and the weaker promises (only acked output
//! is owed; the lower term is fenced once they talk) under partitions.

pub mod backup;
pub mod msg;
pub mod primary;
pub mod store;

#[cfg(test)]
mod sim;

/// Timing and limits shared by both machines; both sides should use the same values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// An epoch is started this often (sooner when output waits and none is in flight).
    pub epoch_interval_ms: u64,
    /// Each side sends a heartbeat this often once a session exists.
    pub heartbeat_interval_ms: u64,
    /// Silence of the primary after which the backup takes it for dead (and
    /// promotes): the failover's detection time.
    pub peer_timeout_ms: u64,
    /// Silence of the backup after which the primary takes it for dead and goes
    /// on unprotected. It may be longer than `peer_timeout_ms`: holding replies a
    /// little longer is always safe, while giving up on a live backup costs a new
    /// full base (and on a loaded machine, whose base then takes long again, can
    /// repeat).
    pub backup_timeout_ms: u64,
    /// A staged or announced epoch that makes no progress for this long is given up
    /// and a full base is asked for.
    pub stall_timeout_ms: u64,
    /// Most epochs in flight (sent, not acked) at once.
    pub window: usize,
    /// Largest epoch payload a backup accepts.
    pub max_epoch_bytes: u64,
    /// EpochData chunk size the shell should use (at most [`msg::MAX_CHUNK`]).
    pub chunk_bytes: usize,
    /// When output waits, start an epoch before the interval is up.
    pub output_epochs: OutputEpochs,
}

/// When held output starts an epoch of its own (besides the fixed interval).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputEpochs {
    /// Never: output waits for the next interval's epoch and its ack.
    Off,
    /// When output waits and no epoch is in flight.
    WhenIdle,
    /// When output waits that no epoch in flight covers, as long as the window
    /// allows: a reply produced while an epoch is on the wire need not wait for
    /// its ack before its own epoch starts.
    Pipelined,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            epoch_interval_ms: 50,
            heartbeat_interval_ms: 50,
            peer_timeout_ms: 500,
            backup_timeout_ms: 500,
            stall_timeout_ms: 250,
            window: 2,
            max_epoch_bytes: 16 << 30,
            chunk_bytes: 256 << 10,
            output_epochs: OutputEpochs::Pipelined,
        }
    }
}

/// A [`Config`] the machines cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("replication config: {field} is {value}, must be {rule}")]
    Invalid {
        field: &'static str,
        value: u64,
        rule: &'static str,
    },
}

impl Config {
    /// Checks the relations the machines rely on.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |field, value: u64, rule| Err(ConfigError::Invalid { field, value, rule });
        if self.epoch_interval_ms == 0 {
            return bad("epoch_interval_ms", 0, "at least 1");
        }
        if self.heartbeat_interval_ms == 0 {
            return bad("heartbeat_interval_ms", 0, "at least 1");
        }
        if self.peer_timeout_ms < 2 * self.heartbeat_interval_ms {
            return bad(
                "peer_timeout_ms",
                self.peer_timeout_ms,
                "at least twice heartbeat_interval_ms",
            );
        }
        if self.backup_timeout_ms < 2 * self.heartbeat_interval_ms {
            return bad(
                "backup_timeout_ms",
                self.backup_timeout_ms,
                "at least twice heartbeat_interval_ms",
            );
        }
        if self.stall_timeout_ms == 0 {
            return bad("stall_timeout_ms", 0, "at least 1");
        }
        if self.window == 0 {
            return bad("window", 0, "at least 1");
        }
        if self.chunk_bytes == 0 || self.chunk_bytes > msg::MAX_CHUNK {
            return bad(
                "chunk_bytes",
                self.chunk_bytes as u64,
                "between 1 and msg::MAX_CHUNK",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_checks_bite() {
        assert_eq!(Config::default().check(), Ok(()));
        let c = Config {
            window: 0,
            ..Config::default()
        };
        assert!(matches!(
            c.check(),
            Err(ConfigError::Invalid {
                field: "window",
                ..
            })
        ));
        let c = Config {
            peer_timeout_ms: 60,
            ..Config::default()
        };
        assert!(c.check().is_err());
    }
}
