//! The gRPC services a node serves.
//!
//! - `kv`: the public `kv.v1.KV` API.
//! - `admin`: `kv.v1.Cluster`, status and membership.
//! - `raft`: `raft.v1.Raft`, peers' Raft RPCs.
//! - `proposer`: concurrent writes batched into one Raft entry.
//! - `read_barrier`: linearizable reads sharing leadership checks.
//! - `status`: every error mapped to a gRPC status, in one place.

pub mod admin;
pub mod kv;
pub mod proposer;
pub mod raft;
pub mod read_barrier;
pub mod status;
