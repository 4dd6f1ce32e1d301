//! Payments across nodes on a topology of 2 regions × 2 edges, real processes on loopback:
//! end to end from the MQTT command to the final notice, through partitions, and through
//! SIGKILLs of a region and an edge under cross-region load.

use harness::{ask, check_cross_node_books, cmd, eventually, Device, Topology, EDGES};
use ledger::core::idempotency::IdKey;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(90);

fn city(edge: &str) -> &str {
    edge.split_once('/').unwrap().1.trim_end_matches("-1")
}

/// On every edge: an issuer, `wallet:{city}` funded with 1000.00 EUR and `merchant:{city}`.
async fn open_books(topology: &mut Topology) -> BTreeMap<String, Devices> {
    let mut devices = BTreeMap::new();
    for edge in EDGES {
        let device = Device::connect(topology.edge(edge).port, &format!("till-{}", city(edge))).await;
        let c = city(edge);
        for (id, account, flags) in
            [("o1", "issuer".to_string(), vec!["issuance"]), ("o2", format!("wallet:{c}"), vec![]), ("o3", format!("merchant:{c}"), vec![])]
        {
            assert_eq!(device.request(cmd::open(id, &account, "EUR", &flags)).await["code"], "ok");
        }
        assert_eq!(device.request(cmd::transfer("fund", "issuer", &format!("wallet:{c}"), "1000.00", "EUR")).await["code"], "ok");
        devices.insert(edge.to_string(), Devices { device, notices: HashMap::new() });
    }
    devices
}

/// A device and the notices it received so far, by pending id.
struct Devices {
    device: Device,
    notices: HashMap<String, Value>,
}

impl Devices {
    async fn notice(&mut self, pending_id: &str, deadline: Duration) -> Value {
        let until = std::time::Instant::now() + deadline;
        while !self.notices.contains_key(pending_id) {
            let left = until.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "no notice for {pending_id} within {deadline:?}");
            if let Some(n) = self.device.next_unsolicited(left.min(Duration::from_millis(500))).await {
                if let Some(id) = n["pending_id"].as_str() {
                    self.notices.insert(id.to_string(), n);
                }
            }
        }
        self.notices[pending_id].clone()
    }

    /// Sends until answered (the node may be down for a while).
    async fn send(&self, command: Value) -> Value {
        for _ in 0..30 {
            if let Some(reply) = self.device.try_request(command.clone(), Duration::from_secs(3)).await {
                return reply;
            }
        }
        panic!("no reply to {command}");
    }
}

/// Stops every edge (SIGKILL) and returns their data directories, for reading the redb files.
fn stop_edges(topology: &mut Topology) -> BTreeMap<String, PathBuf> {
    EDGES
        .iter()
        .map(|e| {
            topology.edge(e).kill9();
            (e.to_string(), topology.edge(e).dir.join("data"))
        })
        .collect()
}

async fn balance(devices: &Devices, account: &str) -> Value {
    let reply = devices.device.request(cmd::balance(&format!("b-{account}-{}", rand_suffix()), account)).await;
    assert_eq!(reply["code"], "ok", "{reply}");
    reply["balance"].clone()
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_cross_edges_and_regions_end_to_end() {
    let mut topology = Topology::start();
    let ops = topology.operator().await;
    let mut devices = open_books(&mut topology).await;
    let berlin = devices.get_mut("eu/berlin-1").unwrap();

    // To another edge of the same region, and to an edge of another region.
    for (id, credit, amount) in [("x1", "merchant:paris@eu/paris-1", "10.00"), ("x2", "merchant:nyc@us/nyc-1", "4.50")] {
        let reply = berlin.device.request(cmd::transfer(id, "wallet:berlin", credit, amount, "EUR")).await;
        assert_eq!((reply["status"].as_str(), reply["code"].as_str()), (Some("pending"), Some("ok")), "{reply}");
        let notice = berlin.notice(id, SETTLE).await;
        assert_eq!(notice["event"], "pending_resolved", "{notice}");
        assert_eq!(notice["resolution"], "posted", "{notice}");
        assert_eq!(notice["amount"], amount, "{notice}");
        assert_eq!(notice["code"], "ok", "{notice}");
    }
    // The destination records a rejection; the source voids on it and says why.
    let reply = berlin.device.request(cmd::transfer("x3", "wallet:berlin", "merchant:nobody@us/sf-1", "1.00", "EUR")).await;
    assert_eq!(reply["status"], "pending", "{reply}");
    let notice = berlin.notice("x3", SETTLE).await;
    assert_eq!((notice["resolution"].as_str(), notice["code"].as_str()), (Some("voided"), Some("unknown_account")), "{notice}");
    assert!(notice["message"].as_str().unwrap().contains("merchant:nobody"), "{notice}");

    // A resend gets the recorded reply, and now how it ended; nothing moves twice.
    let again = berlin.device.request(cmd::transfer("x1", "wallet:berlin", "merchant:paris@eu/paris-1", "10.00", "EUR")).await;
    assert_eq!((again["duplicate"].as_bool(), again["resolution"].as_str()), (Some(true), Some("posted")), "{again}");
    // Checked at the source, at once: funds, the device's own hold rights, regions.
    let poor = berlin.device.request(cmd::transfer("x4", "wallet:berlin", "merchant:nyc@us/nyc-1", "5000.00", "EUR")).await;
    assert_eq!(poor["code"], "insufficient_funds", "{poor}");
    let void = berlin.device.request(cmd::void("x5", "x2")).await;
    assert_eq!(void["code"], "forbidden", "{void}");
    let region = berlin.device.request(cmd::transfer("x6", "wallet:berlin", "merchant:hq@us", "1.00", "EUR")).await;
    assert_eq!(region["code"], "remote_account", "{region}");
    let batch = berlin
        .device
        .request(json!({"id": "x7", "op": "batch", "ops": [cmd::transfer("x7a", "wallet:berlin", "merchant:nyc@us/nyc-1", "1.00", "EUR")]}))
        .await;
    assert_eq!(batch["code"], "remote_account", "{batch}");

    let wallet = balance(&devices["eu/berlin-1"], "wallet:berlin").await;
    assert_eq!((wallet["posted"].as_str(), wallet["available"].as_str()), (Some("985.50"), Some("985.50")), "{wallet}");
    assert_eq!(balance(&devices["eu/paris-1"], "merchant:paris").await["posted"], "10.00");
    assert_eq!(balance(&devices["us/nyc-1"], "merchant:nyc").await["posted"], "4.50");

    // Operators: each edge's and region's answers agree, and say how fresh they are.
    let history = eventually("berlin's history in its region's replica", SETTLE, || async {
        let h = ask(&ops, "ledger/v1/query/eu/history?account=wallet:berlin@eu/berlin-1").await?;
        let ids: Vec<&str> = h["entries"].as_array()?.iter().filter_map(|e| e["id"].as_str()).collect();
        (ids.iter().filter(|id| id.starts_with("settle:")).count() == 3).then(|| h.clone())
    })
    .await;
    assert!(history["entries"].as_array().unwrap().iter().any(|e| e["id"] == "x2" && e["op"] == "transfer"), "{history}");
    assert!(history["replica_seq"].as_u64().is_some(), "{history}");
    let own = ask(&ops, "ledger/v1/query/us/nyc-1/history?account=merchant:nyc;limit=1").await.unwrap();
    assert_eq!(own["entries"][0]["op"], "receive", "{own}");
    let clearing = ask(&ops, "ledger/v1/query/eu/berlin-1/balance?account=~clearing:eur:us.nyc-1").await.unwrap();
    assert_eq!(clearing["balance"]["posted"], "4.50", "{clearing}");
    let mirror = eventually("the mirror clearing balance in us", SETTLE, || async {
        ask(&ops, "ledger/v1/query/us/balance?account=~clearing:eur:eu.berlin-1@us/nyc-1")
            .await
            .filter(|m| m["balance"]["posted"] == "-4.50")
    })
    .await;
    assert!(mirror["replica_seq"].as_u64().is_some(), "{mirror}");

    eventually("every replica and transfer to agree (SPEC §8.6)", SETTLE, || async {
        topology.differences(&ops).await.is_none().then_some(())
    })
    .await;
    assert_eq!(check_cross_node_books(&stop_edges(&mut topology)), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_wait_out_partitions_and_finish_after_healing() {
    let mut topology = Topology::start();
    let ops = topology.operator().await;
    let mut devices = open_books(&mut topology).await;

    // The source and one destination are cut off from their regions.
    topology.proxy("eu/berlin-1").cut();
    topology.proxy("us/nyc-1").cut();
    let berlin = devices.get_mut("eu/berlin-1").unwrap();
    for i in 0..40 {
        let credit = if i % 2 == 0 { "merchant:paris@eu/paris-1" } else { "merchant:nyc@us/nyc-1" };
        let reply = berlin.device.request(cmd::transfer(&format!("y{i}"), "wallet:berlin", credit, "0.01", "EUR")).await;
        assert_eq!(reply["status"], "pending", "the edge keeps taking payments while cut off: {reply}");
        let local = berlin.device.request(cmd::transfer(&format!("l{i}"), "wallet:berlin", "merchant:berlin", "0.01", "EUR")).await;
        assert_eq!(local["status"], "committed", "{local}");
    }
    let held = balance(&devices["eu/berlin-1"], "wallet:berlin").await;
    assert_eq!((held["posted"].as_str(), held["available"].as_str()), (Some("999.60"), Some("999.20")), "{held}");

    // The source comes back: transfers to paris finish, those to the still cut-off nyc wait.
    topology.proxy("eu/berlin-1").heal();
    let berlin = devices.get_mut("eu/berlin-1").unwrap();
    for i in (0..40).step_by(2) {
        assert_eq!(berlin.notice(&format!("y{i}"), SETTLE).await["resolution"], "posted");
    }
    let waiting = eventually("eu to show the transfers to nyc in flight", SETTLE, || async {
        let f = ask(&ops, "ledger/v1/query/eu/in_flight").await?;
        (f["active"] == 20 && f["in_flight"][0]["last_error"].is_string()).then_some(f)
    })
    .await;
    assert_eq!(waiting["in_flight"][0]["stage"], "delivering", "{waiting}");

    // nyc comes back: the rest finish, nothing was voided for being slow.
    topology.proxy("us/nyc-1").heal();
    for i in (1..40).step_by(2) {
        assert_eq!(berlin.notice(&format!("y{i}"), SETTLE).await["resolution"], "posted");
    }
    eventually("every replica and transfer to agree (SPEC §8.6)", SETTLE, || async {
        topology.differences(&ops).await.is_none().then_some(())
    })
    .await;
    assert_eq!(balance(&devices["us/nyc-1"], "merchant:nyc").await["posted"], "0.20");
    assert_eq!(check_cross_node_books(&stop_edges(&mut topology)), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_region_and_an_edge_under_cross_region_load() {
    let mut topology = Topology::start();
    let ops = topology.operator().await;
    let devices = open_books(&mut topology).await;
    const N: usize = 150;
    let seed = (rand_suffix() % 1000) as usize;
    let (kill_region_at, kill_edge_at) = (20 + seed % 40, 80 + seed % 40);
    println!("kill points: region eu after {kill_region_at}, edge us/nyc-1 after {kill_edge_at}");

    let mut answered = Vec::new();
    for i in 0..N {
        // Both directions at once: berlin → nyc and nyc → berlin.
        let to_nyc = devices["eu/berlin-1"].send(cmd::transfer(&format!("bn{i}"), "wallet:berlin", "merchant:nyc@us/nyc-1", "0.01", "EUR"));
        let to_berlin =
            devices["us/nyc-1"].send(cmd::transfer(&format!("nb{i}"), "wallet:nyc", "merchant:berlin@eu/berlin-1", "0.02", "EUR"));
        let (a, b) = tokio::join!(to_nyc, to_berlin);
        for reply in [a, b] {
            assert_eq!((reply["status"].as_str(), reply["code"].as_str()), (Some("pending"), Some("ok")), "{reply}");
            answered.push(reply["id"].as_str().unwrap().to_string());
        }
        if i == kill_region_at {
            topology.region("eu").restart();
        }
        if i == kill_edge_at {
            topology.edge("us/nyc-1").restart();
        }
    }
    eventually("every replica and transfer to agree after the crashes (SPEC §8.6)", Duration::from_secs(180), || async {
        topology.differences(&ops).await.is_none().then_some(())
    })
    .await;
    let dirs = stop_edges(&mut topology);
    assert_eq!(check_cross_node_books(&dirs), 2 * N);
    // Every `pending` answer survived the crashes (SPEC §8.4), once each.
    let berlin = harness::load_ledger(&dirs["eu/berlin-1"], "eu/berlin-1").unwrap();
    let nyc = harness::load_ledger(&dirs["us/nyc-1"], "us/nyc-1").unwrap();
    for id in &answered {
        let (source, device) = if id.starts_with("bn") { (&berlin, "till-berlin") } else { (&nyc, "till-nyc") };
        assert!(source.hold(IdKey::new(Some(device), id).as_str()).is_some(), "answered transfer {id} is not on disk");
    }
    assert_eq!(berlin.account("merchant:berlin").unwrap().posted, 2 * N as i64);
    assert_eq!(nyc.account("merchant:nyc").unwrap().posted, N as i64);
}
