//! Prometheus metrics, served as text (OpenMetrics exposition, which
//! Prometheus scrapes as is) at `/metrics` on a separate HTTP listener.
//!
//! - `rpc`: a request counter by method and status code and a latency
//!   histogram by method, wrapped around the KV service (one counter
//!   increment and one histogram observation per request).
//! - `sampled`: everything else (Raft, log store, engine, process), read
//!   at scrape time from the structures that already keep it, so the hot
//!   paths carry nothing extra.
//! - `proposals`: the write proposer's writes in flight, batch sizes and
//!   latency, kept by the proposer as it works.
//! - `http`: the HTTP/1 server for `/metrics`.

mod http;
mod proposals;
mod rpc;
mod sampled;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::log_store::LogReader;
use crate::state_machine::Engine;
use crate::types::Raft;

pub(crate) use http::serve;
pub(crate) use proposals::{InFlight, ProposalMetrics};
pub(crate) use rpc::{Metered, RpcMetrics};

/// How long a scrape waits for Raft to report its commit index at most;
/// past it the scrape reports the last value read.
const COMMIT_INDEX_WAIT_MS_MAX: u64 = 1000;

/// The metrics a node exports: the registry to encode at each scrape.
#[derive(Clone)]
pub(crate) struct NodeMetrics {
    registry: Arc<Registry>,
    rpc: RpcMetrics,
    proposals: ProposalMetrics,
    raft: Raft,
    /// Read from Raft's own state at each scrape: openraft's metrics do
    /// not carry it, and the collector cannot wait for Raft.
    commit_index: Gauge,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics").finish_non_exhaustive()
    }
}

impl NodeMetrics {
    /// Registers the KV request metrics and the scrape-time collector over
    /// `raft`, `engine` and `log`. Spawns the task that counts leader
    /// changes; it ends when Raft shuts down.
    pub(crate) fn new(raft: Raft, engine: Engine, log: LogReader) -> NodeMetrics {
        let mut registry = Registry::default();
        let rpc = RpcMetrics::register(&mut registry);
        let proposals = ProposalMetrics::register(&mut registry);
        let commit_index = Gauge::default();
        registry.register(
            "kv_raft_commit_index",
            "The last Raft log index this node knows to be committed",
            commit_index.clone(),
        );
        let leader_changes = sampled::spawn_leader_change_counter(raft.clone());
        registry.register_collector(Box::new(sampled::Sampled::new(
            raft.clone(),
            engine,
            log,
            leader_changes,
        )));
        NodeMetrics {
            registry: Arc::new(registry),
            rpc,
            proposals,
            raft,
            commit_index,
        }
    }

    /// Everything, in the OpenMetrics text format.
    pub(crate) async fn scrape(&self) -> Result<String, std::fmt::Error> {
        let committed = self
            .raft
            .with_raft_state(|state| state.committed.map_or(0, |id| id.index));
        let wait = Duration::from_millis(COMMIT_INDEX_WAIT_MS_MAX);
        if let Ok(Ok(index)) = tokio::time::timeout(wait, committed).await {
            self.commit_index.set(i64::try_from(index).unwrap_or(i64::MAX));
        }
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, &self.registry)?;
        Ok(body)
    }

    /// The KV request metrics, for [`Metered`].
    pub(crate) fn rpc(&self) -> RpcMetrics {
        self.rpc.clone()
    }

    /// The write proposer's metrics.
    pub(crate) fn proposals(&self) -> ProposalMetrics {
        self.proposals.clone()
    }
}
