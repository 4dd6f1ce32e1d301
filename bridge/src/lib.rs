//! The link between nodes: zenoh sessions opened from the node config, the `ledger/v1/`
//! key-expression scheme, and the framing of journal entries on the wire.
//!
//! Every link is mutual TLS checked against the deployment's CA, with zenoh access control
//! derived from the node config (`access`), unless a config explicitly asks for plain TCP
//! on loopback. `pki` makes the CA and the certificates.
//!
//! Owns transport and identity only. It must not interpret ledger entries (verifying and applying them
//! is the ledger node's job) and must not rely on zenoh's in-memory caches for ledger data:
//! everything it carries can be asked for again from the sender's redb.

pub mod access;
pub mod pki;
mod session;
pub mod sign;

use serde::{Deserialize, Serialize};
pub use session::{open, open_client};
use std::fmt;
use std::time::Duration;

pub use zenoh;

/// Most journal entries in one frame (a live push or one range reply).
pub const MAX_FRAME_ENTRIES: usize = 1_000;
/// Largest encoded entry accepted from the wire.
pub const MAX_ENTRY_BYTES: usize = 1024 * 1024;
/// Largest request payload (a delivery, a settlement, an operator command) a node reads.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Most transfers in one bulk message (deliveries, relays, settlements, and the answers).
pub const MAX_TRANSFER_BATCH: usize = 256;
/// Largest bulk request payload a node reads: `MAX_TRANSFER_BATCH` transfers with their
/// decisions' digests, with room to spare.
pub const MAX_BATCH_REQUEST_BYTES: usize = 1024 * 1024;
/// How long a range query may take before it is asked again.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Key expressions, all under `ledger/v1/`. A node id (`eu` or `eu/berlin-1`) is one or two
/// chunks of the key.
pub mod keys {
    /// An edge publishes each committed group of journal entries here (live push).
    pub fn journal_entries(edge: &str) -> String {
        format!("ledger/v1/journal/{edge}/entries")
    }

    /// An edge's queryable serving any range of its journal from redb:
    /// `?from=SEQ;limit=N` (N at most `MAX_FRAME_ENTRIES`).
    pub fn journal_range(edge: &str) -> String {
        format!("ledger/v1/journal/{edge}/range")
    }

    /// A region publishes how far it has durably replicated an edge: `{"seq":N,"hash":"…"}`.
    pub fn journal_ack(edge: &str) -> String {
        format!("ledger/v1/journal/{edge}/ack")
    }

    /// Every node answers its status (role, journal head, replication state) here.
    pub fn status(node: &str) -> String {
        format!("ledger/v1/status/{node}")
    }

    /// Balances: an edge of its own accounts (`?account=name`), a region of its edges'
    /// from its replicas (`?account=name@edge`).
    pub fn balance(node: &str) -> String {
        format!("ledger/v1/query/{node}/balance")
    }

    /// Pending holds (`?account=…;limit=N`; a region also takes `?edge=…`).
    pub fn pending(node: &str) -> String {
        format!("ledger/v1/query/{node}/pending")
    }

    /// The journal entries that changed an account, newest first
    /// (`?account=…;limit=N;before=SEQ`).
    pub fn history(node: &str) -> String {
        format!("ledger/v1/query/{node}/history")
    }

    /// Every account with its balances, by name (`?after=NAME;limit=N`; a region also
    /// needs `?edge=E` and answers from its replica).
    pub fn accounts(node: &str) -> String {
        format!("ledger/v1/query/{node}/accounts")
    }

    /// Every cross-node transfer a node sent (`?side=out`) or received (`?side=in`), with
    /// its state or decision (`after=KEY;limit=N`; a region also needs `?edge=E`).
    pub fn transfers(node: &str) -> String {
        format!("ledger/v1/query/{node}/transfers")
    }

    /// An edge takes an operator's command here (a device command's JSON, applied with
    /// operator rights) and answers the reply after the commit is durable.
    pub fn command(node: &str) -> String {
        format!("ledger/v1/command/{node}")
    }

    /// A region's cross-node transfers in flight: what each waits for and why.
    pub fn in_flight(node: &str) -> String {
        format!("ledger/v1/query/{node}/in_flight")
    }

    /// A destination edge takes a cross-node transfer here and answers its recorded decision.
    pub fn transfer_deliver(edge: &str) -> String {
        format!("ledger/v1/transfer/{edge}/deliver")
    }

    /// A region passes a delivery on to one of its edges (for a source in another region).
    pub fn transfer_relay(region: &str) -> String {
        format!("ledger/v1/transfer/{region}/relay")
    }

    /// A source edge takes the destination's decision here and posts or voids its hold.
    pub fn transfer_settle(edge: &str) -> String {
        format!("ledger/v1/transfer/{edge}/settle")
    }

    /// `transfer_deliver` in bulk: many transfers to one destination edge in one message,
    /// decided in one group commit (what a region's coordinator sends).
    pub fn transfer_deliveries(edge: &str) -> String {
        format!("ledger/v1/transfer/{edge}/deliveries")
    }

    /// `transfer_relay` in bulk: a batch of deliveries for one of the region's edges.
    pub fn transfer_relays(region: &str) -> String {
        format!("ledger/v1/transfer/{region}/relays")
    }

    /// `transfer_settle` in bulk: many decisions for one source edge in one message.
    pub fn transfer_settlements(edge: &str) -> String {
        format!("ledger/v1/transfer/{edge}/settlements")
    }
}

/// Why a node refused a query. It travels as a zenoh error reply whose payload is
/// `{"kind":"…","error":"…"}`; a successful answer is always a plain JSON value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub kind: RefusalKind,
    /// What was wrong, naming the parameter or field at fault.
    pub error: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// The request itself is wrong (a missing or malformed parameter or payload).
    Invalid,
    /// It names something this node does not have (an account, an edge).
    NotFound,
    /// The node cannot take it now (queue full, no answer in time): ask again.
    Busy,
    /// The node could not read what it needed (storage), or is stopping.
    Unavailable,
}

impl Refusal {
    pub fn invalid(error: impl Into<String>) -> Refusal {
        Refusal { kind: RefusalKind::Invalid, error: error.into() }
    }

    pub fn not_found(error: impl Into<String>) -> Refusal {
        Refusal { kind: RefusalKind::NotFound, error: error.into() }
    }

    pub fn busy(error: impl Into<String>) -> Refusal {
        Refusal { kind: RefusalKind::Busy, error: error.into() }
    }

    pub fn unavailable(error: impl Into<String>) -> Refusal {
        Refusal { kind: RefusalKind::Unavailable, error: error.into() }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error)
    }
}

/// What a queryable answers: a JSON value, or why not.
pub type Answer = Result<serde_json::Value, Refusal>;

/// Why asking a node gave no answer to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AskError {
    /// No node answered in time (or the query could not be sent).
    NoAnswer { selector: String, why: String },
    /// The node answered with a refusal.
    Refused { selector: String, refusal: Refusal },
    /// The node answered something that is not JSON.
    Garbled { selector: String, why: String },
}

impl AskError {
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            AskError::Refused { refusal, .. } => Some(refusal),
            _ => None,
        }
    }
}

impl fmt::Display for AskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AskError::NoAnswer { selector, why } => write!(f, "{selector}: {why}"),
            AskError::Refused { selector, refusal } => write!(f, "{selector}: {}", refusal.error),
            AskError::Garbled { selector, why } => write!(f, "{selector}: answer is not JSON: {why}"),
        }
    }
}

impl std::error::Error for AskError {}

/// The answer to a bulk request: one outcome per item, in the request's order, each the
/// item's answer (`{"ok": …}`) or why it was not taken (`{"refused": …}`); the sender
/// retries the refused ones on their own.
pub fn outcomes_json(outcomes: Vec<Answer>) -> serde_json::Value {
    let items = outcomes.into_iter().map(|o| match o {
        Ok(value) => serde_json::json!({ "ok": value }),
        Err(refusal) => serde_json::json!({ "refused": refusal }),
    });
    serde_json::Value::Array(items.collect())
}

/// Reads `outcomes_json` back, checking it has one outcome per item sent (`expected`).
pub fn outcomes_of(value: serde_json::Value, expected: usize) -> Result<Vec<Answer>, String> {
    let serde_json::Value::Array(items) = value else { return Err("outcomes: not a list".to_string()) };
    if items.len() != expected {
        return Err(format!("outcomes: {} for {expected} items", items.len()));
    }
    let outcome = |mut item: serde_json::Value| -> Result<Answer, String> {
        if let Some(ok) = item.get_mut("ok") {
            return Ok(Ok(ok.take()));
        }
        match item.get_mut("refused") {
            Some(refused) => serde_json::from_value(refused.take()).map(Err).map_err(|e| format!("outcomes: refused: {e}")),
            None => Err("outcomes: an item is neither ok nor refused".to_string()),
        }
    };
    items.into_iter().map(outcome).collect()
}

/// Reads an error reply's payload back into the refusal it carries.
pub fn refusal_of(payload: &[u8]) -> Refusal {
    serde_json::from_slice(payload).unwrap_or_else(|_| Refusal::unavailable(String::from_utf8_lossy(payload).into_owned()))
}

/// The payload of a query as bytes, refused when larger than `max_bytes`.
pub fn query_bytes(query: &zenoh::query::Query, max_bytes: usize) -> Result<Vec<u8>, Refusal> {
    let bytes = query.payload().map(|p| p.to_bytes().into_owned()).unwrap_or_default();
    if bytes.len() > max_bytes {
        return Err(Refusal::invalid(format!("payload: {} bytes; the limit is {max_bytes}", bytes.len())));
    }
    Ok(bytes)
}

/// The payload of a query as JSON of `T`, refused when larger than `max_bytes` or not `T`.
pub fn query_json<T: serde::de::DeserializeOwned>(query: &zenoh::query::Query, max_bytes: usize) -> Result<T, Refusal> {
    let bytes = query_bytes(query, max_bytes)?;
    serde_json::from_slice(&bytes).map_err(|e| Refusal::invalid(format!("payload: {e}")))
}

/// Answers every query on `key` (a key without wildcards) with what `answer` resolves to (a refusal as an error
/// reply), each query in its own task so that a slow answer holds up no other. Runs until
/// the session closes.
pub async fn serve_json<F, Fut>(session: zenoh::Session, key: String, answer: F)
where
    F: Fn(zenoh::query::Query) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = (zenoh::query::Query, Answer)> + Send + 'static,
{
    let queryable = match session.declare_queryable(&key).await {
        Ok(q) => q,
        Err(e) => return tracing::error!("zenoh queryable {key}: {e}"),
    };
    // Answers carry the queryable's own key, not the (perhaps wildcard) key asked: the
    // asker can tell which node answered.
    let own_key = match zenoh::key_expr::KeyExpr::try_from(key.clone()) {
        Ok(k) => k,
        Err(e) => return tracing::error!("zenoh queryable {key}: {e}"),
    };
    while let Ok(query) = queryable.recv_async().await {
        let pending = answer(query);
        let own_key = own_key.clone();
        tokio::spawn(async move {
            let (query, answer) = pending.await;
            let sent = match answer {
                Ok(value) => query.reply(own_key, value.to_string()).await,
                Err(refusal) => query.reply_err(serde_json::to_string(&refusal).expect("a refusal serializes")).await,
            };
            if let Err(e) = sent {
                tracing::debug!("reply on {}: {e}", query.key_expr());
            }
        });
    }
}

/// `serve_json` for answers computed at once from the query (no waiting).
pub async fn serve_json_now<F>(session: zenoh::Session, key: String, answer: F)
where
    F: Fn(&zenoh::query::Query) -> Answer + Send + Sync + 'static,
{
    serve_json(session, key, move |query| {
        let value = answer(&query);
        async move { (query, value) }
    })
    .await
}

/// Asks `selector` with a JSON payload (`Block` congestion control) and returns the first
/// answer as JSON. No answer within `timeout`, or a refusal, is an error.
pub async fn ask_json(
    session: &zenoh::Session,
    selector: &str,
    payload: Option<String>,
    timeout: Duration,
) -> Result<serde_json::Value, AskError> {
    let no_answer = |why: String| AskError::NoAnswer { selector: selector.to_string(), why };
    let mut get = session.get(selector).congestion_control(zenoh::qos::CongestionControl::Block).timeout(timeout);
    if let Some(payload) = payload {
        get = get.payload(payload);
    }
    let replies = get.await.map_err(|e| no_answer(e.to_string()))?;
    let reply = replies.recv_async().await.map_err(|_| no_answer("no answer".to_string()))?;
    let sample =
        reply.result().map_err(|e| AskError::Refused { selector: selector.to_string(), refusal: refusal_of(&e.payload().to_bytes()) })?;
    serde_json::from_slice(&sample.payload().to_bytes())
        .map_err(|e| AskError::Garbled { selector: selector.to_string(), why: e.to_string() })
}

/// Asks `selector` of every node that answers it (a wildcard selector reaches many) and
/// returns each answer by the key it came from, until all answered or `timeout` passed.
pub async fn ask_all(
    session: &zenoh::Session,
    selector: &str,
    timeout: Duration,
) -> Result<Vec<(String, Result<serde_json::Value, String>)>, String> {
    let replies = session
        .get(selector)
        .target(zenoh::query::QueryTarget::All)
        .consolidation(zenoh::query::ConsolidationMode::None)
        .congestion_control(zenoh::qos::CongestionControl::Block)
        .timeout(timeout)
        .await
        .map_err(|e| format!("{selector}: {e}"))?;
    let mut out = Vec::new();
    while let Ok(reply) = replies.recv_async().await {
        match reply.result() {
            Ok(sample) => {
                let value = serde_json::from_slice(&sample.payload().to_bytes()).map_err(|e| format!("answer is not JSON: {e}"));
                out.push((sample.key_expr().to_string(), value));
            }
            Err(e) => out.push((String::new(), Err(format!("refused: {}", refusal_of(&e.payload().to_bytes()))))),
        }
        if out.len() >= MAX_ANSWERS {
            break;
        }
    }
    Ok(out)
}

/// Most answers `ask_all` collects from one query.
pub const MAX_ANSWERS: usize = 10_000;

/// Frames journal entries as `(seq u64, length u32, bytes)` records, big-endian.
pub fn encode_frame<'a>(entries: impl IntoIterator<Item = (u64, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (seq, bytes) in entries {
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// The sequence number of a frame's trailer record: the sender's signed head (a proof over
/// its last entry, see `sign::head_message`), never a journal entry.
pub const PROOF_SEQ: u64 = u64::MAX;

/// A decoded frame: its bytes as received, where each entry lies in them, and its trailer
/// (the sender's signed head) if it carried one. One buffer for the whole frame: a region
/// catching up reads a thousand entries per frame, and a buffer per entry was a tenth of
/// its time (`ledger-bench geo`).
#[derive(Debug)]
pub struct Frame {
    bytes: Vec<u8>,
    /// `(seq, start, end)` of each entry's bytes, in the frame's order.
    entries: Vec<(u64, usize, usize)>,
    trailer: Option<(usize, usize)>,
}

impl Frame {
    /// Reads a frame; refuses anything malformed or over the limits (a trailer is allowed
    /// beyond `MAX_FRAME_ENTRIES`, as the last record only).
    pub fn decode(bytes: Vec<u8>) -> Result<Frame, String> {
        let mut entries = Vec::new();
        let mut trailer = None;
        let mut at = 0;
        while at < bytes.len() {
            let header = bytes.get(at..at + 12).ok_or("frame: truncated record header")?;
            let seq = u64::from_be_bytes(header[..8].try_into().expect("8 bytes"));
            let len = u32::from_be_bytes(header[8..12].try_into().expect("4 bytes")) as usize;
            let (start, end) = (at + 12, at + 12 + len);
            if len > MAX_ENTRY_BYTES || bytes.len() < end {
                return Err(format!("frame: entry {seq} has a bad length {len}"));
            }
            if trailer.is_some() {
                return Err("frame: a record after the trailer".to_string());
            }
            if seq == PROOF_SEQ {
                trailer = Some((start, end));
            } else if entries.len() == MAX_FRAME_ENTRIES {
                return Err(format!("frame: more than {MAX_FRAME_ENTRIES} entries"));
            } else {
                entries.push((seq, start, end));
            }
            at = end;
        }
        Ok(Frame { bytes, entries, trailer })
    }

    /// `(seq, stored bytes)` of each entry, in order.
    pub fn entries(&self) -> impl DoubleEndedIterator<Item = (u64, &[u8])> + ExactSizeIterator + '_ {
        self.entries.iter().map(|&(seq, start, end)| (seq, &self.bytes[start..end]))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn first_seq(&self) -> Option<u64> {
        self.entries.first().map(|e| e.0)
    }

    pub fn last_seq(&self) -> Option<u64> {
        self.entries.last().map(|e| e.0)
    }

    pub fn trailer(&self) -> Option<&[u8]> {
        self.trailer.map(|(start, end)| &self.bytes[start..end])
    }

    /// Appends the entries of `later` and takes its trailer in place of this one's (this
    /// one's bytes stay in the buffer, unused). The caller sees to it that they continue
    /// this frame's entries and stay within a frame.
    pub fn join(&mut self, later: Frame) {
        debug_assert!(self.len() + later.len() <= MAX_FRAME_ENTRIES, "a joined frame stays within a frame");
        debug_assert!(
            self.last_seq().is_none() || self.last_seq().and_then(|seq| seq.checked_add(1)) == later.first_seq(),
            "a joined frame continues this one"
        );
        let base = self.bytes.len();
        self.bytes.extend_from_slice(&later.bytes);
        self.entries.extend(later.entries.iter().map(|&(seq, start, end)| (seq, base + start, base + end)));
        self.trailer = later.trailer.map(|(start, end)| (base + start, base + end));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(frame: &Frame) -> Vec<(u64, Vec<u8>)> {
        frame.entries().map(|(seq, bytes)| (seq, bytes.to_vec())).collect()
    }

    #[test]
    fn frames_round_trip_and_refuse_garbage() {
        let frame = encode_frame([(1, &b"one"[..]), (2, &b""[..]), (3, &b"three"[..])]);
        let back = Frame::decode(frame.clone()).unwrap();
        assert_eq!(records(&back), vec![(1, b"one".to_vec()), (2, Vec::new()), (3, b"three".to_vec())]);
        assert_eq!((back.first_seq(), back.last_seq(), back.trailer()), (Some(1), Some(3), None));
        assert!(Frame::decode(frame[..frame.len() - 1].to_vec()).is_err());
        assert!(Frame::decode(vec![0; 5]).is_err());
        assert!(Frame::decode(Vec::new()).unwrap().is_empty());
        let signed = Frame::decode(encode_frame([(1, &b"one"[..]), (PROOF_SEQ, &b"proof"[..])])).unwrap();
        assert_eq!((records(&signed), signed.trailer()), (vec![(1, b"one".to_vec())], Some(&b"proof"[..])));
        assert!(Frame::decode(encode_frame([(PROOF_SEQ, &b"p"[..]), (2, &b"two"[..])])).is_err(), "nothing after the trailer");
        let one = b"x".to_vec();
        let too_many = encode_frame((1..=MAX_FRAME_ENTRIES as u64 + 1).map(|seq| (seq, &one[..])));
        assert!(Frame::decode(too_many).is_err());
    }

    #[test]
    fn a_joined_frame_has_both_frames_entries_and_the_later_trailer() {
        let mut first = Frame::decode(encode_frame([(1, &b"one"[..]), (PROOF_SEQ, &b"head-1"[..])])).unwrap();
        first.join(Frame::decode(encode_frame([(2, &b"two"[..]), (3, &b"3"[..]), (PROOF_SEQ, &b"head-3"[..])])).unwrap());
        assert_eq!(records(&first), vec![(1, b"one".to_vec()), (2, b"two".to_vec()), (3, b"3".to_vec())]);
        assert_eq!(first.trailer(), Some(&b"head-3"[..]));
        first.join(Frame::decode(encode_frame([(4, &b"four"[..])])).unwrap());
        assert_eq!((first.len(), first.trailer()), (4, None));
    }

    #[test]
    fn keys_nest_node_ids() {
        assert_eq!(keys::journal_entries("eu/berlin-1"), "ledger/v1/journal/eu/berlin-1/entries");
        assert_eq!(keys::status("eu"), "ledger/v1/status/eu");
    }
}
