//! The engine handle the state machine writes through and the read path
//! reads from. It is replaced whole when a snapshot is installed.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;
use storage::Db;

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

    /// Up to `limit` pairs with `start <= key < end` (empty `end`: no end),
    /// stopping early once `bytes_max` bytes of keys and values are taken
    /// (but always returning at least one pair if any exists).
    pub fn range(&self, start: &[u8], end: &[u8], limit: usize, bytes_max: usize) -> storage::Result<RangePage> {
        let (lower, upper) = keys::user_range(start, end);
        let db = self.db();
        let mut page = RangePage::default();
        let mut bytes = 0;
        for pair in db.scan(keys::bounds(&lower, &upper))? {
            let (key, value) = pair?;
            let user_key = key.slice(1..);
            let size = user_key.len() + value.len();
            if page.pairs.len() == limit || (!page.pairs.is_empty() && bytes + size > bytes_max) {
                page.next_start = Some(user_key);
                break;
            }
            bytes += size;
            page.pairs.push((user_key, value));
        }
        Ok(page)
    }

    /// The number of user keys and a 64-bit FNV-1a hash over every user key
    /// and value in order, to compare replicas.
    pub fn digest(&self) -> storage::Result<(u64, u64)> {
        let (lower, upper) = keys::user_range(b"", b"");
        let db = self.db();
        let mut hash = Fnv64::new();
        let mut count = 0;
        for pair in db.scan(keys::bounds(&lower, &upper))? {
            let (key, value) = pair?;
            for part in [&key[1..], &value[..]] {
                hash.write(&(part.len() as u64).to_le_bytes());
                hash.write(part);
            }
            count += 1;
        }
        Ok((count, hash.finish()))
    }
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
