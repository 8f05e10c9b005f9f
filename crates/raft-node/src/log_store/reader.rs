//! The log's index and memory window, and the cheap, cloneable reader
//! that serves entries from the window or, for older ones, from disk.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::{AnyError, OptionalSend, RaftLogReader, StorageIOError};
use parking_lot::RwLock;
use storage::io::File;

use super::error::LogStoreError;
use super::record::Record;
use super::segment::{check_record, segment_path};
use crate::types::{Entry, LogId, StorageError, TypeConfig};

/// Bytes read from a segment with one `pread` at most when serving old
/// entries (a single larger record is read whole). Bounds the buffer a
/// read of many small entries needs besides the entries themselves.
const READ_SPAN_BYTES_MAX: u64 = 4 << 20;
/// Times a read from disk is retried when a truncation or purge changed
/// the log under it (the segment it read from was cut meanwhile).
const READ_ATTEMPTS_MAX: u32 = 3;
/// Bytes of entries one `limited_get_log_entries` returns at most (one
/// entry is returned even if larger): what one append-entries message to a
/// lagging follower carries. Kept well under the transport's message limit
/// (`RAFT_MESSAGE_BYTES_MAX`, 64 MiB), which 1000 entries of batched
/// writes would otherwise overrun.
pub(crate) const REPLICATION_BATCH_BYTES_MAX: u64 = 8 << 20;
const _: () = assert!(REPLICATION_BATCH_BYTES_MAX < crate::network::RAFT_MESSAGE_BYTES_MAX as u64 / 2);

/// Where a live entry's record lies on disk, and which entry it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    /// The entry's log id (checked against the record read back).
    pub(crate) log_id: LogId,
    /// The segment holding its record.
    pub(crate) segment: u64,
    /// Byte offset of its record in that segment.
    pub(crate) offset: u64,
    /// Bytes of its record, the 8-byte header included.
    pub(crate) record_bytes: u64,
    /// Bytes of the records of every entry pushed since the store opened,
    /// up to and including this one: a running sum, so the bytes of any
    /// run of entries are one subtraction.
    pub(crate) bytes_through: u64,
}

/// Every live (appended, not purged, not truncated) entry: an index of
/// where each record lies, for all of them, and the entries themselves for
/// a window of the most recent ones, bounded in bytes.
///
/// Invariants: `index` is contiguous by log index; `window` holds the
/// entries of the last `window.len()` locations of `index`, and
/// `window_bytes` is the sum of their `record_bytes`, at most
/// `window_bytes_max` after every change.
#[derive(Debug)]
pub(crate) struct Log {
    dir: PathBuf,
    index: VecDeque<Location>,
    window: VecDeque<Entry>,
    window_bytes: u64,
    window_bytes_max: u64,
    /// Open handles on the segments that hold live entries, with their
    /// format version: a reader keeps reading a segment that a purge
    /// deletes under it (and, if the purge recycles it, finds the records
    /// there no longer name it, and plans again).
    files: BTreeMap<u64, (Arc<dyn File>, u32)>,
    /// Bumped by every truncation and purge, so a reader whose disk read
    /// failed can tell whether the log changed under it.
    generation: u64,
    /// Entries served from disk rather than the window, ever.
    entries_read_from_disk: AtomicU64,
}

impl Log {
    /// An empty log in `dir` keeping at most `window_bytes_max` bytes of
    /// entries in memory.
    pub(crate) fn new(dir: &Path, window_bytes_max: u64) -> Log {
        Log {
            dir: dir.to_path_buf(),
            index: VecDeque::new(),
            window: VecDeque::new(),
            window_bytes: 0,
            window_bytes_max,
            files: BTreeMap::new(),
            generation: 0,
            entries_read_from_disk: AtomicU64::new(0),
        }
    }

    /// The index of the first live entry.
    pub(crate) fn first_index(&self) -> Option<u64> {
        self.index.front().map(|l| l.log_id.index)
    }

    /// The log id of the last live entry.
    pub(crate) fn last_log_id(&self) -> Option<LogId> {
        self.index.back().map(|l| l.log_id)
    }

    /// Where the entry at `index` lies, if it is live.
    pub(crate) fn location(&self, index: u64) -> Option<&Location> {
        let first = self.first_index()?;
        let position = usize::try_from(index.checked_sub(first)?).ok()?;
        self.index.get(position)
    }

    /// The running byte sum the next pushed entry adds to.
    pub(crate) fn bytes_through_last(&self) -> u64 {
        self.index.back().map_or(0, |l| l.bytes_through)
    }

    /// Adds the next entry, kept in the window (which then sheds its
    /// oldest entries down to its bound).
    pub(crate) fn push(&mut self, location: Location, entry: Entry) {
        assert_eq!(location.log_id, entry.log_id, "an entry's location must name the entry");
        self.index_push(location);
        self.window.push_back(entry);
        self.window_bytes += location.record_bytes;
        self.shrink_window();
    }

    /// Adds the next entry without keeping it in memory (recovery, for
    /// entries older than the window). Only valid while the window is
    /// empty: the window holds the newest entries.
    pub(crate) fn push_location(&mut self, location: Location) {
        assert!(
            self.window.is_empty(),
            "an entry pushed without its body must be older than every entry in the window"
        );
        self.index_push(location);
    }

    /// Adds the next location to the index.
    fn index_push(&mut self, location: Location) {
        if let Some(last) = self.last_log_id() {
            assert_eq!(location.log_id.index, last.index + 1, "log entries must be contiguous");
        }
        self.index.push_back(location);
    }

    /// Registers the open handle of segment `seq`, of format `version`.
    pub(crate) fn add_file(&mut self, seq: u64, file: Arc<dyn File>, version: u32) {
        self.files.insert(seq, (file, version));
    }

    /// Forgets segment `seq` (deleted): readers that hold its handle still
    /// read it; later reads never need it.
    pub(crate) fn remove_file(&mut self, seq: u64) {
        self.files.remove(&seq);
    }

    /// Removes every entry at or after `index`.
    pub(crate) fn truncate_from(&mut self, index: u64) {
        let Some(first) = self.first_index() else { return };
        let keep = usize::try_from(index.saturating_sub(first)).unwrap_or(usize::MAX);
        while self.index.len() > keep {
            // The window is the index's suffix: the last entry is in it
            // whenever the window holds any.
            if self.window.pop_back().is_some() {
                self.window_bytes -= self.index.back().map_or(0, |l| l.record_bytes);
            }
            self.index.pop_back();
        }
        self.generation += 1;
    }

    /// Removes every entry at or before `index`.
    pub(crate) fn purge_upto(&mut self, index: u64) {
        while self.index.front().is_some_and(|l| l.log_id.index <= index) {
            if self.window.len() == self.index.len() {
                self.window.pop_front();
                self.window_bytes -= self.index.front().map_or(0, |l| l.record_bytes);
            }
            self.index.pop_front();
        }
        self.generation += 1;
    }

    /// Drops the oldest entries of the window until it fits its bound.
    /// Dropped entries stay readable from their segment: a record is
    /// readable through the file as soon as its `write` returned, before
    /// it is synced (the page cache serves it).
    fn shrink_window(&mut self) {
        while self.window_bytes > self.window_bytes_max {
            let oldest = self.index.len() - self.window.len();
            self.window_bytes -= self.index[oldest].record_bytes;
            self.window.pop_front();
        }
    }

    /// Bytes of the entries held in memory.
    pub(crate) fn window_bytes(&self) -> u64 {
        self.window_bytes
    }

    /// Entries held in memory.
    pub(crate) fn window_entries(&self) -> usize {
        self.window.len()
    }

    /// Entries served from disk so far.
    pub(crate) fn entries_read_from_disk(&self) -> u64 {
        self.entries_read_from_disk.load(Ordering::Relaxed)
    }

    /// Bytes of the records of the live entries with an index in
    /// `(after, through]` (`after` `None`: from the first live entry).
    pub(crate) fn bytes_between(&self, after: Option<u64>, through: u64) -> u64 {
        let (Some(first), Some(last)) = (self.first_index(), self.last_log_id()) else {
            return 0;
        };
        let start = after.map_or(first, |a| a.saturating_add(1).max(first));
        let end = through.min(last.index);
        let (Some(from), Some(to)) = (self.location(start), self.location(end)) else {
            return 0;
        };
        if start > end {
            return 0;
        }
        to.bytes_through - (from.bytes_through - from.record_bytes)
    }

    /// The end (exclusive) of the longest run of entries from `start`,
    /// below `end`, whose records hold at most `bytes_max` bytes; at least
    /// one entry if `start` is live and below `end`.
    fn end_within_bytes(&self, start: u64, end: u64, bytes_max: u64) -> u64 {
        let (Some(first), Some(last)) = (self.first_index(), self.last_log_id()) else {
            return end;
        };
        let start = start.max(first);
        let end = end.min(last.index + 1);
        let Some(from) = self.location(start).filter(|_| start < end) else {
            return end;
        };
        let base = from.bytes_through - from.record_bytes;
        // bytes_through grows with the index: the last entry within the
        // budget is found by bisection.
        let (mut lo, mut hi) = (start + 1, end); // answer in [lo, hi]
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            let fits = self
                .location(mid - 1)
                .is_some_and(|l| l.bytes_through - base <= bytes_max);
            if fits {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }

    /// What reading `[start, end)` takes: the entries older than the window
    /// to read from disk, then clones of those in it.
    fn plan(&self, start: u64, end: u64) -> ReadPlan {
        let mut plan = ReadPlan {
            dir: self.dir.clone(),
            generation: self.generation,
            disk: Vec::new(),
            memory: Vec::new(),
        };
        let Some(first) = self.first_index() else {
            return plan;
        };
        let len = self.index.len() as u64;
        let lo = start.max(first) - first;
        let hi = end.min(first + len).saturating_sub(first);
        if lo >= hi {
            return plan;
        }
        // lo < hi <= len, and len is a usize.
        let (lo, hi) = (lo as usize, hi as usize);
        let window_start = self.index.len() - self.window.len();
        for location in self.index.range(lo..hi.min(window_start.max(lo))) {
            let (file, version) = self.files.get(&location.segment).unwrap_or_else(|| {
                panic!(
                    "segment {} holds live entry {}, so the log must hold its handle",
                    location.segment, location.log_id.index
                )
            });
            plan.disk.push((Arc::clone(file), *version, *location));
        }
        let from = lo.max(window_start) - window_start;
        let to = hi - window_start.min(hi);
        if from < to {
            plan.memory.extend(self.window.range(from..to).cloned());
        }
        plan
    }
}

/// A read, planned under the lock and carried out without it.
struct ReadPlan {
    dir: PathBuf,
    generation: u64,
    /// Entries older than the window, in index order, with their segment
    /// and its format version.
    disk: Vec<(Arc<dyn File>, u32, Location)>,
    /// The entries from the window, which follow those on disk.
    memory: Vec<Entry>,
}

impl ReadPlan {
    /// Reads the planned entries from disk, checking every record's crc
    /// and log id, and appends the window's.
    fn execute(self) -> Result<Vec<Entry>, LogStoreError> {
        let mut entries = Vec::with_capacity(self.disk.len() + self.memory.len());
        let mut rest = &self.disk[..];
        while let Some(((file, version, head), _)) = rest.split_first() {
            // One pread covers a run of records in the same segment, up to
            // READ_SPAN_BYTES_MAX (the records of one append are adjacent;
            // a vote or committed record may sit between two appends).
            let run = rest
                .iter()
                .take_while(|(_, _, l)| {
                    l.segment == head.segment
                        && l.offset >= head.offset
                        && l.offset + l.record_bytes - head.offset <= READ_SPAN_BYTES_MAX.max(head.record_bytes)
                })
                .count();
            let (this, next) = rest.split_at(run);
            let last = this[run - 1].2;
            let span_bytes = last.offset + last.record_bytes - head.offset;
            let path = segment_path(&self.dir, head.segment);
            let span_len = usize::try_from(span_bytes)
                .map_err(|_| LogStoreError::corrupt(&path, head.offset, format!("span of {span_bytes} bytes")))?;
            let mut buf = vec![0u8; span_len];
            file.read_at(head.offset, &mut buf)
                .map_err(|e| LogStoreError::io("read", &path, e))?;
            for (_, _, location) in this {
                let at = (location.offset - head.offset) as usize; // within span_len
                let frame = &buf[at..at + location.record_bytes as usize];
                entries.push(decode_entry(&path, *version, location, frame)?);
            }
            rest = next;
        }
        entries.extend(self.memory);
        Ok(entries)
    }
}

/// The entry in `frame`, a record read back from where `location` says,
/// checked: its crc, its length and its log id must all agree with what
/// was indexed when it was written.
fn decode_entry(path: &Path, version: u32, location: &Location, frame: &[u8]) -> Result<Entry, LogStoreError> {
    let payload = check_record(path, location.segment, version, location.offset, frame)?;
    match Record::decode(payload) {
        Ok(Record::Entry(entry)) if entry.log_id == location.log_id => Ok(entry),
        Ok(Record::Entry(entry)) => Err(LogStoreError::corrupt(
            path,
            location.offset,
            format!(
                "record holds entry {} where the index has {}",
                entry.log_id, location.log_id
            ),
        )),
        Ok(_) => Err(LogStoreError::corrupt(
            path,
            location.offset,
            "the index points at a record that is not an entry",
        )),
        Err(reason) => Err(LogStoreError::corrupt(path, location.offset, reason)),
    }
}

/// A read handle on the log, shared with the store: entries are readable
/// through it as soon as `append` returns. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct LogReader {
    pub(crate) log: Arc<RwLock<Log>>,
    /// How long the store's fsyncs take.
    pub(crate) sync_times: Arc<super::sync::SyncTimes>,
}

impl LogReader {
    /// The durations of the store's fsyncs of segment files so far.
    pub fn sync_times(&self) -> &super::sync::SyncTimes {
        &self.sync_times
    }

    /// The live entries whose index lies in `range` (none for indexes that
    /// are purged or not yet appended), from memory or, for entries older
    /// than the window, from disk on the calling thread.
    ///
    /// Errors if a record read from disk fails its checks
    /// ([`LogStoreError::Corrupt`]) or cannot be read: never wrong data.
    pub fn entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry>, LogStoreError> {
        let (start, end) = bounds(&range);
        self.read(start, end)
    }

    /// Bytes of the records of the live entries with an index in
    /// `(after, through]` (`after` `None`: from the first live entry).
    /// What a snapshot at `through` would let the log shed.
    pub fn bytes_between(&self, after: Option<u64>, through: u64) -> u64 {
        self.log.read().bytes_between(after, through)
    }

    /// Bytes of the entries held in memory (their encoded records): at
    /// most the store's `memory_window_bytes_max`.
    pub fn window_bytes(&self) -> u64 {
        self.log.read().window_bytes()
    }

    /// Entries held in memory.
    pub fn window_entries(&self) -> usize {
        self.log.read().window_entries()
    }

    /// Entries read back from the segment files (older than the window)
    /// since the store opened.
    pub fn entries_read_from_disk(&self) -> u64 {
        self.log.read().entries_read_from_disk()
    }

    fn read(&self, start: u64, end: u64) -> Result<Vec<Entry>, LogStoreError> {
        let mut attempt = 1;
        loop {
            let plan = self.log.read().plan(start, end);
            let (generation, from_disk) = (plan.generation, plan.disk.len() as u64);
            match plan.execute() {
                Ok(entries) => {
                    let log = self.log.read();
                    log.entries_read_from_disk.fetch_add(from_disk, Ordering::Relaxed);
                    return Ok(entries);
                }
                // A truncation cut the segment under the read: plan again
                // against the log as it is now.
                Err(_) if attempt < READ_ATTEMPTS_MAX && self.log.read().generation != generation => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether reading `[start, end)` needs the disk.
    fn needs_disk(&self, start: u64, end: u64) -> bool {
        let log = self.log.read();
        let window_first = log.last_log_id().map(|l| l.index + 1 - log.window.len() as u64);
        let first = log.first_index();
        match (first, window_first) {
            (Some(first), Some(window_first)) => start.max(first) < window_first && start < end,
            _ => false,
        }
    }

    /// Reads `[start, end)`, off the async runtime if it needs the disk.
    async fn read_async(&self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        let result = if self.needs_disk(start, end) {
            let reader = self.clone();
            tokio::task::spawn_blocking(move || reader.read(start, end))
                .await
                .map_err(|e| StorageIOError::read_logs(AnyError::error(e)))?
        } else {
            self.read(start, end)
        };
        result.map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

/// `range` as a half-open `[start, end)`.
fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = bounds(&range);
        self.read_async(start, end).await
    }

    /// At most [`REPLICATION_BATCH_BYTES_MAX`] of entries (at least one):
    /// what one append-entries message to a follower carries.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        let end = self
            .log
            .read()
            .end_within_bytes(start, end, REPLICATION_BATCH_BYTES_MAX);
        self.read_async(start, end).await
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    /// A log of entries `first..first + count`, each `record_bytes` long,
    /// in a window of `window_bytes_max`.
    fn log(first: u64, count: u64, record_bytes: u64, window_bytes_max: u64) -> Log {
        let mut log = Log::new(Path::new("/nonexistent"), window_bytes_max);
        for index in first..first + count {
            let location = Location {
                log_id: entry(index).log_id,
                segment: 1,
                offset: index * record_bytes,
                record_bytes,
                bytes_through: log.bytes_through_last() + record_bytes,
            };
            log.push(location, entry(index));
        }
        log
    }

    #[test]
    fn the_window_keeps_the_newest_entries_within_its_bound() {
        // Memory must not grow with the log: only the tail that fits stays.
        let log = log(5, 100, 10, 95);
        assert_eq!(log.window_entries(), 9);
        assert_eq!(log.window_bytes(), 90);
        assert_eq!(log.window.front().map(|e| e.log_id.index), Some(96));
        assert_eq!(log.index.len(), 100, "the index keeps every live entry");
    }

    #[test]
    fn truncate_and_purge_keep_window_and_index_aligned() {
        // The window must stay the suffix of the index, or reads would serve the wrong entry.
        let mut log = log(0, 20, 10, 50);
        log.truncate_from(18);
        assert_eq!((log.window_entries(), log.window_bytes()), (3, 30));
        assert_eq!(log.window.back().map(|e| e.log_id.index), Some(17));
        log.purge_upto(16);
        assert_eq!((log.window_entries(), log.window_bytes()), (1, 10));
        assert_eq!(log.first_index(), Some(17));
        log.purge_upto(30);
        assert_eq!((log.window_entries(), log.window_bytes(), log.index.len()), (0, 0, 0));
    }

    #[test]
    fn bytes_between_counts_records_in_a_half_open_range() {
        // The snapshot trigger compares these bytes with its bound.
        let log = log(10, 10, 7, 1000);
        assert_eq!(log.bytes_between(None, 19), 70);
        assert_eq!(log.bytes_between(Some(14), 19), 35);
        assert_eq!(log.bytes_between(Some(2), 11), 14, "before the log: from its start");
        assert_eq!(log.bytes_between(Some(14), 100), 35, "past the end: to the last entry");
        assert_eq!(log.bytes_between(Some(19), 19), 0);
        assert_eq!(log.bytes_between(Some(15), 12), 0);
    }

    #[test]
    fn a_replication_batch_stops_at_its_byte_bound_but_holds_one_entry() {
        // A follower's message must fit the transport, yet always make progress.
        let log = log(0, 100, 10, 1000);
        assert_eq!(log.end_within_bytes(0, 100, 35), 3);
        assert_eq!(log.end_within_bytes(10, 100, 1000), 100);
        assert_eq!(log.end_within_bytes(10, 50, 1000), 50);
        assert_eq!(log.end_within_bytes(10, 100, 5), 11, "one entry even if over");
        assert_eq!(log.end_within_bytes(200, 300, 5), 100, "nothing live: an empty range");
    }
}
