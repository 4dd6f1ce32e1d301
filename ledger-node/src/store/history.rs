//! An account's history read from a file: the journal (or a region's replica of an edge)
//! scanned backwards in bounded chunks, each entry shaped by `books::queries`.

use super::{Store, StoreError};
use crate::books::queries::{history_answer, history_row, HistoryParams, MAX_HISTORY_SCAN};
use serde_json::Value;

/// Most entries read from the file at once.
const CHUNK: usize = 1_000;

/// `?account=NAME;limit=N;before=SEQ`: the entries that changed `account`, newest first,
/// read from this node's journal (`replica_of` None) or from a region's replica of an edge.
/// Scans at most `MAX_HISTORY_SCAN` entries; the answer's `next_before` goes on from there.
/// Where a pruned journal ends, the answer says `pruned_through` (the anchor's seq).
pub fn history(store: &Store, replica_of: Option<&str>, params: &HistoryParams) -> Result<Value, StoreError> {
    let mut rows = Vec::new();
    let mut before = params.before;
    let mut scanned = 0;
    while scanned < MAX_HISTORY_SCAN && rows.len() < params.limit && before > 1 {
        let chunk = (MAX_HISTORY_SCAN - scanned).min(CHUNK);
        let entries = store.entries_before(replica_of, before, chunk)?;
        if entries.is_empty() {
            before = 1;
            break;
        }
        for entry in entries {
            scanned += 1;
            before = entry.seq;
            if let Some(row) = history_row(&entry, &params.account) {
                rows.push(row);
                if rows.len() >= params.limit {
                    break;
                }
            }
        }
    }
    let mut answer = history_answer(&params.account, rows, before);
    // Older entries of a pruned journal are at the region: say where this one stops.
    let anchor = if replica_of.is_none() { store.anchor()?.chain.seq } else { 0 };
    if anchor > 0 && before <= anchor + 1 {
        answer["pruned_through"] = anchor.into();
    }
    Ok(answer)
}
