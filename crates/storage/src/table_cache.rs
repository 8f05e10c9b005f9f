//! The table cache: open tables, bounded by a count of open files.
//!
//! A live table file ([`crate::version::TableFile`]) holds only what the
//! manifest says about it; it opens its [`Table`] here when a read needs it.
//! Opening reads and verifies the footer (and checks the size and entry count
//! against the manifest); the index and filter then come through the block
//! cache, so an open table costs one file handle and a few words.
//!
//! At most [`Options::table_files_open_max`](crate::Options) tables stay open
//! in the cache; the least recently useful ones are closed first
//! (`quick_cache`'s CLOCK-Pro-like policy, an approximation of LRU that a
//! one-off scan does not flush). A reader holds an `Arc<Table>` for as long
//! as it reads, so eviction never closes a file under a reader: it only
//! drops the cache's reference, and the file closes when the last reader
//! lets go. Files open at once are therefore at most the limit plus the
//! tables that running lookups and cursors hold.
//!
//! A table evicted and needed again is reopened. A table file is deleted
//! only when the last [`crate::version::TableFile`] naming it is dropped;
//! that drop first evicts it here, and since only holders of the
//! `TableFile` can ask for it, nothing reopens a deleted table.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::{DefaultHashBuilder, OptionsBuilder, UnitWeighter};

use crate::cache::BlockCache;
use crate::error::{Error, Result};
use crate::io::{FileSystem, ReadFile};
use crate::sstable::Table;
use crate::version::table_path;

/// Fewest tables per shard of the cache: smaller shards make the eviction
/// policy coarse, fewer shards make lookups contend.
const TABLES_PER_SHARD_MIN: usize = 32;

/// Most shards the cache is split into.
const SHARDS_MAX: usize = 16;

/// What the manifest records about a table that opening checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TableId {
    /// The table's file number.
    pub number: u64,
    /// Bytes of the file.
    pub size_bytes: u64,
    /// Entries in the table.
    pub entries: u64,
}

/// Counters of the table cache, for [`crate::Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TableCacheStats {
    /// Tables opened (footer read and verified) since the database opened.
    pub opens: u64,
    /// Tables the cache holds open now.
    pub cached_tables: u64,
    /// Table files open now, in the cache or held by readers.
    pub open_files: u64,
}

/// A count-bounded cache of open tables, safe to share between threads.
pub(crate) struct TableCache {
    /// The filesystem tables are opened through.
    fs: Arc<dyn FileSystem>,
    /// The database directory.
    dir: PathBuf,
    /// The block cache every table reads through.
    block_cache: Arc<BlockCache>,
    /// Open tables by file number.
    tables: Cache<u64, Arc<Table>, UnitWeighter, DefaultHashBuilder, DefaultLifecycle<u64, Arc<Table>>>,
    /// The configured bound on cached tables.
    capacity_tables: usize,
    /// Tables opened so far.
    opens: AtomicU64,
    /// Table files open now (a count shared with each table's guard).
    open_files: Arc<AtomicU64>,
}

impl TableCache {
    /// A cache keeping at most `capacity_tables` tables of `dir` open.
    pub(crate) fn new(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        block_cache: Arc<BlockCache>,
        capacity_tables: usize,
    ) -> Result<TableCache> {
        assert!(capacity_tables >= 1, "the table cache holds at least one table");
        // Every shard holds the same whole number of tables, so the total
        // never exceeds the configured bound (the cache rounds per shard).
        let shards = (capacity_tables / TABLES_PER_SHARD_MIN).clamp(1, SHARDS_MAX);
        let shards = if shards.is_power_of_two() {
            shards
        } else {
            shards.next_power_of_two() / 2
        };
        let per_shard = capacity_tables / shards;
        let options = OptionsBuilder::new()
            .shards(shards)
            .estimated_items_capacity(per_shard * shards)
            .weight_capacity((per_shard * shards) as u64)
            .build()
            .map_err(|error| Error::InvalidArgument(format!("table cache: {error}")))?;
        Ok(TableCache {
            fs,
            dir: dir.to_path_buf(),
            block_cache,
            tables: Cache::with_options(
                options,
                UnitWeighter,
                DefaultHashBuilder::default(),
                DefaultLifecycle::default(),
            ),
            capacity_tables,
            opens: AtomicU64::new(0),
            open_files: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The open table `id`, opened now if the cache does not hold it.
    /// Concurrent callers asking for the same table wait for one open.
    pub(crate) fn table(&self, id: TableId) -> Result<Arc<Table>> {
        self.tables.get_or_insert_with(&id.number, || self.open(id))
    }

    /// Closes table `number` as far as the cache is concerned (readers that
    /// hold it keep it open). Called before its file is deleted.
    pub(crate) fn evict(&self, number: u64) {
        self.tables.remove(&number);
    }

    /// The cache's counters.
    pub(crate) fn stats(&self) -> TableCacheStats {
        TableCacheStats {
            opens: self.opens.load(Ordering::Relaxed),
            cached_tables: self.tables.len() as u64,
            open_files: self.open_files.load(Ordering::Relaxed),
        }
    }

    /// Opens table `id` and checks it against what the manifest says.
    fn open(&self, id: TableId) -> Result<Arc<Table>> {
        let path = table_path(&self.dir, id.number);
        let file = ReadFile::open(&*self.fs, &path)?;
        if file.len_bytes() != id.size_bytes {
            return Err(Error::corruption(
                &path,
                file.len_bytes(),
                format!(
                    "table has {} bytes, the manifest says {}",
                    file.len_bytes(),
                    id.size_bytes
                ),
            ));
        }
        let table =
            Table::open(file, id.number, Arc::clone(&self.block_cache))?.counted_in(Arc::clone(&self.open_files));
        assert_eq!(
            table.file_number(),
            id.number,
            "a table opened under another file's number"
        );
        if table.entries() != id.entries {
            return Err(Error::corruption(
                &path,
                0,
                format!(
                    "table holds {} entries, the manifest says {}",
                    table.entries(),
                    id.entries
                ),
            ));
        }
        // Statistics only: no ordering with other memory is needed.
        self.opens.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(table))
    }
}

impl fmt::Debug for TableCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableCache")
            .field("dir", &self.dir)
            .field("capacity_tables", &self.capacity_tables)
            .field("stats", &self.stats())
            .finish()
    }
}
