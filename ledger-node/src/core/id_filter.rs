//! "This id was never seen", without reading the disk: a Bloom filter of every id key a
//! ledger recorded. It may say "maybe" for an id it never saw (then the archive is asked);
//! it never says "no" for one it saw. Each layer holds its ids at 10 bits (1.25 bytes) per
//! id and answers "maybe" for about 1% of ids it never saw; a full layer is followed by one
//! twice its size, and the layers' rates add up (4.7% at 32 M ids in 6 layers). Built at
//! start-up, the file's ids are one layer sized for them (`size_for`).
//!
//! Blocked: all the bits of one id lie in one 64-byte block (one cache line), chosen by the
//! id's hash, as in RocksDB's cache-local filter. A filter of a node's history is larger
//! than the CPU's caches, and a probe per cache line was a cache miss per probe: seven for
//! the `may_contain` of every new id on the ledger thread (per layer), seven more for its
//! `insert`, and seven per id read when the filter is rebuilt at start-up. Now it is one
//! miss each, and no division.
//!
//! Ids are chosen by devices: the hash is keyed per process (`keyed_hash`, random seeds), so
//! nobody can aim ids at one block. The filter is rebuilt at start-up, in the background
//! (`sibling`, then `absorb`), while the node already answers.

use super::keyed_hash::Keyed;

/// Ids the first layer holds at its target rate.
const FIRST_LAYER_IDS: usize = 1 << 20;
/// Bits per id and probes per id for a false-positive rate near 1% (0.96% for a blocked
/// filter of 512-bit blocks at 10 bits per id, against 0.82% unblocked).
const BITS_PER_ID: usize = 10;
const PROBES: usize = 7;
/// Bits of one block, the bits of a bit's index in it, and its 64-bit words.
const BLOCK_BITS: usize = 512;
const BLOCK_INDEX_BITS: u32 = BLOCK_BITS.trailing_zeros();
const BLOCK_WORDS: usize = BLOCK_BITS / 64;

pub struct IdFilter {
    layers: Vec<Layer>,
    hasher: Keyed,
}

/// One cache line of bits.
#[derive(Clone, Copy, Default)]
#[repr(align(64))]
struct Block([u64; BLOCK_WORDS]);

struct Layer {
    blocks: Vec<Block>,
    capacity: usize,
    count: usize,
    /// Made by `size_for` for ids already known: a layer grown after it (if it takes more
    /// ids than it was sized for, or is used on its own) starts small again instead of
    /// doubling it.
    sized: bool,
}

impl Layer {
    fn new(capacity: usize) -> Layer {
        let blocks = (capacity.saturating_mul(BITS_PER_ID)).div_ceil(BLOCK_BITS).max(1);
        Layer { blocks: vec![Block::default(); blocks], capacity, count: 0, sized: false }
    }

    /// The block of `hash` (its high bits scaled to the block count: no division) and
    /// the word and mask of each of its probes in that block (from its low 32 bits, each
    /// probe the next multiple by the golden ratio, taking the top bits).
    fn probes(&self, hash: u64) -> (usize, [(usize, u64); PROBES]) {
        let block = ((u128::from(hash) * self.blocks.len() as u128) >> 64) as usize;
        let mut h = hash as u32;
        let mut probes = [(0, 0); PROBES];
        for probe in &mut probes {
            h = h.wrapping_mul(0x9E37_79B9);
            let bit = (h >> (32 - BLOCK_INDEX_BITS)) as usize;
            *probe = (bit / 64, 1u64 << (bit % 64));
        }
        (block, probes)
    }

    fn insert(&mut self, hash: u64) {
        let (block, probes) = self.probes(hash);
        let words = &mut self.blocks[block].0;
        for (word, mask) in probes {
            words[word] |= mask;
        }
        self.count += 1;
    }

    fn may_contain(&self, hash: u64) -> bool {
        let (block, probes) = self.probes(hash);
        let words = &self.blocks[block].0;
        probes.iter().all(|&(word, mask)| words[word] & mask != 0)
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
            let capacity = if last.sized { FIRST_LAYER_IDS } else { last.capacity.saturating_mul(2) };
            self.layers.push(Layer::new(capacity));
        }
        self.layers.last_mut().expect("a filter has a layer").insert(hash);
    }

    /// False: `key` was never inserted. True: it may have been.
    pub fn may_contain(&self, key: &str) -> bool {
        let hash = self.hasher.hash_one(key);
        self.layers.iter().any(|layer| layer.may_contain(hash))
    }

    /// An empty filter with the same key, to be filled elsewhere and then `absorb`ed.
    pub fn sibling(&self) -> IdFilter {
        IdFilter { layers: vec![Layer::new(FIRST_LAYER_IDS)], hasher: self.hasher.clone() }
    }

    /// Makes an empty filter's first layer hold `ids` ids at its target rate: a filter
    /// built from a file of many ids is then one layer (one block to probe, a false-positive
    /// rate near 1%) instead of a layer per doubling (a block per layer, their rates
    /// adding up: 4.7% at 32 M ids), and a file of few ids takes a few bytes, not a first
    /// layer of 1.25 MiB. A filter that holds ids already is left as it is.
    pub fn size_for(&mut self, ids: usize) {
        if self.layers.iter().all(|l| l.count == 0) {
            self.layers = vec![Layer { sized: true, ..Layer::new(ids) }];
        }
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
        self.layers.iter().map(|l| l.blocks.len() * std::mem::size_of::<Block>()).sum()
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

    /// A full layer answers "maybe" for about 1% of ids it never saw: the blocks spread the
    /// ids evenly (ids that shared blocks would fill them and raise the rate).
    #[test]
    fn a_full_layer_imagines_about_one_id_in_a_hundred() {
        let mut filter = IdFilter::default();
        for i in 0..FIRST_LAYER_IDS {
            filter.insert(&format!("pos-7:t{i}"));
        }
        assert_eq!(filter.layers.len(), 1, "still one layer, full");
        assert_eq!(filter.bytes(), FIRST_LAYER_IDS * BITS_PER_ID / 8);
        let imagined = (0..100_000).filter(|i| filter.may_contain(&format!("pos-8:t{i}"))).count();
        assert!((500..1_500).contains(&imagined), "{imagined} false positives in 100000");
    }

    #[test]
    fn a_filter_sized_for_its_ids_keeps_them_in_one_layer() {
        let ids = FIRST_LAYER_IDS * 3;
        let mut sized = IdFilter::default();
        sized.size_for(ids);
        for i in 0..ids {
            sized.insert(&format!("pos-7:t{i}"));
        }
        assert_eq!(sized.layers.len(), 1, "one layer for all of them");
        let imagined = (0..100_000).filter(|i| sized.may_contain(&format!("pos-8:t{i}"))).count();
        assert!((500..1_500).contains(&imagined), "{imagined} false positives in 100000");
        assert!((0..ids).step_by(97).all(|i| sized.may_contain(&format!("pos-7:t{i}"))), "no false negative");
        sized.insert("one more");
        assert_eq!(sized.layers.len(), 2, "past its size it grows a layer");
        assert_eq!(sized.layers[1].capacity, FIRST_LAYER_IDS, "a small one: twice the sized layer would double its RAM at once");
        assert!(sized.may_contain("one more"));
        let mut small = IdFilter::default();
        small.size_for(1_000);
        assert_eq!(small.bytes(), (1_000 * BITS_PER_ID).div_ceil(BLOCK_BITS) * 64, "a few ids, a few blocks");
        let layers_before = sized.layers.len();
        sized.size_for(ids * 4);
        assert_eq!(sized.layers.len(), layers_before, "a filter holding ids is not resized (it would forget them)");
    }

    /// A file of no ids: its sized sibling adds nothing when absorbed, and on its own it
    /// grows a layer for the first id it takes.
    #[test]
    fn a_filter_sized_for_no_ids_still_takes_ids() {
        let mut live = IdFilter::default();
        let mut none = live.sibling();
        none.size_for(0);
        assert!(!none.may_contain("pos-1:t1"));
        live.insert("pos-1:t1");
        live.absorb(none);
        assert_eq!(live.layers.len(), 1, "the empty layer is not kept");
        assert!(live.may_contain("pos-1:t1"));
        let mut alone = IdFilter::default();
        alone.size_for(0);
        alone.insert("pos-1:t2");
        assert!(alone.may_contain("pos-1:t2"));
        assert_eq!(alone.layers.last().map(|l| l.capacity), Some(FIRST_LAYER_IDS));
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
