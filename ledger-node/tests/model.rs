//! The ledger core against a small reference model, over random command sequences:
//! duplicates, id conflicts, holds with partial posts, voids and expiries, batches and
//! overdraft attempts. After every step it checks SPEC §8 invariants 1, 2, 3 and 5 and that
//! the core's balances equal the model's. The core keeps only `ID_CACHE` id records in RAM
//! and reads the rest back from an archive written one group late, as the node's committer
//! writes its file: a resend of an id long evicted must still be a duplicate. The live
//! tables written with each group (accounts, holds) must equal, after every step, a replay
//! of the journal written so far, and a ledger restored from them must equal the core.

mod common;

use common::{Archive, Written};
use ledger::core::command;
use ledger::core::idempotency::IdRecord;
use ledger::core::journal::{Chain, Entry, GENESIS};
use ledger::core::money::Assets;
use ledger::core::reply::Reply;
use ledger::core::{Effects, EntryBody, Ledger, Limits, LiveChanges, Permissions};
use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

const DEVICE: &str = "dev-1";
const NODE: &str = "test/edge-1";
const ACCOUNTS: &[&str] = &["issuer", "w0", "w1", "w2", "w3", "usd0", "ghost", "n0", "n1"];
/// Amount strings with what they mean in EUR/USD (scale 2, max 1000.00): minor units or invalid.
const AMOUNTS: &[(&str, Option<i64>)] = &[
    ("0.01", Some(1)),
    ("1.00", Some(100)),
    ("1.01", Some(101)),
    ("5", Some(500)),
    ("10.50", Some(1050)),
    ("60", Some(6000)),
    ("250", Some(25000)),
    ("0", None),
    ("1.001", None),
    ("1000.01", None),
];

#[derive(Clone, Debug)]
struct MAccount {
    asset: &'static str,
    /// None: issuance (no floor); Some(limit): available may not go below -limit.
    floor: Option<i64>,
    closed: bool,
    posted: i64,
    pending_debits: i64,
    pending_credits: i64,
}

#[derive(Clone, Debug, PartialEq)]
enum MState {
    Pending,
    Posted,
    Voided,
    Expired,
}

#[derive(Clone, Debug)]
struct MHold {
    debit: String,
    credit: String,
    amount: i64,
    expires_at: Option<u64>,
    state: MState,
}

#[derive(Clone, Debug, Default)]
struct Model {
    accounts: BTreeMap<String, MAccount>,
    holds: BTreeMap<String, MHold>,
    /// id → (content key, status, code, seq)
    ids: HashMap<String, (String, String, String, Option<u64>)>,
    seq: u64,
}

type Outcome = Result<&'static str, &'static str>;

fn asset_of(v: &Value) -> &'static str {
    match v["asset"].as_str() {
        Some("EUR") => "EUR",
        Some("USD") => "USD",
        _ => "???",
    }
}

fn amount_of(text: &str) -> Option<i64> {
    AMOUNTS.iter().find(|(s, _)| *s == text).and_then(|(_, m)| *m)
}

impl Model {
    /// Applies one op (not a batch) and returns its status, or the rejection code.
    fn op(&mut self, c: &Value, now: u64) -> Outcome {
        let id = c["id"].as_str().unwrap().to_string();
        match c["op"].as_str().unwrap() {
            "open_account" => {
                let name = c["account"].as_str().unwrap();
                if self.accounts.contains_key(name) {
                    return Err("account_exists");
                }
                let asset = asset_of(c);
                if asset == "???" {
                    return Err("unknown_asset");
                }
                let flags: Vec<&str> = c["flags"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
                let floor = if flags.contains(&"issuance") {
                    if flags.contains(&"no_overdraft") || c.get("overdraft_limit").is_some() {
                        return Err("invalid_field");
                    }
                    None
                } else {
                    match c.get("overdraft_limit").and_then(Value::as_str) {
                        Some(_) if flags.contains(&"no_overdraft") => return Err("invalid_field"),
                        Some(text) => Some(amount_of(text).ok_or("invalid_amount")?),
                        None => Some(0),
                    }
                };
                let a = MAccount { asset, floor, closed: false, posted: 0, pending_debits: 0, pending_credits: 0 };
                self.accounts.insert(name.to_string(), a);
                Ok("committed")
            }
            "close_account" => {
                let name = c["account"].as_str().unwrap();
                let a = self.accounts.get_mut(name).ok_or("unknown_account")?;
                if a.closed {
                    return Err("account_closed");
                }
                if a.posted != 0 || a.pending_debits != 0 || a.pending_credits != 0 {
                    return Err("account_not_empty");
                }
                a.closed = true;
                Ok("committed")
            }
            op @ ("transfer" | "hold") => {
                let (debit, credit) = (c["debit"].as_str().unwrap(), c["credit"].as_str().unwrap());
                if debit == credit {
                    return Err("same_account");
                }
                let asset = asset_of(c);
                if asset == "???" {
                    return Err("unknown_asset");
                }
                let amount = amount_of(c["amount"].as_str().unwrap()).ok_or("invalid_amount")?;
                for name in [debit, credit] {
                    let a = self.accounts.get(name).ok_or("unknown_account")?;
                    if a.closed {
                        return Err("account_closed");
                    }
                    if a.asset != asset {
                        return Err("asset_mismatch");
                    }
                }
                let from = &self.accounts[debit];
                if let Some(limit) = from.floor {
                    if from.posted - from.pending_debits - amount < -limit {
                        return Err("insufficient_funds");
                    }
                }
                if op == "transfer" {
                    self.accounts.get_mut(debit).unwrap().posted -= amount;
                    self.accounts.get_mut(credit).unwrap().posted += amount;
                    Ok("committed")
                } else {
                    self.accounts.get_mut(debit).unwrap().pending_debits += amount;
                    self.accounts.get_mut(credit).unwrap().pending_credits += amount;
                    let expires_at = c.get("timeout_s").and_then(Value::as_u64).map(|t| now + t * 1000);
                    let hold = MHold { debit: debit.into(), credit: credit.into(), amount, expires_at, state: MState::Pending };
                    self.holds.insert(id, hold);
                    Ok("pending")
                }
            }
            op @ ("post" | "void") => {
                let pid = c["pending_id"].as_str().unwrap();
                let hold = self.holds.get(pid).ok_or("unknown_pending")?.clone();
                match hold.state {
                    MState::Posted => return Err("pending_posted"),
                    MState::Voided => return Err("pending_voided"),
                    MState::Expired => return Err("pending_expired"),
                    MState::Pending => {}
                }
                let posted = if op == "void" {
                    0
                } else {
                    match c.get("amount").and_then(Value::as_str) {
                        None => hold.amount,
                        Some(text) => {
                            let a = amount_of(text).ok_or("invalid_amount")?;
                            if a > hold.amount {
                                return Err("amount_exceeds_pending");
                            }
                            a
                        }
                    }
                };
                self.resolve(pid, posted, if op == "post" { MState::Posted } else { MState::Voided });
                Ok("committed")
            }
            other => panic!("model has no op {other}"),
        }
    }

    fn resolve(&mut self, pid: &str, posted: i64, state: MState) {
        let hold = self.holds.get_mut(pid).unwrap();
        hold.state = state;
        let hold = hold.clone();
        let from = self.accounts.get_mut(&hold.debit).unwrap();
        from.pending_debits -= hold.amount;
        from.posted -= posted;
        let to = self.accounts.get_mut(&hold.credit).unwrap();
        to.pending_credits -= hold.amount;
        to.posted += posted;
    }

    fn expire(&mut self, now: u64) -> usize {
        let due: Vec<String> = self
            .holds
            .iter()
            .filter(|(_, h)| h.state == MState::Pending && h.expires_at.is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &due {
            self.resolve(id, 0, MState::Expired);
        }
        self.seq += due.len() as u64;
        due.len()
    }

    /// A whole command, with idempotency: returns (status, code, seq, duplicate).
    fn command(&mut self, c: &Value, now: u64) -> (String, String, Option<u64>, bool) {
        let id = c["id"].as_str().unwrap().to_string();
        let key = c.to_string();
        if let Some((k, status, code, seq)) = self.ids.get(&id) {
            if *k == key {
                return (status.clone(), code.clone(), *seq, true);
            }
            return ("rejected".into(), "id_conflict".into(), None, false);
        }
        let outcome = if c["op"] == "batch" {
            let mut scratch = self.clone();
            let mut result = Ok("committed");
            for inner in c["ops"].as_array().unwrap() {
                let inner_id = inner["id"].as_str().unwrap();
                if scratch.ids.contains_key(inner_id) {
                    result = Err("id_conflict");
                    break;
                }
                if let Err(code) = scratch.op(inner, now) {
                    result = Err(code);
                    break;
                }
            }
            if result.is_ok() {
                *self = scratch;
                for inner in c["ops"].as_array().unwrap() {
                    let status = if inner["op"] == "hold" { "pending" } else { "committed" };
                    let record = (format!("in-batch:{inner}"), status.to_string(), "ok".to_string(), Some(self.seq + 1));
                    self.ids.insert(inner["id"].as_str().unwrap().to_string(), record);
                }
            }
            result
        } else {
            self.op(c, now)
        };
        let (status, code, seq) = match outcome {
            Ok(status) => {
                self.seq += 1;
                (status.to_string(), "ok".to_string(), Some(self.seq))
            }
            Err(code) => ("rejected".to_string(), code.to_string(), None),
        };
        self.ids.insert(id, (key, status.clone(), code.clone(), seq));
        (status, code, seq, false)
    }
}

#[derive(Clone, Debug)]
enum Action {
    /// A command with a fresh id.
    Fresh(Value),
    /// Resend an earlier command exactly.
    Resend(usize),
    /// An earlier id with new content.
    Reuse(usize, Value),
    /// Let the clock run.
    Advance(u64),
}

fn account() -> impl Strategy<Value = String> {
    prop::sample::select(ACCOUNTS).prop_map(str::to_string)
}

/// Mostly funded accounts, so that holds and transfers often succeed.
fn debit_account() -> impl Strategy<Value = String> {
    prop_oneof![3 => prop::sample::select(&["w0", "w1", "issuer"][..]).prop_map(str::to_string), 1 => account()]
}

fn amount() -> impl Strategy<Value = String> {
    prop::sample::select(AMOUNTS).prop_map(|(s, _)| s.to_string())
}

fn asset() -> impl Strategy<Value = String> {
    prop_oneof![8 => Just("EUR".to_string()), 1 => Just("USD".to_string()), 1 => Just("ABC".to_string())]
}

/// An op body without its id (filled in later), never a batch.
fn op_body() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => (account(), asset(), prop::sample::select(vec![vec![], vec!["no_overdraft"], vec!["issuance"], vec!["issuance", "no_overdraft"]]), prop::option::of(amount()))
            .prop_map(|(a, asset, flags, limit)| {
                let mut v = json!({"op": "open_account", "account": a, "asset": asset, "flags": flags});
                if let Some(l) = limit { v["overdraft_limit"] = json!(l); }
                v
            }),
        1 => account().prop_map(|a| json!({"op": "close_account", "account": a})),
        6 => (debit_account(), account(), amount(), asset())
            .prop_map(|(d, c, a, s)| json!({"op": "transfer", "debit": d, "credit": c, "amount": a, "asset": s})),
        4 => (debit_account(), account(), amount(), asset(), prop::option::of(prop::sample::select(vec![1u64, 5])))
            .prop_map(|(d, c, a, s, t)| {
                let mut v = json!({"op": "hold", "debit": d, "credit": c, "amount": a, "asset": s});
                if let Some(t) = t { v["timeout_s"] = json!(t); }
                v
            }),
        3 => (0usize..64, prop::option::of(amount()))
            .prop_map(|(p, a)| {
                let mut v = json!({"op": "post", "pending_id": format!("pick:{p}")});
                if let Some(a) = a { v["amount"] = json!(a); }
                v
            }),
        2 => (0usize..64).prop_map(|p| json!({"op": "void", "pending_id": format!("pick:{p}")})),
    ]
}

fn command_body() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => op_body(),
        1 => prop::collection::vec(op_body(), 1..4).prop_map(|ops| json!({"op": "batch", "ops": ops})),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        12 => command_body().prop_map(Action::Fresh),
        2 => any::<usize>().prop_map(Action::Resend),
        1 => (any::<usize>(), command_body()).prop_map(|(i, c)| Action::Reuse(i, c)),
        1 => prop::sample::select(vec![500u64, 2_000, 6_000]).prop_map(Action::Advance),
    ]
}

/// Gives a command and its batch ops ids; fresh ids are c0, c1, ... so holds can be named.
fn with_ids(mut body: Value, id: String, next: &mut usize, holds: &mut Vec<String>) -> Value {
    body["id"] = json!(id);
    resolve_pick(&mut body, holds);
    if let Some(ops) = body.get_mut("ops").and_then(Value::as_array_mut) {
        for op in ops {
            op["id"] = json!(format!("c{next}"));
            *next += 1;
            resolve_pick(op, holds);
        }
    }
    body
}

/// Post and void name one of the holds sent so far (or a never-used id when there is none),
/// so that they mostly meet real holds; holds are remembered for later picks. One pick in
/// eight names the newest hold, so that a hold is often named again by the next commands,
/// right after the group that resolved it.
fn resolve_pick(op: &mut Value, holds: &mut Vec<String>) {
    if op["op"] == "hold" {
        holds.push(op["id"].as_str().unwrap().to_string());
    }
    let Some(pick) = op["pending_id"].as_str().and_then(|p| p.strip_prefix("pick:")) else { return };
    let n: usize = pick.parse().unwrap();
    let target = match holds.last() {
        None => "c9999".to_string(),
        Some(_) if n % 8 == 7 => "c9999".to_string(),
        Some(newest) if n % 8 == 6 => newest.clone(),
        Some(_) => holds[n % holds.len()].clone(),
    };
    op["pending_id"] = json!(target);
}

fn new_ledger() -> Ledger {
    let assets = Assets::new(&[], |_| Decimal::from(1000));
    Ledger::new(NODE, assets, Limits { max_batch_ops: 10, max_hold_timeout_s: 3600 }, Permissions::open())
}

/// Id records in RAM: fewer than one batch's ops, so that most lookups go to the archive.
const ID_CACHE: usize = 3;
/// Resolved holds in RAM: most posts, voids and resends of holds read them back.
const HOLD_CACHE: usize = 1;

/// A group applied and not yet committed.
#[derive(Default)]
struct Unwritten {
    number: u64,
    ids: Vec<(String, IdRecord)>,
    bodies: Vec<EntryBody>,
    live: LiveChanges,
}

struct Harness {
    ledger: Ledger,
    written: Arc<Mutex<Written>>,
    unwritten: Option<Unwritten>,
    /// A replay of the entries written so far: what the live tables must equal.
    replayed: Ledger,
    model: Model,
    /// Entries sealed as the committer seals them.
    journal: Vec<Entry>,
    chain: Chain,
    sent: Vec<Value>,
    replies: HashMap<String, Reply>,
    now: u64,
    next_id: usize,
    holds: Vec<String>,
}

impl Harness {
    /// `fold_every`: the core writes its accounts as a delta per group, folded into rows
    /// every that many groups, as an edge does (1: rows every group).
    fn new(fold_every: u32) -> Harness {
        let written = Arc::new(Mutex::new(Written::default()));
        let mut ledger = new_ledger();
        ledger.archive_ids(ID_CACHE, Box::new(Archive(written.clone())));
        ledger.archive_holds(HOLD_CACHE, Box::new(common::Holds(written.clone())));
        ledger.track_live_changes_folding(fold_every);
        let mut replayed = new_ledger();
        replayed.forget_ids();
        Harness {
            ledger,
            written,
            unwritten: None,
            replayed,
            model: Model::default(),
            journal: Vec::new(),
            chain: Chain::default(),
            sent: Vec::new(),
            replies: HashMap::new(),
            now: 1_700_000_000_000,
            next_id: 0,
            holds: Vec::new(),
        }
    }

    fn collect(&mut self, effects: &Effects) {
        if let Some(entry) = &effects.entry {
            let sealed = self.chain.seal(entry);
            // The stored bytes say exactly what the ledger decided, in every workload.
            assert_eq!(&sealed.parse_body().expect("a sealed body reads back"), entry);
            self.journal.push(sealed);
        }
        let group = self.unwritten.as_mut().expect("a group is open");
        group.ids.extend(effects.recorded.iter().cloned());
        group.bodies.extend(effects.entry.iter().cloned());
    }

    /// The committer's side: the open group becomes durable, and the ledger hears of it.
    fn commit(&mut self) {
        let Some(group) = self.unwritten.take() else { return };
        for body in &group.bodies {
            self.replayed.replay(body).unwrap();
        }
        let mut written = self.written.lock().unwrap();
        written.commit(group.ids, group.bodies);
        written.commit_live(group.live);
        // The live tables equal a replay of the journal as written.
        let tables = written.live_state(self.replayed.head());
        if let Some(difference) = tables.difference(&self.replayed.live_state()) {
            panic!("live tables vs replay: {difference}");
        }
        drop(written);
        self.ledger.group_durable(group.number);
    }

    /// What the shell does per group: expire what is due, then apply the command. The
    /// previous group is committed only now, while this one is applied (as the intake and
    /// the committer overlap).
    fn send(&mut self, c: Value) {
        let number = self.ledger.next_group();
        let previous = self.unwritten.replace(Unwritten { number, ..Unwritten::default() });
        let expired = self.ledger.expire_due(self.now);
        for e in &expired {
            self.collect(e);
        }
        assert_eq!(expired.len(), self.model.expire(self.now), "expiries differ at {}", self.now);

        let parsed = command::parse(c.to_string().as_bytes(), 10).unwrap_or_else(|e| panic!("{c}: {e:?}"));
        let effects = self.ledger.submit(Some(DEVICE), parsed, self.now);
        self.collect(&effects);
        self.unwritten.as_mut().expect("a group is open").live = self.ledger.take_live_changes();
        // The previous group's commit returns while this one was applied.
        let current = std::mem::replace(&mut self.unwritten, previous);
        self.commit();
        self.unwritten = current;
        let reply = effects.reply.clone().expect("every command gets a reply");
        let (status, code, seq, duplicate) = self.model.command(&c, self.now);
        let got_status = serde_json::to_value(reply.status).unwrap();
        let got_code = serde_json::to_value(reply.code).unwrap();
        assert_eq!((got_status.as_str().unwrap(), got_code.as_str().unwrap()), (status.as_str(), code.as_str()), "{c}: {}", reply.message);
        assert_eq!(reply.seq, seq, "{c}");
        assert_eq!(reply.duplicate, duplicate, "{c}");

        // Invariant 3: a resend gets exactly the first reply back, and nothing is applied.
        let id = c["id"].as_str().unwrap().to_string();
        if duplicate {
            let first = &self.replies[&id];
            // A resent hold also says how it ended, once it has.
            let resolution = match self.model.holds.get(&id).map(|h| &h.state) {
                _ if first.status != ledger::core::reply::Status::Pending => None,
                Some(MState::Posted) => Some(ledger::core::reply::Resolution::Posted),
                Some(MState::Voided) => Some(ledger::core::reply::Resolution::Voided),
                Some(MState::Expired) => Some(ledger::core::reply::Resolution::Expired),
                Some(MState::Pending) | None => None,
            };
            assert_eq!(Reply { duplicate: true, resolution, ..first.clone() }, reply, "{c}");
            assert!(effects.entry.is_none() && effects.recorded.is_empty());
        } else if reply.code.as_str() != "id_conflict" {
            self.replies.insert(id, reply);
        } else {
            assert!(effects.entry.is_none() && effects.recorded.is_empty(), "a conflict changes nothing");
        }
        self.sent.push(c);
        self.check();
    }

    fn check(&self) {
        // Invariants 1 and 2, and holds matching pending amounts.
        self.ledger.check_invariants().unwrap();
        // The core's books equal the model's.
        for (name, m) in &self.model.accounts {
            let a = self.ledger.account(name).unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(
                (a.posted, a.pending_debits, a.pending_credits, a.closed),
                (m.posted, m.pending_debits, m.pending_credits, m.closed),
                "{name}"
            );
            assert_eq!(&*a.asset, m.asset);
        }
        assert_eq!(self.ledger.accounts().count(), self.model.accounts.len());
        // Invariant 5: gap-free, hash-chained journal.
        assert_eq!(self.ledger.head().seq, self.journal.len() as u64);
        assert_eq!(self.model.seq, self.journal.len() as u64);
        let mut prev = GENESIS;
        for (i, e) in self.journal.iter().enumerate() {
            e.verify(i as u64 + 1, &prev).unwrap();
            prev = e.hash;
        }
    }
}

fn setup(h: &mut Harness) {
    let prelude = [
        json!({"op": "open_account", "account": "issuer", "asset": "EUR", "flags": ["issuance"]}),
        json!({"op": "open_account", "account": "w0", "asset": "EUR", "flags": ["no_overdraft"]}),
        json!({"op": "open_account", "account": "w1", "asset": "EUR", "flags": []}),
        json!({"op": "open_account", "account": "w2", "asset": "EUR", "flags": []}),
        json!({"op": "open_account", "account": "w3", "asset": "EUR", "flags": [], "overdraft_limit": "5"}),
        json!({"op": "open_account", "account": "usd0", "asset": "USD", "flags": []}),
        json!({"op": "transfer", "debit": "issuer", "credit": "w0", "amount": "250", "asset": "EUR"}),
        json!({"op": "transfer", "debit": "issuer", "credit": "w1", "amount": "60", "asset": "EUR"}),
        json!({"op": "transfer", "debit": "issuer", "credit": "w2", "amount": "10.50", "asset": "EUR"}),
    ];
    for (i, body) in prelude.into_iter().enumerate() {
        let mut unused = 0;
        let c = with_ids(body, format!("setup-{i}"), &mut unused, &mut h.holds);
        h.send(c);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, max_shrink_iters: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn core_matches_model(actions in prop::collection::vec(action(), 1..120), fold_every in 1u32..=5) {
        let mut h = Harness::new(fold_every);
        setup(&mut h);
        for action in actions {
            match action {
                Action::Fresh(body) => {
                    let id = format!("c{}", h.next_id);
                    h.next_id += 1;
                    let mut next = h.next_id;
                    let c = with_ids(body, id, &mut next, &mut h.holds);
                    h.next_id = next;
                    h.send(c);
                }
                Action::Resend(i) => {
                    let c = h.sent[i % h.sent.len()].clone();
                    h.send(c);
                }
                Action::Reuse(i, body) => {
                    let id = h.sent[i % h.sent.len()]["id"].as_str().unwrap().to_string();
                    let mut next = h.next_id;
                    let c = with_ids(body, id, &mut next, &mut h.holds);
                    h.next_id = next;
                    h.send(c);
                }
                Action::Advance(ms) => h.now += ms,
            }
        }

        h.commit();
        let (in_ram, _, stats) = h.ledger.id_cache();
        prop_assert!(in_ram <= ID_CACHE, "{} id records in RAM", in_ram);
        prop_assert!(stats.evictions > 0 || h.replies.len() <= ID_CACHE);
        // Rebuilding from the journal alone gives the same books.
        let mut rebuilt = new_ledger();
        let mut chain = Chain::default();
        for e in &h.journal {
            rebuilt.replay(&chain.verify_next(e).unwrap()).unwrap();
        }
        prop_assert_eq!(rebuilt.head(), h.ledger.head());
        for (name, a) in h.ledger.accounts() {
            prop_assert_eq!(rebuilt.account(name), Some(a));
        }
        // A ledger restored from the live tables, as an edge starts, is the core's.
        let tables = h.written.lock().unwrap().live_state(h.ledger.head());
        let mut restored = new_ledger();
        restored.restore_live(tables.head, tables.accounts, tables.holds.clone(), tables.received.into_values());
        restored.check_invariants().unwrap();
        // The core's holds in RAM, with those that left it read from the tables: only
        // resolved local holds leave, at most HOLD_CACHE stay once every group is durable.
        let mut core = h.ledger.live_state();
        let resolved_in_ram = core.holds.values().filter(|hold| hold.may_leave_ram()).count();
        prop_assert!(resolved_in_ram <= HOLD_CACHE, "{} resolved holds in RAM", resolved_in_ram);
        for (id, hold) in &tables.holds {
            if !core.holds.contains_key(id) {
                prop_assert!(hold.may_leave_ram(), "hold {} left RAM unresolved", id);
                core.holds.insert(id.clone(), hold.clone());
            }
        }
        let resolved = tables.holds.values().filter(|hold| hold.may_leave_ram()).count();
        prop_assert!(resolved <= HOLD_CACHE || h.ledger.hold_cache().1.evictions > 0, "{} resolved, none left RAM", resolved);
        prop_assert_eq!(restored.live_state().difference(&core), None);
        prop_assert_eq!(rebuilt.live_state().difference(&core), None);
        // The journal alone restores the id record of every accepted command, batch ops too.
        for (id, reply) in &h.replies {
            if reply.code.as_str() == "ok" && reply.balance.is_none() {
                prop_assert_eq!(rebuilt.recorded(Some(DEVICE), id), h.ledger.recorded(Some(DEVICE), id), "{}", id);
                prop_assert!(rebuilt.recorded(Some(DEVICE), id).is_some());
            }
        }
    }
}

#[test]
fn a_tampered_entry_is_refused_on_replay() {
    let mut h = Harness::new(1);
    setup(&mut h);
    let mut entries = h.journal.clone();
    // The same entry saying 999.99 where it said 250.00, its hash left as it was.
    let json = serde_json::to_string(&entries[6].parse_body().unwrap()).unwrap();
    assert!(json.contains("25000"));
    let tampered: EntryBody = serde_json::from_str(&json.replace("25000", "99999")).unwrap();
    entries[6].body = ledger::core::entry_codec::encode(&tampered);
    let mut chain = Chain::default();
    for e in &entries[..6] {
        chain.verify_next(e).unwrap();
    }
    let err = chain.verify_next(&entries[6]).unwrap_err();
    assert!(err.to_string().contains("tampered"), "{err}");
    // A missing entry is a gap, in the chain and in the ledger.
    let mut chain = Chain::default();
    chain.verify_next(&entries[0]).unwrap();
    assert!(chain.verify_next(&entries[2]).unwrap_err().to_string().contains("gap"));
    let mut rebuilt = new_ledger();
    rebuilt.replay(&entries[0].parse_body().unwrap()).unwrap();
    assert!(rebuilt.replay(&entries[2].parse_body().unwrap()).unwrap_err().contains("gap"));
}
