//! Goal: killing every node at once (a power cut) and restarting them loses
//! no acknowledged write: what was acked was fsynced on a majority.

use chaos::harness::{ClusterOptions, CLUSTER_READY_TIMEOUT};
use chaos::scenario::Run;
use chaos::workload::WorkloadOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cluster_crash_loses_no_acknowledged_write() {
    // Only the disk survives a full crash; recovery must rebuild everything
    // acknowledged from the Raft log and the engine.
    let mut run = Run::start("full_crash", ClusterOptions::fast(3), 2).await;
    run.start_workload(WorkloadOptions::default());
    while run.next_round() {
        tokio::time::sleep(run.random_ms(800, 2000)).await;
        run.fault("SIGKILL all three nodes");
        for index in 0..3 {
            run.cluster.kill(index);
        }
        tokio::time::sleep(run.random_ms(100, 1000)).await;
        run.note("restart all three nodes");
        for index in 0..3 {
            run.cluster.restart(index).expect("restart");
        }
        run.cluster
            .wait_ready(CLUSTER_READY_TIMEOUT)
            .await
            .expect("cluster back after a full crash");
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    run.finish().await;
}
