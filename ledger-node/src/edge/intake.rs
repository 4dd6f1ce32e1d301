//! Command intake: reads device commands from the embedded broker's command link and
//! requests from the inbox, applies them to the ledger in groups, checks the books' running
//! totals, and hands each group to the committer. The committer writes a group durably and
//! only then publishes its answers; the two run in their own threads, so that the next
//! group is applied while the previous one is being fsynced: it stays open, taking what
//! arrives, until the committer waits for it (`handoff`). Groups commit and answer in
//! order, so a reply never depends on a change that is not yet on disk. After a refused
//! write it rebuilds the books from the file and answers only what needs no write until a
//! probe write succeeds (`disk`).

use super::answerer::ReplyTo;
use super::books::{Books, Loaded};
use super::committer::{Group, Reports};
use super::disk::{self, DiskMode, Restart, WriteFailures};
use super::handoff::{self, Handoff};
use super::inbox::{Call, Request};
use crate::clock::now_ms;
use crate::core::command;
use crate::core::id_filter::IdFilter;
use crate::core::journal::Chain;
use crate::core::reply::{Code, Rejection, Reply};
use crate::core::{Effects, Ledger, LiveChanges, OPERATOR};
use crate::error::NodeError;
use crate::metrics::Metrics;
use crate::store::IdFault;
use broker::link::{CommandReader, DeviceCommand, Inbound};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct IntakeLimits {
    /// Largest command payload the ledger reads; larger ones are rejected `payload_too_large`.
    pub max_command_bytes: usize,
    pub max_batch_ops: usize,
    /// Most commands sharing one commit.
    pub max_group: usize,
    /// Longest the first command of a group waits for others before the commit starts.
    pub max_wait: Duration,
}

/// Longest the loop sleeps without looking at the clock for due expiries.
const IDLE_TICK: Duration = Duration::from_millis(250);

/// How often the intake logs its counters.
const LOG_EVERY: Duration = Duration::from_secs(30);

enum Incoming {
    Device(DeviceCommand),
    Peer(Box<Call>),
}

/// The group being applied: what arrives joins it until it goes to the committer.
struct Open {
    number: u64,
    outcomes: Vec<(Option<ReplyTo>, Effects)>,
    /// When it opened.
    opened: Instant,
    /// When its first device command came: from then on it waits at most `max_wait` for
    /// others once the committer is free. Requests from other nodes come in batches and
    /// expiries by themselves: a group of those alone goes as soon as the committer is free.
    first_command: Option<Instant>,
    /// The time its commands are applied at: read when it opened and at each turn after,
    /// never going back.
    now: u64,
}

/// Counters since start, logged now and then.
#[derive(Debug, Default)]
struct IntakeStats {
    commands: u64,
    groups: u64,
    rejected: u64,
    dropped_topics: u64,
    lost_by_broker: u64,
    peer_requests: u64,
}

pub struct Intake {
    ledger: Ledger,
    commands: CommandReader,
    limits: IntakeLimits,
    stats: IntakeStats,
    committer: SyncSender<Group>,
    /// When the committer is free for the next group.
    handoff: Arc<Handoff>,
    inbox: Option<Receiver<Call>>,
    metrics: Arc<Metrics>,
    /// The last group the committer made durable (see `Committer`).
    durable: Arc<AtomicU64>,
    /// Set when an id record could not be read back from the file.
    id_fault: IdFault,
    /// The filter of the ids in the file, until it arrives (see `Books::load`).
    id_filter: Option<Receiver<IdFilter>>,
    /// The file, to load the books from again after a refused write.
    books: Books,
    failures: Arc<WriteFailures>,
    /// The refused writes the books were rebuilt after.
    failures_seen: u64,
    mode: DiskMode,
    /// Goes with the next group sent: the books were rebuilt.
    restart: Option<Restart>,
    last_group: u64,
    /// Outcomes in the last group sent: what the next one is sized for.
    last_group_size: usize,
}

impl Intake {
    pub fn new(
        (loaded, books): (Loaded, Books),
        commands: CommandReader,
        limits: IntakeLimits,
        committer: SyncSender<Group>,
        metrics: Arc<Metrics>,
        reports: Reports,
    ) -> Intake {
        let Loaded { ledger, id_fault, id_filter, .. } = loaded;
        let Reports { durable, failures, handoff } = reports;
        Intake {
            ledger,
            commands,
            limits,
            stats: IntakeStats::default(),
            committer,
            handoff,
            inbox: None,
            metrics,
            durable,
            id_fault,
            id_filter,
            books,
            failures_seen: failures.count(),
            failures,
            mode: DiskMode::Writing,
            restart: None,
            last_group: 0,
            last_group_size: 0,
        }
    }

    /// Also takes requests from other nodes (the zenoh side queues them and wakes us).
    pub fn with_inbox(mut self, inbox: Receiver<Call>) -> Intake {
        self.inbox = Some(inbox);
        self
    }

    /// Runs until the broker goes away, the committer stops, or an invariant breaks.
    pub fn run(mut self) -> Result<(), NodeError> {
        let mut arrived: Vec<Incoming> = Vec::with_capacity(self.limits.max_group);
        let mut open: Option<Open> = None;
        let mut last_log = Instant::now();
        // The last turn left requests in the inbox (the group had no room): no wake-up will
        // come for them.
        let mut backlog = false;
        loop {
            let deadline = if backlog { Instant::now() } else { self.deadline(open.as_ref()) };
            let first = self.commands.recv(deadline)?;
            self.take(first, &mut arrived);
            // Whatever else is queued, without waiting, up to the room left in the group.
            // An open group here is never full (a full one went over at once).
            let room = self.limits.max_group.saturating_sub(open.as_ref().map_or(0, |group| group.outcomes.len()));
            while !arrived.is_empty() && arrived.len() < room {
                match self.commands.recv(Instant::now())? {
                    Inbound::Timeout => break,
                    inbound => self.take(inbound, &mut arrived),
                }
            }
            backlog = false;
            if let Some(inbox) = &self.inbox {
                loop {
                    if arrived.len() >= room {
                        backlog = true;
                        break;
                    }
                    match inbox.try_recv() {
                        Ok(call) => arrived.push(Incoming::Peer(Box::new(call))),
                        Err(_) => break,
                    }
                }
            }
            // A group opens for the first command, or to run the expiries that are due.
            if !arrived.is_empty() || open.is_none() {
                let group = match &mut open {
                    Some(group) => group,
                    None => open.insert(self.open_group()?),
                };
                self.apply(group, &mut arrived);
            }
            if let Some(group) = open.take() {
                open = self.hand_over(group)?;
            }
            // Alive as long as groups go over: the life of an open group counts from when it
            // opened, so that one the committer does not take within `HEALTH_STALL` (a stuck
            // commit) turns `/health` unhealthy.
            match &open {
                None => self.metrics.heartbeat(),
                Some(group) => self.metrics.heartbeat_since(group.opened.elapsed()),
            }
            self.metrics.books(self.ledger.head().seq, self.ledger.outgoing_count());
            let (entries, filter_bytes, stats) = self.ledger.id_cache();
            self.metrics.id_cache(entries, filter_bytes, stats);
            self.metrics.finals_cache(self.ledger.hold_cache(), self.ledger.received_cache());
            if last_log.elapsed() > LOG_EVERY {
                tracing::info!(stats = ?self.stats, head = self.ledger.head().seq, "intake");
                last_log = Instant::now();
            }
        }
    }

    /// Until when the loop waits for input: with no group open, until the next expiry is due;
    /// with one, until its first command has waited `max_wait` for others, and then, while
    /// the committer is busy, until it is woken for the committer (or `handoff::RECHECK`).
    fn deadline(&self, open: Option<&Open>) -> Instant {
        let now = Instant::now();
        match open {
            None => now + self.until_next_expiry(),
            Some(group) => match group.first_command.map(|at| at + self.limits.max_wait) {
                Some(waited) if waited > now => waited,
                // Ready to go: at once if the committer waits now (no wake-up was asked for
                // while the group waited for others), else when it wakes us.
                _ if self.handoff.committer_free() => now,
                _ => now + handoff::RECHECK,
            },
        }
    }

    fn until_next_expiry(&self) -> Duration {
        if !self.mode.writes() {
            // No hold expires while refusing writes: a due one must not spin the loop.
            return IDLE_TICK;
        }
        match self.ledger.next_expiry() {
            Some(at) => Duration::from_millis(at.saturating_sub(now_ms())).min(IDLE_TICK),
            None => IDLE_TICK,
        }
    }

    fn take(&mut self, inbound: Inbound, group: &mut Vec<Incoming>) {
        let lost = self.commands.take_lost();
        if lost > 0 {
            self.stats.lost_by_broker += lost;
            self.metrics.lost_by_broker(lost);
            tracing::warn!(lost, "broker dropped commands before the ledger read them; devices will resend");
        }
        match inbound {
            Inbound::Command(command) => group.push(Incoming::Device(command)),
            Inbound::InvalidTopic(topic) => {
                self.stats.dropped_topics += 1;
                self.metrics.dropped_topic();
                tracing::warn!(topic, "command on a topic without a valid device id; dropped");
            }
            Inbound::Timeout | Inbound::Woken => {}
        }
    }

    /// A new group: the books follow the disk and learn what is durable, and the expiries
    /// that are due come first.
    fn open_group(&mut self) -> Result<Open, NodeError> {
        self.follow_disk()?;
        self.take_id_filter();
        self.ledger.group_durable(self.durable.load(Ordering::Acquire));
        let number = self.ledger.next_group();
        self.last_group = number;
        let now = now_ms();
        let writes = self.mode.writes();
        // Sized like the last group: an outcome is a few hundred bytes, and a group that grew
        // by doubling over its turns copied them again at each step.
        let mut outcomes: Vec<(Option<ReplyTo>, Effects)> = Vec::with_capacity(self.last_group_size.min(self.limits.max_group));
        if writes {
            outcomes.extend(self.ledger.expire_due(now).into_iter().map(|e| (None, e)));
        }
        Ok(Open { number, outcomes, opened: Instant::now(), first_command: None, now })
    }

    /// Applies what arrived to the books, into `group`.
    fn apply(&mut self, group: &mut Open, arrived: &mut Vec<Incoming>) {
        // The group's clock moves on with it, never back.
        group.now = group.now.max(now_ms());
        let now = group.now;
        group.outcomes.reserve(arrived.len());
        for incoming in arrived.drain(..) {
            match incoming {
                Incoming::Device(command) => {
                    group.first_command.get_or_insert_with(Instant::now);
                    self.stats.commands += 1;
                    let (op, effects) = self.handle(&command.device, &command.payload, now);
                    let code = effects.reply.as_ref().map_or(Code::Ok, |r| r.code);
                    if code != Code::Ok {
                        self.stats.rejected += 1;
                    }
                    match op {
                        Some(op) => self.metrics.command(op, code),
                        None => self.metrics.rejected_input(code),
                    }
                    group.outcomes.push((Some(ReplyTo::Device(command.reply_to)), effects));
                }
                Incoming::Peer(call) => {
                    self.stats.peer_requests += 1;
                    let op = call.request.op_name();
                    let (effects, read) = self.handle_request(call.request, now);
                    if let (Some(op), Some(reply)) = (op, &effects.reply) {
                        self.metrics.command(op, reply.code);
                    }
                    group.outcomes.push((Some(ReplyTo::Peer { answer: call.answer, read }), effects));
                }
            }
        }
    }

    /// Hands `group` to the committer when it is full, or when the committer waits for it
    /// (`handoff`) and its first device command, if any, has waited `max_wait` for others;
    /// else gives it back, to take more.
    fn hand_over(&mut self, group: Open) -> Result<Option<Open>, NodeError> {
        if group.outcomes.is_empty() {
            // Nothing came and nothing expired, so nothing changed (only a command or an
            // expiry changes the books). Changes without an answer would still be written:
            // a fold dropped here would leave accounts that only deltas hold to be deleted
            // with them at the next fold.
            let live = self.ledger.take_live_changes();
            debug_assert!(live.is_empty(), "only a command or an expiry changes the books");
            if !live.is_empty() {
                self.send(group.number, Vec::new(), live)?;
            }
            return Ok(None);
        }
        let full = group.outcomes.len() >= self.limits.max_group;
        let waits_for_others = group.first_command.is_some_and(|at| at.elapsed() < self.limits.max_wait);
        if !full && (waits_for_others || !self.handoff.committer_free()) {
            return Ok(Some(group));
        }
        let live = self.ledger.take_live_changes();
        self.send(group.number, group.outcomes, live)?;
        Ok(None)
    }

    /// Sends a group to the committer, once the books check out.
    fn send(&mut self, number: u64, outcomes: Vec<(Option<ReplyTo>, Effects)>, live: LiveChanges) -> Result<(), NodeError> {
        // An id that could not be read back may have been taken for new: stop before
        // anything of this group is written or answered. Refusing writes, such an id was
        // answered disk_full at worst: nothing was taken.
        if let Some(fault) = self.id_fault.take() {
            if self.mode.writes() {
                return Err(NodeError::Store(fault));
            }
            tracing::warn!(error = %fault, "an id record could not be read back while refusing writes");
        }
        // A broken sum stops the node here, before any reply of this group can leave.
        self.ledger.check_totals()?;
        self.stats.groups += 1;
        self.last_group_size = outcomes.len();
        self.handoff.handing_over();
        self.committer
            .send(Group { number, restart: self.restart.take(), outcomes, live })
            .map_err(|_| NodeError::Stopped { part: "committer", why: "it no longer takes groups".to_string() })
    }

    /// Hands the ledger the filter of the ids in the file once its thread has built it.
    fn take_id_filter(&mut self) {
        let Some(built) = &self.id_filter else { return };
        match built.try_recv() {
            Ok(filter) => {
                self.ledger.complete_id_filter(filter);
                self.id_filter = None;
            }
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => self.id_filter = None,
        }
    }

    /// After a write the disk refused, rebuilds the books from the file and refuses writes;
    /// while refusing, probes now and then whether writes work again.
    fn follow_disk(&mut self) -> Result<(), NodeError> {
        let failures = self.failures.count();
        if failures != self.failures_seen {
            self.failures_seen = failures;
            let chain = self.reload()?;
            self.restart = Some(Restart { after: failures, chain });
            // The committer set `refusing_writes` when the commit failed.
            self.mode = DiskMode::refusing(Instant::now());
        }
        if let DiskMode::Refusing { since, next_probe } = self.mode {
            let now = Instant::now();
            if now < next_probe {
                return Ok(());
            }
            match self.books.store().probe_writes(disk::PROBE_BYTES) {
                Ok(()) => {
                    tracing::warn!(refused_for_s = since.elapsed().as_secs(), "the disk takes writes again; taking new commands");
                    self.mode = DiskMode::Writing;
                    self.metrics.refusing_writes(false);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "the disk still refuses writes");
                    self.mode = DiskMode::Refusing { since, next_probe: now + disk::PROBE_EVERY };
                }
            }
        }
        Ok(())
    }

    /// Loads the books again from the file: what is durable, nothing of the groups the
    /// committer refused. Retries while the file cannot be opened for want of space; any
    /// other failure stops the node.
    fn reload(&mut self) -> Result<Chain, NodeError> {
        // The old books go first: two copies would not fit where one barely does.
        self.ledger = self.books.empty();
        loop {
            let loaded = self.books.store().reopen().map_err(NodeError::Store).and_then(|()| self.books.load());
            match loaded {
                Ok(Loaded { mut ledger, chain, id_fault, id_filter }) => {
                    ledger.number_groups_after(self.last_group);
                    tracing::warn!(head = ledger.head().seq, "books reloaded from the file after a refused write");
                    self.ledger = ledger;
                    self.id_fault = id_fault;
                    self.id_filter = id_filter;
                    return Ok(chain);
                }
                Err(NodeError::Store(e)) if e.is_write_failure() => {
                    tracing::error!(error = %e, "cannot load the books from the file again; retrying");
                    std::thread::sleep(disk::PROBE_EVERY);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn handle_request(&mut self, request: Request, now: u64) -> (Effects, Option<bridge::Answer>) {
        if !self.mode.writes() {
            return match request {
                Request::Read(read) => (Effects::default(), Some(read(&self.ledger))),
                // Asked again until the node writes: a refusal is not a decision.
                _ => (Effects::default(), Some(Err(disk::peer_refusal()))),
            };
        }
        match request {
            Request::Receive(command) => (self.ledger.receive(command, now), None),
            Request::Settle { pending_id, decision } => (self.ledger.settle(&pending_id, &decision, now), None),
            Request::Read(read) => (Effects::default(), Some(read(&self.ledger))),
            Request::Operator(command) => (self.ledger.submit(Some(OPERATOR), command, now), None),
        }
    }

    /// The command's op (None: the input was not a command) and its effects.
    fn handle(&mut self, device: &str, payload: &[u8], now: u64) -> (Option<&'static str>, Effects) {
        if payload.len() > self.limits.max_command_bytes {
            let rejection = Rejection::new(
                Code::PayloadTooLarge,
                format!("payload is {} bytes; the limit is {}", payload.len(), self.limits.max_command_bytes),
            );
            let id = command::peek_id(payload);
            return (None, Effects::reply_only(Reply::rejected(id.as_deref(), rejection)));
        }
        match command::parse(payload, self.limits.max_batch_ops) {
            Ok(cmd) if !self.mode.writes() => {
                let answer = self.ledger.answer_without_writing(Some(device), &cmd);
                (Some(cmd.op.name()), answer.unwrap_or_else(|| Effects::reply_only(disk::refusal(Some(&cmd.id)))))
            }
            Ok(cmd) => (Some(cmd.op.name()), self.ledger.submit(Some(device), cmd, now)),
            Err(rejection) => {
                let id = command::peek_id(payload);
                (None, Effects::reply_only(Reply::rejected(id.as_deref(), rejection)))
            }
        }
    }
}
