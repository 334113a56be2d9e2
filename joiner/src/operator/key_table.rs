//! The join state by key: a small index from key to slot, and the states themselves
//! in a slab of slots.
//!
//! Why not one `HashMap<Key, KeyState>`: a key's state is a few hundred bytes, so with
//! tens of thousands of live keys that map spans tens of megabytes, and finding a key
//! is two dependent cache misses (the control bytes, then the key in its bucket)
//! before the state itself. perf showed the Kafka loop stalled on exactly those loads,
//! also in the look-ahead meant to hide them: a look-up cannot be a prefetch. The index
//! here holds 32 bytes per key and stays in the cache, so looking a key up a few events
//! early costs little and leaves one real prefetch of its slot.
//!
//! Emptied slots go on a free list and are reused last in, first out: the slot freed
//! by a timer that just fired is warm when the next new key takes it. The slab does
//! not shrink; neither did the map it replaces.

use crate::parse::Key;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Keys are already uniform 128-bit hashes: fold them instead of hashing again.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u128(&mut self, k: u128) {
        self.0 = (k as u64) ^ ((k >> 64) as u64);
    }
}

/// A slot of the slab. An index entry is 32 bytes either way (the `u128` key aligns
/// it to 16), so a narrower type would save nothing.
type Slot = usize;

pub(super) struct KeyTable<V> {
    index: HashMap<Key, Slot, BuildHasherDefault<KeyHasher>>,
    slots: Vec<V>,
    /// Slots whose key was removed: each holds `V::default()`.
    free: Vec<Slot>,
}

impl<V> Default for KeyTable<V> {
    fn default() -> Self {
        KeyTable { index: HashMap::default(), slots: Vec::new(), free: Vec::new() }
    }
}

impl<V: Default> KeyTable<V> {
    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub(super) fn get(&self, key: &Key) -> Option<&V> {
        self.index.get(key).map(|&s| &self.slots[s])
    }

    pub(super) fn get_mut(&mut self, key: &Key) -> Option<&mut V> {
        self.index.get(key).map(|&s| &mut self.slots[s])
    }

    /// The state of `key`, a default one inserted first if it has none.
    pub(super) fn get_or_default(&mut self, key: Key) -> &mut V {
        let slot = match self.index.get(&key) {
            Some(&s) => s,
            None => {
                let s = self.allocate(V::default());
                self.index.insert(key, s);
                s
            }
        };
        &mut self.slots[slot]
    }

    /// Sets the state of `key` (a restore: keys arrive once each).
    pub(super) fn insert(&mut self, key: Key, value: V) {
        match self.index.get(&key) {
            Some(&s) => self.slots[s] = value,
            None => {
                let s = self.allocate(value);
                self.index.insert(key, s);
            }
        }
    }

    pub(super) fn remove(&mut self, key: &Key) -> Option<V> {
        let slot = self.index.remove(key)?;
        self.free.push(slot);
        Some(std::mem::take(&mut self.slots[slot]))
    }

    pub(super) fn reserve(&mut self, additional: usize) {
        self.index.reserve(additional);
        self.slots.reserve(additional.saturating_sub(self.free.len()));
    }

    pub(super) fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.free.clear();
    }

    /// Every key and its state, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (Key, &V)> {
        self.index.iter().map(|(&k, &s)| (k, &self.slots[s]))
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    fn allocate(&mut self, value: V) -> Slot {
        match self.free.pop() {
            Some(s) => {
                self.slots[s] = value;
                s
            }
            None => {
                self.slots.push(value);
                self.slots.len() - 1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Upsert(u8, u32),
        Insert(u8, u32),
        Remove(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), any::<u32>()).prop_map(|(k, v)| Op::Upsert(k, v)),
            (any::<u8>(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            any::<u8>().prop_map(Op::Remove),
        ]
    }

    /// Keys spread over both halves of the `u128`, as the join's hashes are.
    fn key(k: u8) -> Key {
        (k as Key) << 100 | (k as Key).wrapping_mul(0x9e37_79b9)
    }

    proptest! {
        /// Whatever the mix of inserts and removals (slots freed and reused), the
        /// table holds what a plain map would.
        #[test]
        fn a_key_table_holds_what_a_map_would(ops in proptest::collection::vec(op(), 0..400)) {
            let mut table = KeyTable::<u32>::default();
            let mut model = HashMap::<Key, u32>::new();
            for op in ops {
                match op {
                    Op::Upsert(k, v) => {
                        *table.get_or_default(key(k)) += v % 1000;
                        *model.entry(key(k)).or_default() += v % 1000;
                    }
                    Op::Insert(k, v) => {
                        table.insert(key(k), v);
                        model.insert(key(k), v);
                    }
                    Op::Remove(k) => prop_assert_eq!(table.remove(&key(k)), model.remove(&key(k))),
                }
                prop_assert_eq!(table.len(), model.len());
            }
            for (k, v) in &model {
                prop_assert_eq!(table.get(k), Some(v));
            }
            let mut listed: Vec<(Key, u32)> = table.iter().map(|(k, &v)| (k, v)).collect();
            let mut expected: Vec<(Key, u32)> = model.into_iter().collect();
            listed.sort_unstable();
            expected.sort_unstable();
            prop_assert_eq!(listed, expected);
        }
    }

    #[test]
    fn a_removed_keys_slot_is_reused_and_starts_from_default() {
        let mut table = KeyTable::<Vec<u8>>::default();
        table.get_or_default(key(1)).push(7);
        table.get_or_default(key(2)).push(8);
        assert_eq!(table.remove(&key(1)), Some(vec![7]));
        assert_eq!(table.get(&key(1)), None);
        assert!(table.get_or_default(key(3)).is_empty(), "a reused slot starts empty");
        assert_eq!(table.slots.len(), 2, "the freed slot was reused, not a new one pushed");
        table.clear();
        assert!(table.is_empty() && table.get(&key(2)).is_none());
    }
}
