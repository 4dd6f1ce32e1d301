//! The accounts of one node and their running totals per asset. Every change of an account
//! goes through `Accounts::set`, which keeps the totals in step, so that SPEC §8.1 (posted
//! balances sum to zero, pending debits equal pending credits) and §8.2 (no account below
//! its floor) can be checked in O(assets) after every group, in every build
//! (`invariants::check_totals`).

use super::change::Floor;
use super::keyed_hash::KeyedMap;
use super::money::Minor;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Shared: an account is cloned for every change a command makes to it (its
    /// before-image is kept for a rollback), and copying the asset code was an allocation
    /// each time.
    pub asset: Arc<str>,
    pub floor: Floor,
    pub closed: bool,
    pub posted: Minor,
    pub pending_debits: Minor,
    pub pending_credits: Minor,
}

impl Account {
    /// Posted balance minus pending debits: what may still be spent.
    pub fn available(&self) -> Minor {
        self.posted - self.pending_debits
    }

    /// Below its floor, or with a negative pending amount: a state no command may leave.
    fn broken(&self) -> bool {
        let available = i128::from(self.posted) - i128::from(self.pending_debits);
        let below = match self.floor {
            Floor::Issuance => false,
            Floor::Overdraft(limit) => available < -i128::from(limit),
        };
        below || self.pending_debits < 0 || self.pending_credits < 0
    }
}

/// What one account adds to its asset's totals.
#[derive(Debug, Clone, Copy, Default)]
struct Share {
    posted: i128,
    pending_debits: i128,
    pending_credits: i128,
    broken: i64,
}

impl Share {
    fn of(account: &Account) -> Share {
        Share {
            posted: i128::from(account.posted),
            pending_debits: i128::from(account.pending_debits),
            pending_credits: i128::from(account.pending_credits),
            broken: i64::from(account.broken()),
        }
    }
}

/// Sums over every account of one asset. i128: no sum of i64 balances can overflow it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AssetTotals {
    pub posted: i128,
    pub pending_debits: i128,
    pub pending_credits: i128,
}

#[derive(Debug, Default)]
pub struct Accounts {
    map: KeyedMap<String, Account>,
    totals: KeyedMap<String, AssetTotals>,
    /// Accounts below their floor or with negative pending amounts; zero outside a command.
    broken: i64,
}

impl Accounts {
    pub fn get(&self, name: &str) -> Option<&Account> {
        self.map.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Account)> {
        self.map.iter()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Sets (`Some`) or removes (`None`) an account, keeping the totals in step. Returns
    /// the account as it was, for undoing. An account never changes its asset.
    pub fn set(&mut self, name: &str, account: Option<Account>) -> Option<Account> {
        let after = account.as_ref().map(Share::of).unwrap_or_default();
        let before = match account {
            // Updating in place keeps the key: no allocation for the common case.
            Some(account) => match self.map.get_mut(name) {
                Some(slot) => Some(std::mem::replace(slot, account)),
                None => self.map.insert(name.to_string(), account),
            },
            None => self.map.remove(name),
        };
        // An existing account's asset is its before-image's; a new one's is looked up.
        let asset = match &before {
            Some(before) => {
                debug_assert!(self.map.get(name).is_none_or(|a| a.asset == before.asset), "account {name} changed its asset");
                &before.asset
            }
            None => match self.map.get(name) {
                Some(now) => &now.asset,
                None => return None,
            },
        };
        let before_share = before.as_ref().map(Share::of).unwrap_or_default();
        let totals = match self.totals.get_mut(&**asset) {
            Some(totals) => totals,
            None => self.totals.entry(asset.to_string()).or_default(),
        };
        totals.posted += after.posted - before_share.posted;
        totals.pending_debits += after.pending_debits - before_share.pending_debits;
        totals.pending_credits += after.pending_credits - before_share.pending_credits;
        self.broken += after.broken - before_share.broken;
        before
    }

    /// The running totals of each asset.
    pub fn totals(&self) -> impl Iterator<Item = (&String, &AssetTotals)> {
        self.totals.iter()
    }

    /// Accounts now below their floor or with negative pending amounts.
    pub fn broken(&self) -> i64 {
        self.broken
    }
}
