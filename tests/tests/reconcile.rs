//! `ledgerctl reconcile` and `ledgerctl verify` on the 2 × 2 topology, real processes on
//! loopback. Each kind of drift is made on purpose and the report must name it: an edge cut
//! off (unreadable), a transfer only its destination knows, and a transfer
//! whose destination credited another amount than the source holds (both forged by a test
//! that holds region eu's certificate and relays in the regions' protocol). After healing, reconcile reports nothing.

use bridge::sign::{delivery_message, Signer};
use harness::{cmd, eventually, Device, Topology};
use serde_json::{json, Value};
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(60);

fn differences_of<'a>(report: &'a Value, kind: &str) -> Vec<&'a Value> {
    report["differences"].as_array().unwrap().iter().filter(|d| d["kind"] == kind).collect()
}

/// Relays `delivery` to region us as region eu would, signed with eu's key, until it is
/// answered (a relay the destination did not answer in time is asked again, as the
/// coordinator does).
async fn relay(topology: &Topology, session: &bridge::zenoh::Session, delivery: &Value) -> Value {
    let field = |k: &str| delivery[k].as_str().unwrap().to_string();
    let message = delivery_message(&field("source"), &field("id"), &field("debit"), &field("credit"), &field("asset"), &field("amount"));
    let mut signed = delivery.clone();
    signed["proof"] = serde_json::to_value(Signer::load(&topology.pki.files("eu")).unwrap().sign(&message)).unwrap();
    eventually("the relayed delivery answered", SETTLE, || async {
        bridge::ask_json(session, "ledger/v1/transfer/us/relay", Some(signed.to_string()), Duration::from_secs(5)).await.ok()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_names_each_drift_and_reports_nothing_when_healed() {
    let mut topology = Topology::start();
    let berlin = Device::connect(topology.edge("eu/berlin-1").port, "till-berlin").await;
    let nyc = Device::connect(topology.edge("us/nyc-1").port, "till-nyc").await;
    for (device, id, account, flags) in
        [(&berlin, "o1", "issuer", vec!["issuance"]), (&berlin, "o2", "wallet:alice", vec![]), (&nyc, "o3", "merchant:cafe", vec![])]
    {
        assert_eq!(device.request(cmd::open(id, account, "EUR", &flags)).await["code"], "ok");
    }
    assert_eq!(berlin.request(cmd::transfer("fund", "issuer", "wallet:alice", "100.00", "EUR")).await["code"], "ok");
    let paid = berlin.request(cmd::transfer("pay-1", "wallet:alice", "merchant:cafe@us/nyc-1", "2.00", "EUR")).await;
    assert_eq!(paid["status"], "pending");

    // Everything agrees once the transfer settled: exit 0, nothing reported.
    let deadline = std::time::Instant::now() + SETTLE;
    let clean = loop {
        let (code, report) = topology.reconcile_report().await;
        if code == 0 {
            break report;
        }
        assert!(std::time::Instant::now() < deadline, "reconcile still differs: {report}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(clean["differences"], json!([]));
    assert_eq!(clean["checked"]["edges"].as_array().unwrap().len(), 4);
    assert!(clean["checked"]["transfer_records"].as_u64().unwrap() >= 2, "{clean}");
    let (code, text, _) = topology.ledgerctl(&["reconcile"]).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with("no differences: 4 edges"), "{text}");

    // Drift 1: berlin cut off from its region keeps booking. Operators reach it through
    // its region only, so reconcile cannot read it: a difference, never a pass.
    topology.proxy("eu/berlin-1").cut();
    for i in 0..3 {
        assert_eq!(berlin.request(cmd::transfer(&format!("local-{i}"), "issuer", "wallet:alice", "1.00", "EUR")).await["code"], "ok");
    }
    let report = eventually("berlin reported unreadable", SETTLE, || async {
        let (code, report) = topology.reconcile_report().await;
        (code == 1 && differences_of(&report, "no_answer").iter().any(|d| d["node"] == "eu/berlin-1")).then_some(report)
    })
    .await;
    assert!(differences_of(&report, "replica_behind").is_empty(), "{report}");
    let (code, text, _) = topology.ledgerctl(&["reconcile", "eu/berlin-1"]).await;
    assert_eq!(code, 1);
    assert!(text.contains("no_answer") && text.contains("eu/berlin-1"), "{text}");

    topology.proxy("eu/berlin-1").heal();
    eventually("the replica to catch up", SETTLE, || async { (topology.reconcile_report().await.0 == 0).then_some(()) }).await;

    // Drift 2: a transfer only its destination knows. A delivery in the regions' protocol
    // for a transfer berlin never sent, relayed to region us under region eu's identity
    // (a stolen key: access control lets eu relay): nyc credits it and records it.
    let ops = topology.session_as("us", "eu").await.unwrap();
    let forged = json!({"source": "eu/berlin-1", "id": "forged-1", "debit": "wallet:alice@eu/berlin-1",
        "credit": "merchant:cafe@us/nyc-1", "asset": "EUR", "amount": "7.00"});
    let answer = relay(&topology, &ops, &forged).await;
    assert_eq!(answer["status"], "committed", "{answer}");

    // Drift 3: a mismatched amount. Berlin's region cannot see the hold (cut off) while a
    // forged delivery of the same transfer (key `device:id`) with another amount reaches nyc first.
    topology.proxy("eu/berlin-1").cut();
    let held = berlin.request(cmd::transfer("pay-2", "wallet:alice", "merchant:cafe@us/nyc-1", "4.50", "EUR")).await;
    assert_eq!(held["status"], "pending");
    let wrong = json!({"source": "eu/berlin-1", "id": "till-berlin:pay-2", "debit": "wallet:alice@eu/berlin-1",
        "credit": "merchant:cafe@us/nyc-1", "asset": "EUR", "amount": "4.00"});
    let answer = relay(&topology, &ops, &wrong).await;
    assert_eq!(answer["status"], "committed", "{answer}");
    topology.proxy("eu/berlin-1").heal();

    // The replica catches up; the two forged records remain, each named precisely.
    let report = eventually("the forged transfers reported once the replica caught up", SETTLE, || async {
        let (code, report) = topology.reconcile_report().await;
        (code == 1 && differences_of(&report, "replica_behind").is_empty() && !differences_of(&report, "transfer_mismatch").is_empty())
            .then_some(report)
    })
    .await;
    let unknown = differences_of(&report, "transfer_unknown_at_source");
    assert_eq!(unknown.len(), 1, "{report}");
    assert_eq!(unknown[0]["id"], "forged-1");
    assert_eq!((unknown[0]["source"].as_str(), unknown[0]["destination"].as_str()), (Some("eu/berlin-1"), Some("us/nyc-1")));
    assert_eq!((unknown[0]["amount"].as_str(), unknown[0]["decision"].as_str()), (Some("7.00"), Some("credited")));
    let mismatch = differences_of(&report, "transfer_mismatch");
    assert_eq!(mismatch.len(), 1, "{report}");
    assert_eq!(mismatch[0]["id"], "till-berlin:pay-2");
    assert_eq!(
        (mismatch[0]["field"].as_str(), mismatch[0]["at_source"].as_str(), mismatch[0]["at_destination"].as_str()),
        (Some("amount"), Some("4.50"), Some("4.00"))
    );
    // The source never settles a transfer its destination recorded with other content.
    let unsettled = differences_of(&report, "transfer_unsettled");
    assert_eq!(unsettled.len(), 1, "{report}");
    assert_eq!(unsettled[0]["id"], "till-berlin:pay-2");
    assert_eq!(report["differences"].as_array().unwrap().len(), 3, "nothing else differs: {report}");
    let (code, text, _) = topology.ledgerctl(&["reconcile"]).await;
    assert_eq!(code, 1);
    assert!(
        text.contains("transfer till-berlin:pay-2 eu/berlin-1 -> us/nyc-1 amount")
            && text.contains("4.50 (source)")
            && text.contains("4.00 (destination)"),
        "{text}"
    );
    // Scope: sf takes part in no transfer and agrees with its replica.
    let (code, text, _) = topology.ledgerctl(&["reconcile", "us/sf-1"]).await;
    assert_eq!(code, 0, "{text}");

    // Verify over zenoh: every journal's chain and sums hold (drift is not corruption), and
    // each region's replica ends on its edge's hash.
    for node in ["eu", "us", "eu/berlin-1"] {
        let (code, text, err) = topology.ledgerctl(&["verify", node]).await;
        assert_eq!(code, 0, "verify {node}: {text}{err}");
        assert!(text.contains("verified"), "{text}");
    }
    // An edge its region does not know: refused (exit 1); a node nobody answers for: exit 3.
    let (code, _, err) = topology.ledgerctl(&["--timeout", "1", "balance", "wallet:x@eu/nowhere-1"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("eu/nowhere-1 is not an edge of region eu"), "{err}");
    let (code, _, err) = topology.ledgerctl(&["--timeout", "1", "balance", "wallet:x@zz/nowhere-1"]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("zz/nowhere-1"), "{err}");

    // Offline: the stopped nodes' redb files verify.
    let db = topology.edge("eu/berlin-1").db_path();
    topology.edge("eu/berlin-1").kill9();
    let (code, text, err) = topology.ledgerctl(&["verify", "--db", db.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{text}{err}");
    assert!(text.contains("journal of eu/berlin-1") && text.contains("verified"), "{text}");
    let region_db = topology.region("eu").db_path();
    topology.region("eu").kill9();
    let (code, text, err) = topology.ledgerctl(&["--json", "verify", "--db", region_db.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{text}{err}");
    let checked: Value = serde_json::from_str(&text).unwrap();
    // paris took no entries, so eu holds one replica: berlin's.
    assert_eq!(checked["results"].as_array().unwrap().len(), 1, "{checked}");
}
