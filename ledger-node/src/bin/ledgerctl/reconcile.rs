//! `reconcile`: reads each edge in scope and its region's replica of it (head, every
//! account), and every cross-node transfer on both sides, then reports the differences
//! `ledger::reconcile` finds. A node that does not answer is a difference, never a pass.

use crate::nodes::Nodes;
use crate::table::Table;
use crate::{progress, Fail, Output};
use ledger::books::reconcile::{compare_replica, compare_transfers, AccountRow, Difference, HeadRow, IncomingRow, OutgoingRow};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

pub async fn run(nodes: &Nodes, scope: &[String]) -> Result<Output, Fail> {
    let statuses = nodes.statuses().await?;
    let regions: BTreeMap<&String, &Value> = statuses.iter().filter(|(_, s)| s["role"] == "region").collect();
    // Every edge a region replicates, and every edge that answered.
    let mut known: BTreeSet<String> = statuses.iter().filter(|(_, s)| s["role"] == "edge").map(|(n, _)| n.clone()).collect();
    for status in regions.values() {
        for r in status["edges"].as_array().into_iter().flatten() {
            if let Some(edge) = r["edge"].as_str() {
                known.insert(edge.to_string());
            }
        }
    }
    let edges: BTreeSet<String> = if scope.is_empty() {
        known.clone()
    } else {
        let mut chosen = BTreeSet::new();
        for node in scope {
            if node.contains('/') {
                chosen.insert(node.clone());
            } else {
                let of_region: Vec<&String> = known.iter().filter(|e| e.starts_with(&format!("{node}/"))).collect();
                if of_region.is_empty() && !regions.contains_key(node) {
                    return Err(Fail::usage(format!("{node}: no region or edge of that name answered")));
                }
                chosen.extend(of_region.into_iter().cloned());
            }
        }
        chosen
    };
    if edges.is_empty() {
        return Err(Fail::unreachable("no edge to reconcile: no region listed any and no edge answered"));
    }

    let mut differences: Vec<Difference> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut accounts_checked = 0;
    let mut outgoing: BTreeMap<String, Vec<OutgoingRow>> = BTreeMap::new();
    let mut incoming: BTreeMap<String, Vec<IncomingRow>> = BTreeMap::new();
    let bar = progress(0, "reconciling");
    for edge in &edges {
        bar.set_message(edge.clone());
        let region = edge.split('/').next().unwrap_or_default().to_string();
        let Some(edge_status) = statuses.get(edge) else {
            differences.push(Difference::NoAnswer { node: edge.clone(), error: "no status answer".into() });
            continue;
        };
        let edge_head = head_of(&edge_status["head"]);
        // The edge's own books and transfers.
        let accounts = read_books(nodes, edge, &mut outgoing, &mut incoming, &bar).await;
        let (edge_accounts, seq_first, seq_last) = match accounts {
            Ok(read) => read,
            Err(fail) => {
                differences.push(Difference::NoAnswer { node: edge.clone(), error: fail.message });
                continue;
            }
        };
        if seq_first != edge_head.seq || seq_last != edge_head.seq {
            notes.push(format!(
                "{edge} took entries while it was read (seq {} to {seq_last}); differences may be passing, run again",
                edge_head.seq
            ));
        }
        accounts_checked += edge_accounts.len();
        // Its region's replica.
        let replica = regions
            .get(&region)
            .and_then(|s| s["edges"].as_array())
            .and_then(|all| all.iter().find(|r| r["edge"] == edge.as_str()).cloned());
        let Some(replica) = replica else {
            let error =
                if regions.contains_key(&region) { format!("{region} does not replicate {edge}") } else { "no status answer".to_string() };
            differences.push(Difference::NoAnswer { node: region.clone(), error });
            continue;
        };
        let replica_head =
            HeadRow { seq: replica["seq"].as_u64().unwrap_or(0), hash: replica["hash"].as_str().unwrap_or_default().to_string() };
        let replica_accounts =
            nodes.all_pages::<AccountRow>(&bridge::keys::accounts(&region), &format!("edge={edge}"), "accounts", &bar).await;
        let replica_accounts = match replica_accounts {
            Ok((rows, _, _)) => rows,
            Err(fail) => {
                differences.push(Difference::NoAnswer { node: region.clone(), error: fail.message });
                continue;
            }
        };
        differences.extend(compare_replica(
            edge,
            &region,
            &edge_head,
            &replica_head,
            replica["refused"].as_str(),
            &edge_accounts,
            &replica_accounts,
        ));
    }
    // The other side of transfers that leave or enter the scope.
    let mut others: BTreeSet<String> = BTreeSet::new();
    for rows in outgoing.values() {
        others.extend(rows.iter().filter_map(|r| ledger::core::address::Address::split(&r.to).node.map(str::to_string)));
    }
    for rows in incoming.values() {
        others.extend(rows.iter().map(|r| r.transfer.source.clone()));
    }
    for other in others.difference(&edges.iter().cloned().collect()) {
        if let Err(fail) = read_books(nodes, other, &mut outgoing, &mut incoming, &bar).await {
            notes.push(format!("{other} (the other side of some transfers) did not answer: {}", fail.message));
        }
    }
    bar.finish_and_clear();
    let in_scope = |node: &str| edges.contains(node);
    let transfers_checked = outgoing.iter().filter(|(n, _)| in_scope(n)).map(|(_, r)| r.len()).sum::<usize>()
        + incoming.iter().filter(|(n, _)| in_scope(n)).map(|(_, r)| r.len()).sum::<usize>();
    differences.extend(compare_transfers(&outgoing, &incoming, &in_scope));

    let mut text = String::new();
    if differences.is_empty() {
        text.push_str(&format!(
            "no differences: {} edges, {accounts_checked} accounts, {transfers_checked} transfer records checked\n",
            edges.len()
        ));
    } else {
        let mut table = Table::new(&["DIFFERENCE", "WHERE", "EXPECTED", "FOUND"]);
        for d in &differences {
            table.row(d.describe().to_vec());
        }
        text.push_str(&table.render());
        text.push_str(&format!(
            "{} differences: {} edges, {accounts_checked} accounts, {transfers_checked} transfer records checked\n",
            differences.len(),
            edges.len()
        ));
    }
    for note in &notes {
        text.push_str(&format!("note: {note}\n"));
    }
    let json = json!({
        "differences": differences,
        "checked": {"edges": edges, "accounts": accounts_checked, "transfer_records": transfers_checked},
        "notes": notes,
    });
    Ok(Output { json, text, differs: !differences.is_empty() })
}

fn head_of(head: &Value) -> HeadRow {
    HeadRow { seq: head["seq"].as_u64().unwrap_or(0), hash: head["hash"].as_str().unwrap_or_default().to_string() }
}

/// Reads an edge's accounts and both lists of its cross-node transfers; returns the
/// accounts and the journal sequence the first and last page were read at.
async fn read_books(
    nodes: &Nodes,
    edge: &str,
    outgoing: &mut BTreeMap<String, Vec<OutgoingRow>>,
    incoming: &mut BTreeMap<String, Vec<IncomingRow>>,
    bar: &indicatif::ProgressBar,
) -> Result<(Vec<AccountRow>, u64, u64), Fail> {
    let (accounts, first, _) = nodes.all_pages::<AccountRow>(&bridge::keys::accounts(edge), "", "accounts", bar).await?;
    let (sent, _, _) = nodes.all_pages::<OutgoingRow>(&bridge::keys::transfers(edge), "side=out", "transfers", bar).await?;
    let (received, _, last) = nodes.all_pages::<IncomingRow>(&bridge::keys::transfers(edge), "side=in", "transfers", bar).await?;
    outgoing.insert(edge.to_string(), sent);
    incoming.insert(edge.to_string(), received);
    Ok((accounts, first, last))
}
