//! Conversions between openraft's types and their `raft.v1` prost messages,
//! used both on the wire and on disk.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{CommittedLeaderId, EntryPayload};
use proto::raft as pb;

use crate::command::LogCommand;
use crate::types::{Entry, LogId, Membership, Node, NodeId, SnapshotMeta, StoredMembership, Vote};

/// A message that does not decode into a valid openraft value.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what}: {reason}")]
pub struct CodecError {
    /// The message type.
    pub what: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn missing(what: &'static str) -> CodecError {
    CodecError {
        what,
        reason: "a required field is missing",
    }
}

/// Encodes a log id.
pub fn log_id_to_pb(log_id: &LogId) -> pb::LogId {
    pb::LogId {
        leader_id: Some(pb::LeaderId {
            term: log_id.leader_id.term,
            node_id: log_id.leader_id.node_id,
        }),
        index: log_id.index,
    }
}

/// Encodes an optional log id.
pub fn opt_log_id_to_pb(log_id: Option<&LogId>) -> Option<pb::LogId> {
    log_id.map(log_id_to_pb)
}

/// Decodes a log id.
pub fn log_id_from_pb(log_id: &pb::LogId) -> Result<LogId, CodecError> {
    let leader = log_id.leader_id.as_ref().ok_or_else(|| missing("LogId"))?;
    Ok(LogId::new(
        CommittedLeaderId::new(leader.term, leader.node_id),
        log_id.index,
    ))
}

/// Decodes an optional log id.
pub fn opt_log_id_from_pb(log_id: Option<&pb::LogId>) -> Result<Option<LogId>, CodecError> {
    log_id.map(log_id_from_pb).transpose()
}

/// Encodes a vote.
pub fn vote_to_pb(vote: &Vote) -> pb::Vote {
    pb::Vote {
        leader_id: Some(pb::LeaderId {
            term: vote.leader_id.term,
            node_id: vote.leader_id.node_id,
        }),
        committed: vote.committed,
    }
}

/// Decodes a vote.
pub fn vote_from_pb(vote: Option<&pb::Vote>) -> Result<Vote, CodecError> {
    let vote = vote.ok_or_else(|| missing("Vote"))?;
    let leader = vote.leader_id.as_ref().ok_or_else(|| missing("Vote"))?;
    Ok(if vote.committed {
        Vote::new_committed(leader.term, leader.node_id)
    } else {
        Vote::new(leader.term, leader.node_id)
    })
}

/// Encodes a membership configuration.
pub fn membership_to_pb(membership: &Membership) -> pb::Membership {
    pb::Membership {
        configs: membership
            .get_joint_config()
            .iter()
            .map(|ids| pb::NodeIds {
                ids: ids.iter().copied().collect(),
            })
            .collect(),
        nodes: membership.nodes().map(|(id, node)| (*id, node.addr.clone())).collect(),
        peer_addrs: membership
            .nodes()
            .filter_map(|(id, node)| Some((*id, node.peer_addr.clone()?)))
            .collect(),
    }
}

/// Decodes a membership configuration.
pub fn membership_from_pb(membership: &pb::Membership) -> Result<Membership, CodecError> {
    if membership.configs.is_empty() && membership.nodes.is_empty() {
        // The membership of a node that has never been initialized.
        return Ok(Membership::default());
    }
    if membership.configs.is_empty() {
        return Err(CodecError {
            what: "Membership",
            reason: "no voter set",
        });
    }
    let configs: Vec<BTreeSet<NodeId>> = membership
        .configs
        .iter()
        .map(|set| set.ids.iter().copied().collect())
        .collect();
    let nodes: BTreeMap<NodeId, Node> = membership
        .nodes
        .iter()
        .map(|(id, addr)| (*id, Node::with_peer_addr(addr, membership.peer_addrs.get(id).cloned())))
        .collect();
    if membership.peer_addrs.keys().any(|id| !nodes.contains_key(id)) {
        return Err(CodecError {
            what: "Membership",
            reason: "a peer address names no member",
        });
    }
    let voters_known = configs.iter().flatten().all(|id| nodes.contains_key(id));
    if !voters_known {
        return Err(CodecError {
            what: "Membership",
            reason: "a voter has no node entry",
        });
    }
    Ok(Membership::new(configs, nodes))
}

/// Encodes a stored membership.
pub fn stored_membership_to_pb(stored: &StoredMembership) -> pb::StoredMembership {
    pb::StoredMembership {
        log_id: opt_log_id_to_pb(stored.log_id().as_ref()),
        membership: Some(membership_to_pb(stored.membership())),
    }
}

/// Decodes a stored membership; an absent one is the empty default.
pub fn stored_membership_from_pb(stored: Option<&pb::StoredMembership>) -> Result<StoredMembership, CodecError> {
    let Some(stored) = stored else {
        return Ok(StoredMembership::default());
    };
    let log_id = opt_log_id_from_pb(stored.log_id.as_ref())?;
    let membership = match &stored.membership {
        Some(m) => membership_from_pb(m)?,
        None => Membership::default(),
    };
    Ok(StoredMembership::new(log_id, membership))
}

/// Encodes a log entry, for the log file and for AppendEntries alike. A
/// normal entry's command is not encoded again: the message shares its
/// bytes.
pub fn entry_to_pb(entry: &Entry) -> pb::EncodedEntry {
    let payload = match &entry.payload {
        EntryPayload::Blank => pb::encoded_entry::Payload::Blank(pb::Blank {}),
        EntryPayload::Normal(command) => pb::encoded_entry::Payload::Normal(command.encoded().clone()),
        EntryPayload::Membership(m) => pb::encoded_entry::Payload::Membership(membership_to_pb(m)),
    };
    pb::EncodedEntry {
        log_id: Some(log_id_to_pb(&entry.log_id)),
        payload: Some(payload),
    }
}

/// Decodes a log entry, checking that its command decodes. The command
/// keeps the message's bytes (a slice of them when the message was decoded
/// from `Bytes`).
pub fn entry_from_pb(entry: pb::EncodedEntry) -> Result<Entry, CodecError> {
    let log_id = log_id_from_pb(entry.log_id.as_ref().ok_or_else(|| missing("Entry"))?)?;
    let payload = match entry.payload.ok_or_else(|| missing("Entry"))? {
        pb::encoded_entry::Payload::Blank(_) => EntryPayload::Blank,
        pb::encoded_entry::Payload::Normal(command) => EntryPayload::Normal(LogCommand::from_encoded(command)?),
        pb::encoded_entry::Payload::Membership(m) => EntryPayload::Membership(membership_from_pb(&m)?),
    };
    Ok(Entry { log_id, payload })
}

/// Encodes snapshot metadata.
pub fn snapshot_meta_to_pb(meta: &SnapshotMeta) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        last_log_id: opt_log_id_to_pb(meta.last_log_id.as_ref()),
        last_membership: Some(stored_membership_to_pb(&meta.last_membership)),
        snapshot_id: meta.snapshot_id.clone(),
    }
}

/// Decodes snapshot metadata.
pub fn snapshot_meta_from_pb(meta: &pb::SnapshotMeta) -> Result<SnapshotMeta, CodecError> {
    Ok(SnapshotMeta {
        last_log_id: opt_log_id_from_pb(meta.last_log_id.as_ref())?,
        last_membership: stored_membership_from_pb(meta.last_membership.as_ref())?,
        snapshot_id: meta.snapshot_id.clone(),
    })
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// One entry of each kind, the normal one a batch of two writes.
    fn sample_entries() -> Vec<Entry> {
        let membership = Membership::new(
            vec![BTreeSet::from([1, 2, 3])],
            BTreeMap::from([
                (1, Node::new("127.0.0.1:1")),
                (2, Node::with_peer_addr("127.0.0.1:2", Some("127.0.0.1:52".into()))),
                (3, Node::new("127.0.0.1:3")),
                (4, Node::with_peer_addr("127.0.0.1:4", Some("127.0.0.1:54".into()))),
            ]),
        );
        let log_id = LogId::new(CommittedLeaderId::new(7, 2), 41);
        let put = |key: &'static str, value: &'static str, sequence| pb::Command {
            op: Some(pb::command::Op::Put(pb::Put {
                key: key.into(),
                value: value.into(),
            })),
            client_id: 9,
            sequence,
            first_unanswered: 2,
            proposed_at_ms: 0,
        };
        let batch = pb::Command {
            op: Some(pb::command::Op::Commands(pb::Commands {
                commands: vec![put("k", "v", 3), put("key two", "a longer value", 4)],
            })),
            proposed_at_ms: 1_700_000_000_000,
            ..Default::default()
        };
        vec![
            Entry {
                log_id,
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id,
                payload: EntryPayload::Membership(membership),
            },
            Entry {
                log_id,
                payload: EntryPayload::Normal(LogCommand::encode(&batch)),
            },
        ]
    }

    /// `entry` as the plain `raft.v1.Entry` older nodes and logs use.
    fn plain_entry(entry: &Entry) -> pb::Entry {
        let payload = match &entry.payload {
            EntryPayload::Blank => pb::entry::Payload::Blank(pb::Blank {}),
            EntryPayload::Normal(command) => pb::entry::Payload::Normal(command.decode().expect("decodes")),
            EntryPayload::Membership(m) => pb::entry::Payload::Membership(membership_to_pb(m)),
        };
        pb::Entry {
            log_id: Some(log_id_to_pb(&entry.log_id)),
            payload: Some(payload),
        }
    }

    #[test]
    fn entries_round_trip_through_protobuf() {
        // The log store and the wire both depend on lossless conversion.
        for entry in sample_entries() {
            let back = entry_from_pb(entry_to_pb(&entry)).expect("decodes");
            assert_eq!(back, entry);
        }
    }

    #[test]
    fn an_encoded_entry_is_byte_for_byte_a_plain_entry() {
        // Log files written before, and peers that decode `Entry`, must read
        // the encoded form unchanged, and the other way round.
        for entry in sample_entries() {
            let plain = plain_entry(&entry).encode_to_vec();
            let encoded = entry_to_pb(&entry).encode_to_vec();
            // A membership's maps encode in hash order, so only its other
            // entries can be compared byte by byte.
            if !matches!(entry.payload, EntryPayload::Membership(_)) {
                assert_eq!(encoded, plain);
            }
            let as_plain = pb::Entry::decode(encoded.as_slice()).expect("an EncodedEntry decodes as an Entry");
            assert_eq!(as_plain, plain_entry(&entry));
            let back = pb::EncodedEntry::decode(plain.as_slice()).expect("an Entry decodes as an EncodedEntry");
            assert_eq!(entry_from_pb(back).expect("valid"), entry);
        }
    }

    #[test]
    fn followers_get_the_leaders_command_bytes_and_decode_them_without_copying() {
        // Encode once: the message shares the entry's bytes; the follower's
        // entry is equal to the leader's and is a slice of what it received.
        let entries = sample_entries();
        let message = pb::AppendEntriesRequest {
            vote: Some(vote_to_pb(&Vote::new_committed(7, 2))),
            prev_log_id: None,
            entries: entries.iter().map(entry_to_pb).collect(),
            leader_commit: None,
        };
        let EntryPayload::Normal(command) = &entries[2].payload else {
            panic!("the third sample entry is a normal one");
        };
        let Some(pb::encoded_entry::Payload::Normal(sent)) = &message.entries[2].payload else {
            panic!("a normal entry travels as its command's bytes");
        };
        assert_eq!(sent.as_ptr(), command.encoded().as_ptr(), "shared, not copied");
        let received = bytes::Bytes::from(message.encode_to_vec());
        let decoded = pb::AppendEntriesRequest::decode(received.clone()).expect("decodes");
        let back: Vec<Entry> = decoded
            .entries
            .into_iter()
            .map(entry_from_pb)
            .collect::<Result<_, _>>()
            .expect("valid entries");
        assert_eq!(back, entries);
        let EntryPayload::Normal(follower_command) = &back[2].payload else {
            panic!("still a normal entry");
        };
        assert!(
            received.as_ptr_range().contains(&follower_command.encoded().as_ptr()),
            "the follower's command is a slice of the received message"
        );
    }

    #[test]
    fn votes_round_trip() {
        // A lost or altered vote would let a node vote twice in one term.
        for vote in [Vote::new(3, 1), Vote::new_committed(4, 2), Vote::default()] {
            assert_eq!(vote_from_pb(Some(&vote_to_pb(&vote))).expect("decodes"), vote);
        }
    }

    #[test]
    fn malformed_messages_are_errors() {
        // Bytes from disk or the network must never panic the node.
        assert!(entry_from_pb(pb::EncodedEntry::default()).is_err());
        let bad = pb::Membership {
            configs: vec![pb::NodeIds { ids: vec![5] }],
            nodes: Default::default(),
            peer_addrs: Default::default(),
        };
        assert!(membership_from_pb(&bad).is_err());
        let stray_peer = pb::Membership {
            configs: vec![pb::NodeIds { ids: vec![1] }],
            nodes: [(1, "127.0.0.1:1".to_string())].into(),
            peer_addrs: [(2, "127.0.0.1:52".to_string())].into(),
        };
        assert!(membership_from_pb(&stray_peer).is_err());
    }

    #[test]
    fn a_membership_without_peer_addresses_reaches_members_at_their_address() {
        // Logs and snapshots written before peer ports existed must decode
        // to members that serve Raft on their one port.
        let old = pb::Membership {
            configs: vec![pb::NodeIds { ids: vec![1, 2] }],
            nodes: [(1, "127.0.0.1:1".to_string()), (2, "127.0.0.1:2".to_string())].into(),
            peer_addrs: Default::default(),
        };
        let membership = membership_from_pb(&old).expect("decodes");
        let node = membership.get_node(&2).expect("member 2");
        assert_eq!(node.peer_addr, None);
        assert_eq!(node.peer_addr(), "127.0.0.1:2");
        assert!(membership_to_pb(&membership).peer_addrs.is_empty());
    }
}
