//! `ledger-bench cross`: cross-region payments on the 2 regions x 2 edges topology (real
//! processes on loopback, the release `ledger-node` next to this binary). Devices on
//! eu/berlin-1 pay an account on us/nyc-1; latency is from the command to the `pending`
//! reply and to the `pending_resolved` notice.
//!
//! - Closed loop (default): each device sends, waits for its notice, then sends the next.
//! - Paced (`--rate R`): R payments/s in all, each device on its own schedule whatever
//!   the answers; latency counts from the scheduled send time, so a stall shows in full.

use harness::{cmd, Device};
use hdrhistogram::Histogram;
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Longest a payment may wait for its notice before the run fails.
const NOTICE_DEADLINE: Duration = Duration::from_secs(60);

pub struct CrossOpts {
    pub devices: usize,
    pub count: usize,
    /// Payments per second in all (paced); None: closed loop.
    pub rate: Option<u64>,
    /// Plain TCP between nodes instead of mutual TLS with access control.
    pub plaintext: bool,
}

pub fn parse(args: &[String]) -> Result<CrossOpts, String> {
    let mut opts = CrossOpts { devices: 1, count: 200, rate: None, plaintext: false };
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--plaintext" {
            opts.plaintext = true;
            i += 1;
            continue;
        }
        let value = args.get(i + 1).ok_or_else(|| format!("{} needs a value", args[i]))?;
        let number: usize = value.parse().map_err(|_| format!("{}: {value:?} is not a whole number", args[i]))?;
        match args[i].as_str() {
            "--devices" => opts.devices = number.clamp(1, 256),
            "--count" => opts.count = number.max(1),
            "--rate" if number == 0 => return Err("--rate must be at least 1".to_string()),
            "--rate" => opts.rate = Some(number as u64),
            other => return Err(format!("cross: unknown option {other}")),
        }
        i += 2;
    }
    Ok(opts)
}

pub fn run(opts: &CrossOpts) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(run_async(opts))
}

/// One payment's latencies, to the `pending` reply and to the final notice, and when it
/// was (to be) sent.
struct Sample {
    pending: Duration,
    complete: Duration,
    sent: Instant,
}

/// Sends in the first second are also left out of one figure: connections and memory are
/// new there, and a short run's tail can be all warm-up.
const WARM_UP: Duration = Duration::from_secs(1);

async fn run_async(opts: &CrossOpts) -> Result<(), String> {
    let mut topology = if opts.plaintext { harness::Topology::start_plaintext() } else { harness::Topology::start() };
    let nyc = Device::connect(topology.edge("us/nyc-1").port, "nyc-setup").await;
    nyc.request(cmd::open("o-m", "merchant:cafe", "EUR", &[])).await;
    let berlin_port = topology.edge("eu/berlin-1").port;
    let setup = Device::connect(berlin_port, "setup").await;
    setup.request(cmd::open("o-issuer", "issuer", "EUR", &["issuance"])).await;
    let mut devices = Vec::new();
    for k in 0..opts.devices {
        setup.request(cmd::open(&format!("o-w{k}"), &format!("wallet:{k}"), "EUR", &[])).await;
        setup.request(cmd::transfer(&format!("f{k}"), "issuer", &format!("wallet:{k}"), "1000000.00", "EUR")).await;
        devices.push(Device::connect(berlin_port, &format!("pay-{k}")).await);
    }
    eprintln!("cross: {} devices funded; paying", opts.devices);
    let started = Instant::now();
    // Paced: device k starts k/D of an interval in, then every D/R seconds.
    let interval = opts.rate.map(|r| Duration::from_secs_f64(opts.devices as f64 / r as f64));
    let mut tasks = Vec::new();
    let n = opts.devices as f64;
    for (k, device) in devices.into_iter().enumerate() {
        let count = opts.count;
        tasks.push(tokio::spawn(async move {
            match interval {
                None => closed_loop(device, k, count).await,
                Some(every) => paced(device, k, count, started + every.mul_f64(k as f64 / n), every).await,
            }
        }));
    }
    let mut pending = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).map_err(|e| e.to_string())?;
    let mut complete = pending.clone();
    let mut after_warm_up = pending.clone();
    for task in tasks {
        for sample in task.await.map_err(|e| e.to_string())?? {
            pending.record(sample.pending.as_micros().max(1) as u64).map_err(|e| e.to_string())?;
            complete.record(sample.complete.as_micros().max(1) as u64).map_err(|e| e.to_string())?;
            if sample.sent >= started + WARM_UP {
                after_warm_up.record(sample.complete.as_micros().max(1) as u64).map_err(|e| e.to_string())?;
            }
        }
    }
    let took = started.elapsed().as_secs_f64();
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    // A run shorter than the warm-up has no sample after it.
    let warm_p99 = if after_warm_up.is_empty() { "na".to_string() } else { format!("{:.2}", ms(&after_warm_up, 0.99)) };
    let rate = opts.rate.map_or("unlimited".to_string(), |r| r.to_string());
    println!(
        "cross: {} devices x {} transfers eu/berlin-1 -> us/nyc-1, rate {rate}, in {took:.1} s ({:.0} completed/s): pending reply p50 {:.2} ms p99 {:.2} ms; final notice p50 {:.2} ms p99 {:.2} ms max {:.2} ms; sent after the first second: final notice p99 {warm_p99} ms",
        opts.devices,
        opts.count,
        complete.len() as f64 / took,
        ms(&pending, 0.5),
        ms(&pending, 0.99),
        ms(&complete, 0.5),
        ms(&complete, 0.99),
        complete.max() as f64 / 1000.0,
    );
    println!(
        "RESULT cross devices={} count={} rate={rate} completed_per_s={:.0} pending_p50_ms={:.2} final_p50_ms={:.2} final_p99_ms={:.2} final_p99_after_1s_ms={warm_p99}",
        opts.devices,
        opts.count,
        complete.len() as f64 / took,
        ms(&pending, 0.5),
        ms(&complete, 0.5),
        ms(&complete, 0.99),
    );
    Ok(())
}

fn transfer(k: usize, i: usize) -> (String, Value) {
    let id = format!("x{k}-{i}");
    let command = cmd::transfer(&id, &format!("wallet:{k}"), "merchant:cafe@us/nyc-1", "0.01", "EUR");
    (id, command)
}

/// Each payment after the previous one's notice.
async fn closed_loop(mut device: Device, k: usize, count: usize) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let (id, command) = transfer(k, i);
        let started = Instant::now();
        let reply = device.request(command).await;
        if reply["status"] != "pending" {
            return Err(format!("{id}: {reply}"));
        }
        let pending = started.elapsed();
        let notice = device.next_unsolicited(NOTICE_DEADLINE).await.ok_or(format!("{id}: no notice within 60 s"))?;
        if notice["pending_id"] != id.as_str() || notice["resolution"] != "posted" {
            return Err(format!("{id}: unexpected notice {notice}"));
        }
        samples.push(Sample { pending, complete: started.elapsed(), sent: started });
    }
    Ok(samples)
}

/// Payments on a schedule from `first`, one every `every`, whatever the answers; replies
/// and notices are read as they come.
async fn paced(mut device: Device, k: usize, count: usize, first: Instant, every: Duration) -> Result<Vec<Sample>, String> {
    let mut scheduled: HashMap<String, (Instant, Option<Duration>)> = HashMap::with_capacity(count);
    let mut samples = Vec::with_capacity(count);
    let mut sent = 0;
    while samples.len() < count {
        let next_send = (sent < count).then(|| first + every.mul_f64(sent as f64));
        let wait = next_send.map_or(NOTICE_DEADLINE, |at| at.saturating_duration_since(Instant::now()));
        if wait.is_zero() {
            let (id, command) = transfer(k, sent);
            scheduled.insert(id, (next_send.expect("a send is due"), None));
            device.publish(serde_json::to_vec(&command).expect("a command serializes")).await;
            sent += 1;
            continue;
        }
        let Some(message) = device.next_unsolicited(wait).await else {
            if next_send.is_none() {
                return Err(format!("pay-{k}: {} notices missing after {NOTICE_DEADLINE:?}", count - samples.len()));
            }
            continue;
        };
        if let Some(id) = message["pending_id"].as_str() {
            let (at, pending) = scheduled.remove(id).ok_or(format!("pay-{k}: a notice for {id}, never sent"))?;
            if message["resolution"] != "posted" {
                return Err(format!("{id}: unexpected notice {message}"));
            }
            samples.push(Sample { pending: pending.unwrap_or_else(|| at.elapsed()), complete: at.elapsed(), sent: at });
        } else if let Some(id) = message["id"].as_str() {
            if message["status"] != "pending" {
                return Err(format!("{id}: {message}"));
            }
            if let Some((at, pending)) = scheduled.get_mut(id) {
                *pending = Some(at.elapsed());
            }
        }
    }
    Ok(samples)
}
