//! The write proposer's metrics: writes in flight, batch sizes and the time
//! from a write's arrival at the proposer to its answer.

use std::time::Instant;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Batch size buckets: 1, 2, 4, ... 1024 commands (the default
/// `batch_commands_max`), then +Inf.
const BATCH_COMMANDS_BUCKETS: u16 = 11;
/// The smallest proposal latency bucket's upper bound, in seconds (100 µs).
const PROPOSAL_LATENCY_BUCKET_SECONDS_MIN: f64 = 0.000_1;
/// Proposal latency buckets, each twice the one before: up to ~3.3 s.
const PROPOSAL_LATENCY_BUCKETS: u16 = 16;

/// The proposer's metrics. Clones share them.
#[derive(Debug, Clone)]
pub struct ProposalMetrics {
    in_flight: Gauge,
    batch_commands: Histogram,
    latency: Histogram,
}

impl ProposalMetrics {
    /// Registers `kv_raft_proposals_in_flight`,
    /// `kv_raft_proposal_batch_commands` and
    /// `kv_raft_proposal_duration_seconds`.
    pub(crate) fn register(registry: &mut Registry) -> ProposalMetrics {
        let metrics = ProposalMetrics {
            in_flight: Gauge::default(),
            batch_commands: Histogram::new(exponential_buckets(1.0, 2.0, BATCH_COMMANDS_BUCKETS)),
            latency: Histogram::new(exponential_buckets(
                PROPOSAL_LATENCY_BUCKET_SECONDS_MIN,
                2.0,
                PROPOSAL_LATENCY_BUCKETS,
            )),
        };
        registry.register(
            "kv_raft_proposals_in_flight",
            "Writes queued at the proposer or proposed to Raft and not yet answered",
            metrics.in_flight.clone(),
        );
        registry.register(
            "kv_raft_proposal_batch_commands",
            "Writes per proposed Raft entry",
            metrics.batch_commands.clone(),
        );
        registry.register(
            "kv_raft_proposal_duration_seconds",
            "Time from a write's arrival at the proposer to its answer (applied, refused or failed)",
            metrics.latency.clone(),
        );
        metrics
    }

    /// Counts one write in flight until the returned guard is dropped.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight {
            gauge: self.in_flight.clone(),
        }
    }

    /// Records a proposed entry of `commands` writes.
    pub fn observe_batch(&self, commands: usize) {
        self.batch_commands.observe(commands as f64);
    }

    /// Records a write answered after arriving at `arrived`.
    pub fn observe_answer(&self, arrived: Instant) {
        self.latency.observe(arrived.elapsed().as_secs_f64());
    }
}

/// One write counted in `kv_raft_proposals_in_flight` while it lives.
#[derive(Debug)]
pub struct InFlight {
    gauge: Gauge,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_counts_in_flight_exactly_while_its_guard_lives() {
        // A leaked count would show a stuck proposer that is not stuck.
        let metrics = ProposalMetrics::register(&mut Registry::default());
        let first = metrics.in_flight();
        let second = metrics.in_flight();
        assert_eq!(metrics.in_flight.get(), 2);
        drop(first);
        assert_eq!(metrics.in_flight.get(), 1);
        drop(second);
        assert_eq!(metrics.in_flight.get(), 0);
    }
}
