//! Counters the engine keeps about itself.

use std::sync::atomic::{AtomicU64, Ordering};

/// A point-in-time report of the engine's shape and activity.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Files and bytes per level, L0 first.
    pub levels: Vec<LevelStats>,
    /// Bytes in the active memtable.
    pub memtable_bytes: u64,
    /// Frozen memtables waiting to be flushed.
    pub immutable_memtables: u64,
    /// Bytes in frozen memtables.
    pub immutable_memtable_bytes: u64,
    /// The newest sequence number visible to readers.
    pub last_sequence: u64,
    /// Times a write waited for a flush or an L0 compaction.
    pub write_stalls: u64,
    /// Total time writes spent stalled, in microseconds.
    pub write_stall_micros: u64,
    /// Times the write controller made a write group sleep to pace writes
    /// while compaction was behind.
    pub write_slowdowns: u64,
    /// Total time write groups slept to be paced, in microseconds.
    pub write_slowdown_micros: u64,
    /// The rate writes are paced to now, in bytes per second; 0 when they
    /// are not paced.
    pub delayed_write_bytes_per_sec: u64,
    /// Bytes compaction must still rewrite to bring every level under its
    /// target (the debt the write controller paces writers by).
    pub pending_compaction_bytes: u64,
    /// Write groups committed (each one WAL append, at most one fsync).
    pub write_groups: u64,
    /// Batches committed.
    pub write_batches: u64,
    /// WAL fsyncs.
    pub wal_syncs: u64,
    /// Memtables flushed to L0.
    pub flushes: u64,
    /// Compactions run (trivial moves included).
    pub compactions: u64,
    /// Bytes written by compactions.
    pub compaction_bytes_written: u64,
    /// Key-range parts split off compactions to run on threads of their
    /// own (a compaction in `n` parts adds `n - 1`).
    pub subcompactions: u64,
    /// Block cache hits.
    pub block_cache_hits: u64,
    /// Block cache misses.
    pub block_cache_misses: u64,
    /// Bytes held by the block cache.
    pub block_cache_bytes: u64,
    /// Bytes of index and filter blocks held in memory by open tables.
    pub table_memory_bytes: u64,
}

/// One level's share of the tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LevelStats {
    /// Table files in the level.
    pub files: u64,
    /// Bytes of those files.
    pub bytes: u64,
}

/// Monotonic counters updated on the hot paths.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub write_stalls: AtomicU64,
    pub write_stall_micros: AtomicU64,
    pub write_slowdowns: AtomicU64,
    pub write_slowdown_micros: AtomicU64,
    pub write_groups: AtomicU64,
    pub write_batches: AtomicU64,
    pub wal_syncs: AtomicU64,
    pub flushes: AtomicU64,
    pub compactions: AtomicU64,
    pub compaction_bytes_written: AtomicU64,
    pub subcompactions: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
