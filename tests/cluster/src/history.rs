//! The history of a run: every operation with when it was invoked, when it
//! returned, and how it ended, written as JSON lines.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Acknowledged (a read: with its result).
    Ok,
    /// Certainly not applied (a read: no result, no effect).
    Fail,
    /// A write that may or may not have been applied, now or later.
    Unknown,
}

/// What an operation did, with a read's result when it succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "lowercase")]
pub enum OpKind {
    /// Put(key, value).
    Put {
        /// The key.
        key: String,
        /// The value, unique per write.
        value: String,
    },
    /// Delete(key).
    Delete {
        /// The key.
        key: String,
    },
    /// BatchPut: every key set to `value` atomically.
    Batch {
        /// The keys (distinct).
        keys: Vec<String>,
        /// The value written to each key, unique per write.
        value: String,
    },
    /// A linearizable Get; `result` is `Some(found value)` when it returned.
    Get {
        /// The key.
        key: String,
        /// `None` until it returned; `Some(None)` for a missing key.
        result: Option<Option<String>>,
    },
    /// A linearizable single-page Range `[start, end)`.
    Range {
        /// First key, inclusive.
        start: String,
        /// End key, exclusive.
        end: String,
        /// The pairs read, in key order, once it returned.
        result: Option<Vec<(String, String)>>,
    },
}

impl OpKind {
    /// Whether this operation writes.
    pub fn is_write(&self) -> bool {
        matches!(self, OpKind::Put { .. } | OpKind::Delete { .. } | OpKind::Batch { .. })
    }

    /// The keys written and the value each gets (`None`: deleted).
    pub fn writes(&self) -> Vec<(&str, Option<&str>)> {
        match self {
            OpKind::Put { key, value } => vec![(key.as_str(), Some(value.as_str()))],
            OpKind::Delete { key } => vec![(key.as_str(), None)],
            OpKind::Batch { keys, value } => keys.iter().map(|k| (k.as_str(), Some(value.as_str()))).collect(),
            OpKind::Get { .. } | OpKind::Range { .. } => Vec::new(),
        }
    }
}

/// One operation of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Unique in the history, in invocation order.
    pub id: u64,
    /// The workload client that ran it.
    pub client: u64,
    /// What it did.
    #[serde(flatten)]
    pub kind: OpKind,
    /// When it was invoked, in µs since the history began.
    pub invoke_us: u64,
    /// When it returned, in µs; `None` for an unknown outcome (it may take
    /// effect at any time after `invoke_us`).
    pub complete_us: Option<u64>,
    /// How it ended.
    pub outcome: Outcome,
    /// The client's error, when it did not succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Collects operations from concurrent clients.
#[derive(Debug)]
pub struct Recorder {
    started: Instant,
    ops: Mutex<Vec<Op>>,
    next_id: Mutex<u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            started: Instant::now(),
            ops: Mutex::new(Vec::new()),
            next_id: Mutex::new(0),
        }
    }
}

impl Recorder {
    /// Time since the history began.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Notes an invocation: returns its id and time, in µs.
    pub fn invoke(&self) -> (u64, u64) {
        let mut next = self.next_id.lock().expect("recorder lock poisoned");
        *next += 1;
        (*next, micros(self.now()))
    }

    /// Records a finished operation; `Unknown` outcomes get no return time.
    pub fn complete(
        &self,
        id: u64,
        client: u64,
        kind: OpKind,
        invoke_us: u64,
        outcome: Outcome,
        error: Option<String>,
    ) {
        let complete_us = (outcome != Outcome::Unknown).then(|| micros(self.now()));
        let op = Op {
            id,
            client,
            kind,
            invoke_us,
            complete_us,
            outcome,
            error,
        };
        self.ops.lock().expect("recorder lock poisoned").push(op);
    }

    /// Every operation recorded so far, in invocation order.
    pub fn ops(&self) -> Vec<Op> {
        let mut ops = self.ops.lock().expect("recorder lock poisoned").clone();
        ops.sort_by_key(|op| op.id);
        ops
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Writes `ops` to `path`, one JSON object per line.
pub fn write_jsonl(path: &Path, ops: &[Op]) -> std::io::Result<()> {
    let mut text = String::new();
    for op in ops {
        text.push_str(&serde_json::to_string(op).map_err(std::io::Error::other)?);
        text.push('\n');
    }
    std::fs::write(path, text)
}

/// Reads a history written by [`write_jsonl`].
pub fn read_jsonl(path: &Path) -> std::io::Result<Vec<Op>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_survives_a_round_trip_through_json_lines() {
        // The kept history file must be readable by the checkers again.
        let recorder = Recorder::default();
        let (id, at) = recorder.invoke();
        recorder.complete(
            id,
            1,
            OpKind::Batch {
                keys: vec!["k1".into(), "k2".into()],
                value: "c1-1".into(),
            },
            at,
            Outcome::Unknown,
            Some("timed out".into()),
        );
        let (id, at) = recorder.invoke();
        recorder.complete(
            id,
            2,
            OpKind::Range {
                start: "k0".into(),
                end: "k9".into(),
                result: Some(vec![("k1".into(), "c1-1".into())]),
            },
            at,
            Outcome::Ok,
            None,
        );
        let dir = std::env::temp_dir().join(format!("chaos-history-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("history.jsonl");
        write_jsonl(&path, &recorder.ops()).expect("write");
        let back = read_jsonl(&path).expect("read");
        assert_eq!(back, recorder.ops());
        assert_eq!(back[0].complete_us, None);
        std::fs::remove_dir_all(&dir).ok();
    }
}
