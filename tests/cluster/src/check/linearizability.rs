//! Linearizability, per key, of a single register.
//!
//! Each key's projection of the history is checked on its own: Put and
//! BatchPut write the key's value, Delete writes "absent", Get reads it, and
//! a Range (one page, one atomic read) reads every key in its bounds
//! (absent when not returned). A multi-key operation that is linearizable
//! as a whole is linearizable in each projection, so a failing projection
//! is a real violation; batch atomicity and Range snapshots across keys are
//! checked separately ([`super::atomicity`], [`super::snapshot`]).
//!
//! The search is Wing & Gong's with Lowe's memoisation (as in Knossos and
//! Porcupine): depth-first over "which op takes effect next", where an op
//! may go next only if it was invoked before every not-yet-placed
//! acknowledged op returned; states (set of placed ops, register value) are
//! remembered so none is explored twice.
//!
//! - Acknowledged ops must all be placed; failed writes never take effect
//!   (they are left out, so a read of their value has no writer and fails
//!   the check); failed reads tell nothing and are left out.
//! - A write with an unknown outcome has no return time: it may take effect
//!   at any point after its invocation, or never. One whose value no read
//!   ever saw is left out, which is exact: dropping an unseen write from a
//!   valid order leaves a valid order. One whose value a read saw did take
//!   effect, before the first read of it returned: it is checked as an
//!   acknowledged write returning then, which is exact too (that read must
//!   come after it, and every op invoked after that read returned must
//!   come after the read).
//!
//! # Windows
//!
//! A key's projection is cut at quiescent points: moments when no op on
//! the key is in flight (every op invoked before returned before every op
//! invoked after). Real time orders every op before the cut ahead of every
//! op after it, so the windows are searched one after the other, each from
//! the set of states the previous one can end in: the register's possible
//! values, each with the number of unknown-outcome deletes still free to
//! take effect later (the only ops that stay in flight across a cut). The
//! search of a window explores all its orders, not just the first that
//! works, to collect that set. A history of any length is decided as long
//! as each window stays within [`OPS_PER_WINDOW_MAX`] ops and
//! [`STEPS_PER_WINDOW_MAX`] search steps; past them the key is reported
//! inconclusive, which fails the run (see `scenario.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;

use super::{in_range, Verdict};
use crate::history::{Op, OpKind, Outcome};

/// Ops of one window the search takes on, at most.
pub const OPS_PER_WINDOW_MAX: usize = 20_000;
/// Search steps (states visited) per window, at most.
pub const STEPS_PER_WINDOW_MAX: u64 = 2_000_000;

/// The search's bounds, per window; past either the key is inconclusive.
#[derive(Debug, Clone, Copy)]
struct Budget {
    ops_per_window_max: usize,
    steps_per_window_max: u64,
}

const BUDGET: Budget = Budget {
    ops_per_window_max: OPS_PER_WINDOW_MAX,
    steps_per_window_max: STEPS_PER_WINDOW_MAX,
};

/// One op of a key's projection. Values are interned: 0 is "absent".
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyOp {
    id: u64,
    invoke: u64,
    /// `u64::MAX` for an unknown outcome that no read bounds.
    ret: u64,
    write: bool,
    value: u32,
    /// Acknowledged ops (and unknown writes a read saw) must take effect;
    /// the other unknown writes may.
    required: bool,
    /// The client did not learn the outcome.
    unknown: bool,
}

/// Possible states of the register at a cut: each value it may hold, with
/// the most unknown-outcome deletes that may still take effect later (more
/// is never worse: they may also never happen).
type States = BTreeMap<u32, u32>;

/// Checks every key of `ops`; the verdict names the first key that fails.
pub fn check(ops: &[Op]) -> Verdict {
    check_within(ops, BUDGET)
}

fn check_within(ops: &[Op], budget: Budget) -> Verdict {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("linearizability".into())
            .stack_size(SEARCH_STACK_BYTES)
            .spawn_scoped(scope, || check_keys(ops, budget))
            .expect("spawning the search thread")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Stack for the search thread: the recursion is as deep as a window.
const SEARCH_STACK_BYTES: usize = 1 << 30;

fn check_keys(ops: &[Op], budget: Budget) -> Verdict {
    let mut keys: Vec<String> = ops.iter().flat_map(keys_of).collect();
    keys.sort();
    keys.dedup();
    let (mut checked, mut windows, mut window_ops_max) = (0usize, 0usize, 0usize);
    let mut inconclusive = Vec::new();
    for key in &keys {
        let (projection, names) = project(ops, key);
        checked += projection.len();
        let cuts = windows_of(&projection);
        windows += cuts.len();
        window_ops_max = window_ops_max.max(cuts.iter().map(|w| w.len()).max().unwrap_or(0));
        match check_key(&projection, &cuts, budget) {
            KeyVerdict::Ok => {}
            KeyVerdict::Inconclusive(why) => inconclusive.push(format!("{key}: {why}")),
            KeyVerdict::Violation(detail) => {
                return Verdict::Fail(format!("key {key}: {}", detail.describe(&projection, &names)))
            }
        }
    }
    if inconclusive.is_empty() {
        Verdict::Pass(format!(
            "{} keys, {checked} key-ops in {windows} windows (largest {window_ops_max} ops) linearizable",
            keys.len()
        ))
    } else {
        Verdict::Inconclusive(inconclusive.join("; "))
    }
}

/// Every key an op touches (a Range: the keys it returned; the other keys
/// in its bounds are found through the writes).
fn keys_of(op: &Op) -> Vec<String> {
    match &op.kind {
        OpKind::Put { key, .. } | OpKind::Delete { key } | OpKind::Get { key, .. } => vec![key.clone()],
        OpKind::Batch { keys, .. } => keys.clone(),
        OpKind::Range { result, .. } => result.iter().flatten().map(|(k, _)| k.clone()).collect(),
    }
}

/// The projection of `ops` on `key`, sorted by invocation, and the value
/// names (index = interned value).
fn project(ops: &[Op], key: &str) -> (Vec<KeyOp>, Vec<Option<String>>) {
    let mut names: Vec<Option<String>> = vec![None];
    let mut index: HashMap<String, u32> = HashMap::new();
    let mut intern = |value: Option<&str>| -> u32 {
        match value {
            None => 0,
            Some(v) => *index.entry(v.to_owned()).or_insert_with(|| {
                names.push(Some(v.to_owned()));
                (names.len() - 1) as u32
            }),
        }
    };
    let mut reads = Vec::new();
    let mut writes = Vec::new();
    for op in ops {
        let ret = op.complete_us.unwrap_or(u64::MAX);
        match (&op.kind, op.outcome) {
            (_, Outcome::Fail) => {}
            (
                OpKind::Get {
                    key: k,
                    result: Some(found),
                },
                Outcome::Ok,
            ) if k == key => {
                reads.push((op, ret, found.clone()));
            }
            (
                OpKind::Range {
                    start,
                    end,
                    result: Some(pairs),
                },
                Outcome::Ok,
            ) if in_range(key, start, end) => {
                let found = pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
                reads.push((op, ret, found));
            }
            (kind, outcome) if kind.is_write() => {
                for (k, value) in kind.writes() {
                    if k == key {
                        writes.push((op, ret, value.map(str::to_owned), outcome == Outcome::Ok));
                    }
                }
            }
            _ => {}
        }
    }
    // The earliest return of a read of each value.
    let mut first_seen: HashMap<Option<String>, u64> = HashMap::new();
    for (_, ret, value) in &reads {
        let at = first_seen.entry(value.clone()).or_insert(*ret);
        *at = (*at).min(*ret);
    }
    let mut projection = Vec::new();
    for (op, ret, value, acknowledged) in writes {
        let (ret, required) = match (acknowledged, &value, first_seen.get(&value)) {
            (true, _, _) => (ret, true),
            // An unknown delete: "absent" is not unique, so no read tells
            // whether it happened.
            (false, None, _) => (ret, false),
            // An unknown write nobody saw may as well never have happened.
            (false, Some(_), None) => continue,
            // Seen: it happened, before the first read of it returned.
            (false, Some(_), Some(&seen_at)) => (seen_at, true),
        };
        projection.push(KeyOp {
            id: op.id,
            invoke: op.invoke_us,
            ret,
            write: true,
            value: intern(value.as_deref()),
            required,
            unknown: !acknowledged,
        });
    }
    for (op, ret, value) in reads {
        projection.push(KeyOp {
            id: op.id,
            invoke: op.invoke_us,
            ret,
            write: false,
            value: intern(value.as_deref()),
            required: true,
            unknown: false,
        });
    }
    projection.sort_by_key(|op| (op.invoke, op.id));
    (projection, names)
}

/// Cuts `ops` (sorted by invocation) at quiescent points: before op `i`
/// when every required op invoked before it returned before it was
/// invoked. Optional ops (unknown deletes) never return; they are carried
/// across cuts as pending deletes instead of holding the window open.
fn windows_of(ops: &[KeyOp]) -> Vec<Range<usize>> {
    let mut windows = Vec::new();
    let (mut start, mut returned_max) = (0usize, None::<u64>);
    for (i, op) in ops.iter().enumerate() {
        if i > start && returned_max.is_some_and(|r| r < op.invoke) {
            windows.push(start..i);
            start = i;
        }
        if op.required {
            returned_max = Some(returned_max.map_or(op.ret, |r| r.max(op.ret)));
        }
    }
    if start < ops.len() {
        windows.push(start..ops.len());
    }
    windows
}

#[derive(Debug)]
enum KeyVerdict {
    Ok,
    Violation(Stuck),
    Inconclusive(String),
}

/// Where the search of the failing window got furthest.
#[derive(Debug, Default, Clone)]
struct Stuck {
    /// The failing window (indexes into the projection).
    window: Range<usize>,
    /// The states the window was searched from.
    from: States,
    placed: usize,
    value: u32,
    /// Indexes (into the projection) of the ops that could not go next.
    candidates: Vec<usize>,
    /// Index of the acknowledged op that returned first among the unplaced.
    blocking: Option<usize>,
}

impl Stuck {
    fn describe(&self, ops: &[KeyOp], names: &[Option<String>]) -> String {
        let name = |v: u32| format!("{:?}", names.get(v as usize).cloned().flatten());
        let show = |i: usize| {
            let op = &ops[i];
            let ret = if op.ret == u64::MAX {
                "?".to_owned()
            } else {
                op.ret.to_string()
            };
            format!(
                "op {} {} {} [{}us..{ret}us]{}",
                op.id,
                if op.write { "write" } else { "read" },
                name(op.value),
                op.invoke,
                if op.unknown { " (unknown outcome)" } else { "" }
            )
        };
        let candidates: Vec<String> = self.candidates.iter().map(|&i| show(i)).collect();
        let from: Vec<String> = self.from.keys().map(|&v| name(v)).collect();
        format!(
            "not linearizable: in the window from op {} ({} ops of the key's history before it, \
             the register may hold one of [{}] there), after placing {} of its {} ops the register \
             holds {}; none of these can go next: [{}]{}",
            ops.get(self.window.start).map_or(0, |op| op.id),
            self.window.start,
            from.join(", "),
            self.placed,
            self.window.len(),
            name(self.value),
            candidates.join(", "),
            self.blocking
                .map(|i| format!("; the earliest-returning unplaced op is {}", show(i)))
                .unwrap_or_default()
        )
    }
}

fn check_key(ops: &[KeyOp], windows: &[Range<usize>], budget: Budget) -> KeyVerdict {
    let mut states = States::from([(0, 0)]);
    for window in windows {
        let part = &ops[window.clone()];
        if part.len() > budget.ops_per_window_max {
            return KeyVerdict::Inconclusive(format!(
                "a window of {} ops > {} ops per window at most",
                part.len(),
                budget.ops_per_window_max
            ));
        }
        let mut search = Search::new(part, budget.steps_per_window_max);
        for (&value, &pending) in &states {
            if search.dfs(value, pending).is_err() {
                return KeyVerdict::Inconclusive(format!(
                    "search budget of {} steps spent on a window of {} ops",
                    budget.steps_per_window_max,
                    part.len()
                ));
            }
        }
        if search.finals.is_empty() {
            let shift = |i: usize| window.start + i;
            let stuck = search.stuck;
            return KeyVerdict::Violation(Stuck {
                window: window.clone(),
                from: states,
                candidates: stuck.candidates.into_iter().map(shift).collect(),
                blocking: stuck.blocking.map(shift),
                ..stuck
            });
        }
        states = search.finals;
    }
    KeyVerdict::Ok
}

/// The search of one window, from one or more starting states.
struct Search<'a> {
    ops: &'a [KeyOp],
    placed: Vec<u64>,
    placed_count: usize,
    required_left: usize,
    optional_left: u32,
    memo: HashSet<(Vec<u64>, u32, u32)>,
    /// The states the window can end in.
    finals: States,
    steps: u64,
    steps_max: u64,
    stuck: Stuck,
}

impl<'a> Search<'a> {
    fn new(ops: &'a [KeyOp], steps_max: u64) -> Search<'a> {
        let required = ops.iter().filter(|o| o.required).count();
        Search {
            ops,
            placed: vec![0u64; ops.len().div_ceil(64)],
            placed_count: 0,
            required_left: required,
            optional_left: (ops.len() - required) as u32,
            memo: HashSet::new(),
            finals: States::new(),
            steps: 0,
            steps_max,
            stuck: Stuck::default(),
        }
    }

    fn is_placed(&self, i: usize) -> bool {
        self.placed[i / 64] & (1 << (i % 64)) != 0
    }

    fn toggle(&mut self, i: usize) {
        self.placed[i / 64] ^= 1 << (i % 64);
    }

    /// Explores every order of the unplaced ops from register `value` with
    /// `pending` unknown deletes from earlier windows free to take effect;
    /// records each end state in `finals`. Whether some order placed every
    /// required op (exact on a fresh state; a remembered state reports
    /// `false`, which only matters for the diagnosis); `Err` when the step
    /// budget is spent.
    fn dfs(&mut self, value: u32, pending: u32) -> Result<bool, ()> {
        if self.required_left == 0 {
            // The window's unplaced unknown deletes may still happen later.
            let pending = pending + self.optional_left;
            let best = self.finals.entry(value).or_insert(pending);
            *best = (*best).max(pending);
            return Ok(true);
        }
        if !self.memo.insert((self.placed.clone(), value, pending)) {
            return Ok(false);
        }
        self.steps += 1;
        if self.steps > self.steps_max {
            return Err(());
        }
        let mut any = false;
        // A pending delete from an earlier window may land now (only worth
        // trying when it changes the value).
        if pending > 0 && value != 0 {
            any |= self.dfs(0, pending - 1)?;
        }
        // An op may go next only if invoked before the earliest return of
        // an unplaced acknowledged op (that one must come after it).
        let (mut horizon, mut blocking) = (u64::MAX, None);
        for (i, op) in self.ops.iter().enumerate() {
            if op.required && !self.is_placed(i) && op.ret < horizon {
                horizon = op.ret;
                blocking = Some(i);
            }
        }
        let mut tried = Vec::new();
        for i in 0..self.ops.len() {
            let op = &self.ops[i];
            if op.invoke > horizon {
                break; // sorted by invocation
            }
            if self.is_placed(i) {
                continue;
            }
            if !op.write && op.value != value {
                tried.push(i);
                continue;
            }
            let next = if op.write { op.value } else { value };
            let required = op.required;
            self.place(i, required, true);
            let found = self.dfs(next, pending);
            self.place(i, required, false);
            if found? {
                any = true;
            } else {
                tried.push(i);
            }
        }
        if !any && self.placed_count >= self.stuck.placed {
            self.stuck = Stuck {
                placed: self.placed_count,
                value,
                candidates: tried,
                blocking,
                ..Stuck::default()
            };
        }
        Ok(any)
    }

    /// Marks op `i` placed (`on`) or unplaced again.
    fn place(&mut self, i: usize, required: bool, on: bool) {
        self.toggle(i);
        if on {
            self.placed_count += 1;
            self.required_left -= usize::from(required);
            self.optional_left -= u32::from(!required);
        } else {
            self.placed_count -= 1;
            self.required_left += usize::from(required);
            self.optional_left += u32::from(!required);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::H;

    #[test]
    fn sequential_writes_and_reads_pass() {
        // The baseline: a read sees the latest completed write.
        let h = H::default()
            .put("a", "1", 0, 10)
            .get("a", Some("1"), 20, 30)
            .put("a", "2", 40, 50)
            .get("a", Some("2"), 60, 70)
            .delete("a", 80, 90)
            .get("a", None, 100, 110)
            .ops
            .clone();
        assert!(matches!(check(&h), Verdict::Pass(_)), "{:?}", check(&h));
    }

    #[test]
    fn a_stale_read_is_rejected() {
        // Reading 1 after 2 was acknowledged is the bug a frozen leader causes.
        let h = H::default()
            .put("a", "1", 0, 10)
            .put("a", "2", 20, 30)
            .get("a", Some("1"), 40, 50)
            .ops
            .clone();
        assert!(check(&h).is_fail(), "{:?}", check(&h));
    }

    #[test]
    fn concurrent_ops_may_take_either_order() {
        // Overlapping put and get: the get may see the old or the new value.
        let old = H::default()
            .put("a", "1", 0, 10)
            .put("a", "2", 20, 60)
            .get("a", Some("1"), 30, 40)
            .get("a", Some("2"), 45, 50)
            .ops
            .clone();
        assert!(matches!(check(&old), Verdict::Pass(_)), "{:?}", check(&old));
        // But not back again: once 2 was read, a later read cannot see 1.
        let flip = H::default()
            .put("a", "1", 0, 10)
            .put("a", "2", 20, 100)
            .get("a", Some("2"), 30, 40)
            .get("a", Some("1"), 50, 60)
            .ops
            .clone();
        assert!(check(&flip).is_fail(), "{:?}", check(&flip));
    }

    #[test]
    fn an_unknown_write_may_land_late_or_never() {
        // A timed-out write may take effect long after its client gave up...
        let late = H::default()
            .put("a", "1", 0, 10)
            .put_unknown("a", "2", 20)
            .get("a", Some("1"), 100, 110)
            .get("a", Some("2"), 200, 210)
            .ops
            .clone();
        assert!(matches!(check(&late), Verdict::Pass(_)), "{:?}", check(&late));
        // ...or never.
        let never = H::default()
            .put("a", "1", 0, 10)
            .put_unknown("a", "2", 20)
            .get("a", Some("1"), 300, 310)
            .ops
            .clone();
        assert!(matches!(check(&never), Verdict::Pass(_)), "{:?}", check(&never));
        // But not before it was invoked.
        let early = H::default()
            .put("a", "1", 0, 10)
            .get("a", Some("2"), 20, 30)
            .put_unknown("a", "2", 40)
            .ops
            .clone();
        assert!(check(&early).is_fail(), "{:?}", check(&early));
    }

    #[test]
    fn a_failed_write_that_shows_up_is_rejected() {
        // NotApplied is a promise: its value must never be read.
        let h = H::default()
            .put("a", "1", 0, 10)
            .put_failed("a", "2", 20, 30)
            .get("a", Some("2"), 40, 50)
            .ops
            .clone();
        assert!(check(&h).is_fail(), "{:?}", check(&h));
    }

    #[test]
    fn a_lost_acknowledged_write_is_rejected() {
        // An acknowledged write followed by a read of the older value.
        let h = H::default()
            .put("a", "1", 0, 10)
            .delete("a", 20, 30)
            .get("a", Some("1"), 40, 50)
            .ops
            .clone();
        assert!(check(&h).is_fail(), "{:?}", check(&h));
    }

    #[test]
    fn ranges_and_batches_count_as_reads_and_writes_of_each_key() {
        // A range missing a key reads it as absent; a batch writes each key.
        let ok = H::default()
            .batch(&["a", "b"], "x", 0, Some(10))
            .range("a", "c", &[("a", "x"), ("b", "x")], 20, 30)
            .delete("b", 40, 50)
            .range("a", "c", &[("a", "x")], 60, 70)
            .ops
            .clone();
        assert!(matches!(check(&ok), Verdict::Pass(_)), "{:?}", check(&ok));
        let resurrected = H::default()
            .batch(&["a", "b"], "x", 0, Some(10))
            .delete("b", 40, 50)
            .range("a", "c", &[("a", "x"), ("b", "x")], 60, 70)
            .ops
            .clone();
        assert!(check(&resurrected).is_fail(), "{:?}", check(&resurrected));
    }

    #[test]
    fn the_report_names_the_key_and_the_ops() {
        // A failure must point a human at the ops to look at.
        let h = H::default()
            .put("a", "1", 0, 10)
            .put("a", "2", 20, 30)
            .get("a", Some("1"), 40, 50)
            .ops
            .clone();
        let Verdict::Fail(text) = check(&h) else {
            panic!("expected a failure")
        };
        assert!(text.contains("key a") && text.contains("op 3"), "{text}");
    }

    #[test]
    fn a_long_concurrent_history_finishes_within_budget() {
        // Many overlapping ops must not blow the search up.
        let mut h = H::default();
        let mut t = 0;
        for i in 0..2000u64 {
            let v = format!("v{i}");
            h.put("a", &v, t, t + 30);
            h.get("a", Some(&v), t + 31, t + 40);
            h.put_unknown("a", &format!("u{i}"), t + 5);
            t += 20;
        }
        let verdict = check(&h.ops);
        assert!(matches!(verdict, Verdict::Pass(_)), "{verdict:?}");
    }

    #[test]
    fn a_history_longer_than_one_search_is_decided_in_windows() {
        // A soak's key sees far more ops than one search could take on
        // (the old limit was 20 000 per key); cut at quiescent points it
        // must still be decided, not left inconclusive.
        let mut h = H::default();
        let mut t = 0;
        for i in 0..10_000u64 {
            let (v, w) = (format!("v{i}"), format!("w{i}"));
            // Two overlapping writes, then a read of either; then a gap.
            h.put("a", &v, t, t + 30);
            h.put("a", &w, t + 10, t + 40);
            h.get("a", Some(if i % 2 == 0 { &v } else { &w }), t + 20, t + 50);
            t += 100;
        }
        assert_eq!(h.ops.len(), 30_000);
        let verdict = check(&h.ops);
        let Verdict::Pass(text) = &verdict else {
            panic!("{verdict}")
        };
        assert!(text.contains("10000 windows"), "{text}");
    }

    #[test]
    fn a_lost_write_is_caught_across_windows() {
        // A read long after an acknowledged overwrite that returns the value
        // from many windows earlier: the state carried across cuts must not
        // forget the overwrite.
        let mut h = H::default();
        let mut t = 0;
        for i in 0..1_000u64 {
            let v = format!("v{i}");
            h.put("a", &v, t, t + 10);
            h.get("a", Some(&v), t + 20, t + 30);
            t += 100;
        }
        h.get("a", Some("v3"), t, t + 10);
        let verdict = check(&h.ops);
        let Verdict::Fail(text) = &verdict else {
            panic!("expected a failure: {verdict}")
        };
        assert!(text.contains(&format!("op {}", h.ops.len())), "{text}");
    }

    #[test]
    fn a_cut_carries_every_possible_value() {
        // Two overlapping puts leave either value; the next window may read
        // either, but once it read one, the other cannot come back.
        let base = || {
            let mut h = H::default();
            h.put("a", "1", 0, 20).put("a", "2", 10, 30);
            h
        };
        let first = base()
            .get("a", Some("1"), 40, 50)
            .get("a", Some("1"), 60, 70)
            .ops
            .clone();
        assert!(matches!(check(&first), Verdict::Pass(_)), "{:?}", check(&first));
        let second = base().get("a", Some("2"), 40, 50).ops.clone();
        assert!(matches!(check(&second), Verdict::Pass(_)), "{:?}", check(&second));
        let both = base()
            .get("a", Some("1"), 40, 50)
            .get("a", Some("2"), 60, 70)
            .ops
            .clone();
        assert!(check(&both).is_fail(), "{:?}", check(&both));
    }

    #[test]
    fn an_unknown_delete_may_land_in_a_later_window() {
        // A timed-out delete never returns: it stays free to take effect in
        // any later window, but only once.
        let late = H::default()
            .put("a", "1", 0, 10)
            .delete_unknown("a", 20)
            .get("a", Some("1"), 30, 40)
            .get("a", Some("1"), 50, 60)
            .get("a", None, 70, 80)
            .ops
            .clone();
        assert!(matches!(check(&late), Verdict::Pass(_)), "{:?}", check(&late));
        let back = H::default()
            .put("a", "1", 0, 10)
            .delete_unknown("a", 20)
            .get("a", None, 30, 40)
            .get("a", Some("1"), 50, 60)
            .ops
            .clone();
        assert!(check(&back).is_fail(), "{:?}", check(&back));
        let twice = H::default()
            .put("a", "1", 0, 10)
            .delete_unknown("a", 20)
            .get("a", None, 30, 40)
            .put("a", "2", 50, 60)
            .get("a", Some("2"), 70, 80)
            .get("a", None, 90, 100)
            .ops
            .clone();
        assert!(check(&twice).is_fail(), "{:?}", check(&twice));
    }

    #[test]
    fn windows_are_cut_only_where_nothing_is_in_flight() {
        // A cut inside an op's interval would impose an order real time
        // does not; an unknown delete must not hold windows open forever.
        let h = H::default()
            .put("a", "1", 0, 10)
            .get("a", Some("1"), 5, 20)
            .delete_unknown("a", 25)
            .put("a", "2", 30, 40)
            .get("a", Some("2"), 50, 60)
            .ops
            .clone();
        let (projection, _) = project(&h, "a");
        assert_eq!(windows_of(&projection), vec![0..2, 2..3, 3..4, 4..5]);
    }

    #[test]
    fn a_window_past_the_search_budget_is_inconclusive_not_passed() {
        // Many fully concurrent writes leave too many orders to try; the
        // checker must say it could not decide (which fails the run), not
        // pass. 16 overlapping puts have 2^16 placed-sets, past a budget
        // of 10 000 steps (the real one is hit the same way, only later).
        let mut h = H::default();
        for i in 0..16u64 {
            h.put("a", &format!("v{i}"), i, 1_000);
        }
        h.get("a", Some("nobody wrote this"), 500, 1_000);
        let small = Budget {
            steps_per_window_max: 10_000,
            ..BUDGET
        };
        let verdict = check_within(&h.ops, small);
        assert!(matches!(verdict, Verdict::Inconclusive(_)), "{verdict}");
        assert!(!verdict.is_pass());
        let narrow = Budget {
            ops_per_window_max: 10,
            ..BUDGET
        };
        assert!(matches!(check_within(&h.ops, narrow), Verdict::Inconclusive(_)));
    }
}
