//! Real crash tests: a child process writes while the parent kills it with
//! SIGKILL at a random moment; the reopened database must hold every write
//! the child saw acknowledged.
//!
//! The child is this same test binary, re-run with `CRASH_CHILD_*`
//! variables set, running only the `crash_child` entry point.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use storage::{Db, WriteBatch, WriteOptions};

const CHILD_DIR: &str = "CRASH_CHILD_DIR";
const CHILD_MODE: &str = "CRASH_CHILD_MODE";
const CHILD_WRITERS: usize = 4;

fn value_for(key: &str) -> Vec<u8> {
    format!("value-of-{key}").repeat(3).into_bytes()
}

/// Entry point of the child process; does nothing in a normal test run.
#[test]
fn crash_child() {
    let (Ok(dir), Ok(mode)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_MODE)) else {
        return;
    };
    let dir = Path::new(&dir);
    let db = Db::open(dir.join("db"), common::small_options()).expect("child open");
    match mode.as_str() {
        "sync" => child_sync_writes(&db, dir),
        "no-wal" => child_unlogged_batches(&db),
        other => panic!("unknown child mode {other}"),
    }
}

/// Writers put keys with `sync: true` and log each acknowledged key.
fn child_sync_writes(db: &Db, dir: &Path) {
    let run = std::process::id();
    let threads: Vec<_> = (0..CHILD_WRITERS)
        .map(|writer| {
            let db = db.clone();
            let ack_path = dir.join("acked");
            std::thread::spawn(move || {
                let mut acked = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(ack_path)
                    .expect("ack log");
                for i in 0u64.. {
                    let key = format!("r{run}-w{writer}-{i:06}");
                    let mut batch = WriteBatch::new();
                    batch.put(&key, value_for(&key));
                    if i.is_multiple_of(7) {
                        batch.delete(format!("r{run}-w{writer}-{:06}", i / 2));
                    }
                    db.write(
                        batch,
                        &WriteOptions {
                            sync: true,
                            disable_wal: false,
                        },
                    )
                    .expect("write");
                    // One write(2) per line on an O_APPEND file: a kill never tears it.
                    acked.write_all(format!("{key}\n").as_bytes()).expect("ack");
                }
            })
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
}

/// Batches `n` put `b{n}` and set `counter` to `n`, with metadata `n`, all
/// without the WAL: only flushed batches survive, and exactly those.
fn child_unlogged_batches(db: &Db) {
    let start: u64 = db
        .get(b"counter")
        .expect("get")
        .map(|v| String::from_utf8_lossy(&v).parse().expect("counter"))
        .map_or(0, |n: u64| n + 1);
    for n in start.. {
        let mut batch = WriteBatch::new();
        batch
            .put(format!("b{n:08}"), n.to_string())
            .put(b"counter", n.to_string())
            .set_metadata(n.to_string().into_bytes());
        db.write(
            batch,
            &WriteOptions {
                sync: false,
                disable_wal: true,
            },
        )
        .expect("write");
    }
}

fn run_child_and_kill(dir: &Path, mode: &str, rng: &mut fastrand::Rng) {
    let exe = std::env::current_exe().expect("test binary");
    // The child's panic message, if it dies by itself, is the only clue.
    let stderr_path = dir.join("child-stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("child stderr file");
    let mut child = Command::new(exe)
        .args(["--exact", "crash_child", "--nocapture", "--test-threads", "1"])
        .env(CHILD_DIR, dir)
        .env(CHILD_MODE, mode)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn child");
    // Let it open (which includes recovery) and write for a random while.
    let started = Instant::now();
    let deadline = Duration::from_millis(rng.u64(150..600));
    while started.elapsed() < deadline {
        if let Some(status) = child.try_wait().expect("wait") {
            let said = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            panic!("child exited by itself with {status}; its stderr:\n{said}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
}

#[test]
fn acknowledged_sync_writes_survive_sigkill() {
    // The core durability promise: what a sync write acknowledged is there after a crash.
    let seed = common::seed("crash-sync");
    let mut rng = fastrand::Rng::with_seed(seed);
    let iterations = common::env_count("STORAGE_CRASH_ITERATIONS", 20);
    let dir = tempfile::tempdir().expect("tempdir");
    for iteration in 0..iterations {
        run_child_and_kill(dir.path(), "sync", &mut rng);
        let db = Db::open(dir.path().join("db"), common::small_options())
            .unwrap_or_else(|e| panic!("iteration {iteration}: reopen after crash failed: {e}"));
        let acked = std::fs::read_to_string(dir.path().join("acked")).unwrap_or_default();
        // A writer's next key after its last acknowledged one may have been
        // written (unacknowledged) before the kill, with its delete.
        let mut next_keys = std::collections::HashMap::new();
        for key in acked.lines() {
            if let Some((prefix, i)) = key.rsplit_once('-') {
                let i: u64 = i.parse().expect("key number");
                let next = next_keys.entry(prefix.to_string()).or_insert(0);
                *next = (*next).max(i + 1);
            }
        }
        let maybe_written: Vec<String> = next_keys.iter().map(|(prefix, i)| format!("{prefix}-{i:06}")).collect();
        let deleted: HashSet<String> = acked
            .lines()
            .chain(maybe_written.iter().map(String::as_str))
            .filter_map(|key| {
                // Key i of a writer deletes key i/2 in the same batch when i % 7 == 0.
                let (prefix, i) = key.rsplit_once('-')?;
                let i: u64 = i.parse().ok()?;
                i.is_multiple_of(7).then(|| format!("{prefix}-{:06}", i / 2))
            })
            .collect();
        let mut checked = 0;
        for key in acked.lines() {
            let got = db.get(key.as_bytes()).expect("get");
            if deleted.contains(key) {
                continue;
            }
            assert_eq!(
                got.as_deref(),
                Some(value_for(key).as_slice()),
                "iteration {iteration}: acked key {key} lost"
            );
            checked += 1;
        }
        // The engine is consistent: a full scan agrees with point reads.
        for pair in db.scan(..).expect("scan") {
            let (key, value) = pair.expect("scan item");
            assert_eq!(db.get(&key).expect("get").as_deref(), Some(&value[..]));
        }
        eprintln!("iteration {iteration}: {checked} acknowledged keys present");
    }
}

#[test]
fn unlogged_batches_survive_exactly_up_to_the_flushed_metadata() {
    // With the WAL off (Raft mode) the state after a crash is exactly the flushed prefix it names.
    let seed = common::seed("crash-no-wal");
    let mut rng = fastrand::Rng::with_seed(seed);
    let iterations = common::env_count("STORAGE_CRASH_ITERATIONS", 20);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut last_seen: Option<u64> = None;
    for iteration in 0..iterations {
        run_child_and_kill(dir.path(), "no-wal", &mut rng);
        let db = Db::open(dir.path().join("db"), common::small_options())
            .unwrap_or_else(|e| panic!("iteration {iteration}: reopen after crash failed: {e}"));
        let parse = |v: Option<bytes::Bytes>| v.map(|v| String::from_utf8_lossy(&v).parse::<u64>().expect("number"));
        let metadata = parse(db.flushed_metadata());
        assert_eq!(
            parse(db.metadata()),
            metadata,
            "without a WAL the newest metadata is the flushed one"
        );
        let counter = parse(db.get(b"counter").expect("get"));
        assert_eq!(counter, metadata, "iteration {iteration}: data and metadata disagree");
        assert!(
            metadata >= last_seen,
            "iteration {iteration}: flushed state went backwards"
        );
        if let Some(m) = metadata {
            for n in [0, m / 2, m] {
                assert_eq!(
                    db.get(format!("b{n:08}").as_bytes()).expect("get").as_deref(),
                    Some(n.to_string().as_bytes())
                );
            }
            assert_eq!(
                db.get(format!("b{:08}", m + 1).as_bytes()).expect("get"),
                None,
                "a batch beyond the metadata survived"
            );
            assert_eq!(db.scan(&b"b"[..]..&b"c"[..]).expect("scan").count() as u64, m + 1);
        }
        last_seen = metadata;
        eprintln!("iteration {iteration}: state up to batch {metadata:?}");
    }
    assert!(
        last_seen.is_some(),
        "no batch was ever flushed: the test proved nothing"
    );
}
