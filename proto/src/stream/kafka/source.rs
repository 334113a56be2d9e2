//! Consuming one topic as a [`RecordSource`].

use super::batch::{BatchQueue, Message as Batched};
use super::stale_group::StaleGroupWatch;
use super::{broker_error, KafkaConfig};
use crate::stream::{Poll, Record, RecordSource, Result, StreamError};
use bytes::{Bytes, BytesMut};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Next offset to read per partition: what a consumer has returned so far, and what a
/// restarted one starts from.
pub type Offsets = BTreeMap<i32, i64>;

/// How long metadata and watermark requests may take before the call reports a
/// (retryable) broker error.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the group check's requests may take: it runs inside `poll`, and a broker
/// that is down must not hold the poll for long (the check is simply skipped).
const GROUP_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub struct KafkaSource {
    consumer: Arc<BaseConsumer<GroupContext>>,
    /// The same consumer, for the questions about partition ends (lag, probes).
    ends: PartitionEnds,
    topic: String,
    /// Next offset per partition after the records returned so far.
    returned: Offsets,
    /// Whether offsets are committed to a consumer group (subscribe) or kept by the
    /// caller (assign).
    grouped: bool,
    /// Group mode: the least time between two commits to the broker (see
    /// [`KafkaSource::set_commit_interval`]).
    commit_interval: Duration,
    last_commit: Option<Instant>,
    /// Group mode: the group's name and what its member has seen of it.
    group: Option<GroupWatch>,
    copier: Copier,
    /// Assign mode: the queue the partitions forward to, read a batch per call
    /// ([`super::batch`]).
    batch: Option<BatchQueue<GroupContext>>,
}

/// Group mode: watching for an assignment that leaves partitions to nobody
/// ([`super::stale_group`]).
struct GroupWatch {
    name: String,
    watch: StaleGroupWatch,
    last_check: Option<Instant>,
    /// Left the group to rejoin it, and the new subscription is still to be made.
    resubscribe: bool,
}

/// Rebalance callbacks run inside `poll`; they record what the group took away, so
/// the source stops tracking (and committing) partitions it no longer owns, and they
/// commit what was processed of a revoked partition before its next owner reads it.
#[derive(Default)]
struct GroupContext {
    /// Whether `revoked` may hold partitions: read after every message, so that a
    /// consumer that is never rebalanced (assign mode) takes no lock for it.
    any_revoked: AtomicBool,
    revoked: Arc<Mutex<Vec<i32>>>,
    assigned: Arc<Mutex<Vec<i32>>>,
    /// Group mode: the positions the caller declared processed (`commit`), committed
    /// to the broker or waiting for the next commit.
    processed: Mutex<Offsets>,
    /// What the broker acknowledged last, so an unchanged position is not sent again.
    committed: Mutex<Offsets>,
    topic: String,
}

impl GroupContext {
    /// Commit the processed positions of `partitions` (all of them: `None`).
    fn commit_processed<C: Consumer<GroupContext>>(&self, consumer: &C, partitions: Option<&[i32]>) -> Result<()> {
        let processed = lock(&self.processed);
        let mut committed = lock(&self.committed);
        let mut tpl = TopicPartitionList::new();
        for (&p, &next) in processed.iter() {
            let wanted = partitions.map_or(true, |ps| ps.contains(&p));
            if wanted && committed.get(&p) != Some(&next) {
                tpl.add_partition_offset(&self.topic, p, Offset::Offset(next))
                    .map_err(|e| broker_error("building the commit", e))?;
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        consumer
            .commit(&tpl, CommitMode::Sync)
            .map_err(|e| StreamError::Broker(format!("committing offsets of {}: {e}", self.topic)))?;
        for e in tpl.elements() {
            if let Offset::Offset(o) = e.offset() {
                committed.insert(e.partition(), o);
            }
        }
        Ok(())
    }
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(partitions = ?parts, "kafka: partitions revoked");
            // What was processed of them is committed now where the broker allows it
            // (some, like librdkafka's mock, refuse commits once a rebalance began):
            // otherwise the next owner processes it again. A commit interval of zero
            // leaves nothing to commit here.
            if let Err(e) = self.commit_processed(consumer, Some(&parts)) {
                tracing::warn!("kafka: commit on revocation failed ({e}); the next owner re-reads from the last commit");
            }
            for p in &parts {
                lock(&self.processed).remove(p);
                lock(&self.committed).remove(p);
            }
            lock(&self.assigned).retain(|p| !parts.contains(p));
            lock(&self.revoked).extend(parts);
            self.any_revoked.store(true, Ordering::Release);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(partitions = ?parts, "kafka: partitions assigned");
                *lock(&self.assigned) = parts;
            }
            Rebalance::Error(e) => tracing::warn!("kafka: rebalance failed: {e}"),
            Rebalance::Revoke(_) => {}
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Consumer defaults: offsets are committed explicitly (never by a timer, which would
/// commit records not yet processed), a new group starts at the beginning of the
/// topic, and a dead member is noticed within seconds.
const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("auto.offset.reset", "earliest"),
    ("enable.partition.eof", "false"),
    ("session.timeout.ms", "6000"),
    ("heartbeat.interval.ms", "1000"),
    // tansu 0.6 holds every fetch for the whole wait and returns at most
    // max.partition.fetch.bytes (1 MB) per partition: at 100 ms that capped a consumer
    // at ~40 MB/s (odl bench kafka: broker produce->consume 190k events/s at 100 ms,
    // 560k at 10 ms). Kafka answers as soon as data is there, so on it this only sets
    // how often an idle consumer asks.
    ("fetch.wait.max.ms", "10"),
    // A partition whose local queue is full (queued.min.messages) is not fetched again
    // for this long; librdkafka's default of 1 s starved a consumer that empties its
    // queue faster than that: odl bench kafka's joiner sat idle for 0.6-0.7 s at a time
    // with records waiting on the broker (end to end 2.6 s, 1.9 s at 10 ms).
    ("fetch.queue.backoff.ms", "10"),
];

impl KafkaSource {
    /// Join consumer group `group` on `topic`; the group's committed offsets say where
    /// to start (the beginning of the topic for a new group).
    pub fn subscribe(cfg: &KafkaConfig, topic: &str, group: &str) -> Result<Self> {
        let consumer = Self::consumer(cfg, Some(group), topic)?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| broker_error(&format!("subscribing to {topic}"), e))?;
        let session_ms = cfg.client(CONSUMER_DEFAULTS).get("session.timeout.ms").and_then(|v| v.parse().ok());
        let watch = StaleGroupWatch::new(Duration::from_millis(session_ms.unwrap_or(45_000)));
        let mut source = Self::new(Arc::new(consumer), topic, None);
        source.group = Some(GroupWatch { name: group.to_string(), watch, last_check: None, resubscribe: false });
        Ok(source)
    }

    /// Read every partition of `topic`, each from its offset in `start` (the beginning
    /// of the partition where `start` has none). Nothing is committed to Kafka: the
    /// caller checkpoints [`KafkaSource::positions`] with its own state.
    pub fn assign(cfg: &KafkaConfig, topic: &str, start: &Offsets) -> Result<Self> {
        let partitions = super::partition_count(cfg, topic, METADATA_TIMEOUT)?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            let offset = start.get(&p).map_or(Offset::Beginning, |&o| Offset::Offset(o));
            tpl.add_partition_offset(topic, p, offset)
                .map_err(|e| broker_error("building the assignment", e))?;
        }
        let mut source = Self::assigned(cfg, topic, &tpl)?;
        source.returned = start.clone();
        Ok(source)
    }

    /// Read only the partitions in `start`, each from its offset there (a negative
    /// offset: the beginning of the partition). Like [`KafkaSource::assign`], nothing
    /// is committed. A serving node reads the partitions it owns this way, from the
    /// offsets the publisher's control topic names.
    pub fn assign_partitions(cfg: &KafkaConfig, topic: &str, start: &Offsets) -> Result<Self> {
        let mut tpl = TopicPartitionList::new();
        for (&p, &o) in start {
            let offset = if o < 0 { Offset::Beginning } else { Offset::Offset(o) };
            tpl.add_partition_offset(topic, p, offset)
                .map_err(|e| broker_error("building the assignment", e))?;
        }
        let mut source = Self::assigned(cfg, topic, &tpl)?;
        source.returned = start.iter().filter(|(_, &o)| o >= 0).map(|(&p, &o)| (p, o)).collect();
        Ok(source)
    }

    /// A consumer of the partitions in `tpl`, from their offsets there, read in
    /// batches ([`super::batch`]).
    fn assigned(cfg: &KafkaConfig, topic: &str, tpl: &TopicPartitionList) -> Result<Self> {
        let consumer = Arc::new(Self::consumer(cfg, None, topic)?);
        let partitions = tpl.elements().iter().map(|e| e.partition()).collect::<Vec<_>>();
        let batch = BatchQueue::new(&consumer, topic, partitions)
            .ok_or_else(|| StreamError::Broker(format!("librdkafka has no partition queue of {topic}")))?;
        consumer
            .assign(tpl)
            .map_err(|e| broker_error(&format!("assigning {topic}"), e))?;
        Ok(Self::new(consumer, topic, Some(batch)))
    }

    fn consumer(cfg: &KafkaConfig, group: Option<&str>, topic: &str) -> Result<BaseConsumer<GroupContext>> {
        let mut client = cfg.client(CONSUMER_DEFAULTS);
        // librdkafka wants a group id even for a plain assignment; it is never used
        // for commits there.
        client.set("group.id", group.unwrap_or("odl-unused-assign-only"));
        client
            .create_with_context(GroupContext { topic: topic.to_string(), ..GroupContext::default() })
            .map_err(|e| broker_error("creating a consumer", e))
    }

    /// A source on `consumer`: assigned partitions read through `batch`, or a group
    /// (`None`).
    fn new(consumer: Arc<BaseConsumer<GroupContext>>, topic: &str, batch: Option<BatchQueue<GroupContext>>) -> Self {
        let grouped = batch.is_none();
        KafkaSource {
            ends: PartitionEnds { consumer: Arc::clone(&consumer), topic: topic.to_string(), grouped },
            consumer,
            topic: topic.to_string(),
            returned: Offsets::new(),
            grouped,
            commit_interval: Duration::ZERO,
            last_commit: None,
            group: None,
            copier: Copier::default(),
            batch,
        }
    }

    /// Group mode: let `commit` reach the broker at most once per `interval` (default:
    /// every call), saving a broker round trip per small batch. What was declared
    /// processed in between is committed when the source is dropped and, where the
    /// broker accepts it, when a partition is revoked; a crash (or a broker that
    /// refuses commits during a rebalance) has the next owner process it again.
    pub fn set_commit_interval(&mut self, interval: Duration) {
        self.commit_interval = interval;
    }

    /// Group mode: commit every processed position now, whatever the interval.
    pub fn commit_now(&mut self) -> Result<()> {
        self.forget_revoked();
        self.last_commit = Some(Instant::now());
        self.consumer.context().commit_processed(&*self.consumer, None)
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Next offset per partition after everything returned so far.
    pub fn positions(&self) -> &Offsets {
        &self.returned
    }

    /// The partitions this consumer owns now (after the last rebalance it saw).
    pub fn assignment(&self) -> Vec<i32> {
        self.ends.assignment()
    }

    /// A handle on this consumer's partition ends for another thread, which can ask
    /// for the lag while this source is being polled.
    pub fn ends(&self) -> PartitionEnds {
        self.ends.clone()
    }

    /// Messages behind each owned partition's high watermark: the consumer lag, asked
    /// of the broker (a round trip per partition).
    pub fn lag(&self) -> Result<BTreeMap<i32, i64>> {
        self.ends.lag(&self.returned)
    }

    /// [`KafkaSource::lag`] from the watermarks librdkafka keeps; see
    /// [`PartitionEnds::cached_lag`].
    pub fn cached_lag(&self) -> BTreeMap<i32, Option<i64>> {
        self.ends.cached_lag(&self.returned)
    }

    /// One round trip to the broker: whether it answers now ([`PartitionEnds::probe`]).
    pub fn probe(&self) -> Result<()> {
        self.ends.probe()
    }

    /// The high watermark (offset after the last record) of each owned partition.
    /// A producer that is a topic's only writer reads its own progress from it.
    pub fn end_offsets(&self) -> Result<Offsets> {
        self.ends.end_offsets()
    }

    /// Assign mode's poll: a batch ([`BatchQueue::read`]); an error fails the poll
    /// only when no record came.
    fn poll_batch(&mut self, max: usize, timeout: Duration) -> Result<Poll> {
        let Some(batch) = self.batch.as_mut() else { return Ok(Poll::Idle) };
        let (copier, returned, mut out) = (&mut self.copier, &mut self.returned, Vec::new());
        match batch.read(max, timeout, |m| out.push(copier.record(returned, m))) {
            Some(e) if out.is_empty() => Err(broker_error(&format!("consuming {}", self.topic), e)),
            Some(e) => {
                tracing::warn!(topic = %self.topic, "kafka: {e}");
                Ok(Poll::Records(out))
            }
            None if out.is_empty() => Ok(Poll::Idle),
            None => Ok(Poll::Records(out)),
        }
    }

    fn forget_revoked(&mut self) {
        drop_revoked(self.consumer.context(), &mut self.returned, &mut Vec::new());
    }

    /// Group mode, once per check interval: describes the group, and leaves and rejoins
    /// it when this member owns less than its share. A failed request skips the check
    /// (the broker's trouble shows in the poll itself).
    fn watch_group(&mut self) {
        let Some(g) = self.group.as_mut() else { return };
        if g.resubscribe {
            match self.consumer.subscribe(&[&self.topic]) {
                Ok(()) => g.resubscribe = false,
                Err(e) => tracing::warn!(topic = %self.topic, "kafka: rejoining the group failed ({e}); retrying"),
            }
            return;
        }
        let now = Instant::now();
        if g.last_check.is_some_and(|t| now.saturating_duration_since(t) < g.watch.check_every()) {
            return;
        }
        g.last_check = Some(now);
        let described = self.consumer.fetch_group_list(Some(g.name.as_str()), GROUP_CHECK_TIMEOUT).and_then(|list| {
            let members = list.groups().iter().find(|x| x.name() == g.name).map_or(0, |x| x.members().len());
            let metadata = self.consumer.fetch_metadata(Some(&self.topic), GROUP_CHECK_TIMEOUT)?;
            Ok((members, metadata.topics().first().map_or(0, |t| t.partitions().len())))
        });
        let (members, partitions) = match described {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(group = %g.name, "kafka: describing the group failed: {e}");
                return;
            }
        };
        let owned = lock(&self.consumer.context().assigned).len();
        if !g.watch.stale(owned, partitions, members, now) {
            return;
        }
        tracing::warn!(
            group = %g.name,
            owned,
            partitions,
            members,
            "kafka: this member owns less than its share for longer than a rebalance takes (a broker that keeps \
             a dead member's partitions assigned, like tansu 0.6): leaving and rejoining the group"
        );
        if let Err(e) = self.commit_now() {
            tracing::warn!("kafka: commit before rejoining failed ({e}); the next owner re-reads from the last commit");
        }
        self.consumer.unsubscribe();
        if let Some(g) = self.group.as_mut() {
            g.resubscribe = true;
        }
    }
}

/// What one consumer knows of the ends of its partitions, shared with the thread that
/// polls it (librdkafka clients are thread-safe): a caller that reads a topic on a
/// thread of its own asks for the lag after what *it* has processed, which the reading
/// thread may be ahead of.
#[derive(Clone)]
pub struct PartitionEnds {
    consumer: Arc<BaseConsumer<GroupContext>>,
    topic: String,
    grouped: bool,
}

impl PartitionEnds {
    /// The partitions the consumer owns now (after the last rebalance it saw).
    pub fn assignment(&self) -> Vec<i32> {
        if self.grouped {
            lock(&self.consumer.context().assigned).clone()
        } else {
            self.consumer
                .assignment()
                .map(|t| t.elements().iter().map(|e| e.partition()).collect())
                .unwrap_or_default()
        }
    }

    /// Messages of each owned partition from `next` (the next offset to process per
    /// partition) to its high watermark, asked of the broker (a round trip per
    /// partition).
    pub fn lag(&self, next: &Offsets) -> Result<BTreeMap<i32, i64>> {
        let mut lag = BTreeMap::new();
        for p in self.assignment() {
            let (low, high) = self.fetch_watermarks(p)?;
            lag.insert(p, behind(next, p, low, high));
        }
        Ok(lag)
    }

    /// [`PartitionEnds::lag`] from the watermarks of the last fetch responses, which
    /// librdkafka keeps (at most a fetch old while the partition is being fetched),
    /// without a broker round trip; `None` for a partition with no fetch response yet
    /// (the first few milliseconds after the assignment). A busy caller reads it often:
    /// the round trips of [`PartitionEnds::lag`] held the Kafka joiner's loop for
    /// 130-210 ms per check of its 16 partitions on a loaded machine, and 0.3 s at its
    /// start.
    pub fn cached_lag(&self, next: &Offsets) -> BTreeMap<i32, Option<i64>> {
        let Ok(topic) = std::ffi::CString::new(self.topic.as_str()) else { return BTreeMap::new() };
        let lag = |p| self.cached_watermarks(&topic, p).map(|(low, high)| behind(next, p, low, high));
        self.assignment().into_iter().map(|p| (p, lag(p))).collect()
    }

    /// The low and high watermarks of `partition` that librdkafka last saw, if it saw a
    /// high one (`rd_kafka_get_watermark_offsets`, which rust-rdkafka does not wrap).
    fn cached_watermarks(&self, topic: &std::ffi::CStr, partition: i32) -> Option<(i64, i64)> {
        let (mut low, mut high) = (-1i64, -1i64);
        // SAFETY: the client pointer is valid for as long as `self.consumer` lives, the
        // topic is a NUL-terminated string that outlives the call, and librdkafka only
        // writes the two offsets through the pointers it is given.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
                &mut low,
                &mut high,
            )
        };
        // The low watermark (log start) is only known from newer fetch versions: before
        // anything was read, an unknown one counts the partition from offset 0, which
        // can only overstate the lag (retention may have removed the first records).
        let known = err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0;
        known.then_some((low.max(0), high))
    }

    /// One round trip to the broker (the watermarks of one owned partition, or the
    /// topic's metadata when none is owned): whether it answers now.
    pub fn probe(&self) -> Result<()> {
        match self.assignment().first() {
            Some(&p) => self.fetch_watermarks(p).map(drop),
            None => self
                .consumer
                .fetch_metadata(Some(&self.topic), METADATA_TIMEOUT)
                .map(drop)
                .map_err(|e| broker_error(&format!("reading metadata of {}", self.topic), e)),
        }
    }

    /// The high watermark (offset after the last record) of each owned partition.
    pub fn end_offsets(&self) -> Result<Offsets> {
        let mut ends = Offsets::new();
        for p in self.assignment() {
            ends.insert(p, self.fetch_watermarks(p)?.1);
        }
        Ok(ends)
    }

    fn fetch_watermarks(&self, partition: i32) -> Result<(i64, i64)> {
        self.consumer
            .fetch_watermarks(&self.topic, partition, METADATA_TIMEOUT)
            .map_err(|e| broker_error(&format!("reading watermarks of {}", self.topic), e))
    }
}

/// Records of partition `p` between the next one to process (in `next`, else the
/// partition's start `low`) and `high`.
fn behind(next: &Offsets, p: i32, low: i64, high: i64) -> i64 {
    let next = next.get(&p).copied().unwrap_or(low).max(low);
    (high - next).max(0)
}

/// A rebalance inside this poll took partitions away: what was read of them is not
/// handed out (their next owner reads it from the last commit), so no record is
/// processed by two members.
fn drop_revoked(context: &GroupContext, returned: &mut Offsets, out: &mut Vec<Record>) {
    if !context.any_revoked.swap(false, Ordering::Acquire) {
        return;
    }
    let revoked = std::mem::take(&mut *lock(&context.revoked));
    if !revoked.is_empty() {
        for p in &revoked {
            returned.remove(p);
        }
        out.retain(|r| !revoked.contains(&r.position.partition));
    }
}

/// Copies messages out of librdkafka's buffers into shared blocks: one allocation per
/// [`BLOCK_BYTES`] instead of one per key and per value (malloc and free of those were
/// ~6% of the Kafka joiner's main thread). A block is freed when its last record is,
/// and is filled across polls, so a slow stream does not pin a block per poll.
#[derive(Default)]
struct Copier {
    block: BytesMut,
}

/// Small enough that one long-lived record pins little beside itself, large enough
/// to hold a few hundred events.
const BLOCK_BYTES: usize = 64 << 10;

impl Copier {
    fn copy(&mut self, bytes: &[u8]) -> Bytes {
        if self.block.capacity() - self.block.len() < bytes.len() {
            self.block = BytesMut::with_capacity(BLOCK_BYTES.max(bytes.len()));
        }
        self.block.extend_from_slice(bytes);
        self.block.split().freeze()
    }

    /// A message as a record, noting its partition's next offset.
    fn record(&mut self, returned: &mut Offsets, m: Batched<'_>) -> Record {
        let position = m.position;
        match returned.get_mut(&position.partition) {
            Some(next) => *next = position.offset + 1,
            None => {
                returned.insert(position.partition, position.offset + 1);
            }
        }
        Record { key: m.key.map(|k| self.copy(k)), value: self.copy(m.payload), position }
    }
}

impl RecordSource for KafkaSource {
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Poll> {
        if self.batch.is_some() {
            return self.poll_batch(max, timeout);
        }
        self.watch_group();
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut wait = timeout;
        while out.len() < max.max(1) {
            let polled = self.consumer.poll(wait);
            drop_revoked(self.consumer.context(), &mut self.returned, &mut out);
            match polled {
                None => break,
                Some(Ok(m)) => out.push(self.copier.record(&mut self.returned, Batched::of(&m))),
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) if out.is_empty() => {
                    return Err(broker_error(&format!("consuming {}", self.topic), e));
                }
                // Return what arrived; the error recurs on the next poll if it lasts.
                Some(Err(e)) => {
                    tracing::warn!(topic = %self.topic, "kafka: {e}");
                    break;
                }
            }
            // After the first record, take only what is already buffered.
            wait = if out.is_empty() { deadline.saturating_duration_since(Instant::now()) } else { Duration::ZERO };
            if out.is_empty() && wait.is_zero() {
                break;
            }
        }
        Ok(if out.is_empty() { Poll::Idle } else { Poll::Records(out) })
    }

    /// Group mode: the returned positions of the partitions still owned are processed;
    /// commit them (at most once per commit interval, see
    /// [`KafkaSource::set_commit_interval`]). Assign mode: nothing to do (the caller
    /// checkpoints [`KafkaSource::positions`]).
    fn commit(&mut self) -> Result<()> {
        self.forget_revoked();
        if !self.grouped || self.returned.is_empty() {
            return Ok(());
        }
        lock(&self.consumer.context().processed).extend(self.returned.iter().map(|(&p, &o)| (p, o)));
        let due = self.last_commit.map_or(true, |t| t.elapsed() >= self.commit_interval);
        if due {
            self.commit_now()?;
        }
        Ok(())
    }
}

impl Drop for KafkaSource {
    /// A source closed in order commits what was declared processed since the last
    /// commit, so the partitions' next owner starts right after it.
    fn drop(&mut self) {
        if self.grouped {
            if let Err(e) = self.commit_now() {
                tracing::warn!("kafka: final commit failed ({e}); the next owner re-reads from the last commit");
            }
        }
    }
}

#[cfg(test)]
mod copier_tests {
    use super::{Copier, BLOCK_BYTES};

    #[test]
    fn copies_share_a_block_until_it_is_full_and_a_large_message_gets_its_own() {
        let mut c = Copier::default();
        let a = c.copy(b"first");
        let b = c.copy(b"second");
        assert_eq!((&a[..], &b[..]), (&b"first"[..], &b"second"[..]));
        assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr(), "one block, back to back");
        let big = vec![7u8; BLOCK_BYTES + 1];
        let copied = c.copy(&big);
        assert_eq!(&copied[..], &big[..]);
        let after = c.copy(b"next");
        assert_eq!(&after[..], b"next");
        assert_eq!(&a[..], b"first", "earlier copies are untouched by later blocks");
    }
}
