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
    db.compact_range().expect("compact");
    let stats = db.stats();
    assert!(stats.compactions > 0, "the two L0 files must be merged");
    assert_eq!(stats.block_cache_bytes, 0, "compaction filled the block cache");
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
    db.compact_range().expect("compact");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500), "2 MiB merged in {took:?}");
    assert_eq!(db.scan(..).expect("scan").count(), 1000);
}
