//! The checkers, one invariant per module. Each is a pure function of the
//! history (and, for some, of a final state read at the end), unit-tested
//! on hand-made histories, including ones it must reject.
//!
//! - [`linearizability`]: per key, the reads and writes fit a single-register
//!   order consistent with real time.
//! - [`atomicity`]: no Range saw one key of a BatchPut and, on another key of
//!   the same batch, a value older than the batch.
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
