//! SPEC §8 invariants 1 and 2 as errors: the O(assets) check of the running totals that
//! runs after every group in every build, and the full O(accounts + holds) check that also
//! matches each account's pending amounts against its open holds (start-up, audit, tests).

use super::accounts::Accounts;
use super::change::Floor;
use super::holds::Holds;
use std::collections::HashMap;
use std::fmt;

/// A broken invariant. The books are wrong: the node must stop before it replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvariantError {
    PostedSum { asset: String, sum: i128 },
    PendingSum { asset: String, debits: i128, credits: i128 },
    BelowFloor { accounts: i64 },
    Account { account: String, why: String },
}

impl fmt::Display for InvariantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvariantError::PostedSum { asset, sum } => write!(f, "posted balances of {asset} sum to {sum}, not zero"),
            InvariantError::PendingSum { asset, debits, credits } => {
                write!(f, "pending debits of {asset} ({debits}) differ from its pending credits ({credits})")
            }
            InvariantError::BelowFloor { accounts } => {
                write!(f, "{accounts} accounts are below their floor or have negative pending amounts")
            }
            InvariantError::Account { account, why } => write!(f, "account {account}: {why}"),
        }
    }
}

impl std::error::Error for InvariantError {}

/// SPEC §8.1 and §8.2 from the running totals: O(assets).
pub fn check_totals(accounts: &Accounts) -> Result<(), InvariantError> {
    if accounts.broken() != 0 {
        return Err(InvariantError::BelowFloor { accounts: accounts.broken() });
    }
    for (asset, t) in accounts.totals() {
        if t.posted != 0 {
            return Err(InvariantError::PostedSum { asset: asset.clone(), sum: t.posted });
        }
        if t.pending_debits != t.pending_credits {
            return Err(InvariantError::PendingSum { asset: asset.clone(), debits: t.pending_debits, credits: t.pending_credits });
        }
    }
    Ok(())
}

/// Everything: the totals, each account's floor, and each account's pending amounts
/// against the holds still open. O(accounts + holds).
pub fn check_books(accounts: &Accounts, holds: &Holds) -> Result<(), InvariantError> {
    let broken = |account: &str, why: String| InvariantError::Account { account: account.to_string(), why };
    for (name, a) in accounts.iter() {
        if let Floor::Overdraft(limit) = a.floor {
            if i128::from(a.posted) - i128::from(a.pending_debits) < -i128::from(limit) {
                return Err(broken(name, format!("below its floor: available {}", a.available())));
            }
        }
        if a.pending_debits < 0 || a.pending_credits < 0 {
            return Err(broken(name, "negative pending amounts".to_string()));
        }
    }
    // After the per-account checks, so that a broken floor names its account.
    check_totals(accounts)?;
    let mut held: HashMap<&str, (i128, i128)> = HashMap::new();
    for (_, h) in holds.iter().filter(|(_, h)| h.is_pending()) {
        held.entry(&h.debit).or_default().0 += i128::from(h.amount);
        held.entry(&h.credit).or_default().1 += i128::from(h.amount);
    }
    for (name, a) in accounts.iter() {
        let (d, c) = held.get(name.as_str()).copied().unwrap_or_default();
        if (d, c) != (i128::from(a.pending_debits), i128::from(a.pending_credits)) {
            return Err(broken(name, "pending amounts do not match its open holds".to_string()));
        }
    }
    // The running totals must agree with a fresh sum: they are what every group relies on.
    let mut sums: HashMap<&str, (i128, i128, i128)> = HashMap::new();
    for (_, a) in accounts.iter() {
        let s = sums.entry(&a.asset).or_default();
        s.0 += i128::from(a.posted);
        s.1 += i128::from(a.pending_debits);
        s.2 += i128::from(a.pending_credits);
    }
    for (asset, t) in accounts.totals() {
        let fresh = sums.get(asset.as_str()).copied().unwrap_or_default();
        if fresh != (t.posted, t.pending_debits, t.pending_credits) {
            return Err(InvariantError::Account {
                account: format!("(all of {asset})"),
                why: "running totals differ from the accounts".to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::accounts::Account;

    fn account(asset: &str, floor: Floor, posted: i64, pending_debits: i64, pending_credits: i64) -> Option<Account> {
        Some(Account { asset: asset.into(), floor, closed: false, posted, pending_debits, pending_credits })
    }

    #[test]
    fn running_totals_catch_what_a_command_must_never_leave() {
        let mut accounts = Accounts::default();
        accounts.set("issuer", account("EUR", Floor::Issuance, -500, 0, 0));
        accounts.set("alice", account("EUR", Floor::Overdraft(0), 500, 0, 0));
        assert_eq!(check_totals(&accounts), Ok(()));

        // Money from nowhere: one side of a posting only.
        accounts.set("alice", account("EUR", Floor::Overdraft(0), 501, 0, 0));
        assert_eq!(check_totals(&accounts), Err(InvariantError::PostedSum { asset: "EUR".into(), sum: 1 }));
        accounts.set("alice", account("EUR", Floor::Overdraft(0), 500, 0, 0));

        // A pending debit with no pending credit.
        accounts.set("alice", account("EUR", Floor::Overdraft(0), 500, 10, 0));
        assert!(matches!(check_totals(&accounts), Err(InvariantError::PendingSum { .. })));
        accounts.set("alice", account("EUR", Floor::Overdraft(0), 500, 0, 0));

        // Below the floor, even with the sums right.
        accounts.set("issuer", account("EUR", Floor::Issuance, 100, 0, 0));
        accounts.set("alice", account("EUR", Floor::Overdraft(0), -100, 0, 0));
        assert_eq!(check_totals(&accounts), Err(InvariantError::BelowFloor { accounts: 1 }));

        // Undoing the change (as a rollback does) restores the totals exactly.
        accounts.set("alice", account("EUR", Floor::Overdraft(0), 500, 0, 0));
        accounts.set("issuer", account("EUR", Floor::Issuance, -500, 0, 0));
        assert_eq!(check_totals(&accounts), Ok(()));
        assert_eq!(check_books(&accounts, &Holds::default()), Ok(()));
        accounts.set("alice", None);
        assert!(check_totals(&accounts).is_err(), "removing an account takes its balance out of the sums");
    }
}
