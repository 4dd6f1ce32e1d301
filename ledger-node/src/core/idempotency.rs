//! Every id takes effect once: the recorded result of each id, and the fingerprint that
//! tells a resend (same content: the recorded reply again, marked `duplicate`) from a
//! conflict (same id, other content: `id_conflict`). Ids are scoped to the device that
//! chose them (`IdKey`): two devices may use the same id, and no device can take another's.

use super::command::Command;
use super::reply::Reply;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// An id as the ledger keys it: the principal that sent it (a device id, `~operator`) and
/// the id it chose. Written `principal:id`; device ids and `~operator` hold no `:`, so the
/// first `:` splits it. Holds, id records and cross-node transfer keys all use this form;
/// devices see only their own id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdKey(String);

impl IdKey {
    pub fn new(principal: Option<&str>, id: &str) -> IdKey {
        let principal = principal.unwrap_or("");
        debug_assert!(!principal.contains(':'), "principals hold no ':'");
        IdKey(format!("{principal}:{id}"))
    }

    /// Reads a key back from its written form (a hold's `pending_id`, a transfer key's id).
    pub fn parse(text: &str) -> Option<IdKey> {
        text.contains(':').then(|| IdKey(text.to_string()))
    }

    /// The principal that chose the id (empty when none was known).
    pub fn principal(&self) -> &str {
        self.0.split_once(':').map_or("", |(p, _)| p)
    }

    /// The id as its sender wrote it.
    pub fn id(&self) -> &str {
        sender_id(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Display for IdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id a device wrote, from a key in the ledger's form (`principal:id`).
pub fn sender_id(key: &str) -> &str {
    key.split_once(':').map_or(key, |(_, id)| id)
}

/// The recorded result of an id: what a resend with the same content gets back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    pub fingerprint: String,
    pub reply: Reply,
}

impl Recorded {
    /// The recorded reply again, marked `duplicate`, when the resend has the recorded
    /// content; `None` when the id was used for something else.
    pub fn resend(&self, fingerprint: &str) -> Option<Reply> {
        (self.fingerprint == fingerprint).then(|| Reply { duplicate: true, ..self.reply.clone() })
    }
}

/// Shards of the id index. One map of a million records stalls the node for most of a
/// second each time it doubles; a thousand maps each grow a thousandth at a time.
const ID_SHARDS: usize = 1024;

/// Every id's recorded result, boxed so that growing a shard moves pointers, not replies.
/// Ids are chosen by devices, so each shard's table keeps std's keyed (SipHash) hashing:
/// crafted ids cannot pile into one bucket chain.
pub struct IdIndex {
    shards: Vec<HashMap<String, Box<Recorded>>>,
}

impl Default for IdIndex {
    fn default() -> IdIndex {
        IdIndex { shards: (0..ID_SHARDS).map(|_| HashMap::default()).collect() }
    }
}

impl IdIndex {
    /// The shard from the high bits; the shard's table uses the low ones.
    fn shard(id: &str) -> usize {
        (fnv1a(id.as_bytes()) >> 54) as usize % ID_SHARDS
    }

    pub fn get(&self, id: &str) -> Option<&Recorded> {
        self.shards[Self::shard(id)].get(id).map(|b| &**b)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.shards[Self::shard(id)].contains_key(id)
    }

    pub fn insert(&mut self, id: String, recorded: Recorded) {
        let shard = Self::shard(&id);
        self.shards[shard].insert(id, Box::new(recorded));
    }
}

/// BLAKE3 over the device and the canonical JSON of the command, so that no device can
/// craft a command that passes for another's. Stable across runs and versions, which
/// replay relies on.
pub fn fingerprint(device: Option<&str>, command: &impl Serialize) -> String {
    let mut bytes = Vec::with_capacity(256);
    bytes.extend_from_slice(device.unwrap_or("").as_bytes());
    bytes.push(0);
    serde_json::to_writer(&mut bytes, command).expect("command serializes");
    blake3::hash(&bytes).to_hex()[..32].to_string()
}

/// An op inside a batch is fingerprinted with its batch, so it cannot be resent alone as a
/// "duplicate" of something it never was.
pub fn fingerprint_in_batch(device: Option<&str>, batch_id: &str, op: &Command) -> String {
    fingerprint(device, &Command { id: format!("{batch_id}/{}", op.id), op: op.op.clone() })
}

/// FNV-1a, 64 bits: spreads ids over the id shards.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME))
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
