//! A hash map cut into shards, so that no insert ever rehashes more than one small shard.
//! The id cache churns (eviction removes as many records as it inserts), and a single
//! table of a hundred thousand records then rehashes or regrows all at once whenever its
//! tombstones use up its room: measured as 100–350 ms stalls of the intake under load.
//! Pure data structure; no I/O.

use super::keyed_hash::Keyed;
use hashbrown::hash_table::Entry;
use hashbrown::HashTable;
use std::borrow::Borrow;
use std::hash::Hash;

/// Shards per map: a table of a million records rehashes about a thousand at a time.
pub const SHARDS: usize = 1024;
/// The shard comes from bits 32.. of the key's hash: a shard's table takes its slot from
/// the low bits and its tag from the top seven, so these are free for the shard.
const SHARD_SHIFT: u32 = 32;

pub struct Sharded<K, V> {
    /// Empty until the first insert: most ledgers (a region's replicas) never keep a record.
    shards: Vec<HashTable<(K, V)>>,
    /// One keyed hash per key picks both its shard and its slot; keyed at random, so chosen
    /// keys cannot pile into one shard or one probe sequence.
    hasher: Keyed,
    len: usize,
}

impl<K: Hash + Eq, V> Sharded<K, V> {
    /// Room for `capacity` entries spread over the shards, allocated now (none for 0).
    pub fn with_capacity(capacity: usize) -> Sharded<K, V> {
        let mut map = Sharded { shards: Vec::new(), hasher: Keyed::new(), len: 0 };
        if capacity > 0 {
            map.allocate(capacity.div_ceil(SHARDS));
        }
        map
    }

    fn allocate(&mut self, per_shard: usize) {
        self.shards = (0..SHARDS).map(|_| HashTable::with_capacity(per_shard)).collect();
    }

    fn shard(hash: u64) -> usize {
        ((hash >> SHARD_SHIFT) % SHARDS as u64) as usize
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hasher.hash_one(key);
        let (_, value) = self.shards.get(Self::shard(hash))?.find(hash, |(k, _)| k.borrow() == key)?;
        Some(value)
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        if self.shards.is_empty() {
            self.allocate(0);
        }
        let hash = self.hasher.hash_one(&key);
        let Sharded { shards, hasher, len } = self;
        // One probe finds the key or the slot for it.
        match shards[Self::shard(hash)].entry(hash, |(k, _)| *k == key, |(k, _)| hasher.hash_one(k)) {
            Entry::Occupied(mut found) => Some(std::mem::replace(&mut found.get_mut().1, value)),
            Entry::Vacant(slot) => {
                slot.insert((key, value));
                *len += 1;
                None
            }
        }
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hasher.hash_one(key);
        let table = self.shards.get_mut(Self::shard(hash))?;
        let ((_, value), _) = table.find_entry(hash, |(k, _)| k.borrow() == key).ok()?.remove();
        self.len -= 1;
        Some(value)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|table| table.iter().map(|(_, value)| value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn behaves_as_one_map_and_keeps_count() {
        let mut map: Sharded<Arc<str>, u64> = Sharded::with_capacity(0);
        assert_eq!(map.get("id-1"), None, "nothing allocated, nothing found");
        assert_eq!(map.remove("id-1"), None);
        assert!(map.is_empty());
        for i in 0..5_000u64 {
            assert_eq!(map.insert(Arc::from(format!("id-{i}").as_str()), i), None);
        }
        assert_eq!(map.insert(Arc::from("id-7"), 70), Some(7), "a second insert replaces");
        assert_eq!(map.len(), 5_000);
        assert_eq!(map.get("id-7"), Some(&70));
        assert_eq!(map.get("id-5000"), None);
        for i in (0..5_000u64).step_by(2) {
            assert!(map.remove(format!("id-{i}").as_str()).is_some());
        }
        assert_eq!(map.remove("id-0"), None);
        assert_eq!(map.len(), 2_500);
        assert_eq!(map.values().count(), 2_500);
        assert!(map.get("id-1").is_some() && map.get("id-2").is_none());
    }
}
