//! The ledger state machine of one node. It takes commands with the time and returns
//! effects (a reply, a journal entry, id records, notices); it never touches disk, network
//! or clock: the shell persists the effects and only then releases the reply.
//!
//! `Ledger` holds the entry points and the sub-structs that own the state: `Accounts`
//! (with running totals per asset), `Holds` (with expiry and outgoing indexes), `IdIndex`
//! (every id's recorded result) and `ReceivedIndex` (decisions on transfers received).
//! Every journal entry is made by `append_entry`.

use super::accounts::{Account, Accounts};
use super::address::TransferKey;
use super::change::{Change, EntryBody};
use super::command::{Command, Journaled, NodeCommand, NodeOp, Op};
use super::fingerprint::Fingerprint;
use super::holds::{Hold, HoldArchive, HoldState, Holds};
use super::id_filter::IdFilter;
use super::idempotency::{
    fingerprint, fingerprint_in_batch, journaled_recorded, sender_id, IdArchive, IdCacheStats, IdIndex, IdKey, IdRecord, Recorded,
};
use super::invariants::{check_books, check_totals, InvariantError};
use super::leaving::{LeaveStats, LeavesRam};
use super::money::{format_minor, Assets};
use super::permissions::Permissions;
use super::received::{Received, ReceivedArchive, ReceivedIndex};
use super::reply::{BalanceView, Code, Notice, Rejection, Reply, Resolution, Status};

/// Everything the shell must do for one command: persist `entry` and `recorded` in one
/// durable commit, then publish `reply` and `notices`. `recorded` holds every id the
/// command took: a rejection in full, an accepted command as a pointer into its entry.
#[derive(Debug, Clone, Default)]
pub struct Effects {
    pub reply: Option<Reply>,
    /// Sealed (serialized, hashed, chained) by the committer, off the intake's hot path.
    pub entry: Option<EntryBody>,
    pub recorded: Vec<(String, IdRecord)>,
    pub notices: Vec<Notice>,
}

impl Effects {
    /// An answer that changes nothing and records nothing.
    pub fn reply_only(reply: Reply) -> Effects {
        Effects { reply: Some(reply), ..Effects::default() }
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_batch_ops: usize,
    pub max_hold_timeout_s: u64,
}

/// The journal position the state reflects. The chain's hashes live with the committer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub ts_ms: u64,
}

/// Most holds expired in one group, so that a node back from a long stop does not put
/// every expiry into one transaction.
pub const MAX_EXPIRIES_PER_CALL: usize = 1_000;

pub struct Ledger {
    pub(super) node_id: String,
    pub(super) assets: Assets,
    pub(super) limits: Limits,
    pub(super) permissions: Permissions,
    pub(super) accounts: Accounts,
    pub(super) holds: Holds,
    pub(super) ids: IdIndex,
    pub(super) received: ReceivedIndex,
    /// Whether this node has a zenoh link to send transfers across nodes.
    pub(super) cross_node: bool,
    pub(super) head: Head,
    /// Replay rebuilds full id records only from this entry on: older ones would only be
    /// evicted again, so for them the filter just learns their keys (see `replaying_to`).
    pub(super) ids_from_seq: u64,
    /// What changed since the shell last took it (`live`); None: not noted.
    pub(super) dirty: Option<super::live_changes::Dirty>,
    /// True while a journal entry is applied (`apply_recorded`): its changes are checked
    /// against everything, the file included; a live command's were checked as it ran.
    pub(super) replaying: bool,
}

impl Ledger {
    pub fn new(node_id: &str, assets: Assets, limits: Limits, permissions: Permissions) -> Ledger {
        Ledger {
            node_id: node_id.to_string(),
            assets,
            limits,
            permissions,
            accounts: Accounts::default(),
            holds: Holds::default(),
            ids: IdIndex::default(),
            received: ReceivedIndex::default(),
            cross_node: false,
            head: Head { seq: 0, ts_ms: 0 },
            ids_from_seq: 0,
            dirty: None,
            replaying: false,
        }
    }

    /// Lets this node send transfers to accounts of other nodes (it has a zenoh link).
    pub fn enable_cross_node(&mut self) {
        self.cross_node = true;
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
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

    /// A hold by its key (`principal:id`, see `IdKey`), if it is in RAM: every pending hold
    /// is; a resolved one may have left (see `archive_holds`).
    pub fn hold(&self, pending_id: &str) -> Option<&Hold> {
        self.holds.in_ram(pending_id)
    }

    /// Pending holds, by id; with `account`, those that debit or credit it. At most `limit`.
    pub fn pending_holds(&self, account: Option<&str>, limit: usize) -> Vec<(&String, &Hold)> {
        self.holds.pending(account, limit)
    }

    /// Cross-node transfers sent from this node whose destination has not decided yet.
    pub fn outgoing(&self) -> impl Iterator<Item = (&String, &Hold)> {
        self.holds.outgoing()
    }

    pub fn outgoing_count(&self) -> usize {
        self.holds.outgoing_count()
    }

    /// Every cross-node transfer sent from this node and in RAM, resolved or not: all of
    /// them unless resolved holds leave RAM (`archive_holds`).
    pub fn cross_node_holds(&self) -> impl Iterator<Item = (&String, &Hold)> {
        self.holds.iter().filter(|(_, h)| h.remote.is_some())
    }

    /// The recorded decision on a cross-node transfer received from `source`, if it is in
    /// RAM (see `archive_received`).
    pub fn received(&self, source: &str, id: &str) -> Option<&Recorded> {
        self.received.in_ram(&TransferKey::new(source, id)).map(|r| &r.recorded)
    }

    /// Every cross-node transfer received here and in RAM, decided either way: all of them
    /// unless decisions leave RAM (`archive_received`).
    pub fn received_all(&self) -> impl Iterator<Item = &Received> {
        self.received.iter()
    }

    /// The recorded result of the id `principal` sent, from RAM or the id archive.
    pub fn recorded(&mut self, principal: Option<&str>, id: &str) -> Option<Recorded> {
        self.ids.get(IdKey::new(principal, id).as_str())
    }

    /// Keeps only the most recent `capacity` id records in RAM; older ones are read back
    /// from `archive` (the node's file). Set before the journal is loaded.
    pub fn archive_ids(&mut self, capacity: usize, archive: Box<dyn IdArchive>) {
        debug_assert!(self.ids.is_empty(), "the id cache is chosen before any record");
        self.ids = IdIndex::recent(capacity, archive);
    }

    /// Keeps at most `capacity` resolved local holds in RAM (beyond those of groups not yet
    /// durable); the others are read back from `archive` (the node's file) when a command
    /// names them. Set before the books are loaded.
    pub fn archive_holds(&mut self, capacity: usize, archive: Box<dyn HoldArchive>) {
        self.holds.archive(capacity, archive);
    }

    /// Keeps at most `capacity` decisions on transfers received in RAM (beyond those of
    /// groups not yet durable); the others are read back from `archive` (the node's file)
    /// when the transfer is delivered again. Set before the books are loaded.
    pub fn archive_received(&mut self, capacity: usize, archive: Box<dyn ReceivedArchive>) {
        self.received.archive(capacity, archive);
    }

    /// Decisions on transfers received in RAM and the counters of those that left it.
    pub fn received_cache(&self) -> (usize, LeaveStats) {
        (self.received.count_in_ram(), self.received.stats())
    }

    /// Holds in RAM and the counters of those that left it.
    pub fn hold_cache(&self) -> (usize, LeaveStats) {
        (self.holds.count_in_ram(), self.holds.stats())
    }

    /// Keeps no id records: a replica, or an audit, that never answers a command.
    pub fn forget_ids(&mut self) {
        self.ids = IdIndex::none();
    }

    /// Whether the store must restore rejected ids into RAM (all records stay there).
    pub fn keeps_all_ids(&self) -> bool {
        self.ids.keeps_all()
    }

    /// Tells the id filter of a rejected command's id found in the file at start-up.
    pub fn know_id(&mut self, key: &str) {
        self.ids.know(key);
    }

    /// See `IdIndex::filter_to_build`: the id filter of the ids recorded before now is
    /// built elsewhere (start-up without replay) and handed in with `complete_id_filter`.
    pub fn id_filter_to_build(&mut self) -> Option<IdFilter> {
        self.ids.filter_to_build()
    }

    pub fn complete_id_filter(&mut self, built: IdFilter) {
        self.ids.complete_filter(built);
    }

    /// Starts a group of commands (see `IdIndex::next_group`).
    pub fn next_group(&mut self) -> u64 {
        let group = self.ids.next_group();
        self.holds.start_group(group);
        self.received.start_group(group);
        group
    }

    /// Numbers this ledger's groups after `group`: a ledger rebuilt from the file in a
    /// running node (after a failed write) goes on from the one it replaces, whose group
    /// numbers the committer has already reported durable.
    pub fn number_groups_after(&mut self, group: u64) {
        self.ids.number_groups_after(group);
        self.holds.number_groups_after(group);
        self.received.number_groups_after(group);
    }

    /// Groups up to `group` are durable: their id records and the holds they resolved may
    /// leave RAM.
    pub fn group_durable(&mut self, group: u64) {
        self.ids.durable(group);
        self.holds.durable(group);
        self.received.durable(group);
    }

    /// The id cache: records in RAM, bytes of its "never seen" filter, and its counters
    /// since start.
    pub fn id_cache(&self) -> (usize, usize, IdCacheStats) {
        (self.ids.len(), self.ids.filter_bytes(), self.ids.stats)
    }

    /// Restores an id record read back from storage at start-up (`key` as `IdKey` writes
    /// it).
    pub fn restore_recorded(&mut self, key: String, recorded: Recorded) {
        debug_assert!(IdKey::parse(&key).is_some(), "stored id records are keyed principal:id");
        self.ids.insert(&key, recorded);
    }

    /// Takes the assets an entry's opened accounts record (for an audit without config).
    pub fn learn_asset(&mut self, asset: &str, scale: u32) {
        self.assets.learn(asset, scale);
    }

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

    /// The earliest expiry time of a pending hold, if any.
    pub fn next_expiry(&self) -> Option<u64> {
        self.holds.first_expiry().map(|(t, _)| *t)
    }

    /// The answer to a command that needs no write: a balance read, or a resend of an id
    /// already recorded (`duplicate` or `id_conflict`). None: the command would change the
    /// books. A node that cannot write answers only these (`disk_full` for the rest).
    pub fn answer_without_writing(&mut self, device: Option<&str>, command: &Command) -> Option<Effects> {
        self.answer_read_or_resend(device, command, &IdKey::new(device, &command.id))
    }

    fn answer_read_or_resend(&mut self, device: Option<&str>, command: &Command, key: &IdKey) -> Option<Effects> {
        if let Op::Balance { account } = &command.op {
            let reply = match self.balance(device, account) {
                Ok(view) => {
                    let mut reply = Reply::ok(&command.id, Status::Committed, self.head.seq, "balance read");
                    reply.balance = Some(view);
                    reply
                }
                Err(rejection) => Reply::rejected(Some(&command.id), rejection),
            };
            return Some(Effects::reply_only(reply));
        }
        let recorded = self.ids.get(key.as_str())?;
        let reply = match recorded.resend(&fingerprint(device, command)) {
            Some(mut reply) => {
                // A device that missed the notice learns the outcome from its resend.
                if let Some(HoldState::Resolved(r)) = self.holds.get(key.as_str()).map(|h| h.state) {
                    reply.resolution = (reply.status == Status::Pending).then_some(r);
                }
                reply
            }
            None => Reply::rejected(
                Some(&command.id),
                Rejection::new(Code::IdConflict, format!("id: {:?} was already used for a different command", command.id)),
            ),
        };
        Some(Effects::reply_only(reply))
    }

    /// Applies one device command at time `now_ms`.
    pub fn submit(&mut self, device: Option<&str>, command: Command, now_ms: u64) -> Effects {
        let key = IdKey::new(device, &command.id);
        if let Some(answer) = self.answer_read_or_resend(device, &command, &key) {
            return answer;
        }
        let fingerprint = fingerprint(device, &command);
        let now_ms = now_ms.max(self.head.ts_ms);
        let mut undo = Vec::new();
        let mut changes = Vec::new();
        let mut effects = Effects::default();
        match self.execute(device, &command, now_ms, &mut undo, &mut changes) {
            Ok(mut reply) => {
                let seq = self.next_seq();
                reply.seq = Some(seq);
                effects.notices = self.notices_for(device, &changes, seq, None);
                // The entry carries the reply: for an accepted command the journal is the id
                // record, so a commit appends sequentially instead of scattering id writes.
                let body = self.append_entry(now_ms, device, Journaled::Device(command), changes, Some(reply.clone()));
                effects.recorded = self.remember_accepted(&body, fingerprint, Some(key));
                effects.entry = Some(body);
                effects.reply = Some(reply);
            }
            Err(rejection) => {
                self.rollback(undo);
                let reply = Reply::rejected(Some(&command.id), rejection);
                let recorded = Recorded { fingerprint, reply: reply.clone() };
                self.ids.insert(key.as_str(), recorded.clone());
                effects.recorded.push((key.into_string(), IdRecord::Rejected(Box::new(recorded))));
                effects.reply = Some(reply);
            }
        }
        self.debug_check_books();
        effects
    }

    /// Expires pending holds whose timeout has passed by `now_ms`, one entry each, at most
    /// `MAX_EXPIRIES_PER_CALL` of them (after a long stop, the rest follow in later groups).
    pub fn expire_due(&mut self, now_ms: u64) -> Vec<Effects> {
        // The journal's clock never runs backwards, and expiry uses the same clock as `post`.
        let now_ms = now_ms.max(self.head.ts_ms);
        let mut out = Vec::new();
        while let Some((at, pending_id)) = self.holds.first_expiry().cloned() {
            if at > now_ms || out.len() >= MAX_EXPIRIES_PER_CALL {
                break;
            }
            let change = self.resolution_of(&pending_id, Resolution::Expired, 0);
            if let Err(e) = self.apply(&change, &mut Vec::new()) {
                panic!("expiring hold {pending_id} failed: {e:?}");
            }
            let changes = vec![change];
            let notices = self.notices_for(None, &changes, self.next_seq(), None);
            let command = NodeCommand { id: format!("expire:{pending_id}"), op: NodeOp::Expire { pending_id } };
            let body = self.append_entry(now_ms, None, Journaled::Node(command), changes, None);
            out.push(Effects { reply: None, entry: Some(body), recorded: Vec::new(), notices });
        }
        self.debug_check_books();
        out
    }

    /// Rebuilds state from the next stored entry (its chain link already verified). An
    /// entry that does not apply, or leaves the books unbalanced, changes nothing.
    pub fn replay(&mut self, body: &EntryBody) -> Result<(), String> {
        if body.seq != self.head.seq + 1 {
            return Err(format!("journal gap: expected entry {}, found {}", self.head.seq + 1, body.seq));
        }
        self.apply_recorded(body.seq, &body.changes)?;
        self.head = Head { seq: body.seq, ts_ms: body.ts_ms };
        let receives = matches!(body.command, Journaled::Node(NodeCommand { op: NodeOp::Receive { .. }, .. }));
        if body.seq < self.ids_from_seq && !receives {
            self.know_accepted(body);
        } else if body.reply.is_some() && (receives || !self.ids.keeps_nothing()) {
            // `Journaled` serializes as the command it holds: the same bytes as when it ran.
            let fingerprint = fingerprint(body.device.as_deref(), &body.command);
            self.remember_accepted(body, fingerprint, None);
        }
        Ok(())
    }

    /// Tells replay that the journal ends at `last_seq`: entries too old to stay in the id
    /// cache only teach the filter their ids (no fingerprint, no record), which is most of
    /// a long journal's start-up.
    pub fn replaying_to(&mut self, last_seq: u64) {
        if let Some(capacity) = self.ids.capacity() {
            // A batch takes several records per entry: keep a margin of whole entries.
            self.ids_from_seq = last_seq.saturating_sub(capacity as u64).saturating_add(1);
        }
    }

    /// The ids an accepted entry took, for the filter only.
    fn know_accepted(&mut self, body: &EntryBody) {
        let (Some(_), Journaled::Device(command)) = (&body.reply, &body.command) else { return };
        let device = body.device.as_deref();
        if let Op::Batch { ops } = &command.op {
            for op in ops {
                self.ids.know(IdKey::new(device, &op.id).as_str());
            }
        }
        self.ids.know(IdKey::new(device, &command.id).as_str());
    }

    /// The sequence number the next entry will carry.
    pub(super) fn next_seq(&self) -> u64 {
        self.head.seq + 1
    }

    /// Makes the next journal entry and moves the head to it. The journal's clock never
    /// runs backwards. Every entry the ledger writes is made here.
    pub(super) fn append_entry(
        &mut self,
        now_ms: u64,
        device: Option<&str>,
        command: Journaled,
        changes: Vec<Change>,
        reply: Option<Reply>,
    ) -> EntryBody {
        let seq = self.next_seq();
        let ts_ms = now_ms.max(self.head.ts_ms);
        debug_assert!(reply.as_ref().is_none_or(|r| r.seq == Some(seq)), "a journaled reply names its entry");
        self.head = Head { seq, ts_ms };
        EntryBody { seq, ts_ms, device: device.map(str::to_string), command, changes, reply }
    }

    /// Records the ids of an accepted command (and of the ops of a batch) from its entry;
    /// returns them as the store keeps them. `key`: the command's own key, when the caller
    /// has built it already (else it is built from the entry).
    pub(super) fn remember_accepted(&mut self, body: &EntryBody, fingerprint: Fingerprint, key: Option<IdKey>) -> Vec<(String, IdRecord)> {
        let Some(reply) = &body.reply else { return Vec::new() };
        match &body.command {
            Journaled::Node(NodeCommand { id, op: NodeOp::Receive { source, movement } }) => {
                let recorded = Recorded { fingerprint, reply: reply.clone() };
                self.received.insert(Received { source: source.clone(), id: id.clone(), movement: movement.clone(), recorded });
                self.note_received(&TransferKey::new(source, id));
                Vec::new()
            }
            Journaled::Node(_) => Vec::new(),
            Journaled::Device(command) => {
                let device = body.device.as_deref();
                let ops = match &command.op {
                    Op::Batch { ops } => ops.as_slice(),
                    _ => &[],
                };
                // The batch's ops, then the command itself.
                let mut out = Vec::with_capacity(ops.len() + 1);
                let mut remember = |key: IdKey, fingerprint: Fingerprint, op: Option<usize>| {
                    let recorded = journaled_recorded(body, fingerprint, op).expect("the entry holds the command");
                    self.ids.insert(key.as_str(), recorded);
                    out.push((key.into_string(), IdRecord::Journaled { fingerprint, seq: body.seq, op }));
                };
                for (i, op) in ops.iter().enumerate() {
                    remember(IdKey::new(device, &op.id), fingerprint_in_batch(device, &command.id, op), Some(i));
                }
                let key = key.unwrap_or_else(|| IdKey::new(device, &command.id));
                debug_assert_eq!(key, IdKey::new(device, &command.id), "the key given is the command's");
                remember(key, fingerprint, None);
                out
            }
        }
    }

    pub(super) fn notices_for(
        &self,
        resolver: Option<&str>,
        changes: &[Change],
        seq: u64,
        decision: Option<(Code, String)>,
    ) -> Vec<Notice> {
        let mut out = Vec::new();
        for change in changes {
            let Change::HoldResolved { pending_id, resolution, posted, .. } = change else { continue };
            let hold = self.holds.in_ram(pending_id).expect("a hold resolved by this group is in RAM");
            let Some(owner) = &hold.device else { continue };
            // The device that resolves its own hold learns the outcome from its reply.
            if resolver == Some(owner.as_str()) {
                continue;
            }
            let scale = self.assets.get(&hold.asset).map_or(0, |s| s.scale);
            out.push(Notice {
                device: owner.clone(),
                event: "pending_resolved",
                // The owner named the hold with its own id.
                pending_id: sender_id(pending_id).to_string(),
                resolution: *resolution,
                amount: format_minor(*posted, scale),
                seq,
                decision: decision.clone(),
            });
        }
        out
    }

    /// An operator's read of a local account, without device permissions.
    pub fn balance_view(&self, name: &str) -> Option<BalanceView> {
        let acct = self.accounts.get(name)?;
        let scale = self.assets.get(&acct.asset).map_or(0, |s| s.scale);
        Some(BalanceView {
            account: name.to_string(),
            asset: acct.asset.to_string(),
            posted: format_minor(acct.posted, scale),
            pending_debits: format_minor(acct.pending_debits, scale),
            pending_credits: format_minor(acct.pending_credits, scale),
            available: format_minor(acct.available(), scale),
        })
    }

    /// SPEC §8.1 and §8.2 from the running totals: O(assets), cheap enough for every group
    /// in every build. The shell calls it before a group's replies may leave.
    pub fn check_totals(&self) -> Result<(), InvariantError> {
        check_totals(&self.accounts)
    }

    /// SPEC §8 invariants 1 and 2, plus holds matching the pending amounts and the running
    /// totals matching a fresh sum. O(accounts + holds).
    pub fn check_invariants(&self) -> Result<(), String> {
        check_books(&self.accounts, &self.holds).map_err(|e| e.to_string())
    }

    /// Debug builds check the whole books after every command while they are small.
    fn debug_check_books(&self) {
        if cfg!(debug_assertions) && self.accounts.len() <= 10_000 {
            if let Err(e) = self.check_invariants() {
                panic!("ledger invariant broken: {e}");
            }
        }
    }
}
