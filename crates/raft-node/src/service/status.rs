//! Every error the node answers with, mapped to a gRPC status in one place.
//!
//! - bad input: `INVALID_ARGUMENT`, naming the limit;
//! - not the leader: `UNAVAILABLE` with `x-kv-leader-id` / `x-kv-leader-addr`
//!   metadata when the leader is known;
//! - no quorum, Raft stopped: `UNAVAILABLE` without a hint;
//! - too many proposals in flight: `RESOURCE_EXHAUSTED`;
//! - refusals made before proposing also carry `x-kv-not-applied: 1`, so a
//!   client knows the write did not happen (a write whose leader stepped
//!   down after proposing it may still commit);
//! - a write the state machine refused because its session cannot tell a
//!   retry from a new write (unknown or expired session, a sequence below
//!   the window): `FAILED_PRECONDITION` with `x-kv-session-expired: 1`; the
//!   write's outcome is unknown, and it was not applied now;
//! - a session with too many unanswered writes: `RESOURCE_EXHAUSTED`;
//! - a node shutting down gracefully: `UNAVAILABLE`, `x-kv-not-applied: 1`,
//!   with the leader hint when another node leads (see [`shutting_down`]);
//! - a membership or initialize call on a client port of a node with a
//!   separate peer port: `UNIMPLEMENTED`, `x-kv-not-applied: 1` (see
//!   [`served_on_peer_port`]);
//! - a failing disk: `INTERNAL`;
//! - a node whose Raft stopped on a fatal storage error (full disk, failed
//!   fsync): `UNAVAILABLE` naming the error, `x-kv-not-applied: 1`, until
//!   the node exits (see [`node_stopped`]).

use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use tonic::metadata::MetadataValue;
use tonic::Status;

use proto::raft::Refusal;

use crate::state_machine::sessions::SESSION_WRITES_UNANSWERED_MAX;
use crate::types::{Node, NodeId, Raft};

/// Metadata key carrying the leader's node id.
pub const LEADER_ID_HEADER: &str = "x-kv-leader-id";
/// Metadata key carrying the leader's `host:port`.
pub const LEADER_ADDR_HEADER: &str = "x-kv-leader-addr";
/// Metadata key set (to `1`) on refusals that happened before the request
/// was proposed: the write was certainly not applied.
pub const NOT_APPLIED_HEADER: &str = "x-kv-not-applied";

/// Metadata key set (to `1`) when a write's session is unknown or expired:
/// the server cannot tell whether an earlier attempt was applied.
pub const SESSION_EXPIRED_HEADER: &str = "x-kv-session-expired";

/// Marks `status` as a refusal that applied nothing.
pub fn not_applied(mut status: Status) -> Status {
    status
        .metadata_mut()
        .insert(NOT_APPLIED_HEADER, MetadataValue::from_static("1"));
    status
}

/// Which of the leader's addresses a not-leader answer names: the port the
/// caller used, so that following the hint reaches the same service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderHint {
    /// The leader's client address (KV and read-only calls).
    Client,
    /// The leader's peer address (membership calls on a peer port).
    Peer,
}

/// `UNAVAILABLE`, with the leader's id and client address when known.
pub fn not_leader(forward: &ForwardToLeader<NodeId, Node>) -> Status {
    not_leader_to(forward, LeaderHint::Client)
}

/// `UNAVAILABLE`, with the leader's id and its `hint` address when known.
pub fn not_leader_to(forward: &ForwardToLeader<NodeId, Node>, hint: LeaderHint) -> Status {
    let mut status = Status::unavailable(match forward.leader_id {
        Some(id) => format!("not the leader; the leader is node {id}"),
        None => "not the leader, and no leader is known yet".to_string(),
    });
    if let Some(id) = forward.leader_id {
        status.metadata_mut().insert(LEADER_ID_HEADER, MetadataValue::from(id));
    }
    if let Some(node) = &forward.leader_node {
        let addr = match hint {
            LeaderHint::Client => node.addr.as_str(),
            LeaderHint::Peer => node.peer_addr(),
        };
        if let Ok(addr) = MetadataValue::try_from(addr) {
            status.metadata_mut().insert(LEADER_ADDR_HEADER, addr);
        }
    }
    status
}

/// Maps a failed `client_write` (a proposal).
pub fn from_write_error(error: RaftError<NodeId, ClientWriteError<NodeId, Node>>) -> Status {
    from_write_error_to(error, LeaderHint::Client)
}

/// Maps a failed `client_write`, hinting at the leader's `hint` address.
pub fn from_write_error_to(error: RaftError<NodeId, ClientWriteError<NodeId, Node>>, hint: LeaderHint) -> Status {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => not_leader_to(&forward, hint),
        // A change still in progress (or a new leader that has not yet
        // committed an entry of its term) clears up by itself: retry later.
        RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(e))) => {
            not_applied(Status::unavailable(format!("a membership change is in progress: {e}")))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => Status::failed_precondition(e.to_string()),
        RaftError::Fatal(fatal) => Status::unavailable(format!("raft stopped: {fatal}")),
    }
}

/// Maps a failed leadership check of a linearizable read.
pub fn from_read_error(error: RaftError<NodeId, CheckIsLeaderError<NodeId, Node>>) -> Status {
    from_read_error_to(error, LeaderHint::Client)
}

/// Maps a failed leadership check, hinting at the leader's `hint` address.
pub fn from_read_error_to(error: RaftError<NodeId, CheckIsLeaderError<NodeId, Node>>, hint: LeaderHint) -> Status {
    match error {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)) => not_leader_to(&forward, hint),
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)) => {
            Status::unavailable(format!("the leader cannot reach a quorum: {e}"))
        }
        RaftError::Fatal(fatal) => Status::unavailable(format!("raft stopped: {fatal}")),
    }
}

/// The status for a command the state machine refused; `None` when it was
/// not refused.
pub fn from_refusal(refusal: Refusal) -> Option<Status> {
    let expired = |message: &str| {
        let mut status = Status::failed_precondition(message);
        status
            .metadata_mut()
            .insert(SESSION_EXPIRED_HEADER, MetadataValue::from_static("1"));
        status
    };
    match refusal {
        Refusal::None => None,
        Refusal::SessionExpired => Some(expired(
            "session expired: the client id names no live session (never opened, idle too long, or evicted); \
             whether an earlier attempt of this write was applied cannot be told; open a new session",
        )),
        Refusal::SequenceForgotten => Some(expired(
            "session expired for this write: its sequence is below the first_unanswered the client sent before; \
             whether it was applied cannot be told",
        )),
        Refusal::WindowFull => Some(not_applied(Status::resource_exhausted(format!(
            "the session has too many unanswered writes (session_writes_unanswered_max = {SESSION_WRITES_UNANSWERED_MAX}); \
             retry after earlier writes are answered"
        )))),
        Refusal::TooManyOpens => Some(not_applied(Status::unavailable(
            "too many sessions opened at once; retry after a backoff",
        ))),
    }
}

/// The refusal of every KV request once this node's Raft stopped on a
/// fatal error (a full disk, a failed fsync): the request was refused
/// before it reached Raft, and another node can serve it.
pub fn node_stopped(reason: &str) -> Status {
    not_applied(Status::unavailable(format!(
        "this node stopped on a fatal storage error and is exiting: {reason}"
    )))
}

/// The leader as a refusal's hint: another node that leads, or none (this
/// node leads, or no leader is known).
pub fn leader_hint(raft: &Raft) -> ForwardToLeader<NodeId, Node> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    match m.current_leader.filter(|id| *id != m.id) {
        Some(id) => ForwardToLeader {
            leader_id: Some(id),
            leader_node: m.membership_config.membership().get_node(&id).cloned(),
        },
        None => ForwardToLeader::empty(),
    }
}

/// The refusal of a KV request by a node that is shutting down
/// gracefully: `UNAVAILABLE`, `x-kv-not-applied: 1`, with the leader's id
/// and client address when another node is known to lead, so the client
/// moves on at once.
pub fn shutting_down(leader: &ForwardToLeader<NodeId, Node>) -> Status {
    let hinted = not_leader(leader);
    let mut status = Status::unavailable(format!("this node is shutting down; {}", hinted.message()));
    *status.metadata_mut() = hinted.metadata().clone();
    not_applied(status)
}

/// The refusal of a call that changes membership or initializes (`call`
/// names it) on the client port of a node that serves such calls on a
/// separate peer port only: nothing was done, and the same call on the
/// node's peer port is served.
pub fn served_on_peer_port(call: &str) -> Status {
    not_applied(Status::unimplemented(format!(
        "{call} is served on this node's peer port only (it runs with --peer-listen); \
         send it to the peer port"
    )))
}

/// `RESOURCE_EXHAUSTED` for a request refused because `what` is at its
/// bound `limit` (named as in the configuration) of `value`. Nothing was
/// started, so writes also carry `x-kv-not-applied`.
pub fn overloaded(what: &str, limit: &str, value: usize) -> Status {
    not_applied(Status::resource_exhausted(format!(
        "too many {what} ({limit} = {value}); retry after a backoff"
    )))
}

/// Maps an engine failure.
pub fn from_storage(error: &storage::Error) -> Status {
    Status::internal(format!("storage engine: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_not_leader_status_carries_the_leader_hint() {
        // Clients follow this hint to the leader without guessing.
        let status = not_leader(&ForwardToLeader::new(3, Node::new("127.0.0.1:7003")));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(
            status.metadata().get(LEADER_ID_HEADER).and_then(|v| v.to_str().ok()),
            Some("3")
        );
        assert_eq!(
            status.metadata().get(LEADER_ADDR_HEADER).and_then(|v| v.to_str().ok()),
            Some("127.0.0.1:7003")
        );
        let unknown = not_leader(&ForwardToLeader::empty());
        assert!(unknown.metadata().get(LEADER_ID_HEADER).is_none());
    }

    #[test]
    fn a_not_leader_status_on_the_peer_port_hints_at_the_leaders_peer_port() {
        // An admin tool that follows the hint must reach a port that serves
        // the call it made; clients keep the client address.
        let leader = Node::with_peer_addr("127.0.0.1:7003", Some("127.0.0.1:7053".into()));
        let forward = ForwardToLeader::new(3, leader);
        let addr = |status: &Status| {
            status
                .metadata()
                .get(LEADER_ADDR_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(addr(&not_leader(&forward)).as_deref(), Some("127.0.0.1:7003"));
        assert_eq!(
            addr(&not_leader_to(&forward, LeaderHint::Peer)).as_deref(),
            Some("127.0.0.1:7053")
        );
        let one_port = ForwardToLeader::new(2, Node::new("127.0.0.1:7002"));
        assert_eq!(
            addr(&not_leader_to(&one_port, LeaderHint::Peer)).as_deref(),
            Some("127.0.0.1:7002")
        );
    }
}
