//! Feature hashing: the one function that turns `(field, value)` into a sparse id.
//!
//! Trainer, parameter server and serving all call this, so a served prediction looks
//! up exactly the rows the trainer learned. The values are pinned in tests: changing
//! this function silently invalidates every checkpoint in the field.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// A sparse feature id, `hash(field, value)`; the key of an embedding row.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FeatureId(pub u64);

/// The per-field seed. Precompute it once per field on hot paths and call
/// [`feature_id_seeded`]; [`feature_id`] is the same thing in one call.
#[inline]
pub fn field_seed(field: &str) -> u64 {
    xxh3_64(field.as_bytes())
}

/// `hash(field, value)` given the field's precomputed [`field_seed`].
#[inline]
pub fn feature_id_seeded(seed: u64, value: &str) -> FeatureId {
    FeatureId(xxh3_64_with_seed(value.as_bytes(), seed))
}

/// Stable 64-bit `hash(field, value)` (xxh3 of the value seeded by xxh3 of the field).
/// A categorical number hashes by its JSON text (`3`, `2.5`), a boolean as `true`/`false`.
#[inline]
pub fn feature_id(field: &str, value: &str) -> FeatureId {
    feature_id_seeded(field_seed(field), value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned: if this fails, every checkpoint and served model would silently
    /// look up the wrong rows. Never update these numbers; add a new hash version.
    #[test]
    fn hash_values_are_pinned() {
        assert_eq!(feature_id("user_id", "u1"), FeatureId(PINNED_USER_U1));
        assert_eq!(feature_id("item_cat", "c7"), FeatureId(PINNED_CAT_C7));
        assert_eq!(feature_id("", ""), FeatureId(PINNED_EMPTY));
    }

    #[test]
    fn field_separates_values() {
        assert_ne!(feature_id("a", "bc"), feature_id("ab", "c"));
        assert_ne!(feature_id("user_id", "1"), feature_id("item_id", "1"));
    }

    const PINNED_USER_U1: u64 = 3_733_539_914_820_628_941;
    const PINNED_CAT_C7: u64 = 12_252_183_899_385_083_926;
    const PINNED_EMPTY: u64 = 4_696_993_233_866_070_003;
}
