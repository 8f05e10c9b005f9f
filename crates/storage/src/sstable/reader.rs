//! Reads a table: opening reads and verifies the footer (and, in format 3,
//! the small top-level index and filter header, kept while the table is
//! open); the index (format 3: its partitions), the filter (format 3: its
//! pages) and the data blocks are read on demand through the block cache,
//! their CRC checked on every read from disk. An open table holds a file
//! handle and a few words, plus in format 3 a top-level index of one entry
//! per ~4 KiB index partition (a few KiB for a 64 MiB table).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::block::{Block, BlockCorruption, BlockIter};
use super::bloom::{bloom_hash, Filter};
use super::filter_pages::FilterGeometry;
use super::{
    block_crc, is_partitioned, BlockHandle, Footer, FooterError, BLOCK_TRAILER_BYTES, BLOCK_TYPE_UNCOMPRESSED,
    FOOTER_BYTES, FORMAT_VERSION, FORMAT_VERSION_LAST_KEY_INDEX,
};
use crate::cache::BlockCache;
use crate::error::{Error, Result};
use crate::io::ReadFile;
use crate::key::{self, ValueKind};

thread_local! {
    /// Scratch space for the prefix-compressed keys a point lookup rebuilds,
    /// kept per thread so that lookups allocate nothing once it has grown.
    static LOOKUP_KEY_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// What a point lookup found in a table: the newest visible entry of the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableHit {
    /// Whether the entry is a put or a tombstone.
    pub kind: ValueKind,
    /// The value (empty for a tombstone), copied out of the block so that a
    /// caller holding it never pins a cached block.
    pub value: Bytes,
}

/// A table's index.
#[derive(Debug)]
enum TableIndex {
    /// Formats 1 and 2: one index block, read through the block cache.
    Single(BlockHandle),
    /// Format 3: the top-level index (each partition's last key -> the
    /// partition's handle), read and checked at open and held while the
    /// table is open; the partitions go through the block cache.
    Partitioned(Block),
}

/// A table's bloom filter.
#[derive(Debug, Clone, Copy)]
enum TableFilter {
    /// No filter (written with `bloom_bits_per_key = 0`).
    Absent,
    /// Formats 1 and 2: one filter block, read through the block cache.
    Whole(BlockHandle),
    /// Format 3: where the pages lie (from the filter header, read at open);
    /// each page goes through the block cache.
    Paged(FilterGeometry),
}

/// An open table file.
#[derive(Debug)]
pub(crate) struct Table {
    /// The file.
    file: ReadFile,
    /// The file's number, the first half of its block-cache keys.
    file_number: u64,
    /// The shared block cache, which also holds the index and filter.
    cache: Arc<BlockCache>,
    /// The index: one block, or a top-level index over partitions.
    index: TableIndex,
    /// The bloom filter over user keys, if the table has one.
    filter: TableFilter,
    /// Entries in the table, from the footer.
    entries: u64,
    /// Offset of the footer: every block must end before it.
    footer_offset: u64,
    /// The table's format version, from the footer.
    format_version: u32,
    /// Counts this table among the open files while it lives, if counted.
    _open_file: Option<OpenFileGuard>,
    /// Formats 1 and 2: the index block, once a lookup asked for it pinned
    /// (L0 tables).
    pinned_index: OnceLock<Block>,
    /// Formats 1 and 2: the filter, once a lookup asked for it pinned (L0
    /// tables).
    pinned_filter: OnceLock<Filter>,
    /// Format 3: one slot per filter page, each filled by the first lookup
    /// that asks for that page pinned (L0 tables); allocated on first use.
    pinned_pages: OnceLock<Box<[OnceLock<Bytes>]>>,
    /// Format 3: one slot per index partition, filled like `pinned_pages`.
    pinned_partitions: OnceLock<Box<[OnceLock<Block>]>>,
}

/// Adds one to a count of open table files for as long as it lives.
#[derive(Debug)]
struct OpenFileGuard {
    /// The count this guard adds one to.
    count: Arc<AtomicU64>,
}

impl Drop for OpenFileGuard {
    fn drop(&mut self) {
        // A statistic: no ordering with other memory is needed.
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Table {
    /// Opens a table: reads and verifies the footer, and in format 3 the
    /// filter header and the top-level index (checking that the pages and
    /// the partitions lie back to back, in order, inside the file). The
    /// rest is read (and verified) when first needed.
    pub(crate) fn open(file: ReadFile, file_number: u64, cache: Arc<BlockCache>) -> Result<Table> {
        let footer_offset = file
            .len_bytes()
            .checked_sub(FOOTER_BYTES as u64)
            .ok_or_else(|| Error::corruption(file.path(), 0, "file shorter than a table footer"))?;
        let mut raw = [0u8; FOOTER_BYTES];
        file.read_exact_at(footer_offset, &mut raw)?;
        let (footer, format_version) = Footer::decode(&raw).map_err(|e| footer_error(&file, footer_offset, e))?;
        if footer.entries == 0 {
            return Err(Error::corruption(
                file.path(),
                footer_offset,
                "footer claims an empty table",
            ));
        }
        for handle in [footer.index, footer.filter] {
            check_in_bounds(&file, footer_offset, handle)?;
        }
        if footer.index.size == 0 {
            return Err(Error::corruption(
                file.path(),
                footer_offset,
                "footer names an empty index",
            ));
        }
        let partitioned = is_partitioned(format_version);
        let filter = match (footer.filter.size > 0, partitioned) {
            (false, _) => TableFilter::Absent,
            (true, false) => TableFilter::Whole(footer.filter),
            (true, true) => TableFilter::Paged(read_filter_geometry(&file, footer_offset, footer.filter)?),
        };
        let index = if partitioned {
            // The partitions follow the filter header, if there is one.
            let partitions_offset = match filter {
                TableFilter::Paged(_) => footer.filter.end_with_trailer(),
                TableFilter::Absent | TableFilter::Whole(_) => None,
            };
            TableIndex::Partitioned(read_top_level_index(
                &file,
                footer_offset,
                footer.index,
                partitions_offset,
            )?)
        } else {
            TableIndex::Single(footer.index)
        };
        Ok(Table {
            file,
            file_number,
            cache,
            index,
            filter,
            entries: footer.entries,
            footer_offset,
            format_version,
            _open_file: None,
            pinned_index: OnceLock::new(),
            pinned_filter: OnceLock::new(),
            pinned_pages: OnceLock::new(),
            pinned_partitions: OnceLock::new(),
        })
    }

    /// The table, counted in `open_files` until it is dropped (and its file
    /// closed).
    pub(crate) fn counted_in(mut self, open_files: Arc<AtomicU64>) -> Table {
        open_files.fetch_add(1, Ordering::Relaxed);
        self._open_file = Some(OpenFileGuard { count: open_files });
        self
    }

    /// The newest entry of `user_key` at or below the snapshot in `seek_key`
    /// (`key::seek_key(user_key, snapshot)`): the first entry `>= seek_key`,
    /// if it belongs to `user_key`. Consults the bloom filter first.
    /// Allocates only the returned value.
    ///
    /// In format 3 a lookup reads one filter page, then (if the filter lets
    /// it through) one index partition, chosen by the top-level index the
    /// table holds, and one data block, each from the block cache or else
    /// from disk. With `pin`, what the lookup reads of the index and filter
    /// is kept in the table (for as long as it stays open), sparing
    /// block-cache lookups on later calls: the whole index and filter in
    /// formats 1 and 2, the page and the partition read in format 3. The
    /// engine pins them for L0 tables, which every lookup consults.
    pub(crate) fn get(&self, user_key: &[u8], seek_key: &[u8], pin: bool) -> Result<Option<TableHit>> {
        debug_assert_eq!(key::user_key(seek_key), user_key, "seek key must be for the user key");
        if !self.filter_may_contain(user_key, pin)? {
            return Ok(None);
        }
        let Some(handle) = self.data_block_for(seek_key, pin)? else {
            return Ok(None);
        };
        let block = self.data_block(handle)?;
        LOOKUP_KEY_BUF.with_borrow_mut(|key_buf| {
            let Some((found, value)) = block.seek_entry(seek_key, key_buf) else {
                if self.format_version == FORMAT_VERSION_LAST_KEY_INDEX {
                    // There the index key is the block's last key, so the
                    // block must hold an entry >= any key that chose it.
                    return Err(Error::corruption(
                        self.file.path(),
                        handle.offset,
                        "index key is beyond the last key of its block",
                    ));
                }
                // A separator index key lies between this block's last key
                // and the next block's first, whose user key differs from
                // every user key up to the separator: `user_key` is absent.
                return Ok(None);
            };
            let parsed = key::parse(found).ok_or_else(|| {
                Error::corruption(self.file.path(), handle.offset, "malformed internal key in a block")
            })?;
            if parsed.user_key != user_key {
                return Ok(None);
            }
            Ok(Some(TableHit {
                kind: parsed.kind,
                value: Bytes::copy_from_slice(value),
            }))
        })
    }

    /// The handle of the data block that holds the first entry `>=
    /// seek_key`, if any, found through the index (and, in format 3, one
    /// index partition).
    fn data_block_for(&self, seek_key: &[u8], pin: bool) -> Result<Option<BlockHandle>> {
        // Index keys are stored whole (one restart per entry), so this
        // never touches the buffer in tables this engine writes.
        let mut no_buffer = Vec::new();
        match &self.index {
            TableIndex::Single(handle) => {
                let unpinned;
                let index = if pin {
                    self.pinned_index(*handle)?
                } else {
                    unpinned = self.block_at(*handle)?;
                    &unpinned
                };
                let Some((_, value)) = index.seek_entry(seek_key, &mut no_buffer) else {
                    return Ok(None);
                };
                self.decode_handle(value).map(Some)
            }
            TableIndex::Partitioned(top) => {
                // `open` checked that every top-level entry is a restart point.
                let Some((position, value)) = top.seek_restart(seek_key) else {
                    return Ok(None);
                };
                let partition_handle = self.decode_handle(value)?;
                let unpinned;
                let partition = if pin {
                    self.pinned_partition(top.restart_count(), position, partition_handle)?
                } else {
                    unpinned = self.block_at(partition_handle)?;
                    &unpinned
                };
                let Some((_, value)) = partition.seek_entry(seek_key, &mut no_buffer) else {
                    // The top-level key is the partition's last key, `>=
                    // seek_key`: a partition without such a key is damaged.
                    return Err(Error::corruption(
                        self.file.path(),
                        partition_handle.offset,
                        "index partition ends before its top-level key",
                    ));
                };
                self.decode_handle(value).map(Some)
            }
        }
    }

    /// A cursor over the whole table. Data blocks are loaded lazily through
    /// the block cache.
    #[cfg(test)]
    pub(crate) fn iter(self: &Arc<Self>) -> super::TableIter {
        super::TableIter::deferred(Arc::new(Arc::clone(self)))
    }

    /// False only if the table certainly holds no entry for `user_key`.
    #[cfg(test)]
    pub(crate) fn may_contain(&self, user_key: &[u8]) -> Result<bool> {
        self.filter_may_contain(user_key, false)
    }

    /// False only if the table certainly holds no entry for `user_key`: asks
    /// the whole filter (pinned with `pin`) or the key's filter page.
    fn filter_may_contain(&self, user_key: &[u8], pin: bool) -> Result<bool> {
        match self.filter {
            TableFilter::Absent => Ok(true),
            TableFilter::Whole(handle) if pin => Ok(self.pinned_filter(handle)?.may_contain(user_key)),
            TableFilter::Whole(handle) => Ok(self.whole_filter(handle)?.may_contain(user_key)),
            TableFilter::Paged(geometry) => self.filter_page_may_contain(&geometry, user_key, pin),
        }
    }

    /// Asks the one filter page that `user_key`'s line lies in: pinned in
    /// the table (with `pin`), or from the cache, or else read, verified and
    /// cached (and then pinned, with `pin`).
    fn filter_page_may_contain(&self, geometry: &FilterGeometry, user_key: &[u8], pin: bool) -> Result<bool> {
        let hash = bloom_hash(user_key);
        let (page, line) = geometry.locate(hash);
        let slot = match pin {
            true => pinned_slot(&self.pinned_pages, geometry.pages as usize, page as usize),
            false => None,
        };
        if let Some(contents) = slot.and_then(OnceLock::get) {
            return Ok(geometry.page_may_contain(contents, line, hash));
        }
        let handle = geometry.page_handle(page).ok_or_else(|| {
            // `open` checked the geometry; only a bug gets here.
            Error::corruption(
                self.file.path(),
                geometry.pages_offset,
                "filter page outside the filter",
            )
        })?;
        let contents = match self.cache.get_filter_page(self.file_number, handle.offset) {
            Some(contents) => contents,
            None => {
                let contents = read_block(&self.file, self.footer_offset, handle)?;
                self.cache
                    .insert_filter_page(self.file_number, handle.offset, contents.clone());
                contents
            }
        };
        let may_contain = geometry.page_may_contain(&contents, line, hash);
        if let Some(slot) = slot {
            // A racing caller may have pinned it first; both read the same bytes.
            slot.get_or_init(|| contents);
        }
        Ok(may_contain)
    }

    /// Index partition number `position` of `partitions` (at `handle`),
    /// pinned in the table from its first use on.
    fn pinned_partition(&self, partitions: usize, position: usize, handle: BlockHandle) -> Result<&Block> {
        let Some(slot) = pinned_slot(&self.pinned_partitions, partitions, position) else {
            return Err(Error::corruption(
                self.file.path(),
                handle.offset,
                "index partition outside the top-level index",
            ));
        };
        if let Some(partition) = slot.get() {
            return Ok(partition);
        }
        let partition = self.block_at(handle)?;
        Ok(slot.get_or_init(|| partition))
    }

    /// The whole filter block (formats 1 and 2), from the cache or else
    /// read, verified, parsed and cached.
    fn whole_filter(&self, handle: BlockHandle) -> Result<Filter> {
        if let Some(filter) = self.cache.get_filter(self.file_number, handle.offset) {
            return Ok(filter);
        }
        let bytes = read_block(&self.file, self.footer_offset, handle)?;
        let filter = Filter::parse(bytes, super::filter_layout(self.format_version))
            .map_err(|reason| Error::corruption(self.file.path(), handle.offset, reason))?;
        self.cache
            .insert_filter(self.file_number, handle.offset, filter.clone());
        Ok(filter)
    }

    /// The whole filter, pinned in the table from its first use on.
    fn pinned_filter(&self, handle: BlockHandle) -> Result<&Filter> {
        if let Some(filter) = self.pinned_filter.get() {
            return Ok(filter);
        }
        let filter = self.whole_filter(handle)?;
        // A racing caller may have pinned it first; both read the same bytes.
        Ok(self.pinned_filter.get_or_init(|| filter))
    }

    /// The index block, pinned in the table from its first use on.
    fn pinned_index(&self, handle: BlockHandle) -> Result<&Block> {
        if let Some(index) = self.pinned_index.get() {
            return Ok(index);
        }
        let index = self.block_at(handle)?;
        Ok(self.pinned_index.get_or_init(|| index))
    }

    /// Bytes of index and filter the table holds outside the block cache:
    /// the top-level index (format 3, always), and what lookups asked for
    /// pinned (the whole index and filter in formats 1 and 2; the pages and
    /// partitions read, and their slots, in format 3).
    pub(crate) fn pinned_bytes(&self) -> usize {
        let top = match &self.index {
            TableIndex::Partitioned(top) => top.size_bytes(),
            TableIndex::Single(_) => 0,
        };
        let index = self.pinned_index.get().map_or(0, Block::size_bytes);
        let filter = self.pinned_filter.get().map_or(0, Filter::memory_bytes);
        let pages = slots_bytes(&self.pinned_pages, Bytes::len);
        let partitions = slots_bytes(&self.pinned_partitions, Block::size_bytes);
        top + index + filter + pages + partitions
    }

    /// The table's file number.
    pub(crate) fn file_number(&self) -> u64 {
        self.file_number
    }

    /// Entries in the table, as recorded in its footer.
    pub(crate) fn entries(&self) -> u64 {
        self.entries
    }

    /// The root of the index, for a cursor: the whole index block (formats
    /// 1 and 2, from the cache or else from disk) or the top-level index
    /// (format 3), and whether its entries name partitions.
    pub(super) fn index_root(&self) -> Result<(Block, bool)> {
        match &self.index {
            TableIndex::Single(handle) => Ok((self.block_at(*handle)?, false)),
            TableIndex::Partitioned(top) => Ok((top.clone(), true)),
        }
    }

    /// The index partition at `handle`, from the cache or else from disk,
    /// inserted into the cache only with `fill_cache`.
    pub(super) fn index_partition(&self, handle: BlockHandle, fill_cache: bool) -> Result<Block> {
        match fill_cache {
            true => self.block_at(handle),
            false => self.data_block_without_cache_fill(handle),
        }
    }

    /// The data block at `handle`, from the cache or else from disk.
    pub(super) fn data_block(&self, handle: BlockHandle) -> Result<Block> {
        self.block_at(handle)
    }

    /// The block at `handle`, from the cache or else read, verified, parsed
    /// and cached.
    fn block_at(&self, handle: BlockHandle) -> Result<Block> {
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
    pub(super) fn data_block_without_cache_fill(&self, handle: BlockHandle) -> Result<Block> {
        if let Some(block) = self.cache.get(self.file_number, handle.offset) {
            return Ok(block);
        }
        let bytes = read_block(&self.file, self.footer_offset, handle)?;
        Block::parse(bytes).map_err(|e| block_error(&self.file, handle, e))
    }

    /// Decodes a block handle from an index entry.
    pub(super) fn decode_handle(&self, value: &[u8]) -> Result<BlockHandle> {
        BlockHandle::decode(value).ok_or_else(|| {
            Error::corruption(
                self.file.path(),
                self.footer_offset,
                "malformed block handle in the index",
            )
        })
    }
}

/// Slot `position` of `slots`, allocating `count` empty slots on first
/// use; `None` if `position` is out of range.
fn pinned_slot<T>(slots: &OnceLock<Box<[OnceLock<T>]>>, count: usize, position: usize) -> Option<&OnceLock<T>> {
    slots
        .get_or_init(|| (0..count).map(|_| OnceLock::new()).collect())
        .get(position)
}

/// Bytes held in pinned slots: the values filled (each `bytes` long) and
/// the slots themselves.
fn slots_bytes<T>(slots: &OnceLock<Box<[OnceLock<T>]>>, bytes: impl Fn(&T) -> usize) -> usize {
    slots.get().map_or(0, |slots| {
        let held: usize = slots.iter().filter_map(OnceLock::get).map(bytes).sum();
        held + slots.len() * std::mem::size_of::<OnceLock<T>>()
    })
}

/// Reads and checks the filter header of a format 3 table at `handle`: its
/// fields agree with each other, and its pages end where it begins.
fn read_filter_geometry(file: &ReadFile, footer_offset: u64, handle: BlockHandle) -> Result<FilterGeometry> {
    let bytes = read_block(file, footer_offset, handle)?;
    FilterGeometry::decode(&bytes)
        .and_then(|geometry| geometry.check_placement(handle.offset).map(|()| geometry))
        .map_err(|reason| Error::corruption(file.path(), handle.offset, reason))
}

/// Reads and checks the top-level index of a format 3 table at `handle`:
/// a valid block (so its keys ascend) whose handles name non-empty
/// partitions lying back to back in key order, the first at
/// `partitions_offset` (when known: right after the filter header) and the
/// last ending where the top-level index begins.
fn read_top_level_index(
    file: &ReadFile,
    footer_offset: u64,
    handle: BlockHandle,
    partitions_offset: Option<u64>,
) -> Result<Block> {
    let bytes = read_block(file, footer_offset, handle)?;
    let top = Block::parse(bytes).map_err(|e| block_error(file, handle, e))?;
    let corrupt = |reason: &'static str| Error::corruption(file.path(), handle.offset, reason);
    let mut entries = BlockIter::new(top.clone());
    entries.seek_to_first();
    let mut next_offset = partitions_offset;
    let mut count = 0;
    while entries.valid() {
        count += 1;
        let partition = BlockHandle::decode(entries.value())
            .ok_or_else(|| corrupt("malformed partition handle in the top-level index"))?;
        if partition.size == 0 || next_offset.is_some_and(|offset| offset != partition.offset) {
            return Err(corrupt("index partitions do not lie back to back in key order"));
        }
        next_offset = Some(
            partition
                .end_with_trailer()
                .ok_or_else(|| corrupt("index partition handle overflows"))?,
        );
        entries.next();
    }
    if next_offset != Some(handle.offset) {
        return Err(corrupt("index partitions do not end where the top-level index begins"));
    }
    // Lookups find a partition's position by its restart point.
    if count != top.restart_count() {
        return Err(corrupt("top-level index entry without a restart point"));
    }
    Ok(top)
}

/// Checks that the block at `handle` (with its trailer, if it has contents)
/// lies before the footer at `footer_offset`.
fn check_in_bounds(file: &ReadFile, footer_offset: u64, handle: BlockHandle) -> Result<()> {
    let in_bounds = handle.size == 0 && handle.offset <= footer_offset
        || handle.end_with_trailer().is_some_and(|end| end <= footer_offset);
    if in_bounds {
        Ok(())
    } else {
        Err(Error::corruption(
            file.path(),
            handle.offset,
            "block handle points outside the table",
        ))
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
    assert_sendable::<super::TableIter>();
};

/// Something that opens a table when a cursor first needs it (the engine's
/// table cache), and keeps the table's file alive while the cursor lives.
pub(crate) trait TableSource: Send + Sync + std::fmt::Debug {
    /// The open table, opened now if it is not open already.
    fn open_table(&self) -> Result<Arc<Table>>;
}

/// An open table is its own source (tests read tables directly).
impl TableSource for Arc<Table> {
    fn open_table(&self) -> Result<Arc<Table>> {
        Ok(Arc::clone(self))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::tests_support::{default_options, hit, open_table, scan, write_table, Entry};
    use super::super::{TableOptions, FOOTER_BYTES};
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
            if let Some(found) = table.get(user_key, &seek_key(user_key, SEQUENCE_MAX), false)? {
                assert_eq!(found, hit(key, value), "a lookup returned wrong data");
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
            .get(user_key, &seek_key(user_key, SEQUENCE_MAX), false)
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
        assert!(cache.get(1, 0).is_none(), "a damaged block must not be cached");
    }

    #[test]
    fn every_single_byte_flip_is_detected_and_never_returns_wrong_data() {
        // Every byte of a table is covered by a CRC: flipping any one must produce an error.
        // Format 3 with tiny partitions and one-line pages has every kind of block several times.
        let format3 = TableOptions {
            block_bytes_target: 256,
            index_partition_bytes_target: 48,
            filter_page_lines: 1,
            ..default_options()
        };
        let format2 = TableOptions {
            format_version: super::super::FORMAT_VERSION_SINGLE_INDEX,
            ..default_options()
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let entries = entries(150);
        let path = dir.path().join("000001.sst");
        for options in [format3, format2] {
            let version = options.format_version;
            write_table(&path, &entries, options);
            let good = std::fs::read(&path).expect("read table");
            println!("format {version}: checking {} byte positions", good.len());
            for pos in 0..good.len() {
                let mut bad = good.clone();
                bad[pos] ^= 0x10;
                std::fs::write(&path, &bad).expect("write table");
                let cache = Arc::new(BlockCache::new(1 << 20));
                let detected = match open_table(&path, &cache) {
                    Err(error) => {
                        assert!(error.is_corruption(), "format {version}, flip at {pos}: {error:?}");
                        true
                    }
                    Ok(table) => {
                        let lookups = get_all(&table, &entries);
                        let scanned = scan(&table);
                        if let Ok(scanned) = &scanned {
                            assert_eq!(
                                scanned, &entries,
                                "format {version}: flip at {pos} changed scanned data"
                            );
                        }
                        lookups.is_err() || scanned.is_err()
                    }
                };
                assert!(detected, "format {version}: flip at byte {pos} went unnoticed");
            }
            std::fs::remove_file(&path).expect("remove table");
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
        let (footer, _) = Footer::decode(&raw).expect("valid footer");
        bytes[footer_start..].copy_from_slice(&footer.encode_with_version(FORMAT_VERSION + 1));
        std::fs::write(&path, &bytes).expect("write table");
        let cache = Arc::new(BlockCache::new(0));
        let error = open_table(&path, &cache).expect_err("foreign version");
        assert!(
            matches!(
                error,
                Error::UnsupportedVersion {
                    found: 4,
                    supported: 3,
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
        let first = table.get(user_key, &seek, false).expect("get");
        // The filter, the index and the data block: each read from disk once.
        assert_eq!((cache.hits(), cache.misses()), (0, 3));
        let second = table.get(user_key, &seek, false).expect("get");
        assert_eq!((cache.hits(), cache.misses()), (3, 3));
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
                    .get(absent.as_bytes(), &seek_key(absent.as_bytes(), SEQUENCE_MAX), false)
                    .expect("get"),
                None
            );
        }
        // Each lookup asks the cache for the filter; each one the filter
        // lets through also asks for the index and a data block.
        let block_lookups = cache.misses() + cache.hits() - 1_000;
        assert!(block_lookups < 100, "filter let {} lookups through", block_lookups / 2);
    }
}
