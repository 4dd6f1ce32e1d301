//! The node's file as the ledger's hold archive: resolved local holds that left RAM are
//! read back from the live tables (`live_holds_resolved`, and `live_holds` of files
//! written before it). Reads only; the committer writes every hold with its group.

use super::error::{Fault, StoreError};
use super::ids::IdFault;
use super::live::{HOLDS, RESOLVED_HOLDS};
use super::live_codec::decode_hold;
use super::Store;
use crate::core::{Hold, HoldArchive};
use redb::ReadableDatabase;
use std::sync::Arc;

impl Store {
    /// The hold `pending_id` as the last commit left it, from either table.
    pub fn hold(&self, pending_id: &str) -> Result<Option<Hold>, StoreError> {
        let read = || -> Result<Option<Hold>, Fault> {
            let db = self.db()?;
            let tx = db.begin_read()?;
            for table in [RESOLVED_HOLDS, HOLDS] {
                let table = match tx.open_table(table) {
                    Ok(table) => table,
                    Err(redb::TableError::TableDoesNotExist(_)) => continue,
                    Err(e) => return Err(e.into()),
                };
                if let Some(bytes) = table.get(pending_id)? {
                    let hold =
                        decode_hold(bytes.value()).map_err(|e| Fault::Corrupt(format!("hold {pending_id:?} cannot be read: {e}")))?;
                    return Ok(Some(hold));
                }
            }
            Ok(None)
        };
        read().map_err(|f| self.fail(f))
    }
}

/// Reads resolved holds back for the ledger. A hold that cannot be read is not a hold that
/// does not exist: the fault is kept (shared with the id archive's, `IdFault`) for the
/// intake, which stops the node before the group that asked is committed or answered.
pub struct StoreHolds {
    store: Arc<Store>,
    fault: IdFault,
}

impl StoreHolds {
    pub fn new(store: Arc<Store>, fault: IdFault) -> StoreHolds {
        StoreHolds { store, fault }
    }
}

impl HoldArchive for StoreHolds {
    fn lookup(&self, pending_id: &str) -> Option<Hold> {
        match self.store.hold(pending_id) {
            Ok(found) => found,
            Err(fault) => {
                self.fault.record(fault);
                None
            }
        }
    }
}
