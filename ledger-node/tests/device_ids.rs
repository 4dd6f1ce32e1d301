//! Ids are scoped to the device that sent them (SPEC §4): two devices may use the same id,
//! a resend is matched against its own sender's record only, and no device can resolve,
//! learn or block another's command through its id. Checked on the core, then again on a
//! ledger rebuilt from the journal.

use ledger::core::command::{self, Command};
use ledger::core::idempotency::IdKey;
use ledger::core::money::Assets;
use ledger::core::reply::{Code, Reply, Status};
use ledger::core::{EntryBody, Ledger, Limits, Permissions};
use rust_decimal::Decimal;
use serde_json::{json, Value};

fn ledger() -> Ledger {
    let assets = Assets::new(&[], |_| Decimal::from(1000));
    Ledger::new("eu/berlin-1", assets, Limits { max_batch_ops: 10, max_hold_timeout_s: 3600 }, Permissions::open())
}

struct Node {
    ledger: Ledger,
    journal: Vec<EntryBody>,
    now: u64,
}

impl Node {
    fn new() -> Node {
        let mut node = Node { ledger: ledger(), journal: Vec::new(), now: 1_000 };
        node.send("setup", json!({"id": "o1", "op": "open_account", "account": "issuer", "asset": "EUR", "flags": ["issuance"]}));
        for wallet in ["wallet:a", "wallet:b", "shop"] {
            node.send("setup", json!({"id": format!("o-{wallet}"), "op": "open_account", "account": wallet, "asset": "EUR"}));
        }
        for wallet in ["wallet:a", "wallet:b"] {
            let fund = json!({"id": format!("f-{wallet}"), "op": "transfer", "debit": "issuer", "credit": wallet, "amount": "100.00", "asset": "EUR"});
            assert_eq!(node.send("setup", fund).code, Code::Ok);
        }
        node
    }

    fn send(&mut self, device: &str, body: Value) -> Reply {
        self.now += 10;
        let parsed: Command = command::parse(body.to_string().as_bytes(), 10).unwrap();
        let effects = self.ledger.submit(Some(device), parsed, self.now);
        self.journal.extend(effects.entry);
        effects.reply.unwrap()
    }

    fn rebuilt(&self) -> Ledger {
        let mut rebuilt = ledger();
        for body in &self.journal {
            rebuilt.replay(body).unwrap();
        }
        rebuilt
    }
}

fn pay(id: &str, debit: &str, amount: &str) -> Value {
    json!({"id": id, "op": "transfer", "debit": debit, "credit": "shop", "amount": amount, "asset": "EUR"})
}

fn hold(id: &str, debit: &str, amount: &str) -> Value {
    json!({"id": id, "op": "hold", "debit": debit, "credit": "shop", "amount": amount, "asset": "EUR"})
}

#[test]
fn two_devices_use_the_same_id_and_each_gets_its_own_effect() {
    let mut node = Node::new();
    let a = node.send("dev-a", pay("t-1", "wallet:a", "1.00"));
    let b = node.send("dev-b", pay("t-1", "wallet:b", "2.00"));
    assert_eq!((a.status, b.status), (Status::Committed, Status::Committed), "{a:?} {b:?}");
    assert_ne!(a.seq, b.seq, "two entries");
    assert!(!b.duplicate);
    assert_eq!(node.ledger.account("shop").unwrap().posted, 300);

    // Each resend is matched against its own sender's record.
    let again_a = node.send("dev-a", pay("t-1", "wallet:a", "1.00"));
    assert!(again_a.duplicate && again_a.seq == a.seq, "{again_a:?}");
    let again_b = node.send("dev-b", pay("t-1", "wallet:b", "2.00"));
    assert!(again_b.duplicate && again_b.seq == b.seq, "{again_b:?}");
    // dev-a's content under its own id is a conflict for dev-a only.
    assert_eq!(node.send("dev-a", pay("t-1", "wallet:b", "2.00")).code, Code::IdConflict);
    assert_eq!(node.ledger.account("shop").unwrap().posted, 300, "nothing applied twice");

    // A third device sending dev-a's exact command is a new command of its own: it never
    // gets dev-a's recorded reply (no reading another device's results by guessing ids).
    let c = node.send("dev-c", pay("t-1", "wallet:a", "1.00"));
    assert!(!c.duplicate && c.seq != a.seq, "{c:?}");

    // The journal alone rebuilds each device's records apart.
    let mut rebuilt = node.rebuilt();
    for device in ["dev-a", "dev-b", "dev-c"] {
        assert_eq!(rebuilt.recorded(Some(device), "t-1"), node.ledger.recorded(Some(device), "t-1"), "{device}");
        assert!(rebuilt.recorded(Some(device), "t-1").is_some());
    }
    assert_ne!(rebuilt.recorded(Some("dev-a"), "t-1"), rebuilt.recorded(Some("dev-b"), "t-1"));
    assert!(rebuilt.recorded(Some("dev-d"), "t-1").is_none());
}

#[test]
fn a_device_cannot_squat_or_block_another_devices_next_id() {
    let mut node = Node::new();
    // dev-b guesses dev-a's next id and gets it rejected first.
    let squat = node.send("dev-b", pay("t-9", "wallet:a", "999.00"));
    assert_eq!(squat.code, Code::InsufficientFunds);
    let real = node.send("dev-a", pay("t-9", "wallet:a", "1.00"));
    assert_eq!((real.status, real.code, real.duplicate), (Status::Committed, Code::Ok, false), "{real:?}");
    // Same for a batch op id.
    node.send("dev-b", pay("op-1", "wallet:b", "0.01"));
    let batch = json!({"id": "b-1", "op": "batch", "ops": [
        {"id": "op-1", "op": "transfer", "debit": "wallet:a", "credit": "shop", "amount": "0.50", "asset": "EUR"}
    ]});
    let reply = node.send("dev-a", batch);
    assert_eq!(reply.code, Code::Ok, "{reply:?}");
}

#[test]
fn a_device_resolves_only_its_own_holds() {
    let mut node = Node::new();
    assert_eq!(node.send("dev-a", hold("h-1", "wallet:a", "5.00")).status, Status::Pending);
    // dev-b names dev-a's hold: no such hold of dev-b's, nothing moves.
    for op in ["post", "void"] {
        let reply = node.send("dev-b", json!({"id": format!("{op}-x"), "op": op, "pending_id": "h-1"}));
        assert_eq!(reply.code, Code::UnknownPending, "{reply:?}");
    }
    assert!(node.ledger.hold(IdKey::new(Some("dev-a"), "h-1").as_str()).unwrap().is_pending());
    // dev-b's own hold of the same id is its own.
    assert_eq!(node.send("dev-b", hold("h-1", "wallet:b", "3.00")).status, Status::Pending);
    let posted = node.send("dev-b", json!({"id": "p-1", "op": "post", "pending_id": "h-1"}));
    assert_eq!(posted.code, Code::Ok, "{posted:?}");
    assert!(node.ledger.hold(IdKey::new(Some("dev-a"), "h-1").as_str()).unwrap().is_pending(), "dev-a's hold untouched");
    assert_eq!(node.ledger.account("wallet:a").unwrap().pending_debits, 500);
    assert_eq!(node.ledger.account("wallet:b").unwrap().posted, 9_700);
    // dev-a still resolves its own.
    let voided = node.send("dev-a", json!({"id": "v-1", "op": "void", "pending_id": "h-1"}));
    assert_eq!(voided.code, Code::Ok, "{voided:?}");
    // Another device's hold is named device:id (here every device may debit every account).
    assert_eq!(node.send("dev-a", hold("h-2", "wallet:a", "1.00")).status, Status::Pending);
    let posted = node.send("dev-b", json!({"id": "p-2", "op": "post", "pending_id": "dev-a:h-2"}));
    assert_eq!(posted.code, Code::Ok, "{posted:?}");
    assert!(!node.ledger.hold(IdKey::new(Some("dev-a"), "h-2").as_str()).unwrap().is_pending());
    // A device's own hold whose id looks like a key is found first: no shadowing across devices.
    assert_eq!(node.send("dev-b", hold("dev-a:h-3", "wallet:b", "1.00")).status, Status::Pending);
    assert_eq!(node.send("dev-a", hold("h-3", "wallet:a", "1.00")).status, Status::Pending);
    let voided = node.send("dev-b", json!({"id": "v-3", "op": "void", "pending_id": "dev-a:h-3"}));
    assert_eq!(voided.code, Code::Ok, "{voided:?}");
    assert!(!node.ledger.hold(IdKey::new(Some("dev-b"), "dev-a:h-3").as_str()).unwrap().is_pending());
    assert!(node.ledger.hold(IdKey::new(Some("dev-a"), "h-3").as_str()).unwrap().is_pending());
    node.ledger.check_invariants().unwrap();
    let rebuilt = node.rebuilt();
    for name in ["wallet:a", "wallet:b", "shop"] {
        assert_eq!(rebuilt.account(name), node.ledger.account(name), "{name}");
    }
}
