//! The four input streams of the joiner (JOIN.md) and the owned form of an event, as
//! the simulator writes it. The joiner parses events with its own borrowed, allocation-
//! free parser; this type is for producing them and for tests.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One of the joiner's four input streams.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    Exposure,
    Click,
    DetailClick,
    Feature,
}

impl StreamKind {
    pub const ALL: [StreamKind; 4] = [Self::Exposure, Self::Click, Self::DetailClick, Self::Feature];

    /// The name used in replay files (`"stream"`), stats and topic names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exposure => "exposure",
            Self::Click => "click",
            Self::DetailClick => "detail_click",
            Self::Feature => "feature",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Dense index 0..4, for per-stream arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Event time in milliseconds since the Unix epoch.
pub type EventTimeMs = i64;

/// An event as it appears in a replay file (with `stream`) or, without it, as a Kafka
/// message value. Optional fields are omitted when absent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamKind>,
    pub pv_id: String,
    pub item_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub ts: EventTimeMs,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctx: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<serde_json::Map<String, serde_json::Value>>,
}
