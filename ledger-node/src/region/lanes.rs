//! The wire of a region's cross-node transfers: a batch of deliveries to one destination
//! edge (straight to it, or through its region's relay), a batch of settlements to one
//! source edge, and the relays this region serves for its peers. Each call returns one
//! outcome per transfer, so the coordinator retries only those that failed.
//!
//! Owns the messages and their signatures; it keeps no state and must not decide what to
//! send when (that is the coordinator's).

use crate::core::address::NodeId;
use crate::core::command::MAX_ID_BYTES;
use crate::core::reply::{truncate, Code, Reply, MAX_MESSAGE_BYTES};
use crate::core::transfer::{decision_of, DecisionGroup, Delivery, DeliveryBatch, SettlementBatch};
use bridge::sign::{deliveries_message, delivery_message, NodeKeys};
use bridge::zenoh::query::Query;
use bridge::zenoh::Session;
use bridge::{ask_json, keys, outcomes_of, Answer, AskError, Refusal, RefusalKind, MAX_BATCH_REQUEST_BYTES, MAX_REQUEST_BYTES};
use bridge::{MAX_TRANSFER_BATCH, QUERY_TIMEOUT};
use serde_json::Value;
use std::sync::Arc;

/// What a destination signed for one batch of its decisions (see `bridge::sign`): a source
/// checks one signature per batch and its own decision's digest in the list.
#[derive(Debug)]
pub struct Signed {
    pub destination: String,
    pub digests: Vec<Option<String>>,
    pub proof: Option<Value>,
}

/// A destination's recorded decision on one transfer, with the batch it was signed in.
#[derive(Debug, Clone)]
pub struct Decision {
    pub reply: Reply,
    /// Its place in `signed.digests`.
    pub index: usize,
    pub signed: Arc<Signed>,
}

/// Per transfer: its outcome, or why it must be tried again.
pub type Outcomes<T> = Vec<Result<T, String>>;

/// What a source did with one decision.
#[derive(Debug)]
pub enum Settled {
    /// Posted or voided (or had been).
    Done,
    /// Refused as invalid (its signature or shape): only a fresh decision will do.
    Refused(String),
}

/// Where this region sends deliveries for `destination`: the edge itself when it is ours,
/// its region's relay otherwise.
pub fn delivery_route(me: &str, destination: &NodeId) -> String {
    match destination.region() == me {
        true => keys::transfer_deliveries(destination.as_str()),
        false => keys::transfer_relays(destination.region()),
    }
}

/// Delivers `deliveries` (all for `destination`) in one message, signed once with `keys`;
/// the destination's recorded decision per transfer.
pub async fn deliver(
    session: &Session,
    me: &str,
    node_keys: Option<&NodeKeys>,
    destination: &NodeId,
    deliveries: Vec<Delivery>,
) -> Result<Outcomes<Decision>, String> {
    assert!(!deliveries.is_empty() && deliveries.len() <= MAX_TRANSFER_BATCH, "a delivery batch is 1 to MAX_TRANSFER_BATCH");
    let count = deliveries.len();
    let mut batch = DeliveryBatch { deliveries, proof: None };
    if let Some(node_keys) = node_keys {
        let messages: Vec<Vec<u8>> =
            batch.deliveries.iter().map(|d| delivery_message(&d.source, &d.id, &d.debit, &d.credit, &d.asset, &d.amount)).collect();
        let proof = node_keys.signer.sign(&deliveries_message(messages.iter().map(Vec::as_slice)));
        batch.proof = Some(serde_json::to_value(proof).expect("a proof serializes"));
    }
    let payload = serde_json::to_string(&batch).expect("a delivery batch serializes");
    let selector = delivery_route(me, destination);
    let mut answer = ask_json(session, &selector, Some(payload), QUERY_TIMEOUT).await.map_err(|e| e.to_string())?;
    let digests: Vec<Option<String>> = match answer.get_mut("digests").map(Value::take) {
        Some(digests) => serde_json::from_value(digests).map_err(|e| format!("{selector}: digests: {e}"))?,
        None => Vec::new(),
    };
    let proof = answer.get_mut("proof").map(Value::take).filter(|p| !p.is_null());
    let outcomes = answer.get_mut("outcomes").map(Value::take).unwrap_or_default();
    let outcomes = outcomes_of(outcomes, count).map_err(|e| format!("{selector}: {e}"))?;
    // What the source will be shown must pass its checks, or the transfer would wait for
    // ever on a decision it refuses: one digest per delivery (none without identities).
    let hex = |d: &Option<String>| d.as_ref().is_none_or(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()));
    if (node_keys.is_some() && digests.len() != count) || digests.len() > count || !digests.iter().all(hex) {
        return Err(format!("{selector}: {} digests for {count} deliveries, or not SHA-256 hex", digests.len()));
    }
    let signed = Arc::new(Signed { destination: destination.to_string(), digests, proof });
    let decision = |(index, outcome): (usize, Answer)| {
        let mut reply: Reply = serde_json::from_value(outcome.map_err(|refusal| refusal.error)?).map_err(|e| format!("decision: {e}"))?;
        if reply.id.as_ref().is_some_and(|id| id.len() > MAX_ID_BYTES) {
            return Err("decision: id too long".to_string());
        }
        truncate(reply.message.to_mut(), MAX_MESSAGE_BYTES);
        Ok(Decision { reply: decision_of(reply)?, index, signed: signed.clone() })
    };
    Ok(outcomes.into_iter().enumerate().map(decision).collect())
}

/// Settles `decided` (pending ids at `source`, each with its decision) in one message,
/// grouped by the batch each decision was signed in. Answers in `decided`'s order.
pub async fn settle(session: &Session, source: &str, decided: &[(String, Decision)]) -> Result<Outcomes<Settled>, String> {
    assert!(!decided.is_empty() && decided.len() <= MAX_TRANSFER_BATCH, "a settlement batch is 1 to MAX_TRANSFER_BATCH");
    // Groups in order of first appearance; `order` maps each answer back to `decided`.
    let mut groups: Vec<(Arc<Signed>, DecisionGroup)> = Vec::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    for (k, (pending_id, decision)) in decided.iter().enumerate() {
        let at = match groups.iter().position(|(signed, _)| Arc::ptr_eq(signed, &decision.signed)) {
            Some(at) => at,
            None => {
                let s = &decision.signed;
                let group = DecisionGroup {
                    destination: s.destination.clone(),
                    digests: s.digests.clone(),
                    proof: s.proof.clone(),
                    decided: Vec::new(),
                };
                groups.push((s.clone(), group));
                members.push(Vec::new());
                groups.len() - 1
            }
        };
        let item =
            crate::core::transfer::Decided { index: decision.index, pending_id: pending_id.clone(), decision: decision.reply.clone() };
        groups[at].1.decided.push(item);
        members[at].push(k);
    }
    let order: Vec<usize> = members.into_iter().flatten().collect();
    let batch = SettlementBatch { groups: groups.into_iter().map(|(_, g)| g).collect() };
    let payload = serde_json::to_string(&batch).expect("a settlement batch serializes");
    let selector = keys::transfer_settlements(source);
    let outcomes = match ask_json(session, &selector, Some(payload), QUERY_TIMEOUT).await {
        Ok(answer) => outcomes_of(answer, decided.len()).map_err(|e| format!("{selector}: {e}"))?,
        // The message as a whole was refused as invalid: every decision in it is fetched again.
        Err(AskError::Refused { refusal, .. }) if refusal.kind == RefusalKind::Invalid => {
            return Ok((0..decided.len()).map(|_| Ok(Settled::Refused(format!("{source}: {refusal}")))).collect());
        }
        Err(e) => return Err(e.to_string()),
    };
    let mut answers: Vec<Result<Settled, String>> = (0..decided.len()).map(|_| Err("no outcome".to_string())).collect();
    for (k, outcome) in order.into_iter().zip(outcomes) {
        answers[k] = settled(source, outcome);
    }
    Ok(answers)
}

fn settled(source: &str, outcome: Answer) -> Result<Settled, String> {
    let ack = match outcome {
        Ok(ack) => ack,
        Err(refusal) if refusal.kind == RefusalKind::Invalid => return Ok(Settled::Refused(format!("{source}: {refusal}"))),
        Err(refusal) => return Err(format!("{source}: {refusal}")),
    };
    let ack: Reply = serde_json::from_value(ack).map_err(|e| format!("{source}: settlement answer: {e}"))?;
    match ack.code {
        Code::Ok => Ok(Settled::Done),
        code => Err(format!("{source} refused the settlement: {}: {}", code.as_str(), ack.message)),
    }
}

/// Who may relay to this region: another region, one of `peer_regions` when it lists any.
fn takes_relays_from(me: &str, peer_regions: &[String], source: &str) -> bool {
    let region = NodeId::parse(source).map(|s| s.region().to_string());
    region.as_deref().is_some_and(|r| r != me && (peer_regions.is_empty() || peer_regions.iter().any(|p| p == r)))
}

/// The edge of region `me` that `credit` names, or why it is none.
fn own_edge(me: &str, destination: &str) -> Result<NodeId, Refusal> {
    let edge = NodeId::parse(destination).filter(|d| d.is_edge() && d.region() == me);
    edge.ok_or_else(|| Refusal::not_found(format!("credit: {destination} is not an edge of region {me}")))
}

fn relayed(answer: Result<Value, AskError>) -> Answer {
    answer.map_err(|e| match e {
        AskError::Refused { refusal, .. } => refusal,
        other => Refusal::unavailable(other.to_string()),
    })
}

/// A delivery for one of region `me`'s edges, from another region's coordinator.
pub async fn relay(session: &Session, me: &str, peer_regions: &[String], query: &Query) -> Answer {
    let delivery: Delivery = bridge::query_json(query, MAX_REQUEST_BYTES)?;
    let destination = own_edge(me, delivery.destination())?;
    delivery.check(destination.as_str()).map_err(Refusal::invalid)?;
    // A relay carries a transfer from another region's edge: never one of ours (our
    // edges' transfers are in our replicas), never from a region we do not trade with.
    if !takes_relays_from(me, peer_regions, &delivery.source) {
        return Err(Refusal::invalid(format!("source: {} is not an edge of a peer region of {me}", delivery.source)));
    }
    let payload = serde_json::to_string(&delivery).expect("delivery serializes");
    relayed(ask_json(session, &keys::transfer_deliver(destination.as_str()), Some(payload), QUERY_TIMEOUT).await)
}

/// `relay` in bulk: a batch of deliveries for one of region `me`'s edges, passed on whole
/// (its one signature covers them all).
pub async fn relay_batch(session: &Session, me: &str, peer_regions: &[String], query: &Query) -> Answer {
    let batch: DeliveryBatch = bridge::query_json(query, MAX_BATCH_REQUEST_BYTES)?;
    let first = batch.deliveries.first().ok_or_else(|| Refusal::invalid("deliveries: empty"))?;
    let destination = own_edge(me, first.destination())?;
    let source_region = batch.check(destination.as_str(), MAX_TRANSFER_BATCH).map_err(Refusal::invalid)?;
    if !takes_relays_from(me, peer_regions, &first.source) {
        return Err(Refusal::invalid(format!("deliveries: sources in {source_region} are not edges of a peer region of {me}")));
    }
    let payload = serde_json::to_string(&batch).expect("a delivery batch serializes");
    relayed(ask_json(session, &keys::transfer_deliveries(destination.as_str()), Some(payload), QUERY_TIMEOUT).await)
}
