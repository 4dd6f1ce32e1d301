//! The edge's books as its file holds them: loaded at start, and loaded again in a running
//! node after the disk refused a write (the books in RAM were then ahead of the file).
//! Owns how a ledger is built from config and file; decides nothing about commands.

use crate::core::id_filter::IdFilter;
use crate::core::journal::Chain;
use crate::core::Ledger;
use crate::error::NodeError;
use crate::setup::ledger_for;
use crate::store::{IdFault, Store, StoreArchive, StoreIds, FOLD_EVERY_GROUPS};
use config::NodeConfig;
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::Instant;

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
    /// The id filter of the ids in the file, being built in the background; the ledger
    /// takes it with `Ledger::complete_id_filter` (until then, misses read the file).
    pub id_filter: Option<Receiver<IdFilter>>,
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
        let finals = StoreArchive::new(self.store.clone(), id_fault.clone());
        ledger.archive_holds(self.config.ledger.resolved_hold_cache_entries, Box::new(finals.clone()));
        ledger.archive_received(self.config.ledger.received_cache_entries, Box::new(finals));
        if self.config.zenoh.is_some() {
            ledger.enable_cross_node();
        }
        let opened = self.store.open_books(&mut ledger)?;
        if let Some(fault) = id_fault.take() {
            return Err(NodeError::Store(fault));
        }
        ledger.track_live_changes_folding(FOLD_EVERY_GROUPS);
        ledger.note_unfolded(opened.unfolded, opened.unfolded_rows);
        let id_filter = match opened.ids_to_learn {
            Some(filter) => Some(self.learn_ids(filter)?),
            None => None,
        };
        Ok(Loaded { ledger, chain: opened.chain, id_fault, id_filter })
    }

    /// Fills `filter` with every id in the file on a thread of its own: a scan in
    /// proportion to history, which the node does not wait for.
    fn learn_ids(&self, mut filter: IdFilter) -> Result<Receiver<IdFilter>, NodeError> {
        let (built, receiver) = mpsc::sync_channel(1);
        let store = self.store.clone();
        let learn = move || {
            let started = Instant::now();
            match store.learn_ids(&mut filter) {
                Ok(ids) => {
                    tracing::info!(ids, ms = started.elapsed().as_millis() as u64, "id filter built");
                    // The intake may have reloaded its books meanwhile: then nobody waits.
                    let _ = built.send(filter);
                }
                Err(e) => tracing::error!(error = %e, "cannot build the id filter; every new id is looked up in the file"),
            }
        };
        std::thread::Builder::new()
            .name("id-filter".into())
            .spawn(learn)
            .map_err(|e| NodeError::Start(format!("id-filter thread: {e}")))?;
        Ok(receiver)
    }
}
