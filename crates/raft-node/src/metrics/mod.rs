//! Prometheus metrics, served as text (OpenMetrics exposition, which
//! Prometheus scrapes as is) at `/metrics` on a separate HTTP listener.
//!
//! - `rpc`: a request counter by method and status code and a latency
//!   histogram by method, wrapped around the KV service (one counter
//!   increment and one histogram observation per request).
//! - `sampled`: everything else (Raft, log store, engine, process), read
//!   at scrape time from the structures that already keep it, so the hot
//!   paths carry nothing extra.
//! - `http`: the HTTP/1 server for `/metrics`.

mod http;
mod rpc;
mod sampled;

use std::sync::Arc;

use prometheus_client::registry::Registry;

use crate::log_store::LogReader;
use crate::state_machine::Engine;
use crate::types::Raft;

pub(crate) use http::serve;
pub(crate) use rpc::{Metered, RpcMetrics};

/// The metrics a node exports: the registry to encode at each scrape.
#[derive(Debug, Clone)]
pub(crate) struct NodeMetrics {
    registry: Arc<Registry>,
    rpc: RpcMetrics,
}

impl NodeMetrics {
    /// Registers the KV request metrics and the scrape-time collector over
    /// `raft`, `engine` and `log`. Spawns the task that counts leader
    /// changes; it ends when Raft shuts down.
    pub(crate) fn new(raft: Raft, engine: Engine, log: LogReader) -> NodeMetrics {
        let mut registry = Registry::default();
        let rpc = RpcMetrics::register(&mut registry);
        let leader_changes = sampled::spawn_leader_change_counter(raft.clone());
        registry.register_collector(Box::new(sampled::Sampled::new(raft, engine, log, leader_changes)));
        NodeMetrics {
            registry: Arc::new(registry),
            rpc,
        }
    }

    /// The KV request metrics, for [`Metered`].
    pub(crate) fn rpc(&self) -> RpcMetrics {
        self.rpc.clone()
    }

    /// The registry, for [`serve`].
    pub(crate) fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }
}
