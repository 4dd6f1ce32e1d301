//! Holds (pending transfers) of one node, with the indexes kept in step with them: pending
//! holds by expiry time, and pending cross-node holds (transfers waiting for their
//! destination's decision).
//!
//! A node that runs for years resolves holds for years: with a `HoldArchive`, a resolved
//! hold (local, or a cross-node transfer sent and decided) leaves RAM once the group that
//! resolved it is durable and more than `capacity` of them are held, and is read back from
//! the archive (the node's file) when a command or a settlement names it again. Pending
//! holds always stay in RAM: they are the books' open amounts.

use super::keyed_hash::KeyedMap;
use super::leaving::{LeaveOrder, LeaveStats, LeavesRam};
use super::money::Minor;
use super::reply::Resolution;
use std::borrow::Cow;
use std::collections::BTreeSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldState {
    Pending,
    Resolved(Resolution),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub debit: String,
    pub credit: String,
    pub asset: String,
    pub amount: Minor,
    pub expires_at_ms: Option<u64>,
    pub device: Option<String>,
    pub state: HoldState,
    /// For a cross-node transfer: the credit account's address at its destination. The
    /// hold's own credit is the clearing account of that node; the destination's decision
    /// posts or voids it.
    pub remote: Option<String>,
}

impl Hold {
    pub fn is_pending(&self) -> bool {
        self.state == HoldState::Pending
    }

    /// Resolved: final, and needed only when a command or a settlement names it again.
    pub fn may_leave_ram(&self) -> bool {
        !self.is_pending()
    }
}

/// Where resolved holds that left RAM are read back: the node's file, as of its last
/// durable commit (a hold leaves RAM only once its resolution is there, and a resolved
/// hold never changes again).
pub trait HoldArchive: Send {
    fn lookup(&self, pending_id: &str) -> Option<Hold>;
}

#[derive(Default)]
pub struct Holds {
    map: KeyedMap<String, Hold>,
    /// Pending holds with a timeout, by expiry time.
    expiries: BTreeSet<(u64, String)>,
    /// Pending cross-node holds (ids): the transfers still waiting for their destination.
    outgoing: BTreeSet<String>,
    /// None: every hold stays in RAM (tools, replays, a region's replicas).
    archived: Option<Archived>,
}

/// The resolved holds in RAM, and where the others are.
struct Archived {
    archive: Box<dyn HoldArchive>,
    leaving: LeaveOrder,
}

impl std::fmt::Debug for Holds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Holds").field("in_ram", &self.map.len()).field("archived", &self.archived.is_some()).finish()
    }
}

impl Holds {
    /// Keeps at most `capacity` resolved local holds in RAM (beyond those of groups not yet
    /// durable); the others are read from `archive`.
    pub fn archive(&mut self, capacity: usize, archive: Box<dyn HoldArchive>) {
        assert!(capacity > 0, "a hold cache holds at least one resolved hold");
        debug_assert!(self.map.is_empty(), "the hold archive is chosen before any hold");
        self.archived = Some(Archived { archive, leaving: LeaveOrder::new(capacity) });
    }

    /// The hold `pending_id`, from RAM or else from the archive.
    pub fn get(&mut self, pending_id: &str) -> Option<Cow<'_, Hold>> {
        if self.map.contains_key(pending_id) {
            return self.map.get(pending_id).map(Cow::Borrowed);
        }
        let archived = self.archived.as_mut()?;
        archived.leaving.read_back();
        let hold = archived.archive.lookup(pending_id)?;
        debug_assert!(hold.may_leave_ram(), "only resolved holds leave RAM");
        Some(Cow::Owned(hold))
    }

    /// The hold `pending_id` if it is in RAM: every pending hold is.
    pub fn in_ram(&self, pending_id: &str) -> Option<&Hold> {
        self.map.get(pending_id)
    }

    pub fn contains(&mut self, pending_id: &str) -> bool {
        self.get(pending_id).is_some()
    }

    /// The holds in RAM: every pending hold, and the resolved ones that have not left it.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Hold)> {
        self.map.iter()
    }

    pub fn count_in_ram(&self) -> usize {
        self.map.len()
    }

    pub fn stats(&self) -> LeaveStats {
        self.archived.as_ref().map_or_else(LeaveStats::default, |a| a.leaving.stats())
    }

    /// Pending holds, by id; with `account`, those that debit or credit it. At most `limit`.
    pub fn pending(&self, account: Option<&str>, limit: usize) -> Vec<(&String, &Hold)> {
        self.map
            .iter()
            .filter(|(_, h)| h.is_pending())
            .filter(|(_, h)| account.is_none_or(|a| h.debit == a || h.credit == a))
            .take(limit)
            .collect()
    }

    /// Cross-node transfers sent from this node whose destination has not decided yet.
    pub fn outgoing(&self) -> impl Iterator<Item = (&String, &Hold)> {
        self.outgoing.iter().map(|id| (id, &self.map[id]))
    }

    pub fn outgoing_count(&self) -> usize {
        self.outgoing.len()
    }

    /// The earliest expiry of a pending hold, with its id.
    pub fn first_expiry(&self) -> Option<&(u64, String)> {
        self.expiries.first()
    }

    /// Sets (`Some`) or removes (`None`) a hold and keeps the indexes in step with it.
    /// Returns the hold as it was, for undoing.
    pub fn set(&mut self, pending_id: &str, hold: Option<Hold>) -> Option<Hold> {
        let before = match hold {
            Some(h) => self.map.insert(pending_id.to_string(), h),
            None => self.map.remove(pending_id),
        };
        if let Some(t) = before.as_ref().and_then(|h| h.expires_at_ms) {
            self.expiries.remove(&(t, pending_id.to_string()));
        }
        let now = self.map.get(pending_id);
        if let Some(Hold { state: HoldState::Pending, expires_at_ms: Some(t), .. }) = now {
            self.expiries.insert((*t, pending_id.to_string()));
        }
        match now {
            Some(Hold { state: HoldState::Pending, remote: Some(_), .. }) => self.outgoing.insert(pending_id.to_string()),
            _ => self.outgoing.remove(pending_id),
        };
        if let Some(a) = &mut self.archived {
            if now.is_some_and(Hold::may_leave_ram) {
                a.leaving.made_final(pending_id);
            } else {
                // Placed, or a resolution rolled back: it stays.
                a.leaving.keep(pending_id);
            }
            self.evict();
        }
        before
    }
}

impl LeavesRam for Holds {
    fn leaving(&mut self) -> Option<&mut LeaveOrder> {
        self.archived.as_mut().map(|a| &mut a.leaving)
    }

    fn evict(&mut self) {
        let Some(a) = &mut self.archived else { return };
        while let Some(id) = a.leaving.next_to_leave() {
            let hold = self.map.remove(&id);
            debug_assert!(hold.is_some_and(|h| h.may_leave_ram()), "a hold leaving RAM is resolved");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    /// The holds of durable groups, as the file keeps them.
    #[derive(Clone, Default)]
    struct File(Arc<Mutex<HashMap<String, Hold>>>);

    impl HoldArchive for File {
        fn lookup(&self, pending_id: &str) -> Option<Hold> {
            self.0.lock().unwrap().get(pending_id).cloned()
        }
    }

    fn hold(state: HoldState) -> Hold {
        let (debit, credit, asset) = ("a".to_string(), "b".to_string(), "EUR".to_string());
        Hold { debit, credit, asset, amount: 1, expires_at_ms: None, device: None, state, remote: None }
    }

    #[test]
    fn a_resolved_hold_leaves_ram_only_once_durable_and_reads_back() {
        let file = File::default();
        let mut holds = Holds::default();
        holds.archive(1, Box::new(file.clone()));
        let posted = hold(HoldState::Resolved(Resolution::Posted));
        for (group, id) in [(1, "h1"), (2, "h2"), (3, "h3")] {
            holds.start_group(group);
            holds.set(id, Some(hold(HoldState::Pending)));
            holds.set(id, Some(posted.clone()));
        }
        assert_eq!(holds.count_in_ram(), 3, "nothing is durable yet");
        // Group 1 is written: h1 may go, and does (one resolved hold stays, beyond group 3's).
        file.0.lock().unwrap().insert("h1".to_string(), posted.clone());
        holds.durable(1);
        assert_eq!((holds.count_in_ram(), holds.in_ram("h1")), (2, None));
        assert_eq!(holds.get("h1").as_deref(), Some(&posted), "read back from the file");
        assert_eq!(holds.stats(), LeaveStats { archive_reads: 1, evictions: 1 });
        // A resolution rolled back keeps its hold; a pending hold never leaves, a resolved
        // cross-node one does.
        holds.start_group(4);
        holds.set("h4", Some(hold(HoldState::Pending)));
        let before = holds.set("h4", Some(posted.clone()));
        holds.set("h4", before);
        let remote = Hold { remote: Some("x@other".to_string()), ..posted.clone() };
        holds.set("h5", Some(remote));
        holds.durable(4);
        assert!(holds.in_ram("h4").is_some_and(Hold::is_pending));
        assert_eq!(holds.iter().filter(|(_, h)| h.may_leave_ram()).count(), 1, "h5 only");
        assert!(holds.get("never").is_none());
    }
}
