//! Why a node stops: every fatal error of the shell, typed. Threads and tasks hand theirs
//! to the node's main thread through `Fatal` (below); only `main` decides to exit.

use crate::core::invariants::InvariantError;
use crate::store::StoreError;
use broker::link::LinkClosed;
use std::fmt;
use std::net::SocketAddr;

#[derive(Debug)]
pub enum NodeError {
    /// The config names something the node cannot use (the message names the key).
    Config(String),
    /// The database cannot be opened, read back, or written.
    Store(StoreError),
    /// A group could not be committed: nothing of it was answered.
    Commit(StoreError),
    /// A listener in the config cannot be bound.
    Listen { key: &'static str, addr: SocketAddr, reason: String },
    /// The embedded broker stopped, or a link into it closed.
    Broker(String),
    /// The zenoh session could not be opened or used.
    Zenoh(String),
    /// The books broke a SPEC §8 invariant: the node stops before it replies.
    Invariant(InvariantError),
    /// A thread or runtime could not be started.
    Start(String),
    /// A part of the node stopped unexpectedly (a panic, or a channel closed).
    Stopped { part: &'static str, why: String },
    /// The node was asked to stop (SIGTERM, SIGINT): not a failure (`stop`).
    Signal(&'static str),
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Config(why) => write!(f, "config error: {why}"),
            NodeError::Store(e) => write!(f, "{e}"),
            NodeError::Commit(e) => write!(f, "commit failed, stopping without replying: {e}"),
            NodeError::Listen { key, addr, reason } => write!(f, "{key}: cannot listen on {addr}: {reason}"),
            NodeError::Broker(why) => write!(f, "broker: {why}"),
            NodeError::Zenoh(why) => write!(f, "{why}"),
            NodeError::Invariant(e) => write!(f, "ledger invariant broken, stopping before replying: {e}"),
            NodeError::Start(why) => write!(f, "cannot start: {why}"),
            NodeError::Stopped { part, why } => write!(f, "{part} stopped: {why}"),
            NodeError::Signal(name) => write!(f, "asked to stop ({name})"),
        }
    }
}

impl std::error::Error for NodeError {}

impl From<StoreError> for NodeError {
    fn from(e: StoreError) -> NodeError {
        NodeError::Store(e)
    }
}

impl From<LinkClosed> for NodeError {
    fn from(e: LinkClosed) -> NodeError {
        NodeError::Broker(e.to_string())
    }
}

impl From<InvariantError> for NodeError {
    fn from(e: InvariantError) -> NodeError {
        NodeError::Invariant(e)
    }
}

impl From<std::io::Error> for NodeError {
    fn from(e: std::io::Error) -> NodeError {
        NodeError::Start(e.to_string())
    }
}

/// Where the parts of a node report why they stopped. The node's main thread waits on the
/// other end and returns the first report; only `main` then decides to exit.
#[derive(Clone)]
pub struct Fatal(std::sync::mpsc::Sender<NodeError>);

impl Fatal {
    pub fn new() -> (Fatal, std::sync::mpsc::Receiver<NodeError>) {
        let (tx, rx) = std::sync::mpsc::channel();
        (Fatal(tx), rx)
    }

    pub fn report(&self, error: NodeError) {
        match error {
            NodeError::Signal(_) => tracing::info!("{error}"),
            _ => tracing::error!("{error}"),
        }
        // The main thread may already be returning with an earlier report.
        let _ = self.0.send(error);
    }

    /// Runs `work` on a thread of its own; its error, its panic, or its end is reported:
    /// the parts started this way are meant to run until the process ends.
    pub fn spawn(&self, part: &'static str, work: impl FnOnce() -> Result<(), NodeError> + Send + 'static) -> Result<(), NodeError> {
        let fatal = self.clone();
        std::thread::Builder::new()
            .name(part.into())
            .spawn(move || {
                let error = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
                    Ok(Ok(())) => NodeError::Stopped { part, why: "it ended".to_string() },
                    Ok(Err(e)) => e,
                    Err(panic) => {
                        let why = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "panicked".to_string());
                        NodeError::Stopped { part, why: format!("panicked: {why}") }
                    }
                };
                fatal.report(error);
            })
            .map_err(|e| NodeError::Start(format!("thread {part}: {e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_way_a_part_stops_reaches_the_main_thread() {
        let (fatal, stopped) = Fatal::new();
        fatal.spawn("failing", || Err(NodeError::Broker("gone".to_string()))).unwrap();
        let first = stopped.recv_timeout(Duration::from_secs(10)).expect("a report");
        assert!(matches!(first, NodeError::Broker(ref why) if why == "gone"), "{first}");

        fatal.spawn("panicking", || panic!("books do not balance")).unwrap();
        let second = stopped.recv_timeout(Duration::from_secs(10)).expect("a report");
        assert!(second.to_string().contains("panicking stopped: panicked: books do not balance"), "{second}");

        fatal.spawn("ending", || Ok(())).unwrap();
        let third = stopped.recv_timeout(Duration::from_secs(10)).expect("a report");
        assert!(matches!(third, NodeError::Stopped { part: "ending", .. }), "{third}");
    }
}
