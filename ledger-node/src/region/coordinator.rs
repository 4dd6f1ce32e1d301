//! A region's coordinator of cross-node transfers (SPEC §6). The source edge holds the
//! amount against its clearing account of the destination node and answers `pending`. Its
//! region learns of the hold from its replica and drives the transfer: it delivers it to the
//! destination (through the destination's region when that is another one), which credits
//! the account from its clearing account of the source or rejects, and journals that
//! decision under the transfer id; the region then brings the decision back to the source,
//! which posts or voids the hold and tells the device.
//!
//! The region keeps no state of its own for this. What is in flight is what its replicas
//! show as pending cross-node holds, and every step is idempotent (a redelivery gets the
//! recorded decision, a second settlement is a duplicate), so after a crash anywhere a step
//! is simply done again. A transfer is voided only on the destination's recorded rejection,
//! never because an answer is slow or missing.

use super::replicas::Replicas;
use crate::books::queries;
use crate::clock::now_ms;
use crate::core::address::{qualified, NodeId, TransferKey};
use crate::core::money::format_minor;
use crate::core::reply::{Code, Reply};
use crate::core::transfer::{decision_of, Delivery, Settlement};
use crate::metrics::{gauge, GaugeFamily, Gauges};
use bridge::sign::{delivery_message, NodeKeys};
use bridge::zenoh::query::Query;
use bridge::zenoh::Session;
use bridge::{ask_json, keys, serve_json, serve_json_now, Answer, Refusal, QUERY_TIMEOUT};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
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

/// A destination's recorded decision and, with node identities, its signature over it.
struct Decided {
    reply: Reply,
    proof: Option<Value>,
}

/// A region's driver of the cross-node transfers its edges send.
pub struct Coordinator {
    region: String,
    /// With node identities: signs each delivery (this region read the hold in the
    /// source's signed journal).
    keys: Option<Arc<NodeKeys>>,
    /// The regions whose relays this one takes (`zenoh.peer_regions`); empty: any other.
    peer_regions: Vec<String>,
    session: Session,
    replicas: Replicas,
    wake: Arc<Notify>,
    flights: Mutex<BTreeMap<TransferKey, Flight>>,
}

impl Coordinator {
    pub fn new(
        region: &str,
        peer_regions: Vec<String>,
        keys: Option<Arc<NodeKeys>>,
        session: Session,
        replicas: Replicas,
        wake: Arc<Notify>,
    ) -> Arc<Coordinator> {
        let flights = Mutex::new(BTreeMap::new());
        Arc::new(Coordinator { region: region.to_string(), keys, peer_regions, session, replicas, wake, flights })
    }

    /// Drives transfers for ever: wakes when a replica grows, or every `SCAN_INTERVAL`.
    pub async fn run(self: Arc<Self>) {
        let me = self.region.clone();
        let this = self.clone();
        tokio::spawn(serve_json(self.session.clone(), keys::transfer_relay(&me), move |query| {
            let this = this.clone();
            async move {
                let answer = this.relay(&query).await;
                (query, answer)
            }
        }));
        let this = self.clone();
        tokio::spawn(serve_json_now(self.session.clone(), keys::in_flight(&me), move |_| Ok(this.in_flight())));
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
            let still_pending =
                replicas.get(&f.delivery.source).and_then(|r| r.ledger.hold(&f.delivery.id)).is_some_and(|h| h.is_pending());
            still_pending && f.settled_at.is_some_and(|t| t.elapsed() < RESETTLE_AFTER)
        });
        let mut new = Vec::new();
        'edges: for (edge, replica) in replicas.iter() {
            for (id, hold) in replica.ledger.outgoing() {
                if flights.len() >= MAX_ACTIVE {
                    break 'edges;
                }
                let key = TransferKey::new(edge, id);
                if flights.contains_key(&key) {
                    continue;
                }
                let scale = replica.ledger.scale_of(&hold.asset).unwrap_or(0);
                let delivery = Delivery {
                    source: edge.clone(),
                    id: id.clone(),
                    debit: qualified(&hold.debit, edge),
                    credit: hold.remote.clone().expect("outgoing holds have a destination"),
                    asset: hold.asset.clone(),
                    amount: format_minor(hold.amount, scale),
                    proof: None,
                };
                let flight = Flight {
                    delivery: delivery.clone(),
                    stage: Stage::Delivering,
                    attempts: 0,
                    last_error: None,
                    decision: None,
                    since_ms: now_ms(),
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
        self.advance(&key, Stage::Settling, Some(decision.reply.code));
        let mut wait = RETRY_FIRST;
        loop {
            match self.settle(&delivery, &decision).await {
                Ok(()) => break,
                Err(e) => self.failed(&key, e, &mut wait).await,
            }
        }
        self.advance(&key, Stage::Settled, Some(decision.reply.code));
    }

    async fn failed(&self, key: &TransferKey, why: String, wait: &mut Duration) {
        tracing::debug!(transfer = %key, "{why}; retrying in {wait:?}");
        if let Some(f) = self.flights.lock().expect("flights").get_mut(key) {
            f.attempts += 1;
            f.last_error = Some(why);
        }
        tokio::time::sleep(*wait).await;
        *wait = (*wait * 2).min(RETRY_MAX);
    }

    fn advance(&self, key: &TransferKey, stage: Stage, decision: Option<Code>) {
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
    async fn deliver(&self, delivery: &Delivery) -> Result<Decided, String> {
        let destination = NodeId::parse(delivery.destination()).ok_or_else(|| format!("credit: {} names no node", delivery.credit))?;
        let region = destination.region();
        let selector = if region == self.region { keys::transfer_deliver(destination.as_str()) } else { keys::transfer_relay(region) };
        let mut delivery = delivery.clone();
        if let Some(keys) = &self.keys {
            let d = &delivery;
            let message = delivery_message(&d.source, &d.id, &d.debit, &d.credit, &d.asset, &d.amount);
            delivery.proof = Some(serde_json::to_value(keys.signer.sign(&message)).expect("a proof serializes"));
        }
        let payload = serde_json::to_string(&delivery).expect("delivery serializes");
        let mut answer = ask_json(&self.session, &selector, Some(payload), QUERY_TIMEOUT).await.map_err(|e| e.to_string())?;
        // The destination's signature travels on to the source untouched.
        let proof = answer.as_object_mut().and_then(|a| a.remove("proof"));
        let reply: Reply = serde_json::from_value(answer).map_err(|e| format!("decision: {e}"))?;
        Ok(Decided { reply: decision_of(reply)?, proof })
    }

    async fn settle(&self, delivery: &Delivery, decided: &Decided) -> Result<(), String> {
        let settlement = Settlement { pending_id: delivery.id.clone(), decision: decided.reply.clone(), proof: decided.proof.clone() };
        let payload = serde_json::to_string(&settlement).expect("settlement serializes");
        let answer =
            ask_json(&self.session, &keys::transfer_settle(&delivery.source), Some(payload), QUERY_TIMEOUT).await.map_err(|e| {
                match e.refusal() {
                    Some(refusal) => format!("{}: {refusal}", delivery.source),
                    None => e.to_string(),
                }
            })?;
        let ack: Reply = serde_json::from_value(answer).map_err(|e| format!("{}: settlement answer: {e}", delivery.source))?;
        match ack.code {
            Code::Ok => Ok(()),
            code => Err(format!("{} refused the settlement: {}: {}", delivery.source, code.as_str(), ack.message)),
        }
    }

    /// A delivery for one of this region's edges, from another region's coordinator.
    async fn relay(&self, query: &Query) -> Answer {
        let delivery: Delivery = bridge::query_json(query, bridge::MAX_REQUEST_BYTES)?;
        let destination = NodeId::parse(delivery.destination()).filter(|d| d.is_edge() && d.region() == self.region);
        let Some(destination) = destination else {
            return Err(Refusal::not_found(format!("credit: {} is not an edge of region {}", delivery.destination(), self.region)));
        };
        delivery.check(destination.as_str()).map_err(Refusal::invalid)?;
        // A relay carries a transfer from another region's edge: never one of ours (our
        // edges' transfers are in our replicas), never from a region we do not trade with.
        let source_region = NodeId::parse(&delivery.source).map(|s| s.region().to_string());
        let from_peer = source_region
            .as_deref()
            .is_some_and(|r| r != self.region && (self.peer_regions.is_empty() || self.peer_regions.iter().any(|p| p == r)));
        if !from_peer {
            return Err(Refusal::invalid(format!("source: {} is not an edge of a peer region of {}", delivery.source, self.region)));
        }
        let payload = serde_json::to_string(&delivery).expect("delivery serializes");
        ask_json(&self.session, &keys::transfer_deliver(destination.as_str()), Some(payload), QUERY_TIMEOUT).await.map_err(|e| match e {
            bridge::AskError::Refused { refusal, .. } => refusal,
            other => Refusal::unavailable(other.to_string()),
        })
    }

    /// Gauges for the region's metrics: transfers driven now, by stage, and waiting.
    pub fn gauges(self: &Arc<Self>) -> Gauges {
        let this = self.clone();
        Box::new(move |out: &mut Vec<GaugeFamily>| {
            let waiting: usize = this.replicas.lock().expect("replicas").values().map(|r| r.ledger.outgoing_count()).sum();
            let (mut delivering, mut settling) = (0, 0);
            for flight in this.flights.lock().expect("flights").values() {
                match flight.stage {
                    Stage::Delivering => delivering += 1,
                    Stage::Settling => settling += 1,
                    Stage::Settled => {}
                }
            }
            let help = "Cross-node transfers this region drives now, by stage.";
            gauge(
                out,
                "edgeledger_transfers_in_flight",
                help,
                [(vec![("stage", "delivering".to_string())], delivering), (vec![("stage", "settling".to_string())], settling)],
            );
            let help = "Cross-node holds still pending in this region's replicas.";
            gauge(out, "edgeledger_transfers_pending_in_replicas", help, [(vec![], waiting as u64)]);
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
