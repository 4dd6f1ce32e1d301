//! `ledger-bench soak`: an edge driven over MQTT until it has taken N transfers, its RSS and
//! file sampled every second (its length, and the blocks it takes on disk: redb grows the
//! file ahead of use, and what is not written yet takes none); then SIGKILL, and the time
//! until the restarted node answers a command. Prints the figures and draws RSS, file
//! length and disk against transfers in an SVG.

use super::{run_workload, MqttOpts};
use harness::{cmd, Device, NodeOptions, NodeProcess};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct SoakOpts {
    pub transfers: u64,
    pub id_cache: Option<usize>,
    /// The node's `ledger.resolved_hold_cache_entries`.
    pub hold_cache: Option<usize>,
    /// Holds and their posts instead of transfers.
    pub holds: bool,
    pub svg: String,
}

pub fn parse(args: &[String]) -> Result<SoakOpts, String> {
    let mut opts = SoakOpts { transfers: 2_000_000, id_cache: None, hold_cache: None, holds: false, svg: "soak.svg".to_string() };
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--holds" {
            opts.holds = true;
            i += 1;
            continue;
        }
        let value = args.get(i + 1).ok_or_else(|| format!("{} needs a value", args[i]))?;
        match args[i].as_str() {
            "--transfers" => opts.transfers = value.parse().map_err(|_| format!("--transfers: {value:?} is not a whole number"))?,
            "--id-cache" => opts.id_cache = Some(value.parse().map_err(|_| format!("--id-cache: {value:?} is not a whole number"))?),
            "--hold-cache" => opts.hold_cache = Some(value.parse().map_err(|_| format!("--hold-cache: {value:?} is not a whole number"))?),
            "--svg" => opts.svg = value.clone(),
            other => return Err(format!("soak: unknown option {other}")),
        }
        i += 2;
    }
    Ok(opts)
}

/// One sample: transfers committed (the journal head), RSS, file length and the file's
/// blocks on disk, in bytes.
#[derive(Debug, Clone, Copy)]
struct Sample {
    head: u64,
    rss: u64,
    file: u64,
    disk: u64,
}

/// Longest one stretch of load runs before the soak looks at the head again.
const STRETCH_S: u64 = 20;

pub fn run(opts: &SoakOpts) -> Result<(), String> {
    let metrics = harness::free_port();
    let mut ledger_toml = opts.id_cache.map_or(String::new(), |n| format!("id_cache_entries = {n}\n"));
    if let Some(n) = opts.hold_cache {
        ledger_toml.push_str(&format!("resolved_hold_cache_entries = {n}\n"));
    }
    let extra_toml = format!("[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n");
    let node = Arc::new(Mutex::new(NodeProcess::start(NodeOptions { ledger_toml, extra_toml, ..NodeOptions::default() })));
    let port = node.lock().expect("node").port;
    let db = node.lock().expect("node").db_path();
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (node, samples, stop) = (node.clone(), samples.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let head = journal_head(metrics);
                let rss = node.lock().expect("node").rss_bytes();
                let (file, disk) = ledger::store::file_sizes(&db).unwrap_or_default();
                samples.lock().expect("samples").push(Sample { head, rss, file, disk });
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut stretch = 0;
    while journal_head(metrics) < opts.transfers {
        let mqtt = MqttOpts {
            clients: 32,
            inflight: 16,
            seconds: STRETCH_S,
            rate: None,
            connect: Some(("127.0.0.1".to_string(), port)),
            ledger: true,
            echo: false,
            tls: false,
            holds: opts.holds,
        };
        let run = format!("soak{stretch}-{}", broker::random_hex(4));
        runtime.block_on(run_workload("soak", "127.0.0.1", port, &mqtt, &run))?;
        stretch += 1;
        eprintln!("soak: {} transfers after {:.0} s", journal_head(metrics), started.elapsed().as_secs_f64());
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().map_err(|_| "sampler thread panicked".to_string())?;
    let samples = samples.lock().expect("samples").clone();

    // SIGKILL, restart, and time until a command is answered.
    let restarted = Instant::now();
    node.lock().expect("node").restart();
    let answered = runtime.block_on(async {
        let device = Device::connect(port, "soak-after-restart").await;
        device.request(cmd::balance("soak-restart-read", "issuer:eur")).await
    });
    let restart = restarted.elapsed();
    if answered["status"] != "committed" {
        return Err(format!("the restarted node answered {answered}"));
    }
    report(opts, &samples, restart)?;
    // Where the disk goes: the node is stopped, and the file read table by table.
    let mut node = node.lock().expect("node");
    node.kill9();
    report_tables(&node.db_path(), samples.last().map_or(1, |s| s.head.max(1)))
}

/// Each table's rows, stored bytes and pages, per transfer.
fn report_tables(db: &std::path::Path, transfers: u64) -> Result<(), String> {
    let (store, _) = ledger::store::Store::open_existing(db).map_err(|e| e.to_string())?;
    let mut tables = store.table_bytes().map_err(|e| e.to_string())?;
    tables.sort_by_key(|t| std::cmp::Reverse(t.pages));
    let per = |bytes: u64| bytes as f64 / transfers as f64;
    for t in tables.iter().filter(|t| t.pages > 0) {
        println!(
            "soak: table {:<28} {:>10} rows, stored {:>7.1} B/transfer, pages {:>7.1} B/transfer ({} leaf, {} branch)",
            t.name,
            t.rows,
            per(t.stored),
            per(t.pages),
            t.leaf_pages,
            t.branch_pages
        );
    }
    Ok(())
}

fn journal_head(metrics_port: u16) -> u64 {
    let text = harness::http_get(metrics_port, "/metrics");
    text.lines().find_map(|l| l.strip_prefix("edgeledger_journal_head_seq ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// The last sample at or before `head` transfers.
fn at(samples: &[Sample], head: u64) -> Option<Sample> {
    samples.iter().rev().find(|s| s.head <= head).copied()
}

fn report(opts: &SoakOpts, samples: &[Sample], restart: Duration) -> Result<(), String> {
    let last = *samples.last().ok_or("no samples")?;
    let first_million = at(samples, 1_000_000).filter(|s| s.head > 500_000);
    let per_transfer = |a: Sample, b: Sample, f: fn(&Sample) -> u64| (f(&b) as f64 - f(&a) as f64) / (b.head - a.head).max(1) as f64;
    println!("soak: {} transfers, {} samples; restart to an answer {:.2} s", last.head, samples.len(), restart.as_secs_f64());
    if let Some(m) = first_million {
        println!(
            "soak: RSS {:.0} MiB at {} transfers, {:.0} MiB at {}: {:.1} bytes per transfer between; file {:.1} and disk {:.1} bytes per transfer between",
            m.rss as f64 / 1048576.0,
            m.head,
            last.rss as f64 / 1048576.0,
            last.head,
            per_transfer(m, last, |s| s.rss),
            per_transfer(m, last, |s| s.file),
            per_transfer(m, last, |s| s.disk),
        );
    }
    // The second half of the run: the bounded buffers have long filled up.
    if let Some(half) = at(samples, last.head / 2).filter(|s| s.head > last.head / 4) {
        println!(
            "soak: RSS {:.0} MiB at {} transfers: {:.1} bytes per transfer from there to the end",
            half.rss as f64 / 1048576.0,
            half.head,
            per_transfer(half, last, |s| s.rss)
        );
    }
    let overall = |bytes: u64| bytes as f64 / last.head.max(1) as f64;
    println!(
        "soak: file {:.0} MiB, {:.0} bytes per transfer overall; on disk {:.0} MiB, {:.0} bytes per transfer",
        last.file as f64 / 1048576.0,
        overall(last.file),
        last.disk as f64 / 1048576.0,
        overall(last.disk)
    );
    println!(
        "RESULT soak transfers={} rss_mib={:.0} file_mib={:.0} disk_mib={:.0} restart_ms={}",
        last.head,
        last.rss as f64 / 1048576.0,
        last.file as f64 / 1048576.0,
        last.disk as f64 / 1048576.0,
        restart.as_millis()
    );
    std::fs::write(&opts.svg, svg(samples)).map_err(|e| format!("{}: {e}", opts.svg))?;
    println!("soak: picture in {}", opts.svg);
    Ok(())
}

/// RSS and file size (MiB) against transfers, as two polylines on one chart.
fn svg(samples: &[Sample]) -> String {
    let (w, h, margin) = (800.0, 400.0, 60.0);
    let max_x = samples.iter().map(|s| s.head).max().unwrap_or(1).max(1) as f64;
    let max_y = samples.iter().map(|s| s.rss.max(s.file).max(s.disk)).max().unwrap_or(1).max(1) as f64 / 1048576.0;
    let point = |x: u64, y: u64| {
        let px = margin + (x as f64 / max_x) * (w - 2.0 * margin);
        let py = h - margin - (y as f64 / 1048576.0 / max_y) * (h - 2.0 * margin);
        format!("{px:.1},{py:.1}")
    };
    let line = |f: fn(&Sample) -> u64| samples.iter().map(|s| point(s.head, f(s))).collect::<Vec<_>>().join(" ");
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<line x1="{margin}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/>
<line x1="{margin}" y1="{margin}" x2="{margin}" y2="{b}" stroke="black"/>
<text x="{cx}" y="{tx}" text-anchor="middle">transfers (0 to {max_x:.0})</text>
<text x="12" y="{cy}" transform="rotate(-90 12 {cy})" text-anchor="middle">MiB (0 to {max_y:.0})</text>
<polyline fill="none" stroke="#c0392b" stroke-width="2" points="{rss}"/>
<polyline fill="none" stroke="#2980b9" stroke-width="2" points="{file}"/>
<polyline fill="none" stroke="#27ae60" stroke-width="2" points="{disk}"/>
<text x="{lx}" y="{margin}" fill="#c0392b">RSS</text>
<text x="{lx}" y="{ly}" fill="#2980b9">redb file</text>
<text x="{lx}" y="{ly2}" fill="#27ae60">on disk</text>
</svg>
"##,
        b = h - margin,
        r = w - margin,
        cx = w / 2.0,
        tx = h - 20.0,
        cy = h / 2.0,
        lx = w - margin - 70.0,
        ly = margin + 16.0,
        ly2 = margin + 32.0,
        rss = line(|s| s.rss),
        file = line(|s| s.file),
        disk = line(|s| s.disk),
    );
    out
}
