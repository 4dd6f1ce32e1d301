//! Reconciliation (SPEC §7, §8.6): compares an edge's books with its region's replica
//! (head, then every account), and each cross-node transfer at its source with the
//! decision recorded at its destination, naming every difference: which account or
//! transfer, which side, what was expected and what was found.
//!
//! Pure: it takes rows already read (from nodes over zenoh, or from a ledger) and returns
//! differences. Reading them is the caller's job; so is deciding what a difference costs.

use crate::core::money::format_minor;
use crate::core::reply::{Code, Resolution, Status};
use crate::core::transfer::Delivery;
use crate::core::{Account, Hold, HoldState, Ledger, Received};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

/// One account's balances, amounts at the asset's scale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRow {
    pub account: String,
    pub asset: String,
    pub posted: String,
    pub pending_debits: String,
    pub pending_credits: String,
    pub closed: bool,
}

/// A cross-node transfer as its source sees it: the hold and its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingRow {
    pub id: String,
    /// The debited account, local to the source.
    pub debit: String,
    /// The credit account's address at the destination (`name@node`).
    pub to: String,
    pub asset: String,
    pub amount: String,
    /// `pending`, `posted`, `voided` or `expired`.
    pub state: String,
}

/// A cross-node transfer as its destination recorded it: the delivery as it arrived, and
/// the decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncomingRow {
    #[serde(flatten)]
    pub transfer: Delivery,
    /// `committed` (credited) or `rejected`.
    pub status: Status,
    pub code: Code,
    pub seq: Option<u64>,
}

/// A journal head: how many entries and the hash of the last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadRow {
    pub seq: u64,
    pub hash: String,
}

/// Everything reconciliation can find wrong. Each names where and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Difference {
    /// A node that should have answered did not.
    NoAnswer { node: String, error: String },
    /// The region's replica has fewer entries than the edge's journal.
    ReplicaBehind { edge: String, region: String, edge_seq: u64, replica_seq: u64 },
    /// The region's replica has more entries than the edge's journal (the edge lost some).
    ReplicaAhead { edge: String, region: String, edge_seq: u64, replica_seq: u64 },
    /// Same length, different history.
    HeadHashMismatch { edge: String, region: String, seq: u64, edge_hash: String, replica_hash: String },
    /// The region refused an entry of the edge's journal and stopped there.
    ReplicaRefused { edge: String, region: String, reason: String },
    /// An account one side has and the other does not.
    AccountMissing { account: String, missing_on: String, present_on: String },
    /// An account whose balances differ between the edge and the replica.
    BalanceMismatch { account: String, asset: String, field: String, edge: String, replica: String },
    /// The source holds the transfer pending and its destination has no record: in flight.
    TransferUndelivered { id: String, source: String, destination: String, amount: String, asset: String },
    /// The destination decided, the source has not settled yet.
    TransferUnsettled { id: String, source: String, destination: String, decision: String },
    /// The source settled a transfer its destination has no record of.
    TransferUnknownAtDestination { id: String, source: String, destination: String, source_state: String, amount: String, asset: String },
    /// The destination recorded a transfer its source never sent.
    TransferUnknownAtSource { id: String, source: String, destination: String, decision: String, amount: String, asset: String },
    /// Both sides know the transfer but not with the same amount, asset or account.
    TransferMismatch { id: String, source: String, destination: String, field: String, at_source: String, at_destination: String },
    /// The source posted what the destination rejected, or voided what it credited.
    TransferOutcomeMismatch { id: String, source: String, destination: String, source_state: String, decision: String },
    /// The other side of a transfer could not be read, so it was not checked.
    TransferUnchecked { id: String, source: String, destination: String, reason: String },
}

impl Difference {
    /// (kind, where, expected, found) for a table.
    pub fn describe(&self) -> [String; 4] {
        let kind = serde_json::to_value(self).ok().and_then(|v| v["kind"].as_str().map(str::to_string)).unwrap_or_default();
        let (place, expected, found) = match self {
            Difference::NoAnswer { node, error } => (node.clone(), "an answer".to_string(), error.clone()),
            Difference::ReplicaBehind { edge, region, edge_seq, replica_seq }
            | Difference::ReplicaAhead { edge, region, edge_seq, replica_seq } => {
                (format!("{region}'s replica of {edge}"), format!("seq {edge_seq} (edge)"), format!("seq {replica_seq} (replica)"))
            }
            Difference::HeadHashMismatch { edge, region, seq, edge_hash, replica_hash } => (
                format!("{region}'s replica of {edge} at seq {seq}"),
                format!("hash {} (edge)", short(edge_hash)),
                format!("hash {} (replica)", short(replica_hash)),
            ),
            Difference::ReplicaRefused { edge, region, reason } => {
                (format!("{region}'s replica of {edge}"), "every entry applied".to_string(), reason.clone())
            }
            Difference::AccountMissing { account, missing_on, present_on } => {
                (account.clone(), format!("present on {present_on}"), format!("missing on {missing_on}"))
            }
            Difference::BalanceMismatch { account, asset, field, edge, replica } => {
                (format!("{account} {field}"), format!("{edge} {asset} (edge)"), format!("{replica} {asset} (replica)"))
            }
            Difference::TransferUndelivered { id, source, destination, amount, asset } => (
                transfer(id, source, destination),
                format!("a decision at {destination}"),
                format!("none yet; {amount} {asset} held pending at {source}"),
            ),
            Difference::TransferUnsettled { id, source, destination, decision } => (
                transfer(id, source, destination),
                format!("{source} settled ({decision} at {destination})"),
                format!("still pending at {source}"),
            ),
            Difference::TransferUnknownAtDestination { id, source, destination, source_state, amount, asset } => (
                transfer(id, source, destination),
                format!("a record at {destination} ({source} {source_state} {amount} {asset})"),
                format!("no record at {destination}"),
            ),
            Difference::TransferUnknownAtSource { id, source, destination, decision, amount, asset } => (
                transfer(id, source, destination),
                format!("a hold at {source} ({destination} {decision} {amount} {asset})"),
                format!("no such transfer at {source}"),
            ),
            Difference::TransferMismatch { id, source, destination, field, at_source, at_destination } => (
                format!("{} {field}", transfer(id, source, destination)),
                format!("{at_source} (source)"),
                format!("{at_destination} (destination)"),
            ),
            Difference::TransferOutcomeMismatch { id, source, destination, source_state, decision } => {
                (transfer(id, source, destination), format!("{decision} at {destination}"), format!("{source_state} at {source}"))
            }
            Difference::TransferUnchecked { id, source, destination, reason } => {
                (transfer(id, source, destination), "both sides read".to_string(), reason.clone())
            }
        };
        [kind, place, expected, found]
    }
}

fn transfer(id: &str, source: &str, destination: &str) -> String {
    format!("transfer {id} {source} -> {destination}")
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(16)]
}

/// Compares an edge's journal head and accounts with its region's replica of them.
pub fn compare_replica(
    edge: &str,
    region: &str,
    edge_head: &HeadRow,
    replica_head: &HeadRow,
    refused: Option<&str>,
    edge_accounts: &[AccountRow],
    replica_accounts: &[AccountRow],
) -> Vec<Difference> {
    let mut out = Vec::new();
    let (edge_s, region_s) = (edge.to_string(), region.to_string());
    if let Some(reason) = refused {
        out.push(Difference::ReplicaRefused { edge: edge_s.clone(), region: region_s.clone(), reason: reason.to_string() });
    }
    if replica_head.seq < edge_head.seq {
        out.push(Difference::ReplicaBehind {
            edge: edge_s.clone(),
            region: region_s.clone(),
            edge_seq: edge_head.seq,
            replica_seq: replica_head.seq,
        });
    } else if replica_head.seq > edge_head.seq {
        out.push(Difference::ReplicaAhead {
            edge: edge_s.clone(),
            region: region_s.clone(),
            edge_seq: edge_head.seq,
            replica_seq: replica_head.seq,
        });
    } else if replica_head.hash != edge_head.hash {
        out.push(Difference::HeadHashMismatch {
            edge: edge_s.clone(),
            region: region_s.clone(),
            seq: edge_head.seq,
            edge_hash: edge_head.hash.clone(),
            replica_hash: replica_head.hash.clone(),
        });
    }
    let at_edge: BTreeMap<&str, &AccountRow> = edge_accounts.iter().map(|a| (a.account.as_str(), a)).collect();
    let at_replica: BTreeMap<&str, &AccountRow> = replica_accounts.iter().map(|a| (a.account.as_str(), a)).collect();
    let names: BTreeSet<&str> = at_edge.keys().chain(at_replica.keys()).copied().collect();
    let replica_side = format!("{region}'s replica");
    for name in names {
        let address = format!("{name}@{edge}");
        match (at_edge.get(name), at_replica.get(name)) {
            (Some(_), None) => {
                out.push(Difference::AccountMissing { account: address, missing_on: replica_side.clone(), present_on: edge_s.clone() })
            }
            (None, Some(_)) => {
                out.push(Difference::AccountMissing { account: address, missing_on: edge_s.clone(), present_on: replica_side.clone() })
            }
            (Some(e), Some(r)) => {
                let fields = [
                    ("asset", e.asset.clone(), r.asset.clone()),
                    ("posted", e.posted.clone(), r.posted.clone()),
                    ("pending_debits", e.pending_debits.clone(), r.pending_debits.clone()),
                    ("pending_credits", e.pending_credits.clone(), r.pending_credits.clone()),
                    ("closed", e.closed.to_string(), r.closed.to_string()),
                ];
                for (field, at_e, at_r) in fields {
                    if !same_value(&at_e, &at_r) {
                        out.push(Difference::BalanceMismatch {
                            account: address.clone(),
                            asset: e.asset.clone(),
                            field: field.to_string(),
                            edge: at_e,
                            replica: at_r,
                        });
                    }
                }
            }
            (None, None) => unreachable!("the name came from one of the two"),
        }
    }
    out
}

/// Two amounts compare as decimals (`4.5` is `4.50`); anything else as text.
fn same_value(a: &str, b: &str) -> bool {
    match (Decimal::from_str(a), Decimal::from_str(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Compares every cross-node transfer on both sides. `outgoing` and `incoming` are by node,
/// for the nodes that were read completely; a transfer whose other side was not read is
/// reported unchecked, never passed. Only transfers touching a node in `scope` are looked at.
pub fn compare_transfers(
    outgoing: &BTreeMap<String, Vec<OutgoingRow>>,
    incoming: &BTreeMap<String, Vec<IncomingRow>>,
    scope: &dyn Fn(&str) -> bool,
) -> Vec<Difference> {
    let mut out = Vec::new();
    // (destination, source, id) -> the destination's record
    let mut decisions: BTreeMap<(&str, &str, &str), &IncomingRow> = BTreeMap::new();
    for (destination, rows) in incoming {
        for row in rows {
            decisions.insert((destination.as_str(), row.transfer.source.as_str(), row.transfer.id.as_str()), row);
        }
    }
    let mut matched: BTreeSet<(&str, &str, &str)> = BTreeSet::new();
    for (source, rows) in outgoing {
        for row in rows {
            let destination = crate::core::address::Address::split(&row.to).node.unwrap_or_default();
            if !scope(source) && !scope(destination) {
                continue;
            }
            let (id, src, dst) = (row.id.clone(), source.clone(), destination.to_string());
            if !incoming.contains_key(destination) {
                out.push(Difference::TransferUnchecked {
                    id,
                    source: src,
                    destination: dst.clone(),
                    reason: format!("{dst} was not read"),
                });
                continue;
            }
            let key = (destination, source.as_str(), row.id.as_str());
            let Some(decision) = decisions.get(&key) else {
                if row.state == "pending" {
                    out.push(Difference::TransferUndelivered {
                        id,
                        source: src,
                        destination: dst,
                        amount: row.amount.clone(),
                        asset: row.asset.clone(),
                    });
                } else {
                    out.push(Difference::TransferUnknownAtDestination {
                        id,
                        source: src,
                        destination: dst,
                        source_state: row.state.clone(),
                        amount: row.amount.clone(),
                        asset: row.asset.clone(),
                    });
                }
                continue;
            };
            matched.insert(key);
            let fields = [
                ("amount", row.amount.as_str(), decision.transfer.amount.as_str()),
                ("asset", row.asset.as_str(), decision.transfer.asset.as_str()),
                ("credit", row.to.as_str(), decision.transfer.credit.as_str()),
            ];
            for (field, at_source, at_destination) in fields {
                if !same_value(at_source, at_destination) {
                    out.push(Difference::TransferMismatch {
                        id: id.clone(),
                        source: src.clone(),
                        destination: dst.clone(),
                        field: field.to_string(),
                        at_source: at_source.to_string(),
                        at_destination: at_destination.to_string(),
                    });
                }
            }
            let decided = decision_name(decision);
            let agrees = match (row.state.as_str(), decision.status) {
                ("pending", _) => {
                    out.push(Difference::TransferUnsettled {
                        id: id.clone(),
                        source: src.clone(),
                        destination: dst.clone(),
                        decision: decided.clone(),
                    });
                    true
                }
                ("posted", Status::Committed) => true,
                ("voided" | "expired", Status::Rejected) => true,
                _ => false,
            };
            if !agrees {
                out.push(Difference::TransferOutcomeMismatch {
                    id,
                    source: src,
                    destination: dst,
                    source_state: row.state.clone(),
                    decision: decided,
                });
            }
        }
    }
    for ((destination, source, id), row) in &decisions {
        if matched.contains(&(*destination, *source, *id)) || (!scope(source) && !scope(destination)) {
            continue;
        }
        let (id, src, dst) = (id.to_string(), source.to_string(), destination.to_string());
        if !outgoing.contains_key(*source) {
            out.push(Difference::TransferUnchecked { id, source: src.clone(), destination: dst, reason: format!("{src} was not read") });
            continue;
        }
        out.push(Difference::TransferUnknownAtSource {
            id,
            source: src,
            destination: dst,
            decision: decision_name(row),
            amount: row.transfer.amount.clone(),
            asset: row.transfer.asset.clone(),
        });
    }
    out
}

fn decision_name(row: &IncomingRow) -> String {
    match row.status {
        Status::Committed => "credited".to_string(),
        _ => format!("rejected ({})", row.code.as_str()),
    }
}

impl AccountRow {
    pub fn of(ledger: &Ledger, name: &str, a: &Account) -> AccountRow {
        let scale = ledger.scale_of(&a.asset).unwrap_or(0);
        AccountRow {
            account: name.to_string(),
            asset: a.asset.to_string(),
            posted: format_minor(a.posted, scale),
            pending_debits: format_minor(a.pending_debits, scale),
            pending_credits: format_minor(a.pending_credits, scale),
            closed: a.closed,
        }
    }
}

impl OutgoingRow {
    pub fn of(ledger: &Ledger, id: &str, hold: &Hold) -> OutgoingRow {
        OutgoingRow {
            id: id.to_string(),
            debit: hold.debit.clone(),
            to: hold.remote.clone().unwrap_or_default(),
            asset: hold.asset.clone(),
            amount: format_minor(hold.amount, ledger.scale_of(&hold.asset).unwrap_or(0)),
            state: match hold.state {
                HoldState::Pending => "pending",
                HoldState::Resolved(Resolution::Posted) => "posted",
                HoldState::Resolved(Resolution::Voided) => "voided",
                HoldState::Resolved(Resolution::Expired) => "expired",
            }
            .to_string(),
        }
    }
}

impl IncomingRow {
    pub fn of(r: &Received) -> IncomingRow {
        let transfer = Delivery {
            source: r.source.clone(),
            id: r.id.clone(),
            debit: r.movement.debit.clone(),
            credit: r.movement.credit.clone(),
            asset: r.movement.asset.clone(),
            amount: r.movement.amount.clone(),
            proof: None,
        };
        IncomingRow { transfer, status: r.recorded.reply.status, code: r.recorded.reply.code, seq: r.recorded.reply.seq }
    }
}

/// The whole books of a ledger as reconciliation rows, sorted: accounts by name, outgoing
/// transfers by id, incoming ones by source and id. For ledgers read from redb files.
pub fn rows_of(ledger: &Ledger) -> (Vec<AccountRow>, Vec<OutgoingRow>, Vec<IncomingRow>) {
    let mut accounts: Vec<AccountRow> = ledger.accounts().map(|(n, a)| AccountRow::of(ledger, n, a)).collect();
    accounts.sort_by(|a, b| a.account.cmp(&b.account));
    let mut outgoing: Vec<OutgoingRow> = ledger.cross_node_holds().map(|(id, h)| OutgoingRow::of(ledger, id, h)).collect();
    outgoing.sort_by(|a, b| a.id.cmp(&b.id));
    let mut incoming: Vec<IncomingRow> = ledger.received_all().map(IncomingRow::of).collect();
    incoming.sort_by_key(|row| row.transfer.key());
    (accounts, outgoing, incoming)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct(name: &str, posted: &str) -> AccountRow {
        AccountRow {
            account: name.into(),
            asset: "EUR".into(),
            posted: posted.into(),
            pending_debits: "0.00".into(),
            pending_credits: "0.00".into(),
            closed: false,
        }
    }

    fn head(seq: u64, hash: &str) -> HeadRow {
        HeadRow { seq, hash: hash.into() }
    }

    fn out(id: &str, to: &str, amount: &str, state: &str) -> OutgoingRow {
        OutgoingRow {
            id: id.into(),
            debit: "wallet:a".into(),
            to: to.into(),
            asset: "EUR".into(),
            amount: amount.into(),
            state: state.into(),
        }
    }

    fn inc(source: &str, id: &str, credit: &str, amount: &str, status: Status) -> IncomingRow {
        let code = if status == Status::Committed { Code::Ok } else { Code::UnknownAccount };
        let transfer = Delivery {
            source: source.into(),
            id: id.into(),
            debit: format!("wallet:a@{source}"),
            credit: credit.into(),
            asset: "EUR".into(),
            amount: amount.into(),
            proof: None,
        };
        IncomingRow { transfer, status, code, seq: Some(1) }
    }

    #[test]
    fn equal_books_have_no_difference() {
        let accounts = vec![acct("a", "1.00"), acct("b", "-1.00")];
        let d = compare_replica("eu/x", "eu", &head(3, "ab"), &head(3, "ab"), None, &accounts, &accounts);
        assert!(d.is_empty(), "{d:?}");
        // 4.5 and 4.50 are the same amount.
        let d = compare_replica("eu/x", "eu", &head(3, "ab"), &head(3, "ab"), None, &[acct("a", "4.5")], &[acct("a", "4.50")]);
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn replica_differences_are_named() {
        let edge = vec![acct("a", "3.00"), acct("b", "-3.00"), acct("c", "0.00")];
        let replica = vec![acct("a", "1.00"), acct("b", "-1.00")];
        let d = compare_replica("eu/x", "eu", &head(9, "ab"), &head(4, "cd"), None, &edge, &replica);
        assert_eq!(d[0], Difference::ReplicaBehind { edge: "eu/x".into(), region: "eu".into(), edge_seq: 9, replica_seq: 4 });
        assert!(d.contains(&Difference::BalanceMismatch {
            account: "a@eu/x".into(),
            asset: "EUR".into(),
            field: "posted".into(),
            edge: "3.00".into(),
            replica: "1.00".into()
        }));
        assert!(d.contains(&Difference::AccountMissing {
            account: "c@eu/x".into(),
            missing_on: "eu's replica".into(),
            present_on: "eu/x".into()
        }));
        assert_eq!(d.len(), 4, "{d:?}");
        let d = compare_replica("eu/x", "eu", &head(4, "ab"), &head(4, "cd"), Some("entry 5: tampered"), &[], &[]);
        assert!(matches!(d[0], Difference::ReplicaRefused { .. }));
        assert!(matches!(d[1], Difference::HeadHashMismatch { seq: 4, .. }));
        let d = compare_replica("eu/x", "eu", &head(2, "ab"), &head(4, "cd"), None, &[], &[]);
        assert!(matches!(d[0], Difference::ReplicaAhead { edge_seq: 2, replica_seq: 4, .. }));
    }

    #[test]
    fn transfers_agree_when_both_sides_decided_alike() {
        let outgoing =
            BTreeMap::from([("eu/a".to_string(), vec![out("t1", "m@us/b", "4.50", "posted"), out("t2", "n@us/b", "1.00", "voided")])]);
        let incoming = BTreeMap::from([
            (
                "us/b".to_string(),
                vec![inc("eu/a", "t1", "m@us/b", "4.5", Status::Committed), inc("eu/a", "t2", "n@us/b", "1.00", Status::Rejected)],
            ),
            ("eu/a".to_string(), vec![]),
        ]);
        let outgoing = {
            let mut o = outgoing;
            o.insert("us/b".into(), vec![]);
            o
        };
        assert_eq!(compare_transfers(&outgoing, &incoming, &|_| true), vec![]);
    }

    #[test]
    fn transfer_differences_are_named() {
        let outgoing = BTreeMap::from([
            (
                "eu/a".to_string(),
                vec![
                    out("pending-only", "m@us/b", "1.00", "pending"),
                    out("posted-only", "m@us/b", "2.00", "posted"),
                    out("amount", "m@us/b", "4.50", "pending"),
                    out("outcome", "m@us/b", "3.00", "posted"),
                    out("unsettled", "m@us/b", "3.00", "pending"),
                    out("elsewhere", "m@us/zz", "3.00", "pending"),
                ],
            ),
            ("us/b".to_string(), vec![]),
        ]);
        let incoming = BTreeMap::from([
            (
                "us/b".to_string(),
                vec![
                    inc("eu/a", "amount", "m@us/b", "4.00", Status::Committed),
                    inc("eu/a", "outcome", "m@us/b", "3.00", Status::Rejected),
                    inc("eu/a", "unsettled", "m@us/b", "3.00", Status::Committed),
                    inc("eu/a", "forged", "m@us/b", "9.00", Status::Committed),
                    inc("eu/q", "unread", "m@us/b", "9.00", Status::Committed),
                ],
            ),
            ("eu/a".to_string(), vec![]),
        ]);
        let d = compare_transfers(&outgoing, &incoming, &|_| true);
        let kinds: Vec<(String, String)> = d
            .iter()
            .map(|d| {
                let [k, w, _, _] = d.describe();
                (k, w)
            })
            .collect();
        let expect = [
            ("transfer_undelivered", "transfer pending-only eu/a -> us/b"),
            ("transfer_unknown_at_destination", "transfer posted-only eu/a -> us/b"),
            ("transfer_mismatch", "transfer amount eu/a -> us/b amount"),
            ("transfer_unsettled", "transfer amount eu/a -> us/b"),
            ("transfer_outcome_mismatch", "transfer outcome eu/a -> us/b"),
            ("transfer_unsettled", "transfer unsettled eu/a -> us/b"),
            ("transfer_unchecked", "transfer elsewhere eu/a -> us/zz"),
            ("transfer_unknown_at_source", "transfer forged eu/a -> us/b"),
            ("transfer_unchecked", "transfer unread eu/q -> us/b"),
        ];
        for (kind, place) in expect {
            assert!(kinds.contains(&(kind.to_string(), place.to_string())), "missing {kind} {place} in {kinds:#?}");
        }
        assert_eq!(d.len(), expect.len(), "{kinds:#?}");
        assert!(d.contains(&Difference::TransferMismatch {
            id: "amount".into(),
            source: "eu/a".into(),
            destination: "us/b".into(),
            field: "amount".into(),
            at_source: "4.50".into(),
            at_destination: "4.00".into()
        }));
        // Out of scope: nothing about eu/a's transfers when only us/zz is asked about... except its own.
        let d = compare_transfers(&outgoing, &incoming, &|n| n == "us/zz");
        assert_eq!(d.len(), 1, "{d:?}");
    }
}
