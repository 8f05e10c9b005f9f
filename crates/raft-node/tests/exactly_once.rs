//! Exactly-once writes and bounded pages, driven the way a stock gRPC
//! client built from `proto/kv.proto` would: raw write ids, late retries,
//! default message limits.

use proto::kv as api;
use proto::kv::cluster_client::ClusterClient;
use proto::kv::kv_client::KvClient;
use raft_node::testing::TestCluster;
use tonic::transport::Channel;
use tonic::Code;

/// Cluster tests run one at a time: three nodes per test already load the
/// two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn kv(cluster: &TestCluster, id: u64) -> KvClient<Channel> {
    // Default limits on purpose: what any gRPC client accepts.
    KvClient::connect(format!("http://{}", cluster.addr(id)))
        .await
        .expect("connect")
}

async fn open_session(kv: &mut KvClient<Channel>) -> u64 {
    let id = kv
        .open_session(api::OpenSessionRequest {})
        .await
        .expect("open a session")
        .into_inner()
        .client_id;
    assert_ne!(id, 0, "a session id is never 0");
    id
}

fn put(key: &str, value: &str, client_id: u64, sequence: u64, first_unanswered: u64) -> api::PutRequest {
    api::PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        write_id: Some(api::WriteId {
            client_id,
            sequence,
            first_unanswered,
        }),
    }
}

async fn get(kv: &mut KvClient<Channel>, key: &str) -> Option<String> {
    let reply = kv
        .get(api::GetRequest {
            key: key.as_bytes().to_vec().into(),
            consistency: api::Consistency::Linearizable as i32,
        })
        .await
        .expect("get")
        .into_inner();
    reply.found.then(|| String::from_utf8_lossy(&reply.value).into_owned())
}

fn session_expired(status: &tonic::Status) -> bool {
    status.code() == Code::FailedPrecondition
        && status
            .metadata()
            .get("x-kv-session-expired")
            .and_then(|v| v.to_str().ok())
            == Some("1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_first_write_is_applied_not_called_a_duplicate() {
    // 1,100 later writes of the same session must not make the server forget
    // sequence 1 and answer its late arrival "duplicate" without applying it.
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader(None).await;
    let mut client = kv(&cluster, leader).await;
    let id = open_session(&mut client).await;
    let mut tasks = tokio::task::JoinSet::new();
    for sequence in 2..=1_101u64 {
        let mut client = client.clone();
        tasks.spawn(async move {
            let request = put(&format!("later-{sequence}"), "v", id, sequence, 1);
            (sequence, client.put(request).await)
        });
        if tasks.len() >= 64 {
            let (sequence, reply) = tasks.join_next().await.expect("a task").expect("joined");
            check_later_write(sequence, reply);
        }
    }
    while let Some(joined) = tasks.join_next().await {
        let (sequence, reply) = joined.expect("joined");
        check_later_write(sequence, reply);
    }
    let reply = client
        .put(put("slow", "first", id, 1, 1))
        .await
        .expect("the slow write")
        .into_inner();
    assert!(!reply.duplicate, "sequence 1 was never applied before");
    assert_eq!(get(&mut client, "slow").await.as_deref(), Some("first"));
    cluster.shutdown().await;
}

/// Writes inside the window apply; those a window or more past sequence 1
/// (still unanswered) are refused as not applied.
fn check_later_write(sequence: u64, reply: Result<tonic::Response<api::WriteResponse>, tonic::Status>) {
    match reply {
        Ok(reply) => {
            assert!(sequence <= 1024, "sequence {sequence} is past the window yet applied");
            assert!(!reply.into_inner().duplicate);
        }
        Err(status) => {
            assert!(sequence > 1024, "sequence {sequence} refused: {status:?}");
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert_eq!(
                status.metadata().get("x-kv-not-applied").and_then(|v| v.to_str().ok()),
                Some("1")
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_the_server_cannot_tell_apart_are_refused_never_applied() {
    // An unknown session or a sequence below the window gets "session
    // expired": never OK, never a second apply.
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader(None).await;
    let mut client = kv(&cluster, leader).await;

    // An id OpenSession would give (top bit set) that no session holds.
    let refused = client
        .put(put("k", "from-nowhere", (1 << 63) | 0x5eed_1234, 1, 1))
        .await
        .expect_err("an unknown session");
    assert!(session_expired(&refused), "{refused:?}");
    assert_eq!(get(&mut client, "k").await, None, "nothing applied");

    let id = open_session(&mut client).await;
    client.put(put("k", "a", id, 1, 1)).await.expect("write 1");
    client.put(put("k", "b", id, 2, 2)).await.expect("write 2, 1 answered");
    let late = client
        .put(put("k", "a", id, 1, 1))
        .await
        .expect_err("a retry below the window");
    assert!(session_expired(&late), "{late:?}");
    assert_eq!(
        get(&mut client, "k").await.as_deref(),
        Some("b"),
        "the newer value stays"
    );

    let bad = client.put(put("k", "c", id, 3, 4)).await.expect_err("malformed id");
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_restarted_from_their_flushes_answer_a_retry_alike() {
    // Session changes made by a duplicate must be persisted like any other,
    // or a restarted replica answers the same retry differently.
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader(None).await;
    let mut client = kv(&cluster, leader).await;
    let id = open_session(&mut client).await;
    client.put(put("k", "one", id, 1, 1)).await.expect("write 1");
    client.put(put("k", "two", id, 2, 1)).await.expect("write 2");
    let again = client
        .put(put("k", "two", id, 2, 2))
        .await
        .expect("a retry of 2 that also says 1 was answered")
        .into_inner();
    assert!(again.duplicate);
    // Enough unrelated data that every engine flushes past those entries.
    let filler = "x".repeat(1024);
    let mut last = 0;
    for i in 0..600 {
        let reply = client
            .put(api::PutRequest {
                key: format!("filler-{i}").into_bytes().into(),
                value: filler.clone().into_bytes().into(),
                write_id: None,
            })
            .await
            .expect("filler")
            .into_inner();
        last = reply.applied_index;
    }
    cluster.wait_all_applied(last).await;
    for node in 1..=3 {
        cluster.stop(node).await;
    }
    for node in 1..=3 {
        cluster.restart(node).await;
    }
    let leader = cluster.wait_for_leader(None).await;
    let mut client = kv(&cluster, leader).await;
    let retry = client
        .put(put("k", "one", id, 1, 1))
        .await
        .expect_err("sequence 1 is below the window the client moved");
    assert!(session_expired(&retry), "{retry:?}");
    assert_eq!(get(&mut client, "k").await.as_deref(), Some("two"));
    let index = cluster_status(&cluster, leader).await.applied_index;
    cluster.wait_all_applied(index).await;
    let mut digests = Vec::new();
    for node in 1..=3 {
        let mut admin = ClusterClient::connect(format!("http://{}", cluster.addr(node)))
            .await
            .expect("connect");
        digests.push(admin.digest(api::DigestRequest {}).await.expect("digest").into_inner());
    }
    assert!(
        digests.windows(2).all(|w| w[0].digest == w[1].digest),
        "data and sessions agree on every replica: {digests:?}"
    );
    cluster.shutdown().await;
}

async fn cluster_status(cluster: &TestCluster, id: u64) -> api::StatusResponse {
    let mut admin = ClusterClient::connect(format!("http://{}", cluster.addr(id)))
        .await
        .expect("connect");
    admin.status(api::StatusRequest {}).await.expect("status").into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_pages_of_big_values_fit_a_default_grpc_client() {
    // 1,000 values of ~4.19 KB passed the 4 MiB default receive limit in one page.
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader(None).await;
    let mut client = kv(&cluster, leader).await;
    let value = vec![b'v'; 4_190];
    let pairs: Vec<api::KeyValue> = (0..1_000)
        .map(|i| api::KeyValue {
            key: format!("big-{i:04}").into_bytes().into(),
            value: value.clone().into(),
        })
        .collect();
    client
        .batch_put(api::BatchPutRequest { pairs, write_id: None })
        .await
        .expect("batch");
    let mut start = bytes::Bytes::new();
    let (mut seen, mut pages) = (0, 0);
    loop {
        let page = client
            .range(api::RangeRequest {
                start: start.clone(),
                end: Default::default(),
                limit: 1_000,
                consistency: api::Consistency::Linearizable as i32,
            })
            .await
            .expect("a page a default client can decode")
            .into_inner();
        seen += page.pairs.len();
        pages += 1;
        if page.next_start.is_empty() {
            break;
        }
        start = page.next_start;
    }
    assert_eq!(seen, 1_000);
    assert!(pages >= 2, "the first page stopped under the limit");
    cluster.shutdown().await;
}
