//! A node opens the file an older build left: `fixtures/edge-written-by-redb-4.4.redb` was
//! written by the build before redb 5.0 (redb 4.4, same file format v3) as edge
//! `test/edge-1`, then SIGKILLed, so its open also repairs. Device `terminal-1` sent:
//! `q-1`, `q-2` open `issuer:eur` (issuance) and `wallet:alice` (no overdraft); `q-3` issues
//! 50.00 EUR to Alice with metadata `{"till":3}`; `q-4` pays the unknown `wallet:bob`
//! (rejected, `unknown_account`); `q-5` holds 5.00 from Alice. Journal head 4.

use harness::{cmd, load_ledger, Device, NodeOptions, NodeProcess};
use serde_json::json;
use std::path::Path;

const FIXTURE: &str = "fixtures/edge-written-by-redb-4.4.redb";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_by_redb_4_4_and_killed_opens_with_its_ids_and_books() {
    let mut node = NodeProcess::start(NodeOptions::default());
    node.kill9();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    std::fs::copy(&fixture, node.db_path()).expect("copy the fixture over the node's file");
    node.spawn();

    let device = Device::connect(node.port, "terminal-1").await;
    // An accepted command's resend: its record points into the journal.
    let mut issue = cmd::transfer("q-3", "issuer:eur", "wallet:alice", "50.00", "EUR");
    issue["metadata"] = json!({"till": 3});
    let again = device.request(issue).await;
    assert_eq!((&again["code"], &again["seq"], &again["duplicate"]), (&json!("ok"), &json!(3), &json!(true)), "{again}");
    // A rejection's resend: its record holds the reply and the fingerprint (JSON).
    let again = device.request(cmd::transfer("q-4", "wallet:alice", "wallet:bob", "1.00", "EUR")).await;
    assert_eq!((&again["code"], &again["duplicate"]), (&json!("unknown_account"), &json!(true)), "{again}");
    // Same id, other content: a conflict, not a duplicate.
    let conflict = device.request(cmd::transfer("q-3", "issuer:eur", "wallet:alice", "60.00", "EUR")).await;
    assert_eq!(conflict["code"], "id_conflict", "{conflict}");
    // The books and the hold from the live tables.
    let balance = device.request(cmd::balance("b-1", "wallet:alice")).await;
    let view = &balance["balance"];
    assert_eq!(
        (&view["posted"], &view["pending_debits"], &view["available"]),
        (&json!("50.00"), &json!("5.00"), &json!("45.00")),
        "{balance}"
    );
    let void = device.request(cmd::void("q-6", "q-5")).await;
    assert_eq!((&void["code"], &void["seq"]), (&json!("ok"), &json!(5)), "{void}");
    device.disconnect().await;

    node.kill9();
    let ledger = load_ledger(&node.dir.join("data"), "test/edge-1").expect("the file verifies after the new build wrote to it");
    ledger.check_invariants().expect("books balance");
}
