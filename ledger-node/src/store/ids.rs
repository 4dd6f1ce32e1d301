//! The id records in the file (table `ids`, key `principal:id`): every id a node took,
//! written in the same commit as its group, and read back for ids that left RAM.
//!
//! Value: tag `0` then the JSON of a rejection's `Recorded`; or tag `2`, the fingerprint (16
//! bytes), the entry's seq (varint) and the batch op's index plus one (varint; `0` for the
//! command itself): the reply is read from that entry. Files of format 3 and before also
//! hold tag `1`: the fingerprint as 32 ASCII hex digits, seq (u64) and op (u32, `u32::MAX`
//! for the command itself), big-endian.

use super::error::{Fault, StoreError};
use super::{Store, IDS, JOURNAL};
use crate::core::idempotency::{journaled_recorded, IdArchive, IdRecord};
use crate::core::journal::Entry;
use crate::core::wire::{Reader, Writer};
use crate::core::Recorded;
use redb::ReadableDatabase;
use std::sync::{Arc, Mutex};

const REJECTED: u8 = 0;
const JOURNALED_HEX: u8 = 1;
const JOURNALED: u8 = 2;
const FINGERPRINT_HEX_DIGITS: usize = 32;
const NOT_IN_BATCH: u32 = u32::MAX;

pub(super) fn encode_record(record: &IdRecord, out: &mut Vec<u8>) {
    match record {
        IdRecord::Rejected(recorded) => {
            out.push(REJECTED);
            serde_json::to_writer(&mut *out, recorded).expect("record serializes");
        }
        IdRecord::Journaled { fingerprint, seq, op } => {
            assert_eq!(fingerprint.len(), FINGERPRINT_HEX_DIGITS, "fingerprints are 32 hex digits");
            let mut w = Writer(out);
            w.u8(JOURNALED);
            for pair in fingerprint.as_bytes().chunks(2) {
                w.u8(hex_digit(pair[0]) << 4 | hex_digit(pair[1]));
            }
            w.varint(*seq);
            w.varint(op.map_or(0, |i| i as u64 + 1));
        }
    }
}

fn hex_digit(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => panic!("fingerprints are lowercase hex, found {:?}", c as char),
    }
}

/// Whether a stored record is a rejection's (no journal entry holds it).
pub(super) fn is_rejection(bytes: &[u8]) -> bool {
    bytes.first() == Some(&REJECTED)
}

pub(super) fn decode_record(bytes: &[u8]) -> Result<IdRecord, String> {
    match bytes.split_first() {
        Some((&REJECTED, json)) => serde_json::from_slice(json).map(|r| IdRecord::Rejected(Box::new(r))).map_err(|e| e.to_string()),
        Some((&JOURNALED, rest)) => {
            let mut r = Reader::new(rest);
            let fingerprint = r.take(FINGERPRINT_HEX_DIGITS / 2)?.iter().map(|b| format!("{b:02x}")).collect();
            let seq = r.varint()?;
            let op = match r.varint()? {
                0 => None,
                n => Some(usize::try_from(n - 1).map_err(|_| format!("op index {n} out of range"))?),
            };
            r.end()?;
            Ok(IdRecord::Journaled { fingerprint, seq, op })
        }
        Some((&JOURNALED_HEX, rest)) if rest.len() == FINGERPRINT_HEX_DIGITS + 12 => {
            let fingerprint = std::str::from_utf8(&rest[..FINGERPRINT_HEX_DIGITS]).map_err(|e| e.to_string())?.to_string();
            let seq = u64::from_be_bytes(rest[FINGERPRINT_HEX_DIGITS..FINGERPRINT_HEX_DIGITS + 8].try_into().expect("8 bytes"));
            let op = u32::from_be_bytes(rest[FINGERPRINT_HEX_DIGITS + 8..].try_into().expect("4 bytes"));
            Ok(IdRecord::Journaled { fingerprint, seq, op: (op != NOT_IN_BATCH).then_some(op as usize) })
        }
        _ => Err(format!("unknown id record of {} bytes", bytes.len())),
    }
}

impl Store {
    /// The recorded result of `key` as the last commit left it.
    pub fn id_record(&self, key: &str) -> Result<Option<Recorded>, Fault> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let ids = tx.open_table(IDS)?;
        let Some(value) = ids.get(key)? else { return Ok(None) };
        let record = decode_record(value.value()).map_err(|e| Fault::Corrupt(format!("id record {key:?} cannot be read: {e}")))?;
        match record {
            IdRecord::Rejected(recorded) => Ok(Some(*recorded)),
            IdRecord::Journaled { fingerprint, seq, op } => {
                let journal = tx.open_table(JOURNAL)?;
                let bytes = journal.get(seq)?.ok_or_else(|| Fault::Corrupt(format!("id record {key:?} points at missing entry {seq}")))?;
                let entry = Entry::decode(seq, bytes.value())?;
                let body = entry.parse_body().map_err(|e| Fault::Corrupt(format!("entry {seq} (of id {key:?}): {e}")))?;
                let recorded = journaled_recorded(&body, fingerprint, op)
                    .ok_or_else(|| Fault::Corrupt(format!("entry {seq} does not hold the command of id {key:?}")))?;
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
                self.fault.0.lock().expect("lock").get_or_insert(self.store.fail(fault));
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
        let fingerprint = "0123456789abcdef0123456789abcdef".to_string();
        let records = [
            IdRecord::Journaled { fingerprint: fingerprint.clone(), seq: 42, op: None },
            IdRecord::Journaled { fingerprint: fingerprint.clone(), seq: u64::MAX, op: Some(7) },
            IdRecord::Rejected(Box::new(Recorded { fingerprint: fingerprint.clone(), reply: Reply::ok("t-1", Status::Committed, 3, "x") })),
        ];
        for record in &records {
            let mut bytes = Vec::new();
            encode_record(record, &mut bytes);
            assert_eq!(&decode_record(&bytes).unwrap(), record);
        }
        let mut bytes = Vec::new();
        encode_record(&records[1], &mut bytes);
        assert_eq!(bytes.len(), 1 + 16 + 10 + 1, "tag, fingerprint, seq, op");
        // As files of format 3 and before hold it.
        let mut old = vec![JOURNALED_HEX];
        old.extend_from_slice(fingerprint.as_bytes());
        old.extend_from_slice(&42u64.to_be_bytes());
        old.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode_record(&old).unwrap(), records[0]);
        assert!(decode_record(&[1, 2, 3]).is_err());
        assert!(decode_record(&[JOURNALED, 1, 2, 3]).is_err());
        assert!(decode_record(&[]).is_err());
    }
}
