//! Cross-node transfers in the pure core, over random interleavings: a source and a
//! destination ledger, transfers sent, delivered and settled in any order and any number of
//! times (what retries and crashes produce). After every step both books balance on their
//! own, nothing is credited or posted twice, a hold is posted only on a recorded credit and
//! voided only on a recorded rejection, and replaying each journal rebuilds the same state.
//! Each side's live tables (accounts, holds, decisions received), written step by step,
//! equal its books after every step and a replay of its journal at the end.

mod common;

use common::{books_of, Decisions, Holds, Written};
use ledger::core::address::clearing_account;
use ledger::core::command::{self, Movement, NodeCommand, NodeOp};
use ledger::core::idempotency::IdKey;
use ledger::core::journal::Chain;
use ledger::core::money::Assets;
use ledger::core::reply::{Code, Reply, Resolution, Status};
use ledger::core::EntryBody;
use ledger::core::{Hold, HoldState, Ledger, Limits, LiveChanges, Permissions, Recorded};
use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::json;
use std::sync::{Arc, Mutex};

const SOURCE: &str = "eu/berlin-1";
const DESTINATION: &str = "us/nyc-1";

fn ledger(node: &str) -> Ledger {
    let assets = Assets::new(&[], |_| Decimal::from(1000));
    let mut ledger = Ledger::new(node, assets, Limits { max_batch_ops: 10, max_hold_timeout_s: 3600 }, Permissions::open());
    ledger.enable_cross_node();
    ledger
}

#[derive(Debug, Clone)]
enum Step {
    /// Send a transfer of `cents` to `merchant` (which exists) or `ghost` (which does not).
    Send { cents: u32, to_ghost: bool },
    /// Deliver transfer `k` (mod sent) to the destination, again if it was already.
    Deliver(usize),
    /// Bring the destination's decision on `k` back to the source, again if it was already.
    Settle(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1u32..=40_000, prop::bool::weighted(0.2)).prop_map(|(cents, to_ghost)| Step::Send { cents, to_ghost }),
        (0usize..64).prop_map(Step::Deliver),
        (0usize..64).prop_map(Step::Settle),
    ]
}

struct Pair {
    source: Ledger,
    destination: Ledger,
    source_journal: Vec<EntryBody>,
    destination_journal: Vec<EntryBody>,
    sent: Vec<String>,
    tried: usize,
    now: u64,
    source_tables: Arc<Mutex<Written>>,
    destination_tables: Arc<Mutex<Written>>,
    /// The last step's changes and group numbers: written only while the next step runs,
    /// as the committer overlaps the intake.
    unwritten: Option<(LiveChanges, LiveChanges, (u64, u64))>,
    /// The group numbers of the steps since the last group ended: a group spans two steps,
    /// so that one may make several values final.
    open: Option<(u64, u64)>,
    steps: usize,
}

/// Resolved holds and decisions received each side keeps in RAM: the others are read back
/// from its tables.
const CACHE: usize = 1;

impl Pair {
    /// `fold_every`: each side writes its accounts as a delta per group, folded into rows
    /// every that many groups, as an edge does (1: rows every group).
    fn new(fold_every: u32) -> Pair {
        let mut pair = Pair {
            source: ledger(SOURCE),
            destination: ledger(DESTINATION),
            source_journal: Vec::new(),
            destination_journal: Vec::new(),
            sent: Vec::new(),
            tried: 0,
            now: 1_000,
            source_tables: Arc::default(),
            destination_tables: Arc::default(),
            unwritten: None,
            open: None,
            steps: 0,
        };
        for (ledger, tables) in [(&mut pair.source, &pair.source_tables), (&mut pair.destination, &pair.destination_tables)] {
            ledger.archive_holds(CACHE, Box::new(Holds(tables.clone())));
            ledger.archive_received(CACHE, Box::new(Decisions(tables.clone())));
            ledger.track_live_changes_folding(fold_every);
        }
        for (id, account, flags) in [("o1", "issuer", json!(["issuance"])), ("o2", "wallet", json!([]))] {
            pair.device(json!({"id": id, "op": "open_account", "account": account, "asset": "EUR", "flags": flags}));
        }
        for id in ["fund1", "fund2"] {
            let funded = pair
                .device(json!({"id": id, "op": "transfer", "debit": "issuer", "credit": "wallet", "amount": "1000.00", "asset": "EUR"}));
            assert_eq!(funded.code, Code::Ok);
        }
        let open =
            command::parse(json!({"id": "o", "op": "open_account", "account": "merchant", "asset": "EUR"}).to_string().as_bytes(), 10)
                .unwrap();
        let effects = pair.destination.submit(Some("pos"), open, pair.now);
        pair.destination_journal.extend(effects.entry);
        pair
    }

    fn device(&mut self, command: serde_json::Value) -> Reply {
        let parsed = command::parse(command.to_string().as_bytes(), 10).unwrap();
        let effects = self.source.submit(Some("till"), parsed, self.now);
        self.source_journal.extend(effects.entry);
        effects.reply.unwrap()
    }

    /// The source's hold `id`: in RAM, or as its tables hold it.
    fn sent_hold(&self, id: &str) -> Option<Hold> {
        self.source.hold(id).cloned().or_else(|| self.source_tables.lock().unwrap().holds.get(id).cloned())
    }

    /// The destination's decision on `id`: in RAM, or as its tables hold it.
    fn decision(&self, id: &str) -> Option<Recorded> {
        let key = ledger::core::address::TransferKey::new(SOURCE, id);
        let in_tables = || self.destination_tables.lock().unwrap().received.get(&key).map(|r| r.recorded.clone());
        self.destination.received(SOURCE, id).cloned().or_else(in_tables)
    }

    fn delivery(&self, id: &str) -> NodeCommand {
        let hold = self.sent_hold(id).unwrap();
        let amount = ledger::core::money::format_minor(hold.amount, 2);
        let movement = Movement {
            debit: format!("wallet@{SOURCE}"),
            credit: hold.remote.clone().unwrap(),
            amount,
            asset: "EUR".into(),
            metadata: None,
        };
        NodeCommand { id: id.to_string(), op: NodeOp::Receive { source: SOURCE.into(), movement } }
    }

    fn run(&mut self, step: Step) {
        self.now += 10;
        let groups = match self.open {
            Some(groups) => groups,
            None => (self.source.next_group(), self.destination.next_group()),
        };
        self.open = Some(groups);
        match step {
            Step::Send { cents, to_ghost } => {
                let id = format!("t{}", self.tried);
                self.tried += 1;
                let credit = if to_ghost { format!("ghost@{DESTINATION}") } else { format!("merchant@{DESTINATION}") };
                let amount = format!("{}.{:02}", cents / 100, cents % 100);
                let reply =
                    self.device(json!({"id": id, "op": "transfer", "debit": "wallet", "credit": credit, "amount": amount, "asset": "EUR"}));
                match reply.status {
                    // Transfers are keyed by the sending device and its id.
                    Status::Pending => self.sent.push(IdKey::new(Some("till"), &id).into_string()),
                    _ => assert_eq!(reply.code, Code::InsufficientFunds, "{reply:?}"),
                }
            }
            Step::Deliver(k) if !self.sent.is_empty() => {
                let id = self.sent[k % self.sent.len()].clone();
                let before = self.decision(&id);
                let effects = self.destination.receive(self.delivery(&id), self.now);
                let reply = effects.reply.unwrap();
                assert!(reply.seq.is_some(), "{reply:?}");
                match before {
                    Some(recorded) => {
                        assert!(reply.duplicate && effects.entry.is_none(), "a redelivery changes nothing");
                        assert_eq!(reply.status, recorded.reply.status);
                    }
                    None => self.destination_journal.push(effects.entry.expect("a decision is journaled")),
                }
            }
            Step::Settle(k) if !self.sent.is_empty() => {
                let id = self.sent[k % self.sent.len()].clone();
                let Some(decision) = self.decision(&id).map(|r| r.reply) else { return self.end_step(groups) };
                let effects = self.source.settle(&id, &decision, self.now);
                assert_eq!(effects.reply.unwrap().code, Code::Ok);
                self.source_journal.extend(effects.entry);
                let notice = effects.notices.first();
                if let Some(n) = notice {
                    assert_eq!(n.device, "till");
                    assert_eq!(n.decision.as_ref().map(|d| d.0), Some(decision.code));
                }
            }
            _ => {}
        }
        self.end_step(groups);
    }

    /// Each step is a group of its own; the previous one is written to the tables now, as
    /// a commit does, and then it is durable.
    fn end_step(&mut self, groups: (u64, u64)) {
        self.steps += 1;
        if self.steps % 2 == 1 {
            return self.check();
        }
        self.open = None;
        let live = (self.source.take_live_changes(), self.destination.take_live_changes(), groups);
        let previous = self.unwritten.replace(live);
        self.write(previous);
        self.check();
    }

    fn write(&mut self, group: Option<(LiveChanges, LiveChanges, (u64, u64))>) {
        let Some((source_live, destination_live, (source_group, destination_group))) = group else { return };
        self.source_tables.lock().unwrap().commit_live(source_live);
        self.destination_tables.lock().unwrap().commit_live(destination_live);
        self.source.group_durable(source_group);
        self.destination.group_durable(destination_group);
    }

    /// Ends the open group and writes it too: the tables then hold everything.
    fn flush(&mut self) {
        if let Some(groups) = self.open.take() {
            let live = (self.source.take_live_changes(), self.destination.take_live_changes(), groups);
            let previous = self.unwritten.replace(live);
            self.write(previous);
        }
        let last = self.unwritten.take();
        self.write(last);
        self.check();
    }

    fn check(&self) {
        self.source.check_invariants().unwrap();
        self.destination.check_invariants().unwrap();
        for (ledger, tables) in [(&self.source, &self.source_tables), (&self.destination, &self.destination_tables)] {
            let tables = tables.lock().unwrap();
            if self.unwritten.is_none() && self.open.is_none() {
                if let Some(difference) = tables.live_state(ledger.head()).difference(&books_of(ledger, &tables)) {
                    panic!("{}: live tables vs books: {difference}", ledger.node_id());
                }
            }
        }
        let mut posted_at_source = 0;
        for id in &self.sent {
            let hold = self.sent_hold(id).unwrap();
            let decision = self.decision(id);
            match hold.state {
                HoldState::Pending => {}
                HoldState::Resolved(Resolution::Posted) => {
                    assert_eq!(decision.unwrap().reply.status, Status::Committed, "{id} posted without a credit");
                    posted_at_source += hold.amount;
                }
                HoldState::Resolved(Resolution::Voided) => {
                    assert_eq!(decision.unwrap().reply.status, Status::Rejected, "{id} voided without a recorded rejection");
                }
                HoldState::Resolved(r) => panic!("{id} resolved {r:?}"),
            }
        }
        let credited: i64 = self
            .sent
            .iter()
            .filter_map(|id| self.decision(id))
            .filter(|r| r.reply.status == Status::Committed)
            .map(|r| self.sent_hold(r.reply.id.as_deref().unwrap()).unwrap().amount)
            .sum();
        let source_clearing = self.source.account(&clearing_account("EUR", DESTINATION)).map_or(0, |a| a.posted);
        let destination_clearing = self.destination.account(&clearing_account("EUR", SOURCE)).map_or(0, |a| a.posted);
        assert_eq!(source_clearing, posted_at_source);
        assert_eq!(destination_clearing, -credited);
        assert_eq!(self.destination.account("merchant").unwrap().posted, credited);
    }

    /// Delivers and settles everything, as the region does once the network heals.
    fn finish(&mut self) {
        for k in 0..self.sent.len() {
            self.run(Step::Deliver(k));
            self.run(Step::Settle(k));
        }
        self.flush();
        assert_eq!(self.source.outgoing_count(), 0);
        let source_clearing = self.source.account(&clearing_account("EUR", DESTINATION)).map_or(0, |a| a.posted);
        let destination_clearing = self.destination.account(&clearing_account("EUR", SOURCE)).map_or(0, |a| a.posted);
        assert_eq!(source_clearing, -destination_clearing, "the clearing accounts mirror each other");
    }
}

/// A ledger rebuilt from the journal as stored: each body sealed, read back from its
/// bytes, and replayed.
fn replayed(node: &str, journal: &[EntryBody]) -> Ledger {
    let mut ledger = ledger(node);
    let mut chain = Chain::default();
    for body in journal {
        let stored = chain.seal(body);
        let read = stored.parse_body().unwrap();
        assert_eq!(&read, body, "a stored body reads back as the ledger wrote it");
        ledger.replay(&read).unwrap();
    }
    ledger
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn transfers_settle_once_on_both_sides(steps in prop::collection::vec(step(), 1..80), fold_every in 1u32..=4) {
        let mut pair = Pair::new(fold_every);
        for step in steps {
            pair.run(step);
        }
        pair.finish();
        // Replaying the journals rebuilds the same books and decisions (a restart).
        let source = replayed(SOURCE, &pair.source_journal);
        let destination = replayed(DESTINATION, &pair.destination_journal);
        for (name, account) in pair.source.accounts() {
            prop_assert_eq!(Some(account), source.account(name));
        }
        for (name, account) in pair.destination.accounts() {
            prop_assert_eq!(Some(account), destination.account(name));
        }
        for id in &pair.sent {
            prop_assert_eq!(pair.decision(id), destination.received(SOURCE, id).cloned());
            prop_assert_eq!(pair.sent_hold(id), source.hold(id).cloned());
        }
        // Decided transfers left RAM on both sides, all but CACHE of them.
        let decided = pair.sent.len();
        prop_assert!(decided <= CACHE || pair.source.hold_cache().1.evictions > 0);
        prop_assert!(decided <= CACHE || pair.destination.received_cache().1.evictions > 0);
        // The live tables equal the replays.
        let (source_tables, destination_tables) = (pair.source_tables.lock().unwrap(), pair.destination_tables.lock().unwrap());
        prop_assert_eq!(source_tables.live_state(source.head()).difference(&source.live_state()), None);
        prop_assert_eq!(destination_tables.live_state(destination.head()).difference(&destination.live_state()), None);
    }
}

#[test]
fn a_settlement_that_contradicts_the_first_is_refused() {
    let mut pair = Pair::new(1);
    pair.run(Step::Send { cents: 500, to_ghost: false });
    pair.run(Step::Deliver(0));
    pair.run(Step::Settle(0));
    let mut forged = pair.decision("till:t0").unwrap().reply;
    forged.status = Status::Rejected;
    let effects = pair.source.settle("till:t0", &forged, pair.now);
    assert_eq!(effects.reply.unwrap().code, Code::PendingPosted);
    assert!(effects.entry.is_none());
    // A device cannot resolve a cross-node hold, nor reach a system account.
    let void = pair.device(json!({"id": "v", "op": "void", "pending_id": "t0"}));
    assert_eq!(void.code, Code::Forbidden);
    let raid = pair.device(json!({"id": "r", "op": "transfer", "debit": clearing_account("EUR", DESTINATION), "credit": "wallet", "amount": "1.00", "asset": "EUR"}));
    assert_eq!(raid.code, Code::Forbidden);
}
