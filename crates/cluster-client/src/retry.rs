//! The pure decision core: what the client does after a failed attempt.
//!
//! Nothing here does I/O. [`Failure::from_status`] reads a `tonic::Status`
//! into a [`Failure`]; [`decide`] maps a failure to a [`Decision`];
//! [`backoff_delay`] and [`delay_before`] say how long to wait. The executor
//! in `client.rs` only carries the choice out.

use std::time::Duration;

use tonic::Code;

/// Metadata key carrying the leader's node id (decimal).
pub const LEADER_ID_HEADER: &str = "x-kv-leader-id";
/// Metadata key carrying the leader's `host:port`.
pub const LEADER_ADDR_HEADER: &str = "x-kv-leader-addr";
/// Metadata key set to `1` when the server refused before proposing.
pub const NOT_APPLIED_HEADER: &str = "x-kv-not-applied";
/// Metadata key set to `1` (with FAILED_PRECONDITION) when the write's
/// session is unknown or expired: its outcome cannot be told any more.
pub const SESSION_EXPIRED_HEADER: &str = "x-kv-session-expired";

/// Attempts of one request, at most, whatever the deadline says. A second
/// bound beside the deadline, so a request can never loop forever even with
/// a huge deadline and a server that answers at once.
///
/// Sized so that a default client (backoff capped at 100 ms, 5 s deadline)
/// reaches its deadline first.
pub const ATTEMPTS_MAX: u32 = 256;

/// Leader hints followed in a row without a backoff. Past this, two nodes
/// pointing at each other (stale hints during an election) cost a backoff
/// per hop instead of a busy loop.
pub const HINT_HOPS_WITHOUT_BACKOFF_MAX: u32 = 2;

/// What a request is, as far as retrying goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Put, Delete, BatchPut: served by the leader, carries a write id.
    Write,
    /// A linearizable Get or Range: served by the leader.
    LinearizableRead,
    /// A stale Get or Range: any node serves it.
    StaleRead,
    /// AddLearner, ChangeMembership, RemoveNode: served by the leader.
    Membership,
    /// Initialize: any one node serves it.
    AnyNode,
    /// Status or Digest of one named endpoint: never sent elsewhere.
    Pinned,
}

impl RequestKind {
    /// Whether only the leader serves this kind (so hints are followed).
    pub fn leader_only(self) -> bool {
        matches!(
            self,
            RequestKind::Write | RequestKind::LinearizableRead | RequestKind::Membership
        )
    }
}

/// How an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The connection could not be made: the request was never sent.
    Connect,
    /// The attempt's local deadline passed before an answer.
    Timeout,
    /// The transport broke after the request may have been sent.
    Transport,
    /// The server answered with this status code.
    Status(Code),
}

/// One failed attempt, reduced to what the decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// How it failed.
    pub kind: FailureKind,
    /// The server said `x-kv-not-applied: 1`: refused before proposing.
    pub not_applied: bool,
    /// The server said `x-kv-session-expired: 1`: the write's session is
    /// gone, and with it the record of whether the write was applied.
    pub session_expired: bool,
    /// The leader's `host:port` from `x-kv-leader-addr`, if given.
    pub leader_addr: Option<String>,
    /// The endpoint this attempt went to.
    pub endpoint: String,
    /// A human-readable description (the status message or the error).
    pub message: String,
}

/// Whether a failed write may have been applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Certainly not applied.
    NotApplied,
    /// May or may not have been applied (and may still be, later).
    Unknown,
}

/// Why a request stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// The server refused the input (INVALID_ARGUMENT): never retry.
    Rejected,
    /// The server answered with a status outside the retry contract
    /// (e.g. FAILED_PRECONDITION, NOT_FOUND, INTERNAL): report it as is.
    Status,
    /// The write's session expired: its outcome is unknown for good, and
    /// new writes need a new session.
    SessionExpired,
    /// Retrying is pointless or not allowed: the attempt bound is reached or
    /// the request is pinned to one endpoint.
    GiveUp,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Retry at this address (the hinted leader), at once.
    RetryAt(String),
    /// Back off, then retry at the same endpoint (it is overloaded).
    RetrySame,
    /// Back off, then retry at the next endpoint.
    RetryNext,
    /// Stop and report.
    Fail(FailReason),
}

impl Failure {
    /// Reads a status returned by a tonic call made to `endpoint`.
    ///
    /// A status that tonic made locally from a transport error carries the
    /// error as its source; one sent by the server has no source. A
    /// `tonic::ConnectError` in the chain means the connection was never
    /// made, so the request was never sent.
    pub fn from_status(status: &tonic::Status, endpoint: &str) -> Failure {
        let source = std::error::Error::source(status);
        let mut chain = source;
        let mut connect = false;
        while let Some(error) = chain {
            if error.downcast_ref::<tonic::ConnectError>().is_some() {
                connect = true;
                break;
            }
            chain = error.source();
        }
        let kind = if connect {
            FailureKind::Connect
        } else if source.is_some() && !matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded) {
            FailureKind::Transport
        } else {
            FailureKind::Status(status.code())
        };
        let metadata = status.metadata();
        let text = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Failure {
            kind,
            not_applied: text(NOT_APPLIED_HEADER).as_deref() == Some("1"),
            session_expired: status.code() == Code::FailedPrecondition
                && text(SESSION_EXPIRED_HEADER).as_deref() == Some("1"),
            leader_addr: text(LEADER_ADDR_HEADER).filter(|a| !a.is_empty()),
            endpoint: endpoint.to_owned(),
            message: format!("{}: {}", endpoint, describe(status)),
        }
    }

    /// A local timeout of an attempt to `endpoint` after `after`.
    pub fn timeout(endpoint: &str, after: Duration) -> Failure {
        Failure {
            kind: FailureKind::Timeout,
            not_applied: false,
            session_expired: false,
            leader_addr: None,
            endpoint: endpoint.to_owned(),
            message: format!("{endpoint}: no answer within {} ms", after.as_millis()),
        }
    }

    /// Whether a write that failed like this may have been applied.
    pub fn outcome(&self) -> Outcome {
        match self.kind {
            FailureKind::Connect => Outcome::NotApplied,
            FailureKind::Status(Code::InvalidArgument) => Outcome::NotApplied,
            _ if self.not_applied => Outcome::NotApplied,
            _ => Outcome::Unknown,
        }
    }
}

/// The code, the message, and the innermost cause of a local error (such
/// as "Connection refused"), which tonic's message leaves out.
fn describe(status: &tonic::Status) -> String {
    let mut text = format!("{:?}", status.code());
    if !status.message().is_empty() {
        text.push_str(": ");
        text.push_str(status.message());
    }
    let mut cause = std::error::Error::source(status);
    let mut innermost = None;
    while let Some(error) = cause {
        innermost = Some(error);
        cause = error.source();
    }
    if let Some(innermost) = innermost {
        let detail = innermost.to_string();
        if !text.contains(&detail) {
            text.push_str(": ");
            text.push_str(&detail);
        }
    }
    text
}

/// The decision after the `attempt`-th (from 1) attempt of a `kind` request
/// failed with `failure`.
pub fn decide(kind: RequestKind, failure: &Failure, attempt: u32) -> Decision {
    let decision = match failure.kind {
        FailureKind::Status(Code::InvalidArgument) => return Decision::Fail(FailReason::Rejected),
        _ if failure.session_expired => return Decision::Fail(FailReason::SessionExpired),
        _ if kind == RequestKind::Pinned => return Decision::Fail(FailReason::GiveUp),
        FailureKind::Connect | FailureKind::Timeout | FailureKind::Transport => Decision::RetryNext,
        FailureKind::Status(Code::Unavailable) => match &failure.leader_addr {
            Some(leader) if kind.leader_only() && *leader != failure.endpoint => Decision::RetryAt(leader.clone()),
            _ => Decision::RetryNext,
        },
        FailureKind::Status(Code::ResourceExhausted) => Decision::RetrySame,
        FailureKind::Status(Code::DeadlineExceeded | Code::Cancelled) => Decision::RetryNext,
        FailureKind::Status(_) => return Decision::Fail(FailReason::Status),
    };
    if attempt >= ATTEMPTS_MAX {
        return Decision::Fail(FailReason::GiveUp);
    }
    decision
}

/// Exponential backoff with full jitter: a uniform delay in
/// `[0, min(max, min * 2^(attempt - 1))]`; `unit` is a random number in
/// `[0, 1)`.
pub fn backoff_delay(min: Duration, max: Duration, attempt: u32, unit: f64) -> Duration {
    debug_assert!((0.0..1.0).contains(&unit), "unit {unit} out of [0, 1)");
    let exponent = attempt.saturating_sub(1).min(30);
    let cap = min.saturating_mul(1u32 << exponent).min(max);
    cap.mul_f64(unit.clamp(0.0, 1.0))
}

/// The least time worth giving an attempt. A retry that would start with
/// less than this left before the deadline is not made: it could only time
/// out, and its "no answer within 0 ms" would replace the real error (a
/// refused connection, a missing leader) in what the caller sees.
pub const ATTEMPT_TIME_MIN: Duration = Duration::from_millis(10);

/// Whether a retry after waiting `delay` still gets [`ATTEMPT_TIME_MIN`]
/// of the `left` time before the deadline.
pub fn retry_fits(left: Duration, delay: Duration) -> bool {
    left > delay.saturating_add(ATTEMPT_TIME_MIN)
}

/// How long to wait before carrying out `decision`. `hint_hops` counts the
/// hints followed in a row before this one.
pub fn delay_before(decision: &Decision, hint_hops: u32, backoff: Duration) -> Duration {
    match decision {
        Decision::RetryAt(_) if hint_hops < HINT_HOPS_WITHOUT_BACKOFF_MAX => Duration::ZERO,
        Decision::RetryAt(_) | Decision::RetrySame | Decision::RetryNext => backoff,
        Decision::Fail(_) => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;

    const ALL_KINDS: [RequestKind; 6] = [
        RequestKind::Write,
        RequestKind::LinearizableRead,
        RequestKind::StaleRead,
        RequestKind::Membership,
        RequestKind::AnyNode,
        RequestKind::Pinned,
    ];

    fn failure(kind: FailureKind, not_applied: bool, leader: Option<&str>) -> Failure {
        Failure {
            kind,
            not_applied,
            session_expired: false,
            leader_addr: leader.map(str::to_owned),
            endpoint: "10.0.0.1:7001".to_owned(),
            message: String::new(),
        }
    }

    fn status(code: Code) -> FailureKind {
        FailureKind::Status(code)
    }

    #[test]
    fn an_expired_session_fails_the_write_with_an_unknown_outcome() {
        // The server can no longer tell whether the write was applied: retrying cannot help.
        let mut status = tonic::Status::failed_precondition("session expired");
        status
            .metadata_mut()
            .insert(SESSION_EXPIRED_HEADER, MetadataValue::from_static("1"));
        let f = Failure::from_status(&status, "10.0.0.1:7001");
        assert!(f.session_expired);
        assert_eq!(
            decide(RequestKind::Write, &f, 1),
            Decision::Fail(FailReason::SessionExpired)
        );
        assert_eq!(f.outcome(), Outcome::Unknown);
        let plain = Failure::from_status(&tonic::Status::failed_precondition("other"), "10.0.0.1:7001");
        assert_eq!(
            decide(RequestKind::Write, &plain, 1),
            Decision::Fail(FailReason::Status)
        );
    }

    #[test]
    fn invalid_argument_is_never_retried() {
        // Bad input fails the same way everywhere: retrying cannot help.
        for kind in ALL_KINDS {
            for not_applied in [false, true] {
                let f = failure(status(Code::InvalidArgument), not_applied, Some("10.0.0.2:7002"));
                assert_eq!(decide(kind, &f, 1), Decision::Fail(FailReason::Rejected), "{kind:?}");
                assert_eq!(f.outcome(), Outcome::NotApplied);
            }
        }
    }

    #[test]
    fn unavailable_with_a_hint_goes_to_the_leader_at_once() {
        // Leader-only requests follow the hint; others just move on.
        let f = failure(status(Code::Unavailable), true, Some("10.0.0.2:7002"));
        for kind in [
            RequestKind::Write,
            RequestKind::LinearizableRead,
            RequestKind::Membership,
        ] {
            assert_eq!(
                decide(kind, &f, 1),
                Decision::RetryAt("10.0.0.2:7002".into()),
                "{kind:?}"
            );
        }
        for kind in [RequestKind::StaleRead, RequestKind::AnyNode] {
            assert_eq!(decide(kind, &f, 1), Decision::RetryNext, "{kind:?}");
        }
        assert_eq!(decide(RequestKind::Pinned, &f, 1), Decision::Fail(FailReason::GiveUp));
        assert_eq!(
            delay_before(&Decision::RetryAt("x".into()), 0, Duration::from_millis(9)),
            Duration::ZERO
        );
    }

    #[test]
    fn a_hint_naming_the_node_itself_rotates_instead() {
        // A node that names itself as leader but refuses would loop us.
        let f = failure(status(Code::Unavailable), true, Some("10.0.0.1:7001"));
        assert_eq!(decide(RequestKind::Write, &f, 1), Decision::RetryNext);
    }

    #[test]
    fn unavailable_without_a_hint_rotates() {
        for kind in [
            RequestKind::Write,
            RequestKind::LinearizableRead,
            RequestKind::StaleRead,
            RequestKind::Membership,
        ] {
            for not_applied in [false, true] {
                let f = failure(status(Code::Unavailable), not_applied, None);
                assert_eq!(decide(kind, &f, 3), Decision::RetryNext, "{kind:?}");
            }
        }
    }

    #[test]
    fn unavailable_is_unknown_for_a_write_unless_marked_not_applied() {
        // A leader that stepped down after proposing may still commit.
        assert_eq!(
            failure(status(Code::Unavailable), false, None).outcome(),
            Outcome::Unknown
        );
        assert_eq!(
            failure(status(Code::Unavailable), true, None).outcome(),
            Outcome::NotApplied
        );
        assert_eq!(
            failure(status(Code::Unavailable), false, Some("a:1")).outcome(),
            Outcome::Unknown
        );
    }

    #[test]
    fn resource_exhausted_backs_off_on_the_same_node() {
        let f = failure(status(Code::ResourceExhausted), true, None);
        for kind in [
            RequestKind::Write,
            RequestKind::LinearizableRead,
            RequestKind::StaleRead,
            RequestKind::AnyNode,
        ] {
            assert_eq!(decide(kind, &f, 1), Decision::RetrySame, "{kind:?}");
        }
        assert_eq!(f.outcome(), Outcome::NotApplied);
        let backoff = Duration::from_millis(7);
        assert_eq!(delay_before(&Decision::RetrySame, 0, backoff), backoff);
    }

    #[test]
    fn deadline_and_cancel_are_unknown_and_rotate() {
        for code in [Code::DeadlineExceeded, Code::Cancelled] {
            let f = failure(status(code), false, None);
            assert_eq!(decide(RequestKind::Write, &f, 1), Decision::RetryNext);
            assert_eq!(decide(RequestKind::Pinned, &f, 1), Decision::Fail(FailReason::GiveUp));
            assert_eq!(f.outcome(), Outcome::Unknown);
        }
    }

    #[test]
    fn local_failures_rotate_and_only_connect_is_not_applied() {
        // A refused connection never sent the request; a broken one may have.
        for (kind, outcome) in [
            (FailureKind::Connect, Outcome::NotApplied),
            (FailureKind::Timeout, Outcome::Unknown),
            (FailureKind::Transport, Outcome::Unknown),
        ] {
            let f = failure(kind, false, None);
            assert_eq!(decide(RequestKind::Write, &f, 1), Decision::RetryNext);
            assert_eq!(decide(RequestKind::StaleRead, &f, 1), Decision::RetryNext);
            assert_eq!(decide(RequestKind::Pinned, &f, 1), Decision::Fail(FailReason::GiveUp));
            assert_eq!(f.outcome(), outcome, "{kind:?}");
        }
    }

    #[test]
    fn other_codes_are_reported_as_they_are() {
        for code in [
            Code::Ok,
            Code::Unknown,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unimplemented,
            Code::Internal,
            Code::DataLoss,
            Code::Unauthenticated,
        ] {
            for kind in ALL_KINDS {
                let expected = if kind == RequestKind::Pinned {
                    Decision::Fail(FailReason::GiveUp)
                } else {
                    Decision::Fail(FailReason::Status)
                };
                assert_eq!(
                    decide(kind, &failure(status(code), false, None), 1),
                    expected,
                    "{code:?} {kind:?}"
                );
            }
            assert_eq!(failure(status(code), false, None).outcome(), Outcome::Unknown);
            assert_eq!(failure(status(code), true, None).outcome(), Outcome::NotApplied);
        }
    }

    #[test]
    fn the_attempt_bound_stops_every_retry() {
        // Never loop forever, whatever the deadline.
        for f in [
            failure(FailureKind::Connect, false, None),
            failure(status(Code::Unavailable), true, Some("10.0.0.2:7002")),
            failure(status(Code::ResourceExhausted), true, None),
        ] {
            assert_ne!(
                decide(RequestKind::Write, &f, ATTEMPTS_MAX - 1),
                Decision::Fail(FailReason::GiveUp)
            );
            assert_eq!(
                decide(RequestKind::Write, &f, ATTEMPTS_MAX),
                Decision::Fail(FailReason::GiveUp)
            );
        }
    }

    #[test]
    fn repeated_hints_start_to_back_off() {
        let hint = Decision::RetryAt("a:1".into());
        let backoff = Duration::from_millis(30);
        assert_eq!(
            delay_before(&hint, HINT_HOPS_WITHOUT_BACKOFF_MAX - 1, backoff),
            Duration::ZERO
        );
        assert_eq!(delay_before(&hint, HINT_HOPS_WITHOUT_BACKOFF_MAX, backoff), backoff);
        assert_eq!(delay_before(&Decision::RetryNext, 0, backoff), backoff);
        assert_eq!(
            delay_before(&Decision::Fail(FailReason::GiveUp), 0, backoff),
            Duration::ZERO
        );
    }

    #[test]
    fn backoff_grows_exponentially_and_is_capped() {
        let min = Duration::from_millis(20);
        let max = Duration::from_millis(500);
        let almost_one = 0.999_999;
        assert!(backoff_delay(min, max, 1, almost_one) <= min);
        assert!(backoff_delay(min, max, 2, almost_one) > min);
        assert!(backoff_delay(min, max, 3, almost_one) <= min * 4);
        assert!(backoff_delay(min, max, 3, almost_one) > min * 3);
        for attempt in [6, 10, 40, u32::MAX] {
            assert!(backoff_delay(min, max, attempt, almost_one) <= max);
            assert!(backoff_delay(min, max, attempt, almost_one) > max.mul_f64(0.99));
        }
        assert_eq!(backoff_delay(min, max, 5, 0.0), Duration::ZERO);
        assert_eq!(backoff_delay(min, max, 5, 0.5), Duration::from_millis(160));
    }

    #[test]
    fn statuses_are_read_from_the_server_metadata() {
        let mut s = tonic::Status::unavailable("not the leader");
        s.metadata_mut().insert(LEADER_ID_HEADER, MetadataValue::from(3u64));
        s.metadata_mut()
            .insert(LEADER_ADDR_HEADER, MetadataValue::from_static("127.0.0.1:7003"));
        s.metadata_mut()
            .insert(NOT_APPLIED_HEADER, MetadataValue::from_static("1"));
        let f = Failure::from_status(&s, "127.0.0.1:7001");
        assert_eq!(f.kind, FailureKind::Status(Code::Unavailable));
        assert!(f.not_applied);
        assert_eq!(f.leader_addr.as_deref(), Some("127.0.0.1:7003"));
        assert!(f.message.contains("not the leader"), "{}", f.message);

        let bare = Failure::from_status(&tonic::Status::unavailable("no quorum"), "a:1");
        assert_eq!(bare.kind, FailureKind::Status(Code::Unavailable));
        assert!(!bare.not_applied);
        assert_eq!(bare.leader_addr, None);
    }

    #[test]
    fn connect_errors_are_told_from_broken_transports() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let connect = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
        assert_eq!(connect.code(), Code::Unavailable);
        assert_eq!(Failure::from_status(&connect, "a:1").kind, FailureKind::Connect);

        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let broken = tonic::Status::from_error(Box::new(reset));
        assert_eq!(Failure::from_status(&broken, "a:1").kind, FailureKind::Transport);

        let timeout = Failure::timeout("a:1", Duration::from_millis(5));
        assert_eq!(timeout.kind, FailureKind::Timeout);
        assert_eq!(timeout.outcome(), Outcome::Unknown);
    }

    #[test]
    fn a_retry_needs_time_left_after_its_backoff() {
        // An attempt squeezed against the deadline only times out and hides the real error.
        let ms = Duration::from_millis;
        assert!(retry_fits(ms(100), ms(50)));
        assert!(!retry_fits(ms(55), ms(50)), "5 ms would be left");
        assert!(!retry_fits(ms(50), ms(50)));
        assert!(!retry_fits(ms(0), ms(0)));
        assert!(retry_fits(ms(11), ms(0)));
        assert!(!retry_fits(ms(10), Duration::MAX), "no overflow");
    }
}
