//! An edge's side of cross-node transfers between nodes: it takes deliveries (as the
//! destination) and settlements (as the source) from its region. With node identities
//! (`[zenoh]` over TLS) a destination credits only a delivery signed by the source's
//! region, it signs each decision it answers, and the source
//! posts or voids its hold only on a decision whose signature checks against the CA and
//! names the hold's destination: neither a region nor anything between can make a source
//! pay out on a decision its destination did not make.

use super::inbox::{Inbox, Request};
use crate::core::address::{Address, NodeId};
use crate::core::transfer::{DecisionGroup, Delivery, DeliveryBatch, Settlement, SettlementBatch};
use crate::core::{Hold, Ledger};
use crate::store::Store;
use bridge::sign::{decision_digest, decision_message, decisions_message, deliveries_message, delivery_message, NodeKeys, Proof};
use bridge::zenoh::query::Query;
use bridge::{outcomes_json, Answer, Refusal, MAX_BATCH_REQUEST_BYTES, MAX_REQUEST_BYTES, MAX_TRANSFER_BATCH};
use serde_json::{json, Value};
use std::sync::Arc;

/// The destination's answer to a delivery: its recorded decision, signed when it has keys.
pub async fn deliver(inbox: &Inbox, me: &str, keys: Option<&NodeKeys>, query: &Query) -> Answer {
    let delivery: Delivery = bridge::query_json(query, MAX_REQUEST_BYTES)?;
    delivery.check(me).map_err(Refusal::invalid)?;
    if let Some(keys) = keys {
        // The source's region vouches for it: it read the hold in the source's signed journal.
        let source = NodeId::parse(&delivery.source).ok_or_else(|| Refusal::invalid("source: not a node id"))?;
        let message = delivery_bytes(&delivery);
        check_proof(keys, delivery.proof.as_ref(), source.region(), &message, "delivery", "the source's region")?;
    }
    let (source, id) = (delivery.source.clone(), delivery.id.clone());
    let mut answer = inbox.ask(Request::Receive(delivery.command())).await?;
    if let Some(keys) = keys {
        let proof = keys.signer.sign(&decision_bytes(&source, &id, me, &answer));
        answer["proof"] = serde_json::to_value(proof).expect("a proof serializes");
    }
    Ok(answer)
}

/// The source's handling of a settlement: with keys, the decision's signature is checked
/// against the hold's destination before the hold is posted or voided.
pub async fn settle(inbox: &Inbox, store: Arc<Store>, me: &str, keys: Option<Arc<NodeKeys>>, query: &Query) -> Answer {
    let settlement: Settlement = bridge::query_json(query, MAX_REQUEST_BYTES)?;
    let settlement = settlement.checked().map_err(Refusal::invalid)?;
    if let Some(keys) = keys {
        let pending_id = settlement.pending_id.clone();
        // A decided hold may have left RAM: the file has it (a settlement sent again must
        // be signed too).
        let destination = inbox
            .ask(Request::Read(Box::new(move |ledger: &Ledger| {
                let hold = match ledger.hold(&pending_id) {
                    Some(hold) => Some(hold.clone()),
                    None => store.hold(&pending_id).map_err(|e| Refusal::unavailable(e.to_string()))?,
                };
                Ok(destination_of(hold.as_ref()))
            })))
            .await?;
        // No cross-node hold by that id: nothing a signature could be checked against, so
        // nothing is settled (a hold made under that id meanwhile must not take it).
        let Some(destination) = destination.as_str() else { return Err(no_hold(&settlement.pending_id, me)) };
        let reply = serde_json::to_value(&settlement.decision).expect("a reply serializes");
        let message = decision_bytes(me, &settlement.pending_id, destination, &reply);
        check_proof(&keys, settlement.proof.as_ref(), destination, &message, "decision", "its destination")?;
    }
    inbox.ask(Request::Settle { pending_id: settlement.pending_id, decision: settlement.decision }).await
}

/// The destination's answer to a batch of deliveries (one signature from the sources'
/// region checked for all), decided in one group: an outcome per delivery, and with keys
/// the digest of each decision and one signature over them all.
pub async fn deliver_batch(inbox: &Inbox, me: &str, keys: Option<&NodeKeys>, query: &Query) -> Answer {
    let batch: DeliveryBatch = bridge::query_json(query, MAX_BATCH_REQUEST_BYTES)?;
    let region = batch.check(me, MAX_TRANSFER_BATCH).map_err(Refusal::invalid)?;
    if let Some(keys) = keys {
        let messages: Vec<Vec<u8>> = batch.deliveries.iter().map(delivery_bytes).collect();
        let message = deliveries_message(messages.iter().map(Vec::as_slice));
        check_proof(keys, batch.proof.as_ref(), &region, &message, "deliveries", "the sources' region")?;
    }
    let named: Vec<(String, String)> = batch.deliveries.iter().map(|d| (d.source.clone(), d.id.clone())).collect();
    let outcomes = inbox.ask_many(batch.deliveries.into_iter().map(|d| Request::Receive(d.command())).collect()).await;
    let Some(keys) = keys else { return Ok(json!({ "outcomes": outcomes_json(outcomes) })) };
    let digests: Vec<Option<String>> = named
        .iter()
        .zip(&outcomes)
        .map(|((source, id), outcome)| outcome.as_ref().ok().map(|reply| decision_digest(&decision_bytes(source, id, me, reply))))
        .collect();
    let proof = keys.signer.sign(&decisions_message(me, &digests));
    Ok(json!({ "outcomes": outcomes_json(outcomes), "digests": digests, "proof": proof }))
}

/// The source's handling of a batch of settlements: with keys, each group's signature is
/// checked once, then each decision against its digest in the group and against its hold's
/// destination; those that pass are posted or voided in one group, the others refused alone.
pub async fn settle_batch(inbox: &Inbox, store: Arc<Store>, me: &str, keys: Option<Arc<NodeKeys>>, query: &Query) -> Answer {
    let batch: SettlementBatch = bridge::query_json(query, MAX_BATCH_REQUEST_BYTES)?;
    let batch = batch.checked(MAX_TRANSFER_BATCH).map_err(Refusal::invalid)?;
    // With keys, one check per decision, in the message's order; without, none.
    let mut checks: Vec<Result<(), Refusal>> = Vec::new();
    let with_keys = keys.is_some();
    if let Some(keys) = keys {
        let ids: Vec<String> = batch.groups.iter().flat_map(|g| g.decided.iter().map(|d| d.pending_id.clone())).collect();
        let destinations = inbox.ask(Request::Read(Box::new(move |ledger: &Ledger| destinations_of(ledger, &store, &ids)))).await?;
        let mut destinations = destinations.as_array().cloned().unwrap_or_default().into_iter();
        for group in &batch.groups {
            let signed = check_group(&keys, group);
            for decided in &group.decided {
                let destination = destinations.next().unwrap_or(Value::Null);
                checks.push(signed.clone().and_then(|()| match destination.as_str() {
                    // No cross-node hold by that id: nothing to check the signature against.
                    None => Err(no_hold(&decided.pending_id, me)),
                    Some(d) if d != group.destination => Err(Refusal::invalid(format!(
                        "decision: {} is signed by {}, but its hold's destination is {d}",
                        decided.pending_id, group.destination
                    ))),
                    Some(d) => {
                        let reply = serde_json::to_value(&decided.decision).expect("a reply serializes");
                        let digest = decision_digest(&decision_bytes(me, &decided.pending_id, d, &reply));
                        match group.digests.get(decided.index) {
                            Some(Some(listed)) if *listed == digest => Ok(()),
                            _ => Err(Refusal::invalid(format!("decision: {} is not the decision {d} signed", decided.pending_id))),
                        }
                    }
                }));
            }
        }
    }
    let decided = batch.groups.into_iter().flat_map(|g| g.decided);
    let mut requests = Vec::new();
    let mut outcomes: Vec<Option<Answer>> = Vec::new();
    for (k, decided) in decided.enumerate() {
        let check = match with_keys {
            true => checks.get(k).cloned().expect("a check per decision"),
            false => Ok(()),
        };
        match check {
            Ok(()) => {
                requests.push(Request::Settle { pending_id: decided.pending_id, decision: decided.decision });
                outcomes.push(None);
            }
            Err(refusal) => outcomes.push(Some(Err(refusal))),
        }
    }
    let mut answers = inbox.ask_many(requests).await.into_iter();
    let outcomes = outcomes.into_iter().map(|o| o.unwrap_or_else(|| answers.next().expect("one answer per request"))).collect();
    Ok(outcomes_json(outcomes))
}

/// A settlement names no cross-node hold of this edge.
fn no_hold(pending_id: &str, me: &str) -> Refusal {
    Refusal::not_found(format!("pending_id: {pending_id} names no cross-node hold on {me}"))
}

/// Ok when a group of decisions carries its destination's signature over its digests.
fn check_group(keys: &NodeKeys, group: &DecisionGroup) -> Result<(), Refusal> {
    if group.digests.is_empty() {
        return Err(Refusal::invalid("digests: missing: decisions must be signed by their destination"));
    }
    let message = decisions_message(&group.destination, &group.digests);
    check_proof(keys, group.proof.as_ref(), &group.destination, &message, "decisions", "their destination")
}

/// The destination node of each cross-node hold named in `ids` (null when there is none),
/// from RAM or, for a decided hold that left it, the file.
fn destinations_of(ledger: &Ledger, store: &Store, ids: &[String]) -> Answer {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let hold = match ledger.hold(id) {
            Some(hold) => Some(hold.clone()),
            None => store.hold(id).map_err(|e| Refusal::unavailable(e.to_string()))?,
        };
        out.push(destination_of(hold.as_ref()));
    }
    Ok(Value::Array(out))
}

/// What a source's region signs of one delivery.
fn delivery_bytes(d: &Delivery) -> Vec<u8> {
    delivery_message(&d.source, &d.id, &d.debit, &d.credit, &d.asset, &d.amount)
}

/// Ok when `proof` (the opaque JSON a message carried) signs `message` as `signer`; the
/// refusal names `what` was signed and by whom it must be.
fn check_proof(keys: &NodeKeys, proof: Option<&Value>, signer: &str, message: &[u8], what: &str, by: &str) -> Result<(), Refusal> {
    let proof = proof.ok_or_else(|| Refusal::invalid(format!("proof: missing: a {what} must be signed by {by}")))?;
    let proof: Proof = serde_json::from_value(proof.clone()).map_err(|e| Refusal::invalid(format!("proof: {e}")))?;
    keys.verifier.verify(&proof, signer, message).map_err(|e| Refusal::invalid(format!("{what}: {e}")))
}

/// The node a cross-node hold's credit lives on, or null.
fn destination_of(hold: Option<&Hold>) -> Value {
    let remote = hold.and_then(|h| h.remote.as_deref());
    let node = remote.and_then(|r| Address::split(r).node).map(str::to_string);
    node.map_or(Value::Null, Value::String)
}

/// What a decision signature covers, from a reply's JSON: the fields both sides read the
/// same way however the reply was re-encoded on the way.
pub fn decision_bytes(source: &str, id: &str, destination: &str, reply: &Value) -> Vec<u8> {
    let field = |name: &str| reply[name].as_str().unwrap_or_default().to_string();
    decision_message(source, id, destination, &field("status"), &field("code"), reply["seq"].as_u64())
}
