//! The memtable: recent writes in a concurrent skip list of internal keys.
//!
//! One writer at a time inserts (the group-commit leader); any number of
//! readers look up and iterate concurrently. Readers never see entries newer
//! than their snapshot sequence, so a batch being inserted is invisible until
//! its last sequence is published.

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_skiplist::SkipMap;
use parking_lot::Mutex;

use crate::batch::EntryIter;
use crate::error::Result;
use crate::iterator::InternalIterator;
use crate::key::{self, InternalKey, SequenceNumber, ValueKind};

/// Bytes charged per entry on top of its key and value: the skip-list node,
/// its tower and two reference-counted buffers, roughly.
const ENTRY_OVERHEAD_BYTES: usize = 96;
/// Entries a memtable iterator copies out per refill.
const ITER_CHUNK_ENTRIES: usize = 64;

/// What a point lookup found in one memtable or table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The newest visible version is a value.
    Found(Bytes),
    /// The newest visible version is a tombstone.
    Deleted,
}

impl Lookup {
    /// Interprets the kind and value of the entry a lookup landed on.
    pub(crate) fn from_entry(kind: ValueKind, value: Bytes) -> Self {
        match kind {
            ValueKind::Put => Lookup::Found(value),
            ValueKind::Delete => Lookup::Deleted,
        }
    }
}

/// A sorted in-memory table of writes.
#[derive(Debug)]
pub(crate) struct Memtable {
    map: SkipMap<InternalKey, Bytes>,
    approximate_bytes: AtomicUsize,
    /// The WAL file that logs this memtable's writes (and every older one
    /// not yet flushed).
    wal_number: u64,
    last_sequence: AtomicU64,
    /// Metadata of the newest batch inserted that carried some.
    metadata: Mutex<Option<Bytes>>,
}

impl Memtable {
    /// An empty memtable whose writes are logged to WAL `wal_number`.
    pub(crate) fn new(wal_number: u64) -> Self {
        Memtable {
            map: SkipMap::new(),
            approximate_bytes: AtomicUsize::new(0),
            wal_number,
            last_sequence: AtomicU64::new(0),
            metadata: Mutex::new(None),
        }
    }

    /// Inserts a batch's entries with sequences from `first_sequence` on.
    pub(crate) fn insert(&self, entries: EntryIter<'_>, first_sequence: SequenceNumber, metadata: Option<&[u8]>) {
        let mut sequence = first_sequence;
        let mut added_bytes = 0;
        for entry in entries {
            let internal = key::internal_key(entry.key, sequence, entry.kind);
            added_bytes += internal.len() + entry.value.len() + ENTRY_OVERHEAD_BYTES;
            self.map
                .insert(InternalKey(Bytes::from(internal)), Bytes::copy_from_slice(entry.value));
            sequence += 1;
        }
        if let Some(metadata) = metadata {
            *self.metadata.lock() = Some(Bytes::copy_from_slice(metadata));
        }
        self.last_sequence
            .fetch_max(sequence.saturating_sub(1), Ordering::Release);
        self.approximate_bytes.fetch_add(added_bytes, Ordering::Relaxed);
    }

    /// The newest version of `user_key` with a sequence `<= snapshot`.
    pub(crate) fn get(&self, user_key: &[u8], snapshot: SequenceNumber) -> Option<Lookup> {
        let seek = InternalKey(Bytes::from(key::seek_key(user_key, snapshot)));
        let entry = self.map.lower_bound(Bound::Included(&seek))?;
        let parsed = key::parse(&entry.key().0)?;
        (parsed.user_key == user_key).then(|| Lookup::from_entry(parsed.kind, entry.value().clone()))
    }

    /// Approximate memory held, in bytes.
    pub(crate) fn approximate_bytes(&self) -> usize {
        self.approximate_bytes.load(Ordering::Relaxed)
    }

    /// Whether nothing was inserted.
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The WAL holding this memtable's writes.
    pub(crate) fn wal_number(&self) -> u64 {
        self.wal_number
    }

    /// The largest sequence inserted (0 if none).
    pub(crate) fn last_sequence(&self) -> SequenceNumber {
        self.last_sequence.load(Ordering::Acquire)
    }

    /// Metadata of the newest batch inserted that carried some.
    pub(crate) fn metadata(&self) -> Option<Bytes> {
        self.metadata.lock().clone()
    }

    /// A cursor over every entry (all versions, tombstones included).
    pub(crate) fn iter(self: &Arc<Self>) -> MemtableIter {
        MemtableIter {
            table: Arc::clone(self),
            chunk: Vec::with_capacity(ITER_CHUNK_ENTRIES),
            pos: 0,
            more_after_chunk: false,
        }
    }
}

/// A cursor over a memtable.
///
/// Skip-list entries borrow the list, so rather than hold a borrow the
/// cursor copies out chunks of entries (reference-counted, so a copy is
/// two counter increments) and re-seeks past the last one when a chunk is
/// used up.
pub(crate) struct MemtableIter {
    table: Arc<Memtable>,
    chunk: Vec<(InternalKey, Bytes)>,
    pos: usize,
    more_after_chunk: bool,
}

impl MemtableIter {
    fn fill_from(&mut self, start: Bound<&InternalKey>) {
        let mut chunk = std::mem::take(&mut self.chunk);
        chunk.clear();
        let mut range = self.table.map.range((start, Bound::Unbounded));
        for entry in range.by_ref().take(ITER_CHUNK_ENTRIES) {
            chunk.push((entry.key().clone(), entry.value().clone()));
        }
        self.more_after_chunk = chunk.len() == ITER_CHUNK_ENTRIES;
        self.chunk = chunk;
        self.pos = 0;
    }
}

impl InternalIterator for MemtableIter {
    fn valid(&self) -> bool {
        self.pos < self.chunk.len()
    }

    fn seek_to_first(&mut self) -> Result<()> {
        self.fill_from(Bound::Unbounded);
        Ok(())
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        let target = InternalKey(Bytes::copy_from_slice(target));
        self.fill_from(Bound::Included(&target));
        Ok(())
    }

    fn next(&mut self) -> Result<()> {
        assert!(self.valid(), "next() on an exhausted memtable iterator");
        self.pos += 1;
        if self.pos == self.chunk.len() && self.more_after_chunk {
            let last = self.chunk[self.pos - 1].0.clone();
            self.fill_from(Bound::Excluded(&last));
        }
        Ok(())
    }

    fn key(&self) -> &[u8] {
        &self.chunk[self.pos].0 .0
    }

    fn value(&self) -> &[u8] {
        &self.chunk[self.pos].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::WriteBatch;

    fn memtable_with(writes: &[(&[u8], Option<&[u8]>)]) -> Arc<Memtable> {
        let table = Arc::new(Memtable::new(1));
        for (i, (k, v)) in writes.iter().enumerate() {
            let mut batch = WriteBatch::new();
            match v {
                Some(v) => batch.put(k, v),
                None => batch.delete(k),
            };
            table.insert(batch.entries(), i as u64 + 1, None);
        }
        table
    }

    #[test]
    fn lookups_honour_snapshots_and_tombstones() {
        // A reader at an older snapshot must see the version current at that snapshot.
        let table = memtable_with(&[(b"k", Some(b"v1")), (b"k", Some(b"v2")), (b"k", None)]);
        assert_eq!(table.get(b"k", 1), Some(Lookup::Found(Bytes::from_static(b"v1"))));
        assert_eq!(table.get(b"k", 2), Some(Lookup::Found(Bytes::from_static(b"v2"))));
        assert_eq!(table.get(b"k", 3), Some(Lookup::Deleted));
        assert_eq!(table.get(b"k", 0), None);
        assert_eq!(table.get(b"j", 3), None);
        assert_eq!(table.last_sequence(), 3);
    }

    #[test]
    fn iteration_crosses_chunk_boundaries_in_order() {
        // The chunked cursor must yield every entry exactly once, in internal-key order.
        let keys: Vec<Vec<u8>> = (0..(ITER_CHUNK_ENTRIES * 3 + 5))
            .map(|i| format!("key{i:05}").into_bytes())
            .collect();
        let writes: Vec<(&[u8], Option<&[u8]>)> = keys.iter().rev().map(|k| (k.as_slice(), Some(&b"v"[..]))).collect();
        let table = memtable_with(&writes);
        let mut iter = table.iter();
        iter.seek_to_first().expect("seek");
        let mut seen = Vec::new();
        while iter.valid() {
            seen.push(key::user_key(iter.key()).to_vec());
            iter.next().expect("next");
        }
        assert_eq!(seen, keys);
        iter.seek(&key::seek_key(b"key00100", u64::MAX >> 8)).expect("seek");
        assert_eq!(key::user_key(iter.key()), b"key00100");
    }
}
