//! Goal: a leader frozen (SIGSTOP) past the election timeout and then thawed
//! (SIGCONT) serves no stale linearizable read and acks no write it then
//! loses; the linearizability checker judges its answers.

use chaos::harness::ClusterOptions;
use chaos::scenario::Run;
use chaos::workload::WorkloadOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thawed_old_leader_serves_nothing_stale() {
    // A paused process wakes up believing it still leads; requests queued
    // at it (clients time out and move on, some stay in its sockets) must
    // not be answered from its old state.
    let options = ClusterOptions::fast(3);
    let frozen_ms = options.election_timeout_ms_max * 3;
    let mut run = Run::start("freeze_leader", options, 3).await;
    run.start_workload(WorkloadOptions::default());
    while run.next_round() {
        tokio::time::sleep(run.random_ms(300, 1000)).await;
        let leader = run.leader().await;
        let frozen = std::time::Duration::from_millis(frozen_ms);
        run.pause(leader, "leader", frozen);
        tokio::time::sleep(frozen).await;
        let successor = run.leader().await;
        assert_ne!(successor, leader, "no new leader while the old one was frozen");
        run.resume(leader, &format!(" (leader now {successor})"));
        tokio::time::sleep(run.random_ms(500, 1500)).await;
    }
    run.finish().await;
}
