//! The checkers, one invariant per module. Each is a pure function of the
//! history (and, for some, of a final state read at the end), unit-tested
//! on hand-made histories, including ones it must reject.
//!
//! - [`linearizability`]: per key, the reads and writes fit a single-register
//!   order consistent with real time.
//! - [`atomicity`]: no Range saw one key of a BatchPut and, on another key of
//!   the same batch, a value older than the batch.
//! - [`snapshot`]: each Range read all its keys at one single moment.
//! - [`durability`]: every acknowledged write (or a later one) is visible at
//!   the end.
//! - [`convergence`]: every replica ends at the same applied index and digest.
//! - [`availability`]: after a leader is killed, a write succeeds within a
//!   bound.

pub mod atomicity;
pub mod availability;
pub mod convergence;
pub mod durability;
pub mod linearizability;
pub mod snapshot;

/// What a checker concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The invariant holds; a short summary of what was checked.
    Pass(String),
    /// The invariant is broken; what breaks it.
    Fail(String),
    /// The checker ran out of budget before deciding; why. A run with an
    /// inconclusive check fails: a check that gives up proves nothing.
    Inconclusive(String),
}

impl Verdict {
    /// Whether the invariant is known to hold.
    pub fn is_pass(&self) -> bool {
        matches!(self, Verdict::Pass(_))
    }

    /// Whether the invariant is known to be broken.
    pub fn is_fail(&self) -> bool {
        matches!(self, Verdict::Fail(_))
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Pass(s) => write!(f, "PASS: {s}"),
            Verdict::Fail(s) => write!(f, "FAIL: {s}"),
            Verdict::Inconclusive(s) => write!(f, "INCONCLUSIVE: {s}"),
        }
    }
}

/// Whether `key` lies in the range `[start, end)`.
pub fn in_range(key: &str, start: &str, end: &str) -> bool {
    key >= start && (end.is_empty() || key < end)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Builders of hand-made histories.

    use crate::history::{Op, OpKind, Outcome};

    /// A history builder: each call adds one op with the given times (µs).
    #[derive(Default)]
    pub struct H {
        pub ops: Vec<Op>,
    }

    impl H {
        fn push(&mut self, kind: OpKind, invoke: u64, complete: Option<u64>, outcome: Outcome) -> &mut Self {
            let id = self.ops.len() as u64 + 1;
            self.ops.push(Op {
                id,
                client: id,
                kind,
                invoke_us: invoke,
                complete_us: complete,
                outcome,
                error: None,
            });
            self
        }

        pub fn put(&mut self, key: &str, value: &str, invoke: u64, complete: u64) -> &mut Self {
            let kind = OpKind::Put {
                key: key.into(),
                value: value.into(),
            };
            self.push(kind, invoke, Some(complete), Outcome::Ok)
        }

        pub fn put_unknown(&mut self, key: &str, value: &str, invoke: u64) -> &mut Self {
            let kind = OpKind::Put {
                key: key.into(),
                value: value.into(),
            };
            self.push(kind, invoke, None, Outcome::Unknown)
        }

        pub fn put_failed(&mut self, key: &str, value: &str, invoke: u64, complete: u64) -> &mut Self {
            let kind = OpKind::Put {
                key: key.into(),
                value: value.into(),
            };
            self.push(kind, invoke, Some(complete), Outcome::Fail)
        }

        pub fn delete_unknown(&mut self, key: &str, invoke: u64) -> &mut Self {
            self.push(OpKind::Delete { key: key.into() }, invoke, None, Outcome::Unknown)
        }

        pub fn delete(&mut self, key: &str, invoke: u64, complete: u64) -> &mut Self {
            self.push(OpKind::Delete { key: key.into() }, invoke, Some(complete), Outcome::Ok)
        }

        pub fn batch(&mut self, keys: &[&str], value: &str, invoke: u64, complete: Option<u64>) -> &mut Self {
            let kind = OpKind::Batch {
                keys: keys.iter().map(|k| k.to_string()).collect(),
                value: value.into(),
            };
            let outcome = if complete.is_some() {
                Outcome::Ok
            } else {
                Outcome::Unknown
            };
            self.push(kind, invoke, complete, outcome)
        }

        pub fn get(&mut self, key: &str, result: Option<&str>, invoke: u64, complete: u64) -> &mut Self {
            let kind = OpKind::Get {
                key: key.into(),
                result: Some(result.map(str::to_owned)),
            };
            self.push(kind, invoke, Some(complete), Outcome::Ok)
        }

        pub fn range(
            &mut self,
            start: &str,
            end: &str,
            pairs: &[(&str, &str)],
            invoke: u64,
            complete: u64,
        ) -> &mut Self {
            let kind = OpKind::Range {
                start: start.into(),
                end: end.into(),
                result: Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            };
            self.push(kind, invoke, Some(complete), Outcome::Ok)
        }
    }
}

#[cfg(test)]
mod generated {
    //! Histories generated from a real atomic store must pass every
    //! history checker: a checker that flags a valid history is broken.

    use std::collections::BTreeMap;

    use super::*;
    use crate::history::{Op, OpKind, Outcome};

    /// A history of `ops` operations over `keys` keys with overlapping
    /// intervals, each op taking effect atomically at its own moment
    /// inside its interval (or, for an unknown write, maybe never).
    fn linearizable_history(seed: u64, ops: usize, keys: u64) -> Vec<Op> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut state: BTreeMap<String, String> = BTreeMap::new();
        let mut history = Vec::new();
        for i in 0..ops as u64 {
            let at = 100 + i * 10;
            let invoke = at - rng.u64(0..=50);
            let complete = at + rng.u64(0..=50);
            let key = format!("k{}", rng.u64(0..keys));
            let value = format!("v{i}");
            let outcome = match rng.u32(0..20) {
                0 => Outcome::Fail,
                1 => Outcome::Unknown,
                _ => Outcome::Ok,
            };
            let kind = match rng.u32(0..5) {
                0 => OpKind::Put { key, value },
                1 => OpKind::Delete { key },
                2 => OpKind::Batch {
                    keys: vec!["k0".into(), format!("k{}", rng.u64(1..keys))],
                    value,
                },
                3 => OpKind::Get {
                    result: Some(state.get(&key).cloned()),
                    key,
                },
                _ => OpKind::Range {
                    start: "k0".into(),
                    end: "k~".into(),
                    result: Some(state.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
                },
            };
            let outcome = if kind.is_write() { outcome } else { Outcome::Ok };
            let applied = outcome == Outcome::Ok || (outcome == Outcome::Unknown && rng.bool());
            if kind.is_write() && applied {
                for (k, v) in kind.writes() {
                    match v {
                        Some(v) => state.insert(k.to_owned(), v.to_owned()),
                        None => state.remove(k),
                    };
                }
            }
            history.push(Op {
                id: 0,
                client: i,
                kind,
                invoke_us: invoke,
                complete_us: (outcome != Outcome::Unknown).then_some(complete),
                outcome,
                error: None,
            });
        }
        history.sort_by_key(|op| (op.invoke_us, op.client));
        for (id, op) in history.iter_mut().enumerate() {
            op.id = id as u64 + 1;
        }
        history
    }

    #[test]
    fn generated_linearizable_histories_pass_every_checker() {
        // Seeds 1..=40, or only CHAOS_CHECK_SEED when set (to rerun one).
        let seeds: Vec<u64> = match std::env::var("CHAOS_CHECK_SEED").ok().and_then(|s| s.parse().ok()) {
            Some(seed) => vec![seed],
            None => (1..=40).collect(),
        };
        for seed in seeds {
            let ops = linearizable_history(seed, 400, 4);
            for (name, verdict) in [
                ("linearizability", linearizability::check(&ops)),
                ("snapshot", snapshot::check(&ops)),
                ("atomicity", atomicity::check(&ops)),
            ] {
                assert!(
                    verdict.is_pass(),
                    "seed {seed} (rerun: CHAOS_CHECK_SEED={seed}): {name}: {verdict}"
                );
            }
        }
    }
}
