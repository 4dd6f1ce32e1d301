//! A region node: replicas of its edges' journals (`replicas`, which takes queued pushes
//! together with `pushes`), the coordinator of the cross-node transfers they send
//! (`coordinator`, sending in bulk through `lanes`), and the queryables operators read them
//! through (`queryables`). All on one tokio runtime in the `region` thread, which reports
//! to `Fatal` when it stops.

pub mod coordinator;
pub mod lanes;
pub mod pushes;
pub mod queryables;
pub mod replicas;

use crate::clock::now_ms;
use crate::error::{Fatal, NodeError};
use crate::metrics::{Metrics, Storage};
use crate::setup::ledger_for;
use crate::store::{IdFault, Store, StoreArchive};
use config::NodeConfig;
use coordinator::Coordinator;
use replicas::{follow_edge, replica_gauges, Replica, Replicas};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the region's runtime shows life to `/health`.
const HEARTBEAT: Duration = Duration::from_millis(500);

/// Loads the replicas, then follows each configured edge until a part of the region stops.
pub fn start(config: NodeConfig, store: Arc<Store>, fatal: &Fatal) -> Result<(), NodeError> {
    let metrics = Metrics::new(&config.node.id, "region", 0);
    let sized = store.clone();
    metrics.add_storage(move || {
        sized.sizes().ok().map(|s| Storage {
            file_bytes: s.file_bytes,
            disk_bytes: s.disk_bytes,
            disk_free_bytes: s.disk_free_bytes,
            rows: s.rows,
            quick_repair: s.quick_repair,
        })
    });
    if let Some(addr) = config.metrics.listen {
        crate::metrics::start(addr, metrics.clone())?;
        println!("ledger-node {}: metrics on http://{addr}/metrics, health on http://{addr}/health", config.node.id);
    }
    let mut replicas = BTreeMap::new();
    for edge in &config.replication.edges {
        let mut edge_config = config.clone();
        edge_config.node.id = edge.clone();
        let mut ledger = ledger_for(&edge_config);
        // A replica never answers a resend: its edge does. It keeps no id records.
        ledger.forget_ids();
        // Resolved holds and decisions on transfers received leave RAM and are read back from
        // the file when an entry names them.
        let hold_fault = IdFault::default();
        let finals = StoreArchive::of_replica(store.clone(), edge, hold_fault.clone());
        ledger.archive_holds(config.ledger.resolved_hold_cache_entries, Box::new(finals.clone()));
        ledger.archive_received(config.ledger.received_cache_entries, Box::new(finals));
        // From its live tables, without replaying the edge's history.
        let chain = store.open_replica(edge, &mut ledger)?;
        if let Some(fault) = hold_fault.take() {
            return Err(NodeError::Store(fault));
        }
        ledger.track_live_changes();
        println!("ledger-node {}: replica of {edge} at {}", config.node.id, chain.seq);
        replicas.insert(edge.clone(), Replica { chain, stored_seq: chain.seq, ledger, refused: None, updated_ms: now_ms(), hold_fault });
    }
    let replicas: Replicas = Arc::new(Mutex::new(replicas));
    let watched = replicas.clone();
    metrics.add_gauges(Box::new(move |out| replica_gauges(&watched, out)));
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| NodeError::Start(format!("region runtime: {e}")))?;
    let keys = bridge::sign::NodeKeys::of(&config).map_err(NodeError::Zenoh)?.map(Arc::new);
    let session = runtime.block_on(bridge::open(&config)).map_err(NodeError::Zenoh)?;
    println!("ledger-node {}: ready, region of {} edges", config.node.id, config.replication.edges.len());
    let fatal_tasks = fatal.clone();
    fatal.spawn("region", move || {
        runtime.block_on(async move {
            let grown = Arc::new(tokio::sync::Notify::new());
            for edge in config.replication.edges.clone() {
                tokio::spawn(follow_edge(
                    session.clone(),
                    edge,
                    store.clone(),
                    replicas.clone(),
                    grown.clone(),
                    fatal_tasks.clone(),
                    keys.clone(),
                ));
            }
            let peer_regions = config.zenoh.as_ref().map(|z| z.peer_regions.clone()).unwrap_or_default();
            let coordinator = Coordinator::new(&config.node.id, peer_regions, keys.clone(), session.clone(), replicas.clone(), grown);
            metrics.add_gauges(coordinator.gauges());
            // The runtime's heartbeat: /health turns 503 when it stops turning.
            let beat = metrics.clone();
            tokio::spawn(async move {
                loop {
                    beat.heartbeat();
                    tokio::time::sleep(HEARTBEAT).await;
                }
            });
            tokio::spawn(coordinator.run());
            queryables::serve(session, config.node.id.clone(), replicas, store).await;
        });
        Err(NodeError::Zenoh("the zenoh session of the region closed".to_string()))
    })
}
