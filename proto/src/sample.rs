//! A training sample, as the joiner emits it (JOIN.md "Sample") and the trainer reads it.
//!
//! The joiner writes samples without materialising this type (it splices the feature
//! object through as raw JSON); this is the owned form for readers and tests.

use serde::{Deserialize, Serialize};

/// The tasks every multi-task model in odl predicts, in head order.
pub const TASKS: [&str; 2] = ["click", "detail_click"];

/// `"<pv_id>:<item_id>"`: the identity of a sample across replays, retries and topics.
pub fn sample_id(pv_id: &str, item_id: &str) -> String {
    let mut s = String::with_capacity(pv_id.len() + item_id.len() + 1);
    s.push_str(pv_id);
    s.push(':');
    s.push_str(item_id);
    s
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Labels {
    pub click: u8,
    pub detail_click: u8,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub sample_id: String,
    pub ts: i64,
    pub user_id: String,
    pub item_id: String,
    pub labels: Labels,
    /// The joined feature event's features plus `<task>_label` copies of the labels.
    pub features: serde_json::Map<String, serde_json::Value>,
}
