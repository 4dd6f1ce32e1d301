//! Devices over TLS: the broker's TLS listener takes a device that trusts the deployment's
//! CA and its password travels encrypted; a client that does not trust the certificate, a
//! plain-MQTT client on the TLS port and a client that opens TCP and never finishes its
//! handshake change nothing for anybody else, and the listener stays up (`/health` 200).

use harness::{cmd, free_port, Device, NodeOptions, NodeProcess, TestPki};
use std::io::Write;
use std::net::TcpStream;

const PASSWORD: &str = "till-secret";

fn health(port: u16) -> String {
    harness::http_get(port, "/health")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_connect_over_tls_and_broken_handshakes_hold_up_nobody() {
    let pki = TestPki::new(&["test/edge-1"]);
    let metrics = free_port();
    let hash = broker::hash_password(PASSWORD);
    let node = NodeProcess::start(NodeOptions {
        mqtt_tls: Some(pki.files("test/edge-1")),
        extra_toml: format!(
            "[[devices]]\nid = \"till-1\"\npassword_hash = \"{hash}\"\nmay_debit = [\"*\"]\nmay_issue = true\n\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"
        ),
        ..NodeOptions::default()
    });
    let tls_port = node.port_tls.unwrap();
    let ca = pki.files("test/edge-1").ca;

    // Stalled clients first: one opens TCP and sends nothing, one speaks plain MQTT to the
    // TLS port. Neither may hold up the device that comes next.
    let stalled = TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
    let mut plain = TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
    plain.write_all(b"\x10\x10\x00\x04MQTT\x04\x02\x00\x1e\x00\x04evil").unwrap();

    let till = Device::connect_tls(tls_port, "till-1", Some(("till-1", PASSWORD)), &ca).await.expect("a TLS device connects");
    assert_eq!(till.request(cmd::open("o1", "issuer", "EUR", &["issuance"])).await["code"], "ok");
    assert_eq!(till.request(cmd::open("o2", "wallet:a", "EUR", &[])).await["code"], "ok");
    assert_eq!(till.request(cmd::transfer("t1", "issuer", "wallet:a", "5.00", "EUR")).await["code"], "ok");

    // A client trusting another CA refuses the broker's certificate; a wrong password over
    // TLS is refused like any other.
    let other = TestPki::new(&["test/edge-1"]);
    assert!(Device::connect_tls(tls_port, "till-1", Some(("till-1", PASSWORD)), &other.files("test/edge-1").ca).await.is_err());
    assert!(Device::connect_tls(tls_port, "till-1", Some(("till-1", "wrong")), &ca).await.is_err());

    // The same device again (taking over its session): the listener is still up and healthy.
    let second = Device::connect_tls(tls_port, "till-1", Some(("till-1", PASSWORD)), &ca).await.expect("reconnects");
    let balance = second.request(cmd::balance("b1", "wallet:a")).await;
    assert_eq!(balance["balance"]["posted"], "5.00", "{balance}");
    let response = health(metrics);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    drop((stalled, plain));
}

/// Devices with client certificates (`device:ID` from the deployment's CA): the certificate
/// is the login, for exactly the client id it names and only for a listed device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_logs_in_as_the_device_it_names_only() {
    let pki = TestPki::new(&["test/edge-1"]);
    for device in ["meter-1", "meter-2", "ghost-9"] {
        bridge::pki::issue(pki.path(), &bridge::pki::Identity::Device(device.into()), &[]).unwrap();
    }
    let hash = broker::hash_password(PASSWORD);
    let node = NodeProcess::start(NodeOptions {
        mqtt_tls: Some(pki.files("test/edge-1")),
        mqtt_client_certs: true,
        extra_toml: format!(
            "[[devices]]\nid = \"meter-1\"\nmay_debit = [\"*\"]\nmay_issue = true\n\n\
             [[devices]]\nid = \"meter-2\"\nmay_debit = [\"wallet:m2\"]\n\n\
             [[devices]]\nid = \"till-1\"\npassword_hash = \"{hash}\"\nmay_debit = [\"*\"]\n"
        ),
        ..NodeOptions::default()
    });
    let port = node.port_tls.unwrap();
    let meter = Device::connect_with_cert(port, "meter-1", &pki.files("device:meter-1")).await.expect("its certificate logs it in");
    assert_eq!(meter.request(cmd::open("o1", "issuer", "EUR", &["issuance"])).await["code"], "ok");

    // Another device's certificate, a device nobody listed, a node's certificate, and no
    // certificate at all (meter-1 has no password): refused.
    assert!(Device::connect_with_cert(port, "meter-1", &pki.files("device:meter-2")).await.is_err(), "meter-2's certificate as meter-1");
    assert!(Device::connect_with_cert(port, "ghost-9", &pki.files("device:ghost-9")).await.is_err(), "an unlisted device");
    assert!(Device::connect_with_cert(port, "test/edge-1", &pki.files("test/edge-1")).await.is_err(), "a node's certificate");
    let ca = pki.files("test/edge-1").ca;
    assert!(Device::connect_tls(port, "meter-1", Some(("meter-1", "anything")), &ca).await.is_err(), "meter-1 has no password");
    // A certificate from another CA never completes the handshake.
    let other = TestPki::new(&["test/edge-1"]);
    bridge::pki::issue(other.path(), &bridge::pki::Identity::Device("meter-1".into()), &[]).unwrap();
    let mut foreign = other.files("device:meter-1");
    foreign.ca = ca.clone();
    assert!(Device::connect_with_cert(port, "meter-1", &foreign).await.is_err(), "another CA's certificate");
    // Password devices still log in with their password on the same listener.
    let till = Device::connect_tls(port, "till-1", Some(("till-1", PASSWORD)), &ca).await.expect("password login");
    assert_eq!(till.request(cmd::balance("b1", "issuer")).await["code"], "ok");
    drop(meter);
}
