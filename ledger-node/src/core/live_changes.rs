//! What one group changed in the live state (see `live`): the keys noted while the group
//! ran, and the values the shell writes for them.

use super::accounts::Account;
use super::address::TransferKey;
use super::holds::Hold;
use super::received::Received;
use std::collections::BTreeSet;

/// What one group changed, by key, each with its value after the group (None: removed).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LiveChanges {
    pub accounts: Vec<(String, Option<Account>)>,
    pub holds: Vec<(String, Option<Hold>)>,
    pub received: Vec<(TransferKey, Received)>,
}

impl LiveChanges {
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty() && self.holds.is_empty() && self.received.is_empty()
    }
}

/// Keys changed since the last `take_live_changes`; sorted, so that the store writes
/// each table in key order.
#[derive(Debug, Default)]
pub(super) struct Dirty {
    pub(super) accounts: BTreeSet<String>,
    pub(super) holds: BTreeSet<String>,
    pub(super) received: BTreeSet<TransferKey>,
}
