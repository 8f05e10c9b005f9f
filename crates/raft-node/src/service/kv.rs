//! The public `kv.v1.KV` service.

use std::sync::Arc;

use bytes::Bytes;
use proto::kv as api;
use proto::raft as pb;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use super::proposer::{Proposer, ProposerHooks, ProposerOptions};
use super::read_barrier::ReadBarrier;
use super::status;
use crate::config::Limits;
use crate::state_machine::{Engine, PageBounds};
use crate::types::Raft;

/// Write payloads up to this many bytes are copied out of their request's
/// receive buffer before they are proposed. tonic decodes `bytes` fields as
/// slices of a per-request buffer of at least 8 KiB, and a proposed command
/// lives on in the Raft log's memory window: a 100-byte put would pin its
/// whole buffer, about 50 times its size (this made the leader's memory grow
/// by ~5 KB per put). A larger payload fills most of its buffer, so it is
/// kept as it is rather than copied.
const DETACH_PAYLOAD_BYTES_MAX: usize = 64 << 10;

/// Copies a small write's keys and values into allocations of their own;
/// see [`DETACH_PAYLOAD_BYTES_MAX`].
fn detach_small_payload(op: &mut pb::command::Op) {
    let payload_bytes = match &*op {
        pb::command::Op::Put(put) => put.key.len() + put.value.len(),
        pb::command::Op::Delete(delete) => delete.key.len(),
        pb::command::Op::BatchPut(batch) => batch.pairs.iter().map(|p| p.key.len() + p.value.len()).sum(),
        _ => return,
    };
    if payload_bytes > DETACH_PAYLOAD_BYTES_MAX {
        return;
    }
    let detach = |bytes: &mut Bytes| *bytes = Bytes::copy_from_slice(bytes);
    match op {
        pb::command::Op::Put(put) => {
            detach(&mut put.key);
            detach(&mut put.value);
        }
        pb::command::Op::Delete(delete) => detach(&mut delete.key),
        pb::command::Op::BatchPut(batch) => {
            for pair in &mut batch.pairs {
                detach(&mut pair.key);
                detach(&mut pair.value);
            }
        }
        _ => {}
    }
}

/// Serves reads and writes for one node.
pub struct KvService {
    raft: Raft,
    engine: Engine,
    limits: Limits,
    reads: Arc<Semaphore>,
    proposer: Proposer,
    read_barrier: Arc<ReadBarrier>,
}

impl KvService {
    /// A service proposing through `raft` and reading from `engine`. Must
    /// be created inside a tokio runtime (it starts the write batcher).
    pub fn new(raft: Raft, engine: Engine, limits: Limits) -> Self {
        KvService::with_hooks(raft, engine, limits, ProposerHooks::default())
    }

    /// [`KvService::new`], its write proposer closed by and counting into
    /// `hooks`.
    pub(crate) fn with_hooks(raft: Raft, engine: Engine, limits: Limits, hooks: ProposerHooks) -> Self {
        let proposer_options = ProposerOptions {
            proposals_max: limits.proposals_in_flight_max,
            proposal_bytes_max: limits.proposal_bytes_in_flight_max,
            ..ProposerOptions::default()
        };
        KvService {
            read_barrier: ReadBarrier::new(raft.clone()),
            proposer: Proposer::start_with(raft.clone(), proposer_options, hooks),
            reads: Arc::new(Semaphore::new(limits.reads_in_flight_max.max(1))),
            raft,
            engine,
            limits,
        }
    }

    /// Runs an engine read on the blocking pool, within the bound on reads
    /// in flight: engine reads may wait for the disk, and the async workers
    /// also carry heartbeats.
    async fn read_engine<T: Send + 'static>(
        &self,
        read: impl FnOnce(Engine) -> storage::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let Ok(permit) = Arc::clone(&self.reads).try_acquire_owned() else {
            return Err(status::overloaded(
                "reads in flight",
                "reads_in_flight_max",
                self.limits.reads_in_flight_max,
            ));
        };
        let engine = self.engine.clone();
        let result = tokio::task::spawn_blocking(move || {
            let result = read(engine);
            drop(permit);
            result
        })
        .await
        .map_err(|e| Status::internal(format!("engine read task failed: {e}")))?;
        result.map_err(|e| status::from_storage(&e))
    }

    fn check_write_id(write_id: Option<&api::WriteId>) -> Result<(), Status> {
        let Some(id) = write_id.filter(|id| id.client_id != 0) else {
            return Ok(());
        };
        if id.sequence == 0 || id.first_unanswered == 0 || id.first_unanswered > id.sequence {
            return Err(Status::invalid_argument(format!(
                "write id needs 1 <= first_unanswered <= sequence (got first_unanswered {} and sequence {})",
                id.first_unanswered, id.sequence
            )));
        }
        Ok(())
    }

    fn check_key(&self, key: &[u8]) -> Result<(), Status> {
        if key.is_empty() {
            return Err(Status::invalid_argument("key is empty"));
        }
        if key.len() > self.limits.key_bytes_max {
            return Err(Status::invalid_argument(format!(
                "key of {} bytes exceeds key_bytes_max ({})",
                key.len(),
                self.limits.key_bytes_max
            )));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), Status> {
        if value.len() > self.limits.value_bytes_max {
            return Err(Status::invalid_argument(format!(
                "value of {} bytes exceeds value_bytes_max ({})",
                value.len(),
                self.limits.value_bytes_max
            )));
        }
        Ok(())
    }

    /// Proposes `op` through Raft and waits until it is applied.
    async fn propose(
        &self,
        op: pb::command::Op,
        write_id: Option<api::WriteId>,
    ) -> Result<Response<api::WriteResponse>, Status> {
        Self::check_write_id(write_id.as_ref())?;
        let result = self.propose_command(op, write_id.unwrap_or_default()).await?;
        Ok(Response::new(api::WriteResponse {
            applied_index: result.applied_index,
            duplicate: result.duplicate,
        }))
    }

    /// Proposes one command and waits for its result; a command the state
    /// machine refused becomes its status.
    async fn propose_command(
        &self,
        mut op: pb::command::Op,
        write_id: api::WriteId,
    ) -> Result<pb::CommandResult, Status> {
        // A node that knows it is not the leader refuses before proposing,
        // so the client learns the write certainly did not happen.
        // Borrowed, not cloned: this runs on every write, and the leader's
        // metrics hold a per-follower replication map.
        let refusal = {
            let receiver = self.raft.metrics();
            let metrics = receiver.borrow();
            (metrics.state != openraft::ServerState::Leader).then(|| openraft::error::ForwardToLeader {
                leader_id: metrics.current_leader,
                leader_node: metrics
                    .current_leader
                    .and_then(|id| metrics.membership_config.membership().get_node(&id).cloned()),
            })
        };
        if let Some(forward) = refusal {
            return Err(status::not_applied(status::not_leader(&forward)));
        }
        detach_small_payload(&mut op);
        let command = pb::Command {
            op: Some(op),
            client_id: write_id.client_id,
            sequence: write_id.sequence,
            first_unanswered: write_id.first_unanswered,
            proposed_at_ms: 0, // stamped by the proposer
        };
        let result = self.proposer.propose(command).await?;
        match status::from_refusal(result.refusal()) {
            Some(refused) => Err(refused),
            None => Ok(result),
        }
    }

    /// For a linearizable read: confirms leadership and waits until this
    /// node has applied everything committed before the read began.
    async fn read_barrier(&self, consistency: i32) -> Result<(), Status> {
        match api::Consistency::try_from(consistency) {
            Ok(api::Consistency::Stale) => Ok(()),
            Ok(api::Consistency::Linearizable) => self.read_barrier.wait().await,
            Err(_) => Err(Status::invalid_argument(format!("unknown consistency {consistency}"))),
        }
    }
}

#[tonic::async_trait]
impl api::kv_server::Kv for KvService {
    async fn put(&self, request: Request<api::PutRequest>) -> Result<Response<api::WriteResponse>, Status> {
        let request = request.into_inner();
        self.check_key(&request.key)?;
        self.check_value(&request.value)?;
        let op = pb::command::Op::Put(pb::Put {
            key: request.key,
            value: request.value,
        });
        self.propose(op, request.write_id).await
    }

    async fn get(&self, request: Request<api::GetRequest>) -> Result<Response<api::GetResponse>, Status> {
        let request = request.into_inner();
        self.check_key(&request.key)?;
        self.read_barrier(request.consistency).await?;
        let key = request.key;
        let value = self.read_engine(move |engine| engine.get(&key)).await?;
        Ok(Response::new(api::GetResponse {
            found: value.is_some(),
            value: value.unwrap_or_default(),
        }))
    }

    async fn range(&self, request: Request<api::RangeRequest>) -> Result<Response<api::RangeResponse>, Status> {
        let request = request.into_inner();
        if request.limit > self.limits.range_limit_max {
            return Err(Status::invalid_argument(format!(
                "limit {} exceeds range_limit_max ({})",
                request.limit, self.limits.range_limit_max
            )));
        }
        if !request.end.is_empty() && request.end <= request.start {
            return Err(Status::invalid_argument("end must be empty or greater than start"));
        }
        let limit = match request.limit {
            0 => self.limits.range_limit_default,
            n => n,
        };
        self.read_barrier(request.consistency).await?;
        let bounds = PageBounds {
            pairs_max: limit as usize,
            bytes_max: self.limits.response_bytes_max,
            steps_max: self.limits.range_scan_steps_max,
        };
        let (start, end) = (request.start, request.end);
        let page = self
            .read_engine(move |engine| engine.range(&start, &end, bounds))
            .await?;
        Ok(Response::new(api::RangeResponse {
            pairs: page
                .pairs
                .into_iter()
                .map(|(key, value)| api::KeyValue { key, value })
                .collect(),
            next_start: page.next_start.unwrap_or_default(),
        }))
    }

    async fn batch_put(&self, request: Request<api::BatchPutRequest>) -> Result<Response<api::WriteResponse>, Status> {
        let request = request.into_inner();
        if request.pairs.is_empty() {
            return Err(Status::invalid_argument("batch is empty"));
        }
        if request.pairs.len() > self.limits.batch_pairs_max {
            return Err(Status::invalid_argument(format!(
                "batch of {} pairs exceeds batch_pairs_max ({})",
                request.pairs.len(),
                self.limits.batch_pairs_max
            )));
        }
        let mut bytes = 0;
        for pair in &request.pairs {
            self.check_key(&pair.key)?;
            self.check_value(&pair.value)?;
            bytes += pair.key.len() + pair.value.len();
        }
        if bytes > self.limits.batch_bytes_max {
            return Err(Status::invalid_argument(format!(
                "batch of {bytes} bytes exceeds batch_bytes_max ({})",
                self.limits.batch_bytes_max
            )));
        }
        let pairs = request
            .pairs
            .into_iter()
            .map(|p| pb::Put {
                key: p.key,
                value: p.value,
            })
            .collect();
        self.propose(pb::command::Op::BatchPut(pb::BatchPut { pairs }), request.write_id)
            .await
    }

    async fn delete(&self, request: Request<api::DeleteRequest>) -> Result<Response<api::WriteResponse>, Status> {
        let request = request.into_inner();
        self.check_key(&request.key)?;
        self.propose(
            pb::command::Op::Delete(pb::Delete { key: request.key }),
            request.write_id,
        )
        .await
    }

    async fn open_session(
        &self,
        _request: Request<api::OpenSessionRequest>,
    ) -> Result<Response<api::OpenSessionResponse>, Status> {
        let op = pb::command::Op::OpenSession(pb::OpenSession {});
        let result = self.propose_command(op, api::WriteId::default()).await?;
        Ok(Response::new(api::OpenSessionResponse {
            client_id: result.opened_client_id,
        }))
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn a_small_write_no_longer_pins_its_request_buffer() {
        // A decoded put's value is a slice of the whole receive buffer; the
        // proposed command must hold only its own bytes.
        let request = api::PutRequest {
            key: Bytes::from_static(b"key"),
            value: Bytes::from(vec![7u8; 100]),
            write_id: None,
        };
        let mut buffer = request.encode_to_vec();
        buffer.resize(8 << 10, 0); // the rest of an 8 KiB receive buffer
        let buffer = Bytes::from(buffer);
        let len = request.encoded_len();
        let decoded = api::PutRequest::decode(buffer.slice(..len)).expect("decodes");
        let in_buffer = |b: &Bytes| buffer.as_ptr_range().contains(&b.as_ptr());
        assert!(in_buffer(&decoded.value), "prost slices the buffer");
        let mut op = pb::command::Op::Put(pb::Put {
            key: decoded.key,
            value: decoded.value,
        });
        detach_small_payload(&mut op);
        let pb::command::Op::Put(put) = op else {
            unreachable!("still a put")
        };
        assert!(!in_buffer(&put.value) && !in_buffer(&put.key));
        assert_eq!(put.value, vec![7u8; 100]);
    }
}
