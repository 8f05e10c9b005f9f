//! Goal: in a five-node cluster, any two nodes may die at once and the
//! three survivors keep serving writes, losing none.

use std::time::Instant;

use chaos::check::availability;
use chaos::harness::ClusterOptions;
use chaos::scenario::Run;
use chaos::workload::WorkloadOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_of_five_survivors_keep_serving() {
    // A majority of three is all Raft needs; the minority's loss must not
    // stall writes for long or lose them.
    let mut run = Run::start("kill_two_of_five", ClusterOptions::fast(5), 2).await;
    run.start_workload(WorkloadOptions::default());
    while run.next_round() {
        tokio::time::sleep(run.random_ms(300, 1000)).await;
        // The second round always takes the leader with it.
        let first = if run.round() == 1 {
            run.rng.u64(1..=5)
        } else {
            run.leader().await
        };
        let mut second = run.rng.u64(1..=5);
        while second == first {
            second = run.rng.u64(1..=5);
        }
        run.fault(format!("SIGKILL nodes {first} and {second}"));
        let killed_at = Instant::now();
        for id in [first, second] {
            let index = run.cluster.index_of(id);
            run.cluster.kill(index);
        }
        // The survivors must accept a write within the availability bound.
        let window = availability::measure(&run.probe, killed_at).await;
        run.windows.push(window);
        tokio::time::sleep(run.random_ms(500, 1500)).await;
        for id in [first, second] {
            run.note(format!("restart node {id}"));
            let index = run.cluster.index_of(id);
            run.cluster.restart(index).expect("restart");
        }
    }
    run.finish().await;
}
