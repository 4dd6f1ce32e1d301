//! The embedded MQTT broker: rumqttd configured from the node config (MQTT 3.1.1, MQTT 5 and
//! websocket listeners, limits, segment sizes) with device authentication against argon2
//! hashes (`logins`: back-off per device id and per source address), and TLS listeners.
//!
//! Owns the broker's setup only. It must not interpret payloads or know ledger semantics;
//! the node reads commands through a local link and decides everything itself.

use config::NodeConfig;
use rumqttd::{Config, ConnectionSettings, RouterConfig, SegmentConfig, ServerSettings};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

pub mod link;
mod logins;

use logins::Credentials;
pub use logins::{hash_password, verify_password, FREE_ADDRESS_FAILURES, FREE_FAILURES, LOGINS_BACKED_OFF, MAX_TRACKED_ADDRESSES};

pub use rumqttd::Broker;

/// The commands topic filter the node subscribes to.
pub const COMMAND_FILTER: &str = "ledger/v1/cmd/+";
pub const COMMAND_PREFIX: &str = "ledger/v1/cmd/";
pub const REPLY_PREFIX: &str = "ledger/v1/reply/";

/// Builds the rumqttd config for `node`. Devices listed in the config must log in with
/// their id as both client id and username; with no devices listed, anyone may connect.
pub fn broker_config(node: &NodeConfig) -> Result<Config, config::ConfigError> {
    let mut credentials = HashMap::new();
    for (i, device) in node.devices.iter().enumerate() {
        // A device with no password logs in with a client certificate only.
        if device.password_hash.is_some() || device.password_hash_env.is_some() {
            credentials.insert(device.id.clone(), node.device_password_hash(i)?);
        }
    }
    // With a client CA, a verified certificate named `device:ID` logs in as device ID.
    let device_ids: std::collections::HashSet<String> = node.devices.iter().map(|d| d.id.clone()).collect();
    let certificate_clients: Option<rumqttd::CertificateClients> = match &node.mqtt.tls_client_ca {
        Some(_) if !device_ids.is_empty() => Some(Arc::new(move |name: &str| {
            name.strip_prefix(DEVICE_CERT_PREFIX).filter(|id| device_ids.contains(*id)).map(str::to_string)
        })),
        _ => None,
    };
    let devices_listed = !node.devices.is_empty();
    let credentials = Arc::new(Credentials::new(credentials));
    let listener = |name: &str, addr: SocketAddr| {
        let mut connections = ConnectionSettings {
            connection_timeout_ms: node.mqtt.connection_timeout_ms,
            max_payload_size: node.mqtt.max_packet_bytes,
            max_inflight_count: node.mqtt.max_inflight,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
            topic_policy: None,
            certificate_clients: certificate_clients.clone(),
        };
        if devices_listed {
            // With devices configured, each one uses its own topics only (SPEC §5); the
            // open default (no devices) keeps every topic open.
            connections.topic_policy = Some(rumqttd::TopicPolicy::new(device_topics));
            let credentials = credentials.clone();
            connections.set_auth_handler(move |client_id: String, username: String, password: String, peer: std::net::IpAddr| {
                credentials.clone().login(client_id, username, password, peer)
            });
        }
        (name.to_string(), ServerSettings { name: name.to_string(), listen: addr, tls: None, next_connection_delay_ms: 0, connections })
    };
    let tls = match (&node.mqtt.tls_certificate, &node.mqtt.tls_private_key) {
        (Some(cert), Some(key)) => {
            let capath = node.mqtt.tls_client_ca.as_ref().map(|ca| ca.display().to_string());
            Some(rumqttd::TlsConfig::Rustls { capath, certpath: cert.display().to_string(), keypath: key.display().to_string() })
        }
        _ => None,
    };
    // A protocol's plain and TLS listeners, each only when configured.
    let servers = |plain: (&str, Option<SocketAddr>), secure: (&str, Option<SocketAddr>)| {
        let mut servers = HashMap::new();
        if let Some(addr) = plain.1 {
            servers.extend([listener(plain.0, addr)]);
        }
        if let Some(addr) = secure.1 {
            let (name, mut settings) = listener(secure.0, addr);
            settings.tls = tls.clone();
            servers.insert(name, settings);
        }
        (!servers.is_empty()).then_some(servers)
    };
    // rumqttd keeps a log per subscribed filter. The command log is large, so that a busy
    // ledger does not lose commands; every other log (a device's replies) is small, so that
    // memory stays near max_connections * reply_segment_bytes * reply_segment_count.
    let command_log = SegmentConfig { max_segment_size: node.mqtt.segment_bytes, max_segment_count: node.mqtt.segment_count };
    let router = RouterConfig {
        max_connections: node.mqtt.max_connections,
        max_outgoing_packet_count: 1024,
        max_segment_size: node.mqtt.reply_segment_bytes,
        max_segment_count: node.mqtt.reply_segment_count,
        custom_segment: Some(HashMap::from([(COMMAND_FILTER.to_string(), command_log)])),
        ..RouterConfig::default()
    };
    Ok(Config {
        id: 0,
        router,
        v4: servers(("mqtt-3.1.1", node.mqtt.listen_v4), ("mqtt-3.1.1-tls", node.mqtt.listen_tls)),
        v5: servers(("mqtt-5", node.mqtt.listen_v5), ("mqtt-5-tls", node.mqtt.listen_v5_tls)),
        ws: servers(("websocket", node.mqtt.listen_ws), ("websocket-tls", None)),
        ..Config::default()
    })
}

/// The TLS listeners' certificate and key parse (PEM, a key the broker can use), checked
/// before start-up so that the error names the key and file: rumqttd itself would only log
/// it and run without the listener.
pub fn check_tls_files(node: &NodeConfig) -> Result<(), config::ConfigError> {
    if let Some(ca) = &node.mqtt.tls_client_ca {
        let pem = std::fs::read(ca)
            .map_err(|e| config::ConfigError { key: "mqtt.tls_client_ca".into(), message: format!("{}: {e}", ca.display()) })?;
        if rustls_pemfile::certs(&mut &pem[..]).next().is_none() {
            return Err(config::ConfigError {
                key: "mqtt.tls_client_ca".into(),
                message: format!("{}: no PEM certificate in it", ca.display()),
            });
        }
    }
    let tls_listeners = node.mqtt.listeners().iter().any(|(_, addr, tls)| *tls && addr.is_some());
    let (Some(cert), Some(key)) = (&node.mqtt.tls_certificate, &node.mqtt.tls_private_key) else { return Ok(()) };
    if !tls_listeners {
        return Ok(());
    }
    let bad = |k: &str, path: &std::path::Path, why: String| config::ConfigError {
        key: k.to_string(),
        message: format!("{}: {why}", path.display()),
    };
    let cert_pem = std::fs::read(cert).map_err(|e| bad("mqtt.tls_certificate", cert, e.to_string()))?;
    let certs = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("mqtt.tls_certificate", cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("mqtt.tls_certificate", cert, "no PEM certificate in it".into()));
    }
    let key_pem = std::fs::read(key).map_err(|e| bad("mqtt.tls_private_key", key, e.to_string()))?;
    match rustls_pemfile::private_key(&mut &key_pem[..]) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(bad("mqtt.tls_private_key", key, "no PEM private key in it".into())),
        Err(e) => Err(bad("mqtt.tls_private_key", key, e.to_string())),
    }
}

/// A device's client certificate names it `device:ID` (`ledger-node pki DIR device:ID`):
/// never a node id or an operator.
pub const DEVICE_CERT_PREFIX: &str = "device:";

/// `bytes` random bytes from the OS, as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf)).expect("/dev/urandom is readable");
}

/// What a device (client id = device id) may do: publish on its own command topic, and
/// subscribe to its own reply topic or filters under it (MQTT 5 response topics). Nothing
/// else: not another device's topics, not `#`, not `$SYS`.
pub fn device_topics(device: &str, access: rumqttd::TopicAccess, topic: &str) -> bool {
    match access {
        rumqttd::TopicAccess::Publish => topic.strip_prefix(COMMAND_PREFIX) == Some(device),
        rumqttd::TopicAccess::Subscribe => {
            let own = topic.strip_prefix(REPLY_PREFIX).and_then(|rest| rest.strip_prefix(device));
            matches!(own, Some(rest) if rest.is_empty() || rest.starts_with('/'))
        }
    }
}

/// The device id of a command topic `ledger/v1/cmd/{device_id}`.
pub fn device_of(topic: &str) -> Option<&str> {
    topic.strip_prefix(COMMAND_PREFIX).filter(|d| config::valid_device_id(d))
}

pub fn reply_topic(device: &str) -> String {
    format!("{REPLY_PREFIX}{device}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_uses_its_own_topics_only() {
        use rumqttd::TopicAccess::{Publish, Subscribe};
        assert!(device_topics("till-1", Publish, "ledger/v1/cmd/till-1"));
        assert!(device_topics("till-1", Subscribe, "ledger/v1/reply/till-1"));
        assert!(device_topics("till-1", Subscribe, "ledger/v1/reply/till-1/v5/42"));
        for (access, topic) in [
            (Publish, "ledger/v1/cmd/till-2"),
            (Publish, "ledger/v1/cmd/till-1/x"),
            (Publish, "ledger/v1/reply/till-1"),
            (Publish, "ledger/v1/wake"),
            (Subscribe, "ledger/v1/reply/till-10"),
            (Subscribe, "ledger/v1/reply/+"),
            (Subscribe, "ledger/v1/#"),
            (Subscribe, "#"),
            (Subscribe, "$SYS/#"),
            (Subscribe, "ledger/v1/cmd/till-1"),
        ] {
            assert!(!device_topics("till-1", access, topic), "{access:?} {topic}");
        }
    }

    #[test]
    fn topics() {
        assert_eq!(device_of("ledger/v1/cmd/term-1"), Some("term-1"));
        assert_eq!(device_of("ledger/v1/cmd/"), None);
        assert_eq!(device_of("ledger/v1/reply/x"), None);
        assert_eq!(reply_topic("term-1"), "ledger/v1/reply/term-1");
    }
}
