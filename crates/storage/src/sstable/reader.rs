//! Reads a table: the footer, index and filter are loaded and verified at
//! open; data blocks are read on demand through the block cache, their CRC
//! checked on every read from disk.

use std::sync::Arc;

use bytes::Bytes;

use super::block::{Block, BlockCorruption, BlockIter};
use super::bloom::Filter;
use super::{
    block_crc, BlockHandle, Footer, FooterError, BLOCK_TRAILER_BYTES, BLOCK_TYPE_UNCOMPRESSED, FOOTER_BYTES,
    FORMAT_VERSION,
};
use crate::cache::BlockCache;
use crate::error::{Error, Result};
use crate::io::ReadFile;
use crate::iterator::InternalIterator;
use crate::key;

/// An open table file.
#[derive(Debug)]
pub(crate) struct Table {
    /// The file.
    file: ReadFile,
    /// The file's number, the first half of its block-cache keys.
    file_number: u64,
    /// The shared block cache.
    cache: Arc<BlockCache>,
    /// The index block: one entry per data block.
    index: Block,
    /// The bloom filter over user keys, if the table has one.
    filter: Option<Filter>,
    /// Entries in the table, from the footer.
    entries: u64,
    /// Offset of the footer: every block must end before it.
    footer_offset: u64,
}

impl Table {
    /// Opens a table: reads and verifies the footer, then the index and
    /// filter blocks, which stay in memory.
    pub(crate) fn open(file: ReadFile, file_number: u64, cache: Arc<BlockCache>) -> Result<Table> {
        let footer_offset = file
            .len_bytes()
            .checked_sub(FOOTER_BYTES as u64)
            .ok_or_else(|| Error::corruption(file.path(), 0, "file shorter than a table footer"))?;
        let mut raw = [0u8; FOOTER_BYTES];
        file.read_exact_at(footer_offset, &mut raw)?;
        let footer = Footer::decode(&raw).map_err(|e| footer_error(&file, footer_offset, e))?;
        if footer.entries == 0 {
            return Err(Error::corruption(
                file.path(),
                footer_offset,
                "footer claims an empty table",
            ));
        }
        let index_bytes = read_block(&file, footer_offset, footer.index)?;
        let index = Block::parse(index_bytes).map_err(|e| block_error(&file, footer.index, e))?;
        let filter = if footer.filter.size > 0 {
            let filter_bytes = read_block(&file, footer_offset, footer.filter)?;
            let filter = Filter::parse(filter_bytes)
                .map_err(|reason| Error::corruption(file.path(), footer.filter.offset, reason))?;
            Some(filter)
        } else {
            None
        };
        Ok(Table {
            file,
            file_number,
            cache,
            index,
            filter,
            entries: footer.entries,
            footer_offset,
        })
    }

    /// The newest entry of `user_key` at or below the snapshot in `seek_key`
    /// (`key::seek_key(user_key, snapshot)`): the first entry `>= seek_key`,
    /// if it belongs to `user_key`. Consults the bloom filter first.
    pub(crate) fn get(&self, user_key: &[u8], seek_key: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        debug_assert_eq!(key::user_key(seek_key), user_key, "seek key must be for the user key");
        if !self.may_contain(user_key) {
            return Ok(None);
        }
        let mut index_iter = BlockIter::new(self.index.clone());
        index_iter.seek(seek_key);
        if !index_iter.valid() {
            return Ok(None);
        }
        let handle = self.decode_handle(index_iter.value())?;
        let block = self.data_block(handle)?;
        // One key buffer serves the index cursor, the data cursor and the result.
        let mut data_iter = BlockIter::with_buffer(block, index_iter.into_key());
        data_iter.seek(seek_key);
        if !data_iter.valid() {
            return Err(Error::corruption(
                self.file.path(),
                handle.offset,
                "index key is beyond the last key of its block",
            ));
        }
        if key::user_key(data_iter.key()) != user_key {
            return Ok(None);
        }
        let value = data_iter.value().to_vec();
        Ok(Some((data_iter.into_key(), value)))
    }

    /// A cursor over the whole table. Data blocks are loaded lazily through
    /// the block cache.
    pub(crate) fn iter(self: &Arc<Self>) -> TableIter {
        TableIter {
            index: BlockIter::new(self.index.clone()),
            data: None,
            table: Arc::clone(self),
            fill_cache: true,
        }
    }

    /// A cursor over the whole table that uses blocks already in the block
    /// cache but reads missing ones from disk without inserting them: for
    /// compaction, which reads each block once and must not evict the
    /// blocks readers use.
    pub(crate) fn iter_without_cache_fill(self: &Arc<Self>) -> TableIter {
        TableIter {
            fill_cache: false,
            ..self.iter()
        }
    }

    /// False only if the table certainly holds no entry for `user_key`.
    pub(crate) fn may_contain(&self, user_key: &[u8]) -> bool {
        self.filter.as_ref().is_none_or(|filter| filter.may_contain(user_key))
    }

    /// Bytes held in memory for the index and filter.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.index.size_bytes() + self.filter.as_ref().map_or(0, Filter::memory_bytes)
    }

    /// The table's file number.
    pub(crate) fn file_number(&self) -> u64 {
        self.file_number
    }

    /// Entries in the table, as recorded in its footer.
    pub(crate) fn entries(&self) -> u64 {
        self.entries
    }

    /// The data block at `handle`, from the cache or else from disk.
    fn data_block(&self, handle: BlockHandle) -> Result<Block> {
        if let Some(block) = self.cache.get(self.file_number, handle.offset) {
            return Ok(block);
        }
        let bytes = read_block(&self.file, self.footer_offset, handle)?;
        let block = Block::parse(bytes).map_err(|e| block_error(&self.file, handle, e))?;
        self.cache.insert(self.file_number, handle.offset, block.clone());
        Ok(block)
    }

    /// The data block at `handle`, from the cache or else from disk, not
    /// inserted into the cache.
    fn data_block_without_cache_fill(&self, handle: BlockHandle) -> Result<Block> {
        if let Some(block) = self.cache.get(self.file_number, handle.offset) {
            return Ok(block);
        }
        let bytes = read_block(&self.file, self.footer_offset, handle)?;
        Block::parse(bytes).map_err(|e| block_error(&self.file, handle, e))
    }

    /// Decodes a data block handle from an index entry.
    fn decode_handle(&self, value: &[u8]) -> Result<BlockHandle> {
        BlockHandle::decode(value).ok_or_else(|| {
            Error::corruption(
                self.file.path(),
                self.footer_offset,
                "malformed block handle in the index",
            )
        })
    }
}

/// Reads a block's contents from disk, checks it lies before the footer at
/// `footer_offset`, and verifies its trailer.
fn read_block(file: &ReadFile, footer_offset: u64, handle: BlockHandle) -> Result<Bytes> {
    let in_bounds = handle.end_with_trailer().is_some_and(|end| end <= footer_offset);
    if !in_bounds {
        return Err(Error::corruption(
            file.path(),
            handle.offset,
            "block handle points outside the table",
        ));
    }
    let size = usize::try_from(handle.size)
        .map_err(|_| Error::corruption(file.path(), handle.offset, "block too large to read"))?;
    let mut buf = vec![0u8; size + BLOCK_TRAILER_BYTES as usize];
    file.read_exact_at(handle.offset, &mut buf)?;
    let block_type = buf[size];
    let expected = crate::coding::u32_le_at(&buf, size + 1);
    let actual = block_crc(&buf[..size], block_type);
    // The CRC covers the type byte, so check it before trusting the type.
    if expected != actual {
        return Err(Error::ChecksumMismatch {
            file: file.path().to_path_buf(),
            offset: handle.offset,
            expected,
            actual,
        });
    }
    if block_type != BLOCK_TYPE_UNCOMPRESSED {
        return Err(Error::corruption(
            file.path(),
            handle.offset + handle.size,
            "unknown block type",
        ));
    }
    buf.truncate(size);
    Ok(Bytes::from(buf))
}

/// Turns a block-structure problem into a corruption error at its file offset.
fn block_error(file: &ReadFile, handle: BlockHandle, error: BlockCorruption) -> Error {
    Error::corruption(file.path(), handle.offset + error.offset as u64, error.reason)
}

/// Turns a footer problem into the engine's error.
fn footer_error(file: &ReadFile, offset: u64, error: FooterError) -> Error {
    match error {
        FooterError::BadMagic => Error::corruption(file.path(), offset, "bad table magic (not a table, or torn)"),
        FooterError::Version(found) => Error::UnsupportedVersion {
            file: file.path().to_path_buf(),
            found,
            supported: FORMAT_VERSION,
        },
        FooterError::Checksum { expected, actual } => Error::ChecksumMismatch {
            file: file.path().to_path_buf(),
            offset,
            expected,
            actual,
        },
    }
}

// Tables are shared between threads and cursors outlive the caller's borrow.
const _: () = {
    const fn assert_shareable<T: Send + Sync + 'static>() {}
    const fn assert_sendable<T: Send + 'static>() {}
    assert_shareable::<Table>();
    assert_sendable::<TableIter>();
};

/// A cursor over a whole table: an index cursor choosing data blocks and a
/// data cursor within the current one.
#[derive(Debug)]
pub(crate) struct TableIter {
    /// The table, kept open while the cursor lives.
    table: Arc<Table>,
    /// Cursor over the index block.
    index: BlockIter,
    /// Cursor over the data block the index cursor points at; `None` when
    /// the cursor is not valid (exhausted, unpositioned, or after an error).
    data: Option<BlockIter>,
    /// Whether blocks read from disk go into the block cache.
    fill_cache: bool,
}

impl TableIter {
    /// Loads the data block the index cursor is on into the data cursor, or
    /// clears it when the index is exhausted.
    fn load_data_block(&mut self) -> Result<()> {
        if !self.index.valid() {
            self.data = None;
            return Ok(());
        }
        let loaded = self
            .table
            .decode_handle(self.index.value())
            .and_then(|handle| match self.fill_cache {
                true => self.table.data_block(handle),
                false => self.table.data_block_without_cache_fill(handle),
            });
        let block = match loaded {
            Ok(block) => block,
            Err(error) => {
                self.data = None;
                return Err(error);
            }
        };
        match &mut self.data {
            Some(data) => data.reset(block),
            None => self.data = Some(BlockIter::new(block)),
        }
        Ok(())
    }

    /// While the data cursor is exhausted, moves to the next block's first entry.
    fn skip_exhausted_blocks(&mut self) -> Result<()> {
        while self.data.as_ref().is_some_and(|data| !data.valid()) {
            self.index.next();
            self.load_data_block()?;
            if let Some(data) = &mut self.data {
                data.seek_to_first();
            }
        }
        Ok(())
    }

    /// The data cursor; only while valid.
    fn current(&self) -> &BlockIter {
        self.data.as_ref().expect("TableIter used while not valid")
    }
}

impl InternalIterator for TableIter {
    fn valid(&self) -> bool {
        self.data.as_ref().is_some_and(BlockIter::valid)
    }

    fn seek_to_first(&mut self) -> Result<()> {
        self.index.seek_to_first();
        self.load_data_block()?;
        if let Some(data) = &mut self.data {
            data.seek_to_first();
        }
        self.skip_exhausted_blocks()
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        self.index.seek(target);
        self.load_data_block()?;
        if let Some(data) = &mut self.data {
            data.seek(target);
        }
        self.skip_exhausted_blocks()
    }

    fn next(&mut self) -> Result<()> {
        let data = self.data.as_mut().expect("TableIter::next called while not valid");
        data.next();
        self.skip_exhausted_blocks()
    }

    fn key(&self) -> &[u8] {
        self.current().key()
    }

    fn value(&self) -> &[u8] {
        self.current().value()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::tests_support::{default_options, open_table, scan, write_table, Entry};
    use super::super::FOOTER_BYTES;
    use super::*;
    use crate::key::{internal_key, seek_key, ValueKind, SEQUENCE_MAX};

    /// `count` sorted single-version entries.
    fn entries(count: usize) -> Vec<Entry> {
        (0..count)
            .map(|i| {
                let key = internal_key(format!("key{i:06}").as_bytes(), i as u64 + 1, ValueKind::Put);
                (key, format!("value{i}-{}", "v".repeat(i % 30)).into_bytes())
            })
            .collect()
    }

    /// Writes a table of `entries` and returns its path.
    fn table_file(dir: &Path, entries: &[Entry]) -> std::path::PathBuf {
        let path = dir.join("000001.sst");
        write_table(&path, entries, default_options());
        path
    }

    /// Looks up every entry, returning the first error.
    fn get_all(table: &Table, entries: &[Entry]) -> Result<()> {
        for (key, value) in entries {
            let user_key = key::user_key(key);
            if let Some(found) = table.get(user_key, &seek_key(user_key, SEQUENCE_MAX))? {
                assert_eq!(found, (key.clone(), value.clone()), "a lookup returned wrong data");
            }
        }
        Ok(())
    }

    #[test]
    fn a_flipped_byte_in_a_data_block_is_a_checksum_mismatch() {
        // Silent bit rot must surface as an error naming the block, never as wrong data.
        let dir = tempfile::tempdir().expect("temp dir");
        let entries = entries(2_000);
        let path = table_file(dir.path(), &entries);
        let mut bytes = std::fs::read(&path).expect("read table");
        bytes[100] ^= 0x01;
        std::fs::write(&path, &bytes).expect("write table");

        let cache = Arc::new(BlockCache::new(1 << 20));
        let table = open_table(&path, &cache).expect("index and filter are intact");
        let (first_key, _) = &entries[0];
        let user_key = key::user_key(first_key);
        let error = table
            .get(user_key, &seek_key(user_key, SEQUENCE_MAX))
            .expect_err("damaged block read");
        assert!(
            matches!(&error, Error::ChecksumMismatch { file, offset: 0, .. } if file == &path),
            "unexpected error {error:?}"
        );
        let error = scan(&table).expect_err("damaged block scanned");
        assert!(
            matches!(error, Error::ChecksumMismatch { offset: 0, .. }),
            "unexpected error {error:?}"
        );
        assert_eq!(cache.used_bytes(), 0, "a damaged block must not be cached");
    }

    #[test]
    fn every_single_byte_flip_is_detected_and_never_returns_wrong_data() {
        // Every byte of a table is covered by a CRC: flipping any one must produce an error.
        let dir = tempfile::tempdir().expect("temp dir");
        let entries = entries(150);
        let path = table_file(dir.path(), &entries);
        let good = std::fs::read(&path).expect("read table");
        println!("checking {} byte positions", good.len());
        for pos in 0..good.len() {
            let mut bad = good.clone();
            bad[pos] ^= 0x10;
            std::fs::write(&path, &bad).expect("write table");
            let cache = Arc::new(BlockCache::new(1 << 20));
            let detected = match open_table(&path, &cache) {
                Err(error) => {
                    assert!(error.is_corruption(), "flip at {pos}: {error:?}");
                    true
                }
                Ok(table) => {
                    let lookups = get_all(&table, &entries);
                    let scanned = scan(&table);
                    if let Ok(scanned) = &scanned {
                        assert_eq!(scanned, &entries, "flip at {pos} changed scanned data");
                    }
                    lookups.is_err() || scanned.is_err()
                }
            };
            assert!(detected, "flip at byte {pos} went unnoticed");
        }
    }

    #[test]
    fn a_damaged_footer_is_an_error() {
        // The footer locates everything else; damage to it must stop the open.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = table_file(dir.path(), &entries(100));
        let good = std::fs::read(&path).expect("read table");
        let cache = Arc::new(BlockCache::new(0));
        let footer_start = good.len() - FOOTER_BYTES;
        for (pos, expect_checksum) in [(footer_start + 3, true), (good.len() - 1, false)] {
            let mut bad = good.clone();
            bad[pos] ^= 0x04;
            std::fs::write(&path, &bad).expect("write table");
            let error = open_table(&path, &cache).expect_err("damaged footer");
            if expect_checksum {
                assert!(matches!(error, Error::ChecksumMismatch { .. }), "{error:?}");
            } else {
                assert!(matches!(error, Error::Corruption { .. }), "{error:?}");
            }
        }
    }

    #[test]
    fn a_truncated_table_is_an_error() {
        // A table cut short (torn copy, full disk) must be rejected at open.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = table_file(dir.path(), &entries(500));
        let good = std::fs::read(&path).expect("read table");
        let cache = Arc::new(BlockCache::new(0));
        for len in [0, 1, FOOTER_BYTES - 1, FOOTER_BYTES, good.len() / 2, good.len() - 1] {
            std::fs::write(&path, &good[..len]).expect("write table");
            let error = open_table(&path, &cache).expect_err("truncated table");
            assert!(error.is_corruption(), "length {len}: {error:?}");
        }
    }

    #[test]
    fn a_table_from_another_format_version_is_unsupported() {
        // A future version must be refused by name, not misread or called corrupt.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = table_file(dir.path(), &entries(100));
        let mut bytes = std::fs::read(&path).expect("read table");
        let footer_start = bytes.len() - FOOTER_BYTES;
        let raw: [u8; FOOTER_BYTES] = bytes[footer_start..].try_into().expect("footer length");
        let footer = Footer::decode(&raw).expect("valid footer");
        bytes[footer_start..].copy_from_slice(&footer.encode_with_version(2));
        std::fs::write(&path, &bytes).expect("write table");
        let cache = Arc::new(BlockCache::new(0));
        let error = open_table(&path, &cache).expect_err("foreign version");
        assert!(
            matches!(
                error,
                Error::UnsupportedVersion {
                    found: 2,
                    supported: 1,
                    ..
                }
            ),
            "unexpected error {error:?}"
        );
    }

    #[test]
    fn a_second_read_of_a_block_comes_from_the_cache() {
        // Point lookups on hot keys must not reread and re-verify the block from disk.
        let dir = tempfile::tempdir().expect("temp dir");
        let entries = entries(1_000);
        let path = table_file(dir.path(), &entries);
        let cache = Arc::new(BlockCache::new(1 << 20));
        let table = open_table(&path, &cache).expect("open table");
        let user_key = key::user_key(&entries[500].0);
        let seek = seek_key(user_key, SEQUENCE_MAX);
        let first = table.get(user_key, &seek).expect("get");
        assert_eq!((cache.hits(), cache.misses()), (0, 1));
        let second = table.get(user_key, &seek).expect("get");
        assert_eq!((cache.hits(), cache.misses()), (1, 1));
        assert_eq!(first, second);
        assert!(cache.used_bytes() > 0);
    }

    #[test]
    fn absent_keys_are_mostly_answered_by_the_filter() {
        // The filter spares a block read for nearly every lookup of a key the table lacks.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = table_file(dir.path(), &entries(1_000));
        let cache = Arc::new(BlockCache::new(1 << 20));
        let table = open_table(&path, &cache).expect("open table");
        for i in 0..1_000 {
            let absent = format!("absent{i}");
            assert_eq!(
                table
                    .get(absent.as_bytes(), &seek_key(absent.as_bytes(), SEQUENCE_MAX))
                    .expect("get"),
                None
            );
        }
        assert!(
            cache.misses() + cache.hits() < 50,
            "filter let {} lookups through",
            cache.misses() + cache.hits()
        );
    }
}
