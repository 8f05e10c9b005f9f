//! The database: opening and recovery, reads, snapshots, and the handles
//! that tie the write path and the background threads together.

use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};

use crate::batch::{DecodedBatch, WriteBatch};
use crate::cache::BlockCache;
use crate::db_iter::DbIter;
use crate::error::{Error, Result};
use crate::io::{self, FileSystem};
use crate::iterator::InternalIterator;
use crate::key::SequenceNumber;
use crate::log::{read_log, LogKind, LogWriter};
use crate::manifest::{self, VersionSet, CURRENT_FILE};
use crate::memtable::{Lookup, Memtable};
use crate::merge::{LevelIterator, MergingIterator};
use crate::options::{Options, WriteOptions};
use crate::sstable::TableOptions;
use crate::stats::{Counters, LevelStats, Stats};
use crate::table_cache::TableCache;
use crate::version::{TableFile, Version};
use crate::write::{WriteQueue, WriterState};

/// The file whose lock keeps two processes from opening one database.
const LOCK_FILE: &str = "LOCK";

/// Whether a file of a database or checkpoint directory named `name` is
/// never changed once written (tables and blob files): a copy of a
/// checkpoint may hard-link it instead of copying its bytes.
pub fn is_immutable_file(name: &str) -> bool {
    name.ends_with(".sst") || name.ends_with(".blob")
}

/// The name of WAL file `number`.
pub(crate) fn wal_name(number: u64) -> String {
    format!("{number:06}.wal")
}

/// What readers need to read consistently: the memtables and the files.
#[derive(Debug)]
pub(crate) struct SuperVersion {
    pub mem: Arc<Memtable>,
    /// Frozen memtables, newest first.
    pub imms: Vec<Arc<Memtable>>,
    pub version: Arc<Version>,
}

/// Background work bookkeeping, guarded by one mutex.
#[derive(Debug, Default)]
pub(crate) struct BgState {
    pub shutting_down: bool,
    /// The first background failure; writes are refused once it is set.
    pub error: Option<String>,
    /// Whether a flush or compaction may have created compaction work.
    pub compaction_wanted: bool,
    /// Files owned by running compactions.
    pub busy_files: std::collections::HashSet<u64>,
    /// Per level, the largest user key compacted last (round-robin cursor).
    pub cursors: [Vec<u8>; crate::options::LEVELS],
}

/// Shared state of one open database.
pub(crate) struct Inner {
    pub dir: PathBuf,
    pub options: Options,
    pub table_options: TableOptions,
    pub cache: Arc<BlockCache>,
    pub table_cache: Arc<TableCache>,
    /// Blob files open for reads (shared with the version set).
    pub blob_readers: Arc<crate::blob::BlobReaders>,
    pub versions: Mutex<VersionSet>,
    pub state: RwLock<Arc<SuperVersion>>,
    /// The newest sequence number readers may see.
    pub visible_sequence: AtomicU64,
    pub writer: Mutex<WriterState>,
    pub queue: Mutex<WriteQueue>,
    pub bg: Mutex<BgState>,
    /// Signalled when background threads may have work.
    pub bg_work: Condvar,
    /// Signalled when a flush or compaction finished (stalled writers wait).
    pub bg_done: Condvar,
    pub snapshots: Mutex<BTreeMap<SequenceNumber, usize>>,
    /// Metadata of the newest batch written that carried some.
    pub latest_metadata: Mutex<Option<Bytes>>,
    pub counters: Counters,
    /// Compaction debt in bytes as of the newest version (see
    /// `picker::pending_compaction_bytes`), for the write controller.
    pub pending_compaction_bytes: AtomicU64,
    /// The rate writes are paced to now, in bytes per second (0: unpaced).
    pub delayed_write_bytes_per_sec: AtomicU64,
    /// The WAL (number and writer) the next memtable rotation will use,
    /// created ahead by the flush thread.
    pub spare_wal: Mutex<Option<(u64, LogWriter)>>,
    /// Bounds the bytes per second compactions merge, if configured.
    pub compaction_limiter: Option<Arc<crate::compaction::rate_limiter::RateLimiter>>,
    pub stopping: AtomicBool,
    _lock: io::FileLock,
}

/// An open database. Cheap to clone: clones share one engine, and the
/// background threads stop when the last clone is dropped.
#[derive(Clone)]
pub struct Db {
    pub(crate) inner: Arc<Inner>,
    _threads: Arc<BackgroundThreads>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

struct BackgroundThreads {
    inner: Arc<Inner>,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for BackgroundThreads {
    fn drop(&mut self) {
        self.inner.stopping.store(true, Ordering::Release);
        self.inner.bg.lock().shutting_down = true;
        self.inner.bg_work.notify_all();
        self.inner.bg_done.notify_all();
        for handle in self.handles.lock().drain(..) {
            if handle.join().is_err() {
                tracing::error!("a background thread panicked");
            }
        }
    }
}

impl Db {
    /// Opens (or creates) the database in `dir`, replaying its WAL. The
    /// replayed writes are readable at once and are written to an L0 table
    /// by the flush thread right after (the WALs go once that is durable).
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Db> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let fs = Arc::clone(&options.fs);
        if options.create_if_missing {
            // Durably: a new directory whose parent is not synced can vanish
            // in a power cut with all the synced writes inside it. Found by
            // the simulated-disk crash test (`tests/sim_crash.rs`).
            io::create_dir_all(&*fs, &dir)?;
        }
        let lock = io::lock(&*fs, &dir, &dir.join(LOCK_FILE))?;
        let cache = Arc::new(BlockCache::new(options.block_cache_bytes));
        let table_cache = Arc::new(TableCache::new(
            Arc::clone(&fs),
            &dir,
            Arc::clone(&cache),
            options.table_files_open_max,
        )?);
        let mut versions = if io::exists(&*fs, &dir.join(CURRENT_FILE))? {
            VersionSet::recover(Arc::clone(&fs), &dir, Arc::clone(&table_cache))?
        } else if options.create_if_missing {
            VersionSet::create(Arc::clone(&fs), &dir, Arc::clone(&table_cache))?
        } else {
            return Err(Error::InvalidArgument(format!("{} holds no database", dir.display())));
        };

        let wal_number = versions.new_file_number();
        // The WALs' writes go into a memtable of their own that starts out
        // frozen, so the flush thread writes it to L0 right after opening
        // (as RocksDB flushes recovered memtables): reads after a restart
        // then search tables with bloom filters instead of a large skip
        // list, and the replayed WALs are deleted once it is flushed. It is
        // numbered by the oldest WAL it may hold writes of; only its order
        // before the new memtable's WAL matters (flush and `Db::flush`).
        let recovered = Arc::new(Memtable::new(versions.log_number, options.memtable_bytes_max));
        let replayed = replay_wals(&*fs, &dir, versions.log_number, &recovered)?;
        assert!(
            versions.log_number < wal_number,
            "the new WAL is numbered after every WAL replayed"
        );
        let mem = Arc::new(Memtable::new(wal_number, options.memtable_bytes_max));
        let imms = if recovered.is_empty() {
            Vec::new()
        } else {
            vec![recovered]
        };
        let last_sequence = versions.last_sequence.max(replayed.last_sequence);
        // The new WAL exists before old files are swept, and the replayed
        // WALs stay until the memtable holding their writes is flushed.
        let wal = LogWriter::create(&*fs, &dir.join(wal_name(wal_number)), LogKind::Wal)?;
        io::sync_dir(&*fs, &dir)?;
        remove_obsolete_files(&*fs, &dir, &versions)?;

        let latest_metadata = replayed.metadata.or_else(|| versions.metadata.clone());
        let version = versions.current();
        let pending_compaction_bytes = crate::background::pending_compaction_bytes(&options, &version);
        let inner = Arc::new(Inner {
            table_options: TableOptions::from(&options),
            dir,
            cache,
            table_cache,
            blob_readers: versions.blob_readers(),
            versions: Mutex::new(versions),
            state: RwLock::new(Arc::new(SuperVersion { mem, imms, version })),
            visible_sequence: AtomicU64::new(last_sequence),
            writer: Mutex::new(WriterState::new(wal, wal_number, last_sequence)),
            queue: Mutex::new(WriteQueue::default()),
            bg: Mutex::new(BgState {
                compaction_wanted: true,
                ..BgState::default()
            }),
            bg_work: Condvar::new(),
            bg_done: Condvar::new(),
            snapshots: Mutex::new(BTreeMap::new()),
            latest_metadata: Mutex::new(latest_metadata),
            counters: Counters::default(),
            pending_compaction_bytes: AtomicU64::new(pending_compaction_bytes),
            delayed_write_bytes_per_sec: AtomicU64::new(0),
            spare_wal: Mutex::new(None),
            compaction_limiter: (options.compaction_bytes_per_sec > 0).then(|| {
                Arc::new(crate::compaction::rate_limiter::RateLimiter::new(
                    options.compaction_bytes_per_sec,
                ))
            }),
            stopping: AtomicBool::new(false),
            options,
            _lock: lock,
        });
        let handles = crate::background::spawn(&inner)?;
        Ok(Db {
            _threads: Arc::new(BackgroundThreads {
                inner: Arc::clone(&inner),
                handles: Mutex::new(handles),
            }),
            inner,
        })
    }

    /// The value of `key`, or `None` if it is absent or deleted.
    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.inner.get(key, None)
    }

    /// Sets `key` to `value` (no fsync; see [`write`](Self::write)).
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let mut batch = WriteBatch::new();
        batch.put(key, value);
        self.write(batch, &WriteOptions::default())
    }

    /// Deletes `key` (no fsync; see [`write`](Self::write)).
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<()> {
        let mut batch = WriteBatch::new();
        batch.delete(key);
        self.write(batch, &WriteOptions::default())
    }

    /// Applies `batch` atomically. Concurrent callers are committed together:
    /// one WAL append and at most one fsync for the whole group.
    pub fn write(&self, batch: WriteBatch, options: &WriteOptions) -> Result<()> {
        crate::write::write(&self.inner, batch, *options)
    }

    /// Whether a write of about `bytes` would wait if made now: another
    /// writer holds the write path, the active memtable has no room for it
    /// (freezing it syncs the WAL and may stall), or compaction is far
    /// enough behind that writers are slowed or stopped. A caller that must
    /// not block (an async task) writes at once when this is `false` — a
    /// WAL-less write is then a memtable insert and nothing else — and hands
    /// the write to a thread that may block otherwise. A hint: the state can
    /// change before the write, so a write after `false` can still wait
    /// briefly (another writer arriving in between).
    pub fn write_may_wait(&self, bytes: usize) -> bool {
        crate::write::may_wait(&self.inner, bytes)
    }

    /// The pairs with keys in `range`, in key order, as of now.
    pub fn scan<'k>(&self, range: impl RangeBounds<&'k [u8]>) -> Result<DbIter> {
        self.inner.scan(range, None)
    }

    /// A consistent point-in-time view for repeatable reads. While it lives,
    /// compaction keeps the versions it can see.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshots = self.inner.snapshots.lock();
        // Taken under the lock so compaction never computes its oldest
        // snapshot between the load and the registration.
        let sequence = self.inner.visible_sequence.load(Ordering::Acquire);
        *snapshots.entry(sequence).or_insert(0) += 1;
        Snapshot {
            inner: Arc::clone(&self.inner),
            sequence,
        }
    }

    /// Flushes the memtable to a table file and waits until it is durable.
    pub fn flush(&self) -> Result<()> {
        crate::write::flush(&self.inner)
    }

    /// Flushes, then compacts the files holding keys in `range` of every
    /// level down into the next until they sit in the deepest level that
    /// holds data, dropping dead versions. Only files with keys in `range`
    /// (and, in L0, older files they overlap) and the files below that they
    /// overlap are rewritten or waited for; `compact_range(..)` compacts
    /// everything.
    pub fn compact_range<'k>(&self, range: impl RangeBounds<&'k [u8]>) -> Result<()> {
        let owned = |bound: Bound<&&[u8]>| match bound {
            Bound::Included(k) => Bound::Included(k.to_vec()),
            Bound::Excluded(k) => Bound::Excluded(k.to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let bounds = crate::compaction::picker::KeyBounds {
            start: owned(range.start_bound()),
            end: owned(range.end_bound()),
        };
        self.flush()?;
        crate::background::compact_range(&self.inner, &bounds)
    }

    /// Writes a consistent copy of the database into the new directory
    /// `target` (hard links to the immutable table files plus a fresh
    /// manifest). Opening `target` gives the state as of this call, minus
    /// nothing: the memtable is flushed first. Returns the checkpoint's
    /// metadata (see [`flushed_metadata`](Self::flushed_metadata)), which
    /// describes exactly the state it holds.
    pub fn checkpoint(&self, target: impl AsRef<Path>) -> Result<Option<Bytes>> {
        self.flush()?;
        let target = target.as_ref();
        let fs = &*self.inner.options.fs;
        if io::exists(fs, target)? {
            return Err(Error::InvalidArgument(format!(
                "checkpoint target {} already exists",
                target.display()
            )));
        }
        io::create_dir_all(fs, target)?;
        let versions = self.inner.versions.lock();
        manifest::write_checkpoint(&versions, target)?;
        Ok(versions.metadata.clone())
    }

    /// Metadata of the newest batch written that carried some (see
    /// [`WriteBatch::set_metadata`]). After a reopen: the newest that survived.
    pub fn metadata(&self) -> Option<Bytes> {
        self.inner.latest_metadata.lock().clone()
    }

    /// Metadata of the newest batch that is in table files, so it survives a
    /// crash even when it was written with `disable_wal`.
    pub fn flushed_metadata(&self) -> Option<Bytes> {
        self.inner.versions.lock().metadata.clone()
    }

    /// A report of the engine's shape and counters.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.inner.dir
    }

    /// The disk the database lives on ([`Options::fs`]): files kept next
    /// to it (checkpoints, snapshots) belong on the same disk.
    pub fn fs(&self) -> Arc<dyn FileSystem> {
        Arc::clone(&self.inner.options.fs)
    }
}

/// A point-in-time view of the database. Dropping it lets compaction reclaim
/// the versions only it could see.
pub struct Snapshot {
    inner: Arc<Inner>,
    sequence: SequenceNumber,
}

impl Snapshot {
    /// The value of `key` as of the snapshot.
    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.inner.get(key, Some(self.sequence))
    }

    /// The pairs with keys in `range` as of the snapshot.
    pub fn scan<'k>(&self, range: impl RangeBounds<&'k [u8]>) -> Result<DbIter> {
        self.inner.scan(range, Some(self.sequence))
    }

    /// The sequence number the snapshot reads at.
    pub fn sequence(&self) -> SequenceNumber {
        self.sequence
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let mut snapshots = self.inner.snapshots.lock();
        if let Some(count) = snapshots.get_mut(&self.sequence) {
            *count -= 1;
            if *count == 0 {
                snapshots.remove(&self.sequence);
            }
        }
    }
}

impl Inner {
    pub(crate) fn super_version(&self) -> Arc<SuperVersion> {
        Arc::clone(&self.state.read())
    }

    /// The SuperVersion to read, and the sequence to read it at: a
    /// registered snapshot's, or (`None`) the newest visible one, loaded
    /// only after the SuperVersion is taken. The other order loses data:
    /// a compaction between the load and the take, not knowing the reader,
    /// may drop the version of a key the loaded sequence should see (it is
    /// shadowed by a newer one the reader cannot see).
    fn read_view(&self, snapshot: Option<SequenceNumber>) -> (Arc<SuperVersion>, SequenceNumber) {
        let sv = self.super_version();
        #[cfg(test)]
        tests::between_view_loads();
        let sequence = snapshot.unwrap_or_else(|| self.visible_sequence.load(Ordering::Acquire));
        (sv, sequence)
    }

    fn get(&self, key: &[u8], snapshot: Option<SequenceNumber>) -> Result<Option<Bytes>> {
        let (sv, snapshot) = self.read_view(snapshot);
        let found = std::iter::once(&sv.mem)
            .chain(&sv.imms)
            .find_map(|table| table.get(key, snapshot));
        let found = match found {
            Some(found) => Some(found),
            None => sv.version.get(key, snapshot)?,
        };
        Ok(match found {
            Some(Lookup::Found(value)) => Some(value),
            Some(Lookup::Blob(pointer)) => Some(sv.version.read_blob(&pointer)?),
            Some(Lookup::Deleted) | None => None,
        })
    }

    fn scan<'k>(&self, range: impl RangeBounds<&'k [u8]>, snapshot: Option<SequenceNumber>) -> Result<DbIter> {
        let (sv, snapshot) = self.read_view(snapshot);
        let mut children: Vec<Box<dyn InternalIterator>> = Vec::new();
        children.push(Box::new(sv.mem.iter()));
        for imm in &sv.imms {
            children.push(Box::new(imm.iter()));
        }
        let (start, end) = (range.start_bound(), range.end_bound());
        // Only files that may hold a key of the range take part: a scan of
        // a narrow range does not seek into every L0 table.
        let in_range = |file: &TableFile| {
            let after_start = match start {
                Bound::Included(s) | Bound::Excluded(s) => file.meta.largest_user_key() >= *s,
                Bound::Unbounded => true,
            };
            let before_end = match end {
                Bound::Included(e) => file.meta.smallest_user_key() <= *e,
                Bound::Excluded(e) => file.meta.smallest_user_key() < *e,
                Bound::Unbounded => true,
            };
            after_start && before_end
        };
        for file in sv.version.levels[0].iter().filter(|f| in_range(f)) {
            children.push(Box::new(file.table.iter()));
        }
        for files in &sv.version.levels[1..] {
            let files: Vec<_> = files.iter().filter(|f| in_range(f)).cloned().collect();
            if !files.is_empty() {
                children.push(Box::new(LevelIterator::new(files)));
            }
        }
        let owned = |bound: Bound<&&[u8]>| match bound {
            Bound::Included(k) => Bound::Included(k.to_vec()),
            Bound::Excluded(k) => Bound::Excluded(k.to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        Ok(DbIter::new(
            MergingIterator::new(children),
            Arc::clone(&sv.version),
            snapshot,
            owned(start),
            owned(end),
        ))
    }

    /// The oldest sequence any reader may read at.
    pub(crate) fn smallest_snapshot(&self) -> SequenceNumber {
        let snapshots = self.snapshots.lock();
        let visible = self.visible_sequence.load(Ordering::Acquire);
        snapshots.keys().next().copied().unwrap_or(visible).min(visible)
    }

    fn stats(&self) -> Stats {
        let sv = self.super_version();
        let c = &self.counters;
        let table_cache = self.table_cache.stats();
        Stats {
            levels: sv
                .version
                .levels
                .iter()
                .enumerate()
                .map(|(level, files)| LevelStats {
                    files: files.len() as u64,
                    bytes: files.iter().map(|f| f.meta.size_bytes).sum(),
                    bytes_read_from_above: Counters::get(&c.level_bytes_read_from_above[level]),
                    bytes_read_from_level: Counters::get(&c.level_bytes_read_from_level[level]),
                    bytes_written: Counters::get(&c.level_bytes_written[level]),
                })
                .collect(),
            memtable_bytes: sv.mem.approximate_bytes() as u64,
            immutable_memtables: sv.imms.len() as u64,
            immutable_memtable_bytes: sv.imms.iter().map(|m| m.approximate_bytes() as u64).sum(),
            last_sequence: self.visible_sequence.load(Ordering::Acquire),
            write_stalls: Counters::get(&c.write_stalls),
            write_stall_micros: Counters::get(&c.write_stall_micros),
            write_slowdowns: Counters::get(&c.write_slowdowns),
            write_slowdown_micros: Counters::get(&c.write_slowdown_micros),
            delayed_write_bytes_per_sec: self.delayed_write_bytes_per_sec.load(Ordering::Relaxed),
            pending_compaction_bytes: self.pending_compaction_bytes.load(Ordering::Relaxed),
            write_groups: Counters::get(&c.write_groups),
            write_batches: Counters::get(&c.write_batches),
            wal_syncs: Counters::get(&c.wal_syncs),
            flushes: Counters::get(&c.flushes),
            compactions: Counters::get(&c.compactions),
            compaction_bytes_written: Counters::get(&c.compaction_bytes_written),
            subcompactions: Counters::get(&c.subcompactions),
            intra_l0_compactions: Counters::get(&c.intra_l0_compactions),
            block_cache_hits: self.cache.hits(),
            block_cache_misses: self.cache.misses(),
            block_cache_bytes: self.cache.used_bytes(),
            table_memory_bytes: sv
                .version
                .levels
                .iter()
                .flatten()
                .map(|f| self.table_cache.pinned_bytes(f.meta.number) as u64)
                .sum(),
            table_cache_tables: table_cache.cached_tables,
            table_files_open: table_cache.open_files,
            table_opens: table_cache.opens,
            blob_files: sv.version.blobs.len() as u64,
            blob_file_bytes: sv.version.blobs.values().map(|b| b.file.meta.file_bytes).sum(),
            blob_value_bytes: sv.version.blobs.values().map(|b| b.file.meta.value_bytes).sum(),
            blob_garbage_bytes: sv.version.blobs.values().map(|b| b.garbage.bytes).sum(),
            blob_bytes_written: Counters::get(&c.blob_bytes_written),
            blob_files_open: self.blob_readers.open_files() as u64,
        }
    }
}

struct Replayed {
    last_sequence: SequenceNumber,
    metadata: Option<Bytes>,
}

/// Replays every WAL numbered `log_number` or above into `mem`, oldest first.
fn replay_wals(fs: &dyn FileSystem, dir: &Path, log_number: u64, mem: &Memtable) -> Result<Replayed> {
    let mut numbers: Vec<u64> = io::list_dir(fs, dir)?
        .iter()
        .filter_map(|name| name.strip_suffix(".wal")?.parse().ok())
        .filter(|&n| n >= log_number)
        .collect();
    numbers.sort_unstable();
    let mut replayed = Replayed {
        last_sequence: 0,
        metadata: None,
    };
    let mut logs = Vec::with_capacity(numbers.len());
    for number in numbers {
        let path = dir.join(wal_name(number));
        let contents = read_log(fs, &path, LogKind::Wal)?;
        logs.push((path, contents));
    }
    // Only the last WAL that holds records can end torn: a WAL is synced
    // whole before writes move to the next one (see `write::rotate`), and
    // newer WALs without a record (created just before a failed sync or a
    // crash) do not count. A torn end in an earlier WAL is damage, and
    // dropping it with everything after would silently lose synced writes.
    let last_with_records = logs
        .iter()
        .rposition(|(_, contents)| contents.records().next().is_some());
    for (position, (path, contents)) in logs.iter().enumerate() {
        // A WAL whose header never reached the disk held nothing: the header
        // is synced when the file is created, before any record is written.
        let has_header = contents.valid_bytes >= crate::framing::FILE_HEADER_BYTES as u64;
        if contents.torn_tail && has_header && last_with_records.is_some_and(|last| position < last) {
            return Err(Error::corruption(
                path,
                contents.valid_bytes,
                "a record of a WAL that a newer WAL with records follows is cut or damaged \
                 (only the newest WAL may end torn)",
            ));
        }
    }
    for (path, contents) in &logs {
        let path = path.as_path();
        if contents.zero_tail {
            tracing::debug!(path = %path.display(), valid_bytes = contents.valid_bytes, "cut the zeros after the last WAL record");
        } else if contents.torn_tail {
            tracing::warn!(path = %path.display(), valid_bytes = contents.valid_bytes, "dropped a torn WAL tail");
        }
        if contents.torn_tail {
            // Cut the torn bytes off for good before this open creates a
            // newer WAL: from then on this one is no longer the newest, and
            // a torn record in it would read as damage at the next open.
            if contents.valid_bytes < crate::framing::FILE_HEADER_BYTES as u64 {
                // Never used: removed, with its directory entry.
                fs.remove_file(path)
                    .map_err(|e| Error::io("remove an unused WAL", path, e))?;
                io::sync_dir(fs, dir)?;
                continue;
            }
            let file = fs
                .open_writable(path)
                .map_err(|e| Error::io("open for truncating", path, e))?;
            file.set_len(contents.valid_bytes)
                .and_then(|()| file.sync_data())
                .map_err(|e| Error::io("truncate a torn tail", path, e))?;
        }
        for (index, record) in contents.records().enumerate() {
            let batch = DecodedBatch::decode(record)
                .ok_or_else(|| Error::corruption(path, 0, format!("WAL record {index} is not a valid batch")))?;
            mem.insert(batch.entries(), batch.first_sequence, batch.metadata);
            let last = batch.first_sequence + u64::from(batch.count);
            replayed.last_sequence = replayed.last_sequence.max(last.saturating_sub(1));
            if let Some(metadata) = batch.metadata {
                replayed.metadata = Some(Bytes::copy_from_slice(metadata));
            }
        }
    }
    Ok(replayed)
}

/// Deletes what the manifest no longer needs: tables it does not name, WALs
/// below its log number, other manifests, temp files left by a crash.
fn remove_obsolete_files(fs: &dyn FileSystem, dir: &Path, versions: &VersionSet) -> Result<()> {
    let version = versions.current();
    let live: std::collections::HashSet<u64> = version.files().map(|(_, f)| f.meta.number).collect();
    let current_manifest = manifest::manifest_name(versions.manifest_number());
    for name in io::list_dir(fs, dir)? {
        let obsolete = if let Some(stem) = name.strip_suffix(".sst") {
            stem.parse::<u64>().is_ok_and(|n| !live.contains(&n))
        } else if let Some(stem) = name.strip_suffix(".blob") {
            // Written by a flush or compaction that a crash cut short, or
            // all garbage and dropped just before the crash.
            stem.parse::<u64>().is_ok_and(|n| !version.blobs.contains_key(&n))
        } else if let Some(stem) = name.strip_suffix(".wal") {
            stem.parse::<u64>().is_ok_and(|n| n < versions.log_number)
        } else if name.starts_with("MANIFEST-") {
            name != current_manifest
        } else {
            name.ends_with(".tmp")
        };
        if obsolete {
            io::remove_if_exists(fs, &dir.join(&name))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::framing;
    use crate::io::RealFs;

    thread_local! {
        /// Run once by this thread's next read, between the two loads of
        /// its read view.
        static BETWEEN_VIEW_LOADS: RefCell<Option<Box<dyn FnOnce()>>> = RefCell::new(None);
    }

    /// The hook `Inner::read_view` calls between its two loads.
    pub(super) fn between_view_loads() {
        if let Some(hook) = BETWEEN_VIEW_LOADS.with(|hook| hook.borrow_mut().take()) {
            hook();
        }
    }

    #[test]
    fn a_read_sees_a_version_a_compaction_between_its_two_loads_drops() {
        // A reader that loaded its sequence before its SuperVersion could
        // meet a compaction in between that dropped the version the
        // sequence should see (shadowed by a newer write the reader cannot
        // see) and read nothing at all. The SuperVersion comes first: its
        // files keep that version, and the sequence loaded after it sees
        // everything in them.
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(Db::open(dir.path(), Options::default()).expect("open"));
        db.put("k", "old").expect("put");
        db.flush().expect("flush");
        let writer = Arc::clone(&db);
        BETWEEN_VIEW_LOADS.with(|hook| {
            *hook.borrow_mut() = Some(Box::new(move || {
                writer.put("k", "new").expect("put");
                writer.flush().expect("flush");
                writer.compact_range(..).expect("compact");
            }));
        });
        let seen = db.get(b"k").expect("get");
        assert!(
            matches!(seen.as_deref(), Some(b"old" | b"new")),
            "a key written before the read was missing: {seen:?}"
        );
        assert_eq!(db.get(b"k").expect("get").as_deref(), Some(&b"new"[..]));
    }

    /// A database whose directory holds two WALs past the manifest's log
    /// number, each with one synced batch, as after a memtable rotation and
    /// a crash before the flush. Returns the older WAL's path.
    fn two_wals(dir: &Path) -> PathBuf {
        drop(Db::open(dir, Options::default()).expect("create"));
        let mut numbers: Vec<u64> = std::fs::read_dir(dir)
            .expect("list")
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".wal")?.parse().ok())
            .collect();
        numbers.sort_unstable();
        let older = *numbers.last().expect("the database's WAL");
        let write = |number: u64, key: &str, sequence: u64| {
            let path = dir.join(wal_name(number));
            // The database's own WAL is empty: written anew with one batch.
            let _ = std::fs::remove_file(&path);
            let mut writer = LogWriter::create(&RealFs, &path, LogKind::Wal).expect("create");
            let mut batch = WriteBatch::new();
            batch.put(key, "v");
            let mut record = Vec::new();
            batch.encode_into(&mut record, sequence);
            writer.add_record(&record).expect("append");
            writer.sync().expect("sync");
        };
        write(older, "older", 1);
        write(older + 1000, "newer", 2);
        dir.join(wal_name(older))
    }

    #[test]
    fn a_damaged_record_in_a_wal_that_a_newer_one_follows_is_corruption_not_a_torn_tail() {
        // A length field flipped to run past the end used to drop that WAL's
        // synced writes silently while the newer WAL replayed on top.
        let dir = tempfile::tempdir().expect("tempdir");
        let older = two_wals(dir.path());
        let mut bytes = std::fs::read(&older).expect("read");
        let length_at = framing::FILE_HEADER_BYTES + 4;
        // Three bits set: the record now claims ~450 KiB, past the file's
        // end but under the limit, and no length one or two bits away
        // checks, so the file alone reads as torn.
        bytes[length_at + 2] = 0x07;
        std::fs::write(&older, &bytes).expect("write");
        let Err(error) = Db::open(dir.path(), Options::default()) else {
            panic!("a damaged older WAL opened");
        };
        assert!(
            error.to_string().contains("only the newest WAL may end torn"),
            "{error}"
        );
    }

    #[test]
    fn the_newest_wal_may_still_end_torn() {
        // A crash mid-append leaves the newest WAL cut: that tail was never acknowledged.
        let dir = tempfile::tempdir().expect("tempdir");
        let older = two_wals(dir.path());
        let number: u64 = older
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse().ok())
            .expect("number");
        let newest = dir.path().join(wal_name(number + 1000));
        let bytes = std::fs::read(&newest).expect("read");
        std::fs::write(&newest, &bytes[..bytes.len() - 3]).expect("cut");
        let db = Db::open(dir.path(), Options::default()).expect("a torn newest WAL opens");
        assert_eq!(db.get(b"older").expect("get").as_deref(), Some(&b"v"[..]));
        assert_eq!(db.get(b"newer").expect("get"), None, "the torn write is dropped");
    }
}
