//! Tests of the index: shortest-separator keys, and lookups and seeks that
//! cross block boundaries, checked against a sorted model.

use std::cmp::Ordering;
use std::sync::Arc;

use super::separator;
use super::tests_support::{default_options, hit, open_table, write_table, Entry};
use super::{TableOptions, FORMAT_VERSION, FORMAT_VERSION_LAST_KEY_INDEX, FORMAT_VERSION_SINGLE_INDEX};
use crate::cache::BlockCache;
use crate::iterator::InternalIterator;
use crate::key::{self, internal_key, seek_key, ValueKind, SEQUENCE_MAX};

/// The separator for a block ending in `last` followed by one starting with `next`.
fn sep(last: &[u8], next: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    separator(last, next, &mut out);
    out
}

/// `user` at sequence 5, a put.
fn put(user: &[u8]) -> Vec<u8> {
    internal_key(user, 5, ValueKind::Put)
}

#[test]
fn separators_are_short_and_lie_between_the_blocks() {
    // Each case names the user key the separator must carry (or the last key kept whole).
    let shortened = |user: &[u8]| internal_key(user, SEQUENCE_MAX, key::KIND_FOR_SEEK);
    /// A block's last key, the next block's first key, and the separator expected.
    type Case = (Vec<u8>, Option<Vec<u8>>, Vec<u8>);
    let cases: Vec<Case> = vec![
        // The differing byte can be incremented and the rest cut.
        (put(b"abcdef"), Some(put(b"abzz")), shortened(b"abd")),
        // The differing byte is one below: a later byte of `last` is incremented.
        (put(b"abc1zzz"), Some(put(b"abd")), shortened(b"abc2")),
        // ...skipping 0xff bytes, which cannot be.
        (put(b"ab\xff\xff\x10q"), Some(put(b"ac")), shortened(b"ab\xff\xff\x11")),
        // `last` is a prefix of `next`: nothing shorter lies between.
        (put(b"abc"), Some(put(b"abcd")), put(b"abc")),
        // The shortened key would be as long as `last`: keep `last`.
        (put(b"key000123"), Some(put(b"key000124")), put(b"key000123")),
        // Two versions of one user key straddle the blocks: keep `last`.
        (
            internal_key(b"same", 9, ValueKind::Put),
            Some(internal_key(b"same", 3, ValueKind::Delete)),
            internal_key(b"same", 9, ValueKind::Put),
        ),
        // The table's last block: a short successor of the last user key.
        (put(b"hello"), None, shortened(b"i")),
        (put(b"\xff\xffzq"), None, shortened(b"\xff\xff{")),
        // Nothing follows a run of 0xff bytes.
        (put(b"\xff\xff"), None, put(b"\xff\xff")),
    ];
    for (last, next, expected) in cases {
        let got = sep(&last, next.as_deref());
        assert_eq!(got, expected, "last {last:?} next {next:?}");
        assert!(
            key::compare(&last, &got).is_le(),
            "separator below the block's last key"
        );
        if let Some(next) = &next {
            assert!(key::compare(&got, next).is_lt(), "separator not below the next block");
        }
    }
}

#[test]
fn random_separators_always_lie_between_their_keys() {
    // Property: last <= separator < next by `key::compare`, and never longer than last.
    let seed = fastrand::u64(..);
    println!("seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    // A small alphabet with the edge bytes makes shared prefixes and 0xff runs common.
    let alphabet = [0x00, 0x01, b'a', b'b', b'c', 0xfe, 0xff];
    let random_user = |rng: &mut fastrand::Rng| -> Vec<u8> {
        let len = rng.usize(0..8);
        (0..len).map(|_| alphabet[rng.usize(..alphabet.len())]).collect()
    };
    for _ in 0..20_000 {
        let a = internal_key(&random_user(&mut rng), rng.u64(0..100), ValueKind::Put);
        let b = internal_key(&random_user(&mut rng), rng.u64(0..100), ValueKind::Delete);
        let (last, next) = match key::compare(&a, &b) {
            Ordering::Less => (a, b),
            Ordering::Greater => (b, a),
            Ordering::Equal => continue,
        };
        let got = sep(&last, Some(&next));
        assert!(key::compare(&last, &got).is_le(), "{last:?} {next:?} -> {got:?}");
        assert!(key::compare(&got, &next).is_lt(), "{last:?} {next:?} -> {got:?}");
        assert!(got.len() <= last.len());
        let tail = sep(&last, None);
        assert!(key::compare(&last, &tail).is_le() && tail.len() <= last.len());
    }
}

/// Small blocks, partitions and filter pages, so that a table of a few
/// hundred entries has many boundaries of each.
pub(super) fn small_blocks() -> TableOptions {
    TableOptions {
        block_bytes_target: 256,
        block_restart_interval: 4,
        bloom_bits_per_key: 10,
        format_version: FORMAT_VERSION,
        index_partition_bytes_target: 128,
        filter_page_lines: 2,
    }
}

/// The first entry `>= target` in the sorted `entries`, as a cursor sees it.
fn model_seek<'a>(entries: &'a [Entry], target: &[u8]) -> Option<&'a Entry> {
    let at = entries.partition_point(|(k, _)| key::compare(k, target).is_lt());
    entries.get(at)
}

/// What a point lookup of `user` at `snapshot` must return.
fn model_get(entries: &[Entry], user: &[u8], snapshot: u64) -> Option<crate::sstable::TableHit> {
    model_seek(entries, &seek_key(user, snapshot))
        .filter(|(k, _)| key::user_key(k) == user)
        .map(|(k, v)| hit(k, v))
}

/// Checks gets and seeks of `probes` (user keys) at several snapshots against the model.
pub(super) fn check_against_model(entries: &[Entry], options: TableOptions, probes: &[Vec<u8>]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("000001.sst");
    write_table(&path, entries, options);
    let cache = Arc::new(BlockCache::new(1 << 20));
    let table = open_table(&path, &cache).expect("open table");
    let mut iter = table.iter();
    for user in probes {
        for snapshot in [SEQUENCE_MAX, 40, 20, 1] {
            let target = seek_key(user, snapshot);
            let expected = model_get(entries, user, snapshot);
            for pin in [false, true] {
                let got = table.get(user, &target, pin).expect("get");
                assert_eq!(got, expected, "get {user:?} at {snapshot}, pinned {pin}");
            }
            iter.seek(&target).expect("seek");
            let cursor = iter.valid().then(|| (iter.key().to_vec(), iter.value().to_vec()));
            assert_eq!(
                cursor.as_ref(),
                model_seek(entries, &target),
                "seek {user:?} at {snapshot}"
            );
        }
    }
}

/// Keys of 200 bytes sharing a 190-byte prefix, each at up to three versions.
fn long_prefix_entries() -> (Vec<Entry>, Vec<Vec<u8>>) {
    let prefix = "p".repeat(190);
    let mut entries = Vec::new();
    let mut probes = Vec::new();
    for i in 0..300u32 {
        // Only even numbers are written; odd ones fall between written keys.
        let user = format!("{prefix}{:010}", i * 2).into_bytes();
        for sequence in [50, 30, 10].into_iter().take(1 + (i % 3) as usize) {
            let kind = if sequence == 30 {
                ValueKind::Delete
            } else {
                ValueKind::Put
            };
            let value = if kind == ValueKind::Put {
                format!("v{i}-{sequence}").into_bytes()
            } else {
                Vec::new()
            };
            entries.push((internal_key(&user, sequence, kind), value));
        }
        probes.push(user);
        probes.push(format!("{prefix}{:010}", i * 2 + 1).into_bytes());
        // A key that extends a written one sorts between it and the next.
        probes.push(format!("{prefix}{:010}\x00", i * 2).into_bytes());
    }
    probes.push(Vec::new());
    probes.push(prefix.into_bytes());
    probes.push(b"q".to_vec());
    (entries, probes)
}

#[test]
fn gets_and_seeks_across_block_boundaries_with_long_shared_prefixes_match_the_model() {
    // Separators cut inside long shared prefixes must still route every lookup to the right block.
    let (entries, probes) = long_prefix_entries();
    check_against_model(&entries, small_blocks(), &probes);
    // One entry per block puts a boundary between every pair of keys.
    let one_per_block = TableOptions {
        block_bytes_target: 1,
        block_restart_interval: 1,
        bloom_bits_per_key: 0,
        index_partition_bytes_target: 1,
        ..small_blocks()
    };
    check_against_model(&entries, one_per_block, &probes);
    // Tables of the older formats (single index; and last-key index, spread filter) still read the same.
    for format_version in [FORMAT_VERSION_SINGLE_INDEX, FORMAT_VERSION_LAST_KEY_INDEX] {
        let older = TableOptions {
            format_version,
            ..small_blocks()
        };
        check_against_model(&entries, older, &probes);
    }
    check_against_model(&entries, default_options(), &probes);
}

#[test]
fn separator_index_keys_are_shorter_than_last_keys() {
    // The point of separators: an index of short keys even when user keys are long.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("000001.sst");
    // Distinct 100-byte keys that differ early (a random-looking 8-byte head).
    let entries: Vec<Entry> = (0..2_000u64)
        .map(|i| {
            let head = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 8).to_be_bytes();
            let mut user = head.to_vec();
            user.extend_from_slice(&[b'x'; 92]);
            (put(&user), b"value".to_vec())
        })
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    // Format 2, whose single index block the footer sizes (format 3 splits it).
    let single_index = TableOptions {
        format_version: FORMAT_VERSION_SINGLE_INDEX,
        ..small_blocks()
    };
    let summary = write_table(&path, &entries, single_index);
    let bytes = std::fs::read(&path).expect("read table");
    let raw: [u8; super::FOOTER_BYTES] = bytes[bytes.len() - super::FOOTER_BYTES..]
        .try_into()
        .expect("footer length");
    let (footer, version) = super::Footer::decode(&raw).expect("footer");
    assert_eq!(version, FORMAT_VERSION_SINGLE_INDEX);
    let blocks = entries.len() as u64 * 115 / 256;
    println!(
        "{} entries, file {} bytes, index {} bytes for about {blocks} blocks",
        entries.len(),
        summary.file_bytes,
        footer.index.size
    );
    // Whole keys would cost 108 bytes per entry; separators need a few.
    assert!(
        footer.index.size < blocks * 40,
        "index of {} bytes is not made of short keys",
        footer.index.size
    );
    let cache = Arc::new(BlockCache::new(1 << 20));
    let table = open_table(&path, &cache).expect("open table");
    for (k, v) in &entries {
        let user = key::user_key(k);
        assert_eq!(
            table.get(user, &seek_key(user, SEQUENCE_MAX), false).expect("get"),
            Some(hit(k, v))
        );
    }
}

#[test]
fn random_tables_answer_like_a_sorted_map() {
    // Property: for random keys, versions and block sizes, gets and seeks agree with a BTreeMap.
    let seed = fastrand::u64(..);
    println!("seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let alphabet = [0x00, b'a', b'b', 0xfe, 0xff];
    for round in 0..20 {
        let mut model = std::collections::BTreeMap::new();
        let users = rng.usize(1..300);
        for _ in 0..users {
            let len = rng.usize(0..12);
            let user: Vec<u8> = (0..len).map(|_| alphabet[rng.usize(..alphabet.len())]).collect();
            for _ in 0..rng.usize(1..4) {
                let kind = if rng.bool() { ValueKind::Put } else { ValueKind::Delete };
                let value = vec![b'v'; rng.usize(0..40)];
                model.insert(internal_key(&user, rng.u64(1..60), kind), value);
            }
        }
        let mut entries: Vec<Entry> = model.into_iter().collect();
        entries.sort_by(|a, b| key::compare(&a.0, &b.0));
        entries.dedup_by(|a, b| key::compare(&a.0, &b.0).is_eq());
        let options = TableOptions {
            block_bytes_target: rng.usize(1..512),
            block_restart_interval: rng.usize(1..8),
            bloom_bits_per_key: rng.usize(0..12),
            // Now and then an older format, which this build still reads.
            format_version: match rng.u8(..4) {
                0 => FORMAT_VERSION_LAST_KEY_INDEX,
                1 => FORMAT_VERSION_SINGLE_INDEX,
                _ => FORMAT_VERSION,
            },
            index_partition_bytes_target: rng.usize(1..256),
            filter_page_lines: rng.usize(1..4),
        };
        let mut probes: Vec<Vec<u8>> = entries.iter().map(|(k, _)| key::user_key(k).to_vec()).collect();
        for _ in 0..200 {
            let len = rng.usize(0..12);
            probes.push((0..len).map(|_| alphabet[rng.usize(..alphabet.len())]).collect());
        }
        println!("round {round}: {} entries, {options:?}", entries.len());
        check_against_model(&entries, options, &probes);
    }
}
