//! Journal replication over zenoh. An edge pushes each committed group of entries and serves
//! any range of its journal from redb; its region pulls what it lacks, verifies the hash
//! chain, stores the entries durably, replays them into a replica ledger and acknowledges.
//! A region refuses (and reports) an entry that breaks the chain and never applies it.
//!
//! The edge never waits for its region: pushes that cannot be sent at once are dropped and
//! the region fetches them from the edge's redb when it can.

use crate::journal::{hex, Chain, Entry};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
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

/// Starts the edge's zenoh tasks on their own runtime thread: journal shipping, and the
/// queryables through which its region and operators reach it (`desk`).
pub fn start_edge(config: &NodeConfig, store: Arc<Store>, head: Chain, desk: crate::clearing::Desk, metrics: &Metrics) -> Result<EdgeLink, String> {
    let (push, mut pushed) = tokio::sync::mpsc::channel::<Vec<Entry>>(PUSH_QUEUE);
    let link = EdgeLink { push, head: Arc::new(Mutex::new(head)), acked: Arc::new(AtomicU64::new(0)) };
    let watched = link.clone();
    metrics.add_gauges(Box::new(move |out| {
        let head = watched.head.lock().expect("head lock").seq;
        let acked = watched.acked.load(Ordering::SeqCst);
        out.push_str("# HELP edgeledger_replicated_seq Last journal entry the region acknowledged as durably replicated.\n");
        out.push_str("# TYPE edgeledger_replicated_seq gauge\n");
        out.push_str(&format!("edgeledger_replicated_seq {acked}\n"));
        out.push_str("# HELP edgeledger_replication_lag_entries Journal entries not yet acknowledged by the region.\n");
        out.push_str("# TYPE edgeledger_replication_lag_entries gauge\n");
        out.push_str(&format!("edgeledger_replication_lag_entries {}\n", head.saturating_sub(acked)));
    }));
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
                crate::clearing::serve_edge(&session, &edge, desk, store.clone());
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
    let key = keys::status(&edge);
    bridge::serve_json_now(session, key, move |_| {
        let head = *link.head.lock().expect("head lock");
        let acked = link.acked.load(Ordering::SeqCst);
        json!({
            "node": edge, "role": "edge",
            "head": {"seq": head.seq, "hash": hex(&head.hash)},
            "replicated_seq": acked, "lag_entries": head.seq.saturating_sub(acked),
        })
    })
    .await
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

pub type Replicas = Arc<Mutex<BTreeMap<String, Replica>>>;

/// Runs a region: loads its replicas, then follows each configured edge for ever.
pub fn run_region(config: NodeConfig, store: Store) -> Result<(), String> {
    let store = Arc::new(store);
    let metrics = Metrics::new(&config.node.id, "region", 0);
    if let Some(addr) = config.metrics.listen {
        crate::metrics::start(addr, metrics.clone())?;
        println!("ledger-node {}: metrics on http://{addr}/metrics, health on http://{addr}/health", config.node.id);
    }
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
    let watched = replicas.clone();
    metrics.add_gauges(Box::new(move |out| replica_gauges(&watched, out)));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let session = bridge::open(&config).await?;
        println!("ledger-node {}: ready, region of {} edges", config.node.id, config.replication.edges.len());
        let grown = Arc::new(tokio::sync::Notify::new());
        for edge in config.replication.edges.clone() {
            tokio::spawn(follow_edge(session.clone(), edge, store.clone(), replicas.clone(), grown.clone()));
        }
        let coordinator = crate::clearing::Coordinator::new(&config.node.id, session.clone(), replicas.clone(), grown);
        metrics.add_gauges(coordinator.gauges());
        // The runtime's heartbeat: /health turns 503 when it stops turning.
        let beat = metrics.clone();
        tokio::spawn(async move {
            loop {
                beat.heartbeat();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        tokio::spawn(coordinator.run());
        crate::clearing::serve_region_queries(&session, &config.node.id, replicas.clone(), store.clone());
        tokio::spawn(serve_balance(session.clone(), config.node.id.clone(), replicas.clone()));
        serve_region_status(session, config.node.id.clone(), replicas).await;
        Ok(())
    })
}

/// Pulls `edge`'s journal from where the replica ends, applying pushes as they come.
/// `grown` is told each time the replica grows (the coordinator looks for new transfers).
async fn follow_edge(session: bridge::zenoh::Session, edge: String, store: Arc<Store>, replicas: Replicas, grown: Arc<tokio::sync::Notify>) {
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
        // A refused edge stays where it stopped until an operator acts: stop asking it.
        if replicas.lock().expect("replicas").get(&edge).is_none_or(|r| r.refused.is_some()) {
            return;
        }
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
            grown.notify_one();
            if got < MAX_FRAME_ENTRIES {
                break;
            }
        }
        // Then wait for a push (applied at once when it continues the replica) or the tick.
        match tokio::time::timeout(PULL_INTERVAL, subscriber.recv_async()).await {
            Ok(Ok(sample)) => {
                if let Ok(frame) = decode_frame(&sample.payload().to_bytes()) {
                    if apply(&session, &edge, frame, &store, &replicas).await {
                        grown.notify_one();
                    }
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

/// Verifies, replays and stores the entries of `frame` that continue the replica. Returns
/// whether it made progress. Entries the replica already has are skipped (a push and a
/// range may overlap); a gap leaves the rest for the next range fetch. An entry that breaks
/// the chain or does not apply to the replica's books is refused: neither stored nor kept.
async fn apply(session: &bridge::zenoh::Session, edge: &str, frame: Vec<(u64, Vec<u8>)>, store: &Arc<Store>, replicas: &Replicas) -> bool {
    let (accepted, chain) = {
        let mut all = replicas.lock().expect("replicas");
        let Some(replica) = all.get_mut(edge) else { return false };
        if replica.refused.is_some() {
            return false;
        }
        let mut accepted = Vec::new();
        for (seq, bytes) in frame {
            if seq <= replica.chain.seq {
                continue;
            }
            if seq != replica.chain.seq + 1 {
                break;
            }
            let mut next = replica.chain;
            let checked = Entry::decode(seq, &bytes)
                .and_then(|entry| next.verify_next(&entry).map(|body| (entry, body)))
                .map_err(|e| e.to_string())
                .and_then(|(entry, body)| replica.ledger.replay(&body).map(|()| entry));
            match checked {
                Ok(entry) => {
                    replica.chain = next;
                    accepted.push(entry);
                }
                Err(why) => {
                    let why = format!("entry {seq} refused: {why}");
                    tracing::error!(edge, "replication stopped: {why}");
                    replica.refused = Some(why);
                    break;
                }
            }
        }
        replica.updated_ms = now_ms();
        (accepted, replica.chain)
    };
    if accepted.is_empty() {
        return false;
    }
    let (store, edge_id) = (store.clone(), edge.to_string());
    let stored = match tokio::task::spawn_blocking(move || store.append_replica(&edge_id, &accepted)).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = stored {
        // The replica in memory is ahead of the disk now: stop, and rebuild from disk on restart.
        eprintln!("ledger-node: replica of {edge} cannot be stored: {e}");
        std::process::exit(1);
    }
    let ack = json!({"seq": chain.seq, "hash": hex(&chain.hash)}).to_string();
    if let Err(e) = session.put(keys::journal_ack(edge), ack).congestion_control(CongestionControl::Block).await {
        tracing::debug!("ack for {edge}: {e}");
    }
    true
}

/// Per edge: how far the replica is, how long since it last grew, whether it refused.
fn replica_gauges(replicas: &Replicas, out: &mut String) {
    let now = now_ms();
    let all = replicas.lock().expect("replicas");
    out.push_str("# HELP edgeledger_replica_seq Last journal entry of the edge in this region's replica.\n# TYPE edgeledger_replica_seq gauge\n");
    for (edge, r) in all.iter() {
        out.push_str(&format!("edgeledger_replica_seq{{edge=\"{edge}\"}} {}\n", r.chain.seq));
    }
    out.push_str("# HELP edgeledger_replica_age_seconds Seconds since the replica last grew (or was loaded).\n# TYPE edgeledger_replica_age_seconds gauge\n");
    for (edge, r) in all.iter() {
        out.push_str(&format!("edgeledger_replica_age_seconds{{edge=\"{edge}\"}} {}\n", now.saturating_sub(r.updated_ms) / 1000));
    }
    out.push_str("# HELP edgeledger_replica_refused 1 when the replica refused an entry of the edge and stopped there.\n# TYPE edgeledger_replica_refused gauge\n");
    for (edge, r) in all.iter() {
        out.push_str(&format!("edgeledger_replica_refused{{edge=\"{edge}\"}} {}\n", u8::from(r.refused.is_some())));
    }
}

async fn serve_region_status(session: bridge::zenoh::Session, region: String, replicas: Replicas) {
    let key = keys::status(&region);
    bridge::serve_json_now(session, key, move |_| {
        let all = replicas.lock().expect("replicas");
        let edges: Vec<serde_json::Value> = all
            .iter()
            .map(|(edge, r)| json!({"edge": edge, "seq": r.chain.seq, "hash": hex(&r.chain.hash), "refused": r.refused, "updated_ms": r.updated_ms}))
            .collect();
        json!({"node": region, "role": "region", "edges": edges})
    })
    .await
}

/// `?account=name@edge`: the balance from the replica, with how fresh it is.
async fn serve_balance(session: bridge::zenoh::Session, region: String, replicas: Replicas) {
    let key = keys::balance(&region);
    bridge::serve_json_now(session, key, move |query| {
        let account = query.parameters().get("account").unwrap_or_default().to_string();
        let Some((name, edge)) = account.split_once('@') else {
            return json!({"error": format!("account: {account:?} must name its edge, like wallet:alice@eu/berlin-1")});
        };
        match replicas.lock().expect("replicas").get(edge) {
            None => json!({"error": format!("account: {edge} is not an edge of region {region}")}),
            Some(r) => match r.ledger.balance_view(name) {
                None => json!({"error": format!("account: {name} does not exist on {edge}"), "replica_seq": r.chain.seq}),
                Some(view) => json!({"balance": view, "replica_seq": r.chain.seq, "updated_ms": r.updated_ms}),
            },
        }
    })
    .await
}
