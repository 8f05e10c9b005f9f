//! `kvctl cluster status --metrics`: each node's key figures, read from its
//! Prometheus endpoint (the address its Status reply names).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use prometheus_parse::{Scrape, Value};

/// How long one scrape (connect, request, whole body) may take, in ms.
const SCRAPE_MS_MAX: u64 = 5000;
/// The largest metrics page read, in bytes; a node's is a few tens of KiB.
const SCRAPE_BYTES_MAX: usize = 16 << 20;
/// The request latency quantile shown.
const LATENCY_QUANTILE: f64 = 0.99;

/// Reads `http://addr/metrics` and parses it.
pub async fn scrape(addr: &str) -> Result<Scrape> {
    let text = tokio::time::timeout(Duration::from_millis(SCRAPE_MS_MAX), fetch(addr))
        .await
        .map_err(|_| anyhow!("no answer from {addr} within {SCRAPE_MS_MAX} ms"))??;
    parse(&text)
}

/// Parses an exposition (Prometheus text or OpenMetrics).
pub fn parse(text: &str) -> Result<Scrape> {
    Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).context("not a Prometheus exposition")
}

/// `GET /metrics` over HTTP/1.1, the body as text.
async fn fetch(addr: &str) -> Result<String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP handshake with {addr}"))?;
    // The connection is driven on its own task; aborted (closed) below.
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get("/metrics")
        .header(hyper::header::HOST, addr)
        .body(Empty::<Bytes>::new())
        .context("the metrics request")?;
    let body = async {
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("GET /metrics from {addr}"))?;
        if response.status() != hyper::StatusCode::OK {
            bail!("GET /metrics from {addr}: HTTP {}", response.status());
        }
        let body = Limited::new(response.into_body(), SCRAPE_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| anyhow!("reading /metrics from {addr}: {e}"))?
            .to_bytes();
        String::from_utf8(body.to_vec()).with_context(|| format!("/metrics from {addr} is not UTF-8"))
    }
    .await;
    connection.abort();
    body
}

/// The figures `cluster status --metrics` shows for one node; `None` for
/// one the node does not report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// Raft role (`leader`, `follower`, ...).
    pub role: Option<String>,
    /// Raft term.
    pub term: Option<f64>,
    /// Commit index.
    pub commit_index: Option<f64>,
    /// Applied index.
    pub applied_index: Option<f64>,
    /// On a leader: the entries its slowest follower is behind.
    pub replication_lag_entries: Option<f64>,
    /// KV requests answered, every method and code.
    pub requests: Option<f64>,
    /// KV request latency at [`LATENCY_QUANTILE`], all methods, as the upper
    /// bound of its histogram bucket, in seconds (`INFINITY`: beyond the last).
    pub latency_p99_seconds: Option<f64>,
    /// Writes queued or proposed but not answered (on a leader).
    pub proposals_in_flight: Option<f64>,
    /// Bytes in the active memtable.
    pub memtable_bytes: Option<f64>,
    /// Table files in level 0.
    pub l0_files: Option<f64>,
    /// Bytes compaction must rewrite to bring every level under target.
    pub pending_compaction_bytes: Option<f64>,
    /// Time writes spent stalled, in seconds.
    pub stall_seconds: Option<f64>,
    /// Resident memory, in bytes.
    pub rss_bytes: Option<f64>,
    /// Open file descriptors.
    pub open_fds: Option<f64>,
}

/// A single-number sample's value.
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(*v),
        _ => None,
    }
}

/// The value of sample `name` whose labels include `labels`.
fn sample(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .find(|s| labels.iter().all(|(key, want)| s.labels.get(key) == Some(*want)))
        .and_then(|s| number(&s.value))
}

/// The values of every sample `name`, folded with `fold`.
fn fold_samples(scrape: &Scrape, name: &str, fold: fn(f64, f64) -> f64) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter_map(|s| number(&s.value))
        .reduce(fold)
}

/// The `quantile` of histogram `name` summed over its label sets: the upper
/// bound of the first bucket holding that share of the observations
/// (`INFINITY` past the last finite bucket); `None` without observations.
pub fn histogram_quantile(scrape: &Scrape, name: &str, quantile: f64) -> Option<f64> {
    assert!(
        (0.0..=1.0).contains(&quantile),
        "a quantile is within 0..=1: {quantile}"
    );
    // Cumulative counts per upper bound, summed over label sets (each set
    // has the same bounds). Bounds are keyed by their bits: all finite
    // non-negative or +Inf, whose bit patterns sort as the numbers do.
    let mut buckets: BTreeMap<u64, f64> = BTreeMap::new();
    for s in scrape.samples.iter().filter(|s| s.metric == name) {
        if let Value::Histogram(counts) = &s.value {
            for bucket in counts {
                if bucket.less_than >= 0.0 {
                    *buckets.entry(bucket.less_than.to_bits()).or_default() += bucket.count;
                }
            }
        }
    }
    let total = buckets.values().copied().fold(0.0, f64::max);
    if total <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, cumulative)| **cumulative >= quantile * total)
        .map(|(bits, _)| f64::from_bits(*bits))
}

/// The figures in `scrape` (a node's `/metrics`).
pub fn figures(scrape: &Scrape) -> Figures {
    let role = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "kv_raft_role" && number(&s.value) == Some(1.0))
        .find_map(|s| s.labels.get("role").map(str::to_owned));
    Figures {
        role,
        term: sample(scrape, "kv_raft_term", &[]),
        commit_index: sample(scrape, "kv_raft_commit_index", &[]),
        applied_index: sample(scrape, "kv_raft_applied_index", &[]),
        replication_lag_entries: fold_samples(scrape, "kv_raft_replication_lag_entries", f64::max),
        requests: fold_samples(scrape, "kv_rpc_requests_total", |a, b| a + b),
        latency_p99_seconds: histogram_quantile(scrape, "kv_rpc_duration_seconds", LATENCY_QUANTILE),
        proposals_in_flight: sample(scrape, "kv_raft_proposals_in_flight", &[]),
        memtable_bytes: sample(scrape, "kv_engine_memtable_bytes", &[]),
        l0_files: sample(scrape, "kv_engine_level_files", &[("level", "0")]),
        pending_compaction_bytes: sample(scrape, "kv_engine_pending_compaction_bytes", &[]),
        stall_seconds: sample(scrape, "kv_engine_write_stall_seconds_total", &[]),
        rss_bytes: sample(scrape, "kv_process_resident_memory_bytes", &[]),
        open_fds: sample(scrape, "kv_process_open_fds", &[]),
    }
}

impl Figures {
    /// The figures as a JSON object (missing ones as `null`).
    pub fn to_json(&self) -> serde_json::Value {
        let finite = |v: Option<f64>| v.filter(|v| v.is_finite());
        serde_json::json!({
            "role": self.role,
            "term": self.term,
            "commit_index": self.commit_index,
            "applied_index": self.applied_index,
            "replication_lag_entries": self.replication_lag_entries,
            "requests": self.requests,
            "latency_p99_seconds": finite(self.latency_p99_seconds),
            "proposals_in_flight": self.proposals_in_flight,
            "memtable_bytes": self.memtable_bytes,
            "l0_files": self.l0_files,
            "pending_compaction_bytes": self.pending_compaction_bytes,
            "stall_seconds": self.stall_seconds,
            "rss_bytes": self.rss_bytes,
            "open_fds": self.open_fds,
        })
    }
}

/// The table's header line.
pub fn table_header() -> String {
    format!(
        "{:<4} {:<9} {:>5} {:>8} {:>8} {:>6} {:>9} {:>9} {:>6} {:>8} {:>4} {:>8} {:>7} {:>8} {:>5}",
        "ID",
        "ROLE",
        "TERM",
        "COMMIT",
        "APPLIED",
        "LAG",
        "REQUESTS",
        "P99",
        "PROPS",
        "MEMTABLE",
        "L0",
        "PENDING",
        "STALL",
        "RSS",
        "FDS"
    )
}

/// One node's table line.
pub fn table_row(id: &str, f: &Figures) -> String {
    let count = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
    format!(
        "{:<4} {:<9} {:>5} {:>8} {:>8} {:>6} {:>9} {:>9} {:>6} {:>8} {:>4} {:>8} {:>7} {:>8} {:>5}",
        id,
        f.role.as_deref().unwrap_or("-"),
        count(f.term),
        count(f.commit_index),
        count(f.applied_index),
        count(f.replication_lag_entries),
        count(f.requests),
        f.latency_p99_seconds.map_or_else(|| "-".to_owned(), latency),
        count(f.proposals_in_flight),
        f.memtable_bytes.map_or_else(|| "-".to_owned(), bytes),
        count(f.l0_files),
        f.pending_compaction_bytes.map_or_else(|| "-".to_owned(), bytes),
        f.stall_seconds.map_or_else(|| "-".to_owned(), |s| format!("{s:.1}s")),
        f.rss_bytes.map_or_else(|| "-".to_owned(), bytes),
        count(f.open_fds),
    )
}

/// A bucket bound as a latency: `<=1.6ms`, or `>LAST` past the last bucket.
fn latency(seconds: f64) -> String {
    if seconds.is_infinite() {
        return ">max".to_owned();
    }
    if seconds < 1.0 {
        format!("<={:.1}ms", seconds * 1e3)
    } else {
        format!("<={seconds:.2}s")
    }
}

/// Bytes in binary units: `512B`, `3.4K`, `12.0M`, `1.2G`.
fn bytes(value: f64) -> String {
    const UNITS: [&str; 4] = ["K", "M", "G", "T"];
    if value < 1024.0 {
        return format!("{value:.0}B");
    }
    let mut scaled = value;
    let mut unit = "B";
    for next in UNITS {
        if scaled < 1024.0 {
            break;
        }
        scaled /= 1024.0;
        unit = next;
    }
    format!("{scaled:.1}{unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's exposition, cut down, as `prometheus-client` writes it.
    const EXPOSITION: &str = "\
# HELP kv_raft_term The current Raft term.
# TYPE kv_raft_term gauge
kv_raft_term 7
# HELP kv_raft_role The node's role.
# TYPE kv_raft_role gauge
kv_raft_role{role=\"leader\"} 1
kv_raft_role{role=\"follower\"} 0
# TYPE kv_raft_commit_index gauge
kv_raft_commit_index 120
# TYPE kv_raft_applied_index gauge
kv_raft_applied_index 119
# TYPE kv_raft_replication_lag_entries gauge
kv_raft_replication_lag_entries{peer=\"2\"} 3
kv_raft_replication_lag_entries{peer=\"3\"} 40
# TYPE kv_rpc_requests counter
kv_rpc_requests_total{method=\"Put\",code=\"OK\"} 90
kv_rpc_requests_total{method=\"Get\",code=\"OK\"} 10
# TYPE kv_rpc_duration_seconds histogram
kv_rpc_duration_seconds_sum{method=\"Put\"} 0.5
kv_rpc_duration_seconds_count{method=\"Put\"} 90
kv_rpc_duration_seconds_bucket{le=\"0.001\",method=\"Put\"} 50
kv_rpc_duration_seconds_bucket{le=\"0.002\",method=\"Put\"} 89
kv_rpc_duration_seconds_bucket{le=\"0.004\",method=\"Put\"} 90
kv_rpc_duration_seconds_bucket{le=\"+Inf\",method=\"Put\"} 90
kv_rpc_duration_seconds_sum{method=\"Get\"} 0.1
kv_rpc_duration_seconds_count{method=\"Get\"} 10
kv_rpc_duration_seconds_bucket{le=\"0.001\",method=\"Get\"} 10
kv_rpc_duration_seconds_bucket{le=\"0.002\",method=\"Get\"} 10
kv_rpc_duration_seconds_bucket{le=\"0.004\",method=\"Get\"} 10
kv_rpc_duration_seconds_bucket{le=\"+Inf\",method=\"Get\"} 10
# TYPE kv_engine_level_files gauge
kv_engine_level_files{level=\"0\"} 4
kv_engine_level_files{level=\"1\"} 9
# TYPE kv_engine_write_stall_seconds counter
kv_engine_write_stall_seconds_total 1.5
# TYPE kv_process_resident_memory_bytes gauge
kv_process_resident_memory_bytes 52428800
# EOF
";

    #[test]
    fn figures_are_read_from_a_nodes_exposition() {
        // What the table shows must be the node's own numbers, by name and label.
        let f = figures(&parse(EXPOSITION).expect("parses"));
        assert_eq!(f.role.as_deref(), Some("leader"));
        assert_eq!(f.term, Some(7.0));
        assert_eq!((f.commit_index, f.applied_index), (Some(120.0), Some(119.0)));
        assert_eq!(f.replication_lag_entries, Some(40.0), "the slowest follower");
        assert_eq!(f.requests, Some(100.0), "every method and code");
        assert_eq!(f.l0_files, Some(4.0));
        assert_eq!(f.stall_seconds, Some(1.5));
        assert_eq!(f.rss_bytes, Some(52_428_800.0));
        assert_eq!(f.memtable_bytes, None, "absent figures stay absent");
        // 99 of 100 requests took at most 2 ms (89 puts + 10 gets).
        assert_eq!(f.latency_p99_seconds, Some(0.002));
        let row = table_row("1", &f);
        assert!(
            row.contains("leader") && row.contains("<=2.0ms") && row.contains("50.0M"),
            "{row}"
        );
    }

    #[test]
    fn a_quantile_is_the_bound_of_the_bucket_that_reaches_it() {
        // An estimate that errs low would hide slow requests.
        let scrape = parse(EXPOSITION).expect("parses");
        assert_eq!(histogram_quantile(&scrape, "kv_rpc_duration_seconds", 0.5), Some(0.001));
        assert_eq!(histogram_quantile(&scrape, "kv_rpc_duration_seconds", 1.0), Some(0.004));
        assert_eq!(histogram_quantile(&scrape, "kv_no_such_histogram", 0.5), None);
    }

    #[test]
    fn sizes_and_latencies_print_in_short_units() {
        // The table must fit a terminal: short, unit-bearing numbers.
        assert_eq!(bytes(512.0), "512B");
        assert_eq!(bytes(1536.0), "1.5K");
        assert_eq!(bytes(3.0 * 1024.0 * 1024.0 * 1024.0), "3.0G");
        assert_eq!(latency(0.0004), "<=0.4ms");
        assert_eq!(latency(3.2), "<=3.20s");
        assert_eq!(latency(f64::INFINITY), ">max");
    }
}
