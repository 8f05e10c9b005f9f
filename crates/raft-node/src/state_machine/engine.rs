//! The engine handle the state machine writes through and the read path
//! reads from. It is replaced whole when a snapshot is installed.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;
use storage::{BoundedStep, Db};

use super::keys;

/// A page of a range read.
#[derive(Debug, Default)]
pub struct RangePage {
    /// Pairs in key order (user keys).
    pub pairs: Vec<(Bytes, Bytes)>,
    /// Where the next page starts, when more pairs remain.
    pub next_start: Option<Bytes>,
}

/// A shared, swappable handle to the engine that holds the state.
#[derive(Clone, Debug)]
pub struct Engine {
    db: Arc<RwLock<Db>>,
}

impl Engine {
    /// Wraps an open engine.
    pub fn new(db: Db) -> Self {
        Engine {
            db: Arc::new(RwLock::new(db)),
        }
    }

    /// The engine currently serving.
    pub fn db(&self) -> Db {
        self.db.read().clone()
    }

    /// Replaces the engine (after a snapshot install); returns the old one.
    pub fn replace(&self, db: Db) -> Db {
        std::mem::replace(&mut *self.db.write(), db)
    }

    /// The value of user key `key`.
    pub fn get(&self, key: &[u8]) -> storage::Result<Option<Bytes>> {
        self.db().get(&keys::user_key(key))
    }

    /// Up to `limit` pairs with `start <= key < end` (empty `end`: no end).
    ///
    /// A page also stops early, with `next_start` set, once its pairs would
    /// encode (protobuf framing included) to more than `bytes_max`, or once
    /// the scan has stepped over `steps_max` entries (tombstones and hidden
    /// versions count), so one request does bounded work whatever the data
    /// holds. It always returns at least one pair if one is reached.
    pub fn range(&self, start: &[u8], end: &[u8], bounds: PageBounds) -> storage::Result<RangePage> {
        let (lower, upper) = keys::user_range(start, end);
        let db = self.db();
        let mut page = RangePage::default();
        let mut bytes = 0;
        let mut scan = db.scan(keys::bounds(&lower, &upper))?;
        let mut steps_left = bounds.steps_max;
        loop {
            let (key, value) = match scan.next_bounded(steps_left)? {
                BoundedStep::Pair(key, value) => (key, value),
                BoundedStep::Paused(key) => {
                    page.next_start = Some(key.slice(1..));
                    break;
                }
                BoundedStep::End => break,
            };
            steps_left = steps_left.saturating_sub(1);
            let user_key = key.slice(1..);
            let size = encoded_pair_bytes(user_key.len(), value.len());
            if page.pairs.len() == bounds.pairs_max || (!page.pairs.is_empty() && bytes + size > bounds.bytes_max) {
                page.next_start = Some(user_key);
                break;
            }
            bytes += size;
            page.pairs.push((user_key, value));
        }
        Ok(page)
    }

    /// The number of user keys and a 64-bit FNV-1a hash over every user key
    /// and value in order, then every exactly-once session record, to
    /// compare replicas (sessions too must agree, or replicas would answer
    /// a retry differently).
    pub fn digest(&self) -> storage::Result<(u64, u64)> {
        let db = self.db();
        let mut hash = Fnv64::new();
        let mut count = 0;
        let (lower, upper) = keys::user_range(b"", b"");
        for pair in db.scan(keys::bounds(&lower, &upper))? {
            let (key, value) = pair?;
            for part in [&key[1..], &value[..]] {
                hash.write(&(part.len() as u64).to_le_bytes());
                hash.write(part);
            }
            count += 1;
        }
        let (lower, upper) = keys::session_range();
        for pair in db.scan(keys::bounds(&lower, &upper))? {
            let (key, value) = pair?;
            for part in [&key[..], &value[..]] {
                hash.write(&(part.len() as u64).to_le_bytes());
                hash.write(part);
            }
        }
        Ok((count, hash.finish()))
    }
}

/// How much one Range page may hold and cost.
#[derive(Debug, Clone, Copy)]
pub struct PageBounds {
    /// Pairs at most.
    pub pairs_max: usize,
    /// Encoded bytes of the pairs at most (protobuf framing included).
    pub bytes_max: usize,
    /// Engine entries stepped over at most (tombstones included).
    pub steps_max: u64,
}

/// The bytes a `KeyValue` of these sizes takes inside a `RangeResponse`:
/// the two length-delimited fields, the message itself, and their tags.
pub fn encoded_pair_bytes(key_len: usize, value_len: usize) -> usize {
    let field = |len: usize| 1 + varint_len(len) + len;
    let message = field(key_len) + field(value_len);
    field(message)
}

fn varint_len(value: usize) -> usize {
    let bits = usize::BITS - (value | 1).leading_zeros();
    bits.div_ceil(7) as usize
}

/// FNV-1a, 64-bit: a fixed, portable hash (unlike std's `DefaultHasher`).
struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use proto::kv as api;

    use super::*;

    #[test]
    fn a_range_over_many_tombstones_stops_after_its_step_budget() {
        // A page over mass deletions must do bounded work, then say where to resume.
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::new(Db::open(dir.path(), storage::Options::default()).expect("open"));
        let db = engine.db();
        for i in 0..1_000u32 {
            db.put(keys::user_key(format!("k{i:04}").as_bytes()), b"v")
                .expect("put");
        }
        for i in 0..990u32 {
            db.delete(keys::user_key(format!("k{i:04}").as_bytes()))
                .expect("delete");
        }
        let bounds = PageBounds {
            pairs_max: 100,
            bytes_max: 1 << 20,
            steps_max: 100,
        };
        let mut start = Bytes::new();
        let (mut pairs, mut pages) = (Vec::new(), 0);
        loop {
            let page = engine.range(&start, b"", bounds).expect("range");
            pages += 1;
            pairs.extend(page.pairs.into_iter().map(|(k, _)| k));
            match page.next_start {
                Some(next) => {
                    assert!(next > start, "pages move forward");
                    start = next;
                }
                None => break,
            }
        }
        let expected: Vec<Bytes> = (990..1_000u32).map(|i| Bytes::from(format!("k{i:04}"))).collect();
        assert_eq!(pairs, expected);
        assert!(pages >= 9, "990 tombstones at 100 steps a page: {pages} pages");
    }

    #[test]
    fn the_pair_size_bound_matches_protobuf_encoding() {
        // A page bounded by this sum must also be bounded on the wire.
        for (key_len, value_len) in [(1, 0), (16, 100), (4096, 4190), (127, 128), (4096, 1 << 20)] {
            let response = api::RangeResponse {
                pairs: vec![api::KeyValue {
                    key: vec![7; key_len].into(),
                    value: vec![9; value_len].into(),
                }],
                next_start: Default::default(),
            };
            assert!(response.encoded_len() <= encoded_pair_bytes(key_len, value_len));
            assert!(response.encoded_len() + 2 >= encoded_pair_bytes(key_len, value_len));
        }
    }
}
