//! The simulated disk's own rules: what a crash keeps and what it loses.

use super::*;

fn path(p: &str) -> PathBuf {
    PathBuf::from(p)
}

/// A disk with the durable directory `/db`.
fn disk(seed: u64) -> Arc<SimFs> {
    let fs = SimFs::new(seed);
    fs.create_dir_all(&path("/db")).expect("mkdir");
    fs.sync_dir(&path("/")).expect("sync root");
    fs
}

/// Creates `/db/name` holding `bytes`; syncs the file if `sync_file`, the
/// directory if `sync_dir`.
fn write(fs: &SimFs, name: &str, bytes: &[u8], sync_file: bool, sync_dir: bool) {
    let file = fs.create_new(&path("/db").join(name)).expect("create");
    file.append(bytes).expect("append");
    if sync_file {
        file.sync_data().expect("sync");
    }
    if sync_dir {
        fs.sync_dir(&path("/db")).expect("sync dir");
    }
}

fn read(fs: &SimFs, name: &str) -> Option<Vec<u8>> {
    fs.contents(&path("/db").join(name))
}

#[test]
fn a_synced_file_in_a_synced_directory_survives_a_crash() {
    // The baseline: what was made durable is all there after the power cut.
    let fs = disk(1);
    write(&fs, "a", b"hello", true, true);
    for mode in [CrashMode::DropUnsynced, CrashMode::Torn] {
        assert_eq!(read(&fs.crash(mode), "a").as_deref(), Some(&b"hello"[..]));
    }
}

#[test]
fn an_unsynced_create_is_gone_after_a_crash() {
    // A synced file whose directory entry was never synced is lost.
    let fs = disk(2);
    write(&fs, "a", b"hello", true, false);
    assert_eq!(read(&fs.crash(CrashMode::DropUnsynced), "a"), None);
}

#[test]
fn unsynced_appends_are_lost_and_synced_ones_kept() {
    // Data written after the last fsync does not survive a strict crash.
    let fs = disk(3);
    let file = fs.create_new(&path("/db/a")).expect("create");
    file.append(b"durable").expect("append");
    file.sync_data().expect("sync");
    fs.sync_dir(&path("/db")).expect("sync dir");
    file.append(b" volatile").expect("append");
    assert_eq!(read(&fs, "a").as_deref(), Some(&b"durable volatile"[..]));
    assert_eq!(
        read(&fs.crash(CrashMode::DropUnsynced), "a").as_deref(),
        Some(&b"durable"[..])
    );
}

#[test]
fn a_rename_without_a_directory_sync_reverts() {
    // rename(2) is durable only once the directory is synced.
    let fs = disk(4);
    write(&fs, "old", b"1", true, true);
    write(&fs, "new.tmp", b"2", true, true);
    fs.rename(&path("/db/new.tmp"), &path("/db/old")).expect("rename");
    let after = fs.crash(CrashMode::DropUnsynced);
    assert_eq!(read(&after, "old").as_deref(), Some(&b"1"[..]));
    assert_eq!(read(&after, "new.tmp").as_deref(), Some(&b"2"[..]));
}

#[test]
fn a_removal_without_a_directory_sync_reverts() {
    // unlink(2) too is undone by a crash before the directory sync.
    let fs = disk(5);
    write(&fs, "a", b"1", true, true);
    fs.remove_file(&path("/db/a")).expect("remove");
    assert_eq!(read(&fs, "a"), None);
    assert_eq!(
        read(&fs.crash(CrashMode::DropUnsynced), "a").as_deref(),
        Some(&b"1"[..])
    );
}

#[test]
fn a_new_directory_needs_its_parent_synced() {
    // mkdir is an entry in the parent: without syncing the parent the whole
    // directory, synced files and all, is gone after a crash.
    let fs = disk(6);
    fs.create_dir_all(&path("/db/sub")).expect("mkdir");
    let file = fs.create_new(&path("/db/sub/a")).expect("create");
    file.append(b"x").expect("append");
    file.sync_data().expect("sync");
    fs.sync_dir(&path("/db/sub")).expect("sync dir");
    let after = fs.crash(CrashMode::DropUnsynced);
    assert!(!after.exists(&path("/db/sub")).expect("exists"));
    fs.sync_dir(&path("/db")).ok(); // the old disk is frozen now
    assert!(fs.is_frozen());
}

#[test]
fn a_torn_crash_keeps_each_unsynced_sector_old_or_new() {
    // Torn writes land per 512-byte sector, in any order: each sector of the
    // result is the old or the new one (cut to the length, which lies between
    // the old and the new one), and across seeds many combinations show up.
    let old: Vec<u8> = vec![1; SECTOR_BYTES * 2];
    let mut new = old.clone();
    new.extend_from_slice(&[2; SECTOR_BYTES * 2]);
    new[..SECTOR_BYTES].fill(3);
    let mut seen = HashSet::new();
    for seed in 0..200 {
        let fs = disk(seed);
        let file = fs.create_new(&path("/db/a")).expect("create");
        file.append(&old).expect("append");
        file.sync_data().expect("sync");
        fs.sync_dir(&path("/db")).expect("sync dir");
        file.set_len(0).expect("truncate");
        file.append(&new).expect("rewrite");
        let torn = read(&fs.crash(CrashMode::Torn), "a").expect("file survives");
        assert!((old.len()..=new.len()).contains(&torn.len()), "seed {seed}");
        let mut pattern = vec![torn.len()];
        for (index, sector) in torn.chunks(SECTOR_BYTES).enumerate() {
            let start = index * SECTOR_BYTES;
            let end = start + sector.len();
            let from_old = old.get(start..end).map_or(&[0u8; SECTOR_BYTES][..sector.len()], |s| s);
            let is_new = sector == &new[start..end];
            assert!(is_new || sector == from_old, "seed {seed}: sector {index} is neither");
            pattern.push(usize::from(is_new));
        }
        seen.insert(pattern);
    }
    assert!(seen.len() >= 8, "only {} patterns in 200 seeds", seen.len());
}

#[test]
fn the_same_seed_gives_the_same_crash() {
    // Crash tests rerun a failing seed: the torn result must repeat.
    let run = |seed| {
        let fs = disk(seed);
        write(&fs, "a", &[7; 4 * SECTOR_BYTES], false, true);
        read(&fs.crash(CrashMode::Torn), "a")
    };
    assert_eq!(run(42), run(42));
}

#[test]
fn the_power_cut_step_fails_that_call_and_all_later_ones() {
    // Crash tests cut the power at a counted step; nothing after it may land.
    let fs = disk(7);
    let base = fs.steps();
    fs.freeze_at_step(base + 3);
    let file = fs.create_new(&path("/db/a")).expect("step 1");
    file.append(b"x").expect("step 2");
    assert!(file.sync_data().is_err(), "step 3 is the cut");
    assert!(file.append(b"y").is_err());
    assert!(fs.create_new(&path("/db/b")).is_err());
    assert!(fs.list_dir(&path("/db")).is_err());
    assert_eq!(read(&fs.crash(CrashMode::Torn), "a"), None);
}

#[test]
fn injected_eio_and_enospc_fail_one_call_without_effect() {
    // A failing disk returns errors the engine must handle, and changes nothing.
    let fs = disk(8);
    let file = fs.create_new(&path("/db/a")).expect("create");
    let at = fs.steps();
    fs.fail_at_step(at + 1, Fault::NoSpace);
    fs.fail_at_step(at + 2, Fault::Eio);
    let err = file.append(b"x").expect_err("enospc");
    assert_eq!(err.raw_os_error(), Some(ENOSPC));
    let err = file.sync_data().expect_err("eio");
    assert_eq!(err.raw_os_error(), Some(EIO));
    assert_eq!(read(&fs, "a").as_deref(), Some(&b""[..]));
    file.append(b"y").expect("the disk works again");
}

#[test]
fn a_failed_fsync_loses_the_data_it_covered() {
    // After a failed writeback Linux drops the dirty pages: a retried fsync
    // succeeds and yet the data is gone. The engine must not retry and trust it.
    let fs = disk(9);
    let file = fs.create_new(&path("/db/a")).expect("create");
    file.append(b"kept").expect("append");
    file.sync_data().expect("sync");
    fs.sync_dir(&path("/db")).expect("sync dir");
    file.append(b" lost").expect("append");
    fs.fail_at_step(fs.steps() + 1, Fault::SyncLosesData);
    assert!(file.sync_data().is_err());
    file.sync_data().expect("the retry succeeds");
    assert_eq!(read(&fs.crash(CrashMode::Torn), "a").as_deref(), Some(&b"kept"[..]));
}

#[test]
fn lying_syncs_make_nothing_durable() {
    // The negative control: a sync that does nothing loses its data at a crash.
    let fs = disk(10);
    fs.lie_about_syncs(LyingSyncs::FilesContaining(".wal".to_string()));
    write(&fs, "1.wal", b"x", true, true);
    write(&fs, "1.sst", b"y", true, true);
    let after = fs.crash(CrashMode::DropUnsynced);
    assert_eq!(read(&after, "1.wal").as_deref(), Some(&b""[..]));
    assert_eq!(read(&after, "1.sst").as_deref(), Some(&b"y"[..]));

    let fs = disk(11);
    fs.lie_about_syncs(LyingSyncs::Directories);
    write(&fs, "a", b"x", true, true);
    assert_eq!(read(&fs.crash(CrashMode::DropUnsynced), "a"), None);
}

#[test]
fn a_lock_is_exclusive_until_dropped_and_gone_after_a_crash() {
    // Db::open takes a lock; a second open must fail, a reopen after a crash must not.
    let fs = disk(12);
    let lock = fs.lock(&path("/db/LOCK")).expect("lock");
    let err = fs.lock(&path("/db/LOCK")).expect_err("held");
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    let after = fs.crash(CrashMode::DropUnsynced);
    drop(after.lock(&path("/db/LOCK")).expect("a crash releases locks"));
    drop(lock);
}

#[test]
fn reads_see_unlinked_files_through_open_handles() {
    // Tables stay readable while a reader holds them after compaction removes them.
    let fs = disk(13);
    write(&fs, "a", b"data", true, true);
    let file = fs.open(&path("/db/a")).expect("open");
    fs.remove_file(&path("/db/a")).expect("remove");
    let mut buf = [0u8; 4];
    file.read_at(0, &mut buf).expect("read");
    assert_eq!(&buf, b"data");
    let err = file.read_at(2, &mut buf).expect_err("past the end");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
}

#[test]
fn writes_at_an_offset_overwrite_in_place_and_tear_per_sector() {
    // The Raft log store overwrites a zero-filled (preallocated) file in
    // place: what a read sees is the new bytes at once; a crash keeps only
    // what was synced, or under a torn crash each sector old or new.
    let fs = disk(11);
    write(&fs, "a", &[0u8; 2 * SECTOR_BYTES], true, true);
    let file = fs.open_writable(&path("/db/a")).expect("open writable");
    file.write_at(10, b"synced").expect("write_at");
    file.sync_data().expect("sync");
    file.write_at(SECTOR_BYTES as u64, b"unsynced").expect("write_at");
    file.write_at(3 * SECTOR_BYTES as u64, b"x")
        .expect("write_at past the end");
    let now = read(&fs, "a").expect("file");
    assert_eq!(
        now.len(),
        3 * SECTOR_BYTES + 1,
        "a write past the end extends with zeros"
    );
    assert_eq!(&now[10..16], b"synced");
    assert_eq!(&now[SECTOR_BYTES..SECTOR_BYTES + 8], b"unsynced");
    let strict = read(&fs.crash(CrashMode::DropUnsynced), "a").expect("file survives");
    assert_eq!(strict.len(), 2 * SECTOR_BYTES);
    assert_eq!(&strict[10..16], b"synced");
    assert!(
        strict[SECTOR_BYTES..].iter().all(|&b| b == 0),
        "the unsynced write is lost"
    );
    let read_only = disk(12);
    write(&read_only, "a", b"x", true, true);
    let file = read_only.open(&path("/db/a")).expect("open");
    assert!(file.write_at(0, b"y").is_err(), "open() gives a read-only handle");
}

#[test]
fn a_directory_rename_without_a_parent_sync_moves_its_contents_back() {
    // Installing a received snapshot renames a directory: until the
    // parent is synced a crash must find the files under the old name.
    let fs = disk(11);
    fs.create_dir_all(&path("/db/recv")).expect("mkdir");
    fs.sync_dir(&path("/db")).expect("sync db");
    let file = fs.create_new(&path("/db/recv/t")).expect("create");
    file.append(b"table").expect("append");
    file.sync_data().expect("sync");
    fs.sync_dir(&path("/db/recv")).expect("sync recv");
    fs.rename(&path("/db/recv"), &path("/db/gen")).expect("rename");
    assert!(fs.is_dir(&path("/db/gen")).expect("is_dir"));
    assert_eq!(fs.contents(&path("/db/gen/t")).as_deref(), Some(&b"table"[..]));
    let lost = fs.crash(CrashMode::DropUnsynced);
    assert_eq!(lost.contents(&path("/db/recv/t")).as_deref(), Some(&b"table"[..]));
    assert!(!lost.is_dir(&path("/db/gen")).expect("is_dir"));
    lost.rename(&path("/db/recv"), &path("/db/gen")).expect("rename");
    lost.sync_dir(&path("/db")).expect("sync db");
    let kept = lost.crash(CrashMode::DropUnsynced);
    assert_eq!(kept.contents(&path("/db/gen/t")).as_deref(), Some(&b"table"[..]));
    assert!(!kept.exists(&path("/db/recv")).expect("exists"));
}

#[test]
fn a_removed_tree_is_gone_and_its_name_free_again() {
    // Stale snapshot and engine directories are removed whole; a new one
    // may take the same name.
    let fs = disk(12);
    fs.create_dir_all(&path("/db/snap/sub")).expect("mkdir");
    fs.create_new(&path("/db/snap/sub/f")).expect("create");
    fs.sync_dir(&path("/db")).expect("sync");
    assert!(!fs.is_dir(&path("/db/snap/sub/f")).expect("a file is no directory"));
    fs.remove_dir_all(&path("/db/snap")).expect("remove tree");
    assert!(!fs.exists(&path("/db/snap")).expect("exists"));
    assert!(fs.list_dir(&path("/db/snap/sub")).is_err(), "the subtree is gone too");
    fs.create_dir_all(&path("/db/snap")).expect("mkdir again");
    assert!(fs.list_dir(&path("/db/snap")).expect("list").is_empty());
    for mode in [CrashMode::DropUnsynced, CrashMode::Torn] {
        let after = fs.crash(mode);
        assert!(after.contents(&path("/db/snap/sub/f")).is_none(), "{mode:?}");
        if after.exists(&path("/db/snap")).expect("exists") {
            assert!(
                after.list_dir(&path("/db/snap")).is_ok(),
                "{mode:?}: a name left is a whole directory"
            );
        }
    }
}
