//! Starting a node: opens its store, starts the edge or region it is, and waits until a
//! part of it stops; returns why. Role dispatch only.

use crate::error::{Fatal, NodeError};
use crate::store::Store;
use config::{NodeConfig, Role};

/// Runs the node until a part of it stops; returns that part's error.
pub fn run(config: NodeConfig) -> Result<(), NodeError> {
    let store = Store::open(&config.node.data_dir, &config.node.id)?;
    store.set_quick_repair_up_to(config.commit.quick_repair_up_to_bytes);
    let (fatal, stopped) = Fatal::new();
    match config.node.role {
        Role::Edge => crate::edge::start(&config, store, &fatal)?,
        Role::Region => crate::region::start(config, store, &fatal)?,
    }
    drop(fatal);
    Err(stopped.recv().unwrap_or_else(|_| NodeError::Stopped { part: "node", why: "every part ended".to_string() }))
}
