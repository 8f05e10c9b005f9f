//! Background threads: one flushes frozen memtables to L0, the others run
//! compactions the picker chooses. Both install their results through the
//! manifest and wake writers stalled on them.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::blob::{BlobFile, Separation};
use crate::compaction::input::RangeInput;
use crate::compaction::picker::{self, FileSummary, KeyBounds, ManualPick, Plan, Shape};
use crate::compaction::{write_tables, DropPolicy, Written};
use crate::db::{wal_name, Inner, SuperVersion};
use crate::error::{Error, Result};
use crate::io;
use crate::iterator::InternalIterator;
use crate::memtable::Memtable;
use crate::options::{Options, LEVELS};
use crate::stats::Counters;
use crate::version::{TableFile, Version, VersionEdit};

/// How long an idle background thread sleeps before looking for work again.
const IDLE_RECHECK: Duration = Duration::from_millis(500);

/// Starts the flush thread and the compaction threads.
pub(crate) fn spawn(inner: &Arc<Inner>) -> Result<Vec<JoinHandle<()>>> {
    let mut handles = Vec::new();
    let flusher = Arc::clone(inner);
    handles.push(spawn_named("storage-flush", move || flush_loop(&flusher))?);
    for index in 0..inner.options.compaction_threads {
        let compactor = Arc::clone(inner);
        handles.push(spawn_named(&format!("storage-compact-{index}"), move || {
            compaction_loop(&compactor)
        })?);
    }
    Ok(handles)
}

fn spawn_named(name: &str, body: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(body)
        .map_err(|e| Error::io("spawn thread", name, e))
}

/// Runs `work`, turning a panic (a broken invariant) into an error, so the
/// bookkeeping around it is undone and waiters see a failure, not a hang.
fn run_guarded(work: impl FnOnce() -> Result<()>) -> Result<()> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(Error::Background(format!("background work panicked: {message}")))
        }
    }
}

/// Records a background failure: writes are refused from now on.
fn fail(inner: &Inner, error: &Error) {
    if inner.stopping.load(Ordering::Acquire) {
        return;
    }
    tracing::error!(%error, "background work failed; the database refuses writes until reopened");
    inner.bg.lock().error.get_or_insert_with(|| error.to_string());
    inner.bg_done.notify_all();
}

/// What the flush thread does next.
enum FlushWork {
    /// Create the WAL the next memtable rotation will use.
    SpareWal,
    /// Flush this frozen memtable (the oldest).
    Flush(Arc<Memtable>),
}

fn flush_loop(inner: &Inner) {
    // After a failed attempt, the next spare WAL waits for the next flush
    // (rotation creates its WAL itself meanwhile) rather than retrying in
    // a loop against a failing disk.
    let mut spare_failed = false;
    loop {
        let work = {
            let mut bg = inner.bg.lock();
            loop {
                if bg.shutting_down || bg.error.is_some() {
                    return;
                }
                if !spare_failed && !crate::write::has_spare_wal(inner) {
                    break FlushWork::SpareWal;
                }
                if let Some(oldest) = inner.super_version().imms.last().cloned() {
                    break FlushWork::Flush(oldest);
                }
                inner.bg_work.wait_for(&mut bg, IDLE_RECHECK);
            }
        };
        let oldest = match work {
            FlushWork::SpareWal => {
                if let Err(error) = crate::write::prepare_spare_wal(inner) {
                    tracing::warn!(%error, "could not create a spare WAL; the next rotation creates its own");
                    spare_failed = true;
                }
                continue;
            }
            FlushWork::Flush(oldest) => oldest,
        };
        if let Err(error) = run_guarded(|| flush_memtable(inner, &oldest)) {
            return fail(inner, &error);
        }
        spare_failed = false;
        inner.bg.lock().compaction_wanted = true;
        inner.bg_work.notify_all();
        inner.bg_done.notify_all();
    }
}

/// The blob side of a flush or compaction, as the options set it up.
fn separation<'a>(inner: &'a Inner, collect: &'a BTreeMap<u64, Arc<BlobFile>>) -> Separation<'a> {
    Separation::new(
        &*inner.options.fs,
        &inner.dir,
        inner.options.blob_value_bytes_min,
        inner.options.blob_file_bytes_target,
        collect,
    )
}

/// Writes the frozen memtable `imm` to L0 and drops it from memory and its
/// WALs from disk.
fn flush_memtable(inner: &Inner, imm: &Arc<Memtable>) -> Result<()> {
    let policy = DropPolicy {
        smallest_snapshot: inner.smallest_snapshot(),
        drop_tombstones: false,
    };
    let mut iter = imm.iter();
    iter.seek_to_first()?;
    let nothing_to_collect = BTreeMap::new();
    let written = write_tables(
        &*inner.options.fs,
        &inner.dir,
        &mut iter,
        policy,
        separation(inner, &nothing_to_collect),
        inner.table_options.clone(),
        u64::MAX,
        &mut || inner.versions.lock().new_file_number(),
    )?;
    let outputs = written.tables;

    let mut versions = inner.versions.lock();
    let added = outputs
        .iter()
        .map(|meta| Ok((0, versions.open_table(meta.clone())?)))
        .collect::<Result<Vec<_>>>()?;
    let sv = inner.super_version();
    let position = sv
        .imms
        .iter()
        .position(|m| Arc::ptr_eq(m, imm))
        .expect("only the flush thread removes frozen memtables");
    // The WAL of the next newer memtable is the oldest one still needed.
    let next_wal = match position {
        0 => sv.mem.wal_number(),
        _ => sv.imms[position - 1].wal_number(),
    };
    let edit = VersionEdit {
        log_number: Some(next_wal),
        last_sequence: Some(imm.last_sequence()),
        metadata: imm.metadata(),
        new_files: outputs.iter().map(|m| (0, m.clone())).collect(),
        new_blobs: written.blobs.files,
        ..VersionEdit::default()
    };
    let version = versions.log_and_apply(edit, &added)?;
    publish_debt(inner, &version);
    {
        let mut state = inner.state.write();
        let imms = state.imms.iter().filter(|m| !Arc::ptr_eq(m, imm)).cloned().collect();
        *state = Arc::new(SuperVersion {
            mem: Arc::clone(&state.mem),
            imms,
            version,
        });
    }
    drop(versions);
    Counters::add(&inner.counters.flushes, 1);
    let flushed: u64 = outputs.iter().map(|m| m.size_bytes).sum();
    Counters::add(&inner.counters.level_bytes_written[0], flushed);
    Counters::add(&inner.counters.blob_bytes_written, written.stats.blob_bytes_written);
    // The manifest now says WALs below `next_wal` are not needed.
    let fs = &*inner.options.fs;
    for name in io::list_dir(fs, &inner.dir)? {
        if let Some(number) = name.strip_suffix(".wal").and_then(|s| s.parse::<u64>().ok()) {
            if number < next_wal {
                io::remove_if_exists(fs, &inner.dir.join(wal_name(number)))?;
            }
        }
    }
    Ok(())
}

fn compaction_loop(inner: &Inner) {
    loop {
        let plan = {
            let mut bg = inner.bg.lock();
            loop {
                if bg.shutting_down || bg.error.is_some() {
                    return;
                }
                if bg.compaction_wanted {
                    let version = inner.super_version().version.clone();
                    match pick_and_reserve(inner, &mut bg, &version) {
                        Some(plan) => break (plan, version),
                        None => bg.compaction_wanted = false,
                    }
                }
                inner.bg_work.wait_for(&mut bg, IDLE_RECHECK);
            }
        };
        let (plan, version) = plan;
        let result = run_guarded(|| run_compaction(inner, &plan, &version));
        let mut bg = inner.bg.lock();
        for number in plan.inputs.iter().chain(&plan.next_inputs) {
            bg.busy_files.remove(number);
        }
        bg.compaction_wanted = true;
        drop(bg);
        inner.bg_done.notify_all();
        inner.bg_work.notify_all();
        if let Err(error) = result {
            return fail(inner, &error);
        }
    }
}

fn summaries<'a>(version: &'a Version, busy: &std::collections::HashSet<u64>) -> [Vec<FileSummary<'a>>; LEVELS] {
    std::array::from_fn(|level| {
        version.levels[level]
            .iter()
            .map(|f| FileSummary {
                number: f.meta.number,
                size_bytes: f.meta.size_bytes,
                smallest: f.meta.smallest_user_key(),
                largest: f.meta.largest_user_key(),
                busy: busy.contains(&f.meta.number),
                oldest_blob: f.meta.oldest_blob,
                largest_sequence: f.meta.largest_sequence,
            })
            .collect()
    })
}

fn shape(inner: &Inner) -> Shape {
    shape_of(&inner.options)
}

fn shape_of(options: &Options) -> Shape {
    Shape {
        l0_compaction_trigger: options.l0_compaction_trigger,
        l0_compaction_bytes_max: options.l0_compaction_bytes_max,
        l1_bytes_target: options.l1_bytes_target,
        level_size_ratio: options.level_size_ratio,
    }
}

/// The compaction debt of `version`, in bytes (see
/// [`picker::pending_compaction_bytes`]).
pub(crate) fn pending_compaction_bytes(options: &Options, version: &Version) -> u64 {
    let level_bytes: [u64; LEVELS] =
        std::array::from_fn(|level| version.levels[level].iter().map(|f| f.meta.size_bytes).sum());
    picker::pending_compaction_bytes(&level_bytes, version.levels[0].len(), &shape_of(options))
}

/// Publishes `version`'s compaction debt to the write controller.
fn publish_debt(inner: &Inner, version: &Version) {
    let pending = pending_compaction_bytes(&inner.options, version);
    inner.pending_compaction_bytes.store(pending, Ordering::Relaxed);
}

fn pick_and_reserve(inner: &Inner, bg: &mut crate::db::BgState, version: &Version) -> Option<Plan> {
    let summaries = summaries(version, &bg.busy_files);
    let plan = picker::pick(&summaries, &shape(inner), &bg.cursors).or_else(|| {
        // Nothing else to do: move the live values out of blob files that
        // are mostly garbage, so their space comes back even where no
        // write would make their tables compact.
        let due: std::collections::BTreeSet<u64> = collectable_blobs(inner, version).into_keys().collect();
        picker::pick_blob_collection(&summaries, &due)
    })?;
    bg.busy_files
        .extend(plan.inputs.iter().chain(&plan.next_inputs).copied());
    Some(plan)
}

/// The blob files of `version` whose garbage reached the collection ratio.
fn collectable_blobs(inner: &Inner, version: &Version) -> BTreeMap<u64, Arc<BlobFile>> {
    version
        .blobs
        .iter()
        .filter(|(_, blob)| blob.garbage_at_least(inner.options.blob_collection_garbage_ratio))
        .map(|(&number, blob)| (number, Arc::clone(&blob.file)))
        .collect()
}

fn files_of(version: &Version, level: usize, numbers: &[u64]) -> Vec<Arc<TableFile>> {
    version.levels[level]
        .iter()
        .filter(|f| numbers.contains(&f.meta.number))
        .cloned()
        .collect()
}

/// Carries out `plan` against `version` (whose files it names) and installs
/// the result.
fn run_compaction(inner: &Inner, plan: &Plan, version: &Version) -> Result<()> {
    let inputs = files_of(version, plan.level, &plan.inputs);
    let next_inputs = files_of(version, plan.output_level(), &plan.next_inputs);
    assert_eq!(
        inputs.len(),
        plan.inputs.len(),
        "a compaction plan names files missing from its version"
    );
    let mut edit = VersionEdit::default();
    edit.deleted_files.extend(plan.inputs.iter().map(|&n| (plan.level, n)));
    edit.deleted_files
        .extend(plan.next_inputs.iter().map(|&n| (plan.output_level(), n)));

    if plan.is_trivial_move() {
        // One file with nothing below it to merge with: move, don't rewrite.
        let file = &inputs[0];
        edit.new_files.push((plan.output_level(), file.meta.clone()));
        let moved = [(plan.output_level(), Arc::clone(file))];
        install(inner, edit, &moved, &[])?;
    } else {
        let all: Vec<&Arc<TableFile>> = inputs.iter().chain(&next_inputs).collect();
        let smallest = all.iter().map(|f| f.meta.smallest_user_key()).min().unwrap_or_default();
        let largest = all.iter().map(|f| f.meta.largest_user_key()).max().unwrap_or_default();
        let policy = DropPolicy {
            smallest_snapshot: inner.smallest_snapshot(),
            // Never in L0: older L0 files outside the compaction may hold
            // what a tombstone shadows.
            drop_tombstones: plan.output_level() > 0
                && picker::is_bottommost(
                    &summaries(version, &Default::default()),
                    plan.output_level(),
                    smallest,
                    largest,
                ),
        };
        // Live values met in mostly-garbage blob files move to new ones.
        let collect = collectable_blobs(inner, version);
        // An intra-L0 compaction writes one file (see `Plan::is_intra_l0`).
        let points = if plan.is_intra_l0() {
            Vec::new()
        } else {
            picker::split_points(
                &summaries_of(&inputs),
                &summaries_of(&next_inputs),
                inner.options.subcompactions_max,
                inner.options.subcompaction_bytes_min,
            )
        };
        let written = run_parts(inner, plan, &inputs, &next_inputs, policy, &collect, points)?;
        let (outputs, stats) = (written.tables, written.stats);
        Counters::add(&inner.counters.blob_bytes_written, stats.blob_bytes_written);
        let c = &inner.counters;
        let output_level = plan.output_level();
        Counters::add(&c.compaction_bytes_written, stats.bytes_written);
        Counters::add(&c.level_bytes_written[output_level], stats.bytes_written);
        let read_inputs: u64 = inputs.iter().map(|f| f.meta.size_bytes).sum();
        let read_next: u64 = next_inputs.iter().map(|f| f.meta.size_bytes).sum();
        // An in-place rewrite reads the output level's own files.
        let (read_above, read_level) = if plan.in_place {
            (0, read_inputs)
        } else {
            (read_inputs, read_next)
        };
        Counters::add(&c.level_bytes_read_from_above[output_level], read_above);
        Counters::add(&c.level_bytes_read_from_level[output_level], read_level);
        let added = {
            let versions = inner.versions.lock();
            outputs
                .iter()
                .map(|meta| Ok((plan.output_level(), versions.open_table(meta.clone())?)))
                .collect::<Result<Vec<_>>>()?
        };
        edit.new_files = outputs.iter().map(|m| (plan.output_level(), m.clone())).collect();
        edit.blob_garbage = written.blobs.garbage_entries();
        edit.new_blobs = written.blobs.files;
        let obsolete: Vec<Arc<TableFile>> = inputs.iter().chain(&next_inputs).cloned().collect();
        install(inner, edit, &added, &obsolete)?;
    }
    if let Some(largest) = inputs.iter().map(|f| f.meta.largest_user_key()).max() {
        inner.bg.lock().cursors[plan.level] = largest.to_vec();
    }
    Counters::add(&inner.counters.compactions, 1);
    if plan.is_intra_l0() {
        Counters::add(&inner.counters.intra_l0_compactions, 1);
    }
    Ok(())
}

fn summaries_of(files: &[Arc<TableFile>]) -> Vec<FileSummary<'_>> {
    files
        .iter()
        .map(|f| FileSummary {
            number: f.meta.number,
            size_bytes: f.meta.size_bytes,
            smallest: f.meta.smallest_user_key(),
            largest: f.meta.largest_user_key(),
            busy: false,
            oldest_blob: f.meta.oldest_blob,
            largest_sequence: f.meta.largest_sequence,
        })
        .collect()
}

/// A part's user-key range, `[start, end)`; `None` is unbounded.
type KeyRange = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Merges `inputs` (of `plan.level`) with `next_inputs` into new tables,
/// split at `points` into key-range parts that run at the same time, each
/// on a thread of its own (the first on the caller's). The tables come
/// back in key order.
fn run_parts(
    inner: &Inner,
    plan: &Plan,
    inputs: &[Arc<TableFile>],
    next_inputs: &[Arc<TableFile>],
    policy: DropPolicy,
    collect: &BTreeMap<u64, Arc<BlobFile>>,
    points: Vec<Vec<u8>>,
) -> Result<Written> {
    let starts = std::iter::once(None).chain(points.iter().cloned().map(Some));
    let ends = points.iter().cloned().map(Some).chain(std::iter::once(None));
    let mut ranges: Vec<KeyRange> = starts.zip(ends).collect();
    let first = ranges.remove(0);
    Counters::add(&inner.counters.subcompactions, ranges.len() as u64);
    let results: Vec<Result<Written>> = std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(ranges.len());
        let mut results = Vec::with_capacity(ranges.len() + 1);
        for (start, end) in ranges {
            let spawned = std::thread::Builder::new()
                .name("storage-subcompact".to_string())
                .spawn_scoped(scope, move || {
                    run_part(inner, plan, inputs, next_inputs, policy, collect, start, end)
                });
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(e) => results.push(Err(Error::io("spawn thread", "storage-subcompact", e))),
            }
        }
        results.push(run_part(
            inner,
            plan,
            inputs,
            next_inputs,
            policy,
            collect,
            first.0,
            first.1,
        ));
        for handle in handles {
            results.push(
                handle
                    .join()
                    .unwrap_or_else(|_| Err(Error::Background("a sub-compaction panicked".to_string()))),
            );
        }
        results
    });
    let mut all = Written::default();
    for part in results {
        let part = part?;
        all.tables.extend(part.tables);
        all.blobs.absorb(part.blobs);
        all.stats.entries_read += part.stats.entries_read;
        all.stats.entries_dropped += part.stats.entries_dropped;
        all.stats.bytes_written += part.stats.bytes_written;
        all.stats.blob_bytes_written += part.stats.blob_bytes_written;
    }
    // Parts cover disjoint, ascending key ranges, so their tables do too.
    all.tables.sort_by(|a, b| crate::key::compare(&a.smallest, &b.smallest));
    Ok(all)
}

/// One key-range part of a compaction: the entries of `[start, end)`.
#[allow(clippy::too_many_arguments)]
fn run_part(
    inner: &Inner,
    plan: &Plan,
    inputs: &[Arc<TableFile>],
    next_inputs: &[Arc<TableFile>],
    policy: DropPolicy,
    collect: &BTreeMap<u64, Arc<BlobFile>>,
    start: Option<Vec<u8>>,
    end: Option<Vec<u8>>,
) -> Result<Written> {
    let (level0, mut runs) = if plan.level == 0 {
        (inputs, Vec::new())
    } else {
        (&[][..], vec![inputs.to_vec()])
    };
    runs.push(next_inputs.to_vec());
    let limiter = inner.compaction_limiter.clone();
    let mut input = RangeInput::open(level0, runs, start, end, limiter)?;
    write_tables(
        &*inner.options.fs,
        &inner.dir,
        &mut input,
        policy,
        separation(inner, collect),
        inner.table_options.clone(),
        if plan.is_intra_l0() {
            u64::MAX
        } else {
            inner.options.table_bytes_target
        },
        &mut || inner.versions.lock().new_file_number(),
    )
}

/// Logs `edit`, publishes the new version, and marks `obsolete` files for
/// deletion once the last reader lets go of them.
fn install(
    inner: &Inner,
    edit: VersionEdit,
    added: &[(usize, Arc<TableFile>)],
    obsolete: &[Arc<TableFile>],
) -> Result<()> {
    let mut versions = inner.versions.lock();
    let version = versions.log_and_apply(edit, added)?;
    publish_debt(inner, &version);
    {
        let mut state = inner.state.write();
        *state = Arc::new(SuperVersion {
            mem: Arc::clone(&state.mem),
            imms: state.imms.clone(),
            version,
        });
    }
    drop(versions);
    // Only now is the edit that drops these files durable.
    for file in obsolete {
        file.mark_obsolete();
    }
    Ok(())
}

/// Compacts the files with keys in `bounds` of every level into the next,
/// top to bottom, in the caller's thread, until they sit in the deepest
/// level that holds data; waits for background compactions that hold
/// needed files. Files outside the bounds are left alone.
pub(crate) fn compact_range(inner: &Inner, bounds: &KeyBounds) -> Result<()> {
    for level in 0..LEVELS - 1 {
        loop {
            let mut bg = inner.bg.lock();
            if let Some(message) = &bg.error {
                return Err(Error::Background(message.clone()));
            }
            let version = inner.super_version().version.clone();
            let deepest = (0..LEVELS).rev().find(|&l| !version.levels[l].is_empty()).unwrap_or(0);
            // Everything ends up in the deepest level holding data (at least L1).
            if level >= deepest.max(1) {
                break;
            }
            let plan = match picker::pick_manual(&summaries(&version, &bg.busy_files), level, bounds) {
                ManualPick::Done => break,
                ManualPick::Wait => {
                    inner.bg_done.wait_for(&mut bg, IDLE_RECHECK);
                    continue;
                }
                ManualPick::Run(plan) => plan,
            };
            bg.busy_files
                .extend(plan.inputs.iter().chain(&plan.next_inputs).copied());
            drop(bg);
            let result = run_guarded(|| run_compaction(inner, &plan, &version));
            let mut bg = inner.bg.lock();
            for number in plan.inputs.iter().chain(&plan.next_inputs) {
                bg.busy_files.remove(number);
            }
            // What it made garbage may give the compaction threads work.
            bg.compaction_wanted = true;
            drop(bg);
            inner.bg_done.notify_all();
            inner.bg_work.notify_all();
            result?;
        }
    }
    Ok(())
}
