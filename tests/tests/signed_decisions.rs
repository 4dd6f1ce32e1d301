//! Signed decisions (SPEC §9): a source edge posts or voids a cross-node hold only on a
//! decision its destination signed. The test plays a compromised region: it holds region
//! eu's certificate and key, the edge connects to it as to its region, and access control
//! lets it settle. It still cannot make the edge pay out on a decision the destination did
//! not sign; nor credit a delivery the source's region did not sign; the edge's own
//! decisions come back signed by the edge.

use bridge::sign::{decision_message, delivery_message, Signer, Verifier};
use harness::{cmd, free_port, Device, NodeOptions, NodeProcess, TestPki};
use serde_json::{json, Value};
use std::time::Duration;

async fn ask(session: &bridge::zenoh::Session, selector: &str, payload: Value) -> Result<Value, String> {
    let answer = bridge::ask_json(session, selector, Some(payload.to_string()), Duration::from_secs(5)).await;
    answer.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_settles_only_on_a_decision_its_destination_signed() {
    let pki = TestPki::new(&["eu", "us", "eu/solo-1", "us/nyc-1"]);
    let region_port = free_port();
    // The test is region eu: a router with eu's identity and eu's access rules.
    let region = pki.region_stand_in("eu", region_port, &["eu/solo-1"]).await;
    let edge = NodeProcess::start(NodeOptions {
        node_id: Some("eu/solo-1".into()),
        // One decided transfer in RAM: older ones are read back from the file.
        ledger_toml: "resolved_hold_cache_entries = 1".into(),
        extra_toml: format!("[zenoh]\nconnect = [\"tls/127.0.0.1:{region_port}\"]\n{}", pki.zenoh_tls("eu/solo-1")),
        ..NodeOptions::default()
    });
    let till = Device::connect(edge.port, "till-1").await;
    assert_eq!(till.request(cmd::open("o1", "issuer", "EUR", &["issuance"])).await["code"], "ok");
    assert_eq!(till.request(cmd::open("o2", "wallet:a", "EUR", &[])).await["code"], "ok");
    assert_eq!(till.request(cmd::transfer("fund", "issuer", "wallet:a", "10.00", "EUR")).await["code"], "ok");
    // A payment to New York: held at the source, pending (no coordinator runs here).
    let paid = till.request(cmd::transfer("pay-1", "wallet:a", "merchant:m@us/nyc-1", "4.00", "EUR")).await;
    assert_eq!(paid["status"], "pending", "{paid}");

    let settle = "ledger/v1/transfer/eu/solo-1/settle";
    let decision = json!({"id": "till-1:pay-1", "status": "committed", "code": "ok", "message": "credited", "seq": 9, "duplicate": false});
    let message = decision_message("eu/solo-1", "till-1:pay-1", "us/nyc-1", "committed", "ok", Some(9));
    // The edge must be reachable before the refusals below mean anything.
    let reachable = harness::eventually("the edge to answer its region", Duration::from_secs(30), || async {
        ask(&region, settle, json!({"pending_id": "till-1:pay-1", "decision": decision}))
            .await
            .err()
            .filter(|e| e.contains("proof"))
            .map(|_| ())
    });
    reachable.await;

    let signed_by = |who: &str, bytes: &[u8]| serde_json::to_value(Signer::load(&pki.files(who)).unwrap().sign(bytes)).unwrap();
    let stranger = TestPki::new(&["us/nyc-1"]);
    let foreign = serde_json::to_value(Signer::load(&stranger.files("us/nyc-1")).unwrap().sign(&message)).unwrap();
    let rejected_bytes = decision_message("eu/solo-1", "till-1:pay-1", "us/nyc-1", "rejected", "unknown_account", Some(9));
    let forgeries = [
        ("no proof", Value::Null, "proof: missing"),
        ("signed by the region itself", signed_by("eu", &message), "not by \"us/nyc-1\""),
        ("the destination's signature on another decision", signed_by("us/nyc-1", &rejected_bytes), "does not sign this message"),
        ("a certificate from another CA", foreign, "CA"),
    ];
    for (what, proof, why) in forgeries {
        let mut settlement = json!({"pending_id": "till-1:pay-1", "decision": decision});
        if !proof.is_null() {
            settlement["proof"] = proof;
        }
        let refused = ask(&region, settle, settlement).await.expect_err(what);
        assert!(refused.contains(why), "{what}: {refused}");
    }
    // Still held: nothing posted, nothing voided.
    let balance = till.request(cmd::balance("b1", "wallet:a")).await;
    assert_eq!((balance["balance"]["posted"].as_str(), balance["balance"]["pending_debits"].as_str()), (Some("10.00"), Some("4.00")));

    // The destination's own signature over this decision: posted.
    let settlement = json!({"pending_id": "till-1:pay-1", "decision": decision, "proof": signed_by("us/nyc-1", &message)});
    let ack = ask(&region, settle, settlement).await.expect("a signed decision settles");
    assert_eq!(ack["code"], "ok", "{ack}");
    let balance = till.request(cmd::balance("b2", "wallet:a")).await;
    assert_eq!((balance["balance"]["posted"].as_str(), balance["balance"]["pending_debits"].as_str()), (Some("6.00"), Some("0.00")));
    // A second payment, decided too: the first one's hold leaves RAM. A settlement of the
    // first sent again must still be signed by its destination, read back from the file.
    let paid = till.request(cmd::transfer("pay-2", "wallet:a", "merchant:m@us/nyc-1", "1.00", "EUR")).await;
    assert_eq!(paid["status"], "pending", "{paid}");
    let second = json!({"id": "till-1:pay-2", "status": "rejected", "code": "unknown_account", "message": "no such account", "seq": 10, "duplicate": false});
    let second_bytes = decision_message("eu/solo-1", "till-1:pay-2", "us/nyc-1", "rejected", "unknown_account", Some(10));
    let settlement = json!({"pending_id": "till-1:pay-2", "decision": second, "proof": signed_by("us/nyc-1", &second_bytes)});
    assert_eq!(ask(&region, settle, settlement).await.expect("voided")["code"], "ok");
    let unsigned = json!({"pending_id": "till-1:pay-1", "decision": decision});
    let refused = ask(&region, settle, unsigned).await.expect_err("an unsigned settlement of a decided transfer");
    assert!(refused.contains("proof: missing"), "{refused}");
    let again = json!({"pending_id": "till-1:pay-1", "decision": decision, "proof": signed_by("us/nyc-1", &message)});
    let again = ask(&region, settle, again).await.expect("the same decision again");
    assert_eq!((&again["code"], &again["duplicate"]), (&json!("ok"), &json!(true)), "{again}");
    let balance = till.request(cmd::balance("b2b", "wallet:a")).await;
    assert_eq!(balance["balance"]["posted"], "6.00", "voided, and nothing posted twice: {balance}");

    // As a destination the edge credits only a delivery its source's region (us) signed.
    let deliver = "ledger/v1/transfer/eu/solo-1/deliver";
    let delivery = json!({"source": "us/nyc-1", "id": "in-1", "debit": "wallet:x@us/nyc-1", "credit": "wallet:a@eu/solo-1",
        "asset": "EUR", "amount": "1.00"});
    let vouched = delivery_message("us/nyc-1", "in-1", "wallet:x@us/nyc-1", "wallet:a@eu/solo-1", "EUR", "1.00");
    let mut forged = delivery.clone();
    let refused = ask(&region, deliver, forged.clone()).await.expect_err("an unsigned delivery");
    assert!(refused.contains("proof: missing"), "{refused}");
    forged["proof"] = signed_by("eu", &vouched);
    let refused = ask(&region, deliver, forged.clone()).await.expect_err("signed by the wrong region");
    assert!(refused.contains("not by \"us\""), "{refused}");
    forged["proof"] = signed_by("us", &delivery_message("us/nyc-1", "in-1", "wallet:x@us/nyc-1", "wallet:a@eu/solo-1", "EUR", "100.00"));
    let refused = ask(&region, deliver, forged).await.expect_err("a signature over another amount");
    assert!(refused.contains("does not sign"), "{refused}");
    let balance = till.request(cmd::balance("b3", "wallet:a")).await;
    assert_eq!(balance["balance"]["posted"], "6.00", "nothing credited: {balance}");

    // The genuine one is credited, and the edge signs its decision with its own key.
    let mut delivery = delivery;
    delivery["proof"] = signed_by("us", &vouched);
    let answer = ask(&region, deliver, delivery).await.expect("a decision");
    assert_eq!(answer["status"], "committed", "{answer}");
    let proof = serde_json::from_value(answer["proof"].clone()).expect("a signed decision");
    let verifier = Verifier::load(&pki.files("eu").ca).unwrap();
    let signed = decision_message("us/nyc-1", "in-1", "eu/solo-1", "committed", "ok", answer["seq"].as_u64());
    verifier.verify(&proof, "eu/solo-1", &signed).expect("signed by the destination");
}
