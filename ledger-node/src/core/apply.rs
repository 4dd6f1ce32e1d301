//! Applying journaled changes to the books, all of a change or none of it, with the
//! before-images that roll back a command that fails part-way (a batch). Live commands are
//! validated first, so only `Overflow` can happen to them; a journal being replayed may
//! hold anything, and says `Corrupt`.

use super::accounts::Account;
use super::change::Change;
use super::holds::{Hold, HoldState};
use super::invariants::check_totals;
use super::ledger::Ledger;
use super::money::Minor;
use super::reply::{Code, Rejection, Resolution};

/// Why a change could not be applied.
#[derive(Debug)]
pub enum ApplyError {
    /// A balance would leave the i64 range: the command is rejected `overflow`.
    Overflow,
    /// The change contradicts the state (only a damaged or foreign journal can say this).
    Corrupt(String),
}

/// Before-images for rolling back a command that fails part-way.
pub enum Undo {
    Account(String, Option<Account>),
    Hold(String, Option<Hold>),
}

fn checked(value: Option<Minor>) -> Result<Minor, ApplyError> {
    value.ok_or(ApplyError::Overflow)
}

impl Ledger {
    /// Applies a change a validated command made and records it; overflow rejects it.
    pub(super) fn change(&mut self, change: Change, undo: &mut Vec<Undo>, changes: &mut Vec<Change>) -> Result<(), Rejection> {
        match self.apply(&change, undo) {
            Ok(()) => {
                changes.push(change);
                Ok(())
            }
            Err(ApplyError::Overflow) => Err(Rejection::new(Code::Overflow, "amount: the resulting balance is out of range")),
            Err(ApplyError::Corrupt(why)) => panic!("ledger state contradicts a validated command: {why}"),
        }
    }

    /// Applies one change, all of it or none of it.
    pub(super) fn apply(&mut self, change: &Change, undo: &mut Vec<Undo>) -> Result<(), ApplyError> {
        match change {
            Change::AccountOpened { account, asset, scale, floor } => {
                if self.accounts.contains(account) {
                    return Err(ApplyError::Corrupt(format!("account {account} is opened twice")));
                }
                match self.assets.get(asset) {
                    Some(spec) if spec.scale == *scale => {}
                    Some(spec) => {
                        return Err(ApplyError::Corrupt(format!(
                            "account {account} holds {asset} at scale {scale}, but this node's config gives {asset} scale {}",
                            spec.scale
                        )))
                    }
                    None => {
                        return Err(ApplyError::Corrupt(format!(
                            "account {account} holds {asset}, which this node's config does not define ([[assets]])"
                        )))
                    }
                }
                let acct = Account {
                    asset: asset.as_str().into(),
                    floor: *floor,
                    closed: false,
                    posted: 0,
                    pending_debits: 0,
                    pending_credits: 0,
                };
                self.put_account(account, acct, undo);
            }
            Change::AccountClosed { account } => {
                let mut acct = self.account_for_change(account)?;
                acct.closed = true;
                self.put_account(account, acct, undo);
            }
            Change::Transferred { debit, credit, amount, .. } => {
                let mut from = self.account_for_change(debit)?;
                let mut to = self.account_for_change(credit)?;
                from.posted = checked(from.posted.checked_sub(*amount))?;
                to.posted = checked(to.posted.checked_add(*amount))?;
                // Pending debits are subtracted from posted to get "available"; keep that in range too.
                checked(from.posted.checked_sub(from.pending_debits))?;
                self.put_account(debit, from, undo);
                self.put_account(credit, to, undo);
            }
            Change::HoldPlaced { pending_id, debit, credit, asset, amount, expires_at_ms, device, remote } => {
                // A live command places its hold under an id the id index has just found
                // new: no hold has that key, in RAM or in the file, and the intake need not
                // read the file to know. A journal being replayed may hold anything.
                debug_assert!(self.replaying || !self.holds.contains(pending_id), "a live hold's id is new");
                let placed_before = if self.replaying { self.holds.contains(pending_id) } else { self.holds.in_ram(pending_id).is_some() };
                if placed_before {
                    return Err(ApplyError::Corrupt(format!("hold {pending_id} is placed twice")));
                }
                let mut from = self.account_for_change(debit)?;
                let mut to = self.account_for_change(credit)?;
                from.pending_debits = checked(from.pending_debits.checked_add(*amount))?;
                checked(from.posted.checked_sub(from.pending_debits))?;
                to.pending_credits = checked(to.pending_credits.checked_add(*amount))?;
                checked(to.posted.checked_add(to.pending_credits))?;
                let hold = Hold {
                    debit: debit.clone(),
                    credit: credit.clone(),
                    asset: asset.clone(),
                    amount: *amount,
                    expires_at_ms: *expires_at_ms,
                    device: device.clone(),
                    state: HoldState::Pending,
                    remote: remote.clone(),
                };
                self.put_account(debit, from, undo);
                self.put_account(credit, to, undo);
                self.put_hold(pending_id, hold, undo);
            }
            Change::HoldResolved { pending_id, debit, credit, resolution, posted } => {
                let mut hold = self
                    .holds
                    .get(pending_id)
                    .map(|h| h.into_owned())
                    .ok_or_else(|| ApplyError::Corrupt(format!("hold {pending_id} does not exist")))?;
                if (&hold.debit, &hold.credit) != (debit, credit) {
                    return Err(ApplyError::Corrupt(format!(
                        "hold {pending_id} is from {} to {}, not {debit} to {credit}",
                        hold.debit, hold.credit
                    )));
                }
                if hold.state != HoldState::Pending {
                    return Err(ApplyError::Corrupt(format!("hold {pending_id} resolves twice")));
                }
                if *posted < 0 || *posted > hold.amount {
                    return Err(ApplyError::Corrupt(format!("hold {pending_id} posts {posted} of {}", hold.amount)));
                }
                let mut from = self.account_for_change(&hold.debit)?;
                let mut to = self.account_for_change(&hold.credit)?;
                from.pending_debits = checked(from.pending_debits.checked_sub(hold.amount))?;
                to.pending_credits = checked(to.pending_credits.checked_sub(hold.amount))?;
                from.posted = checked(from.posted.checked_sub(*posted))?;
                to.posted = checked(to.posted.checked_add(*posted))?;
                hold.state = HoldState::Resolved(*resolution);
                self.put_account(debit, from, undo);
                self.put_account(credit, to, undo);
                self.put_hold(pending_id, hold, undo);
            }
        }
        Ok(())
    }

    /// Applies the changes a stored entry records, all of them or none: an entry that does
    /// not apply, or after which the books no longer balance, is rolled back whole. The
    /// error names the entry.
    pub(super) fn apply_recorded(&mut self, seq: u64, changes: &[Change]) -> Result<(), String> {
        let mut undo = Vec::new();
        self.replaying = true;
        let applied = changes.iter().try_for_each(|change| {
            self.apply(change, &mut undo).map_err(|e| match e {
                ApplyError::Overflow => format!("journal entry {seq}: a balance overflows"),
                ApplyError::Corrupt(why) => format!("journal entry {seq}: {why}"),
            })
        });
        self.replaying = false;
        let checked = applied.and_then(|()| check_totals(&self.accounts).map_err(|e| format!("journal entry {seq}: {e}")));
        if checked.is_err() {
            self.rollback(undo);
        }
        checked
    }

    /// The change resolving an existing hold.
    pub(super) fn resolution_of(&self, pending_id: &str, resolution: Resolution, posted: Minor) -> Change {
        let hold = self.holds.in_ram(pending_id).expect("resolving a pending hold: pending holds are in RAM");
        Change::HoldResolved {
            pending_id: pending_id.to_string(),
            debit: hold.debit.clone(),
            credit: hold.credit.clone(),
            resolution,
            posted,
        }
    }

    fn account_for_change(&self, name: &str) -> Result<Account, ApplyError> {
        self.accounts.get(name).cloned().ok_or_else(|| ApplyError::Corrupt(format!("account {name} does not exist")))
    }

    fn put_account(&mut self, name: &str, acct: Account, undo: &mut Vec<Undo>) {
        let before = self.accounts.set(name, Some(acct));
        self.note_account(name);
        undo.push(Undo::Account(name.to_string(), before));
    }

    fn put_hold(&mut self, pending_id: &str, hold: Hold, undo: &mut Vec<Undo>) {
        let before = self.holds.set(pending_id, Some(hold));
        self.note_hold(pending_id);
        undo.push(Undo::Hold(pending_id.to_string(), before));
    }

    /// Undoes a command's changes. Their keys stay noted as changed (`live`): writing an
    /// unchanged value is harmless.
    pub(super) fn rollback(&mut self, undo: Vec<Undo>) {
        for step in undo.into_iter().rev() {
            match step {
                Undo::Account(name, before) => {
                    self.accounts.set(&name, before);
                }
                Undo::Hold(id, before) => {
                    self.holds.set(&id, before);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::change::{EntryBody, Floor};
    use crate::core::command::{Journaled, NodeCommand, NodeOp};
    use crate::core::money::Assets;
    use crate::core::{Limits, Permissions};

    fn entry(seq: u64, changes: Vec<Change>) -> EntryBody {
        let command = Journaled::Node(NodeCommand { id: format!("e{seq}"), op: NodeOp::Expire { pending_id: "none".into() } });
        EntryBody { seq, ts_ms: seq, device: None, command, changes, reply: None }
    }

    fn opened(account: &str, floor: Floor) -> Change {
        Change::AccountOpened { account: account.into(), asset: "EUR".into(), scale: 2, floor }
    }

    fn moved(debit: &str, credit: &str, amount: Minor) -> Change {
        Change::Transferred { debit: debit.into(), credit: credit.into(), asset: "EUR".into(), amount }
    }

    #[test]
    fn a_stored_entry_that_does_not_apply_or_unbalances_the_books_changes_nothing() {
        let assets = Assets::new(&[], |_| rust_decimal::Decimal::from(1_000_000));
        let mut ledger = Ledger::new("eu/x", assets, Limits { max_batch_ops: 10, max_hold_timeout_s: 60 }, Permissions::open());
        ledger.replay(&entry(1, vec![opened("issuer", Floor::Issuance), opened("alice", Floor::Overdraft(0))])).unwrap();
        ledger.replay(&entry(2, vec![moved("issuer", "alice", 100)])).unwrap();

        // Alice spends more than she has: every change applies, but the books break a floor.
        let err = ledger.replay(&entry(3, vec![moved("alice", "issuer", 500)])).unwrap_err();
        assert!(err.contains("journal entry 3") && err.contains("below their floor"), "{err}");
        assert_eq!(ledger.account("alice").unwrap().posted, 100, "the refused entry left no trace");
        assert_eq!(ledger.head().seq, 2);

        // The first change applies, the second does not: the first is undone too.
        let resolve = Change::HoldResolved {
            pending_id: "h1".into(),
            debit: "alice".into(),
            credit: "issuer".into(),
            resolution: Resolution::Posted,
            posted: 1,
        };
        let err = ledger.replay(&entry(3, vec![moved("alice", "issuer", 40), resolve])).unwrap_err();
        assert!(err.contains("hold h1 does not exist"), "{err}");
        assert_eq!(ledger.account("alice").unwrap().posted, 100);
        assert_eq!(ledger.check_totals(), Ok(()));
        ledger.check_invariants().unwrap();

        ledger.replay(&entry(3, vec![moved("alice", "issuer", 40)])).unwrap();
        assert_eq!(ledger.account("alice").unwrap().posted, 60);
    }
}
