//! Power cuts of a whole cluster on simulated disks: three in-process nodes,
//! each on its own `storage::sim::SimFs` (every file a node writes goes
//! through it), many concurrent writers through the client library
//! recording which writes were acknowledged, then at a random moment (after
//! a random number of acknowledgements) a power cut:
//!
//! - of all three nodes at once: every disk is crashed (`DropUnsynced` or
//!   `Torn`, drawn per disk), so whatever a node had not fsynced is gone,
//!   then the old nodes are stopped (their frozen disks refuse every call,
//!   so they write nothing more) and all three restart on what the crash
//!   left;
//! - of one node (sometimes the leader) while the other two keep serving
//!   the writers; it restarts on what its crash left and must catch up.
//!
//! Then the check: the cluster elects a leader and accepts a write; every
//! acknowledged write is read back with its value or a later write's of the
//! same key (each key has one writer, so "later" is its order); no value
//! appears that was never written or that the cluster refused as not
//! applied; no key appears that was never written. A write whose outcome
//! is unknown may be there or not, and may even land after a later
//! acknowledged one (it never completed, so it may take effect at any time).
//!
//! Unlike SIGKILL, after which the page cache still holds every write, the
//! simulated disk loses what was not fsynced, file data and directory
//! entries alike. The negative control at the end makes every node's disk
//! lie about the Raft log's segment fsyncs (the log is the write-ahead log
//! of the state machine) and expects an acknowledged write to be lost.
//!
//! Knobs: `SIM_CLUSTER_SEEDS` (seeds per scenario, default
//! [`SEEDS_DEFAULT`]), `SIM_CLUSTER_SEED` (run just this one). A seed fixes
//! the plan (timing, crash modes, when and whom to cut), not the
//! interleaving of threads and network.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_client::{Bytes, Client, Outcome};
use raft_node::testing::{fast_timing, TestCluster};
use raft_node::RaftTiming;
use storage::io::FileSystem;
use storage::sim::{CrashMode, LyingSyncs, SimFs};
use tokio_stream::StreamExt;

/// Seeds per scenario by default (CI size: the file runs in about a minute
/// on two busy cores); `SIM_CLUSTER_SEEDS` overrides.
const SEEDS_DEFAULT: u64 = 6;
/// Seeds the negative control tries, at most, before giving up on finding
/// a lost write.
const CONTROL_SEEDS_MAX: u64 = 6;
/// Entries between snapshots in the negative control: more than it writes.
const CONTROL_SNAPSHOT_LOGS: u64 = 1_000_000;
/// Raft log segment size in the negative control, in bytes: more than it
/// writes, so the first segment is the only one.
const CONTROL_SEGMENT_BYTES: u64 = 4 << 20;
/// Nodes in the cluster.
const NODES: u64 = 3;
/// Concurrent writers, each with its own client session and keys.
const WRITERS: usize = 8;
/// Keys each writer overwrites.
const KEYS_PER_WRITER: usize = 4;
/// Acknowledged writes before the cut: drawn in this range per seed.
const ACKED_BEFORE_CUT_MIN: u64 = 20;
/// See [`ACKED_BEFORE_CUT_MIN`].
const ACKED_BEFORE_CUT_MAX: u64 = 300;
/// More acknowledged writes the two survivors take while one node is down.
const ACKED_WHILE_DOWN: u64 = 20;
/// Largest value, in bytes: values cross 512-byte sectors.
const VALUE_BYTES_MAX: usize = 1500;
/// A client request's deadline, in ms.
const REQUEST_TIMEOUT_MS: u64 = 3000;
/// How long the workload or the recovery may take to reach a state, in ms.
const WAIT_MS_MAX: u64 = 30_000;
/// Time for a seed's runtime to stop its last blocking tasks, in ms.
const RUNTIME_SHUTDOWN_MS: u64 = 5000;

/// Cluster scenarios run one at a time: three nodes already load two cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// Whom the power cut hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// All three nodes at once.
    All,
    /// One node; the other two keep serving.
    One,
}

/// What went wrong in a seed.
#[derive(Debug)]
enum Violation {
    /// An acknowledged write is missing (or older data came back over it).
    Lost(String),
    /// Anything else: an invented value, no recovery, a panic.
    Other(String),
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::Lost(what) => write!(f, "lost an acknowledged write: {what}"),
            Violation::Other(what) => write!(f, "{what}"),
        }
    }
}

/// What became of one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Acked,
    Unknown,
    NotApplied,
}

/// One writer's history: per key, its writes in order.
type History = BTreeMap<String, Vec<(Bytes, Status)>>;

/// Counts across seeds, reported so a run shows that it checked something.
#[derive(Debug, Default)]
struct Counts {
    acked_checked: u64,
    keys_checked: u64,
}

fn key_name(writer: usize, key: usize) -> String {
    format!("w{writer:02}-k{key}")
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("SIM_CLUSTER_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let count = std::env::var("SIM_CLUSTER_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEEDS_DEFAULT);
    (0..count).collect()
}

/// Snapshots often (every few hundred entries, keeping few behind), so the
/// cut also lands around checkpoints, flushes and log purges.
fn timing(rng: &mut fastrand::Rng) -> RaftTiming {
    RaftTiming {
        snapshot_logs_since_last: rng.u64(30..=300),
        logs_kept_after_snapshot: rng.u64(5..=50),
        // Small segments: rolls, preallocated spares and purges that
        // remove files all happen within a seed.
        log_segment_bytes_max: rng.u64(16..=256) << 10,
        ..fast_timing()
    }
}

/// The negative control's timing: no snapshot, and segments larger than
/// the workload, so that with the log's fsyncs skipped nothing else (a
/// flushed engine, a segment rolled mid-workload) makes the cut leave a
/// state the nodes refuse to start on rather than one that lost writes.
fn control_timing() -> RaftTiming {
    RaftTiming {
        snapshot_logs_since_last: CONTROL_SNAPSHOT_LOGS,
        log_segment_bytes_max: CONTROL_SEGMENT_BYTES,
        ..fast_timing()
    }
}

/// Writes random values to the writer's own keys until `stop`, recording
/// each write's outcome; counts acknowledgements in `acked`.
async fn write_until(
    client: Client,
    writer: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> History {
    let mut rng = fastrand::Rng::with_seed(seed ^ (writer as u64).wrapping_mul(0x9e37_79b9));
    let mut history = History::new();
    let mut sequence = 0u64;
    while !stop.load(Ordering::Acquire) {
        sequence += 1;
        let key = key_name(writer, rng.usize(..KEYS_PER_WRITER));
        let mut value = format!("{writer}-{sequence}:").into_bytes();
        value.resize(value.len() + rng.usize(..VALUE_BYTES_MAX), b'a' + rng.u8(..26));
        let value = Bytes::from(value);
        let status = match client.put(key.clone(), value.clone()).await {
            Ok(_) => {
                acked.fetch_add(1, Ordering::AcqRel);
                Status::Acked
            }
            Err(error) => {
                // Not a tight loop while the cluster is down.
                tokio::time::sleep(Duration::from_millis(10)).await;
                match error.outcome() {
                    Outcome::NotApplied => Status::NotApplied,
                    Outcome::Unknown => Status::Unknown,
                }
            }
        };
        history.entry(key).or_default().push((value, status));
    }
    history
}

/// Checks what a key holds against its writer's history.
fn check_key(key: &str, writes: &[(Bytes, Status)], read: Option<&Bytes>) -> Result<(), Violation> {
    let last_acked = writes.iter().rposition(|(_, status)| *status == Status::Acked);
    let Some(read) = read else {
        return match last_acked {
            Some(at) => Err(Violation::Lost(format!(
                "{key}: reads nothing, but write #{at} of {} was acknowledged",
                writes.len()
            ))),
            None => Ok(()),
        };
    };
    let Some(at) = writes.iter().rposition(|(value, _)| value == read) else {
        return Err(Violation::Other(format!(
            "{key}: holds a value never written ({:?}...)",
            &read[..read.len().min(16)]
        )));
    };
    match (writes[at].1, last_acked) {
        (Status::NotApplied, _) => Err(Violation::Other(format!(
            "{key}: holds write #{at}, which the cluster refused as not applied"
        ))),
        (Status::Acked, Some(last)) if at < last => Err(Violation::Lost(format!(
            "{key}: holds acknowledged write #{at}, but the later write #{last} was acknowledged too"
        ))),
        _ => Ok(()),
    }
}

/// Waits until `done` holds, polling, for at most [`WAIT_MS_MAX`].
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Result<(), Violation> {
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
    while !done() {
        if Instant::now() >= deadline {
            return Err(Violation::Other(format!("timed out waiting for {what}")));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Writes `key` until the cluster acknowledges it, for at most
/// [`WAIT_MS_MAX`]: the cluster elected a leader and accepts writes.
async fn write_acknowledged(client: &Client, key: &str) -> Result<(), Violation> {
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
    loop {
        match client.put(key.to_owned(), key.to_owned()).await {
            Ok(_) => return Ok(()),
            Err(error) if Instant::now() >= deadline => {
                return Err(Violation::Other(format!(
                    "the cluster accepts no write after the power cut: {error}"
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Runs one seed of `cut`, with the disks lying about `lying`.
async fn run(seed: u64, cut: Cut, lying: LyingSyncs, counts: &Mutex<Counts>) -> Result<(), Violation> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let disks: Vec<Arc<SimFs>> = (0..NODES).map(|i| SimFs::new(rng.u64(..) ^ i)).collect();
    let as_dyn = |disk: &Arc<SimFs>| Arc::clone(disk) as Arc<dyn FileSystem>;
    let timing = if lying == LyingSyncs::None {
        timing(&mut rng)
    } else {
        control_timing()
    };
    let mut cluster = TestCluster::start_on_disks(disks.iter().map(as_dyn).collect(), timing).await;
    // The lie starts once the cluster has formed: the log's first records
    // (its header, the first vote and membership) are durable, so what the
    // cut loses is what the workload wrote. (Lying from the start, a node
    // refuses to start on a zeroed log: a failure too, but not a lost write.)
    for disk in &disks {
        disk.lie_about_syncs(lying.clone());
    }
    let client = Client::builder(cluster.addrs())
        .request_timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
        .build()
        .map_err(|e| Violation::Other(format!("client: {e}")))?;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let session = client.with_new_session();
            tokio::spawn(write_until(
                session,
                writer,
                seed,
                Arc::clone(&stop),
                Arc::clone(&acked),
            ))
        })
        .collect();
    let cut_after = rng.u64(ACKED_BEFORE_CUT_MIN..=ACKED_BEFORE_CUT_MAX);
    wait_until("the writes before the cut", || {
        acked.load(Ordering::Acquire) >= cut_after
    })
    .await?;
    let mode = |rng: &mut fastrand::Rng| {
        if lying == LyingSyncs::None && rng.bool() {
            CrashMode::Torn
        } else {
            CrashMode::DropUnsynced
        }
    };
    match cut {
        Cut::All => {
            stop.store(true, Ordering::Release);
            // The power goes at once on all three: every disk freezes
            // before any node is told anything.
            let after: Vec<Arc<SimFs>> = disks.iter().map(|disk| disk.crash(mode(&mut rng))).collect();
            let all: Vec<u64> = (1..=NODES).collect();
            cluster.kill(&all).await;
            for (id, disk) in (1..=NODES).zip(&after) {
                cluster.restart_on(id, as_dyn(disk)).await;
            }
        }
        Cut::One => {
            let leader = cluster.wait_for_leader(None).await;
            let victim = if rng.bool() { leader } else { rng.u64(1..=NODES) };
            let index = usize::try_from(victim - 1).map_err(|e| Violation::Other(e.to_string()))?;
            let after = disks[index].crash(mode(&mut rng));
            cluster.kill(&[victim]).await;
            let before = acked.load(Ordering::Acquire);
            wait_until("writes while a node is down", || {
                acked.load(Ordering::Acquire) >= before + ACKED_WHILE_DOWN
            })
            .await?;
            cluster.restart_on(victim, as_dyn(&after)).await;
            let leader = cluster.wait_for_leader(None).await;
            let target = cluster.applied(leader);
            wait_until("the restarted node to catch up", || cluster.applied(victim) >= target).await?;
            stop.store(true, Ordering::Release);
        }
    }
    write_acknowledged(&client, "probe-after-cut").await?;
    let mut history = History::new();
    for writer in writers {
        let joined = tokio::time::timeout(Duration::from_millis(WAIT_MS_MAX), writer)
            .await
            .map_err(|_| Violation::Other("a writer did not stop".into()))?
            .map_err(|e| Violation::Other(format!("a writer panicked: {e}")))?;
        history.extend(joined);
    }
    check(&client, &history, counts).await?;
    let all: Vec<u64> = (1..=NODES).collect();
    cluster.kill(&all).await;
    Ok(())
}

/// Reads every key back and checks it; checks no unknown key exists.
async fn check(client: &Client, history: &History, counts: &Mutex<Counts>) -> Result<(), Violation> {
    let read_failed = |e: cluster_client::Error| Violation::Other(format!("read after the cut: {e}"));
    for (key, writes) in history {
        let read = client.get(key.clone()).await.map_err(read_failed)?;
        check_key(key, writes, read.as_ref())?;
        let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.keys_checked += 1;
        counts.acked_checked += u64::from(writes.iter().any(|(_, s)| *s == Status::Acked));
    }
    let written: BTreeSet<&str> = history.keys().map(String::as_str).collect();
    let mut pairs = client.range("w", "x");
    while let Some(pair) = pairs.next().await {
        let (key, _) = pair.map_err(read_failed)?;
        let key = String::from_utf8_lossy(&key).into_owned();
        if !written.contains(key.as_str()) {
            return Err(Violation::Other(format!("key {key} was never written")));
        }
    }
    Ok(())
}

/// Runs one seed on a runtime of its own (so that nothing of it outlives
/// it), turning a panic into a violation.
fn run_seed(seed: u64, cut: Cut, lying: &LyingSyncs, counts: &Mutex<Counts>) -> Result<(), Violation> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Violation::Other(format!("runtime: {e}")))?;
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(run(seed, cut, lying.clone(), counts))
    }));
    runtime.shutdown_timeout(Duration::from_millis(RUNTIME_SHUTDOWN_MS));
    outcome.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        Err(Violation::Other(format!("panicked: {message}")))
    })
}

fn scenario(cut: Cut, test: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let counts = Mutex::new(Counts::default());
    let seeds = seeds();
    for &seed in &seeds {
        eprintln!("{test}: seed {seed}");
        if let Err(violation) = run_seed(seed, cut, &LyingSyncs::None, &counts) {
            panic!(
                "seed {seed}: {violation}\nrerun: SIM_CLUSTER_SEED={seed} cargo test -p raft-node \
                 --test cluster_sim_power_cut {test}"
            );
        }
    }
    let counts = counts.lock().unwrap_or_else(|e| e.into_inner());
    eprintln!(
        "{test}: {} seeds passed; {} keys checked, {} of them with acknowledged writes",
        seeds.len(),
        counts.keys_checked,
        counts.acked_checked
    );
    assert!(counts.acked_checked > 0, "no acknowledged write was checked");
}

#[test]
fn acknowledged_writes_survive_a_power_cut_of_the_whole_cluster() {
    // Jepsen's lazyfs case: all three nodes lose what they had not fsynced at once.
    scenario(Cut::All, "acknowledged_writes_survive_a_power_cut_of_the_whole_cluster");
}

#[test]
fn acknowledged_writes_survive_a_power_cut_of_one_node() {
    // A node that lost its unsynced state must rejoin without undoing what the cluster acknowledged.
    scenario(Cut::One, "acknowledged_writes_survive_a_power_cut_of_one_node");
}

#[test]
fn skipping_the_raft_log_fsync_loses_acknowledged_writes() {
    // Negative control: if the Raft log's segment fsyncs did nothing, the check must notice.
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let counts = Mutex::new(Counts::default());
    let lying = LyingSyncs::FilesContaining("log-".to_owned());
    let mut outcomes = Vec::new();
    for seed in 0..CONTROL_SEEDS_MAX {
        let outcome = run_seed(seed, Cut::All, &lying, &counts);
        eprintln!("lying log fsyncs, seed {seed}: {outcome:?}");
        let lost = matches!(outcome, Err(Violation::Lost(_)));
        outcomes.push((seed, outcome));
        if lost {
            return;
        }
    }
    panic!("no seed lost an acknowledged write with the Raft log's fsyncs skipped: {outcomes:?}");
}
