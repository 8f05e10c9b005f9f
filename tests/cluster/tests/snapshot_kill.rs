//! Goal: a SIGKILL while a snapshot streams to a follower (of the follower
//! receiving it, or of the leader sending it) loses and invents nothing:
//! the follower starts over, installs a whole snapshot or catches up by
//! log, its half-received snapshot is cleaned away, and replicas converge.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chaos::check::availability;
use chaos::harness::ClusterOptions;
use chaos::proxy::NodeId;
use chaos::scenario::Run;
use chaos::workload::{BulkWriter, WorkloadOptions};

/// Bulk batches written before the faults: 12 x 4 x 512 KiB = 24 MiB that
/// every snapshot carries, so a transfer lasts long enough to be hit.
const BULK_BATCHES: u64 = 12;
/// Distinct bulk keys (the bulk data is 48 x 512 KiB).
const BULK_KEYS: u64 = 48;
/// How long to watch a restarted follower for a snapshot reception.
const TRANSFER_WATCH_MAX: Duration = Duration::from_secs(30);
/// Poll period of the follower's state machine directory.
const TRANSFER_POLL: Duration = Duration::from_millis(2);
/// Directory polls between two status calls while watching.
const POLLS_PER_STATUS: u32 = 25;
/// Tries per round to catch a transfer in flight before the round fails.
const CATCH_ATTEMPTS_MAX: u32 = 4;
/// The kill lands up to this long after the reception was seen starting.
const KILL_DELAY_MS_MAX: u64 = 100;
/// The prefix of a snapshot reception's directory under `<data>/sm/`
/// (`raft-node`'s state machine layout).
const RECEIVE_DIR_PREFIX: &str = "recv-";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_snapshot_transfer_loses_nothing() {
    // Odd rounds kill the receiving follower, even rounds the sending
    // leader: an interrupted stream must never be installed half.
    let options = ClusterOptions {
        snapshot_logs: 100,
        logs_kept_after_snapshot: 20,
        ..ClusterOptions::fast(3)
    };
    let mut run = Run::start("snapshot_kill", options, 2).await;
    let mut bulk = BulkWriter::new(&run.cluster.endpoints(), BULK_KEYS).expect("bulk client");
    for _ in 0..BULK_BATCHES {
        bulk.write_batch().await.expect("bulk write before any fault");
    }
    run.start_workload(WorkloadOptions {
        think_ms_max: 2,
        ..WorkloadOptions::default()
    });
    while run.next_round() {
        let kill_leader = run.round() % 2 == 0;
        let mut caught = None;
        for _ in 0..CATCH_ATTEMPTS_MAX {
            tokio::time::sleep(run.random_ms(200, 800)).await;
            let leader = run.leader().await;
            let follower = run.random_follower(leader);
            if let Some(receiving) = start_snapshot_transfer(&mut run, follower).await {
                caught = Some((leader, follower, receiving));
                break;
            }
        }
        let Some((leader, follower, receiving)) = caught else {
            panic!("no snapshot transfer seen in flight in {CATCH_ATTEMPTS_MAX} tries");
        };
        // Somewhere into the stream, not always at its first byte.
        tokio::time::sleep(run.random_ms(0, KILL_DELAY_MS_MAX)).await;
        let received = if receiving.exists() {
            format!("{} bytes unpacked so far", tree_bytes(&receiving))
        } else {
            "reception already installed".to_owned()
        };
        if kill_leader {
            run.fault(format!(
                "SIGKILL leader {leader} while it streams a snapshot to {follower} ({received})"
            ));
            let killed_at = Instant::now();
            run.cluster.kill(run.cluster.index_of(leader));
            let window = availability::measure(&run.probe, killed_at).await;
            run.windows.push(window);
            run.note(format!("restart node {leader}"));
            run.cluster.restart(run.cluster.index_of(leader)).expect("restart");
            run.wait_caught_up(follower).await;
            run.wait_caught_up(leader).await;
        } else {
            run.fault(format!(
                "SIGKILL follower {follower} while it receives a snapshot ({received})"
            ));
            run.cluster.kill(run.cluster.index_of(follower));
            tokio::time::sleep(run.random_ms(0, 500)).await;
            run.note(format!("restart node {follower}"));
            run.cluster.restart(run.cluster.index_of(follower)).expect("restart");
            run.wait_caught_up(follower).await;
            assert!(
                !receiving.exists(),
                "the cut-short reception {} was not cleaned away",
                receiving.display()
            );
        }
    }
    run.finish().await;
}

/// SIGKILLs `follower`, waits until the leader purged the log it lacks,
/// restarts it and watches its state machine directory: returns the
/// reception directory once one appears, or `None` when the follower got
/// past its old log without one being seen (the transfer was too quick).
async fn start_snapshot_transfer(run: &mut Run, follower: NodeId) -> Option<PathBuf> {
    let index = run.cluster.index_of(follower);
    let endpoint = run.cluster.endpoint(follower);
    let behind = run.kill_behind_purge(follower).await;
    let state_machine = run.cluster.nodes[index].data_dir.join("sm");
    // A reception cut short earlier is the node's to clean up: not news.
    let old = receptions(&state_machine);
    run.note(format!("restart follower {follower}; the log it needs is purged"));
    run.cluster.restart(index).expect("restart");
    let deadline = Instant::now() + TRANSFER_WATCH_MAX;
    let mut polls = 0u32;
    while Instant::now() < deadline {
        if let Some(new) = receptions(&state_machine).into_iter().find(|dir| !old.contains(dir)) {
            run.note(format!(
                "follower {follower} is receiving a snapshot into {}",
                new.display()
            ));
            return Some(new);
        }
        polls += 1;
        if polls.is_multiple_of(POLLS_PER_STATUS) {
            let status = run.cluster.admin().status(&endpoint).await;
            if status.is_ok_and(|s| s.snapshot_index > behind) {
                run.note(format!(
                    "follower {follower} installed a snapshot before one was seen arriving"
                ));
                return None;
            }
        }
        tokio::time::sleep(TRANSFER_POLL).await;
    }
    panic!(
        "follower {follower} received no snapshot within {} ms",
        TRANSFER_WATCH_MAX.as_millis()
    )
}

/// The snapshot reception directories under `state_machine`.
fn receptions(state_machine: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(state_machine) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(RECEIVE_DIR_PREFIX))
        .map(|entry| entry.path())
        .collect()
}

/// Bytes of the files under `dir` (0 for what vanished meanwhile).
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => tree_bytes(&entry.path()),
            _ => entry.metadata().map_or(0, |meta| meta.len()),
        })
        .sum()
}
