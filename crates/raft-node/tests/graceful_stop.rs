//! Graceful stop: a leader hands leadership over before it stops, health
//! turns `NOT_SERVING` while it drains, and no acknowledged write is lost.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::kv as api;
use proto::kv::kv_client::KvClient;
use raft_node::testing::{fast_timing, retry_unavailable, TestCluster, WAIT_TIMEOUT};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Cluster tests run one at a time: three nodes per test already load the
/// two cores enough that parallel tests would starve heartbeats.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Between two health checks of the polling task, in ms.
const HEALTH_POLL_MS: u64 = 2;

async fn put(addr: &str, key: &str) -> Result<(), tonic::Status> {
    let mut kv = KvClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    kv.put(api::PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: key.as_bytes().to_vec().into(),
        write_id: None,
    })
    .await
    .map(|_| ())
}

async fn found(addr: &str, key: &str) -> bool {
    let request = api::GetRequest {
        key: key.as_bytes().to_vec().into(),
        consistency: api::Consistency::Linearizable as i32,
    };
    retry_unavailable(|| {
        let request = request.clone();
        async move {
            let mut kv = KvClient::connect(format!("http://{addr}"))
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            kv.get(request).await.map(|reply| reply.into_inner().found)
        }
    })
    .await
}

/// Checks the KV service's health at `addr` over one connection until the
/// server stops answering; returns each status seen, in order, without
/// repeats.
async fn poll_health(addr: String) -> Vec<ServingStatus> {
    let mut seen = Vec::new();
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
        return seen;
    };
    let Ok(channel) = endpoint.connect().await else {
        return seen;
    };
    let mut client = HealthClient::new(channel);
    let deadline = Instant::now() + WAIT_TIMEOUT;
    while Instant::now() < deadline {
        let request = HealthCheckRequest {
            service: proto::kv::kv_server::SERVICE_NAME.into(),
        };
        let Ok(reply) = client.check(request).await else {
            break;
        };
        let Ok(status) = ServingStatus::try_from(reply.into_inner().status) else {
            break;
        };
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        tokio::time::sleep(Duration::from_millis(HEALTH_POLL_MS)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_gracefully_under_writes_drains_and_loses_no_write() {
    // A graceful stop under load turns health NOT_SERVING before the port
    // closes, a new leader takes writes, and no acknowledged write is lost.
    let _serial = SERIAL.lock().await;
    let timing = fast_timing();
    let mut cluster = TestCluster::start_with_timing(3, timing.clone()).await;
    let leader = cluster.wait_for_leader(None).await;
    // The old leader grants its successor's vote only once its own vote is
    // older than a lease (see raft_node::handoff).
    tokio::time::sleep(Duration::from_millis(timing.election_timeout_ms_max + 100)).await;

    // A writer that goes round the nodes, as a client without hints would,
    // and records every write acknowledged.
    let addrs = cluster.addrs();
    let writing = Arc::new(AtomicBool::new(true));
    let writer = tokio::spawn({
        let writing = Arc::clone(&writing);
        async move {
            let mut acked = BTreeSet::new();
            let mut node = 0usize;
            for i in 0u64.. {
                if !writing.load(Ordering::Acquire) {
                    break;
                }
                let key = format!("key-{i:06}");
                if put(&addrs[node % addrs.len()], &key).await.is_ok() {
                    acked.insert(key);
                } else {
                    node += 1;
                }
            }
            acked
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let health = tokio::spawn(poll_health(cluster.addr(leader)));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let stop_started = Instant::now();
    let stopping = cluster.begin_stop(leader);
    let successor = cluster.wait_for_leader(Some(leader)).await;
    let successor_addr = cluster.addr(successor);
    retry_unavailable(|| put(&successor_addr, "after-handoff")).await;
    let replaced_after = stop_started.elapsed();
    stopping.await.expect("the old leader stops");
    writing.store(false, Ordering::Release);
    let acked = writer.await.expect("writer");
    let seen = health.await.expect("health poller");

    // No bound on the time here: a write in flight as refusals began can
    // make the successor lose its first vote (see raft_node::handoff);
    // the idle case below bounds it.
    eprintln!("new leader {successor} took a write {replaced_after:?} after the stop began; health seen {seen:?}");
    assert_eq!(
        seen.first(),
        Some(&ServingStatus::Serving),
        "the poller saw the node serving first: {seen:?}"
    );
    assert_eq!(
        seen.last(),
        Some(&ServingStatus::NotServing),
        "health turned NOT_SERVING before the node stopped answering: {seen:?}"
    );
    assert!(!acked.is_empty(), "the writer got writes through");
    for key in &acked {
        assert!(found(&successor_addr, key).await, "acknowledged write {key} was lost");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_gracefully_is_replaced_faster_than_a_killed_one() {
    // A killed leader costs a lease plus an election timeout (here 750 ms
    // or more); a handoff must beat 2 x election_timeout_ms_max with slack.
    let _serial = SERIAL.lock().await;
    let timing = fast_timing();
    let mut cluster = TestCluster::start_with_timing(3, timing.clone()).await;
    let leader = cluster.wait_for_leader(None).await;
    let leader_addr = cluster.addr(leader);
    retry_unavailable(|| put(&leader_addr, "before-handoff")).await;
    // The old leader grants its successor's vote only once its own vote is
    // older than a lease (see raft_node::handoff).
    tokio::time::sleep(Duration::from_millis(timing.election_timeout_ms_max + 100)).await;
    let stop_started = Instant::now();
    let stopping = cluster.begin_stop(leader);
    let successor = cluster.wait_for_leader(Some(leader)).await;
    let successor_addr = cluster.addr(successor);
    retry_unavailable(|| put(&successor_addr, "after-handoff")).await;
    let replaced_after = stop_started.elapsed();
    stopping.await.expect("the old leader stops");
    eprintln!("idle handoff: node {successor} took a write {replaced_after:?} after the stop began");
    let bound = Duration::from_millis(2 * timing.election_timeout_ms_max);
    assert!(
        replaced_after < bound,
        "the new leader took a write {replaced_after:?} after the stop began (bound {bound:?})"
    );
    assert!(
        found(&successor_addr, "before-handoff").await,
        "the acknowledged write survived"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_stopped_gracefully_leaves_the_leader_in_place() {
    // A follower has nothing to hand over: it drains and stops, and the
    // leader keeps leading.
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader(None).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let term_before = cluster.raft(leader).metrics().borrow().current_term;
    cluster.stop(follower).await;
    assert_eq!(cluster.wait_for_leader(None).await, leader, "the leader stays");
    assert_eq!(
        cluster.raft(leader).metrics().borrow().current_term,
        term_before,
        "no election happened"
    );
    let leader_addr = cluster.addr(leader);
    retry_unavailable(|| put(&leader_addr, "still-writable")).await;
    cluster.shutdown().await;
}

/// Writes queued behind the proposals in flight in the drain test.
const QUEUED_WRITES: usize = 6;
/// How soon after a graceful stop begins a queued write must be refused.
const QUEUED_REFUSAL_MS_MAX: u64 = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_at_the_proposer_are_refused_as_soon_as_the_drain_starts() {
    // A write not yet proposed when the stop begins must never reach the
    // log (it would lengthen it past the successor's and cost an election
    // timeout): it is refused at once, as not applied, with the leader hint.
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader(None).await;
    let leader_addr = cluster.addr(leader);
    retry_unavailable(|| put(&leader_addr, "before")).await;
    // Without its followers the leader cannot commit: the proposals it
    // makes stay in flight, taking every batch slot, and later writes queue.
    for follower in (1..=3).filter(|id| *id != leader) {
        cluster.stop(follower).await;
    }
    let mut in_flight = Vec::new();
    for key in ["slot-1", "slot-2"] {
        let addr = leader_addr.clone();
        in_flight.push(tokio::spawn(async move { put(&addr, key).await }));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Kept past the stop, to read the old leader's log.
    let raft = cluster.raft(leader).clone();
    let last_log_before = raft.metrics().borrow().last_log_index;
    let queued: Vec<_> = (0..QUEUED_WRITES)
        .map(|i| {
            let addr = leader_addr.clone();
            tokio::spawn(async move {
                let answer = put(&addr, &format!("queued-{i}")).await;
                (answer, Instant::now())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        queued.iter().all(|write| !write.is_finished()),
        "the queued writes wait behind the slots in flight"
    );

    let stop_started = Instant::now();
    let stopping = cluster.begin_stop(leader);
    for write in queued {
        let (answer, answered_at) = write.await.expect("writer task");
        let refused = answer.expect_err("a queued write must not be applied during the drain");
        let waited = answered_at.duration_since(stop_started);
        assert!(
            waited < Duration::from_millis(QUEUED_REFUSAL_MS_MAX),
            "refused {waited:?} after the stop began: {refused:?}"
        );
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        assert!(refused.message().contains("shutting down"), "{refused:?}");
        assert_eq!(
            refused
                .metadata()
                .get(raft_node::service::status::NOT_APPLIED_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some("1"),
            "certainly not applied: {refused:?}"
        );
    }
    assert_eq!(
        raft.metrics().borrow().last_log_index,
        last_log_before,
        "nothing queued reached the log"
    );
    stopping.await.expect("the old leader stops");
    for write in in_flight {
        // Proposed before the stop: their outcome is unknown, not refused.
        let _ = write.await.expect("writer task");
    }
}
