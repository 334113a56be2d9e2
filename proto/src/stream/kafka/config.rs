//! The connection settings every Kafka client of a service shares. Each service's
//! config embeds one of these as its `[kafka]` table next to its own topic names.

use rdkafka::config::ClientConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub brokers: String,
    /// How long a `flush` waits for the broker before reporting a retryable error
    /// (the records stay queued and are retried; nothing is dropped).
    #[serde(default = "default_flush_timeout_ms")]
    pub flush_timeout_ms: u64,
    /// Extra librdkafka properties passed through verbatim (security settings,
    /// `compression.type`, ...). They override odl's own defaults.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_flush_timeout_ms() -> u64 {
    30_000
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            flush_timeout_ms: default_flush_timeout_ms(),
            properties: BTreeMap::new(),
        }
    }

    pub fn flush_timeout(&self) -> Duration {
        Duration::from_millis(self.flush_timeout_ms)
    }

    /// A client config with odl's defaults for every client, then the user's properties.
    pub(super) fn client(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        // librdkafka logs through its own channel; odl reports broker trouble itself.
        c.set("log_level", "3");
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}
