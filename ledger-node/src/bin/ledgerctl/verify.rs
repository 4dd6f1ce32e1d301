//! `verify`: replays a journal from its bytes (hash chain, gaps, every change applies, books
//! balance) from a redb file offline, or from an edge's range queryable over zenoh.

use crate::nodes::Nodes;
use crate::table::Table;
use crate::{progress, Fail, Output};
use ledger::books::audit::{Audit, Summary};
use ledger::core::journal::hex;
use ledger::core::LiveState;
use ledger::store::{Store, StoreError};
use serde_json::{json, Value};
use std::path::Path;

/// Entries read from a file per step.
const STEP: usize = 1_000;

/// One verified journal or replica: what it is, and its summary or what is wrong.
struct Checked {
    what: String,
    result: Result<Summary, String>,
}

/// Verifies a redb file: its own journal (an edge) or each replica in it (a region).
pub fn offline(path: &Path) -> Result<Output, Fail> {
    let (store, node) = Store::open_existing(path).map_err(|e| Fail::unreachable(e.to_string()))?;
    let io = |e: ledger::store::StoreError| Fail::unreachable(e.to_string());
    let mut checked = Vec::new();
    let entries = store.count(None).map_err(io)?;
    if entries > 0 || node.contains('/') {
        let recorded = store.recorded_head().map_err(io)?;
        // A pruned journal is verified from its anchor, with the books as of it.
        let (anchor, books) = store.anchor_state().map_err(io)?;
        let start = match anchor.chain.seq {
            0 => Audit::new(&node),
            _ => Audit::from_anchor(&node, anchor.chain, &anchor.assets, books),
        };
        let audit = audit_file(start, entries, &format!("journal of {node}"), |from| store.journal_range(from, u64::MAX, STEP));
        let mut result = audit.and_then(|audit| {
            let summary = audit.finish()?;
            live_tables_match(store.live_state(), &audit)?;
            Ok(summary)
        });
        if let (Ok(summary), Some(recorded)) = (&result, recorded) {
            let found = format!("{}:{}", summary.entries, summary.head_hash);
            if found != recorded {
                result = Err(format!("the journal ends at {found}, but the last commit recorded {recorded}: entries are missing"));
            }
        }
        checked.push(Checked { what: format!("journal of {node}"), result });
    }
    for edge in store.replica_edges().map_err(io)? {
        let count = store.count(Some(&edge)).map_err(io)?;
        let audit = audit_file(Audit::new(&edge), count, &format!("replica of {edge}"), |from| store.replica_range(&edge, from, STEP));
        let mut result = audit.and_then(|audit| {
            let summary = audit.finish()?;
            live_tables_match(store.replica_live_state(&edge), &audit)?;
            Ok(summary)
        });
        if let Ok(summary) = &result {
            let signed = store.replica_signed_head(&edge).map_err(io)?;
            if let Err(why) = signed_head_matches(&edge, summary, signed.as_deref()) {
                result = Err(why);
            }
        }
        checked.push(Checked { what: format!("{node}'s replica of {edge}"), result });
    }
    if checked.is_empty() {
        checked.push(Checked { what: format!("journal of {node}"), result: Audit::new(&node).finish() });
    }
    Ok(report(&format!("{} (node {node})", path.display()), checked, Vec::new()))
}

/// A region keeps the edge's signed head of the last entries it stored: the signature must
/// match the certificate it carries, name the edge, and sign the replica's own last entry.
/// (Offline there is no CA to check the certificate against; the region did when it took
/// the entries.) A replica with no signed head was written without node identities.
fn signed_head_matches(edge: &str, summary: &Summary, stored: Option<&[u8]>) -> Result<(), String> {
    let Some(stored) = stored else { return Ok(()) };
    let head: bridge::sign::SignedHead = serde_json::from_slice(stored).map_err(|e| format!("signed head: {e}"))?;
    let signer = head.check_self_signed().map_err(|e| format!("signed head: {e}"))?;
    if signer != edge || head.edge != edge {
        return Err(format!("signed head: signed by {signer:?} for {:?}, not by {edge}", head.edge));
    }
    if head.seq != summary.entries || head.hash != summary.head_hash {
        return Err(format!(
            "signed head: {edge} signed entry {} {}, but the replica ends at {} {}",
            head.seq, head.hash, summary.entries, summary.head_hash
        ));
    }
    Ok(())
}

/// Live tables (what a node starts from) must hold exactly what the journal rebuilds. A
/// file written before the tables existed has none yet: nothing to compare.
fn live_tables_match(tables: Result<Option<LiveState>, StoreError>, audit: &Audit) -> Result<(), String> {
    let Some(tables) = tables.map_err(|e| e.to_string())? else { return Ok(()) };
    match tables.difference(&audit.live_state()) {
        None => Ok(()),
        Some(difference) => Err(format!("the live tables differ from the journal's replay: {difference}")),
    }
}

/// Feeds every entry `read` returns to an audit, with a progress bar.
fn audit_file(
    mut audit: Audit,
    count: u64,
    what: &str,
    mut read: impl FnMut(u64) -> Result<Vec<ledger::core::journal::Entry>, ledger::store::StoreError>,
) -> Result<Audit, String> {
    let bar = progress(count, what);
    loop {
        let entries = read(audit.next_seq()).map_err(|e| e.to_string())?;
        if entries.is_empty() {
            break;
        }
        for entry in &entries {
            audit.feed(entry)?;
        }
        bar.inc(entries.len() as u64);
    }
    bar.finish_and_clear();
    Ok(audit)
}

/// Verifies a node over zenoh: an edge's journal, fetched range by range up to the head
/// its status gave; for a region, each of its edges, and that the region's replica of
/// each ends on the same hash as the edge's journal at that entry.
pub async fn online(nodes: &Nodes, node: &str) -> Result<Output, Fail> {
    let status = nodes.ask(&bridge::keys::status(node)).await?;
    let mut checked = Vec::new();
    let mut notes = Vec::new();
    if status["role"] == "edge" {
        if let Some(note) = pruned(node, &status) {
            notes.push(note);
            return Ok(report(node, checked, notes));
        }
        let head = status["head"]["seq"].as_u64().unwrap_or(0);
        let expected_hash = status["head"]["hash"].as_str().unwrap_or_default().to_string();
        let (result, _) = audit_edge(nodes, node, head, None).await?;
        let result = result.and_then(|s| {
            if s.head_hash == expected_hash {
                Ok(s)
            } else {
                Err(format!("entry {head} hashes to {}, but the node reports {expected_hash}", s.head_hash))
            }
        });
        checked.push(Checked { what: format!("journal of {node}"), result });
    } else {
        for replica in status["edges"].as_array().into_iter().flatten() {
            let edge = replica["edge"].as_str().unwrap_or_default().to_string();
            let replica_seq = replica["seq"].as_u64().unwrap_or(0);
            let replica_hash = replica["hash"].as_str().unwrap_or_default().to_string();
            if let Some(why) = replica["refused"].as_str() {
                checked.push(Checked { what: format!("{node}'s replica of {edge}"), result: Err(format!("refused an entry: {why}")) });
            }
            let edge_status = match nodes.ask(&bridge::keys::status(&edge)).await {
                Ok(s) => s,
                Err(fail) => {
                    notes.push(format!("{edge} not verified: {}", fail.message));
                    checked.push(Checked { what: format!("journal of {edge}"), result: Err("no answer".to_string()) });
                    continue;
                }
            };
            if let Some(note) = pruned(&edge, &edge_status) {
                notes.push(note);
                continue;
            }
            let head = edge_status["head"]["seq"].as_u64().unwrap_or(0);
            let (result, hash_at_replica) = audit_edge(nodes, &edge, head.max(replica_seq), Some(replica_seq)).await?;
            checked.push(Checked { what: format!("journal of {edge}"), result });
            let replica_result = match hash_at_replica {
                Some(hash) if hash == replica_hash => Ok(()),
                Some(hash) => Err(format!(
                    "replica ends at entry {replica_seq} with hash {replica_hash}; the edge's entry {replica_seq} hashes to {hash}"
                )),
                None if replica_seq == 0 => Ok(()),
                None => Err(format!("replica has {replica_seq} entries; the edge's journal is shorter")),
            };
            if let Err(e) = replica_result {
                checked.push(Checked { what: format!("{node}'s replica of {edge}"), result: Err(e) });
            }
        }
    }
    Ok(report(node, checked, notes))
}

/// An edge that pruned its journal serves it from its anchor only, and not the books as of
/// the anchor that a replay from there needs: say where it is verified instead.
fn pruned(edge: &str, status: &Value) -> Option<String> {
    let anchor = status["anchor"]["seq"].as_u64().filter(|seq| *seq > 0)?;
    Some(format!(
        "{edge} pruned its journal through entry {anchor} (anchor {}): verify its file from the anchor with \
         `ledgerctl verify --db`, and the pruned entries in its region's replica (`ledgerctl verify --db` on the region's file)",
        status["anchor"]["hash"].as_str().unwrap_or("?")
    ))
}

/// Fetches and verifies `edge`'s journal up to `head`; also returns the chain's hash at
/// entry `mark` when it was reached.
async fn audit_edge(nodes: &Nodes, edge: &str, head: u64, mark: Option<u64>) -> Result<(Result<Summary, String>, Option<String>), Fail> {
    let mut audit = Audit::new(edge);
    let bar = progress(head, &format!("journal of {edge}"));
    let mut at_mark = None;
    while audit.next_seq() <= head {
        let entries = nodes.journal(edge, audit.next_seq()).await?;
        if entries.is_empty() {
            bar.finish_and_clear();
            return Ok((Err(format!("the journal ends at entry {}, before its head {head}", audit.next_seq() - 1)), at_mark));
        }
        for entry in &entries {
            if let Err(e) = audit.feed(entry) {
                bar.finish_and_clear();
                return Ok((Err(e), at_mark));
            }
            if Some(entry.seq) == mark {
                at_mark = Some(hex(&audit.chain().hash));
            }
        }
        bar.inc(entries.len() as u64);
    }
    bar.finish_and_clear();
    Ok((audit.finish(), at_mark))
}

fn report(subject: &str, checked: Vec<Checked>, notes: Vec<String>) -> Output {
    let mut table = Table::new(&["CHECKED", "ENTRIES", "HEAD HASH", "ACCOUNTS", "PENDING", "SENT", "RECEIVED", "RESULT"]);
    let mut rows: Vec<Value> = Vec::new();
    let mut failed = 0;
    for c in &checked {
        match &c.result {
            Ok(s) => {
                table.row(vec![
                    c.what.clone(),
                    s.entries.to_string(),
                    s.head_hash.chars().take(16).collect(),
                    s.accounts.to_string(),
                    s.pending_holds.to_string(),
                    s.transfers_sent.to_string(),
                    s.transfers_received.to_string(),
                    "ok".into(),
                ]);
                rows.push(json!({"checked": c.what, "ok": true, "summary": s}));
            }
            Err(e) => {
                failed += 1;
                table.row(vec![
                    c.what.clone(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    format!("FAILED: {e}"),
                ]);
                rows.push(json!({"checked": c.what, "ok": false, "error": e}));
            }
        }
    }
    let mut text = table.render();
    for note in &notes {
        text.push_str(&format!("note: {note}\n"));
    }
    text.push_str(&match failed {
        0 => format!("{subject}: verified: hash chains intact, no gaps, every entry applies, books balance\n"),
        n => format!("{subject}: {n} of {} failed verification\n", checked.len()),
    });
    Output { json: json!({"subject": subject, "results": rows, "notes": notes, "failed": failed}), text, differs: failed > 0 }
}
