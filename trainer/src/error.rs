//! The trainer's error type: one enum for the crate, so the CLI can tell a bad config
//! from a bad sample from an unreachable parameter server.

use odl_proto::params::ParamError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model configuration is inconsistent (unknown field kind, leaked label, …).
    #[error("invalid model config: {0}")]
    Config(String),
    /// One input line is not a usable sample; the caller counts and skips it.
    #[error("bad sample: {0}")]
    Sample(String),
    /// The parameter store refused or failed a call.
    #[error(transparent)]
    Params(#[from] ParamError),
    /// Parameters pulled from the store do not have the shape the model declared.
    #[error("parameter shape mismatch: {0}")]
    Shape(String),
    /// The samples stream (a channel, a topic) failed.
    #[error(transparent)]
    Stream(#[from] odl_proto::stream::StreamError),
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl TrainError {
    /// Whether retrying the same call later may succeed (a store restarting).
    pub fn retryable(&self) -> bool {
        matches!(self, TrainError::Params(e) if e.retryable())
    }
}

pub type Result<T> = std::result::Result<T, TrainError>;
