//! Random damage to any file of a database — flipped bytes, zeroed runs,
//! cut or extended files — is met with an error or with data that was
//! written, never with a panic, a hang or a value nobody wrote. This
//! drives every decoder that reads the engine's files (WAL and manifest
//! records, version edits, table footers, index, filter and data blocks,
//! CURRENT) with bytes it did not produce.
//!
//! `STORAGE_DAMAGE_ROUNDS` sets the number of damaged copies (default 120),
//! `STORAGE_SEED` replays one run.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use storage::{Db, Options, WriteBatch, WriteOptions};

/// Every value ever written to each key: after damage a key may read as
/// any of them (an older one, if the newer write was in a lost tail) or as
/// missing, but never as anything else.
type Written = BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>>;

fn options() -> Options {
    Options {
        memtable_bytes_max: 32 * 1024,
        block_bytes_target: 512,
        table_bytes_target: 16 * 1024,
        l0_compaction_trigger: 3,
        ..Options::default()
    }
}

/// A database with tables on two levels, a manifest with many edits and
/// a WAL with unflushed writes; returns what was written.
fn build(dir: &Path, rng: &mut fastrand::Rng) -> Written {
    let mut written = Written::new();
    let db = Db::open(dir, options()).expect("open");
    for round in 0..6u32 {
        for _ in 0..400 {
            let key = format!("key{:04}", rng.u32(..1500)).into_bytes();
            let value = format!("value-{round}-{}", rng.u32(..))
                .repeat(rng.usize(1..4))
                .into_bytes();
            let mut batch = WriteBatch::new();
            if rng.u8(..10) == 0 {
                batch.delete(&key);
            } else {
                batch.put(&key, &value);
                written.entry(key).or_default().insert(value);
            }
            db.write(batch, &WriteOptions::default()).expect("write");
        }
        if round % 2 == 1 {
            db.flush().expect("flush");
        }
    }
    db.compact_range(..).expect("compact");
    for i in 0..200u32 {
        let key = format!("key{:04}", i * 7).into_bytes();
        let value = format!("tail-{i}").into_bytes();
        db.put(&key, &value).expect("put");
        written.entry(key).or_default().insert(value);
    }
    written
}

/// Opens the damaged copy and reads everything; any error is fine, a value
/// that was never written is not.
fn check(dir: &Path, written: &Written, what: &str) {
    let Ok(db) = Db::open(dir, options()) else {
        return;
    };
    for (key, values) in written {
        if let Ok(Some(value)) = db.get(key) {
            assert!(
                values.contains(value.as_ref()),
                "{what}: {key:?} read a value never written"
            );
        }
    }
    let Ok(scan) = db.scan(..) else { return };
    let mut previous: Option<Vec<u8>> = None;
    for pair in scan {
        let Ok((key, value)) = pair else { break };
        let values = written.get(key.as_ref());
        assert!(
            values.is_some_and(|v| v.contains(value.as_ref())),
            "{what}: the scan returned {key:?} with a value never written"
        );
        assert!(
            previous.as_deref().is_none_or(|p| p < key.as_ref()),
            "{what}: scan out of order"
        );
        previous = Some(key.to_vec());
    }
}

#[test]
fn random_damage_to_any_file_is_an_error_or_written_data_never_a_panic() {
    // A disk returns garbage: the engine must say so, or serve only what was written.
    let seed = common::seed("damage");
    let rounds = common::env_count("STORAGE_DAMAGE_ROUNDS", 120);
    println!("{rounds} rounds (STORAGE_DAMAGE_ROUNDS)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let base = tempfile::tempdir().expect("tempdir");
    let written = build(base.path(), &mut rng);
    for round in 0..rounds {
        let copy = tempfile::tempdir().expect("tempdir");
        let damage = storage::sim::damaged_copy(base.path(), copy.path(), &mut |n| rng.u64(..n));
        let what = format!("round {round}: {}", damage.expect("damaged copy"));
        check(copy.path(), &written, &what);
    }
}
