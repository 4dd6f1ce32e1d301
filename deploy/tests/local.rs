//! README's multi-region demo, run as written: `ledger-local` starts the 2 × 2 topology,
//! `ledgerctl` opens accounts and reads status, a device pays across regions over MQTT,
//! `ledgerctl reconcile` reports nothing, and every node's /metrics and /health answer.

use harness::{cmd, eventually, run_ledgerctl, Device};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A base port with the topology's twelve ports free after it.
fn http_get(port: u16, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("metrics port");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (head.lines().next().unwrap_or_default().to_string(), body.to_string())
}

fn metric(text: &str, line_start: &str) -> Option<u64> {
    text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_demo_runs_and_metrics_answer() {
    let dir = tempfile::tempdir().unwrap();
    let base = harness::free_ports(deploy::PORTS_USED);
    let launcher = env!("CARGO_BIN_EXE_ledger-local");
    let ledger_node = harness::node_binary();
    // The launcher runs ledger-node from its own directory, as after `cargo build --release`.
    let bin_dir = dir.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::copy(launcher, bin_dir.join("ledger-local")).unwrap();
    std::fs::copy(&ledger_node, bin_dir.join("ledger-node")).unwrap();
    let mut child = Command::new(bin_dir.join("ledger-local"))
        .args(["--dir", dir.path().join("topology").to_str().unwrap(), "--base-port", &base.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("ledger-local starts");
    struct Kill(std::process::Child);
    impl Kill {
        /// SIGTERM: the launcher stops its nodes itself; it must have exited by `within`.
        fn stop_within(&mut self, within: Duration) {
            assert!(harness::terminate_within(&mut self.0, within).is_some(), "ledger-local did not exit within {within:?} of SIGTERM");
        }
    }
    impl Drop for Kill {
        fn drop(&mut self) {
            harness::terminate_within(&mut self.0, Duration::from_secs(30));
        }
    }
    let mut stdout = child.stdout.take().unwrap();
    let mut running = Kill(child);
    let (zenoh_eu, mqtt, metrics) = deploy::ports(Some(base));
    let banner = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        while !text.contains("operators:") {
            let n = stdout.read(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        // Keep reading to the end, as a terminal would: the launcher may print more.
        std::thread::spawn(move || while stdout.read(&mut buf).is_ok_and(|n| n > 0) {});
        text
    })
    .await
    .unwrap();
    assert!(banner.contains("us/sf-1") && banner.contains(&format!("tls/127.0.0.1:{}", zenoh_eu[0])), "{banner}");
    // README: `. local-topology/ledgerctl.env` points ledgerctl at both regions as the operator.
    let env = std::fs::read_to_string(dir.path().join("topology").join("ledgerctl.env")).unwrap();
    let vars: Vec<(String, String)> =
        env.lines().filter_map(|l| l.strip_prefix("export ")?.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert_eq!(vars.len(), 4, "{env}");
    let mut flags = Vec::new();
    for (name, value) in &vars {
        let flag = match name.as_str() {
            "LEDGERCTL_CONNECT" => "--connect",
            "LEDGERCTL_CA" => "--ca",
            "LEDGERCTL_CERT" => "--cert",
            _ => "--key",
        };
        flags.push(flag.to_string());
        flags.push(value.clone());
    }
    let ledgerctl = |args: &[&str]| {
        let mut all = flags.clone();
        all.extend(args.iter().map(|a| a.to_string()));
        async move { run_ledgerctl(&all).await }
    };

    // `ledgerctl status`: all six nodes, each replica level with its edge.
    eventually("every node in ledgerctl status", Duration::from_secs(30), || async {
        let (code, text, _) = ledgerctl(&["--json", "status"]).await;
        let status: serde_json::Value = serde_json::from_str(&text).ok()?;
        (code == 0 && status["nodes"].as_object()?.len() == 6).then_some(())
    })
    .await;
    for (address, flag) in
        [("issuer:bank@eu/berlin-1", "issuance"), ("wallet:alice@eu/berlin-1", "no_overdraft"), ("merchant:cafe@us/nyc-1", "no_overdraft")]
    {
        let (code, text, err) = ledgerctl(&["account", "open", address, "--asset", "EUR", "--flag", flag]).await;
        assert_eq!(code, 0, "{text}{err}");
    }
    let till = Device::connect(mqtt[0], "till-1").await;
    assert_eq!(till.request(cmd::transfer("fund", "issuer:bank", "wallet:alice", "20.00", "EUR")).await["code"], "ok");
    assert_eq!(till.request(cmd::transfer("coffee", "wallet:alice", "merchant:cafe@us/nyc-1", "4.50", "EUR")).await["status"], "pending");
    till.publish("not json").await;
    eventually("the coffee credited in New York", Duration::from_secs(30), || async {
        let (code, text, _) = ledgerctl(&["--json", "balance", "merchant:cafe@us/nyc-1"]).await;
        let answer: serde_json::Value = serde_json::from_str(&text).ok()?;
        (code == 0 && answer["balance"]["posted"] == "4.50").then_some(())
    })
    .await;
    let (code, text, err) = eventually("a clean reconcile", Duration::from_secs(30), || async {
        let out = ledgerctl(&["reconcile"]).await;
        (out.0 == 0).then_some(out)
    })
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(text.starts_with("no differences: 4 edges"), "{text}");

    // Metrics of the edge that took the commands, and of its region.
    let (status, body) = http_get(metrics[2], "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(metric(&body, "edgeledger_commands_total{op=\"transfer\",code=\"ok\"}"), Some(2), "{body}");
    assert_eq!(metric(&body, "edgeledger_commands_total{op=\"open_account\",code=\"ok\"}"), Some(2), "{body}");
    assert_eq!(metric(&body, "edgeledger_commands_total{op=\"settle\",code=\"ok\"}"), Some(1), "{body}");
    assert_eq!(metric(&body, "edgeledger_rejected_inputs_total{reason=\"invalid_json\"}"), Some(1), "{body}");
    assert_eq!(metric(&body, "edgeledger_mqtt_connections"), Some(1), "{body}");
    assert_eq!(metric(&body, "edgeledger_transfers_in_flight"), Some(0), "{body}");
    assert!(metric(&body, "edgeledger_commit_duration_seconds_count").unwrap() >= 5, "{body}");
    assert!(body.contains("edgeledger_commit_batch_size_bucket{le=\"+Inf\"}"), "{body}");
    let head = metric(&body, "edgeledger_journal_head_seq").unwrap();
    eventually("berlin's lag back to zero", Duration::from_secs(10), || async {
        let (_, body) = http_get(metrics[2], "/metrics");
        (metric(&body, "edgeledger_replication_lag_entries") == Some(0)).then_some(())
    })
    .await;
    let (_, region) = http_get(metrics[0], "/metrics");
    assert_eq!(metric(&region, "edgeledger_replica_seq{edge=\"eu/berlin-1\"}"), Some(head), "{region}");
    assert_eq!(metric(&region, "edgeledger_transfers_in_flight{stage=\"delivering\"}"), Some(0), "{region}");
    for port in metrics {
        let (status, body) = http_get(port, "/health");
        assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
        assert!(body.contains("\"status\":\"ok\""), "{body}");
    }
    assert_eq!(http_get(metrics[2], "/nothing").0, "HTTP/1.1 404 Not Found");

    // Stopped as by `kill` or a service manager: every node closes its file and says so.
    drop(till);
    running.stop_within(Duration::from_secs(30));
    let logs: Vec<_> = std::fs::read_dir(dir.path().join("topology"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .collect();
    assert_eq!(logs.len(), 6, "{logs:?}");
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("stopped; the file is closed"), "{}:\n{text}", log.display());
    }
}
