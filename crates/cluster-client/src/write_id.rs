//! Write ids for exactly-once writes: a session the cluster opened, one
//! sequence per write (reused by every retry of it), and the lowest
//! unanswered sequence.
//!
//! The server keeps, per session, a window of
//! [`SESSION_WRITES_UNANSWERED_MAX`] sequences from the lowest unanswered
//! one, and refuses a write beyond it. So a new write here waits until its
//! sequence is inside that window: a write whose answer is slow holds later
//! ones back instead of being forgotten by the server.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use proto::kv::WriteId;
use tokio::sync::Notify;

/// Sequences a session may have between its oldest unanswered write and its
/// newest, at most: the server's window (`session_writes_unanswered_max`).
pub const SESSION_WRITES_UNANSWERED_MAX: u64 = 1024;

/// One session: its id, its numbering, and the writes still unanswered.
#[derive(Debug)]
pub(crate) struct Session {
    client_id: u64,
    numbering: Mutex<Numbering>,
    /// Woken when the oldest unanswered write is answered.
    answered: Notify,
    /// Set when the server said the session expired: new writes open a
    /// new session.
    expired: AtomicBool,
}

#[derive(Debug)]
struct Numbering {
    /// The next sequence to hand out; sequences start at 1.
    next: u64,
    /// Sequences handed out whose write has not returned to the caller.
    unanswered: BTreeSet<u64>,
}

impl Numbering {
    fn first_unanswered(&self) -> u64 {
        self.unanswered.first().copied().unwrap_or(self.next)
    }
}

impl Session {
    /// The session the server opened with id `client_id` (not 0).
    pub(crate) fn new(client_id: u64) -> Arc<Session> {
        assert_ne!(client_id, 0, "client id 0 disables deduplication");
        Arc::new(Session {
            client_id,
            numbering: Mutex::new(Numbering {
                next: 1,
                unanswered: BTreeSet::new(),
            }),
            answered: Notify::new(),
            expired: AtomicBool::new(false),
        })
    }

    /// The session id.
    pub(crate) fn client_id(&self) -> u64 {
        self.client_id
    }

    /// Whether the server said this session expired.
    pub(crate) fn is_expired(&self) -> bool {
        self.expired.load(Ordering::Acquire)
    }

    /// Records that the server no longer knows this session.
    pub(crate) fn mark_expired(&self) {
        self.expired.store(true, Ordering::Release);
    }

    /// Starts a new write: a fresh sequence, unanswered until the ticket
    /// drops. Waits while the sequence would fall outside the window.
    pub(crate) async fn begin(self: &Arc<Self>) -> WriteTicket {
        loop {
            // Registered before the check, so an answer between the check
            // and the wait is not missed.
            let answered = self.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            if let Some(ticket) = self.try_begin() {
                return ticket;
            }
            answered.await;
        }
    }

    /// Starts a new write if its sequence fits the window.
    pub(crate) fn try_begin(self: &Arc<Self>) -> Option<WriteTicket> {
        // The sequence is taken and recorded under one lock: otherwise
        // another write could compute `first_unanswered` between the two,
        // above this sequence, and let the server forget it before it is sent.
        let mut numbering = self.numbering.lock();
        let sequence = numbering.next;
        if sequence - numbering.first_unanswered() >= SESSION_WRITES_UNANSWERED_MAX {
            return None;
        }
        numbering.next += 1;
        numbering.unanswered.insert(sequence);
        Some(WriteTicket {
            session: Arc::clone(self),
            sequence,
        })
    }

    /// Re-registers `sequence` as unanswered (a deliberate re-send of an
    /// earlier write, for tests of deduplication).
    pub(crate) fn resume(self: &Arc<Self>, sequence: u64) -> WriteTicket {
        assert!(sequence >= 1, "sequences start at 1");
        self.numbering.lock().unanswered.insert(sequence);
        WriteTicket {
            session: Arc::clone(self),
            sequence,
        }
    }

    /// The lowest sequence not yet answered: the smallest unanswered, or the
    /// next to be handed out when none is.
    pub(crate) fn first_unanswered(&self) -> u64 {
        self.numbering.lock().first_unanswered()
    }
}

/// One write's sequence; the write counts as answered when this drops
/// (returned to the caller with any result, or cancelled). After that the
/// client never sends this sequence again, so the server may forget it.
#[derive(Debug)]
pub(crate) struct WriteTicket {
    session: Arc<Session>,
    sequence: u64,
}

impl WriteTicket {
    /// The sequence of this write.
    pub(crate) fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The session this write belongs to.
    pub(crate) fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// The id to send with this attempt: computed afresh per attempt, so a
    /// retry carries the newest `first_unanswered` and the same sequence.
    pub(crate) fn write_id(&self) -> WriteId {
        let first_unanswered = self.session.first_unanswered();
        assert!(
            first_unanswered <= self.sequence,
            "first_unanswered {first_unanswered} above the unanswered sequence {}",
            self.sequence
        );
        WriteId {
            client_id: self.session.client_id,
            sequence: self.sequence,
            first_unanswered,
        }
    }
}

impl Drop for WriteTicket {
    fn drop(&mut self) {
        let mut numbering = self.session.numbering.lock();
        let was_first = numbering.unanswered.first() == Some(&self.sequence);
        numbering.unanswered.remove(&self.sequence);
        drop(numbering);
        if was_first {
            self.session.answered.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_start_at_one_and_increase() {
        let session = Session::new(7);
        let a = session.try_begin().expect("fits");
        let b = session.try_begin().expect("fits");
        assert_eq!((a.sequence(), b.sequence()), (1, 2));
        assert_eq!(a.write_id().client_id, 7);
    }

    #[test]
    fn first_unanswered_is_the_oldest_write_still_unanswered() {
        // The server may forget everything below it, so it must never pass
        // a sequence the client could still retry.
        let session = Session::new(7);
        assert_eq!(session.first_unanswered(), 1);
        let one = session.try_begin().expect("fits");
        let two = session.try_begin().expect("fits");
        let three = session.try_begin().expect("fits");
        assert_eq!(three.write_id().first_unanswered, 1);
        drop(two);
        assert_eq!(three.write_id().first_unanswered, 1, "1 is still unanswered");
        drop(one);
        assert_eq!(three.write_id().first_unanswered, 3);
        drop(three);
        assert_eq!(session.first_unanswered(), 4, "nothing unanswered: the next sequence");
    }

    #[test]
    fn a_retry_reuses_the_sequence_with_a_newer_first_unanswered() {
        let session = Session::new(7);
        let old = session.try_begin().expect("fits");
        let retried = session.try_begin().expect("fits");
        let first = retried.write_id();
        drop(old);
        let second = retried.write_id();
        assert_eq!(first.sequence, second.sequence);
        assert_eq!((first.first_unanswered, second.first_unanswered), (1, 2));
    }

    #[test]
    fn a_resumed_sequence_holds_first_unanswered_down() {
        let session = Session::new(7);
        drop(session.try_begin());
        drop(session.try_begin());
        let again = session.resume(1);
        assert_eq!(again.write_id().first_unanswered, 1);
        drop(again);
        assert_eq!(session.first_unanswered(), 3);
    }

    #[tokio::test]
    async fn a_slow_write_holds_new_ones_at_the_window_until_it_is_answered() {
        // The server refuses sequences a window past the oldest unanswered one.
        let session = Session::new(7);
        let slow = session.try_begin().expect("fits");
        for _ in 1..SESSION_WRITES_UNANSWERED_MAX {
            drop(session.try_begin().expect("inside the window"));
        }
        assert!(session.try_begin().is_none(), "one past the window");
        let waiting = tokio::spawn({
            let session = Arc::clone(&session);
            async move { session.begin().await.sequence() }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(slow);
        let sequence = waiting.await.expect("the waiting write starts");
        assert_eq!(sequence, SESSION_WRITES_UNANSWERED_MAX + 1);
    }

    #[test]
    fn concurrent_writes_never_see_first_unanswered_above_their_own_sequence() {
        let session = Session::new(7);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let session = Arc::clone(&session);
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        // A thread preempted while holding its ticket can
                        // put the others past the window: they skip then.
                        let Some(ticket) = session.try_begin() else { continue };
                        let id = ticket.write_id(); // asserts the bound
                        assert!(id.first_unanswered <= id.sequence);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no thread panicked");
        }
        assert!(session.numbering.lock().unanswered.is_empty());
    }
}
