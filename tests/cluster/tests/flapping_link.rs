//! Goal: a link that flaps between dropped, delayed and healthy many times a
//! second breaks neither linearizability nor durability, and the replicas
//! converge once it settles.

use chaos::harness::ClusterOptions;
use chaos::proxy::LinkMode;
use chaos::scenario::Run;
use chaos::workload::WorkloadOptions;

/// Mode changes per round.
const FLAPS_PER_ROUND: u32 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_link_breaks_nothing() {
    // Flapping produces late, duplicated-looking and reordered-in-time RPCs
    // and repeated elections: the paths least exercised by clean failures.
    let mut run = Run::start("flapping_link", ClusterOptions::fast(3), 2).await;
    run.start_workload(WorkloadOptions::default());
    while run.next_round() {
        let leader = run.leader().await;
        let peer = run.random_follower(leader);
        run.fault(format!(
            "flap the links between {leader} and {peer} {FLAPS_PER_ROUND} times"
        ));
        for _ in 0..FLAPS_PER_ROUND {
            let mode = match run.rng.u32(0..3) {
                0 => LinkMode::Drop,
                1 => LinkMode::Delay(run.random_ms(20, 200)),
                _ => LinkMode::Pass,
            };
            // Each direction flaps on its own half the time.
            if run.rng.bool() {
                run.cluster.links.set_both(leader, peer, mode);
            } else {
                run.cluster.links.set(leader, peer, mode);
            }
            tokio::time::sleep(run.random_ms(50, 400)).await;
        }
        run.note("heal every link");
        run.cluster.links.heal();
        tokio::time::sleep(run.random_ms(300, 800)).await;
    }
    run.finish().await;
}
