//! A tiny in-memory parameter store for unit tests: plain Adagrad on everything.
//! The real stores live in odl-ps; this one only lets the models learn in tests
//! without depending on them.

use odl_proto::hashing::FeatureId;
use odl_proto::params::{
    init_row, ModelSchema, ParamError, ParamRead, ParamStore, Result, TrainProgress,
};
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    schema: ModelSchema,
    rows: HashMap<(String, u64), (Vec<f32>, Vec<f32>)>,
    dense: HashMap<String, (Vec<f32>, Vec<f32>)>,
}

fn lr_of(o: &odl_proto::params::Optimizer) -> f32 {
    match o {
        odl_proto::params::Optimizer::Adagrad { lr, .. }
        | odl_proto::params::Optimizer::Adam { lr, .. } => *lr,
        odl_proto::params::Optimizer::Ftrl { alpha, .. } => *alpha,
    }
}

fn adagrad(w: &mut [f32], acc: &mut [f32], g: &[f32], lr: f32) {
    for ((w, a), g) in w.iter_mut().zip(acc.iter_mut()).zip(g) {
        *a += g * g;
        *w -= lr * g / (a.sqrt() + 1e-8);
    }
}

impl ParamRead for MemStore {
    fn pull_sparse(&self, table: &str, keys: &[FeatureId], out: &mut [f32]) -> Result<()> {
        let inner = self
            .inner
            .lock()
            .map_err(|_| ParamError::Internal("poisoned".into()))?;
        let spec = inner
            .schema
            .tables
            .iter()
            .find(|t| t.name == table)
            .ok_or_else(|| ParamError::Invalid(table.into()))?;
        for (k, o) in keys.iter().zip(out.chunks_mut(spec.dim)) {
            match inner.rows.get(&(table.to_string(), k.0)) {
                Some((w, _)) => o.copy_from_slice(w),
                None => init_row(*k, spec.init_std, o),
            }
        }
        Ok(())
    }
    fn pull_dense(&self, names: &[String]) -> Result<Vec<Vec<f32>>> {
        let inner = self
            .inner
            .lock()
            .map_err(|_| ParamError::Internal("poisoned".into()))?;
        names
            .iter()
            .map(|n| {
                inner
                    .dense
                    .get(n)
                    .map(|d| d.0.clone())
                    .ok_or_else(|| ParamError::Invalid(n.clone()))
            })
            .collect()
    }
}

impl ParamStore for MemStore {
    fn declare(&self, schema: &ModelSchema) -> Result<()> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| ParamError::Internal("poisoned".into()))?;
        for d in &schema.dense {
            inner
                .dense
                .entry(d.name.clone())
                .or_insert_with(|| (d.init.clone(), vec![0.0; d.init.len()]));
        }
        inner.schema = schema.clone();
        Ok(())
    }
    fn push_sparse(&self, table: &str, keys: &[FeatureId], grads: &[f32]) -> Result<()> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| ParamError::Internal("poisoned".into()))?;
        let spec = inner
            .schema
            .tables
            .iter()
            .find(|t| t.name == table)
            .cloned()
            .ok_or_else(|| ParamError::Invalid(table.into()))?;
        let lr = lr_of(&spec.optimizer);
        for (k, g) in keys.iter().zip(grads.chunks(spec.dim)) {
            let (w, a) = inner
                .rows
                .entry((table.to_string(), k.0))
                .or_insert_with(|| {
                    let mut w = vec![0.0; spec.dim];
                    init_row(*k, spec.init_std, &mut w);
                    (w, vec![0.0; spec.dim])
                });
            adagrad(w, a, g, lr);
        }
        Ok(())
    }
    fn push_dense(&self, grads: &[(String, Vec<f32>)]) -> Result<()> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| ParamError::Internal("poisoned".into()))?;
        for (n, g) in grads {
            let lr = inner
                .schema
                .dense
                .iter()
                .find(|d| &d.name == n)
                .map(|d| lr_of(&d.optimizer))
                .unwrap_or(0.01);
            let (w, a) = inner
                .dense
                .get_mut(n)
                .ok_or_else(|| ParamError::Invalid(n.clone()))?;
            adagrad(w, a, g, lr);
        }
        Ok(())
    }
    fn report_progress(&self, _: &TrainProgress) -> Result<()> {
        Ok(())
    }
}
