//! The messages of a cross-node transfer between nodes: the delivery a region takes to the
//! destination, the settlement it takes back to the source, and the rule for what counts
//! as a decision. Checked hard here: they come from the network.

use super::address::{valid_address, valid_node, Address, NodeId, TransferKey};
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
        truncate(self.decision.message.to_mut(), MAX_MESSAGE_BYTES);
        Ok(self)
    }
}

/// Most decision groups (destination batches) one settlement message carries: each brings
/// its list of digests along, so this bounds the message.
pub const MAX_DECISION_GROUPS: usize = 16;

/// Many deliveries to one destination edge in one message, vouched for by one signature of
/// the sources' region over all of them (`proof`; the deliveries carry none of their own).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryBatch {
    pub deliveries: Vec<Delivery>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<serde_json::Value>,
}

impl DeliveryBatch {
    /// Hard checks at the boundary: 1 to `max` deliveries, each for `destination`, all from
    /// edges of one region (the one whose signature vouches for them). Returns that region.
    pub fn check(&self, destination: &str, max: usize) -> Result<String, String> {
        if self.deliveries.is_empty() || self.deliveries.len() > max {
            return Err(format!("deliveries: {} of them; 1 to {max} per message", self.deliveries.len()));
        }
        let mut region: Option<String> = None;
        for (i, delivery) in self.deliveries.iter().enumerate() {
            delivery.check(destination).map_err(|e| format!("deliveries[{i}].{e}"))?;
            if delivery.proof.is_some() {
                return Err(format!("deliveries[{i}].proof: a batch is signed as a whole (its own proof)"));
            }
            let source = NodeId::parse(&delivery.source).filter(|s| s.is_edge());
            let Some(source) = source else { return Err(format!("deliveries[{i}].source: {:?} is not an edge", delivery.source)) };
            match &region {
                None => region = Some(source.region().to_string()),
                Some(r) if r != source.region() => {
                    return Err(format!("deliveries[{i}].source: {} is not an edge of {r}, as the first one is", delivery.source))
                }
                Some(_) => {}
            }
        }
        Ok(region.expect("at least one delivery"))
    }
}

/// One decision in a settlement message: `index` is its place in its destination's batch
/// (its digest's, in `DecisionGroup::digests`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decided {
    pub index: usize,
    pub pending_id: String,
    pub decision: Reply,
}

/// Decisions one destination made in one batch, with what it signed for that batch: the
/// digest of every decision in it and its signature over them (when nodes have identities).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecisionGroup {
    pub destination: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub digests: Vec<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<serde_json::Value>,
    pub decided: Vec<Decided>,
}

/// Many decisions for one source edge in one message, grouped by the batch they were made in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SettlementBatch {
    pub groups: Vec<DecisionGroup>,
}

impl SettlementBatch {
    /// Checks a settlement message from the network: at most `max` decisions in at most
    /// `MAX_DECISION_GROUPS` groups, ids well formed, indexes inside their group's digests,
    /// messages bounded.
    pub fn checked(mut self, max: usize) -> Result<SettlementBatch, String> {
        let count: usize = self.groups.iter().map(|g| g.decided.len()).sum();
        if count == 0 || count > max || self.groups.len() > MAX_DECISION_GROUPS {
            return Err(format!("groups: {count} decisions in {} groups; 1 to {max} in at most {MAX_DECISION_GROUPS}", self.groups.len()));
        }
        for (g, group) in self.groups.iter_mut().enumerate() {
            if !valid_node(&group.destination) {
                return Err(format!("groups[{g}].destination: {:?} is not a node id", group.destination));
            }
            if group.digests.len() > max {
                return Err(format!("groups[{g}].digests: {}; at most {max}", group.digests.len()));
            }
            for (i, decided) in group.decided.iter_mut().enumerate() {
                if !valid_id(&decided.pending_id) {
                    return Err(format!("groups[{g}].decided[{i}].pending_id: not a command id"));
                }
                if !group.digests.is_empty() && decided.index >= group.digests.len() {
                    return Err(format!("groups[{g}].decided[{i}].index: {} is past the digests", decided.index));
                }
                truncate(decided.decision.message.to_mut(), MAX_MESSAGE_BYTES);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(source: &str, id: &str) -> Delivery {
        Delivery {
            source: source.to_string(),
            id: id.to_string(),
            debit: format!("wallet:x@{source}"),
            credit: "merchant:m@us/nyc-1".to_string(),
            asset: "EUR".to_string(),
            amount: "1.00".to_string(),
            proof: None,
        }
    }

    #[test]
    fn a_delivery_batch_is_one_region_for_one_destination_and_bounded() {
        let batch = |deliveries: Vec<Delivery>| DeliveryBatch { deliveries, proof: None };
        let ok = batch(vec![delivery("eu/berlin-1", "a"), delivery("eu/paris-1", "b")]);
        assert_eq!(ok.check("us/nyc-1", 4).unwrap(), "eu");
        assert!(batch(Vec::new()).check("us/nyc-1", 4).unwrap_err().contains("1 to 4"));
        let five = batch((0..5).map(|i| delivery("eu/berlin-1", &format!("t{i}"))).collect());
        assert!(five.check("us/nyc-1", 4).unwrap_err().contains("5 of them"));
        let mixed = batch(vec![delivery("eu/berlin-1", "a"), delivery("us/sf-1", "b")]);
        assert!(mixed.check("us/nyc-1", 4).unwrap_err().starts_with("deliveries[1].source"));
        let from_a_region = batch(vec![delivery("eu", "a")]);
        assert!(from_a_region.check("us/nyc-1", 4).unwrap_err().contains("is not an edge"));
        assert!(ok.check("us/sf-1", 4).unwrap_err().starts_with("deliveries[0].credit"));
        let mut signed_alone = ok.clone();
        signed_alone.deliveries[1].proof = Some(serde_json::json!({}));
        assert!(signed_alone.check("us/nyc-1", 4).unwrap_err().starts_with("deliveries[1].proof"));
    }

    #[test]
    fn a_settlement_batch_is_bounded_and_its_indexes_point_into_its_digests() {
        let decided = |index: usize, id: &str| Decided {
            index,
            pending_id: id.to_string(),
            decision: Reply::ok(id, Status::Committed, 9, "x".repeat(4000)),
        };
        let group = |digests: usize, decided: Vec<Decided>| DecisionGroup {
            destination: "us/nyc-1".to_string(),
            digests: vec![Some("00".to_string()); digests],
            proof: None,
            decided,
        };
        let ok = SettlementBatch { groups: vec![group(2, vec![decided(0, "a"), decided(1, "b")])] }.checked(4).unwrap();
        assert!(ok.groups[0].decided[0].decision.message.len() <= MAX_MESSAGE_BYTES, "the message is bounded");
        let past = SettlementBatch { groups: vec![group(2, vec![decided(2, "a")])] };
        assert!(past.checked(4).unwrap_err().contains("groups[0].decided[0].index"));
        let too_many = SettlementBatch { groups: vec![group(5, (0..5).map(|i| decided(i, &format!("t{i}"))).collect())] };
        assert!(too_many.checked(4).unwrap_err().contains("1 to 4"));
        let groups = (0..=MAX_DECISION_GROUPS).map(|i| group(1, vec![decided(0, &format!("t{i}"))])).collect();
        assert!(SettlementBatch { groups }.checked(100).unwrap_err().contains("at most"));
        let bad_id = SettlementBatch { groups: vec![group(1, vec![decided(0, "")])] };
        assert!(bad_id.checked(4).unwrap_err().contains("pending_id"));
        assert!(SettlementBatch { groups: Vec::new() }.checked(4).is_err());
    }
}
