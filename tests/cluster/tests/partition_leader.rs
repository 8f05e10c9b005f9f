//! Goal: a leader cut off from the majority (every link to and from it
//! dropped, or only its outgoing links) acks no write that is then lost and
//! serves no stale linearizable read, while the majority elects a new
//! leader and serves. Clients can still reach the old leader directly.

use std::time::{Duration, Instant};

use chaos::harness::ClusterOptions;
use chaos::proxy::LinkMode;
use chaos::scenario::Run;
use chaos::workload::WorkloadOptions;

/// How long the majority may take to elect a new leader.
const NEW_LEADER_WAIT_MAX: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_serves_nothing_stale() {
    // The classic split brain: two nodes may both think they lead; only one
    // can commit, and the other must not answer as if it could.
    let mut run = Run::start("partition_leader", ClusterOptions::fast(3), 4).await;
    run.start_workload(WorkloadOptions::default());
    let mut round = 0u32;
    while run.next_round() {
        round += 1;
        tokio::time::sleep(run.random_ms(300, 1000)).await;
        let leader = run.leader().await;
        // Alternate: full isolation, then a one-way cut (leader -> others).
        let full = round % 2 == 1;
        let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
        run.fault(if full {
            format!("isolate leader {leader}: drop every link to and from it")
        } else {
            format!("one-way: drop links {leader} -> {others:?}, keep {others:?} -> {leader}")
        });
        for other in &others {
            if full {
                run.cluster.links.set_both(leader, *other, LinkMode::Drop);
            } else {
                run.cluster.links.set(leader, *other, LinkMode::Drop);
            }
        }
        // Evidence the fault bit: the majority moves on to a new leader.
        // Followers refuse votes while their leader lease lasts, so this can
        // take a few election timeouts; bounded by NEW_LEADER_WAIT_MAX.
        let cut_at = Instant::now();
        let successor = loop {
            let successor = run.leader().await;
            if successor != leader {
                break successor;
            }
            assert!(
                cut_at.elapsed() < NEW_LEADER_WAIT_MAX,
                "the majority kept leader {leader} for {} ms although it was cut off",
                NEW_LEADER_WAIT_MAX.as_millis()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (from_nodes, _) = run.cluster.links.accepted();
        assert!(
            from_nodes > 0,
            "the proxies never identified a node: partitions would be no-ops"
        );
        run.note(format!(
            "the majority elected node {successor} after {} ms",
            cut_at.elapsed().as_millis()
        ));
        // Keep the old leader cut off a while longer, with clients at it.
        tokio::time::sleep(run.random_ms(500, 2000)).await;
        run.note("heal every link");
        run.cluster.links.heal();
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    run.finish().await;
}
