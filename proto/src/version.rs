//! Parameter versions (PUBLISH.md): typed records that the publisher creates, serving
//! nodes apply, and `/v1/versions` renders. A version is data; publishing, confirmation,
//! rebase and rollback are transitions on it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A version number: monotonic per model, never reused, never 0.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(pub u64);

impl Version {
    pub fn next(self) -> Version {
        Version(self.0 + 1)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionKind {
    /// Every parameter: a warm-start checkpoint, a periodic cut, a rebase or a rollback.
    Full,
    /// Every dense tensor, on top of `base`.
    Dense,
    /// The sparse rows changed since the previous sparse publish, deletions included.
    Sparse,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VersionStatus {
    /// Sent; not yet confirmed by every subscribed serving node.
    PushOnline,
    /// Every subscribed serving node confirmed; `effective_at` is set.
    Finished,
    /// Not confirmed within `switch_timeout_time`.
    SwitchTimeout,
    /// Not published: a gate failed; `reason` says which.
    Skipped,
}

/// The AUC figures a publish passed (or failed) its gates with.
#[derive(Copy, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GateAuc {
    pub global: f64,
    pub current: f64,
}

/// One version as `GET /v1/versions` shows it (PUBLISH.md, field for field).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub version: Version,
    pub kind: VersionKind,
    /// The full version this one builds on (itself, for a full version).
    pub base: Version,
    pub status: VersionStatus,
    pub reason: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, set when the version reached `FINISHED`.
    pub effective_at: Option<String>,
    pub rows: u64,
    pub samples_through: u64,
    pub auc: GateAuc,
}
