//! Versions: the set of live table files, level by level, and the edits
//! that move from one version to the next.
//!
//! A [`Version`] is immutable; readers hold an `Arc` to the one current when
//! they started, so compaction can replace files without blocking them. A
//! table file is deleted from disk only when it is obsolete *and* the last
//! version holding it is dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::blob::{BlobFile, BlobMeta, BlobPointer, Garbage};
use crate::coding::{put_length_prefixed, put_varint, Decoder};
use crate::error::{Error, Result};
use crate::io::{DeletedWhenObsolete, FileSystem};
use crate::key::{self, SequenceNumber};
use crate::memtable::Lookup;
use crate::options::LEVELS;
use crate::sstable::{Table, TableHit, TableIter, TableSource};
use crate::table_cache::{TableCache, TableId};

/// What the manifest records about one table file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileMeta {
    pub number: u64,
    pub size_bytes: u64,
    pub entries: u64,
    /// Smallest internal key in the file.
    pub smallest: Vec<u8>,
    /// Largest internal key in the file.
    pub largest: Vec<u8>,
    /// The smallest number of a blob file the file's entries point into;
    /// 0 if none does. A table pointing into a blob file due for
    /// collection is rewritten so the values it points to move.
    pub oldest_blob: u64,
    /// The largest sequence number of any entry in the file; 0 if not
    /// recorded (files written before it was, all older than any file that
    /// records it). Orders L0 (see [`Version::levels`]).
    pub largest_sequence: SequenceNumber,
}

impl FileMeta {
    /// The smallest user key in the file.
    pub fn smallest_user_key(&self) -> &[u8] {
        key::user_key(&self.smallest)
    }

    /// The largest user key in the file.
    pub fn largest_user_key(&self) -> &[u8] {
        key::user_key(&self.largest)
    }

    /// Whether the file's user-key range meets `[start, end]`.
    pub fn overlaps(&self, start: &[u8], end: &[u8]) -> bool {
        self.smallest_user_key() <= end && self.largest_user_key() >= start
    }
}

/// The name of table file `number` in `dir`.
pub(crate) fn table_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:06}.sst"))
}

/// A live table file: what the manifest says about it, and the way to its
/// open table (through the table cache, on demand).
#[derive(Debug)]
pub(crate) struct TableFile {
    pub meta: FileMeta,
    /// Opens the table; held by cursors too, so the file outlives them.
    pub table: Arc<LiveTable>,
}

impl TableFile {
    /// A table file recorded in the manifest; nothing is opened or read.
    pub fn new(meta: FileMeta, cache: Arc<TableCache>, path: PathBuf, fs: Arc<dyn FileSystem>) -> Arc<Self> {
        let id = TableId {
            number: meta.number,
            size_bytes: meta.size_bytes,
            entries: meta.entries,
        };
        Arc::new(TableFile {
            meta,
            table: Arc::new(LiveTable {
                id,
                cache,
                file: DeletedWhenObsolete::new(fs, path),
                in_level0: AtomicBool::new(false),
            }),
        })
    }

    /// Marks the file for deletion once no version or cursor holds it.
    /// Called only after the manifest edit that removes it is durable, so a
    /// crash never leaves a manifest naming a deleted file.
    pub fn mark_obsolete(&self) {
        self.table.file.mark_obsolete();
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        self.table.file.path()
    }
}

/// A table file that versions or cursors still refer to. Its file is
/// deleted when the last reference is dropped, if it is obsolete by then.
#[derive(Debug)]
pub(crate) struct LiveTable {
    /// What opening the table checks.
    id: TableId,
    /// Where the table is opened and kept open.
    cache: Arc<TableCache>,
    /// The file, deleted after the table is dropped if obsolete by then
    /// (a field: it drops after the table cache evicts the table).
    file: DeletedWhenObsolete,
    /// Whether the file is in L0, where lookups pin the index and filter
    /// (every point lookup consults every overlapping L0 file).
    in_level0: AtomicBool,
}

impl LiveTable {
    /// The open table, from the table cache or opened now.
    pub fn open(&self) -> Result<Arc<Table>> {
        self.cache.table(self.id)
    }

    /// Records the level a version places the file at. A file leaving L0
    /// is dropped from the table cache, so that when next opened it no
    /// longer pins its index and filter.
    pub fn place_at_level(&self, level: usize) {
        // Only a hint for memory use: no ordering with other memory is needed.
        let was_level0 = self.in_level0.swap(level == 0, Ordering::Relaxed);
        if was_level0 && level != 0 {
            self.cache.evict(self.id.number);
        }
    }

    /// Whether lookups pin the table's index and filter.
    pub fn pins_index_and_filter(&self) -> bool {
        self.in_level0.load(Ordering::Relaxed)
    }

    /// A cursor over the table, which opens it when first positioned.
    pub fn iter(self: &Arc<Self>) -> TableIter {
        TableIter::deferred(Arc::clone(self) as Arc<dyn TableSource>)
    }
}

impl TableSource for LiveTable {
    fn open_table(&self) -> Result<Arc<Table>> {
        self.open()
    }
}

impl Drop for LiveTable {
    fn drop(&mut self) {
        // Nothing can ask for this table any more (asking takes a
        // reference to `self`), so once evicted it is never reopened.
        self.cache.evict(self.id.number);
    }
}

/// A blob file in a version, with the garbage counted in it so far.
#[derive(Debug, Clone)]
pub(crate) struct LiveBlob {
    pub file: Arc<BlobFile>,
    pub garbage: Garbage,
}

impl LiveBlob {
    /// Whether at least `ratio` of its value bytes are garbage.
    pub fn garbage_at_least(&self, ratio: f64) -> bool {
        self.garbage.bytes > 0 && self.garbage.bytes as f64 >= ratio * self.file.meta.value_bytes as f64
    }
}

/// An immutable snapshot of the live files of every level.
#[derive(Debug, Default, Clone)]
pub(crate) struct Version {
    /// L0 is newest file first (files may overlap): by largest sequence
    /// number, then by file number. Not by file number alone: an intra-L0
    /// compaction's output has a number newer than files flushed while it
    /// ran, but data older than theirs. (Flushed files and intra-L0 outputs
    /// hold disjoint sequence ranges, so the largest sequence orders them;
    /// files that record none are older than all that do, and among
    /// themselves the file number orders them, as it did when they were
    /// written.) Deeper levels are sorted by smallest key and never overlap.
    pub levels: [Vec<Arc<TableFile>>; LEVELS],
    /// Blob files some table entry still points into, by number.
    pub blobs: BTreeMap<u64, LiveBlob>,
}

impl Version {
    /// The newest version of `user_key` visible at `snapshot` in the files.
    pub fn get(&self, user_key: &[u8], snapshot: SequenceNumber) -> Result<Option<Lookup>> {
        let seek = key::seek_key(user_key, snapshot);
        for file in &self.levels[0] {
            if file.meta.overlaps(user_key, user_key) {
                if let Some(found) = lookup_in(file, user_key, &seek)? {
                    return Ok(Some(found));
                }
            }
        }
        for files in &self.levels[1..] {
            let index = files.partition_point(|f| f.meta.largest_user_key() < user_key);
            if let Some(file) = files.get(index) {
                if file.meta.smallest_user_key() <= user_key {
                    if let Some(found) = lookup_in(file, user_key, &seek)? {
                        return Ok(Some(found));
                    }
                }
            }
        }
        Ok(None)
    }

    /// The value the blob pointer `encoded` (a table entry's value) names.
    pub fn read_blob(&self, encoded: &[u8]) -> Result<Bytes> {
        let pointer = BlobPointer::decode(encoded)
            .ok_or_else(|| Error::corruption("<table entry>", 0, "malformed blob pointer"))?;
        let blob = self.blobs.get(&pointer.file).ok_or_else(|| {
            Error::corruption(
                format!("{:06}.blob", pointer.file),
                pointer.offset,
                "a table points into a blob file the version does not hold",
            )
        })?;
        blob.file.read(&pointer)
    }

    /// Why `garbage` cannot be counted against this version's blob files,
    /// if it cannot: a pointer into a file the version does not hold, or
    /// more dead values than a file has (a table whose pointers do not
    /// match the manifest, say one restored from another database).
    pub fn check_blob_garbage(&self, garbage: &[(u64, Garbage)]) -> std::result::Result<(), String> {
        for &(number, more) in garbage {
            let Some(live) = self.blobs.get(&number) else {
                return Err(format!(
                    "a dropped entry points into blob file {number}, which is not live"
                ));
            };
            let values = live.garbage.values.saturating_add(more.values);
            let bytes = live.garbage.bytes.saturating_add(more.bytes);
            if values > live.file.meta.values || bytes > live.file.meta.value_bytes {
                return Err(format!("more values of blob file {number} died than it holds"));
            }
        }
        Ok(())
    }

    /// Adds the blob files `new` and the garbage of `edit`; returns the
    /// files all of whose values are now garbage, which leave the version.
    pub fn apply_blobs(&mut self, new: Vec<Arc<BlobFile>>, garbage: &[(u64, Garbage)]) -> Vec<Arc<BlobFile>> {
        for file in new {
            let number = file.meta.number;
            let previous = self.blobs.insert(
                number,
                LiveBlob {
                    file,
                    garbage: Garbage::default(),
                },
            );
            assert!(previous.is_none(), "blob file {number} added twice");
        }
        let mut dead = Vec::new();
        for &(number, more) in garbage {
            let live = self
                .blobs
                .get_mut(&number)
                .unwrap_or_else(|| panic!("garbage counted in blob file {number}, which is not live"));
            live.garbage.absorb(more);
            assert!(
                live.garbage.values <= live.file.meta.values,
                "blob file {number} has more garbage than values"
            );
            if live.garbage.values == live.file.meta.values {
                if let Some(gone) = self.blobs.remove(&number) {
                    dead.push(gone.file);
                }
            }
        }
        dead
    }

    /// Every live file, in no particular order.
    pub fn files(&self) -> impl Iterator<Item = (usize, &Arc<TableFile>)> {
        self.levels
            .iter()
            .enumerate()
            .flat_map(|(level, files)| files.iter().map(move |f| (level, f)))
    }

    /// Applies an edit whose new files are already opened, checking that the
    /// result keeps the level invariants.
    pub fn apply(&self, edit: &VersionEdit, added: &[(usize, Arc<TableFile>)]) -> Version {
        let mut next = self.clone();
        for &(level, number) in &edit.deleted_files {
            let before = next.levels[level].len();
            next.levels[level].retain(|f| f.meta.number != number);
            assert_eq!(
                before,
                next.levels[level].len() + 1,
                "edit deletes file {number} missing from L{level}"
            );
        }
        for (level, file) in added {
            file.table.place_at_level(*level);
            next.levels[*level].push(Arc::clone(file));
        }
        next.levels[0].sort_by_key(|f| std::cmp::Reverse((f.meta.largest_sequence, f.meta.number)));
        for files in &mut next.levels[1..] {
            files.sort_by(|a, b| key::compare(&a.meta.smallest, &b.meta.smallest));
            for pair in files.windows(2) {
                assert!(
                    key::compare(&pair[0].meta.largest, &pair[1].meta.smallest).is_lt(),
                    "files {} and {} overlap within a level",
                    pair[0].meta.number,
                    pair[1].meta.number
                );
            }
        }
        next
    }
}

/// The newest version of `user_key` at or below the snapshot in `seek` in
/// one table file, opening the table through the table cache if needed.
fn lookup_in(file: &TableFile, user_key: &[u8], seek: &[u8]) -> Result<Option<Lookup>> {
    let table = file.table.open()?;
    Ok(table
        .get(user_key, seek, file.table.pins_index_and_filter())?
        .map(|TableHit { kind, value }| Lookup::from_entry(kind, value)))
}

/// One atomic change to the set of live files and the engine's counters.
///
/// Encoded as a sequence of fields `tag: varint | length: varint | body`,
/// so a reader can skip fields it does not know.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct VersionEdit {
    /// WAL files numbered below this hold nothing that is not in tables.
    pub log_number: Option<u64>,
    pub next_file_number: Option<u64>,
    pub last_sequence: Option<SequenceNumber>,
    /// Caller metadata of the newest write now in tables.
    pub metadata: Option<Bytes>,
    pub deleted_files: Vec<(usize, u64)>,
    pub new_files: Vec<(usize, FileMeta)>,
    pub new_blobs: Vec<BlobMeta>,
    /// Values of blob files that no table entry points to any more.
    pub blob_garbage: Vec<(u64, Garbage)>,
}

const TAG_LOG_NUMBER: u64 = 1;
const TAG_NEXT_FILE_NUMBER: u64 = 2;
const TAG_LAST_SEQUENCE: u64 = 3;
const TAG_METADATA: u64 = 4;
const TAG_DELETED_FILE: u64 = 5;
const TAG_NEW_FILE: u64 = 6;
const TAG_NEW_BLOB: u64 = 7;
const TAG_BLOB_GARBAGE: u64 = 8;

impl VersionEdit {
    /// Encodes the edit as a manifest record payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut field = |tag: u64, body: &[u8]| {
            put_varint(&mut out, tag);
            put_length_prefixed(&mut out, body);
        };
        let varint = |value: u64| {
            let mut body = Vec::new();
            put_varint(&mut body, value);
            body
        };
        if let Some(n) = self.log_number {
            field(TAG_LOG_NUMBER, &varint(n));
        }
        if let Some(n) = self.next_file_number {
            field(TAG_NEXT_FILE_NUMBER, &varint(n));
        }
        if let Some(n) = self.last_sequence {
            field(TAG_LAST_SEQUENCE, &varint(n));
        }
        if let Some(m) = &self.metadata {
            field(TAG_METADATA, m);
        }
        for &(level, number) in &self.deleted_files {
            let mut body = varint(level as u64);
            put_varint(&mut body, number);
            field(TAG_DELETED_FILE, &body);
        }
        for (level, meta) in &self.new_files {
            let mut body = varint(*level as u64);
            put_varint(&mut body, meta.number);
            put_varint(&mut body, meta.size_bytes);
            put_varint(&mut body, meta.entries);
            put_length_prefixed(&mut body, &meta.smallest);
            put_length_prefixed(&mut body, &meta.largest);
            put_varint(&mut body, meta.oldest_blob);
            put_varint(&mut body, meta.largest_sequence);
            field(TAG_NEW_FILE, &body);
        }
        for meta in &self.new_blobs {
            let mut body = varint(meta.number);
            put_varint(&mut body, meta.values);
            put_varint(&mut body, meta.value_bytes);
            put_varint(&mut body, meta.file_bytes);
            field(TAG_NEW_BLOB, &body);
        }
        for &(number, garbage) in &self.blob_garbage {
            let mut body = varint(number);
            put_varint(&mut body, garbage.values);
            put_varint(&mut body, garbage.bytes);
            field(TAG_BLOB_GARBAGE, &body);
        }
        out
    }

    /// Decodes a manifest record; `what` names the problem on failure.
    pub fn decode(record: &[u8]) -> Result<Self, &'static str> {
        let mut edit = VersionEdit::default();
        let mut fields = Decoder::new(record);
        while !fields.is_empty() {
            let tag = fields.varint().ok_or("truncated field tag")?;
            let body = fields.length_prefixed().ok_or("truncated field body")?;
            let mut d = Decoder::new(body);
            match tag {
                TAG_LOG_NUMBER => edit.log_number = Some(d.varint().ok_or("bad log number")?),
                TAG_NEXT_FILE_NUMBER => edit.next_file_number = Some(d.varint().ok_or("bad next file number")?),
                TAG_LAST_SEQUENCE => edit.last_sequence = Some(d.varint().ok_or("bad last sequence")?),
                TAG_METADATA => edit.metadata = Some(Bytes::copy_from_slice(body)),
                TAG_DELETED_FILE => edit
                    .deleted_files
                    .push(decode_deleted(&mut d).ok_or("bad deleted file")?),
                TAG_NEW_FILE => edit.new_files.push(decode_new_file(&mut d).ok_or("bad new file")?),
                TAG_NEW_BLOB => edit.new_blobs.push(decode_new_blob(&mut d).ok_or("bad new blob file")?),
                TAG_BLOB_GARBAGE => edit
                    .blob_garbage
                    .push(decode_garbage(&mut d).ok_or("bad blob garbage")?),
                // Fields from newer minor versions are skipped.
                _ => {}
            }
        }
        Ok(edit)
    }
}

fn decode_level(d: &mut Decoder<'_>) -> Option<usize> {
    d.varint_usize().filter(|&level| level < LEVELS)
}

fn decode_deleted(d: &mut Decoder<'_>) -> Option<(usize, u64)> {
    Some((decode_level(d)?, d.varint()?))
}

fn decode_new_file(d: &mut Decoder<'_>) -> Option<(usize, FileMeta)> {
    let level = decode_level(d)?;
    let meta = FileMeta {
        number: d.varint()?,
        size_bytes: d.varint()?,
        entries: d.varint()?,
        smallest: d.length_prefixed()?.to_vec(),
        largest: d.length_prefixed()?.to_vec(),
        // Absent in edits written before blob files: no pointers.
        oldest_blob: if d.is_empty() { 0 } else { d.varint()? },
        // Absent in edits written before it was recorded: unknown.
        largest_sequence: if d.is_empty() { 0 } else { d.varint()? },
    };
    let valid = meta.smallest.len() >= key::TRAILER_BYTES
        && meta.largest.len() >= key::TRAILER_BYTES
        && key::compare(&meta.smallest, &meta.largest).is_le();
    valid.then_some((level, meta))
}

fn decode_new_blob(d: &mut Decoder<'_>) -> Option<BlobMeta> {
    let meta = BlobMeta {
        number: d.varint()?,
        values: d.varint()?,
        value_bytes: d.varint()?,
        file_bytes: d.varint()?,
    };
    // Every value takes at least its record header in the file.
    let fits = meta
        .values
        .checked_mul(crate::framing::RECORD_HEADER_BYTES as u64)
        .and_then(|framing| framing.checked_add(meta.value_bytes))
        .is_some_and(|least| least <= meta.file_bytes);
    (meta.values > 0 && fits).then_some(meta)
}

fn decode_garbage(d: &mut Decoder<'_>) -> Option<(u64, Garbage)> {
    Some((
        d.varint()?,
        Garbage {
            values: d.varint()?,
            bytes: d.varint()?,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::ValueKind;

    #[test]
    fn edits_round_trip() {
        // The manifest must rebuild exactly the version that was logged.
        let edit = VersionEdit {
            log_number: Some(7),
            next_file_number: Some(12),
            last_sequence: Some(99),
            metadata: Some(Bytes::from_static(b"raft:3:41")),
            deleted_files: vec![(0, 4), (1, 5)],
            new_files: vec![(
                1,
                FileMeta {
                    number: 11,
                    size_bytes: 4096,
                    entries: 10,
                    smallest: key::internal_key(b"a", 1, ValueKind::Put),
                    largest: key::internal_key(b"z", 2, ValueKind::Delete),
                    oldest_blob: 10,
                    largest_sequence: 2,
                },
            )],
            new_blobs: vec![BlobMeta {
                number: 10,
                values: 3,
                value_bytes: 9000,
                file_bytes: 9040,
            }],
            blob_garbage: vec![(8, Garbage { values: 2, bytes: 5000 })],
        };
        assert_eq!(VersionEdit::decode(&edit.encode()), Ok(edit));
    }

    #[test]
    fn malformed_edits_are_rejected() {
        // A damaged record must never decode into a plausible edit.
        let edit = VersionEdit {
            deleted_files: vec![(9, 1)],
            ..VersionEdit::default()
        };
        assert!(VersionEdit::decode(&edit.encode()).is_err());
        let good = VersionEdit {
            log_number: Some(3),
            ..VersionEdit::default()
        };
        let encoded = good.encode();
        assert!(VersionEdit::decode(&encoded[..encoded.len() - 1]).is_err());
    }
}
