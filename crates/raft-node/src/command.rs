//! The application data of a Raft entry: a client command held as its
//! protobuf encoding (`raft.v1.Command`).
//!
//! A command is encoded once, where it enters a node's log: by the
//! leader's proposer, or, on a follower, kept as the bytes its
//! AppendEntries carried. The same bytes then go into the log file and to
//! every follower, and each of openraft's clones of the entry shares them
//! (a reference count, not a copy). The state machine decodes a command
//! when it applies it; decoding from the shared bytes slices keys and
//! values out of them without copying.

use std::fmt;

use bytes::Bytes;
use prost::Message;
use proto::raft as pb;

use crate::codec::CodecError;

/// A command in its encoded form, known to decode.
#[derive(Clone, PartialEq, Eq)]
pub struct LogCommand {
    encoded: Bytes,
}

impl LogCommand {
    /// Encodes `command`.
    pub fn encode(command: &pb::Command) -> LogCommand {
        LogCommand {
            encoded: Bytes::from(command.encode_to_vec()),
        }
    }

    /// Takes the encoding of a command received from a peer or read back
    /// from disk, refusing bytes that do not decode.
    pub fn from_encoded(encoded: Bytes) -> Result<LogCommand, CodecError> {
        decode(&encoded)?;
        Ok(LogCommand { encoded })
    }

    /// The encoded command: the bytes the log file and the followers get.
    pub fn encoded(&self) -> &Bytes {
        &self.encoded
    }

    /// The command. Keys and values share this command's bytes.
    pub fn decode(&self) -> Result<pb::Command, CodecError> {
        decode(&self.encoded)
    }
}

fn decode(encoded: &Bytes) -> Result<pb::Command, CodecError> {
    // Decoding from `Bytes` makes every `bytes` field a slice of it.
    pb::Command::decode(encoded.clone()).map_err(|_| CodecError {
        what: "Command",
        reason: "the bytes do not decode",
    })
}

impl From<pb::Command> for LogCommand {
    fn from(command: pb::Command) -> LogCommand {
        LogCommand::encode(&command)
    }
}

impl From<&pb::Command> for LogCommand {
    fn from(command: &pb::Command) -> LogCommand {
        LogCommand::encode(command)
    }
}

impl fmt::Debug for LogCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.decode() {
            Ok(command) => command.fmt(f),
            Err(_) => write!(f, "LogCommand(undecodable, {} bytes)", self.encoded.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &'static str, value: &'static str) -> pb::Command {
        pb::Command {
            op: Some(pb::command::Op::Put(pb::Put {
                key: key.into(),
                value: value.into(),
            })),
            client_id: 4,
            sequence: 9,
            first_unanswered: 8,
            proposed_at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn a_command_decodes_to_what_was_encoded_with_values_sharing_its_bytes() {
        // Applying must see the proposed command, without copying its value.
        let command = put("key", "a value of some length");
        let stored = LogCommand::encode(&command);
        let decoded = stored.decode().expect("decodes");
        assert_eq!(decoded, command);
        let Some(pb::command::Op::Put(decoded_put)) = decoded.op else {
            panic!("a put decodes as a put");
        };
        let range = stored.encoded().as_ptr_range();
        assert!(
            range.contains(&decoded_put.value.as_ptr()),
            "the decoded value is a slice of the encoded command"
        );
    }

    #[test]
    fn bytes_that_do_not_decode_are_refused() {
        // A peer or a damaged file must not plant an entry that cannot be applied.
        assert!(LogCommand::from_encoded(Bytes::from_static(&[0x0a, 0x05, 0x01])).is_err());
        let good = LogCommand::encode(&put("k", "v"));
        let back = LogCommand::from_encoded(good.encoded().clone()).expect("valid bytes");
        assert_eq!(back, good);
    }
}
