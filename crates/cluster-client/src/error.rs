//! The client's error type.

use std::time::Duration;

pub use crate::retry::Outcome;
use crate::write::UnansweredWrite;

/// A failed request.
///
/// For writes, [`Error::outcome`] says whether the write may have happened.
/// A write whose final error is [`Error::Unknown`] may still be applied
/// later; a write that failed with [`Error::NotApplied`] or
/// [`Error::InvalidArgument`] certainly was not.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server refused the input (INVALID_ARGUMENT); nothing was applied
    /// and a retry would fail the same way.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The write certainly did not happen: every attempt until the deadline
    /// (or the attempt bound) was refused before proposing or never reached
    /// a server.
    #[error("not applied after {attempts} attempts in {} ms: {last}", elapsed.as_millis())]
    NotApplied {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last failure.
        last: String,
    },
    /// The write may or may not have been applied: some attempt timed out,
    /// lost its connection after sending, or reached a leader that stepped
    /// down after proposing. Once one attempt was unknown, the write's final
    /// error is this even if later attempts were refused.
    ///
    /// `write` holds the write itself, still numbered: pass it to
    /// [`crate::Client::retry_write`] to try again as the same write (applied
    /// at most once however often it is tried). While it is held, the
    /// session keeps the write unanswered, and at most
    /// [`crate::SESSION_WRITES_UNANSWERED_MAX`] later writes can start; drop
    /// it to give the write up.
    #[error("outcome unknown after {attempts} attempts in {} ms: {last}", elapsed.as_millis())]
    Unknown {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last failure.
        last: String,
        /// The write, for [`crate::Client::retry_write`] (absent for
        /// requests that are not data writes).
        write: Option<Box<UnansweredWrite>>,
    },
    /// The write's session expired on the server (idle too long or evicted)
    /// before the write was answered: whether an earlier attempt was applied
    /// can no longer be told, and retrying it cannot help. The outcome is
    /// unknown. The client opens a new session for its next writes.
    #[error("outcome unknown, session expired: {last}")]
    SessionExpired {
        /// The server's message.
        last: String,
    },
    /// A read or admin request found no node able to serve it before its
    /// deadline (or the attempt bound).
    #[error("unavailable after {attempts} attempts in {} ms: {last}", elapsed.as_millis())]
    Unavailable {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last failure.
        last: String,
    },
    /// The client was given no endpoints.
    #[error("no endpoints given")]
    NoEndpoints,
    /// An endpoint is not a valid `host:port`.
    #[error("bad endpoint {addr:?}: {reason}")]
    BadEndpoint {
        /// The endpoint as given.
        addr: String,
        /// Why it was refused.
        reason: String,
    },
    /// The TLS settings (`ClientBuilder::tls`) are unusable: a CA or client
    /// certificate that is not PEM, a key that does not parse.
    #[error("TLS settings: {reason}")]
    Tls {
        /// Why they were refused.
        reason: String,
    },
    /// The server sent a reply that breaks the protocol (for example a
    /// Range page whose `next_start` is not past its last key). Nothing is
    /// retried: the node is misbehaving, not unavailable.
    #[error("{request} reply breaks the protocol: {reason}")]
    Protocol {
        /// The request whose reply was wrong.
        request: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The server answered with a status outside the retry contract
    /// (e.g. FAILED_PRECONDITION for a second Initialize, NOT_FOUND,
    /// INTERNAL for a failing disk).
    #[error("{} from the server: {}", .0.code(), .0.message())]
    Other(tonic::Status),
}

impl Error {
    /// Whether a write that failed with this error may have been applied.
    /// Meaningful for writes only; reads apply nothing either way.
    pub fn outcome(&self) -> Outcome {
        match self {
            Error::InvalidArgument(_)
            | Error::NotApplied { .. }
            | Error::NoEndpoints
            | Error::BadEndpoint { .. }
            | Error::Tls { .. } => Outcome::NotApplied,
            // Unavailable is never produced for a write; the rest are not
            // covered by the server's contract, so assume the worst.
            Error::Unknown { .. }
            | Error::SessionExpired { .. }
            | Error::Unavailable { .. }
            | Error::Protocol { .. }
            | Error::Other(_) => Outcome::Unknown,
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
