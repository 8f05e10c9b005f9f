//! The Raft state machine: committed commands applied to the storage
//! engine, with the last applied log id and the membership stored
//! atomically with the data they describe.
//!
//! - `keys`: the engine key layout (user keys, session records).
//! - `sessions`: exactly-once bookkeeping per client.
//! - `engine`: the swappable engine handle reads go through.
//! - `archive`: the single-file snapshot format.
//! - `snapshot`: building, storing and installing snapshots.
//! - `backup`: backups (snapshot archives taken on request), checked and
//!   restored.
//!
//! The Raft log is the write-ahead log: applied batches skip the engine's
//! WAL and become durable when the engine flushes its memtable. After a
//! crash the engine reports the applied state of its last flush, and
//! openraft re-applies the log from there. The log is purged only below
//! snapshots, and building a snapshot flushes the engine, so no purged
//! entry is ever missing from the durable state.

pub mod archive;
pub mod backup;
mod engine;
pub mod keys;
pub mod sessions;
mod snapshot;
mod transfer;

use std::path::{Path, PathBuf};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, StorageIOError};
use prost::Message;
use proto::raft as pb;
use storage::{Db, WriteBatch, WriteOptions};

use crate::codec;
use crate::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
pub use engine::{encoded_pair_bytes, Engine, PageBounds, RangePage};
use sessions::{Sessions, Verdict};
pub use snapshot::SnapshotBuilder;
#[cfg(feature = "fuzzing")]
pub(crate) use snapshot::{encode_meta, CURRENT_SNAPSHOT_FILE, GENERATION_FILE, META_SUFFIX, SNAPSHOTS_DIR};
pub use transfer::SnapshotData;

/// An applied batch is written to the engine once it holds this many bytes,
/// so one apply call never builds an unbounded batch.
const APPLY_BATCH_BYTES_MAX: usize = 32 << 20;

/// Errors opening the state machine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateMachineError {
    /// The engine failed.
    #[error("storage engine: {0}")]
    Storage(#[from] storage::Error),
    /// A file of the state machine could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Stored state does not decode.
    #[error("corrupt state machine data: {0}")]
    Corrupt(String),
}

/// The state machine openraft drives.
pub struct StateMachine {
    layout: snapshot::Layout,
    engine: Engine,
    engine_options: storage::Options,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    sessions: Sessions,
    /// The index of `last_applied` (0 for none), published for the log
    /// store, which purges no entry this state machine has not applied
    /// ([`crate::log_store::LogStore::purge_after_applied`]).
    applied_index: tokio::sync::watch::Sender<u64>,
}

impl StateMachine {
    /// Opens the state machine under `dir` (creating it if new).
    pub fn open(dir: &Path, engine_options: storage::Options) -> Result<Self, StateMachineError> {
        let layout = snapshot::Layout::open(std::sync::Arc::clone(&engine_options.fs), dir)?;
        let db = Db::open(layout.current_generation_dir(), engine_options.clone())?;
        let AppliedState {
            last_applied,
            membership,
            clock_ms,
        } = applied_state_of(&db)?;
        let sessions = load_sessions(&db, clock_ms)?;
        tracing::info!(?last_applied, sessions = sessions.len(), "state machine opened");
        Ok(StateMachine {
            layout,
            engine: Engine::new(db),
            engine_options,
            last_applied,
            membership,
            sessions,
            applied_index: tokio::sync::watch::Sender::new(last_applied.map_or(0, |l| l.index)),
        })
    }

    /// The index of the last entry applied (0 for none), updated as
    /// entries are applied and snapshots installed.
    pub fn applied_index(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied_index.subscribe()
    }

    /// Publishes `last_applied` to [`StateMachine::applied_index`].
    fn publish_applied(&self) {
        self.applied_index
            .send_replace(self.last_applied.map_or(0, |l| l.index));
    }

    /// The engine handle, shared with the read path.
    pub fn engine(&self) -> Engine {
        self.engine.clone()
    }

    /// Applies one command at `log_id` into `batch`, returning its result.
    /// `position` is the command's place in its entry (0 for a lone one).
    fn apply_command(
        &mut self,
        batch: &mut WriteBatch,
        log_id: &LogId,
        position: u64,
        command: &pb::Command,
    ) -> pb::CommandResult {
        let index = log_id.index;
        self.sessions.advance_clock(command.proposed_at_ms);
        let mut result = pb::CommandResult {
            applied_index: index,
            ..Default::default()
        };
        if command.client_id != 0 {
            match self
                .sessions
                .admit(command.client_id, command.sequence, command.first_unanswered, index)
            {
                Verdict::Apply => {}
                Verdict::Duplicate { applied_index } => {
                    result.applied_index = applied_index;
                    result.duplicate = true;
                    return result;
                }
                Verdict::Refuse(refusal) => {
                    result.set_refusal(refusal);
                    return result;
                }
            }
        }
        match &command.op {
            Some(pb::command::Op::Put(put)) => {
                batch.put(keys::user_key(&put.key), &put.value);
            }
            Some(pb::command::Op::Delete(delete)) => {
                batch.delete(keys::user_key(&delete.key));
            }
            Some(pb::command::Op::BatchPut(batch_put)) => {
                for pair in &batch_put.pairs {
                    batch.put(keys::user_key(&pair.key), &pair.value);
                }
            }
            Some(pb::command::Op::Commands(commands)) => {
                result.results = commands
                    .commands
                    .iter()
                    .zip(0..)
                    .map(|(command, position)| self.apply_command(batch, log_id, position, command))
                    .collect();
            }
            Some(pb::command::Op::OpenSession(_)) => match self.sessions.open(index, position) {
                Ok(client_id) => result.opened_client_id = client_id,
                Err(refusal) => result.set_refusal(refusal),
            },
            // An empty command changes nothing but still takes its index.
            None => {}
        }
        result
    }

    /// Writes `batch` with the sessions it changed and the current applied
    /// state attached, without the engine's WAL (the Raft log is the WAL).
    /// Sessions go in the same atomic batch as the writes that changed
    /// them: a crash can then never keep a write but forget it was applied.
    async fn commit(&mut self, mut batch: WriteBatch) -> Result<(), StorageError> {
        for (client_id, session) in self.sessions.take_changed() {
            match session {
                Some(session) => batch.put(keys::session_key(client_id), session.encode_to_vec()),
                None => batch.delete(keys::session_key(client_id)),
            };
        }
        let state = pb::AppliedState {
            last_applied: codec::opt_log_id_to_pb(self.last_applied.as_ref()),
            membership: Some(codec::stored_membership_to_pb(&self.membership)),
            clock_ms: self.sessions.clock_ms(),
        };
        batch.set_metadata(state.encode_to_vec());
        let db = self.engine.db();
        let options = WriteOptions {
            sync: false,
            disable_wal: true,
        };
        // Without the WAL a write that need not wait is a memtable insert
        // (microseconds): made here, it saves handing the batch to a
        // blocking thread and back, two thread wake-ups per apply. A write
        // that may wait (a memtable to freeze, compaction behind) goes to
        // the blocking pool, so this task never stalls its worker thread.
        let written = if db.write_may_wait(batch.approximate_bytes()) {
            tokio::task::spawn_blocking(move || db.write(batch, &options))
                .await
                .map_err(|e| StorageIOError::write_state_machine(&e))?
        } else {
            db.write(batch, &options)
        };
        written.map_err(|e| StorageIOError::write_state_machine(&e))?;
        Ok(())
    }
}

/// The applied state stored with the engine's newest data.
struct AppliedState {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    clock_ms: u64,
}

/// Reads the applied state stored with the engine's newest data.
fn applied_state_of(db: &Db) -> Result<AppliedState, StateMachineError> {
    let Some(raw) = db.metadata() else {
        return Ok(AppliedState {
            last_applied: None,
            membership: StoredMembership::default(),
            clock_ms: 0,
        });
    };
    let state = pb::AppliedState::decode(raw.as_ref())
        .map_err(|e| StateMachineError::Corrupt(format!("applied state: {e}")))?;
    let corrupt = |e: codec::CodecError| StateMachineError::Corrupt(format!("applied state: {e}"));
    Ok(AppliedState {
        last_applied: codec::opt_log_id_from_pb(state.last_applied.as_ref()).map_err(corrupt)?,
        membership: codec::stored_membership_from_pb(state.membership.as_ref()).map_err(corrupt)?,
        clock_ms: state.clock_ms,
    })
}

/// Loads every stored exactly-once session, with the session clock.
fn load_sessions(db: &Db, clock_ms: u64) -> Result<Sessions, StateMachineError> {
    let (lower, upper) = keys::session_range();
    let mut stored = Vec::new();
    for pair in db.scan(keys::bounds(&lower, &upper))? {
        let (key, value) = pair?;
        let client_id = keys::session_client_id(&key)
            .ok_or_else(|| StateMachineError::Corrupt("malformed session key".to_string()))?;
        let session =
            pb::Session::decode(value.as_ref()).map_err(|e| StateMachineError::Corrupt(format!("session: {e}")))?;
        stored.push((client_id, session));
    }
    Sessions::from_stored(stored, clock_ms).map_err(|e| StateMachineError::Corrupt(e.to_string()))
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<pb::CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut results = Vec::new();
        let mut batch = WriteBatch::new();
        for entry in entries {
            let result = match &entry.payload {
                EntryPayload::Blank => pb::CommandResult {
                    applied_index: entry.log_id.index,
                    ..Default::default()
                },
                EntryPayload::Normal(command) => {
                    // Checked when the entry entered the log; failing here is
                    // damage in memory, reported rather than skipped.
                    let command = command.decode().map_err(|e| StorageIOError::apply(entry.log_id, &e))?;
                    self.apply_command(&mut batch, &entry.log_id, 0, &command)
                }
                EntryPayload::Membership(membership) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                    pb::CommandResult {
                        applied_index: entry.log_id.index,
                        ..Default::default()
                    }
                }
            };
            self.last_applied = Some(entry.log_id);
            results.push(result);
            if batch.approximate_bytes() >= APPLY_BATCH_BYTES_MAX {
                self.commit(std::mem::take(&mut batch)).await?;
            }
        }
        self.commit(batch).await?;
        self.publish_applied();
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder::new(self.engine.clone(), self.layout.clone())
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        Ok(Box::new(self.layout.receive()))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<SnapshotData>) -> Result<(), StorageError> {
        let signature = Some(meta.signature());
        let mut snapshot = if snapshot.is_incoming() {
            *snapshot
        } else {
            // A snapshot this node built (openraft's own tests install one):
            // received from itself, through the same unpacking path.
            let mut incoming = self.layout.receive();
            let mut outgoing = *snapshot;
            tokio::io::copy(&mut outgoing, &mut incoming)
                .await
                .map_err(|e| StorageIOError::write_snapshot(signature.clone(), &e))?;
            incoming
        };
        // `snapshot` lives on until the install is done: while it does, no
        // other reception takes its directory for garbage.
        let (received, archived) = snapshot
            .finish_receiving()
            .await
            .map(|(dir, meta)| (dir.to_path_buf(), meta.clone()))
            .map_err(|e| StorageIOError::write_snapshot(signature.clone(), &e))?;
        let layout = self.layout.clone();
        let options = self.engine_options.clone();
        let expected = codec::snapshot_meta_to_pb(meta);
        let db = tokio::task::spawn_blocking(move || layout.install(&received, &archived, &expected, options))
            .await
            .map_err(|e| StorageIOError::write_snapshot(signature.clone(), &e))?
            .map_err(|e| StorageIOError::write_snapshot(signature.clone(), &e))?;
        let sessions = applied_state_of(&db)
            .and_then(|state| load_sessions(&db, state.clock_ms))
            .map_err(|e| StorageIOError::write_snapshot(signature, &e))?;
        let old = self.engine.replace(db);
        drop(old);
        drop(snapshot);
        self.layout.remove_stale_generations();
        self.sessions = sessions;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        // Only now may the log store purge what the snapshot covers: were
        // it purged before the switch above, a crash in between would leave
        // this node with an old state machine and no log to replay onto it.
        self.publish_applied();
        tracing::info!(last_log_id = ?meta.last_log_id, id = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<openraft::Snapshot<TypeConfig>>, StorageError> {
        self.layout
            .current_snapshot()
            .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}
