//! Snapshots: the state machine's directory layout, building a snapshot
//! from an engine checkpoint, and installing one received from the leader.
//!
//! ```text
//! <sm>/GENERATION               names the engine directory in use ("gen-000003")
//! <sm>/gen-000003/              the engine
//! <sm>/snapshots/CURRENT        names the current snapshot ("snap-<id>")
//! <sm>/snapshots/snap-<id>/     a checkpoint: tables hard-linked, manifest copied
//! <sm>/snapshots/snap-<id>.meta its metadata (see `write_meta`)
//! <sm>/recv-<id>/               a snapshot being received
//! ```
//!
//! Nothing is copied whole. Building a snapshot is an engine checkpoint:
//! its tables are hard links of the engine's (immutable) tables, so it
//! costs a flush and a small manifest; the disk it holds is what later
//! compactions would otherwise free, until the next snapshot replaces it.
//! Sending one packs the checkpoint into the archive format on the fly
//! ([`super::transfer`]); receiving one unpacks the stream as it arrives
//! into a new directory, which becomes the next engine generation by a
//! rename. The received tables are hard-linked into the new current
//! snapshot before the engine opens them, so this node can send it on.
//!
//! Installing switches `GENERATION` atomically: a crash before the switch
//! leaves the old engine in use, after it the new one. Leftovers of
//! interrupted builds, receptions and installs are removed at startup.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{RaftSnapshotBuilder, StorageIOError};
use prost::Message;
use proto::raft as pb;
use storage::io::{self as disk, AppendFile, FileSystem, ReadFile};
use storage::Db;

use super::archive::{self, ArchiveError};
use super::transfer::SnapshotData;
use super::{Engine, StateMachineError};
use crate::codec;
use crate::types::{LogId, StorageError, TypeConfig};

/// Names the engine directory in use.
pub(crate) const GENERATION_FILE: &str = "GENERATION";
/// The largest generation `GENERATION` may name. Generations count snapshot
/// installs from 1, so a larger one is damage; the bound also leaves room
/// for the next install's `+ 1`.
const GENERATION_MAX: u64 = u64::MAX / 2;
pub(crate) const SNAPSHOTS_DIR: &str = "snapshots";
/// Names the current snapshot in the snapshots directory.
pub(crate) const CURRENT_SNAPSHOT_FILE: &str = "CURRENT";
/// The archive file earlier builds kept as the current snapshot.
const LEGACY_SNAPSHOT_FILE: &str = "current.snap";
const SNAPSHOT_PREFIX: &str = "snap-";
pub(crate) const META_SUFFIX: &str = ".meta";
const RECEIVE_PREFIX: &str = "recv-";
/// First bytes of a snapshot metadata file.
const META_MAGIC: u32 = 0x4b56_534d; // "KVSM"
/// The metadata file format this build writes and reads.
const META_VERSION: u32 = 1;
/// Largest snapshot metadata accepted, in bytes.
const META_BYTES_MAX: usize = 16 << 20;

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
    /// The disk every file of the layout is on (the engine's too).
    fs: Arc<dyn FileSystem>,
    root: PathBuf,
    generation: Arc<parking_lot::Mutex<u64>>,
    /// Serialises replacing the current snapshot.
    publish_lock: Arc<parking_lot::Mutex<()>>,
    /// The directories of receptions still in progress or not yet
    /// installed: the only `recv-` directories that are not garbage.
    receiving: Arc<parking_lot::Mutex<HashSet<PathBuf>>>,
}

/// Marks a reception's directory as in use for as long as it lives (it
/// lives in the [`SnapshotData`] being received), so that a reception
/// started meanwhile does not take it for garbage.
#[derive(Debug)]
pub(crate) struct Receiving {
    dir: PathBuf,
    registry: Arc<parking_lot::Mutex<HashSet<PathBuf>>>,
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.dir);
    }
}

impl Layout {
    /// Opens (or creates) the layout under `root` on `fs`, removing
    /// leftovers of interrupted builds, receptions and installs.
    pub fn open(fs: Arc<dyn FileSystem>, root: &Path) -> Result<Self, StateMachineError> {
        let snapshots = root.join(SNAPSHOTS_DIR);
        disk::create_dir_all(fs.as_ref(), &snapshots)?;
        let generation_path = root.join(GENERATION_FILE);
        let generation = match disk::read_if_exists(fs.as_ref(), &generation_path)? {
            Some(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|text| parse_generation(text.trim()))
                .ok_or_else(|| StateMachineError::Corrupt(format!("{} is malformed", generation_path.display())))?,
            None => {
                write_line_atomically(fs.as_ref(), root, GENERATION_FILE, &generation_name(1))?;
                1
            }
        };
        let layout = Layout {
            fs,
            root: root.to_path_buf(),
            generation: Arc::new(parking_lot::Mutex::new(generation)),
            publish_lock: Arc::new(parking_lot::Mutex::new(())),
            receiving: Arc::default(),
        };
        layout.remove_stale_generations();
        layout
            .migrate_legacy_snapshot()
            .map_err(|e| StateMachineError::Corrupt(format!("snapshot: {e}")))?;
        let current = layout.current_snapshot_id();
        for name in disk::list_dir(layout.fs.as_ref(), &snapshots)? {
            let kept = name == CURRENT_SNAPSHOT_FILE
                || current
                    .as_deref()
                    .is_some_and(|id| name == id || name == format!("{id}{META_SUFFIX}"));
            if !kept {
                layout.remove_path(&snapshots.join(name));
            }
        }
        for name in disk::list_dir(layout.fs.as_ref(), root)? {
            if name.starts_with(RECEIVE_PREFIX) || name.starts_with(super::backup::BACKUP_PREFIX) {
                layout.remove_path(&root.join(name));
            }
        }
        Ok(layout)
    }

    /// Turns the single-file snapshot of earlier builds into a snapshot
    /// directory, once: unpacked, then named current, then removed.
    fn migrate_legacy_snapshot(&self) -> Result<(), SnapshotError> {
        let legacy = self.snapshots_dir().join(LEGACY_SNAPSHOT_FILE);
        if !disk::exists(self.fs.as_ref(), &legacy)? {
            return Ok(());
        }
        if self.current_snapshot_id().is_none() {
            let file = ReadFile::open(self.fs.as_ref(), &legacy)?;
            let id = format!("{SNAPSHOT_PREFIX}{:016x}", fastrand::u64(..));
            let meta = archive::unpack(
                archive::FileReader::new(file),
                self.fs.as_ref(),
                &self.snapshots_dir().join(&id),
            )?;
            self.write_meta(&id, &meta)?;
            self.publish(&id, &meta)?;
        }
        self.fs.remove_file(&legacy).map_err(io_err(&legacy))?;
        Ok(disk::sync_dir(self.fs.as_ref(), &self.snapshots_dir())?)
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
        let Ok(names) = disk::list_dir(self.fs.as_ref(), &self.root) else {
            return;
        };
        for name in names {
            if name.starts_with("gen-") && name != current {
                self.remove_path(&self.root.join(name));
            }
        }
    }

    /// Removes the file or directory tree `path`, warning if that fails:
    /// what is left is removed at the next start.
    fn remove_path(&self, path: &Path) {
        if let Err(error) = disk::remove_all_if_exists(self.fs.as_ref(), path) {
            tracing::warn!(path = %path.display(), %error, "could not remove a stale file");
        }
    }

    /// A new snapshot being received: unpacked as it arrives into a new
    /// directory of its own.
    pub fn receive(&self) -> SnapshotData {
        // Receptions overlap: a leader whose replication to this node
        // restarts (a membership change does that) sends the snapshot
        // again while the first stream may still be arriving or waiting to
        // be installed. Only directories no reception holds are garbage:
        // those of receptions that failed or were dropped.
        let dir = self.receive_dir();
        let in_use = {
            let mut receiving = self.receiving.lock();
            if let Ok(names) = disk::list_dir(self.fs.as_ref(), &self.root) {
                for name in names.iter().filter(|name| name.starts_with(RECEIVE_PREFIX)) {
                    let path = self.root.join(name);
                    if !receiving.contains(&path) {
                        self.remove_path(&path);
                    }
                }
            }
            receiving.insert(dir.clone());
            Receiving {
                dir: dir.clone(),
                registry: Arc::clone(&self.receiving),
            }
        };
        SnapshotData::incoming(Arc::clone(&self.fs), dir).holding(in_use)
    }

    /// A new directory name to receive a snapshot into; removed at the
    /// next start if it is still there.
    pub fn receive_dir(&self) -> PathBuf {
        self.root.join(format!("{RECEIVE_PREFIX}{:016x}", fastrand::u64(..)))
    }

    /// The id (directory name) of the current snapshot, if any.
    fn current_snapshot_id(&self) -> Option<String> {
        let bytes = disk::read_if_exists(self.fs.as_ref(), &self.snapshots_dir().join(CURRENT_SNAPSHOT_FILE))
            .ok()
            .flatten()?;
        let id = std::str::from_utf8(&bytes).ok()?.trim();
        (id.starts_with(SNAPSHOT_PREFIX) && !id.contains('/')).then(|| id.to_owned())
    }

    /// The current snapshot's metadata and directory, if any.
    fn current(&self) -> Result<Option<(pb::SnapshotMeta, PathBuf)>, SnapshotError> {
        let Some(id) = self.current_snapshot_id() else {
            return Ok(None);
        };
        let meta = self.read_meta(&id)?;
        Ok(Some((meta, self.snapshots_dir().join(id))))
    }

    /// The newest snapshot, as a stream from its start. Its files are
    /// opened here, under the lock that publishing a newer snapshot takes,
    /// so the one named current cannot be removed before it is opened.
    pub fn current_snapshot(&self) -> Result<Option<openraft::Snapshot<TypeConfig>>, SnapshotError> {
        let _guard = self.publish_lock.lock();
        let Some((pb_meta, dir)) = self.current()? else {
            return Ok(None);
        };
        let dir = archive::OpenedDir::open(self.fs.as_ref(), &dir)?;
        let meta = codec::snapshot_meta_from_pb(&pb_meta).map_err(|e| SnapshotError::Mismatch(e.to_string()))?;
        Ok(Some(openraft::Snapshot {
            meta,
            snapshot: Box::new(SnapshotData::outgoing(dir, pb_meta)),
        }))
    }

    /// Writes snapshot `id`'s metadata file ([`encode_meta`]).
    fn write_meta(&self, id: &str, meta: &pb::SnapshotMeta) -> Result<(), SnapshotError> {
        let name = format!("{id}{META_SUFFIX}");
        Ok(disk::write_atomically(
            self.fs.as_ref(),
            &self.snapshots_dir(),
            &name,
            &encode_meta(&meta.encode_to_vec()),
        )?)
    }

    fn read_meta(&self, id: &str) -> Result<pb::SnapshotMeta, SnapshotError> {
        let path = self.snapshots_dir().join(format!("{id}{META_SUFFIX}"));
        let bytes = ReadFile::open(self.fs.as_ref(), &path)?.read_all()?;
        let corrupt = |what: &str| SnapshotError::Mismatch(format!("{}: {what}", path.display()));
        if bytes.len() < 16 || u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) != META_MAGIC {
            return Err(corrupt("not a snapshot metadata file"));
        }
        let version = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if version != META_VERSION {
            return Err(corrupt(&format!("unsupported version {version}")));
        }
        let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        if len > META_BYTES_MAX || bytes.len() != 16 + len {
            return Err(corrupt("length does not match the file"));
        }
        let (covered, crc) = bytes.split_at(12 + len);
        if crc32fast::hash(covered) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(corrupt("checksum mismatch"));
        }
        pb::SnapshotMeta::decode(&covered[12..]).map_err(|e| corrupt(&e.to_string()))
    }

    /// Makes snapshot `id` (its directory and metadata file already
    /// durable) the current one unless the current one is at least as new,
    /// then removes the one it replaced.
    fn publish(&self, id: &str, meta: &pb::SnapshotMeta) -> Result<(), SnapshotError> {
        let _guard = self.publish_lock.lock();
        let previous = self.current_snapshot_id();
        if let Some(previous) = &previous {
            if let Ok(existing) = self.read_meta(previous) {
                if last_log_id(&existing) >= last_log_id(meta) {
                    self.remove_snapshot(id);
                    return Ok(());
                }
            }
        }
        // CURRENT names the new snapshot durably before the old one is
        // removed (openraft purges the log up to the new one next), so a
        // crash leaves one whole current snapshot, old or new.
        write_line_atomically(self.fs.as_ref(), &self.snapshots_dir(), CURRENT_SNAPSHOT_FILE, id)?;
        if let Some(previous) = previous.filter(|p| p != id) {
            self.remove_snapshot(&previous);
        }
        Ok(())
    }

    fn remove_snapshot(&self, id: &str) {
        self.remove_path(&self.snapshots_dir().join(id));
        self.remove_path(&self.snapshots_dir().join(format!("{id}{META_SUFFIX}")));
    }

    /// Installs a received snapshot, unpacked in `received`, as a new engine
    /// generation; returns the opened engine. `meta` is what the archive
    /// says, `expected` what openraft says the snapshot is.
    pub fn install(
        &self,
        received: &Path,
        meta: &pb::SnapshotMeta,
        expected: &pb::SnapshotMeta,
        options: storage::Options,
    ) -> Result<Db, SnapshotError> {
        if last_log_id(meta) != last_log_id(expected) {
            self.remove_path(received);
            return Err(SnapshotError::Mismatch(format!(
                "archive holds {:?}, openraft expects {:?}",
                last_log_id(meta),
                last_log_id(expected)
            )));
        }
        // The received checkpoint becomes this node's current snapshot too,
        // so it can send it on: its tables are linked, not copied, and the
        // rest (manifest, CURRENT) copied, before the engine opens the
        // directory and starts changing those.
        let id = format!("{SNAPSHOT_PREFIX}{:016x}", fastrand::u64(..));
        let kept = self.snapshots_dir().join(&id);
        link_checkpoint(self.fs.as_ref(), received, &kept)?;
        self.write_meta(&id, meta)?;
        // No overflow: a generation read from disk is at most
        // GENERATION_MAX, and each install adds one.
        let next = *self.generation.lock() + 1;
        let dir = self.root.join(generation_name(next));
        self.remove_path(&dir);
        self.fs.rename(received, &dir).map_err(io_err(&dir))?;
        disk::sync_dir(self.fs.as_ref(), &self.root)?;
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
        write_line_atomically(self.fs.as_ref(), &self.root, GENERATION_FILE, &generation_name(next))?;
        *self.generation.lock() = next;
        self.publish(&id, meta)?;
        Ok(db)
    }
}

/// Makes `to` a copy of the checkpoint in `from` that shares its tables:
/// tables and blob files are immutable and hard-linked, every other file
/// is copied.
/// Every copied file and the directory are synced.
fn link_checkpoint(fs: &dyn FileSystem, from: &Path, to: &Path) -> Result<(), SnapshotError> {
    disk::create_dir_all(fs, to)?;
    for name in disk::list_dir(fs, from)? {
        let (source, target) = (from.join(&name), to.join(&name));
        if storage::is_immutable_file(&name) {
            disk::hard_link(fs, &source, &target)?;
        } else {
            // Only the manifest and CURRENT are copied: small files.
            let bytes = ReadFile::open(fs, &source)?.read_all()?;
            let mut copy = AppendFile::create_new(fs, &target)?;
            copy.append(&bytes)?;
            copy.sync()?;
        }
    }
    // The links and copies are named durably before the snapshot's
    // metadata names the directory; then the directory itself.
    disk::sync_dir(fs, to)?;
    Ok(disk::sync_dir(fs, to.parent().unwrap_or(to))?)
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
        let id = format!("{SNAPSHOT_PREFIX}{:016x}", fastrand::u64(..));
        let checkpoint = self.layout.snapshots_dir().join(&id);
        // The checkpoint flushes the engine, so everything it holds, and the
        // applied state describing it, is durable from here on; its tables
        // are links to the engine's, so nothing is copied.
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
            snapshot_id: format!("{index}-{}", &id[SNAPSHOT_PREFIX.len()..]),
        };
        self.layout.write_meta(&id, &meta)?;
        self.layout.publish(&id, &meta)
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
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        snapshot.ok_or_else(|| {
            StorageIOError::read_snapshot(None, &std::io::Error::other("no snapshot after a build")).into()
        })
    }
}

/// A snapshot metadata file holding the encoded `pb::SnapshotMeta` `body`:
/// magic, version, length, the body, and a crc32 of all before it.
pub(crate) fn encode_meta(body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(body.len() + 16);
    bytes.extend_from_slice(&META_MAGIC.to_le_bytes());
    bytes.extend_from_slice(&META_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(body);
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

fn generation_name(generation: u64) -> String {
    format!("gen-{generation:06}")
}

fn parse_generation(name: &str) -> Option<u64> {
    name.strip_prefix("gen-")?
        .parse()
        .ok()
        .filter(|&generation| generation <= GENERATION_MAX)
}

fn opt_log_id(log_id: Option<&pb::LogId>) -> Option<LogId> {
    codec::opt_log_id_from_pb(log_id).ok().flatten()
}

fn last_log_id(meta: &pb::SnapshotMeta) -> Option<LogId> {
    opt_log_id(meta.last_log_id.as_ref())
}

/// Replaces `dir/name` with the line `contents` through the disk seam's
/// one atomic replace (temp file, fsync, rename, fsync dir).
fn write_line_atomically(fs: &dyn FileSystem, dir: &Path, name: &str, contents: &str) -> storage::Result<()> {
    disk::write_atomically(fs, dir, name, format!("{contents}\n").as_bytes())
}

/// The OS error inside an error of the disk seam's helpers.
pub(crate) fn into_io(e: storage::Error) -> std::io::Error {
    match e {
        storage::Error::Io { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    use storage::io::RealFs;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A layout with an engine holding `keys` flushed keys.
    fn layout_with_data(root: &Path, keys: u32) -> (Layout, Engine) {
        let layout = Layout::open(RealFs::shared(), root).expect("layout");
        let db = Db::open(layout.current_generation_dir(), storage::Options::default()).expect("engine");
        for i in 0..keys {
            // One value in ten is large enough to live in a blob file.
            let bytes = if i % 10 == 0 { 2000 } else { 200 };
            db.put(format!("key-{i:06}"), vec![7u8; bytes]).expect("put");
        }
        let mut batch = storage::WriteBatch::new();
        let state = pb::AppliedState {
            last_applied: Some(pb::LogId {
                leader_id: Some(pb::LeaderId { term: 1, node_id: 1 }),
                index: 42,
            }),
            ..Default::default()
        };
        batch.set_metadata(state.encode_to_vec());
        db.write(batch, &storage::WriteOptions::default()).expect("metadata");
        (layout, Engine::new(db))
    }

    fn tables(dir: &Path) -> Vec<(String, fs::Metadata)> {
        let mut tables: Vec<_> = fs::read_dir(dir)
            .expect("list")
            .flatten()
            .filter(|e| storage::is_immutable_file(&e.file_name().to_string_lossy()))
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().expect("stat"),
                )
            })
            .collect();
        tables.sort_by(|a, b| a.0.cmp(&b.0));
        tables
    }

    #[test]
    fn building_a_snapshot_links_the_engine_tables_instead_of_copying_them() {
        // A snapshot used to be a full copy of the database: twice the data on disk.
        let root = tempfile::tempdir().expect("tempdir");
        let (layout, engine) = layout_with_data(root.path(), 20_000);
        SnapshotBuilder::new(engine, layout.clone())
            .build_blocking()
            .expect("build");
        let (meta, dir) = layout.current().expect("read").expect("a current snapshot");
        assert_eq!(meta.last_log_id.map(|l| l.index), Some(42));
        let engine_tables = tables(&layout.current_generation_dir());
        let snapshot_tables = tables(&dir);
        assert!(!snapshot_tables.is_empty(), "the data is in tables");
        assert!(
            snapshot_tables.iter().any(|(name, _)| name.ends_with(".blob")),
            "the large values are in blob files"
        );
        for (name, metadata) in &snapshot_tables {
            let (_, original) = engine_tables
                .iter()
                .find(|(n, _)| n == name)
                .expect("every snapshot table is an engine table");
            assert_eq!(metadata.ino(), original.ino(), "{name} is a link, not a copy");
        }
    }

    #[test]
    fn a_generation_no_install_reaches_is_refused_as_corrupt() {
        // Found by the `generation` decoder target: `gen-<u64::MAX>` was
        // accepted, and the next snapshot install overflowed computing the
        // next generation.
        let root = tempfile::tempdir().expect("tempdir");
        let generation = root.path().join(GENERATION_FILE);
        fs::write(&generation, format!("gen-{}\n", u64::MAX)).expect("write");
        let opened = Layout::open(RealFs::shared(), root.path());
        assert!(matches!(opened, Err(StateMachineError::Corrupt(_))));
        fs::write(&generation, format!("gen-{GENERATION_MAX}\n")).expect("write");
        let layout = Layout::open(RealFs::shared(), root.path()).expect("the largest generation opens");
        assert!(layout
            .current_generation_dir()
            .ends_with(generation_name(GENERATION_MAX)));
    }

    #[tokio::test]
    async fn a_snapshot_streams_into_another_node_and_an_interrupted_one_leaves_no_trace() {
        // The receiver unpacks as bytes arrive; a reception cut short must not
        // stop the node from restarting on its old engine.
        let sender_root = tempfile::tempdir().expect("tempdir");
        let (sender, engine) = layout_with_data(sender_root.path(), 5_000);
        SnapshotBuilder::new(engine, sender.clone())
            .build_blocking()
            .expect("build");
        let receiver_root = tempfile::tempdir().expect("tempdir");
        let receiver = Layout::open(RealFs::shared(), receiver_root.path()).expect("layout");

        // Cut short: a few bytes, then the stream is dropped.
        let mut partial = receiver.receive();
        let mut outgoing = sender.current_snapshot().expect("read").expect("a snapshot").snapshot;
        let mut buffer = vec![0u8; 4096];
        let n = outgoing.read(&mut buffer).await.expect("read");
        partial.write_all(&buffer[..n]).await.expect("write");
        drop(partial);
        drop(outgoing);
        let reopened = Layout::open(RealFs::shared(), receiver_root.path()).expect("restarts after a cut transfer");
        let leftovers: Vec<_> = fs::read_dir(receiver_root.path())
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(RECEIVE_PREFIX))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // Whole: installed as the next generation, and kept to send on.
        let snapshot = sender.current_snapshot().expect("read").expect("a snapshot");
        let mut outgoing = snapshot.snapshot;
        let mut incoming = reopened.receive();
        tokio::io::copy(&mut outgoing, &mut incoming).await.expect("stream");
        let (received, meta) = incoming.finish_incoming().await.expect("unpacked");
        let expected = codec::snapshot_meta_to_pb(&snapshot.meta);
        let db = reopened
            .install(&received, &meta, &expected, storage::Options::default())
            .expect("installed");
        assert_eq!(db.get(b"key-004999").expect("get").map(|v| v.len()), Some(200));
        let (kept, kept_dir) = reopened.current().expect("read").expect("kept to send on");
        assert_eq!(kept.last_log_id, expected.last_log_id);
        for (name, metadata) in tables(&kept_dir) {
            assert!(metadata.nlink() >= 2, "{name} shares its data with the engine");
        }
    }

    #[tokio::test]
    async fn a_reception_started_meanwhile_leaves_one_in_progress_alone() {
        // A leader whose replication restarts sends the snapshot again while
        // the first stream is still arriving. The second reception took the
        // first one's directory for garbage and removed it, and the install
        // of the first then failed, which stops Raft for good.
        let sender_root = tempfile::tempdir().expect("tempdir");
        let (sender, engine) = layout_with_data(sender_root.path(), 2_000);
        SnapshotBuilder::new(engine, sender.clone())
            .build_blocking()
            .expect("build");
        let receiver_root = tempfile::tempdir().expect("tempdir");
        let receiver = Layout::open(RealFs::shared(), receiver_root.path()).expect("layout");
        let snapshot = sender.current_snapshot().expect("read").expect("a snapshot");
        let mut first = receiver.receive();
        let mut outgoing = snapshot.snapshot;
        let mut buffer = vec![0u8; 4096];
        let n = outgoing.read(&mut buffer).await.expect("read");
        first.write_all(&buffer[..n]).await.expect("write");
        let receptions = || {
            fs::read_dir(receiver_root.path())
                .expect("list")
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(RECEIVE_PREFIX))
                .count()
        };
        // The first reception's directory exists (it is unpacked into as
        // the bytes arrive) when the second one starts.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while receptions() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the first reception made no directory"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let second = receiver.receive();
        tokio::io::copy(&mut outgoing, &mut first).await.expect("stream");
        let (received, meta) = first.finish_receiving().await.expect("the first arrives whole");
        let (received, meta) = (received.to_path_buf(), meta.clone());
        let db = receiver
            .install(
                &received,
                &meta,
                &codec::snapshot_meta_to_pb(&snapshot.meta),
                storage::Options::default(),
            )
            .expect("installed");
        assert_eq!(db.get(b"key-001999").expect("get").map(|v| v.len()), Some(200));
        drop(second);
    }
}
