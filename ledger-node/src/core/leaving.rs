//! Which final values may leave RAM, and when: a resolved hold, a decision on a transfer
//! received. Such a value never changes again, and the node's file holds it once the group
//! that made it is durable; from then on it may be read back from there. `LeaveOrder`
//! keeps their keys oldest first and says which one leaves next, keeping at most
//! `capacity` of them in RAM beyond those of groups not yet durable.
//!
//! Owns the order only: the values stay with their index (`Holds`, `ReceivedIndex`), which
//! removes what this names.

use std::collections::{HashMap, VecDeque};

/// Counters of the values that left RAM and of the reads back, since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaveStats {
    /// Values asked for that were not in RAM, looked up in the archive (found or not).
    pub archive_reads: u64,
    pub evictions: u64,
}

/// An index whose final values may leave RAM: it says where its order is (None: nothing
/// leaves) and removes what the order names; the group bookkeeping is the same for all.
pub trait LeavesRam {
    fn leaving(&mut self) -> Option<&mut LeaveOrder>;

    /// Removes from RAM every value `next_to_leave` names.
    fn evict(&mut self);

    /// The group the next values belong to (see `IdIndex::next_group`).
    fn start_group(&mut self, group: u64) {
        if let Some(order) = self.leaving() {
            order.start_group(group);
        }
    }

    /// Groups up to `group` are durable: the values they made final may leave RAM.
    fn durable(&mut self, group: u64) {
        if let Some(order) = self.leaving() {
            order.durable(group);
        }
        self.evict();
    }

    /// Every value held so far came from the file: it is durable.
    fn number_groups_after(&mut self, group: u64) {
        if let Some(order) = self.leaving() {
            order.number_groups_after(group);
        }
        self.evict();
    }
}

pub struct LeaveOrder {
    capacity: usize,
    stats: LeaveStats,
    /// Each key that may leave, with the group that made its value final.
    made_in: HashMap<String, u64>,
    /// The same keys, oldest first; a key taken back (`keep`) and made final again is
    /// listed twice, and `made_in` says which group counts.
    order: VecDeque<String>,
    group: u64,
    durable_group: u64,
}

impl LeaveOrder {
    pub fn new(capacity: usize) -> LeaveOrder {
        assert!(capacity > 0, "a cache keeps at least one value");
        // Values made final before the first group (a replay at start-up, whose tables are
        // written after it) stay until a group is durable.
        LeaveOrder { capacity, stats: LeaveStats::default(), made_in: HashMap::new(), order: VecDeque::new(), group: 1, durable_group: 0 }
    }

    /// The group the next values belong to (see `IdIndex::next_group`).
    pub fn start_group(&mut self, group: u64) {
        self.group = group;
    }

    /// Groups up to `group` are durable.
    pub fn durable(&mut self, group: u64) {
        self.durable_group = self.durable_group.max(group);
    }

    /// Every value held so far came from the file: it is durable (see
    /// `IdIndex::number_groups_after`).
    pub fn number_groups_after(&mut self, group: u64) {
        self.group = self.group.max(group);
        self.durable_group = self.durable_group.max(group);
    }

    /// `key`'s value became final in the current group.
    pub fn made_final(&mut self, key: &str) {
        if self.made_in.insert(key.to_string(), self.group).is_none() {
            self.order.push_back(key.to_string());
        }
    }

    /// `key`'s value is not final after all (a rollback), or was removed: it stays.
    pub fn keep(&mut self, key: &str) {
        self.made_in.remove(key);
    }

    /// A value not in RAM was looked up in the archive.
    pub fn read_back(&mut self) {
        self.stats.archive_reads += 1;
    }

    pub fn stats(&self) -> LeaveStats {
        self.stats
    }

    /// How many final values are in RAM.
    pub fn len(&self) -> usize {
        self.made_in.len()
    }

    pub fn is_empty(&self) -> bool {
        self.made_in.is_empty()
    }

    /// The key whose value leaves RAM now, if any: the oldest beyond the capacity that is
    /// durable; one that is not yet stops it (later ones are no older). The order is kept
    /// within twice the capacity too, so that keys a rollback left there do not pile up.
    pub fn next_to_leave(&mut self) -> Option<String> {
        while self.made_in.len() > self.capacity || self.order.len() > self.capacity.saturating_mul(2) {
            let oldest = self.order.front()?;
            match self.made_in.get(oldest) {
                None => {}
                Some(&group) if group > self.durable_group => return None,
                Some(_) => {
                    let key = self.order.pop_front().expect("checked");
                    self.made_in.remove(&key);
                    self.stats.evictions += 1;
                    return Some(key);
                }
            }
            self.order.pop_front();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_leave_oldest_first_once_durable_and_beyond_capacity() {
        let mut order = LeaveOrder::new(1);
        for (group, key) in [(1, "a"), (2, "b"), (3, "c")] {
            order.start_group(group);
            order.made_final(key);
        }
        assert_eq!(order.next_to_leave(), None, "nothing is durable yet");
        order.durable(1);
        assert_eq!((order.next_to_leave(), order.next_to_leave()), (Some("a".to_string()), None));
        order.durable(3);
        assert_eq!((order.next_to_leave(), order.next_to_leave()), (Some("b".to_string()), None), "one stays");
        assert_eq!(order.len(), 1);
    }

    #[test]
    fn a_value_taken_back_stays_and_its_key_does_not_pile_up() {
        let mut order = LeaveOrder::new(4);
        for group in 1..1_000 {
            order.start_group(group);
            order.made_final("h");
            order.keep("h");
            order.durable(group);
            assert_eq!(order.next_to_leave(), None);
        }
        assert!(order.is_empty() && order.order.len() <= 8, "{}", order.order.len());
        // Made final again in a later group: that group counts, not the first listing's.
        order.start_group(2_000);
        order.made_final("x");
        order.keep("x");
        order.start_group(2_001);
        order.made_final("x");
        for k in 0..4 {
            order.made_final(&format!("y{k}"));
        }
        order.durable(2_000);
        assert_eq!(order.next_to_leave(), None, "x's value is final only as of group 2,001");
    }
}
