//! `kvctl`: the command line client of the replicated key/value database.
//!
//! # Layout
//!
//! - `cli`: the command line (clap derive) and the exit codes text.
//! - `codec`: hex, and the `key<TAB>value` / JSON lines formats.
//! - `data`: put, get, delete, range, batch-put.
//! - `cluster`: cluster status/init/digest and membership changes.
//! - `bench`: the load generator.
//! - `cert`: a throwaway CA and certificates for a local TLS cluster.
//!
//! Exit codes: 0 success, 1 failure (reason on stderr), 2 bad usage.

#![deny(clippy::unwrap_used)]

mod bench;
mod cert;
mod cli;
mod cluster;
mod codec;
mod data;
mod metrics;
mod snapshot;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use cli::{Cli, Command};
use cluster_client::{Client, ClientIdentity};

/// The exit code of a failed operation.
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    // Usage errors exit with 2 and `--help` with 0, inside `parse`.
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(code) => code,
        Err(error) => {
            let _ = std::io::stdout().flush();
            eprintln!("kvctl: error: {error:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Builds the client the global options describe.
fn client(cli: &Cli) -> Result<Client> {
    let mut builder = Client::builder(cli.endpoints.iter().filter(|e| !e.trim().is_empty()).cloned());
    if let Some(ms) = cli.timeout_ms {
        builder = builder.request_timeout(Duration::from_millis(ms));
    }
    if let Command::Range { limit: Some(limit), .. } = cli.command {
        let page = u32::try_from(limit)
            .unwrap_or(u32::MAX)
            .clamp(1, cluster_client::RANGE_PAGE_SIZE_DEFAULT);
        builder = builder.range_page_size(page);
    }
    if let Some(ca) = &cli.ca {
        let read = |path: &std::path::Path, flag: &str| {
            std::fs::read_to_string(path).with_context(|| format!("cannot read --{flag} {}", path.display()))
        };
        let identity = match (&cli.client_cert, &cli.client_key) {
            (Some(cert), Some(key)) => Some(ClientIdentity {
                cert_pem: read(cert, "cert")?,
                key_pem: read(key, "key")?,
            }),
            _ => None,
        };
        builder = builder.tls(read(ca, "ca")?, identity);
    }
    builder.build().context("bad --endpoints or TLS files")
}

async fn run(cli: Cli) -> Result<ExitCode> {
    // Needs no cluster, and may make the files --ca would name.
    if let Command::Cert(args) = &cli.command {
        return cert::run(args);
    }
    let client = client(&cli)?;
    let out = data::Printer::new(cli.output, codec::Encoding::from_flag(cli.hex));
    match &cli.command {
        Command::Put { key, value } => data::put(&client, &out, key, value).await,
        Command::Get { key, stale } => data::get(&client, &out, key, *stale).await,
        Command::Delete { key } => data::delete(&client, &out, key).await,
        Command::Range {
            start,
            end,
            limit,
            stale,
        } => data::range(&client, &out, start, end.as_deref(), *limit, *stale).await,
        Command::BatchPut(args) => data::batch_put(&client, &out, args).await,
        Command::Cluster(command) => cluster::cluster(&client, &out, command).await,
        Command::Member(command) => cluster::member(&client, &out, command).await,
        Command::Bench(args) => bench::run(&client, &out, args).await,
        Command::Snapshot(command) => snapshot::snapshot(&client, &out, command).await,
        Command::Cert(_) => unreachable!("handled above"),
    }
}
