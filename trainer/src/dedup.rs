//! A bounded window of recently trained `sample_id`s.
//!
//! The joiner emits at-least-once: restarted after a crash, it re-emits the samples
//! since its last checkpoint with the same `sample_id` (JOIN.md). Kafka transactions
//! cannot hide those copies (the broker we test against does not honour
//! `read_committed`), so the trainer drops an id it has already learnt from. Re-emits
//! arrive soon after the originals, so a window of the most recent ids is enough, and
//! bounding it keeps memory flat on an endless stream.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, RandomState};

/// 64-bit fingerprints of the last `capacity` ids, oldest forgotten first. Two distinct
/// ids share a fingerprint with probability ~capacity/2^64 per sample: negligible next
/// to the duplicates the window exists to catch.
pub struct SeenIds {
    capacity: usize,
    set: HashSet<u64, BuildHasherDefault<IdentityHasher>>,
    order: VecDeque<u64>,
    hasher: RandomState,
}

impl SeenIds {
    /// A window of `capacity` ids; 0 turns deduplication off.
    pub fn new(capacity: usize) -> SeenIds {
        SeenIds {
            capacity,
            set: HashSet::with_capacity_and_hasher(capacity.min(1 << 20), Default::default()),
            order: VecDeque::with_capacity(capacity.min(1 << 20)),
            hasher: RandomState::new(),
        }
    }

    /// Records `id`; false if it is already in the window (a duplicate to skip).
    pub fn insert(&mut self, id: &[u8]) -> bool {
        if self.capacity == 0 {
            return true;
        }
        let fp = self.hasher.hash_one(id);
        if !self.set.insert(fp) {
            return false;
        }
        self.order.push_back(fp);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// The set's keys are already uniform 64-bit fingerprints: hashing them again would
/// only cost time.
#[derive(Default)]
struct IdentityHasher(u64);

impl std::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The `sample_id` of a sample line: the record key when the samples topic is keyed by
/// it (JOIN.md), else the line's `"sample_id"` string field.
pub fn sample_id<'a>(key: Option<&'a [u8]>, line: &'a [u8]) -> Option<&'a [u8]> {
    if let Some(k) = key.filter(|k| !k.is_empty()) {
        return Some(k);
    }
    const FIELD: &[u8] = b"\"sample_id\"";
    let at = memchr::memmem::find(line, FIELD)? + FIELD.len();
    let rest = &line[at..];
    let open = rest.iter().position(|&b| b == b'"')?;
    if !rest[..open].iter().all(|&b| b == b':' || b.is_ascii_whitespace()) {
        return None;
    }
    let value = &rest[open + 1..];
    let close = memchr::memchr(b'"', value)?;
    Some(&value[..close])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_inside_the_window_are_caught_and_old_ids_forgotten() {
        let mut w = SeenIds::new(3);
        assert!(w.insert(b"a"));
        assert!(!w.insert(b"a"));
        assert!(w.insert(b"b") && w.insert(b"c"));
        assert!(w.insert(b"d"), "a leaves the window");
        assert_eq!(w.len(), 3);
        assert!(w.insert(b"a"), "a is new again once forgotten");
        assert!(!w.insert(b"d"));
    }

    #[test]
    fn a_zero_window_keeps_everything() {
        let mut w = SeenIds::new(0);
        assert!(w.insert(b"a") && w.insert(b"a"));
        assert!(w.is_empty());
    }

    #[test]
    fn the_id_comes_from_the_key_or_the_line() {
        let line = br#"{"sample_id": "pv1:i2", "ts": 1}"#;
        assert_eq!(sample_id(Some(b"k"), line), Some(&b"k"[..]));
        assert_eq!(sample_id(None, line), Some(&b"pv1:i2"[..]));
        assert_eq!(sample_id(Some(b""), br#"{"sample_id":"x"}"#), Some(&b"x"[..]));
        assert_eq!(sample_id(None, br#"{"ts":1}"#), None);
        assert_eq!(sample_id(None, br#"{"sample_id":7}"#), None, "not a string");
        assert_eq!(sample_id(None, br#"{"sample_id":"unterminated"#), None);
    }
}
