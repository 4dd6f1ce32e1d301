//! Applying journaled changes to the books, all of a change or none of it, with the
//! before-images that roll back a command that fails part-way (a batch). Live commands are
//! validated first, so only `Overflow` can happen to them; a journal being replayed may
//! hold anything, and says `Corrupt`.

use super::accounts::Account;
use super::change::Change;
use super::holds::{Hold, HoldState};
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
                let acct = Account { asset: asset.clone(), floor: *floor, closed: false, posted: 0, pending_debits: 0, pending_credits: 0 };
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
                if self.holds.contains(pending_id) {
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
                let mut hold =
                    self.holds.get(pending_id).cloned().ok_or_else(|| ApplyError::Corrupt(format!("hold {pending_id} does not exist")))?;
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

    /// Applies the changes a stored entry records; the error names the entry.
    pub(super) fn apply_recorded(&mut self, seq: u64, changes: &[Change]) -> Result<(), String> {
        let mut undo = Vec::new();
        for change in changes {
            self.apply(change, &mut undo).map_err(|e| match e {
                ApplyError::Overflow => format!("journal entry {seq}: a balance overflows"),
                ApplyError::Corrupt(why) => format!("journal entry {seq}: {why}"),
            })?;
        }
        Ok(())
    }

    /// The change resolving an existing hold.
    pub(super) fn resolution_of(&self, pending_id: &str, resolution: Resolution, posted: Minor) -> Change {
        let hold = self.holds.get(pending_id).expect("resolving a hold that exists");
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
        undo.push(Undo::Account(name.to_string(), before));
    }

    fn put_hold(&mut self, pending_id: &str, hold: Hold, undo: &mut Vec<Undo>) {
        let before = self.holds.set(pending_id, Some(hold));
        undo.push(Undo::Hold(pending_id.to_string(), before));
    }

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
