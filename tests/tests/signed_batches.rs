//! Cross-node transfers in bulk under signatures (SPEC §9): one signature covers a batch of
//! deliveries or of decisions, and each transfer in it is still checked on its own. The test
//! plays a compromised region eu (its certificate and key; access control lets it deliver
//! and settle): a batch of decisions settles only the transfers whose decision is the one
//! their destination signed, and a batch of deliveries is credited only when the sources'
//! region signed exactly those deliveries.

use bridge::sign::{decision_digest, decision_message, decisions_message, deliveries_message, delivery_message, Signer, Verifier};
use harness::{cmd, free_port, Device, NodeOptions, NodeProcess, TestPki};
use serde_json::{json, Value};
use std::time::Duration;

async fn ask(session: &bridge::zenoh::Session, selector: &str, payload: Value) -> Result<Value, String> {
    let answer = bridge::ask_json(session, selector, Some(payload.to_string()), Duration::from_secs(5)).await;
    answer.map_err(|e| e.to_string())
}

fn decision(id: &str, status: &str, code: &str, seq: u64) -> Value {
    json!({"id": id, "status": status, "code": code, "message": "decided", "seq": seq, "duplicate": false})
}

fn digest(pending_id: &str, destination: &str, status: &str, code: &str, seq: u64) -> Option<String> {
    Some(decision_digest(&decision_message("eu/solo-1", pending_id, destination, status, code, Some(seq))))
}

/// Posted and pending debits of `wallet:a`.
async fn wallet(till: &Device, id: &str) -> (String, String) {
    let b = till.request(cmd::balance(id, "wallet:a")).await;
    (b["balance"]["posted"].as_str().unwrap().to_string(), b["balance"]["pending_debits"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_signature_covers_a_batch_and_each_transfer_is_still_checked() {
    let pki = TestPki::new(&["eu", "us", "eu/solo-1", "us/nyc-1", "us/sf-1"]);
    let region_port = free_port();
    let region = pki.region_stand_in("eu", region_port, &["eu/solo-1"]).await;
    let edge = NodeProcess::start(NodeOptions {
        node_id: Some("eu/solo-1".into()),
        extra_toml: format!("[zenoh]\nconnect = [\"tls/127.0.0.1:{region_port}\"]\n{}", pki.zenoh_tls("eu/solo-1")),
        ..NodeOptions::default()
    });
    let till = Device::connect(edge.port, "till-1").await;
    assert_eq!(till.request(cmd::open("o1", "issuer", "EUR", &["issuance"])).await["code"], "ok");
    assert_eq!(till.request(cmd::open("o2", "wallet:a", "EUR", &[])).await["code"], "ok");
    assert_eq!(till.request(cmd::transfer("fund", "issuer", "wallet:a", "10.00", "EUR")).await["code"], "ok");
    for (id, amount) in [("pay-1", "4.00"), ("pay-2", "1.00"), ("pay-3", "2.00")] {
        let paid = till.request(cmd::transfer(id, "wallet:a", "merchant:m@us/nyc-1", amount, "EUR")).await;
        assert_eq!(paid["status"], "pending", "{paid}");
    }
    let signed_by = |who: &str, bytes: &[u8]| serde_json::to_value(Signer::load(&pki.files(who)).unwrap().sign(bytes)).unwrap();
    let settlements = "ledger/v1/transfer/eu/solo-1/settlements";
    let (d1, d2, d3) = (
        decision("till-1:pay-1", "committed", "ok", 9),
        decision("till-1:pay-2", "committed", "ok", 10),
        decision("till-1:pay-3", "committed", "ok", 11),
    );
    let unsigned =
        json!({"groups": [{"destination": "us/nyc-1", "decided": [{"index": 0, "pending_id": "till-1:pay-1", "decision": d1}]}]});
    let refused = harness::eventually("the edge to answer its region", Duration::from_secs(30), || async {
        ask(&region, settlements, unsigned.clone()).await.ok()
    })
    .await;
    assert!(refused[0]["refused"]["error"].as_str().unwrap().contains("digests: missing"), "{refused}");

    // nyc signed pay-1 committed and pay-2 rejected; the region claims pay-2 committed.
    let digests = vec![
        digest("till-1:pay-1", "us/nyc-1", "committed", "ok", 9),
        digest("till-1:pay-2", "us/nyc-1", "rejected", "unknown_account", 10),
    ];
    let signed_message = decisions_message("us/nyc-1", &digests);
    let group = |proof: Value| {
        json!({"destination": "us/nyc-1", "digests": digests, "proof": proof, "decided": [
            {"index": 0, "pending_id": "till-1:pay-1", "decision": d1},
            {"index": 1, "pending_id": "till-1:pay-2", "decision": d2}]})
    };
    let by_region = ask(&region, settlements, json!({"groups": [group(signed_by("eu", &signed_message))]})).await.unwrap();
    for outcome in by_region.as_array().unwrap() {
        assert!(outcome["refused"]["error"].as_str().unwrap().contains("not by \"us/nyc-1\""), "{by_region}");
    }
    assert_eq!(wallet(&till, "b1").await, ("10.00".into(), "7.00".into()), "nothing settled on the region's own signature");

    // sf signs a decision on pay-3, a transfer to nyc: refused, whatever it lists.
    let sf_digests = vec![digest("till-1:pay-3", "us/sf-1", "committed", "ok", 11)];
    let sf = json!({"destination": "us/sf-1", "digests": sf_digests, "proof": signed_by("us/sf-1", &decisions_message("us/sf-1", &sf_digests)),
        "decided": [{"index": 0, "pending_id": "till-1:pay-3", "decision": d3}]});
    let answer = ask(&region, settlements, json!({"groups": [group(signed_by("us/nyc-1", &signed_message)), sf]})).await.unwrap();
    let outcomes = answer.as_array().unwrap();
    assert_eq!(outcomes.len(), 3, "{answer}");
    assert_eq!(outcomes[0]["ok"]["code"], "ok", "pay-1 is the decision nyc signed: {answer}");
    assert!(outcomes[1]["refused"]["error"].as_str().unwrap().contains("not the decision us/nyc-1 signed"), "{answer}");
    assert!(outcomes[2]["refused"]["error"].as_str().unwrap().contains("destination is us/nyc-1"), "{answer}");
    assert_eq!(wallet(&till, "b2").await, ("6.00".into(), "3.00".into()), "pay-1 posted, pay-2 and pay-3 still held");

    // A local hold, and an id with no hold at all: no destination to check a signature
    // against, so nothing is settled, however well the decision is signed.
    assert_eq!(till.request(cmd::open("o3", "merchant:local", "EUR", &[])).await["code"], "ok");
    let held = till.request(cmd::hold("local-1", "wallet:a", "merchant:local", "1.00", "EUR", None)).await;
    assert_eq!(held["status"], "pending", "{held}");
    let strays =
        vec![digest("till-1:local-1", "us/nyc-1", "committed", "ok", 12), digest("till-1:ghost", "us/nyc-1", "committed", "ok", 13)];
    let stray = json!({"destination": "us/nyc-1", "digests": strays, "proof": signed_by("us/nyc-1", &decisions_message("us/nyc-1", &strays)),
        "decided": [{"index": 0, "pending_id": "till-1:local-1", "decision": decision("till-1:local-1", "committed", "ok", 12)},
                    {"index": 1, "pending_id": "till-1:ghost", "decision": decision("till-1:ghost", "committed", "ok", 13)}]});
    let answer = ask(&region, settlements, json!({"groups": [stray]})).await.unwrap();
    for outcome in answer.as_array().unwrap() {
        assert!(outcome["refused"]["error"].as_str().unwrap().contains("names no cross-node hold"), "{answer}");
    }
    assert_eq!(wallet(&till, "b2b").await, ("6.00".into(), "4.00".into()), "the local hold still pending");

    // As a destination: a batch is credited only as the sources' region signed it.
    let deliveries = "ledger/v1/transfer/eu/solo-1/deliveries";
    let one = |id: &str, source: &str, credit: &str, amount: &str| json!({"source": source, "id": id, "debit": format!("wallet:x@{source}"), "credit": credit, "asset": "EUR", "amount": amount});
    let batch = [one("in-1", "us/nyc-1", "wallet:a@eu/solo-1", "1.00"), one("in-2", "us/sf-1", "nobody@eu/solo-1", "2.00")];
    let vouched = deliveries_message(
        batch
            .iter()
            .map(|d| {
                let f = |k: &str| d[k].as_str().unwrap().to_string();
                delivery_message(&f("source"), &f("id"), &f("debit"), &f("credit"), &f("asset"), &f("amount"))
            })
            .collect::<Vec<_>>()
            .iter()
            .map(Vec::as_slice),
    );
    let refused = ask(&region, deliveries, json!({"deliveries": batch})).await.expect_err("an unsigned batch");
    assert!(refused.contains("proof: missing"), "{refused}");
    let refused =
        ask(&region, deliveries, json!({"deliveries": batch, "proof": signed_by("eu", &vouched)})).await.expect_err("wrong region");
    assert!(refused.contains("not by \"us\""), "{refused}");
    let mut inflated = batch.clone();
    inflated[0]["amount"] = json!("100.00");
    let refused = ask(&region, deliveries, json!({"deliveries": inflated, "proof": signed_by("us", &vouched)})).await.expect_err("changed");
    assert!(refused.contains("does not sign"), "{refused}");
    let mixed = [batch[0].clone(), one("in-3", "eu/solo-1", "wallet:a@eu/solo-1", "1.00")];
    let refused = ask(&region, deliveries, json!({"deliveries": mixed, "proof": signed_by("us", &vouched)})).await.expect_err("mixed");
    assert!(refused.contains("deliveries[1].source"), "{refused}");
    assert_eq!(wallet(&till, "b3").await.0, "6.00", "nothing credited");

    // The genuine batch: one credited, one rejected (no such account), each decision listed
    // by its digest under the edge's one signature; sent again, the same decisions.
    let genuine = json!({"deliveries": batch, "proof": signed_by("us", &vouched)});
    let answer = ask(&region, deliveries, genuine.clone()).await.expect("decisions");
    let outcomes = answer["outcomes"].as_array().unwrap();
    assert_eq!(
        (outcomes[0]["ok"]["status"].as_str(), outcomes[1]["ok"]["status"].as_str()),
        (Some("committed"), Some("rejected")),
        "{answer}"
    );
    let digests: Vec<Option<String>> = serde_json::from_value(answer["digests"].clone()).unwrap();
    let proof = serde_json::from_value(answer["proof"].clone()).expect("a signature");
    let verifier = Verifier::load(&pki.files("eu").ca).unwrap();
    verifier.verify(&proof, "eu/solo-1", &decisions_message("eu/solo-1", &digests)).expect("signed by the destination");
    for (k, (source, id)) in [("us/nyc-1", "in-1"), ("us/sf-1", "in-2")].into_iter().enumerate() {
        let o = &outcomes[k]["ok"];
        let message =
            decision_message(source, id, "eu/solo-1", o["status"].as_str().unwrap(), o["code"].as_str().unwrap(), o["seq"].as_u64());
        assert_eq!(digests[k], Some(decision_digest(&message)), "digest of {id}");
    }
    let again = ask(&region, deliveries, genuine).await.expect("decisions again");
    assert_eq!(again["outcomes"][0]["ok"]["seq"], outcomes[0]["ok"]["seq"], "{again}");
    assert_eq!(again["outcomes"][0]["ok"]["duplicate"], true, "{again}");
    assert_eq!(wallet(&till, "b4").await.0, "7.00", "credited once");
}
