//! Group commit: a thread that makes appended records durable with one
//! fsync for all the appends that arrived while the previous fsync ran.

use std::io;
use std::mem;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use storage::io::File;

/// What an append asks to be told once its records are durable (or not).
pub(crate) type OnDurable = Box<dyn FnOnce(io::Result<()>) + Send>;

/// State shared by the writer and the sync thread.
struct State {
    /// Callbacks of appends written but not yet synced, oldest first.
    pending: Vec<OnDurable>,
    /// The segment being appended to: the only one that can hold unsynced
    /// records, since the writer syncs a segment in full before it rolls.
    file: Arc<dyn File>,
    /// Whether the sync thread is running an fsync for a batch it took.
    in_flight: bool,
    /// The greatest end offset (in `file`) of the records the pending
    /// callbacks cover.
    pending_end_bytes: u64,
    /// Bytes of `file` known durable: covered by an fsync that completed.
    synced_bytes: u64,
    /// Bumped whenever `file` changes, so that an fsync of the previous
    /// file completing late does not count toward the new one.
    file_epoch: u64,
    /// The first write or fsync failure, after which nothing is durable
    /// for sure (a failed fsync may have dropped dirty pages): every later
    /// callback gets an error.
    failed: Option<String>,
    /// Set when the store is dropped; the thread drains and exits.
    shutdown: bool,
}

/// Upper bounds of the fsync latency buckets, in seconds (the last bucket,
/// past them, is unbounded): from a fast SSD's ~50 µs to a stalled disk.
pub const FSYNC_BUCKET_BOUNDS_SECONDS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

/// How long each fsync of a segment took: a histogram with fixed buckets,
/// updated with a few relaxed atomic adds per fsync and read at scrape
/// time.
#[derive(Debug, Default)]
pub struct SyncTimes {
    /// fsyncs per bucket of [`FSYNC_BUCKET_BOUNDS_SECONDS`], the last one
    /// for the slower ones.
    buckets: [AtomicU64; FSYNC_BUCKET_BOUNDS_SECONDS.len() + 1],
    /// Sum of all fsync durations, in nanoseconds.
    sum_nanos: AtomicU64,
}

impl SyncTimes {
    fn record(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = FSYNC_BUCKET_BOUNDS_SECONDS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(FSYNC_BUCKET_BOUNDS_SECONDS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The histogram so far: the sum of durations in seconds, the count,
    /// and `(upper bound in seconds, fsyncs in that bucket)` per bucket,
    /// the last with an infinite bound.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = FSYNC_BUCKET_BOUNDS_SECONDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)).as_secs_f64();
        (sum, count, buckets)
    }
}

/// The shared half: the state, its two conditions and the counters.
struct Shared {
    state: Mutex<State>,
    /// Signalled when callbacks are pending or shutdown is asked.
    work: Condvar,
    /// Signalled when the thread finishes a batch.
    idle: Condvar,
    /// Held across every fsync of the current segment and the recording of
    /// its failure, by the sync thread and by the writer alike. After a
    /// failed fsync Linux drops the dirty pages it covered and marks them
    /// clean, so the next fsync of the file succeeds: without this lock the
    /// sync thread's fsync could run between the writer's failed one and
    /// the writer recording the failure, succeed, and acknowledge records
    /// that are gone. Found by the simulated-disk crash test
    /// (`tests/log_store_sim_crash.rs`, a vote's fsync failing with
    /// `Fault::SyncLosesData` while appends were pending).
    sync_lock: Mutex<()>,
    /// Number of fsyncs of segment files, by anyone.
    syncs: AtomicU64,
    /// Their durations.
    times: Arc<SyncTimes>,
}

/// The handle the writer keeps; dropping it drains and stops the thread.
pub(crate) struct Syncer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Syncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syncer")
            .field("syncs", &self.shared.syncs.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Syncer {
    /// Starts the sync thread with `file` as the current segment.
    pub(crate) fn start(file: Arc<dyn File>) -> io::Result<Syncer> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: Vec::new(),
                file,
                in_flight: false,
                pending_end_bytes: 0,
                synced_bytes: 0,
                file_epoch: 0,
                failed: None,
                shutdown: false,
            }),
            work: Condvar::new(),
            idle: Condvar::new(),
            sync_lock: Mutex::new(()),
            syncs: AtomicU64::new(0),
            times: Arc::default(),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || run(&thread_shared))?;
        Ok(Syncer {
            shared,
            thread: Some(thread),
        })
    }

    /// Queues `on_durable` to run after the next fsync of the current
    /// segment. The caller has already written the records it covers,
    /// which end at `end_bytes` in the current segment.
    pub(crate) fn submit(&self, on_durable: OnDurable, end_bytes: u64) {
        let mut state = self.shared.state.lock();
        if let Some(reason) = state.failed.clone() {
            drop(state);
            on_durable(Err(failed_error(&reason)));
            return;
        }
        state.pending.push(on_durable);
        state.pending_end_bytes = state.pending_end_bytes.max(end_bytes);
        self.shared.work.notify_one();
    }

    /// Like [`submit`](Self::submit), but when the sync thread is idle
    /// (nothing queued, no fsync in flight) fsyncs `file`, the current
    /// segment, on the calling thread and runs `on_durable` here: callbacks
    /// still run in append order, and the caller saves the two thread
    /// hand-offs of the sync thread.
    pub(crate) fn sync_here_or_submit(&self, file: &dyn File, on_durable: OnDurable, end_bytes: u64) {
        {
            let state = self.shared.state.lock();
            // Only the writer (the caller) submits, so the thread cannot
            // take new work between this check and the fsync below.
            if state.failed.is_some() || !state.pending.is_empty() || state.in_flight {
                drop(state);
                self.submit(on_durable, end_bytes);
                return;
            }
        }
        let result = self.sync(file, end_bytes);
        on_durable(result.map_err(|reason| failed_error(&reason)));
    }

    /// Points the thread at a new current segment, of which `synced_bytes`
    /// (its opening) are durable.
    ///
    /// The caller must have synced the previous segment in full first: the
    /// callbacks still pending for records there are then already durable,
    /// whichever file the thread syncs before running them.
    pub(crate) fn set_file(&self, file: Arc<dyn File>, synced_bytes: u64) {
        let mut state = self.shared.state.lock();
        state.file = file;
        state.file_epoch += 1;
        state.synced_bytes = synced_bytes;
        state.pending_end_bytes = 0;
    }

    /// Bytes of the current segment known durable: every record before
    /// this offset was covered by an fsync that completed. Never more than
    /// what is durable, so a record may state it as a fact (format 2's
    /// `synced_bytes`, which recovery trusts to call damage damage).
    pub(crate) fn synced_bytes(&self) -> u64 {
        self.shared.state.lock().synced_bytes
    }

    /// Blocks until every submitted callback has run.
    pub(crate) fn wait_idle(&self) {
        let mut state = self.shared.state.lock();
        while !state.pending.is_empty() || state.in_flight {
            self.shared.idle.wait(&mut state);
        }
    }

    /// The first failure, if any.
    pub(crate) fn failure(&self) -> Option<String> {
        self.shared.state.lock().failed.clone()
    }

    /// Records a write or fsync failure seen by the writer.
    pub(crate) fn fail(&self, reason: String) {
        let mut state = self.shared.state.lock();
        state.failed.get_or_insert(reason);
    }

    /// Counts an fsync the writer ran itself (of a file other than the
    /// current segment's; those go through [`sync`](Self::sync)).
    pub(crate) fn count_sync(&self) {
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
    }

    /// fsyncs `file`, the current segment, whose records end at
    /// `end_bytes`, on the calling thread, in turn with the sync thread's
    /// fsyncs; fails without syncing if an earlier write or fsync failed.
    pub(crate) fn sync(&self, file: &dyn File, end_bytes: u64) -> Result<(), String> {
        let epoch = self.shared.state.lock().file_epoch;
        sync_serialized(&self.shared, file)?;
        note_synced(&self.shared, epoch, end_bytes);
        Ok(())
    }

    /// Number of fsyncs of segment files so far.
    pub(crate) fn sync_count(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    /// The durations of the fsyncs of segment files so far.
    pub(crate) fn times(&self) -> Arc<SyncTimes> {
        Arc::clone(&self.shared.times)
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.shared.state.lock().shutdown = true;
        self.shared.work.notify_one();
        if let Some(thread) = self.thread.take() {
            // The thread only panics if a callback did; nothing to add here.
            let _ = thread.join();
        }
    }
}

/// The sync thread: take every pending callback, fsync once, run them all.
fn run(shared: &Shared) {
    loop {
        let (batch, file, epoch, end_bytes) = {
            let mut state = shared.state.lock();
            while state.pending.is_empty() && !state.shutdown {
                shared.work.wait(&mut state);
            }
            if state.pending.is_empty() {
                return; // shutdown, and everything submitted has run
            }
            state.in_flight = true;
            let end_bytes = mem::take(&mut state.pending_end_bytes);
            (
                mem::take(&mut state.pending),
                Arc::clone(&state.file),
                state.file_epoch,
                end_bytes,
            )
        };
        let result = sync_serialized(shared, file.as_ref());
        if result.is_ok() {
            // The batch's records were written before they were submitted,
            // so before this fsync started: they are durable now.
            note_synced(shared, epoch, end_bytes);
        }
        for on_durable in batch {
            on_durable(result.clone().map_err(|reason| failed_error(&reason)));
        }
        let mut state = shared.state.lock();
        state.in_flight = false;
        shared.idle.notify_all();
    }
}

/// One fsync of the current segment, serialized with every other (see
/// `Shared::sync_lock`): fails without syncing if a failure is already
/// recorded, and records its own failure before another fsync can start.
fn sync_serialized(shared: &Shared, file: &dyn File) -> Result<(), String> {
    let _turn = shared.sync_lock.lock();
    if let Some(reason) = shared.state.lock().failed.clone() {
        return Err(reason);
    }
    shared.syncs.fetch_add(1, Ordering::Relaxed);
    // sync_data suffices: in a growing segment fdatasync also persists the
    // new size needed to read the data back; in a preallocated one only
    // data changes.
    let started = Instant::now();
    let result = file.sync_data();
    shared.times.record(started.elapsed());
    result.map_err(|e| {
        let reason = format!("fsync of the log segment failed: {e}");
        shared.state.lock().failed.get_or_insert_with(|| reason.clone());
        reason
    })
}

/// Records that the current segment is durable up to `end_bytes`, if it
/// is still the file (`epoch`) that was synced.
fn note_synced(shared: &Shared, epoch: u64, end_bytes: u64) {
    let mut state = shared.state.lock();
    if state.file_epoch == epoch {
        state.synced_bytes = state.synced_bytes.max(end_bytes);
    }
}

/// The error handed to a callback whose records may not be durable.
fn failed_error(reason: &str) -> io::Error {
    io::Error::other(reason.to_string())
}
