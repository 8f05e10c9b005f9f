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
/// The positioned children form a binary min-heap on their current keys,
/// so a step costs one child's `next` and a sift of about log2(children)
/// comparisons — usually one or two, as a scan tends to stay in one child
/// for a while. Internal keys are unique across sources (every write has
/// its own sequence number), so no tie-breaking is needed.
pub(crate) struct MergingIterator {
    children: Vec<Box<dyn InternalIterator>>,
    /// Indexes of the valid children; `heap[0]` is on the smallest key.
    heap: Vec<usize>,
}

impl MergingIterator {
    /// Merges `children`.
    pub fn new(children: Vec<Box<dyn InternalIterator>>) -> Self {
        let heap = Vec::with_capacity(children.len());
        MergingIterator { children, heap }
    }

    /// Rebuilds the heap from every valid child.
    fn build_heap(&mut self) {
        self.heap.clear();
        self.heap
            .extend((0..self.children.len()).filter(|&i| self.children[i].valid()));
        for position in (0..self.heap.len() / 2).rev() {
            self.sift_down(position);
        }
    }

    fn is_less(&self, a: usize, b: usize) -> bool {
        key::compare(self.children[self.heap[a]].key(), self.children[self.heap[b]].key()) == Ordering::Less
    }

    /// Moves the entry at `position` down until both children are larger.
    fn sift_down(&mut self, mut position: usize) {
        loop {
            let left = 2 * position + 1;
            if left >= self.heap.len() {
                return;
            }
            let right = left + 1;
            let smaller = if right < self.heap.len() && self.is_less(right, left) {
                right
            } else {
                left
            };
            if !self.is_less(smaller, position) {
                return;
            }
            self.heap.swap(position, smaller);
            position = smaller;
        }
    }

    fn current(&self) -> &dyn InternalIterator {
        let top = *self.heap.first().expect("the merging iterator is exhausted");
        &*self.children[top]
    }
}

impl InternalIterator for MergingIterator {
    fn valid(&self) -> bool {
        !self.heap.is_empty()
    }

    fn seek_to_first(&mut self) -> Result<()> {
        for child in &mut self.children {
            child.seek_to_first()?;
        }
        self.build_heap();
        Ok(())
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        for child in &mut self.children {
            child.seek(target)?;
        }
        self.build_heap();
        Ok(())
    }

    fn next(&mut self) -> Result<()> {
        let top = *self.heap.first().expect("next() on an exhausted merging iterator");
        self.children[top].next()?;
        if !self.children[top].valid() {
            self.heap.swap_remove(0);
        }
        self.sift_down(0);
        Ok(())
    }

    fn key(&self) -> &[u8] {
        self.current().key()
    }

    fn value(&self) -> &[u8] {
        self.current().value()
    }
}

/// A cursor over the non-overlapping, sorted files of one level (L1+),
/// opening one table at a time.
pub(crate) struct LevelIterator {
    files: Vec<Arc<TableFile>>,
    index: usize,
    current: Option<TableIter>,
    /// Whether blocks read from disk go into the block cache.
    fill_cache: bool,
}

impl LevelIterator {
    /// A cursor over `files`, which must be sorted and non-overlapping.
    pub fn new(files: Vec<Arc<TableFile>>) -> Self {
        for pair in files.windows(2) {
            assert!(
                key::compare(&pair[0].meta.largest, &pair[1].meta.smallest).is_lt(),
                "a level's files {} and {} overlap or are out of order",
                pair[0].meta.number,
                pair[1].meta.number
            );
        }
        LevelIterator {
            files,
            index: 0,
            current: None,
            fill_cache: true,
        }
    }

    /// Like [`LevelIterator::new`], for compaction: blocks read from disk
    /// stay out of the block cache (a merge reads each once, and must not
    /// evict the blocks readers use).
    pub fn for_compaction(files: Vec<Arc<TableFile>>) -> Self {
        LevelIterator {
            fill_cache: false,
            ..LevelIterator::new(files)
        }
    }

    fn open(&mut self, index: usize) {
        self.index = index;
        self.current = self.files.get(index).map(|f| match self.fill_cache {
            true => f.table.iter(),
            false => f.table.iter().without_cache_fill(),
        });
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::key::{internal_key, InternalKey, ValueKind};

    /// A cursor over sorted owned entries.
    struct VecIter {
        entries: Vec<(Vec<u8>, Vec<u8>)>,
        position: usize,
    }

    impl InternalIterator for VecIter {
        fn valid(&self) -> bool {
            self.position < self.entries.len()
        }
        fn seek_to_first(&mut self) -> Result<()> {
            self.position = 0;
            Ok(())
        }
        fn seek(&mut self, target: &[u8]) -> Result<()> {
            self.position = self
                .entries
                .partition_point(|(k, _)| key::compare(k, target) == Ordering::Less);
            Ok(())
        }
        fn next(&mut self) -> Result<()> {
            self.position += 1;
            Ok(())
        }
        fn key(&self) -> &[u8] {
            &self.entries[self.position].0
        }
        fn value(&self) -> &[u8] {
            &self.entries[self.position].1
        }
    }

    #[test]
    fn the_merge_yields_the_sorted_union_from_any_seek() {
        // Whatever the children hold, the merge must walk their union in key order from any target.
        let seed = fastrand::u64(..);
        println!("seed {seed}");
        let mut rng = fastrand::Rng::with_seed(seed);
        for _round in 0..50 {
            let mut all = BTreeSet::new();
            let mut children: Vec<Box<dyn InternalIterator>> = Vec::new();
            let mut sequence = 0;
            for _child in 0..rng.usize(0..9) {
                let mut entries = Vec::new();
                for _ in 0..rng.usize(0..40) {
                    sequence += 1;
                    let key = internal_key(format!("k{:03}", rng.u32(..60)).as_bytes(), sequence, ValueKind::Put);
                    all.insert(InternalKey(key.clone().into()));
                    entries.push((key, sequence.to_le_bytes().to_vec()));
                }
                entries.sort_by(|a, b| key::compare(&a.0, &b.0));
                children.push(Box::new(VecIter { entries, position: 0 }));
            }
            let mut merged = MergingIterator::new(children);
            let target = internal_key(
                format!("k{:03}", rng.u32(..61)).as_bytes(),
                rng.u64(..=sequence),
                ValueKind::Put,
            );
            merged.seek(&target).expect("seek");
            let expected: Vec<_> = all.range(InternalKey(target.into())..).map(|k| k.0.to_vec()).collect();
            let mut seen = Vec::new();
            while merged.valid() {
                let sequence_of_key = key::parse(merged.key()).expect("valid key").sequence;
                assert_eq!(merged.value(), sequence_of_key.to_le_bytes(), "value of another key");
                seen.push(merged.key().to_vec());
                merged.next().expect("next");
            }
            assert_eq!(seen, expected);
        }
    }
}
