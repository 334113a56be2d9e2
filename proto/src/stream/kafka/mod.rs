//! Kafka behind the record-stream traits (rdkafka over librdkafka).
//!
//! The traits are synchronous and batched, so both sides use rdkafka's *base* clients:
//! the caller's thread polls, which is also where rebalance callbacks run, so nothing
//! happens to a consumer between two calls its owner makes.
//!
//! Two ways to consume, because odl's services recover in two ways:
//! - [`KafkaSource::assign`]: every partition of a topic from offsets the caller keeps
//!   itself. The joiner checkpoints its offsets together with its buffered state
//!   (Kafka's own commits could not be atomic with that state), and starts from them.
//! - [`KafkaSource::subscribe`]: a consumer group. Trainer workers share a topic this
//!   way and commit (`RecordSource::commit`) only once a batch's gradients reached the
//!   parameter server.
//!
//! Broker outages never lose data: the producer retries forever (`message.timeout.ms`
//! 0) and `flush` reports a retryable error while records are still queued; consumer
//! errors come back as [`StreamError::Broker`], which callers retry with backoff.

mod admin;
mod batch;
mod config;
mod sink;
mod source;
mod stale_group;
#[cfg(test)]
mod tests;

pub use admin::{check_connection, committed_offsets, ensure_topics, partition_count};
pub use config::KafkaConfig;
pub use sink::{Delivered, KafkaSink};
pub use source::{KafkaSource, Offsets, PartitionEnds};

use super::StreamError;
use rdkafka::error::KafkaError;

/// A client error as the stream's error: retryable (a broker that may come back)
/// unless librdkafka refused the client's settings.
fn broker_error(what: &str, e: KafkaError) -> StreamError {
    match e {
        KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) => StreamError::Config(format!("{what}: {e}")),
        e => StreamError::Broker(format!("{what}: {e}")),
    }
}
