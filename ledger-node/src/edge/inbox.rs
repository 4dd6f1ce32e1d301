//! Requests that reach an edge from other nodes and operators over zenoh: cross-node
//! deliveries and settlements, reads of the books, operator commands. Each goes through
//! the intake like a device command, so it sees and changes the books in order with them,
//! and is answered only after its group is durable. The queue is bounded; beyond it the
//! asker is told `busy` and asks again.

use crate::core::reply::Reply;
use crate::core::{Command, Ledger, NodeCommand};
use bridge::{Answer, Refusal, QUERY_TIMEOUT};
use broker::link::Waker;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;

/// Requests from other nodes waiting for the intake; beyond this they are answered `busy`
/// and the sender retries.
pub const INBOX_CAPACITY: usize = 1024;

pub enum Request {
    /// A cross-node transfer arriving here (`NodeOp::Receive`).
    Receive(NodeCommand),
    /// The destination's decision on a transfer sent from here.
    Settle { pending_id: String, decision: Reply },
    /// An operator's read of this node's books, answered from the ledger as it stands
    /// between two groups (in order with the commands around it).
    Read(Box<dyn FnOnce(&Ledger) -> Answer + Send>),
    /// An operator's command (`ledgerctl account open`), applied with operator rights.
    Operator(Command),
}

impl Request {
    /// The op counted in metrics; reads are not counted.
    pub fn op_name(&self) -> Option<&'static str> {
        match self {
            Request::Receive(_) => Some("receive"),
            Request::Settle { .. } => Some("settle"),
            Request::Operator(command) => Some(command.op.name()),
            Request::Read(_) => None,
        }
    }
}

/// A request with where its answer goes.
pub struct Call {
    pub request: Request,
    pub answer: tokio::sync::oneshot::Sender<Answer>,
}

/// The sending side: an edge's door for requests that go through its intake.
#[derive(Clone)]
pub struct Inbox {
    calls: SyncSender<Call>,
    waker: Arc<Waker>,
}

impl Inbox {
    /// The door and the intake's side of it.
    pub fn new(waker: Arc<Waker>) -> (Inbox, Receiver<Call>) {
        let (calls, queued) = std::sync::mpsc::sync_channel(INBOX_CAPACITY);
        (Inbox { calls, waker }, queued)
    }

    /// Queues many requests at once (they usually share one group and one commit) and waits
    /// for each answer; a request the queue has no room for is answered `busy` alone.
    pub async fn ask_many(&self, requests: Vec<Request>) -> Vec<Answer> {
        let mut waiting = Vec::with_capacity(requests.len());
        for request in requests {
            let (answer, answered) = tokio::sync::oneshot::channel();
            waiting.push(match self.calls.try_send(Call { request, answer }) {
                Ok(()) => Ok(answered),
                Err(TrySendError::Full(_)) => Err(Refusal::busy("busy: the node's request queue is full; ask again")),
                Err(TrySendError::Disconnected(_)) => Err(Refusal::unavailable("the node is stopping")),
            });
        }
        self.waker.wake();
        let deadline = tokio::time::Instant::now() + QUERY_TIMEOUT;
        let mut answers = Vec::with_capacity(waiting.len());
        for queued in waiting {
            answers.push(match queued {
                Ok(answered) => match tokio::time::timeout_at(deadline, answered).await {
                    Ok(Ok(answer)) => answer,
                    Ok(Err(_)) => Err(Refusal::unavailable("the node stopped before answering")),
                    Err(_) => Err(Refusal::busy("no answer in time; ask again")),
                },
                Err(refusal) => Err(refusal),
            });
        }
        answers
    }

    /// Queues a request for the intake and waits for its answer (after its group commits).
    pub async fn ask(&self, request: Request) -> Answer {
        self.ask_many(vec![request]).await.pop().expect("one answer per request")
    }
}
