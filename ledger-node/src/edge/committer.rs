//! The durability rule, in one place: a group's effects are written in one durable redb
//! commit, and only after that commit returned is the group handed to the `answerer`,
//! which publishes its replies and notices while the next group is written. A
//! commit the disk refuses is answered `disk_full`, as is every group after it until the
//! intake has rebuilt its books from the file (`disk`); any other failure to commit stops
//! the node without answering the group.
//!
//! The committer tells a `CommitListener` (journal shipping, when the edge has a region)
//! about each commit; it knows nothing else about it.

use super::answerer::{ReplyTo, Settled};
use super::disk::{Restart, WriteFailures};
use super::handoff::Handoff;
use crate::core::journal::{Chain, Entry};
use crate::core::{Effects, LiveChanges};
use crate::error::NodeError;
use crate::metrics::Metrics;
use crate::store::Store;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Groups applied but not yet committed. The intake hands a group over when the committer
/// waits for it (`handoff`), so the one place is only filled while a full group waits
/// behind the commit in progress; more would only hold replies back longer.
pub const GROUPS_IN_FLIGHT: usize = 1;

/// A commit slower than this is logged: every reply of its group waited that long.
const SLOW_COMMIT: Duration = Duration::from_millis(100);

/// Told after each durable commit; must not block.
pub trait CommitListener: Send {
    fn committed(&self, entries: Vec<Entry>, head: Chain);
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

/// Owns the store and the journal's hash chain; hands settled groups to the answerer.
pub struct Committer {
    store: Arc<Store>,
    chain: Chain,
    /// Where settled groups go to be answered, in order.
    answers: SyncSender<Settled>,
    listener: Option<Box<dyn CommitListener>>,
    metrics: Arc<Metrics>,
    /// The last group number whose commit returned: the intake lets its id records leave
    /// RAM (they are in the file now).
    durable: Arc<AtomicU64>,
    failures: Arc<WriteFailures>,
    handoff: Arc<Handoff>,
    /// A commit failed and the intake has not sent its rebuilt books yet: every group is
    /// answered `disk_full` unwritten.
    refusing: bool,
}

/// Where the committer reports what became durable, what could not, and when it waits for
/// the next group.
pub struct Reports {
    /// The last group number whose commit returned.
    pub durable: Arc<AtomicU64>,
    pub failures: Arc<WriteFailures>,
    pub handoff: Arc<Handoff>,
}

impl Committer {
    pub fn new(
        store: Arc<Store>,
        chain: Chain,
        answers: SyncSender<Settled>,
        listener: Option<Box<dyn CommitListener>>,
        metrics: Arc<Metrics>,
        reports: Reports,
    ) -> Committer {
        let Reports { durable, failures, handoff } = reports;
        Committer { store, chain, answers, listener, metrics, durable, failures, handoff, refusing: false }
    }

    /// Commits groups in order and answers each only after its commit returned. Returns when
    /// the intake hangs up, or with the error that makes the node stop without replying.
    pub fn run(mut self, groups: Receiver<Group>) -> Result<(), NodeError> {
        loop {
            let Some(group) = self.handoff.next(&groups) else { return Ok(()) };
            if let Some(restart) = group.restart {
                assert_eq!(restart.after, self.failures.count(), "books rebuilt after the last refused write only");
                self.chain = restart.chain;
                self.refusing = false;
            }
            if self.refusing {
                self.settle(Settled::Refused(group.outcomes))?;
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
                        self.settle(Settled::Refused(group.outcomes))?;
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
            self.settle(Settled::Durable(group.outcomes))?;
        }
    }

    /// Hands a settled group to the answerer, waiting while it is `GROUPS_TO_ANSWER` behind.
    fn settle(&self, group: Settled) -> Result<(), NodeError> {
        self.answers.send(group).map_err(|_| NodeError::Stopped { part: "answerer", why: "it hung up".to_string() })
    }
}
