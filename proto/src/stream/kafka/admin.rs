//! Topic administration: services create the topics they write, so a fresh broker
//! needs no setup script, and they look up partition counts and broker reachability
//! for their readiness probes.

use super::{broker_error, KafkaConfig};
use crate::stream::{Result, StreamError};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

/// Create each `(topic, partitions)` that does not exist yet. Existing topics are left
/// as they are, whatever their partition count (use [`partition_count`] to check).
pub fn ensure_topics(cfg: &KafkaConfig, topics: &[(&str, i32)]) -> Result<()> {
    // An unreachable broker fails fast here: the admin request would otherwise wait
    // out librdkafka's socket timeout (a minute) before saying so.
    check_connection(cfg, Duration::from_secs(5))?;
    let admin: AdminClient<DefaultClientContext> = cfg
        .client(&[])
        .create()
        .map_err(|e| broker_error("creating an admin client", e))?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, parts)| NewTopic::new(name, *parts, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(Duration::from_secs(30)));
    let results = futures_executor::block_on(admin.create_topics(&new, &opts))
        .map_err(|e| broker_error("creating topics", e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(StreamError::Broker(format!("creating topic {topic}: {code}")))
            }
        }
    }
    Ok(())
}

/// The number of partitions of `topic`; an error if it does not exist.
pub fn partition_count(cfg: &KafkaConfig, topic: &str, timeout: Duration) -> Result<i32> {
    let probe = probe_consumer(cfg)?;
    let meta = probe
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| broker_error(&format!("reading metadata of {topic}"), e))?;
    let t = meta
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .ok_or_else(|| StreamError::Broker(format!("topic {topic} does not exist")))?;
    Ok(t.partitions().len() as i32)
}

/// Whether a broker answers a metadata request within `timeout` (readiness probes).
pub fn check_connection(cfg: &KafkaConfig, timeout: Duration) -> Result<()> {
    let probe = probe_consumer(cfg)?;
    probe
        .fetch_metadata(None, timeout)
        .map(|_| ())
        .map_err(|e| broker_error(&format!("reaching {}", cfg.brokers), e))
}

fn probe_consumer(cfg: &KafkaConfig) -> Result<BaseConsumer> {
    cfg.client(&[])
        .create()
        .map_err(|e| broker_error("creating a metadata client", e))
}
