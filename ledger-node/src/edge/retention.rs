//! Retention (`[retention]`): a thread that prunes the journal entries the region has
//! acknowledged and the config lets go, a bounded pass at a time (`Store::prune` keeps the
//! anchor, the books as of it and every id's reply). Must not: prune past the region's
//! acknowledgement, or hold the file's write lock long (the committer waits for a pass).

use super::shipping::EdgeLink;
use crate::clock::now_ms;
use crate::error::NodeError;
use crate::metrics::{gauge, Metrics};
use crate::store::{Prune, Store};
use config::{NodeConfig, RetentionSection};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the thread looks for entries to prune.
const PRUNE_EVERY: Duration = Duration::from_secs(1);
/// Most entries one pass prunes: the pass replays them and rewrites their id records
/// inside one write transaction, a few milliseconds.
pub const PRUNE_BATCH: usize = 2_000;

/// What may go now: up to the region's acknowledgement, minus the newest `keep_entries`,
/// and only entries older than `keep_for_s`. None: nothing.
pub fn plan(retention: &RetentionSection, acknowledged: u64, head: u64, now_ms: u64) -> Option<Prune> {
    if !retention.prunes() {
        return None;
    }
    let by_count = retention.keep_entries.map_or(u64::MAX, |keep| head.saturating_sub(keep));
    let upto = acknowledged.min(head).min(by_count);
    let written_before_ms = retention.keep_for_s.map(|s| now_ms.saturating_sub(s.saturating_mul(1000)));
    (upto > 0).then_some(Prune { upto, written_before_ms, max_entries: PRUNE_BATCH })
}

/// Runs the pruning thread until the store fails in a way no retry mends.
pub fn run(config: NodeConfig, store: Arc<Store>, link: EdgeLink, metrics: &Metrics) -> Result<(), NodeError> {
    let anchor = Arc::new(AtomicU64::new(store.anchor()?.chain.seq));
    let pruned = Arc::new(AtomicU64::new(0));
    let (shown_anchor, shown_pruned) = (anchor.clone(), pruned.clone());
    metrics.add_gauges(Box::new(move |out| {
        let help = "Last journal entry pruned (the chain anchor); 0 while none was.";
        gauge(out, "edgeledger_journal_anchor_seq", help, [(vec![], shown_anchor.load(Ordering::Relaxed))]);
        let help = "Journal entries pruned since the node started (the region had acknowledged them).";
        gauge(out, "edgeledger_pruned_entries", help, [(vec![], shown_pruned.load(Ordering::Relaxed))]);
    }));
    let mut books = None;
    loop {
        std::thread::sleep(PRUNE_EVERY);
        let Some(plan) = plan(&config.retention, link.replicated(), link.head_seq(), now_ms()) else { continue };
        if plan.upto <= anchor.load(Ordering::Relaxed) {
            continue;
        }
        match store.prune(plan, &mut books, || crate::setup::ledger_for(&config)) {
            Ok(0) => {}
            Ok(n) => {
                pruned.fetch_add(n, Ordering::Relaxed);
                anchor.store(store.anchor()?.chain.seq, Ordering::Relaxed);
                tracing::debug!(entries = n, anchor = anchor.load(Ordering::Relaxed), "journal pruned");
            }
            // The committer meets the same disk and says so; pruning waits for room.
            Err(e) if e.is_write_failure() => tracing::warn!("pruning the journal: {e}"),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_stop_at_the_acknowledgement_and_the_configured_limits() {
        let keep = |keep_entries, keep_for_s| RetentionSection { keep_entries, keep_for_s };
        assert!(plan(&keep(None, None), 100, 100, 0).is_none(), "keeps everything by default");
        assert!(plan(&keep(Some(10), None), 0, 100, 0).is_none(), "nothing acknowledged, nothing goes");
        assert_eq!(plan(&keep(Some(10), None), 50, 100, 0).map(|p| p.upto), Some(50));
        assert_eq!(plan(&keep(Some(10), None), 100, 100, 0).map(|p| p.upto), Some(90));
        assert_eq!(plan(&keep(Some(10), None), 500, 100, 0).map(|p| p.upto), Some(90), "an ack past the head");
        assert!(plan(&keep(Some(200), None), 100, 100, 0).is_none());
        let by_age = plan(&keep(None, Some(60)), 100, 100, 1_000_000).unwrap();
        assert_eq!((by_age.upto, by_age.written_before_ms), (100, Some(940_000)));
    }
}
