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

use std::sync::Arc;

use prost::Message;
use proto::raft as pb;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::Status;

use super::status;
use crate::types::Raft;

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
}

impl Default for ProposerOptions {
    fn default() -> Self {
        ProposerOptions {
            batches_in_flight: 2,
            batch_commands_max: 1024,
            batch_bytes_max: 1 << 20,
        }
    }
}

/// One write waiting to be proposed.
struct Proposal {
    command: pb::Command,
    reply: oneshot::Sender<Result<pb::CommandResult, Status>>,
}

/// The handle the service proposes through. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::UnboundedSender<Proposal>,
}

impl Proposer {
    /// Starts the batcher task proposing through `raft`. The task ends when
    /// every handle is dropped. Must run inside a tokio runtime.
    pub fn start(raft: Raft, options: ProposerOptions) -> Proposer {
        let (queue, proposals) = mpsc::unbounded_channel();
        tokio::spawn(batch_and_propose(raft, options, proposals));
        Proposer { queue }
    }

    /// Proposes `command` and waits until it is applied, returning its
    /// result. The queue itself is unbounded: the caller bounds the writes
    /// in flight.
    pub async fn propose(&self, command: pb::Command) -> Result<pb::CommandResult, Status> {
        let (reply, result) = oneshot::channel();
        self.queue
            .send(Proposal { command, reply })
            .map_err(|_| status::not_applied(Status::unavailable("the node is shutting down")))?;
        result
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("the node stopped before the write was applied")))
    }
}

/// The batcher: takes a slot, then everything queued (up to the batch
/// limits), and proposes it on a task of its own.
async fn batch_and_propose(raft: Raft, options: ProposerOptions, mut proposals: mpsc::UnboundedReceiver<Proposal>) {
    let slots = Arc::new(Semaphore::new(options.batches_in_flight.max(1)));
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
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return; // never closed
        };
        // Writes that queued while the slot was awaited join this batch.
        let mut bytes = first.command.encoded_len();
        let mut batch = vec![first];
        while batch.len() < options.batch_commands_max && bytes < options.batch_bytes_max {
            let Ok(next) = proposals.try_recv() else { break };
            let next_bytes = next.command.encoded_len();
            if bytes + next_bytes > options.batch_bytes_max {
                carried = Some(next);
                break;
            }
            bytes += next_bytes;
            batch.push(next);
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            propose_batch(&raft, batch).await;
            drop(slot);
        });
    }
}

/// Proposes `batch` as one entry and answers each of its writes.
async fn propose_batch(raft: &Raft, mut batch: Vec<Proposal>) {
    if batch.len() == 1 {
        let Some(Proposal { command, reply }) = batch.pop() else {
            return;
        };
        let result = raft
            .client_write(command)
            .await
            .map(|response| response.data)
            .map_err(status::from_write_error);
        // A caller that gave up no longer listens; nothing to do then.
        let _ = reply.send(result);
        return;
    }
    let (commands, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    let entry = pb::Command {
        op: Some(pb::command::Op::Commands(pb::Commands { commands })),
        ..Default::default()
    };
    match raft.client_write(entry).await {
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
