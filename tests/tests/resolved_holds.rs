//! Resolved holds leave RAM (SPEC §10): a node that keeps 2 resolved holds in RAM places,
//! posts and voids 40 holds (one stays pending), is SIGKILLed and restarted; every resolved
//! hold is read back from the file: posting or voiding it again is refused with how it
//! ended, a resent hold says how it ended, a resent post is a duplicate of the first, and
//! nothing moves a cent twice. The pending hold is still there to post.

use harness::{cmd, http_get, Device, NodeOptions, NodeProcess};
use serde_json::Value;

const HOLDS: usize = 40;
const CACHE: u64 = 2;

fn metric(port: u16, name: &str) -> u64 {
    let text = http_get(port, "/metrics");
    let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no {name} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("{line}"))
}

fn resolve(i: usize) -> Value {
    if i.is_multiple_of(2) {
        cmd::post(&format!("p{i}"), &format!("h{i}"), Some("0.80"))
    } else {
        cmd::void(&format!("v{i}"), &format!("h{i}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolved_holds_are_read_back_from_the_file_after_sigkill() {
    let metrics = harness::free_port();
    let mut node = NodeProcess::start(NodeOptions {
        ledger_toml: format!("id_cache_entries = 16\nresolved_hold_cache_entries = {CACHE}"),
        extra_toml: format!("[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"),
        ..NodeOptions::default()
    });
    let charger = Device::connect(node.port, "charger-1").await;
    for command in [
        cmd::open("o1", "issuer", "EUR", &["issuance"]),
        cmd::open("o2", "wallet:ev", "EUR", &[]),
        cmd::open("o3", "charger:1", "EUR", &[]),
        cmd::transfer("f1", "issuer", "wallet:ev", "100.00", "EUR"),
        cmd::hold("open", "wallet:ev", "charger:1", "5.00", "EUR", None),
    ] {
        assert_eq!(charger.request(command.clone()).await["code"], "ok", "{command}");
    }
    let mut first = Vec::new();
    for i in 0..HOLDS {
        let hold = charger.request(cmd::hold(&format!("h{i}"), "wallet:ev", "charger:1", "1.00", "EUR", None)).await;
        assert_eq!(hold["status"], "pending", "{hold}");
        let resolved = charger.request(resolve(i)).await;
        assert_eq!(resolved["code"], "ok", "{resolved}");
        first.push((hold, resolved));
    }
    // The pending hold and at most CACHE resolved ones (more only while a group is in flight).
    let in_ram = metric(metrics, "edgeledger_holds_in_ram");
    assert!(in_ram <= 1 + CACHE + 1, "{in_ram} holds in RAM");
    assert!(metric(metrics, "edgeledger_hold_evictions_total") >= HOLDS as u64 - CACHE - 1);

    charger.disconnect().await; // its client would reconnect under the same client id
    node.restart(); // SIGKILL, then the same data directory
    let charger = Device::connect(node.port, "charger-1").await;
    assert_eq!(metric(metrics, "edgeledger_holds_in_ram"), 1, "start-up reads only the pending hold");
    for (i, (hold, resolved)) in first.iter().enumerate() {
        let (code, ended) = if i.is_multiple_of(2) { ("pending_posted", "posted") } else { ("pending_voided", "voided") };
        let again = charger.request(cmd::void(&format!("again-{i}"), &format!("h{i}"))).await;
        assert_eq!(again["code"], code, "h{i}: {again}");
        let resent = charger.request(cmd::hold(&format!("h{i}"), "wallet:ev", "charger:1", "1.00", "EUR", None)).await;
        assert_eq!(
            (&resent["duplicate"], &resent["seq"], &resent["resolution"]),
            (&Value::Bool(true), &hold["seq"], &Value::from(ended)),
            "{resent}"
        );
        let resent = charger.request(resolve(i)).await;
        assert_eq!((&resent["duplicate"], &resent["seq"]), (&Value::Bool(true), &resolved["seq"]), "{resent}");
    }
    assert!(metric(metrics, "edgeledger_hold_archive_reads_total") >= HOLDS as u64, "the resolved holds were read from the file");
    let post = charger.request(cmd::post("p-open", "open", None)).await;
    assert_eq!(post["code"], "ok", "{post}");
    // 20 holds posted at 0.80, 20 voided, the open one posted whole: 16.00 + 5.00.
    let wallet = charger.request(cmd::balance("b1", "wallet:ev")).await;
    assert_eq!(
        (&wallet["balance"]["posted"], &wallet["balance"]["pending_debits"]),
        (&Value::from("79.00"), &Value::from("0.00")),
        "{wallet}"
    );
    charger.disconnect().await;

    node.kill9();
    let args = ["verify".to_string(), "--db".to_string(), node.db_path().display().to_string()];
    let (code, out, err) = harness::run_ledgerctl(&args).await;
    assert_eq!(code, 0, "the live tables, resolved holds included, equal a replay: {out}{err}");
}
