//! What the journal records: each entry's body (the command, its changes, the reply) and
//! the changes themselves. Replaying the changes of every entry in order rebuilds the state.

use super::command::Journaled;
use super::money::Minor;
use super::reply::{Reply, Resolution};
use serde::{Deserialize, Serialize};

/// How far below zero an account may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Floor {
    /// Money enters here: no lower bound.
    Issuance,
    /// Balance minus pending debits may not go below minus this many minor units.
    Overdraft(Minor),
}

/// One journaled change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// The scale is recorded so that a node never reads minor units at another scale.
    AccountOpened {
        account: String,
        asset: String,
        scale: u32,
        floor: Floor,
    },
    AccountClosed {
        account: String,
    },
    Transferred {
        debit: String,
        credit: String,
        asset: String,
        amount: Minor,
    },
    HoldPlaced {
        pending_id: String,
        debit: String,
        credit: String,
        asset: String,
        amount: Minor,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        remote: Option<String>,
    },
    /// The whole hold leaves pending; `posted` of it moves from debit to credit.
    /// The accounts are the hold's own, named so that each entry reads on its own.
    HoldResolved {
        pending_id: String,
        debit: String,
        credit: String,
        resolution: Resolution,
        posted: Minor,
    },
}

impl Change {
    /// Whether this change moves or names `account`.
    pub fn touches(&self, account: &str) -> bool {
        match self {
            Change::AccountOpened { account: a, .. } | Change::AccountClosed { account: a } => a == account,
            Change::Transferred { debit, credit, .. }
            | Change::HoldPlaced { debit, credit, .. }
            | Change::HoldResolved { debit, credit, .. } => debit == account || credit == account,
        }
    }
}

/// What an entry says, serialized as JSON and hashed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryBody {
    pub seq: u64,
    pub ts_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub command: Journaled,
    pub changes: Vec<Change>,
    /// What the device was told; absent for entries the node writes itself (expiry,
    /// settlement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Reply>,
}
