//! An edge node: the embedded MQTT broker in, the ledger core in the middle, redb beneath,
//! and (with a `[zenoh]` section) journal shipping and queryables towards its region.
//!
//! Threads: `broker` (rumqttd), `intake` (applies commands in groups, see `intake`),
//! `committer` (the durability rule, see `committer`), `answerer` (publishes what the
//! committer settled, see `answerer`), and with zenoh `edge-link` (a tokio
//! runtime for shipping and queryables) and, with `[retention]`, `retention` (pruning). Every one reports to `Fatal` when it stops.

pub mod acks;
pub mod answerer;
pub mod books;
pub mod committer;
pub mod disk;
pub mod handoff;
pub mod inbox;
pub mod intake;
pub mod queryables;
pub mod retention;
pub mod shipping;
pub mod transfers;

use crate::error::{Fatal, NodeError};
use crate::metrics::{Metrics, Storage};
use crate::store::Store;
use answerer::{Answerer, GROUPS_TO_ANSWER};
use books::Books;
use committer::{CommitListener, Committer, Reports, GROUPS_IN_FLIGHT};
use config::NodeConfig;
use handoff::Handoff;
use inbox::Inbox;
use intake::{Intake, IntakeLimits};
use shipping::EdgeLink;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

/// Starts an edge on `store`; its parts run until one of them reports to `fatal`.
pub fn start(config: &NodeConfig, store: Arc<Store>, fatal: &Fatal) -> Result<(), NodeError> {
    check_listeners(config)?;
    let books = Books::new(config, store.clone());
    let loaded = books.load()?;
    let (ledger, chain) = (&loaded.ledger, loaded.chain);
    tracing::info!(node = %config.node.id, db = %store.path().display(), head = ledger.head().seq, "ledger loaded");

    // The node's own broker links (commands, and the waker) are not devices.
    let own_links = 2;
    let metrics = Metrics::new(&config.node.id, "edge", own_links);
    metrics.books(ledger.head().seq, ledger.outgoing_count());
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
    }
    let broker_config = broker::broker_config(config).map_err(|e| NodeError::Config(e.to_string()))?;
    let mut mqtt = broker::Broker::new(broker_config);
    // A second broker link gets the intake out of its wait on the broker: for the committer,
    // which waits for the next group (`handoff`), and, with a zenoh link, for other nodes'
    // requests (deliveries, settlements, reads), which reach the intake through the inbox.
    let waker = Arc::new(broker::link::Waker::new(&mut mqtt)?);
    let (listener, inbox): (Option<Box<dyn CommitListener>>, _) = match &config.zenoh {
        Some(_) => {
            let (inbox, queued) = Inbox::new(waker.clone());
            let link = start_zenoh(config, store.clone(), chain, inbox, &metrics, fatal)?;
            if config.retention.prunes() {
                let (config, store, link, metrics) = (config.clone(), store.clone(), link.clone(), metrics.clone());
                fatal.spawn("retention", move || retention::run(config, store, link, &metrics))?;
            }
            (Some(Box::new(link)), Some(queued))
        }
        None => (None, None),
    };
    let (commands, replies) = broker::link::command_link(&mut mqtt)?;
    fatal.spawn("broker", move || mqtt.start().map_err(|e| NodeError::Broker(e.to_string())))?;

    for (key, addr, _) in config.mqtt.listeners() {
        if let Some(addr) = addr {
            println!("ledger-node {}: {} on {addr}", config.node.id, key.trim_start_matches("mqtt."));
        }
    }
    if let Some(addr) = config.metrics.listen {
        println!("ledger-node {}: metrics on http://{addr}/metrics, health on http://{addr}/health", config.node.id);
    }
    println!("ledger-node {}: ready, journal head {}, data in {}", config.node.id, ledger.head().seq, store.path().display());

    let limits = IntakeLimits {
        max_command_bytes: config.ledger.max_command_bytes,
        max_batch_ops: config.ledger.max_batch_ops,
        max_group: config.commit.max_batch,
        max_wait: Duration::from_micros(config.commit.max_wait_us),
    };
    let (groups_tx, groups_rx) = std::sync::mpsc::sync_channel(GROUPS_IN_FLIGHT);
    // What the committer made durable, and the writes the disk refused (see `disk`).
    let (durable, failures) = (Arc::default(), Arc::default());
    let handoff = Arc::new(Handoff::new(Box::new(move || waker.wake())));
    let reports = || Reports { durable: Arc::clone(&durable), failures: Arc::clone(&failures), handoff: Arc::clone(&handoff) };
    let (answers_tx, answers_rx) = std::sync::mpsc::sync_channel(GROUPS_TO_ANSWER);
    let answerer = Answerer::new(replies);
    fatal.spawn("answerer", move || answerer.run(answers_rx))?;
    let committer = Committer::new(store, chain, answers_tx, listener, metrics.clone(), reports());
    fatal.spawn("committer", move || committer.run(groups_rx))?;
    let intake = Intake::new((loaded, books), commands, limits, groups_tx, metrics, reports());
    let intake = match inbox {
        Some(queued) => intake.with_inbox(queued),
        None => intake,
    };
    fatal.spawn("intake", move || intake.run())
}

/// Starts the edge's zenoh side on a runtime thread of its own: journal shipping, and the
/// queryables through which its region and operators reach it.
fn start_zenoh(
    config: &NodeConfig,
    store: Arc<Store>,
    chain: crate::core::journal::Chain,
    inbox: Inbox,
    metrics: &Metrics,
    fatal: &Fatal,
) -> Result<EdgeLink, NodeError> {
    let (link, pushed) = EdgeLink::new(chain, metrics);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("zenoh-edge")
        .enable_all()
        .build()
        .map_err(|e| NodeError::Start(format!("zenoh runtime: {e}")))?;
    let keys = bridge::sign::NodeKeys::of(config).map_err(NodeError::Zenoh)?.map(Arc::new);
    let session = runtime.block_on(bridge::open(config)).map_err(NodeError::Zenoh)?;
    let (edge, shipped) = (config.node.id.clone(), link.clone());
    fatal.spawn("edge-link", move || {
        runtime.block_on(async move {
            queryables::serve(&session, &edge, inbox, store.clone(), keys.clone());
            shipping::ship(session, edge, store, shipped, pushed, keys).await
        })
    })?;
    Ok(link)
}

/// rumqttd logs a bind failure or a bad certificate and carries on without the listener;
/// find out first, naming the key.
fn check_listeners(config: &NodeConfig) -> Result<(), NodeError> {
    for (key, addr, _) in config.mqtt.listeners() {
        if let Some(addr) = addr {
            TcpListener::bind(addr).map_err(|e| NodeError::Listen { key, addr, reason: e.to_string() })?;
        }
    }
    broker::check_tls_files(config).map_err(|e| NodeError::Config(e.to_string()))
}
