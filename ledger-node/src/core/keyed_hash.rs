//! The hasher of the in-RAM tables keyed by names that devices and other nodes choose
//! (accounts, holds, ids, decisions received): seeded at random per table, so that no sender
//! can pick keys that collide, and several times quicker than std's SipHash on short keys
//! (hashing was a twentieth of the ledger thread's time).

/// A random seed per table (ahash with `runtime-rng`).
pub type Keyed = ahash::RandomState;

/// A `HashMap` keyed so.
pub type KeyedMap<K, V> = std::collections::HashMap<K, V, Keyed>;

/// A `HashSet` keyed so.
pub type KeyedSet<K> = std::collections::HashSet<K, Keyed>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Two tables hash the same name differently: keys that pile into one probe sequence
    /// of one table tell a sender nothing about another table, or another run.
    #[test]
    fn each_table_is_seeded_apart() {
        let (a, b) = (Keyed::new(), Keyed::new());
        let names = ["wallet:a", "till:1", "pos-1/t-1", ""];
        assert!(names.iter().all(|n| a.hash_one(n) != b.hash_one(n)));
        assert_eq!(a.hash_one("wallet:a"), a.hash_one("wallet:a"), "one table hashes a name the same way each time");
    }
}
