//! The cluster id on every Raft call: a node never takes Raft traffic from
//! another cluster, and a new node joins the cluster that first reaches it.

use std::path::Path;
use std::time::Duration;

use proto::raft as pb;
use proto::raft::raft_client::RaftClient;
use raft_node::cluster_id::{self, ClusterId, CLUSTER_ID_HEADER};
use raft_node::testing::TestCluster;
use raft_node::types::Node;
use tonic::transport::Channel;

/// Cluster tests run one at a time: nodes of several clusters already load
/// the two cores enough that parallel tests would starve heartbeats.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a foreign leader gets to (fail to) replicate to the other
/// cluster's node: many heartbeats and retries.
const FOREIGN_TRAFFIC_MS: u64 = 1500;

fn cluster_id_of(data_dir: &Path) -> ClusterId {
    cluster_id::read_from_data_dir(data_dir)
        .expect("identity file")
        .unwrap_or_else(|| panic!("{} names no cluster id", data_dir.display()))
}

/// (term, last log index, membership) of node `id`: what foreign traffic
/// would change.
fn raft_state(cluster: &TestCluster, id: u64) -> (u64, Option<u64>, String) {
    let metrics = cluster.raft(id).metrics();
    let m = metrics.borrow();
    (
        m.current_term,
        m.last_log_index,
        format!("{:?}", m.membership_config.membership()),
    )
}

async fn raft_client(addr: &str) -> RaftClient<Channel> {
    RaftClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect"),
    )
}

/// A heartbeat as a node of `cluster` would send it (or without a cluster
/// id), from a leader far ahead in term, so Raft would act on it.
fn heartbeat(cluster: Option<ClusterId>) -> tonic::Request<pb::AppendEntriesRequest> {
    let leader = Some(pb::LeaderId { term: 1000, node_id: 9 });
    let mut request = tonic::Request::new(pb::AppendEntriesRequest {
        vote: Some(pb::Vote {
            leader_id: leader,
            committed: true,
        }),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    });
    if let Some(cluster) = cluster {
        let value = cluster.to_string().parse().expect("hex is valid metadata");
        request.metadata_mut().insert(CLUSTER_ID_HEADER, value);
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_raft_calls_from_another_cluster_and_its_log_stays_its_own() {
    // A leader whose membership points at another cluster's node must not
    // append to that node's log or move its term.
    let _serial = SERIAL.lock().await;
    let ours = TestCluster::start(1).await;
    let theirs = TestCluster::start(1).await;
    let (our_id, their_id) = (cluster_id_of(&ours.data_dir(1)), cluster_id_of(&theirs.data_dir(1)));
    assert_ne!(our_id, their_id, "two clusters formed apart have different ids");
    let before = raft_state(&theirs, 1);

    // Our leader takes their node's address for a learner of ours.
    ours.raft(1)
        .add_learner(2, Node::new(theirs.addr(1)), false)
        .await
        .expect("add the learner entry");
    tokio::time::sleep(Duration::from_millis(FOREIGN_TRAFFIC_MS)).await;
    assert_eq!(raft_state(&theirs, 1), before, "their node took our traffic");
    let matched = ours
        .raft(1)
        .metrics()
        .borrow()
        .replication
        .as_ref()
        .and_then(|peers| peers.get(&2).copied())
        .flatten();
    assert_eq!(
        matched, None,
        "our leader must not have replicated anything to their node"
    );

    // The refusal names both clusters; a call without an id is refused too.
    let mut client = raft_client(&theirs.peer_addr(1)).await;
    let refused = client
        .append_entries(heartbeat(Some(our_id)))
        .await
        .expect_err("a foreign cluster's call");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    for id in [our_id, their_id] {
        assert!(refused.message().contains(&id.to_string()), "{refused:?}");
    }
    let anonymous = client
        .append_entries(heartbeat(None))
        .await
        .expect_err("a call without a cluster id");
    assert_eq!(anonymous.code(), tonic::Code::FailedPrecondition, "{anonymous:?}");
    assert_eq!(raft_state(&theirs, 1), before, "refused calls changed nothing");
    ours.shutdown().await;
    theirs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_adopts_the_cluster_id_and_keeps_it_over_a_restart() {
    // A new node has no id; the leader's first call gives it the cluster's,
    // durably, and from then on it refuses any other.
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::start(1).await;
    let cluster_id = cluster_id_of(&cluster.data_dir(1));
    let addr = cluster.start_extra(2).await;
    assert_eq!(
        cluster_id::read_from_data_dir(&cluster.data_dir(2)),
        Ok(None),
        "a new node belongs to no cluster yet"
    );
    let joined = cluster
        .raft(1)
        .add_learner(2, Node::new(addr), true)
        .await
        .expect("the learner is added")
        .log_id
        .index;
    cluster.wait_applied(2, joined).await;
    assert_eq!(cluster_id_of(&cluster.data_dir(2)), cluster_id, "adopted durably");

    cluster.stop(2).await;
    cluster.restart(2).await;
    assert_eq!(cluster_id_of(&cluster.data_dir(2)), cluster_id, "kept over a restart");
    // It still follows its cluster after the restart...
    let written = cluster
        .raft(1)
        .add_learner(3, Node::new("127.0.0.1:1"), false)
        .await
        .expect("a membership entry")
        .log_id
        .index;
    cluster.wait_applied(2, written).await;
    // ...and refuses every other.
    let refused = raft_client(&cluster.peer_addr(2))
        .await
        .append_entries(heartbeat(Some(ClusterId::random())))
        .await
        .expect_err("another cluster's call");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    cluster.shutdown().await;
}
