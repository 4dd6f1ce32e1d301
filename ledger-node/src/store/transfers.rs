//! Operators' pages of the transfers a node sent and received, listed from its live tables
//! (a region: from a replica's): decisions on transfers received and resolved cross-node
//! holds leave RAM, the file keeps them all. A page reads at most `limit` + 1 rows of each
//! table it lists from, whatever the history; pending holds are few and read whole.

use super::error::{Fault, StoreError};
use super::live::{decode_json, Scope};
use super::live_codec::decode_hold;
use super::Store;
use crate::books::queries::{Side, TransfersPage};
use crate::core::{Hold, Received};
use redb::{ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};
use std::ops::Bound;

type Rows = TableDefinition<'static, &'static str, &'static [u8]>;

impl Store {
    /// Up to `limit` transfers of `side` with keys after `after`, of the node's own books or
    /// (`edge`) of a region's replica, as the last commit left them.
    pub fn transfers_page(&self, edge: Option<&str>, side: Side, after: Option<&str>, limit: usize) -> Result<TransfersPage, StoreError> {
        let scope = edge.map_or(Scope::Own, Scope::Replica);
        let read = || -> Result<TransfersPage, Fault> {
            let db = self.db()?;
            let tx = db.begin_read()?;
            let [_, holds, received] = scope.tables();
            match side {
                Side::Sent => {
                    // Pending ones are in the holds table, with local holds; decided ones in
                    // a table of their own (files written before it: in the holds table).
                    let mut rows: Vec<(String, Hold)> = Vec::new();
                    for (id, bytes) in rows_after(&tx, scope, holds, after, usize::MAX)? {
                        let hold = decode_hold(&bytes).map_err(|e| Fault::Corrupt(format!("hold {id:?} cannot be read: {e}")))?;
                        if hold.remote.is_some() {
                            rows.push((id, hold));
                        }
                    }
                    if let Some([_, sent]) = scope.resolved_holds() {
                        for (id, bytes) in rows_after(&tx, scope, sent, after, limit.saturating_add(1))? {
                            let hold = decode_hold(&bytes).map_err(|e| Fault::Corrupt(format!("hold {id:?} cannot be read: {e}")))?;
                            rows.push((id, hold));
                        }
                    }
                    rows.sort_by(|a, b| a.0.cmp(&b.0));
                    let next_after = next_after(&mut rows, limit, |(id, _)| id.clone());
                    Ok(TransfersPage::Sent { rows, next_after })
                }
                Side::Received => {
                    let mut rows: Vec<(String, Received)> = Vec::new();
                    for (key, bytes) in rows_after(&tx, scope, received, after, limit.saturating_add(1))? {
                        let decision = decode_json("received transfer", &key, &bytes)?;
                        rows.push((key, decision));
                    }
                    let next_after = next_after(&mut rows, limit, |(key, _)| key.clone());
                    Ok(TransfersPage::Received { rows: rows.into_iter().map(|(_, r)| r).collect(), next_after })
                }
            }
        };
        read().map_err(|f| self.fail(f))
    }
}

/// Keeps the first `limit` of `rows`; the key of the last kept when more remain.
fn next_after<T>(rows: &mut Vec<T>, limit: usize, key: impl Fn(&T) -> String) -> Option<String> {
    let more = rows.len() > limit;
    rows.truncate(limit);
    if more {
        rows.last().map(key)
    } else {
        None
    }
}

/// Up to `limit` rows of `scope` in `table` with keys after `after`, in key order, keys
/// without the scope's prefix. A table the file does not have yet holds none.
fn rows_after(tx: &ReadTransaction, scope: Scope, table: Rows, after: Option<&str>, limit: usize) -> Result<Vec<(String, Vec<u8>)>, Fault> {
    let table = match tx.open_table(table) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let prefix = scope.key("").into_owned();
    let from = match after {
        Some(after) => Bound::Excluded(scope.key(after).into_owned()),
        None => Bound::Included(prefix.clone()),
    };
    // `}` follows `|`: a replica's keys, `edge|…`, all sort below `edge}`.
    let to = match prefix.strip_suffix('|') {
        Some(edge) => Bound::Excluded(format!("{edge}}}")),
        None => Bound::Unbounded,
    };
    let bounds = (from.as_ref().map(String::as_str), to.as_ref().map(String::as_str));
    let mut out = Vec::new();
    for row in table.range(bounds)?.take(limit) {
        let (key, value) = row?;
        out.push((key.value()[prefix.len()..].to_string(), value.value().to_vec()));
    }
    Ok(out)
}
