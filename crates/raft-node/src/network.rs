//! The Raft transport: openraft's RPCs to peers over gRPC (`raft.v1`).
//!
//! There is one connection per peer, shared by every client openraft makes
//! for it; connections are lazy (openraft's `new_client` cannot fail) and
//! re-established by tonic. A peer that cannot be reached is reported as
//! `Unreachable`, which makes openraft back off instead of spinning.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, ReplicationClosed, StreamingError,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, SnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, Snapshot};
use parking_lot::Mutex;
use proto::raft as pb;
use proto::raft::raft_client::RaftClient;
use tokio::io::AsyncReadExt;
use tonic::transport::{Channel, Endpoint};

use crate::codec;
use crate::types::{Node, NodeId, TypeConfig, Vote};

/// Largest gRPC message between nodes, in bytes (both directions).
pub const RAFT_MESSAGE_BYTES_MAX: usize = 64 << 20;
/// Bytes of snapshot data per streamed chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Backoff for an unreachable peer: first and largest delay.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

type RpcResult<T, E = openraft::error::Infallible> = Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>>;

/// Creates a [`PeerClient`] per peer, all sharing one connection per peer.
///
/// openraft asks for a new client per replication stream and per
/// leadership check (every linearizable read round), so clients must be
/// cheap: a new TCP and HTTP/2 handshake per check cost tens of
/// milliseconds. A tonic `Channel` multiplexes every call to one peer over
/// one HTTP/2 connection and reconnects by itself after a failure.
#[derive(Debug, Clone, Default)]
pub struct Network {
    channels: Arc<Mutex<HashMap<NodeId, PeerChannel>>>,
}

/// The shared connection to one peer, and the address it was made for.
#[derive(Debug, Clone)]
struct PeerChannel {
    addr: String,
    channel: Channel,
}

impl Network {
    /// The channel to `target` at `addr`, made (lazily connecting) on first
    /// use and again when the member's address changes.
    fn channel(&self, target: NodeId, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock();
        if let Some(peer) = channels.get(&target).filter(|peer| peer.addr == addr) {
            return Ok(peer.channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad address {addr:?} of node {target}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let channel = endpoint.connect_lazy();
        channels.insert(
            target,
            PeerChannel {
                addr: addr.to_string(),
                channel: channel.clone(),
            },
        );
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        let client = self.channel(target, &node.addr).map(|channel| {
            RaftClient::new(channel)
                .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX)
        });
        PeerClient { client }
    }
}

/// One peer's RPC client (a handle on the peer's shared connection).
pub struct PeerClient {
    /// The client, or why none could be made (a malformed address).
    client: Result<RaftClient<Channel>, String>,
}

impl PeerClient {
    fn client(&self) -> Result<RaftClient<Channel>, Unreachable> {
        self.client
            .clone()
            .map_err(|reason| Unreachable::new(&AnyError::error(reason)))
    }
}

/// Maps a failed call to what openraft should do about it.
fn rpc_error<E: std::error::Error>(
    status: &tonic::Status,
    entries: usize,
) -> RPCError<NodeId, Node, RaftError<NodeId, E>> {
    match status.code() {
        // Refused or dropped connections, and a peer that is shutting down.
        tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(status)),
        tonic::Code::ResourceExhausted if entries > 1 => {
            RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint((entries / 2) as u64))
        }
        _ => RPCError::Network(NetworkError::new(status)),
    }
}

fn decode_error<E: std::error::Error>(e: &codec::CodecError) -> RPCError<NodeId, Node, RaftError<NodeId, E>> {
    RPCError::Network(NetworkError::new(e))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let entries = rpc.entries.len();
        let message = pb::AppendEntriesRequest {
            vote: Some(codec::vote_to_pb(&rpc.vote)),
            prev_log_id: codec::opt_log_id_to_pb(rpc.prev_log_id.as_ref()),
            entries: rpc.entries.iter().map(codec::entry_to_pb).collect(),
            leader_commit: codec::opt_log_id_to_pb(rpc.leader_commit.as_ref()),
        };
        let mut request = tonic::Request::new(message);
        request.set_timeout(option.hard_ttl());
        let mut client = self.client().map_err(RPCError::Unreachable)?;
        let reply = client
            .append_entries(request)
            .await
            .map_err(|s| rpc_error(&s, entries))?
            .into_inner();
        let result = reply.result.ok_or_else(|| {
            decode_error(&codec::CodecError {
                what: "AppendEntriesResponse",
                reason: "no result",
            })
        })?;
        Ok(match result {
            pb::append_entries_response::Result::Success(_) => AppendEntriesResponse::Success,
            pb::append_entries_response::Result::PartialSuccess(p) => AppendEntriesResponse::PartialSuccess(
                codec::opt_log_id_from_pb(p.matching.as_ref()).map_err(|e| decode_error(&e))?,
            ),
            pb::append_entries_response::Result::Conflict(_) => AppendEntriesResponse::Conflict,
            pb::append_entries_response::Result::HigherVote(v) => {
                AppendEntriesResponse::HigherVote(codec::vote_from_pb(Some(&v)).map_err(|e| decode_error(&e))?)
            }
        })
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        let mut request = tonic::Request::new(pb::VoteRequest {
            vote: Some(codec::vote_to_pb(&rpc.vote)),
            last_log_id: codec::opt_log_id_to_pb(rpc.last_log_id.as_ref()),
        });
        request.set_timeout(option.hard_ttl());
        let mut client = self.client().map_err(RPCError::Unreachable)?;
        let reply = client.vote(request).await.map_err(|s| rpc_error(&s, 0))?.into_inner();
        Ok(VoteResponse {
            vote: codec::vote_from_pb(reply.vote.as_ref()).map_err(|e| decode_error(&e))?,
            vote_granted: reply.vote_granted,
            last_log_id: codec::opt_log_id_from_pb(reply.last_log_id.as_ref()).map_err(|e| decode_error(&e))?,
        })
    }

    /// Snapshots travel whole through [`full_snapshot`](Self::full_snapshot)
    /// as one gRPC stream; openraft's chunk-by-chunk path is not used, so a
    /// call here is answered with an error that makes openraft retry.
    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        Err(RPCError::Network(NetworkError::from(AnyError::error(
            "chunked snapshot transfer is not supported; snapshots are streamed by full_snapshot",
        ))))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let (sender, receiver) = tokio::sync::mpsc::channel::<pb::SnapshotChunk>(4);
        let first = pb::SnapshotChunk {
            vote: Some(codec::vote_to_pb(&vote)),
            meta: Some(codec::snapshot_meta_to_pb(&snapshot.meta)),
            data: Default::default(),
        };
        let mut file = snapshot.snapshot;
        let producer = tokio::spawn(async move {
            if sender.send(first).await.is_err() {
                return Ok(());
            }
            loop {
                let mut buffer = vec![0u8; SNAPSHOT_CHUNK_BYTES];
                let read = file.read(&mut buffer).await?;
                if read == 0 {
                    return Ok::<(), std::io::Error>(());
                }
                buffer.truncate(read);
                let chunk = pb::SnapshotChunk {
                    data: buffer.into(),
                    ..Default::default()
                };
                if sender.send(chunk).await.is_err() {
                    return Ok(());
                }
            }
        });
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
        request.set_timeout(option.hard_ttl());
        let mut client = self.client().map_err(StreamingError::Unreachable)?;
        let reply = tokio::select! {
            reply = client.install_snapshot(request) => reply,
            closed = cancel => {
                producer.abort();
                return Err(StreamingError::Closed(closed));
            }
        };
        match producer.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StreamingError::Network(NetworkError::new(&e))),
            Err(e) => return Err(StreamingError::Network(NetworkError::new(&e))),
        }
        let reply = reply
            .map_err(|s| match s.code() {
                tonic::Code::Unavailable => StreamingError::Unreachable(Unreachable::new(&s)),
                _ => StreamingError::Network(NetworkError::new(&s)),
            })?
            .into_inner();
        let vote =
            codec::vote_from_pb(reply.vote.as_ref()).map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        Ok(SnapshotResponse { vote })
    }

    fn backoff(&self) -> Backoff {
        // Exponential from BACKOFF_MIN, capped at BACKOFF_MAX.
        let delays = std::iter::successors(Some(BACKOFF_MIN), |d| Some((*d * 2).min(BACKOFF_MAX)));
        Backoff::new(delays)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn clients_of_one_peer_share_its_channel_until_its_address_changes() {
        // openraft makes a client per read check; each must not dial anew.
        let network = Network::default();
        for _ in 0..3 {
            network.channel(2, "127.0.0.1:1").expect("channel");
            network.channel(3, "127.0.0.1:2").expect("channel");
        }
        let addr_of = |id| network.channels.lock().get(&id).map(|peer| peer.addr.clone());
        assert_eq!(network.channels.lock().len(), 2);
        network.channel(2, "127.0.0.1:3").expect("channel");
        assert_eq!(
            addr_of(2).as_deref(),
            Some("127.0.0.1:3"),
            "a moved member gets a new channel"
        );
        assert!(network.channel(4, "not an address").is_err());
        assert_eq!(network.channels.lock().len(), 2, "a bad address is not cached");
    }
}
