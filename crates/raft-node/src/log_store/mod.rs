//! The Raft log store: openraft's `RaftLogStorage` over append-only
//! segment files, with a byte-bounded window of recent entries in memory
//! and older ones read back from the files on demand.
//!
//! # Layout
//!
//! - `segment`: file naming, the file header, the recovery scan (torn
//!   tail versus corruption), over the engine's record framing
//!   (`storage::framing`; format 2's records name their segment, so
//!   purged segment files are recycled without zeroing them). Every file operation goes through the engine's
//!   disk seam (`storage::io::FileSystem`; [`LogStore::open_on`]), so the
//!   crash tests run the store on the simulated disk.
//! - `record`: the record types (entry, vote, committed, purged, opening).
//! - `sync`: the group-commit thread.
//! - `reader`: the index of live entries, the memory window, and
//!   [`LogReader`], which reads older entries from disk.
//! - `recovery`: rebuilding the log on open.
//! - `format_tests` (tests only): logs written by older formats.
//! - `raft`: the openraft trait implementations.
//!
//! The byte format is in `docs/log-store-format.md`.
//!
//! # Design
//!
//! The log is one stream of records spread over segment files
//! `log-<n:020>.seg`, numbered by a counter (not by first index, so a
//! segment holding no entry, or one reused after a truncation, still has a
//! unique name). Entries, votes, committed ids and purge points are all
//! records of that one stream; the last record of each kind wins.
//!
//! Every segment starts, right after its header, with the current vote,
//! committed and purged records, synced before the segment is used. So the
//! newest segment alone always holds the whole non-entry state, and older
//! segments can be deleted (by `purge`) or cut (by `truncate`) without
//! losing it.
//!
//! # Durability and ordering
//!
//! - `append` writes all its entries with one `write`, makes them readable,
//!   and hands the callback to the sync thread, which runs one `fsync` for
//!   every append that arrived meanwhile (group commit). A follower, whose
//!   appends come one AppendEntries at a time, fsyncs on the caller's
//!   thread instead ([`LogStoreOptions::node_id`]).
//! - Segments are preallocated, so appends overwrite blocks the file
//!   already has and each fsync writes data only, not the file size and
//!   the journal commit it costs. The next segment is a purged one,
//!   recycled (format 2's records name their segment, so its old records
//!   are never read as the new ones), or, while the log is young and no
//!   purge has freed one, a file filled with zeros in the background.
//! - `save_vote` and `purge` fsync before returning.
//! - `save_committed` is not synced on its own: the next fsync covers it,
//!   and losing it is safe (openraft re-learns the committed index).
//! - A failed write or fsync stops the store ([`LogStoreError::Failed`])
//!   until it is reopened: after a failed fsync what reached the disk is
//!   unknown, and recovery, not the running store, can tell.
//!
//! # Memory
//!
//! Only the newest entries are held in memory: a window of at most
//! [`LogStoreOptions::memory_window_bytes_max`] bytes (counted as their
//! encoded records), which serves the leader's replication to followers
//! that keep up and the state machine's apply. Every live entry has a small
//! index entry (its log id, segment, offset and record length: about 56
//! bytes), so an older entry is one `pread` away; those reads serve lagging
//! followers and the re-apply after a restart. Each record read back is
//! checked (crc, length, log id) and a mismatch is an error, never data.
//!
//! Appends do not wait for the fsync to leave the window: a record is
//! readable through its file as soon as its `write` returned (the page
//! cache serves it), durable or not.
//!
//! Recovery builds the index while it scans the segments one at a time and
//! keeps only the newest window of entries, so opening needs one segment's
//! bytes plus the window, not the log. The index still grows with the
//! entries between the last purge and the log's end; the node bounds those
//! through snapshots, triggered by entry count (openraft's policy) or by
//! the log's bytes since the last snapshot (`snapshot_trigger`).
//!
//! # Blocking
//!
//! The trait methods do their file I/O on the calling task (`save_vote`,
//! `purge` and `truncate` each include an fsync); the log store is driven by
//! openraft's single core task, which waits for each of them anyway.

mod error;
#[cfg(test)]
mod format_tests;
mod raft;
mod reader;
mod record;
mod recovery;
mod segment;
mod sync;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::RwLock;
use storage::io::{File, FileSystem, RealFs};

pub use self::error::LogStoreError;
pub use self::reader::LogReader;
use self::reader::{Location, Log};
use self::record::{encode_entry, Record};
pub use self::segment::RECORD_BYTES_MAX;
use self::segment::{
    create_segment, frame, frame_seal, install_spare, is_spare_name, prepare_spare, recycle_path, segment_path,
    spare_path, sync_dir, Numbers, RecordName, FORMAT_VERSION,
};
#[cfg(feature = "fuzzing")]
pub(crate) use self::segment::{
    file_header_v1 as segment_header, frame_v1 as frame_record, segment_path as segment_file,
};
use self::sync::Syncer;
pub use self::sync::{SyncTimes, FSYNC_BUCKET_BOUNDS_SECONDS};
use crate::types::{Entry, LogId, NodeId, Vote};

/// Default size after which appends go to a new segment, in bytes.
pub const SEGMENT_BYTES_MAX: u64 = 64 << 20;
/// How long a purge waits for the state machine to apply (or install) up
/// to the purged index ([`LogStore::purge_after_applied`]); past it the
/// purge fails, which stops Raft.
pub const PURGE_WAIT_FOR_APPLY_MS_MAX: u64 = 120_000;
/// Default bound of the entries held in memory, in bytes.
pub const MEMORY_WINDOW_BYTES_MAX: u64 = 32 << 20;
/// Purged segments kept, at most, to be recycled as later segments
/// instead of zero-filling new files: each costs a segment's disk space
/// until it is used. Two cover a purge that frees two segments at once
/// (more are deleted).
pub const RECYCLED_SEGMENTS_MAX: usize = 2;

/// Tuning of a [`LogStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogStoreOptions {
    /// Once the current segment holds this many bytes, the next write goes
    /// to a new segment (a soft limit: one append's batch is never split).
    /// Purge frees disk space one whole segment at a time, so smaller
    /// segments free space sooner but cost more files and an fsync per roll.
    /// Default: [`SEGMENT_BYTES_MAX`] (64 MiB).
    pub segment_bytes_max: u64,
    /// Whether segments are preallocated, so appends overwrite blocks the
    /// file already has and their fdatasync writes no file metadata: the
    /// next segment is a purged one kept for recycling (up to
    /// [`RECYCLED_SEGMENTS_MAX`] are kept), or else a file a background
    /// thread fills with `segment_bytes_max` zeros (synced) before it is
    /// needed. Costs the disk space of one segment ahead (plus those kept
    /// for recycling), and, when none can be recycled, that much
    /// background writing per segment. Default: true.
    pub preallocate: bool,
    /// Bytes of recent entries (counted as their encoded records) held in
    /// memory; older entries are read back from the segment files when
    /// asked for. A larger window lets a follower lag further behind
    /// before its catch-up reads hit the disk (a `pread` per run of
    /// records, plus decoding), at the cost of that much memory. Default:
    /// [`MEMORY_WINDOW_BYTES_MAX`] (32 MiB).
    pub memory_window_bytes_max: u64,
    /// The id of the node this log belongs to, if known. While the saved
    /// vote is another node's committed one (this node follows a leader),
    /// appends are fsynced on the caller's thread, openraft's core, rather
    /// than by the sync thread: a follower's appends arrive one
    /// AppendEntries at a time (openraft keeps one in flight per
    /// follower), so there is nothing to group, and the hand-off to the
    /// sync thread and back costs two thread wake-ups on the path of every
    /// replicated write. A leader, a candidate, or a store not told its id
    /// keeps the sync thread, so the leader's own fsync overlaps sending
    /// the entries to the followers. Default: None.
    pub node_id: Option<NodeId>,
}

impl Default for LogStoreOptions {
    fn default() -> Self {
        LogStoreOptions {
            segment_bytes_max: SEGMENT_BYTES_MAX,
            preallocate: true,
            memory_window_bytes_max: MEMORY_WINDOW_BYTES_MAX,
            node_id: None,
        }
    }
}

/// Counters describing what a [`LogStore`] has done since it opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogStoreMetrics {
    /// Calls to `append` that wrote at least one entry.
    pub append_calls: u64,
    /// Entries appended.
    pub entries_appended: u64,
    /// fsyncs of segment data (group commits, votes, purges, rolls, ...).
    pub segment_syncs: u64,
    /// Segment files in the directory.
    pub segments: usize,
    /// Segments started from a preallocated file (zero-filled or recycled).
    pub preallocated_segments: u64,
    /// Of those, segments started from a recycled (purged) segment file.
    pub recycled_segments: u64,
    /// Bytes of the entries held in memory (their encoded records); at
    /// most [`LogStoreOptions::memory_window_bytes_max`].
    pub window_bytes: u64,
    /// Entries held in memory.
    pub window_entries: usize,
    /// Bytes of the records of every live entry, on disk.
    pub log_bytes: u64,
    /// Entries read back from the segment files (older than the window).
    pub entries_read_from_disk: u64,
}

/// The vote, committed and purged ids: the log's state besides entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DurableState {
    /// The latest vote.
    pub(crate) vote: Option<Vote>,
    /// The latest committed log id.
    pub(crate) committed: Option<LogId>,
    /// The last purged log id.
    pub(crate) purged: Option<LogId>,
}

impl DurableState {
    /// The opening record and the state as framed records, to open
    /// segment `seq` with (made from a `recycled` file or a new one).
    fn framed(&self, seq: u64, recycled: bool) -> Vec<u8> {
        // Nothing of the segment is synced before its opening is.
        let name = RecordName {
            file_number: seq,
            synced_bytes: 0,
        };
        let mut framed = Vec::new();
        frame(&mut framed, &Record::Opening { recycled }.encode(), name);
        let records = [
            self.vote.map(Record::Vote),
            self.committed.map(Record::Committed),
            self.purged.map(Record::Purged),
        ];
        for record in records.into_iter().flatten() {
            frame(&mut framed, &record.encode(), name);
        }
        framed
    }
}

/// What the store tracks about a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentInfo {
    /// The index of its last live entry, `None` if it holds none.
    pub(crate) last_index: Option<u64>,
    /// Its format version.
    pub(crate) version: u32,
}

impl SegmentInfo {
    /// A segment this build just created.
    fn new_current() -> SegmentInfo {
        SegmentInfo {
            last_index: None,
            version: FORMAT_VERSION,
        }
    }
}

/// The segment being appended to.
#[derive(Debug)]
struct Current {
    seq: u64,
    path: PathBuf,
    file: Arc<dyn File>,
    /// Bytes written (the next write's offset), not the file's size.
    len_bytes: u64,
    /// Whether the file was preallocated (made from a spare).
    preallocated: bool,
}

/// A purged segment file kept, under its recycle name, to become a later
/// segment.
#[derive(Debug)]
struct Recycled {
    path: PathBuf,
    file: Box<dyn File>,
}

/// A zero-filled file being prepared, on its own thread, to become the
/// segment after the current one.
#[derive(Debug)]
struct Spare {
    seq: u64,
    path: PathBuf,
    cancel: Arc<AtomicBool>,
    thread: JoinHandle<io::Result<Box<dyn File>>>,
}

impl Spare {
    /// Starts preparing the spare for segment `seq`.
    fn start(fs: &Arc<dyn FileSystem>, dir: &Path, seq: u64, bytes: u64) -> Result<Spare, LogStoreError> {
        let path = spare_path(dir, seq);
        let cancel = Arc::new(AtomicBool::new(false));
        let thread = {
            let (fs, path, cancel) = (Arc::clone(fs), path.clone(), Arc::clone(&cancel));
            std::thread::Builder::new()
                .name("raft-log-spare".into())
                .spawn(move || prepare_spare(fs.as_ref(), &path, bytes, &cancel))
                .map_err(|e| LogStoreError::io("start the spare thread for", dir, e))?
        };
        Ok(Spare {
            seq,
            path,
            cancel,
            thread,
        })
    }

    /// Stops the preparation and removes the file.
    fn abandon(self, fs: &dyn FileSystem) {
        self.cancel.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        let _ = fs.remove_file(&self.path);
    }
}

/// The Raft log of one node, stored in a directory of segment files.
///
/// Implements openraft's `RaftLogStorage` and `RaftLogReader`; see the
/// module documentation for the format, durability and memory use.
#[derive(Debug)]
pub struct LogStore {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    options: LogStoreOptions,
    log: Arc<RwLock<Log>>,
    state: DurableState,
    segments: BTreeMap<u64, SegmentInfo>,
    current: Current,
    spare: Option<Spare>,
    /// Purged segment files kept to be recycled, at most
    /// [`RECYCLED_SEGMENTS_MAX`].
    recycled: Vec<Recycled>,
    syncer: Syncer,
    metrics: LogStoreMetrics,
    /// The state machine's applied index, when purges wait for it.
    purge_gate: Option<tokio::sync::watch::Receiver<u64>>,
}

impl LogStore {
    /// Opens (creating if missing) the log store in `dir` with default
    /// options, recovering what a crash left.
    pub fn open(dir: &Path) -> Result<LogStore, LogStoreError> {
        LogStore::open_with(dir, LogStoreOptions::default())
    }

    /// Opens (creating if missing) the log store in `dir`.
    ///
    /// Recovery cuts a torn record off the end of the last segment and
    /// refuses ([`LogStoreError::Corrupt`]) any other damage. Appends then
    /// go to a new segment.
    pub fn open_with(dir: &Path, options: LogStoreOptions) -> Result<LogStore, LogStoreError> {
        LogStore::open_on(RealFs::shared(), dir, options)
    }

    /// Opens (creating if missing) the log store in `dir` on the disk `fs`
    /// (every file operation goes through it; tests pass the simulated
    /// disk, `storage::sim::SimFs`).
    pub fn open_on(fs: Arc<dyn FileSystem>, dir: &Path, options: LogStoreOptions) -> Result<LogStore, LogStoreError> {
        LogStore::open_checking(fs, dir, options, Numbers::Checked)
    }

    /// [`open_on`](Self::open_on) with a deliberately broken recovery that
    /// reads a recycled segment's earlier records as its own: the negative
    /// control of the crash tests, which must notice. Never use otherwise.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn open_on_ignoring_record_numbers(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        options: LogStoreOptions,
    ) -> Result<LogStore, LogStoreError> {
        LogStore::open_checking(fs, dir, options, Numbers::IgnoredForTests)
    }

    fn open_checking(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        options: LogStoreOptions,
        numbers: Numbers,
    ) -> Result<LogStore, LogStoreError> {
        // Durably: a log directory a crash forgets takes every segment in it along.
        storage::io::create_dir_all(fs.as_ref(), dir)?;
        remove_spares(fs.as_ref(), dir)?;
        let recovered = recovery::recover(fs.as_ref(), dir, options.memory_window_bytes_max, numbers)?;
        let mut segments = recovered.segments;
        // Appends always start in a fresh segment, never after a recovered
        // tail: a segment whose creation a crash interrupted may lack the
        // state records every current segment must begin with. It is a
        // growing one, so opening does not wait for zeros to be written;
        // appends move to the preallocated next one as soon as it is ready.
        let current = start_segment(fs.as_ref(), dir, recovered.next_seq, &recovered.state)?;
        let spare = if options.preallocate {
            Some(Spare::start(&fs, dir, current.seq + 1, options.segment_bytes_max)?)
        } else {
            None
        };
        segments.insert(current.seq, SegmentInfo::new_current());
        let mut log = recovered.log;
        log.add_file(current.seq, Arc::clone(&current.file), FORMAT_VERSION);
        let syncer = Syncer::start(Arc::clone(&current.file))
            .map_err(|e| LogStoreError::io("start the sync thread for", dir, e))?;
        Ok(LogStore {
            fs,
            dir: dir.to_path_buf(),
            options,
            log: Arc::new(RwLock::new(log)),
            state: recovered.state,
            segments,
            current,
            spare,
            recycled: Vec::new(),
            syncer,
            metrics: LogStoreMetrics::default(),
            purge_gate: None,
        })
    }

    /// Makes every purge wait until `applied` (the state machine's applied
    /// index) reaches the purged index, for at most
    /// [`PURGE_WAIT_FOR_APPLY_MS_MAX`].
    ///
    /// openraft 0.9 purges the log a follower's new snapshot covers while
    /// the state machine is still installing it. A crash in between left
    /// the node unable to start: its old state machine needed entries the
    /// purge had removed. With the gate the purge waits for the install.
    pub fn purge_after_applied(&mut self, applied: tokio::sync::watch::Receiver<u64>) {
        self.purge_gate = Some(applied);
    }

    /// Waits until the purge gate, if any, reaches `index`.
    pub(crate) async fn wait_purgeable(&mut self, index: u64) -> Result<(), LogStoreError> {
        let Some(applied) = self.purge_gate.as_mut() else {
            return Ok(());
        };
        let wait = Duration::from_millis(PURGE_WAIT_FOR_APPLY_MS_MAX);
        let started = std::time::Instant::now();
        // An error before the time is up means the state machine stopped.
        let reached = matches!(
            tokio::time::timeout(wait, applied.wait_for(|applied| *applied >= index)).await,
            Ok(Ok(_))
        );
        if reached {
            return Ok(());
        }
        Err(LogStoreError::PurgeAheadOfApplied {
            index,
            applied: *applied.borrow(),
            waited_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// A read handle on this store's entries, in memory and on disk.
    pub fn reader(&self) -> LogReader {
        LogReader {
            log: Arc::clone(&self.log),
            sync_times: self.syncer.times(),
        }
    }

    /// Counters since the store opened.
    pub fn metrics(&self) -> LogStoreMetrics {
        let log = self.log.read();
        LogStoreMetrics {
            segment_syncs: self.syncer.sync_count(),
            segments: self.segments.len(),
            window_bytes: log.window_bytes(),
            window_entries: log.window_entries(),
            log_bytes: log.bytes_between(None, u64::MAX),
            entries_read_from_disk: log.entries_read_from_disk(),
            ..self.metrics
        }
    }

    /// The last purged log id and the last log id (the last entry's, or the
    /// last purged one when no entry is left).
    pub fn log_state(&self) -> (Option<LogId>, Option<LogId>) {
        let last = self.log.read().last_log_id().or(self.state.purged);
        (self.state.purged, last)
    }

    /// The latest saved vote.
    pub fn vote(&self) -> Option<Vote> {
        self.state.vote
    }

    /// The latest saved committed log id.
    pub fn committed(&self) -> Option<LogId> {
        self.state.committed
    }

    /// Appends `entries` (which must continue the log) and returns once
    /// they are written and readable, before they are durable;
    /// `on_durable` runs on the sync thread once they are (or with the
    /// error if they may not be). openraft's `append` is this with its
    /// `LogFlushed` callback.
    ///
    /// Callbacks run in append order and must not block or panic: they run
    /// on the one sync thread (or at once on the caller's thread, with an
    /// error, if the store has already failed).
    pub fn append_with_callback<I>(
        &mut self,
        entries: I,
        on_durable: impl FnOnce(io::Result<()>) + Send + 'static,
    ) -> Result<(), LogStoreError>
    where
        I: IntoIterator<Item = Entry>,
    {
        self.check_usable()?;
        // Roll first, if due: the records name the segment they go to.
        let name = self.begin_write()?;
        let mut expected = self.next_index();
        let purged_index = self.state.purged.map(|p| p.index);
        let mut framed = Vec::new();
        let mut batch = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            if self.log.read().last_log_id().is_none() && purged_index.is_some_and(|p| index <= p) {
                // Already covered by a snapshot: nothing to keep. openraft
                // itself never sends these; its conformance suite does,
                // right after it purged an empty log up to the state
                // machine's applied index.
                continue;
            }
            match expected {
                Some(expected) if expected != index => {
                    return Err(LogStoreError::NotContiguous { expected, got: index });
                }
                _ => expected = Some(index + 1),
            }
            let payload = encode_entry(&entry);
            if payload.len() > RECORD_BYTES_MAX {
                return Err(LogStoreError::RecordTooLarge {
                    bytes: payload.len(),
                    max: RECORD_BYTES_MAX,
                });
            }
            let at = framed.len() as u64;
            frame(&mut framed, &payload, name);
            let record_bytes = framed.len() as u64 - at;
            batch.push((entry, at, record_bytes));
        }
        let Some(last_index) = batch.last().map(|(entry, _, _)| entry.log_id.index) else {
            // Nothing to write, but the callback still runs in order.
            self.syncer.submit(Box::new(on_durable), 0);
            return Ok(());
        };
        let base = self.write_framed(&framed)?;
        let segment = self.current.seq;
        self.metrics.append_calls += 1;
        self.metrics.entries_appended += batch.len() as u64;
        {
            let mut log = self.log.write();
            for (entry, at, record_bytes) in batch {
                let location = Location {
                    log_id: entry.log_id,
                    segment,
                    offset: base + at,
                    record_bytes,
                    bytes_through: log.bytes_through_last() + record_bytes,
                };
                log.push(location, entry);
            }
        }
        self.segment_info(segment).last_index = Some(last_index);
        // Queued only after the write returned: the sync thread's next
        // fsync starts after it and so covers these records.
        if self.follows_another_node() {
            self.syncer
                .sync_here_or_submit(self.current.file.as_ref(), Box::new(on_durable), self.current.len_bytes);
        } else {
            self.syncer.submit(Box::new(on_durable), self.current.len_bytes);
        }
        Ok(())
    }

    /// Whether the saved vote is another node's committed one: this node
    /// follows a leader (see [`LogStoreOptions::node_id`]).
    fn follows_another_node(&self) -> bool {
        match (self.options.node_id, self.state.vote) {
            (Some(me), Some(vote)) => vote.is_committed() && vote.leader_id().voted_for() != Some(me),
            _ => false,
        }
    }

    /// Saves `vote`, durably, before returning.
    fn write_vote(&mut self, vote: &Vote) -> Result<(), LogStoreError> {
        self.check_usable()?;
        let name = self.begin_write()?;
        let mut framed = Vec::new();
        frame(&mut framed, &Record::Vote(*vote).encode(), name);
        self.write_framed(&framed)?;
        // The vote must be on disk before openraft answers with it: a vote
        // forgotten in a crash would let this node vote twice in one term.
        self.sync_current()?;
        self.state.vote = Some(*vote);
        Ok(())
    }

    /// Makes an empty log continue after `last`, durably, as if everything
    /// up to it had been applied and purged: the log of a node whose state
    /// machine was restored from a backup at `last`. `vote` must be in
    /// `last`'s term or later.
    pub(crate) fn continue_after(&mut self, vote: Vote, last: LogId) -> Result<(), LogStoreError> {
        assert!(
            self.log.read().last_log_id().is_none() && self.state.purged.is_none(),
            "continue_after on a log that holds entries"
        );
        assert!(
            vote.leader_id().term >= last.leader_id.term,
            "a vote behind the log's last term"
        );
        self.write_vote(&vote)?;
        self.write_committed(Some(last))?;
        // Syncs the vote, the commit point and the purge point together.
        self.purge_upto(last)
    }

    /// Records the committed log id, without an fsync of its own: the next
    /// one covers it, and losing it in a crash only means openraft learns it
    /// again from the leader.
    fn write_committed(&mut self, committed: Option<LogId>) -> Result<(), LogStoreError> {
        self.check_usable()?;
        let Some(committed) = committed else { return Ok(()) };
        let name = self.begin_write()?;
        let mut framed = Vec::new();
        frame(&mut framed, &Record::Committed(committed).encode(), name);
        self.write_framed(&framed)?;
        self.state.committed = Some(committed);
        Ok(())
    }

    /// Deletes every entry at or after `log_id.index`, durably.
    fn truncate_since(&mut self, log_id: LogId) -> Result<(), LogStoreError> {
        self.check_usable()?;
        let index = log_id.index;
        if let Some(purged) = self.state.purged.filter(|p| index <= p.index) {
            return Err(LogStoreError::TruncatePurged {
                index,
                purged: purged.index,
            });
        }
        let Some((cut_seq, cut_offset)) = self.log.read().location(index).map(|l| (l.segment, l.offset)) else {
            return Ok(()); // nothing at or after `index`
        };
        // Callbacks of earlier appends run first, in order, so none of them
        // reports as durable a record this cut is about to remove.
        self.syncer.wait_idle();
        self.log.write().truncate_from(index);
        let result = self.truncate_on_disk(index, cut_seq, cut_offset);
        if let Err(e) = &result {
            // Memory and disk now disagree; stop until recovery reconciles.
            self.syncer.fail(e.to_string());
        }
        result
    }

    /// The file work of [`truncate_since`](Self::truncate_since), in crash-safe order.
    fn truncate_on_disk(&mut self, index: u64, cut_seq: u64, cut_offset: u64) -> Result<(), LogStoreError> {
        let mut state = self.state.clone();
        if state.committed.is_some_and(|c| c.index >= index) {
            state.committed = None; // Raft never truncates committed entries
        }
        // 1. A new segment carrying the state, synced: the vote, committed
        //    and purged records behind the cut point go with the cut, and
        //    must already be durable elsewhere when it happens.
        self.roll(&state)?;
        self.state = state;
        // 2. Delete the segments after the cut one, newest first: a crash
        //    part-way leaves a contiguous prefix of the old log, as if the
        //    truncation had not started.
        let doomed: Vec<u64> = self
            .segments
            .range(cut_seq + 1..self.current.seq)
            .map(|(&seq, _)| seq)
            .rev()
            .collect();
        for seq in doomed {
            remove_segment(self.fs.as_ref(), &self.dir, seq)?;
            self.segments.remove(&seq);
            self.log.write().remove_file(seq);
        }
        // 3. The deletions are durable before the cut: a deleted segment that
        //    came back after the cut one was cut would leave a hole.
        sync_dir(self.fs.as_ref(), &self.dir)?;
        // 4. The cut itself. The new size is metadata, hence sync_all.
        let path = segment_path(&self.dir, cut_seq);
        let file = self
            .fs
            .open_writable(&path)
            .map_err(|e| LogStoreError::io("open", &path, e))?;
        file.set_len(cut_offset)
            .map_err(|e| LogStoreError::io("truncate", &path, e))?;
        file.sync_all().map_err(|e| LogStoreError::io("fsync", &path, e))?;
        self.syncer.count_sync();
        let last = self.log.read().last_log_id().map(|l| l.index);
        let last_in_cut = last.filter(|&l| self.log.read().location(l).is_some_and(|s| s.segment == cut_seq));
        self.segment_info(cut_seq).last_index = last_in_cut;
        Ok(())
    }

    /// Deletes every entry at or before `log_id.index`, durably, and the
    /// segment files that held only such entries.
    pub(crate) fn purge_upto(&mut self, log_id: LogId) -> Result<(), LogStoreError> {
        self.check_usable()?;
        if self.state.purged.is_some_and(|p| p.index >= log_id.index) {
            return Ok(());
        }
        let name = self.begin_write()?;
        let mut framed = Vec::new();
        frame(&mut framed, &Record::Purged(log_id).encode(), name);
        self.write_framed(&framed)?;
        // The purge point is durable before any segment is deleted: without
        // it, recovery would find the log starting after a hole.
        self.sync_current()?;
        self.state.purged = Some(log_id);
        self.log.write().purge_upto(log_id.index);
        let doomed: Vec<u64> = self
            .segments
            .iter()
            .filter(|&(&seq, info)| seq != self.current.seq && info.last_index.is_none_or(|l| l <= log_id.index))
            .map(|(&seq, _)| seq)
            .collect();
        let mut kept = false;
        for seq in doomed {
            if self.keep_for_recycling(seq) {
                self.segments.remove(&seq);
                self.log.write().remove_file(seq);
                kept = true;
                continue;
            }
            // No directory fsync: a deleted segment that a crash brings back
            // holds only entries at or below the durable purge point, which
            // recovery skips. A failed deletion is retried by the next purge.
            match remove_segment(self.fs.as_ref(), &self.dir, seq) {
                Ok(()) => {
                    self.segments.remove(&seq);
                    self.log.write().remove_file(seq);
                }
                Err(e) => tracing::warn!(error = %e, "could not delete a purged log segment"),
            }
        }
        if kept {
            // The renames to recycle names are durable before any of those
            // files is written to: otherwise a crash could bring a purged
            // segment's name back over a file that holds a later segment's
            // opening, which recovery would (rightly) call damage.
            if let Err(e) = sync_dir(self.fs.as_ref(), &self.dir) {
                self.syncer.fail(e.to_string());
                return Err(e);
            }
            if self.spare.as_ref().is_some_and(|s| !s.thread.is_finished()) {
                // A recycled file replaces the zeros: stop writing them.
                if let Some(spare) = self.spare.take() {
                    spare.abandon(self.fs.as_ref());
                }
            }
        }
        Ok(())
    }

    /// Renames purged segment `seq` to its recycle name and keeps it, if
    /// the store preallocates, fewer than [`RECYCLED_SEGMENTS_MAX`] are
    /// kept, and the file is a whole segment's size (appends into it then
    /// never grow it). Whether it was kept; a failure only means it is
    /// deleted instead.
    fn keep_for_recycling(&mut self, seq: u64) -> bool {
        if !self.options.preallocate || self.recycled.len() >= RECYCLED_SEGMENTS_MAX {
            return false;
        }
        let from = segment_path(&self.dir, seq);
        let to = recycle_path(&self.dir, seq);
        let kept = self.fs.open_writable(&from).and_then(|file| {
            if file.len_bytes()? < self.options.segment_bytes_max {
                return Ok(None);
            }
            self.fs.rename(&from, &to)?;
            Ok(Some(file))
        });
        match kept {
            Ok(Some(file)) => {
                self.recycled.push(Recycled { path: to, file });
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "could not keep a purged log segment for recycling");
                false
            }
        }
    }

    /// The index the next entry must have, if the log has any history.
    fn next_index(&self) -> Option<u64> {
        let last = self.log.read().last_log_id().or(self.state.purged);
        last.map(|l| l.index + 1)
    }

    /// Errors if an earlier failure stopped the store.
    fn check_usable(&self) -> Result<(), LogStoreError> {
        match self.syncer.failure() {
            Some(reason) => Err(LogStoreError::Failed { reason }),
            None => Ok(()),
        }
    }

    /// The tracked info of segment `seq`, which must exist.
    fn segment_info(&mut self, seq: u64) -> &mut SegmentInfo {
        self.segments
            .get_mut(&seq)
            .unwrap_or_else(|| panic!("segment {seq} holds live entries, so the store must track it"))
    }

    /// Rolls to a new segment if the current one is full, or if it is a
    /// growing one and a preallocated one is ready; returns what records
    /// written next must say of themselves: the segment they go to, and
    /// how much of it is known durable.
    fn begin_write(&mut self) -> Result<RecordName, LogStoreError> {
        let spare_ready = !self.recycled.is_empty() || self.spare.as_ref().is_some_and(|s| s.thread.is_finished());
        if self.current.len_bytes >= self.options.segment_bytes_max || (!self.current.preallocated && spare_ready) {
            let state = self.state.clone();
            self.roll(&state)?;
        }
        Ok(self.current_name())
    }

    /// What a record written now at the end of the current segment says
    /// of itself.
    fn current_name(&self) -> RecordName {
        let synced_bytes = self.syncer.synced_bytes();
        assert!(
            synced_bytes <= self.current.len_bytes,
            "more of segment {} synced ({synced_bytes}) than written ({})",
            self.current.seq,
            self.current.len_bytes
        );
        RecordName {
            file_number: self.current.seq,
            synced_bytes,
        }
    }

    /// Writes framed records (named after the current segment, by
    /// [`begin_write`](Self::begin_write) with no roll since) at the end of
    /// the current segment and returns the offset they start at.
    fn write_framed(&mut self, framed: &[u8]) -> Result<u64, LogStoreError> {
        let offset = self.current.len_bytes;
        if let Err(e) = self.current.file.write_at(offset, framed) {
            // Part of a record may be in the file now; anything appended
            // after it would sit behind garbage. Stop, and let recovery cut
            // the partial record off as a torn tail.
            let e = LogStoreError::io("write", &self.current.path, e);
            self.syncer.fail(e.to_string());
            return Err(e);
        }
        self.current.len_bytes += framed.len() as u64;
        Ok(offset)
    }

    /// fsyncs the current segment on the calling thread.
    fn sync_current(&mut self) -> Result<(), LogStoreError> {
        // Through the syncer, in turn with its fsyncs: a failure here must
        // be recorded before the sync thread's next fsync can succeed.
        self.syncer
            .sync(self.current.file.as_ref(), self.current.len_bytes)
            .map_err(|reason| LogStoreError::io("fsync", &self.current.path, io::Error::other(reason)))
    }

    /// Moves appends to a new segment that opens with `state`.
    fn roll(&mut self, state: &DurableState) -> Result<(), LogStoreError> {
        // The old segment is synced in full before the new one exists. So
        // only the newest segment can ever end in a torn record (recovery
        // treats damage anywhere else as corruption), and the callbacks
        // still queued for records in the old segment are durable now,
        // whichever segment the sync thread fsyncs before running them.
        // The seal goes first, under the same fsync: in format 2 an older
        // segment's records must end in a seal (or at the end of the
        // file), so that bytes after them, a recycled file's earlier
        // records, are never taken for damage, and damage never for them.
        let mut seal = Vec::new();
        frame_seal(&mut seal, self.current_name());
        self.write_framed(&seal)?;
        self.sync_current()?;
        let seq = self.current.seq + 1;
        let next = self.next_segment(seq, state).inspect_err(|e| {
            // A half-created segment would be picked as the next one again.
            self.syncer.fail(e.to_string());
        })?;
        if self.options.preallocate && self.recycled.is_empty() {
            // No purged file to recycle next time: zero-fill one.
            self.spare = Some(Spare::start(
                &self.fs,
                &self.dir,
                seq + 1,
                self.options.segment_bytes_max,
            )?);
        }
        // The new segment's opening was synced when it was created.
        self.syncer.set_file(Arc::clone(&next.file), next.len_bytes);
        self.segments.insert(next.seq, SegmentInfo::new_current());
        self.log
            .write()
            .add_file(next.seq, Arc::clone(&next.file), FORMAT_VERSION);
        self.current = next;
        Ok(())
    }
}

impl LogStore {
    /// Creates segment `seq` opening with `state`, durably: from a
    /// recycled segment file if one is kept, else from the spare if one was
    /// prepared for it (waiting for it if need be), else as a growing file.
    fn next_segment(&mut self, seq: u64, state: &DurableState) -> Result<Current, LogStoreError> {
        // A spare already filled for this segment is used first (its zeros
        // are written); a recycled file otherwise, rather than waiting.
        let spare_ready = self
            .spare
            .as_ref()
            .is_some_and(|s| s.seq == seq && s.thread.is_finished());
        let recycled = if spare_ready { None } else { self.recycled.pop() };
        if let Some(recycled) = recycled {
            if let Some(spare) = self.spare.take() {
                spare.abandon(self.fs.as_ref());
            }
            let path = segment_path(&self.dir, seq);
            let framed = state.framed(seq, true);
            // Its earlier records stay after the opening: format 2's
            // records name their segment, so recovery never reads them as
            // this one's (docs/log-store-format.md, "Recycled segments").
            let file = install_spare(
                self.fs.as_ref(),
                &self.dir,
                recycled.file,
                &recycled.path,
                &path,
                &framed,
            )?;
            self.metrics.preallocated_segments += 1;
            self.metrics.recycled_segments += 1;
            return Ok(Current {
                seq,
                path,
                file,
                len_bytes: (segment::FILE_HEADER_BYTES + framed.len()) as u64,
                preallocated: true,
            });
        }
        let Some(spare) = self.spare.take() else {
            return start_segment(self.fs.as_ref(), &self.dir, seq, state);
        };
        if spare.seq != seq {
            spare.abandon(self.fs.as_ref());
            return start_segment(self.fs.as_ref(), &self.dir, seq, state);
        }
        let prepared = match spare.thread.join() {
            Ok(Ok(file)) => file,
            failed => {
                // Preallocation only speeds fsyncs up; without it the log
                // still works, so a failure here (a full disk?) falls back.
                let reason = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "the spare thread panicked".to_owned(),
                };
                tracing::warn!(%reason, "could not preallocate a log segment; using a growing one");
                let _ = self.fs.remove_file(&spare.path);
                return start_segment(self.fs.as_ref(), &self.dir, seq, state);
            }
        };
        let path = segment_path(&self.dir, seq);
        let framed = state.framed(seq, false);
        let file = install_spare(self.fs.as_ref(), &self.dir, prepared, &spare.path, &path, &framed)?;
        self.metrics.preallocated_segments += 1;
        Ok(Current {
            seq,
            path,
            file,
            len_bytes: (segment::FILE_HEADER_BYTES + framed.len()) as u64,
            preallocated: true,
        })
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        if let Some(spare) = self.spare.take() {
            spare.abandon(self.fs.as_ref());
        }
    }
}

/// Deletes spares and segments kept for recycling that a crash (or a
/// stop) left behind: they hold no live records.
fn remove_spares(fs: &dyn FileSystem, dir: &Path) -> Result<(), LogStoreError> {
    for name in fs.list_dir(dir).map_err(|e| LogStoreError::io("list", dir, e))? {
        if is_spare_name(&name) {
            let path = dir.join(name);
            fs.remove_file(&path)
                .map_err(|e| LogStoreError::io("remove", &path, e))?;
        }
    }
    Ok(())
}

/// Creates segment `seq` opening with `state`, durably.
fn start_segment(fs: &dyn FileSystem, dir: &Path, seq: u64, state: &DurableState) -> Result<Current, LogStoreError> {
    let path = segment_path(dir, seq);
    let framed = state.framed(seq, false);
    let file = create_segment(fs, dir, &path, &framed)?;
    let len_bytes = (segment::FILE_HEADER_BYTES + framed.len()) as u64;
    Ok(Current {
        seq,
        path,
        file,
        len_bytes,
        preallocated: false,
    })
}

/// Deletes segment `seq`; one already gone counts as deleted.
fn remove_segment(fs: &dyn FileSystem, dir: &Path, seq: u64) -> Result<(), LogStoreError> {
    let path = segment_path(dir, seq);
    match fs.remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(LogStoreError::io("remove", &path, e)),
        _ => Ok(()),
    }
}
