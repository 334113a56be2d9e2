//! `odl simulate --kafka`: the simulated replay lines produced to one topic per stream
//! (JOIN.md "Events": in Kafka each stream has its own topic). Lines are written
//! unchanged, `"stream"` field included, so a malformed line stays malformed for the
//! joiner; lines that name no known stream go to the exposure topic. Messages are
//! keyed by `pv_id` when they have one (a page view's events share a partition).

use odl_proto::event::StreamKind;
use odl_proto::stream::kafka::{ensure_topics, KafkaConfig, KafkaSink};
use odl_proto::stream::{RecordSink, Result};

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

/// A [`RecordSink`] that routes each replay line to its stream's topic.
pub struct KafkaRouter {
    sinks: Vec<(StreamKind, KafkaSink)>,
}

impl KafkaRouter {
    /// Creates the topics that are missing (`partitions` each) and a producer per topic.
    pub fn create(cfg: &KafkaConfig, topics: &StreamTopics, partitions: i32) -> Result<Self> {
        let wanted: Vec<(&str, i32)> = topics.all().iter().map(|(_, t)| (*t, partitions)).collect();
        ensure_topics(cfg, &wanted)?;
        let sinks = topics.all().into_iter().map(|(s, t)| Ok((s, KafkaSink::create(cfg, t)?))).collect::<Result<_>>()?;
        Ok(KafkaRouter { sinks })
    }

    fn sink(&mut self, stream: StreamKind) -> &mut KafkaSink {
        let i = self.sinks.iter().position(|(s, _)| *s == stream).unwrap_or(0);
        &mut self.sinks[i].1
    }
}

impl RecordSink for KafkaRouter {
    fn send(&mut self, _key: Option<&[u8]>, value: &[u8]) -> Result<()> {
        let stream = string_field(value, STREAM).and_then(|s| StreamKind::parse(std::str::from_utf8(s).ok()?));
        let key = string_field(value, PV_ID);
        self.sink(stream.unwrap_or(StreamKind::Exposure)).send(key, value)
    }

    /// Waits until every record is acknowledged, however long the broker is away.
    fn flush(&mut self) -> Result<()> {
        for (_, sink) in &mut self.sinks {
            loop {
                match sink.flush() {
                    Ok(()) => break,
                    Err(e) if e.retryable() => tracing::warn!(topic = sink.topic(), "{e}; still waiting"),
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

const STREAM: &[u8] = br#""stream":""#;
const PV_ID: &[u8] = br#""pv_id":""#;

/// The text of the first `"name":"text"` in `line` (`prefix` is `"name":"`; the
/// simulator writes no spaces and no escapes in these fields, both near the start).
fn string_field<'a>(line: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let start = line.windows(prefix.len()).position(|w| w == prefix)? + prefix.len();
    let len = line[start..].iter().position(|&b| b == b'"')?;
    Some(&line[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_and_key_are_read_from_the_line() {
        let line = br#"{"stream":"detail_click","pv_id":"pv1-7","item_id":"i3","ts":5}"#;
        assert_eq!(string_field(line, STREAM), Some(&b"detail_click"[..]));
        assert_eq!(string_field(line, PV_ID), Some(&b"pv1-7"[..]));
        assert_eq!(string_field(b"garbage line 9", STREAM), None);
        assert_eq!(string_field(br#"{"stream":"unterminated"#, STREAM), None);
    }
}
