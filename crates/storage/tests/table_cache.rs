//! The table cache seen from the outside: a database of many more tables
//! than the open-file limit reads correctly with that many files open at
//! most, and opening it reads no table.

mod common;

use storage::{Db, Options};

/// The open-file limit these tests set (the smallest allowed).
const LIMIT_FILES: u64 = storage::TABLE_FILES_OPEN_MIN as u64;

/// Small memtables and tables, so that a few thousand writes make dozens of tables.
fn many_table_options() -> Options {
    Options {
        table_files_open_max: LIMIT_FILES as usize,
        ..common::small_options()
    }
}

fn key(i: u32) -> Vec<u8> {
    format!("key{:08}", i.wrapping_mul(2_654_435_761) % 1_000_000_007).into_bytes()
}

fn value(i: u32) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat((i % 50) as usize)).into_bytes()
}

#[test]
fn reads_over_many_tables_keep_open_files_within_the_limit() {
    // A database with far more tables than the limit must answer every read with at most that many open.
    let dir = tempfile::tempdir().expect("temp dir");
    let count = 6_000;
    {
        let db = Db::open(dir.path(), many_table_options()).expect("open");
        for i in 0..count {
            db.put(key(i), value(i)).expect("put");
        }
        db.flush().expect("flush");
        // Settle the tree, so no compaction (which holds its inputs open) runs after the reopen.
        db.compact_range(..).expect("compact");
        let stats = db.stats();
        let tables: u64 = stats.levels.iter().map(|l| l.files).sum();
        println!("{tables} tables, per level {:?}", stats.levels);
        assert!(tables > 4 * LIMIT_FILES, "only {tables} tables");
        assert!(stats.table_files_open <= LIMIT_FILES, "{stats:?}");
    }
    let db = Db::open(dir.path(), many_table_options()).expect("reopen");
    let stats = db.stats();
    assert_eq!(stats.table_opens, 0, "opening the database must read no table");
    assert_eq!(stats.table_files_open, 0);
    let seed = common::seed("reads_over_many_tables_keep_open_files_within_the_limit");
    let mut rng = fastrand::Rng::with_seed(seed);
    for _ in 0..3 * count {
        let i = rng.u32(..count + 100);
        let expected = (i < count).then(|| value(i));
        let found = db.get(&key(i)).expect("get").map(|v| v.to_vec());
        assert_eq!(found, expected, "key {i}");
        let open = db.stats().table_files_open;
        assert!(open <= LIMIT_FILES, "{open} table files open, limit {LIMIT_FILES}");
    }
    // A full scan opens one table per level at a time.
    let scanned = db.scan(..).expect("scan").count();
    assert_eq!(scanned, count as usize);
    let stats = db.stats();
    println!("{stats:?}");
    assert!(stats.table_opens > LIMIT_FILES, "tables were evicted and reopened");
    assert!(stats.table_files_open <= LIMIT_FILES);
}

#[test]
fn an_open_file_limit_below_the_minimum_is_refused() {
    // Options are validated: a limit too small to read one table per level is an error.
    let dir = tempfile::tempdir().expect("temp dir");
    let options = Options {
        table_files_open_max: storage::TABLE_FILES_OPEN_MIN - 1,
        ..Options::default()
    };
    let error = Db::open(dir.path(), options).expect_err("refused");
    assert!(matches!(error, storage::Error::InvalidArgument(_)), "{error:?}");
}

#[test]
fn a_missing_table_is_found_at_open_without_opening_tables() {
    // Opening reads no table, yet a table the manifest names must not be missed until a read.
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let db = Db::open(dir.path(), many_table_options()).expect("open");
        for i in 0..500 {
            db.put(key(i), value(i)).expect("put");
        }
        db.flush().expect("flush");
    }
    let table = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|entry| entry.expect("entry").path())
        .find(|path| path.extension().is_some_and(|ext| ext == "sst"))
        .expect("a table was written");
    std::fs::remove_file(&table).expect("remove");
    let error = Db::open(dir.path(), many_table_options()).expect_err("a table is missing");
    assert!(error.is_corruption(), "{error:?}");
}
