//! Nodes with a separate peer port (`--peer-listen`): Raft and the calls
//! that initialize or change membership are served there only, so that
//! whatever reaches a client port cannot append to a log, forge votes or
//! re-shape the cluster.

use std::time::{Duration, Instant};

use proto::kv as api;
use proto::kv::cluster_client::ClusterClient;
use proto::kv::kv_client::KvClient;
use proto::raft as pb;
use proto::raft::raft_client::RaftClient;
use raft_node::service::status::{LEADER_ADDR_HEADER, NOT_APPLIED_HEADER};
use raft_node::testing::{retry_unavailable, TestCluster, WAIT_TIMEOUT};
use tonic::transport::Channel;

/// Cluster tests run one at a time: three nodes per test already load the
/// two cores enough that parallel tests would starve heartbeats.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How far above the cluster's term a forged message claims to be.
const FORGED_TERM_AHEAD: u64 = 1000;

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

async fn admin(addr: &str) -> ClusterClient<Channel> {
    ClusterClient::new(channel(addr).await)
}

async fn status(addr: &str) -> api::StatusResponse {
    admin(addr)
        .await
        .status(api::StatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

async fn put(addr: &str, key: &str, value: &str) -> Result<api::WriteResponse, tonic::Status> {
    let request = api::PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        write_id: None,
    };
    KvClient::new(channel(addr).await)
        .put(request)
        .await
        .map(tonic::Response::into_inner)
}

/// Reads `key` from the node at `addr` without a leader round, waiting
/// until it holds `want`.
async fn wait_stale_value(addr: &str, key: &str, want: &str) {
    let request = api::GetRequest {
        key: key.as_bytes().to_vec().into(),
        consistency: api::Consistency::Stale as i32,
    };
    let deadline = Instant::now() + WAIT_TIMEOUT;
    loop {
        let reply = KvClient::new(channel(addr).await).get(request.clone()).await;
        if let Ok(reply) = &reply {
            if reply.get_ref().found && reply.get_ref().value == want.as_bytes() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{addr} never held {key}={want}: {reply:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_served_on_peer_port_only(result: Result<impl std::fmt::Debug, tonic::Status>, call: &str) {
    let status = result.expect_err(call);
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{call}: {status:?}");
    assert!(status.message().contains("peer port"), "{call}: {status:?}");
    assert!(
        status.metadata().get(NOT_APPLIED_HEADER).is_some(),
        "{call}: the refusal says nothing was done: {status:?}"
    );
}

fn leader_id(term: u64, node_id: u64) -> Option<pb::LeaderId> {
    Some(pb::LeaderId { term, node_id })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_peer_ports_elects_a_leader_and_replicates() {
    // Raft travels over the peer ports only; writes still reach every node.
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::start_with_peer_ports(3).await;
    let leader = cluster.wait_for_leader(None).await;
    put(&cluster.addr(leader), "k", "v").await.expect("put on the leader");
    for id in 1..=3 {
        wait_stale_value(&cluster.addr(id), "k", "v").await;
        let status = status(&cluster.addr(id)).await;
        assert_eq!(status.addr, cluster.addr(id));
        assert_eq!(status.peer_addr, cluster.peer_addr(id));
        assert_ne!(status.addr, status.peer_addr, "the ports are separate");
        assert_eq!(
            status.leader_addr,
            cluster.addr(leader),
            "clients are pointed at the client port"
        );
        for member in &status.members {
            assert_eq!(member.addr, cluster.addr(member.id));
            assert_eq!(member.peer_addr, cluster.peer_addr(member.id));
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_raft_messages_on_a_client_port_are_unimplemented_and_change_nothing() {
    // A vote or append from whatever reaches a client port must not depose
    // the leader or touch a log: the Raft service is not there at all.
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::start_with_peer_ports(3).await;
    let leader = cluster.wait_for_leader(None).await;
    let before = status(&cluster.addr(leader)).await;
    let forged_term = before.term + FORGED_TERM_AHEAD;
    for id in 1..=3 {
        let mut raft = RaftClient::new(channel(&cluster.addr(id)).await);
        let vote = raft
            .vote(pb::VoteRequest {
                vote: Some(pb::Vote {
                    leader_id: leader_id(forged_term, 9),
                    committed: false,
                }),
                last_log_id: Some(pb::LogId {
                    leader_id: leader_id(forged_term, 9),
                    index: 1_000_000,
                }),
            })
            .await;
        assert_eq!(vote.expect_err("vote").code(), tonic::Code::Unimplemented);
        let append = raft
            .append_entries(pb::AppendEntriesRequest {
                vote: Some(pb::Vote {
                    leader_id: leader_id(forged_term, 9),
                    committed: true,
                }),
                prev_log_id: None,
                entries: Vec::new(),
                leader_commit: None,
            })
            .await;
        assert_eq!(append.expect_err("append").code(), tonic::Code::Unimplemented);
    }
    // The same service answers on the peer port (a stale vote, refused by
    // Raft, changes nothing): the refusals above are the port's doing.
    let stale_vote = pb::VoteRequest {
        vote: Some(pb::Vote {
            leader_id: leader_id(0, 9),
            committed: false,
        }),
        last_log_id: None,
    };
    let stale = RaftClient::new(channel(&cluster.peer_addr(leader)).await)
        .vote(cluster.raft_request(leader, stale_vote))
        .await
        .expect("the peer port serves Raft")
        .into_inner();
    assert!(!stale.vote_granted);
    put(&cluster.addr(leader), "after", "forgery").await.expect("put");
    for id in 1..=3 {
        let after = status(&cluster.addr(id)).await;
        assert_eq!(after.term, before.term, "node {id}'s term moved");
        assert_eq!(after.leader_id, leader, "node {id} follows another leader");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_calls_are_refused_on_a_client_port_and_served_on_the_peer_port() {
    // Adding, promoting or removing members re-shapes the cluster: only
    // hosts that reach the peer port may do it.
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::start_with_peer_ports(3).await;
    let leader = cluster.wait_for_leader(None).await;
    let addr4 = cluster.start_extra(4).await;
    let peer4 = cluster.peer_addr(4);
    let request = api::AddLearnerRequest {
        id: 4,
        addr: addr4.clone(),
        peer_addr: peer4.clone(),
    };
    let mut client_port = admin(&cluster.addr(leader)).await;
    assert_served_on_peer_port_only(client_port.add_learner(request.clone()).await, "AddLearner");
    assert_served_on_peer_port_only(
        client_port
            .change_membership(api::ChangeMembershipRequest { voters: vec![leader] })
            .await,
        "ChangeMembership",
    );
    assert_served_on_peer_port_only(
        client_port.remove_node(api::RemoveNodeRequest { id: 3 }).await,
        "RemoveNode",
    );
    assert_served_on_peer_port_only(
        client_port
            .initialize(api::InitializeRequest {
                members: vec![api::Member {
                    id: 1,
                    addr: cluster.addr(1),
                    voter: true,
                    peer_addr: cluster.peer_addr(1),
                }],
            })
            .await,
        "Initialize",
    );
    assert_eq!(status(&cluster.addr(leader)).await.members.len(), 3, "nothing changed");

    // A follower's peer port points an admin tool at the leader's peer port.
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let refused = admin(&cluster.peer_addr(follower))
        .await
        .add_learner(request.clone())
        .await
        .expect_err("a follower does not add learners");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(
        refused.metadata().get(LEADER_ADDR_HEADER).and_then(|v| v.to_str().ok()),
        Some(cluster.peer_addr(leader).as_str())
    );

    let peer_port = admin(&cluster.peer_addr(leader)).await;
    let added = retry_unavailable(|| {
        let mut peer_port = peer_port.clone();
        let request = request.clone();
        async move { peer_port.add_learner(request).await }
    })
    .await
    .into_inner();
    let member4 = added.members.iter().find(|m| m.id == 4).expect("node 4 is a member");
    assert_eq!(
        (member4.addr.as_str(), member4.peer_addr.as_str()),
        (addr4.as_str(), peer4.as_str())
    );
    let promoted = retry_unavailable(|| {
        let mut peer_port = peer_port.clone();
        async move {
            peer_port
                .change_membership(api::ChangeMembershipRequest {
                    voters: vec![1, 2, 3, 4],
                })
                .await
        }
    })
    .await
    .into_inner();
    assert_eq!(promoted.members.iter().filter(|m| m.voter).count(), 4);
    put(&cluster.addr(leader), "four", "voters").await.expect("put");
    wait_stale_value(&addr4, "four", "voters").await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_is_refused_on_a_client_port_and_forms_the_cluster_on_the_peer_port() {
    // Re-initializing a wiped node from a client port would fork the cluster.
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::start_uninitialized_with_peer_ports(3).await;
    let members: Vec<api::Member> = (1..=3)
        .map(|id| api::Member {
            id,
            addr: cluster.addr(id),
            voter: true,
            peer_addr: cluster.peer_addr(id),
        })
        .collect();
    let request = api::InitializeRequest { members };
    assert_served_on_peer_port_only(
        admin(&cluster.addr(1)).await.initialize(request.clone()).await,
        "Initialize",
    );
    assert_eq!(status(&cluster.addr(1)).await.members.len(), 0, "still uninitialized");
    admin(&cluster.peer_addr(1))
        .await
        .initialize(request)
        .await
        .expect("initialize on the peer port");
    let leader = cluster.wait_for_leader(None).await;
    let leader_addr = cluster.addr(leader);
    let written = retry_unavailable(|| put(&leader_addr, "formed", "yes")).await;
    cluster.wait_all_applied(written.applied_index).await;
    cluster.shutdown().await;
}
