//! The Raft transport: openraft's RPCs to peers over gRPC (`raft.v1`).
//!
//! There is one connection per peer, shared by every client openraft makes
//! for it; connections are lazy (openraft's `new_client` cannot fail) and
//! re-established by tonic. A peer that cannot be reached is reported as
//! `Unreachable`, which makes openraft back off instead of spinning.
//!
//! # Big append-entries
//!
//! openraft 0.9 bounds an append-entries message by entry count only and
//! gives every call the heartbeat period (~100 ms) as its deadline. Entries
//! can be 16 MiB each, so this transport adds what a follower needs to
//! catch up from the log:
//! - a message carries at most [`APPEND_ENTRIES_BYTES_MAX`] of encoded
//!   entries (at least one entry); a longer run is cut and answered with
//!   `PartialSuccess`, and openraft sends the rest at once;
//! - a message the transport or the peer finds too large (`OUT_OF_RANGE`,
//!   `RESOURCE_EXHAUSTED`) or that misses its deadline is reported as
//!   `PayloadTooLarge` with half as many entries, so openraft splits it;
//! - a call's deadline grows with its size ([`append_deadline`]). Such a
//!   call outlives openraft's per-call timeout: it runs in its own task,
//!   and openraft's retry of the same entries waits for it instead of
//!   sending them again. Heartbeats still go out meanwhile.

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
use prost::Message;
use proto::raft as pb;
use proto::raft::raft_client::RaftClient;
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::cluster_id::ClusterIdentity;
use crate::codec;
use crate::reachability::{self, Reachability};
use crate::types::{LogId, Node, NodeId, TypeConfig, Vote};

/// Largest gRPC message between nodes, in bytes (both directions).
pub const RAFT_MESSAGE_BYTES_MAX: usize = 64 << 20;
/// Encoded entries per append-entries message at most, in bytes; a single
/// larger entry travels alone. Small enough that a message takes a fraction
/// of a second on a slow link, large enough to amortize the round trip.
pub const APPEND_ENTRIES_BYTES_MAX: usize = 4 << 20;
/// The slowest rate, in bytes per second, at which a follower is assumed to
/// receive and persist entries: each append-entries call gets the heartbeat
/// deadline plus its size at this rate.
const APPEND_ENTRIES_BYTES_PER_S_MIN: u64 = 4 << 20;
/// The longest deadline of one append-entries call, in ms.
const APPEND_ENTRIES_DEADLINE_MS_MAX: u64 = 30_000;
const _: () = assert!(APPEND_ENTRIES_BYTES_MAX < RAFT_MESSAGE_BYTES_MAX);
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
    /// Each peer's reachability, shared by all its clients, for the log.
    reachability: Arc<Mutex<HashMap<NodeId, Reachability>>>,
    /// Mutual TLS to peers (see `crate::tls`); `None`: plaintext.
    tls: Option<ClientTlsConfig>,
    /// The cluster id every call carries (see `crate::cluster_id`); `None`:
    /// calls carry none.
    cluster: Option<ClusterIdentity>,
}

/// The shared connection to one peer, and the (peer) address it was made for.
#[derive(Debug, Clone)]
struct PeerChannel {
    addr: String,
    channel: Channel,
}

impl Network {
    /// A transport that reaches peers over mutual TLS with `tls`, or in
    /// plaintext without.
    pub fn new(tls: Option<ClientTlsConfig>) -> Network {
        Network {
            tls,
            ..Network::default()
        }
    }

    /// With every call carrying the cluster id of `identity` (read at each
    /// call: a node that adopts an id sends it from then on).
    pub fn with_cluster_identity(mut self, identity: ClusterIdentity) -> Network {
        self.cluster = Some(identity);
        self
    }

    /// The channel to `target` at `addr`, made (lazily connecting) on first
    /// use and again when the member's address changes.
    fn channel(&self, target: NodeId, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock();
        if let Some(peer) = channels.get(&target).filter(|peer| peer.addr == addr) {
            return Ok(peer.channel.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("bad address {addr:?} of node {target}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| format!("TLS settings for node {target} at {addr}: {e}"))?;
        }
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

impl Network {
    /// A client of the peer service of `target` at `addr`, over the shared
    /// channel (TLS when configured). Calls made through it other than the
    /// Raft ones carry no cluster id.
    pub fn raft_client(&self, target: NodeId, addr: &str) -> Result<RaftClient<Channel>, String> {
        self.channel(target, addr).map(|channel| {
            RaftClient::new(channel)
                .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX)
        })
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        let client = self.raft_client(target, node.peer_addr());
        PeerClient {
            target,
            client,
            inflight: None,
            reachability: Arc::clone(&self.reachability),
            cluster: self.cluster.clone(),
        }
    }
}

/// One peer's RPC client (a handle on the peer's shared connection).
/// openraft keeps one per replication stream and calls it sequentially.
pub struct PeerClient {
    target: NodeId,
    /// The client, or why none could be made (a malformed address).
    client: Result<RaftClient<Channel>, String>,
    /// An append-entries call still running after openraft stopped waiting
    /// for it (see the module docs).
    inflight: Option<InflightAppend>,
    reachability: Arc<Mutex<HashMap<NodeId, Reachability>>>,
    /// The cluster id each call carries.
    cluster: Option<ClusterIdentity>,
}

/// An append-entries call running in its own task.
struct InflightAppend {
    vote: Vote,
    prev_log_id: Option<LogId>,
    /// The last entry sent.
    last_log_id: LogId,
    /// Entries sent.
    entries: usize,
    reply: JoinHandle<Result<pb::AppendEntriesResponse, tonic::Status>>,
}

impl InflightAppend {
    /// Whether this call answers `rpc` too: same leader, same starting
    /// point, and it sent a prefix of `rpc`'s entries.
    fn serves(&self, rpc: &AppendEntriesRequest<TypeConfig>) -> bool {
        self.vote == rpc.vote
            && self.prev_log_id == rpc.prev_log_id
            && rpc.entries.iter().any(|entry| entry.log_id == self.last_log_id)
    }
}

impl Drop for PeerClient {
    fn drop(&mut self) {
        if let Some(inflight) = self.inflight.take() {
            inflight.reply.abort();
        }
    }
}

/// How many of the leading entries of encoded `sizes` fit in `bytes_max`:
/// at least one (a larger entry travels alone), none only if there are none.
pub fn entries_within(sizes: impl IntoIterator<Item = usize>, bytes_max: usize) -> usize {
    let mut total_bytes = 0usize;
    let mut count = 0usize;
    for size in sizes {
        total_bytes = total_bytes.saturating_add(size);
        if count > 0 && total_bytes > bytes_max {
            break;
        }
        count += 1;
    }
    count
}

/// The deadline of an append-entries call of `bytes`: openraft's deadline
/// (`base`) plus the time to move `bytes` at
/// [`APPEND_ENTRIES_BYTES_PER_S_MIN`], at most
/// [`APPEND_ENTRIES_DEADLINE_MS_MAX`].
pub fn append_deadline(base: Duration, bytes: usize) -> Duration {
    let transfer_ms = (bytes as u64).saturating_mul(1000) / APPEND_ENTRIES_BYTES_PER_S_MIN;
    (base + Duration::from_millis(transfer_ms)).min(Duration::from_millis(APPEND_ENTRIES_DEADLINE_MS_MAX))
}

impl PeerClient {
    /// Records whether a call reached the peer, logging a change.
    fn note<T, E: std::error::Error>(&self, result: &Result<T, RPCError<NodeId, Node, E>>) {
        let outcome = match result {
            Err(RPCError::Unreachable(e)) => Err(e.to_string()),
            Err(RPCError::Network(e)) => Err(e.to_string()),
            _ => Ok(()),
        };
        let report = self
            .reachability
            .lock()
            .entry(self.target)
            .or_default()
            .record(std::time::Instant::now(), outcome);
        if let Some(report) = report {
            reachability::log(self.target, &report);
        }
    }

    /// Adds this node's cluster id to an outgoing call.
    fn stamp<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(cluster) = &self.cluster {
            cluster.stamp(request.metadata_mut());
        }
    }

    fn client(&self) -> Result<RaftClient<Channel>, Unreachable> {
        self.client
            .clone()
            .map_err(|reason| Unreachable::new(&AnyError::error(reason)))
    }
}

/// Maps a failed call that carried `entries` to what openraft should do
/// about it.
fn rpc_error<E: std::error::Error>(
    status: &tonic::Status,
    entries: usize,
) -> RPCError<NodeId, Node, RaftError<NodeId, E>> {
    match status.code() {
        // Refused or dropped connections, and a peer that is shutting down.
        tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(status)),
        // No Raft service at the address: the client port of a node that
        // serves Raft on a separate peer port, named as the member's peer
        // address by mistake. That does not fix itself soon: back off.
        tonic::Code::Unimplemented => RPCError::Unreachable(Unreachable::new(&AnyError::error(format!(
            "the peer serves no raft.v1.Raft at this address (the client port of a node with \
             --peer-listen? its membership entry needs its peer address): {}",
            status.message()
        )))),
        // The peer belongs to another cluster (see `crate::cluster_id`):
        // that does not fix itself either; back off, say why.
        tonic::Code::FailedPrecondition => RPCError::Unreachable(foreign_cluster(status)),
        // tonic reports a message over a size limit (ours when encoding,
        // the peer's when decoding) as OUT_OF_RANGE, some peers and proxies
        // as RESOURCE_EXHAUSTED; a call that missed a deadline sized for
        // its payload was too large for the link. Either way: fewer entries.
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::DeadlineExceeded if entries > 1 => {
            RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint((entries / 2) as u64))
        }
        _ => RPCError::Network(NetworkError::new(status)),
    }
}

/// A peer's refusal of a call from another cluster, as openraft's
/// "unreachable" (which makes it back off).
fn foreign_cluster(status: &tonic::Status) -> Unreachable {
    Unreachable::new(&AnyError::error(format!(
        "the peer refused this cluster's call (another cluster's node at this address?): {}",
        status.message()
    )))
}

/// The message for `rpc` carrying `entries`.
fn append_message(rpc: &AppendEntriesRequest<TypeConfig>, entries: Vec<pb::EncodedEntry>) -> pb::AppendEntriesRequest {
    pb::AppendEntriesRequest {
        vote: Some(codec::vote_to_pb(&rpc.vote)),
        prev_log_id: codec::opt_log_id_to_pb(rpc.prev_log_id.as_ref()),
        entries,
        leader_commit: codec::opt_log_id_to_pb(rpc.leader_commit.as_ref()),
    }
}

/// The leading entries of `rpc` that fit in [`APPEND_ENTRIES_BYTES_MAX`],
/// as a request with a deadline sized for them.
struct PreparedAppend {
    request: tonic::Request<pb::AppendEntriesRequest>,
    deadline: Duration,
    /// Encoded bytes of the entries.
    bytes: usize,
    /// Entries in the request.
    entries: usize,
    /// The last entry in the request.
    last_log_id: LogId,
}

/// Prepares the message for the leading entries of `rpc` (which must hold
/// at least one) that fit in [`APPEND_ENTRIES_BYTES_MAX`]. Each normal
/// entry's command goes as the bytes it already has (see `codec`).
fn prepare_append(rpc: &AppendEntriesRequest<TypeConfig>, base: Duration) -> PreparedAppend {
    let mut entries: Vec<pb::EncodedEntry> = rpc.entries.iter().map(codec::entry_to_pb).collect();
    let sizes: Vec<usize> = entries.iter().map(Message::encoded_len).collect();
    let count = entries_within(sizes.iter().copied(), APPEND_ENTRIES_BYTES_MAX);
    entries.truncate(count);
    let bytes: usize = sizes[..count].iter().sum();
    // `entries_within` keeps at least one of the (non-empty) entries.
    let last_log_id = rpc.entries[count - 1].log_id;
    let deadline = append_deadline(base, bytes);
    let mut request = tonic::Request::new(append_message(rpc, entries));
    request.set_timeout(deadline);
    PreparedAppend {
        request,
        deadline,
        bytes,
        entries: count,
        last_log_id,
    }
}

/// Sends a prepared append-entries call and waits for the answer, at most
/// until its deadline.
async fn call_append(
    mut client: RaftClient<Channel>,
    request: tonic::Request<pb::AppendEntriesRequest>,
    deadline: Duration,
    bytes: usize,
) -> Result<pb::AppendEntriesResponse, tonic::Status> {
    match tokio::time::timeout(deadline, client.append_entries(request)).await {
        Ok(reply) => reply.map(tonic::Response::into_inner),
        Err(_elapsed) => Err(tonic::Status::deadline_exceeded(format!(
            "append-entries of {bytes} bytes took longer than {} ms",
            deadline.as_millis()
        ))),
    }
}

/// Starts a prepared append-entries call in a task of its own.
fn start_append(
    client: RaftClient<Channel>,
    rpc: &AppendEntriesRequest<TypeConfig>,
    prepared: PreparedAppend,
) -> InflightAppend {
    let PreparedAppend {
        request,
        deadline,
        bytes,
        entries,
        last_log_id,
    } = prepared;
    let reply = tokio::spawn(call_append(client, request, deadline, bytes));
    InflightAppend {
        vote: rpc.vote,
        prev_log_id: rpc.prev_log_id,
        last_log_id,
        entries,
        reply,
    }
}

/// Decodes a follower's answer. `cut_at`: the last entry sent when fewer
/// entries were sent than openraft asked for, so a success is partial.
#[expect(
    clippy::result_large_err,
    reason = "openraft's RaftNetwork returns its RPCError unboxed"
)]
fn append_reply(reply: pb::AppendEntriesResponse, cut_at: Option<LogId>) -> RpcResult<AppendEntriesResponse<NodeId>> {
    let result = reply.result.ok_or_else(|| {
        decode_error(&codec::CodecError {
            what: "AppendEntriesResponse",
            reason: "no result",
        })
    })?;
    Ok(match result {
        pb::append_entries_response::Result::Success(_) => match cut_at {
            None => AppendEntriesResponse::Success,
            Some(last_sent) => AppendEntriesResponse::PartialSuccess(Some(last_sent)),
        },
        pb::append_entries_response::Result::PartialSuccess(p) => AppendEntriesResponse::PartialSuccess(
            codec::opt_log_id_from_pb(p.matching.as_ref()).map_err(|e| decode_error(&e))?,
        ),
        pb::append_entries_response::Result::Conflict(_) => AppendEntriesResponse::Conflict,
        pb::append_entries_response::Result::HigherVote(v) => {
            AppendEntriesResponse::HigherVote(codec::vote_from_pb(Some(&v)).map_err(|e| decode_error(&e))?)
        }
    })
}

fn decode_error<E: std::error::Error>(e: &codec::CodecError) -> RPCError<NodeId, Node, RaftError<NodeId, E>> {
    RPCError::Network(NetworkError::new(e))
}

impl PeerClient {
    /// An append-entries call (see the module docs on big ones).
    async fn send_append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let mut client = self.client().map_err(RPCError::Unreachable)?;
        if rpc.entries.is_empty() {
            // A heartbeat: small, and never held up by a big call in flight.
            let mut request = tonic::Request::new(append_message(&rpc, Vec::new()));
            request.set_timeout(option.hard_ttl());
            self.stamp(&mut request);
            let reply = client.append_entries(request).await.map_err(|s| rpc_error(&s, 0))?;
            return append_reply(reply.into_inner(), None);
        }
        let requested_last = rpc.entries.last().map(|entry| entry.log_id);
        if !self.inflight.as_ref().is_some_and(|inflight| inflight.serves(&rpc)) {
            if let Some(stale) = self.inflight.take() {
                stale.reply.abort();
            }
            let mut prepared = prepare_append(&rpc, option.hard_ttl());
            self.stamp(&mut prepared.request);
            self.inflight = Some(start_append(client, &rpc, prepared));
        }
        let Some(inflight) = self.inflight.as_mut() else {
            unreachable!("an append-entries call was just found or started");
        };
        // If openraft's own deadline drops this future here, the call goes
        // on in its task and openraft's retry of these entries joins it.
        let joined = (&mut inflight.reply).await;
        let (last_sent, sent) = (inflight.last_log_id, inflight.entries);
        self.inflight = None;
        let reply = joined
            .unwrap_or_else(|join_error| Err(tonic::Status::cancelled(join_error.to_string())))
            .map_err(|s| rpc_error(&s, sent))?;
        append_reply(reply, (requested_last != Some(last_sent)).then_some(last_sent))
    }

    async fn send_vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        let mut request = tonic::Request::new(pb::VoteRequest {
            vote: Some(codec::vote_to_pb(&rpc.vote)),
            last_log_id: codec::opt_log_id_to_pb(rpc.last_log_id.as_ref()),
        });
        request.set_timeout(option.hard_ttl());
        self.stamp(&mut request);
        let mut client = self.client().map_err(RPCError::Unreachable)?;
        let reply = client.vote(request).await.map_err(|s| rpc_error(&s, 0))?.into_inner();
        Ok(VoteResponse {
            vote: codec::vote_from_pb(reply.vote.as_ref()).map_err(|e| decode_error(&e))?,
            vote_granted: reply.vote_granted,
            last_log_id: codec::opt_log_id_from_pb(reply.last_log_id.as_ref()).map_err(|e| decode_error(&e))?,
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let result = self.send_append_entries(rpc, option).await;
        self.note(&result);
        result
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        let result = self.send_vote(rpc, option).await;
        self.note(&result);
        result
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
        self.stamp(&mut request);
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
                tonic::Code::FailedPrecondition => StreamingError::Unreachable(foreign_cluster(&s)),
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

    #[test]
    fn a_message_holds_the_entries_that_fit_and_never_none() {
        // A 16 MiB entry must still travel, alone; small ones share a message.
        const MIB: usize = 1 << 20;
        assert_eq!(entries_within([16 * MIB, 1], 4 * MIB), 1);
        assert_eq!(entries_within([MIB, MIB, MIB, MIB, MIB], 4 * MIB), 4);
        assert_eq!(entries_within([MIB; 3], 4 * MIB), 3);
        assert_eq!(entries_within([], 4 * MIB), 0);
    }

    #[test]
    fn the_deadline_grows_with_the_payload_up_to_a_bound() {
        // A heartbeat-sized deadline cannot carry 16 MiB to a busy follower.
        let base = Duration::from_millis(100);
        assert_eq!(append_deadline(base, 0), base);
        let sixteen_mib = append_deadline(base, 16 << 20);
        assert!(sixteen_mib >= Duration::from_secs(4), "{sixteen_mib:?}");
        assert_eq!(
            append_deadline(base, usize::MAX),
            Duration::from_millis(APPEND_ENTRIES_DEADLINE_MS_MAX)
        );
    }

    #[test]
    fn too_large_or_too_slow_messages_are_split_by_openraft() {
        // tonic reports an oversized message as OUT_OF_RANGE, not RESOURCE_EXHAUSTED.
        type E = RPCError<NodeId, Node, RaftError<NodeId>>;
        for code in [
            tonic::Code::OutOfRange,
            tonic::Code::ResourceExhausted,
            tonic::Code::DeadlineExceeded,
        ] {
            let error: E = rpc_error(&tonic::Status::new(code, "too large"), 10);
            assert!(
                matches!(error, RPCError::PayloadTooLarge(ref p) if p.entries_hint() == 5),
                "{code:?}: {error:?}"
            );
            let single: E = rpc_error(&tonic::Status::new(code, "too large"), 1);
            assert!(
                matches!(single, RPCError::Network(_)),
                "one entry cannot be split: {single:?}"
            );
        }
        let refused: E = rpc_error(&tonic::Status::unavailable("refused"), 10);
        assert!(matches!(refused, RPCError::Unreachable(_)));
        // A client port of a node with a peer port: back off, say why.
        let client_port: E = rpc_error(&tonic::Status::unimplemented(""), 10);
        assert!(
            matches!(client_port, RPCError::Unreachable(ref u) if u.to_string().contains("peer-listen")),
            "{client_port:?}"
        );
        // A node of another cluster at the peer's address: back off, say why.
        let foreign: E = rpc_error(&tonic::Status::failed_precondition("cluster 1 vs 2"), 10);
        assert!(
            matches!(foreign, RPCError::Unreachable(ref u) if u.to_string().contains("cluster 1 vs 2")),
            "{foreign:?}"
        );
    }

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

    #[tokio::test]
    async fn raft_dials_a_members_peer_address_when_it_has_one() {
        // Raft is served only on the peer port of a node that has one.
        let mut network = Network::default();
        let split = Node::with_peer_addr("127.0.0.1:7002", Some("127.0.0.1:7052".into()));
        let _client = network.new_client(2, &split).await;
        let _client = network.new_client(3, &Node::new("127.0.0.1:7003")).await;
        let addr_of = |id| network.channels.lock().get(&id).map(|peer| peer.addr.clone());
        assert_eq!(addr_of(2).as_deref(), Some("127.0.0.1:7052"));
        assert_eq!(addr_of(3).as_deref(), Some("127.0.0.1:7003"));
    }
}
