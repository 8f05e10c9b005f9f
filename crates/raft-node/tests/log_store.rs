//! Behaviour of the Raft log store through openraft's traits and its own
//! API: reads, durability across reopen, truncate, purge, segment rolls,
//! group commit and recovery from torn or damaged files.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};
use proto::raft as pb;
use raft_node::log_store::{LogStore, LogStoreError, LogStoreOptions};
use raft_node::types::{Command, Entry, LogId, Vote};

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(
            Command {
                op: Some(pb::command::Op::Put(pb::Put {
                    key: format!("k{index}").into(),
                    value: format!("v{index}-t{term}").into(),
                })),
                client_id: 7,
                sequence: index,
                first_unanswered: 0,
                proposed_at_ms: 0,
            }
            .into(),
        ),
    }
}

fn entries(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    indexes.map(|i| entry(term, i)).collect()
}

/// Tiny preallocated segments, so a test rolls through many spares.
fn small_segments() -> LogStoreOptions {
    LogStoreOptions {
        segment_bytes_max: 512,
        preallocate: true,
        ..LogStoreOptions::default()
    }
}

/// Growing segments only: appends after open stay in the first segment, so
/// a test can damage the file it knows holds them.
fn growing() -> LogStoreOptions {
    LogStoreOptions {
        preallocate: false,
        ..LogStoreOptions::default()
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    files
}

async fn all_entries(store: &mut LogStore) -> Vec<Entry> {
    store.try_get_log_entries(..).await.expect("read")
}

#[tokio::test]
async fn appended_entries_read_back_and_survive_reopen() {
    // The basic promise: what was appended is readable at once and after a restart.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = LogStore::open(dir.path()).expect("open");
    store.blocking_append(entries(1, 0..=9)).await.expect("append");
    let mut reader = store.get_log_reader().await;
    assert_eq!(reader.try_get_log_entries(3..6).await.expect("read"), entries(1, 3..=5));
    assert_eq!(reader.try_get_log_entries(8..).await.expect("read"), entries(1, 8..=9));
    assert_eq!(reader.try_get_log_entries(20..30).await.expect("read"), vec![]);
    drop(store);

    let mut store = LogStore::open(dir.path()).expect("reopen");
    assert_eq!(all_entries(&mut store).await, entries(1, 0..=9));
    let state = store.get_log_state().await.expect("state");
    assert_eq!(state.last_log_id, Some(log_id(1, 9)));
    assert_eq!(state.last_purged_log_id, None);
}

#[tokio::test]
async fn a_follower_fsyncs_on_the_appending_thread_and_a_leader_on_the_sync_thread() {
    // Node 1's vote is saved: as node 2 the store follows and runs each
    // append's callback before append returns, on the caller's thread; as
    // node 1 (the leader) the sync thread runs it, so the leader's fsync
    // can overlap the replication openraft starts after append returns.
    for (me, follows) in [(2, true), (1, false)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = LogStoreOptions {
            node_id: Some(me),
            ..LogStoreOptions::default()
        };
        let mut store = LogStore::open_with(dir.path(), options.clone()).expect("open");
        store.save_vote(&Vote::new_committed(1, 1)).await.expect("vote");
        let (tx, rx) = mpsc::channel();
        for index in 0..3 {
            let tx = tx.clone();
            store
                .append_with_callback(entries(1, index..=index), move |r| {
                    let thread = std::thread::current().name().map(str::to_string);
                    tx.send((index, r.is_ok(), thread)).expect("send");
                })
                .expect("append");
            if follows {
                let (done, ok, thread) = rx.try_recv().expect("a follower's append is durable when it returns");
                assert_eq!((done, ok), (index, true));
                assert_ne!(thread.as_deref(), Some("raft-log-sync"), "node {me}");
            }
        }
        if !follows {
            for index in 0..3 {
                let (done, ok, thread) = rx.recv().expect("callback");
                assert_eq!((done, ok, thread.as_deref()), (index, true, Some("raft-log-sync")));
            }
        }
        drop(store);
        let mut store = LogStore::open_with(dir.path(), options).expect("reopen");
        assert_eq!(all_entries(&mut store).await, entries(1, 0..=2), "node {me}");
    }
}

#[tokio::test]
async fn entries_are_readable_as_soon_as_append_returns() {
    // openraft's contract: a reader sees entries when append returns, before the flush callback.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = LogStore::open(dir.path()).expect("open");
    let reader = store.reader();
    let (tx, rx) = mpsc::channel();
    store
        .append_with_callback(entries(1, 0..=2), move |r| tx.send(r.is_ok()).expect("send"))
        .expect("append");
    assert_eq!(reader.entries(..).expect("read"), entries(1, 0..=2));
    assert!(rx.recv().expect("callback runs"));
}

#[tokio::test]
async fn appends_that_leave_a_hole_are_rejected() {
    // A hole in the log would break Raft's log matching; the store refuses it.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = LogStore::open(dir.path()).expect("open");
    store.blocking_append(entries(1, 0..=2)).await.expect("append");
    let err = store.append_with_callback([entry(1, 5)], |_| {}).expect_err("hole");
    assert!(
        matches!(err, LogStoreError::NotContiguous { expected: 3, got: 5 }),
        "{err}"
    );
}

#[tokio::test]
async fn vote_survives_reopen() {
    // A forgotten vote would let the node vote twice in one term.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = LogStore::open(dir.path()).expect("open");
    assert_eq!(store.read_vote().await.expect("read"), None);
    store.save_vote(&Vote::new(3, 2)).await.expect("save");
    store.save_vote(&Vote::new_committed(4, 1)).await.expect("save");
    drop(store);
    let mut store = LogStore::open(dir.path()).expect("reopen");
    assert_eq!(store.read_vote().await.expect("read"), Some(Vote::new_committed(4, 1)));
}

#[tokio::test]
async fn committed_survives_reopen() {
    // openraft re-applies up to the committed id at start-up, so it must come back.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = LogStore::open(dir.path()).expect("open");
    store.blocking_append(entries(1, 0..=5)).await.expect("append");
    store.save_committed(Some(log_id(1, 4))).await.expect("save");
    // An fsync by a later operation covers the committed record.
    store.blocking_append(entries(1, 6..=6)).await.expect("append");
    drop(store);
    let mut store = LogStore::open(dir.path()).expect("reopen");
    assert_eq!(store.read_committed().await.expect("read"), Some(log_id(1, 4)));
}

#[tokio::test]
async fn truncated_entries_are_replaced_and_the_replacement_survives_reopen() {
    // A follower overwrites a conflicting suffix; after a restart only the new suffix may exist.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = LogStore::open(dir.path()).expect("open");
    store.blocking_append(entries(1, 0..=9)).await.expect("append");
    store.save_vote(&Vote::new(2, 2)).await.expect("vote");
    store.truncate(log_id(1, 5)).await.expect("truncate");
    assert_eq!(all_entries(&mut store).await, entries(1, 0..=4));
    store.blocking_append(entries(2, 5..=7)).await.expect("append");
    drop(store);

    let mut store = LogStore::open(dir.path()).expect("reopen");
    let mut expected = entries(1, 0..=4);
    expected.extend(entries(2, 5..=7));
    assert_eq!(all_entries(&mut store).await, expected);
    // The vote was written after the cut point and must not be lost with it.
    assert_eq!(store.read_vote().await.expect("read"), Some(Vote::new(2, 2)));
}

#[tokio::test]
async fn truncation_across_segments_survives_reopen() {
    // A cut in an older segment deletes the later ones without a hole or a lost vote.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = LogStore::open_with(dir.path(), small_segments()).expect("open");
    for i in 0..60 {
        store.blocking_append([entry(1, i)]).await.expect("append");
    }
    store.save_vote(&Vote::new_committed(1, 1)).await.expect("vote");
    assert!(segment_files(dir.path()).len() > 4, "small segments roll");
    store.truncate(log_id(1, 10)).await.expect("truncate");
    store.blocking_append(entries(3, 10..=12)).await.expect("append");
    drop(store);

    let mut store = LogStore::open_with(dir.path(), small_segments()).expect("reopen");
    let mut expected = entries(1, 0..=9);
    expected.extend(entries(3, 10..=12));
    assert_eq!(all_entries(&mut store).await, expected);
    assert_eq!(store.read_vote().await.expect("read"), Some(Vote::new_committed(1, 1)));
}

#[tokio::test]
async fn purge_survives_reopen_and_hides_purged_entries() {
    // After a purge the log reports its purge point and never serves entries at or below it.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = LogStore::open(dir.path()).expect("open");
    store.blocking_append(entries(1, 0..=9)).await.expect("append");
    store.purge(log_id(1, 4)).await.expect("purge");
    assert_eq!(all_entries(&mut store).await, entries(1, 5..=9));
    drop(store);

    let mut store = LogStore::open(dir.path()).expect("reopen");
    let state = store.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 4)));
    assert_eq!(state.last_log_id, Some(log_id(1, 9)));
    assert_eq!(all_entries(&mut store).await, entries(1, 5..=9));
}

#[tokio::test]
async fn a_purge_waits_until_the_state_machine_applied_what_it_removes() {
    // openraft purges what a new snapshot covers while the state machine still installs it; a
    // crash in between left a node that could not start (found by the chaos suite's
    // snapshot_kill). The gated purge must not remove entries the state machine has not applied.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = LogStore::open(dir.path()).expect("open");
    store.blocking_append(entries(1, 0..=9)).await.expect("append");
    let (applied, gate) = tokio::sync::watch::channel(3u64);
    store.purge_after_applied(gate);
    let mut reader = store.reader();
    let purge = tokio::spawn(async move {
        store.purge(log_id(1, 8)).await.expect("purge");
        store
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!purge.is_finished(), "the purge did not wait for the state machine");
    let kept = reader
        .try_get_log_entries(0..=9)
        .await
        .expect("read while the purge waits");
    assert_eq!(kept, entries(1, 0..=9), "purged before the state machine applied");
    applied.send_replace(8);
    let mut store = purge.await.expect("purge task");
    assert_eq!(all_entries(&mut store).await, entries(1, 9..=9));
}

#[tokio::test]
async fn purge_past_the_last_entry_then_append_survives_reopen() {
    // After installing a snapshot openraft purges beyond the log's end and appends after it.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = LogStore::open(dir.path()).expect("open");
    store.blocking_append(entries(1, 0..=3)).await.expect("append");
    store.purge(log_id(2, 100)).await.expect("purge");
    let state = store.get_log_state().await.expect("state");
    assert_eq!(
        state.last_log_id,
        Some(log_id(2, 100)),
        "the purge point stands in for the last entry"
    );
    store.blocking_append(entries(2, 101..=102)).await.expect("append");
    drop(store);

    let mut store = LogStore::open(dir.path()).expect("reopen");
    assert_eq!(all_entries(&mut store).await, entries(2, 101..=102));
    let state = store.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(2, 100)));
}

#[tokio::test]
async fn purge_deletes_old_segments_and_keeps_the_vote() {
    // Disk space comes back one segment at a time, and the vote outlives the segment it was written in.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = LogStore::open_with(dir.path(), small_segments()).expect("open");
    store.save_vote(&Vote::new_committed(5, 3)).await.expect("vote");
    for i in 0..200 {
        store.blocking_append([entry(5, i)]).await.expect("append");
    }
    let before = segment_files(dir.path());
    assert!(before.len() > 10, "{} segments", before.len());
    assert!(
        store.metrics().preallocated_segments >= 10,
        "rolls use the prepared spares: {:?}",
        store.metrics()
    );
    store.purge(log_id(5, 150)).await.expect("purge");
    let after = segment_files(dir.path());
    assert!(
        after.len() < before.len() / 2,
        "{} -> {} segments",
        before.len(),
        after.len()
    );
    assert_eq!(store.metrics().segments, after.len());
    drop(store);

    let mut store = LogStore::open_with(dir.path(), small_segments()).expect("reopen");
    assert_eq!(store.read_vote().await.expect("read"), Some(Vote::new_committed(5, 3)));
    assert_eq!(all_entries(&mut store).await, entries(5, 151..=199));
    let state = store.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(5, 150)));
}

#[test]
fn group_commit_shares_fsyncs_between_appends() {
    // Appends that do not wait for their flush must share fsyncs, or throughput is one append per fsync.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = LogStore::open(dir.path()).expect("open");
    let syncs_before = store.metrics().segment_syncs;
    let appends: u64 = 2000;
    let (tx, rx) = mpsc::channel();
    for i in 0..appends {
        let tx = tx.clone();
        store
            .append_with_callback([entry(1, i)], move |r| tx.send((i, r.is_ok())).expect("send"))
            .expect("append");
    }
    drop(tx);
    let done: Vec<(u64, bool)> = rx.iter().collect();
    assert_eq!(done.len() as u64, appends, "every callback runs");
    assert!(done.iter().all(|&(_, ok)| ok), "every flush succeeds");
    assert!(
        done.windows(2).all(|w| w[0].0 < w[1].0),
        "callbacks run in append order"
    );
    let syncs = store.metrics().segment_syncs - syncs_before;
    eprintln!(
        "group commit: {appends} appends, {syncs} fsyncs ({:.3} fsyncs per append)",
        syncs as f64 / appends as f64
    );
    assert!(syncs < appends, "{syncs} fsyncs for {appends} appends");
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_appending_resumes() {
    // A crash mid-write leaves a partial last record; it was never acknowledged, so it is dropped.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = LogStore::open_with(dir.path(), growing()).expect("open");
    store.blocking_append(entries(1, 0..=4)).await.expect("append");
    drop(store);
    let last = segment_files(dir.path()).pop().expect("a segment");
    // The last segment holds the entries: reopening starts a new, empty one.
    let with_entries = segment_files(dir.path())[0].clone();
    assert_eq!(last, with_entries, "one segment so far");
    let len = std::fs::metadata(&last).expect("stat").len();
    let file = std::fs::OpenOptions::new().write(true).open(&last).expect("open");
    file.set_len(len - 3).expect("tear");
    drop(file);

    let mut store = LogStore::open_with(dir.path(), growing()).expect("a torn tail is not an error");
    assert_eq!(all_entries(&mut store).await, entries(1, 0..=3));
    store.blocking_append(entries(1, 4..=6)).await.expect("append");
    drop(store);
    let mut store = LogStore::open_with(dir.path(), growing()).expect("reopen");
    assert_eq!(all_entries(&mut store).await, entries(1, 0..=6));
}

#[tokio::test]
async fn a_flipped_byte_mid_segment_refuses_to_open() {
    // Damage before valid records is not a crash artefact; silently dropping entries would lose acknowledged writes.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = LogStore::open_with(dir.path(), growing()).expect("open");
    store.blocking_append(entries(1, 0..=9)).await.expect("append");
    drop(store);
    let segment = segment_files(dir.path())[0].clone();
    let mut bytes = std::fs::read(&segment).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&segment, &bytes).expect("write");

    let err = LogStore::open_with(dir.path(), growing()).expect_err("corruption");
    match err {
        LogStoreError::Corrupt { file, offset, .. } => {
            assert_eq!(file, segment);
            assert!(offset > 0 && offset <= middle as u64, "offset {offset}");
        }
        other => panic!("expected Corrupt, got {other}"),
    }
}

/// An entry whose value is `value_bytes` long and starts with a marker
/// unique to its index, so a test can find its record in a segment file.
fn big_entry(term: u64, index: u64, value_bytes: usize) -> Entry {
    let mut value = marker(index).into_bytes();
    value.resize(value_bytes.max(value.len()), b'x');
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(
            Command {
                op: Some(pb::command::Op::Put(pb::Put {
                    key: format!("k{index}").into(),
                    value: value.into(),
                })),
                client_id: 7,
                sequence: index,
                first_unanswered: 0,
                proposed_at_ms: 0,
            }
            .into(),
        ),
    }
}

fn marker(index: u64) -> String {
    format!("value-{index:08}-")
}

fn big_entries(term: u64, indexes: std::ops::RangeInclusive<u64>, value_bytes: usize) -> Vec<Entry> {
    indexes.map(|i| big_entry(term, i, value_bytes)).collect()
}

/// Small segments and a window far smaller than the log, so most reads go
/// to disk and cross segment boundaries.
fn small_window() -> LogStoreOptions {
    LogStoreOptions {
        segment_bytes_max: 8 * 1024,
        preallocate: true,
        memory_window_bytes_max: 4 * 1024,
        ..LogStoreOptions::default()
    }
}

#[tokio::test]
async fn entries_older_than_the_window_read_back_from_disk_across_segments_and_reopen() {
    // Memory holds only the newest entries; the rest must still read back exactly, before and after a restart.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = LogStore::open_with(dir.path(), small_window()).expect("open");
    let expected = big_entries(1, 0..=199, 500);
    for chunk in expected.chunks(3) {
        store.blocking_append(chunk.to_vec()).await.expect("append");
    }
    let metrics = store.metrics();
    assert!(metrics.window_bytes <= 4 * 1024, "{metrics:?}");
    assert!(metrics.window_entries < 10, "{metrics:?}");
    assert!(segment_files(dir.path()).len() > 10, "the log spans many segments");
    assert_eq!(all_entries(&mut store).await, expected);
    assert!(store.metrics().entries_read_from_disk >= 190, "{:?}", store.metrics());
    // Ranges that start, end or lie wholly outside the window.
    let mut reader = store.get_log_reader().await;
    for (start, end) in [(0, 1), (13, 77), (150, 200), (199, 200), (190, 250)] {
        let got = reader.try_get_log_entries(start..end).await.expect("read");
        assert_eq!(got, expected[start as usize..end.min(200) as usize], "{start}..{end}");
    }
    drop(store);

    let mut store = LogStore::open_with(dir.path(), small_window()).expect("reopen");
    assert!(
        store.metrics().window_bytes <= 4 * 1024,
        "recovery keeps only the window"
    );
    assert_eq!(all_entries(&mut store).await, expected);
    store
        .blocking_append(big_entries(1, 200..=209, 500))
        .await
        .expect("append after reopen");
    assert_eq!(store.try_get_log_entries(195..205).await.expect("read"), {
        let mut e = expected[195..].to_vec();
        e.extend(big_entries(1, 200..=204, 500));
        e
    });
}

#[tokio::test]
async fn a_lagging_follower_reads_a_range_older_than_the_window() {
    // openraft's replication reads through limited_get_log_entries; it must make progress from disk.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = LogStore::open_with(dir.path(), small_window()).expect("open");
    let expected = big_entries(2, 1..=300, 300);
    store.blocking_append(expected.clone()).await.expect("append");
    let mut reader = store.get_log_reader().await;
    let mut next = 1;
    while next <= 300 {
        let batch = reader.limited_get_log_entries(next, 301).await.expect("read");
        assert!(!batch.is_empty(), "a non-empty range never returns nothing");
        assert_eq!(batch, expected[(next - 1) as usize..(next - 1) as usize + batch.len()]);
        next += batch.len() as u64;
    }
}

#[tokio::test]
async fn truncate_and_purge_below_the_window_keep_the_index_consistent() {
    // A follower's truncation or a purge far behind the window must leave every remaining entry readable.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = LogStore::open_with(dir.path(), small_window()).expect("open");
    store
        .blocking_append(big_entries(1, 0..=99, 400))
        .await
        .expect("append");
    store.truncate(log_id(1, 40)).await.expect("truncate below the window");
    assert_eq!(all_entries(&mut store).await, big_entries(1, 0..=39, 400));
    store
        .blocking_append(big_entries(2, 40..=119, 400))
        .await
        .expect("append");
    store.purge(log_id(1, 20)).await.expect("purge");
    let mut expected = big_entries(1, 21..=39, 400);
    expected.extend(big_entries(2, 40..=119, 400));
    assert_eq!(all_entries(&mut store).await, expected);
    assert_eq!(store.try_get_log_entries(0..25).await.expect("read"), expected[..4]);
    drop(store);

    let mut store = LogStore::open_with(dir.path(), small_window()).expect("reopen");
    assert_eq!(all_entries(&mut store).await, expected);
    store.truncate(log_id(2, 100)).await.expect("truncate after reopen");
    store.purge(log_id(2, 60)).await.expect("purge after reopen");
    assert_eq!(all_entries(&mut store).await, expected[40..79]);
}

#[test]
fn memory_stays_within_the_window_while_many_large_entries_are_appended() {
    // The point of the window: memory is bounded by it, not by the log.
    const WINDOW_BYTES_MAX: u64 = 4 << 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let options = LogStoreOptions {
        segment_bytes_max: 16 << 20,
        preallocate: false,
        memory_window_bytes_max: WINDOW_BYTES_MAX,
        ..LogStoreOptions::default()
    };
    let mut store = LogStore::open_with(dir.path(), options).expect("open");
    let (tx, rx) = mpsc::channel();
    let mut window_bytes_max_seen = 0;
    for index in 0..2000 {
        let tx = tx.clone();
        store
            .append_with_callback([big_entry(1, index, 64 << 10)], move |r| {
                tx.send(r.is_ok()).expect("send")
            })
            .expect("append");
        window_bytes_max_seen = window_bytes_max_seen.max(store.metrics().window_bytes);
    }
    drop(tx);
    assert!(rx.iter().all(|ok| ok), "every append is durable");
    let metrics = store.metrics();
    eprintln!(
        "2000 entries of 64 KiB: log {} bytes, window at most {window_bytes_max_seen} bytes ({} entries at the end)",
        metrics.log_bytes, metrics.window_entries
    );
    assert!(window_bytes_max_seen <= WINDOW_BYTES_MAX, "{window_bytes_max_seen}");
    assert!(metrics.log_bytes > 2000 * (64 << 10), "{metrics:?}");
    assert!(metrics.window_entries >= 60, "the window is used: {metrics:?}");
    let reader = store.reader();
    assert_eq!(reader.entries(10..13).expect("read"), big_entries(1, 10..=12, 64 << 10));
    assert_eq!(
        reader.entries(1990..).expect("read"),
        big_entries(1, 1990..=1999, 64 << 10)
    );
}

#[tokio::test]
async fn a_damaged_record_read_from_disk_is_an_error_not_data() {
    // The crc is checked on every read back: a flipped bit must never reach a follower or the state machine.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = LogStore::open_with(dir.path(), small_window()).expect("open");
    store
        .blocking_append(big_entries(1, 0..=99, 500))
        .await
        .expect("append");
    let needle = marker(5).into_bytes();
    let (path, at) = segment_files(dir.path())
        .into_iter()
        .find_map(|path| {
            let bytes = std::fs::read(&path).expect("read");
            let at = bytes.windows(needle.len()).position(|w| w == needle)?;
            Some((path, at))
        })
        .expect("entry 5's record is in a segment");
    let file = std::fs::OpenOptions::new().write(true).open(&path).expect("open");
    std::os::unix::fs::FileExt::write_all_at(&file, b"Y", (at + needle.len()) as u64).expect("damage");
    drop(file);

    let err = store.reader().entries(3..8).expect_err("damaged");
    assert!(
        matches!(&err, LogStoreError::Corrupt { file, .. } if file == &path),
        "{err}"
    );
    assert!(store.try_get_log_entries(5..6).await.is_err(), "through openraft too");
    assert_eq!(
        store
            .try_get_log_entries(6..8)
            .await
            .expect("undamaged entries still read"),
        big_entries(1, 6..=7, 500)
    );
}

#[tokio::test]
async fn purged_segments_are_recycled_and_the_log_reopens_to_exactly_its_entries() {
    // Recycling reuses a purged segment's file, earlier records and all; none of them may come back as entries.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = LogStore::open_with(dir.path(), small_segments()).expect("open");
    store.save_vote(&Vote::new_committed(5, 3)).await.expect("vote");
    let mut next = 0;
    for round in 0..5 {
        for _ in 0..60 {
            store.blocking_append([entry(5, next)]).await.expect("append");
            next += 1;
        }
        store.purge(log_id(5, next - 10)).await.expect("purge");
        assert_eq!(
            all_entries(&mut store).await,
            entries(5, next - 9..=next - 1),
            "round {round}"
        );
    }
    let recycled = store.metrics().recycled_segments;
    assert!(recycled >= 4, "purged segments were recycled: {:?}", store.metrics());
    let kept = std::fs::read_dir(dir.path())
        .expect("list")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "recycle"))
        })
        .count();
    assert!(kept <= raft_node::log_store::RECYCLED_SEGMENTS_MAX, "{kept} kept");
    drop(store);

    let mut store = LogStore::open_with(dir.path(), small_segments()).expect("reopen");
    assert_eq!(all_entries(&mut store).await, entries(5, next - 9..=next - 1));
    store
        .blocking_append(entries(5, next..=next + 20))
        .await
        .expect("append after reopen");
    drop(store);
    let mut store = LogStore::open_with(dir.path(), small_segments()).expect("reopen again");
    assert_eq!(all_entries(&mut store).await, entries(5, next - 9..=next + 20));
    assert_eq!(store.vote(), Some(Vote::new_committed(5, 3)));
}
