//! The client against a real three-node cluster in this process: leader
//! finding, failover, exactly-once retries, range paging.

use std::time::{Duration, Instant};

use cluster_client::{Client, Consistency, Error};
use raft_node::testing::TestCluster;
use tokio_stream::StreamExt;

/// Longest a single write may take while the leader fails over.
const FAILOVER_WRITE_BOUND: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_given_only_a_follower_finds_the_leader() {
    // A user may know any one node; the hint takes the client to the leader.
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader(None).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let client = Client::connect([cluster.addr(follower)]).expect("client");

    client.put("k", "v").await.expect("put through a follower");
    assert_eq!(client.cached_leader(), Some(cluster.addr(leader)));
    assert!(
        client.endpoints().contains(&cluster.addr(leader)),
        "the leader joins the list"
    );
    assert_eq!(client.get("k").await.expect("get").as_deref(), Some(&b"v"[..]));

    let status = client.status(&cluster.addr(follower)).await.expect("status");
    assert_eq!((status.id, status.leader_id), (follower, leader));
    assert_eq!(status.role, "follower");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_keep_succeeding_while_the_leader_is_stopped() {
    // Failover costs latency, never an error, within the request deadline.
    let mut cluster = TestCluster::start(3).await;
    let client = Client::builder(cluster.addrs())
        .request_timeout(Duration::from_secs(10))
        .attempt_timeout(Duration::from_secs(1))
        .build()
        .expect("client");
    let mut normal = Duration::ZERO;
    for i in 0..20 {
        let started = Instant::now();
        client.put(format!("before{i}"), "v").await.expect("put before");
        normal = normal.max(started.elapsed());
    }

    let leader = cluster.wait_for_leader(None).await;
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            for i in 0..60 {
                let started = Instant::now();
                let result = client.put(format!("during{i:03}"), format!("{i}")).await;
                latencies.push(started.elapsed());
                result.unwrap_or_else(|e| panic!("write {i} failed during failover: {e}"));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            latencies
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.stop(leader).await;
    let latencies = writer.await.expect("writer task");
    let worst = latencies.iter().max().copied().unwrap_or_default();
    println!(
        "failover: worst write {} ms, worst before {} ms, added {} ms",
        worst.as_millis(),
        normal.as_millis(),
        worst.saturating_sub(normal).as_millis()
    );
    assert!(worst < FAILOVER_WRITE_BOUND, "a write took {worst:?} during failover");

    let new_leader = cluster.wait_for_leader(Some(leader)).await;
    assert_ne!(new_leader, leader);
    for i in 0..60 {
        let value = client.get(format!("during{i:03}")).await.expect("read back");
        assert_eq!(
            value.as_deref(),
            Some(format!("{i}").as_bytes()),
            "acknowledged write {i} lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_retried_across_a_failover_is_applied_once() {
    // The retry of an applied write must not apply it again, even on a new
    // leader: a second application could overwrite a newer value.
    let mut cluster = TestCluster::start(3).await;
    let client = Client::builder(cluster.addrs())
        .request_timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let first = client.put("k", "original").await.expect("first put");
    assert!(!first.duplicate);
    cluster.wait_all_applied(first.applied_index).await;

    let leader = cluster.wait_for_leader(None).await;
    cluster.stop(leader).await;
    cluster.wait_for_leader(Some(leader)).await;

    // Sequence 1 is the first put: resend it, as a retry would, with
    // another value that must not land.
    let retry = client.put_with_sequence(1, "k", "retried").await.expect("retry");
    assert!(retry.duplicate, "the retry was applied again: {retry:?}");
    assert_eq!(client.get("k").await.expect("get").as_deref(), Some(&b"original"[..]));

    // A fresh write still applies.
    let fresh = client.put("k", "fresh").await.expect("fresh put");
    assert!(!fresh.duplicate);
    assert_eq!(client.get("k").await.expect("get").as_deref(), Some(&b"fresh"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_pages_through_more_keys_than_one_page() {
    // 250 keys with 100-pair pages: three pages, every key once, in order.
    let cluster = TestCluster::start(3).await;
    let client = Client::builder(cluster.addrs())
        .range_page_size(100)
        .build()
        .expect("client");
    let pairs: Vec<_> = (0..250)
        .map(|i| (format!("key{i:04}").into(), format!("value{i}").into()))
        .collect();
    client.batch_put(pairs.clone()).await.expect("batch put");
    client.put("zzz-outside", "x").await.expect("put outside the range");

    for consistency in [Consistency::Linearizable, Consistency::Stale] {
        let got: Vec<_> = client
            .range_with("key", "key9", consistency)
            .collect::<Result<Vec<_>, Error>>()
            .await
            .expect("range");
        if consistency == Consistency::Stale && got.len() < pairs.len() {
            continue; // a follower may lag a moment; the leader read is the check
        }
        assert_eq!(got, pairs, "{consistency:?}");
    }

    let page = client
        .range_page("key", "", 100, Consistency::Linearizable)
        .await
        .expect("page");
    assert_eq!(page.pairs.len(), 100);
    assert_eq!(page.next_start.as_deref(), Some(&b"key0100"[..]));
    let all = client
        .range("", "")
        .collect::<Result<Vec<_>, Error>>()
        .await
        .expect("all");
    assert_eq!(all.len(), 251);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_not_applied_and_not_retried() {
    let cluster = TestCluster::start(3).await;
    let client = Client::connect(cluster.addrs()).expect("client");
    let error = client.put("", "v").await.expect_err("empty key");
    assert!(matches!(error, Error::InvalidArgument(_)), "{error:?}");
    assert_eq!(error.outcome(), cluster_client::Outcome::NotApplied);
    assert_eq!(client.get("missing").await.expect("get"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_reach_every_node_and_the_leader() {
    let cluster = TestCluster::start(3).await;
    let client = Client::connect(cluster.addrs()).expect("client");
    let reply = client.put("k", "v").await.expect("put");
    cluster.wait_all_applied(reply.applied_index).await;

    let statuses = client.status_all().await;
    assert_eq!(statuses.len(), 3);
    let leaders: Vec<u64> = statuses
        .iter()
        .map(|(_, s)| s.as_ref().expect("status").leader_id)
        .collect();
    assert!(leaders.iter().all(|l| *l == leaders[0] && *l != 0), "{leaders:?}");
    assert_eq!(client.leader_status().await.expect("leader").role, "leader");

    let digests: Vec<_> = cluster
        .addrs()
        .iter()
        .map(|addr| {
            let client = client.clone();
            let addr = addr.clone();
            async move { client.digest(&addr).await.expect("digest") }
        })
        .collect();
    let mut seen = Vec::new();
    for digest in digests {
        seen.push(digest.await);
    }
    assert!(
        seen.windows(2).all(|w| w[0].digest == w[1].digest && w[0].keys == 1),
        "{seen:?}"
    );

    let error = client
        .initialize(vec![(1, cluster.addr(1))])
        .await
        .expect_err("already initialized");
    assert!(matches!(error, Error::Other(_)), "{error:?}");
}
