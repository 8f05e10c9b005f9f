//! Tests of table format 3: the partitioned index and the paged filter
//! answer like format 2, a point lookup reads one page, one partition and
//! one block at most, and damage to the new structures is typed corruption.

use std::path::Path;
use std::sync::Arc;

use super::block::BlockBuilder;
use super::filter_pages::FilterGeometry;
use super::index_tests::{check_against_model, small_blocks};
use super::tests_support::{default_options, hit, open_table, scan, write_table, Entry};
use super::{
    block_crc, BlockHandle, Footer, Table, TableOptions, BLOCK_TRAILER_BYTES, FOOTER_BYTES, FORMAT_VERSION,
    FORMAT_VERSION_SINGLE_INDEX,
};
use crate::cache::BlockCache;
use crate::error::Error;
use crate::iterator::InternalIterator;
use crate::key::{self, internal_key, seek_key, ValueKind, SEQUENCE_MAX};

/// `count` distinct random user keys (sorted), each with one to three
/// versions, values of 0 to 150 bytes; about a fifth of versions are
/// tombstones.
fn random_entries(rng: &mut fastrand::Rng, count: usize) -> Vec<Entry> {
    let mut users = std::collections::BTreeSet::new();
    while users.len() < count {
        let len = rng.usize(1..20);
        users.insert((0..len).map(|_| rng.u8(..)).collect::<Vec<u8>>());
    }
    let mut entries = Vec::new();
    for user in users {
        let versions = rng.u64(1..4);
        let mut sequence = rng.u64(20..1_000_000);
        for _ in 0..versions {
            let kind = if rng.u8(..5) == 0 {
                ValueKind::Delete
            } else {
                ValueKind::Put
            };
            let value = match kind {
                ValueKind::Delete => Vec::new(),
                _ => (0..rng.usize(0..150)).map(|_| rng.u8(..)).collect(),
            };
            entries.push((internal_key(&user, sequence, kind), value));
            sequence -= rng.u64(1..5);
        }
    }
    entries
}

/// Writes `entries` as table `name` in `dir` with `options` and opens it over its own cache.
fn written(dir: &Path, name: &str, entries: &[Entry], options: TableOptions) -> Arc<Table> {
    let path = dir.join(name);
    write_table(&path, entries, options);
    open_table(&path, &Arc::new(BlockCache::new(64 << 20))).expect("open table")
}

/// What a cursor holds after seeking to `target` and stepping twice.
fn seek_and_step(table: &Arc<Table>, target: &[u8]) -> Vec<Entry> {
    let mut iter = table.iter();
    iter.seek(target).expect("seek");
    let mut out = Vec::new();
    while iter.valid() && out.len() < 3 {
        out.push((iter.key().to_vec(), iter.value().to_vec()));
        iter.next().expect("next");
    }
    out
}

#[test]
fn format3_tables_answer_every_get_seek_and_scan_like_format2() {
    // Property: over random keys, the two-level index and paged filter change no answer.
    let seed = fastrand::u64(..);
    println!("seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let entries = random_entries(&mut rng, 30_000);
    let format2 = TableOptions {
        format_version: FORMAT_VERSION_SINGLE_INDEX,
        ..default_options()
    };
    // Small partitions and pages: hundreds of each in a table of a few MiB.
    let small = TableOptions {
        index_partition_bytes_target: 256,
        filter_page_lines: 2,
        ..default_options()
    };
    let old = written(dir.path(), "000002.sst", &entries, format2);
    for (name, options) in [("000003.sst", default_options()), ("000004.sst", small)] {
        let new = written(dir.path(), name, &entries, options.clone());
        assert_eq!(scan(&new).expect("scan"), entries, "{options:?}");
        let mut probes: Vec<Vec<u8>> = entries.iter().map(|(k, _)| key::user_key(k).to_vec()).collect();
        probes.extend((0..5_000).map(|_| (0..rng.usize(0..20)).map(|_| rng.u8(..)).collect::<Vec<u8>>()));
        for (i, user) in probes.iter().enumerate() {
            let snapshot = if i % 3 == 0 {
                rng.u64(1..1_000_000)
            } else {
                SEQUENCE_MAX
            };
            let target = seek_key(user, snapshot);
            let expected = old.get(user, &target, false).expect("get format 2");
            for pin in [false, true] {
                let got = new.get(user, &target, pin).expect("get format 3");
                assert_eq!(got, expected, "seed {seed}: get {user:?} at {snapshot}, pinned {pin}");
            }
            if i % 7 == 0 {
                assert_eq!(
                    seek_and_step(&new, &target),
                    seek_and_step(&old, &target),
                    "seed {seed}: seek {user:?} at {snapshot}"
                );
            }
        }
    }
}

#[test]
fn format3_gets_and_seeks_match_the_model_across_partition_and_page_boundaries() {
    // Tiny partitions put a partition boundary between nearly every pair of blocks.
    let entries: Vec<Entry> = (0..3_000u32)
        .map(|i| {
            let user = format!("user{:06}", i * 2).into_bytes();
            (internal_key(&user, 7, ValueKind::Put), format!("v{i}").into_bytes())
        })
        .collect();
    let probes: Vec<Vec<u8>> = (0..6_001u32).map(|i| format!("user{i:06}").into_bytes()).collect();
    for partition_bytes in [1, 64, 4096] {
        let options = TableOptions {
            index_partition_bytes_target: partition_bytes,
            ..small_blocks()
        };
        check_against_model(&entries, options, &probes);
    }
}

/// A table of `count` entries of about 116 bytes (as in the benchmarks),
/// with the given options, in `dir`; returns its path.
fn large_table(dir: &Path, name: &str, count: usize, options: TableOptions) -> (std::path::PathBuf, Vec<Entry>) {
    let entries: Vec<Entry> = (0..count)
        .map(|i| {
            let user = format!("{:016}", i * 2).into_bytes();
            (internal_key(&user, 1, ValueKind::Put), vec![b'v'; 100])
        })
        .collect();
    let path = dir.join(name);
    write_table(&path, &entries, options);
    (path, entries)
}

/// Opens `path` over a fresh cache, looks up `user`, and returns what was
/// read from disk: the cache misses and the bytes then cached.
fn cold_lookup(path: &Path, user: &[u8]) -> (u64, u64, Option<super::TableHit>) {
    let cache = Arc::new(BlockCache::new(64 << 20));
    let table = open_table(path, &cache).expect("open table");
    let found = table.get(user, &seek_key(user, SEQUENCE_MAX), false).expect("get");
    (cache.misses(), cache.used_bytes(), found)
}

#[test]
fn a_point_lookup_reads_one_filter_page_one_partition_and_one_block_at_most() {
    // The point of format 3: a cache miss costs a few KiB, not a whole filter and index.
    let dir = tempfile::tempdir().expect("temp dir");
    let (path, entries) = large_table(dir.path(), "000001.sst", 100_000, default_options());
    let cache_entry_overhead = 96;
    let page_bytes = 4096 + cache_entry_overhead;
    // A partition or a data block exceeds its target by at most one entry.
    let block_bytes_max = 4096 + 200 + cache_entry_overhead;
    let mut passed_filter = 0;
    for i in (0..2_000).step_by(10) {
        let absent = format!("{:016}", i * 2 + 1).into_bytes();
        let (misses, bytes, found) = cold_lookup(&path, &absent);
        assert_eq!(found, None);
        if misses == 1 {
            assert!(bytes <= page_bytes, "an absent key cached {bytes} bytes");
        } else {
            // A false positive of the filter: it costs a partition and a block too.
            assert_eq!(misses, 3, "absent key {i}");
            passed_filter += 1;
        }
    }
    assert!(
        passed_filter < 10,
        "{passed_filter} of 200 absent keys passed the filter"
    );
    for (k, v) in entries.iter().step_by(499) {
        let user = key::user_key(k);
        let (misses, bytes, found) = cold_lookup(&path, user);
        assert_eq!(found, Some(hit(k, v)));
        assert_eq!(misses, 3, "a present key reads a page, a partition and a block");
        assert!(
            bytes <= 2 * block_bytes_max + page_bytes,
            "a present key cached {bytes} bytes"
        );
    }
    // Format 2 reads the whole filter and index for the same lookup.
    let format2 = TableOptions {
        format_version: FORMAT_VERSION_SINGLE_INDEX,
        ..default_options()
    };
    let (old_path, _) = large_table(dir.path(), "000002.sst", 100_000, format2);
    let user = key::user_key(&entries[500].0);
    let (_, old_bytes, _) = cold_lookup(&old_path, user);
    let (_, new_bytes, _) = cold_lookup(&path, user);
    println!("one cold lookup caches {old_bytes} bytes in format 2, {new_bytes} in format 3");
    assert!(old_bytes > 10 * new_bytes, "format 3 reads no less than format 2");
}

#[test]
fn an_open_format3_table_holds_its_top_level_index_and_what_pinned_lookups_read() {
    // Memory accounting: the top-level index is counted, and pins hold only the pages and partitions read.
    let dir = tempfile::tempdir().expect("temp dir");
    let (path, entries) = large_table(dir.path(), "000001.sst", 100_000, default_options());
    let cache = Arc::new(BlockCache::new(64 << 20));
    let table = open_table(&path, &cache).expect("open table");
    let held = table.pinned_bytes();
    let file_bytes = std::fs::metadata(&path).expect("stat").len() as usize;
    println!("a {file_bytes}-byte table holds {held} bytes of top-level index");
    assert!(held > 0, "the top-level index is counted");
    assert!(held < file_bytes / 1_000, "the top-level index is small");
    let lookup = |(k, v): &Entry, pin: bool| {
        let user = key::user_key(k);
        let found = table.get(user, &seek_key(user, SEQUENCE_MAX), pin).expect("get");
        assert_eq!(found, Some(hit(k, v)));
    };
    entries.iter().step_by(1_000).for_each(|entry| lookup(entry, false));
    assert_eq!(table.pinned_bytes(), held, "unpinned lookups pin nothing");
    // One key: one page and one partition pinned, and the slots for the rest.
    lookup(&entries[0], true);
    let one = table.pinned_bytes() - held;
    assert!(one > 4096, "a pinned lookup keeps its page and partition");
    assert!(one < 3 * 4096 + 400 * 64, "a pinned lookup keeps {one} bytes");
    let misses = cache.misses();
    lookup(&entries[0], true);
    assert_eq!(
        cache.misses(),
        misses,
        "a pinned page and partition are not looked up again"
    );
    entries.iter().step_by(1_000).for_each(|entry| lookup(entry, true));
    let all = table.pinned_bytes() - held;
    println!("pinned: {one} bytes after one lookup, {all} after 101");
    assert!(
        all > one && all < file_bytes / 50,
        "pins stay within the filter and index"
    );
}

/// The table at `path` with the contents of the block at `handle`
/// replaced by `contents` (same length) and its CRC made valid again, so
/// that only the structure checks can catch the change.
fn rewrite_block(path: &Path, handle: BlockHandle, contents: &[u8]) {
    let mut bytes = std::fs::read(path).expect("read table");
    let start = handle.offset as usize;
    let end = start + handle.size as usize;
    assert_eq!(contents.len(), end - start, "a rewritten block keeps its length");
    bytes[start..end].copy_from_slice(contents);
    let crc = block_crc(contents, bytes[end]);
    bytes[end + 1..end + BLOCK_TRAILER_BYTES as usize].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(path, &bytes).expect("write table");
}

/// The footer of the table at `path`.
fn footer_of(path: &Path) -> Footer {
    let bytes = std::fs::read(path).expect("read table");
    let raw: [u8; FOOTER_BYTES] = bytes[bytes.len() - FOOTER_BYTES..].try_into().expect("footer length");
    let (footer, version) = Footer::decode(&raw).expect("footer");
    assert_eq!(version, FORMAT_VERSION);
    footer
}

#[test]
fn misplaced_partitions_or_pages_are_corruption_even_with_valid_checksums() {
    // The structure checks at open catch what a CRC cannot: a consistent block that lies.
    let dir = tempfile::tempdir().expect("temp dir");
    let options = TableOptions {
        index_partition_bytes_target: 64,
        ..small_blocks()
    };
    let (path, entries) = large_table(dir.path(), "000001.sst", 500, options);
    let good = std::fs::read(&path).expect("read table");
    let footer = footer_of(&path);
    let top_bytes = &good[footer.index.offset as usize..(footer.index.offset + footer.index.size) as usize];
    let top = super::Block::parse(bytes::Bytes::copy_from_slice(top_bytes)).expect("top-level index");
    let mut cursor = super::block::BlockIter::new(top);
    cursor.seek_to_first();
    let mut top_entries = Vec::new();
    while cursor.valid() {
        top_entries.push((cursor.key().to_vec(), cursor.value().to_vec()));
        cursor.next();
    }
    assert!(top_entries.len() >= 4, "the table has several partitions");
    // Swap the handles of the first two partitions of equal handle length: keys stay in order.
    let (a, b) = (0..top_entries.len() - 1)
        .map(|i| (i, i + 1))
        .find(|&(i, j)| top_entries[i].1.len() == top_entries[j].1.len())
        .expect("two neighbouring handles of one length");
    let (value_a, value_b) = (top_entries[a].1.clone(), top_entries[b].1.clone());
    top_entries[a].1 = value_b;
    top_entries[b].1 = value_a;
    let mut builder = BlockBuilder::new(1);
    for (k, v) in &top_entries {
        builder.add(k, v);
    }
    rewrite_block(&path, footer.index, builder.finish());
    let error = open_table(&path, &Arc::new(BlockCache::new(0))).expect_err("swapped partitions");
    assert!(
        matches!(&error, Error::Corruption { reason, .. } if reason.contains("back to back")),
        "{error:?}"
    );

    // A filter header whose pages would start one byte late.
    std::fs::write(&path, &good).expect("restore table");
    let header = &good[footer.filter.offset as usize..(footer.filter.offset + footer.filter.size) as usize];
    let geometry = FilterGeometry::decode(header).expect("filter header");
    let shifted = FilterGeometry {
        pages_offset: geometry.pages_offset + 1,
        ..geometry
    };
    rewrite_block(&path, footer.filter, &shifted.encode());
    let error = open_table(&path, &Arc::new(BlockCache::new(0))).expect_err("shifted pages");
    assert!(
        matches!(&error, Error::Corruption { reason, .. } if reason.contains("filter pages")),
        "{error:?}"
    );

    // Restored, the table reads back whole.
    std::fs::write(&path, &good).expect("restore table");
    let table = open_table(&path, &Arc::new(BlockCache::new(1 << 20))).expect("open table");
    assert_eq!(scan(&table).expect("scan"), entries);
}
