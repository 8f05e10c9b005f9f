//! A replicated key/value node: openraft with the storage engine as its
//! state machine, served over gRPC.
//!
//! # Layout
//!
//! - `types`: the Raft type configuration.
//! - `codec`: openraft values to and from their `raft.v1` protobufs.

pub mod codec;
pub mod types;
