//! The log store's records: a one-byte type followed by a protobuf body.

use prost::Message;
use proto::raft as pb;

use crate::codec;
use crate::types::{Entry, LogId, Vote};

/// Record type byte of a log entry (`raft.v1.Entry`, written and read as
/// the byte-identical `raft.v1.EncodedEntry`).
const TYPE_ENTRY: u8 = 1;
/// The first payload byte of every entry record (recovery tells entry
/// records from state records by it without decoding them).
pub(crate) const ENTRY_TYPE: u8 = TYPE_ENTRY;
/// Record type byte of a vote (`raft.v1.Vote`).
const TYPE_VOTE: u8 = 2;
/// Record type byte of the committed log id (`raft.v1.LogId`).
const TYPE_COMMITTED: u8 = 3;
/// Record type byte of the last purged log id (`raft.v1.LogId`).
const TYPE_PURGED: u8 = 4;
/// Record type byte of the opening of a format-2 segment made from a new
/// (zero-filled or growing) file; no body.
pub(crate) const TYPE_OPENING_FRESH: u8 = 5;
/// Record type byte of the opening of a format-2 segment made from a
/// recycled file (an older segment's records may follow its own); no body.
pub(crate) const TYPE_OPENING_RECYCLED: u8 = 6;

/// The largest log index a record may hold: the log computes the index
/// after its last entry (`index + 1`), so an entry at `u64::MAX`, which
/// no log ever reaches, can only be damage.
pub(crate) const LOG_INDEX_MAX: u64 = u64::MAX - 1;

/// Refuses a log id past [`LOG_INDEX_MAX`].
fn within_index_max(log_id: LogId) -> Result<LogId, String> {
    if log_id.index > LOG_INDEX_MAX {
        return Err(format!(
            "log index {} exceeds the largest index {LOG_INDEX_MAX}",
            log_id.index
        ));
    }
    Ok(log_id)
}

/// One record of the log's stream.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    /// A log entry.
    Entry(Entry),
    /// The vote, as of this point of the stream.
    Vote(Vote),
    /// The committed log id, as of this point of the stream.
    Committed(LogId),
    /// Entries up to and including this log id are purged.
    Purged(LogId),
    /// The first record of a format-2 segment: whether its file was
    /// recycled, which decides how recovery reads what follows its records.
    Opening {
        /// Whether the file held an older segment before.
        recycled: bool,
    },
}

impl Record {
    /// The record's payload: its type byte, then its protobuf body.
    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            Record::Entry(entry) => encode_entry(entry),
            Record::Vote(vote) => with_type(TYPE_VOTE, &codec::vote_to_pb(vote)),
            Record::Committed(log_id) => with_type(TYPE_COMMITTED, &codec::log_id_to_pb(log_id)),
            Record::Purged(log_id) => with_type(TYPE_PURGED, &codec::log_id_to_pb(log_id)),
            Record::Opening { recycled: false } => vec![TYPE_OPENING_FRESH],
            Record::Opening { recycled: true } => vec![TYPE_OPENING_RECYCLED],
        }
    }

    /// Decodes a payload whose checksum matched; any failure here is
    /// corruption (or a bug), never a torn write.
    pub(crate) fn decode(payload: &[u8]) -> Result<Record, String> {
        let (&kind, body) = payload.split_first().ok_or("empty record")?;
        let log_id = |body: &[u8]| -> Result<LogId, String> {
            let pb = pb::LogId::decode(body).map_err(|e| e.to_string())?;
            codec::log_id_from_pb(&pb)
                .map_err(|e| e.to_string())
                .and_then(within_index_max)
        };
        match kind {
            TYPE_ENTRY => {
                let pb = pb::EncodedEntry::decode(body).map_err(|e| e.to_string())?;
                let entry = codec::entry_from_pb(pb).map_err(|e| e.to_string())?;
                within_index_max(entry.log_id)?;
                Ok(Record::Entry(entry))
            }
            TYPE_VOTE => {
                let pb = pb::Vote::decode(body).map_err(|e| e.to_string())?;
                codec::vote_from_pb(Some(&pb))
                    .map(Record::Vote)
                    .map_err(|e| e.to_string())
            }
            TYPE_COMMITTED => log_id(body).map(Record::Committed),
            TYPE_PURGED => log_id(body).map(Record::Purged),
            TYPE_OPENING_FRESH | TYPE_OPENING_RECYCLED if !body.is_empty() => {
                Err(format!("an opening record with a body of {} bytes", body.len()))
            }
            TYPE_OPENING_FRESH => Ok(Record::Opening { recycled: false }),
            TYPE_OPENING_RECYCLED => Ok(Record::Opening { recycled: true }),
            other => Err(format!("unknown record type {other}")),
        }
    }
}

/// The payload of an entry record, without cloning the entry.
pub(crate) fn encode_entry(entry: &Entry) -> Vec<u8> {
    with_type(TYPE_ENTRY, &codec::entry_to_pb(entry))
}

/// A type byte followed by the encoded `body`.
fn with_type(kind: u8, body: &impl Message) -> Vec<u8> {
    let mut payload = Vec::with_capacity(1 + body.encoded_len());
    payload.push(kind);
    body.encode(&mut payload)
        .expect("a Vec grows to hold any message, so encoding cannot run out of room");
    payload
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::types::LogCommand;

    #[test]
    fn records_round_trip_and_unknown_types_are_rejected() {
        // Every record type must decode to what was written; garbage must not.
        let log_id = LogId::new(CommittedLeaderId::new(3, 1), 9);
        let records = [
            Record::Entry(Entry {
                log_id,
                payload: EntryPayload::Blank,
            }),
            Record::Vote(Vote::new_committed(3, 1)),
            Record::Committed(log_id),
            Record::Purged(log_id),
            Record::Opening { recycled: false },
            Record::Opening { recycled: true },
        ];
        for record in records {
            assert_eq!(Record::decode(&record.encode()), Ok(record));
        }
        assert!(Record::decode(&[]).is_err());
        assert!(Record::decode(&[9, 1, 2]).is_err());
    }

    #[test]
    fn a_record_at_an_index_no_log_reaches_is_refused() {
        // Found by the decoder tests: an entry at u64::MAX overflowed the reader's `index + 1` after recovery.
        let at = |index| LogId::new(CommittedLeaderId::new(1, 1), index);
        let entry = |index| {
            Record::Entry(Entry {
                log_id: at(index),
                payload: EntryPayload::Blank,
            })
        };
        for record in [
            entry(u64::MAX),
            Record::Committed(at(u64::MAX)),
            Record::Purged(at(u64::MAX)),
        ] {
            let err = Record::decode(&record.encode()).expect_err("index u64::MAX");
            assert!(err.contains("largest index"), "{err}");
        }
        assert_eq!(Record::decode(&entry(LOG_INDEX_MAX).encode()), Ok(entry(LOG_INDEX_MAX)));
    }

    #[test]
    fn an_entry_record_holds_the_bytes_followers_are_sent() {
        // One encoding per command: the log file and AppendEntries carry
        // the same bytes, and the record reads back as the same entry.
        let command = pb::Command {
            op: Some(pb::command::Op::Put(pb::Put {
                key: "key".into(),
                value: "value".into(),
            })),
            client_id: 3,
            sequence: 1,
            first_unanswered: 1,
            proposed_at_ms: 1_700_000_000_000,
        };
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(5, 2), 77),
            payload: EntryPayload::Normal(LogCommand::encode(&command)),
        };
        let record = encode_entry(&entry);
        assert_eq!(record[0], ENTRY_TYPE);
        assert_eq!(record[1..], codec::entry_to_pb(&entry).encode_to_vec()[..]);
        assert_eq!(Record::decode(&record), Ok(Record::Entry(entry)));
    }
}
