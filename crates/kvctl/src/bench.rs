//! `kvctl bench`: concurrent clients, a fixed number of operations, and a
//! latency histogram.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use cluster_client::{Client, Consistency, Error};
use hdrhistogram::Histogram;

use crate::cli::{BenchArgs, Workload};
use crate::data::{write_failed, Printer};

/// Pairs per batch when preloading the keyspace for read workloads.
const PRELOAD_BATCH_PAIRS: u64 = 1000;
/// Pairs per page of the range workload.
const RANGE_PAGE_PAIRS: u32 = 100;
/// Largest latency the histogram records, in µs; longer ones are clamped.
const LATENCY_US_MAX: u64 = 60_000_000;
/// Error messages printed at most, so a dead cluster does not flood stderr.
const ERRORS_PRINTED_MAX: u64 = 5;

/// The key for index `i` of the keyspace: `key` and zero-padded digits,
/// `size` bytes long (so keys sort by index).
fn key_of(i: u64, size: usize) -> Bytes {
    let digits = format!("{i:0>width$}", width = size.saturating_sub(3));
    let mut key = format!("key{digits}").into_bytes();
    key.truncate(size.max(3 + 20));
    Bytes::from(key)
}

fn value_of(size: usize, rng: &mut fastrand::Rng) -> Bytes {
    Bytes::from((0..size).map(|_| rng.alphanumeric() as u8).collect::<Vec<u8>>())
}

/// What one client task measured.
struct TaskResult {
    histogram: Histogram<u64>,
    errors: ErrorMix,
}

/// Failed operations by kind.
type ErrorMix = BTreeMap<String, u64>;

/// A short name for the kind of `error`, for the error mix.
fn error_kind(error: &Error) -> String {
    match error {
        Error::InvalidArgument(_) => "invalid_argument".to_owned(),
        Error::NotApplied { last, .. } if last.contains("ResourceExhausted") => "resource_exhausted".to_owned(),
        Error::NotApplied { .. } => "not_applied".to_owned(),
        Error::Unknown { .. } => "unknown_outcome".to_owned(),
        Error::SessionExpired { .. } => "session_expired".to_owned(),
        Error::Unavailable { last, .. } if last.contains("ResourceExhausted") => "resource_exhausted".to_owned(),
        Error::Unavailable { .. } => "unavailable".to_owned(),
        Error::Other(status) => format!("{:?}", status.code()).to_lowercase(),
        _ => "other".to_owned(),
    }
}

/// `kvctl bench`.
pub async fn run(client: &Client, out: &Printer, args: &BenchArgs) -> Result<ExitCode> {
    let key_size = usize::try_from(args.key_size).context("--key-size")?;
    let value_size = usize::try_from(args.value_size).context("--value-size")?;
    // One read first: against a cluster that cannot answer, every operation
    // would wait out its whole deadline (hours, for a large --ops).
    client
        .get_with(key_of(0, key_size), consistency_of(args))
        .await
        .context("the cluster does not answer; nothing measured")?;
    if args.workload != Workload::Put {
        preload(client, args, key_size, value_size).await?;
    }
    let errors_printed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = args.duration_s.map(|s| started + Duration::from_secs(s));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..args.clients {
        // Spread the operations: the first `ops % clients` tasks do one more.
        let ops = args.ops / args.clients + u64::from(task < args.ops % args.clients);
        let client = if args.session_per_client {
            client.with_new_session()
        } else {
            client.clone()
        };
        let (args, errors_printed) = (args.clone(), Arc::clone(&errors_printed));
        let plan = Plan {
            ops,
            until,
            key_size,
            value_size,
        };
        tasks.spawn(async move { run_task(client, args, plan, errors_printed).await });
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3).context("histogram")?;
    let mut errors = ErrorMix::new();
    while let Some(joined) = tasks.join_next().await {
        let result = joined.context("a bench task failed")??;
        histogram.add(&result.histogram).context("merging histograms")?;
        for (kind, count) in result.errors {
            *errors.entry(kind).or_default() += count;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    report(out, args, &histogram, &errors, seconds)?;
    Ok(ExitCode::SUCCESS)
}

/// The consistency of the bench's reads.
fn consistency_of(args: &BenchArgs) -> Consistency {
    if args.stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    }
}

async fn preload(client: &Client, args: &BenchArgs, key_size: usize, value_size: usize) -> Result<()> {
    let started = Instant::now();
    let mut rng = fastrand::Rng::new();
    let mut next = 0;
    while next < args.keyspace {
        let end = (next + PRELOAD_BATCH_PAIRS).min(args.keyspace);
        let pairs = (next..end)
            .map(|i| (key_of(i, key_size), value_of(value_size, &mut rng)))
            .collect();
        client
            .batch_put(pairs)
            .await
            .map_err(|e| write_failed("preloading the keyspace", e))?;
        next = end;
    }
    eprintln!(
        "preloaded {} keys in {:.1} s",
        args.keyspace,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What one client task does.
struct Plan {
    ops: u64,
    until: Option<Instant>,
    key_size: usize,
    value_size: usize,
}

async fn run_task(client: Client, args: BenchArgs, plan: Plan, errors_printed: Arc<AtomicU64>) -> Result<TaskResult> {
    let Plan {
        ops,
        until,
        key_size,
        value_size,
    } = plan;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3).context("histogram")?;
    let mut rng = fastrand::Rng::new();
    let consistency = consistency_of(&args);
    let mut errors = ErrorMix::new();
    for _ in 0..ops {
        if until.is_some_and(|until| Instant::now() >= until) {
            break;
        }
        let key = key_of(rng.u64(0..args.keyspace), key_size);
        let write = match args.workload {
            Workload::Put => true,
            Workload::Get | Workload::Range => false,
            Workload::Mixed => rng.bool(),
        };
        let started = Instant::now();
        let result = if write {
            client.put(key, value_of(value_size, &mut rng)).await.map(|_| ())
        } else if args.workload == Workload::Range {
            client
                .range_page(key, Bytes::new(), RANGE_PAGE_PAIRS, consistency)
                .await
                .map(|_| ())
        } else {
            client.get_with(key, consistency).await.map(|_| ())
        };
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        histogram.saturating_record(micros.clamp(1, LATENCY_US_MAX));
        if let Err(error) = result {
            *errors.entry(error_kind(&error)).or_default() += 1;
            if errors_printed.fetch_add(1, Ordering::Relaxed) < ERRORS_PRINTED_MAX {
                eprintln!("kvctl: bench: {error}");
            }
        }
    }
    Ok(TaskResult { histogram, errors })
}

fn report(out: &Printer, args: &BenchArgs, histogram: &Histogram<u64>, mix: &ErrorMix, seconds: f64) -> Result<()> {
    let errors: u64 = mix.values().sum();
    let ms = |micros: u64| Duration::from_micros(micros).as_secs_f64() * 1000.0;
    let quantile = |q: f64| ms(histogram.value_at_quantile(q));
    let ops = histogram.len();
    let throughput = if seconds > 0.0 { ops as f64 / seconds } else { 0.0 };
    let json = serde_json::json!({
        "workload": format!("{:?}", args.workload).to_lowercase(),
        "clients": args.clients, "ops": ops, "errors": errors, "error_mix": mix, "seconds": seconds,
        "ops_per_sec": throughput,
        "latency_ms": {
            "p50": quantile(0.5), "p90": quantile(0.9), "p99": quantile(0.99),
            "p999": quantile(0.999), "max": ms(histogram.max()),
        },
    });
    let text = format!(
        "{:?}: {ops} ops, {} clients, {seconds:.2} s, {throughput:.0} ops/s, {errors} errors\n\
         latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        args.workload,
        args.clients,
        quantile(0.5),
        quantile(0.9),
        quantile(0.99),
        quantile(0.999),
        ms(histogram.max()),
    );
    let text = if mix.is_empty() {
        text
    } else {
        let kinds: Vec<String> = mix.iter().map(|(kind, n)| format!("{kind} {n}")).collect();
        format!("{text}\nerrors: {}", kinds.join(", "))
    };
    out.emit(&json, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_asked_size_and_sort_by_index() {
        for size in [8, 16, 64] {
            let (a, b) = (key_of(9, size), key_of(10, size));
            assert_eq!(a.len(), size);
            assert!(a < b);
        }
        assert!(key_of(u64::MAX, 8).len() >= 8, "a large index still makes a key");
    }
}
