//! The executor against scripted fake servers on 127.0.0.1: each answer is
//! chosen by the test, so every retry path runs deterministically without a
//! Raft cluster.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_client::{Client, Error, Outcome};
use parking_lot::Mutex;
use proto::kv as api;
use proto::kv::kv_server::{Kv, KvServer};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};

/// One scripted answer.
#[derive(Debug, Clone)]
enum Step {
    Ok,
    Refuse {
        code: Code,
        not_applied: bool,
        hint: Option<String>,
    },
    /// FAILED_PRECONDITION with `x-kv-session-expired: 1`.
    SessionExpired,
    Hang,
}

fn refuse(code: Code, not_applied: bool) -> Step {
    Step::Refuse {
        code,
        not_applied,
        hint: None,
    }
}

/// A KV server that answers from a script, then with `otherwise`.
struct Scripted {
    steps: Mutex<VecDeque<Step>>,
    otherwise: Step,
    /// Write ids of every write received, in order.
    seen: Mutex<Vec<api::WriteId>>,
    calls: Mutex<u32>,
    /// Sessions opened (answered outside the script, ids 77, 78, ...).
    opens: Mutex<u64>,
    /// What every Range answered with `Ok` returns.
    range_reply: Mutex<api::RangeResponse>,
}

impl Scripted {
    fn new(steps: Vec<Step>, otherwise: Step) -> Arc<Scripted> {
        Arc::new(Scripted {
            steps: Mutex::new(steps.into()),
            otherwise,
            seen: Mutex::new(Vec::new()),
            calls: Mutex::new(0),
            opens: Mutex::new(0),
            range_reply: Mutex::new(api::RangeResponse::default()),
        })
    }

    fn calls(&self) -> u32 {
        *self.calls.lock()
    }

    async fn answer<T>(&self, write_id: Option<api::WriteId>, reply: T) -> Result<Response<T>, Status> {
        *self.calls.lock() += 1;
        if let Some(id) = write_id {
            self.seen.lock().push(id);
        }
        let step = self.steps.lock().pop_front().unwrap_or_else(|| self.otherwise.clone());
        match step {
            Step::Ok => Ok(Response::new(reply)),
            Step::Refuse {
                code,
                not_applied,
                hint,
            } => {
                let mut status = Status::new(code, "scripted refusal");
                if not_applied {
                    status
                        .metadata_mut()
                        .insert("x-kv-not-applied", MetadataValue::from_static("1"));
                }
                if let Some(hint) = hint {
                    status
                        .metadata_mut()
                        .insert("x-kv-leader-id", MetadataValue::from_static("2"));
                    let value = MetadataValue::try_from(hint.as_str()).expect("ascii address");
                    status.metadata_mut().insert("x-kv-leader-addr", value);
                }
                Err(status)
            }
            Step::SessionExpired => {
                let mut status = Status::failed_precondition("scripted: session expired");
                status
                    .metadata_mut()
                    .insert("x-kv-session-expired", MetadataValue::from_static("1"));
                Err(status)
            }
            Step::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Err(Status::internal("unreachable"))
            }
        }
    }
}

fn written(index: u64) -> api::WriteResponse {
    api::WriteResponse {
        applied_index: index,
        duplicate: false,
    }
}

struct Shared(Arc<Scripted>);

#[tonic::async_trait]
impl Kv for Shared {
    async fn put(&self, request: Request<api::PutRequest>) -> Result<Response<api::WriteResponse>, Status> {
        self.0.answer(request.into_inner().write_id, written(7)).await
    }
    async fn get(&self, _request: Request<api::GetRequest>) -> Result<Response<api::GetResponse>, Status> {
        let reply = api::GetResponse {
            found: true,
            value: "v".into(),
        };
        self.0.answer(None, reply).await
    }
    async fn range(&self, _request: Request<api::RangeRequest>) -> Result<Response<api::RangeResponse>, Status> {
        let reply = self.0.range_reply.lock().clone();
        self.0.answer(None, reply).await
    }
    async fn batch_put(&self, request: Request<api::BatchPutRequest>) -> Result<Response<api::WriteResponse>, Status> {
        self.0.answer(request.into_inner().write_id, written(8)).await
    }
    async fn delete(&self, request: Request<api::DeleteRequest>) -> Result<Response<api::WriteResponse>, Status> {
        self.0.answer(request.into_inner().write_id, written(9)).await
    }
    async fn open_session(
        &self,
        _request: Request<api::OpenSessionRequest>,
    ) -> Result<Response<api::OpenSessionResponse>, Status> {
        let mut opens = self.0.opens.lock();
        *opens += 1;
        Ok(Response::new(api::OpenSessionResponse { client_id: 76 + *opens }))
    }
}

/// Serves `script` on a fresh loopback port; returns its address.
async fn serve(script: &Arc<Scripted>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let service = KvServer::new(Shared(Arc::clone(script)));
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    addr
}

fn fast_client(endpoints: &[&str]) -> Client {
    Client::builder(endpoints.iter().copied())
        .request_timeout(Duration::from_millis(1500))
        .attempt_timeout(Duration::from_millis(300))
        .backoff_min(Duration::from_millis(1))
        .backoff_max(Duration::from_millis(10))
        .build()
        .expect("client")
}

#[tokio::test]
async fn a_follower_hint_leads_to_the_leader_which_is_then_cached() {
    // Given only a follower, the client reaches the leader in one hop.
    let leader = Scripted::new(vec![], Step::Ok);
    let leader_addr = serve(&leader).await;
    let follower = Scripted::new(
        vec![],
        Step::Refuse {
            code: Code::Unavailable,
            not_applied: true,
            hint: Some(leader_addr.clone()),
        },
    );
    let follower_addr = serve(&follower).await;
    let client = fast_client(&[&follower_addr]);
    let reply = client.put("k", "v").await.expect("put");
    assert_eq!(reply.applied_index, 7);
    assert_eq!(client.cached_leader().as_deref(), Some(leader_addr.as_str()));
    assert!(
        client.endpoints().contains(&leader_addr),
        "the hinted leader joins the list"
    );
    client.put("k", "v2").await.expect("second put");
    assert_eq!(
        (follower.calls(), leader.calls()),
        (1, 2),
        "the second put goes straight to the leader"
    );
}

#[tokio::test]
async fn every_retry_of_a_write_carries_the_same_sequence() {
    // Exactly-once needs the server to see one (client_id, sequence) per write.
    let node = Scripted::new(
        vec![refuse(Code::Unavailable, false), refuse(Code::ResourceExhausted, true)],
        Step::Ok,
    );
    let addr = serve(&node).await;
    let client = fast_client(&[&addr]);
    client.put("a", "1").await.expect("put after retries");
    client.delete("a").await.expect("delete");
    let seen = node.seen.lock().clone();
    assert_eq!(seen.len(), 4);
    assert!(seen
        .iter()
        .all(|id| Some(id.client_id) == client.client_id() && id.client_id != 0));
    assert_eq!(seen.iter().map(|id| id.sequence).collect::<Vec<_>>(), vec![1, 1, 1, 2]);
    assert_eq!(seen[3].first_unanswered, 2, "the put was answered before the delete");
}

#[tokio::test]
async fn once_an_attempt_is_unknown_the_write_stays_unknown() {
    // A later clean refusal does not prove the first attempt was not applied.
    let node = Scripted::new(vec![refuse(Code::Unavailable, false)], refuse(Code::Unavailable, true));
    let addr = serve(&node).await;
    let error = fast_client(&[&addr]).put("k", "v").await.expect_err("never succeeds");
    assert!(matches!(error, Error::Unknown { .. }), "{error:?}");
    assert_eq!(error.outcome(), Outcome::Unknown);
}

#[tokio::test]
async fn refusals_before_proposing_end_as_not_applied() {
    let node = Scripted::new(vec![], refuse(Code::Unavailable, true));
    let addr = serve(&node).await;
    let started = Instant::now();
    let error = fast_client(&[&addr])
        .batch_put(vec![("k".into(), "v".into())])
        .await
        .expect_err("refused");
    assert!(matches!(error, Error::NotApplied { .. }), "{error:?}");
    assert_eq!(error.outcome(), Outcome::NotApplied);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the deadline bounds the retries"
    );
    assert!(node.calls() > 1, "it retried");
}

#[tokio::test]
async fn invalid_argument_is_returned_after_one_attempt() {
    let node = Scripted::new(vec![], refuse(Code::InvalidArgument, true));
    let addr = serve(&node).await;
    let error = fast_client(&[&addr]).put("k", "v").await.expect_err("rejected");
    assert!(matches!(error, Error::InvalidArgument(_)), "{error:?}");
    assert_eq!(node.calls(), 1);
}

#[tokio::test]
async fn statuses_outside_the_contract_are_reported_unretried() {
    let node = Scripted::new(vec![], refuse(Code::FailedPrecondition, false));
    let addr = serve(&node).await;
    let error = fast_client(&[&addr]).get("k").await.expect_err("fails");
    assert!(
        matches!(error, Error::Other(ref s) if s.code() == Code::FailedPrecondition),
        "{error:?}"
    );
    assert_eq!(node.calls(), 1);
}

#[tokio::test]
async fn a_hanging_node_costs_one_attempt_timeout_then_the_next_node_serves() {
    let hanging = Scripted::new(vec![], Step::Hang);
    let healthy = Scripted::new(vec![], Step::Ok);
    let (hanging_addr, healthy_addr) = (serve(&hanging).await, serve(&healthy).await);
    let client = fast_client(&[&hanging_addr, &healthy_addr]);
    // Whichever node the client starts at, the read ends at the healthy one.
    let started = Instant::now();
    assert_eq!(client.get("k").await.expect("get").as_deref(), Some(&b"v"[..]));
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_write_to_a_hanging_cluster_is_unknown_within_the_deadline() {
    let node = Scripted::new(vec![], Step::Hang);
    let addr = serve(&node).await;
    let started = Instant::now();
    let error = fast_client(&[&addr]).put("k", "v").await.expect_err("times out");
    let elapsed = started.elapsed();
    assert!(matches!(error, Error::Unknown { .. }), "{error:?}");
    assert!(
        elapsed < Duration::from_millis(2000),
        "deadline 1500 ms, took {elapsed:?}"
    );
}

#[tokio::test]
async fn stale_reads_rotate_past_a_dead_endpoint() {
    let healthy = Scripted::new(vec![], Step::Ok);
    let healthy_addr = serve(&healthy).await;
    let client = fast_client(&["127.0.0.1:1", &healthy_addr]);
    for _ in 0..4 {
        let value = client
            .get_with("k", cluster_client::Consistency::Stale)
            .await
            .expect("stale get");
        assert_eq!(value.as_deref(), Some(&b"v"[..]));
    }
}

#[tokio::test]
async fn a_write_to_nothing_is_not_applied() {
    let client = fast_client(&["127.0.0.1:1"]);
    let error = client.put("k", "v").await.expect_err("nothing listens");
    assert!(matches!(error, Error::NotApplied { .. }), "{error:?}");
    assert!(error.to_string().contains("Connection refused"), "{error}");
}

#[tokio::test]
async fn an_expired_session_fails_the_write_and_the_next_write_opens_a_new_one() {
    // The server cannot tell the write's outcome any more: never report success, never retry it.
    let script = Scripted::new(vec![Step::SessionExpired], Step::Ok);
    let addr = serve(&script).await;
    let client = Client::connect([addr]).expect("client");
    let error = client.put("k", "v").await.expect_err("the session expired");
    assert!(matches!(error, Error::SessionExpired { .. }), "{error:?}");
    assert_eq!(error.outcome(), Outcome::Unknown);
    assert_eq!(script.calls(), 1, "not retried");
    client.put("k", "v").await.expect("a new session");
    let seen = script.seen.lock().clone();
    assert_eq!(seen.iter().map(|id| id.client_id).collect::<Vec<_>>(), vec![77, 78]);
    assert_eq!(seen[1].sequence, 1, "numbering starts again in the new session");
}

#[tokio::test]
async fn a_write_with_an_unknown_outcome_can_be_retried_later_as_the_same_write() {
    // Exactly-once beyond one call's deadline: the retry carries the same session and sequence.
    let script = Scripted::new(vec![Step::Hang], Step::Ok);
    let addr = serve(&script).await;
    let client = Client::builder([addr])
        .request_timeout(Duration::from_millis(300))
        .attempt_timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    let error = client.put("k", "v").await.expect_err("the attempt hangs");
    let Error::Unknown { write: Some(write), .. } = error else {
        panic!("expected an unknown outcome with the write: {error:?}");
    };
    let (client_id, sequence) = (write.client_id(), write.sequence());
    client.put("other", "v").await.expect("a later write");
    client.retry_write(*write).await.expect("the retry");
    let seen = script.seen.lock().clone();
    let last = seen.last().expect("writes seen");
    assert_eq!((last.client_id, last.sequence), (client_id, sequence));
    assert_eq!(last.first_unanswered, sequence, "still unanswered while held");
}

#[tokio::test]
async fn a_range_page_that_does_not_advance_is_a_protocol_error_not_a_panic() {
    // The client must not trust the server: a next_start at the last key
    // would repeat pairs forever; the stream reports it once and ends.
    use tokio_stream::StreamExt;
    let node = Scripted::new(vec![], Step::Ok);
    *node.range_reply.lock() = api::RangeResponse {
        pairs: vec![
            api::KeyValue {
                key: "a".into(),
                value: "1".into(),
            },
            api::KeyValue {
                key: "b".into(),
                value: "2".into(),
            },
        ],
        next_start: "b".into(),
    };
    let addr = serve(&node).await;
    let client = fast_client(&[&addr]);
    let results: Vec<_> = client.range("", "").collect().await;
    assert_eq!(results.len(), 1, "one error, then the stream ends: {results:?}");
    let error = results
        .into_iter()
        .next()
        .expect("one item")
        .expect_err("a protocol error");
    assert!(matches!(error, Error::Protocol { request: "Range", .. }), "{error:?}");
    assert_eq!(node.calls(), 1, "a broken reply is not retried");
}
