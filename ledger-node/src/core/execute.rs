//! Device ops against the books: each is checked field by field (the rejection names the
//! field and why) and then turned into changes. Cross-node transfers are in `cross_node`.

use super::accounts::Account;
use super::address::{is_system, Address};
use super::apply::Undo;
use super::change::{Change, Floor};
use super::command::{Command, Flag, Movement, Op};
use super::holds::{Hold, HoldState};
use super::idempotency::IdKey;
use super::ledger::Ledger;
use super::money::{format_minor, AssetSpec, Minor};
use super::reply::{quoted, BalanceView, Code, OpResult, Rejection, Reply, Resolution, Status};

impl Ledger {
    /// Checks one device op and applies its changes (reply `seq` still 0). On `Err` the
    /// caller rolls back `undo`.
    pub(super) fn execute(
        &mut self,
        device: Option<&str>,
        command: &Command,
        now_ms: u64,
        undo: &mut Vec<Undo>,
        changes: &mut Vec<Change>,
    ) -> Result<Reply, Rejection> {
        let id = command.id.as_str();
        match &command.op {
            Op::OpenAccount { account, asset, flags, overdraft_limit } => {
                self.open(device, id, account, asset, flags, overdraft_limit.as_deref(), undo, changes)
            }
            Op::CloseAccount { account } => {
                let name = self.local(account, "account")?;
                not_system(name, "account")?;
                self.permit(device, name, "account")?;
                let acct = self.existing(name, "account")?;
                if acct.closed {
                    return Err(Rejection::new(Code::AccountClosed, format!("account: {name} is already closed")));
                }
                if acct.posted != 0 || acct.pending_debits != 0 || acct.pending_credits != 0 {
                    return Err(Rejection::new(
                        Code::AccountNotEmpty,
                        format!("account: {name} has a balance or pending amounts; only an empty account can close"),
                    ));
                }
                self.change(Change::AccountClosed { account: name.to_string() }, undo, changes)?;
                Ok(Reply::ok(id, Status::Committed, 0, format!("account {name} closed")))
            }
            Op::Transfer(movement) if self.remote_node(&movement.credit).is_some() => self.send_across(device, id, movement, undo, changes),
            Op::Transfer(movement) => {
                let (debit, credit, amount) = self.check_movement(device, movement)?;
                let asset = movement.asset.clone();
                self.change(Change::Transferred { debit, credit, asset, amount }, undo, changes)?;
                Ok(Reply::ok(id, Status::Committed, 0, "transfer committed"))
            }
            Op::Hold { movement, timeout_s } => {
                let (debit, credit, amount) = self.check_movement(device, movement)?;
                let expires_at_ms = match timeout_s {
                    Some(t) if *t > self.limits.max_hold_timeout_s => {
                        return Err(Rejection::new(
                            Code::InvalidField,
                            format!("timeout_s: {t} is above the maximum of {}", self.limits.max_hold_timeout_s),
                        ))
                    }
                    Some(t) => Some(now_ms.saturating_add(t.saturating_mul(1000))),
                    None => None,
                };
                let change = Change::HoldPlaced {
                    pending_id: IdKey::new(device, id).into_string(),
                    debit,
                    credit,
                    asset: movement.asset.clone(),
                    amount,
                    expires_at_ms,
                    device: device.map(str::to_string),
                    remote: None,
                };
                self.change(change, undo, changes)?;
                let mut reply = Reply::ok(id, Status::Pending, 0, "hold placed; post or void it with this id as pending_id");
                reply.expires_at_ms = expires_at_ms;
                Ok(reply)
            }
            Op::Post { pending_id, amount } => {
                let (key, hold) = self.pending_hold(device, pending_id, now_ms)?;
                let spec = self.assets.get(&hold.asset).expect("hold asset is known");
                let posted = match amount {
                    None => hold.amount,
                    Some(text) => {
                        let value = self.amount(spec, text, "amount")?;
                        if value > hold.amount {
                            return Err(Rejection::new(
                                Code::AmountExceedsPending,
                                format!("amount: {text} is more than the pending {}", format_minor(hold.amount, spec.scale)),
                            ));
                        }
                        value
                    }
                };
                let released = hold.amount - posted;
                let change = self.resolution_of(key.as_str(), Resolution::Posted, posted);
                self.change(change, undo, changes)?;
                let mut reply = Reply::ok(id, Status::Committed, 0, format!("pending {pending_id} posted"));
                reply.posted = Some(format_minor(posted, spec.scale));
                reply.released = Some(format_minor(released, spec.scale));
                Ok(reply)
            }
            Op::Void { pending_id } => {
                let (key, _) = self.pending_hold(device, pending_id, now_ms)?;
                let change = self.resolution_of(key.as_str(), Resolution::Voided, 0);
                self.change(change, undo, changes)?;
                Ok(Reply::ok(id, Status::Committed, 0, format!("pending {pending_id} voided")))
            }
            Op::Batch { ops } => self.batch(device, id, ops, now_ms, undo, changes),
            Op::Balance { .. } => Err(Rejection::new(Code::InvalidField, "op: balance is a read and cannot be batched")),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn open(
        &mut self,
        device: Option<&str>,
        id: &str,
        account: &str,
        asset: &str,
        flags: &[Flag],
        overdraft_limit: Option<&str>,
        undo: &mut Vec<Undo>,
        changes: &mut Vec<Change>,
    ) -> Result<Reply, Rejection> {
        let name = self.local(account, "account")?;
        if is_system(name) {
            return Err(Rejection::new(Code::Forbidden, format!("account: {name} is a system account; only the node opens those")));
        }
        self.permit(device, name, "account")?;
        if self.accounts.contains(name) {
            return Err(Rejection::new(Code::AccountExists, format!("account: {name} already exists")));
        }
        let spec = self.asset(asset, "asset")?;
        let issuance = flags.contains(&Flag::Issuance);
        if (issuance || overdraft_limit.is_some()) && !self.permissions.may_issue(device) {
            return Err(Rejection::new(
                Code::Forbidden,
                format!(
                    "flags: device {} may not create credit (issuance or overdraft_limit need may_issue)",
                    device.unwrap_or("(unknown)")
                ),
            ));
        }
        let floor = match (issuance, overdraft_limit) {
            (true, Some(_)) => return Err(Rejection::new(Code::InvalidField, "overdraft_limit: an issuance account has no limit to set")),
            (true, None) if flags.contains(&Flag::NoOverdraft) => {
                return Err(Rejection::new(Code::InvalidField, "flags: issuance and no_overdraft contradict each other"))
            }
            (true, None) => Floor::Issuance,
            (false, Some(_)) if flags.contains(&Flag::NoOverdraft) => {
                return Err(Rejection::new(Code::InvalidField, "overdraft_limit: contradicts the no_overdraft flag"))
            }
            (false, Some(limit)) => Floor::Overdraft(self.amount(spec, limit, "overdraft_limit")?),
            (false, None) => Floor::Overdraft(0),
        };
        let change = Change::AccountOpened { account: name.to_string(), asset: asset.to_string(), scale: spec.scale, floor };
        self.change(change, undo, changes)?;
        Ok(Reply::ok(id, Status::Committed, 0, format!("account {name} opened")))
    }

    /// Every op of a batch, all or none: the caller rolls back on the first rejection.
    fn batch(
        &mut self,
        device: Option<&str>,
        id: &str,
        ops: &[Command],
        now_ms: u64,
        undo: &mut Vec<Undo>,
        changes: &mut Vec<Change>,
    ) -> Result<Reply, Rejection> {
        if ops.len() > self.limits.max_batch_ops {
            return Err(Rejection::new(Code::InvalidField, format!("ops: more than {} commands", self.limits.max_batch_ops)));
        }
        let mut results = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            if self.ids.contains(IdKey::new(device, &op.id).as_str()) {
                return Err(Rejection::new(Code::IdConflict, format!("ops[{i}].id: {:?} was already used", op.id)));
            }
            if let Op::Transfer(m) = &op.op {
                if self.remote_node(&m.credit).is_some() {
                    return Err(Rejection::new(
                        Code::RemoteAccount,
                        format!("ops[{i}].credit: {} is on another node; cross-node transfers cannot be batched", m.credit),
                    ));
                }
            }
            let inner = self
                .execute(device, op, now_ms, undo, changes)
                .map_err(|r| Rejection::new(r.code, format!("ops[{i}] (id {:?}): {}", op.id, r.message)))?;
            results.push(OpResult { id: op.id.clone(), status: inner.status, code: inner.code });
        }
        let mut reply = Reply::ok(id, Status::Committed, 0, format!("batch of {} committed", ops.len()));
        reply.results = results;
        Ok(reply)
    }

    /// Validates a transfer or hold and returns (debit, credit, amount in minor units).
    fn check_movement(&self, device: Option<&str>, m: &Movement) -> Result<(String, String, Minor), Rejection> {
        let debit = self.local(&m.debit, "debit")?;
        let credit = self.local(&m.credit, "credit")?;
        if debit == credit {
            return Err(Rejection::new(Code::SameAccount, format!("credit: {credit} is also the debit account")));
        }
        not_system(credit, "credit")?;
        let (debit, amount) = self.check_debit(device, m, Some(credit))?;
        Ok((debit, credit.to_string(), amount))
    }

    /// Validates the debit side of a movement (and the local credit account, if any) and
    /// returns (debit, amount in minor units).
    pub(super) fn check_debit(&self, device: Option<&str>, m: &Movement, credit: Option<&str>) -> Result<(String, Minor), Rejection> {
        let debit = self.local(&m.debit, "debit")?;
        not_system(debit, "debit")?;
        self.permit(device, debit, "debit")?;
        let spec = self.asset(&m.asset, "asset")?;
        let amount = self.amount(spec, &m.amount, "amount")?;
        let from = self.usable(debit, "debit", &m.asset)?;
        if let Some(credit) = credit {
            self.usable(credit, "credit", &m.asset)?;
        }
        if let Floor::Overdraft(limit) = from.floor {
            let after = from.available().checked_sub(amount);
            if after.is_none_or(|a| a < -limit) {
                return Err(Rejection::new(
                    Code::InsufficientFunds,
                    format!(
                        "debit: {debit} has {} {} available, the command needs {}",
                        format_minor(from.available().saturating_add(limit), spec.scale),
                        m.asset,
                        format_minor(amount, spec.scale)
                    ),
                ));
            }
        }
        Ok((debit.to_string(), amount))
    }

    /// The asset `code` names, or `unknown_asset` naming `field`.
    pub(super) fn asset(&self, code: &str, field: &str) -> Result<AssetSpec, Rejection> {
        self.assets.get(code).ok_or_else(|| Rejection::new(Code::UnknownAsset, format!("{field}: {code} is not a known asset")))
    }

    /// A command amount in minor units of `spec`, or `invalid_amount` naming `field`.
    pub(super) fn amount(&self, spec: AssetSpec, text: &str, field: &str) -> Result<Minor, Rejection> {
        self.assets.parse_amount(spec, text).map_err(|e| Rejection::new(Code::InvalidAmount, format!("{field}: {} {e}", quoted(text))))
    }

    /// The node of an address when it is not this one.
    pub(super) fn remote_node<'a>(&self, address: &'a str) -> Option<&'a str> {
        Address::split(address).remote_node(&self.node_id)
    }

    /// The pending hold a device names: one it placed itself (its own id), or another
    /// device's as `device:id` (the key operators see). Either way only a device that may
    /// debit the hold's account resolves it.
    fn pending_hold(&mut self, device: Option<&str>, pending_id: &str, now_ms: u64) -> Result<(IdKey, Hold), Rejection> {
        let own = IdKey::new(device, pending_id);
        let other = IdKey::parse(pending_id).filter(|k| !k.principal().is_empty());
        // A resolved hold may have left RAM: `get` reads it back.
        let (key, hold) = [Some(own), other]
            .into_iter()
            .flatten()
            .find_map(|k| self.holds.get(k.as_str()).map(|h| h.into_owned()).map(|h| (k, h)))
            .ok_or_else(|| {
                Rejection::new(
                    Code::UnknownPending,
                    format!("pending_id: no hold {pending_id:?} of this device on this node (another device's hold is named device:id)"),
                )
            })?;
        self.permit(device, &hold.debit, "pending_id")?;
        if let Some(remote) = &hold.remote {
            return Err(Rejection::new(
                Code::Forbidden,
                format!("pending_id: {pending_id} is a transfer to {remote}; its destination's decision posts or voids it"),
            ));
        }
        match hold.state {
            HoldState::Resolved(Resolution::Posted) => {
                Err(Rejection::new(Code::PendingPosted, format!("pending_id: {pending_id} was already posted")))
            }
            HoldState::Resolved(Resolution::Voided) => {
                Err(Rejection::new(Code::PendingVoided, format!("pending_id: {pending_id} was already voided")))
            }
            HoldState::Resolved(Resolution::Expired) => {
                Err(Rejection::new(Code::PendingExpired, format!("pending_id: {pending_id} has expired")))
            }
            HoldState::Pending if hold.expires_at_ms.is_some_and(|t| t <= now_ms) => {
                Err(Rejection::new(Code::PendingExpired, format!("pending_id: {pending_id} has expired")))
            }
            HoldState::Pending => Ok((key, hold)),
        }
    }

    /// A device's read of one of its accounts.
    pub(super) fn balance(&self, device: Option<&str>, address: &str) -> Result<BalanceView, Rejection> {
        let name = self.local(address, "account")?;
        self.permit(device, name, "account")?;
        self.existing(name, "account")?;
        Ok(self.balance_view(name).expect("the account exists"))
    }

    /// The local account name of an address, or `remote_account` when it lives elsewhere.
    pub(super) fn local<'a>(&self, address: &'a str, field: &str) -> Result<&'a str, Rejection> {
        let parts = Address::split(address);
        match parts.remote_node(&self.node_id) {
            None => Ok(parts.name),
            Some(node) => Err(Rejection::new(
                Code::RemoteAccount,
                format!("{field}: {address} lives on node {node}, not {}; only a transfer's credit may be on another node", self.node_id),
            )),
        }
    }

    fn permit(&self, device: Option<&str>, account: &str, field: &str) -> Result<(), Rejection> {
        if self.permissions.allows(device, account) {
            Ok(())
        } else {
            Err(Rejection::new(Code::Forbidden, format!("{field}: device {} may not use account {account}", device.unwrap_or("(unknown)"))))
        }
    }

    fn existing(&self, name: &str, field: &str) -> Result<&Account, Rejection> {
        self.accounts
            .get(name)
            .ok_or_else(|| Rejection::new(Code::UnknownAccount, format!("{field}: account {name} does not exist on this node")))
    }

    /// An account that exists, is open and holds `asset`.
    pub(super) fn usable(&self, name: &str, field: &str, asset: &str) -> Result<&Account, Rejection> {
        let acct = self.existing(name, field)?;
        if acct.closed {
            return Err(Rejection::new(Code::AccountClosed, format!("{field}: account {name} is closed")));
        }
        if &*acct.asset != asset {
            return Err(Rejection::new(
                Code::AssetMismatch,
                format!("{field}: account {name} holds {}, the command says {asset}", acct.asset),
            ));
        }
        Ok(acct)
    }
}

/// System accounts (`~…`) move only by the node's own entries.
pub(super) fn not_system(name: &str, field: &str) -> Result<(), Rejection> {
    if is_system(name) {
        return Err(Rejection::new(Code::Forbidden, format!("{field}: {name} is a system account; only the node moves it")));
    }
    Ok(())
}
