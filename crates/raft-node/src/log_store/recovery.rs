//! Rebuilding the log from its segments when the store opens.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use storage::io::{File, FileSystem};

use super::error::LogStoreError;
use super::reader::{Location, Log};
use super::record::{Record, ENTRY_TYPE};
use super::segment::{parse_segment_name, scan, segment_path, sync_dir, Ending, Numbers};
use super::{DurableState, SegmentInfo};
use crate::types::{Entry, LogId};

/// Everything recovery learnt from the directory.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// The live entries: all indexed, the newest in memory.
    pub(crate) log: Log,
    /// The vote, committed and purged ids.
    pub(crate) state: DurableState,
    /// The segments that remain, by number.
    pub(crate) segments: BTreeMap<u64, SegmentInfo>,
    /// The number for the next segment to create.
    pub(crate) next_seq: u64,
}

/// Where an entry record was found: enough to index it, not the entry.
struct Found {
    seq: u64,
    offset: u64,
    record_bytes: u64,
    log_id: LogId,
}

/// Reads every segment in `dir` in order, cuts a torn tail off the last
/// one, and replays the records.
///
/// Memory: one segment's bytes at a time, a [`Found`] per entry record,
/// and the decoded entries of the newest `window_bytes_max` bytes of
/// records (older ones are dropped as the scan moves on, and read back
/// from disk when asked for).
pub(crate) fn recover(
    fs: &dyn FileSystem,
    dir: &Path,
    window_bytes_max: u64,
    numbers: Numbers,
) -> Result<Recovered, LogStoreError> {
    let seqs = list_segments(fs, dir)?;
    let next_seq = seqs.last().map_or(1, |s| s + 1);
    let mut segments = BTreeMap::new();
    // Pass 1, over the files: the last record of each kind is the current
    // value (purges only go forward, so the last Purged record is also the
    // greatest); every entry record is noted; the newest entries are kept.
    let mut state = DurableState::default();
    let mut found: Vec<Found> = Vec::new();
    let mut tail = Tail::new(window_bytes_max);
    // A torn tail in a segment that is not the newest: legitimate only as
    // the cut of a truncation that a power cut interrupted (see below), so
    // only if no later segment holds an entry.
    let mut torn_before: Option<(u64, u64)> = None;
    for (position, &seq) in seqs.iter().enumerate() {
        let path = segment_path(dir, seq);
        let is_last = position + 1 == seqs.len();
        // Every segment is scanned as if it were the newest. A truncation
        // cuts an older segment (`set_len`, fsync) after it started a new
        // one; a power cut between the two can leave the cut segment at any
        // length between the old and the new one, ending in part of a
        // record, with only the truncation's new segment (no entries) after
        // it. Found by the simulated-disk crash test
        // (`tests/log_store_sim_crash.rs`, a torn crash during a
        // truncation); before, recovery called it corruption and the node
        // could not restart.
        let scanned = scan(fs, &path, seq, true, numbers)?;
        if scanned.torn_header && !is_last {
            // Headers are synced at creation and never cut.
            return Err(LogStoreError::corrupt(&path, 0, "short or zeroed file header"));
        }
        if scanned.torn_header {
            // The crash came while the segment was being created, before it
            // held anything: remove it, so the next segment created does not
            // leave a headerless file in the middle of the log.
            fs.remove_file(&path)
                .map_err(|e| LogStoreError::io("remove", &path, e))?;
            sync_dir(fs, dir)?;
            continue;
        }
        if scanned.end == Ending::Leftover && !is_last {
            // Format 2: an older segment was sealed (or cut) before a newer
            // one was created, so bytes after its records that are not a
            // seal are damage, not a recycled file's leftover.
            return Err(LogStoreError::corrupt(
                &path,
                scanned.valid_bytes,
                "an older segment's records end in neither a seal nor the end of the file",
            ));
        }
        if is_last && scanned.needs_cut() {
            // Cut the torn tail now and make the cut durable: a new segment
            // is about to follow this one, and only the last segment may end
            // in a torn record, or in bytes that are not its records (a
            // recycled file's earlier records would otherwise sit after
            // them, unsealed, in a segment that is no longer the newest).
            // (An unused preallocated end is cut too, to give its disk
            // space back: appends go to a new segment.)
            cut_durably(fs, &path, scanned.valid_bytes)?;
            if scanned.end == Ending::Torn {
                tracing::warn!(file = %path.display(), valid_bytes = scanned.valid_bytes, "cut a torn tail off the log");
            }
        }
        segments.insert(
            seq,
            SegmentInfo {
                last_index: None,
                version: scanned.version,
            },
        );
        let has_entry = scanned
            .records
            .iter()
            .any(|r| scanned.payload(r).first() == Some(&ENTRY_TYPE));
        if let Some((torn_seq, torn_offset)) = torn_before.filter(|_| has_entry) {
            // Entries after the damage: not an interrupted truncation (which
            // stops the store), and older segments are synced in full before
            // a newer one is created, so this is damage, not a torn write.
            return Err(LogStoreError::corrupt(
                &segment_path(dir, torn_seq),
                torn_offset,
                "damaged record in a segment followed by entries in a later one",
            ));
        }
        if scanned.end == Ending::Torn && !is_last {
            torn_before = Some((seq, scanned.valid_bytes));
        }
        for record in &scanned.records {
            let decoded = Record::decode(scanned.payload(record))
                .map_err(|reason| LogStoreError::corrupt(&path, record.offset, reason))?;
            match decoded {
                Record::Entry(entry) => {
                    found.push(Found {
                        seq,
                        offset: record.offset,
                        record_bytes: record.record_bytes,
                        log_id: entry.log_id,
                    });
                    tail.push(entry, record.record_bytes);
                }
                Record::Vote(vote) => state.vote = Some(vote),
                Record::Committed(log_id) => state.committed = Some(log_id),
                Record::Purged(log_id) => state.purged = Some(log_id),
                // The scan read it already (how the segment ends).
                Record::Opening { .. } => {}
            }
        }
    }

    if let Some((seq, valid_bytes)) = torn_before {
        // No later segment holds an entry: the interrupted cut of a
        // truncation. Finish it, durably, before any new segment follows.
        let path = segment_path(dir, seq);
        cut_durably(fs, &path, valid_bytes)?;
        tracing::warn!(file = %path.display(), valid_bytes, "finished a truncation a crash interrupted");
    }

    // Pass 2, over the noted entries: contiguous, minus those purged. The
    // live entries are a suffix of the noted ones, and so are those in
    // `tail`: the newest live ones get their entry back from it.
    let purged = state.purged.map(|p| p.index);
    let mut log = Log::new(dir, window_bytes_max);
    let mut previous: Option<u64> = None;
    let tail_from = found.len() - tail.entries.len();
    let mut tail_entries = tail.entries.into_iter();
    for (position, noted) in found.into_iter().enumerate() {
        let in_tail = if position >= tail_from {
            tail_entries.next()
        } else {
            None
        };
        let index = noted.log_id.index;
        if !follows(previous, index, purged) {
            return Err(LogStoreError::corrupt(
                &segment_path(dir, noted.seq),
                noted.offset,
                format!("entry index {index} does not follow {previous:?} (last purged {purged:?})"),
            ));
        }
        previous = Some(index);
        if purged.is_some_and(|p| index <= p) {
            continue;
        }
        if let Some(info) = segments.get_mut(&noted.seq) {
            info.last_index = Some(index);
        }
        let location = Location {
            log_id: noted.log_id,
            segment: noted.seq,
            offset: noted.offset,
            record_bytes: noted.record_bytes,
            bytes_through: log.bytes_through_last() + noted.record_bytes,
        };
        match in_tail {
            Some(entry) => log.push(location, entry),
            None => log.push_location(location),
        }
    }
    for (&seq, info) in &segments {
        // Handles on every surviving segment, for reads of entries older
        // than the window.
        let path = segment_path(dir, seq);
        let file: Arc<dyn File> = fs.open(&path).map_err(|e| LogStoreError::io("open", &path, e))?.into();
        log.add_file(seq, file, info.version);
    }

    // Committed is a hint openraft can re-learn from the leader; one that
    // points past the surviving log (which Raft should never produce) is
    // dropped rather than let openraft apply entries that are not there.
    let last_index = log.last_log_id().or(state.purged).map(|l| l.index);
    if state
        .committed
        .is_some_and(|c| last_index.is_none_or(|last| c.index > last))
    {
        tracing::warn!(committed = ?state.committed, ?last_index, "dropping a committed id past the log's end");
        state.committed = None;
    }
    Ok(Recovered {
        log,
        state,
        segments,
        next_seq,
    })
}

/// Cuts segment `path` to `valid_bytes` and syncs the new length (the
/// length is metadata, hence `sync_all`).
fn cut_durably(fs: &dyn FileSystem, path: &Path, valid_bytes: u64) -> Result<(), LogStoreError> {
    let file = fs.open_writable(path).map_err(|e| LogStoreError::io("open", path, e))?;
    file.set_len(valid_bytes)
        .map_err(|e| LogStoreError::io("truncate", path, e))?;
    file.sync_all().map_err(|e| LogStoreError::io("fsync", path, e))
}

/// The newest entries met by the scan, at most `bytes_max` bytes of them.
struct Tail {
    entries: VecDeque<Entry>,
    record_bytes: VecDeque<u64>,
    bytes: u64,
    bytes_max: u64,
}

impl Tail {
    fn new(bytes_max: u64) -> Tail {
        Tail {
            entries: VecDeque::new(),
            record_bytes: VecDeque::new(),
            bytes: 0,
            bytes_max,
        }
    }

    /// Keeps `entry`, dropping the oldest kept ones beyond the bound.
    fn push(&mut self, entry: Entry, record_bytes: u64) {
        self.entries.push_back(entry);
        self.record_bytes.push_back(record_bytes);
        self.bytes += record_bytes;
        while self.bytes > self.bytes_max {
            self.entries.pop_front();
            self.bytes -= self.record_bytes.pop_front().unwrap_or(0);
        }
    }
}

/// Whether an entry at `index` may follow the entry at `previous` in the
/// record stream, given the last purged index.
///
/// Entries go up by one, except across purged ground: segments whose
/// entries were all purged are deleted, so an entry at or below the purge
/// point may be followed by any greater one up to `purged + 1`. (A purge
/// deletes segments without a directory fsync and goes on past a deletion
/// that fails, so any subset of the purged segments can survive a crash,
/// with holes between them: found by the simulated-disk crash test, an
/// `ENOSPC` on one deletion. Those entries are skipped anyway.) An index
/// that goes down, or skips forward in the live log, is damage (truncation
/// cuts records physically, so the stream never rewrites an index).
pub(crate) fn follows(previous: Option<u64>, index: u64, purged: Option<u64>) -> bool {
    match (previous, purged) {
        (None, None) => true,
        (None, Some(p)) => index <= p.saturating_add(1),
        (Some(q), None) => q.checked_add(1) == Some(index),
        (Some(q), Some(p)) => q.checked_add(1) == Some(index) || (q < p && q < index && index <= p.saturating_add(1)),
    }
}

/// The segment numbers in `dir`, ascending.
fn list_segments(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<u64>, LogStoreError> {
    let mut seqs = Vec::new();
    for name in fs.list_dir(dir).map_err(|e| LogStoreError::io("list", dir, e))? {
        if let Some(seq) = parse_segment_name(&name) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

#[cfg(test)]
mod tests {
    use super::follows;

    #[test]
    fn entries_follow_by_one_or_jump_over_purged_ground() {
        // Recovery must accept every stream the store writes and nothing with a hole in the live log.
        assert!(follows(None, 0, None));
        assert!(follows(None, 7, None), "segments below were deleted after a purge");
        assert!(follows(None, 3, Some(5)), "a purged entry, skipped");
        assert!(follows(None, 6, Some(5)));
        assert!(!follows(None, 7, Some(5)), "hole after the purge point");
        assert!(follows(Some(4), 5, None));
        assert!(!follows(Some(4), 4, None), "index rewritten");
        assert!(!follows(Some(4), 6, None), "hole");
        assert!(
            follows(Some(4), 11, Some(10)),
            "purged past the log's end, then appended"
        );
        assert!(!follows(Some(4), 12, Some(10)));
        assert!(
            follows(Some(8), 10, Some(10)),
            "a hole within purged ground: a purged segment whose deletion failed"
        );
        assert!(!follows(Some(8), 8, Some(10)), "index rewritten in purged ground");
        assert!(!follows(Some(11), 11, Some(10)));
    }
}
