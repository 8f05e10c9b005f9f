//! Power cuts on a simulated disk: the engine runs a random workload (puts,
//! deletes, batches, sync and non-sync writes, flushes, compactions,
//! checkpoints) on [`SimFs`] with tiny memtables and three background
//! threads, the power is cut at a random I/O step (sometimes after an
//! injected disk fault), the disk comes back with only what was made
//! durable (and, torn, random sectors of what was not), and the reopened
//! database is checked against a model of the writes.
//!
//! SIGKILL keeps the page cache, so only a disk that forgets unsynced data
//! can catch a missing or misplaced fsync. The negative controls at the end
//! make one kind of fsync do nothing and require the check to notice.
//!
//! The check: one writer thread issues the writes, so they commit in issue
//! order, and the recovered database must equal the model after some prefix
//! of the attempted writes (nothing invented, no batch half-applied, no
//! hole) that includes every write acknowledged with `sync` and everything
//! before a flush, compaction or checkpoint that returned. A checkpoint that
//! returned must open to exactly the state it was taken at. In the
//! unlogged mode (`disable_wal` writes carrying metadata, as the Raft state
//! machine writes) the recovered state must be exactly the writes up to the
//! recovered metadata, and hold at least everything before a returned flush.
//!
//! `STORAGE_SIM_SEEDS=5000` runs a soak; `STORAGE_SIM_SEED=n` starts at seed
//! `n` (with `STORAGE_SIM_SEEDS=1`, reruns just that seed). Background
//! threads make I/O interleaving vary between runs, so a failing seed
//! usually, not always, fails again: rerun it a few times.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use storage::io::FileSystem;
use storage::sim::{CrashMode, Fault, LyingSyncs, SimFs};
use storage::{Db, Options, WriteBatch, WriteOptions};

/// Seeds per test in a normal (CI) run.
const SEEDS_DEFAULT: usize = 300;
/// Crash-and-recover rounds per seed: the second round recovers a database
/// that already went through one crash (leftover torn WALs and temp files).
const LIVES_PER_SEED: usize = 2;
/// Write attempts per round, at most.
const ATTEMPTS_PER_LIFE_MAX: usize = 240;
/// Mutating I/O calls a round takes without a crash, about; the power is
/// cut at a step drawn below this bound (a few runs end without a cut).
const STEPS_PER_LIFE_MAX: u64 = 1_100;
/// Distinct keys, few enough that writes overwrite and delete each other.
const KEYS: u64 = 48;
/// Seeds a negative control may try before it must have failed.
const CONTROL_SEEDS_MAX: usize = 200;

const DATA_DIR: &str = "/data";
const DB_DIR: &str = "/data/db";

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// One write attempt: its operations (`None` deletes) and its options.
#[derive(Debug)]
struct Attempt {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// What one round did before the power cut.
#[derive(Default)]
struct Life {
    attempts: Vec<Attempt>,
    /// Attempts that must survive: up to the last acknowledged sync write
    /// or returned flush, compaction or checkpoint.
    durable_attempts: usize,
    /// Checkpoints that returned, with the attempts they hold.
    checkpoints: Vec<(PathBuf, usize)>,
    events: Vec<String>,
}

fn options(fs: Arc<dyn FileSystem>) -> Options {
    Options {
        memtable_bytes_max: 4096,
        immutable_memtables_max: 2,
        block_bytes_target: 256,
        block_cache_bytes: 32 * 1024,
        table_bytes_target: 4096,
        l0_compaction_trigger: 2,
        l0_slowdown_trigger: 6,
        l0_stop_trigger: 10,
        l1_bytes_target: 16 * 1024,
        level_size_ratio: 4,
        compaction_threads: 2,
        subcompactions_max: 3,
        subcompaction_bytes_min: 4096,
        // About half the values live in blob files.
        blob_value_bytes_min: Some(160),
        blob_file_bytes_target: 8 * 1024,
        fs,
        ..Options::default()
    }
}

fn apply(model: &mut Model, attempt: &Attempt) {
    for (key, value) in &attempt.ops {
        match value {
            Some(value) => model.insert(key.clone(), value.clone()),
            None => model.remove(key),
        };
    }
}

fn random_attempt(rng: &mut fastrand::Rng, id: String) -> Attempt {
    let ops = if rng.u8(..100) < 60 { 1 } else { rng.usize(2..=6) };
    let ops = (0..ops)
        .map(|j| {
            let key = format!("key{:03}", rng.u64(..KEYS)).into_bytes();
            let value = (rng.u8(..100) >= 20).then(|| {
                let mut value = format!("{id}.{j}:").into_bytes();
                value.resize(value.len() + rng.usize(8..300), b'x');
                value
            });
            (key, value)
        })
        .collect();
    Attempt { ops }
}

/// Runs one round on `fs` until the workload ends or the disk stops
/// working. Returns the database still open, so the caller crashes the disk
/// before the engine can do anything more.
fn live(fs: &Arc<SimFs>, rng: &mut fastrand::Rng, life_index: usize, start: &Model, wal: Wal) -> (Option<Db>, Life) {
    let mut life = Life::default();
    let db = match Db::open(DB_DIR, options(Arc::clone(fs) as Arc<dyn FileSystem>)) {
        Ok(db) => db,
        Err(e) => {
            life.events.push(format!("open failed: {e}"));
            return (None, life);
        }
    };
    let mut model = start.clone();
    let attempts = rng.usize(ATTEMPTS_PER_LIFE_MAX / 4..=ATTEMPTS_PER_LIFE_MAX);
    for index in 0..attempts {
        let roll = rng.u8(..100);
        if roll < 3 {
            life.events.push(format!("flush after {index}"));
            if db.flush().is_err() {
                break;
            }
            life.durable_attempts = life.attempts.len();
            continue;
        }
        if roll < 4 {
            life.events.push(format!("compact after {index}"));
            if db.compact_range(..).is_err() {
                break;
            }
            life.durable_attempts = life.attempts.len();
            continue;
        }
        if roll < 5 {
            let target = Path::new(DATA_DIR).join(format!("checkpoint-{life_index}-{index}"));
            life.events.push(format!("checkpoint after {index}"));
            if db.checkpoint(&target).is_err() {
                break;
            }
            life.durable_attempts = life.attempts.len();
            life.checkpoints.push((target, life.attempts.len()));
            continue;
        }
        let attempt = random_attempt(rng, format!("l{life_index}a{index}"));
        let sync = wal == Wal::Logged && rng.u8(..100) < 30;
        let mut batch = WriteBatch::new();
        for (key, value) in &attempt.ops {
            match value {
                Some(value) => batch.put(key, value),
                None => batch.delete(key),
            };
        }
        apply(&mut model, &attempt);
        life.attempts.push(attempt);
        if wal == Wal::Unlogged {
            // As Raft applies: the batch says how far the writes go.
            batch.set_metadata(format!("{life_index}:{}", life.attempts.len()));
        }
        let result = db.write(
            batch,
            &WriteOptions {
                sync,
                disable_wal: wal == Wal::Unlogged,
            },
        );
        if let Err(e) = result {
            life.events.push(format!("write {index} failed: {e}"));
            break;
        }
        if sync {
            life.durable_attempts = life.attempts.len();
        }
        // Reads on the live engine see every acknowledged write.
        let key = format!("key{:03}", rng.u64(..KEYS)).into_bytes();
        if let Ok(found) = db.get(&key) {
            assert_eq!(
                found.as_deref(),
                model.get(&key).map(Vec::as_slice),
                "a live read of {key:?} after write {index} disagrees with the model"
            );
        }
    }
    (Some(db), life)
}

fn read_all(db: &Db) -> Result<Model, String> {
    let mut state = Model::new();
    for pair in db.scan(..).map_err(|e| format!("scan: {e}"))? {
        let (key, value) = pair.map_err(|e| format!("scan: {e}"))?;
        state.insert(key.to_vec(), value.to_vec());
    }
    Ok(state)
}

/// The smallest prefix of `attempts` (at least `durable` long) whose model
/// equals `recovered`.
fn matching_prefix(start: &Model, attempts: &[Attempt], durable: usize, recovered: &Model) -> Option<usize> {
    let mut model = start.clone();
    for (index, attempt) in attempts.iter().enumerate() {
        if index >= durable && model == *recovered {
            return Some(index);
        }
        apply(&mut model, attempt);
    }
    (model == *recovered).then_some(attempts.len())
}

fn describe_difference(expected: &Model, recovered: &Model) -> String {
    let mut lines = Vec::new();
    for (key, value) in expected {
        match recovered.get(key) {
            None => lines.push(format!("{} lost", String::from_utf8_lossy(key))),
            Some(v) if v != value => lines.push(format!(
                "{}: expected {:.20}, found {:.20}",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(value),
                String::from_utf8_lossy(v)
            )),
            Some(_) => {}
        }
    }
    for key in recovered.keys().filter(|k| !expected.contains_key(*k)) {
        lines.push(format!("{} unexpectedly present", String::from_utf8_lossy(key)));
    }
    lines.truncate(6);
    lines.join("; ")
}

/// What the rounds of a run exercised, so a run that never cut the power
/// mid-workload (and so tested little) shows it.
#[derive(Debug, Default)]
struct Coverage {
    rounds: u64,
    cut_mid_workload: u64,
    faults_injected: u64,
    attempts: u64,
    torn_crashes: u64,
    steps: u64,
    /// Compactions, and those of them within L0, in the lives cut.
    compactions: u64,
    intra_l0_compactions: u64,
}

/// How the workload's writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wal {
    /// Through the engine's WAL (standalone use).
    Logged,
    /// With `disable_wal` and metadata naming the last write, as the Raft
    /// state machine writes: durable only when flushed, and the recovered
    /// state must be exactly what the recovered metadata names.
    Unlogged,
}

/// Checks the reopened `db` against the writes of `life` from `start`;
/// returns its state.
fn check_recovered(db: &Db, start: &Model, life: &Life, life_index: usize, wal: Wal) -> Result<Model, String> {
    let recovered = read_all(db)?;
    let mut expected = start.clone();
    let matches = match wal {
        Wal::Logged => matching_prefix(start, &life.attempts, life.durable_attempts, &recovered).is_some(),
        Wal::Unlogged => {
            let metadata = db.metadata().map(|m| String::from_utf8_lossy(&m).into_owned());
            let held = match metadata.as_deref().and_then(|m| m.split_once(':')) {
                Some((life, held)) if life == life_index.to_string() => held
                    .parse::<usize>()
                    .map_err(|e| format!("metadata {metadata:?}: {e}"))?,
                _ => 0,
            };
            if held < life.durable_attempts || held > life.attempts.len() {
                return Err(format!(
                    "the recovered metadata {metadata:?} names {held} writes, {} must survive",
                    life.durable_attempts
                ));
            }
            life.attempts[..held].iter().for_each(|a| apply(&mut expected, a));
            expected == recovered
        }
    };
    if !matches {
        if wal == Wal::Logged {
            life.attempts[..life.durable_attempts]
                .iter()
                .for_each(|a| apply(&mut expected, a));
        }
        return Err(format!(
            "the recovered state is not what the writes promise; against the durable (or named) prefix: {}",
            describe_difference(&expected, &recovered)
        ));
    }
    Ok(recovered)
}

/// Runs every round of `seed`; `Err` describes the first broken promise.
fn run_seed(seed: u64, lying: &LyingSyncs, wal: Wal, coverage: &mut Coverage) -> Result<(), String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut fs = SimFs::new(seed);
    let setup = |fs: &SimFs| -> std::io::Result<()> {
        fs.create_dir_all(Path::new(DATA_DIR))?;
        fs.sync_dir(Path::new("/"))
    };
    setup(&fs).map_err(|e| format!("setup: {e}"))?;
    let mut state = Model::new();
    for life_index in 0..LIVES_PER_SEED {
        fs.lie_about_syncs(lying.clone());
        let cut = rng.u64(1..=STEPS_PER_LIFE_MAX);
        fs.freeze_at_step(fs.steps() + cut);
        if rng.u8(..100) < 20 {
            let fault = [Fault::Eio, Fault::NoSpace, Fault::SyncLosesData][rng.usize(..3)];
            fs.fail_at_step(fs.steps() + rng.u64(1..=cut), fault);
            coverage.faults_injected += 1;
        }
        let (db, life) = live(&fs, &mut rng, life_index, &state, wal);
        let mode = if rng.bool() {
            CrashMode::Torn
        } else {
            CrashMode::DropUnsynced
        };
        coverage.rounds += 1;
        coverage.cut_mid_workload += u64::from(fs.is_frozen());
        coverage.attempts += life.attempts.len() as u64;
        coverage.torn_crashes += u64::from(mode == CrashMode::Torn);
        coverage.steps += fs.steps();
        if let Some(db) = &db {
            let stats = db.stats();
            coverage.compactions += stats.compactions;
            coverage.intra_l0_compactions += stats.intra_l0_compactions;
        }
        let after = fs.crash(mode);
        drop(db);
        let round = format!(
            "round {life_index} (power cut at step {cut}, {mode:?}, {} attempts, {} must survive; {})",
            life.attempts.len(),
            life.durable_attempts,
            life.events.join(", ")
        );
        let db = Db::open(DB_DIR, options(Arc::clone(&after) as Arc<dyn FileSystem>))
            .map_err(|e| format!("{round}: reopen failed: {e}"))?;
        let recovered = check_recovered(&db, &state, &life, life_index, wal).map_err(|e| format!("{round}: {e}"))?;
        drop(db);
        for (path, held) in &life.checkpoints {
            let mut expected = state.clone();
            life.attempts[..*held].iter().for_each(|a| apply(&mut expected, a));
            let checkpoint = Db::open(path, options(Arc::clone(&after) as Arc<dyn FileSystem>))
                .map_err(|e| format!("{round}: checkpoint {} does not open: {e}", path.display()))?;
            let found = read_all(&checkpoint).map_err(|e| format!("{round}: checkpoint: {e}"))?;
            if found != expected {
                return Err(format!(
                    "{round}: checkpoint {} differs: {}",
                    path.display(),
                    describe_difference(&expected, &found)
                ));
            }
        }
        state = recovered;
        fs = after;
    }
    Ok(())
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// The first seed and the number of seeds of a run, printed for reruns.
fn seeds(test: &str) -> std::ops::Range<u64> {
    let first = env_u64("STORAGE_SIM_SEED").unwrap_or_else(|| fastrand::u64(..u64::MAX / 2));
    let count = env_u64("STORAGE_SIM_SEEDS").unwrap_or(SEEDS_DEFAULT as u64);
    eprintln!(
        "{test}: seeds {first}..{} (rerun one with STORAGE_SIM_SEED=<seed> STORAGE_SIM_SEEDS=1)",
        first + count
    );
    first..first + count
}

#[test]
fn a_new_database_survives_a_power_cut_after_its_first_synced_write() {
    // Db::open creates the directory; unless it syncs the parent, a power cut
    // forgets the directory and every synced write in it.
    let fs = SimFs::new(0);
    fs.create_dir_all(Path::new(DATA_DIR)).expect("mkdir");
    fs.sync_dir(Path::new("/")).expect("sync");
    let db = Db::open(DB_DIR, options(Arc::clone(&fs) as Arc<dyn FileSystem>)).expect("open");
    let mut batch = WriteBatch::new();
    batch.put("key", "value");
    db.write(
        batch,
        &WriteOptions {
            sync: true,
            disable_wal: false,
        },
    )
    .expect("write");
    let after = fs.crash(CrashMode::DropUnsynced);
    drop(db);
    let db = Db::open(DB_DIR, options(after as Arc<dyn FileSystem>)).expect("reopen");
    assert_eq!(db.get(b"key").expect("get").as_deref(), Some(&b"value"[..]));
}

#[test]
fn a_database_whose_creation_was_cut_short_opens() {
    // A crash between the first manifest and CURRENT leaves the manifest
    // behind; the next open must not trip over it.
    let fs = SimFs::new(0);
    fs.create_dir_all(Path::new(DB_DIR)).expect("mkdir");
    fs.sync_dir(Path::new("/")).expect("sync");
    fs.sync_dir(Path::new(DATA_DIR)).expect("sync");
    let leftover = fs
        .create_new(&Path::new(DB_DIR).join("MANIFEST-000001"))
        .expect("create");
    leftover.append(b"half a header").expect("append");
    fs.sync_dir(Path::new(DB_DIR)).expect("sync");
    let db = Db::open(DB_DIR, options(Arc::clone(&fs) as Arc<dyn FileSystem>)).expect("open");
    db.put("key", "value").expect("put");
    drop(db);
    let db = Db::open(DB_DIR, options(fs as Arc<dyn FileSystem>)).expect("reopen");
    assert_eq!(db.get(b"key").expect("get").as_deref(), Some(&b"value"[..]));
}

/// Runs the seeds of `test` with honest syncs; panics on the first failure.
fn survive_power_cuts(test: &str, wal: Wal) {
    let started = std::time::Instant::now();
    let range = seeds(test);
    let count = range.end - range.start;
    let mut coverage = Coverage::default();
    for seed in range {
        if let Err(failure) = run_seed(seed, &LyingSyncs::None, wal, &mut coverage) {
            panic!(
                "seed {seed} failed: {failure}\n  rerun: STORAGE_SIM_SEED={seed} STORAGE_SIM_SEEDS=1 \
                 cargo test -p storage --test sim_crash {test}"
            );
        }
    }
    eprintln!("{count} seeds passed in {:.1?}: {coverage:?}", started.elapsed());
    assert!(
        coverage.rounds < 40 || coverage.cut_mid_workload * 2 >= coverage.rounds,
        "most power cuts must land while the workload runs: {coverage:?}"
    );
}

#[test]
fn acknowledged_writes_survive_power_cuts_at_any_io_step() {
    // The engine's promise under a real power cut: synced writes kept, no
    // half batch, nothing invented, recovery always possible.
    survive_power_cuts("acknowledged_writes_survive_power_cuts_at_any_io_step", Wal::Logged);
}

#[test]
fn unlogged_writes_recover_to_exactly_what_their_metadata_names() {
    // Raft's contract with the engine: after a power cut the tables hold
    // exactly the writes up to the recovered metadata, so re-applying the
    // log from there neither skips nor repeats one.
    survive_power_cuts(
        "unlogged_writes_recover_to_exactly_what_their_metadata_names",
        Wal::Unlogged,
    );
}

/// Runs seeds with `lying` syncs until one fails; panics if none does.
fn negative_control(test: &str, lying: LyingSyncs, wal: Wal) {
    let first = env_u64("STORAGE_SIM_SEED").unwrap_or_else(|| fastrand::u64(..u64::MAX / 2));
    eprintln!("{test}: seeds from {first} (rerun with STORAGE_SIM_SEED={first})");
    for seed in first..first + CONTROL_SEEDS_MAX as u64 {
        if let Err(failure) = run_seed(seed, &lying, wal, &mut Coverage::default()) {
            eprintln!("{test}: seed {seed} caught it: {failure}");
            return;
        }
    }
    panic!("{CONTROL_SEEDS_MAX} seeds with {lying:?} found nothing: the crash test cannot fail");
}

#[test]
fn a_wal_fsync_that_does_nothing_is_caught() {
    // A suite that cannot fail proves nothing: skip the WAL's fsync and it must fail.
    negative_control(
        "a_wal_fsync_that_does_nothing_is_caught",
        LyingSyncs::FilesContaining(".wal".into()),
        Wal::Logged,
    );
}

#[test]
fn a_directory_fsync_that_does_nothing_is_caught() {
    // Without directory syncs new WALs, tables and CURRENT can vanish; the suite must notice.
    negative_control(
        "a_directory_fsync_that_does_nothing_is_caught",
        LyingSyncs::Directories,
        Wal::Logged,
    );
}

#[test]
fn a_manifest_fsync_that_does_nothing_is_caught() {
    // A manifest edit that is not durable loses flushed data or names missing files.
    negative_control(
        "a_manifest_fsync_that_does_nothing_is_caught",
        LyingSyncs::FilesContaining("MANIFEST".into()),
        Wal::Logged,
    );
}

#[test]
fn a_blob_file_fsync_that_does_nothing_is_caught() {
    // Unlogged large values live only in blob files once flushed.
    negative_control(
        "a_blob_file_fsync_that_does_nothing_is_caught",
        LyingSyncs::FilesContaining(".blob".into()),
        Wal::Unlogged,
    );
}

#[test]
fn a_table_fsync_that_does_nothing_is_caught() {
    // Unlogged writes live only in tables; a table that is not durable must be noticed.
    negative_control(
        "a_table_fsync_that_does_nothing_is_caught",
        LyingSyncs::FilesContaining(".sst".into()),
        Wal::Unlogged,
    );
}
