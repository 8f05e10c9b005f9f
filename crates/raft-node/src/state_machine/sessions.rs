//! Exactly-once writes: per session, which write sequences were applied.
//!
//! A client opens a session (a log entry; the id comes from the log
//! position), numbers its writes from 1 and tells, with each, the lowest
//! sequence it has not yet seen answered (`first_unanswered`). The state
//! machine keeps, per session, the applied sequences from that point on.
//!
//! The rule that keeps it honest: a write is answered OK only if it was
//! applied, now or before. So when the table cannot tell — the session is
//! unknown (never opened, expired, evicted) or the sequence is below what
//! the client said was answered — the write is refused with an explicit
//! "session expired", never applied and never called a duplicate. And a
//! session's window never moves past the `first_unanswered` its client
//! sent: a write a window or more ahead is refused instead of forgetting an
//! older one.
//!
//! Two kinds of session ids. Ids with [`SESSION_ID_OPENED_BIT`] set come
//! from OpenSession; an unknown one of those is certainly expired. Ids
//! below it are chosen by the client (the older contract, still served):
//! the first write under an unknown such id opens its session implicitly,
//! so once such a session has expired or been evicted, a retry of its
//! writes cannot be told from new writes and may apply again. Clients
//! that need exactly-once beyond the session's life use OpenSession.
//!
//! Sessions expire after [`SESSION_IDLE_MS_MAX`] without a command, by the
//! state machine clock (the largest leader timestamp applied so far), and
//! the least recently active are evicted beyond [`SESSIONS_MAX`]. Every
//! change happens while applying a log entry and is persisted in the same
//! engine batch ([`Sessions::take_changed`]), so every replica, restarted
//! or not, answers a retry the same way.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proto::raft::{AppliedWrite, Refusal, Session};

/// Sessions remembered at most; beyond it the least recently active one is
/// evicted (its client's next write gets "session expired"). Each costs
/// about 100 bytes plus 16 per unanswered write.
pub const SESSIONS_MAX: usize = 50_000;
/// Unanswered writes per session at most: a write whose sequence is this
/// far or further above the session's `first_unanswered` is refused. Also
/// bounds the applied sequences a session remembers.
pub const SESSION_WRITES_UNANSWERED_MAX: u64 = 1024;
/// A session idle this long (state machine clock) expires. One hour: far
/// beyond any client's retry deadline, short enough that abandoned
/// sessions do not pile up.
pub const SESSION_IDLE_MS_MAX: u64 = 60 * 60 * 1000;
/// Sessions opened by one log entry at most: an opened session's id is
/// `SESSION_ID_OPENED_BIT | (index * SESSION_OPENS_PER_ENTRY_MAX + position
/// in the entry)`.
pub const SESSION_OPENS_PER_ENTRY_MAX: u64 = 1024;
/// Set in every id OpenSession hands out, never in a client-chosen one.
pub const SESSION_ID_OPENED_BIT: u64 = 1 << 63;

/// What to do with a session's write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// New: apply it (already recorded as applied at the given index).
    Apply,
    /// A retry of a write applied earlier: do not apply it again.
    Duplicate {
        /// The index it was applied at.
        applied_index: u64,
    },
    /// Refused: nothing is applied, and the client is told why.
    Refuse(Refusal),
}

/// One session in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct State {
    first_unanswered: u64,
    /// Applied sequences at or above `first_unanswered` -> applied index.
    applied: BTreeMap<u64, u64>,
    last_active_ms: u64,
    last_index: u64,
}

impl State {
    fn to_pb(&self) -> Session {
        Session {
            first_unanswered: self.first_unanswered,
            applied: self
                .applied
                .iter()
                .map(|(&sequence, &applied_index)| AppliedWrite {
                    sequence,
                    applied_index,
                })
                .collect(),
            last_index: self.last_index,
            last_active_ms: self.last_active_ms,
        }
    }

    /// The state of `client_id` stored as `session`. An applied write at or
    /// past the window's end (`first_unanswered` plus
    /// [`SESSION_WRITES_UNANSWERED_MAX`]) is refused: no write is admitted
    /// there, and a session remembering more writes than its window would
    /// break [`Sessions::admit`]'s bound at its next write. Writes below the
    /// window were answered and are dropped, as a window move drops them.
    fn from_pb(client_id: u64, session: Session) -> Result<State, CorruptSession> {
        let first_unanswered = session.first_unanswered.max(1);
        let mut applied = BTreeMap::new();
        for write in session.applied {
            if write.sequence < first_unanswered {
                continue;
            }
            if write.sequence - first_unanswered >= SESSION_WRITES_UNANSWERED_MAX {
                return Err(CorruptSession {
                    client_id,
                    reason: format!(
                        "applied write {} lies past the window of {SESSION_WRITES_UNANSWERED_MAX} from {first_unanswered}",
                        write.sequence
                    ),
                });
            }
            applied.insert(write.sequence, write.applied_index);
        }
        Ok(State {
            first_unanswered,
            applied,
            last_active_ms: session.last_active_ms,
            last_index: session.last_index,
        })
    }
}

/// A stored session that no state machine writes: the table is not rebuilt
/// from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("session {client_id}: {reason}")]
pub struct CorruptSession {
    /// The session's client id.
    pub client_id: u64,
    /// What is wrong with it.
    pub reason: String,
}

/// The sessions of every remembered client, and the state machine clock.
#[derive(Debug, Default)]
pub struct Sessions {
    by_client: HashMap<u64, State>,
    /// `(last_active_ms, client_id)`, least recent first.
    by_age: BTreeSet<(u64, u64)>,
    /// The largest leader timestamp applied, in ms.
    clock_ms: u64,
    /// Sessions changed since the last [`Sessions::take_changed`].
    changed: BTreeSet<u64>,
}

impl Sessions {
    /// Rebuilds the table from stored sessions and the stored clock;
    /// fails on the first session no state machine could have stored.
    pub fn from_stored(
        stored: impl IntoIterator<Item = (u64, Session)>,
        clock_ms: u64,
    ) -> Result<Self, CorruptSession> {
        let mut sessions = Sessions {
            clock_ms,
            ..Sessions::default()
        };
        for (client_id, session) in stored {
            let state = State::from_pb(client_id, session)?;
            sessions.by_age.insert((state.last_active_ms, client_id));
            sessions.by_client.insert(client_id, state);
        }
        Ok(sessions)
    }

    /// Number of remembered sessions.
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    /// Whether no session is remembered.
    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }

    /// The state machine clock, in ms.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// Moves the clock to a command's leader timestamp (never backwards) and
    /// expires the sessions idle for longer than [`SESSION_IDLE_MS_MAX`].
    pub fn advance_clock(&mut self, proposed_at_ms: u64) {
        if proposed_at_ms <= self.clock_ms {
            return;
        }
        self.clock_ms = proposed_at_ms;
        let idle_since = self.clock_ms.saturating_sub(SESSION_IDLE_MS_MAX);
        while let Some(&(last_active_ms, client_id)) = self.by_age.first() {
            if last_active_ms >= idle_since {
                break;
            }
            self.forget(client_id);
        }
    }

    /// Opens a session for the command at position `position` of the entry
    /// at `index`; returns its id, or the refusal when the entry holds too
    /// many opens to number them.
    pub fn open(&mut self, index: u64, position: u64) -> Result<u64, Refusal> {
        if position >= SESSION_OPENS_PER_ENTRY_MAX {
            return Err(Refusal::TooManyOpens);
        }
        let client_id = index
            .checked_mul(SESSION_OPENS_PER_ENTRY_MAX)
            .and_then(|base| base.checked_add(position))
            .filter(|&id| id < SESSION_ID_OPENED_BIT)
            .ok_or(Refusal::TooManyOpens)?
            | SESSION_ID_OPENED_BIT;
        // Ids are unique per log position, so an existing session with this
        // id can only be a stale copy of this very one (a re-apply).
        self.forget(client_id);
        self.insert(client_id, 1, index);
        Ok(client_id)
    }

    /// Starts remembering `client_id` with its window at `first_unanswered`,
    /// evicting the least recently active session beyond [`SESSIONS_MAX`].
    fn insert(&mut self, client_id: u64, first_unanswered: u64, index: u64) {
        let state = State {
            first_unanswered,
            applied: BTreeMap::new(),
            last_active_ms: self.clock_ms,
            last_index: index,
        };
        self.by_age.insert((state.last_active_ms, client_id));
        self.by_client.insert(client_id, state);
        self.changed.insert(client_id);
        while self.by_client.len() > SESSIONS_MAX {
            let Some(&(_, oldest)) = self.by_age.first() else {
                break;
            };
            self.forget(oldest);
        }
    }

    /// Decides about write `sequence` of session `client_id` at log
    /// `index`, first forgetting what the client says was answered. An
    /// admitted write is recorded as applied at `index`.
    pub fn admit(&mut self, client_id: u64, sequence: u64, first_unanswered: u64, index: u64) -> Verdict {
        // The window moves only as far as the client itself says, and
        // never past the write it sends (the service refuses such ids; a
        // clamp keeps apply total for any command in the log).
        let first_unanswered = first_unanswered.clamp(1, sequence.max(1));
        if !self.by_client.contains_key(&client_id) {
            if client_id & SESSION_ID_OPENED_BIT != 0 {
                return Verdict::Refuse(Refusal::SessionExpired);
            }
            // A client-chosen id: its session opens with its first write.
            self.insert(client_id, first_unanswered, index);
        }
        let clock_ms = self.clock_ms;
        let Some(state) = self.by_client.get_mut(&client_id) else {
            unreachable!("session {client_id} was just found or inserted");
        };
        if first_unanswered > state.first_unanswered {
            state.first_unanswered = first_unanswered;
            state.applied = state.applied.split_off(&first_unanswered);
        }
        self.by_age.remove(&(state.last_active_ms, client_id));
        state.last_active_ms = clock_ms;
        state.last_index = index;
        self.by_age.insert((clock_ms, client_id));
        self.changed.insert(client_id);
        let verdict = if sequence < state.first_unanswered {
            Verdict::Refuse(Refusal::SequenceForgotten)
        } else if let Some(&applied_index) = state.applied.get(&sequence) {
            Verdict::Duplicate { applied_index }
        } else if sequence - state.first_unanswered >= SESSION_WRITES_UNANSWERED_MAX {
            Verdict::Refuse(Refusal::WindowFull)
        } else {
            state.applied.insert(sequence, index);
            Verdict::Apply
        };
        assert!(
            state.applied.len() as u64 <= SESSION_WRITES_UNANSWERED_MAX,
            "session {client_id} remembers more applied writes than its window"
        );
        verdict
    }

    /// The sessions changed since the last call, each with its record to
    /// store (`None`: delete it). Written in the same engine batch as the
    /// commands that changed them.
    pub fn take_changed(&mut self) -> Vec<(u64, Option<Session>)> {
        std::mem::take(&mut self.changed)
            .into_iter()
            .map(|client_id| (client_id, self.by_client.get(&client_id).map(State::to_pb)))
            .collect()
    }

    fn forget(&mut self, client_id: u64) {
        if let Some(state) = self.by_client.remove(&client_id) {
            self.by_age.remove(&(state.last_active_ms, client_id));
            self.changed.insert(client_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: u64 = 3_600_000;

    fn opened() -> (Sessions, u64) {
        let mut sessions = Sessions::default();
        sessions.advance_clock(1_000);
        let id = sessions.open(5, 0).expect("open");
        (sessions, id)
    }

    #[test]
    fn a_retried_write_is_a_duplicate_with_its_original_index() {
        // A write retried after a failover must not be applied twice.
        let (mut sessions, id) = opened();
        assert_eq!(sessions.admit(id, 1, 1, 100), Verdict::Apply);
        assert_eq!(sessions.admit(id, 1, 1, 101), Verdict::Duplicate { applied_index: 100 });
        assert_eq!(sessions.admit(id, 2, 1, 102), Verdict::Apply);
    }

    #[test]
    fn concurrent_writes_of_one_session_may_arrive_out_of_order() {
        // Sequence 3 applied before 2 must not make 2 look like a retry.
        let (mut sessions, id) = opened();
        assert_eq!(sessions.admit(id, 3, 1, 10), Verdict::Apply);
        assert_eq!(sessions.admit(id, 2, 1, 11), Verdict::Apply);
        assert_eq!(sessions.admit(id, 3, 1, 12), Verdict::Duplicate { applied_index: 10 });
    }

    #[test]
    fn an_unknown_opened_session_is_refused_not_applied() {
        // A forgotten session cannot tell a new write from a retry.
        let mut sessions = Sessions::default();
        assert_eq!(
            sessions.admit(SESSION_ID_OPENED_BIT | 42, 1, 1, 7),
            Verdict::Refuse(Refusal::SessionExpired)
        );
    }

    #[test]
    fn a_client_chosen_id_opens_its_session_with_its_first_write() {
        // The older contract (random ids, no OpenSession) is still served.
        let mut sessions = Sessions::default();
        assert_eq!(sessions.admit(42, 1, 1, 7), Verdict::Apply);
        assert_eq!(sessions.admit(42, 1, 1, 8), Verdict::Duplicate { applied_index: 7 });
        assert_eq!(sessions.admit(42, 3, 3, 9), Verdict::Apply);
        assert_eq!(
            sessions.admit(42, 2, 2, 10),
            Verdict::Refuse(Refusal::SequenceForgotten)
        );
    }

    #[test]
    fn a_sequence_below_the_window_is_refused_not_called_a_duplicate() {
        // Once the client said 1..=5 were answered, a stray retry of 3 cannot be told apart.
        let (mut sessions, id) = opened();
        for seq in 1..=5 {
            assert_eq!(sessions.admit(id, seq, 1, seq * 10), Verdict::Apply);
        }
        assert_eq!(sessions.admit(id, 6, 6, 60), Verdict::Apply);
        assert_eq!(
            sessions.admit(id, 3, 3, 70),
            Verdict::Refuse(Refusal::SequenceForgotten)
        );
    }

    #[test]
    fn a_slow_first_write_is_never_forgotten_by_later_ones() {
        // 1,100 later writes must not push the window past sequence 1, still unanswered.
        let (mut sessions, id) = opened();
        let mut refused = 0;
        for seq in 2..=1_101 {
            match sessions.admit(id, seq, 1, seq) {
                Verdict::Apply => {}
                Verdict::Refuse(Refusal::WindowFull) => refused += 1,
                other => panic!("sequence {seq}: {other:?}"),
            }
        }
        assert_eq!(refused, 1_101 - SESSION_WRITES_UNANSWERED_MAX, "writes past the window");
        assert_eq!(
            sessions.admit(id, 1, 1, 5_000),
            Verdict::Apply,
            "the slow write still applies"
        );
        assert_eq!(
            sessions.admit(id, 1, 1, 5_001),
            Verdict::Duplicate { applied_index: 5_000 }
        );
    }

    #[test]
    fn an_evicted_session_is_refused_instead_of_applied_twice() {
        // Client A's retry after many other clients must not overwrite a newer value.
        let (mut sessions, a) = opened();
        assert_eq!(sessions.admit(a, 1, 1, 6), Verdict::Apply);
        for index in 7..(7 + SESSIONS_MAX as u64) {
            sessions.advance_clock(1_000 + index);
            sessions.open(index, 0).expect("open");
        }
        assert_eq!(sessions.len(), SESSIONS_MAX);
        assert_eq!(
            sessions.admit(a, 1, 1, 99_999),
            Verdict::Refuse(Refusal::SessionExpired)
        );
    }

    #[test]
    fn an_idle_session_expires_by_the_log_clock() {
        // Expiry follows the clock carried in the log, so replicas agree.
        let (mut sessions, id) = opened();
        sessions.advance_clock(1_000 + HOUR_MS);
        assert_eq!(
            sessions.admit(id, 1, 1, 8),
            Verdict::Apply,
            "idle exactly an hour: alive"
        );
        sessions.advance_clock(1_000 + 2 * HOUR_MS + 1);
        assert_eq!(sessions.admit(id, 2, 1, 9), Verdict::Refuse(Refusal::SessionExpired));
        sessions.advance_clock(5);
        assert_eq!(
            sessions.clock_ms(),
            1_000 + 2 * HOUR_MS + 1,
            "the clock never goes back"
        );
    }

    #[test]
    fn every_change_is_reported_for_persisting_and_survives_a_reload() {
        // A replica restarted from its stored sessions must answer retries the same way.
        let (mut sessions, id) = opened();
        sessions.admit(id, 1, 1, 10);
        sessions.admit(id, 2, 1, 11);
        sessions.admit(id, 1, 2, 12); // a duplicate that also raises the window
        let changed = sessions.take_changed();
        assert_eq!(changed.len(), 1);
        assert!(sessions.take_changed().is_empty());
        let mut reloaded = Sessions::from_stored(
            changed.into_iter().map(|(id, s)| (id, s.expect("alive"))),
            sessions.clock_ms(),
        )
        .expect("what the table stored reloads");
        for (seq, fu) in [(1, 2), (2, 2), (3, 2)] {
            assert_eq!(reloaded.admit(id, seq, fu, 20), sessions.admit(id, seq, fu, 20));
        }
    }

    #[test]
    fn a_stored_session_with_writes_past_its_window_is_refused_on_reload() {
        // Found by the `sessions` decoder target: such a record reloaded, and
        // the session's next write tripped admit's window assertion (a panic
        // in apply, at every restart).
        let (mut sessions, id) = opened();
        for sequence in 1..=SESSION_WRITES_UNANSWERED_MAX {
            assert_eq!(sessions.admit(id, sequence, 1, 10 + sequence), Verdict::Apply);
        }
        let (_, stored) = sessions.take_changed().pop().expect("changed");
        let full = stored.expect("alive");
        let reloaded = Sessions::from_stored([(id, full.clone())], sessions.clock_ms());
        assert!(reloaded.is_ok(), "a full window is what admit stores");
        let mut past = full.clone();
        past.applied.push(AppliedWrite {
            sequence: SESSION_WRITES_UNANSWERED_MAX + 1,
            applied_index: 5_000,
        });
        let refused = Sessions::from_stored([(id, past)], sessions.clock_ms()).map(|s| s.len());
        assert!(matches!(refused, Err(CorruptSession { client_id, .. }) if client_id == id));
        // Answered writes below the window are dropped, not refused.
        let mut below = full;
        below.first_unanswered = 2;
        let mut reloaded = Sessions::from_stored([(id, below)], sessions.clock_ms()).expect("reload");
        assert_eq!(
            reloaded.admit(id, 1, 2, 9_000),
            Verdict::Refuse(Refusal::SequenceForgotten)
        );
    }

    #[test]
    fn session_ids_come_from_the_log_position() {
        // Ids are unique without coordination and the same on every replica.
        let mut sessions = Sessions::default();
        assert_eq!(
            sessions.open(3, 0),
            Ok(SESSION_ID_OPENED_BIT | (3 * SESSION_OPENS_PER_ENTRY_MAX))
        );
        assert_eq!(
            sessions.open(3, 1),
            Ok(SESSION_ID_OPENED_BIT | (3 * SESSION_OPENS_PER_ENTRY_MAX + 1))
        );
        assert_eq!(
            sessions.open(3, SESSION_OPENS_PER_ENTRY_MAX),
            Err(Refusal::TooManyOpens)
        );
    }

    /// One simulated client: its session, its numbering, and the writes it
    /// still waits for.
    struct ModelClient {
        id: u64,
        next: u64,
        unanswered: BTreeSet<u64>,
    }

    #[test]
    fn random_retries_duplicates_and_expiry_never_apply_twice_or_lie() {
        // Writes retried, duplicated and reordered at random, with sessions expiring:
        // each write applies at most once, OK (apply or duplicate) only if applied,
        // and an unanswered write of a live session is never forgotten.
        let seed = std::env::var("SESSIONS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| fastrand::u64(..));
        println!("SESSIONS_SEED={seed}");
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut sessions = Sessions::default();
        let mut clients: Vec<ModelClient> = Vec::new();
        let mut applied: HashMap<(u64, u64), u64> = HashMap::new();
        let mut last_active: HashMap<u64, u64> = HashMap::new();
        let (mut clock, mut index) = (1_000u64, 1u64);
        // The model's clock and the table's start together: a session opened
        // before the first tick is active at `clock`, not at zero.
        sessions.advance_clock(clock);
        for _ in 0..20_000 {
            index += 1;
            match rng.u32(0..100) {
                0..=2 => {
                    let id = sessions.open(index, 0).expect("open");
                    last_active.insert(id, clock);
                    clients.push(ModelClient {
                        id,
                        next: 1,
                        unanswered: BTreeSet::new(),
                    });
                }
                3..=4 => {
                    // Time passes; now and then past the idle limit.
                    clock += if rng.u32(0..10) == 0 {
                        SESSION_IDLE_MS_MAX
                    } else {
                        rng.u64(0..60_000)
                    };
                    sessions.advance_clock(clock);
                }
                _ if clients.is_empty() => {}
                5..=40 => {
                    let pick = rng.usize(..clients.len());
                    let client = &mut clients[pick];
                    client.unanswered.insert(client.next);
                    client.next += 1;
                }
                41..=60 => {
                    // The client stops waiting for one write (answered or given up).
                    let pick = rng.usize(..clients.len());
                    let client = &mut clients[pick];
                    let nth = rng.usize(..client.unanswered.len().max(1));
                    if let Some(&seq) = client.unanswered.iter().nth(nth) {
                        client.unanswered.remove(&seq);
                    }
                }
                _ => {
                    // An attempt, or a late retry of a write already answered.
                    let client = &clients[rng.usize(..clients.len())];
                    let first_unanswered = client.unanswered.first().copied().unwrap_or(client.next);
                    let late = rng.u32(0..10) == 0 && client.next > 1;
                    let nth = rng.usize(..client.unanswered.len().max(1));
                    let sequence = if late {
                        rng.u64(1..client.next)
                    } else if let Some(&seq) = client.unanswered.iter().nth(nth) {
                        seq
                    } else {
                        continue;
                    };
                    let fu = first_unanswered.min(sequence);
                    let alive = last_active
                        .get(&client.id)
                        .is_some_and(|&at| at + SESSION_IDLE_MS_MAX >= sessions.clock_ms());
                    let key = (client.id, sequence);
                    match sessions.admit(client.id, sequence, fu, index) {
                        Verdict::Apply => {
                            assert!(
                                applied.insert(key, index).is_none(),
                                "seed {seed}: {key:?} applied twice"
                            );
                        }
                        Verdict::Duplicate { applied_index } => {
                            assert_eq!(
                                applied.get(&key),
                                Some(&applied_index),
                                "seed {seed}: {key:?} called a duplicate of nothing"
                            );
                        }
                        Verdict::Refuse(Refusal::SessionExpired) => {
                            assert!(!alive, "seed {seed}: live session {} called expired", client.id);
                        }
                        Verdict::Refuse(Refusal::SequenceForgotten) => {
                            assert!(
                                !client.unanswered.contains(&sequence),
                                "seed {seed}: unanswered {key:?} forgotten"
                            );
                        }
                        Verdict::Refuse(Refusal::WindowFull) => {
                            assert!(sequence - fu >= SESSION_WRITES_UNANSWERED_MAX, "seed {seed}: {key:?}");
                        }
                        Verdict::Refuse(other) => panic!("seed {seed}: unexpected {other:?}"),
                    }
                    if alive {
                        last_active.insert(client.id, sessions.clock_ms());
                    } else {
                        last_active.remove(&client.id);
                    }
                }
            }
        }
        assert!(!applied.is_empty(), "seed {seed}: the run applied something");
    }
}
