//! The user-facing cursor: the newest visible version of each key in a
//! range, tombstones hidden, over a fixed snapshot.

use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::iterator::InternalIterator;
use crate::key::{self, SequenceNumber, ValueKind};
use crate::merge::MergingIterator;
use crate::version::Version;

/// An iterator over `(key, value)` pairs in key order, as of one snapshot.
///
/// It pins the memtables and table files it reads, so it keeps seeing the
/// same data however long it lives; hold it only as long as needed, as the
/// pinned files cannot be deleted meanwhile. Take a prefix with
/// [`Iterator::take`] to bound a scan.
pub struct DbIter {
    merged: MergingIterator,
    /// The files being read: where values kept in blob files are read from.
    version: Arc<Version>,
    snapshot: SequenceNumber,
    start: Bound<Vec<u8>>,
    end: Bound<Vec<u8>>,
    last_user_key: Vec<u8>,
    has_last: bool,
    state: IterState,
}

enum IterState {
    NotStarted,
    Running,
    Done,
}

/// One step of [`DbIter::next_bounded`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundedStep {
    /// The next visible pair.
    Pair(Bytes, Bytes),
    /// The step budget ran out among tombstones or old versions; the scan
    /// can resume at this user key (inclusive). The cursor is finished.
    Paused(Bytes),
    /// No pair is left in the range.
    End,
}

impl DbIter {
    pub(crate) fn new(
        merged: MergingIterator,
        version: Arc<Version>,
        snapshot: SequenceNumber,
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
    ) -> Self {
        DbIter {
            merged,
            version,
            snapshot,
            start,
            end,
            last_user_key: Vec::new(),
            has_last: false,
            state: IterState::NotStarted,
        }
    }

    fn position(&mut self) -> Result<()> {
        match &self.start {
            Bound::Unbounded => self.merged.seek_to_first(),
            Bound::Included(start) | Bound::Excluded(start) => {
                let target = key::seek_key(start, self.snapshot);
                self.merged.seek(&target)
            }
        }
    }

    fn before_end(&self, user_key: &[u8]) -> bool {
        match &self.end {
            Bound::Unbounded => true,
            Bound::Included(end) => user_key <= end.as_slice(),
            Bound::Excluded(end) => user_key < end.as_slice(),
        }
    }

    fn advance(&mut self) -> Result<Option<(Bytes, Bytes)>> {
        match self.advance_bounded(u64::MAX)? {
            BoundedStep::Pair(key, value) => Ok(Some((key, value))),
            BoundedStep::Paused(_) | BoundedStep::End => Ok(None),
        }
    }

    /// Like [`Iterator::next`], but stepping over at most about
    /// `steps_max` internal entries (tombstones, hidden versions) before it
    /// pauses at the next key, so a range over many deletions does bounded
    /// work per call. After `Paused`, `End` or an error the cursor is done.
    pub fn next_bounded(&mut self, steps_max: u64) -> Result<BoundedStep> {
        if matches!(self.state, IterState::Done) {
            return Ok(BoundedStep::End);
        }
        let step = self.advance_bounded(steps_max);
        if !matches!(step, Ok(BoundedStep::Pair(..))) {
            self.state = IterState::Done;
        }
        step
    }

    fn advance_bounded(&mut self, steps_max: u64) -> Result<BoundedStep> {
        let mut steps: u64 = 0;
        if matches!(self.state, IterState::NotStarted) {
            self.state = IterState::Running;
            self.position()?;
        } else {
            self.merged.next()?;
        }
        while self.merged.valid() {
            let parsed = key::parse(self.merged.key())
                .ok_or_else(|| Error::corruption("<merged iterator>", 0, "malformed internal key"))?;
            let is_visible = parsed.sequence <= self.snapshot;
            let is_newest_version = !self.has_last || parsed.user_key != self.last_user_key.as_slice();
            let after_start = !matches!(&self.start, Bound::Excluded(s) if parsed.user_key == s.as_slice());
            if is_visible && is_newest_version {
                if !self.before_end(parsed.user_key) {
                    return Ok(BoundedStep::End);
                }
                if steps >= steps_max && !parsed.kind.has_value() {
                    return Ok(BoundedStep::Paused(Bytes::copy_from_slice(parsed.user_key)));
                }
                self.last_user_key.clear();
                self.last_user_key.extend_from_slice(parsed.user_key);
                self.has_last = true;
                if parsed.kind.has_value() && after_start {
                    let value = match parsed.kind {
                        ValueKind::Blob => self.version.read_blob(self.merged.value())?,
                        _ => Bytes::copy_from_slice(self.merged.value()),
                    };
                    return Ok(BoundedStep::Pair(Bytes::copy_from_slice(parsed.user_key), value));
                }
            }
            steps += 1;
            self.merged.next()?;
        }
        Ok(BoundedStep::End)
    }
}

impl Iterator for DbIter {
    type Item = Result<(Bytes, Bytes)>;

    fn next(&mut self) -> Option<Self::Item> {
        if matches!(self.state, IterState::Done) {
            return None;
        }
        let item = self.advance();
        if !matches!(item, Ok(Some(_))) {
            // After the end or an error the cursor stays finished.
            self.state = IterState::Done;
        }
        item.transpose()
    }
}
