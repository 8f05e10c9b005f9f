//! A node's configuration, with every limit named.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::types::NodeId;

/// Request limits of the public API. Violations are refused with
/// `INVALID_ARGUMENT` naming the limit.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest key, in bytes. Default 4096.
    pub key_bytes_max: usize,
    /// Largest value, in bytes. Default 1 MiB.
    pub value_bytes_max: usize,
    /// Most pairs in one BatchPut. Default 10 000.
    pub batch_pairs_max: usize,
    /// Most key and value bytes in one BatchPut. Default 16 MiB.
    pub batch_bytes_max: usize,
    /// Largest `limit` of a Range. Default 10 000.
    pub range_limit_max: u32,
    /// Page size of a Range that gives no limit. Default 1000.
    pub range_limit_default: u32,
    /// A Range page stops once it holds this many key and value bytes.
    /// Default 4 MiB.
    pub response_bytes_max: usize,
    /// Writes proposed but not yet applied, at most; more are refused with
    /// `RESOURCE_EXHAUSTED`. Default 4096. Bounds the leader's memory and
    /// the queueing delay a write can see.
    pub proposals_in_flight_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            key_bytes_max: 4096,
            value_bytes_max: 1 << 20,
            batch_pairs_max: 10_000,
            batch_bytes_max: 16 << 20,
            range_limit_max: 10_000,
            range_limit_default: 1000,
            response_bytes_max: 4 << 20,
            proposals_in_flight_max: 4096,
        }
    }
}

impl Limits {
    /// The largest request message the server accepts, in bytes: a full
    /// batch plus framing.
    pub fn request_bytes_max(&self) -> usize {
        self.batch_bytes_max + self.batch_pairs_max * 16 + 4096
    }
}

/// Raft timing and log retention.
#[derive(Debug, Clone)]
pub struct RaftTiming {
    /// Leader heartbeat period, in ms. Default 100. Also the deadline of
    /// each heartbeat; an append-entries call carrying entries gets more
    /// time by its size (see `network`).
    pub heartbeat_ms: u64,
    /// Lower bound of the election timeout, in ms. Default 200.
    ///
    /// openraft 0.9 draws each node's timeout once, in
    /// `[election_timeout_ms_min, election_timeout_ms_max)`, and a follower
    /// that saw a leader stands for election only after the leader's lease
    /// (`election_timeout_ms_max`) plus its own timeout without a heartbeat.
    /// So failover takes `max + [min, max)` plus one election round: with
    /// the defaults 600 to 800 ms.
    pub election_timeout_ms_min: u64,
    /// Upper bound of the election timeout (and the leader's lease), in ms.
    /// Default 400.
    pub election_timeout_ms_max: u64,
    /// Applied entries between snapshots. Default 50 000. Also bounds the
    /// log kept in memory and on disk.
    pub snapshot_logs_since_last: u64,
    /// Entries kept behind a snapshot before they are purged. Default 1000,
    /// so a briefly lagging follower catches up from the log, not a snapshot.
    pub logs_kept_after_snapshot: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat_ms: 100,
            election_timeout_ms_min: 200,
            election_timeout_ms_max: 400,
            snapshot_logs_since_last: 50_000,
            logs_kept_after_snapshot: 1000,
        }
    }
}

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id (not 0).
    pub id: NodeId,
    /// The `host:port` peers and clients reach this node at.
    pub advertise_addr: String,
    /// Where the node keeps its Raft log and state machine.
    pub data_dir: PathBuf,
    /// With `initialize`: the initial voters and their addresses.
    pub initial_members: BTreeMap<NodeId, String>,
    /// Whether this node forms a new cluster of `initial_members` when it
    /// holds no Raft state yet. Give it to one node, on first start only.
    pub initialize: bool,
    /// Raft timing.
    pub timing: RaftTiming,
    /// Storage engine options.
    pub engine: storage::Options,
    /// API request limits.
    pub limits: Limits,
}
