//! Journal replication over zenoh. An edge pushes each committed group of entries and serves
//! any range of its journal from redb; its region pulls what it lacks, verifies the hash
//! chain, stores the entries durably, replays them into a replica ledger and acknowledges.
//! A region refuses (and reports) an entry that breaks the chain and never applies it.
//!
//! The edge never waits for its region: pushes that cannot be sent at once are dropped and
//! the region fetches them from the edge's redb when it can.

use crate::journal::{hex, Chain, Entry};
use crate::ledger::Ledger;
use crate::store::Store;
use bridge::zenoh::qos::CongestionControl;
use bridge::{decode_frame, encode_frame, keys, MAX_FRAME_ENTRIES, QUERY_TIMEOUT};
use config::NodeConfig;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Committed groups waiting to be pushed to the region; beyond this the push is dropped
/// (the region will fetch those entries through the range queryable).
pub const PUSH_QUEUE: usize = 256;
/// Pushes a region keeps while busy fetching ranges; older ones are dropped.
pub const PUSHES_BUFFERED: usize = 64;
/// How often a region asks an edge for entries when no push arrived.
pub const PULL_INTERVAL: Duration = Duration::from_millis(500);

fn now_ms() -> u64 {
    crate::intake::now_ms()
}

/// The edge's side, shared between the committer (which feeds it) and the zenoh tasks.
#[derive(Clone)]
pub struct EdgeLink {
    push: tokio::sync::mpsc::Sender<Vec<Entry>>,
    head: Arc<Mutex<Chain>>,
    acked: Arc<AtomicU64>,
}

impl EdgeLink {
    /// Called by the committer after each durable commit; never blocks.
    pub fn committed(&self, entries: Vec<Entry>, head: Chain) {
        *self.head.lock().expect("head lock") = head;
        if !entries.is_empty() && self.push.try_send(entries).is_err() {
            tracing::debug!("push queue full; the region will fetch the entries");
        }
    }
}

/// Starts the edge's zenoh tasks on their own runtime thread.
pub fn start_edge(config: &NodeConfig, store: Arc<Store>, head: Chain) -> Result<EdgeLink, String> {
    let (push, mut pushed) = tokio::sync::mpsc::channel::<Vec<Entry>>(PUSH_QUEUE);
    let link = EdgeLink { push, head: Arc::new(Mutex::new(head)), acked: Arc::new(AtomicU64::new(0)) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("zenoh-edge")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let session = runtime.block_on(bridge::open(config))?;
    let edge = config.node.id.clone();
    let task_link = link.clone();
    std::thread::Builder::new()
        .name("edge-link".into())
        .spawn(move || {
            runtime.block_on(async move {
                let publisher = match session
                    .declare_publisher(keys::journal_entries(&edge))
                    .congestion_control(CongestionControl::Block)
                    .await
                {
                    Ok(p) => p,
                    Err(e) => return tracing::error!("zenoh publisher: {e}"),
                };
                tokio::spawn(serve_range(session.clone(), edge.clone(), store));
                tokio::spawn(serve_edge_status(session.clone(), edge.clone(), task_link.clone()));
                tokio::spawn(follow_acks(session.clone(), edge.clone(), task_link.acked.clone()));
                while let Some(entries) = pushed.recv().await {
                    if let Err(e) = publisher.put(frame_of(&entries)).await {
                        tracing::warn!("journal push failed: {e}");
                    }
                }
            })
        })
        .map_err(|e| e.to_string())?;
    Ok(link)
}

fn frame_of(entries: &[Entry]) -> Vec<u8> {
    let encoded: Vec<(u64, Vec<u8>)> = entries.iter().map(|e| (e.seq, e.encode())).collect();
    encode_frame(encoded.iter().map(|(seq, bytes)| (*seq, &bytes[..])))
}

/// Serves `?from=SEQ;limit=N` from the edge's redb: the source of truth for gap filling.
async fn serve_range(session: bridge::zenoh::Session, edge: String, store: Arc<Store>) {
    let queryable = match session.declare_queryable(keys::journal_range(&edge)).await {
        Ok(q) => q,
        Err(e) => return tracing::error!("zenoh queryable: {e}"),
    };
    while let Ok(query) = queryable.recv_async().await {
        let params = query.parameters();
        let from: u64 = params.get("from").and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
        let limit: usize = params.get("limit").and_then(|v| v.parse().ok()).unwrap_or(MAX_FRAME_ENTRIES).clamp(1, MAX_FRAME_ENTRIES);
        let store = store.clone();
        let read = tokio::task::spawn_blocking(move || store.journal_range(from, u64::MAX, limit)).await;
        let frame = match read {
            Ok(Ok(entries)) => frame_of(&entries),
            Ok(Err(e)) => {
                tracing::error!("journal range {from}+{limit}: {e}");
                continue;
            }
            Err(_) => continue,
        };
        if let Err(e) = query.reply(query.key_expr().clone(), frame).await {
            tracing::warn!("journal range reply failed: {e}");
        }
    }
}

async fn serve_edge_status(session: bridge::zenoh::Session, edge: String, link: EdgeLink) {
    let queryable = match session.declare_queryable(keys::status(&edge)).await {
        Ok(q) => q,
        Err(e) => return tracing::error!("zenoh queryable: {e}"),
    };
    while let Ok(query) = queryable.recv_async().await {
        let head = *link.head.lock().expect("head lock");
        let acked = link.acked.load(Ordering::SeqCst);
        let status = json!({
            "node": edge, "role": "edge",
            "head": {"seq": head.seq, "hash": hex(&head.hash)},
            "replicated_seq": acked, "lag_entries": head.seq.saturating_sub(acked),
        });
        let _ = query.reply(query.key_expr().clone(), status.to_string()).await;
    }
}

async fn follow_acks(session: bridge::zenoh::Session, edge: String, acked: Arc<AtomicU64>) {
    let subscriber = match session.declare_subscriber(keys::journal_ack(&edge)).await {
        Ok(s) => s,
        Err(e) => return tracing::error!("zenoh subscriber: {e}"),
    };
    while let Ok(sample) = subscriber.recv_async().await {
        let ack: serde_json::Value = serde_json::from_slice(&sample.payload().to_bytes()).unwrap_or_default();
        if let Some(seq) = ack["seq"].as_u64() {
            acked.fetch_max(seq, Ordering::SeqCst);
        }
    }
}

/// A region's copy of one edge's journal and the books it implies.
pub struct Replica {
    pub chain: Chain,
    pub ledger: Ledger,
    /// Why the last offered entry was refused; replication of this edge stops there.
    pub refused: Option<String>,
    pub updated_ms: u64,
}

type Replicas = Arc<Mutex<BTreeMap<String, Replica>>>;

/// Runs a region: loads its replicas, then follows each configured edge for ever.
pub fn run_region(config: NodeConfig, store: Store) -> Result<(), String> {
    let store = Arc::new(store);
    let mut replicas = BTreeMap::new();
    for edge in &config.replication.edges {
        let mut edge_config = config.clone();
        edge_config.node.id = edge.clone();
        let mut ledger = crate::node::ledger_for(&edge_config);
        let chain = store.load_replica(edge, &mut ledger).map_err(|e| e.to_string())?;
        println!("ledger-node {}: replica of {edge} at {}", config.node.id, chain.seq);
        replicas.insert(edge.clone(), Replica { chain, ledger, refused: None, updated_ms: now_ms() });
    }
    let replicas: Replicas = Arc::new(Mutex::new(replicas));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let session = bridge::open(&config).await?;
        println!("ledger-node {}: ready, region of {} edges", config.node.id, config.replication.edges.len());
        for edge in config.replication.edges.clone() {
            tokio::spawn(follow_edge(session.clone(), edge, store.clone(), replicas.clone()));
        }
        tokio::spawn(serve_balance(session.clone(), config.node.id.clone(), replicas.clone()));
        serve_region_status(session, config.node.id.clone(), replicas).await;
        Ok(())
    })
}

/// Pulls `edge`'s journal from where the replica ends, applying pushes as they come.
async fn follow_edge(session: bridge::zenoh::Session, edge: String, store: Arc<Store>, replicas: Replicas) {
    // Pushes are only a fast path. A bounded FIFO would block zenoh's receive path when
    // full, and with it the range replies this task is waiting for; a ring drops the
    // oldest pushes instead, which the range fetch makes up for.
    let subscriber = match session
        .declare_subscriber(keys::journal_entries(&edge))
        .with(bridge::zenoh::handlers::RingChannel::new(PUSHES_BUFFERED))
        .await
    {
        Ok(s) => s,
        Err(e) => return tracing::error!("zenoh subscriber: {e}"),
    };
    loop {
        // Drain the edge's journal by ranges until it has nothing new.
        loop {
            let cursor = replicas.lock().expect("replicas").get(&edge).map_or(0, |r| r.chain.seq);
            let selector = format!("{}?from={};limit={MAX_FRAME_ENTRIES}", keys::journal_range(&edge), cursor + 1);
            let frame = match fetch(&session, &selector).await {
                Some(frame) => frame,
                None => break,
            };
            let got = frame.len();
            if got == 0 || !apply(&session, &edge, frame, &store, &replicas).await {
                break;
            }
            if got < MAX_FRAME_ENTRIES {
                break;
            }
        }
        // Then wait for a push (applied at once when it continues the replica) or the tick.
        match tokio::time::timeout(PULL_INTERVAL, subscriber.recv_async()).await {
            Ok(Ok(sample)) => {
                if let Ok(frame) = decode_frame(&sample.payload().to_bytes()) {
                    apply(&session, &edge, frame, &store, &replicas).await;
                }
            }
            Ok(Err(_)) => return,
            Err(_) => {}
        }
    }
}

async fn fetch(session: &bridge::zenoh::Session, selector: &str) -> Option<Vec<(u64, Vec<u8>)>> {
    let replies = session
        .get(selector)
        .congestion_control(CongestionControl::Block)
        .timeout(QUERY_TIMEOUT)
        .await
        .ok()?;
    let reply = replies.recv_async().await.ok()?;
    let sample = reply.result().ok()?;
    match decode_frame(&sample.payload().to_bytes()) {
        Ok(frame) => Some(frame),
        Err(e) => {
            tracing::warn!("{selector}: {e}");
            None
        }
    }
}

/// Verifies, stores and replays the entries of `frame` that continue the replica. Returns
/// whether it made progress. Entries the replica already has are skipped (a push and a
/// range may overlap); a gap leaves the rest for the next range fetch.
async fn apply(session: &bridge::zenoh::Session, edge: &str, frame: Vec<(u64, Vec<u8>)>, store: &Arc<Store>, replicas: &Replicas) -> bool {
    let (mut chain, refused) = match replicas.lock().expect("replicas").get(edge) {
        Some(r) => (r.chain, r.refused.is_some()),
        None => return false,
    };
    if refused {
        return false;
    }
    let mut accepted = Vec::new();
    let mut bodies = Vec::new();
    let mut refusal = None;
    for (seq, bytes) in frame {
        if seq <= chain.seq {
            continue;
        }
        if seq != chain.seq + 1 {
            break;
        }
        match Entry::decode(seq, &bytes).and_then(|entry| chain.verify_next(&entry).map(|body| (entry, body))) {
            Ok((entry, body)) => {
                accepted.push(entry);
                bodies.push(body);
            }
            Err(e) => {
                refusal = Some(format!("entry {seq} refused: {e}"));
                break;
            }
        }
    }
    if !accepted.is_empty() {
        let store = store.clone();
        let edge_id = edge.to_string();
        let to_store = accepted.clone();
        match tokio::task::spawn_blocking(move || store.append_replica(&edge_id, &to_store)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!("replica of {edge}: {e}");
                return false;
            }
            Err(_) => return false,
        }
    }
    let progressed = !accepted.is_empty();
    {
        let mut all = replicas.lock().expect("replicas");
        let replica = all.get_mut(edge).expect("configured edge");
        for body in &bodies {
            if let Err(e) = replica.ledger.replay(body) {
                refusal = Some(format!("entry {} refused: {e}", body.seq));
                break;
            }
        }
        replica.chain = chain;
        replica.updated_ms = now_ms();
        if let Some(why) = &refusal {
            tracing::error!(edge, "replication stopped: {why}");
            replica.refused = Some(why.clone());
        }
    }
    if progressed {
        let ack = json!({"seq": chain.seq, "hash": hex(&chain.hash)}).to_string();
        let _ = session.put(keys::journal_ack(edge), ack).congestion_control(CongestionControl::Block).await;
    }
    progressed
}

async fn serve_region_status(session: bridge::zenoh::Session, region: String, replicas: Replicas) {
    let queryable = match session.declare_queryable(keys::status(&region)).await {
        Ok(q) => q,
        Err(e) => return tracing::error!("zenoh queryable: {e}"),
    };
    while let Ok(query) = queryable.recv_async().await {
        let edges: Vec<serde_json::Value> = replicas
            .lock()
            .expect("replicas")
            .iter()
            .map(|(edge, r)| {
                json!({
                    "edge": edge, "seq": r.chain.seq, "hash": hex(&r.chain.hash),
                    "refused": r.refused, "updated_ms": r.updated_ms,
                })
            })
            .collect();
        let status = json!({"node": region, "role": "region", "edges": edges});
        let _ = query.reply(query.key_expr().clone(), status.to_string()).await;
    }
}

/// `?account=name@edge`: the balance from the replica, with how fresh it is.
async fn serve_balance(session: bridge::zenoh::Session, region: String, replicas: Replicas) {
    let queryable = match session.declare_queryable(keys::balance(&region)).await {
        Ok(q) => q,
        Err(e) => return tracing::error!("zenoh queryable: {e}"),
    };
    while let Ok(query) = queryable.recv_async().await {
        let account = query.parameters().get("account").unwrap_or_default().to_string();
        let answer = match account.split_once('@') {
            None => json!({"error": format!("account: {account:?} must name its edge, like wallet:alice@eu/berlin-1")}),
            Some((name, edge)) => match replicas.lock().expect("replicas").get(edge) {
                None => json!({"error": format!("account: {edge} is not an edge of region {region}")}),
                Some(r) => match r.ledger.balance_view(name) {
                    None => json!({"error": format!("account: {name} does not exist on {edge}"), "replica_seq": r.chain.seq}),
                    Some(view) => json!({"balance": view, "replica_seq": r.chain.seq, "updated_ms": r.updated_ms}),
                },
            },
        };
        let _ = query.reply(query.key_expr().clone(), answer.to_string()).await;
    }
}
