//! A node's own journal in its file: rebuilding the books from it at start, the durable
//! commit of each group, and reading ranges back (for replication and history).

use super::error::{Fault, StoreError};
use super::id_tail::{fold, IDS_ARCHIVED};
use super::ids::{decode_record, encode_record, holds_reply, Stored};
use super::rows::{check_head, entries_in, not_past_the_end};
use super::{Store, IDS, JOURNAL, META};
use crate::core::idempotency::{reads_back, IdRecord};
use crate::core::journal::{hex, Chain, Entry};
use crate::core::{Effects, Journaled, Ledger, LiveChanges};
use redb::{ReadableDatabase, ReadableTable};
use std::ops::Bound;

impl Store {
    /// Rebuilds `ledger` from the file: every journal entry in order (after the anchor, from
    /// the books as of it, once entries were pruned), verifying the hash chain as it goes, and, for a ledger that keeps every id record in RAM, the records
    /// of rejected commands (replay restores the accepted ones). Returns the chain's end,
    /// where the next entry links.
    pub fn load(&self, ledger: &mut Ledger) -> Result<Chain, StoreError> {
        self.load_inner(ledger).map_err(|f| self.fail(f))
    }

    fn load_inner(&self, ledger: &mut Ledger) -> Result<Chain, Fault> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let ids = tx.open_table(IDS)?;
        for row in ids.iter()? {
            let (id, value) = row?;
            if !holds_reply(value.value()) {
                continue; // replay restores the ids of accepted commands
            }
            if !ledger.keeps_all_ids() {
                ledger.know_id(id.value());
                continue;
            }
            let record = decode_record(id.value(), value.value())
                .map_err(|e| Fault::Corrupt(format!("id record {:?} cannot be read: {e}", id.value())))?;
            if let Stored::Held(recorded) = record {
                ledger.restore_recorded(id.value().to_string(), *recorded);
            }
        }
        // A pruned journal is replayed from the books as of its anchor.
        let (anchor, state) = self.anchor_state_inner()?;
        if anchor.chain.seq > 0 {
            for (asset, scale) in &anchor.assets {
                ledger.learn_asset(asset, *scale);
            }
            ledger.restore_live(state.head, state.accounts, state.holds, state.received.into_values());
        }
        let journal = tx.open_table(JOURNAL)?;
        if let Some((last, _)) = journal.last()? {
            ledger.replaying_to(last.value());
        }
        let mut chain = anchor.chain;
        for row in journal.iter()? {
            let (seq, value) = row?;
            let entry = self.rows.decode(seq.value(), &chain.hash, &anchor.chain, value.value())?;
            let body = chain.verify_next(&entry)?;
            ledger.replay(&body).map_err(Fault::Replay)?;
        }
        // The head written with the last commit: a journal cut short at its end still
        // verifies link by link, but no longer reaches it.
        let head = tx.open_table(META)?.get("head")?.map(|v| v.value().to_string());
        check_head(self.rows, &anchor.chain, &chain, head.as_deref())?;
        ledger.check_invariants().map_err(Fault::Invariant)?;
        Ok(chain)
    }

    /// Seals the entries of a group of commands onto `chain` and writes them, with the id
    /// records and the group's changes to the live tables, in one durable commit. On error the chain may have advanced past what is
    /// stored: the caller must stop. Returns the sealed entries, for shipping to the region.
    pub fn commit<'a>(
        &self,
        chain: &mut Chain,
        effects: impl IntoIterator<Item = &'a Effects>,
        live: &LiveChanges,
    ) -> Result<Vec<Entry>, StoreError> {
        self.write(|| self.commit_inner(chain, effects, live))
    }

    fn commit_inner<'a>(
        &self,
        chain: &mut Chain,
        effects: impl IntoIterator<Item = &'a Effects>,
        live: &LiveChanges,
    ) -> Result<Vec<Entry>, Fault> {
        let effects = effects.into_iter();
        // Sized once: a group is up to thousands of effects.
        let mut sealed = Vec::with_capacity(effects.size_hint().0);
        let mut records = Vec::with_capacity(effects.size_hint().0);
        let mut deferred = Vec::new();
        let folds;
        let db = self.db()?;
        let tx = self.begin_durable(&db)?;
        // Held until the tail says what this commit did: a write that snapshots the tail
        // after this commit (a pruning pass) must find this group's records in it.
        let mut tail = self.id_tail();
        {
            let mut journal = tx.open_table(JOURNAL)?;
            // A group's entries follow every row the journal holds: appended through a cursor
            // at its end, they are packed into leaves in one splice per megabyte instead of a
            // walk down the tree per entry. A seq not past the last row is refused, not written.
            let mut append = journal.upper_bound_mut(Bound::<u64>::Unbounded)?;
            let mut ids = tx.open_table(IDS)?;
            for effect in effects {
                // Its ids' fingerprints need not be stored when the entry gives them back.
                let mut bare = false;
                if let Some(body) = &effect.entry {
                    let entry = chain.seal(body);
                    append.insert_before(entry.seq, &*self.rows.row(&entry)).map_err(|e| not_past_the_end(e, "journal", entry.seq))?;
                    sealed.push(entry);
                    bare = matches!(&body.command, Journaled::Device(command) if reads_back(command));
                }
                records.extend(effect.recorded.iter().map(|(id, record)| (id, record, bare)));
            }
            append.close()?;
            // The records the entries give back wait in the tail (`id_tail`) until it is
            // folded into the table; the others go in now, in key order, so the inserts walk
            // its leaves once instead of jumping between devices' ranges.
            records.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let deferrable = |record: &IdRecord, bare: bool| bare && matches!(record, IdRecord::Journaled { .. });
            folds = tail.folds(records.iter().filter(|(_, r, bare)| deferrable(r, *bare)).count(), chain.seq);
            if folds {
                // The tail first: a record of this group replaces an older one of its key.
                fold(&mut ids, &tail.records)?;
            }
            let mut bytes = Vec::new();
            for (id, record, bare) in records {
                bytes.clear();
                encode_record(record, bare, &mut bytes);
                if !folds && deferrable(record, bare) {
                    deferred.push((id.clone(), bytes.clone()));
                } else {
                    ids.insert(id.as_str(), bytes.as_slice())?;
                }
            }
            let mut meta = tx.open_table(META)?;
            meta.insert("head", format!("{}:{}", chain.seq, hex(&chain.hash)).as_str())?;
            if folds || (tail.records.is_empty() && deferred.is_empty()) {
                meta.insert(IDS_ARCHIVED, chain.seq.to_string().as_str())?;
            }
        }
        super::live::write_changes(&tx, super::live::Scope::Own, live, chain.seq)?;
        tx.commit()?;
        // Durable: the tail takes the group's records (or gives all of them to the table).
        match folds {
            true => tail.folded(chain.seq),
            false => tail.extend(deferred, chain.seq),
        }
        Ok(sealed)
    }

    /// Reads journal entries `from..=to` (inclusive; those not pruned), at most `limit` of them.
    pub fn journal_range(&self, from: u64, to: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let read = || -> Result<Vec<Entry>, Fault> {
            let db = self.db()?;
            let tx = db.begin_read()?;
            let anchor = super::anchor::anchor_in(&tx.open_table(META)?)?;
            entries_in(self.rows, &tx.open_table(JOURNAL)?, &anchor.chain, from, to, limit)
        };
        read().map_err(|f| self.fail(f))
    }

    /// Reads up to `limit` entries before `before`, newest first: from this node's journal,
    /// or with `replica_of`, from the replica of that edge.
    pub fn entries_before(&self, replica_of: Option<&str>, before: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        if before <= 1 || limit == 0 {
            return Ok(Vec::new());
        }
        let end = before - 1;
        let read = || -> Result<Vec<Entry>, Fault> {
            let db = self.db()?;
            let tx = db.begin_read()?;
            // Newest first: from the last entry there is before `before`.
            let first = |end: Option<u64>| end.map(|end| (end.saturating_sub(limit as u64 - 1).max(1), end));
            let mut out = match replica_of {
                None => {
                    let journal = tx.open_table(JOURNAL)?;
                    let Some((start, end)) = first(journal.range(1..=end)?.next_back().transpose()?.map(|(seq, _)| seq.value())) else {
                        return Ok(Vec::new());
                    };
                    let anchor = super::anchor::anchor_in(&tx.open_table(META)?)?;
                    entries_in(self.rows, &journal, &anchor.chain, start, end, limit)?
                }
                Some(edge) => {
                    let replica = tx.open_table(super::REPLICA)?;
                    let last = replica.range((edge, 1)..=(edge, end))?.next_back().transpose()?.map(|(key, _)| key.value().1);
                    let Some((start, end)) = first(last) else { return Ok(Vec::new()) };
                    super::rows::replica_entries(self.rows, &replica, edge, start, end, limit)?
                }
            };
            out.reverse();
            Ok(out)
        };
        read().map_err(|f| self.fail(f))
    }
}
