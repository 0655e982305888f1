//! Linearizability of a key-value history (get / put / append / delete).
//!
//! Order of work:
//! 1. Partition the history by key (each key is an independent register, so the
//!    whole history is linearizable iff every key's sub-history is).
//! 2. For each key, drop what carries no information: `fail` ops (never
//!    happened) and reads without an `ok` answer.
//! 3. Search for a linearization with the Wing & Gong algorithm as improved by
//!    Lowe: walk the time-ordered list of call/return events, tentatively
//!    linearize a pending call whose effect is legal in the current state, and
//!    backtrack when a return is reached whose op was not yet linearized.
//!    Configurations (set of linearized ops, register state) already explored are
//!    memoized. The number of configurations is bounded: past the bound the
//!    answer is [`KvVerdict::Unknown`].
//! 4. For a key that cannot be linearized, shrink its history into a
//!    counterexample (see [`KvCounterexample`]).
//!
//! Semantics of the register: the state is `None` (absent) or `Some(string)`.
//! `put v` sets it to `v`; `append a` sets it to `current + a` (absent counts as
//! the empty string); `delete` makes it absent; `get` is legal iff it returned
//! exactly the current state (`found: false` ⇔ absent). A write whose status is
//! `unknown` may take effect at any point after its invocation, or never: it has
//! no return event, and the search succeeds once every `ok` op is linearized
//! (an unknown write left over can always go last, where nobody observes it).
//! Ties in time count as overlap, which can only make the checker more lenient.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::rc::Rc;

use super::history::{KvInput, KvOp, Status};

/// Limits on the checker's work.
#[derive(Debug, Clone)]
pub struct KvCheckOptions {
    /// Configurations the search may explore for one key before it answers
    /// `Unknown`. Each costs a bitset of the key's ops in memory.
    pub max_steps_per_key: u64,
    /// Memory the memoized configurations of one search may take; lowers the
    /// step bound for keys with many ops (`Unknown` past it).
    pub max_cache_bytes_per_key: u64,
    /// Configurations all the shrinking searches of a failing key may explore
    /// together; when spent, the counterexample found so far is reported with
    /// `minimal: false`.
    pub minimize_budget_steps: u64,
}

impl Default for KvCheckOptions {
    fn default() -> Self {
        KvCheckOptions {
            max_steps_per_key: 1_000_000,
            max_cache_bytes_per_key: 512 << 20,
            minimize_budget_steps: 2_000_000,
        }
    }
}

impl KvCheckOptions {
    /// The configurations one search over `n_ops` ops may memoize: the step
    /// bound, lowered so that the cache stays within its byte bound.
    pub fn step_limit(&self, n_ops: usize) -> u64 {
        // Per entry: the bitset, its box, the state and the hash table's share.
        let entry_bytes = (n_ops.div_ceil(64) * 8 + 40) as u64;
        self.max_steps_per_key
            .min(self.max_cache_bytes_per_key / entry_bytes)
    }
}

/// The checker's answer for a whole history.
#[derive(Debug, Clone)]
pub enum KvVerdict {
    /// Every key's sub-history has a linearization.
    Linearizable {
        /// Keys checked.
        keys: usize,
        /// Operations that took part (after dropping failed ops and unanswered reads).
        ops: usize,
    },
    /// Some key's sub-history has none (the first such key in key order).
    NotLinearizable(Box<KvCounterexample>),
    /// No key was shown non-linearizable, but for this key the search hit its bound.
    Unknown {
        /// The key.
        key: String,
        /// Why the answer is unknown.
        reason: String,
    },
}

impl KvVerdict {
    /// True for [`KvVerdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, KvVerdict::Linearizable { .. })
    }
}

/// One op of a counterexample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterexampleOp {
    /// The op as recorded.
    pub op: KvOp,
    /// True when the op was answered only after the point where the history was
    /// cut: the counterexample treats it as pending (a write that may or may not
    /// have taken effect; reads pending at the cut are left out).
    pub pending_at_cut: bool,
}

/// A sub-history of one key that cannot be linearized on its own, chosen so that
/// this implies the full history cannot be either. It is built from the key's
/// history by only these steps, each of which preserves that implication:
/// cutting the history at the earliest answer after which it is no longer
/// linearizable (ops still unanswered then become pending), dropping reads, and
/// dropping a `put v` when no remaining read starts with v, an `append a` when
/// none contains a, and a `delete` when none saw the key absent or starts with a
/// remaining append's value (no read can then have observed the write's effect). With `minimal`, no
/// single further such step keeps it non-linearizable.
#[derive(Debug, Clone)]
pub struct KvCounterexample {
    /// The key.
    pub key: String,
    /// The ops, in order of invocation.
    pub ops: Vec<CounterexampleOp>,
    /// Whether shrinking ran to the end (1-minimal) rather than out of budget.
    pub minimal: bool,
    /// How many ops of this key the checker looked at in total.
    pub key_ops: usize,
}

/// Checks a whole history (any number of keys, in any order).
pub fn check_kv(ops: &[KvOp], opts: &KvCheckOptions) -> KvVerdict {
    let mut by_key: BTreeMap<&str, Vec<&KvOp>> = BTreeMap::new();
    for op in ops {
        if relevant(op) {
            by_key.entry(op.key.as_str()).or_default().push(op);
        }
    }
    let mut unknown = None;
    let keys = by_key.len();
    let mut total = 0;
    for (key, key_ops) in by_key {
        total += key_ops.len();
        let mut interner = Interner::default();
        let prepared: Vec<Prepared> = key_ops.iter().map(|o| interner.prepare(o)).collect();
        let limit = opts.step_limit(prepared.len());
        match search(&prepared, &mut interner, limit) {
            Outcome::Linearizable => {}
            Outcome::Bound => {
                if unknown.is_none() {
                    unknown = Some(KvVerdict::Unknown {
                        key: key.to_string(),
                        reason: format!(
                            "search bound of {limit} configurations hit on {} ops \
                             (max_steps_per_key {}, max_cache_bytes_per_key {})",
                            key_ops.len(),
                            opts.max_steps_per_key,
                            opts.max_cache_bytes_per_key
                        ),
                    });
                }
            }
            Outcome::NotLinearizable => {
                let owned: Vec<KvOp> = key_ops.into_iter().cloned().collect();
                return KvVerdict::NotLinearizable(Box::new(shrink(key, owned, opts)));
            }
        }
    }
    unknown.unwrap_or(KvVerdict::Linearizable { keys, ops: total })
}

/// Whether an op constrains the history at all.
fn relevant(op: &KvOp) -> bool {
    match (op.status, &op.input) {
        (Status::Fail, _) => false,
        (Status::Ok, KvInput::Get { .. }) => op.complete_ns.is_some(),
        (Status::Unknown, KvInput::Get { .. }) => false,
        _ => true,
    }
}

/// Register state: `None` = absent, `Some(id)` = interned string.
type State = Option<u32>;

#[derive(Debug, Clone, Copy)]
enum Model {
    Get(State),
    Put(u32),
    Append(u32),
    Delete,
}

#[derive(Debug, Clone, Copy)]
struct Prepared {
    model: Model,
    invoke: u64,
    /// `None`: may take effect any time after `invoke`, or never.
    complete: Option<u64>,
}

/// Strings by id, so that states are small and comparable; concatenations memoized.
#[derive(Debug, Default)]
struct Interner {
    ids: HashMap<Rc<str>, u32>,
    strs: Vec<Rc<str>>,
    concat: HashMap<(State, u32), u32>,
}

impl Interner {
    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = u32::try_from(self.strs.len()).expect("fewer than 2^32 distinct values");
        let rc: Rc<str> = Rc::from(s);
        self.strs.push(rc.clone());
        self.ids.insert(rc, id);
        id
    }

    fn append(&mut self, state: State, suffix: u32) -> u32 {
        if let Some(&id) = self.concat.get(&(state, suffix)) {
            return id;
        }
        let id = match state {
            None => suffix,
            Some(s) => {
                let joined = format!("{}{}", self.strs[s as usize], self.strs[suffix as usize]);
                self.intern(&joined)
            }
        };
        self.concat.insert((state, suffix), id);
        id
    }

    fn prepare(&mut self, op: &KvOp) -> Prepared {
        let model = match &op.input {
            KvInput::Get { output } => Model::Get(output.as_deref().map(|s| self.intern(s))),
            KvInput::Put(v) => Model::Put(self.intern(v)),
            KvInput::Append(v) => Model::Append(self.intern(v)),
            KvInput::Delete => Model::Delete,
        };
        let complete = match op.status {
            Status::Ok => op.complete_ns,
            Status::Unknown | Status::Fail => None,
        };
        Prepared {
            model,
            invoke: op.invoke_ns,
            complete,
        }
    }

    /// The state after `model` runs in `state`, or `None` when it cannot run there.
    fn step(&mut self, state: State, model: Model) -> Option<State> {
        match model {
            Model::Get(expected) => (state == expected).then_some(state),
            Model::Put(v) => Some(Some(v)),
            Model::Append(a) => Some(Some(self.append(state, a))),
            Model::Delete => Some(None),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Linearizable,
    NotLinearizable,
    Bound,
}

/// The WGL/Lowe search over one key's ops; `max_steps` bounds the memoized
/// configurations.
fn search(ops: &[Prepared], interner: &mut Interner, max_steps: u64) -> Outcome {
    search_counting(ops, interner, max_steps).0
}

/// [`search`], also returning the configurations it explored.
fn search_counting(ops: &[Prepared], interner: &mut Interner, max_steps: u64) -> (Outcome, u64) {
    // Events: (time, is_return, op). Calls sort before returns at equal times,
    // so touching intervals count as overlapping.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoke, false, i));
        if let Some(c) = op.complete {
            events.push((c, true, i));
        }
    }
    events.sort_unstable();
    // Doubly linked list over entries 1..=m with sentinels HEAD = 0, TAIL = m + 1.
    let m = events.len();
    let (head, tail) = (0usize, m + 1);
    let mut next: Vec<usize> = (1..=m + 2).collect();
    let mut prev: Vec<usize> = (0..m + 2).map(|i| i.saturating_sub(1)).collect();
    let mut entry_op = vec![usize::MAX; m + 2];
    let mut entry_is_call = vec![false; m + 2];
    let mut call_entry = vec![0usize; ops.len()];
    let mut return_entry = vec![None; ops.len()];
    for (k, &(_, is_return, op)) in events.iter().enumerate() {
        let e = k + 1;
        entry_op[e] = op;
        entry_is_call[e] = !is_return;
        if is_return {
            return_entry[op] = Some(e);
        } else {
            call_entry[op] = e;
        }
    }
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        next[prev[e]] = next[e];
        prev[next[e]] = prev[e];
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        next[prev[e]] = e;
        prev[next[e]] = e;
    };

    let mut definite_left = ops.iter().filter(|o| o.complete.is_some()).count();
    let mut linearized = vec![0u64; ops.len().div_ceil(64)];
    let mut cache: HashSet<(Box<[u64]>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut steps = 0u64;
    let mut entry = next[head];
    loop {
        if definite_left == 0 {
            return (Outcome::Linearizable, steps);
        }
        if entry == tail || !entry_is_call[entry] {
            // A return whose op is not linearized yet (or the end): backtrack.
            let Some((op, before)) = stack.pop() else {
                return (Outcome::NotLinearizable, steps);
            };
            state = before;
            linearized[op / 64] &= !(1 << (op % 64));
            if let Some(r) = return_entry[op] {
                definite_left += 1;
                unlift(&mut next, &mut prev, r);
            }
            unlift(&mut next, &mut prev, call_entry[op]);
            entry = next[call_entry[op]];
            continue;
        }
        let op = entry_op[entry];
        if let Some(after) = interner.step(state, ops[op].model) {
            linearized[op / 64] |= 1 << (op % 64);
            if cache.insert((linearized.clone().into_boxed_slice(), after)) {
                steps += 1;
                if steps > max_steps {
                    return (Outcome::Bound, steps);
                }
                stack.push((op, state));
                state = after;
                lift(&mut next, &mut prev, call_entry[op]);
                if let Some(r) = return_entry[op] {
                    definite_left -= 1;
                    lift(&mut next, &mut prev, r);
                }
                entry = next[head];
                continue;
            }
            linearized[op / 64] &= !(1 << (op % 64));
        }
        entry = next[entry];
    }
}

/// Shrinking state: remaining budget and whether every check was conclusive.
struct Shrinker<'a> {
    interner: Interner,
    opts: &'a KvCheckOptions,
    budget_left: u64,
    conclusive: bool,
}

impl Shrinker<'_> {
    /// Is this candidate sub-history still shown non-linearizable?
    fn still_fails(&mut self, ops: &[CounterexampleOp]) -> bool {
        if self.budget_left == 0 {
            self.conclusive = false;
            return false;
        }
        let prepared: Vec<Prepared> = ops
            .iter()
            .filter(|c| relevant_in_cex(c))
            .map(|c| {
                let mut p = self.interner.prepare(&c.op);
                if c.pending_at_cut {
                    p.complete = None;
                }
                p
            })
            .collect();
        let limit = self.opts.step_limit(prepared.len()).min(self.budget_left);
        let (outcome, steps) = search_counting(&prepared, &mut self.interner, limit);
        self.budget_left = self.budget_left.saturating_sub(steps);
        if outcome == Outcome::Bound {
            self.conclusive = false;
        }
        outcome == Outcome::NotLinearizable
    }
}

fn relevant_in_cex(c: &CounterexampleOp) -> bool {
    !(c.pending_at_cut && matches!(c.op.input, KvInput::Get { .. }))
}

/// The history cut at time `t`: ops invoked after `t` are gone, reads answered
/// after `t` are gone, writes answered after `t` are pending.
fn cut_at(ops: &[KvOp], t: u64) -> Vec<CounterexampleOp> {
    ops.iter()
        .filter(|o| o.invoke_ns <= t)
        .filter_map(|o| {
            let answered_after = o.status == Status::Ok && o.complete_ns.is_none_or(|c| c > t);
            if answered_after && matches!(o.input, KvInput::Get { .. }) {
                return None;
            }
            Some(CounterexampleOp {
                op: o.clone(),
                pending_at_cut: answered_after,
            })
        })
        .collect()
}

/// Can `ops[i]` be dropped while keeping "this sub-history is not linearizable"
/// a proof that the bigger one is not? (See [`KvCounterexample`].) Only the ops
/// with `keep[j]` count as present.
fn droppable(ops: &[CounterexampleOp], keep: &[bool], i: usize) -> bool {
    let present = || {
        ops.iter()
            .zip(keep)
            .filter(|(c, k)| **k && relevant_in_cex(c))
            .map(|(c, _)| &c.op.input)
    };
    let reads = || {
        present().filter_map(|input| match input {
            KvInput::Get { output } => Some(output.as_deref()),
            _ => None,
        })
    };
    match &ops[i].op.input {
        KvInput::Get { .. } => true,
        // Every state from `put v` until the next put or delete starts with v:
        // no read can fall in that stretch unless some read starts with v.
        KvInput::Put(v) => reads().all(|r| r.is_none_or(|s| !s.starts_with(v.as_str()))),
        // Every state from `append a` until the next put or delete contains a.
        // (An empty append still creates an absent key.)
        KvInput::Append(a) => reads().all(|r| r.is_none_or(|s| !s.contains(a.as_str()))),
        // From `delete` until the next put or delete the key is absent, then
        // (after appends) starts with the first of those appends' values.
        KvInput::Delete => reads().all(|r| {
            r.is_some_and(|s| {
                !present()
                    .any(|input| matches!(input, KvInput::Append(a) if s.starts_with(a.as_str())))
            })
        }),
    }
}

/// `ops` without the droppable ones among `range` (reads first, then writes,
/// each judged against what is left).
fn drop_range(ops: &[CounterexampleOp], range: std::ops::Range<usize>) -> Vec<CounterexampleOp> {
    let mut keep: Vec<bool> = vec![true; ops.len()];
    for i in range.clone() {
        if matches!(ops[i].op.input, KvInput::Get { .. }) {
            keep[i] = false;
        }
    }
    for i in range {
        if keep[i] {
            // Judged with itself present, as it is until dropped.
            if droppable(ops, &keep, i) {
                keep[i] = false;
            }
        }
    }
    ops.iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(c, _)| c.clone())
        .collect()
}

fn shrink(key: &str, mut ops: Vec<KvOp>, opts: &KvCheckOptions) -> KvCounterexample {
    ops.sort_by_key(|o| o.invoke_ns);
    let key_ops = ops.len();
    let mut s = Shrinker {
        interner: Interner::default(),
        opts,
        budget_left: opts.minimize_budget_steps,
        conclusive: true,
    };
    // 1. The earliest cut after which the history is not linearizable (being
    //    linearizable is closed under taking prefixes, so binary search works).
    let mut cuts: Vec<u64> = ops
        .iter()
        .filter(|o| o.status == Status::Ok)
        .filter_map(|o| o.complete_ns)
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let full: Vec<CounterexampleOp> = ops
        .iter()
        .map(|o| CounterexampleOp {
            op: o.clone(),
            pending_at_cut: false,
        })
        .collect();
    let (mut lo, mut hi) = (0usize, cuts.len());
    let mut best = full;
    while lo < hi {
        let mid = (lo + hi) / 2;
        let candidate = cut_at(&ops, cuts[mid]);
        if s.still_fails(&candidate) {
            best = candidate;
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    // 2. Drop ops in shrinking chunks (delta debugging), then one at a time until
    //    nothing more can go.
    let mut chunk = (best.len() / 2).max(1);
    loop {
        let mut changed = false;
        let mut i = 0;
        while i < best.len() && s.budget_left > 0 {
            let end = (i + chunk).min(best.len());
            let candidate = drop_range(&best, i..end);
            if candidate.len() < best.len() && s.still_fails(&candidate) {
                best = candidate;
                changed = true;
            } else {
                i = end;
            }
        }
        if s.budget_left == 0 {
            s.conclusive = false;
            break;
        }
        if chunk == 1 {
            if !changed {
                break;
            }
        } else {
            chunk /= 2;
        }
    }
    best.retain(relevant_in_cex);
    KvCounterexample {
        key: key.to_string(),
        ops: best,
        minimal: s.conclusive,
        key_ops,
    }
}

impl fmt::Display for KvVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvVerdict::Linearizable { keys, ops } => {
                write!(f, "linearizable ({ops} ops over {keys} keys)")
            }
            KvVerdict::NotLinearizable(cex) => write!(f, "NOT linearizable: {cex}"),
            KvVerdict::Unknown { key, reason } => {
                write!(f, "unknown: key {key:?}: {reason}")
            }
        }
    }
}

impl fmt::Display for KvCounterexample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "key {:?}: these {} of its {} ops cannot be linearized{}:",
            self.key,
            self.ops.len(),
            self.key_ops,
            if self.minimal {
                " (1-minimal)"
            } else {
                " (shrinking stopped at its budget)"
            }
        )?;
        let t0 = self.ops.iter().map(|c| c.op.invoke_ns).min().unwrap_or(0);
        let secs = |t: u64| (t - t0) as f64 / 1e9;
        for c in &self.ops {
            let o = &c.op;
            let what = match &o.input {
                KvInput::Get { output: Some(v) } => format!("get -> {v:?}"),
                KvInput::Get { output: None } => "get -> (absent)".to_string(),
                KvInput::Put(v) => format!("put {v:?}"),
                KvInput::Append(v) => format!("append {v:?}"),
                KvInput::Delete => "delete".to_string(),
            };
            let done = match (o.status, o.complete_ns) {
                (Status::Ok, Some(c)) => format!("{:.6}s", secs(c)),
                _ => "?".to_string(),
            };
            write!(
                f,
                "  client {:>4}  [{:.6}s .. {}]  {:<7}  {}",
                o.client,
                secs(o.invoke_ns),
                done,
                o.status,
                what
            )?;
            if c.pending_at_cut {
                write!(
                    f,
                    "  (answered after the cut: may or may not have happened)"
                )?;
            }
            if let Some(origin) = &o.origin {
                write!(f, "  ({origin})")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u32, input: KvInput, invoke: u64, complete: u64) -> KvOp {
        KvOp {
            client: client.to_string(),
            key: "k".into(),
            input,
            invoke_ns: invoke,
            complete_ns: Some(complete),
            status: Status::Ok,
            origin: None,
        }
    }
    fn put(c: u32, v: &str, i: u64, r: u64) -> KvOp {
        op(c, KvInput::Put(v.into()), i, r)
    }
    fn append(c: u32, v: &str, i: u64, r: u64) -> KvOp {
        op(c, KvInput::Append(v.into()), i, r)
    }
    fn del(c: u32, i: u64, r: u64) -> KvOp {
        op(c, KvInput::Delete, i, r)
    }
    fn get(c: u32, v: Option<&str>, i: u64, r: u64) -> KvOp {
        op(
            c,
            KvInput::Get {
                output: v.map(str::to_string),
            },
            i,
            r,
        )
    }
    fn with_status(mut o: KvOp, s: Status) -> KvOp {
        o.status = s;
        if s == Status::Unknown {
            o.complete_ns = None;
        }
        o
    }
    fn on_key(mut o: KvOp, k: &str) -> KvOp {
        o.key = k.into();
        o
    }
    fn check(ops: &[KvOp]) -> KvVerdict {
        check_kv(ops, &KvCheckOptions::default())
    }
    fn cex(ops: &[KvOp]) -> KvCounterexample {
        match check(ops) {
            KvVerdict::NotLinearizable(c) => *c,
            other => panic!("expected not linearizable, got {other}"),
        }
    }
    fn cex_inputs(c: &KvCounterexample) -> Vec<KvInput> {
        c.ops.iter().map(|c| c.op.input.clone()).collect()
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert!(check(&[]).is_linearizable());
    }

    #[test]
    fn sequential_history() {
        let h = [
            get(1, None, 0, 1),
            put(1, "a", 2, 3),
            get(2, Some("a"), 4, 5),
            append(1, "b", 6, 7),
            get(2, Some("ab"), 8, 9),
            del(2, 10, 11),
            get(1, None, 12, 13),
            append(1, "c", 14, 15),
            get(1, Some("c"), 16, 17),
        ];
        let v = check(&h);
        assert!(v.is_linearizable(), "{v}");
    }

    #[test]
    fn concurrent_writes_linearizable_in_only_one_order() {
        // put a and put b overlap; the reads after both pin b after a... then a
        // later read of "a" would need the other order: only "b last" works here.
        let h = [
            put(1, "a", 0, 10),
            put(2, "b", 1, 9),
            get(3, Some("b"), 11, 12),
            get(3, Some("b"), 13, 14),
        ];
        assert!(check(&h).is_linearizable());
        // Read during the overlap sees "a" then "b": a before b.
        let h = [
            put(1, "a", 0, 10),
            put(2, "b", 1, 9),
            get(3, Some("a"), 2, 3),
            get(3, Some("b"), 11, 12),
        ];
        assert!(check(&h).is_linearizable());
        // Reads see "b" then "a": b before a, also fine.
        let h = [
            put(1, "a", 0, 10),
            put(2, "b", 1, 9),
            get(3, Some("b"), 2, 3),
            get(3, Some("a"), 11, 12),
        ];
        assert!(check(&h).is_linearizable());
        // But "a", "b", "a" needs a twice: not linearizable.
        let h = [
            put(1, "a", 0, 10),
            put(2, "b", 1, 9),
            get(3, Some("a"), 2, 3),
            get(3, Some("b"), 4, 5),
            get(3, Some("a"), 11, 12),
        ];
        assert!(!check(&h).is_linearizable());
    }

    #[test]
    fn concurrent_appends_order_observed() {
        let h = [
            append(1, "x", 0, 10),
            append(2, "y", 0, 10),
            get(3, Some("yx"), 11, 12),
        ];
        assert!(check(&h).is_linearizable());
        let h = [
            append(1, "x", 0, 10),
            append(2, "y", 0, 10),
            get(3, Some("xx"), 11, 12),
        ];
        assert!(!check(&h).is_linearizable());
    }

    #[test]
    fn stale_read_is_not_linearizable_and_counterexample_is_small() {
        let mut h = vec![
            put(1, "old", 0, 1),
            put(1, "new", 2, 3),
            get(2, Some("old"), 4, 5),
        ];
        // Noise before and after, on the same key and on other keys.
        for i in 0..50u64 {
            h.push(on_key(
                put(3, &format!("o{i}"), 100 + 2 * i, 101 + 2 * i),
                "other",
            ));
            h.push(get(4, Some("old"), 4 + i, 6 + i).clone());
        }
        h.push(put(5, "late", 1000, 1001));
        h.push(get(5, Some("late"), 1002, 1003));
        let c = cex(&h);
        assert_eq!(c.key, "k");
        assert_eq!(
            cex_inputs(&c),
            vec![
                KvInput::Put("old".into()),
                KvInput::Put("new".into()),
                KvInput::Get {
                    output: Some("old".into())
                }
            ],
            "{c}"
        );
        assert!(c.minimal);
        let text = format!("{}", KvVerdict::NotLinearizable(Box::new(c)));
        assert!(
            text.contains("NOT linearizable") && text.contains("\"old\""),
            "{text}"
        );
    }

    #[test]
    fn lost_write_is_not_linearizable() {
        // An acknowledged append that a later read does not include.
        let h = [
            put(1, "a", 0, 1),
            append(2, "b", 2, 3),
            append(1, "c", 4, 5),
            get(3, Some("ac"), 6, 7),
        ];
        let c = cex(&h);
        assert_eq!(c.ops.len(), 4, "{c}");
        // An acknowledged put whose effect vanished: the key reads absent.
        let h = [put(1, "a", 0, 1), get(2, None, 2, 3)];
        assert_eq!(cex(&h).ops.len(), 2);
    }

    #[test]
    fn failed_ops_never_happened() {
        let h = [
            put(1, "a", 0, 1),
            with_status(put(2, "b", 2, 3), Status::Fail),
            get(3, Some("a"), 4, 5),
        ];
        assert!(check(&h).is_linearizable());
        let h = [
            put(1, "a", 0, 1),
            with_status(put(2, "b", 2, 3), Status::Fail),
            get(3, Some("b"), 4, 5),
        ];
        assert!(!check(&h).is_linearizable());
        // A failed read tells nothing, whatever it carries.
        let h = [
            put(1, "a", 0, 1),
            with_status(get(2, Some("zzz"), 2, 3), Status::Fail),
        ];
        assert!(check(&h).is_linearizable());
    }

    #[test]
    fn unknown_writes_may_or_may_not_happen() {
        // Observed, long after the client gave up on it.
        let h = [
            put(1, "a", 0, 1),
            with_status(put(2, "b", 2, 3), Status::Unknown),
            get(3, Some("a"), 10, 11),
            get(3, Some("b"), 20, 21),
            get(3, Some("b"), 30, 31),
        ];
        assert!(check(&h).is_linearizable());
        // Never observed.
        let h = [
            put(1, "a", 0, 1),
            with_status(put(2, "b", 2, 3), Status::Unknown),
            get(3, Some("a"), 20, 21),
        ];
        assert!(check(&h).is_linearizable());
        // But not before it was sent.
        let h = [
            put(1, "a", 0, 1),
            get(3, Some("b"), 2, 3),
            with_status(put(2, "b", 4, 5), Status::Unknown),
        ];
        assert!(!check(&h).is_linearizable());
        // And only once: b then a then b again is impossible.
        let h = [
            with_status(put(2, "b", 0, 0), Status::Unknown),
            put(1, "a", 1, 2),
            get(3, Some("b"), 3, 4),
            put(1, "a", 5, 6),
            get(3, Some("b"), 7, 8),
        ];
        assert!(!check(&h).is_linearizable());
        // An unknown read is ignored.
        let h = [
            put(1, "a", 0, 1),
            with_status(get(2, Some("zzz"), 2, 3), Status::Unknown),
        ];
        assert!(check(&h).is_linearizable());
    }

    #[test]
    fn absent_reads_and_deletes() {
        let h = [
            put(1, "a", 0, 1),
            del(1, 2, 5),
            get(2, Some("a"), 3, 4),
            get(2, None, 6, 7),
        ];
        assert!(check(&h).is_linearizable());
        let h = [put(1, "a", 0, 1), del(1, 2, 3), get(2, Some("a"), 4, 5)];
        let c = cex(&h);
        assert_eq!(c.ops.len(), 3, "{c}");
        // A found read of "" is not an absent key.
        let h = [get(1, Some(""), 0, 1)];
        assert!(!check(&h).is_linearizable());
        let h = [append(1, "", 0, 1), get(1, Some(""), 2, 3)];
        assert!(check(&h).is_linearizable());
    }

    #[test]
    fn touching_intervals_count_as_overlapping() {
        let h = [put(1, "a", 0, 5), get(2, None, 5, 6)];
        assert!(check(&h).is_linearizable());
        let h = [put(1, "a", 0, 4), get(2, None, 5, 6)];
        assert!(!check(&h).is_linearizable());
    }

    #[test]
    fn keys_are_independent() {
        let h = [
            on_key(put(1, "a", 0, 1), "x"),
            on_key(get(2, None, 2, 3), "y"),
            on_key(get(2, Some("a"), 2, 3), "x"),
        ];
        assert!(check(&h).is_linearizable());
    }

    #[test]
    fn counterexample_shows_pending_writes_at_the_cut() {
        // The read of "c" is impossible as soon as it returns, whatever the
        // still-running put of "b" does.
        let h = [
            put(1, "a", 0, 1),
            put(2, "b", 2, 100),
            get(3, Some("c"), 3, 4),
            put(4, "c", 5, 6),
        ];
        let c = cex(&h);
        assert_eq!(
            cex_inputs(&c),
            vec![KvInput::Get {
                output: Some("c".into())
            }],
            "{c}"
        );
    }

    #[test]
    fn bound_gives_unknown() {
        // 24 concurrent puts, then a read of a value nobody wrote: every subset
        // of the puts is a distinct configuration.
        let mut h: Vec<KvOp> = (0..24).map(|i| put(i, &format!("v{i}"), 0, 100)).collect();
        h.push(get(99, Some("nobody"), 200, 201));
        let opts = KvCheckOptions {
            max_steps_per_key: 10_000,
            minimize_budget_steps: 10_000,
            ..KvCheckOptions::default()
        };
        match check_kv(&h, &opts) {
            KvVerdict::Unknown { key, reason } => {
                assert_eq!(key, "k");
                assert!(reason.contains("10000"), "{reason}");
            }
            other => panic!("expected unknown, got {other}"),
        }
        // The same through the memory bound.
        let by_bytes = KvCheckOptions {
            max_cache_bytes_per_key: 48 * 1000,
            ..KvCheckOptions::default()
        };
        assert_eq!(by_bytes.step_limit(25), 1000);
        assert!(matches!(
            check_kv(&h, &by_bytes),
            KvVerdict::Unknown { reason, .. } if reason.contains("bound of 1000 ")
        ));
        // A definite failure on another key still wins over an unknown.
        h.push(on_key(get(1, Some("x"), 0, 1), "a"));
        assert!(matches!(
            check_kv(&h, &opts),
            KvVerdict::NotLinearizable(c) if c.key == "a"
        ));
    }

    #[test]
    fn long_sequential_history_is_cheap() {
        let mut h = Vec::new();
        let mut t = 0;
        let mut expect = String::new();
        for i in 0..5000u64 {
            let v = format!("{i},");
            h.push(append((i % 4) as u32, &v, t, t + 3));
            expect.push_str(&v);
            h.push(get(9, Some(&expect), t + 4, t + 5));
            t += 4;
        }
        let opts = KvCheckOptions {
            max_steps_per_key: 20_000,
            minimize_budget_steps: 0,
            ..KvCheckOptions::default()
        };
        let v = check_kv(&h, &opts);
        assert!(v.is_linearizable(), "{v}");
    }

    pub(super) mod oracle {
        //! Brute force: every subset of the unknown writes, every order.
        use super::super::*;

        fn legal(order: &[&KvOp]) -> bool {
            let mut state: Option<String> = None;
            for o in order {
                match &o.input {
                    KvInput::Get { output } => {
                        if *output != state {
                            return false;
                        }
                    }
                    KvInput::Put(v) => state = Some(v.clone()),
                    KvInput::Append(v) => {
                        state = Some(format!("{}{}", state.unwrap_or_default(), v))
                    }
                    KvInput::Delete => state = None,
                }
            }
            true
        }

        fn respects_real_time(order: &[&KvOp]) -> bool {
            // If b was answered strictly before a was sent, b goes first.
            for (i, a) in order.iter().enumerate() {
                for b in &order[i + 1..] {
                    if b.status == Status::Ok && b.complete_ns.is_some_and(|c| c < a.invoke_ns) {
                        return false;
                    }
                }
            }
            true
        }

        fn permute(items: &mut [&KvOp], k: usize, found: &mut bool) {
            if *found {
                return;
            }
            if k == items.len() {
                *found = respects_real_time(items) && legal(items);
                return;
            }
            for i in k..items.len() {
                items.swap(k, i);
                permute(items, k + 1, found);
                items.swap(k, i);
            }
        }

        /// Linearizability of a one-key history, by enumeration.
        pub fn linearizable(ops: &[KvOp]) -> bool {
            let definite: Vec<&KvOp> = ops
                .iter()
                .filter(|o| o.status == Status::Ok && o.complete_ns.is_some())
                .collect();
            let optional: Vec<&KvOp> = ops
                .iter()
                .filter(|o| o.status == Status::Unknown && !matches!(o.input, KvInput::Get { .. }))
                .collect();
            for mask in 0u32..(1 << optional.len()) {
                let mut items = definite.clone();
                for (i, o) in optional.iter().enumerate() {
                    if mask & (1 << i) != 0 {
                        items.push(o);
                    }
                }
                let mut found = false;
                permute(&mut items, 0, &mut found);
                if found {
                    return true;
                }
            }
            false
        }
    }

    #[test]
    fn counterexample_leaves_out_unrelated_deletes_and_appends() {
        // Deletes and appends long before a lost append: none belong in it. The
        // put stays: without it, the read of "v+a" could come from elsewhere.
        let mut h = Vec::new();
        for i in 0..20u64 {
            h.push(del(1, 10 * i, 10 * i + 1));
            h.push(append(1, &format!("+x{i}"), 10 * i + 2, 10 * i + 3));
            h.push(get(2, Some(&format!("+x{i}")), 10 * i + 4, 10 * i + 5));
        }
        h.push(put(1, "v", 1000, 1001));
        h.push(append(1, "+a", 1002, 1003));
        h.push(append(1, "+b", 1004, 1005));
        h.push(get(2, Some("v+a"), 1006, 1007));
        let c = cex(&h);
        assert_eq!(
            cex_inputs(&c),
            vec![
                KvInput::Put("v".into()),
                KvInput::Append("+a".into()),
                KvInput::Append("+b".into()),
                KvInput::Get {
                    output: Some("v+a".into())
                }
            ],
            "{c}"
        );
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn arb_op() -> impl Strategy<Value = KvOp> {
            let value = prop_oneof![Just("a"), Just("b"), Just("ab"), Just("")];
            let input = prop_oneof![
                3 => proptest::option::of(value.clone())
                    .prop_map(|v| KvInput::Get { output: v.map(str::to_string) }),
                2 => value.clone().prop_map(|v| KvInput::Put(v.to_string())),
                2 => value.prop_map(|v| KvInput::Append(v.to_string())),
                1 => Just(KvInput::Delete),
            ];
            let status = prop_oneof![
                6 => Just(Status::Ok),
                1 => Just(Status::Fail),
                2 => Just(Status::Unknown),
            ];
            (input, 0u64..12, 0u64..6, status, 0u32..3).prop_map(
                |(input, invoke, len, status, client)| KvOp {
                    client: client.to_string(),
                    key: "k".into(),
                    input,
                    invoke_ns: invoke,
                    complete_ns: (status != Status::Unknown).then_some(invoke + len),
                    status,
                    origin: None,
                },
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
            #[test]
            fn agrees_with_brute_force(h in proptest::collection::vec(arb_op(), 0..7)) {
                let expected = oracle::linearizable(&h);
                let verdict = check(&h);
                prop_assert_eq!(verdict.is_linearizable(), expected, "{}", verdict);
                if let KvVerdict::NotLinearizable(c) = verdict {
                    // The counterexample is itself non-linearizable (with its
                    // pending ops as unknown writes) and drawn from the history.
                    let sub: Vec<KvOp> = c.ops.iter().map(|c| {
                        let mut o = c.op.clone();
                        if c.pending_at_cut { o.status = Status::Unknown; o.complete_ns = None; }
                        o
                    }).collect();
                    prop_assert!(!oracle::linearizable(&sub), "{}", c);
                    for c in &c.ops {
                        prop_assert!(h.contains(&c.op));
                    }
                    prop_assert!(c.minimal);
                }
            }

            /// The shrinking steps are sound: each maps a linearizable history
            /// to a linearizable one, so a non-linearizable result implies a
            /// non-linearizable original.
            #[test]
            fn shrinking_steps_keep_linearizable_histories_linearizable(
                h in proptest::collection::vec(arb_op(), 0..6),
                t in 0u64..20,
            ) {
                let h: Vec<KvOp> = h.into_iter().filter(relevant).collect();
                prop_assume!(oracle::linearizable(&h));
                let as_ops = |s: &[CounterexampleOp]| -> Vec<KvOp> {
                    s.iter().filter(|c| relevant_in_cex(c)).map(|c| {
                        let mut o = c.op.clone();
                        if c.pending_at_cut { o.status = Status::Unknown; o.complete_ns = None; }
                        o
                    }).collect()
                };
                let cut = cut_at(&h, t);
                prop_assert!(oracle::linearizable(&as_ops(&cut)), "cut at {}", t);
                let all = vec![true; cut.len()];
                for i in 0..cut.len() {
                    if droppable(&cut, &all, i) {
                        let mut rest = cut.clone();
                        let gone = rest.remove(i);
                        prop_assert!(oracle::linearizable(&as_ops(&rest)), "dropping {:?}", gone.op.input);
                    }
                }
                for start in 0..cut.len() {
                    for end in start..=cut.len() {
                        prop_assert!(oracle::linearizable(&as_ops(&drop_range(&cut, start..end))));
                    }
                }
            }
        }
    }
}
