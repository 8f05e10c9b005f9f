//! An embedded, crash-safe LSM-tree key/value engine.
//!
//! # Layout
//!
//! - [`key`]: internal keys (user key, sequence, kind) and their order.
//! - `coding`: varints and fixed-width integers for the binary formats.
//! - `io`: the one seam through which every file is touched.
//! - `sstable`: immutable sorted tables (blocks, bloom filter, index, footer).
//! - `cache`: the byte-bounded block cache shared by all tables.
//! - `iterator`: the cursor trait shared by memtables, tables and merges.
//!
//! The on-disk formats are described byte by byte in `docs/storage-format.md`.

#![deny(clippy::unwrap_used)]

mod cache;
mod coding;
mod error;
mod io;
mod iterator;
pub mod key;
mod options;
mod sstable;

pub use error::{Error, Result};
pub use options::{Options, WriteOptions, KEY_BYTES_MAX, LEVELS, METADATA_BYTES_MAX, VALUE_BYTES_MAX};
