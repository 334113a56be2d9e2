//! `RunConfig`: the one-process pipeline's configuration. Every service section starts
//! from that service's own example config, then `configs/run.toml` (the demo's changes),
//! then the operator's file, so there is one default per key in the whole project.

use anyhow::Context;
use odl_joiner::JoinerConfig;
use odl_ps::config::PsConfig;
use odl_trainer::ModelConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};

use crate::serve::ServeConfig;
use crate::simulate::SimConfig;

pub const RUN_TOML: &str = include_str!("../../configs/run.toml");

/// The sections and the example file each one starts from.
const SECTIONS: [(&str, &str); 6] = [
    ("simulate", include_str!("../../configs/simulate.toml")),
    ("joiner", include_str!("../../configs/joiner.toml")),
    ("model", include_str!("../../configs/model.toml")),
    ("ps", include_str!("../../configs/ps.toml")),
    ("serve", include_str!("../../configs/serve.toml")),
    ("dashboard", include_str!("../../configs/dashboard.toml")),
];

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub data_dir: PathBuf,
    pub events_per_sec: f64,
    pub seed: u64,
    pub max_events: u64,
    pub joiner_http_addr: String,
    pub progress_interval_secs: u64,
    pub transport: Transport,
    pub trainer_group: String,
    pub trainer_dedup_window: usize,
    pub simulate: SimConfig,
    pub joiner: JoinerConfig,
    pub model: ModelConfig,
    pub ps: PsConfig,
    pub serve: ServeConfig,
    pub dashboard: crate::dashboard::DashboardConfig,
}

/// What carries the records between the stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// In-process channels: no broker, nothing survives the process.
    Channel,
    /// The topics of `[joiner.topics]` on `[joiner.kafka]`'s broker.
    Kafka,
}

impl RunConfig {
    pub fn load(path: Option<&Path>) -> anyhow::Result<RunConfig> {
        let mut defaults = toml::Table::new();
        for (name, text) in SECTIONS {
            let table: toml::Table = text
                .parse()
                .with_context(|| format!("embedded configs/{name}.toml"))?;
            defaults.insert(name.to_string(), toml::Value::Table(table));
        }
        let run: toml::Table = RUN_TOML.parse().context("embedded configs/run.toml")?;
        odl_proto::config::overlay(&mut defaults, run);
        let text = toml::to_string(&defaults).context("composing the default run config")?;
        let cfg: RunConfig = odl_proto::config::load(&text, path)?;
        cfg.dashboard.validate().context("[dashboard]")?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_compose_every_section() {
        let c = RunConfig::load(None).unwrap();
        assert_eq!(c.ps.odl_model_update.dense_send_interval_time, 10);
        assert_eq!(c.serve.rest_addr, "127.0.0.1:8501");
        assert_eq!(c.joiner_http_addr, "127.0.0.1:8700");
        assert_eq!(c.dashboard.listen_addr, "127.0.0.1:8080");
        assert_eq!(c.transport, Transport::Channel);
    }

    #[test]
    fn the_local_kafka_overlay_moves_every_stage_to_the_broker() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/local-kafka.toml");
        let c = RunConfig::load(Some(&p)).unwrap();
        assert_eq!(c.transport, Transport::Kafka);
        assert_eq!(c.serve.transport, odl_ps::publish::Transport::Kafka);
        assert_eq!(c.joiner.topics.samples, "odl.samples");
    }

    #[test]
    fn a_file_overrides_one_key_of_a_section() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.toml");
        std::fs::write(&p, "[joiner]\naudit_rate = 0.5\n").unwrap();
        let c = RunConfig::load(Some(&p)).unwrap();
        assert_eq!(c.joiner.audit_rate, 0.5);
        assert_eq!(c.ps.odl_model_update.sparse_send_interval_time, 30);
        std::fs::write(&p, "[joiner]\nno_such_key = 1\n").unwrap();
        assert!(RunConfig::load(Some(&p)).is_err());
        std::fs::write(&p, "[dashboard]\npoll_interval_ms = 1\n").unwrap();
        let e = format!("{:#}", RunConfig::load(Some(&p)).unwrap_err());
        assert!(e.contains("[dashboard]") && e.contains("poll_interval_ms"), "{e}");
    }
}
