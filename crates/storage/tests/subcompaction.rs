//! Compactions split into key-range parts that run at the same time must
//! leave exactly the data one unsplit compaction leaves.

mod common;

use std::collections::BTreeMap;

use storage::{Db, Options, WriteBatch, WriteOptions};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn contents(db: &Db) -> Model {
    db.scan(..)
        .expect("scan")
        .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).expect("scan item"))
        .collect()
}

/// Applies the same seeded stream of puts, deletes and batches to `db` and
/// returns the model of what it must hold.
fn load(db: &Db, seed: u64, ops: usize) -> Model {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut model = Model::new();
    for op in 0..ops {
        let mut batch = WriteBatch::new();
        for _ in 0..rng.usize(1..8) {
            let key = format!("key{:05}", rng.u32(..3000)).into_bytes();
            if rng.u8(..6) == 0 {
                batch.delete(&key);
                model.remove(&key);
            } else {
                let value: Vec<u8> = (0..rng.usize(10..120)).map(|_| rng.alphanumeric() as u8).collect();
                batch.put(&key, &value);
                model.insert(key, value);
            }
        }
        db.write(batch, &WriteOptions::default()).expect("write");
        if op % 1500 == 1499 {
            assert_eq!(contents(db), model, "contents after op {op}");
        }
    }
    model
}

#[test]
fn split_compactions_keep_exactly_the_data_of_unsplit_ones() {
    // The same writes through many parallel parts and through single merges end as the same map.
    let seed = common::seed("subcompaction");
    let ops = common::env_count("STORAGE_SUBCOMPACTION_OPS", 6000);
    let split = Options {
        compaction_threads: 3,
        subcompactions_max: 4,
        subcompaction_bytes_min: 4096,
        ..common::small_options()
    };
    let unsplit = Options {
        compaction_threads: 1,
        subcompactions_max: 1,
        ..common::small_options()
    };
    let mut results = Vec::new();
    for options in [split, unsplit] {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path(), options.clone()).expect("open");
        let model = load(&db, seed, ops);
        db.compact_range(..).expect("compact");
        let after = contents(&db);
        assert_eq!(after, model, "contents after a full compaction");
        let stats = db.stats();
        assert!(stats.compactions > 0, "the load must compact");
        drop(db);
        let reopened = Db::open(dir.path(), options.clone()).expect("reopen");
        assert_eq!(contents(&reopened), model, "contents after a reopen");
        results.push((after, stats.subcompactions));
    }
    let (split_contents, split_parts) = &results[0];
    let (unsplit_contents, unsplit_parts) = &results[1];
    assert!(*split_parts > 0, "the split run must run parts on their own threads");
    assert_eq!(*unsplit_parts, 0, "the unsplit run must not split");
    assert_eq!(split_contents, unsplit_contents);
}
