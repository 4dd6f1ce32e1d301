//! The region's acknowledgements of an edge's journal (`journal_ack`, `{"seq", "hash"}`):
//! how far the region has durably replicated, which is how far retention may prune. An ack
//! counts only when its hash is the hash of this edge's own entry at that seq; an ack for
//! an entry the edge never wrote, or with another hash, says the region's replica is not
//! this journal, and is refused. Must not: advance on an ack it has not checked against
//! the file, since pruning on it could remove the only true copy of an entry.

use crate::core::journal::{hex, Hash};
use crate::metrics::{gauge, Metrics};
use crate::store::Store;
use bridge::keys;
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Longest ack payload read; an ack is about 90 bytes.
const MAX_ACK_BYTES: usize = 1024;

/// An acknowledgement as the region publishes it.
#[derive(Debug, Deserialize)]
pub struct Ack {
    pub seq: u64,
    pub hash: String,
}

/// What the edge makes of one ack.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The region holds entries up to this seq, as this edge wrote them.
    Advance(u64),
    /// Nothing new: at or below what was acknowledged, or within the pruned part.
    Stale,
    /// The region's replica is not this journal; why.
    Refused(String),
}

/// What this edge's file says of the entry an ack names.
#[derive(Debug, PartialEq, Eq)]
pub enum InFile {
    /// Pruned: at or before the anchor, acknowledged before (the ack is an old one).
    Pruned,
    /// No such entry: past the head.
    Missing,
    /// The entry, with the hash this edge wrote.
    Written(Hash),
}

/// Judges `ack` against what was acknowledged so far and what the file says of its entry.
pub fn judge(ack: &Ack, acknowledged: u64, in_file: &InFile) -> Verdict {
    if ack.seq <= acknowledged {
        return Verdict::Stale;
    }
    match in_file {
        InFile::Pruned => Verdict::Stale,
        InFile::Missing => Verdict::Refused(format!("the region acknowledged entry {}, which this edge's journal does not hold", ack.seq)),
        InFile::Written(hash) if hex(hash) != ack.hash.to_ascii_lowercase() => Verdict::Refused(format!(
            "the region acknowledged entry {} with hash {}, but this edge wrote it with hash {}",
            ack.seq,
            ack.hash,
            hex(hash)
        )),
        InFile::Written(_) => Verdict::Advance(ack.seq),
    }
}

/// Refused acks since the node started, shown as `edgeledger_acks_refused_total`.
pub fn refused_counter(metrics: &Metrics) -> Arc<AtomicU64> {
    let refused = Arc::new(AtomicU64::new(0));
    let shown = refused.clone();
    metrics.add_gauges(Box::new(move |out| {
        let help = "Region acknowledgements refused: their seq or hash is not this edge's journal (the region's replica diverged).";
        gauge(out, "edgeledger_acks_refused_total", help, [(vec![], shown.load(Ordering::Relaxed))]);
    }));
    refused
}

/// Follows the region's acks for `edge`, moving `acked` on the ones that check out.
pub async fn follow(session: bridge::zenoh::Session, edge: String, store: Arc<Store>, acked: Arc<AtomicU64>, refused: Arc<AtomicU64>) {
    let subscriber = match session.declare_subscriber(keys::journal_ack(&edge)).await {
        Ok(s) => s,
        Err(e) => return tracing::error!("zenoh subscriber: {e}"),
    };
    while let Ok(sample) = subscriber.recv_async().await {
        let payload = sample.payload().to_bytes();
        let ack: Ack = match payload.len() <= MAX_ACK_BYTES {
            true => match serde_json::from_slice(&payload) {
                Ok(ack) => ack,
                Err(e) => {
                    tracing::warn!("an ack for {edge} that does not parse: {e}");
                    continue;
                }
            },
            false => {
                tracing::warn!("an ack for {edge} of {} bytes (at most {MAX_ACK_BYTES})", payload.len());
                continue;
            }
        };
        let acknowledged = acked.load(Ordering::SeqCst);
        if ack.seq <= acknowledged {
            continue; // stale: spare the read
        }
        let (reader, seq) = (store.clone(), ack.seq);
        let read = tokio::task::spawn_blocking(move || reader.range_after_anchor(seq, 1)).await;
        let in_file = match read {
            Ok(Ok(Ok(entries))) => entries.into_iter().find(|e| e.seq == seq).map_or(InFile::Missing, |e| InFile::Written(e.hash)),
            Ok(Ok(Err(_anchor))) => InFile::Pruned,
            Ok(Err(e)) => {
                tracing::warn!("checking the ack of entry {seq} for {edge}: {e}");
                continue;
            }
            Err(e) => return tracing::error!("checking acks for {edge}: {e}"),
        };
        match judge(&ack, acknowledged, &in_file) {
            Verdict::Advance(seq) => {
                acked.fetch_max(seq, Ordering::SeqCst);
            }
            Verdict::Stale => {}
            Verdict::Refused(why) => {
                refused.fetch_add(1, Ordering::Relaxed);
                tracing::error!("{edge}: ack refused, nothing past it is pruned: {why}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(seq: u64, hash: &Hash) -> Ack {
        Ack { seq, hash: hex(hash) }
    }

    #[test]
    fn an_ack_counts_only_with_the_hash_this_edge_wrote() {
        let (mine, other) = ([7u8; 32], [8u8; 32]);
        let written = InFile::Written(mine);
        assert_eq!(judge(&ack(10, &mine), 5, &written), Verdict::Advance(10));
        let upper = Ack { seq: 10, hash: hex(&mine).to_ascii_uppercase() };
        assert_eq!(judge(&upper, 5, &written), Verdict::Advance(10), "hex in either case");
        assert!(matches!(judge(&ack(10, &other), 5, &written), Verdict::Refused(why) if why.contains("entry 10")));
        assert!(matches!(judge(&ack(10, &mine), 5, &InFile::Missing), Verdict::Refused(why) if why.contains("does not hold")));
    }

    #[test]
    fn old_and_pruned_acks_change_nothing() {
        let mine = [7u8; 32];
        assert_eq!(judge(&ack(5, &mine), 5, &InFile::Written(mine)), Verdict::Stale, "at what was acknowledged");
        assert_eq!(judge(&ack(4, &[1; 32]), 5, &InFile::Missing), Verdict::Stale, "below it, whatever its hash");
        assert_eq!(judge(&ack(20, &mine), 0, &InFile::Pruned), Verdict::Stale, "within the pruned part after a restart");
    }
}
