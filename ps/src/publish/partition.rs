//! Which partition a sparse key belongs to, so serving nodes can own subsets of the
//! `update_partition_count` partitions (PUBLISH.md): `div` cuts the u64 key space into
//! contiguous ranges, `mod` takes the key modulo the count.

use super::config::PartStrategy;

/// The partition of `key` among `count` partitions (`count >= 1`).
#[inline]
pub fn partition_of(key: u64, count: u32, strategy: PartStrategy) -> u32 {
    let count = count.max(1) as u64;
    match strategy {
        // floor(key * count / 2^64): exact, monotonic in key, every range equal ±1.
        PartStrategy::Div => ((key as u128 * count as u128) >> 64) as u32,
        PartStrategy::Mod => (key % count) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn div_is_contiguous_ranges_and_mod_is_modulo() {
        assert_eq!(partition_of(0, 32, PartStrategy::Div), 0);
        assert_eq!(partition_of(u64::MAX, 32, PartStrategy::Div), 31);
        assert_eq!(partition_of(1 << 59, 32, PartStrategy::Div), 1);
        assert_eq!(partition_of((1 << 59) - 1, 32, PartStrategy::Div), 0);
        assert_eq!(partition_of(70, 32, PartStrategy::Mod), 6);
        assert_eq!(partition_of(5, 1, PartStrategy::Div), 0);
        assert_eq!(partition_of(5, 0, PartStrategy::Mod), 0);
    }

    proptest! {
        #[test]
        fn partitions_are_in_range_and_div_is_monotonic(a: u64, b: u64, count in 1u32..100) {
            for s in [PartStrategy::Div, PartStrategy::Mod] {
                prop_assert!(partition_of(a, count, s) < count);
            }
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(partition_of(lo, count, PartStrategy::Div) <= partition_of(hi, count, PartStrategy::Div));
        }
    }
}
