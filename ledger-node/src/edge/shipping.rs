//! Journal shipping from an edge to its region over zenoh. After each durable commit the
//! committer hands the new entries here (`EdgeLink`, a `CommitListener`); they are pushed
//! at once, and any range of the journal is served from redb, so a region that missed
//! pushes fetches what it lacks. The region's acks say how far it has replicated (checked
//! against the file in `acks`).
//!
//! With node identities every frame ends in the edge's signature over its last entry (a
//! `SignedHead`): through the hash chain it vouches for every entry before it.
//!
//! The edge never waits for its region: pushes that cannot be sent at once are dropped and
//! the region fetches them from the edge's redb when it can.

use super::acks;
use super::committer::CommitListener;
use crate::core::journal::{hex, Chain, Entry};
use crate::error::NodeError;
use crate::metrics::{gauge, Metrics};
use crate::store::Store;
use bridge::sign::{NodeKeys, SignedHead};
use bridge::zenoh::qos::CongestionControl;
use bridge::{encode_frame, keys, Refusal, MAX_FRAME_ENTRIES, PROOF_SEQ};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Committed groups waiting to be pushed to the region; beyond this the push is dropped
/// (the region will fetch those entries through the range queryable).
pub const PUSH_QUEUE: usize = 256;

/// The edge's side, shared between the committer (which feeds it) and the zenoh tasks.
#[derive(Clone)]
pub struct EdgeLink {
    push: tokio::sync::mpsc::Sender<Vec<Entry>>,
    head: Arc<Mutex<Chain>>,
    acked: Arc<AtomicU64>,
    acks_refused: Arc<AtomicU64>,
}

impl CommitListener for EdgeLink {
    /// Called by the committer after each durable commit; never blocks.
    fn committed(&self, entries: Vec<Entry>, head: Chain) {
        *self.head.lock().expect("head lock") = head;
        if !entries.is_empty() && self.push.try_send(entries).is_err() {
            tracing::debug!("push queue full; the region will fetch the entries");
        }
    }
}

impl EdgeLink {
    /// The last entry the region acknowledged as durably replicated (0 until it has).
    pub fn replicated(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// The journal's head as of the last durable commit.
    pub fn head_seq(&self) -> u64 {
        self.head.lock().expect("head lock").seq
    }

    /// The link and the receiving end of its push queue.
    pub fn new(head: Chain, metrics: &Metrics) -> (EdgeLink, tokio::sync::mpsc::Receiver<Vec<Entry>>) {
        let (push, pushed) = tokio::sync::mpsc::channel::<Vec<Entry>>(PUSH_QUEUE);
        let acks_refused = acks::refused_counter(metrics);
        let link = EdgeLink { push, head: Arc::new(Mutex::new(head)), acked: Arc::new(AtomicU64::new(0)), acks_refused };
        let watched = link.clone();
        metrics.add_gauges(Box::new(move |out| {
            let head = watched.head.lock().expect("head lock").seq;
            let acked = watched.acked.load(Ordering::SeqCst);
            gauge(out, "edgeledger_replicated_seq", "Last journal entry the region acknowledged as durably replicated.", [(vec![], acked)]);
            let lag = head.saturating_sub(acked);
            gauge(out, "edgeledger_replication_lag_entries", "Journal entries not yet acknowledged by the region.", [(vec![], lag)]);
        }));
        (link, pushed)
    }
}

/// Runs the shipping tasks on `session`: pushes, ranges, status and acks. Returns when the
/// journal publisher cannot be declared, or when the committer stops feeding it.
pub async fn ship(
    session: bridge::zenoh::Session,
    edge: String,
    store: Arc<Store>,
    link: EdgeLink,
    mut pushed: tokio::sync::mpsc::Receiver<Vec<Entry>>,
    keys: Option<Arc<NodeKeys>>,
) -> Result<(), NodeError> {
    let publisher = session
        .declare_publisher(keys::journal_entries(&edge))
        .congestion_control(CongestionControl::Block)
        .await
        .map_err(|e| NodeError::Zenoh(format!("zenoh: cannot declare the journal publisher of {edge}: {e}")))?;
    tokio::spawn(serve_range(session.clone(), edge.clone(), store.clone(), keys.clone()));
    tokio::spawn(acks::follow(session.clone(), edge.clone(), store.clone(), link.acked.clone(), link.acks_refused.clone()));
    tokio::spawn(serve_status(session.clone(), edge.clone(), link.clone(), store));
    let mut carried = None;
    while let Some(entries) = next_push(&mut pushed, &mut carried).await {
        if let Err(e) = publisher.put(frame_of(&edge, &entries, keys.as_deref())).await {
            tracing::warn!("journal push failed: {e}");
        }
    }
    Err(NodeError::Stopped { part: "journal shipping", why: "the committer no longer feeds it".to_string() })
}

/// The entries of the next push: the next committed group, with the groups queued behind it
/// while the last push was sent, as long as they continue it (a group dropped from a full
/// queue leaves a gap no frame may span) and fit in one frame. A group that does not join
/// is `carried` to the next push. One frame, and one signature, for all of them.
async fn next_push(pushed: &mut tokio::sync::mpsc::Receiver<Vec<Entry>>, carried: &mut Option<Vec<Entry>>) -> Option<Vec<Entry>> {
    let mut entries = match carried.take() {
        Some(entries) => entries,
        None => pushed.recv().await?,
    };
    // A group of more entries than a frame takes (a commit of up to `commit.max_batch`
    // commands) goes out in frames of `MAX_FRAME_ENTRIES`.
    if entries.len() > MAX_FRAME_ENTRIES {
        *carried = Some(entries.split_off(MAX_FRAME_ENTRIES));
        return Some(entries);
    }
    while entries.len() < MAX_FRAME_ENTRIES {
        let Ok(more) = pushed.try_recv() else { break };
        let continues = entries.last().and_then(|e| e.seq.checked_add(1)) == more.first().map(|e| e.seq);
        if !continues || entries.len() + more.len() > MAX_FRAME_ENTRIES {
            *carried = Some(more);
            break;
        }
        entries.extend(more);
    }
    Some(entries)
}

/// A frame of `entries`; with keys, ending in the edge's signed head of its last entry.
fn frame_of(edge: &str, entries: &[Entry], keys: Option<&NodeKeys>) -> Vec<u8> {
    let mut encoded: Vec<(u64, Vec<u8>)> = entries.iter().map(|e| (e.seq, e.encode())).collect();
    if let (Some(keys), Some(last)) = (keys, entries.last()) {
        let head = SignedHead::new(&keys.signer, edge, last.seq, &last.hash);
        encoded.push((PROOF_SEQ, serde_json::to_vec(&head).expect("a signed head serializes")));
    }
    encode_frame(encoded.iter().map(|(seq, bytes)| (*seq, &bytes[..])))
}

/// Serves `?from=SEQ;limit=N` from the edge's redb: the source of truth for gap filling.
/// A range that starts at or before the anchor of a pruned journal is refused `not_found`,
/// naming the anchor.
async fn serve_range(session: bridge::zenoh::Session, edge: String, store: Arc<Store>, keys: Option<Arc<NodeKeys>>) {
    let queryable = match session.declare_queryable(keys::journal_range(&edge)).await {
        Ok(q) => q,
        Err(e) => return tracing::error!("zenoh queryable: {e}"),
    };
    while let Ok(query) = queryable.recv_async().await {
        let params = query.parameters();
        let from: u64 = params.get("from").and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
        let limit: usize = params.get("limit").and_then(|v| v.parse().ok()).unwrap_or(MAX_FRAME_ENTRIES).clamp(1, MAX_FRAME_ENTRIES);
        let store = store.clone();
        let read = tokio::task::spawn_blocking(move || store.range_after_anchor(from, limit)).await;
        let sent = match read {
            Ok(Ok(Ok(entries))) => query.reply(query.key_expr().clone(), frame_of(&edge, &entries, keys.as_deref())).await,
            Ok(Ok(Err(anchor))) => {
                let why = format!(
                    "entries 1 to {} of {edge} were pruned after its region acknowledged them (anchor {}:{}); read them from the region's replica",
                    anchor.chain.seq,
                    anchor.chain.seq,
                    hex(&anchor.chain.hash)
                );
                query.reply_err(json!(Refusal::not_found(why)).to_string()).await
            }
            Ok(Err(e)) => {
                tracing::error!("journal range {from}+{limit}: {e}");
                query.reply_err(json!(Refusal::unavailable(e.to_string())).to_string()).await
            }
            Err(e) => query.reply_err(json!(Refusal::unavailable(e.to_string())).to_string()).await,
        };
        if let Err(e) = sent {
            tracing::warn!("journal range reply failed: {e}");
        }
    }
}

async fn serve_status(session: bridge::zenoh::Session, edge: String, link: EdgeLink, store: Arc<Store>) {
    let key = keys::status(&edge);
    bridge::serve_json_now(session, key, move |_| {
        let head = *link.head.lock().expect("head lock");
        let acked = link.acked.load(Ordering::SeqCst);
        let anchor = store.anchor().map_err(|e| Refusal::unavailable(e.to_string()))?.chain;
        Ok(json!({
            "node": edge, "role": "edge",
            "head": {"seq": head.seq, "hash": hex(&head.hash)},
            "replicated_seq": acked, "lag_entries": head.seq.saturating_sub(acked),
            "anchor": {"seq": anchor.seq, "hash": hex(&anchor.hash)},
        }))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(seqs: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        seqs.map(|seq| Entry { seq, prev: [0; 32], hash: [0; 32], body: Vec::new() }).collect()
    }

    fn seqs(entries: &[Entry]) -> (u64, u64) {
        (entries[0].seq, entries.last().expect("entries").seq)
    }

    #[tokio::test]
    async fn queued_groups_ship_as_one_frame_unless_a_gap_or_the_frame_limit_parts_them() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        // 7..=full makes exactly one full frame.
        let full = MAX_FRAME_ENTRIES as u64 + 6;
        for g in [group(1..=2), group(3..=5), group(7..=9), group(10..=full), group(full + 1..=full + 14)] {
            tx.send(g).await.expect("queued");
        }
        drop(tx);
        let mut carried = None;
        let mut frames = Vec::new();
        while let Some(entries) = next_push(&mut rx, &mut carried).await {
            frames.push(seqs(&entries));
        }
        // 1-5 joined; 6 is missing, so 7 starts a frame; the last group would pass the limit.
        assert_eq!(frames, vec![(1, 5), (7, full), (full + 1, full + 14)]);
    }

    #[tokio::test]
    async fn a_group_larger_than_a_frame_ships_in_frames() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let limit = MAX_FRAME_ENTRIES as u64;
        tx.send(group(1..=2 * limit + 5)).await.expect("queued");
        tx.send(group(2 * limit + 6..=2 * limit + 7)).await.expect("queued");
        drop(tx);
        let mut carried = None;
        let mut frames = Vec::new();
        while let Some(entries) = next_push(&mut rx, &mut carried).await {
            assert!(entries.len() <= MAX_FRAME_ENTRIES);
            frames.push(seqs(&entries));
        }
        assert_eq!(frames, vec![(1, limit), (limit + 1, 2 * limit), (2 * limit + 1, 2 * limit + 7)]);
    }
}
