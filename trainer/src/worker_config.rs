//! The configuration of a cluster trainer worker (`odl train --config`); the embedded
//! default is `configs/trainer.toml`, which documents every key.

use crate::error::{Result, TrainError};
use odl_proto::stream::kafka::KafkaConfig;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

pub const DEFAULT_TRAINER_TOML: &str = include_str!("../../configs/trainer.toml");

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerConfig {
    pub ps: Vec<String>,
    pub model_config: String,
    pub source: SampleSource,
    pub samples: String,
    pub worker: String,
    pub samples_topic: String,
    pub group: String,
    pub dedup_window: usize,
    pub commit_interval_ms: u64,
    pub kafka: KafkaConfig,
    pub threads: usize,
    pub dense_refresh_batches: usize,
    pub epochs: usize,
    pub progress_interval_secs: u64,
    pub retry_deadline_secs: u64,
    pub report: String,
    pub http_addr: String,
}

/// Where a worker reads its samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleSource {
    /// `samples`, a JSON Lines file; the worker takes its `worker` share of the lines.
    File,
    /// `samples_topic`, as a member of consumer group `group` per training thread.
    Kafka,
}

impl TrainerConfig {
    pub fn commit_interval(&self) -> Duration {
        Duration::from_millis(self.commit_interval_ms)
    }

    pub fn load(path: Option<&Path>) -> Result<TrainerConfig> {
        let c: TrainerConfig = odl_proto::config::load(DEFAULT_TRAINER_TOML, path)
            .map_err(|e| TrainError::Config(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        if self.ps.is_empty() {
            return Err(TrainError::Config("`ps` lists no shard".into()));
        }
        if self.threads == 0 || self.dense_refresh_batches == 0 || self.progress_interval_secs == 0
        {
            return Err(TrainError::Config(
                "threads, dense_refresh_batches and progress_interval_secs must be > 0".into(),
            ));
        }
        parse_share(&self.worker)?;
        if self.source == SampleSource::Kafka
            && (self.samples_topic.is_empty() || self.group.is_empty() || self.kafka.brokers.is_empty())
        {
            return Err(TrainError::Config(
                "source = \"kafka\" needs samples_topic, group and kafka.brokers".into(),
            ));
        }
        Ok(())
    }

    pub fn share(&self) -> Result<(usize, usize)> {
        parse_share(&self.worker)
    }
}

/// `"i/n"` with `0 <= i < n`.
pub fn parse_share(s: &str) -> Result<(usize, usize)> {
    let parsed = s
        .split_once('/')
        .and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
    match parsed {
        Some((i, n)) if i < n => Ok((i, n)),
        _ => Err(TrainError::Config(format!(
            "bad worker share `{s}`: expected i/n with 0 <= i < n"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_and_cluster_examples_parse() {
        let d = TrainerConfig::load(None).unwrap();
        let full: TrainerConfig =
            odl_proto::config::parse_str(DEFAULT_TRAINER_TOML, "trainer.toml").unwrap();
        assert_eq!(d, full);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/cluster");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("worker-")
            {
                let c = TrainerConfig::load(Some(&p)).unwrap();
                assert_eq!(c.ps.len(), 2);
                let name = p.file_stem().unwrap().to_str().unwrap();
                let i = name.trim_start_matches("worker-");
                assert_eq!(c.http_addr, format!("127.0.0.1:871{i}"));
                n += 1;
            }
        }
        assert_eq!(n, 2);
    }

    #[test]
    fn shares_and_bad_values() {
        assert_eq!(parse_share("1/2").unwrap(), (1, 2));
        for bad in ["2/2", "x/2", "1", "-1/2", "0/0"] {
            assert!(parse_share(bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.toml");
        std::fs::write(&p, "ps = []\n").unwrap();
        assert!(TrainerConfig::load(Some(&p)).is_err());
        std::fs::write(&p, "threads = 0\n").unwrap();
        assert!(TrainerConfig::load(Some(&p)).is_err());
        std::fs::write(&p, "source = \"kafka\"\ngroup = \"\"\n").unwrap();
        assert!(TrainerConfig::load(Some(&p)).unwrap_err().to_string().contains("group"));
        std::fs::write(&p, "source = \"tape\"\n").unwrap();
        assert!(TrainerConfig::load(Some(&p)).is_err());
        std::fs::write(&p, "shards = 3\n").unwrap();
        assert!(TrainerConfig::load(Some(&p))
            .unwrap_err()
            .to_string()
            .contains("shards"));
    }
}
