//! What a node counts about itself, and the HTTP endpoint that shows it (`http`): `GET
//! /metrics` (OpenMetrics text, which Prometheus reads) and `GET /health`.
//!
//! The encoding is prometheus-client's. Counters and histograms are its atomics, updated on
//! the hot path without allocation; gauges that live elsewhere (replication, transfers in
//! flight) are read at scrape time through `Gauges` callbacks.

mod http;

pub use http::start;

use crate::clock::now_ms;
use crate::core::reply::Code;
use crate::core::LeaveStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Command ops as counted; `invalid` is an input that never became a command. Any other
/// name counts as `invalid`, so the number of series stays bounded.
pub const OPS: [&str; 11] =
    ["open_account", "close_account", "transfer", "hold", "post", "void", "batch", "balance", "receive", "settle", "invalid"];

/// Upper bounds of the commit batch-size histogram (commands per durable commit).
const BATCH_BUCKETS: [f64; 12] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0];
/// Upper bounds of the commit-latency histogram, in seconds.
const LATENCY_BUCKETS_S: [f64; 14] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// The intake must show life at least this often (it ticks every 250 ms when idle), or
/// `/health` answers 503. An edge's intake counts its life from when its open group opened
/// (`heartbeat_since`): a group the committer does not take for this long is a stall.
pub const HEALTH_STALL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    op: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
    role: &'static str,
}

/// One gauge read at scrape time: its samples, each with its labels (`key`, `value`).
pub struct GaugeFamily {
    pub name: &'static str,
    pub help: &'static str,
    pub samples: Vec<(Vec<(&'static str, String)>, u64)>,
}

/// Gauges read at scrape time: each call appends the families it knows.
pub type Gauges = Box<dyn Fn(&mut Vec<GaugeFamily>) + Send + Sync>;

/// What `Metrics::add_storage` reads at each scrape: a node's file and disk, and rows per
/// table.
pub struct Storage {
    /// The file's length.
    pub file_bytes: u64,
    /// What the file takes on disk: redb grows a file ahead of use and the part not yet
    /// written takes no blocks.
    pub disk_bytes: u64,
    pub disk_free_bytes: u64,
    pub rows: Vec<(&'static str, u64)>,
    /// Whether commits record redb's allocator state (a file left by a crash opens at once).
    pub quick_repair: bool,
}

/// Appends one gauge family; each sample is (labels, value), no labels for a plain gauge.
pub fn gauge(
    out: &mut Vec<GaugeFamily>,
    name: &'static str,
    help: &'static str,
    samples: impl IntoIterator<Item = (Vec<(&'static str, String)>, u64)>,
) {
    out.push(GaugeFamily { name, help, samples: samples.into_iter().collect() });
}

/// Encodes the `Gauges` callbacks on each scrape.
#[derive(Default)]
struct ScrapeGauges {
    callbacks: Mutex<Vec<Gauges>>,
}

impl std::fmt::Debug for ScrapeGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScrapeGauges")
    }
}

impl Collector for ScrapeGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut families = Vec::new();
        for callback in self.callbacks.lock().expect("gauges").iter() {
            callback(&mut families);
        }
        for family in families {
            let mut metric = encoder.encode_descriptor(family.name, family.help, None, MetricType::Gauge)?;
            match family.samples.as_slice() {
                [(labels, value)] if labels.is_empty() => ConstGauge::new(*value).encode(metric)?,
                samples => {
                    for (labels, value) in samples {
                        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Counters the embedded broker keeps, read on each scrape.
#[derive(Debug)]
struct BrokerCounters;

impl Collector for BrokerCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let refused = rumqttd::REFUSED_BY_TOPIC_POLICY.load(Ordering::Relaxed) as u64;
        let counter = ConstCounter::new(refused);
        let help = "Publishes and subscriptions the broker refused: a device used a topic that is not its own.";
        let metric = encoder.encode_descriptor("edgeledger_topic_policy_refused", help, None, counter.metric_type())?;
        counter.encode(metric)?;
        let backed_off = ConstCounter::new(broker::LOGINS_BACKED_OFF.load(Ordering::Relaxed));
        let help = "Logins refused without a password check: their device id or source address had too many failed logins.";
        let metric = encoder.encode_descriptor("edgeledger_logins_backed_off", help, None, backed_off.metric_type())?;
        backed_off.encode(metric)
    }
}

/// One node's metrics.
pub struct Metrics {
    node: String,
    role: &'static str,
    registry: Registry,
    commands: Family<CommandLabels, Counter>,
    /// The counters of `commands` by [op][code], each taken from the family the first time
    /// it counts: after that, counting is one atomic add, no lock, no hashing.
    command_counters: Vec<[OnceLock<Counter>; Code::ALL.len()]>,
    /// Inputs refused before they were commands, by code (not JSON, too large, ...) plus
    /// messages on topics that name no valid device.
    rejected_inputs: Family<ReasonLabels, Counter>,
    lost_by_broker: Counter,
    commit_batch: Histogram,
    commit_latency: Histogram,
    /// The journal's last sequence number, and cross-node transfers sent and not decided.
    journal_head: Gauge,
    transfers_out_pending: Gauge,
    /// The id cache (`core::idempotency::IdIndex`): records in RAM, and its counters.
    id_cache_entries: Gauge,
    id_filter_bytes: Gauge,
    id_cache: [Counter; 4],
    /// Holds in RAM and decisions on transfers received in RAM, and the counters of those
    /// leaving it (`core::leaving`).
    holds_in_ram: Gauge,
    hold_cache: [Counter; 2],
    received_in_ram: Gauge,
    received_cache: [Counter; 2],
    /// Commits the disk refused, and whether the node refuses new commands now (`edge::disk`).
    write_failures: Counter,
    refusing_writes: Gauge,
    /// When the node's main loop last showed life (ms since the epoch).
    heartbeat_ms: AtomicU64,
    gauges: Arc<ScrapeGauges>,
}

impl Metrics {
    /// `own_links`: MQTT connections that are the node's own local links, not devices.
    pub fn new(node: &str, role: &'static str, own_links: u64) -> Arc<Metrics> {
        let mut metrics = Metrics {
            node: node.to_string(),
            role,
            registry: Registry::default(),
            commands: Family::default(),
            command_counters: (0..OPS.len()).map(|_| std::array::from_fn(|_| OnceLock::new())).collect(),
            rejected_inputs: Family::default(),
            lost_by_broker: Counter::default(),
            commit_batch: Histogram::new(BATCH_BUCKETS),
            commit_latency: Histogram::new(LATENCY_BUCKETS_S),
            journal_head: Gauge::default(),
            transfers_out_pending: Gauge::default(),
            id_cache_entries: Gauge::default(),
            id_filter_bytes: Gauge::default(),
            id_cache: Default::default(),
            holds_in_ram: Gauge::default(),
            hold_cache: Default::default(),
            received_in_ram: Gauge::default(),
            received_cache: Default::default(),
            write_failures: Counter::default(),
            refusing_writes: Gauge::default(),
            heartbeat_ms: AtomicU64::new(now_ms()),
            gauges: Arc::default(),
        };
        let info: Family<NodeLabels, Gauge> = Family::default();
        info.get_or_create(&NodeLabels { node: node.to_string(), role }).set(1);
        // `Registry::register` ends each help text with a full stop of its own.
        let registry = &mut metrics.registry;
        registry.register("edgeledger_node_info", "The node this endpoint describes", info);
        if role == "edge" {
            let help = "Commands answered, by op and reply code (op=\"invalid\": not a command)";
            registry.register("edgeledger_commands", help, metrics.commands.clone());
            // Shown from the start: a topic with no valid device id is the sign of a misconfigured device.
            let _ = metrics.rejected_inputs.get_or_create(&ReasonLabels { reason: "invalid_topic" });
            registry.register(
                "edgeledger_rejected_inputs",
                "Inputs refused before they were commands, by reason",
                metrics.rejected_inputs.clone(),
            );
            let help = "Commands the broker dropped before the ledger read them (devices resend)";
            registry.register("edgeledger_broker_lost", help, metrics.lost_by_broker.clone());
            registry.register("edgeledger_commit_batch_size", "Commands per durable commit", metrics.commit_batch.clone());
            let help = "Time of one durable commit (write and fsync)";
            registry.register("edgeledger_commit_duration_seconds", help, metrics.commit_latency.clone());
            let help = "Sequence number of the last journal entry";
            registry.register("edgeledger_journal_head_seq", help, metrics.journal_head.clone());
            let help = "Cross-node transfers sent from this node and not decided yet";
            registry.register("edgeledger_transfers_in_flight", help, metrics.transfers_out_pending.clone());
            let help = "Id records held in RAM (ledger.id_cache_entries bounds it, beyond the groups not yet durable)";
            registry.register("edgeledger_id_cache_entries", help, metrics.id_cache_entries.clone());
            let help = "Bytes of the filter that tells new ids without reading the file";
            registry.register("edgeledger_id_filter_bytes", help, metrics.id_filter_bytes.clone());
            let [hits, never_seen, misses, evictions] = metrics.id_cache.clone();
            registry.register("edgeledger_id_cache_hits", "Ids found in RAM", hits);
            registry.register("edgeledger_id_cache_never_seen", "Ids the filter knew to be new, without reading the file", never_seen);
            let help = "Ids looked up in the file: evicted from RAM, or the filter's false positives";
            registry.register("edgeledger_id_cache_misses", help, misses);
            registry.register("edgeledger_id_cache_evictions", "Id records that left RAM (they stay in the file)", evictions);
            let help =
                "Holds in RAM: every pending and cross-node hold, and the most recently resolved (ledger.resolved_hold_cache_entries)";
            registry.register("edgeledger_holds_in_ram", help, metrics.holds_in_ram.clone());
            let [reads, evictions] = metrics.hold_cache.clone();
            let help = "Holds a command named that were not in RAM, looked up in the file (resolved long ago, or unknown)";
            registry.register("edgeledger_hold_archive_reads", help, reads);
            registry.register("edgeledger_hold_evictions", "Resolved holds that left RAM (they stay in the file)", evictions);
            let help = "Decisions on transfers received held in RAM (ledger.received_cache_entries, beyond the groups not yet durable)";
            registry.register("edgeledger_received_in_ram", help, metrics.received_in_ram.clone());
            let [reads, evictions] = metrics.received_cache.clone();
            let help = "Deliveries whose decision was not in RAM, looked up in the file (decided long ago, or new)";
            registry.register("edgeledger_received_archive_reads", help, reads);
            let help = "Decisions on transfers received that left RAM (they stay in the file)";
            registry.register("edgeledger_received_evictions", help, evictions);
            let help = "Commits the disk refused (full, a quota, a size limit, an I/O error); nothing of them was answered ok";
            registry.register("edgeledger_write_failures", help, metrics.write_failures.clone());
            let help = "1 while the node cannot write and answers new commands disk_full (reads and resends still answered)";
            registry.register("edgeledger_refusing_writes", help, metrics.refusing_writes.clone());
            registry.register_collector(Box::new(BrokerCounters));
            metrics.gauges.callbacks.lock().expect("gauges").push(Box::new(move |out| {
                let connections = (rumqttd::CONNECTIONS.load(Ordering::Relaxed) as u64).saturating_sub(own_links);
                gauge(out, "edgeledger_mqtt_connections", "MQTT connections open now.", [(vec![], connections)]);
            }));
        }
        metrics.registry.register_collector(Box::new(metrics.gauges.clone()));
        Arc::new(metrics)
    }

    /// One command answered, by op name (see `OPS`) and reply code.
    pub fn command(&self, op: &str, code: Code) {
        let op = OPS.iter().position(|o| *o == op).unwrap_or(OPS.len() - 1);
        let code_at = Code::ALL.iter().position(|c| *c == code).expect("every code is in Code::ALL");
        let counter = self.command_counters[op][code_at]
            .get_or_init(|| self.commands.get_or_create(&CommandLabels { op: OPS[op], code: code.as_str() }).clone());
        counter.inc();
    }

    /// An input refused before it was a command.
    pub fn rejected_input(&self, code: Code) {
        self.rejected_inputs.get_or_create(&ReasonLabels { reason: code.as_str() }).inc();
        self.command("invalid", code);
    }

    pub fn dropped_topic(&self) {
        self.rejected_inputs.get_or_create(&ReasonLabels { reason: "invalid_topic" }).inc();
    }

    pub fn lost_by_broker(&self, lost: u64) {
        self.lost_by_broker.inc_by(lost);
    }

    /// One durable commit of `commands` commands that took `took`.
    pub fn commit(&self, commands: usize, took: Duration) {
        self.commit_batch.observe(commands as f64);
        self.commit_latency.observe(took.as_secs_f64());
    }

    /// The edge's books after a group: journal head and cross-node transfers pending.
    pub fn books(&self, head: u64, transfers_out_pending: usize) {
        self.journal_head.set(i64::try_from(head).unwrap_or(i64::MAX));
        self.transfers_out_pending.set(i64::try_from(transfers_out_pending).unwrap_or(i64::MAX));
    }

    /// The id cache after a group: records in RAM and its counters since start.
    pub fn id_cache(&self, entries: usize, filter_bytes: usize, stats: crate::core::idempotency::IdCacheStats) {
        self.id_cache_entries.set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.id_filter_bytes.set(i64::try_from(filter_bytes).unwrap_or(i64::MAX));
        for (counter, total) in self.id_cache.iter().zip([stats.hits, stats.never_seen, stats.misses, stats.evictions]) {
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    /// After a group: holds and decisions received in RAM, and their counters since start.
    pub fn finals_cache(&self, holds: (usize, LeaveStats), received: (usize, LeaveStats)) {
        for (gauge, counters, (in_ram, stats)) in
            [(&self.holds_in_ram, &self.hold_cache, holds), (&self.received_in_ram, &self.received_cache, received)]
        {
            gauge.set(i64::try_from(in_ram).unwrap_or(i64::MAX));
            for (counter, total) in counters.iter().zip([stats.archive_reads, stats.evictions]) {
                counter.inc_by(total.saturating_sub(counter.get()));
            }
        }
    }

    /// A commit the disk refused.
    pub fn write_failed(&self) {
        self.write_failures.inc();
    }

    /// Whether the node refuses new commands for want of a writable disk.
    pub fn refusing_writes(&self, refusing: bool) {
        self.refusing_writes.set(i64::from(refusing));
    }

    pub fn heartbeat(&self) {
        self.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Alive as of `ago` before now (an edge's open group, waiting for the committer).
    pub fn heartbeat_since(&self, ago: Duration) {
        let ago_ms = u64::try_from(ago.as_millis()).unwrap_or(u64::MAX);
        self.heartbeat_ms.store(now_ms().saturating_sub(ago_ms), Ordering::Relaxed);
    }

    pub fn add_gauges(&self, gauges: Gauges) {
        self.gauges.callbacks.lock().expect("gauges").push(gauges);
    }

    /// The node's file and disk, read by `read` at each scrape (None: not readable now).
    pub fn add_storage(&self, read: impl Fn() -> Option<Storage> + Send + Sync + 'static) {
        self.add_gauges(Box::new(move |out| {
            let Some(storage) = read() else { return };
            gauge(out, "edgeledger_db_file_bytes", "Length of the node's redb file.", [(vec![], storage.file_bytes)]);
            let help = "Bytes the node's redb file takes on disk (the file is grown ahead of use; what is not written yet takes none).";
            gauge(out, "edgeledger_db_disk_bytes", help, [(vec![], storage.disk_bytes)]);
            let help = "Bytes still free for the node on the filesystem of its file (a full disk makes an edge answer disk_full).";
            gauge(out, "edgeledger_disk_free_bytes", help, [(vec![], storage.disk_free_bytes)]);
            let samples = storage.rows.into_iter().map(|(table, n)| (vec![("table", table.to_string())], n));
            gauge(out, "edgeledger_table_rows", "Rows in each table of the node's file.", samples);
            let help = "1 while commits record redb's allocator state (the file is at most commit.quick_repair_up_to_bytes long): after a crash it opens at once; 0: redb checks the whole file first.";
            gauge(out, "edgeledger_commit_quick_repair", help, [(vec![], u64::from(storage.quick_repair))]);
        }));
    }

    /// `Ok(body)` when the node is alive, `Err(body)` when its main loop stalled or an MQTT
    /// listener stopped accepting.
    pub fn health(&self) -> Result<String, String> {
        let stalled = now_ms().saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed));
        let body = |status: &str| {
            format!("{{\"status\":\"{status}\",\"node\":\"{}\",\"role\":\"{}\",\"stalled_ms\":{stalled}}}\n", self.node, self.role)
        };
        if stalled > HEALTH_STALL.as_millis() as u64 {
            Err(body("stalled"))
        } else if rumqttd::LISTENERS_DOWN.load(Ordering::Relaxed) > 0 {
            // A listener that stopped accepting is a port devices can no longer reach.
            Err(body("listener_down"))
        } else {
            Ok(body("ok"))
        }
    }

    /// The whole exposition text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::new("eu/x", "edge", 2);
        m.command("transfer", Code::Ok);
        m.command("transfer", Code::Ok);
        m.command("hold", Code::InsufficientFunds);
        m.rejected_input(Code::InvalidJson);
        m.commit(3, Duration::from_micros(1_500));
        let text = m.render();
        assert!(text.contains("edgeledger_commands_total{op=\"transfer\",code=\"ok\"} 2\n"), "{text}");
        assert!(text.contains("edgeledger_commands_total{op=\"hold\",code=\"insufficient_funds\"} 1\n"));
        assert!(text.contains("edgeledger_commands_total{op=\"invalid\",code=\"invalid_json\"} 1\n"));
        assert!(text.contains("edgeledger_rejected_inputs_total{reason=\"invalid_json\"} 1\n"));
        // OpenMetrics writes bucket bounds as floats.
        assert!(text.contains("edgeledger_commit_batch_size_bucket{le=\"2.0\"} 0\n"), "{text}");
        assert!(text.contains("edgeledger_commit_batch_size_bucket{le=\"4.0\"} 1\n"), "{text}");
        assert!(text.contains("edgeledger_commit_duration_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("edgeledger_commit_duration_seconds_bucket{le=\"0.0025\"} 1\n"));
        assert!(text.contains("edgeledger_commit_duration_seconds_sum 0.0015\n"));
    }
}
