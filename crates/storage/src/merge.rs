//! Merging many sorted cursors into one, and reading a whole level as one.

use std::cmp::Ordering;
use std::sync::Arc;

use crate::error::Result;
use crate::iterator::InternalIterator;
use crate::key;
use crate::sstable::TableIter;
use crate::version::TableFile;

/// The union of several cursors, in internal-key order.
///
/// Internal keys are unique across sources (every write has its own
/// sequence number), so no tie-breaking is needed. With the handful of
/// sources an LSM tree has (memtables, L0 files, one per deeper level) a
/// linear scan for the smallest key beats a heap.
pub(crate) struct MergingIterator {
    children: Vec<Box<dyn InternalIterator>>,
    current: Option<usize>,
}

impl MergingIterator {
    /// Merges `children`.
    pub fn new(children: Vec<Box<dyn InternalIterator>>) -> Self {
        MergingIterator {
            children,
            current: None,
        }
    }

    fn find_smallest(&mut self) {
        let mut smallest: Option<usize> = None;
        for (index, child) in self.children.iter().enumerate() {
            if !child.valid() {
                continue;
            }
            smallest = match smallest {
                Some(best) if key::compare(child.key(), self.children[best].key()) != Ordering::Less => Some(best),
                _ => Some(index),
            };
        }
        self.current = smallest;
    }
}

impl InternalIterator for MergingIterator {
    fn valid(&self) -> bool {
        self.current.is_some()
    }

    fn seek_to_first(&mut self) -> Result<()> {
        for child in &mut self.children {
            child.seek_to_first()?;
        }
        self.find_smallest();
        Ok(())
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        for child in &mut self.children {
            child.seek(target)?;
        }
        self.find_smallest();
        Ok(())
    }

    fn next(&mut self) -> Result<()> {
        let current = self.current.expect("next() on an exhausted merging iterator");
        self.children[current].next()?;
        self.find_smallest();
        Ok(())
    }

    fn key(&self) -> &[u8] {
        let current = self.current.expect("key() on an exhausted merging iterator");
        self.children[current].key()
    }

    fn value(&self) -> &[u8] {
        let current = self.current.expect("value() on an exhausted merging iterator");
        self.children[current].value()
    }
}

/// A cursor over the non-overlapping, sorted files of one level (L1+),
/// opening one table at a time.
pub(crate) struct LevelIterator {
    files: Vec<Arc<TableFile>>,
    index: usize,
    current: Option<TableIter>,
}

impl LevelIterator {
    /// A cursor over `files`, which must be sorted and non-overlapping.
    pub fn new(files: Vec<Arc<TableFile>>) -> Self {
        LevelIterator {
            files,
            index: 0,
            current: None,
        }
    }

    fn open(&mut self, index: usize) {
        self.index = index;
        self.current = self.files.get(index).map(|f| f.table.iter());
    }

    /// Moves past exhausted files to the first entry of the next ones.
    fn skip_exhausted(&mut self) -> Result<()> {
        while let Some(iter) = &self.current {
            if iter.valid() {
                break;
            }
            self.open(self.index + 1);
            if let Some(iter) = &mut self.current {
                iter.seek_to_first()?;
            }
        }
        Ok(())
    }
}

impl InternalIterator for LevelIterator {
    fn valid(&self) -> bool {
        self.current.as_ref().is_some_and(|i| i.valid())
    }

    fn seek_to_first(&mut self) -> Result<()> {
        self.open(0);
        if let Some(iter) = &mut self.current {
            iter.seek_to_first()?;
        }
        self.skip_exhausted()
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        let index = self
            .files
            .partition_point(|f| key::compare(&f.meta.largest, target) == Ordering::Less);
        self.open(index);
        if let Some(iter) = &mut self.current {
            iter.seek(target)?;
        }
        self.skip_exhausted()
    }

    fn next(&mut self) -> Result<()> {
        let iter = self.current.as_mut().expect("next() on an exhausted level iterator");
        iter.next()?;
        self.skip_exhausted()
    }

    fn key(&self) -> &[u8] {
        self.current
            .as_ref()
            .expect("key() on an exhausted level iterator")
            .key()
    }

    fn value(&self) -> &[u8] {
        self.current
            .as_ref()
            .expect("value() on an exhausted level iterator")
            .value()
    }
}
