//! Kafka mode of the joiner (JOIN.md "Streaming from Kafka"): one consumer per input
//! topic, the operator driven by per-partition watermarks ([`watermarks`]), samples
//! and audit samples keyed by `sample_id`, dead letters to their own topic, and crash
//! safety by checkpoints ([`crate::checkpoint`]).
//!
//! Delivery is at-least-once with a stable `sample_id` (Kafka transactions are not
//! usable with the brokers odl targets): every `checkpoint_interval_ms` and on
//! shutdown the loop flushes the output topics, then writes the operator's state and
//! the input offsets as one blob. Killed at any moment and restarted, it restores that
//! state, reads each partition from the checkpointed offset (nothing earlier: the
//! windows are in the state), and so emits again exactly what the dead run emitted
//! after its last checkpoint. It counts those records by reading its output topics
//! from the ends it had checkpointed (it is their only writer) and reports them in
//! `/v1/recovery`, `/metrics` and the log.
//!
//! A message's stream is its topic's, unless it names one itself (a top-level
//! `"stream"` field, as in a replay file), which then decides: the simulator writes
//! the replay lines unchanged, so malformed ones stay malformed.
//!
//! A broker outage never stops the joiner: failed calls are retried with backoff, the
//! outage is logged, counted and shown in `/readyz`, and consuming resumes from where
//! it was when the broker returns. Records are never dropped (the producer keeps them
//! queued; a checkpoint waits until they are acknowledged).

mod reader;
pub mod recovery;
pub mod watermarks;
#[cfg(test)]
mod tests;

use crate::checkpoint::{Checkpoint, CheckpointStore, Positions};
use crate::config::JoinerConfig;
use crate::http::{JoinerObservations, Readiness};
use crate::operator::{Joiner, Output};
use crate::parse::{Malformed, ParsedEvent, Parser};
use crate::stats::JoinStats;
use crate::{Error, Result};
use memchr::memmem::Finder;
use odl_proto::event::StreamKind;
use odl_proto::stream::kafka::{ensure_topics, partition_count, KafkaConfig, KafkaSink, KafkaSource, Offsets};
use odl_proto::stream::{Poll, RecordSink, RecordSource, StreamError};
use reader::{Class, InputReader, Parsing, Read};
use recovery::{PerOutput, RecoveryObservations};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};
use watermarks::Watermarks;

/// `fetch.max.bytes` of the input consumers unless `[kafka.properties]` sets it.
/// tansu fills a fetch response from one partition up to this size, so at
/// librdkafka's default (50 MB) a topic's partitions were read one backlog after the
/// other and the join state held the first one's events until the others caught up.
/// At 4 MB, `odl bench kafka` measured higher in 6 of 6 alternating pairs (median 0.89
/// against 0.82 of the broker's rate) and the joiner's librdkafka threads took a
/// quarter less CPU, with peak memory about the same; at 1 MB the peak fell by a
/// third but the joiner waited on more fetches (tansu holds each one for
/// `fetch.wait.max.ms`).
const INPUT_FETCH_MAX_BYTES: &str = "4194304";

/// The input consumers' settings: the service's, with [`INPUT_FETCH_MAX_BYTES`] as
/// the default fetch size.
fn input_client(kafka: &KafkaConfig) -> KafkaConfig {
    let mut k = kafka.clone();
    k.properties.entry("fetch.max.bytes".to_string()).or_insert_with(|| INPUT_FETCH_MAX_BYTES.to_string());
    k
}

/// Records asked of one consumer per poll.
const BATCH: usize = 8192;
/// How long one consumer's poll may wait when the last round brought nothing. The
/// inputs are polled in turn, so this is also how long records that reach another input
/// may wait: kept short (at 50 ms, odl bench kafka took 2.7-3.3 s instead of 2.2 s).
const IDLE_POLL: Duration = Duration::from_millis(5);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the consumer lag is read (a broker round trip per input partition, so
/// not at every stats tick).
const LAG_EVERY: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a shutdown keeps retrying the final flush while the broker is down
/// before giving up on the final checkpoint (the previous one stays valid).
const SHUTDOWN_FLUSH_DEADLINE: Duration = Duration::from_secs(60);

/// What the HTTP routes show and how the loop is told to stop.
#[derive(Clone, Debug, Default)]
pub struct Handles {
    pub observations: JoinerObservations,
    pub recovery: RecoveryObservations,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Stopped (SIGTERM/SIGINT): pending exposures stay in the checkpoint.
    Stopped,
    /// Every input was read to its end and stayed quiet (`exit_when_idle_ms`): every
    /// pending exposure was emitted, as at the end of a replay file.
    Drained,
}

/// Runs the Kafka joiner until `stop` is set (or the inputs drain, with
/// `exit_when_idle_ms`), ending with a checkpoint. Errors only for what retrying
/// cannot fix (a bad checkpoint store, a record the broker refuses for good).
pub fn run(config: &JoinerConfig, handles: &Handles, stop: &AtomicBool) -> Result<(Ending, JoinStats)> {
    let mut store = CheckpointStore::open(&config.streaming.checkpoint_dir)?;
    let checkpoint = store.load()?;
    let Some(mut j) = KafkaJoiner::connect(config, handles, stop, store, checkpoint)? else {
        return Ok((Ending::Stopped, JoinStats::default()));
    };
    let ending = j.run_loop()?;
    j.checkpoint(Some(Instant::now() + SHUTDOWN_FLUSH_DEADLINE))?;
    handles.observations.publish(&j.joiner);
    tracing::info!(?ending, stats = %j.joiner.stats().to_json(), "kafka joiner stopped after its final checkpoint");
    Ok((ending, *j.joiner.stats()))
}

struct Input {
    stream: StreamKind,
    topic: String,
    source: InputReader,
}

struct Outputs {
    samples: KafkaSink,
    audit: KafkaSink,
    dead_letter: KafkaSink,
    /// Per output (samples, audit, dead letter), the offset after the last record
    /// acknowledged, from the producers' delivery reports (a broker's reported high
    /// watermark may lag behind what it acknowledged: tansu's does).
    ends: [Offsets; 3],
}

impl Outputs {
    /// Takes the delivery reports of everything flushed into `ends`.
    fn note_delivered(&mut self) {
        let sinks = [&self.samples, &self.audit, &self.dead_letter];
        for (ends, sink) in self.ends.iter_mut().zip(sinks) {
            for (p, d) in sink.take_delivered() {
                let end = ends.entry(p).or_insert(0);
                *end = (*end).max(d.last_offset + 1);
            }
        }
    }
}

struct KafkaJoiner<'a> {
    config: &'a JoinerConfig,
    handles: &'a Handles,
    stop: &'a AtomicBool,
    store: CheckpointStore,
    joiner: Joiner,
    parser: Parser,
    inputs: Vec<Input>,
    outputs: Outputs,
    watermarks: Watermarks,
}

impl<'a> KafkaJoiner<'a> {
    /// Creates missing topics, restores the checkpoint and opens every client,
    /// retrying while the broker is unreachable. `None`: stopped while waiting.
    fn connect(
        config: &'a JoinerConfig,
        handles: &'a Handles,
        stop: &'a AtomicBool,
        store: CheckpointStore,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Option<Self>> {
        let kafka = &config.kafka;
        let topics = &config.topics;
        let names: Vec<&str> = topics.inputs().iter().map(|(_, t)| *t).chain(topics.outputs()).collect();
        let retry = Retry { handles, stop, deadline: None };
        let Some(()) = retry.run("creating topics", || create_missing(kafka, &names, topics.partitions))? else {
            return Ok(None);
        };
        let mut joiner = match &checkpoint {
            Some(c) => Joiner::restore(config, &c.operator)?,
            None => Joiner::new(config),
        };
        joiner.use_external_watermark();
        joiner.set_observe_quality(true);
        let positions = checkpoint.as_ref().map(|c| c.positions.clone()).unwrap_or_default();
        let idle = Duration::from_millis(config.streaming.idle_partition_ms);
        let mut watermarks = Watermarks::new(config.allowed_lateness_ms, idle);
        let now = Instant::now();
        let mut inputs = Vec::new();
        let input_kafka = input_client(kafka);
        for (i, (stream, topic)) in topics.inputs().into_iter().enumerate() {
            let start = positions.inputs.get(topic).cloned().unwrap_or_default();
            let Some(source) = retry.run("assigning an input topic", || KafkaSource::assign(&input_kafka, topic, &start))?
            else {
                return Ok(None);
            };
            let parsing = Parsing { stream, max_message_bytes: config.streaming.max_message_bytes };
            let source = InputReader::spawn(source, &start, parsing).map_err(|source| StreamError::Io {
                what: "starting the reader thread of",
                name: topic.to_string(),
                source,
            })?;
            if let Some(m) = positions.max_ts.get(topic) {
                watermarks.restore(m.iter().map(|(&p, &ts)| ((i, p), ts)), now);
            }
            inputs.push(Input { stream, topic: topic.to_string(), source });
        }
        let Some(mut outputs) = retry.run("opening the output topics", || open_outputs(kafka, topics))? else {
            return Ok(None);
        };
        for (i, t) in topics.outputs().iter().enumerate() {
            outputs.ends[i] = positions.outputs.get(*t).cloned().unwrap_or_default();
        }
        let parser = Parser::default();
        let mut j = KafkaJoiner { config, handles, stop, store, joiner, parser, inputs, outputs, watermarks };
        if let Some(c) = &checkpoint {
            if j.report_restore(c)?.is_none() {
                return Ok(None);
            }
        }
        Ok(Some(j))
    }

    /// Counts what the dead run emitted after checkpoint `c` (by reading the output
    /// topics from the checkpointed ends: at most one checkpoint interval of records)
    /// and logs the restore.
    fn report_restore(&mut self, c: &Checkpoint) -> Result<Option<()>> {
        let retry = Retry { handles: self.handles, stop: self.stop, deadline: None };
        let topics = self.config.topics.outputs();
        let mut counts = [0u64; 3];
        for (i, topic) in topics.iter().enumerate() {
            let from = c.positions.outputs.get(*topic).cloned().unwrap_or_default();
            let counted = retry.run("counting the records after the checkpoint", || {
                count_records(&self.config.kafka, topic, &from)
            })?;
            let Some(n) = counted else { return Ok(None) };
            counts[i] = n;
        }
        let reemitted = PerOutput { samples: counts[0], audit: counts[1], dead_letter: counts[2] };
        tracing::info!(
            generation = c.generation,
            keys = self.joiner.buffered_keys(),
            resumed_at = ?c.positions.inputs,
            reemitted_samples = reemitted.samples,
            reemitted_audit = reemitted.audit,
            reemitted_dead_letters = reemitted.dead_letter,
            "joiner restored from its checkpoint; what the previous run emitted after it is emitted again (same sample_id)"
        );
        self.handles.recovery.update(|r| {
            r.restored = true;
            r.restored_generation = c.generation;
            r.reemitted = reemitted;
        });
        Ok(Some(()))
    }

    fn run_loop(&mut self) -> Result<Ending> {
        let stats_every = Duration::from_millis(self.config.stats_interval_ms);
        let checkpoint_every = Duration::from_millis(self.config.streaming.checkpoint_interval_ms);
        let exit_when_idle = Duration::from_millis(self.config.streaming.exit_when_idle_ms);
        let mut last_checkpoint = Instant::now();
        let mut last_stats: Option<Instant> = None;
        let mut last_lag: Option<Instant> = None;
        let mut last_message = Instant::now();
        let mut busy = false;
        let mut backoff = BACKOFF_MIN;
        while !self.stop.load(Ordering::Relaxed) {
            // First thing: the lag check tells the watermarks which partitions have
            // records waiting before any is read.
            if last_stats.is_none_or(|t| t.elapsed() >= stats_every) {
                self.handles.observations.publish(&self.joiner);
                last_stats = Some(Instant::now());
            }
            if last_lag.is_none_or(|t| t.elapsed() >= LAG_EVERY) {
                if self.tick() {
                    backoff = BACKOFF_MIN;
                }
                last_lag = Some(Instant::now());
            }
            match self.poll_round(busy) {
                Ok(n) => {
                    busy = n > 0;
                    if busy {
                        // An idle poll proves nothing (librdkafka retries a down
                        // broker quietly); records do.
                        last_message = Instant::now();
                        self.broker_ok();
                        self.handles.observations.publish_stats(self.joiner.stats());
                    }
                    backoff = BACKOFF_MIN;
                }
                Err(Error::Stream(e)) if e.retryable() => {
                    self.broker_down("consuming", &e);
                    sleep_unless_stopped(backoff, self.stop);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    // librdkafka queues an error per failed connection and hands them
                    // out one poll at a time, also after the broker is back: doubling
                    // the backoff on those stale errors stalled the joiner 20-60 s
                    // after an outage. Probe the broker before the next poll instead,
                    // and start the backoff over when it answers.
                    last_lag = None;
                }
                Err(e) => return Err(e),
            }
            if last_checkpoint.elapsed() >= checkpoint_every {
                self.checkpoint(None)?;
                last_checkpoint = Instant::now();
            }
            if !exit_when_idle.is_zero() && last_message.elapsed() >= exit_when_idle && self.all_caught_up() {
                tracing::info!("every input partition read to its end and quiet: emitting everything pending");
                self.joiner.finish();
                self.drain()?;
                return Ok(Ending::Drained);
            }
        }
        Ok(Ending::Stopped)
    }

    /// One poll of every input but those `max_input_skew_ms` ahead of the slowest
    /// partition (waiting a little only when the last round was idle), each batch
    /// pushed through the operator and its outputs sent. Returns the
    /// number of records read.
    fn poll_round(&mut self, busy: bool) -> Result<usize> {
        let wait = if busy { Duration::ZERO } else { IDLE_POLL };
        let skew = i64::try_from(self.config.streaming.max_input_skew_ms).unwrap_or(i64::MAX);
        let mut n = 0;
        for i in 0..self.inputs.len() {
            if skew > 0 && self.watermarks.ahead(i, skew, Instant::now()) {
                continue;
            }
            if let Some(batch) = self.inputs[i].source.next_batch(wait)? {
                n += batch.len();
                self.ingest(i, batch);
                self.drain()?;
            }
        }
        Ok(n)
    }

    /// Pushes one topic's batch, then raises the watermark to the partitions' minimum.
    /// A batch that wakes a partition which did not count re-reads the lag first, so
    /// that the other topics' partitions with records waiting hold the watermark.
    fn ingest(&mut self, input: usize, batch: Vec<Read>) {
        let now = Instant::now();
        let topic_stream = self.inputs[input].stream;
        let max = self.config.streaming.max_message_bytes;
        let mut woke = false;
        let mut last_partition = None;
        for (i, read) in batch.iter().enumerate() {
            self.joiner.look_ahead(i, |j| match batch.get(j) {
                Some(Read { class: Class::Event(ahead), .. }) => Some(ahead.key()),
                _ => None,
            });
            let Read { record: r, class } = read;
            let id = (input, r.position.partition);
            if last_partition != Some(id.1) {
                woke |= !self.watermarks.counts(id, now);
                last_partition = Some(id.1);
            }
            let parsed = match class {
                Class::Event(ev) => Ok(ev.attach(&r.value)),
                Class::Malformed(m) => Err(m.clone()),
                Class::Unparsed => classify(&mut self.parser, &r.value, topic_stream),
                Class::Oversized => {
                    let why = format!("oversized: {} bytes, max_message_bytes is {max}", r.value.len());
                    self.joiner.reject(why, Some(topic_stream), &r.value);
                    self.watermarks.touch(id, now);
                    continue;
                }
            };
            match parsed.as_ref().map(|ev| ev.ts) {
                Ok(ts) if ts >= self.joiner.watermark() => self.watermarks.observe(id, ts, now),
                _ => self.watermarks.touch(id, now),
            }
            self.joiner.push_parsed(&r.value, parsed);
        }
        if woke {
            self.read_lag();
        }
        if let Some(wm) = self.watermarks.current(now) {
            self.joiner.advance_watermark(wm);
        }
    }

    fn drain(&mut self) -> Result<()> {
        let o = &mut self.outputs;
        self.joiner.drain_ready(|out| -> std::result::Result<(), StreamError> {
            match out {
                Output::Sample { key, json, audit } => {
                    o.samples.send(Some(key), json)?;
                    if audit {
                        o.audit.send(Some(key), json)?;
                    }
                    Ok(())
                }
                Output::DeadLetter(line) => o.dead_letter.send(None, line),
            }
        })?;
        Ok(())
    }

    /// Lag check: one round trip, the broker probe of an idle joiner (it fails while
    /// the broker is down; each failure waits for a timeout, so the check stops at the
    /// first), then [`KafkaJoiner::read_lag`]. Returns whether the broker answered.
    fn tick(&mut self) -> bool {
        if let Err(e) = self.inputs.first().map_or(Ok(()), |i| i.source.probe()) {
            self.broker_down("probing the broker", &e);
            return false;
        }
        self.read_lag();
        self.broker_ok();
        true
    }

    /// The consumer lag to the HTTP routes and the watermarks (which partitions are
    /// caught up), from the watermarks librdkafka keeps of its fetches: no broker round
    /// trip, so a batch that wakes a partition can afford it (with the probe, each of the
    /// 16 partitions waking at the start of a stream waited for a broker busy taking
    /// that stream).
    fn read_lag(&mut self) {
        let mut lag_by_topic = BTreeMap::new();
        let now = Instant::now();
        for (i, input) in self.inputs.iter().enumerate() {
            let lag = input.source.cached_lag();
            for (&p, &l) in &lag {
                // Not fetched yet: behind until its first fetch says otherwise.
                self.watermarks.set_lag((i, p), l.unwrap_or(1), now);
            }
            lag_by_topic.insert(input.topic.clone(), lag.values().flatten().sum::<i64>().max(0) as u64);
        }
        self.handles.observations.set_consumer_lag(lag_by_topic);
    }

    /// Whether every input partition has been read to its end (exit_when_idle).
    fn all_caught_up(&mut self) -> bool {
        self.inputs.iter().all(|i| i.source.lag().is_ok_and(|lag| lag.values().all(|&l| l == 0)))
    }

    /// Flushes the outputs (retrying while the broker is down), then writes the state
    /// and the offsets it corresponds to. With a `deadline` (shutdown), gives up on a
    /// broker that stays down past it: the previous checkpoint stays valid.
    fn checkpoint(&mut self, deadline: Option<Instant>) -> Result<()> {
        let started = Instant::now();
        let retry = Retry { handles: self.handles, stop: self.stop, deadline };
        let o = &mut self.outputs;
        let flushed = retry.run("flushing the outputs", || {
            o.samples.flush()?;
            o.audit.flush()?;
            o.dead_letter.flush()
        })?;
        let Some(()) = flushed else {
            return self.give_up("the outputs could not be flushed");
        };
        self.broker_ok();
        self.outputs.note_delivered();
        let topics = self.config.topics.outputs();
        let mut positions = Positions::default();
        for (i, ends) in self.outputs.ends.iter().enumerate() {
            positions.outputs.insert(topics[i].to_string(), ends.clone());
        }
        for (i, input) in self.inputs.iter().enumerate() {
            positions.inputs.insert(input.topic.clone(), input.source.positions().clone());
            let max_ts = self.watermarks.max_ts().filter(|((t, _), _)| *t == i).map(|((_, p), ts)| (p, ts));
            positions.max_ts.insert(input.topic.clone(), max_ts.collect());
        }
        let state = self.joiner.snapshot()?;
        let generation = self.store.save(&positions, &state)?;
        let seconds = started.elapsed().as_secs_f64();
        tracing::debug!(generation, bytes = state.len(), seconds, "checkpoint written");
        self.handles.recovery.update(|r| {
            r.checkpoints_written += 1;
            r.last_checkpoint_generation = generation;
            r.last_checkpoint_bytes = state.len() as u64;
            r.last_checkpoint_seconds = seconds;
        });
        Ok(())
    }

    fn give_up(&self, what: &str) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            Err(Error::Unavailable(format!("{what} before the shutdown deadline; the last checkpoint stays in force")))
        } else {
            Ok(())
        }
    }

    fn broker_ok(&self) {
        if self.handles.observations.readiness() != Readiness::Ready {
            self.handles.observations.set_readiness(Readiness::Ready);
        }
        self.handles.recovery.update(|r| {
            if r.broker_unavailable.take().is_some() {
                tracing::info!("broker reachable again: resuming");
            }
        });
    }

    fn broker_down(&self, what: &str, e: &StreamError) {
        broker_down(self.handles, what, e);
    }
}

/// Retries a broker call with backoff while it fails with a retryable error,
/// reporting the outage; `None` when stopped (or past the deadline) while waiting.
struct Retry<'a> {
    handles: &'a Handles,
    stop: &'a AtomicBool,
    /// Shutdown: keep trying until then even though `stop` is set.
    deadline: Option<Instant>,
}

impl Retry<'_> {
    fn run<T>(&self, what: &str, mut f: impl FnMut() -> std::result::Result<T, StreamError>) -> Result<Option<T>> {
        let mut backoff = BACKOFF_MIN;
        loop {
            match f() {
                Ok(v) => return Ok(Some(v)),
                Err(e) if e.retryable() => {
                    broker_down(self.handles, what, &e);
                    let give_up = match self.deadline {
                        Some(d) => Instant::now() + backoff > d,
                        None => self.stop.load(Ordering::Relaxed),
                    };
                    if give_up {
                        return Ok(None);
                    }
                    match self.deadline {
                        Some(_) => std::thread::sleep(backoff),
                        None => sleep_unless_stopped(backoff, self.stop),
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn broker_down(handles: &Handles, what: &str, e: &StreamError) {
    let reason = format!("broker unavailable ({what}): {e}");
    let mut first = false;
    handles.recovery.update(|r| {
        r.broker_errors += 1;
        first = r.broker_unavailable.is_none();
        r.broker_unavailable = Some(reason.clone());
    });
    if first {
        tracing::warn!("{reason}; retrying with backoff");
    } else {
        tracing::debug!("{reason}; still retrying");
    }
    handles.observations.set_readiness(Readiness::NotReady(reason));
}

fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(until.saturating_duration_since(Instant::now()).min(Duration::from_millis(50)));
    }
}

/// Creates the topics that do not exist yet (the mock cluster of the unit tests
/// cannot create topics, so existing ones are not asked for again).
fn create_missing(cfg: &KafkaConfig, names: &[&str], partitions: i32) -> std::result::Result<(), StreamError> {
    // One short probe instead of a metadata timeout per topic when the broker is down.
    odl_proto::stream::kafka::check_connection(cfg, METADATA_TIMEOUT)?;
    let missing: Vec<(&str, i32)> = names
        .iter()
        .filter(|t| partition_count(cfg, t, METADATA_TIMEOUT).is_err())
        .map(|t| (*t, partitions))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    tracing::info!(topics = ?missing, "creating missing topics");
    ensure_topics(cfg, &missing)
}

fn open_outputs(cfg: &KafkaConfig, t: &crate::config::Topics) -> std::result::Result<Outputs, StreamError> {
    Ok(Outputs {
        samples: KafkaSink::create(cfg, &t.samples)?,
        audit: KafkaSink::create(cfg, &t.audit)?,
        dead_letter: KafkaSink::create(cfg, &t.dead_letter)?,
        ends: Default::default(),
    })
}

/// How long a count of the records after a checkpoint waits for more before it is done.
const COUNT_QUIET: Duration = Duration::from_secs(1);

/// The records of `topic` from `from` (the beginning of partitions absent there) to
/// its end, read and counted.
fn count_records(cfg: &KafkaConfig, topic: &str, from: &Offsets) -> std::result::Result<u64, StreamError> {
    let mut source = KafkaSource::assign(cfg, topic, from)?;
    let mut n = 0u64;
    let mut last = Instant::now();
    while last.elapsed() < COUNT_QUIET {
        if let Poll::Records(rs) = source.poll(BATCH, Duration::from_millis(100))? {
            n += rs.len() as u64;
            last = Instant::now();
        }
    }
    Ok(n)
}

/// A message parsed as the stream its own top-level `"stream"` field names, or else
/// as its topic's.
fn classify<'a>(parser: &mut Parser, line: &'a [u8], topic: StreamKind) -> std::result::Result<ParsedEvent<'a>, Malformed> {
    static STREAM_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"stream\""));
    if STREAM_KEY.find(line).is_some() {
        match parser.parse_with(line, None) {
            // "stream" only occurred inside a value: the topic decides after all.
            Err(Malformed::MissingStream) => {}
            parsed => return parsed,
        }
    }
    parser.parse_with(line, Some(topic))
}
