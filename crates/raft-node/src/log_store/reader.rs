//! The in-memory log and the cheap, cloneable reader over it.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::{OptionalSend, RaftLogReader};
use parking_lot::RwLock;

use crate::types::{Entry, LogId, StorageError, TypeConfig};

/// A live entry and where its record starts on disk.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    /// The entry.
    pub(crate) entry: Entry,
    /// The segment holding its record.
    pub(crate) segment: u64,
    /// Byte offset of its record in that segment.
    pub(crate) offset: u64,
}

/// Every live (appended, not purged, not truncated) entry, contiguous by
/// index.
#[derive(Debug, Default)]
pub(crate) struct Log {
    slots: VecDeque<Slot>,
}

impl Log {
    /// The index of the first live entry.
    pub(crate) fn first_index(&self) -> Option<u64> {
        self.slots.front().map(|s| s.entry.log_id.index)
    }

    /// The log id of the last live entry.
    pub(crate) fn last_log_id(&self) -> Option<LogId> {
        self.slots.back().map(|s| s.entry.log_id)
    }

    /// The slot of the entry at `index`, if it is live.
    pub(crate) fn slot(&self, index: u64) -> Option<&Slot> {
        let first = self.first_index()?;
        let position = usize::try_from(index.checked_sub(first)?).ok()?;
        self.slots.get(position)
    }

    /// Adds the next entry.
    pub(crate) fn push(&mut self, slot: Slot) {
        if let Some(last) = self.last_log_id() {
            assert_eq!(
                slot.entry.log_id.index,
                last.index + 1,
                "in-memory log entries must be contiguous"
            );
        }
        self.slots.push_back(slot);
    }

    /// Removes every entry at or after `index`.
    pub(crate) fn truncate_from(&mut self, index: u64) {
        let Some(first) = self.first_index() else { return };
        let keep = usize::try_from(index.saturating_sub(first)).unwrap_or(usize::MAX);
        self.slots.truncate(keep);
    }

    /// Removes every entry at or before `index`.
    pub(crate) fn purge_upto(&mut self, index: u64) {
        while self.slots.front().is_some_and(|s| s.entry.log_id.index <= index) {
            self.slots.pop_front();
        }
    }

    /// Clones of the live entries in `[start, end)`.
    fn range(&self, start: u64, end: u64) -> Vec<Entry> {
        let Some(first) = self.first_index() else {
            return Vec::new();
        };
        let len = self.slots.len() as u64;
        let lo = start.max(first) - first;
        let hi = end.min(first + len).saturating_sub(first);
        if lo >= hi {
            return Vec::new();
        }
        // lo < hi <= len, and len is a usize.
        self.slots
            .range(lo as usize..hi as usize)
            .map(|s| s.entry.clone())
            .collect()
    }
}

/// A read handle on the log, shared with the store: entries are readable
/// through it as soon as `append` returns. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct LogReader {
    pub(crate) log: Arc<RwLock<Log>>,
}

impl LogReader {
    /// The live entries whose index lies in `range` (none for indexes that
    /// are purged or not yet appended).
    pub fn entries(&self, range: impl RangeBounds<u64>) -> Vec<Entry> {
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
        self.log.read().range(start, end)
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self.entries(range))
    }
}
