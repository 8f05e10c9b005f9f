//! The memtable: recent writes in a concurrent skip list of internal keys.
//!
//! One writer at a time inserts (the group-commit leader); any number of
//! readers look up and iterate concurrently. Readers never see entries newer
//! than their snapshot sequence, so a batch being inserted is invisible until
//! its last sequence is published.
//!
//! A small bloom filter over the user keys inserted ([`KeyFilter`]) answers
//! most lookups of keys the memtable does not hold without searching the
//! skip list: under a mixed load most point reads miss the memtable, and
//! the skip list search (a cache miss per level) was the largest cost of
//! `readwhilewriting`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::batch::EntryIter;
use crate::error::Result;
use crate::iterator::InternalIterator;
use crate::key::{self, SequenceNumber, ValueKind};
use crate::skiplist::{Cursor, SkipList};
use crate::sstable::{bloom_hash, line_probe_positions, FILTER_LINE_BITS};

/// What a point lookup found in one memtable or table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The newest visible version is a value.
    Found(Bytes),
    /// The newest visible version is a tombstone.
    Deleted,
    /// The newest visible version is a value in a blob file, at this
    /// encoded pointer (only tables hold such entries).
    Blob(Bytes),
}

impl Lookup {
    /// Interprets the kind and value of the entry a lookup landed on.
    pub(crate) fn from_entry(kind: ValueKind, value: Bytes) -> Self {
        match kind {
            ValueKind::Put => Lookup::Found(value),
            ValueKind::Delete => Lookup::Deleted,
            ValueKind::Blob => Lookup::Blob(value),
        }
    }
}

/// A sorted in-memory table of writes.
#[derive(Debug)]
pub(crate) struct Memtable {
    /// Internal keys and values, in one arena.
    list: Arc<SkipList>,
    /// Every user key inserted is in it (see [`KeyFilter`]).
    filter: KeyFilter,
    /// The WAL file that logs this memtable's writes (and every older one
    /// not yet flushed).
    wal_number: u64,
    last_sequence: AtomicU64,
    /// Metadata of the newest batch inserted that carried some.
    metadata: Mutex<Option<Bytes>>,
}

impl Memtable {
    /// An empty memtable whose writes are logged to WAL `wal_number`,
    /// expected to hold about `capacity_bytes` (it sizes the key filter;
    /// more only makes the filter less selective).
    pub(crate) fn new(wal_number: u64, capacity_bytes: usize) -> Self {
        Memtable {
            list: Arc::new(SkipList::new()),
            filter: KeyFilter::new(capacity_bytes),
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
            // Into the filter first: a reader that can see the entry (its
            // sequence published below, with Release) sees the bits too.
            self.filter.add(entry.key);
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
        if !self.filter.may_contain(user_key) {
            return None;
        }
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

    /// Approximate memory held by entries, in bytes: the arena's nodes
    /// (links, keys, values and padding). The key filter adds a fixed
    /// 1/64 of the capacity on top ([`FILTER_CAPACITY_BYTES_PER_BIT`]).
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

/// Memtable capacity per bit of its key filter, in bytes: the filter is
/// 1/64 of the memtable (1 MiB for the default 64 MiB). An entry of a
/// 16-byte key and a 100-byte value takes about 150 bytes of arena, so
/// about 19 bits per key (a false-positive rate well under 1%); entries
/// of 64 bytes still get 8 bits (about 2-3%).
const FILTER_CAPACITY_BYTES_PER_BIT: usize = 8;
/// Probes per key in the memtable's filter, all in one 64-byte line.
const FILTER_PROBES: usize = 6;

/// A bloom filter over the user keys of one memtable, filled as entries
/// are inserted and read concurrently: a lookup that it rules out skips
/// the skip list. Probes are cache-local like the tables' filters (one
/// 64-byte line per key, [`line_probe_positions`]). Bits are only ever
/// set, so a key once added tests present forever; the memory order that
/// makes a reader see them is the memtable's publication of sequences
/// (see [`Memtable::insert`]).
#[derive(Debug)]
struct KeyFilter {
    /// The bit array, a whole number of lines.
    words: Box<[AtomicU64]>,
    /// Lines of [`FILTER_LINE_BITS`] bits.
    lines: u64,
}

impl KeyFilter {
    /// A filter for a memtable of about `capacity_bytes`.
    fn new(capacity_bytes: usize) -> Self {
        let bits = (capacity_bytes / FILTER_CAPACITY_BYTES_PER_BIT) as u64;
        let lines = bits.div_ceil(FILTER_LINE_BITS).max(1);
        let words = (lines * FILTER_LINE_BITS / 64) as usize;
        KeyFilter {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            lines,
        }
    }

    /// Adds `user_key`.
    fn add(&self, user_key: &[u8]) {
        for bit in line_probe_positions(bloom_hash(user_key), self.lines, FILTER_PROBES) {
            // Relaxed: the memtable's Release of the entry's sequence orders it.
            self.words[(bit / 64) as usize].fetch_or(1 << (bit % 64), Ordering::Relaxed);
        }
    }

    /// Whether `user_key` may have been added: `false` means it never was.
    fn may_contain(&self, user_key: &[u8]) -> bool {
        line_probe_positions(bloom_hash(user_key), self.lines, FILTER_PROBES)
            .all(|bit| self.words[(bit / 64) as usize].load(Ordering::Relaxed) & (1 << (bit % 64)) != 0)
    }
}

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
        let table = Arc::new(Memtable::new(1, 1 << 20));
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
    fn the_key_filter_never_rules_out_an_inserted_key_and_rules_out_most_others() {
        // A false negative would hide a write; false positives only cost a search.
        let capacity = 1 << 20;
        let filter = KeyFilter::new(capacity);
        let keys = capacity / 150;
        for i in 0..keys {
            filter.add(format!("present{i:08}").as_bytes());
        }
        assert!((0..keys).all(|i| filter.may_contain(format!("present{i:08}").as_bytes())));
        let false_positives = (0..keys)
            .filter(|i| filter.may_contain(format!("absent{i:08}").as_bytes()))
            .count();
        assert!(
            false_positives * 100 < keys,
            "{false_positives} of {keys} absent keys passed the filter"
        );
    }

    #[test]
    fn a_reader_finds_every_published_write_while_a_writer_inserts() {
        // The filter's bits must be visible to any reader that can see the entry's sequence.
        let table = Arc::new(Memtable::new(1, 64 << 10));
        const WRITES: u64 = 20_000;
        let writer = {
            let table = Arc::clone(&table);
            std::thread::spawn(move || {
                for i in 1..=WRITES {
                    let mut batch = WriteBatch::new();
                    batch.put(format!("k{i}").as_bytes(), b"v");
                    table.insert(batch.entries(), i, None);
                }
            })
        };
        let mut rng = fastrand::Rng::with_seed(7);
        let mut checked = 0;
        while table.last_sequence() < WRITES {
            let published = table.last_sequence();
            if published == 0 {
                continue;
            }
            let i = rng.u64(1..=published);
            assert_eq!(
                table.get(format!("k{i}").as_bytes(), published),
                Some(Lookup::Found(Bytes::from_static(b"v"))),
                "write {i} was published (last sequence {published}) but not found"
            );
            checked += 1;
        }
        writer.join().expect("writer");
        assert!(checked > 0, "the reader checked nothing while the writer ran");
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
