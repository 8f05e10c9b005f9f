//! Goal: killing any node, restarting it on its data or wiping it and adding
//! it back, loses no acknowledged write and keeps the replicas identical.

use chaos::harness::ClusterOptions;
use chaos::scenario::Run;
use chaos::workload::WorkloadOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_restarts_and_rejoins_lose_nothing() {
    // Followers and leaders alike crash; a wiped node must rejoin through
    // the membership API and be caught up from the others.
    let mut run = Run::start("kill_random", ClusterOptions::fast(3), 4).await;
    run.start_workload(WorkloadOptions::default());
    let mut wiped = false;
    while run.next_round() {
        tokio::time::sleep(run.random_ms(300, 1200)).await;
        let victim = run.rng.u64(1..=3);
        let index = run.cluster.index_of(victim);
        // Every run wipes at least once (in its last round if not before).
        let last = run.round() >= run.config.iterations;
        if (!wiped && last) || run.rng.u32(0..4) == 0 {
            wiped = true;
            run.fault(format!("SIGKILL node {victim}, remove it, wipe its data, add it back"));
            run.cluster.wipe_and_readd(index).await.expect("wipe and re-add");
            run.note(format!("node {victim} is a voter again"));
        } else {
            run.fault(format!("SIGKILL node {victim}"));
            run.cluster.kill(index);
            tokio::time::sleep(run.random_ms(200, 1500)).await;
            run.note(format!("restart node {victim}"));
            run.cluster.restart(index).expect("restart");
        }
    }
    run.finish().await;
}
