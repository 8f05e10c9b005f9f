//! The Raft type configuration and the aliases built on it.

use std::fmt;

pub use proto::raft::{Command, CommandResult};

pub use crate::command::LogCommand;

/// A node's id in the cluster (never 0).
pub type NodeId = u64;

/// What the cluster knows of a member: where clients and peers reach it.
///
/// A node started with `--peer-listen` serves Raft and the membership calls
/// on a separate peer port; `peer_addr` names it. `None` means the member
/// serves everything at `addr` (and every membership written before peer
/// ports existed decodes so).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// The client address (`host:port`): KV and read-only Cluster calls.
    /// Leader hints given to clients name this address.
    pub addr: String,
    /// The peer address (`host:port`) when it differs from `addr`.
    pub peer_addr: Option<String>,
}

impl Node {
    /// A member that serves everything at `addr`.
    pub fn new(addr: impl Into<String>) -> Node {
        Node {
            addr: addr.into(),
            peer_addr: None,
        }
    }

    /// A member with client address `addr` and peer address `peer_addr`
    /// (`None`: the same as `addr`).
    pub fn with_peer_addr(addr: impl Into<String>, peer_addr: Option<String>) -> Node {
        Node {
            addr: addr.into(),
            peer_addr,
        }
    }

    /// Where peers and admin tools reach this member: its peer address, or
    /// its client address when it has no separate one.
    pub fn peer_addr(&self) -> &str {
        self.peer_addr.as_deref().unwrap_or(&self.addr)
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.peer_addr {
            Some(peer) => write!(f, "{} (peer {peer})", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

openraft::declare_raft_types!(
    /// Types of this cluster's Raft: a command is a `raft.v1.Command` held
    /// encoded ([`LogCommand`]), a result its prost message, a snapshot a
    /// file.
    pub TypeConfig:
        D = LogCommand,
        R = CommandResult,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::state_machine::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id (leader id and index).
pub type LogId = openraft::LogId<NodeId>;
/// A vote.
pub type Vote = openraft::Vote<NodeId>;
/// A membership configuration.
pub type Membership = openraft::Membership<NodeId, Node>;
/// A membership with the log id that set it.
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
/// A snapshot's metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
/// A storage failure as openraft sees it.
pub type StorageError = openraft::StorageError<NodeId>;
/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
