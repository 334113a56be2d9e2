//! The serving node's typed configuration; `configs/serve.toml` is the embedded
//! default and documents every key.

use serde::{Deserialize, Serialize};
use std::path::Path;

pub const DEFAULT_SERVE_TOML: &str = include_str!("../../configs/serve.toml");

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    pub ps_grpc: String,
    pub rest_addr: String,
    pub model_name: String,
    pub node_id: String,
    pub partitions: Vec<u32>,
    pub model_config: String,
    pub confirm: bool,
    pub reconnect_ms: u64,
    /// `grpc`: subscribe to `ps_grpc`; `kafka`: read the topics below (confirming to
    /// `ps_grpc` either way).
    pub transport: odl_ps::publish::Transport,
    pub update_topic: String,
    pub control_topic: String,
    pub kafka: odl_proto::stream::kafka::KafkaConfig,
}

impl ServeConfig {
    /// The embedded defaults overlaid with `path`.
    pub fn load(path: Option<&Path>) -> anyhow::Result<ServeConfig> {
        let cfg: ServeConfig = odl_proto::config::load(DEFAULT_SERVE_TOML, path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.model_name.is_empty(), "model_name must not be empty");
        anyhow::ensure!(
            self.ps_grpc.starts_with("http://") || self.ps_grpc.starts_with("https://"),
            "ps_grpc must be a URL such as http://127.0.0.1:8601, got {:?}",
            self.ps_grpc
        );
        anyhow::ensure!(self.reconnect_ms >= 1, "reconnect_ms must be at least 1");
        anyhow::ensure!(
            !self.update_topic.is_empty() && !self.control_topic.is_empty(),
            "update_topic and control_topic must not be empty"
        );
        Ok(())
    }

    /// `node_id`, or "serve-<port>" from the REST address the node bound.
    pub fn node_id_for(&self, port: u16) -> String {
        if self.node_id.is_empty() {
            format!("serve-{port}")
        } else {
            self.node_id.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_is_the_default_and_parses() {
        let c = ServeConfig::load(None).unwrap();
        assert_eq!(c.ps_grpc, "http://127.0.0.1:8601");
        assert_eq!(c.rest_addr, "127.0.0.1:8501");
        assert_eq!(c.model_name, "rank_mmoe_odl");
        assert!(c.partitions.is_empty() && c.confirm);
        assert_eq!(c.node_id_for(8501), "serve-8501");
        let direct: ServeConfig =
            odl_proto::config::parse_str(DEFAULT_SERVE_TOML, "serve.toml").unwrap();
        assert_eq!(direct, c);
    }

    #[test]
    fn unknown_keys_and_bad_values_fail_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.toml");
        std::fs::write(&p, "ps_addr = 1\n").unwrap();
        assert!(ServeConfig::load(Some(&p))
            .unwrap_err()
            .to_string()
            .contains("ps_addr"));
        std::fs::write(&p, "ps_grpc = \"127.0.0.1:8601\"\n").unwrap();
        assert!(ServeConfig::load(Some(&p))
            .unwrap_err()
            .to_string()
            .contains("ps_grpc"));
    }
}
