//! Goal: a follower restarted after the leader purged the log it needs
//! catches up from a streamed snapshot under load, and ends identical.

use std::time::{Duration, Instant};

use chaos::harness::ClusterOptions;
use chaos::scenario::Run;
use chaos::workload::WorkloadOptions;

/// How long to wait for the restarted follower to install a snapshot.
const INSTALL_WAIT_MAX: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_a_purged_log_catches_up_by_snapshot() {
    // With the entries it lacks purged, only a snapshot can bring the
    // follower back; the install must not lose or invent anything.
    let options = ClusterOptions {
        snapshot_logs: 100,
        logs_kept_after_snapshot: 20,
        ..ClusterOptions::fast(3)
    };
    let mut run = Run::start("snapshot_catchup", options, 2).await;
    run.start_workload(WorkloadOptions {
        think_ms_max: 2,
        ..WorkloadOptions::default()
    });
    while run.next_round() {
        tokio::time::sleep(run.random_ms(200, 800)).await;
        let leader = run.leader().await;
        let follower = run.random_follower(leader);
        let index = run.cluster.index_of(follower);
        let endpoint = run.cluster.endpoint(follower);
        let behind = run.kill_behind_purge(follower).await;
        run.note(format!("restart follower {follower}; the log it needs is purged"));
        run.cluster.restart(index).expect("restart");
        let deadline = Instant::now() + INSTALL_WAIT_MAX;
        loop {
            let status = run.cluster.admin().status(&endpoint).await;
            if status.as_ref().is_ok_and(|s| s.snapshot_index > behind) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "follower {follower} never installed a snapshot past {behind}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        run.note(format!("follower {follower} installed a snapshot"));
    }
    run.finish().await;
}
