//! Compaction: merging sorted runs into new tables, dropping what no reader
//! can see any more. Flushes use the same table writer.
//!
//! - [`picker`] decides what to compact and how to split it (pure, no I/O).
//! - [`input`] merges a compaction's input files for one key-range part.
//! - [`rate_limiter`] bounds the bytes per second compactions merge.
//! - [`write_tables`] carries a merge out into new table files.

pub(crate) mod input;
pub(crate) mod picker;
pub(crate) mod rate_limiter;

use std::path::Path;

use crate::blob::{BlobOutput, BlobPointer, Separation};
use crate::error::{Error, Result};
use crate::io::{self, AppendFile, FileSystem};
use crate::iterator::InternalIterator;
use crate::key::{self, SequenceNumber, ValueKind};
use crate::sstable::{TableBuilder, TableOptions};
use crate::version::{table_path, FileMeta};

/// What may be dropped while writing tables.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DropPolicy {
    /// The oldest sequence any reader may still read at. A version shadowed
    /// by a newer one at or below this is invisible to every reader.
    pub smallest_snapshot: SequenceNumber,
    /// Whether the output is the deepest data for its keys, so a tombstone
    /// visible to every reader shadows nothing and can go.
    pub drop_tombstones: bool,
}

/// Counters of one run of [`write_tables`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct WriteStats {
    pub entries_read: u64,
    pub entries_dropped: u64,
    /// Bytes of new tables.
    pub bytes_written: u64,
    /// Bytes of new blob files.
    pub blob_bytes_written: u64,
}

/// What one run of [`write_tables`] wrote.
#[derive(Debug, Default)]
pub(crate) struct Written {
    pub tables: Vec<FileMeta>,
    pub blobs: BlobOutput,
    pub stats: WriteStats,
}

/// Writes every entry of `input` (from its current position) that `policy`
/// keeps into new tables of at most about `table_bytes_target` bytes each,
/// named by `next_number`; large values and values to collect go to new
/// blob files through `separation`, which also counts the blob values of
/// dropped entries as garbage. The new files are synced and so is `dir`,
/// so a manifest edit may name them as soon as this returns.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_tables(
    fs: &dyn FileSystem,
    dir: &Path,
    input: &mut dyn InternalIterator,
    policy: DropPolicy,
    mut separation: Separation<'_>,
    table_options: TableOptions,
    table_bytes_target: u64,
    next_number: &mut dyn FnMut() -> u64,
) -> Result<Written> {
    let mut outputs = Vec::new();
    let mut separated_key = Vec::new();
    // The smallest blob file the open table points into (0: none yet), and
    // the largest sequence number it holds.
    let mut oldest_blob = 0;
    let mut largest_sequence: SequenceNumber = 0;
    let mut stats = WriteStats::default();
    let mut builder: Option<(u64, TableBuilder)> = None;
    let mut current_user_key: Vec<u8> = Vec::new();
    let mut has_current = false;
    let mut last_sequence_for_key = SequenceNumber::MAX;

    while input.valid() {
        stats.entries_read += 1;
        let internal = input.key();
        let parsed =
            key::parse(internal).ok_or_else(|| Error::corruption(dir, 0, "merge produced a malformed internal key"))?;
        let new_user_key = !has_current || parsed.user_key != current_user_key.as_slice();
        if new_user_key {
            // Tables are cut only between user keys, so no user key spans two
            // files of one level.
            if let Some((number, b)) = builder.take_if(|(_, b)| b.estimated_bytes() >= table_bytes_target) {
                let blob = std::mem::take(&mut oldest_blob);
                outputs.push(finish_table(number, b, blob, std::mem::take(&mut largest_sequence))?);
            }
            current_user_key.clear();
            current_user_key.extend_from_slice(parsed.user_key);
            has_current = true;
            last_sequence_for_key = SequenceNumber::MAX;
        }
        let shadowed = last_sequence_for_key <= policy.smallest_snapshot;
        let dead_tombstone =
            parsed.kind == ValueKind::Delete && parsed.sequence <= policy.smallest_snapshot && policy.drop_tombstones;
        last_sequence_for_key = parsed.sequence;
        if shadowed || dead_tombstone {
            stats.entries_dropped += 1;
            separation.dropped(parsed.kind, input.value())?;
        } else {
            let (_, b) = match &mut builder {
                Some(open) => open,
                None => {
                    let number = next_number();
                    let file = AppendFile::create_new(fs, &table_path(dir, number))?;
                    builder.insert((number, TableBuilder::new(file, table_options.clone())))
                }
            };
            largest_sequence = largest_sequence.max(parsed.sequence);
            match separation.keep(parsed.kind, input.value(), next_number)? {
                None => {
                    if parsed.kind == ValueKind::Blob {
                        note_blob(&mut oldest_blob, input.value(), dir)?;
                    }
                    b.add(internal, input.value())?
                }
                Some(pointer) => {
                    note_blob(&mut oldest_blob, pointer, dir)?;
                    // Same user key and sequence, so the entry keeps its place.
                    separated_key.clear();
                    key::append_internal_key(&mut separated_key, parsed.user_key, parsed.sequence, ValueKind::Blob);
                    b.add(&separated_key, pointer)?;
                }
            }
        }
        input.next()?;
    }
    if let Some((number, b)) = builder {
        if b.entries() > 0 {
            outputs.push(finish_table(number, b, oldest_blob, largest_sequence)?);
        }
    }
    let blobs = separation.finish()?;
    stats.bytes_written = outputs.iter().map(|m| m.size_bytes).sum();
    stats.blob_bytes_written = blobs.files.iter().map(|m| m.file_bytes).sum();
    if !outputs.is_empty() || !blobs.files.is_empty() {
        // New file names must be durable before a manifest edit names them.
        io::sync_dir(fs, dir)?;
    }
    Ok(Written {
        tables: outputs,
        blobs,
        stats,
    })
}

/// Lowers `oldest` to the blob file the pointer `encoded` names.
fn note_blob(oldest: &mut u64, encoded: &[u8], dir: &Path) -> Result<()> {
    let pointer = BlobPointer::decode(encoded)
        .ok_or_else(|| Error::corruption(dir, 0, "a table entry holds a malformed blob pointer"))?;
    if *oldest == 0 || pointer.file < *oldest {
        *oldest = pointer.file;
    }
    Ok(())
}

fn finish_table(
    number: u64,
    builder: TableBuilder,
    oldest_blob: u64,
    largest_sequence: SequenceNumber,
) -> Result<FileMeta> {
    let summary = builder.finish()?;
    Ok(FileMeta {
        number,
        size_bytes: summary.file_bytes,
        entries: summary.entries,
        smallest: summary.smallest,
        largest: summary.largest,
        oldest_blob,
        largest_sequence,
    })
}
