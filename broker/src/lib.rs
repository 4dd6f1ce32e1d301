//! The embedded MQTT broker: rumqttd configured from the node config (MQTT 3.1.1, MQTT 5 and
//! websocket listeners, limits, segment sizes) with device authentication against argon2
//! hashes, a back-off per device id after wrong passwords, and TLS listeners.
//!
//! Owns the broker's setup only. It must not interpret payloads or know ledger semantics;
//! the node reads commands through a local link and decides everything itself.

use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use config::NodeConfig;
use rumqttd::{Config, ConnectionSettings, RouterConfig, SegmentConfig, ServerSettings};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    let credentials = Arc::new(Credentials {
        hashes: credentials,
        verified: Mutex::new(HashMap::new()),
        failures: Mutex::new(HashMap::new()),
        checker: PasswordChecker::start(),
    });
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
            connections.set_auth_handler(move |client_id: String, username: String, password: String| {
                let credentials = credentials.clone();
                async move {
                    if let Some(decided) = credentials.decide_cheaply(&client_id, &username, &password) {
                        return decided;
                    }
                    credentials.checker.check(credentials.clone(), username, password).await
                }
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

/// Threads that check passwords (argon2), for all listeners together.
pub const PASSWORD_CHECKERS: usize = 2;
/// Logins waiting for a password check; beyond this a login is refused at once (the device
/// tries again), so a flood of logins costs neither memory nor a growing queue.
pub const PASSWORD_QUEUE: usize = 64;

type Check = (Arc<Credentials>, String, String, tokio::sync::oneshot::Sender<bool>);

/// Argon2 takes tens of milliseconds and 19 MiB by design. It runs on a few threads of its
/// own, so that at most `PASSWORD_CHECKERS` checks (and their memory) exist at once, and not
/// on a listener's single-threaded runtime, which it would stall.
struct PasswordChecker {
    queue: flume::Sender<Check>,
}

impl PasswordChecker {
    fn start() -> PasswordChecker {
        let (queue, checks) = flume::bounded::<Check>(PASSWORD_QUEUE);
        for i in 0..PASSWORD_CHECKERS {
            let checks = checks.clone();
            std::thread::Builder::new()
                .name(format!("password-{i}"))
                .spawn(move || {
                    let mut memory = Vec::new();
                    for (credentials, username, password, answer) in checks.iter() {
                        let _ = answer.send(credentials.check_password(&username, &password, &mut memory));
                    }
                })
                .expect("password checker thread");
        }
        PasswordChecker { queue }
    }

    /// Whether `password` is `username`'s; false at once when too many logins wait.
    async fn check(&self, credentials: Arc<Credentials>, username: String, password: String) -> bool {
        let (answer, answered) = tokio::sync::oneshot::channel();
        if self.queue.try_send((credentials, username.clone(), password, answer)).is_err() {
            tracing::warn!(username, "login refused: too many logins wait for a password check");
            return false;
        }
        answered.await.unwrap_or(false)
    }
}

/// Device password hashes, and the passwords already verified (as BLAKE3 digests, one per
/// configured device, never for a failed login), so that a reconnecting device does not pay
/// for argon2 again.
struct Credentials {
    hashes: HashMap<String, String>,
    verified: Mutex<HashMap<String, [u8; 32]>>,
    /// Wrong passwords in a row per configured device (never for unknown names, so it is
    /// bounded by the device list).
    failures: Mutex<HashMap<String, Backoff>>,
    checker: PasswordChecker,
}

/// Wrong passwords a device id may have in a row before its logins wait.
pub const FREE_FAILURES: u32 = 3;
/// The first wait after `FREE_FAILURES`; it doubles with each further failure, up to
/// `MAX_BACKOFF`.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Logins refused because their device id was backing off, since start.
pub static LOGINS_BACKED_OFF: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Copy)]
struct Backoff {
    in_a_row: u32,
    until: Instant,
}

impl Backoff {
    /// The wait after `in_a_row` wrong passwords: none for the first `FREE_FAILURES`.
    fn wait(in_a_row: u32) -> Duration {
        let doublings = in_a_row.saturating_sub(FREE_FAILURES).min(16);
        if in_a_row < FREE_FAILURES {
            return Duration::ZERO;
        }
        FIRST_BACKOFF.saturating_mul(1 << doublings).min(MAX_BACKOFF)
    }
}

impl Credentials {
    /// A device is let in when its client id is its username and the password matches the
    /// configured hash. Binding the client id to the username keeps one device one identity.
    #[cfg(test)]
    fn authenticate(&self, client_id: &str, username: &str, password: &str) -> bool {
        self.decide_cheaply(client_id, username, password).unwrap_or_else(|| self.check_password(username, password, &mut Vec::new()))
    }

    /// The answer when it needs no argon2: a client id that is not the username, an unknown
    /// device, or the password this device last logged in with. `None`: check the hash.
    fn decide_cheaply(&self, client_id: &str, username: &str, password: &str) -> Option<bool> {
        if client_id != username {
            tracing::warn!(client_id, username, "login refused: client id must equal the username");
            return Some(false);
        }
        if !self.hashes.contains_key(username) {
            tracing::warn!(username, "login refused: unknown device");
            return Some(false);
        }
        let digest = *blake3::hash(password.as_bytes()).as_bytes();
        if self.verified.lock().expect("lock").get(username) == Some(&digest) {
            // The password this device last logged in with: no argon2, and no back-off, so
            // that strangers guessing cannot lock a known device out.
            return Some(true);
        }
        let backing_off = self.failures.lock().expect("lock").get(username).is_some_and(|b| Instant::now() < b.until);
        if backing_off {
            LOGINS_BACKED_OFF.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(username, "login refused: too many wrong passwords, backing off");
            return Some(false);
        }
        None
    }

    /// Checks the password against the device's argon2 hash; remembers it when it matches.
    fn check_password(&self, username: &str, password: &str, memory: &mut Vec<Block>) -> bool {
        let Some(phc) = self.hashes.get(username) else { return false };
        let ok = verify_password_in(phc, password, memory);
        let mut failures = self.failures.lock().expect("lock");
        if ok {
            let digest = *blake3::hash(password.as_bytes()).as_bytes();
            self.verified.lock().expect("lock").insert(username.to_string(), digest);
            failures.remove(username);
        } else {
            let in_a_row = failures.get(username).map_or(0, |b| b.in_a_row).saturating_add(1);
            let wait = Backoff::wait(in_a_row);
            failures.insert(username.to_string(), Backoff { in_a_row, until: Instant::now() + wait });
            tracing::warn!(username, in_a_row, wait_ms = wait.as_millis() as u64, "login refused: wrong password");
        }
        ok
    }
}

pub fn verify_password(phc: &str, password: &str) -> bool {
    verify_password_in(phc, password, &mut Vec::new())
}

/// `verify_password` with argon2's working memory (19 MiB at the default cost) in `memory`,
/// kept by the caller from one check to the next: a checker thread holds one buffer for
/// its whole life instead of asking the allocator for a fresh one per login, which the
/// allocator did not give back.
fn verify_password_in(phc: &str, password: &str, memory: &mut Vec<Block>) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else { return false };
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else { return false };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm) else { return false };
    let Ok(version) = hash.version.map(Version::try_from).transpose() else { return false };
    let Ok(params) = Params::try_from(&hash) else { return false };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else { return false };
    memory.resize(params.block_count(), Block::default());
    let mut computed = [0u8; Output::MAX_LENGTH];
    let computed = &mut computed[..expected.len()];
    let argon2 = Argon2::new(algorithm, version.unwrap_or_default(), params);
    if argon2.hash_password_into_with_memory(password.as_bytes(), salt, computed, &mut memory[..]).is_err() {
        return false;
    }
    // `Output`'s equality is constant-time.
    Output::new(computed).is_ok_and(|computed| computed == expected)
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
    fn passwords_round_trip_through_hashes() {
        let phc = hash_password("s3cret");
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password(&phc, "s3cret"));
        assert!(!verify_password(&phc, "s3cret!"));
        let creds = Credentials {
            hashes: HashMap::from([("t1".to_string(), phc.clone()), ("t2".to_string(), phc)]),
            verified: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            checker: PasswordChecker::start(),
        };
        assert!(creds.authenticate("t1", "t1", "s3cret"));
        assert!(creds.authenticate("t1", "t1", "s3cret"), "again, from the cache");
        assert!(!creds.authenticate("t1", "t1", "s3cret!"), "the cache holds only the right password");
        assert!(!creds.authenticate("t2", "t1", "s3cret"), "client id must be the username");
        assert!(!creds.authenticate("t9", "t9", "s3cret"));

        // Wrong passwords for t2, a device that never logged in: after FREE_FAILURES the
        // right one is refused too, without a check, until the wait is over.
        for _ in 0..FREE_FAILURES {
            assert!(!creds.authenticate("t2", "t2", "guess"));
        }
        assert_eq!(creds.decide_cheaply("t2", "t2", "s3cret"), Some(false), "backing off");
        creds.failures.lock().unwrap().get_mut("t2").unwrap().until = Instant::now();
        assert!(creds.authenticate("t2", "t2", "s3cret"), "after the wait");
        assert!(!creds.failures.lock().unwrap().contains_key("t2"), "a success forgets the failures");
        // t1 logged in before: guesses against it never lock it out.
        for _ in 0..FREE_FAILURES + 2 {
            assert!(!creds.authenticate("t1", "t1", "guess"));
        }
        assert!(creds.authenticate("t1", "t1", "s3cret"), "its known password passes the back-off");
    }

    #[test]
    fn backoff_doubles_to_a_ceiling() {
        assert_eq!(Backoff::wait(1), Duration::ZERO);
        assert_eq!(Backoff::wait(FREE_FAILURES), FIRST_BACKOFF);
        assert_eq!(Backoff::wait(FREE_FAILURES + 1), FIRST_BACKOFF * 2);
        assert_eq!(Backoff::wait(FREE_FAILURES + 40), MAX_BACKOFF);
        assert_eq!(Backoff::wait(u32::MAX), MAX_BACKOFF);
    }

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
