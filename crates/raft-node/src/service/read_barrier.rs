//! Linearizable reads share leadership checks.
//!
//! A linearizable read needs a check, started after the read arrived, that
//! this node still leads (openraft's read index: a heartbeat round to a
//! quorum, then waiting until the read index is applied). One check serves
//! every read that arrived before it started, so reads that arrive while a
//! check is running wait for the next one, which starts as soon as the
//! current one ends. Under load that is one quorum round per round trip,
//! not one per read.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;
use tonic::Status;

use super::status;
use crate::types::Raft;

/// The outcome of one check round.
#[derive(Clone)]
struct Completed {
    round: u64,
    result: Result<(), Status>,
}

#[derive(Default)]
struct Rounds {
    /// The last round started.
    started: u64,
    running: bool,
    /// Whether a read is waiting for a round that has not started yet.
    next_wanted: bool,
}

/// Coalesces the leadership checks of linearizable reads.
pub struct ReadBarrier {
    raft: Raft,
    rounds: Mutex<Rounds>,
    completed: watch::Sender<Completed>,
}

impl ReadBarrier {
    /// A barrier checking leadership through `raft`.
    pub fn new(raft: Raft) -> Arc<Self> {
        let (completed, _) = watch::channel(Completed {
            round: 0,
            result: Ok(()),
        });
        Arc::new(ReadBarrier {
            raft,
            rounds: Mutex::new(Rounds::default()),
            completed,
        })
    }

    /// Returns once a leadership check that started after this call has
    /// succeeded (and this node has applied up to its read index).
    pub async fn wait(self: &Arc<Self>) -> Result<(), Status> {
        let mut completions = self.completed.subscribe();
        let round = {
            let mut rounds = self.rounds.lock().unwrap_or_else(PoisonError::into_inner);
            if rounds.running {
                // The running round may have started before this read.
                rounds.next_wanted = true;
                rounds.started + 1
            } else {
                rounds.running = true;
                rounds.started += 1;
                self.spawn_round(rounds.started);
                rounds.started
            }
        };
        loop {
            {
                let completed = completions.borrow_and_update();
                if completed.round >= round {
                    return completed.result.clone();
                }
            }
            if completions.changed().await.is_err() {
                return Err(Status::unavailable("the node is shutting down"));
            }
        }
    }

    fn spawn_round(self: &Arc<Self>, round: u64) {
        let barrier = Arc::clone(self);
        tokio::spawn(async move {
            let result = barrier
                .raft
                .ensure_linearizable()
                .await
                .map(|_| ())
                .map_err(status::from_read_error);
            let next = {
                let mut rounds = barrier.rounds.lock().unwrap_or_else(PoisonError::into_inner);
                if rounds.next_wanted {
                    rounds.next_wanted = false;
                    rounds.started += 1;
                    Some(rounds.started)
                } else {
                    rounds.running = false;
                    None
                }
            };
            barrier.completed.send_replace(Completed { round, result });
            if let Some(next) = next {
                barrier.spawn_round(next);
            }
        });
    }
}
