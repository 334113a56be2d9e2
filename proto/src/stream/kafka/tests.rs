//! The Kafka stream against librdkafka's in-process mock cluster: produce, both ways
//! of consuming, resuming from kept and from committed offsets, and an unreachable
//! broker. The real-broker tests (tansu) are in the workspace's `tests/`.

use super::*;
use crate::stream::{Poll, RecordSink, RecordSource};
use rdkafka::mocking::MockCluster;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn cluster(topic: &str, partitions: i32) -> (MockCluster<'static, rdkafka::producer::DefaultProducerContext>, KafkaConfig) {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(topic, partitions, 1).expect("mock topic");
    let cfg = KafkaConfig::new(mock.bootstrap_servers());
    (mock, cfg)
}

fn produce(cfg: &KafkaConfig, topic: &str, range: std::ops::Range<u32>) {
    let mut sink = KafkaSink::create(cfg, topic).expect("sink");
    for i in range {
        let key = format!("k{i}");
        sink.send(Some(key.as_bytes()), format!("{{\"i\":{i}}}").as_bytes()).expect("send");
    }
    sink.flush().expect("flush");
}

/// Poll until `n` records arrived (or 30 s passed: a broken consumer fails the test
/// instead of hanging it).
fn read(source: &mut KafkaSource, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        if let Poll::Records(rs) = source.poll(1000, Duration::from_millis(200)).expect("poll") {
            for r in rs {
                let v: serde_json::Value = serde_json::from_slice(&r.value).expect("json");
                assert_eq!(r.key.as_deref(), Some(format!("k{}", v["i"]).as_bytes()));
                got.push(v["i"].as_u64().expect("i") as u32);
            }
        }
    }
    got
}

fn drained(source: &mut KafkaSource) -> bool {
    matches!(source.poll(100, Duration::from_millis(500)).expect("poll"), Poll::Idle)
}

#[test]
fn assigned_source_reads_every_partition_and_resumes_from_kept_positions() {
    let (_mock, cfg) = cluster("events", 3);
    produce(&cfg, "events", 0..300);
    let mut source = KafkaSource::assign(&cfg, "events", &Offsets::new()).expect("assign");
    let got: BTreeSet<u32> = read(&mut source, 300).into_iter().collect();
    assert_eq!(got, (0..300).collect());
    assert!(drained(&mut source));
    let kept = source.positions().clone();
    assert_eq!(kept.values().sum::<i64>(), 300, "next offsets add up to what was read");
    assert_eq!(source.lag().expect("lag").values().sum::<i64>(), 0);
    assert!(source.cached_lag().values().all(|&l| l == Some(0)));
    source.probe().expect("the broker answers");
    assert_eq!(source.end_offsets().expect("ends"), kept, "caught up: the ends are the kept positions");
    drop(source);

    produce(&cfg, "events", 300..310);
    let mut resumed = KafkaSource::assign(&cfg, "events", &kept).expect("assign");
    let mut got = read(&mut resumed, 10);
    got.sort();
    assert_eq!(got, (300..310).collect::<Vec<_>>(), "only what came after the kept positions");
    assert!(drained(&mut resumed));
}

/// A one-partition topic with records `0..n` and an assigned source on it.
fn assigned_on_filled(topic: &str, n: u32) -> (MockCluster<'static, rdkafka::producer::DefaultProducerContext>, KafkaConfig, KafkaSource) {
    let (mock, cfg) = cluster(topic, 1);
    produce(&cfg, topic, 0..n);
    let source = KafkaSource::assign(&cfg, topic, &Offsets::new()).expect("assign");
    (mock, cfg, source)
}

/// The offsets of each poll's records (`max` per poll) until `n` arrived or 30 s
/// passed. Poll errors are skipped: after an outage, the errors queued during it may
/// still come first.
fn batches_of_offsets(source: &mut KafkaSource, n: usize, max: usize) -> Vec<Vec<i64>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut batches, mut read) = (Vec::new(), 0);
    while read < n && Instant::now() < deadline {
        if let Ok(Poll::Records(rs)) = source.poll(max, Duration::from_millis(200)) {
            read += rs.len();
            batches.push(rs.iter().map(|r| r.position.offset).collect());
        }
    }
    batches
}

#[test]
fn an_assigned_source_hands_over_what_is_queued_in_order_and_at_most_max_at_a_time() {
    let (_mock, _cfg, mut source) = assigned_on_filled("batched", 1000);
    let batches = batches_of_offsets(&mut source, 1000, 300);
    let largest = batches.iter().map(Vec::len).max().unwrap_or(0);
    assert!(largest <= 300, "asked for at most 300, got {largest}");
    assert_eq!(batches.concat(), (0..1000).collect::<Vec<i64>>(), "every record once, in order");
    assert!(largest > 1, "records already queued come in one poll, not one per poll");
    assert_eq!(source.positions()[&0], 1000);
    assert!(drained(&mut source));
}

#[test]
fn an_assigned_source_reports_a_broker_outage_as_a_retryable_error_and_resumes() {
    let (mock, cfg, mut source) = assigned_on_filled("outage", 10);
    assert_eq!(read(&mut source, 10), (0..10).collect::<Vec<_>>());
    mock.broker_down(1).expect("broker down");
    // librdkafka reports a client-wide error (every broker down) on the consumer's
    // own queue, not on the partitions' queue a batch is read from.
    let deadline = Instant::now() + Duration::from_secs(30);
    let error = loop {
        match source.poll(100, Duration::from_millis(100)) {
            Err(e) => break e,
            Ok(Poll::Records(rs)) => panic!("nothing new was produced, got {} records", rs.len()),
            Ok(_) => assert!(Instant::now() < deadline, "no error in 30 s of a broker down"),
        }
    };
    assert!(error.retryable(), "{error}");
    mock.broker_up(1).expect("broker up");
    produce(&cfg, "outage", 10..20);
    let got = batches_of_offsets(&mut source, 10, 100).concat();
    assert_eq!(got, (10..20).collect::<Vec<i64>>(), "read on from where it was");
}

#[test]
fn group_source_resumes_from_its_committed_offsets() {
    let (_mock, cfg) = cluster("samples", 2);
    produce(&cfg, "samples", 0..200);
    let mut first = KafkaSource::subscribe(&cfg, "samples", "g1").expect("subscribe");
    let read_first = read(&mut first, 200);
    assert_eq!(read_first.len(), 200);
    first.commit().expect("commit");
    drop(first);

    produce(&cfg, "samples", 200..250);
    let mut second = KafkaSource::subscribe(&cfg, "samples", "g1").expect("subscribe");
    let mut got = read(&mut second, 50);
    got.sort();
    assert_eq!(got, (200..250).collect::<Vec<_>>(), "committed records are not read again");
    assert_eq!(second.assignment().len(), 2, "the only member owns both partitions");
}

#[test]
fn uncommitted_records_are_read_again_by_the_group() {
    let (_mock, cfg) = cluster("samples", 1);
    produce(&cfg, "samples", 0..20);
    let mut first = KafkaSource::subscribe(&cfg, "samples", "g2").expect("subscribe");
    assert_eq!(read(&mut first, 20).len(), 20);
    drop(first); // no commit: as if the worker died before its push reached the PS
    let mut second = KafkaSource::subscribe(&cfg, "samples", "g2").expect("subscribe");
    assert_eq!(read(&mut second, 20).len(), 20);
}

#[test]
fn throttled_commits_reach_the_broker_when_the_source_closes() {
    let (_mock, cfg) = cluster("samples", 2);
    produce(&cfg, "samples", 0..100);
    let mut first = KafkaSource::subscribe(&cfg, "samples", "g3").expect("subscribe");
    first.set_commit_interval(Duration::from_secs(3600));
    assert_eq!(read(&mut first, 100).len(), 100);
    first.commit().expect("commit"); // the first commit goes out at once
    produce(&cfg, "samples", 100..160);
    assert_eq!(read(&mut first, 60).len(), 60);
    first.commit().expect("commit"); // within the interval: kept, not sent
    produce(&cfg, "samples", 160..170);
    assert_eq!(read(&mut first, 10).len(), 10); // read, never declared processed

    // A member of the group started now (the first one still owning every
    // partition) would start after the first commit.
    drop(first); // closing commits what was processed, not what was only read
    let mut second = KafkaSource::subscribe(&cfg, "samples", "g3").expect("subscribe");
    let mut got = read(&mut second, 10);
    got.sort();
    assert_eq!(got, (160..170).collect::<Vec<_>>(), "{got:?}");
    assert!(drained(&mut second));
}

/// The mock cluster does not implement CreateTopics (`ensure_topics` is tested against
/// the real broker in `tests/kafka.rs`); metadata it does answer.
/// The lag from the watermarks of the fetch responses agrees with the broker's
/// answer after a partial read, and needs no broker.
#[test]
fn cached_lag_agrees_with_the_broker() {
    let (mock, cfg) = cluster("lagging", 1);
    produce(&cfg, "lagging", 0..300);
    let mut source = KafkaSource::assign(&cfg, "lagging", &Offsets::new()).expect("assign");
    assert!(source.cached_lag()[&0].is_none_or(|l| l == 300), "nothing fetched yet, or all of it");
    let mut read_so_far = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while read_so_far < 100 && Instant::now() < deadline {
        if let Poll::Records(rs) = source.poll(100 - read_so_far, Duration::from_millis(200)).expect("poll") {
            read_so_far += rs.len();
        }
    }
    assert_eq!(read_so_far, 100);
    assert_eq!(source.lag().expect("lag")[&0], 200);
    assert_eq!(source.cached_lag()[&0], Some(200));
    // Another thread's view of the same consumer counts from its own positions.
    let ends = source.ends();
    assert_eq!(ends.cached_lag(&Offsets::new())[&0], Some(300));
    assert_eq!(ends.lag(&Offsets::from([(0, 50)])).expect("lag")[&0], 250);
    drop(mock);
    assert_eq!(source.cached_lag()[&0], Some(200), "read from the last fetch, no broker needed");
}

#[test]
fn partitions_are_counted_and_the_broker_is_reachable() {
    let (_mock, cfg) = cluster("existing", 3);
    let t = Duration::from_secs(10);
    assert_eq!(partition_count(&cfg, "existing", t).expect("count"), 3);
    check_connection(&cfg, t).expect("reachable");
}

#[test]
fn an_unreachable_broker_is_a_retryable_error_not_a_hang_or_a_loss() {
    // Port 9 (discard) on loopback: nothing listens, connections are refused.
    let mut cfg = KafkaConfig::new("127.0.0.1:9");
    cfg.flush_timeout_ms = 300;
    let e = check_connection(&cfg, Duration::from_millis(500)).expect_err("nothing listens");
    assert!(e.retryable(), "{e}");
    let mut sink = KafkaSink::create(&cfg, "t").expect("a producer is created offline");
    sink.send(Some(b"k"), b"{}").expect("queued locally");
    let e = sink.flush().expect_err("not acknowledged");
    assert!(e.retryable(), "{e}");
    assert!(e.to_string().contains("1 records"), "{e}");
    assert_eq!(sink.failed(), 0, "still queued, not dropped");
}

#[test]
fn settings_librdkafka_refuses_are_an_error_that_retrying_cannot_fix() {
    let (_mock, mut cfg) = cluster("t", 1);
    cfg.properties.insert("fetch.max.bytes".into(), "1000".into());
    let e = KafkaSource::assign(&cfg, "t", &Offsets::new()).err().expect("fetch.max.bytes below message.max.bytes");
    assert!(!e.retryable() && e.to_string().contains("fetch.max.bytes"), "{e}");
    cfg.properties = [("no.such.property".to_string(), "1".to_string())].into();
    let e = KafkaSink::create(&cfg, "t").err().expect("an unknown property");
    assert!(!e.retryable() && e.to_string().contains("no.such.property"), "{e}");
}

#[test]
fn delivered_offsets_are_reported_and_single_partitions_read_from_them() {
    let (_mock, cfg) = cluster("updates", 3);
    let mut sink = KafkaSink::create(&cfg, "updates").expect("sink");
    for i in 0..5u32 {
        sink.send_to(Some(1), Some(b"a"), format!("{{\"i\":{i}}}").as_bytes()).expect("send");
    }
    sink.send_to(Some(2), Some(b"a"), b"{}").expect("send");
    sink.flush().expect("flush");
    let d = sink.take_delivered();
    assert_eq!(d[&1], Delivered { first_offset: 0, last_offset: 4, records: 5 });
    assert_eq!(d[&2], Delivered { first_offset: 0, last_offset: 0, records: 1 });
    assert!(!d.contains_key(&0));
    assert!(sink.take_delivered().is_empty(), "taken once");
    for i in 5..8u32 {
        sink.send_to(Some(1), Some(b"b"), format!("{{\"i\":{i}}}").as_bytes()).expect("send");
    }
    sink.flush().expect("flush");
    assert_eq!(sink.take_delivered()[&1], Delivered { first_offset: 5, last_offset: 7, records: 3 });
    // Partition 1 only, from offset 3: records 3..8 and nothing of partition 2.
    let start: Offsets = [(1, 3)].into_iter().collect();
    let mut source = KafkaSource::assign_partitions(&cfg, "updates", &start).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while got.len() < 5 && Instant::now() < deadline {
        if let Poll::Records(rs) = source.poll(100, Duration::from_millis(200)).expect("poll") {
            for r in rs {
                assert_eq!(r.position.partition, 1);
                got.push(r.position.offset);
            }
        }
    }
    assert_eq!(got, vec![3, 4, 5, 6, 7]);
    assert!(drained(&mut source));
    assert_eq!(source.positions()[&1], 8);
    assert_eq!(source.assignment(), vec![1]);
}
