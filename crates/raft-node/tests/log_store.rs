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
        payload: EntryPayload::Normal(Command {
            op: Some(pb::command::Op::Put(pb::Put {
                key: format!("k{index}").into(),
                value: format!("v{index}-t{term}").into(),
            })),
            client_id: 7,
            sequence: index,
            first_unanswered: 0,
            proposed_at_ms: 0,
        }),
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
async fn entries_are_readable_as_soon_as_append_returns() {
    // openraft's contract: a reader sees entries when append returns, before the flush callback.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = LogStore::open(dir.path()).expect("open");
    let reader = store.reader();
    let (tx, rx) = mpsc::channel();
    store
        .append_with_callback(entries(1, 0..=2), move |r| tx.send(r.is_ok()).expect("send"))
        .expect("append");
    assert_eq!(reader.entries(..), entries(1, 0..=2));
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
