//! The Kafka stream against the real broker (tansu): what the mock cluster in
//! `proto/src/stream/kafka/tests.rs` cannot show, topic creation through the admin
//! API, and keyed records surviving the round trip.

#[path = "kafka_support/mod.rs"]
mod kafka_support;

use kafka_support::*;
use odl_proto::stream::kafka::{ensure_topics, partition_count, KafkaSink};
use odl_proto::stream::RecordSink;
use std::time::Duration;

#[test]
fn topics_are_created_once_and_records_round_trip() {
    let Some(brokers) = brokers() else { return };
    let cfg = config(&brokers);
    let topic = unique("roundtrip");
    ensure_topics(&cfg, &[(&topic, 3)]).expect("create");
    ensure_topics(&cfg, &[(&topic, 5)]).expect("an existing topic is left alone");
    assert_eq!(partition_count(&cfg, &topic, Duration::from_secs(10)).expect("count"), 3);

    let mut sink = KafkaSink::create(&cfg, &topic).expect("producer");
    for i in 0..500 {
        sink.send(Some(format!("k{i}").as_bytes()), format!("{{\"i\":{i}}}").as_bytes())
            .expect("send");
    }
    sink.flush().expect("flush");
    let got = consume_all(&brokers, &topic, 500, Duration::from_millis(500), Duration::from_secs(60));
    assert_eq!(got.len(), 500, "each record exactly once");
    for (k, v) in got {
        let v: serde_json::Value = serde_json::from_slice(&v).expect("json");
        assert_eq!(k, Some(format!("k{}", v["i"]).into_bytes()));
    }
}

/// `odl bench kafka` on a small stream: it runs every phase against the real broker
/// and reports each figure the README quotes (no figure is asserted: the machines are
/// shared; the bench itself fails if the Kafka joiner calls more events late than a
/// file replay).
#[test]
fn the_kafka_bench_runs_and_reports_its_figures() {
    let Some(brokers) = brokers() else { return };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_odl"))
        .args(["bench", "kafka", "--events", "3000", "--partitions", "2", "--brokers", &brokers])
        .output()
        .expect("run odl bench kafka");
    assert!(out.status.success(), "odl bench kafka failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report["events"], 3000);
    for figure in ["end_to_end_vs_broker", "end_to_end_vs_broker_four_topics", "catch_up_vs_broker_consume"] {
        assert!(report[figure].as_f64().is_some_and(|r| r > 0.0), "{figure}: {}", report[figure]);
    }
    for reader in ["broker_consumer", "broker_four_topics_consumers", "joiner"] {
        assert!(report["read_when_produced"][reader].is_u64(), "read_when_produced.{reader}");
    }
    assert!(report["joiner_peak_rss_mb"].as_f64().is_some_and(|mb| mb > 0.0), "{}", report["joiner_peak_rss_mb"]);
    assert!(report["joiner_minor_page_faults"].as_u64().is_some_and(|n| n > 0), "{}", report["joiner_minor_page_faults"]);
}
