//! The cluster and member commands.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use cluster_client::{Client, MembershipResponse, StatusResponse};

use crate::cli::{ClusterCommand, MemberCommand, MemberSpec, OutputFormat};
use crate::data::Printer;

/// `kvctl cluster ...`.
pub async fn cluster(client: &Client, out: &Printer, command: &ClusterCommand) -> Result<ExitCode> {
    match command {
        ClusterCommand::Status {
            require_leader,
            metrics,
        } => status(client, out, *require_leader, *metrics).await,
        ClusterCommand::Init { members } => init(client, out, members).await,
        ClusterCommand::Digest => digest(client, out).await,
    }
}

/// `kvctl member ...`.
pub async fn member(client: &Client, out: &Printer, command: &MemberCommand) -> Result<ExitCode> {
    let reply = match command {
        MemberCommand::AddLearner { id, addr, peer_addr } => client
            .add_learner_with_peer_addr(*id, addr.clone(), peer_addr.clone())
            .await
            .context("add-learner failed")?,
        MemberCommand::Promote { id } => {
            let leader = client.leader_status().await.context("cannot find the leader")?;
            if !leader.members.iter().any(|m| m.id == *id) {
                bail!("node {id} is not a member; add it with `kvctl member add-learner` first");
            }
            let mut voters: Vec<u64> = leader.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
            if !voters.contains(id) {
                voters.push(*id);
            }
            client.change_membership(voters).await.context("promote failed")?
        }
        MemberCommand::Remove { id } => client.remove_node(*id).await.context("remove failed")?,
    };
    print_membership(out, &reply)?;
    Ok(ExitCode::SUCCESS)
}

fn print_membership(out: &Printer, reply: &MembershipResponse) -> Result<()> {
    let members: Vec<serde_json::Value> = reply
        .members
        .iter()
        .map(|m| serde_json::json!({ "id": m.id, "addr": m.addr, "peer_addr": m.peer_addr, "voter": m.voter }))
        .collect();
    let json = serde_json::json!({ "log_index": reply.log_index, "members": members });
    let mut text = format!("OK (membership at log index {})\n", reply.log_index);
    for m in &reply.members {
        let role = if m.voter { "voter" } else { "learner" };
        let peer = if m.peer_addr.is_empty() || m.peer_addr == m.addr {
            String::new()
        } else {
            format!("  (peer {})", m.peer_addr)
        };
        let _ = writeln!(text, "  {:>4}  {:<24}  {role}{peer}", m.id, m.addr);
    }
    out.emit(&json, text.trim_end())
}

/// Each endpoint's figures from its metrics endpoint (the address its
/// status names), read concurrently, in the order of `results`.
async fn scrape_all(
    results: &[(String, Result<StatusResponse, cluster_client::Error>)],
) -> Vec<Result<crate::metrics::Figures, String>> {
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (_, result)) in results.iter().enumerate() {
        let metrics_addr = match result {
            Err(_) => Err("unreachable".to_owned()),
            Ok(s) if s.metrics_addr.is_empty() => Err("serves no metrics (start it with --metrics-listen)".to_owned()),
            Ok(s) => Ok(s.metrics_addr.clone()),
        };
        tasks.spawn(async move {
            let figures = match metrics_addr {
                Err(why) => Err(why),
                Ok(addr) => crate::metrics::scrape(&addr)
                    .await
                    .map(|scrape| crate::metrics::figures(&scrape))
                    .map_err(|e| format!("{e:#}")),
            };
            (index, figures)
        });
    }
    let mut figures: Vec<Result<crate::metrics::Figures, String>> = vec![Err("not scraped".to_owned()); results.len()];
    while let Some(joined) = tasks.join_next().await {
        if let Ok((index, scraped)) = joined {
            figures[index] = scraped;
        }
    }
    figures
}

/// The leader id every answer agrees on, if every endpoint answered and
/// all name the same, known leader.
fn agreed_leader(results: &[(String, Result<StatusResponse, cluster_client::Error>)]) -> Option<u64> {
    let mut agreed = None;
    for (_, result) in results {
        let leader = result.as_ref().ok()?.leader_id;
        if leader == 0 || agreed.is_some_and(|a| a != leader) {
            return None;
        }
        agreed = Some(leader);
    }
    agreed
}

async fn status(client: &Client, out: &Printer, require_leader: bool, metrics: bool) -> Result<ExitCode> {
    let results = client.status_all().await;
    let figures = if metrics {
        Some(scrape_all(&results).await)
    } else {
        None
    };
    // The leader's last log index, for the lag column: the leader at the
    // highest term among the answers.
    let leader_last_log = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .filter(|s| s.role == "leader")
        .max_by_key(|s| s.term)
        .map(|s| s.last_log_index);
    let lag = |s: &StatusResponse| leader_last_log.map(|last| last.saturating_sub(s.applied_index));
    match out.format {
        OutputFormat::Json => {
            let mut rows: Vec<serde_json::Value> = results
                .iter()
                .map(|(endpoint, result)| match result {
                    Ok(s) => serde_json::json!({
                        "endpoint": endpoint, "reachable": true, "id": s.id, "addr": s.addr, "peer_addr": s.peer_addr,
                        "role": s.role, "term": s.term, "leader_id": s.leader_id, "leader_addr": s.leader_addr,
                        "last_log_index": s.last_log_index, "commit_index": s.commit_index,
                        "applied_index": s.applied_index, "lag": lag(s),
                        "snapshot_index": s.snapshot_index, "purged_index": s.purged_index,
                        "metrics_addr": s.metrics_addr, "cluster_id": s.cluster_id,
                    }),
                    Err(error) => serde_json::json!({
                        "endpoint": endpoint, "reachable": false, "error": error.to_string(),
                    }),
                })
                .collect();
            for (row, figures) in rows.iter_mut().zip(figures.iter().flatten()) {
                row["metrics"] = match figures {
                    Ok(figures) => figures.to_json(),
                    Err(error) => serde_json::json!({ "error": error }),
                };
            }
            out.emit(&serde_json::Value::Array(rows), "")?;
        }
        OutputFormat::Table => {
            let mut text = format!(
                "{:<4} {:<22} {:<10} {:>6} {:>6} {:>10} {:>10} {:>10} {:>8}\n",
                "ID", "ADDRESS", "ROLE", "TERM", "LEADER", "LAST_LOG", "COMMIT", "APPLIED", "LAG"
            );
            for (endpoint, result) in &results {
                let _ = match result {
                    Ok(s) => writeln!(
                        text,
                        "{:<4} {:<22} {:<10} {:>6} {:>6} {:>10} {:>10} {:>10} {:>8}",
                        s.id,
                        s.addr,
                        s.role,
                        s.term,
                        if s.leader_id == 0 {
                            "-".to_owned()
                        } else {
                            s.leader_id.to_string()
                        },
                        s.last_log_index,
                        s.commit_index,
                        s.applied_index,
                        lag(s).map_or_else(|| "-".to_owned(), |l| l.to_string()),
                    ),
                    Err(error) => writeln!(text, "{:<4} {:<22} unreachable: {error}", "-", endpoint),
                };
            }
            if let Some(figures) = &figures {
                let _ = writeln!(text, "\n{}", crate::metrics::table_header());
                for ((endpoint, result), figures) in results.iter().zip(figures) {
                    let id = result.as_ref().map_or_else(|_| "-".to_owned(), |s| s.id.to_string());
                    let _ = match figures {
                        Ok(figures) => writeln!(text, "{}", crate::metrics::table_row(&id, figures)),
                        Err(error) => writeln!(text, "{id:<4} {endpoint}: {error}"),
                    };
                }
            }
            out.emit(&serde_json::Value::Null, text.trim_end())?;
        }
    }
    if require_leader && agreed_leader(&results).is_none() {
        bail!("the endpoints do not all answer and agree on one leader");
    }
    Ok(ExitCode::SUCCESS)
}

async fn init(client: &Client, out: &Printer, members: &[MemberSpec]) -> Result<ExitCode> {
    let members: Vec<MemberSpec> = if members.is_empty() {
        client
            .endpoints()
            .into_iter()
            .zip(1u64..)
            .map(|(addr, id)| MemberSpec {
                id,
                addr,
                peer_addr: None,
            })
            .collect()
    } else {
        members.to_vec()
    };
    let request = members
        .iter()
        .map(|m| (m.id, m.addr.clone(), m.peer_addr.clone()))
        .collect();
    client
        .initialize_with_peer_addrs(request)
        .await
        .context("initialize failed")?;
    let json = serde_json::json!({
        "members": members
            .iter()
            .map(|m| serde_json::json!({ "id": m.id, "addr": m.addr, "peer_addr": m.peer_addr }))
            .collect::<Vec<_>>(),
    });
    let list: Vec<String> = members
        .iter()
        .map(|m| match &m.peer_addr {
            Some(peer_addr) => format!("{}={}/{peer_addr}", m.id, m.addr),
            None => format!("{}={}", m.id, m.addr),
        })
        .collect();
    out.emit(
        &json,
        &format!("initialized a cluster of {} voters: {}", members.len(), list.join(", ")),
    )?;
    Ok(ExitCode::SUCCESS)
}

async fn digest(client: &Client, out: &Printer) -> Result<ExitCode> {
    let mut rows = Vec::new();
    for endpoint in client.endpoints() {
        let result = client.digest(&endpoint).await;
        rows.push((endpoint, result));
    }
    let answers: Vec<_> = rows.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
    let same_index = answers.windows(2).all(|w| w[0].applied_index == w[1].applied_index);
    let same_digest = answers
        .windows(2)
        .all(|w| w[0].digest == w[1].digest && w[0].keys == w[1].keys);
    match out.format {
        OutputFormat::Json => {
            let json: Vec<serde_json::Value> = rows
                .iter()
                .map(|(endpoint, r)| match r {
                    Ok(d) => serde_json::json!({
                        "endpoint": endpoint, "applied_index": d.applied_index, "keys": d.keys, "digest": d.digest,
                    }),
                    Err(error) => serde_json::json!({ "endpoint": endpoint, "error": error.to_string() }),
                })
                .collect();
            out.emit(&serde_json::Value::Array(json), "")?;
        }
        OutputFormat::Table => {
            let mut text = format!(
                "{:<22} {:>10} {:>10}  {:<16}\n",
                "ENDPOINT", "APPLIED", "KEYS", "DIGEST"
            );
            for (endpoint, r) in &rows {
                let _ = match r {
                    Ok(d) => writeln!(
                        text,
                        "{endpoint:<22} {:>10} {:>10}  {:<16}",
                        d.applied_index, d.keys, d.digest
                    ),
                    Err(error) => writeln!(text, "{endpoint:<22} unreachable: {error}"),
                };
            }
            let verdict = match (same_index, same_digest) {
                (true, true) => "replicas agree",
                (true, false) => "REPLICAS DIFFER at the same applied index",
                (false, _) => "applied indexes differ (writes in flight?): digests not comparable",
            };
            let _ = write!(text, "{verdict}");
            out.emit(&serde_json::Value::Null, &text)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(leader_id: u64) -> Result<StatusResponse, cluster_client::Error> {
        Ok(StatusResponse {
            leader_id,
            ..StatusResponse::default()
        })
    }

    #[test]
    fn a_leader_is_agreed_only_when_everyone_answers_and_names_it() {
        // The start script polls `--require-leader`; a half-up cluster must not pass.
        let row = |r| ("a:1".to_owned(), r);
        assert_eq!(agreed_leader(&[row(answer(2)), row(answer(2))]), Some(2));
        assert_eq!(agreed_leader(&[row(answer(2)), row(answer(3))]), None);
        assert_eq!(agreed_leader(&[row(answer(0)), row(answer(0))]), None);
        assert_eq!(
            agreed_leader(&[row(answer(2)), row(Err(cluster_client::Error::NoEndpoints))]),
            None
        );
        assert_eq!(agreed_leader(&[]), None);
    }
}
