//! A node opens a file the earlier builds' redb (4.4, same file format v3) wrote. The
//! file is made here: an edge takes a few commands and is SIGKILLed, then every table of
//! its file is copied into a new file written by redb 4.4 (the `redb4` dev-dependency),
//! which the node, started again, opens in its place.

use harness::{cmd, load_ledger, Device, NodeOptions, NodeProcess};
use redb::{ReadableDatabase, ReadableTable, TableHandle};
use serde_json::json;
use std::path::Path;

/// Copies table `$name` with key `$k` and value `$v` from this build's redb to redb 4.4.
macro_rules! copy_table {
    ($read:expr, $write:expr, $name:expr, $k:ty, $v:ty) => {{
        let from = $read.open_table(redb::TableDefinition::<$k, $v>::new($name)).expect("open the table to copy");
        let mut to = $write.open_table(redb4::TableDefinition::<$k, $v>::new($name)).expect("create it in redb 4.4");
        let mut rows = 0;
        for row in from.iter().expect("read the table") {
            let (key, value) = row.expect("a row");
            to.insert(key.value(), value.value()).expect("write the row");
            rows += 1;
        }
        rows
    }};
}

/// Writes at `to`, with redb 4.4, every table of the file at `from` (the store's key and
/// value types, by table name).
fn rewrite_with_redb_4_4(from: &Path, to: &Path) -> usize {
    let source = redb::Database::open(from).expect("open the killed node's file");
    let read = source.begin_read().expect("read");
    assert_eq!(read.list_multimap_tables().expect("list").count(), 0, "the store keeps no multimap tables");
    let target = redb4::Database::create(to).expect("create a redb 4.4 file");
    let write = target.begin_write().expect("write");
    let mut rows = 0;
    for table in read.list_tables().expect("list the tables") {
        let name = table.name().to_string();
        rows += match name.as_str() {
            "journal" | "live_account_deltas" => copy_table!(read, write, &name, u64, &[u8]),
            "meta" => copy_table!(read, write, &name, &str, &str),
            "replica" => copy_table!(read, write, &name, (&str, u64), &[u8]),
            _ => copy_table!(read, write, &name, &str, &[u8]),
        };
    }
    write.commit().expect("commit the copy");
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_by_redb_4_4_opens_with_its_ids_and_books() {
    let mut node = NodeProcess::start(NodeOptions::default());
    let device = Device::connect(node.port, "terminal-1").await;
    let mut issue = cmd::transfer("q-3", "issuer:eur", "wallet:alice", "50.00", "EUR");
    issue["metadata"] = json!({"till": 3});
    for (command, code) in [
        (cmd::open("q-1", "issuer:eur", "EUR", &["issuance"]), "ok"),
        (cmd::open("q-2", "wallet:alice", "EUR", &["no_overdraft"]), "ok"),
        (issue.clone(), "ok"),
        (cmd::transfer("q-4", "wallet:alice", "wallet:bob", "1.00", "EUR"), "unknown_account"),
        (cmd::hold("q-5", "wallet:alice", "issuer:eur", "5.00", "EUR", None), "ok"),
    ] {
        let reply = device.request(command).await;
        assert_eq!(reply["code"], code, "{reply}");
    }
    device.disconnect().await;
    node.kill9();

    let old = node.dir.join("written-by-redb-4.4.redb");
    let rows = rewrite_with_redb_4_4(&node.db_path(), &old);
    assert!(rows > 10, "the journal, id records, live tables and meta were copied: {rows} rows");
    std::fs::rename(&old, node.db_path()).expect("put the redb 4.4 file in the node's place");
    node.spawn();

    let device = Device::connect(node.port, "terminal-1").await;
    // An accepted command's resend: its record points into the journal.
    let again = device.request(issue).await;
    assert_eq!((&again["code"], &again["seq"], &again["duplicate"]), (&json!("ok"), &json!(3), &json!(true)), "{again}");
    // A rejection's resend: its record holds the reply and the fingerprint (JSON).
    let again = device.request(cmd::transfer("q-4", "wallet:alice", "wallet:bob", "1.00", "EUR")).await;
    assert_eq!((&again["code"], &again["duplicate"]), (&json!("unknown_account"), &json!(true)), "{again}");
    // Same id, other content: a conflict, not a duplicate.
    let conflict = device.request(cmd::transfer("q-3", "issuer:eur", "wallet:alice", "60.00", "EUR")).await;
    assert_eq!(conflict["code"], "id_conflict", "{conflict}");
    // The books and the hold, from the live tables.
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
    let ledger = load_ledger(&node.dir.join("data"), "test/edge-1").expect("the file verifies after the node wrote to it");
    ledger.check_invariants().expect("books balance");
}
