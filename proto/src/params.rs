//! The parameter-store trait: what a trainer needs from a parameter server, with a local
//! (in-process, `odl_ps::LocalStore`) and a remote (gRPC, `odl_ps::RemoteStore`) side.
//! File mode, `odl run` and the cluster differ only in which one the trainer holds.
//!
//! Optimizer state lives with the parameters on the PS: a trainer computes gradients
//! and pushes them; the store applies the table's optimizer. So the optimizer choice is
//! part of the schema a trainer declares.

use crate::hashing::FeatureId;
use serde::{Deserialize, Serialize};

/// How a table's rows or a dense tensor learn from pushed gradients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Optimizer {
    /// Per-coordinate learning rates from accumulated squared gradients (the default).
    Adagrad { lr: f32, initial_accumulator: f32 },
    Adam { lr: f32, beta1: f32, beta2: f32, eps: f32 },
    /// FTRL-proximal (McMahan et al. 2013); weights are derived from `z` and `n` state.
    Ftrl { alpha: f32, beta: f32, l1: f32, l2: f32 },
}

/// A sparse embedding table: rows of `dim` floats keyed by [`FeatureId`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableSpec {
    pub name: String,
    pub dim: usize,
    pub optimizer: Optimizer,
    /// New rows start as N(0, init_std²), drawn deterministically from the key, so the
    /// same unseen key gets the same row in every process (trainer, PS, serving).
    pub init_std: f32,
}

/// A dense tensor (flattened), with its initial value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DenseSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub optimizer: Optimizer,
    /// Used only when the store does not hold the tensor yet (no warm start, no
    /// earlier worker).
    pub init: Vec<f32>,
}

/// Everything a model keeps on the parameter server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelSchema {
    pub tables: Vec<TableSpec>,
    pub dense: Vec<DenseSpec>,
}

/// Streaming-evaluation figures a trainer reports so the publisher's AUC gates can
/// read them (PUBLISH.md).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainProgress {
    /// Samples trained since warm start by the reporting worker.
    pub samples: u64,
    pub tasks: Vec<TaskProgress>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskProgress {
    pub task: String,
    pub samples: u64,
    pub global_auc: f64,
    pub current_auc: f64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ParamError {
    /// The request itself is wrong (unknown table, wrong dimension, non-finite value);
    /// retrying it cannot help.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The store could not be reached or is restarting; retry with backoff.
    #[error("parameter server unavailable: {0}")]
    Unavailable(String),
    #[error("parameter server failed: {0}")]
    Internal(String),
}

impl ParamError {
    pub fn retryable(&self) -> bool {
        matches!(self, ParamError::Unavailable(_))
    }
}

pub type Result<T> = std::result::Result<T, ParamError>;

/// Reading parameters: what a forward pass needs. The trainer reads through its
/// [`ParamStore`]; a serving node reads from the version it applied. One model code
/// path runs on either, so a served prediction equals the trainer's.
pub trait ParamRead: Send + Sync {
    /// The rows of `keys` in `table`, row-major into `out` (`keys.len() * dim`). A row
    /// the store does not hold reads as its deterministic initial value ([`init_row`]).
    fn pull_sparse(&self, table: &str, keys: &[FeatureId], out: &mut [f32]) -> Result<()>;

    /// The current values of the named dense tensors, in the order asked.
    fn pull_dense(&self, names: &[String]) -> Result<Vec<Vec<f32>>>;
}

/// What a trainer worker needs from the parameter server. Implementations are shared
/// between threads (`&self`); each call is one batch.
pub trait ParamStore: ParamRead {
    /// Make sure every table and dense tensor of `schema` exists. Idempotent: what the
    /// store already holds (warm start, another worker) is kept, but must match the
    /// declared shapes.
    fn declare(&self, schema: &ModelSchema) -> Result<()>;

    /// Apply one gradient row per key (`keys` unique, `grads.len() == keys.len() * dim`).
    fn push_sparse(&self, table: &str, keys: &[FeatureId], grads: &[f32]) -> Result<()>;

    /// Apply gradients to dense tensors, by name.
    fn push_dense(&self, grads: &[(String, Vec<f32>)]) -> Result<()>;

    /// Streaming AUC and sample counts from a worker, read by the publisher's gates.
    fn report_progress(&self, progress: &TrainProgress) -> Result<()>;
}

/// The deterministic initial value of a sparse row: N(0, std²) per coordinate, drawn
/// from a generator seeded by the key, so every process agrees on an unseen row.
pub fn init_row(key: FeatureId, std: f32, out: &mut [f32]) {
    if std == 0.0 {
        out.fill(0.0);
        return;
    }
    // splitmix64 stream seeded by the key; Box-Muller for normals.
    let mut state = key.0 ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let unit = |x: u64| ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    for pair in out.chunks_mut(2) {
        let (u1, u2) = (unit(next()), unit(next()));
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        pair[0] = (r * t.cos()) as f32 * std;
        if pair.len() > 1 {
            pair[1] = (r * t.sin()) as f32 * std;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_row_is_deterministic_and_scaled() {
        let mut a = [0f32; 16];
        let mut b = [0f32; 16];
        init_row(FeatureId(42), 0.01, &mut a);
        init_row(FeatureId(42), 0.01, &mut b);
        assert_eq!(a, b);
        let mut c = [0f32; 16];
        init_row(FeatureId(43), 0.01, &mut c);
        assert_ne!(a, c);
        assert!(a.iter().all(|x| x.abs() < 0.1));
        let mut big = vec![0f32; 100_000];
        init_row(FeatureId(7), 1.0, &mut big);
        let mean = big.iter().map(|&x| x as f64).sum::<f64>() / big.len() as f64;
        let var = big.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / big.len() as f64;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.03, "var {var}");
    }
}
