//! Proposal batching: concurrent client writes become one Raft entry.
//!
//! Every Raft entry costs the leader's single core task the same bookkeeping
//! (an append, a flush callback, replication progress, an apply, a
//! response), whatever it carries. So writes are queued here and a batcher
//! task proposes them together as one `Commands` entry, applied in order
//! with a result per command.
//!
//! A batch is proposed as soon as a slot is free (at most
//! [`ProposerOptions::batches_in_flight`] batches are between proposal and
//! apply). An idle leader therefore proposes a lone write at once, with no
//! added wait; a busy one gathers everything that queued while its slots
//! were taken. Batching never holds a write back to wait for company.
//!
//! Bounded under overload: a proposal holds a share of
//! [`ProposerOptions::proposals_max`] and of
//! [`ProposerOptions::proposal_bytes_max`] from the moment it is queued
//! until it is answered or dropped, whether or not its caller still waits;
//! when either is used up a new write is refused with `RESOURCE_EXHAUSTED`.
//! A proposal whose caller has gone (deadline, cancel) before its batch is
//! formed is dropped unproposed: nobody would learn its outcome, and under
//! overload with retries it would only add load.
//!
//! Closed at once when the node starts a graceful stop (see
//! [`ProposerHooks::draining`]): from then on every write not yet proposed,
//! queued or new, is refused with `UNAVAILABLE`, `x-kv-not-applied` and
//! the leader hint, as the service refuses new requests. A write proposed
//! after the leader started handing over would lengthen its log past the
//! successor's, make the successor lose the election and cost the cluster
//! an election timeout.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prost::Message;
use proto::raft as pb;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use super::status;
use crate::metrics::{InFlight, ProposalMetrics};
use crate::types::{LogCommand, Raft};

/// How writes are batched.
#[derive(Debug, Clone)]
pub struct ProposerOptions {
    /// Batches proposed but not yet applied, at most. Default 2.
    pub batches_in_flight: usize,
    /// Commands in one batch, at most. Default 1024.
    pub batch_commands_max: usize,
    /// Encoded bytes of one batch: no command joins a batch that already
    /// holds this many (a larger command goes alone). Default 1 MiB.
    pub batch_bytes_max: usize,
    /// Writes queued or proposed but not yet answered, at most. Default
    /// 4096. Bounds the leader's memory and the queueing delay a write sees.
    pub proposals_max: usize,
    /// Encoded bytes of the writes queued or proposed but not yet answered,
    /// at most. Default 64 MiB (four largest batches).
    pub proposal_bytes_max: usize,
}

impl Default for ProposerOptions {
    fn default() -> Self {
        ProposerOptions {
            batches_in_flight: 2,
            batch_commands_max: 1024,
            batch_bytes_max: 1 << 20,
            proposals_max: 4096,
            proposal_bytes_max: 64 << 20,
        }
    }
}

/// What the proposer learns from the node around it. Default: never
/// closed, nothing counted.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProposerHooks {
    /// Turns `true` when the node starts a graceful stop; the proposer then
    /// refuses every write it has not proposed yet.
    pub draining: Option<watch::Receiver<bool>>,
    /// Where to count writes in flight, batch sizes and latency.
    pub metrics: Option<ProposalMetrics>,
}

/// One write waiting to be proposed.
struct Proposal {
    command: pb::Command,
    reply: oneshot::Sender<Result<pb::CommandResult, Status>>,
    /// Its share of the bounds (and its place in the in-flight count),
    /// released when the proposal is dropped.
    _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit, Option<InFlight>),
}

impl Proposal {
    /// Answers this unproposed write: the node is shutting down.
    fn refuse_draining(self, raft: &Raft) {
        let _ = self.reply.send(Err(status::shutting_down(&status::leader_hint(raft))));
    }
}

/// The handle the service proposes through. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    /// Unbounded as a channel, bounded by the two semaphores below.
    queue: mpsc::UnboundedSender<Proposal>,
    proposals: Arc<Semaphore>,
    proposal_bytes: Arc<Semaphore>,
    options: Arc<ProposerOptions>,
    hooks: ProposerHooks,
    /// For the leader hint of a refusal during a graceful stop.
    raft: Raft,
}

impl Proposer {
    /// Starts the batcher task proposing through `raft`. The task ends when
    /// every handle is dropped. Must run inside a tokio runtime.
    pub fn start(raft: Raft, options: ProposerOptions) -> Proposer {
        Proposer::start_with(raft, options, ProposerHooks::default())
    }

    /// [`Proposer::start`], closed by and counting into `hooks`.
    pub(crate) fn start_with(raft: Raft, options: ProposerOptions, hooks: ProposerHooks) -> Proposer {
        let (queue, queued) = mpsc::unbounded_channel();
        let proposer = Proposer {
            queue,
            proposals: Arc::new(Semaphore::new(options.proposals_max.max(1))),
            proposal_bytes: Arc::new(Semaphore::new(options.proposal_bytes_max.clamp(1, u32::MAX as usize))),
            options: Arc::new(options.clone()),
            hooks: hooks.clone(),
            raft: raft.clone(),
        };
        tokio::spawn(batch_and_propose(raft, options, hooks, queued));
        proposer
    }

    /// Whether the node has started a graceful stop.
    fn draining(&self) -> bool {
        self.hooks.draining.as_ref().is_some_and(|draining| *draining.borrow())
    }

    /// Proposes `command` and waits until it is applied, returning its
    /// result, or refuses it at once with `RESOURCE_EXHAUSTED` when the
    /// writes in flight are at their bounds.
    pub async fn propose(&self, command: pb::Command) -> Result<pb::CommandResult, Status> {
        if self.draining() {
            return Err(status::shutting_down(&status::leader_hint(&self.raft)));
        }
        let options = &self.options;
        let Ok(count) = Arc::clone(&self.proposals).try_acquire_owned() else {
            return Err(status::overloaded(
                "writes in flight",
                "proposals_in_flight_max",
                options.proposals_max,
            ));
        };
        // A command larger than the whole budget takes all of it (it then
        // waits for an idle leader rather than being refused forever).
        let size = command
            .encoded_len()
            .clamp(1, options.proposal_bytes_max.clamp(1, u32::MAX as usize));
        let Ok(bytes) = Arc::clone(&self.proposal_bytes).try_acquire_many_owned(size as u32) else {
            return Err(status::overloaded(
                "bytes of writes in flight",
                "proposal_bytes_in_flight_max",
                options.proposal_bytes_max,
            ));
        };
        let (reply, result) = oneshot::channel();
        let arrived = Instant::now();
        let proposal = Proposal {
            command,
            reply,
            _permits: (
                count,
                bytes,
                self.hooks.metrics.as_ref().map(ProposalMetrics::in_flight),
            ),
        };
        self.queue
            .send(proposal)
            .map_err(|_| status::not_applied(Status::unavailable("the node is shutting down")))?;
        let answer = result
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("the node stopped before the write was applied")));
        if let Some(metrics) = &self.hooks.metrics {
            metrics.observe_answer(arrived);
        }
        answer
    }
}

/// The batcher: takes a slot, then everything queued (up to the batch
/// limits), and proposes it on a task of its own.
async fn batch_and_propose(
    raft: Raft,
    options: ProposerOptions,
    hooks: ProposerHooks,
    mut proposals: mpsc::UnboundedReceiver<Proposal>,
) {
    let slots = Arc::new(Semaphore::new(options.batches_in_flight.max(1)));
    let mut draining = hooks.draining.clone();
    let is_draining = |draining: &Option<watch::Receiver<bool>>| draining.as_ref().is_some_and(|d| *d.borrow());
    // A proposal that did not fit the previous batch starts the next one.
    let mut carried: Option<Proposal> = None;
    loop {
        let first = match carried.take() {
            Some(proposal) => proposal,
            None => match proposals.recv().await {
                Some(proposal) => proposal,
                None => return,
            },
        };
        if is_draining(&draining) {
            first.refuse_draining(&raft);
            continue;
        }
        // Waiting for a slot ends early when the drain starts: the write is
        // refused at once rather than proposed when a slot frees.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot,
            () = drain_started(&mut draining) => {
                first.refuse_draining(&raft);
                continue;
            }
        };
        let Ok(slot) = slot else {
            return; // never closed
        };
        if is_draining(&draining) {
            first.refuse_draining(&raft);
            continue; // the drain started as the slot came free
        }
        if first.reply.is_closed() {
            continue; // its caller left while it waited for the slot
        }
        // Writes that queued while the slot was awaited join this batch.
        let mut bytes = first.command.encoded_len();
        let mut batch = vec![first];
        while batch.len() < options.batch_commands_max && bytes < options.batch_bytes_max {
            let Ok(next) = proposals.try_recv() else { break };
            if next.reply.is_closed() {
                continue; // dropped unproposed: its permits return now
            }
            let next_bytes = next.command.encoded_len();
            if bytes + next_bytes > options.batch_bytes_max {
                carried = Some(next);
                break;
            }
            bytes += next_bytes;
            batch.push(next);
        }
        if let Some(metrics) = &hooks.metrics {
            metrics.observe_batch(batch.len());
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            propose_batch(&raft, batch).await;
            drop(slot);
        });
    }
}

/// Resolves once `draining` turns `true`; never without a drain signal (or
/// once its sender is gone: a node that is dropped does not drain).
async fn drain_started(draining: &mut Option<watch::Receiver<bool>>) {
    if let Some(draining) = draining {
        if draining.wait_for(|draining| *draining).await.is_ok() {
            return;
        }
    }
    std::future::pending::<()>().await
}

/// The leader's wall clock in ms, stamped on each proposed entry: the
/// state machine's session clock is the largest stamp applied.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// Proposes `batch` as one entry and answers each of its writes.
async fn propose_batch(raft: &Raft, mut batch: Vec<Proposal>) {
    if batch.len() == 1 {
        let Some(Proposal {
            mut command,
            reply,
            _permits,
        }) = batch.pop()
        else {
            return;
        };
        command.proposed_at_ms = now_ms();
        let encoded = LogCommand::encode(&command);
        // Only the encoding travels on: the command's buffers (a request's,
        // for a large value) are freed now, not once the write is applied.
        drop(command);
        let result = raft
            .client_write(encoded)
            .await
            .map(|response| response.data)
            .map_err(status::from_write_error);
        // A caller that gave up no longer listens; nothing to do then.
        let _ = reply.send(result);
        return;
    }
    // The permits stay held until every writer is answered.
    let mut commands = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    let mut permits = Vec::with_capacity(batch.len());
    for proposal in batch {
        commands.push(proposal.command);
        replies.push(proposal.reply);
        permits.push(proposal._permits);
    }
    let entry = pb::Command {
        op: Some(pb::command::Op::Commands(pb::Commands { commands })),
        proposed_at_ms: now_ms(),
        ..Default::default()
    };
    let encoded = LogCommand::encode(&entry);
    drop(entry); // as above: only the encoding waits for the apply
    match raft.client_write(encoded).await {
        Ok(response) => {
            let results = response.data.results;
            if results.len() != replies.len() {
                // The state machine answers every command of a batch; anything
                // else is a bug, reported to each writer rather than guessed at.
                let error = Status::internal(format!(
                    "a batch of {} writes was applied with {} results",
                    replies.len(),
                    results.len()
                ));
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
                return;
            }
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        Err(error) => {
            let error = status::from_write_error(error);
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
