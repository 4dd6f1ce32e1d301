//! A region's coordinator of cross-node transfers (SPEC §6). The source edge holds the
//! amount against its clearing account of the destination node and answers `pending`. Its
//! region learns of the hold from its replica and drives the transfer: it delivers it to the
//! destination (through the destination's region when that is another one), which credits
//! the account from its clearing account of the source or rejects, and journals that
//! decision under the transfer id; the region then brings the decision back to the source,
//! which posts or voids the hold and tells the device.
//!
//! Transfers travel in bulk: one message carries up to `MAX_TRANSFER_BATCH` deliveries to
//! one destination edge, or settlements to one source edge, signed once (`lanes`), and the
//! receiving edge decides them in one group commit; each transfer's outcome comes back on
//! its own, so one that fails is retried alone, with back-off.
//!
//! The region keeps no state of its own for this. What is in flight is what its replicas
//! show as pending cross-node holds, and every step is idempotent (a redelivery gets the
//! recorded decision, a second settlement is a duplicate), so after a crash anywhere a step
//! is simply done again. A transfer is voided only on the destination's recorded rejection,
//! never because an answer is slow or missing.

use super::lanes::{self, Decision, Outcomes};
use super::replicas::Replicas;
use crate::books::queries;
use crate::clock::now_ms;
use crate::core::address::{qualified, NodeId, TransferKey};
use crate::core::money::format_minor;
use crate::core::reply::Code;
use crate::core::transfer::Delivery;
use crate::metrics::{gauge, GaugeFamily, Gauges};
use bridge::sign::NodeKeys;
use bridge::zenoh::Session;
use bridge::{keys, serve_json, serve_json_now, MAX_TRANSFER_BATCH};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Transfers one region drives at once, settled ones included until their replica shows
/// them resolved; the others wait in the replicas for a free slot.
pub const MAX_ACTIVE: usize = 4096;
/// Bulk messages on their way to one edge at once, per stage (deliveries to a destination,
/// settlements to a source); each carries at most `MAX_TRANSFER_BATCH` transfers.
pub const BATCHES_IN_FLIGHT: usize = 2;
/// First and longest wait between attempts at one step.
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often a region looks for transfers when nothing woke it.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// A settled transfer whose replica still shows it pending after this is driven again (the
/// source's settlement entry has not replicated yet; doing it again is harmless).
pub const RESETTLE_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
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
    /// In a message on its way now.
    #[serde(skip)]
    sending: bool,
    /// Not sent again before this (back-off after a failed attempt).
    #[serde(skip)]
    retry_at: Option<Instant>,
    #[serde(skip)]
    wait: Duration,
    /// The destination's decision, from `Settling` on.
    #[serde(skip)]
    decided: Option<Decision>,
}

/// A stage of transfers to one edge (the destination when delivering, the source when
/// settling): what shares a bulk message.
type Lane = (Stage, String);

/// Transfers sent together in one message.
struct Batch {
    lane: Lane,
    keys: Vec<TransferKey>,
}

/// What a message did for one transfer.
#[derive(Clone)]
enum Step {
    Decided(Box<Decision>),
    Settled,
    /// The source refused the decision itself: it is fetched again.
    Redeliver(String),
}

/// A region's driver of the cross-node transfers its edges send.
pub struct Coordinator {
    region: String,
    /// With node identities: signs each batch of deliveries (this region read the holds in
    /// the source's signed journal).
    keys: Option<Arc<NodeKeys>>,
    /// The regions whose relays this one takes (`zenoh.peer_regions`); empty: any other.
    peer_regions: Vec<String>,
    session: Session,
    replicas: Replicas,
    wake: Arc<Notify>,
    flights: Mutex<Flights>,
}

#[derive(Default)]
struct Flights {
    by_key: BTreeMap<TransferKey, Flight>,
    /// Messages on their way per lane (at most `BATCHES_IN_FLIGHT`).
    sending: HashMap<Lane, usize>,
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
        let flights = Mutex::new(Flights::default());
        Arc::new(Coordinator { region: region.to_string(), keys, peer_regions, session, replicas, wake, flights })
    }

    /// Drives transfers for ever: wakes when a replica grows, a message is answered, a
    /// retry is due, or every `SCAN_INTERVAL`.
    pub async fn run(self: Arc<Self>) {
        let me = self.region.clone();
        let this = self.clone();
        tokio::spawn(serve_json(self.session.clone(), keys::transfer_relay(&me), move |query| {
            let this = this.clone();
            async move {
                let answer = lanes::relay(&this.session, &this.region, &this.peer_regions, &query).await;
                (query, answer)
            }
        }));
        let this = self.clone();
        tokio::spawn(serve_json(self.session.clone(), keys::transfer_relays(&me), move |query| {
            let this = this.clone();
            async move {
                let answer = lanes::relay_batch(&this.session, &this.region, &this.peer_regions, &query).await;
                (query, answer)
            }
        }));
        let this = self.clone();
        tokio::spawn(serve_json_now(self.session.clone(), keys::in_flight(&me), move |_| Ok(this.in_flight())));
        loop {
            let nap = self.until_next_retry().min(SCAN_INTERVAL);
            let _ = tokio::time::timeout(nap, self.wake.notified()).await;
            self.scan();
            for batch in self.due() {
                tokio::spawn(self.clone().send(batch));
            }
        }
    }

    /// New transfers to drive, taken from the replicas; forgets settled ones the replicas
    /// show resolved.
    fn scan(&self) {
        let replicas = self.replicas.lock().expect("replicas");
        let flights = &mut self.flights.lock().expect("flights").by_key;
        flights.retain(|_, f| {
            if f.stage != Stage::Settled {
                return true;
            }
            let still_pending =
                replicas.get(&f.delivery.source).and_then(|r| r.ledger.hold(&f.delivery.id)).is_some_and(|h| h.is_pending());
            still_pending && f.settled_at.is_some_and(|t| t.elapsed() < RESETTLE_AFTER)
        });
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
                    delivery,
                    stage: Stage::Delivering,
                    attempts: 0,
                    last_error: None,
                    decision: None,
                    since_ms: now_ms(),
                    settled_at: None,
                    sending: false,
                    retry_at: None,
                    wait: RETRY_FIRST,
                    decided: None,
                };
                flights.insert(key, flight);
            }
        }
    }

    /// How long until the earliest back-off still running ends. A transfer already due but
    /// not sent waits for a slot in its lane: the answer that frees it wakes the loop.
    fn until_next_retry(&self) -> Duration {
        let flights = self.flights.lock().expect("flights");
        let now = Instant::now();
        let next = flights.by_key.values().filter(|f| !f.sending).filter_map(|f| f.retry_at).filter(|at| *at > now).min();
        next.map_or(SCAN_INTERVAL, |at| at.saturating_duration_since(now))
    }

    /// The messages to send now: per lane, up to `BATCHES_IN_FLIGHT` on their way, each of
    /// up to `MAX_TRANSFER_BATCH` transfers that are due (not on their way, not backing off).
    fn due(&self) -> Vec<Batch> {
        let now = Instant::now();
        let mut guard = self.flights.lock().expect("flights");
        let Flights { by_key, sending } = &mut *guard;
        let mut ready: BTreeMap<Lane, Vec<TransferKey>> = BTreeMap::new();
        for (key, f) in by_key.iter() {
            let lane = match f.stage {
                Stage::Delivering => (f.stage, f.delivery.destination().to_string()),
                Stage::Settling => (f.stage, f.delivery.source.clone()),
                Stage::Settled => continue,
            };
            if !f.sending && f.retry_at.is_none_or(|at| at <= now) {
                ready.entry(lane).or_default().push(key.clone());
            }
        }
        let mut batches = Vec::new();
        for (lane, keys) in ready {
            let busy = sending.entry(lane.clone()).or_default();
            let mut keys = keys.into_iter().peekable();
            while *busy < BATCHES_IN_FLIGHT && keys.peek().is_some() {
                let batch: Vec<TransferKey> = match lane.0 {
                    Stage::Settling => settlement_batch(by_key, &mut keys),
                    _ => keys.by_ref().take(MAX_TRANSFER_BATCH).collect(),
                };
                for key in &batch {
                    by_key.get_mut(key).expect("a ready flight").sending = true;
                }
                *busy += 1;
                batches.push(Batch { lane: lane.clone(), keys: batch });
            }
        }
        batches
    }

    /// Sends one message and records what it did for each of its transfers.
    async fn send(self: Arc<Self>, batch: Batch) {
        let steps = match batch.lane.0 {
            Stage::Delivering => self.deliver(&batch).await,
            _ => self.settle(&batch).await,
        };
        let mut guard = self.flights.lock().expect("flights");
        let flights = &mut *guard;
        if let Some(busy) = flights.sending.get_mut(&batch.lane) {
            *busy = busy.saturating_sub(1);
            // Lanes are named by the edges transfers name: none is kept once idle.
            if *busy == 0 {
                flights.sending.remove(&batch.lane);
            }
        }
        let steps = match steps {
            Ok(steps) => steps,
            Err(why) => vec![Err(why); batch.keys.len()],
        };
        assert_eq!(steps.len(), batch.keys.len(), "one outcome per transfer sent");
        for (key, step) in batch.keys.iter().zip(steps) {
            let Some(f) = flights.by_key.get_mut(key) else { continue };
            f.sending = false;
            match step {
                Ok(Step::Decided(decision)) => {
                    f.decision = Some(decision.reply.code);
                    f.decided = Some(*decision);
                    f.advance(Stage::Settling);
                }
                Ok(Step::Redeliver(why)) => {
                    // The source refused the decision as it stands (say, a signature it cannot
                    // check): ask the destination again, which answers its recorded decision.
                    tracing::debug!(transfer = %key, "{why}; delivering again for a fresh decision");
                    f.decided = None;
                    f.decision = None;
                    f.stage = Stage::Delivering;
                    f.back_off(why);
                }
                Ok(Step::Settled) => {
                    f.decided = None;
                    f.settled_at = Some(Instant::now());
                    f.advance(Stage::Settled);
                }
                Err(why) => {
                    tracing::debug!(transfer = %key, "{why}; retrying in {:?}", f.wait);
                    f.back_off(why);
                }
            }
        }
        drop(guard);
        self.wake.notify_one();
    }

    /// The destination's recorded decisions on a batch of deliveries.
    async fn deliver(&self, batch: &Batch) -> Result<Outcomes<Step>, String> {
        let destination = NodeId::parse(&batch.lane.1).ok_or_else(|| format!("credit: {} names no node", batch.lane.1))?;
        let deliveries = self.with_flights(&batch.keys, |f| f.delivery.clone());
        let decided = lanes::deliver(&self.session, &self.region, self.keys.as_deref(), &destination, deliveries).await?;
        Ok(decided.into_iter().map(|d| d.map(|d| Step::Decided(Box::new(d)))).collect())
    }

    /// The source's settlement of a batch of decided transfers.
    async fn settle(&self, batch: &Batch) -> Result<Outcomes<Step>, String> {
        let decided = self.with_flights(&batch.keys, |f| (f.delivery.id.clone(), f.decided.clone().expect("a settling flight is decided")));
        let settled = lanes::settle(&self.session, &batch.lane.1, &decided).await?;
        let step = |s: Result<lanes::Settled, String>| match s? {
            lanes::Settled::Done => Ok(Step::Settled),
            lanes::Settled::Refused(why) => Ok(Step::Redeliver(why)),
        };
        Ok(settled.into_iter().map(step).collect())
    }

    /// `read` of each flight in `keys` (a batch's: they stay while it is on its way).
    fn with_flights<T>(&self, keys: &[TransferKey], read: impl Fn(&Flight) -> T) -> Vec<T> {
        let flights = self.flights.lock().expect("flights");
        keys.iter().map(|k| read(flights.by_key.get(k).expect("a flight on its way stays"))).collect()
    }

    /// Gauges for the region's metrics: transfers driven now, by stage, and waiting.
    pub fn gauges(self: &Arc<Self>) -> Gauges {
        let this = self.clone();
        Box::new(move |out: &mut Vec<GaugeFamily>| {
            let waiting: usize = this.replicas.lock().expect("replicas").values().map(|r| r.ledger.outgoing_count()).sum();
            let (mut delivering, mut settling) = (0, 0);
            for flight in this.flights.lock().expect("flights").by_key.values() {
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
        let flights = &self.flights.lock().expect("flights").by_key;
        let shown: Vec<&Flight> = flights.values().filter(|f| f.stage != Stage::Settled).take(queries::MAX_ANSWER_ROWS).collect();
        let active = flights.values().filter(|f| f.stage != Stage::Settled).count();
        json!({"region": self.region, "in_flight": shown, "active": active, "pending_in_replicas": waiting})
    }
}

impl Flight {
    /// A failed attempt: not sent again for `wait`, which doubles up to `RETRY_MAX`.
    fn back_off(&mut self, why: String) {
        self.attempts += 1;
        self.last_error = Some(why);
        self.retry_at = Some(Instant::now() + self.wait);
        self.wait = (self.wait * 2).min(RETRY_MAX);
    }

    fn advance(&mut self, stage: Stage) {
        self.stage = stage;
        self.last_error = None;
        self.retry_at = None;
        self.wait = RETRY_FIRST;
    }
}

/// The next settlement message of a lane: up to `MAX_TRANSFER_BATCH` transfers from at most
/// `MAX_DECISION_GROUPS` destination batches (each group carries its digests along).
fn settlement_batch(
    flights: &BTreeMap<TransferKey, Flight>,
    keys: &mut std::iter::Peekable<impl Iterator<Item = TransferKey>>,
) -> Vec<TransferKey> {
    use crate::core::transfer::MAX_DECISION_GROUPS;
    let mut batch = Vec::new();
    let mut groups: Vec<*const lanes::Signed> = Vec::new();
    while batch.len() < MAX_TRANSFER_BATCH {
        let Some(key) = keys.peek() else { break };
        let signed = flights[key].decided.as_ref().map_or(std::ptr::null(), |d| Arc::as_ptr(&d.signed));
        if !groups.contains(&signed) {
            if groups.len() == MAX_DECISION_GROUPS {
                break;
            }
            groups.push(signed);
        }
        batch.push(keys.next().expect("peeked"));
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::reply::{Reply, Status};
    use crate::core::transfer::MAX_DECISION_GROUPS;

    /// A settling flight whose decision was signed in `signed`.
    fn settling(id: &str, signed: &Arc<lanes::Signed>) -> Flight {
        let delivery = Delivery {
            source: "eu/berlin-1".to_string(),
            id: id.to_string(),
            debit: "wallet:a@eu/berlin-1".to_string(),
            credit: "merchant:m@us/nyc-1".to_string(),
            asset: "EUR".to_string(),
            amount: "1.00".to_string(),
            proof: None,
        };
        let decided = Decision { reply: Reply::ok(id, Status::Committed, 1, "ok"), index: 0, signed: signed.clone() };
        Flight {
            delivery,
            stage: Stage::Settling,
            attempts: 0,
            last_error: None,
            decision: Some(Code::Ok),
            since_ms: 0,
            settled_at: None,
            sending: false,
            retry_at: None,
            wait: RETRY_FIRST,
            decided: Some(decided),
        }
    }

    #[test]
    fn a_settlement_message_carries_at_most_its_share_of_groups_and_transfers() {
        let signed = |n: usize| Arc::new(lanes::Signed { destination: format!("us/e-{n}"), digests: Vec::new(), proof: None });
        // One transfer from each of more destination batches than a message may carry.
        let groups: Vec<_> = (0..MAX_DECISION_GROUPS + 4).map(signed).collect();
        let mut flights = BTreeMap::new();
        for (i, group) in groups.iter().enumerate() {
            flights.insert(TransferKey::new("eu/berlin-1", &format!("t{i:03}")), settling(&format!("t{i:03}"), group));
        }
        let mut keys = flights.keys().cloned().collect::<Vec<_>>().into_iter().peekable();
        assert_eq!(settlement_batch(&flights, &mut keys).len(), MAX_DECISION_GROUPS);
        assert_eq!(settlement_batch(&flights, &mut keys).len(), 4);
        assert!(keys.peek().is_none());

        // Many transfers of one batch: cut at MAX_TRANSFER_BATCH.
        let one = signed(0);
        let mut flights = BTreeMap::new();
        for i in 0..MAX_TRANSFER_BATCH + 10 {
            flights.insert(TransferKey::new("eu/berlin-1", &format!("t{i:04}")), settling(&format!("t{i:04}"), &one));
        }
        let mut keys = flights.keys().cloned().collect::<Vec<_>>().into_iter().peekable();
        assert_eq!(settlement_batch(&flights, &mut keys).len(), MAX_TRANSFER_BATCH);
        assert_eq!(settlement_batch(&flights, &mut keys).len(), 10);
    }
}
