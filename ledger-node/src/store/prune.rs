//! Retention: pruning the oldest journal entries of an edge once its region holds them.
//! What goes, and what stays so that nothing is lost:
//! - the entries themselves, oldest first, never the newest (the journal's end is where
//!   the next entry links);
//! - the chain anchor (meta `anchor`: seq and hash of the last entry pruned, with its time
//!   and the scales of the assets opened before it): the journal is verified from there;
//! - the books as of the anchor (tables `anchor_*`, the live tables' rows): a replay, and
//!   `ledgerctl verify`, start from them instead of from an empty ledger;
//! - every id record that pointed into a pruned entry now holds its reply itself, so a
//!   resent id is still answered `duplicate` with its seq, exactly.
//!
//! All of it in one durable commit per pass. Must not: prune what the caller has not
//! checked its region holds, or rewrite an entry that stays.

use super::anchor::{anchor_in, write_anchor, Anchor};
use super::archive::StoreArchive;
use super::error::{Fault, StoreError};
use super::id_tail::{fold, IDS_ARCHIVED};
use super::ids::IdFault;
use super::ids::{decode_record, encode_pruned, fingerprint_of, ids_taken, Stored};
use super::live::{write_changes, Scope};
use super::rows::entries_in;
use super::{Store, IDS, JOURNAL, META};
use crate::core::idempotency::recorded_in_entry;
use crate::core::journal::Entry;
use crate::core::{Change, Head, Ledger, LiveState};
use redb::{ReadableDatabase, ReadableTable};
use std::sync::Arc;

/// The books as of the anchor, kept by the pruning thread between passes so that a pass
/// reads only the entries it prunes, not the books.
pub struct AnchorBooks {
    anchor: Anchor,
    ledger: Ledger,
    /// Where the ledger's archives report a hold or decision they could not read back.
    fault: IdFault,
}

/// Resolved holds and decisions the books as of the anchor keep in RAM: nothing reads them
/// but a replay that names them again, which only a damaged journal does.
const ANCHOR_CACHE: usize = 1_024;

/// One pass of pruning.
#[derive(Debug, Clone, Copy)]
pub struct Prune {
    /// The last entry that may go (the region has acknowledged it, and it is old enough
    /// by count).
    pub upto: u64,
    /// Entries written at or after this time stay (by age); None: any age.
    pub written_before_ms: Option<u64>,
    /// At most this many entries per pass: the committer waits for the pass's commit.
    pub max_entries: usize,
}

impl Store {
    /// The anchor of this node's journal.
    pub fn anchor(&self) -> Result<Anchor, StoreError> {
        self.anchor_in_file().map_err(|f| self.fail(f))
    }

    fn anchor_in_file(&self) -> Result<Anchor, Fault> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        anchor_in(&tx.open_table(META)?)
    }

    /// Entries from `from` on, at most `limit`, read in one transaction with the anchor, so
    /// that a pass between the two cannot make the answer start past `from`: Err(anchor)
    /// when `from` lies within the pruned part.
    pub fn range_after_anchor(&self, from: u64, limit: usize) -> Result<Result<Vec<Entry>, Anchor>, StoreError> {
        let read = || -> Result<Result<Vec<Entry>, Anchor>, Fault> {
            let db = self.db()?;
            let tx = db.begin_read()?;
            let anchor = anchor_in(&tx.open_table(META)?)?;
            if from <= anchor.chain.seq {
                return Ok(Err(anchor));
            }
            entries_in(self.rows, &tx.open_table(JOURNAL)?, &anchor.chain, from, u64::MAX, limit).map(Ok)
        };
        read().map_err(|f| self.fail(f))
    }

    /// The anchor and the books as of it: where a replay of the journal starts.
    pub fn anchor_state(&self) -> Result<(Anchor, LiveState), StoreError> {
        self.anchor_state_inner().map_err(|f| self.fail(f))
    }

    pub(super) fn anchor_state_inner(&self) -> Result<(Anchor, LiveState), Fault> {
        let anchor = self.anchor_in_file()?;
        let state = self.live_state_at(Scope::Anchor, Head { seq: anchor.chain.seq, ts_ms: anchor.ts_ms })?;
        Ok((anchor, state))
    }

    /// Prunes the entries after the anchor that `plan` lets go, replaying them onto the
    /// books as of the anchor. `books` carries those books from one pass to the next (None:
    /// read them from the tables into `empty()`, a ledger configured like the node's); it is
    /// None again after an error, since the pass's replay did not reach the file. Returns
    /// how many entries went.
    pub fn prune(
        self: &Arc<Self>,
        plan: Prune,
        books: &mut Option<AnchorBooks>,
        empty: impl FnOnce() -> Ledger,
    ) -> Result<u64, StoreError> {
        let taken = books.take();
        let result = self.write(|| {
            let mut anchored = match taken {
                Some(books) => books,
                None => self.anchor_books(empty())?,
            };
            let pruned = self.prune_inner(plan, &mut anchored)?;
            Ok((pruned, anchored))
        });
        result.map(|(pruned, anchored)| {
            *books = Some(anchored);
            pruned
        })
    }

    fn anchor_books(self: &Arc<Self>, mut ledger: Ledger) -> Result<AnchorBooks, Fault> {
        let anchor = self.anchor_in_file()?;
        // Its replay answers no command: it keeps no id records (pruned ids keep theirs in
        // the file), and its resolved holds and decisions leave RAM as the node's do, so no
        // memory grows with the entries it goes through.
        ledger.forget_ids();
        let fault = IdFault::default();
        let finals = StoreArchive::of_anchor(self.clone(), fault.clone());
        ledger.archive_holds(ANCHOR_CACHE, Box::new(finals.clone()));
        ledger.archive_received(ANCHOR_CACHE, Box::new(finals));
        let state = self.read_live_state(Scope::Anchor, Head { seq: anchor.chain.seq, ts_ms: anchor.ts_ms }, false)?;
        ledger.restore_live(state.head, state.accounts, state.holds, state.received.into_values());
        ledger.track_live_changes();
        Ok(AnchorBooks { anchor, ledger, fault })
    }

    fn prune_inner(&self, plan: Prune, books: &mut AnchorBooks) -> Result<u64, Fault> {
        let AnchorBooks { anchor, ledger, fault } = books;
        let group = ledger.next_group();
        if self.anchor_in_file()?.chain.seq != anchor.chain.seq {
            return Err(Fault::Corrupt("the journal's anchor moved under the pruning thread".to_string()));
        }
        let Anchor { mut chain, mut ts_ms, mut assets } = anchor.clone();
        let db = self.db()?;
        let tx = self.begin_durable(&db)?;
        let mut pruned = 0;
        let archived = super::archived_in(&tx.open_table(META)?)?.unwrap_or(0);
        let mut folded_to = None;
        {
            let mut journal = tx.open_table(JOURNAL)?;
            let mut ids = tx.open_table(IDS)?;
            let last = super::last_seq(&journal)?;
            let upto = plan.upto.min(last.saturating_sub(1));
            if upto <= chain.seq {
                return Ok(0);
            }
            if upto > archived {
                // The entries to prune are the only record of the ids in the tail
                // (`id_tail`): they go into the table first, in this commit. The tail is
                // complete up to `last`: a commit updates it before it lets go of its lock,
                // and no commit can start while this transaction is open.
                fold(&mut ids, &self.id_tail().records)?;
                folded_to = Some(last);
            }
            let rows = entries_in(self.rows, &journal, &chain, chain.seq + 1, upto, plan.max_entries)?;
            for entry in rows {
                let mut next = chain;
                let body = next.verify_next(&entry)?;
                if plan.written_before_ms.is_some_and(|before| body.ts_ms >= before) {
                    break;
                }
                ledger.replay(&body).map_err(Fault::Replay)?;
                for change in &body.changes {
                    if let Change::AccountOpened { asset, scale, .. } = change {
                        assets.insert(asset.clone(), *scale);
                    }
                }
                let mut bytes = Vec::new();
                for (key, op) in ids_taken(&body) {
                    let Some(stored) = ids.get(key.as_str())?.map(|v| decode_record(key.as_str(), v.value())) else { continue };
                    let stored = stored.map_err(|e| Fault::Corrupt(format!("id record {:?} cannot be read: {e}", key.as_str())))?;
                    // Only the record that points here; a rejection's stays as it is.
                    let Stored::Journaled { seq, fingerprint, .. } = stored else { continue };
                    if seq != entry.seq {
                        continue;
                    }
                    let fingerprint = fingerprint_of(fingerprint, &body, op, key.as_str())?;
                    let recorded = recorded_in_entry(&body, key.as_str(), op, fingerprint);
                    let recorded = recorded
                        .ok_or_else(|| Fault::Corrupt(format!("entry {seq} does not hold the command of id {:?}", key.as_str())))?;
                    bytes.clear();
                    encode_pruned(&recorded, key.id(), seq, &mut bytes);
                    ids.insert(key.as_str(), bytes.as_slice())?;
                }
                journal.remove(entry.seq)?;
                (chain, ts_ms) = (next, body.ts_ms);
                pruned += 1;
            }
            if pruned == 0 {
                return Ok(0); // nothing old enough: no commit, the committer need not wait
            }
            let mut meta = tx.open_table(META)?;
            write_anchor(&mut meta, &Anchor { chain, ts_ms, assets: assets.clone() })?;
            if let Some(last) = folded_to {
                meta.insert(IDS_ARCHIVED, last.to_string().as_str())?;
            }
        }
        if let Some(e) = fault.take() {
            return Err(Fault::Replay(format!("the books as of the anchor could not read a hold or decision back: {e}")));
        }
        ledger.check_invariants().map_err(|e| Fault::Invariant(format!("the books as of entry {}: {e}", chain.seq)))?;
        write_changes(&tx, Scope::Anchor, &ledger.take_live_changes(), chain.seq)?;
        // Held across the commit: a lookup must not find a tail record whose entry this
        // commit prunes (`Store::id_record` reads the tail and begins its read under it).
        let mut tail = self.id_tail();
        tx.commit()?;
        if let Some(last) = folded_to {
            tail.folded(last);
        }
        drop(tail);
        ledger.group_durable(group);
        *anchor = Anchor { chain, ts_ms, assets };
        Ok(pruned)
    }
}
