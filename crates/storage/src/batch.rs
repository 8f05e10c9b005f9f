//! Write batches: many puts and deletes applied atomically, plus optional
//! metadata persisted with them.
//!
//! A batch is kept in its WAL encoding from the start, so logging it costs
//! one copy. Encoded as (little-endian):
//!
//! ```text
//! first_sequence: u64 | count: u32 | flags: u8 (bit 0: has metadata)
//! [metadata: varint length + bytes]   if flags & 1
//! entries: kind: u8 | key: varint length + bytes | [value: varint length + bytes if kind = Put]
//! ```

use bytes::Bytes;

use crate::coding::{put_length_prefixed, Decoder};
use crate::error::{Error, Result};
use crate::key::{SequenceNumber, ValueKind, SEQUENCE_MAX};
use crate::options::{KEY_BYTES_MAX, METADATA_BYTES_MAX, VALUE_BYTES_MAX};

/// Bytes of the fixed batch header: sequence, count, flags.
pub(crate) const BATCH_HEADER_BYTES: usize = 13;
/// Largest encoded batch, in bytes (it must fit one log record).
pub const BATCH_BYTES_MAX: usize = crate::log::RECORD_BYTES_MAX - METADATA_BYTES_MAX - 64;
const FLAG_HAS_METADATA: u8 = 1;

/// An atomic group of writes: after a crash either all of them are present
/// or none is.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    entries: Vec<u8>,
    count: u32,
    metadata: Option<Bytes>,
    error: Option<String>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> &mut Self {
        let (key, value) = (key.as_ref(), value.as_ref());
        if self.check_key(key) {
            if value.len() > VALUE_BYTES_MAX {
                self.fail(format!(
                    "value of {} bytes exceeds VALUE_BYTES_MAX ({VALUE_BYTES_MAX})",
                    value.len()
                ));
            } else {
                self.entries.push(ValueKind::Put as u8);
                put_length_prefixed(&mut self.entries, key);
                put_length_prefixed(&mut self.entries, value);
                self.count += 1;
            }
        }
        self
    }

    /// Deletes `key` (a missing key is fine).
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> &mut Self {
        let key = key.as_ref();
        if self.check_key(key) {
            self.entries.push(ValueKind::Delete as u8);
            put_length_prefixed(&mut self.entries, key);
            self.count += 1;
        }
        self
    }

    /// Attaches `metadata`, persisted atomically with this batch and readable
    /// after a reopen through [`crate::Db::durable_metadata`] while this is the newest
    /// durable batch that carried metadata. Used by Raft to record the last
    /// applied log id with the data it covers.
    pub fn set_metadata(&mut self, metadata: impl Into<Bytes>) -> &mut Self {
        let metadata = metadata.into();
        if metadata.len() > METADATA_BYTES_MAX {
            self.fail(format!(
                "metadata of {} bytes exceeds METADATA_BYTES_MAX ({METADATA_BYTES_MAX})",
                metadata.len()
            ));
        } else {
            self.metadata = Some(metadata);
        }
        self
    }

    /// Number of puts and deletes.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether the batch holds no puts or deletes.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Approximate encoded size in bytes.
    pub fn approximate_bytes(&self) -> usize {
        BATCH_HEADER_BYTES + self.entries.len() + self.metadata.as_ref().map_or(0, |m| m.len() + 4)
    }

    /// Drops every entry and the metadata.
    pub fn clear(&mut self) {
        *self = WriteBatch::default();
    }

    pub(crate) fn metadata(&self) -> Option<&Bytes> {
        self.metadata.as_ref()
    }

    fn check_key(&mut self, key: &[u8]) -> bool {
        if key.is_empty() {
            self.fail("empty key".to_string());
            false
        } else if key.len() > KEY_BYTES_MAX {
            self.fail(format!(
                "key of {} bytes exceeds KEY_BYTES_MAX ({KEY_BYTES_MAX})",
                key.len()
            ));
            false
        } else {
            true
        }
    }

    fn fail(&mut self, message: String) {
        // The first bad input wins; the whole batch is refused when written.
        self.error.get_or_insert(message);
    }

    /// Checks limits; a batch with any bad entry is refused whole.
    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(message) = &self.error {
            return Err(Error::InvalidArgument(message.clone()));
        }
        if self.approximate_bytes() > BATCH_BYTES_MAX {
            return Err(Error::InvalidArgument(format!(
                "batch of {} bytes exceeds BATCH_BYTES_MAX ({BATCH_BYTES_MAX})",
                self.approximate_bytes()
            )));
        }
        Ok(())
    }

    /// Appends the WAL encoding of this batch, numbered from `first_sequence`.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>, first_sequence: SequenceNumber) {
        out.extend_from_slice(&first_sequence.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        match &self.metadata {
            Some(metadata) => {
                out.push(FLAG_HAS_METADATA);
                put_length_prefixed(out, metadata);
            }
            None => out.push(0),
        }
        out.extend_from_slice(&self.entries);
    }

    /// The entries, in insertion order.
    pub(crate) fn entries(&self) -> EntryIter<'_> {
        EntryIter {
            decoder: Decoder::new(&self.entries),
            remaining: self.count,
        }
    }
}

/// One put or delete of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry<'a> {
    pub kind: ValueKind,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// Iterates a batch's entries. Batches built in memory are well formed, so
/// a decoding failure is a bug there; decoded WAL records are checked by
/// [`DecodedBatch::decode`] before their entries are walked.
pub(crate) struct EntryIter<'a> {
    decoder: Decoder<'a>,
    remaining: u32,
}

impl<'a> Iterator for EntryIter<'a> {
    type Item = Entry<'a>;

    fn next(&mut self) -> Option<Entry<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let entry = decode_entry(&mut self.decoder);
        assert!(entry.is_some(), "batch entries were validated before iteration");
        entry
    }
}

fn decode_entry<'a>(decoder: &mut Decoder<'a>) -> Option<Entry<'a>> {
    let kind = ValueKind::from_u8(decoder.u8()?)?;
    let key = decoder.length_prefixed()?;
    let value = match kind {
        ValueKind::Put => decoder.length_prefixed()?,
        ValueKind::Delete => &[],
        // A batch carries values, never pointers to blob files.
        ValueKind::Blob => return None,
    };
    Some(Entry { kind, key, value })
}

/// A batch read back from a WAL record.
#[derive(Debug)]
pub(crate) struct DecodedBatch<'a> {
    pub first_sequence: SequenceNumber,
    pub count: u32,
    pub metadata: Option<&'a [u8]>,
    entries: &'a [u8],
}

impl<'a> DecodedBatch<'a> {
    /// Decodes and fully validates a WAL record; `None` if malformed.
    pub fn decode(record: &'a [u8]) -> Option<Self> {
        let mut decoder = Decoder::new(record);
        let first_sequence = decoder.u64_le()?;
        let count = decoder.u32_le()?;
        // Every entry's sequence must fit an internal key: the engine never
        // writes one past SEQUENCE_MAX, so such a record is damage (and
        // would otherwise trip the memtable's key assertion on replay).
        let last_sequence = first_sequence.checked_add(u64::from(count.saturating_sub(1)))?;
        if last_sequence > SEQUENCE_MAX {
            return None;
        }
        let flags = decoder.u8()?;
        let metadata = if flags & FLAG_HAS_METADATA != 0 {
            Some(decoder.length_prefixed()?)
        } else {
            None
        };
        let entries = &record[decoder.position()..];
        let mut check = Decoder::new(entries);
        for _ in 0..count {
            decode_entry(&mut check)?;
        }
        if !check.is_empty() {
            return None;
        }
        Some(DecodedBatch {
            first_sequence,
            count,
            metadata,
            entries,
        })
    }

    /// The entries, in order.
    pub fn entries(&self) -> EntryIter<'a> {
        EntryIter {
            decoder: Decoder::new(self.entries),
            remaining: self.count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_entries_and_metadata() {
        // The WAL must hand back exactly the batch that was logged.
        let mut batch = WriteBatch::new();
        batch
            .put(b"a", b"1")
            .delete(b"b")
            .put(b"c", b"")
            .set_metadata(&b"applied=7"[..]);
        batch.validate().expect("valid");
        let mut encoded = Vec::new();
        batch.encode_into(&mut encoded, 100);
        let decoded = DecodedBatch::decode(&encoded).expect("decodes");
        assert_eq!(decoded.first_sequence, 100);
        assert_eq!(decoded.metadata, Some(&b"applied=7"[..]));
        let entries: Vec<_> = decoded.entries().collect();
        assert_eq!(entries, batch.entries().collect::<Vec<_>>());
        assert_eq!(entries[1].kind, ValueKind::Delete);
        assert!(DecodedBatch::decode(&encoded[..encoded.len() - 1]).is_none());
    }

    #[test]
    fn a_record_with_sequences_past_sequence_max_is_malformed() {
        // Found by fuzzing the WAL: such a record panicked in the memtable's key encoding on replay.
        let mut batch = WriteBatch::new();
        batch.put(b"a", b"1").put(b"b", b"2");
        let mut encoded = Vec::new();
        batch.encode_into(&mut encoded, SEQUENCE_MAX - 1);
        assert!(
            DecodedBatch::decode(&encoded).is_some(),
            "the last sequence is SEQUENCE_MAX"
        );
        for first in [SEQUENCE_MAX, u64::MAX] {
            encoded[..8].copy_from_slice(&first.to_le_bytes());
            assert!(DecodedBatch::decode(&encoded).is_none(), "first sequence {first}");
        }
    }

    #[test]
    fn one_bad_entry_refuses_the_whole_batch() {
        // Nothing half-applied: a batch with an oversized key is rejected whole.
        let mut batch = WriteBatch::new();
        batch.put(b"fine", b"v").put(vec![0u8; KEY_BYTES_MAX + 1], b"v");
        let err = batch.validate().expect_err("too large");
        assert!(err.to_string().contains("KEY_BYTES_MAX"), "{err}");
        let mut empty_key = WriteBatch::new();
        empty_key.delete(b"");
        assert!(empty_key.validate().is_err());
    }
}
