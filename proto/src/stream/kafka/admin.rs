//! Topic administration: services create the topics they write, so a fresh broker
//! needs no setup script, and they look up partition counts and broker reachability
//! for their readiness probes, and what a consumer group has committed.

use super::{broker_error, KafkaConfig, Offsets};
use crate::stream::{Result, StreamError};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
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

/// The offsets consumer group `group` has committed on `topic`, per partition (a
/// partition without a commit is left out): how far the group's members got.
pub fn committed_offsets(cfg: &KafkaConfig, topic: &str, group: &str, timeout: Duration) -> Result<Offsets> {
    let partitions = partition_count(cfg, topic, timeout)?;
    let mut client = cfg.client(&[]);
    client.set("group.id", group);
    let consumer: BaseConsumer = client.create().map_err(|e| broker_error("creating a group client", e))?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, timeout)
        .map_err(|e| broker_error(&format!("reading the commits of group {group}"), e))?;
    let offsets = committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect();
    Ok(offsets)
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
