//! The joiner: four event streams in, training samples out (JOIN.md).
//!
//! - [`parse`]: one line to a borrowed event, or the reason it is malformed;
//! - [`operator`]: the join itself, pure (no I/O, no clock);
//! - [`stats`]: the join statistics and their atomic file;
//! - [`service`]: the loop that drives the operator between a record source and sinks;
//! - [`checkpoint`]: the Kafka joiner's checkpoints (operator state + offsets, sled);
//! - [`kafka`]: Kafka mode (per-partition watermarks, checkpoints, at-least-once);
//! - [`config`]: the typed configuration (`configs/joiner.toml`);
//! - [`quality`]: sample quality (label and sample delay, positive rate, feature coverage);
//! - [`http`]: the HTTP routes every joiner serves (`/stats`, `/v1/quality`, `/metrics`).

pub mod checkpoint;
pub mod config;
pub mod http;
pub mod kafka;
pub mod operator;
pub mod parse;
pub mod quality;
pub mod service;
pub mod stats;

pub use config::JoinerConfig;
pub use http::JoinerObservations;
pub use operator::{Joiner, Output};
pub use stats::JoinStats;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Boxed: a TOML error is large and every `Result` of the crate would carry it.
    #[error(transparent)]
    ConfigFile(Box<odl_proto::config::ConfigError>),
    #[error("joiner config: {0}")]
    Config(String),
    #[error(transparent)]
    Stream(#[from] odl_proto::stream::StreamError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("cannot restore the checkpointed join state: {0}")]
    Snapshot(#[from] operator::SnapshotError),
    /// The broker stayed unreachable through a shutdown: no final checkpoint.
    #[error("{0}")]
    Unavailable(String),
    #[error("cannot write stats file {path}: {source}")]
    Stats {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<odl_proto::config::ConfigError> for Error {
    fn from(e: odl_proto::config::ConfigError) -> Self {
        Error::ConfigFile(Box::new(e))
    }
}

pub type Result<T> = std::result::Result<T, Error>;
