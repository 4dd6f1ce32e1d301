//! Decisions on cross-node transfers this node received, by transfer key: what a
//! redelivery of the same transfer is answered with.

use super::address::TransferKey;
use super::command::Movement;
use super::idempotency::Recorded;
use std::collections::HashMap;

/// A cross-node transfer this node received, and its recorded decision.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Received {
    pub source: String,
    pub id: String,
    /// As delivered: `debit` at the source, `credit` here, the amount as a decimal string.
    pub movement: Movement,
    pub recorded: Recorded,
}

/// The decisions on cross-node transfers received, by transfer key.
#[derive(Debug, Default)]
pub struct ReceivedIndex {
    map: HashMap<TransferKey, Box<Received>>,
}

impl ReceivedIndex {
    pub fn get(&self, key: &TransferKey) -> Option<&Received> {
        self.map.get(key).map(|b| &**b)
    }

    pub fn insert(&mut self, received: Received) {
        self.map.insert(TransferKey::new(&received.source, &received.id), Box::new(received));
    }

    pub fn iter(&self) -> impl Iterator<Item = &Received> {
        self.map.values().map(|b| &**b)
    }
}
