//! Producing to one topic as a [`RecordSink`].

use super::{broker_error, KafkaConfig};
use crate::stream::{RecordSink, Result, StreamError};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct KafkaSink {
    producer: BaseProducer<DeliveryReport>,
    topic: String,
    flush_timeout: Duration,
    /// Sends since delivery reports were last served (see [`SENDS_PER_POLL`]).
    unpolled: u32,
}

/// Delivery reports are served once per this many sends (and by every flush), not
/// after each: a poll that finds nothing still costs a queue lock and a clock read,
/// and took ~6% of the Kafka joiner's main thread when run after every sample. The
/// reports wait in librdkafka meanwhile; nothing is lost.
const SENDS_PER_POLL: u32 = 64;

/// Delivery callbacks (run inside `poll`/`flush`): a record that can never be
/// delivered (too large, topic deleted) is counted and its error kept for `flush`.
#[derive(Default)]
struct DeliveryReport {
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
    delivered: Mutex<BTreeMap<i32, Delivered>>,
}

/// Where acknowledged records landed on one partition since the last
/// [`KafkaSink::take_delivered`]: a writer that announces its records elsewhere (the
/// publisher's control topic) says where to find them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub first_offset: i64,
    pub last_offset: i64,
    pub records: u64,
}

impl ClientContext for DeliveryReport {}

impl ProducerContext for DeliveryReport {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Ok(m) = result {
            let (p, o) = (m.partition(), m.offset());
            let mut d = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
            let e = d.entry(p).or_insert(Delivered { first_offset: o, last_offset: o, records: 0 });
            e.first_offset = e.first_offset.min(o);
            e.last_offset = e.last_offset.max(o);
            e.records += 1;
        }
        if let Err((e, m)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            let what = format!("record to {} [{}] not delivered: {e}", m.topic(), m.partition());
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(what);
        }
    }
}

/// Producer defaults: records wait in librdkafka's queue through any broker outage
/// (no delivery timeout) instead of being dropped, and are batched briefly.
const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("message.timeout.ms", "0"),
    ("linger.ms", "5"),
    ("queue.buffering.max.messages", "1000000"),
    ("queue.buffering.max.kbytes", "1048576"),
];

/// How often a sink blocked on a full queue says so in the log.
const STALL_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl KafkaSink {
    pub fn create(cfg: &KafkaConfig, topic: &str) -> Result<Self> {
        let producer = cfg
            .client(PRODUCER_DEFAULTS)
            .create_with_context(DeliveryReport::default())
            .map_err(|e| broker_error("creating a producer", e))?;
        Ok(KafkaSink { producer, topic: topic.to_string(), flush_timeout: cfg.flush_timeout(), unpolled: 0 })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Records that could not be delivered at all (each also fails a later `flush`).
    pub fn failed(&self) -> u64 {
        self.producer.context().failed.load(Ordering::Relaxed)
    }

    /// Send to an explicit partition (`None`: by key, librdkafka's consistent hash).
    /// Blocks while the local queue is full, i.e. while the broker is unreachable.
    pub fn send_to(&mut self, partition: Option<i32>, key: Option<&[u8]>, value: &[u8]) -> Result<()> {
        let topic = std::mem::take(&mut self.topic);
        let sent = self.send_to_topic(&topic, partition, key, value);
        self.topic = topic;
        sent
    }

    /// [`KafkaSink::send_to`] another topic than the sink's own, through the same
    /// producer: one writer of several topics (the simulator's four streams) needs one
    /// client, not one per topic. Delivery reports ([`KafkaSink::take_delivered`]) do
    /// not tell the topics apart.
    pub fn send_to_topic(&mut self, topic: &str, partition: Option<i32>, key: Option<&[u8]>, value: &[u8]) -> Result<()> {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(value);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        let mut stalled_since: Option<Instant> = None;
        let mut last_log = Instant::now();
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    let since = *stalled_since.get_or_insert_with(Instant::now);
                    if last_log.elapsed() >= STALL_LOG_INTERVAL {
                        tracing::warn!(topic, waited_s = since.elapsed().as_secs(),
                            "kafka: producer queue full, waiting for the broker");
                        last_log = Instant::now();
                    }
                    self.producer.poll(Duration::from_millis(100));
                }
                Err((e, _)) => return Err(broker_error(&format!("producing to {topic}"), e)),
            }
        }
        self.unpolled += 1;
        if self.unpolled >= SENDS_PER_POLL {
            self.unpolled = 0;
            self.producer.poll(Duration::ZERO);
        }
        Ok(())
    }

    /// Per partition, the offsets of the records acknowledged since the previous call
    /// (call after a successful `flush` to cover everything sent).
    pub fn take_delivered(&self) -> BTreeMap<i32, Delivered> {
        std::mem::take(&mut *self.producer.context().delivered.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn take_failure(&self) -> Option<String> {
        self.producer.context().last_error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl RecordSink for KafkaSink {
    fn send(&mut self, key: Option<&[u8]>, value: &[u8]) -> Result<()> {
        self.send_to(None, key, value)
    }

    /// Wait until everything sent has been acknowledged by the broker. A timeout is a
    /// retryable error: the records stay queued and a later flush may succeed.
    fn flush(&mut self) -> Result<()> {
        let flushed = self.producer.flush(self.flush_timeout);
        if let Some(e) = self.take_failure() {
            return Err(StreamError::Broker(e));
        }
        flushed.map_err(|e| {
            StreamError::Broker(format!(
                "{} records to {} not acknowledged within {:?}: {e}",
                self.producer.in_flight_count(),
                self.topic,
                self.flush_timeout
            ))
        })
    }
}
