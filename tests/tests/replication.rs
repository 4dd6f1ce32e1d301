//! Journal replication, real processes on loopback: a region follows its edge over zenoh,
//! through a partition, and refuses a tampered journal.

use harness::{ask, cmd, eventually, free_port, operator_session, Device, NodeOptions, NodeProcess, Ops, TcpProxy};
use ledger::core::command::{Command, Flag, Movement, Op};
use ledger::core::journal::Chain;
use serde_json::Value;
use std::time::Duration;

const CATCH_UP: Duration = Duration::from_secs(60);

fn region(zenoh_port: u16, edges: &[&str]) -> NodeProcess {
    region_with(zenoh_port, edges, "")
}

/// A region with `ledger_toml` in its `[ledger]` section.
fn region_with(zenoh_port: u16, edges: &[&str], ledger_toml: &str) -> NodeProcess {
    let edges: Vec<String> = edges.iter().map(|e| format!("\"{e}\"")).collect();
    NodeProcess::start(NodeOptions {
        ledger_toml: ledger_toml.to_string(),
        node_id: Some("eu".into()),
        region_zenoh_port: Some(zenoh_port),
        extra_toml: format!(
            "[zenoh]\nlisten = [\"tcp/127.0.0.1:{zenoh_port}\"]\ninsecure_plaintext = true\n\n[replication]\nedges = [{}]\n",
            edges.join(", ")
        ),
        ..NodeOptions::default()
    })
}

fn edge(id: &str, region_port: u16) -> NodeProcess {
    NodeProcess::start(NodeOptions {
        node_id: Some(id.into()),
        extra_toml: format!("[zenoh]\nconnect = [\"tcp/127.0.0.1:{region_port}\"]\ninsecure_plaintext = true\n"),
        ..NodeOptions::default()
    })
}

async fn replica(ops: &Ops, edge: &str) -> Option<Value> {
    let status = ask(ops, "ledger/v1/status/eu").await?;
    status["edges"].as_array()?.iter().find(|e| e["edge"] == edge).cloned()
}

async fn pay(device: &Device, from: usize, to: usize) -> u64 {
    let mut seq = 0;
    for i in from..to {
        let reply = device.request(cmd::transfer(&format!("p{i}"), "wallet:a", "merchant:m", "0.01", "EUR")).await;
        assert_eq!(reply["code"], "ok", "{reply}");
        seq = reply["seq"].as_u64().unwrap();
    }
    seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_region_follows_its_edge_through_a_partition() {
    let zenoh_port = free_port();
    let _region = region(zenoh_port, &["eu/berlin-1"]);
    let proxy = TcpProxy::start(zenoh_port);
    let mut berlin = edge("eu/berlin-1", proxy.port);
    let ops = operator_session(zenoh_port).await;

    let device = Device::connect(berlin.port, "till-1").await;
    for (id, account, flags) in [("o1", "issuer", vec!["issuance"]), ("o2", "wallet:a", vec![]), ("o3", "merchant:m", vec![])] {
        assert_eq!(device.request(cmd::open(id, account, "EUR", &flags)).await["code"], "ok");
    }
    assert_eq!(device.request(cmd::transfer("fund", "issuer", "wallet:a", "100.00", "EUR")).await["code"], "ok");
    let head = pay(&device, 0, 50).await;
    eventually("the replica to reach the edge's head", CATCH_UP, || async {
        replica(&ops, "eu/berlin-1").await.filter(|r| r["seq"] == head && r["stored_seq"] == head)
    })
    .await;

    // Partition: the edge keeps taking payments on its own.
    proxy.cut();
    let head = pay(&device, 50, 250).await;
    let stale = replica(&ops, "eu/berlin-1").await.expect("the region answers while cut off");
    assert!(stale["seq"].as_u64().unwrap() < head, "nothing crossed the partition: {stale}");

    // Heal: the backlog drains from the edge's redb and the chains meet.
    proxy.heal();
    let caught_up = eventually("the replica to catch up after the partition", CATCH_UP, || async {
        replica(&ops, "eu/berlin-1").await.filter(|r| r["seq"] == head)
    })
    .await;
    assert_eq!(caught_up["refused"], Value::Null);
    let edge_status = eventually("the edge's status through the region", CATCH_UP, || async {
        ask(&ops, "ledger/v1/status/eu/berlin-1").await.filter(|s| s["replicated_seq"] == head)
    })
    .await;
    assert_eq!(edge_status["head"]["hash"], caught_up["hash"], "same head hash on both sides");

    // The region answers balances from its replica, saying how fresh.
    let answer = ask(&ops, "ledger/v1/query/eu/balance?account=merchant:m@eu/berlin-1").await.expect("balance");
    assert_eq!(answer["balance"]["posted"], "2.50", "{answer}");
    assert_eq!(answer["replica_seq"], head);

    // And the edge's redb, read after a SIGKILL, ends on the same hash.
    berlin.kill9();
    let ledger = harness::load_ledger(&berlin.dir.join("data"), "eu/berlin-1").unwrap();
    assert_eq!(ledger.head().seq, head);
    drop(device);
}

fn body_of(id: &str, op: Op) -> Command {
    Command { id: id.to_string(), op }
}

/// A journal built by a real ledger core, as an edge would write it.
fn journal() -> Vec<ledger::core::journal::Entry> {
    let config = config::NodeConfig::from_toml("[node]\nid = \"eu/fake-1\"\n").unwrap();
    let mut ledger = ledger::setup::ledger_for(&config);
    let mut chain = Chain::default();
    let transfer = |id: &str| {
        let m = Movement { debit: "issuer".into(), credit: "wallet:a".into(), amount: "1.00".into(), asset: "EUR".into(), metadata: None };
        body_of(id, Op::Transfer(m))
    };
    let commands = vec![
        body_of(
            "o1",
            Op::OpenAccount { account: "issuer".into(), asset: "EUR".into(), flags: vec![Flag::Issuance], overdraft_limit: None },
        ),
        body_of("o2", Op::OpenAccount { account: "wallet:a".into(), asset: "EUR".into(), flags: vec![], overdraft_limit: None }),
        transfer("t1"),
        transfer("t2"),
    ];
    commands
        .into_iter()
        .map(|c| {
            let effects = ledger.submit(Some("dev"), c, 1_000);
            chain.seal(effects.entry.as_ref().expect("accepted"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_entry_is_refused_reported_and_never_applied() {
    let zenoh_port = free_port();
    let _region = region(zenoh_port, &["eu/fake-1"]);
    let ops = operator_session(zenoh_port).await;

    // Entry 3 pays 9.00 instead of 1.00 but keeps its old hash.
    let mut entries = journal();
    let json = serde_json::to_string(&entries[2].parse_body().unwrap()).unwrap().replace("100", "900");
    let tampered: ledger::core::EntryBody = serde_json::from_str(&json).unwrap();
    let body = ledger::core::entry_codec::encode(&tampered);
    assert_ne!(body, entries[2].body);
    entries[2].body = body;
    let encoded: Vec<(u64, Vec<u8>)> = entries.iter().map(|e| (e.seq, e.encode())).collect();
    let frame = bridge::encode_frame(encoded.iter().map(|(s, b)| (*s, &b[..])));

    // The test plays the edge: it serves that journal on the edge's range key.
    let queryable = ops.declare_queryable("ledger/v1/journal/eu/fake-1/range").await.unwrap();
    let serve = tokio::spawn(async move {
        while let Ok(query) = queryable.recv_async().await {
            let from: u64 = query.parameters().get("from").and_then(|v| v.parse().ok()).unwrap_or(1);
            let wanted: Vec<(u64, Vec<u8>)> =
                bridge::Frame::decode(frame.clone()).unwrap().entries().filter(|(s, _)| *s >= from).map(|(s, b)| (s, b.to_vec())).collect();
            let reply = bridge::encode_frame(wanted.iter().map(|(s, b)| (*s, &b[..])));
            let _ = query.reply(query.key_expr().clone(), reply).await;
        }
    });

    let refused = eventually("the region to refuse entry 3", CATCH_UP, || async {
        replica(&ops, "eu/fake-1").await.filter(|r| !r["refused"].is_null())
    })
    .await;
    assert_eq!(refused["seq"], 2, "entries 1 and 2 applied, nothing after: {refused}");
    let why = refused["refused"].as_str().unwrap();
    assert!(why.contains("entry 3") && why.contains("tampered"), "{why}");
    // Nothing of the forged entry reached the replica's books.
    let answer = ask(&ops, "ledger/v1/query/eu/balance?account=wallet:a@eu/fake-1").await.unwrap();
    assert_eq!(answer["balance"]["posted"], "0.00", "{answer}");
    serve.abort();
}

/// An edge that booked more than two frames' worth of entries before its region first
/// came up: the region catches up range by range (asking for the next while it applies
/// one) and ends with the edge's head, its books and a file that verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_catches_up_a_backlog_of_several_frames() {
    let zenoh_port = free_port();
    let berlin = edge("eu/berlin-1", zenoh_port);
    let device = Device::connect(berlin.port, "till-1").await;
    for (id, account, flags) in [("o1", "issuer", vec!["issuance"]), ("o2", "wallet:a", vec![]), ("o3", "merchant:m", vec![])] {
        assert_eq!(device.request(cmd::open(id, account, "EUR", &flags)).await["code"], "ok");
    }
    assert_eq!(device.request(cmd::transfer("fund", "issuer", "wallet:a", "100.00", "EUR")).await["code"], "ok");
    let payments = 2 * bridge::MAX_FRAME_ENTRIES + 300;
    for i in 0..payments {
        device.publish(cmd::transfer(&format!("p{i}"), "wallet:a", "merchant:m", "0.01", "EUR").to_string()).await;
    }
    let head = 4 + payments as u64;
    let reads = std::sync::atomic::AtomicU64::new(0);
    let read = eventually("every payment booked", CATCH_UP, || async {
        let n = reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let read = device.request(cmd::balance(&format!("b-{n}"), "merchant:m")).await;
        (read["seq"] == head).then_some(read)
    })
    .await;
    assert_eq!(read["balance"]["posted"], format!("{}.{:02}", payments / 100, payments % 100), "{read}");

    let mut region_node = region(zenoh_port, &["eu/berlin-1"]);
    let ops = operator_session(zenoh_port).await;
    let replica_head = eventually("the replica to reach the edge's head", CATCH_UP, || async {
        replica(&ops, "eu/berlin-1").await.filter(|r| r["seq"] == head && r["stored_seq"] == head)
    })
    .await;
    assert!(replica_head["refused"].is_null(), "{replica_head}");
    let edge_status = eventually("the edge's status", CATCH_UP, || async { ask(&ops, "ledger/v1/status/eu/berlin-1").await }).await;
    assert_eq!(edge_status["head"]["hash"], replica_head["hash"]);
    let answer = ask(&ops, "ledger/v1/query/eu/balance?account=merchant:m@eu/berlin-1").await.unwrap();
    assert_eq!(answer["balance"]["posted"], read["balance"]["posted"], "{answer}");
    region_node.kill9();
    let args = ["verify".to_string(), "--db".to_string(), region_node.db_path().display().to_string()];
    let (code, out, err) = harness::run_ledgerctl(&args).await;
    assert_eq!(code, 0, "{out}{err}");
}

/// Ten holds of 0.02 on the edge, each posted at 0.01; the last entry's seq.
async fn hold_and_post(device: &Device, round: &str) -> u64 {
    let mut seq = 0;
    for i in 0..10 {
        let hold = device.request(cmd::hold(&format!("{round}-h{i}"), "wallet:a", "merchant:m", "0.02", "EUR", None)).await;
        assert_eq!(hold["status"], "pending", "{hold}");
        let post = device.request(cmd::post(&format!("{round}-p{i}"), &format!("{round}-h{i}"), Some("0.01"))).await;
        assert_eq!(post["code"], "ok", "{post}");
        seq = post["seq"].as_u64().unwrap();
    }
    seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_survive_sigkill_of_region_and_edge() {
    let zenoh_port = free_port();
    // The replica keeps 2 resolved holds in RAM: the others are read back from its file.
    let mut region_node = region_with(zenoh_port, &["eu/berlin-1"], "resolved_hold_cache_entries = 2");
    let mut berlin = edge("eu/berlin-1", zenoh_port);
    let device = Device::connect(berlin.port, "till-1").await;
    for (id, account, flags) in [("o1", "issuer", vec!["issuance"]), ("o2", "wallet:a", vec![]), ("o3", "merchant:m", vec![])] {
        assert_eq!(device.request(cmd::open(id, account, "EUR", &flags)).await["code"], "ok");
    }
    assert_eq!(device.request(cmd::transfer("fund", "issuer", "wallet:a", "100.00", "EUR")).await["code"], "ok");
    hold_and_post(&device, "before").await;

    // Payments keep coming (each resent until answered) while first the region, then the
    // edge is killed and restarted.
    let mut head = 0;
    for i in 0..300 {
        if i == 100 {
            region_node.restart();
        }
        if i == 200 {
            berlin.restart();
        }
        let command = cmd::transfer(&format!("p{i}"), "wallet:a", "merchant:m", "0.01", "EUR");
        let reply = eventually("a reply to a payment", CATCH_UP, || {
            let command = command.clone();
            let device = &device;
            async move { device.try_request(command, Duration::from_secs(1)).await }
        })
        .await;
        assert_eq!(reply["code"], "ok", "{reply}");
        head = head.max(reply["seq"].as_u64().unwrap());
    }
    head = hold_and_post(&device, "after").await;

    let ops = operator_session(zenoh_port).await;
    let replica_head = eventually("the replica to reach the edge's head after both crashes", CATCH_UP, || async {
        replica(&ops, "eu/berlin-1").await.filter(|r| r["seq"] == head && r["stored_seq"] == head)
    })
    .await;
    let edge_status = eventually("the edge's status", CATCH_UP, || async { ask(&ops, "ledger/v1/status/eu/berlin-1").await }).await;
    assert_eq!(edge_status["head"]["hash"], replica_head["hash"]);
    let answer = ask(&ops, "ledger/v1/query/eu/balance?account=merchant:m@eu/berlin-1").await.unwrap();
    assert_eq!(answer["balance"]["posted"], "3.20", "each payment once in the replica: {answer}");
    assert_eq!(answer["balance"]["pending_credits"], "0.00", "{answer}");
    // The replica's tables, resolved holds included, equal a replay of its journal.
    region_node.kill9();
    let args = ["verify".to_string(), "--db".to_string(), region_node.db_path().display().to_string()];
    let (code, out, err) = harness::run_ledgerctl(&args).await;
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_hashed_entry_that_does_not_apply_is_refused() {
    let zenoh_port = free_port();
    let mut region_node = region(zenoh_port, &["eu/fake-2"]);
    let ops = operator_session(zenoh_port).await;

    // A correctly chained journal whose third entry resolves a hold that never existed:
    // what a buggy or forged edge that re-hashes its entries would send.
    let honest = journal();
    let mut chain = Chain::default();
    let mut entries: Vec<ledger::core::journal::Entry> = honest[..2]
        .iter()
        .map(|e| {
            chain.verify_next(e).unwrap();
            e.clone()
        })
        .collect();
    let mut forged = honest[2].parse_body().unwrap();
    forged.changes = vec![ledger::core::Change::HoldResolved {
        pending_id: "ghost".into(),
        debit: "wallet:a".into(),
        credit: "shop".into(),
        resolution: ledger::core::reply::Resolution::Posted,
        posted: 100,
    }];
    entries.push(chain.seal(&forged));
    let encoded: Vec<(u64, Vec<u8>)> = entries.iter().map(|e| (e.seq, e.encode())).collect();
    let frame = bridge::encode_frame(encoded.iter().map(|(s, b)| (*s, &b[..])));

    let queryable = ops.declare_queryable("ledger/v1/journal/eu/fake-2/range").await.unwrap();
    let serve = tokio::spawn(async move {
        while let Ok(query) = queryable.recv_async().await {
            let _ = query.reply(query.key_expr().clone(), frame.clone()).await;
        }
    });
    // The refusal is known as the frame is prepared; entries 1 and 2 before it are stored
    // by the writer a moment later (`stored_seq`): only then is the replica's file the one
    // the restart below must find.
    let refused = eventually("the region to refuse entry 3 and store the two before it", CATCH_UP, || async {
        replica(&ops, "eu/fake-2").await.filter(|r| !r["refused"].is_null() && r["stored_seq"] == 2)
    })
    .await;
    assert_eq!(refused["seq"], 2, "{refused}");
    assert!(refused["refused"].as_str().unwrap().contains("hold ghost does not exist"), "{refused}");
    serve.abort();
    // Nothing of entry 3 was stored: the region restarts on a replica that verifies.
    drop(ops);
    region_node.restart();
    let ops = operator_session(zenoh_port).await;
    let reloaded = eventually("the restarted region's status", CATCH_UP, || async { replica(&ops, "eu/fake-2").await }).await;
    assert_eq!(reloaded["seq"], 2, "{reloaded}");
}
