//! The ledger node. docs/ARCHITECTURE.md has the map: the folders below, what each owns,
//! the dependency rule, and the path of one payment through them.
//!
//! - `core`: the pure ledger state machine and its types. No I/O, no clock.
//! - `books`: pure read models over the core (query answers, reconcile, audit).
//! - `store`: the redb file (journal, id records, replicas), typed errors.
//! - `edge`: an edge node's wiring: intake, committer, inbox, queryables, shipping.
//! - `region`: a region node's wiring: replicas, coordinator, queryables.
//! - `metrics`: counters, gauges and the `/metrics` and `/health` endpoint.
//! - `setup`, `clock`, `error`, `node`, `stop`: config to core, the clock, fatal errors,
//!   role dispatch, the signals that ask a node to stop.
//!
//! Dependencies point one way: `core` ← `books`, `store` ← `edge`, `region` ← `node`;
//! `edge` and `region` never import each other. The shell must not reply to a device
//! before the effects are durable (`edge::committer`).

pub mod books;
pub mod clock;
pub mod core;
pub mod edge;
pub mod error;
pub mod metrics;
pub mod node;
pub mod region;
pub mod setup;
pub mod stop;
pub mod store;
