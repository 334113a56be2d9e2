//! Kafka mode against librdkafka's in-process mock cluster: the same samples and
//! statistics as a file replay of the same events, a stop and restart that emits each
//! sample once, bad messages dead-lettered with their reason, and a broker outage
//! ridden out without loss. The SIGKILL test and the simulator's stream through a real
//! broker are in the workspace's `tests/kafka_join.rs`.

use super::*;
use crate::service::{self, Sinks};
use odl_proto::stream::kafka::{KafkaSink, KafkaSource};
use odl_proto::stream::{channel, RecordSink, RecordSource};
use rdkafka::mocking::MockCluster;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

type Mock = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

fn cluster(input_partitions: i32) -> (Mock, JoinerConfig, tempfile::TempDir) {
    let mock = MockCluster::new(1).expect("mock cluster");
    let mut c = JoinerConfig { audit_rate: 0.3, stats_interval_ms: 200, ..JoinerConfig::default() };
    for (_, t) in c.topics.inputs() {
        mock.create_topic(t, input_partitions, 1).expect("input topic");
    }
    for t in c.topics.outputs() {
        mock.create_topic(t, 2, 1).expect("output topic");
    }
    let dir = tempfile::tempdir().unwrap();
    c.kafka = KafkaConfig::new(mock.bootstrap_servers());
    c.kafka.flush_timeout_ms = 2_000;
    c.streaming.checkpoint_dir = dir.path().join("ckpt");
    c.streaming.checkpoint_interval_ms = 300;
    c.streaming.exit_when_idle_ms = 1_500;
    (mock, c, dir)
}

/// Page views in arrival order (each event at most 20 s after its ts, well within the
/// 60 s lateness), so the join result does not depend on how topics interleave.
fn events(from: u64, to: u64) -> Vec<(StreamKind, String)> {
    let mut out = Vec::new();
    for n in from..to {
        let t = 1_700_000_000_000 + n as i64 * 1_000;
        let (pv, item) = (format!("pv{n}"), format!("i{}", n % 7));
        if n % 11 != 0 {
            let f = json!({"stream":"feature","pv_id":pv,"item_id":item,"ts":t-500,"features":{"cat":format!("c{}", n % 5)}});
            out.push((t - 400, StreamKind::Feature, f));
        }
        out.push((t, StreamKind::Exposure, json!({"stream":"exposure","pv_id":pv,"item_id":item,"user_id":"u1","ts":t})));
        if n % 3 == 0 {
            out.push((t + 15_000, StreamKind::Click, json!({"stream":"click","pv_id":pv,"item_id":item,"ts":t+5_000})));
        }
        if n % 6 == 0 {
            let d = json!({"stream":"detail_click","pv_id":pv,"item_id":item,"ts":t+9_000});
            out.push((t + 19_000, StreamKind::DetailClick, d));
        }
    }
    out.sort_by_key(|e| e.0);
    out.into_iter().map(|(_, s, v)| (s, v.to_string())).collect()
}

fn topic(c: &JoinerConfig, s: StreamKind) -> String {
    c.topics.inputs().iter().find(|(k, _)| *k == s).map(|(_, t)| t.to_string()).unwrap()
}

fn produce(c: &JoinerConfig, lines: &[(StreamKind, String)]) {
    let mut sinks: BTreeMap<String, KafkaSink> = BTreeMap::new();
    for (s, line) in lines {
        let t = topic(c, *s);
        let sink = sinks.entry(t.clone()).or_insert_with(|| KafkaSink::create(&c.kafka, &t).unwrap());
        let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        let key = v["pv_id"].as_str().map(str::as_bytes).map(<[u8]>::to_vec);
        sink.send(key.as_deref(), line.as_bytes()).unwrap();
    }
    sinks.values_mut().for_each(|s| s.flush().unwrap());
}

/// Every record of `topic` as (key, value), read until `quiet` passes without one.
fn consume(c: &JoinerConfig, topic: &str) -> Vec<(Vec<u8>, Value)> {
    let mut source = KafkaSource::assign(&c.kafka, topic, &Offsets::new()).unwrap();
    let mut out = Vec::new();
    let mut idle = 0;
    while idle < 5 {
        match source.poll(10_000, Duration::from_millis(200)).unwrap() {
            Poll::Records(rs) => {
                idle = 0;
                for r in rs {
                    let v = serde_json::from_slice(&r.value).unwrap();
                    out.push((r.key.map(|k| k.to_vec()).unwrap_or_default(), v));
                }
            }
            _ => idle += 1,
        }
    }
    out
}

/// The file-replay result of the same lines: samples (sorted) and statistics.
fn replay(c: &JoinerConfig, lines: &[(StreamKind, String)]) -> (Vec<Value>, JoinStats) {
    let (mut tx, mut rx) = channel::channel("events", lines.len() + 1);
    for (_, l) in lines {
        tx.send(None, l.as_bytes()).unwrap();
    }
    drop(tx);
    let mut samples = Collect::default();
    let mut audit = Collect::default();
    let sinks = Sinks { samples: &mut samples, audit: &mut audit, dead_letter: None };
    let stats = service::run(c, &mut rx as &mut dyn RecordSource, sinks, |_| Ok(())).unwrap();
    let mut v: Vec<Value> = samples.0.iter().map(|l| serde_json::from_slice(l).unwrap()).collect();
    v.sort_by_key(|s| s.to_string());
    (v, stats)
}

#[derive(Default)]
struct Collect(Vec<Vec<u8>>);

impl RecordSink for Collect {
    fn send(&mut self, _: Option<&[u8]>, v: &[u8]) -> odl_proto::stream::Result<()> {
        self.0.push(v.to_vec());
        Ok(())
    }
    fn flush(&mut self) -> odl_proto::stream::Result<()> {
        Ok(())
    }
}

fn sorted_samples(got: &[(Vec<u8>, Value)]) -> Vec<Value> {
    for (k, v) in got {
        assert_eq!(k.as_slice(), v["sample_id"].as_str().unwrap().as_bytes(), "keyed by sample_id");
    }
    let mut v: Vec<Value> = got.iter().map(|(_, v)| v.clone()).collect();
    v.sort_by_key(|s| s.to_string());
    v
}

/// Stops the joiner thread of a scope whose assertions fail (or that ends).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Equal multisets of samples, reported by count and first difference (not dumped).
fn same(got: &[Value], expected: &[Value]) {
    let first = got.iter().zip(expected).position(|(a, b)| a != b);
    assert!(
        got.len() == expected.len() && first.is_none(),
        "{} samples, expected {}; first difference at {first:?}: {:?} vs {:?}",
        got.len(),
        expected.len(),
        first.map(|i| &got[i]),
        first.map(|i| &expected[i]),
    );
}

fn run_joiner(c: &JoinerConfig, handles: &Handles) -> (Ending, JoinStats) {
    run(c, handles, &AtomicBool::new(false)).expect("kafka joiner")
}

#[test]
fn joins_exactly_like_a_file_replay_of_the_same_events() {
    let (_mock, c, _dir) = cluster(3);
    let lines = events(0, 400);
    produce(&c, &lines);
    let handles = Handles::default();
    let (ending, stats) = run_joiner(&c, &handles);
    assert_eq!(ending, Ending::Drained);
    let (expected, expected_stats) = replay(&c, &lines);
    assert!(expected.len() > 300, "{}", expected.len());
    assert_eq!(stats, expected_stats);
    same(&sorted_samples(&consume(&c, &c.topics.samples)), &expected);
    assert_eq!(handles.observations.stats(), expected_stats, "/stats shows the final statistics");
    let audited = consume(&c, &c.topics.audit);
    assert_eq!(audited.len() as u64, stats.samples.audited);
    let r = handles.recovery.report();
    assert!(!r.restored && r.checkpoints_written >= 1, "{r:?}");
}

#[test]
fn a_stopped_joiner_resumes_from_its_checkpoint_and_emits_each_sample_once() {
    let (_mock, mut c, _dir) = cluster(2);
    let lines = events(0, 600);
    let (first, second) = lines.split_at(lines.len() / 2);
    produce(&c, first);
    // First run: stopped (as by SIGTERM) once it has read the first half.
    c.streaming.exit_when_idle_ms = 0;
    let stop = Arc::new(AtomicBool::new(false));
    let handles = Handles::default();
    let joined = std::thread::scope(|s| {
        let h = s.spawn(|| run(&c, &handles, &stop));
        let _stop_on_failure = StopOnDrop(&stop);
        let read = || handles.observations.stats().exposure.received;
        let deadline = Instant::now() + Duration::from_secs(60);
        while read() < 200 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap()
    });
    let (ending, stats) = joined.expect("first run");
    assert_eq!(ending, Ending::Stopped);
    assert!(stats.exposure.received >= 200);
    assert!(!stats.balanced(), "exposures were still pending at the stop");
    // Second run: the rest of the stream, then drained.
    produce(&c, second);
    c.streaming.exit_when_idle_ms = 1_500;
    let handles = Handles::default();
    let (ending, stats) = run_joiner(&c, &handles);
    assert_eq!(ending, Ending::Drained);
    let r = handles.recovery.report();
    assert!(r.restored, "{r:?}");
    assert_eq!(r.reemitted, PerOutput::default(), "a clean stop checkpoints after its last output");
    let (expected, expected_stats) = replay(&c, &lines);
    same(&sorted_samples(&consume(&c, &c.topics.samples)), &expected);
    assert_eq!(stats, expected_stats, "statistics carried over in the checkpoint");
}

#[test]
fn stats_count_every_event_read_without_waiting_for_the_stats_interval() {
    let (_mock, mut c, _dir) = cluster(2);
    // An hour: only the counters published after each batch can bring the count.
    c.stats_interval_ms = 3_600_000;
    c.streaming.exit_when_idle_ms = 0;
    let lines = events(0, 200);
    produce(&c, &lines);
    let stop = AtomicBool::new(false);
    let handles = Handles::default();
    let joined = std::thread::scope(|s| {
        let h = s.spawn(|| run(&c, &handles, &stop));
        let _stop_on_failure = StopOnDrop(&stop);
        let s = || handles.observations.stats();
        let received = || s().exposure.received + s().click.received + s().detail_click.received + s().feature.received;
        let deadline = Instant::now() + Duration::from_secs(60);
        while received() < lines.len() as u64 {
            assert!(Instant::now() < deadline, "/stats counted {} of {} events", received(), lines.len());
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        h.join().expect("joiner thread")
    });
    let (ending, stats) = joined.expect("kafka joiner");
    assert_eq!(ending, Ending::Stopped);
    assert_eq!(handles.observations.stats(), stats, "the stop publishes the final statistics");
}

#[test]
fn bad_messages_go_to_the_dead_letter_topic_with_their_reason() {
    let (_mock, mut c, _dir) = cluster(1);
    c.streaming.max_message_bytes = 300;
    let huge = format!(r#"{{"pv_id":"p","item_id":"i","user_id":"u","ts":1,"pad":"{}"}}"#, "x".repeat(400));
    let bad = vec![
        (StreamKind::Exposure, "not json at all".to_string()),
        (StreamKind::Click, r#"{"stream":"impression","pv_id":"p","item_id":"i","ts":5}"#.to_string()),
        (StreamKind::Click, r#"{"pv_id":"p","ts":5}"#.to_string()),
        (StreamKind::Exposure, huge),
        // A well-formed click without a "stream" field: its topic says what it is.
        (StreamKind::Click, r#"{"pv_id":"p","item_id":"i","ts":5}"#.to_string()),
    ];
    produce(&c, &bad);
    let handles = Handles::default();
    let (_, stats) = run_joiner(&c, &handles);
    assert_eq!(stats.malformed, 4);
    assert_eq!(stats.click.received, 1);
    let dead = consume(&c, &c.topics.dead_letter);
    let reasons: Vec<&str> = dead.iter().map(|(_, v)| v["reason"].as_str().unwrap()).collect();
    assert_eq!(dead.len(), 4, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.starts_with("not json")), "{reasons:?}");
    assert!(reasons.contains(&"unknown stream \"impression\""), "{reasons:?}");
    assert!(reasons.contains(&"missing field item_id"), "{reasons:?}");
    let big = dead.iter().find(|(_, v)| v["reason"].as_str().unwrap().starts_with("oversized")).unwrap();
    assert_eq!(big.1["stream"], "exposure");
}

#[test]
fn a_broker_outage_is_reported_and_ridden_out_without_loss() {
    let (mock, mut c, _dir) = cluster(2);
    c.streaming.exit_when_idle_ms = 0;
    c.streaming.checkpoint_interval_ms = 200;
    let lines = events(0, 300);
    let (first, second) = lines.split_at(lines.len() / 2);
    produce(&c, first);
    let stop = AtomicBool::new(false);
    let handles = Handles::default();
    let mut saw_not_ready = false;
    let result = std::thread::scope(|s| {
        let h = s.spawn(|| run(&c, &handles, &stop));
        let _stop_on_failure = StopOnDrop(&stop);
        let wait_within = |secs: u64, what: &str, f: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(secs);
            while !f() {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        let wait_for = |what: &str, f: &dyn Fn() -> bool| wait_within(60, what, f);
        let exposures = |l: &[(StreamKind, String)]| l.iter().filter(|e| e.0 == StreamKind::Exposure).count() as u64;
        let half = exposures(first);
        wait_for("the first half", &|| handles.observations.stats().exposure.received == half);
        mock.broker_down(1).unwrap();
        wait_for("the outage to be noticed", &|| handles.recovery.report().broker_unavailable.is_some());
        if let Readiness::NotReady(why) = handles.observations.readiness() {
            saw_not_ready = why.contains("broker unavailable");
        }
        std::thread::sleep(Duration::from_secs(1));
        mock.broker_up(1).unwrap();
        produce(&c, second);
        // Reading resumes within seconds of the broker's return (2.4-2.8 s here). While
        // librdkafka's stale connection errors doubled the backoff it took 20-60 s.
        wait_within(15, "the second half", &|| handles.observations.stats().exposure.received == 300);
        assert_eq!(half + exposures(second), 300);
        wait_for("readiness to return", &|| handles.observations.readiness() == Readiness::Ready);
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap()
    });
    let (ending, _) = result.expect("the joiner survives the outage");
    assert_eq!(ending, Ending::Stopped);
    assert!(saw_not_ready, "/readyz said why while the broker was down");
    let r = handles.recovery.report();
    assert!(r.broker_errors > 0 && r.broker_unavailable.is_none(), "{r:?}");
    // Drain what is still pending and compare with the replay: nothing was lost.
    c.streaming.exit_when_idle_ms = 1_000;
    run_joiner(&c, &Handles::default());
    let (expected, _) = replay(&c, &lines);
    same(&sorted_samples(&consume(&c, &c.topics.samples)), &expected);
}

#[test]
fn a_burst_on_every_topic_after_a_quiet_spell_makes_nothing_late() {
    // The joiner starts on empty topics and sees every partition go idle; then the
    // whole stream lands at once, one topic spanning far more than the lateness per
    // batch. The first topic read must not race the watermark ahead of the others.
    let (_mock, mut c, _dir) = cluster(2);
    c.streaming.idle_partition_ms = 200;
    let handles = Handles::default();
    let stop = AtomicBool::new(false);
    let store = CheckpointStore::open(&c.streaming.checkpoint_dir).unwrap();
    let mut j = KafkaJoiner::connect(&c, &handles, &stop, store, None).unwrap().unwrap();
    // A lag check before a partition's first fetch counts it as behind; once a check
    // finds every partition caught up and 200 ms pass without records, all are idle.
    let deadline = Instant::now() + Duration::from_secs(10);
    let all_idle = loop {
        j.tick();
        let idle = j.poll_round(false).unwrap() == 0 && j.watermarks.current(Instant::now()).is_none();
        if idle || Instant::now() > deadline {
            break idle;
        }
    };
    assert!(all_idle, "all idle");
    let lines = events(0, 2_000);
    produce(&c, &lines);
    let mut read = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while read < lines.len() && Instant::now() < deadline {
        read += j.poll_round(true).unwrap();
    }
    assert_eq!(read, lines.len());
    let s = *j.joiner.stats();
    let late = [s.exposure.late, s.click.late, s.detail_click.late, s.feature.late];
    assert_eq!(late, [0; 4], "late per stream after the burst");
    assert!(s.samples.emitted > 800, "the watermark still moved: {} samples", s.samples.emitted);
}

/// A reader thread runs ahead of the loop, but its positions (what a checkpoint
/// keeps) and its lag (what holds the watermark) count only the records the loop took:
/// records still in its queue are lag, and a restart from its positions reads them.
/// It hands over each record parsed, or why it was not.
#[test]
fn a_reader_counts_only_the_records_taken_from_it() {
    let (_mock, c, _dir) = cluster(1);
    let t = topic(&c, StreamKind::Exposure);
    let total = 3 * BATCH as i64;
    let line = |n: i64| {
        let pad = if n % 1000 == 999 { "x".repeat(100) } else { String::new() };
        format!(r#"{{"pv_id":"p{n}","item_id":"i","user_id":"u{pad}","ts":{n}}}"#)
    };
    let lines: Vec<_> = (0..total).map(|n| (StreamKind::Exposure, line(n))).collect();
    produce(&c, &lines);
    let parsing = reader::Parsing { stream: StreamKind::Exposure, max_message_bytes: 100 };
    let source = KafkaSource::assign(&c.kafka, &t, &Offsets::new()).expect("assign");
    let mut reader = reader::InputReader::spawn(source, &Offsets::new(), parsing).expect("reader thread");
    assert_eq!(reader.lag().expect("lag")[&0], total, "nothing taken yet");
    let take = |reader: &mut reader::InputReader| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match reader.next_batch(Duration::from_millis(200)).expect("a batch or nothing") {
                Some(batch) => break batch,
                None => assert!(Instant::now() < deadline, "no batch from the reader"),
            }
        }
    };
    let first = take(&mut reader);
    let mut taken = first.len() as i64;
    assert_eq!(first.last().expect("a batch holds records").record.position.offset, taken - 1);
    assert_eq!(reader.positions()[&0], taken);
    assert_eq!(reader.lag().expect("lag")[&0], total - taken, "what the reader read ahead is still lag");
    // Resuming from the positions, as a restart does, reads exactly the rest.
    let resumed = KafkaSource::assign(&c.kafka, &t, reader.positions()).expect("assign from the positions");
    let mut rest = reader::InputReader::spawn(resumed, &reader.positions().clone(), parsing).expect("reader thread");
    drop(reader);
    let mut offsets = Vec::new();
    let mut batches = vec![first];
    while taken < total {
        let batch = take(&mut rest);
        taken += batch.len() as i64;
        offsets.extend(batch.iter().map(|r| r.record.position.offset));
        batches.push(batch);
    }
    let resumed_at = batches[0].len() as i64;
    assert_eq!(offsets, (resumed_at..total).collect::<Vec<_>>(), "the rest, once each, in order");
    assert_eq!(rest.positions()[&0], total);
    assert_eq!(rest.lag().expect("lag")[&0], 0);
    assert!(rest.next_batch(Duration::ZERO).expect("nothing left").is_none());
    for read in batches.iter().flatten() {
        let n = read.record.position.offset;
        match &read.class {
            reader::Class::Event(ev) => {
                assert!(n % 1000 != 999);
                let ev = ev.attach(&read.record.value);
                assert_eq!((ev.ts, ev.pv_id), (n, format!("\"p{n}\"").as_bytes()));
            }
            reader::Class::Oversized => assert_eq!(n % 1000, 999),
            _ => panic!("record {n} was neither parsed nor oversized"),
        }
    }
}

/// A record its reader could not hand over parsed is parsed by the loop, so it is
/// joined like any other; what the reader found malformed or oversized is dead-lettered.
#[test]
fn the_loop_parses_what_its_reader_handed_over_unparsed() {
    let (_mock, c, _dir) = cluster(1);
    let handles = Handles::default();
    let stop = AtomicBool::new(false);
    let store = CheckpointStore::open(&c.streaming.checkpoint_dir).expect("checkpoint store");
    let mut j = KafkaJoiner::connect(&c, &handles, &stop, store, None).expect("connect").expect("not stopped");
    let exposure = j.inputs.iter().position(|i| i.stream == StreamKind::Exposure).expect("exposure input");
    let line = r#"{"pv_id":"p1","item_id":"i1","user_id":"u","ts":1700000000000}"#;
    let read = |offset, class| reader::Read {
        record: odl_proto::stream::Record {
            key: None,
            value: bytes::Bytes::from(line),
            position: odl_proto::stream::Position { partition: 0, offset },
        },
        class,
    };
    let malformed = crate::parse::Malformed::MissingStream;
    j.ingest(exposure, vec![read(0, reader::Class::Unparsed), read(1, reader::Class::Malformed(malformed))]);
    j.ingest(exposure, vec![read(2, reader::Class::Oversized)]);
    let s = *j.joiner.stats();
    assert_eq!(s.exposure.received, 1, "the unparsed record was parsed and counted");
    assert_eq!(j.joiner.buffered_keys(), 1, "and is waiting for its clicks");
    assert_eq!(s.malformed, 2, "the malformed and the oversized one");
}

#[test]
fn input_consumers_fetch_4_mb_at_a_time_unless_the_config_says_otherwise() {
    let mut k = KafkaConfig::new("127.0.0.1:9092");
    assert_eq!(input_client(&k).properties["fetch.max.bytes"], INPUT_FETCH_MAX_BYTES);
    k.properties.insert("fetch.max.bytes".into(), "1048576".into());
    assert_eq!(input_client(&k).properties["fetch.max.bytes"], "1048576", "the config's own setting wins");
}
