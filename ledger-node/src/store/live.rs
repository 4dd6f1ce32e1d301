//! The live tables (SPEC §10): every account, hold and decision on a received transfer as
//! the last commit left them, written in the same transaction as the group's journal
//! entries (`Store::commit`). An edge starts from them (`Store::open_books`) instead of
//! replaying its journal; `ledgerctl verify` replays the journal and checks that they are
//! equal (`Store::live_state`).
//!
//! Values: accounts and holds in the compact encoding of `live_codec`; a decision received,
//! a format tag (`1`) then its JSON. Meta `live` is `complete` once the tables hold the
//! whole state (a new file, or an older one after its first start-up wrote them from a
//! replay).

use super::error::{Fault, StoreError};
use super::live_codec::{decode_account, decode_hold, encode_account, encode_hold};
use super::{Store, IDS, JOURNAL, META};
use crate::core::address::TransferKey;
use crate::core::id_filter::IdFilter;
use crate::core::journal::{hex, Chain, Entry};
use crate::core::{Head, Ledger, Received};
use crate::core::{LiveChanges, LiveState};
use redb::{Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;

/// Books opened by `Store::open_books`.
pub struct Opened {
    /// The journal's end, where the next entry links.
    pub chain: Chain,
    /// The ledger's id filter knows none of the ids in the file yet: until it is given
    /// this one filled (`learn_ids`, then `Ledger::complete_id_filter`), every id not in
    /// RAM is looked up in the file (exact, only slower). None: it knows them all.
    pub ids_to_learn: Option<IdFilter>,
}

pub(super) const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("live_accounts");
pub(super) const HOLDS: TableDefinition<&str, &[u8]> = TableDefinition::new("live_holds");
/// Key: the transfer key, `source|id`.
pub(super) const RECEIVED: TableDefinition<&str, &[u8]> = TableDefinition::new("live_received");

const TAG: u8 = 1;
pub(super) const LIVE_KEY: &str = "live";
pub(super) const COMPLETE: &str = "complete";

fn encode_json(value: &impl Serialize, out: &mut Vec<u8>) {
    out.clear();
    out.push(TAG);
    serde_json::to_writer(&mut *out, value).expect("live state serializes");
}

fn decode_json<T: DeserializeOwned>(table: &str, key: &str, bytes: &[u8]) -> Result<T, Fault> {
    match bytes.split_first() {
        Some((&TAG, json)) => serde_json::from_slice(json).map_err(|e| Fault::Corrupt(format!("{table} {key:?} cannot be read: {e}"))),
        _ => Err(Fault::Corrupt(format!("{table} {key:?}: unknown format tag"))),
    }
}

/// Writes one group's changes into the live tables of `tx`, each table in key order.
pub(super) fn write_changes(tx: &WriteTransaction, changes: &LiveChanges) -> Result<(), Fault> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut bytes = Vec::new();
    let accounts = changes.accounts.iter().map(|(name, a)| (name.as_str(), a.as_ref()));
    write_rows(&mut tx.open_table(ACCOUNTS)?, accounts, encode_account, &mut bytes)?;
    let holds = changes.holds.iter().map(|(id, h)| (id.as_str(), h.as_ref()));
    write_rows(&mut tx.open_table(HOLDS)?, holds, encode_hold, &mut bytes)?;
    let keys: Vec<String> = changes.received.iter().map(|(key, _)| key.to_string()).collect();
    let received = keys.iter().zip(&changes.received).map(|(key, (_, r))| (key.as_str(), Some(r)));
    write_rows(&mut tx.open_table(RECEIVED)?, received, encode_json, &mut bytes)?;
    Ok(())
}

/// Inserts each `Some` value under its key, removes each `None`.
fn write_rows<'a, V: 'a>(
    table: &mut Table<&str, &[u8]>,
    rows: impl Iterator<Item = (&'a str, Option<&'a V>)>,
    encode: impl Fn(&V, &mut Vec<u8>),
    bytes: &mut Vec<u8>,
) -> Result<(), Fault> {
    for (key, value) in rows {
        match value {
            Some(value) => {
                encode(value, bytes);
                table.insert(key, bytes.as_slice())?;
            }
            None => {
                table.remove(key)?;
            }
        }
    }
    Ok(())
}

impl Store {
    /// Restores an edge's books from the live tables: no replay, whatever the journal's
    /// length. The recorded ids are left for the caller to learn (`Opened::ids_to_learn`);
    /// meanwhile the ledger reads every id it does not hold from the file. A file whose
    /// tables are not complete yet (written before they existed) is replayed once and its
    /// tables written.
    pub fn open_books(&self, ledger: &mut Ledger) -> Result<Opened, StoreError> {
        assert!(!ledger.keeps_all_ids(), "the live tables hold no id records: give the ledger its id archive first");
        if !self.live_complete().map_err(|f| self.fail(f))? {
            let chain = self.load(ledger)?;
            let state = ledger.live_state();
            let _ = ledger.take_live_changes(); // all of it goes in at once, below
            self.write(|| self.write_live_state(&state))?;
            return Ok(Opened { chain, ids_to_learn: None });
        }
        let started = std::time::Instant::now();
        let (chain, head) = self.journal_end().map_err(|f| self.fail(f))?;
        let state = self.live_state_at(head).map_err(|f| self.fail(f))?;
        let (accounts, holds) = (state.accounts.len(), state.holds.len());
        ledger.restore_live(state.head, state.accounts, state.holds, state.received.into_values());
        ledger.check_invariants().map_err(|e| self.fail(Fault::Invariant(format!("the live tables: {e}"))))?;
        tracing::info!(accounts, holds, ms = started.elapsed().as_millis() as u64, "books opened from the live tables");
        let ids_to_learn = ledger.id_filter_to_build();
        debug_assert!(ids_to_learn.is_some(), "a ledger with an id archive keeps a filter");
        Ok(Opened { chain, ids_to_learn })
    }

    /// The live state the tables hold, with the journal's head (for `ledgerctl verify`).
    pub fn live_state(&self) -> Result<Option<LiveState>, StoreError> {
        let read = || -> Result<Option<LiveState>, Fault> {
            if !self.live_complete()? {
                return Ok(None);
            }
            let (_, head) = self.journal_end()?;
            Ok(Some(self.live_state_at(head)?))
        };
        read().map_err(|f| self.fail(f))
    }

    fn live_complete(&self) -> Result<bool, Fault> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let meta = tx.open_table(META)?;
        let live = meta.get(LIVE_KEY)?.map(|v| v.value() == COMPLETE);
        Ok(live.unwrap_or(false))
    }

    /// The last journal entry's link and head, checked against the head the last commit
    /// recorded.
    fn journal_end(&self) -> Result<(Chain, Head), Fault> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let journal = tx.open_table(JOURNAL)?;
        let (chain, head) = match journal.last()? {
            None => (Chain::default(), Head { seq: 0, ts_ms: 0 }),
            Some((seq, bytes)) => {
                let entry = Entry::decode(seq.value(), bytes.value())?;
                let body = entry.parse_body()?;
                (Chain { seq: entry.seq, hash: entry.hash }, Head { seq: entry.seq, ts_ms: body.ts_ms })
            }
        };
        let recorded = tx.open_table(META)?.get("head")?.map(|v| v.value().to_string());
        let found = format!("{}:{}", chain.seq, hex(&chain.hash));
        if recorded.as_deref().is_some_and(|r| r != found) || (recorded.is_none() && chain.seq > 0) {
            return Err(Fault::Corrupt(format!(
                "the journal ends at {found}, but the last commit recorded {}: entries are missing",
                recorded.as_deref().unwrap_or("no head")
            )));
        }
        Ok((chain, head))
    }

    fn live_state_at(&self, head: Head) -> Result<LiveState, Fault> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let mut accounts = BTreeMap::new();
        for row in tx.open_table(ACCOUNTS)?.iter()? {
            let (name, bytes) = row?;
            let account =
                decode_account(bytes.value()).map_err(|e| Fault::Corrupt(format!("account {:?} cannot be read: {e}", name.value())))?;
            accounts.insert(name.value().to_string(), account);
        }
        let mut holds = BTreeMap::new();
        for row in tx.open_table(HOLDS)?.iter()? {
            let (id, bytes) = row?;
            let hold = decode_hold(bytes.value()).map_err(|e| Fault::Corrupt(format!("hold {:?} cannot be read: {e}", id.value())))?;
            holds.insert(id.value().to_string(), hold);
        }
        let mut received = BTreeMap::new();
        for row in tx.open_table(RECEIVED)?.iter()? {
            let (key, bytes) = row?;
            let decision: Received = decode_json("received transfer", key.value(), bytes.value())?;
            received.insert(TransferKey::parse(key.value()), decision);
        }
        Ok(LiveState { head, accounts, holds, received })
    }

    /// Puts every id key in the file (as of now) into `filter`; returns how many.
    pub fn learn_ids(&self, filter: &mut IdFilter) -> Result<u64, StoreError> {
        let mut learn = || -> Result<u64, Fault> {
            let db = self.db()?;
            let tx = db.begin_read()?;
            let mut count = 0;
            for row in tx.open_table(IDS)?.iter()? {
                let (key, _) = row?;
                filter.insert(key.value());
                count += 1;
            }
            Ok(count)
        };
        learn().map_err(|f| self.fail(f))
    }

    /// Writes the whole live state into empty tables and marks them complete.
    fn write_live_state(&self, state: &LiveState) -> Result<(), Fault> {
        let db = self.db()?;
        let mut tx = db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        {
            let changes = LiveChanges {
                accounts: state.accounts.iter().map(|(n, a)| (n.clone(), Some(a.clone()))).collect(),
                holds: state.holds.iter().map(|(id, h)| (id.clone(), Some(h.clone()))).collect(),
                received: state.received.iter().map(|(k, r)| (k.clone(), r.clone())).collect(),
            };
            write_changes(&tx, &changes)?;
            tx.open_table(META)?.insert(LIVE_KEY, COMPLETE)?;
        }
        tx.commit()?;
        Ok(())
    }
}
