//! Blob files: large values kept apart from the tables (key-value
//! separation, as in WiscKey and RocksDB's integrated BlobDB).
//!
//! A flush writes each value of at least
//! [`Options::blob_value_bytes_min`](crate::Options::blob_value_bytes_min)
//! bytes once into a blob file and puts a small [`BlobPointer`] in the
//! table in its place (kind [`ValueKind::Blob`]). Compactions then move the
//! pointer, not the value: a large value is written about twice (the WAL or
//! the Raft log, then the blob file) instead of once more per level it
//! passes, and the tables stay small enough for their indexes, filters and
//! blocks to be cached.
//!
//! Garbage is counted, never searched for. A pointer is written exactly
//! once and carried forward by compactions until one drops it (its version
//! is shadowed or deleted); that compaction's manifest edit adds the value
//! to its file's garbage. A blob file all of whose values are garbage
//! leaves the version, and its file goes once no reader holds it. A
//! compaction moves the live values it meets in files that are mostly
//! garbage ([`Options::blob_collection_garbage_ratio`](crate::Options::blob_collection_garbage_ratio))
//! into new blob files, so the space of overwritten values comes back as
//! the keys that point into such a file are compacted.
//!
//! Format: the shared file header (`framing`, magic "LSMBLB", version 1),
//! then one record per value framed like every log-structured file here
//! (`crc32 | length | value`). A pointer names the file, the offset of the
//! record and the value's length; a read checks the record's crc.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::coding::{put_varint, Decoder};
use crate::error::{Error, Result};
use crate::framing::{self, FILE_HEADER_BYTES, RECORD_HEADER_BYTES};
use crate::io::{AppendFile, DeletedWhenObsolete, FileSystem, ReadFile};
use crate::key::ValueKind;
use crate::options::VALUE_BYTES_MAX;

/// Magic number of a blob file: "LSMBLB" and 1.
pub(crate) const BLOB_MAGIC: u64 = 0x4c53_4d42_4c42_0001;
/// The blob file format this build writes and reads.
pub(crate) const BLOB_FORMAT_VERSION: u32 = 1;
/// Blob files kept open for reads at most (least recently read closed
/// first), on top of the table cache's files.
pub(crate) const BLOB_FILES_OPEN_MAX: usize = 128;
/// Bytes gathered before one write to a blob file being built.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// The name of blob file `number` in `dir`.
pub(crate) fn blob_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:06}.blob"))
}

/// Where a value lives: the value of a table entry of kind
/// [`ValueKind::Blob`], encoded as three varints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlobPointer {
    /// The blob file's number.
    pub file: u64,
    /// Offset of the value's record (its crc) in the file.
    pub offset: u64,
    /// Bytes of the value.
    pub len: u64,
}

impl BlobPointer {
    /// Appends the encoded pointer to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        put_varint(out, self.file);
        put_varint(out, self.offset);
        put_varint(out, self.len);
    }

    /// Decodes a pointer; `None` if `bytes` is not exactly one.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut d = Decoder::new(bytes);
        let pointer = BlobPointer {
            file: d.varint()?,
            offset: d.varint()?,
            len: d.varint()?,
        };
        (d.is_empty() && pointer.len <= VALUE_BYTES_MAX as u64).then_some(pointer)
    }
}

/// What the manifest records about one blob file, fixed when it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlobMeta {
    pub number: u64,
    /// Values in the file.
    pub values: u64,
    /// Bytes of those values (without their framing).
    pub value_bytes: u64,
    /// Bytes of the file.
    pub file_bytes: u64,
}

/// Values of a blob file no table refers to any more.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Garbage {
    pub values: u64,
    pub bytes: u64,
}

impl Garbage {
    /// Counts one more dead value of `bytes`.
    fn add_value(&mut self, bytes: u64) {
        self.values += 1;
        self.bytes += bytes;
    }

    /// Adds `other` to this count.
    pub fn absorb(&mut self, other: Garbage) {
        self.values += other.values;
        self.bytes += other.bytes;
    }
}

/// A blob file that versions or running reads refer to. Its file is
/// deleted when the last reference is dropped, if it is obsolete by then.
#[derive(Debug)]
pub(crate) struct BlobFile {
    pub meta: BlobMeta,
    readers: Arc<BlobReaders>,
    /// The file, deleted once every value in it is garbage and nothing
    /// holds it (a field: it drops after the readers close it).
    file: DeletedWhenObsolete,
}

impl BlobFile {
    /// A blob file recorded in the manifest; nothing is opened or read.
    pub fn new(meta: BlobMeta, dir: &Path, fs: Arc<dyn FileSystem>, readers: Arc<BlobReaders>) -> Arc<Self> {
        Arc::new(BlobFile {
            file: DeletedWhenObsolete::new(fs, blob_path(dir, meta.number)),
            meta,
            readers,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Reads the value `pointer` (into this file) names, checking its crc.
    pub fn read(&self, pointer: &BlobPointer) -> Result<Bytes> {
        let record_bytes = pointer.len.saturating_add(RECORD_HEADER_BYTES as u64);
        let in_file = pointer.offset >= FILE_HEADER_BYTES as u64
            && pointer
                .offset
                .checked_add(record_bytes)
                .is_some_and(|end| end <= self.meta.file_bytes);
        if !in_file {
            return Err(Error::corruption(
                self.path(),
                pointer.offset,
                format!(
                    "a pointer to {} bytes lies outside the blob file's {} bytes",
                    pointer.len, self.meta.file_bytes
                ),
            ));
        }
        let file = self
            .readers
            .get(self.meta.number, || ReadFile::open(self.file.fs(), self.file.path()))?;
        // Bounded by VALUE_BYTES_MAX (checked when the pointer was decoded).
        let mut record = vec![0u8; record_bytes as usize];
        file.read_exact_at(pointer.offset, &mut record)?;
        framing::check_record(&record).map_err(|reason| Error::corruption(self.path(), pointer.offset, reason))?;
        Ok(Bytes::from(record).slice(RECORD_HEADER_BYTES..))
    }

    /// Marks the file for deletion once nothing holds it. Called only after
    /// the manifest edit that drops it is durable.
    pub fn mark_obsolete(&self) {
        self.file.mark_obsolete();
    }
}

impl Drop for BlobFile {
    fn drop(&mut self) {
        self.readers.evict(self.meta.number);
    }
}

/// Blob files open for reads, at most [`BLOB_FILES_OPEN_MAX`]; the least
/// recently read is closed first. Reads in flight keep their file open.
#[derive(Debug, Default)]
pub(crate) struct BlobReaders {
    open: Mutex<OpenReaders>,
}

#[derive(Debug, Default)]
struct OpenReaders {
    files: HashMap<u64, (Arc<ReadFile>, u64)>,
    /// Advances on every read; a file's last read is its recency.
    clock: u64,
}

impl BlobReaders {
    fn get(&self, number: u64, open: impl FnOnce() -> Result<ReadFile>) -> Result<Arc<ReadFile>> {
        {
            let mut readers = self.open.lock();
            readers.clock += 1;
            let now = readers.clock;
            if let Some((file, last_read)) = readers.files.get_mut(&number) {
                *last_read = now;
                return Ok(Arc::clone(file));
            }
        }
        // Opened outside the lock: other reads go on meanwhile.
        let file = Arc::new(open()?);
        let mut readers = self.open.lock();
        if readers.files.len() >= BLOB_FILES_OPEN_MAX {
            let coldest = readers.files.iter().min_by_key(|(_, (_, last))| *last).map(|(n, _)| *n);
            if let Some(coldest) = coldest {
                readers.files.remove(&coldest);
            }
        }
        let now = readers.clock;
        readers.files.insert(number, (Arc::clone(&file), now));
        Ok(file)
    }

    fn evict(&self, number: u64) {
        self.open.lock().files.remove(&number);
    }

    /// Blob files open now in this cache.
    pub fn open_files(&self) -> usize {
        self.open.lock().files.len()
    }
}

/// Writes values into new blob files, rolling to a new file at about
/// `file_bytes_target` bytes.
struct BlobWriter<'a> {
    fs: &'a dyn FileSystem,
    dir: &'a Path,
    file_bytes_target: u64,
    open: Option<OpenBlob>,
    finished: Vec<BlobMeta>,
}

struct OpenBlob {
    file: AppendFile,
    meta: BlobMeta,
    /// Framed records not yet written to the file.
    buffer: Vec<u8>,
}

impl BlobWriter<'_> {
    fn add(&mut self, value: &[u8], next_number: &mut dyn FnMut() -> u64) -> Result<BlobPointer> {
        if self
            .open
            .as_ref()
            .is_some_and(|open| open.meta.file_bytes >= self.file_bytes_target)
        {
            self.finish_open()?;
        }
        let open = match &mut self.open {
            Some(open) => open,
            None => {
                let number = next_number();
                let file = AppendFile::create_new(self.fs, &blob_path(self.dir, number))?;
                let mut buffer = Vec::with_capacity(WRITE_BUFFER_BYTES + value.len());
                buffer.extend_from_slice(&framing::file_header(BLOB_MAGIC, BLOB_FORMAT_VERSION));
                self.open.insert(OpenBlob {
                    file,
                    meta: BlobMeta {
                        number,
                        values: 0,
                        value_bytes: 0,
                        file_bytes: FILE_HEADER_BYTES as u64,
                    },
                    buffer,
                })
            }
        };
        let pointer = BlobPointer {
            file: open.meta.number,
            offset: open.meta.file_bytes,
            len: value.len() as u64,
        };
        framing::frame(&mut open.buffer, value, VALUE_BYTES_MAX);
        open.meta.values += 1;
        open.meta.value_bytes += pointer.len;
        open.meta.file_bytes += pointer.len + RECORD_HEADER_BYTES as u64;
        if open.buffer.len() >= WRITE_BUFFER_BYTES {
            open.file.append(&open.buffer)?;
            open.buffer.clear();
        }
        Ok(pointer)
    }

    /// Writes out and syncs the file being built, if any.
    fn finish_open(&mut self) -> Result<()> {
        if let Some(mut open) = self.open.take() {
            open.file.append(&open.buffer)?;
            open.file.sync()?;
            self.finished.push(open.meta);
        }
        Ok(())
    }
}

/// The blob side of one flush or compaction: values that move to blob
/// files as entries are written, and pointers that die as entries are
/// dropped.
pub(crate) struct Separation<'a> {
    /// Values at least this long go to blob files (`None`: none do).
    value_bytes_min: Option<usize>,
    /// Blob files whose live values move to new files as they are met.
    collect: &'a BTreeMap<u64, Arc<BlobFile>>,
    writer: BlobWriter<'a>,
    garbage: BTreeMap<u64, Garbage>,
    pointer: Vec<u8>,
}

/// The blob files one flush or compaction wrote, and the garbage it made.
#[derive(Debug, Default)]
pub(crate) struct BlobOutput {
    pub files: Vec<BlobMeta>,
    pub garbage: BTreeMap<u64, Garbage>,
}

impl BlobOutput {
    /// Adds another part's output to this one.
    pub fn absorb(&mut self, other: BlobOutput) {
        self.files.extend(other.files);
        for (number, garbage) in other.garbage {
            self.garbage.entry(number).or_default().absorb(garbage);
        }
    }

    /// The garbage as manifest edit entries.
    pub fn garbage_entries(&self) -> Vec<(u64, Garbage)> {
        self.garbage.iter().map(|(&n, &g)| (n, g)).collect()
    }
}

impl<'a> Separation<'a> {
    /// Separates values of at least `value_bytes_min` bytes into new blob
    /// files in `dir` and moves the live values of the files in `collect`.
    pub fn new(
        fs: &'a dyn FileSystem,
        dir: &'a Path,
        value_bytes_min: Option<usize>,
        file_bytes_target: u64,
        collect: &'a BTreeMap<u64, Arc<BlobFile>>,
    ) -> Self {
        Separation {
            value_bytes_min,
            collect,
            writer: BlobWriter {
                fs,
                dir,
                file_bytes_target,
                open: None,
                finished: Vec::new(),
            },
            garbage: BTreeMap::new(),
            pointer: Vec::new(),
        }
    }

    /// The value to write for an entry of `kind` and `value` that is kept:
    /// `None` to write it as it is, or a pointer to where its value went
    /// (the entry is then of kind [`ValueKind::Blob`]).
    pub fn keep(
        &mut self,
        kind: ValueKind,
        value: &[u8],
        next_number: &mut dyn FnMut() -> u64,
    ) -> Result<Option<&[u8]>> {
        let moved = match kind {
            ValueKind::Put if self.value_bytes_min.is_some_and(|min| value.len() >= min) => {
                self.writer.add(value, next_number)?
            }
            ValueKind::Blob => {
                let old = self.decode(value)?;
                let Some(file) = self.collect.get(&old.file) else {
                    return Ok(None);
                };
                let live = file.read(&old)?;
                self.garbage.entry(old.file).or_default().add_value(old.len);
                self.writer.add(&live, next_number)?
            }
            ValueKind::Put | ValueKind::Delete => return Ok(None),
        };
        self.pointer.clear();
        moved.encode_into(&mut self.pointer);
        Ok(Some(&self.pointer))
    }

    /// Counts the value of a dropped entry as garbage, if it is in a blob.
    pub fn dropped(&mut self, kind: ValueKind, value: &[u8]) -> Result<()> {
        if kind == ValueKind::Blob {
            let pointer = self.decode(value)?;
            self.garbage.entry(pointer.file).or_default().add_value(pointer.len);
        }
        Ok(())
    }

    /// Finishes and syncs the last blob file (the caller syncs the
    /// directory before a manifest edit names the files).
    pub fn finish(mut self) -> Result<BlobOutput> {
        self.writer.finish_open()?;
        Ok(BlobOutput {
            files: self.writer.finished,
            garbage: self.garbage,
        })
    }

    fn decode(&self, value: &[u8]) -> Result<BlobPointer> {
        BlobPointer::decode(value)
            .ok_or_else(|| Error::corruption(self.writer.dir, 0, "a table entry holds a malformed blob pointer"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::RealFs;

    #[test]
    fn pointers_round_trip_and_malformed_ones_are_refused() {
        let pointer = BlobPointer {
            file: 12,
            offset: 70_000,
            len: 4096,
        };
        let mut encoded = Vec::new();
        pointer.encode_into(&mut encoded);
        assert_eq!(BlobPointer::decode(&encoded), Some(pointer));
        assert_eq!(BlobPointer::decode(&encoded[..encoded.len() - 1]), None);
        encoded.push(0);
        assert_eq!(BlobPointer::decode(&encoded), None, "trailing bytes");
        let mut huge = Vec::new();
        BlobPointer {
            len: VALUE_BYTES_MAX as u64 + 1,
            ..pointer
        }
        .encode_into(&mut huge);
        assert_eq!(BlobPointer::decode(&huge), None, "a length no value can have");
    }

    #[test]
    fn reads_keep_at_most_the_bounded_number_of_files_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = RealFs::shared();
        let none = BTreeMap::new();
        // One value per file: each fills the file past its target.
        let mut separation = Separation::new(&*fs, dir.path(), Some(100), 4096, &none);
        let mut number = 0;
        let mut next = || {
            number += 1;
            number
        };
        let count = BLOB_FILES_OPEN_MAX + 20;
        let mut pointers = Vec::new();
        for i in 0..count {
            let value = vec![i as u8; 5000];
            let encoded = separation.keep(ValueKind::Put, &value, &mut next).expect("write");
            pointers.push(BlobPointer::decode(encoded.expect("moved")).expect("pointer"));
        }
        let output = separation.finish().expect("finish");
        assert_eq!(output.files.len(), count);
        let readers = Arc::new(BlobReaders::default());
        let files: Vec<Arc<BlobFile>> = output
            .files
            .iter()
            .map(|meta| BlobFile::new(meta.clone(), dir.path(), Arc::clone(&fs), Arc::clone(&readers)))
            .collect();
        for round in 0..2 {
            for (i, (file, pointer)) in files.iter().zip(&pointers).enumerate() {
                assert_eq!(file.read(pointer).expect("read"), vec![i as u8; 5000], "round {round}");
                assert!(readers.open_files() <= BLOB_FILES_OPEN_MAX);
            }
        }
        assert_eq!(readers.open_files(), BLOB_FILES_OPEN_MAX);
        drop(files);
        assert_eq!(readers.open_files(), 0, "a dropped file is closed");
    }

    #[test]
    fn values_read_back_and_damage_is_caught() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = RealFs::shared();
        let none = BTreeMap::new();
        let mut separation = Separation::new(&*fs, dir.path(), Some(100), 64 << 10, &none);
        let mut number = 0;
        let mut next = || {
            number += 1;
            number
        };
        let values: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 3000 + usize::from(i)]).collect();
        let mut pointers = Vec::new();
        for value in &values {
            let encoded = separation
                .keep(ValueKind::Put, value, &mut next)
                .expect("write")
                .expect("a large value moves")
                .to_vec();
            pointers.push(BlobPointer::decode(&encoded).expect("pointer"));
        }
        assert_eq!(
            separation.keep(ValueKind::Put, b"small", &mut next).expect("keep"),
            None
        );
        let output = separation.finish().expect("finish");
        assert!(output.files.len() >= 2, "files roll at their target size");
        assert_eq!(output.files.iter().map(|m| m.values).sum::<u64>(), 40);
        let readers = Arc::new(BlobReaders::default());
        let files: HashMap<u64, Arc<BlobFile>> = output
            .files
            .iter()
            .map(|meta| {
                let file = BlobFile::new(meta.clone(), dir.path(), Arc::clone(&fs), Arc::clone(&readers));
                (meta.number, file)
            })
            .collect();
        for (value, pointer) in values.iter().zip(&pointers) {
            assert_eq!(files[&pointer.file].read(pointer).expect("read"), value.as_slice());
        }
        // One flipped byte in a value is caught by its record's crc.
        let target = pointers[3];
        let path = blob_path(dir.path(), target.file);
        let mut bytes = std::fs::read(&path).expect("read file");
        bytes[(target.offset + 20) as usize] ^= 1;
        std::fs::write(&path, bytes).expect("write file");
        readers.evict(target.file);
        let error = files[&target.file].read(&target).expect_err("damage is caught");
        assert!(error.to_string().contains("checksum"), "{error}");
        let outside = BlobPointer {
            offset: u64::MAX - 3,
            ..target
        };
        assert!(files[&target.file].read(&outside).is_err());
    }
}
