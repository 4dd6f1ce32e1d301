//! Signed journal heads (SPEC §9): a region takes an edge's entries only with the edge's
//! signature over the last of them, checked against the deployment's CA and the edge's
//! name, and keeps it; `ledgerctl verify --db` checks the kept signature offline. The test
//! plays the edges with their certificates, serving hand-made journals to a real region.

use bridge::sign::{SignedHead, Signer};
use bridge::{encode_frame, PROOF_SEQ};
use harness::{ask, eventually, free_port, ledgerctl, operator_tls, NodeOptions, NodeProcess, TestPki};
use ledger::core::command::{Command, Flag, Movement, Op};
use ledger::core::journal::{Chain, Entry};
use serde_json::Value;
use std::time::Duration;

const CATCH_UP: Duration = Duration::from_secs(60);

fn body_of(id: &str, op: Op) -> Command {
    Command { id: id.into(), op }
}

/// Four entries of `edge`, built by a real ledger core.
fn journal(edge: &str) -> Vec<Entry> {
    journal_with(edge, vec![])
}

/// The same four entries, the second opening wallet:a with `flags`.
fn journal_with(edge: &str, wallet_flags: Vec<Flag>) -> Vec<Entry> {
    let config = config::NodeConfig::from_toml(&format!("[node]\nid = \"{edge}\"\n")).unwrap();
    let mut ledger = ledger::setup::ledger_for(&config);
    let mut chain = Chain::default();
    let m = |id: &str| {
        let movement =
            Movement { debit: "issuer".into(), credit: "wallet:a".into(), amount: "1.00".into(), asset: "EUR".into(), metadata: None };
        body_of(id, Op::Transfer(movement))
    };
    let open = |id: &str, account: &str, flags: Vec<Flag>| {
        body_of(id, Op::OpenAccount { account: account.into(), asset: "EUR".into(), flags, overdraft_limit: None })
    };
    [open("o1", "issuer", vec![Flag::Issuance]), open("o2", "wallet:a", wallet_flags), m("t1"), m("t2")]
        .into_iter()
        .map(|c| chain.seal(ledger.submit(Some("dev"), c, 1_000).entry.as_ref().expect("accepted")))
        .collect()
}

/// A frame of `entries`, ending in `signer`'s signed head for `edge` (or unsigned).
fn frame(edge: &str, entries: &[Entry], signer: Option<&Signer>) -> Vec<u8> {
    let mut records: Vec<(u64, Vec<u8>)> = entries.iter().map(|e| (e.seq, e.encode())).collect();
    if let (Some(signer), Some(last)) = (signer, entries.last()) {
        records.push((PROOF_SEQ, serde_json::to_vec(&SignedHead::new(signer, edge, last.seq, &last.hash)).unwrap()));
    }
    encode_frame(records.iter().map(|(s, b)| (*s, &b[..])))
}

async fn replica(ops: &harness::Ops, edge: &str) -> Option<Value> {
    let status = ask(ops, "ledger/v1/status/eu").await?;
    status["edges"].as_array()?.iter().find(|e| e["edge"] == edge).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_keeps_only_entries_their_edge_signed() {
    let edges = ["eu/good-1", "eu/foreign-1", "eu/unsigned-1", "eu/borrowed-1", "eu/spliced-1"];
    let pki = TestPki::new(&[&["eu"][..], &edges[..]].concat());
    let port = free_port();
    let names: Vec<String> = edges.iter().map(|e| format!("\"{e}\"")).collect();
    let mut region = NodeProcess::start(NodeOptions {
        node_id: Some("eu".into()),
        region_zenoh_port: Some(port),
        extra_toml: format!(
            "[zenoh]\nlisten = [\"tls/127.0.0.1:{port}\"]\n{}\n[replication]\nedges = [{}]\n",
            pki.zenoh_tls("eu"),
            names.join(", ")
        ),
        ..NodeOptions::default()
    });
    let stranger = TestPki::new(&["eu/foreign-1"]);
    // Each fake edge serves its journal on its own range key, under its own certificate
    // (access control lets only that identity serve it), signed as the case says.
    // spliced-1: a forged entry 2 that links to entry 1, ahead of the edge's genuine and
    // signed entries 3 and 4 (which link to the genuine entry 2): the signature covers
    // nothing before the break, so none of the frame may be kept.
    let genuine = journal("eu/spliced-1");
    let forged = journal_with("eu/spliced-1", vec![Flag::NoOverdraft]);
    assert_ne!(forged[1].hash, genuine[1].hash);
    let spliced = vec![forged[0].clone(), forged[1].clone(), genuine[2].clone(), genuine[3].clone()];
    let cases: [(&str, Option<Signer>, Vec<Entry>); 5] = [
        ("eu/good-1", Some(Signer::load(&pki.files("eu/good-1")).unwrap()), journal("eu/good-1")),
        ("eu/foreign-1", Some(Signer::load(&stranger.files("eu/foreign-1")).unwrap()), journal("eu/foreign-1")),
        ("eu/unsigned-1", None, journal("eu/unsigned-1")),
        ("eu/borrowed-1", Some(Signer::load(&pki.files("eu/good-1")).unwrap()), journal("eu/borrowed-1")),
        ("eu/spliced-1", Some(Signer::load(&pki.files("eu/spliced-1")).unwrap()), spliced),
    ];
    let mut serving = Vec::new();
    for (edge, signer, entries) in cases {
        let session =
            bridge::open_client(&[format!("tls/127.0.0.1:{port}")], Duration::from_secs(10), Some(&pki.files(edge))).await.unwrap();
        let bytes = frame(edge, &entries, signer.as_ref());
        let queryable = session.declare_queryable(bridge::keys::journal_range(edge)).await.unwrap();
        serving.push(tokio::spawn(async move {
            let _session = session;
            while let Ok(query) = queryable.recv_async().await {
                let from: u64 = query.parameters().get("from").and_then(|v| v.parse().ok()).unwrap_or(1);
                let reply = if from == 1 { bytes.clone() } else { Vec::new() };
                let _ = query.reply(query.key_expr().clone(), reply).await;
            }
        }));
    }

    let ops = operator_tls(&[port], &pki.operator()).await;
    let good = eventually("the signed journal replicated", CATCH_UP, || async {
        replica(&ops, "eu/good-1").await.filter(|r| r["stored_seq"] == 4)
    })
    .await;
    assert!(good["refused"].is_null(), "{good}");
    for (edge, why) in [
        ("eu/foreign-1", "CA"),
        ("eu/unsigned-1", "not signed"),
        ("eu/borrowed-1", "not by \"eu/borrowed-1\""),
        ("eu/spliced-1", "the signed head covers none of it"),
    ] {
        let refused =
            eventually("the region to refuse", CATCH_UP, || async { replica(&ops, edge).await.filter(|r| !r["refused"].is_null()) }).await;
        assert_eq!(refused["seq"], 0, "{edge}: nothing of it kept: {refused}");
        let text = refused["refused"].as_str().unwrap();
        assert!(text.contains(why), "{edge}: {text}");
    }
    for task in serving {
        task.abort();
    }
    // The kept signature verifies offline with the replica it signs.
    let db = region.db_path();
    region.kill9();
    let (code, text, err) = ledgerctl(port, &["verify", "--db", db.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{text}{err}");
    assert!(text.contains("eu's replica of eu/good-1") || text.contains("replica of eu/good-1"), "{text}");
}
