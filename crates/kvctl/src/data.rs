//! The data commands: put, get, delete, range, batch-put.

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use cluster_client::{Client, Consistency, Outcome, WriteResponse};
use tokio_stream::StreamExt;

use crate::cli::{BatchPutArgs, OutputFormat};
use crate::codec::{self, Encoding, LineFormat};

/// Key and value bytes of one batch, at most: a batch is sent early when it
/// reaches this, well under the server's 16 MiB request limit.
const BATCH_BYTES_MAX: usize = 8 << 20;
/// Input size from which `batch-put` shows a progress bar (on a terminal).
const PROGRESS_INPUT_BYTES_MIN: u64 = 4 << 20;
/// Longest input line `batch-put` reads, in bytes: a key and a value at their
/// limits, hex-encoded, plus JSON framing.
const LINE_BYTES_MAX: usize = 2 * (4096 + (1 << 20)) + 1024;

/// Prints results in the chosen format and encoding.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    /// Table or JSON.
    pub format: OutputFormat,
    /// Raw or hex keys and values.
    pub encoding: Encoding,
}

impl Printer {
    /// A printer for the global options.
    pub fn new(format: OutputFormat, encoding: Encoding) -> Printer {
        Printer { format, encoding }
    }

    /// Prints a JSON value on one line, or `text` for a table.
    pub fn emit(&self, json: &serde_json::Value, text: &str) -> Result<()> {
        let mut stdout = std::io::stdout().lock();
        match self.format {
            OutputFormat::Json => writeln!(stdout, "{json}"),
            OutputFormat::Table => writeln!(stdout, "{text}"),
        }
        .or_else(ignore_broken_pipe)
    }
}

/// A closed stdout (`kvctl range | head`) ends the output quietly.
pub fn ignore_broken_pipe(error: std::io::Error) -> Result<()> {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(error).context("cannot write to stdout")
    }
}

/// Explains a failed write, saying whether it may have happened.
pub fn write_failed(what: &str, error: cluster_client::Error) -> anyhow::Error {
    let outcome = match error.outcome() {
        Outcome::NotApplied => "it was not applied",
        Outcome::Unknown => "its outcome is unknown: it may or may not have been applied",
    };
    anyhow::Error::new(error).context(format!("{what} failed; {outcome}"))
}

fn print_write(out: &Printer, reply: &WriteResponse) -> Result<()> {
    let json = serde_json::json!({ "applied_index": reply.applied_index, "duplicate": reply.duplicate });
    let duplicate = if reply.duplicate { " (duplicate)" } else { "" };
    out.emit(
        &json,
        &format!("OK (applied at index {}){duplicate}", reply.applied_index),
    )
}

fn consistency(stale: bool) -> Consistency {
    if stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    }
}

/// `kvctl put KEY VALUE`.
pub async fn put(client: &Client, out: &Printer, key: &str, value: &str) -> Result<ExitCode> {
    let key = out.encoding.decode(key).context("bad KEY")?;
    let value = out.encoding.decode(value).context("bad VALUE")?;
    let reply = client.put(key, value).await.map_err(|e| write_failed("put", e))?;
    print_write(out, &reply)?;
    Ok(ExitCode::SUCCESS)
}

/// `kvctl delete KEY`.
pub async fn delete(client: &Client, out: &Printer, key: &str) -> Result<ExitCode> {
    let key = out.encoding.decode(key).context("bad KEY")?;
    let reply = client.delete(key).await.map_err(|e| write_failed("delete", e))?;
    print_write(out, &reply)?;
    Ok(ExitCode::SUCCESS)
}

/// `kvctl get KEY`: the value on stdout; a missing key prints nothing on
/// stdout, says so on stderr and exits 1.
pub async fn get(client: &Client, out: &Printer, key: &str, stale: bool) -> Result<ExitCode> {
    let key_bytes = out.encoding.decode(key).context("bad KEY")?;
    let value = client
        .get_with(key_bytes, consistency(stale))
        .await
        .context("get failed")?;
    let Some(value) = value else {
        eprintln!("kvctl: key {key:?} not found");
        return Ok(ExitCode::from(1));
    };
    match out.format {
        OutputFormat::Json => out.emit(&serde_json::json!({ "value": out.encoding.to_text(&value) }), "")?,
        OutputFormat::Table => {
            let mut stdout = std::io::stdout().lock();
            let mut line = out.encoding.to_raw(&value);
            line.push(b'\n');
            stdout.write_all(&line).or_else(ignore_broken_pipe)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kvctl range START [END]`: `key<TAB>value` lines, or JSON lines.
pub async fn range(
    client: &Client,
    out: &Printer,
    start: &str,
    end: Option<&str>,
    limit: Option<u64>,
    stale: bool,
) -> Result<ExitCode> {
    let start = out.encoding.decode(start).context("bad START")?;
    let end = match end {
        Some(end) => out.encoding.decode(end).context("bad END")?,
        None => Bytes::new(),
    };
    let mut pairs = client.range_with(start, end, consistency(stale));
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let mut printed: u64 = 0;
    while limit.is_none_or(|limit| printed < limit) {
        let Some(pair) = pairs.next().await else { break };
        let (key, value) = pair.context("range failed")?;
        let written = match out.format {
            OutputFormat::Json => writeln!(stdout, "{}", codec::pair_json(&key, &value, out.encoding)),
            OutputFormat::Table => {
                let mut line = out.encoding.to_raw(&key);
                line.push(b'\t');
                line.extend(out.encoding.to_raw(&value));
                line.push(b'\n');
                stdout.write_all(&line)
            }
        };
        if let Err(error) = written {
            return ignore_broken_pipe(error).map(|()| ExitCode::SUCCESS);
        }
        printed += 1;
    }
    stdout.flush().or_else(ignore_broken_pipe)?;
    Ok(ExitCode::SUCCESS)
}

/// Totals of a `batch-put`.
#[derive(Debug, Default)]
struct Totals {
    pairs: u64,
    batches: u64,
}

/// `kvctl batch-put [FILE|-]`.
pub async fn batch_put(client: &Client, out: &Printer, args: &BatchPutArgs) -> Result<ExitCode> {
    let (input, input_bytes): (Box<dyn Read + Send>, Option<u64>) = match &args.file {
        Some(path) if path.as_os_str() != "-" => {
            let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            let size = file.metadata().ok().map(|m| m.len());
            (Box::new(file), size)
        }
        _ => (Box::new(std::io::stdin()), None),
    };
    let format = if args.json_lines {
        LineFormat::JsonLines
    } else {
        LineFormat::Tsv
    };
    let progress = progress_bar(input_bytes);
    let batch_pairs_max = usize::try_from(args.batch_size).unwrap_or(usize::MAX);
    let started = Instant::now();
    let mut totals = Totals::default();
    let mut batch: Vec<(Bytes, Bytes)> = Vec::with_capacity(batch_pairs_max.min(10_000));
    let mut batch_bytes = 0usize;
    let mut reader = BufReader::with_capacity(1 << 16, input);
    let mut line = String::new();
    let mut line_number = 0u64;
    loop {
        line.clear();
        let read = (&mut reader)
            .take(LINE_BYTES_MAX as u64 + 1)
            .read_line(&mut line)
            .with_context(|| format!("cannot read line {}", line_number + 1))?;
        if read == 0 {
            break;
        }
        line_number += 1;
        anyhow::ensure!(
            read <= LINE_BYTES_MAX,
            "line {line_number} is longer than {LINE_BYTES_MAX} bytes"
        );
        if let Some(progress) = &progress {
            progress.inc(read as u64);
        }
        let text = line.strip_suffix('\n').unwrap_or(&line);
        let Some((key, value)) = codec::parse_line(text, format, out.encoding, line_number)? else {
            continue;
        };
        batch_bytes += key.len() + value.len();
        batch.push((key, value));
        if batch.len() >= batch_pairs_max || batch_bytes >= BATCH_BYTES_MAX {
            send_batch(client, &mut batch, &mut totals, line_number).await?;
            batch_bytes = 0;
        }
    }
    if !batch.is_empty() {
        send_batch(client, &mut batch, &mut totals, line_number).await?;
    }
    if let Some(progress) = progress {
        progress.finish_and_clear();
    }
    let seconds = started.elapsed().as_secs_f64();
    let json = serde_json::json!({ "pairs": totals.pairs, "batches": totals.batches, "seconds": seconds });
    let rate = if seconds > 0.0 {
        totals.pairs as f64 / seconds
    } else {
        0.0
    };
    let text = format!(
        "wrote {} pairs in {} batches in {seconds:.3} s ({rate:.0} pairs/s)",
        totals.pairs, totals.batches
    );
    out.emit(&json, &text)?;
    Ok(ExitCode::SUCCESS)
}

async fn send_batch(
    client: &Client,
    batch: &mut Vec<(Bytes, Bytes)>,
    totals: &mut Totals,
    line_number: u64,
) -> Result<()> {
    let pairs = batch.len() as u64;
    let taken = std::mem::take(batch);
    client.batch_put(taken).await.map_err(|e| {
        write_failed(
            &format!("batch {} (pairs up to line {line_number})", totals.batches + 1),
            e,
        )
        .context(format!(
            "{} earlier batches ({} pairs) were written",
            totals.batches, totals.pairs
        ))
    })?;
    totals.pairs += pairs;
    totals.batches += 1;
    Ok(())
}

/// A progress bar over the input bytes, only for a large file and a
/// terminal on stderr.
pub(crate) fn progress_bar(input_bytes: Option<u64>) -> Option<indicatif::ProgressBar> {
    let bytes = input_bytes.filter(|b| *b >= PROGRESS_INPUT_BYTES_MIN)?;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(bytes);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    Some(bar)
}
