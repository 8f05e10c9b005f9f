//! The table's bloom filter over user keys.
//!
//! Filter bytes: a bit array of `m = 8 * (len - 1)` bits followed by one byte
//! `k`, the number of probes. A key sets or tests bits `(h1 + i * h2) mod m`
//! for `i` in `0..k` (double hashing), where `h1` and `h2` come from one
//! 64-bit [`bloom_hash`] of the key (see `probe_positions`). The format is written down in
//! `docs/storage-format.md`; changing the hash changes the format.

use bytes::Bytes;

/// Fewest probes per key.
const PROBES_MIN: usize = 1;
/// Most probes per key (more costs lookup time for no real gain).
pub(crate) const PROBES_MAX: usize = 30;
/// Smallest bit array, so that tiny tables do not get useless filters.
const FILTER_BITS_MIN: usize = 64;
/// Bytes after the bit array: the probe count.
const PROBE_COUNT_BYTES: usize = 1;

const _: () = assert!(PROBES_MAX <= u8::MAX as usize);
const _: () = assert!(PROBES_MIN <= PROBES_MAX);

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

/// Collects the user keys of a table and encodes its filter.
#[derive(Debug)]
pub(crate) struct FilterBuilder {
    /// Target bits per key; 0 disables the filter.
    bits_per_key: usize,
    /// The hash of every key added.
    hashes: Vec<u64>,
}

impl FilterBuilder {
    /// A builder spending about `bits_per_key` bits per key (0: no filter).
    pub(crate) fn new(bits_per_key: usize) -> Self {
        FilterBuilder {
            bits_per_key,
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
        let bytes = bits_wanted.div_ceil(8);
        let bits = (bytes * 8) as u64;
        let probes = probes_for(self.bits_per_key);
        let mut out = vec![0u8; bytes + PROBE_COUNT_BYTES];
        for &hash in &self.hashes {
            for bit in probe_positions(hash, bits, probes) {
                out[(bit / 8) as usize] |= 1 << (bit % 8);
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
}

impl Filter {
    /// Decodes filter bytes; the reason on failure names what is wrong.
    pub(crate) fn parse(bytes: Bytes) -> Result<Filter, &'static str> {
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
        Ok(Filter { bits, probes })
    }

    /// False only if `user_key` was certainly not added.
    pub(crate) fn may_contain(&self, user_key: &[u8]) -> bool {
        let bits = (self.bits.len() * 8) as u64;
        probe_positions(bloom_hash(user_key), bits, self.probes)
            .all(|bit| self.bits[(bit / 8) as usize] & (1 << (bit % 8)) != 0)
    }

    /// Bytes of memory the filter holds.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.bits.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(keys: impl Iterator<Item = Vec<u8>>, bits_per_key: usize) -> Filter {
        let mut builder = FilterBuilder::new(bits_per_key);
        for key in keys {
            builder.add_key(&key);
        }
        Filter::parse(Bytes::from(builder.finish())).expect("fresh filter parses")
    }

    fn present(i: u32) -> Vec<u8> {
        format!("user-key-{i}").into_bytes()
    }

    #[test]
    fn filters_have_no_false_negatives_and_few_false_positives() {
        // A false negative would hide data; the false-positive rate is the filter's whole value.
        let keys = 10_000;
        let filter = build((0..keys).map(present), 10);
        for i in 0..keys {
            assert!(filter.may_contain(&present(i)), "false negative for key {i}");
        }
        let absent = 10_000;
        let false_positives = (0..absent)
            .filter(|i| filter.may_contain(format!("absent-key-{i}").as_bytes()))
            .count();
        let rate = false_positives as f64 / f64::from(absent);
        println!("bloom false-positive rate at 10 bits/key: {:.3}%", rate * 100.0);
        assert!(rate < 0.02, "false-positive rate {rate} is not below 2%");
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
        let mut builder = FilterBuilder::new(0);
        builder.add_key(b"k");
        assert!(builder.finish().is_empty());
        assert!(Filter::parse(Bytes::new()).is_err());
    }

    #[test]
    fn bad_probe_counts_are_rejected() {
        // A corrupt probe byte must not make lookups loop 255 times or divide by zero.
        assert!(Filter::parse(Bytes::from(vec![0xff; 9])).is_err());
        assert!(Filter::parse(Bytes::from(vec![0x00; 9])).is_err());
        assert!(Filter::parse(Bytes::from(vec![7])).is_err());
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
