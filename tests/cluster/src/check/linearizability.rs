//! Linearizability, per key, of a single register.
//!
//! Each key's projection of the history is checked on its own: Put and
//! BatchPut write the key's value, Delete writes "absent", Get reads it, and
//! a Range (one page, one atomic read) reads every key in its bounds
//! (absent when not returned). A multi-key operation that is linearizable
//! as a whole is linearizable in each projection, so a failing projection
//! is a real violation; batch atomicity across keys is checked separately
//! ([`super::atomicity`]).
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
//!   valid order leaves a valid order.
//! - Bounds: at most [`OPS_PER_KEY_MAX`] ops per key and
//!   [`STEPS_PER_KEY_MAX`] search steps; past them the key is reported
//!   inconclusive instead of hanging.

use std::collections::{HashMap, HashSet};

use super::{in_range, Verdict};
use crate::history::{Op, OpKind, Outcome};

/// Ops of one key the search takes on, at most.
pub const OPS_PER_KEY_MAX: usize = 20_000;
/// Search steps (states visited) per key, at most.
pub const STEPS_PER_KEY_MAX: u64 = 2_000_000;

/// One op of a key's projection. Values are interned: 0 is "absent".
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyOp {
    id: u64,
    invoke: u64,
    /// `u64::MAX` for an unknown outcome.
    ret: u64,
    write: bool,
    value: u32,
    /// Acknowledged ops must take effect; unknown writes may.
    required: bool,
}

/// Checks every key of `ops`; the verdict names the first key that fails.
pub fn check(ops: &[Op]) -> Verdict {
    let mut keys: Vec<String> = ops.iter().flat_map(keys_of).collect();
    keys.sort();
    keys.dedup();
    let mut checked = 0usize;
    let mut inconclusive = Vec::new();
    for key in &keys {
        let (projection, names) = project(ops, key);
        checked += projection.len();
        match check_key(&projection) {
            KeyVerdict::Ok => {}
            KeyVerdict::Inconclusive(why) => inconclusive.push(format!("{key}: {why}")),
            KeyVerdict::Violation(detail) => {
                return Verdict::Fail(format!("key {key}: {}", detail.describe(&projection, &names)))
            }
        }
    }
    if inconclusive.is_empty() {
        Verdict::Pass(format!("{} keys, {checked} key-ops linearizable", keys.len()))
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
    let seen: HashSet<Option<String>> = reads.iter().map(|(_, _, v)| v.clone()).collect();
    let mut projection = Vec::new();
    for (op, ret, value, acknowledged) in writes {
        // An unknown write nobody saw may as well never have happened.
        if !acknowledged && value.is_some() && !seen.contains(&value) {
            continue;
        }
        projection.push(KeyOp {
            id: op.id,
            invoke: op.invoke_us,
            ret,
            write: true,
            value: intern(value.as_deref()),
            required: acknowledged,
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
        });
    }
    projection.sort_by_key(|op| (op.invoke, op.id));
    (projection, names)
}

#[derive(Debug)]
enum KeyVerdict {
    Ok,
    Violation(Stuck),
    Inconclusive(String),
}

/// Where the search got furthest before failing.
#[derive(Debug, Default, Clone)]
struct Stuck {
    placed: usize,
    value: u32,
    /// Indexes of the ops that could not go next at that point.
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
                if op.required { "" } else { " (unknown)" }
            )
        };
        let candidates: Vec<String> = self.candidates.iter().map(|&i| show(i)).collect();
        format!(
            "not linearizable: after placing {} of {} ops the register holds {}; none of these can go next: [{}]{}",
            self.placed,
            ops.len(),
            name(self.value),
            candidates.join(", "),
            self.blocking
                .map(|i| format!("; the earliest-returning unplaced op is {}", show(i)))
                .unwrap_or_default()
        )
    }
}

/// Stack for the search thread: the recursion is as deep as the history.
const SEARCH_STACK_BYTES: usize = 1 << 30;

fn check_key(ops: &[KeyOp]) -> KeyVerdict {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("linearizability".into())
            .stack_size(SEARCH_STACK_BYTES)
            .spawn_scoped(scope, || search_key(ops))
            .expect("spawning the search thread")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn search_key(ops: &[KeyOp]) -> KeyVerdict {
    if ops.len() > OPS_PER_KEY_MAX {
        return KeyVerdict::Inconclusive(format!("{} ops > OPS_PER_KEY_MAX {OPS_PER_KEY_MAX}", ops.len()));
    }
    let mut search = Search {
        ops,
        placed: vec![0u64; ops.len().div_ceil(64)],
        placed_count: 0,
        required_left: ops.iter().filter(|o| o.required).count(),
        memo: HashSet::new(),
        steps: 0,
        stuck: Stuck::default(),
    };
    match search.dfs(0) {
        Ok(true) => KeyVerdict::Ok,
        Ok(false) => KeyVerdict::Violation(search.stuck),
        Err(()) => KeyVerdict::Inconclusive(format!(
            "search budget of {STEPS_PER_KEY_MAX} steps spent on {} ops",
            ops.len()
        )),
    }
}

struct Search<'a> {
    ops: &'a [KeyOp],
    placed: Vec<u64>,
    placed_count: usize,
    required_left: usize,
    memo: HashSet<(Vec<u64>, u32)>,
    steps: u64,
    stuck: Stuck,
}

impl Search<'_> {
    fn is_placed(&self, i: usize) -> bool {
        self.placed[i / 64] & (1 << (i % 64)) != 0
    }

    fn toggle(&mut self, i: usize) {
        self.placed[i / 64] ^= 1 << (i % 64);
    }

    /// Whether the unplaced ops can be ordered from register `value`;
    /// `Err` when the step budget is spent.
    fn dfs(&mut self, value: u32) -> Result<bool, ()> {
        if self.required_left == 0 {
            return Ok(true);
        }
        if !self.memo.insert((self.placed.clone(), value)) {
            return Ok(false);
        }
        self.steps += 1;
        if self.steps > STEPS_PER_KEY_MAX {
            return Err(());
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
            self.toggle(i);
            self.placed_count += 1;
            self.required_left -= usize::from(required);
            let found = self.dfs(next);
            self.toggle(i);
            self.placed_count -= 1;
            self.required_left += usize::from(required);
            if found? {
                return Ok(true);
            }
            tried.push(i);
        }
        if self.placed_count >= self.stuck.placed {
            self.stuck = Stuck {
                placed: self.placed_count,
                value,
                candidates: tried,
                blocking,
            };
        }
        Ok(false)
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
}
