//! Entry points that run the engine's decoders over untrusted bytes: for
//! the fuzz targets in the repository's `fuzz/` directory and for the tests
//! that replay their corpora on stable Rust (`tests/decoders.rs`).
//!
//! Each entry point takes one fuzz input, decodes it the way the engine
//! reads it from disk (files live on the simulated disk,
//! [`SimFs`]), and returns what the engine returns. An error is a fine
//! answer; a panic, a hang or an allocation the input's size does not
//! bound is a bug.
//!
//! [`read_current`] takes the input as the `CURRENT` file as is (it has
//! no checksum). The other file-level entry points ([`replay_wal`],
//! [`recover_manifest`]) read the input's first byte as a mode: even, the
//! rest is the file as is; odd, the rest is a list of record payloads that
//! are framed with valid checksums, so that fuzzing reaches the decoders
//! behind them. A table input ([`read_table`]) likewise has its checksums
//! rewritten when its first byte is odd.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cache::BlockCache;
use crate::error::{Error, Result};
use crate::io::{FileSystem, ReadFile};
use crate::iterator::InternalIterator;
use crate::key::{self, ValueKind, SEQUENCE_MAX};
use crate::log::{LogKind, LOG_FORMAT_VERSION, RECORD_BYTES_MAX};
use crate::sim::{Rng, SimFs};
use crate::sstable::{self, Block, Table, TableBuilder, TableIter, TableOptions};
use crate::{framing, Db, Options};

/// Keys of a decoded block or table that are looked up again after the
/// scan (each lookup walks the index, the filter and a block).
pub const LOOKUPS_PER_INPUT_MAX: usize = 64;
/// Bytes of block cache a table opened from a fuzz input may fill.
const BLOCK_CACHE_BYTES: usize = 1 << 20;
/// Where the engine's files lie on the simulated disk.
const DB_DIR: &str = "/db";
/// Seed of the simulated disk (no crash is ever drawn from it).
const SIM_SEED: u64 = 1;
/// Target bytes of an index partition in the format 3 tables built here:
/// a few entries each, so that small tables have several partitions.
const FUZZ_INDEX_PARTITION_BYTES: usize = 64;

/// Whether an input's first byte asks for checksums to be made valid.
fn wants_valid_checksums(input: &[u8]) -> bool {
    input.first().is_some_and(|mode| mode & 1 == 1)
}

/// Splits `bytes` into payloads, each preceded by its length as a
/// little-endian `u16` (a final length past the end takes what is left).
pub fn split_payloads(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut payloads = Vec::new();
    while let [lo, hi, rest @ ..] = bytes {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(rest.len());
        let (payload, after) = rest.split_at(len);
        payloads.push(payload);
        bytes = after;
    }
    payloads
}

/// The inverse of [`split_payloads`] (for seed inputs): each payload must
/// be shorter than 64 KiB.
pub fn join_payloads(payloads: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for payload in payloads {
        let len = u16::try_from(payload.len()).expect("seed payloads are shorter than 64 KiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(payload);
    }
    out
}

/// A log file of `kind` holding `payloads`, each framed with its checksum.
fn log_file(kind: LogKind, payloads: &[&[u8]]) -> Vec<u8> {
    let mut file = framing::file_header(kind.magic(), LOG_FORMAT_VERSION).to_vec();
    for payload in payloads {
        // An input is far below the record limit; nothing to frame otherwise.
        if payload.len() <= RECORD_BYTES_MAX {
            framing::frame(&mut file, payload, RECORD_BYTES_MAX);
        }
    }
    file
}

/// The file a log input stands for (see the module doc for the mode byte).
fn log_input(kind: LogKind, input: &[u8]) -> Vec<u8> {
    let rest = input.get(1..).unwrap_or_default();
    if wants_valid_checksums(input) {
        log_file(kind, &split_payloads(rest))
    } else {
        rest.to_vec()
    }
}

/// Options for an engine on `fs` with no background work to speak of.
fn sim_options(fs: &Arc<SimFs>) -> Options {
    Options {
        fs: Arc::clone(fs) as Arc<dyn FileSystem>,
        compaction_threads: 1,
        ..Options::default()
    }
}

/// Bytes of the template database's large values, kept in its blob file.
const LARGE_VALUE_BYTES: usize = 1500;

/// A database on a fresh simulated disk: one flushed table holding
/// `a`..`c` and two large values (`big1`, `big2`, in a blob file), then `d`
/// in the WAL, closed. Returns the disk.
fn template_db() -> Result<Arc<SimFs>> {
    let fs = SimFs::new(SIM_SEED);
    let db = Db::open(DB_DIR, sim_options(&fs))?;
    for key in [&b"a"[..], b"b", b"c"] {
        db.put(key, b"value")?;
    }
    for (key, fill) in [(&b"big1"[..], b'1'), (b"big2", b'2')] {
        db.put(key, vec![fill; LARGE_VALUE_BYTES])?;
    }
    db.flush()?;
    db.put(b"d", b"in the wal")?;
    drop(db);
    Ok(fs)
}

/// The one file of the database whose name `pick` accepts.
fn file_named(fs: &SimFs, pick: impl Fn(&str) -> bool) -> Result<PathBuf> {
    let dir = Path::new(DB_DIR);
    let names = fs
        .list_dir(dir)
        .map_err(|e| Error::io("list the simulated disk", dir, e))?;
    let name = names
        .into_iter()
        .find(|name| pick(name))
        .ok_or_else(|| Error::corruption(dir, 0, "the template database lacks a file"))?;
    Ok(dir.join(name))
}

/// Opens the database on `fs` and reads every entry back; returns how many.
fn open_and_scan(fs: &Arc<SimFs>) -> Result<usize> {
    let db = Db::open(DB_DIR, sim_options(fs))?;
    let mut count = 0;
    for pair in db.scan(..)? {
        pair?;
        count += 1;
    }
    Ok(count)
}

/// Replays `input` as the database's newest WAL: `Db::open` decodes its
/// records and write batches into the memtable. Returns the entries the
/// database then holds.
pub fn replay_wal(input: &[u8]) -> Result<usize> {
    let fs = template_db()?;
    let wal = file_named(&fs, |name| name.ends_with(".wal"))?;
    fs.corrupt(&wal, &log_input(LogKind::Wal, input))
        .map_err(|e| Error::io("replace the WAL", &wal, e))?;
    open_and_scan(&fs)
}

/// The WAL input that holds `payloads` (encoded write batches) with
/// valid checksums.
pub fn wal_input(payloads: &[&[u8]]) -> Vec<u8> {
    let mut input = vec![1];
    input.extend_from_slice(&join_payloads(payloads));
    input
}

/// Recovers the database from `input` as its manifest: `Db::open` decodes
/// its version edits, checks the live set and opens the tables it names.
/// Returns the entries the database then holds.
pub fn recover_manifest(input: &[u8]) -> Result<usize> {
    let fs = template_db()?;
    let manifest = file_named(&fs, |name| name.starts_with("MANIFEST-"))?;
    fs.corrupt(&manifest, &log_input(LogKind::Manifest, input))
        .map_err(|e| Error::io("replace the manifest", &manifest, e))?;
    open_and_scan(&fs)
}

/// Recovers the database with `input` as its `CURRENT` file: `Db::open`
/// reads the manifest name it holds, then replays the manifest it names.
/// Returns the entries the database then holds.
pub fn read_current(input: &[u8]) -> Result<usize> {
    let fs = template_db()?;
    let current = Path::new(DB_DIR).join(crate::manifest::CURRENT_FILE);
    fs.corrupt(&current, input)
        .map_err(|e| Error::io("replace CURRENT", &current, e))?;
    open_and_scan(&fs)
}

/// Recovers the database with `input` as its blob file (the large values
/// its table points into) and reads every entry back, each large value
/// through its pointer: the file's framing and checksums, and pointers
/// that fall outside a file shorter or longer than the manifest says.
/// Returns the entries read.
pub fn read_blob_file(input: &[u8]) -> Result<usize> {
    let fs = template_db()?;
    let blob = file_named(&fs, |name| name.ends_with(".blob"))?;
    fs.corrupt(&blob, input)
        .map_err(|e| Error::io("replace the blob file", &blob, e))?;
    open_and_scan(&fs)
}

/// The blob file of the template database as the engine wrote it (a seed
/// input).
pub fn template_blob_file() -> Result<Vec<u8>> {
    let fs = template_db()?;
    let blob = file_named(&fs, |name| name.ends_with(".blob"))?;
    fs.contents(&blob)
        .ok_or_else(|| Error::corruption(&blob, 0, "the template database lost its blob file"))
}

/// The `CURRENT` file of the template database as the engine wrote it
/// (a seed input).
pub fn template_current() -> Result<Vec<u8>> {
    let fs = template_db()?;
    let current = Path::new(DB_DIR).join(crate::manifest::CURRENT_FILE);
    fs.contents(&current)
        .ok_or_else(|| Error::corruption(&current, 0, "the template database lost CURRENT"))
}

/// The files of the template database that fuzzing replaces: its WAL and
/// its manifest, as written by the engine (seed inputs, raw mode).
pub fn template_files() -> Result<(Vec<u8>, Vec<u8>)> {
    let fs = template_db()?;
    let read = |path: PathBuf| {
        fs.contents(&path)
            .ok_or_else(|| Error::corruption(&path, 0, "the template database lost a file"))
    };
    let wal = read(file_named(&fs, |name| name.ends_with(".wal"))?)?;
    let manifest = read(file_named(&fs, |name| name.starts_with("MANIFEST-"))?)?;
    Ok((wal, manifest))
}

/// Parses `input` as a data or index block, walks every entry, and seeks
/// to the first [`LOOKUPS_PER_INPUT_MAX`] keys found. Returns the number
/// of entries.
pub fn decode_block(input: &[u8]) -> Result<usize> {
    let block = Block::parse(bytes::Bytes::copy_from_slice(input))
        .map_err(|e| Error::corruption("<block>", e.offset as u64, e.reason))?;
    let mut keys = Vec::new();
    let mut entries = 0usize;
    let mut cursor = sstable::BlockIter::new(block.clone());
    cursor.seek_to_first();
    while cursor.valid() {
        if keys.len() < LOOKUPS_PER_INPUT_MAX {
            keys.push(cursor.key().to_vec());
        }
        entries += 1;
        cursor.next();
    }
    let mut key_buf = Vec::new();
    for key in &keys {
        cursor.seek(key);
        assert!(cursor.valid(), "a key found by the scan is found by a seek");
        let _ = block.seek_entry(key, &mut key_buf);
    }
    Ok(entries)
}

/// Opens `input` as a table file (checksums rewritten first if its first
/// byte is odd), iterates it whole, and looks up the first
/// [`LOOKUPS_PER_INPUT_MAX`] keys found (pinned and not) and a key it
/// lacks. Returns the number of entries.
pub fn read_table(input: &[u8]) -> Result<usize> {
    let mut file = input.get(1..).unwrap_or_default().to_vec();
    if wants_valid_checksums(input) {
        sstable::reseal(&mut file);
    }
    let fs = SimFs::new(SIM_SEED);
    let path = Path::new("/000001.sst");
    fs.create_new(path)
        .and_then(|f| f.append(&file))
        .map_err(|e| Error::io("write the table", path, e))?;
    let table = Arc::new(Table::open(
        ReadFile::open(&*fs, path)?,
        1,
        Arc::new(BlockCache::new(BLOCK_CACHE_BYTES)),
    )?);
    let mut cursor = TableIter::deferred(Arc::new(Arc::clone(&table)));
    cursor.seek_to_first()?;
    let mut user_keys = Vec::new();
    let mut entries = 0usize;
    while cursor.valid() {
        if user_keys.len() < LOOKUPS_PER_INPUT_MAX {
            if let Some(parsed) = key::parse(cursor.key()) {
                user_keys.push(parsed.user_key.to_vec());
            }
        }
        entries += 1;
        cursor.next()?;
    }
    user_keys.push(b"\xff\xffabsent".to_vec());
    for user_key in &user_keys {
        let seek = key::seek_key(user_key, SEQUENCE_MAX);
        table.get(user_key, &seek, false)?;
        table.get(user_key, &seek, true)?;
        cursor.seek(&seek)?;
    }
    Ok(entries)
}

/// A table file of format `format_version` (1, 2 or 3) holding `entries`,
/// written by the engine's table builder: `(user key, value)` pairs, sorted
/// and deduplicated here, each put at sequence 1. For seed inputs and
/// round trips. Format 3 tables get small index partitions and one-line
/// filter pages, so that small inputs reach both index levels and several
/// pages.
pub fn build_table(entries: &[(Vec<u8>, Vec<u8>)], format_version: u32, block_bytes_target: usize) -> Result<Vec<u8>> {
    let mut sorted: Vec<&(Vec<u8>, Vec<u8>)> = entries.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted.dedup_by(|a, b| a.0 == b.0);
    let fs = SimFs::new(SIM_SEED);
    let path = Path::new("/000001.sst");
    let mut options = TableOptions::from(&Options::default());
    options.format_version = format_version;
    options.block_bytes_target = block_bytes_target.max(1);
    options.index_partition_bytes_target = FUZZ_INDEX_PARTITION_BYTES;
    options.filter_page_lines = 1;
    let mut builder = TableBuilder::new(crate::io::AppendFile::create_new(&*fs, path)?, options);
    for (user_key, value) in sorted {
        builder.add(&key::internal_key(user_key, 1, ValueKind::Put), value)?;
    }
    builder.finish()?;
    fs.contents(path)
        .ok_or_else(|| Error::corruption(path, 0, "the simulated disk lost the table"))
}

/// Every `(user key, value)` of the table `file` in order, read through the
/// engine's reader (for round trips).
pub fn table_entries(file: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let fs = SimFs::new(SIM_SEED);
    let path = Path::new("/000001.sst");
    fs.create_new(path)
        .and_then(|f| f.append(file))
        .map_err(|e| Error::io("write the table", path, e))?;
    let table = Arc::new(Table::open(
        ReadFile::open(&*fs, path)?,
        1,
        Arc::new(BlockCache::new(BLOCK_CACHE_BYTES)),
    )?);
    let mut cursor = TableIter::deferred(Arc::new(table));
    cursor.seek_to_first()?;
    let mut out = Vec::new();
    while cursor.valid() {
        let user_key = key::parse(cursor.key())
            .ok_or_else(|| Error::corruption(path, 0, "malformed internal key"))?
            .user_key
            .to_vec();
        out.push((user_key, cursor.value().to_vec()));
        cursor.next()?;
    }
    Ok(out)
}

/// A data block holding `entries` (internal keys, sorted), written by the
/// engine's block builder with a restart every `restart_interval` entries
/// (seed inputs).
pub fn build_block(entries: &[(Vec<u8>, Vec<u8>)], restart_interval: usize) -> Vec<u8> {
    let mut builder = sstable::BlockBuilder::new(restart_interval.max(1));
    for (internal_key, value) in entries {
        builder.add(internal_key, value);
    }
    builder.finish().to_vec()
}

/// The payloads of the records of a log file (skipping its header), as
/// far as their checksums hold: turns a file into a framed-mode input.
pub fn log_payloads(file: &[u8]) -> Vec<&[u8]> {
    let scan = framing::scan_records(file, framing::FILE_HEADER_BYTES, RECORD_BYTES_MAX);
    scan.payloads.into_iter().map(|range| &file[range]).collect()
}

/// Mutations of one input a corpus test runs besides the input itself.
pub const MUTATIONS_PER_INPUT_DEFAULT: usize = 64;
/// Bytes a mutation inserts at most.
const MUTATION_INSERT_BYTES_MAX: usize = 64;

/// `count` mutations of `input` drawn from `seed`: flipped bits, random
/// or zeroed runs of bytes, cuts, inserted and repeated bytes, the kinds of
/// damage a disk or a peer can do (and some it cannot), for tests on
/// stable Rust that need no fuzzer. The same seed gives the same inputs.
pub fn mutations(seed: u64, input: &[u8], count: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed);
    (0..count)
        .map(|_| {
            let mut out = input.to_vec();
            for _ in 0..=below(&mut rng, 4) {
                mutate_once(&mut rng, &mut out);
            }
            out
        })
        .collect()
}

/// Applies one random change to `bytes`.
fn mutate_once(rng: &mut Rng, bytes: &mut Vec<u8>) {
    let at = below(rng, bytes.len() + 1);
    match below(rng, 6) {
        0 if at < bytes.len() => bytes[at] ^= 1 << below(rng, 8),
        1 if at < bytes.len() => bytes[at] = rng.next() as u8,
        2 => bytes.truncate(at),
        3 => {
            let end = (at + below(rng, MUTATION_INSERT_BYTES_MAX)).min(bytes.len());
            bytes[at..end].fill(0);
        }
        4 => {
            let fresh: Vec<u8> = (0..below(rng, MUTATION_INSERT_BYTES_MAX))
                .map(|_| rng.next() as u8)
                .collect();
            bytes.splice(at..at, fresh);
        }
        _ => {
            let end = (at + below(rng, MUTATION_INSERT_BYTES_MAX)).min(bytes.len());
            let copy = bytes[at..end].to_vec();
            bytes.splice(at..at, copy);
        }
    }
}

/// A number in `0..bound` from `rng` (0 when `bound` is 0).
fn below(rng: &mut Rng, bound: usize) -> usize {
    if bound == 0 {
        return 0;
    }
    rng.below(bound as u64) as usize
}

/// The files of fuzz corpus directory `dir`, sorted by name (none if it
/// does not exist).
pub fn corpus_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut paths: Vec<PathBuf> = entries
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    paths.retain(|path| path.is_file());
    paths.sort();
    paths
        .into_iter()
        .map(|path| std::fs::read(&path).map(|bytes| (path, bytes)))
        .collect()
}

/// Panics seen in any thread of this process since [`panicking_inputs`]
/// first ran: the engine's background threads (flush, compaction) decode
/// too, and their panics do not reach the caller.
static PANICS_SEEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts every panic in [`PANICS_SEEN`], then reports it as before.
fn count_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS_SEEN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            previous(info);
        }));
    });
}

/// Runs `decode` over each input, catching a panic in it or in a thread it
/// started (and joined) meanwhile; returns the names of the inputs that
/// panicked (an error return is not a failure). A panic elsewhere in the
/// process at the same time is blamed on the input too.
pub fn panicking_inputs(inputs: &[(String, Vec<u8>)], decode: impl Fn(&[u8])) -> Vec<String> {
    count_panics();
    inputs
        .iter()
        .filter(|(_, bytes)| {
            let before = PANICS_SEEN.load(std::sync::atomic::Ordering::SeqCst);
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode(bytes))).is_err();
            caught || PANICS_SEEN.load(std::sync::atomic::Ordering::SeqCst) != before
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// A valid encoding for a decoder test: `(fuzz target, name, bytes)`.
pub type Seed = (&'static str, String, Vec<u8>);

/// The corpus directory of fuzz target `target`: `fuzz/corpus/<target>` in
/// this repository.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// The number in environment variable `name`, or `default` when it is unset
/// or not a number (test knobs such as `DECODER_SEED`).
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The files of `target`'s corpus on which `decode` panics, by path. An
/// unreadable or empty corpus is an error: a test over it would check nothing.
pub fn corpus_panics(target: &str, decode: impl Fn(&[u8])) -> std::io::Result<Vec<String>> {
    let inputs: Vec<(String, Vec<u8>)> = corpus_files(&corpus_dir(target))?
        .into_iter()
        .map(|(path, bytes)| (path.display().to_string(), bytes))
        .collect();
    if inputs.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("the corpus of {target} is empty"),
        ));
    }
    Ok(panicking_inputs(&inputs, decode))
}

/// The mutations ([`mutations`], `count` per seed, drawn from `seed`) of
/// the valid encodings `seeds` on which `decode(target, input)` panics, by
/// `target/name mutation i`.
pub fn mutation_panics(seed: u64, count: usize, seeds: &[Seed], decode: impl Fn(&str, &[u8])) -> Vec<String> {
    let mut panicked = Vec::new();
    for (index, (target, name, input)) in seeds.iter().enumerate() {
        let mutated: Vec<(String, Vec<u8>)> = mutations(seed.wrapping_add(index as u64), input, count)
            .into_iter()
            .enumerate()
            .map(|(i, bytes)| (format!("{target}/{name} mutation {i}"), bytes))
            .collect();
        panicked.extend(panicking_inputs(&mutated, |input| decode(target, input)));
    }
    panicked
}

/// The seeds of the targets environment variable `DECODER_TARGETS` names
/// (comma-separated), or all of `seeds` when it is unset: a long mutation
/// run can then spend its time on the targets it is about.
pub fn seeds_of_env_targets(mut seeds: Vec<Seed>) -> Vec<Seed> {
    if let Ok(targets) = std::env::var("DECODER_TARGETS") {
        seeds.retain(|(target, _, _)| targets.split(',').any(|t| t.trim() == *target));
    }
    seeds
}

/// Writes each of `seeds` into its target's corpus as `seed-<name>`.
pub fn write_seed_corpus(seeds: &[Seed]) -> std::io::Result<()> {
    for (target, name, input) in seeds {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), input)?;
    }
    Ok(())
}
