//! What a node counts about itself, and the HTTP endpoint that shows it: `GET /metrics`
//! (Prometheus text format 0.0.4) and `GET /health`.
//!
//! Counters are plain atomics updated on the hot path (no locks, no allocation); gauges
//! that live elsewhere (replication, transfers in flight) are read at scrape time through
//! `Gauges` callbacks. The server answers one short request per connection and closes it,
//! with a bounded request size and a bounded number of connections.

mod http;

pub use http::start;

use crate::clock::now_ms;
use crate::core::reply::Code;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Command ops as counted; `invalid` is an input that never became a command.
pub const OPS: [&str; 11] =
    ["open_account", "close_account", "transfer", "hold", "post", "void", "batch", "balance", "receive", "settle", "invalid"];

/// Upper bounds of the commit batch-size histogram (commands per durable commit).
const BATCH_BUCKETS: [u64; 12] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];
/// Upper bounds of the commit-latency histogram, in microseconds.
const LATENCY_BUCKETS_US: [u64; 14] =
    [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 5_000_000];

/// The intake must show life at least this often (it ticks every 250 ms when idle), or
/// `/health` answers 503.
pub const HEALTH_STALL: Duration = Duration::from_secs(5);

struct Histogram<const N: usize> {
    bounds: [u64; N],
    /// Per bucket (not cumulative); the last slot is +Inf.
    counts: [AtomicU64; 16],
    sum: AtomicU64,
    count: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    fn new(bounds: [u64; N]) -> Self {
        debug_assert!(N < 16 && bounds.windows(2).all(|w| w[0] < w[1]));
        Histogram { bounds, counts: Default::default(), sum: AtomicU64::new(0), count: AtomicU64::new(0) }
    }

    fn observe(&self, value: u64) {
        let slot = self.bounds.iter().position(|b| value <= *b).unwrap_or(N);
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes the histogram; `scale` turns a bound into its exposed text (seconds from µs).
    fn render(&self, out: &mut String, name: &str, help: &str, scale: fn(u64) -> String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", scale(*bound));
        }
        cumulative += self.counts[N].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", scale(self.sum.load(Ordering::Relaxed)));
        let _ = writeln!(out, "{name}_count {}", self.count.load(Ordering::Relaxed));
    }
}

/// A gauge read at scrape time: appends complete lines (with HELP and TYPE) to the text.
pub type Gauges = Box<dyn Fn(&mut String) + Send + Sync>;

/// One node's metrics.
pub struct Metrics {
    node: String,
    role: &'static str,
    /// [op][code]
    commands: Vec<[AtomicU64; Code::ALL.len()]>,
    /// Inputs refused before they were commands, by code (not JSON, too large, ...) plus
    /// messages on topics that name no valid device.
    rejected_inputs: [AtomicU64; Code::ALL.len()],
    dropped_topics: AtomicU64,
    lost_by_broker: AtomicU64,
    commit_batch: Histogram<12>,
    commit_latency_us: Histogram<14>,
    /// The journal's last sequence number, and cross-node transfers sent and not decided.
    journal_head: AtomicU64,
    transfers_out_pending: AtomicU64,
    /// When the node's main loop last showed life (ms since the epoch).
    heartbeat_ms: AtomicU64,
    /// MQTT connections that are the node's own local links, not devices.
    own_links: u64,
    gauges: Mutex<Vec<Gauges>>,
}

impl Metrics {
    pub fn new(node: &str, role: &'static str, own_links: u64) -> Arc<Metrics> {
        Arc::new(Metrics {
            node: node.to_string(),
            role,
            commands: (0..OPS.len()).map(|_| Default::default()).collect(),
            rejected_inputs: Default::default(),
            dropped_topics: AtomicU64::new(0),
            lost_by_broker: AtomicU64::new(0),
            commit_batch: Histogram::new(BATCH_BUCKETS),
            commit_latency_us: Histogram::new(LATENCY_BUCKETS_US),
            journal_head: AtomicU64::new(0),
            transfers_out_pending: AtomicU64::new(0),
            heartbeat_ms: AtomicU64::new(now_ms()),
            own_links,
            gauges: Mutex::new(Vec::new()),
        })
    }

    /// One command answered, by op name (see `OPS`) and reply code.
    pub fn command(&self, op: &str, code: Code) {
        let op = OPS.iter().position(|o| *o == op).unwrap_or(OPS.len() - 1);
        self.commands[op][code_index(code)].fetch_add(1, Ordering::Relaxed);
    }

    /// An input refused before it was a command.
    pub fn rejected_input(&self, code: Code) {
        self.rejected_inputs[code_index(code)].fetch_add(1, Ordering::Relaxed);
        self.command("invalid", code);
    }

    pub fn dropped_topic(&self) {
        self.dropped_topics.fetch_add(1, Ordering::Relaxed);
    }

    pub fn lost_by_broker(&self, lost: u64) {
        self.lost_by_broker.fetch_add(lost, Ordering::Relaxed);
    }

    /// One durable commit of `commands` commands that took `took`.
    pub fn commit(&self, commands: usize, took: Duration) {
        self.commit_batch.observe(commands as u64);
        self.commit_latency_us.observe(took.as_micros().min(u64::MAX as u128) as u64);
    }

    /// The edge's books after a group: journal head and cross-node transfers pending.
    pub fn books(&self, head: u64, transfers_out_pending: usize) {
        self.journal_head.store(head, Ordering::Relaxed);
        self.transfers_out_pending.store(transfers_out_pending as u64, Ordering::Relaxed);
    }

    pub fn heartbeat(&self) {
        self.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn add_gauges(&self, gauges: Gauges) {
        self.gauges.lock().expect("gauges").push(gauges);
    }

    /// `Ok(body)` when the node is alive, `Err(body)` when its main loop stalled.
    pub fn health(&self) -> Result<String, String> {
        let stalled = now_ms().saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed));
        let body = |status: &str| {
            format!("{{\"status\":\"{status}\",\"node\":\"{}\",\"role\":\"{}\",\"stalled_ms\":{stalled}}}\n", self.node, self.role)
        };
        if stalled > HEALTH_STALL.as_millis() as u64 {
            Err(body("stalled"))
        } else {
            Ok(body("ok"))
        }
    }

    /// The whole exposition text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let _ = writeln!(out, "# HELP edgeledger_node_info The node this endpoint describes.\n# TYPE edgeledger_node_info gauge");
        let _ = writeln!(out, "edgeledger_node_info{{node=\"{}\",role=\"{}\"}} 1", self.node, self.role);
        if self.role == "edge" {
            let _ =
                writeln!(out, "# HELP edgeledger_commands_total Commands answered, by op and reply code (op=\"invalid\": not a command).");
            let _ = writeln!(out, "# TYPE edgeledger_commands_total counter");
            for (op, codes) in OPS.iter().zip(&self.commands) {
                for (code, count) in Code::ALL.iter().zip(codes) {
                    let n = count.load(Ordering::Relaxed);
                    if n > 0 {
                        let _ = writeln!(out, "edgeledger_commands_total{{op=\"{op}\",code=\"{}\"}} {n}", code.as_str());
                    }
                }
            }
            let _ = writeln!(out, "# HELP edgeledger_rejected_inputs_total Inputs refused before they were commands, by reason.");
            let _ = writeln!(out, "# TYPE edgeledger_rejected_inputs_total counter");
            for (code, count) in Code::ALL.iter().zip(&self.rejected_inputs) {
                let n = count.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(out, "edgeledger_rejected_inputs_total{{reason=\"{}\"}} {n}", code.as_str());
                }
            }
            let dropped = self.dropped_topics.load(Ordering::Relaxed);
            let _ = writeln!(out, "edgeledger_rejected_inputs_total{{reason=\"invalid_topic\"}} {dropped}");
            let _ = writeln!(
                out,
                "# HELP edgeledger_broker_lost_total Commands the broker dropped before the ledger read them (devices resend)."
            );
            let _ = writeln!(out, "# TYPE edgeledger_broker_lost_total counter");
            let _ = writeln!(out, "edgeledger_broker_lost_total {}", self.lost_by_broker.load(Ordering::Relaxed));
            self.commit_batch.render(&mut out, "edgeledger_commit_batch_size", "Commands per durable commit.", |n| n.to_string());
            self.commit_latency_us.render(
                &mut out,
                "edgeledger_commit_duration_seconds",
                "Time of one durable commit (write and fsync).",
                seconds,
            );
            let connections = (rumqttd::CONNECTIONS.load(Ordering::Relaxed) as u64).saturating_sub(self.own_links);
            let _ =
                writeln!(out, "# HELP edgeledger_mqtt_connections MQTT connections open now.\n# TYPE edgeledger_mqtt_connections gauge");
            let _ = writeln!(out, "edgeledger_mqtt_connections {connections}");
            let _ = writeln!(
                out,
                "# HELP edgeledger_journal_head_seq Sequence number of the last journal entry.\n# TYPE edgeledger_journal_head_seq gauge"
            );
            let _ = writeln!(out, "edgeledger_journal_head_seq {}", self.journal_head.load(Ordering::Relaxed));
            let _ = writeln!(out, "# HELP edgeledger_transfers_in_flight Cross-node transfers sent from this node and not decided yet.");
            let _ = writeln!(out, "# TYPE edgeledger_transfers_in_flight gauge");
            let _ = writeln!(out, "edgeledger_transfers_in_flight {}", self.transfers_out_pending.load(Ordering::Relaxed));
        }
        for gauges in self.gauges.lock().expect("gauges").iter() {
            gauges(&mut out);
        }
        out
    }
}

/// Writes one gauge with its HELP and TYPE lines; each sample is (labels, value), the
/// labels as `key="value"` pairs, or empty for none.
pub fn gauge<L: std::fmt::Display>(out: &mut String, name: &str, help: &str, samples: impl IntoIterator<Item = (L, u64)>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (labels, value) in samples {
        let labels = labels.to_string();
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

fn code_index(code: Code) -> usize {
    Code::ALL.iter().position(|c| *c == code).expect("every code is in Code::ALL")
}

/// Microseconds as decimal seconds, without floating point.
fn seconds(us: u64) -> String {
    let text = format!("{}.{:06}", us / 1_000_000, us % 1_000_000);
    text.trim_end_matches('0').trim_end_matches('.').to_string()
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
        assert!(text.contains("edgeledger_commit_batch_size_bucket{le=\"2\"} 0\n"));
        assert!(text.contains("edgeledger_commit_batch_size_bucket{le=\"4\"} 1\n"));
        assert!(text.contains("edgeledger_commit_duration_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("edgeledger_commit_duration_seconds_bucket{le=\"0.0025\"} 1\n"));
        assert!(text.contains("edgeledger_commit_duration_seconds_sum 0.0015\n"));
        assert_eq!(seconds(5_000_000), "5");
        assert_eq!(seconds(0), "0");
    }
}
