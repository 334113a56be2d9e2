//! The parameters of one applied version, as an immutable value the REST handlers
//! read through [`ParamRead`] (so the trainer's forward pass runs on it unchanged).
//!
//! Applying a version builds the next value aside: a full version from scratch, an
//! increment as a copy of the current one that shares every untouched shard (`Arc`)
//! and copies a shard only when it writes to it. The node then swaps one pointer, so
//! a request sees either the old version or the new one, never half of each.

use odl_proto::hashing::FeatureId;
use odl_proto::params::{init_row, ModelSchema, ParamError, ParamRead};
use odl_proto::version::Version;
use odl_trainer::Model;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// Lock-free shards per table: an increment copies only the shards it touches.
const SHARDS: usize = 256;

/// Keys are already xxh3 hashes; one multiply spreads them for the table's buckets.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ *b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, k: u64) {
        self.0 = (k ^ (k >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    }
}

type KeyMap = HashMap<u64, u32, BuildHasherDefault<KeyHasher>>;

/// Rows of one shard: key → slot, slots `dim` floats each in one arena.
#[derive(Clone, Default)]
struct Shard {
    index: KeyMap,
    values: Vec<f32>,
    free: Vec<u32>,
}

impl Shard {
    fn upsert(&mut self, key: u64, row: &[f32]) {
        let dim = row.len();
        match self.index.get(&key) {
            Some(&slot) => {
                let at = slot as usize * dim;
                self.values[at..at + dim].copy_from_slice(row);
            }
            None => {
                let slot = match self.free.pop() {
                    Some(s) => {
                        let at = s as usize * dim;
                        self.values[at..at + dim].copy_from_slice(row);
                        s
                    }
                    None => {
                        self.values.extend_from_slice(row);
                        (self.values.len() / dim - 1) as u32
                    }
                };
                self.index.insert(key, slot);
            }
        }
    }

    fn remove(&mut self, key: u64) {
        if let Some(slot) = self.index.remove(&key) {
            self.free.push(slot);
        }
    }

    fn get(&self, key: u64, dim: usize) -> Option<&[f32]> {
        self.index
            .get(&key)
            .map(|&s| &self.values[s as usize * dim..(s as usize + 1) * dim])
    }
}

#[inline]
fn shard_of(key: u64) -> usize {
    // Mixed top bits (keys from tests and benchmarks may be sequential); the map
    // inside a shard mixes the key differently.
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize % SHARDS
}

/// One sparse table of a version.
#[derive(Clone)]
pub struct Table {
    dim: usize,
    init_std: f32,
    shards: Vec<Arc<Shard>>,
    rows: usize,
}

impl Table {
    fn new(dim: usize, init_std: f32) -> Table {
        Table {
            dim,
            init_std,
            shards: (0..SHARDS).map(|_| Arc::new(Shard::default())).collect(),
            rows: 0,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Upsert `keys` (row-major `values`) and remove `deleted`.
    pub fn apply(&mut self, keys: &[u64], values: &[f32], deleted: &[u64]) -> Result<(), String> {
        if values.len() != keys.len() * self.dim {
            return Err(format!(
                "{} keys but {} values for dim {}",
                keys.len(),
                values.len(),
                self.dim
            ));
        }
        for (k, row) in keys.iter().zip(values.chunks_exact(self.dim.max(1))) {
            let sh = Arc::make_mut(&mut self.shards[shard_of(*k)]);
            let before = sh.index.len();
            sh.upsert(*k, row);
            self.rows += sh.index.len() - before;
        }
        for k in deleted {
            let sh = Arc::make_mut(&mut self.shards[shard_of(*k)]);
            let before = sh.index.len();
            sh.remove(*k);
            self.rows -= before - sh.index.len();
        }
        Ok(())
    }

    /// [`Table::apply`] on the wire form: little-endian u64 keys and f32 values,
    /// decoded row by row without intermediate vectors.
    pub fn apply_bytes(
        &mut self,
        keys: &[u8],
        values: &[u8],
        deleted: &[u64],
    ) -> Result<(), String> {
        let dim = self.dim.max(1);
        if !keys.chunks_exact(8).remainder().is_empty() || values.len() != keys.len() / 8 * dim * 4
        {
            return Err(format!(
                "{} key bytes and {} value bytes for dim {dim}",
                keys.len(),
                values.len()
            ));
        }
        let mut row = vec![0f32; dim];
        for (k, vb) in keys.chunks_exact(8).zip(values.chunks_exact(dim * 4)) {
            let mut kb = [0u8; 8];
            kb.copy_from_slice(k);
            let key = u64::from_le_bytes(kb);
            for (x, b) in row.iter_mut().zip(vb.chunks_exact(4)) {
                *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            let sh = Arc::make_mut(&mut self.shards[shard_of(key)]);
            let before = sh.index.len();
            sh.upsert(key, &row);
            self.rows += sh.index.len() - before;
        }
        self.apply(&[], &[], deleted)
    }

    pub fn get(&self, key: u64) -> Option<&[f32]> {
        self.shards[shard_of(key)].get(key, self.dim)
    }
}

/// Everything a node serves for one version.
#[derive(Clone)]
pub struct ServedVersion {
    pub version: Version,
    pub base: Version,
    pub kind: String,
    /// When the PS created it (ms since the epoch).
    pub created_at_ms: i64,
    pub samples_through: u64,
    pub schema: ModelSchema,
    pub model_config: String,
    /// Built from `model_config`; `None` until a model config arrived.
    pub model: Option<Arc<Model>>,
    pub tables: HashMap<String, Table>,
    pub dense: HashMap<String, Arc<Vec<f32>>>,
}

impl ServedVersion {
    /// An empty state to build a full version into.
    pub fn empty(version: Version) -> ServedVersion {
        ServedVersion {
            version,
            base: version,
            kind: "full".to_string(),
            created_at_ms: 0,
            samples_through: 0,
            schema: ModelSchema::default(),
            model_config: String::new(),
            model: None,
            tables: HashMap::new(),
            dense: HashMap::new(),
        }
    }

    pub fn rows(&self) -> usize {
        self.tables.values().map(Table::rows).sum()
    }

    /// The table `name`, created (empty) with the dimension the rows arrive with.
    pub fn table_mut(&mut self, name: &str, dim: usize) -> Result<&mut Table, String> {
        let init_std = self.init_std(name);
        let t = self
            .tables
            .entry(name.to_string())
            .or_insert_with(|| Table::new(dim, init_std));
        if t.dim != dim {
            return Err(format!(
                "table {name} has dim {}, rows arrived with dim {dim}",
                t.dim
            ));
        }
        Ok(t)
    }

    fn init_std(&self, table: &str) -> f32 {
        let from = |s: &ModelSchema| {
            s.tables
                .iter()
                .find(|t| t.name == table)
                .map(|t| t.init_std)
        };
        from(&self.schema)
            .or_else(|| self.model.as_ref().and_then(|m| from(m.schema())))
            .unwrap_or(0.0)
    }
}

impl ParamRead for ServedVersion {
    fn pull_sparse(
        &self,
        table: &str,
        keys: &[FeatureId],
        out: &mut [f32],
    ) -> odl_proto::params::Result<()> {
        match self.tables.get(table) {
            Some(t) => {
                if out.len() != keys.len() * t.dim {
                    return Err(ParamError::Invalid(format!(
                        "table {table}: output of {} for {} keys",
                        out.len(),
                        keys.len()
                    )));
                }
                for (k, o) in keys.iter().zip(out.chunks_exact_mut(t.dim.max(1))) {
                    match t.get(k.0) {
                        Some(row) => o.copy_from_slice(row),
                        None => init_row(*k, t.init_std, o),
                    }
                }
            }
            None => {
                // No row of this table published yet: every row reads as its initial value.
                let dim = if keys.is_empty() {
                    0
                } else {
                    out.len() / keys.len()
                };
                let std = self.init_std(table);
                for (k, o) in keys.iter().zip(out.chunks_exact_mut(dim.max(1))) {
                    init_row(*k, std, o);
                }
            }
        }
        Ok(())
    }

    fn pull_dense(&self, names: &[String]) -> odl_proto::params::Result<Vec<Vec<f32>>> {
        names
            .iter()
            .map(|n| {
                self.dense
                    .get(n)
                    .map(|v| v.as_ref().clone())
                    .ok_or_else(|| {
                        ParamError::Unavailable(format!("dense tensor {n} not published yet"))
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_increment_copies_only_touched_shards_and_leaves_the_old_version_intact() {
        let mut v1 = ServedVersion::empty(Version(1));
        let keys: Vec<u64> = (0..10_000u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        let values: Vec<f32> = (0..keys.len() * 2).map(|i| i as f32).collect();
        v1.table_mut("emb", 2)
            .unwrap()
            .apply(&keys, &values, &[])
            .unwrap();
        assert_eq!(v1.rows(), 10_000);
        let mut v2 = v1.clone();
        v2.version = Version(2);
        v2.table_mut("emb", 2)
            .unwrap()
            .apply(&[keys[0]], &[-1.0, -1.0], &[keys[1]])
            .unwrap();
        assert_eq!(v2.rows(), 9_999);
        let shared = v1.tables["emb"]
            .shards
            .iter()
            .zip(&v2.tables["emb"].shards)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert!(shared >= SHARDS - 2, "{shared}");
        let mut out = [0f32; 4];
        v1.pull_sparse("emb", &[FeatureId(keys[0]), FeatureId(keys[1])], &mut out)
            .unwrap();
        assert_eq!(out, [0.0, 1.0, 2.0, 3.0]);
        v2.pull_sparse("emb", &[FeatureId(keys[0]), FeatureId(keys[1])], &mut out)
            .unwrap();
        assert_eq!(out[..2], [-1.0, -1.0]);
        let mut init = [0f32; 2];
        init_row(FeatureId(keys[1]), 0.0, &mut init);
        assert_eq!(out[2..], init);
        assert!(v2.table_mut("emb", 3).is_err());
        assert!(v2
            .table_mut("emb", 2)
            .unwrap()
            .apply(&[1], &[1.0], &[])
            .is_err());
        assert!(v2
            .table_mut("emb", 2)
            .unwrap()
            .apply_bytes(&[0; 8], &[0; 4], &[])
            .is_err());
        let t = v2.table_mut("emb", 2).unwrap();
        t.apply_bytes(
            &7u64.to_le_bytes(),
            &[1.5f32.to_le_bytes(), 2.5f32.to_le_bytes()].concat(),
            &[],
        )
        .unwrap();
        assert_eq!(t.get(7), Some(&[1.5f32, 2.5][..]));
        assert!(v2.pull_dense(&["w".to_string()]).is_err());
    }
}
