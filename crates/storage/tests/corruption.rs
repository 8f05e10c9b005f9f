//! Damaged files: a torn tail is recovered from, damage anywhere else is
//! reported and never turned into wrong data.

mod common;

use std::path::{Path, PathBuf};

use storage::{Db, Error, Options, WriteBatch, WriteOptions};

fn files_with_suffix(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    files
}

fn largest_wal(dir: &Path) -> PathBuf {
    files_with_suffix(dir, ".wal")
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).expect("stat").len())
        .expect("a WAL file")
}

fn write_synced(db: &Db, count: u32) {
    for i in 0..count {
        let mut batch = WriteBatch::new();
        batch.put(format!("key{i:04}"), format!("value{i}"));
        db.write(
            batch,
            &WriteOptions {
                sync: true,
                disable_wal: false,
            },
        )
        .expect("write");
    }
}

#[test]
fn a_torn_wal_tail_is_dropped_and_the_rest_recovered() {
    // A crash mid-append leaves a partial record; everything before it must come back.
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    write_synced(&db, 100);
    drop(db);
    let wal = largest_wal(dir.path());
    // Sync writes leave zeros written ahead after the last record (whose
    // value ends in a digit): cut into that record.
    let bytes = std::fs::read(&wal).expect("read wal");
    let records_end = bytes.iter().rposition(|&b| b != 0).expect("records") + 1;
    let file = std::fs::OpenOptions::new().write(true).open(&wal).expect("open wal");
    file.set_len(records_end as u64 - 3).expect("truncate");
    drop(file);

    let db = Db::open(dir.path(), Options::default()).expect("a torn tail is not an error");
    for i in 0..99 {
        assert_eq!(
            db.get(format!("key{i:04}").as_bytes()).expect("get").as_deref(),
            Some(format!("value{i}").as_bytes())
        );
    }
    assert_eq!(
        db.get(b"key0099").expect("get"),
        None,
        "the torn record must not be half-applied"
    );
    // New writes after recovery are durable too.
    write_synced(&db, 1);
    drop(db);
    let db = Db::open(dir.path(), Options::default()).expect("reopen");
    assert!(db.get(b"key0000").expect("get").is_some());
}

/// Opens a database with 100 synced writes in its WAL after `damage`
/// flipped bits of that WAL; the error it fails with.
fn open_after_wal_damage(damage: impl FnOnce(&mut [u8])) -> storage::Error {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    write_synced(&db, 100);
    drop(db);
    let wal = largest_wal(dir.path());
    let mut bytes = std::fs::read(&wal).expect("read");
    damage(&mut bytes);
    std::fs::write(&wal, &bytes).expect("write");
    let err = Db::open(dir.path(), Options::default()).expect_err("the damage must be reported");
    assert!(err.is_corruption(), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(".wal") && message.contains("offset"),
        "the message names file and offset: {message}"
    );
    err
}

#[test]
fn a_flipped_byte_in_the_middle_of_the_wal_refuses_to_open() {
    // Silent loss of acknowledged writes is worse than a refusal with a clear message.
    open_after_wal_damage(|bytes| bytes[40] ^= 0x01);
}

#[test]
fn a_flipped_bit_in_a_wal_record_length_refuses_to_open() {
    // A length grown by one flipped bit runs into the zeros written ahead
    // (or past the end of the file) and used to read as a torn last
    // record: every synced write after it was dropped without a word.
    for bit in [4u8, 6] {
        // The first record's length field: after the 16-byte file header
        // and the record's 4-byte checksum.
        let err = open_after_wal_damage(|bytes| bytes[16 + 4 + 1] ^= 1 << bit);
        assert!(err.to_string().contains("damaged length"), "bit {bit}: {err}");
    }
}

#[test]
fn a_flipped_byte_in_a_table_block_is_a_checksum_error_not_wrong_data() {
    // Every block read is verified: damage shows up as an error on the read that meets it.
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), common::small_options()).expect("open");
    for i in 0..200u32 {
        db.put(format!("key{i:04}"), format!("value{i}")).expect("put");
    }
    db.flush().expect("flush");
    db.compact_range(..).expect("compact");
    drop(db);
    let tables = files_with_suffix(dir.path(), ".sst");
    assert!(!tables.is_empty());
    for table in &tables {
        let mut bytes = std::fs::read(table).expect("read");
        bytes[20] ^= 0x10;
        std::fs::write(table, &bytes).expect("write");
    }

    let db = Db::open(
        dir.path(),
        Options {
            block_cache_bytes: 0,
            ..common::small_options()
        },
    )
    .expect("open reads only footers and indexes");
    let mut checksum_errors = 0;
    for i in 0..200u32 {
        match db.get(format!("key{i:04}").as_bytes()) {
            Ok(Some(value)) => assert_eq!(&value[..], format!("value{i}").as_bytes(), "wrong data served"),
            Ok(None) => panic!("key{i:04} vanished without an error"),
            Err(Error::ChecksumMismatch { .. }) => checksum_errors += 1,
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert!(checksum_errors > 0, "the damaged block was never detected");
    let scan: Result<Vec<_>, _> = db.scan(..).expect("scan").collect();
    assert!(scan.is_err(), "a scan over the damaged block must fail");
}
