//! What a compaction reads: its input files merged into one cursor, cut to
//! the key range of one sub-compaction.

use std::sync::Arc;

use super::rate_limiter::RateLimiter;
use crate::error::Result;
use crate::iterator::InternalIterator;
use crate::key::{self, SEQUENCE_MAX};
use crate::merge::{LevelIterator, MergingIterator};
use crate::sstable::TableIter;
use crate::version::TableFile;

/// A cursor over one table for compaction: it reads each block once, so
/// blocks it reads from disk stay out of the block cache readers need.
fn table_cursor(file: &TableFile) -> TableIter {
    file.table.iter().without_cache_fill()
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
                .map(|files| Box::new(LevelIterator::for_compaction(files)) as Box<dyn InternalIterator>),
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
