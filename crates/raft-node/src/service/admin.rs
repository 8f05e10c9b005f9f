//! The `kv.v1.Cluster` admin service: status, membership and backups.
//!
//! A node with a separate peer port serves this service twice: on the
//! client port with the read-only calls only ([`Port::Client`]), and on the
//! peer port with every call ([`Port::Peer`]). See `proto/kv.proto`.

use std::collections::{BTreeMap, BTreeSet};

use std::pin::Pin;

use openraft::{ChangeMembers, ServerState};
use proto::kv as api;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::status::{self, LeaderHint};
use crate::cluster_id::ClusterIdentity;
use crate::state_machine::backup::BackupSource;
use crate::state_machine::Engine;
use crate::types::{Membership, Node, NodeId, Raft};

/// The port an [`AdminService`] serves on, which decides the calls it
/// serves and the leader address it hints at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// The one port of a node without a separate peer port: every call;
    /// hints name the leader's client address.
    Shared,
    /// The client port of a node with a separate peer port: Status and
    /// Digest only; the calls that change membership or initialize are
    /// refused ([`status::served_on_peer_port`]).
    Client,
    /// The peer port: every call; hints name the leader's peer address.
    Peer,
}

/// Serves cluster administration for one node, on one port.
pub struct AdminService {
    raft: Raft,
    engine: Engine,
    /// This node's advertised client and peer addresses.
    node: Node,
    port: Port,
    /// The cluster id `Initialize` gives a new cluster; `None`: a new
    /// cluster gets no id (tests that build the service alone).
    identity: Option<ClusterIdentity>,
    /// Where this node serves metrics, for Status; `None`: it serves none.
    metrics_addr: Option<String>,
}

impl AdminService {
    /// An admin service on `port` of the node advertised as `node`.
    pub fn new(raft: Raft, engine: Engine, node: Node, port: Port) -> Self {
        AdminService {
            raft,
            engine,
            node,
            port,
            identity: None,
            metrics_addr: None,
        }
    }

    /// With Status naming `addr` as where this node serves metrics.
    pub fn with_metrics_addr(mut self, addr: Option<String>) -> Self {
        self.metrics_addr = addr;
        self
    }

    /// With `identity`: `Initialize` gives the new cluster an id (see
    /// [`crate::cluster_id`]).
    pub fn with_cluster_identity(mut self, identity: ClusterIdentity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Refuses `call` unless this port serves membership changes.
    fn check_changes_served(&self, call: &str) -> Result<(), Status> {
        match self.port {
            Port::Shared | Port::Peer => Ok(()),
            Port::Client => Err(status::served_on_peer_port(call)),
        }
    }

    /// The leader address that not-leader answers on this port name.
    fn hint(&self) -> LeaderHint {
        match self.port {
            Port::Shared | Port::Client => LeaderHint::Client,
            Port::Peer => LeaderHint::Peer,
        }
    }

    /// Waits until this node is a leader that has committed an entry of its
    /// own term: before that openraft refuses membership changes, as the
    /// previous leader's change may still be in flight.
    async fn settled_leader(&self) -> Result<(), Status> {
        let hint = self.hint();
        self.raft
            .ensure_linearizable()
            .await
            .map_err(|e| status::from_read_error_to(e, hint))?;
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
            peer_addr: node.peer_addr().to_string(),
        })
        .collect()
}

/// The member a request names: `peer_addr` empty means none of its own.
fn node_of(id: NodeId, addr: &str, peer_addr: &str) -> Result<Node, Status> {
    check_node(id, addr)?;
    if peer_addr.is_empty() {
        return Ok(Node::new(addr));
    }
    check_node(id, peer_addr)?;
    Ok(Node::with_peer_addr(addr, Some(peer_addr.to_string())))
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

/// Bytes of archive per backup message.
const BACKUP_CHUNK_BYTES: usize = 1 << 20;
/// Backup messages buffered ahead of a slow reader: bounds a backup's
/// memory at this many chunks.
const BACKUP_CHUNKS_AHEAD_MAX: usize = 4;

/// The stream a backup is sent as.
pub type BackupStream = Pin<Box<dyn Stream<Item = Result<api::BackupChunk, Status>> + Send>>;

/// Reads `archive` into chunks of at most [`BACKUP_CHUNK_BYTES`], the first
/// carrying `header`'s fields; a read failure ends the stream with it.
fn backup_chunks(mut archive: impl AsyncRead + Unpin + Send + 'static, header: api::BackupChunk) -> BackupStream {
    let (sender, receiver) = tokio::sync::mpsc::channel(BACKUP_CHUNKS_AHEAD_MAX);
    tokio::spawn(async move {
        let mut first = Some(header);
        loop {
            let mut data = Vec::with_capacity(BACKUP_CHUNK_BYTES);
            let read = (&mut archive)
                .take(BACKUP_CHUNK_BYTES as u64)
                .read_to_end(&mut data)
                .await;
            let message = match read {
                Ok(0) if first.is_none() => return,
                Ok(_) => Ok(api::BackupChunk {
                    data: data.into(),
                    ..first.take().unwrap_or_default()
                }),
                Err(e) => Err(Status::internal(format!("reading the backup: {e}"))),
            };
            let failed = message.is_err();
            // A reader that went away ends the backup.
            if sender.send(message).await.is_err() || failed {
                return;
            }
        }
    });
    Box::pin(ReceiverStream::new(receiver))
}

#[tonic::async_trait]
impl api::cluster_server::Cluster for AdminService {
    type BackupStream = BackupStream;

    async fn backup(&self, _request: Request<api::BackupRequest>) -> Result<Response<BackupStream>, Status> {
        // A leader that has applied everything committed before this call:
        // the checkpoint then holds every write acknowledged before it.
        self.settled_leader().await?;
        let engine = self.engine.clone();
        let source = tokio::task::spawn_blocking(move || BackupSource::take(&engine))
            .await
            .map_err(|e| Status::internal(format!("backup task: {e}")))?
            .map_err(|e| Status::internal(format!("backup: {e}")))?;
        let last = source.last_log_id().cloned().unwrap_or_default();
        let header = api::BackupChunk {
            data: Default::default(),
            total_bytes: source.total_bytes(),
            index: last.index,
            term: last.leader_id.map_or(0, |l| l.term),
        };
        tracing::info!(index = header.index, bytes = header.total_bytes, "streaming a backup");
        Ok(Response::new(backup_chunks(source.into_stream(), header)))
    }

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
            addr: self.node.addr.clone(),
            peer_addr: self.node.peer_addr().to_string(),
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
            metrics_addr: self.metrics_addr.clone().unwrap_or_default(),
            cluster_id: self
                .identity
                .as_ref()
                .and_then(ClusterIdentity::get)
                .map(|id| id.to_string())
                .unwrap_or_default(),
        }))
    }

    async fn initialize(
        &self,
        request: Request<api::InitializeRequest>,
    ) -> Result<Response<api::InitializeResponse>, Status> {
        self.check_changes_served("Initialize")?;
        let request = request.into_inner();
        if request.members.is_empty() {
            return Err(Status::invalid_argument("initialize needs at least one member"));
        }
        let mut members = BTreeMap::new();
        for member in &request.members {
            members.insert(member.id, node_of(member.id, &member.addr, &member.peer_addr)?);
        }
        // The new cluster's id is durable before Raft sends its first
        // message; a node that already has Raft state keeps its own (and
        // Raft refuses to initialize it below).
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| Status::unavailable(format!("raft stopped: {e}")))?;
        if let (Some(identity), false) = (&self.identity, initialized) {
            identity
                .ensure_for_new_cluster()
                .map_err(|e| Status::internal(e.to_string()))?;
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
        self.check_changes_served("AddLearner")?;
        let request = request.into_inner();
        let node = node_of(request.id, &request.addr, &request.peer_addr)?;
        self.settled_leader().await?;
        let hint = self.hint();
        let reply = self
            .raft
            .add_learner(request.id, node, true)
            .await
            .map_err(|e| status::from_write_error_to(e, hint))?;
        Ok(membership_reply(reply.log_id.index, reply.membership.as_ref()))
    }

    async fn change_membership(
        &self,
        request: Request<api::ChangeMembershipRequest>,
    ) -> Result<Response<api::MembershipResponse>, Status> {
        self.check_changes_served("ChangeMembership")?;
        let voters: BTreeSet<NodeId> = request.into_inner().voters.into_iter().collect();
        if voters.is_empty() {
            return Err(Status::invalid_argument("a cluster needs at least one voter"));
        }
        self.settled_leader().await?;
        let hint = self.hint();
        let reply = self
            .raft
            .change_membership(voters, false)
            .await
            .map_err(|e| status::from_write_error_to(e, hint))?;
        Ok(membership_reply(reply.log_id.index, reply.membership.as_ref()))
    }

    async fn remove_node(
        &self,
        request: Request<api::RemoveNodeRequest>,
    ) -> Result<Response<api::MembershipResponse>, Status> {
        self.check_changes_served("RemoveNode")?;
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
        let hint = self.hint();
        let reply = self
            .raft
            .change_membership(change, false)
            .await
            .map_err(|e| status::from_write_error_to(e, hint))?;
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
