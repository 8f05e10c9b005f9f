//! A follower that was down while 16 MiB batches were written catches up
//! from the leader's log, not from a snapshot: append-entries messages are
//! bounded by bytes, split when too large, and given time by their size.

use proto::kv as api;
use proto::kv::cluster_client::ClusterClient;
use proto::kv::kv_client::KvClient;
use raft_node::testing::{fast_timing, TestCluster};
use raft_node::RaftTiming;

/// Batches written while the follower is down.
const BATCHES: usize = 4;
/// Pairs per batch: with values just under 1 MiB, a batch is just under
/// the 16 MiB batch limit.
const BATCH_PAIRS: usize = 16;
/// Bytes of each value (1 MiB less room for the keys).
const VALUE_BYTES: usize = (1 << 20) - 64;

async fn admin(cluster: &TestCluster, id: u64) -> ClusterClient<tonic::transport::Channel> {
    ClusterClient::connect(format!("http://{}", cluster.addr(id)))
        .await
        .expect("connect")
}

async fn digest(cluster: &TestCluster, id: u64) -> api::DigestResponse {
    admin(cluster, id)
        .await
        .digest(api::DigestRequest {})
        .await
        .expect("digest")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_catches_up_from_the_log_after_16_mib_batches() {
    // With count-only batching, 16 MiB entries made the leader resend one
    // oversized message until it gave up and sent a snapshot.
    let timing = RaftTiming {
        // No snapshot may happen: the follower must catch up from the log.
        snapshot_logs_since_last: 1_000_000,
        ..fast_timing()
    };
    let mut cluster = TestCluster::start_with_timing(3, timing).await;
    let leader = cluster.wait_for_leader(None).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.stop(follower).await;
    let mut kv = KvClient::connect(format!("http://{}", cluster.addr(leader)))
        .await
        .expect("connect")
        .max_encoding_message_size(64 << 20);
    let mut last_index = 0;
    for batch in 0..BATCHES {
        let pairs = (0..BATCH_PAIRS)
            .map(|pair| api::KeyValue {
                key: format!("batch{batch}-pair{pair:02}").into_bytes().into(),
                value: vec![(batch * BATCH_PAIRS + pair) as u8; VALUE_BYTES].into(),
            })
            .collect();
        let request = api::BatchPutRequest { pairs, write_id: None };
        last_index = kv
            .batch_put(request)
            .await
            .expect("batch put")
            .into_inner()
            .applied_index;
    }
    cluster.restart(follower).await;
    cluster.wait_applied(follower, last_index).await;
    let status = admin(&cluster, follower)
        .await
        .status(api::StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(
        status.snapshot_index, 0,
        "caught up from a snapshot, not the log: {status:?}"
    );
    let (want, got) = (digest(&cluster, leader).await, digest(&cluster, follower).await);
    assert_eq!(want.keys, (BATCHES * BATCH_PAIRS) as u64);
    assert_eq!((got.keys, got.digest), (want.keys, want.digest));
    cluster.shutdown().await;
}
