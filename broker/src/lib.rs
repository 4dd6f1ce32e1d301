//! The embedded MQTT broker: rumqttd configured from the node config (MQTT 3.1.1, MQTT 5 and
//! websocket listeners, limits, segment sizes) with device authentication against argon2
//! hashes.
//!
//! Owns the broker's setup only. It must not interpret payloads or know ledger semantics;
//! the node reads commands through a local link and decides everything itself.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use config::NodeConfig;
use rumqttd::{Config, ConnectionSettings, RouterConfig, SegmentConfig, ServerSettings};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub mod link;

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
        credentials.insert(device.id.clone(), node.device_password_hash(i)?);
    }
    let credentials = Arc::new(Credentials { hashes: credentials, verified: Mutex::new(HashMap::new()) });
    let listener = |name: &str, addr: SocketAddr| {
        let mut connections = ConnectionSettings {
            connection_timeout_ms: node.mqtt.connection_timeout_ms,
            max_payload_size: node.mqtt.max_packet_bytes,
            max_inflight_count: node.mqtt.max_inflight,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        };
        if !credentials.hashes.is_empty() {
            let credentials = credentials.clone();
            connections.set_auth_handler(move |client_id: String, username: String, password: String| {
                let credentials = credentials.clone();
                // Argon2 takes tens of milliseconds by design; on the listener's own
                // single-threaded runtime it would stall every connection of that listener.
                async move {
                    tokio::task::spawn_blocking(move || credentials.authenticate(&client_id, &username, &password)).await.unwrap_or(false)
                }
            });
        }
        (name.to_string(), ServerSettings { name: name.to_string(), listen: addr, tls: None, next_connection_delay_ms: 0, connections })
    };
    let one = |name: &str, addr: Option<SocketAddr>| addr.map(|a| HashMap::from([listener(name, a)]));
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
        v4: one("mqtt-3.1.1", node.mqtt.listen_v4),
        v5: one("mqtt-5", node.mqtt.listen_v5),
        ws: one("websocket", node.mqtt.listen_ws),
        ..Config::default()
    })
}

/// Device password hashes, and the passwords already verified (as BLAKE3 digests), so that
/// a reconnecting device does not pay for argon2 again.
struct Credentials {
    hashes: HashMap<String, String>,
    verified: Mutex<HashMap<String, [u8; 32]>>,
}

impl Credentials {
    /// A device is let in when its client id is its username and the password matches the
    /// configured hash. Binding the client id to the username keeps one device one identity.
    fn authenticate(&self, client_id: &str, username: &str, password: &str) -> bool {
        if client_id != username {
            tracing::warn!(client_id, username, "login refused: client id must equal the username");
            return false;
        }
        let Some(phc) = self.hashes.get(username) else {
            tracing::warn!(username, "login refused: unknown device");
            return false;
        };
        let digest = *blake3::hash(password.as_bytes()).as_bytes();
        if self.verified.lock().expect("lock").get(username) == Some(&digest) {
            return true;
        }
        let ok = verify_password(phc, password);
        if ok {
            self.verified.lock().expect("lock").insert(username.to_string(), digest);
        } else {
            tracing::warn!(username, "login refused: wrong password");
        }
        ok
    }
}

pub fn verify_password(phc: &str, password: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default().verify_password(password.as_bytes(), &hash).is_ok(),
        Err(_) => false,
    }
}

/// An argon2id PHC string for `password`, with a fresh random salt.
pub fn hash_password(password: &str) -> String {
    let mut salt_bytes = [0u8; 16];
    getrandom(&mut salt_bytes);
    let salt = SaltString::encode_b64(&salt_bytes).expect("16 bytes make a salt");
    Argon2::default().hash_password(password.as_bytes(), &salt).expect("argon2 hashes").to_string()
}

/// `bytes` random bytes from the OS, as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf)).expect("/dev/urandom is readable");
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
    fn passwords_round_trip_through_hashes() {
        let phc = hash_password("s3cret");
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password(&phc, "s3cret"));
        assert!(!verify_password(&phc, "s3cret!"));
        let creds = Credentials { hashes: HashMap::from([("t1".to_string(), phc)]), verified: Mutex::new(HashMap::new()) };
        assert!(creds.authenticate("t1", "t1", "s3cret"));
        assert!(creds.authenticate("t1", "t1", "s3cret"), "again, from the cache");
        assert!(!creds.authenticate("t1", "t1", "s3cret!"), "the cache holds only the right password");
        assert!(!creds.authenticate("t2", "t1", "s3cret"), "client id must be the username");
        assert!(!creds.authenticate("t9", "t9", "s3cret"));
    }

    #[test]
    fn topics() {
        assert_eq!(device_of("ledger/v1/cmd/term-1"), Some("term-1"));
        assert_eq!(device_of("ledger/v1/cmd/"), None);
        assert_eq!(device_of("ledger/v1/reply/x"), None);
        assert_eq!(reply_topic("term-1"), "ledger/v1/reply/term-1");
    }
}
