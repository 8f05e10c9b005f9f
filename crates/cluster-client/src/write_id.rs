//! Write ids for exactly-once writes: a random client id, one sequence per
//! write (reused by every retry of it), and the lowest unanswered sequence.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use proto::kv::WriteId;

/// Numbers the writes of one client and tracks the ones still in flight.
#[derive(Debug)]
pub(crate) struct WriteIds {
    client_id: u64,
    /// The next sequence to hand out; sequences start at 1.
    next_sequence: AtomicU64,
    /// Sequences handed out whose write has not returned to the caller.
    in_flight: Mutex<BTreeSet<u64>>,
}

impl WriteIds {
    /// Ids for a client with a random, non-zero id (0 disables dedup).
    pub(crate) fn new() -> WriteIds {
        WriteIds::with_client_id(fastrand::u64(1..))
    }

    /// Ids for a client with the given id.
    pub(crate) fn with_client_id(client_id: u64) -> WriteIds {
        assert_ne!(client_id, 0, "client id 0 disables deduplication");
        WriteIds {
            client_id,
            next_sequence: AtomicU64::new(1),
            in_flight: Mutex::new(BTreeSet::new()),
        }
    }

    /// The client id.
    pub(crate) fn client_id(&self) -> u64 {
        self.client_id
    }

    /// Starts a new write: a fresh sequence, in flight until the ticket drops.
    pub(crate) fn begin(self: &Arc<Self>) -> WriteTicket {
        // The sequence is taken and recorded under one lock: otherwise
        // another write could compute `first_unanswered` between the two,
        // above this sequence, and let the server forget it before it is sent.
        let mut in_flight = self.in_flight.lock();
        let sequence = self.next_sequence.fetch_add(1, Ordering::Relaxed);
        in_flight.insert(sequence);
        drop(in_flight);
        WriteTicket {
            ids: Arc::clone(self),
            sequence,
        }
    }

    /// Re-registers `sequence` as in flight (a deliberate re-send of an
    /// earlier write, for tests of deduplication).
    pub(crate) fn resume(self: &Arc<Self>, sequence: u64) -> WriteTicket {
        assert!(sequence >= 1, "sequences start at 1");
        self.in_flight.lock().insert(sequence);
        WriteTicket {
            ids: Arc::clone(self),
            sequence,
        }
    }

    /// The lowest sequence not yet answered: the smallest in flight, or the
    /// next to be handed out when none is.
    pub(crate) fn first_unanswered(&self) -> u64 {
        let in_flight = self.in_flight.lock();
        match in_flight.first() {
            Some(first) => *first,
            None => self.next_sequence.load(Ordering::Relaxed),
        }
    }
}

/// One write's sequence; the write counts as answered when this drops
/// (returned to the caller with any result, or cancelled). After that the
/// client never sends this sequence again, so the server may forget it.
#[derive(Debug)]
pub(crate) struct WriteTicket {
    ids: Arc<WriteIds>,
    sequence: u64,
}

impl WriteTicket {
    /// The sequence of this write.
    #[cfg(test)]
    pub(crate) fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The id to send with this attempt: computed afresh per attempt, so a
    /// retry carries the newest `first_unanswered` and the same sequence.
    pub(crate) fn write_id(&self) -> WriteId {
        let first_unanswered = self.ids.first_unanswered();
        assert!(
            first_unanswered <= self.sequence,
            "first_unanswered {first_unanswered} above the in-flight sequence {}",
            self.sequence
        );
        WriteId {
            client_id: self.ids.client_id,
            sequence: self.sequence,
            first_unanswered,
        }
    }
}

impl Drop for WriteTicket {
    fn drop(&mut self) {
        self.ids.in_flight.lock().remove(&self.sequence);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_client_ids_are_never_zero() {
        for _ in 0..1000 {
            assert_ne!(WriteIds::new().client_id(), 0);
        }
    }

    #[test]
    fn sequences_start_at_one_and_increase() {
        let ids = Arc::new(WriteIds::with_client_id(7));
        let a = ids.begin();
        let b = ids.begin();
        assert_eq!((a.sequence(), b.sequence()), (1, 2));
        assert_eq!(a.write_id().client_id, 7);
    }

    #[test]
    fn first_unanswered_is_the_oldest_write_still_in_flight() {
        // The server may forget everything below it, so it must never pass
        // a sequence the client could still retry.
        let ids = Arc::new(WriteIds::with_client_id(7));
        assert_eq!(ids.first_unanswered(), 1);
        let one = ids.begin();
        let two = ids.begin();
        let three = ids.begin();
        assert_eq!(three.write_id().first_unanswered, 1);
        drop(two);
        assert_eq!(three.write_id().first_unanswered, 1, "1 is still in flight");
        drop(one);
        assert_eq!(three.write_id().first_unanswered, 3);
        drop(three);
        assert_eq!(ids.first_unanswered(), 4, "nothing in flight: the next sequence");
    }

    #[test]
    fn a_retry_reuses_the_sequence_with_a_newer_first_unanswered() {
        let ids = Arc::new(WriteIds::with_client_id(7));
        let old = ids.begin();
        let retried = ids.begin();
        let first = retried.write_id();
        drop(old);
        let second = retried.write_id();
        assert_eq!(first.sequence, second.sequence);
        assert_eq!((first.first_unanswered, second.first_unanswered), (1, 2));
    }

    #[test]
    fn a_resumed_sequence_holds_first_unanswered_down() {
        let ids = Arc::new(WriteIds::with_client_id(7));
        drop(ids.begin());
        drop(ids.begin());
        let again = ids.resume(1);
        assert_eq!(again.write_id().first_unanswered, 1);
        drop(again);
        assert_eq!(ids.first_unanswered(), 3);
    }

    #[test]
    fn concurrent_writes_never_see_first_unanswered_above_their_own_sequence() {
        let ids = Arc::new(WriteIds::with_client_id(7));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let ids = Arc::clone(&ids);
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        let ticket = ids.begin();
                        let id = ticket.write_id(); // asserts the bound
                        assert!(id.first_unanswered <= id.sequence);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no thread panicked");
        }
        assert_eq!(ids.first_unanswered(), 8001);
    }
}
