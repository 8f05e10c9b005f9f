//! Large values kept in blob files: read back through every path, their
//! garbage counted and their space given back, carried by checkpoints and
//! reopens, and damage to them reported rather than returned.

mod common;

use std::path::Path;

use storage::{Db, Options};

fn options() -> Options {
    Options {
        blob_value_bytes_min: Some(256),
        blob_file_bytes_target: 64 * 1024,
        ..common::small_options()
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("key{i:05}").into_bytes()
}

/// A value of 300 to 3,299 bytes that says which key and round wrote it.
fn value(i: usize, round: usize) -> Vec<u8> {
    let mut value = format!("{i}:{round}:").into_bytes();
    value.resize(300 + (i * 37 + round * 11) % 3000, b'a' + (round % 26) as u8);
    value
}

fn blob_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".blob"))
        .collect();
    names.sort();
    names
}

fn table_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("list")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".sst"))
        .map(|e| e.metadata().expect("stat").len())
        .sum()
}

fn write_round(db: &Db, keys: impl Iterator<Item = usize>, round: usize) {
    for i in keys {
        db.put(key(i), value(i, round)).expect("put");
    }
}

fn check(db: &Db, keys: impl Iterator<Item = usize> + Clone, round: usize) {
    for i in keys.clone() {
        let got = db.get(&key(i)).expect("get");
        assert_eq!(got.as_deref(), Some(value(i, round).as_slice()), "get key {i}");
    }
    let first = keys.clone().next().expect("a key");
    let scanned: Vec<(Vec<u8>, Vec<u8>)> = db
        .scan(..)
        .expect("scan")
        .map(|pair| pair.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect::<Result<_, _>>()
        .expect("scan");
    let expected: Vec<(Vec<u8>, Vec<u8>)> = keys.map(|i| (key(i), value(i, round))).collect();
    assert_eq!(scanned.len(), expected.len(), "pairs scanned (first key {first})");
    assert!(scanned == expected, "a scan returns every value from its blob file");
}

#[test]
fn large_values_live_in_blob_files_and_tables_hold_only_pointers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), options()).expect("open");
    write_round(&db, 0..400, 0);
    small_value_round_trip(&db);
    db.compact_range(..).expect("compact");
    check(&db, 0..400, 0);
    let stats = db.stats();
    let values: u64 = (0..400).map(|i| value(i, 0).len() as u64).sum();
    assert!(stats.blob_files > 0, "no blob file was written");
    assert!(
        stats.blob_file_bytes >= values,
        "blob files hold {} of {values} value bytes",
        stats.blob_file_bytes
    );
    // The tables hold keys and pointers: a small fraction of the values.
    let tables = table_bytes(dir.path());
    assert!(
        tables * 10 < values,
        "tables hold {tables} bytes for {values} bytes of values"
    );
    drop(db);
    let db = Db::open(dir.path(), options()).expect("reopen");
    check(&db, 0..400, 0);
}

/// A small value written next to the large ones reads back from its table.
fn small_value_round_trip(db: &Db) {
    db.put(b"small", b"tiny").expect("put");
    db.flush().expect("flush");
    assert_eq!(db.get(b"small").expect("get").as_deref(), Some(&b"tiny"[..]));
    db.delete(b"small").expect("delete");
}

#[test]
fn overwritten_values_become_garbage_and_their_files_go() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), options()).expect("open");
    write_round(&db, 0..300, 0);
    db.compact_range(..).expect("compact");
    let first_files = blob_files(dir.path());
    assert!(!first_files.is_empty());
    // Every key overwritten: once compacted, no table points into the
    // first round's files, which must be gone from the version and disk.
    write_round(&db, 0..300, 1);
    db.compact_range(..).expect("compact");
    check(&db, 0..300, 1);
    let left = still_there(&first_files, dir.path());
    assert!(
        left.is_empty(),
        "files of overwritten values are still on disk: {left:?}"
    );
    assert_eq!(db.stats().blob_garbage_bytes, 0, "nothing left counts as garbage");
    // Deleting every key leaves nothing at all once compacted.
    for i in 0..300 {
        db.delete(key(i)).expect("delete");
    }
    db.compact_range(..).expect("compact");
    assert_eq!(db.stats().blob_files, 0);
    assert!(blob_files(dir.path()).is_empty(), "{:?}", blob_files(dir.path()));
}

/// Writes keys 0..300, then overwrites three in four, each round compacted:
/// the first round's blob files are then mostly garbage but still hold
/// live values. Returns their names.
fn three_in_four_overwritten(db: &Db, dir: &Path) -> Vec<String> {
    write_round(db, 0..300, 0);
    db.compact_range(..).expect("compact");
    let first_files = blob_files(dir);
    write_round(db, (0..300).filter(|i| i % 4 != 0), 1);
    db.compact_range(..).expect("compact");
    first_files
}

/// Which of `files` are still in `dir`.
fn still_there(files: &[String], dir: &Path) -> Vec<String> {
    let now = blob_files(dir);
    files.iter().filter(|f| now.contains(f)).cloned().collect()
}

#[test]
fn mostly_garbage_files_have_their_live_values_moved_and_go() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), options()).expect("open");
    let first_files = three_in_four_overwritten(&db, dir.path());
    // The garbage is counted now. Writes across the whole key range make
    // the next compaction rewrite every table, meeting every live value.
    write_round(&db, (0..300).filter(|i| i % 50 == 1), 2);
    db.compact_range(..).expect("compact");
    for i in 0..300 {
        let round = match i {
            _ if i % 50 == 1 => 2,
            _ if i % 4 != 0 => 1,
            _ => 0,
        };
        let got = db.get(&key(i)).expect("get");
        assert_eq!(got.as_deref(), Some(value(i, round).as_slice()), "key {i}");
    }
    let left = still_there(&first_files, dir.path());
    assert!(left.is_empty(), "mostly-garbage files were kept: {left:?}");
    let stats = db.stats();
    assert!(
        stats.blob_garbage_bytes * 2 <= stats.blob_file_bytes,
        "garbage {} of {} bytes",
        stats.blob_garbage_bytes,
        stats.blob_file_bytes
    );
}

#[test]
fn mostly_garbage_files_are_collected_when_no_write_comes_to_compact_their_tables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), options()).expect("open");
    let first_files = three_in_four_overwritten(&db, dir.path());
    // No more writes: the compaction threads, idle otherwise, rewrite the
    // tables that still point into the first round's files.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let left = loop {
        let left = still_there(&first_files, dir.path());
        if left.is_empty() || std::time::Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(left.is_empty(), "mostly-garbage files were never collected: {left:?}");
    drop(db);
    let db = Db::open(dir.path(), options()).expect("reopen");
    for i in 0..300 {
        let round = usize::from(i % 4 != 0);
        assert_eq!(
            db.get(&key(i)).expect("get").as_deref(),
            Some(value(i, round).as_slice()),
            "key {i}"
        );
    }
}

#[test]
fn garbage_is_counted_exactly_under_random_overwrites_and_deletes() {
    // A value counted dead too early loses data when its file goes; one
    // never counted keeps its file forever. After a full compaction the
    // live bytes in blob files must be exactly the large values the keys hold.
    let seed = common::seed("garbage_is_counted_exactly_under_random_overwrites_and_deletes");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), options()).expect("open");
    let mut model = std::collections::BTreeMap::new();
    for round in 0..4000 {
        let i = rng.usize(..500);
        if rng.u8(..10) == 0 {
            db.delete(key(i)).expect("delete");
            model.remove(&i);
        } else {
            // Some values stay below the threshold, in the tables.
            let mut v = value(i, round);
            v.truncate(rng.usize(100..v.len()));
            db.put(key(i), &v).expect("put");
            model.insert(i, v);
        }
    }
    db.compact_range(..).expect("compact");
    for (i, v) in &model {
        assert_eq!(db.get(&key(*i)).expect("get").as_deref(), Some(v.as_slice()), "key {i}");
    }
    let large: u64 = model.values().filter(|v| v.len() >= 256).map(|v| v.len() as u64).sum();
    let stats = db.stats();
    assert_eq!(
        stats.blob_value_bytes - stats.blob_garbage_bytes,
        large,
        "live blob bytes against the large values the keys hold (seed {seed})"
    );
}

#[test]
fn a_snapshot_keeps_the_values_it_sees() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), options()).expect("open");
    write_round(&db, 0..200, 0);
    let snapshot = db.snapshot();
    write_round(&db, 0..200, 1);
    db.compact_range(..).expect("compact");
    for i in 0..200 {
        assert_eq!(
            snapshot.get(&key(i)).expect("get").as_deref(),
            Some(value(i, 0).as_slice())
        );
    }
    check(&db, 0..200, 1);
    drop(snapshot);
    db.compact_range(..).expect("compact");
    check(&db, 0..200, 1);
}

#[test]
fn garbage_counts_survive_a_reopen_and_a_checkpoint_carries_the_blob_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), options()).expect("open");
    write_round(&db, 0..300, 0);
    db.compact_range(..).expect("compact");
    write_round(&db, (0..300).filter(|i| i % 10 == 0), 1);
    db.compact_range(..).expect("compact");
    let before = db.stats();
    assert!(before.blob_garbage_bytes > 0, "some values are garbage");
    let checkpoint = dir.path().join("checkpoint");
    db.checkpoint(&checkpoint).expect("checkpoint");
    drop(db);
    let db = Db::open(dir.path(), options()).expect("reopen");
    let after = db.stats();
    assert_eq!(after.blob_files, before.blob_files);
    assert_eq!(
        after.blob_garbage_bytes, before.blob_garbage_bytes,
        "garbage counts are replayed"
    );
    drop(db);
    // The checkpoint opens on its own, after the source is gone.
    let copy = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(&checkpoint).expect("list").flatten() {
        std::fs::copy(entry.path(), copy.path().join(entry.file_name())).expect("copy");
    }
    drop(dir);
    let db = Db::open(copy.path(), options()).expect("open the checkpoint");
    for i in 0..300 {
        let round = usize::from(i % 10 == 0);
        assert_eq!(
            db.get(&key(i)).expect("get").as_deref(),
            Some(value(i, round).as_slice())
        );
    }
    assert_eq!(db.stats().blob_garbage_bytes, before.blob_garbage_bytes);
}

#[test]
fn a_flipped_byte_in_a_blob_file_is_an_error_not_wrong_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), options()).expect("open");
    write_round(&db, 0..100, 0);
    db.flush().expect("flush");
    drop(db);
    for name in blob_files(dir.path()) {
        let path = dir.path().join(name);
        let mut bytes = std::fs::read(&path).expect("read");
        // Past the header and the first record's framing: inside values.
        for at in (40..bytes.len()).step_by(997) {
            bytes[at] ^= 0x20;
        }
        std::fs::write(&path, bytes).expect("write");
    }
    let db = Db::open(dir.path(), options()).expect("open");
    let mut errors = 0;
    for i in 0..100 {
        match db.get(&key(i)) {
            Ok(got) => assert_eq!(got.as_deref(), Some(value(i, 0).as_slice()), "key {i}: wrong data"),
            Err(error) => {
                assert!(error.is_corruption(), "{error}");
                errors += 1;
            }
        }
    }
    assert!(errors > 0, "no damaged value was noticed");
}

#[test]
fn a_missing_blob_file_fails_the_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), options()).expect("open");
    write_round(&db, 0..50, 0);
    db.flush().expect("flush");
    drop(db);
    let first = blob_files(dir.path()).into_iter().next().expect("a blob file");
    std::fs::remove_file(dir.path().join(&first)).expect("remove");
    let Err(error) = Db::open(dir.path(), options()) else {
        panic!("opened without a blob file its manifest names");
    };
    assert!(error.to_string().contains("blob file"), "{error}");
}

#[test]
fn blob_options_are_validated() {
    let dir = tempfile::tempdir().expect("tempdir");
    for bad in [
        Options {
            blob_value_bytes_min: Some(8),
            ..Options::default()
        },
        Options {
            blob_collection_garbage_ratio: 1.5,
            ..Options::default()
        },
        Options {
            blob_file_bytes_target: 10,
            ..Options::default()
        },
    ] {
        let Err(error) = Db::open(dir.path(), bad) else {
            panic!("bad blob options accepted");
        };
        assert!(error.to_string().contains("blob"), "{error}");
    }
}
