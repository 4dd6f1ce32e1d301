//! `ledgerctl`: the operators' tool (SPEC §7). It talks to any node or zenoh router over
//! zenoh (`--connect`), reads the books, opens accounts, verifies journals (also offline,
//! from a redb file) and reconciles edges with their regions.
//!
//! It owns presentation and exit codes only: what a difference is, and how a journal is
//! verified, live in the `ledger` library (`reconcile`, `audit`), shared with the tests.

mod nodes;
mod reconcile;
mod table;
mod verify;

use clap::{Parser, Subcommand};
use nodes::{Address, Nodes};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use table::{cell, Table};

/// glibc's malloc and free were a third of the ledger core's time; see BENCHMARKS.md,
/// "Speed: the allocator adopted".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXIT_CODES: &str = "\
Exit codes:
  0  done; for verify and reconcile: everything checked and nothing differs
  1  something differs or failed verification, or a node refused the request
  2  bad arguments
  3  a node or file could not be reached (no answer, cannot connect, cannot open)";

#[derive(Parser)]
#[command(name = "ledgerctl", version, about = "Query, verify and reconcile edgeledger nodes", after_help = EXIT_CODES)]
struct Cli {
    /// zenoh endpoint(s) of any node or router (comma-separated)
    #[arg(long, global = true, env = "LEDGERCTL_CONNECT", default_value = "tcp/127.0.0.1:7447", value_delimiter = ',')]
    connect: Vec<String>,
    /// The deployment's CA certificate (PEM), for tls/ endpoints
    #[arg(long, global = true, env = "LEDGERCTL_CA")]
    ca: Option<PathBuf>,
    /// This operator's certificate (PEM; common name operator:NAME), for tls/ endpoints
    #[arg(long, global = true, env = "LEDGERCTL_CERT")]
    cert: Option<PathBuf>,
    /// This operator's private key (PEM), for tls/ endpoints
    #[arg(long, global = true, env = "LEDGERCTL_KEY")]
    key: Option<PathBuf>,
    /// Print one JSON document instead of tables
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for each answer
    #[arg(long, global = true, default_value_t = 5)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Nodes, journal heads and replication lag
    Status,
    /// Open or show an account
    #[command(subcommand)]
    Account(AccountCommand),
    /// Balance of an account (name@node); from its region's replica when the edge is unreachable
    Balance { address: String },
    /// Journal entries that changed an account, newest first
    History {
        address: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only entries before this sequence number (continue a long history)
        #[arg(long)]
        before: Option<u64>,
    },
    /// Pending holds of an account or an edge; transfers in flight of a region
    Pending {
        /// name@edge, an edge id, or a region id
        target: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Verify hash chains and balance sums: of a node over zenoh, or of a redb file offline
    Verify {
        /// An edge (its journal) or a region (each of its edges, and its replicas' heads)
        node: Option<String>,
        /// A node's redb file (ledger.redb), verified without any network; the node must be stopped
        #[arg(long, conflicts_with = "node")]
        db: Option<PathBuf>,
    },
    /// Compare edges with their regions' replicas, and every cross-node transfer on both sides
    Reconcile {
        /// Edges or regions to reconcile (default: every edge any region replicates)
        nodes: Vec<String>,
    },
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Open an account on an edge, with operator rights
    Open {
        /// name@edge
        address: String,
        #[arg(long)]
        asset: String,
        /// no_overdraft or issuance (repeatable)
        #[arg(long = "flag")]
        flags: Vec<String>,
        /// How far below zero it may go, in major units ("50.00")
        #[arg(long)]
        overdraft_limit: Option<String>,
        /// Command id (default: a fresh one); resending the same id changes nothing
        #[arg(long)]
        id: Option<String>,
    },
    /// Balance, pending holds and recent history of an account
    Show { address: String },
}

/// Why a command did not succeed, and its exit code.
#[derive(Debug)]
pub struct Fail {
    pub code: u8,
    pub message: String,
}

impl Fail {
    pub fn differs(message: impl Into<String>) -> Fail {
        Fail { code: 1, message: message.into() }
    }
    pub fn refused(message: impl Into<String>) -> Fail {
        Fail { code: 1, message: message.into() }
    }
    pub fn usage(message: impl Into<String>) -> Fail {
        Fail { code: 2, message: message.into() }
    }
    pub fn unreachable(message: impl Into<String>) -> Fail {
        Fail { code: 3, message: message.into() }
    }
}

/// What a command prints: a JSON document, or text for people; and whether it found
/// something wrong (exit 1) though it ran to the end.
pub struct Output {
    pub json: Value,
    pub text: String,
    pub differs: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let as_json = cli.json;
    let result = runtime.block_on(run(cli));
    // zenoh's tasks may outlive main; do not wait for them.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(out) => {
            if as_json {
                println!("{}", serde_json::to_string_pretty(&out.json).expect("json"));
            } else {
                print!("{}", out.text);
            }
            ExitCode::from(if out.differs { 1 } else { 0 })
        }
        Err(fail) => {
            if as_json {
                println!("{}", json!({"error": fail.message, "exit_code": fail.code}));
            }
            eprintln!("ledgerctl: {}", fail.message);
            ExitCode::from(fail.code)
        }
    }
}

async fn run(cli: Cli) -> Result<Output, Fail> {
    if let Command::Verify { db: Some(path), .. } = &cli.command {
        return verify::offline(path);
    }
    let identity = match (cli.ca.clone(), cli.cert.clone(), cli.key.clone()) {
        (Some(ca), Some(cert), Some(key)) => Some(bridge::pki::IdentityFiles { ca, cert, key }),
        (None, None, None) => None,
        _ => return Err(Fail::usage("--ca, --cert and --key go together (or LEDGERCTL_CA, LEDGERCTL_CERT, LEDGERCTL_KEY)")),
    };
    let nodes = Nodes::connect(&cli.connect, Duration::from_secs(cli.timeout.max(1)), identity.as_ref()).await?;
    match cli.command {
        Command::Status => status(&nodes).await,
        Command::Account(AccountCommand::Open { address, asset, flags, overdraft_limit, id }) => {
            open_account(&nodes, &address, &asset, &flags, overdraft_limit, id).await
        }
        Command::Account(AccountCommand::Show { address }) => show_account(&nodes, &address).await,
        Command::Balance { address } => balance(&nodes, &address).await,
        Command::History { address, limit, before } => history(&nodes, &address, limit, before).await,
        Command::Pending { target, limit } => pending(&nodes, &target, limit).await,
        Command::Verify { node: Some(node), .. } => verify::online(&nodes, &node).await,
        Command::Verify { node: None, db: None } => Err(Fail::usage("verify: name a node, or give --db FILE")),
        Command::Verify { db: Some(_), .. } => unreachable!("handled above"),
        Command::Reconcile { nodes: scope } => reconcile::run(&nodes, &scope).await,
    }
}

async fn status(nodes: &Nodes) -> Result<Output, Fail> {
    let statuses = nodes.statuses().await?;
    let mut table = Table::new(&["NODE", "ROLE", "HEAD", "HASH", "REPLICATED", "LAG"]);
    let mut replicas = Table::new(&["REGION", "EDGE", "REPLICA", "EDGE HEAD", "BEHIND", "AGE", "STATE"]);
    let mut replica_rows = Vec::new();
    let now = ledger::clock::now_ms();
    for (node, s) in &statuses {
        match s["role"].as_str() {
            Some("edge") => table.row(vec![
                node.clone(),
                "edge".into(),
                cell(&s["head"]["seq"]),
                short(&s["head"]["hash"]),
                cell(&s["replicated_seq"]),
                cell(&s["lag_entries"]),
            ]),
            _ => {
                table.row(vec![node.clone(), "region".into(), "-".into(), "-".into(), "-".into(), "-".into()]);
                for r in s["edges"].as_array().into_iter().flatten() {
                    let edge = r["edge"].as_str().unwrap_or_default();
                    let replica_seq = r["seq"].as_u64().unwrap_or(0);
                    let edge_head = statuses.get(edge).and_then(|e| e["head"]["seq"].as_u64());
                    let behind = edge_head.map(|h| h.saturating_sub(replica_seq));
                    let age_s = r["updated_ms"].as_u64().map(|t| now.saturating_sub(t) / 1000);
                    let state = match (&r["refused"], edge_head) {
                        (Value::String(why), _) => format!("refused: {why}"),
                        (_, None) => "edge not answering".to_string(),
                        _ => "ok".to_string(),
                    };
                    replicas.row(vec![
                        node.clone(),
                        edge.to_string(),
                        replica_seq.to_string(),
                        edge_head.map_or("-".into(), |h| h.to_string()),
                        behind.map_or("-".into(), |b| b.to_string()),
                        age_s.map_or("-".into(), |a| format!("{a}s")),
                        state.clone(),
                    ]);
                    replica_rows.push(json!({"region": node, "edge": edge, "replica_seq": replica_seq, "edge_head": edge_head,
                        "behind": behind, "updated_ms": r["updated_ms"], "refused": r["refused"]}));
                }
            }
        }
    }
    let mut text = table.render();
    if !replicas.is_empty() {
        text.push('\n');
        text.push_str(&replicas.render());
    }
    Ok(Output { json: json!({"nodes": statuses, "replicas": replica_rows}), text, differs: false })
}

async fn open_account(
    nodes: &Nodes,
    address: &str,
    asset: &str,
    flags: &[String],
    overdraft_limit: Option<String>,
    id: Option<String>,
) -> Result<Output, Fail> {
    let address = Address::parse(address)?;
    if !address.is_edge() {
        return Err(Fail::usage(format!("{}: accounts live on edges (region/edge); {} is a region", address.node, address.node)));
    }
    let id = id.unwrap_or_else(|| format!("ledgerctl-{}", broker::random_hex(12)));
    let mut command = json!({"id": id, "op": "open_account", "account": address.name, "asset": asset, "flags": flags});
    if let Some(limit) = overdraft_limit {
        command["overdraft_limit"] = json!(limit);
    }
    let reply = nodes.command(&address.node, &command).await?;
    let ok = reply["status"] == "committed";
    let text = format!(
        "{} {}@{}: {} {} (id {}, seq {}){}\n",
        if ok { "opened" } else { "not opened" },
        address.name,
        address.node,
        cell(&reply["code"]),
        cell(&reply["message"]),
        id,
        cell(&reply["seq"]),
        if reply["duplicate"] == true { ", a resend of an earlier command" } else { "" }
    );
    Ok(Output { json: reply, text, differs: !ok })
}

/// Asks the edge that owns the account; when it does not answer, its region's replica.
/// Returns the answer and where it came from.
async fn ask_owner(nodes: &Nodes, address: &Address, query: &str, params: &str) -> Result<(Value, String), Fail> {
    let own = format!("ledger/v1/query/{}/{query}?account={}{params}", address.node, address.name);
    match nodes.ask(&own).await {
        Ok(answer) => Ok((answer, address.node.clone())),
        Err(fail) if fail.code == 3 && address.is_edge() => {
            let region = address.region();
            let replica = format!("ledger/v1/query/{region}/{query}?account={}@{}{params}", address.name, address.node);
            let answer = nodes
                .ask(&replica)
                .await
                .map_err(|e| Fail { code: e.code, message: format!("{}; and from the region: {}", fail.message, e.message) })?;
            let source = format!("{region}'s replica at seq {}", cell(&answer["replica_seq"]));
            Ok((answer, source))
        }
        Err(fail) => Err(fail),
    }
}

async fn balance(nodes: &Nodes, address: &str) -> Result<Output, Fail> {
    let address = Address::parse(address)?;
    let (answer, source) = ask_owner(nodes, &address, "balance", "").await?;
    Ok(Output { text: balance_table(&answer, &address, &source), json: with_source(answer, &source), differs: false })
}

fn balance_table(answer: &Value, address: &Address, source: &str) -> String {
    let b = &answer["balance"];
    let mut table = Table::new(&["ACCOUNT", "ASSET", "POSTED", "PENDING DEBITS", "PENDING CREDITS", "AVAILABLE", "FROM"]);
    table.row(vec![
        format!("{}@{}", address.name, address.node),
        cell(&b["asset"]),
        cell(&b["posted"]),
        cell(&b["pending_debits"]),
        cell(&b["pending_credits"]),
        cell(&b["available"]),
        source.to_string(),
    ]);
    table.render()
}

fn with_source(mut answer: Value, source: &str) -> Value {
    answer["from"] = json!(source);
    answer
}

async fn history(nodes: &Nodes, address: &str, limit: usize, before: Option<u64>) -> Result<Output, Fail> {
    let address = Address::parse(address)?;
    let (scale_answer, _) = ask_owner(nodes, &address, "balance", "").await?;
    let scale = scale_of(&scale_answer["balance"]["posted"]);
    let params = format!(";limit={limit}{}", before.map(|b| format!(";before={b}")).unwrap_or_default());
    let (answer, source) = ask_owner(nodes, &address, "history", &params).await?;
    let mut table = Table::new(&["SEQ", "TIME (UTC)", "ID", "OP", "DEVICE", "CHANGE"]);
    for entry in answer["entries"].as_array().into_iter().flatten() {
        let changes: Vec<String> = entry["changes"].as_array().into_iter().flatten().map(|c| describe_change(c, scale)).collect();
        table.row(vec![
            cell(&entry["seq"]),
            utc(entry["ts_ms"].as_u64().unwrap_or(0)),
            cell(&entry["id"]),
            cell(&entry["op"]),
            cell(&entry["device"]),
            changes.join("; "),
        ]);
    }
    let mut text = format!("{}@{} from {source}\n", address.name, address.node);
    text.push_str(&table.render());
    if let Some(next) = answer["next_before"].as_u64() {
        text.push_str(&format!("more: --before {next}\n"));
    }
    Ok(Output { json: with_source(answer, &source), text, differs: false })
}

/// Decimal places of a formatted amount ("12.50" → 2).
fn scale_of(amount: &Value) -> u32 {
    amount.as_str().and_then(|a| a.split_once('.')).map_or(0, |(_, frac)| frac.len() as u32)
}

/// A journal change in words, amounts at the account's scale.
fn describe_change(change: &Value, scale: u32) -> String {
    let amount = |v: &Value| v.as_i64().map_or_else(|| cell(v), |m| ledger::core::money::format_minor(m, scale));
    match change["change"].as_str().unwrap_or_default() {
        "account_opened" => format!("opened {} ({})", cell(&change["account"]), cell(&change["asset"])),
        "account_closed" => format!("closed {}", cell(&change["account"])),
        "transferred" => format!("{} {} -> {}", amount(&change["amount"]), cell(&change["debit"]), cell(&change["credit"])),
        "hold_placed" => format!(
            "hold {} {} {} -> {}",
            cell(&change["pending_id"]),
            amount(&change["amount"]),
            cell(&change["debit"]),
            cell(&change["credit"])
        ),
        "hold_resolved" => {
            format!("{} {} ({} posted)", cell(&change["pending_id"]), cell(&change["resolution"]), amount(&change["posted"]))
        }
        other => other.to_string(),
    }
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS`, UTC.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

async fn show_account(nodes: &Nodes, address: &str) -> Result<Output, Fail> {
    let balance = balance(nodes, address).await?;
    let pending = pending(nodes, address, 20).await?;
    let history = history(nodes, address, 10, None).await?;
    Ok(Output {
        text: format!("{}\nPending holds\n{}\nRecent entries\n{}", balance.text, pending.text, history.text),
        json: json!({"balance": balance.json, "pending": pending.json, "history": history.json}),
        differs: false,
    })
}

async fn pending(nodes: &Nodes, target: &str, limit: usize) -> Result<Output, Fail> {
    if target.contains('@') {
        let address = Address::parse(target)?;
        let (answer, source) = ask_owner(nodes, &address, "pending", &format!(";limit={limit}")).await?;
        return Ok(Output { text: holds_table(&answer["pending"]), json: with_source(answer, &source), differs: false });
    }
    if target.contains('/') {
        let answer = nodes.ask(&format!("{}?limit={limit}", bridge::keys::pending(target))).await?;
        return Ok(Output { text: holds_table(&answer["pending"]), json: answer, differs: false });
    }
    let answer = nodes.ask(&bridge::keys::in_flight(target)).await?;
    let mut table = Table::new(&["ID", "FROM", "TO", "AMOUNT", "STAGE", "ATTEMPTS", "LAST ERROR"]);
    for f in answer["in_flight"].as_array().into_iter().flatten().take(limit) {
        table.row(vec![
            cell(&f["id"]),
            cell(&f["debit"]),
            cell(&f["credit"]),
            format!("{} {}", cell(&f["amount"]), cell(&f["asset"])),
            cell(&f["stage"]),
            cell(&f["attempts"]),
            cell(&f["last_error"]),
        ]);
    }
    let text = format!(
        "{}: {} transfers driven now, {} pending in its replicas\n{}",
        target,
        cell(&answer["active"]),
        cell(&answer["pending_in_replicas"]),
        table.render()
    );
    Ok(Output { text, json: answer, differs: false })
}

fn holds_table(holds: &Value) -> String {
    let mut table = Table::new(&["PENDING ID", "DEBIT", "CREDIT", "AMOUNT", "TO", "EXPIRES (UTC)"]);
    for h in holds.as_array().into_iter().flatten() {
        table.row(vec![
            cell(&h["pending_id"]),
            cell(&h["debit"]),
            cell(&h["credit"]),
            format!("{} {}", cell(&h["amount"]), cell(&h["asset"])),
            cell(&h["to"]),
            h["expires_at_ms"].as_u64().map_or("-".into(), utc),
        ]);
    }
    table.render()
}

fn short(hash: &Value) -> String {
    let text = cell(hash);
    text.chars().take(12).collect()
}

/// A progress bar on stderr, drawn only when stderr is a terminal.
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr());
    let style = indicatif::ProgressStyle::with_template("{msg:24} [{bar:40}] {pos}/{len} ({per_sec}, {eta})").expect("template");
    bar.set_style(style.progress_chars("=> "));
    bar.set_message(what.to_string());
    bar
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_are_utc() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(1_795_000_000_000), "2026-11-18 11:06:40");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00");
    }
}
