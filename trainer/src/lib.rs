//! Trainer workers: feature hashing, models, streaming evaluation (TRAIN.md).
//!
//! - [`config`]: the model configuration (`configs/model.toml`).
//! - [`features`]: samples and serving instances → hashed, pooled model inputs.
//! - [`model`]: `lr`, `deepfm`, `mmoe` — forward and backward by hand; the forward pass
//!   is the public [`Model::predict`] serving calls.
//! - [`nn`]: layers, pooling, loss.
//! - [`eval`]: progressive-validation AUC and logloss, global and windowed.
//! - [`train`]: the training loop over a [`ParamStore`](odl_proto::params::ParamStore)
//!   (file mode and cluster workers) and its report.
//! - [`worker_config`]: a cluster worker's configuration (`configs/trainer.toml`).

pub mod config;
pub mod dedup;
pub mod error;
pub mod eval;
mod fasthash;
pub mod features;
pub mod model;
pub mod nn;
pub mod train;
pub mod worker_config;

pub use config::ModelConfig;
pub use error::{Result, TrainError};
pub use model::Model;

#[cfg(test)]
pub(crate) mod memstore;
