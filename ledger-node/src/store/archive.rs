//! The file as a ledger's archive of final values that left RAM: resolved holds (tables
//! `live_holds_resolved`, `live_sent_resolved`, and `live_holds` of files written before
//! them) and decisions on transfers received (`live_received`); for a region's replica of
//! an edge, the `replica_live_*` ones. Reads only: the committer writes every value with the
//! group that made it.

use super::error::{Fault, StoreError};
use super::ids::IdFault;
use super::live::{decode_json, Scope};
use super::live_codec::decode_hold;
use super::Store;
use crate::core::address::TransferKey;
use crate::core::{Hold, HoldArchive, Received, ReceivedArchive};
use redb::{ReadableDatabase, ReadableTable};
use std::sync::Arc;

impl Store {
    /// The hold `pending_id` of `scope` as the last commit left it, from whichever table.
    pub(super) fn hold_in(&self, scope: Scope, pending_id: &str) -> Result<Option<Hold>, StoreError> {
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
                let found = table.get(key.as_ref())?;
                if let Some(bytes) = found {
                    let hold = decode_hold(bytes.value()).map_err(|e| Fault::Corrupt(format!("hold {key:?} cannot be read: {e}")))?;
                    return Ok(Some(hold));
                }
            }
            Ok(None)
        };
        read().map_err(|f| self.fail(f))
    }

    /// The node's own hold `pending_id` as the last commit left it.
    pub fn hold(&self, pending_id: &str) -> Result<Option<Hold>, StoreError> {
        self.hold_in(Scope::Own, pending_id)
    }

    /// The decision of `scope` on the transfer `key` as the last commit left it.
    fn received_in(&self, scope: Scope, key: &TransferKey) -> Result<Option<Received>, StoreError> {
        let read = || -> Result<Option<Received>, Fault> {
            let db = self.db()?;
            let tx = db.begin_read()?;
            let [_, _, received] = scope.tables();
            let table = match tx.open_table(received) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let key = scope.key(&key.to_string()).into_owned();
            let Some(bytes) = table.get(key.as_str())? else { return Ok(None) };
            decode_json("received transfer", &key, bytes.value()).map(Some)
        };
        read().map_err(|f| self.fail(f))
    }
}

/// Reads final values back for a ledger: the node's own, or a region's replica of an edge.
/// A value that cannot be read is not one that does not exist: the fault is kept (shared
/// with the id archive's, `IdFault`) for the caller, which stops before what asked is
/// committed or answered.
#[derive(Clone)]
pub struct StoreArchive {
    store: Arc<Store>,
    whose: Whose,
    fault: IdFault,
}

/// Whose books an archive reads: see `Scope`.
#[derive(Clone)]
enum Whose {
    Own,
    Replica(String),
    Anchor,
}

impl StoreArchive {
    pub fn new(store: Arc<Store>, fault: IdFault) -> StoreArchive {
        StoreArchive { store, whose: Whose::Own, fault }
    }

    pub fn of_replica(store: Arc<Store>, edge: &str, fault: IdFault) -> StoreArchive {
        StoreArchive { store, whose: Whose::Replica(edge.to_string()), fault }
    }

    /// The books as of a pruned journal's anchor (the pruning thread's copy).
    pub(super) fn of_anchor(store: Arc<Store>, fault: IdFault) -> StoreArchive {
        StoreArchive { store, whose: Whose::Anchor, fault }
    }

    fn scope(&self) -> Scope<'_> {
        match &self.whose {
            Whose::Own => Scope::Own,
            Whose::Replica(edge) => Scope::Replica(edge),
            Whose::Anchor => Scope::Anchor,
        }
    }

    fn kept<T>(&self, read: Result<Option<T>, StoreError>) -> Option<T> {
        read.unwrap_or_else(|fault| {
            self.fault.record(fault);
            None
        })
    }
}

impl HoldArchive for StoreArchive {
    fn lookup(&self, pending_id: &str) -> Option<Hold> {
        self.kept(self.store.hold_in(self.scope(), pending_id))
    }
}

impl ReceivedArchive for StoreArchive {
    fn lookup(&self, key: &TransferKey) -> Option<Received> {
        self.kept(self.store.received_in(self.scope(), key))
    }
}
