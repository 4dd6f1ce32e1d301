//! The ledger node: the pure ledger core (`money`, `command`, `ledger`, `journal`, `reply`)
//! and the I/O shell around it (`store` on redb, `intake` from the embedded MQTT broker,
//! `replication` of journals over zenoh, `clearing` of transfers across nodes, `queries`
//! for operators, `reconcile` and `audit` to compare and verify books, `metrics` to watch a
//! node, `node` to start it all).
//!
//! The core must not touch disk, network or clock; it takes commands and the time and returns
//! effects. The shell must not reply to a device before the effects are durable.

pub mod audit;
pub mod clearing;
pub mod command;
pub mod intake;
pub mod journal;
pub mod ledger;
pub mod metrics;
pub mod money;
pub mod node;
pub mod queries;
pub mod reconcile;
pub mod replication;
pub mod reply;
pub mod store;
