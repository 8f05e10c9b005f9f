//! BatchPut atomicity, as seen by Range reads.
//!
//! The check: for every acknowledged Range `R` and every BatchPut `B` (not
//! failed) with two or more keys in `R`'s bounds, if `R` returned `B`'s
//! value on one key `k1` of `B`, then on every other key `k2` of `B` it must
//! not return a value that certainly precedes `B`: the value of a write that
//! returned before `B` was invoked, or "absent" when every non-failed delete
//! of `k2` returned before `B` was invoked (the initial absence precedes
//! everything).
//!
//! What it proves: no Range observed part of a batch together with a state
//! of another batch key from before the batch (a torn batch), whenever
//! real time alone orders the two. It is sound (a flagged read is a real
//! violation: `B` must be ordered before `R` since `R` saw it, and the
//! older write before `B`, so `k2` must hold `B`'s or a later value) but not
//! complete: a torn read involving writes concurrent with `B` is not
//! flagged (the per-key linearizability check sees each key alone).

use std::collections::HashMap;

use super::{in_range, Verdict};
use crate::history::{Op, OpKind, Outcome};

/// Checks every Range against every batch it covers.
pub fn check(ops: &[Op]) -> Verdict {
    // Who wrote each (key, value), for unique values.
    let mut writer: HashMap<(&str, &str), &Op> = HashMap::new();
    // The latest return of a delete of each key (an unknown one: never).
    let mut deletes_returned_max: HashMap<&str, u64> = HashMap::new();
    for op in ops.iter().filter(|op| op.outcome != Outcome::Fail) {
        for (key, value) in op.kind.writes() {
            match value {
                Some(value) => {
                    writer.insert((key, value), op);
                }
                None => {
                    let returned = op.complete_us.unwrap_or(u64::MAX);
                    let latest = deletes_returned_max.entry(key).or_insert(returned);
                    *latest = (*latest).max(returned);
                }
            }
        }
    }
    // The batches by value (unique): a range can only have seen the
    // batches whose value it returned, so only those are looked at.
    let batches: HashMap<&str, (&Op, &[String], &str)> = ops
        .iter()
        .filter(|op| op.outcome != Outcome::Fail)
        .filter_map(|op| match &op.kind {
            OpKind::Batch { keys, value } => Some((value.as_str(), (op, keys.as_slice(), value.as_str()))),
            _ => None,
        })
        .collect();
    let mut pairs_checked = 0u64;
    for read in ops.iter().filter(|op| op.outcome == Outcome::Ok) {
        let OpKind::Range {
            start,
            end,
            result: Some(pairs),
        } = &read.kind
        else {
            continue;
        };
        let seen: HashMap<&str, &str> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut values: Vec<&str> = seen.values().copied().collect();
        values.sort_unstable();
        values.dedup();
        for (batch, keys, value) in values.iter().filter_map(|v| batches.get(v)) {
            let covered: Vec<&str> = keys
                .iter()
                .map(String::as_str)
                .filter(|k| in_range(k, start, end))
                .collect();
            if covered.len() < 2 || !covered.iter().any(|k| seen.get(k) == Some(value)) {
                continue;
            }
            pairs_checked += 1;
            for key in &covered {
                let precedes_batch = |op: &Op| op.complete_us.is_some_and(|c| c < batch.invoke_us);
                let older = match seen.get(key) {
                    Some(v) if v == value => false,
                    Some(v) => writer.get(&(*key, *v)).is_some_and(|w| precedes_batch(w)),
                    None => deletes_returned_max
                        .get(key)
                        .is_none_or(|latest| *latest < batch.invoke_us),
                };
                if older {
                    return Verdict::Fail(format!(
                        "range op {} [{}, {}) saw batch op {} (value {value:?}) on some keys but {key} = {:?}, \
                         a state from before the batch was invoked",
                        read.id,
                        start,
                        end,
                        batch.id,
                        seen.get(key)
                    ));
                }
            }
        }
    }
    Verdict::Pass(format!("{pairs_checked} (range, batch) pairs checked"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::H;

    #[test]
    fn a_whole_batch_in_a_range_passes() {
        // The normal case: the range sees every key of the batch.
        let h = H::default()
            .put("b", "old", 0, 10)
            .batch(&["a", "b"], "x", 20, Some(30))
            .range("a", "c", &[("a", "x"), ("b", "x")], 40, 50)
            .ops
            .clone();
        assert!(matches!(check(&h), Verdict::Pass(_)), "{:?}", check(&h));
    }

    #[test]
    fn a_torn_batch_is_rejected() {
        // One key new, the other still holding a value from before the batch.
        let h = H::default()
            .put("b", "old", 0, 10)
            .batch(&["a", "b"], "x", 20, Some(30))
            .range("a", "c", &[("a", "x"), ("b", "old")], 40, 50)
            .ops
            .clone();
        assert!(check(&h).is_fail(), "{:?}", check(&h));
        // The initial absence precedes the batch too.
        let absent = H::default()
            .batch(&["a", "b"], "x", 20, None)
            .range("a", "c", &[("a", "x")], 40, 50)
            .ops
            .clone();
        assert!(check(&absent).is_fail(), "{:?}", check(&absent));
    }

    #[test]
    fn later_or_concurrent_writes_are_not_torn() {
        // A key overwritten after (or during) the batch may differ.
        let h = H::default()
            .batch(&["a", "b"], "x", 20, Some(30))
            .put("b", "later", 25, 35)
            .delete("a", 26, 36)
            .range("a", "c", &[("b", "x")], 40, 50)
            .range("a", "c", &[("a", "x"), ("b", "later")], 40, 50)
            .ops
            .clone();
        assert!(matches!(check(&h), Verdict::Pass(_)), "{:?}", check(&h));
    }
}
