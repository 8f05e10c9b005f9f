//! Metrics read at scrape time: Raft, log store, engine, process.

use std::fmt;

use openraft::ServerState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::log_store::LogReader;
use crate::state_machine::Engine;
use crate::types::Raft;

/// The roles `kv_raft_role` reports, one series each (1 for the current).
const ROLES: [(ServerState, &str); 5] = [
    (ServerState::Learner, "learner"),
    (ServerState::Follower, "follower"),
    (ServerState::Candidate, "candidate"),
    (ServerState::Leader, "leader"),
    (ServerState::Shutdown, "shutdown"),
];

/// Counts changes of the leader this node knows of (to another node, or
/// to none) until Raft shuts down.
pub(super) fn spawn_leader_change_counter(raft: Raft) -> Counter {
    let changes = Counter::default();
    let counted = changes.clone();
    let mut metrics = raft.metrics();
    tokio::spawn(async move {
        let mut leader = metrics.borrow_and_update().current_leader;
        while metrics.changed().await.is_ok() {
            let now = metrics.borrow_and_update().current_leader;
            if now != leader {
                leader = now;
                counted.inc();
            }
        }
    });
    changes
}

/// The collector that reads everything but the request metrics.
pub(super) struct Sampled {
    raft: Raft,
    engine: Engine,
    log: LogReader,
    leader_changes: Counter,
}

impl fmt::Debug for Sampled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sampled").finish_non_exhaustive()
    }
}

impl Sampled {
    pub(super) fn new(raft: Raft, engine: Engine, log: LogReader, leader_changes: Counter) -> Sampled {
        Sampled {
            raft,
            engine,
            log,
            leader_changes,
        }
    }

    fn encode_raft(&self, out: &mut Out<'_, '_>) -> fmt::Result {
        let metrics = self.raft.metrics().borrow().clone();
        out.gauge("kv_raft_term", "The current Raft term", metrics.current_term)?;
        let mut role = out.0.encode_descriptor(
            "kv_raft_role",
            "1 for this node's current Raft role",
            None,
            MetricType::Gauge,
        )?;
        for (state, name) in ROLES {
            ConstGauge::new(i64::from(metrics.state == state)).encode(role.encode_family(&[("role", name)])?)?;
        }
        out.gauge(
            "kv_raft_is_leader",
            "1 when this node is the Raft leader",
            u64::from(metrics.state == ServerState::Leader),
        )?;
        out.counter(
            "kv_raft_leader_changes",
            "Changes of the leader this node knows of since it started",
            self.leader_changes.get(),
        )?;
        let last_log_index = metrics.last_log_index.unwrap_or(0);
        out.gauge("kv_raft_last_log_index", "The last Raft log index", last_log_index)?;
        out.gauge(
            "kv_raft_applied_index",
            "The last Raft log index applied to the state machine",
            metrics.last_applied.map_or(0, |id| id.index),
        )?;
        out.gauge(
            "kv_raft_snapshot_index",
            "The last Raft log index in this node's snapshot",
            metrics.snapshot.map_or(0, |id| id.index),
        )?;
        out.gauge(
            "kv_raft_purged_index",
            "The last Raft log index purged from this node's log",
            metrics.purged.map_or(0, |id| id.index),
        )?;
        if let Some(replication) = &metrics.replication {
            let mut lag = out.0.encode_descriptor(
                "kv_raft_replication_lag_entries",
                "On the leader: entries each node's log is behind the leader's",
                None,
                MetricType::Gauge,
            )?;
            for (peer, matched) in replication {
                let behind = last_log_index.saturating_sub(matched.map_or(0, |id| id.index));
                ConstGauge::new(saturating_i64(behind)).encode(lag.encode_family(&[("peer", peer.to_string())])?)?;
            }
        }
        Ok(())
    }

    fn encode_log(&self, out: &mut Out<'_, '_>) -> fmt::Result {
        out.gauge(
            "kv_log_bytes",
            "Bytes of the records of every live Raft log entry, on disk",
            self.log.bytes_between(None, u64::MAX),
        )?;
        out.gauge(
            "kv_log_window_bytes",
            "Bytes of the Raft log entries held in memory",
            self.log.window_bytes(),
        )?;
        out.gauge(
            "kv_log_window_entries",
            "Raft log entries held in memory",
            u64::try_from(self.log.window_entries()).unwrap_or(u64::MAX),
        )?;
        out.counter(
            "kv_log_entries_read_from_disk",
            "Raft log entries read back from segment files (older than the memory window)",
            self.log.entries_read_from_disk(),
        )?;
        let (sum, count, buckets) = self.log.sync_times().snapshot();
        out.0
            .encode_descriptor(
                "kv_log_fsync_duration_seconds",
                "Time each fsync of a Raft log segment took (appends, votes, purges)",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn encode_engine(&self, out: &mut Out<'_, '_>) -> fmt::Result {
        let stats = self.engine.db().stats();
        out.gauge(
            "kv_engine_memtable_bytes",
            "Bytes in the active memtable",
            stats.memtable_bytes,
        )?;
        out.gauge(
            "kv_engine_immutable_memtables",
            "Frozen memtables waiting to be flushed",
            stats.immutable_memtables,
        )?;
        out.gauge(
            "kv_engine_immutable_memtable_bytes",
            "Bytes in frozen memtables",
            stats.immutable_memtable_bytes,
        )?;
        let mut files = out.0.encode_descriptor(
            "kv_engine_level_files",
            "Table files per level",
            None,
            MetricType::Gauge,
        )?;
        for (level, shape) in stats.levels.iter().enumerate() {
            ConstGauge::new(saturating_i64(shape.files))
                .encode(files.encode_family(&[("level", level.to_string())])?)?;
        }
        let mut bytes = out.0.encode_descriptor(
            "kv_engine_level_bytes",
            "Bytes of table files per level",
            None,
            MetricType::Gauge,
        )?;
        for (level, shape) in stats.levels.iter().enumerate() {
            ConstGauge::new(saturating_i64(shape.bytes))
                .encode(bytes.encode_family(&[("level", level.to_string())])?)?;
        }
        let counters = [
            (
                "kv_engine_write_stalls",
                "Times a write waited for a flush or an L0 compaction",
                stats.write_stalls,
            ),
            (
                "kv_engine_write_slowdowns",
                "Times a write was delayed by 1 ms because L0 was filling up",
                stats.write_slowdowns,
            ),
            ("kv_engine_write_groups", "Write groups committed", stats.write_groups),
            (
                "kv_engine_write_batches",
                "Write batches committed",
                stats.write_batches,
            ),
            ("kv_engine_wal_syncs", "WAL fsyncs", stats.wal_syncs),
            ("kv_engine_flushes", "Memtables flushed to L0", stats.flushes),
            (
                "kv_engine_compactions",
                "Compactions run, trivial moves included",
                stats.compactions,
            ),
            (
                "kv_engine_compaction_written_bytes",
                "Bytes written by compactions",
                stats.compaction_bytes_written,
            ),
            ("kv_engine_block_cache_hits", "Block cache hits", stats.block_cache_hits),
            (
                "kv_engine_block_cache_misses",
                "Block cache misses",
                stats.block_cache_misses,
            ),
        ];
        for (name, help, value) in counters {
            out.counter(name, help, value)?;
        }
        let stall_seconds = ConstCounter::new(stats.write_stall_micros as f64 / 1e6);
        stall_seconds.encode(out.0.encode_descriptor(
            "kv_engine_write_stall_seconds",
            "Time writes spent stalled",
            None,
            MetricType::Counter,
        )?)?;
        out.gauge(
            "kv_engine_block_cache_bytes",
            "Bytes held by the block cache",
            stats.block_cache_bytes,
        )?;
        out.gauge(
            "kv_engine_table_memory_bytes",
            "Bytes of index and filter blocks held in memory by open tables",
            stats.table_memory_bytes,
        )?;
        out.gauge(
            "kv_engine_blob_file_bytes",
            "Bytes of live blob files (values kept apart from the tables)",
            stats.blob_file_bytes,
        )?;
        out.gauge(
            "kv_engine_blob_garbage_bytes",
            "Bytes of values in blob files that no table points to any more",
            stats.blob_garbage_bytes,
        )?;
        out.gauge(
            "kv_engine_pending_compaction_bytes",
            "Bytes compaction must rewrite to bring every level under its target size",
            stats.pending_compaction_bytes,
        )
    }

    fn encode_process(out: &mut Out<'_, '_>) -> fmt::Result {
        if let Some(rss_bytes) = resident_bytes() {
            out.gauge(
                "kv_process_resident_memory_bytes",
                "Resident set size of the process",
                rss_bytes,
            )?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            out.gauge(
                "kv_process_open_fds",
                "File descriptors the process has open",
                u64::try_from(fds.count()).unwrap_or(u64::MAX),
            )?;
        }
        Ok(())
    }
}

impl Collector for Sampled {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut out = Out(&mut encoder);
        self.encode_raft(&mut out)?;
        self.encode_log(&mut out)?;
        self.encode_engine(&mut out)?;
        Sampled::encode_process(&mut out)
    }
}

/// A descriptor encoder with helpers for one-series metrics.
struct Out<'a, 'e>(&'a mut DescriptorEncoder<'e>);

impl Out<'_, '_> {
    fn gauge(&mut self, name: &str, help: &str, value: u64) -> fmt::Result {
        let gauge = ConstGauge::new(saturating_i64(value));
        gauge.encode(self.0.encode_descriptor(name, help, None, gauge.metric_type())?)
    }

    /// `name` without `_total`, which the encoder appends.
    fn counter(&mut self, name: &str, help: &str, value: u64) -> fmt::Result {
        let counter = ConstCounter::new(value);
        counter.encode(self.0.encode_descriptor(name, help, None, counter.metric_type())?)
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The process's resident set size, from `/proc/self/status` (Linux only).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
