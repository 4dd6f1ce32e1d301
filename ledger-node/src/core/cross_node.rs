//! Cross-node transfers in the core (SPEC §6): at the source, a hold from the debit
//! account to the clearing account of the destination node; at the destination, the
//! recorded decision (credit from the clearing account of the source, or a rejection);
//! back at the source, the settlement that posts or voids the hold.

use super::address::{clearing_account, Address, TransferKey};
use super::apply::{ApplyError, Undo};
use super::change::{Change, Floor};
use super::command::{Journaled, Movement, NodeCommand, NodeOp};
use super::execute::not_system;
use super::holds::HoldState;
use super::idempotency::{fingerprint, IdKey};
use super::ledger::{Effects, Ledger};
use super::reply::{Code, Rejection, Reply, Resolution, Status};

impl Ledger {
    /// A transfer whose credit account lives on another node: a hold from the debit account
    /// to the clearing account of that node, posted or voided by the destination's decision.
    pub(super) fn send_across(
        &mut self,
        device: Option<&str>,
        id: &str,
        m: &Movement,
        undo: &mut Vec<Undo>,
        changes: &mut Vec<Change>,
    ) -> Result<Reply, Rejection> {
        let credit = Address::split(&m.credit);
        let node = credit.node.expect("a remote address has a node");
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
        not_system(credit.name, "credit")?;
        let (debit, amount) = self.check_debit(device, m, None)?;
        let clearing = self.ensure_clearing(&m.asset, node, undo, changes)?;
        let change = Change::HoldPlaced {
            pending_id: IdKey::new(device, id).into_string(),
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

    /// The clearing account of `peer` in `asset`, opened the first time a peer node is
    /// dealt with in that asset.
    fn ensure_clearing(&mut self, asset: &str, peer: &str, undo: &mut Vec<Undo>, changes: &mut Vec<Change>) -> Result<String, Rejection> {
        let clearing = clearing_account(asset, peer);
        if !self.accounts.contains(&clearing) {
            let scale = self.assets.get(asset).expect("asset checked").scale;
            let change = Change::AccountOpened { account: clearing.clone(), asset: asset.to_string(), scale, floor: Floor::Issuance };
            self.change(change, undo, changes)?;
        }
        Ok(clearing)
    }

    /// Applies a cross-node transfer arriving from `source` (delivered by a region): credits
    /// the account from this node's clearing account of `source`, or records why not. Both
    /// outcomes are journaled: the decision is durable, replicated, and answered again to
    /// every redelivery of the same transfer.
    pub fn receive(&mut self, command: NodeCommand, now_ms: u64) -> Effects {
        let NodeOp::Receive { source, .. } = &command.op else {
            let rejection = Rejection::new(Code::UnknownOp, format!("op: {} is not a delivery", command.op.name()));
            return Effects::reply_only(Reply::rejected(Some(&command.id), rejection));
        };
        let fingerprint = fingerprint(None, &command);
        // A decision that left RAM is read back: a redelivery never counts as a new transfer.
        if let Some(received) = self.received.get(&TransferKey::new(source, &command.id)) {
            let reply = received.recorded.resend(&fingerprint).unwrap_or_else(|| {
                Reply::rejected(
                    Some(&command.id),
                    Rejection::new(
                        Code::IdConflict,
                        format!("id: transfer {:?} from {source} was received with other content", command.id),
                    ),
                )
            });
            return Effects::reply_only(reply);
        }
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
        reply.seq = Some(self.next_seq());
        let body = self.append_entry(now_ms, None, Journaled::Node(command), changes, Some(reply.clone()));
        self.remember_accepted(&body, fingerprint, None);
        Effects { reply: Some(reply), entry: Some(body), ..Effects::default() }
    }

    fn credit_incoming(&mut self, command: &NodeCommand, undo: &mut Vec<Undo>, changes: &mut Vec<Change>) -> Result<String, Rejection> {
        let NodeOp::Receive { source, movement: m } = &command.op else { unreachable!("checked by receive") };
        let credit = self.local(&m.credit, "credit")?;
        not_system(credit, "credit")?;
        let spec = self.asset(&m.asset, "asset").map_err(|r| Rejection::new(r.code, format!("{} on {}", r.message, self.node_id)))?;
        let amount = self.amount(spec, &m.amount, "amount")?;
        self.usable(credit, "credit", &m.asset)?;
        let credit = credit.to_string();
        let clearing = self.ensure_clearing(&m.asset, source, undo, changes)?;
        self.change(Change::Transferred { debit: clearing, credit: credit.clone(), asset: m.asset.clone(), amount }, undo, changes)?;
        Ok(format!("{} {} from {} credited to {credit}", m.amount, m.asset, m.debit))
    }

    /// Applies the destination's decision to a cross-node hold placed here: posts it when
    /// the destination credited, voids it when it recorded a rejection, and tells the
    /// device. Settling twice the same way is answered as a duplicate and changes nothing.
    pub fn settle(&mut self, pending_id: &str, decision: &Reply, now_ms: u64) -> Effects {
        let refuse = |code, message: String| Effects::reply_only(Reply::rejected(Some(pending_id), Rejection::new(code, message)));
        let Some(hold) = self.holds.get(pending_id).map(|h| h.into_owned()) else {
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
                return Effects::reply_only(reply);
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
        let changes = vec![change];
        let notices = self.notices_for(None, &changes, self.next_seq(), Some((decision.code, decision.message.to_string())));
        let op = NodeOp::Settle {
            pending_id: pending_id.to_string(),
            status: decision.status,
            code: decision.code,
            message: decision.message.to_string(),
        };
        let command = NodeCommand { id: format!("settle:{pending_id}"), op };
        let body = self.append_entry(now_ms, None, Journaled::Node(command), changes, None);
        let reply = Reply::ok(pending_id, Status::Committed, body.seq, format!("{pending_id} {resolution:?}"));
        Effects { reply: Some(reply), entry: Some(body), recorded: Vec::new(), notices }
    }
}
