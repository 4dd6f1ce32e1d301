//! What a node counts about itself, and the HTTP endpoint that shows it: `GET /metrics`
//! (Prometheus text format 0.0.4) and `GET /health`.
//!
//! Counters are plain atomics updated on the hot path (no locks, no allocation); gauges
//! that live elsewhere (replication, transfers in flight) are read at scrape time through
//! `Gauges` callbacks. The server answers one short request per connection and closes it,
//! with a bounded request size and a bounded number of connections.

use crate::reply::Code;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Command ops as counted; `invalid` is an input that never became a command.
pub const OPS: [&str; 11] =
    ["open_account", "close_account", "transfer", "hold", "post", "void", "batch", "balance", "receive", "settle", "invalid"];

/// Upper bounds of the commit batch-size histogram (commands per durable commit).
const BATCH_BUCKETS: [u64; 12] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];
/// Upper bounds of the commit-latency histogram, in microseconds.
const LATENCY_BUCKETS_US: [u64; 14] = [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 5_000_000];

/// The intake must show life at least this often (it ticks every 250 ms when idle), or
/// `/health` answers 503.
pub const HEALTH_STALL: Duration = Duration::from_secs(5);
/// Largest HTTP request read; the server only needs its first line.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Scrapes answered at once; more wait for a slot.
const MAX_CONNECTIONS: usize = 16;
/// A client that sends nothing for this long is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

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
            heartbeat_ms: AtomicU64::new(crate::intake::now_ms()),
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
        self.heartbeat_ms.store(crate::intake::now_ms(), Ordering::Relaxed);
    }

    pub fn add_gauges(&self, gauges: Gauges) {
        self.gauges.lock().expect("gauges").push(gauges);
    }

    /// `Ok(body)` when the node is alive, `Err(body)` when its main loop stalled.
    pub fn health(&self) -> Result<String, String> {
        let stalled = crate::intake::now_ms().saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed));
        let body = |status: &str| format!("{{\"status\":\"{status}\",\"node\":\"{}\",\"role\":\"{}\",\"stalled_ms\":{stalled}}}\n", self.node, self.role);
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
            let _ = writeln!(out, "# HELP edgeledger_commands_total Commands answered, by op and reply code (op=\"invalid\": not a command).");
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
            let _ = writeln!(out, "# HELP edgeledger_broker_lost_total Commands the broker dropped before the ledger read them (devices resend).");
            let _ = writeln!(out, "# TYPE edgeledger_broker_lost_total counter");
            let _ = writeln!(out, "edgeledger_broker_lost_total {}", self.lost_by_broker.load(Ordering::Relaxed));
            self.commit_batch.render(&mut out, "edgeledger_commit_batch_size", "Commands per durable commit.", |n| n.to_string());
            self.commit_latency_us.render(&mut out, "edgeledger_commit_duration_seconds", "Time of one durable commit (write and fsync).", seconds);
            let connections = (rumqttd::CONNECTIONS.load(Ordering::Relaxed) as u64).saturating_sub(self.own_links);
            let _ = writeln!(out, "# HELP edgeledger_mqtt_connections MQTT connections open now.\n# TYPE edgeledger_mqtt_connections gauge");
            let _ = writeln!(out, "edgeledger_mqtt_connections {connections}");
            let _ = writeln!(out, "# HELP edgeledger_journal_head_seq Sequence number of the last journal entry.\n# TYPE edgeledger_journal_head_seq gauge");
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

fn code_index(code: Code) -> usize {
    Code::ALL.iter().position(|c| *c == code).expect("every code is in Code::ALL")
}

/// Microseconds as decimal seconds, without floating point.
fn seconds(us: u64) -> String {
    let text = format!("{}.{:06}", us / 1_000_000, us % 1_000_000);
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Serves `/metrics` and `/health` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &metrics)).await;
            drop(permit);
        });
    }
}

async fn answer(mut stream: tokio::net::TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && !request.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
        if request.len() > MAX_REQUEST_BYTES {
            return respond(&mut stream, "431 Request Header Fields Too Large", "text/plain", "request too large\n").await;
        }
    }
    let line = String::from_utf8_lossy(request.split(|b| *b == b'\n').next().unwrap_or_default()).into_owned();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => respond(&mut stream, "200 OK", "text/plain; version=0.0.4; charset=utf-8", &metrics.render()).await,
        ("GET", "/health") => match metrics.health() {
            Ok(body) => respond(&mut stream, "200 OK", "application/json", &body).await,
            Err(body) => respond(&mut stream, "503 Service Unavailable", "application/json", &body).await,
        },
        ("GET", _) => respond(&mut stream, "404 Not Found", "text/plain", "try /metrics or /health\n").await,
        _ => respond(&mut stream, "405 Method Not Allowed", "text/plain", "GET only\n").await,
    }
}

async fn respond(stream: &mut tokio::net::TcpStream, status: &str, content_type: &str, body: &str) -> std::io::Result<()> {
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Binds the metrics listener now (so a taken port stops the node at start with the key
/// named) and serves it from a thread of its own.
pub fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<(), String> {
    let std_listener = std::net::TcpListener::bind(addr).map_err(|e| format!("metrics.listen: cannot listen on {addr}: {e}"))?;
    std_listener.set_nonblocking(true).map_err(|e| format!("metrics.listen: {e}"))?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("metrics runtime");
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(listener) => serve(listener, metrics).await,
                    Err(e) => tracing::error!("metrics listener: {e}"),
                }
            })
        })
        .map_err(|e| e.to_string())?;
    Ok(())
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
