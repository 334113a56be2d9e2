//! The joiner's typed configuration. `configs/joiner.toml` is compiled in as the
//! defaults, so the documented example and the behaviour cannot drift apart.

use crate::{Error, Result};
use odl_proto::event::StreamKind;
use odl_proto::stream::kafka::KafkaConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The embedded defaults (the example file in `configs/`).
pub const DEFAULT_TOML: &str = include_str!("../../configs/joiner.toml");

/// Windows, lateness and rates of JOIN.md; every field is documented in
/// `configs/joiner.toml` with its default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinerConfig {
    pub allowed_lateness_ms: u64,
    pub click_wait_ms: u64,
    pub detail_click_wait_ms: u64,
    pub feature_lookback_ms: u64,
    pub feature_grace_ms: u64,
    pub audit_rate: f64,
    /// Share of emitted samples whose feature object `/v1/quality` reads.
    pub quality_feature_rate: f64,
    pub stats_interval_ms: u64,
    /// Kafka mode (`odl join --kafka`): the brokers and client settings.
    pub kafka: KafkaConfig,
    /// Kafka mode: one topic per input stream and the three output topics.
    pub topics: Topics,
    /// Kafka mode: checkpoints, limits, idleness and the HTTP address.
    pub streaming: Streaming,
}

/// Topic names of Kafka mode (`[topics]` of `configs/joiner.toml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topics {
    pub exposure: String,
    pub click: String,
    pub detail_click: String,
    pub feature: String,
    pub samples: String,
    pub audit: String,
    pub dead_letter: String,
    /// Partitions of a topic the joiner creates because it is missing.
    pub partitions: i32,
}

impl Topics {
    /// The input topics with the stream each one carries.
    pub fn inputs(&self) -> [(StreamKind, &str); 4] {
        [
            (StreamKind::Exposure, &self.exposure),
            (StreamKind::Click, &self.click),
            (StreamKind::DetailClick, &self.detail_click),
            (StreamKind::Feature, &self.feature),
        ]
    }

    pub fn outputs(&self) -> [&str; 3] {
        [&self.samples, &self.audit, &self.dead_letter]
    }
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            exposure: "odl.exposure".into(),
            click: "odl.click".into(),
            detail_click: "odl.detail_click".into(),
            feature: "odl.feature".into(),
            samples: "odl.samples".into(),
            audit: "odl.audit".into(),
            dead_letter: "odl.dead_letter".into(),
            partitions: 4,
        }
    }
}

/// Kafka mode's service settings (`[streaming]` of `configs/joiner.toml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Streaming {
    pub http_addr: String,
    pub checkpoint_dir: PathBuf,
    pub checkpoint_interval_ms: u64,
    pub max_message_bytes: usize,
    pub idle_partition_ms: u64,
    pub max_input_skew_ms: u64,
    pub exit_when_idle_ms: u64,
}

impl Default for Streaming {
    fn default() -> Self {
        Streaming {
            http_addr: "127.0.0.1:8700".into(),
            checkpoint_dir: PathBuf::from("odl-data/joiner"),
            checkpoint_interval_ms: 5_000,
            max_message_bytes: 1 << 20,
            idle_partition_ms: 10_000,
            max_input_skew_ms: 60_000,
            exit_when_idle_ms: 0,
        }
    }
}

/// Windows beyond this (about 292 years) cannot be meant and would overflow event time.
const MAX_WINDOW_MS: u64 = 1 << 53;

impl JoinerConfig {
    /// Defaults overlaid with the file at `path` (TOML, or JSON by extension), checked.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let c: Self = odl_proto::config::load(DEFAULT_TOML, path)?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        let windows = [
            ("allowed_lateness_ms", self.allowed_lateness_ms),
            ("click_wait_ms", self.click_wait_ms),
            ("detail_click_wait_ms", self.detail_click_wait_ms),
            ("feature_lookback_ms", self.feature_lookback_ms),
            ("feature_grace_ms", self.feature_grace_ms),
        ];
        for (name, v) in windows {
            if v > MAX_WINDOW_MS {
                return Err(Error::Config(format!("{name} = {v} is beyond {MAX_WINDOW_MS}")));
            }
        }
        for (name, rate) in [("audit_rate", self.audit_rate), ("quality_feature_rate", self.quality_feature_rate)] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(Error::Config(format!("{name} = {rate} is not within [0, 1]")));
            }
        }
        if self.stats_interval_ms == 0 {
            return Err(Error::Config("stats_interval_ms must be positive".into()));
        }
        self.validate_kafka_mode()
    }

    fn validate_kafka_mode(&self) -> Result<()> {
        let t = &self.topics;
        let mut names: Vec<&str> = t.inputs().iter().map(|(_, n)| *n).chain(t.outputs()).collect();
        if names.iter().any(|n| n.is_empty()) {
            return Err(Error::Config("topic names must not be empty".into()));
        }
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::Config(format!("topic {} is named twice in [topics]", w[0])));
        }
        if t.partitions < 1 {
            return Err(Error::Config("topics.partitions must be at least 1".into()));
        }
        let s = &self.streaming;
        if s.checkpoint_interval_ms == 0 || s.max_message_bytes == 0 {
            return Err(Error::Config(
                "streaming.checkpoint_interval_ms and max_message_bytes must be positive".into(),
            ));
        }
        Ok(())
    }

    /// How long after tE an exposure waits before its sample is final.
    pub fn emit_delay_ms(&self) -> i64 {
        self.click_wait_ms.max(self.detail_click_wait_ms).max(self.feature_grace_ms) as i64
    }
}

impl Default for JoinerConfig {
    fn default() -> Self {
        Self {
            allowed_lateness_ms: 60_000,
            click_wait_ms: 630_000,
            detail_click_wait_ms: 630_000,
            feature_lookback_ms: 630_000,
            feature_grace_ms: 60_000,
            audit_rate: 0.1,
            quality_feature_rate: 0.1,
            stats_interval_ms: 2_000,
            kafka: KafkaConfig::new("127.0.0.1:9092"),
            topics: Topics::default(),
            streaming: Streaming::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_is_the_default_and_parses_strictly() {
        let c: JoinerConfig = odl_proto::config::parse_str(DEFAULT_TOML, "configs/joiner.toml").unwrap();
        assert_eq!(c, JoinerConfig::default());
        assert_eq!(JoinerConfig::load(None).unwrap(), JoinerConfig::default());
    }

    #[test]
    fn overrides_unknown_keys_and_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.toml");
        std::fs::write(&p, "click_wait_ms = 5\n").unwrap();
        let c = JoinerConfig::load(Some(&p)).unwrap();
        assert_eq!(c.click_wait_ms, 5);
        assert_eq!(c.feature_lookback_ms, 630_000);
        std::fs::write(&p, "click_wait = 5\n").unwrap();
        let e = JoinerConfig::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("j.toml"), "{e}");
        std::fs::write(&p, "audit_rate = 1.5\n").unwrap();
        assert!(JoinerConfig::load(Some(&p)).unwrap_err().to_string().contains("audit_rate"));
        std::fs::write(&p, "quality_feature_rate = -0.1\n").unwrap();
        assert!(JoinerConfig::load(Some(&p)).unwrap_err().to_string().contains("quality_feature_rate"));
        std::fs::write(&p, "stats_interval_ms = 0\n").unwrap();
        assert!(JoinerConfig::load(Some(&p)).is_err());
    }

    #[test]
    fn kafka_sections_override_key_by_key_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.toml");
        std::fs::write(&p, "[kafka]\nbrokers = \"b:1\"\n[topics]\nsamples = \"s\"\n").unwrap();
        let c = JoinerConfig::load(Some(&p)).unwrap();
        assert_eq!((c.kafka.brokers.as_str(), c.topics.samples.as_str()), ("b:1", "s"));
        assert_eq!(c.topics.click, "odl.click");
        std::fs::write(&p, "[topics]\naudit = \"odl.samples\"\n").unwrap();
        let e = JoinerConfig::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("named twice"), "{e}");
        std::fs::write(&p, "[streaming]\nmax_message_bytes = 0\n").unwrap();
        assert!(JoinerConfig::load(Some(&p)).is_err());
        std::fs::write(&p, "[streaming]\nno_such = 1\n").unwrap();
        assert!(JoinerConfig::load(Some(&p)).is_err());
    }
}
