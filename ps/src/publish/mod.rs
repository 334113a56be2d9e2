//! Gated, versioned publishing of parameters to serving nodes (PUBLISH.md).
//!
//! The PS cuts numbered versions out of its parameter store: a full version at warm
//! start (and periodically, on rebase and on rollback), dense and sparse increments on
//! timers, each behind the AUC and numerics gates. Versions are records in sled with
//! their payloads, so history, statuses and the catch-up chain survive a restart.
//! Serving nodes subscribe over gRPC, or read versions from Kafka
//! (`extensions.transport`), apply them and confirm them over gRPC; the status
//! tracker turns confirmations and timeouts into `FINISHED` / `SWITCH_TIMEOUT`.
//! With several shards, shard 0 cuts versions of the whole cluster ([`cluster`]).
//!
//! Where things live:
//! - [`announce`]: the Kafka wire format and the serving side's "complete" rule;
//! - [`client`]: `odl ps rebase`, the operator call;
//! - [`cluster`]: the publishing shard reading the other shards' parts;
//! - [`kafka`]: writing versions to the param-update and control topics;
//! - [`config`]: the `odl_model_update` block (PUBLISH.md keys) and our extensions;
//! - [`partition`]: `div` / `mod` partitioning of sparse keys;
//! - [`payload`]: what a version carries and how it is chunked on the wire;
//! - [`store`]: version records and payloads in sled;
//! - [`status`]: subscribers, confirmations, status transitions;
//! - [`source`]: what the publisher reads from the parameter store;
//! - [`gates`]: AUC and numerics gates;
//! - [`publisher`]: cutting versions and the timers that drive it;
//! - [`service`]: the gRPC `Publisher` service;
//! - [`http`]: `GET /v1/versions`, `GET /v1/versions/{n}`, rollback.

pub mod announce;
pub mod client;
pub mod cluster;
pub mod config;
pub mod gates;
pub mod http;
pub mod kafka;
pub mod partition;
pub mod payload;
pub mod publisher;
pub mod service;
pub mod source;
pub mod status;
pub mod store;

pub use config::{PartStrategy, PublishConfig, PublishExtensions, Transport};
pub use publisher::{Publisher, Role, Wiring};
pub use source::PublishSource;

use odl_proto::version::Version;

/// Everything that can go wrong while publishing or answering about versions.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("version {0} does not exist")]
    UnknownVersion(Version),
    #[error("version {0} is not a full version with a kept payload: {1}")]
    NotRollbackable(Version, String),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("invalid odl_model_update config: {0}")]
    Config(String),
    #[error("version store: {0}")]
    Storage(#[from] sled::Error),
    #[error("corrupt version store entry {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("parameter store: {0}")]
    Source(String),
}

pub type Result<T> = std::result::Result<T, PublishError>;

impl PublishError {
    /// Whether a client may retry the same request later.
    pub fn retryable(&self) -> bool {
        matches!(self, PublishError::Storage(_) | PublishError::Source(_))
    }
}

/// The one conversion of publishing errors to gRPC statuses.
impl From<PublishError> for tonic::Status {
    fn from(e: PublishError) -> Self {
        let msg = e.to_string();
        match e {
            PublishError::UnknownVersion(_) => tonic::Status::not_found(msg),
            PublishError::NotRollbackable(..) => tonic::Status::failed_precondition(msg),
            PublishError::Unauthorized => tonic::Status::unauthenticated(msg),
            PublishError::Invalid(_) | PublishError::Config(_) => {
                tonic::Status::invalid_argument(msg)
            }
            PublishError::Storage(_) | PublishError::Source(_) => tonic::Status::unavailable(msg),
            PublishError::Corrupt { .. } => tonic::Status::internal(msg),
        }
    }
}
