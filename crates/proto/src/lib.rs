//! The wire contract, generated once from the files in `proto/` and shared
//! by the node and the client.
//!
//! - [`kv`]: the public API (`kv.v1`): the `KV` and `Cluster` services.
//! - [`raft`]: node-to-node Raft messages (`raft.v1`), also the on-disk
//!   encoding of log entries and of the state machine's applied state.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// The public key/value API, package `kv.v1`.
pub mod kv {
    tonic::include_proto!("kv.v1");
}

/// Node-to-node Raft messages, package `raft.v1`.
pub mod raft {
    tonic::include_proto!("raft.v1");
}

/// The encoded `FileDescriptorSet` of both packages, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));
