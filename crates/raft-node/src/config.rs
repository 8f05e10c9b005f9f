//! A node's configuration, with every limit named.

pub mod file;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use storage::io::FileSystem;

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
    /// A Range page stops before its encoded pairs pass this many bytes
    /// (protobuf framing included). Default 4 MiB - 64 KiB, so a whole
    /// response, `next_start` included, stays under the 4 MiB that gRPC
    /// clients accept by default.
    pub response_bytes_max: usize,
    /// A Range page stops (with `next_start`) after stepping over this many
    /// engine entries, tombstones and old versions included. Default
    /// 100 000: about 10 ms of scanning, so a range over mass deletions
    /// does bounded work per request.
    pub range_scan_steps_max: u64,
    /// Writes queued or proposed but not yet answered, at most; more are
    /// refused with `RESOURCE_EXHAUSTED`. Default 4096. Bounds the leader's
    /// memory and the queueing delay a write can see.
    pub proposals_in_flight_max: usize,
    /// Encoded bytes of the writes queued or proposed but not yet answered,
    /// at most; more are refused with `RESOURCE_EXHAUSTED`. Default 64 MiB.
    pub proposal_bytes_in_flight_max: usize,
    /// Get and Range requests reading the engine at once, at most; more
    /// are refused with `RESOURCE_EXHAUSTED`. Default 1024.
    pub reads_in_flight_max: usize,
}

/// gRPC clients' default receive limit, in bytes.
pub const GRPC_MESSAGE_BYTES_DEFAULT: usize = 4 << 20;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            key_bytes_max: 4096,
            value_bytes_max: 1 << 20,
            batch_pairs_max: 10_000,
            batch_bytes_max: 16 << 20,
            range_limit_max: 10_000,
            range_limit_default: 1000,
            response_bytes_max: GRPC_MESSAGE_BYTES_DEFAULT - (64 << 10),
            range_scan_steps_max: 100_000,
            proposals_in_flight_max: 4096,
            proposal_bytes_in_flight_max: 64 << 20,
            reads_in_flight_max: 1024,
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
    /// Applied entries between snapshots. Default 50 000. With
    /// `snapshot_log_bytes_max`, bounds the log kept on disk.
    pub snapshot_logs_since_last: u64,
    /// Entries kept behind a snapshot before they are purged. Default 1000,
    /// so a briefly lagging follower catches up from the log, not a snapshot.
    pub logs_kept_after_snapshot: u64,
    /// Bytes of applied log (encoded entry records) since the last
    /// snapshot after which a snapshot is taken, whatever the entry count.
    /// Default 256 MiB. Bounds the log on disk and the replay after a
    /// crash even when the write batcher packs many writes into each
    /// entry; a smaller value snapshots (copying the database) more often.
    pub snapshot_log_bytes_max: u64,
    /// Bytes of recent log entries held in memory; older ones are read
    /// from the log's files when a lagging follower or a restart needs
    /// them. Default 32 MiB. A larger window lets followers lag further
    /// before catching up costs disk reads, for that much memory.
    pub log_memory_window_bytes_max: u64,
    /// Bytes per Raft log segment file. Default 64 MiB
    /// ([`crate::log_store::SEGMENT_BYTES_MAX`]). The log is purged whole
    /// segments at a time, and the next segment is preallocated ahead (a
    /// purged segment recycled, or else a file written with zeros; up to
    /// [`crate::log_store::RECYCLED_SEGMENTS_MAX`] purged segments are kept
    /// for recycling): smaller segments free disk sooner after a snapshot,
    /// for more files and more frequent rolls.
    pub log_segment_bytes_max: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat_ms: 100,
            election_timeout_ms_min: 200,
            election_timeout_ms_max: 400,
            snapshot_logs_since_last: 50_000,
            logs_kept_after_snapshot: 1000,
            snapshot_log_bytes_max: 256 << 20,
            log_memory_window_bytes_max: crate::log_store::MEMORY_WINDOW_BYTES_MAX,
            log_segment_bytes_max: crate::log_store::SEGMENT_BYTES_MAX,
        }
    }
}

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id (not 0).
    pub id: NodeId,
    /// The `host:port` clients (and, without `peer_advertise_addr`, peers)
    /// reach this node at.
    pub advertise_addr: String,
    /// The `host:port` peers and admin tools reach this node's peer port at,
    /// when it serves Raft and membership calls on a separate peer listener
    /// (see `KvNode::serve_with_peer_listener`). Default `None`: one port.
    pub peer_advertise_addr: Option<String>,
    /// Where the node keeps its Raft log and state machine.
    pub data_dir: PathBuf,
    /// With `initialize`: the initial voters and their (client) addresses.
    pub initial_members: BTreeMap<NodeId, String>,
    /// With `initialize`: the peer addresses of the initial voters that
    /// have a separate peer port. Default empty: a voter absent here is
    /// reached by its peers at its address in `initial_members`.
    pub initial_peer_addrs: BTreeMap<NodeId, String>,
    /// Whether this node forms a new cluster of `initial_members` when it
    /// holds no Raft state yet. Give it to one node, on first start only.
    pub initialize: bool,
    /// With `initialize`: a backup (`Cluster.Backup`, `kvctl snapshot
    /// save`) to seed the new cluster's state from, instead of starting
    /// empty. Like `initialize`, used only while the node has no Raft state.
    pub restore_from: Option<PathBuf>,
    /// Raft timing.
    pub timing: RaftTiming,
    /// Storage engine options. Their `fs` is ignored: the engine runs on
    /// the node's disk, [`NodeConfig::fs`].
    pub engine: storage::Options,
    /// API request limits.
    pub limits: Limits,
    /// TLS for the client port, and mutual TLS between peers when it has
    /// a CA (see `crate::tls`). Needs `peer_advertise_addr` (a separate
    /// peer port). Default `None`: plaintext everywhere.
    pub tls: Option<crate::tls::TlsConfig>,
    /// The disk every file the node writes is on: the engine, the Raft
    /// log, snapshots, the identity and lock files. Default (in `kv-node`)
    /// [`storage::io::RealFs`]; tests pass a simulated disk that a power
    /// cut can take away (`storage::sim::SimFs`).
    pub fs: Arc<dyn FileSystem>,
}

impl NodeConfig {
    /// The engine's options, on the node's disk [`NodeConfig::fs`].
    pub fn engine_options(&self) -> storage::Options {
        storage::Options {
            fs: Arc::clone(&self.fs),
            ..self.engine.clone()
        }
    }
}

/// The separator of a peer spec's client and peer address:
/// `id=client_host:port/peer_host:port`.
pub const PEER_ADDR_SEPARATOR: char = '/';

/// A malformed `--peers` entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerSpecError {
    /// The entry has no `=` between id and address.
    #[error("peer {spec:?} is not id=host:port or id=host:port/peer_host:port")]
    Shape {
        /// The entry.
        spec: String,
    },
    /// The id is not a positive integer.
    #[error("peer id {id:?} is not a positive integer")]
    Id {
        /// The id as written.
        id: String,
    },
    /// An address is not `ip:port`.
    #[error("peer address {addr:?} is not ip:port")]
    Addr {
        /// The address as written.
        addr: String,
    },
}

/// Parses one `--peers` entry: `id=host:port` (one port for clients and
/// peers) or `id=host:port/peer_host:port` (a separate peer port).
pub fn parse_peer_spec(spec: &str) -> Result<(NodeId, crate::types::Node), PeerSpecError> {
    let (id, addrs) = spec
        .split_once('=')
        .ok_or_else(|| PeerSpecError::Shape { spec: spec.into() })?;
    let id_number: NodeId = id.parse().map_err(|_| PeerSpecError::Id { id: id.into() })?;
    if id_number == 0 {
        return Err(PeerSpecError::Id { id: id.into() });
    }
    let (addr, peer_addr) = match addrs.split_once(PEER_ADDR_SEPARATOR) {
        Some((addr, peer_addr)) => (addr, Some(peer_addr)),
        None => (addrs, None),
    };
    for a in std::iter::once(addr).chain(peer_addr) {
        if a.parse::<std::net::SocketAddr>().is_err() {
            return Err(PeerSpecError::Addr { addr: a.into() });
        }
    }
    Ok((
        id_number,
        crate::types::Node::with_peer_addr(addr, peer_addr.map(str::to_string)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Node;

    #[test]
    fn a_peer_spec_names_a_client_and_optionally_a_peer_address() {
        // `--peers` must say where each voter serves Raft, and old specs
        // (one address) keep meaning one port.
        assert_eq!(
            parse_peer_spec("1=127.0.0.1:7001"),
            Ok((1, Node::new("127.0.0.1:7001")))
        );
        assert_eq!(
            parse_peer_spec("2=127.0.0.1:7002/127.0.0.1:7052"),
            Ok((2, Node::with_peer_addr("127.0.0.1:7002", Some("127.0.0.1:7052".into()))))
        );
        for bad in [
            "127.0.0.1:7001",
            "0=127.0.0.1:7001",
            "x=127.0.0.1:7001",
            "1=nowhere",
            "1=127.0.0.1:7001/",
            "1=127.0.0.1:7001/nowhere",
        ] {
            assert!(parse_peer_spec(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
