//! The Kafka joiner's checkpoints in sled: the operator's buffered state and the input
//! offsets it corresponds to, written together as one blob, so a restarted joiner
//! restores the state and reads each partition from exactly where that state ends.
//!
//! Two slots are written in turn, each blob carrying its generation and a checksum.
//! Loading takes the newest slot that decodes and checks out; a torn or damaged write
//! of the newest one falls back to the one before (which is consistent too: its state
//! and offsets belong together, the joiner only re-reads a little more). sled makes a
//! single insert atomic; the checksum guards against what sled cannot see (a disk
//! returning other bytes, a file copied while written).

use odl_proto::stream::kafka::Offsets;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::xxh3_64;

const MAGIC: &[u8; 8] = b"ODLJCKP1";
const SLOTS: [&str; 2] = ["checkpoint-a", "checkpoint-b"];

/// What a checkpoint holds besides the operator's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Positions {
    /// Next offset to read per partition, by input topic.
    pub inputs: BTreeMap<String, Offsets>,
    /// Largest event time seen per partition, by input topic (the per-partition
    /// watermarks: a partition absent here has never had data).
    pub max_ts: BTreeMap<String, BTreeMap<i32, i64>>,
    /// End offset per partition of each output topic once everything emitted before
    /// this checkpoint was acknowledged: what a restarted joiner compares the topics'
    /// ends with to count the samples it emits again.
    pub outputs: BTreeMap<String, Offsets>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Increases by one per write; the newest valid one is loaded.
    pub generation: u64,
    pub positions: Positions,
    /// [`crate::Joiner::snapshot`].
    pub operator: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint store {path}: {source}")]
    Store {
        path: String,
        #[source]
        source: sled::Error,
    },
    #[error(
        "no readable checkpoint in {path} ({reasons}); move the directory away to start over \
         from the beginning of the input topics"
    )]
    Unreadable { path: String, reasons: String },
}

/// The sled database of one joiner.
pub struct CheckpointStore {
    db: sled::Db,
    path: PathBuf,
    generation: u64,
}

impl CheckpointStore {
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let db = sled::open(path).map_err(|source| store_error(path, source))?;
        Ok(CheckpointStore { db, path: path.to_path_buf(), generation: 0 })
    }

    /// The newest valid checkpoint, `None` for a new store. Slots that exist but do
    /// not check out are logged; if none checks out the store is refused (starting
    /// from nothing would silently re-join the whole input).
    pub fn load(&mut self) -> Result<Option<Checkpoint>, CheckpointError> {
        let mut best: Option<Checkpoint> = None;
        let mut reasons = Vec::new();
        for slot in SLOTS {
            let Some(blob) = self.db.get(slot).map_err(|e| store_error(&self.path, e))? else {
                continue;
            };
            match decode(&blob) {
                Ok(c) => {
                    if best.as_ref().is_none_or(|b| c.generation > b.generation) {
                        best = Some(c);
                    }
                }
                Err(why) => {
                    tracing::warn!(path = %self.path.display(), slot, "checkpoint slot not loaded: {why}");
                    reasons.push(format!("{slot}: {why}"));
                }
            }
        }
        if best.is_none() && !reasons.is_empty() {
            return Err(CheckpointError::Unreadable {
                path: self.path.display().to_string(),
                reasons: reasons.join("; "),
            });
        }
        self.generation = best.as_ref().map_or(0, |c| c.generation);
        Ok(best)
    }

    /// Writes the next generation into the older slot and waits until it is on disk.
    /// Returns the generation written.
    pub fn save(&mut self, positions: &Positions, operator: &[u8]) -> Result<u64, CheckpointError> {
        let generation = self.generation + 1;
        let blob = encode(generation, positions, operator);
        let slot = SLOTS[(generation % 2) as usize];
        self.db.insert(slot, blob).map_err(|e| store_error(&self.path, e))?;
        self.db.flush().map_err(|e| store_error(&self.path, e))?;
        self.generation = generation;
        Ok(generation)
    }

    /// Raw access for tests that damage a slot.
    #[cfg(test)]
    fn db(&self) -> &sled::Db {
        &self.db
    }
}

fn store_error(path: &Path, source: sled::Error) -> CheckpointError {
    CheckpointError::Store { path: path.display().to_string(), source }
}

/// `MAGIC, generation, len(meta), meta (JSON), len(operator), operator, xxh3_64 of
/// everything before it`, integers little-endian.
fn encode(generation: u64, positions: &Positions, operator: &[u8]) -> Vec<u8> {
    let meta = serde_json::to_vec(positions).unwrap_or_default();
    let mut b = Vec::with_capacity(40 + meta.len() + operator.len());
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&generation.to_le_bytes());
    b.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    b.extend_from_slice(&meta);
    b.extend_from_slice(&(operator.len() as u64).to_le_bytes());
    b.extend_from_slice(operator);
    let sum = xxh3_64(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    b
}

fn decode(blob: &[u8]) -> Result<Checkpoint, &'static str> {
    let (body, sum) = blob.split_at_checked(blob.len().saturating_sub(8)).ok_or("too short")?;
    if sum.len() != 8 || !body.starts_with(MAGIC) {
        return Err("not a joiner checkpoint");
    }
    if xxh3_64(body) != u64::from_le_bytes(sum.try_into().map_err(|_| "too short")?) {
        return Err("checksum mismatch (torn or damaged write)");
    }
    let mut rest = &body[MAGIC.len()..];
    let mut take = |n: usize| -> Result<&[u8], &'static str> {
        let (head, tail) = rest.split_at_checked(n).ok_or("truncated")?;
        rest = tail;
        Ok(head)
    };
    let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    let generation = u64_at(take(8)?);
    let meta_len = u64_at(take(8)?) as usize;
    let positions = serde_json::from_slice(take(meta_len)?).map_err(|_| "positions are not valid")?;
    let op_len = u64_at(take(8)?) as usize;
    let operator = take(op_len)?.to_vec();
    if !rest.is_empty() {
        return Err("trailing bytes");
    }
    Ok(Checkpoint { generation, positions, operator })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positions(n: i64) -> Positions {
        let mut p = Positions::default();
        p.inputs.insert("odl.click".into(), [(0, 10 + n), (1, 20 + n)].into_iter().collect());
        p.max_ts.insert("odl.click".into(), [(0, 1_000 * n)].into_iter().collect());
        p.outputs.insert("odl.samples".into(), [(0, 5 * n), (3, 7)].into_iter().collect());
        p
    }

    #[test]
    fn state_and_offsets_round_trip_and_the_newest_wins() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = CheckpointStore::open(dir.path()).unwrap();
        assert_eq!(s.load().unwrap(), None);
        assert_eq!(s.save(&positions(1), b"state one").unwrap(), 1);
        assert_eq!(s.save(&positions(2), b"state two").unwrap(), 2);
        assert_eq!(s.save(&positions(3), b"state three").unwrap(), 3);
        drop(s);
        let mut s = CheckpointStore::open(dir.path()).unwrap();
        let c = s.load().unwrap().unwrap();
        assert_eq!(c, Checkpoint { generation: 3, positions: positions(3), operator: b"state three".to_vec() });
        assert_eq!(s.save(&positions(4), b"").unwrap(), 4, "generations go on after a reopen");
    }

    #[test]
    fn a_torn_newest_write_is_not_loaded_the_previous_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = CheckpointStore::open(dir.path()).unwrap();
        s.save(&positions(1), b"older").unwrap();
        s.save(&positions(2), b"newer").unwrap();
        // The generation-2 blob, cut short as a crash in the middle of a write would.
        let newest = SLOTS[0];
        let blob = s.db().get(newest).unwrap().unwrap();
        s.db().insert(newest, &blob[..blob.len() - 5]).unwrap();
        let c = s.load().unwrap().unwrap();
        assert_eq!((c.generation, c.operator.as_slice()), (1, &b"older"[..]));
        // A flipped bit is caught by the checksum just the same.
        let mut flipped = blob.to_vec();
        flipped[20] ^= 1;
        s.db().insert(newest, flipped).unwrap();
        assert_eq!(s.load().unwrap().unwrap().generation, 1);
        // And the next save overwrites the damaged slot, not the good one.
        assert_eq!(s.save(&positions(5), b"next").unwrap(), 2);
        assert_eq!(s.load().unwrap().unwrap().operator, b"next");
    }

    #[test]
    fn a_store_with_no_readable_slot_is_refused_not_started_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = CheckpointStore::open(dir.path()).unwrap();
        s.save(&positions(1), b"x").unwrap();
        s.db().insert(SLOTS[1], &b"garbage"[..]).unwrap();
        let e = s.load().unwrap_err().to_string();
        assert!(e.contains("move the directory away") && e.contains("not a joiner checkpoint"), "{e}");
    }
}
