//! The write path: group commit, WAL, memtable insert, and backpressure.
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

/// Bytes of batches one leader commits at most in one group.
const GROUP_BYTES_MAX: usize = 4 << 20;
/// How long a write is delayed when L0 passes its slowdown trigger.
const SLOWDOWN_DELAY: Duration = Duration::from_millis(1);
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
}

impl WriterState {
    pub fn new(wal: LogWriter, wal_number: u64, last_sequence: SequenceNumber) -> Self {
        WriterState {
            wal,
            wal_number,
            last_sequence,
            buf: Vec::new(),
            record: Vec::new(),
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
    make_room(inner, writer, false)?;
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
/// full (or when `force`), and slows down or stalls while flushes and L0
/// compactions are behind.
fn make_room(inner: &Inner, writer: &mut WriterState, mut force: bool) -> Result<()> {
    let options = &inner.options;
    let mut delayed = false;
    loop {
        if let Some(message) = &inner.bg.lock().error {
            return Err(Error::Background(message.clone()));
        }
        let sv = inner.super_version();
        let l0_files = sv.version.levels[0].len();
        let mem_full = sv.mem.approximate_bytes() >= options.memtable_bytes_max;
        let mem_empty = sv.mem.is_empty() && sv.mem.metadata().is_none();
        if l0_files >= options.l0_stop_trigger {
            stall(inner)?;
        } else if !delayed && l0_files >= options.l0_slowdown_trigger {
            delayed = true;
            Counters::add(&inner.counters.write_slowdowns, 1);
            std::thread::sleep(SLOWDOWN_DELAY);
        } else if !(mem_full || force && !mem_empty) {
            return Ok(());
        } else if sv.imms.len() >= options.immutable_memtables_max {
            stall(inner)?;
        } else {
            rotate(inner, writer, &sv)?;
            force = false;
        }
    }
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

/// Freezes the active memtable and starts a new one with a new WAL.
fn rotate(inner: &Inner, writer: &mut WriterState, sv: &SuperVersion) -> Result<()> {
    let number = inner.versions.lock().new_file_number();
    let fs = &*inner.options.fs;
    let wal = LogWriter::create(fs, &inner.dir.join(wal_name(number)), LogKind::Wal)?;
    // The old WAL is synced before writes go to the new one, so a machine
    // crash cannot keep a later write while losing an earlier one.
    writer.wal.sync()?;
    crate::io::sync_dir(fs, &inner.dir)?;
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
        mem: Arc::new(Memtable::new(number)),
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
        make_room(inner, &mut writer, true)?;
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
