//! Trainer workers on the samples topic as one consumer group, through the real `odl`
//! binary, a real PS shard process and the real broker: two workers share the
//! partitions; one is stopped (SIGTERM) or killed (SIGKILL) and the other takes its
//! partitions over, training every sample the stopped one had not committed and none
//! it had.

#[path = "kafka_support/mod.rs"]
mod kafka_support;
#[path = "ps_support/mod.rs"]
mod ps_support;

use kafka_support::{brokers, config, start_worker, unique, worker_config, Worker};
use odl_proto::stream::kafka::{committed_offsets, ensure_topics, KafkaSink};
use odl_proto::stream::RecordSink;
use ps_support::{free_port, http_get, shard_args, wait_exit, wait_until, ODL};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const PARTITIONS: i32 = 4;

/// Samples of a simulated stream, joined by `odl join` from a replay file.
fn samples(dir: &Path, events: u64) -> Vec<String> {
    let s = |p: &PathBuf| p.display().to_string();
    let (file, out) = (dir.join("events.jsonl"), dir.join("samples.jsonl"));
    let run = |args: &[&str]| {
        let o = Command::new(ODL).args(args).env("RUST_LOG", "warn").output().expect("run odl");
        assert!(o.status.success(), "odl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    run(&["simulate", "--seed", "11", "--events", &events.to_string(), "--out", &s(&file)]);
    let audit = dir.join("audit.jsonl");
    let stats = dir.join("stats.json");
    run(&["join", "--input", &s(&file), "--out", &s(&out), "--audit", &s(&audit), "--stats", &s(&stats)]);
    std::fs::read_to_string(out).unwrap().lines().map(str::to_string).collect()
}

/// Each sample keyed by its `sample_id`, as the joiner writes the topic.
fn produce_samples(brokers: &str, topic: &str, lines: &[String]) {
    let mut sink = KafkaSink::create(&config(brokers), topic).unwrap();
    for l in lines {
        let v: Value = serde_json::from_str(l).unwrap();
        sink.send(Some(v["sample_id"].as_str().unwrap().as_bytes()), l.as_bytes()).unwrap();
    }
    sink.flush().unwrap();
}

fn progress(w: &Worker) -> Value {
    let (status, body) = http_get(&w.http, "/v1/progress");
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

fn trained(w: &Worker) -> u64 {
    progress(w)["samples"].as_u64().unwrap()
}

fn partitions(w: &Worker) -> usize {
    progress(w)["partitions"].as_array().unwrap().len()
}

/// The `samples` of a finished worker's report.json.
fn reported(dir: &Path, name: &str) -> u64 {
    let r: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}-report.json"))).unwrap()).unwrap();
    r["samples"].as_u64().unwrap()
}

#[test]
fn two_workers_share_the_topic_and_one_takes_over_when_the_other_stops() {
    let Some(brokers) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let lines = samples(dir.path(), 60_000);
    let half = lines.len() / 2;
    let (topic, group) = (unique("samples"), unique("trainers"));
    ensure_topics(&config(&brokers), &[(&topic, PARTITIONS)]).unwrap();
    let ckpt = dir.path().join("ps");
    let shard = ps_support::start(&shard_args(0, 1, free_port(), &ckpt, 3600, dir.path()));
    let cfg = |name, index| worker_config(dir.path(), name, index, &brokers, &shard.grpc, &topic, &group);
    let (cfg_a, cfg_b) = (cfg("a", 0), cfg("b", 1));

    let a = start_worker(&cfg_a, &[]);
    let b = start_worker(&cfg_b, &[]);
    wait_until(Duration::from_secs(60), "the partitions shared by both", || {
        partitions(&a) > 0 && partitions(&b) > 0 && partitions(&a) + partitions(&b) == PARTITIONS as usize
    });
    produce_samples(&brokers, &topic, &lines[..half]);
    wait_until(Duration::from_secs(120), "the first half trained", || trained(&a) + trained(&b) == half as u64);
    let by_b = trained(&b);
    assert!(by_b > 0 && trained(&a) > 0, "both workers trained");
    // The readiness and metrics of a worker on a topic.
    assert_eq!(http_get(&b.http, "/readyz").0, 200);
    let metrics = http_get(&a.http, "/metrics").1;
    assert!(metrics.contains("odl_trainer_partitions") && metrics.contains("odl_trainer_duplicate_samples"), "{metrics}");
    // SIGTERM: b finishes its batch, commits, leaves the group and exits 0. (A SIGKILLed
    // worker is the next test.)
    let mut b = b;
    Command::new("kill").args(["-TERM", &b.child.id().to_string()]).status().unwrap();
    assert!(wait_exit(&mut b.child, Duration::from_secs(60)).success());
    assert_eq!(reported(dir.path(), "b"), by_b, "b trained nothing after its last report");

    produce_samples(&brokers, &topic, &lines[half..]);
    // The worker logs each change of the partitions it owns: wait for the one to all.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while partitions(&a) != PARTITIONS as usize {
        match a.log.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Ok(line) if line.contains("partitions this worker owns changed") => {}
            Ok(_) => continue,
            Err(_) => panic!("the dead worker's partitions were not taken over: {}", progress(&a)),
        }
    }
    wait_until(Duration::from_secs(120), "the rest trained", || trained(&a) + by_b >= lines.len() as u64);
    // SIGTERM: the worker commits, writes its report and exits 0.
    let mut a = a;
    Command::new("kill").args(["-TERM", &a.child.id().to_string()]).status().unwrap();
    let status = wait_exit(&mut a.child, Duration::from_secs(60));
    assert!(status.success(), "{status}");
    let by_a = reported(dir.path(), "a");
    assert_eq!(by_a + by_b, lines.len() as u64, "every sample trained once: {by_a} by a, {by_b} by b");

    // Everything is committed: a new member of the group finds nothing to train.
    let mut c = start_worker(&cfg("c", 2), &["--exit-when-idle-ms", "3000"]);
    assert!(wait_exit(&mut c.child, Duration::from_secs(120)).success());
    assert_eq!(reported(dir.path(), "c"), 0);
}

#[test]
fn a_sigkilled_workers_partitions_are_taken_over_and_every_sample_is_trained() {
    let Some(brokers) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let lines = samples(dir.path(), 40_000);
    let half = lines.len() / 2;
    let (topic, group) = (unique("samples"), unique("trainers"));
    ensure_topics(&config(&brokers), &[(&topic, PARTITIONS)]).unwrap();
    let shard = ps_support::start(&shard_args(0, 1, free_port(), &dir.path().join("ps"), 3600, dir.path()));
    let cfg = |name, index| worker_config(dir.path(), name, index, &brokers, &shard.grpc, &topic, &group);
    let a = start_worker(&cfg("a", 0), &[]);
    let mut b = start_worker(&cfg("b", 1), &[]);
    wait_until(Duration::from_secs(60), "the partitions shared by both", || {
        partitions(&a) > 0 && partitions(&b) > 0 && partitions(&a) + partitions(&b) == PARTITIONS as usize
    });
    produce_samples(&brokers, &topic, &lines[..half]);
    wait_until(Duration::from_secs(120), "the first half trained", || trained(&a) + trained(&b) == half as u64);
    // Both commit at their first idle poll: the group's commits then cover the first
    // half. Then SIGKILL: no LeaveGroup, the broker only stops hearing from b.
    let committed = || committed_offsets(&config(&brokers), &topic, &group, Duration::from_secs(5)).unwrap();
    wait_until(Duration::from_secs(60), "the first half committed", || {
        committed().values().sum::<i64>() == half as i64
    });
    let by_b = trained(&b);
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    produce_samples(&brokers, &topic, &lines[half..]);
    // tansu hands the survivor its old partitions back; it rejoins (see README, "Kafka").
    wait_until(Duration::from_secs(120), "the killed worker's partitions taken over", || {
        partitions(&a) == PARTITIONS as usize
    });
    wait_until(Duration::from_secs(120), "the rest trained", || trained(&a) + by_b >= lines.len() as u64);
    let mut a = a;
    Command::new("kill").args(["-TERM", &a.child.id().to_string()]).status().unwrap();
    assert!(wait_exit(&mut a.child, Duration::from_secs(60)).success());
    // Everything b trained was committed before the kill: nothing is trained twice.
    let by_a = reported(dir.path(), "a");
    assert_eq!(by_a + by_b, lines.len() as u64, "every sample trained once: {by_a} by a, {by_b} by b");
    assert_eq!(committed().values().sum::<i64>(), lines.len() as i64, "and committed");
    // Everything is committed: a new member of the group finds nothing to train.
    let mut c = start_worker(&cfg("c", 2), &["--exit-when-idle-ms", "3000"]);
    assert!(wait_exit(&mut c.child, Duration::from_secs(120)).success());
    assert_eq!(reported(dir.path(), "c"), 0);
}

#[test]
fn a_worker_without_a_broker_waits_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let shard = ps_support::start(&shard_args(0, 1, free_port(), &dir.path().join("ps"), 3600, dir.path()));
    let cfg = worker_config(dir.path(), "w", 0, "127.0.0.1:1", &shard.grpc, "odl.samples", "g");
    let w = start_worker(&cfg, &[]);
    wait_until(Duration::from_secs(60), "readiness to report the broker", || {
        let (status, body) = http_get(&w.http, "/readyz");
        status == 503 && body.contains("samples topic unavailable")
    });
    assert!(w.child.id() > 0);
    let mut w = w;
    assert!(w.child.try_wait().unwrap().is_none(), "still running, waiting for the broker");
    Command::new("kill").args(["-TERM", &w.child.id().to_string()]).status().unwrap();
    let status = wait_exit(&mut w.child, Duration::from_secs(30));
    assert!(status.success(), "SIGTERM ends a waiting worker cleanly: {status}");
}
