//! Goal: a membership change (a fresh node added as a learner, promoted to
//! voter, an old voter removed) made while another node is SIGKILLed or cut
//! off keeps the history correct and ends with exactly the intended voters.

use chaos::harness::{ClusterOptions, CLUSTER_READY_TIMEOUT};
use chaos::proxy::NodeId;
use chaos::scenario::Run;
use chaos::workload::WorkloadOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_with_a_node_down_keep_history_and_end_as_intended() {
    // Joint consensus must hold with one of the old voters unreachable: the
    // old and new majorities overlap only in the nodes that are up.
    let options = ClusterOptions {
        spares: 1,
        ..ClusterOptions::fast(3)
    };
    let mut run = Run::start("membership_under_fault", options, 4).await;
    run.start_workload(WorkloadOptions::default());
    while run.next_round() {
        tokio::time::sleep(run.random_ms(300, 1000)).await;
        let members = run.cluster.members();
        let spare = spare(&run);
        // The fault: any member killed, or a follower cut off (a cut-off
        // leader is partition_leader's subject, and would only slow the
        // membership calls down until the majority moves on).
        let leader = run.leader().await;
        let kill = run.rng.bool();
        let faulty = if kill {
            members[run.rng.usize(..members.len())]
        } else {
            run.random_follower(leader)
        };
        let faulty_index = run.cluster.index_of(faulty);
        if kill {
            run.fault(format!("SIGKILL node {faulty}"));
            run.cluster.kill(faulty_index);
        } else {
            run.fault(format!("cut node {faulty} off from every peer"));
            run.cluster.isolate(faulty);
        }
        // Let the cluster notice (a killed leader is replaced meanwhile).
        tokio::time::sleep(run.random_ms(200, 800)).await;
        // The change: any old voter goes, the faulty one included.
        let removed = members[run.rng.usize(..members.len())];
        run.note(format!(
            "add node {spare} as a learner and promote it (voters {members:?}, node {faulty} down)"
        ));
        let spare_index = run.cluster.index_of(spare);
        run.cluster.add_member(spare_index).await.expect("add the new node");
        run.note(format!("remove node {removed}"));
        let removed_index = run.cluster.index_of(removed);
        run.cluster
            .remove_member(removed_index)
            .await
            .expect("remove an old voter");
        let intended = run.cluster.members();
        tokio::time::sleep(run.random_ms(200, 800)).await;
        // Recovery: the faulty node comes back, unless it was the one removed.
        run.cluster.links.heal();
        if kill && faulty != removed {
            run.note(format!("restart node {faulty}"));
            run.cluster.restart(faulty_index).expect("restart");
        } else {
            run.note("heal every link");
        }
        run.cluster
            .wait_ready(CLUSTER_READY_TIMEOUT)
            .await
            .unwrap_or_else(|error| panic!("the voters never became {intended:?}: {error:#}"));
        run.note(format!("voters are {intended:?}"));
    }
    run.finish().await;
}

/// The one node slot outside the membership.
fn spare(run: &Run) -> NodeId {
    let spares: Vec<NodeId> = run.cluster.nodes.iter().filter(|n| !n.member).map(|n| n.id).collect();
    assert_eq!(spares.len(), 1, "exactly one spare expected: {spares:?}");
    spares[0]
}
