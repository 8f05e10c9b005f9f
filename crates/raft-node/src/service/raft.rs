//! The server side of the Raft transport: peers' RPCs handed to openraft.

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest};
use openraft::Snapshot;
use proto::raft as pb;
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use crate::cluster_id::ClusterIdentity;
use crate::codec;
use crate::state_machine::archive::ArchiveError;
use crate::types::Raft;

/// Serves `raft.v1.Raft` for one node.
pub struct RaftService {
    raft: Raft,
    /// Checks each call's cluster id (see [`crate::cluster_id`]).
    identity: ClusterIdentity,
}

impl RaftService {
    /// Serves RPCs for `raft`, accepting only calls from the cluster of
    /// `identity` (or adopting the first cluster's id, see
    /// [`crate::cluster_id`]).
    pub fn new(raft: Raft, identity: ClusterIdentity) -> Self {
        RaftService { raft, identity }
    }

    /// Refuses a call from another cluster; adopts the caller's cluster
    /// id on a node that has neither an id nor Raft state.
    async fn check_cluster<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let raft = &self.raft;
        self.identity
            .check(request.metadata(), || {
                let metrics = raft.metrics();
                let m = metrics.borrow();
                m.current_term == 0 && m.last_log_index.is_none() && m.snapshot.is_none()
            })
            .await
    }
}

fn bad_message(e: codec::CodecError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// A node whose Raft stopped cannot take part: peers treat it as down.
fn stopped(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft is not running: {e}"))
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        self.check_cluster(&request).await?;
        let message = request.into_inner();
        let rpc = AppendEntriesRequest {
            vote: codec::vote_from_pb(message.vote.as_ref()).map_err(bad_message)?,
            prev_log_id: codec::opt_log_id_from_pb(message.prev_log_id.as_ref()).map_err(bad_message)?,
            entries: message
                .entries
                .into_iter()
                .map(codec::entry_from_pb)
                .collect::<Result<_, _>>()
                .map_err(bad_message)?,
            leader_commit: codec::opt_log_id_from_pb(message.leader_commit.as_ref()).map_err(bad_message)?,
        };
        use pb::append_entries_response::Result as Reply;
        let reply = match self.raft.append_entries(rpc).await.map_err(stopped)? {
            AppendEntriesResponse::Success => Reply::Success(pb::Blank {}),
            AppendEntriesResponse::PartialSuccess(matching) => Reply::PartialSuccess(pb::PartialSuccess {
                matching: codec::opt_log_id_to_pb(matching.as_ref()),
            }),
            AppendEntriesResponse::Conflict => Reply::Conflict(pb::Blank {}),
            AppendEntriesResponse::HigherVote(vote) => Reply::HigherVote(codec::vote_to_pb(&vote)),
        };
        Ok(Response::new(pb::AppendEntriesResponse { result: Some(reply) }))
    }

    async fn vote(&self, request: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        self.check_cluster(&request).await?;
        let message = request.into_inner();
        let rpc = VoteRequest {
            vote: codec::vote_from_pb(message.vote.as_ref()).map_err(bad_message)?,
            last_log_id: codec::opt_log_id_from_pb(message.last_log_id.as_ref()).map_err(bad_message)?,
        };
        let reply = self.raft.vote(rpc).await.map_err(stopped)?;
        Ok(Response::new(pb::VoteResponse {
            vote: Some(codec::vote_to_pb(&reply.vote)),
            vote_granted: reply.vote_granted,
            last_log_id: codec::opt_log_id_to_pb(reply.last_log_id.as_ref()),
        }))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        self.check_cluster(&request).await?;
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let vote = codec::vote_from_pb(first.vote.as_ref()).map_err(bad_message)?;
        let meta = first
            .meta
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("the first snapshot chunk carries no metadata"))?;
        let meta = codec::snapshot_meta_from_pb(meta).map_err(bad_message)?;
        let mut file = self.raft.begin_receiving_snapshot().await.map_err(stopped)?;
        let io_error = |e: std::io::Error| Status::internal(format!("writing the received snapshot: {e}"));
        file.write_all(&first.data).await.map_err(io_error)?;
        while let Some(chunk) = stream.message().await? {
            file.write_all(&chunk.data).await.map_err(io_error)?;
        }
        file.flush().await.map_err(io_error)?;
        // The stream's end is not proof that the archive is whole: a sender
        // that gives up part-way ends it cleanly too. Only a whole archive
        // that holds the snapshot the first chunk names goes to Raft, which
        // treats a failed install as fatal.
        let (_, archived) = file.finish_receiving().await.map_err(|e| match e {
            ArchiveError::Corrupt(_) => Status::invalid_argument(format!("the snapshot received is not whole: {e}")),
            _ => Status::internal(format!("storing the received snapshot: {e}")),
        })?;
        let named = codec::snapshot_meta_to_pb(&meta);
        if archived.last_log_id != named.last_log_id {
            return Err(Status::invalid_argument(format!(
                "the snapshot's archive holds entries up to {:?}, its first chunk names {:?}",
                archived.last_log_id, named.last_log_id
            )));
        }
        let reply = self
            .raft
            .install_full_snapshot(vote, Snapshot { meta, snapshot: file })
            .await
            .map_err(stopped)?;
        Ok(Response::new(pb::SnapshotResponse {
            vote: Some(codec::vote_to_pb(&reply.vote)),
        }))
    }

    async fn timeout_now(
        &self,
        request: Request<pb::TimeoutNowRequest>,
    ) -> Result<Response<pb::TimeoutNowResponse>, Status> {
        // Not checked for a cluster id (see `crate::cluster_id`): it
        // changes no state but the follower's own term, and only when sent
        // by the leader this node follows, in its current term.
        let message = request.into_inner();
        // Only the leader this node follows, in this term, may make it
        // campaign: a stale or foreign request must not depose a leader.
        let (leader, term) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            (m.current_leader, m.current_term)
        };
        if leader != Some(message.leader_id) || term != message.term {
            return Err(Status::failed_precondition(format!(
                "TimeoutNow from node {} in term {}, but this node follows {leader:?} in term {term}",
                message.leader_id, message.term
            )));
        }
        tracing::info!(from = message.leader_id, term, "the leader hands over: campaigning now");
        self.raft.trigger().elect().await.map_err(stopped)?;
        Ok(Response::new(pb::TimeoutNowResponse {}))
    }
}
