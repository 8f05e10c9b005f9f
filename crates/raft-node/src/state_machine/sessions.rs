//! Exactly-once writes: per client, which write sequences were applied.
//!
//! A client numbers its writes and tells, with each, the lowest sequence it
//! has not yet seen answered (`first_unanswered`). The state machine keeps,
//! per client, the applied sequences from that point on; a write whose
//! sequence is below it or already in the set is a retry and is not applied
//! again. Both the set per client and the number of clients are bounded:
//! the oldest clients (by the log index of their last write) are forgotten
//! first. Every decision depends only on the log, so all replicas agree.

use std::collections::{BTreeSet, HashMap};

use proto::raft::{AppliedWrite, Session};

/// Clients remembered at most.
pub const SESSIONS_MAX: usize = 10_000;
/// Applied sequences remembered per client at most (its in-flight window).
pub const APPLIED_PER_SESSION_MAX: usize = 1024;

/// What to do with a client's write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// New: apply it.
    Apply,
    /// A retry of a write applied earlier.
    Duplicate {
        /// The index it was applied at (0 if no longer known).
        applied_index: u64,
    },
}

/// The sessions of every remembered client.
#[derive(Debug, Default)]
pub struct Sessions {
    by_client: HashMap<u64, Session>,
    /// `(last_index, client_id)`, oldest first, for eviction.
    by_age: BTreeSet<(u64, u64)>,
}

impl Sessions {
    /// Rebuilds the table from stored sessions.
    pub fn from_stored(stored: impl IntoIterator<Item = (u64, Session)>) -> Self {
        let mut sessions = Sessions::default();
        for (client_id, session) in stored {
            sessions.by_age.insert((session.last_index, client_id));
            sessions.by_client.insert(client_id, session);
        }
        sessions
    }

    /// Number of remembered clients.
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    /// Whether no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }

    /// Decides about write `sequence` of `client_id`, first forgetting what
    /// the client says it has seen answered.
    pub fn check(&mut self, client_id: u64, sequence: u64, first_unanswered: u64) -> Verdict {
        let Some(session) = self.by_client.get_mut(&client_id) else {
            return Verdict::Apply;
        };
        if first_unanswered > session.first_unanswered {
            session.first_unanswered = first_unanswered;
            session.applied.retain(|w| w.sequence >= first_unanswered);
        }
        if sequence < session.first_unanswered {
            return Verdict::Duplicate { applied_index: 0 };
        }
        match session.applied.iter().find(|w| w.sequence == sequence) {
            Some(w) => Verdict::Duplicate {
                applied_index: w.applied_index,
            },
            None => Verdict::Apply,
        }
    }

    /// Records that write `sequence` of `client_id` was applied at
    /// `applied_index`. Returns the session to persist and the clients
    /// evicted to stay within [`SESSIONS_MAX`] (their records must be
    /// deleted).
    pub fn record(
        &mut self,
        client_id: u64,
        sequence: u64,
        first_unanswered: u64,
        applied_index: u64,
    ) -> (Session, Vec<u64>) {
        let session = self.by_client.entry(client_id).or_insert_with(|| Session {
            first_unanswered,
            ..Session::default()
        });
        self.by_age.remove(&(session.last_index, client_id));
        session.applied.push(AppliedWrite {
            sequence,
            applied_index,
        });
        if session.applied.len() > APPLIED_PER_SESSION_MAX {
            session.applied.sort_by_key(|w| w.sequence);
            let dropped = session.applied.remove(0);
            // Anything at or below a forgotten sequence is treated as
            // already applied: safe, as the client sent it long ago.
            session.first_unanswered = session.first_unanswered.max(dropped.sequence + 1);
        }
        session.last_index = applied_index;
        let persisted = session.clone();
        self.by_age.insert((applied_index, client_id));
        let mut evicted = Vec::new();
        while self.by_client.len() > SESSIONS_MAX {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.by_client.remove(&oldest);
            evicted.push(oldest);
        }
        (persisted, evicted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retried_write_is_a_duplicate_with_its_original_index() {
        // A write retried after a failover must not be applied twice.
        let mut sessions = Sessions::default();
        assert_eq!(sessions.check(7, 1, 1), Verdict::Apply);
        sessions.record(7, 1, 1, 100);
        assert_eq!(sessions.check(7, 1, 1), Verdict::Duplicate { applied_index: 100 });
        assert_eq!(sessions.check(7, 2, 1), Verdict::Apply);
    }

    #[test]
    fn concurrent_writes_of_one_client_may_arrive_out_of_order() {
        // Sequence 3 applied before 2 must not make 2 look like a retry.
        let mut sessions = Sessions::default();
        sessions.record(7, 3, 1, 10);
        assert_eq!(sessions.check(7, 2, 1), Verdict::Apply);
        sessions.record(7, 2, 1, 11);
        assert_eq!(sessions.check(7, 3, 1), Verdict::Duplicate { applied_index: 10 });
    }

    #[test]
    fn answered_sequences_are_forgotten_but_still_refused() {
        // Once the client saw 1..=5 answered the server may drop them, yet a stray retry stays a no-op.
        let mut sessions = Sessions::default();
        for seq in 1..=5 {
            sessions.record(7, seq, 1, seq * 10);
        }
        assert_eq!(sessions.check(7, 6, 6), Verdict::Apply);
        let (session, _) = sessions.record(7, 6, 6, 60);
        assert_eq!(session.applied.len(), 1);
        assert_eq!(sessions.check(7, 3, 6), Verdict::Duplicate { applied_index: 0 });
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_oldest_client() {
        // Memory stays bounded however many clients come and go.
        let mut sessions = Sessions::default();
        let mut evicted_all = Vec::new();
        for client in 0..(SESSIONS_MAX as u64 + 3) {
            let (_, evicted) = sessions.record(client, 1, 1, client + 1);
            evicted_all.extend(evicted);
        }
        assert_eq!(sessions.len(), SESSIONS_MAX);
        assert_eq!(evicted_all, vec![0, 1, 2]);
    }
}
