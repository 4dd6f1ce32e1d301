//! The file as a ledger's hold archive: resolved local holds that left RAM are read back
//! from the live tables (`live_holds_resolved`, and `live_holds` of files written before
//! it; a region's replicas, the `replica_live_*` ones). Reads only; every hold is written
//! with the group that changed it.

use super::error::{Fault, StoreError};
use super::ids::IdFault;
use super::live::Scope;
use super::live_codec::decode_hold;
use super::Store;
use crate::core::{Hold, HoldArchive};
use redb::ReadableDatabase;
use std::sync::Arc;

impl Store {
    /// The hold `pending_id` of `scope` as the last commit left it, from either table.
    fn hold(&self, scope: Scope, pending_id: &str) -> Result<Option<Hold>, StoreError> {
        let read = || -> Result<Option<Hold>, Fault> {
            let db = self.db()?;
            let tx = db.begin_read()?;
            let key = scope.key(pending_id);
            for table in scope.hold_tables() {
                let table = match tx.open_table(table) {
                    Ok(table) => table,
                    Err(redb::TableError::TableDoesNotExist(_)) => continue,
                    Err(e) => return Err(e.into()),
                };
                if let Some(bytes) = table.get(key.as_ref())? {
                    let hold = decode_hold(bytes.value()).map_err(|e| Fault::Corrupt(format!("hold {key:?} cannot be read: {e}")))?;
                    return Ok(Some(hold));
                }
            }
            Ok(None)
        };
        read().map_err(|f| self.fail(f))
    }
}

/// Reads resolved holds back for a ledger: the node's own, or a region's replica of an edge.
/// A hold that cannot be read is not a hold that does not exist: the fault is kept (shared
/// with the id archive's, `IdFault`) for the caller, which stops before what asked is
/// committed or answered.
pub struct StoreHolds {
    store: Arc<Store>,
    /// The replica's edge; None: the node's own books.
    edge: Option<String>,
    fault: IdFault,
}

impl StoreHolds {
    pub fn new(store: Arc<Store>, fault: IdFault) -> StoreHolds {
        StoreHolds { store, edge: None, fault }
    }

    pub fn of_replica(store: Arc<Store>, edge: &str, fault: IdFault) -> StoreHolds {
        StoreHolds { store, edge: Some(edge.to_string()), fault }
    }
}

impl HoldArchive for StoreHolds {
    fn lookup(&self, pending_id: &str) -> Option<Hold> {
        let scope = self.edge.as_deref().map_or(Scope::Own, Scope::Replica);
        match self.store.hold(scope, pending_id) {
            Ok(found) => found,
            Err(fault) => {
                self.fault.record(fault);
                None
            }
        }
    }
}
