//! The engine's one I/O seam: every file the engine touches is opened, read,
//! appended, synced, renamed and removed through a [`FileSystem`], so the
//! rules of crash safety live in one place and tests can run the engine on
//! a simulated disk that loses what was not made durable (the `sim`
//! feature's `storage::sim::SimFs`).
//!
//! [`RealFs`] is `std::fs`. The engine calls the seam once per record, block
//! or file operation, never per byte, so the dynamic dispatch costs nothing
//! measurable next to the system call behind it.
//!
//! Above the trait sit the engine's helpers, which add the path to every
//! error: [`AppendFile`], [`ReadFile`], [`sync_dir`], [`write_atomically`].

use std::any::Any;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};

/// A held lock on a file; released when dropped.
pub type FileLock = Box<dyn Any + Send + Sync>;

/// The operations the engine performs on directories and file names.
///
/// Implementations: [`RealFs`] (`std::fs`) and, with the `sim` feature,
/// `storage::sim::SimFs` (in memory, with crashes and injected faults).
pub trait FileSystem: Send + Sync + std::fmt::Debug {
    /// Creates `path` for appending; fails with `AlreadyExists` if it exists.
    /// The new name is durable only after [`sync_dir`](Self::sync_dir).
    fn create_new(&self, path: &Path) -> std::io::Result<Box<dyn File>>;
    /// Opens the existing `path` for positional reads.
    fn open(&self, path: &Path) -> std::io::Result<Box<dyn File>>;
    /// Opens the existing `path` for reads and writes (to cut it with
    /// [`File::set_len`] or to overwrite a preallocated file in place with
    /// [`File::write_at`]).
    fn open_writable(&self, path: &Path) -> std::io::Result<Box<dyn File>>;
    /// Whether `path` names a file or directory.
    fn exists(&self, path: &Path) -> std::io::Result<bool>;
    /// Renames `from` to `to`, replacing `to` atomically if it exists.
    /// Durable only after the directory is synced.
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()>;
    /// Removes the name `path` (the data lives on while a handle is open).
    /// Durable only after the directory is synced.
    fn remove_file(&self, path: &Path) -> std::io::Result<()>;
    /// Removes the directory `dir` and everything under it. Durable only
    /// after the parent directory is synced.
    fn remove_dir_all(&self, dir: &Path) -> std::io::Result<()>;
    /// Whether `path` names a directory (`false` if it does not exist).
    fn is_dir(&self, path: &Path) -> std::io::Result<bool>;
    /// Gives the file `from` the second name `to`.
    fn hard_link(&self, from: &Path, to: &Path) -> std::io::Result<()>;
    /// Creates `dir` and its missing parents.
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()>;
    /// The names of the entries of `dir`.
    fn list_dir(&self, dir: &Path) -> std::io::Result<Vec<String>>;
    /// Makes the entries of `dir` (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()>;
    /// Takes an exclusive lock on `path` (created if missing); fails with
    /// `WouldBlock` while another holder has it.
    fn lock(&self, path: &Path) -> std::io::Result<FileLock>;
}

/// An open file. The engine's files are only ever appended to; the Raft
/// log store also writes at offsets into preallocated (zero-filled) files.
///
/// Every method takes `&self`, as `std::fs::File`'s do, so one handle can
/// be shared (`Arc<dyn File>`): the Raft log store writes on one thread
/// and fsyncs on another (group commit).
pub trait File: Send + Sync + std::fmt::Debug {
    /// Fills `buf` from `offset`; a file too short is `UnexpectedEof`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
    /// Appends all of `bytes`; durable only after a sync.
    fn append(&self, bytes: &[u8]) -> std::io::Result<()>;
    /// Writes all of `bytes` at `offset`, extending the file (with zeros
    /// before `offset` if it lies past the end); durable only after a sync.
    fn write_at(&self, offset: u64, bytes: &[u8]) -> std::io::Result<()>;
    /// Truncates or extends the file to `len_bytes`.
    fn set_len(&self, len_bytes: u64) -> std::io::Result<()>;
    /// Makes the file's data durable (`fdatasync`).
    fn sync_data(&self) -> std::io::Result<()>;
    /// Makes the file's data and metadata durable (`fsync`).
    fn sync_all(&self) -> std::io::Result<()>;
    /// The file's length in bytes.
    fn len_bytes(&self) -> std::io::Result<u64>;
    /// Asks the OS to start writing `len_bytes` from `offset` to the disk
    /// now, without waiting for it. A hint that spreads a file's writeback
    /// over its writing, so the sync that ends it (or a memtable rotation's
    /// WAL sync, which holds up every writer) finds little left to do; it
    /// makes nothing durable. The default does nothing.
    fn start_writeback(&self, _offset: u64, _len_bytes: u64) -> std::io::Result<()> {
        Ok(())
    }
}

/// The real filesystem, through `std::fs`.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl RealFs {
    /// The real filesystem as the handle [`crate::Options::fs`] holds.
    pub fn shared() -> Arc<dyn FileSystem> {
        Arc::new(RealFs)
    }
}

#[derive(Debug)]
struct RealFile(fs::File);

impl FileSystem for RealFs {
    fn create_new(&self, path: &Path) -> std::io::Result<Box<dyn File>> {
        // Readable too: the Raft log store reads entries back through the
        // handle it appends with.
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
        Ok(Box::new(RealFile(file)))
    }

    fn open(&self, path: &Path) -> std::io::Result<Box<dyn File>> {
        Ok(Box::new(RealFile(fs::File::open(path)?)))
    }

    fn open_writable(&self, path: &Path) -> std::io::Result<Box<dyn File>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Box::new(RealFile(file)))
    }

    fn exists(&self, path: &Path) -> std::io::Result<bool> {
        path.try_exists()
    }

    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        fs::remove_dir_all(dir)
    }

    fn is_dir(&self, path: &Path) -> std::io::Result<bool> {
        match fs::metadata(path) {
            Ok(metadata) => Ok(metadata.is_dir()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn hard_link(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        fs::hard_link(from, to)
    }

    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list_dir(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        fs::File::open(dir)?.sync_all()
    }

    fn lock(&self, path: &Path) -> std::io::Result<FileLock> {
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(file)),
            Err(fs::TryLockError::WouldBlock) => Err(std::io::ErrorKind::WouldBlock.into()),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

impl File for RealFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn append(&self, bytes: &[u8]) -> std::io::Result<()> {
        (&self.0).write_all(bytes)
    }

    fn write_at(&self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        self.0.write_all_at(bytes, offset)
    }

    fn set_len(&self, len_bytes: u64) -> std::io::Result<()> {
        self.0.set_len(len_bytes)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&self) -> std::io::Result<()> {
        self.0.sync_all()
    }

    fn len_bytes(&self) -> std::io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    #[cfg(target_os = "linux")]
    #[expect(unsafe_code, reason = "sync_file_range has no safe wrapper in std")]
    fn start_writeback(&self, offset: u64, len_bytes: u64) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (libc::off64_t::try_from(offset), libc::off64_t::try_from(len_bytes)) else {
            return Ok(());
        };
        // SAFETY: the descriptor is open for as long as `self` lives, and
        // the call only reads its arguments.
        let rc = unsafe { libc::sync_file_range(self.0.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
        if rc == 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        match error.raw_os_error() {
            // Filesystems and files without writeback (tmpfs, pipes): nothing to start.
            Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | libc::ESPIPE) => Ok(()),
            _ => Err(error),
        }
    }
}

/// How many appended bytes an [`AppendFile`] lets accumulate before it asks
/// the OS to start writing them out. Without it a WAL's or a table's dirty
/// pages wait for the file's sync: a memtable rotation's sync of the old
/// WAL (every writer waits for it) then wrote up to a memtable's worth,
/// 20-45 ms under memory pressure, and a 64 MiB table's final sync came in
/// one burst that slowed the WAL's writes behind it.
pub const WRITEBACK_EVERY_BYTES: u64 = 1 << 20;

/// A file opened for appending: WAL segments, manifests, tables being built.
#[derive(Debug)]
pub struct AppendFile {
    file: Box<dyn File>,
    path: PathBuf,
    len_bytes: u64,
    /// The file's length on disk when zeros were written ahead of the
    /// appends ([`allocate`](Self::allocate)); at most `len_bytes` otherwise.
    allocated_bytes: u64,
    /// Start writeback after this many appended bytes.
    writeback_every_bytes: u64,
    /// Where the bytes not yet handed to writeback start.
    writeback_from: u64,
}

impl AppendFile {
    /// Creates `path`, failing if it exists: the engine never reuses a file
    /// number, so an existing file means a bug or a foreign file.
    pub fn create_new(fs: &dyn FileSystem, path: &Path) -> Result<Self> {
        let file = fs.create_new(path).map_err(|e| Error::io("create", path, e))?;
        Ok(AppendFile {
            file,
            path: path.to_path_buf(),
            len_bytes: 0,
            allocated_bytes: 0,
            writeback_every_bytes: WRITEBACK_EVERY_BYTES,
            writeback_from: 0,
        })
    }

    /// Appends all of `bytes` (buffered by the OS until [`sync`](Self::sync)).
    /// After every [`WRITEBACK_EVERY_BYTES`] it asks the OS to start writing
    /// them out ([`File::start_writeback`]).
    pub fn append(&mut self, bytes: &[u8]) -> Result<()> {
        // At the logical end, which lies before the file's end once zeros
        // were written ahead.
        self.file
            .write_at(self.len_bytes, bytes)
            .map_err(|e| Error::io("write", &self.path, e))?;
        self.len_bytes += bytes.len() as u64;
        let pending = self.len_bytes - self.writeback_from;
        if pending >= self.writeback_every_bytes {
            self.file
                .start_writeback(self.writeback_from, pending)
                .map_err(|e| Error::io("start writeback of", &self.path, e))?;
            self.writeback_from = self.len_bytes;
        }
        Ok(())
    }

    /// Makes everything appended so far durable (`fdatasync`: the length is
    /// data too, as the file only grows).
    pub fn sync(&mut self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io("fsync", &self.path, e))
    }

    /// Writes zeros from the end of the file up to `end_bytes` (not synced:
    /// the next [`sync`](Self::sync) makes them and the new length durable),
    /// so that appends up to there overwrite bytes the file already has. An
    /// `fdatasync` after such an overwrite need not commit a new file length
    /// to the filesystem's journal, only the data: about 100 µs here against
    /// 150 µs for an append that grows the file (`BENCHMARKS.md`).
    pub fn allocate(&mut self, end_bytes: u64) -> Result<()> {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let mut at = self.allocated_bytes.max(self.len_bytes);
        while at < end_bytes {
            let chunk = usize::try_from(end_bytes - at).map_or(ZEROS.len(), |left| left.min(ZEROS.len()));
            self.file
                .write_at(at, &ZEROS[..chunk])
                .map_err(|e| Error::io("allocate", &self.path, e))?;
            at += chunk as u64;
        }
        self.allocated_bytes = self.allocated_bytes.max(end_bytes);
        Ok(())
    }

    /// The file's length on disk: past [`len_bytes`](Self::len_bytes) by the
    /// zeros [`allocate`](Self::allocate) wrote ahead and appends have not
    /// yet overwritten.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated_bytes.max(self.len_bytes)
    }

    /// Cuts the zeros written ahead off the file and syncs it whole (data and
    /// length), so the file ends with its last append. Does nothing but the
    /// sync when no zeros are left.
    pub fn trim_and_sync(&mut self) -> Result<()> {
        if self.allocated_bytes <= self.len_bytes {
            return self.sync();
        }
        self.file
            .set_len(self.len_bytes)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| Error::io("truncate and fsync", &self.path, e))?;
        self.allocated_bytes = self.len_bytes;
        Ok(())
    }

    /// Bytes in the file.
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }
}

/// A file that lives as long as something holds it: deleted when this is
/// dropped, if it was marked obsolete by then. Tables and blob files are
/// held so by versions, cursors and reads in flight after a compaction or a
/// collection has dropped them.
#[derive(Debug)]
pub(crate) struct DeletedWhenObsolete {
    fs: Arc<dyn FileSystem>,
    path: PathBuf,
    /// Whether a durable manifest edit removed the file.
    obsolete: std::sync::atomic::AtomicBool,
}

impl DeletedWhenObsolete {
    /// The file at `path` on `fs`, not obsolete.
    pub fn new(fs: Arc<dyn FileSystem>, path: PathBuf) -> Self {
        DeletedWhenObsolete {
            fs,
            path,
            obsolete: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The filesystem the file is on.
    pub fn fs(&self) -> &dyn FileSystem {
        &*self.fs
    }

    /// Marks the file for deletion once nothing holds it. Called only after
    /// the manifest edit that removes it is durable, so a crash never leaves
    /// a manifest naming a deleted file.
    pub fn mark_obsolete(&self) {
        self.obsolete.store(true, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for DeletedWhenObsolete {
    fn drop(&mut self) {
        if self.obsolete.load(std::sync::atomic::Ordering::Acquire) {
            if let Err(error) = remove_if_exists(&*self.fs, &self.path) {
                // A leftover file wastes space but loses nothing: the next
                // open deletes the files the manifest does not name.
                tracing::warn!(%error, "could not delete an obsolete file");
            }
        }
    }
}

/// A file opened for positional reads: tables, and logs during recovery.
#[derive(Debug)]
pub struct ReadFile {
    file: Box<dyn File>,
    path: PathBuf,
    len_bytes: u64,
}

impl ReadFile {
    /// Opens `path` for reading.
    pub fn open(fs: &dyn FileSystem, path: &Path) -> Result<Self> {
        let file = fs.open(path).map_err(|e| Error::io("open", path, e))?;
        let len_bytes = file.len_bytes().map_err(|e| Error::io("stat", path, e))?;
        Ok(ReadFile {
            file,
            path: path.to_path_buf(),
            len_bytes,
        })
    }

    /// Fills `buf` from `offset`; a short file is a corruption.
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file.read_at(offset, buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::corruption(
                    &self.path,
                    offset,
                    format!("file ends within a {}-byte read", buf.len()),
                )
            } else {
                Error::io("read", &self.path, e)
            }
        })
    }

    /// Reads the whole file.
    pub fn read_all(&self) -> Result<Vec<u8>> {
        let len = usize::try_from(self.len_bytes)
            .map_err(|_| Error::corruption(&self.path, 0, "file too large to read whole"))?;
        let mut buf = vec![0u8; len];
        self.read_exact_at(0, &mut buf)?;
        Ok(buf)
    }

    /// Bytes in the file when it was opened.
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Makes the directory entries of `dir` (creations, renames, removals)
/// durable. Without it a crash can forget a file whose data was synced.
pub fn sync_dir(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    fs.sync_dir(dir).map_err(|e| Error::io("fsync dir", dir, e))
}

/// Replaces `dir/name` with `contents` atomically: write a temp file, fsync
/// it, rename it over the old one, fsync the directory. A crash at any point
/// leaves either the old file or the new one, never a mix.
pub fn write_atomically(fs: &dyn FileSystem, dir: &Path, name: &str, contents: &[u8]) -> Result<()> {
    let temp = dir.join(format!("{name}.tmp"));
    let target = dir.join(name);
    // A temp file left by an earlier crash is garbage: start over.
    remove_if_exists(fs, &temp)?;
    let mut file = AppendFile::create_new(fs, &temp)?;
    file.append(contents)?;
    // The contents are durable before the rename: otherwise a crash could
    // keep the rename (the new name) but not the data, leaving `name`
    // empty or torn where the old file was whole.
    file.sync()?;
    drop(file);
    fs.rename(&temp, &target).map_err(|e| Error::io("rename", &target, e))?;
    // Until the directory is synced a crash may undo the rename; callers
    // count on `name` holding `contents` once this returns.
    sync_dir(fs, dir)
}

/// Removes `path`; a missing file is not an error.
pub fn remove_if_exists(fs: &dyn FileSystem, path: &Path) -> Result<()> {
    match fs.remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// Removes `path`, a file or a directory tree; a missing one is not an
/// error. Durable only after the parent directory is synced.
pub fn remove_all_if_exists(fs: &dyn FileSystem, path: &Path) -> Result<()> {
    let removed = match fs.is_dir(path) {
        Ok(true) => fs.remove_dir_all(path),
        Ok(false) => fs.remove_file(path),
        Err(e) => Err(e),
    };
    match removed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// Creates a hard link `to` for `from` (checkpoints share table files).
pub fn hard_link(fs: &dyn FileSystem, from: &Path, to: &Path) -> Result<()> {
    fs.hard_link(from, to).map_err(|e| Error::io("hard link", to, e))
}

/// Creates `dir` and its missing parents, durably: each new directory is
/// an entry in its parent, and until the parent is synced a power cut can
/// forget it, and with it every file inside, synced or not.
pub fn create_dir_all(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at.filter(|p| !p.as_os_str().is_empty()) {
        if exists(fs, path)? {
            break;
        }
        missing.push(path);
        at = path.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    fs.create_dir_all(dir).map_err(|e| Error::io("create dir", dir, e))?;
    for path in missing {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(fs, parent)?;
        }
    }
    Ok(())
}

/// Whether `path` exists.
pub fn exists(fs: &dyn FileSystem, path: &Path) -> Result<bool> {
    fs.exists(path).map_err(|e| Error::io("stat", path, e))
}

/// The names of the entries in `dir`.
pub fn list_dir(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<String>> {
    fs.list_dir(dir).map_err(|e| Error::io("list dir", dir, e))
}

/// Reads a small file whole, `None` if it does not exist.
pub fn read_if_exists(fs: &dyn FileSystem, path: &Path) -> Result<Option<Vec<u8>>> {
    match ReadFile::open(fs, path) {
        Ok(file) => file.read_all().map(Some),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Takes the lock file `path` that keeps two processes from opening one
/// database directory `dir`.
pub fn lock(fs: &dyn FileSystem, dir: &Path, path: &Path) -> Result<FileLock> {
    match fs.lock(path) {
        Ok(lock) => Ok(lock),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(Error::Locked {
            path: dir.to_path_buf(),
        }),
        Err(e) => Err(Error::io("lock", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_real_disk_removes_files_and_trees_and_tells_directories_apart() {
        // Snapshot and engine directories are removed whole through the seam; a missing one is no error.
        let root = tempfile::tempdir().expect("tempdir");
        let fs = RealFs;
        let tree = root.path().join("snap");
        create_dir_all(&fs, &tree.join("sub")).expect("mkdir");
        let mut file = AppendFile::create_new(&fs, &tree.join("sub").join("f")).expect("create");
        file.append(b"x").expect("append");
        let single = root.path().join("single");
        AppendFile::create_new(&fs, &single).expect("create");
        assert!(fs.is_dir(&tree).expect("is_dir"));
        assert!(!fs.is_dir(&single).expect("is_dir"), "a file is no directory");
        assert!(
            !fs.is_dir(&root.path().join("missing")).expect("is_dir"),
            "missing is no directory"
        );
        remove_all_if_exists(&fs, &tree).expect("remove tree");
        remove_all_if_exists(&fs, &single).expect("remove file");
        remove_all_if_exists(&fs, &root.path().join("missing")).expect("missing is fine");
        assert!(list_dir(&fs, root.path()).expect("list").is_empty());
    }

    /// A file that keeps only its length and the writeback asked of it.
    #[derive(Debug, Default)]
    struct Recording {
        len_bytes: parking_lot::Mutex<u64>,
        writeback: parking_lot::Mutex<Vec<(u64, u64)>>,
    }

    impl File for Arc<Recording> {
        fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> std::io::Result<()> {
            Err(std::io::ErrorKind::Unsupported.into())
        }
        fn append(&self, bytes: &[u8]) -> std::io::Result<()> {
            *self.len_bytes.lock() += bytes.len() as u64;
            Ok(())
        }
        fn write_at(&self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
            let mut len_bytes = self.len_bytes.lock();
            *len_bytes = (*len_bytes).max(offset + bytes.len() as u64);
            Ok(())
        }
        fn set_len(&self, _len_bytes: u64) -> std::io::Result<()> {
            Err(std::io::ErrorKind::Unsupported.into())
        }
        fn sync_data(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn sync_all(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn len_bytes(&self) -> std::io::Result<u64> {
            Ok(*self.len_bytes.lock())
        }
        fn start_writeback(&self, offset: u64, len_bytes: u64) -> std::io::Result<()> {
            self.writeback.lock().push((offset, len_bytes));
            Ok(())
        }
    }

    #[test]
    fn an_appended_file_is_handed_to_writeback_in_order_every_mebibyte() {
        // Dirty bytes never pile up past the bound, and every byte is handed over once, in order.
        let recording = Arc::new(Recording::default());
        let mut file = AppendFile {
            file: Box::new(Arc::clone(&recording)),
            path: PathBuf::from("recording"),
            len_bytes: 0,
            allocated_bytes: 0,
            writeback_every_bytes: WRITEBACK_EVERY_BYTES,
            writeback_from: 0,
        };
        let piece = vec![7u8; 100 << 10];
        let mut after_each = Vec::new();
        for _ in 0..35 {
            file.append(&piece).expect("append");
            let handed: u64 = recording.writeback.lock().iter().map(|&(_, len)| len).sum();
            after_each.push(file.len_bytes() - handed);
        }
        assert!(
            after_each.iter().all(|&dirty| dirty < WRITEBACK_EVERY_BYTES),
            "bytes not yet handed to writeback stay under the bound: {after_each:?}"
        );
        let writeback = recording.writeback.lock().clone();
        assert_eq!(writeback.len(), 3, "3.5 MB in 100 KiB appends: {writeback:?}");
        let mut next = 0;
        for (offset, len) in writeback {
            assert_eq!(offset, next, "ranges follow each other");
            assert!((WRITEBACK_EVERY_BYTES..WRITEBACK_EVERY_BYTES + piece.len() as u64).contains(&len));
            next = offset + len;
        }
    }

    #[test]
    fn the_real_disk_takes_writeback_hints_and_keeps_every_byte() {
        let root = tempfile::tempdir().expect("tempdir");
        let path = root.path().join("f");
        let mut file = AppendFile::create_new(&RealFs, &path).expect("create");
        let mut expected = Vec::new();
        for i in 0..40u8 {
            let piece = vec![i; 64 << 10];
            file.append(&piece).expect("append with writeback");
            expected.extend_from_slice(&piece);
        }
        file.sync().expect("sync");
        assert_eq!(std::fs::read(&path).expect("read"), expected);
    }
}
