//! Decisions on cross-node transfers this node received, by transfer key: what a
//! redelivery of the same transfer is answered with.
//!
//! A decision is final once recorded. With a `ReceivedArchive`, it leaves RAM once the
//! group that recorded it is durable and more than `capacity` are held (see `leaving`), and
//! a redelivery reads it back from the archive (the node's file).

use super::address::TransferKey;
use super::command::Movement;
use super::idempotency::Recorded;
use super::keyed_hash::KeyedMap;
use super::leaving::{LeaveOrder, LeaveStats, LeavesRam};
use std::borrow::Cow;

/// A cross-node transfer this node received, and its recorded decision.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Received {
    pub source: String,
    pub id: String,
    /// As delivered: `debit` at the source, `credit` here, the amount as a decimal string.
    pub movement: Movement,
    pub recorded: Recorded,
}

/// Where decisions that left RAM are read back: the node's file, as of its last durable
/// commit.
pub trait ReceivedArchive: Send {
    fn lookup(&self, key: &TransferKey) -> Option<Received>;
}

/// The decisions on cross-node transfers received, by transfer key.
#[derive(Default)]
pub struct ReceivedIndex {
    map: KeyedMap<TransferKey, Box<Received>>,
    /// None: every decision stays in RAM (tools, replays).
    archived: Option<Archived>,
}

struct Archived {
    archive: Box<dyn ReceivedArchive>,
    leaving: LeaveOrder,
}

impl std::fmt::Debug for ReceivedIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceivedIndex").field("in_ram", &self.map.len()).field("archived", &self.archived.is_some()).finish()
    }
}

impl ReceivedIndex {
    /// Keeps at most `capacity` decisions in RAM (beyond those of groups not yet durable);
    /// the others are read from `archive`.
    pub fn archive(&mut self, capacity: usize, archive: Box<dyn ReceivedArchive>) {
        debug_assert!(self.map.is_empty(), "the archive is chosen before any decision");
        self.archived = Some(Archived { archive, leaving: LeaveOrder::new(capacity) });
    }

    /// The decision on `key`, from RAM or else from the archive.
    pub fn get(&mut self, key: &TransferKey) -> Option<Cow<'_, Received>> {
        if self.map.contains_key(key) {
            return self.map.get(key).map(|b| Cow::Borrowed(&**b));
        }
        let archived = self.archived.as_mut()?;
        archived.leaving.read_back();
        archived.archive.lookup(key).map(Cow::Owned)
    }

    /// The decision on `key` if it is in RAM.
    pub fn in_ram(&self, key: &TransferKey) -> Option<&Received> {
        self.map.get(key).map(|b| &**b)
    }

    /// Records a decision, made final by the current group.
    pub fn insert(&mut self, received: Received) {
        let key = TransferKey::new(&received.source, &received.id);
        if let Some(a) = &mut self.archived {
            a.leaving.made_final(&key.to_string());
        }
        self.map.insert(key, Box::new(received));
        self.evict();
    }

    /// The decisions in RAM.
    pub fn iter(&self) -> impl Iterator<Item = &Received> {
        self.map.values().map(|b| &**b)
    }

    pub fn count_in_ram(&self) -> usize {
        self.map.len()
    }

    pub fn stats(&self) -> LeaveStats {
        self.archived.as_ref().map_or_else(LeaveStats::default, |a| a.leaving.stats())
    }
}

impl LeavesRam for ReceivedIndex {
    fn leaving(&mut self) -> Option<&mut LeaveOrder> {
        self.archived.as_mut().map(|a| &mut a.leaving)
    }

    fn evict(&mut self) {
        let Some(a) = &mut self.archived else { return };
        while let Some(key) = a.leaving.next_to_leave() {
            let removed = self.map.remove(&TransferKey::parse(&key));
            debug_assert!(removed.is_some(), "a decision leaving RAM was in it");
        }
    }
}
