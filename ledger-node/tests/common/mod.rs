//! What the core tests share: an id archive in memory that stands for the node's file.

use ledger::core::idempotency::{journaled_recorded, IdArchive, IdRecord};
use ledger::core::{EntryBody, Recorded};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What the store holds: id records and entries of the groups committed so far.
#[derive(Default)]
pub struct Written {
    pub ids: HashMap<String, IdRecord>,
    pub bodies: HashMap<u64, EntryBody>,
}

impl Written {
    /// Writes one group's id records and entries, as a commit does.
    pub fn commit(&mut self, ids: impl IntoIterator<Item = (String, IdRecord)>, bodies: impl IntoIterator<Item = EntryBody>) {
        self.ids.extend(ids);
        self.bodies.extend(bodies.into_iter().map(|b| (b.seq, b)));
    }
}

/// Reads id records back from `Written`, as `store::StoreIds` reads the file.
pub struct Archive(pub Arc<Mutex<Written>>);

impl IdArchive for Archive {
    fn lookup(&self, key: &str) -> Option<Recorded> {
        let written = self.0.lock().unwrap();
        match written.ids.get(key)? {
            IdRecord::Rejected(recorded) => Some((**recorded).clone()),
            IdRecord::Journaled { fingerprint, seq, op } => journaled_recorded(&written.bodies[seq], fingerprint.clone(), *op),
        }
    }
}
