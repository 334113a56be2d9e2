//! The `odl_model_update` block of the PS config: exactly the keys and defaults of
//! PUBLISH.md (the production setup's names), plus odl's own keys in a separate
//! `extensions` table so the production block stays recognisable. Intervals are in
//! seconds; every one may be as small as 1 for tests and demos.

use super::{PublishError, Result};
use serde::{Deserialize, Serialize};

/// How sparse keys map to the `update_partition_count` partitions.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartStrategy {
    /// Contiguous ranges of the u64 key space.
    Div,
    /// Key modulo the partition count.
    Mod,
}

impl PartStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            PartStrategy::Div => "div",
            PartStrategy::Mod => "mod",
        }
    }

    pub fn parse(s: &str) -> Option<PartStrategy> {
        match s {
            "div" => Some(PartStrategy::Div),
            "mod" => Some(PartStrategy::Mod),
            _ => None,
        }
    }
}

/// How versions reach serving nodes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Nodes subscribe to the PS's gRPC `Publisher` service.
    Grpc,
    /// Versions go to the param-update and control topics (the PS's `[kafka]` table).
    Kafka,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// Publishing on or off. Off: no versions at all (not even the warm-start one).
    pub open: bool,
    /// The model serving nodes answer for (`/v1/models/{model_name}`).
    pub model_name: String,
    /// Seconds between dense increments.
    pub dense_send_interval_time: u64,
    /// Seconds between sparse increments.
    pub sparse_send_interval_time: u64,
    /// Seconds after start before the first increment.
    pub first_trigger_time: u64,
    /// Minimum streaming AUC over everything since warm start.
    pub global_auc_threshold: f64,
    /// Minimum AUC of the latest evaluation window.
    pub current_auc_threshold: f64,
    /// Partitions a sparse increment is split into.
    pub update_partition_count: u32,
    /// `div` (contiguous key ranges) or `mod` (key modulo count).
    pub part_strategy: PartStrategy,
    /// Skip a publish that would carry a NaN or infinite value.
    pub check_numerics: bool,
    /// Seconds a version may stay `PUSH_ONLINE` before it becomes `SWITCH_TIMEOUT`.
    pub switch_timeout_time: u64,
    /// odl's own keys, not part of the production block.
    pub extensions: PublishExtensions,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishExtensions {
    /// Seconds between periodic full versions, so a catch-up never replays an
    /// unbounded chain of increments. 0: only warm start, rebase and rollback cut one.
    pub full_version_interval_time: u64,
    /// Node ids that must confirm every version besides the nodes subscribed when it
    /// was published (a node known to be down then still holds versions back).
    pub confirm_nodes: Vec<String>,
    /// Bearer token for `POST /v1/versions/{n}:rollback`. Empty: rollback refused.
    pub rollback_token: String,
    /// Full versions whose payload is kept (for rollback); increments are kept only
    /// after the newest full version.
    pub keep_full_versions: usize,
    /// Path of the model config whose text travels with every full version, so a
    /// serving node builds the model the trainer trains. Empty: none is sent and
    /// serving uses its own `model_config`.
    pub model_config: String,
    /// Directory of the version store (sled). Empty: `versions` under the PS data dir.
    pub store_dir: String,
    /// `grpc` or `kafka`. gRPC subscriptions are served either way.
    pub transport: Transport,
    /// Kafka: the topic of versions' records (`update_partition_count` partitions).
    pub update_topic: String,
    /// Kafka: the one-partition topic announcing each version once it is written.
    pub control_topic: String,
    /// Several shards: every shard's gRPC URL, by shard index. Shard 0 then cuts
    /// versions of the whole cluster (reading the others' parts) and the others
    /// publish nothing themselves. Empty: each shard publishes only its own rows.
    pub shard_grpc: Vec<String>,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            open: true,
            model_name: "rank_mmoe_odl".to_string(),
            dense_send_interval_time: 300,
            sparse_send_interval_time: 900,
            first_trigger_time: 600,
            global_auc_threshold: 0.68,
            current_auc_threshold: 0.68,
            update_partition_count: 32,
            part_strategy: PartStrategy::Div,
            check_numerics: true,
            switch_timeout_time: 21600,
            extensions: PublishExtensions::default(),
        }
    }
}

impl Default for PublishExtensions {
    fn default() -> Self {
        PublishExtensions {
            full_version_interval_time: 3600,
            confirm_nodes: Vec::new(),
            rollback_token: String::new(),
            keep_full_versions: 3,
            model_config: String::new(),
            store_dir: String::new(),
            transport: Transport::Grpc,
            update_topic: "odl.param_updates".to_string(),
            control_topic: "odl.param_control".to_string(),
            shard_grpc: Vec::new(),
        }
    }
}

impl PublishConfig {
    /// Reject values no publisher can run with, naming the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(PublishError::Config(m));
        for (key, v) in [
            ("dense_send_interval_time", self.dense_send_interval_time),
            ("sparse_send_interval_time", self.sparse_send_interval_time),
            ("switch_timeout_time", self.switch_timeout_time),
        ] {
            if v < 1 {
                return bad(format!("{key} must be at least 1 second, got {v}"));
            }
        }
        for (key, v) in [
            ("global_auc_threshold", self.global_auc_threshold),
            ("current_auc_threshold", self.current_auc_threshold),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!("{key} must be within [0, 1], got {v}"));
            }
        }
        if self.update_partition_count < 1 {
            return bad("update_partition_count must be at least 1".to_string());
        }
        if self.model_name.is_empty() {
            return bad("model_name must not be empty".to_string());
        }
        if self.extensions.transport == Transport::Kafka
            && (self.extensions.update_topic.is_empty() || self.extensions.control_topic.is_empty())
        {
            return bad("extensions.update_topic and control_topic must be set for kafka".into());
        }
        if self.extensions.keep_full_versions < 1 {
            return bad("extensions.keep_full_versions must be at least 1".to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_json_block_parses_and_equals_the_defaults() {
        let json = r#"{"odl_model_update": {
            "open": true, "model_name": "rank_mmoe_odl",
            "dense_send_interval_time": 300, "sparse_send_interval_time": 900,
            "first_trigger_time": 600, "global_auc_threshold": 0.68,
            "current_auc_threshold": 0.68, "update_partition_count": 32,
            "part_strategy": "div", "check_numerics": true, "switch_timeout_time": 21600}}"#;
        #[derive(Deserialize)]
        struct Top {
            odl_model_update: serde_json::Value,
        }
        let top: Top = serde_json::from_str(json).unwrap();
        let mut v = top.odl_model_update;
        v["extensions"] = serde_json::to_value(PublishExtensions::default()).unwrap();
        let c: PublishConfig = serde_json::from_value(v).unwrap();
        assert_eq!(c, PublishConfig::default());
        c.validate().unwrap();
    }

    /// `configs/ps.toml` documents every key of the block and holds the defaults.
    #[test]
    fn the_ps_example_config_block_is_the_default() {
        let text = include_str!("../../../configs/ps.toml");
        #[derive(Deserialize)]
        struct Top {
            odl_model_update: PublishConfig,
        }
        let top: Top = odl_proto::config::parse_str(text, "configs/ps.toml").unwrap();
        assert_eq!(top.odl_model_update, PublishConfig::default());
        for key in [
            "open",
            "model_name",
            "dense_send_interval_time",
            "sparse_send_interval_time",
            "first_trigger_time",
            "global_auc_threshold",
            "current_auc_threshold",
            "update_partition_count",
            "part_strategy",
            "check_numerics",
            "switch_timeout_time",
        ] {
            assert!(
                text.contains(&format!("\n{key} = ")),
                "{key} not documented"
            );
        }
    }

    #[test]
    fn unknown_key_and_bad_values_are_rejected() {
        let mut v = serde_json::to_value(PublishConfig::default()).unwrap();
        v["dense_send_interval"] = 3.into();
        assert!(serde_json::from_value::<PublishConfig>(v).is_err());
        let mut v = serde_json::to_value(PublishConfig::default()).unwrap();
        v["part_strategy"] = "range".into();
        assert!(serde_json::from_value::<PublishConfig>(v).is_err());
        let c = PublishConfig {
            dense_send_interval_time: 0,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("dense_send_interval_time"));
        let c = PublishConfig {
            global_auc_threshold: 1.5,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("global_auc_threshold"));
        let c = PublishConfig {
            update_partition_count: 0,
            ..Default::default()
        };
        assert!(c.validate().is_err());
        let c = PublishConfig {
            sparse_send_interval_time: 1,
            first_trigger_time: 0,
            ..Default::default()
        };
        c.validate().unwrap();
    }
}
