//! Holds (pending transfers) of one node, with the indexes kept in step with them: pending
//! holds by expiry time, and pending cross-node holds (transfers waiting for their
//! destination's decision).

use super::money::Minor;
use super::reply::Resolution;
use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldState {
    Pending,
    Resolved(Resolution),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub debit: String,
    pub credit: String,
    pub asset: String,
    pub amount: Minor,
    pub expires_at_ms: Option<u64>,
    pub device: Option<String>,
    pub state: HoldState,
    /// For a cross-node transfer: the credit account's address at its destination. The
    /// hold's own credit is the clearing account of that node; the destination's decision
    /// posts or voids it.
    pub remote: Option<String>,
}

impl Hold {
    pub fn is_pending(&self) -> bool {
        self.state == HoldState::Pending
    }
}

#[derive(Debug, Default)]
pub struct Holds {
    map: HashMap<String, Hold>,
    /// Pending holds with a timeout, by expiry time.
    expiries: BTreeSet<(u64, String)>,
    /// Pending cross-node holds (ids): the transfers still waiting for their destination.
    outgoing: BTreeSet<String>,
}

impl Holds {
    pub fn get(&self, pending_id: &str) -> Option<&Hold> {
        self.map.get(pending_id)
    }

    pub fn contains(&self, pending_id: &str) -> bool {
        self.map.contains_key(pending_id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Hold)> {
        self.map.iter()
    }

    /// Pending holds, by id; with `account`, those that debit or credit it. At most `limit`.
    pub fn pending(&self, account: Option<&str>, limit: usize) -> Vec<(&String, &Hold)> {
        self.map
            .iter()
            .filter(|(_, h)| h.is_pending())
            .filter(|(_, h)| account.is_none_or(|a| h.debit == a || h.credit == a))
            .take(limit)
            .collect()
    }

    /// Cross-node transfers sent from this node whose destination has not decided yet.
    pub fn outgoing(&self) -> impl Iterator<Item = (&String, &Hold)> {
        self.outgoing.iter().map(|id| (id, &self.map[id]))
    }

    pub fn outgoing_count(&self) -> usize {
        self.outgoing.len()
    }

    /// The earliest expiry of a pending hold, with its id.
    pub fn first_expiry(&self) -> Option<&(u64, String)> {
        self.expiries.first()
    }

    /// Sets (`Some`) or removes (`None`) a hold and keeps the indexes in step with it.
    /// Returns the hold as it was, for undoing.
    pub fn set(&mut self, pending_id: &str, hold: Option<Hold>) -> Option<Hold> {
        let before = match hold {
            Some(h) => self.map.insert(pending_id.to_string(), h),
            None => self.map.remove(pending_id),
        };
        if let Some(t) = before.as_ref().and_then(|h| h.expires_at_ms) {
            self.expiries.remove(&(t, pending_id.to_string()));
        }
        let now = self.map.get(pending_id);
        if let Some(Hold { state: HoldState::Pending, expires_at_ms: Some(t), .. }) = now {
            self.expiries.insert((*t, pending_id.to_string()));
        }
        match now {
            Some(Hold { state: HoldState::Pending, remote: Some(_), .. }) => self.outgoing.insert(pending_id.to_string()),
            _ => self.outgoing.remove(pending_id),
        };
        before
    }
}
