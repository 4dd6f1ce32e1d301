//! What the core tests share: an id archive and live tables in memory that stand for the
//! node's file.
// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use ledger::core::address::TransferKey;
use ledger::core::idempotency::{journaled_recorded, IdArchive, IdRecord};
use ledger::core::{Account, AccountRows, EntryBody, Head, Hold, HoldArchive, LiveChanges, LiveState, Received, ReceivedArchive, Recorded};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// What the store holds: id records, entries and live tables of the groups committed so far.
#[derive(Default)]
pub struct Written {
    pub ids: HashMap<String, IdRecord>,
    pub bodies: HashMap<u64, EntryBody>,
    pub accounts: BTreeMap<String, Account>,
    /// An edge's account deltas not folded yet, oldest first (`live_account_deltas`).
    pub account_deltas: Vec<Vec<(String, Option<Account>)>>,
    pub holds: BTreeMap<String, Hold>,
    pub received: BTreeMap<TransferKey, Received>,
}

impl Written {
    /// Writes one group's id records and entries, as a commit does.
    pub fn commit(&mut self, ids: impl IntoIterator<Item = (String, IdRecord)>, bodies: impl IntoIterator<Item = EntryBody>) {
        self.ids.extend(ids);
        self.bodies.extend(bodies.into_iter().map(|b| (b.seq, b)));
    }

    /// Writes one group's changes into the live tables, as `Store::commit` does.
    pub fn commit_live(&mut self, changes: LiveChanges) {
        if changes.is_empty() {
            return;
        }
        match changes.accounts_are {
            AccountRows::Fold => {
                apply_accounts(&mut self.accounts, changes.accounts);
                // Every account a delta changed is among the rows just written.
                self.account_deltas.clear();
            }
            AccountRows::Delta if changes.accounts.is_empty() => {}
            AccountRows::Delta => self.account_deltas.push(changes.accounts),
        }
        for (id, hold) in changes.holds {
            match hold {
                Some(h) => self.holds.insert(id, h),
                None => self.holds.remove(&id),
            };
        }
        self.received.extend(changes.received);
    }

    /// The live tables, at journal head `head`.
    /// The accounts read as a start-up reads them: the rows, then the deltas in order.
    pub fn live_state(&self, head: Head) -> LiveState {
        let mut accounts = self.accounts.clone();
        for delta in &self.account_deltas {
            apply_accounts(&mut accounts, delta.iter().cloned());
        }
        LiveState { head, accounts, holds: self.holds.clone(), received: self.received.clone() }
    }
}

fn apply_accounts(table: &mut BTreeMap<String, Account>, rows: impl IntoIterator<Item = (String, Option<Account>)>) {
    for (name, account) in rows {
        match account {
            Some(a) => table.insert(name, a),
            None => table.remove(&name),
        };
    }
}

/// Reads resolved holds back from `Written`'s live tables, as `store::StoreHolds` reads the
/// file.
pub struct Holds(pub Arc<Mutex<Written>>);

impl HoldArchive for Holds {
    fn lookup(&self, pending_id: &str) -> Option<Hold> {
        self.0.lock().unwrap().holds.get(pending_id).cloned()
    }
}

/// Reads decisions on transfers received back from `Written`'s live tables, as
/// `store::StoreArchive` reads the file.
pub struct Decisions(pub Arc<Mutex<Written>>);

impl ReceivedArchive for Decisions {
    fn lookup(&self, key: &TransferKey) -> Option<Received> {
        self.0.lock().unwrap().received.get(key).cloned()
    }
}

/// A ledger's books whose groups are all durable: what it holds in RAM, with the final
/// values that left it as `tables` hold them (no other value may have left).
pub fn books_of(ledger: &ledger::core::Ledger, tables: &Written) -> LiveState {
    let mut books = ledger.live_state();
    for (id, hold) in &tables.holds {
        books.holds.entry(id.clone()).or_insert_with(|| {
            assert!(hold.may_leave_ram(), "hold {id} left RAM unresolved");
            hold.clone()
        });
    }
    for (key, received) in &tables.received {
        books.received.entry(key.clone()).or_insert_with(|| received.clone());
    }
    books
}

/// Reads id records back from `Written`, as `store::StoreIds` reads the file.
pub struct Archive(pub Arc<Mutex<Written>>);

impl IdArchive for Archive {
    fn lookup(&self, key: &str) -> Option<Recorded> {
        let written = self.0.lock().unwrap();
        match written.ids.get(key)? {
            IdRecord::Rejected(recorded) => Some((**recorded).clone()),
            IdRecord::Journaled { fingerprint, seq, op } => journaled_recorded(&written.bodies[seq], *fingerprint, *op),
        }
    }
}
