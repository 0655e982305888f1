//! The primary's replication state machine (no I/O; see the module docs of
//! [`crate::replica`]).
//!
//! The shell feeds [`PInput`]s with the current time and runs the [`PAction`]s in
//! order. It captures an epoch only when told ([`PAction::CaptureEpoch`]), streams
//! each accepted capture once ([`PAction::StreamEpoch`], with
//! [`super::msg::EpochStream`]), and releases the program's held output only up to
//! [`PAction::ReleaseOutput`].

use std::collections::VecDeque;

use super::msg::{Compat, EpochKind, Msg, RefuseReason, PROTOCOL_VERSION};
use super::{Config, ConfigError, OutputEpochs};

/// What the shell reports to the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PInput {
    /// Time passed; call at least every few milliseconds (heartbeats, timeouts,
    /// the epoch interval).
    Tick,
    /// A new connection to a backup is up (any previous one is gone).
    Connected,
    /// The connection to the backup is gone.
    Disconnected,
    /// A decoded message from the current connection.
    Received(Msg),
    /// The shell finished the capture asked for by [`PAction::CaptureEpoch`].
    EpochCaptured(Captured),
    /// The program produced output up to cumulative sequence `seq`; the proxy holds it.
    OutputWaiting { seq: u64 },
    /// The shell learned of a higher term elsewhere (its listener saw one).
    HigherTerm { term: u64 },
}

/// An epoch the shell captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Captured {
    /// The number [`PAction::CaptureEpoch`] gave.
    pub epoch: u64,
    pub kind: EpochKind,
    /// Payload length in bytes.
    pub len: u64,
    /// xxh3-64 of the payload ([`super::msg::payload_checksum`]).
    pub checksum: u64,
    /// The output sequence at the freeze: every byte the program produced before
    /// the freeze is numbered at or below it.
    pub output_seq: u64,
}

/// What the primary asks of the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PAction {
    /// Send on the current connection.
    Send(Msg),
    /// Freeze and capture an epoch with this number: full (a fresh base, after a
    /// backup joined or lost its chain) or the pages written since the previous
    /// capture. Answer with [`PInput::EpochCaptured`].
    CaptureEpoch { epoch: u64, full: bool },
    /// Send the captured epoch: EpochBegin, EpochData chunks, EpochCommit with this
    /// checksum. The shell may free the payload once it is written.
    StreamEpoch {
        term: u64,
        epoch: u64,
        kind: EpochKind,
        len: u64,
        checksum: u64,
    },
    /// The captured epoch will not be sent (the backup changed meanwhile): free it.
    /// The next capture is a full one.
    DiscardEpoch { epoch: u64 },
    /// Let the program's output through up to this cumulative sequence.
    ReleaseOutput { upto_seq: u64 },
    /// The backup committed a full base: the program is protected from now on.
    Protected { backup: u64, epoch: u64 },
    /// No backup holds the program's state: output is released without waiting.
    Unprotected { why: UnprotectedWhy },
    /// Close the current connection (the shell reconnects when it can).
    CloseLink,
    /// A higher term exists: this primary is stale. Stop the program now and never
    /// release its held output.
    Fenced { term: u64 },
}

/// Why the primary runs unprotected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnprotectedWhy {
    #[error("the connection to the backup was lost")]
    LinkLost,
    #[error("the backup was silent for {silent_ms} ms")]
    BackupSilent { silent_ms: u64 },
    #[error("the backup did not answer the Hello within {waited_ms} ms")]
    NoWelcome { waited_ms: u64 },
    #[error("the backup refused: {0}")]
    Refused(RefuseReason),
}

/// The primary's state as the shell reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimaryStatus {
    /// No backup session: output is released at once.
    Unprotected,
    /// A backup welcomed this primary; its first full base is not acked yet. Output
    /// is held from the Welcome on.
    Syncing,
    /// The backup holds a committed base; output waits for acks.
    Protected,
    /// A higher term exists; nothing more is done.
    Fenced,
}

/// Where a primary starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryStart {
    pub node_id: u64,
    pub compat: Compat,
    /// 1 for the first primary, the promoted term for a promoted backup.
    pub term: u64,
    /// The first epoch number to give (after the promoted epoch).
    pub first_epoch: u64,
    /// Output sequence the program starts from (everything at or below it counts
    /// as released).
    pub output_seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Down,
    AwaitWelcome,
    Session { backup: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    epoch: u64,
    full: bool,
    session: u64,
    /// The backup changed or asked for a base since the request: discard it.
    stale: bool,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    epoch: u64,
    output_seq: u64,
    full: bool,
}

/// Deliberate defects, to show the simulation's invariant checks can fail.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PrimaryBug {
    /// Releases an epoch's output as soon as it is captured, not when acked.
    ReleaseOnCapture,
    /// Treats a welcomed but unsynced backup as no backup: releases output freely
    /// until the base is acked.
    UnprotectedWhileSyncing,
}

/// The primary's replication state machine.
#[derive(Debug)]
pub struct Primary {
    cfg: Config,
    node_id: u64,
    compat: Compat,
    term: u64,
    status: PrimaryStatus,
    link: Link,
    /// Counts connections; sent in the Hello.
    session: u64,
    /// Last valid message of the session (or the Hello's time).
    last_heard: u64,
    last_hb_sent: u64,
    next_epoch: u64,
    next_capture_at: u64,
    pending: Option<Pending>,
    in_flight: VecDeque<InFlight>,
    /// Epoch number of the latest full capture asked for in this session: a
    /// NeedBase about an older epoch is already answered.
    base_requested: u64,
    need_full: bool,
    /// Last epoch streamed in this session (heartbeats announce it).
    last_sent: u64,
    output_seen: u64,
    released: u64,
    #[cfg(test)]
    pub(crate) bug: Option<PrimaryBug>,
}

impl Primary {
    /// A primary with no backup yet (unprotected).
    pub fn new(cfg: Config, start: PrimaryStart) -> Result<Primary, ConfigError> {
        cfg.check()?;
        Ok(Primary {
            cfg,
            node_id: start.node_id,
            compat: start.compat,
            term: start.term,
            status: PrimaryStatus::Unprotected,
            link: Link::Down,
            session: 0,
            last_heard: 0,
            last_hb_sent: 0,
            next_epoch: start.first_epoch.max(1),
            next_capture_at: 0,
            pending: None,
            in_flight: VecDeque::new(),
            base_requested: 0,
            need_full: true,
            last_sent: 0,
            output_seen: start.output_seq,
            released: start.output_seq,
            #[cfg(test)]
            bug: None,
        })
    }

    pub fn status(&self) -> PrimaryStatus {
        self.status
    }
    pub fn term(&self) -> u64 {
        self.term
    }
    /// Output released so far (cumulative sequence).
    pub fn released(&self) -> u64 {
        self.released
    }
    /// Epochs sent and not acked.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Feeds one input at time `now` (milliseconds, monotonic) and appends the
    /// resulting actions to `out`.
    pub fn step(&mut self, now: u64, input: PInput, out: &mut Vec<PAction>) {
        if self.status == PrimaryStatus::Fenced {
            if let PInput::EpochCaptured(c) = input {
                out.push(PAction::DiscardEpoch { epoch: c.epoch });
            }
            return;
        }
        match input {
            PInput::Tick => self.on_tick(now, out),
            PInput::Connected => self.on_connected(now, out),
            PInput::Disconnected => {
                if self.link != Link::Down {
                    self.lose_backup(UnprotectedWhy::LinkLost, false, out);
                }
            }
            PInput::Received(m) => self.on_msg(now, m, out),
            PInput::EpochCaptured(c) => self.on_captured(c, out),
            PInput::OutputWaiting { seq } => {
                self.output_seen = self.output_seen.max(seq);
                if self.status == PrimaryStatus::Unprotected {
                    self.release(self.output_seen, out);
                }
            }
            PInput::HigherTerm { term } => {
                if term > self.term {
                    self.fence(term, out);
                }
            }
        }
        if self.status != PrimaryStatus::Fenced {
            self.maybe_capture(now, out);
        }
    }

    fn on_tick(&mut self, now: u64, out: &mut Vec<PAction>) {
        let silent = now.saturating_sub(self.last_heard);
        match self.link {
            Link::Down => {}
            Link::AwaitWelcome => {
                if silent > self.cfg.peer_timeout_ms {
                    self.lose_backup(UnprotectedWhy::NoWelcome { waited_ms: silent }, true, out);
                }
            }
            Link::Session { .. } => {
                if silent > self.cfg.backup_timeout_ms {
                    self.lose_backup(
                        UnprotectedWhy::BackupSilent { silent_ms: silent },
                        true,
                        out,
                    );
                } else if now.saturating_sub(self.last_hb_sent) >= self.cfg.heartbeat_interval_ms {
                    self.last_hb_sent = now;
                    out.push(PAction::Send(Msg::Heartbeat {
                        term: self.term,
                        epoch: self.last_sent,
                    }));
                }
            }
        }
    }

    fn on_connected(&mut self, now: u64, out: &mut Vec<PAction>) {
        if self.link != Link::Down {
            self.lose_backup(UnprotectedWhy::LinkLost, false, out);
        }
        self.session += 1;
        self.link = Link::AwaitWelcome;
        self.last_heard = now;
        out.push(PAction::Send(Msg::Hello {
            protocol_version: PROTOCOL_VERSION,
            node_id: self.node_id,
            term: self.term,
            session: self.session,
            compat: self.compat,
        }));
    }

    fn on_msg(&mut self, now: u64, m: Msg, out: &mut Vec<PAction>) {
        if let Some(t) = m.term() {
            if t > self.term {
                self.fence(t, out);
                return;
            }
        }
        match m {
            Msg::Welcome {
                node_id,
                term,
                session,
            } => {
                if self.link == Link::AwaitWelcome && term == self.term && session == self.session {
                    self.link = Link::Session { backup: node_id };
                    self.status = PrimaryStatus::Syncing;
                    #[cfg(test)]
                    if self.bug == Some(PrimaryBug::UnprotectedWhileSyncing) {
                        self.status = PrimaryStatus::Unprotected;
                    }
                    self.last_heard = now;
                    self.last_hb_sent = now;
                    self.need_full = true;
                    self.last_sent = 0;
                    self.base_requested = 0;
                }
            }
            Msg::Refuse { reason } => match reason {
                RefuseReason::StaleTerm { current: t } | RefuseReason::Serving { term: t }
                    if t > self.term =>
                {
                    self.fence(t, out)
                }
                _ => {
                    if self.link != Link::Down {
                        self.lose_backup(UnprotectedWhy::Refused(reason), true, out);
                    }
                }
            },
            Msg::Ack { term, epoch } | Msg::Heartbeat { term, epoch } => {
                if term == self.term && matches!(self.link, Link::Session { .. }) {
                    self.last_heard = now;
                    self.acked(epoch, out);
                }
            }
            Msg::NeedBase { term, epoch } => {
                if term == self.term && matches!(self.link, Link::Session { .. }) {
                    self.last_heard = now;
                    if epoch >= self.base_requested && epoch < self.next_epoch {
                        self.resync();
                    }
                }
            }
            // A primary's shell routes Hellos to its listener; epochs flow the other
            // way. Of these, only a higher term (handled above) matters.
            Msg::Hello { .. }
            | Msg::EpochBegin { .. }
            | Msg::EpochData { .. }
            | Msg::EpochCommit { .. } => {}
        }
    }

    /// The backup committed `epoch` (an Ack, or a heartbeat's committed epoch).
    /// Epochs are acked cumulatively and their freeze sequences only grow, so the
    /// last in-flight epoch at or below it gives the release point.
    fn acked(&mut self, epoch: u64, out: &mut Vec<PAction>) {
        if epoch == 0 || epoch >= self.next_epoch {
            return;
        }
        let mut upto = None;
        let mut base = false;
        while let Some(f) = self.in_flight.front() {
            if f.epoch > epoch {
                break;
            }
            upto = Some(f.output_seq);
            base |= f.full;
            self.in_flight.pop_front();
        }
        if let Some(seq) = upto {
            self.release(seq, out);
        }
        if base && self.status != PrimaryStatus::Protected {
            if let Link::Session { backup } = self.link {
                self.status = PrimaryStatus::Protected;
                out.push(PAction::Protected { backup, epoch });
            }
        }
    }

    /// The backup's chain is broken: forget what is in flight (its output stays
    /// held) and send a full base next.
    fn resync(&mut self) {
        self.in_flight.clear();
        if let Some(p) = &mut self.pending {
            p.stale = true;
        }
        self.need_full = true;
    }

    fn on_captured(&mut self, c: Captured, out: &mut Vec<PAction>) {
        let p = match self.pending.take() {
            Some(p) if p.epoch == c.epoch => p,
            other => {
                // Not the capture asked for: the shell's tracker moved on anyway.
                self.pending = other;
                out.push(PAction::DiscardEpoch { epoch: c.epoch });
                self.need_full = true;
                return;
            }
        };
        let in_session = matches!(self.link, Link::Session { .. }) && p.session == self.session;
        if p.stale || !in_session || p.full != (c.kind == EpochKind::Full) {
            out.push(PAction::DiscardEpoch { epoch: c.epoch });
            self.need_full = true;
            return;
        }
        if p.full {
            self.need_full = false;
        }
        self.in_flight.push_back(InFlight {
            epoch: c.epoch,
            output_seq: c.output_seq,
            full: p.full,
        });
        self.last_sent = c.epoch;
        out.push(PAction::StreamEpoch {
            term: self.term,
            epoch: c.epoch,
            kind: c.kind,
            len: c.len,
            checksum: c.checksum,
        });
        #[cfg(test)]
        if self.bug == Some(PrimaryBug::ReleaseOnCapture) {
            self.release(c.output_seq, out);
        }
    }

    fn maybe_capture(&mut self, now: u64, out: &mut Vec<PAction>) {
        if !matches!(self.link, Link::Session { .. })
            || self.pending.is_some()
            || self.in_flight.len() >= self.cfg.window
        {
            return;
        }
        let full = self.need_full;
        let output_waits = match self.cfg.output_epochs {
            OutputEpochs::Off => false,
            OutputEpochs::WhenIdle => self.in_flight.is_empty() && self.output_seen > self.released,
            OutputEpochs::Pipelined => {
                let covered = self
                    .in_flight
                    .back()
                    .map_or(self.released, |f| f.output_seq.max(self.released));
                self.output_seen > covered
            }
        };
        if !(full || now >= self.next_capture_at || output_waits) {
            return;
        }
        let epoch = self.next_epoch;
        self.next_epoch = self.next_epoch.saturating_add(1);
        if full {
            self.base_requested = epoch;
        }
        self.pending = Some(Pending {
            epoch,
            full,
            session: self.session,
            stale: false,
        });
        self.next_capture_at = now.saturating_add(self.cfg.epoch_interval_ms);
        out.push(PAction::CaptureEpoch { epoch, full });
    }

    fn release(&mut self, seq: u64, out: &mut Vec<PAction>) {
        if seq > self.released {
            self.released = seq;
            out.push(PAction::ReleaseOutput { upto_seq: seq });
        }
    }

    /// No backup any more: Remus carries on unprotected and releases what it held.
    fn lose_backup(&mut self, why: UnprotectedWhy, close: bool, out: &mut Vec<PAction>) {
        self.link = Link::Down;
        self.in_flight.clear();
        if let Some(p) = &mut self.pending {
            p.stale = true;
        }
        self.need_full = true;
        self.base_requested = 0;
        self.last_sent = 0;
        self.status = PrimaryStatus::Unprotected;
        out.push(PAction::Unprotected { why });
        if close {
            out.push(PAction::CloseLink);
        }
        self.release(self.output_seen, out);
    }

    fn fence(&mut self, term: u64, out: &mut Vec<PAction>) {
        self.status = PrimaryStatus::Fenced;
        self.link = Link::Down;
        self.in_flight.clear();
        out.push(PAction::Fenced { term });
        out.push(PAction::CloseLink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMPAT: Compat = Compat {
        xsave_mask: 0xe7,
        xsave_size: 2688,
        kernel_features: 1,
    };

    fn cfg() -> Config {
        Config {
            epoch_interval_ms: 20,
            heartbeat_interval_ms: 10,
            peer_timeout_ms: 100,
            backup_timeout_ms: 100,
            stall_timeout_ms: 50,
            window: 2,
            max_epoch_bytes: 1 << 20,
            chunk_bytes: 64,
            output_epochs: OutputEpochs::WhenIdle,
        }
    }

    fn primary() -> Primary {
        primary_with(cfg())
    }

    fn primary_with(cfg: Config) -> Primary {
        Primary::new(
            cfg,
            PrimaryStart {
                node_id: 1,
                compat: COMPAT,
                term: 1,
                first_epoch: 1,
                output_seq: 0,
            },
        )
        .unwrap()
    }

    fn step(p: &mut Primary, now: u64, i: PInput) -> Vec<PAction> {
        let mut v = Vec::new();
        p.step(now, i, &mut v);
        v
    }

    fn captured(epoch: u64, kind: EpochKind, output_seq: u64) -> PInput {
        PInput::EpochCaptured(Captured {
            epoch,
            kind,
            len: 10,
            checksum: 5,
            output_seq,
        })
    }

    /// Connected, welcomed, base captured and streamed; returns the actions of
    /// the capture step.
    fn synced(p: &mut Primary) {
        step(p, 0, PInput::Connected);
        let a = step(
            p,
            1,
            PInput::Received(Msg::Welcome {
                node_id: 2,
                term: 1,
                session: 1,
            }),
        );
        assert_eq!(
            a,
            vec![PAction::CaptureEpoch {
                epoch: 1,
                full: true
            }]
        );
        let a = step(p, 2, captured(1, EpochKind::Full, 0));
        assert!(matches!(a[0], PAction::StreamEpoch { epoch: 1, .. }));
    }

    #[test]
    fn unprotected_releases_at_once_and_sends_nothing_before_welcome() {
        let mut p = primary();
        assert_eq!(
            step(&mut p, 0, PInput::OutputWaiting { seq: 3 }),
            vec![PAction::ReleaseOutput { upto_seq: 3 }]
        );
        let a = step(&mut p, 1, PInput::Connected);
        assert!(matches!(
            a[..],
            [PAction::Send(Msg::Hello { session: 1, .. })]
        ));
        // Until the Welcome: no capture, no epoch, output still released.
        for t in 2..60 {
            let a = step(&mut p, t, PInput::Tick);
            assert!(a.is_empty(), "{a:?}");
        }
        assert_eq!(
            step(&mut p, 60, PInput::OutputWaiting { seq: 4 }),
            vec![PAction::ReleaseOutput { upto_seq: 4 }]
        );
        // No Welcome within the timeout: unprotected (again), link closed.
        let a = step(&mut p, 200, PInput::Tick);
        assert!(matches!(
            a[..],
            [
                PAction::Unprotected {
                    why: UnprotectedWhy::NoWelcome { .. }
                },
                PAction::CloseLink
            ]
        ));
    }

    #[test]
    fn output_waits_for_the_ack_of_its_epoch() {
        let mut p = primary();
        synced(&mut p);
        assert_eq!(p.status(), PrimaryStatus::Syncing);
        // Output after the Welcome is held.
        assert!(step(&mut p, 3, PInput::OutputWaiting { seq: 5 }).is_empty());
        // Base acked: protected; its freeze preceded the output, nothing released.
        let a = step(&mut p, 4, PInput::Received(Msg::Ack { term: 1, epoch: 1 }));
        assert_eq!(
            a[0],
            PAction::Protected {
                backup: 2,
                epoch: 1
            }
        );
        // Output waits and nothing is in flight: an epoch starts at once.
        assert_eq!(
            a[1],
            PAction::CaptureEpoch {
                epoch: 2,
                full: false
            }
        );
        assert_eq!(p.released(), 0);
        step(&mut p, 5, captured(2, EpochKind::Delta, 5));
        assert!(step(&mut p, 6, PInput::Received(Msg::Ack { term: 1, epoch: 1 })).is_empty());
        // An ack of another term is not an ack.
        assert!(step(&mut p, 6, PInput::Received(Msg::Ack { term: 0, epoch: 2 })).is_empty());
        assert_eq!(
            step(&mut p, 7, PInput::Received(Msg::Ack { term: 1, epoch: 2 })),
            vec![PAction::ReleaseOutput { upto_seq: 5 }]
        );
    }

    /// The three modes: a reply produced while the base is in flight starts its
    /// own epoch at once (pipelined), only after the base's ack (when idle), or
    /// only when the interval is up (off).
    #[test]
    fn output_epochs_pipelined_when_idle_or_off() {
        let capture = |a: &[PAction]| {
            a.iter().find_map(|a| match a {
                PAction::CaptureEpoch { epoch, .. } => Some(*epoch),
                _ => None,
            })
        };
        for mode in [
            OutputEpochs::Pipelined,
            OutputEpochs::WhenIdle,
            OutputEpochs::Off,
        ] {
            let mut p = primary_with(Config {
                output_epochs: mode,
                epoch_interval_ms: 1000,
                peer_timeout_ms: 10_000,
                backup_timeout_ms: 10_000,
                ..cfg()
            });
            synced(&mut p);
            let a = step(&mut p, 3, PInput::OutputWaiting { seq: 5 });
            assert_eq!(
                capture(&a),
                (mode == OutputEpochs::Pipelined).then_some(2),
                "{mode:?}: {a:?}"
            );
            if mode == OutputEpochs::Pipelined {
                step(&mut p, 4, captured(2, EpochKind::Delta, 5));
                // Covered by epoch 2 in flight: no third epoch for it.
                let a = step(&mut p, 5, PInput::OutputWaiting { seq: 5 });
                assert_eq!(capture(&a), None, "{a:?}");
                step(&mut p, 6, PInput::Received(Msg::Ack { term: 1, epoch: 1 }));
                assert_eq!(
                    step(&mut p, 7, PInput::Received(Msg::Ack { term: 1, epoch: 2 })),
                    vec![PAction::ReleaseOutput { upto_seq: 5 }]
                );
                continue;
            }
            let a = step(&mut p, 6, PInput::Received(Msg::Ack { term: 1, epoch: 1 }));
            assert_eq!(
                capture(&a),
                (mode == OutputEpochs::WhenIdle).then_some(2),
                "{mode:?}: {a:?}"
            );
            if mode == OutputEpochs::Off {
                // Only the interval starts the next epoch.
                assert_eq!(capture(&step(&mut p, 500, PInput::Tick)), None);
                assert_eq!(capture(&step(&mut p, 1003, PInput::Tick)), Some(2));
            }
            assert_eq!(p.released(), 0, "{mode:?}");
        }
    }

    #[test]
    fn window_bounds_epochs_in_flight() {
        let mut p = primary();
        synced(&mut p);
        // Base (1) in flight; interval passes: delta 2; window 2 full afterwards.
        let a = step(&mut p, 30, PInput::Tick);
        assert!(a.contains(&PAction::CaptureEpoch {
            epoch: 2,
            full: false
        }));
        step(&mut p, 31, captured(2, EpochKind::Delta, 0));
        assert_eq!(p.in_flight(), 2);
        for t in 32..99 {
            let a = step(&mut p, t, PInput::OutputWaiting { seq: t });
            assert!(!a.iter().any(|a| matches!(a, PAction::CaptureEpoch { .. })));
            if t % 9 == 0 {
                // Keep the backup alive without acking.
                step(
                    &mut p,
                    t,
                    PInput::Received(Msg::Heartbeat { term: 1, epoch: 0 }),
                );
            }
        }
        let a = step(&mut p, 99, PInput::Received(Msg::Ack { term: 1, epoch: 1 }));
        assert!(a.contains(&PAction::CaptureEpoch {
            epoch: 3,
            full: false
        }));
    }

    #[test]
    fn need_base_resyncs_once_and_stale_complaints_are_ignored() {
        let mut p = primary();
        synced(&mut p);
        step(&mut p, 3, PInput::Received(Msg::Ack { term: 1, epoch: 1 }));
        step(&mut p, 30, PInput::Tick);
        step(&mut p, 31, captured(2, EpochKind::Delta, 0));
        let a = step(
            &mut p,
            32,
            PInput::Received(Msg::NeedBase { term: 1, epoch: 2 }),
        );
        assert_eq!(
            a,
            vec![PAction::CaptureEpoch {
                epoch: 3,
                full: true
            }]
        );
        step(&mut p, 33, captured(3, EpochKind::Full, 0));
        // The same complaint repeated with the backup's heartbeats: answered already.
        let a = step(
            &mut p,
            34,
            PInput::Received(Msg::NeedBase { term: 1, epoch: 2 }),
        );
        assert!(a.is_empty(), "{a:?}");
        assert_eq!(p.in_flight(), 1);
    }

    #[test]
    fn capture_for_an_old_session_is_discarded() {
        let mut p = primary();
        step(&mut p, 0, PInput::Connected);
        step(
            &mut p,
            1,
            PInput::Received(Msg::Welcome {
                node_id: 2,
                term: 1,
                session: 1,
            }),
        );
        // The link drops while the base is being captured.
        let a = step(&mut p, 2, PInput::Disconnected);
        assert_eq!(
            a[0],
            PAction::Unprotected {
                why: UnprotectedWhy::LinkLost
            }
        );
        let a = step(&mut p, 3, captured(1, EpochKind::Full, 0));
        assert_eq!(a, vec![PAction::DiscardEpoch { epoch: 1 }]);
        // A new backup gets a full base with a new number.
        step(&mut p, 4, PInput::Connected);
        let a = step(
            &mut p,
            5,
            PInput::Received(Msg::Welcome {
                node_id: 3,
                term: 1,
                session: 2,
            }),
        );
        assert_eq!(
            a,
            vec![PAction::CaptureEpoch {
                epoch: 2,
                full: true
            }]
        );
    }

    #[test]
    fn silent_backup_makes_it_unprotected_and_releases() {
        let mut p = primary();
        synced(&mut p);
        step(&mut p, 3, PInput::OutputWaiting { seq: 9 });
        let a = step(&mut p, 150, PInput::Tick);
        assert_eq!(
            a,
            vec![
                PAction::Unprotected {
                    why: UnprotectedWhy::BackupSilent { silent_ms: 149 }
                },
                PAction::CloseLink,
                PAction::ReleaseOutput { upto_seq: 9 }
            ]
        );
        assert_eq!(p.status(), PrimaryStatus::Unprotected);
    }

    #[test]
    fn higher_term_fences_and_nothing_is_released_after() {
        let mut p = primary();
        synced(&mut p);
        step(&mut p, 3, PInput::OutputWaiting { seq: 9 });
        let a = step(
            &mut p,
            4,
            PInput::Received(Msg::Refuse {
                reason: RefuseReason::StaleTerm { current: 2 },
            }),
        );
        assert_eq!(a, vec![PAction::Fenced { term: 2 }, PAction::CloseLink]);
        assert_eq!(p.status(), PrimaryStatus::Fenced);
        for i in [
            PInput::Tick,
            PInput::Disconnected,
            PInput::OutputWaiting { seq: 20 },
            PInput::Received(Msg::Ack { term: 1, epoch: 1 }),
        ] {
            assert!(step(&mut p, 500, i).is_empty());
        }
        assert_eq!(p.released(), 0);
        // Any message of a higher term fences too.
        let mut q = primary();
        synced(&mut q);
        let a = step(
            &mut q,
            3,
            PInput::Received(Msg::Heartbeat { term: 5, epoch: 0 }),
        );
        assert_eq!(a[0], PAction::Fenced { term: 5 });
        // So does the shell's report that its listener saw one; an equal term does not.
        let mut r = primary();
        assert!(step(&mut r, 0, PInput::HigherTerm { term: 1 }).is_empty());
        let a = step(&mut r, 1, PInput::HigherTerm { term: 2 });
        assert_eq!(a, vec![PAction::Fenced { term: 2 }, PAction::CloseLink]);
    }

    #[test]
    fn compat_refusal_is_reported() {
        let mut p = primary();
        step(&mut p, 0, PInput::Connected);
        let r = RefuseReason::Version { ours: 2, theirs: 1 };
        let a = step(&mut p, 1, PInput::Received(Msg::Refuse { reason: r }));
        assert_eq!(
            a,
            vec![
                PAction::Unprotected {
                    why: UnprotectedWhy::Refused(r)
                },
                PAction::CloseLink
            ]
        );
    }
}
