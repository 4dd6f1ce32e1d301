//! The live state as the shell keeps it in tables beside the journal (SPEC §10): what a
//! group changed (accounts, holds, decisions on transfers received), written in the same
//! commit as the group's entries, and how a ledger is restored from those tables at
//! start-up instead of replaying the journal. `LiveState` is the whole of it in order, so
//! that the tables and a replay of the journal can be compared (they must be equal).
//!
//! Only a ledger that asked for it (`track_live_changes`: an edge, a region's replica)
//! notes what changed; audits and replays that write nothing keep no notes.

use super::accounts::Account;
use super::address::TransferKey;
use super::holds::Hold;
use super::keyed_hash::KeyedSet;
use super::ledger::{Head, Ledger};
use super::live_changes::{AccountRows, Dirty, LiveChanges};
use super::received::Received;
use std::collections::BTreeMap;

/// Most accounts changed since the last fold before a group folds them whatever its turn:
/// bounds the set kept for the fold, and the deltas a start-up reads.
pub const MAX_UNFOLDED_ACCOUNTS: usize = 65_536;

/// The live state of a ledger, in key order.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveState {
    pub head: Head,
    pub accounts: BTreeMap<String, Account>,
    pub holds: BTreeMap<String, Hold>,
    pub received: BTreeMap<TransferKey, Received>,
}

impl LiveState {
    /// The first difference from `other`, said for an operator; None when equal.
    pub fn difference(&self, other: &LiveState) -> Option<String> {
        if self.head != other.head {
            return Some(format!("head {:?} vs {:?}", self.head, other.head));
        }
        first_difference("account", &self.accounts, &other.accounts)
            .or_else(|| first_difference("hold", &self.holds, &other.holds))
            .or_else(|| first_difference("received transfer", &self.received, &other.received))
    }
}

/// The keys of a set in order (the store writes each table in key order), leaving it empty
/// with its room kept for the next group.
fn drain_sorted(keys: &mut KeyedSet<String>) -> Vec<String> {
    let mut keys: Vec<String> = keys.drain().collect();
    keys.sort_unstable();
    keys
}

fn first_difference<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    what: &str,
    a: &BTreeMap<K, V>,
    b: &BTreeMap<K, V>,
) -> Option<String> {
    for key in a.keys().chain(b.keys()) {
        match (a.get(key), b.get(key)) {
            (Some(x), Some(y)) if x == y => {}
            (x, y) => return Some(format!("{what} {key:?}: {x:?} vs {y:?}")),
        }
    }
    None
}

impl Ledger {
    /// Notes from now on what each group changes (see `take_live_changes`); every group's
    /// accounts are rows to write.
    pub fn track_live_changes(&mut self) {
        self.dirty = Some(Dirty::folding_every(1));
    }

    /// As `track_live_changes`, but a group's accounts are its delta, and every `groups`
    /// groups (or once `MAX_UNFOLDED_ACCOUNTS` accounts changed since the last fold) all
    /// the accounts changed since the last fold are rows to write (`AccountRows`).
    pub fn track_live_changes_folding(&mut self, groups: u32) {
        self.dirty = Some(Dirty::folding_every(groups));
    }

    /// Accounts changed by `rows` deltas not folded yet (the store's, at start-up): the
    /// next fold writes them too, and comes as many groups sooner, so that restarts between
    /// folds do not pile up deltas.
    pub fn note_unfolded(&mut self, names: impl IntoIterator<Item = String>, rows: u32) {
        if let Some(dirty) = &mut self.dirty {
            dirty.accounts.extend(names.into_iter().map(|name| (name, 0)));
            dirty.groups_since_fold = dirty.groups_since_fold.saturating_add(rows);
        }
    }

    pub(super) fn note_account(&mut self, name: &str) {
        if let Some(dirty) = &mut self.dirty {
            dirty.changed = true;
            let group = dirty.group;
            let noted = match dirty.accounts.get_mut(name) {
                Some(noted) => std::mem::replace(noted, group),
                None => {
                    dirty.accounts.insert(name.to_string(), group);
                    0
                }
            };
            if noted != group && dirty.fold_every > 1 {
                dirty.group_accounts.push(name.to_string());
            }
        }
    }

    pub(super) fn note_hold(&mut self, pending_id: &str) {
        if let Some(dirty) = &mut self.dirty {
            dirty.changed = true;
            if !dirty.holds.contains(pending_id) {
                dirty.holds.insert(pending_id.to_string());
            }
        }
    }

    pub(super) fn note_received(&mut self, key: &TransferKey) {
        if let Some(dirty) = &mut self.dirty {
            dirty.changed = true;
            dirty.received.insert(key.clone());
        }
    }

    /// What changed since the last call, with the values as they are now.
    pub fn take_live_changes(&mut self) -> LiveChanges {
        let Some(dirty) = &mut self.dirty else { return LiveChanges::default() };
        if !std::mem::take(&mut dirty.changed) {
            return LiveChanges::default();
        }
        dirty.groups_since_fold = dirty.groups_since_fold.saturating_add(1);
        // Wraps after 4 billion groups; 0 stays the mark of `note_unfolded`.
        dirty.group = dirty.group.checked_add(1).unwrap_or(1);
        let fold = dirty.groups_since_fold >= dirty.fold_every || dirty.accounts.len() >= MAX_UNFOLDED_ACCOUNTS;
        let (accounts, accounts_are) = if fold {
            dirty.groups_since_fold = 0;
            dirty.group_accounts.clear();
            let mut names: Vec<String> = dirty.accounts.drain().map(|(name, _)| name).collect();
            names.sort_unstable();
            (names, AccountRows::Fold)
        } else {
            let mut names = std::mem::take(&mut dirty.group_accounts);
            names.sort_unstable();
            (names, AccountRows::Delta)
        };
        let holds = drain_sorted(&mut dirty.holds);
        let received = std::mem::take(&mut dirty.received);
        LiveChanges {
            accounts_are,
            accounts: accounts
                .into_iter()
                .map(|name| {
                    let account = self.accounts.get(&name).cloned();
                    (name, account)
                })
                .collect(),
            holds: holds
                .into_iter()
                .map(|id| {
                    // A hold changed by a group not yet durable is in RAM.
                    let hold = self.holds.in_ram(&id).cloned();
                    (id, hold)
                })
                .collect(),
            // A decision recorded by a group not yet durable is in RAM.
            received: received.into_iter().filter_map(|key| self.received.in_ram(&key).cloned().map(|r| (key, r))).collect(),
        }
    }

    /// The whole live state, in key order.
    pub fn live_state(&self) -> LiveState {
        LiveState {
            head: self.head,
            accounts: self.accounts.iter().map(|(n, a)| (n.clone(), a.clone())).collect(),
            holds: self.holds.iter().map(|(id, h)| (id.clone(), h.clone())).collect(),
            received: self.received.iter().map(|r| (TransferKey::new(&r.source, &r.id), r.clone())).collect(),
        }
    }

    /// Restores the state the live tables hold, into a ledger with none yet: `head` and
    /// every account, hold and decision. Nothing of it is noted as changed.
    pub fn restore_live(
        &mut self,
        head: Head,
        accounts: impl IntoIterator<Item = (String, Account)>,
        holds: impl IntoIterator<Item = (String, Hold)>,
        received: impl IntoIterator<Item = Received>,
    ) {
        assert!(self.head.seq == 0 && self.accounts.is_empty(), "live state is restored into an empty ledger");
        self.head = head;
        for (name, account) in accounts {
            self.accounts.set(&name, Some(account));
        }
        for (id, hold) in holds {
            self.holds.set(&id, Some(hold));
        }
        for r in received {
            self.received.insert(r);
        }
    }
}
