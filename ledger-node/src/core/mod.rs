//! The pure core: the ledger state machine and the types it speaks. No I/O: nothing here
//! imports tokio, redb, zenoh, rumqttd or the shell, reads the clock or touches a file.
//! Commands and the time go in; effects (replies, journal entries, id records, notices)
//! come out. This is what the property tests hammer. Read ports only: id records,
//! resolved holds and decisions on transfers received that left RAM are read back through
//! `idempotency::IdArchive`, `holds::HoldArchive` and `received::ReceivedArchive`, which the shell implements over its file (tests, over a map); the
//! core never writes through them.

pub mod accounts;
pub mod address;
pub mod apply;
pub mod canonical_json;
pub mod change;
pub mod command;
pub mod cross_node;
pub mod entry_codec;
pub mod execute;
pub mod fingerprint;
pub mod holds;
pub mod id_filter;
pub mod idempotency;
pub mod invariants;
pub mod journal;
mod json_fields;
pub mod keyed_hash;
pub mod leaving;
pub mod ledger;
pub mod live;
pub mod live_changes;
pub mod money;
pub mod permissions;
pub mod received;
pub mod reply;
pub mod shards;
pub mod transfer;
pub mod wire;

pub use accounts::Account;
pub use change::{Change, EntryBody, Floor};
pub use command::{Command, Journaled, Movement, NodeCommand, NodeOp, Op};
pub use holds::{Hold, HoldArchive, HoldState};
pub use idempotency::Recorded;
pub use leaving::LeaveStats;
pub use ledger::{Effects, Head, Ledger, Limits};
pub use live::LiveState;
pub use live_changes::{AccountRows, LiveChanges};
pub use permissions::{DeviceRights, Permissions, OPERATOR};
pub use received::Received;
pub use received::ReceivedArchive;
