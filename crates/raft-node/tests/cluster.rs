//! In-process cluster tests: real nodes, real gRPC on 127.0.0.1 ports, real
//! disks (temp dirs), driven through the public API.

use std::time::{Duration, Instant};

use proto::kv as api;
use proto::kv::cluster_client::ClusterClient;
use proto::kv::kv_client::KvClient;
use proto::raft as pb;
use proto::raft::raft_client::RaftClient;
use raft_node::testing::{fast_timing, retry_unavailable, TestCluster, WAIT_TIMEOUT};
use raft_node::{Limits, RaftTiming};
use tonic::transport::Channel;

/// Cluster tests run one at a time: three nodes per test already load the
/// two cores enough that parallel tests would starve heartbeats.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Opens an exactly-once session through `kv` (a leader).
async fn open_session(kv: &mut KvClient<Channel>) -> u64 {
    kv.open_session(api::OpenSessionRequest {})
        .await
        .expect("open a session")
        .into_inner()
        .client_id
}

/// Typed gRPC calls on the shared in-process cluster.
trait Api {
    /// A KV client of node `id`.
    async fn kv(&self, id: u64) -> KvClient<Channel>;

    /// A Cluster (admin) client of node `id`.
    async fn admin(&self, id: u64) -> ClusterClient<Channel>;

    /// Puts `key` = `value` through node `id`, once.
    async fn put(&self, id: u64, key: &str, value: &str) -> Result<api::WriteResponse, tonic::Status>;

    /// Reads `key` from node `id`, retrying while the node is briefly
    /// unavailable (an election under load), as a client would.
    async fn get(&self, id: u64, key: &str, consistency: api::Consistency) -> Option<String>;

    /// Node `id`'s content digest.
    async fn digest(&self, id: u64) -> api::DigestResponse;

    /// Node `id`'s status.
    async fn status(&self, id: u64) -> api::StatusResponse;
}

impl Api for TestCluster {
    async fn kv(&self, id: u64) -> KvClient<Channel> {
        KvClient::connect(format!("http://{}", self.addr(id)))
            .await
            .expect("connect")
    }

    async fn admin(&self, id: u64) -> ClusterClient<Channel> {
        ClusterClient::connect(format!("http://{}", self.addr(id)))
            .await
            .expect("connect")
    }

    async fn put(&self, id: u64, key: &str, value: &str) -> Result<api::WriteResponse, tonic::Status> {
        let request = api::PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            write_id: None,
        };
        self.kv(id).await.put(request).await.map(tonic::Response::into_inner)
    }

    /// Reads `key` from node `id`, retrying while the node is briefly
    /// unavailable (an election under load), as a client would.
    async fn get(&self, id: u64, key: &str, consistency: api::Consistency) -> Option<String> {
        let request = api::GetRequest {
            key: key.as_bytes().to_vec().into(),
            consistency: consistency as i32,
        };
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            match self.kv(id).await.get(request.clone()).await {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    return reply.found.then(|| String::from_utf8_lossy(&reply.value).into_owned());
                }
                Err(status) if status.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(status) => panic!("get {key} from node {id}: {status:?}"),
            }
        }
    }

    async fn digest(&self, id: u64) -> api::DigestResponse {
        self.admin(id)
            .await
            .digest(api::DigestRequest {})
            .await
            .expect("digest")
            .into_inner()
    }

    async fn status(&self, id: u64) -> api::StatusResponse {
        self.admin(id)
            .await
            .status(api::StatusRequest {})
            .await
            .expect("status")
            .into_inner()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_a_leader_and_replicate_writes() {
    // A write acknowledged by the leader is readable everywhere.
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader(None).await;
    let reply = cluster.put(leader, "greeting", "hello").await.expect("put");
    assert!(reply.applied_index > 0 && !reply.duplicate);
    assert_eq!(
        cluster
            .get(leader, "greeting", api::Consistency::Linearizable)
            .await
            .as_deref(),
        Some("hello")
    );
    for id in 1..=3 {
        cluster.wait_applied(id, reply.applied_index).await;
        assert_eq!(
            cluster.get(id, "greeting", api::Consistency::Stale).await.as_deref(),
            Some("hello"),
            "node {id}"
        );
    }
    assert_eq!(
        cluster.get(leader, "missing", api::Consistency::Linearizable).await,
        None,
        "a missing key is not an error"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_refuses_writes_and_linearizable_reads_with_a_leader_hint() {
    // Clients find the leader from any node's answer.
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader(None).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    for status in [
        cluster
            .put(follower, "k", "v")
            .await
            .expect_err("follower refuses writes"),
        cluster
            .kv(follower)
            .await
            .get(api::GetRequest {
                key: "k".as_bytes().to_vec().into(),
                consistency: api::Consistency::Linearizable as i32,
            })
            .await
            .expect_err("follower refuses linearizable reads"),
    ] {
        assert_eq!(status.code(), tonic::Code::Unavailable);
        let hint = |key: &str| {
            status
                .metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        assert_eq!(hint("x-kv-leader-id"), Some(leader.to_string()));
        assert_eq!(hint("x-kv-leader-addr").as_deref(), Some(cluster.addr(leader).as_str()));
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_leader_elects_a_new_one_that_keeps_every_write() {
    // Failover: the survivors elect a leader that has every acknowledged write and takes new ones.
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::start(3).await;
    let old = cluster.wait_for_leader(None).await;
    for i in 0..20 {
        cluster.put(old, &format!("k{i}"), &format!("v{i}")).await.expect("put");
    }
    cluster.stop(old).await;
    let started = Instant::now();
    let new = cluster.wait_for_leader(Some(old)).await;
    let mut accepted = None;
    while accepted.is_none() {
        accepted = cluster.put(new, "after", "failover").await.ok();
        assert!(
            started.elapsed() < WAIT_TIMEOUT,
            "the new leader never accepted a write"
        );
    }
    eprintln!(
        "failover: first write accepted {:?} after the leader stopped",
        started.elapsed()
    );
    for i in 0..20 {
        let value = cluster.get(new, &format!("k{i}"), api::Consistency::Linearizable).await;
        assert_eq!(value, Some(format!("v{i}")));
    }
    // The old leader comes back as a follower and catches up.
    cluster.restart(old).await;
    let index = accepted.expect("accepted").applied_index;
    cluster.wait_applied(old, index).await;
    assert_eq!(
        cluster.get(old, "after", api::Consistency::Stale).await.as_deref(),
        Some("failover")
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_is_applied_once() {
    // A retry after an unknown outcome must not overwrite a newer value.
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader(None).await;
    let mut kv = cluster.kv(leader).await;
    let client_id = open_session(&mut kv).await;
    let put = |value: &str, sequence: u64| api::PutRequest {
        key: "k".as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        write_id: Some(api::WriteId {
            client_id,
            sequence,
            first_unanswered: 1,
        }),
    };
    let first = kv.put(put("first", 1)).await.expect("put").into_inner();
    kv.put(put("second", 2)).await.expect("put");
    let retry = kv.put(put("first", 1)).await.expect("retry").into_inner();
    assert!(retry.duplicate);
    assert_eq!(retry.applied_index, first.applied_index);
    assert_eq!(
        cluster
            .get(leader, "k", api::Consistency::Linearizable)
            .await
            .as_deref(),
        Some("second")
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_log_entries_and_each_is_applied_once() {
    // Writes are batched into shared entries; every one must still be applied
    // exactly once, including a retry that lands in the same batch as its original.
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader(None).await;
    let index_before = cluster.status(leader).await.last_log_index;
    let client_id = open_session(&mut cluster.kv(leader).await).await;
    let index_before = index_before + 1; // the session's own entry
    const WRITES: u64 = 200;
    let mut tasks = tokio::task::JoinSet::new();
    for sequence in 1..=WRITES {
        // Each write is sent twice at once, as a client retrying a write
        // whose first attempt is still in flight would.
        for _copy in 0..2 {
            let mut kv = cluster.kv(leader).await;
            tasks.spawn(async move {
                let request = api::PutRequest {
                    key: format!("key-{sequence:03}").into_bytes().into(),
                    value: format!("value-{sequence}").into_bytes().into(),
                    write_id: Some(api::WriteId {
                        client_id,
                        sequence,
                        first_unanswered: 1,
                    }),
                };
                let reply = kv.put(request).await.expect("put").into_inner();
                (sequence, reply)
            });
        }
    }
    let mut applied = std::collections::BTreeMap::<u64, Vec<api::WriteResponse>>::new();
    while let Some(joined) = tasks.join_next().await {
        let (sequence, reply) = joined.expect("task");
        applied.entry(sequence).or_default().push(reply);
    }
    for (sequence, replies) in &applied {
        let originals: Vec<_> = replies.iter().filter(|r| !r.duplicate).collect();
        assert_eq!(originals.len(), 1, "write {sequence} applied once: {replies:?}");
        assert!(
            replies.iter().all(|r| r.applied_index == originals[0].applied_index),
            "a duplicate reports its original's index: {replies:?}"
        );
    }
    let index_after = cluster.status(leader).await.last_log_index;
    assert!(
        index_after - index_before < WRITES,
        "{WRITES} concurrent writes took {} log entries: not batched",
        index_after - index_before
    );
    for sequence in [1, WRITES / 2, WRITES] {
        let key = format!("key-{sequence:03}");
        let value = cluster.get(leader, &key, api::Consistency::Linearizable).await;
        assert_eq!(value, Some(format!("value-{sequence}")));
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_outside_the_limits_are_invalid_arguments() {
    // Bad input gets a clear error naming the limit, and nothing is applied.
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader(None).await;
    let mut kv = cluster.kv(leader).await;
    let huge_key = vec![b'k'; Limits::default().key_bytes_max + 1];
    let cases = vec![
        kv.put(api::PutRequest {
            key: Default::default(),
            value: "v".as_bytes().to_vec().into(),
            write_id: None,
        })
        .await,
        kv.put(api::PutRequest {
            key: huge_key.into(),
            value: Default::default(),
            write_id: None,
        })
        .await,
        kv.put(api::PutRequest {
            key: "k".as_bytes().to_vec().into(),
            value: vec![0u8; Limits::default().value_bytes_max + 1].into(),
            write_id: None,
        })
        .await,
    ];
    for case in cases {
        let status = case.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("empty") || status.message().contains("_max"),
            "{}",
            status.message()
        );
    }
    let pairs = vec![
        api::KeyValue {
            key: "ok".as_bytes().to_vec().into(),
            value: "v".as_bytes().to_vec().into(),
        },
        api::KeyValue {
            key: Default::default(),
            value: "v".as_bytes().to_vec().into(),
        },
    ];
    let status = kv
        .batch_put(api::BatchPutRequest { pairs, write_id: None })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        cluster.get(leader, "ok", api::Consistency::Linearizable).await,
        None,
        "nothing half-applied"
    );
    let range = kv
        .range(api::RangeRequest {
            limit: Limits::default().range_limit_max + 1,
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(range.code(), tonic::Code::InvalidArgument);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_pages_through_more_keys_than_one_page() {
    // Every key comes back exactly once, in order, across pages.
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader(None).await;
    let mut kv = cluster.kv(leader).await;
    let pairs: Vec<api::KeyValue> = (0..250)
        .map(|i| api::KeyValue {
            key: format!("key{i:04}").into_bytes().into(),
            value: format!("value{i}").into_bytes().into(),
        })
        .collect();
    kv.batch_put(api::BatchPutRequest { pairs, write_id: None })
        .await
        .expect("batch");
    let mut start = bytes::Bytes::new();
    let mut seen = Vec::new();
    loop {
        let request = api::RangeRequest {
            start: start.clone(),
            end: Default::default(),
            limit: 100,
            consistency: 0,
        };
        let page = retry_unavailable(|| {
            let mut kv = kv.clone();
            let request = request.clone();
            async move { kv.range(request).await }
        })
        .await
        .into_inner();
        assert!(page.pairs.len() <= 100);
        seen.extend(
            page.pairs
                .into_iter()
                .map(|p| String::from_utf8_lossy(&p.key).into_owned()),
        );
        if page.next_start.is_empty() {
            break;
        }
        start = page.next_start;
    }
    let expected: Vec<String> = (0..250).map(|i| format!("key{i:04}")).collect();
    assert_eq!(seen, expected);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_rejoins_and_catches_up_through_a_snapshot() {
    // A follower whose log entries were purged on the leader can only catch up from a snapshot.
    let _serial = SERIAL.lock().await;
    let timing = RaftTiming {
        snapshot_logs_since_last: 50,
        logs_kept_after_snapshot: 5,
        ..fast_timing()
    };
    let mut cluster = TestCluster::start_with_timing(3, timing).await;
    let leader = cluster.wait_for_leader(None).await;
    let victim = (1..=3).rev().find(|id| *id != leader).expect("a follower");
    let admin = cluster.admin(leader).await;
    retry_unavailable(|| {
        let mut admin = admin.clone();
        async move { admin.remove_node(api::RemoveNodeRequest { id: victim }).await }
    })
    .await;
    cluster.stop(victim).await;
    std::fs::remove_dir_all(cluster.data_dir(victim)).expect("wipe");
    let mut last = 0;
    for i in 0..300 {
        last = cluster
            .put(leader, &format!("k{i:03}"), &format!("v{i}"))
            .await
            .expect("put")
            .applied_index;
    }
    // The leader snapshots every 50 entries, but builds and purges in the
    // background: the premise holds once its first entries are gone.
    cluster.wait_purged(leader, 10).await;
    cluster.restart(victim).await;
    let addr = cluster.addr(victim);
    retry_unavailable(|| {
        let mut admin = admin.clone();
        let request = api::AddLearnerRequest {
            id: victim,
            addr: addr.clone(),
            peer_addr: String::new(),
        };
        async move { admin.add_learner(request).await }
    })
    .await;
    retry_unavailable(|| {
        let mut admin = admin.clone();
        let voters: Vec<u64> = (1..=3).collect();
        async move { admin.change_membership(api::ChangeMembershipRequest { voters }).await }
    })
    .await;
    cluster.wait_applied(victim, last).await;
    let status = cluster
        .admin(victim)
        .await
        .status(api::StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert!(
        status.snapshot_index > 0,
        "the rejoined node must have installed a snapshot: {status:?}"
    );
    let want = cluster.digest(leader).await;
    let got = cluster.digest(victim).await;
    assert_eq!((got.keys, got.digest.clone()), (want.keys, want.digest.clone()));
    assert_eq!(got.keys, 300);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_stream_cut_short_is_refused_and_the_follower_keeps_running() {
    // A leader that gives up sending a snapshot part-way ends its stream as
    // cleanly as a whole one. The follower must see that the archive is not
    // whole and refuse it, not hand it to Raft, whose failed install is
    // fatal: a node once stopped here for good ("archive ends within the
    // magic number") after a membership change cut its snapshot transfer.
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader(None).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let (vote, term) = {
        let metrics = cluster.raft(leader).metrics();
        let m = metrics.borrow();
        (m.vote, m.current_term)
    };
    let log_id = |index| {
        Some(pb::LogId {
            leader_id: Some(pb::LeaderId { term, node_id: leader }),
            index,
        })
    };
    let first = pb::SnapshotChunk {
        vote: Some(pb::Vote {
            leader_id: Some(pb::LeaderId {
                term: vote.leader_id.term,
                node_id: vote.leader_id.node_id,
            }),
            committed: vote.committed,
        }),
        meta: Some(pb::SnapshotMeta {
            last_log_id: log_id(10_000),
            last_membership: Some(pb::StoredMembership {
                log_id: log_id(1),
                membership: None,
            }),
            snapshot_id: "10000-cut-short".into(),
        }),
        // The first bytes of an archive's magic number, then nothing.
        data: vec![0x01, 0x00, 0x50, 0x41].into(),
    };
    let channel = Channel::from_shared(format!("http://{}", cluster.addr(follower)))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let refused = RaftClient::new(channel)
        .install_snapshot(cluster.raft_request(follower, tokio_stream::iter([first])))
        .await
        .expect_err("a cut archive is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("not whole"), "{refused:?}");
    // Still a working member: it applies what the cluster writes next.
    let applied = cluster.put(leader, "after", "cut").await.expect("put").applied_index;
    cluster.wait_applied(follower, applied).await;
    assert!(cluster.raft(follower).metrics().borrow().running_state.is_ok());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_taken_once_the_log_passes_its_byte_bound() {
    // The entry-count policy alone never fires when each entry is large; the byte bound must.
    let _serial = SERIAL.lock().await;
    let timing = RaftTiming {
        snapshot_logs_since_last: 1_000_000,
        snapshot_log_bytes_max: 64 * 1024,
        ..fast_timing()
    };
    let cluster = TestCluster::start_with_timing(3, timing).await;
    let leader = cluster.wait_for_leader(None).await;
    let value = "v".repeat(4096);
    for i in 0..40 {
        cluster.put(leader, &format!("k{i:03}"), &value).await.expect("put");
    }
    let deadline = Instant::now() + WAIT_TIMEOUT;
    loop {
        let status = cluster.status(leader).await;
        if status.snapshot_index > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot after 160 KiB of log with a 64 KiB bound: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_answers_in_both_protocol_versions() {
    // Older grpcurl builds and GUI clients ask v1alpha; a v1-only server left them with UNIMPLEMENTED.
    use tonic_reflection::pb::{v1, v1alpha};
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::start(1).await;
    let channel = Channel::from_shared(format!("http://{}", cluster.addr(1)))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut replies = alpha
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("v1alpha is served")
        .into_inner();
    let reply = replies.message().await.expect("a reply").expect("one message");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) = reply.message_response
    else {
        panic!("not a service list: {reply:?}");
    };
    assert!(list.service.iter().any(|s| s.name == "kv.v1.KV"), "{list:?}");
    let mut v1_client = v1::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    v1_client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("v1 is served");
    cluster.shutdown().await;
}
