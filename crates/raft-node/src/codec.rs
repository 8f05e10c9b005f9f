//! Conversions between openraft's types and their `raft.v1` prost messages,
//! used both on the wire and on disk.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{CommittedLeaderId, EntryPayload};
use proto::raft as pb;

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

/// Encodes a log entry.
pub fn entry_to_pb(entry: &Entry) -> pb::Entry {
    let payload = match &entry.payload {
        EntryPayload::Blank => pb::entry::Payload::Blank(pb::Blank {}),
        EntryPayload::Normal(command) => pb::entry::Payload::Normal(command.clone()),
        EntryPayload::Membership(m) => pb::entry::Payload::Membership(membership_to_pb(m)),
    };
    pb::Entry {
        log_id: Some(log_id_to_pb(&entry.log_id)),
        payload: Some(payload),
    }
}

/// Decodes a log entry.
pub fn entry_from_pb(entry: pb::Entry) -> Result<Entry, CodecError> {
    let log_id = log_id_from_pb(entry.log_id.as_ref().ok_or_else(|| missing("Entry"))?)?;
    let payload = match entry.payload.ok_or_else(|| missing("Entry"))? {
        pb::entry::Payload::Blank(_) => EntryPayload::Blank,
        pb::entry::Payload::Normal(command) => EntryPayload::Normal(command),
        pb::entry::Payload::Membership(m) => EntryPayload::Membership(membership_from_pb(&m)?),
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
    use super::*;

    #[test]
    fn entries_round_trip_through_protobuf() {
        // The log store and the wire both depend on lossless conversion.
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
        let entries = [
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
                payload: EntryPayload::Normal(pb::Command {
                    op: Some(pb::command::Op::Put(pb::Put {
                        key: "k".into(),
                        value: "v".into(),
                    })),
                    client_id: 9,
                    sequence: 3,
                    first_unanswered: 2,
                    proposed_at_ms: 1_700_000_000_000,
                }),
            },
        ];
        for entry in entries {
            let back = entry_from_pb(entry_to_pb(&entry)).expect("decodes");
            assert_eq!(back, entry);
        }
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
        assert!(entry_from_pb(pb::Entry::default()).is_err());
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
