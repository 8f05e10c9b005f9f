//! Compaction as seen from outside: what it reads, how fast, and which
//! files a manual compaction touches.

mod common;

use std::time::{Duration, Instant};

use storage::{Db, Options};

/// Options for a tree whose shape the test controls: big memtables and
/// triggers, so nothing is flushed or compacted unless the test asks.
fn manual_options() -> Options {
    Options {
        memtable_bytes_max: 16 << 20,
        block_bytes_target: 1024,
        block_cache_bytes: 4 << 20,
        l0_compaction_trigger: 20,
        l0_slowdown_trigger: 30,
        l0_stop_trigger: 40,
        ..Options::default()
    }
}

/// Writes `count` keys `{prefix}{i:06}` with values of `value_bytes`, then flushes.
fn write_flushed(db: &Db, prefix: &str, count: usize, value_bytes: usize) {
    for i in 0..count {
        db.put(format!("{prefix}{i:06}"), vec![b'v'; value_bytes]).expect("put");
    }
    db.flush().expect("flush");
}

#[test]
fn compaction_reads_leave_the_block_cache_to_readers() {
    // A merge reads each block once; inserting them would evict what readers use.
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), manual_options()).expect("open");
    write_flushed(&db, "k", 2000, 100);
    write_flushed(&db, "k", 2000, 100);
    db.compact_range(..).expect("compact");
    let stats = db.stats();
    assert!(stats.compactions > 0, "the two L0 files must be merged");
    // The inputs' data blocks are ~470 KiB; what the cache may hold after
    // the merge is the index and filter blocks of the tables it opened
    // (charged to the block cache since the table cache), a few KiB.
    assert!(
        stats.block_cache_bytes < 64 << 10,
        "compaction filled the block cache: {} bytes",
        stats.block_cache_bytes
    );
    db.get(b"k000001").expect("get");
    assert!(db.stats().block_cache_bytes > 0, "a read still fills the cache");
}

#[test]
fn the_compaction_rate_limit_bounds_bytes_merged_per_second() {
    // About 2 MiB merged at 1 MiB/s cannot finish in much under two seconds.
    let dir = tempfile::tempdir().expect("tempdir");
    let options = Options {
        compaction_bytes_per_sec: 1 << 20,
        ..manual_options()
    };
    let db = Db::open(dir.path(), options).expect("open");
    write_flushed(&db, "k", 1000, 1000);
    write_flushed(&db, "k", 1000, 1000);
    let started = Instant::now();
    db.compact_range(..).expect("compact");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500), "2 MiB merged in {took:?}");
    assert_eq!(db.scan(..).expect("scan").count(), 1000);
}

fn table_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".sst"))
        .collect();
    names.sort();
    names
}

#[test]
fn compacting_a_sub_range_leaves_files_outside_it_alone() {
    // A manual compaction of one key range must not rewrite (or wait for) the rest of the tree.
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), manual_options()).expect("open");
    write_flushed(&db, "a", 500, 100);
    write_flushed(&db, "m", 500, 100);
    write_flushed(&db, "z", 500, 100);
    let before = table_files(dir.path());
    assert_eq!(before.len(), 3, "one L0 file per flush: {before:?}");
    db.compact_range(&b"m000100"[..]..&b"m000200"[..])
        .expect("compact a range");
    let after = table_files(dir.path());
    assert!(after.contains(&before[0]), "the a-file was rewritten: {after:?}");
    assert!(after.contains(&before[2]), "the z-file was rewritten: {after:?}");
    let stats = db.stats();
    assert_eq!(stats.levels[0].files, 2, "only the m-file leaves L0");
    assert_eq!(stats.levels[1].files, 1, "the m-file moved down");
    assert_eq!(db.scan(..).expect("scan").count(), 1500);
    // The full range takes the rest down too.
    db.compact_range(..).expect("compact");
    assert_eq!(db.stats().levels[0].files, 0);
    assert_eq!(db.scan(..).expect("scan").count(), 1500);
}

#[test]
fn stats_count_bytes_read_and_written_per_level() {
    // Write amplification per level is what compaction tuning is judged by.
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), manual_options()).expect("open");
    write_flushed(&db, "k", 2000, 100);
    write_flushed(&db, "k", 2000, 100);
    let flushed = db.stats();
    let l0_bytes = flushed.levels[0].bytes;
    assert_eq!(flushed.levels[0].bytes_written, l0_bytes, "flushes count as L0 writes");
    db.compact_range(..).expect("compact");
    let stats = db.stats();
    let l1 = stats.levels[1];
    assert_eq!(l1.bytes_read_from_above, l0_bytes, "the two L0 files were read once");
    assert_eq!(l1.bytes_read_from_level, 0, "L1 was empty");
    assert_eq!(l1.bytes_written, l1.bytes, "the merged file is what L1 holds");
    // The second flush overwrote every key, so the merge halves the data.
    let amplification = l1.write_amplification().expect("L1 was compacted into");
    assert!((0.4..0.6).contains(&amplification), "{amplification}");
    let total = stats.write_amplification().expect("flushed");
    assert!((1.4..1.6).contains(&total), "{total}");
}

#[test]
fn l0_files_merge_within_l0_while_l1_is_busy_and_keep_their_order() {
    // With a slow deeper compaction holding L1, flushes pile up in L0; the
    // newest of them merge in place, and every read must still see the
    // newest version: an intra-L0 output with a newer file number than a
    // file flushed while it ran holds older data than that file.
    let seed = common::seed("intra-l0");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let options = Options {
        l0_compaction_trigger: 2,
        l0_slowdown_trigger: 40,
        l0_stop_trigger: 60,
        subcompactions_max: 1,
        compaction_bytes_per_sec: 2 << 20,
        ..common::small_options()
    };
    let db = Db::open(dir.path(), options.clone()).expect("open");
    let mut model = std::collections::BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut op = 0u64;
    while db.stats().intra_l0_compactions < 8 && Instant::now() < deadline {
        // Keys overwritten often, so versions of one key sit in many files.
        let key = format!("key{:04}", rng.u32(..800));
        if rng.u8(..8) == 0 {
            db.delete(&key).expect("delete");
            model.remove(&key);
        } else {
            let value = format!("{op}-{}", "v".repeat(rng.usize(10..100)));
            db.put(&key, &value).expect("put");
            model.insert(key, value);
        }
        op += 1;
        if op.is_multiple_of(1000) {
            for (key, value) in &model {
                let got = db.get(key.as_bytes()).expect("get");
                assert_eq!(
                    got.as_deref(),
                    Some(value.as_bytes()),
                    "{key} after op {op} (seed {seed})"
                );
            }
        }
    }
    let stats = db.stats();
    assert!(
        stats.intra_l0_compactions >= 8,
        "no intra-L0 compactions in {op} writes: {stats:?} (seed {seed})"
    );
    let check = |db: &Db, when: &str| {
        for key in (0..800).map(|i| format!("key{i:04}")) {
            let got = db.get(key.as_bytes()).expect("get");
            assert_eq!(
                got.as_deref(),
                model.get(&key).map(String::as_bytes),
                "{key} {when} (seed {seed})"
            );
        }
        let scanned: Vec<(Vec<u8>, Vec<u8>)> = db
            .scan(..)
            .expect("scan")
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).expect("scan item"))
            .collect();
        let expected: Vec<(Vec<u8>, Vec<u8>)> = model
            .iter()
            .map(|(k, v)| (k.clone().into_bytes(), v.clone().into_bytes()))
            .collect();
        assert!(scanned == expected, "scan {when} differs (seed {seed})");
    };
    check(&db, "after the load");
    drop(db);
    let db = Db::open(dir.path(), options).expect("reopen");
    check(&db, "after a reopen");
    db.compact_range(..).expect("compact");
    check(&db, "after a full compaction");
}
