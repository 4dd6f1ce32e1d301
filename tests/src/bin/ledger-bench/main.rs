//! `ledger-bench`: how fast edgeledger books payments, and what that costs next to a bare broker.
//!
//! - `mqtt`: end to end over MQTT 3.1.1. K device clients each keep W transfers in flight
//!   against a real `ledger-node` (spawned from the binary next to this one, or `--connect`),
//!   and record the latency from publish to the durable-commit reply. The same workload then
//!   runs against an in-process rumqttd broker whose local link answers every command at once
//!   without a ledger (the "echo"), so `ratio ledger/echo` is the share of raw broker
//!   throughput that the ledger keeps.
//! - `core`: the ledger core and redb store without MQTT: `Ledger::submit` plus one durable
//!   `Store::commit` every B transfers, serial and pipelined as a node runs them, showing what
//!   commit grouping buys and where time goes (`core_bench`).
//!
//! Run in release (so the spawned node is the release binary too):
//!
//! ```text
//! cargo run --release -p edgeledger-tests --bin ledger-bench -- mqtt
//! cargo run --release -p edgeledger-tests --bin ledger-bench -- core
//! cargo run --release -p edgeledger-tests --bin ledger-bench -- --help
//! ```
//!
//! Money is only ever decimal strings here; f64 appears in statistics only.

mod core_bench;
mod cross;
mod geo;
mod id_filter_bench;
mod region_soak;
mod soak;
mod tigerbeetle;

use hdrhistogram::Histogram;
use ledger::clock::now_ms;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// glibc's malloc and free were a third of the ledger core's time; see BENCHMARKS.md,
/// "Speed: the allocator adopted".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
ledger-bench: throughput and latency of edgeledger

USAGE:
  ledger-bench mqtt [--clients K] [--inflight W] [--seconds S] [--rate R]
                    [--connect HOST:PORT] [--ledger-only | --echo-only] [--tls]
      K device clients (default 32), each keeping up to W transfers in flight (default 16),
      measured for S seconds (default 10) after a 1 s warm-up. --rate R paces R commands/s
      in total (open loop, latency from the scheduled send time); default: as fast as replies
      come. Without --connect a ledger-node is spawned on a free port. Then the same workload
      runs against a bare in-process broker that echoes 'committed' (the baseline). --tls
      (with --ledger-only): the spawned node's devices connect over MQTT-over-TLS.
  ledger-bench core [--transfers N] [--batches 1,100,1000] [--tigerbeetle TB_BENCH_PY] [--sittings K]
      Ledger core + redb store without MQTT: N transfers (default 200000; at most 5000 per
      unit of batch size below 100, since every commit is an fsync), one durable commit
      every B transfers, for each B: first serial (apply a group, commit it), then
      pipelined like an edge (the next group applied while the last one commits).
      --tigerbeetle runs TigerBeetle's bench script (../shared/reference/tigerbeetle/
      tb_bench.py) first in each of K sittings (default 1) and prints ours / TigerBeetle per
      batch size, and with K > 1 the medians.
  ledger-bench geo [--rate R] [--seconds S] [--partition P]
      A region following an edge over zenoh: replication lag at R payments/s (default
      5000) for S seconds (default 10), then a P-second partition (default 60) and the rate
      at which the backlog drains after it.
  ledger-bench cross [--devices D] [--count N] [--rate R] [--plaintext]
      Cross-region payments on the 2 regions x 2 edges topology: D devices (default 1) on
      eu/berlin-1 each send N transfers (default 200) to an account on us/nyc-1, each after
      the previous one's final notice, or with --rate R paced at R transfers/s in all (open
      loop, latency from the scheduled send time); the latency from command to the pending
      reply and to the final notice.
      Zenoh links are mutual TLS with access control; --plaintext: plain TCP (loopback).
  ledger-bench soak [--transfers N] [--id-cache E] [--hold-cache H] [--holds] [--svg FILE]
      An edge (embedded default, fresh data directory) driven by 32 MQTT clients x 16 in
      flight until its journal holds N transfers (default 2000000), its RSS and redb file
      size sampled every second; then SIGKILL and the time until the restarted node
      answers a command. Prints RSS and file bytes per transfer from 1 M to N and draws
      both against transfers in FILE (default soak.svg). --id-cache: the node's
      ledger.id_cache_entries; --hold-cache: its ledger.resolved_hold_cache_entries.
      --holds: each payment is a hold and its post (N counts entries: two per payment).
  ledger-bench soak-region [--entries N] [--edges E]
      A region following E edges (default 8; plain TCP on loopback), 32 MQTT clients x 16
      in flight spread over the edges, until its replicas hold N entries in all (default
      2000000); the region's RSS and the blocks its file takes sampled every second; then
      SIGKILL and the time until it answers its status with every replica back where it was.
  ledger-bench id-filter [--ids N,N,...]
      The id filter alone at N ids (default 1048576,8388608,33554432), grown by layers
      as a node that never restarted, and sized for them as after a start-up: ns per
      insert, ns per new id (may_contain, then insert) and the false positives among 1 M
      ids it never saw (each costs a lookup in the file).
  ledger-bench --help
";

/// Unmeasured time at the start of a run: connections, caches and the commit group size settle.
const WARMUP: Duration = Duration::from_secs(1);
/// After the window, how long clients wait for the replies still owed to them.
const DRAIN: Duration = Duration::from_secs(10);
/// Longest wait for CONNACK/SUBACK or for a setup reply.
const REPLY_DEADLINE: Duration = Duration::from_secs(20);
/// Latencies above this (µs) are clamped; a minute is far beyond anything meaningful here.
const HIST_MAX_US: u64 = 60_000_000;
/// Wallet funding in the mqtt setup: far more than S seconds of 0.01 transfers can spend.
const FUND_AMOUNT: &str = "100000000.00";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h" || a == "help") {
        print!("{USAGE}");
        return;
    }
    let Some(subcommand) = args.first() else {
        eprint!("{USAGE}");
        std::process::exit(2);
    };
    let result = match subcommand.as_str() {
        "mqtt" => parse_mqtt(&args[1..]).and_then(|opts| {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| format!("tokio runtime: {e}"))?;
            run_mqtt(&runtime, &opts)
        }),
        "core" => core_bench::parse(&args[1..]).and_then(|opts| core_bench::run(&opts)),
        "geo" => geo::parse(&args[1..]).and_then(|opts| geo::run(&opts)),
        "cross" => cross::parse(&args[1..]).and_then(|opts| cross::run(&opts)),
        "soak" => soak::parse(&args[1..]).and_then(|opts| soak::run(&opts)),
        "soak-region" => region_soak::parse(&args[1..]).and_then(|opts| region_soak::run(&opts)),
        "id-filter" => id_filter_bench::parse(&args[1..]).and_then(|opts| id_filter_bench::run(&opts)),
        other => Err(format!("unknown subcommand {other:?}\n\n{USAGE}")),
    };
    if let Err(e) = result {
        eprintln!("ledger-bench: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Arguments

struct MqttOpts {
    clients: usize,
    inflight: usize,
    seconds: u64,
    /// Total commands per second across clients; None: closed loop, as fast as replies come.
    rate: Option<u64>,
    connect: Option<(String, u16)>,
    ledger: bool,
    echo: bool,
    /// The spawned node's devices connect over MQTT-over-TLS (`listen_tls`).
    tls: bool,
    /// Each payment is a hold then its post (two commands, two entries), as a charger pays.
    holds: bool,
}

/// With `mqtt --tls`: the client configuration every connection uses (it trusts the
/// spawned node's CA only).
static TLS_CLIENT: std::sync::OnceLock<std::sync::Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();

/// The value after flag `args[*i]`, advancing `i` past it.
fn value<'a>(args: &'a [String], i: &mut usize) -> Result<&'a str, String> {
    let flag = &args[*i];
    *i += 1;
    args.get(*i).map(|s| s.as_str()).ok_or_else(|| format!("{flag} needs a value"))
}

fn number<T: std::str::FromStr>(flag: &str, text: &str) -> Result<T, String> {
    text.parse().map_err(|_| format!("{flag}: {text:?} is not a valid number"))
}

fn parse_mqtt(args: &[String]) -> Result<MqttOpts, String> {
    let mut opts =
        MqttOpts { clients: 32, inflight: 16, seconds: 10, rate: None, connect: None, ledger: true, echo: true, tls: false, holds: false };
    let (mut ledger_only, mut echo_only) = (false, false);
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        match flag {
            "--clients" => opts.clients = number(flag, value(args, &mut i)?)?,
            "--inflight" => opts.inflight = number(flag, value(args, &mut i)?)?,
            "--seconds" => opts.seconds = number(flag, value(args, &mut i)?)?,
            "--rate" => opts.rate = Some(number(flag, value(args, &mut i)?)?),
            "--connect" => {
                let text = value(args, &mut i)?;
                let (host, port) = text.rsplit_once(':').ok_or_else(|| format!("--connect: {text:?} is not HOST:PORT"))?;
                opts.connect = Some((host.to_string(), number("--connect port", port)?));
            }
            "--ledger-only" => ledger_only = true,
            "--tls" => opts.tls = true,
            "--echo-only" => echo_only = true,
            other => return Err(format!("mqtt: unknown argument {other:?}\n\n{USAGE}")),
        }
        i += 1;
    }
    if opts.tls && (opts.connect.is_some() || !ledger_only) {
        return Err("--tls runs the spawned node only: use it with --ledger-only and without --connect".to_string());
    }
    if ledger_only && echo_only {
        return Err("--ledger-only and --echo-only exclude each other".to_string());
    }
    opts.ledger = !echo_only;
    opts.echo = !ledger_only;
    if opts.clients == 0 || opts.inflight == 0 || opts.seconds == 0 {
        return Err("--clients, --inflight and --seconds must be at least 1".to_string());
    }
    if opts.inflight > 60_000 {
        return Err("--inflight must be at most 60000 (MQTT packet ids are 16 bits)".to_string());
    }
    if opts.rate == Some(0) {
        return Err("--rate must be at least 1".to_string());
    }
    Ok(opts)
}

// ---------------------------------------------------------------------------------------------
// mqtt: end to end

/// One reply as a client's connection task saw it.
struct ReplyMsg {
    id: Option<String>,
    status: String,
    code: String,
    duplicate: bool,
    /// Taken when the connection task got the packet, before any queueing in the bench.
    at: Instant,
}

fn parse_reply(payload: &[u8], at: Instant) -> ReplyMsg {
    match serde_json::from_slice::<Value>(payload) {
        Ok(v) => ReplyMsg {
            id: v["id"].as_str().map(str::to_string),
            status: v["status"].as_str().unwrap_or("?").to_string(),
            code: v["code"].as_str().unwrap_or("?").to_string(),
            duplicate: v["duplicate"].as_bool().unwrap_or(false),
            at,
        },
        Err(_) => ReplyMsg { id: None, status: "?".into(), code: "not_json".into(), duplicate: false, at },
    }
}

/// An MQTT 3.1.1 connection subscribed to its reply topic; its EventLoop runs in `driver`.
struct Conn {
    client: AsyncClient,
    replies: mpsc::UnboundedReceiver<ReplyMsg>,
    driver: tokio::task::JoinHandle<()>,
}

async fn connect(host: &str, port: u16, client_id: &str, inflight: usize) -> Result<Conn, String> {
    let mut options = MqttOptions::new(client_id, host, port);
    if let Some(tls) = TLS_CLIENT.get() {
        options.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls.clone())));
    }
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(1024 * 1024, 1024 * 1024);
    // rumqttc's own in-flight cap must never be what limits the workload: W is.
    options.set_inflight((inflight + 64).clamp(1000, u16::MAX as usize) as u16);
    // `publish` waits when this channel is full; keep it well above W.
    let capacity = (inflight * 4).max(4096);
    options.set_request_channel_capacity(capacity);
    let (client, mut eventloop) = AsyncClient::new(options, capacity);
    // Devices should send small MQTT packets without Nagle's delay.
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    wait_for(&mut eventloop, |p| matches!(p, Packet::ConnAck(_)), "CONNACK").await?;
    client
        .subscribe(format!("{}{client_id}", broker::REPLY_PREFIX), QoS::AtLeastOnce)
        .await
        .map_err(|e| format!("{client_id}: subscribe: {e}"))?;
    wait_for(&mut eventloop, |p| matches!(p, Packet::SubAck(_)), "SUBACK").await?;
    let (tx, replies) = mpsc::unbounded_channel();
    let driver = tokio::spawn(drive(eventloop, tx));
    Ok(Conn { client, replies, driver })
}

async fn wait_for(eventloop: &mut EventLoop, want: impl Fn(&Packet) -> bool, what: &str) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + REPLY_DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(packet))) if want(&packet) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("waiting for {what}: {e}")),
            Err(_) => return Err(format!("no {what} within {REPLY_DEADLINE:?}")),
        }
    }
}

/// Polls the EventLoop (rumqttc needs that to move at all) and hands replies on. Ends when the
/// receiving side is dropped, i.e. when its client is done.
async fn drive(mut eventloop: EventLoop, tx: mpsc::UnboundedSender<ReplyMsg>) {
    loop {
        tokio::select! {
            _ = tx.closed() => break,
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let at = Instant::now();
                    if tx.send(parse_reply(&p.payload, at)).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                // The target went away; rumqttc reconnects on the next poll. Unanswered
                // commands show up as such in the results.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            },
        }
    }
}

/// Publishes all `commands` (id, payload) on `device`'s command topic, then waits for every reply.
async fn request_all(conn: &mut Conn, device: &str, commands: Vec<(String, String)>) -> Result<HashMap<String, ReplyMsg>, String> {
    let topic = format!("{}{device}", broker::COMMAND_PREFIX);
    for (_, payload) in &commands {
        conn.client.publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone()).await.map_err(|e| format!("setup publish: {e}"))?;
    }
    let mut waiting: HashSet<String> = commands.into_iter().map(|(id, _)| id).collect();
    let mut replies = HashMap::new();
    let deadline = tokio::time::Instant::now() + REPLY_DEADLINE;
    while !waiting.is_empty() {
        match tokio::time::timeout_at(deadline, conn.replies.recv()).await {
            Ok(Some(reply)) => {
                if let Some(id) = reply.id.clone() {
                    if waiting.remove(&id) {
                        replies.insert(id, reply);
                    }
                }
            }
            Ok(None) => return Err("setup connection closed".to_string()),
            Err(_) => return Err(format!("setup: {} commands got no reply within {REPLY_DEADLINE:?}", waiting.len())),
        }
    }
    Ok(replies)
}

fn expect_ok(replies: &HashMap<String, ReplyMsg>, id: &str, also_fine: &str) -> Result<(), String> {
    let r = &replies[id];
    if (r.status == "committed" && r.code == "ok") || r.code == also_fine {
        Ok(())
    } else {
        Err(format!("setup command {id} got {}/{}", r.status, r.code))
    }
}

/// Opens the issuer, a wallet and a merchant per client, and funds the wallets. Pipelined in
/// three steps so that the node can share commits; each step needs the previous one.
async fn setup_accounts(host: &str, port: u16, clients: usize, run: &str) -> Result<(), String> {
    let device = "bench-setup";
    let mut conn = connect(host, port, device, 16).await?;
    // An existing account is fine: with --connect the node may have seen an earlier run.
    let issuer_id = format!("{run}-open-issuer");
    let issuer = json!({"id": issuer_id, "op": "open_account", "account": "issuer:eur", "asset": "EUR", "flags": ["issuance"]});
    let replies = request_all(&mut conn, device, vec![(issuer_id.clone(), issuer.to_string())]).await?;
    expect_ok(&replies, &issuer_id, "account_exists")?;

    let mut opens = Vec::new();
    for k in 0..clients {
        let id = format!("{run}-open-wallet-k{k}");
        let cmd = json!({"id": id, "op": "open_account", "account": format!("wallet:k{k}"), "asset": "EUR", "flags": ["no_overdraft"]});
        opens.push((id, cmd.to_string()));
        let id = format!("{run}-open-merchant-k{k}");
        let cmd = json!({"id": id, "op": "open_account", "account": format!("merchant:k{k}"), "asset": "EUR", "flags": []});
        opens.push((id, cmd.to_string()));
    }
    let ids: Vec<String> = opens.iter().map(|(id, _)| id.clone()).collect();
    let replies = request_all(&mut conn, device, opens).await?;
    for id in &ids {
        expect_ok(&replies, id, "account_exists")?;
    }

    let mut funds = Vec::new();
    for k in 0..clients {
        let id = format!("{run}-fund-k{k}");
        let cmd = json!({"id": id, "op": "transfer", "debit": "issuer:eur", "credit": format!("wallet:k{k}"),
                         "amount": FUND_AMOUNT, "asset": "EUR"});
        funds.push((id, cmd.to_string()));
    }
    let ids: Vec<String> = funds.iter().map(|(id, _)| id.clone()).collect();
    let replies = request_all(&mut conn, device, funds).await?;
    for id in &ids {
        expect_ok(&replies, id, "")?;
    }
    drop(conn.replies); // ends the driver
    conn.driver.abort();
    Ok(())
}

/// The timeline all clients share.
#[derive(Clone, Copy)]
struct Plan {
    clients: usize,
    inflight: usize,
    /// Per-client gap between scheduled sends when paced.
    interval_ns: Option<u64>,
    t0: Instant,
    warm_end: Instant,
    end: Instant,
    drain_deadline: Instant,
    holds: bool,
}

/// What one client saw; merged across clients at the end.
struct ClientStats {
    hist: Histogram<u64>,
    sent: u64,
    /// Replies `committed`/`ok` (not duplicates) received inside the window.
    committed: u64,
    /// Every other reply inside the window, by `status/code`.
    others: BTreeMap<String, u64>,
    /// Replies that came after the window (during the drain); not counted.
    late: u64,
    /// Commands still without a reply when the drain ended.
    unanswered: u64,
    errors: u64,
}

impl ClientStats {
    fn new() -> ClientStats {
        ClientStats {
            hist: Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds"),
            sent: 0,
            committed: 0,
            others: BTreeMap::new(),
            late: 0,
            unanswered: 0,
            errors: 0,
        }
    }

    fn merge(&mut self, other: ClientStats) {
        self.hist.add(&other.hist).expect("histograms with the same bounds add");
        self.sent += other.sent;
        self.committed += other.committed;
        for (label, count) in other.others {
            *self.others.entry(label).or_default() += count;
        }
        self.late += other.late;
        self.unanswered += other.unanswered;
        self.errors += other.errors;
    }

    fn take(&mut self, reply: ReplyMsg, prefix: &str, pending: &mut HashMap<u64, Instant>, plan: &Plan) {
        let n = reply.id.as_deref().and_then(|id| id.strip_prefix(prefix)).and_then(|s| s.parse::<u64>().ok());
        let Some(since) = n.and_then(|n| pending.remove(&n)) else {
            *self.others.entry("unmatched reply".to_string()).or_default() += 1;
            return;
        };
        if reply.at < plan.warm_end {
            return;
        }
        if reply.at >= plan.end {
            self.late += 1;
            return;
        }
        let micros = reply.at.saturating_duration_since(since).as_micros() as u64;
        self.hist.saturating_record(micros.max(1));
        if reply.status == "committed" && reply.code == "ok" && !reply.duplicate {
            self.committed += 1;
        } else {
            let dup = if reply.duplicate { " (duplicate)" } else { "" };
            *self.others.entry(format!("{}/{}{dup}", reply.status, reply.code)).or_default() += 1;
        }
    }
}

/// One client: keeps up to W transfers in flight (and, when paced, on schedule) until the
/// window ends, then waits for what it is still owed until the drain deadline.
async fn run_client(k: usize, conn: Conn, plan: Plan, run: String) -> ClientStats {
    let Conn { client, mut replies, driver: _ } = conn;
    let topic = format!("{}bench-{k}", broker::COMMAND_PREFIX);
    let prefix = format!("{run}-b{k}-");
    let mut stats = ClientStats::new();
    // Command number → the instant its latency counts from (the scheduled time when paced,
    // so that a stalled target cannot hide its stall: no coordinated omission).
    let mut pending: HashMap<u64, Instant> = HashMap::with_capacity(plan.inflight * 2);
    // Clients start their schedules staggered across one interval, not all at once.
    let first = plan.t0 + plan.interval_ns.map_or(Duration::ZERO, |iv| Duration::from_nanos(iv / plan.clients as u64 * k as u64));
    tokio::time::sleep_until(tokio::time::Instant::from_std(plan.t0)).await;
    let mut n: u64 = 0;
    loop {
        let now = Instant::now();
        if now >= plan.drain_deadline || (now >= plan.end && pending.is_empty()) {
            break;
        }
        // Send everything that is due while a slot is free.
        let mut next_send = None;
        while pending.len() < plan.inflight {
            let now = Instant::now();
            if now >= plan.end {
                break;
            }
            let scheduled = match plan.interval_ns {
                None => now,
                Some(iv) => first + Duration::from_nanos(iv.saturating_mul(n)),
            };
            if scheduled >= plan.end {
                break;
            }
            if scheduled > now {
                next_send = Some(scheduled);
                break;
            }
            let payload = match (plan.holds, n % 2) {
                (false, _) => format!(
                    r#"{{"id":"{prefix}{n}","op":"transfer","debit":"wallet:k{k}","credit":"merchant:k{k}","amount":"0.01","asset":"EUR"}}"#
                ),
                // Commands of one client are taken in order: the post follows its hold.
                (true, 0) => format!(
                    r#"{{"id":"{prefix}{n}","op":"hold","debit":"wallet:k{k}","credit":"merchant:k{k}","amount":"0.02","asset":"EUR"}}"#
                ),
                (true, _) => format!(r#"{{"id":"{prefix}{n}","op":"post","pending_id":"{prefix}{}","amount":"0.01"}}"#, n - 1),
            };
            if client.publish(topic.clone(), QoS::AtLeastOnce, false, payload).await.is_err() {
                stats.errors += 1;
                stats.unanswered = pending.len() as u64;
                return stats;
            }
            pending.insert(n, scheduled);
            n += 1;
            stats.sent += 1;
        }
        // Sleep until a reply comes, the next send is due, or the window/drain ends.
        let wake = match next_send {
            Some(at) => at,
            None if Instant::now() < plan.end => plan.end,
            None => plan.drain_deadline,
        };
        match tokio::time::timeout_at(tokio::time::Instant::from_std(wake), replies.recv()).await {
            Ok(Some(reply)) => {
                stats.take(reply, &prefix, &mut pending, &plan);
                while let Ok(reply) = replies.try_recv() {
                    stats.take(reply, &prefix, &mut pending, &plan);
                }
            }
            Ok(None) => {
                stats.errors += 1;
                break;
            }
            Err(_) => {}
        }
    }
    stats.unanswered = pending.len() as u64;
    stats
}

/// Setup, then the measured workload against the broker at host:port.
async fn run_workload(name: &str, host: &str, port: u16, opts: &MqttOpts, run: &str) -> Result<ClientStats, String> {
    println!("{name}: setting up {} clients against {host}:{port}", opts.clients);
    setup_accounts(host, port, opts.clients, run).await?;
    let mut conns = Vec::with_capacity(opts.clients);
    for k in 0..opts.clients {
        conns.push(connect(host, port, &format!("bench-{k}"), opts.inflight).await?);
    }
    let interval_ns = opts.rate.map(|r| ((1_000_000_000u128 * opts.clients as u128) / r as u128).max(1) as u64);
    // A moment for every task to be spawned and waiting before the clock starts.
    let t0 = Instant::now() + Duration::from_millis(200);
    let warm_end = t0 + WARMUP;
    let end = warm_end + Duration::from_secs(opts.seconds);
    let plan = Plan {
        clients: opts.clients,
        inflight: opts.inflight,
        interval_ns,
        t0,
        warm_end,
        end,
        drain_deadline: end + DRAIN,
        holds: opts.holds,
    };
    println!("{name}: {WARMUP:?} warm-up, then measuring {} s", opts.seconds);
    let mut drivers = Vec::with_capacity(opts.clients);
    let mut workers = Vec::with_capacity(opts.clients);
    for (k, conn) in conns.into_iter().enumerate() {
        drivers.push(conn.driver.abort_handle());
        workers.push(tokio::spawn(run_client(k, conn, plan, run.to_string())));
    }
    let mut total = ClientStats::new();
    for worker in workers {
        total.merge(worker.await.map_err(|e| format!("client task failed: {e}"))?);
    }
    for driver in drivers {
        driver.abort();
    }
    Ok(total)
}

/// The baseline: a bare rumqttd broker with the node's broker config, whose local link
/// answers every command `committed`/`ok` at once. It parses each payload's JSON, as the node
/// must, but books nothing and writes nothing.
struct Echo {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

fn start_echo() -> Result<Echo, String> {
    let port = harness::free_port();
    let mut node_config = config::NodeConfig::embedded_default();
    node_config.mqtt.listen_v4 = Some(SocketAddr::from(([127, 0, 0, 1], port)));
    let broker_config = broker::broker_config(&node_config).map_err(|e| format!("echo broker config: {e}"))?;
    let mut mqtt = broker::Broker::new(broker_config);
    let (mut link_tx, link_rx) = mqtt.link("echo").map_err(|e| format!("echo broker link: {e}"))?;
    // rumqttd's start() blocks for the broker's lifetime and has no stop; the thread ends
    // with the process.
    std::thread::Builder::new()
        .name("echo-broker".into())
        .spawn(move || {
            if let Err(e) = mqtt.start() {
                eprintln!("echo broker stopped: {e}");
            }
        })
        .map_err(|e| e.to_string())?;
    link_tx.subscribe(broker::COMMAND_FILTER).map_err(|e| format!("echo broker link: {e}"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + REPLY_DEADLINE;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("echo broker did not listen on {addr} within {REPLY_DEADLINE:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread =
        std::thread::Builder::new().name("echo".into()).spawn(move || echo_loop(link_tx, link_rx, flag)).map_err(|e| e.to_string())?;
    Ok(Echo { port, stop, thread })
}

/// Answers commands until `stop`; returns how many commands the broker dropped before we read
/// them (cursor jumps, as the node's intake watches for).
fn echo_loop(mut link_tx: rumqttd::local::LinkTx, mut link_rx: rumqttd::local::LinkRx, stop: Arc<AtomicBool>) -> u64 {
    let mut lost = 0u64;
    let mut last_cursor: Option<(u64, u64)> = None;
    while !stop.load(Ordering::Relaxed) {
        // A short deadline so that the stop flag is seen promptly.
        match link_rx.recv_deadline(Instant::now() + Duration::from_millis(200)) {
            Ok(Some(rumqttd::Notification::Forward(forward))) => {
                if let (Some(c), Some(last)) = (forward.cursor, last_cursor) {
                    if c.0 == last.0 && c.1 > last.1 + 1 {
                        lost += c.1 - last.1 - 1;
                    }
                }
                if forward.cursor.is_some() {
                    last_cursor = forward.cursor;
                }
                let Ok(topic) = std::str::from_utf8(&forward.publish.topic) else { continue };
                let Some(device) = broker::device_of(topic) else { continue };
                let id = serde_json::from_slice::<Value>(&forward.publish.payload).ok().and_then(|v| v["id"].as_str().map(str::to_string));
                let Some(id) = id else { continue };
                let reply = json!({"id": id, "status": "committed", "code": "ok"}).to_string();
                if link_tx.publish(broker::reply_topic(device), reply.into_bytes()).is_err() {
                    break;
                }
            }
            // The router paused this link because its buffer filled; we have drained it.
            Ok(Some(rumqttd::Notification::Unschedule)) => {
                if link_rx.ready().is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(rumqttd::local::LinkError::RecvTimeout(_)) => {}
            Err(_) => break,
        }
    }
    lost
}

/// Throughput and latency of one side, for printing.
struct Summary {
    tps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

fn summarize(name: &str, stats: &ClientStats, seconds: u64) -> Summary {
    let ms = |micros: u64| micros as f64 / 1000.0;
    let h = &stats.hist;
    let s = Summary {
        tps: stats.committed as f64 / seconds as f64,
        p50_ms: ms(h.value_at_quantile(0.50)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    };
    println!(
        "{name:>6}: {:>10.0} committed/s   p50 {:.2} ms   p99 {:.2} ms   p99.9 {:.2} ms   max {:.2} ms",
        s.tps, s.p50_ms, s.p99_ms, s.p999_ms, s.max_ms
    );
    println!(
        "        sent {}, committed in window {}, late {}, unanswered {}, client errors {}",
        stats.sent, stats.committed, stats.late, stats.unanswered, stats.errors
    );
    if !stats.others.is_empty() {
        let others: Vec<String> = stats.others.iter().map(|(label, n)| format!("{label}={n}")).collect();
        println!("        other replies in window: {}", others.join(", "));
    }
    s
}

fn run_mqtt(runtime: &tokio::runtime::Runtime, opts: &MqttOpts) -> Result<(), String> {
    // Ids unique per run, so that a node reached with --connect never answers `duplicate`.
    let run = format!("r{}", now_ms());
    let rate = opts.rate.map_or("unlimited".to_string(), |r| r.to_string());
    println!("mqtt: clients={} inflight={} seconds={} rate={rate} (warm-up {WARMUP:?})", opts.clients, opts.inflight, opts.seconds);

    let ledger_stats = if opts.ledger {
        let (node, host, port) = match &opts.connect {
            Some((host, port)) => (None, host.clone(), *port),
            None if opts.tls => {
                let pki = harness::TestPki::new(&["test/edge-1"]);
                let files = pki.files("test/edge-1");
                let client = harness::tls_client(&files.ca)?;
                TLS_CLIENT.set(std::sync::Arc::new(client)).map_err(|_| "TLS client set twice".to_string())?;
                let node = harness::NodeProcess::start(harness::NodeOptions { mqtt_tls: Some(files), ..harness::NodeOptions::default() });
                let port = node.port_tls.expect("a TLS listener");
                // The node read its certificate at start; the PKI directory can go.
                drop(pki);
                (Some(node), "127.0.0.1".to_string(), port)
            }
            None => {
                let node = harness::NodeProcess::start(harness::NodeOptions::default());
                let port = node.port;
                (Some(node), "127.0.0.1".to_string(), port)
            }
        };
        let result = runtime.block_on(run_workload("ledger", &host, port, opts, &run));
        if let (Err(_), Some(node)) = (&result, &node) {
            eprintln!("ledger-node log:\n{}", node.log());
        }
        // Stop the node before the echo runs, so that the two never share the CPU.
        drop(node);
        Some(result?)
    } else {
        None
    };

    let echo_stats = if opts.echo {
        let echo = start_echo()?;
        let result = runtime.block_on(run_workload("echo", "127.0.0.1", echo.port, opts, &run));
        echo.stop.store(true, Ordering::Relaxed);
        let lost = echo.thread.join().map_err(|_| "echo thread panicked".to_string())?;
        if lost > 0 {
            println!("echo: the broker dropped {lost} commands before the echo read them");
        }
        Some(result?)
    } else {
        None
    };

    println!();
    let ledger = ledger_stats.as_ref().map(|s| summarize("ledger", s, opts.seconds));
    let echo = echo_stats.as_ref().map(|s| summarize("echo", s, opts.seconds));
    let ratio = match (&ledger, &echo) {
        (Some(l), Some(e)) if e.tps > 0.0 => Some(l.tps / e.tps),
        _ => None,
    };
    if let Some(r) = ratio {
        println!("ratio ledger/echo = {r:.2}");
    }

    let na = || "na".to_string();
    let f0 = |v: Option<f64>| v.map_or_else(na, |v| format!("{v:.0}"));
    let f2 = |v: Option<f64>| v.map_or_else(na, |v| format!("{v:.2}"));
    // The headline latencies are the ledger's, or the echo's when only the echo ran.
    let headline = ledger.as_ref().or(echo.as_ref());
    println!(
        "RESULT mqtt clients={} inflight={} seconds={} rate={rate} ledger_tps={} echo_tps={} ratio={} \
         p50_ms={} p99_ms={} p999_ms={} max_ms={} echo_p50_ms={} echo_p99_ms={} echo_p999_ms={}",
        opts.clients,
        opts.inflight,
        opts.seconds,
        f0(ledger.as_ref().map(|s| s.tps)),
        f0(echo.as_ref().map(|s| s.tps)),
        f2(ratio),
        f2(headline.map(|s| s.p50_ms)),
        f2(headline.map(|s| s.p99_ms)),
        f2(headline.map(|s| s.p999_ms)),
        f2(headline.map(|s| s.max_ms)),
        f2(echo.as_ref().map(|s| s.p50_ms)),
        f2(echo.as_ref().map(|s| s.p99_ms)),
        f2(echo.as_ref().map(|s| s.p999_ms)),
    );
    Ok(())
}
