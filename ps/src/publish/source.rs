//! What the publisher reads from the parameter store: the schema, the keys changed
//! since the last sparse publish (taken, and restored when a gate skips the publish),
//! current rows and dense tensors, a full snapshot, the merged training progress the
//! AUC gates read, and loading a batch checkpoint for a rebase.
//!
//! The PS implements it for its `LocalStore`; [`MemorySource`] is a plain in-memory
//! implementation for tests and benchmarks of the publishing path alone.

use super::payload::RowSet;
use super::{PublishError, Result};
use odl_proto::hashing::FeatureId;
use odl_proto::params::{ModelSchema, TrainProgress};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;

pub use crate::local::TableChanges;
use crate::local::{Changes, LocalStore};

/// The checkpoint attribute holding the model config (JSON or TOML text, fields
/// resolved) that travels with full versions so serving builds the trained model.
pub const MODEL_CONFIG_ATTRIBUTE: &str = "model_config";

pub trait PublishSource: Send + Sync + 'static {
    fn schema(&self) -> Result<ModelSchema>;
    /// Keys changed since the previous take, per table; the store forgets them.
    fn take_changes(&self) -> Result<Vec<TableChanges>>;
    /// Put taken changes back (a skipped publish), so the next publish carries them.
    fn restore_changes(&self, changes: &[TableChanges]);
    /// The keys among `keys` that have a row, and their weights row-major.
    fn read_rows(&self, table: &str, keys: &[FeatureId]) -> Result<(Vec<FeatureId>, Vec<f32>)>;
    /// Every dense tensor's current weights.
    fn dense_snapshot(&self) -> Result<Vec<(String, Vec<f32>)>>;
    /// Every row of every table.
    fn full_rows(&self) -> Result<Vec<RowSet>>;
    /// Streaming evaluation merged over the workers.
    fn progress(&self) -> TrainProgress;
    /// Replace the parameters with a batch checkpoint while training continues.
    fn rebase(&self, checkpoint: &Path) -> Result<()>;
    /// The model config the store was given (by its checkpoint or a trainer), if any.
    fn model_config(&self) -> Option<String> {
        None
    }
}

impl PublishSource for LocalStore {
    fn schema(&self) -> Result<ModelSchema> {
        Ok(LocalStore::schema(self))
    }

    fn take_changes(&self) -> Result<Vec<TableChanges>> {
        Ok(LocalStore::take_changes(self).tables)
    }

    fn restore_changes(&self, changes: &[TableChanges]) {
        LocalStore::restore_changes(
            self,
            Changes {
                tables: changes.to_vec(),
            },
        )
    }

    fn read_rows(&self, table: &str, keys: &[FeatureId]) -> Result<(Vec<FeatureId>, Vec<f32>)> {
        let b = LocalStore::read_rows(self, table, keys)
            .map_err(|e| PublishError::Source(e.to_string()))?;
        Ok((b.keys, b.values))
    }

    fn dense_snapshot(&self) -> Result<Vec<(String, Vec<f32>)>> {
        Ok(LocalStore::dense_snapshot(self))
    }

    fn full_rows(&self) -> Result<Vec<RowSet>> {
        let mut sets: BTreeMap<String, RowSet> = BTreeMap::new();
        for b in self.full_snapshot() {
            let set = sets.entry(b.table.clone()).or_insert_with(|| RowSet {
                table: b.table.clone(),
                dim: b.dim,
                ..Default::default()
            });
            set.keys.extend(b.keys.iter().map(|k| k.0));
            set.values.extend_from_slice(&b.values);
        }
        Ok(sets.into_values().collect())
    }

    fn progress(&self) -> TrainProgress {
        self.merged_progress()
    }

    fn rebase(&self, checkpoint: &Path) -> Result<()> {
        self.replace_from(checkpoint)
            .map(|_| ())
            .map_err(|e| PublishError::Source(e.to_string()))
    }

    fn model_config(&self) -> Option<String> {
        self.attribute(MODEL_CONFIG_ATTRIBUTE)
    }
}

/// Parameters held in plain maps, with change tracking: for tests and benchmarks.
#[derive(Default)]
pub struct MemorySource {
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    schema: ModelSchema,
    rows: BTreeMap<String, HashMap<u64, Vec<f32>>>,
    dense: BTreeMap<String, Vec<f32>>,
    upserted: BTreeMap<String, BTreeSet<u64>>,
    deleted: BTreeMap<String, BTreeSet<u64>>,
    progress: TrainProgress,
}

impl MemorySource {
    pub fn new(schema: ModelSchema) -> MemorySource {
        let dense = schema
            .dense
            .iter()
            .map(|d| (d.name.clone(), d.init.clone()))
            .collect();
        let rows = schema
            .tables
            .iter()
            .map(|t| (t.name.clone(), HashMap::new()))
            .collect();
        MemorySource {
            inner: Mutex::new(MemoryInner {
                schema,
                rows,
                dense,
                ..Default::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Set rows (marking them changed).
    pub fn set_rows(&self, table: &str, keys: &[u64], values: &[f32]) {
        let mut g = self.lock();
        let dim = g
            .schema
            .tables
            .iter()
            .find(|t| t.name == table)
            .map_or(1, |t| t.dim);
        let inner = &mut *g;
        let rows = inner.rows.entry(table.to_string()).or_default();
        let up = inner.upserted.entry(table.to_string()).or_default();
        for (k, v) in keys.iter().zip(values.chunks_exact(dim)) {
            rows.insert(*k, v.to_vec());
            up.insert(*k);
        }
    }

    /// Remove rows (marking them deleted).
    pub fn delete_rows(&self, table: &str, keys: &[u64]) {
        let mut g = self.lock();
        let inner = &mut *g;
        for k in keys {
            if let Some(r) = inner.rows.get_mut(table) {
                r.remove(k);
            }
            inner
                .upserted
                .entry(table.to_string())
                .or_default()
                .remove(k);
            inner
                .deleted
                .entry(table.to_string())
                .or_default()
                .insert(*k);
        }
    }

    pub fn set_dense(&self, name: &str, values: Vec<f32>) {
        self.lock().dense.insert(name.to_string(), values);
    }

    pub fn set_progress(&self, p: TrainProgress) {
        self.lock().progress = p;
    }

    /// Keys currently marked changed in `table`.
    pub fn pending(&self, table: &str) -> usize {
        let g = self.lock();
        g.upserted.get(table).map_or(0, |s| s.len()) + g.deleted.get(table).map_or(0, |s| s.len())
    }
}

impl PublishSource for MemorySource {
    fn schema(&self) -> Result<ModelSchema> {
        Ok(self.lock().schema.clone())
    }

    fn take_changes(&self) -> Result<Vec<TableChanges>> {
        let mut g = self.lock();
        let up = std::mem::take(&mut g.upserted);
        let del = std::mem::take(&mut g.deleted);
        let tables: BTreeSet<String> = up.keys().chain(del.keys()).cloned().collect();
        Ok(tables
            .into_iter()
            .map(|t| TableChanges {
                upserted: up
                    .get(&t)
                    .map(|s| s.iter().map(|&k| FeatureId(k)).collect())
                    .unwrap_or_default(),
                deleted: del
                    .get(&t)
                    .map(|s| s.iter().map(|&k| FeatureId(k)).collect())
                    .unwrap_or_default(),
                table: t,
            })
            .collect())
    }

    fn restore_changes(&self, changes: &[TableChanges]) {
        let mut g = self.lock();
        for c in changes {
            g.upserted
                .entry(c.table.clone())
                .or_default()
                .extend(c.upserted.iter().map(|k| k.0));
            g.deleted
                .entry(c.table.clone())
                .or_default()
                .extend(c.deleted.iter().map(|k| k.0));
        }
    }

    fn read_rows(&self, table: &str, keys: &[FeatureId]) -> Result<(Vec<FeatureId>, Vec<f32>)> {
        let g = self.lock();
        let rows = g
            .rows
            .get(table)
            .ok_or_else(|| PublishError::Source(format!("unknown table {table}")))?;
        let mut present = Vec::new();
        let mut values = Vec::new();
        for k in keys {
            if let Some(r) = rows.get(&k.0) {
                present.push(*k);
                values.extend_from_slice(r);
            }
        }
        Ok((present, values))
    }

    fn dense_snapshot(&self) -> Result<Vec<(String, Vec<f32>)>> {
        Ok(self
            .lock()
            .dense
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn full_rows(&self) -> Result<Vec<RowSet>> {
        let g = self.lock();
        Ok(g.schema
            .tables
            .iter()
            .map(|t| {
                let rows = g.rows.get(&t.name);
                let mut set = RowSet {
                    table: t.name.clone(),
                    dim: t.dim,
                    ..Default::default()
                };
                for (k, v) in rows.into_iter().flatten() {
                    set.keys.push(*k);
                    set.values.extend_from_slice(v);
                }
                set
            })
            .collect())
    }

    fn progress(&self) -> TrainProgress {
        self.lock().progress.clone()
    }

    fn rebase(&self, checkpoint: &Path) -> Result<()> {
        Err(PublishError::Source(format!(
            "an in-memory source cannot load checkpoint {}",
            checkpoint.display()
        )))
    }
}
