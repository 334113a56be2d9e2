//! The parameter server: sparse and dense parameters with their optimizers,
//! checkpoints, the gRPC shard service and its client (TRAIN.md, PUBLISH.md).
//!
//! Where things live:
//! - [`local::LocalStore`]: the in-process store (file mode, `odl run`, each shard);
//!   its publisher hooks are listed in [`local`].
//! - [`table`], [`rows`], [`arena`]: sparse tables, their lock shards, compact storage.
//! - [`dense`], [`optimizer`]: dense tensors; Adagrad, Adam, FTRL-proximal updates.
//! - [`checkpoint`]: sled checkpoints, re-sharded on load.
//! - [`routing`]: which shard owns a key or a dense tensor.
//! - [`progress`]: workers' training progress, merged for the AUC gates.
//! - [`config`], [`shard`], [`server`]: `odl ps` — config, lifecycle (resume, warm
//!   start, periodic checkpoints, TTL sweeps), gRPC and HTTP serving.
//! - [`remote::RemoteStore`]: the trainer's gRPC client over N shards.
//! - [`publish`]: gated versioned publishing to serving nodes (PUBLISH.md).

pub mod arena;
pub mod checkpoint;
pub mod config;
pub mod dense;
pub mod error;
pub mod local;
pub mod optimizer;
pub mod progress;
pub mod publish;
pub mod remote;
pub mod routing;
pub mod rows;
pub mod server;
pub mod shard;
pub mod table;

pub use error::{PsError, Result};
pub use local::{Changes, LocalStore, RowBatch, StoreOptions, TableChanges};
pub use remote::{RemoteOptions, RemoteStore};
pub use routing::ShardId;
