//! `ledger-bench geo`: replication between an edge and its region, real processes on
//! loopback (the release `ledger-node` binary next to this one).
//!
//! - Lag: devices pay at a steady rate through the edge; an operator session polls the
//!   region's status every `POLL`; an entry's lag is from the moment its reply reached the
//!   device (the commit) to the first poll that shows the replica at or past it. The poll
//!   interval bounds the resolution. Beside it, the lag to the durable copy: from the reply
//!   to the first acknowledgement the region publishes for the entry (it acks what it has
//!   stored durably, `ledger/v1/journal/<edge>/ack`), taken as it arrives, without polling.
//! - Drain: the link between edge and region is cut by a proxy for `--partition` seconds
//!   while payments go on; after healing, the backlog (edge head minus replica head at that
//!   moment) and the time until the replica reaches that head give entries/s.

use harness::{ask, cmd, free_port, operator_session, Device, NodeOptions, NodeProcess, TcpProxy};
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(2);
const DEVICES: usize = 16;
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(300);

pub struct GeoOpts {
    pub rate: u64,
    pub seconds: u64,
    pub partition_s: u64,
}

pub fn parse(args: &[String]) -> Result<GeoOpts, String> {
    let mut opts = GeoOpts { rate: 5_000, seconds: 10, partition_s: 60 };
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).ok_or_else(|| format!("{} needs a value", args[i]))?;
        let number: u64 = value.parse().map_err(|_| format!("{}: {value:?} is not a whole number", args[i]))?;
        match args[i].as_str() {
            "--rate" => opts.rate = number.max(1),
            "--seconds" => opts.seconds = number.max(1),
            "--partition" => opts.partition_s = number,
            other => return Err(format!("geo: unknown option {other}")),
        }
        i += 2;
    }
    Ok(opts)
}

/// Replies seen by the devices: (seq, when the reply arrived).
type Commits = Arc<Mutex<Vec<(u64, Instant)>>>;

pub fn run(opts: &GeoOpts) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(run_async(opts))
}

async fn run_async(opts: &GeoOpts) -> Result<(), String> {
    let zenoh_port = free_port();
    let _region = NodeProcess::start(NodeOptions {
        node_id: Some("eu".into()),
        region_zenoh_port: Some(zenoh_port),
        extra_toml: format!(
            "[zenoh]\nlisten = [\"tcp/127.0.0.1:{zenoh_port}\"]\ninsecure_plaintext = true\n\n[replication]\nedges = [\"eu/bench-1\"]\n"
        ),
        ..NodeOptions::default()
    });
    let proxy = TcpProxy::start(zenoh_port);
    let edge = NodeProcess::start(NodeOptions {
        node_id: Some("eu/bench-1".into()),
        extra_toml: format!("[zenoh]\nconnect = [\"tcp/127.0.0.1:{}\"]\ninsecure_plaintext = true\n", proxy.port),
        ..NodeOptions::default()
    });
    eprintln!("geo: region and edge up");
    let ops = operator_session(zenoh_port).await;
    eprintln!("geo: operator session open");

    let setup = Device::connect(edge.port, "setup").await;
    setup.request(cmd::open("o-issuer", "issuer", "EUR", &["issuance"])).await;
    let mut devices = Vec::new();
    for k in 0..DEVICES {
        setup.request(cmd::open(&format!("o-w{k}"), &format!("wallet:{k}"), "EUR", &[])).await;
        setup.request(cmd::open(&format!("o-m{k}"), &format!("merchant:{k}"), "EUR", &[])).await;
        setup.request(cmd::transfer(&format!("f{k}"), "issuer", &format!("wallet:{k}"), "1000000.00", "EUR")).await;
        devices.push(Arc::new(Device::connect(edge.port, &format!("pay-{k}")).await));
    }

    eprintln!("geo: {DEVICES} devices funded");
    // The region's acks as they arrive: (when, seq stored durably).
    let acks: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    let ack_subscriber = {
        let acks = acks.clone();
        ops.declare_subscriber(bridge::keys::journal_ack("eu/bench-1"))
            .callback(move |sample| {
                let at = Instant::now();
                let seq = serde_json::from_slice::<serde_json::Value>(&sample.payload().to_bytes()).ok().and_then(|v| v["seq"].as_u64());
                if let Some(seq) = seq {
                    acks.lock().unwrap().push((at, seq));
                }
            })
            .await
            .map_err(|e| format!("subscribing to the region's acks: {e}"))?
    };

    // The replica's head as the region reports it, polled for the whole run.
    let replica = Arc::new(AtomicU64::new(0));
    let polls: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (replica, polls, stop) = (replica.clone(), polls.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if let Some(status) = ask(&ops, "ledger/v1/status/eu").await {
                    if let Some(seq) = status["edges"][0]["seq"].as_u64() {
                        replica.store(seq, Ordering::SeqCst);
                        polls.lock().unwrap().push((Instant::now(), seq));
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        })
    };

    // Steady load: lag.
    let commits: Commits = Arc::new(Mutex::new(Vec::new()));
    let head = pay(&devices, opts.rate, Duration::from_secs(opts.seconds), "steady", &commits).await?;
    wait_for(&replica, head).await?;
    wait_for_ack(&acks, head).await?;
    let lag = lag_histogram(&commits.lock().unwrap(), &polls.lock().unwrap());
    let durable_lag = lag_histogram(&commits.lock().unwrap(), &acks.lock().unwrap());
    drop(ack_subscriber);
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "geo: steady {} payments/s for {} s: replication lag p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} entries, {} ms status polls); \
         to the region's durable ack p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        opts.rate,
        opts.seconds,
        ms(&lag, 0.5),
        ms(&lag, 0.99),
        lag.max() as f64 / 1000.0,
        lag.len(),
        POLL.as_millis(),
        ms(&durable_lag, 0.5),
        ms(&durable_lag, 0.99),
        durable_lag.max() as f64 / 1000.0,
    );

    // Partition, then drain.
    if opts.partition_s > 0 {
        proxy.cut();
        let before = replica.load(Ordering::SeqCst);
        let head = pay(&devices, opts.rate, Duration::from_secs(opts.partition_s), "partitioned", &commits).await?;
        let healed = Instant::now();
        let at_heal = replica.load(Ordering::SeqCst);
        proxy.heal();
        // The edge's zenoh session reconnects on its own retry schedule (up to 2 s apart):
        // the drain proper starts when the replica first grows again.
        wait_for(&replica, at_heal + 1).await?;
        let (linked, at_link) = (Instant::now(), replica.load(Ordering::SeqCst));
        wait_for(&replica, head).await?;
        let took = healed.elapsed();
        let draining = linked.elapsed();
        let backlog = head - at_heal;
        let linked_eps = (head - at_link) as f64 / draining.as_secs_f64();
        println!(
            "geo: {} s partition: backlog {backlog} entries (replica stayed at {before}), drained in {:.2} s after healing: {:.0} entries/s; \
             the link back after {:.2} s, then {:.0} entries/s",
            opts.partition_s,
            took.as_secs_f64(),
            backlog as f64 / took.as_secs_f64(),
            (took - draining).as_secs_f64(),
            linked_eps
        );
        println!(
            "RESULT geo rate={} lag_p50_ms={:.1} lag_p99_ms={:.1} ack_lag_p50_ms={:.1} ack_lag_p99_ms={:.1} backlog={backlog} drain_s={:.2} drain_eps={:.0} relink_s={:.2} linked_drain_eps={linked_eps:.0}",
            opts.rate,
            lag.value_at_quantile(0.5) as f64 / 1000.0,
            lag.value_at_quantile(0.99) as f64 / 1000.0,
            ms(&durable_lag, 0.5),
            ms(&durable_lag, 0.99),
            took.as_secs_f64(),
            backlog as f64 / took.as_secs_f64(),
            (took - draining).as_secs_f64(),
        );
    }
    stop.store(true, Ordering::SeqCst);
    let _ = poller.await;
    Ok(())
}

/// Pays at `rate` per second in total for `duration`, each device on its own schedule;
/// returns the highest committed seq.
async fn pay(devices: &[Arc<Device>], rate: u64, duration: Duration, tag: &str, commits: &Commits) -> Result<u64, String> {
    let per_device = Duration::from_secs_f64(devices.len() as f64 / rate as f64);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (k, device) in devices.iter().enumerate() {
        let (device, commits, tag) = (device.clone(), commits.clone(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            let mut next = started + per_device.mul_f64(k as f64 / 16.0);
            let mut n = 0u64;
            let mut head = 0;
            while next < started + duration {
                tokio::time::sleep_until(next.into()).await;
                let id = format!("{tag}-{k}-{n}");
                let command = cmd::transfer(&id, &format!("wallet:{k}"), &format!("merchant:{k}"), "0.01", "EUR");
                let reply = device.request(command).await;
                if reply["code"] != "ok" {
                    return Err(format!("{id}: {reply}"));
                }
                let seq = reply["seq"].as_u64().unwrap_or(0);
                commits.lock().unwrap().push((seq, Instant::now()));
                head = head.max(seq);
                n += 1;
                next += per_device;
            }
            Ok(head)
        }));
    }
    let mut head = 0;
    for task in tasks {
        head = head.max(task.await.map_err(|e| e.to_string())??);
    }
    Ok(head)
}

async fn wait_for(replica: &AtomicU64, seq: u64) -> Result<(), String> {
    let deadline = Instant::now() + CATCH_UP_DEADLINE;
    while replica.load(Ordering::SeqCst) < seq {
        if Instant::now() > deadline {
            return Err(format!("the replica did not reach {seq} within {CATCH_UP_DEADLINE:?}"));
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// Waits until the region has acknowledged `seq` as stored.
async fn wait_for_ack(acks: &Mutex<Vec<(Instant, u64)>>, seq: u64) -> Result<(), String> {
    let deadline = Instant::now() + CATCH_UP_DEADLINE;
    while acks.lock().unwrap().last().is_none_or(|(_, acked)| *acked < seq) {
        if Instant::now() > deadline {
            return Err(format!("the region did not acknowledge {seq} within {CATCH_UP_DEADLINE:?}"));
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// For each committed seq: time from its reply to the first observation (a status poll or
/// an ack, in arrival order) showing the replica there.
fn lag_histogram(commits: &[(u64, Instant)], polls: &[(Instant, u64)]) -> Histogram<u64> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
    for (seq, at) in commits {
        // Observations are in time order and the replica only moves forward: search, then
        // scan. One that already showed the entry before the reply arrived means zero lag.
        let first = polls.partition_point(|(when, _)| when < at);
        let before = first.checked_sub(1).map(|i| polls[i].1);
        let seen = match before {
            Some(replica) if replica >= *seq => None,
            _ => polls[first..].iter().find(|(_, replica)| replica >= seq).map(|(when, _)| *when),
        };
        let lag = seen.map_or(Duration::ZERO, |when| when.duration_since(*at));
        hist.saturating_record(lag.as_micros().max(1) as u64);
    }
    hist
}
