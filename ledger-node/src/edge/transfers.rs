//! An edge's side of cross-node transfers between nodes: it takes deliveries (as the
//! destination) and settlements (as the source) from its region. With node identities
//! (`[zenoh]` over TLS) a destination credits only a delivery signed by the source's
//! region, it signs each decision it answers, and the source
//! posts or voids its hold only on a decision whose signature checks against the CA and
//! names the hold's destination: neither a region nor anything between can make a source
//! pay out on a decision its destination did not make.

use super::inbox::{Inbox, Request};
use crate::core::address::{Address, NodeId};
use crate::core::transfer::{Delivery, Settlement};
use crate::core::{Hold, Ledger};
use crate::store::Store;
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
        let source = NodeId::parse(&delivery.source).ok_or_else(|| Refusal::invalid("source: not a node id"))?;
        let d = &delivery;
        let message = delivery_message(&d.source, &d.id, &d.debit, &d.credit, &d.asset, &d.amount);
        check_proof(keys, d.proof.as_ref(), source.region(), &message, "delivery", "the source's region")?;
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
        // No cross-node hold by that id: the ledger answers why, nothing to check.
        if let Some(destination) = destination.as_str() {
            let reply = serde_json::to_value(&settlement.decision).expect("a reply serializes");
            let message = decision_bytes(me, &settlement.pending_id, destination, &reply);
            check_proof(&keys, settlement.proof.as_ref(), destination, &message, "decision", "its destination")?;
        }
    }
    inbox.ask(Request::Settle { pending_id: settlement.pending_id, decision: settlement.decision }).await
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
fn decision_bytes(source: &str, id: &str, destination: &str, reply: &Value) -> Vec<u8> {
    let field = |name: &str| reply[name].as_str().unwrap_or_default().to_string();
    decision_message(source, id, destination, &field("status"), &field("code"), reply["seq"].as_u64())
}
