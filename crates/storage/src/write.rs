//! The write path: group commit, WAL, memtable insert, and backpressure
//! (paced by the write controller while compaction is behind).
//!
//! Writers queue up; the first to find no leader becomes the leader, takes
//! every queued batch (up to `GROUP_BYTES_MAX`), appends them to the WAL in
//! one write, fsyncs once if any of them asked for it, inserts them into the
//! memtable, publishes their sequence numbers and wakes their writers. A
//! leader whose own batch did not fit keeps leading; when it is done it
//! hands leadership to the next queued writer.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::batch::WriteBatch;
use crate::db::{wal_name, Inner, SuperVersion};
use crate::error::{Error, Result};
use crate::key::{SequenceNumber, SEQUENCE_MAX};
use crate::log::{LogKind, LogWriter};
use crate::memtable::Memtable;
use crate::options::WriteOptions;
use crate::stats::Counters;
use crate::write_controller::{self, Debt, Limits, Pacer, Throttle};

/// Bytes of batches one leader commits at most in one group.
const GROUP_BYTES_MAX: usize = 4 << 20;
/// The shortest pacing sleep, in microseconds: a write owing less goes on
/// at once and its time is carried to the next (sleeps this short are
/// mostly scheduler overhead).
const WRITE_DELAY_SLEEP_MICROS_MIN: u64 = 1_000;
/// The longest single pacing sleep; after it the debt is looked at again,
/// so writers speed up soon after compaction catches up.
const WRITE_DELAY_SLICE: Duration = Duration::from_millis(20);
/// How often a stalled writer re-checks whether it may go on.
const STALL_RECHECK: Duration = Duration::from_millis(100);

/// What only the group-commit leader touches.
#[derive(Debug)]
pub(crate) struct WriterState {
    wal: LogWriter,
    wal_number: u64,
    last_sequence: SequenceNumber,
    buf: Vec<u8>,
    record: Vec<u8>,
    /// Paces write groups while compaction is behind.
    pacer: Pacer,
    /// The pacer's clock starts here.
    epoch: Instant,
}

impl WriterState {
    pub fn new(wal: LogWriter, wal_number: u64, last_sequence: SequenceNumber) -> Self {
        WriterState {
            wal,
            wal_number,
            last_sequence,
            buf: Vec::new(),
            record: Vec::new(),
            pacer: Pacer::default(),
            epoch: Instant::now(),
        }
    }
}

enum SlotState {
    Waiting,
    /// The previous leader handed leadership to this writer.
    Lead,
    Done(Result<()>),
}

struct Slot {
    state: Mutex<SlotState>,
    cv: Condvar,
}

impl Slot {
    fn set(&self, state: SlotState) {
        *self.state.lock() = state;
        self.cv.notify_one();
    }
}

struct Pending {
    slot: Arc<Slot>,
    batch: WriteBatch,
    options: WriteOptions,
}

/// Writers waiting for a leader to commit them.
#[derive(Default)]
pub(crate) struct WriteQueue {
    pending: VecDeque<Pending>,
    leader_active: bool,
}

/// Commits `batch`, possibly together with concurrent writers' batches.
pub(crate) fn write(inner: &Inner, batch: WriteBatch, options: WriteOptions) -> Result<()> {
    batch.validate()?;
    if batch.is_empty() && batch.metadata().is_none() {
        return Ok(());
    }
    let slot = Arc::new(Slot {
        state: Mutex::new(SlotState::Waiting),
        cv: Condvar::new(),
    });
    let lead_now = {
        let mut queue = inner.queue.lock();
        queue.pending.push_back(Pending {
            slot: Arc::clone(&slot),
            batch,
            options,
        });
        !std::mem::replace(&mut queue.leader_active, true)
    };
    if !lead_now {
        let mut state = slot.state.lock();
        loop {
            match std::mem::replace(&mut *state, SlotState::Waiting) {
                SlotState::Done(result) => return result,
                SlotState::Lead => break,
                SlotState::Waiting => slot.cv.wait(&mut state),
            }
        }
    }
    lead(inner, &slot)
}

/// See [`crate::Db::write_may_wait`].
pub(crate) fn may_wait(inner: &Inner, bytes: usize) -> bool {
    if inner.queue.lock().leader_active {
        return true;
    }
    let options = &inner.options;
    let sv = inner.super_version();
    let mem_has_room = sv.mem.approximate_bytes().saturating_add(bytes) < options.memtable_bytes_max;
    !mem_has_room || write_controller::throttle(debt(inner, &sv), &limits(options)) != Throttle::None
}

/// Commits groups until `own` is done, then passes leadership on.
fn lead(inner: &Inner, own: &Arc<Slot>) -> Result<()> {
    let mut writer = inner.writer.lock();
    loop {
        let group = take_group(inner);
        // A panic here is a bug, but it must not strand the group's other
        // writers (and every later one) waiting for a leader that is gone:
        // it fails the group and, through the background error, every
        // later write, like a failed WAL append.
        let committed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            commit_group(inner, &mut writer, &group)
        }));
        let result = committed.unwrap_or_else(|panic| {
            let reason = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(Error::Background(format!("the write leader panicked: {reason}")))
        });
        let own_result = finish_group(inner, group, result, own);
        if let Some(own_result) = own_result {
            drop(writer);
            hand_off(inner);
            return own_result;
        }
    }
}

fn take_group(inner: &Inner) -> Vec<Pending> {
    let mut queue = inner.queue.lock();
    let mut group = Vec::new();
    let mut bytes = 0;
    while let Some(next) = queue.pending.front() {
        let size = next.batch.approximate_bytes();
        if !group.is_empty() && bytes + size > GROUP_BYTES_MAX {
            break;
        }
        bytes += size;
        group.extend(queue.pending.pop_front());
    }
    group
}

/// Wakes every writer of `group` with its result; returns the leader's own.
fn finish_group(inner: &Inner, group: Vec<Pending>, result: Result<()>, own: &Arc<Slot>) -> Option<Result<()>> {
    let failure = result.as_ref().err().map(|e| e.to_string());
    if let Some(message) = &failure {
        // A failed WAL append or sync leaves the log in an unknown state:
        // refuse every later write rather than risk a hole in it.
        inner.bg.lock().error.get_or_insert_with(|| message.clone());
    }
    let mut result = Some(result);
    let mut own_result = None;
    for pending in group {
        let is_own = Arc::ptr_eq(&pending.slot, own);
        let this = match &failure {
            None => Ok(()),
            Some(_) if is_own => result.take().unwrap_or(Ok(())),
            Some(message) => Err(Error::Background(message.clone())),
        };
        if is_own {
            own_result = Some(this);
        } else {
            pending.slot.set(SlotState::Done(this));
        }
    }
    own_result
}

fn hand_off(inner: &Inner) {
    let mut queue = inner.queue.lock();
    match queue.pending.front() {
        Some(next) => next.slot.set(SlotState::Lead),
        None => queue.leader_active = false,
    }
}

fn commit_group(inner: &Inner, writer: &mut WriterState, group: &[Pending]) -> Result<()> {
    let group_bytes: usize = group.iter().map(|p| p.batch.approximate_bytes()).sum();
    make_room(inner, writer, false, group_bytes as u64)?;
    let count: u64 = group.iter().map(|p| p.batch.len() as u64).sum();
    if writer.last_sequence + count > SEQUENCE_MAX {
        return Err(Error::InvalidArgument("sequence numbers exhausted".to_string()));
    }
    writer.buf.clear();
    let mut sequence = writer.last_sequence + 1;
    let mut sync = false;
    for pending in group.iter().filter(|p| !p.options.disable_wal) {
        writer.record.clear();
        pending.batch.encode_into(&mut writer.record, sequence);
        LogWriter::frame(&mut writer.buf, &writer.record);
        sync |= pending.options.sync;
        sequence += pending.batch.len() as u64;
    }
    if !writer.buf.is_empty() {
        if sync {
            writer.wal.allocate_ahead(writer.buf.len() as u64)?;
        }
        writer.wal.add_framed(&writer.buf)?;
        if sync {
            writer.wal.sync()?;
            Counters::add(&inner.counters.wal_syncs, 1);
        }
    }
    // The memtable insert comes after the WAL write: a batch is visible only
    // once it would survive a crash as well as its options promise.
    let mem = Arc::clone(&inner.super_version().mem);
    let mut sequence = writer.last_sequence + 1;
    for pending in group {
        let metadata = pending.batch.metadata();
        mem.insert(pending.batch.entries(), sequence, metadata.map(|m| m.as_ref()));
        if let Some(metadata) = metadata {
            *inner.latest_metadata.lock() = Some(metadata.clone());
        }
        sequence += pending.batch.len() as u64;
    }
    writer.last_sequence = sequence - 1;
    inner.visible_sequence.store(writer.last_sequence, Ordering::Release);
    Counters::add(&inner.counters.write_groups, 1);
    Counters::add(&inner.counters.write_batches, group.len() as u64);
    Ok(())
}

/// Makes sure the active memtable may take more writes: freezes it when
/// full (or when `force`), paces a group of `group_bytes` while compaction
/// is behind, and stalls when flushes or compactions are too far behind.
fn make_room(inner: &Inner, writer: &mut WriterState, mut force: bool, group_bytes: u64) -> Result<()> {
    let options = &inner.options;
    let mut paced = false;
    loop {
        if let Some(message) = &inner.bg.lock().error {
            return Err(Error::Background(message.clone()));
        }
        let sv = inner.super_version();
        let mem_full = sv.mem.approximate_bytes() >= options.memtable_bytes_max;
        let mem_empty = sv.mem.is_empty() && sv.mem.metadata().is_none();
        match write_controller::throttle(debt(inner, &sv), &limits(options)) {
            Throttle::Stop => {
                stall(inner)?;
                continue;
            }
            Throttle::Delay { bytes_per_sec } => {
                inner
                    .delayed_write_bytes_per_sec
                    .store(bytes_per_sec, Ordering::Relaxed);
                if !paced && group_bytes > 0 {
                    paced = true;
                    pace(inner, writer, group_bytes, bytes_per_sec);
                    continue;
                }
            }
            Throttle::None => {
                writer.pacer.reset();
                inner.delayed_write_bytes_per_sec.store(0, Ordering::Relaxed);
            }
        }
        if !(mem_full || force && !mem_empty) {
            return Ok(());
        } else if sv.imms.len() >= options.immutable_memtables_max {
            stall(inner)?;
        } else {
            rotate(inner, writer, &sv)?;
            force = false;
        }
    }
}

/// The compaction debt the write controller judges by.
fn debt(inner: &Inner, sv: &SuperVersion) -> Debt {
    Debt {
        l0_files: sv.version.levels[0].len(),
        pending_compaction_bytes: inner.pending_compaction_bytes.load(Ordering::Relaxed),
    }
}

fn limits(options: &crate::Options) -> Limits {
    Limits {
        l0_slowdown_files: options.l0_slowdown_trigger,
        l0_stop_files: options.l0_stop_trigger,
        pending_compaction_slowdown_bytes: options.pending_compaction_bytes_slowdown,
        pending_compaction_stop_bytes: options.pending_compaction_bytes_stop,
        delayed_write_bytes_per_sec_max: options.delayed_write_bytes_per_sec_max,
        delayed_write_bytes_per_sec_min: options.delayed_write_bytes_per_sec_min,
    }
}

/// Sleeps as long as the pacer says a group of `group_bytes` must wait at
/// `bytes_per_sec`, in slices, ending early once the debt is paid off.
fn pace(inner: &Inner, writer: &mut WriterState, group_bytes: u64, bytes_per_sec: u64) {
    let now_micros = |writer: &WriterState| u64::try_from(writer.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
    let wait_micros = writer.pacer.charge(now_micros(writer), group_bytes, bytes_per_sec);
    if wait_micros < WRITE_DELAY_SLEEP_MICROS_MIN {
        return;
    }
    let started = Instant::now();
    let until = started + Duration::from_micros(wait_micros);
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        std::thread::sleep((until - now).min(WRITE_DELAY_SLICE));
        let sv = inner.super_version();
        let stopping = inner.stopping.load(Ordering::Acquire);
        if stopping || write_controller::throttle(debt(inner, &sv), &limits(&inner.options)) == Throttle::None {
            writer.pacer.reset();
            break;
        }
    }
    Counters::add(&inner.counters.write_slowdowns, 1);
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    Counters::add(&inner.counters.write_slowdown_micros, micros);
}

/// Waits for background work to finish, counting the stall.
fn stall(inner: &Inner) -> Result<()> {
    let started = Instant::now();
    let mut bg = inner.bg.lock();
    if bg.shutting_down {
        return Err(Error::Background("the database is closing".to_string()));
    }
    inner.bg_work.notify_all();
    inner.bg_done.wait_for(&mut bg, STALL_RECHECK);
    drop(bg);
    Counters::add(&inner.counters.write_stalls, 1);
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    Counters::add(&inner.counters.write_stall_micros, micros);
    Ok(())
}

/// Whether a spare WAL is ready for the next rotation.
pub(crate) fn has_spare_wal(inner: &Inner) -> bool {
    inner.spare_wal.lock().is_some()
}

/// Creates the WAL the next memtable rotation will use, if none is ready,
/// so that the rotation (which holds up every writer) does not wait for a
/// file creation, its header's fsync and a directory fsync. Called only by
/// the flush thread.
///
/// A spare left unused by a crash is an empty WAL newer than every other:
/// recovery replays nothing from it, and the first flush after the next
/// open deletes it like any WAL below the manifest's log number.
pub(crate) fn prepare_spare_wal(inner: &Inner) -> Result<()> {
    if has_spare_wal(inner) {
        return Ok(());
    }
    let number = inner.versions.lock().new_file_number();
    let fs = &*inner.options.fs;
    let wal = LogWriter::create(fs, &inner.dir.join(wal_name(number)), LogKind::Wal)?;
    // Its name is durable before any write goes to it.
    crate::io::sync_dir(fs, &inner.dir)?;
    let mut spare = inner.spare_wal.lock();
    assert!(spare.is_none(), "only the flush thread prepares spare WALs");
    *spare = Some((number, wal));
    Ok(())
}

/// Freezes the active memtable and starts a new one with a new WAL (the
/// spare the flush thread prepared, or else one created here).
fn rotate(inner: &Inner, writer: &mut WriterState, sv: &SuperVersion) -> Result<()> {
    let fs = &*inner.options.fs;
    let spare = inner.spare_wal.lock().take();
    let (number, wal, name_synced) = match spare {
        // WAL numbers must grow with memtable age (recovery, flush and the
        // manifest's log number rely on it). A spare numbered before a WAL
        // created here while it was being prepared is stale: unused, it is
        // deleted with the WALs below the log number after a flush.
        Some((number, wal)) if number > writer.wal_number => (number, wal, true),
        _ => {
            let number = inner.versions.lock().new_file_number();
            let wal = LogWriter::create(fs, &inner.dir.join(wal_name(number)), LogKind::Wal)?;
            (number, wal, false)
        }
    };
    assert!(
        number > writer.wal_number,
        "a new memtable's WAL must be numbered after the one it replaces"
    );
    // The old WAL is synced before writes go to the new one, so a machine
    // crash cannot keep a later write while losing an earlier one; the
    // zeros written ahead of its records are cut off, since only the newest
    // WAL may end in anything but a record.
    writer.wal.finish()?;
    if !name_synced {
        crate::io::sync_dir(fs, &inner.dir)?;
    }
    writer.wal = wal;
    writer.wal_number = number;
    // Built from the state as it is now, under its lock: a flush or
    // compaction may have installed a newer version (or dropped a flushed
    // memtable) since `sv` was read, and that must not be undone.
    let mut state = inner.state.write();
    assert!(
        Arc::ptr_eq(&state.mem, &sv.mem),
        "only the write leader replaces the active memtable"
    );
    let mut imms = Vec::with_capacity(state.imms.len() + 1);
    imms.push(Arc::clone(&state.mem));
    imms.extend(state.imms.iter().cloned());
    *state = Arc::new(SuperVersion {
        mem: Arc::new(Memtable::new(number, inner.options.memtable_bytes_max)),
        imms,
        version: Arc::clone(&state.version),
    });
    drop(state);
    inner.bg_work.notify_all();
    Ok(())
}

/// Freezes the memtable (if it holds anything) and waits until every frozen
/// memtable is flushed.
pub(crate) fn flush(inner: &Inner) -> Result<()> {
    let target_wal = {
        let mut writer = inner.writer.lock();
        make_room(inner, &mut writer, true, 0)?;
        writer.wal_number
    };
    loop {
        let sv = inner.super_version();
        if sv.imms.iter().all(|m| m.wal_number() >= target_wal) {
            return Ok(());
        }
        let mut bg = inner.bg.lock();
        if let Some(message) = &bg.error {
            return Err(Error::Background(message.clone()));
        }
        if bg.shutting_down {
            return Err(Error::Background("the database is closing".to_string()));
        }
        inner.bg_work.notify_all();
        inner.bg_done.wait_for(&mut bg, STALL_RECHECK);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::{Db, Options};

    /// Waits (bounded) until the flush thread has a spare WAL ready; returns its number.
    fn spare_number(db: &Db) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((number, _)) = &*db.inner.spare_wal.lock() {
                return *number;
            }
            assert!(Instant::now() < deadline, "no spare WAL was prepared");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn wal_files(dir: &std::path::Path) -> Vec<u64> {
        let mut numbers: Vec<u64> = std::fs::read_dir(dir)
            .expect("list")
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".wal")?.parse().ok())
            .collect();
        numbers.sort_unstable();
        numbers
    }

    #[test]
    fn a_rotation_takes_the_wal_the_flush_thread_prepared() {
        // A WAL created and fsynced off the write path keeps rotations (which hold up every writer) short.
        let dir = tempfile::tempdir().expect("tempdir");
        let options = Options {
            memtable_bytes_max: 4096,
            ..Options::default()
        };
        let db = Db::open(dir.path(), options.clone()).expect("open");
        let spare = spare_number(&db);
        let first_wal = db.inner.super_version().mem.wal_number();
        let mut i = 0;
        while db.inner.super_version().mem.wal_number() == first_wal {
            db.put(format!("key{i:06}"), [b'v'; 100]).expect("put");
            i += 1;
        }
        assert_eq!(db.inner.super_version().mem.wal_number(), spare);
        // The flush thread prepares the next one.
        assert!(spare_number(&db) > spare);
        drop(db);

        // An unused spare left behind is an empty WAL: the next open replays nothing from it,
        // and the first flush deletes it.
        let leftover = *wal_files(dir.path()).last().expect("a WAL");
        let db = Db::open(dir.path(), options).expect("reopen");
        assert_eq!(db.scan(..).expect("scan").count(), i);
        db.flush().expect("flush");
        assert!(
            !wal_files(dir.path()).contains(&leftover),
            "the leftover spare WAL stays"
        );
    }

    #[test]
    fn a_write_that_would_freeze_the_memtable_or_follow_another_writer_may_wait() {
        // Callers that must not block rely on `false` meaning a plain memtable insert.
        let dir = tempfile::tempdir().expect("tempdir");
        let options = Options {
            memtable_bytes_max: 4096,
            ..Options::default()
        };
        let db = Db::open(dir.path(), options).expect("open");
        assert!(!db.write_may_wait(100), "an empty memtable has room");
        assert!(db.write_may_wait(5000), "a write larger than the memtable freezes it");
        while db.inner.super_version().mem.approximate_bytes() < 4096 - 200 {
            db.put(b"k", [b'v'; 100]).expect("put");
        }
        assert!(db.write_may_wait(400), "the memtable has no room left for it");
        db.inner.queue.lock().leader_active = true;
        assert!(db.write_may_wait(1), "another writer holds the write path");
        db.inner.queue.lock().leader_active = false;
    }
}
