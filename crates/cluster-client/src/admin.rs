//! Cluster administration: status, digest, initialize, membership and
//! backups.

use bytes::Bytes;
use proto::kv as api;
use proto::kv::cluster_client::ClusterClient;
use tokio::task::JoinSet;
use tonic::Streaming;

use crate::client::Client;
use crate::endpoints::normalize;
use crate::error::{Error, Result};
use crate::retry::RequestKind;

/// A backup being received from the leader ([`Client::backup`]): the
/// bytes of one snapshot archive, in order.
#[derive(Debug)]
pub struct Backup {
    /// The last log index the backup holds every entry up to.
    pub index: u64,
    /// That entry's term.
    pub term: u64,
    /// The archive's size in bytes.
    pub total_bytes: u64,
    first: Option<Bytes>,
    stream: Streaming<api::BackupChunk>,
    received_bytes: u64,
}

impl Backup {
    /// The next bytes of the archive; `None` once it is complete. A stream
    /// that ends before [`Backup::total_bytes`] is an error, never a short
    /// archive.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        let data = match self.first.take() {
            Some(data) => data,
            None => match self.stream.message().await.map_err(Error::Other)? {
                Some(chunk) => chunk.data,
                None if self.received_bytes == self.total_bytes => return Ok(None),
                None => {
                    return Err(Error::Protocol {
                        request: "Backup",
                        reason: format!(
                            "the stream ended after {} of {} bytes",
                            self.received_bytes, self.total_bytes
                        ),
                    })
                }
            },
        };
        self.received_bytes += data.len() as u64;
        if self.received_bytes > self.total_bytes {
            return Err(Error::Protocol {
                request: "Backup",
                reason: format!("more than the announced {} bytes", self.total_bytes),
            });
        }
        Ok(Some(data))
    }
}

impl Client {
    /// Starts a backup on the leader: a checkpoint holding every write
    /// acknowledged before this call, streamed as one archive (restore it
    /// with `kv-node --restore FILE --init`). The request deadline covers
    /// reaching the leader and its first message; the transfer itself has
    /// none, so a large backup is not cut short.
    pub async fn backup(&self) -> Result<Backup> {
        let mut stream = self
            .execute(RequestKind::LinearizableRead, None, |channel, _timeout| async move {
                ClusterClient::new(channel).backup(api::BackupRequest {}).await
            })
            .await?;
        let first = stream.message().await.map_err(Error::Other)?.ok_or(Error::Protocol {
            request: "Backup",
            reason: "the stream ended before its first message".into(),
        })?;
        Ok(Backup {
            index: first.index,
            term: first.term,
            total_bytes: first.total_bytes,
            first: Some(first.data),
            stream,
            received_bytes: 0,
        })
    }

    /// The status of the node at `endpoint` (asked once, never elsewhere).
    pub async fn status(&self, endpoint: &str) -> Result<api::StatusResponse> {
        let endpoint = normalize(endpoint)?;
        self.execute(RequestKind::Pinned, Some(&endpoint), |channel, timeout| {
            let mut request = tonic::Request::new(api::StatusRequest {});
            request.set_timeout(timeout);
            async move { ClusterClient::new(channel).status(request).await }
        })
        .await
    }

    /// The status of every known endpoint, asked concurrently, in the order
    /// of [`Client::endpoints`].
    pub async fn status_all(&self) -> Vec<(String, Result<api::StatusResponse>)> {
        let addrs = self.endpoints();
        let mut tasks = JoinSet::new();
        for (i, addr) in addrs.iter().enumerate() {
            let client = self.clone();
            let addr = addr.clone();
            tasks.spawn(async move { (i, client.status(&addr).await) });
        }
        let mut results: Vec<Option<Result<api::StatusResponse>>> = addrs.iter().map(|_| None).collect();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((i, result)) => results[i] = Some(result),
                Err(join_error) => std::panic::resume_unwind(join_error.into_panic()),
            }
        }
        addrs
            .into_iter()
            .zip(results)
            .map(|(addr, result)| {
                let result = result.unwrap_or_else(|| Err(Error::Other(tonic::Status::internal("status task lost"))));
                (addr, result)
            })
            .collect()
    }

    /// The status of the leader: the node that says it leads, at the
    /// highest term among the answers.
    pub async fn leader_status(&self) -> Result<api::StatusResponse> {
        let mut last_error = None;
        let mut leader: Option<api::StatusResponse> = None;
        for (_, result) in self.status_all().await {
            match result {
                Ok(status) if status.role == "leader" => {
                    if leader.as_ref().is_none_or(|l| l.term < status.term) {
                        leader = Some(status);
                    }
                }
                Ok(_) => {}
                Err(error) => last_error = Some(error.to_string()),
            }
        }
        leader.ok_or_else(|| Error::Unavailable {
            attempts: 1,
            elapsed: std::time::Duration::ZERO,
            last: last_error.unwrap_or_else(|| "no endpoint says it is the leader".to_owned()),
        })
    }

    /// A digest of the keyspace of the node at `endpoint`.
    pub async fn digest(&self, endpoint: &str) -> Result<api::DigestResponse> {
        let endpoint = normalize(endpoint)?;
        self.execute(RequestKind::Pinned, Some(&endpoint), |channel, timeout| {
            let mut request = tonic::Request::new(api::DigestRequest {});
            request.set_timeout(timeout);
            async move { ClusterClient::new(channel).digest(request).await }
        })
        .await
    }

    /// Forms a new cluster whose voters are `members` (`(id, host:port)`).
    /// Sent to one reachable endpoint. Fails with [`Error::Other`]
    /// (FAILED_PRECONDITION) on a cluster that is already initialized.
    ///
    /// Nodes with a separate peer port serve this call there only: make
    /// the client with their peer addresses as endpoints.
    pub async fn initialize(&self, members: Vec<(u64, String)>) -> Result<()> {
        let members = members.into_iter().map(|(id, addr)| (id, addr, None)).collect();
        self.initialize_with_peer_addrs(members).await
    }

    /// Like [`Client::initialize`], for voters given as `(id, client
    /// host:port, peer host:port)`; a peer address of `None` means the
    /// voter serves Raft at its client address.
    pub async fn initialize_with_peer_addrs(&self, members: Vec<(u64, String, Option<String>)>) -> Result<()> {
        let members: Vec<api::Member> = members
            .into_iter()
            .map(|(id, addr, peer_addr)| api::Member {
                id,
                addr,
                voter: true,
                peer_addr: peer_addr.unwrap_or_default(),
            })
            .collect();
        self.execute(RequestKind::AnyNode, None, |channel, timeout| {
            let mut request = tonic::Request::new(api::InitializeRequest {
                members: members.clone(),
            });
            request.set_timeout(timeout);
            async move { ClusterClient::new(channel).initialize(request).await }
        })
        .await?;
        Ok(())
    }

    /// Adds node `id` at `addr` (`host:port`) as a learner; returns once it
    /// has caught up.
    pub async fn add_learner(&self, id: u64, addr: impl Into<String>) -> Result<api::MembershipResponse> {
        self.add_learner_with_peer_addr(id, addr, None).await
    }

    /// Adds node `id`, reached by clients at `addr` and by peers at
    /// `peer_addr` (`None`: at `addr` too), as a learner; returns once it
    /// has caught up. Nodes with a separate peer port serve membership
    /// calls there only: make the client with their peer addresses.
    pub async fn add_learner_with_peer_addr(
        &self,
        id: u64,
        addr: impl Into<String>,
        peer_addr: Option<String>,
    ) -> Result<api::MembershipResponse> {
        let addr = addr.into();
        let peer_addr = peer_addr.unwrap_or_default();
        self.execute(RequestKind::Membership, None, |channel, timeout| {
            let mut request = tonic::Request::new(api::AddLearnerRequest {
                id,
                addr: addr.clone(),
                peer_addr: peer_addr.clone(),
            });
            request.set_timeout(timeout);
            async move { ClusterClient::new(channel).add_learner(request).await }
        })
        .await
    }

    /// Sets the voters to exactly `voters`; each must be a member already.
    pub async fn change_membership(&self, voters: Vec<u64>) -> Result<api::MembershipResponse> {
        self.execute(RequestKind::Membership, None, |channel, timeout| {
            let mut request = tonic::Request::new(api::ChangeMembershipRequest { voters: voters.clone() });
            request.set_timeout(timeout);
            async move { ClusterClient::new(channel).change_membership(request).await }
        })
        .await
    }

    /// Removes node `id` from the voters and the members.
    pub async fn remove_node(&self, id: u64) -> Result<api::MembershipResponse> {
        self.execute(RequestKind::Membership, None, |channel, timeout| {
            let mut request = tonic::Request::new(api::RemoveNodeRequest { id });
            request.set_timeout(timeout);
            async move { ClusterClient::new(channel).remove_node(request).await }
        })
        .await
    }
}
