//! An edge's zenoh queryables: deliveries and settlements from its region, one at a time or
//! in bulk (`transfers`), operator reads
//! of its books, operator commands. Each checks its input at the boundary and goes through
//! the inbox, so it is answered in order with device commands and after their commit;
//! history reads the journal from redb directly.

use super::inbox::{Inbox, Request};
use super::transfers;
use crate::books::queries::{self, HistoryParams, PageParams, Side};
use crate::core::address::Address;
use crate::core::command;
use crate::core::reply::Reply;
use crate::core::Ledger;
use crate::store::Store;
use bridge::sign::NodeKeys;
use bridge::zenoh::query::Query;
use bridge::zenoh::Session;
use bridge::{keys, serve_json, Answer, Refusal, MAX_REQUEST_BYTES};
use serde_json::json;
use std::sync::Arc;

/// Most ops in one operator batch command.
pub const MAX_OPERATOR_BATCH: usize = 100;

fn payload_bytes(query: &Query) -> Result<Vec<u8>, Refusal> {
    bridge::query_bytes(query, MAX_REQUEST_BYTES)
}

/// What a query turns into: a request for the intake, or an answer known at once.
enum Asked {
    Intake(Box<Request>),
    Now(serde_json::Value),
}

impl From<Request> for Asked {
    fn from(request: Request) -> Asked {
        Asked::Intake(Box::new(request))
    }
}

/// Starts an edge's queryables; with `keys` it signs its decisions and checks the ones it
/// settles on (`transfers`).
pub fn serve(session: &Session, edge: &str, inbox: Inbox, store: Arc<Store>, keys: Option<Arc<NodeKeys>>) {
    let asking = |inbox: &Inbox, read: fn(&Query, &str) -> Result<Asked, Refusal>, me: &str| {
        let (inbox, me) = (inbox.clone(), me.to_string());
        move |query: Query| {
            let (inbox, asked) = (inbox.clone(), read(&query, &me));
            async move {
                let answer = match asked {
                    Ok(Asked::Intake(request)) => inbox.ask(*request).await,
                    Ok(Asked::Now(value)) => Ok(value),
                    Err(refusal) => Err(refusal),
                };
                (query, answer)
            }
        }
    };
    let (me, delivering, signing) = (edge.to_string(), inbox.clone(), keys.clone());
    tokio::spawn(serve_json(session.clone(), keys::transfer_deliver(edge), move |query| {
        let (me, inbox, keys) = (me.clone(), delivering.clone(), signing.clone());
        async move {
            let answer = transfers::deliver(&inbox, &me, keys.as_deref(), &query).await;
            (query, answer)
        }
    }));
    let (me, delivering, signing) = (edge.to_string(), inbox.clone(), keys.clone());
    tokio::spawn(serve_json(session.clone(), keys::transfer_deliveries(edge), move |query| {
        let (me, inbox, keys) = (me.clone(), delivering.clone(), signing.clone());
        async move {
            let answer = transfers::deliver_batch(&inbox, &me, keys.as_deref(), &query).await;
            (query, answer)
        }
    }));
    let (me, settling, settled, signing) = (edge.to_string(), inbox.clone(), store.clone(), keys.clone());
    tokio::spawn(serve_json(session.clone(), keys::transfer_settlements(edge), move |query| {
        let (me, inbox, keys, store) = (me.clone(), settling.clone(), signing.clone(), settled.clone());
        async move {
            let answer = transfers::settle_batch(&inbox, store, &me, keys, &query).await;
            (query, answer)
        }
    }));
    let (me, settling, settled) = (edge.to_string(), inbox.clone(), store.clone());
    tokio::spawn(serve_json(session.clone(), keys::transfer_settle(edge), move |query| {
        let (me, inbox, keys, store) = (me.clone(), settling.clone(), keys.clone(), settled.clone());
        async move {
            let answer = transfers::settle(&inbox, store, &me, keys, &query).await;
            (query, answer)
        }
    }));
    tokio::spawn(serve_json(session.clone(), keys::balance(edge), asking(&inbox, balance, edge)));
    tokio::spawn(serve_json(session.clone(), keys::accounts(edge), asking(&inbox, accounts, edge)));
    let (listing, store_listed) = (inbox.clone(), store.clone());
    tokio::spawn(serve_json(session.clone(), keys::transfers(edge), move |query| {
        let (inbox, store) = (listing.clone(), store_listed.clone());
        let asked = transfers_asked(&query);
        async move {
            let answer = match asked {
                Ok((side, page)) => transfers(inbox, store, side, page).await,
                Err(refusal) => Err(refusal),
            };
            (query, answer)
        }
    }));
    tokio::spawn(serve_json(session.clone(), keys::command(edge), asking(&inbox, operator_command, edge)));
    tokio::spawn(serve_json(session.clone(), keys::pending(edge), asking(&inbox, pending, edge)));
    let me = edge.to_string();
    tokio::spawn(serve_json(session.clone(), keys::history(edge), move |query| {
        let (me, store) = (me.clone(), store.clone());
        let params = HistoryParams::parse(|k| query.parameters().get(k))
            .map_err(Refusal::invalid)
            .and_then(|p| own_name(&p.account, &me).map(|name| HistoryParams { account: name, ..p }));
        async move {
            let answer = match params {
                Ok(params) => history(store, params).await,
                Err(refusal) => Err(refusal),
            };
            (query, answer)
        }
    }));
}

async fn history(store: Arc<Store>, params: HistoryParams) -> Answer {
    match tokio::task::spawn_blocking(move || crate::store::history(&store, None, &params)).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(Refusal::unavailable(e.to_string())),
        Err(e) => Err(Refusal::unavailable(e.to_string())),
    }
}

fn balance(query: &Query, me: &str) -> Result<Asked, Refusal> {
    let account = query.parameters().get("account").ok_or_else(|| Refusal::invalid("account: missing (?account=NAME)"))?;
    let account = own_name(account, me)?;
    let read = move |ledger: &Ledger| match ledger.balance_view(&account) {
        Some(view) => Ok(json!({"balance": view, "seq": ledger.head().seq})),
        None => Err(Refusal::not_found(format!("account: {account} does not exist on {}", ledger.node_id()))),
    };
    Ok(Request::Read(Box::new(read)).into())
}

fn accounts(query: &Query, _me: &str) -> Result<Asked, Refusal> {
    let page = PageParams::parse(|k| query.parameters().get(k)).map_err(Refusal::invalid)?;
    Ok(Request::Read(Box::new(move |ledger: &Ledger| Ok(queries::accounts_page(ledger, &page)))).into())
}

fn transfers_asked(query: &Query) -> Result<(Side, PageParams), Refusal> {
    let side = Side::parse(query.parameters().get("side").unwrap_or("out")).map_err(Refusal::invalid)?;
    let page = PageParams::parse(|k| query.parameters().get(k)).map_err(Refusal::invalid)?;
    Ok((side, page))
}

/// A page of the transfers sent or received, from the file (decided ones leave RAM), with
/// amounts at the scales the ledger knows.
async fn transfers(inbox: Inbox, store: Arc<Store>, side: Side, page: PageParams) -> Answer {
    let listed = tokio::task::spawn_blocking(move || store.transfers_page(None, side, page.after.as_deref(), page.limit)).await;
    let listed = match listed {
        Ok(Ok(listed)) => listed,
        Ok(Err(e)) => return Err(Refusal::unavailable(e.to_string())),
        Err(e) => return Err(Refusal::unavailable(e.to_string())),
    };
    inbox.ask(Request::Read(Box::new(move |ledger: &Ledger| Ok(queries::transfers_answer(ledger, listed))))).await
}

fn pending(query: &Query, me: &str) -> Result<Asked, Refusal> {
    let limit = query.parameters().get("limit").and_then(|l| l.parse().ok()).unwrap_or(queries::MAX_ANSWER_ROWS);
    let account = query.parameters().get("account").map(|a| own_name(a, me)).transpose()?;
    let read =
        move |ledger: &Ledger| Ok(json!({"pending": queries::holds_json(ledger, account.as_deref(), limit), "seq": ledger.head().seq}));
    Ok(Request::Read(Box::new(read)).into())
}

/// An operator's command: a device command's JSON, answered with the ledger's reply (a
/// command that does not parse is answered at once with its rejection, as a device would
/// be).
fn operator_command(query: &Query, _me: &str) -> Result<Asked, Refusal> {
    let bytes = payload_bytes(query)?;
    match command::parse(&bytes, MAX_OPERATOR_BATCH) {
        Ok(command) => Ok(Request::Operator(command).into()),
        Err(rejection) => {
            let reply = Reply::rejected(command::peek_id(&bytes).as_deref(), rejection);
            Ok(Asked::Now(serde_json::to_value(reply).expect("reply serializes")))
        }
    }
}

/// The local name of `name` or `name@node` when `node` is this one; an edge answers for
/// its own accounts only.
fn own_name(account: &str, node: &str) -> Result<String, Refusal> {
    let address = Address::split(account);
    match address.remote_node(node) {
        None => Ok(address.name.to_string()),
        Some(at) => Err(Refusal::not_found(format!("account: {account} lives on {at}, not {node}; ask {at} or its region"))),
    }
}
