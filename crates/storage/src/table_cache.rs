//! The table cache: open tables, bounded by a count of open files.
//!
//! A live table file ([`crate::version::TableFile`]) holds only what the
//! manifest says about it; it opens its [`Table`] here when a read needs it.
//! Opening reads and verifies the footer (and checks the size and entry count
//! against the manifest) and, in format 3, the filter header and the
//! top-level index, which the table keeps; the index partitions and filter
//! pages (formats 1 and 2: the whole index and filter) then come through
//! the block cache, so an open table costs one file handle, a few words and
//! a few KiB of top-level index.
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

    /// Bytes of index and filter that table `number` pins, if it is open in
    /// the cache (0 otherwise). Does not count as a use of the table.
    pub(crate) fn pinned_bytes(&self, number: u64) -> usize {
        self.tables.peek(&number).map_or(0, |table| table.pinned_bytes())
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::io::RealFs;
    use crate::iterator::InternalIterator;
    use crate::key::{self, internal_key, seek_key, ValueKind, SEQUENCE_MAX};
    use crate::sstable::tests_support::{default_options, hit, write_table, Entry};
    use crate::sstable::{TableOptions, FORMAT_VERSION_SINGLE_INDEX};
    use crate::version::{FileMeta, TableFile};

    /// Tables in the test directory.
    const TABLES: u64 = 40;
    /// The open-file limit the tests set: well below `TABLES`.
    const LIMIT_TABLES: usize = 8;

    /// The entries of table `number`: keys unique to it.
    fn entries_of(number: u64) -> Vec<Entry> {
        (0..50)
            .map(|i| {
                let user = format!("t{number:03}-k{i:03}");
                (
                    internal_key(user.as_bytes(), 7, ValueKind::Put),
                    format!("value {number} {i}").into_bytes(),
                )
            })
            .collect()
    }

    /// Writes tables 1..=TABLES into `dir`, returning their ids.
    fn write_tables(dir: &Path) -> Vec<TableId> {
        write_tables_with(dir, default_options())
    }

    /// Writes tables 1..=TABLES into `dir` with `options`, returning their ids.
    fn write_tables_with(dir: &Path, options: TableOptions) -> Vec<TableId> {
        (1..=TABLES)
            .map(|number| {
                let summary = write_table(&table_path(dir, number), &entries_of(number), options.clone());
                TableId {
                    number,
                    size_bytes: summary.file_bytes,
                    entries: summary.entries,
                }
            })
            .collect()
    }

    /// A table cache over `dir` limited to `LIMIT_TABLES`.
    fn cache_over(dir: &Path) -> Arc<TableCache> {
        let block_cache = Arc::new(BlockCache::new(1 << 20));
        Arc::new(TableCache::new(RealFs::shared(), dir, block_cache, LIMIT_TABLES).expect("table cache"))
    }

    /// Looks up entry `i` of table `id` and checks the answer.
    fn check_entry(table: &Table, id: TableId, i: usize) {
        let (k, v) = &entries_of(id.number)[i];
        let user = key::user_key(k);
        let found = table
            .get(user, &seek_key(user, SEQUENCE_MAX), i.is_multiple_of(2))
            .expect("get");
        assert_eq!(found, Some(hit(k, v)), "table {} entry {i}", id.number);
    }

    #[test]
    fn the_open_file_limit_is_respected_and_evicted_tables_reopen() {
        // Reading every table of a database larger than the limit must never hold more files open.
        let dir = tempfile::tempdir().expect("temp dir");
        let ids = write_tables(dir.path());
        let cache = cache_over(dir.path());
        for round in 0..3 {
            for (n, &id) in ids.iter().enumerate() {
                let table = cache.table(id).expect("open");
                check_entry(&table, id, (n + round) % 50);
                drop(table);
                let stats = cache.stats();
                assert!(stats.cached_tables <= LIMIT_TABLES as u64, "{stats:?}");
                assert!(stats.open_files <= LIMIT_TABLES as u64, "{stats:?}");
            }
        }
        let stats = cache.stats();
        println!("{stats:?}");
        assert!(
            stats.opens > TABLES,
            "tables evicted and read again must be reopened: {stats:?}"
        );
    }

    #[test]
    fn eviction_under_concurrent_readers_never_closes_a_held_table() {
        // Readers keep reading a table they hold while other threads evict it from the cache.
        let dir = tempfile::tempdir().expect("temp dir");
        let ids = write_tables(dir.path());
        let cache = cache_over(dir.path());
        let readers = 4;
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for reader in 0..readers {
                let (cache, ids, stop) = (&cache, &ids, &stop);
                scope.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(reader);
                    for _ in 0..400 {
                        let id = ids[rng.usize(..ids.len())];
                        let table = cache.table(id).expect("open");
                        // Hold the table across many lookups while others churn the cache.
                        for _ in 0..20 {
                            check_entry(&table, id, rng.usize(..50));
                        }
                        let open = cache.stats().open_files;
                        assert!(
                            open <= (LIMIT_TABLES + readers as usize) as u64,
                            "{open} files open with {readers} readers each holding one"
                        );
                    }
                    stop.store(true, Ordering::Relaxed);
                });
            }
        });
        assert!(stop.load(Ordering::Relaxed));
        let stats = cache.stats();
        println!("{stats:?}");
        assert!(stats.opens > TABLES, "the cache churned: {stats:?}");
        assert!(stats.open_files <= LIMIT_TABLES as u64, "readers let go: {stats:?}");
    }

    /// A live table file for table `id` of `dir`.
    fn table_file(dir: &Path, cache: &Arc<TableCache>, id: TableId) -> Arc<TableFile> {
        let entries = entries_of(id.number);
        let meta = FileMeta {
            number: id.number,
            size_bytes: id.size_bytes,
            entries: id.entries,
            smallest: entries[0].0.clone(),
            largest: entries[entries.len() - 1].0.clone(),
            oldest_blob: 0,
            largest_sequence: 0,
        };
        TableFile::new(meta, Arc::clone(cache), table_path(dir, id.number), RealFs::shared())
    }

    #[test]
    fn an_obsolete_table_is_deleted_after_its_last_reader_and_never_reopened() {
        // A cursor may outlive the version that named its table; the file must outlive the cursor, no more.
        let dir = tempfile::tempdir().expect("temp dir");
        let ids = write_tables(dir.path());
        let cache = cache_over(dir.path());
        let id = ids[0];
        let file = table_file(dir.path(), &cache, id);
        let mut cursor = file.table.iter();
        assert_eq!(cache.stats().opens, 0, "making a cursor opens nothing");
        file.mark_obsolete();
        drop(file);
        // Churn the cache so the table is evicted while only the cursor refers to it.
        for &other in &ids[1..] {
            cache.table(other).expect("open");
        }
        let path = table_path(dir.path(), id.number);
        assert!(path.exists(), "the cursor still needs the file");
        cursor.seek_to_first().expect("seek");
        let mut read = Vec::new();
        while cursor.valid() {
            read.push((cursor.key().to_vec(), cursor.value().to_vec()));
            cursor.next().expect("next");
        }
        assert_eq!(read, entries_of(id.number));
        let opens = cache.stats().opens;
        drop(cursor);
        assert!(!path.exists(), "an obsolete table is deleted with its last reader");
        assert_eq!(cache.stats().opens, opens, "deleting opens nothing");
        let cached = cache.tables.get(&id.number);
        assert!(cached.is_none(), "a deleted table must not stay in the cache");
    }

    /// Places `file` alone in a version at `level`, looks up its entry 3
    /// there, and returns the bytes the table cache reports it pins.
    fn pinned_after_lookup_at(cache: &TableCache, file: &Arc<TableFile>, level: usize) -> usize {
        let (k, v) = &entries_of(file.meta.number)[3];
        let mut version = crate::version::Version::default();
        version.levels[level].push(Arc::clone(file));
        file.table.place_at_level(level);
        let expected = Some(crate::memtable::Lookup::Found(bytes::Bytes::copy_from_slice(v)));
        assert_eq!(version.get(key::user_key(k), SEQUENCE_MAX).expect("get"), expected);
        cache.pinned_bytes(file.meta.number)
    }

    #[test]
    fn format3_tables_pin_what_l0_lookups_read_and_keep_their_top_level_index() {
        // Format 3 in L0 pins the page and partition a lookup reads; deeper, only the top-level index stays.
        let dir = tempfile::tempdir().expect("temp dir");
        let ids = write_tables(dir.path());
        let cache = cache_over(dir.path());
        let file = table_file(dir.path(), &cache, ids[0]);
        let at_level0 = pinned_after_lookup_at(&cache, &file, 0);
        let at_level1 = pinned_after_lookup_at(&cache, &file, 1);
        assert!(at_level1 > 0, "the top-level index is counted");
        assert!(at_level0 > at_level1, "an L0 lookup pins its page and partition");
    }

    #[test]
    fn level0_tables_pin_their_index_and_filter_and_others_do_not() {
        // Format 2: L0 lookups skip two cache lookups; a table leaving L0 gives the pinned memory back.
        let dir = tempfile::tempdir().expect("temp dir");
        let format2 = TableOptions {
            format_version: FORMAT_VERSION_SINGLE_INDEX,
            ..default_options()
        };
        let ids = write_tables_with(dir.path(), format2);
        let cache = cache_over(dir.path());
        let id = ids[0];
        let file = table_file(dir.path(), &cache, id);
        let (k, v) = &entries_of(id.number)[3];
        let user = key::user_key(k);
        let expected = Some(crate::memtable::Lookup::Found(bytes::Bytes::copy_from_slice(v)));

        let mut level0 = crate::version::Version::default();
        level0.levels[0].push(Arc::clone(&file));
        file.table.place_at_level(0);
        assert_eq!(level0.get(user, SEQUENCE_MAX).expect("get"), expected);
        let pinned = cache.pinned_bytes(id.number);
        assert!(pinned > 0, "an L0 lookup pins the index and filter");

        let mut level1 = crate::version::Version::default();
        level1.levels[1].push(Arc::clone(&file));
        file.table.place_at_level(1);
        assert_eq!(cache.pinned_bytes(id.number), 0, "leaving L0 unpins");
        assert_eq!(level1.get(user, SEQUENCE_MAX).expect("get"), expected);
        assert_eq!(
            cache.pinned_bytes(id.number),
            0,
            "deeper lookups go through the block cache"
        );
    }

    #[test]
    fn a_table_that_disagrees_with_the_manifest_is_refused() {
        // Opening checks size and entry count against the manifest, so a swapped file is caught.
        let dir = tempfile::tempdir().expect("temp dir");
        let ids = write_tables(dir.path());
        let cache = cache_over(dir.path());
        let wrong_size = TableId {
            size_bytes: ids[0].size_bytes + 1,
            ..ids[0]
        };
        let error = cache.table(wrong_size).expect_err("size mismatch");
        assert!(error.is_corruption(), "{error:?}");
        let wrong_entries = TableId {
            entries: ids[0].entries + 1,
            ..ids[0]
        };
        let error = cache.table(wrong_entries).expect_err("entry count mismatch");
        assert!(error.is_corruption(), "{error:?}");
        assert_eq!(cache.stats().open_files, 0, "a refused table is closed");
        cache.table(ids[0]).expect("the right description opens");
    }
}
