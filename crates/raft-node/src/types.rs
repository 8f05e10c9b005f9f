//! The Raft type configuration and the aliases built on it.

use openraft::BasicNode;

pub use proto::raft::{Command, CommandResult};

/// A node's id in the cluster (never 0).
pub type NodeId = u64;
/// What the cluster knows of a member: its gRPC address (`host:port`).
pub type Node = BasicNode;

openraft::declare_raft_types!(
    /// Types of this cluster's Raft: commands and results are the prost
    /// messages of `raft.v1`, a snapshot is a file.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
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
