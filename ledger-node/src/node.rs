//! Starting a node: open and rebuild the store, start the embedded broker, run the intake.

use crate::clearing::Desk;
use crate::intake::{Committer, Intake, IntakeLimits, Waker, GROUPS_IN_FLIGHT, PEER_QUEUE, WAKE_TOPIC};
use crate::ledger::{DeviceRights, Ledger, Limits, Permissions};
use crate::metrics::Metrics;
use crate::money::Assets;
use crate::store::Store;
use config::{NodeConfig, Role};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

/// The ledger core as a config describes it, with no state yet.
pub fn ledger_for(config: &NodeConfig) -> Ledger {
    let custom: Vec<(String, u32)> = config.assets.iter().map(|a| (a.code.clone(), a.scale)).collect();
    let assets = Assets::new(&custom, |code| config.max_amount_for(code));
    let limits = Limits { max_batch_ops: config.ledger.max_batch_ops, max_hold_timeout_s: config.ledger.max_hold_timeout_s };
    let permissions = if config.devices.is_empty() {
        Permissions::open()
    } else {
        let rights = config.devices.iter().map(|d| (d.id.clone(), DeviceRights { may_debit: d.may_debit.clone(), may_issue: d.may_issue }));
        Permissions::restricted(rights.collect::<HashMap<_, _>>())
    };
    Ledger::new(&config.node.id, assets, limits, permissions)
}

/// Runs the node until a fatal error; returns that error's message.
pub fn run(config: NodeConfig) -> Result<(), String> {
    let store = Store::open(&config.node.data_dir, &config.node.id).map_err(|e| e.to_string())?;
    if config.node.role == Role::Region {
        return crate::replication::run_region(config, store);
    }
    check_listeners(&config)?;
    let mut ledger = ledger_for(&config);
    let chain = store.load(&mut ledger).map_err(|e| e.to_string())?;
    let store = std::sync::Arc::new(store);
    tracing::info!(node = %config.node.id, db = %store.path().display(), head = ledger.head().seq, "ledger loaded");

    // The node's own broker links (commands, and the waker with zenoh) are not devices.
    let own_links = if config.zenoh.is_some() { 2 } else { 1 };
    let metrics = Metrics::new(&config.node.id, "edge", own_links);
    metrics.books(ledger.head().seq, ledger.outgoing_count());
    if let Some(addr) = config.metrics.listen {
        crate::metrics::start(addr, metrics.clone())?;
    }
    let broker_config = broker::broker_config(&config).map_err(|e| e.to_string())?;
    let mut mqtt = broker::Broker::new(broker_config);
    // With a zenoh link, other nodes' requests (deliveries, settlements, reads) reach the
    // intake through a bounded queue; a second broker link wakes the intake for them.
    let (edge_link, peers) = match &config.zenoh {
        Some(_) => {
            ledger.enable_cross_node();
            let (peers_tx, peers_rx) = std::sync::mpsc::sync_channel(PEER_QUEUE);
            let waker_link = mqtt.link(&format!("edgeledger-waker-{}", broker::random_hex(16))).map_err(|e| format!("broker link: {e}"))?;
            let desk = Desk::new(peers_tx, Waker::new(waker_link));
            (Some(crate::replication::start_edge(&config, store.clone(), chain, desk, &metrics)?), Some(peers_rx))
        }
        None => (None, None),
    };
    // A device connecting with the link's client id would take over the link (rumqttd
    // replaces a connection on a duplicate id) and stop the node: make the id unguessable.
    let link_id = format!("edgeledger-node-{}", broker::random_hex(16));
    let (mut link_tx, link_rx) = mqtt.link(&link_id).map_err(|e| format!("broker link: {e}"))?;
    std::thread::Builder::new()
        .name("broker".into())
        .spawn(move || {
            if let Err(e) = mqtt.start() {
                tracing::error!("broker stopped: {e}");
                std::process::exit(1);
            }
        })
        .map_err(|e| e.to_string())?;
    link_tx.subscribe(broker::COMMAND_FILTER).map_err(|e| format!("broker link: {e}"))?;
    link_tx.subscribe(WAKE_TOPIC).map_err(|e| format!("broker link: {e}"))?;

    let listeners = [("mqtt 3.1.1", config.mqtt.listen_v4), ("mqtt 5", config.mqtt.listen_v5), ("websocket", config.mqtt.listen_ws)];
    for (kind, addr) in listeners {
        if let Some(addr) = addr {
            println!("ledger-node {}: {kind} on {addr}", config.node.id);
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
    let committer_metrics = metrics.clone();
    std::thread::Builder::new()
        .name("committer".into())
        .spawn(move || {
            // A node that cannot commit must stop at once: it would only keep taking
            // commands (PUBACK) that it can never answer.
            if let Err(e) = Committer::new(store, chain, link_tx, edge_link, committer_metrics).run(groups_rx) {
                eprintln!("ledger-node: {e}");
                std::process::exit(1);
            }
        })
        .map_err(|e| e.to_string())?;
    let intake = Intake::new(ledger, link_rx, limits, groups_tx, metrics);
    match peers {
        Some(peers) => intake.with_peers(peers).run(),
        None => intake.run(),
    }
}

/// rumqttd logs a bind failure and carries on without the listener; find out first.
fn check_listeners(config: &NodeConfig) -> Result<(), String> {
    let listeners: [(&str, Option<SocketAddr>); 3] =
        [("mqtt.listen_v4", config.mqtt.listen_v4), ("mqtt.listen_v5", config.mqtt.listen_v5), ("mqtt.listen_ws", config.mqtt.listen_ws)];
    for (key, addr) in listeners {
        if let Some(addr) = addr {
            TcpListener::bind(addr).map_err(|e| format!("{key}: cannot listen on {addr}: {e}"))?;
        }
    }
    Ok(())
}
