//! The table's bloom filter over user keys.
//!
//! Filter bytes: a bit array of `m = 8 * (len - 1)` bits followed by one byte
//! `k`, the number of probes. Both layouts derive a key's `k` bit positions
//! from one 64-bit [`bloom_hash`] of the key by double hashing:
//!
//! - [`FilterLayout::CacheLocal`] (table formats 2 and 3): the hash picks one
//!   512-bit line (64 bytes, a cache line) and all `k` probes fall in it, so
//!   a lookup touches one or two cache lines however large the filter is
//!   (see `line_probe_positions`). The price is a slightly higher
//!   false-positive rate at equal size (measured in the tests below).
//! - [`FilterLayout::Spread`] (table format 1): probes spread over the whole
//!   array, `k` cache misses per lookup on a large filter (see `probe_positions`).
//!
//! The format is written down in `docs/storage-format.md`; changing the
//! hash or the probe positions changes the format.

use bytes::Bytes;

/// Fewest probes per key.
pub(crate) const PROBES_MIN: usize = 1;
/// Most probes per key (more costs lookup time for no real gain).
pub(crate) const PROBES_MAX: usize = 30;
/// Smallest bit array, so that tiny tables do not get useless filters.
const FILTER_BITS_MIN: usize = 64;
/// Bytes after the bit array: the probe count.
const PROBE_COUNT_BYTES: usize = 1;

const _: () = assert!(PROBES_MAX <= u8::MAX as usize);
const _: () = assert!(PROBES_MIN <= PROBES_MAX);

/// Bytes of one line of a cache-local filter: a cache line.
pub(crate) const FILTER_LINE_BYTES: usize = 64;
/// Bits of one line of a cache-local filter.
pub(crate) const FILTER_LINE_BITS: u64 = (FILTER_LINE_BYTES * 8) as u64;
/// Most lines a cache-local filter may have: the line is chosen by a
/// 32-bit multiply-shift.
pub(crate) const FILTER_LINES_MAX: u64 = u32::MAX as u64;

const _: () = assert!(FILTER_LINE_BITS.is_power_of_two());
const _: () = assert!(FILTER_BITS_MIN <= FILTER_LINE_BITS as usize);

/// How a filter's probes are placed; fixed by the table's format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FilterLayout {
    /// Format 1: probes anywhere in the bit array.
    Spread,
    /// Formats 2 and 3: all probes of a key within one 64-byte line (format
    /// 3 stores the lines in pages, see `filter_pages`).
    CacheLocal,
}

/// Multiplier of the key hash (an odd 64-bit constant with well-mixed bits).
const HASH_MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;
/// Initial state of the key hash.
const HASH_SEED: u64 = 0x5851_F42D_4C95_7F2D;

/// The 64-bit hash of a user key used by the filter: 8-byte little-endian
/// words (the last zero-padded) folded by xor-multiply-rotate, seeded with the
/// length, then a final avalanche so every input bit affects every output bit.
pub(crate) fn bloom_hash(key: &[u8]) -> u64 {
    let mut hash = HASH_SEED ^ (key.len() as u64).wrapping_mul(HASH_MULTIPLIER);
    for chunk in key.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        hash = (hash ^ u64::from_le_bytes(word))
            .wrapping_mul(HASH_MULTIPLIER)
            .rotate_left(31);
    }
    avalanche(hash)
}

/// The 64-bit finalizer of MurmurHash3: a bijection in which every input bit
/// flips each output bit with probability about one half.
fn avalanche(mut hash: u64) -> u64 {
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    hash ^ (hash >> 33)
}

/// Probes for `bits_per_key`: `round(bits_per_key * ln 2)`, the count that
/// minimises false positives, clamped to `PROBES_MIN..=PROBES_MAX`.
fn probes_for(bits_per_key: usize) -> usize {
    let ideal = (bits_per_key as f64 * std::f64::consts::LN_2).round() as usize;
    ideal.clamp(PROBES_MIN, PROBES_MAX)
}

/// The bit positions a key with `hash` maps to in a filter of `bits` bits:
/// `(h1 + i * h2) mod bits` with `h1 = hash mod bits` and `h2 = 1 +
/// avalanche(hash + HASH_MULTIPLIER) mod (bits - 1)`.
///
/// The second hash goes through a non-linear mix: deriving it linearly from
/// the same word (say, by a rotation) correlates `h1` and `h2` modulo `bits`
/// and doubled the false-positive rate in measurement. It is never zero, so
/// the probes of one key are never all the same bit.
fn probe_positions(hash: u64, bits: u64, probes: usize) -> impl Iterator<Item = u64> {
    assert!(bits >= 2, "filters hold at least one byte of bits");
    let mut position = hash % bits;
    let step = 1 + avalanche(hash.wrapping_add(HASH_MULTIPLIER)) % (bits - 1);
    // Both stay below `bits`, so the sum cannot overflow.
    (0..probes).map(move |_| {
        let current = position;
        position = (position + step) % bits;
        current
    })
}

/// The bit positions a key with `hash` maps to in a cache-local filter of
/// `lines` lines: line `(hash >> 32) * lines >> 32` (a multiply-shift, fair
/// for any line count), and within it `(h1 + i * h2) mod 512` with
/// `g = avalanche(hash + HASH_MULTIPLIER)`, `h1 = g mod 512` and
/// `h2 = (g >> 9) mod 512 | 1` (odd, so the `k <= 30` probes of one key
/// never repeat a bit).
pub(crate) fn line_probe_positions(hash: u64, lines: u64, probes: usize) -> impl Iterator<Item = u64> {
    let base = filter_line(hash, lines) * FILTER_LINE_BITS;
    in_line_positions(hash, probes).map(move |bit| base + bit)
}

/// The line a key with `hash` maps to in a cache-local filter of `lines`
/// lines: `(hash >> 32) * lines >> 32`, a multiply-shift fair for any line
/// count. A paged filter (table format 3) finds the key's page from it.
pub(crate) fn filter_line(hash: u64, lines: u64) -> u64 {
    assert!(
        (1..=FILTER_LINES_MAX).contains(&lines),
        "a cache-local filter has 1 to FILTER_LINES_MAX lines"
    );
    // Both factors are below 2^32, so the product fits in 64 bits.
    ((hash >> 32) * lines) >> 32
}

/// The bits within its line (each below [`FILTER_LINE_BITS`]) that a key
/// with `hash` sets: `(h1 + i * h2) mod 512`, see [`line_probe_positions`].
pub(crate) fn in_line_positions(hash: u64, probes: usize) -> impl Iterator<Item = u64> {
    let mixed = avalanche(hash.wrapping_add(HASH_MULTIPLIER));
    let mut position = mixed % FILTER_LINE_BITS;
    let step = ((mixed >> 9) % FILTER_LINE_BITS) | 1;
    (0..probes).map(move |_| {
        let current = position;
        position = (position + step) % FILTER_LINE_BITS;
        current
    })
}

/// Collects the user keys of a table and encodes its filter.
#[derive(Debug)]
pub(crate) struct FilterBuilder {
    /// Target bits per key; 0 disables the filter.
    bits_per_key: usize,
    /// Where the probes go.
    layout: FilterLayout,
    /// The hash of every key added.
    hashes: Vec<u64>,
}

impl FilterBuilder {
    /// A builder spending about `bits_per_key` bits per key (0: no filter).
    pub(crate) fn new(bits_per_key: usize, layout: FilterLayout) -> Self {
        FilterBuilder {
            bits_per_key,
            layout,
            hashes: Vec::new(),
        }
    }

    /// Whether `finish` will produce a filter at all.
    pub(crate) fn enabled(&self) -> bool {
        self.bits_per_key > 0
    }

    /// Records a user key.
    pub(crate) fn add_key(&mut self, user_key: &[u8]) {
        if self.enabled() {
            self.hashes.push(bloom_hash(user_key));
        }
    }

    /// Encodes the filter; empty when filters are disabled.
    pub(crate) fn finish(&self) -> Vec<u8> {
        if !self.enabled() {
            return Vec::new();
        }
        let bits_wanted = self.hashes.len().saturating_mul(self.bits_per_key).max(FILTER_BITS_MIN);
        let probes = probes_for(self.bits_per_key);
        let bytes = match self.layout {
            FilterLayout::Spread => bits_wanted.div_ceil(8),
            FilterLayout::CacheLocal => bits_wanted.div_ceil(8).next_multiple_of(FILTER_LINE_BYTES),
        };
        let mut out = vec![0u8; bytes + PROBE_COUNT_BYTES];
        let mut set = |bit: u64| out[(bit / 8) as usize] |= 1 << (bit % 8);
        for &hash in &self.hashes {
            match self.layout {
                FilterLayout::Spread => probe_positions(hash, (bytes * 8) as u64, probes).for_each(&mut set),
                FilterLayout::CacheLocal => {
                    let lines = (bytes / FILTER_LINE_BYTES) as u64;
                    line_probe_positions(hash, lines, probes).for_each(&mut set);
                }
            }
        }
        out[bytes] = u8::try_from(probes).expect("PROBES_MAX fits a byte");
        out
    }
}

/// A decoded filter, ready for membership tests.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    /// The bit array.
    bits: Bytes,
    /// Probes per key.
    probes: usize,
    /// Where the probes go.
    layout: FilterLayout,
}

impl Filter {
    /// Decodes filter bytes; the reason on failure names what is wrong.
    pub(crate) fn parse(bytes: Bytes, layout: FilterLayout) -> Result<Filter, &'static str> {
        let Some(&probes) = bytes.last() else {
            return Err("filter block is empty");
        };
        let probes = usize::from(probes);
        if !(PROBES_MIN..=PROBES_MAX).contains(&probes) {
            return Err("filter probe count out of range");
        }
        let bits = bytes.slice(..bytes.len() - PROBE_COUNT_BYTES);
        if bits.is_empty() {
            return Err("filter has no bits");
        }
        if layout == FilterLayout::CacheLocal {
            if !bits.len().is_multiple_of(FILTER_LINE_BYTES) {
                return Err("filter is not a whole number of lines");
            }
            if (bits.len() / FILTER_LINE_BYTES) as u64 > FILTER_LINES_MAX {
                return Err("filter has too many lines");
            }
        }
        Ok(Filter { bits, probes, layout })
    }

    /// False only if `user_key` was certainly not added.
    pub(crate) fn may_contain(&self, user_key: &[u8]) -> bool {
        let hash = bloom_hash(user_key);
        let is_set = |bit: u64| self.bits[(bit / 8) as usize] & (1 << (bit % 8)) != 0;
        match self.layout {
            FilterLayout::Spread => probe_positions(hash, (self.bits.len() * 8) as u64, self.probes).all(is_set),
            FilterLayout::CacheLocal => {
                let lines = (self.bits.len() / FILTER_LINE_BYTES) as u64;
                line_probe_positions(hash, lines, self.probes).all(is_set)
            }
        }
    }

    /// Bytes of memory the filter holds.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.bits.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both layouts, newest first.
    const LAYOUTS: [FilterLayout; 2] = [FilterLayout::CacheLocal, FilterLayout::Spread];

    fn build_with(keys: impl Iterator<Item = Vec<u8>>, bits_per_key: usize, layout: FilterLayout) -> Filter {
        let mut builder = FilterBuilder::new(bits_per_key, layout);
        for key in keys {
            builder.add_key(&key);
        }
        Filter::parse(Bytes::from(builder.finish()), layout).expect("fresh filter parses")
    }

    fn present(i: u32) -> Vec<u8> {
        format!("user-key-{i}").into_bytes()
    }

    #[test]
    fn filters_have_no_false_negatives_and_few_false_positives() {
        // A false negative would hide data; the false-positive rate is the filter's whole value.
        for layout in LAYOUTS {
            let keys = 100_000;
            let filter = build_with((0..keys).map(present), 10, layout);
            for i in 0..keys {
                assert!(filter.may_contain(&present(i)), "false negative for key {i}");
            }
            let absent = 100_000;
            let false_positives = (0..absent)
                .filter(|i| filter.may_contain(format!("absent-key-{i}").as_bytes()))
                .count();
            let rate = false_positives as f64 / f64::from(absent);
            println!(
                "{layout:?} bloom false-positive rate at 10 bits/key: {:.3}%",
                rate * 100.0
            );
            assert!(rate < 0.02, "{layout:?}: false-positive rate {rate} is not below 2%");
        }
    }

    #[test]
    fn a_cache_local_filter_probes_one_line_per_key() {
        // The point of the layout: one key's probes stay within one 64-byte line.
        let hash = bloom_hash(b"hello");
        let positions: Vec<u64> = line_probe_positions(hash, 1_000, 7).collect();
        let line = positions[0] / FILTER_LINE_BITS;
        assert!(
            positions.iter().all(|bit| bit / FILTER_LINE_BITS == line),
            "{positions:?}"
        );
        let distinct: std::collections::BTreeSet<u64> = positions.iter().copied().collect();
        assert_eq!(distinct.len(), 7, "probes of one key never repeat a bit");
        // Part of the on-disk format: pinned.
        assert_eq!(
            positions,
            [188_628, 188_451, 188_786, 188_609, 188_432, 188_767, 188_590]
        );
        // Filters are whole lines; anything else is rejected.
        let filter = build_with((0..10).map(present), 10, FilterLayout::CacheLocal);
        assert_eq!(filter.memory_bytes() % FILTER_LINE_BYTES, 0);
        let mut odd = vec![0u8; FILTER_LINE_BYTES + 1];
        odd.push(7);
        assert!(Filter::parse(Bytes::from(odd), FilterLayout::CacheLocal).is_err());
    }

    #[test]
    fn probe_count_follows_bits_per_key_and_is_clamped() {
        // k = round(bits * ln 2) minimises false positives; the clamp bounds lookup cost.
        assert_eq!(probes_for(10), 7);
        assert_eq!(probes_for(1), 1);
        assert_eq!(probes_for(100), PROBES_MAX);
    }

    #[test]
    fn a_disabled_filter_encodes_to_nothing() {
        // bits_per_key 0 means "no filter": the table stores none and answers "maybe".
        for layout in LAYOUTS {
            let mut builder = FilterBuilder::new(0, layout);
            builder.add_key(b"k");
            assert!(builder.finish().is_empty());
            assert!(Filter::parse(Bytes::new(), layout).is_err());
        }
    }

    #[test]
    fn bad_probe_counts_are_rejected() {
        // A corrupt probe byte must not make lookups loop 255 times or divide by zero.
        for layout in LAYOUTS {
            assert!(Filter::parse(Bytes::from(vec![0xff; 65]), layout).is_err());
            assert!(Filter::parse(Bytes::from(vec![0x00; 65]), layout).is_err());
            assert!(Filter::parse(Bytes::from(vec![7]), layout).is_err());
        }
    }

    #[test]
    fn the_hash_is_stable() {
        // The hash is part of the on-disk format: it must never change silently.
        assert_eq!(bloom_hash(b""), bloom_hash(b""));
        assert_ne!(bloom_hash(b"a"), bloom_hash(b"a\0"));
        let pinned = [bloom_hash(b""), bloom_hash(b"hello"), bloom_hash(b"0123456789abcdef!")];
        assert_eq!(
            pinned,
            [0x2643_04d1_257f_9540, 0x5e69_82a8_7f57_1663, 0x0a9a_5fea_360b_c834]
        );
        let probes: Vec<u64> = probe_positions(bloom_hash(b"hello"), 1000, 3).collect();
        assert_eq!(probes, [267, 596, 925]);
    }
}
