//! Recovery: the writes replayed from the WALs at open are flushed to L0
//! by the engine itself, so reads after a restart search tables, not a
//! large memtable, and the replayed WALs are deleted.

use std::path::Path;
use std::time::{Duration, Instant};

use storage::{Db, Options};

/// How long the test waits for the flush that follows an open.
const RECOVERY_FLUSH_WAIT_MS_MAX: u64 = 20_000;

/// Keys written before the restart.
const KEYS: u32 = 2_000;

fn wal_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".wal"))
        .collect();
    names.sort();
    names
}

fn check_all(db: &Db) {
    for i in 0..KEYS {
        let value = db.get(format!("key{i:05}").as_bytes()).expect("get");
        assert_eq!(value.as_deref(), Some(format!("value{i}").as_bytes()), "key {i}");
    }
}

#[test]
fn replayed_writes_are_flushed_to_level0_after_open_and_their_wals_deleted() {
    // A restart must not leave point reads searching a large skip list, nor keep old WALs around.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = Db::open(dir.path(), Options::default()).expect("open");
        for i in 0..KEYS {
            db.put(format!("key{i:05}"), format!("value{i}")).expect("put");
        }
        assert_eq!(db.stats().levels[0].files, 0, "nothing flushed before the restart");
    }
    let old_wals = wal_files(dir.path());
    assert!(!old_wals.is_empty(), "the writes are in a WAL");

    let db = Db::open(dir.path(), Options::default()).expect("reopen");
    // Readable at once, whether or not the flush has run yet.
    check_all(&db);
    let deadline = Instant::now() + Duration::from_millis(RECOVERY_FLUSH_WAIT_MS_MAX);
    while db.stats().immutable_memtables > 0 {
        assert!(Instant::now() < deadline, "the recovered memtable was never flushed");
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = db.stats();
    assert_eq!(stats.levels[0].files, 1, "{stats:?}");
    assert_eq!(stats.memtable_bytes, 0, "the active memtable starts empty: {stats:?}");
    // The flush installs its table first and deletes the WALs it made
    // obsolete just after: give that a moment too.
    let mut wals = wal_files(dir.path());
    while old_wals.iter().any(|old| wals.contains(old)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        wals = wal_files(dir.path());
    }
    assert!(
        old_wals.iter().all(|old| !wals.contains(old)),
        "replayed WALs {old_wals:?} are deleted once flushed, found {wals:?}"
    );
    check_all(&db);
    drop(db);

    // Nothing is replayed twice, and nothing is lost.
    let db = Db::open(dir.path(), Options::default()).expect("second reopen");
    assert_eq!(db.stats().immutable_memtables, 0, "no WAL held writes to replay");
    check_all(&db);
}

#[test]
fn a_database_closed_before_its_recovery_flush_loses_nothing() {
    // The replayed WALs must stay until the flush of their writes is in the manifest.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = Db::open(dir.path(), Options::default()).expect("open");
        for i in 0..KEYS {
            db.put(format!("key{i:05}"), format!("value{i}")).expect("put");
        }
    }
    for round in 0..5 {
        // Closed at once: the flush may or may not have happened.
        let db = Db::open(dir.path(), Options::default()).unwrap_or_else(|e| panic!("reopen {round}: {e}"));
        check_all(&db);
    }
}
