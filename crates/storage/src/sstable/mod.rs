//! Sorted string tables: immutable files of sorted `(internal key, value)`
//! entries, written once by [`TableBuilder`] and read by [`Table`].
//!
//! A table is data blocks, then a bloom filter, then an index, then a
//! fixed-size footer. Every block is followed by a 5-byte trailer (a type
//! byte and a CRC-32 of contents and type byte), checked on every read. In
//! format 3 (written now) the filter is cut into 4 KiB pages and the index
//! into 4 KiB partitions under a small top-level index, so a lookup reads
//! a page and a partition, not a whole filter and index; formats 1 and 2
//! have one filter block and one index block. The byte-level layout is in
//! `docs/storage-format.md`, section "Tables".
//!
//! - `block`: the entry format shared by data and index blocks.
//! - `bloom`: the filter over user keys.
//! - `filter_pages`: the paged filter's geometry (format 3).
//! - `builder`: writes a table.
//! - `reader`: opens a table, answers point lookups.
//! - `table_iter`: cursors over a table, through one or two index levels.

mod block;
mod bloom;
mod builder;
mod filter_pages;
mod reader;
mod table_iter;

#[cfg(test)]
mod index_tests;
#[cfg(test)]
mod partition_tests;

pub(crate) use block::Block;
#[cfg(feature = "fuzzing")]
pub(crate) use block::{BlockBuilder, BlockIter};
pub(crate) use bloom::{bloom_hash, line_probe_positions, Filter, FilterLayout, FILTER_LINE_BITS};
pub(crate) use builder::TableBuilder;
pub(crate) use reader::{Table, TableHit, TableSource};
pub(crate) use table_iter::TableIter;

use crate::coding::{put_varint, u32_le_at, u64_le_at, Decoder};
use crate::key;

/// The table format version this build writes. Version 3 cuts the index
/// into partitions under a top-level index and the filter into pages (see
/// `filter_pages`); version 2 index keys are shortest separators (see
/// [`separator`], kept in version 3) and its bloom filter places each key's
/// probes in one cache line (kept too); version 1 index keys were each
/// block's last key and its probes spread over the whole filter. This build
/// reads all three.
pub(crate) const FORMAT_VERSION: u32 = 3;

/// The second format version: one index block of separator keys and one
/// cache-local filter block. Still read (and written when asked, by tests).
pub(crate) const FORMAT_VERSION_SINGLE_INDEX: u32 = 2;

/// The first format version, whose index key for a block is the block's
/// last key (so a lookup that the index sends to a block must find an
/// entry there) and whose filters spread probes. Still read.
pub(crate) const FORMAT_VERSION_LAST_KEY_INDEX: u32 = 1;

/// Identifies a table file; the last 8 bytes of every table.
pub(crate) const TABLE_MAGIC: u64 = 0x7ab1_e5f0_0d1e_5b01;

/// Bytes after each block on disk: type byte and CRC-32.
pub(crate) const BLOCK_TRAILER_BYTES: u64 = 5;

/// The only block type so far: stored as is, uncompressed.
pub(crate) const BLOCK_TYPE_UNCOMPRESSED: u8 = 0;

/// Bytes of the footer at the end of every table.
pub(crate) const FOOTER_BYTES: usize = 56;

/// Keys between restart points in index blocks (partitions and top level
/// alike): one, so an index seek is a pure binary search.
const INDEX_RESTART_INTERVAL: usize = 1;

/// Target bytes of an index partition in format 3 (a partition is cut once
/// it reaches this size, so it may exceed it by one entry): a data block's
/// size, so a lookup reads about as much index as data.
pub(crate) const INDEX_PARTITION_BYTES_TARGET: usize = 4096;

/// Whether tables of `format_version` have a partitioned index and a paged
/// filter.
pub(crate) fn is_partitioned(format_version: u32) -> bool {
    format_version > FORMAT_VERSION_SINGLE_INDEX
}

/// How tables are laid out; taken from [`crate::options::Options`].
#[derive(Debug, Clone)]
pub(crate) struct TableOptions {
    /// Target uncompressed bytes of a data block (a block is cut once it
    /// reaches this size, so it may exceed it by one entry).
    pub block_bytes_target: usize,
    /// Entries between restart points in a data block.
    pub block_restart_interval: usize,
    /// Bloom filter bits per user key; 0 writes no filter.
    pub bloom_bits_per_key: usize,
    /// The format version to write: [`FORMAT_VERSION`], or
    /// [`FORMAT_VERSION_SINGLE_INDEX`] or [`FORMAT_VERSION_LAST_KEY_INDEX`]
    /// (tests write them to check they are read).
    pub format_version: u32,
    /// Target bytes of an index partition (format 3):
    /// [`INDEX_PARTITION_BYTES_TARGET`]; tests use small ones.
    pub index_partition_bytes_target: usize,
    /// Lines of 64 bytes per filter page (format 3):
    /// `FILTER_PAGE_LINES_DEFAULT` (4 KiB pages); tests use small ones.
    pub filter_page_lines: usize,
}

impl TableOptions {
    /// Where the filter's probes go in the format written.
    pub(crate) fn filter_layout(&self) -> FilterLayout {
        filter_layout(self.format_version)
    }
}

/// Where the filter's probes go in a table of `format_version`.
pub(crate) fn filter_layout(format_version: u32) -> FilterLayout {
    if format_version == FORMAT_VERSION_LAST_KEY_INDEX {
        FilterLayout::Spread
    } else {
        FilterLayout::CacheLocal
    }
}

impl From<&crate::options::Options> for TableOptions {
    fn from(options: &crate::options::Options) -> Self {
        TableOptions {
            block_bytes_target: options.block_bytes_target,
            block_restart_interval: options.block_restart_interval,
            bloom_bits_per_key: options.bloom_bits_per_key,
            format_version: FORMAT_VERSION,
            index_partition_bytes_target: INDEX_PARTITION_BYTES_TARGET,
            filter_page_lines: filter_pages::FILTER_PAGE_LINES_DEFAULT,
        }
    }
}

/// Appends to `out` the index key for a block whose last key is `last`,
/// followed by a block whose first key is `next` (`None` after the table's
/// last block): an internal key `k` with `last <= k < next`, as short as
/// the user keys allow.
///
/// The user-key part is shortened as LevelDB and RocksDB do: the first byte
/// where the user keys differ is incremented and the rest cut off (or, when
/// that byte is only one below `next`'s, a later byte of `last`). A
/// shortened user key `s` gets the trailer that sorts first for `s`
/// (`SEQUENCE_MAX`, the seek kind), so `k` still sorts after every version
/// of `last`'s user key and before every key of `next`'s. When nothing
/// shorter exists, `k` is `last` itself.
pub(crate) fn separator(last: &[u8], next: Option<&[u8]>, out: &mut Vec<u8>) {
    let last_user = key::user_key(last);
    let shortened = match next {
        Some(next) => shortest_user_separator(last_user, key::user_key(next)),
        None => short_user_successor(last_user),
    };
    match shortened {
        Some(user) if user.len() < last_user.len() => {
            debug_assert!(last_user < user.as_slice(), "a separator sorts after the last user key");
            key::append_internal_key(out, &user, key::SEQUENCE_MAX, key::KIND_FOR_SEEK);
            debug_assert!(key::compare(last, out).is_lt());
        }
        _ => out.extend_from_slice(last),
    }
    if let Some(next) = next {
        debug_assert!(
            key::compare(out, next).is_lt(),
            "a separator sorts before the next block"
        );
    }
}

/// A user key `s` with `a < s < b`, shorter than `a` if one is found by
/// incrementing one byte of `a` and cutting it after that byte.
fn shortest_user_separator(a: &[u8], b: &[u8]) -> Option<Vec<u8>> {
    let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    if common >= a.len().min(b.len()) {
        // One is a prefix of the other: nothing lies strictly between that is shorter.
        return None;
    }
    let (x, y) = (a[common], b[common]);
    debug_assert!(x < y, "separator inputs must be in order");
    if x < 0xff && x + 1 < y {
        let mut s = a[..=common].to_vec();
        s[common] = x + 1;
        return Some(s);
    }
    // `a[common] + 1 == b[common]`: keep that byte, and increment the first
    // later byte of `a` that can be, so the result stays below `b`.
    let offset = a[common + 1..].iter().position(|&byte| byte < 0xff)?;
    let at = common + 1 + offset;
    let mut s = a[..=at].to_vec();
    s[at] += 1;
    Some(s)
}

/// The shortest user key `s > a` made by incrementing a byte of `a` and
/// cutting it there; `None` if every byte of `a` is `0xff`.
fn short_user_successor(a: &[u8]) -> Option<Vec<u8>> {
    let at = a.iter().position(|&byte| byte < 0xff)?;
    let mut s = a[..=at].to_vec();
    s[at] += 1;
    Some(s)
}

/// What a finished table holds; the caller records it in the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableSummary {
    /// Bytes of the table file.
    pub file_bytes: u64,
    /// The smallest internal key in the table.
    pub smallest: Vec<u8>,
    /// The largest internal key in the table.
    pub largest: Vec<u8>,
    /// Entries (puts and tombstones) in the table.
    pub entries: u64,
}

/// Where a block lies in the file: its contents, without the trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockHandle {
    /// Offset of the block's first byte.
    pub offset: u64,
    /// Bytes of the block contents (the trailer follows them).
    pub size: u64,
}

impl BlockHandle {
    /// Appends the handle as two varints (the index block's values).
    pub(crate) fn encode_to(&self, buf: &mut Vec<u8>) {
        put_varint(buf, self.offset);
        put_varint(buf, self.size);
    }

    /// Decodes a handle that must fill `bytes` exactly.
    pub(crate) fn decode(bytes: &[u8]) -> Option<BlockHandle> {
        let mut decoder = Decoder::new(bytes);
        let offset = decoder.varint()?;
        let size = decoder.varint()?;
        decoder.is_empty().then_some(BlockHandle { offset, size })
    }

    /// The offset just past the block's trailer; `None` on overflow.
    pub(crate) fn end_with_trailer(&self) -> Option<u64> {
        self.offset.checked_add(self.size)?.checked_add(BLOCK_TRAILER_BYTES)
    }
}

/// The CRC-32 stored in a block trailer: over the contents, then the type byte.
pub(crate) fn block_crc(contents: &[u8], block_type: u8) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(contents);
    hasher.update(&[block_type]);
    hasher.finalize()
}

/// The fixed-size record at the end of a table.
///
/// Layout (little-endian): filter offset u64, filter size u64, index offset
/// u64, index size u64, entry count u64, crc32 u32, version u32, magic u64.
/// In format 3 the filter handle names the filter header block and the
/// index handle the top-level index block.
/// Version and magic sit last so a future format can change everything
/// before them; the CRC covers every other byte of the footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Footer {
    /// The filter block (format 3: the filter header); size 0 when the
    /// table has no filter.
    pub filter: BlockHandle,
    /// The index block (format 3: the top-level index).
    pub index: BlockHandle,
    /// Entries in the table.
    pub entries: u64,
}

/// Offset of the CRC inside the footer.
const FOOTER_CRC_AT: usize = 40;
/// Offset of the format version inside the footer.
const FOOTER_VERSION_AT: usize = 44;
/// Offset of the magic number inside the footer.
const FOOTER_MAGIC_AT: usize = 48;
const _: () = assert!(FOOTER_MAGIC_AT + 8 == FOOTER_BYTES);

/// Why footer bytes were rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FooterError {
    /// The magic number is not [`TABLE_MAGIC`]: not a table, or torn.
    BadMagic,
    /// A version this build does not read.
    Version(u32),
    /// The footer's CRC does not match its bytes.
    Checksum {
        /// Stored CRC.
        expected: u32,
        /// Computed CRC.
        actual: u32,
    },
}

impl Footer {
    /// Encodes the footer for format version [`FORMAT_VERSION`].
    #[cfg(test)]
    pub(crate) fn encode(&self) -> [u8; FOOTER_BYTES] {
        Self::encode_with_version(self, FORMAT_VERSION)
    }

    /// Encodes the footer claiming `version` (the builder writes either
    /// version this build reads; tests also write foreign ones).
    fn encode_with_version(&self, version: u32) -> [u8; FOOTER_BYTES] {
        let mut out = [0u8; FOOTER_BYTES];
        let fields = [
            self.filter.offset,
            self.filter.size,
            self.index.offset,
            self.index.size,
            self.entries,
        ];
        for (i, field) in fields.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&field.to_le_bytes());
        }
        out[FOOTER_VERSION_AT..FOOTER_MAGIC_AT].copy_from_slice(&version.to_le_bytes());
        out[FOOTER_MAGIC_AT..].copy_from_slice(&TABLE_MAGIC.to_le_bytes());
        let crc = footer_crc(&out);
        out[FOOTER_CRC_AT..FOOTER_VERSION_AT].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and verifies a footer: magic, then version, then CRC.
    /// Returns the footer and the table's format version.
    pub(crate) fn decode(bytes: &[u8; FOOTER_BYTES]) -> Result<(Footer, u32), FooterError> {
        if u64_le_at(bytes, FOOTER_MAGIC_AT) != TABLE_MAGIC {
            return Err(FooterError::BadMagic);
        }
        let version = u32_le_at(bytes, FOOTER_VERSION_AT);
        if !(FORMAT_VERSION_LAST_KEY_INDEX..=FORMAT_VERSION).contains(&version) {
            return Err(FooterError::Version(version));
        }
        let expected = u32_le_at(bytes, FOOTER_CRC_AT);
        let actual = footer_crc(bytes);
        if expected != actual {
            return Err(FooterError::Checksum { expected, actual });
        }
        let field = |i: usize| u64_le_at(bytes, i * 8);
        let footer = Footer {
            filter: BlockHandle {
                offset: field(0),
                size: field(1),
            },
            index: BlockHandle {
                offset: field(2),
                size: field(3),
            },
            entries: field(4),
        };
        Ok((footer, version))
    }
}

/// The footer CRC: over every footer byte except the CRC field itself.
fn footer_crc(bytes: &[u8; FOOTER_BYTES]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[..FOOTER_CRC_AT]);
    hasher.update(&bytes[FOOTER_VERSION_AT..]);
    hasher.finalize()
}

/// Rewrites the checksums of a table's footer, index, filter and data
/// blocks in place so that they match the bytes they cover, as far as the
/// table's structure can be followed: fuzzing uses it to reach the decoders
/// behind the checksums. Damaged structure is left as it is.
#[cfg(feature = "fuzzing")]
pub(crate) fn reseal(table: &mut [u8]) {
    let Some(footer_at) = table.len().checked_sub(FOOTER_BYTES) else {
        return;
    };
    let footer: &mut [u8; FOOTER_BYTES] = (&mut table[footer_at..])
        .try_into()
        .expect("the footer slice has FOOTER_BYTES bytes");
    let crc = footer_crc(footer);
    footer[FOOTER_CRC_AT..FOOTER_VERSION_AT].copy_from_slice(&crc.to_le_bytes());
    let Ok((footer, version)) = Footer::decode(footer) else {
        return;
    };
    let table = &mut table[..footer_at];
    if footer.filter.size > 0 {
        let header = reseal_block(table, footer.filter);
        let geometry = header.and_then(|header| filter_pages::FilterGeometry::decode(&table[header]).ok());
        if let Some(geometry) = geometry.filter(|_| is_partitioned(version)) {
            // A page takes at least a line and a trailer: no more fit.
            let pages_fitting = table.len() / (bloom::FILTER_LINE_BYTES + BLOCK_TRAILER_BYTES as usize);
            let pages = geometry.pages.min(u32::try_from(pages_fitting).unwrap_or(u32::MAX));
            for handle in (0..pages).filter_map(|page| geometry.page_handle(page)) {
                reseal_block(table, handle);
            }
        }
    }
    // Format 3 has two index levels: the top-level index, then partitions.
    let depth = if is_partitioned(version) { 2 } else { 1 };
    reseal_index(table, footer.index, depth);
}

/// Reseals the index block at `handle` and, below it, `depth - 1` more
/// index levels and then the data blocks its entries name.
#[cfg(feature = "fuzzing")]
fn reseal_index(table: &mut [u8], handle: BlockHandle, depth: usize) {
    let Some(index) = reseal_block(table, handle) else {
        return;
    };
    let Ok(index) = Block::parse(bytes::Bytes::copy_from_slice(&table[index])) else {
        return;
    };
    let mut entries = block::BlockIter::new(index);
    entries.seek_to_first();
    while entries.valid() {
        if let Some(handle) = BlockHandle::decode(entries.value()) {
            if depth > 1 {
                reseal_index(table, handle, depth - 1);
            } else {
                reseal_block(table, handle);
            }
        }
        entries.next();
    }
}

/// Rewrites the trailer CRC of the block at `handle` if it lies inside
/// `table` (the bytes before the footer); returns where its contents lie.
#[cfg(feature = "fuzzing")]
fn reseal_block(table: &mut [u8], handle: BlockHandle) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(handle.offset).ok()?;
    let end = usize::try_from(handle.offset.checked_add(handle.size)?).ok()?;
    if end.checked_add(BLOCK_TRAILER_BYTES as usize)? > table.len() {
        return None;
    }
    let crc = block_crc(&table[start..end], table[end]);
    table[end + 1..end + BLOCK_TRAILER_BYTES as usize].copy_from_slice(&crc.to_le_bytes());
    Some(start..end)
}

/// Helpers for tests in this module and elsewhere in the crate.
#[cfg(test)]
pub(crate) mod tests_support {
    use std::path::Path;
    use std::sync::Arc;

    use super::block::{Block, BlockBuilder};
    use super::{Table, TableBuilder, TableHit, TableOptions, TableSummary};
    use crate::cache::BlockCache;
    use crate::error::Result;
    use crate::io::{AppendFile, ReadFile};
    use crate::iterator::InternalIterator;
    use crate::key::{internal_key, ValueKind};

    /// An `(internal key, value)` pair.
    pub(crate) type Entry = (Vec<u8>, Vec<u8>);

    /// A valid block of about `bytes` bytes: one entry with a filler value.
    pub(crate) fn block_of_bytes(bytes: usize) -> Block {
        let mut builder = BlockBuilder::new(16);
        builder.add(&internal_key(b"k", 1, ValueKind::Put), &vec![0xAB; bytes]);
        Block::parse(bytes::Bytes::copy_from_slice(builder.finish())).expect("a fresh block parses")
    }

    /// The default layout: 4 KiB blocks, restarts every 16, 10 bloom bits per key.
    pub(crate) fn default_options() -> TableOptions {
        TableOptions::from(&crate::options::Options::default())
    }

    /// Writes `entries` (sorted) as a table at `path`.
    pub(crate) fn write_table(path: &Path, entries: &[Entry], options: TableOptions) -> TableSummary {
        let file = AppendFile::create_new(&crate::io::RealFs, path).expect("create table file");
        let mut builder = TableBuilder::new(file, options);
        for (key, value) in entries {
            builder.add(key, value).expect("add to table");
        }
        builder.finish().expect("finish table")
    }

    /// Opens the table at `path` as file number 1.
    pub(crate) fn open_table(path: &Path, cache: &Arc<BlockCache>) -> Result<Arc<Table>> {
        Ok(Arc::new(Table::open(
            ReadFile::open(&crate::io::RealFs, path)?,
            1,
            Arc::clone(cache),
        )?))
    }

    /// What a lookup that finds the entry `(internal_key, value)` returns.
    pub(crate) fn hit(internal_key: &[u8], value: &[u8]) -> TableHit {
        let parsed = crate::key::parse(internal_key).expect("a valid internal key");
        TableHit {
            kind: parsed.kind,
            value: bytes::Bytes::copy_from_slice(value),
        }
    }

    /// Every entry of `table`, in iteration order.
    pub(crate) fn scan(table: &Arc<Table>) -> Result<Vec<Entry>> {
        let mut iter = table.iter();
        iter.seek_to_first()?;
        let mut out = Vec::new();
        while iter.valid() {
            out.push((iter.key().to_vec(), iter.value().to_vec()));
            iter.next()?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn footer() -> Footer {
        Footer {
            filter: BlockHandle {
                offset: 4096,
                size: 130,
            },
            index: BlockHandle { offset: 4231, size: 77 },
            entries: 1234,
        }
    }

    #[test]
    fn footers_round_trip() {
        // The footer is the root of every read: it must decode to what was written.
        assert_eq!(Footer::decode(&footer().encode()), Ok((footer(), FORMAT_VERSION)));
        let old = footer().encode_with_version(FORMAT_VERSION_LAST_KEY_INDEX);
        assert_eq!(Footer::decode(&old), Ok((footer(), FORMAT_VERSION_LAST_KEY_INDEX)));
    }

    #[test]
    fn footer_damage_is_classified() {
        // Magic, version and CRC failures are distinct errors for the operator.
        let mut bytes = footer().encode();
        bytes[33] ^= 1;
        assert!(matches!(Footer::decode(&bytes), Err(FooterError::Checksum { .. })));
        let mut bytes = footer().encode();
        bytes[FOOTER_BYTES - 1] ^= 1;
        assert_eq!(Footer::decode(&bytes), Err(FooterError::BadMagic));
        let bytes = footer().encode_with_version(FORMAT_VERSION + 1);
        assert_eq!(Footer::decode(&bytes), Err(FooterError::Version(FORMAT_VERSION + 1)));
    }

    #[test]
    fn block_handles_must_fill_their_bytes_exactly() {
        // Trailing garbage after a handle in an index entry is corruption.
        let mut buf = Vec::new();
        BlockHandle { offset: 300, size: 7 }.encode_to(&mut buf);
        assert_eq!(BlockHandle::decode(&buf), Some(BlockHandle { offset: 300, size: 7 }));
        buf.push(0);
        assert_eq!(BlockHandle::decode(&buf), None);
    }
}
