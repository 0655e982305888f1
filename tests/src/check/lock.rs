//! Mutual exclusion of a lock service, judged from the clients' own records.
//!
//! A client *certainly* holds a lock from the moment it receives a grant (the
//! `ok` acquire's `complete_ns`, with `granted: true`) until the moment it sends
//! its next release of that lock (the release's `invoke_ns`, whatever its
//! outcome). Using the response end of the acquire and the invocation end of the
//! release makes each interval as short as the client's record allows, so an
//! overlap of two such intervals is a certain violation: at some instant, two
//! clients had both been told "yours" and neither had yet let go.
//!
//! Other limits on an interval, also taken at their earliest:
//! - a lease (`lease_ms` on the acquire) lapses at the earliest `lease_ms` after
//!   the acquire was *sent*;
//! - a grant never released is held at least until the client's last record.
//!
//! Two checks run on these intervals:
//! 1. no two clients' intervals on one lock overlap (touching is allowed);
//! 2. an `ok` holder query that ran entirely inside a client's interval named
//!    that client.
//!
//! What it does not see: grants that only the server knows about (an unknown
//! acquire that was in fact granted), and anything in the gaps between the
//! certain intervals.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::history::{LockInput, LockOp, Origin, Status};

/// One interval during which a client certainly held a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The holder.
    pub client: String,
    /// The lock.
    pub lock: String,
    /// When the grant reached the client.
    pub from_ns: u64,
    /// When the client let go (sent its release), or the earliest time its lease
    /// could lapse.
    pub until_ns: u64,
    /// How the interval ends.
    pub end: HoldEnd,
    /// Where the acquire was recorded.
    pub acquire: Option<Origin>,
    /// Where the release was recorded, if it ended with one.
    pub release: Option<Origin>,
}

/// What ends a [`Hold`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldEnd {
    /// The client sent a release.
    Release,
    /// The lease could lapse from then on.
    Lease,
    /// Never released: held at least until the client's last record.
    EndOfRecord,
}

/// A certain breach of mutual exclusion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockViolation {
    /// Two clients held one lock at the same time.
    Overlap {
        /// The earlier-granted hold.
        first: Hold,
        /// The later-granted hold, which began before `first` ended.
        second: Hold,
    },
    /// A holder query answered someone else (or nobody) while a client held the
    /// lock for the query's whole duration.
    WrongHolder {
        /// The hold that covered the query.
        hold: Hold,
        /// The query.
        query: LockOp,
    },
}

/// The checker's answer.
#[derive(Debug, Clone)]
pub struct LockReport {
    /// Every certain hold found, by lock then start.
    pub holds: Vec<Hold>,
    /// Holder queries checked against the holds.
    pub holder_queries: usize,
    /// Every violation found.
    pub violations: Vec<LockViolation>,
}

impl LockReport {
    /// True when no violation was found.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The certain holding intervals in a history.
pub fn holds(ops: &[LockOp]) -> Vec<Hold> {
    let mut last_seen: HashMap<&str, u64> = HashMap::new();
    let mut by_client_lock: BTreeMap<(&str, &str), Vec<&LockOp>> = BTreeMap::new();
    for op in ops {
        let t = op.complete_ns.unwrap_or(op.invoke_ns).max(op.invoke_ns);
        let e = last_seen.entry(op.client.as_str()).or_insert(t);
        *e = (*e).max(t);
        by_client_lock
            .entry((op.client.as_str(), op.lock.as_str()))
            .or_default()
            .push(op);
    }
    let mut out = Vec::new();
    for ((client, _), mut list) in by_client_lock {
        list.sort_by_key(|o| o.invoke_ns);
        let mut i = 0;
        while i < list.len() {
            let acq = list[i];
            i += 1;
            let (granted, lease_ms) = match acq.input {
                LockInput::Acquire { granted, lease_ms } => (granted, lease_ms),
                _ => continue,
            };
            let Some(from_ns) = acq
                .complete_ns
                .filter(|_| acq.status == Status::Ok && granted)
            else {
                continue;
            };
            // The next release of this lock sent after the grant arrived; a
            // release sent earlier (pipelined, or a bug) ends the hold at once.
            let release = list[i..]
                .iter()
                .position(|o| matches!(o.input, LockInput::Release { .. }))
                .map(|p| i + p);
            let (mut until_ns, mut end, mut rel_origin) = match release {
                Some(r) => (list[r].invoke_ns, HoldEnd::Release, list[r].origin.clone()),
                None => (last_seen[client], HoldEnd::EndOfRecord, None),
            };
            if let Some(ms) = lease_ms {
                let lapse = acq.invoke_ns.saturating_add(ms.saturating_mul(1_000_000));
                if lapse < until_ns {
                    (until_ns, end, rel_origin) = (lapse, HoldEnd::Lease, None);
                }
            }
            if let Some(r) = release {
                i = r + 1;
            }
            if until_ns > from_ns {
                out.push(Hold {
                    client: client.to_string(),
                    lock: acq.lock.clone(),
                    from_ns,
                    until_ns,
                    end,
                    acquire: acq.origin.clone(),
                    release: rel_origin,
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.lock, a.from_ns).cmp(&(&b.lock, b.from_ns)));
    out
}

/// Checks mutual exclusion (see the module docs).
pub fn check_locks(ops: &[LockOp]) -> LockReport {
    let holds = holds(ops);
    let mut violations = Vec::new();
    // 1. Overlaps, per lock: holds are sorted by (lock, from).
    let mut active: Vec<&Hold> = Vec::new();
    let mut current_lock: Option<&str> = None;
    for h in &holds {
        if current_lock != Some(h.lock.as_str()) {
            active.clear();
            current_lock = Some(h.lock.as_str());
        }
        active.retain(|a| a.until_ns > h.from_ns);
        for a in &active {
            if a.client != h.client {
                violations.push(LockViolation::Overlap {
                    first: (*a).clone(),
                    second: h.clone(),
                });
            }
        }
        active.push(h);
    }
    // 2. Holder queries inside a hold.
    let mut by_lock: HashMap<&str, Vec<&Hold>> = HashMap::new();
    for h in &holds {
        by_lock.entry(h.lock.as_str()).or_default().push(h);
    }
    let mut holder_queries = 0;
    for q in ops {
        let (LockInput::Holder { output }, Status::Ok, Some(done)) =
            (&q.input, q.status, q.complete_ns)
        else {
            continue;
        };
        holder_queries += 1;
        for h in by_lock.get(q.lock.as_str()).into_iter().flatten() {
            if h.from_ns <= q.invoke_ns
                && done <= h.until_ns
                && output.as_deref() != Some(h.client.as_str())
            {
                violations.push(LockViolation::WrongHolder {
                    hold: (*h).clone(),
                    query: q.clone(),
                });
            }
        }
    }
    LockReport {
        holds,
        holder_queries,
        violations,
    }
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "client {} held {:?} from {} ns to {} ns ({})",
            self.client,
            self.lock,
            self.from_ns,
            self.until_ns,
            match self.end {
                HoldEnd::Release => "release sent",
                HoldEnd::Lease => "earliest lease lapse",
                HoldEnd::EndOfRecord => "never released; client's last record",
            }
        )?;
        if let Some(a) = &self.acquire {
            write!(f, " [acquire at {a}")?;
            if let Some(r) = &self.release {
                write!(f, ", release at {r}")?;
            }
            write!(f, "]")?;
        }
        Ok(())
    }
}

impl fmt::Display for LockViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockViolation::Overlap { first, second } => write!(
                f,
                "lock {:?}: clients {} and {} both held it for {} ns: {}; and {}",
                first.lock,
                first.client,
                second.client,
                first.until_ns.min(second.until_ns) - second.from_ns,
                first,
                second
            ),
            LockViolation::WrongHolder { hold, query } => {
                write!(
                    f,
                    "lock {:?}: holder query by client {} during [{} ns, {} ns] answered {:?}, but {}",
                    hold.lock,
                    query.client,
                    query.invoke_ns,
                    query.complete_ns.unwrap_or(0),
                    match &query.input {
                        LockInput::Holder { output: Some(o) } => o.as_str(),
                        _ => "(nobody)",
                    },
                    hold
                )?;
                if let Some(o) = &query.origin {
                    write!(f, " [query at {o}]")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for LockReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ok() {
            return write!(
                f,
                "mutual exclusion holds ({} holds, {} holder queries)",
                self.holds.len(),
                self.holder_queries
            );
        }
        writeln!(
            f,
            "mutual exclusion VIOLATED ({} violations, {} holds):",
            self.violations.len(),
            self.holds.len()
        )?;
        for v in self.violations.iter().take(20) {
            writeln!(f, "  {v}")?;
        }
        if self.violations.len() > 20 {
            writeln!(f, "  ... and {} more", self.violations.len() - 20)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u32, input: LockInput, invoke: u64, complete: u64, status: Status) -> LockOp {
        LockOp {
            client: client.to_string(),
            lock: "L".into(),
            input,
            invoke_ns: invoke,
            complete_ns: (status != Status::Unknown).then_some(complete),
            status,
            origin: None,
        }
    }
    fn acq(c: u32, i: u64, r: u64) -> LockOp {
        op(
            c,
            LockInput::Acquire {
                granted: true,
                lease_ms: None,
            },
            i,
            r,
            Status::Ok,
        )
    }
    fn rel(c: u32, i: u64, r: u64) -> LockOp {
        op(
            c,
            LockInput::Release {
                released: Some(true),
            },
            i,
            r,
            Status::Ok,
        )
    }
    fn holder(c: u32, out: Option<u32>, i: u64, r: u64) -> LockOp {
        op(
            c,
            LockInput::Holder {
                output: out.map(|o| o.to_string()),
            },
            i,
            r,
            Status::Ok,
        )
    }

    #[test]
    fn alternating_holders_are_fine() {
        let h = [
            acq(1, 0, 10),
            rel(1, 20, 30),
            // Client 2 asked while 1 held it; granted after 1's release.
            acq(2, 5, 31),
            holder(3, Some(2), 40, 41),
            rel(2, 50, 51),
            holder(3, None, 60, 61),
        ];
        let r = check_locks(&h);
        assert!(r.ok(), "{r}");
        assert_eq!(r.holds.len(), 2);
        assert_eq!((r.holds[0].from_ns, r.holds[0].until_ns), (10, 20));
        assert_eq!((r.holds[1].from_ns, r.holds[1].until_ns), (31, 50));
        assert_eq!(r.holder_queries, 2);
    }

    #[test]
    fn only_certain_parts_of_intervals_count() {
        // 2's grant is answered at 20, exactly when 1 sends its release: touching.
        let h = [acq(1, 0, 10), rel(1, 20, 30), acq(2, 5, 20), rel(2, 40, 41)];
        assert!(check_locks(&h).ok());
        // Release still in flight when 2's grant arrived: the server may have
        // processed it already, so this is no violation.
        let h = [acq(1, 0, 10), rel(1, 20, 30), acq(2, 5, 25), rel(2, 40, 41)];
        assert!(check_locks(&h).ok());
        // Failed or unknown acquires, and ungranted ones, hold nothing.
        let h = [
            acq(1, 0, 10),
            op(
                2,
                LockInput::Acquire {
                    granted: true,
                    lease_ms: None,
                },
                11,
                12,
                Status::Fail,
            ),
            op(
                2,
                LockInput::Acquire {
                    granted: true,
                    lease_ms: None,
                },
                13,
                0,
                Status::Unknown,
            ),
            op(
                2,
                LockInput::Acquire {
                    granted: false,
                    lease_ms: None,
                },
                14,
                15,
                Status::Ok,
            ),
            rel(1, 20, 30),
        ];
        let r = check_locks(&h);
        assert!(r.ok(), "{r}");
        assert_eq!(r.holds.len(), 1);
    }

    #[test]
    fn overlap_is_reported_with_both_clients() {
        let h = [acq(1, 0, 10), acq(2, 5, 15), rel(2, 18, 19), rel(1, 20, 30)];
        let r = check_locks(&h);
        assert_eq!(r.violations.len(), 1, "{r}");
        match &r.violations[0] {
            LockViolation::Overlap { first, second } => {
                assert_eq!((first.client.as_str(), second.client.as_str()), ("1", "2"));
                assert_eq!((first.from_ns, first.until_ns), (10, 20));
                assert_eq!((second.from_ns, second.until_ns), (15, 18));
            }
            v => panic!("{v}"),
        }
        let text = r.to_string();
        assert!(
            text.contains("VIOLATED") && text.contains("clients 1 and 2"),
            "{text}"
        );
    }

    #[test]
    fn never_released_is_held_until_the_clients_last_record() {
        let mut h = vec![acq(1, 0, 10), acq(2, 20, 30), rel(2, 40, 41)];
        // Client 1 is still active at 35, so still holds the lock then.
        h.push(holder(1, Some(1), 34, 35));
        let r = check_locks(&h);
        assert_eq!(r.violations.len(), 2, "{r}");
        assert_eq!(r.holds[0].end, HoldEnd::EndOfRecord);
        // The holder query said 1 while 2 held it entirely: flagged too.
        assert!(r
            .violations
            .iter()
            .any(|v| matches!(v, LockViolation::WrongHolder { hold, .. } if hold.client == "2")));
        // Client 1's record ends before 2's grant: no certain overlap.
        let h = [acq(1, 0, 10), acq(2, 20, 30), rel(2, 40, 41)];
        assert!(check_locks(&h).ok());
    }

    #[test]
    fn leases_end_holds_at_their_earliest_lapse() {
        let leased = |c, i, r| {
            op(
                c,
                LockInput::Acquire {
                    granted: true,
                    lease_ms: Some(1),
                },
                i,
                r,
                Status::Ok,
            )
        };
        // 1's lease (1 ms from 0) lapsed before 2 got it at 2 ms.
        let h = [
            leased(1, 0, 10),
            acq(2, 100, 2_000_000),
            rel(1, 3_000_000, 3_000_001),
            rel(2, 4_000_000, 4_000_001),
        ];
        let r = check_locks(&h);
        assert!(r.ok(), "{r}");
        assert_eq!(r.holds[0].end, HoldEnd::Lease);
        // But 2 got it at 0.5 ms, inside 1's lease.
        let h = [
            leased(1, 0, 10),
            acq(2, 100, 500_000),
            rel(1, 3_000_000, 3_000_001),
            rel(2, 4_000_000, 4_000_001),
        ];
        assert_eq!(check_locks(&h).violations.len(), 1);
    }

    #[test]
    fn locks_and_same_client_are_separate() {
        let mut other = acq(2, 5, 15);
        other.lock = "M".into();
        let h = [
            acq(1, 0, 10),
            other,
            // Re-acquire by the same client while holding: not a breach between clients.
            acq(1, 11, 12),
            rel(1, 20, 30),
        ];
        let r = check_locks(&h);
        assert!(r.ok(), "{r}");
    }

    #[test]
    fn holder_query_must_name_the_holder() {
        let h = [
            acq(1, 0, 10),
            holder(2, None, 12, 13),
            // Overlapping the grant's arrival: not certain, not flagged.
            holder(2, None, 9, 11),
            rel(1, 20, 30),
        ];
        let r = check_locks(&h);
        assert_eq!(r.violations.len(), 1, "{r}");
        assert!(
            matches!(&r.violations[0], LockViolation::WrongHolder { query, .. } if query.invoke_ns == 12)
        );
    }
}
