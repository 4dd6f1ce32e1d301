//! A disk that refuses writes, for real: the running node's file size limit
//! (RLIMIT_FSIZE, set on the process with prlimit) is lowered to the size its redb file
//! has, so the file's next growth fails with EFBIG as it would on a full disk. The node
//! must answer new commands `disk_full` without recording them, keep answering balances
//! and resends (including ids long evicted from RAM), never acknowledge what it could not
//! write, and take commands again by itself once the limit is lifted. Its file must then
//! hold exactly what it answered `ok`.
//!
//! A region whose file cannot grow cannot store what its edge ships: it must refuse the
//! replica and stop, having acknowledged to the edge nothing its file does not hold, and
//! once restarted resume from its file and catch up.

use harness::{ask, cmd, eventually, free_port, load_ledger, operator_session, run_ledgerctl, Device, NodeOptions, NodeProcess};
use ledger::store::{Store, FOLD_EVERY_GROUPS};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Payments sent at most while waiting for the file to hit its limit (~3 KB each).
const MAX_PAYMENTS: usize = 4_000;
const PAYERS: usize = 4;
/// How long the node may take to notice that writes work again (it probes every second).
const RECOVERY_DEADLINE: Duration = Duration::from_secs(60);

/// Sets the soft file size limit of process `pid` (None: unlimited, up to the hard limit).
fn set_file_size_limit(pid: u32, bytes: Option<u64>) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: prlimit writes the current limits into `limit`, which outlives the call.
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_FSIZE, std::ptr::null(), &mut limit) };
    assert_eq!(rc, 0, "prlimit (read): {}", std::io::Error::last_os_error());
    limit.rlim_cur = bytes.map_or(limit.rlim_max, |b| b.min(limit.rlim_max));
    // SAFETY: prlimit reads `limit`, which outlives the call, and writes nothing back.
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_FSIZE, &limit, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit (write): {}", std::io::Error::last_os_error());
}

/// The issuer, Alice's wallet funded with 1,000 EUR, and the café's account.
async fn open_and_fund(device: &Device) {
    for (id, command) in [
        ("o1", cmd::open("o1", "issuer", "EUR", &["issuance"])),
        ("o2", cmd::open("o2", "wallet:alice", "EUR", &[])),
        ("o3", cmd::open("o3", "merchant:cafe", "EUR", &[])),
        ("f1", cmd::transfer("f1", "issuer", "wallet:alice", "1000.00", "EUR")),
    ] {
        assert_eq!(device.request(command).await["code"], "ok", "setup {id}");
    }
}

fn payment(id: &str) -> Value {
    let mut command = cmd::transfer(id, "wallet:alice", "merchant:cafe", "0.01", "EUR");
    command["metadata"] = json!({ "receipt": "r".repeat(1_900) });
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_commands_answers_the_rest_and_recovers_by_itself() {
    let metrics = harness::free_port();
    let mut node = NodeProcess::start(NodeOptions {
        ledger_toml: "id_cache_entries = 16".into(),
        extra_toml: format!("[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"),
        ..NodeOptions::default()
    });
    let gauge = |name: &str| gauge_of(metrics, name);
    let device = Device::connect(node.port, "pos-1").await;
    open_and_fund(&device).await;
    let first = device.request(payment("p0")).await;
    assert_eq!(first["code"], "ok", "{first}");

    // From here on the file cannot grow. Four devices pay at once, so that groups are in
    // flight behind the one the disk refuses: they must be refused too, not acknowledged.
    let file_bytes = std::fs::metadata(node.db_path()).expect("db file").len();
    set_file_size_limit(node.pid(), Some(file_bytes));
    let mut payers = Vec::new();
    for k in 0..PAYERS {
        let port = node.port;
        payers.push(tokio::spawn(async move {
            let device = Device::connect(port, &format!("payer-{k}")).await;
            let mut paid = 0u64;
            for i in 0..MAX_PAYMENTS / PAYERS {
                let id = format!("k{k}-{i}");
                let reply = device.request(payment(&id)).await;
                match reply["code"].as_str() {
                    Some("ok") => paid += 1,
                    Some("disk_full") => {
                        assert_eq!(reply["status"], "rejected", "{reply}");
                        assert!(reply["seq"].is_null(), "a refused command has no seq: {reply}");
                        assert!(reply["message"].as_str().unwrap().contains("resend the same id later"), "{reply}");
                        device.disconnect().await;
                        return (paid, Some(id));
                    }
                    _ => panic!("unexpected reply {reply}"),
                }
            }
            (paid, None)
        }));
    }
    let mut paid = 1u64; // p0
    let mut refused_ids = Vec::new();
    for payer in payers {
        let (n, refused) = payer.await.expect("payer");
        paid += n;
        refused_ids.push(refused.unwrap_or_else(|| panic!("the file never reached its limit of {file_bytes} bytes")));
    }
    let refused = refused_ids[0].clone();
    assert!(node.is_running(), "a full disk does not stop the node; log:\n{}", node.log());
    assert_eq!(gauge("edgeledger_refusing_writes "), 1);
    assert!(gauge("edgeledger_write_failures_total ") >= 1);
    assert_eq!(gauge("edgeledger_table_rows{table=\"journal\"} "), paid + 4, "setup and payments, nothing refused");
    assert!(gauge("edgeledger_db_file_bytes ") > 0 && gauge("edgeledger_disk_free_bytes ") > 0);
    let on_disk = gauge("edgeledger_db_disk_bytes ");
    assert!(on_disk > 0 && on_disk <= gauge("edgeledger_db_file_bytes ") + 4096, "blocks of a file grown ahead of use");

    // Refusing: reads and resends answered from what is durable, anything new refused.
    let balance = device.request(cmd::balance("b1", "merchant:cafe")).await;
    assert_eq!(balance["code"], "ok", "{balance}");
    assert_eq!(balance["balance"]["posted"], format!("{}.{:02}", paid / 100, paid % 100), "only what was answered ok: {balance}");
    let resent = device.request(payment("p0")).await;
    assert_eq!((&resent["code"], &resent["duplicate"], &resent["seq"]), (&json!("ok"), &json!(true), &first["seq"]), "{resent}");
    let conflicting = device.request(cmd::transfer("p0", "wallet:alice", "merchant:cafe", "9.99", "EUR")).await;
    assert_eq!(conflicting["code"], "id_conflict", "{conflicting}");
    for id in [refused.as_str(), "new-1"] {
        let reply = device.request(payment(id)).await;
        assert_eq!(reply["code"], "disk_full", "{id} is still refused, not recorded: {reply}");
    }

    // Space returns: the node takes commands again by itself, and the id it refused
    // takes effect now, once.
    set_file_size_limit(node.pid(), None);
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    let taken = loop {
        let reply = device.request(payment(&refused)).await;
        if reply["code"] == "ok" {
            break reply;
        }
        assert_eq!(reply["code"], "disk_full", "{reply}");
        assert!(Instant::now() < deadline, "the node did not write again within {RECOVERY_DEADLINE:?}; log:\n{}", node.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(taken["duplicate"], false, "the refused id was never recorded: {taken}");
    assert_eq!(gauge("edgeledger_refusing_writes "), 0);
    paid += 1;
    let again = device.request(payment(&refused)).await;
    assert_eq!((&again["duplicate"], &again["seq"]), (&json!(true), &taken["seq"]), "{again}");
    assert!(node.log().contains("refused a commit"), "the refused write is logged:\n{}", node.log());
    // More groups than a fold's worth after the reload: the accounts the deltas of the
    // file held are folded into rows by a node that rebuilt its books after the refusal.
    for i in 0..FOLD_EVERY_GROUPS {
        let reply = device.request(payment(&format!("after-{i}"))).await;
        assert_eq!(reply["code"], "ok", "{reply}");
        paid += 1;
    }

    // The file holds exactly what was answered ok, and verifies.
    device.disconnect().await;
    node.kill9();
    let ledger = load_ledger(&node.dir.join("data"), "test/edge-1").expect("the file verifies after the refused writes");
    assert_eq!(ledger.account("merchant:cafe").expect("merchant").posted, paid as i64, "one cent per payment answered ok");
    // Its live tables (rows and deltas, across the refusal, the reload and the folds) are
    // what the journal's replay gives.
    let (code, stdout, stderr) = run_ledgerctl(&["verify".to_string(), "--db".to_string(), node.db_path().display().to_string()]).await;
    assert_eq!(code, 0, "the edge's file verifies:\n{stdout}\n{stderr}");
}

const EDGE: &str = "eu/berlin-1";
/// How long a region may take to stop after its write failed, and to catch up after.
const REGION_DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_that_cannot_store_what_it_replicates_stops_and_resumes_from_its_file() {
    let zenoh_port = free_port();
    let mut region = NodeProcess::start(NodeOptions {
        node_id: Some("eu".into()),
        region_zenoh_port: Some(zenoh_port),
        extra_toml: format!(
            "[zenoh]\nlisten = [\"tcp/127.0.0.1:{zenoh_port}\"]\ninsecure_plaintext = true\n\n[replication]\nedges = [\"{EDGE}\"]\n"
        ),
        ..NodeOptions::default()
    });
    let edge_metrics = free_port();
    let edge = NodeProcess::start(NodeOptions {
        node_id: Some(EDGE.into()),
        extra_toml: format!(
            "[zenoh]\nconnect = [\"tcp/127.0.0.1:{zenoh_port}\"]\ninsecure_plaintext = true\n\n[metrics]\nlisten = \"127.0.0.1:{edge_metrics}\"\n"
        ),
        ..NodeOptions::default()
    });
    let ops = operator_session(zenoh_port).await;
    let device = Device::connect(edge.port, "pos-1").await;
    open_and_fund(&device).await;
    let setup_head = device.request(payment("p0")).await["seq"].as_u64().expect("seq");
    eventually("the replica to store the setup", REGION_DEADLINE, || async {
        replica(&ops).await.filter(|r| r["stored_seq"] == setup_head)
    })
    .await;
    // The edge counts the region's acks: the check below reads what it was told.
    eventually("the edge to see the setup acknowledged", REGION_DEADLINE, || async {
        (gauge_of(edge_metrics, "edgeledger_replicated_seq ") == setup_head).then_some(())
    })
    .await;

    // From here on the region's file cannot grow; the edge goes on taking payments (it
    // never waits for its region) until the region's write fails and it stops.
    let region_db = region.db_path();
    set_file_size_limit(region.pid(), Some(std::fs::metadata(&region_db).expect("region file").len()));
    let mut head = setup_head;
    for i in 1..MAX_PAYMENTS {
        if !region.is_running() {
            break;
        }
        let reply = device.request(payment(&format!("p{i}"))).await;
        assert_eq!(reply["code"], "ok", "the edge takes payments whatever its region does: {reply}");
        head = reply["seq"].as_u64().expect("seq");
    }
    assert!(head > setup_head, "the edge took payments after the limit");
    eventually("the region to stop (its file never reached its limit if it does not)", REGION_DEADLINE, || {
        let running = region.is_running();
        async move { (!running).then_some(()) }
    })
    .await;
    let log = region.log();
    let db = region_db.display().to_string();
    assert!(
        log.lines().any(|line| line.contains("cannot be stored") && line.contains(EDGE) && line.contains(&db)),
        "the refused write is logged with the edge and the file; log:\n{log}"
    );

    // Nothing the region did not store was acknowledged to the edge: read once the acks the
    // region sent before it stopped have all arrived (two readings apart agree).
    let acked = eventually("the edge's acknowledged seq to settle", REGION_DEADLINE, || async {
        let first = gauge_of(edge_metrics, "edgeledger_replicated_seq ");
        tokio::time::sleep(Duration::from_millis(300)).await;
        (gauge_of(edge_metrics, "edgeledger_replicated_seq ") == first).then_some(first)
    })
    .await;
    let stored = {
        let (store, _) = Store::open_existing(&region_db).expect("the region's file opens");
        store.entries_before(Some(EDGE), u64::MAX, 1).expect("replica").last().map_or(0, |e| e.seq)
    };
    assert!(stored < head, "the region stopped before storing everything: stored {stored}, edge head {head}");
    assert!(acked <= stored, "the edge was told {acked} is replicated; the region's file holds up to {stored}");

    // Restarted (its file can grow again), the region resumes from its file, catches up and
    // its file verifies.
    region.restart();
    let ops = operator_session(zenoh_port).await;
    eventually("the restarted region to catch up", REGION_DEADLINE, || async {
        replica(&ops).await.filter(|r| r["stored_seq"] == head && r["refused"].is_null())
    })
    .await;
    eventually("the edge to see everything acknowledged", REGION_DEADLINE, || async {
        (gauge_of(edge_metrics, "edgeledger_replicated_seq ") == head).then_some(())
    })
    .await;
    region.kill9();
    let (code, stdout, stderr) = run_ledgerctl(&["verify".to_string(), "--db".to_string(), region_db.display().to_string()]).await;
    assert_eq!(code, 0, "the region's file verifies:\n{stdout}\n{stderr}");
}

async fn replica(ops: &harness::Ops) -> Option<Value> {
    let status = ask(ops, "ledger/v1/status/eu").await?;
    status["edges"].as_array()?.iter().find(|e| e["edge"] == EDGE).cloned()
}

/// A gauge of the node whose metrics listen on `port`.
fn gauge_of(port: u16, name: &str) -> u64 {
    let text = harness::http_get(port, "/metrics");
    let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("{line}"))
}
