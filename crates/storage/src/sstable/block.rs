//! Blocks: runs of prefix-compressed, sorted `(internal key, value)` entries
//! followed by an array of restart points.
//!
//! Data blocks and the index block share this format (see
//! `docs/storage-format.md`, "Tables"). A [`Block`] can only be made by
//! [`Block::parse`], which checks every byte of its structure once, so the
//! hot paths ([`BlockIter`]) may treat a malformed entry as a bug.

use std::cmp::Ordering;
use std::ops::Range;

use bytes::Bytes;

use crate::coding::{put_varint, u32_le_at, Decoder};
use crate::key;

/// Bytes of one restart offset, and of the restart count, in the block trailer.
const RESTART_BYTES: usize = 4;

/// Largest block this format can describe: restart offsets are `u32`.
pub(crate) const BLOCK_BYTES_MAX: usize = u32::MAX as usize;

/// Accumulates sorted entries and encodes them as one block.
#[derive(Debug)]
pub(crate) struct BlockBuilder {
    /// Encoded entries so far (the restart array is appended by `finish`).
    buf: Vec<u8>,
    /// Offsets in `buf` of the entries that store their full key.
    restarts: Vec<u32>,
    /// Entries between restart points.
    restart_interval: usize,
    /// Entries added since the last restart point.
    entries_since_restart: usize,
    /// The previous key, for prefix compression and the ordering assertion.
    last_key: Vec<u8>,
    /// Entries in the block.
    entries: usize,
    /// Whether `finish` appended the restart array (the builder must be reset).
    finished: bool,
}

impl BlockBuilder {
    /// An empty builder placing a restart point every `restart_interval` entries.
    pub(crate) fn new(restart_interval: usize) -> Self {
        assert!(restart_interval >= 1, "block restart interval must be at least 1");
        BlockBuilder {
            buf: Vec::new(),
            restarts: Vec::new(),
            restart_interval,
            entries_since_restart: 0,
            last_key: Vec::new(),
            entries: 0,
            finished: false,
        }
    }

    /// Appends an entry. Panics unless `internal_key` sorts strictly after the
    /// previous key: callers feed keys in order, so disorder is a bug.
    pub(crate) fn add(&mut self, internal_key: &[u8], value: &[u8]) {
        assert!(!self.finished, "block builder used after finish without reset");
        if self.entries > 0 {
            assert_eq!(
                key::compare(&self.last_key, internal_key),
                Ordering::Less,
                "block keys must be added in strictly increasing order"
            );
        }
        let shared = if self.entries == 0 || self.entries_since_restart == self.restart_interval {
            let offset = u32::try_from(self.buf.len()).expect("block exceeds BLOCK_BYTES_MAX");
            self.restarts.push(offset);
            self.entries_since_restart = 0;
            0
        } else {
            common_prefix_len(&self.last_key, internal_key)
        };
        let unshared = &internal_key[shared..];
        put_varint(&mut self.buf, shared as u64);
        put_varint(&mut self.buf, unshared.len() as u64);
        put_varint(&mut self.buf, value.len() as u64);
        self.buf.extend_from_slice(unshared);
        self.buf.extend_from_slice(value);
        self.last_key.truncate(shared);
        self.last_key.extend_from_slice(unshared);
        self.entries_since_restart += 1;
        self.entries += 1;
    }

    /// Bytes the block would have if finished now.
    pub(crate) fn estimated_bytes(&self) -> usize {
        self.buf.len() + (self.restarts.len() + 1) * RESTART_BYTES
    }

    /// Whether no entry was added since the last reset.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Appends the restart array and returns the encoded block. Panics if the
    /// block is empty: the table never writes empty blocks.
    pub(crate) fn finish(&mut self) -> &[u8] {
        assert!(self.entries > 0, "an empty block must not be written");
        assert!(!self.finished, "block builder finished twice");
        for &restart in &self.restarts {
            self.buf.extend_from_slice(&restart.to_le_bytes());
        }
        let count = u32::try_from(self.restarts.len()).expect("restart count fits u32");
        self.buf.extend_from_slice(&count.to_le_bytes());
        assert!(self.buf.len() <= BLOCK_BYTES_MAX, "block exceeds BLOCK_BYTES_MAX");
        self.finished = true;
        &self.buf
    }

    /// Empties the builder for the next block, keeping its allocations.
    pub(crate) fn reset(&mut self) {
        self.buf.clear();
        self.restarts.clear();
        self.entries_since_restart = 0;
        self.last_key.clear();
        self.entries = 0;
        self.finished = false;
    }
}

/// Length of the longest common prefix of `a` and `b`.
fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Why a block's bytes are not a valid block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlockCorruption {
    /// Offset inside the block where the problem was found.
    pub(crate) offset: usize,
    /// What is wrong.
    pub(crate) reason: &'static str,
}

/// Shorthand for a [`BlockCorruption`] result.
fn corrupt<T>(offset: usize, reason: &'static str) -> Result<T, BlockCorruption> {
    Err(BlockCorruption { offset, reason })
}

/// One decoded entry header: positions are absolute offsets in the block.
#[derive(Debug, Clone)]
struct Entry {
    /// Bytes of key shared with the previous entry's key.
    shared: usize,
    /// Where the unshared key bytes lie.
    unshared: Range<usize>,
    /// Where the value lies.
    value: Range<usize>,
    /// Offset of the following entry.
    next: usize,
}

/// Decodes the entry at `pos`, which must lie before `limit`; `None` if its
/// lengths run past `limit` or its varints are malformed.
fn decode_entry(data: &[u8], pos: usize, limit: usize) -> Option<Entry> {
    let mut decoder = Decoder::new(data.get(pos..limit)?);
    let shared = decoder.varint_usize()?;
    let unshared_len = decoder.varint_usize()?;
    let value_len = decoder.varint_usize()?;
    let key_start = pos + decoder.position();
    decoder.bytes(unshared_len)?;
    decoder.bytes(value_len)?;
    let value_start = key_start + unshared_len;
    Some(Entry {
        shared,
        unshared: key_start..value_start,
        value: value_start..value_start + value_len,
        next: value_start + value_len,
    })
}

/// A parsed, fully validated block. Cheap to clone: the bytes are shared.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    /// The block contents: entries then the restart array.
    data: Bytes,
    /// Offset where the entries end and the restart array begins.
    entries_end: usize,
    /// Number of restart points (at least one).
    restart_count: usize,
}

impl Block {
    /// Checks the structure of `data` and every entry in it: restart array in
    /// bounds and ascending, each restart on an entry boundary with a full
    /// key, entries within bounds, keys valid internal keys in strictly
    /// increasing order. Bad bytes are reported, never panicked on.
    pub(crate) fn parse(data: Bytes) -> Result<Block, BlockCorruption> {
        let len = data.len();
        if len < RESTART_BYTES {
            return corrupt(0, "block shorter than its restart count");
        }
        let count_pos = len - RESTART_BYTES;
        let restart_count = u32_le_at(&data, count_pos) as usize;
        if restart_count == 0 {
            return corrupt(count_pos, "block has no restart points");
        }
        let entries_end = match restart_count
            .checked_mul(RESTART_BYTES)
            .and_then(|b| count_pos.checked_sub(b))
        {
            Some(end) => end,
            None => return corrupt(count_pos, "restart count does not fit in the block"),
        };
        let block = Block {
            data,
            entries_end,
            restart_count,
        };
        block.check_restarts()?;
        block.check_entries()?;
        Ok(block)
    }

    /// Checks that restart offsets start at 0, ascend, and stay within the entries.
    fn check_restarts(&self) -> Result<(), BlockCorruption> {
        if self.restart_offset(0) != 0 {
            return corrupt(self.entries_end, "first restart point is not the first entry");
        }
        for i in 1..self.restart_count {
            let pos = self.entries_end + i * RESTART_BYTES;
            let offset = self.restart_offset(i);
            if offset <= self.restart_offset(i - 1) {
                return corrupt(pos, "restart points not ascending");
            }
            if offset >= self.entries_end {
                return corrupt(pos, "restart point beyond the entries");
            }
        }
        // The last restart must also lie before the entries end (covers count == 1).
        if self.restart_offset(self.restart_count - 1) >= self.entries_end {
            return corrupt(self.entries_end, "restart point beyond the entries");
        }
        Ok(())
    }

    /// Walks every entry once, checking bounds, restart placement and key order.
    fn check_entries(&self) -> Result<(), BlockCorruption> {
        let mut previous: Vec<u8> = Vec::new();
        let mut current: Vec<u8> = Vec::new();
        let mut next_restart = 0;
        let mut pos = 0;
        while pos < self.entries_end {
            let Some(entry) = decode_entry(&self.data, pos, self.entries_end) else {
                return corrupt(pos, "entry runs past the end of the block's entries");
            };
            if next_restart < self.restart_count && self.restart_offset(next_restart) == pos {
                if entry.shared != 0 {
                    return corrupt(pos, "restart entry shares a prefix");
                }
                next_restart += 1;
            } else if next_restart < self.restart_count && self.restart_offset(next_restart) < pos {
                return corrupt(pos, "restart point not on an entry boundary");
            }
            if entry.shared > previous.len() {
                return corrupt(pos, "shared prefix longer than the previous key");
            }
            current.clear();
            current.extend_from_slice(&previous[..entry.shared]);
            current.extend_from_slice(&self.data[entry.unshared.clone()]);
            if key::parse(&current).is_none() {
                return corrupt(pos, "entry key is not a valid internal key");
            }
            if pos > 0 && key::compare(&previous, &current) != Ordering::Less {
                return corrupt(pos, "keys within the block are not increasing");
            }
            std::mem::swap(&mut previous, &mut current);
            pos = entry.next;
        }
        if next_restart != self.restart_count {
            return corrupt(self.entries_end, "restart point not on an entry boundary");
        }
        Ok(())
    }

    /// The offset stored in restart point `index`.
    fn restart_offset(&self, index: usize) -> usize {
        debug_assert!(index < self.restart_count);
        u32_le_at(&self.data, self.entries_end + index * RESTART_BYTES) as usize
    }

    /// The full key stored at restart point `index`.
    fn restart_key(&self, index: usize) -> &[u8] {
        let entry = self.entry_at(self.restart_offset(index));
        debug_assert_eq!(entry.shared, 0, "restart entry validated to share nothing");
        &self.data[entry.unshared]
    }

    /// Decodes the entry at `pos`; `parse` proved every entry decodes, so
    /// the common case (three one-byte lengths) skips the general decoder's
    /// checks.
    fn entry_at(&self, pos: usize) -> Entry {
        if let Some(&[shared, unshared, value]) = self.data.get(pos..pos + 3) {
            if (shared | unshared | value) < 0x80 {
                let key_start = pos + 3;
                let value_start = key_start + usize::from(unshared);
                let next = value_start + usize::from(value);
                debug_assert!(next <= self.entries_end, "validated entry ends inside the entries");
                return Entry {
                    shared: usize::from(shared),
                    unshared: key_start..value_start,
                    value: value_start..next,
                    next,
                };
            }
        }
        decode_entry(&self.data, pos, self.entries_end).expect("entries were validated when the block was parsed")
    }

    /// Index of the first restart point whose key is `>= target`
    /// (`restart_count` if none): a binary search over borrowed keys.
    fn first_restart_at_or_after(&self, target: &[u8]) -> usize {
        let (mut low, mut high) = (0, self.restart_count);
        while low < high {
            let mid = low + (high - low) / 2;
            if key::compare(self.restart_key(mid), target) == Ordering::Less {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        low
    }

    /// The first entry whose key is `>= target`, as borrowed `(key, value)`,
    /// or `None` if every key is smaller. Allocates nothing once `key_buf`
    /// has grown: keys stored whole (restart points) are compared in place,
    /// and only prefix-compressed keys are rebuilt in `key_buf`.
    pub(crate) fn seek_entry<'a>(&'a self, target: &[u8], key_buf: &'a mut Vec<u8>) -> Option<(&'a [u8], &'a [u8])> {
        /// Where the key under examination lies.
        enum At {
            /// Stored whole in the block.
            Block(Range<usize>),
            /// Rebuilt in `key_buf`.
            Buffer,
        }
        let restart = self.first_restart_at_or_after(target);
        // The entry at restart `restart` is known to be `>= target` without
        // comparing it again (none if every restart key is smaller).
        let known_at_or_after = match restart < self.restart_count {
            true => self.restart_offset(restart),
            false => self.entries_end,
        };
        let (mut previous, mut pos) = if restart == 0 {
            let entry = self.entry_at(0);
            return Some((&self.data[entry.unshared], &self.data[entry.value]));
        } else {
            // The restart before `restart` sorts below `target`: the answer
            // is among the entries after it (up to restart `restart`).
            let entry = self.entry_at(self.restart_offset(restart - 1));
            (At::Block(entry.unshared), entry.next)
        };
        let (found, value) = loop {
            if pos >= self.entries_end {
                return None;
            }
            let entry = self.entry_at(pos);
            let current = if entry.shared == 0 {
                At::Block(entry.unshared)
            } else {
                match previous {
                    At::Block(range) => {
                        key_buf.clear();
                        key_buf.extend_from_slice(&self.data[range.start..range.start + entry.shared]);
                    }
                    At::Buffer => key_buf.truncate(entry.shared),
                }
                key_buf.extend_from_slice(&self.data[entry.unshared]);
                At::Buffer
            };
            if pos == known_at_or_after {
                break (current, entry.value);
            }
            let key: &[u8] = match &current {
                At::Block(range) => &self.data[range.clone()],
                At::Buffer => key_buf,
            };
            if key::compare(key, target) != Ordering::Less {
                break (current, entry.value);
            }
            previous = current;
            pos = entry.next;
        };
        let key: &'a [u8] = match found {
            At::Block(range) => &self.data[range],
            At::Buffer => key_buf,
        };
        Some((key, &self.data[value]))
    }

    /// In a block with a restart point at every entry (index blocks), the
    /// first entry whose key is `>= target`: its position and its value;
    /// `None` if every key is smaller. (In other blocks: the first restart
    /// entry `>=` target, which may skip entries.)
    pub(crate) fn seek_restart(&self, target: &[u8]) -> Option<(usize, &[u8])> {
        let restart = self.first_restart_at_or_after(target);
        if restart == self.restart_count {
            return None;
        }
        let entry = self.entry_at(self.restart_offset(restart));
        Some((restart, &self.data[entry.value]))
    }

    /// Restart points in the block (at least one).
    pub(crate) fn restart_count(&self) -> usize {
        self.restart_count
    }

    /// Bytes of the block contents (entries and restart array).
    pub(crate) fn size_bytes(&self) -> usize {
        self.data.len()
    }
}

/// A cursor over one block's entries.
#[derive(Debug)]
pub(crate) struct BlockIter {
    /// The block being read.
    block: Block,
    /// Offset of the current entry; `block.entries_end` when not valid.
    current: usize,
    /// Offset of the entry after the current one.
    next: usize,
    /// The current key, rebuilt in place from each entry's shared prefix.
    key: Vec<u8>,
    /// Where the current value lies in the block.
    value: Range<usize>,
}

impl BlockIter {
    /// A cursor over `block`, not yet positioned.
    pub(crate) fn new(block: Block) -> Self {
        Self::with_buffer(block, Vec::new())
    }

    /// A cursor over `block` that reuses `buffer`'s allocation for its key.
    pub(crate) fn with_buffer(block: Block, mut buffer: Vec<u8>) -> Self {
        buffer.clear();
        let end = block.entries_end;
        BlockIter {
            block,
            current: end,
            next: end,
            key: buffer,
            value: 0..0,
        }
    }

    /// Points the cursor at another block, keeping the key allocation.
    pub(crate) fn reset(&mut self, block: Block) {
        self.current = block.entries_end;
        self.next = block.entries_end;
        self.block = block;
        self.key.clear();
        self.value = 0..0;
    }

    /// Whether the cursor is on an entry.
    pub(crate) fn valid(&self) -> bool {
        self.current < self.block.entries_end
    }

    /// Moves to the first entry.
    pub(crate) fn seek_to_first(&mut self) {
        self.key.clear();
        self.step_to(0);
    }

    /// Moves to the first entry whose key is `>= target`, or past the end.
    pub(crate) fn seek(&mut self, target: &[u8]) {
        // The answer lies between the restart before the first restart
        // whose key is >= target and that restart.
        let start = self.block.first_restart_at_or_after(target).saturating_sub(1);
        self.key.clear();
        self.step_to(self.block.restart_offset(start));
        while self.valid() && key::compare(&self.key, target) == Ordering::Less {
            self.step_to(self.next);
        }
    }

    /// Moves to the next entry. Panics if not valid.
    pub(crate) fn next(&mut self) {
        assert!(self.valid(), "BlockIter::next called on an invalid cursor");
        self.step_to(self.next);
    }

    /// The current key. Only while valid.
    pub(crate) fn key(&self) -> &[u8] {
        debug_assert!(self.valid());
        &self.key
    }

    /// The current value. Only while valid.
    pub(crate) fn value(&self) -> &[u8] {
        debug_assert!(self.valid());
        &self.block.data[self.value.clone()]
    }

    /// The current value as shared bytes, without copying. Only while valid.
    #[cfg(test)]
    pub(crate) fn value_bytes(&self) -> Bytes {
        debug_assert!(self.valid());
        self.block.data.slice(self.value.clone())
    }

    /// Decodes the entry at `pos` on top of the current key, or invalidates
    /// the cursor when `pos` is the end of the entries.
    fn step_to(&mut self, pos: usize) {
        if pos >= self.block.entries_end {
            self.current = self.block.entries_end;
            self.next = self.block.entries_end;
            return;
        }
        let entry = self.block.entry_at(pos);
        self.key.truncate(entry.shared);
        self.key.extend_from_slice(&self.block.data[entry.unshared]);
        self.value = entry.value;
        self.current = pos;
        self.next = entry.next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{internal_key, ValueKind};

    /// Builds `count` sorted entries, each user key at two versions.
    fn sorted_entries(count: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for i in 0..count / 2 {
            let user = format!("key{:06}", i * 2);
            out.push((
                internal_key(user.as_bytes(), 100, ValueKind::Put),
                format!("new{i}").into_bytes(),
            ));
            out.push((internal_key(user.as_bytes(), 50, ValueKind::Delete), Vec::new()));
        }
        out
    }

    fn build(entries: &[(Vec<u8>, Vec<u8>)], restart_interval: usize) -> Block {
        let mut builder = BlockBuilder::new(restart_interval);
        for (k, v) in entries {
            builder.add(k, v);
        }
        let bytes = Bytes::copy_from_slice(builder.finish());
        Block::parse(bytes).expect("freshly built block parses")
    }

    #[test]
    fn blocks_round_trip_and_seek_to_every_key_between_keys_and_past_the_end() {
        // Prefix compression, restart points and binary search must agree at any interval.
        let entries = sorted_entries(500);
        for restart_interval in [1, 2, 16] {
            let block = build(&entries, restart_interval);
            let mut iter = BlockIter::new(block.clone());
            iter.seek_to_first();
            for (k, v) in &entries {
                assert!(iter.valid());
                assert_eq!(iter.key(), &k[..]);
                assert_eq!(iter.value(), &v[..]);
                iter.next();
            }
            assert!(!iter.valid());
            for (i, (k, v)) in entries.iter().enumerate() {
                iter.seek(k);
                assert_eq!(iter.key(), &k[..], "seek to entry {i}");
                assert_eq!(&iter.value_bytes()[..], &v[..]);
                // Between this key and the next: an odd user key sorts after both versions.
                let user = key::user_key(k);
                let between = internal_key(&[user, b"x"].concat(), 1, ValueKind::Put);
                iter.seek(&between);
                match entries.get((i / 2 + 1) * 2) {
                    Some((next, _)) => assert_eq!(iter.key(), &next[..]),
                    None => assert!(!iter.valid()),
                }
            }
            iter.seek(&internal_key(b"zzz", 1, ValueKind::Put));
            assert!(!iter.valid());
            iter.seek(&internal_key(b"", 1, ValueKind::Put));
            assert_eq!(iter.key(), &entries[0].0[..]);
        }
    }

    #[test]
    fn seek_entry_agrees_with_a_scan_across_restarts_with_long_shared_prefixes() {
        // The binary search and the no-compare shortcut at the found restart must find what a linear scan finds.
        let mut entries = Vec::new();
        for i in 0..400u64 {
            // 40 shared bytes, then keys that differ only in their last bytes, three versions each.
            let user = format!("{}{:06}", "p".repeat(40), i * 3);
            for sequence in [90, 60, 30] {
                let kind = if sequence == 60 {
                    ValueKind::Delete
                } else {
                    ValueKind::Put
                };
                entries.push((
                    internal_key(user.as_bytes(), sequence, kind),
                    format!("{i}@{sequence}").into_bytes(),
                ));
            }
        }
        let mut targets = Vec::new();
        for i in 0..1_201u64 {
            let user = format!("{}{:06}", "p".repeat(40), i);
            for sequence in [100, 90, 75, 60, 45, 30, 10] {
                targets.push(key::seek_key(user.as_bytes(), sequence));
            }
        }
        targets.push(key::seek_key(b"", 5));
        targets.push(key::seek_key(b"q", 5));
        targets.push(key::seek_key(&b"p".repeat(39), 5));
        for restart_interval in [1, 3, 16] {
            let block = build(&entries, restart_interval);
            let mut key_buf = Vec::new();
            let mut iter = BlockIter::new(block.clone());
            for target in &targets {
                let expected = entries.iter().find(|(k, _)| key::compare(k, target) != Ordering::Less);
                let found = block.seek_entry(target, &mut key_buf);
                assert_eq!(
                    found.map(|(k, v)| (k.to_vec(), v.to_vec())),
                    expected.cloned(),
                    "interval {restart_interval}, target {target:?}"
                );
                iter.seek(target);
                assert_eq!(
                    iter.valid().then(|| iter.key().to_vec()),
                    expected.map(|(k, _)| k.clone())
                );
            }
        }
    }

    #[test]
    fn seek_between_versions_lands_on_the_older_version() {
        // A snapshot between two versions must see the older one.
        let entries = sorted_entries(10);
        let block = build(&entries, 16);
        let mut iter = BlockIter::new(block);
        iter.seek(&key::seek_key(b"key000002", 70));
        assert_eq!(iter.key(), &internal_key(b"key000002", 50, ValueKind::Delete)[..]);
    }

    #[test]
    #[should_panic(expected = "strictly increasing")]
    fn adding_keys_out_of_order_panics() {
        // Out-of-order keys are a caller bug, caught at write time.
        let mut builder = BlockBuilder::new(16);
        builder.add(&internal_key(b"b", 1, ValueKind::Put), b"");
        builder.add(&internal_key(b"a", 1, ValueKind::Put), b"");
    }

    #[test]
    fn malformed_blocks_are_reported_not_panicked_on() {
        // Bad disk bytes must become errors: every single-byte change and every truncation.
        let entries = sorted_entries(60);
        let mut builder = BlockBuilder::new(4);
        for (k, v) in &entries {
            builder.add(k, v);
        }
        let good = builder.finish().to_vec();
        for len in 0..good.len() {
            // Truncations may accidentally parse; they must simply not panic.
            let _ = Block::parse(Bytes::copy_from_slice(&good[..len]));
        }
        for pos in 0..good.len() {
            for delta in [1u8, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[pos] = bad[pos].wrapping_add(delta);
                if let Ok(block) = Block::parse(Bytes::from(bad)) {
                    // Whatever parses must be walkable without panicking.
                    let mut iter = BlockIter::new(block);
                    iter.seek_to_first();
                    while iter.valid() {
                        iter.next();
                    }
                }
            }
        }
        assert_eq!(
            Block::parse(Bytes::from_static(&[0, 0, 0, 0])).err().map(|e| e.reason),
            Some("block has no restart points")
        );
    }

    #[test]
    fn out_of_order_keys_on_disk_are_corruption() {
        // Key order is checked again on read: a swapped pair is an error.
        let mut builder = BlockBuilder::new(1);
        let a = internal_key(b"a", 1, ValueKind::Put);
        let b = internal_key(b"b", 1, ValueKind::Put);
        builder.add(&a, b"1");
        builder.add(&b, b"2");
        let mut bytes = builder.finish().to_vec();
        // With restart interval 1 both keys are stored whole: swap their first bytes.
        let first = bytes.iter().position(|&c| c == b'a').expect("key a stored");
        let second = bytes.iter().position(|&c| c == b'b').expect("key b stored");
        bytes.swap(first, second);
        let err = Block::parse(Bytes::from(bytes)).expect_err("disorder detected");
        assert_eq!(err.reason, "keys within the block are not increasing");
    }
}
