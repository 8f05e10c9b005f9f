//! Crash tests of the Raft log store on the simulated disk
//! (`storage::sim::SimFs`): random appends (acknowledged by their
//! group-commit callback), truncations, purges and vote saves; a power cut
//! at a random I/O step, or after an injected disk fault (EIO, ENOSPC, an
//! fsync that loses its data); a reopen on what the crash left; and a check
//! against a model of what was acknowledged.
//!
//! Unlike `log_store_crash.rs` (SIGKILL, after which the page cache still
//! holds every write), the simulated disk loses whatever was not fsynced,
//! file data and directory entries alike, and can tear unsynced writes per
//! 512-byte sector in any order. So a missing or misplaced fsync loses an
//! acknowledged entry here; the negative controls at the end prove it by
//! making the disk lie about the log store's syncs and expecting the check
//! to fail.
//!
//! The check, after each crash:
//! - every entry whose append callback reported it durable, and that no
//!   acknowledged truncation removed since, is there with its log id and
//!   payload (unless a purge, acknowledged or attempted, covered it);
//! - every entry there is the last one written at its index (nothing
//!   invented, nothing truncated coming back), and the entries are
//!   contiguous right after the purge point;
//! - the purge point is at least the last acknowledged one and at most the
//!   last attempted one (purged entries never come back);
//! - the vote is at least the last acknowledged one and one that was saved.
//!
//! Segments are small and mostly preallocated, so purges free whole
//! segments that the store recycles as later ones (their earlier records
//! left after the new ones): the run counts the recycled segments and
//! requires some. The last negative control reopens with a recovery that
//! ignores the segment numbers in the records and so reads a recycled
//! segment's earlier records as its own; the check must catch it.
//!
//! Knobs: `LOG_SIM_SEEDS` (seeds to run, default 1000), `LOG_SIM_SEED` (run
//! just this one). The store's sync and preallocation threads make the
//! interleaving of I/O steps vary slightly between runs, so a seed replays
//! the same operations, faults and cut step, though not always the same
//! interleaving of the threads.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::storage::RaftLogStorage;
use openraft::{CommittedLeaderId, EntryPayload};
use parking_lot::Mutex;
use proto::raft as pb;
use raft_node::log_store::{LogStore, LogStoreOptions};
use raft_node::types::{Entry, LogId, Vote};
use storage::io::FileSystem;
use storage::sim::{CrashMode, Fault, LyingSyncs, SimFs};

/// Where the log lives on the simulated disk.
const LOG_DIR: &str = "/node/raft-log";
/// Seeds run by default (CI size); `LOG_SIM_SEEDS` overrides.
const SEEDS_DEFAULT: u64 = 1000;
/// Operations per round before the crash, at most.
const OPS_PER_ROUND_MAX: u64 = 60;
/// Crash-and-reopen rounds per seed: the second round runs on a log that
/// recovery already cut and rolled.
const ROUNDS: u64 = 2;
/// Largest value of one entry, in bytes: values cross sector boundaries.
const VALUE_BYTES_MAX: usize = 1500;
/// Acknowledged entries the checks found present, across seeds (reported,
/// so a run shows that it checked something).
static ACKED_ENTRIES_CHECKED: AtomicU64 = AtomicU64::new(0);
/// Rounds in which the crash lost written but unacknowledged entries, or
/// the store refused writes after the fault (the crash bit).
static ROUNDS_WITH_LOSS: AtomicU64 = AtomicU64::new(0);
/// Segments started from a recycled (purged) segment file, across seeds.
static RECYCLED_SEGMENTS: AtomicU64 = AtomicU64::new(0);

/// How long the test waits for outstanding callbacks before it gives up
/// waiting (they are then simply not acknowledged).
const CALLBACK_WAIT_MS_MAX: u64 = 2_000;

/// What the test has asked the store to do, and what it acknowledged.
#[derive(Debug, Default)]
struct Model {
    /// The last entry written at each index: the only one a recovered log
    /// may hold there.
    written: BTreeMap<u64, Entry>,
    /// Entries acknowledged durable by their callback (written by the sync
    /// thread), minus those an acknowledged truncation removed.
    acked: Arc<Mutex<BTreeMap<u64, LogId>>>,
    /// A truncation from this index did not return OK: entries from here
    /// on may or may not be there.
    uncertain_from: Option<u64>,
    /// The last purge index the store acknowledged.
    acked_purge: Option<u64>,
    /// The greatest purge index ever asked for.
    attempted_purge: Option<u64>,
    /// The term of the last vote the store acknowledged.
    acked_vote_term: Option<u64>,
    /// The terms of every vote ever asked for.
    attempted_vote_terms: BTreeSet<u64>,
    /// The term new entries get.
    term: u64,
    /// Callbacks that ran, with any result.
    callbacks_done: Arc<AtomicU64>,
    /// Appends whose callback is outstanding or ran.
    callbacks_issued: u64,
}

impl Model {
    fn next_index(&self) -> u64 {
        self.written
            .keys()
            .next_back()
            .map_or(self.attempted_purge.map_or(1, |p| p + 1), |&i| i + 1)
            .max(self.attempted_purge.map_or(1, |p| p + 1))
    }

    /// Waits (bounded) until every callback issued so far has run.
    fn wait_callbacks(&self) {
        let deadline = Instant::now() + Duration::from_millis(CALLBACK_WAIT_MS_MAX);
        while self.callbacks_done.load(Ordering::SeqCst) < self.callbacks_issued && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

fn entry(term: u64, index: u64, value_bytes: usize) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(
            pb::Command {
                op: Some(pb::command::Op::Put(pb::Put {
                    key: format!("k{index}").into(),
                    value: vec![(index % 251) as u8 + 1; value_bytes].into(),
                })),
                client_id: 1,
                sequence: index,
                first_unanswered: 0,
                proposed_at_ms: 0,
            }
            .into(),
        ),
    }
}

/// How a seed's run is cut short.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// The power fails at an I/O step a few steps after this operation starts.
    PowerAtStep { before_op: u64, steps_later: u64 },
    /// One I/O call a few steps after this operation starts fails; the run
    /// goes on (the store refuses further writes) and the power fails at the end.
    FaultThenPower {
        before_op: u64,
        steps_later: u64,
        fault: Fault,
    },
    /// The power fails after the last operation, with callbacks maybe in flight.
    PowerAtEnd,
}

/// How the run treats the disk.
#[derive(Debug, Clone)]
struct Plan {
    seed: u64,
    lying: LyingSyncs,
    /// Reopen with the deliberately broken recovery that ignores segment
    /// numbers (a negative control).
    ignore_numbers: bool,
    /// Every value this long, rather than of a random length: a recycled
    /// segment's new records then often line up with its earlier ones.
    value_bytes: Option<usize>,
}

impl Plan {
    fn honest(seed: u64) -> Plan {
        Plan {
            seed,
            lying: LyingSyncs::None,
            ignore_numbers: false,
            value_bytes: None,
        }
    }

    /// Opens the store on `fs` as this plan says.
    fn open(&self, fs: Arc<dyn FileSystem>, options: LogStoreOptions) -> Result<LogStore, String> {
        let dir = Path::new(LOG_DIR);
        let opened = if self.ignore_numbers {
            LogStore::open_on_ignoring_record_numbers(fs, dir, options)
        } else {
            LogStore::open_on(fs, dir, options)
        };
        opened.map_err(|e| e.to_string())
    }
}

fn options(rng: &mut fastrand::Rng) -> LogStoreOptions {
    LogStoreOptions {
        // Small segments: rolls, spares, and purges that delete or
        // recycle files (recycling needs preallocation: mostly on).
        segment_bytes_max: rng.u64(2..=12) * 1024,
        preallocate: rng.u8(0..4) != 0,
        memory_window_bytes_max: rng.u64(0..=8) * 1024,
        // The votes saved here are node 1's: as node 2 the store follows
        // and fsyncs appends on the caller's thread; as node 1, or not
        // told its id, it leaves them to the sync thread.
        node_id: [None, Some(1), Some(2)][rng.usize(0..3)],
    }
}

fn random_cut(rng: &mut fastrand::Rng, ops: u64) -> Cut {
    let before_op = rng.u64(0..ops.max(1));
    let steps_later = rng.u64(1..=8);
    match rng.u8(0..4) {
        0 | 1 => Cut::PowerAtStep { before_op, steps_later },
        2 => Cut::FaultThenPower {
            before_op,
            steps_later,
            fault: [Fault::Eio, Fault::NoSpace, Fault::SyncLosesData][rng.usize(0..3)],
        },
        _ => Cut::PowerAtEnd,
    }
}

/// Runs one seed: `ROUNDS` rounds of operations, crash, reopen, check.
fn run_seed(plan: &Plan) -> Result<(), String> {
    let mut rng = fastrand::Rng::with_seed(plan.seed);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| e.to_string())?;
    let dir = Path::new(LOG_DIR);
    let mut disk = SimFs::new(plan.seed);
    // The directory exists durably before the store runs, so a lie about
    // directory syncs (the negative control) hits only the log store's own.
    storage::io::create_dir_all(disk.as_ref(), dir).map_err(|e| e.to_string())?;
    let mut model = Model {
        term: 1,
        ..Model::default()
    };
    for round in 0..ROUNDS {
        let options = options(&mut rng);
        let fs: Arc<dyn FileSystem> = Arc::clone(&disk) as Arc<dyn FileSystem>;
        let mut store = plan
            .open(fs, options.clone())
            .map_err(|e| format!("round {round}: open before the run failed: {e}"))?;
        disk.lie_about_syncs(plan.lying.clone());
        let ops = rng.u64(5..=OPS_PER_ROUND_MAX);
        let cut = if plan.lying == LyingSyncs::None {
            random_cut(&mut rng, ops)
        } else {
            Cut::PowerAtEnd
        };
        for op in 0..ops {
            match cut {
                Cut::PowerAtStep { before_op, steps_later } if before_op == op => {
                    disk.freeze_at_step(disk.steps() + steps_later);
                }
                Cut::FaultThenPower {
                    before_op,
                    steps_later,
                    fault,
                } if before_op == op => disk.fail_at_step(disk.steps() + steps_later, fault),
                _ => {}
            }
            runtime.block_on(random_op(&mut rng, &mut store, &mut model, plan.value_bytes));
        }
        if plan.lying != LyingSyncs::None {
            // Let the acknowledgements the lie produced arrive.
            model.wait_callbacks();
        }
        let mode = if plan.lying == LyingSyncs::None && rng.bool() {
            CrashMode::Torn
        } else {
            CrashMode::DropUnsynced
        };
        RECYCLED_SEGMENTS.fetch_add(store.metrics().recycled_segments, Ordering::Relaxed);
        // Cut the power, then let the old store go: callbacks that run
        // after the cut report syncs that completed before it.
        let after = disk.crash(mode);
        drop(store);
        let fs: Arc<dyn FileSystem> = Arc::clone(&after) as Arc<dyn FileSystem>;
        let store = plan
            .open(fs, options)
            .map_err(|e| format!("round {round}: reopen after the crash ({cut:?}, {mode:?}) failed: {e}"))?;
        check(&store, &model).map_err(|e| format!("round {round}, after {cut:?} and a {mode:?} crash: {e}"))?;
        model = model_of(&store, &model);
        drop(store);
        disk = after;
    }
    Ok(())
}

/// One random operation against the store, recorded in the model.
async fn random_op(rng: &mut fastrand::Rng, store: &mut LogStore, model: &mut Model, value_bytes: Option<usize>) {
    let next = model.next_index();
    let first_live = model.attempted_purge.map_or(1, |p| p + 1);
    match rng.u8(0..100) {
        0..=54 => {
            let count = rng.u64(1..=4);
            let batch: Vec<Entry> = (next..next + count)
                .map(|i| {
                    let value_bytes = value_bytes.unwrap_or_else(|| rng.usize(0..=VALUE_BYTES_MAX));
                    entry(model.term, i, value_bytes)
                })
                .collect();
            for e in &batch {
                model.written.insert(e.log_id.index, e.clone());
            }
            let ids: Vec<LogId> = batch.iter().map(|e| e.log_id).collect();
            let (acked, done) = (Arc::clone(&model.acked), Arc::clone(&model.callbacks_done));
            let result = store.append_with_callback(batch, move |result| {
                if result.is_ok() {
                    let mut acked = acked.lock();
                    for id in ids {
                        acked.insert(id.index, id);
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            });
            if result.is_ok() {
                model.callbacks_issued += 1;
            }
        }
        55..=64 => {
            let term = model.attempted_vote_terms.last().map_or(1, |t| t + 1).max(model.term);
            model.attempted_vote_terms.insert(term);
            if store.save_vote(&Vote::new_committed(term, 1)).await.is_ok() {
                model.acked_vote_term = Some(term);
            }
        }
        65..=74 if next > first_live => {
            let at = rng.u64(first_live..next);
            let Some(log_id) = model.written.get(&at).map(|e| e.log_id) else {
                return;
            };
            // The callbacks of earlier appends run before the truncation
            // proceeds (the store waits for them), so none is lost here.
            if store.truncate(log_id).await.is_ok() {
                model.written.split_off(&at);
                model.acked.lock().split_off(&at);
                // A new leader's entries follow a truncation.
                model.term += 1;
            } else {
                model.uncertain_from = Some(model.uncertain_from.map_or(at, |u| u.min(at)));
            }
        }
        75..=84 if next > first_live => {
            let upto = rng.u64(first_live..next);
            let Some(log_id) = model.written.get(&upto).map(|e| e.log_id) else {
                return;
            };
            model.attempted_purge = model.attempted_purge.max(Some(upto));
            if store.purge(log_id).await.is_ok() {
                model.acked_purge = model.acked_purge.max(Some(upto));
            }
        }
        85..=89 => {
            if let Some(last) = model.written.values().next_back() {
                let _ = store.save_committed(Some(last.log_id)).await;
            }
        }
        _ => model.wait_callbacks(),
    }
}

/// Compares the reopened store with the model; the first violation found.
fn check(store: &LogStore, model: &Model) -> Result<(), String> {
    let (purged, last) = store.log_state();
    let purged = purged.map(|p| p.index);
    if purged < model.acked_purge {
        return Err(format!(
            "purge point went back: acknowledged {:?}, recovered {purged:?}",
            model.acked_purge
        ));
    }
    if purged > model.attempted_purge {
        return Err(format!(
            "purge point invented: greatest asked {:?}, recovered {purged:?}",
            model.attempted_purge
        ));
    }
    let entries = store
        .reader()
        .entries(..)
        .map_err(|e| format!("reading the recovered log failed: {e}"))?;
    let first_expected = purged.map_or(1, |p| p + 1);
    for (position, found) in entries.iter().enumerate() {
        let index = found.log_id.index;
        if index != first_expected + position as u64 {
            return Err(format!(
                "entries not contiguous after purge point {purged:?}: position {position} holds index {index}"
            ));
        }
        match model.written.get(&index) {
            Some(written) if written == found => {}
            Some(written) => {
                return Err(format!(
                    "index {index} holds {:?}, but the last entry written there is {:?}",
                    found.log_id, written.log_id
                ))
            }
            None => {
                return Err(format!(
                    "index {index} holds {:?}, never written (or truncated)",
                    found.log_id
                ))
            }
        }
    }
    let last_found = entries.last().map(|e| e.log_id.index).or(purged);
    let last_written = model.written.keys().next_back().copied();
    if last_written.is_some_and(|w| last_found.is_none_or(|f| f < w)) {
        ROUNDS_WITH_LOSS.fetch_add(1, Ordering::Relaxed);
    }
    if last.map(|l| l.index) != last_found {
        return Err(format!(
            "log_state says last {last:?}, the entries end at {last_found:?}"
        ));
    }
    for (&index, &log_id) in model.acked.lock().iter() {
        if purged.is_some_and(|p| index <= p) || model.uncertain_from.is_some_and(|u| index >= u) {
            continue;
        }
        let present = index
            .checked_sub(first_expected)
            .and_then(|at| entries.get(at as usize))
            .map(|e| e.log_id);
        if present != Some(log_id) {
            return Err(format!(
                "acknowledged entry {log_id:?} lost: index {index} holds {present:?} (purged {purged:?})"
            ));
        }
        ACKED_ENTRIES_CHECKED.fetch_add(1, Ordering::Relaxed);
    }
    let vote_term = store.vote().map(|v| v.leader_id.term);
    if vote_term < model.acked_vote_term {
        return Err(format!(
            "vote went back: acknowledged term {:?}, recovered {vote_term:?}",
            model.acked_vote_term
        ));
    }
    if vote_term.is_some_and(|t| !model.attempted_vote_terms.contains(&t)) {
        return Err(format!("vote of term {vote_term:?} was never saved"));
    }
    Ok(())
}

/// The model of a recovered store: after the crash everything on the disk
/// is durable, so what it holds is acknowledged.
fn model_of(store: &LogStore, old: &Model) -> Model {
    let (purged, _) = store.log_state();
    let entries = store.reader().entries(..).unwrap_or_default();
    let acked = entries.iter().map(|e| (e.log_id.index, e.log_id)).collect();
    let vote_term = store.vote().map(|v| v.leader_id.term);
    Model {
        written: entries.into_iter().map(|e| (e.log_id.index, e)).collect(),
        acked: Arc::new(Mutex::new(acked)),
        acked_purge: purged.map(|p| p.index),
        attempted_purge: purged.map(|p| p.index),
        acked_vote_term: vote_term,
        attempted_vote_terms: vote_term.into_iter().collect(),
        // Later entries get a term above any seen, as after an election.
        term: old.term.max(old.attempted_vote_terms.last().copied().unwrap_or(0)) + 1,
        ..Model::default()
    }
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("LOG_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let count = std::env::var("LOG_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEEDS_DEFAULT);
    (0..count).collect()
}

#[test]
fn acknowledged_log_state_survives_power_cuts_and_disk_faults() {
    // The log store's durability promise, on a disk that loses what was not fsynced.
    let seeds = seeds();
    for &seed in &seeds {
        let plan = Plan::honest(seed);
        if let Err(e) = run_seed(&plan) {
            panic!(
                "seed {seed}: {e}\nrerun: LOG_SIM_SEED={seed} cargo test -p raft-node --test log_store_sim_crash \
                 acknowledged_log_state_survives_power_cuts_and_disk_faults"
            );
        }
    }
    let recycled = RECYCLED_SEGMENTS.load(Ordering::Relaxed);
    eprintln!(
        "log store sim crash: {} seeds passed; {} acknowledged entries checked present; {} of {} rounds lost unacknowledged entries in the crash; {recycled} segments recycled",
        seeds.len(),
        ACKED_ENTRIES_CHECKED.load(Ordering::Relaxed),
        ROUNDS_WITH_LOSS.load(Ordering::Relaxed),
        seeds.len() as u64 * ROUNDS
    );
    assert!(
        recycled * 2 >= seeds.len() as u64,
        "only {recycled} segments recycled in {} seeds: the run does not exercise recycling",
        seeds.len()
    );
}

/// Runs the negative-control seeds with `lying` and returns how many found a violation.
fn failures_with(lying: &LyingSyncs) -> (usize, usize, Option<String>) {
    failures_of(40, |seed| Plan {
        lying: lying.clone(),
        ..Plan::honest(seed)
    })
}

/// Runs up to `count` seeds planned by `plan` and returns how many found a
/// violation, how many ran, and the first violation.
fn failures_of(count: usize, plan: impl Fn(u64) -> Plan) -> (usize, usize, Option<String>) {
    let seeds: Vec<u64> = seeds().into_iter().take(count).collect();
    let mut first = None;
    let mut failed = 0;
    for &seed in &seeds {
        if let Err(e) = run_seed(&plan(seed)) {
            failed += 1;
            first.get_or_insert(format!("seed {seed}: {e}"));
        }
    }
    (failed, seeds.len(), first)
}

#[test]
fn skipping_the_segment_fsync_loses_acknowledged_state() {
    // Negative control: if the log store's segment fsyncs did nothing, the check must notice.
    let (failed, ran, first) = failures_with(&LyingSyncs::FilesContaining("log-".to_owned()));
    eprintln!("lying segment fsyncs: {failed} of {ran} seeds failed; first: {first:?}");
    assert!(
        failed * 2 >= ran,
        "only {failed} of {ran} seeds noticed lying segment fsyncs"
    );
}

#[test]
fn skipping_the_directory_sync_loses_acknowledged_state() {
    // Negative control: if the log directory's syncs did nothing, new segments vanish with what they acknowledged.
    let (failed, ran, first) = failures_with(&LyingSyncs::Directories);
    eprintln!("lying directory syncs: {failed} of {ran} seeds failed; first: {first:?}");
    assert!(
        failed * 2 >= ran,
        "only {failed} of {ran} seeds noticed lying directory syncs"
    );
}

#[test]
fn a_recovery_that_ignores_segment_numbers_reads_stale_entries() {
    // Negative control: a reader taking a recycled segment's earlier records as its own must fail the check.
    // Values of one length, so that the new records line up with the earlier life's (the hard case).
    let (failed, ran, first) = failures_of(200, |seed| Plan {
        ignore_numbers: true,
        value_bytes: Some(VALUE_BYTES_MAX / 2),
        ..Plan::honest(seed)
    });
    eprintln!("recovery ignoring segment numbers: {failed} of {ran} seeds failed; first: {first:?}");
    assert!(
        failed >= 1,
        "none of {ran} seeds noticed a recovery that ignores segment numbers"
    );
}

/// The entries a recycled segment holds after [`recycled_after_power_cut`]
/// reopened it, or why it did not open.
fn recycled_after_power_cut(ignore_numbers: bool) -> (Vec<Entry>, Result<Vec<Entry>, String>) {
    use openraft::storage::RaftLogStorageExt;
    let dir = Path::new(LOG_DIR);
    let disk = SimFs::new(11);
    let options = LogStoreOptions {
        segment_bytes_max: 4096,
        preallocate: true,
        memory_window_bytes_max: 0,
        node_id: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let mut store = LogStore::open_on(Arc::clone(&disk) as Arc<dyn FileSystem>, dir, options.clone()).expect("open");
    // Records of one length throughout (two-digit indexes, one value
    // length), and every segment opening with a vote and a purge point:
    // the recycled segment's new records line up with its earlier ones.
    let mut synced = Vec::new();
    runtime.block_on(async {
        store.save_vote(&Vote::new_committed(1, 1)).await.expect("vote");
        let mut index = 10;
        let mut append = |synced: &mut Vec<Entry>| {
            let e = entry(1, index, 300);
            index += 1;
            synced.push(e.clone());
            e
        };
        let first = append(&mut synced);
        store.blocking_append([first.clone()]).await.expect("append");
        store.purge(first.log_id).await.expect("purge");
        synced.clear();
        while store.metrics().segments < 5 {
            let e = append(&mut synced);
            store.blocking_append([e]).await.expect("append");
        }
        let last = synced.last().map(|e| e.log_id).expect("entries");
        store.purge(last).await.expect("purge all: frees segments to recycle");
        synced.clear();
        while store.metrics().recycled_segments == 0 {
            let e = append(&mut synced);
            store.blocking_append([e]).await.expect("append");
        }
        for _ in 0..3 {
            let e = append(&mut synced);
            store.blocking_append([e]).await.expect("append");
        }
        assert!(index < 100, "indexes stay two digits long");
    });
    // One more append that never reaches the disk.
    disk.lie_about_syncs(LyingSyncs::FilesContaining("log-".to_owned()));
    let lost = entry(1, synced.last().map_or(0, |e| e.log_id.index) + 1, 300);
    store.append_with_callback([lost], |_| {}).expect("append");
    let after = disk.crash(CrashMode::DropUnsynced);
    drop(store);
    let plan = Plan {
        ignore_numbers,
        ..Plan::honest(11)
    };
    let found = plan
        .open(after as Arc<dyn FileSystem>, options)
        .and_then(|store| store.reader().entries(..).map_err(|e| e.to_string()));
    (synced, found)
}

#[test]
fn a_recycled_segment_reopens_to_its_own_entries_after_a_power_cut() {
    // Its earlier records, lined up with the new ones, are never read back as entries.
    let (synced, found) = recycled_after_power_cut(false);
    let found = found.expect("reopen");
    let live: Vec<&Entry> = found.iter().collect();
    let expected: Vec<&Entry> = synced.iter().collect();
    assert_eq!(live, expected, "exactly the synced entries after the purge point");
    // Negative control: the broken recovery reads the earlier records.
    let (synced, broken) = recycled_after_power_cut(true);
    eprintln!("recovery ignoring segment numbers: {:?}", broken.as_ref().map(Vec::len));
    assert_ne!(
        broken,
        Ok(synced),
        "a recovery ignoring segment numbers must not recover the same log"
    );
}

#[test]
fn a_truncation_cut_interrupted_at_any_length_reopens() {
    // A power cut during a truncation's cut (set_len, fsync) of an older
    // segment can leave it at any length between the old and the new one,
    // ending in part of a record, followed by the truncation's new segment:
    // recovery must finish the cut, not call the log corrupt.
    let dir = Path::new(LOG_DIR);
    let disk = SimFs::new(7);
    let options = LogStoreOptions {
        segment_bytes_max: 64 * 1024,
        preallocate: false,
        memory_window_bytes_max: 0,
        node_id: None,
    };
    let mut store = LogStore::open_on(Arc::clone(&disk) as Arc<dyn FileSystem>, dir, options.clone()).expect("open");
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let entries: Vec<Entry> = (1..=20).map(|i| entry(1, i, 300)).collect();
    store
        .append_with_callback(entries.clone(), |r| r.expect("durable"))
        .expect("append");
    let segments = |disk: &SimFs| -> BTreeMap<String, Vec<u8>> {
        let names = disk.list_dir(dir).expect("list");
        names
            .into_iter()
            .filter_map(|n| disk.contents(&dir.join(&n)).map(|c| (n, c)))
            .collect()
    };
    let before = segments(&disk);
    runtime
        .block_on(store.truncate(entries[9].log_id))
        .expect("truncate at 10");
    drop(store);
    let after = segments(&disk);
    let (cut_name, cut_len) = after
        .iter()
        .find(|(name, bytes)| before.get(*name).is_some_and(|old| old.len() > bytes.len()))
        .map(|(name, bytes)| (name.clone(), bytes.len()))
        .expect("the cut segment");
    let old = &before[&cut_name];
    for torn_len in (cut_len + 1..old.len()).step_by(97) {
        let crashed = disk.crash(CrashMode::DropUnsynced);
        crashed
            .corrupt(&dir.join(&cut_name), &old[..torn_len])
            .expect("set the torn length");
        let store = LogStore::open_on(Arc::clone(&crashed) as Arc<dyn FileSystem>, dir, options.clone())
            .unwrap_or_else(|e| panic!("torn at {torn_len} of {}: reopen failed: {e}", old.len()));
        let found = store.reader().entries(..).expect("read");
        assert!(found.len() >= 9, "torn at {torn_len}: entries before the cut survive");
        for (i, e) in found.iter().enumerate() {
            assert_eq!(e, &entries[i], "torn at {torn_len}: the log's prefix is intact");
        }
    }
}
