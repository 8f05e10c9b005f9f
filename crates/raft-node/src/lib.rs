//! A replicated key/value node: openraft with the storage engine as its
//! state machine, served over gRPC.
//!
//! # Layout
//!
//! - `types`: the Raft type configuration.
//! - `command`: a command as its log entry holds it: encoded once, shared.
//! - `cluster_id`: the cluster id every Raft call carries and the receiver checks.
//! - `codec`: openraft values to and from their `raft.v1` protobufs.
//! - `log_store`: the Raft log (segment files, group commit).
//! - `state_machine`: commands applied to the engine; snapshots.
//! - `network`: the Raft transport to peers (gRPC client).
//! - `reachability`: which peers the leader reaches, logged once per change.
//! - `service`: the gRPC services (KV, Cluster, Raft) and error mapping.
//! - `handoff`: graceful shutdown: leadership handed to the best follower.
//! - `snapshot_trigger`: snapshots by the log's bytes, besides its entry count.
//! - `metrics`: Prometheus metrics on a separate HTTP listener.
//! - `tls`: the TLS settings of both ports and of the Raft calls.
//! - `config`: node configuration and request limits.
//! - `node`: everything wired together.
//! - `testing` (feature `testing`): an in-process cluster for tests.
//! - `fuzzing` (feature `fuzzing`): the decoders' entry points for fuzz
//!   targets and corpus tests.

pub mod cluster_id;
pub mod codec;
pub mod command;
pub mod config;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod handoff;
pub mod log_store;
mod metrics;
pub mod network;
pub mod node;
pub mod reachability;
mod restore;
pub mod service;
mod snapshot_trigger;
pub mod state_machine;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod types;

pub use config::{Limits, NodeConfig, RaftTiming};
pub use node::{KvNode, NodeError, ServeOptions};
