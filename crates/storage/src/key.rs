//! Internal keys: a user key tagged with the sequence number and kind of the
//! write that produced it.
//!
//! Encoded as `user_key ++ trailer`, where the trailer is 8 bytes,
//! little-endian, of `(sequence << 8) | kind`. Internal keys order by user
//! key ascending, then by trailer *descending*, so the newest version of a
//! key comes first and a reader at snapshot `s` seeks to `(key, s)` and lands
//! on the newest version it may see.

use std::cmp::Ordering;

/// A write's position in the total order of writes; larger is newer.
pub type SequenceNumber = u64;

/// The largest sequence number the 56 bits of a trailer can hold.
pub const SEQUENCE_MAX: SequenceNumber = (1 << 56) - 1;

/// Bytes of the trailer appended to every user key.
pub const TRAILER_BYTES: usize = 8;

/// What a write did to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ValueKind {
    /// The key was deleted (a tombstone).
    Delete = 0,
    /// The key was set to a value, kept in the entry.
    Put = 1,
    /// The key was set to a value kept in a blob file; the entry's value
    /// is where (see `blob::BlobPointer`). Only tables hold such entries.
    Blob = 2,
}

impl ValueKind {
    /// Decodes a kind byte, `None` if unknown.
    pub fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(ValueKind::Delete),
            1 => Some(ValueKind::Put),
            2 => Some(ValueKind::Blob),
            _ => None,
        }
    }

    /// Whether the key has a value (in the entry or in a blob file).
    pub fn has_value(self) -> bool {
        matches!(self, ValueKind::Put | ValueKind::Blob)
    }
}

/// The kind used in seek keys: the largest kind, so that a seek to
/// `(key, s)` lands before every entry of `key` with sequence `<= s`.
pub(crate) const KIND_FOR_SEEK: ValueKind = ValueKind::Blob;

/// Packs a sequence number and kind into a trailer value.
pub fn pack_trailer(sequence: SequenceNumber, kind: ValueKind) -> u64 {
    assert!(sequence <= SEQUENCE_MAX, "sequence {sequence} exceeds SEQUENCE_MAX");
    (sequence << 8) | kind as u64
}

/// Appends the internal key `(user_key, sequence, kind)` to `buf`.
pub fn append_internal_key(buf: &mut Vec<u8>, user_key: &[u8], sequence: SequenceNumber, kind: ValueKind) {
    buf.extend_from_slice(user_key);
    buf.extend_from_slice(&pack_trailer(sequence, kind).to_le_bytes());
}

/// Builds the internal key `(user_key, sequence, kind)`.
pub fn internal_key(user_key: &[u8], sequence: SequenceNumber, kind: ValueKind) -> Vec<u8> {
    let mut buf = Vec::with_capacity(user_key.len() + TRAILER_BYTES);
    append_internal_key(&mut buf, user_key, sequence, kind);
    buf
}

/// The key to seek to for the newest version of `user_key` visible at
/// `sequence`.
pub fn seek_key(user_key: &[u8], sequence: SequenceNumber) -> Vec<u8> {
    internal_key(user_key, sequence, KIND_FOR_SEEK)
}

/// Writes the seek key for `user_key` at `sequence` (see [`seek_key`]) to
/// the start of `buf` and returns its length; `buf` must have room for
/// `user_key.len() + TRAILER_BYTES` bytes.
pub fn write_seek_key(buf: &mut [u8], user_key: &[u8], sequence: SequenceNumber) -> usize {
    let len = user_key.len() + TRAILER_BYTES;
    assert!(buf.len() >= len, "seek key buffer too small");
    buf[..user_key.len()].copy_from_slice(user_key);
    buf[user_key.len()..len].copy_from_slice(&pack_trailer(sequence, KIND_FOR_SEEK).to_le_bytes());
    len
}

/// A borrowed, decoded view of an encoded internal key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    /// The user's key.
    pub user_key: &'a [u8],
    /// The sequence number of the write.
    pub sequence: SequenceNumber,
    /// What the write did.
    pub kind: ValueKind,
}

/// Decodes an internal key; `None` if it is too short or its kind is unknown.
pub fn parse(internal: &[u8]) -> Option<ParsedKey<'_>> {
    let split = internal.len().checked_sub(TRAILER_BYTES)?;
    let (user_key, trailer) = internal.split_at(split);
    let trailer = u64::from_le_bytes(trailer.try_into().ok()?);
    Some(ParsedKey {
        user_key,
        sequence: trailer >> 8,
        kind: ValueKind::from_u8(trailer as u8)?,
    })
}

/// The user-key part of an internal key.
///
/// Panics if `internal` is shorter than a trailer: every internal key the
/// engine handles was validated when it was read from disk.
pub fn user_key(internal: &[u8]) -> &[u8] {
    assert!(internal.len() >= TRAILER_BYTES, "internal key shorter than its trailer");
    &internal[..internal.len() - TRAILER_BYTES]
}

fn trailer(internal: &[u8]) -> u64 {
    let split = internal.len() - TRAILER_BYTES;
    let mut raw = [0u8; TRAILER_BYTES];
    raw.copy_from_slice(&internal[split..]);
    u64::from_le_bytes(raw)
}

/// Orders encoded internal keys: user key ascending, then newest first.
pub fn compare(a: &[u8], b: &[u8]) -> Ordering {
    user_key(a).cmp(user_key(b)).then_with(|| trailer(b).cmp(&trailer(a)))
}

/// An owned internal key whose `Ord` is [`compare`]; the memtable's key type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalKey(pub bytes::Bytes);

impl Ord for InternalKey {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(&self.0, &other.0)
    }
}

impl PartialOrd for InternalKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_versions_of_a_key_sort_first() {
        let old = internal_key(b"k", 5, ValueKind::Put);
        let new = internal_key(b"k", 9, ValueKind::Delete);
        assert_eq!(compare(&new, &old), Ordering::Less);
    }

    #[test]
    fn user_key_order_dominates_and_prefixes_sort_first() {
        let a = internal_key(b"a", 1, ValueKind::Put);
        let ab = internal_key(b"ab", 100, ValueKind::Put);
        assert_eq!(compare(&a, &ab), Ordering::Less);
        let b = internal_key(b"b", 1, ValueKind::Put);
        assert_eq!(compare(&ab, &b), Ordering::Less);
    }

    #[test]
    fn a_seek_key_lands_on_the_newest_visible_version() {
        let seek = seek_key(b"k", 7);
        let at_seven_put = internal_key(b"k", 7, ValueKind::Put);
        let at_seven_delete = internal_key(b"k", 7, ValueKind::Delete);
        let at_eight = internal_key(b"k", 8, ValueKind::Put);
        assert_ne!(compare(&seek, &at_seven_put), Ordering::Greater);
        assert_eq!(compare(&seek, &at_seven_delete), Ordering::Less);
        assert_eq!(compare(&at_eight, &seek), Ordering::Less);
    }

    #[test]
    fn a_seek_key_sorts_before_every_kind_at_its_sequence() {
        // A seek with a smaller kind than some entry's would step over that entry.
        let seek = seek_key(b"k", 7);
        for kind in [ValueKind::Delete, ValueKind::Put, ValueKind::Blob] {
            assert_ne!(
                compare(&seek, &internal_key(b"k", 7, kind)),
                Ordering::Greater,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn parse_round_trips() {
        let key = internal_key(b"user", 42, ValueKind::Delete);
        let parsed = parse(&key).expect("valid key");
        assert_eq!(parsed.user_key, b"user");
        assert_eq!(parsed.sequence, 42);
        assert_eq!(parsed.kind, ValueKind::Delete);
        assert!(parse(b"short").is_none());
    }
}
