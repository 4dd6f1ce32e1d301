//! The live tables (SPEC §10): every account, hold and decision on a received transfer as
//! the last commit left them, written in the same transaction as the group's journal
//! entries (`Store::commit`). An edge starts from them (`Store::open_books`) instead of
//! replaying its journal; `ledgerctl verify` replays the journal and checks that they are
//! equal (`Store::live_state`).
//!
//! An edge writes its accounts in fewer rows than one per account per group: each group
//! writes the accounts it changed as one row of `live_account_deltas` (keyed by the
//! journal's head after the group), and every `FOLD_EVERY_GROUPS` groups the accounts
//! changed since the last fold are written as rows of `live_accounts` and the deltas go
//! (`core::AccountRows`). Both in the group's own transaction: the tables always hold the
//! state as of the last commit, and a start-up reads `live_accounts` and then the deltas
//! after it, at most that many rows, in order. A region's replicas and the books as of an
//! anchor write rows every time.
//!
//! Values: accounts and holds in the compact encoding of `live_codec` (a delta row: a list
//! of accounts); a decision received, a format tag (`1`) then its JSON. Meta `live` is
//! `complete` once the tables hold the whole state (a new file, or an older one after its
//! first start-up wrote them from a replay).

use super::error::{Fault, StoreError};
use super::live_codec::{decode_account, decode_account_delta, decode_hold, encode_account, encode_account_delta, encode_hold};
use super::{Store, IDS, JOURNAL, META, REPLICA};
use crate::core::address::TransferKey;
use crate::core::id_filter::IdFilter;
use crate::core::journal::Chain;
use crate::core::{Account, AccountRows, LiveChanges, LiveState};
use crate::core::{Head, Hold, Ledger, Received};
use redb::{
    ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, TableDefinition, TableHandle, WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Books opened by `Store::open_books`.
pub struct Opened {
    /// The journal's end, where the next entry links.
    pub chain: Chain,
    /// The ledger's id filter knows none of the ids in the file yet: until it is given
    /// this one filled (`learn_ids`, then `Ledger::complete_id_filter`), every id not in
    /// RAM is looked up in the file (exact, only slower). None: it knows them all.
    pub ids_to_learn: Option<IdFilter>,
    /// Accounts changed by delta rows not folded yet, and how many rows: the ledger's next
    /// fold must write them, and comes that many groups sooner (`Ledger::note_unfolded`).
    pub unfolded: Vec<String>,
    pub unfolded_rows: u32,
}

/// Groups between two folds of an edge's account deltas into `live_accounts`: at most this
/// many delta rows for a start-up to read.
pub const FOLD_EVERY_GROUPS: u32 = 32;

/// An edge's accounts changed by each group since the last fold, one row per group, keyed
/// by the journal's head after it.
pub(super) const ACCOUNT_DELTAS: TableDefinition<u64, &[u8]> = TableDefinition::new("live_account_deltas");

pub(super) const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("live_accounts");
pub(super) const HOLDS: TableDefinition<&str, &[u8]> = TableDefinition::new("live_holds");
/// The node's resolved local holds: apart from the others, so that start-up reads only the
/// holds that stay in RAM (`live_holds`: pending and cross-node ones), however many holds
/// the node resolved over the years. Files written before it hold resolved holds in
/// `live_holds` too; both tables are read as one.
pub(super) const RESOLVED_HOLDS: TableDefinition<&str, &[u8]> = TableDefinition::new("live_holds_resolved");
/// The node's resolved cross-node holds (transfers it sent, decided): apart from the local
/// ones, so that operators' listings of transfers sent read only these.
pub(super) const SENT_RESOLVED: TableDefinition<&str, &[u8]> = TableDefinition::new("live_sent_resolved");
/// Key: the transfer key, `source|id`.
pub(super) const RECEIVED: TableDefinition<&str, &[u8]> = TableDefinition::new("live_received");

/// A region's replicas' live state: the same rows, keyed `edge|key`.
pub(super) const REPLICA_ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("replica_live_accounts");
pub(super) const REPLICA_HOLDS: TableDefinition<&str, &[u8]> = TableDefinition::new("replica_live_holds");
pub(super) const REPLICA_RESOLVED_HOLDS: TableDefinition<&str, &[u8]> = TableDefinition::new("replica_live_holds_resolved");
pub(super) const REPLICA_SENT_RESOLVED: TableDefinition<&str, &[u8]> = TableDefinition::new("replica_live_sent_resolved");
pub(super) const REPLICA_RECEIVED: TableDefinition<&str, &[u8]> = TableDefinition::new("replica_live_received");

/// The books as of the chain anchor of a pruned journal (`prune`): where a replay starts.
pub(super) const ANCHOR_ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("anchor_accounts");
pub(super) const ANCHOR_HOLDS: TableDefinition<&str, &[u8]> = TableDefinition::new("anchor_holds");
pub(super) const ANCHOR_RESOLVED_HOLDS: TableDefinition<&str, &[u8]> = TableDefinition::new("anchor_holds_resolved");
pub(super) const ANCHOR_SENT_RESOLVED: TableDefinition<&str, &[u8]> = TableDefinition::new("anchor_sent_resolved");
pub(super) const ANCHOR_RECEIVED: TableDefinition<&str, &[u8]> = TableDefinition::new("anchor_received");

const TAG: u8 = 1;
pub(super) const LIVE_KEY: &str = "live";
pub(super) const COMPLETE: &str = "complete";

type Rows = TableDefinition<'static, &'static str, &'static [u8]>;

/// Whose live state: the node's own books, or a region's replica of an edge (rows keyed
/// `edge|key`; node ids never hold `|`).
#[derive(Debug, Clone, Copy)]
pub(super) enum Scope<'a> {
    Own,
    Replica(&'a str),
    /// The node's books as of its journal's anchor.
    Anchor,
}

impl Scope<'_> {
    /// The tables of accounts, holds and decisions received.
    pub(super) fn tables(self) -> [Rows; 3] {
        match self {
            Scope::Own => [ACCOUNTS, HOLDS, RECEIVED],
            Scope::Replica(_) => [REPLICA_ACCOUNTS, REPLICA_HOLDS, REPLICA_RECEIVED],
            Scope::Anchor => [ANCHOR_ACCOUNTS, ANCHOR_HOLDS, ANCHOR_RECEIVED],
        }
    }

    /// Where the scope's resolved holds go, when apart from the pending ones: local holds,
    /// and cross-node ones (transfers sent).
    pub(super) fn resolved_holds(self) -> Option<[Rows; 2]> {
        match self {
            Scope::Own => Some([RESOLVED_HOLDS, SENT_RESOLVED]),
            Scope::Replica(_) => Some([REPLICA_RESOLVED_HOLDS, REPLICA_SENT_RESOLVED]),
            Scope::Anchor => Some([ANCHOR_RESOLVED_HOLDS, ANCHOR_SENT_RESOLVED]),
        }
    }

    /// The tables a hold may be in, resolved ones first.
    pub(super) fn hold_tables(self) -> Vec<Rows> {
        let [_, holds, _] = self.tables();
        self.resolved_holds().into_iter().flatten().chain([holds]).collect()
    }

    /// The table `hold` goes in (None: removed from all).
    fn table_of(self, hold: Option<&Hold>) -> Option<Rows> {
        let [_, holds, _] = self.tables();
        match (hold, self.resolved_holds()) {
            (None, _) => None,
            (Some(_), None) => Some(holds),
            (Some(h), Some(_)) if h.is_pending() => Some(holds),
            (Some(h), Some([local, sent])) => Some(if h.remote.is_some() { sent } else { local }),
        }
    }

    pub(super) fn key<'k>(self, key: &'k str) -> Cow<'k, str> {
        match self {
            Scope::Own | Scope::Anchor => Cow::Borrowed(key),
            Scope::Replica(edge) => Cow::Owned(format!("{edge}|{key}")),
        }
    }

    /// The meta key that says this scope's tables are complete.
    fn complete_key(self) -> String {
        match self {
            Scope::Own => LIVE_KEY.to_string(),
            Scope::Replica(edge) => format!("replica_live:{edge}"),
            Scope::Anchor => "anchor_live".to_string(),
        }
    }

    /// Every row of this scope in `table`, keys without the scope's prefix.
    fn rows(self, tx: &ReadTransaction, table: Rows) -> Result<Vec<(String, Vec<u8>)>, Fault> {
        let table = match tx.open_table(table) {
            Ok(table) => table,
            // Made by the first pruning.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let (from, to) = match self {
            Scope::Own | Scope::Anchor => (String::new(), None),
            // `}` follows `|`: the range holds exactly the keys that start `edge|`.
            Scope::Replica(edge) => (format!("{edge}|"), Some(format!("{edge}}}"))),
        };
        let range = match &to {
            Some(to) => table.range(from.as_str()..to.as_str())?,
            None => table.range(from.as_str()..)?,
        };
        let mut out = Vec::new();
        for row in range {
            let (key, value) = row?;
            out.push((key.value()[from.len()..].to_string(), value.value().to_vec()));
        }
        Ok(out)
    }
}

fn encode_json(value: &impl Serialize, out: &mut Vec<u8>) {
    out.clear();
    out.push(TAG);
    serde_json::to_writer(&mut *out, value).expect("live state serializes");
}

pub(super) fn decode_json<T: DeserializeOwned>(table: &str, key: &str, bytes: &[u8]) -> Result<T, Fault> {
    match bytes.split_first() {
        Some((&TAG, json)) => serde_json::from_slice(json).map_err(|e| Fault::Corrupt(format!("{table} {key:?} cannot be read: {e}"))),
        _ => Err(Fault::Corrupt(format!("{table} {key:?}: unknown format tag"))),
    }
}

/// Writes one group's changes into the live tables of `tx`, each table in key order;
/// `head`: the journal's head after the group, the key of its delta row.
pub(super) fn write_changes(tx: &WriteTransaction, scope: Scope, changes: &LiveChanges, head: u64) -> Result<(), Fault> {
    if changes.is_empty() {
        return Ok(());
    }
    let [accounts_table, _, received_table] = scope.tables();
    let mut bytes = Vec::new();
    match (scope, changes.accounts_are) {
        (_, AccountRows::Fold) => {
            let accounts = changes.accounts.iter().map(|(name, a)| (scope.key(name), a.as_ref()));
            write_rows(&mut tx.open_table(accounts_table)?, accounts, encode_account, &mut bytes)?;
            if matches!(scope, Scope::Own) {
                // Every account a delta changed is among the rows just written.
                tx.open_table(ACCOUNT_DELTAS)?.retain(|_, _| false)?;
            }
        }
        (_, AccountRows::Delta) if changes.accounts.is_empty() => {}
        (Scope::Own, AccountRows::Delta) => write_delta(tx, &changes.accounts, head, &mut bytes)?,
        (Scope::Replica(_) | Scope::Anchor, AccountRows::Delta) => {
            return Err(Fault::Corrupt("only an edge's own accounts are written as deltas".to_string()))
        }
    }
    // A hold is in one table: a resolved one moves to the table of its kind, which nothing
    // moves it out of (a resolution is final); a removed one leaves them all.
    for table in scope.hold_tables() {
        let name = table.name();
        let rows = changes.holds.iter().map(|(id, h)| {
            let here = scope.table_of(h.as_ref()).is_some_and(|t| t.name() == name);
            (scope.key(id), if here { h.as_ref() } else { None })
        });
        write_rows(&mut tx.open_table(table)?, rows, encode_hold, &mut bytes)?;
    }
    let received = changes.received.iter().map(|(key, r)| (Cow::Owned(scope.key(&key.to_string()).into_owned()), Some(r)));
    write_rows(&mut tx.open_table(received_table)?, received, encode_json, &mut bytes)?;
    Ok(())
}

/// Writes a group's accounts as one delta row at `head`. A group that changed accounts
/// journaled entries, so `head` is new; were it not, the row there is extended, later
/// values winning.
fn write_delta(tx: &WriteTransaction, accounts: &[(String, Option<Account>)], head: u64, bytes: &mut Vec<u8>) -> Result<(), Fault> {
    let mut deltas = tx.open_table(ACCOUNT_DELTAS)?;
    let before = deltas.get(head)?.map(|row| decode_account_delta(row.value()));
    match before {
        None => encode_account_delta(accounts, bytes),
        Some(before) => {
            let mut merged: BTreeMap<String, Option<Account>> =
                before.map_err(|e| Fault::Corrupt(format!("account delta {head} cannot be read: {e}")))?.into_iter().collect();
            merged.extend(accounts.iter().cloned());
            encode_account_delta(&merged.into_iter().collect::<Vec<_>>(), bytes);
        }
    }
    deltas.insert(head, bytes.as_slice())?;
    Ok(())
}

/// One group's accounts with their values after it (None: removed).
type Delta = Vec<(String, Option<Account>)>;

/// An edge's delta rows not folded yet, oldest first, each with its key.
fn account_deltas(tx: &ReadTransaction) -> Result<Vec<(u64, Delta)>, Fault> {
    let table = match tx.open_table(ACCOUNT_DELTAS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for row in table.iter()? {
        let (head, bytes) = row?;
        let delta = decode_account_delta(bytes.value())
            .map_err(|e| Fault::Corrupt(format!("account delta {} cannot be read: {e}", head.value())))?;
        out.push((head.value(), delta));
    }
    Ok(out)
}

/// Inserts each `Some` value under its key, removes each `None`.
fn write_rows<'a, V: 'a>(
    table: &mut Table<&str, &[u8]>,
    rows: impl Iterator<Item = (Cow<'a, str>, Option<&'a V>)>,
    encode: impl Fn(&V, &mut Vec<u8>),
    bytes: &mut Vec<u8>,
) -> Result<(), Fault> {
    for (key, value) in rows {
        match value {
            Some(value) => {
                encode(value, bytes);
                table.insert(key.as_ref(), bytes.as_slice())?;
            }
            None => {
                table.remove(key.as_ref())?;
            }
        }
    }
    Ok(())
}

/// Fewest bytes of the file one row of `ids` takes: a 2-byte key (`:` and a 1-byte id), a
/// 3-byte value and their two 4-byte ends in a leaf. Rows average about 90; a bound that
/// undercounts would only cost the filter a layer more.
const MIN_ID_ROW_BYTES: u64 = 13;

impl Store {
    /// Restores an edge's books from the live tables: no replay, whatever the journal's
    /// length. The recorded ids are left for the caller to learn (`Opened::ids_to_learn`);
    /// meanwhile the ledger reads every id it does not hold from the file. A file whose
    /// tables are not complete yet (written before they existed) is replayed once and its
    /// tables written.
    pub fn open_books(&self, ledger: &mut Ledger) -> Result<Opened, StoreError> {
        assert!(!ledger.keeps_all_ids(), "the live tables hold no id records: give the ledger its id archive first");
        if !self.live_complete(Scope::Own).map_err(|f| self.fail(f))? {
            let chain = self.load(ledger)?;
            let state = ledger.live_state();
            let _ = ledger.take_live_changes(); // all of it goes in at once, below
            self.write(|| self.write_live_state(Scope::Own, &state))?;
            return Ok(Opened { chain, ids_to_learn: None, unfolded: Vec::new(), unfolded_rows: 0 });
        }
        let started = std::time::Instant::now();
        let (chain, head) = self.journal_end().map_err(|f| self.fail(f))?;
        // The resolved holds stay in their table: the ledger reads them back when named.
        let state = self.read_live_state(Scope::Own, head, false).map_err(|f| self.fail(f))?;
        let (accounts, holds) = (state.accounts.len(), state.holds.len());
        ledger.restore_live(state.head, state.accounts, state.holds, state.received.into_values());
        ledger.check_invariants().map_err(|e| self.fail(Fault::Invariant(format!("the live tables: {e}"))))?;
        tracing::info!(accounts, holds, ms = started.elapsed().as_millis() as u64, "books opened from the live tables");
        let ids_to_learn = ledger.id_filter_to_build();
        debug_assert!(ids_to_learn.is_some(), "a ledger with an id archive keeps a filter");
        let (unfolded, unfolded_rows) = self.unfolded_accounts().map_err(|f| self.fail(f))?;
        Ok(Opened { chain, ids_to_learn, unfolded, unfolded_rows })
    }

    /// The accounts changed by delta rows not folded yet, and how many rows.
    fn unfolded_accounts(&self) -> Result<(Vec<String>, u32), Fault> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let deltas = account_deltas(&tx)?;
        let rows = u32::try_from(deltas.len()).unwrap_or(u32::MAX);
        let mut names: Vec<String> = deltas.into_iter().flat_map(|(_, delta)| delta.into_iter().map(|(name, _)| name)).collect();
        names.sort_unstable();
        names.dedup();
        Ok((names, rows))
    }

    /// The live state the tables hold, with the journal's head (for `ledgerctl verify`).
    pub fn live_state(&self) -> Result<Option<LiveState>, StoreError> {
        let read = || -> Result<Option<LiveState>, Fault> {
            if !self.live_complete(Scope::Own)? {
                return Ok(None);
            }
            let (_, head) = self.journal_end()?;
            Ok(Some(self.live_state_at(Scope::Own, head)?))
        };
        read().map_err(|f| self.fail(f))
    }

    /// Restores a region's replica of `edge` from its live tables, without replaying the
    /// replica; the first time (a file written before them), replays it and writes them.
    /// Returns the replica's end, where the edge's next entry links.
    pub fn open_replica(&self, edge: &str, ledger: &mut Ledger) -> Result<Chain, StoreError> {
        let scope = Scope::Replica(edge);
        if !self.live_complete(scope).map_err(|f| self.fail(f))? {
            let chain = self.load_replica(edge, ledger)?;
            let state = ledger.live_state();
            let _ = ledger.take_live_changes();
            self.write(|| self.write_live_state(scope, &state))?;
            return Ok(chain);
        }
        let (chain, head) = self.replica_end(edge).map_err(|f| self.fail(f))?;
        // The resolved holds stay in their table: replay reads one back when named.
        let state = self.read_live_state(scope, head, false).map_err(|f| self.fail(f))?;
        ledger.restore_live(state.head, state.accounts, state.holds, state.received.into_values());
        ledger.check_invariants().map_err(|e| self.fail(Fault::Invariant(format!("the live tables of the replica of {edge}: {e}"))))?;
        Ok(chain)
    }

    /// The live state a replica's tables hold (for `ledgerctl verify`); None: not written yet.
    pub fn replica_live_state(&self, edge: &str) -> Result<Option<LiveState>, StoreError> {
        let read = || -> Result<Option<LiveState>, Fault> {
            let scope = Scope::Replica(edge);
            if !self.live_complete(scope)? {
                return Ok(None);
            }
            let (_, head) = self.replica_end(edge)?;
            Ok(Some(self.live_state_at(scope, head)?))
        };
        read().map_err(|f| self.fail(f))
    }

    fn live_complete(&self, scope: Scope) -> Result<bool, Fault> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let meta = tx.open_table(META)?;
        let live = meta.get(scope.complete_key().as_str())?.map(|v| v.value() == COMPLETE);
        Ok(live.unwrap_or(false))
    }

    /// The last entry of the replica of `edge`: its link and head.
    fn replica_end(&self, edge: &str) -> Result<(Chain, Head), Fault> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let replica = tx.open_table(REPLICA)?;
        let last = replica.range((edge, 0)..=(edge, u64::MAX))?.next_back();
        match last {
            None => Ok((Chain::default(), Head { seq: 0, ts_ms: 0 })),
            Some(row) => {
                let seq = row?.0.value().1;
                let last = super::rows::replica_entries(self.rows, &replica, edge, seq, seq, 1)?;
                let last = last.first().ok_or_else(|| Fault::Corrupt(format!("the replica of {edge} cannot read its entry {seq}")))?;
                let body = last.parse_body()?;
                Ok((Chain { seq, hash: last.hash }, Head { seq, ts_ms: body.ts_ms }))
            }
        }
    }

    /// The last journal entry's link and head, checked against the head the last commit
    /// recorded.
    fn journal_end(&self) -> Result<(Chain, Head), Fault> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let journal = tx.open_table(JOURNAL)?;
        let meta = tx.open_table(META)?;
        let anchor = super::anchor::anchor_in(&meta)?;
        let last_seq = journal.last()?.map(|(seq, _)| seq.value());
        let (chain, head) = match last_seq {
            None => (Chain::default(), Head { seq: 0, ts_ms: 0 }),
            Some(seq) => {
                let last = super::rows::entries_in(self.rows, &journal, &anchor.chain, seq, seq, 1)?;
                let last = last.first().ok_or_else(|| Fault::Corrupt(format!("the journal cannot read its entry {seq}")))?;
                let body = last.parse_body()?;
                (Chain { seq, hash: last.hash }, Head { seq, ts_ms: body.ts_ms })
            }
        };
        let recorded = meta.get("head")?.map(|v| v.value().to_string());
        super::rows::check_head(self.rows, &anchor.chain, &chain, recorded.as_deref())?;
        Ok((chain, head))
    }

    pub(super) fn live_state_at(&self, scope: Scope, head: Head) -> Result<LiveState, Fault> {
        self.read_live_state(scope, head, true)
    }

    /// The live state; without `finals`, none of the final values that may stay out of RAM
    /// (resolved holds in their own tables, decisions on transfers received).
    pub(super) fn read_live_state(&self, scope: Scope, head: Head, finals: bool) -> Result<LiveState, Fault> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let [accounts_table, holds_table, received_table] = scope.tables();
        let mut accounts = BTreeMap::new();
        for (name, bytes) in scope.rows(&tx, accounts_table)? {
            let account = decode_account(&bytes).map_err(|e| Fault::Corrupt(format!("account {name:?} cannot be read: {e}")))?;
            accounts.insert(name, account);
        }
        if matches!(scope, Scope::Own) {
            // The deltas since the last fold, in the order the groups were written.
            for (_, delta) in account_deltas(&tx)? {
                for (name, account) in delta {
                    match account {
                        Some(account) => accounts.insert(name, account),
                        None => accounts.remove(&name),
                    };
                }
            }
        }
        let mut holds = BTreeMap::new();
        let resolved = scope.resolved_holds().filter(|_| finals).into_iter().flatten();
        for table in [holds_table].into_iter().chain(resolved) {
            for (id, bytes) in scope.rows(&tx, table)? {
                let hold = decode_hold(&bytes).map_err(|e| Fault::Corrupt(format!("hold {id:?} cannot be read: {e}")))?;
                if holds.insert(id.clone(), hold).is_some() {
                    return Err(Fault::Corrupt(format!("hold {id:?} is both pending and resolved in the live tables")));
                }
            }
        }
        let mut received = BTreeMap::new();
        let received_rows = if finals { scope.rows(&tx, received_table)? } else { Vec::new() };
        for (key, bytes) in received_rows {
            let decision: Received = decode_json("received transfer", &key, &bytes)?;
            received.insert(TransferKey::parse(&key), decision);
        }
        Ok(LiveState { head, accounts, holds, received })
    }

    /// Puts every id key in the file (as of now) into `filter`; returns how many.
    /// The filter is sized for them first (`IdFilter::size_for`).
    pub fn learn_ids(&self, filter: &mut IdFilter) -> Result<u64, StoreError> {
        let mut learn = || -> Result<u64, Fault> {
            // The tail before the table: a fold moves records from one to the other only
            // after its commit, so a record gone from the tail is in the table read next.
            let tail: Vec<String> = self.id_tail().records.keys().cloned().collect();
            let db = self.db()?;
            let tx = db.begin_read()?;
            let table = tx.open_table(IDS)?;
            // Sized from the table's length (a field redb keeps, not a count): one layer for
            // all. A field is not a proof: no more rows than the file has room for are
            // believed, so a damaged length cannot make the node allocate past its file.
            let room = std::fs::metadata(&self.path).map_or(0, |m| m.len() / MIN_ID_ROW_BYTES);
            let rows = usize::try_from(table.len()?.min(room)).unwrap_or(usize::MAX);
            filter.size_for(rows.saturating_add(tail.len()));
            let mut count = tail.len() as u64;
            for key in &tail {
                filter.insert(key);
            }
            for row in table.iter()? {
                let (key, _) = row?;
                filter.insert(key.value());
                count += 1;
            }
            Ok(count)
        };
        learn().map_err(|f| self.fail(f))
    }

    /// Writes the whole live state into empty tables and marks them complete.
    fn write_live_state(&self, scope: Scope, state: &LiveState) -> Result<(), Fault> {
        let db = self.db()?;
        let tx = self.begin_durable(&db)?;
        {
            let changes = LiveChanges {
                accounts: state.accounts.iter().map(|(n, a)| (n.clone(), Some(a.clone()))).collect(),
                accounts_are: AccountRows::Fold,
                holds: state.holds.iter().map(|(id, h)| (id.clone(), Some(h.clone()))).collect(),
                received: state.received.iter().map(|(k, r)| (k.clone(), r.clone())).collect(),
            };
            write_changes(&tx, scope, &changes, state.head.seq)?;
            tx.open_table(META)?.insert(scope.complete_key().as_str(), COMPLETE)?;
        }
        tx.commit()?;
        Ok(())
    }
}
