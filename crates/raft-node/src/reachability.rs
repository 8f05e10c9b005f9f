//! Whether the leader can reach each peer, for its log: one line when a
//! peer becomes unreachable, one when it is reachable again, and a summary
//! every [`UNREACHABLE_SUMMARY_S`] while it stays unreachable, instead of a
//! line per failed call (tens per second while a peer is down).
//!
//! [`Reachability::record`] is a pure decision (no clock, no I/O); the
//! transport feeds it every call's outcome and logs what it returns.

use std::time::{Duration, Instant};

use crate::types::NodeId;

/// Seconds between summaries while a peer stays unreachable.
pub const UNREACHABLE_SUMMARY_S: u64 = 30;

/// One peer's state as seen from the calls made to it.
#[derive(Debug, Default)]
pub struct Reachability {
    down: Option<Down>,
}

#[derive(Debug)]
struct Down {
    since: Instant,
    last_report: Instant,
    failed_calls: u64,
}

/// What to log about a peer after a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The first failed call after a success.
    Unreachable {
        /// Why the call failed.
        reason: String,
    },
    /// Still unreachable, [`UNREACHABLE_SUMMARY_S`] after the last report.
    StillUnreachable {
        /// How long the peer has been unreachable.
        down_for: Duration,
        /// Failed calls since it became unreachable.
        failed_calls: u64,
        /// Why the latest call failed.
        reason: String,
    },
    /// The first successful call after failures.
    Reachable {
        /// How long the peer was unreachable.
        down_for: Duration,
        /// Failed calls while it was.
        failed_calls: u64,
    },
}

impl Reachability {
    /// Records a call's outcome at `now` (`Err` with why it failed);
    /// returns what to log, if anything.
    pub fn record(&mut self, now: Instant, outcome: Result<(), String>) -> Option<Report> {
        match (outcome, self.down.as_mut()) {
            (Ok(()), None) => None,
            (Ok(()), Some(down)) => {
                let report = Report::Reachable {
                    down_for: now.saturating_duration_since(down.since),
                    failed_calls: down.failed_calls,
                };
                self.down = None;
                Some(report)
            }
            (Err(reason), None) => {
                self.down = Some(Down {
                    since: now,
                    last_report: now,
                    failed_calls: 1,
                });
                Some(Report::Unreachable { reason })
            }
            (Err(reason), Some(down)) => {
                down.failed_calls += 1;
                if now.saturating_duration_since(down.last_report) < Duration::from_secs(UNREACHABLE_SUMMARY_S) {
                    return None;
                }
                down.last_report = now;
                Some(Report::StillUnreachable {
                    down_for: now.saturating_duration_since(down.since),
                    failed_calls: down.failed_calls,
                    reason,
                })
            }
        }
    }
}

/// Logs `report` about `peer`.
pub fn log(peer: NodeId, report: &Report) {
    match report {
        Report::Unreachable { reason } => tracing::warn!(peer, %reason, "peer unreachable"),
        Report::StillUnreachable {
            down_for,
            failed_calls,
            reason,
        } => tracing::warn!(
            peer,
            down_s = down_for.as_secs(),
            failed_calls,
            %reason,
            "peer still unreachable"
        ),
        Report::Reachable { down_for, failed_calls } => tracing::info!(
            peer,
            down_ms = down_for.as_millis() as u64,
            failed_calls,
            "peer reachable again"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_down_peer_is_reported_once_per_change_and_then_periodically() {
        // A dead follower made the leader log ~20 lines a second.
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut peer = Reachability::default();
        assert_eq!(peer.record(at(0), Ok(())), None);
        assert!(matches!(
            peer.record(at(10), Err("refused".into())),
            Some(Report::Unreachable { .. })
        ));
        let quiet = (1..600)
            .filter_map(|i| peer.record(at(10 + i * 50), Err("refused".into())))
            .count();
        assert_eq!(quiet, 0, "no line within the first summary period");
        let summary = peer.record(at(10 + UNREACHABLE_SUMMARY_S * 1000), Err("refused".into()));
        assert!(
            matches!(summary, Some(Report::StillUnreachable { failed_calls: 601, .. })),
            "{summary:?}"
        );
        let back = peer.record(at(40_000), Ok(()));
        assert!(
            matches!(back, Some(Report::Reachable { failed_calls: 601, down_for }) if down_for == Duration::from_millis(39_990)),
            "{back:?}"
        );
        assert_eq!(peer.record(at(40_050), Ok(())), None);
    }
}
