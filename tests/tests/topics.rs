//! One authenticated device cannot act for another (SPEC §5): with devices configured, the
//! broker holds each device to its own command and reply topics. Each attack below worked
//! before the topic policy: a command on another device's topic debited its wallet, a
//! forged reply reached the other device, a wildcard subscription read everyone's replies.

use harness::{cmd, Device, NodeOptions, NodeProcess, REPLY_DEADLINE};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeReasonCode};
use serde_json::Value;

const PASSWORD: &str = "pw";

fn node() -> NodeProcess {
    let hash = broker::hash_password(PASSWORD);
    let device = |id: &str, may_debit: &str, may_issue: bool| {
        format!("[[devices]]\nid = \"{id}\"\npassword_hash = \"{hash}\"\nmay_debit = [\"{may_debit}\"]\nmay_issue = {may_issue}\n\n")
    };
    let extra = device("admin", "*", true) + &device("dev-a", "wallet:a", false) + &device("dev-b", "wallet:b", false);
    NodeProcess::start(NodeOptions { extra_toml: extra, ..NodeOptions::default() })
}

/// An attacker holding dev-a's own credential, speaking MQTT directly.
async fn attacker(port: u16) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new("dev-a", "127.0.0.1", port);
    options.set_keep_alive(std::time::Duration::from_secs(30));
    options.set_credentials("dev-a", PASSWORD);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    next(&mut eventloop, |p| matches!(p, Packet::ConnAck(_))).await;
    (client, eventloop)
}

/// Polls until a packet `wanted` matches, within the reply deadline.
async fn next(eventloop: &mut EventLoop, wanted: impl Fn(&Packet) -> bool) -> Packet {
    let deadline = tokio::time::Instant::now() + REPLY_DEADLINE;
    loop {
        let event = tokio::time::timeout_at(deadline, eventloop.poll()).await.expect("packet before deadline").expect("connection");
        if let Event::Incoming(packet) = event {
            if wanted(&packet) {
                return packet;
            }
        }
    }
}

async fn setup(port: u16) -> (Device, Device) {
    let admin = Device::connect_as(port, "admin", Some(("admin", PASSWORD))).await.unwrap();
    for command in [
        cmd::open("o1", "issuer:eur", "EUR", &["issuance"]),
        cmd::open("o2", "wallet:a", "EUR", &[]),
        cmd::open("o3", "wallet:b", "EUR", &[]),
        cmd::open("o4", "merchant:m", "EUR", &[]),
        cmd::transfer("f1", "issuer:eur", "wallet:b", "10.00", "EUR"),
    ] {
        assert_eq!(admin.request(command).await["code"], "ok");
    }
    let dev_b = Device::connect_as(port, "dev-b", Some(("dev-b", PASSWORD))).await.unwrap();
    (admin, dev_b)
}

async fn posted(device: &Device, account: &str) -> Value {
    let reply = device.request(cmd::balance(&format!("read-{account}-{}", rand_suffix()), account)).await;
    reply["balance"]["posted"].clone()
}

fn rand_suffix() -> String {
    broker::random_hex(4)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_command_on_another_devices_topic() {
    let node = node();
    let (admin, dev_b) = setup(node.port).await;
    let (client, mut eventloop) = attacker(node.port).await;
    let forged = cmd::transfer("steal-1", "wallet:b", "merchant:m", "5.00", "EUR").to_string();
    client.publish("ledger/v1/cmd/dev-b", QoS::AtLeastOnce, false, forged).await.unwrap();
    // The PUBACK comes after the broker decided; a command it took would be read before
    // anything published after it.
    next(&mut eventloop, |p| matches!(p, Packet::PubAck(_))).await;
    assert_eq!(posted(&dev_b, "wallet:b").await, "10.00", "bob's wallet was debited through another device's topic");
    assert_eq!(posted(&admin, "merchant:m").await, "0.00");
    // The same command on dev-a's own topic is dev-a's, and dev-a may not debit wallet:b.
    client.subscribe("ledger/v1/reply/dev-a", QoS::AtLeastOnce).await.unwrap();
    next(&mut eventloop, |p| matches!(p, Packet::SubAck(_))).await;
    let own = cmd::transfer("steal-2", "wallet:b", "merchant:m", "5.00", "EUR").to_string();
    client.publish("ledger/v1/cmd/dev-a", QoS::AtLeastOnce, false, own).await.unwrap();
    let Packet::Publish(reply) = next(&mut eventloop, |p| matches!(p, Packet::Publish(_))).await else { unreachable!() };
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!((reply["id"].as_str(), reply["code"].as_str()), (Some("steal-2"), Some("forbidden")), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_forge_another_devices_reply() {
    let node = node();
    let (_admin, mut dev_b) = setup(node.port).await;
    let (client, mut eventloop) = attacker(node.port).await;
    let forged = r#"{"id":"pay-9","status":"committed","code":"ok","message":"paid","seq":9,"duplicate":false}"#;
    client.publish("ledger/v1/reply/dev-b", QoS::AtLeastOnce, false, forged).await.unwrap();
    next(&mut eventloop, |p| matches!(p, Packet::PubAck(_))).await;
    // A forged reply taken by the broker would reach dev-b before the reply to this read.
    assert_eq!(posted(&dev_b, "wallet:b").await, "10.00");
    assert!(dev_b.unsolicited.try_recv().is_err(), "dev-b received a reply another device forged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_read_other_devices_replies() {
    let node = node();
    let (_admin, dev_b) = setup(node.port).await;
    let (client, mut eventloop) = attacker(node.port).await;
    client.subscribe("ledger/v1/#", QoS::AtLeastOnce).await.unwrap();
    let Packet::SubAck(wide) = next(&mut eventloop, |p| matches!(p, Packet::SubAck(_))).await else { unreachable!() };
    client.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    let Packet::SubAck(all) = next(&mut eventloop, |p| matches!(p, Packet::SubAck(_))).await else { unreachable!() };
    client.subscribe("ledger/v1/reply/dev-b", QoS::AtLeastOnce).await.unwrap();
    let Packet::SubAck(other) = next(&mut eventloop, |p| matches!(p, Packet::SubAck(_))).await else { unreachable!() };
    client.subscribe("ledger/v1/reply/dev-a", QoS::AtLeastOnce).await.unwrap();
    let Packet::SubAck(own) = next(&mut eventloop, |p| matches!(p, Packet::SubAck(_))).await else { unreachable!() };
    for refused in [&wide, &all, &other] {
        assert_eq!(refused.return_codes, vec![SubscribeReasonCode::Failure], "{refused:?}");
    }
    assert_eq!(own.return_codes, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);

    // dev-b transacts; then dev-a asks something of its own. Had any subscription taken,
    // dev-b's reply would reach dev-a first.
    assert_eq!(posted(&dev_b, "wallet:b").await, "10.00");
    let own_read = cmd::balance("own-read", "wallet:a").to_string();
    client.publish("ledger/v1/cmd/dev-a", QoS::AtLeastOnce, false, own_read).await.unwrap();
    let Packet::Publish(first) = next(&mut eventloop, |p| matches!(p, Packet::Publish(_))).await else { unreachable!() };
    assert_eq!(&first.topic[..], "ledger/v1/reply/dev-a");
    let reply: Value = serde_json::from_slice(&first.payload).unwrap();
    assert_eq!(reply["id"], "own-read", "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_scoped_to_the_device_that_sent_them() {
    let node = node();
    let (admin, dev_b) = setup(node.port).await;
    assert_eq!(admin.request(cmd::transfer("f2", "issuer:eur", "wallet:a", "10.00", "EUR")).await["code"], "ok");
    let dev_a = Device::connect_as(node.port, "dev-a", Some(("dev-a", PASSWORD))).await.unwrap();
    // dev-a squats dev-b's next id first, with a payment of its own.
    let a = dev_a.request(cmd::transfer("pay-1", "wallet:a", "merchant:m", "1.00", "EUR")).await;
    let b = dev_b.request(cmd::transfer("pay-1", "wallet:b", "merchant:m", "2.00", "EUR")).await;
    assert_eq!((a["code"].as_str(), b["code"].as_str()), (Some("ok"), Some("ok")), "{a} {b}");
    assert_eq!(b["duplicate"], false, "{b}");
    assert_ne!(a["seq"], b["seq"]);
    assert_eq!(posted(&admin, "merchant:m").await, "3.00");
    // Resends are each device's own.
    let again = dev_b.request(cmd::transfer("pay-1", "wallet:b", "merchant:m", "2.00", "EUR")).await;
    assert_eq!((again["duplicate"].as_bool(), &again["seq"]), (Some(true), &b["seq"]), "{again}");
    // dev-a cannot void dev-b's hold by naming its id.
    let held = dev_b.request(cmd::hold("h-1", "wallet:b", "merchant:m", "1.00", "EUR", None)).await;
    assert_eq!(held["status"], "pending", "{held}");
    let void = dev_a.request(cmd::void("v-1", "h-1")).await;
    assert_eq!(void["code"], "unknown_pending", "{void}");
    // Naming it in full finds it, and dev-a may still not touch wallet:b's hold.
    let void = dev_a.request(cmd::void("v-2", "dev-b:h-1")).await;
    assert_eq!(void["code"], "forbidden", "{void}");
    let balance = dev_b.request(cmd::balance("r-1", "wallet:b")).await;
    assert_eq!(balance["balance"]["pending_debits"], "1.00", "{balance}");
}
