//! `ledger-bench core`: the ledger core and the redb store without MQTT, each transfer
//! applied by `Ledger::submit` and each group of B made durable by one `Store::commit`.
//!
//! Two runs per batch size. `serial`: apply a group, commit it, apply the next. `pipelined`:
//! as an edge's intake and committer share the work (`edge::intake`, `edge::committer`),
//! the ledger thread applies the next group while the committer thread seals and commits
//! the previous one, with at most `GROUPS_IN_FLIGHT` group waiting; the ledger hears which
//! groups are durable as the intake does. The transfers are built before the clock starts;
//! nothing is parsed, answered or shipped, so the figures are the core's and the store's.
//! `serial` is the closer to TigerBeetle's single-client bench, whose server never has the
//! next batch while it writes one; `pipelined` is an edge with many devices waiting.

use super::{number, tigerbeetle, value, USAGE};
use ledger::clock::now_ms;
use ledger::core::command::{Command, Flag, Movement, Op};
use ledger::core::journal::Chain;
use ledger::core::reply::Code;
use ledger::core::{Effects, Ledger, LiveChanges};
use ledger::edge::committer::GROUPS_IN_FLIGHT;
use ledger::store::{IdFault, Store};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODE: &str = "bench/edge-1";
const ACCOUNTS: usize = 1000;
/// Small batches commit (fsync) so often that 200 000 transfers would take minutes.
const MAX_COMMITS_SMALL_BATCH: usize = 5_000;

/// Most sittings one run may ask for (each runs every batch size twice).
const MAX_SITTINGS: usize = 9;
/// Largest batch (transfers per commit) and most batch sizes one run may ask for.
const MAX_BATCH: usize = 100_000;
const MAX_BATCH_SIZES: usize = 8;

pub struct CoreOpts {
    transfers: usize,
    batches: Vec<usize>,
    /// TigerBeetle's bench script, run first in each sitting (`tigerbeetle`).
    tigerbeetle: Option<PathBuf>,
    sittings: usize,
}

pub fn parse(args: &[String]) -> Result<CoreOpts, String> {
    let mut opts = CoreOpts { transfers: 200_000, batches: vec![1, 100, 1000], tigerbeetle: None, sittings: 1 };
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        match flag {
            "--transfers" => opts.transfers = number(flag, value(args, &mut i)?)?,
            "--batches" => {
                opts.batches = value(args, &mut i)?.split(',').map(|b| number::<usize>(flag, b.trim())).collect::<Result<_, _>>()?;
            }
            "--tigerbeetle" => opts.tigerbeetle = Some(PathBuf::from(value(args, &mut i)?)),
            "--sittings" => opts.sittings = number(flag, value(args, &mut i)?)?,
            other => return Err(format!("core: unknown argument {other:?}\n\n{USAGE}")),
        }
        i += 1;
    }
    if opts.transfers == 0 || opts.batches.is_empty() || opts.batches.contains(&0) {
        return Err("--transfers and every --batches size must be at least 1".to_string());
    }
    if let Some(big) = opts.batches.iter().find(|b| **b > MAX_BATCH) {
        return Err(format!("--batches: {big} is more than {MAX_BATCH} transfers per commit"));
    }
    let mut sizes = opts.batches.clone();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.len() != opts.batches.len() || sizes.len() > MAX_BATCH_SIZES {
        return Err(format!("--batches: at most {MAX_BATCH_SIZES} sizes, each once"));
    }
    if opts.sittings == 0 || opts.sittings > MAX_SITTINGS {
        return Err(format!("--sittings must be from 1 to {MAX_SITTINGS}"));
    }
    if let Some(script) = &opts.tigerbeetle {
        if !script.is_file() {
            return Err(format!("--tigerbeetle: {} is not a file (TigerBeetle's tb_bench.py)", script.display()));
        }
    }
    Ok(opts)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Serial,
    Pipelined,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Serial => "serial",
            Mode::Pipelined => "pipelined",
        }
    }
}

struct CoreResult {
    transfers: usize,
    commits: usize,
    total: Duration,
    /// Time applying groups through `Ledger::submit` (the ledger thread), timed per group.
    submit: Duration,
    /// Time in `Store::commit` (the committer thread when pipelined).
    commit: Duration,
    /// Pipelined: how long each thread worked, the ledger's then the committer's (each
    /// thread's whole loop, less the time it waited for the other).
    busy: Option<(Duration, Duration)>,
}

/// A ledger with its issuer, wallets and merchants, funded, in a fresh file.
struct Setup {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    chain: Chain,
    ledger: Ledger,
    id_fault: IdFault,
    wallets: Vec<String>,
    merchants: Vec<String>,
}

fn open_cmd(id: String, account: &str, flags: Vec<Flag>) -> Command {
    Command { id, op: Op::OpenAccount { account: account.to_string(), asset: "EUR".to_string(), flags, overdraft_limit: None } }
}

fn transfer_cmd(id: String, debit: &str, credit: &str, amount: &str) -> Command {
    Command {
        id,
        op: Op::Transfer(Movement {
            debit: debit.to_string(),
            credit: credit.to_string(),
            amount: amount.to_string(),
            asset: "EUR".to_string(),
            metadata: None,
        }),
    }
}

fn submit_ok(ledger: &mut Ledger, command: Command, now: u64) -> Result<Effects, String> {
    let id = command.id.clone();
    let effects = ledger.submit(Some("bench"), command, now);
    match &effects.reply {
        Some(reply) if reply.code == Code::Ok => Ok(effects),
        Some(reply) => Err(format!("command {id} was answered {:?}: {}", reply.code, reply.message)),
        None => Err(format!("command {id} got no reply")),
    }
}

/// Untimed: the file, the ledger as an edge configures it, the accounts and their funds.
fn set_up() -> Result<Setup, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let store = Arc::new(Store::open(dir.path(), NODE).map_err(|e| e.to_string())?);
    let mut chain = Chain::default();
    let mut node_config = config::NodeConfig::embedded_default();
    node_config.node.id = NODE.to_string();
    let mut ledger = ledger::setup::ledger_for(&node_config);
    // As on an edge: the recent ids in RAM (the rest read back from the file), and each
    // commit also writes what the group changed into the live tables (the accounts as a
    // delta, folded every `FOLD_EVERY_GROUPS` groups).
    let (archive, id_fault) = ledger::store::StoreIds::new(store.clone());
    ledger.archive_ids(node_config.ledger.id_cache_entries, Box::new(archive));
    ledger.track_live_changes_folding(ledger::store::FOLD_EVERY_GROUPS);

    let wallets: Vec<String> = (0..ACCOUNTS).map(|i| format!("wallet:w{i}")).collect();
    let merchants: Vec<String> = (0..ACCOUNTS).map(|i| format!("merchant:m{i}")).collect();
    let now = now_ms();
    let mut setup = vec![submit_ok(&mut ledger, open_cmd("setup-issuer".into(), "issuer:eur", vec![Flag::Issuance]), now)?];
    for (i, w) in wallets.iter().enumerate() {
        setup.push(submit_ok(&mut ledger, open_cmd(format!("setup-w{i}"), w, vec![Flag::NoOverdraft]), now)?);
    }
    for (i, m) in merchants.iter().enumerate() {
        setup.push(submit_ok(&mut ledger, open_cmd(format!("setup-m{i}"), m, Vec::new()), now)?);
    }
    for (i, w) in wallets.iter().enumerate() {
        setup.push(submit_ok(&mut ledger, transfer_cmd(format!("setup-fund{i}"), "issuer:eur", w, "1000000.00"), now)?);
    }
    store.commit(&mut chain, &setup, &ledger.take_live_changes()).map_err(|e| e.to_string())?;
    Ok(Setup { _dir: dir, store, chain, ledger, id_fault, wallets, merchants })
}

/// A run's transfers, built before the clock starts (as TigerBeetle's bench encodes its
/// transfers before it times them; a node's parsing is measured by `mqtt`): every wallet
/// pays, round robin, a merchant spread apart.
fn commands(setup: &Setup, transfers: usize) -> Vec<Command> {
    (0..transfers)
        .map(|i| transfer_cmd(format!("t{i}"), &setup.wallets[i % ACCOUNTS], &setup.merchants[(i * 7) % ACCOUNTS], "0.01"))
        .collect()
}

/// One transfer through `Ledger::submit`. Not timed here: the callers time each group's
/// loop, since reading the clock twice per transfer was itself a few percent of it.
fn apply(ledger: &mut Ledger, command: Command, now: u64) -> Result<Effects, String> {
    let effects = ledger.submit(Some("bench"), command, now);
    match &effects.reply {
        Some(reply) if reply.code == Code::Ok => Ok(effects),
        other => Err(format!("a transfer was not ok: {other:?}")),
    }
}

/// After a run: nothing was let through as new that the file knew, and the books balance.
fn check(setup: &Setup) -> Result<(), String> {
    if let Some(fault) = setup.id_fault.take() {
        return Err(format!("reading id records back from the file failed: {fault}"));
    }
    setup.ledger.check_invariants().map_err(|e| format!("books do not balance after the run: {e}"))
}

fn serial(batch: usize, transfers: usize) -> Result<CoreResult, String> {
    let mut setup = set_up()?;
    let mut group: Vec<Effects> = Vec::with_capacity(batch);
    let (mut submit, mut commit) = (Duration::ZERO, Duration::ZERO);
    let mut commits = 0;
    let commands = commands(&setup, transfers);
    let mut now = now_ms();
    let started = Instant::now();
    let mut group_number = setup.ledger.next_group();
    let mut applying = Instant::now();
    for (i, command) in commands.into_iter().enumerate() {
        group.push(apply(&mut setup.ledger, command, now)?);
        if group.len() == batch || i + 1 == transfers {
            submit += applying.elapsed();
            let live = setup.ledger.take_live_changes();
            let t = Instant::now();
            setup.store.commit(&mut setup.chain, &group, &live).map_err(|e| e.to_string())?;
            commit += t.elapsed();
            commits += 1;
            group.clear();
            // As the intake: the group is durable, its id records may leave RAM.
            setup.ledger.group_durable(group_number);
            group_number = setup.ledger.next_group();
            // The node reads the clock once per group too.
            now = now_ms();
            applying = Instant::now();
        }
    }
    let total = started.elapsed();
    check(&setup)?;
    Ok(CoreResult { transfers, commits, total, submit, commit, busy: None })
}

/// One group handed to the committer thread.
struct Group {
    number: u64,
    effects: Vec<Effects>,
    live: LiveChanges,
}

/// What the committer thread did: time in `Store::commit`, commits, and its busy time
/// (from taking a group to having dropped it; waiting for the next one is not counted).
struct Committed {
    commit: Duration,
    commits: usize,
    busy: Duration,
}

fn pipelined(batch: usize, transfers: usize) -> Result<CoreResult, String> {
    let mut setup = set_up()?;
    let (groups, to_commit) = std::sync::mpsc::sync_channel::<Group>(GROUPS_IN_FLIGHT);
    let durable = Arc::new(AtomicU64::new(0));
    let committer = {
        let (store, mut chain, durable) = (setup.store.clone(), std::mem::take(&mut setup.chain), durable.clone());
        let thread = std::thread::Builder::new().name("committer".to_string());
        thread
            .spawn(move || -> Result<Committed, String> {
                let mut done = Committed { commit: Duration::ZERO, commits: 0, busy: Duration::ZERO };
                for group in to_commit {
                    let taken = Instant::now();
                    let t = Instant::now();
                    store.commit(&mut chain, &group.effects, &group.live).map_err(|e| e.to_string())?;
                    done.commit += t.elapsed();
                    done.commits += 1;
                    durable.store(group.number, Ordering::Release);
                    // Dropped here, as the committer drops a group once answered.
                    drop(group);
                    done.busy += taken.elapsed();
                }
                Ok(done)
            })
            .map_err(|e| format!("cannot start the committer thread: {e}"))?
    };
    let mut commands = commands(&setup, transfers).into_iter().peekable();
    let mut submit = Duration::ZERO;
    // Time the ledger thread waited for room in the queue: not its work.
    let mut blocked = Duration::ZERO;
    let started = Instant::now();
    let mut applied = Ok(());
    'groups: while commands.peek().is_some() {
        // As the intake: what the committer made durable may leave RAM; then the next group.
        setup.ledger.group_durable(durable.load(Ordering::Acquire));
        let number = setup.ledger.next_group();
        let now = now_ms();
        let mut effects = Vec::with_capacity(batch);
        let applying = Instant::now();
        for command in commands.by_ref().take(batch) {
            match apply(&mut setup.ledger, command, now) {
                Ok(applied) => effects.push(applied),
                Err(e) => {
                    applied = Err(e);
                    break 'groups;
                }
            }
        }
        submit += applying.elapsed();
        let live = setup.ledger.take_live_changes();
        let t = Instant::now();
        // A closed channel means the committer failed: its error is what is reported.
        let sent = groups.send(Group { number, effects, live });
        blocked += t.elapsed();
        if sent.is_err() {
            break;
        }
    }
    let ledger_busy = started.elapsed().saturating_sub(blocked);
    // The committer ends once the queue is closed and empty: every group sent is committed.
    drop(groups);
    let committed = committer.join().map_err(|panic| format!("the committer thread panicked: {}", panic_message(&*panic)))??;
    applied?;
    let total = started.elapsed();
    setup.ledger.group_durable(durable.load(Ordering::Acquire));
    check(&setup)?;
    let busy = Some((ledger_busy, committed.busy));
    Ok(CoreResult { transfers, commits: committed.commits, total, submit, commit: committed.commit, busy })
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(message), _) => message.to_string(),
        (_, Some(message)) => message.clone(),
        _ => "(no message)".to_string(),
    }
}

/// Transfers/s of one sitting for one batch size: TigerBeetle's (when run), then ours.
struct Rates {
    tigerbeetle: Option<f64>,
    serial: f64,
    pipelined: f64,
}

pub fn run(opts: &CoreOpts) -> Result<(), String> {
    let mut sittings: Vec<BTreeMap<usize, Rates>> = Vec::with_capacity(opts.sittings);
    for sitting in 1..=opts.sittings {
        if opts.sittings > 1 {
            println!("core: sitting {sitting} of {}", opts.sittings);
        }
        let tigerbeetle = match &opts.tigerbeetle {
            Some(script) => Some(tigerbeetle::run(script, &opts.batches)?),
            None => None,
        };
        let mut rates = BTreeMap::new();
        for &batch in &opts.batches {
            let transfers = if batch < 100 { opts.transfers.min(MAX_COMMITS_SMALL_BATCH * batch) } else { opts.transfers };
            let mut tps = [0.0; 2];
            for (mode, tps) in [Mode::Serial, Mode::Pipelined].into_iter().zip(&mut tps) {
                let name = mode.name();
                println!("core: batch={batch} {name}: {transfers} transfers over {ACCOUNTS} wallets and {ACCOUNTS} merchants...");
                let r = match mode {
                    Mode::Serial => serial(batch, transfers)?,
                    Mode::Pipelined => pipelined(batch, transfers)?,
                };
                *tps = report(batch, mode, &r);
            }
            let beside = tigerbeetle.as_ref().map(|tb| tb[&batch]);
            rates.insert(batch, Rates { tigerbeetle: beside, serial: tps[0], pipelined: tps[1] });
        }
        if opts.tigerbeetle.is_some() {
            print_beside(&format!("sitting {sitting}"), &rates);
        }
        sittings.push(rates);
    }
    if opts.tigerbeetle.is_some() && sittings.len() > 1 {
        print_medians(&opts.batches, &sittings);
    }
    Ok(())
}

/// One sitting's table: TigerBeetle, ours, and ours / TigerBeetle per batch size.
fn print_beside(title: &str, rates: &BTreeMap<usize, Rates>) {
    println!("core beside TigerBeetle, {title} (transfers/s; serial is the run closer to its bench):");
    println!("{:>6} {:>11} {:>11} {:>7} {:>11} {:>7}", "batch", "tigerbeetle", "serial", "ratio", "pipelined", "ratio");
    for (batch, r) in rates {
        let Some(tb) = r.tigerbeetle else { continue };
        println!("{batch:>6} {tb:>11.0} {:>11.0} {:>7.2} {:>11.0} {:>7.2}", r.serial, r.serial / tb, r.pipelined, r.pipelined / tb);
        println!(
            "RESULT beside_tigerbeetle batch={batch} tigerbeetle_tps={tb:.0} serial_tps={:.0} serial_ratio={:.2} pipelined_tps={:.0} pipelined_ratio={:.2}",
            r.serial,
            r.serial / tb,
            r.pipelined,
            r.pipelined / tb
        );
    }
}

/// Over the sittings: the median of each figure and of the ratios taken within a sitting.
fn print_medians(batches: &[usize], sittings: &[BTreeMap<usize, Rates>]) {
    println!("core beside TigerBeetle, medians of {} sittings (ratios: the median of the sittings' ratios):", sittings.len());
    println!("{:>6} {:>11} {:>11} {:>7} {:>11} {:>7}", "batch", "tigerbeetle", "serial", "ratio", "pipelined", "ratio");
    for &batch in batches {
        let of = |f: &dyn Fn(&Rates) -> f64| median(sittings.iter().map(|s| f(&s[&batch])).collect());
        let tb = |r: &Rates| r.tigerbeetle.expect("run in every sitting");
        println!(
            "{batch:>6} {:>11.0} {:>11.0} {:>7.2} {:>11.0} {:>7.2}",
            of(&tb),
            of(&|r| r.serial),
            of(&|r| r.serial / tb(r)),
            of(&|r| r.pipelined),
            of(&|r| r.pipelined / tb(r)),
        );
    }
}

/// The middle value, or the mean of the two middle ones.
fn median(mut values: Vec<f64>) -> f64 {
    assert!(!values.is_empty(), "a median of at least one value");
    values.sort_by(f64::total_cmp);
    let half = values.len() / 2;
    match values.len() % 2 {
        1 => values[half],
        _ => (values[half - 1] + values[half]) / 2.0,
    }
}

/// Prints one run; returns its transfers/s.
fn report(batch: usize, mode: Mode, r: &CoreResult) -> f64 {
    let name = mode.name();
    let secs = r.total.as_secs_f64();
    let n = r.transfers as f64;
    let tps = n / secs;
    let us_per = secs * 1e6 / n;
    let pct = |d: Duration| 100.0 * d.as_secs_f64() / secs;
    let per_us = |d: Duration| d.as_secs_f64() * 1e6 / n;
    println!(
        "core: batch={batch} {name}: {tps:.0} transfers/s, {us_per:.2} µs/transfer ({} transfers in {secs:.2} s, {} commits, {:.2} ms/commit)",
        r.transfers,
        r.commits,
        r.commit.as_secs_f64() * 1e3 / r.commits as f64,
    );
    println!(
        "      time in Ledger::submit {:.1}% of the run ({:.2} µs/transfer), in Store::commit {:.1}% ({:.2} µs/transfer)",
        pct(r.submit),
        per_us(r.submit),
        pct(r.commit),
        per_us(r.commit),
    );
    match r.busy {
        None => println!("      one thread: the rest is taking each group's live changes and dropping groups"),
        Some((ledger, committer)) => {
            println!("      busy: the ledger thread {:.1}% of the run, the committer thread {:.1}%", pct(ledger), pct(committer))
        }
    }
    println!(
        "RESULT core batch={batch} mode={name} transfers={} tps={tps:.0} us_per_transfer={us_per:.2} submit_us={:.2} commit_us={:.2} submit_pct={:.1} commit_pct={:.1} ledger_busy_pct={} committer_busy_pct={}",
        r.transfers,
        per_us(r.submit),
        per_us(r.commit),
        pct(r.submit),
        pct(r.commit),
        r.busy.map_or("na".to_string(), |(ledger, _)| format!("{:.1}", pct(ledger))),
        r.busy.map_or("na".to_string(), |(_, committer)| format!("{:.1}", pct(committer))),
    );
    tps
}
