//! Graceful shutdown: a leader hands leadership to its most up-to-date
//! follower before it stops, so the cluster does not wait out an election
//! timeout.
//!
//! openraft 0.9 has no leadership transfer call. The leader asks the chosen
//! follower to campaign at once (`raft.v1.Raft/TimeoutNow`, which calls
//! `raft.trigger().elect()` there). Why that wins at once in a three-node
//! cluster: a voter whose vote is committed refuses vote requests for a
//! leader lease (`election_timeout_max`) after its vote was last touched.
//! The other follower touched it on the last heartbeat, so it refuses; but
//! the old leader touched its own vote only when it was elected, so once it
//! has led longer than the lease it grants the vote (the candidate's log is
//! as long as its own: the handoff waits for that) and steps down. The
//! candidate then holds two of three votes. The alternative, stopping the
//! leader's Raft and letting the target campaign after the other follower's
//! lease ends, costs a full lease (and a campaign the old leader no longer
//! answers), so it is slower by construction.
//!
//! A leader elected less than a lease ago refuses too: the candidate's
//! higher term then still makes the old leader step down (its next
//! heartbeat is rejected), and the candidate wins after its own election
//! timeout, about as fast as a plain failover; the leaving node has its
//! own elections switched off, so it cannot win that term back. A write in flight when the
//! node began refusing them can lengthen the leader's log after the
//! successor caught up; the successor then loses the vote, this node wins
//! the next term, and the handoff tries again. Every wait here is bounded.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use openraft::{LogId, ServerState};
use proto::raft as pb;

use crate::network::Network;
use crate::types::{NodeId, Raft};

/// How long in-flight requests may take to finish once a node stops
/// accepting new ones, in ms; the server is stopped after that regardless.
pub const SHUTDOWN_DRAIN_MS: u64 = 2000;
/// How long a stopping leader tries to hand leadership over, in ms, from
/// the shutdown signal to another node leading; it then stops anyway.
pub const HANDOFF_MS_MAX: u64 = 3000;
/// Handoff attempts at most. An attempt fails when a write that was in
/// flight as the node started refusing them lengthened the leader's log
/// after the successor caught up: the successor then loses the vote, and
/// this node wins the next term again.
pub const HANDOFF_ATTEMPTS_MAX: u32 = 3;
/// How long the `TimeoutNow` call (connect and answer) may take, in ms.
pub const TIMEOUT_NOW_RPC_MS_MAX: u64 = 500;

/// What a handoff did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handoff {
    /// This node was not the leader: nothing to hand over.
    NotLeader,
    /// The leader is the only voter.
    NoSuccessor,
    /// Another node leads now.
    Moved {
        /// The new leader.
        to: NodeId,
        /// From the start of the handoff to the new leader, in ms.
        elapsed_ms: u64,
    },
    /// The handoff did not complete; the cluster elects a leader by
    /// timeout once this node stops.
    Failed {
        /// Why.
        reason: String,
    },
}

/// The voter (other than `leader`) that holds the most of the leader's log,
/// by its matched log index in `matched`; ties go to the lowest id, so the
/// choice is deterministic. `None` when `leader` is the only voter.
pub fn pick_successor(
    leader: NodeId,
    voters: impl IntoIterator<Item = NodeId>,
    matched: &BTreeMap<NodeId, Option<LogId<NodeId>>>,
) -> Option<NodeId> {
    let matched_index = |id: &NodeId| matched.get(id).copied().flatten().map(|log_id| log_id.index);
    voters
        .into_iter()
        .filter(|id| *id != leader)
        // `max_by_key` keeps the last maximum; the reversed id makes the
        // lowest id the last among equals.
        .max_by_key(|id| (matched_index(id), std::cmp::Reverse(*id)))
}

/// If this node leads, hands leadership to its most up-to-date follower
/// and waits (bounded) until another node leads. Call it after the node
/// stopped accepting writes, so the log stops growing. `network` is the
/// node's own transport, so the call to the successor goes the way Raft's
/// do (mutual TLS on a TLS cluster).
pub async fn hand_off(raft: &Raft, network: &Network) -> Handoff {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(HANDOFF_MS_MAX);
    if raft.metrics().borrow().state != ServerState::Leader {
        return Handoff::NotLeader;
    }
    // This node is leaving: once it steps down it must not campaign (its
    // election timer would race the successor's, and with a log one entry
    // longer it would win). Its Raft stops after the drain anyway.
    raft.runtime_config().elect(false);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let target = match successor(raft) {
            Ok(Some(target)) => target,
            Ok(None) => return Handoff::NoSuccessor,
            Err(reason) => return Handoff::Failed { reason },
        };
        let attempt = async {
            wait_caught_up(raft, target.id).await?;
            send_timeout_now(network, &target).await?;
            Ok::<_, String>(wait_election(raft, target.leader_id, target.term).await)
        };
        let outcome = match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(reason)) => return Handoff::Failed { reason },
            Err(_) => {
                return Handoff::Failed {
                    reason: format!("no other leader within {HANDOFF_MS_MAX} ms"),
                }
            }
        };
        match outcome {
            Election::Other(to) => {
                return Handoff::Moved {
                    to,
                    elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                }
            }
            Election::Again if attempts < HANDOFF_ATTEMPTS_MAX => {
                tracing::info!(attempts, "this node won the election again; handing over once more");
            }
            Election::Again => {
                return Handoff::Failed {
                    reason: format!("this node kept winning the election ({attempts} attempts)"),
                }
            }
            Election::Stopped => {
                return Handoff::Failed {
                    reason: "raft stopped".to_string(),
                }
            }
        }
    }
}

/// The follower a handoff goes to, and what the leader tells it.
struct Target {
    id: NodeId,
    peer_addr: String,
    leader_id: NodeId,
    term: u64,
}

/// The successor of this node, if it still leads and has one.
fn successor(raft: &Raft) -> Result<Option<Target>, String> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    if m.state != ServerState::Leader {
        return Err("lost leadership before handing it over".to_string());
    }
    let membership = m.membership_config.membership();
    let matched: BTreeMap<NodeId, Option<LogId<NodeId>>> = m
        .replication
        .as_ref()
        .map(|r| r.iter().map(|(id, log_id)| (*id, *log_id)).collect())
        .unwrap_or_default();
    let Some(id) = pick_successor(m.id, membership.voter_ids(), &matched) else {
        return Ok(None);
    };
    let node = membership
        .get_node(&id)
        .ok_or_else(|| format!("voter {id} has no address in the membership"))?;
    Ok(Some(Target {
        id,
        peer_addr: node.peer_addr().to_string(),
        leader_id: m.id,
        term: m.current_term,
    }))
}

/// Waits until `successor` has matched the leader's whole log and the
/// leader has applied all of it. Applied too, because a write in flight
/// holds a batch between proposal and apply: once none is, the log grows
/// only if a write queued before the refusals began is proposed now.
async fn wait_caught_up(raft: &Raft, successor: NodeId) -> Result<(), String> {
    let mut metrics = raft.metrics();
    loop {
        {
            let m = metrics.borrow_and_update();
            if m.state != ServerState::Leader {
                return Err("lost leadership while waiting for the successor".to_string());
            }
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&successor).copied().flatten())
                .map(|log_id| log_id.index);
            let applied = m.last_applied.map(|log_id| log_id.index);
            if matched >= m.last_log_index && applied >= m.last_log_index {
                return Ok(());
            }
        }
        if metrics.changed().await.is_err() {
            return Err("raft stopped".to_string());
        }
    }
}

/// How the election a handoff started ended, as this node sees it.
enum Election {
    /// Another node leads.
    Other(NodeId),
    /// This node leads again, in a later term than `term`.
    Again,
    /// Raft stopped.
    Stopped,
}

/// Waits until this node (`me`, leader in `term`) sees the outcome of the
/// election it asked for.
async fn wait_election(raft: &Raft, me: NodeId, term: u64) -> Election {
    let mut metrics = raft.metrics();
    loop {
        {
            let m = metrics.borrow_and_update();
            if let Some(leader) = m.current_leader.filter(|id| *id != me) {
                return Election::Other(leader);
            }
            if m.state == ServerState::Leader && m.current_term > term {
                return Election::Again;
            }
        }
        if metrics.changed().await.is_err() {
            return Election::Stopped;
        }
    }
}

/// Asks `target` to campaign now.
async fn send_timeout_now(network: &Network, target: &Target) -> Result<(), String> {
    let addr = &target.peer_addr;
    let call = async {
        let mut client = network.raft_client(target.id, addr)?;
        client
            .timeout_now(pb::TimeoutNowRequest {
                leader_id: target.leader_id,
                term: target.term,
            })
            .await
            .map_err(|status| format!("{addr} refused TimeoutNow: {status}"))?;
        Ok(())
    };
    tokio::time::timeout(Duration::from_millis(TIMEOUT_NOW_RPC_MS_MAX), call)
        .await
        .map_err(|_| format!("TimeoutNow to {addr} took over {TIMEOUT_NOW_RPC_MS_MAX} ms"))?
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn at(index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(CommittedLeaderId::new(1, 1), index))
    }

    #[test]
    fn the_successor_is_the_voter_with_the_longest_matched_log() {
        // A successor behind the leader's log would lose the old leader's vote.
        let matched = BTreeMap::from([(2, at(7)), (3, at(9))]);
        assert_eq!(pick_successor(1, [1, 2, 3], &matched), Some(3));
    }

    #[test]
    fn ties_go_to_the_lowest_id_and_unknown_progress_ranks_last() {
        // Deterministic choice; a voter with nothing matched is the last resort.
        let matched = BTreeMap::from([(2, at(9)), (3, at(9)), (4, None)]);
        assert_eq!(pick_successor(1, [1, 2, 3, 4], &matched), Some(2));
        assert_eq!(pick_successor(1, [1, 4, 5], &matched), Some(4));
    }

    #[test]
    fn a_lone_voter_has_no_successor_and_learners_are_never_chosen() {
        // Only voters can win an election.
        let matched = BTreeMap::from([(2, at(9))]);
        assert_eq!(pick_successor(1, [1], &matched), None);
    }
}
