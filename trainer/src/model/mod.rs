//! The models (`lr`, `deepfm`, `mmoe`) behind one type, [`Model`], whose forward pass is
//! the one code path of training, evaluation and serving: a serving node builds the
//! model from the checkpoint's config and calls [`Model::predict`] on the `features`
//! objects of its requests with the parameters of the version it applied.
//!
//! One training step: collect the batch's unique keys (done by the featurizer) →
//! `pull_sparse` per table (+ dense tensors, possibly cached for a staleness bound) →
//! forward → predictions (recorded by the caller before learning) → backward → one
//! gradient row per unique key → `push_sparse` / `push_dense`. The optimizers run on
//! the parameter store.

mod deepfm;
mod lr;
mod mmoe;

use crate::config::{ModelConfig, ModelKind, OptimizerConfig};
use crate::error::{Result, TrainError};
use crate::features::{Batch, BatchBuilder, Featurizer};
use crate::nn::{init_values, loss_grad, Grads, Init, Linear, Params};
use odl_proto::params::{DenseSpec, ModelSchema, ParamRead, ParamStore, TableSpec};
use std::sync::Arc;

/// Registers a model's tables and dense tensors (with deterministic initial values)
/// and hands back their indices in [`Params`].
pub(crate) struct SchemaBuilder {
    schema: ModelSchema,
    seed: u64,
}

impl SchemaBuilder {
    fn table(&mut self, name: &str, dim: usize, opt: &OptimizerConfig, init_std: f32) -> usize {
        self.schema.tables.push(TableSpec {
            name: name.to_string(),
            dim,
            optimizer: opt.to_optimizer(),
            init_std,
        });
        self.schema.tables.len() - 1
    }

    fn tensor(
        &mut self,
        name: &str,
        shape: Vec<usize>,
        init: Init,
        opt: &OptimizerConfig,
    ) -> usize {
        let (fan_in, fan_out) = match shape[..] {
            [a, b] => (a, b),
            [a] => (1, a),
            _ => (1, shape.iter().product()),
        };
        let init = init_values(self.seed, name, fan_in, fan_out, init);
        self.schema.dense.push(DenseSpec {
            name: name.to_string(),
            shape,
            optimizer: opt.to_optimizer(),
            init,
        });
        self.schema.dense.len() - 1
    }

    fn linear(
        &mut self,
        name: &str,
        n_in: usize,
        n_out: usize,
        init: Init,
        opt: &OptimizerConfig,
    ) -> Linear {
        let w = self.tensor(&format!("{name}.w"), vec![n_in, n_out], init, opt);
        let b = self.tensor(&format!("{name}.b"), vec![n_out], Init::Zeros, opt);
        Linear { w, b, n_in, n_out }
    }
}

enum Net {
    Lr(lr::Lr),
    DeepFm(deepfm::DeepFm),
    Mmoe(mmoe::Mmoe),
}

/// The gradient of the loss with respect to each task's logits, given the logits.
pub(crate) type LossGrad<'a> = &'a dyn Fn(&[Vec<f32>]) -> Vec<Vec<f32>>;

/// A configured model: featurizer, network and the schema it keeps on the store.
pub struct Model {
    cfg: ModelConfig,
    fz: Featurizer,
    net: Net,
    schema: ModelSchema,
    dense_names: Vec<String>,
    /// Whether the loss is averaged over a batch (networks) or summed (lr, FTRL).
    mean_loss: bool,
}

impl Model {
    /// Build from a config whose field list is resolved (non-empty).
    pub fn from_config(cfg: &ModelConfig) -> Result<Model> {
        cfg.validate()?;
        let fz = Featurizer::new(cfg)?;
        let mut sb = SchemaBuilder {
            schema: ModelSchema::default(),
            seed: cfg.seed,
        };
        let n_tasks = fz.tasks().len();
        let (n_sparse, n_dense) = (fz.sparse_fields().len(), fz.dense_fields().len());
        let net = match cfg.model {
            ModelKind::Lr => Net::Lr(lr::Lr::new(&mut sb, cfg, fz.tasks(), n_dense)),
            ModelKind::Deepfm => Net::DeepFm(deepfm::DeepFm::new(&mut sb, cfg, n_sparse, n_dense)),
            ModelKind::Mmoe => {
                Net::Mmoe(mmoe::Mmoe::new(&mut sb, cfg, fz.tasks(), n_sparse, n_dense))
            }
        };
        debug_assert!(n_tasks > 0);
        let schema = sb.schema;
        let dense_names = schema.dense.iter().map(|d| d.name.clone()).collect();
        Ok(Model {
            cfg: cfg.clone(),
            fz,
            net,
            schema,
            dense_names,
            mean_loss: cfg.model != ModelKind::Lr,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    pub fn featurizer(&self) -> &Featurizer {
        &self.fz
    }
    /// The tasks this model predicts, in the order of every per-task vector it returns.
    pub fn tasks(&self) -> &[String] {
        self.fz.tasks()
    }
    pub fn schema(&self) -> &ModelSchema {
        &self.schema
    }
    pub fn batch_builder(&self) -> BatchBuilder<'_> {
        BatchBuilder::new(&self.fz)
    }

    /// All dense tensors from `store`, checked against the schema's shapes.
    pub fn pull_dense(&self, store: &dyn ParamRead) -> Result<Arc<Vec<Vec<f32>>>> {
        let dense = store.pull_dense(&self.dense_names)?;
        if dense.len() != self.schema.dense.len() {
            return Err(TrainError::Shape(format!(
                "asked for {} dense tensors, got {}",
                self.schema.dense.len(),
                dense.len()
            )));
        }
        for (d, spec) in dense.iter().zip(&self.schema.dense) {
            if d.len() != spec.init.len() {
                return Err(TrainError::Shape(format!(
                    "dense `{}` has {} values, the model needs {}",
                    spec.name,
                    d.len(),
                    spec.init.len()
                )));
            }
        }
        Ok(Arc::new(dense))
    }

    /// The batch's parameters: its rows of every table, and the dense tensors (pulled
    /// now, or `dense` when the caller caches them under a staleness bound).
    pub fn pull(
        &self,
        store: &dyn ParamRead,
        batch: &Batch,
        dense: Option<Arc<Vec<Vec<f32>>>>,
    ) -> Result<Params> {
        let mut tables = Vec::with_capacity(self.schema.tables.len());
        for t in &self.schema.tables {
            let mut rows = vec![0f32; batch.keys.len() * t.dim];
            if !batch.keys.is_empty() {
                store.pull_sparse(&t.name, &batch.keys, &mut rows)?;
            }
            tables.push(rows);
        }
        let dense = match dense {
            Some(d) => d,
            None => self.pull_dense(store)?,
        };
        Ok(Params { tables, dense })
    }

    fn run(
        &self,
        batch: &Batch,
        p: &Params,
        dloss: Option<LossGrad>,
    ) -> Result<(Vec<Vec<f32>>, Option<Grads>)> {
        match &self.net {
            Net::Lr(n) => n.run(batch, p, dloss),
            Net::DeepFm(n) => n.run(batch, p, dloss),
            Net::Mmoe(n) => n.run(batch, p, dloss),
        }
    }

    /// Raw logits per task (no clamp): the function the gradient checks differentiate.
    pub fn logits(&self, batch: &Batch, p: &Params) -> Result<Vec<Vec<f32>>> {
        Ok(self.run(batch, p, None)?.0)
    }

    /// Predictions per task (`[task][sample]`), from already pulled parameters.
    pub fn predict_params(&self, batch: &Batch, p: &Params) -> Result<Vec<Vec<f32>>> {
        let logits = self.logits(batch, p)?;
        Ok(loss_grad(batch, &logits, self.cfg.logit_clamp, self.mean_loss).0)
    }

    /// Predictions per task (`[task][sample]`) for a featurized batch.
    pub fn predict_batch(&self, params: &dyn ParamRead, batch: &Batch) -> Result<Vec<Vec<f32>>> {
        if batch.len == 0 {
            return Ok(vec![Vec::new(); self.tasks().len()]);
        }
        let p = self.pull(params, batch, None)?;
        self.predict_params(batch, &p)
    }

    /// The serving entry point: one score per task (in [`tasks`](Self::tasks) order)
    /// for each instance, an instance being a sample's `features` object (labels, if
    /// present, are ignored like in training). Returns `[instance][task]`.
    pub fn predict(
        &self,
        params: &dyn ParamRead,
        instances: &[serde_json::Value],
    ) -> Result<Vec<Vec<f32>>> {
        let mut b = self.batch_builder();
        for inst in instances {
            b.push_features_value(inst)?;
        }
        let batch = b.take();
        let per_task = self.predict_batch(params, &batch)?;
        Ok((0..batch.len)
            .map(|i| per_task.iter().map(|t| t[i]).collect())
            .collect())
    }

    /// Forward and backward on pulled parameters: predictions (`[task][sample]`, made
    /// before any update) and the gradients.
    pub fn gradients(&self, batch: &Batch, p: &Params) -> Result<(Vec<Vec<f32>>, Grads)> {
        let preds = std::cell::RefCell::new(Vec::new());
        let (clamp, mean) = (self.cfg.logit_clamp, self.mean_loss);
        let dloss = |logits: &[Vec<f32>]| {
            let (p, g) = loss_grad(batch, logits, clamp, mean);
            *preds.borrow_mut() = p;
            g
        };
        let (_, grads) = self.run(batch, p, Some(&dloss))?;
        let grads =
            grads.ok_or_else(|| TrainError::Shape("backward produced no gradients".into()))?;
        Ok((preds.into_inner(), grads))
    }

    /// Send a batch's gradients to the store (one row per unique key per table).
    pub fn push(&self, store: &dyn ParamStore, batch: &Batch, grads: Grads) -> Result<()> {
        self.push_sparse(store, batch, &grads.tables)?;
        self.push_dense(store, &grads.dense)
    }

    /// Send a batch's sparse gradients (`grads.tables`) to the store.
    pub fn push_sparse(
        &self,
        store: &dyn ParamStore,
        batch: &Batch,
        tables: &[Vec<f32>],
    ) -> Result<()> {
        for (spec, g) in self.schema.tables.iter().zip(tables) {
            if !batch.keys.is_empty() {
                store.push_sparse(&spec.name, &batch.keys, g)?;
            }
        }
        Ok(())
    }

    /// Send dense gradients (one per tensor, in schema order) to the store.
    pub fn push_dense(&self, store: &dyn ParamStore, dense: &[Vec<f32>]) -> Result<()> {
        let dense: Vec<(String, Vec<f32>)> = self
            .dense_names
            .iter()
            .cloned()
            .zip(dense.iter().cloned())
            .collect();
        store.push_dense(&dense)?;
        Ok(())
    }

    /// One training step; returns the predictions made before learning.
    pub fn train_batch(
        &self,
        store: &dyn ParamStore,
        batch: &Batch,
        dense: Option<Arc<Vec<Vec<f32>>>>,
    ) -> Result<Vec<Vec<f32>>> {
        if batch.len == 0 {
            return Ok(vec![Vec::new(); self.tasks().len()]);
        }
        let p = self.pull(store, batch, dense)?;
        let (preds, grads) = self.gradients(batch, &p)?;
        self.push(store, batch, grads)?;
        Ok(preds)
    }

    /// The loss [`gradients`](Self::gradients) differentiates, in f64 (for tests).
    pub fn loss(&self, batch: &Batch, p: &Params) -> Result<f64> {
        let logits = self.logits(batch, p)?;
        Ok(crate::nn::loss_value(batch, &logits, self.mean_loss))
    }
}

#[cfg(test)]
mod tests;
