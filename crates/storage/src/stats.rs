//! Counters the engine keeps about itself.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::options::LEVELS;

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
    /// Intra-L0 compactions: the newest L0 files merged within L0 while
    /// the L1 files an L0 -> L1 compaction needs were busy.
    pub intra_l0_compactions: u64,
    /// Block cache hits.
    pub block_cache_hits: u64,
    /// Block cache misses.
    pub block_cache_misses: u64,
    /// Bytes held by the block cache.
    pub block_cache_bytes: u64,
    /// Bytes of index and filter blocks held in memory outside the block
    /// cache by open tables: the top-level index of every open format 3
    /// table, and what L0 tables pin (formats 1 and 2: the whole index and
    /// filter; format 3: the pages and partitions their lookups read). The
    /// rest is read through the cache and charged to it.
    pub table_memory_bytes: u64,
    /// Tables the table cache holds open.
    pub table_cache_tables: u64,
    /// Table files open now, in the table cache or held by running reads.
    pub table_files_open: u64,
    /// Tables opened (footer read and verified) since the database opened.
    pub table_opens: u64,
    /// Live blob files (values kept apart from the tables).
    pub blob_files: u64,
    /// Bytes of live blob files.
    pub blob_file_bytes: u64,
    /// Bytes of the values in live blob files (without their framing).
    pub blob_value_bytes: u64,
    /// Bytes of values in live blob files that no table points to any more.
    pub blob_garbage_bytes: u64,
    /// Bytes of blob files written by flushes and compactions since the
    /// database opened.
    pub blob_bytes_written: u64,
    /// Blob files open for reads now.
    pub blob_files_open: u64,
}

/// One level's share of the tree, and the I/O that built it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LevelStats {
    /// Table files in the level.
    pub files: u64,
    /// Bytes of those files.
    pub bytes: u64,
    /// Bytes of the level above's files that compactions into this level
    /// read (for L0: none, flushes read memtables).
    pub bytes_read_from_above: u64,
    /// Bytes of this level's own files that compactions into it read (to
    /// merge them with what came from above).
    pub bytes_read_from_level: u64,
    /// Bytes of table files written into this level (flushes for L0,
    /// compactions below). Files moved down unchanged are not counted.
    pub bytes_written: u64,
}

impl LevelStats {
    /// Bytes written into this level per byte that came down from the
    /// level above: 1.0 means every byte was written once, more means
    /// this level's own data was rewritten along with it. `None` for L0
    /// and for levels nothing was compacted into.
    pub fn write_amplification(&self) -> Option<f64> {
        (self.bytes_read_from_above > 0).then(|| self.bytes_written as f64 / self.bytes_read_from_above as f64)
    }
}

impl Stats {
    /// Bytes of table files written by flushes and compactions per byte
    /// flushed: the engine's write amplification since it was opened
    /// (the WAL not counted). `None` before the first flush.
    pub fn write_amplification(&self) -> Option<f64> {
        let flushed = self.levels.first()?.bytes_written;
        let written: u64 = self.levels.iter().map(|l| l.bytes_written).sum();
        (flushed > 0).then(|| written as f64 / flushed as f64)
    }
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
    pub intra_l0_compactions: AtomicU64,
    pub blob_bytes_written: AtomicU64,
    /// Per level: bytes of the level above read by compactions into it.
    pub level_bytes_read_from_above: [AtomicU64; LEVELS],
    /// Per level: bytes of its own files read by compactions into it.
    pub level_bytes_read_from_level: [AtomicU64; LEVELS],
    /// Per level: bytes of table files written into it.
    pub level_bytes_written: [AtomicU64; LEVELS],
}

impl Counters {
    pub fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
