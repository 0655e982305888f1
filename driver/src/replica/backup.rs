//! The backup's replication state machine (no I/O; see the module docs of
//! [`crate::replica`]).
//!
//! The shell listens, decodes what arrives and feeds it as [`BInput::Received`];
//! it answers a received message's sends on that message's connection and sends
//! what a [`BInput::Tick`] produces on the connection of the last Welcome. It keeps
//! the staged epoch apart from the store: [`BAction::StageBegin`] /
//! [`BAction::StageData`] build it (chunks come in order), [`BAction::StageAbort`]
//! drops it, and only [`BAction::Commit`] applies it. The machine hashes the chunks
//! as they pass through it, so a Commit is emitted only after the EpochCommit arrived
//! and the length and the xxh3-64 of the whole payload matched.

use xxhash_rust::xxh3::Xxh3;

use super::msg::{Compat, EpochKind, Msg, RefuseReason, PROTOCOL_VERSION};
use super::{Config, ConfigError};

/// What the shell reports to the backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BInput {
    /// Time passed; call at least every few milliseconds.
    Tick,
    /// A decoded message from a primary.
    Received(Msg),
    /// The current primary's connection closed. Not a reason to promote by itself:
    /// only the primary's silence for the timeout is.
    Disconnected,
}

/// What the backup asks of the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BAction {
    Send(Msg),
    /// Start staging an epoch of `len` bytes (the previous staged one is gone).
    StageBegin {
        term: u64,
        epoch: u64,
        kind: EpochKind,
        len: u64,
    },
    /// Append to the staged epoch; `offset` is always the staged length so far.
    StageData {
        epoch: u64,
        offset: u64,
        bytes: Vec<u8>,
    },
    /// Drop the staged epoch.
    StageAbort {
        epoch: u64,
    },
    /// Apply the staged epoch to the store: a full one replaces it, a delta applies
    /// on top of the epoch before it.
    Commit {
        term: u64,
        epoch: u64,
        kind: EpochKind,
    },
    /// The primary is silent: restore the store's committed `epoch` and serve it
    /// under the new `term`. This machine now refuses that term and older.
    Promote {
        term: u64,
        epoch: u64,
    },
    /// The primary is silent but there is nothing this node may serve.
    CannotPromote {
        why: NoPromotion,
    },
    /// A primary of a higher term exists: the program this node serves is stale;
    /// stop it. This machine goes on as an ordinary backup.
    Superseded {
        term: u64,
    },
}

/// Why a backup cannot promote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoPromotion {
    #[error("this backup never committed a full base")]
    NoBase,
    #[error("committed epoch {epoch} (term {term}) predates the current primary's session; it may not cover output released since")]
    StaleBase { term: u64, epoch: u64 },
}

/// The backup's state as the shell reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupStatus {
    /// No primary.
    Idle,
    /// Following the primary `primary` at the machine's term.
    Following { primary: u64 },
    /// This node serves at `term` (promoted, or a primary's own listener).
    Serving { term: u64 },
}

/// The last epoch applied to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub term: u64,
    pub epoch: u64,
    pub kind: EpochKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Following { primary: u64, session: u64 },
    Serving { term: u64 },
}

struct Staging {
    term: u64,
    epoch: u64,
    kind: EpochKind,
    len: u64,
    received: u64,
    hasher: Xxh3,
    last_data_at: u64,
}

impl std::fmt::Debug for Staging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staging")
            .field("term", &self.term)
            .field("epoch", &self.epoch)
            .field("kind", &self.kind)
            .field("len", &self.len)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

/// Deliberate defects, to show the simulation's invariant checks can fail.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackupBug {
    /// Commits a fully received epoch without comparing its checksum.
    SkipChecksum,
}

/// The backup's replication state machine.
#[derive(Debug)]
pub struct Backup {
    cfg: Config,
    node_id: u64,
    compat: Compat,
    /// Highest term accepted.
    term: u64,
    state: State,
    committed: Option<Committed>,
    /// Deltas may apply: a full base committed in the current session.
    chain_open: bool,
    /// The committed epoch covers everything the current primary released.
    promotable: bool,
    staging: Option<Staging>,
    /// An epoch this backup could not apply; NeedBase is repeated until a base commits.
    need_base: Option<u64>,
    /// An epoch the primary announced sent and not committed here, and since when.
    announced: Option<(u64, u64)>,
    last_heard: u64,
    last_hb_sent: u64,
    #[cfg(test)]
    pub(crate) bug: Option<BackupBug>,
}

impl Backup {
    /// An empty backup, waiting for a primary.
    pub fn new(cfg: Config, node_id: u64, compat: Compat) -> Result<Backup, ConfigError> {
        cfg.check()?;
        Ok(Backup {
            cfg,
            node_id,
            compat,
            term: 0,
            state: State::Idle,
            committed: None,
            chain_open: false,
            promotable: false,
            staging: None,
            need_base: None,
            announced: None,
            last_heard: 0,
            last_hb_sent: 0,
            #[cfg(test)]
            bug: None,
        })
    }

    /// The listener of a node that serves at `term` (a first primary): it refuses
    /// primaries of that term or older and notices newer ones.
    pub fn serving(
        cfg: Config,
        node_id: u64,
        compat: Compat,
        term: u64,
    ) -> Result<Backup, ConfigError> {
        let mut b = Backup::new(cfg, node_id, compat)?;
        b.term = term;
        b.state = State::Serving { term };
        Ok(b)
    }

    pub fn status(&self) -> BackupStatus {
        match self.state {
            State::Idle => BackupStatus::Idle,
            State::Following { primary, .. } => BackupStatus::Following { primary },
            State::Serving { term } => BackupStatus::Serving { term },
        }
    }
    pub fn term(&self) -> u64 {
        self.term
    }
    pub fn committed(&self) -> Option<Committed> {
        self.committed
    }
    /// Whether the primary's loss now would promote the committed epoch.
    pub fn promotable(&self) -> bool {
        matches!(self.state, State::Following { .. }) && self.promotable && self.committed.is_some()
    }

    /// Feeds one input at time `now` (milliseconds, monotonic) and appends the
    /// resulting actions to `out`.
    pub fn step(&mut self, now: u64, input: BInput, out: &mut Vec<BAction>) {
        match input {
            BInput::Tick => self.on_tick(now, out),
            BInput::Disconnected => {
                if matches!(self.state, State::Following { .. }) {
                    self.abort_staging(out);
                }
            }
            BInput::Received(m) => self.on_msg(now, m, out),
        }
    }

    fn on_tick(&mut self, now: u64, out: &mut Vec<BAction>) {
        if !matches!(self.state, State::Following { .. }) {
            return;
        }
        if now.saturating_sub(self.last_heard) > self.cfg.peer_timeout_ms {
            self.abort_staging(out);
            self.primary_lost(out);
            return;
        }
        if let Some(s) = &self.staging {
            if now.saturating_sub(s.last_data_at) > self.cfg.stall_timeout_ms {
                let e = s.epoch;
                self.abort_staging(out);
                self.need_base(e, out);
            }
        }
        if let Some((e, since)) = self.announced {
            if e > self.committed_in_term() && now.saturating_sub(since) > self.cfg.stall_timeout_ms
            {
                self.announced = None;
                if self.staging.as_ref().is_some_and(|s| s.epoch <= e) {
                    self.abort_staging(out);
                }
                self.need_base(e, out);
            }
        }
        if now.saturating_sub(self.last_hb_sent) >= self.cfg.heartbeat_interval_ms {
            self.last_hb_sent = now;
            out.push(BAction::Send(Msg::Heartbeat {
                term: self.term,
                epoch: self.ack_epoch(),
            }));
            if let Some(e) = self.need_base {
                out.push(BAction::Send(Msg::NeedBase {
                    term: self.term,
                    epoch: e,
                }));
            }
        }
    }

    fn primary_lost(&mut self, out: &mut Vec<BAction>) {
        match self.committed {
            Some(c) if self.promotable => {
                let term = self.term.saturating_add(1);
                self.term = term;
                self.state = State::Serving { term };
                out.push(BAction::Promote {
                    term,
                    epoch: c.epoch,
                });
            }
            c => {
                self.state = State::Idle;
                let why = match c {
                    None => NoPromotion::NoBase,
                    Some(c) => NoPromotion::StaleBase {
                        term: c.term,
                        epoch: c.epoch,
                    },
                };
                out.push(BAction::CannotPromote { why });
            }
        }
    }

    /// The committed epoch if it is of the current term, else 0.
    fn committed_in_term(&self) -> u64 {
        match self.committed {
            Some(c) if c.term == self.term => c.epoch,
            _ => 0,
        }
    }

    /// What heartbeats acknowledge: the committed epoch once it is promotable.
    fn ack_epoch(&self) -> u64 {
        if self.promotable {
            self.committed_in_term()
        } else {
            0
        }
    }

    fn on_msg(&mut self, now: u64, m: Msg, out: &mut Vec<BAction>) {
        if let Msg::Hello {
            protocol_version,
            node_id,
            term,
            session,
            compat,
        } = m
        {
            return self.on_hello(now, protocol_version, node_id, term, session, compat, out);
        }
        let Some(term) = m.term() else {
            return; // a Refuse is not for a backup
        };
        match self.state {
            State::Serving { term: ours } => {
                // A stale primary (delayed messages, or alive after a partition):
                // never stage or commit; tell it once per epoch or heartbeat.
                let tell = matches!(
                    m,
                    Msg::EpochBegin { .. } | Msg::EpochCommit { .. } | Msg::Heartbeat { .. }
                );
                if term <= ours && tell {
                    out.push(BAction::Send(Msg::Refuse {
                        reason: RefuseReason::StaleTerm { current: ours },
                    }));
                }
                return;
            }
            State::Idle => return,
            State::Following { .. } => {}
        }
        if term != self.term {
            return; // older: stale; newer: no Hello yet
        }
        self.last_heard = now;
        match m {
            Msg::EpochBegin {
                epoch,
                kind,
                total_len,
                ..
            } => self.on_begin(now, epoch, kind, total_len, out),
            Msg::EpochData {
                epoch,
                offset,
                bytes,
                ..
            } => self.on_data(now, epoch, offset, bytes, out),
            Msg::EpochCommit {
                epoch,
                len,
                checksum,
                ..
            } => self.on_commit(now, epoch, len, checksum, out),
            Msg::Heartbeat { epoch, .. } => {
                if epoch > self.committed_in_term() {
                    match &mut self.announced {
                        Some((e, _)) => *e = (*e).max(epoch),
                        None => self.announced = Some((epoch, now)),
                    }
                }
            }
            // Backup-to-primary messages: nothing to do.
            Msg::Ack { .. } | Msg::NeedBase { .. } | Msg::Welcome { .. } => {}
            Msg::Hello { .. } | Msg::Refuse { .. } => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_hello(
        &mut self,
        now: u64,
        version: u16,
        node_id: u64,
        term: u64,
        session: u64,
        compat: Compat,
        out: &mut Vec<BAction>,
    ) {
        if let State::Serving { term: ours } = self.state {
            if term <= ours {
                out.push(BAction::Send(Msg::Refuse {
                    reason: RefuseReason::StaleTerm { current: ours },
                }));
                return;
            }
            // A newer primary exists: this node's program is stale.
            out.push(BAction::Superseded { term });
            self.state = State::Idle;
            self.promotable = false;
            self.chain_open = false;
        }
        if version != PROTOCOL_VERSION {
            out.push(BAction::Send(Msg::Refuse {
                reason: RefuseReason::Version {
                    ours: PROTOCOL_VERSION,
                    theirs: version,
                },
            }));
            return;
        }
        if let Err(reason) = self.compat.check_primary(&compat) {
            out.push(BAction::Send(Msg::Refuse { reason }));
            return;
        }
        if term < self.term {
            out.push(BAction::Send(Msg::Refuse {
                reason: RefuseReason::StaleTerm { current: self.term },
            }));
            return;
        }
        if let State::Following {
            primary,
            session: current,
        } = self.state
        {
            if term == self.term && primary == node_id && session <= current {
                if session == current {
                    // A duplicate: answer again, change nothing.
                    out.push(BAction::Send(self.welcome(session)));
                }
                return;
            }
        }
        // A new session. Whatever the old primary released after our last commit
        // is not covered here, so nothing is promotable until a new base commits.
        self.abort_staging(out);
        self.term = term;
        self.state = State::Following {
            primary: node_id,
            session,
        };
        self.promotable = false;
        self.chain_open = false;
        self.need_base = None;
        self.announced = None;
        self.last_heard = now;
        self.last_hb_sent = now;
        out.push(BAction::Send(self.welcome(session)));
    }

    fn welcome(&self, session: u64) -> Msg {
        Msg::Welcome {
            node_id: self.node_id,
            term: self.term,
            session,
        }
    }

    fn on_begin(
        &mut self,
        now: u64,
        epoch: u64,
        kind: EpochKind,
        len: u64,
        out: &mut Vec<BAction>,
    ) {
        if epoch <= self.committed_in_term() {
            return; // old or duplicate
        }
        if let Some(s) = &self.staging {
            if s.epoch > epoch {
                return; // old
            }
            if s.epoch == epoch {
                if s.kind != kind || s.len != len {
                    self.abort_staging(out);
                    self.need_base(epoch, out);
                }
                return; // duplicate
            }
            // A later epoch begins before this one committed: this one is lost.
            let lost = s.epoch;
            self.abort_staging(out);
            self.need_base(lost, out);
        }
        if len > self.cfg.max_epoch_bytes {
            out.push(BAction::Send(Msg::Refuse {
                reason: RefuseReason::EpochTooLarge {
                    len,
                    max: self.cfg.max_epoch_bytes,
                },
            }));
            self.state = State::Idle;
            return;
        }
        let chains =
            kind == EpochKind::Full || (self.chain_open && self.committed_in_term() == epoch - 1);
        if !chains {
            self.need_base(epoch, out);
            return;
        }
        out.push(BAction::StageBegin {
            term: self.term,
            epoch,
            kind,
            len,
        });
        self.staging = Some(Staging {
            term: self.term,
            epoch,
            kind,
            len,
            received: 0,
            hasher: Xxh3::new(),
            last_data_at: now,
        });
    }

    fn on_data(
        &mut self,
        now: u64,
        epoch: u64,
        offset: u64,
        bytes: Vec<u8>,
        out: &mut Vec<BAction>,
    ) {
        let Some(s) = self.staging.as_mut().filter(|s| s.epoch == epoch) else {
            // Data of an epoch whose begin never arrived (or that cannot chain).
            let staged_later = self.staging.as_ref().is_some_and(|s| s.epoch > epoch);
            if epoch > self.committed_in_term() && !staged_later {
                self.need_base(epoch, out);
            }
            return;
        };
        if offset < s.received {
            return; // duplicate
        }
        let len = bytes.len() as u64;
        if offset > s.received || s.received + len > s.len {
            self.abort_staging(out);
            self.need_base(epoch, out);
            return;
        }
        s.hasher.update(&bytes);
        s.received += len;
        s.last_data_at = now;
        out.push(BAction::StageData {
            epoch,
            offset,
            bytes,
        });
    }

    fn on_commit(&mut self, now: u64, epoch: u64, len: u64, checksum: u64, out: &mut Vec<BAction>) {
        if epoch <= self.committed_in_term() {
            // A duplicate, or the ack was lost: acknowledge again.
            let acked = self.ack_epoch();
            if acked >= epoch {
                out.push(BAction::Send(Msg::Ack {
                    term: self.term,
                    epoch: acked,
                }));
            }
            return;
        }
        let Some(s) = self.staging.take_if(|s| s.epoch == epoch) else {
            let staged_later = self.staging.as_ref().is_some_and(|s| s.epoch > epoch);
            if !staged_later {
                self.need_base(epoch, out);
            }
            return;
        };
        #[allow(unused_mut)]
        let mut sum_ok = s.hasher.digest() == checksum;
        #[cfg(test)]
        if self.bug == Some(BackupBug::SkipChecksum) {
            sum_ok = true;
        }
        if s.received != s.len || len != s.len || !sum_ok {
            out.push(BAction::StageAbort { epoch });
            self.need_base(epoch, out);
            return;
        }
        out.push(BAction::Commit {
            term: s.term,
            epoch,
            kind: s.kind,
        });
        self.committed = Some(Committed {
            term: s.term,
            epoch,
            kind: s.kind,
        });
        if s.kind == EpochKind::Full {
            self.chain_open = true;
            self.promotable = true;
        }
        // The chain is whole through `epoch`: an older complaint is resolved.
        if self.need_base.is_some_and(|n| n <= epoch) {
            self.need_base = None;
        }
        if let Some((e, since)) = &mut self.announced {
            if *e <= epoch {
                self.announced = None;
            } else {
                *since = now;
            }
        }
        out.push(BAction::Send(Msg::Ack {
            term: self.term,
            epoch,
        }));
    }

    fn need_base(&mut self, epoch: u64, out: &mut Vec<BAction>) {
        if self.need_base.is_none_or(|n| epoch > n) {
            self.need_base = Some(epoch);
            out.push(BAction::Send(Msg::NeedBase {
                term: self.term,
                epoch,
            }));
        }
    }

    fn abort_staging(&mut self, out: &mut Vec<BAction>) {
        if let Some(s) = self.staging.take() {
            out.push(BAction::StageAbort { epoch: s.epoch });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::msg::{payload_checksum, EpochStream};
    use super::*;

    const COMPAT: Compat = Compat {
        xsave_mask: 0xe7,
        xsave_size: 2688,
        kernel_features: 0b11,
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
            output_epochs: crate::replica::OutputEpochs::WhenIdle,
        }
    }

    fn backup() -> Backup {
        Backup::new(cfg(), 2, COMPAT).unwrap()
    }

    fn step(b: &mut Backup, now: u64, m: Msg) -> Vec<BAction> {
        let mut v = Vec::new();
        b.step(now, BInput::Received(m), &mut v);
        v
    }

    fn tick(b: &mut Backup, now: u64) -> Vec<BAction> {
        let mut v = Vec::new();
        b.step(now, BInput::Tick, &mut v);
        v
    }

    fn hello(term: u64, session: u64) -> Msg {
        Msg::Hello {
            protocol_version: PROTOCOL_VERSION,
            node_id: 1,
            term,
            session,
            compat: COMPAT,
        }
    }

    fn refusal(a: &[BAction]) -> Option<RefuseReason> {
        match a {
            [BAction::Send(Msg::Refuse { reason })] => Some(*reason),
            _ => None,
        }
    }

    /// Streams an epoch and returns the actions.
    fn send_epoch(
        b: &mut Backup,
        now: u64,
        term: u64,
        epoch: u64,
        kind: EpochKind,
        payload: &[u8],
    ) -> Vec<BAction> {
        let sum = payload_checksum(payload);
        let mut all = Vec::new();
        for m in EpochStream::new(term, epoch, kind, payload, sum, 7) {
            all.extend(step(b, now, m));
        }
        all
    }

    #[test]
    fn handshake_refusals() {
        let mut b = backup();
        let mut old = hello(1, 1);
        if let Msg::Hello {
            protocol_version, ..
        } = &mut old
        {
            *protocol_version = 0;
        }
        let r = refusal(&step(&mut b, 0, old)).unwrap();
        assert_eq!(r, RefuseReason::Version { ours: 1, theirs: 0 });
        assert!(r.to_string().contains("downgrade"));

        let mut other = hello(1, 1);
        if let Msg::Hello { compat, .. } = &mut other {
            compat.xsave_size = 2432;
        }
        assert!(matches!(
            refusal(&step(&mut b, 0, other)),
            Some(RefuseReason::Xsave { .. })
        ));
        let mut other = hello(1, 1);
        if let Msg::Hello { compat, .. } = &mut other {
            compat.kernel_features = 0b111;
        }
        assert_eq!(
            refusal(&step(&mut b, 0, other)),
            Some(RefuseReason::KernelFeatures { missing: 0b100 })
        );
        assert_eq!(b.status(), BackupStatus::Idle);

        // Accepted at term 3: a Hello of term 2 is stale afterwards.
        let a = step(&mut b, 0, hello(3, 1));
        assert_eq!(
            a,
            vec![BAction::Send(Msg::Welcome {
                node_id: 2,
                term: 3,
                session: 1
            })]
        );
        assert_eq!(
            refusal(&step(&mut b, 1, hello(2, 9))),
            Some(RefuseReason::StaleTerm { current: 3 })
        );
        // A duplicate Hello is answered again and resets nothing.
        assert_eq!(step(&mut b, 1, hello(3, 1)), a);
    }

    #[test]
    fn commits_only_whole_verified_epochs_and_chains_deltas() {
        let mut b = backup();
        step(&mut b, 0, hello(1, 1));
        let base: Vec<u8> = (0..50).collect();
        let a = send_epoch(&mut b, 1, 1, 1, EpochKind::Full, &base);
        assert!(a.contains(&BAction::Commit {
            term: 1,
            epoch: 1,
            kind: EpochKind::Full
        }));
        assert_eq!(
            a.last(),
            Some(&BAction::Send(Msg::Ack { term: 1, epoch: 1 }))
        );
        let staged: Vec<u8> = a
            .iter()
            .filter_map(|a| match a {
                BAction::StageData { bytes, .. } => Some(bytes.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(staged, base);
        assert!(b.promotable());

        // A delta with a corrupted chunk: aborted, base asked for, store untouched.
        let delta = vec![9u8; 20];
        let sum = payload_checksum(&delta);
        let mut msgs: Vec<Msg> = EpochStream::new(1, 2, EpochKind::Delta, &delta, sum, 7).collect();
        if let Msg::EpochData { bytes, .. } = &mut msgs[2] {
            bytes[0] ^= 0x40;
        }
        let a: Vec<BAction> = msgs.into_iter().flat_map(|m| step(&mut b, 2, m)).collect();
        assert!(!a.iter().any(|a| matches!(a, BAction::Commit { .. })));
        assert!(a.contains(&BAction::StageAbort { epoch: 2 }));
        assert!(a.contains(&BAction::Send(Msg::NeedBase { term: 1, epoch: 2 })));
        assert_eq!(b.committed().unwrap().epoch, 1);
        // Its successor cannot chain: asked for again (higher epoch), not staged.
        let a = send_epoch(&mut b, 3, 1, 3, EpochKind::Delta, &delta);
        assert!(!a
            .iter()
            .any(|a| matches!(a, BAction::StageBegin { .. } | BAction::Commit { .. })));
        // Heartbeats repeat the request.
        let a = tick(&mut b, 15);
        assert!(a.contains(&BAction::Send(Msg::NeedBase { term: 1, epoch: 3 })));
        // A new base resolves it; a delta on it chains.
        send_epoch(&mut b, 16, 1, 4, EpochKind::Full, &base);
        let a = send_epoch(&mut b, 17, 1, 5, EpochKind::Delta, &delta);
        assert!(a.contains(&BAction::Commit {
            term: 1,
            epoch: 5,
            kind: EpochKind::Delta
        }));
        let a = tick(&mut b, 30);
        assert_eq!(a, vec![BAction::Send(Msg::Heartbeat { term: 1, epoch: 5 })]);
    }

    #[test]
    fn gaps_and_missing_commits_are_caught() {
        let mut b = backup();
        step(&mut b, 0, hello(1, 1));
        let base: Vec<u8> = (0..30).collect();
        let mut msgs: Vec<Msg> =
            EpochStream::new(1, 1, EpochKind::Full, &base, payload_checksum(&base), 7).collect();
        msgs.remove(2); // a chunk lost
        let a: Vec<BAction> = msgs.into_iter().flat_map(|m| step(&mut b, 1, m)).collect();
        assert!(a.contains(&BAction::Send(Msg::NeedBase { term: 1, epoch: 1 })));
        assert!(b.committed().is_none());

        // The commit never arrives: the stall timeout gives the epoch up.
        let mut msgs: Vec<Msg> =
            EpochStream::new(1, 2, EpochKind::Full, &base, payload_checksum(&base), 7).collect();
        msgs.pop();
        for m in msgs {
            step(&mut b, 10, m);
        }
        let a = tick(&mut b, 61);
        assert!(a.contains(&BAction::StageAbort { epoch: 2 }));
        assert!(a.contains(&BAction::Send(Msg::NeedBase { term: 1, epoch: 2 })));

        // An epoch lost entirely, announced by the primary's heartbeat.
        step(&mut b, 62, Msg::Heartbeat { term: 1, epoch: 3 });
        assert!(!tick(&mut b, 100).contains(&BAction::Send(Msg::NeedBase { term: 1, epoch: 3 })));
        let a = tick(&mut b, 113);
        assert!(a.contains(&BAction::Send(Msg::NeedBase { term: 1, epoch: 3 })));
    }

    #[test]
    fn promotes_only_with_a_base_and_then_refuses_the_old_term() {
        // Never got a base: cannot promote, says so.
        let mut b = backup();
        step(&mut b, 0, hello(1, 1));
        let a = tick(&mut b, 101);
        assert_eq!(
            a,
            vec![BAction::CannotPromote {
                why: NoPromotion::NoBase
            }]
        );

        let mut b = backup();
        step(&mut b, 0, hello(1, 1));
        let base: Vec<u8> = (0..30).collect();
        send_epoch(&mut b, 1, 1, 1, EpochKind::Full, &base);
        send_epoch(&mut b, 2, 1, 2, EpochKind::Delta, &base[..5]);
        // A link close alone does not promote.
        let mut v = Vec::new();
        b.step(3, BInput::Disconnected, &mut v);
        assert!(tick(&mut b, 50)
            .iter()
            .all(|a| matches!(a, BAction::Send(_))));
        let a = tick(&mut b, 103);
        assert_eq!(a, vec![BAction::Promote { term: 2, epoch: 2 }]);
        assert_eq!(b.status(), BackupStatus::Serving { term: 2 });
        // The old primary's delayed epoch: refused, never staged.
        let a = send_epoch(&mut b, 104, 1, 3, EpochKind::Delta, &base[..5]);
        assert!(a.iter().all(|a| *a
            == BAction::Send(Msg::Refuse {
                reason: RefuseReason::StaleTerm { current: 2 }
            })));
        assert!(!a.is_empty());
        assert_eq!(
            refusal(&step(&mut b, 105, hello(1, 2))),
            Some(RefuseReason::StaleTerm { current: 2 })
        );
        assert_eq!(
            refusal(&step(&mut b, 105, hello(2, 1))),
            Some(RefuseReason::StaleTerm { current: 2 })
        );
        assert_eq!(b.committed().unwrap().epoch, 2);
        // A newer primary: this node's program is superseded; it follows the newer one.
        let a = step(&mut b, 106, hello(3, 1));
        assert_eq!(a[0], BAction::Superseded { term: 3 });
        assert!(matches!(a[1], BAction::Send(Msg::Welcome { term: 3, .. })));
        assert!(!b.promotable());
    }

    #[test]
    fn new_session_makes_the_old_base_unpromotable() {
        let mut b = backup();
        step(&mut b, 0, hello(1, 1));
        let base: Vec<u8> = (0..30).collect();
        send_epoch(&mut b, 1, 1, 1, EpochKind::Full, &base);
        assert!(b.promotable());
        // The primary reconnects (it may have released output unprotected meanwhile).
        step(&mut b, 2, hello(1, 2));
        assert!(!b.promotable());
        // An older session's Hello arriving late changes nothing.
        assert!(step(&mut b, 3, hello(1, 1)).is_empty());
        // A delta cannot chain on the old session's base.
        let a = send_epoch(&mut b, 4, 1, 2, EpochKind::Delta, &base[..3]);
        assert!(!a.iter().any(|a| matches!(a, BAction::Commit { .. })));
        let a = tick(&mut b, 200);
        assert_eq!(
            a,
            vec![BAction::CannotPromote {
                why: NoPromotion::StaleBase { term: 1, epoch: 1 }
            }]
        );
    }

    #[test]
    fn oversized_epoch_is_refused() {
        let mut b = backup();
        step(&mut b, 0, hello(1, 1));
        let a = step(
            &mut b,
            1,
            Msg::EpochBegin {
                term: 1,
                epoch: 1,
                kind: EpochKind::Full,
                total_len: (1 << 20) + 1,
            },
        );
        assert!(matches!(
            refusal(&a),
            Some(RefuseReason::EpochTooLarge { .. })
        ));
        // Data claiming more than the begin announced is refused as well.
        let mut b = backup();
        step(&mut b, 0, hello(1, 1));
        step(
            &mut b,
            1,
            Msg::EpochBegin {
                term: 1,
                epoch: 1,
                kind: EpochKind::Full,
                total_len: 4,
            },
        );
        let a = step(
            &mut b,
            1,
            Msg::EpochData {
                term: 1,
                epoch: 1,
                offset: 0,
                bytes: vec![0; 5],
            },
        );
        assert!(a.contains(&BAction::StageAbort { epoch: 1 }));
    }
}
