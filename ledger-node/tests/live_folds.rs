//! How a ledger hands its changed accounts to the store when it folds them every few
//! groups (an edge, `store::live`): each group's own accounts as a delta, and every
//! `fold`-th group (or once too many accounts changed since the last fold) all of them
//! with their values now.

use ledger::core::live::MAX_UNFOLDED_ACCOUNTS;
use ledger::core::money::Assets;
use ledger::core::{command, AccountRows, Ledger, Limits, LiveChanges, Permissions};
use rust_decimal::Decimal;
use serde_json::json;

const NOW: u64 = 1_700_000_000_000;

fn ledger() -> Ledger {
    let assets = Assets::new(&[], |_| Decimal::from(1_000_000));
    Ledger::new("test/edge-1", assets, Limits { max_batch_ops: 10, max_hold_timeout_s: 3600 }, Permissions::open())
}

fn send(ledger: &mut Ledger, body: serde_json::Value) {
    let parsed = command::parse(body.to_string().as_bytes(), 10).expect("a valid command");
    let effects = ledger.submit(Some("dev-1"), parsed, NOW);
    assert_eq!(effects.reply.expect("a reply").code.as_str(), "ok", "{body}");
}

fn open(ledger: &mut Ledger, id: &str, account: &str, flags: &[&str]) {
    send(ledger, json!({"id": id, "op": "open_account", "account": account, "asset": "EUR", "flags": flags}));
}

fn pay(ledger: &mut Ledger, id: &str, debit: &str, credit: &str) {
    send(ledger, json!({"id": id, "op": "transfer", "debit": debit, "credit": credit, "amount": "1.00", "asset": "EUR"}));
}

fn names(live: &LiveChanges) -> Vec<&str> {
    live.accounts.iter().map(|(name, _)| name.as_str()).collect()
}

#[test]
fn a_group_gives_its_delta_and_every_third_group_folds_all_changed_since_the_last_fold() {
    let mut ledger = ledger();
    ledger.track_live_changes_folding(3);
    open(&mut ledger, "o1", "issuer", &["issuance"]);
    open(&mut ledger, "o2", "a", &[]);
    let first = ledger.take_live_changes();
    assert_eq!((first.accounts_are, names(&first)), (AccountRows::Delta, vec!["a", "issuer"]));
    open(&mut ledger, "o3", "b", &[]);
    pay(&mut ledger, "t1", "issuer", "b");
    let second = ledger.take_live_changes();
    assert_eq!((second.accounts_are, names(&second)), (AccountRows::Delta, vec!["b", "issuer"]), "only this group's");
    pay(&mut ledger, "t2", "issuer", "a");
    let third = ledger.take_live_changes();
    assert_eq!((third.accounts_are, names(&third)), (AccountRows::Fold, vec!["a", "b", "issuer"]), "all since the last fold");
    let issuer = third.accounts.iter().find(|(name, _)| name == "issuer").and_then(|(_, a)| a.clone()).expect("issuer");
    assert_eq!(issuer.posted, -200, "its value now, not as of an earlier group");
    pay(&mut ledger, "t3", "b", "a");
    let fourth = ledger.take_live_changes();
    assert_eq!((fourth.accounts_are, names(&fourth)), (AccountRows::Delta, vec!["a", "b"]), "a new cycle");
    // Accounts the store had in deltas at start-up go with the next fold, not in a delta.
    ledger.note_unfolded(["c".to_string()], 0);
    pay(&mut ledger, "t4", "a", "b");
    let fifth = ledger.take_live_changes();
    assert_eq!((fifth.accounts_are, names(&fifth)), (AccountRows::Delta, vec!["a", "b"]));
    pay(&mut ledger, "t5", "a", "b");
    let fold = ledger.take_live_changes();
    assert_eq!((fold.accounts_are, names(&fold)), (AccountRows::Fold, vec!["a", "b", "c"]));
    assert_eq!(fold.accounts[2].1, None, "an account the ledger does not hold is removed");
}

/// The intake takes a group's changes even when the group had nothing to answer (a
/// wake-up), and such a group is never written: it must neither count towards the fold
/// nor take the accounts the fold will write.
#[test]
fn a_group_that_changed_nothing_takes_nothing_and_does_not_count() {
    let mut ledger = ledger();
    ledger.track_live_changes_folding(2);
    open(&mut ledger, "o1", "issuer", &["issuance"]);
    assert_eq!(ledger.take_live_changes().accounts_are, AccountRows::Delta);
    for _ in 0..5 {
        let idle = ledger.take_live_changes();
        assert!(idle.is_empty(), "nothing changed: {idle:?}");
    }
    open(&mut ledger, "o2", "a", &[]);
    let fold = ledger.take_live_changes();
    assert_eq!((fold.accounts_are, names(&fold)), (AccountRows::Fold, vec!["a", "issuer"]), "the second group that changed something");
}

#[test]
fn a_ledger_that_folds_every_group_always_gives_rows() {
    let mut ledger = ledger();
    ledger.track_live_changes();
    open(&mut ledger, "o1", "issuer", &["issuance"]);
    for round in 0..3 {
        open(&mut ledger, &format!("o-{round}"), &format!("w{round}"), &[]);
        let live = ledger.take_live_changes();
        assert_eq!((live.accounts_are, live.accounts.len()), (AccountRows::Fold, if round == 0 { 2 } else { 1 }), "round {round}");
    }
}

/// A start-up with deltas in the file: the next fold comes as many groups sooner.
#[test]
fn deltas_left_in_the_file_bring_the_next_fold_forward() {
    let mut ledger = ledger();
    ledger.track_live_changes_folding(4);
    ledger.note_unfolded(["old".to_string()], 3);
    open(&mut ledger, "o1", "issuer", &["issuance"]);
    let first = ledger.take_live_changes();
    assert_eq!((first.accounts_are, names(&first)), (AccountRows::Fold, vec!["issuer", "old"]), "3 rows in the file + this group = 4");
}

/// A flood of new accounts between folds: the set kept for the fold, and the deltas a
/// start-up reads, stay bounded; the group that reaches the bound folds whatever its turn.
#[test]
fn too_many_accounts_changed_since_the_last_fold_fold_at_once() {
    let mut ledger = ledger();
    ledger.track_live_changes_folding(1_000_000);
    open(&mut ledger, "o-issuer", "issuer", &["issuance"]);
    let mut opened = 1;
    let mut group = 0;
    loop {
        for _ in 0..4_096 {
            open(&mut ledger, &format!("o{opened}"), &format!("flood:{opened}"), &[]);
            opened += 1;
        }
        group += 1;
        let live = ledger.take_live_changes();
        if live.accounts_are == AccountRows::Fold {
            assert_eq!(live.accounts.len(), opened, "every account changed since the last fold");
            assert!(live.accounts.len() >= MAX_UNFOLDED_ACCOUNTS && live.accounts.len() < MAX_UNFOLDED_ACCOUNTS + 4_096);
            break;
        }
        assert!(opened < MAX_UNFOLDED_ACCOUNTS, "group {group}: {opened} accounts changed and still no fold");
    }
}
