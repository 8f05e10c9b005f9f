//! Goal: a follower restarted after the leader purged the log it needs
//! catches up from a streamed snapshot under load, and ends identical.

use std::time::{Duration, Instant};

use chaos::harness::ClusterOptions;
use chaos::scenario::Run;
use chaos::workload::WorkloadOptions;

/// How long to wait for the leader to purge past the stopped follower.
const PURGE_WAIT_MAX: Duration = Duration::from_secs(30);

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
        let mut follower = run.rng.u64(1..=3);
        while follower == leader {
            follower = run.rng.u64(1..=3);
        }
        let index = run.cluster.index_of(follower);
        let endpoint = run.cluster.nodes[index].client_addr.to_string();
        let behind = run
            .cluster
            .admin()
            .status(&endpoint)
            .await
            .expect("status")
            .last_log_index;
        run.fault(format!("SIGKILL follower {follower} at log index {behind}"));
        run.cluster.kill(index);
        // Precondition: the leader purged past the follower's log.
        let deadline = Instant::now() + PURGE_WAIT_MAX;
        loop {
            let leader_status = run.cluster.admin().leader_status().await;
            if leader_status.as_ref().is_ok_and(|s| s.purged_index > behind + 1) {
                break;
            }
            assert!(Instant::now() < deadline, "the leader never purged past {behind}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        run.note(format!("restart follower {follower}; the log it needs is purged"));
        run.cluster.restart(index).expect("restart");
        let deadline = Instant::now() + PURGE_WAIT_MAX;
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
