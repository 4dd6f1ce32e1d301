//! What one group changed in the live state (see `live`): the keys noted while the group
//! ran, and the values the shell writes for them.

use super::accounts::Account;
use super::address::TransferKey;
use super::holds::Hold;
use super::keyed_hash::KeyedSet;
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

/// Keys changed since the last `take_live_changes`, sorted there, so that the store writes
/// each table in key order. Accounts and holds are noted in a hash set: a group notes each
/// of its accounts once per change (twice per transfer), and a sorted set compared names
/// a dozen times per note.
#[derive(Debug, Default)]
pub(super) struct Dirty {
    pub(super) accounts: KeyedSet<String>,
    pub(super) holds: KeyedSet<String>,
    pub(super) received: BTreeSet<TransferKey>,
}
