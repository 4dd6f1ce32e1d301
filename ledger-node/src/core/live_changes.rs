//! What one group changed in the live state (see `live`): the keys noted while the group
//! ran, and the values the shell writes for them.

use super::accounts::Account;
use super::address::TransferKey;
use super::holds::Hold;
use super::keyed_hash::{KeyedMap, KeyedSet};
use super::received::Received;
use std::collections::BTreeSet;

/// What one group changed, by key, each with its value after the group (None: removed).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LiveChanges {
    /// Accounts with their values now: the group's own changes (`Delta`), or every account
    /// changed since the last fold (`Fold`).
    pub accounts: Vec<(String, Option<Account>)>,
    pub accounts_are: AccountRows,
    pub holds: Vec<(String, Option<Hold>)>,
    pub received: Vec<(TransferKey, Received)>,
}

/// How the store writes a group's accounts. A ledger that folds every group (a replica,
/// the books as of an anchor, a tool) always gives `Fold`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum AccountRows {
    /// Rows of the accounts table, one per account; the deltas written since the last fold
    /// are then deleted, so these must be every account changed since (never a default).
    Fold,
    /// One delta row for the group (an edge between folds: one insert instead of one per
    /// account; see `store::live`). The default: what a partly filled `LiveChanges` says
    /// deletes nothing.
    #[default]
    Delta,
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
///
/// A ledger that folds every `fold_every` groups keeps the accounts changed since the last
/// fold (`accounts`, what a fold writes), each with the number of the last group that
/// changed it, so that one lookup also tells whether it is in the group's delta
/// (`group_accounts`) yet.
#[derive(Debug)]
pub(super) struct Dirty {
    pub(super) accounts: KeyedMap<String, u32>,
    pub(super) group_accounts: Vec<String>,
    /// Counts the groups taken; starts at 1, so that 0 marks an account noted outside any
    /// group (`Ledger::note_unfolded`).
    pub(super) group: u32,
    pub(super) holds: KeyedSet<String>,
    pub(super) received: BTreeSet<TransferKey>,
    pub(super) fold_every: u32,
    pub(super) groups_since_fold: u32,
    /// Something was noted since the last `take_live_changes`. A group that changed
    /// nothing is not written (the intake does not even send one without replies), so it
    /// must not count towards a fold, nor take the accounts a fold would write.
    pub(super) changed: bool,
}

impl Dirty {
    pub(super) fn folding_every(groups: u32) -> Dirty {
        assert!(groups >= 1, "a fold at least every group");
        Dirty {
            accounts: KeyedMap::default(),
            group_accounts: Vec::new(),
            group: 1,
            holds: KeyedSet::default(),
            received: BTreeSet::new(),
            fold_every: groups,
            groups_since_fold: 0,
            changed: false,
        }
    }
}
