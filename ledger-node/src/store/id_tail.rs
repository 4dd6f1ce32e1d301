//! The id records of accepted commands at the journal's end that the `ids` table does not
//! hold yet: those whose entry gives the fingerprint back (`reads_back`), so that the record
//! is only "op `op` of entry `seq`" and the journal row already written says it in full.
//!
//! Why: a device's ids land all over the `ids` B-tree, so writing each group's records
//! costs one leaf page per command in every commit, about half of a small group's commit.
//! Held here instead, they go in `FOLD_IDS` at a time, in key order, where a device's
//! consecutive ids share leaves. Meta `ids_archived` says up to which entry the table is
//! complete; the records after it are read again from those entries when the file is
//! opened. A lookup reads here before the table (`Store::id_record`), and so does the scan
//! that builds the id filter, so an id is in RAM or in the file from its commit on.
//!
//! Owns the tail and when it is folded; must not hold a record the journal cannot give
//! back (rejections and commands with a float in their metadata go into the table at once).

use super::error::Fault;
use super::ids::{encode_bare, ids_taken};
use super::rows::Rows;
use crate::core::idempotency::{reads_back, IdKey};
use crate::core::{EntryBody, Journaled};
use redb::{ReadableTable, Table};
use std::collections::HashMap;

/// The tail is folded into the table once it holds this many records. Its bound in RAM is
/// this plus one group's records; a fold writes that many records in one commit, so it is
/// also what a fold adds to that commit (2,048 made one commit in a hundred take 2.5-10 ms
/// at 20,000 commands/s and raised the p99; 512 still writes a few pages where a group
/// per commit wrote one per command).
pub const FOLD_IDS: usize = 512;
/// ... or once it spans this many entries, so that a journal of node commands (expiries)
/// leaves no long tail to read at the next open.
pub const FOLD_ENTRIES: u64 = 8192;
/// Meta key: every id record of the entries up to this seq is in the `ids` table.
pub(super) const IDS_ARCHIVED: &str = "ids_archived";

/// Records by `principal:id` key, each as the `ids` table would hold it.
#[derive(Debug, Default)]
pub struct IdTail {
    /// The table holds every record of the entries up to this one.
    pub(super) after: u64,
    /// std's SipHash with a random key: device-chosen keys must not collide.
    pub(super) records: HashMap<String, Vec<u8>>,
}

impl IdTail {
    /// Whether a commit that leaves the journal at `head`, with `adding` records of its own
    /// to defer, folds (and then writes its own into the table too).
    pub(super) fn folds(&self, adding: usize, head: u64) -> bool {
        self.records.len().saturating_add(adding) >= FOLD_IDS || head.saturating_sub(self.after) >= FOLD_ENTRIES
    }

    /// After a commit to `head` that folded: the table holds everything.
    pub(super) fn folded(&mut self, head: u64) {
        self.records.clear();
        self.after = head;
    }

    /// After a commit to `head` that did not fold: its records wait here. An empty tail
    /// follows the head, so that the next open reads no entries back.
    pub(super) fn extend(&mut self, records: Vec<(String, Vec<u8>)>, head: u64) {
        if self.records.is_empty() && records.is_empty() {
            self.after = head;
        }
        self.records.extend(records);
        debug_assert!(self.records.len() < FOLD_IDS, "a tail that reaches FOLD_IDS is folded");
    }

    /// The tail of a file: the deferred records of its entries after `after`, as the
    /// commits that wrote them deferred them.
    pub(super) fn read(rows: Rows, after: u64, journal: &impl ReadableTable<u64, &'static [u8]>) -> Result<IdTail, Fault> {
        let mut tail = IdTail { after, records: HashMap::new() };
        for row in journal.range(after.saturating_add(1)..)? {
            let (seq, bytes) = row?;
            let seq = seq.value();
            let body = rows.body(seq, bytes.value()).map_err(|e| Fault::Corrupt(format!("entry {seq}: {e}")))?;
            tail.records.extend(deferred_records(&body));
        }
        Ok(tail)
    }
}

/// The records a commit of `body` leaves to the tail: those of an accepted device command
/// that `reads_back` (`ids_taken`: its batch's ops first, then itself).
pub(super) fn deferred_records(body: &EntryBody) -> Vec<(String, Vec<u8>)> {
    if !matches!(&body.command, Journaled::Device(command) if reads_back(command)) {
        return Vec::new();
    }
    let record = |(key, op): (IdKey, Option<usize>)| {
        let mut bytes = Vec::new();
        encode_bare(body.seq, op, &mut bytes);
        (key.into_string(), bytes)
    };
    ids_taken(body).into_iter().map(record).collect()
}

/// Writes the tail into the table in key order.
pub(super) fn fold(ids: &mut Table<&str, &[u8]>, tail: &HashMap<String, Vec<u8>>) -> Result<(), Fault> {
    let mut all: Vec<(&String, &Vec<u8>)> = tail.iter().collect();
    all.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (key, value) in all {
        ids.insert(key.as_str(), value.as_slice())?;
    }
    Ok(())
}

impl super::Store {
    /// Folds the tail into the table now, whatever its size: the file then holds every id
    /// record in its table, as releases before format 7 wrote it (tests of older files).
    pub fn fold_ids(&self) -> Result<(), super::StoreError> {
        self.write(|| {
            let db = self.db()?;
            let tx = self.begin_durable(&db)?;
            let mut tail = self.id_tail();
            let head = super::last_seq(&tx.open_table(super::JOURNAL)?)?;
            fold(&mut tx.open_table(super::IDS)?, &tail.records)?;
            tx.open_table(super::META)?.insert(IDS_ARCHIVED, head.to_string().as_str())?;
            tx.commit()?;
            tail.folded(head);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::command::{Command, Movement};
    use crate::core::reply::{Reply, Status};
    use crate::core::Op;

    fn pay(id: &str, metadata: Option<serde_json::Value>) -> Command {
        let movement = Movement { debit: "a".into(), credit: "b".into(), amount: "1.00".into(), asset: "EUR".into(), metadata };
        Command { id: id.into(), op: Op::Transfer(movement) }
    }

    fn body(seq: u64, command: Command, accepted: bool) -> EntryBody {
        let reply = accepted.then(|| Reply::ok(&command.id, Status::Committed, seq, "transfer committed"));
        EntryBody { seq, ts_ms: 1, device: Some("pos-1".into()), command: Journaled::Device(command), changes: Vec::new(), reply }
    }

    #[test]
    fn a_tail_folds_at_its_bounds_and_an_empty_one_follows_the_head() {
        let mut tail = IdTail::default();
        assert!(!tail.folds(FOLD_IDS - 1, 1) && tail.folds(FOLD_IDS, 1), "by records");
        assert!(!tail.folds(0, FOLD_ENTRIES - 1) && tail.folds(0, FOLD_ENTRIES), "by entries, records or not");
        tail.extend(Vec::new(), 7);
        assert_eq!(tail.after, 7, "nothing waits: the table is complete up to the head");
        tail.extend(vec![("pos-1:t1".into(), vec![4, 8, 0])], 8);
        tail.extend(Vec::new(), 9);
        assert_eq!((tail.after, tail.records.len()), (7, 1), "entry 8's record waits: the mark stays before it");
        assert!(tail.folds(0, 7 + FOLD_ENTRIES));
        tail.folded(9);
        assert_eq!((tail.after, tail.records.len()), (9, 0));
    }

    #[test]
    fn the_deferred_records_are_a_command_that_reads_back_its_ops_first() {
        let batch = Command { id: "b1".into(), op: Op::Batch { ops: vec![pay("b1-a", None), pay("b1-b", None)] } };
        let records = deferred_records(&body(12, batch, true));
        let keys: Vec<&str> = records.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["pos-1:b1-a", "pos-1:b1-b", "pos-1:b1"]);
        let mut expected = Vec::new();
        encode_bare(12, Some(1), &mut expected);
        assert_eq!(records[1].1, expected, "op 1 of entry 12");
        assert!(deferred_records(&body(13, pay("t2", None), false)).is_empty(), "not accepted");
        let float = pay("t3", Some(serde_json::json!({"kwh": 1.5})));
        assert!(deferred_records(&body(14, float, true)).is_empty(), "its fingerprint is kept in the table");
        assert_eq!(deferred_records(&body(15, pay("t4", Some(serde_json::json!({"n": 2}))), true)).len(), 1);
    }
}
