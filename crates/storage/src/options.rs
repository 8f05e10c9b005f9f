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
/// Parts one compaction may be split into at most (see
/// [`Options::subcompactions_max`]).
pub const SUBCOMPACTIONS_MAX: usize = 64;

/// The slowest delayed write rate accepted, in bytes per second: slower
/// would hold a single large batch for minutes.
pub const DELAYED_WRITE_BYTES_PER_SEC_FLOOR: u64 = 16 * 1024;

/// The slowest compaction rate accepted, in bytes per second: slower
/// could never keep up with even a trickle of writes.
pub const COMPACTION_BYTES_PER_SEC_MIN: u64 = 1 << 20;

/// Fewest table files the table cache may be limited to.
pub const TABLE_FILES_OPEN_MIN: usize = 8;
/// The smallest [`Options::blob_value_bytes_min`] accepted.
pub const BLOB_VALUE_BYTES_MIN: usize = 64;
/// Largest memtable accepted: its key filter is allocated whole up front
/// (a 64th of this), and a WAL this big takes long to replay at startup.
pub const MEMTABLE_BYTES_MAX: usize = 4 << 30;
/// Most immutable memtables accepted (each may be up to a memtable's size).
pub const IMMUTABLE_MEMTABLES_MAX: usize = 64;
/// Largest data block and table targets accepted.
pub const BLOCK_BYTES_MAX: usize = 16 << 20;
/// Largest table target accepted.
pub const TABLE_BYTES_MAX: u64 = 4 << 30;
/// Largest size ratio between levels accepted.
pub const LEVEL_SIZE_RATIO_MAX: u64 = 1000;

/// How a [`crate::Db`] is configured when opened.
///
/// # Memory
///
/// The engine's memory is bounded by configuration, not by the size of the
/// data:
///
/// - memtables: at most `memtable_bytes_max * (1 + immutable_memtables_max)`,
///   plus 1/64 of that for their key filters (which let point lookups of
///   keys a memtable does not hold skip its skip list);
/// - the block cache: about `block_cache_bytes`, which holds data blocks
///   *and* the tables' index partitions and bloom filter pages, 4 KiB each
///   (a table whose partition or page was evicted reads that one again on
///   its next lookup that needs it); tables written before format 3 have a
///   single index block and filter instead, read whole, a few KiB to a few
///   hundred KiB;
/// - the index and filter of L0 tables, pinned while the table is open
///   (every point lookup consults every overlapping L0 table; format 3
///   pins only the pages and partitions lookups have read, up to the
///   whole): at most `l0_stop_trigger` tables, each about 1-2% of
///   `memtable_bytes_max` at 10 bloom bits per key and 100-byte entries;
/// - open tables: at most `table_files_open_max` in the table cache, each a
///   file handle, about 100 bytes (the footer's fields) and, in format 3,
///   its top-level index (one entry per 4 KiB index partition: about
///   5 KiB for a 64 MiB table of 116-byte entries), plus the ones running
///   reads hold;
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
    /// L0 files at which writes start to be paced (see
    /// [`delayed_write_bytes_per_sec_max`](Self::delayed_write_bytes_per_sec_max)).
    /// Default 20. Lower slows writers earlier and more gently.
    pub l0_slowdown_trigger: usize,
    /// L0 files at which writes wait for compaction outright, a last resort
    /// the write controller's pacing should keep writers away from.
    /// Default 36.
    pub l0_stop_trigger: usize,
    /// Target size of L1; each deeper level is `level_size_ratio` times the
    /// previous one. Default 256 MiB.
    pub l1_bytes_target: u64,
    /// Size ratio between adjacent levels. Default 10. Smaller ratios mean
    /// more levels (slower reads), larger ratios more write amplification.
    pub level_size_ratio: u64,
    /// Background compaction threads (one more thread always flushes
    /// memtables). Default 1. With two or more, while a deeper compaction
    /// holds the L1 files an L0 -> L1 compaction needs, another thread
    /// merges the newest L0 files within L0 (intra-L0 compaction), so L0
    /// does not grow towards the write controller's triggers meanwhile.
    pub compaction_threads: usize,
    /// Bytes compaction is behind (the bytes it must still rewrite to bring
    /// every level under its target) at which writes start to be paced.
    /// Default 64 GiB. Lower keeps the tree tidier at the cost of earlier
    /// write slowdowns.
    pub pending_compaction_bytes_slowdown: u64,
    /// Bytes compaction is behind at which writes wait for compaction
    /// outright. Default 256 GiB.
    pub pending_compaction_bytes_stop: u64,
    /// The write rate, in bytes per second of batches, that writers are
    /// paced to when compaction debt just reaches a slowdown threshold.
    /// The rate falls geometrically to
    /// [`delayed_write_bytes_per_sec_min`](Self::delayed_write_bytes_per_sec_min)
    /// as the debt nears a stop threshold, and rises again as it shrinks.
    /// Default 16 MiB/s. Higher means less slowdown but a greater chance
    /// of reaching a stop.
    pub delayed_write_bytes_per_sec_max: u64,
    /// The write rate writers are paced to just before a stop threshold.
    /// Default 1 MiB/s.
    pub delayed_write_bytes_per_sec_min: u64,
    /// Bytes of L0 files one L0 -> L1 compaction takes at most (the oldest
    /// first, at least one file), and one intra-L0 compaction merges at
    /// most. Default 1 GiB. Smaller bounds how long
    /// one compaction holds L0 back; larger rewrites L1 less often.
    pub l0_compaction_bytes_max: u64,
    /// Key-range parts one compaction is split into at most, each merged
    /// by a thread of its own at the same time. Default 1: no
    /// sub-compactions, as RocksDB. More finishes a large L0 -> L1
    /// compaction sooner on idle cores, at the cost of that many threads'
    /// CPU and I/O; on a small machine those threads compete with the
    /// writers, and the smaller L0 they keep rewrites L1 more often (a run
    /// with 4 on two busy cores did 6-15% more CPU and no faster writes).
    pub subcompactions_max: usize,
    /// Bytes (inputs of both levels) below which a compaction part is not
    /// split off on its own. Default 64 MiB. Smaller splits more eagerly,
    /// paying a thread and some smaller output files per part.
    pub subcompaction_bytes_min: u64,
    /// Bytes per second (keys and values merged) all compactions together
    /// may go at; 0 means no limit. Default 0. A limit leaves disk
    /// bandwidth to reads and the WAL, at the risk of compaction falling
    /// behind and the write controller slowing writers.
    pub compaction_bytes_per_sec: u64,
    /// Values of at least this many bytes are kept in blob files, apart
    /// from the tables: a flush writes each such value once into a blob
    /// file and a pointer of a few bytes into the table, and compactions
    /// move only the pointer. `None` keeps every value in the tables.
    /// Default 1 KiB. Lower moves more values out of the tables (smaller
    /// tables, less compaction I/O) at the cost of one more read per point
    /// lookup or scanned pair of a separated value; values of a few hundred
    /// bytes or less are cheaper to keep in the tables.
    pub blob_value_bytes_min: Option<usize>,
    /// Size at which a blob file being written is closed and the next one
    /// started. Default 256 MiB. A flush writes at most about a memtable's
    /// worth; compactions that collect garbage may write more.
    pub blob_file_bytes_target: u64,
    /// Share of a blob file's value bytes that must be garbage (values no
    /// table points to) before compactions move its live values to new
    /// blob files as they meet them, so its space comes back. Default 0.5:
    /// separated values take at most about twice their live bytes on disk
    /// once their keys have been compacted. Lower reclaims sooner at the
    /// cost of rewriting more live values; 1.0 never moves values (a file
    /// is still deleted when every one of its values is garbage).
    pub blob_collection_garbage_ratio: f64,
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
            pending_compaction_bytes_slowdown: 64 << 30,
            pending_compaction_bytes_stop: 256 << 30,
            delayed_write_bytes_per_sec_max: 16 << 20,
            delayed_write_bytes_per_sec_min: 1 << 20,
            l0_compaction_bytes_max: 1 << 30,
            subcompactions_max: 1,
            subcompaction_bytes_min: 64 << 20,
            compaction_bytes_per_sec: 0,
            blob_value_bytes_min: Some(1024),
            blob_file_bytes_target: 256 << 20,
            blob_collection_garbage_ratio: 0.5,
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
            (4096..=MEMTABLE_BYTES_MAX).contains(&self.memtable_bytes_max),
            "memtable_bytes_max must be between 4096 and 4 GiB",
        )?;
        check(
            self.immutable_memtables_max <= IMMUTABLE_MEMTABLES_MAX,
            "immutable_memtables_max must be at most 64",
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
        check(
            (64..=BLOCK_BYTES_MAX).contains(&self.block_bytes_target),
            "block_bytes_target must be between 64 and 16 MiB",
        )?;
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
        check(
            (2..=LEVEL_SIZE_RATIO_MAX).contains(&self.level_size_ratio),
            "level_size_ratio must be between 2 and 1000",
        )?;
        check(self.compaction_threads >= 1, "compaction_threads must be at least 1")?;
        check(
            self.compaction_threads <= COMPACTION_THREADS_MAX,
            "compaction_threads must be at most 64",
        )?;
        check(
            self.pending_compaction_bytes_slowdown <= self.pending_compaction_bytes_stop,
            "pending_compaction_bytes_slowdown must be at most pending_compaction_bytes_stop",
        )?;
        check(
            self.delayed_write_bytes_per_sec_min >= DELAYED_WRITE_BYTES_PER_SEC_FLOOR,
            "delayed_write_bytes_per_sec_min must be at least 16 KiB/s",
        )?;
        check(
            self.delayed_write_bytes_per_sec_min <= self.delayed_write_bytes_per_sec_max,
            "delayed_write_bytes_per_sec_min must be at most delayed_write_bytes_per_sec_max",
        )?;
        check(
            self.l0_compaction_bytes_max >= 4096,
            "l0_compaction_bytes_max must be at least 4096",
        )?;
        check(
            (1..=SUBCOMPACTIONS_MAX).contains(&self.subcompactions_max),
            "subcompactions_max must be between 1 and 64",
        )?;
        check(
            self.subcompaction_bytes_min >= 4096,
            "subcompaction_bytes_min must be at least 4096",
        )?;
        check(
            self.compaction_bytes_per_sec == 0 || self.compaction_bytes_per_sec >= COMPACTION_BYTES_PER_SEC_MIN,
            "compaction_bytes_per_sec must be 0 (no limit) or at least 1 MiB/s",
        )?;
        // A pointer takes up to 30 bytes: values smaller than a few of them
        // would grow.
        check(
            self.blob_value_bytes_min.is_none_or(|min| min >= BLOB_VALUE_BYTES_MIN),
            "blob_value_bytes_min must be at least 64 (or None: no blob files)",
        )?;
        check(
            self.blob_file_bytes_target >= 4096,
            "blob_file_bytes_target must be at least 4096",
        )?;
        check(
            (0.0..=1.0).contains(&self.blob_collection_garbage_ratio),
            "blob_collection_garbage_ratio must be between 0.0 and 1.0",
        )?;
        check(
            (4096..=TABLE_BYTES_MAX).contains(&self.table_bytes_target),
            "table_bytes_target must be between 4096 and 4 GiB",
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
