//! One lock shard of a sparse table: the rows of the keys that hash to it.
//!
//! Each row is one record of `u32` words in an [`Arena`]: `[key lo, key hi, meta,
//! weights and optimizer state as f32 bits...]`. The hash index is a
//! `hashbrown::HashTable<u32>` of slots, so a lookup probes the table and then checks
//! the key in the record's first cache line — the line the values are read from anyway
//! (a separate key array would cost one more cache miss per lookup).
//!
//! Memory per row (dim 16, Adagrad): 140 bytes of record (8 key + 4 meta + 128) plus one
//! `u32` slot and one control byte per bucket (load factor 7/16..7/8): 146–152 bytes
//! against the raw 136.
//!
//! `meta` packs the row's last update (seconds on the store clock, 31 bits) with a
//! "changed since the last sparse publish" bit, so the publisher's change log costs no
//! extra memory.

use crate::arena::Arena;
use hashbrown::{HashMap, HashSet, HashTable};

const DIRTY: u32 = 1 << 31;
const TIME_MASK: u32 = DIRTY - 1;
/// Words before the floats of a record: key (2) and meta (1).
const HEADER: usize = 3;

/// The index hash: keys are already xxh3 hashes, but a PS shard owns a contiguous key
/// range (equal high bits) and a lock shard is chosen from other bits, so mix again.
#[inline]
pub fn mix(key: u64) -> u64 {
    let mut z = key ^ (key >> 33);
    z = z.wrapping_mul(0xff51_afd7_ed55_8ccd);
    z ^= z >> 33;
    z = z.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    z ^ (z >> 33)
}

#[inline]
fn key_of(words: &[u32]) -> u64 {
    words[0] as u64 | (words[1] as u64) << 32
}

#[inline]
fn floats(words: &[u32]) -> &[f32] {
    // SAFETY: u32 and f32 have the same size and alignment, and every bit pattern is
    // a valid f32, so a [u32] may be viewed as a [f32] of the same length.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<f32>(), words.len()) }
}

#[inline]
fn floats_mut(words: &mut [u32]) -> &mut [f32] {
    // SAFETY: as in `floats`; the borrow is exclusive.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<f32>(), words.len()) }
}

/// What happened to a push's key in [`RowShard::upsert`].
pub enum Upsert<'a> {
    /// The row exists (or was just created); here is its record.
    Row(&'a mut [f32]),
    /// Not created yet: the key has been seen fewer than `min_count` times.
    Pending,
}

pub struct RowShard {
    index: HashTable<u32>,
    records: Arena<u32>,
    /// Assembles a new record's words.
    build: Vec<u32>,
    /// `min_count` sightings of keys without a row yet: key -> (count, last seen).
    pending: HashMap<u64, (u32, u32)>,
    /// Keys evicted (or otherwise deleted) since the last sparse publish.
    deleted: HashSet<u64>,
}

impl RowShard {
    pub fn new(record_len: usize) -> Self {
        RowShard {
            index: HashTable::new(),
            records: Arena::new(HEADER + record_len),
            build: Vec::new(),
            pending: HashMap::new(),
            deleted: HashSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    #[inline]
    fn find(&self, key: u64) -> Option<usize> {
        let records = &self.records;
        self.index
            .find(mix(key), |&s| key_of(records.get(s as usize)) == key)
            .map(|&s| s as usize)
    }

    /// The record of `key`, if the row exists.
    #[inline]
    pub fn get(&self, key: u64) -> Option<&[f32]> {
        self.find(key)
            .map(|s| &floats(self.records.get(s))[HEADER..])
    }

    /// Inserts a row (replacing an existing one) without marking it changed: used by
    /// checkpoint loading, whose rows are the base version, not changes.
    pub fn insert_clean(&mut self, key: u64, record: &[f32], now: u32) {
        match self.find(key) {
            Some(s) => {
                let w = self.records.get_mut(s);
                w[2] = now & TIME_MASK;
                floats_mut(&mut w[HEADER..]).copy_from_slice(record);
            }
            None => {
                self.create(key, record, now & TIME_MASK);
            }
        }
    }

    fn create(&mut self, key: u64, record: &[f32], meta: u32) -> usize {
        self.build.clear();
        self.build
            .extend_from_slice(&[key as u32, (key >> 32) as u32, meta]);
        self.build.extend(record.iter().map(|f| f.to_bits()));
        let slot = self.records.push(&self.build);
        let records = &self.records;
        self.index.insert_unique(mix(key), slot as u32, |&s| {
            mix(key_of(records.get(s as usize)))
        });
        slot
    }

    /// The record `key` learns into: the existing row, or a new one initialised by
    /// `init` once the key has been pushed `min_count` times. Marks the row changed.
    pub fn upsert(
        &mut self,
        key: u64,
        now: u32,
        min_count: u32,
        init: impl FnOnce(&mut [f32]),
        scratch: &mut Vec<f32>,
    ) -> Upsert<'_> {
        let slot = match self.find(key) {
            Some(s) => s,
            None => {
                if min_count > 1 {
                    let e = self.pending.entry(key).or_insert((0, now));
                    e.0 += 1;
                    e.1 = now;
                    if e.0 < min_count {
                        return Upsert::Pending;
                    }
                    self.pending.remove(&key);
                }
                scratch.clear();
                scratch.resize(self.records.stride() - HEADER, 0.0);
                init(scratch);
                self.deleted.remove(&key);
                let rec = std::mem::take(scratch);
                let s = self.create(key, &rec, now & TIME_MASK);
                *scratch = rec;
                s
            }
        };
        let w = self.records.get_mut(slot);
        w[2] = DIRTY | (now & TIME_MASK);
        Upsert::Row(floats_mut(&mut w[HEADER..]))
    }

    /// Keys not yet promoted to rows and how often each was seen (`min_count`).
    pub fn pending_counts(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.pending.iter().map(|(&k, &(n, _))| (k, n))
    }

    /// Restore a sighting count from a checkpoint (unless the key has a row by now).
    pub fn insert_pending(&mut self, key: u64, count: u32, now: u32) {
        if self.find(key).is_none() {
            let e = self.pending.entry(key).or_insert((0, now));
            e.0 = e.0.max(count);
            e.1 = now;
        }
    }

    /// Evicts rows (and pending sightings) last updated before `cutoff`, recording
    /// evicted rows as deletions for the publisher. Returns the rows evicted.
    pub fn evict_before(&mut self, cutoff: u32) -> usize {
        self.pending.retain(|_, &mut (_, seen)| seen >= cutoff);
        let mut evicted = 0;
        let mut slot = 0;
        while slot < self.records.len() {
            let w = self.records.get(slot);
            if w[2] & TIME_MASK >= cutoff {
                slot += 1;
                continue;
            }
            let key = key_of(w);
            self.remove_slot(slot, key);
            self.deleted.insert(key);
            evicted += 1;
            // The last row moved into `slot`; look at it next.
        }
        evicted
    }

    fn remove_slot(&mut self, slot: usize, key: u64) {
        let records = &self.records;
        if let Ok(e) = self
            .index
            .find_entry(mix(key), |&s| key_of(records.get(s as usize)) == key)
        {
            e.remove();
        }
        let moved_from = self.records.swap_remove(slot);
        if moved_from != slot {
            let moved_key = key_of(self.records.get(slot));
            if let Some(s) = self
                .index
                .find_mut(mix(moved_key), |&s| s as usize == moved_from)
            {
                *s = slot as u32;
            }
        }
    }

    /// Keys changed since the last call (their changed bit is cleared) and keys deleted
    /// since the last call.
    pub fn take_changes(&mut self, upserted: &mut Vec<u64>, deleted: &mut Vec<u64>) {
        for slot in 0..self.records.len() {
            let w = self.records.get_mut(slot);
            if w[2] & DIRTY != 0 {
                w[2] &= TIME_MASK;
                upserted.push(key_of(w));
            }
        }
        deleted.extend(self.deleted.drain());
    }

    /// Puts back changes a skipped publish did not send. A key upserted then since
    /// deleted stays a deletion; a key deleted then since recreated stays an upsert.
    pub fn restore_changes(&mut self, upserted: &[u64], deleted: &[u64]) {
        for &k in upserted {
            if let Some(s) = self.find(k) {
                self.records.get_mut(s)[2] |= DIRTY;
            }
        }
        for &k in deleted {
            if self.find(k).is_none() {
                self.deleted.insert(k);
            }
        }
    }

    /// Every row's key and record, in slot order.
    pub fn for_each(&self, mut f: impl FnMut(u64, &[f32])) {
        for slot in 0..self.records.len() {
            let w = self.records.get(slot);
            f(key_of(w), &floats(w)[HEADER..]);
        }
    }

    /// Heap bytes held by this shard (index, records, pending and deleted sets).
    pub fn heap_bytes(&self) -> usize {
        let buckets = if self.index.capacity() == 0 {
            0
        } else {
            (self.index.capacity() * 8 / 7).next_power_of_two()
        };
        buckets * (std::mem::size_of::<u32>() + 1)
            + self.records.heap_bytes()
            + self.build.capacity() * 4
            + self.pending.capacity() * (8 + 8 + 1)
            + self.deleted.capacity() * (8 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(v: f32) -> impl FnOnce(&mut [f32]) {
        move |r: &mut [f32]| r.fill(v)
    }

    #[test]
    fn upsert_min_count_evict_and_changes() {
        let mut sh = RowShard::new(2);
        let mut scratch = Vec::new();
        // min_count 3: two pushes stay pending, the third creates the row.
        for _ in 0..2 {
            assert!(matches!(
                sh.upsert(9, 0, 3, fill(1.0), &mut scratch),
                Upsert::Pending
            ));
        }
        assert!(sh.get(9).is_none());
        match sh.upsert(9, 0, 3, fill(1.0), &mut scratch) {
            Upsert::Row(r) => r[0] = 5.0,
            Upsert::Pending => panic!("third sighting must create the row"),
        }
        assert_eq!(sh.get(9), Some(&[5.0, 1.0][..]));
        for k in 100..200u64 {
            if let Upsert::Row(r) = sh.upsert(k, 10, 1, fill(k as f32), &mut scratch) {
                r[1] = 0.5;
            }
        }
        let (mut up, mut del) = (Vec::new(), Vec::new());
        sh.take_changes(&mut up, &mut del);
        assert_eq!(up.len(), 101);
        assert!(del.is_empty());
        // Row 9 was updated at t=0: evicting before t=5 removes it only.
        assert_eq!(sh.evict_before(5), 1);
        assert!(sh.get(9).is_none());
        for k in 100..200u64 {
            assert_eq!(
                sh.get(k).unwrap()[0],
                k as f32,
                "key {k} survives the moves"
            );
        }
        let (mut up, mut del) = (Vec::new(), Vec::new());
        sh.take_changes(&mut up, &mut del);
        assert!(up.is_empty());
        assert_eq!(del, vec![9]);
        // A skipped publish puts the deletion back.
        sh.restore_changes(&[], &del);
        let (mut up2, mut del2) = (Vec::new(), Vec::new());
        sh.take_changes(&mut up2, &mut del2);
        assert_eq!(del2, vec![9]);
        // Evict everything in random-ish order; the index stays consistent.
        assert_eq!(sh.evict_before(11), 100);
        assert_eq!(sh.len(), 0);
    }
}
