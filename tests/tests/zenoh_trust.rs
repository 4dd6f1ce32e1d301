//! The trust boundary between nodes, attacked with real zenoh sessions on the 2 × 2
//! topology (mutual TLS, access control from the node configs): no session without a
//! certificate from the deployment's CA, and with one, nothing beyond what its common name
//! is granted. Every attempt must move no money and leave the books as they were.

use bridge::zenoh::Session;
use harness::{ask, cmd, eventually, Device, TestPki, Topology};
use serde_json::{json, Value};
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(60);
/// How long an attacker waits for an answer that must not come.
const DENIED: Duration = Duration::from_secs(2);

fn mint(id: &str) -> Value {
    json!({"id": id, "op": "open_account", "account": format!("issuer:{id}"), "asset": "EUR", "flags": ["issuance"]})
}

fn delivery(id: &str, amount: &str) -> Value {
    json!({"source": "eu/paris-1", "id": id, "debit": "wallet:x@eu/paris-1", "credit": "wallet:alice@eu/berlin-1",
        "asset": "EUR", "amount": amount})
}

/// Every way a session could try to move money on berlin: an operator command that mints,
/// deliveries (direct and relayed), a settlement, one at a time and in bulk. Returns what answered, which must be nothing.
async fn try_everything(session: &Session, tag: &str) -> Vec<String> {
    let settlement = json!({"pending_id": "pay-1", "decision": {"id": "pay-1", "status": "committed", "code": "ok",
        "message": "credited", "seq": 1, "duplicate": false}});
    let attempts = [
        ("ledger/v1/command/eu/berlin-1", mint(&format!("{tag}-mint"))),
        ("ledger/v1/transfer/eu/berlin-1/deliver", delivery(&format!("{tag}-d"), "250.00")),
        ("ledger/v1/transfer/eu/relay", delivery(&format!("{tag}-r"), "750.00")),
        ("ledger/v1/transfer/eu/berlin-1/settle", settlement.clone()),
        ("ledger/v1/transfer/eu/berlin-1/deliveries", json!({"deliveries": [delivery(&format!("{tag}-bd"), "250.00")]})),
        ("ledger/v1/transfer/eu/relays", json!({"deliveries": [delivery(&format!("{tag}-br"), "750.00")]})),
        (
            "ledger/v1/transfer/eu/berlin-1/settlements",
            json!({"groups": [{"destination": "eu/paris-1",
            "decided": [{"index": 0, "pending_id": "pay-1", "decision": settlement["decision"]}]}]}),
        ),
    ];
    let mut answered = Vec::new();
    for (selector, payload) in attempts {
        if let Ok(answer) = bridge::ask_json(session, selector, Some(payload.to_string()), DENIED).await {
            answered.push(format!("{selector}: {answer}"));
        }
    }
    answered
}

async fn alice_posted(ops: &harness::Ops) -> Option<String> {
    let answer = ask(ops, "ledger/v1/query/eu/berlin-1/balance?account=wallet:alice").await?;
    answer["balance"]["posted"].as_str().map(String::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_moves_money_beyond_what_its_certificate_grants() {
    let mut topology = Topology::start();
    let berlin = Device::connect(topology.edge("eu/berlin-1").port, "till-berlin").await;
    assert_eq!(berlin.request(cmd::open("o1", "wallet:alice", "EUR", &[])).await["code"], "ok");
    assert_eq!(berlin.request(cmd::open("o2", "issuer", "EUR", &["issuance"])).await["code"], "ok");
    assert_eq!(berlin.request(cmd::transfer("fund", "issuer", "wallet:alice", "10.00", "EUR")).await["code"], "ok");
    let ops = topology.operator().await;
    assert_eq!(eventually("alice's balance via the region", SETTLE, || async { alice_posted(&ops).await }).await, "10.00");
    let eu = topology.region_port("eu");

    // No certificate at all: plain TCP to the TLS listener never becomes a session.
    let plain = bridge::open_client(&[format!("tcp/127.0.0.1:{eu}")], Duration::from_secs(3), None).await;
    assert!(plain.is_err(), "a plain-TCP session opened on a TLS region");
    // A certificate for the right name from another CA: the handshake fails.
    let stranger = TestPki::new(&["eu/paris-1"]);
    let foreign = bridge::open_client(&[format!("tls/127.0.0.1:{eu}")], Duration::from_secs(3), Some(&stranger.operator())).await;
    assert!(foreign.is_err(), "a certificate from another CA opened a session");
    let foreign = bridge::open_client(&[format!("tls/127.0.0.1:{eu}")], Duration::from_secs(3), Some(&stranger.files("eu/paris-1"))).await;
    assert!(foreign.is_err(), "a certificate from another CA opened a session");

    // The deployment's own certificates, used for what they do not grant.
    bridge::pki::issue(topology.pki.path(), &bridge::pki::Identity::Operator("mallory".into()), &[]).unwrap();
    for identity in ["operator:mallory", "eu/paris-1", "us/nyc-1", "us"] {
        let session = topology.session_as("eu", identity).await.unwrap_or_else(|e| panic!("{identity}: {e}"));
        let answered = try_everything(&session, &identity.replace(['/', ':'], "-")).await;
        assert!(answered.is_empty(), "{identity} was answered: {answered:?}");
    }
    // The operator may command and read, but not deliver, relay or settle.
    let answered = try_everything(&ops, "ops").await;
    assert_eq!(answered.len(), 1, "{answered:?}");
    assert!(answered[0].starts_with("ledger/v1/command/eu/berlin-1") && answered[0].contains("\"ok\""), "{answered:?}");

    // A journal pushed for berlin by paris, and a fake queryable for another node's keys.
    let paris = topology.session_as("eu", "eu/paris-1").await.unwrap();
    let forged = bridge::encode_frame([(99u64, &b"{\"seq\":99}"[..])]);
    paris.put("ledger/v1/journal/eu/berlin-1/entries", forged).await.unwrap();
    let fake = paris.declare_queryable("ledger/v1/status/eu/ghost-1").await.unwrap();
    let fake_balance = paris.declare_queryable("ledger/v1/query/eu/berlin-1/history").await.unwrap();
    let serve = tokio::spawn(async move {
        loop {
            tokio::select! {
                Ok(q) = fake.recv_async() => { let _ = q.reply(q.key_expr().clone(), "{\"node\":\"eu/ghost-1\"}").await; }
                Ok(q) = fake_balance.recv_async() => { let _ = q.reply(q.key_expr().clone(), "{\"entries\":[]}").await; }
                else => break,
            }
        }
    });
    assert!(ask(&ops, "ledger/v1/status/eu/ghost-1").await.is_none(), "a fake queryable answered the operator");
    for _ in 0..5 {
        let history = ask(&ops, "ledger/v1/query/eu/berlin-1/history?account=wallet:alice").await.expect("berlin's own answer");
        assert_ne!(history["entries"], json!([]), "the fake history answered: {history}");
    }
    serve.abort();

    // Books unchanged: alice has her 10.00, nothing was minted, the replica is berlin's own.
    let (code, text, err) = topology.ledgerctl(&["--json", "balance", "wallet:alice@eu/berlin-1"]).await;
    assert_eq!(code, 0, "{text}{err}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["balance"]["posted"], "10.00");
    for tag in ["operator-mallory", "eu-paris-1", "us-nyc-1", "us"] {
        let (code, _, err) = topology.ledgerctl(&["balance", &format!("issuer:{tag}-mint@eu/berlin-1")]).await;
        assert_eq!(code, 1, "{tag}: {err}");
    }
    let (code, text, err) = topology.ledgerctl(&["balance", "issuer:ops-mint@eu/berlin-1"]).await;
    assert_eq!(code, 0, "the operator's own command took effect: {text}{err}");
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let (code, report) = topology.reconcile_report().await;
        if code == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "reconcile still differs: {report}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
