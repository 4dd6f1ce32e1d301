//! The edge's books as its file holds them: loaded at start, and loaded again in a running
//! node after the disk refused a write (the books in RAM were then ahead of the file).
//! Owns how a ledger is built from config and file; decides nothing about commands.

use crate::core::journal::Chain;
use crate::core::Ledger;
use crate::error::NodeError;
use crate::setup::ledger_for;
use crate::store::{IdFault, Store, StoreIds};
use config::NodeConfig;
use std::sync::Arc;

pub struct Books {
    config: NodeConfig,
    store: Arc<Store>,
}

/// Books loaded from the file, with where the ledger's id archive reports a record it
/// cannot read back.
pub struct Loaded {
    pub ledger: Ledger,
    /// The end of the file's journal, where the next entry links.
    pub chain: Chain,
    pub id_fault: IdFault,
}

impl Books {
    pub fn new(config: &NodeConfig, store: Arc<Store>) -> Books {
        Books { config: config.clone(), store }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// A ledger with no state: what stands in while the books are loaded again.
    pub fn empty(&self) -> Ledger {
        ledger_for(&self.config)
    }

    /// Restores a new ledger from the file's live tables (no replay; a file written before
    /// them is replayed once), keeping the recent id records in RAM and reading the others
    /// from the file (SPEC §4: exact for every id ever). From then on the ledger notes what
    /// each group changes, for the committer to write into the live tables.
    pub fn load(&self) -> Result<Loaded, NodeError> {
        let mut ledger = ledger_for(&self.config);
        let (archive, id_fault) = StoreIds::new(self.store.clone());
        ledger.archive_ids(self.config.ledger.id_cache_entries, Box::new(archive));
        if self.config.zenoh.is_some() {
            ledger.enable_cross_node();
        }
        let chain = self.store.open_books(&mut ledger)?;
        if let Some(fault) = id_fault.take() {
            return Err(NodeError::Store(fault));
        }
        ledger.track_live_changes();
        Ok(Loaded { ledger, chain, id_fault })
    }
}
