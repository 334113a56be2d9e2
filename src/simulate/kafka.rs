//! `odl simulate --kafka`: the simulated replay lines produced to one topic per stream
//! (JOIN.md "Events": in Kafka each stream has its own topic). Lines are written
//! unchanged, `"stream"` field included, so a malformed line stays malformed for the
//! joiner; lines that name no known stream go to the exposure topic. Messages are
//! keyed by `pv_id` when they have one (a page view's events share a partition).

use memchr::memmem::Finder;
use odl_proto::event::StreamKind;
use odl_proto::stream::kafka::{ensure_topics, KafkaConfig, KafkaSink};
use odl_proto::stream::{RecordSink, Result};
use std::sync::LazyLock;

/// Topic per stream.
#[derive(Clone, Debug)]
pub struct StreamTopics {
    pub exposure: String,
    pub click: String,
    pub detail_click: String,
    pub feature: String,
}

impl StreamTopics {
    fn all(&self) -> [(StreamKind, &str); 4] {
        [
            (StreamKind::Exposure, &self.exposure),
            (StreamKind::Click, &self.click),
            (StreamKind::DetailClick, &self.detail_click),
            (StreamKind::Feature, &self.feature),
        ]
    }
}

/// A [`RecordSink`] that routes each replay line to its stream's topic, through one
/// producer for all four (a producer per topic cost a client's threads each, on the
/// cores the joiner shares in `odl bench kafka`).
pub struct KafkaRouter {
    producer: KafkaSink,
    topics: Vec<(StreamKind, String)>,
}

impl KafkaRouter {
    /// Creates the topics that are missing (`partitions` each) and the producer.
    pub fn create(cfg: &KafkaConfig, topics: &StreamTopics, partitions: i32) -> Result<Self> {
        let wanted: Vec<(&str, i32)> = topics.all().iter().map(|(_, t)| (*t, partitions)).collect();
        ensure_topics(cfg, &wanted)?;
        let producer = KafkaSink::create(cfg, &topics.exposure)?;
        Ok(KafkaRouter { producer, topics: topics.all().iter().map(|(s, t)| (*s, t.to_string())).collect() })
    }

    fn topic_index(&self, stream: StreamKind) -> usize {
        self.topics.iter().position(|(s, _)| *s == stream).unwrap_or(0)
    }
}

impl RecordSink for KafkaRouter {
    fn send(&mut self, _key: Option<&[u8]>, value: &[u8]) -> Result<()> {
        let stream = string_field(value, &STREAM).and_then(|s| StreamKind::parse(std::str::from_utf8(s).ok()?));
        let key = string_field(value, &PV_ID);
        let i = self.topic_index(stream.unwrap_or(StreamKind::Exposure));
        self.producer.send_to_topic(&self.topics[i].1, None, key, value)
    }

    /// Waits until every record is acknowledged, however long the broker is away.
    fn flush(&mut self) -> Result<()> {
        loop {
            match self.producer.flush() {
                Ok(()) => return Ok(()),
                Err(e) if e.retryable() => tracing::warn!("{e}; still waiting"),
                Err(e) => return Err(e),
            }
        }
    }
}

static STREAM: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""stream":""#));
static PV_ID: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""pv_id":""#));

/// The text of the first `"name":"text"` in `line` (`prefix` finds `"name":"`; the
/// simulator writes no spaces and no escapes in these fields, both near the start).
fn string_field<'a>(line: &'a [u8], prefix: &Finder<'_>) -> Option<&'a [u8]> {
    let start = prefix.find(line)? + prefix.needle().len();
    let len = memchr::memchr(b'"', &line[start..])?;
    Some(&line[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_and_key_are_read_from_the_line() {
        let line = br#"{"stream":"detail_click","pv_id":"pv1-7","item_id":"i3","ts":5}"#;
        assert_eq!(string_field(line, &STREAM), Some(&b"detail_click"[..]));
        assert_eq!(string_field(line, &PV_ID), Some(&b"pv1-7"[..]));
        assert_eq!(string_field(b"garbage line 9", &STREAM), None);
        assert_eq!(string_field(br#"{"stream":"unterminated"#, &STREAM), None);
    }
}
