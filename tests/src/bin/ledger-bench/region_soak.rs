//! `ledger-bench soak-region`: a region following E edges (plain TCP on loopback), each
//! driven over MQTT, until the region's replicas hold N entries in all; the region's RSS
//! and file sampled every second; then the region is SIGKILLed and timed until it answers
//! its status with every replica back at the entry it had.

use super::{run_workload, MqttOpts};
use harness::{ask, free_port, operator_session, NodeOptions, NodeProcess};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct RegionSoakOpts {
    pub entries: u64,
    pub edges: usize,
}

pub fn parse(args: &[String]) -> Result<RegionSoakOpts, String> {
    let mut opts = RegionSoakOpts { entries: 2_000_000, edges: 8 };
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).ok_or_else(|| format!("{} needs a value", args[i]))?;
        let number = |name: &str| value.parse::<u64>().map_err(|_| format!("{name}: {value:?} is not a whole number"));
        match args[i].as_str() {
            "--entries" => opts.entries = number("--entries")?,
            "--edges" => opts.edges = usize::try_from(number("--edges")?).map_err(|e| e.to_string())?.clamp(1, 32),
            other => return Err(format!("soak-region: unknown option {other}")),
        }
        i += 2;
    }
    Ok(opts)
}

/// Clients per edge: 32 in all, as in `soak`.
const CLIENTS: usize = 32;
/// Longest one stretch of load runs before the soak looks at the replicas again.
const STRETCH_S: u64 = 20;
/// How long the restarted region may take to answer with every replica where it was.
const RESTART_DEADLINE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy)]
struct Sample {
    entries: u64,
    rss: u64,
    disk: u64,
}

pub fn run(opts: &RegionSoakOpts) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let zenoh_port = free_port();
    let names: Vec<String> = (1..=opts.edges).map(|k| format!("eu/soak-{k}")).collect();
    let listed: Vec<String> = names.iter().map(|e| format!("\"{e}\"")).collect();
    let region = Arc::new(Mutex::new(NodeProcess::start(NodeOptions {
        node_id: Some("eu".into()),
        region_zenoh_port: Some(zenoh_port),
        extra_toml: format!(
            "[zenoh]\nlisten = [\"tcp/127.0.0.1:{zenoh_port}\"]\ninsecure_plaintext = true\n\n[replication]\nedges = [{}]\n",
            listed.join(", ")
        ),
        ..NodeOptions::default()
    })));
    let edges: Vec<NodeProcess> = names
        .iter()
        .map(|name| {
            NodeProcess::start(NodeOptions {
                node_id: Some(name.clone()),
                extra_toml: format!("[zenoh]\nconnect = [\"tcp/127.0.0.1:{zenoh_port}\"]\ninsecure_plaintext = true\n"),
                ..NodeOptions::default()
            })
        })
        .collect();
    eprintln!("soak-region: region eu and {} edges up", edges.len());
    let ops = runtime.block_on(operator_session(zenoh_port));
    let replicated = |ops: &harness::Ops| runtime.block_on(replica_seqs(ops));
    let db = region.lock().expect("region").db_path();
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let (region, samples, stop, total) = (region.clone(), samples.clone(), stop.clone(), total.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let rss = region.lock().expect("region").rss_bytes();
                let (_, disk) = ledger::store::file_sizes(&db).unwrap_or_default();
                samples.lock().expect("samples").push(Sample { entries: total.load(Ordering::Relaxed), rss, disk });
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    let started = Instant::now();
    let mut stretch = 0;
    loop {
        let seqs = replicated(&ops);
        total.store(seqs.iter().sum(), Ordering::Relaxed);
        if total.load(Ordering::Relaxed) >= opts.entries {
            break;
        }
        // Each edge's load runs at the same time as the others'.
        let loads: Vec<_> = edges
            .iter()
            .enumerate()
            .map(|(k, edge)| {
                let (port, clients) = (edge.port, (CLIENTS / edges.len()).max(1));
                let run = format!("rs{stretch}e{k}-{}", broker::random_hex(4));
                runtime.spawn(async move {
                    let opts = MqttOpts {
                        clients,
                        inflight: 16,
                        seconds: STRETCH_S,
                        rate: None,
                        connect: Some(("127.0.0.1".to_string(), port)),
                        ledger: true,
                        echo: false,
                        tls: false,
                        holds: false,
                    };
                    run_workload("soak-region", "127.0.0.1", port, &opts, &run).await.map(|_| ())
                })
            })
            .collect();
        for load in loads {
            runtime.block_on(load).map_err(|e| format!("an edge's load failed: {e}"))??;
        }
        stretch += 1;
        eprintln!("soak-region: {} entries replicated after {:.0} s", total.load(Ordering::Relaxed), started.elapsed().as_secs_f64());
    }
    // Let the replicas reach the edges' heads, then stop sampling.
    let settled = runtime.block_on(settle(&ops))?;
    total.store(settled.iter().sum(), Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    sampler.join().map_err(|_| "sampler thread panicked".to_string())?;

    let restarted = Instant::now();
    region.lock().expect("region").restart();
    let back = runtime.block_on(async {
        let deadline = Instant::now() + RESTART_DEADLINE;
        loop {
            let ops = operator_session(zenoh_port).await;
            if replica_seqs(&ops).await == settled {
                return Ok(restarted.elapsed());
            }
            if Instant::now() > deadline {
                return Err(format!("the restarted region did not show its replicas at {settled:?} within {RESTART_DEADLINE:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })?;
    let samples = samples.lock().expect("samples").clone();
    report(&samples, &settled, back)
}

/// Every replica's head as the region reports it, in edge order.
async fn replica_seqs(ops: &harness::Ops) -> Vec<u64> {
    let Some(status) = ask(ops, "ledger/v1/status/eu").await else { return Vec::new() };
    let mut edges: Vec<(String, u64)> = status["edges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (e["edge"].as_str().unwrap_or_default().to_string(), e["seq"].as_u64().unwrap_or(0)))
        .collect();
    edges.sort();
    edges.into_iter().map(|(_, seq)| seq).collect()
}

/// Waits until the replicas stop moving (every edge's journal is in).
async fn settle(ops: &harness::Ops) -> Result<Vec<u64>, String> {
    let mut last = replica_seqs(ops).await;
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = replica_seqs(ops).await;
        if now == last && !now.is_empty() {
            return Ok(now);
        }
        last = now;
    }
    Err("the replicas kept moving for 5 minutes after the load stopped".to_string())
}

fn report(samples: &[Sample], settled: &[u64], restart: Duration) -> Result<(), String> {
    let last = *samples.last().ok_or("no samples")?;
    let entries: u64 = settled.iter().sum();
    println!(
        "soak-region: {} edges, {entries} entries replicated; restart to every replica back {:.2} s",
        settled.len(),
        restart.as_secs_f64()
    );
    if let Some(m) = samples.iter().rev().find(|s| s.entries <= 1_000_000 && s.entries > 500_000).copied() {
        let per = |f: fn(&Sample) -> u64| (f(&last) as f64 - f(&m) as f64) / (last.entries - m.entries).max(1) as f64;
        println!(
            "soak-region: RSS {:.0} MiB at {} entries, {:.0} MiB at {}: {:.1} bytes per entry between; disk {:.1} bytes per entry between",
            m.rss as f64 / 1048576.0,
            m.entries,
            last.rss as f64 / 1048576.0,
            last.entries,
            per(|s| s.rss),
            per(|s| s.disk)
        );
    }
    println!(
        "RESULT soak-region edges={} entries={entries} rss_mib={:.0} disk_mib={:.0} restart_ms={}",
        settled.len(),
        last.rss as f64 / 1048576.0,
        last.disk as f64 / 1048576.0,
        restart.as_millis()
    );
    Ok(())
}
