//! Checkpoints: a directory holding `manifest.json` (format version, time, samples,
//! schema, shard, attributes) and a sled database `sled/` with one tree per sparse
//! table and a `dense` tree (name → record as little-endian f32).
//!
//! A table's rows are stored as blobs of many rows, not one sled entry per row (sled
//! costs ~30 µs and ~250 bytes per entry; a blob is written at memory speed). Rows are
//! grouped by the top 8 bits of their key into 256 key-range buckets; a blob's sled key
//! is `[bucket][sequence u32 BE]` and its value `[n u32][n keys u64][n records f32]`
//! (little-endian; a record is the weights plus optimizer state). Loading into a shard
//! scans only the buckets overlapping the shard's key range and keeps the keys it
//! owns.
//!
//! Writing goes to `<dir>.tmp`, then swaps it in (`<dir>` → `<dir>.old`, tmp →
//! `<dir>`, `<dir>.old` removed), so a crash mid-write leaves the previous checkpoint;
//! loading falls back to `<dir>.old` when `<dir>` is missing its manifest (crash
//! between the renames).
//!
//! Loading into shard `i` of `n` keeps the keys and dense tensors that shard owns
//! ([`crate::routing`]), so a checkpoint from file mode or from any number of shards
//! warm-starts any shard count. A cluster checkpoint is one directory per shard; load
//! each of them into the new shards ([`LocalStore::load_checkpoints`]).

use crate::error::{PsError, Result};
use crate::local::{LocalStore, StoreOptions};
use crate::optimizer;
use crate::routing::ShardId;
use odl_proto::params::ModelSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bumped on any change of the on-disk layout; loading refuses other versions.
pub const FORMAT_VERSION: u32 = 1;
const MANIFEST: &str = "manifest.json";
const DB: &str = "sled";
const DENSE_TREE: &str = "dense";
const BATCH_ROWS: usize = 16 * 1024;
/// Key-range buckets per table: bucket `b` holds keys with top byte `b`.
const BUCKETS: usize = 256;

fn bucket_of(key: u64) -> usize {
    (key >> 56) as usize
}

/// One blob: `n`, the keys, the records (`rl` floats each).
fn encode_blob(keys: &[u64], records: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + keys.len() * 8 + records.len() * 4);
    out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
    for k in keys {
        out.extend_from_slice(&k.to_le_bytes());
    }
    for r in records {
        out.extend_from_slice(&r.to_le_bytes());
    }
    out
}

/// Decodes a blob into `keys` / `records` (appending), checking every length.
fn decode_blob(
    b: &[u8],
    rl: usize,
    keys: &mut Vec<u64>,
    records: &mut Vec<f32>,
) -> std::result::Result<(), String> {
    let n = b
        .get(..4)
        .map(|h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize)
        .ok_or("blob shorter than its header")?;
    let want = 4 + n * 8 + n * rl * 4;
    if b.len() != want {
        return Err(format!(
            "blob of {} bytes, {n} rows of {rl} floats need {want}",
            b.len()
        ));
    }
    let (kb, rb) = b[4..].split_at(n * 8);
    keys.extend(
        kb.chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])),
    );
    records.extend(
        rb.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    );
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    /// RFC 3339.
    pub created_at: String,
    /// Samples the parameters have been trained on (warm start included).
    pub samples: u64,
    /// The shard that wrote it (`None`: file mode, the whole model).
    pub shard: Option<ShardId>,
    pub schema: ModelSchema,
    /// Rows per table.
    pub rows: BTreeMap<String, u64>,
    pub attributes: BTreeMap<String, String>,
}

fn table_tree(name: &str) -> String {
    format!("table:{name}")
}

/// Keys seen fewer than `min_count` times, with their counts: a restart must not make
/// a key start counting again (one blob per lock shard, counts stored as the blob's
/// one-float records; a checkpoint without this tree simply has none).
fn pending_tree(name: &str) -> String {
    format!("pending:{name}")
}

fn floats_to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bytes_to_floats(b: &[u8], path: &Path, what: &str) -> Result<Vec<f32>> {
    if !b.len().is_multiple_of(4) {
        return Err(PsError::checkpoint(
            path,
            format!("{what}: {} bytes is not whole floats", b.len()),
        ));
    }
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut s = dir.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> PsError {
    move |source| PsError::Io { context, source }
}

/// Reads the manifest of the checkpoint at `dir` (or its `.old` fallback).
pub fn read_manifest(dir: &Path) -> Result<(PathBuf, Manifest)> {
    let dir = resolve(dir)?;
    let p = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&p).map_err(io(format!("reading {}", p.display())))?;
    let m: Manifest = serde_json::from_str(&text)
        .map_err(|e| PsError::checkpoint(&dir, format!("manifest: {e}")))?;
    if m.format_version != FORMAT_VERSION {
        return Err(PsError::checkpoint(
            &dir,
            format!(
                "format version {} (this build reads {FORMAT_VERSION})",
                m.format_version
            ),
        ));
    }
    Ok((dir, m))
}

/// `dir`, or `<dir>.old` when only that one is complete.
fn resolve(dir: &Path) -> Result<PathBuf> {
    if dir.join(MANIFEST).is_file() {
        return Ok(dir.to_path_buf());
    }
    let old = sibling(dir, ".old");
    if old.join(MANIFEST).is_file() {
        return Ok(old);
    }
    Err(PsError::checkpoint(
        dir,
        "no checkpoint here (no manifest.json)",
    ))
}

/// Whether `dir` holds a loadable checkpoint (used to resume a restarted shard).
pub fn exists(dir: &Path) -> bool {
    resolve(dir).is_ok()
}

impl LocalStore {
    /// Writes every row with its optimizer state, every dense tensor and a manifest to
    /// `dir`, replacing an earlier checkpoint there. Training may continue meanwhile:
    /// each lock shard is copied consistently, the whole is not a point in time.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<Manifest> {
        let _one_at_a_time = self.checkpoint_lock.lock();
        let tmp = sibling(dir, ".tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(format!("removing {}", tmp.display())))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
        let db = sled::Config::new()
            .path(tmp.join(DB))
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| PsError::checkpoint(&tmp, e))?;
        let sled_err = |e: sled::Error| PsError::checkpoint(&tmp, e);
        let mut rows: BTreeMap<String, u64> = BTreeMap::new();
        let mut seq = 0u32;
        for chunk in self.chunks(true) {
            let tree = db.open_tree(table_tree(&chunk.table)).map_err(sled_err)?;
            *rows.entry(chunk.table.clone()).or_default() += chunk.keys.len() as u64;
            let rl = chunk.dim;
            // Group this lock shard's rows by key-range bucket.
            let mut keys: Vec<Vec<u64>> = vec![Vec::new(); BUCKETS];
            let mut recs: Vec<Vec<f32>> = vec![Vec::new(); BUCKETS];
            for (k, rec) in chunk.keys.iter().zip(chunk.values.chunks_exact(rl.max(1))) {
                let b = bucket_of(k.0);
                keys[b].push(k.0);
                recs[b].extend_from_slice(rec);
            }
            let mut batch = sled::Batch::default();
            for (b, (ks, rs)) in keys.iter().zip(&recs).enumerate() {
                for (kc, rc) in ks.chunks(BATCH_ROWS).zip(rs.chunks(BATCH_ROWS * rl.max(1))) {
                    let mut id = [0u8; 5];
                    id[0] = b as u8;
                    id[1..].copy_from_slice(&seq.to_be_bytes());
                    seq = seq
                        .checked_add(1)
                        .ok_or_else(|| PsError::checkpoint(&tmp, "more than 2^32 blobs"))?;
                    batch.insert(&id, encode_blob(kc, rc));
                }
            }
            tree.apply_batch(batch).map_err(sled_err)?;
        }
        self.save_pending(&db).map_err(sled_err)?;
        let schema = self.schema();
        for t in &schema.tables {
            rows.entry(t.name.clone()).or_default();
        }
        let dense_tree = db.open_tree(DENSE_TREE).map_err(sled_err)?;
        self.with_dense(|d| -> Result<()> {
            for (name, t) in &d.tensors {
                dense_tree
                    .insert(name.as_bytes(), floats_to_bytes(&t.record))
                    .map_err(sled_err)?;
            }
            Ok(())
        })?;
        db.flush().map_err(sled_err)?;
        drop(dense_tree);
        drop(db);
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            created_at: chrono::Utc::now().to_rfc3339(),
            samples: self.total_samples(),
            shard: self.shard(),
            schema,
            rows,
            attributes: self.attributes(),
        };
        let text = serde_json::to_string_pretty(&manifest)
            .map_err(|e| PsError::checkpoint(dir, format!("manifest: {e}")))?;
        let mp = tmp.join(MANIFEST);
        std::fs::write(&mp, text).map_err(io(format!("writing {}", mp.display())))?;
        std::fs::File::open(&mp)
            .and_then(|f| f.sync_all())
            .map_err(io(format!("syncing {}", mp.display())))?;
        let old = sibling(dir, ".old");
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(format!("removing {}", old.display())))?;
        }
        if dir.exists() {
            std::fs::rename(dir, &old).map_err(io(format!("moving {} aside", dir.display())))?;
        }
        std::fs::rename(&tmp, dir).map_err(io(format!(
            "renaming {} to {}",
            tmp.display(),
            dir.display()
        )))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(format!("removing {}", old.display())))?;
        }
        Ok(manifest)
    }

    /// Loads the checkpoint at `dir` into a new store. With `shard = Some((i, n))` the
    /// store becomes shard `i` of `n` and keeps only what that shard owns.
    pub fn load_checkpoint(dir: &Path, shard: Option<(u32, u32)>) -> Result<LocalStore> {
        let mut opts = StoreOptions::default();
        if let Some((i, n)) = shard {
            opts.shard = Some(
                ShardId::new(i, n)
                    .ok_or_else(|| PsError::invalid(format!("shard {i}/{n} does not exist")))?,
            );
        }
        let store = LocalStore::new(opts);
        store.load_from(dir)?;
        Ok(store)
    }

    /// Loads each checkpoint of `dirs` into a new store with `opts` (e.g. the shards
    /// of an old cluster into one shard of a new one).
    pub fn load_checkpoints(dirs: &[PathBuf], opts: StoreOptions) -> Result<LocalStore> {
        let store = LocalStore::new(opts);
        for d in dirs {
            store.load_from(d)?;
        }
        Ok(store)
    }

    /// Adds the checkpoint's rows and dense tensors this store owns to it (rows it
    /// already holds are replaced). Samples: the largest of the loaded manifests; attributes merge.
    pub fn load_from(&self, dir: &Path) -> Result<Manifest> {
        let (dir, m) = read_manifest(dir)?;
        let db = sled::Config::new()
            .path(dir.join(DB))
            .open()
            .map_err(|e| PsError::checkpoint(&dir, e))?;
        let sled_err = |e: sled::Error| PsError::checkpoint(&dir, e);
        let now = self.now();
        let range = self.shard().map(|s| s.key_range());
        for spec in &m.schema.tables {
            let table = self.ensure_table(spec)?;
            let rl = optimizer::record_len(&spec.optimizer, spec.dim);
            let tree = db.open_tree(table_tree(&spec.name)).map_err(sled_err)?;
            // Buckets overlapping the shard's key range (all of them in file mode).
            let (lo, hi) = range.unwrap_or((0, u64::MAX));
            let first = [bucket_of(lo) as u8];
            let last = [bucket_of(hi) as u8, 0xff, 0xff, 0xff, 0xff];
            let mut keys = Vec::with_capacity(BATCH_ROWS);
            let mut recs = Vec::with_capacity(BATCH_ROWS * rl);
            for item in tree.range(&first[..]..=&last[..]) {
                let (_, v) = item.map_err(sled_err)?;
                keys.clear();
                recs.clear();
                decode_blob(&v, rl, &mut keys, &mut recs).map_err(|e| {
                    PsError::checkpoint(&dir, format!("table {:?}: {e}", spec.name))
                })?;
                if range.is_some() {
                    // Keep only the rows this shard owns.
                    let mut w = 0;
                    for r in 0..keys.len() {
                        if keys[r] >= lo && keys[r] <= hi {
                            keys[w] = keys[r];
                            recs.copy_within(r * rl..(r + 1) * rl, w * rl);
                            w += 1;
                        }
                    }
                    keys.truncate(w);
                    recs.truncate(w * rl);
                }
                table.insert_records(&keys, &recs, now);
            }
        }
        self.load_pending(&db, &m.schema, range)
            .map_err(|e| PsError::checkpoint(&dir, e))?;
        let dense_tree = db.open_tree(DENSE_TREE).map_err(sled_err)?;
        let shard = self.shard();
        for spec in &m.schema.dense {
            if shard.is_some_and(|s| !s.owns_dense(&spec.name)) {
                continue;
            }
            let bytes = dense_tree
                .get(spec.name.as_bytes())
                .map_err(sled_err)?
                .ok_or_else(|| {
                    PsError::checkpoint(&dir, format!("dense {:?} missing", spec.name))
                })?;
            let record = bytes_to_floats(&bytes, &dir, &spec.name)?;
            if record.len() != optimizer::record_len(&spec.optimizer, spec.init.len()) {
                return Err(PsError::checkpoint(
                    &dir,
                    format!("dense {:?}: wrong record length", spec.name),
                ));
            }
            self.with_dense(|d| -> Result<()> {
                d.declare(spec)?;
                if let Some(t) = d.tensors.get_mut(&spec.name) {
                    t.record = record;
                }
                Ok(())
            })?;
        }
        // Shards of one cluster each record the whole cluster's samples: take the max.
        self.set_base_samples(self.base_samples().max(m.samples));
        for (k, v) in &m.attributes {
            self.set_attribute(k, v);
        }
        Ok(m)
    }
}

impl LocalStore {
    fn save_pending(&self, db: &sled::Db) -> sled::Result<()> {
        for spec in self.schema().tables {
            let Ok(table) = self.table(&spec.name) else {
                continue;
            };
            let tree = db.open_tree(pending_tree(&spec.name))?;
            for i in 0..table.lock_shards() {
                let pending = table.copy_pending(i);
                if pending.is_empty() {
                    continue;
                }
                let keys: Vec<u64> = pending.iter().map(|p| p.0).collect();
                let counts: Vec<f32> = pending.iter().map(|p| p.1 as f32).collect();
                tree.insert((i as u32).to_be_bytes(), encode_blob(&keys, &counts))?;
            }
        }
        Ok(())
    }

    fn load_pending(
        &self,
        db: &sled::Db,
        schema: &ModelSchema,
        range: Option<(u64, u64)>,
    ) -> std::result::Result<(), String> {
        let now = self.now();
        let (lo, hi) = range.unwrap_or((0, u64::MAX));
        for spec in &schema.tables {
            let table = self.table(&spec.name).map_err(|e| e.to_string())?;
            let tree = db
                .open_tree(pending_tree(&spec.name))
                .map_err(|e| e.to_string())?;
            for item in tree.iter() {
                let (_, v) = item.map_err(|e| e.to_string())?;
                let (mut keys, mut counts) = (Vec::new(), Vec::new());
                decode_blob(&v, 1, &mut keys, &mut counts)
                    .map_err(|e| format!("pending sightings of {:?}: {e}", spec.name))?;
                let owned: Vec<(u64, u32)> = keys
                    .into_iter()
                    .zip(counts)
                    .filter(|(k, _)| (lo..=hi).contains(k))
                    .map(|(k, n)| (k, n as u32))
                    .collect();
                table.insert_pending(&owned, now);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_reject_bad_lengths() {
        let keys = [1u64, u64::MAX, 7];
        let recs: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
        let b = encode_blob(&keys, &recs);
        let (mut k, mut r) = (Vec::new(), Vec::new());
        decode_blob(&b, 2, &mut k, &mut r).unwrap();
        assert_eq!((k.as_slice(), r.as_slice()), (&keys[..], &recs[..]));
        assert!(
            decode_blob(&b, 3, &mut k, &mut r).is_err(),
            "wrong record length"
        );
        assert!(
            decode_blob(&b[..b.len() - 1], 2, &mut k, &mut r).is_err(),
            "truncated"
        );
        assert!(
            decode_blob(&b[..2], 2, &mut k, &mut r).is_err(),
            "no header"
        );
    }
}
