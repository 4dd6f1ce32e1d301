//! Command intake: reads device commands from the embedded broker's local link and applies
//! them to the ledger in groups; the committer writes each group durably and only then
//! publishes its replies and notices. The two run in their own threads, so that the next
//! group is applied while the previous one is being fsynced; groups commit and answer in
//! order, so a reply never depends on a change that is not yet on disk.

use crate::command;
use crate::journal::Chain;
use crate::replication::EdgeLink;
use std::sync::Arc;
use crate::ledger::{Effects, Ledger, OPERATOR};
use crate::metrics::Metrics;
use crate::reply::{Code, Rejection, Reply};
use crate::store::Store;
use broker::{device_of, reply_topic};
use rumqttd::local::{LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish, PublishProperties};
use rumqttd::Notification;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// Groups applied but not yet committed. One is being committed while the next waits: more
/// would only hold replies back longer.
pub const GROUPS_IN_FLIGHT: usize = 1;

/// The effects of one group of commands, in arrival order, with where each reply goes.
pub struct Group {
    outcomes: Vec<(Option<ReplyTo>, Effects)>,
}

/// Where the answer to one input goes once its group is durable.
pub enum ReplyTo {
    Device(Target),
    /// Another node's request: the reply as JSON, or `read`, an answer computed at intake.
    Peer { answer: tokio::sync::oneshot::Sender<serde_json::Value>, read: Option<serde_json::Value> },
}

/// A request from another node or an operator, over zenoh. It goes through the intake like
/// a device command, so it sees and changes the books in order with them, and it is
/// answered only after its group is durable.
pub struct PeerCall {
    pub request: PeerRequest,
    pub answer: tokio::sync::oneshot::Sender<serde_json::Value>,
}

pub enum PeerRequest {
    /// A cross-node transfer arriving here (`Op::Receive`).
    Receive(crate::command::Command),
    /// The destination's decision on a transfer sent from here.
    Settle { pending_id: String, decision: Reply },
    /// An operator's read of this node's books, answered from the ledger as it stands
    /// between two groups (in order with the commands around it).
    Read(Box<dyn FnOnce(&Ledger) -> serde_json::Value + Send>),
    /// An operator's command (`ledgerctl account open`), applied with operator rights.
    Operator(crate::command::Command),
}

/// Requests from other nodes waiting for the intake; beyond this they are answered `busy`
/// and the sender retries.
pub const PEER_QUEUE: usize = 1024;

/// Topic on which the node's own waker publishes to get the intake out of its wait when a
/// peer request arrives. Carries no data; a device publishing here only wakes the intake.
pub const WAKE_TOPIC: &str = "ledger/v1/wake";

/// Wakes the intake after a peer request was queued.
pub struct Waker {
    link_tx: std::sync::Mutex<LinkTx>,
    /// Kept so that the broker sees the link open; nothing is read from it.
    _link_rx: LinkRx,
}

impl Waker {
    pub fn new((link_tx, link_rx): (LinkTx, LinkRx)) -> Waker {
        Waker { link_tx: std::sync::Mutex::new(link_tx), _link_rx: link_rx }
    }

    pub fn wake(&self) {
        if let Err(e) = self.link_tx.lock().expect("waker lock").try_publish(WAKE_TOPIC, Vec::new()) {
            tracing::debug!("wake: {e}");
        }
    }
}

/// Where a reply goes: the device's reply topic, or a v5 response topic with its correlation.
pub struct Target {
    topic: String,
    correlation: Option<bytes::Bytes>,
    v5: bool,
}

enum Incoming {
    Device { device: String, payload: bytes::Bytes, target: Target },
    Peer(PeerCall),
}

/// Counters since start, logged now and then; exported as metrics later.
#[derive(Debug, Default)]
pub struct IntakeStats {
    pub commands: u64,
    pub groups: u64,
    pub rejected: u64,
    pub dropped_topics: u64,
    pub lost_by_broker: u64,
    pub peer_requests: u64,
}

pub struct Intake {
    ledger: Ledger,
    link_rx: LinkRx,
    limits: IntakeLimits,
    stats: IntakeStats,
    committer: SyncSender<Group>,
    last_cursor: Option<(u64, u64)>,
    peers: Option<Receiver<PeerCall>>,
    metrics: Arc<Metrics>,
}

/// Owns the store, the journal's hash chain and the publishing side of the broker link.
pub struct Committer {
    store: Arc<Store>,
    chain: Chain,
    link_tx: LinkTx,
    /// Where committed entries go next: the region, when this edge has a zenoh link.
    edge_link: Option<EdgeLink>,
    metrics: Arc<Metrics>,
}

/// A commit slower than this is logged: every reply of its group waited that long.
const SLOW_COMMIT: Duration = Duration::from_millis(100);

/// Longest the loop sleeps without looking at the clock for due expiries.
const IDLE_TICK: Duration = Duration::from_millis(250);

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as u64
}

impl Intake {
    pub fn new(ledger: Ledger, link_rx: LinkRx, limits: IntakeLimits, committer: SyncSender<Group>, metrics: Arc<Metrics>) -> Intake {
        Intake { ledger, link_rx, limits, stats: IntakeStats::default(), committer, last_cursor: None, peers: None, metrics }
    }

    /// Also takes requests from other nodes (the zenoh side queues them and wakes us).
    pub fn with_peers(mut self, peers: Receiver<PeerCall>) -> Intake {
        self.peers = Some(peers);
        self
    }

    /// Runs until the broker goes away or storage fails.
    pub fn run(mut self) -> Result<(), String> {
        let mut group: Vec<Incoming> = Vec::with_capacity(self.limits.max_group);
        let mut last_log = Instant::now();
        loop {
            let idle_deadline = Instant::now() + self.until_next_expiry();
            match self.link_rx.recv_deadline(idle_deadline) {
                Ok(Some(n)) => self.take(n, &mut group)?,
                Ok(None) => {}
                Err(LinkError::RecvTimeout(flume::RecvTimeoutError::Timeout)) => {}
                Err(e) => return Err(format!("broker link closed: {e}")),
            }
            let group_deadline = Instant::now() + self.limits.max_wait;
            while !group.is_empty() && group.len() < self.limits.max_group {
                match self.link_rx.recv_deadline(group_deadline) {
                    Ok(Some(n)) => self.take(n, &mut group)?,
                    Ok(None) => {}
                    Err(LinkError::RecvTimeout(flume::RecvTimeoutError::Timeout)) => break,
                    Err(e) => return Err(format!("broker link closed: {e}")),
                }
            }
            if let Some(peers) = &self.peers {
                while group.len() < self.limits.max_group {
                    match peers.try_recv() {
                        Ok(call) => group.push(Incoming::Peer(call)),
                        Err(_) => break,
                    }
                }
            }
            self.process(&mut group)?;
            self.metrics.heartbeat();
            self.metrics.books(self.ledger.head().seq, self.ledger.outgoing_count());
            if last_log.elapsed() > Duration::from_secs(30) {
                tracing::info!(stats = ?self.stats, head = self.ledger.head().seq, "intake");
                last_log = Instant::now();
            }
        }
    }

    fn until_next_expiry(&self) -> Duration {
        match self.ledger.next_expiry() {
            Some(at) => Duration::from_millis(at.saturating_sub(now_ms())).min(IDLE_TICK),
            None => IDLE_TICK,
        }
    }

    fn take(&mut self, notification: Notification, group: &mut Vec<Incoming>) -> Result<(), String> {
        match notification {
            Notification::Forward(forward) => {
                let topic = String::from_utf8_lossy(&forward.publish.topic).into_owned();
                // Wake-ups come from their own log, with cursors of their own.
                if topic == WAKE_TOPIC {
                    return Ok(());
                }
                self.watch_cursor(forward.cursor);
                let Some(device) = device_of(&topic) else {
                    self.stats.dropped_topics += 1;
                    self.metrics.dropped_topic();
                    tracing::warn!(topic, "command on a topic without a valid device id; dropped");
                    return Ok(());
                };
                let (response_topic, correlation) = match forward.properties {
                    Some(p) => (p.response_topic, p.correlation_data),
                    None => (None, None),
                };
                // A response topic may not point into command topics (the node would read its
                // own reply as a command) nor hold wildcards; such a reply goes to the default.
                let response_topic = response_topic.filter(|t| usable_response_topic(t));
                let v5 = response_topic.is_some() || correlation.is_some();
                let target = Target { topic: response_topic.unwrap_or_else(|| reply_topic(device)), correlation, v5 };
                group.push(Incoming::Device { device: device.to_string(), payload: forward.publish.payload, target });
            }
            // The router paused us because our buffer filled; we have drained it.
            Notification::Unschedule => self.link_rx.ready().map_err(|e| format!("broker link closed: {e}"))?,
            _ => {}
        }
        Ok(())
    }

    /// rumqttd drops the oldest segment when a reader lags; a jump in the cursor is the
    /// only sign. Those commands got a PUBACK but never reached us: their devices resend.
    /// The cursor's second part is an absolute offset, continuous across segments.
    fn watch_cursor(&mut self, cursor: Option<(u64, u64)>) {
        let Some(cursor) = cursor else { return };
        if let Some(last) = self.last_cursor {
            if cursor.1 > last.1 + 1 {
                let lost = cursor.1 - last.1 - 1;
                self.stats.lost_by_broker += lost;
                self.metrics.lost_by_broker(lost);
                tracing::warn!(lost, "broker dropped commands before the ledger read them; devices will resend");
            }
        }
        self.last_cursor = Some(cursor);
    }

    fn process(&mut self, group: &mut Vec<Incoming>) -> Result<(), String> {
        let now = now_ms();
        let mut outcomes: Vec<(Option<ReplyTo>, Effects)> =
            self.ledger.expire_due(now).into_iter().map(|e| (None, e)).collect();
        for incoming in group.drain(..) {
            match incoming {
                Incoming::Device { device, payload, target } => {
                    self.stats.commands += 1;
                    let (op, effects) = self.handle(&device, &payload, now);
                    let code = effects.reply.as_ref().map_or(Code::Ok, |r| r.code);
                    if code != Code::Ok {
                        self.stats.rejected += 1;
                    }
                    match op {
                        Some(op) => self.metrics.command(op, code),
                        None => self.metrics.rejected_input(code),
                    }
                    outcomes.push((Some(ReplyTo::Device(target)), effects));
                }
                Incoming::Peer(call) => {
                    self.stats.peer_requests += 1;
                    let op = match &call.request {
                        PeerRequest::Receive(_) => Some("receive"),
                        PeerRequest::Settle { .. } => Some("settle"),
                        PeerRequest::Operator(command) => Some(command.op.name()),
                        PeerRequest::Read(_) => None,
                    };
                    let (effects, read) = self.handle_peer(call.request, now);
                    if let (Some(op), Some(reply)) = (op, &effects.reply) {
                        self.metrics.command(op, reply.code);
                    }
                    outcomes.push((Some(ReplyTo::Peer { answer: call.answer, read }), effects));
                }
            }
        }
        if outcomes.is_empty() {
            return Ok(());
        }
        self.stats.groups += 1;
        self.committer.send(Group { outcomes }).map_err(|_| "the committer stopped".to_string())
    }

    fn handle_peer(&mut self, request: PeerRequest, now: u64) -> (Effects, Option<serde_json::Value>) {
        match request {
            PeerRequest::Receive(command) => (self.ledger.receive(command, now), None),
            PeerRequest::Settle { pending_id, decision } => (self.ledger.settle(&pending_id, &decision, now), None),
            PeerRequest::Read(read) => (Effects::default(), Some(read(&self.ledger))),
            PeerRequest::Operator(command) => (self.ledger.submit(Some(OPERATOR), command, now), None),
        }
    }

    /// The command's op (None: the input was not a command) and its effects.
    fn handle(&mut self, device: &str, payload: &bytes::Bytes, now: u64) -> (Option<&'static str>, Effects) {
        if payload.len() > self.limits.max_command_bytes {
            let rejection = Rejection::new(
                Code::PayloadTooLarge,
                format!("payload is {} bytes; the limit is {}", payload.len(), self.limits.max_command_bytes),
            );
            let id = command::peek_id(payload);
            return (None, Effects { reply: Some(Reply::rejected(id.as_deref(), rejection)), ..Effects::default() });
        }
        match command::parse(payload, self.limits.max_batch_ops) {
            Ok(cmd) => (Some(cmd.op.name()), self.ledger.submit(Some(device), cmd, now)),
            Err(rejection) => {
                let id = command::peek_id(payload);
                (None, Effects { reply: Some(Reply::rejected(id.as_deref(), rejection)), ..Effects::default() })
            }
        }
    }
}

impl Committer {
    pub fn new(store: Arc<Store>, chain: Chain, link_tx: LinkTx, edge_link: Option<EdgeLink>, metrics: Arc<Metrics>) -> Committer {
        Committer { store, chain, link_tx, edge_link, metrics }
    }

    /// Commits groups in order and answers each only after its commit returned. Returns when
    /// the intake hangs up, or with the error that makes the node stop without replying.
    pub fn run(mut self, groups: Receiver<Group>) -> Result<(), String> {
        for group in groups {
            if group.outcomes.iter().any(|(_, e)| e.entry.is_some() || !e.recorded.is_empty()) {
                // No reply leaves before this returns: a crash here loses only unanswered commands.
                let started = Instant::now();
                let sealed = self
                    .store
                    .commit(&mut self.chain, group.outcomes.iter().map(|(_, e)| e))
                    .map_err(|e| format!("commit failed, stopping without replying: {e}"))?;
                self.metrics.commit(group.outcomes.len(), started.elapsed());
                if let Some(link) = &self.edge_link {
                    link.committed(sealed, self.chain);
                }
                if started.elapsed() > SLOW_COMMIT {
                    tracing::warn!(ms = started.elapsed().as_millis() as u64, commands = group.outcomes.len(), "slow commit");
                }
            }
            for (target, effects) in group.outcomes {
                match (target, &effects.reply) {
                    (Some(ReplyTo::Device(target)), Some(reply)) => self.publish(&target, reply.to_json())?,
                    (Some(ReplyTo::Peer { answer, read }), reply) => {
                        let value = read.unwrap_or_else(|| serde_json::to_value(reply).expect("reply serializes"));
                        // The asker may have given up (timeout); it asks again.
                        let _ = answer.send(value);
                    }
                    _ => {}
                }
                for notice in &effects.notices {
                    let target = Target { topic: reply_topic(&notice.device), correlation: None, v5: false };
                    self.publish(&target, notice.to_json())?;
                }
            }
        }
        Ok(())
    }

    fn publish(&mut self, target: &Target, payload: Vec<u8>) -> Result<(), String> {
        let closed = |e: LinkError| format!("broker link closed: {e}");
        if !target.v5 {
            self.link_tx.publish(target.topic.clone(), payload).map_err(closed)?;
            return Ok(());
        }
        let properties = PublishProperties { correlation_data: target.correlation.clone(), ..Default::default() };
        let packet = Packet::Publish(Publish::new(bytes::Bytes::from(target.topic.clone()), bytes::Bytes::from(payload), false), Some(properties));
        // `LinkTx::send` is async only in name: it queues and signals without waiting.
        poll_once(self.link_tx.send(packet)).map(|_| ()).map_err(closed)
    }
}

fn usable_response_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.starts_with(broker::COMMAND_PREFIX) && !topic.contains(['+', '#'])
}

fn poll_once<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => unreachable!("LinkTx::send has no await point"),
    }
}
