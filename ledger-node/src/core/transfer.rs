//! The messages of a cross-node transfer between nodes: the delivery a region takes to the
//! destination, the settlement it takes back to the source, and the rule for what counts
//! as a decision. Checked hard here: they come from the network.

use super::address::{valid_address, valid_node, Address, TransferKey};
use super::command::{valid_id, Movement, NodeCommand, NodeOp};
use super::reply::{truncate, Code, Reply, Status, MAX_MESSAGE_BYTES};
use serde::{Deserialize, Serialize};

/// A cross-node transfer as the destination sees it. `id` is the source's command id; with
/// `source` it names the transfer everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub source: String,
    pub id: String,
    /// `name@source`
    pub debit: String,
    /// `name@destination`
    pub credit: String,
    pub asset: String,
    pub amount: String,
    /// The source's region's signature over the delivery, when nodes have identities;
    /// opaque here, checked by the destination's shell before anything is credited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<serde_json::Value>,
}

impl Delivery {
    /// The destination node, from the credit address.
    pub fn destination(&self) -> &str {
        Address::split(&self.credit).node.unwrap_or_default()
    }

    pub fn key(&self) -> TransferKey {
        TransferKey::new(&self.source, &self.id)
    }

    /// Hard checks at the boundary: a delivery comes from the network.
    pub fn check(&self, destination: &str) -> Result<(), String> {
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

    /// The node command the destination journals its decision under.
    pub fn command(self) -> NodeCommand {
        let movement = Movement { debit: self.debit, credit: self.credit, amount: self.amount, asset: self.asset, metadata: None };
        NodeCommand { id: self.id, op: NodeOp::Receive { source: self.source, movement } }
    }
}

/// The destination's decision on its way back to the source.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settlement {
    pub pending_id: String,
    pub decision: Reply,
    /// The destination's signature over its decision, when nodes have identities; opaque
    /// here, checked by the source's shell before the hold is touched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<serde_json::Value>,
}

impl Settlement {
    /// Checks a settlement from the network and bounds the message it carries (as long as
    /// a rejection's own message may be).
    pub fn checked(mut self) -> Result<Settlement, String> {
        if !valid_id(&self.pending_id) {
            return Err("pending_id: not a command id".to_string());
        }
        truncate(&mut self.decision.message, MAX_MESSAGE_BYTES);
        Ok(self)
    }
}

/// A destination's answer, accepted as a decision only when it was journaled (it has a
/// sequence number) and is final: a conflict is not a rejection of the transfer.
pub fn decision_of(reply: Reply) -> Result<Reply, String> {
    match (reply.status, reply.seq, reply.code) {
        (_, _, Code::IdConflict) => Err(format!("the destination holds other content under this id: {}", reply.message)),
        (Status::Committed | Status::Rejected, Some(_), _) => Ok(reply),
        _ => Err(format!("not a recorded decision: {} {}", reply.code.as_str(), reply.message)),
    }
}
