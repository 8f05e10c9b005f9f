//! The write path: sessions opened on demand, each write numbered once and
//! retried under that number, and [`UnansweredWrite`] for writes whose
//! outcome is unknown.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proto::kv as api;
use tonic::transport::Channel;

use crate::client::{kv_client, Client};
use crate::error::{Error, Result};
use crate::retry::RequestKind;
use crate::write_id::{Session, WriteTicket, SESSION_WRITES_UNANSWERED_MAX};

/// A data write, kept so an attempt can be rebuilt for each retry.
#[derive(Debug, Clone)]
enum WriteRequest {
    Put { key: Bytes, value: Bytes },
    Delete { key: Bytes },
    BatchPut { pairs: Vec<api::KeyValue> },
}

type WriteCall = Pin<Box<dyn Future<Output = Result<tonic::Response<api::WriteResponse>, tonic::Status>> + Send>>;

impl WriteRequest {
    /// One attempt of this write with `write_id`, to be answered within
    /// `timeout`.
    fn call(&self, channel: Channel, write_id: api::WriteId, timeout: Duration) -> WriteCall {
        let mut client = kv_client(channel);
        let write_id = Some(write_id);
        match self {
            WriteRequest::Put { key, value } => {
                let mut request = tonic::Request::new(api::PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                    write_id,
                });
                request.set_timeout(timeout);
                Box::pin(async move { client.put(request).await })
            }
            WriteRequest::Delete { key } => {
                let mut request = tonic::Request::new(api::DeleteRequest {
                    key: key.clone(),
                    write_id,
                });
                request.set_timeout(timeout);
                Box::pin(async move { client.delete(request).await })
            }
            WriteRequest::BatchPut { pairs } => {
                let mut request = tonic::Request::new(api::BatchPutRequest {
                    pairs: pairs.clone(),
                    write_id,
                });
                request.set_timeout(timeout);
                Box::pin(async move { client.batch_put(request).await })
            }
        }
    }
}

/// A write whose outcome is unknown (it may have been applied, or may still
/// be), holding its session and sequence so a later retry is the same write.
///
/// Returned inside [`Error::Unknown`]; give it to [`Client::retry_write`].
/// While it lives the session counts the write as unanswered.
pub struct UnansweredWrite {
    ticket: WriteTicket,
    request: WriteRequest,
}

impl UnansweredWrite {
    /// The session id the write was sent under.
    pub fn client_id(&self) -> u64 {
        self.ticket.session().client_id()
    }

    /// The write's sequence in its session.
    pub fn sequence(&self) -> u64 {
        self.ticket.sequence()
    }
}

impl std::fmt::Debug for UnansweredWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match &self.request {
            WriteRequest::Put { .. } => "put",
            WriteRequest::Delete { .. } => "delete",
            WriteRequest::BatchPut { .. } => "batch_put",
        };
        f.debug_struct("UnansweredWrite")
            .field("op", &op)
            .field("client_id", &self.client_id())
            .field("sequence", &self.sequence())
            .finish()
    }
}

impl Client {
    /// Sets `key` to `value`.
    pub async fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<api::WriteResponse> {
        let request = WriteRequest::Put {
            key: key.into(),
            value: value.into(),
        };
        self.write(request).await
    }

    /// Deletes `key` (deleting a missing key succeeds).
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<api::WriteResponse> {
        self.write(WriteRequest::Delete { key: key.into() }).await
    }

    /// Sets every pair atomically: all of them or none.
    pub async fn batch_put(&self, pairs: Vec<(Bytes, Bytes)>) -> Result<api::WriteResponse> {
        let pairs = pairs
            .into_iter()
            .map(|(key, value)| api::KeyValue { key, value })
            .collect();
        self.write(WriteRequest::BatchPut { pairs }).await
    }

    /// Tries a write whose outcome was unknown again, as the same write: it
    /// is applied at most once however many times it is tried. Fails with
    /// [`Error::SessionExpired`] once the server has forgotten the session.
    pub async fn retry_write(&self, write: UnansweredWrite) -> Result<api::WriteResponse> {
        let UnansweredWrite { ticket, request } = write;
        self.send_write(ticket, request).await
    }

    /// Sends `put(key, value)` again under an earlier `sequence` of the
    /// current session, as a retry of that write would. For tests of
    /// exactly-once application; not for ordinary use.
    #[doc(hidden)]
    pub async fn put_with_sequence(
        &self,
        sequence: u64,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<api::WriteResponse> {
        let ticket = self.session().await?.resume(sequence);
        let request = WriteRequest::Put {
            key: key.into(),
            value: value.into(),
        };
        self.send_write(ticket, request).await
    }

    /// The id of the session this client writes under, once one is open.
    pub fn client_id(&self) -> Option<u64> {
        self.current_session().map(|session| session.client_id())
    }

    async fn write(&self, request: WriteRequest) -> Result<api::WriteResponse> {
        let session = self.session().await?;
        let ticket = match tokio::time::timeout(self.inner.request_timeout, session.begin()).await {
            Ok(ticket) => ticket,
            Err(_elapsed) => {
                return Err(Error::NotApplied {
                    attempts: 0,
                    elapsed: self.inner.request_timeout,
                    last: format!(
                        "the session's oldest unanswered write held this one back \
                         (session_writes_unanswered_max = {SESSION_WRITES_UNANSWERED_MAX})"
                    ),
                })
            }
        };
        self.send_write(ticket, request).await
    }

    async fn send_write(&self, ticket: WriteTicket, request: WriteRequest) -> Result<api::WriteResponse> {
        let result = self
            .execute(RequestKind::Write, None, |channel, timeout| {
                request.call(channel, ticket.write_id(), timeout)
            })
            .await;
        match result {
            Err(Error::Unknown {
                attempts,
                elapsed,
                last,
                write: None,
            }) => Err(Error::Unknown {
                attempts,
                elapsed,
                last,
                write: Some(Box::new(UnansweredWrite { ticket, request })),
            }),
            Err(error @ Error::SessionExpired { .. }) => {
                ticket.session().mark_expired();
                Err(error)
            }
            other => other,
        }
    }

    fn current_session(&self) -> Option<Arc<Session>> {
        self.inner
            .session
            .lock()
            .clone()
            .filter(|session| !session.is_expired())
    }

    /// The session to write under, opened on the cluster first if there is
    /// none yet (or the last one expired). One open at a time.
    async fn session(&self) -> Result<Arc<Session>> {
        if let Some(session) = self.current_session() {
            return Ok(session);
        }
        let _opening = self.inner.opening.lock().await;
        if let Some(session) = self.current_session() {
            return Ok(session);
        }
        let reply = self
            .execute(RequestKind::Write, None, |channel, timeout| {
                let mut request = tonic::Request::new(api::OpenSessionRequest {});
                request.set_timeout(timeout);
                async move { kv_client(channel).open_session(request).await }
            })
            .await
            // The write itself was never sent, whatever became of the open.
            .map_err(|error| match error {
                Error::Unknown {
                    attempts,
                    elapsed,
                    last,
                    ..
                } => Error::NotApplied {
                    attempts,
                    elapsed,
                    last: format!("could not open a session: {last}"),
                },
                other => other,
            })?;
        if reply.client_id == 0 {
            return Err(Error::Other(tonic::Status::internal(
                "the server opened a session with id 0",
            )));
        }
        let session = Session::new(reply.client_id);
        *self.inner.session.lock() = Some(Arc::clone(&session));
        Ok(session)
    }
}
