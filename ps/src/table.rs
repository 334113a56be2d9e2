//! A sparse embedding table: rows keyed by feature id, split over lock shards so
//! trainer threads pushing different keys rarely wait on each other.

use crate::error::{PsError, Result};
use crate::optimizer;
use crate::rows::{mix, RowShard, Upsert};
use odl_proto::hashing::FeatureId;
use odl_proto::params::{init_row, Optimizer, TableSpec};
use parking_lot::{Mutex, RwLock};

pub struct SparseTable {
    /// The declared spec; hyperparameters may change on re-declare, the layout not.
    spec: RwLock<TableSpec>,
    record_len: usize,
    shards: Vec<Mutex<RowShard>>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

impl SparseTable {
    pub fn new(spec: TableSpec, lock_shards: usize) -> Self {
        let record_len = optimizer::record_len(&spec.optimizer, spec.dim);
        SparseTable {
            spec: RwLock::new(spec),
            record_len,
            shards: (0..lock_shards.max(1))
                .map(|_| Mutex::new(RowShard::new(record_len)))
                .collect(),
        }
    }

    pub fn spec(&self) -> TableSpec {
        self.spec.read().clone()
    }

    pub fn dim(&self) -> usize {
        self.spec.read().dim
    }

    pub fn record_len(&self) -> usize {
        self.record_len
    }

    pub fn lock_shards(&self) -> usize {
        self.shards.len()
    }

    /// Replaces hyperparameters after checking the layout is unchanged.
    pub fn redeclare(&self, spec: &TableSpec) -> Result<()> {
        let mut cur = self.spec.write();
        if cur.dim != spec.dim || !optimizer::same_layout(&cur.optimizer, &spec.optimizer) {
            return Err(PsError::invalid(format!(
                "table {:?} exists with dim {} and {:?}; declared dim {} and {:?}",
                spec.name, cur.dim, cur.optimizer, spec.dim, spec.optimizer
            )));
        }
        *cur = spec.clone();
        Ok(())
    }

    #[inline]
    fn shard(&self, key: u64) -> &Mutex<RowShard> {
        // High bits of the mixed key: hashbrown uses the low bits and the top 7.
        let i = ((mix(key) >> 32) as usize) % self.shards.len();
        &self.shards[i]
    }

    /// Pulls weights into `out` (`keys.len() * dim`, checked by the caller).
    pub fn pull(&self, keys: &[FeatureId], out: &mut [f32]) {
        let (opt, dim, std) = {
            let s = self.spec.read();
            (s.optimizer.clone(), s.dim, s.init_std)
        };
        for (k, o) in keys.iter().zip(out.chunks_exact_mut(dim)) {
            let sh = self.shard(k.0).lock();
            match sh.get(k.0) {
                Some(rec) => optimizer::read_weights(&opt, rec, o),
                None => {
                    drop(sh);
                    init_row(*k, std, o);
                }
            }
        }
    }

    /// Applies gradients (already validated: lengths, finiteness). Returns how many
    /// rows refused their update because the result would overflow.
    pub fn push(&self, keys: &[FeatureId], grads: &[f32], now: u32, min_count: u32) -> usize {
        let (opt, dim, std): (Optimizer, usize, f32) = {
            let s = self.spec.read();
            (s.optimizer.clone(), s.dim, s.init_std)
        };
        let mut refused = 0;
        SCRATCH.with(|cell| {
            let (scratch, init) = &mut *cell.borrow_mut();
            init.resize(dim, 0.0);
            for (k, g) in keys.iter().zip(grads.chunks_exact(dim)) {
                let mut sh = self.shard(k.0).lock();
                let make = |rec: &mut [f32]| {
                    init_row(*k, std, init);
                    optimizer::init_record(&opt, init, rec);
                };
                match sh.upsert(k.0, now, min_count, make, scratch) {
                    Upsert::Row(rec) => {
                        if !optimizer::apply(&opt, rec, g, scratch) {
                            refused += 1;
                        }
                    }
                    Upsert::Pending => {}
                }
            }
        });
        refused
    }

    /// Raw records (weights and optimizer state) of present keys; for checkpoints.
    pub fn insert_records(&self, keys: &[u64], records: &[f32], now: u32) {
        for (k, r) in keys.iter().zip(records.chunks_exact(self.record_len)) {
            self.shard(*k).lock().insert_clean(*k, r, now);
        }
    }

    /// The weights of those `keys` that have a row: (present keys, weights row-major).
    pub fn read_present(&self, keys: &[FeatureId]) -> (Vec<FeatureId>, Vec<f32>) {
        let (opt, dim) = {
            let s = self.spec.read();
            (s.optimizer.clone(), s.dim)
        };
        let mut present = Vec::with_capacity(keys.len());
        let mut values = Vec::with_capacity(keys.len() * dim);
        for k in keys {
            let sh = self.shard(k.0).lock();
            if let Some(rec) = sh.get(k.0) {
                let at = values.len();
                values.resize(at + dim, 0.0);
                optimizer::read_weights(&opt, rec, &mut values[at..]);
                present.push(*k);
            }
        }
        (present, values)
    }

    /// Lock shard `i`'s rows: keys and weights (`raw == false`) or whole records.
    pub fn copy_shard(&self, i: usize, raw: bool) -> (Vec<FeatureId>, Vec<f32>) {
        let (opt, dim) = {
            let s = self.spec.read();
            (s.optimizer.clone(), s.dim)
        };
        let sh = self.shards[i].lock();
        let width = if raw { self.record_len } else { dim };
        let mut keys = Vec::with_capacity(sh.len());
        let mut values = vec![0.0; sh.len() * width];
        let mut at = 0;
        sh.for_each(|k, rec| {
            keys.push(FeatureId(k));
            let out = &mut values[at..at + width];
            if raw {
                out.copy_from_slice(rec);
            } else {
                optimizer::read_weights(&opt, rec, out);
            }
            at += width;
        });
        (keys, values)
    }

    /// Lock shard `i`'s pending sightings (keys below `min_count`), for checkpoints.
    pub fn copy_pending(&self, i: usize) -> Vec<(u64, u32)> {
        self.shards[i].lock().pending_counts().collect()
    }

    pub fn insert_pending(&self, pending: &[(u64, u32)], now: u32) {
        for &(k, n) in pending {
            self.shard(k).lock().insert_pending(k, n, now);
        }
    }

    pub fn evict_before(&self, cutoff: u32) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().evict_before(cutoff))
            .sum()
    }

    pub fn take_changes(&self) -> (Vec<FeatureId>, Vec<FeatureId>) {
        let (mut up, mut del) = (Vec::new(), Vec::new());
        for s in &self.shards {
            s.lock().take_changes(&mut up, &mut del);
        }
        (
            up.into_iter().map(FeatureId).collect(),
            del.into_iter().map(FeatureId).collect(),
        )
    }

    pub fn restore_changes(&self, upserted: &[FeatureId], deleted: &[FeatureId]) {
        let n = self.shards.len();
        let mut per: Vec<(Vec<u64>, Vec<u64>)> = vec![(Vec::new(), Vec::new()); n];
        let idx = |k: u64| ((mix(k) >> 32) as usize) % n;
        for k in upserted {
            per[idx(k.0)].0.push(k.0);
        }
        for k in deleted {
            per[idx(k.0)].1.push(k.0);
        }
        for (s, (u, d)) in self.shards.iter().zip(per) {
            s.lock().restore_changes(&u, &d);
        }
    }

    pub fn rows(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn heap_bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().heap_bytes()).sum()
    }
}
