//! TLS end to end: the client port serves TLS to clients that trust the
//! cluster's CA only, and the peer port holds every caller (peers and
//! admin tools) to a certificate that CA signed.

use std::time::Duration;

use proto::kv as api;
use proto::kv::cluster_client::ClusterClient;
use proto::kv::kv_client::KvClient;
use proto::raft as pb;
use proto::raft::raft_client::RaftClient;
use raft_node::handoff::Handoff;
use raft_node::testing::{retry_unavailable, TestCa as Ca, TestCluster, TestLeaf as Leaf};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Cluster tests run one at a time: three nodes per test already load the
/// two cores enough that parallel tests would starve heartbeats.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a call that should fail may take before the test gives up on it.
const REFUSED_CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// A channel to `addr` over TLS trusting `ca`, presenting `identity` if given.
fn tls_channel(addr: &str, ca: &Ca, identity: Option<&Leaf>) -> Channel {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.pem));
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert_pem, &leaf.key_pem));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls config")
        .timeout(REFUSED_CALL_TIMEOUT)
        .connect_lazy()
}

fn put_request(key: &str, value: &str) -> api::PutRequest {
    api::PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        write_id: None,
    }
}

/// A vote for a long-past term: harmless, and answered by any node whose
/// peer port lets the caller in.
fn stale_vote() -> pb::VoteRequest {
    pb::VoteRequest {
        vote: Some(pb::Vote {
            leader_id: Some(pb::LeaderId { term: 0, node_id: 9 }),
            committed: false,
        }),
        last_log_id: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_need_tls_and_the_cluster_ca() {
    // The client port admits only TLS clients that trust the cluster's CA;
    // such a client writes and reads as usual.
    let _serial = SERIAL.lock().await;
    let ca = Ca::new("cluster CA");
    let cluster = TestCluster::start_with_tls(3, |id| ca.node(id)).await;
    let leader = cluster.wait_for_leader(None).await;
    let addr = cluster.addr(leader);

    let plain = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .timeout(REFUSED_CALL_TIMEOUT)
        .connect_lazy();
    let refused = KvClient::new(plain).put(put_request("plain", "text")).await;
    assert!(refused.is_err(), "a plaintext client must be refused: {refused:?}");

    let stranger = Ca::new("some other CA");
    let refused = KvClient::new(tls_channel(&addr, &stranger, None))
        .put(put_request("wrong", "ca"))
        .await;
    assert!(
        refused.is_err(),
        "a client trusting another CA must be refused: {refused:?}"
    );

    let client = KvClient::new(tls_channel(&addr, &ca, None));
    retry_unavailable(|| {
        let mut client = client.clone();
        async move { client.put(put_request("greeting", "over tls")).await }
    })
    .await;
    let got = retry_unavailable(|| {
        let mut client = client.clone();
        async move {
            client
                .get(api::GetRequest {
                    key: b"greeting".to_vec().into(),
                    ..api::GetRequest::default()
                })
                .await
        }
    })
    .await
    .into_inner();
    assert!(got.found, "the write is read back");
    assert_eq!(&got.value[..], b"over tls");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_peer_port_requires_a_certificate_from_the_cluster_ca() {
    // Whatever reaches a peer port cannot vote or append unless it holds a
    // certificate the cluster's CA signed.
    let _serial = SERIAL.lock().await;
    let ca = Ca::new("cluster CA");
    let cluster = TestCluster::start_with_tls(3, |id| ca.node(id)).await;
    let leader = cluster.wait_for_leader(None).await;
    let peer_addr = cluster.peer_addr(leader);

    let anonymous = RaftClient::new(tls_channel(&peer_addr, &ca, None))
        .vote(stale_vote())
        .await;
    assert!(
        anonymous.is_err(),
        "a caller without a certificate must be refused: {anonymous:?}"
    );

    let foreign = Ca::new("foreign CA").leaf("intruder");
    let forged = RaftClient::new(tls_channel(&peer_addr, &ca, Some(&foreign)))
        .vote(stale_vote())
        .await;
    assert!(
        forged.is_err(),
        "a certificate from another CA must be refused: {forged:?}"
    );

    let member = ca.leaf("admin");
    let answered = RaftClient::new(tls_channel(&peer_addr, &ca, Some(&member)))
        .vote(cluster.raft_request(leader, stale_vote()))
        .await
        .expect("a certificate from the cluster CA is let in")
        .into_inner();
    assert!(!answered.vote_granted, "a stale vote is never granted");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_a_foreign_certificate_cannot_join() {
    // A node whose certificate another CA signed never receives the log,
    // while a node with the cluster's CA joins the same way.
    let _serial = SERIAL.lock().await;
    let ca = Ca::new("cluster CA");
    let mut cluster = TestCluster::start_with_tls(3, |id| ca.node(id)).await;
    let leader = cluster.wait_for_leader(None).await;
    let admin_identity = ca.leaf("admin");
    let admin = ClusterClient::new(tls_channel(&cluster.peer_addr(leader), &ca, Some(&admin_identity)));

    let foreign = Ca::new("foreign CA");
    let addr = cluster.start_extra_with_tls(4, foreign.node(4)).await;
    // openraft records the learner in the membership whether or not it
    // can be reached; what matters is that no entry ever gets to it.
    let _ = admin
        .clone()
        .add_learner(api::AddLearnerRequest {
            id: 4,
            addr,
            peer_addr: cluster.peer_addr(4),
        })
        .await;

    let addr = cluster.start_extra_with_tls(5, ca.node(5)).await;
    let joined = retry_unavailable(|| {
        let mut admin = admin.clone();
        let request = api::AddLearnerRequest {
            id: 5,
            addr: addr.clone(),
            peer_addr: cluster.peer_addr(5),
        };
        async move { admin.add_learner(request).await }
    })
    .await
    .into_inner();
    cluster.wait_applied(5, joined.log_index).await;
    assert_eq!(
        cluster.applied(4),
        0,
        "the node with a foreign certificate received entries, though a later node caught up"
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn tls_without_a_separate_peer_port_is_refused_before_the_data_is_touched() {
    // On one port, peers could not be held to certificates without locking
    // clients out; a node must say so at start, not serve half-protected.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = raft_node::NodeConfig {
        id: 1,
        advertise_addr: "127.0.0.1:1".into(),
        peer_advertise_addr: None,
        data_dir: dir.path().join("node"),
        initial_members: std::collections::BTreeMap::new(),
        initial_peer_addrs: std::collections::BTreeMap::new(),
        initialize: false,
        restore_from: None,
        timing: raft_node::RaftTiming::default(),
        engine: storage::Options::default(),
        limits: raft_node::Limits::default(),
        tls: Some(Ca::new("cluster CA").node(1)),
        fs: storage::io::RealFs::shared(),
    };
    let refused = raft_node::KvNode::start(config).await.err().expect("refused");
    assert!(
        matches!(&refused, raft_node::NodeError::Config(reason) if reason.contains("--peer-listen")),
        "{refused:?}"
    );
    assert!(!dir.path().join("node").exists(), "the data directory was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_leader_hands_leadership_over() {
    // The handoff's call to the successor (a graceful stop's first step)
    // goes over the peer port's mutual TLS like Raft's own calls; a
    // plaintext call there is refused and the handoff fails.
    let _serial = SERIAL.lock().await;
    let ca = Ca::new("cluster CA");
    let timing = raft_node::testing::fast_timing();
    let cluster = TestCluster::start_with_tls(3, |id| ca.node(id)).await;
    let leader = cluster.wait_for_leader(None).await;
    // The old leader grants its successor's vote only once its own vote is
    // older than a lease (see raft_node::handoff).
    tokio::time::sleep(Duration::from_millis(timing.election_timeout_ms_max + 100)).await;
    let handoff = cluster.node(leader).hand_off().await;
    let Handoff::Moved { to, .. } = handoff else {
        panic!("the TLS leader did not hand over: {handoff:?}");
    };
    assert_eq!(cluster.wait_for_leader(Some(leader)).await, to, "the successor leads");
    let client = KvClient::new(tls_channel(&cluster.addr(to), &ca, None));
    retry_unavailable(|| {
        let mut client = client.clone();
        async move { client.put(put_request("after", "handoff")).await }
    })
    .await;
    cluster.shutdown().await;
}
