//! Configuration. Every knob documents its default and its trade-off.

use std::sync::Arc;

use crate::io::{FileSystem, RealFs};

/// Largest user key the engine accepts, in bytes.
pub const KEY_BYTES_MAX: usize = 64 * 1024;
/// Largest value the engine accepts, in bytes.
pub const VALUE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Largest attached metadata (see [`crate::WriteBatch::set_metadata`]), in bytes.
pub const METADATA_BYTES_MAX: usize = 64 * 1024;
/// Number of levels in the tree (L0 to L6).
pub const LEVELS: usize = 7;

/// Background compaction threads at most.
pub const COMPACTION_THREADS_MAX: usize = 64;

/// Fewest table files the table cache may be limited to.
pub const TABLE_FILES_OPEN_MIN: usize = 8;

/// How a [`crate::Db`] is configured when opened.
///
/// # Memory
///
/// The engine's memory is bounded by configuration, not by the size of the
/// data:
///
/// - memtables: at most `memtable_bytes_max * (1 + immutable_memtables_max)`;
/// - the block cache: about `block_cache_bytes`, which holds data blocks
///   *and* every table's index block and bloom filter (a table whose index
///   or filter was evicted reads it again, one read of a few KiB to a few
///   hundred KiB, on its next lookup);
/// - the index and filter of L0 tables, pinned while the table is open
///   (every point lookup consults every overlapping L0 table): at most
///   `l0_stop_trigger` tables, each about 1-2% of `memtable_bytes_max` at
///   10 bloom bits per key and 100-byte entries;
/// - open tables: at most `table_files_open_max` in the table cache, each a
///   file handle and about 100 bytes (the footer's fields), plus the ones
///   running reads hold;
/// - a small fixed overhead: threads, the manifest's view of the live files
///   (per table: its number, size and smallest and largest keys), and what
///   readers hold while they read (a cursor pins the blocks it is on and
///   the tables it reads; a value returned by `get` is a copy).
///
/// The engine also opens its WAL, manifest and lock files, a handful in all,
/// besides the table files.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bytes a memtable holds before it is frozen and flushed. Default 64 MiB.
    /// Larger means fewer, larger L0 files and less write amplification, at
    /// the cost of memory and WAL replay time.
    pub memtable_bytes_max: usize,
    /// Frozen memtables allowed to wait for flushing before writes stall.
    /// Default 2. Memory for memtables is at most
    /// `memtable_bytes_max * (1 + immutable_memtables_max)`.
    pub immutable_memtables_max: usize,
    /// Target uncompressed size of a table data block. Default 4 KiB.
    /// Larger blocks mean smaller indexes but more bytes read per point lookup.
    pub block_bytes_target: usize,
    /// Keys between restart points inside a block. Default 16. Fewer means
    /// faster seeks within a block, more means better prefix compression.
    pub block_restart_interval: usize,
    /// Bloom filter bits per key. Default 10 (about 1% false positives).
    /// 0 disables filters: every point miss then reads a data block.
    pub bloom_bits_per_key: usize,
    /// Byte capacity of the shared block cache. Default 64 MiB. It holds
    /// data blocks and the tables' index and filter blocks (about 1.3 bytes
    /// per key at 10 bloom bits per key, plus about 30 bytes per 4 KiB
    /// block for the index), so a cache much smaller than the indexes and
    /// filters of the hot tables makes lookups reread them from disk.
    pub block_cache_bytes: usize,
    /// Table files kept open at most by the table cache. Default 500 (well
    /// under the usual limit of 1,024 descriptors per process). More means
    /// fewer reopens (each one reads and verifies a footer) on databases
    /// with many tables; fewer means fewer file descriptors. Running reads
    /// may briefly hold tables beyond this bound.
    pub table_files_open_max: usize,
    /// Target size of a table written by compaction. Default 64 MiB.
    pub table_bytes_target: u64,
    /// L0 files that trigger an L0 -> L1 compaction. Default 4.
    pub l0_compaction_trigger: usize,
    /// L0 files at which each write is delayed by 1 ms. Default 20.
    pub l0_slowdown_trigger: usize,
    /// L0 files at which writes wait for compaction. Default 36.
    pub l0_stop_trigger: usize,
    /// Target size of L1; each deeper level is `level_size_ratio` times the
    /// previous one. Default 256 MiB.
    pub l1_bytes_target: u64,
    /// Size ratio between adjacent levels. Default 10. Smaller ratios mean
    /// more levels (slower reads), larger ratios more write amplification.
    pub level_size_ratio: u64,
    /// Background compaction threads (one more thread always flushes
    /// memtables). Default 1.
    pub compaction_threads: usize,
    /// Create the database when the directory holds none. Default true.
    pub create_if_missing: bool,
    /// The filesystem every file of the database goes through. Default
    /// [`RealFs`] (`std::fs`). Tests pass a simulated disk (the `sim`
    /// feature's `storage::sim::SimFs`) to crash the engine and inject
    /// faults; the cost is one dynamic call per record, block or file op.
    pub fs: Arc<dyn FileSystem>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            memtable_bytes_max: 64 << 20,
            immutable_memtables_max: 2,
            block_bytes_target: 4096,
            block_restart_interval: 16,
            bloom_bits_per_key: 10,
            block_cache_bytes: 64 << 20,
            table_files_open_max: 500,
            table_bytes_target: 64 << 20,
            l0_compaction_trigger: 4,
            l0_slowdown_trigger: 20,
            l0_stop_trigger: 36,
            l1_bytes_target: 256 << 20,
            level_size_ratio: 10,
            compaction_threads: 1,
            create_if_missing: true,
            fs: RealFs::shared(),
        }
    }
}

impl Options {
    /// Checks that the knobs are consistent with each other.
    pub fn validate(&self) -> crate::Result<()> {
        let check = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(crate::Error::InvalidArgument(format!("options: {what}")))
            }
        };
        check(
            self.memtable_bytes_max >= 4096,
            "memtable_bytes_max must be at least 4096",
        )?;
        // With no room for an immutable memtable, a full memtable could
        // never be frozen and every write would wait forever.
        check(
            self.immutable_memtables_max >= 1,
            "immutable_memtables_max must be at least 1",
        )?;
        check(
            self.bloom_bits_per_key <= 64,
            "bloom_bits_per_key must be at most 64 (0 disables filters)",
        )?;
        check(
            self.l1_bytes_target >= self.table_bytes_target,
            "l1_bytes_target must be at least table_bytes_target",
        )?;
        check(self.block_bytes_target >= 64, "block_bytes_target must be at least 64")?;
        check(
            self.block_restart_interval >= 1,
            "block_restart_interval must be at least 1",
        )?;
        check(
            self.l0_compaction_trigger >= 1,
            "l0_compaction_trigger must be at least 1",
        )?;
        check(
            self.l0_compaction_trigger <= self.l0_slowdown_trigger && self.l0_slowdown_trigger <= self.l0_stop_trigger,
            "l0 triggers must satisfy compaction <= slowdown <= stop",
        )?;
        check(
            self.table_files_open_max >= TABLE_FILES_OPEN_MIN,
            "table_files_open_max must be at least 8",
        )?;
        check(self.level_size_ratio >= 2, "level_size_ratio must be at least 2")?;
        check(self.compaction_threads >= 1, "compaction_threads must be at least 1")?;
        check(
            self.compaction_threads <= COMPACTION_THREADS_MAX,
            "compaction_threads must be at most 64",
        )?;
        check(
            self.table_bytes_target >= 4096,
            "table_bytes_target must be at least 4096",
        )
    }
}

/// How one write is made durable.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions {
    /// Return only after the write is on disk (the WAL is fsynced). Default
    /// false: a process crash keeps the write, a machine crash may not.
    pub sync: bool,
    /// Skip the WAL: the write becomes durable only when the memtable that
    /// holds it is flushed. For callers that keep their own log (Raft).
    /// Default false.
    pub disable_wal: bool,
}
