//! The log store's error type and its mapping into openraft's.

use std::path::{Path, PathBuf};

use openraft::StorageIOError;

use crate::types::StorageError;

/// Everything the log store can fail with.
///
/// Disk failures, damaged files and requests that break the log's contract
/// are errors; a broken internal invariant is a bug and panics instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogStoreError {
    /// An operating-system I/O call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What the store was doing (`open`, `write`, `fsync`, ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A segment holds damaged bytes that cannot be a torn tail.
    #[error("corrupt log segment {file} at offset {offset}: {reason}")]
    Corrupt {
        /// The damaged segment file.
        file: PathBuf,
        /// Byte offset of the bad record (or header) in the file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A segment was written by an unknown format version.
    #[error("log segment {file} has format version {found}; this build reads {supported}")]
    UnsupportedVersion {
        /// The segment file.
        file: PathBuf,
        /// The version in its header.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// An append does not continue the log (a hole or an overlap).
    #[error("append of index {got} does not follow the log, which expects {expected}")]
    NotContiguous {
        /// The index the log expects next.
        expected: u64,
        /// The index that was offered.
        got: u64,
    },
    /// A truncation would remove purged entries.
    #[error("cannot truncate at index {index}: entries up to {purged} are purged")]
    TruncatePurged {
        /// The first index to remove.
        index: u64,
        /// The last purged index.
        purged: u64,
    },
    /// One entry encodes to more than the record size limit.
    #[error("log record of {bytes} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// The encoded size.
        bytes: usize,
        /// [`RECORD_BYTES_MAX`](super::RECORD_BYTES_MAX).
        max: usize,
    },
    /// A purge waited in vain for the state machine to apply what it
    /// would remove ([`super::LogStore::purge_after_applied`]).
    #[error(
        "cannot purge up to index {index}: the state machine applied only {applied} after {waited_ms} ms (or stopped)"
    )]
    PurgeAheadOfApplied {
        /// The last index to purge.
        index: u64,
        /// The state machine's applied index when the wait ended.
        applied: u64,
        /// How long the purge waited.
        waited_ms: u64,
    },
    /// An earlier write or fsync failed; the store refuses further writes
    /// until it is reopened, since what reached the disk is unknown.
    #[error("log store is failed after an earlier I/O error: {reason}")]
    Failed {
        /// The first error.
        reason: String,
    },
}

impl From<storage::Error> for LogStoreError {
    /// An error of the disk seam's helpers (`storage::io`), which add the
    /// operation and path to the OS error just as this type does.
    fn from(e: storage::Error) -> Self {
        match e {
            storage::Error::Io { op, path, source } => LogStoreError::Io { op, path, source },
            other => LogStoreError::Io {
                op: "disk",
                path: PathBuf::new(),
                source: std::io::Error::other(other.to_string()),
            },
        }
    }
}

impl LogStoreError {
    /// An I/O error on `path` while doing `op`.
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        LogStoreError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Corruption in `file` at `offset`.
    pub(crate) fn corrupt(file: &Path, offset: u64, reason: impl Into<String>) -> Self {
        LogStoreError::Corrupt {
            file: file.to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }

    /// As openraft's error for a failed log write.
    pub(crate) fn write_logs(&self) -> StorageError {
        StorageIOError::write_logs(self).into()
    }

    /// As openraft's error for a failed vote write.
    pub(crate) fn write_vote(&self) -> StorageError {
        StorageIOError::write_vote(self).into()
    }
}
