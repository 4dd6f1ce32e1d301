//! Node configuration: the schema of a `ledger-node` TOML file, its defaults (the embedded
//! edge a newcomer runs with no file), and validation that names the offending key.
//!
//! Owns parsing and checking only. It must not open sockets or files other than the config
//! file itself, and knows nothing of ledger state.

use rust_decimal::Decimal;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The example edge config shipped in this folder; also the test fixture for every key.
pub const EXAMPLE_EDGE: &str = include_str!("../edge.toml");
/// The example region config shipped in this folder.
pub const EXAMPLE_REGION: &str = include_str!("../region.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node: NodeSection,
    #[serde(default)]
    pub mqtt: MqttSection,
    #[serde(default)]
    pub ledger: LedgerSection,
    #[serde(default)]
    pub commit: CommitSection,
    #[serde(default)]
    pub assets: Vec<AssetEntry>,
    #[serde(default)]
    pub devices: Vec<DeviceEntry>,
    /// The link to other nodes; absent: this node keeps its journal to itself.
    #[serde(default)]
    pub zenoh: Option<ZenohSection>,
    #[serde(default)]
    pub replication: ReplicationSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub retention: RetentionSection,
}

/// How long an edge keeps journal entries its region has acknowledged. Both keys absent
/// (the default): it keeps every entry. With either, an entry goes once the region has
/// acknowledged it and every key set lets it go.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    /// The newest entries kept whatever their age.
    pub keep_entries: Option<u64>,
    /// Entries younger than this many seconds are kept.
    pub keep_for_s: Option<u64>,
}

impl RetentionSection {
    pub fn prunes(&self) -> bool {
        self.keep_entries.is_some() || self.keep_for_s.is_some()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// HTTP listener for `GET /metrics` (Prometheus text) and `GET /health`; absent: off.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZenohSection {
    /// "peer" (default for edges), "router" (default for regions) or "client".
    #[serde(default)]
    pub mode: Option<String>,
    /// Endpoints to listen on, like "tcp/127.0.0.1:7447".
    #[serde(default)]
    pub listen: Vec<String>,
    /// Endpoints to connect to (an edge: its region's router).
    #[serde(default)]
    pub connect: Vec<String>,
    /// Mutual TLS: the CA that signs every node's and operator's certificate, and this
    /// node's own certificate (common name = the node id) and key (PEM files). Required
    /// for `tls/...` endpoints, the only kind allowed unless `insecure_plaintext`.
    #[serde(default)]
    pub tls_root_ca: Option<PathBuf>,
    #[serde(default)]
    pub tls_certificate: Option<PathBuf>,
    #[serde(default)]
    pub tls_private_key: Option<PathBuf>,
    /// Plain `tcp/` endpoints on loopback, with no authentication and no access control:
    /// for a single machine only. Default false.
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// Operators (certificate common name `operator:NAME`) who may read books and send
    /// commands through this node.
    #[serde(default)]
    pub operators: Vec<String>,
    /// A region: the other regions that may relay cross-region transfers to it and serve
    /// relays to it (each lists this region in turn).
    #[serde(default)]
    pub peer_regions: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationSection {
    /// A region: the ids of the edges whose journals it keeps ("eu/berlin-1").
    #[serde(default)]
    pub edges: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    pub id: String,
    #[serde(default = "default_role")]
    pub role: Role,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Edge,
    Region,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    /// MQTT 3.1.1 listener; `"off"` for none (it has a default, so leaving it out keeps it).
    #[serde(default = "default_listen_v4", deserialize_with = "address_or_off")]
    pub listen_v4: Option<SocketAddr>,
    /// MQTT 5 listener.
    #[serde(default)]
    pub listen_v5: Option<SocketAddr>,
    /// MQTT over websockets (3.1.1).
    #[serde(default)]
    pub listen_ws: Option<SocketAddr>,
    /// MQTT 3.1.1 over TLS (8883 by convention), with `tls_certificate` and `tls_private_key`.
    #[serde(default)]
    pub listen_tls: Option<SocketAddr>,
    /// MQTT 5 over TLS.
    #[serde(default)]
    pub listen_v5_tls: Option<SocketAddr>,
    /// The broker's certificate chain and private key (PEM) for the TLS listeners.
    #[serde(default)]
    pub tls_certificate: Option<PathBuf>,
    #[serde(default)]
    pub tls_private_key: Option<PathBuf>,
    /// With this CA (PEM), TLS clients may log in with a certificate it issued, common name
    /// `device:ID`, instead of a password; the client id must be ID, a listed device.
    #[serde(default)]
    pub tls_client_ca: Option<PathBuf>,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Above this the broker drops the connection without a reply; keep it above
    /// `ledger.max_command_bytes` so that oversized commands still get a `payload_too_large`.
    #[serde(default = "default_max_packet_bytes")]
    pub max_packet_bytes: usize,
    #[serde(default = "default_max_inflight")]
    pub max_inflight: usize,
    #[serde(default = "default_connection_timeout_ms")]
    pub connection_timeout_ms: u16,
    /// The broker's in-memory log of device commands: segments of this size, at most
    /// `segment_count` of them.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: usize,
    #[serde(default = "default_segment_count")]
    pub segment_count: usize,
    /// The same for every other topic a device subscribes to (its replies): each such log
    /// holds at most `reply_segment_bytes * reply_segment_count`.
    #[serde(default = "default_reply_segment_bytes")]
    pub reply_segment_bytes: usize,
    #[serde(default = "default_reply_segment_count")]
    pub reply_segment_count: usize,
    /// MQTT has no TLS of its own yet: a listener on an address other than loopback needs
    /// this set, to say that device links are on a trusted network or behind a TLS proxy.
    #[serde(default)]
    pub insecure_plaintext: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerSection {
    #[serde(default = "default_max_command_bytes")]
    pub max_command_bytes: usize,
    #[serde(default = "default_max_batch_ops")]
    pub max_batch_ops: usize,
    /// Largest amount of one command, in major units of its asset ("1000000" EUR).
    #[serde(default = "default_max_amount")]
    pub max_amount: String,
    #[serde(default = "default_max_hold_timeout_s")]
    pub max_hold_timeout_s: u64,
    /// Id records an edge keeps in RAM, most recent first; older ones are read back from
    /// its file when a resend needs them.
    #[serde(default = "default_id_cache_entries")]
    pub id_cache_entries: usize,
    /// Resolved local holds an edge keeps in RAM, most recently resolved first; older ones
    /// are read back from its file when a command names them again. Pending and
    /// cross-node holds always stay in RAM.
    #[serde(default = "default_resolved_hold_cache_entries")]
    pub resolved_hold_cache_entries: usize,
    /// Decisions on cross-node transfers received that a node keeps in RAM, most recent
    /// first; a redelivery of an older one reads it back from the file.
    #[serde(default = "default_received_cache_entries")]
    pub received_cache_entries: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitSection {
    /// Most commands sharing one redb write transaction.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Longest the first command of a group waits for others to share its commit once the
    /// committer is free, in microseconds (while the committer writes the group before, a
    /// group takes every command that arrives).
    #[serde(default = "default_max_wait_us")]
    pub max_wait_us: u64,
    /// While the redb file is at most this long, each commit also records redb's allocator
    /// state, so that a file left by a crash opens at once; past it commits skip that record
    /// (its size, and the time to write it, grow with the file) and a crash is followed by
    /// redb's check of the whole file. 0: never record.
    #[serde(default = "default_quick_repair_up_to_bytes")]
    pub quick_repair_up_to_bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetEntry {
    pub code: String,
    pub scale: u32,
    #[serde(default)]
    pub max_amount: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceEntry {
    /// MQTT username and client id; also the `{device_id}` of its topics.
    pub id: String,
    /// An argon2 PHC string (`ledger-node hash-password`).
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Name of an environment variable holding the PHC string instead.
    #[serde(default)]
    pub password_hash_env: Option<String>,
    /// Account-name patterns (`*` matches any run of characters) this device may debit.
    #[serde(default)]
    pub may_debit: Vec<String>,
    /// May open issuance accounts and grant overdraft limits, i.e. create credit.
    #[serde(default)]
    pub may_issue: bool,
}

/// `"HOST:PORT"`, or `"off"` for no listener.
fn address_or_off<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text == "off" {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("{text:?} is neither an address like \"127.0.0.1:1883\" nor \"off\"")))
}

fn default_role() -> Role {
    Role::Edge
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}
fn default_listen_v4() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 1883)))
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_packet_bytes() -> usize {
    2 * 1024 * 1024
}
fn default_max_inflight() -> usize {
    256
}
fn default_connection_timeout_ms() -> u16 {
    5_000
}
/// 64 segments of 4 MiB: the same 256 MiB as 4 of 64 MiB, in smaller steps. A segment is a
/// `Vec` that doubles as it fills; doubling one of a few hundred thousand commands copied
/// tens of megabytes at once and held the broker's router for 100-200 ms.
fn default_segment_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_segment_count() -> usize {
    64
}
fn default_reply_segment_bytes() -> usize {
    128 * 1024
}
fn default_reply_segment_count() -> usize {
    2
}
fn default_max_command_bytes() -> usize {
    64 * 1024
}
fn default_max_batch_ops() -> usize {
    100
}
fn default_max_amount() -> String {
    "1000000000".to_string()
}
fn default_max_hold_timeout_s() -> u64 {
    30 * 24 * 3600
}
fn default_id_cache_entries() -> usize {
    100_000
}
fn default_resolved_hold_cache_entries() -> usize {
    10_000
}
fn default_received_cache_entries() -> usize {
    10_000
}
fn default_max_batch() -> usize {
    2_000
}
fn default_max_wait_us() -> u64 {
    200
}
fn default_quick_repair_up_to_bytes() -> u64 {
    DEFAULT_QUICK_REPAIR_UP_TO_BYTES
}

impl Default for MqttSection {
    fn default() -> Self {
        MqttSection {
            listen_v4: default_listen_v4(),
            listen_v5: None,
            listen_ws: None,
            listen_tls: None,
            listen_v5_tls: None,
            tls_certificate: None,
            tls_private_key: None,
            tls_client_ca: None,
            max_connections: default_max_connections(),
            max_packet_bytes: default_max_packet_bytes(),
            max_inflight: default_max_inflight(),
            connection_timeout_ms: default_connection_timeout_ms(),
            segment_bytes: default_segment_bytes(),
            segment_count: default_segment_count(),
            reply_segment_bytes: default_reply_segment_bytes(),
            reply_segment_count: default_reply_segment_count(),
            insecure_plaintext: false,
        }
    }
}

impl MqttSection {
    /// Every listener: its config key, address, and whether it is TLS.
    pub fn listeners(&self) -> [(&'static str, Option<SocketAddr>, bool); 5] {
        [
            ("mqtt.listen_v4", self.listen_v4, false),
            ("mqtt.listen_v5", self.listen_v5, false),
            ("mqtt.listen_ws", self.listen_ws, false),
            ("mqtt.listen_tls", self.listen_tls, true),
            ("mqtt.listen_v5_tls", self.listen_v5_tls, true),
        ]
    }
}

impl Default for LedgerSection {
    fn default() -> Self {
        LedgerSection {
            max_command_bytes: default_max_command_bytes(),
            max_batch_ops: default_max_batch_ops(),
            max_amount: default_max_amount(),
            max_hold_timeout_s: default_max_hold_timeout_s(),
            id_cache_entries: default_id_cache_entries(),
            resolved_hold_cache_entries: default_resolved_hold_cache_entries(),
            received_cache_entries: default_received_cache_entries(),
        }
    }
}

impl Default for CommitSection {
    fn default() -> Self {
        CommitSection {
            max_batch: default_max_batch(),
            max_wait_us: default_max_wait_us(),
            quick_repair_up_to_bytes: default_quick_repair_up_to_bytes(),
        }
    }
}

/// A config problem, always naming the key (`section.key` or `devices[2].may_debit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

fn err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { key: key.into(), message: message.into() }
}

/// Hard limits on configured values, so that a typo cannot make a queue unbounded.
pub const MAX_COMMIT_BATCH: usize = 100_000;
pub const MAX_COMMIT_WAIT_US: u64 = 1_000_000;
/// `commit.quick_repair_up_to_bytes` by default: 5 GiB, so that files of up to 4 GiB record
/// (redb grows a file past 4 GiB to 8 GiB at once): an edge of 20 M transfers (a 4 GiB
/// file) still opens at once after SIGKILL, as SPEC's longevity targets ask. The record
/// grows with the file, to about 560 KiB and 0.6 ms per commit at 4 GiB (a commit at 20,000
/// payments/s writes about 70 KiB without it); past the limit it stops, and a crash costs
/// redb's check of the file instead, 1-2.5 s per GB (BENCHMARKS.md, "Speed: commits that do
/// not grow with the file").
pub const DEFAULT_QUICK_REPAIR_UP_TO_BYTES: u64 = 5 << 30;
pub const MAX_BATCH_OPS: usize = 1_000;
/// Most id records an edge may keep in RAM (a few hundred bytes each).
pub const MAX_ID_CACHE_ENTRIES: usize = 50_000_000;
/// Most resolved holds, or decisions on transfers received, a node may keep in RAM (a few
/// hundred bytes each).
pub const MAX_RESOLVED_HOLD_CACHE_ENTRIES: usize = 10_000_000;
/// Longest `retention.keep_for_s`: 100 years.
pub const MAX_KEEP_FOR_S: u64 = 100 * 365 * 24 * 3600;
pub const MAX_COMMAND_BYTES: usize = 1024 * 1024;
pub const MAX_SCALE: u32 = 8;
pub const MAX_HOLD_TIMEOUT_S: u64 = 366 * 24 * 3600;
/// Room in an MQTT packet for the topic and properties around a command.
pub const PACKET_HEADROOM: usize = 64 * 1024;

impl NodeConfig {
    /// The embedded default: an edge on 127.0.0.1:1883, data under ./data, any device.
    pub fn embedded_default() -> NodeConfig {
        NodeConfig {
            node: NodeSection { id: "local/edge-1".to_string(), role: Role::Edge, data_dir: default_data_dir() },
            mqtt: MqttSection::default(),
            ledger: LedgerSection::default(),
            commit: CommitSection::default(),
            assets: Vec::new(),
            devices: Vec::new(),
            zenoh: None,
            replication: ReplicationSection::default(),
            metrics: MetricsSection { listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))) },
            retention: RetentionSection::default(),
        }
    }

    pub fn from_toml(text: &str) -> Result<NodeConfig, ConfigError> {
        let config: NodeConfig = toml::from_str(text).map_err(|e| {
            let key = e.message().split('`').nth(1).unwrap_or("").to_string();
            err(key, e.to_string().trim().replace('\n', " "))
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| err("", format!("cannot read config file {}: {e}", path.display())))?;
        NodeConfig::from_toml(&text).map_err(|e| err(e.key, format!("{} (in {})", e.message, path.display())))
    }

    /// Semantic checks beyond the TOML shape.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_node_id(&self.node.id, self.node.role).map_err(|m| err("node.id", m))?;
        let no_mqtt = self.mqtt.listeners().iter().all(|(_, addr, _)| addr.is_none());
        if no_mqtt && self.node.role == Role::Edge {
            return Err(err(
                "mqtt.listen_v4",
                "no MQTT listener: set at least one of listen_v4, listen_v5, listen_ws, listen_tls, listen_v5_tls",
            ));
        }
        if let Some(z) = &self.zenoh {
            if let Some(mode) = &z.mode {
                if !["peer", "router", "client"].contains(&mode.as_str()) {
                    return Err(err("zenoh.mode", format!("{mode:?} is not one of \"peer\", \"router\", \"client\"")));
                }
            }
            for (key, list) in [("zenoh.listen", &z.listen), ("zenoh.connect", &z.connect)] {
                for (i, endpoint) in list.iter().enumerate() {
                    let ok = endpoint.split_once('/').is_some_and(|(proto, addr)| ["tcp", "tls"].contains(&proto) && !addr.is_empty());
                    if !ok {
                        return Err(err(format!("{key}[{i}]"), format!("{endpoint:?} is not an endpoint like \"tcp/127.0.0.1:7447\"")));
                    }
                }
            }
            if z.listen.is_empty() && z.connect.is_empty() {
                return Err(err("zenoh.connect", "a zenoh link needs at least one listen or connect endpoint"));
            }
            validate_zenoh_security(z, self.node.role)?;
        }
        if self.retention.prunes() {
            let key = if self.retention.keep_entries.is_some() { "retention.keep_entries" } else { "retention.keep_for_s" };
            if self.node.role != Role::Edge {
                return Err(err(key, "only an edge prunes its journal (a region keeps its replicas whole)"));
            }
            match &self.zenoh {
                None => return Err(err(key, "an edge prunes only what its region acknowledged: it needs a [zenoh] link to one")),
                // Pruning trusts the region's acknowledgements; only mutual TLS authenticates them.
                Some(z) if z.insecure_plaintext => {
                    return Err(err(
                        key,
                        "pruning trusts the region's acknowledgements, which only mutual TLS authenticates: drop zenoh.insecure_plaintext",
                    ))
                }
                Some(_) => {}
            }
            if self.retention.keep_for_s.is_some_and(|s| s > MAX_KEEP_FOR_S) {
                return Err(err("retention.keep_for_s", format!("must be at most {MAX_KEEP_FOR_S} (100 years)")));
            }
        }
        if !self.replication.edges.is_empty() && self.node.role != Role::Region {
            return Err(err("replication.edges", "only a region keeps replicas of edges"));
        }
        for (i, edge) in self.replication.edges.iter().enumerate() {
            let in_region = edge.split_once('/').is_some_and(|(region, _)| region == self.node.id);
            if validate_node_id(edge, Role::Edge).is_err() || !in_region {
                return Err(err(format!("replication.edges[{i}]"), format!("{edge:?} is not an edge of region {}", self.node.id)));
            }
        }
        if self.node.role == Role::Region && self.zenoh.is_none() {
            return Err(err("zenoh", "a region needs a [zenoh] section to reach its edges"));
        }
        let listeners = self.mqtt.listeners();
        for i in 0..listeners.len() {
            for j in 0..i {
                if listeners[i].1.is_some() && listeners[i].1 == listeners[j].1 {
                    return Err(err(listeners[i].0, format!("same address as {}", listeners[j].0)));
                }
            }
        }
        let tls_listener = listeners.iter().find(|(_, addr, tls)| *tls && addr.is_some());
        if self.mqtt.tls_client_ca.is_some() && tls_listener.is_none() {
            return Err(err("mqtt.tls_client_ca", "client certificates need a TLS listener (listen_tls or listen_v5_tls)"));
        }
        if let Some((key, _, _)) = tls_listener {
            for (file_key, value) in
                [("mqtt.tls_certificate", &self.mqtt.tls_certificate), ("mqtt.tls_private_key", &self.mqtt.tls_private_key)]
            {
                if value.is_none() {
                    return Err(err(file_key, format!("missing: {key} needs the broker's certificate and key (PEM files)")));
                }
            }
        }
        // Strangers on a network must not reach an open broker by accident.
        for (key, addr, tls) in listeners {
            let Some(addr) = addr.filter(|a| !a.ip().is_loopback()) else { continue };
            if !tls && !self.mqtt.insecure_plaintext {
                return Err(err(
                    key,
                    format!("{addr} is not loopback and not TLS: use listen_tls / listen_v5_tls, or set mqtt.insecure_plaintext = true if device links are on a trusted network or behind a TLS proxy"),
                ));
            }
            if self.devices.is_empty() {
                return Err(err(
                    "devices",
                    format!("{key} listens on {addr}: list the devices that may log in (any client could act as any device)"),
                ));
            }
        }
        // The packet limit covers topic and properties too; leave room for them.
        if self.mqtt.max_packet_bytes < self.ledger.max_command_bytes + PACKET_HEADROOM {
            return Err(err(
                "mqtt.max_packet_bytes",
                format!(
                    "must be at least ledger.max_command_bytes + {PACKET_HEADROOM} ({}) so that oversized commands still get a reply",
                    self.ledger.max_command_bytes + PACKET_HEADROOM
                ),
            ));
        }
        if self.mqtt.segment_count < 2 {
            return Err(err("mqtt.segment_count", "must be at least 2"));
        }
        if self.mqtt.segment_bytes < 1024 * 1024 {
            return Err(err("mqtt.segment_bytes", "must be at least 1048576"));
        }
        if self.mqtt.reply_segment_count < 2 {
            return Err(err("mqtt.reply_segment_count", "must be at least 2"));
        }
        if self.mqtt.reply_segment_bytes < 128 * 1024 {
            return Err(err("mqtt.reply_segment_bytes", "must be at least 131072 (a batch reply must fit)"));
        }
        if self.mqtt.max_inflight == 0 || self.mqtt.max_inflight > u16::MAX as usize {
            return Err(err("mqtt.max_inflight", "must be between 1 and 65535"));
        }
        if self.ledger.max_command_bytes < 256 || self.ledger.max_command_bytes > MAX_COMMAND_BYTES {
            return Err(err("ledger.max_command_bytes", format!("must be between 256 and {MAX_COMMAND_BYTES}")));
        }
        if self.ledger.id_cache_entries == 0 || self.ledger.id_cache_entries > MAX_ID_CACHE_ENTRIES {
            return Err(err("ledger.id_cache_entries", format!("must be between 1 and {MAX_ID_CACHE_ENTRIES}")));
        }
        if self.ledger.resolved_hold_cache_entries == 0 || self.ledger.resolved_hold_cache_entries > MAX_RESOLVED_HOLD_CACHE_ENTRIES {
            let range = format!("must be between 1 and {MAX_RESOLVED_HOLD_CACHE_ENTRIES}");
            return Err(err("ledger.resolved_hold_cache_entries", range));
        }
        if self.ledger.received_cache_entries == 0 || self.ledger.received_cache_entries > MAX_RESOLVED_HOLD_CACHE_ENTRIES {
            let range = format!("must be between 1 and {MAX_RESOLVED_HOLD_CACHE_ENTRIES}");
            return Err(err("ledger.received_cache_entries", range));
        }
        if self.ledger.max_batch_ops == 0 || self.ledger.max_batch_ops > MAX_BATCH_OPS {
            return Err(err("ledger.max_batch_ops", format!("must be between 1 and {MAX_BATCH_OPS}")));
        }
        // It applies to every asset, JPY (scale 0) too: a fraction would truncate to nothing there.
        let max = parse_major_amount(&self.ledger.max_amount).map_err(|m| err("ledger.max_amount", m))?;
        if !max.fract().is_zero() {
            return Err(err("ledger.max_amount", "must be a whole number of major units (it applies to every asset)"));
        }
        if self.ledger.max_hold_timeout_s == 0 || self.ledger.max_hold_timeout_s > MAX_HOLD_TIMEOUT_S {
            return Err(err("ledger.max_hold_timeout_s", format!("must be between 1 and {MAX_HOLD_TIMEOUT_S}")));
        }
        if self.commit.max_batch == 0 || self.commit.max_batch > MAX_COMMIT_BATCH {
            return Err(err("commit.max_batch", format!("must be between 1 and {MAX_COMMIT_BATCH}")));
        }
        if self.commit.max_wait_us > MAX_COMMIT_WAIT_US {
            return Err(err("commit.max_wait_us", format!("must be at most {MAX_COMMIT_WAIT_US}")));
        }
        for (i, asset) in self.assets.iter().enumerate() {
            let code_ok = (3..=12).contains(&asset.code.len()) && asset.code.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
            if !code_ok {
                return Err(err(format!("assets[{i}].code"), format!("{:?} must be 3 to 12 characters A-Z or 0-9", asset.code)));
            }
            if asset.scale > MAX_SCALE {
                return Err(err(format!("assets[{i}].scale"), format!("must be at most {MAX_SCALE}")));
            }
            if let Some(max) = &asset.max_amount {
                let value = parse_major_amount(max).map_err(|m| err(format!("assets[{i}].max_amount"), m))?;
                if value.normalize().scale() > asset.scale {
                    return Err(err(format!("assets[{i}].max_amount"), format!("has more decimal places than the scale {}", asset.scale)));
                }
            }
            if self.assets[..i].iter().any(|a| a.code == asset.code) {
                return Err(err(format!("assets[{i}].code"), format!("{} is listed twice", asset.code)));
            }
        }
        for (i, device) in self.devices.iter().enumerate() {
            if !valid_device_id(&device.id) {
                return Err(err(
                    format!("devices[{i}].id"),
                    format!("{:?} must be 1 to 64 characters a-z, A-Z, 0-9, '-', '_', '.'", device.id),
                ));
            }
            if self.devices[..i].iter().any(|d| d.id == device.id) {
                return Err(err(format!("devices[{i}].id"), format!("{} is listed twice", device.id)));
            }
            let has_password = match (&device.password_hash, &device.password_hash_env) {
                (Some(_), Some(_)) => {
                    return Err(err(format!("devices[{i}].password_hash_env"), "set password_hash or password_hash_env, not both"))
                }
                // It logs in with a client certificate only.
                (None, None) if self.mqtt.tls_client_ca.is_some() => false,
                (None, None) => {
                    return Err(err(
                        format!("devices[{i}].password_hash"),
                        "missing: a listed device needs a password hash (or mqtt.tls_client_ca, to log in with a certificate)",
                    ))
                }
                _ => true,
            };
            if has_password {
                let hash = self.device_password_hash(i)?;
                let complete = argon2::password_hash::PasswordHash::new(&hash).is_ok_and(|h| h.salt.is_some() && h.hash.is_some());
                if !hash.starts_with("$argon2") || !complete {
                    return Err(err(
                        format!("devices[{i}].password_hash"),
                        "must be an argon2 PHC string ($argon2id$...); see `ledger-node hash-password`",
                    ));
                }
            }
            for (j, pattern) in device.may_debit.iter().enumerate() {
                if pattern.is_empty() || pattern.len() > 96 {
                    return Err(err(format!("devices[{i}].may_debit[{j}]"), "must be 1 to 96 characters"));
                }
            }
        }
        Ok(())
    }

    /// The PHC hash of device `index`, read from the environment when configured so.
    pub fn device_password_hash(&self, index: usize) -> Result<String, ConfigError> {
        let device = &self.devices[index];
        if let Some(hash) = &device.password_hash {
            return Ok(hash.clone());
        }
        let var = device.password_hash_env.as_deref().unwrap_or_default();
        std::env::var(var).map_err(|_| err(format!("devices[{index}].password_hash_env"), format!("environment variable {var} is not set")))
    }

    /// Largest amount per command, in major units, for `asset` (its own or the ledger-wide one).
    pub fn max_amount_for(&self, code: &str) -> Decimal {
        let own = self.assets.iter().find(|a| a.code == code).and_then(|a| a.max_amount.as_deref());
        parse_major_amount(own.unwrap_or(&self.ledger.max_amount)).expect("validated")
    }
}

/// Either mutual TLS everywhere, or plain TCP on loopback when explicitly allowed: no link
/// between nodes is unauthenticated by accident.
fn validate_zenoh_security(z: &ZenohSection, role: Role) -> Result<(), ConfigError> {
    for (key, list) in [("zenoh.listen", &z.listen), ("zenoh.connect", &z.connect)] {
        for (i, endpoint) in list.iter().enumerate() {
            let (proto, addr) = endpoint.split_once('/').expect("checked before");
            let host = endpoint_host(addr);
            match (proto, z.insecure_plaintext) {
                ("tls", true) => {
                    return Err(err(format!("{key}[{i}]"), "insecure_plaintext = true allows tcp/ endpoints only; drop it to use tls/"))
                }
                ("tcp", false) => {
                    return Err(err(
                        format!("{key}[{i}]"),
                        format!("{endpoint:?} is plain TCP: use tls/ with tls_root_ca, tls_certificate and tls_private_key, or set insecure_plaintext = true (loopback only)"),
                    ))
                }
                ("tcp", true) if !is_loopback(host) => {
                    return Err(err(
                        format!("{key}[{i}]"),
                        format!("{endpoint:?}: insecure_plaintext is for loopback addresses only (127.0.0.1, ::1, localhost)"),
                    ))
                }
                _ => {}
            }
        }
    }
    if !z.insecure_plaintext {
        for (key, value) in [
            ("zenoh.tls_root_ca", &z.tls_root_ca),
            ("zenoh.tls_certificate", &z.tls_certificate),
            ("zenoh.tls_private_key", &z.tls_private_key),
        ] {
            if value.is_none() {
                return Err(err(key, "missing: tls/ links need the CA, this node's certificate and its key (see `ledger-node pki`)"));
            }
        }
    }
    for (i, name) in z.operators.iter().enumerate() {
        let ok =
            (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
        if !ok {
            return Err(err(format!("zenoh.operators[{i}]"), format!("{name:?} must be 1 to 64 characters a-z, 0-9, '-', '_', '.'")));
        }
    }
    if !z.peer_regions.is_empty() && role != Role::Region {
        return Err(err("zenoh.peer_regions", "only a region relays to other regions"));
    }
    for (i, region) in z.peer_regions.iter().enumerate() {
        validate_node_id(region, Role::Region).map_err(|m| err(format!("zenoh.peer_regions[{i}]"), m))?;
    }
    Ok(())
}

/// The host of `HOST:PORT` or `[V6]:PORT`, with any `#...` or `?...` suffix dropped.
fn endpoint_host(addr: &str) -> &str {
    let addr = addr.split(['#', '?']).next().unwrap_or(addr);
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    addr.rsplit_once(':').map_or(addr, |(host, _)| host)
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn parse_major_amount(text: &str) -> Result<Decimal, String> {
    let bad = || format!("{text:?} must be a positive decimal string like \"1000000\"");
    let (int, frac) = text.split_once('.').unwrap_or((text, "0"));
    let digits = |s: &str| !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !digits(frac) {
        return Err(bad());
    }
    match Decimal::from_str_exact(text) {
        Ok(d) if d > Decimal::ZERO => Ok(d),
        _ => Err(bad()),
    }
}

/// `eu` for a region; `eu/berlin-1` for an edge. Lowercase `[a-z0-9-]` segments.
pub fn validate_node_id(id: &str, role: Role) -> Result<(), String> {
    let segments: Vec<&str> = id.split('/').collect();
    let segment_ok =
        |s: &&str| !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !segments.iter().all(segment_ok) || segments.len() > 2 {
        return Err(format!("{id:?} must be one or two '/'-separated segments of [a-z0-9-], each 1 to 32 long"));
    }
    match (role, segments.len()) {
        (Role::Edge, 2) | (Role::Region, 1) => Ok(()),
        (Role::Edge, _) => Err(format!("{id:?}: an edge's id is region/edge, like eu/berlin-1")),
        (Role::Region, _) => Err(format!("{id:?}: a region's id is its region name, like eu")),
    }
}

pub fn valid_device_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_edge_config_is_valid() {
        let config = NodeConfig::from_toml(EXAMPLE_EDGE).unwrap();
        assert_eq!(config.node.role, Role::Edge);
        assert!(!config.devices.is_empty());
        assert!(!config.assets.is_empty());
    }

    #[test]
    fn example_region_config_is_valid() {
        let config = NodeConfig::from_toml(EXAMPLE_REGION).unwrap();
        assert_eq!(config.node.role, Role::Region);
        assert_eq!(config.replication.edges.len(), 2);
    }

    #[test]
    fn embedded_default_is_valid() {
        NodeConfig::embedded_default().validate().unwrap();
    }

    #[test]
    fn quick_repair_limit_defaults_to_5_gib_and_a_bad_one_is_named() {
        let config = NodeConfig::from_toml("[node]\nid = \"eu/a\"\n").unwrap();
        assert_eq!(config.commit.quick_repair_up_to_bytes, 5 << 30);
        let config = NodeConfig::from_toml("[node]\nid = \"eu/a\"\n[commit]\nquick_repair_up_to_bytes = 0\n").unwrap();
        assert_eq!(config.commit.quick_repair_up_to_bytes, 0);
        let e = NodeConfig::from_toml("[node]\nid = \"eu/a\"\n[commit]\nquick_repair_up_to_bytes = -1\n").unwrap_err();
        assert!(e.to_string().contains("quick_repair_up_to_bytes"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = NodeConfig::from_toml("[node]\nid = \"eu/a\"\n[mqtt]\nlisten_v9 = \"127.0.0.1:1\"\n").unwrap_err();
        assert_eq!(e.key, "listen_v9", "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("[node]\nid = \"EU/a\"\n", "node.id"),
            ("[node]\nid = \"eu\"\n", "node.id"),
            ("[node]\nid = \"eu/a\"\n[commit]\nmax_batch = 0\n", "commit.max_batch"),
            ("[node]\nid = \"eu/a\"\n[ledger]\nmax_amount = \"-1\"\n", "ledger.max_amount"),
            ("[node]\nid = \"eu/a\"\n[ledger]\nmax_amount = \"1e3\"\n", "ledger.max_amount"),
            ("[node]\nid = \"eu/a\"\n[ledger]\nmax_amount = \"0.5\"\n", "ledger.max_amount"),
            ("[node]\nid = \"eu/a\"\n[[assets]]\ncode = \"KWH\"\nscale = 3\nmax_amount = \"0.0001\"\n", "assets[0].max_amount"),
            ("[node]\nid = \"eu/a\"\n[mqtt]\nlisten_v5 = \"127.0.0.1:1883\"\n", "mqtt.listen_v5"),
            ("[node]\nid = \"eu/a\"\n[mqtt]\nmax_packet_bytes = 70000\n", "mqtt.max_packet_bytes"),
            ("[node]\nid = \"eu/a\"\n[[devices]]\nid = \"t1\"\npassword_hash = \"$argon2id$broken\"\n", "devices[0].password_hash"),
            ("[node]\nid = \"eu\"\nrole = \"region\"\n", "zenoh"),
            ("[node]\nid = \"eu\"\nrole = \"region\"\n[zenoh]\nlisten = [\"udp/1.2.3.4:1\"]\n", "zenoh.listen[0]"),
            (
                "[node]\nid = \"eu\"\nrole = \"region\"\n[zenoh]\nlisten = [\"tcp/127.0.0.1:1\"]\ninsecure_plaintext = true\n[replication]\nedges = [\"us/nyc-1\"]\n",
                "replication.edges[0]",
            ),
            ("[node]\nid = \"eu/a\"\n[replication]\nedges = [\"eu/b\"]\n", "replication.edges"),
            ("[node]\nid = \"eu/a\"\n[retention]\nkeep_entries = 10\n", "retention.keep_entries"),
            (
                "[node]\nid = \"eu/a\"\n[retention]\nkeep_for_s = 60\n[zenoh]\nconnect = [\"tcp/127.0.0.1:1\"]\ninsecure_plaintext = true\n",
                "retention.keep_for_s",
            ),
            (
                "[node]\nid = \"eu\"\nrole = \"region\"\n[zenoh]\nlisten = [\"tcp/127.0.0.1:1\"]\ninsecure_plaintext = true\n[retention]\nkeep_entries = 5\n",
                "retention.keep_entries",
            ),
            ("[node]\nid = \"eu/a\"\n[retention]\nkeep_age = 5\n", "keep_age"),
            ("[node]\nid = \"eu/a\"\n[[assets]]\ncode = \"kwh\"\nscale = 3\n", "assets[0].code"),
            ("[node]\nid = \"eu/a\"\n[[devices]]\nid = \"t1\"\npassword_hash = \"plain\"\n", "devices[0].password_hash"),
            (
                "[node]\nid = \"eu/a\"\n[[devices]]\nid = \"t1\"\npassword_hash_env = \"EDGELEDGER_TEST_UNSET_VAR\"\n",
                "devices[0].password_hash_env",
            ),
        ];
        let tls = "tls_root_ca = \"ca.pem\"\ntls_certificate = \"n.pem\"\ntls_private_key = \"n.key\"\n";
        let zenoh_cases = [
            ("[zenoh]\nconnect = [\"tcp/127.0.0.1:7447\"]\n".to_string(), "zenoh.connect[0]"),
            ("[zenoh]\nconnect = [\"tcp/10.0.0.5:7447\"]\ninsecure_plaintext = true\n".to_string(), "zenoh.connect[0]"),
            ("[zenoh]\nconnect = [\"tcp/0.0.0.0:7447\"]\ninsecure_plaintext = true\n".to_string(), "zenoh.connect[0]"),
            ("[zenoh]\nconnect = [\"tls/127.0.0.1:7447\"]\ninsecure_plaintext = true\n".to_string(), "zenoh.connect[0]"),
            ("[zenoh]\nconnect = [\"tls/10.0.0.5:7447\"]\ntls_root_ca = \"ca.pem\"\n".to_string(), "zenoh.tls_certificate"),
            (format!("[zenoh]\nconnect = [\"tls/10.0.0.5:7447\"]\noperators = [\"Admin\"]\n{tls}"), "zenoh.operators[0]"),
            (format!("[zenoh]\nconnect = [\"tls/10.0.0.5:7447\"]\npeer_regions = [\"us\"]\n{tls}"), "zenoh.peer_regions"),
        ];
        for (zenoh, key) in zenoh_cases {
            let text = format!("[node]\nid = \"eu/a\"\n{zenoh}");
            let e = NodeConfig::from_toml(&text).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
        }
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$l7HYIJQL878BkuIc+pgdIg$9rXNRqg7odHFRsc3ALl3jfkZujifpvmikkHHadtf3SE";
        let open = "[node]\nid = \"eu/a\"\n[mqtt]\nlisten_v4 = \"0.0.0.0:1883\"\n";
        assert_eq!(NodeConfig::from_toml(open).unwrap_err().key, "mqtt.listen_v4");
        let no_devices = format!("{open}insecure_plaintext = true\n");
        assert_eq!(NodeConfig::from_toml(&no_devices).unwrap_err().key, "devices");
        NodeConfig::from_toml(&format!("{no_devices}[[devices]]\nid = \"t\"\npassword_hash = \"{hash}\"\n")).unwrap();
        let off = NodeConfig::from_toml("[node]\nid = \"eu/a\"\n[mqtt]\nlisten_v4 = \"off\"\nlisten_v5 = \"127.0.0.1:1884\"\n").unwrap();
        assert_eq!(off.mqtt.listen_v4, None);
        assert_eq!(NodeConfig::from_toml("[node]\nid = \"eu/a\"\n[mqtt]\nlisten_v4 = \"off\"\n").unwrap_err().key, "mqtt.listen_v4");
        assert!(NodeConfig::from_toml("[node]\nid = \"eu/a\"\n[mqtt]\nlisten_v4 = \"nowhere\"\n").is_err());
        for ok in ["tcp/127.0.0.1:7447", "tcp/[::1]:7447", "tcp/localhost:7447"] {
            let text = format!("[node]\nid = \"eu/a\"\n[zenoh]\nconnect = [\"{ok}\"]\ninsecure_plaintext = true\n");
            NodeConfig::from_toml(&text).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (text, key) in cases {
            let e = NodeConfig::from_toml(text).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
        }
    }
}
