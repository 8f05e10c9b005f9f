//! A client for the replicated key/value database that follows the leader,
//! retries within a deadline, and applies each write at most once.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cluster_client::Error> {
//! use tokio_stream::StreamExt;
//!
//! let client = cluster_client::Client::connect(["127.0.0.1:7001", "127.0.0.1:7002"])?;
//! client.put("greeting", "hello").await?;
//! assert_eq!(client.get("greeting").await?.as_deref(), Some(&b"hello"[..]));
//! let mut pairs = client.range("a", "z");
//! while let Some(pair) = pairs.next().await {
//!     let (key, value) = pair?;
//!     println!("{key:?} = {value:?}");
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`retry`]: the pure decision core. A failed attempt becomes a
//!   [`retry::Failure`]; [`retry::decide`] maps it to retry at the hinted
//!   leader, retry the same node after a backoff, rotate to the next
//!   endpoint, or fail. Backoff is exponential with full jitter. No I/O,
//!   unit-tested for every status code and metadata combination.
//! - `client`: [`Client`], [`ClientBuilder`], the data operations and the
//!   executor that carries out the decisions within the request deadline.
//! - `admin`: status, digest, initialize and membership calls.
//! - `range`: [`RangeStream`], a range paged through for the caller.
//! - `endpoints`: the endpoint list, lazily made channels, the cached leader.
//! - `write`: the data writes, sessions opened on demand, and
//!   [`UnansweredWrite`] for retrying a write whose outcome is unknown.
//! - `write_id`: exactly-once numbering: a session the cluster opened, one
//!   sequence per write reused by its retries, `first_unanswered`, and the
//!   window that keeps a slow write from being forgotten.
//! - `tls`: the CA a client trusts and the [`ClientIdentity`] it presents.
//! - `error`: [`Error`] and [`Outcome`]: whether a failed write may have
//!   been applied.
//!
//! # Failures
//!
//! Every call has a deadline ([`ClientBuilder::request_timeout`], 5 s by
//! default) and at most [`retry::ATTEMPTS_MAX`] attempts. A write that fails
//! reports whether it certainly did not happen ([`Error::NotApplied`],
//! [`Error::InvalidArgument`]) or may have ([`Error::Unknown`],
//! [`Error::SessionExpired`]); see [`Error::outcome`].
//!
//! # Exactly once
//!
//! A client opens a session on the cluster at its first write (one Raft
//! write) and numbers its writes in it. Every retry of a write reuses its
//! number, so the cluster applies it at most once, and answers OK only for
//! a write it applied. A write whose deadline passes with its outcome
//! unknown comes back in [`Error::Unknown`] as an [`UnansweredWrite`]:
//! [`Client::retry_write`] tries it again later as the same write. If the
//! session expires meanwhile (an hour idle, or evicted among 50 000), the
//! retry fails with [`Error::SessionExpired`] rather than risk a second
//! apply. At most [`SESSION_WRITES_UNANSWERED_MAX`] sequences separate a
//! session's oldest unanswered write from its newest: a new write waits
//! (within its deadline) for room.

#![deny(clippy::unwrap_used)]
#![deny(missing_docs)]

mod admin;
mod client;
mod endpoints;
mod error;
mod range;
pub mod retry;
mod tls;
mod write;
mod write_id;

pub use admin::Backup;
pub use bytes::Bytes;
pub use client::{
    Client, ClientBuilder, Consistency, Page, ATTEMPT_TIMEOUT_DEFAULT, BACKOFF_MAX_DEFAULT, BACKOFF_MIN_DEFAULT,
    CONNECT_TIMEOUT_DEFAULT, RANGE_PAGE_SIZE_DEFAULT, REQUEST_TIMEOUT_DEFAULT, RESPONSE_BYTES_MAX,
};
pub use endpoints::LEARNED_ENDPOINTS_MAX;
pub use error::{Error, Outcome, Result};
pub use proto::kv::{DigestResponse, Member, MembershipResponse, StatusResponse, WriteResponse};
pub use range::RangeStream;
pub use tls::{ClientIdentity, TLS_HANDSHAKE_TIMEOUT_MS, TLS_PROBE_MS_MAX};
pub use write::UnansweredWrite;
pub use write_id::SESSION_WRITES_UNANSWERED_MAX;
