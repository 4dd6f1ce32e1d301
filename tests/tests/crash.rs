//! Crash safety: clients stream payments while the node is SIGKILLed mid-stream and
//! restarted on the same data. Every command that got a reply is there exactly once,
//! resends come back `duplicate`, and the books balance (SPEC §8 invariants 1–5). The node
//! keeps 16 id records in RAM: almost every resend is answered from the file. Twice: with
//! redb's allocator state recorded by every commit (a small file, by default), so that the
//! file opens at once, and without it (`commit.quick_repair_up_to_bytes = 0`, as for a file
//! past that length), so that redb checks the whole file before it opens. And a node
//! stopped by SIGTERM closes its file, so that the next open needs no check at all.

use harness::{cmd, Device, NodeOptions, NodeProcess};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CLIENTS: usize = 4;
const PER_CLIENT: usize = 250;
const KILLS: usize = 2;
/// How long a client waits for a reply before it resends the same id.
const RESEND_AFTER: Duration = Duration::from_millis(1_000);
/// Bound on the whole stream, crashes included.
const STREAM_DEADLINE: Duration = Duration::from_secs(180);

#[derive(Debug, Clone)]
struct Answer {
    reply: Value,
    sends: usize,
}

async fn pay_until_answered(device: &Device, command: Value, deadline: Instant) -> Answer {
    let mut sends = 0;
    loop {
        sends += 1;
        if let Some(reply) = device.try_request(command.clone(), RESEND_AFTER).await {
            return Answer { reply, sends };
        }
        assert!(Instant::now() < deadline, "no reply to {command} before the deadline");
    }
}

/// What redb's repair callback makes the node log when it must check a crashed file.
const CHECKED: &str = "was not closed cleanly: redb is checking the file";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replied_payment_survives_sigkill_exactly_once() {
    let log = payments_survive_sigkill("").await;
    assert!(!log.contains(CHECKED), "with the allocator state recorded a crashed file opens without a check:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replied_payment_survives_sigkill_when_redb_checks_the_file() {
    let log = payments_survive_sigkill("quick_repair_up_to_bytes = 0").await;
    assert!(log.matches(CHECKED).count() >= KILLS, "each restart after a SIGKILL checked the file:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_by_sigterm_closes_its_file_so_the_next_open_needs_no_check() {
    // Commits never record the allocator state here, as past the limit: only a clean
    // close spares the next open redb's check of the file.
    let mut node = NodeProcess::start(NodeOptions { commit_toml: "quick_repair_up_to_bytes = 0".into(), ..NodeOptions::default() });
    let device = Device::connect(node.port, "payer").await;
    for command in [
        cmd::open("t-issuer", "issuer", "EUR", &["issuance"]),
        cmd::open("t-wallet", "wallet:w", "EUR", &[]),
        cmd::transfer("t-fund", "issuer", "wallet:w", "10.00", "EUR"),
    ] {
        let reply = device.request(command).await;
        assert_eq!(reply["code"], "ok", "{reply}");
    }
    let paid = device.request(cmd::transfer("t-pay", "wallet:w", "issuer", "2.50", "EUR")).await;
    assert_eq!(paid["code"], "ok", "{paid}");
    device.disconnect().await;

    let (mut node, status) = tokio::task::spawn_blocking(move || {
        let status = node.terminate();
        (node, status)
    })
    .await
    .unwrap();
    assert!(status.success(), "SIGTERM is a stop, not a failure: {status}; log:\n{}", node.log());
    let mut node = tokio::task::spawn_blocking(move || {
        node.spawn();
        node
    })
    .await
    .unwrap();
    assert!(!node.log().contains(CHECKED), "the file was closed cleanly:\n{}", node.log());

    // What was answered is there once: the resend is a duplicate with its seq.
    let device = Device::connect(node.port, "payer").await;
    let again = device.request(cmd::transfer("t-pay", "wallet:w", "issuer", "2.50", "EUR")).await;
    assert_eq!((&again["duplicate"], &again["seq"]), (&serde_json::json!(true), &paid["seq"]), "{again}");
    let balance = device.request(cmd::balance("t-balance", "wallet:w")).await;
    assert_eq!(balance["balance"]["posted"], "7.50", "{balance}");
    device.disconnect().await;

    // The control: a SIGKILL leaves the file to be checked.
    let node = tokio::task::spawn_blocking(move || {
        node.restart();
        node
    })
    .await
    .unwrap();
    assert!(node.log().contains(CHECKED), "a SIGKILL leaves the file unclosed:\n{}", node.log());
}

/// Streams the payments, SIGKILLing and restarting the node (its `[commit]` section
/// `commit_toml`) `KILLS` times, checks them all; returns the node's log.
async fn payments_survive_sigkill(commit_toml: &str) -> String {
    let options = NodeOptions { ledger_toml: "id_cache_entries = 16".into(), commit_toml: commit_toml.into(), ..NodeOptions::default() };
    let node = NodeProcess::start(options);
    let port = node.port;
    let data_dir = node.dir.join("data");
    let node = Arc::new(Mutex::new(node));

    let setup = Device::connect(port, "setup").await;
    let mut setup_entries = 0u64;
    let mut ok = |reply: Value| {
        assert_eq!(reply["code"], "ok", "{reply}");
        setup_entries += 1;
    };
    ok(setup.request(cmd::open("s-issuer", "issuer", "EUR", &["issuance"])).await);
    for k in 0..CLIENTS {
        ok(setup.request(cmd::open(&format!("s-w{k}"), &format!("wallet:{k}"), "EUR", &[])).await);
        ok(setup.request(cmd::open(&format!("s-m{k}"), &format!("merchant:{k}"), "EUR", &[])).await);
        ok(setup.request(cmd::transfer(&format!("s-f{k}"), "issuer", &format!("wallet:{k}"), "1000.00", "EUR")).await);
    }
    setup.disconnect().await;

    let answered = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + STREAM_DEADLINE;
    let mut clients = Vec::new();
    for k in 0..CLIENTS {
        let answered = answered.clone();
        clients.push(tokio::spawn(async move {
            let device = Device::connect(port, &format!("payer-{k}")).await;
            let mut answers = BTreeMap::new();
            for i in 0..PER_CLIENT {
                let id = format!("k{k}-{i}");
                let command = cmd::transfer(&id, &format!("wallet:{k}"), &format!("merchant:{k}"), "0.01", "EUR");
                let answer = pay_until_answered(&device, command, deadline).await;
                answered.fetch_add(1, Ordering::SeqCst);
                answers.insert(id, answer);
            }
            answers
        }));
    }

    // SIGKILL the node at evenly spaced points of the stream, restarting it each time.
    let total = CLIENTS * PER_CLIENT;
    let mut killed_at = Vec::new();
    for kill in 1..=KILLS {
        let mark = total * kill / (KILLS + 1);
        while answered.load(Ordering::SeqCst) < mark {
            assert!(Instant::now() < deadline, "stream stalled at {}", answered.load(Ordering::SeqCst));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        killed_at.push(answered.load(Ordering::SeqCst));
        let node = node.clone();
        tokio::task::spawn_blocking(move || node.lock().unwrap().restart()).await.unwrap();
    }

    let mut answers = BTreeMap::new();
    for c in clients {
        answers.extend(c.await.expect("client finished"));
    }
    assert_eq!(answers.len(), total);
    assert!(killed_at.iter().all(|&n| n < total), "the kills happened mid-stream: {killed_at:?}");

    // Every payment was answered `committed`, each with its own journal entry.
    let mut seqs = HashSet::new();
    let mut resent = 0;
    let mut duplicates = 0;
    for (id, answer) in &answers {
        assert_eq!(
            (answer.reply["status"].as_str(), answer.reply["code"].as_str()),
            (Some("committed"), Some("ok")),
            "{id}: {}",
            answer.reply
        );
        assert!(seqs.insert(answer.reply["seq"].as_u64().unwrap()), "{id} shares a journal entry");
        resent += (answer.sends > 1) as usize;
        duplicates += (answer.reply["duplicate"] == true) as usize;
    }
    eprintln!("kills at {killed_at:?} of {total}; {resent} payments resent, {duplicates} answered as duplicates");

    // The books, read back over MQTT: each payment applied exactly once.
    let reader = Device::connect(port, "reader").await;
    for k in 0..CLIENTS {
        let w = reader.request(cmd::balance(&format!("r-w{k}"), &format!("wallet:{k}"))).await;
        let m = reader.request(cmd::balance(&format!("r-m{k}"), &format!("merchant:{k}"))).await;
        assert_eq!(m["balance"]["posted"], "2.50", "{m}");
        assert_eq!(w["balance"]["posted"], "997.50", "{w}");
    }
    // Resending answered ids after the crashes changes nothing and gets the first reply back.
    for k in 0..CLIENTS {
        let retry = Device::connect(port, &format!("payer-{k}")).await;
        for i in (0..PER_CLIENT).step_by(25) {
            let id = format!("k{k}-{i}");
            let command = cmd::transfer(&id, &format!("wallet:{k}"), &format!("merchant:{k}"), "0.01", "EUR");
            let again = retry.request(command).await;
            assert_eq!(again["duplicate"], true, "{again}");
            assert_eq!(again["seq"], answers[&id].reply["seq"], "{again}");
        }
        retry.disconnect().await;
    }
    let m = reader.request(cmd::balance("r-again", "merchant:0")).await;
    assert_eq!(m["balance"]["posted"], "2.50", "{m}");
    reader.disconnect().await;

    // And from the redb file of the stopped node: chain, invariants, every reply on disk.
    let log = node.lock().unwrap().log();
    node.lock().unwrap().kill9();
    let mut ledger = harness::load_ledger(&data_dir, "test/edge-1").expect("database loads, chain verifies, books balance");
    assert_eq!(ledger.head().seq, setup_entries + total as u64, "one journal entry per payment, no more");
    for (id, answer) in &answers {
        let payer = format!("payer-{}", id[1..].split('-').next().unwrap());
        let recorded = ledger.recorded(Some(&payer), id).unwrap_or_else(|| panic!("{id} was answered but is not on disk"));
        assert_eq!(recorded.reply.seq, answer.reply["seq"].as_u64(), "{id}");
    }
    log
}
