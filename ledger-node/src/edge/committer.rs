//! The durability rule, in one place: a group's effects are written in one durable redb
//! commit, and only after that commit returned are its replies and notices published. A
//! commit the disk refuses is answered `disk_full`, as is every group after it until the
//! intake has rebuilt its books from the file (`disk`); any other failure to commit stops
//! the node without answering the group.
//!
//! The committer tells a `CommitListener` (journal shipping, when the edge has a region)
//! about each commit; it knows nothing else about it.

use super::disk::{self, Restart, WriteFailures};
use crate::core::journal::{Chain, Entry};
use crate::core::{Effects, LiveChanges};
use crate::error::NodeError;
use crate::metrics::Metrics;
use crate::store::Store;
use bridge::Answer;
use broker::link::{ReplyLink, ReplyTarget};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Groups applied but not yet committed. One is being committed while the next waits: more
/// would only hold replies back longer.
pub const GROUPS_IN_FLIGHT: usize = 1;

/// A commit slower than this is logged: every reply of its group waited that long.
const SLOW_COMMIT: Duration = Duration::from_millis(100);

/// Told after each durable commit; must not block.
pub trait CommitListener: Send {
    fn committed(&self, entries: Vec<Entry>, head: Chain);
}

/// Where the answer to one input goes once its group is durable.
pub enum ReplyTo {
    Device(ReplyTarget),
    /// Another node's request: the reply, or `read`, an answer computed at intake.
    Peer {
        answer: tokio::sync::oneshot::Sender<Answer>,
        read: Option<Answer>,
    },
}

/// The effects of one group of commands, in arrival order, with where each answer goes.
#[derive(Default)]
pub struct Group {
    /// The ledger's number for it (`Ledger::next_group`), reported back once durable.
    pub number: u64,
    /// The first group of books rebuilt after a refused write.
    pub restart: Option<Restart>,
    pub outcomes: Vec<(Option<ReplyTo>, Effects)>,
    /// What the group changed in the live state, written in the same commit.
    pub live: LiveChanges,
}

impl Group {
    fn writes(&self) -> bool {
        !self.live.is_empty() || self.outcomes.iter().any(|(_, e)| e.entry.is_some() || !e.recorded.is_empty())
    }
}

/// Owns the store, the journal's hash chain and the publishing side of the broker link.
pub struct Committer {
    store: Arc<Store>,
    chain: Chain,
    replies: ReplyLink,
    listener: Option<Box<dyn CommitListener>>,
    metrics: Arc<Metrics>,
    /// The last group number whose commit returned: the intake lets its id records leave
    /// RAM (they are in the file now).
    durable: Arc<AtomicU64>,
    failures: Arc<WriteFailures>,
    /// A commit failed and the intake has not sent its rebuilt books yet: every group is
    /// answered `disk_full` unwritten.
    refusing: bool,
}

/// Where the committer reports what became durable, and what could not.
pub struct Reports {
    /// The last group number whose commit returned.
    pub durable: Arc<AtomicU64>,
    pub failures: Arc<WriteFailures>,
}

impl Committer {
    pub fn new(
        store: Arc<Store>,
        chain: Chain,
        replies: ReplyLink,
        listener: Option<Box<dyn CommitListener>>,
        metrics: Arc<Metrics>,
        reports: Reports,
    ) -> Committer {
        let Reports { durable, failures } = reports;
        Committer { store, chain, replies, listener, metrics, durable, failures, refusing: false }
    }

    /// Commits groups in order and answers each only after its commit returned. Returns when
    /// the intake hangs up, or with the error that makes the node stop without replying.
    pub fn run(mut self, groups: Receiver<Group>) -> Result<(), NodeError> {
        for group in groups {
            if let Some(restart) = group.restart {
                assert_eq!(restart.after, self.failures.count(), "books rebuilt after the last refused write only");
                self.chain = restart.chain;
                self.refusing = false;
            }
            if self.refusing {
                self.refuse(group)?;
                continue;
            }
            if group.writes() {
                // No reply leaves before this returns: a crash here loses only unanswered commands.
                let started = Instant::now();
                let sealed = match self.store.commit(&mut self.chain, group.outcomes.iter().map(|(_, e)| e), &group.live) {
                    Ok(sealed) => sealed,
                    Err(e) if e.is_write_failure() => {
                        let failures = self.failures.raise();
                        self.metrics.write_failed();
                        self.metrics.refusing_writes(true);
                        tracing::error!(error = %e, failures, "the disk refused a commit; answering disk_full until a write succeeds");
                        self.refusing = true;
                        self.refuse(group)?;
                        continue;
                    }
                    Err(e) => return Err(NodeError::Commit(e)),
                };
                self.metrics.commit(group.outcomes.len(), started.elapsed());
                if let Some(listener) = &self.listener {
                    listener.committed(sealed, self.chain);
                }
                if started.elapsed() > SLOW_COMMIT {
                    tracing::warn!(ms = started.elapsed().as_millis() as u64, commands = group.outcomes.len(), "slow commit");
                }
            }
            self.durable.store(group.number, Ordering::Release);
            self.answer(group)?;
        }
        Ok(())
    }

    /// Answers a group that was not written: devices `disk_full`, other nodes `unavailable`.
    /// Its replies and notices were made by books ahead of the file, so none of them leaves.
    fn refuse(&mut self, group: Group) -> Result<(), NodeError> {
        for (target, effects) in group.outcomes {
            match target {
                Some(ReplyTo::Device(target)) => {
                    let id = effects.reply.as_ref().and_then(|r| r.id.as_deref());
                    self.replies.publish(&target, disk::refusal(id).to_json())?;
                }
                Some(ReplyTo::Peer { answer, .. }) => {
                    let _ = answer.send(Err(disk::peer_refusal()));
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Answers a durable group: other nodes' requests at once, devices' replies and notices
    /// handed to the broker together, in order (one wake of its router for the group).
    fn answer(&mut self, group: Group) -> Result<(), NodeError> {
        let mut messages = Vec::with_capacity(group.outcomes.len());
        for (target, effects) in group.outcomes {
            match (target, &effects.reply) {
                (Some(ReplyTo::Device(target)), Some(reply)) => messages.push((target, reply.to_json())),
                (Some(ReplyTo::Peer { answer, read }), reply) => {
                    let value = read.unwrap_or_else(|| Ok(serde_json::to_value(reply).expect("reply serializes")));
                    // The asker may have given up (timeout); it asks again.
                    let _ = answer.send(value);
                }
                _ => {}
            }
            for notice in &effects.notices {
                messages.push((ReplyTarget::device(&notice.device), notice.to_json()));
            }
        }
        self.replies.publish_all(messages)?;
        Ok(())
    }
}
