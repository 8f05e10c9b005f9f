//! Range snapshots: every Range is one atomic read of all its keys at a
//! single moment.
//!
//! [`super::linearizability`] checks each key of a Range as a read of that
//! key alone, so a Range that saw one key before a write and another key
//! after a later write passes it. This check asks, for each acknowledged
//! Range `R`, whether a single moment `t` in `R`'s interval explains every
//! value it read (every key in its bounds that any write touches, "absent"
//! when not returned), against the same register histories:
//!
//! - `R` read `v` on `k`, written by `W` (values are unique): `W` took
//!   effect at or after its invocation, so `t >= W.invoke`; every
//!   acknowledged write `W'` of `k` invoked after `W` returned took effect
//!   after `W`, and by its return, so `t <= W'.return`. An unknown write
//!   whose value some read saw took effect before that read returned: it
//!   counts as acknowledged, returning then.
//! - `R` read `k` absent: the last write of `k` before `t` was a delete `D`
//!   (any not failed) or there was none (the initial state). For `D`,
//!   `t >= D.invoke` and `t <= W'.return` for every acknowledged Put or
//!   BatchPut `W'` of `k` invoked after `D` returned; for the initial state,
//!   `t <= W'.return` for every acknowledged Put or BatchPut `W'` of `k`.
//!
//! Each key thus allows a union of intervals; `R` fails when no `t` in
//! `[R.invoke, R.return]` lies in all of them. Sound: in any linearization,
//! `R`'s point satisfies every constraint above, so a flagged Range is a
//! real violation. Not complete: only real-time order is used, so a torn
//! Range among concurrent writes can pass (as in [`super::atomicity`]).
//! A value no write produced is left to the linearizability check.

use std::collections::HashMap;

use super::{in_range, Verdict};
use crate::history::{Op, OpKind, Outcome};

/// A closed interval of time, µs; `u64::MAX` is "no bound".
type Interval = (u64, u64);

/// The writes of one key, in the form this check needs.
#[derive(Default)]
struct KeyWrites<'a> {
    /// Each value's write (not failed), as its invocation and the moment
    /// by which it certainly took effect: its return, or for an unknown
    /// write whose value was read, the first return of such a read.
    by_value: HashMap<&'a str, (u64, Option<u64>)>,
    /// Deletes not failed.
    deletes: Vec<&'a Op>,
    /// Writes known to have taken effect (acknowledged, or unknown and
    /// read) as (invoke, by when); once indexed,
    /// sorted by invocation, each return replaced by the earliest return
    /// from there on.
    acked: Vec<(u64, u64)>,
    /// The same for Puts and BatchPuts only, likewise.
    acked_values: Vec<(u64, u64)>,
    /// Once indexed: when the key may have been absent, one interval for
    /// the initial state and one per delete.
    absent: Vec<Interval>,
}

impl KeyWrites<'_> {
    /// The earliest return among `writes` invoked after `after` (`None`:
    /// every one of them), or "no bound".
    fn bound(writes: &[(u64, u64)], after: Option<u64>) -> u64 {
        let first = match after {
            None => 0,
            Some(t) => writes.partition_point(|(invoke, _)| *invoke <= t),
        };
        writes.get(first).map_or(u64::MAX, |(_, min_ret)| *min_ret)
    }

    /// The moments at which the key may have held `value` (`None`:
    /// absent); of the many "absent" intervals only those meeting `within`.
    fn intervals(&self, value: Option<&str>, within: Interval) -> Option<Vec<Interval>> {
        match value {
            Some(value) => {
                // A value no write produced: the linearizability check's job.
                let (invoke, took_effect) = *self.by_value.get(value)?;
                let end = match took_effect {
                    Some(ret) => Self::bound(&self.acked, Some(ret)),
                    None => u64::MAX,
                };
                Some(vec![(invoke, end)])
            }
            None => Some(
                self.absent
                    .iter()
                    .copied()
                    .filter(|(lo, hi)| *lo <= within.1 && *hi >= within.0)
                    .collect(),
            ),
        }
    }

    /// Computes [`KeyWrites::absent`] once the acknowledged writes are
    /// sorted.
    fn index_absent(&mut self) {
        let mut absent = vec![(0, Self::bound(&self.acked_values, None))];
        for delete in &self.deletes {
            let end = match delete.complete_us {
                Some(ret) => Self::bound(&self.acked_values, Some(ret)),
                None => u64::MAX,
            };
            absent.push((delete.invoke_us, end));
        }
        self.absent = absent;
    }
}

/// Sorts `(invoke, return)` pairs by invocation and replaces each return
/// with the minimum return from there on.
fn suffix_min(writes: &mut [(u64, u64)]) {
    writes.sort_unstable();
    let mut min = u64::MAX;
    for (_, ret) in writes.iter_mut().rev() {
        min = min.min(*ret);
        *ret = min;
    }
}

/// The earliest return of an acknowledged read of each (key, value).
fn first_reads(ops: &[Op]) -> HashMap<(&str, &str), u64> {
    let mut first: HashMap<(&str, &str), u64> = HashMap::new();
    for op in ops.iter().filter(|op| op.outcome == Outcome::Ok) {
        let Some(ret) = op.complete_us else { continue };
        let seen: Vec<(&str, &str)> = match &op.kind {
            OpKind::Get {
                key,
                result: Some(Some(value)),
            } => vec![(key.as_str(), value.as_str())],
            OpKind::Range {
                result: Some(pairs), ..
            } => pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
            _ => Vec::new(),
        };
        for pair in seen {
            let at = first.entry(pair).or_insert(ret);
            *at = (*at).min(ret);
        }
    }
    first
}

fn index(ops: &[Op]) -> HashMap<&str, KeyWrites<'_>> {
    let first_read = first_reads(ops);
    let mut keys: HashMap<&str, KeyWrites<'_>> = HashMap::new();
    for op in ops.iter().filter(|op| op.outcome != Outcome::Fail) {
        for (key, value) in op.kind.writes() {
            let entry = keys.entry(key).or_default();
            // When the write certainly had taken effect (a write whose
            // value was read did, before that read returned).
            let took_effect = match (op.outcome, value) {
                (Outcome::Ok, _) => op.complete_us,
                (_, Some(value)) => first_read.get(&(key, value)).copied(),
                (_, None) => None,
            };
            match value {
                Some(value) => {
                    entry.by_value.insert(value, (op.invoke_us, took_effect));
                }
                None => entry.deletes.push(op),
            }
            if let Some(ret) = took_effect {
                entry.acked.push((op.invoke_us, ret));
                if value.is_some() {
                    entry.acked_values.push((op.invoke_us, ret));
                }
            }
        }
    }
    for entry in keys.values_mut() {
        suffix_min(&mut entry.acked);
        suffix_min(&mut entry.acked_values);
        entry.index_absent();
    }
    keys
}

/// Checks every acknowledged Range of two or more written keys.
pub fn check(ops: &[Op]) -> Verdict {
    let writes = index(ops);
    let mut ranges = 0u64;
    for read in ops.iter().filter(|op| op.outcome == Outcome::Ok) {
        let (
            OpKind::Range {
                start,
                end,
                result: Some(pairs),
            },
            Some(ret),
        ) = (&read.kind, read.complete_us)
        else {
            continue;
        };
        let seen: HashMap<&str, &str> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut keys: Vec<(&str, Vec<Interval>)> = writes
            .iter()
            .filter(|(key, _)| in_range(key, start, end))
            .filter_map(|(key, w)| Some((*key, w.intervals(seen.get(key).copied(), (read.invoke_us, ret))?)))
            .collect();
        if keys.len() < 2 {
            continue;
        }
        keys.sort_by(|a, b| a.0.cmp(b.0));
        ranges += 1;
        if moment(&keys, (read.invoke_us, ret)).is_none() {
            let detail: Vec<String> = keys
                .iter()
                .map(|(key, intervals)| {
                    let near: Vec<String> = intervals
                        .iter()
                        .map(|(lo, hi)| {
                            let hi = if *hi == u64::MAX {
                                "..".to_owned()
                            } else {
                                format!("..{hi}")
                            };
                            format!("{lo}{hi}")
                        })
                        .collect();
                    format!("{key}={:?} at [{}]", seen.get(key), near.join(", "))
                })
                .collect();
            return Verdict::Fail(format!(
                "range op {} [{start}, {end}) over [{}us..{ret}us] is no snapshot: no single moment \
                 explains all it read; each key's value was possible only at (us): {}",
                read.id,
                read.invoke_us,
                detail.join("; ")
            ));
        }
    }
    Verdict::Pass(format!("{ranges} multi-key ranges are single snapshots"))
}

/// The earliest moment in `within` that lies in one interval of every key.
/// If the intersection is not empty, its earliest point is `within`'s start
/// or some interval's start, so only those are tried.
fn moment(keys: &[(&str, Vec<Interval>)], within: Interval) -> Option<u64> {
    let (lo, hi) = within;
    let contains = |t: u64| {
        keys.iter()
            .all(|(_, intervals)| intervals.iter().any(|(a, b)| *a <= t && t <= *b))
    };
    std::iter::once(lo)
        .chain(keys.iter().flat_map(|(_, intervals)| intervals.iter().map(|(a, _)| *a)))
        .filter(|t| lo <= *t && *t <= hi)
        .filter(|t| contains(*t))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::H;

    #[test]
    fn a_range_mixing_an_old_and_a_newer_value_is_caught() {
        // The range spans both writes: a still old, b already new, though
        // b was written after a was overwritten. Each key alone is fine.
        let h = H::default()
            .put("a", "1", 0, 10)
            .range("a", "c", &[("a", "1"), ("b", "3")], 20, 200)
            .put("a", "2", 30, 40)
            .put("b", "3", 50, 60)
            .ops
            .clone();
        assert!(crate::check::linearizability::check(&h).is_pass());
        let verdict = check(&h);
        let Verdict::Fail(text) = &verdict else {
            panic!("expected a failure: {verdict}")
        };
        assert!(text.contains("range op 2"), "{text}");
    }

    #[test]
    fn a_consistent_snapshot_passes() {
        // Before both writes, after both, or between: each is one moment.
        for pairs in [vec![("a", "1")], vec![("a", "2")], vec![("a", "2"), ("b", "3")]] {
            let h = H::default()
                .put("a", "1", 0, 10)
                .range("a", "c", &pairs, 20, 200)
                .put("a", "2", 30, 40)
                .put("b", "3", 50, 60)
                .ops
                .clone();
            assert!(check(&h).is_pass(), "{pairs:?}: {}", check(&h));
        }
    }

    #[test]
    fn concurrent_writes_may_be_seen_in_either_order() {
        // a=2 and b=3 overlap: a range may see b=3 with the old a.
        let h = H::default()
            .put("a", "1", 0, 10)
            .range("a", "c", &[("a", "1"), ("b", "3")], 20, 200)
            .put("a", "2", 30, 70)
            .put("b", "3", 40, 60)
            .ops
            .clone();
        assert!(check(&h).is_pass(), "{}", check(&h));
    }

    #[test]
    fn absent_is_explained_by_the_initial_state_or_a_delete() {
        // a absent with b=3: a delete of a kept it absent until a=4 landed.
        let h = |put_a4: (u64, u64)| {
            H::default()
                .put("a", "1", 0, 10)
                .delete("a", 20, 30)
                .range("a", "c", &[("b", "3")], 0, 200)
                .put("a", "4", put_a4.0, put_a4.1)
                .put("b", "3", 50, 60)
                .ops
                .clone()
        };
        assert!(check(&h((100, 110))).is_pass(), "{}", check(&h((100, 110))));
        // a=4 was acknowledged before b=3 was even invoked: no moment has a
        // absent and b=3.
        assert!(check(&h((40, 45))).is_fail(), "{}", check(&h((40, 45))));
    }

    #[test]
    fn an_unknown_write_bounds_nothing() {
        // A timed-out overwrite of a may never have happened.
        let h = H::default()
            .put("a", "1", 0, 10)
            .put_unknown("a", "2", 30)
            .put("b", "3", 50, 60)
            .range("a", "c", &[("a", "1"), ("b", "3")], 70, 80)
            .ops
            .clone();
        assert!(check(&h).is_pass(), "{}", check(&h));
    }

    #[test]
    fn an_unknown_write_that_was_read_bounds_like_an_acknowledged_one() {
        // a=2 timed out but a read saw it by 45: a range seeing a=1 with
        // b=3 (written from 50 on) mixes two moments.
        let h = H::default()
            .put("a", "1", 0, 10)
            .range("a", "c", &[("a", "1"), ("b", "3")], 20, 200)
            .put_unknown("a", "2", 30)
            .get("a", Some("2"), 35, 45)
            .put("b", "3", 50, 60)
            .ops
            .clone();
        assert!(check(&h).is_fail(), "{}", check(&h));
    }
}
