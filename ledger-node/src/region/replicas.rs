//! A region's replicas of its edges' journals. For each configured edge it pulls the
//! journal from where the replica ends, applies pushes as they come, verifies the hash
//! chain, replays each entry into the replica's books, stores the entries durably and
//! acknowledges. An entry that breaks the chain or does not apply is refused: neither
//! stored nor kept, and replication of that edge stops there until an operator acts. With
//! node identities a frame must end in the edge's signed head (`SignedHead`), which the
//! region checks against the CA and keeps with the entries.

use super::pushes::Coalesced;
use crate::clock::now_ms;
use crate::core::journal::{hex, Chain, Entry};
use crate::core::Ledger;
use crate::error::{Fatal, NodeError};
use crate::metrics::{gauge, GaugeFamily};
use crate::store::{IdFault, ReplicaFrame, Store};
use bridge::sign::{NodeKeys, SignedHead};
use bridge::zenoh::qos::CongestionControl;
use bridge::{keys, Frame, MAX_FRAME_ENTRIES, QUERY_TIMEOUT};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Pushes a region keeps while busy fetching ranges; older ones are dropped.
pub const PUSHES_BUFFERED: usize = 64;
/// Ranges a catching-up region asks for ahead of the frame it applies (each at most
/// `MAX_FRAME_ENTRIES` entries).
pub const RANGES_AHEAD: usize = 3;
/// Frames verified and replayed while earlier ones are written: the writer takes all those
/// queued (at most this many) into one durable commit, and `apply` waits when this many wait.
pub const FRAMES_QUEUED: usize = 2;
/// How often a region asks an edge for entries when no push arrived.
pub const PULL_INTERVAL: Duration = Duration::from_millis(500);

/// A region's copy of one edge's journal and the books it implies.
pub struct Replica {
    /// Where the replica is in memory: verified and replayed, being stored (what the
    /// coordinator and the region's answers see).
    pub chain: Chain,
    /// The last entry stored durably (and acknowledged to the edge): at most
    /// `2 * FRAMES_QUEUED + 1` frames behind `chain` (those being written, those queued for
    /// the writer, and one prepared meanwhile). The edge keeps every entry until it is
    /// acknowledged, so a region that stops in between takes them again from `stored_seq`.
    pub stored_seq: u64,
    pub ledger: Ledger,
    /// Why the last offered entry was refused; replication of this edge stops there.
    pub refused: Option<String>,
    pub updated_ms: u64,
    /// Where the ledger's hold archive reports a hold it could not read back from the file.
    pub hold_fault: IdFault,
}

pub type Replicas = Arc<Mutex<BTreeMap<String, Replica>>>;

/// Pulls `edge`'s journal from where the replica ends, applying pushes as they come.
/// `grown` is told each time the replica grows (the coordinator looks for new transfers).
pub async fn follow_edge(
    session: bridge::zenoh::Session,
    edge: String,
    store: Arc<Store>,
    replicas: Replicas,
    grown: Arc<tokio::sync::Notify>,
    fatal: Fatal,
    keys: Option<Arc<NodeKeys>>,
) {
    let link = Arc::new(Link { session: session.clone(), edge: edge.clone(), store, replicas: replicas.clone(), fatal, keys, grown });
    // Frames are written in a task of their own while the next ones are verified and
    // replayed; it finishes what is queued and stops when this task returns.
    let (writer, prepared) = mpsc::channel(FRAMES_QUEUED);
    let writing = tokio::spawn(write_frames(link.clone(), prepared));
    tokio::spawn(watch_writer(link.clone(), writing));
    // Pushes are only a fast path. A bounded FIFO would block zenoh's receive path when
    // full, and with it the range replies this task is waiting for; a ring drops the
    // oldest pushes instead, which the range fetch makes up for.
    let subscriber = match session
        .declare_subscriber(keys::journal_entries(&edge))
        .with(bridge::zenoh::handlers::RingChannel::new(PUSHES_BUFFERED))
        .await
    {
        Ok(s) => s,
        Err(e) => return tracing::error!("zenoh subscriber: {e}"),
    };
    // The edge's range queryable appearing means the edge (re)connected: after a partition
    // heals, the region pulls at once instead of at its next tick. The querier is declared
    // for its matching status only; ranges are fetched with `get` as before.
    let querier = session.declare_querier(keys::journal_range(&edge)).await;
    let listener = match &querier {
        Ok(querier) => querier.matching_listener().await,
        Err(e) => Err(format!("{e}").into()),
    };
    let mut appeared = match listener {
        Ok(listener) => Some(listener),
        Err(e) => {
            tracing::warn!("{edge}: no matching listener ({e}); pulling every {PULL_INTERVAL:?} only");
            None
        }
    };
    loop {
        // A refused edge stays where it stopped until an operator acts: stop asking it.
        if replicas.lock().expect("replicas").get(&edge).is_none_or(|r| r.refused.is_some()) {
            return;
        }
        // Drain the edge's journal by ranges until it has nothing new. After a full frame the
        // next `RANGES_AHEAD` ranges are asked for at once, each starting where the one before
        // would end if full, while frames are verified, replayed and stored; a range is used
        // only if it starts where the replica then ends (else it is dropped).
        let mut ahead: std::collections::VecDeque<(u64, tokio::task::JoinHandle<Option<Frame>>)> = Default::default();
        loop {
            let cursor = replicas.lock().expect("replicas").get(&edge).map_or(0, |r| r.chain.seq);
            while ahead.front().is_some_and(|(from, _)| *from != cursor + 1) {
                if let Some((_, stale)) = ahead.pop_front() {
                    stale.abort();
                }
            }
            let frame = match ahead.pop_front() {
                Some((_, asked)) => asked.await.ok().flatten(),
                None => fetch(&session, &range_selector(&edge, cursor + 1)).await,
            };
            let Some(frame) = frame else { break };
            let got = frame.len();
            if got == MAX_FRAME_ENTRIES {
                // Seqs from a reply not yet verified: no arithmetic on them may overflow.
                let step = MAX_FRAME_ENTRIES as u64;
                let mut from = match ahead.back() {
                    Some((from, _)) => from.checked_add(step),
                    None => frame.last_seq().and_then(|last| last.checked_add(1)),
                };
                while let (Some(at), true) = (from, ahead.len() < RANGES_AHEAD) {
                    let (session, selector) = (session.clone(), range_selector(&edge, at));
                    ahead.push_back((at, tokio::spawn(async move { fetch(&session, &selector).await })));
                    from = at.checked_add(step);
                }
            }
            let applied = got > 0 && apply(&link, frame, &writer).await;
            if !applied || got < MAX_FRAME_ENTRIES {
                break;
            }
        }
        for (_, asked) in ahead.drain(..) {
            asked.abort();
        }
        // Then wait for a push (applied at once when it continues the replica) or the tick.
        // Pushes that queued up meanwhile are taken with it, consecutive ones as one frame:
        // one signature check, one durable commit and one ack for all of them.
        let reconnected = async {
            match &appeared {
                Some(listener) => listener.recv_async().await.map(|status| status.matching()),
                None => std::future::pending().await,
            }
        };
        let pushed = tokio::select! {
            pushed = tokio::time::timeout(PULL_INTERVAL, subscriber.recv_async()) => pushed,
            status = reconnected => {
                if status.is_err() {
                    appeared = None;
                }
                continue;
            }
        };
        match pushed {
            Ok(Ok(sample)) => {
                let mut frames = Coalesced::default();
                frames.add(Frame::decode(sample.payload().to_bytes().into_owned()));
                while let Ok(Some(sample)) = subscriber.try_recv() {
                    frames.add(Frame::decode(sample.payload().to_bytes().into_owned()));
                    if frames.queued() >= PUSHES_BUFFERED {
                        break;
                    }
                }
                for frame in frames.into_frames() {
                    apply(&link, frame, &writer).await;
                }
            }
            Ok(Err(_)) => return,
            Err(_) => {}
        }
    }
}

/// Entries `from..` of `edge`'s journal, a frame's worth at most.
fn range_selector(edge: &str, from: u64) -> String {
    format!("{}?from={from};limit={MAX_FRAME_ENTRIES}", keys::journal_range(edge))
}

async fn fetch(session: &bridge::zenoh::Session, selector: &str) -> Option<Frame> {
    let replies = session.get(selector).congestion_control(CongestionControl::Block).timeout(QUERY_TIMEOUT).await.ok()?;
    let reply = replies.recv_async().await.ok()?;
    let sample = reply.result().ok()?;
    match Frame::decode(sample.payload().to_bytes().into_owned()) {
        Ok(frame) => Some(frame),
        Err(e) => {
            tracing::warn!("{selector}: {e}");
            None
        }
    }
}

/// What `apply` works with for one edge.
struct Link {
    session: bridge::zenoh::Session,
    edge: String,
    store: Arc<Store>,
    replicas: Replicas,
    fatal: Fatal,
    keys: Option<Arc<NodeKeys>>,
    /// Told each time the replica grows durably (the coordinator looks for new transfers).
    grown: Arc<tokio::sync::Notify>,
}

/// With node identities: the frame is one run of consecutive entries and ends in the edge's
/// signed head of its last entry, which (through the hash chain checked below) vouches for
/// every entry in it. Returns the head to store, or why the frame is refused.
fn signed_head(link: &Link, frame: &Frame) -> Result<Option<Vec<u8>>, String> {
    let Some(keys) = link.keys.as_deref() else { return Ok(None) };
    let edge = link.edge.as_str();
    let Some((last_seq, last_bytes)) = frame.entries().next_back() else { return Ok(None) };
    if frame.entries().zip(frame.entries().skip(1)).any(|((seq, _), (next, _))| seq.checked_add(1) != Some(next)) {
        return Err("entries not consecutive".to_string());
    }
    let trailer = frame.trailer().ok_or_else(|| format!("entries up to {last_seq} are not signed by {edge}"))?;
    let head: SignedHead = serde_json::from_slice(trailer).map_err(|e| format!("signed head: {e}"))?;
    let last = Entry::decode(last_seq, last_bytes).map_err(|e| format!("entry {last_seq}: {e}"))?;
    head.check(&keys.verifier, edge, last_seq, &last.hash).map_err(|e| format!("entries up to {last_seq}: {e}"))?;
    Ok(Some(trailer.to_vec()))
}

/// A frame's entries verified and replayed into the replica in memory, to be stored.
struct Prepared {
    accepted: Vec<Entry>,
    signed: Option<Vec<u8>>,
    chain: Chain,
    live: crate::core::LiveChanges,
    group: u64,
}

/// Verifies, replays and stores the entries of `frame` that continue the replica. Returns
/// whether it made progress (entries replayed, their write queued). Entries the replica
/// already has are skipped (a push and a range may overlap); a gap leaves the rest for the
/// next range fetch. An entry that breaks the chain or does not apply to the replica's
/// books is refused: neither stored nor kept. With node identities, so is the whole frame
/// when its signature does not check or its entries do not link up to the signed one.
///
/// The write runs in the writer task (`write_frames`), so that the next frames are verified
/// and replayed while earlier ones are written; writes stay in order, and a frame is
/// acknowledged to the edge, and the coordinator woken for it, only once it is durable.
async fn apply(link: &Link, frame: Frame, writer: &mpsc::Sender<Prepared>) -> bool {
    let Some(prepared) = prepare(link, frame) else { return false };
    if writer.send(prepared).await.is_err() {
        // The writer stopped (after a failed write, which said why, or a panic, which
        // `watch_writer` reports): this frame, replayed in memory, will not be written.
        refuse(link, "cannot be stored: the replica writer stopped".to_string());
        return false;
    }
    true
}

/// Keeps the first reason a replica was refused (a refused chain stays the reason even if a
/// write fails after it).
fn refuse(link: &Link, why: String) {
    // A task that panicked holding the lock must not keep this refusal from being made.
    let mut replicas = link.replicas.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(replica) = replicas.get_mut(&link.edge) {
        replica.refused.get_or_insert(why);
    }
}

/// A writer that panicked leaves frames replayed in memory that no write will follow:
/// the replica takes no more and the node stops (it rebuilds the replica from the file).
async fn watch_writer(link: Arc<Link>, writing: tokio::task::JoinHandle<()>) {
    if let Err(e) = writing.await {
        // Reported first: whatever happens after, the node stops.
        link.fatal.report(NodeError::Stopped { part: "replica writer", why: e.to_string() });
        refuse(&link, format!("cannot be stored: the replica writer stopped: {e}"));
    }
}

fn prepare(link: &Link, frame: Frame) -> Option<Prepared> {
    let edge = link.edge.as_str();
    let signed = match signed_head(link, &frame) {
        Ok(signed) => signed,
        Err(why) => {
            let why = format!("frame refused: {why}");
            tracing::error!(edge, "replication stopped: {why}");
            refuse(link, why);
            return None;
        }
    };
    let last_in_frame = frame.last_seq();
    let mut all = link.replicas.lock().expect("replicas");
    let replica = all.get_mut(edge)?;
    if replica.refused.is_some() {
        return None;
    }
    // First the chain: the entries that continue the replica, decoded and linked, before
    // anything touches the books.
    // Sized once: a frame's decoded entries are large, and growing the vector by doubling
    // was a fifth of a draining region's time (copies and freshly faulted pages).
    let mut linked = Vec::with_capacity(frame.len());
    let mut next = replica.chain;
    let mut broken = None;
    for (seq, bytes) in frame.entries() {
        if seq <= next.seq {
            continue;
        }
        if Some(seq) != next.seq.checked_add(1) {
            break;
        }
        match Entry::decode(seq, bytes).and_then(|entry| next.verify_next(&entry).map(|body| (entry, body))) {
            Ok(checked) => linked.push(checked),
            Err(e) => {
                broken = Some(format!("entry {seq} refused: {e}"));
                break;
            }
        }
    }
    // A signature vouches for its last entry and, through the chain, for those before it,
    // and for nothing else: with one, the whole frame must link up to that entry from the
    // replica's head, or none of it is kept (entries forged ahead of genuine ones would
    // otherwise pass up to where the chain breaks).
    if signed.is_some() && (broken.is_some() || (!linked.is_empty() && Some(next.seq) != last_in_frame)) {
        let why = broken.unwrap_or_else(|| format!("entries after {} are missing", next.seq));
        let why = format!("frame refused: {why}; the signed head covers none of it");
        tracing::error!(edge, "replication stopped: {why}");
        replica.refused = Some(why);
        return None;
    }
    let mut accepted = Vec::with_capacity(linked.len());
    // The frame's holds resolved leave RAM once it is stored (`group_durable` in `store`).
    let group = replica.ledger.next_group();
    for (entry, body) in linked {
        // Replay refuses, and undoes, an entry after which the books no longer balance.
        if let Err(why) = replica.ledger.replay(&body) {
            broken = Some(format!("entry {} refused: {why}", entry.seq));
            break;
        }
        replica.chain = Chain { seq: entry.seq, hash: entry.hash };
        accepted.push(entry);
    }
    if let Some(why) = broken {
        tracing::error!(edge, "replication stopped: {why}");
        replica.refused = Some(why);
    }
    replica.updated_ms = now_ms();
    if let Some(fault) = replica.hold_fault.take() {
        // A hold it could not read back was taken for one that does not exist: the
        // replay of this frame cannot be trusted. Nothing of it is stored.
        replica.refused = Some(format!("cannot read the replica's file: {fault}"));
        link.fatal.report(NodeError::Store(fault));
        return None;
    }
    if accepted.is_empty() {
        return None;
    }
    // The signed head is kept only with the entry it signs.
    let signed = signed.filter(|_| accepted.last().map(|e| e.seq) == last_in_frame);
    Some(Prepared { accepted, signed, chain: replica.chain, live: replica.ledger.take_live_changes(), group })
}

/// Writes prepared frames in order until the first failed write or until `follow_edge`
/// stops; all the frames queued when a write starts go into one durable commit.
async fn write_frames(link: Arc<Link>, mut prepared: mpsc::Receiver<Prepared>) {
    let mut frames = Vec::with_capacity(FRAMES_QUEUED);
    while prepared.recv_many(&mut frames, FRAMES_QUEUED).await > 0 {
        if !store(&link, std::mem::take(&mut frames)).await {
            return;
        }
    }
}

/// Stores prepared frames durably in one commit, then lets the replica's resolved holds
/// leave RAM, acknowledges the edge and wakes the coordinator. False when the store failed.
async fn store(link: &Link, frames: Vec<Prepared>) -> bool {
    let Some(&Prepared { chain, group, .. }) = frames.last() else { return true };
    let edge = link.edge.as_str();
    let (store, edge_id) = (link.store.clone(), edge.to_string());
    let write = move || {
        let writes: Vec<ReplicaFrame<'_>> =
            frames.iter().map(|p| ReplicaFrame { entries: &p.accepted, signed_head: p.signed.as_deref(), live: &p.live }).collect();
        store.append_replica(&edge_id, &writes)
    };
    let stored = match tokio::task::spawn_blocking(write).await {
        Ok(result) => result.map_err(NodeError::Store),
        Err(e) => Err(NodeError::Stopped { part: "replica writer", why: e.to_string() }),
    };
    if let Err(e) = stored {
        // The replica in memory is ahead of the disk now: take no more of it, and stop the
        // node; it rebuilds the replica from disk on restart.
        tracing::error!(edge, "replication stopped: the replica cannot be stored: {e}");
        refuse(link, format!("cannot be stored: {e}"));
        link.fatal.report(e);
        return false;
    }
    if let Some(replica) = link.replicas.lock().expect("replicas").get_mut(edge) {
        // Groups are numbered in order: the last frame's covers the frames before it.
        replica.ledger.group_durable(group);
        replica.stored_seq = chain.seq;
    }
    link.grown.notify_one();
    let ack = json!({"seq": chain.seq, "hash": hex(&chain.hash)}).to_string();
    if let Err(e) = link.session.put(keys::journal_ack(edge), ack).congestion_control(CongestionControl::Block).await {
        tracing::debug!("ack for {edge}: {e}");
    }
    true
}

/// Per edge: how far the replica is, how long since it last grew, whether it refused.
pub fn replica_gauges(replicas: &Replicas, out: &mut Vec<GaugeFamily>) {
    let now = now_ms();
    let all = replicas.lock().expect("replicas");
    let label = |edge: &str| vec![("edge", edge.to_string())];
    let seqs: Vec<_> = all.iter().map(|(edge, r)| (label(edge), r.chain.seq)).collect();
    gauge(out, "edgeledger_replica_seq", "Last journal entry of the edge in this region's replica.", seqs);
    let ages: Vec<_> = all.iter().map(|(edge, r)| (label(edge), now.saturating_sub(r.updated_ms) / 1000)).collect();
    gauge(out, "edgeledger_replica_age_seconds", "Seconds since the replica last grew (or was loaded).", ages);
    let refused: Vec<_> = all.iter().map(|(edge, r)| (label(edge), u64::from(r.refused.is_some()))).collect();
    gauge(out, "edgeledger_replica_refused", "1 when the replica refused an entry of the edge and stopped there.", refused);
}
