//! Operator reads over zenoh: an edge answers for its own books, a region for its edges'
//! from their replicas (saying how fresh). Reads never change anything and are bounded:
//! history scans at most `MAX_HISTORY_SCAN` entries per query and says where to go on.

use crate::journal::{EntryBody, Entry};
use crate::ledger::{Change, Hold, Ledger};
use crate::money::format_minor;
use crate::store::Store;
use serde_json::{json, Value};
use std::sync::Arc;

/// Most entries one history query reads; the answer's `next_before` continues the scan.
pub const MAX_HISTORY_SCAN: usize = 10_000;
/// Most lines one history or pending answer holds.
pub const MAX_ANSWER_ROWS: usize = 1_000;

/// Pending holds as JSON, with amounts at the asset's scale.
pub fn holds_json(ledger: &Ledger, account: Option<&str>, limit: usize) -> Vec<Value> {
    ledger.pending_holds(account, limit.min(MAX_ANSWER_ROWS)).into_iter().map(|(id, hold)| hold_json(ledger, id, hold)).collect()
}

pub fn hold_json(ledger: &Ledger, id: &str, hold: &Hold) -> Value {
    let scale = ledger.scale_of(&hold.asset).unwrap_or(0);
    let mut out = json!({
        "pending_id": id,
        "debit": hold.debit,
        "credit": hold.credit,
        "asset": hold.asset,
        "amount": format_minor(hold.amount, scale),
    });
    if let Some(t) = hold.expires_at_ms {
        out["expires_at_ms"] = json!(t);
    }
    if let Some(device) = &hold.device {
        out["device"] = json!(device);
    }
    if let Some(remote) = &hold.remote {
        out["to"] = json!(remote);
    }
    out
}

/// `?account=NAME;limit=N;before=SEQ`: the entries that changed `account`, newest first,
/// read from this node's journal (`replica_of` None) or from a region's replica of an edge.
pub fn history(store: &Arc<Store>, replica_of: Option<&str>, params: &HistoryParams) -> Value {
    let mut rows = Vec::new();
    let mut before = params.before;
    let mut scanned = 0;
    while scanned < MAX_HISTORY_SCAN && rows.len() < params.limit && before > 1 {
        let chunk = (MAX_HISTORY_SCAN - scanned).min(1_000);
        let entries = match store.entries_before(replica_of, before, chunk) {
            Ok(entries) => entries,
            Err(e) => return json!({"error": e.to_string()}),
        };
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
    json!({"account": params.account, "entries": rows, "next_before": if before > 1 { Some(before) } else { None }})
}

pub struct HistoryParams {
    pub account: String,
    pub limit: usize,
    pub before: u64,
}

impl HistoryParams {
    pub fn from_query(query: &bridge::zenoh::query::Query) -> Result<HistoryParams, String> {
        let params = query.parameters();
        let account = params.get("account").ok_or("account: missing (?account=NAME)")?.to_string();
        let limit = match params.get("limit") {
            None => 100,
            Some(v) => v.parse::<usize>().map_err(|_| format!("limit: {v:?} is not a number"))?.clamp(1, MAX_ANSWER_ROWS),
        };
        let before = match params.get("before") {
            None => u64::MAX,
            Some(v) => v.parse::<u64>().map_err(|_| format!("before: {v:?} is not a sequence number"))?,
        };
        Ok(HistoryParams { account, limit, before })
    }
}

fn history_row(entry: &Entry, account: &str) -> Option<Value> {
    let body: EntryBody = serde_json::from_slice(&entry.body).ok()?;
    let touched: Vec<&Change> = body.changes.iter().filter(|c| touches(c, account)).collect();
    if touched.is_empty() {
        return None;
    }
    Some(json!({
        "seq": body.seq,
        "ts_ms": body.ts_ms,
        "id": body.command.id,
        "op": body.command.op.name(),
        "device": body.device,
        "changes": touched,
    }))
}

fn touches(change: &Change, account: &str) -> bool {
    match change {
        Change::AccountOpened { account: a, .. } | Change::AccountClosed { account: a } => a == account,
        Change::Transferred { debit, credit, .. } | Change::HoldPlaced { debit, credit, .. } | Change::HoldResolved { debit, credit, .. } => {
            debit == account || credit == account
        }
    }
}
