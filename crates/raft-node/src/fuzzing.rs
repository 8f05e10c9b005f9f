//! Entry points that run the node's decoders over untrusted bytes: for the
//! fuzz targets in the repository's `fuzz/` directory and for the tests
//! that replay their corpora on stable Rust (`tests/decoders.rs`).
//!
//! Each entry point takes one fuzz input, decodes it the way the node reads
//! it from disk or from a peer, and returns what the node returns. An error
//! is a fine answer; a panic, a hang or an allocation the input's size does
//! not bound is a bug. The Raft log lives on the simulated disk
//! (`storage::sim::SimFs`); the snapshot archive, the identity file and the
//! state machine's directories, which the node reads with `std::fs`, live
//! in a temporary directory that is removed afterwards.
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
use crate::types::{Entry, LogId};

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

/// Why [`apply_commands`] stopped.
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
