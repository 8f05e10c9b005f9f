//! `storage-bench`: db_bench-style workloads against the storage engine.
//!
//! ```text
//! storage-bench --benchmarks fillseq,fillrandom,overwrite,readrandom,seekrandom,readwhilewriting \
//!     --num 2000000 --key-size 16 --value-size 100
//! ```
//!
//! Each workload prints one line: ops/s, MB/s and p50/p99/p99.9 latency.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use storage::{Db, Options, WriteBatch, WriteOptions};

/// db_bench-style benchmarks of the storage engine.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
struct Args {
    /// Comma-separated workloads: fillseq, fillrandom, overwrite, readrandom,
    /// seekrandom (seek + `--seek-nexts` nexts), readwhilewriting, fillsync,
    /// fillbatch (sync once per `--batch-size` puts).
    #[arg(
        long,
        default_value = "fillseq,fillrandom,overwrite,readrandom,seekrandom,readwhilewriting"
    )]
    benchmarks: String,
    /// Operations per workload.
    #[arg(long, default_value_t = 1_000_000)]
    num: u64,
    /// Reads for readrandom (and a tenth of it, seeks for seekrandom) over
    /// the `--num` keys (0 = `--num`), as db_bench's `--reads`.
    #[arg(long, default_value_t = 0)]
    reads: u64,
    /// Operations for the fillsync workload (fsync per write is slow).
    #[arg(long, default_value_t = 20_000)]
    sync_num: u64,
    /// Key size in bytes (at least 8).
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Concurrent client threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Puts per batch in fillbatch.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Entries read after each seek in seekrandom.
    #[arg(long, default_value_t = 100)]
    seek_nexts: usize,
    /// Memtable size in MiB.
    #[arg(long, default_value_t = 64)]
    memtable_mb: usize,
    /// Block cache size in MiB.
    #[arg(long, default_value_t = 256)]
    cache_mb: usize,
    /// Bloom filter bits per key (0 = none).
    #[arg(long, default_value_t = 10)]
    bloom_bits: usize,
    /// Compaction threads.
    #[arg(long, default_value_t = 2)]
    compaction_threads: usize,
    /// Table files the engine keeps open at most (its table cache).
    #[arg(long, default_value_t = 500)]
    open_files: usize,
    /// Target size of a table written by compaction, in MiB.
    #[arg(long, default_value_t = 64)]
    table_mb: u64,
    /// Values of at least this many bytes go to blob files (0: none do).
    #[arg(long, default_value_t = 1024)]
    blob_min_bytes: usize,
    /// Database directory (default: a fresh temporary directory).
    #[arg(long)]
    db: Option<PathBuf>,
    /// Seed for the random key streams.
    #[arg(long, default_value_t = 301)]
    seed: u64,
    /// Print the rate and the slowest operation of every N operations of a
    /// workload (0 = never).
    #[arg(long, default_value_t = 0)]
    stats_interval: u64,
}

impl Args {
    /// Reads per read workload: `--reads`, or `--num` when it is 0.
    fn reads(&self) -> u64 {
        if self.reads == 0 {
            self.num
        } else {
            self.reads
        }
    }
}

struct Workload<'a> {
    db: &'a Db,
    args: &'a Args,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.key_size < 8 {
        bail!("--key-size must be at least 8 bytes");
    }
    let temp = tempfile::tempdir().context("creating a temporary directory")?;
    let dir = args.db.clone().unwrap_or_else(|| temp.path().join("db"));
    let options = Options {
        memtable_bytes_max: args.memtable_mb << 20,
        block_cache_bytes: args.cache_mb << 20,
        bloom_bits_per_key: args.bloom_bits,
        compaction_threads: args.compaction_threads.max(1),
        table_files_open_max: args.open_files,
        table_bytes_target: args.table_mb << 20,
        l1_bytes_target: (args.table_mb << 20).max(Options::default().l1_bytes_target),
        blob_value_bytes_min: (args.blob_min_bytes > 0).then_some(args.blob_min_bytes),
        ..Options::default()
    };
    println!(
        "storage-bench: keys {} B, values {} B, num {}, threads {}, memtable {} MiB, cache {} MiB, bloom {} bits/key",
        args.key_size, args.value_size, args.num, args.threads, args.memtable_mb, args.cache_mb, args.bloom_bits
    );
    let mut db = Db::open(&dir, options.clone()).context("opening the database")?;
    for name in args.benchmarks.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if matches!(name, "fillseq" | "fillrandom" | "fillsync" | "fillbatch") {
            // Fill workloads start from an empty database, as db_bench's do.
            drop(db);
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
            db = Db::open(&dir, options.clone()).context("reopening the database")?;
        }
        let workload = Workload { db: &db, args: &args };
        workload.run(name)?;
    }
    let stats = db.stats();
    let levels: Vec<String> = stats.levels.iter().map(|l| format!("{}", l.files)).collect();
    println!(
        "files per level [{}], stalls {} ({} ms), slowdowns {} ({} ms), compactions {} (+{} parts, {} intra-L0), write-amp {:.2}, cache hits {} misses {}",
        levels.join(" "),
        stats.write_stalls,
        stats.write_stall_micros / 1000,
        stats.write_slowdowns,
        stats.write_slowdown_micros / 1000,
        stats.compactions,
        stats.subcompactions,
        stats.intra_l0_compactions,
        stats.write_amplification().unwrap_or(0.0),
        stats.block_cache_hits,
        stats.block_cache_misses
    );
    println!(
        "table files open {} (cached {}), table opens {}, block cache {} MiB, index+filter held by tables {} KiB, memtables {} MiB, rss {}",
        stats.table_files_open,
        stats.table_cache_tables,
        stats.table_opens,
        stats.block_cache_bytes >> 20,
        stats.table_memory_bytes >> 10,
        (stats.memtable_bytes + stats.immutable_memtable_bytes) >> 20,
        resident_set().unwrap_or_else(|| "unknown".to_string()),
    );
    let table_bytes: u64 = stats.levels.iter().map(|l| l.bytes).sum();
    println!(
        "tables {} MiB, blob files {} ({} MiB, {} MiB garbage), bytes written: tables {} MiB, blob files {} MiB",
        table_bytes >> 20,
        stats.blob_files,
        stats.blob_file_bytes >> 20,
        stats.blob_garbage_bytes >> 20,
        stats.levels.iter().map(|l| l.bytes_written).sum::<u64>() >> 20,
        stats.blob_bytes_written >> 20,
    );
    Ok(())
}

/// The process's resident set size and its peak, from `/proc/self/status`.
fn resident_set() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|value| value.trim().to_string())
    };
    Some(format!("{} (peak {})", field("VmRSS:")?, field("VmHWM:")?))
}

impl Workload<'_> {
    fn run(&self, name: &str) -> Result<()> {
        let a = self.args;
        let report = match name {
            "fillseq" => self.parallel(a.num, 1, |_, i, _| self.put(i, &WriteOptions::default()))?,
            "fillrandom" | "overwrite" => self.parallel(a.num, a.threads, |rng, _, _| {
                self.put(rng.u64(..a.num), &WriteOptions::default())
            })?,
            "fillsync" => {
                let sync = WriteOptions {
                    sync: true,
                    disable_wal: false,
                };
                self.parallel(a.sync_num, a.threads, |rng, _, _| self.put(rng.u64(..a.num), &sync))?
            }
            "fillbatch" => {
                let batches = a.num / a.batch_size as u64;
                let mut report = self.parallel(batches, a.threads, |rng, _, _| self.put_batch(rng))?;
                report.entries_per_op = a.batch_size as u64;
                report
            }
            "readrandom" => self.parallel(a.reads(), a.threads, |rng, _, found| self.get(rng.u64(..a.num), found))?,
            "seekrandom" => {
                let ops = (a.reads() / 10).max(1);
                self.parallel(ops, a.threads, |rng, _, found| self.seek(rng.u64(..a.num), found))?
            }
            "readwhilewriting" => self.read_while_writing()?,
            other => bail!("unknown benchmark {other}"),
        };
        report.print(name, a);
        Ok(())
    }

    fn key(&self, n: u64) -> Vec<u8> {
        let mut key = format!("{n:0width$}", width = self.args.key_size).into_bytes();
        key.truncate(self.args.key_size);
        key
    }

    fn value(&self, n: u64) -> Vec<u8> {
        let mut value = vec![b'v'; self.args.value_size];
        for (i, b) in n.to_le_bytes().iter().enumerate().take(value.len()) {
            value[i] = *b;
        }
        value
    }

    fn put(&self, n: u64, options: &WriteOptions) -> Result<()> {
        let mut batch = WriteBatch::new();
        batch.put(self.key(n), self.value(n));
        Ok(self.db.write(batch, options)?)
    }

    fn put_batch(&self, rng: &mut fastrand::Rng) -> Result<()> {
        let mut batch = WriteBatch::new();
        for _ in 0..self.args.batch_size {
            let n = rng.u64(..self.args.num);
            batch.put(self.key(n), self.value(n));
        }
        Ok(self.db.write(
            batch,
            &WriteOptions {
                sync: true,
                disable_wal: false,
            },
        )?)
    }

    fn get(&self, n: u64, found: &mut u64) -> Result<()> {
        if self.db.get(&self.key(n))?.is_some() {
            *found += 1;
        }
        Ok(())
    }

    fn seek(&self, n: u64, found: &mut u64) -> Result<()> {
        let start = self.key(n);
        for pair in self
            .db
            .scan((std::ops::Bound::Included(start.as_slice()), std::ops::Bound::Unbounded))?
            .take(self.args.seek_nexts)
        {
            pair?;
            *found += 1;
        }
        Ok(())
    }

    /// Runs `ops` calls of `op` spread over `threads` threads.
    fn parallel<F>(&self, ops: u64, threads: usize, op: F) -> Result<Report>
    where
        F: Fn(&mut fastrand::Rng, u64, &mut u64) -> Result<()> + Sync,
    {
        let threads = threads.max(1) as u64;
        let started = Instant::now();
        let progress = Progress::new(self.args.stats_interval, started);
        let results: Vec<Result<(Histogram<u64>, u64)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let op = &op;
                    let progress = &progress;
                    scope.spawn(move || {
                        let mut rng = fastrand::Rng::with_seed(self.args.seed + t);
                        let mut histogram = new_histogram();
                        let mut found = 0;
                        let mut i = t;
                        while i < ops {
                            let op_started = Instant::now();
                            op(&mut rng, i, &mut found)?;
                            let took = op_started.elapsed();
                            record(&mut histogram, took);
                            progress.tick(took);
                            i += threads;
                        }
                        Ok((histogram, found))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| bail!("a bench thread panicked")))
                .collect()
        });
        let elapsed = started.elapsed();
        let mut histogram = new_histogram();
        let mut found = 0;
        for result in results {
            let (h, f) = result?;
            histogram.add(&h).context("merging histograms")?;
            found += f;
        }
        Ok(Report {
            ops,
            elapsed,
            histogram,
            found,
            entries_per_op: 1,
        })
    }

    /// `threads` readers at full speed while one writer overwrites; reports the reads.
    fn read_while_writing(&self) -> Result<Report> {
        let stop = Arc::new(AtomicBool::new(false));
        std::thread::scope(|scope| {
            let writer = {
                let stop = Arc::clone(&stop);
                scope.spawn(move || -> Result<u64> {
                    let mut rng = fastrand::Rng::with_seed(self.args.seed ^ 0xabc);
                    let mut writes = 0;
                    while !stop.load(Ordering::Relaxed) {
                        self.put(rng.u64(..self.args.num), &WriteOptions::default())?;
                        writes += 1;
                    }
                    Ok(writes)
                })
            };
            let report = self.parallel(self.args.num, self.args.threads, |rng, _, found| {
                self.get(rng.u64(..self.args.num), found)
            });
            stop.store(true, Ordering::Relaxed);
            let writes = writer.join().unwrap_or_else(|_| bail!("the writer panicked"))?;
            println!("readwhilewriting: {writes} background writes");
            report
        })
    }
}

/// Per-interval progress lines for `--stats-interval`.
struct Progress {
    interval_ops: u64,
    done_ops: AtomicU64,
    /// The slowest operation of the current interval, in nanoseconds.
    slowest_nanos: AtomicU64,
    interval_started: Mutex<Instant>,
}

impl Progress {
    fn new(interval_ops: u64, started: Instant) -> Self {
        Progress {
            interval_ops,
            done_ops: AtomicU64::new(0),
            slowest_nanos: AtomicU64::new(0),
            interval_started: Mutex::new(started),
        }
    }

    /// Counts one finished operation; every `interval_ops`, prints the
    /// interval's rate and its slowest operation.
    fn tick(&self, took: Duration) {
        if self.interval_ops == 0 {
            return;
        }
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.slowest_nanos.fetch_max(nanos, Ordering::Relaxed);
        let done = self.done_ops.fetch_add(1, Ordering::Relaxed) + 1;
        if !done.is_multiple_of(self.interval_ops) {
            return;
        }
        let mut interval_started = self.interval_started.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let secs = now.duration_since(*interval_started).as_secs_f64().max(1e-9);
        *interval_started = now;
        let slowest = self.slowest_nanos.swap(0, Ordering::Relaxed);
        println!(
            "  interval ending at {done} ops: {:.0} ops/s, slowest op {:.1} ms",
            self.interval_ops as f64 / secs,
            slowest as f64 / 1e6
        );
    }
}

struct Report {
    ops: u64,
    elapsed: Duration,
    histogram: Histogram<u64>,
    found: u64,
    entries_per_op: u64,
}

impl Report {
    fn print(&self, name: &str, args: &Args) {
        let secs = self.elapsed.as_secs_f64();
        let ops_per_sec = self.ops as f64 / secs;
        let entries_per_sec = ops_per_sec * self.entries_per_op as f64;
        let mb_per_sec = entries_per_sec * (args.key_size + args.value_size) as f64 / 1e6;
        let us = |q: f64| self.histogram.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{name:<18} {ops_per_sec:>10.0} ops/s {entries_per_sec:>10.0} entries/s {mb_per_sec:>7.1} MB/s  p50 {:>8.1} us  p99 {:>8.1} us  p99.9 {:>8.1} us  max {:>8.1} us  ({} ops in {secs:.2} s, {} found)",
            us(0.5),
            us(0.99),
            us(0.999),
            self.histogram.max() as f64 / 1000.0,
            self.ops,
            self.found
        );
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static histogram bounds are valid")
}

fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX).max(1);
    histogram.saturating_record(nanos);
}
