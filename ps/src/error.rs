//! The parameter server's one error type. Library code returns [`PsError`]; the
//! [`ParamStore`](odl_proto::params::ParamStore) boundary converts it to
//! [`ParamError`], and the gRPC boundary to `tonic::Status` (in `server::status`), so
//! handlers and store code use `?` and the mapping lives in exactly one place each.

use odl_proto::params::ParamError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PsError {
    /// The request is wrong (unknown table, wrong length, non-finite value, key of
    /// another shard); retrying it cannot help.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A shard could not be reached (or is restarting); retry with backoff.
    #[error("parameter server unavailable: {0}")]
    Unavailable(String),
    /// A checkpoint could not be written or read.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Anything else that is the server's fault, not the caller's.
    #[error("parameter server failed: {0}")]
    Internal(String),
}

impl PsError {
    /// Whether a client should retry the same request later.
    pub fn retryable(&self) -> bool {
        matches!(self, PsError::Unavailable(_))
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> PsError {
        PsError::Invalid(msg.into())
    }

    pub(crate) fn checkpoint(path: &std::path::Path, msg: impl std::fmt::Display) -> PsError {
        PsError::Checkpoint {
            path: path.to_path_buf(),
            msg: msg.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, PsError>;

impl From<PsError> for ParamError {
    fn from(e: PsError) -> ParamError {
        match e {
            PsError::Invalid(m) => ParamError::Invalid(m),
            PsError::Unavailable(m) => ParamError::Unavailable(m),
            other => ParamError::Internal(other.to_string()),
        }
    }
}

/// A request whose byte fields hold no whole number of values is the caller's fault.
impl From<odl_proto::wire::WireError> for PsError {
    fn from(e: odl_proto::wire::WireError) -> PsError {
        PsError::Invalid(e.to_string())
    }
}

impl From<ParamError> for PsError {
    fn from(e: ParamError) -> PsError {
        match e {
            ParamError::Invalid(m) => PsError::Invalid(m),
            ParamError::Unavailable(m) => PsError::Unavailable(m),
            ParamError::Internal(m) => PsError::Internal(m),
        }
    }
}
