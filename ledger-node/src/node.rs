//! Starting a node: opens its store, starts the edge or region it is, and waits until a
//! part of it stops or it is asked to stop; returns why. Role dispatch only.

use crate::error::{Fatal, NodeError};
use crate::stop;
use crate::store::Store;
use config::{NodeConfig, Role};
use std::sync::Arc;
use std::time::Duration;

/// Longest a stop waits for the file to be free to close: below the grace period of
/// docker and Kubernetes as deployed (5 s), after which they SIGKILL.
const CLOSE_WITHIN: Duration = Duration::from_secs(3);

/// Runs the node until a part of it stops (returns that part's error) or a stop signal
/// comes (closes the file cleanly, then returns Ok).
pub fn run(config: NodeConfig) -> Result<(), NodeError> {
    // Before any thread starts, so that every thread inherits the mask.
    stop::block()?;
    let store = Arc::new(Store::open_with(&config.node.data_dir, &config.node.id, config.commit.quick_repair_up_to_bytes)?);
    let (fatal, stopped) = Fatal::new();
    match config.node.role {
        Role::Edge => crate::edge::start(&config, store.clone(), &fatal)?,
        Role::Region => crate::region::start(config, store.clone(), &fatal)?,
    }
    stop::wait_in_thread(&fatal)?;
    drop(fatal);
    match stopped.recv().unwrap_or_else(|_| NodeError::Stopped { part: "node", why: "every part ended".to_string() }) {
        NodeError::Signal(signal) => {
            // A commit in progress ends first. What was not answered yet (groups not
            // committed, or committed but not yet published) is sent again by its devices.
            if store.close_for_exit(CLOSE_WITHIN)? {
                tracing::info!(signal, "stopped; the file is closed");
            } else {
                tracing::warn!(signal, "stopped without closing the file (busy, or a write had failed): the next start may check it");
            }
            Ok(())
        }
        failed => Err(failed),
    }
}
