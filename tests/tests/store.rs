//! The redb file: a node refuses to start on a damaged or foreign database and says why
//! and where (a tampered entry, a journal cut short, another node's file, assets whose
//! scale changed under recorded balances), and a commit that would write over the journal's
//! rows is refused.

use ledger::core::command::{Command, Flag, Movement, Op};
use ledger::core::{Effects, Ledger};
use ledger::store::Store;
use redb::{Database, ReadableTable, TableDefinition};
use std::path::Path;

const NODE: &str = "test/edge-1";
const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");

fn config(assets: &str) -> config::NodeConfig {
    config::NodeConfig::from_toml(&format!("[node]\nid = \"{NODE}\"\n{assets}")).unwrap()
}

fn open(id: &str, account: &str, asset: &str, flags: Vec<Flag>) -> Command {
    Command { id: id.into(), op: Op::OpenAccount { account: account.into(), asset: asset.into(), flags, overdraft_limit: None } }
}

fn transfer(id: &str, debit: &str, credit: &str, amount: &str, asset: &str) -> Command {
    let movement = Movement { debit: debit.into(), credit: credit.into(), amount: amount.into(), asset: asset.into(), metadata: None };
    Command { id: id.into(), op: Op::Transfer(movement) }
}

/// Books a few commands into a fresh file the way a node does, and returns its directory.
fn booked(dir: &Path, assets: &str) {
    booked_with(dir, assets, 0);
}

/// `booked`, then `more` transfers of 0.001 (entries 5 to 4 + more).
fn booked_with(dir: &Path, assets: &str, more: usize) {
    let config = config(assets);
    let store = Store::open(dir, NODE).unwrap();
    let mut ledger = ledger::setup::ledger_for(&config);
    let mut chain = store.load(&mut ledger).unwrap();
    let mut commands = vec![
        open("o1", "issuer", "KWH", vec![Flag::Issuance]),
        open("o2", "meter", "KWH", vec![]),
        transfer("t1", "issuer", "meter", "1.250", "KWH"),
        transfer("t2", "issuer", "meter", "2.000", "KWH"),
    ];
    commands.extend((0..more).map(|i| transfer(&format!("m{i}"), "issuer", "meter", "0.001", "KWH")));
    let effects: Vec<Effects> = commands.into_iter().map(|c| ledger.submit(Some("dev"), c, 1_000)).collect();
    assert!(effects.iter().all(|e| e.reply.as_ref().unwrap().code.as_str() == "ok"));
    store.commit(&mut chain, &effects, &ledger.take_live_changes()).unwrap();
}

fn load(dir: &Path, assets: &str) -> Result<Ledger, String> {
    load_inner(dir, assets)
}

fn load_err(dir: &Path, assets: &str) -> String {
    match load_inner(dir, assets) {
        Ok(_) => panic!("the file loaded"),
        Err(e) => e,
    }
}

fn load_inner(dir: &Path, assets: &str) -> Result<Ledger, String> {
    let store = Store::open(dir, NODE).map_err(|e| e.to_string())?;
    let mut ledger = ledger::setup::ledger_for(&config(assets));
    store.load(&mut ledger).map_err(|e| e.to_string())?;
    Ok(ledger)
}

const KWH3: &str = "[[assets]]\ncode = \"KWH\"\nscale = 3\n";

#[test]
fn a_clean_file_loads_and_balances() {
    let dir = tempfile::tempdir().unwrap();
    booked(dir.path(), KWH3);
    let mut ledger = load(dir.path(), KWH3).unwrap();
    assert_eq!(ledger.head().seq, 4);
    assert_eq!(ledger.account("meter").unwrap().posted, 3250);
    assert!(ledger.recorded(Some("dev"), "t2").is_some(), "the journal restores the ids of accepted commands");
}

/// Changes the amount of entry 3 (1.250) in its row, which holds the body alone (no row
/// before 64 holds a hash).
fn tamper_entry_3(dir: &Path) {
    let db = Database::create(dir.join("ledger.redb")).unwrap();
    let tx = db.begin_write().unwrap();
    {
        let mut journal = tx.open_table(JOURNAL).unwrap();
        let stored = journal.get(3).unwrap().unwrap().value().to_vec();
        let json = serde_json::to_string(&ledger::core::entry_codec::decode(&stored).unwrap()).unwrap();
        assert!(json.contains("1250"));
        let body: ledger::core::EntryBody = serde_json::from_str(&json.replace("1250", "9250")).unwrap();
        let forged = ledger::core::entry_codec::encode(&body);
        assert_ne!(stored, forged);
        journal.insert(3, forged.as_slice()).unwrap();
    }
    tx.commit().unwrap();
}

#[test]
fn a_tampered_entry_is_refused_with_the_path() {
    // Four entries: the change shows against the head the last commit recorded.
    let dir = tempfile::tempdir().unwrap();
    booked(dir.path(), KWH3);
    tamper_entry_3(dir.path());
    let err = load_err(dir.path(), KWH3);
    assert!(err.contains("journal entries 1 to 4") && err.contains("tampered") && err.contains("ledger.redb"), "{err}");
    // Seventy: it shows at entry 64, the first row that holds its hash.
    let dir = tempfile::tempdir().unwrap();
    booked_with(dir.path(), KWH3, 66);
    tamper_entry_3(dir.path());
    let err = load_err(dir.path(), KWH3);
    assert!(err.contains("journal entries 1 to 64 do not hash to the hash stored with entry 64") && err.contains("tampered"), "{err}");
    let verify = std::process::Command::new(harness::ledgerctl_binary())
        .args(["verify", "--db", dir.path().join("ledger.redb").to_str().unwrap()])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&verify.stdout).to_string() + &String::from_utf8_lossy(&verify.stderr);
    assert!(!verify.status.success() && out.contains("entries 1 to 64"), "ledgerctl verify --db: {out}");
}

#[test]
fn a_journal_cut_short_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    booked(dir.path(), KWH3);
    let db = Database::create(dir.path().join("ledger.redb")).unwrap();
    let tx = db.begin_write().unwrap();
    tx.open_table(JOURNAL).unwrap().remove(4).unwrap();
    tx.commit().unwrap();
    drop(db);
    let err = load_err(dir.path(), KWH3);
    assert!(err.contains("entries are missing"), "{err}");
}

#[test]
fn another_nodes_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    booked(dir.path(), KWH3);
    let err = Store::open(dir.path(), "test/edge-2").err().unwrap().to_string();
    assert!(err.contains("belongs to node test/edge-1") && err.contains("ledger.redb"), "{err}");
}

#[test]
fn a_file_of_the_format_before_device_scoped_ids_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    booked(dir.path(), KWH3);
    {
        let db = redb::Database::open(dir.path().join("ledger.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(redb::TableDefinition::<&str, &str>::new("meta")).unwrap().insert("format", "edgeledger-1").unwrap();
        tx.commit().unwrap();
    }
    let err = Store::open(dir.path(), NODE).err().unwrap().to_string();
    assert!(err.contains("format edgeledger-1") && err.contains("empty node.data_dir") && err.contains("ledger.redb"), "{err}");
}

#[test]
fn a_changed_asset_scale_is_refused_rather_than_misread() {
    let dir = tempfile::tempdir().unwrap();
    booked(dir.path(), KWH3);
    let err = load_err(dir.path(), "[[assets]]\ncode = \"KWH\"\nscale = 2\n");
    assert!(err.contains("KWH at scale 3") && err.contains("scale 2"), "{err}");
    let err = load_err(dir.path(), "");
    assert!(err.contains("does not define"), "{err}");
}

#[test]
fn an_unreadable_path_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = Store::open(&file, NODE).err().unwrap().to_string();
    assert!(err.contains("not-a-dir"), "{err}");
}

#[test]
fn a_commit_that_would_write_over_journal_rows_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    booked(dir.path(), KWH3);
    // Books rebuilt from nothing by mistake: their chain starts at entry 1 again.
    let store = Store::open(dir.path(), NODE).unwrap();
    let mut ledger = ledger::setup::ledger_for(&config(KWH3));
    let mut stale = ledger::core::journal::Chain::default();
    let effects = vec![ledger.submit(Some("dev"), open("x1", "other", "KWH", vec![]), 1_000)];
    assert!(effects[0].entry.is_some(), "the command makes an entry");
    let err = store.commit(&mut stale, &effects, &ledger.take_live_changes()).expect_err("the commit is refused").to_string();
    assert!(err.contains("ledger.redb") && err.contains("journal entry 1 would be written over"), "{err}");
    drop(store);
    // Entry 1 is still the one the chain links from: the file loads as it was.
    let ledger = load(dir.path(), KWH3).unwrap();
    assert_eq!(ledger.head().seq, 4);
    assert!(ledger.account("other").is_none() && ledger.account("meter").is_some());
}
