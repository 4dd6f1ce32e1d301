//! Retention for real (SPEC §10): an edge with `[retention] keep_entries` and its region
//! over mutual TLS. The edge prunes only what the region acknowledged, answers every
//! resent id (pruned entries included) `duplicate` with its seq, before and after a
//! SIGKILL, refuses a range request into what it pruned with a clear answer, and its file
//! verifies from the anchor; the region's replica keeps every entry. An acknowledgement
//! that names an entry under a hash the edge never wrote prunes nothing.

use harness::{cmd, eventually, free_port, ledgerctl_binary, operator_tls, Device, NodeOptions, NodeProcess, TestPki};
use std::time::Duration;

const EDGE: &str = "eu/berlin-1";
const KEEP: u64 = 20;
const PAYMENTS: u64 = 120;
const DEADLINE: Duration = Duration::from_secs(60);

fn gauge(metrics: u16, name: &str) -> u64 {
    let text = harness::http_get(metrics, "/metrics");
    text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_prunes_what_its_region_holds_and_still_answers_every_id() {
    let pki = TestPki::new(&["eu", EDGE]);
    let port = free_port();
    let _region = NodeProcess::start(NodeOptions {
        node_id: Some("eu".into()),
        region_zenoh_port: Some(port),
        extra_toml: format!("[zenoh]\nlisten = [\"tls/127.0.0.1:{port}\"]\n{}\n[replication]\nedges = [\"{EDGE}\"]\n", pki.zenoh_tls("eu")),
        ..NodeOptions::default()
    });
    let metrics = free_port();
    let mut edge = retention_edge(&pki, port, metrics);
    let device = Device::connect(edge.port, "pos-1").await;
    let mut replies = Vec::new();
    for c in commands() {
        replies.push(device.request(c).await);
    }
    let head = PAYMENTS + 2;
    assert!(replies.iter().all(|r| r["code"] == "ok"), "{replies:?}");

    // The region acknowledges; the edge prunes all but the newest KEEP entries.
    let anchor = eventually("the edge prunes", DEADLINE, || async {
        let anchor = gauge(metrics, "edgeledger_journal_anchor_seq ");
        (anchor == head - KEEP).then_some(anchor)
    })
    .await;
    assert!(gauge(metrics, "edgeledger_replicated_seq ") >= anchor, "never past the region's acknowledgement");
    assert_eq!(gauge(metrics, "edgeledger_table_rows{table=\"journal\"} "), KEEP);

    // Every id, pruned or not, is a duplicate with its first seq; the books are as they were.
    let first_seqs: Vec<Option<u64>> = replies.iter().map(|r| r["seq"].as_u64()).collect();
    assert_eq!(first_seqs, (1..=head).map(Some).collect::<Vec<_>>());
    assert_eq!(resent_seqs(&device).await, first_seqs, "pruned entries' ids; the edge's log:\n{}", edge.log());
    let balance = device.request(cmd::balance("b1", "wallet:a")).await;
    assert_eq!(balance["balance"]["posted"], "12.00", "{balance}");

    // A range into what was pruned gets a clear answer, not silence or a partial frame.
    let ops = operator_tls(&[port], &pki.operator()).await;
    let selector = format!("ledger/v1/journal/{EDGE}/range?from=1");
    let answer = ops.ask_json(&selector, None, Duration::from_secs(10)).await;
    let refusal = answer.as_ref().err().and_then(|e| e.refusal()).unwrap_or_else(|| panic!("not refused: {answer:?}"));
    assert!(refusal.error.contains("pruned") && refusal.error.contains(&format!("anchor {anchor}:")), "{refusal:?}");

    // Online, `ledgerctl verify` of the region says where the edge's pruned journal is
    // verified instead of failing on a range it can no longer have.
    let files = pki.operator();
    let mut args = vec!["--connect".to_string(), format!("tls/127.0.0.1:{port}")];
    for (flag, path) in [("--ca", &files.ca), ("--cert", &files.cert), ("--key", &files.key)] {
        args.extend([flag.to_string(), path.display().to_string()]);
    }
    args.extend(["verify".to_string(), "eu".to_string()]);
    let (code, out, err) = harness::run_ledgerctl(&args).await;
    assert!(code == 0 && out.contains(&format!("pruned its journal through entry {anchor}")), "{code}\n{out}\n{err}");

    // SIGKILLed and restarted: still exact.
    drop(device); // its client would reconnect and take the id "pos-1" from the next one
    edge.restart();
    let device = Device::connect(edge.port, "pos-1").await;
    assert_eq!(resent_seqs(&device).await, first_seqs, "after a restart; the edge's log:\n{}", edge.log());
    drop(device);
    edge.kill9();
    let verify =
        std::process::Command::new(ledgerctl_binary()).args(["verify", "--db", edge.db_path().to_str().unwrap()]).output().unwrap();
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{out}{}", String::from_utf8_lossy(&verify.stderr));
}

/// A region whose replica diverged from its edge (a bug, a disk restored from an old copy)
/// acknowledges an entry under a hash the edge never wrote: the edge refuses the ack,
/// counts it and prunes nothing on its word; the same region acknowledging the entry the
/// edge did write lets it prune. The region is played by the test: a zenoh router under
/// the region's own identity and access rules, which the edge connects to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_under_another_hash_prunes_nothing() {
    let pki = TestPki::new(&["eu", EDGE]);
    let port = free_port();
    let region = pki.region_stand_in("eu", port, &[EDGE]).await;
    let metrics = free_port();
    let edge = retention_edge(&pki, port, metrics);
    let device = Device::connect(edge.port, "pos-1").await;
    for c in commands() {
        let reply = device.request(c).await;
        assert_eq!(reply["code"], "ok", "{reply}");
    }
    let head = PAYMENTS + 2;
    // The hash the edge wrote, from its range queryable, as a region reads it.
    let written = eventually("the edge's entry", DEADLINE, || async {
        let selector = format!("{}?from={head};limit=1", bridge::keys::journal_range(EDGE));
        let reply = region.get(&selector).await.ok()?.recv_async().await.ok()?;
        let frame = bridge::Frame::decode(reply.result().ok()?.payload().to_bytes().into_owned()).ok()?;
        let (seq, bytes) = frame.entries().find(|(seq, _)| *seq == head)?;
        Some(ledger::core::journal::Entry::decode(seq, bytes).ok()?.hash)
    })
    .await;
    let ack = |hash: &[u8; 32]| serde_json::json!({"seq": head, "hash": ledger::core::journal::hex(hash)}).to_string();
    let publish = |payload: String| {
        let region = region.clone();
        async move {
            let put = region.put(bridge::keys::journal_ack(EDGE), payload);
            put.congestion_control(bridge::zenoh::qos::CongestionControl::Block).await.unwrap();
        }
    };
    let mut other = written;
    other[0] ^= 1;
    let refused = eventually("the ack under another hash refused", DEADLINE, || {
        let publish = publish(ack(&other));
        async move {
            // Published again on each poll: the edge may not have subscribed yet.
            publish.await;
            Some(gauge(metrics, "edgeledger_acks_refused_total ")).filter(|n| *n > 0)
        }
    })
    .await;
    assert!(refused >= 1);
    assert_eq!(gauge(metrics, "edgeledger_replicated_seq "), 0, "the refused ack moved nothing");
    assert_eq!(gauge(metrics, "edgeledger_journal_anchor_seq "), 0, "nothing pruned");
    assert_eq!(gauge(metrics, "edgeledger_table_rows{table=\"journal\"} "), head);
    // The entry the edge wrote: it prunes all but the newest KEEP.
    publish(ack(&written)).await;
    let anchor = eventually("the edge prunes", DEADLINE, || async {
        Some(gauge(metrics, "edgeledger_journal_anchor_seq ")).filter(|a| *a == head - KEEP)
    })
    .await;
    assert_eq!(gauge(metrics, "edgeledger_replicated_seq "), head, "{anchor}");
}

/// The edge with `[retention] keep_entries = KEEP`, its region at `port` over mutual TLS,
/// metrics on `metrics`.
fn retention_edge(pki: &TestPki, port: u16, metrics: u16) -> NodeProcess {
    NodeProcess::start(NodeOptions {
        node_id: Some(EDGE.into()),
        extra_toml: format!(
            "[zenoh]\nconnect = [\"tls/127.0.0.1:{port}\"]\n{}\n[retention]\nkeep_entries = {KEEP}\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n",
            pki.zenoh_tls(EDGE)
        ),
        ..NodeOptions::default()
    })
}

/// Two accounts opened, then PAYMENTS transfers: one entry each.
fn commands() -> Vec<serde_json::Value> {
    let opens = [cmd::open("o1", "issuer", "EUR", &["issuance"]), cmd::open("o2", "wallet:a", "EUR", &[])];
    opens.into_iter().chain((0..PAYMENTS).map(|i| cmd::transfer(&format!("t{i}"), "issuer", "wallet:a", "0.10", "EUR"))).collect()
}

/// Resends every command of the test; the seq of each reply that says `duplicate` (until
/// one gets no answer).
async fn resent_seqs(device: &Device) -> Vec<Option<u64>> {
    let mut seqs = Vec::new();
    for c in commands() {
        let Some(reply) = device.try_request(c, Duration::from_secs(10)).await else { break };
        seqs.push(reply["duplicate"].as_bool().filter(|d| *d).and(reply["seq"].as_u64()));
    }
    seqs
}
