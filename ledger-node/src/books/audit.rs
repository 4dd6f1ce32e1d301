//! Verification of a journal from its bytes alone (SPEC §7 `verify`, §8.1 and §8.5): every
//! entry links to the one before (no gap, hash chain intact), every entry's changes apply,
//! and the rebuilt books balance. Needs no config: assets and their scales come from the
//! journal's own account openings.
//!
//! Pure: the caller feeds entries (from a redb file or over zenoh) and reports progress.

use crate::core::journal::{hex, Chain, Entry};
use crate::core::money::Assets;
use crate::core::{Ledger, Limits, LiveState, Permissions};
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;

pub struct Audit {
    chain: Chain,
    ledger: Ledger,
}

/// What a verified journal holds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub node: String,
    pub entries: u64,
    pub head_hash: String,
    pub accounts: usize,
    pub pending_holds: usize,
    pub transfers_sent: usize,
    pub transfers_received: usize,
}

impl Audit {
    pub fn new(node_id: &str) -> Audit {
        let assets = Assets::new(&[], |_| Decimal::from(i64::MAX));
        let limits = Limits { max_batch_ops: usize::MAX, max_hold_timeout_s: u64::MAX };
        let mut ledger = Ledger::new(node_id, assets, limits, Permissions::open());
        // An audit checks chains and sums; it answers no command, so it keeps no id records.
        ledger.forget_ids();
        Audit { chain: Chain::default(), ledger }
    }

    /// An audit of a pruned journal: from its anchor (the last entry pruned) and the books
    /// as of it, with the scales of the assets opened before.
    pub fn from_anchor(node_id: &str, anchor: Chain, assets: &BTreeMap<String, u32>, books: LiveState) -> Audit {
        let mut audit = Audit::new(node_id);
        for (asset, scale) in assets {
            audit.ledger.learn_asset(asset, *scale);
        }
        audit.ledger.restore_live(books.head, books.accounts, books.holds, books.received.into_values());
        audit.chain = anchor;
        audit
    }

    /// The sequence number the next entry must carry.
    pub fn next_seq(&self) -> u64 {
        self.chain.seq + 1
    }

    /// Verifies and applies the next entry; the error names the entry and what is wrong.
    pub fn feed(&mut self, entry: &Entry) -> Result<(), String> {
        if entry.seq != self.chain.seq + 1 {
            return Err(format!("entry {}: expected entry {} next (a gap in the journal)", entry.seq, self.chain.seq + 1));
        }
        let body = self.chain.verify_next(entry).map_err(|e| format!("entry {}: {e}", entry.seq))?;
        self.ledger.learn_assets(&body);
        self.ledger.replay(&body)
    }

    /// Checks the rebuilt books (sums to zero per asset, floors, holds) and sums them up.
    pub fn finish(&self) -> Result<Summary, String> {
        self.ledger.check_invariants().map_err(|e| format!("after entry {}: {e}", self.chain.seq))?;
        Ok(Summary {
            node: self.ledger.node_id().to_string(),
            entries: self.chain.seq,
            head_hash: hex(&self.chain.hash),
            accounts: self.ledger.accounts().count(),
            pending_holds: self.ledger.pending_holds(None, usize::MAX).len(),
            transfers_sent: self.ledger.cross_node_holds().count(),
            transfers_received: self.ledger.received_all().count(),
        })
    }

    pub fn chain(&self) -> Chain {
        self.chain
    }

    /// The live state the journal rebuilds, to compare with a node's live tables.
    pub fn live_state(&self) -> LiveState {
        self.ledger.live_state()
    }
}
