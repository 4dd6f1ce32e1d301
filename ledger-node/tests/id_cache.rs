//! The id cache (`IdIndex::recent`): a ledger keeps a few id records in RAM and reads the
//! others back from its archive, yet every id takes effect once. A record leaves RAM only
//! once its group is durable; before that, the archive does not have it yet.

mod common;

use common::{Archive, Written};
use ledger::core::command;
use ledger::core::money::Assets;
use ledger::core::reply::{Code, Reply, Status};
use ledger::core::{Effects, Ledger, Limits, Permissions};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

struct Node {
    ledger: Ledger,
    written: Arc<Mutex<Written>>,
    /// Effects of groups applied and not yet written, by group number.
    unwritten: Vec<(u64, Effects)>,
    now: u64,
}

impl Node {
    fn new(cache: usize) -> Node {
        let assets = Assets::new(&[], |_| Decimal::from(1000));
        let mut ledger = Ledger::new("eu/berlin-1", assets, Limits { max_batch_ops: 10, max_hold_timeout_s: 3600 }, Permissions::open());
        let written = Arc::new(Mutex::new(Written::default()));
        ledger.archive_ids(cache, Box::new(Archive(written.clone())));
        let mut node = Node { ledger, written, unwritten: Vec::new(), now: 1_000 };
        for (id, account, flags) in [("o1", "issuer", json!(["issuance"])), ("o2", "wallet", json!([])), ("o3", "shop", json!([]))] {
            node.send(json!({"id": id, "op": "open_account", "account": account, "asset": "EUR", "flags": flags}));
        }
        node.send(json!({"id": "f1", "op": "transfer", "debit": "issuer", "credit": "wallet", "amount": "100.00", "asset": "EUR"}));
        node.commit_all();
        node
    }

    /// Applies one command as a group of its own, not yet durable.
    fn send(&mut self, body: Value) -> Reply {
        self.now += 10;
        let group = self.ledger.next_group();
        let parsed = command::parse(body.to_string().as_bytes(), 10).unwrap();
        let effects = self.ledger.submit(Some("till"), parsed, self.now);
        let reply = effects.reply.clone().unwrap();
        self.unwritten.push((group, effects));
        reply
    }

    /// The committer writes every group applied so far; the ledger hears of it.
    fn commit_all(&mut self) {
        let mut last = 0;
        let mut written = self.written.lock().unwrap();
        for (group, effects) in self.unwritten.drain(..) {
            written.commit(effects.recorded, effects.entry);
            last = group;
        }
        drop(written);
        self.ledger.group_durable(last);
    }
}

fn pay(id: &str, amount: &str) -> Value {
    json!({"id": id, "op": "transfer", "debit": "wallet", "credit": "shop", "amount": amount, "asset": "EUR"})
}

#[test]
fn evicted_ids_are_answered_from_the_archive_exactly() {
    let mut node = Node::new(2);
    let first = node.send(pay("p-1", "1.00"));
    let rejected = node.send(pay("p-2", "1000.00"));
    assert_eq!(rejected.code, Code::InsufficientFunds);
    let batch = node.send(json!({"id": "b-1", "op": "batch", "ops": [
        {"id": "b-1a", "op": "transfer", "debit": "wallet", "credit": "shop", "amount": "0.10", "asset": "EUR"},
        {"id": "b-1b", "op": "hold", "debit": "wallet", "credit": "shop", "amount": "0.20", "asset": "EUR"}
    ]}));
    assert_eq!(batch.code, Code::Ok, "{batch:?}");
    node.commit_all();
    for i in 0..10 {
        node.send(pay(&format!("fill-{i}"), "0.01"));
    }
    node.commit_all();
    let (in_ram, _, stats) = node.ledger.id_cache();
    assert!(in_ram <= 2 && stats.evictions > 0, "{in_ram} {stats:?}");

    // Long evicted: each resend gets its first reply back, marked duplicate; nothing moves.
    let posted_before = node.ledger.account("shop").unwrap().posted;
    let again = node.send(pay("p-1", "1.00"));
    assert_eq!(again, Reply { duplicate: true, ..first.clone() });
    let again = node.send(pay("p-2", "1000.00"));
    assert_eq!(again, Reply { duplicate: true, ..rejected.clone() });
    assert_eq!(node.send(pay("p-1", "2.00")).code, Code::IdConflict);
    // A batch op's id alone: its record says which batch committed it.
    let op_again = node.send(json!({"id": "b-1b", "op": "hold", "debit": "wallet", "credit": "shop", "amount": "0.20", "asset": "EUR"}));
    assert_eq!(op_again.code, Code::IdConflict, "an op is fingerprinted with its batch: {op_again:?}");
    let recorded = node.ledger.recorded(Some("till"), "b-1b").unwrap();
    assert_eq!((recorded.reply.status, recorded.reply.seq), (Status::Pending, batch.seq));
    assert_eq!(node.ledger.account("shop").unwrap().posted, posted_before, "nothing applied twice");
    assert!(node.ledger.id_cache().2.misses > 0);
}

#[test]
fn a_record_stays_in_ram_until_its_group_is_durable() {
    let mut node = Node::new(1);
    // One group, not durable yet, records three ids: the cache holds them all past its
    // capacity, since the archive does not have them yet.
    let batch = node.send(json!({"id": "b-1", "op": "batch", "ops": [
        {"id": "x-1", "op": "transfer", "debit": "wallet", "credit": "shop", "amount": "0.10", "asset": "EUR"},
        {"id": "x-2", "op": "transfer", "debit": "wallet", "credit": "shop", "amount": "0.20", "asset": "EUR"}
    ]}));
    assert_eq!(batch.code, Code::Ok);
    assert_eq!(node.ledger.id_cache().0, 3);
    // The next group reuses an op id before the first is written: still a conflict.
    let reuse = node.send(pay("x-1", "5.00"));
    assert_eq!(reuse.code, Code::IdConflict, "{reuse:?}");
    assert_eq!(node.ledger.account("shop").unwrap().posted, 30);
    // Once durable, the cache shrinks back to its capacity, and the archive answers.
    node.commit_all();
    node.send(pay("y-1", "0.01"));
    node.commit_all();
    node.send(pay("y-2", "0.01"));
    assert!(node.ledger.id_cache().0 <= 2, "{:?}", node.ledger.id_cache());
    assert_eq!(node.send(pay("x-2", "0.20")).code, Code::IdConflict);
}

#[test]
fn a_restarted_ledger_knows_every_id_without_holding_them() {
    let mut node = Node::new(4);
    let first = node.send(pay("p-1", "1.00"));
    for i in 0..20 {
        node.send(pay(&format!("fill-{i}"), "0.01"));
    }
    node.commit_all();
    // Start again from the journal, as `Store::load` does: old entries only teach the filter.
    let assets = Assets::new(&[], |_| Decimal::from(1000));
    let mut restarted = Ledger::new("eu/berlin-1", assets, Limits { max_batch_ops: 10, max_hold_timeout_s: 3600 }, Permissions::open());
    restarted.archive_ids(4, Box::new(Archive(node.written.clone())));
    let mut bodies: Vec<_> = node.written.lock().unwrap().bodies.values().cloned().collect();
    bodies.sort_by_key(|b| b.seq);
    restarted.replaying_to(bodies.last().unwrap().seq);
    for body in &bodies {
        restarted.replay(body).unwrap();
    }
    assert!(restarted.id_cache().0 <= 4, "{:?}", restarted.id_cache());
    node.ledger = restarted;
    let again = node.send(pay("p-1", "1.00"));
    assert_eq!(again, Reply { duplicate: true, ..first });
    let fresh = node.send(pay("p-new", "1.00"));
    assert_eq!((fresh.code, fresh.duplicate), (Code::Ok, false));
    let stats = node.ledger.id_cache().2;
    assert!(stats.misses >= 1 && stats.never_seen >= 1, "{stats:?}");
}
