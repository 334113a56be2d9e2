//! Versions to Kafka (`extensions.transport = "kafka"`): the publisher hands each
//! published version's messages to [`KafkaTransport::write`], which produces its
//! records to the param-update topic, waits until the broker acknowledged all of
//! them, then writes the version's announce (with the offsets it got back) to the
//! control topic. The wire format is in [`super::announce`].
//!
//! Writes happen in version order under the publisher's cut lock, so on every
//! partition a version's records lie after those of every earlier announced version.
//! A broker outage blocks the publisher (the version stays `PUSH_ONLINE`; the next
//! cut waits): it retries with backoff, logging, until the broker is back or the PS
//! stops. Nothing is dropped.
//!
//! Retention on a real cluster: a node that starts catches up from the newest full
//! version, so both topics must keep at least everything since the newest announced
//! full version — `retention.ms` comfortably above `full_version_interval_time`
//! (e.g. 3× it, or unlimited on the small control topic), and `retention.bytes`
//! unlimited or above a full version's size times `keep_full_versions`. The records
//! must not be compacted (keys repeat within a version).

use super::announce::{record_key, route};
use super::{PublishError, Result};
use odl_proto::publish_rpc::{self as rpc, update::Body, Update};
use odl_proto::stream::kafka::{ensure_topics, partition_count, KafkaConfig, KafkaSink};
use odl_proto::stream::{RecordSink, StreamError};
use odl_proto::version::Version;
use prost::Message;
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Largest row chunk written as one record: under librdkafka's and Kafka's default
/// 1 MB message limit (gRPC chunks are up to 1 MiB of rows).
const MAX_RECORD_ROWS_BYTES: usize = 512 << 10;

/// `u` as records of at most [`MAX_RECORD_ROWS_BYTES`] of rows each.
fn split_rows(u: &Update) -> Vec<Update> {
    let Some(Body::Rows(r)) = &u.body else {
        return vec![u.clone()];
    };
    if r.keys.len() + r.values.len() + r.deleted.len() <= MAX_RECORD_ROWS_BYTES {
        return vec![u.clone()];
    }
    let row_bytes = 8 + 4 * r.dim.max(1) as usize;
    let per = (MAX_RECORD_ROWS_BYTES / row_bytes).max(1);
    let n = r.keys.len() / 8;
    let mut out = Vec::new();
    let piece = |keys: &[u8], values: &[u8], deleted: &[u8]| Update {
        version: u.version,
        body: Some(Body::Rows(rpc::RowChunk {
            table: r.table.clone(),
            partition: r.partition,
            dim: r.dim,
            keys: keys.to_vec(),
            values: values.to_vec(),
            deleted: deleted.to_vec(),
        })),
    };
    let vdim = 4 * r.dim as usize;
    for start in (0..n).step_by(per) {
        let end = (start + per).min(n);
        out.push(piece(
            &r.keys[start * 8..end * 8],
            &r.values[start * vdim..end * vdim],
            &[],
        ));
    }
    for d in r.deleted.chunks(MAX_RECORD_ROWS_BYTES / 8 * 8) {
        out.push(piece(&[], &[], d));
    }
    out
}

pub struct KafkaTransport {
    cfg: KafkaConfig,
    update_topic: String,
    control_topic: String,
    partitions: u32,
    inner: Mutex<Inner>,
}

struct Inner {
    updates: KafkaSink,
    control: KafkaSink,
    topics_checked: bool,
}

fn broker(e: StreamError) -> PublishError {
    PublishError::Source(format!("kafka: {e}"))
}

impl KafkaTransport {
    /// Producers for both topics (no broker needed yet: topics are created and
    /// checked before the first write).
    pub fn new(
        cfg: &KafkaConfig,
        update_topic: &str,
        control_topic: &str,
        partitions: u32,
    ) -> Result<KafkaTransport> {
        let sink = |t: &str| {
            KafkaSink::create(cfg, t).map_err(|e| PublishError::Config(format!("kafka: {e}")))
        };
        Ok(KafkaTransport {
            inner: Mutex::new(Inner {
                updates: sink(update_topic)?,
                control: sink(control_topic)?,
                topics_checked: false,
            }),
            cfg: cfg.clone(),
            update_topic: update_topic.to_string(),
            control_topic: control_topic.to_string(),
            partitions,
        })
    }

    /// Create the topics if missing; the update topic must have exactly
    /// `update_partition_count` partitions, since partition p carries row partition p.
    fn check_topics(&self) -> Result<()> {
        let n = self.partitions as i32;
        ensure_topics(
            &self.cfg,
            &[(&self.update_topic, n), (&self.control_topic, 1)],
        )
        .map_err(broker)?;
        let have = partition_count(&self.cfg, &self.update_topic, Duration::from_secs(10))
            .map_err(broker)?;
        if have != n {
            return Err(PublishError::Config(format!(
                "topic {} has {have} partitions but update_partition_count is {n}",
                self.update_topic
            )));
        }
        Ok(())
    }

    /// Write one version and announce it; retries through broker outages until
    /// `closing` is cancelled. Returns the announce written.
    pub fn write(
        &self,
        version: Version,
        updates: &[Update],
        closing: &CancellationToken,
    ) -> Result<rpc::Announce> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait = Duration::from_millis(200);
        let mut retry = |what: &str, e: PublishError| -> Result<()> {
            if closing.is_cancelled() || matches!(e, PublishError::Config(_)) {
                return Err(e);
            }
            tracing::warn!(version = version.0, error = %e, "kafka: {what} failed; retrying");
            std::thread::sleep(wait);
            wait = (wait * 2).min(MAX_BACKOFF);
            Ok(())
        };
        while !inner.topics_checked {
            match self.check_topics() {
                Ok(()) => inner.topics_checked = true,
                Err(e) => retry("checking topics", e)?,
            }
        }
        let key = record_key(version);
        let mut header = None;
        let mut rows = 0;
        inner.updates.take_delivered();
        for u in updates {
            match (&u.body, route(u)) {
                (Some(Body::Header(_)), _) => header = Some(u.clone()),
                (Some(Body::End(e)), _) => rows = e.rows,
                (_, Some(p)) => {
                    if p >= self.partitions as i32 {
                        return Err(PublishError::Invalid(format!(
                            "row chunk of partition {p} with {} partitions",
                            self.partitions
                        )));
                    }
                    for piece in split_rows(u) {
                        inner
                            .updates
                            .send_to(Some(p), Some(&key), &piece.encode_to_vec())
                            .map_err(broker)?
                    }
                }
                _ => {}
            }
        }
        while let Err(e) = inner.updates.flush() {
            retry("writing the update records", broker(e))?;
        }
        let delivered = inner.updates.take_delivered();
        let announce = rpc::Announce {
            version: version.0,
            header: Some(header.ok_or_else(|| {
                PublishError::Invalid(format!("version {version} has no header"))
            })?),
            parts: delivered
                .into_iter()
                .map(|(partition, d)| rpc::PartRange {
                    partition,
                    first_offset: d.first_offset,
                    last_offset: d.last_offset,
                    records: d.records,
                })
                .collect(),
            rows,
        };
        inner
            .control
            .send_to(Some(0), Some(&key), &announce.encode_to_vec())
            .map_err(broker)?;
        while let Err(e) = inner.control.flush() {
            retry("writing the announce", broker(e))?;
        }
        Ok(announce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_row_chunks_are_split_into_records_under_the_limit() {
        let n = 20_000usize;
        let u = Update {
            version: 3,
            body: Some(Body::Rows(rpc::RowChunk {
                table: "t".into(),
                partition: 2,
                dim: 16,
                keys: (0..n as u64).flat_map(|k| k.to_le_bytes()).collect(),
                values: vec![0; n * 64],
                deleted: (0..100_000u64).flat_map(|k| k.to_le_bytes()).collect(),
            })),
        };
        let pieces = split_rows(&u);
        assert!(pieces.len() > 3);
        let (mut keys, mut deleted) = (0, 0);
        for p in &pieces {
            assert!(p.encoded_len() < 1_000_000);
            let Some(Body::Rows(r)) = &p.body else {
                panic!()
            };
            assert_eq!((r.partition, r.dim, p.version), (2, 16, 3));
            assert_eq!(r.values.len(), r.keys.len() / 8 * 64);
            keys += r.keys.len() / 8;
            deleted += r.deleted.len() / 8;
        }
        assert_eq!((keys, deleted), (n, 100_000));
    }
}
