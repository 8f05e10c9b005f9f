//! Concurrent clients doing colliding operations over a small key set, each
//! recorded in the history.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cluster_client::{Client, Consistency};
use tokio::task::JoinSet;

use crate::check::Verdict;
use crate::history::{OpKind, Outcome, Recorder};

/// Workload shape.
#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    /// Concurrent clients, each with its own client id.
    pub clients: u64,
    /// Keys `k0..k{keys-1}`; few, so operations collide.
    pub keys: u64,
    /// Deadline of one operation, retries included; a write past it is
    /// unknown.
    pub request_timeout: Duration,
    /// Deadline of one attempt.
    pub attempt_timeout: Duration,
    /// Pause between two operations of a client, at most (uniform from 0).
    pub think_ms_max: u64,
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        WorkloadOptions {
            clients: 4,
            keys: 8,
            request_timeout: Duration::from_millis(1500),
            attempt_timeout: Duration::from_millis(1000),
            think_ms_max: 10,
        }
    }
}

/// The key named by index `i`.
pub fn key(i: u64) -> String {
    format!("k{i}")
}

/// A running workload; stop it with [`Workload::stop`].
#[derive(Debug)]
pub struct Workload {
    stop: Arc<AtomicBool>,
    tasks: JoinSet<()>,
    /// Client tasks started.
    clients: u64,
}

impl Workload {
    /// Client tasks started.
    pub fn clients(&self) -> u64 {
        self.clients
    }

    /// Starts `options.clients` clients of `endpoints`, recording into
    /// `recorder`. Client `c` draws its operations from `seed + c`.
    pub fn start(
        endpoints: &[String],
        options: &WorkloadOptions,
        seed: u64,
        recorder: Arc<Recorder>,
    ) -> anyhow::Result<Workload> {
        // Keys past k9 would sort inside the ranges' "k~" end wrongly.
        assert!((2..=10).contains(&options.keys), "keys must be 2..=10");
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        for c in 1..=options.clients {
            let client = Client::builder(endpoints.to_vec())
                .request_timeout(options.request_timeout)
                .attempt_timeout(options.attempt_timeout)
                .connect_timeout(Duration::from_millis(300))
                .backoff_max(Duration::from_millis(200))
                .build()?;
            let rng = fastrand::Rng::with_seed(seed.wrapping_add(c));
            let (stop, recorder, options) = (stop.clone(), recorder.clone(), options.clone());
            tasks.spawn(run_client(c, client, rng, options, stop, recorder));
        }
        Ok(Workload {
            stop,
            tasks,
            clients: options.clients,
        })
    }

    /// Stops every client and waits for their last operation (bounded by
    /// [`WORKLOAD_STOP_WAIT`]); returns how each client task that did not
    /// end cleanly ended (a panic fails the run: see [`verdict`]).
    pub async fn stop(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        let mut failures = Vec::new();
        let wait = async {
            while let Some(joined) = self.tasks.join_next().await {
                if let Err(error) = joined {
                    failures.push(describe_join_error(error));
                }
            }
        };
        let timed_out = tokio::time::timeout(WORKLOAD_STOP_WAIT, wait).await.is_err();
        if timed_out {
            // A client stuck past every deadline: its op stays unrecorded,
            // which only removes information (reads) or an unknown write.
            self.tasks.abort_all();
            while let Some(joined) = self.tasks.join_next().await {
                match joined {
                    Err(error) if error.is_panic() => failures.push(describe_join_error(error)),
                    _ => eprintln!("workload: a client was still running after {WORKLOAD_STOP_WAIT:?}; aborted"),
                }
            }
        }
        failures
    }
}

/// How long [`Workload::stop`] waits for the clients' last operations: the
/// request deadline (1.5 s by default) plus a wide margin.
pub const WORKLOAD_STOP_WAIT: Duration = Duration::from_secs(10);

fn describe_join_error(error: tokio::task::JoinError) -> String {
    if !error.is_panic() {
        return format!("client task ended: {error}");
    }
    let panic = error.into_panic();
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".to_owned());
    format!("client task panicked: {message}")
}

/// The workload's own invariant: every client task ended cleanly. A panic
/// in a client (an assertion about a response, such as a paged range)
/// is a failed run, not a silently shorter history.
pub fn verdict(clients: u64, failures: &[String]) -> Verdict {
    if failures.is_empty() {
        Verdict::Pass(format!("{clients} clients ended cleanly"))
    } else {
        Verdict::Fail(format!(
            "{} of {clients} clients: {}",
            failures.len(),
            failures.join("; ")
        ))
    }
}

async fn run_client(
    client_index: u64,
    client: Client,
    mut rng: fastrand::Rng,
    options: WorkloadOptions,
    stop: Arc<AtomicBool>,
    recorder: Arc<Recorder>,
) {
    let mut counter = 0u64;
    // Bounded by the stop flag; the hard cap keeps a runaway loop finite.
    const OPS_PER_CLIENT_MAX: u64 = 10_000_000;
    for _ in 0..OPS_PER_CLIENT_MAX {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        counter += 1;
        let value = value(client_index, counter);
        let kind = choose(&mut rng, options.keys, value);
        let (id, invoke_us) = recorder.invoke();
        let (kind, outcome, error) = execute(&client, kind).await;
        recorder.complete(id, client_index, kind, invoke_us, outcome, error);
        if options.think_ms_max > 0 {
            tokio::time::sleep(Duration::from_millis(rng.u64(0..=options.think_ms_max))).await;
        }
    }
}

/// Bytes of every third value written: padded to the size from which the
/// cluster's nodes keep values in the engine's blob files.
pub const PADDED_VALUE_BYTES: usize = 64;

/// The value of a client's `counter`-th write: unique, and every third one
/// padded to [`PADDED_VALUE_BYTES`].
fn value(client_index: u64, counter: u64) -> String {
    let value = format!("c{client_index}-{counter}");
    if counter.is_multiple_of(3) {
        format!("{value:.<PADDED_VALUE_BYTES$}")
    } else {
        value
    }
}

/// Picks the next operation: 30% Put, 30% Get, 10% Delete, 15% BatchPut of
/// 2-3 keys, 15% Range.
fn choose(rng: &mut fastrand::Rng, keys: u64, value: String) -> OpKind {
    let k = key(rng.u64(0..keys));
    match rng.u32(0..100) {
        0..30 => OpKind::Put { key: k, value },
        30..60 => OpKind::Get { key: k, result: None },
        60..70 => OpKind::Delete { key: k },
        70..85 => {
            let mut picked: Vec<u64> = Vec::new();
            let want = rng.usize(2..=3).min(keys as usize);
            while picked.len() < want {
                let i = rng.u64(0..keys);
                if !picked.contains(&i) {
                    picked.push(i);
                }
            }
            picked.sort_unstable();
            OpKind::Batch {
                keys: picked.into_iter().map(key).collect(),
                value,
            }
        }
        _ => {
            let a = rng.u64(0..keys);
            let b = rng.u64(a + 1..=keys);
            OpKind::Range {
                start: key(a),
                // k{keys} sorts after every key below it only for one-digit
                // indexes, so the end of the key set is spelled "k~".
                end: if b == keys { "k~".to_owned() } else { key(b) },
                result: None,
            }
        }
    }
}

fn write_outcome<T>(result: &cluster_client::Result<T>) -> (Outcome, Option<String>) {
    match result {
        Ok(_) => (Outcome::Ok, None),
        Err(error) => match error.outcome() {
            cluster_client::Outcome::NotApplied => (Outcome::Fail, Some(error.to_string())),
            cluster_client::Outcome::Unknown => (Outcome::Unknown, Some(error.to_string())),
        },
    }
}

/// Runs one operation; returns it (with a read's result) and its outcome.
/// A failed read is `Fail`: it had no effect and tells nothing.
async fn execute(client: &Client, kind: OpKind) -> (OpKind, Outcome, Option<String>) {
    match kind {
        OpKind::Put { key, value } => {
            let result = client.put(key.clone(), value.clone()).await;
            let (outcome, error) = write_outcome(&result);
            (OpKind::Put { key, value }, outcome, error)
        }
        OpKind::Delete { key } => {
            let result = client.delete(key.clone()).await;
            let (outcome, error) = write_outcome(&result);
            (OpKind::Delete { key }, outcome, error)
        }
        OpKind::Batch { keys, value } => {
            let pairs = keys
                .iter()
                .map(|k| (Bytes::from(k.clone()), Bytes::from(value.clone())))
                .collect();
            let result = client.batch_put(pairs).await;
            let (outcome, error) = write_outcome(&result);
            (OpKind::Batch { keys, value }, outcome, error)
        }
        OpKind::Get { key, .. } => match client.get(key.clone()).await {
            Ok(found) => {
                let found = found.map(|v| String::from_utf8_lossy(&v).into_owned());
                (
                    OpKind::Get {
                        key,
                        result: Some(found),
                    },
                    Outcome::Ok,
                    None,
                )
            }
            Err(error) => (
                OpKind::Get { key, result: None },
                Outcome::Fail,
                Some(error.to_string()),
            ),
        },
        OpKind::Range { start, end, .. } => {
            let page = client
                .range_page(start.clone(), end.clone(), 0, Consistency::Linearizable)
                .await;
            match page {
                Ok(page) => {
                    // The key set is far below one page: a second page would
                    // mean the read was not one atomic snapshot.
                    assert!(page.next_start.is_none(), "a range over the small key set was paged");
                    let pairs = page
                        .pairs
                        .into_iter()
                        .map(|(k, v)| {
                            (
                                String::from_utf8_lossy(&k).into_owned(),
                                String::from_utf8_lossy(&v).into_owned(),
                            )
                        })
                        .collect();
                    (
                        OpKind::Range {
                            start,
                            end,
                            result: Some(pairs),
                        },
                        Outcome::Ok,
                        None,
                    )
                }
                Err(error) => (
                    OpKind::Range {
                        start,
                        end,
                        result: None,
                    },
                    Outcome::Fail,
                    Some(error.to_string()),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_client_task_fails_the_run() {
        // A client's assertion (here the paged-range one) must not vanish
        // with its JoinError: the run would pass on a shorter history.
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        let flag = stop.clone();
        tasks.spawn(async move {
            while !flag.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        tasks.spawn(async { panic!("a range over the small key set was paged") });
        let workload = Workload {
            stop,
            tasks,
            clients: 2,
        };
        let failures = workload.stop().await;
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].contains("range over the small key set was paged"),
            "{failures:?}"
        );
        let verdict = verdict(2, &failures);
        assert!(verdict.is_fail(), "{verdict}");
    }

    #[test]
    fn an_expired_session_is_an_unknown_outcome_not_a_failure() {
        // The server forgot the write's session: an earlier attempt may have
        // been applied, so the oracle must not promise it was not.
        let expired: cluster_client::Result<()> = Err(cluster_client::Error::SessionExpired {
            last: "FAILED_PRECONDITION: session expired".into(),
        });
        assert_eq!(write_outcome(&expired).0, Outcome::Unknown);
        let refused: cluster_client::Result<()> = Err(cluster_client::Error::InvalidArgument("empty key".into()));
        assert_eq!(write_outcome(&refused).0, Outcome::Fail);
    }

    #[tokio::test]
    async fn clients_that_stop_cleanly_pass() {
        // The control: stopping a healthy workload reports nothing.
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        let flag = stop.clone();
        tasks.spawn(async move {
            while !flag.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let workload = Workload {
            stop,
            tasks,
            clients: 1,
        };
        let failures = workload.stop().await;
        assert!(failures.is_empty(), "{failures:?}");
        assert!(matches!(verdict(1, &failures), Verdict::Pass(_)));
    }
}

/// Pairs per batch a [`BulkWriter`] writes.
pub const BULK_PAIRS_PER_BATCH: u64 = 4;
/// Bytes of each bulk value (under the node's 1 MiB value limit).
pub const BULK_VALUE_BYTES: usize = 512 << 10;
/// Deadline of one bulk batch, retries included.
const BULK_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The prefix of bulk keys: sorts before the workload's `k*` keys, so the
/// workload's ranges and the final read never see them.
pub const BULK_KEY_PREFIX: &str = "bulk-";

/// Writes large values under keys of their own, outside the workload's, to
/// give snapshots and disks weight. The checkers never read these keys;
/// the convergence check's digests cover them.
#[derive(Debug)]
pub struct BulkWriter {
    client: Client,
    next_key: u64,
    keys_max: u64,
}

impl BulkWriter {
    /// A writer over `endpoints` that cycles over `keys_max` keys, so the
    /// live data stays bounded by `keys_max * BULK_VALUE_BYTES`.
    pub fn new(endpoints: &[String], keys_max: u64) -> anyhow::Result<BulkWriter> {
        assert!(keys_max >= BULK_PAIRS_PER_BATCH, "fewer bulk keys than a batch");
        let client = Client::builder(endpoints.to_vec())
            .request_timeout(BULK_REQUEST_TIMEOUT)
            .attempt_timeout(BULK_REQUEST_TIMEOUT / 2)
            .connect_timeout(Duration::from_millis(300))
            .backoff_max(Duration::from_millis(200))
            .build()?;
        Ok(BulkWriter {
            client,
            next_key: 0,
            keys_max,
        })
    }

    /// Writes one batch of [`BULK_PAIRS_PER_BATCH`] values; returns the
    /// value bytes written.
    pub async fn write_batch(&mut self) -> cluster_client::Result<u64> {
        let pairs: Vec<(Bytes, Bytes)> = (0..BULK_PAIRS_PER_BATCH)
            .map(|pair| {
                let n = (self.next_key + pair) % self.keys_max;
                let key = Bytes::from(format!("{BULK_KEY_PREFIX}{n:05}"));
                (key, Bytes::from(vec![(n % 251) as u8; BULK_VALUE_BYTES]))
            })
            .collect();
        self.client.batch_put(pairs).await?;
        self.next_key = (self.next_key + BULK_PAIRS_PER_BATCH) % self.keys_max;
        Ok(BULK_PAIRS_PER_BATCH * BULK_VALUE_BYTES as u64)
    }
}
