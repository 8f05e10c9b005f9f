//! What a compaction reads: its input files merged into one cursor, cut to
//! the key range of one sub-compaction.

use std::sync::Arc;

use super::rate_limiter::RateLimiter;
use crate::error::Result;
use crate::iterator::InternalIterator;
use crate::key::{self, SEQUENCE_MAX};
use crate::merge::MergingIterator;
use crate::sstable::TableIter;
use crate::version::TableFile;

/// A cursor over one table for compaction: it reads each block once, so
/// blocks it reads from disk stay out of the block cache readers need.
fn table_cursor(file: &TableFile) -> TableIter {
    file.table.iter().without_cache_fill()
}

/// A cursor over the sorted, non-overlapping files of one level (L1 and
/// deeper) as one run, opening one table at a time.
pub(crate) struct SortedRun {
    files: Vec<Arc<TableFile>>,
    index: usize,
    current: Option<TableIter>,
}

impl SortedRun {
    /// A cursor over `files`, which must be sorted and non-overlapping.
    pub fn new(files: Vec<Arc<TableFile>>) -> Self {
        for pair in files.windows(2) {
            assert!(
                key::compare(&pair[0].meta.largest, &pair[1].meta.smallest).is_lt(),
                "a sorted run's files {} and {} overlap or are out of order",
                pair[0].meta.number,
                pair[1].meta.number
            );
        }
        SortedRun {
            files,
            index: 0,
            current: None,
        }
    }

    fn open(&mut self, index: usize) {
        self.index = index;
        self.current = self.files.get(index).map(|f| table_cursor(f));
    }

    /// Moves past exhausted files to the first entry of the next ones.
    fn skip_exhausted(&mut self) -> Result<()> {
        while self.current.as_ref().is_some_and(|c| !c.valid()) {
            self.open(self.index + 1);
            if let Some(cursor) = &mut self.current {
                cursor.seek_to_first()?;
            }
        }
        Ok(())
    }

    fn cursor(&self) -> &TableIter {
        self.current.as_ref().expect("SortedRun used while not valid")
    }
}

impl InternalIterator for SortedRun {
    fn valid(&self) -> bool {
        self.current.as_ref().is_some_and(TableIter::valid)
    }

    fn seek_to_first(&mut self) -> Result<()> {
        self.open(0);
        if let Some(cursor) = &mut self.current {
            cursor.seek_to_first()?;
        }
        self.skip_exhausted()
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        let index = self
            .files
            .partition_point(|f| key::compare(&f.meta.largest, target).is_lt());
        self.open(index);
        if let Some(cursor) = &mut self.current {
            cursor.seek(target)?;
        }
        self.skip_exhausted()
    }

    fn next(&mut self) -> Result<()> {
        let cursor = self.current.as_mut().expect("SortedRun::next called while not valid");
        cursor.next()?;
        self.skip_exhausted()
    }

    fn key(&self) -> &[u8] {
        self.cursor().key()
    }

    fn value(&self) -> &[u8] {
        self.cursor().value()
    }
}

/// The merged inputs of one sub-compaction: every entry whose user key is
/// in `[start, end)` (`None`: unbounded), in internal-key order, at most as
/// fast as the rate limiter allows (counting keys and values merged).
pub(crate) struct RangeInput {
    merged: MergingIterator,
    start: Option<Vec<u8>>,
    end: Option<Vec<u8>>,
    /// Bounds the bytes per second yielded, if set.
    limiter: Option<Arc<RateLimiter>>,
    /// Bytes yielded and not yet asked of the limiter.
    unlimited_bytes: u64,
}

/// Bytes a compaction input merges between two requests to the rate
/// limiter: small enough to pace smoothly, large enough that the limiter's
/// lock is rare.
const RATE_LIMIT_CHUNK_BYTES: u64 = 64 * 1024;

impl RangeInput {
    /// Merges `level0` (overlapping tables, each its own cursor) and `runs`
    /// (sorted runs) and positions the cursor at the first entry at or
    /// after `start`.
    pub fn open(
        level0: &[Arc<TableFile>],
        runs: Vec<Vec<Arc<TableFile>>>,
        start: Option<Vec<u8>>,
        end: Option<Vec<u8>>,
        limiter: Option<Arc<RateLimiter>>,
    ) -> Result<Self> {
        if let (Some(start), Some(end)) = (&start, &end) {
            assert!(start < end, "a sub-compaction's range is empty or reversed");
        }
        let mut children: Vec<Box<dyn InternalIterator>> = Vec::new();
        children.extend(
            level0
                .iter()
                .map(|f| Box::new(table_cursor(f)) as Box<dyn InternalIterator>),
        );
        children.extend(
            runs.into_iter()
                .filter(|files| !files.is_empty())
                .map(|files| Box::new(SortedRun::new(files)) as Box<dyn InternalIterator>),
        );
        let mut input = RangeInput {
            merged: MergingIterator::new(children),
            start,
            end,
            limiter,
            unlimited_bytes: 0,
        };
        input.seek_to_first()?;
        Ok(input)
    }
}

impl InternalIterator for RangeInput {
    fn valid(&self) -> bool {
        self.merged.valid()
            && self
                .end
                .as_deref()
                .is_none_or(|end| key::user_key(self.merged.key()) < end)
    }

    fn seek_to_first(&mut self) -> Result<()> {
        match &self.start {
            // The newest entry of `start` sorts first among its entries.
            Some(start) => self.merged.seek(&key::seek_key(start, SEQUENCE_MAX)),
            None => self.merged.seek_to_first(),
        }
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        match &self.start {
            Some(start) if key::user_key(target) < start.as_slice() => self.seek_to_first(),
            _ => self.merged.seek(target),
        }
    }

    fn next(&mut self) -> Result<()> {
        if let Some(limiter) = &self.limiter {
            self.unlimited_bytes += (self.merged.key().len() + self.merged.value().len()) as u64;
            if self.unlimited_bytes >= RATE_LIMIT_CHUNK_BYTES {
                limiter.request(std::mem::take(&mut self.unlimited_bytes));
            }
        }
        self.merged.next()
    }

    fn key(&self) -> &[u8] {
        self.merged.key()
    }

    fn value(&self) -> &[u8] {
        self.merged.value()
    }
}
