//! Snapshots: the state machine's directory layout, building a snapshot
//! from an engine checkpoint, and installing one received from the leader.
//!
//! ```text
//! <sm>/GENERATION          names the engine directory in use ("gen-000003")
//! <sm>/gen-000003/         the engine
//! <sm>/snapshots/current.snap   the newest snapshot archive (built or installed)
//! <sm>/snapshots/*.tmp, build-* in-progress files, removed at startup
//! ```
//!
//! Installing unpacks into a new generation directory, makes it durable,
//! then switches `GENERATION` atomically: a crash before the switch leaves
//! the old engine in use, after it the new one.

use std::fs;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{RaftSnapshotBuilder, StorageIOError};
use prost::Message;
use proto::raft as pb;
use storage::io::RealFs;
use storage::Db;

use super::archive::{self, ArchiveError};
use super::{Engine, StateMachineError};
use crate::codec;
use crate::types::{LogId, StorageError, TypeConfig};

const GENERATION_FILE: &str = "GENERATION";
const SNAPSHOTS_DIR: &str = "snapshots";
const CURRENT_SNAPSHOT: &str = "current.snap";

/// Failures building or installing a snapshot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The engine failed.
    #[error("storage engine: {0}")]
    Storage(#[from] storage::Error),
    /// The archive could not be written or read.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The snapshot does not describe what it claims to.
    #[error("snapshot mismatch: {0}")]
    Mismatch(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the state machine keeps its engine and snapshots.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    root: PathBuf,
    generation: Arc<parking_lot::Mutex<u64>>,
    /// Serialises replacing `current.snap`.
    publish_lock: Arc<parking_lot::Mutex<()>>,
}

impl Layout {
    /// Opens (or creates) the layout under `root`, removing leftovers of
    /// interrupted builds and installs.
    pub fn open(root: &Path) -> Result<Self, StateMachineError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateMachineError::Io { path, source }
        };
        let snapshots = root.join(SNAPSHOTS_DIR);
        fs::create_dir_all(&snapshots).map_err(io(&snapshots))?;
        let generation_path = root.join(GENERATION_FILE);
        let generation = match fs::read_to_string(&generation_path) {
            Ok(text) => parse_generation(text.trim())
                .ok_or_else(|| StateMachineError::Corrupt(format!("{} is malformed", generation_path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_atomically(root, GENERATION_FILE, &generation_name(1)).map_err(io(&generation_path))?;
                1
            }
            Err(e) => return Err(io(&generation_path)(e)),
        };
        let layout = Layout {
            root: root.to_path_buf(),
            generation: Arc::new(parking_lot::Mutex::new(generation)),
            publish_lock: Arc::new(parking_lot::Mutex::new(())),
        };
        layout.remove_stale_generations();
        for entry in fs::read_dir(&snapshots).map_err(io(&snapshots))?.flatten() {
            if entry.file_name() != CURRENT_SNAPSHOT {
                remove_path(&entry.path());
            }
        }
        Ok(layout)
    }

    /// The engine directory in use.
    pub fn current_generation_dir(&self) -> PathBuf {
        self.root.join(generation_name(*self.generation.lock()))
    }

    fn snapshots_dir(&self) -> PathBuf {
        self.root.join(SNAPSHOTS_DIR)
    }

    /// Removes engine directories other than the one in use.
    pub fn remove_stale_generations(&self) {
        let current = generation_name(*self.generation.lock());
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("gen-") && name != current {
                remove_path(&entry.path());
            }
        }
    }

    /// A new empty file to receive a snapshot into.
    pub async fn create_receive_file(&self) -> std::io::Result<tokio::fs::File> {
        let path = self
            .snapshots_dir()
            .join(format!("recv-{:016x}.tmp", fastrand::u64(..)));
        tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .await
    }

    /// The newest snapshot, opened at its start.
    pub async fn current_snapshot(&self) -> std::io::Result<Option<openraft::Snapshot<TypeConfig>>> {
        let path = self.snapshots_dir().join(CURRENT_SNAPSHOT);
        let mut file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let meta = archive::read_meta(&mut std::io::BufReader::new(&mut file)).map_err(|e| invalid(e.to_string()))?;
        let meta = codec::snapshot_meta_from_pb(&meta).map_err(|e| invalid(e.to_string()))?;
        file.seek(SeekFrom::Start(0))?;
        Ok(Some(openraft::Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }

    /// Makes the archive at `archive` the current snapshot unless the
    /// current one is at least as new.
    fn publish(&self, archive: &Path, meta: &pb::SnapshotMeta) -> Result<(), SnapshotError> {
        let _guard = self.publish_lock.lock();
        let current = self.snapshots_dir().join(CURRENT_SNAPSHOT);
        if let Ok(mut file) = fs::File::open(&current) {
            if let Ok(existing) = archive::read_meta(&mut std::io::BufReader::new(&mut file)) {
                if last_log_id(&existing) >= last_log_id(meta) {
                    remove_path(archive);
                    return Ok(());
                }
            }
        }
        fs::rename(archive, &current).map_err(io_err(&current))?;
        // The rename is durable before the older snapshot it replaced is
        // forgotten (openraft purges logs up to the new one).
        sync_dir(&self.snapshots_dir())
    }

    /// Installs the archive in `file` as a new engine generation; returns
    /// the opened engine. `expected` is what openraft says the snapshot is.
    pub fn install(
        &self,
        mut file: fs::File,
        expected: &pb::SnapshotMeta,
        options: storage::Options,
    ) -> Result<Db, SnapshotError> {
        file.seek(SeekFrom::Start(0)).map_err(io_err(&self.root))?;
        let next = *self.generation.lock() + 1;
        let dir = self.root.join(generation_name(next));
        remove_path(&dir);
        let meta = archive::unpack(&mut file, &dir)?;
        if last_log_id(&meta) != last_log_id(expected) {
            return Err(SnapshotError::Mismatch(format!(
                "archive holds {:?}, openraft expects {:?}",
                last_log_id(&meta),
                last_log_id(expected)
            )));
        }
        let db = Db::open(&dir, options)?;
        let state = db
            .metadata()
            .map(|raw| pb::AppliedState::decode(raw.as_ref()))
            .transpose()
            .map_err(|e| SnapshotError::Mismatch(format!("applied state: {e}")))?
            .unwrap_or_default();
        if opt_log_id(state.last_applied.as_ref()) != last_log_id(expected) {
            return Err(SnapshotError::Mismatch(
                "the engine's applied state differs from the snapshot's".into(),
            ));
        }
        // Until GENERATION names the new directory a crash restarts on the
        // old engine, which is still whole. The switch comes before the
        // snapshot is published, so a restart never finds a current
        // snapshot newer than the engine's applied state.
        write_atomically(&self.root, GENERATION_FILE, &generation_name(next)).map_err(io_err(&self.root))?;
        *self.generation.lock() = next;
        // Keep a copy as the current snapshot, so this node can send it on.
        let copy = self.snapshots_dir().join(format!("install-{next}.tmp"));
        file.seek(SeekFrom::Start(0)).map_err(io_err(&copy))?;
        let mut out = fs::File::create(&copy).map_err(io_err(&copy))?;
        std::io::copy(&mut file, &mut out).map_err(io_err(&copy))?;
        out.sync_all().map_err(io_err(&copy))?;
        self.publish(&copy, &meta)?;
        for entry in fs::read_dir(self.snapshots_dir())
            .map_err(io_err(&self.root))?
            .flatten()
        {
            if entry.file_name().to_string_lossy().starts_with("recv-") {
                remove_path(&entry.path());
            }
        }
        Ok(db)
    }
}

/// Builds snapshots from a checkpoint of the engine.
pub struct SnapshotBuilder {
    engine: Engine,
    layout: Layout,
}

impl SnapshotBuilder {
    pub(crate) fn new(engine: Engine, layout: Layout) -> Self {
        SnapshotBuilder { engine, layout }
    }

    fn build_blocking(&self) -> Result<(), SnapshotError> {
        let db = self.engine.db();
        let id = format!("{:016x}", fastrand::u64(..));
        let checkpoint = self.layout.snapshots_dir().join(format!("build-{id}"));
        // The checkpoint flushes the engine, so everything it holds, and the
        // applied state describing it, is durable from here on.
        let metadata = db.checkpoint(&checkpoint)?;
        let state = metadata
            .map(|raw| pb::AppliedState::decode(raw.as_ref()))
            .transpose()
            .map_err(|e| SnapshotError::Mismatch(format!("applied state: {e}")))?
            .unwrap_or_default();
        let index = state.last_applied.as_ref().map_or(0, |l| l.index);
        let meta = pb::SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership,
            snapshot_id: format!("{index}-{id}"),
        };
        let archive_path = self.layout.snapshots_dir().join(format!("build-{id}.tmp"));
        let result = archive::pack(&checkpoint, &meta, &archive_path);
        remove_path(&checkpoint);
        result?;
        self.layout.publish(&archive_path, &meta)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<openraft::Snapshot<TypeConfig>, StorageError> {
        let builder = SnapshotBuilder {
            engine: self.engine.clone(),
            layout: self.layout.clone(),
        };
        tokio::task::spawn_blocking(move || builder.build_blocking())
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let snapshot = self
            .layout
            .current_snapshot()
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        snapshot.ok_or_else(|| {
            StorageIOError::read_snapshot(None, &std::io::Error::other("no snapshot after a build")).into()
        })
    }
}

fn generation_name(generation: u64) -> String {
    format!("gen-{generation:06}")
}

fn parse_generation(name: &str) -> Option<u64> {
    name.strip_prefix("gen-")?.parse().ok()
}

fn opt_log_id(log_id: Option<&pb::LogId>) -> Option<LogId> {
    codec::opt_log_id_from_pb(log_id).ok().flatten()
}

fn last_log_id(meta: &pb::SnapshotMeta) -> Option<LogId> {
    opt_log_id(meta.last_log_id.as_ref())
}

fn remove_path(path: &Path) {
    let result = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    if let Err(error) = result {
        if error.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), %error, "could not remove a stale file");
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    storage::io::sync_dir(&RealFs, dir)
        .map_err(into_io)
        .map_err(io_err(dir))
}

/// Replaces `dir/name` with the line `contents`, through the disk seam's
/// one atomic replace (temp file, fsync, rename, fsync dir).
fn write_atomically(dir: &Path, name: &str, contents: &str) -> std::io::Result<()> {
    storage::io::write_atomically(&RealFs, dir, name, format!("{contents}\n").as_bytes()).map_err(into_io)
}

/// The OS error inside an error of the disk seam's helpers.
pub(crate) fn into_io(e: storage::Error) -> std::io::Error {
    match e {
        storage::Error::Io { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    }
}
