//! Chaos tests of the replicated key/value database ("our Jepsen"): real
//! `kv-node` processes, faults injected from outside, a recorded history,
//! and checkers that judge it.
//!
//! # Layout
//!
//! - [`harness`]: starts N `kv-node` processes on 127.0.0.1, kills
//!   (SIGKILL), freezes (SIGSTOP/SIGCONT), restarts, wipes and re-adds them;
//!   reaps every child on drop.
//! - [`proxy`]: a TCP proxy in front of each node's peer address that drops
//!   or delays the bytes of chosen directed node-to-node links.
//! - [`history`]: operations with invoke/return times and outcomes (ok,
//!   fail = certainly not applied, unknown), as JSON lines.
//! - [`workload`]: concurrent clients doing Put, Get, Delete, BatchPut and
//!   Range over a few keys, with unique values.
//! - [`check`]: one invariant per module: linearizability, batch atomicity,
//!   range snapshots, durability, convergence, availability.
//! - [`tmpfs`]: a tmpfs as a node's data directory, a disk that fills.
//! - [`scenario`]: a run: seed and sizes from the environment, the final
//!   heal, the checks, the failure report.
//!
//! The scenarios are in `tests/`; see `README.md` for how to run them.

#![deny(clippy::unwrap_used)]
#![deny(missing_docs)]

pub mod check;
pub mod harness;
pub mod history;
pub mod proxy;
pub mod scenario;
pub mod tmpfs;
pub mod workload;
