//! Model-based randomized test: thousands of random operations on the engine
//! and on a `BTreeMap`, which must always agree.

mod common;

use std::collections::BTreeMap;
use std::ops::Bound;

use storage::{Db, WriteBatch, WriteOptions};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn random_key(rng: &mut fastrand::Rng) -> Vec<u8> {
    // A small key space so that overwrites, deletes and shadowing are common.
    format!("key{:04}", rng.u32(..600)).into_bytes()
}

fn random_value(rng: &mut fastrand::Rng) -> Vec<u8> {
    let len = if rng.u8(..10) == 0 {
        rng.usize(100..2000)
    } else {
        rng.usize(0..40)
    };
    (0..len).map(|_| rng.alphanumeric() as u8).collect()
}

fn check_scan(db: &Db, model: &Model, rng: &mut fastrand::Rng) {
    let (a, b) = (random_key(rng), random_key(rng));
    let (start, end) = if a <= b { (a, b) } else { (b, a) };
    let limit = rng.usize(0..50);
    let got: Vec<(Vec<u8>, Vec<u8>)> = db
        .scan((Bound::Included(start.as_slice()), Bound::Excluded(end.as_slice())))
        .expect("scan")
        .take(limit)
        .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).expect("scan item"))
        .collect();
    let want: Vec<(Vec<u8>, Vec<u8>)> = model
        .range::<[u8], _>((Bound::Included(start.as_slice()), Bound::Excluded(end.as_slice())))
        .take(limit)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(got, want, "scan [{start:?}, {end:?}) limit {limit}");
}

#[test]
fn random_operations_match_a_btreemap_across_reopens_flushes_and_compactions() {
    // The engine must behave exactly like an ordered map, whatever the tree's shape.
    let seed = common::seed("model");
    let ops = common::env_count("STORAGE_MODEL_OPS", 6000);
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = Db::open(dir.path(), common::small_options()).expect("open");
    let mut model = Model::new();
    // Counters restart with each open; these sum them over the whole run.
    let (mut flushes, mut compactions) = (0, 0);

    for op in 0..ops {
        match rng.u32(..100) {
            0..=39 => {
                let (k, v) = (random_key(&mut rng), random_value(&mut rng));
                db.put(&k, &v).expect("put");
                model.insert(k, v);
            }
            40..=49 => {
                let k = random_key(&mut rng);
                db.delete(&k).expect("delete");
                model.remove(&k);
            }
            50..=59 => {
                let mut batch = WriteBatch::new();
                for _ in 0..rng.usize(1..20) {
                    let k = random_key(&mut rng);
                    if rng.bool() {
                        let v = random_value(&mut rng);
                        batch.put(&k, &v);
                        model.insert(k, v);
                    } else {
                        batch.delete(&k);
                        model.remove(&k);
                    }
                }
                db.write(
                    batch,
                    &WriteOptions {
                        sync: rng.u8(..20) == 0,
                        disable_wal: false,
                    },
                )
                .expect("batch");
            }
            60..=79 => {
                let k = random_key(&mut rng);
                let got = db.get(&k).expect("get").map(|v| v.to_vec());
                assert_eq!(got, model.get(&k).cloned(), "get {k:?} at op {op}");
            }
            80..=89 => check_scan(&db, &model, &mut rng),
            90..=92 => {
                let stats = db.stats();
                flushes += stats.flushes;
                compactions += stats.compactions;
                drop(db);
                db = Db::open(dir.path(), common::small_options()).expect("reopen");
            }
            93..=95 => db.flush().expect("flush"),
            96 => {
                if rng.bool() {
                    db.compact_range(..).expect("compact");
                } else {
                    // A sub-range moves some files down and leaves others.
                    let (a, b) = (random_key(&mut rng), random_key(&mut rng));
                    let (start, end) = if a <= b { (a, b) } else { (b, a) };
                    db.compact_range(start.as_slice()..=end.as_slice())
                        .expect("compact a range");
                }
            }
            _ => {
                // A snapshot keeps seeing its state while writes go on.
                let snapshot = db.snapshot();
                let frozen = model.clone();
                for _ in 0..20 {
                    let k = random_key(&mut rng);
                    db.put(&k, b"after-snapshot").expect("put");
                    model.insert(k, b"after-snapshot".to_vec());
                }
                db.flush().expect("flush");
                let seen: Model = snapshot
                    .scan(..)
                    .expect("scan")
                    .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).expect("item"))
                    .collect();
                assert_eq!(seen, frozen, "snapshot view at op {op}");
            }
        }
    }
    let all: Model = db
        .scan(..)
        .expect("scan")
        .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).expect("item"))
        .collect();
    assert_eq!(all, model);
    let stats = db.stats();
    flushes += stats.flushes;
    compactions += stats.compactions;
    assert!(
        flushes > 0 && compactions > 0,
        "the test must exercise flushes ({flushes}) and compactions ({compactions})"
    );
}

#[test]
fn concurrent_writers_are_all_committed_and_grouped() {
    // Group commit must lose no writer and keep each batch whole.
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), common::small_options()).expect("open");
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..300 {
                    let mut batch = WriteBatch::new();
                    batch
                        .put(format!("t{t}-{i:04}-a"), b"x")
                        .put(format!("t{t}-{i:04}-b"), b"y");
                    db.write(
                        batch,
                        &WriteOptions {
                            sync: i % 10 == 0,
                            disable_wal: false,
                        },
                    )
                    .expect("write");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("writer thread");
    }
    let count = db.scan(..).expect("scan").count();
    assert_eq!(count, 8 * 300 * 2);
    let stats = db.stats();
    assert_eq!(stats.write_batches, 8 * 300);
    assert!(stats.write_groups <= stats.write_batches);
}

#[test]
fn writers_slowed_and_stopped_by_compaction_debt_lose_nothing() {
    // With compaction held to 1 MiB/s, L0 outgrows its slowdown and stop
    // triggers under four writers: the write controller must pace and stop
    // them, and every write must still be there afterwards.
    let dir = tempfile::tempdir().expect("tempdir");
    let options = storage::Options {
        compaction_bytes_per_sec: 1 << 20,
        ..common::small_options()
    };
    let db = Db::open(dir.path(), options.clone()).expect("open");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..2500 {
                    db.put(format!("t{t}-{i:05}"), format!("value-{t}-{i}-{}", "v".repeat(60)))
                        .expect("put");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("writer thread");
    }
    let stats = db.stats();
    assert!(
        stats.write_slowdowns > 0 && stats.write_stalls > 0,
        "the load must be paced and stopped: {stats:?}"
    );
    drop(db);
    let db = Db::open(dir.path(), options).expect("reopen");
    for t in 0..4 {
        for i in 0..2500 {
            let got = db.get(format!("t{t}-{i:05}").as_bytes()).expect("get");
            assert_eq!(
                got.as_deref(),
                Some(format!("value-{t}-{i}-{}", "v".repeat(60)).as_bytes()),
                "t{t}-{i:05}"
            );
        }
    }
}

#[test]
fn checkpoint_opens_as_an_independent_copy() {
    // A checkpoint is a consistent, self-contained database (the basis of Raft snapshots).
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path().join("db"), common::small_options()).expect("open");
    for i in 0..2000u32 {
        let mut batch = WriteBatch::new();
        batch
            .put(format!("k{i:05}"), i.to_string())
            .set_metadata(i.to_string().into_bytes());
        db.write(
            batch,
            &WriteOptions {
                sync: false,
                disable_wal: true,
            },
        )
        .expect("write");
    }
    let target = dir.path().join("checkpoint");
    let metadata = db.checkpoint(&target).expect("checkpoint");
    assert_eq!(
        metadata.as_deref(),
        Some(&b"1999"[..]),
        "the checkpoint reports the state it holds"
    );
    db.put(b"k00000", b"changed after checkpoint").expect("put");
    db.compact_range(..).expect("compact");
    assert!(db.checkpoint(&target).is_err(), "an existing target is refused");

    let copy = Db::open(&target, common::small_options()).expect("open checkpoint");
    assert_eq!(copy.get(b"k00000").expect("get").as_deref(), Some(&b"0"[..]));
    assert_eq!(copy.scan(..).expect("scan").count(), 2000);
    assert_eq!(copy.flushed_metadata().as_deref(), Some(&b"1999"[..]));
}

#[test]
fn bad_input_is_refused_whole() {
    // Limits give a clear error and nothing of the batch is applied.
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), common::small_options()).expect("open");
    let mut batch = WriteBatch::new();
    batch.put(b"good", b"v").put(b"", b"empty key");
    let err = db.write(batch, &WriteOptions::default()).expect_err("refused");
    assert!(matches!(err, storage::Error::InvalidArgument(_)), "{err}");
    assert_eq!(db.get(b"good").expect("get"), None);
    let huge = vec![0u8; storage::VALUE_BYTES_MAX + 1];
    assert!(db.put(b"k", &huge).is_err());
    assert!(matches!(
        Db::open(dir.path(), common::small_options()),
        Err(storage::Error::Locked { .. })
    ));
}
