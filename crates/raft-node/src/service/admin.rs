//! The `kv.v1.Cluster` admin service: status and membership.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{ChangeMembers, ServerState};
use proto::kv as api;
use tonic::{Request, Response, Status};

use super::status;
use crate::state_machine::Engine;
use crate::types::{Membership, Node, NodeId, Raft};

/// Serves cluster administration for one node.
pub struct AdminService {
    raft: Raft,
    engine: Engine,
    addr: String,
}

impl AdminService {
    /// An admin service for the node advertised at `addr`.
    pub fn new(raft: Raft, engine: Engine, addr: String) -> Self {
        AdminService { raft, engine, addr }
    }

    /// Waits until this node is a leader that has committed an entry of its
    /// own term: before that openraft refuses membership changes, as the
    /// previous leader's change may still be in flight.
    async fn settled_leader(&self) -> Result<(), Status> {
        self.raft.ensure_linearizable().await.map_err(status::from_read_error)?;
        Ok(())
    }
}

fn members_of(membership: &Membership) -> Vec<api::Member> {
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    membership
        .nodes()
        .map(|(id, node)| api::Member {
            id: *id,
            addr: node.addr.clone(),
            voter: voters.contains(id),
        })
        .collect()
}

fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

fn check_node(id: NodeId, addr: &str) -> Result<(), Status> {
    if id == 0 {
        return Err(Status::invalid_argument("node id 0 is reserved"));
    }
    if addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(Status::invalid_argument(format!("address {addr:?} is not host:port")));
    }
    Ok(())
}

fn membership_reply(log_index: u64, membership: Option<&Membership>) -> Response<api::MembershipResponse> {
    Response::new(api::MembershipResponse {
        log_index,
        members: membership.map(members_of).unwrap_or_default(),
    })
}

#[tonic::async_trait]
impl api::cluster_server::Cluster for AdminService {
    async fn status(&self, _request: Request<api::StatusRequest>) -> Result<Response<api::StatusResponse>, Status> {
        let metrics = self.raft.metrics().borrow().clone();
        let commit_index = self
            .raft
            .with_raft_state(|state| state.committed.map_or(0, |l| l.index))
            .await
            .unwrap_or(0);
        let membership = metrics.membership_config.membership();
        let leader_addr = metrics
            .current_leader
            .and_then(|id| membership.get_node(&id))
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        Ok(Response::new(api::StatusResponse {
            id: metrics.id,
            addr: self.addr.clone(),
            role: role_name(metrics.state).to_string(),
            term: metrics.current_term,
            leader_id: metrics.current_leader.unwrap_or(0),
            leader_addr,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            commit_index,
            applied_index: metrics.last_applied.map_or(0, |l| l.index),
            members: members_of(membership),
            snapshot_index: metrics.snapshot.map_or(0, |l| l.index),
            purged_index: metrics.purged.map_or(0, |l| l.index),
        }))
    }

    async fn initialize(
        &self,
        request: Request<api::InitializeRequest>,
    ) -> Result<Response<api::InitializeResponse>, Status> {
        let request = request.into_inner();
        if request.members.is_empty() {
            return Err(Status::invalid_argument("initialize needs at least one member"));
        }
        let mut members = BTreeMap::new();
        for member in &request.members {
            check_node(member.id, &member.addr)?;
            members.insert(
                member.id,
                Node {
                    addr: member.addr.clone(),
                },
            );
        }
        self.raft.initialize(members).await.map_err(|e| match e {
            openraft::error::RaftError::APIError(api_error) => Status::failed_precondition(api_error.to_string()),
            openraft::error::RaftError::Fatal(fatal) => Status::unavailable(format!("raft stopped: {fatal}")),
        })?;
        Ok(Response::new(api::InitializeResponse {}))
    }

    async fn add_learner(
        &self,
        request: Request<api::AddLearnerRequest>,
    ) -> Result<Response<api::MembershipResponse>, Status> {
        let request = request.into_inner();
        check_node(request.id, &request.addr)?;
        self.settled_leader().await?;
        let reply = self
            .raft
            .add_learner(request.id, Node { addr: request.addr }, true)
            .await
            .map_err(status::from_write_error)?;
        Ok(membership_reply(reply.log_id.index, reply.membership.as_ref()))
    }

    async fn change_membership(
        &self,
        request: Request<api::ChangeMembershipRequest>,
    ) -> Result<Response<api::MembershipResponse>, Status> {
        let voters: BTreeSet<NodeId> = request.into_inner().voters.into_iter().collect();
        if voters.is_empty() {
            return Err(Status::invalid_argument("a cluster needs at least one voter"));
        }
        self.settled_leader().await?;
        let reply = self
            .raft
            .change_membership(voters, false)
            .await
            .map_err(status::from_write_error)?;
        Ok(membership_reply(reply.log_id.index, reply.membership.as_ref()))
    }

    async fn remove_node(
        &self,
        request: Request<api::RemoveNodeRequest>,
    ) -> Result<Response<api::MembershipResponse>, Status> {
        let id = request.into_inner().id;
        self.settled_leader().await?;
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(Status::not_found(format!("node {id} is not a member")));
        }
        let is_voter = membership.voter_ids().any(|v| v == id);
        let change = if is_voter {
            let remaining: BTreeSet<NodeId> = membership.voter_ids().filter(|v| *v != id).collect();
            if remaining.is_empty() {
                return Err(Status::failed_precondition("cannot remove the last voter"));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        // `retain = false`: a removed voter is dropped from the members too.
        let reply = self
            .raft
            .change_membership(change, false)
            .await
            .map_err(status::from_write_error)?;
        Ok(membership_reply(reply.log_id.index, reply.membership.as_ref()))
    }

    async fn digest(&self, _request: Request<api::DigestRequest>) -> Result<Response<api::DigestResponse>, Status> {
        let applied_index = self.raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        let (keys, hash) = self.engine.digest().map_err(|e| status::from_storage(&e))?;
        Ok(Response::new(api::DigestResponse {
            applied_index,
            keys,
            digest: format!("{hash:016x}"),
        }))
    }
}
