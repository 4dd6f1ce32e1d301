//! Bad input over MQTT: every reply code of the closed list is produced by a real command,
//! malformed and oversized payloads get their rejection, and the node keeps serving.

use harness::{cmd, Device, NodeOptions, NodeProcess};
use ledger::core::reply::Code;
use serde_json::{json, Value};
use std::collections::BTreeSet;

struct Probe {
    device: Device,
    seen: BTreeSet<String>,
    n: usize,
}

impl Probe {
    /// Sends a raw payload and checks the reply's code (and that a reply came at all).
    async fn raw(&mut self, payload: Vec<u8>, expected: &str) -> Value {
        self.device.publish(payload).await;
        let reply = self.device.next_unsolicited(harness::REPLY_DEADLINE).await.expect("a reply to bad input");
        self.check(reply, expected)
    }

    async fn send(&mut self, command: Value, expected: &str) -> Value {
        let reply = self.device.request(command.clone()).await;
        let reply = self.check(reply, expected);
        assert_eq!(reply["id"], command["id"]);
        reply
    }

    fn check(&mut self, reply: Value, expected: &str) -> Value {
        assert_eq!(reply["code"].as_str(), Some(expected), "{reply}");
        let status = if expected == "ok" { reply["status"].as_str().unwrap() } else { "rejected" };
        assert_eq!(reply["status"].as_str(), Some(status), "{reply}");
        if expected != "ok" {
            assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()), "a rejection says why: {reply}");
            assert_eq!(reply["seq"], Value::Null);
        }
        self.seen.insert(expected.to_string());
        reply
    }

    fn id(&mut self) -> String {
        self.n += 1;
        format!("x{}", self.n)
    }

    /// The node still books and reads after whatever came before.
    async fn still_serving(&mut self) {
        let id = self.id();
        self.send(cmd::balance(&id, "wallet:a"), "ok").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_code_is_reachable_and_the_node_keeps_serving() {
    let hash = broker::hash_password("pw");
    let extra = format!(
        "[[assets]]\ncode = \"BIG\"\nscale = 8\nmax_amount = \"90000000000\"\n\n\
         [[devices]]\nid = \"ops\"\npassword_hash = \"{hash}\"\nmay_debit = [\"*\"]\nmay_issue = true\n\n\
         [[devices]]\nid = \"kiosk\"\npassword_hash = \"{hash}\"\nmay_debit = [\"wallet:kiosk\"]\n"
    );
    let mut node = NodeProcess::start(NodeOptions { extra_toml: extra, ..NodeOptions::default() });
    let device = Device::connect_as(node.port, "ops", Some(("ops", "pw"))).await.unwrap();
    let mut p = Probe { device, seen: BTreeSet::new(), n: 0 };

    // Setup, which also covers `ok`.
    p.send(cmd::open("s1", "issuer", "EUR", &["issuance"]), "ok").await;
    p.send(cmd::open("s2", "wallet:a", "EUR", &[]), "ok").await;
    p.send(cmd::open("s3", "wallet:b", "EUR", &[]), "ok").await;
    p.send(cmd::open("s4", "wallet:usd", "USD", &[]), "ok").await;
    p.send(cmd::open("s5", "wallet:closed", "EUR", &[]), "ok").await;
    p.send(json!({"id": "s6", "op": "close_account", "account": "wallet:closed"}), "ok").await;
    p.send(cmd::transfer("s7", "issuer", "wallet:a", "10.00", "EUR"), "ok").await;
    p.send(cmd::open("s8", "big:issuer", "BIG", &["issuance"]), "ok").await;
    p.send(cmd::open("s9", "big:sink", "BIG", &[]), "ok").await;

    // Malformed payloads: the reply names the id when one can be read.
    p.raw(b"this is not json".to_vec(), "invalid_json").await;
    p.raw(b"{\"id\":\"cut\",\"op\":\"tr".to_vec(), "invalid_json").await;
    p.raw(b"[1,2,3]".to_vec(), "invalid_json").await;
    let mut huge = br#"{"id":"huge-1","op":"transfer","metadata":{"pad":""#.to_vec();
    huge.extend(std::iter::repeat_n(b'a', 1024 * 1024));
    huge.extend(br#""}}"#);
    let reply = p.raw(huge, "payload_too_large").await;
    assert_eq!(reply["id"], "huge-1", "the id of an oversized command is still named");
    p.still_serving().await;

    let id = p.id();
    p.send(json!({"id": id, "op": "refund", "account": "wallet:a"}), "unknown_op").await;
    let id = p.id();
    let r = p.send(json!({"id": id, "op": "transfer", "debit": "wallet:a", "credit": "wallet:b", "asset": "EUR"}), "missing_field").await;
    assert!(r["message"].as_str().unwrap().starts_with("amount"), "{r}");
    let id = p.id();
    let r = p
        .send(
            json!({"id": id, "op": "transfer", "debit": "Wallet A", "credit": "wallet:b", "amount": "1", "asset": "EUR"}),
            "invalid_field",
        )
        .await;
    assert!(r["message"].as_str().unwrap().starts_with("debit"), "{r}");
    let id = p.id();
    p.send(cmd::transfer(&id, "wallet:a", "wallet:b", "1.005", "EUR"), "invalid_amount").await;
    let id = p.id();
    p.send(json!({"id": id, "op": "transfer", "debit": "wallet:a", "credit": "wallet:b", "amount": 1.5, "asset": "EUR"}), "invalid_amount")
        .await;
    let id = p.id();
    p.send(cmd::transfer(&id, "wallet:a", "wallet:b", "1", "XYZ"), "unknown_asset").await;
    let id = p.id();
    p.send(cmd::transfer(&id, "wallet:a", "wallet:usd", "1", "EUR"), "asset_mismatch").await;
    let id = p.id();
    p.send(cmd::transfer(&id, "wallet:a", "wallet:nobody", "1", "EUR"), "unknown_account").await;
    let id = p.id();
    p.send(cmd::open(&id, "wallet:a", "EUR", &[]), "account_exists").await;
    let id = p.id();
    p.send(cmd::transfer(&id, "wallet:a", "wallet:closed", "1", "EUR"), "account_closed").await;
    let id = p.id();
    p.send(json!({"id": id, "op": "close_account", "account": "wallet:a"}), "account_not_empty").await;
    let id = p.id();
    p.send(cmd::transfer(&id, "wallet:a", "wallet:a", "1", "EUR"), "same_account").await;
    let id = p.id();
    p.send(cmd::transfer(&id, "wallet:a", "wallet:b", "10.01", "EUR"), "insufficient_funds").await;
    let id = p.id();
    p.send(cmd::transfer(&id, "wallet:a", "merchant:cafe@eu/paris-2", "1", "EUR"), "remote_account").await;
    let id = p.id();
    p.send(cmd::post(&id, "no-such-hold", None), "unknown_pending").await;
    p.send(cmd::hold("h1", "wallet:a", "wallet:b", "2", "EUR", None), "ok").await;
    let id = p.id();
    p.send(cmd::post(&id, "h1", Some("2.01")), "amount_exceeds_pending").await;
    p.send(cmd::post("h1-post", "h1", None), "ok").await;
    let id = p.id();
    p.send(cmd::void(&id, "h1"), "pending_posted").await;
    p.send(cmd::hold("h2", "wallet:a", "wallet:b", "1", "EUR", None), "ok").await;
    p.send(cmd::void("h2-void", "h2"), "ok").await;
    let id = p.id();
    p.send(cmd::post(&id, "h2", None), "pending_voided").await;
    p.send(cmd::hold("h3", "wallet:a", "wallet:b", "1", "EUR", Some(1)), "ok").await;
    // Wait for the expiry by polling the hold's debit account; bounded by the deadline.
    let deadline = std::time::Instant::now() + harness::REPLY_DEADLINE;
    loop {
        let id = p.id();
        let b = p.send(cmd::balance(&id, "wallet:a"), "ok").await;
        if b["balance"]["pending_debits"] == "0.00" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "hold h3 never expired");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let id = p.id();
    p.send(cmd::post(&id, "h3", None), "pending_expired").await;
    p.send(cmd::transfer("dup", "wallet:a", "wallet:b", "1", "EUR"), "ok").await;
    p.send(cmd::transfer("dup", "wallet:a", "wallet:b", "2", "EUR"), "id_conflict").await;
    // Two maximal amounts overflow the issuer's signed 64-bit balance.
    p.send(cmd::transfer("big1", "big:issuer", "big:sink", "90000000000", "BIG"), "ok").await;
    let id = p.id();
    p.send(cmd::transfer(&id, "big:issuer", "big:sink", "90000000000", "BIG"), "overflow").await;

    // A device may only debit the accounts its config binds it to.
    let kiosk = Device::connect_as(node.port, "kiosk", Some(("kiosk", "pw"))).await.unwrap();
    let stolen = kiosk.request(cmd::transfer("k1", "wallet:a", "wallet:b", "1", "EUR")).await;
    p.check(stolen, "forbidden");

    p.still_serving().await;
    // `disk_full` needs a disk that refuses writes: disk_full.rs.
    let expected: BTreeSet<String> = Code::ALL.iter().filter(|c| **c != Code::DiskFull).map(|c| c.as_str().to_string()).collect();
    assert_eq!(p.seen, expected, "every code of the closed list was produced");
    assert!(node.is_running(), "the node survived all of it");
}

/// A message with MQTT 5 properties (here a user property) that reaches an MQTT 3.1.1
/// subscriber is sent without them: 3.1.1 has no properties. It once panicked the 3.1.1
/// listener, after which no 3.1.1 device could connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_property_never_reaches_or_breaks_a_311_connection() {
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let node = NodeProcess::start(NodeOptions { with_v5: true, ..NodeOptions::default() });
    let mut victim = Device::connect(node.port, "victim").await;

    let mut options = MqttOptions::new("v5-sender", "127.0.0.1", node.port_v5.unwrap());
    options.set_keep_alive(std::time::Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let properties = PublishProperties { user_properties: vec![("k".to_string(), "v".to_string())], ..PublishProperties::default() };
    let deadline = tokio::time::Instant::now() + harness::REPLY_DEADLINE;
    let mut sent = false;
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await.expect("PUBACK before deadline").expect("v5 connection") {
            Event::Incoming(Packet::ConnAck(_)) if !sent => {
                let payload = br#"{"note":"with a property"}"#.to_vec();
                client
                    .publish_with_properties("ledger/v1/reply/victim", QoS::AtLeastOnce, false, payload, properties.clone())
                    .await
                    .unwrap();
                sent = true;
            }
            Event::Incoming(Packet::PubAck(_)) => break,
            _ => {}
        }
    }
    let got = victim.next_unsolicited(harness::REPLY_DEADLINE).await.expect("the 3.1.1 subscriber gets the payload");
    assert_eq!(got["note"], "with a property");

    // The 3.1.1 listener still serves: the subscriber, and a device connecting afterwards.
    let reply = victim.request(cmd::open("after-1", "wallet:victim", "EUR", &[])).await;
    assert_eq!(reply["code"], "ok", "{reply}");
    let late = Device::connect(node.port, "late").await;
    let reply = late.request(cmd::open("after-2", "wallet:late", "EUR", &[])).await;
    assert_eq!(reply["code"], "ok", "{reply}");
}

/// The broker keeps no retained message: a retained publish (here a forged reply) reaches
/// only the subscribers there are, and neither stays in memory nor comes back on connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_not_kept() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

    let node = NodeProcess::start(NodeOptions::default());
    let mut options = MqttOptions::new("retainer", "127.0.0.1", node.port);
    options.set_keep_alive(std::time::Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let forged = br#"{"id":"pay-1","status":"committed","code":"ok","message":"forged","seq":1,"duplicate":false}"#.to_vec();
    client.publish("ledger/v1/reply/target", QoS::AtLeastOnce, true, forged).await.unwrap();
    let deadline = tokio::time::Instant::now() + harness::REPLY_DEADLINE;
    loop {
        let event = tokio::time::timeout_at(deadline, eventloop.poll()).await.expect("PUBACK before deadline").expect("connection");
        if let Event::Incoming(Packet::PubAck(_)) = event {
            break;
        }
    }
    // A retained message would be delivered right after the SUBACK, before any later
    // message on the topic; the first message the target sees must be its own reply.
    let mut target = Device::connect(node.port, "target").await;
    let reply = target.request(cmd::open("own-1", "wallet:target", "EUR", &[])).await;
    assert_eq!(reply["code"], "ok", "{reply}");
    assert!(target.unsolicited.try_recv().is_err(), "a retained message came back to a new subscriber");
}

/// A flood of wrong-password logins for a real device id costs the node a bounded amount
/// of memory (argon2 takes 19 MiB per check: two checker threads, each with one reused
/// buffer, and a bounded queue; after a few failures the id backs off and is refused
/// without a check), and the device, which logged in before, still logs in with its
/// password afterwards: guessing cannot lock a known device out. It once grew the node by
/// gigabytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_flood_costs_bounded_memory() {
    let hash = broker::hash_password("right");
    let extra = format!("[[devices]]\nid = \"till-1\"\npassword_hash = \"{hash}\"\nmay_debit = [\"*\"]\nmay_issue = true\n");
    let node = NodeProcess::start(NodeOptions { extra_toml: extra, ..NodeOptions::default() });
    drop(Device::connect_as(node.port, "till-1", Some(("till-1", "right"))).await.expect("the device logs in"));
    let before = node.rss_bytes();
    const ATTEMPTS: usize = 200;
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..ATTEMPTS {
        let port = node.port;
        attempts.spawn(async move { Device::connect_as(port, "till-1", Some(("till-1", "wrong"))).await.is_err() });
    }
    let mut peak = before;
    let mut refused = 0;
    while let Some(done) = attempts.join_next().await {
        refused += usize::from(done.expect("attempt task"));
        peak = peak.max(node.rss_bytes());
    }
    assert_eq!(refused, ATTEMPTS, "every wrong password is refused");
    let grown = peak.saturating_sub(before) / (1024 * 1024);
    assert!(grown < 128, "the node grew by {grown} MiB under {ATTEMPTS} wrong-password logins");
    let till = Device::connect_as(node.port, "till-1", Some(("till-1", "right"))).await.expect("the device still logs in");
    let reply = till.request(cmd::open("after-flood", "wallet:till-1", "EUR", &[])).await;
    assert_eq!(reply["code"], "ok", "{reply}");
}

/// An MQTT 3.1.1 CONNECT with a password, sent from `source` (any 127.0.0.0/8 address is
/// this machine): whether the broker accepted it (CONNACK, return code 0).
async fn login_from(source: [u8; 4], port: u16, client_id: &str, password: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let field = |text: &str| [&(text.len() as u16).to_be_bytes()[..], text.as_bytes()].concat();
    let mut body = [&[0, 4][..], b"MQTT", &[4, 0xC2, 0, 30]].concat();
    for text in [client_id, client_id, password] {
        body.extend(field(text));
    }
    assert!(body.len() < 128, "one-byte remaining length");
    let packet = [&[0x10, body.len() as u8][..], &body].concat();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((std::net::Ipv4Addr::from(source), 0).into()).unwrap();
    let mut stream = socket.connect(([127, 0, 0, 1], port).into()).await.expect("tcp connect");
    stream.write_all(&packet).await.unwrap();
    let mut connack = [0u8; 4];
    let read = tokio::time::timeout(harness::REPLY_DEADLINE, stream.read_exact(&mut connack)).await.expect("an answer in time");
    read.is_ok() && connack == [0x20, 2, 0, 0]
}

/// Failed logins back off per source address as well as per device id: an address that
/// keeps failing (here by guessing device ids, which costs no password check) waits even
/// with a right password, while other addresses and devices already known go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_back_off_per_source_address() {
    let hash = broker::hash_password("right");
    let metrics = harness::free_port();
    let extra = ["till-1", "till-2", "till-3"]
        .map(|id| format!("[[devices]]\nid = \"{id}\"\npassword_hash = \"{hash}\"\nmay_debit = [\"*\"]\n\n"))
        .concat()
        + &format!("[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n");
    let node = NodeProcess::start(NodeOptions { extra_toml: extra, ..NodeOptions::default() });
    const GUESSER: [u8; 4] = [127, 0, 0, 1];
    const NEIGHBOUR: [u8; 4] = [127, 0, 0, 2];
    assert!(login_from(GUESSER, node.port, "till-3", "right").await, "till-3 logs in before the guessing");
    // 14 failures: the 10 free ones, then waits of 1, 2, 4 and 8 s; the last runs 16 s,
    // longer than the rest of this test.
    for i in 0..broker::FREE_ADDRESS_FAILURES + 4 {
        assert!(!login_from(GUESSER, node.port, &format!("ghost-{i}"), "guess").await);
    }
    assert!(!login_from(GUESSER, node.port, "till-1", "right").await, "the guessing address waits, right password or not");
    assert!(login_from(NEIGHBOUR, node.port, "till-1", "right").await, "another address is not held back");
    assert!(login_from(GUESSER, node.port, "till-1", "right").await, "a password already verified passes the back-off");
    assert!(login_from(GUESSER, node.port, "till-3", "right").await, "so does the device that logged in before");
    assert!(!login_from(GUESSER, node.port, "till-2", "right").await, "a first login from the guessing address still waits");
    let metrics = harness::http_get(metrics, "/metrics");
    let backed_off = metrics.lines().find(|l| l.starts_with("edgeledger_logins_backed_off_total ")).expect("the metric");
    assert_ne!(backed_off, "edgeledger_logins_backed_off_total 0", "{backed_off}");
}
