//! [`LocalStore`]: the in-process parameter store. File mode and `odl run` hold one
//! directly; each `odl ps` shard serves one over gRPC. Thread-safe (`&self` everywhere):
//! sparse tables are split into lock shards, dense tensors share one lock.
//!
//! ## Hooks for the publisher (PUBLISH.md)
//! - [`LocalStore::take_changes`] / [`LocalStore::restore_changes`]: the rows upserted
//!   and deleted (evicted) since the previous take, per table; a skipped publish puts
//!   them back so they go out with the next one.
//! - [`LocalStore::read_rows`]: current weights of given keys (absent keys omitted —
//!   evicted since the take, so also in the deletions of a later take).
//! - [`LocalStore::dense_snapshot`]: every dense tensor's weights, taken under one lock.
//! - [`LocalStore::full_snapshot`]: every row of every table, one lock shard at a time
//!   (for full versions; rows keep changing while it runs, each chunk is consistent).
//! - [`LocalStore::samples_trained`], [`LocalStore::merged_progress`]: what the AUC
//!   gates read.
//!
//! Weights read through any of these are what a model uses (for FTRL: the closed-form
//! weight, not the `z`/`n` state).

use crate::dense::{self, DenseSet};
use crate::error::{PsError, Result};
use crate::optimizer;
use crate::progress::ProgressBoard;
use crate::routing::ShardId;
use crate::table::SparseTable;
use odl_proto::hashing::FeatureId;
use odl_proto::params::{
    self, DenseSpec, ModelSchema, ParamRead, ParamStore, TableSpec, TrainProgress,
};
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a store keeps rows. `Default`: no TTL, rows created on first push, 16 lock
/// shards per table, not part of a cluster.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Rows not updated for this long are evicted by [`LocalStore::evict_expired`].
    pub ttl: Option<Duration>,
    /// A row is created on the `min_count`-th push of its key (0 or 1: the first);
    /// gradients pushed before that are dropped. The sighting counters of keys without
    /// a row are dropped by the TTL sweep like rows (without a TTL they are kept).
    pub min_count: u32,
    /// Lock shards per sparse table (more: less contention, a little more memory).
    pub lock_shards: usize,
    /// When set, the store is one shard of a cluster: it rejects keys and dense
    /// tensors other shards own and keeps only its own dense tensors on declare.
    pub shard: Option<ShardId>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            ttl: None,
            min_count: 1,
            lock_shards: 16,
            shard: None,
        }
    }
}

/// The store's clock in whole seconds since it started: row ages for TTL. Tests can
/// drive it by hand.
enum Clock {
    System(Instant),
    Manual(AtomicU32),
}

impl Clock {
    fn now(&self) -> u32 {
        match self {
            // 31 bits of seconds (68 years) are kept per row.
            Clock::System(t0) => (t0.elapsed().as_secs() & 0x7fff_ffff) as u32,
            Clock::Manual(s) => s.load(Ordering::Relaxed),
        }
    }
}

/// Rows of one table: keys and their values row-major (`dim` floats per key for
/// weights; `record_len` for raw checkpoint records).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RowBatch {
    pub table: String,
    pub dim: usize,
    pub keys: Vec<FeatureId>,
    pub values: Vec<f32>,
}

/// One table's changes since the previous [`LocalStore::take_changes`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TableChanges {
    pub table: String,
    pub upserted: Vec<FeatureId>,
    pub deleted: Vec<FeatureId>,
}

/// Every table's changes; tables without changes are left out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    pub tables: Vec<TableChanges>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Upserted plus deleted keys over all tables.
    pub fn len(&self) -> usize {
        self.tables
            .iter()
            .map(|t| t.upserted.len() + t.deleted.len())
            .sum()
    }
}

/// Rows and bytes per table, for `/v1/shard` and memory reports.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct TableStats {
    pub name: String,
    pub dim: usize,
    pub rows: u64,
    pub heap_bytes: u64,
}

pub struct LocalStore {
    opts: StoreOptions,
    clock: Clock,
    tables: RwLock<BTreeMap<String, Arc<SparseTable>>>,
    dense: Mutex<DenseSet>,
    progress: Mutex<ProgressBoard>,
    /// Samples the loaded checkpoint had been trained on (0 without warm start).
    base_samples: AtomicU64,
    /// Held while a checkpoint is written: two saves (periodic, rebase, shutdown) must
    /// not share the `<dir>.tmp` staging directory.
    pub(crate) checkpoint_lock: Mutex<()>,
    /// Free-form strings saved with checkpoints (e.g. the trainer's model config), so a
    /// checkpoint is self-describing.
    attributes: Mutex<BTreeMap<String, String>>,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("options", &self.opts)
            .field("tables", &self.table_stats())
            .field("dense", &self.dense.lock().tensors.len())
            .finish()
    }
}

impl Default for LocalStore {
    fn default() -> Self {
        LocalStore::new(StoreOptions::default())
    }
}

impl LocalStore {
    pub fn new(opts: StoreOptions) -> Self {
        LocalStore {
            opts,
            clock: Clock::System(Instant::now()),
            tables: RwLock::new(BTreeMap::new()),
            dense: Mutex::new(DenseSet::default()),
            progress: Mutex::new(ProgressBoard::default()),
            base_samples: AtomicU64::new(0),
            checkpoint_lock: Mutex::new(()),
            attributes: Mutex::new(BTreeMap::new()),
        }
    }

    /// Replace everything this store holds with the checkpoint at `dir` (a rebase onto
    /// a fresh batch model while training goes on). The checkpoint is loaded aside into
    /// a store on the same clock, then its tables and dense tensors are swapped in, so a
    /// concurrent pull sees the old model or the new one, never a mix of old rows the new
    /// model does not have. Changes pending for the next sparse publish are dropped: the
    /// caller cuts a full version right after.
    pub fn replace_from(&self, dir: &std::path::Path) -> Result<crate::checkpoint::Manifest> {
        let fresh = LocalStore {
            clock: match &self.clock {
                Clock::System(t0) => Clock::System(*t0),
                Clock::Manual(s) => Clock::Manual(AtomicU32::new(s.load(Ordering::Relaxed))),
            },
            ..LocalStore::new(self.opts.clone())
        };
        let manifest = fresh.load_from(dir)?;
        let LocalStore { tables, dense, attributes, base_samples, .. } = fresh;
        *self.tables.write() = tables.into_inner();
        *self.dense.lock() = dense.into_inner();
        self.base_samples.store(base_samples.into_inner(), Ordering::Relaxed);
        for (k, v) in attributes.into_inner() {
            self.set_attribute(&k, &v);
        }
        Ok(manifest)
    }

    /// A store whose clock only moves through [`LocalStore::set_clock`] (TTL tests).
    pub fn with_manual_clock(opts: StoreOptions) -> Self {
        LocalStore {
            clock: Clock::Manual(AtomicU32::new(0)),
            ..LocalStore::new(opts)
        }
    }

    /// Sets a manual clock to `secs`; no effect on a system clock.
    pub fn set_clock(&self, secs: u32) {
        if let Clock::Manual(s) = &self.clock {
            s.store(secs & 0x7fff_ffff, Ordering::Relaxed);
        }
    }

    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    pub fn shard(&self) -> Option<ShardId> {
        self.opts.shard
    }

    /// The schema the store holds (tables and the dense tensors it owns).
    pub fn schema(&self) -> ModelSchema {
        ModelSchema {
            tables: self.tables.read().values().map(|t| t.spec()).collect(),
            dense: self
                .dense
                .lock()
                .tensors
                .values()
                .map(|t| t.spec.clone())
                .collect(),
        }
    }

    pub fn set_attribute(&self, key: &str, value: &str) {
        self.attributes
            .lock()
            .insert(key.to_string(), value.to_string());
    }

    pub fn attribute(&self, key: &str) -> Option<String> {
        self.attributes.lock().get(key).cloned()
    }

    pub(crate) fn attributes(&self) -> BTreeMap<String, String> {
        self.attributes.lock().clone()
    }

    pub(crate) fn base_samples(&self) -> u64 {
        self.base_samples.load(Ordering::Relaxed)
    }

    pub(crate) fn set_base_samples(&self, n: u64) {
        self.base_samples.store(n, Ordering::Relaxed);
    }

    pub(crate) fn now(&self) -> u32 {
        self.clock.now()
    }

    pub(crate) fn table(&self, name: &str) -> Result<Arc<SparseTable>> {
        self.tables
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| PsError::invalid(format!("unknown table {name:?}")))
    }

    pub(crate) fn with_dense<R>(&self, f: impl FnOnce(&mut DenseSet) -> R) -> R {
        f(&mut self.dense.lock())
    }

    fn check_keys(&self, keys: &[FeatureId]) -> Result<()> {
        if let Some(s) = self.opts.shard {
            if let Some(k) = keys.iter().find(|k| !s.owns_key(**k)) {
                let (lo, hi) = s.key_range();
                return Err(PsError::invalid(format!(
                    "key {} is not owned by shard {}/{} (owns {lo}..={hi})",
                    k.0, s.index, s.count
                )));
            }
        }
        Ok(())
    }

    fn validate_table_spec(t: &TableSpec) -> Result<()> {
        if t.name.is_empty() || t.dim == 0 || t.dim > 1 << 16 {
            return Err(PsError::invalid(format!(
                "table {:?}: needs a name and 1 <= dim <= 65536, got dim {}",
                t.name, t.dim
            )));
        }
        if !(t.init_std.is_finite() && t.init_std >= 0.0) {
            return Err(PsError::invalid(format!(
                "table {:?}: init_std must be finite and >= 0",
                t.name
            )));
        }
        optimizer::validate(&t.optimizer)
    }

    /// [`ParamStore::declare`] with the store's error type. Everything is validated
    /// before anything is created, so a bad schema changes nothing.
    pub fn declare_schema(&self, schema: &ModelSchema) -> Result<()> {
        let mut seen = HashSet::new();
        for t in &schema.tables {
            Self::validate_table_spec(t)?;
            if !seen.insert(("t", t.name.as_str())) {
                return Err(PsError::invalid(format!(
                    "table {:?} declared twice",
                    t.name
                )));
            }
        }
        for d in &schema.dense {
            dense::validate_spec(d)?;
            if !seen.insert(("d", d.name.as_str())) {
                return Err(PsError::invalid(format!(
                    "dense {:?} declared twice",
                    d.name
                )));
            }
        }
        let mine = |d: &&DenseSpec| self.opts.shard.is_none_or(|s| s.owns_dense(&d.name));
        {
            // Check against what exists before changing anything.
            let tables = self.tables.read();
            for t in &schema.tables {
                if let Some(held) = tables.get(&t.name) {
                    let h = held.spec();
                    if h.dim != t.dim || !optimizer::same_layout(&h.optimizer, &t.optimizer) {
                        return Err(PsError::invalid(format!(
                            "table {:?} exists with dim {} and {:?}; declared dim {} and {:?}",
                            t.name, h.dim, h.optimizer, t.dim, t.optimizer
                        )));
                    }
                }
            }
            let dense = self.dense.lock();
            for d in schema.dense.iter().filter(mine) {
                if let Some(h) = dense.tensors.get(&d.name) {
                    if h.len() != d.init.len()
                        || !optimizer::same_layout(&h.spec.optimizer, &d.optimizer)
                    {
                        return Err(PsError::invalid(format!(
                            "dense {:?} exists with shape {:?} and {:?}; declared {:?} and {:?}",
                            d.name, h.spec.shape, h.spec.optimizer, d.shape, d.optimizer
                        )));
                    }
                }
            }
        }
        let mut tables = self.tables.write();
        for t in &schema.tables {
            match tables.get(&t.name) {
                Some(held) => held.redeclare(t)?,
                None => {
                    tables.insert(
                        t.name.clone(),
                        Arc::new(SparseTable::new(t.clone(), self.opts.lock_shards)),
                    );
                }
            }
        }
        drop(tables);
        let mut dense = self.dense.lock();
        for d in schema.dense.iter().filter(mine) {
            dense.declare(d)?;
        }
        Ok(())
    }

    /// Creates a table from a checkpoint's spec (no validation against a declare).
    pub(crate) fn ensure_table(&self, spec: &TableSpec) -> Result<Arc<SparseTable>> {
        Self::validate_table_spec(spec)?;
        let mut tables = self.tables.write();
        if let Some(t) = tables.get(&spec.name) {
            t.redeclare(spec)?;
            return Ok(t.clone());
        }
        let t = Arc::new(SparseTable::new(spec.clone(), self.opts.lock_shards));
        tables.insert(spec.name.clone(), t.clone());
        Ok(t)
    }

    /// [`ParamRead::pull_sparse`] with the store's error type.
    pub fn pull_rows(&self, table: &str, keys: &[FeatureId], out: &mut [f32]) -> Result<()> {
        let t = self.table(table)?;
        let dim = t.dim();
        if out.len() != keys.len() * dim {
            return Err(PsError::invalid(format!(
                "table {table:?}: output has {} floats, {} keys of dim {dim} need {}",
                out.len(),
                keys.len(),
                keys.len() * dim
            )));
        }
        self.check_keys(keys)?;
        t.pull(keys, out);
        Ok(())
    }

    /// [`ParamStore::push_sparse`] with the store's error type. Lengths, finiteness
    /// and key ownership are checked for the whole batch before any row changes.
    pub fn push_rows(&self, table: &str, keys: &[FeatureId], grads: &[f32]) -> Result<()> {
        let t = self.table(table)?;
        let dim = t.dim();
        if grads.len() != keys.len() * dim {
            return Err(PsError::invalid(format!(
                "table {table:?}: {} gradient floats for {} keys of dim {dim} (need {})",
                grads.len(),
                keys.len(),
                keys.len() * dim
            )));
        }
        if let Some(i) = grads.iter().position(|g| !g.is_finite()) {
            return Err(PsError::invalid(format!(
                "table {table:?}: gradient of key {} is not finite ({}); batch rejected",
                keys[i / dim].0,
                grads[i]
            )));
        }
        self.check_keys(keys)?;
        let refused = t.push(keys, grads, self.now(), self.opts.min_count);
        if refused > 0 {
            return Err(PsError::invalid(format!(
                "table {table:?}: {refused} rows refused an update that would overflow; \
                 those rows are unchanged"
            )));
        }
        Ok(())
    }

    /// [`ParamRead::pull_dense`] with the store's error type.
    pub fn pull_dense_tensors(&self, names: &[String]) -> Result<Vec<Vec<f32>>> {
        let d = self.dense.lock();
        names
            .iter()
            .map(|n| d.get(n).map(|t| t.weights()))
            .collect()
    }

    /// [`ParamStore::push_dense`] with the store's error type.
    pub fn push_dense_grads(&self, grads: &[(String, Vec<f32>)]) -> Result<()> {
        self.dense.lock().push(grads)
    }

    /// Keeps `worker`'s latest progress report.
    pub fn report_progress_from(&self, worker: &str, p: &TrainProgress) {
        self.progress.lock().report(worker, p);
    }

    /// Workers that have reported progress.
    pub fn workers(&self) -> usize {
        self.progress.lock().workers()
    }

    /// Every worker's latest report merged (sample-weighted AUCs, summed counts).
    pub fn merged_progress(&self) -> TrainProgress {
        self.progress.lock().merged()
    }

    /// Samples trained since this store started (warm start excluded), summed over
    /// the workers' latest reports.
    pub fn samples_trained(&self) -> u64 {
        self.progress.lock().merged().samples
    }

    /// Samples of the warm-start checkpoint plus those trained since.
    pub fn total_samples(&self) -> u64 {
        self.base_samples.load(Ordering::Relaxed) + self.samples_trained()
    }

    /// Evicts rows not updated within the configured TTL (no-op without one); evicted
    /// rows become deletions in the next [`LocalStore::take_changes`].
    pub fn evict_expired(&self) -> usize {
        match self.opts.ttl {
            Some(ttl) => self.evict_idle(ttl),
            None => 0,
        }
    }

    /// Evicts rows idle for at least `idle` (whole seconds).
    pub fn evict_idle(&self, idle: Duration) -> usize {
        let now = self.now();
        let idle = idle.as_secs().min(u32::MAX as u64) as u32;
        // Evict when `now - last >= idle`, i.e. `last < now - idle + 1`.
        let cutoff = if now >= idle { now - idle + 1 } else { 0 };
        let tables: Vec<_> = self.tables.read().values().cloned().collect();
        tables.iter().map(|t| t.evict_before(cutoff)).sum()
    }

    /// Rows upserted and deleted since the previous call, per table; clears them.
    pub fn take_changes(&self) -> Changes {
        let tables: Vec<_> = self
            .tables
            .read()
            .iter()
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        let mut out = Changes::default();
        for (name, t) in tables {
            let (upserted, deleted) = t.take_changes();
            if !upserted.is_empty() || !deleted.is_empty() {
                out.tables.push(TableChanges {
                    table: name,
                    upserted,
                    deleted,
                });
            }
        }
        out
    }

    /// Puts back changes taken but not published (a skipped publish).
    pub fn restore_changes(&self, changes: Changes) {
        for c in changes.tables {
            if let Ok(t) = self.table(&c.table) {
                t.restore_changes(&c.upserted, &c.deleted);
            }
        }
    }

    /// Current weights of those `keys` that have a row in `table`.
    pub fn read_rows(&self, table: &str, keys: &[FeatureId]) -> Result<RowBatch> {
        let t = self.table(table)?;
        let (keys, values) = t.read_present(keys);
        Ok(RowBatch {
            table: table.to_string(),
            dim: t.dim(),
            keys,
            values,
        })
    }

    /// Every dense tensor's weights, taken under one lock (consistent across tensors).
    pub fn dense_snapshot(&self) -> Vec<(String, Vec<f32>)> {
        self.dense
            .lock()
            .tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.weights()))
            .collect()
    }

    /// Every row of every table as weights, one lock shard per item.
    pub fn full_snapshot(&self) -> impl Iterator<Item = RowBatch> + '_ {
        self.chunks(false)
    }

    /// Chunks of rows per lock shard: weights, or raw records (`raw`) for checkpoints.
    pub(crate) fn chunks(&self, raw: bool) -> impl Iterator<Item = RowBatch> + '_ {
        let tables: Vec<_> = self
            .tables
            .read()
            .iter()
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        tables.into_iter().flat_map(move |(name, t)| {
            (0..t.lock_shards()).map(move |i| {
                let (keys, values) = t.copy_shard(i, raw);
                RowBatch {
                    table: name.clone(),
                    dim: if raw { t.record_len() } else { t.dim() },
                    keys,
                    values,
                }
            })
        })
    }

    /// Rows and heap bytes per table.
    pub fn table_stats(&self) -> Vec<TableStats> {
        self.tables
            .read()
            .iter()
            .map(|(n, t)| TableStats {
                name: n.clone(),
                dim: t.dim(),
                rows: t.rows() as u64,
                heap_bytes: t.heap_bytes() as u64,
            })
            .collect()
    }

    /// Heap bytes of all tables and dense tensors.
    pub fn heap_bytes(&self) -> u64 {
        let sparse: u64 = self.table_stats().iter().map(|t| t.heap_bytes).sum();
        let dense: usize = self
            .dense
            .lock()
            .tensors
            .values()
            .map(|t| t.record.capacity() * 4)
            .sum();
        sparse + dense as u64
    }
}

impl ParamRead for LocalStore {
    fn pull_sparse(&self, table: &str, keys: &[FeatureId], out: &mut [f32]) -> params::Result<()> {
        Ok(self.pull_rows(table, keys, out)?)
    }

    fn pull_dense(&self, names: &[String]) -> params::Result<Vec<Vec<f32>>> {
        Ok(self.pull_dense_tensors(names)?)
    }
}

impl ParamStore for LocalStore {
    fn declare(&self, schema: &ModelSchema) -> params::Result<()> {
        Ok(self.declare_schema(schema)?)
    }

    fn push_sparse(&self, table: &str, keys: &[FeatureId], grads: &[f32]) -> params::Result<()> {
        Ok(self.push_rows(table, keys, grads)?)
    }

    fn push_dense(&self, grads: &[(String, Vec<f32>)]) -> params::Result<()> {
        Ok(self.push_dense_grads(grads)?)
    }

    /// In-process there is one worker; reports are kept under the name "local".
    fn report_progress(&self, progress: &TrainProgress) -> params::Result<()> {
        self.report_progress_from("local", progress);
        Ok(())
    }
}
