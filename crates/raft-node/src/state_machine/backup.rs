//! Backups: a checkpoint of the state machine as one snapshot archive, read
//! back to check it, and turned into the state of a new node.
//!
//! A backup is the same archive a Raft snapshot travels in (`archive`): the
//! engine's files with a crc32 each and the metadata naming the last log id
//! they hold. Restoring writes it into a fresh data directory as if the
//! node had installed it as a snapshot, with the new cluster's membership
//! in place of the old one, so every node restored from one file starts
//! from the same state and the new cluster's log continues after it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use proto::raft as pb;
use storage::io::{FileSystem, ReadFile, RealFs};
use storage::{Db, WriteBatch, WriteOptions};

use super::archive::{self, ArchiveError, OpenedDir};
use super::snapshot::{Layout, SnapshotError};
use super::{Engine, SnapshotData};

/// Scratch directories (in the state machine's root) that a backup's
/// checkpoint is taken into; removed as soon as its files are open, and at
/// the next start if a crash came first.
pub(crate) const BACKUP_PREFIX: &str = "backup-";
/// Scratch directories a backup is unpacked into to be checked.
const INSPECT_PREFIX: &str = "inspect-";

/// A backup that cannot be taken, read or restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The archive is damaged or could not be read or written.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The engine failed.
    #[error("storage engine: {0}")]
    Storage(#[from] storage::Error),
    /// Installing the restored state failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The backup's parts disagree, or it holds no state.
    #[error("backup is inconsistent: {0}")]
    Inconsistent(String),
}

/// A backup ready to stream: the checkpoint's files, open, and its metadata.
#[derive(Debug)]
pub struct BackupSource {
    opened: OpenedDir,
    meta: pb::SnapshotMeta,
    total_bytes: u64,
}

impl BackupSource {
    /// Checkpoints `engine` (blocking: it flushes the memtable) and opens
    /// the checkpoint's files. The checkpoint's directory is removed before
    /// this returns; the open files keep its contents readable.
    pub fn take(engine: &Engine) -> Result<BackupSource, BackupError> {
        let db = engine.db();
        let root = db
            .path()
            .parent()
            .ok_or_else(|| BackupError::Inconsistent("the engine directory has no parent".into()))?
            .to_path_buf();
        let dir = root.join(format!("{BACKUP_PREFIX}{:016x}", fastrand::u64(..)));
        let opened = checkpoint_into(&db, &dir);
        remove_dir(db.fs().as_ref(), &dir);
        let (opened, meta) = opened?;
        let total_bytes = archive::packed_len(&opened, &meta);
        Ok(BackupSource {
            opened,
            meta,
            total_bytes,
        })
    }

    /// The last log id the backup holds, if any.
    pub fn last_log_id(&self) -> Option<&pb::LogId> {
        self.meta.last_log_id.as_ref()
    }

    /// The archive's size in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The archive, packed as it is read.
    pub fn into_stream(self) -> SnapshotData {
        SnapshotData::outgoing(self.opened, self.meta)
    }
}

fn checkpoint_into(db: &Db, dir: &Path) -> Result<(OpenedDir, pb::SnapshotMeta), BackupError> {
    let state = decode_applied_state(db.checkpoint(dir)?)?;
    let last = state
        .last_applied
        .ok_or_else(|| BackupError::Inconsistent("nothing has been applied yet".into()))?;
    let meta = pb::SnapshotMeta {
        snapshot_id: format!("backup-{}", last.index),
        last_log_id: Some(last),
        last_membership: state.membership,
    };
    Ok((OpenedDir::open(db.fs().as_ref(), dir)?, meta))
}

fn decode_applied_state(raw: Option<bytes::Bytes>) -> Result<pb::AppliedState, BackupError> {
    raw.map(|raw| pb::AppliedState::decode(raw.as_ref()))
        .transpose()
        .map_err(|e| BackupError::Inconsistent(format!("applied state: {e}")))
        .map(Option::unwrap_or_default)
}

/// What a backup file holds, every checksum verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// The last log entry the backup holds.
    pub index: u64,
    /// That entry's term.
    pub term: u64,
    /// The voters of the cluster the backup was taken from.
    pub voters: Vec<u64>,
    /// Files in the archive.
    pub files: u64,
    /// The archive's size in bytes.
    pub bytes: u64,
    /// User keys.
    pub keys: u64,
    /// The keyspace digest, as `Cluster.Digest` reports it.
    pub digest: u64,
}

/// Reads the backup at `path` whole: unpacks it into a scratch directory
/// under `scratch_root` (verifying every checksum), opens the engine it
/// holds, and counts and digests its keys. The scratch directory is removed.
/// An operator's tool: both are on the real disk.
pub fn inspect(path: &Path, scratch_root: &Path) -> Result<BackupSummary, BackupError> {
    let fs = RealFs;
    let bytes = ReadFile::open(&fs, path)?.len_bytes();
    let dir = scratch_root.join(format!("{INSPECT_PREFIX}{:016x}", fastrand::u64(..)));
    let summary = inspect_into(&fs, path, &dir, bytes);
    remove_dir(&fs, &dir);
    summary
}

fn inspect_into(fs: &dyn FileSystem, path: &Path, dir: &Path, bytes: u64) -> Result<BackupSummary, BackupError> {
    let file = archive::FileReader::new(ReadFile::open(fs, path)?);
    let meta = archive::unpack(file, fs, dir)?;
    let files = storage::io::list_dir(fs, dir)?.len() as u64;
    let last = meta
        .last_log_id
        .ok_or_else(|| BackupError::Inconsistent("the archive names no log position".into()))?;
    let db = Db::open(dir, storage::Options::default())?;
    let state = decode_applied_state(db.metadata())?;
    if state.last_applied != Some(last) {
        return Err(BackupError::Inconsistent(
            "the engine's applied state differs from the archive's metadata".into(),
        ));
    }
    let (keys, digest) = Engine::new(db).digest()?;
    let voters = meta
        .last_membership
        .and_then(|m| m.membership)
        .and_then(|m| m.configs.last().cloned())
        .map(|c| c.ids)
        .unwrap_or_default();
    Ok(BackupSummary {
        index: last.index,
        term: last.leader_id.map_or(0, |l| l.term),
        voters,
        files,
        bytes,
        keys,
        digest,
    })
}

/// Restores the backup at `path` (an operator's file, on the real disk)
/// into the state machine rooted at `sm_root` on `options.fs` (a new
/// node's, holding nothing yet), with `membership` as the
/// cluster's membership from the backup's last log id on. Returns that log
/// id: the new node's log must continue after it.
pub(crate) fn restore_state_machine(
    path: &Path,
    sm_root: &Path,
    membership: pb::Membership,
    options: storage::Options,
) -> Result<pb::LogId, BackupError> {
    let layout =
        Layout::open(Arc::clone(&options.fs), sm_root).map_err(|e| BackupError::Inconsistent(e.to_string()))?;
    let received = layout.receive_dir();
    let file = archive::FileReader::new(ReadFile::open(&RealFs, path)?);
    let meta = archive::unpack(file, options.fs.as_ref(), &received)?;
    let last = meta
        .last_log_id
        .ok_or_else(|| BackupError::Inconsistent("the archive names no log position".into()))?;
    let stored = pb::StoredMembership {
        log_id: Some(last),
        membership: Some(membership),
    };
    {
        let db = Db::open(&received, options.clone())?;
        let mut state = decode_applied_state(db.metadata())?;
        if state.last_applied != Some(last) {
            return Err(BackupError::Inconsistent(
                "the engine's applied state differs from the archive's metadata".into(),
            ));
        }
        // The new membership replaces the old cluster's in the applied
        // state, durably, before the directory becomes the engine.
        state.membership = Some(stored.clone());
        let mut batch = WriteBatch::new();
        batch.set_metadata(state.encode_to_vec());
        db.write(batch, &WriteOptions::default())?;
        db.flush()?;
    }
    let restored = pb::SnapshotMeta {
        last_log_id: Some(last),
        last_membership: Some(stored),
        snapshot_id: format!("restore-{}", last.index),
    };
    layout.install(&received, &restored, &restored, options)?;
    Ok(last)
}

fn remove_dir(fs: &dyn FileSystem, dir: &Path) {
    if let Err(e) = storage::io::remove_all_if_exists(fs, dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove a backup scratch directory");
    }
}
