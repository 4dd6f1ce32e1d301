//! The ledger state machine of one node: accounts, holds, idempotency and the journal head.
//! It takes commands with the time and returns effects (a reply, a journal entry, id
//! records, notices). It never touches disk, network or clock: the shell persists the
//! effects and only then releases the reply.

use crate::command::{Command, Flag, Movement, Op};
use crate::journal::EntryBody;
use crate::money::{format_minor, Assets, Minor};
use crate::reply::{BalanceView, Code, Notice, OpResult, Rejection, Reply, Resolution, Status};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};

/// How far below zero an account may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Floor {
    /// Money enters here: no lower bound.
    Issuance,
    /// Balance minus pending debits may not go below minus this many minor units.
    Overdraft(Minor),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub asset: String,
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
}

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

/// One journaled change. Replaying the changes of every entry in order rebuilds the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// The scale is recorded so that a node never reads minor units at another scale.
    AccountOpened { account: String, asset: String, scale: u32, floor: Floor },
    AccountClosed { account: String },
    Transferred { debit: String, credit: String, asset: String, amount: Minor },
    HoldPlaced {
        pending_id: String,
        debit: String,
        credit: String,
        asset: String,
        amount: Minor,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        remote: Option<String>,
    },
    /// The whole hold leaves pending; `posted` of it moves from debit to credit.
    /// The accounts are the hold's own, named so that each entry reads on its own.
    HoldResolved { pending_id: String, debit: String, credit: String, resolution: Resolution, posted: Minor },
}

/// A cross-node transfer this node received, and its recorded decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub source: String,
    pub id: String,
    /// As delivered: `debit` at the source, `credit` here, the amount as a decimal string.
    pub movement: Movement,
    pub recorded: Recorded,
}

/// The recorded result of an id: what a resend with the same content gets back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    pub fingerprint: String,
    pub reply: Reply,
}

/// Everything the shell must do for one command: persist `entry` and `recorded` in one
/// durable commit, then publish `reply` and `notices`. `recorded` holds the id records that
/// are not in the journal (rejections); an accepted command's record is its entry.
#[derive(Debug, Clone, Default)]
pub struct Effects {
    pub reply: Option<Reply>,
    /// Sealed (serialized, hashed, chained) by the committer, off the intake's hot path.
    pub entry: Option<EntryBody>,
    pub recorded: Vec<(String, Recorded)>,
    pub notices: Vec<Notice>,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_batch_ops: usize,
    pub max_hold_timeout_s: u64,
}

/// What one device may do.
#[derive(Debug, Clone, Default)]
pub struct DeviceRights {
    /// Account-name patterns it may debit, open, close and read.
    pub may_debit: Vec<String>,
    /// May open issuance accounts and grant overdraft limits.
    pub may_issue: bool,
}

/// The principal of commands an operator sends over zenoh (`ledgerctl account open`):
/// every right a device can have. No device can take this name (device ids have no `~`).
pub const OPERATOR: &str = "~operator";

/// The rights of each device. `None`: the open default, any device may do anything.
#[derive(Debug, Clone, Default)]
pub struct Permissions {
    devices: Option<HashMap<String, DeviceRights>>,
}

impl Permissions {
    pub fn open() -> Permissions {
        Permissions { devices: None }
    }

    pub fn restricted(devices: HashMap<String, DeviceRights>) -> Permissions {
        Permissions { devices: Some(devices) }
    }

    pub fn allows(&self, device: Option<&str>, account: &str) -> bool {
        let Some(devices) = &self.devices else { return true };
        if device == Some(OPERATOR) {
            return true;
        }
        let Some(rights) = device.and_then(|d| devices.get(d)) else { return false };
        rights.may_debit.iter().any(|p| glob_match(p, account))
    }

    pub fn may_issue(&self, device: Option<&str>) -> bool {
        let Some(devices) = &self.devices else { return true };
        if device == Some(OPERATOR) {
            return true;
        }
        device.and_then(|d| devices.get(d)).is_some_and(|r| r.may_issue)
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// The journal position the state reflects. The chain's hashes live with the committer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub ts_ms: u64,
}

/// Why a change could not be applied.
#[derive(Debug)]
enum ApplyError {
    /// A balance would leave the i64 range: the command is rejected `overflow`.
    Overflow,
    /// The change contradicts the state (only a damaged or foreign journal can say this).
    Corrupt(String),
}

fn checked(value: Option<Minor>) -> Result<Minor, ()> {
    value.ok_or(())
}

/// Before-images for rolling back a batch that fails part-way.
enum Undo {
    Account(String, Option<Account>),
    Hold(String, Option<Hold>),
}

pub struct Ledger {
    node_id: String,
    assets: Assets,
    limits: Limits,
    permissions: Permissions,
    accounts: HashMap<String, Account>,
    holds: HashMap<String, Hold>,
    /// Pending holds with a timeout, by expiry time.
    expiries: BTreeSet<(u64, String)>,
    ids: IdIndex,
    /// Decisions on cross-node transfers received, by `source|id`.
    received: HashMap<String, Box<Received>>,
    /// Pending cross-node holds (ids): the transfers still waiting for their destination.
    outgoing: BTreeSet<String>,
    /// Whether this node has a zenoh link to send transfers across nodes.
    cross_node: bool,
    head: Head,
}

/// Most holds expired in one group, so that a node back from a long stop does not put
/// every expiry into one transaction.
pub const MAX_EXPIRIES_PER_CALL: usize = 1_000;

/// Shards of the id index. One map of a million records stalls the node for most of a
/// second each time it doubles; a thousand maps each grow a thousandth at a time.
const ID_SHARDS: usize = 1024;

/// Every id's recorded result, boxed so that growing a shard moves pointers, not replies.
/// Ids are chosen by devices, so each shard's table keeps std's keyed (SipHash) hashing:
/// crafted ids cannot pile into one bucket chain.
struct IdIndex {
    shards: Vec<HashMap<String, Box<Recorded>>>,
}

impl IdIndex {
    fn new() -> IdIndex {
        IdIndex { shards: (0..ID_SHARDS).map(|_| HashMap::default()).collect() }
    }

    /// The shard from the high bits; the shard's table uses the low ones.
    fn shard(id: &str) -> usize {
        (fnv1a(id.as_bytes()) >> 54) as usize % ID_SHARDS
    }

    fn get(&self, id: &str) -> Option<&Recorded> {
        self.shards[Self::shard(id)].get(id).map(|b| &**b)
    }

    fn contains_key(&self, id: &str) -> bool {
        self.shards[Self::shard(id)].contains_key(id)
    }

    fn insert(&mut self, id: String, recorded: Recorded) {
        let shard = Self::shard(&id);
        self.shards[shard].insert(id, Box::new(recorded));
    }
}

impl Ledger {
    pub fn new(node_id: &str, assets: Assets, limits: Limits, permissions: Permissions) -> Ledger {
        Ledger {
            node_id: node_id.to_string(),
            assets,
            limits,
            permissions,
            accounts: HashMap::new(),
            holds: HashMap::new(),
            expiries: BTreeSet::new(),
            ids: IdIndex::new(),
            received: HashMap::new(),
            outgoing: BTreeSet::new(),
            cross_node: false,
            head: Head { seq: 0, ts_ms: 0 },
        }
    }

    /// Lets this node send transfers to accounts of other nodes (it has a zenoh link).
    pub fn enable_cross_node(&mut self) {
        self.cross_node = true;
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn hold(&self, pending_id: &str) -> Option<&Hold> {
        self.holds.get(pending_id)
    }

    /// Pending holds, by id; with `account`, those that debit or credit it. At most `limit`.
    pub fn pending_holds(&self, account: Option<&str>, limit: usize) -> Vec<(&String, &Hold)> {
        self.holds
            .iter()
            .filter(|(_, h)| h.state == HoldState::Pending)
            .filter(|(_, h)| account.is_none_or(|a| h.debit == a || h.credit == a))
            .take(limit)
            .collect()
    }

    /// Cross-node transfers sent from this node whose destination has not decided yet.
    pub fn outgoing(&self) -> impl Iterator<Item = (&String, &Hold)> {
        self.outgoing.iter().map(|id| (id, &self.holds[id]))
    }

    /// Every cross-node transfer sent from this node, resolved or not.
    pub fn cross_node_holds(&self) -> impl Iterator<Item = (&String, &Hold)> {
        self.holds.iter().filter(|(_, h)| h.remote.is_some())
    }

    pub fn outgoing_count(&self) -> usize {
        self.outgoing.len()
    }

    /// The recorded decision on a cross-node transfer received from `source`.
    pub fn received(&self, source: &str, id: &str) -> Option<&Recorded> {
        self.received.get(&received_key(source, id)).map(|b| &b.recorded)
    }

    /// Every cross-node transfer received here, decided either way.
    pub fn received_all(&self) -> impl Iterator<Item = &Received> {
        self.received.values().map(|b| &**b)
    }

    /// Takes the assets an entry's opened accounts record (for an audit without config).
    pub fn learn_assets(&mut self, body: &EntryBody) {
        for change in &body.changes {
            if let Change::AccountOpened { asset, scale, .. } = change {
                self.assets.learn(asset, *scale);
            }
        }
    }

    /// The display scale of an asset, if this node knows it.
    pub fn scale_of(&self, asset: &str) -> Option<u32> {
        self.assets.get(asset).map(|s| s.scale)
    }

    pub fn head(&self) -> Head {
        self.head
    }

    pub fn account(&self, name: &str) -> Option<&Account> {
        self.accounts.get(name)
    }

    pub fn accounts(&self) -> impl Iterator<Item = (&String, &Account)> {
        self.accounts.iter()
    }

    pub fn recorded(&self, id: &str) -> Option<&Recorded> {
        self.ids.get(id)
    }

    /// Restores an id record read back from storage at start-up.
    pub fn restore_recorded(&mut self, id: String, recorded: Recorded) {
        self.ids.insert(id, recorded);
    }

    /// The earliest expiry time of a pending hold, if any.
    pub fn next_expiry(&self) -> Option<u64> {
        self.expiries.first().map(|(t, _)| *t)
    }

    /// Applies one device command at time `now_ms`.
    pub fn submit(&mut self, device: Option<&str>, command: Command, now_ms: u64) -> Effects {
        if let Op::Balance { account } = &command.op {
            let reply = match self.balance(device, account) {
                Ok(view) => {
                    let mut reply = Reply::ok(&command.id, Status::Committed, self.head.seq, "balance read");
                    reply.balance = Some(view);
                    reply
                }
                Err(rejection) => Reply::rejected(Some(&command.id), rejection),
            };
            return Effects { reply: Some(reply), ..Effects::default() };
        }
        debug_assert!(!matches!(command.op, Op::Expire { .. }), "devices cannot send expire");

        let fingerprint = fingerprint(device, &command);
        if let Some(recorded) = self.ids.get(&command.id) {
            let reply = match resend(recorded, &fingerprint) {
                Ok(mut reply) => {
                    // A device that missed the notice learns the outcome from its resend.
                    if let Some(HoldState::Resolved(r)) = self.holds.get(&command.id).map(|h| h.state) {
                        reply.resolution = (reply.status == Status::Pending).then_some(r);
                    }
                    reply
                }
                Err(()) => Reply::rejected(
                    Some(&command.id),
                    Rejection::new(Code::IdConflict, format!("id: {:?} was already used for a different command", command.id)),
                ),
            };
            return Effects { reply: Some(reply), ..Effects::default() };
        }

        let now_ms = now_ms.max(self.head.ts_ms);
        let mut undo = Vec::new();
        let mut changes = Vec::new();
        let outcome = self.execute(device, &command, now_ms, &mut undo, &mut changes);
        let mut effects = Effects::default();
        match outcome {
            Ok(mut reply) => {
                let seq = self.head.seq + 1;
                reply.seq = Some(seq);
                effects.notices = self.notices_for(device, &changes, seq, None);
                // The entry carries the reply: for an accepted command the journal is the id
                // record, so a commit appends sequentially instead of scattering id writes.
                let body = EntryBody {
                    seq,
                    ts_ms: now_ms,
                    device: device.map(str::to_string),
                    command,
                    changes,
                    reply: Some(reply.clone()),
                };
                self.remember_accepted(&body, fingerprint);
                self.head = Head { seq, ts_ms: now_ms };
                effects.entry = Some(body);
                effects.reply = Some(reply);
            }
            Err(rejection) => {
                self.rollback(undo);
                let reply = Reply::rejected(Some(&command.id), rejection);
                let recorded = Recorded { fingerprint, reply: reply.clone() };
                self.ids.insert(command.id.clone(), recorded.clone());
                effects.recorded.push((command.id, recorded));
                effects.reply = Some(reply);
            }
        }
        self.debug_check_totals();
        effects
    }

    /// Expires pending holds whose timeout has passed by `now_ms`, one entry each, at most
    /// `MAX_EXPIRIES_PER_CALL` of them (after a long stop, the rest follow in later groups).
    pub fn expire_due(&mut self, now_ms: u64) -> Vec<Effects> {
        // The journal's clock never runs backwards, and expiry uses the same clock as `post`.
        let now_ms = now_ms.max(self.head.ts_ms);
        let mut out = Vec::new();
        while let Some((at, pending_id)) = self.expiries.first().cloned() {
            if at > now_ms || out.len() >= MAX_EXPIRIES_PER_CALL {
                break;
            }
            let change = self.resolution_of(&pending_id, Resolution::Expired, 0);
            let mut undo = Vec::new();
            if let Err(e) = self.apply(&change, &mut undo) {
                panic!("expiring hold {pending_id} failed: {e:?}");
            }
            let seq = self.head.seq + 1;
            let changes = vec![change];
            let notices = self.notices_for(None, &changes, seq, None);
            let command = Command { id: format!("expire:{pending_id}"), op: Op::Expire { pending_id } };
            let ts_ms = now_ms.max(self.head.ts_ms);
            self.head = Head { seq, ts_ms };
            let body = EntryBody { seq, ts_ms, device: None, command, changes, reply: None };
            out.push(Effects { reply: None, entry: Some(body), recorded: Vec::new(), notices });
        }
        self.debug_check_totals();
        out
    }

    /// Rebuilds state from the next stored entry (its chain link already verified).
    pub fn replay(&mut self, body: &EntryBody) -> Result<(), String> {
        if body.seq != self.head.seq + 1 {
            return Err(format!("journal gap: expected entry {}, found {}", self.head.seq + 1, body.seq));
        }
        let mut undo = Vec::new();
        for change in &body.changes {
            self.apply(change, &mut undo).map_err(|e| match e {
                ApplyError::Overflow => format!("journal entry {}: a balance overflows", body.seq),
                ApplyError::Corrupt(why) => format!("journal entry {}: {why}", body.seq),
            })?;
        }
        self.head = Head { seq: body.seq, ts_ms: body.ts_ms };
        if body.reply.is_some() {
            let fingerprint = fingerprint(body.device.as_deref(), &body.command);
            self.remember_accepted(body, fingerprint);
        }
        Ok(())
    }

    /// Records the ids of an accepted command (and of the ops of a batch) from its entry.
    fn remember_accepted(&mut self, body: &EntryBody, fingerprint: String) {
        let Some(reply) = &body.reply else { return };
        let command = &body.command;
        if let Op::Receive { source, movement } = &command.op {
            let recorded = Recorded { fingerprint, reply: reply.clone() };
            let received = Received { source: source.clone(), id: command.id.clone(), movement: movement.clone(), recorded };
            self.received.insert(received_key(source, &command.id), Box::new(received));
            return;
        }
        if let Op::Batch { ops } = &command.op {
            for op in ops {
                let status = if matches!(op.op, Op::Hold { .. }) { Status::Pending } else { Status::Committed };
                let inner = Reply::ok(&op.id, status, body.seq, format!("{} committed in batch {}", op.op.name(), command.id));
                let inner_fingerprint = fingerprint_in_batch(body.device.as_deref(), &command.id, op);
                self.ids.insert(op.id.clone(), Recorded { fingerprint: inner_fingerprint, reply: inner });
            }
        }
        self.ids.insert(command.id.clone(), Recorded { fingerprint, reply: reply.clone() });
    }

    fn execute(
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
                let name = self.local(account, "account")?;
                if name.starts_with('~') {
                    return Err(Rejection::new(Code::Forbidden, format!("account: {name} is a system account; only the node opens those")));
                }
                self.permit(device, &name, "account")?;
                if self.accounts.contains_key(&name) {
                    return Err(Rejection::new(Code::AccountExists, format!("account: {name} already exists")));
                }
                let spec = self
                    .assets
                    .get(asset)
                    .ok_or_else(|| Rejection::new(Code::UnknownAsset, format!("asset: {asset} is not a known asset")))?;
                let issuance = flags.contains(&Flag::Issuance);
                if (issuance || overdraft_limit.is_some()) && !self.permissions.may_issue(device) {
                    return Err(Rejection::new(
                        Code::Forbidden,
                        format!("flags: device {} may not create credit (issuance or overdraft_limit need may_issue)", device.unwrap_or("(unknown)")),
                    ));
                }
                let floor = match (issuance, overdraft_limit) {
                    (true, Some(_)) => {
                        return Err(Rejection::new(Code::InvalidField, "overdraft_limit: an issuance account has no limit to set"))
                    }
                    (true, None) if flags.contains(&Flag::NoOverdraft) => {
                        return Err(Rejection::new(Code::InvalidField, "flags: issuance and no_overdraft contradict each other"))
                    }
                    (true, None) => Floor::Issuance,
                    (false, Some(_)) if flags.contains(&Flag::NoOverdraft) => {
                        return Err(Rejection::new(Code::InvalidField, "overdraft_limit: contradicts the no_overdraft flag"))
                    }
                    (false, Some(limit)) => Floor::Overdraft(
                        self.assets
                            .parse_amount(spec, limit)
                            .map_err(|e| Rejection::new(Code::InvalidAmount, format!("overdraft_limit: {limit:?} {e}")))?,
                    ),
                    (false, None) => Floor::Overdraft(0),
                };
                self.change(Change::AccountOpened { account: name.clone(), asset: asset.clone(), scale: spec.scale, floor }, undo, changes)?;
                Ok(Reply::ok(id, Status::Committed, 0, format!("account {name} opened")))
            }
            Op::CloseAccount { account } => {
                let name = self.local(account, "account")?;
                not_system(&name, "account")?;
                self.permit(device, &name, "account")?;
                let acct = self.existing(&name, "account")?;
                if acct.closed {
                    return Err(Rejection::new(Code::AccountClosed, format!("account: {name} is already closed")));
                }
                if acct.posted != 0 || acct.pending_debits != 0 || acct.pending_credits != 0 {
                    return Err(Rejection::new(
                        Code::AccountNotEmpty,
                        format!("account: {name} has a balance or pending amounts; only an empty account can close"),
                    ));
                }
                self.change(Change::AccountClosed { account: name.clone() }, undo, changes)?;
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
                    Some(t) => Some(now_ms + t * 1000),
                    None => None,
                };
                let change = Change::HoldPlaced {
                    pending_id: id.to_string(),
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
                let hold = self.pending_hold(device, pending_id, now_ms)?;
                let spec = self.assets.get(&hold.asset).expect("hold asset is known");
                let posted = match amount {
                    None => hold.amount,
                    Some(text) => {
                        let value = self
                            .assets
                            .parse_amount(spec, text)
                            .map_err(|e| Rejection::new(Code::InvalidAmount, format!("amount: {text:?} {e}")))?;
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
                let change = self.resolution_of(pending_id, Resolution::Posted, posted);
                self.change(change, undo, changes)?;
                let mut reply = Reply::ok(id, Status::Committed, 0, format!("pending {pending_id} posted"));
                reply.posted = Some(format_minor(posted, spec.scale));
                reply.released = Some(format_minor(released, spec.scale));
                Ok(reply)
            }
            Op::Void { pending_id } => {
                self.pending_hold(device, pending_id, now_ms)?;
                let change = self.resolution_of(pending_id, Resolution::Voided, 0);
                self.change(change, undo, changes)?;
                Ok(Reply::ok(id, Status::Committed, 0, format!("pending {pending_id} voided")))
            }
            Op::Batch { ops } => {
                if ops.len() > self.limits.max_batch_ops {
                    return Err(Rejection::new(Code::InvalidField, format!("ops: more than {} commands", self.limits.max_batch_ops)));
                }
                let mut results = Vec::with_capacity(ops.len());
                for (i, op) in ops.iter().enumerate() {
                    if self.ids.contains_key(&op.id) {
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
            Op::Balance { .. } => Err(Rejection::new(Code::InvalidField, "op: balance is a read and cannot be batched")),
            Op::Expire { .. } | Op::Receive { .. } | Op::Settle { .. } => {
                Err(Rejection::new(Code::UnknownOp, format!("op: {} is written by the node only", command.op.name())))
            }
        }
    }

    /// Validates a transfer or hold and returns (debit, credit, amount in minor units).
    fn check_movement(&self, device: Option<&str>, m: &Movement) -> Result<(String, String, Minor), Rejection> {
        let debit = self.local(&m.debit, "debit")?;
        let credit = self.local(&m.credit, "credit")?;
        if debit == credit {
            return Err(Rejection::new(Code::SameAccount, format!("credit: {credit} is also the debit account")));
        }
        not_system(&credit, "credit")?;
        let (debit, amount) = self.check_debit(device, m, Some(&credit))?;
        Ok((debit, credit, amount))
    }

    /// Validates the debit side of a movement (and the local credit account, if any) and
    /// returns (debit, amount in minor units).
    fn check_debit(&self, device: Option<&str>, m: &Movement, credit: Option<&str>) -> Result<(String, Minor), Rejection> {
        let debit = self.local(&m.debit, "debit")?;
        not_system(&debit, "debit")?;
        self.permit(device, &debit, "debit")?;
        let spec = self
            .assets
            .get(&m.asset)
            .ok_or_else(|| Rejection::new(Code::UnknownAsset, format!("asset: {} is not a known asset", m.asset)))?;
        let amount = self
            .assets
            .parse_amount(spec, &m.amount)
            .map_err(|e| Rejection::new(Code::InvalidAmount, format!("amount: {:?} {e}", m.amount)))?;
        let from = self.open_account(&debit, "debit", &m.asset)?;
        if let Some(credit) = credit {
            self.open_account(credit, "credit", &m.asset)?;
        }
        if let Floor::Overdraft(limit) = from.floor {
            let after = from.available().checked_sub(amount);
            if after.map_or(true, |a| a < -limit) {
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
        Ok((debit, amount))
    }

    /// The node of an address when it is not this one.
    fn remote_node<'a>(&self, address: &'a str) -> Option<&'a str> {
        address.split_once('@').map(|(_, node)| node).filter(|node| *node != self.node_id)
    }

    /// A transfer whose credit account lives on another node: a hold from the debit account
    /// to the clearing account of that node, posted or voided by the destination's decision.
    fn send_across(&mut self, device: Option<&str>, id: &str, m: &Movement, undo: &mut Vec<Undo>, changes: &mut Vec<Change>) -> Result<Reply, Rejection> {
        let (name, node) = m.credit.split_once('@').expect("a remote address has a node");
        if !self.cross_node {
            return Err(Rejection::new(
                Code::RemoteAccount,
                format!("credit: {} lives on node {node}; this node has no zenoh link ([zenoh] in its config)", m.credit),
            ));
        }
        if !node.contains('/') {
            return Err(Rejection::new(
                Code::RemoteAccount,
                format!("credit: {node} is a region node; accounts live on edge nodes (region/edge)"),
            ));
        }
        not_system(name, "credit")?;
        let (debit, amount) = self.check_debit(device, m, None)?;
        let scale = self.assets.get(&m.asset).expect("asset checked").scale;
        let clearing = clearing_account(&m.asset, node);
        self.ensure_clearing(&clearing, &m.asset, scale, undo, changes)?;
        let change = Change::HoldPlaced {
            pending_id: id.to_string(),
            debit,
            credit: clearing,
            asset: m.asset.clone(),
            amount,
            expires_at_ms: None,
            device: device.map(str::to_string),
            remote: Some(m.credit.clone()),
        };
        self.change(change, undo, changes)?;
        Ok(Reply::ok(id, Status::Pending, 0, format!("transfer to {} is in flight; its outcome follows on this reply topic", m.credit)))
    }

    /// Opens a clearing account the first time a peer node is dealt with in an asset.
    fn ensure_clearing(&mut self, clearing: &str, asset: &str, scale: u32, undo: &mut Vec<Undo>, changes: &mut Vec<Change>) -> Result<(), Rejection> {
        if self.accounts.contains_key(clearing) {
            return Ok(());
        }
        let change = Change::AccountOpened { account: clearing.to_string(), asset: asset.to_string(), scale, floor: Floor::Issuance };
        self.change(change, undo, changes)
    }

    /// Applies a cross-node transfer arriving from `source` (delivered by a region): credits
    /// the account from this node's clearing account of `source`, or records why not. Both
    /// outcomes are journaled: the decision is durable, replicated, and answered again to
    /// every redelivery of the same transfer.
    pub fn receive(&mut self, command: Command, now_ms: u64) -> Effects {
        let Op::Receive { source, .. } = &command.op else {
            let rejection = Rejection::new(Code::UnknownOp, format!("op: {} is not a delivery", command.op.name()));
            return Effects { reply: Some(Reply::rejected(Some(&command.id), rejection)), ..Effects::default() };
        };
        let fingerprint = fingerprint(None, &command);
        if let Some(received) = self.received.get(&received_key(source, &command.id)) {
            let reply = resend(&received.recorded, &fingerprint).unwrap_or_else(|()| {
                Reply::rejected(
                    Some(&command.id),
                    Rejection::new(Code::IdConflict, format!("id: transfer {:?} from {source} was received with other content", command.id)),
                )
            });
            return Effects { reply: Some(reply), ..Effects::default() };
        }
        let now_ms = now_ms.max(self.head.ts_ms);
        let mut undo = Vec::new();
        let mut changes = Vec::new();
        let mut reply = match self.credit_incoming(&command, &mut undo, &mut changes) {
            Ok(message) => Reply::ok(&command.id, Status::Committed, 0, message),
            Err(rejection) => {
                self.rollback(undo);
                changes.clear();
                let message = format!("{} rejected the transfer: {}", self.node_id, rejection.message);
                Reply::rejected(Some(&command.id), Rejection::new(rejection.code, message))
            }
        };
        let seq = self.head.seq + 1;
        reply.seq = Some(seq);
        let body = EntryBody { seq, ts_ms: now_ms, device: None, command, changes, reply: Some(reply.clone()) };
        self.remember_accepted(&body, fingerprint);
        self.head = Head { seq, ts_ms: now_ms };
        self.debug_check_totals();
        Effects { reply: Some(reply), entry: Some(body), ..Effects::default() }
    }

    fn credit_incoming(&mut self, command: &Command, undo: &mut Vec<Undo>, changes: &mut Vec<Change>) -> Result<String, Rejection> {
        let Op::Receive { source, movement: m } = &command.op else { unreachable!("checked by receive") };
        let credit = self.local(&m.credit, "credit")?;
        not_system(&credit, "credit")?;
        let spec = self
            .assets
            .get(&m.asset)
            .ok_or_else(|| Rejection::new(Code::UnknownAsset, format!("asset: {} is not a known asset on {}", m.asset, self.node_id)))?;
        let amount = self
            .assets
            .parse_amount(spec, &m.amount)
            .map_err(|e| Rejection::new(Code::InvalidAmount, format!("amount: {:?} {e}", m.amount)))?;
        let scale = spec.scale;
        self.open_account(&credit, "credit", &m.asset)?;
        let clearing = clearing_account(&m.asset, source);
        self.ensure_clearing(&clearing, &m.asset, scale, undo, changes)?;
        self.change(Change::Transferred { debit: clearing, credit: credit.clone(), asset: m.asset.clone(), amount }, undo, changes)?;
        Ok(format!("{} {} from {} credited to {credit}", m.amount, m.asset, m.debit))
    }

    /// Applies the destination's decision to a cross-node hold placed here: posts it when
    /// the destination credited, voids it when it recorded a rejection, and tells the
    /// device. Settling twice the same way is answered as a duplicate and changes nothing.
    pub fn settle(&mut self, pending_id: &str, decision: &Reply, now_ms: u64) -> Effects {
        let refuse = |code, message: String| Effects { reply: Some(Reply::rejected(Some(pending_id), Rejection::new(code, message))), ..Effects::default() };
        let Some(hold) = self.holds.get(pending_id) else {
            return refuse(Code::UnknownPending, format!("pending_id: no hold {pending_id:?} on {}", self.node_id));
        };
        if hold.remote.is_none() {
            return refuse(Code::UnknownPending, format!("pending_id: {pending_id} is not a cross-node transfer"));
        }
        let resolution = match decision.status {
            Status::Committed => Resolution::Posted,
            Status::Rejected => Resolution::Voided,
            Status::Pending => return refuse(Code::InvalidField, "decision.status: pending is not a decision".to_string()),
        };
        match hold.state {
            HoldState::Resolved(done) if done == resolution => {
                let mut reply = Reply::ok(pending_id, Status::Committed, self.head.seq, format!("{pending_id} was already settled"));
                reply.duplicate = true;
                return Effects { reply: Some(reply), ..Effects::default() };
            }
            HoldState::Resolved(done) => {
                let code = if done == Resolution::Posted { Code::PendingPosted } else { Code::PendingVoided };
                return refuse(code, format!("pending_id: {pending_id} is already {done:?}; the decision says {resolution:?}"));
            }
            HoldState::Pending => {}
        }
        let posted = if resolution == Resolution::Posted { hold.amount } else { 0 };
        let change = self.resolution_of(pending_id, resolution, posted);
        let mut undo = Vec::new();
        match self.apply(&change, &mut undo) {
            Ok(()) => {}
            Err(ApplyError::Overflow) => return refuse(Code::Overflow, "amount: the clearing balance is out of range".to_string()),
            Err(ApplyError::Corrupt(why)) => panic!("settling a pending hold failed: {why}"),
        }
        let now_ms = now_ms.max(self.head.ts_ms);
        let seq = self.head.seq + 1;
        let changes = vec![change];
        let notices = self.notices_for(None, &changes, seq, Some((decision.code, decision.message.clone())));
        let op = Op::Settle { pending_id: pending_id.to_string(), status: decision.status, code: decision.code, message: decision.message.clone() };
        let command = Command { id: format!("settle:{pending_id}"), op };
        self.head = Head { seq, ts_ms: now_ms };
        let body = EntryBody { seq, ts_ms: now_ms, device: None, command, changes, reply: None };
        self.debug_check_totals();
        let reply = Reply::ok(pending_id, Status::Committed, seq, format!("{pending_id} {resolution:?}"));
        Effects { reply: Some(reply), entry: Some(body), recorded: Vec::new(), notices }
    }

    fn pending_hold(&self, device: Option<&str>, pending_id: &str, now_ms: u64) -> Result<Hold, Rejection> {
        let hold = self
            .holds
            .get(pending_id)
            .ok_or_else(|| Rejection::new(Code::UnknownPending, format!("pending_id: no hold {pending_id:?} on this node")))?;
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
            HoldState::Pending => Ok(hold.clone()),
        }
    }

    /// An operator's read of a local account, without device permissions.
    pub fn balance_view(&self, name: &str) -> Option<BalanceView> {
        let acct = self.accounts.get(name)?;
        let scale = self.assets.get(&acct.asset).map_or(0, |s| s.scale);
        Some(BalanceView {
            account: name.to_string(),
            asset: acct.asset.clone(),
            posted: format_minor(acct.posted, scale),
            pending_debits: format_minor(acct.pending_debits, scale),
            pending_credits: format_minor(acct.pending_credits, scale),
            available: format_minor(acct.available(), scale),
        })
    }

    fn balance(&self, device: Option<&str>, address: &str) -> Result<BalanceView, Rejection> {
        let name = self.local(address, "account")?;
        self.permit(device, &name, "account")?;
        self.existing(&name, "account")?;
        Ok(self.balance_view(&name).expect("the account exists"))
    }

    /// The local account name of an address, or `remote_account` when it lives elsewhere.
    fn local(&self, address: &str, field: &str) -> Result<String, Rejection> {
        match address.split_once('@') {
            None => Ok(address.to_string()),
            Some((name, node)) if node == self.node_id => Ok(name.to_string()),
            Some((_, node)) => Err(Rejection::new(
                Code::RemoteAccount,
                format!("{field}: {address} lives on node {node}, not {}; only a transfer's credit may be on another node", self.node_id),
            )),
        }
    }

    fn permit(&self, device: Option<&str>, account: &str, field: &str) -> Result<(), Rejection> {
        if self.permissions.allows(device, account) {
            Ok(())
        } else {
            Err(Rejection::new(
                Code::Forbidden,
                format!("{field}: device {} may not use account {account}", device.unwrap_or("(unknown)")),
            ))
        }
    }

    fn existing(&self, name: &str, field: &str) -> Result<&Account, Rejection> {
        self.accounts
            .get(name)
            .ok_or_else(|| Rejection::new(Code::UnknownAccount, format!("{field}: account {name} does not exist on this node")))
    }

    fn open_account(&self, name: &str, field: &str, asset: &str) -> Result<&Account, Rejection> {
        let acct = self.existing(name, field)?;
        if acct.closed {
            return Err(Rejection::new(Code::AccountClosed, format!("{field}: account {name} is closed")));
        }
        if acct.asset != asset {
            return Err(Rejection::new(
                Code::AssetMismatch,
                format!("{field}: account {name} holds {}, the command says {asset}", acct.asset),
            ));
        }
        Ok(acct)
    }

    fn change(&mut self, change: Change, undo: &mut Vec<Undo>, changes: &mut Vec<Change>) -> Result<(), Rejection> {
        match self.apply(&change, undo) {
            Ok(()) => {
                changes.push(change);
                Ok(())
            }
            Err(ApplyError::Overflow) => Err(Rejection::new(Code::Overflow, "amount: the resulting balance is out of range")),
            Err(ApplyError::Corrupt(why)) => panic!("ledger state contradicts a validated command: {why}"),
        }
    }

    /// Applies one change, all of it or none of it. Live commands are validated first, so
    /// only `Overflow` can happen to them; a journal being replayed may hold anything.
    fn apply(&mut self, change: &Change, undo: &mut Vec<Undo>) -> Result<(), ApplyError> {
        let overflow = |_| ApplyError::Overflow;
        match change {
            Change::AccountOpened { account, asset, scale, floor } => {
                if self.accounts.contains_key(account) {
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
                from.posted = checked(from.posted.checked_sub(*amount)).map_err(overflow)?;
                to.posted = checked(to.posted.checked_add(*amount)).map_err(overflow)?;
                // Pending debits are subtracted from posted to get "available"; keep that in range too.
                checked(from.posted.checked_sub(from.pending_debits)).map_err(overflow)?;
                self.put_account(debit, from, undo);
                self.put_account(credit, to, undo);
            }
            Change::HoldPlaced { pending_id, debit, credit, asset, amount, expires_at_ms, device, remote } => {
                if self.holds.contains_key(pending_id) {
                    return Err(ApplyError::Corrupt(format!("hold {pending_id} is placed twice")));
                }
                let mut from = self.account_for_change(debit)?;
                let mut to = self.account_for_change(credit)?;
                from.pending_debits = checked(from.pending_debits.checked_add(*amount)).map_err(overflow)?;
                checked(from.posted.checked_sub(from.pending_debits)).map_err(overflow)?;
                to.pending_credits = checked(to.pending_credits.checked_add(*amount)).map_err(overflow)?;
                checked(to.posted.checked_add(to.pending_credits)).map_err(overflow)?;
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
                self.put_hold(pending_id, Some(hold), undo);
            }
            Change::HoldResolved { pending_id, debit, credit, resolution, posted } => {
                let mut hold = self.holds.get(pending_id).cloned().ok_or_else(|| ApplyError::Corrupt(format!("hold {pending_id} does not exist")))?;
                if (&hold.debit, &hold.credit) != (debit, credit) {
                    return Err(ApplyError::Corrupt(format!("hold {pending_id} is from {} to {}, not {debit} to {credit}", hold.debit, hold.credit)));
                }
                if hold.state != HoldState::Pending {
                    return Err(ApplyError::Corrupt(format!("hold {pending_id} resolves twice")));
                }
                if *posted < 0 || *posted > hold.amount {
                    return Err(ApplyError::Corrupt(format!("hold {pending_id} posts {posted} of {}", hold.amount)));
                }
                let mut from = self.account_for_change(&hold.debit)?;
                let mut to = self.account_for_change(&hold.credit)?;
                from.pending_debits -= hold.amount;
                to.pending_credits -= hold.amount;
                from.posted = checked(from.posted.checked_sub(*posted)).map_err(overflow)?;
                to.posted = checked(to.posted.checked_add(*posted)).map_err(overflow)?;
                hold.state = HoldState::Resolved(*resolution);
                let (debit, credit) = (hold.debit.clone(), hold.credit.clone());
                self.put_account(&debit, from, undo);
                self.put_account(&credit, to, undo);
                self.put_hold(pending_id, Some(hold), undo);
            }
        }
        Ok(())
    }

    /// The change resolving an existing hold.
    fn resolution_of(&self, pending_id: &str, resolution: Resolution, posted: Minor) -> Change {
        let hold = &self.holds[pending_id];
        Change::HoldResolved { pending_id: pending_id.to_string(), debit: hold.debit.clone(), credit: hold.credit.clone(), resolution, posted }
    }

    fn account_for_change(&self, name: &str) -> Result<Account, ApplyError> {
        self.accounts.get(name).cloned().ok_or_else(|| ApplyError::Corrupt(format!("account {name} does not exist")))
    }

    fn put_account(&mut self, name: &str, acct: Account, undo: &mut Vec<Undo>) {
        let before = self.accounts.insert(name.to_string(), acct);
        undo.push(Undo::Account(name.to_string(), before));
    }

    fn put_hold(&mut self, pending_id: &str, hold: Option<Hold>, undo: &mut Vec<Undo>) {
        let before = self.set_hold(pending_id, hold);
        undo.push(Undo::Hold(pending_id.to_string(), before));
    }

    /// Sets a hold and keeps the expiry index in step with it.
    fn set_hold(&mut self, pending_id: &str, hold: Option<Hold>) -> Option<Hold> {
        let before = match hold {
            Some(h) => self.holds.insert(pending_id.to_string(), h),
            None => self.holds.remove(pending_id),
        };
        if let Some(t) = before.as_ref().and_then(|h| h.expires_at_ms) {
            self.expiries.remove(&(t, pending_id.to_string()));
        }
        if let Some(Hold { state: HoldState::Pending, expires_at_ms: Some(t), .. }) = self.holds.get(pending_id) {
            self.expiries.insert((*t, pending_id.to_string()));
        }
        match self.holds.get(pending_id) {
            Some(Hold { state: HoldState::Pending, remote: Some(_), .. }) => self.outgoing.insert(pending_id.to_string()),
            _ => self.outgoing.remove(pending_id),
        };
        before
    }

    fn rollback(&mut self, undo: Vec<Undo>) {
        for step in undo.into_iter().rev() {
            match step {
                Undo::Account(name, Some(acct)) => {
                    self.accounts.insert(name, acct);
                }
                Undo::Account(name, None) => {
                    self.accounts.remove(&name);
                }
                Undo::Hold(id, before) => {
                    self.set_hold(&id, before);
                }
            }
        }
    }

    fn notices_for(&self, resolver: Option<&str>, changes: &[Change], seq: u64, decision: Option<(Code, String)>) -> Vec<Notice> {
        let mut out = Vec::new();
        for change in changes {
            let Change::HoldResolved { pending_id, resolution, posted, .. } = change else { continue };
            let hold = &self.holds[pending_id];
            let Some(owner) = &hold.device else { continue };
            // The device that resolves its own hold learns the outcome from its reply.
            if resolver == Some(owner.as_str()) {
                continue;
            }
            let scale = self.assets.get(&hold.asset).map_or(0, |s| s.scale);
            out.push(Notice {
                device: owner.clone(),
                event: "pending_resolved",
                pending_id: pending_id.clone(),
                resolution: *resolution,
                amount: format_minor(*posted, scale),
                seq,
                decision: decision.clone(),
            });
        }
        out
    }

    fn debug_check_totals(&self) {
        #[cfg(debug_assertions)]
        if self.accounts.len() <= 10_000 {
            if let Err(e) = self.check_invariants() {
                panic!("ledger invariant broken: {e}");
            }
        }
    }

    /// SPEC §8 invariants 1 and 2, plus holds matching the pending amounts. O(accounts + holds).
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut posted: HashMap<&str, i128> = HashMap::new();
        let mut pending_debits: HashMap<&str, i128> = HashMap::new();
        let mut pending_credits: HashMap<&str, i128> = HashMap::new();
        for (name, a) in &self.accounts {
            *posted.entry(&a.asset).or_default() += a.posted as i128;
            *pending_debits.entry(&a.asset).or_default() += a.pending_debits as i128;
            *pending_credits.entry(&a.asset).or_default() += a.pending_credits as i128;
            if let Floor::Overdraft(limit) = a.floor {
                if a.available() < -limit {
                    return Err(format!("account {name} is below its floor: available {}", a.available()));
                }
            }
            if a.pending_debits < 0 || a.pending_credits < 0 {
                return Err(format!("account {name} has negative pending amounts"));
            }
        }
        for (asset, sum) in &posted {
            if *sum != 0 {
                return Err(format!("posted balances of {asset} sum to {sum}, not zero"));
            }
            if pending_debits.get(asset) != pending_credits.get(asset) {
                return Err(format!("pending debits and credits of {asset} differ"));
            }
        }
        let mut held: HashMap<&str, (i128, i128)> = HashMap::new();
        for h in self.holds.values().filter(|h| h.state == HoldState::Pending) {
            held.entry(&h.debit).or_default().0 += h.amount as i128;
            held.entry(&h.credit).or_default().1 += h.amount as i128;
        }
        for (name, a) in &self.accounts {
            let (d, c) = held.get(name.as_str()).copied().unwrap_or_default();
            if (d, c) != (a.pending_debits as i128, a.pending_credits as i128) {
                return Err(format!("account {name}: pending amounts do not match its open holds"));
            }
        }
        Ok(())
    }
}

/// Tells a resend (same content) from a conflict (same id, other content): BLAKE3 over the
/// device and the canonical JSON of the command, so that no device can craft a command that
/// passes for another's. Stable across runs and versions, which replay relies on.
fn fingerprint(device: Option<&str>, command: &Command) -> String {
    let mut bytes = Vec::with_capacity(256);
    bytes.extend_from_slice(device.unwrap_or("").as_bytes());
    bytes.push(0);
    serde_json::to_writer(&mut bytes, command).expect("command serializes");
    blake3::hash(&bytes).to_hex()[..32].to_string()
}

/// The recorded reply again, marked `duplicate`, when the resend has the recorded content;
/// `Err` when the id was used for something else.
fn resend(recorded: &Recorded, fingerprint: &str) -> Result<Reply, ()> {
    if recorded.fingerprint == fingerprint {
        Ok(Reply { duplicate: true, ..recorded.reply.clone() })
    } else {
        Err(())
    }
}

/// The account that holds this node's position with `peer` in `asset`: credited when money
/// leaves for `peer`, debited when money arrives from it.
pub fn clearing_account(asset: &str, peer: &str) -> String {
    format!("~clearing:{}:{}", asset.to_ascii_lowercase(), peer.replace('/', "."))
}

fn received_key(source: &str, id: &str) -> String {
    format!("{source}|{id}")
}

/// System accounts (`~…`) move only by the node's own entries.
fn not_system(name: &str, field: &str) -> Result<(), Rejection> {
    if name.starts_with('~') {
        return Err(Rejection::new(Code::Forbidden, format!("{field}: {name} is a system account; only the node moves it")));
    }
    Ok(())
}

/// FNV-1a, 64 bits: spreads ids over the id shards.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME))
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// An op inside a batch is fingerprinted with its batch, so it cannot be resent alone as a
/// "duplicate" of something it never was.
fn fingerprint_in_batch(device: Option<&str>, batch_id: &str, op: &Command) -> String {
    fingerprint(device, &Command { id: format!("{batch_id}/{}", op.id), op: op.op.clone() })
}
