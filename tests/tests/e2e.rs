//! End to end: the real `ledger-node` binary, real MQTT clients over TCP.

use harness::{cmd, Device, NodeOptions, NodeProcess, REPLY_DEADLINE};
use serde_json::{json, Value};
use std::time::Duration;

fn code(reply: &Value) -> &str {
    reply["code"].as_str().unwrap_or_default()
}

fn status(reply: &Value) -> &str {
    reply["status"].as_str().unwrap_or_default()
}

async fn expect_ok(device: &Device, command: Value) -> Value {
    let reply = device.request(command.clone()).await;
    assert_eq!(code(&reply), "ok", "{command} -> {reply}");
    reply
}

async fn balance(device: &Device, account: &str) -> Value {
    let reply = expect_ok(device, cmd::balance(&format!("bal-{account}-{}", rand_suffix()), account)).await;
    reply["balance"].clone()
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The README quickstart, over MQTT: issuance account, two wallets, fund, pay, read.
async fn open_and_fund(device: &Device) {
    expect_ok(device, cmd::open("o1", "issuer:eur", "EUR", &["issuance"])).await;
    expect_ok(device, cmd::open("o2", "wallet:alice", "EUR", &["no_overdraft"])).await;
    expect_ok(device, cmd::open("o3", "merchant:cafe", "EUR", &[])).await;
    let funded = expect_ok(device, cmd::transfer("f1", "issuer:eur", "wallet:alice", "20.00", "EUR")).await;
    assert_eq!(status(&funded), "committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pays_and_reads_balances_exactly_once() {
    let node = NodeProcess::start(NodeOptions::default());
    let device = Device::connect(node.port, "terminal-1").await;
    open_and_fund(&device).await;

    let paid = expect_ok(&device, cmd::transfer("pay-1", "wallet:alice", "merchant:cafe", "4.50", "EUR")).await;
    assert_eq!(paid["duplicate"], false);
    let seq = paid["seq"].as_u64().unwrap();

    // A resend gets the recorded reply, marked duplicate, and changes nothing.
    let again = device.request(cmd::transfer("pay-1", "wallet:alice", "merchant:cafe", "4.50", "EUR")).await;
    assert_eq!((code(&again), again["duplicate"].as_bool(), again["seq"].as_u64()), ("ok", Some(true), Some(seq)));
    // Same id, other content.
    let conflict = device.request(cmd::transfer("pay-1", "wallet:alice", "merchant:cafe", "5.00", "EUR")).await;
    assert_eq!((status(&conflict), code(&conflict)), ("rejected", "id_conflict"));

    let alice = balance(&device, "wallet:alice").await;
    assert_eq!(
        alice,
        json!({"account": "wallet:alice", "asset": "EUR", "posted": "15.50", "pending_debits": "0.00", "pending_credits": "0.00", "available": "15.50"})
    );
    assert_eq!(balance(&device, "merchant:cafe").await["posted"], "4.50");
    assert_eq!(balance(&device, "issuer:eur").await["posted"], "-20.00");

    let broke = device.request(cmd::transfer("pay-2", "wallet:alice", "merchant:cafe", "15.51", "EUR")).await;
    assert_eq!(code(&broke), "insufficient_funds", "{broke}");
    assert!(broke["message"].as_str().unwrap().contains("15.50"), "{broke}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_post_partially_void_and_notify_the_placing_device() {
    let node = NodeProcess::start(NodeOptions::default());
    let terminal = Device::connect(node.port, "terminal-1").await;
    let mut charger = Device::connect(node.port, "charger-9").await;
    open_and_fund(&terminal).await;

    // The charger reserves 10.00, then books 6.25 of it; the rest goes back.
    let held = charger.request(cmd::hold("h1", "wallet:alice", "merchant:cafe", "10.00", "EUR", Some(600))).await;
    assert_eq!((status(&held), code(&held)), ("pending", "ok"), "{held}");
    assert!(held["expires_at_ms"].as_u64().is_some());
    let alice = balance(&terminal, "wallet:alice").await;
    assert_eq!(
        (alice["posted"].as_str(), alice["pending_debits"].as_str(), alice["available"].as_str()),
        (Some("20.00"), Some("10.00"), Some("10.00"))
    );

    // Another device posts it, naming it as device:id (ids are scoped to their sender); the
    // charger hears about it on its reply topic, under its own id.
    let unknown = terminal.request(cmd::post("p0", "h1", Some("6.25"))).await;
    assert_eq!(code(&unknown), "unknown_pending", "{unknown}");
    let posted = expect_ok(&terminal, cmd::post("p1", "charger-9:h1", Some("6.25"))).await;
    assert_eq!((posted["posted"].as_str(), posted["released"].as_str()), (Some("6.25"), Some("3.75")));
    let notice = charger.next_unsolicited(REPLY_DEADLINE).await.expect("notice of the post");
    assert_eq!(notice["event"], "pending_resolved");
    assert_eq!(
        (notice["pending_id"].as_str(), notice["resolution"].as_str(), notice["amount"].as_str()),
        (Some("h1"), Some("posted"), Some("6.25"))
    );

    let alice = balance(&terminal, "wallet:alice").await;
    assert_eq!((alice["posted"].as_str(), alice["pending_debits"].as_str()), (Some("13.75"), Some("0.00")));
    assert_eq!(balance(&terminal, "merchant:cafe").await["posted"], "6.25");

    // A hold resolves once.
    let again = terminal.request(cmd::void("v1", "charger-9:h1")).await;
    assert_eq!(code(&again), "pending_posted");

    // A void releases everything.
    charger.request(cmd::hold("h2", "wallet:alice", "merchant:cafe", "1.00", "EUR", None)).await;
    expect_ok(&charger, cmd::void("v2", "h2")).await;
    assert_eq!(balance(&terminal, "wallet:alice").await["available"], "13.75");
    let over = charger.request(cmd::post("p2", "h2", None)).await;
    assert_eq!(code(&over), "pending_voided");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_expire_on_the_node_clock_and_the_device_is_told() {
    let node = NodeProcess::start(NodeOptions::default());
    let mut device = Device::connect(node.port, "charger-1").await;
    open_and_fund(&device).await;
    let held = device.request(cmd::hold("h-exp", "wallet:alice", "merchant:cafe", "7.00", "EUR", Some(1))).await;
    assert_eq!(status(&held), "pending");

    let notice = device.next_unsolicited(Duration::from_secs(15)).await.expect("expiry notice");
    assert_eq!((notice["pending_id"].as_str(), notice["resolution"].as_str()), (Some("h-exp"), Some("expired")), "{notice}");
    let alice = balance(&device, "wallet:alice").await;
    assert_eq!((alice["pending_debits"].as_str(), alice["available"].as_str()), (Some("0.00"), Some("20.00")));
    let late = device.request(cmd::post("late", "h-exp", None)).await;
    assert_eq!(code(&late), "pending_expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_apply_all_or_nothing() {
    let node = NodeProcess::start(NodeOptions::default());
    let device = Device::connect(node.port, "till-1").await;
    open_and_fund(&device).await;

    let failing = json!({"id": "b1", "op": "batch", "ops": [
        cmd::transfer("b1-1", "wallet:alice", "merchant:cafe", "5.00", "EUR"),
        cmd::transfer("b1-2", "wallet:alice", "merchant:cafe", "50.00", "EUR"),
    ]});
    let reply = device.request(failing).await;
    assert_eq!((status(&reply), code(&reply)), ("rejected", "insufficient_funds"));
    assert!(reply["message"].as_str().unwrap().starts_with("ops[1]"), "{reply}");
    assert_eq!(balance(&device, "wallet:alice").await["posted"], "20.00", "nothing of a failed batch applies");

    let ok = json!({"id": "b2", "op": "batch", "ops": [
        cmd::transfer("b2-1", "wallet:alice", "merchant:cafe", "5.00", "EUR"),
        cmd::hold("b2-2", "wallet:alice", "merchant:cafe", "2.00", "EUR", None),
    ]});
    let reply = expect_ok(&device, ok).await;
    assert_eq!(
        reply["results"],
        json!([{"id": "b2-1", "status": "committed", "code": "ok"}, {"id": "b2-2", "status": "pending", "code": "ok"}])
    );
    let alice = balance(&device, "wallet:alice").await;
    assert_eq!((alice["posted"].as_str(), alice["pending_debits"].as_str()), (Some("15.00"), Some("2.00")));
    // The inner hold is a real hold.
    expect_ok(&device, cmd::post("b2-p", "b2-2", None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_sigkill_and_restart() {
    let mut node = NodeProcess::start(NodeOptions::default());
    {
        let device = Device::connect(node.port, "terminal-1").await;
        open_and_fund(&device).await;
        expect_ok(&device, cmd::transfer("pay-1", "wallet:alice", "merchant:cafe", "1.25", "EUR")).await;
        device.disconnect().await;
    }
    node.restart();
    let device = Device::connect(node.port, "terminal-1").await;
    assert_eq!(balance(&device, "wallet:alice").await["posted"], "18.75");
    let again = device.request(cmd::transfer("pay-1", "wallet:alice", "merchant:cafe", "1.25", "EUR")).await;
    assert_eq!((code(&again), again["duplicate"].as_bool()), ("ok", Some(true)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_response_topic_and_correlation_data_are_honoured() {
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let node = NodeProcess::start(NodeOptions { with_v5: true, ..NodeOptions::default() });
    // On the MQTT 5 listener, and on the 3.1.1 one, which takes MQTT 5 clients too.
    for (port, id) in [(node.port_v5.unwrap(), "v5-open"), (node.port, "v5-open-on-v4-port")] {
        let mut options = MqttOptions::new("v5-device", "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        client.subscribe("ledger/v1/reply/v5-device/42", QoS::AtLeastOnce).await.unwrap();
        let properties = PublishProperties {
            response_topic: Some("ledger/v1/reply/v5-device/42".to_string()),
            correlation_data: Some(b"corr-7".to_vec().into()),
            ..PublishProperties::default()
        };
        let command = cmd::open(id, &format!("wallet:{id}"), "EUR", &[]);
        let mut published = false;
        let deadline = tokio::time::Instant::now() + REPLY_DEADLINE;
        loop {
            let event = tokio::time::timeout_at(deadline, eventloop.poll()).await.expect("reply before deadline").expect("connection");
            match event {
                Event::Incoming(Packet::SubAck(_)) if !published => {
                    client
                        .publish_with_properties(
                            "ledger/v1/cmd/v5-device",
                            QoS::AtLeastOnce,
                            false,
                            command.to_string(),
                            properties.clone(),
                        )
                        .await
                        .unwrap();
                    published = true;
                }
                Event::Incoming(Packet::Publish(p)) => {
                    assert_eq!(&p.topic[..], b"ledger/v1/reply/v5-device/42");
                    let reply: Value = serde_json::from_slice(&p.payload).unwrap();
                    assert_eq!((reply["id"].as_str(), code(&reply)), (Some(id), "ok"), "{reply}");
                    let correlation = p.properties.and_then(|props| props.correlation_data);
                    assert_eq!(correlation.as_deref(), Some(&b"corr-7"[..]));
                    break;
                }
                _ => {}
            }
        }
        let _ = client.disconnect().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_log_in_with_hashed_passwords_and_debit_only_their_accounts() {
    let hash = broker::hash_password("till-pw");
    let admin_hash = broker::hash_password("admin-pw");
    let extra = format!(
        "[[devices]]\nid = \"till-1\"\npassword_hash = \"{hash}\"\nmay_debit = [\"wallet:till-*\"]\n\n\
         [[devices]]\nid = \"admin\"\npassword_hash = \"{admin_hash}\"\nmay_debit = [\"*\"]\nmay_issue = true\n"
    );
    let node = NodeProcess::start(NodeOptions { extra_toml: extra, ..NodeOptions::default() });

    assert!(Device::connect_as(node.port, "till-1", Some(("till-1", "wrong"))).await.is_err(), "wrong password refused");
    assert!(Device::connect_as(node.port, "till-1", None).await.is_err(), "no password refused");
    assert!(Device::connect_as(node.port, "till-2", Some(("till-1", "till-pw"))).await.is_err(), "client id must be the username");

    let admin = Device::connect_as(node.port, "admin", Some(("admin", "admin-pw"))).await.unwrap();
    let till = Device::connect_as(node.port, "till-1", Some(("till-1", "till-pw"))).await.unwrap();
    expect_ok(&admin, cmd::open("a1", "issuer:eur", "EUR", &["issuance"])).await;
    expect_ok(&admin, cmd::open("a2", "wallet:other", "EUR", &[])).await;
    expect_ok(&admin, cmd::open("a3", "merchant:x", "EUR", &[])).await;
    expect_ok(&till, cmd::open("t1", "wallet:till-1", "EUR", &[])).await;
    expect_ok(&admin, cmd::transfer("a4", "issuer:eur", "wallet:other", "9.00", "EUR")).await;
    expect_ok(&admin, cmd::transfer("a5", "issuer:eur", "wallet:till-1", "9.00", "EUR")).await;

    expect_ok(&till, cmd::transfer("t2", "wallet:till-1", "merchant:x", "1.00", "EUR")).await;
    let stolen = till.request(cmd::transfer("t3", "wallet:other", "merchant:x", "1.00", "EUR")).await;
    assert_eq!(code(&stolen), "forbidden", "{stolen}");
    assert!(stolen["message"].as_str().unwrap().contains("wallet:other"));
    let minted = till.request(cmd::transfer("t4", "issuer:eur", "wallet:till-1", "1.00", "EUR")).await;
    assert_eq!(code(&minted), "forbidden");
    assert_eq!(balance(&admin, "wallet:other").await["posted"], "9.00");
    // Only a device with may_issue creates credit.
    let mint = till.request(cmd::open("t5", "wallet:till-mint", "EUR", &["issuance"])).await;
    assert_eq!(code(&mint), "forbidden", "{mint}");
    let limit = till
        .request(json!({"id": "t6", "op": "open_account", "account": "wallet:till-od", "asset": "EUR", "overdraft_limit": "100"}))
        .await;
    assert_eq!(code(&limit), "forbidden", "{limit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_listener_speaks_mqtt() {
    use std::io::{Read, Write};
    let node = NodeProcess::start(NodeOptions { with_ws: true, ..NodeOptions::default() });
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", node.port_ws.unwrap())).unwrap();
    tcp.set_read_timeout(Some(REPLY_DEADLINE)).unwrap();
    let handshake = "GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";
    tcp.write_all(handshake.as_bytes()).unwrap();
    let mut response = Vec::new();
    let mut byte = [0u8; 1];
    while !response.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).unwrap();
        response.push(byte[0]);
    }
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 101"), "{response}");

    // MQTT 3.1.1 CONNECT (client id "ws-1", clean session) in one masked binary frame.
    let connect: &[u8] = &[0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 4, b'w', b's', b'-', b'1'];
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x82, 0x80 | connect.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(connect.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&frame).unwrap();

    // The broker answers with CONNACK, accepted, in an unmasked binary frame.
    let mut reply = [0u8; 6];
    tcp.read_exact(&mut reply).unwrap();
    assert_eq!(reply, [0x82, 4, 0x20, 2, 0, 0]);
}
