//! Durability: every acknowledged write, or a later write to the same key,
//! is visible at the end, after every fault healed and every node
//! restarted.
//!
//! For each key, the final value (read linearizably at the end) must come
//! from a write that is not certainly older than any acknowledged write of
//! that key. "Certainly older" means it returned before the acknowledged
//! write was invoked; for "absent", every non-failed delete of the key
//! returned before (the initial absence is older than everything). A final
//! value that no write produced is a failure too.

use std::collections::{BTreeMap, HashMap};

use super::Verdict;
use crate::history::{Op, Outcome};

/// Checks `final_state` (key -> value, absent keys missing) against `ops`.
pub fn check(ops: &[Op], final_state: &BTreeMap<String, String>) -> Verdict {
    let mut by_key: HashMap<&str, Vec<(&Op, Option<&str>)>> = HashMap::new();
    for op in ops.iter().filter(|op| op.outcome != Outcome::Fail) {
        for (key, value) in op.kind.writes() {
            by_key.entry(key).or_default().push((op, value));
        }
    }
    let mut acknowledged = 0u64;
    for (key, writes) in &by_key {
        let last = final_state.get(*key).map(String::as_str);
        // The writes that may have produced the final value.
        let sources: Vec<&Op> = writes.iter().filter(|(_, v)| *v == last).map(|(op, _)| *op).collect();
        if last.is_some() && sources.is_empty() {
            return Verdict::Fail(format!("key {key} ends as {last:?}, which no write produced"));
        }
        // The latest time any possible source returned: unknown writes
        // never return (nothing can be proven lost); the initial absence
        // returned before everything (-1).
        let latest_source: i128 = sources
            .iter()
            .map(|op| op.complete_us.map_or(i128::MAX, i128::from))
            .chain(last.is_none().then_some(-1))
            .max()
            .unwrap_or(-1);
        for (op, value) in writes.iter().filter(|(op, _)| op.outcome == Outcome::Ok) {
            acknowledged += 1;
            // An acked write is a source of its own value, so `lost` implies
            // the final value differs from it.
            if latest_source < i128::from(op.invoke_us) {
                return Verdict::Fail(format!(
                    "acknowledged write op {} ({key} = {value:?}, invoked at {}us) is lost: \
                     the key ends as {last:?}, written by ops that returned by {latest_source}us",
                    op.id, op.invoke_us,
                ));
            }
        }
    }
    for key in final_state.keys() {
        if !by_key.contains_key(key.as_str()) {
            return Verdict::Fail(format!("key {key} exists at the end but was never written"));
        }
    }
    Verdict::Pass(format!("{acknowledged} acknowledged writes over {} keys", by_key.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::H;

    fn state(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_last_acknowledged_write_survives() {
        let h = H::default().put("a", "1", 0, 10).put("a", "2", 20, 30).ops.clone();
        assert!(matches!(check(&h, &state(&[("a", "2")])), Verdict::Pass(_)));
    }

    #[test]
    fn a_lost_acknowledged_write_is_rejected() {
        // The end state rolled back to a value older than an acked write.
        let h = H::default().put("a", "1", 0, 10).put("a", "2", 20, 30).ops.clone();
        assert!(check(&h, &state(&[("a", "1")])).is_fail());
        // Or the key vanished although no delete ever ran.
        assert!(check(&h, &state(&[])).is_fail());
    }

    #[test]
    fn a_concurrent_or_unknown_write_may_win() {
        // Overlapping writes may end in either order; an unknown one may land.
        let h = H::default().put("a", "1", 0, 30).put("a", "2", 10, 20).ops.clone();
        assert!(matches!(check(&h, &state(&[("a", "1")])), Verdict::Pass(_)));
        let u = H::default().put("a", "1", 0, 10).put_unknown("a", "2", 5).ops.clone();
        assert!(matches!(check(&u, &state(&[("a", "2")])), Verdict::Pass(_)));
        let d = H::default().put("a", "1", 0, 10).delete("a", 20, 30).ops.clone();
        assert!(matches!(check(&d, &state(&[])), Verdict::Pass(_)));
    }

    #[test]
    fn values_nobody_wrote_are_rejected() {
        // Corruption or a failed write that landed.
        let h = H::default()
            .put("a", "1", 0, 10)
            .put_failed("a", "2", 20, 30)
            .ops
            .clone();
        assert!(check(&h, &state(&[("a", "2")])).is_fail());
        assert!(check(&h, &state(&[("a", "1"), ("zz", "1")])).is_fail());
    }

    #[test]
    fn batches_are_durable_on_every_key() {
        let h = H::default().batch(&["a", "b"], "x", 0, Some(10)).ops.clone();
        assert!(matches!(check(&h, &state(&[("a", "x"), ("b", "x")])), Verdict::Pass(_)));
        assert!(check(&h, &state(&[("a", "x")])).is_fail());
    }
}
