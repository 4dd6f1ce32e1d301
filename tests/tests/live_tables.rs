//! The live tables in a real redb file (SPEC §10): an edge books a workload (holds posted,
//! voided and expired, rejections, a batch) the way its intake and committer do, then
//! starts again from the tables without replaying its journal; the books it gets equal a
//! full replay. A file written before the tables existed is replayed once and gets them; a
//! table that disagrees with the journal is found by `ledgerctl verify --db`.

use harness::run_ledgerctl;
use ledger::core::command::{self, Command};
use ledger::core::id_filter::IdFilter;
use ledger::core::journal::Entry;
use ledger::core::reply::Resolution;
use ledger::core::{Effects, HoldState, Ledger, LiveState};
use ledger::store::{ReplicaFrame, Rows, Store, StoreArchive, StoreIds, FOLD_EVERY_GROUPS};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::json;
use std::sync::Arc;

const NODE: &str = "test/edge-1";
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const LIVE_ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("live_accounts");
const LIVE_HOLDS: TableDefinition<&str, &[u8]> = TableDefinition::new("live_holds");
const LIVE_HOLDS_RESOLVED: TableDefinition<&str, &[u8]> = TableDefinition::new("live_holds_resolved");
const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
const IDS: TableDefinition<&str, &[u8]> = TableDefinition::new("ids");

/// Rewrites a file's journal and id records as releases before the binary encodings wrote
/// them: JSON bodies (chained anew over those bytes, with the head to match) in rows that
/// repeat the previous entry's hash, and id records with the fingerprint in hex and
/// fixed-width numbers.
fn as_older_release(tx: &redb::WriteTransaction) {
    let mut journal = tx.open_table(JOURNAL).unwrap();
    let rows: Vec<(u64, Vec<u8>)> = journal.iter().unwrap().map(|r| r.unwrap()).map(|(k, v)| (k.value(), v.value().to_vec())).collect();
    let mut prev = ledger::core::journal::GENESIS;
    for (seq, bytes) in &rows {
        let body = serde_json::to_vec(&Rows::Compact.body(*seq, bytes).unwrap()).unwrap();
        let hash = ledger::core::journal::hash_of(&prev, *seq, &body);
        journal.insert(*seq, Entry { seq: *seq, prev, hash, body }.encode().as_slice()).unwrap();
        prev = hash;
    }
    let head = format!("{}:{}", rows.len(), ledger::core::journal::hex(&prev));
    tx.open_table(META).unwrap().insert("head", head.as_str()).unwrap();
    let mut ids = tx.open_table(IDS).unwrap();
    let records: Vec<(String, Vec<u8>)> =
        ids.iter().unwrap().map(|r| r.unwrap()).map(|(k, v)| (k.value().to_string(), v.value().to_vec())).collect();
    let mut rewritten = 0;
    for (key, bytes) in records {
        // Tag 2 holds its fingerprint; tag 4's is computed again from its entry.
        let (fingerprint, mut rest) = match bytes[0] {
            2 => (Some(bytes[1..17].iter().map(|b| format!("{b:02x}")).collect::<String>()), &bytes[17..]),
            4 => (None, &bytes[1..]),
            _ => continue, // a rejection's record: the same then
        };
        let mut varint = || {
            let (mut value, mut shift) = (0u64, 0);
            loop {
                let b = rest[0];
                rest = &rest[1..];
                value |= u64::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    return value;
                }
            }
        };
        let (seq, op) = (varint(), varint());
        let fingerprint = fingerprint.unwrap_or_else(|| {
            let (_, row) = rows.iter().find(|(s, _)| *s == seq).expect("the record's entry");
            let body = Rows::Compact.body(seq, row).unwrap();
            ledger::core::idempotency::fingerprint_in_entry(&body, (op > 0).then(|| op as usize - 1)).unwrap().to_string()
        });
        let mut old = vec![1u8];
        old.extend_from_slice(fingerprint.as_bytes());
        old.extend_from_slice(&seq.to_be_bytes());
        old.extend_from_slice(&(if op == 0 { u32::MAX } else { op as u32 - 1 }).to_be_bytes());
        ids.insert(key.as_str(), old.as_slice()).unwrap();
        rewritten += 1;
    }
    assert!(rewritten > 40, "the workload's accepted ids");
}

fn config() -> config::NodeConfig {
    let mut config = config::NodeConfig::embedded_default();
    config.node.id = NODE.to_string();
    config
}

/// Resolved holds an edge of these tests keeps in RAM: most are read back from the file.
const HOLD_CACHE: usize = 1;

/// A ledger as an edge builds it: id and hold archives over the file, books from the live
/// tables; its id filter has learned the file's ids only once `learn_ids` was called with
/// what this returns (the edge does it on a thread of its own).
fn open_edge(store: &Arc<Store>) -> Result<(Ledger, ledger::core::journal::Chain, Option<IdFilter>), String> {
    open_edge_folding(store, FOLD_EVERY_GROUPS)
}

/// As `open_edge`, folding the account deltas every `fold` groups.
fn open_edge_folding(store: &Arc<Store>, fold: u32) -> Result<(Ledger, ledger::core::journal::Chain, Option<IdFilter>), String> {
    let mut ledger = ledger::setup::ledger_for(&config());
    let (archive, fault) = StoreIds::new(store.clone());
    ledger.archive_ids(16, Box::new(archive));
    let finals = StoreArchive::new(store.clone(), fault);
    ledger.archive_holds(HOLD_CACHE, Box::new(finals.clone()));
    ledger.archive_received(HOLD_CACHE, Box::new(finals));
    let opened = store.open_books(&mut ledger).map_err(|e| e.to_string())?;
    ledger.track_live_changes_folding(fold);
    ledger.note_unfolded(opened.unfolded, opened.unfolded_rows);
    Ok((ledger, opened.chain, opened.ids_to_learn))
}

/// The books of an edge whose groups are all durable: what it holds in RAM, and the
/// resolved holds that left RAM as its file holds them (no other hold may have left).
fn books_of(store: &Store, ledger: &Ledger) -> LiveState {
    let mut books = ledger.live_state();
    let tables = store.live_state().unwrap().expect("the live tables");
    for (id, hold) in tables.holds {
        if let std::collections::btree_map::Entry::Vacant(missing) = books.holds.entry(id) {
            assert!(hold.may_leave_ram(), "hold {} left RAM unresolved", missing.key());
            missing.insert(hold);
        }
    }
    // Decisions on transfers received are final: any may have left.
    for (key, received) in tables.received {
        books.received.entry(key).or_insert(received);
    }
    books
}

fn learn_ids(store: &Store, ledger: &mut Ledger, mut filter: IdFilter) {
    let ids = store.learn_ids(&mut filter).expect("the ids scan");
    // Sized for the file's ids (a few hundred here), not a default first layer of 1.25 MiB.
    assert!(filter.bytes() < 64 << 10, "{} bytes of filter for {ids} ids", filter.bytes());
    ledger.complete_id_filter(filter);
}

fn replayed(store: &Store) -> Ledger {
    let mut ledger = ledger::setup::ledger_for(&config());
    store.load(&mut ledger).expect("the journal replays");
    ledger
}

fn parse(value: serde_json::Value) -> Command {
    command::parse(value.to_string().as_bytes(), 10).unwrap_or_else(|e| panic!("{value}: {e:?}"))
}

/// Books `commands` in groups of three, expiring what is due first, as the intake does;
/// each group is one commit with its live changes.
fn book(store: &Store, ledger: &mut Ledger, chain: &mut ledger::core::journal::Chain, commands: Vec<serde_json::Value>, now: u64) {
    for group in commands.chunks(3) {
        let number = ledger.next_group();
        let mut effects: Vec<Effects> = ledger.expire_due(now);
        for c in group {
            effects.push(ledger.submit(Some("pos-1"), parse(c.clone()), now));
        }
        store.commit(chain, &effects, &ledger.take_live_changes()).expect("commit");
        ledger.group_durable(number);
    }
}

fn workload() -> Vec<serde_json::Value> {
    let mut commands = vec![
        json!({"id": "o1", "op": "open_account", "account": "issuer", "asset": "EUR", "flags": ["issuance"]}),
        json!({"id": "o2", "op": "open_account", "account": "wallet:alice", "asset": "EUR", "flags": []}),
        json!({"id": "o3", "op": "open_account", "account": "merchant:cafe", "asset": "EUR", "flags": []}),
        json!({"id": "o4", "op": "open_account", "account": "charger:7", "asset": "EUR", "flags": []}),
        json!({"id": "f1", "op": "transfer", "debit": "issuer", "credit": "wallet:alice", "amount": "500.00", "asset": "EUR"}),
        json!({"id": "h1", "op": "hold", "debit": "wallet:alice", "credit": "charger:7", "amount": "25.00", "asset": "EUR"}),
        json!({"id": "h2", "op": "hold", "debit": "wallet:alice", "credit": "merchant:cafe", "amount": "5.00", "asset": "EUR"}),
        json!({"id": "h3", "op": "hold", "debit": "wallet:alice", "credit": "merchant:cafe", "amount": "7.00", "asset": "EUR", "timeout_s": 1}),
        json!({"id": "h4", "op": "hold", "debit": "wallet:alice", "credit": "merchant:cafe", "amount": "1.00", "asset": "EUR"}),
        json!({"id": "p1", "op": "post", "pending_id": "h1", "amount": "18.40"}),
        json!({"id": "v2", "op": "void", "pending_id": "h2"}),
        json!({"id": "x1", "op": "transfer", "debit": "wallet:alice", "credit": "merchant:cafe", "amount": "9999.00", "asset": "EUR"}),
        json!({"id": "b1", "op": "batch", "ops": [
            {"id": "b1-a", "op": "transfer", "debit": "wallet:alice", "credit": "merchant:cafe", "amount": "1.00", "asset": "EUR"},
            {"id": "b1-b", "op": "transfer", "debit": "wallet:alice", "credit": "charger:7", "amount": "2.00", "asset": "EUR"}
        ]}),
        json!({"id": "c1", "op": "close_account", "account": "charger:7"}),
        // A float that serde_json does not read back to the same bytes: the id's record
        // must keep the fingerprint taken at intake, or its resend reads as a conflict.
        json!({"id": "k1", "op": "transfer", "debit": "wallet:alice", "credit": "merchant:cafe", "amount": "0.01", "asset": "EUR", "metadata": {"kwh": 9.8e26, "rate": 0.1}}),
    ];
    for i in 0..40 {
        commands.push(json!({"id": format!("t{i}"), "op": "transfer", "debit": "wallet:alice", "credit": "merchant:cafe", "amount": "0.10", "asset": "EUR"}));
    }
    commands
}

fn assert_same(what: &str, a: &LiveState, b: &LiveState) {
    if let Some(difference) = a.difference(b) {
        panic!("{what}: {difference}");
    }
}

#[test]
fn an_edge_starts_from_its_live_tables_and_they_equal_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), NODE).unwrap());
    let (mut ledger, mut chain, _) = open_edge(&store).unwrap();
    book(&store, &mut ledger, &mut chain, workload(), 1_700_000_000_000);
    // h3 expires in the next group, 2 s later; h4 stays pending.
    book(&store, &mut ledger, &mut chain, vec![json!({"id": "late", "op": "balance", "account": "wallet:alice"})], 1_700_000_002_000);
    let before = books_of(&store, &ledger);
    assert_eq!(before.holds["pos-1:h3"].state, HoldState::Resolved(Resolution::Expired), "h3 expired");
    assert_eq!(ledger.hold("pos-1:h4").map(|h| h.is_pending()), Some(true));
    // h1, h2 and h3 resolved: all but HOLD_CACHE of them left RAM.
    let resolved_in_ram = ledger.live_state().holds.values().filter(|h| h.may_leave_ram()).count();
    assert_eq!((resolved_in_ram, ledger.hold_cache().1.evictions), (HOLD_CACHE, 3 - HOLD_CACHE as u64));
    drop(ledger);
    drop(store);

    let store = Arc::new(Store::open(dir.path(), NODE).unwrap());
    let (mut restarted, restarted_chain, to_learn) = open_edge(&store).unwrap();
    assert_same("restarted from the tables vs before", &books_of(&store, &restarted), &before);
    assert_eq!(restarted.hold_cache().0, 1, "only the pending hold h4 is read at start-up");
    assert_same("replay vs tables", &replayed(&store).live_state(), &before);
    assert_eq!(restarted_chain, chain, "the chain goes on where it ended");
    // Ids are exact without a replay, before the filter has learned the file's ids (every
    // id not in RAM is looked up) and after.
    let now = 1_700_000_003_000;
    let mut to_learn = Some(to_learn.expect("started from the tables: the filter has the file's ids to learn"));
    for round in ["before the filter is built", "after"] {
        // A resent hold says how it ended: read back from the file.
        let resend = restarted.submit(Some("pos-1"), parse(workload()[5].clone()), now);
        assert!(resend.reply.as_ref().unwrap().duplicate, "{round}: {:?}", resend.reply);
        assert_eq!(resend.reply.as_ref().unwrap().resolution, Some(Resolution::Posted), "{round}");
        let conflict = restarted.submit(Some("pos-1"), parse(json!({"id": "t3", "op": "void", "pending_id": "h4"})), now);
        assert_eq!(conflict.reply.as_ref().unwrap().code.as_str(), "id_conflict", "{round}");
        let batch = restarted.submit(Some("pos-1"), parse(workload()[12].clone()), now);
        assert!(batch.reply.as_ref().unwrap().duplicate, "{round}: {:?}", batch.reply);
        assert_eq!(batch.reply.as_ref().unwrap().results.len(), 2, "{round}");
        // An op of the batch resent alone is not what was taken under its id.
        let alone = parse(workload()[12]["ops"][1].clone());
        let alone = restarted.submit(Some("pos-1"), alone, now);
        assert_eq!(alone.reply.as_ref().unwrap().code.as_str(), "id_conflict", "{round}: {:?}", alone.reply);
        if let Some(filter) = to_learn.take() {
            learn_ids(&store, &mut restarted, filter);
        }
    }
    let (_, _, stats) = restarted.id_cache();
    assert!(stats.misses >= 2 && stats.never_seen == 0, "the first round read the file: {stats:?}");
    let post = restarted.submit(Some("pos-1"), parse(json!({"id": "p4", "op": "post", "pending_id": "h4"})), now);
    assert_eq!(post.reply.as_ref().unwrap().code.as_str(), "ok", "{:?}", post.reply);
    assert_eq!(restarted.id_cache().2.never_seen, 1, "a new id is told new by the filter");
    let again = restarted.submit(Some("pos-1"), parse(json!({"id": "p5", "op": "post", "pending_id": "h2"})), now);
    assert_eq!(again.reply.as_ref().unwrap().code.as_str(), "pending_voided", "a resolved hold is still known");
    let expired = restarted.submit(Some("pos-1"), parse(json!({"id": "p6", "op": "void", "pending_id": "h3"})), now);
    assert_eq!(expired.reply.as_ref().unwrap().code.as_str(), "pending_expired");
    assert!(restarted.hold_cache().1.archive_reads >= 3, "{:?}", restarted.hold_cache());
    // Ids are their sender's own: another device's t3 is a new transfer.
    let t3 = json!({"id": "t3", "op": "transfer", "debit": "wallet:alice", "credit": "merchant:cafe", "amount": "0.10", "asset": "EUR"});
    let other = restarted.submit(Some("pos-2"), parse(t3), now);
    let reply = other.reply.as_ref().unwrap();
    assert!(reply.code.as_str() == "ok" && !reply.duplicate, "{reply:?}");
}

/// The account deltas of an edge: whatever the fold's cadence and wherever the node stops
/// (between folds, right after one), it starts from the tables with the books a replay
/// of its journal rebuilds, and `ledgerctl verify` agrees; a fold leaves no delta behind.
#[test]
fn account_deltas_fold_and_an_edge_restarts_from_them_anywhere() {
    for fold in [1, 2, 5, FOLD_EVERY_GROUPS] {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), NODE).unwrap());
        let (mut ledger, mut chain, _) = open_edge_folding(&store, fold).unwrap();
        let commands = workload();
        // Restarts after 1, 2, 3, ... groups of three commands: every position in the
        // cycle of folds is met.
        let mut at = 0;
        let mut stop = 1;
        while at < commands.len() {
            let upto = (at + 3 * stop).min(commands.len());
            book(&store, &mut ledger, &mut chain, commands[at..upto].to_vec(), 1_700_000_000_000 + at as u64);
            at = upto;
            stop += 1;
            let before = books_of(&store, &ledger);
            drop(ledger);
            (ledger, chain, _) = open_edge_folding(&store, fold).unwrap();
            let what = format!("fold every {fold}, restarted after {at} commands");
            assert_same(&format!("{what}: restarted vs before"), &books_of(&store, &ledger), &before);
            assert_same(&format!("{what}: replay vs tables"), &replayed(&store).live_state(), &before);
            // Restarts between folds do not pile deltas up: the fold after a start-up comes
            // as many groups sooner as the file holds deltas.
            let rows = delta_rows(&store);
            assert!(rows < u64::from(fold.max(2)), "{what}: {rows} delta rows");
        }
        // A group whose only command is a batch that fails part-way changed accounts and
        // rolled them back: no entry, so its delta (if any) shares the last head's key.
        let failing = json!({"id": "bad-batch", "op": "batch", "ops": [
            {"id": "bad-a", "op": "transfer", "debit": "wallet:alice", "credit": "merchant:cafe", "amount": "0.01", "asset": "EUR"},
            {"id": "bad-b", "op": "transfer", "debit": "wallet:alice", "credit": "merchant:cafe", "amount": "999999.00", "asset": "EUR"}
        ]});
        book(&store, &mut ledger, &mut chain, vec![failing], 1_700_000_100_000);
        let before = books_of(&store, &ledger);
        drop(ledger);
        (ledger, _, _) = open_edge_folding(&store, fold).unwrap();
        assert_same(&format!("fold every {fold}, after a rolled-back batch"), &books_of(&store, &ledger), &before);
        drop((ledger, store));
        let db = Database::open(dir.path().join("ledger.redb")).unwrap();
        let rows = db.begin_read().unwrap().open_table(DELTAS).unwrap().iter().unwrap().count() as u64;
        if fold == 1 {
            assert_eq!(rows, 0, "folding every group leaves no delta");
        } else {
            assert!(rows < u64::from(fold), "at most a fold's worth of deltas: {rows} with a fold every {fold}");
        }
        drop(db);
        verify_db(dir.path(), &format!("fold every {fold}"));
    }
}

fn delta_rows(store: &Store) -> u64 {
    let sizes = store.sizes().expect("sizes");
    sizes.rows.iter().find(|(table, _)| *table == "live_account_deltas").map(|(_, n)| *n).expect("the deltas' row count")
}

/// A file of the format before the deltas (every account in `live_accounts`) opens with its
/// books, its compact rows kept, and is marked so that a release before the deltas refuses it.
#[test]
fn a_file_of_the_format_before_the_deltas_opens_and_is_marked() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let store = Arc::new(Store::open(dir.path(), NODE).unwrap());
        let (mut ledger, mut chain, _) = open_edge_folding(&store, 1).unwrap();
        book(&store, &mut ledger, &mut chain, workload(), 1_700_000_000_000);
        assert_eq!(delta_rows(&store), 0, "written as the release before would");
        store.fold_ids().unwrap(); // that release kept every id record in the table
        books_of(&store, &ledger)
    };
    {
        let db = Database::open(dir.path().join("ledger.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(META).unwrap().insert("format", "edgeledger-5").unwrap();
        tx.open_table(META).unwrap().remove("ids_archived").unwrap();
        tx.delete_table(DELTAS).unwrap();
        tx.commit().unwrap();
    }
    let store = Arc::new(Store::open(dir.path(), NODE).unwrap());
    let (ledger, _, _) = open_edge(&store).unwrap();
    assert_same("opened vs before", &books_of(&store, &ledger), &before);
    drop((ledger, store));
    let db = Database::open(dir.path().join("ledger.redb")).unwrap();
    let meta = db.begin_read().unwrap().open_table(META).unwrap();
    let value = |key: &str| meta.get(key).unwrap().map(|v| v.value().to_string());
    assert_eq!(value("format").as_deref(), Some("edgeledger-7"), "marked, so that an older release refuses it");
    assert_eq!(value("rows").as_deref(), Some("compact"), "its rows keep their layout");
}

/// The table of an edge's account deltas (`store::live`).
const DELTAS: TableDefinition<u64, &[u8]> = TableDefinition::new("live_account_deltas");

#[test]
fn a_file_from_before_the_live_tables_is_replayed_once_and_gets_them() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let store = Arc::new(Store::open(dir.path(), NODE).unwrap());
        let (mut ledger, mut chain, _) = open_edge(&store).unwrap();
        book(&store, &mut ledger, &mut chain, workload(), 1_700_000_000_000);
        store.fold_ids().unwrap(); // that release kept every id record in the table
        books_of(&store, &ledger)
    };
    // What a release without live tables left: format 2, no tables, JSON journal bodies.
    {
        let db = Database::open(dir.path().join("ledger.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut meta = tx.open_table(META).unwrap();
            meta.insert("format", "edgeledger-2").unwrap();
            meta.remove("ids_archived").unwrap();
            meta.remove("live").unwrap();
            assert_eq!(meta.remove("rows").unwrap().unwrap().value(), "compact", "a new file's rows");
            tx.open_table(LIVE_ACCOUNTS).unwrap().retain(|_, _| false).unwrap();
            tx.open_table(LIVE_HOLDS).unwrap().retain(|_, _| false).unwrap();
            assert!(tx.delete_table(LIVE_HOLDS_RESOLVED).unwrap(), "resolved holds have a table of their own");
        }
        as_older_release(&tx);
        tx.commit().unwrap();
    }
    let store = Arc::new(Store::open(dir.path(), NODE).unwrap());
    assert_eq!(store.live_state().unwrap(), None, "no tables yet");
    let (mut ledger, mut chain, to_learn) = open_edge(&store).unwrap();
    assert!(to_learn.is_none(), "a replay taught the filter every id");
    assert_same("replayed on the first start", &books_of(&store, &ledger), &before);
    assert_same("tables written from it", &store.live_state().unwrap().expect("tables now"), &before);
    // Ids recorded the old way read back exactly; new entries go on the old chain, binary.
    for (round, id) in ["h1", "t7", "b1"].iter().enumerate() {
        let command = workload().into_iter().find(|c| c["id"] == *id).unwrap();
        let resend = ledger.submit(Some("pos-1"), parse(command), 1_700_000_000_000 + round as u64);
        assert!(resend.reply.as_ref().unwrap().duplicate, "{id}: {:?}", resend.reply);
    }
    book(
        &store,
        &mut ledger,
        &mut chain,
        vec![
            json!({"id": "new-1", "op": "transfer", "debit": "wallet:alice", "credit": "merchant:cafe", "amount": "0.10", "asset": "EUR"}),
        ],
        1_700_000_001_000,
    );
    let last = store.journal_range(chain.seq, chain.seq, 1).unwrap().remove(0);
    assert_eq!(last.body[0], ledger::core::entry_codec::VERSION_1, "new entries are binary");
    assert_eq!(store.journal_range(1, 1, 1).unwrap()[0].body[0], b'{', "old ones stay JSON");
    assert_same("a replay of both kinds of entry", &replayed(&store).live_state(), &books_of(&store, &ledger));
    drop((ledger, store)); // the ledger's id archive holds the file too
    verify_db(dir.path(), "replayed once");
    let db = Database::open(dir.path().join("ledger.redb")).unwrap();
    let format = db.begin_read().unwrap().open_table(META).unwrap().get("format").unwrap().map(|v| v.value().to_string());
    assert_eq!(format.as_deref(), Some("edgeledger-7"), "marked, so that an older release refuses it");
    let rows = db.begin_read().unwrap().open_table(META).unwrap().get("rows").unwrap().map(|v| v.value().to_string());
    assert_eq!(rows.as_deref(), Some("linked"), "its rows keep their layout");
}

#[tokio::test]
async fn ledgerctl_verify_finds_a_live_table_that_disagrees_with_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Arc::new(Store::open(dir.path(), NODE).unwrap());
        let (mut ledger, mut chain, _) = open_edge(&store).unwrap();
        book(&store, &mut ledger, &mut chain, workload(), 1_700_000_000_000);
    }
    let path = dir.path().join("ledger.redb");
    let args = ["verify".to_string(), "--db".to_string(), path.display().to_string()];
    let (code, out, err) = run_ledgerctl(&args).await;
    assert_eq!(code, 0, "{out}{err}");

    // A hold removed from the table behind the journal's back.
    {
        let db = Database::open(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(LIVE_HOLDS).unwrap().remove("pos-1:h4").unwrap().expect("h4 is in the table");
        tx.commit().unwrap();
    }
    let (code, out, err) = run_ledgerctl(&args).await;
    assert_ne!(code, 0, "{out}{err}");
    assert!(out.contains("live tables differ") && out.contains("pos-1:h4"), "{out}{err}");
    // The node refuses to start on it rather than serve wrong books: the pending amounts no
    // longer match the holds.
    let store = Arc::new(Store::open(dir.path(), NODE).unwrap());
    let err = open_edge(&store).err().expect("the node must not start");
    assert!(err.contains("live tables") && err.contains("ledger.redb"), "{err}");
}

/// A region's replica: each frame of the edge's entries is replayed and stored with what it
/// changed; a restarted region opens the replica from its tables, equal to a replay of the
/// replica and to the edge's own books, and `ledgerctl verify --db` checks them too.
#[tokio::test]
async fn a_region_opens_its_replicas_from_their_live_tables() {
    let (edge_dir, region_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let edge_books = {
        let store = Arc::new(Store::open(edge_dir.path(), NODE).unwrap());
        let (mut ledger, mut chain, _) = open_edge(&store).unwrap();
        book(&store, &mut ledger, &mut chain, workload(), 1_700_000_000_000);
        book(&store, &mut ledger, &mut chain, vec![json!({"id": "late", "op": "balance", "account": "wallet:alice"})], 1_700_000_002_000);
        books_of(&store, &ledger)
    };
    let entries = Store::open_existing(&edge_dir.path().join("ledger.redb")).unwrap().0.journal_range(1, u64::MAX, 10_000).unwrap();
    // As a region keeps a replica: no id records, HOLD_CACHE resolved holds in RAM.
    let replica_ledger = |region: &Arc<Store>| {
        let mut ledger = ledger::setup::ledger_for(&config());
        ledger.forget_ids();
        let finals = StoreArchive::of_replica(region.clone(), NODE, Default::default());
        ledger.archive_holds(HOLD_CACHE, Box::new(finals.clone()));
        ledger.archive_received(HOLD_CACHE, Box::new(finals));
        ledger
    };
    // The replica's books: what it holds in RAM, and the resolved holds its tables hold.
    let books_of_replica = |region: &Store, replica: &Ledger| {
        let mut books = replica.live_state();
        for (id, hold) in region.replica_live_state(NODE).unwrap().expect("tables").holds {
            books.holds.entry(id).or_insert_with(|| {
                assert!(hold.may_leave_ram());
                hold
            });
        }
        books
    };
    {
        let region = Arc::new(Store::open(region_dir.path(), "eu").unwrap());
        let mut replica = replica_ledger(&region);
        let mut chain = region.open_replica(NODE, &mut replica).unwrap();
        replica.track_live_changes();
        // Frames of 7 entries, written two to a commit as a region writes the frames queued
        // behind a write: a hold opened in one frame may resolve in the next of the same commit.
        let frames: Vec<&[Entry]> = entries.chunks(7).collect();
        for pair in frames.chunks(2) {
            let mut prepared = Vec::new();
            for frame in pair {
                let group = replica.next_group();
                for entry in *frame {
                    replica.replay(&chain.verify_next(entry).unwrap()).unwrap();
                }
                prepared.push((*frame, replica.take_live_changes(), group));
            }
            let writes: Vec<ReplicaFrame<'_>> =
                prepared.iter().map(|(entries, live, _)| ReplicaFrame { entries, signed_head: None, live }).collect();
            region.append_replica(NODE, &writes).unwrap();
            replica.group_durable(prepared.last().expect("a frame").2);
        }
        assert!(replica.hold_cache().1.evictions >= 2, "h1, h2 and h3 resolved: {:?}", replica.hold_cache());
        assert_same("replica vs edge", &books_of_replica(&region, &replica), &edge_books);
    }
    let region = Arc::new(Store::open(region_dir.path(), "eu").unwrap());
    let mut opened = replica_ledger(&region);
    let chain = region.open_replica(NODE, &mut opened).unwrap();
    assert_eq!(chain.seq, entries.len() as u64);
    assert_eq!(opened.hold_cache().0, 1, "only the pending hold is read at start-up");
    assert_same("replica from its tables vs edge", &books_of_replica(&region, &opened), &edge_books);
    let mut replayed = ledger::setup::ledger_for(&config());
    replayed.forget_ids();
    region.load_replica(NODE, &mut replayed).unwrap();
    assert_same("replica replayed vs edge", &replayed.live_state(), &edge_books);
    // Rows are read back linked from any point: ranges and newest-first reads (history).
    for from in [1, 2, entries.len() as u64 / 2, entries.len() as u64] {
        assert_eq!(region.replica_range(NODE, from, 10_000).unwrap(), entries[from as usize - 1..], "from {from}");
        let newest: Vec<_> = region.entries_before(Some(NODE), from + 1, 5).unwrap().into_iter().rev().collect();
        assert_eq!(newest, entries[(from as usize).saturating_sub(5)..from as usize], "before {}", from + 1);
    }
    let three_newest: Vec<u64> = (entries.len() as u64 - 2..=entries.len() as u64).rev().collect();
    let newest = region.entries_before(Some(NODE), u64::MAX, 3).unwrap();
    assert_eq!(newest.iter().map(|e| e.seq).collect::<Vec<_>>(), three_newest);
    let edge = Store::open_existing(&edge_dir.path().join("ledger.redb")).unwrap().0;
    let newest = edge.entries_before(None, u64::MAX, 3).unwrap();
    assert_eq!(newest, entries[entries.len() - 3..].iter().rev().cloned().collect::<Vec<_>>(), "the edge's own, newest first");
    drop((opened, region)); // the replica's hold archive holds the file too
    let args = ["verify".to_string(), "--db".to_string(), region_dir.path().join("ledger.redb").display().to_string()];
    let (code, out, err) = run_ledgerctl(&args).await;
    assert_eq!(code, 0, "{out}{err}");
}

/// Prunes everything `plan` allows, in passes; returns how many entries went.
fn prune_all(store: &Arc<Store>, plan: ledger::store::Prune) -> u64 {
    let mut total = 0;
    // The books as of the anchor carried between passes, as the retention thread does.
    let mut books = None;
    loop {
        match store.prune(plan, &mut books, || ledger::setup::ledger_for(&config())).expect("a pruning pass") {
            0 => return total,
            n => total += n,
        }
    }
}

#[test]
fn a_pruned_journal_answers_every_id_and_replays_and_verifies_from_its_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let now = 1_700_000_000_000;
    let resend_all = |ledger: &mut Ledger| -> Vec<String> {
        workload().into_iter().map(|c| format!("{:?}", ledger.submit(Some("pos-1"), parse(c), now + 10_000).reply)).collect()
    };
    let (before, head) = {
        let store = Arc::new(Store::open(dir.path(), NODE).unwrap());
        let (mut ledger, mut chain, _) = open_edge(&store).unwrap();
        book(&store, &mut ledger, &mut chain, workload(), now);
        let before = resend_all(&mut ledger);
        assert!(before.iter().all(|r| r.contains("duplicate: true")), "{before:?}");

        // By age: every entry was written at `now`, none before it.
        let by_age = ledger::store::Prune { upto: u64::MAX, written_before_ms: Some(now), max_entries: 7 };
        assert_eq!(prune_all(&store, by_age), 0);
        // By count, in passes of 7: all but the last 5 (the newest entry always stays). Their
        // ids wait in the id tail: the first pass writes them into the table.
        let plan = ledger::store::Prune { upto: chain.seq - 5, written_before_ms: Some(now + 1), max_entries: 7 };
        assert_eq!(prune_all(&store, plan), chain.seq - 5);
        let anchor = store.anchor().unwrap();
        assert_eq!(anchor.chain.seq, chain.seq - 5);
        assert_eq!(store.journal_range(1, u64::MAX, 100).unwrap()[0].seq, anchor.chain.seq + 1, "the rest stays");
        // A range from within the pruned part names the anchor; one past it starts there.
        let refused = store.range_after_anchor(anchor.chain.seq, 100).unwrap();
        assert_eq!(refused.err().map(|a| a.chain), Some(anchor.chain), "a range into the pruned part");
        let served = store.range_after_anchor(anchor.chain.seq + 1, 3).unwrap().expect("after the anchor");
        assert_eq!(served.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=3).map(|i| anchor.chain.seq + i).collect::<Vec<_>>());
        assert_same("a replay from the anchor vs the tables", &replayed(&store).live_state(), &books_of(&store, &ledger));
        (before, chain.seq)
    };
    // A restarted edge (16 ids in RAM) answers every resend as before, the filter built or not.
    let store = Arc::new(Store::open(dir.path(), NODE).unwrap());
    let (mut ledger, mut chain, to_learn) = open_edge(&store).unwrap();
    assert_eq!(resend_all(&mut ledger), before, "before the filter is built");
    learn_ids(&store, &mut ledger, to_learn.expect("from the tables"));
    assert_eq!(resend_all(&mut ledger), before, "after");
    // It goes on: new entries link to the old chain, and the next pass prunes them too.
    let more: Vec<_> = (0..10)
        .map(|i| json!({"id": format!("m{i}"), "op": "transfer", "debit": "wallet:alice", "credit": "merchant:cafe", "amount": "0.01", "asset": "EUR"}))
        .collect();
    book(&store, &mut ledger, &mut chain, more, now + 20_000);
    let before = resend_all(&mut ledger); // h3 has expired meanwhile: its resend says so
    let plan = ledger::store::Prune { upto: u64::MAX, written_before_ms: None, max_entries: 1_000 };
    assert_eq!(prune_all(&store, plan), chain.seq - 1 - (head - 5));
    assert_same("replayed from the newer anchor", &replayed(&store).live_state(), &books_of(&store, &ledger));
    assert_eq!(resend_all(&mut ledger), before, "after the second pruning");
    drop((ledger, store));
    let verify = std::process::Command::new(harness::ledgerctl_binary())
        .args(["verify", "--db", dir.path().join("ledger.redb").to_str().unwrap()])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{out}{}", String::from_utf8_lossy(&verify.stderr));
    // The books as of the anchor keep their resolved holds apart too: the pruning thread
    // reads only the pending ones (h4) when it starts.
    let db = Database::open(dir.path().join("ledger.redb")).unwrap();
    let tx = db.begin_read().unwrap();
    let keys = |name: &str| -> Vec<String> {
        let table = tx.open_table(TableDefinition::<&str, &[u8]>::new(name)).unwrap();
        table.iter().unwrap().map(|row| row.unwrap().0.value().to_string()).collect()
    };
    assert_eq!(keys("anchor_holds"), ["pos-1:h4"]);
    assert_eq!(keys("anchor_holds_resolved"), ["pos-1:h1", "pos-1:h2", "pos-1:h3"]);
}

/// `ledgerctl verify --db` of the edge's file in `dir` (the node stopped).
fn verify_db(dir: &std::path::Path, what: &str) {
    let verify = std::process::Command::new(harness::ledgerctl_binary())
        .args(["verify", "--db", dir.join("ledger.redb").to_str().unwrap()])
        .output()
        .unwrap();
    let (out, err) = (String::from_utf8_lossy(&verify.stdout), String::from_utf8_lossy(&verify.stderr));
    assert!(verify.status.success(), "{what}: {out}{err}");
}

fn id_rows(store: &Store) -> u64 {
    let sizes = store.sizes().expect("sizes");
    sizes.rows.iter().find(|(table, _)| *table == "ids").map(|(_, n)| *n).expect("the ids' row count")
}

fn pay(id: &str) -> serde_json::Value {
    json!({"id": id, "op": "transfer", "debit": "wallet:alice", "credit": "merchant:cafe", "amount": "0.01", "asset": "EUR"})
}

/// Accepted ids whose entries give them back wait at the journal's end (`store::id_tail`)
/// and go into the ids table `FOLD_IDS` at a time. A restart reads them back from their
/// entries: a resend is answered as before, whether the id filter has learned the file's
/// ids yet or not, and `ledgerctl verify` passes.
#[test]
fn ids_wait_in_the_tail_until_a_fold_and_a_restart_reads_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), NODE).unwrap());
    let (mut ledger, mut chain, _) = open_edge(&store).unwrap();
    book(&store, &mut ledger, &mut chain, workload(), 1_700_000_000_000);
    let rejections = id_rows(&store);
    let below = ledger::store::FOLD_IDS - 64;
    let first: Vec<serde_json::Value> = (0..below).map(|i| pay(&format!("m{i}"))).collect();
    book(&store, &mut ledger, &mut chain, first, 1_700_000_001_000);
    assert_eq!(id_rows(&store), rejections, "accepted ids wait in the tail; only the rejections' records are in the table");
    let original = ledger.recorded(Some("pos-1"), "m0").expect("m0 taken").reply.seq;
    drop(ledger);
    drop(store);

    let store = Arc::new(Store::open(dir.path(), NODE).unwrap());
    let (mut restarted, mut chain, to_learn) = open_edge(&store).unwrap();
    let mut to_learn = Some(to_learn.expect("started from the tables"));
    for round in ["before the filter is built", "after"] {
        for id in ["m0", &format!("m{}", below / 2), &format!("m{}", below - 1)] {
            let resend = restarted.submit(Some("pos-1"), parse(pay(id)), 1_700_000_002_000);
            let reply = resend.reply.as_ref().unwrap();
            assert!(reply.duplicate && resend.entry.is_none(), "{round}: {id}: {reply:?}");
        }
        if let Some(filter) = to_learn.take() {
            learn_ids(&store, &mut restarted, filter);
        }
    }
    let m0 = restarted.submit(Some("pos-1"), parse(pay("m0")), 1_700_000_002_000);
    assert_eq!(m0.reply.unwrap().seq, original, "the resend names the entry that took it");
    assert_eq!(restarted.id_cache().2.never_seen, 0, "the filter learned the tail's ids too");

    // The group that reaches FOLD_IDS writes the whole tail into the table.
    let more: Vec<serde_json::Value> = (0..96).map(|i| pay(&format!("n{i}"))).collect();
    book(&store, &mut restarted, &mut chain, more, 1_700_000_003_000);
    let folded = id_rows(&store);
    assert!(folded >= rejections + ledger::store::FOLD_IDS as u64, "{folded} rows after the fold");
    let resend = restarted.submit(Some("pos-1"), parse(pay("m5")), 1_700_000_004_000);
    assert!(resend.reply.unwrap().duplicate, "read back from the table now");
    drop((restarted, store));
    verify_db(dir.path(), "after the fold");
    let db = Database::open(dir.path().join("ledger.redb")).unwrap();
    let archived = db.begin_read().unwrap().open_table(META).unwrap().get("ids_archived").unwrap().map(|v| v.value().to_string());
    let archived: u64 = archived.expect("meta ids_archived").parse().unwrap();
    assert!(archived > below as u64 && archived <= chain.seq, "the fold's entry: {archived} of {}", chain.seq);
}

/// A pruning thread beside the committer, as an edge with retention runs them: passes that
/// reach the id tail fold it while groups commit, and every id taken is answered
/// `duplicate` after a restart, whichever pass pruned its entry. (The race the tail's lock
/// closes, a pass copying the tail between a commit and its update, is microseconds wide:
/// this test did not catch it with the lock taken after the commit.)
#[test]
fn pruning_beside_the_committer_loses_no_id_of_the_tail() {
    use std::sync::atomic::{AtomicBool, Ordering};
    const PAYMENTS: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), NODE).unwrap());
    let (mut ledger, mut chain, _) = open_edge(&store).unwrap();
    book(&store, &mut ledger, &mut chain, workload(), 1_700_000_000_000);
    let stop = Arc::new(AtomicBool::new(false));
    let pruner = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let plan = ledger::store::Prune { upto: u64::MAX, written_before_ms: None, max_entries: 1_000 };
            let mut books = None;
            let mut pruned = 0;
            while !stop.load(Ordering::Acquire) {
                pruned += store.prune(plan, &mut books, || ledger::setup::ledger_for(&config())).expect("a pruning pass");
            }
            pruned
        })
    };
    for i in 0..PAYMENTS {
        // A group each: every commit is one a pass may follow at once.
        let number = ledger.next_group();
        let effects = vec![ledger.submit(Some("pos-1"), parse(pay(&format!("r{i}"))), 1_700_000_001_000)];
        assert_eq!(effects[0].reply.as_ref().unwrap().code.as_str(), "ok", "r{i}");
        store.commit(&mut chain, &effects, &ledger.take_live_changes()).expect("commit");
        ledger.group_durable(number);
    }
    stop.store(true, Ordering::Release);
    let pruned = pruner.join().expect("the pruning thread");
    assert!(pruned > PAYMENTS as u64 / 2, "the passes kept up with the commits: {pruned} pruned");
    drop((ledger, store));

    let store = Arc::new(Store::open(dir.path(), NODE).unwrap());
    let (mut restarted, _, _) = open_edge(&store).unwrap();
    for i in 0..PAYMENTS {
        let resend = restarted.submit(Some("pos-1"), parse(pay(&format!("r{i}"))), 1_700_000_002_000);
        let reply = resend.reply.unwrap();
        assert!(reply.duplicate && resend.entry.is_none(), "r{i} was taken again: {reply:?}");
    }
}
