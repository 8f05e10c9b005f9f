//! Prometheus metrics (`--metrics-listen`): every node serves `/metrics`
//! over HTTP in a format a real exposition parser reads, with the Raft, log,
//! engine and process figures, and request counters that move with traffic.

use std::time::Duration;

use proto::kv as api;
use proto::kv::kv_client::KvClient;
use raft_node::testing::TestCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Cluster tests run one at a time: three nodes per test already load the
/// two cores enough that parallel tests would starve heartbeats.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long one scrape may take at most.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Metrics every node reports whatever its role.
const EXPECTED: [&str; 20] = [
    "kv_raft_term",
    "kv_raft_role",
    "kv_raft_is_leader",
    "kv_raft_leader_changes_total",
    "kv_raft_last_log_index",
    "kv_raft_commit_index",
    "kv_raft_applied_index",
    "kv_raft_snapshot_index",
    "kv_log_bytes",
    "kv_log_window_bytes",
    "kv_log_entries_read_from_disk_total",
    "kv_engine_memtable_bytes",
    "kv_engine_level_files",
    "kv_engine_level_bytes",
    "kv_engine_write_stall_seconds_total",
    "kv_engine_pending_compaction_bytes",
    "kv_raft_proposals_in_flight",
    "kv_engine_block_cache_hits_total",
    "kv_process_resident_memory_bytes",
    "kv_process_open_fds",
];

/// `GET /metrics` from `addr`, parsed. Panics unless the answer is a 200
/// with the OpenMetrics text content type.
async fn scrape(addr: &str) -> prometheus_parse::Scrape {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to metrics");
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .expect("send the request");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read the response");
        response
    };
    let response = tokio::time::timeout(SCRAPE_TIMEOUT, exchange)
        .await
        .expect("scrape in time");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "an OpenMetrics exposition ends with # EOF");
    prometheus_parse::Scrape::parse(body.lines().map(|line| Ok(line.to_string()))).expect("parse")
}

/// The value of the sample `name` whose labels include `labels`.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == name)
        .find(|sample| labels.iter().all(|(key, want)| sample.labels.get(key) == Some(*want)))
        .map(|sample| match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name} is not a single number: {other:?}"),
        })
}

async fn put(addr: &str, key: &str, value: &str) {
    let mut client = KvClient::connect(format!("http://{addr}")).await.expect("connect");
    client
        .put(api::PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            write_id: None,
        })
        .await
        .expect("put on the leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_serves_parseable_metrics_and_put_counters_move() {
    // What an operator's Prometheus sees: each node, each family, and a
    // write reflected in the leader's request counters and latency.
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::start_with_metrics(3).await;
    let leader = cluster.wait_for_leader(None).await;
    for id in 1..=3 {
        let scraped = scrape(&cluster.metrics_addr(id)).await;
        for name in EXPECTED {
            assert!(
                scraped.samples.iter().any(|sample| sample.metric == name),
                "node {id} reports no {name}"
            );
        }
        let is_leader = value(&scraped, "kv_raft_role", &[("role", "leader")]);
        assert_eq!(is_leader, Some(f64::from(u8::from(id == leader))), "node {id}'s role");
        assert!(
            value(&scraped, "kv_raft_term", &[]).unwrap_or(0.0) >= 1.0,
            "node {id}'s term"
        );
    }

    let leader_metrics = cluster.metrics_addr(leader);
    let put_ok = [("method", "Put"), ("code", "OK")];
    let before = scrape(&leader_metrics).await;
    let puts_before = value(&before, "kv_rpc_requests_total", &put_ok).unwrap_or(0.0);
    let applied_before = value(&before, "kv_raft_applied_index", &[]).expect("applied index");
    let puts = 3;
    for i in 0..puts {
        put(&cluster.addr(leader), &format!("key-{i}"), "value").await;
    }
    let after = scrape(&leader_metrics).await;
    assert_eq!(
        value(&after, "kv_rpc_requests_total", &put_ok),
        Some(puts_before + f64::from(puts)),
        "each put counted once, as OK"
    );
    let timed = value(&after, "kv_rpc_duration_seconds_count", &[("method", "Put")]);
    assert!(timed.unwrap_or(0.0) >= f64::from(puts), "each put timed: {timed:?}");
    assert!(
        scraped_histogram_has_buckets(&after, "kv_rpc_duration_seconds"),
        "the latency histogram parses as one"
    );
    let fsyncs = |scrape: &prometheus_parse::Scrape| value(scrape, "kv_log_fsync_duration_seconds_count", &[]);
    assert!(
        fsyncs(&after).unwrap_or(0.0) > fsyncs(&before).unwrap_or(0.0),
        "the leader's log fsyncs for the puts were timed: {:?} -> {:?}",
        fsyncs(&before),
        fsyncs(&after)
    );
    assert!(
        scraped_histogram_has_buckets(&after, "kv_log_fsync_duration_seconds"),
        "the fsync histogram parses as one"
    );
    // The proposer: one lone batch per sequential put, each answer timed,
    // nothing left in flight once every put is answered.
    let count = |scrape: &prometheus_parse::Scrape, name: &str| value(scrape, name, &[]).unwrap_or(0.0);
    for histogram in ["kv_raft_proposal_batch_commands", "kv_raft_proposal_duration_seconds"] {
        let name = format!("{histogram}_count");
        assert!(
            count(&after, &name) >= count(&before, &name) + f64::from(puts),
            "{name}: {} -> {}",
            count(&before, &name),
            count(&after, &name)
        );
        assert!(
            scraped_histogram_has_buckets(&after, histogram),
            "{histogram} parses as a histogram"
        );
    }
    assert_eq!(value(&after, "kv_raft_proposals_in_flight", &[]), Some(0.0));
    let applied_after = value(&after, "kv_raft_applied_index", &[]).expect("applied index");
    assert!(
        applied_after >= applied_before + f64::from(puts),
        "the applied index moved"
    );
    cluster.shutdown().await;
}

fn scraped_histogram_has_buckets(scrape: &prometheus_parse::Scrape, name: &str) -> bool {
    scrape.samples.iter().any(|sample| {
        sample.metric == name
            && matches!(&sample.value, prometheus_parse::Value::Histogram(buckets) if !buckets.is_empty())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_share_log_entries_and_each_is_answered_once() {
    // Batching: a write that finds a batch slot free goes alone, at once;
    // writes arriving while the slots are taken are proposed together as
    // one entry. So many concurrent puts take far fewer entries than puts.
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::start_with_metrics(3).await;
    let leader = cluster.wait_for_leader(None).await;
    let leader_metrics = cluster.metrics_addr(leader);
    let put_ok = [("method", "Put"), ("code", "OK")];
    let count = |scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]| {
        value(scrape, name, labels).unwrap_or(0.0)
    };
    let before = scrape(&leader_metrics).await;
    let client = KvClient::connect(format!("http://{}", cluster.addr(leader)))
        .await
        .expect("connect");
    let puts: u32 = 256;
    let tasks: Vec<_> = (0..puts)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .put(api::PutRequest {
                        key: format!("concurrent-{i}").into_bytes().into(),
                        value: b"value".to_vec().into(),
                        write_id: None,
                    })
                    .await
                    .map(|_| ())
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("join").expect("put on the leader");
    }
    let after = scrape(&leader_metrics).await;
    let delta = |name: &str, labels: &[(&str, &str)]| count(&after, name, labels) - count(&before, name, labels);
    assert_eq!(
        delta("kv_rpc_requests_total", &put_ok),
        f64::from(puts),
        "each put answered once, OK"
    );
    let batches = delta("kv_raft_proposal_batch_commands_count", &[]);
    let commands = delta("kv_raft_proposal_batch_commands_sum", &[]);
    assert_eq!(commands, f64::from(puts), "every put proposed once, in some batch");
    assert!(
        batches >= 1.0 && batches <= f64::from(puts / 2),
        "{puts} concurrent puts took {batches} entries"
    );
    let applied = delta("kv_raft_applied_index", &[]);
    assert!(
        applied <= batches,
        "one entry per batch: {applied} applied for {batches} batches"
    );
    cluster.shutdown().await;
}
