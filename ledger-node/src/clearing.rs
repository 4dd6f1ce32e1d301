//! Transfers across nodes (SPEC §6). The source edge holds the amount against its clearing
//! account of the destination node and answers `pending`. Its region learns of the hold
//! from its replica and drives the transfer: it delivers it to the destination (through the
//! destination's region when that is another one), which credits the account from its
//! clearing account of the source or rejects, and journals that decision under the
//! transfer id; the region then brings the decision back to the source, which posts or
//! voids the hold and tells the device.
//!
//! The region keeps no state of its own for this. What is in flight is what its replicas
//! show as pending cross-node holds, and every step is idempotent (a redelivery gets the
//! recorded decision, a second settlement is a duplicate), so after a crash anywhere a step
//! is simply done again. A transfer is voided only on the destination's recorded rejection,
//! never because an answer is slow or missing.

use crate::command::{valid_address, valid_id, Command, Movement, Op};
use crate::intake::{PeerCall, PeerRequest, Waker};
use crate::ledger::{HoldState, Ledger};
use crate::money::format_minor;
use crate::queries::{self, HistoryParams, PageParams};
use crate::replication::Replicas;
use crate::reply::{Code, Reply, Status};
use crate::store::Store;
use bridge::zenoh::query::Query;
use bridge::zenoh::Session;
use bridge::{ask_json, keys, serve_json, serve_json_now, QUERY_TIMEOUT};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Transfers one region drives at once; the others wait in the replicas for a free slot.
pub const MAX_ACTIVE: usize = 512;
/// First and longest wait between attempts at one step.
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often a region looks for transfers when nothing woke it.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// A settled transfer whose replica still shows it pending after this is driven again (the
/// source's settlement entry has not replicated yet; doing it again is harmless).
pub const RESETTLE_AFTER: Duration = Duration::from_secs(30);
/// Longest decision message carried back to a source.
pub const MAX_MESSAGE_BYTES: usize = 512;
/// Most ops in one operator batch command.
pub const MAX_OPERATOR_BATCH: usize = 100;
/// Largest request payload a node reads.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// A cross-node transfer as the destination sees it. `id` is the source's command id; with
/// `source` it names the transfer everywhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub source: String,
    pub id: String,
    /// `name@source`
    pub debit: String,
    /// `name@destination`
    pub credit: String,
    pub asset: String,
    pub amount: String,
}

impl Delivery {
    /// The destination node, from the credit address.
    pub fn destination(&self) -> &str {
        self.credit.split_once('@').map_or("", |(_, node)| node)
    }

    fn key(&self) -> String {
        format!("{}|{}", self.source, self.id)
    }

    /// Hard checks at the boundary: a delivery comes from the network.
    fn check(&self, destination: &str) -> Result<(), String> {
        if !valid_node(&self.source) {
            return Err(format!("source: {:?} is not a node id", self.source));
        }
        if !valid_id(&self.id) {
            return Err(format!("id: {:?} is not a command id", self.id));
        }
        if !valid_address(&self.debit) || !valid_address(&self.credit) {
            return Err("debit, credit: not account addresses".to_string());
        }
        if self.destination() != destination {
            return Err(format!("credit: {} is not an account of {destination}", self.credit));
        }
        if self.asset.len() > 12 || self.amount.len() > 64 {
            return Err("asset, amount: too long".to_string());
        }
        Ok(())
    }

    fn command(self) -> Command {
        let movement = Movement { debit: self.debit, credit: self.credit, amount: self.amount, asset: self.asset, metadata: None };
        Command { id: self.id, op: Op::Receive { source: self.source, movement } }
    }
}

/// The destination's decision on its way back to the source.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settlement {
    pub pending_id: String,
    pub decision: Reply,
}

fn valid_node(node: &str) -> bool {
    valid_address(&format!("x@{node}"))
}

fn payload<T: serde::de::DeserializeOwned>(query: &Query) -> Result<T, String> {
    let bytes = query.payload().map(|p| p.to_bytes().into_owned()).unwrap_or_default();
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(format!("payload: {} bytes; the limit is {MAX_REQUEST_BYTES}", bytes.len()));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("payload: {e}"))
}

fn error(message: impl Into<String>) -> Value {
    json!({ "error": message.into() })
}

/// An edge's door for requests that go through its intake.
#[derive(Clone)]
pub struct Desk {
    peers: SyncSender<PeerCall>,
    waker: Arc<Waker>,
}

impl Desk {
    pub fn new(peers: SyncSender<PeerCall>, waker: Waker) -> Desk {
        Desk { peers, waker: Arc::new(waker) }
    }

    /// Queues a request for the intake and waits for its answer (after its group commits).
    pub async fn ask(&self, request: PeerRequest) -> Value {
        let (answer, answered) = tokio::sync::oneshot::channel();
        match self.peers.try_send(PeerCall { request, answer }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return error("busy: the node's request queue is full; ask again"),
            Err(TrySendError::Disconnected(_)) => return error("the node is stopping"),
        }
        self.waker.wake();
        match tokio::time::timeout(QUERY_TIMEOUT, answered).await {
            Ok(Ok(value)) => value,
            _ => error("no answer in time; ask again"),
        }
    }
}

/// Starts an edge's queryables: deliveries and settlements from its region, and operator
/// reads of its books.
pub fn serve_edge(session: &Session, edge: &str, desk: Desk, store: Arc<Store>) {
    let (me, d) = (edge.to_string(), desk.clone());
    tokio::spawn(serve_json(session.clone(), keys::transfer_deliver(edge), move |query| {
        let (me, desk) = (me.clone(), d.clone());
        async move {
            let answer = match payload::<Delivery>(&query).and_then(|d| d.check(&me).map(|()| d)) {
                Ok(delivery) => desk.ask(PeerRequest::Receive(delivery.command())).await,
                Err(e) => error(e),
            };
            (query, answer)
        }
    }));
    let d = desk.clone();
    tokio::spawn(serve_json(session.clone(), keys::transfer_settle(edge), move |query| {
        let desk = d.clone();
        async move {
            let answer = match payload::<Settlement>(&query) {
                Ok(mut s) if valid_id(&s.pending_id) => {
                    truncate(&mut s.decision.message, MAX_MESSAGE_BYTES);
                    desk.ask(PeerRequest::Settle { pending_id: s.pending_id, decision: s.decision }).await
                }
                Ok(_) => error("pending_id: not a command id"),
                Err(e) => error(e),
            };
            (query, answer)
        }
    }));
    let (me, d) = (edge.to_string(), desk.clone());
    tokio::spawn(serve_json(session.clone(), keys::balance(edge), move |query| {
        let (me, desk) = (me.clone(), d.clone());
        async move {
            let account = query.parameters().get("account").ok_or("account: missing (?account=NAME)".to_string());
            let answer = match account.and_then(|a| own_name(a, &me)) {
                Ok(account) => {
                    let read = move |ledger: &Ledger| match ledger.balance_view(&account) {
                        Some(view) => json!({"balance": view, "seq": ledger.head().seq}),
                        None => json!({"error": format!("account: {account} does not exist on {}", ledger.node_id())}),
                    };
                    desk.ask(PeerRequest::Read(Box::new(read))).await
                }
                Err(e) => error(e),
            };
            (query, answer)
        }
    }));
    let d = desk.clone();
    tokio::spawn(serve_json(session.clone(), keys::accounts(edge), move |query| {
        let desk = d.clone();
        async move {
            let answer = match PageParams::from_query(&query) {
                Ok(page) => desk.ask(PeerRequest::Read(Box::new(move |ledger: &Ledger| queries::accounts_page(ledger, &page)))).await,
                Err(e) => error(e),
            };
            (query, answer)
        }
    }));
    let d = desk.clone();
    tokio::spawn(serve_json(session.clone(), keys::transfers(edge), move |query| {
        let desk = d.clone();
        async move {
            let side = query.parameters().get("side").unwrap_or("out").to_string();
            let answer = match PageParams::from_query(&query) {
                Ok(page) => desk.ask(PeerRequest::Read(Box::new(move |ledger: &Ledger| queries::transfers_page(ledger, &side, &page)))).await,
                Err(e) => error(e),
            };
            (query, answer)
        }
    }));
    let d = desk.clone();
    tokio::spawn(serve_json(session.clone(), keys::command(edge), move |query| {
        let desk = d.clone();
        async move {
            let bytes = query.payload().map(|p| p.to_bytes().to_vec()).unwrap_or_default();
            let answer = if bytes.len() > MAX_REQUEST_BYTES {
                error(format!("command: {} bytes; the limit is {MAX_REQUEST_BYTES}", bytes.len()))
            } else {
                match crate::command::parse(&bytes, MAX_OPERATOR_BATCH) {
                    Ok(command) => desk.ask(PeerRequest::Operator(command)).await,
                    Err(rejection) => serde_json::to_value(Reply::rejected(crate::command::peek_id(&bytes).as_deref(), rejection)).expect("reply serializes"),
                }
            };
            (query, answer)
        }
    }));
    let me = edge.to_string();
    tokio::spawn(serve_json(session.clone(), keys::pending(edge), move |query| {
        let (me, desk) = (me.clone(), desk.clone());
        async move {
            let limit = query.parameters().get("limit").and_then(|l| l.parse().ok()).unwrap_or(queries::MAX_ANSWER_ROWS);
            let answer = match query.parameters().get("account").map(|a| own_name(a, &me)).transpose() {
                Ok(account) => {
                    let read = move |ledger: &Ledger| json!({"pending": queries::holds_json(ledger, account.as_deref(), limit), "seq": ledger.head().seq});
                    desk.ask(PeerRequest::Read(Box::new(read))).await
                }
                Err(e) => error(e),
            };
            (query, answer)
        }
    }));
    let me = edge.to_string();
    tokio::spawn(serve_json(session.clone(), keys::history(edge), move |query| {
        let (me, store) = (me.clone(), store.clone());
        async move {
            let params = HistoryParams::from_query(&query).and_then(|p| own_name(&p.account, &me).map(|name| HistoryParams { account: name, ..p }));
            let answer = match params {
                Ok(params) => {
                    tokio::task::spawn_blocking(move || queries::history(&store, None, &params)).await.unwrap_or_else(|e| error(e.to_string()))
                }
                Err(e) => error(e),
            };
            (query, answer)
        }
    }));
}

/// The local name of `name` or `name@node` when `node` is this one; an edge answers for
/// its own accounts only.
fn own_name(account: &str, node: &str) -> Result<String, String> {
    match account.split_once('@') {
        None => Ok(account.to_string()),
        Some((name, at)) if at == node => Ok(name.to_string()),
        Some((_, at)) => Err(format!("account: {account} lives on {at}, not {node}; ask {at} or its region")),
    }
}

fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Stage {
    /// Waiting for the destination's decision.
    Delivering,
    /// Decided; waiting for the source to post or void.
    Settling,
    /// The source settled; waiting for its entry to reach the replica.
    Settled,
}

/// One transfer a region is driving, as its in-flight query shows it.
#[derive(Debug, Clone, Serialize)]
struct Flight {
    #[serde(flatten)]
    delivery: Delivery,
    stage: Stage,
    attempts: u32,
    last_error: Option<String>,
    decision: Option<Code>,
    since_ms: u64,
    #[serde(skip)]
    settled_at: Option<Instant>,
}

/// A region's driver of the cross-node transfers its edges send.
pub struct Coordinator {
    region: String,
    session: Session,
    replicas: Replicas,
    wake: Arc<Notify>,
    flights: Mutex<BTreeMap<String, Flight>>,
}

impl Coordinator {
    pub fn new(region: &str, session: Session, replicas: Replicas, wake: Arc<Notify>) -> Arc<Coordinator> {
        Arc::new(Coordinator { region: region.to_string(), session, replicas, wake, flights: Mutex::new(BTreeMap::new()) })
    }

    /// Drives transfers for ever: wakes when a replica grows, or every `SCAN_INTERVAL`.
    pub async fn run(self: Arc<Self>) {
        let me = self.region.clone();
        let this = self.clone();
        tokio::spawn(serve_json(self.session.clone(), keys::transfer_relay(&me), move |query| {
            let this = this.clone();
            async move {
                let answer = this.relay(&query).await.unwrap_or_else(error);
                (query, answer)
            }
        }));
        let this = self.clone();
        tokio::spawn(serve_json_now(self.session.clone(), keys::in_flight(&me), move |_| this.in_flight()));
        loop {
            let _ = tokio::time::timeout(SCAN_INTERVAL, self.wake.notified()).await;
            for delivery in self.scan() {
                tokio::spawn(self.clone().drive(delivery));
            }
        }
    }

    /// New transfers to drive, taken from the replicas; forgets settled ones the replicas
    /// show resolved.
    fn scan(&self) -> Vec<Delivery> {
        let replicas = self.replicas.lock().expect("replicas");
        let mut flights = self.flights.lock().expect("flights");
        flights.retain(|_, f| {
            if f.stage != Stage::Settled {
                return true;
            }
            let still_pending = replicas
                .get(&f.delivery.source)
                .and_then(|r| r.ledger.hold(&f.delivery.id))
                .is_some_and(|h| h.state == HoldState::Pending);
            still_pending && f.settled_at.is_some_and(|t| t.elapsed() < RESETTLE_AFTER)
        });
        let mut new = Vec::new();
        'edges: for (edge, replica) in replicas.iter() {
            for (id, hold) in replica.ledger.outgoing() {
                if flights.len() >= MAX_ACTIVE {
                    break 'edges;
                }
                let key = format!("{edge}|{id}");
                if flights.contains_key(&key) {
                    continue;
                }
                let scale = replica.ledger.scale_of(&hold.asset).unwrap_or(0);
                let delivery = Delivery {
                    source: edge.clone(),
                    id: id.clone(),
                    debit: format!("{}@{edge}", hold.debit),
                    credit: hold.remote.clone().expect("outgoing holds have a destination"),
                    asset: hold.asset.clone(),
                    amount: format_minor(hold.amount, scale),
                };
                let flight = Flight {
                    delivery: delivery.clone(),
                    stage: Stage::Delivering,
                    attempts: 0,
                    last_error: None,
                    decision: None,
                    since_ms: crate::intake::now_ms(),
                    settled_at: None,
                };
                flights.insert(key, flight);
                new.push(delivery);
            }
        }
        new
    }

    /// Takes one transfer to its end: the destination's decision, then the source's
    /// settlement, each retried with back-off until it is acknowledged.
    async fn drive(self: Arc<Self>, delivery: Delivery) {
        let key = delivery.key();
        let mut wait = RETRY_FIRST;
        let decision = loop {
            match self.deliver(&delivery).await {
                Ok(decision) => break decision,
                Err(e) => self.failed(&key, e, &mut wait).await,
            }
        };
        self.advance(&key, Stage::Settling, Some(decision.code));
        let mut wait = RETRY_FIRST;
        loop {
            match self.settle(&delivery, &decision).await {
                Ok(()) => break,
                Err(e) => self.failed(&key, e, &mut wait).await,
            }
        }
        self.advance(&key, Stage::Settled, Some(decision.code));
    }

    async fn failed(&self, key: &str, why: String, wait: &mut Duration) {
        tracing::debug!(transfer = key, "{why}; retrying in {wait:?}");
        if let Some(f) = self.flights.lock().expect("flights").get_mut(key) {
            f.attempts += 1;
            f.last_error = Some(why);
        }
        tokio::time::sleep(*wait).await;
        *wait = (*wait * 2).min(RETRY_MAX);
    }

    fn advance(&self, key: &str, stage: Stage, decision: Option<Code>) {
        if let Some(f) = self.flights.lock().expect("flights").get_mut(key) {
            f.stage = stage;
            f.decision = decision;
            f.last_error = None;
            if stage == Stage::Settled {
                f.settled_at = Some(Instant::now());
            }
        }
    }

    /// The destination's recorded decision: straight from it when it is one of our edges,
    /// through its region otherwise.
    async fn deliver(&self, delivery: &Delivery) -> Result<Reply, String> {
        let destination = delivery.destination();
        let region = destination.split('/').next().unwrap_or_default();
        let selector = if region == self.region { keys::transfer_deliver(destination) } else { keys::transfer_relay(region) };
        let payload = serde_json::to_string(delivery).expect("delivery serializes");
        let answer = ask_json(&self.session, &selector, Some(payload), QUERY_TIMEOUT).await?;
        decision_of(answer)
    }

    async fn settle(&self, delivery: &Delivery, decision: &Reply) -> Result<(), String> {
        let settlement = Settlement { pending_id: delivery.id.clone(), decision: decision.clone() };
        let payload = serde_json::to_string(&settlement).expect("settlement serializes");
        let answer = ask_json(&self.session, &keys::transfer_settle(&delivery.source), Some(payload), QUERY_TIMEOUT).await?;
        if let Some(e) = answer["error"].as_str() {
            return Err(format!("{}: {e}", delivery.source));
        }
        let ack: Reply = serde_json::from_value(answer).map_err(|e| format!("{}: settlement answer: {e}", delivery.source))?;
        match ack.code {
            Code::Ok => Ok(()),
            code => Err(format!("{} refused the settlement: {}: {}", delivery.source, code.as_str(), ack.message)),
        }
    }

    /// A delivery for one of this region's edges, from another region's coordinator.
    async fn relay(&self, query: &Query) -> Result<Value, String> {
        let delivery: Delivery = payload(query)?;
        let destination = delivery.destination().to_string();
        if destination.split('/').next() != Some(self.region.as_str()) || !destination.contains('/') {
            return Err(format!("credit: {destination} is not an edge of region {}", self.region));
        }
        delivery.check(&destination)?;
        let payload = serde_json::to_string(&delivery).expect("delivery serializes");
        ask_json(&self.session, &keys::transfer_deliver(&destination), Some(payload), QUERY_TIMEOUT).await
    }

    /// Gauges for the region's metrics: transfers driven now, by stage, and waiting.
    pub fn gauges(self: &Arc<Self>) -> crate::metrics::Gauges {
        let this = self.clone();
        Box::new(move |out: &mut String| {
            let waiting: usize = this.replicas.lock().expect("replicas").values().map(|r| r.ledger.outgoing_count()).sum();
            let (mut delivering, mut settling) = (0, 0);
            for flight in this.flights.lock().expect("flights").values() {
                match flight.stage {
                    Stage::Delivering => delivering += 1,
                    Stage::Settling => settling += 1,
                    Stage::Settled => {}
                }
            }
            out.push_str("# HELP edgeledger_transfers_in_flight Cross-node transfers this region drives now, by stage.\n");
            out.push_str("# TYPE edgeledger_transfers_in_flight gauge\n");
            out.push_str(&format!("edgeledger_transfers_in_flight{{stage=\"delivering\"}} {delivering}\n"));
            out.push_str(&format!("edgeledger_transfers_in_flight{{stage=\"settling\"}} {settling}\n"));
            out.push_str("# HELP edgeledger_transfers_pending_in_replicas Cross-node holds still pending in this region's replicas.\n");
            out.push_str("# TYPE edgeledger_transfers_pending_in_replicas gauge\n");
            out.push_str(&format!("edgeledger_transfers_pending_in_replicas {waiting}\n"));
        })
    }

    fn in_flight(&self) -> Value {
        let waiting: usize = self.replicas.lock().expect("replicas").values().map(|r| r.ledger.outgoing_count()).sum();
        let flights = self.flights.lock().expect("flights");
        let shown: Vec<&Flight> = flights.values().filter(|f| f.stage != Stage::Settled).take(queries::MAX_ANSWER_ROWS).collect();
        let active = flights.values().filter(|f| f.stage != Stage::Settled).count();
        json!({"region": self.region, "in_flight": shown, "active": active, "pending_in_replicas": waiting})
    }
}

/// A destination's answer, accepted as a decision only when it was journaled (it has a
/// sequence number) and is final: a conflict or an error is not a rejection of the transfer.
fn decision_of(answer: Value) -> Result<Reply, String> {
    if let Some(e) = answer["error"].as_str() {
        return Err(e.to_string());
    }
    let reply: Reply = serde_json::from_value(answer).map_err(|e| format!("decision: {e}"))?;
    match (reply.status, reply.seq, reply.code) {
        (_, _, Code::IdConflict) => Err(format!("the destination holds other content under this id: {}", reply.message)),
        (Status::Committed | Status::Rejected, Some(_), _) => Ok(reply),
        _ => Err(format!("not a recorded decision: {} {}", reply.code.as_str(), reply.message)),
    }
}

/// A region's operator reads of its edges, from the replicas: pending holds and history.
pub fn serve_region_queries(session: &Session, region: &str, replicas: Replicas, store: Arc<Store>) {
    let me = region.to_string();
    let held = replicas.clone();
    tokio::spawn(serve_json_now(session.clone(), keys::pending(region), move |query| pending_in_replicas(&me, &held, query)));
    let (me, held) = (region.to_string(), replicas.clone());
    tokio::spawn(serve_json_now(session.clone(), keys::accounts(region), move |query| {
        in_replica(&me, &held, query, |ledger, page| queries::accounts_page(ledger, page))
    }));
    let (me, held) = (region.to_string(), replicas.clone());
    tokio::spawn(serve_json_now(session.clone(), keys::transfers(region), move |query| {
        let side = query.parameters().get("side").unwrap_or("out").to_string();
        in_replica(&me, &held, query, |ledger, page| queries::transfers_page(ledger, &side, page))
    }));
    let me = region.to_string();
    tokio::spawn(serve_json(session.clone(), keys::history(region), move |query| {
        let (store, me, replicas) = (store.clone(), me.clone(), replicas.clone());
        async move {
            let answer = match HistoryParams::from_query(&query) {
                Ok(mut params) => match params.account.split_once('@').map(|(n, e)| (n.to_string(), e.to_string())) {
                    Some((name, edge)) if edge.starts_with(&format!("{me}/")) => {
                        params.account = name;
                        // Freshness first: the replica may only have grown while we read.
                        let fresh = replicas.lock().expect("replicas").get(&edge).map(|r| (r.chain.seq, r.updated_ms));
                        let answer = tokio::task::spawn_blocking(move || queries::history(&store, Some(&edge), &params)).await;
                        let mut answer = answer.unwrap_or_else(|e| error(e.to_string()));
                        if let Some((seq, updated_ms)) = fresh {
                            answer["replica_seq"] = json!(seq);
                            answer["updated_ms"] = json!(updated_ms);
                        }
                        answer
                    }
                    _ => error(format!("account: {:?} must name an edge of {me}, like wallet:alice@{me}/edge-1", params.account)),
                },
                Err(e) => error(e),
            };
            (query, answer)
        }
    }));
}

/// `?edge=E;after=…;limit=N`: a page read from the replica of edge E, with its freshness.
fn in_replica(region: &str, replicas: &Replicas, query: &Query, read: impl Fn(&Ledger, &PageParams) -> Value) -> Value {
    let Some(edge) = query.parameters().get("edge").map(str::to_string) else {
        return error(format!("edge: missing (?edge=E, an edge of {region})"));
    };
    let page = match PageParams::from_query(query) {
        Ok(page) => page,
        Err(e) => return error(e),
    };
    let all = replicas.lock().expect("replicas");
    match all.get(&edge) {
        None => error(format!("edge: {edge} is not an edge of region {region}")),
        Some(r) => {
            let mut answer = read(&r.ledger, &page);
            answer["edge"] = json!(edge);
            answer["replica_seq"] = json!(r.chain.seq);
            answer["updated_ms"] = json!(r.updated_ms);
            answer
        }
    }
}

/// `?edge=E` or `?account=name@E`: pending holds in the replica of edge E, with freshness.
fn pending_in_replicas(region: &str, replicas: &Replicas, query: &Query) -> Value {
    let params = query.parameters();
    let limit = params.get("limit").and_then(|l| l.parse().ok()).unwrap_or(queries::MAX_ANSWER_ROWS);
    let (account, edge) = match (params.get("account"), params.get("edge")) {
        (Some(a), _) => match a.split_once('@') {
            Some((name, edge)) => (Some(name.to_string()), edge.to_string()),
            None => return error(format!("account: {a:?} must name its edge, like wallet:alice@{region}/edge-1")),
        },
        (None, Some(edge)) => (None, edge.to_string()),
        (None, None) => return error("edge or account: missing (?edge=E or ?account=name@E)"),
    };
    let all = replicas.lock().expect("replicas");
    match all.get(&edge) {
        None => error(format!("edge: {edge} is not an edge of region {region}")),
        Some(r) => json!({
            "edge": edge,
            "pending": queries::holds_json(&r.ledger, account.as_deref(), limit),
            "replica_seq": r.chain.seq,
            "updated_ms": r.updated_ms,
        }),
    }
}
