//! Goal: a node whose disk fills under load stops saying SERVING and exits
//! with the fatal-storage status, the other two keep serving and lose
//! nothing, and once space is freed the node restarts and catches up.
//!
//! Needs root: the node's data directory is a tmpfs. Without the
//! permission the run fails (it does not pass without filling a disk).

use std::time::{Duration, Instant};

use chaos::check::availability;
use chaos::harness::{ClusterOptions, Health};
use chaos::proxy::NodeId;
use chaos::scenario::Run;
use chaos::tmpfs;
use chaos::workload::{BulkWriter, WorkloadOptions, BULK_PAIRS_PER_BATCH, BULK_VALUE_BYTES};

/// The node whose data directory is a small tmpfs (node 1 forms the
/// cluster and usually leads first, so this one usually follows).
const FULL_NODE: NodeId = 3;
/// Size of its tmpfs: two preallocated 64 MiB Raft log segments, the
/// engine, and room for the data of several rounds.
const TMPFS_MIB: u64 = 320;
/// Space left free once the filler file is sent.
const FREE_BYTES_AFTER_FILL: u64 = 8 << 20;
/// Distinct bulk keys: the bulk data stays under 64 x 512 KiB = 32 MiB.
const BULK_KEYS: u64 = 64;
/// Bytes sent in bulk at most before the full node must have stopped
/// saying SERVING: 16 times what was left free.
const FILL_BYTES_MAX: u64 = 16 * FREE_BYTES_AFTER_FILL;
/// How long a node that stopped saying SERVING may take to exit.
const EXIT_WAIT_MAX: Duration = Duration::from_secs(15);
/// `kv-node`'s exit status after Raft stopped on a fatal storage error.
const FATAL_EXIT_STATUS: i32 = 3;

const _: () = assert!(FILL_BYTES_MAX > FREE_BYTES_AFTER_FILL + 2 * BULK_PAIRS_PER_BATCH * BULK_VALUE_BYTES as u64);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_stops_and_catches_up_after_space_is_freed() {
    // ENOSPC must stop the node cleanly (not leave it SERVING with a dead
    // Raft core, not corrupt what it had), and the cluster must not care.
    let options = ClusterOptions {
        tmpfs: Some((FULL_NODE, TMPFS_MIB)),
        // Frequent snapshots let the logs purge, so each round's data goes.
        snapshot_logs: 500,
        logs_kept_after_snapshot: 50,
        ..ClusterOptions::fast(3)
    };
    let mut run = Run::start("disk_full", options, 2).await;
    let index = run.cluster.index_of(FULL_NODE);
    let filler = run.cluster.nodes[index].data_dir.join("chaos-filler");
    let mut bulk = BulkWriter::new(&run.cluster.endpoints(), BULK_KEYS).expect("bulk client");
    run.start_workload(WorkloadOptions::default());
    while run.next_round() {
        tokio::time::sleep(run.random_ms(300, 1000)).await;
        let kept = tmpfs::fill(&filler, FREE_BYTES_AFTER_FILL).expect("fill the tmpfs");
        run.fault(format!(
            "fill node {FULL_NODE}'s disk ({} MiB filler, about {} MiB left free), then write in bulk",
            kept >> 20,
            FREE_BYTES_AFTER_FILL >> 20
        ));
        let mut sent = 0u64;
        let mut exit = None;
        // Until it says NOT_SERVING, or exits (it says so for a second only).
        loop {
            match run.cluster.health(FULL_NODE).await {
                Health::Serving => {}
                Health::NotServing => {
                    run.note(format!("node {FULL_NODE} says NOT_SERVING after {} MiB", sent >> 20));
                    break;
                }
                Health::NoAnswer => {
                    exit = run.cluster.wait_exit(index, Duration::ZERO).await.expect("exit status");
                    if exit.is_some() {
                        run.note(format!("node {FULL_NODE} exited after {} MiB", sent >> 20));
                        break;
                    }
                }
            }
            assert!(
                sent < FILL_BYTES_MAX,
                "node {FULL_NODE} still runs, not NOT_SERVING, after {} MiB sent with {} MiB free",
                sent >> 20,
                FREE_BYTES_AFTER_FILL >> 20
            );
            // A full leader fails the write: the cluster moves on, and so do we.
            if let Err(error) = bulk.write_batch().await {
                run.note(format!("bulk write failed: {error}"));
            }
            sent += BULK_PAIRS_PER_BATCH * BULK_VALUE_BYTES as u64;
        }
        // The other two keep serving writes.
        let window = availability::measure(&run.probe, Instant::now()).await;
        run.windows.push(window);
        if exit.is_none() {
            exit = run.cluster.wait_exit(index, EXIT_WAIT_MAX).await.expect("exit status");
        }
        let code = exit.and_then(|status| status.code());
        assert_eq!(
            code,
            Some(FATAL_EXIT_STATUS),
            "node {FULL_NODE} on a full disk did not exit with the fatal-storage status ({exit:?})"
        );
        run.note(format!("free the space (remove the filler); restart node {FULL_NODE}"));
        std::fs::remove_file(&filler).expect("remove the filler");
        run.cluster.restart(index).expect("restart");
        run.wait_caught_up(FULL_NODE).await;
    }
    run.finish().await;
}
