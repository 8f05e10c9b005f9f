//! The memtable: recent writes in a concurrent skip list of internal keys.
//!
//! One writer at a time inserts (the group-commit leader); any number of
//! readers look up and iterate concurrently. Readers never see entries newer
//! than their snapshot sequence, so a batch being inserted is invisible until
//! its last sequence is published.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::batch::EntryIter;
use crate::error::Result;
use crate::iterator::InternalIterator;
use crate::key::{self, SequenceNumber, ValueKind};
use crate::skiplist::{Cursor, SkipList};

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
    /// Internal keys and values, in one arena.
    list: Arc<SkipList>,
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
            list: Arc::new(SkipList::new()),
            wal_number,
            last_sequence: AtomicU64::new(0),
            metadata: Mutex::new(None),
        }
    }

    /// Inserts a batch's entries with sequences from `first_sequence` on.
    pub(crate) fn insert(&self, entries: EntryIter<'_>, first_sequence: SequenceNumber, metadata: Option<&[u8]>) {
        let mut sequence = first_sequence;
        let mut internal = Vec::new();
        let mut writer = self.list.writer();
        for entry in entries {
            internal.clear();
            key::append_internal_key(&mut internal, entry.key, sequence, entry.kind);
            writer.insert(&internal, entry.value);
            sequence += 1;
        }
        drop(writer);
        if let Some(metadata) = metadata {
            *self.metadata.lock() = Some(Bytes::copy_from_slice(metadata));
        }
        self.last_sequence
            .fetch_max(sequence.saturating_sub(1), Ordering::Release);
    }

    /// The newest version of `user_key` with a sequence `<= snapshot`.
    pub(crate) fn get(&self, user_key: &[u8], snapshot: SequenceNumber) -> Option<Lookup> {
        let mut seek = [0u8; SEEK_KEY_INLINE_BYTES];
        let node = if user_key.len() + key::TRAILER_BYTES <= seek.len() {
            // Short keys (nearly all) are sought without allocating.
            let len = key::write_seek_key(&mut seek, user_key, snapshot);
            self.list.lower_bound(&seek[..len])
        } else {
            self.list.lower_bound(&key::seek_key(user_key, snapshot))
        }?;
        let entry = self.list.entry(node);
        let parsed = key::parse(entry.key)?;
        (parsed.user_key == user_key).then(|| Lookup::from_entry(parsed.kind, Bytes::copy_from_slice(entry.value)))
    }

    /// Approximate memory held, in bytes: the arena's nodes (links, keys,
    /// values and padding).
    pub(crate) fn approximate_bytes(&self) -> usize {
        self.list.node_bytes()
    }

    /// Whether nothing was inserted.
    pub(crate) fn is_empty(&self) -> bool {
        self.list.len() == 0
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
    pub(crate) fn iter(&self) -> MemtableIter {
        MemtableIter {
            cursor: Cursor::new(Arc::clone(&self.list)),
        }
    }
}

/// Bytes of the stack buffer a lookup builds its seek key in.
const SEEK_KEY_INLINE_BYTES: usize = 128;

/// A cursor over a memtable; it keeps the memtable's entries alive and
/// reads them in place.
pub(crate) struct MemtableIter {
    cursor: Cursor,
}

impl InternalIterator for MemtableIter {
    fn valid(&self) -> bool {
        self.cursor.entry().is_some()
    }

    fn seek_to_first(&mut self) -> Result<()> {
        self.cursor.seek_to_first();
        Ok(())
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        self.cursor.seek(target);
        Ok(())
    }

    fn next(&mut self) -> Result<()> {
        assert!(self.valid(), "next() on an exhausted memtable iterator");
        self.cursor.next();
        Ok(())
    }

    fn key(&self) -> &[u8] {
        self.cursor
            .entry()
            .expect("key() on an exhausted memtable iterator")
            .key
    }

    fn value(&self) -> &[u8] {
        self.cursor
            .entry()
            .expect("value() on an exhausted memtable iterator")
            .value
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
    fn iteration_yields_every_entry_in_order() {
        // The cursor must yield every entry exactly once, in internal-key order.
        let keys: Vec<Vec<u8>> = (0..300).map(|i| format!("key{i:05}").into_bytes()).collect();
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
