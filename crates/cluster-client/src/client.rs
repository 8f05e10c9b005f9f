//! [`Client`], its builder, and the executor that carries out the retry
//! decisions of [`crate::retry`].

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto::kv as api;
use proto::kv::kv_client::KvClient;
use tonic::transport::Channel;

use crate::endpoints::{normalize, Endpoints};
use crate::error::{Error, Result};
use crate::retry::{self, Decision, FailReason, Failure, Outcome, RequestKind};
use crate::tls::{ClientIdentity, ClientTls};
use crate::write_id::Session;

/// Default deadline of one client call, retries included.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Default deadline of one attempt.
pub const ATTEMPT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);
/// Default deadline for opening a connection.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(1);
/// Default smallest backoff cap (the first retry waits up to this).
pub const BACKOFF_MIN_DEFAULT: Duration = Duration::from_millis(20);
/// Default largest backoff.
///
/// Small on purpose: most retries wait for an election, and a client asleep
/// in a long backoff when the new leader appears adds that sleep to the
/// failover it sees (with full jitter, half the cap on average).
pub const BACKOFF_MAX_DEFAULT: Duration = Duration::from_millis(100);
/// The largest response the client accepts, in bytes: above the server's
/// largest (a Range page stays under 4 MiB, a Get under 1 MiB plus
/// framing), with room for servers configured with larger limits.
pub const RESPONSE_BYTES_MAX: usize = 32 << 20;

/// A KV stub over `channel` that accepts every response the server may send.
pub(crate) fn kv_client(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel)
        .max_decoding_message_size(RESPONSE_BYTES_MAX)
        .max_encoding_message_size(RESPONSE_BYTES_MAX)
}

/// Default page size of [`Client::range`].
pub const RANGE_PAGE_SIZE_DEFAULT: u32 = 1000;

const _: () = assert!(BACKOFF_MIN_DEFAULT.as_millis() <= BACKOFF_MAX_DEFAULT.as_millis());
const _: () = assert!(ATTEMPT_TIMEOUT_DEFAULT.as_millis() <= REQUEST_TIMEOUT_DEFAULT.as_millis());

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Served by the leader after it confirms it still leads: sees every
    /// write acknowledged before the read started.
    #[default]
    Linearizable,
    /// Served by any node from its own copy at once: fast, maybe stale.
    Stale,
}

impl Consistency {
    pub(crate) fn to_proto(self) -> i32 {
        match self {
            Consistency::Linearizable => api::Consistency::Linearizable as i32,
            Consistency::Stale => api::Consistency::Stale as i32,
        }
    }

    pub(crate) fn request_kind(self) -> RequestKind {
        match self {
            Consistency::Linearizable => RequestKind::LinearizableRead,
            Consistency::Stale => RequestKind::StaleRead,
        }
    }
}

/// Configures a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    request_timeout: Duration,
    attempt_timeout: Duration,
    connect_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    range_page_size: u32,
    tls: Option<ClientTls>,
}

impl ClientBuilder {
    /// A builder for a client of the nodes at `endpoints` (`host:port`).
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> ClientBuilder {
        ClientBuilder {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            attempt_timeout: ATTEMPT_TIMEOUT_DEFAULT,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            backoff_min: BACKOFF_MIN_DEFAULT,
            backoff_max: BACKOFF_MAX_DEFAULT,
            range_page_size: RANGE_PAGE_SIZE_DEFAULT,
            tls: None,
        }
    }

    /// The deadline of one call, all retries included. Default 5 s. Longer
    /// rides out longer failovers; shorter reports trouble sooner.
    pub fn request_timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.request_timeout = timeout;
        self
    }

    /// The deadline of one attempt (bounded by what is left of the request
    /// deadline). Default 2 s. Shorter abandons a hung node sooner, but a
    /// write abandoned this way has an unknown outcome.
    pub fn attempt_timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.attempt_timeout = timeout;
        self
    }

    /// The deadline for opening a connection. Default 1 s. A node that is
    /// down usually refuses at once; this bounds the wait for one that is
    /// unreachable.
    pub fn connect_timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.connect_timeout = timeout;
        self
    }

    /// The backoff cap of the first retry; it doubles per retry up to
    /// [`ClientBuilder::backoff_max`]. Default 20 ms.
    pub fn backoff_min(mut self, backoff: Duration) -> ClientBuilder {
        self.backoff_min = backoff;
        self
    }

    /// The largest backoff. Default 100 ms. Each wait is uniform in
    /// `[0, cap]` (full jitter), so clients do not retry in lockstep.
    pub fn backoff_max(mut self, backoff: Duration) -> ClientBuilder {
        self.backoff_max = backoff;
        self
    }

    /// Pairs per page fetched by [`Client::range`]. Default 1000; the server
    /// caps it at 10 000 and a page also ends at 4 MiB.
    pub fn range_page_size(mut self, pairs: u32) -> ClientBuilder {
        self.range_page_size = pairs.max(1);
        self
    }

    /// Talk TLS to every node, trusting the nodes whose certificates
    /// `ca_pem` (a PEM CA certificate, `kv-node --tls-ca`) signed, and
    /// presenting `identity` if given: a peer port with mutual TLS admits
    /// admin calls only with a certificate from the cluster's CA. Default:
    /// plaintext. Unusable PEM is reported by [`ClientBuilder::build`].
    pub fn tls(mut self, ca_pem: impl Into<String>, identity: Option<ClientIdentity>) -> ClientBuilder {
        self.tls = Some(ClientTls::new(ca_pem.into(), identity));
        self
    }

    /// Builds the client. No connection is made until the first request.
    pub fn build(self) -> Result<Client> {
        if let Some(tls) = &self.tls {
            tls.check()?;
        }
        let mut addrs: Vec<String> = Vec::with_capacity(self.endpoints.len());
        for endpoint in &self.endpoints {
            let addr = normalize(endpoint)?;
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        if addrs.is_empty() {
            return Err(Error::NoEndpoints);
        }
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints: Arc::new(Endpoints::new(addrs, self.connect_timeout, self.tls)),
                session: parking_lot::Mutex::new(None),
                opening: tokio::sync::Mutex::new(()),
                request_timeout: self.request_timeout,
                attempt_timeout: self.attempt_timeout.min(self.request_timeout),
                backoff_min: self.backoff_min,
                backoff_max: self.backoff_max.max(self.backoff_min),
                range_page_size: self.range_page_size,
            }),
        })
    }
}

/// A client of the cluster: follows the leader, retries within a deadline,
/// and applies each write at most once.
///
/// Cheap to clone; clones share the connections, the cached leader and the
/// write numbering, and may be used from many tasks at once.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) endpoints: Arc<Endpoints>,
    /// The session writes are numbered in; opened on the first write.
    pub(crate) session: parking_lot::Mutex<Option<Arc<Session>>>,
    /// Held while a session is being opened, so only one is.
    pub(crate) opening: tokio::sync::Mutex<()>,
    pub(crate) request_timeout: Duration,
    attempt_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    pub(crate) range_page_size: u32,
}

/// One page of a range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// The pairs, in key order.
    pub pairs: Vec<(Bytes, Bytes)>,
    /// The start key of the next page; `None` when the range is done.
    pub next_start: Option<Bytes>,
}

/// What the executor learns from one call, beside the reply.
struct Attempted {
    attempts: u32,
    outcome_unknown: bool,
    started: Instant,
}

impl Client {
    /// A client with default settings for the nodes at `endpoints`
    /// (`host:port`, an `http://` prefix is accepted). Connects lazily.
    pub fn connect(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Result<Client> {
        ClientBuilder::new(endpoints).build()
    }

    /// A builder, to change timeouts and backoff.
    pub fn builder(endpoints: impl IntoIterator<Item = impl Into<String>>) -> ClientBuilder {
        ClientBuilder::new(endpoints)
    }

    /// A client that shares this one's connections, cached leader and
    /// settings but numbers its writes in a session of its own (opened at
    /// its first write): for many independent writers over one set of
    /// connections, each with its own window of unanswered writes.
    pub fn with_new_session(&self) -> Client {
        let inner = &self.inner;
        Client {
            inner: Arc::new(Inner {
                endpoints: Arc::clone(&inner.endpoints),
                session: parking_lot::Mutex::new(None),
                opening: tokio::sync::Mutex::new(()),
                request_timeout: inner.request_timeout,
                attempt_timeout: inner.attempt_timeout,
                backoff_min: inner.backoff_min,
                backoff_max: inner.backoff_max,
                range_page_size: inner.range_page_size,
            }),
        }
    }

    /// Every endpoint known: the given ones, then those learned from hints.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner.endpoints.addrs()
    }

    /// The endpoint believed to be the leader, if known.
    pub fn cached_leader(&self) -> Option<String> {
        self.inner.endpoints.leader()
    }

    /// Reads `key` linearizably; `None` when it is missing.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>> {
        self.get_with(key, Consistency::Linearizable).await
    }

    /// Reads `key` with the given consistency; `None` when it is missing.
    pub async fn get_with(&self, key: impl Into<Bytes>, consistency: Consistency) -> Result<Option<Bytes>> {
        let key = key.into();
        let reply = self
            .execute(consistency.request_kind(), None, |channel, timeout| {
                let mut request = tonic::Request::new(api::GetRequest {
                    key: key.clone(),
                    consistency: consistency.to_proto(),
                });
                request.set_timeout(timeout);
                async move { kv_client(channel).get(request).await }
            })
            .await?;
        Ok(reply.found.then_some(reply.value))
    }

    /// One page of the pairs with `start <= key < end` (empty `start`: from
    /// the beginning; empty `end`: to the end). `limit` 0 asks for the
    /// server's page size.
    pub async fn range_page(
        &self,
        start: impl Into<Bytes>,
        end: impl Into<Bytes>,
        limit: u32,
        consistency: Consistency,
    ) -> Result<Page> {
        let (start, end) = (start.into(), end.into());
        let reply = self
            .execute(consistency.request_kind(), None, |channel, timeout| {
                let mut request = tonic::Request::new(api::RangeRequest {
                    start: start.clone(),
                    end: end.clone(),
                    limit,
                    consistency: consistency.to_proto(),
                });
                request.set_timeout(timeout);
                async move { kv_client(channel).range(request).await }
            })
            .await?;
        Ok(Page {
            pairs: reply.pairs.into_iter().map(|kv| (kv.key, kv.value)).collect(),
            next_start: (!reply.next_start.is_empty()).then_some(reply.next_start),
        })
    }

    /// Runs `call` until it succeeds, following [`retry::decide`], within
    /// the request deadline. `pinned` fixes the endpoint (for
    /// [`RequestKind::Pinned`]). `call` gets the channel and the time this
    /// attempt may take, and builds a fresh request each time.
    pub(crate) async fn execute<T, F, Fut>(&self, kind: RequestKind, pinned: Option<&str>, mut call: F) -> Result<T>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let inner = &self.inner;
        let started = Instant::now();
        let deadline = started + inner.request_timeout;
        let mut target = match (pinned, kind) {
            (Some(addr), _) => addr.to_owned(),
            (None, RequestKind::StaleRead | RequestKind::AnyNode) => inner.endpoints.spread(),
            (None, _) => inner.endpoints.leader_or_first(),
        };
        let mut state = Attempted {
            attempts: 0,
            outcome_unknown: false,
            started,
        };
        let mut hint_hops = 0;
        loop {
            state.attempts += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt_timeout = inner.attempt_timeout.min(left);
            let channel = inner.endpoints.channel(&target)?;
            let failure = match tokio::time::timeout(attempt_timeout, call(channel, attempt_timeout)).await {
                Ok(Ok(reply)) => {
                    if kind.leader_only() {
                        inner.endpoints.set_leader(&target);
                    }
                    return Ok(reply.into_inner());
                }
                Ok(Err(status)) => {
                    let failure = Failure::from_status(&status, &target);
                    (failure, Some(status))
                }
                Err(_elapsed) => (Failure::timeout(&target, attempt_timeout), None),
            };
            let (failure, status) = failure;
            if kind == RequestKind::Write && failure.outcome() == Outcome::Unknown {
                state.outcome_unknown = true;
            }
            let decision = retry::decide(kind, &failure, state.attempts);
            let backoff = retry::backoff_delay(inner.backoff_min, inner.backoff_max, state.attempts, fastrand::f64());
            let delay = retry::delay_before(&decision, hint_hops, backoff);
            match decision {
                Decision::Fail(reason) => {
                    let failure = self.explain(failure, status.as_ref()).await;
                    return Err(give_up(kind, reason, &state, failure, status));
                }
                Decision::RetryAt(addr) => {
                    hint_hops += 1;
                    inner.endpoints.set_leader(&addr);
                    target = addr;
                }
                Decision::RetrySame => hint_hops = 0,
                Decision::RetryNext => {
                    hint_hops = 0;
                    target = inner.endpoints.next_after(&target);
                }
            }
            if !retry::retry_fits(deadline.saturating_duration_since(Instant::now()), delay) {
                let failure = self.explain(failure, status.as_ref()).await;
                return Err(give_up(kind, FailReason::GiveUp, &state, failure, status));
            }
            tokio::time::sleep(delay).await;
        }
    }
}

impl Client {
    /// The last failure of a request that is given up, said plainly when
    /// it is a plaintext client's broken connection to a TLS port (which
    /// tonic reports as a transport error, a broken pipe or a cancelled
    /// call, depending on timing). Probes the endpoint once to tell.
    async fn explain(&self, mut failure: Failure, status: Option<&tonic::Status>) -> Failure {
        let connection_lost = status.is_some_and(|status| {
            matches!(
                status.code(),
                tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Unavailable | tonic::Code::Internal
            )
        });
        if self.inner.endpoints.is_plaintext() && connection_lost && crate::tls::serves_tls(&failure.endpoint).await {
            failure.message = crate::tls::plaintext_on_tls_port(&failure.endpoint, &failure.message);
        }
        failure
    }
}

/// The error a request ends with.
fn give_up(
    kind: RequestKind,
    reason: FailReason,
    state: &Attempted,
    failure: Failure,
    status: Option<tonic::Status>,
) -> Error {
    let (attempts, elapsed, last) = (state.attempts, state.started.elapsed(), failure.message);
    let write = kind == RequestKind::Write;
    match (reason, status) {
        (FailReason::Rejected, Some(status)) => Error::InvalidArgument(status.message().to_owned()),
        (FailReason::SessionExpired, _) => Error::SessionExpired { last },
        _ if write && state.outcome_unknown => Error::Unknown {
            attempts,
            elapsed,
            last,
            write: None,
        },
        (FailReason::Status, Some(status)) => Error::Other(status),
        _ if write => Error::NotApplied {
            attempts,
            elapsed,
            last,
        },
        _ => Error::Unavailable {
            attempts,
            elapsed,
            last,
        },
    }
}
