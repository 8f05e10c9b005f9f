//! Goal: killing the leader (SIGKILL) again and again loses no acknowledged
//! write, breaks no read, and leaves writes unavailable for at most 5 s.

use chaos::harness::ClusterOptions;
use chaos::scenario::Run;
use chaos::workload::WorkloadOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kills_lose_nothing_and_fail_over_fast() {
    // The leader holds the newest log entries; killing it is the fault
    // most likely to lose an acknowledged write or stall the cluster.
    let mut run = Run::start("kill_leader", ClusterOptions::fast(3), 3).await;
    run.start_workload(WorkloadOptions::default());
    while run.next_round() {
        tokio::time::sleep(run.random_ms(500, 1500)).await;
        let leader = run.leader().await;
        let index = run.cluster.index_of(leader);
        run.fault(format!("SIGKILL leader {leader}"));
        let killed_at = std::time::Instant::now();
        run.cluster.kill(index);
        let window = chaos::check::availability::measure(&run.probe, killed_at).await;
        run.windows.push(window);
        tokio::time::sleep(run.random_ms(0, 500)).await;
        run.note(format!("restart node {leader}"));
        run.cluster.restart(index).expect("restart");
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    run.finish().await;
}
