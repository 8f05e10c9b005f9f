//! Snapshots by bytes: a task that asks Raft for a snapshot once the log
//! applied since the last one passes a byte size.
//!
//! openraft 0.9's `SnapshotPolicy` counts entries only, while the write
//! batcher packs many writes into one entry, so an entry count alone may
//! let the log (its disk, and the replay after a crash) grow to many
//! gigabytes before a snapshot is taken. This task bounds it in bytes as
//! well; the entry count still applies. The decision
//! ([`should_trigger`]) is pure; the task only feeds it and carries it out.

use std::time::Duration;

use tokio::time::Instant;

use crate::log_store::LogReader;
use crate::types::Raft;

/// How often the task compares the log's bytes with its bound, in ms. A
/// log grows by at most this long's writes past the bound before a
/// snapshot is asked for.
pub(crate) const SNAPSHOT_WATCH_MS: u64 = 1000;
/// How long after asking for a snapshot the task asks again if none has
/// landed (a build that failed, or a request made while another ran), in
/// ms. Building one copies the database, so it is not asked for every
/// tick.
pub(crate) const SNAPSHOT_RETRY_MS: u64 = 60_000;
const _: () = assert!(SNAPSHOT_WATCH_MS < SNAPSHOT_RETRY_MS);

/// A snapshot the task asked for, not yet seen built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Asked {
    /// The last snapshot's index when the task asked.
    pub(crate) snapshot_index: Option<u64>,
    /// When it asked.
    pub(crate) at: Instant,
}

/// Whether to ask for a snapshot now: the log applied since the last
/// snapshot holds at least `bytes_max` bytes, and no earlier request is
/// still pending (one is pending until a newer snapshot exists, or for
/// [`SNAPSHOT_RETRY_MS`]).
pub(crate) fn should_trigger(
    bytes_since_snapshot: u64,
    bytes_max: u64,
    snapshot_index: Option<u64>,
    asked: Option<Asked>,
    now: Instant,
) -> bool {
    if bytes_since_snapshot < bytes_max {
        return false;
    }
    match asked {
        None => true,
        Some(asked) => {
            asked.snapshot_index != snapshot_index
                || now.duration_since(asked.at) >= Duration::from_millis(SNAPSHOT_RETRY_MS)
        }
    }
}

/// Starts the task for `raft`, whose log `log` reads, with a bound of
/// `bytes_max` bytes of applied log since the last snapshot. It ends when
/// Raft shuts down.
pub(crate) fn spawn(raft: Raft, log: LogReader, bytes_max: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut metrics = raft.metrics();
        let mut tick = tokio::time::interval(Duration::from_millis(SNAPSHOT_WATCH_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut asked: Option<Asked> = None;
        loop {
            tick.tick().await;
            if metrics.has_changed().is_err() {
                return; // Raft stopped and dropped its metrics
            }
            let (snapshot_index, applied_index) = {
                let m = metrics.borrow_and_update();
                if m.running_state.is_err() {
                    return;
                }
                (m.snapshot.map(|s| s.index), m.last_applied.map(|a| a.index))
            };
            let Some(applied_index) = applied_index else { continue };
            let bytes = log.bytes_between(snapshot_index, applied_index);
            let now = Instant::now();
            if !should_trigger(bytes, bytes_max, snapshot_index, asked, now) {
                continue;
            }
            tracing::info!(
                bytes,
                bytes_max,
                ?snapshot_index,
                applied_index,
                "log since the last snapshot passed its byte bound; asking for a snapshot"
            );
            if raft.trigger().snapshot().await.is_err() {
                return; // Raft stopped
            }
            asked = Some(Asked {
                snapshot_index,
                at: now,
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_asked_for_once_the_bytes_pass_the_bound_and_not_again_while_pending() {
        // One request per snapshot: a build copies the database, so asking every tick would be costly.
        let now = Instant::now();
        assert!(!should_trigger(99, 100, Some(5), None, now), "under the bound");
        assert!(should_trigger(100, 100, Some(5), None, now), "at the bound");
        let asked = Some(Asked {
            snapshot_index: Some(5),
            at: now,
        });
        let soon = now + Duration::from_millis(SNAPSHOT_WATCH_MS);
        assert!(!should_trigger(500, 100, Some(5), asked, soon), "still pending");
        assert!(
            should_trigger(500, 100, Some(90), asked, soon),
            "a newer snapshot landed and the log passed the bound again"
        );
        assert!(
            should_trigger(500, 100, Some(5), asked, now + Duration::from_millis(SNAPSHOT_RETRY_MS)),
            "the request was lost: ask again"
        );
        assert!(
            should_trigger(100, 100, None, None, now),
            "no snapshot yet: the whole log counts"
        );
    }
}
