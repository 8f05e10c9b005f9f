//! `kvctl snapshot save|status`: backups of the cluster.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use cluster_client::Client;
use raft_node::state_machine::backup;

use crate::cli::SnapshotCommand;
use crate::data::{progress_bar, Printer};

/// Runs a `snapshot` subcommand.
pub async fn snapshot(client: &Client, out: &Printer, command: &SnapshotCommand) -> Result<ExitCode> {
    match command {
        SnapshotCommand::Save { file } => save(client, out, file).await,
        SnapshotCommand::Status { file } => status(out, file).await,
    }
}

/// The file a backup is written to before it is complete.
fn partial_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial");
    file.with_file_name(name)
}

async fn save(client: &Client, out: &Printer, file: &Path) -> Result<ExitCode> {
    let mut backup = client.backup().await.context("cannot start a backup")?;
    let partial = partial_path(file);
    let mut output = std::fs::File::create(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let bar = progress_bar(Some(backup.total_bytes));
    let received = async {
        while let Some(chunk) = backup.next_chunk().await.context("the backup stream failed")? {
            output
                .write_all(&chunk)
                .with_context(|| format!("cannot write {}", partial.display()))?;
            if let Some(bar) = &bar {
                bar.inc(chunk.len() as u64);
            }
        }
        // The backup is whole on disk before it takes the final name.
        output
            .sync_all()
            .with_context(|| format!("cannot sync {}", partial.display()))?;
        std::fs::rename(&partial, file).with_context(|| format!("cannot rename to {}", file.display()))?;
        anyhow::Ok(())
    }
    .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if let Err(error) = received {
        let _ = std::fs::remove_file(&partial);
        return Err(error);
    }
    let json = serde_json::json!({
        "file": file.display().to_string(), "index": backup.index, "term": backup.term, "bytes": backup.total_bytes,
    });
    out.emit(
        &json,
        &format!(
            "saved a backup at index {} (term {}), {} bytes, to {}",
            backup.index,
            backup.term,
            backup.total_bytes,
            file.display()
        ),
    )?;
    Ok(ExitCode::SUCCESS)
}

async fn status(out: &Printer, file: &Path) -> Result<ExitCode> {
    let path = file.to_path_buf();
    // Unpacked next to the file, so a large backup needs no space in /tmp.
    let scratch = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let summary = tokio::task::spawn_blocking(move || backup::inspect(&path, &scratch))
        .await
        .context("the check stopped")?
        .with_context(|| format!("{} is not a usable backup", file.display()))?;
    let json = serde_json::json!({
        "file": file.display().to_string(), "index": summary.index, "term": summary.term,
        "voters": summary.voters, "files": summary.files, "bytes": summary.bytes, "keys": summary.keys,
        "digest": format!("{:016x}", summary.digest), "checksums": "ok",
    });
    let voters: Vec<String> = summary.voters.iter().map(u64::to_string).collect();
    let text = format!(
        "file      {}\nindex     {}\nterm      {}\nvoters    {}\nfiles     {}\nbytes     {}\nkeys      {}\ndigest    {:016x}\nchecksums ok",
        file.display(),
        summary.index,
        summary.term,
        voters.join(","),
        summary.files,
        summary.bytes,
        summary.keys,
        summary.digest
    );
    out.emit(&json, &text)?;
    Ok(ExitCode::SUCCESS)
}
