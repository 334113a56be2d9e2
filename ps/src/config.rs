//! `odl ps` configuration: one shard's place in the cluster, its addresses,
//! checkpoints, warm start and row lifetime. The documented example `configs/ps.toml`
//! is the embedded default.

use crate::error::{PsError, Result};
use crate::local::StoreOptions;
use crate::routing::ShardId;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The embedded defaults (`configs/ps.toml`).
pub const DEFAULTS: &str = include_str!("../../configs/ps.toml");

/// Every key is documented in `configs/ps.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PsConfig {
    pub shard_index: u32,
    pub shard_count: u32,
    pub grpc_addr: String,
    pub http_addr: String,
    /// Empty: no checkpoints.
    pub checkpoint_dir: PathBuf,
    pub checkpoint_interval_secs: u64,
    pub warm_start: Vec<PathBuf>,
    /// 0: rows never expire.
    pub ttl_secs: u64,
    pub min_count: u32,
    pub lock_shards: usize,
    /// Publishing to serving nodes (PUBLISH.md); documented in `configs/ps.toml`.
    pub odl_model_update: crate::publish::PublishConfig,
    /// The Kafka cluster versions go to with `odl_model_update.extensions.transport =
    /// "kafka"`.
    pub kafka: odl_proto::stream::kafka::KafkaConfig,
}

impl PsConfig {
    /// The defaults overlaid with `path`, validated.
    pub fn load(path: Option<&Path>) -> Result<PsConfig> {
        let c: PsConfig = odl_proto::config::load(DEFAULTS, path)
            .map_err(|e| PsError::Invalid(format!("config: {e}")))?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        if self.shard().is_none() {
            return Err(PsError::invalid(format!(
                "config: shard_index {} must be < shard_count {} (and shard_count > 0)",
                self.shard_index, self.shard_count
            )));
        }
        if self.checkpoint_interval_secs == 0 {
            return Err(PsError::invalid(
                "config: checkpoint_interval_secs must be > 0",
            ));
        }
        if self.lock_shards == 0 || self.lock_shards > 4096 {
            return Err(PsError::invalid("config: lock_shards must be in 1..=4096"));
        }
        self.odl_model_update
            .validate()
            .map_err(|e| PsError::invalid(format!("config: {e}")))?;
        Ok(())
    }

    pub fn shard(&self) -> Option<ShardId> {
        ShardId::new(self.shard_index, self.shard_count)
    }

    pub fn checkpoint_dir(&self) -> Option<&Path> {
        (!self.checkpoint_dir.as_os_str().is_empty()).then_some(self.checkpoint_dir.as_path())
    }

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            ttl: (self.ttl_secs > 0).then(|| Duration::from_secs(self.ttl_secs)),
            min_count: self.min_count.max(1),
            lock_shards: self.lock_shards,
            shard: self.shard(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_is_the_default_and_parses() {
        let c: PsConfig = odl_proto::config::parse_str(DEFAULTS, "configs/ps.toml").unwrap();
        assert_eq!(c, PsConfig::load(None).unwrap());
        assert_eq!(c.grpc_addr, "127.0.0.1:8601");
        assert_eq!(c.http_addr, "127.0.0.1:8600");
        assert!(c.checkpoint_dir().is_none());
    }

    #[test]
    fn cluster_configs_parse_and_differ() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/cluster");
        let mut seen = Vec::new();
        for i in 0..2 {
            let p = PathBuf::from(format!("{dir}/ps-{i}.toml"));
            let c = PsConfig::load(Some(&p)).unwrap();
            assert_eq!((c.shard_index, c.shard_count), (i, 2));
            assert!(c.checkpoint_dir().is_some());
            seen.push((c.grpc_addr, c.http_addr, c.checkpoint_dir));
        }
        assert_ne!(seen[0], seen[1]);
    }

    #[test]
    fn bad_values_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "shard_index = 2\nshard_count = 2\n").unwrap();
        assert!(PsConfig::load(Some(&p))
            .unwrap_err()
            .to_string()
            .contains("shard_index"));
        std::fs::write(&p, "shard_idx = 1\n").unwrap();
        assert!(PsConfig::load(Some(&p)).is_err());
    }
}
