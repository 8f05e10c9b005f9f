//! Entry points that run the node's decoders over untrusted bytes: for the
//! fuzz targets in the repository's `fuzz/` directory and for the tests
//! that replay their corpora on stable Rust (`tests/decoders.rs`).
//!
//! Each entry point takes one fuzz input, decodes it the way the node reads
//! it from disk or from a peer, and returns what the node returns. An error
//! is a fine answer; a panic, a hang or an allocation the input's size does
//! not bound is a bug. The Raft log and the state machine's files live on
//! the simulated disk (`storage::sim::SimFs`); the snapshot archive and the
//! identity file, which these entry points hand the node through
//! `std::fs`, live in a temporary directory that is removed afterwards.
//!
//! [`read_log_segment`] reads the input's first byte as a mode: bit 0 set,
//! the rest is a list of record payloads ([`storage::fuzzing::split_payloads`])
//! framed with valid checksums, so that fuzzing reaches the record decoder
//! behind them (format 1, which the store still reads); clear, the rest is
//! the segment file as is. Bit 1 set, an empty newer segment follows, so
//! the input is not the last segment (where a torn tail is damage, not a
//! crash's leftover). Bits 2 to 7 are the segment's number minus one
//! (format 2's records name their segment: a recycled segment is read
//! under its own number).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload};
use storage::fuzzing::split_payloads;
use storage::io::FileSystem;
use storage::sim::SimFs;

use crate::command::LogCommand;
use crate::log_store::{LogStore, LogStoreError, LogStoreOptions};
use crate::state_machine::archive::{self, ArchiveError};
use crate::state_machine::StateMachine;
use crate::types::{Entry, LogId, StoredMembership};

/// Commands one input may hold (each becomes an entry applied in order).
pub const COMMANDS_PER_INPUT_MAX: usize = 64;
/// Where the log's segments lie on the simulated disk.
const LOG_DIR: &str = "/raft-log";
/// Seed of the simulated disk (no crash is ever drawn from it).
const SIM_SEED: u64 = 1;

/// Options for a log store that never preallocates (a spare would write
/// a whole segment of zeros per input).
fn log_options() -> LogStoreOptions {
    LogStoreOptions {
        preallocate: false,
        ..LogStoreOptions::default()
    }
}

/// What a log store recovered from a fuzzed segment.
#[derive(Debug, Clone, PartialEq)]
pub struct RecoveredLog {
    /// Every entry the store serves, in index order.
    pub entries: Vec<Entry>,
    /// The last purged and the last log id.
    pub log_state: (Option<LogId>, Option<LogId>),
    /// Whether a vote was recovered.
    pub has_vote: bool,
}

/// Opens a log store whose only segment (or first of two, see the module
/// doc) holds `input`, and reads every entry it then serves.
pub fn read_log_segment(input: &[u8]) -> Result<RecoveredLog, LogStoreError> {
    let mode = input.first().copied().unwrap_or(0);
    let rest = input.get(1..).unwrap_or_default();
    let file = if mode & 1 == 1 {
        let mut file = crate::log_store::segment_header().to_vec();
        for payload in split_payloads(rest) {
            crate::log_store::frame_record(&mut file, payload);
        }
        file
    } else {
        rest.to_vec()
    };
    let fs = SimFs::new(SIM_SEED);
    let dir = Path::new(LOG_DIR);
    let write = |seq: u64, bytes: &[u8]| -> Result<(), LogStoreError> {
        let path = crate::log_store::segment_file(dir, seq);
        fs.create_dir_all(dir)
            .and_then(|()| fs.create_new(&path))
            .and_then(|f| f.append(bytes))
            .map_err(|e| LogStoreError::io("write", &path, e))
    };
    let seq = 1 + u64::from(mode >> 2);
    write(seq, &file)?;
    if mode & 2 == 2 {
        write(seq + 1, &crate::log_store::segment_header())?;
    }
    let store = LogStore::open_on(fs as Arc<dyn FileSystem>, dir, log_options())?;
    let log_state = store.log_state();
    let entries = match log_state.1 {
        Some(last) => store.reader().entries(..=last.index)?,
        None => Vec::new(),
    };
    Ok(RecoveredLog {
        entries,
        log_state,
        has_vote: store.vote().is_some(),
    })
}

/// Encoded segment contents written by the log store itself for `entries`
/// and a vote (seed inputs): the bytes of every segment it left, in order.
pub fn segments_of(entries: Vec<Entry>) -> Result<Vec<Vec<u8>>, LogStoreError> {
    let fs = SimFs::new(SIM_SEED);
    let dir = Path::new(LOG_DIR);
    let runtime = current_thread_runtime().map_err(|e| LogStoreError::io("start a runtime in", dir, e))?;
    {
        let mut store = LogStore::open_on(Arc::clone(&fs) as Arc<dyn FileSystem>, dir, log_options())?;
        runtime.block_on(async {
            use openraft::storage::RaftLogStorageExt;
            store
                .save_vote(&crate::types::Vote::new(1, 1))
                .await
                .map_err(|e| LogStoreError::io("save the vote in", dir, std::io::Error::other(e.to_string())))?;
            store
                .blocking_append(entries)
                .await
                .map_err(|e| LogStoreError::io("append to", dir, std::io::Error::other(e.to_string())))
        })?;
    }
    let mut names = fs.list_dir(dir).map_err(|e| LogStoreError::io("list", dir, e))?;
    names.sort();
    Ok(names
        .iter()
        .filter_map(|name| fs.contents(&dir.join(name)))
        .filter(|bytes| !bytes.is_empty())
        .collect())
}

/// The record payloads of a segment this build wrote (format 2), for
/// seeds of [`read_log_segment`]'s framed mode: the segment number is taken
/// from its first record.
pub fn segment_payloads(segment: &[u8]) -> Vec<Vec<u8>> {
    use storage::framing::{named, FILE_HEADER_BYTES};
    let number = segment
        .get(FILE_HEADER_BYTES + 8..FILE_HEADER_BYTES + 16)
        .and_then(|bytes| bytes.try_into().ok())
        .map_or(0, u64::from_le_bytes);
    let scan = named::scan(segment, FILE_HEADER_BYTES, crate::log_store::RECORD_BYTES_MAX, number);
    scan.payloads.into_iter().map(|range| segment[range].to_vec()).collect()
}

/// Bytes of each segment of the log [`recycled_segment`] writes: small, so
/// that it rolls through many.
const RECYCLED_SEED_SEGMENT_BYTES: u64 = 2048;
/// Entries [`recycled_segment`] appends at most while it waits for a
/// recycled segment.
const RECYCLED_SEED_ENTRIES_MAX: u64 = 10_000;

/// A recycled segment as the log store leaves it (a seed input): the
/// number and bytes of a segment that was a purged one, holding the
/// opening and a few entries of its new life, then its earlier records.
pub fn recycled_segment() -> Result<(u64, Vec<u8>), LogStoreError> {
    let fs = SimFs::new(SIM_SEED);
    let dir = Path::new(LOG_DIR);
    let options = LogStoreOptions {
        segment_bytes_max: RECYCLED_SEED_SEGMENT_BYTES,
        preallocate: true,
        memory_window_bytes_max: 0,
        node_id: None,
    };
    let log_id = |index| LogId::new(CommittedLeaderId::new(1, 1), index);
    let stuck = || {
        LogStoreError::io(
            "recycle a segment in",
            dir,
            std::io::Error::other("no segment was recycled"),
        )
    };
    {
        let mut store = LogStore::open_on(Arc::clone(&fs) as Arc<dyn FileSystem>, dir, options)?;
        let mut index = 0;
        let mut append = |store: &mut LogStore| {
            index += 1;
            let entry = Entry {
                log_id: log_id(index),
                payload: EntryPayload::Blank,
            };
            store.append_with_callback([entry], |_| {}).map(|()| index)
        };
        let mut last = 0;
        while store.metrics().segments < 4 && last < RECYCLED_SEED_ENTRIES_MAX {
            last = append(&mut store)?;
        }
        store.purge_upto(log_id(last))?;
        while store.metrics().recycled_segments == 0 && last < RECYCLED_SEED_ENTRIES_MAX {
            last = append(&mut store)?;
        }
        if store.metrics().recycled_segments == 0 {
            return Err(stuck());
        }
        // The segment's entries so far are purged; a few live ones follow.
        store.purge_upto(log_id(last))?;
        for _ in 0..3 {
            append(&mut store)?;
        }
    }
    let names = fs.list_dir(dir).map_err(|e| LogStoreError::io("list", dir, e))?;
    let newest = names
        .iter()
        .filter_map(|name| name.strip_prefix("log-")?.strip_suffix(".seg")?.parse::<u64>().ok())
        .max()
        .ok_or_else(stuck)?;
    let bytes = fs
        .contents(&crate::log_store::segment_file(dir, newest))
        .ok_or_else(stuck)?;
    Ok((newest, bytes))
}

/// A current-thread runtime for the async storage traits.
fn current_thread_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

/// Why [`apply_commands`] or another state machine entry point stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The temporary directory or the runtime could not be set up.
    #[error("fuzzing setup: {0}")]
    Setup(#[from] std::io::Error),
    /// The state machine did not open.
    #[error("state machine: {0}")]
    Open(#[from] crate::state_machine::StateMachineError),
    /// Applying failed (a storage error, never a bad command: those are
    /// refused before they enter the log).
    #[error("apply: {0}")]
    Apply(String),
    /// Reading or installing a snapshot failed.
    #[error("snapshot: {0}")]
    Snapshot(String),
}

/// Decodes each payload of `input` ([`storage::fuzzing::split_payloads`],
/// at most [`COMMANDS_PER_INPUT_MAX`]) as a command the way a follower
/// takes one from a peer, and applies those that decode, in order, to a
/// fresh state machine. Returns how many were applied.
pub fn apply_commands(input: &[u8]) -> Result<usize, ApplyError> {
    let commands: Vec<LogCommand> = split_payloads(input)
        .into_iter()
        .take(COMMANDS_PER_INPUT_MAX)
        .filter_map(|payload| LogCommand::from_encoded(Bytes::copy_from_slice(payload)).ok())
        .collect();
    for command in &commands {
        // The log prints commands it refuses or applies.
        let _ = format!("{command:?}");
    }
    if commands.is_empty() {
        return Ok(0);
    }
    let applied = commands.len();
    let entries: Vec<Entry> = commands
        .into_iter()
        .zip(1u64..)
        .map(|(command, index)| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(command),
        })
        .collect();
    let dir = tempfile::Builder::new().prefix("fuzz-apply-").tempdir()?;
    let engine = storage::Options {
        fs: SimFs::new(SIM_SEED) as Arc<dyn FileSystem>,
        compaction_threads: 1,
        ..storage::Options::default()
    };
    let mut machine = StateMachine::open(dir.path(), engine)?;
    current_thread_runtime()?
        .block_on(machine.apply(entries))
        .map_err(|e| ApplyError::Apply(e.to_string()))?;
    Ok(applied)
}

/// Where the state machine targets' files lie on the simulated disk.
const SM_DIR: &str = "/state-machine";
/// The state machine clock (a leader timestamp, in ms) of the session
/// target's applied state; seeds use it too.
pub const SESSIONS_CLOCK_MS: u64 = 1_700_000_000_000;
/// The last applied index of the session target's applied state.
const SESSIONS_APPLIED_INDEX: u64 = 10;
/// Session records one [`reopen_with_sessions`] input may hold.
pub const SESSIONS_PER_INPUT_MAX: usize = 64;
/// The snapshot that the [`read_current_snapshot`] target's files
/// describe: a checkpoint directory of this name is on the disk.
pub const SNAPSHOT_ID: &str = "snap-0000000000000001";

/// Engine options on the simulated disk `fs`, with one compaction thread.
fn sim_engine_options(fs: &Arc<SimFs>) -> storage::Options {
    storage::Options {
        fs: Arc::clone(fs) as Arc<dyn FileSystem>,
        compaction_threads: 1,
        ..storage::Options::default()
    }
}

/// An openraft error of the state machine, for [`ApplyError`].
fn storage_error(e: crate::types::StorageError) -> ApplyError {
    ApplyError::Apply(e.to_string())
}

/// Creates a state machine under [`SM_DIR`] on `fs` with the node's own
/// code, then writes `batch` into its engine directly (past the state
/// machine's encoders) and closes it, so that the next open decodes what
/// `batch` holds.
fn state_machine_holding(fs: &Arc<SimFs>, batch: storage::WriteBatch) -> Result<(), ApplyError> {
    let machine = StateMachine::open(Path::new(SM_DIR), sim_engine_options(fs))?;
    machine
        .engine()
        .db()
        .write(batch, &storage::WriteOptions::default())
        .map_err(crate::state_machine::StateMachineError::from)?;
    Ok(())
}

/// Reopens a state machine whose engine holds `input` as its applied state
/// (the metadata of its newest write), the way a restarted node decodes
/// it, then applies a blank entry after the last applied one (which
/// encodes the decoded membership again). Returns the applied state
/// openraft is told.
pub fn reopen_with_applied_state(input: &[u8]) -> Result<(Option<LogId>, StoredMembership), ApplyError> {
    let fs = SimFs::new(SIM_SEED);
    let mut batch = storage::WriteBatch::new();
    batch.set_metadata(input.to_vec());
    state_machine_holding(&fs, batch)?;
    let mut machine = StateMachine::open(Path::new(SM_DIR), sim_engine_options(&fs))?;
    current_thread_runtime()?.block_on(async {
        let state = machine.applied_state().await.map_err(storage_error)?;
        // An index no log reaches is refused by the log, never applied.
        let next = state.0.and_then(|last| {
            let index = last.index.checked_add(1)?;
            Some(LogId::new(last.leader_id, index))
        });
        if let Some(log_id) = next {
            let blank = Entry {
                log_id,
                payload: EntryPayload::Blank,
            };
            machine.apply([blank]).await.map_err(storage_error)?;
        }
        Ok(state)
    })
}

/// The applied state a state machine stores after `last_applied` with
/// `membership` and session clock `clock_ms`, encoded (seed inputs).
pub fn encode_applied_state(last_applied: Option<LogId>, membership: &StoredMembership, clock_ms: u64) -> Vec<u8> {
    use prost::Message;
    proto::raft::AppliedState {
        last_applied: crate::codec::opt_log_id_to_pb(last_applied.as_ref()),
        membership: Some(crate::codec::stored_membership_to_pb(membership)),
        clock_ms,
    }
    .encode_to_vec()
}

/// Reopens a state machine whose engine holds the session records of
/// `input`, the way a restarted node (or one that installed a snapshot)
/// rebuilds its exactly-once table, then applies the writes a client may
/// send next under each session.
///
/// The input's payloads ([`storage::fuzzing::split_payloads`], at most
/// [`SESSIONS_PER_INPUT_MAX`] pairs) come in pairs: what follows the
/// session prefix in the record's engine key (a client id, 8 bytes
/// big-endian, when well formed) and the record (`raft.v1.Session`). The
/// engine's applied state is at index 10 with clock [`SESSIONS_CLOCK_MS`].
/// Under each well-formed client id, writes at sequences 1, 2, the edge of
/// the window and `u64::MAX` are applied, then a command two idle periods
/// later that expires every session. Returns the commands' results.
pub fn reopen_with_sessions(input: &[u8]) -> Result<Vec<proto::raft::CommandResult>, ApplyError> {
    use crate::state_machine::{keys, sessions};
    let fs = SimFs::new(SIM_SEED);
    let mut batch = storage::WriteBatch::new();
    let (prefix, _) = keys::session_range();
    let mut client_ids = Vec::new();
    for pair in split_payloads(input).chunks(2).take(SESSIONS_PER_INPUT_MAX) {
        let (suffix, record) = match pair {
            [suffix, record] => (*suffix, *record),
            [suffix] => (*suffix, &[][..]),
            _ => continue,
        };
        let mut key = prefix.clone();
        key.extend_from_slice(suffix);
        if let Some(client_id) = keys::session_client_id(&key) {
            client_ids.push(client_id);
        }
        batch.put(key, record);
    }
    let applied = LogId::new(CommittedLeaderId::new(1, 1), SESSIONS_APPLIED_INDEX);
    batch.set_metadata(encode_applied_state(
        Some(applied),
        &StoredMembership::default(),
        SESSIONS_CLOCK_MS,
    ));
    state_machine_holding(&fs, batch)?;
    let mut machine = StateMachine::open(Path::new(SM_DIR), sim_engine_options(&fs))?;
    let write = |client_id, sequence, first_unanswered, proposed_at_ms| proto::raft::Command {
        op: Some(proto::raft::command::Op::Put(proto::raft::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
        })),
        client_id,
        sequence,
        first_unanswered,
        proposed_at_ms,
    };
    let mut commands = Vec::new();
    for &client_id in &client_ids {
        for (sequence, first_unanswered) in [
            (1, 1),
            (2, 1),
            (sessions::SESSION_WRITES_UNANSWERED_MAX, 2),
            (u64::MAX, u64::MAX),
        ] {
            commands.push(write(client_id, sequence, first_unanswered, SESSIONS_CLOCK_MS));
        }
    }
    commands.push(write(0, 0, 0, SESSIONS_CLOCK_MS + 2 * sessions::SESSION_IDLE_MS_MAX));
    let entries: Vec<Entry> = commands
        .iter()
        .zip(SESSIONS_APPLIED_INDEX + 1..)
        .map(|(command, index)| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(LogCommand::encode(command)),
        })
        .collect();
    current_thread_runtime()?
        .block_on(machine.apply(entries))
        .map_err(storage_error)
}

/// Reopens a state machine whose current snapshot is described by the
/// files of `input`, and reads that snapshot whole, the way a node serves
/// it to a follower after a restart: the snapshots directory's `CURRENT`
/// names the snapshot, its metadata file describes it, and the archive
/// streamed carries that metadata.
///
/// The input's first byte is a mode, the rest two payloads
/// ([`storage::fuzzing::split_payloads`]): `CURRENT`, then the metadata
/// file as is (mode even) or the `raft.v1.SnapshotMeta` it holds, framed
/// by the node's encoder with a valid checksum (mode odd). A missing
/// payload leaves its file out. A checkpoint named [`SNAPSHOT_ID`] is on
/// the disk beside them. Returns the metadata openraft is given, if any.
pub fn read_current_snapshot(input: &[u8]) -> Result<Option<crate::types::SnapshotMeta>, ApplyError> {
    use crate::state_machine::{encode_meta, CURRENT_SNAPSHOT_FILE, META_SUFFIX, SNAPSHOTS_DIR};
    let mode = input.first().copied().unwrap_or(0);
    let payloads = split_payloads(input.get(1..).unwrap_or_default());
    let fs = SimFs::new(SIM_SEED);
    let snapshots = Path::new(SM_DIR).join(SNAPSHOTS_DIR);
    {
        let machine = StateMachine::open(Path::new(SM_DIR), sim_engine_options(&fs))?;
        machine
            .engine()
            .db()
            .checkpoint(snapshots.join(SNAPSHOT_ID))
            .map_err(crate::state_machine::StateMachineError::from)?;
    }
    let write = |name: &str, bytes: &[u8]| {
        storage::io::write_atomically(&*fs, &snapshots, name, bytes)
            .map_err(crate::state_machine::StateMachineError::from)
    };
    if let Some(current) = payloads.first() {
        write(CURRENT_SNAPSHOT_FILE, current)?;
    }
    if let Some(meta) = payloads.get(1) {
        let file = if mode & 1 == 1 {
            encode_meta(meta)
        } else {
            meta.to_vec()
        };
        write(&format!("{SNAPSHOT_ID}{META_SUFFIX}"), &file)?;
    }
    let mut machine = StateMachine::open(Path::new(SM_DIR), sim_engine_options(&fs))?;
    current_thread_runtime()?.block_on(async {
        use tokio::io::AsyncReadExt;
        let Some(snapshot) = machine.get_current_snapshot().await.map_err(storage_error)? else {
            return Ok(None);
        };
        let mut archive = Vec::new();
        let mut stream = snapshot.snapshot;
        stream.read_to_end(&mut archive).await?;
        Ok(Some(snapshot.meta))
    })
}

/// The metadata file the node writes beside a snapshot described by `meta`
/// (seed inputs).
pub fn snapshot_meta_file(meta: &crate::types::SnapshotMeta) -> Vec<u8> {
    use prost::Message;
    crate::state_machine::encode_meta(&crate::codec::snapshot_meta_to_pb(meta).encode_to_vec())
}

/// The snapshot [`install_after_generation`] installs: its metadata and
/// archive, taken once from a state machine that applied a few writes.
fn template_snapshot() -> Result<&'static (crate::types::SnapshotMeta, Vec<u8>), ApplyError> {
    static TEMPLATE: std::sync::OnceLock<Result<(crate::types::SnapshotMeta, Vec<u8>), String>> =
        std::sync::OnceLock::new();
    let template = TEMPLATE.get_or_init(|| {
        let build = || -> Result<_, ApplyError> {
            let fs = SimFs::new(SIM_SEED);
            let mut machine = StateMachine::open(Path::new(SM_DIR), sim_engine_options(&fs))?;
            current_thread_runtime()?.block_on(async {
                use openraft::RaftSnapshotBuilder;
                use tokio::io::AsyncReadExt;
                let entries = (1..=3u64).map(|index| Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                    payload: EntryPayload::Normal(LogCommand::encode(&proto::raft::Command {
                        op: Some(proto::raft::command::Op::Put(proto::raft::Put {
                            key: format!("k{index}").into_bytes().into(),
                            value: Bytes::from_static(b"v"),
                        })),
                        ..Default::default()
                    })),
                });
                machine.apply(entries).await.map_err(storage_error)?;
                let snapshot = machine
                    .get_snapshot_builder()
                    .await
                    .build_snapshot()
                    .await
                    .map_err(storage_error)?;
                let mut archive = Vec::new();
                let mut stream = snapshot.snapshot;
                stream.read_to_end(&mut archive).await?;
                Ok((snapshot.meta, archive))
            })
        };
        build().map_err(|e| e.to_string())
    });
    template
        .as_ref()
        .map_err(|e| ApplyError::Snapshot(format!("the template snapshot: {e}")))
}

/// Opens a state machine whose `GENERATION` file (which engine directory
/// is in use) holds `input`, the way a restarted node reads it, then
/// installs a snapshot, which moves the engine to the next generation.
/// Returns the last log id the installed snapshot covers.
pub fn install_after_generation(input: &[u8]) -> Result<Option<LogId>, ApplyError> {
    use crate::state_machine::GENERATION_FILE;
    let (meta, archive) = template_snapshot()?;
    let fs = SimFs::new(SIM_SEED);
    let root = Path::new(SM_DIR);
    storage::io::create_dir_all(&*fs, root).map_err(crate::state_machine::StateMachineError::from)?;
    storage::io::write_atomically(&*fs, root, GENERATION_FILE, input)
        .map_err(crate::state_machine::StateMachineError::from)?;
    let mut machine = StateMachine::open(root, sim_engine_options(&fs))?;
    install_template(&mut machine, meta, archive)?;
    current_thread_runtime()?.block_on(async {
        let (last_applied, _) = machine.applied_state().await.map_err(storage_error)?;
        Ok(last_applied)
    })
}

/// Installs the template snapshot (`meta`, `archive`) into `machine`, as a
/// follower installs one its leader streamed.
fn install_template(
    machine: &mut StateMachine,
    meta: &crate::types::SnapshotMeta,
    archive: &[u8],
) -> Result<(), ApplyError> {
    current_thread_runtime()?.block_on(async {
        use tokio::io::AsyncWriteExt;
        let mut incoming = machine.begin_receiving_snapshot().await.map_err(storage_error)?;
        incoming.write_all(archive).await?;
        machine
            .install_snapshot(meta, incoming)
            .await
            .map_err(|e| ApplyError::Snapshot(e.to_string()))
    })
}

/// The `GENERATION` files a state machine writes (seed inputs): when it is
/// created, and after it installs a snapshot.
pub fn generation_files() -> Result<Vec<Vec<u8>>, ApplyError> {
    use crate::state_machine::GENERATION_FILE;
    let (meta, archive) = template_snapshot()?;
    let fs = SimFs::new(SIM_SEED);
    let path = Path::new(SM_DIR).join(GENERATION_FILE);
    let read = || {
        fs.contents(&path)
            .ok_or_else(|| ApplyError::Snapshot(format!("{} was not written", path.display())))
    };
    let mut machine = StateMachine::open(Path::new(SM_DIR), sim_engine_options(&fs))?;
    let created = read()?;
    install_template(&mut machine, meta, archive)?;
    Ok(vec![created, read()?])
}

/// Unpacks `input` as a snapshot archive into a temporary directory, the
/// way a follower installs a snapshot a leader streamed to it.
pub fn unpack_archive(input: &[u8]) -> Result<crate::types::SnapshotMeta, ArchiveError> {
    let io = |source| ArchiveError::Io {
        path: std::env::temp_dir(),
        source,
    };
    let dir = tempfile::Builder::new().prefix("fuzz-archive-").tempdir().map_err(io)?;
    let meta = archive::unpack(input, &storage::io::RealFs, &dir.path().join("unpacked"))?;
    crate::codec::snapshot_meta_from_pb(&meta).map_err(|e| ArchiveError::Corrupt(e.to_string()))
}

/// An archive of `files` (name, contents) with `meta`, written by the
/// node's packer (seed inputs).
pub fn pack_archive(files: &[(&str, &[u8])], meta: &crate::types::SnapshotMeta) -> Result<Vec<u8>, ArchiveError> {
    let io = |source| ArchiveError::Io {
        path: std::env::temp_dir(),
        source,
    };
    let dir = tempfile::Builder::new().prefix("fuzz-pack-").tempdir().map_err(io)?;
    for (name, contents) in files {
        std::fs::write(dir.path().join(name), contents).map_err(io)?;
    }
    let mut out = Vec::new();
    archive::pack_to(
        &storage::io::RealFs,
        dir.path(),
        &crate::codec::snapshot_meta_to_pb(meta),
        &mut out,
    )?;
    Ok(out)
}

/// Checks `input` as the identity file of a data directory opened as node
/// 1, the way a node starting on an existing directory does.
pub fn check_identity(input: &[u8]) -> Result<(), crate::NodeError> {
    let dir = identity_dir()?;
    std::fs::write(dir.path().join(crate::cluster_id::IDENTITY_FILE), input).map_err(identity_io)?;
    crate::node::check_identity(&storage::io::RealFs, dir.path(), 1).map(|_| ())
}

/// The identity file a node writes for node `id` (seed inputs).
pub fn identity_file(id: crate::types::NodeId) -> Result<Vec<u8>, crate::NodeError> {
    let dir = identity_dir()?;
    crate::node::check_identity(&storage::io::RealFs, dir.path(), id)?;
    std::fs::read(dir.path().join(crate::cluster_id::IDENTITY_FILE)).map_err(identity_io)
}

/// A temporary data directory for the identity targets.
fn identity_dir() -> Result<tempfile::TempDir, crate::NodeError> {
    tempfile::Builder::new()
        .prefix("fuzz-identity-")
        .tempdir()
        .map_err(identity_io)
}

/// An I/O error of the identity targets' scratch directory.
fn identity_io(e: std::io::Error) -> crate::NodeError {
    crate::NodeError::DataDir {
        path: std::env::temp_dir().display().to_string(),
        reason: e.to_string(),
    }
}

/// What [`inspect_and_restore_backup`] made of a backup file.
#[derive(Debug)]
pub struct BackupOutcome {
    /// What `kvctl backup inspect` reports, or why it refused the file.
    pub inspected: Result<crate::state_machine::backup::BackupSummary, crate::state_machine::backup::BackupError>,
    /// The log id a node restored from the file continues after, or why
    /// the restore refused it.
    pub restored: Result<proto::raft::LogId, crate::state_machine::backup::BackupError>,
}

/// Reads `input` as a backup file the way an operator's tools do: inspected
/// (unpacked into a scratch directory with every checksum checked, the
/// engine in it opened, its applied state compared with the archive's
/// metadata, its keys digested), then restored as a new three-node
/// cluster's state machine on the simulated disk.
///
/// The input's first byte is a mode. Even, the rest is the file as is.
/// Odd, the rest is payloads ([`storage::fuzzing::split_payloads`]): the
/// archive's metadata (`raft.v1.SnapshotMeta`; empty metadata when it does
/// not decode), then pairs of file name and contents, packed by the node's
/// archive writer with valid checksums, so that fuzzing reaches the engine
/// files behind them. A pair whose name is not a plain file name (letters,
/// digits, `.`, `_`, `-`; at most 64 bytes) is left out.
pub fn inspect_and_restore_backup(input: &[u8]) -> Result<BackupOutcome, ApplyError> {
    use crate::state_machine::backup;
    let mode = input.first().copied().unwrap_or(0);
    let rest = input.get(1..).unwrap_or_default();
    let scratch = tempfile::Builder::new().prefix("fuzz-backup-").tempdir()?;
    let path = scratch.path().join("backup");
    if mode & 1 == 1 {
        std::fs::write(&path, pack_backup_parts(rest, &scratch.path().join("parts"))?)?;
    } else {
        std::fs::write(&path, rest)?;
    }
    let inspected = backup::inspect(&path, scratch.path());
    let fs = SimFs::new(SIM_SEED);
    let membership = crate::codec::membership_to_pb(&three_voters());
    let restored = backup::restore_state_machine(&path, Path::new(SM_DIR), membership, sim_engine_options(&fs));
    Ok(BackupOutcome { inspected, restored })
}

/// Packs the metadata and files that `parts` lists (see
/// [`inspect_and_restore_backup`]) into an archive, through `dir`.
fn pack_backup_parts(parts: &[u8], dir: &Path) -> Result<Vec<u8>, ApplyError> {
    use prost::Message;
    let payloads = split_payloads(parts);
    let meta = payloads
        .first()
        .and_then(|raw| proto::raft::SnapshotMeta::decode(*raw).ok())
        .unwrap_or_default();
    std::fs::create_dir_all(dir)?;
    for pair in payloads.get(1..).unwrap_or_default().chunks_exact(2) {
        let (name, contents) = (pair[0], pair[1]);
        let plain = !name.is_empty()
            && name.len() <= 64
            && name != b"."
            && name != b".."
            && name.iter().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b));
        if plain {
            std::fs::write(dir.join(String::from_utf8_lossy(name).as_ref()), contents)?;
        }
    }
    let mut out = Vec::new();
    archive::pack_to(&storage::io::RealFs, dir, &meta, &mut out).map_err(|e| ApplyError::Snapshot(e.to_string()))?;
    Ok(out)
}

/// The voters a restore in [`inspect_and_restore_backup`] names.
fn three_voters() -> crate::types::Membership {
    let nodes = (1..=3u64).map(|id| (id, crate::types::Node::new(format!("127.0.0.1:{id}"))));
    crate::types::Membership::new(
        vec![(1..=3).collect()],
        nodes.collect::<std::collections::BTreeMap<_, _>>(),
    )
}

/// A backup file of a state machine that applied three puts (`k1`..`k3`
/// at indexes 1..3): a snapshot archive, the same format (seed input).
pub fn backup_file() -> Result<Vec<u8>, ApplyError> {
    Ok(template_snapshot()?.1.clone())
}

/// A backup taken apart: its metadata, encoded, and its files (name,
/// contents) in name order.
pub type BackupParts = (Vec<u8>, Vec<(String, Vec<u8>)>);

/// The parts of [`backup_file`] (seed input for
/// [`inspect_and_restore_backup`]'s odd mode).
pub fn backup_parts() -> Result<BackupParts, ApplyError> {
    use prost::Message;
    let (_, archive) = template_snapshot()?;
    let dir = tempfile::Builder::new().prefix("fuzz-backup-parts-").tempdir()?;
    let meta = archive::unpack(&archive[..], &storage::io::RealFs, dir.path())
        .map_err(|e| ApplyError::Snapshot(e.to_string()))?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir.path())? {
        let entry = entry?;
        files.push((
            entry.file_name().to_string_lossy().into_owned(),
            std::fs::read(entry.path())?,
        ));
    }
    files.sort();
    Ok((meta.encode_to_vec(), files))
}
