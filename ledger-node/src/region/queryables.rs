//! A region's queryables for operators: status, and reads of its edges' books from the
//! replicas (balance, pending, accounts, transfers, history), each saying how fresh the
//! replica is (`replica_seq`, `updated_ms`).

use super::replicas::Replicas;
use crate::books::queries::{self, HistoryParams, PageParams, Side};
use crate::core::address::{Address, NodeId};
use crate::core::journal::hex;
use crate::core::Ledger;
use crate::store::Store;
use bridge::zenoh::query::Query;
use bridge::zenoh::Session;
use bridge::{keys, serve_json, serve_json_now, Answer, Refusal};
use serde_json::{json, Value};
use std::sync::Arc;

/// Starts the region's queryables; `status` runs until the session closes.
pub async fn serve(session: Session, region: String, replicas: Replicas, store: Arc<Store>) {
    let (me, held) = (region.clone(), replicas.clone());
    tokio::spawn(serve_json_now(session.clone(), keys::pending(&region), move |query| pending_in_replicas(&me, &held, query)));
    let (me, held) = (region.clone(), replicas.clone());
    tokio::spawn(serve_json_now(session.clone(), keys::accounts(&region), move |query| {
        in_replica(&me, &held, query, |ledger, page| Ok(queries::accounts_page(ledger, page)))
    }));
    let (me, held, listed) = (region.clone(), replicas.clone(), store.clone());
    tokio::spawn(serve_json(session.clone(), keys::transfers(&region), move |query| {
        let (me, held, store) = (me.clone(), held.clone(), listed.clone());
        let asked = transfers_asked(&me, &held, &query);
        async move {
            let answer = match asked {
                Ok((edge, side, page)) => transfers(&held, store, edge, side, page).await,
                Err(refusal) => Err(refusal),
            };
            (query, answer)
        }
    }));
    let (me, held) = (region.clone(), replicas.clone());
    tokio::spawn(serve_json_now(session.clone(), keys::balance(&region), move |query| balance(&me, &held, query)));
    let (me, held) = (region.clone(), replicas.clone());
    tokio::spawn(serve_json(session.clone(), keys::history(&region), move |query| {
        let asked = history_of(&me, &held, &query);
        let store = store.clone();
        async move {
            let answer = match asked {
                Ok((edge, params, fresh)) => history(store, edge, params, fresh).await,
                Err(refusal) => Err(refusal),
            };
            (query, answer)
        }
    }));
    serve_json_now(session, keys::status(&region), move |_| Ok(status(&region, &replicas))).await
}

fn status(region: &str, replicas: &Replicas) -> Value {
    let all = replicas.lock().expect("replicas");
    let edges: Vec<Value> = all
        .iter()
        .map(|(edge, r)| json!({"edge": edge, "seq": r.chain.seq, "stored_seq": r.stored_seq, "hash": hex(&r.chain.hash), "refused": r.refused, "updated_ms": r.updated_ms}))
        .collect();
    json!({"node": region, "role": "region", "edges": edges})
}

/// `?account=name@edge`: the balance from the replica, with how fresh it is.
fn balance(region: &str, replicas: &Replicas, query: &Query) -> Answer {
    let account = query.parameters().get("account").unwrap_or_default();
    let address = Address::split(account);
    let Some(edge) = address.node else {
        return Err(Refusal::invalid(format!("account: {account:?} must name its edge, like wallet:alice@eu/berlin-1")));
    };
    let all = replicas.lock().expect("replicas");
    let r = all.get(edge).ok_or_else(|| Refusal::not_found(format!("account: {edge} is not an edge of region {region}")))?;
    match r.ledger.balance_view(address.name) {
        None => Err(Refusal::not_found(format!("account: {} does not exist on {edge} (replica at {})", address.name, r.chain.seq))),
        Some(view) => Ok(json!({"balance": view, "replica_seq": r.chain.seq, "updated_ms": r.updated_ms})),
    }
}

/// `?account=name@edge;…`: which edge's replica to read, the parameters, and its freshness
/// (read first: the replica may only have grown while the history is read).
fn history_of(region: &str, replicas: &Replicas, query: &Query) -> Result<(String, HistoryParams, (u64, u64)), Refusal> {
    let mut params = HistoryParams::parse(|k| query.parameters().get(k)).map_err(Refusal::invalid)?;
    let address = Address::split(&params.account);
    let edge = match address.node {
        Some(edge) if NodeId::parse(edge).is_some_and(|e| e.is_edge() && e.region() == region) => edge.to_string(),
        _ => {
            return Err(Refusal::invalid(format!(
                "account: {:?} must name an edge of {region}, like wallet:alice@{region}/edge-1",
                params.account
            )))
        }
    };
    params.account = address.name.to_string();
    let fresh = replicas.lock().expect("replicas").get(&edge).map(|r| (r.chain.seq, r.updated_ms));
    let fresh = fresh.ok_or_else(|| Refusal::not_found(format!("account: {edge} is not an edge of region {region}")))?;
    Ok((edge, params, fresh))
}

async fn history(store: Arc<Store>, edge: String, params: HistoryParams, (seq, updated_ms): (u64, u64)) -> Answer {
    let read = tokio::task::spawn_blocking(move || crate::store::history(&store, Some(&edge), &params)).await;
    let mut answer = match read {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err(Refusal::unavailable(e.to_string())),
        Err(e) => return Err(Refusal::unavailable(e.to_string())),
    };
    answer["replica_seq"] = json!(seq);
    answer["updated_ms"] = json!(updated_ms);
    Ok(answer)
}

/// `?edge=E;after=…;limit=N`: a page read from the replica of edge E, with its freshness.
fn in_replica(region: &str, replicas: &Replicas, query: &Query, read: impl Fn(&Ledger, &PageParams) -> Result<Value, String>) -> Answer {
    let edge = query.parameters().get("edge").ok_or_else(|| Refusal::invalid(format!("edge: missing (?edge=E, an edge of {region})")))?;
    let page = PageParams::parse(|k| query.parameters().get(k)).map_err(Refusal::invalid)?;
    let all = replicas.lock().expect("replicas");
    let r = all.get(edge).ok_or_else(|| Refusal::not_found(format!("edge: {edge} is not an edge of region {region}")))?;
    let mut answer = read(&r.ledger, &page).map_err(Refusal::invalid)?;
    answer["edge"] = json!(edge);
    answer["replica_seq"] = json!(r.chain.seq);
    answer["updated_ms"] = json!(r.updated_ms);
    Ok(answer)
}

/// `?edge=E&side=out|in`: which replica's transfers, and which page.
fn transfers_asked(region: &str, replicas: &Replicas, query: &Query) -> Result<(String, Side, PageParams), Refusal> {
    let edge = query.parameters().get("edge").ok_or_else(|| Refusal::invalid(format!("edge: missing (?edge=E, an edge of {region})")))?;
    if !replicas.lock().expect("replicas").contains_key(edge) {
        return Err(Refusal::not_found(format!("edge: {edge} is not an edge of region {region}")));
    }
    let side = Side::parse(query.parameters().get("side").unwrap_or("out")).map_err(Refusal::invalid)?;
    let page = PageParams::parse(|k| query.parameters().get(k)).map_err(Refusal::invalid)?;
    Ok((edge.to_string(), side, page))
}

/// A page of the transfers a replica's edge sent or received, from the region's file
/// (decided ones leave RAM), with how fresh the replica is.
async fn transfers(replicas: &Replicas, store: Arc<Store>, edge: String, side: Side, page: PageParams) -> Answer {
    let of = edge.clone();
    let listed = tokio::task::spawn_blocking(move || store.transfers_page(Some(&of), side, page.after.as_deref(), page.limit)).await;
    let listed = match listed {
        Ok(Ok(listed)) => listed,
        Ok(Err(e)) => return Err(Refusal::unavailable(e.to_string())),
        Err(e) => return Err(Refusal::unavailable(e.to_string())),
    };
    let all = replicas.lock().expect("replicas");
    let r = all.get(&edge).ok_or_else(|| Refusal::not_found(format!("edge: {edge} is not an edge of this region")))?;
    let mut answer = queries::transfers_answer(&r.ledger, listed);
    answer["edge"] = json!(edge);
    answer["replica_seq"] = json!(r.chain.seq);
    answer["updated_ms"] = json!(r.updated_ms);
    Ok(answer)
}

/// `?edge=E` or `?account=name@E`: pending holds in the replica of edge E, with freshness.
fn pending_in_replicas(region: &str, replicas: &Replicas, query: &Query) -> Answer {
    let params = query.parameters();
    let limit = params.get("limit").and_then(|l| l.parse().ok()).unwrap_or(queries::MAX_ANSWER_ROWS);
    let (account, edge) = match (params.get("account"), params.get("edge")) {
        (Some(a), _) => match Address::split(a) {
            Address { name, node: Some(edge) } => (Some(name.to_string()), edge.to_string()),
            _ => return Err(Refusal::invalid(format!("account: {a:?} must name its edge, like wallet:alice@{region}/edge-1"))),
        },
        (None, Some(edge)) => (None, edge.to_string()),
        (None, None) => return Err(Refusal::invalid("edge or account: missing (?edge=E or ?account=name@E)")),
    };
    let all = replicas.lock().expect("replicas");
    let r = all.get(&edge).ok_or_else(|| Refusal::not_found(format!("edge: {edge} is not an edge of region {region}")))?;
    Ok(json!({
        "edge": edge,
        "pending": queries::holds_json(&r.ledger, account.as_deref(), limit),
        "replica_seq": r.chain.seq,
        "updated_ms": r.updated_ms,
    }))
}
