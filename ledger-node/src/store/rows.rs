//! How a file stores journal entries, in its own journal and in a region's replicas.
//!
//! `Compact` (files made by format 5 on): a row is the entry's body alone, and every
//! `CHECKPOINT`th row (seq a multiple of it) starts with the entry's hash. The hash chain
//! is what it always was (`hash_of(prev, seq, body)`): a reader links the rows as it reads
//! them, from the closest row at or before them that holds its hash (or the anchor of a
//! pruned journal, or the genesis), hashing at most `CHECKPOINT - 1` bodies to get there.
//! A changed byte still breaks the chain: the hash computed through it no longer matches
//! the next checkpoint, nor the head the last commit recorded, nor the edge's signed head.
//! `Linked` (files of earlier formats, which keep their layout for good): the previous
//! hash, the hash, the body, as a replication frame carries an entry.
//!
//! Must not: mix layouts in one file, or trust a row's length.

use super::error::Fault;
use crate::core::journal::{hash_of, hex, parse_body, Chain, ChainError, Entry, Hash};
use crate::core::EntryBody;
use redb::ReadableTable;
use std::borrow::Cow;

const HASH: usize = 32;
/// Rows between two that hold their hash: 1/64 of a hash per entry on disk, and at most 63
/// bodies hashed to link a read that starts between them (about 10 µs).
pub const CHECKPOINT: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    Linked,
    Compact,
}

/// A cursor's refusal of a row that does not sort after the rows there are (`table`'s
/// entry `seq`, appended), told as what it means: the books in memory are behind the file.
pub(super) fn not_past_the_end(error: redb::CursorError, table: &str, seq: u64) -> Fault {
    match error {
        redb::CursorError::UnorderedKey => Fault::Corrupt(format!(
            "{table} entry {seq} would be written over or before a row the file holds: the books in memory are behind the file"
        )),
        other => other.into(),
    }
}

/// Rows as read from a table: seq and stored bytes, in order.
pub(super) type RawRows = Vec<(u64, Vec<u8>)>;

/// Rows a range read makes room for up front (a frame and a checkpoint span fit).
const RAW_ROWS_RESERVED: usize = 4096;

impl Rows {
    /// How meta `rows` names the layout.
    pub(super) fn name(self) -> &'static str {
        match self {
            Rows::Linked => "linked",
            Rows::Compact => "compact",
        }
    }

    pub(super) fn named(name: &str) -> Option<Rows> {
        [Rows::Linked, Rows::Compact].into_iter().find(|rows| rows.name() == name)
    }

    fn holds_hash(self, seq: u64) -> bool {
        match self {
            Rows::Linked => true,
            Rows::Compact => seq.is_multiple_of(CHECKPOINT),
        }
    }

    /// The row of `entry`: borrowed where it is the body alone (a compact row between
    /// checkpoints, 63 rows in 64), so the commit writes it without a copy.
    pub fn row(self, entry: &Entry) -> Cow<'_, [u8]> {
        match self {
            Rows::Linked => Cow::Owned(entry.encode()),
            Rows::Compact if !self.holds_hash(entry.seq) => Cow::Borrowed(&entry.body),
            Rows::Compact => {
                let mut out = Vec::with_capacity(HASH + entry.body.len());
                out.extend_from_slice(&entry.hash);
                out.extend_from_slice(&entry.body);
                Cow::Owned(out)
            }
        }
    }

    /// The entry in row `seq`, which a compact row links to `prev`: the hash of the row
    /// before it as the reader found it (through `start`, the anchor or the genesis). A
    /// linked row keeps the link and hash it stores, which a chain check compares with the
    /// chain; a compact checkpoint's stored hash must be the one computed, or some entry
    /// since the checkpoint before it (or `start`) was changed.
    pub fn decode(self, seq: u64, prev: &Hash, start: &Chain, bytes: &[u8]) -> Result<Entry, ChainError> {
        match self {
            Rows::Linked => Entry::decode(seq, bytes),
            Rows::Compact => {
                let (stored, body) = self.split(seq, bytes)?;
                let hash = hash_of(prev, seq, body);
                if stored.is_some_and(|stored| stored != hash) {
                    return Err(ChainError::BadSpan { from: self.span_start(seq, start), to: seq });
                }
                Ok(Entry { seq, prev: *prev, hash, body: body.to_vec() })
            }
        }
    }

    /// The first entry hashed since the last stored hash before `seq` (or `start`): where
    /// a change that `seq`'s hash reveals may be.
    pub(super) fn span_start(self, seq: u64, start: &Chain) -> u64 {
        match self {
            Rows::Linked => seq,
            Rows::Compact => (seq.saturating_sub(1) / CHECKPOINT * CHECKPOINT).max(start.seq) + 1,
        }
    }

    /// What the body of row `seq` says (its hash unchecked: for lookups of an entry the
    /// node itself wrote, not for verification).
    pub fn body(self, seq: u64, bytes: &[u8]) -> Result<EntryBody, ChainError> {
        let (_, body) = self.split(seq, bytes)?;
        parse_body(seq, body)
    }

    /// The row to read from so that row `from` can be linked, after `start` (the anchor,
    /// or the genesis): the closest one at or before `from - 1` that holds its hash.
    pub(super) fn base(self, from: u64, start: &Chain) -> u64 {
        let before = from.saturating_sub(1);
        let checkpoint = match self {
            Rows::Linked => before,
            Rows::Compact => before - before % CHECKPOINT,
        };
        checkpoint.max(start.seq)
    }

    /// The entries `from..` of `rows`, which were read from `self.base(from, start)` on,
    /// in order, without gaps.
    pub(super) fn link(self, from: u64, start: &Chain, rows: RawRows) -> Result<Vec<Entry>, Fault> {
        let base = self.base(from, start);
        let mut prev = start.hash;
        // Sized once: a growing vector of a frame's entries moves into fresh memory at each
        // doubling, and fresh memory is faulted in (a third of an edge's time serving a
        // region's catch-up, `ledger-bench geo`).
        let mut out = Vec::with_capacity(rows.len());
        for (expected, (seq, bytes)) in (base.max(start.seq + 1)..).zip(rows) {
            if seq != expected {
                return Err(Fault::Corrupt(format!("journal row {expected} is missing (found {seq})")));
            }
            if seq < from {
                // Only hashing on the way to `from`.
                let (stored, body) = self.split(seq, &bytes)?;
                prev = stored.filter(|_| seq == base).unwrap_or_else(|| hash_of(&prev, seq, body));
                continue;
            }
            let entry = self.decode(seq, &prev, start, &bytes)?;
            prev = entry.hash;
            out.push(entry);
        }
        Ok(out)
    }

    fn split(self, seq: u64, bytes: &[u8]) -> Result<(Option<Hash>, &[u8]), ChainError> {
        let (skip, hash) = match self {
            Rows::Linked => (HASH, true),
            Rows::Compact => (0, self.holds_hash(seq)),
        };
        if !hash {
            return Ok((None, bytes));
        }
        if bytes.len() < skip + HASH {
            return Err(ChainError::Truncated { seq });
        }
        let stored: Hash = bytes[skip..skip + HASH].try_into().expect("32 bytes");
        Ok((Some(stored), &bytes[skip + HASH..]))
    }
}

/// The entries `from..=to` of `journal` that were not pruned (`anchor`: where the pruned part
/// ends), at most `limit`, decoded and linked.
pub(super) fn entries_in(
    rows: Rows,
    journal: &impl ReadableTable<u64, &'static [u8]>,
    anchor: &Chain,
    from: u64,
    to: u64,
    limit: usize,
) -> Result<Vec<Entry>, Fault> {
    read_linked(rows, anchor, from, to, limit, |lo, n| {
        let mut raw = Vec::with_capacity(n.min(RAW_ROWS_RESERVED));
        for row in journal.range(lo..=to)?.take(n) {
            let (seq, value) = row?;
            raw.push((seq.value(), value.value().to_vec()));
        }
        Ok(raw)
    })
}

/// Entries `from..=to` after `start`, at most `limit`: `read(lo, n)` gives at most `n` rows
/// from `lo` on (through `to`), `lo` being where linking `from` must start.
fn read_linked(
    rows: Rows,
    start: &Chain,
    from: u64,
    to: u64,
    limit: usize,
    read: impl FnOnce(u64, usize) -> Result<RawRows, Fault>,
) -> Result<Vec<Entry>, Fault> {
    let from = from.max(start.seq + 1);
    if from > to || limit == 0 {
        return Ok(Vec::new());
    }
    let lo = rows.base(from, start).max(start.seq + 1);
    // At most `CHECKPOINT` rows before `from`, only hashed on the way.
    let before = usize::try_from(from - lo).expect("fewer rows than a checkpoint span");
    rows.link(from, start, read(lo, before.saturating_add(limit))?)
}

/// Checks the journal's end as read (`end`, linked from `anchor`) against the head the
/// last commit recorded: a journal cut short no longer reaches it, and a change after the
/// last hash a row stores shows only here.
pub(super) fn check_head(rows: Rows, anchor: &Chain, end: &Chain, recorded: Option<&str>) -> Result<(), Fault> {
    let found = format!("{}:{}", end.seq, hex(&end.hash));
    match recorded {
        None if end.seq == 0 => Ok(()),
        Some(recorded) if recorded == found => Ok(()),
        Some(recorded) if recorded.split_once(':').is_some_and(|(seq, _)| seq == end.seq.to_string()) => Err(Fault::Corrupt(format!(
            "journal entries {} to {} do not hash to the head the last commit recorded ({recorded}): one of them was tampered with or is corrupt",
            rows.span_start(end.seq, anchor),
            end.seq
        ))),
        recorded => Err(Fault::Corrupt(format!(
            "the journal ends at {found}, but the last commit recorded {}: entries are missing",
            recorded.unwrap_or("no head")
        ))),
    }
}

/// Entries `from..=to` of the replica of `edge`, at most `limit`, decoded and linked (a
/// replica holds its edge's journal from entry 1).
pub(super) fn replica_entries(
    rows: Rows,
    replica: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    edge: &str,
    from: u64,
    to: u64,
    limit: usize,
) -> Result<Vec<Entry>, Fault> {
    read_linked(rows, &Chain::default(), from, to, limit, |lo, n| {
        let mut raw = Vec::new();
        for row in replica.range((edge, lo)..=(edge, to))?.take(n) {
            let (key, value) = row?;
            raw.push((key.value().1, value.value().to_vec()));
        }
        Ok(raw)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::journal::GENESIS;

    fn chain(n: u64) -> Vec<Entry> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let body = format!("body {seq}").into_bytes();
                let entry = Entry { seq, prev, hash: hash_of(&prev, seq, &body), body };
                prev = entry.hash;
                entry
            })
            .collect()
    }

    fn stored(rows: Rows, entries: &[Entry], lo: u64, hi: u64) -> RawRows {
        entries.iter().filter(|e| (lo..=hi).contains(&e.seq)).map(|e| (e.seq, rows.row(e).into_owned())).collect()
    }

    #[test]
    fn compact_rows_hold_a_hash_only_at_checkpoints() {
        let entries = chain(130);
        assert_eq!(Rows::Compact.row(&entries[0]).len(), entries[0].body.len(), "body only");
        assert_eq!(Rows::Compact.row(&entries[63]).len(), 32 + entries[63].body.len(), "row 64 holds its hash");
        assert_eq!(Rows::Linked.row(&entries[0]).len(), 64 + entries[0].body.len());
        assert_eq!(Rows::named("compact"), Some(Rows::Compact));
        assert_eq!(Rows::named("linked"), Some(Rows::Linked));
        assert_eq!(Rows::named("other"), None);
    }

    #[test]
    fn any_range_links_from_the_closest_checkpoint_or_the_anchor() {
        let entries = chain(200);
        for rows in [Rows::Compact, Rows::Linked] {
            for start in [Chain::default(), Chain { seq: 70, hash: entries[69].hash }] {
                for from in start.seq + 1..=200 {
                    let base = rows.base(from, &start);
                    assert!(base >= start.seq && base < from && from - base <= CHECKPOINT, "{rows:?} {from} {base}");
                    let read = stored(rows, &entries, base.max(start.seq + 1), 200);
                    let linked = rows.link(from, &start, read).unwrap();
                    assert_eq!(linked, entries[from as usize - 1..].to_vec(), "{rows:?} from {from} after {}", start.seq);
                    let mut prev = linked[0].prev;
                    for e in &linked {
                        e.verify(e.seq, &prev).unwrap_or_else(|err| panic!("{rows:?} from {from} after {}: {err}", start.seq));
                        prev = e.hash;
                    }
                }
            }
        }
    }

    #[test]
    fn a_changed_body_breaks_the_chain_at_the_next_checkpoint() {
        let entries = chain(130);
        let mut read = stored(Rows::Compact, &entries, 1, 130);
        read[9].1[0] ^= 1; // row 10
        let span = ChainError::BadSpan { from: 1, to: 64 };
        assert!(matches!(Rows::Compact.link(1, &Chain::default(), read.clone()), Err(Fault::Chain(e)) if e == span));
        assert!(matches!(Rows::Compact.link(20, &Chain::default(), read.clone()), Err(Fault::Chain(e)) if e == span), "read from after it");
        // Up to the checkpoint, the rows link (the change shows at the checkpoint, or at the
        // head the store recorded, or at the edge's signed head).
        assert_eq!(Rows::Compact.link(1, &Chain::default(), read[..63].to_vec()).unwrap().len(), 63);
        // After a pruned anchor the span starts there.
        let anchor = Chain { seq: 40, hash: entries[39].hash };
        let mut after = stored(Rows::Compact, &entries, 41, 130);
        after[9].1[0] ^= 1; // row 50
        assert!(matches!(Rows::Compact.link(41, &anchor, after), Err(Fault::Chain(ChainError::BadSpan { from: 41, to: 64 }))));
        assert_eq!(Rows::Compact.span_start(128, &Chain::default()), 65);
        assert_eq!(Rows::Compact.span_start(129, &Chain::default()), 129);
        assert_eq!(Rows::Compact.span_start(64, &Chain::default()), 1);
        // A missing row is named; a checkpoint row too short to hold its hash is truncated.
        let mut gap = stored(Rows::Compact, &entries, 1, 130);
        gap.remove(4);
        assert!(matches!(Rows::Compact.link(1, &Chain::default(), gap), Err(Fault::Corrupt(m)) if m.contains("row 5 is missing")));
        assert_eq!(Rows::Compact.decode(64, &GENESIS, &Chain::default(), &[0; 10]), Err(ChainError::Truncated { seq: 64 }));
    }
}
