//! "This id was never seen", without reading the disk: a Bloom filter of every id key a
//! ledger recorded. It may say "maybe" for an id it never saw (then the archive is asked);
//! it never says "no" for one it saw. It grows by layers, each twice the last, so that its
//! false positives stay near `TARGET_FP` however many ids a node takes (about 1.2 bytes
//! per id).
//!
//! Ids are chosen by devices: the hash is keyed per process (std's SipHash with random
//! keys), so nobody can aim ids at one set of bits. The filter is rebuilt at start-up, in
//! the background (`sibling`, then `absorb`), while the node already answers.

use super::keyed_hash::Keyed;

/// Ids the first layer holds at its target rate.
const FIRST_LAYER_IDS: usize = 1 << 20;
/// Bits per id and probes per id for a false-positive rate near 1%.
const BITS_PER_ID: usize = 10;
const PROBES: u64 = 7;

pub struct IdFilter {
    layers: Vec<Layer>,
    hasher: Keyed,
}

struct Layer {
    bits: Vec<u64>,
    capacity: usize,
    count: usize,
}

impl Layer {
    fn new(capacity: usize) -> Layer {
        let words = (capacity * BITS_PER_ID).div_ceil(64);
        Layer { bits: vec![0; words], capacity, count: 0 }
    }

    fn probes(&self, hash: u64) -> impl Iterator<Item = (usize, u64)> {
        let bits = (self.bits.len() * 64) as u64;
        let (h1, h2) = (hash, hash.rotate_left(32) | 1);
        (0..PROBES).map(move |i| {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) % bits;
            ((bit / 64) as usize, 1u64 << (bit % 64))
        })
    }
}

impl Default for IdFilter {
    fn default() -> IdFilter {
        IdFilter { layers: vec![Layer::new(FIRST_LAYER_IDS)], hasher: Keyed::new() }
    }
}

impl IdFilter {
    pub fn insert(&mut self, key: &str) {
        let hash = self.hasher.hash_one(key);
        let last = self.layers.last().expect("a filter has a layer");
        if last.count >= last.capacity {
            let capacity = last.capacity.saturating_mul(2);
            self.layers.push(Layer::new(capacity));
        }
        let layer = self.layers.last_mut().expect("a filter has a layer");
        let mut probes = [(0, 0); PROBES as usize];
        for (slot, probe) in probes.iter_mut().zip(layer.probes(hash)) {
            *slot = probe;
        }
        for (word, mask) in probes {
            layer.bits[word] |= mask;
        }
        layer.count += 1;
    }

    /// False: `key` was never inserted. True: it may have been.
    pub fn may_contain(&self, key: &str) -> bool {
        let hash = self.hasher.hash_one(key);
        self.layers.iter().any(|layer| layer.probes(hash).all(|(word, mask)| layer.bits[word] & mask != 0))
    }

    /// An empty filter with the same key, to be filled elsewhere and then `absorb`ed.
    pub fn sibling(&self) -> IdFilter {
        IdFilter { layers: vec![Layer::new(FIRST_LAYER_IDS)], hasher: self.hasher.clone() }
    }

    /// Takes every id `sibling` holds: afterwards this filter says "maybe" for them too.
    /// The layer being filled stays last.
    pub fn absorb(&mut self, sibling: IdFilter) {
        let filling = self.layers.pop().expect("a filter has a layer");
        self.layers.extend(sibling.layers.into_iter().filter(|l| l.count > 0));
        self.layers.push(filling);
    }

    /// Bytes the filter holds.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| l.bits.len() * 8).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_forgets_and_rarely_imagines() {
        let mut filter = IdFilter::default();
        let n = FIRST_LAYER_IDS + FIRST_LAYER_IDS / 2;
        for i in 0..n {
            filter.insert(&format!("dev:{i}"));
        }
        assert_eq!(filter.layers.len(), 2, "it grew a layer");
        assert!((0..n).all(|i| filter.may_contain(&format!("dev:{i}"))), "no false negative");
        let imagined = (0..100_000).filter(|i| filter.may_contain(&format!("other:{i}"))).count();
        assert!(imagined < 3_000, "{imagined} false positives in 100000");
    }

    #[test]
    fn a_sibling_filled_elsewhere_is_absorbed_whole() {
        let mut live = IdFilter::default();
        let mut built = live.sibling();
        for i in 0..1_000 {
            built.insert(&format!("old:{i}"));
            live.insert(&format!("new:{i}"));
        }
        assert!(!live.may_contain("old:7"), "not yet absorbed");
        live.absorb(built);
        assert!((0..1_000).all(|i| live.may_contain(&format!("old:{i}")) && live.may_contain(&format!("new:{i}"))));
        live.insert("after");
        assert!(live.may_contain("after"));
        let imagined = (0..100_000).filter(|i| live.may_contain(&format!("other:{i}"))).count();
        assert!(imagined < 3_000, "{imagined} false positives in 100000");
    }
}
