//! Every id takes effect once: the recorded result of each id, and the fingerprint that
//! tells a resend (same content: the recorded reply again, marked `duplicate`) from a
//! conflict (same id, other content: `id_conflict`). Ids are scoped to the device that
//! chose them (`IdKey`): two devices may use the same id, and no device can take another's.

use super::canonical_json::{self, CanonicalJson};
use super::change::EntryBody;
use super::command::{Command, Journaled, Op};
use super::fingerprint::Fingerprint;
use super::id_filter::IdFilter;
use super::reply::{Reply, Status};
use super::shards::Sharded;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;

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
        // Built by hand: `format!` was a visible share of applying a transfer.
        let mut key = String::with_capacity(principal.len() + 1 + id.len());
        key.push_str(principal);
        key.push(':');
        key.push_str(id);
        IdKey(key)
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
    pub fingerprint: Fingerprint,
    pub reply: Reply,
}

impl Recorded {
    /// The recorded reply again, marked `duplicate`, when the resend has the recorded
    /// content; `None` when the id was used for something else.
    pub fn resend(&self, fingerprint: &Fingerprint) -> Option<Reply> {
        (self.fingerprint == *fingerprint).then(|| Reply { duplicate: true, ..self.reply.clone() })
    }
}

/// Where the id records that left RAM are read back: the node's file. The core only reads
/// through it (the shell writes every record in the same commit as its group), so its
/// answers are those of the last durable commit; records of groups not yet durable stay in
/// RAM until they are.
pub trait IdArchive: Send {
    fn lookup(&self, key: &str) -> Option<Recorded>;
}

/// The id records a node keeps in RAM: all of them (tools, tests, the default), none (a
/// region's replicas, which never answer resends), or the most recent `capacity` with the
/// rest in an `IdArchive`. A record is evicted only once the group that made it is durable,
/// so an id is never treated as new: it is in RAM, or on disk.
pub struct IdIndex {
    /// Keys shared with `order`: one allocation per record. Sharded (`shards`): eviction
    /// churns it, and one table this size would rehash all at once, stalling the intake.
    /// Records are boxed: a table slot is then 24 bytes, not a whole reply, so a shard's
    /// rehash moves little.
    map: Sharded<Arc<str>, Box<Cached>>,
    /// Insertion order, oldest first, with the group that made each record: what eviction
    /// takes, told durable or not without a lookup in `map`.
    order: VecDeque<(Arc<str>, u64)>,
    mode: Keep,
    /// Records of groups up to this one are durable (see `IdIndex::durable`).
    durable_group: u64,
    group: u64,
    pub stats: IdCacheStats,
}

enum Keep {
    All,
    Nothing,
    /// `filter` holds every key recorded, so that a new id needs no archive read; until
    /// it is `complete` (built in the background at start-up) every miss reads the archive.
    Recent {
        capacity: usize,
        archive: Box<dyn IdArchive>,
        filter: IdFilter,
        complete: bool,
    },
}

struct Cached {
    recorded: Recorded,
    group: u64,
}

/// Counters of the id cache since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdCacheStats {
    pub hits: u64,
    /// Known new at once (the filter never saw them).
    pub never_seen: u64,
    /// Looked up in the archive (ids evicted from RAM, and the filter's false positives).
    pub misses: u64,
    pub evictions: u64,
}

impl Default for IdIndex {
    fn default() -> IdIndex {
        IdIndex::with(Keep::All)
    }
}

impl IdIndex {
    fn with(mode: Keep) -> IdIndex {
        IdIndex { map: Sharded::with_capacity(0), order: VecDeque::new(), mode, durable_group: 0, group: 0, stats: IdCacheStats::default() }
    }

    /// Keeps no records: for ledgers that replay a journal and never answer commands.
    pub fn none() -> IdIndex {
        IdIndex::with(Keep::Nothing)
    }

    /// Keeps the most recent `capacity` records in RAM and reads older ones from `archive`.
    pub fn recent(capacity: usize, archive: Box<dyn IdArchive>) -> IdIndex {
        assert!(capacity > 0, "an id cache holds at least one record");
        let mode = Keep::Recent { capacity, archive, filter: IdFilter::default(), complete: true };
        IdIndex { map: Sharded::with_capacity(capacity.min(1 << 20)), ..IdIndex::with(mode) }
    }

    /// The record of `key`: from RAM, or else from the archive.
    pub fn get(&mut self, key: &str) -> Option<Recorded> {
        if let Some(cached) = self.map.get(key) {
            self.stats.hits += 1;
            return Some(cached.recorded.clone());
        }
        match &self.mode {
            Keep::Recent { filter, complete: true, .. } if !filter.may_contain(key) => {
                self.stats.never_seen += 1;
                None
            }
            Keep::Recent { archive, .. } => {
                self.stats.misses += 1;
                archive.lookup(key)
            }
            Keep::All | Keep::Nothing => None,
        }
    }

    pub fn contains(&mut self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Remembers `key`'s record as made by the current group.
    pub fn insert(&mut self, key: &str, recorded: Recorded) {
        let capacity = match &mut self.mode {
            Keep::Nothing => return,
            Keep::All => usize::MAX,
            Keep::Recent { capacity, filter, .. } => {
                filter.insert(key);
                *capacity
            }
        };
        let cached = Box::new(Cached { recorded, group: self.group });
        let key: Arc<str> = key.into();
        // Keeping everything, nothing is ever evicted: no order to keep.
        if self.map.insert(key.clone(), cached).is_none() && capacity != usize::MAX {
            self.order.push_back((key, self.group));
        }
        self.evict(capacity);
    }

    /// Starts the next group of commands; returns its number, which the shell reports
    /// back through `durable` once the group's commit returned.
    pub fn next_group(&mut self) -> u64 {
        self.group += 1;
        self.group
    }

    /// Goes on numbering after `group`. Every record held so far came from the file, so it
    /// is durable.
    pub fn number_groups_after(&mut self, group: u64) {
        debug_assert!(self.map.values().all(|c| c.group <= self.durable_group), "only durable records are renumbered");
        self.group = self.group.max(group);
        self.durable_group = self.durable_group.max(group);
    }

    /// Groups up to `group` are on disk: their records may leave RAM.
    pub fn durable(&mut self, group: u64) {
        debug_assert!(group <= self.group, "a group is durable only after it was made");
        self.durable_group = self.durable_group.max(group);
        if let Keep::Recent { capacity, .. } = self.mode {
            self.evict(capacity);
        }
    }

    /// Drops the oldest records beyond `capacity` that are durable. A record not yet
    /// durable stops eviction: the cache then holds at most the records of the groups in
    /// flight beyond its capacity.
    fn evict(&mut self, capacity: usize) {
        while self.map.len() > capacity {
            match self.order.front() {
                Some((_, group)) if *group <= self.durable_group => {}
                _ => break,
            }
            let (oldest, _) = self.order.pop_front().expect("checked");
            let Some(cached) = self.map.remove(&oldest) else { continue };
            if cached.group > self.durable_group {
                // Recorded again since (a record replaced by a later group): it keeps its
                // place until that group is durable.
                self.order.push_back((oldest.clone(), cached.group));
                self.map.insert(oldest, cached);
                continue;
            }
            self.stats.evictions += 1;
        }
    }

    /// Tells the filter of a key recorded in the archive (start-up: the records of
    /// rejected commands, which no journal entry replays).
    pub fn know(&mut self, key: &str) {
        if let Keep::Recent { filter, .. } = &mut self.mode {
            filter.insert(key);
        }
    }

    /// From now on the filter knows only the keys recorded from here: until
    /// `complete_filter` brings the older ones, a miss reads the archive. Returns the empty
    /// filter to fill with those older keys (same hash key). None: no filter kept.
    pub fn filter_to_build(&mut self) -> Option<IdFilter> {
        match &mut self.mode {
            Keep::Recent { filter, complete, .. } => {
                *complete = false;
                Some(filter.sibling())
            }
            Keep::All | Keep::Nothing => None,
        }
    }

    /// Takes the filter of the older keys (`filter_to_build`): new ids are told at once again.
    pub fn complete_filter(&mut self, built: IdFilter) {
        if let Keep::Recent { filter, complete, .. } = &mut self.mode {
            filter.absorb(built);
            *complete = true;
        }
    }

    /// The records RAM holds at most (beyond groups in flight); `None`: all of them.
    pub fn capacity(&self) -> Option<usize> {
        match &self.mode {
            Keep::Recent { capacity, .. } => Some(*capacity),
            Keep::Nothing => Some(0),
            Keep::All => None,
        }
    }

    /// Bytes of the "never seen" filter.
    pub fn filter_bytes(&self) -> usize {
        match &self.mode {
            Keep::Recent { filter, .. } => filter.bytes(),
            Keep::All | Keep::Nothing => 0,
        }
    }

    /// Records held in RAM.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether every record stays in RAM (then the store restores the rejected ones).
    pub fn keeps_all(&self) -> bool {
        matches!(self.mode, Keep::All)
    }

    pub fn keeps_nothing(&self) -> bool {
        matches!(self.mode, Keep::Nothing)
    }
}

/// An id record as the store writes it, in the same commit as its group: a rejection in
/// full (no journal entry holds it), or where in the journal an accepted command's reply is
/// (`op`: the index of a batch's op, `None` for the command itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdRecord {
    Rejected(Box<Recorded>),
    Journaled { fingerprint: Fingerprint, seq: u64, op: Option<usize> },
}

/// The recorded result of an accepted command (or of op `op` of a batch) from its journal
/// entry: what a resend gets back. `None` when the entry holds no such command.
pub fn journaled_recorded(body: &EntryBody, fingerprint: Fingerprint, op: Option<usize>) -> Option<Recorded> {
    let reply = body.reply.as_ref()?;
    let Journaled::Device(command) = &body.command else { return None };
    let reply = match (op, &command.op) {
        (None, _) => reply.clone(),
        (Some(i), Op::Batch { ops }) => {
            let op = ops.get(i)?;
            let status = if matches!(op.op, Op::Hold { .. }) { Status::Pending } else { Status::Committed };
            Reply::ok(&op.id, status, body.seq, format!("{} committed in batch {}", op.op.name(), command.id))
        }
        (Some(_), _) => return None,
    };
    Some(Recorded { fingerprint, reply })
}

/// The record of the command with key `key` in `body` (or of op `op` of its batch), taken
/// under `fingerprint`: the reply is the entry's. `None` when the entry holds no such
/// command (its device and id must make `key`).
pub fn recorded_in_entry(body: &EntryBody, key: &str, op: Option<usize>, fingerprint: Fingerprint) -> Option<Recorded> {
    let Journaled::Device(command) = &body.command else { return None };
    let id = match (op, &command.op) {
        (None, _) => &command.id,
        (Some(i), Op::Batch { ops }) => &ops.get(i)?.id,
        (Some(_), _) => return None,
    };
    if IdKey::new(body.device.as_deref(), id).as_str() != key {
        return None;
    }
    journaled_recorded(body, fingerprint, op)
}

/// The fingerprint the id of an accepted command (`op`: of its batch's op) was taken
/// under, computed again from its journal entry. Exact only for a command that
/// `reads_back`; `None` when the entry holds no such command.
pub fn fingerprint_in_entry(body: &EntryBody, op: Option<usize>) -> Option<Fingerprint> {
    let Journaled::Device(command) = &body.command else { return None };
    let device = body.device.as_deref();
    match (op, &command.op) {
        (None, _) => Some(fingerprint(device, command)),
        (Some(i), Op::Batch { ops }) => Some(fingerprint_in_batch(device, &command.id, ops.get(i)?)),
        (Some(_), _) => None,
    }
}

/// Whether `command`, read back from its journal entry, serializes to the same JSON, so
/// that its fingerprint can be computed again instead of being stored. Every field does
/// but a `metadata` number that is not an integer: serde_json does not read every float
/// back to the same value (9.8e26, for one).
pub fn reads_back(command: &Command) -> bool {
    fn exact(value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::Number(n) => n.is_i64() || n.is_u64(),
            serde_json::Value::Array(items) => items.iter().all(exact),
            serde_json::Value::Object(fields) => fields.values().all(exact),
            _ => true,
        }
    }
    match &command.op {
        Op::Transfer(movement) | Op::Hold { movement, .. } => movement.metadata.as_ref().is_none_or(exact),
        Op::Batch { ops } => ops.iter().all(reads_back),
        Op::OpenAccount { .. } | Op::CloseAccount { .. } | Op::Post { .. } | Op::Void { .. } | Op::Balance { .. } => true,
    }
}

/// BLAKE3 over the device and the canonical JSON of the command, so that no device can
/// craft a command that passes for another's. Stable across runs and versions, which
/// replay relies on.
pub fn fingerprint(device: Option<&str>, command: &impl CanonicalJson) -> Fingerprint {
    fingerprint_of(device, |bytes| command.write_json(bytes))
}

/// An op inside a batch is fingerprinted with its batch (as the op renamed
/// `{batch_id}/{id}`), so it cannot be resent alone as a "duplicate" of something it never
/// was.
pub fn fingerprint_in_batch(device: Option<&str>, batch_id: &str, op: &Command) -> Fingerprint {
    fingerprint_of(device, |bytes| canonical_json::write_batch_op(batch_id, op, bytes))
}

fn fingerprint_of(device: Option<&str>, write_json: impl FnOnce(&mut Vec<u8>)) -> Fingerprint {
    let mut bytes = Vec::with_capacity(256);
    bytes.extend_from_slice(device.unwrap_or("").as_bytes());
    bytes.push(0);
    write_json(&mut bytes);
    Fingerprint::of(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::command::parse;
    use crate::core::entry_codec;

    /// The intake's fingerprints, and those an entry gives back after its bytes are read.
    fn taken_and_read_back(json: &str) -> (bool, Vec<(Fingerprint, Option<Fingerprint>)>) {
        let command = parse(json.as_bytes(), 16).expect("a valid command");
        let device = Some("pos-1");
        let mut taken = vec![(None, fingerprint(device, &command))];
        if let Op::Batch { ops } = &command.op {
            taken.extend(ops.iter().enumerate().map(|(i, op)| (Some(i), fingerprint_in_batch(device, &command.id, op))));
        }
        let reads = reads_back(&command);
        let body = EntryBody {
            seq: 7,
            ts_ms: 1,
            device: device.map(str::to_string),
            command: Journaled::Device(command),
            changes: vec![],
            reply: None,
        };
        let read = entry_codec::decode(&entry_codec::encode(&body)).expect("it reads");
        (reads, taken.into_iter().map(|(op, f)| (f, fingerprint_in_entry(&read, op))).collect())
    }

    #[test]
    fn an_entry_gives_back_the_fingerprints_of_commands_that_read_back() {
        for json in [
            r#"{"id":"t1","op":"transfer","debit":"wallet:a","credit":"till:1","amount":"1.50","asset":"EUR","metadata":{"order":"A-17","n":[1,-2,{"x":null,"y":true}],"big":18446744073709551615}}"#,
            r#"{"id":"h1","op":"hold","debit":"wallet:a","credit":"till:1","amount":"1.50","asset":"EUR","timeout_s":30}"#,
            r#"{"id":"b1","op":"batch","ops":[{"id":"b1a","op":"transfer","debit":"wallet:a","credit":"till:1","amount":"1","asset":"EUR","metadata":{"k":"\u00e9\n"}},{"id":"b1b","op":"post","pending_id":"h1"}]}"#,
            r#"{"id":"o1","op":"open_account","account":"wallet:z","asset":"EUR","flags":["no_overdraft"],"overdraft_limit":"5"}"#,
        ] {
            let (reads, fingerprints) = taken_and_read_back(json);
            assert!(reads, "{json}");
            for (taken, again) in fingerprints {
                assert_eq!(Some(taken), again, "{json}");
            }
        }
        // A float anywhere in metadata, of the command or of a batch's op: the fingerprint
        // is stored instead (this one does not read back to the same value).
        for json in [
            r#"{"id":"t2","op":"transfer","debit":"wallet:a","credit":"till:1","amount":"1","asset":"EUR","metadata":{"kwh":9.8e26}}"#,
            r#"{"id":"b2","op":"batch","ops":[{"id":"b2a","op":"transfer","debit":"wallet:a","credit":"till:1","amount":"1","asset":"EUR","metadata":{"a":[0.5]}}]}"#,
        ] {
            assert!(!taken_and_read_back(json).0, "{json}");
        }
    }

    /// The node's file, for the cache's misses: records written there by the shell.
    struct FileStandIn(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Recorded>>>);

    impl IdArchive for FileStandIn {
        fn lookup(&self, key: &str) -> Option<Recorded> {
            self.0.lock().unwrap().get(key).cloned()
        }
    }

    fn recorded(n: u64) -> Recorded {
        Recorded {
            fingerprint: Fingerprint::of(format!("f{n}").as_bytes()),
            reply: Reply::ok(&format!("t{n}"), Status::Committed, n, "transfer committed"),
        }
    }

    #[test]
    fn the_cache_evicts_the_oldest_durable_records_only() {
        let file = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let mut ids = IdIndex::recent(2, Box::new(FileStandIn(file.clone())));
        let g1 = ids.next_group();
        for n in 1..=3 {
            ids.insert(&format!("d:t{n}"), recorded(n));
        }
        assert_eq!(ids.len(), 3, "nothing leaves RAM before its group is durable");
        let g2 = ids.next_group();
        ids.insert("d:t4", recorded(4));
        // t2 recorded again by a later group (a replaced record keeps its first place in line).
        ids.insert("d:t2", recorded(22));
        for n in 1..=3 {
            file.lock().unwrap().insert(format!("d:t{n}"), recorded(n));
        }
        ids.durable(g1);
        // t1 and t3 leave; t2 was recorded again by g2, which is not durable: it stays.
        assert_eq!(ids.len(), 2);
        assert_eq!(ids.stats.evictions, 2);
        assert_eq!(ids.get("d:t2"), Some(recorded(22)), "the newer record, from RAM");
        let hits = ids.stats.hits;
        assert_eq!(ids.get("d:t1"), Some(recorded(1)), "an evicted record is read back from the file");
        assert_eq!(ids.stats.hits, hits);
        assert_eq!(ids.get("d:t9"), None, "never seen");
        ids.durable(g2);
        ids.next_group();
        ids.insert("d:t5", recorded(5));
        assert_eq!(ids.len(), 2, "at capacity once every group is durable");
        // t2 went back in line behind t4 when its second record kept it in RAM.
        assert!(ids.map.get("d:t4").is_none(), "the oldest durable record left");
        assert!(ids.map.get("d:t2").is_some() && ids.map.get("d:t5").is_some());
    }
}
