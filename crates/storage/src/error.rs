//! The engine's error type.

use std::path::PathBuf;

/// Everything the engine can fail with.
///
/// Disk and input failures are errors; a broken internal invariant is a bug
/// and panics with a message naming the invariant instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What the engine was doing (`open`, `read`, `fsync`, ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A record's stored checksum does not match its contents.
    #[error("checksum mismatch in {file} at offset {offset}: stored {expected:#010x}, computed {actual:#010x}")]
    ChecksumMismatch {
        /// The file holding the record.
        file: PathBuf,
        /// Byte offset of the record in the file.
        offset: u64,
        /// The checksum stored on disk.
        expected: u32,
        /// The checksum of the bytes read.
        actual: u32,
    },
    /// A file's structure is invalid (bad magic, impossible length, ...).
    #[error("corruption in {file} at offset {offset}: {reason}")]
    Corruption {
        /// The corrupt file.
        file: PathBuf,
        /// Byte offset where the problem was found.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A file was written by a format version this build does not read.
    #[error("{file}: unsupported format version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// The file.
        file: PathBuf,
        /// The version found in the file.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// The caller passed something outside the engine's limits.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A background flush or compaction failed earlier; the engine refuses
    /// further writes until it is reopened, so nothing is half-applied.
    #[error("the engine stopped accepting writes after a background error: {0}")]
    Background(String),
    /// The directory is locked by another open `Db`.
    #[error("{path} is already in use by another open database")]
    Locked {
        /// The database directory.
        path: PathBuf,
    },
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the operation and path it came from.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// A structural corruption at `offset` of `file`.
    pub(crate) fn corruption(file: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> Self {
        Error::Corruption {
            file: file.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// Whether this error means the data on disk is damaged.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::ChecksumMismatch { .. } | Error::Corruption { .. } | Error::UnsupportedVersion { .. }
        )
    }
}
