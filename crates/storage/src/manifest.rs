//! The manifest: a log of [`VersionEdit`]s that says which files are live.
//!
//! `CURRENT` names the manifest in use. Every change to the set of live
//! files is one manifest record, synced before the change takes effect, so
//! after a crash the live set is exactly what the last synced record says.
//! A new manifest is started at every open (and when one grows large): it
//! begins with one edit describing the whole current state, then `CURRENT`
//! is replaced atomically to point at it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::blob::{blob_path, BlobFile, BlobMeta, BlobReaders, Garbage};
use crate::error::{Error, Result};
use crate::io::{self, FileSystem};
use crate::key::{SequenceNumber, SEQUENCE_MAX};
use crate::log::{read_log, LogKind, LogWriter};
use crate::options::LEVELS;
use crate::table_cache::TableCache;
use crate::version::{table_path, FileMeta, LiveBlob, TableFile, Version, VersionEdit};

/// The file naming the manifest in use.
pub(crate) const CURRENT_FILE: &str = "CURRENT";
/// A manifest larger than this is replaced by a fresh one at the next edit.
const MANIFEST_BYTES_MAX: u64 = 64 << 20;
/// The largest file number a manifest or a file name may hold. File numbers
/// count the files an engine ever created, one at a time, so no engine
/// comes near it: a larger one is damage, and the bound leaves the counter
/// room to grow without overflowing.
const FILE_NUMBER_MAX: u64 = u64::MAX / 2;

/// The name of manifest `number`.
pub(crate) fn manifest_name(number: u64) -> String {
    format!("MANIFEST-{number:06}")
}

/// The live files and the counters that go with them.
#[derive(Debug)]
pub(crate) struct VersionSet {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    /// Where live tables are opened, on demand.
    cache: Arc<TableCache>,
    /// Where live blob files are opened for reads, on demand.
    blob_readers: Arc<BlobReaders>,
    manifest: LogWriter,
    manifest_number: u64,
    current: Arc<Version>,
    next_file_number: u64,
    /// WAL files numbered below this are fully in tables.
    pub log_number: u64,
    /// The largest sequence number in the tables.
    pub last_sequence: SequenceNumber,
    /// Caller metadata of the newest write in the tables.
    pub metadata: Option<Bytes>,
    /// Why an earlier manifest write failed, if one did: from then on no
    /// edit is logged until the database is reopened.
    failed: Option<String>,
}

/// State rebuilt by replaying a manifest.
#[derive(Default)]
struct Replayed {
    files: [Vec<FileMeta>; LEVELS],
    /// Live blob files and the garbage counted in each.
    blobs: BTreeMap<u64, (BlobMeta, Garbage)>,
    next_file_number: u64,
    log_number: u64,
    last_sequence: SequenceNumber,
    metadata: Option<Bytes>,
}

impl VersionSet {
    /// Creates the manifest of an empty database in `dir`.
    pub fn create(fs: Arc<dyn FileSystem>, dir: &Path, cache: Arc<TableCache>) -> Result<Self> {
        // A creation cut short by a crash (before CURRENT was durable) can
        // leave its manifest behind, and nothing was acknowledged then.
        // Number new files above it, or every later open would fail to
        // create that manifest again; the open sweeps the leftover away.
        // Found by the simulated-disk crash test.
        let replayed = Replayed {
            next_file_number: highest_file_number(&*fs, dir)? + 1,
            ..Replayed::default()
        };
        Self::install(fs, dir, cache, Arc::default(), replayed, Version::default())
    }

    /// Recovers the live set from the manifest `CURRENT` names, then starts
    /// a fresh manifest holding just that state. No table is opened: each is
    /// opened (and its footer verified) through the table cache when first read.
    pub fn recover(fs: Arc<dyn FileSystem>, dir: &Path, cache: Arc<TableCache>) -> Result<Self> {
        let current_path = dir.join(CURRENT_FILE);
        let current = io::read_if_exists(&*fs, &current_path)?
            .ok_or_else(|| Error::corruption(&current_path, 0, "CURRENT is missing"))?;
        let name = std::str::from_utf8(&current)
            .ok()
            .and_then(|s| s.strip_suffix('\n'))
            .filter(|s| s.starts_with("MANIFEST-") && !s.contains('/'))
            .ok_or_else(|| Error::corruption(&current_path, 0, "CURRENT does not name a manifest"))?;
        let manifest_path = dir.join(name);
        let mut replayed = replay(&*fs, &manifest_path)?;
        // WALs and tables being written take numbers the manifest has not
        // recorded yet; a crash leaves them behind. Never reuse one.
        let highest_on_disk = highest_file_number(&*fs, dir)?;
        if highest_on_disk >= FILE_NUMBER_MAX {
            return Err(Error::corruption(dir, 0, "a file number exceeds FILE_NUMBER_MAX"));
        }
        // The oldest WAL still needed may be gone from disk (nothing was
        // written to it), but its number stays taken too.
        replayed.next_file_number = replayed
            .next_file_number
            .max(highest_on_disk + 1)
            .max(replayed.log_number + 1);

        // Tables are opened only when first read, but a missing one is
        // found now, from one directory listing, rather than by a read later.
        let on_disk: std::collections::HashSet<String> = io::list_dir(&*fs, dir)?.into_iter().collect();
        let blob_readers = Arc::new(BlobReaders::default());
        let mut version = Version::default();
        for (meta, garbage) in replayed.blobs.values() {
            let file = BlobFile::new(meta.clone(), dir, Arc::clone(&fs), Arc::clone(&blob_readers));
            let named = file.path().file_name().and_then(|name| name.to_str());
            if !named.is_some_and(|name| on_disk.contains(name)) {
                return Err(Error::corruption(
                    file.path(),
                    0,
                    "a blob file the manifest names is missing",
                ));
            }
            version.blobs.insert(
                meta.number,
                LiveBlob {
                    file,
                    garbage: *garbage,
                },
            );
        }
        for (level, metas) in replayed.files.iter().enumerate() {
            for meta in metas {
                let path = table_path(dir, meta.number);
                let named = path.file_name().and_then(|name| name.to_str());
                if !named.is_some_and(|name| on_disk.contains(name)) {
                    return Err(Error::corruption(&path, 0, "a table the manifest names is missing"));
                }
                let file = TableFile::new(meta.clone(), Arc::clone(&cache), path, Arc::clone(&fs));
                file.table.place_at_level(level);
                version.levels[level].push(file);
            }
        }
        let version = version.apply(&VersionEdit::default(), &[]);
        Self::install(fs, dir, cache, blob_readers, replayed, version)
    }

    /// Writes a new manifest describing `replayed`/`version` and points
    /// `CURRENT` at it.
    fn install(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        cache: Arc<TableCache>,
        blob_readers: Arc<BlobReaders>,
        mut replayed: Replayed,
        version: Version,
    ) -> Result<Self> {
        let manifest_number = replayed.next_file_number;
        replayed.next_file_number += 1;
        let manifest = write_snapshot_manifest(&*fs, dir, manifest_number, &replayed, &version)?;
        Ok(VersionSet {
            fs,
            dir: dir.to_path_buf(),
            cache,
            blob_readers,
            manifest,
            manifest_number,
            failed: None,
            current: Arc::new(version),
            next_file_number: replayed.next_file_number,
            log_number: replayed.log_number,
            last_sequence: replayed.last_sequence,
            metadata: replayed.metadata,
        })
    }

    /// The current version.
    pub fn current(&self) -> Arc<Version> {
        Arc::clone(&self.current)
    }

    /// The number of the manifest in use.
    pub fn manifest_number(&self) -> u64 {
        self.manifest_number
    }

    /// Allocates a file number (tables, WALs and manifests share the space).
    pub fn new_file_number(&mut self) -> u64 {
        let number = self.next_file_number;
        self.next_file_number += 1;
        number
    }

    /// Makes `edit` durable in the manifest, then installs the version it
    /// produces. `added` are the opened files of `edit.new_files`.
    pub fn log_and_apply(&mut self, mut edit: VersionEdit, added: &[(usize, Arc<TableFile>)]) -> Result<Arc<Version>> {
        assert_eq!(
            edit.new_files.len(),
            added.len(),
            "every new file of an edit must be opened"
        );
        if let Some(reason) = &self.failed {
            // A failed append or sync may still have left the edit in the
            // file; the next successful sync would make it durable although
            // its version was never installed, and after a restart the
            // replay would apply an edit the engine never did (seen as
            // "edit N deletes unknown file", a database that will not open).
            // Found by the simulated-disk crash test with an ENOSPC fsync.
            return Err(Error::Background(format!("an earlier manifest write failed: {reason}")));
        }
        if let Err(reason) = self.current.check_blob_garbage(&edit.blob_garbage) {
            // The edit is refused before anything is logged: the engine's
            // tables and blob files disagree, and deleting a blob file on
            // such a count could lose values still pointed to.
            return Err(Error::corruption(&self.dir, 0, reason));
        }
        let mut next = self.current.apply(&edit, added);
        let new_blobs = edit
            .new_blobs
            .iter()
            .map(|meta| {
                BlobFile::new(
                    meta.clone(),
                    &self.dir,
                    Arc::clone(&self.fs),
                    Arc::clone(&self.blob_readers),
                )
            })
            .collect();
        let dead_blobs = next.apply_blobs(new_blobs, &edit.blob_garbage);
        edit.next_file_number = Some(self.next_file_number);
        let written = if self.manifest.len_bytes() > MANIFEST_BYTES_MAX {
            self.roll_manifest(&edit, &next)
        } else {
            self.manifest.add_record(&edit.encode()).and_then(|()| {
                // The edit must be durable before the version it describes
                // is used: readers may be handed the new files, and the
                // caller deletes the inputs and WALs it makes obsolete.
                self.manifest.sync()
            })
        };
        if let Err(error) = written {
            self.failed = Some(error.to_string());
            return Err(error);
        }
        self.absorb_counters(&edit);
        self.current = Arc::new(next);
        // Only now is the edit that drops them durable.
        for file in dead_blobs {
            file.mark_obsolete();
        }
        Ok(self.current())
    }

    fn absorb_counters(&mut self, edit: &VersionEdit) {
        if let Some(n) = edit.log_number {
            self.log_number = self.log_number.max(n);
        }
        if let Some(n) = edit.last_sequence {
            self.last_sequence = self.last_sequence.max(n);
        }
        if let Some(m) = &edit.metadata {
            self.metadata = Some(m.clone());
        }
    }

    fn roll_manifest(&mut self, edit: &VersionEdit, next: &Version) -> Result<()> {
        let number = self.new_file_number();
        let mut replayed = Replayed {
            next_file_number: self.next_file_number,
            log_number: self.log_number.max(edit.log_number.unwrap_or(0)),
            last_sequence: self.last_sequence.max(edit.last_sequence.unwrap_or(0)),
            metadata: edit.metadata.clone().or_else(|| self.metadata.clone()),
            ..Replayed::default()
        };
        for (level, files) in next.levels.iter().enumerate() {
            replayed.files[level] = files.iter().map(|f| f.meta.clone()).collect();
        }
        let old = self.manifest_number;
        self.manifest = write_snapshot_manifest(&*self.fs, &self.dir, number, &replayed, next)?;
        self.manifest_number = number;
        io::remove_if_exists(&*self.fs, &self.dir.join(manifest_name(old)))
    }

    /// Where live blob files are kept open for reads.
    pub fn blob_readers(&self) -> Arc<BlobReaders> {
        Arc::clone(&self.blob_readers)
    }

    /// A table file just written by a flush or compaction, opened once
    /// through the table cache to verify it (and to have it open for the
    /// reads that follow).
    pub fn open_table(&self, meta: FileMeta) -> Result<Arc<TableFile>> {
        let path = table_path(&self.dir, meta.number);
        let file = TableFile::new(meta, Arc::clone(&self.cache), path, Arc::clone(&self.fs));
        file.table.open()?;
        Ok(file)
    }
}

/// The highest number of a WAL, table or manifest in `dir`, 0 if none.
fn highest_file_number(fs: &dyn FileSystem, dir: &Path) -> Result<u64> {
    Ok(io::list_dir(fs, dir)?
        .iter()
        .filter_map(|name| file_number_of(name))
        .max()
        .unwrap_or(0))
}

/// The number in a WAL, table or manifest file name.
fn file_number_of(name: &str) -> Option<u64> {
    let stem = name
        .strip_suffix(".wal")
        .or_else(|| name.strip_suffix(".sst"))
        .or_else(|| name.strip_suffix(".blob"))
        .or_else(|| name.strip_prefix("MANIFEST-"))?;
    stem.parse().ok()
}

fn replay(fs: &dyn FileSystem, path: &Path) -> Result<Replayed> {
    let contents = read_log(fs, path, LogKind::Manifest)?;
    if contents.is_empty() {
        return Err(Error::corruption(path, 0, "manifest holds no edit"));
    }
    let mut state = Replayed::default();
    let mut live: [std::collections::BTreeMap<u64, FileMeta>; LEVELS] = Default::default();
    for (index, record) in contents.records().enumerate() {
        let edit = VersionEdit::decode(record)
            .map_err(|reason| Error::corruption(path, 0, format!("edit {index}: {reason}")))?;
        for &(level, number) in &edit.deleted_files {
            if live[level].remove(&number).is_none() {
                return Err(Error::corruption(
                    path,
                    0,
                    format!("edit {index} deletes unknown file {number}"),
                ));
            }
        }
        for (level, meta) in edit.new_files {
            live[level].insert(meta.number, meta);
        }
        for meta in edit.new_blobs {
            if state.blobs.contains_key(&meta.number) {
                return Err(Error::corruption(
                    path,
                    0,
                    format!("edit {index} adds blob file {} twice", meta.number),
                ));
            }
            state.blobs.insert(meta.number, (meta, Garbage::default()));
        }
        for (number, more) in edit.blob_garbage {
            let Some((meta, garbage)) = state.blobs.get_mut(&number) else {
                return Err(Error::corruption(
                    path,
                    0,
                    format!("edit {index} counts garbage in unknown blob file {number}"),
                ));
            };
            garbage.absorb(more);
            if garbage.values > meta.values || garbage.bytes > meta.value_bytes {
                return Err(Error::corruption(
                    path,
                    0,
                    format!("edit {index} counts more garbage than blob file {number} holds"),
                ));
            }
            if garbage.values == meta.values {
                state.blobs.remove(&number);
            }
        }
        if let Some(n) = edit.next_file_number {
            state.next_file_number = n;
        }
        if let Some(n) = edit.log_number {
            state.log_number = state.log_number.max(n);
        }
        if let Some(n) = edit.last_sequence {
            state.last_sequence = state.last_sequence.max(n);
        }
        if edit.metadata.is_some() {
            state.metadata = edit.metadata;
        }
    }
    for (level, files) in live.into_iter().enumerate() {
        state.files[level] = files.into_values().collect();
    }
    // Counters past their bounds would overflow (or trip the key encoding's
    // assertion) once the engine counts on from them: damage, refused here.
    if state.next_file_number > FILE_NUMBER_MAX {
        return Err(Error::corruption(path, 0, "next file number exceeds FILE_NUMBER_MAX"));
    }
    if state.last_sequence > SEQUENCE_MAX {
        return Err(Error::corruption(path, 0, "last sequence exceeds SEQUENCE_MAX"));
    }
    if state.log_number > FILE_NUMBER_MAX {
        return Err(Error::corruption(path, 0, "the WAL number exceeds FILE_NUMBER_MAX"));
    }
    let max_table = state.files.iter().flatten().map(|f| f.number).max().unwrap_or(0);
    let max_file = max_table.max(state.blobs.keys().next_back().copied().unwrap_or(0));
    if state.next_file_number <= max_file {
        return Err(Error::corruption(
            path,
            0,
            "next file number is not above every live file",
        ));
    }
    Ok(state)
}

/// Writes manifest `number` holding one edit that describes the whole state,
/// syncs it, and atomically points `CURRENT` at it.
fn write_snapshot_manifest(
    fs: &dyn FileSystem,
    dir: &Path,
    number: u64,
    state: &Replayed,
    version: &Version,
) -> Result<LogWriter> {
    let edit = VersionEdit {
        log_number: Some(state.log_number),
        next_file_number: Some(state.next_file_number),
        last_sequence: Some(state.last_sequence),
        metadata: state.metadata.clone(),
        deleted_files: Vec::new(),
        new_files: version.files().map(|(level, f)| (level, f.meta.clone())).collect(),
        new_blobs: version.blobs.values().map(|b| b.file.meta.clone()).collect(),
        blob_garbage: version
            .blobs
            .iter()
            .filter(|(_, b)| b.garbage.values > 0)
            .map(|(&number, b)| (number, b.garbage))
            .collect(),
    };
    let name = manifest_name(number);
    let mut writer = LogWriter::create(fs, &dir.join(&name), LogKind::Manifest)?;
    writer.add_record(&edit.encode())?;
    writer.sync()?;
    // The new manifest is complete and durable before CURRENT names it; a
    // crash before the rename leaves CURRENT on the old, still valid one.
    io::write_atomically(fs, dir, CURRENT_FILE, format!("{name}\n").as_bytes())?;
    Ok(writer)
}

/// Writes a checkpoint of the current state into the empty directory
/// `target`: hard links to every live table and a manifest naming them.
/// The caller holds the version set, so the state cannot change meanwhile,
/// and has flushed the memtable, so no WAL is needed.
pub(crate) fn write_checkpoint(versions: &VersionSet, target: &Path) -> Result<()> {
    let version = versions.current();
    for (_, file) in version.files() {
        // Table files are immutable, so a link is as good as a copy.
        io::hard_link(&*versions.fs, file.path(), &table_path(target, file.meta.number))?;
    }
    for blob in version.blobs.values() {
        io::hard_link(
            &*versions.fs,
            blob.file.path(),
            &blob_path(target, blob.file.meta.number),
        )?;
    }
    let manifest_number = versions.next_file_number;
    let mut state = Replayed {
        next_file_number: manifest_number + 1,
        // No WAL below this number belongs to the checkpoint.
        log_number: manifest_number,
        last_sequence: versions.last_sequence,
        metadata: versions.metadata.clone(),
        ..Replayed::default()
    };
    for (level, files) in version.levels.iter().enumerate() {
        state.files[level] = files.iter().map(|f| f.meta.clone()).collect();
    }
    // Syncs the links' directory entries along with CURRENT.
    write_snapshot_manifest(&*versions.fs, target, manifest_number, &state, &version)?;
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        io::sync_dir(&*versions.fs, parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::sim::{CrashMode, Fault, SimFs};

    fn edit(log_number: u64) -> VersionEdit {
        VersionEdit {
            log_number: Some(log_number),
            ..VersionEdit::default()
        }
    }

    #[test]
    fn no_edit_is_logged_after_a_failed_manifest_sync() {
        // A failed fsync can leave its edit in the file; a later successful
        // sync would make durable an edit the engine never applied.
        let fs = SimFs::new(1);
        let dir = Path::new("/db");
        fs.create_dir_all(dir).expect("mkdir");
        fs.sync_dir(Path::new("/")).expect("sync");
        let block_cache = Arc::new(crate::cache::BlockCache::new(0));
        let cache = Arc::new(TableCache::new(fs.clone(), dir, block_cache, 16).expect("table cache"));
        let mut versions = VersionSet::create(fs.clone(), dir, Arc::clone(&cache)).expect("create");
        versions.log_and_apply(edit(5), &[]).expect("logged");
        // Step +1 appends the edit, step +2 syncs it.
        fs.fail_at_step(fs.steps() + 2, Fault::NoSpace);
        versions.log_and_apply(edit(6), &[]).expect_err("the sync fails");
        versions
            .log_and_apply(edit(7), &[])
            .expect_err("refused after a failed manifest write");
        let after = fs.crash(CrashMode::DropUnsynced);
        let recovered = VersionSet::recover(after, dir, cache).expect("recover");
        assert_eq!(recovered.log_number, 5);
    }

    #[test]
    fn garbage_that_does_not_match_the_blob_files_is_refused_and_a_file_all_garbage_leaves() {
        // A count past a file's values would delete a blob file tables still point into.
        let fs = SimFs::new(1);
        let dir = Path::new("/db");
        fs.create_dir_all(dir).expect("mkdir");
        let block_cache = Arc::new(crate::cache::BlockCache::new(0));
        let cache = Arc::new(TableCache::new(fs.clone(), dir, block_cache, 16).expect("table cache"));
        let mut versions = VersionSet::create(fs.clone(), dir, cache).expect("create");
        let meta = BlobMeta {
            number: 5,
            values: 2,
            value_bytes: 3000,
            file_bytes: 3032,
        };
        let added = VersionEdit {
            new_blobs: vec![meta],
            ..VersionEdit::default()
        };
        versions.log_and_apply(added, &[]).expect("add a blob file");
        let garbage = |number, values, bytes| VersionEdit {
            blob_garbage: vec![(number, Garbage { values, bytes })],
            ..VersionEdit::default()
        };
        for (edit, what) in [
            (garbage(9, 1, 10), "an unknown file"),
            (garbage(5, 3, 10), "more values than the file has"),
            (garbage(5, 1, 4000), "more bytes than the file has"),
        ] {
            let error = versions.log_and_apply(edit, &[]).expect_err(what);
            assert!(error.is_corruption(), "{what}: {error}");
        }
        versions
            .log_and_apply(garbage(5, 1, 1000), &[])
            .expect("one value dies");
        assert!(versions.current().blobs.contains_key(&5));
        versions
            .log_and_apply(garbage(5, 1, 2000), &[])
            .expect("the other dies");
        assert!(
            versions.current().blobs.is_empty(),
            "a file all garbage leaves the version"
        );
    }

    #[test]
    fn counters_past_their_bounds_are_corruption_not_an_overflow_later() {
        // Found by fuzzing the manifest: a next file number near u64::MAX overflowed in the flush thread.
        let fs = SimFs::new(1);
        let path = Path::new("/MANIFEST-000001");
        let write = |edit: VersionEdit| {
            let _ = fs.remove_file(path);
            let mut writer = LogWriter::create(&*fs, path, LogKind::Manifest).expect("create");
            writer.add_record(&edit.encode()).expect("append");
            writer.sync().expect("sync");
        };
        let fine = VersionEdit {
            next_file_number: Some(FILE_NUMBER_MAX),
            last_sequence: Some(SEQUENCE_MAX),
            ..VersionEdit::default()
        };
        write(fine.clone());
        replay(&*fs, path).expect("counters at their bounds replay");
        for edit in [
            VersionEdit {
                next_file_number: Some(u64::MAX),
                ..fine.clone()
            },
            VersionEdit {
                last_sequence: Some(SEQUENCE_MAX + 1),
                ..fine
            },
        ] {
            write(edit);
            let Err(err) = replay(&*fs, path) else {
                panic!("a counter past its bound replayed");
            };
            assert!(err.to_string().contains("exceeds"), "{err}");
        }
    }
}
