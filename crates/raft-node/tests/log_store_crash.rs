//! Crash test: a child process appends to the log store while the parent
//! kills it with SIGKILL at a random moment; the reopened log must hold
//! every entry, vote and purge the child saw acknowledged, contiguously.
//!
//! The child is this same test binary, re-run with `LOG_CRASH_DIR` set,
//! running only the `crash_child` entry point. It alternates between two
//! ways of appending: the openraft trait (`blocking_append`, which waits for
//! each flush) and pipelined `append_with_callback` (group commit, callbacks
//! acknowledging from the sync thread).
//!
//! Knobs: `LOG_CRASH_ITERATIONS` (default 10), `LOG_CRASH_SEED`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, EntryPayload};
use proto::raft as pb;
use raft_node::log_store::{LogStore, LogStoreOptions};
use raft_node::types::{Entry, LogId, Vote};

const CHILD_DIR: &str = "LOG_CRASH_DIR";
const CHILD_MODE: &str = "LOG_CRASH_MODE";
/// Small segments, so a run rolls, purges and deletes many of them.
const SEGMENT_BYTES_MAX: u64 = 16 * 1024;
/// A memory window of a few entries, so the check after each crash reads
/// most of the recovered log back from disk, through the index.
const MEMORY_WINDOW_BYTES_MAX: u64 = 1024;
/// Entries kept behind each purge point.
const PURGE_KEEP_ENTRIES: u64 = 200;

fn options() -> LogStoreOptions {
    LogStoreOptions {
        segment_bytes_max: SEGMENT_BYTES_MAX,
        preallocate: true,
        memory_window_bytes_max: MEMORY_WINDOW_BYTES_MAX,
        // The votes saved here are node 1's: as node 2 the store follows,
        // and its appends are fsynced on the writing thread (the cluster
        // tests' leaders cover the sync thread).
        node_id: Some(2),
    }
}

fn value_of(index: u64, term: u64) -> Vec<u8> {
    format!("value-{index}-term-{term}").into_bytes()
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(
            pb::Command {
                op: Some(pb::command::Op::Put(pb::Put {
                    key: format!("k{index}").into(),
                    value: value_of(index, term).into(),
                })),
                client_id: 1,
                sequence: index,
                first_unanswered: 0,
                proposed_at_ms: 0,
            }
            .into(),
        ),
    }
}

/// Appends one line with one write(2) on an O_APPEND file: a kill never
/// tears it, and lines from several threads do not interleave.
fn ack(file: &File, line: &str) {
    (&*file).write_all(line.as_bytes()).expect("ack");
}

/// Entry point of the child process; does nothing in a normal test run.
#[test]
fn crash_child() {
    let (Ok(dir), Ok(mode)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_MODE)) else {
        return;
    };
    let dir = Path::new(&dir);
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    runtime.block_on(child(dir, &mode));
}

async fn child(dir: &Path, mode: &str) {
    let acks = Arc::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("acked"))
            .expect("ack log"),
    );
    let mut store = LogStore::open_with(&dir.join("log"), options()).expect("child open");
    let term = store
        .read_vote()
        .await
        .expect("vote")
        .map_or(1, |v| v.leader_id.term + 1);
    store.save_vote(&Vote::new_committed(term, 1)).await.expect("save vote");
    ack(&acks, &format!("v {term}\n"));
    let mut next = store
        .get_log_state()
        .await
        .expect("state")
        .last_log_id
        .map_or(0, |l| l.index + 1);
    let mut rng = fastrand::Rng::new();
    for batch in 0u64.. {
        let count = rng.u64(1..8);
        let first = next;
        let last = first + count - 1;
        let batch_entries: Vec<Entry> = (first..=last).map(|i| entry(term, i)).collect();
        if mode == "pipelined" {
            let acks = Arc::clone(&acks);
            store
                .append_with_callback(batch_entries, move |r| {
                    r.expect("flush");
                    ack(&acks, &format!("a {first} {last}\n"));
                })
                .expect("append");
        } else {
            store.blocking_append(batch_entries).await.expect("append");
            ack(&acks, &format!("a {first} {last}\n"));
        }
        next = last + 1;
        if batch % 50 == 49 && last > PURGE_KEEP_ENTRIES {
            let upto = last - PURGE_KEEP_ENTRIES;
            store
                .purge(LogId::new(CommittedLeaderId::new(term, 1), upto))
                .await
                .expect("purge");
            ack(&acks, &format!("p {upto}\n"));
        }
    }
}

/// Runs the child in `mode` and SIGKILLs it after a random 100-500 ms.
fn run_child_and_kill(dir: &Path, mode: &str, rng: &mut fastrand::Rng) {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args(["--exact", "crash_child", "--nocapture", "--test-threads", "1"])
        .env(CHILD_DIR, dir)
        .env(CHILD_MODE, mode)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let started = Instant::now();
    let deadline = Duration::from_millis(rng.u64(100..=500));
    while started.elapsed() < deadline {
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("child exited by itself with {status}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Child::kill sends SIGKILL on Unix.
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
}

/// What the child saw acknowledged, from its ack log.
#[derive(Debug, Default)]
struct Acked {
    ranges: Vec<(u64, u64)>,
    vote_term: Option<u64>,
    purged: Option<u64>,
}

fn read_acks(dir: &Path) -> Acked {
    let text = std::fs::read_to_string(dir.join("acked")).unwrap_or_default();
    let mut acked = Acked::default();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let number = |i: usize| -> u64 { fields[i].parse().expect("number in ack line") };
        match fields[0] {
            "a" => acked.ranges.push((number(1), number(2))),
            "v" => acked.vote_term = acked.vote_term.max(Some(number(1))),
            "p" => acked.purged = acked.purged.max(Some(number(1))),
            other => panic!("bad ack line kind {other}"),
        }
    }
    acked
}

#[test]
fn acknowledged_entries_survive_sigkill() {
    // The log's durability promise: what a flush callback acknowledged is there after a crash, without holes.
    let seed = std::env::var("LOG_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("log crash test: seed {seed} (rerun with LOG_CRASH_SEED={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);
    let iterations: usize = std::env::var("LOG_CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir().expect("tempdir");
    for iteration in 0..iterations {
        let mode = if iteration % 2 == 0 { "blocking" } else { "pipelined" };
        run_child_and_kill(dir.path(), mode, &mut rng);
        let mut store = LogStore::open_with(&dir.path().join("log"), options())
            .unwrap_or_else(|e| panic!("iteration {iteration}: reopen after crash failed: {e}"));
        let acked = read_acks(dir.path());
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let (state, vote) = runtime.block_on(async {
            (
                store.get_log_state().await.expect("state"),
                store.read_vote().await.expect("vote"),
            )
        });
        let purged = state.last_purged_log_id.map(|l| l.index);
        assert!(
            vote.map(|v| v.leader_id.term) >= acked.vote_term,
            "iteration {iteration}: vote {vote:?} is older than the acknowledged term {:?}",
            acked.vote_term
        );
        assert!(
            purged >= acked.purged,
            "iteration {iteration}: purge point {purged:?} is behind the acknowledged {:?}",
            acked.purged
        );
        let all = store.reader().entries(..).expect("read the recovered log");
        if let (Some(first), Some(p)) = (all.first(), purged) {
            assert_eq!(
                first.log_id.index,
                p + 1,
                "iteration {iteration}: the log starts right after the purge point"
            );
        }
        for pair in all.windows(2) {
            assert_eq!(
                pair[1].log_id.index,
                pair[0].log_id.index + 1,
                "iteration {iteration}: entries are contiguous"
            );
        }
        for e in &all {
            let EntryPayload::Normal(command) = &e.payload else {
                panic!("iteration {iteration}: unexpected payload at {}", e.log_id.index)
            };
            let command = command.decode().expect("a stored command decodes");
            let Some(pb::command::Op::Put(put)) = &command.op else {
                panic!("iteration {iteration}: unexpected command at {}", e.log_id.index)
            };
            assert_eq!(put.value[..], value_of(e.log_id.index, e.log_id.leader_id.term)[..]);
        }
        let last = state.last_log_id.map(|l| l.index);
        let mut checked = 0u64;
        for &(first, last_acked) in &acked.ranges {
            assert!(
                last >= Some(last_acked),
                "iteration {iteration}: acknowledged entry {last_acked} lost (log ends at {last:?})"
            );
            checked += last_acked - first + 1;
        }
        eprintln!(
            "iteration {iteration} ({mode}): {checked} entries acknowledged so far, log ends at {last:?}, purged {purged:?}, {} segments",
            store.metrics().segments
        );
        drop(store);
    }
}
