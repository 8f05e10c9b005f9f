//! Writes a table: data blocks as entries arrive, then the filter, the
//! index and the footer. In format 3 the filter goes out as pages and a
//! header, and the index as partitions (held in memory until the data
//! blocks are written) and a top-level index.

use std::cmp::Ordering;

use super::block::BlockBuilder;
use super::bloom::FilterBuilder;
use super::filter_pages::{split_into_pages, FilterGeometry, FILTER_PAGE_LINES_MAX};
use super::{
    block_crc, is_partitioned, BlockHandle, Footer, TableOptions, TableSummary, BLOCK_TYPE_UNCOMPRESSED,
    FORMAT_VERSION, FORMAT_VERSION_LAST_KEY_INDEX, INDEX_RESTART_INTERVAL,
};
use crate::error::Result;
use crate::io::AppendFile;
use crate::key;

/// Builds one table file from entries added in [`key::compare`] order.
#[derive(Debug)]
pub(crate) struct TableBuilder {
    /// The file being written.
    file: AppendFile,
    /// Layout knobs.
    options: TableOptions,
    /// The data block being filled.
    data_block: BlockBuilder,
    /// One entry per finished data block: a separator key and its handle
    /// (format 3: the index partition being filled).
    index_block: BlockBuilder,
    /// Format 3: the finished index partitions, each with its last key,
    /// written after the filter (the data blocks come first in the file).
    index_partitions: Vec<(Vec<u8>, Vec<u8>)>,
    /// User keys of the whole table.
    filter: FilterBuilder,
    /// The first key added.
    smallest: Vec<u8>,
    /// The last key added (its allocation is reused).
    last_key: Vec<u8>,
    /// Entries added.
    entries: u64,
    /// Scratch space for encoding block handles.
    handle_buf: Vec<u8>,
    /// The handle of the last data block written, whose index entry waits
    /// for the next key (to choose a short separator) or for `finish`.
    pending_index_entry: Option<BlockHandle>,
    /// Scratch space for index keys.
    index_key_buf: Vec<u8>,
}

impl TableBuilder {
    /// Starts a table in `file`, which must be empty.
    pub(crate) fn new(file: AppendFile, options: TableOptions) -> Self {
        assert_eq!(file.len_bytes(), 0, "a table must be written into an empty file");
        assert!(options.block_bytes_target > 0, "block_bytes_target must be positive");
        assert!(
            (FORMAT_VERSION_LAST_KEY_INDEX..=FORMAT_VERSION).contains(&options.format_version),
            "tables are written in a format this build reads"
        );
        assert!(
            options.index_partition_bytes_target > 0,
            "index_partition_bytes_target must be positive"
        );
        assert!(
            (1..=FILTER_PAGE_LINES_MAX).contains(&options.filter_page_lines),
            "filter_page_lines must be within 1..=FILTER_PAGE_LINES_MAX"
        );
        TableBuilder {
            file,
            data_block: BlockBuilder::new(options.block_restart_interval),
            index_block: BlockBuilder::new(INDEX_RESTART_INTERVAL),
            index_partitions: Vec::new(),
            filter: FilterBuilder::new(options.bloom_bits_per_key, options.filter_layout()),
            options,
            smallest: Vec::new(),
            last_key: Vec::new(),
            entries: 0,
            handle_buf: Vec::new(),
            pending_index_entry: None,
            index_key_buf: Vec::new(),
        }
    }

    /// Appends an entry. Panics unless `internal_key` is a valid internal key
    /// sorting strictly after the previous one: the memtable and compaction
    /// feed keys in order, so anything else is a bug.
    pub(crate) fn add(&mut self, internal_key: &[u8], value: &[u8]) -> Result<()> {
        assert!(
            key::parse(internal_key).is_some(),
            "table keys must be valid internal keys"
        );
        let user_key = key::user_key(internal_key);
        if self.entries == 0 {
            self.smallest.extend_from_slice(internal_key);
            self.filter.add_key(user_key);
        } else {
            assert_eq!(
                key::compare(&self.last_key, internal_key),
                Ordering::Less,
                "table keys must be added in strictly increasing order"
            );
            // Versions of one user key are adjacent: hash each user key once.
            if key::user_key(&self.last_key) != user_key {
                self.filter.add_key(user_key);
            }
            // `last_key` is still the previous block's last key here.
            self.add_pending_index_entry(Some(internal_key));
        }
        self.last_key.clear();
        self.last_key.extend_from_slice(internal_key);
        self.data_block.add(internal_key, value);
        self.entries += 1;
        if self.data_block.estimated_bytes() >= self.options.block_bytes_target {
            self.flush_data_block()?;
        }
        Ok(())
    }

    /// Bytes written so far plus the pending data block.
    pub(crate) fn estimated_bytes(&self) -> u64 {
        let pending = if self.data_block.is_empty() {
            0
        } else {
            self.data_block.estimated_bytes()
        };
        self.file.len_bytes() + pending as u64
    }

    /// Entries added so far.
    pub(crate) fn entries(&self) -> u64 {
        self.entries
    }

    /// Writes the pending data block and its index entry.
    fn flush_data_block(&mut self) -> Result<()> {
        if self.data_block.is_empty() {
            return Ok(());
        }
        let handle = write_block(&mut self.file, self.data_block.finish(), BLOCK_TYPE_UNCOMPRESSED)?;
        assert!(
            self.pending_index_entry.is_none(),
            "a block's index entry is written before the next block"
        );
        self.pending_index_entry = Some(handle);
        self.data_block.reset();
        Ok(())
    }

    /// Writes the index entry of the last block written, if it waits: its
    /// key is a separator `>=` every key in the block (whose last key is
    /// `last_key`) and `<` `next_key`, the first key of the next block, as a
    /// seek needs.
    fn add_pending_index_entry(&mut self, next_key: Option<&[u8]>) {
        let Some(handle) = self.pending_index_entry.take() else {
            return;
        };
        self.index_key_buf.clear();
        if self.options.format_version == FORMAT_VERSION_LAST_KEY_INDEX {
            self.index_key_buf.extend_from_slice(&self.last_key);
        } else {
            super::separator(&self.last_key, next_key, &mut self.index_key_buf);
        }
        self.handle_buf.clear();
        handle.encode_to(&mut self.handle_buf);
        self.index_block.add(&self.index_key_buf, &self.handle_buf);
        if is_partitioned(self.options.format_version)
            && self.index_block.estimated_bytes() >= self.options.index_partition_bytes_target
        {
            self.cut_index_partition();
        }
    }

    /// Finishes the index partition being filled, if it holds an entry,
    /// and keeps it with its last key (`index_key_buf`, the key just added)
    /// for `finish` to write.
    fn cut_index_partition(&mut self) {
        if self.index_block.is_empty() {
            return;
        }
        let contents = self.index_block.finish().to_vec();
        self.index_partitions.push((self.index_key_buf.clone(), contents));
        self.index_block.reset();
    }

    /// Writes the last data block, the filter, the index and the footer, and
    /// syncs the file. Panics if no entry was added: callers never finish
    /// empty tables.
    ///
    /// Only the file is synced, not its directory: the caller syncs the
    /// directory before recording the table in the manifest, so a crash
    /// never leaves the manifest naming a table that is not durable.
    pub(crate) fn finish(mut self) -> Result<TableSummary> {
        assert!(self.entries > 0, "an empty table must not be finished");
        self.flush_data_block()?;
        self.add_pending_index_entry(None);
        let filter_contents = self.filter.finish();
        let (filter, index) = if filter_contents.is_empty() {
            // No filter: a zero-size handle, and no block (or trailer) on disk.
            let none = BlockHandle {
                offset: self.file.len_bytes(),
                size: 0,
            };
            (none, self.write_index()?)
        } else if is_partitioned(self.options.format_version) {
            (self.write_paged_filter(&filter_contents)?, self.write_index()?)
        } else {
            let filter = write_block(&mut self.file, &filter_contents, BLOCK_TYPE_UNCOMPRESSED)?;
            (filter, self.write_index()?)
        };
        let footer = Footer {
            filter,
            index,
            entries: self.entries,
        };
        self.file
            .append(&footer.encode_with_version(self.options.format_version))?;
        // The table must be durable before anyone refers to it.
        self.file.sync()?;
        Ok(TableSummary {
            file_bytes: self.file.len_bytes(),
            smallest: self.smallest,
            largest: self.last_key,
            entries: self.entries,
        })
    }
}

impl TableBuilder {
    /// Writes the filter `contents` (bit array and probe byte) as pages of
    /// `filter_page_lines` lines back to back, then the filter header
    /// (format 3). Returns the header's handle, which the footer names.
    fn write_paged_filter(&mut self, contents: &[u8]) -> Result<BlockHandle> {
        let lines_per_page = self.options.filter_page_lines;
        let (probes, lines, pages) =
            split_into_pages(contents, lines_per_page).expect("the filter builder writes whole lines and a probe byte");
        let geometry = FilterGeometry::new(probes, lines, lines_per_page, self.file.len_bytes());
        let mut written = 0u32;
        for page in pages {
            let handle = write_block(&mut self.file, page, BLOCK_TYPE_UNCOMPRESSED)?;
            // Readers compute where a page lies: it must be where it went.
            assert_eq!(
                geometry.page_handle(written),
                Some(handle),
                "a filter page is written where its geometry places it"
            );
            written += 1;
        }
        assert_eq!(
            written, geometry.pages,
            "a filter has as many pages as its geometry says"
        );
        assert_eq!(
            geometry.check_placement(self.file.len_bytes()),
            Ok(()),
            "the filter header follows the last page"
        );
        write_block(&mut self.file, &geometry.encode(), BLOCK_TYPE_UNCOMPRESSED)
    }

    /// Writes the index: one block (formats 1 and 2), or the partitions and
    /// then the top-level index of their last keys (format 3). Returns the
    /// handle the footer names.
    fn write_index(&mut self) -> Result<BlockHandle> {
        if !is_partitioned(self.options.format_version) {
            return write_block(&mut self.file, self.index_block.finish(), BLOCK_TYPE_UNCOMPRESSED);
        }
        self.cut_index_partition();
        let partitions = std::mem::take(&mut self.index_partitions);
        assert!(!partitions.is_empty(), "a finished table has an index entry");
        let mut top = BlockBuilder::new(INDEX_RESTART_INTERVAL);
        for (last_key, contents) in &partitions {
            let handle = write_block(&mut self.file, contents, BLOCK_TYPE_UNCOMPRESSED)?;
            self.handle_buf.clear();
            handle.encode_to(&mut self.handle_buf);
            // `add` asserts that the last keys, so the partitions, ascend.
            top.add(last_key, &self.handle_buf);
        }
        write_block(&mut self.file, top.finish(), BLOCK_TYPE_UNCOMPRESSED)
    }
}

/// Appends `contents` and its trailer (type byte, CRC-32 LE of contents and
/// type) to `file`, returning where the contents went.
fn write_block(file: &mut AppendFile, contents: &[u8], block_type: u8) -> Result<BlockHandle> {
    let handle = BlockHandle {
        offset: file.len_bytes(),
        size: contents.len() as u64,
    };
    let mut trailer = [0u8; super::BLOCK_TRAILER_BYTES as usize];
    trailer[0] = block_type;
    trailer[1..].copy_from_slice(&block_crc(contents, block_type).to_le_bytes());
    file.append(contents)?;
    file.append(&trailer)?;
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::tests_support::{default_options, hit, open_table, scan, write_table, Entry};
    use super::*;
    use crate::cache::BlockCache;
    use crate::io::AppendFile;
    use crate::iterator::InternalIterator;
    use crate::key::{internal_key, seek_key, SequenceNumber, ValueKind, SEQUENCE_MAX};

    /// User key number `n`; only multiples of 3 are written, so `n + 1` is absent.
    fn user(n: usize) -> Vec<u8> {
        format!("user{n:07}").into_bytes()
    }

    /// One version of a user key: its sequence and, for puts, its value.
    type Version = (SequenceNumber, Option<Vec<u8>>);

    /// The versions of user key `3 * u`, newest first: some keys have three
    /// versions with a tombstone in the middle, some end in a tombstone.
    fn versions(u: usize) -> Vec<Version> {
        let base = (u as u64) * 10 + 5;
        let put = |seq: u64| {
            (
                seq,
                Some(format!("value-{u}-{seq}-{}", "x".repeat(u % 40)).into_bytes()),
            )
        };
        match u % 10 {
            0 => vec![put(base + 2), (base + 1, None), put(base)],
            3 => vec![(base + 1, None), put(base)],
            _ => vec![put(base)],
        }
    }

    /// The sorted table contents for `user_count` user keys.
    fn table_entries(user_count: usize) -> Vec<Entry> {
        let mut out = Vec::new();
        for u in 0..user_count {
            for (seq, value) in versions(u) {
                let kind = if value.is_some() {
                    ValueKind::Put
                } else {
                    ValueKind::Delete
                };
                out.push((internal_key(&user(3 * u), seq, kind), value.unwrap_or_default()));
            }
        }
        out
    }

    #[test]
    fn a_table_returns_every_version_at_its_snapshot_and_iterates_in_order() {
        // The table is the durable copy of the memtable: every version must read back exactly.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("000001.sst");
        let user_count = 7_700;
        let entries = table_entries(user_count);
        assert!(entries.len() >= 9_000, "the table should hold ~10k entries");
        let summary = write_table(&path, &entries, default_options());
        assert_eq!(summary.entries, entries.len() as u64);
        assert_eq!(summary.smallest, entries[0].0);
        assert_eq!(summary.largest, entries[entries.len() - 1].0);
        let cache = Arc::new(BlockCache::new(64 << 20));
        let table = open_table(&path, &cache).expect("open table");
        assert_eq!(table.entries(), entries.len() as u64);

        assert_eq!(scan(&table).expect("scan"), entries);
        let blocks = cache.misses();
        println!(
            "{} entries in {blocks} data blocks, {} bytes",
            entries.len(),
            summary.file_bytes
        );
        assert!(blocks > 50, "the table should span many blocks");

        for u in 0..user_count {
            let key = user(3 * u);
            let versions = versions(u);
            let newest = table.get(&key, &seek_key(&key, SEQUENCE_MAX), false).expect("get");
            let expected =
                |version: &Version| hit(&expected_key(&key, version), &version.1.clone().unwrap_or_default());
            assert_eq!(newest, Some(expected(&versions[0])));
            for (i, version) in versions.iter().enumerate() {
                let found = table
                    .get(&key, &seek_key(&key, version.0), false)
                    .expect("get")
                    .expect("found");
                assert_eq!(found, expected(version), "user {u} version {i}");
            }
            let oldest = versions[versions.len() - 1].0;
            assert_eq!(
                table.get(&key, &seek_key(&key, oldest - 1), false).expect("get"),
                None,
                "before the first write"
            );
            let absent = user(3 * u + 1);
            assert_eq!(
                table
                    .get(&absent, &seek_key(&absent, SEQUENCE_MAX), false)
                    .expect("get"),
                None
            );
        }
        let past_end = user(3 * user_count);
        assert_eq!(
            table
                .get(&past_end, &seek_key(&past_end, SEQUENCE_MAX), false)
                .expect("get"),
            None
        );
    }

    /// The internal key stored for `version` of `user_key`.
    fn expected_key(user_key: &[u8], version: &Version) -> Vec<u8> {
        let kind = if version.1.is_some() {
            ValueKind::Put
        } else {
            ValueKind::Delete
        };
        internal_key(user_key, version.0, kind)
    }

    #[test]
    fn table_seeks_land_on_the_first_key_at_or_after_the_target() {
        // Range scans and merges start with a seek: it must cross block boundaries correctly.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("000001.sst");
        let entries = table_entries(3_000);
        write_table(&path, &entries, default_options());
        let cache = Arc::new(BlockCache::new(0));
        let table = open_table(&path, &cache).expect("open table");
        let mut iter = table.iter();
        for (i, (key, _)) in entries.iter().enumerate().step_by(7) {
            iter.seek(key).expect("seek");
            assert_eq!(iter.key(), &key[..], "seek to entry {i}");
            // Just past this user key's versions: the next user key's newest version.
            let after = [key::user_key(key), b"!"].concat();
            iter.seek(&seek_key(&after, SEQUENCE_MAX)).expect("seek");
            let next = entries.iter().find(|(k, _)| key::user_key(k) > key::user_key(key));
            match next {
                Some((next_key, next_value)) => {
                    assert_eq!(iter.key(), &next_key[..]);
                    assert_eq!(iter.value(), &next_value[..]);
                    iter.next().expect("next");
                }
                None => assert!(!iter.valid()),
            }
        }
        iter.seek(&seek_key(b"zzz", SEQUENCE_MAX)).expect("seek");
        assert!(!iter.valid());
        iter.seek(&seek_key(b"", SEQUENCE_MAX)).expect("seek");
        assert_eq!(iter.key(), &entries[0].0[..]);
    }

    #[test]
    fn tables_without_filters_and_with_tiny_blocks_still_read_back() {
        // bits_per_key 0 and one-entry blocks are legal extremes of the options.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("000001.sst");
        let entries = table_entries(300);
        let options = TableOptions {
            block_bytes_target: 1,
            block_restart_interval: 1,
            bloom_bits_per_key: 0,
            ..default_options()
        };
        write_table(&path, &entries, options);
        let cache = Arc::new(BlockCache::new(1 << 20));
        let table = open_table(&path, &cache).expect("open table");
        assert!(table.may_contain(b"anything").expect("no filter to read"));
        assert_eq!(scan(&table).expect("scan"), entries);
        for (key, value) in &entries {
            let user_key = key::user_key(key);
            let seq = key::parse(key).expect("valid key").sequence;
            assert_eq!(
                table.get(user_key, &seek_key(user_key, seq), false).expect("get"),
                Some(hit(key, value))
            );
        }
    }

    #[test]
    fn estimated_bytes_grow_with_the_table() {
        // Compaction cuts output tables by this estimate, so it must track what was written.
        let dir = tempfile::tempdir().expect("temp dir");
        let file = AppendFile::create_new(&crate::io::RealFs, &dir.path().join("000001.sst")).expect("create");
        let mut builder = TableBuilder::new(file, default_options());
        let mut last = 0;
        for (key, value) in table_entries(1_000) {
            builder.add(&key, &value).expect("add");
            assert!(
                builder.estimated_bytes() + 64 >= last,
                "estimate shrank by more than a block trailer"
            );
            last = builder.estimated_bytes();
        }
        let entries = builder.entries();
        let summary = builder.finish().expect("finish");
        assert_eq!(summary.entries, entries);
        assert!(summary.file_bytes >= last);
    }

    #[test]
    #[should_panic(expected = "strictly increasing")]
    fn adding_a_key_twice_panics() {
        // A duplicate internal key means the caller lost track of sequence numbers: a bug.
        let dir = tempfile::tempdir().expect("temp dir");
        let file = AppendFile::create_new(&crate::io::RealFs, &dir.path().join("000001.sst")).expect("create");
        let mut builder = TableBuilder::new(file, default_options());
        let key = internal_key(b"k", 1, ValueKind::Put);
        builder.add(&key, b"a").expect("add");
        let _ = builder.add(&key, b"b");
    }

    #[test]
    #[should_panic(expected = "empty table")]
    fn finishing_an_empty_table_panics() {
        // Callers never write empty tables; one would have no smallest or largest key.
        let dir = tempfile::tempdir().expect("temp dir");
        let file = AppendFile::create_new(&crate::io::RealFs, &dir.path().join("000001.sst")).expect("create");
        let _ = TableBuilder::new(file, default_options()).finish();
    }
}
