//! The engine's one I/O seam: every file the engine touches is opened, read,
//! appended, synced, renamed and removed through this module, so the rules
//! of crash safety live in one place and tests can reason about them.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A file opened for appending: WAL segments, manifests, tables being built.
#[derive(Debug)]
pub struct AppendFile {
    file: fs::File,
    path: PathBuf,
    len_bytes: u64,
}

impl AppendFile {
    /// Creates `path`, failing if it exists: the engine never reuses a file
    /// number, so an existing file means a bug or a foreign file.
    pub fn create_new(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::io("create", path, e))?;
        Ok(AppendFile {
            file,
            path: path.to_path_buf(),
            len_bytes: 0,
        })
    }

    /// Appends all of `bytes` (buffered by the OS until [`sync`](Self::sync)).
    pub fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .map_err(|e| Error::io("write", &self.path, e))?;
        self.len_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Makes everything appended so far durable (`fdatasync`).
    pub fn sync(&mut self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io("fsync", &self.path, e))
    }

    /// Bytes in the file.
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }
}

/// A file opened for positional reads: tables, and logs during recovery.
#[derive(Debug)]
pub struct ReadFile {
    file: fs::File,
    path: PathBuf,
    len_bytes: u64,
}

impl ReadFile {
    /// Opens `path` for reading.
    pub fn open(path: &Path) -> Result<Self> {
        let file = fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
        let len_bytes = file.metadata().map_err(|e| Error::io("stat", path, e))?.len();
        Ok(ReadFile {
            file,
            path: path.to_path_buf(),
            len_bytes,
        })
    }

    /// Fills `buf` from `offset`; a short file is a corruption.
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
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
pub fn sync_dir(dir: &Path) -> Result<()> {
    let handle = fs::File::open(dir).map_err(|e| Error::io("open dir", dir, e))?;
    handle.sync_all().map_err(|e| Error::io("fsync dir", dir, e))
}

/// Replaces `dir/name` with `contents` atomically: write a temp file, fsync
/// it, rename it over the old one, fsync the directory. A crash at any point
/// leaves either the old file or the new one, never a mix.
pub fn write_atomically(dir: &Path, name: &str, contents: &[u8]) -> Result<()> {
    let temp = dir.join(format!("{name}.tmp"));
    let target = dir.join(name);
    // A temp file left by an earlier crash is garbage: start over.
    remove_if_exists(&temp)?;
    let mut file = AppendFile::create_new(&temp)?;
    file.append(contents)?;
    file.sync()?;
    drop(file);
    fs::rename(&temp, &target).map_err(|e| Error::io("rename", &target, e))?;
    sync_dir(dir)
}

/// Removes `path`; a missing file is not an error.
pub fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// Creates a hard link `to` for `from` (checkpoints share table files).
pub fn hard_link(from: &Path, to: &Path) -> Result<()> {
    fs::hard_link(from, to).map_err(|e| Error::io("hard link", to, e))
}

/// Creates `dir` and its parents.
pub fn create_dir_all(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io("create dir", dir, e))
}

/// The names of the entries in `dir`.
pub fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io("list dir", dir, e))? {
        let entry = entry.map_err(|e| Error::io("list dir", dir, e))?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}

/// Reads a small file whole, `None` if it does not exist.
pub fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}
