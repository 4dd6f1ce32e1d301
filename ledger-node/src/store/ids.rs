//! The id records in the file (table `ids`, key `principal:id`): every id a node took,
//! written in the same commit as its group, and read back for ids that left RAM.
//!
//! Value: tag `0` then the JSON of a rejection's `Recorded`; or tag `4`, the entry's seq
//! (varint) and the batch op's index plus one (varint; `0` for the command itself): the
//! reply is read from that entry (`recorded_in_entry`) and the fingerprint computed again
//! from it (`fingerprint_in_entry`), for a command that `reads_back`; or tag `2`, the same
//! after the fingerprint (16 bytes), for one that does not (a float in its metadata), so
//! the one taken at intake is kept; or, once that
//! entry is pruned (`prune`), tag `3`: the fingerprint (16 bytes), the seq (varint) and the
//! reply itself (`entry_codec::encode_reply`). Files of format 3 and before also hold tag
//! `1`: the fingerprint as 32 ASCII hex digits, seq (u64) and op (u32, `u32::MAX` for the
//! command itself), big-endian.

use super::error::{Fault, StoreError};
use super::{Store, IDS, JOURNAL};
use crate::core::entry_codec;
use crate::core::fingerprint::{Fingerprint, FINGERPRINT_BYTES};
use crate::core::idempotency::{fingerprint_in_entry, recorded_in_entry, sender_id, IdArchive, IdKey, IdRecord};
use crate::core::wire::{Reader, Writer};
use crate::core::Recorded;
use crate::core::{EntryBody, Journaled, Op};
use redb::{ReadableDatabase, ReadableTable};
use std::sync::{Arc, Mutex};

const REJECTED: u8 = 0;
const JOURNALED_HEX: u8 = 1;
const JOURNALED: u8 = 2;
const PRUNED: u8 = 3;
const JOURNALED_BARE: u8 = 4;
const FINGERPRINT_HEX_DIGITS: usize = 2 * FINGERPRINT_BYTES;
const NOT_IN_BATCH: u32 = u32::MAX;

/// An id record as the file holds it.
#[derive(Debug, PartialEq)]
pub(super) enum Stored {
    /// The record holds its reply: a rejection's, or an accepted command's whose entry was
    /// pruned.
    Held(Box<Recorded>),
    /// The command is in entry `seq` (op `op` of its batch), taken under `fingerprint`:
    /// None when it is computed again from the entry.
    Journaled { seq: u64, op: Option<usize>, fingerprint: Option<Fingerprint> },
}

/// `bare`: the entry's command `reads_back`, so its fingerprint is not stored.
pub(super) fn encode_record(record: &IdRecord, bare: bool, out: &mut Vec<u8>) {
    match record {
        IdRecord::Rejected(recorded) => {
            out.push(REJECTED);
            serde_json::to_writer(&mut *out, recorded).expect("record serializes");
        }
        IdRecord::Journaled { fingerprint, seq, op } => {
            if bare {
                return encode_bare(*seq, *op, out);
            }
            let mut w = Writer(out);
            w.u8(JOURNALED);
            w.bytes(&fingerprint.0);
            w.varint(*seq);
            w.varint(op.map_or(0, |i| i as u64 + 1));
        }
    }
}

/// The record of op `op` of entry `seq` (None: the command itself), whose entry gives the
/// fingerprint back.
pub(super) fn encode_bare(seq: u64, op: Option<usize>, out: &mut Vec<u8>) {
    let mut w = Writer(out);
    w.u8(JOURNALED_BARE);
    w.varint(seq);
    w.varint(op.map_or(0, |i| i as u64 + 1));
}

/// The ids an accepted device command took in `body`: its batch's ops', then its own (the
/// order the ledger records them; a batch never repeats an id).
pub(super) fn ids_taken(body: &EntryBody) -> Vec<(IdKey, Option<usize>)> {
    let (Some(_), Journaled::Device(command)) = (&body.reply, &body.command) else { return Vec::new() };
    let device = body.device.as_deref();
    let mut out = match &command.op {
        Op::Batch { ops } => ops.iter().enumerate().map(|(i, op)| (IdKey::new(device, &op.id), Some(i))).collect(),
        _ => Vec::new(),
    };
    out.push((IdKey::new(device, &command.id), None));
    out
}

/// The fingerprint of a journaled record: the one stored, or the one its entry gives.
pub(super) fn fingerprint_of(stored: Option<Fingerprint>, body: &EntryBody, op: Option<usize>, key: &str) -> Result<Fingerprint, Fault> {
    match stored {
        Some(fingerprint) => Ok(fingerprint),
        None => fingerprint_in_entry(body, op)
            .ok_or_else(|| Fault::Corrupt(format!("entry {} does not hold the command of id {key:?}", body.seq))),
    }
}

/// The record of an accepted command whose entry `seq` is being pruned: it holds the reply.
pub(super) fn encode_pruned(recorded: &Recorded, id: &str, seq: u64, out: &mut Vec<u8>) {
    let mut w = Writer(out);
    w.u8(PRUNED);
    w.bytes(&recorded.fingerprint.0);
    w.varint(seq);
    entry_codec::encode_reply(&recorded.reply, id, seq, out);
}

fn read_fingerprint(r: &mut Reader) -> Result<Fingerprint, String> {
    Ok(Fingerprint(r.take(FINGERPRINT_BYTES)?.try_into().expect("took 16 bytes")))
}

/// Whether a stored record holds its reply (no journal entry is needed to answer it).
pub(super) fn holds_reply(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(&REJECTED | &PRUNED))
}

/// Reads the record stored under `key` (`principal:id`).
pub(super) fn decode_record(key: &str, bytes: &[u8]) -> Result<Stored, String> {
    match bytes.split_first() {
        Some((&PRUNED, rest)) => {
            let mut r = Reader::new(rest);
            let fingerprint = read_fingerprint(&mut r)?;
            let seq = r.varint()?;
            let reply = entry_codec::decode_reply(r.take(r.left())?, sender_id(key), seq)?;
            Ok(Stored::Held(Box::new(Recorded { fingerprint, reply })))
        }
        Some((&REJECTED, json)) => serde_json::from_slice(json).map(|r| Stored::Held(Box::new(r))).map_err(|e| e.to_string()),
        Some((&(JOURNALED | JOURNALED_BARE), rest)) => {
            let mut r = Reader::new(rest);
            let fingerprint = if bytes[0] == JOURNALED { Some(read_fingerprint(&mut r)?) } else { None };
            let seq = r.varint()?;
            let op = match r.varint()? {
                0 => None,
                n => Some(usize::try_from(n - 1).map_err(|_| format!("op index {n} out of range"))?),
            };
            r.end()?;
            Ok(Stored::Journaled { seq, op, fingerprint })
        }
        Some((&JOURNALED_HEX, rest)) if rest.len() == FINGERPRINT_HEX_DIGITS + 12 => {
            let hex = std::str::from_utf8(&rest[..FINGERPRINT_HEX_DIGITS]).map_err(|e| e.to_string())?;
            let fingerprint = Fingerprint::parse_hex(hex).ok_or_else(|| format!("fingerprint {hex:?} is not 32 lowercase hex digits"))?;
            let seq = u64::from_be_bytes(rest[FINGERPRINT_HEX_DIGITS..FINGERPRINT_HEX_DIGITS + 8].try_into().expect("8 bytes"));
            let op = u32::from_be_bytes(rest[FINGERPRINT_HEX_DIGITS + 8..].try_into().expect("4 bytes"));
            Ok(Stored::Journaled { seq, op: (op != NOT_IN_BATCH).then_some(op as usize), fingerprint: Some(fingerprint) })
        }
        _ => Err(format!("unknown id record of {} bytes", bytes.len())),
    }
}

impl Store {
    /// The recorded result of `key` as the last commit left it.
    pub fn id_record(&self, key: &str) -> Result<Option<Recorded>, Fault> {
        // The tail first, then the table. A commit that folds or prunes changes the tail
        // with its lock held across the commit, and the read begins under that lock: a
        // record gone from the tail is in the table this read sees, and the entry of one
        // still in it is there too. (The file's lock first, as every writer takes them.)
        let db = self.db()?;
        let tail = self.id_tail();
        let in_tail = tail.records.get(key).cloned();
        let tx = db.begin_read()?;
        drop(tail);
        let ids = tx.open_table(IDS)?;
        let record = match in_tail {
            Some(bytes) => decode_record(key, &bytes),
            None => match ids.get(key)? {
                Some(value) => decode_record(key, value.value()),
                None => return Ok(None),
            },
        };
        let record = record.map_err(|e| Fault::Corrupt(format!("id record {key:?} cannot be read: {e}")))?;
        match record {
            Stored::Held(recorded) => Ok(Some(*recorded)),
            Stored::Journaled { seq, op, fingerprint } => {
                let journal = tx.open_table(JOURNAL)?;
                let bytes = journal.get(seq)?.ok_or_else(|| Fault::Corrupt(format!("id record {key:?} points at missing entry {seq}")))?;
                let body = self.rows.body(seq, bytes.value()).map_err(|e| Fault::Corrupt(format!("entry {seq} (of id {key:?}): {e}")))?;
                let fingerprint = fingerprint_of(fingerprint, &body, op, key)?;
                let recorded = recorded_in_entry(&body, key, op, fingerprint);
                let recorded = recorded.ok_or_else(|| Fault::Corrupt(format!("entry {seq} does not hold the command of id {key:?}")))?;
                Ok(Some(recorded))
            }
        }
    }
}

/// The node's file as the ledger's id archive. A record that cannot be read back is not
/// an id the node never saw: the fault is kept for the intake (`IdFault`), which stops the
/// node before the group that asked is committed or answered.
pub struct StoreIds {
    store: Arc<Store>,
    fault: IdFault,
}

/// The first fault met reading id records back, if any.
#[derive(Clone, Default)]
pub struct IdFault(Arc<Mutex<Option<StoreError>>>);

impl IdFault {
    pub fn take(&self) -> Option<StoreError> {
        self.0.lock().expect("lock").take()
    }

    /// Keeps `fault` unless an earlier one is kept.
    pub(super) fn record(&self, fault: StoreError) {
        self.0.lock().expect("lock").get_or_insert(fault);
    }
}

impl StoreIds {
    pub fn new(store: Arc<Store>) -> (StoreIds, IdFault) {
        let fault = IdFault::default();
        (StoreIds { store, fault: fault.clone() }, fault)
    }
}

impl IdArchive for StoreIds {
    fn lookup(&self, key: &str) -> Option<Recorded> {
        match self.store.id_record(key) {
            Ok(found) => found,
            Err(fault) => {
                self.fault.record(self.store.fail(fault));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::reply::{Reply, Status};

    #[test]
    fn records_round_trip() {
        let fingerprint = Fingerprint::parse_hex("0123456789abcdef0123456789abcdef").unwrap();
        let rejected = Recorded { fingerprint, reply: Reply::ok("t-1", Status::Committed, 3, "x") };
        let cases = [
            (
                IdRecord::Journaled { fingerprint, seq: 42, op: None },
                false,
                Stored::Journaled { seq: 42, op: None, fingerprint: Some(fingerprint) },
            ),
            (
                IdRecord::Journaled { fingerprint, seq: u64::MAX, op: Some(7) },
                false,
                Stored::Journaled { seq: u64::MAX, op: Some(7), fingerprint: Some(fingerprint) },
            ),
            (
                IdRecord::Journaled { fingerprint, seq: 42, op: Some(3) },
                true,
                Stored::Journaled { seq: 42, op: Some(3), fingerprint: None },
            ),
            (IdRecord::Rejected(Box::new(rejected.clone())), true, Stored::Held(Box::new(rejected))),
        ];
        for (record, bare, stored) in &cases {
            let mut bytes = Vec::new();
            encode_record(record, *bare, &mut bytes);
            assert_eq!(&decode_record("pos-1:t-1", &bytes).unwrap(), stored);
        }
        let mut bytes = Vec::new();
        encode_record(&cases[0].0, false, &mut bytes);
        assert_eq!(bytes.len(), 1 + 16 + 1 + 1, "tag, fingerprint, seq, op");
        assert_eq!(bytes[17..], [42, 0]);
        bytes.clear();
        encode_record(&cases[0].0, true, &mut bytes);
        assert_eq!(bytes, [JOURNALED_BARE, 42, 0], "tag, seq, op: the entry gives the fingerprint back");
        // As files of format 3 and before hold it.
        let mut old = vec![JOURNALED_HEX];
        old.extend_from_slice(fingerprint.to_string().as_bytes());
        old.extend_from_slice(&42u64.to_be_bytes());
        old.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode_record("pos-1:t-1", &old).unwrap(), Stored::Journaled { seq: 42, op: None, fingerprint: Some(fingerprint) });
        for bad in [
            &[1, 2, 3][..],
            &[JOURNALED, 0x80],
            &[JOURNALED, 1, 0, 0],
            &[],
            &[PRUNED, 1, 2],
            &[JOURNALED_BARE, 42],
            &[JOURNALED_BARE, 1, 0, 0],
        ] {
            assert!(decode_record("pos-1:t-1", bad).is_err(), "{bad:?}");
        }
        // Pruned: the reply travels with the record, without its id and seq.
        let recorded = Recorded {
            fingerprint: Fingerprint::parse_hex(&"00ff".repeat(8)).unwrap(),
            reply: Reply::ok("t-1", Status::Committed, 42, "transfer committed"),
        };
        let mut bytes = Vec::new();
        encode_pruned(&recorded, "t-1", 42, &mut bytes);
        assert_eq!(bytes.len(), 1 + 16 + 1 + 4);
        assert!(holds_reply(&bytes));
        assert_eq!(decode_record("pos-1:t-1", &bytes).unwrap(), Stored::Held(Box::new(recorded)));
    }
}
