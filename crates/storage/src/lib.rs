//! An embedded, crash-safe LSM-tree key/value engine.
//!
//! ```no_run
//! # fn main() -> storage::Result<()> {
//! let db = storage::Db::open("/tmp/example-db", storage::Options::default())?;
//! db.put(b"key", b"value")?;
//! assert_eq!(db.get(b"key")?.as_deref(), Some(&b"value"[..]));
//! for pair in db.scan(&b"a"[..]..&b"z"[..])?.take(10) {
//!     let (key, value) = pair?;
//!     println!("{key:?} = {value:?}");
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - [`db`](Db): opening and recovery, reads, snapshots, checkpoints.
//! - `write`: group commit, the WAL append, backpressure.
//! - `write_controller`: how fast writers may go given compaction debt (pure).
//! - `background`: the flush thread and the compaction threads.
//! - `memtable`: recent writes, in `skiplist`: an arena skip list that
//!   readers walk without locks (the engine's `unsafe` code, with one
//!   system call in `io`).
//! - `log`: the WAL's and the manifest's files, framed by [`framing`].
//! - [`framing`]: record framing and the torn-tail scan, shared with the
//!   Raft log store's segments.
//! - `batch`: [`WriteBatch`] and its WAL encoding.
//! - `manifest`, `version`: which table and blob files are live, changed
//!   atomically.
//! - `blob`: blob files, where large values live apart from the tables,
//!   and the counting of their garbage.
//! - `sstable`: immutable sorted tables (blocks, a paged bloom filter, a
//!   partitioned index under a top-level index, footer).
//! - `cache`: the byte-bounded block cache shared by all tables (data
//!   blocks, index partitions, filter pages).
//! - `table_cache`: open tables, bounded by a count of open files.
//! - `compaction`: the pure picker and the table writer.
//! - `iterator`, `merge`, `db_iter`: cursors, their merge, the user's view.
//! - [`key`]: internal keys (user key, sequence, kind) and their order.
//! - `fuzzing` (feature `fuzzing`): the decoders' entry points for fuzz
//!   targets and corpus tests.
//! - [`io`]: the one seam through which every file is touched: the
//!   [`FileSystem`](io::FileSystem) trait and its `std::fs` implementation.
//!
//! The on-disk formats are described byte by byte in `docs/storage-format.md`.
//!
//! # Durability
//!
//! A write with [`WriteOptions::sync`] survives a machine crash once it
//! returns; without it, it survives a process crash. A write with
//! [`WriteOptions::disable_wal`] survives any crash only once the memtable
//! holding it is flushed; [`Db::flushed_metadata`] tells how far that is.

#![deny(clippy::unwrap_used)]

mod background;
mod batch;
mod blob;
mod cache;
mod coding;
mod compaction;
mod db;
mod db_iter;
mod error;
pub mod framing;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod io;
mod iterator;
pub mod key;
mod log;
mod manifest;
mod memtable;
mod merge;
mod options;
#[cfg(feature = "sim")]
pub mod sim;
mod skiplist;
mod sstable;
mod stats;
mod table_cache;
mod version;
mod write;
mod write_controller;

pub use batch::{WriteBatch, BATCH_BYTES_MAX};
pub use db::{is_immutable_file, Db, Snapshot};
pub use db_iter::{BoundedStep, DbIter};
pub use error::{Error, Result};
pub use options::{
    Options, WriteOptions, BLOB_VALUE_BYTES_MIN, COMPACTION_BYTES_PER_SEC_MIN, DELAYED_WRITE_BYTES_PER_SEC_FLOOR,
    KEY_BYTES_MAX, LEVELS, METADATA_BYTES_MAX, TABLE_FILES_OPEN_MIN, VALUE_BYTES_MAX,
};
pub use stats::{LevelStats, Stats};
