//! Random damage to the Raft log's segment files — flipped bits, zeroed
//! runs, cut or extended files — is met with an error or with entries that
//! were appended, never with a panic or an entry nobody appended. This
//! drives the record decoder and recovery's scan with bytes they did not
//! produce.
//!
//! `LOG_DAMAGE_ROUNDS` sets the number of damaged copies (default 150),
//! `LOG_DAMAGE_SEED` replays one run.

use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};
use proto::raft as pb;
use raft_node::log_store::{LogStore, LogStoreOptions};
use raft_node::types::{Command, Entry, LogId, Vote};

fn entry(term: u64, index: u64, rng: &mut fastrand::Rng) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(
            Command {
                op: Some(pb::command::Op::Put(pb::Put {
                    key: format!("k{index}").into(),
                    value: vec![rng.u8(..); rng.usize(0..300)].into(),
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

fn options() -> LogStoreOptions {
    LogStoreOptions {
        segment_bytes_max: 4096,
        preallocate: false,
        ..LogStoreOptions::default()
    }
}

/// A log over several segments with a vote, a purge and a truncation in
/// its history; returns every entry ever appended.
async fn build(dir: &Path, rng: &mut fastrand::Rng) -> Vec<Entry> {
    let mut store = LogStore::open_with(dir, options()).expect("open");
    store.save_vote(&Vote::new(2, 1)).await.expect("vote");
    let mut appended: Vec<Entry> = (1..=120).map(|i| entry(1, i, rng)).collect();
    store.blocking_append(appended.clone()).await.expect("append");
    store
        .truncate(LogId::new(CommittedLeaderId::new(1, 1), 100))
        .await
        .expect("truncate");
    let rewritten: Vec<Entry> = (100..=160).map(|i| entry(2, i, rng)).collect();
    store.blocking_append(rewritten.clone()).await.expect("append");
    appended.extend(rewritten);
    store
        .purge(LogId::new(CommittedLeaderId::new(1, 1), 20))
        .await
        .expect("purge");
    appended
}

#[tokio::test]
async fn random_damage_to_the_log_is_an_error_or_appended_entries_never_a_panic() {
    // A disk returns garbage: the log must refuse it or serve only entries that were appended.
    let seed = std::env::var("LOG_DAMAGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let rounds: usize = std::env::var("LOG_DAMAGE_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    println!("seed {seed} (LOG_DAMAGE_SEED), {rounds} rounds (LOG_DAMAGE_ROUNDS)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let base = tempfile::tempdir().expect("tempdir");
    let appended = build(base.path(), &mut rng).await;
    for round in 0..rounds {
        let copy = tempfile::tempdir().expect("tempdir");
        let damage = storage::sim::damaged_copy(base.path(), copy.path(), &mut |n| rng.u64(..n));
        let what = format!("round {round}: {}", damage.expect("damaged copy"));
        let Ok(mut store) = LogStore::open_with(copy.path(), options()) else {
            continue;
        };
        let Ok(read) = store.try_get_log_entries(..).await else {
            continue;
        };
        let mut previous = None;
        for entry in read {
            assert!(
                appended.contains(&entry),
                "{what}: read an entry never appended: {:?}",
                entry.log_id
            );
            assert!(
                previous.is_none_or(|p| p + 1 == entry.log_id.index),
                "{what}: a gap or disorder before {:?}",
                entry.log_id
            );
            previous = Some(entry.log_id.index);
        }
        if let Ok(Some(vote)) = store.read_vote().await {
            assert_eq!(vote, Vote::new(2, 1), "{what}: a vote nobody saved");
        }
    }
}
