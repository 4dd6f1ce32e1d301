//! A region's replicas of its edges' journals in its file: rebuilding each replica's books
//! at start, appending verified entries, and reading them back.

use super::error::{Fault, StoreError};
use super::rows::replica_entries;
use super::{Store, REPLICA, REPLICA_SIGNED};
use crate::core::journal::{Chain, Entry};
use crate::core::{Ledger, LiveChanges};
use redb::{ReadableDatabase, ReadableTable};
use std::ops::Bound;

/// Entries verified and replayed into a replica's books, to be appended to its file.
pub struct ReplicaFrame<'a> {
    pub entries: &'a [Entry],
    /// The edge's signed head of the last of `entries`, when it sent one.
    pub signed_head: Option<&'a [u8]>,
    /// What the entries changed in the replica's live state.
    pub live: &'a LiveChanges,
}

impl Store {
    /// Rebuilds a region's replica of `edge` into `ledger`, verifying the chain; returns its end.
    pub fn load_replica(&self, edge: &str, ledger: &mut Ledger) -> Result<Chain, StoreError> {
        let mut read = || -> Result<Chain, Fault> {
            let db = self.db()?;
            let tx = db.begin_read()?;
            let replica = tx.open_table(REPLICA)?;
            let mut chain = Chain::default();
            for row in replica.range((edge, 0)..=(edge, u64::MAX))? {
                let (key, value) = row?;
                let entry = self.rows.decode(key.value().1, &chain.hash, &Chain::default(), value.value())?;
                let body = chain.verify_next(&entry)?;
                ledger.replay(&body).map_err(|e| Fault::Replay(format!("replica of {edge}: {e}")))?;
            }
            Ok(chain)
        };
        read().map_err(|f| self.fail(f))
    }

    /// Appends frames of verified entries to the replica of `edge`, in order and in one
    /// durable commit: each with the edge's signed head of its last entry when it sent one
    /// (the last such head is the one kept) and what it changed in the replica's live state.
    pub fn append_replica(&self, edge: &str, frames: &[ReplicaFrame<'_>]) -> Result<(), StoreError> {
        let write = || -> Result<(), Fault> {
            let db = self.db()?;
            let tx = self.begin_durable(&db)?;
            {
                let mut replica = tx.open_table(REPLICA)?;
                // Verified entries follow every row of the edge's replica: appended through
                // a cursor after its last row, packed into leaves in one splice per megabyte.
                // A seq not past that row is refused, not written.
                let mut append = replica.upper_bound_mut(Bound::Included((edge, u64::MAX)))?;
                for frame in frames {
                    for entry in frame.entries {
                        append
                            .insert_before((edge, entry.seq), &*self.rows.row(entry))
                            .map_err(|e| super::rows::not_past_the_end(e, &format!("replica of {edge}:"), entry.seq))?;
                    }
                    let head = frame.entries.last().map_or(0, |entry| entry.seq);
                    super::live::write_changes(&tx, super::live::Scope::Replica(edge), frame.live, head)?;
                }
                append.close()?;
            }
            // Each head signs its frame's last entry and, through the chain, all before it.
            if let Some(head) = frames.iter().rev().find_map(|frame| frame.signed_head) {
                tx.open_table(REPLICA_SIGNED)?.insert(edge, head)?;
            }
            tx.commit()?;
            Ok(())
        };
        self.write(write)
    }

    /// The last signed head `edge` sent with entries this replica stored, if any (a file
    /// written before heads were signed has none).
    pub fn replica_signed_head(&self, edge: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let read = || -> Result<Option<Vec<u8>>, Fault> {
            let db = self.db()?;
            let tx = db.begin_read()?;
            let table = match tx.open_table(REPLICA_SIGNED) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let head = table.get(edge)?.map(|v| v.value().to_vec());
            Ok(head)
        };
        read().map_err(|f| self.fail(f))
    }

    /// The edges a region's file holds replicas of.
    pub fn replica_edges(&self) -> Result<Vec<String>, StoreError> {
        let read = || -> Result<Vec<String>, Fault> {
            let db = self.db()?;
            let tx = db.begin_read()?;
            let replica = tx.open_table(REPLICA)?;
            let mut edges: Vec<String> = Vec::new();
            loop {
                let next = match edges.last() {
                    None => replica.iter()?.next(),
                    Some(last) => replica.range((std::ops::Bound::Excluded((last.as_str(), u64::MAX)), std::ops::Bound::Unbounded))?.next(),
                };
                match next {
                    Some(row) => edges.push(row?.0.value().0.to_string()),
                    None => return Ok(edges),
                }
            }
        };
        read().map_err(|f| self.fail(f))
    }

    /// Reads entries `from..` of the replica of `edge`, at most `limit` of them.
    pub fn replica_range(&self, edge: &str, from: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let read = || -> Result<Vec<Entry>, Fault> {
            let db = self.db()?;
            let tx = db.begin_read()?;
            replica_entries(self.rows, &tx.open_table(REPLICA)?, edge, from, u64::MAX, limit)
        };
        read().map_err(|f| self.fail(f))
    }
}
