//! Which shard owns what. Shard `i` of `n` owns the contiguous key range
//! `[ceil(i·2^64/n), ceil((i+1)·2^64/n))` of the u64 feature-id space, i.e. key `k`
//! lives on shard `floor(k·n / 2^64)`. Contiguous ranges (rather than `k mod n`) let a
//! checkpoint be re-sharded on load by a range scan, and keys are uniform hashes, so
//! shards get equal shares. A dense tensor lives on shard `xxh3(name) mod n`.

use odl_proto::hashing::{field_seed, FeatureId};
use serde::{Deserialize, Serialize};

/// One shard's place in a cluster of `count` shards.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardId {
    pub index: u32,
    pub count: u32,
}

impl ShardId {
    /// `None` if `index >= count` or `count == 0`.
    pub fn new(index: u32, count: u32) -> Option<ShardId> {
        (count > 0 && index < count).then_some(ShardId { index, count })
    }

    pub fn owns_key(&self, key: FeatureId) -> bool {
        shard_of_key(key, self.count) == self.index
    }

    pub fn owns_dense(&self, name: &str) -> bool {
        shard_of_dense(name, self.count) == self.index
    }

    /// The first key this shard owns and the last (inclusive).
    pub fn key_range(&self) -> (u64, u64) {
        let lo = range_start(self.index, self.count);
        let hi = if self.index + 1 == self.count {
            u64::MAX
        } else {
            range_start(self.index + 1, self.count) - 1
        };
        (lo, hi)
    }
}

fn range_start(i: u32, n: u32) -> u64 {
    let num = (i as u128) << 64;
    num.div_ceil(n as u128) as u64
}

/// The shard of `n` owning `key`.
#[inline]
pub fn shard_of_key(key: FeatureId, n: u32) -> u32 {
    ((key.0 as u128 * n as u128) >> 64) as u32
}

/// The shard of `n` holding the dense tensor `name`.
pub fn shard_of_dense(name: &str, n: u32) -> u32 {
    (field_seed(name) % n as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn ranges_agree_with_shard_of_key(key: u64, n in 1u32..64) {
            let s = shard_of_key(FeatureId(key), n);
            prop_assert!(s < n);
            let (lo, hi) = ShardId::new(s, n).unwrap().key_range();
            prop_assert!(lo <= key && key <= hi);
        }
    }

    #[test]
    fn ranges_tile_the_key_space() {
        for n in [1u32, 2, 3, 7, 16] {
            let mut next = 0u64;
            for i in 0..n {
                let (lo, hi) = ShardId::new(i, n).unwrap().key_range();
                assert_eq!(lo, next);
                assert_eq!(shard_of_key(FeatureId(lo), n), i);
                assert_eq!(shard_of_key(FeatureId(hi), n), i);
                next = hi.wrapping_add(1);
            }
            assert_eq!(next, 0, "last range ends at u64::MAX");
        }
        assert!(ShardId::new(2, 2).is_none());
        assert!(ShardId::new(0, 0).is_none());
    }
}
