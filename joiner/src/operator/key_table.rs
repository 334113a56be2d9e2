//! The join state by key: a small open-addressing index from key to slot, and the
//! keys and their states in a slab of slots.
//!
//! Why not one `HashMap<Key, KeyState>`: a key's state is a few hundred bytes, so with
//! tens of thousands of live keys that map spans tens of megabytes, and finding a key
//! is two dependent cache misses (the control bytes, then the key in its bucket)
//! before the state itself. perf showed the Kafka loop stalled on exactly those loads,
//! also in the look-ahead meant to hide them: a look-up cannot be a prefetch.
//!
//! Here an index entry is 8 bytes: 32 bits of the key (which is already a uniform
//! hash) as tag and home position, and the slot. So looking ahead takes two steps
//! that never wait: [`KeyTable::prefetch_index`] needs only arithmetic to name the
//! index line of a key several events away, and [`KeyTable::prefetch`], a few events
//! later, reads that line (by then in cache) and prefetches the slot it points to.
//! The key itself is checked in the slot on the real access, whose lines are then
//! loaded too.
//!
//! The index is linear-probing, at most half full, with backward-shift deletion (no
//! tombstones, so probe runs stay short however keys come and go). Emptied slots go on
//! a free list and are reused last in, first out: the slot freed by a timer that just
//! fired is warm when the next new key takes it. Neither part shrinks; neither did the
//! map this replaces.

use super::prefetch;
use crate::parse::Key;

/// An index entry: tag in the high 32 bits, slot in the low 32; [`EMPTY`] is free (no
/// real entry equals it: slot `u32::MAX` would take four billion live keys).
type Entry = u64;
const EMPTY: Entry = u64::MAX;
/// The index starts at this many entries (a power of two) once a key arrives.
const MIN_ENTRIES: usize = 1024;

fn tag(key: Key) -> u32 {
    (key >> 96) as u32
}

fn entry(tag: u32, slot: u32) -> Entry {
    (tag as u64) << 32 | slot as u64
}

fn entry_tag(e: Entry) -> u32 {
    (e >> 32) as u32
}

fn entry_slot(e: Entry) -> usize {
    (e as u32) as usize
}

pub(super) struct KeyTable<V> {
    /// Length zero or a power of two; fewer than half the entries are used.
    index: Vec<Entry>,
    slots: Vec<(Key, V)>,
    /// Slots whose key was removed: each holds `V::default()`.
    free: Vec<u32>,
    len: usize,
}

impl<V> Default for KeyTable<V> {
    fn default() -> Self {
        KeyTable { index: Vec::new(), slots: Vec::new(), free: Vec::new(), len: 0 }
    }
}

impl<V: Default> KeyTable<V> {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn get(&self, key: &Key) -> Option<&V> {
        self.find(*key).map(|(_, s)| &self.slots[s].1)
    }

    pub(super) fn get_mut(&mut self, key: &Key) -> Option<&mut V> {
        self.find(*key).map(|(_, s)| &mut self.slots[s].1)
    }

    /// The state of `key`, a default one inserted first if it has none.
    pub(super) fn get_or_default(&mut self, key: Key) -> &mut V {
        let slot = match self.find(key) {
            Some((_, s)) => s,
            None => self.add(key, V::default()),
        };
        &mut self.slots[slot].1
    }

    /// Sets the state of `key` (a restore: keys arrive once each).
    pub(super) fn insert(&mut self, key: Key, value: V) {
        match self.find(key) {
            Some((_, s)) => self.slots[s].1 = value,
            None => {
                self.add(key, value);
            }
        }
    }

    pub(super) fn remove(&mut self, key: &Key) -> Option<V> {
        let (at, slot) = self.find(*key)?;
        self.unlink(at);
        self.len -= 1;
        self.free.push(slot as u32);
        Some(std::mem::take(&mut self.slots[slot].1))
    }

    pub(super) fn reserve(&mut self, additional: usize) {
        self.grow_for(self.len + additional);
        self.slots.reserve(additional.saturating_sub(self.free.len()));
    }

    pub(super) fn clear(&mut self) {
        self.index.fill(EMPTY);
        self.slots.clear();
        self.free.clear();
        self.len = 0;
    }

    /// Every key and its state, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (Key, &V)> {
        self.index.iter().filter(|&&e| e != EMPTY).map(|&e| {
            let (key, value) = &self.slots[entry_slot(e)];
            (*key, value)
        })
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// First step of a look-ahead: starts loading the index line where `key` is found.
    pub(super) fn prefetch_index(&self, key: Key) {
        if !self.index.is_empty() {
            prefetch(self.index.as_ptr().wrapping_add(self.home(tag(key))).cast());
        }
    }

    /// Second step, a few events after the first: starts loading the slot the index
    /// points `key` to (the first entry with its tag: the key is not checked, which
    /// would wait for the slot; a wrong guess costs one useless prefetch).
    pub(super) fn prefetch(&self, key: Key) {
        let Some(mask) = self.index.len().checked_sub(1) else { return };
        let t = tag(key);
        let mut at = self.home(t);
        loop {
            let e = self.index[at];
            if e == EMPTY {
                return;
            }
            if entry_tag(e) == t {
                let p = self.slots.as_ptr().wrapping_add(entry_slot(e)).cast::<u8>();
                let size = size_of::<(Key, V)>();
                for offset in (0..size).step_by(64) {
                    prefetch(p.wrapping_add(offset));
                }
                prefetch(p.wrapping_add(size - 1));
                return;
            }
            at = (at + 1) & mask;
        }
    }

    fn home(&self, tag: u32) -> usize {
        tag as usize & (self.index.len() - 1)
    }

    /// Where `key`'s entry is in the index, and its slot.
    fn find(&self, key: Key) -> Option<(usize, usize)> {
        let mask = self.index.len().checked_sub(1)?;
        let t = tag(key);
        let mut at = self.home(t);
        loop {
            let e = self.index[at];
            if e == EMPTY {
                return None;
            }
            if entry_tag(e) == t && self.slots[entry_slot(e)].0 == key {
                return Some((at, entry_slot(e)));
            }
            at = (at + 1) & mask;
        }
    }

    /// Adds a key that is not in the table; returns its slot.
    fn add(&mut self, key: Key, value: V) -> usize {
        self.grow_for(self.len + 1);
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = (key, value);
                s
            }
            None => {
                self.slots.push((key, value));
                // An index of more than 2^32 entries would not fit in memory
                // beside its states first.
                (self.slots.len() - 1) as u32
            }
        };
        self.link(entry(tag(key), slot));
        self.len += 1;
        slot as usize
    }

    /// Puts `e` in the first free entry of its probe run.
    fn link(&mut self, e: Entry) {
        let mask = self.index.len() - 1;
        let mut at = self.home(entry_tag(e));
        while self.index[at] != EMPTY {
            at = (at + 1) & mask;
        }
        self.index[at] = e;
    }

    /// Frees index entry `hole`, moving back each later entry of the run that may
    /// take its place (one whose home is not between the hole and itself).
    fn unlink(&mut self, mut hole: usize) {
        let mask = self.index.len() - 1;
        let mut at = (hole + 1) & mask;
        loop {
            let e = self.index[at];
            if e == EMPTY {
                break;
            }
            let home = self.home(entry_tag(e));
            if (at.wrapping_sub(home) & mask) >= (at.wrapping_sub(hole) & mask) {
                self.index[hole] = e;
                hole = at;
            }
            at = (at + 1) & mask;
        }
        self.index[hole] = EMPTY;
    }

    /// Doubles the index until `len` keys fill at most half of it.
    fn grow_for(&mut self, len: usize) {
        let mut size = self.index.len().max(MIN_ENTRIES);
        while len * 2 > size {
            size *= 2;
        }
        if size == self.index.len() {
            return;
        }
        let old = std::mem::replace(&mut self.index, vec![EMPTY; size]);
        for e in old.into_iter().filter(|&e| e != EMPTY) {
            self.link(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Clone, Debug)]
    enum Op {
        Upsert(u16, u32),
        Insert(u16, u32),
        Remove(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..400u16, any::<u32>()).prop_map(|(k, v)| Op::Upsert(k, v)),
            (0..400u16, any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            (0..400u16).prop_map(Op::Remove),
        ]
    }

    /// Keys whose homes bunch near the end of the smallest index (so probe runs wrap
    /// around it and shift back across it) or share a tag (only the slot's key tells
    /// them apart).
    fn key(k: u16) -> Key {
        let tag = if k % 3 == 0 { 1016 + (k % 16) as u32 } else { (k % 251) as u32 * 0x0101_0101 };
        (tag as Key) << 96 | (k as Key).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    proptest! {
        /// Whatever the mix of inserts and removals (slots freed and reused, the index
        /// grown and shifted), the table holds what a plain map would.
        #[test]
        fn a_key_table_holds_what_a_map_would(ops in proptest::collection::vec(op(), 0..600)) {
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

    #[test]
    fn the_index_stays_at_most_half_full_and_prefetching_is_harmless() {
        let mut table = KeyTable::<u8>::default();
        table.prefetch_index(key(1));
        table.prefetch(key(1));
        for k in 0..5000 {
            table.insert(key(k), 1);
            table.prefetch(key(k + 1));
            assert!(table.len() * 2 <= table.index.len());
        }
        assert_eq!(table.index.len(), 16384);
        assert_eq!(table.values().count(), 5000);
    }
}
