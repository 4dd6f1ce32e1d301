//! Operator reads rendered from a ledger or from journal entries: balances, pending holds,
//! pages of accounts and transfers, history rows. Pure: the shell reads the ledger or the
//! store and passes what it read; these functions only shape the answer, and bound it
//! (`MAX_ANSWER_ROWS` rows, `MAX_HISTORY_SCAN` entries per history query).

use super::reconcile::{AccountRow, IncomingRow, OutgoingRow};
use crate::core::journal::Entry;
use crate::core::money::format_minor;
use crate::core::{Hold, Ledger, Received};
use serde_json::{json, Value};

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

pub struct HistoryParams {
    pub account: String,
    pub limit: usize,
    pub before: u64,
}

impl HistoryParams {
    /// From a query's parameters (`get` looks one up by name).
    pub fn parse<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<HistoryParams, String> {
        let params = Params(get);
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

/// A journal entry as a history row of `account`, if it changed that account.
pub fn history_row(entry: &Entry, account: &str) -> Option<Value> {
    let body = entry.parse_body().ok()?;
    let touched: Vec<_> = body.changes.iter().filter(|c| c.touches(account)).collect();
    if touched.is_empty() {
        return None;
    }
    Some(json!({
        "seq": body.seq,
        "ts_ms": body.ts_ms,
        "id": body.command.id(),
        "op": body.command.op_name(),
        "device": body.device,
        "changes": touched,
    }))
}

/// A history answer: the rows found, and where to go on (`next_before`) when the scan
/// stopped before the journal's start.
pub fn history_answer(account: &str, rows: Vec<Value>, before: u64) -> Value {
    json!({"account": account, "entries": rows, "next_before": if before > 1 { Some(before) } else { None }})
}

/// Query parameters by name.
struct Params<F>(F);

impl<'a, F: Fn(&str) -> Option<&'a str>> Params<F> {
    fn get(&self, name: &str) -> Option<&'a str> {
        (self.0)(name)
    }
}

/// `?after=KEY;limit=N` of the `accounts` and `transfers` queries.
pub struct PageParams {
    pub after: Option<String>,
    pub limit: usize,
}

impl PageParams {
    /// From a query's parameters (`get` looks one up by name).
    pub fn parse<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<PageParams, String> {
        let params = Params(get);
        let limit = match params.get("limit") {
            None => MAX_ANSWER_ROWS,
            Some(v) => v.parse::<usize>().map_err(|_| format!("limit: {v:?} is not a number"))?.clamp(1, MAX_ANSWER_ROWS),
        };
        Ok(PageParams { after: params.get("after").map(str::to_string), limit })
    }
}

/// Accounts of `ledger` after `after` by name, with their balances: `{"accounts":[…],
/// "next_after":NAME|null,"seq":N}`.
pub fn accounts_page(ledger: &Ledger, page: &PageParams) -> Value {
    let after = page.after.as_deref();
    let (rows, next) = smallest_after(ledger.accounts().map(|(n, a)| (n.as_str(), (n, a))), after, page.limit);
    let rows: Vec<AccountRow> = rows.into_iter().map(|(n, a)| AccountRow::of(ledger, n, a)).collect();
    json!({"accounts": rows, "next_after": next, "seq": ledger.head().seq})
}

/// Which transfers a page lists: `out`, those sent from the node; `in`, those it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Sent,
    Received,
}

impl Side {
    pub fn parse(text: &str) -> Result<Side, String> {
        match text {
            "out" => Ok(Side::Sent),
            "in" => Ok(Side::Received),
            other => Err(format!("side: {other:?} is neither out nor in")),
        }
    }
}

/// One page of transfers as the node's file lists them (`store::transfers_page`), in key
/// order: sent ones by id, received ones by `source|id`; `next_after` continues it.
#[derive(Debug, Clone, PartialEq)]
pub enum TransfersPage {
    Sent { rows: Vec<(String, Hold)>, next_after: Option<String> },
    Received { rows: Vec<Received>, next_after: Option<String> },
}

/// A page of transfers, rendered with `ledger`'s asset scales:
/// `{"side":"out"|"in","transfers":[…],"next_after":KEY|null,"seq":N}`.
pub fn transfers_answer(ledger: &Ledger, page: TransfersPage) -> Value {
    let seq = ledger.head().seq;
    match page {
        TransfersPage::Sent { rows, next_after } => {
            let rows: Vec<OutgoingRow> = rows.iter().map(|(id, h)| OutgoingRow::of(ledger, id, h)).collect();
            json!({"side": "out", "transfers": rows, "next_after": next_after, "seq": seq})
        }
        TransfersPage::Received { rows, next_after } => {
            let rows: Vec<IncomingRow> = rows.iter().map(IncomingRow::of).collect();
            json!({"side": "in", "transfers": rows, "next_after": next_after, "seq": seq})
        }
    }
}

/// The `limit` items with the smallest keys above `after`, in key order, and the key to go
/// on from when more remain. Linear in the number of items, whatever the page.
fn smallest_after<K: Ord + Copy, T>(items: impl Iterator<Item = (K, T)>, after: Option<K>, limit: usize) -> (Vec<T>, Option<K>) {
    let mut above: Vec<(K, T)> = items.filter(|(k, _)| after.is_none_or(|a| *k > a)).collect();
    let more = above.len() > limit;
    if more {
        above.select_nth_unstable_by(limit, |a, b| a.0.cmp(&b.0));
        above.truncate(limit);
    }
    above.sort_unstable_by_key(|a| a.0);
    let next = if more { above.last().map(|(k, _)| *k) } else { None };
    (above.into_iter().map(|(_, t)| t).collect(), next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_walk_every_item_once_in_order() {
        let mut keys: Vec<String> = (0..2_537).map(|i| format!("k{:05}", (i * 7919) % 2_537)).collect();
        let mut seen: Vec<String> = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (chunk, next) = smallest_after(keys.iter().map(|k| (k.as_str(), k.clone())), after.as_deref(), 100);
            assert!(chunk.len() <= 100);
            seen.extend(chunk);
            match next {
                Some(n) => after = Some(n.to_string()),
                None => break,
            }
        }
        keys.sort();
        assert_eq!(seen, keys);
    }
}
