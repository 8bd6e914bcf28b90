//! Hash slots: an item id hashes to one of 1024 slots, and each slot belongs to a shard.

use xxhash_rust::xxh3::xxh3_64;

pub const SLOTS: usize = 1024;

pub fn slot_of(item_id: &str) -> usize {
    (xxh3_64(item_id.as_bytes()) % SLOTS as u64) as usize
}

/// Which shard owns each slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotTable {
    owners: Vec<usize>,
}

impl SlotTable {
    /// Contiguous, even ranges of slots over `shards` shards (sizes differ by at most one).
    pub fn even(shards: usize) -> Self {
        let shards = shards.max(1);
        Self {
            owners: (0..SLOTS).map(|s| s * shards / SLOTS).collect(),
        }
    }

    pub fn owner(&self, slot: usize) -> usize {
        self.owners[slot % SLOTS]
    }

    pub fn shard_of(&self, item_id: &str) -> usize {
        self.owner(slot_of(item_id))
    }

    pub fn slots_per_shard(&self, shards: usize) -> Vec<usize> {
        let mut counts = vec![0; shards];
        for &o in &self.owners {
            if o < shards {
                counts[o] += 1;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_stable_and_spread() {
        assert_eq!(slot_of("n42"), slot_of("n42"));
        let mut seen = vec![0usize; SLOTS];
        for i in 0..100_000 {
            seen[slot_of(&format!("n{i}"))] += 1;
        }
        // 100k ids over 1024 slots: about 98 each; none empty or wildly heavy.
        assert!(
            seen.iter().all(|&c| (50..150).contains(&c)),
            "{:?}",
            seen.iter().minmax()
        );
    }

    #[test]
    fn even_table_balances_within_one() {
        for shards in [1, 3, 7, 1024] {
            let counts = SlotTable::even(shards).slots_per_shard(shards);
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(hi - lo <= 1, "{shards}: {counts:?}");
            assert_eq!(counts.iter().sum::<usize>(), SLOTS);
        }
    }

    trait MinMax {
        fn minmax(self) -> (usize, usize);
    }
    impl<'a, I: Iterator<Item = &'a usize>> MinMax for I {
        fn minmax(self) -> (usize, usize) {
            self.fold((usize::MAX, 0), |(lo, hi), &x| (lo.min(x), hi.max(x)))
        }
    }
}
