//! An edge's side of cross-node transfers between nodes: it takes deliveries (as the
//! destination) and settlements (as the source) from its region. With node identities
//! (`[zenoh]` over TLS) a destination credits only a delivery signed by the source's
//! region, it signs each decision it answers, and the source
//! posts or voids its hold only on a decision whose signature checks against the CA and
//! names the hold's destination: neither a region nor anything between can make a source
//! pay out on a decision its destination did not make.

use super::inbox::{Inbox, Request};
use crate::core::transfer::{Delivery, Settlement};
use crate::core::Ledger;
use bridge::sign::{decision_message, delivery_message, NodeKeys, Proof};
use bridge::zenoh::query::Query;
use bridge::{Answer, Refusal, MAX_REQUEST_BYTES};
use serde_json::Value;
use std::sync::Arc;

/// The destination's answer to a delivery: its recorded decision, signed when it has keys.
pub async fn deliver(inbox: &Inbox, me: &str, keys: Option<&NodeKeys>, query: &Query) -> Answer {
    let delivery: Delivery = bridge::query_json(query, MAX_REQUEST_BYTES)?;
    delivery.check(me).map_err(Refusal::invalid)?;
    if let Some(keys) = keys {
        // The source's region vouches for it: it read the hold in the source's signed journal.
        let region = delivery.source.split('/').next().unwrap_or_default();
        let proof =
            delivery.proof.clone().ok_or_else(|| Refusal::invalid("proof: missing: a delivery must be signed by the source's region"))?;
        let proof: Proof = serde_json::from_value(proof).map_err(|e| Refusal::invalid(format!("proof: {e}")))?;
        let d = &delivery;
        let message = delivery_message(&d.source, &d.id, &d.debit, &d.credit, &d.asset, &d.amount);
        keys.verifier.verify(&proof, region, &message).map_err(|e| Refusal::invalid(format!("delivery: {e}")))?;
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
pub async fn settle(inbox: &Inbox, me: &str, keys: Option<Arc<NodeKeys>>, query: &Query) -> Answer {
    let settlement: Settlement = bridge::query_json(query, MAX_REQUEST_BYTES)?;
    let settlement = settlement.checked().map_err(Refusal::invalid)?;
    if let Some(keys) = keys {
        let pending_id = settlement.pending_id.clone();
        let destination = inbox.ask(Request::Read(Box::new(move |ledger: &Ledger| Ok(destination_of(ledger, &pending_id))))).await?;
        // No cross-node hold by that id: the ledger answers why, nothing to check.
        if let Some(destination) = destination.as_str() {
            let proof =
                settlement.proof.clone().ok_or_else(|| Refusal::invalid("proof: missing: a decision must be signed by its destination"))?;
            let proof: Proof = serde_json::from_value(proof).map_err(|e| Refusal::invalid(format!("proof: {e}")))?;
            let reply = serde_json::to_value(&settlement.decision).expect("a reply serializes");
            let message = decision_bytes(me, &settlement.pending_id, destination, &reply);
            keys.verifier.verify(&proof, destination, &message).map_err(|e| Refusal::invalid(format!("decision: {e}")))?;
        }
    }
    inbox.ask(Request::Settle { pending_id: settlement.pending_id, decision: settlement.decision }).await
}

/// The node a cross-node hold's credit lives on, or null.
fn destination_of(ledger: &Ledger, pending_id: &str) -> Value {
    let remote = ledger.hold(pending_id).and_then(|h| h.remote.clone());
    let node = remote.as_deref().and_then(|r| r.split_once('@')).map(|(_, node)| node.to_string());
    node.map_or(Value::Null, Value::String)
}

/// What a decision signature covers, from a reply's JSON: the fields both sides read the
/// same way however the reply was re-encoded on the way.
fn decision_bytes(source: &str, id: &str, destination: &str, reply: &Value) -> Vec<u8> {
    let field = |name: &str| reply[name].as_str().unwrap_or_default().to_string();
    decision_message(source, id, destination, &field("status"), &field("code"), reply["seq"].as_u64())
}
