//! The Kafka joiner end to end, through the real `odl` binary and the real broker
//! (tansu, `scripts/kafka-up`):
//! - `odl simulate --kafka` → topics (3 partitions each) → `odl join --kafka` → samples
//!   topic: the same samples (as a multiset) and the same statistics as `odl join`
//!   replaying the simulator's file of the same seed;
//! - the joiner SIGKILLed mid-stream and restarted: every sample of the replay is in
//!   the topic, the duplicates are exact copies (same `sample_id`, same JSON), and
//!   their number is what the restarted joiner reported.
//!
//! The simulator runs without beyond-lateness events (every event arrives within the
//! 60 s allowed lateness), so the join result cannot depend on how the partitions
//! interleave (JOIN.md: only late events depend on arrival order), and with one page
//! view per second of event time the stream spans many 630 s windows: samples leave
//! by the watermark while the joiner streams, not only at the end.

#[path = "kafka_support/mod.rs"]
mod kafka_support;
#[path = "ps_support/mod.rs"]
mod ps_support;

use kafka_support::{brokers, config, consume_all, unique};
use odl_proto::stream::kafka::KafkaSink;
use odl_proto::stream::RecordSink;
use ps_support::{http_get, wait_exit, wait_until, ODL};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SIM_CONFIG: &str = "page_views_per_sec = 1.0\nbeyond_lateness_share = 0.0\n";
const STREAMS: [&str; 4] = ["exposure", "click", "detail_click", "feature"];

struct Topics {
    inputs: BTreeMap<&'static str, String>,
    samples: String,
    audit: String,
    dead_letter: String,
}

impl Topics {
    fn new() -> Self {
        let inputs = STREAMS.iter().map(|s| (*s, unique(&format!("kj-{s}")))).collect();
        Topics { inputs, samples: unique("kj-samples"), audit: unique("kj-audit"), dead_letter: unique("kj-dead") }
    }

    /// The joiner config of these topics (checkpoints and stats fast for the tests).
    fn joiner_config(&self, dir: &Path, brokers: &str, checkpoint_ms: u64) -> String {
        let path = dir.join(format!("joiner-{checkpoint_ms}.toml"));
        let i = &self.inputs;
        let text = format!(
            "stats_interval_ms = 100\n[kafka]\nbrokers = \"{brokers}\"\n[topics]\nexposure = \"{}\"\nclick = \"{}\"\n\
             detail_click = \"{}\"\nfeature = \"{}\"\nsamples = \"{}\"\naudit = \"{}\"\ndead_letter = \"{}\"\n\
             partitions = 3\n[streaming]\ncheckpoint_interval_ms = {checkpoint_ms}\nidle_partition_ms = 60000\n",
            i["exposure"], i["click"], i["detail_click"], i["feature"], self.samples, self.audit, self.dead_letter
        );
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

fn odl(args: &[&str]) -> std::process::Output {
    let out = Command::new(ODL).args(args).env("RUST_LOG", "warn").output().expect("run odl");
    assert!(out.status.success(), "odl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Simulates `events` lines (seed 7) to a file and replays the file through the
/// joiner: the expected samples (JSON text, sorted) and statistics.
fn simulate_and_replay(dir: &Path, events: u64) -> (std::path::PathBuf, Vec<String>, Value) {
    let sim = dir.join("sim.toml");
    std::fs::write(&sim, SIM_CONFIG).unwrap();
    let file = dir.join("events.jsonl");
    let n = events.to_string();
    let s = |p: &Path| p.display().to_string();
    odl(&["simulate", "--seed", "7", "--events", &n, "--config", &s(&sim), "--out", &s(&file)]);
    let (out, audit, stats) = (dir.join("samples.jsonl"), dir.join("audit.jsonl"), dir.join("stats.json"));
    odl(&["join", "--input", &s(&file), "--out", &s(&out), "--audit", &s(&audit), "--stats", &s(&stats)]);
    let mut samples: Vec<String> = std::fs::read_to_string(&out).unwrap().lines().map(canonical).collect();
    samples.sort();
    let stats: Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    (file, samples, stats)
}

/// A sample's JSON with its keys in one order (the object is the same whatever the
/// producer's key order).
fn canonical(line: &str) -> String {
    serde_json::from_str::<Value>(line).unwrap().to_string()
}

/// Every record of the samples topic: checks each is keyed by its sample_id and
/// returns the canonical JSON texts.
fn samples_in_topic(brokers: &str, topic: &str, at_least: usize) -> Vec<String> {
    let got = consume_all(brokers, topic, at_least, Duration::from_secs(2), Duration::from_secs(180));
    got.into_iter()
        .map(|(k, v)| {
            let v: Value = serde_json::from_slice(&v).unwrap();
            assert_eq!(k.as_deref(), v["sample_id"].as_str().map(str::as_bytes), "keyed by sample_id");
            v.to_string()
        })
        .collect()
}

/// `odl join --kafka` with `args`, its stderr forwarded line by line; returns the
/// child, its HTTP address (from the readiness line) and the stderr lines.
fn start_joiner(args: &[&str]) -> (Child, String, mpsc::Receiver<String>) {
    let mut child = Command::new(ODL)
        .args(["join", "--kafka", "--http-addr", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn odl join");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("joiner readiness line");
        if let Some(addr) = line.strip_prefix("odl join ready http=") {
            return (child, addr.trim().to_string(), rx);
        }
    }
}

fn get_json(addr: &str, path: &str) -> Value {
    let (status, body) = http_get(addr, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn simulate_to_kafka_to_joiner_gives_the_samples_and_stats_of_a_file_replay() {
    let Some(brokers) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_, expected, expected_stats) = simulate_and_replay(dir.path(), 30_000);
    assert!(expected.len() > 5_000, "{}", expected.len());
    let t = Topics::new();
    let sim = dir.path().join("sim.toml").display().to_string();
    let i = &t.inputs;
    odl(&[
        "simulate", "--kafka", "--brokers", &brokers, "--partitions", "3", "--seed", "7", "--events", "30000",
        "--config", &sim, "--exposure-topic", &i["exposure"], "--click-topic", &i["click"],
        "--detail-click-topic", &i["detail_click"], "--feature-topic", &i["feature"],
    ]);
    let cfg = t.joiner_config(dir.path(), &brokers, 1_000);
    let ckpt = dir.path().join("ckpt").display().to_string();
    let (mut child, _addr, _log) =
        start_joiner(&["--config", &cfg, "--checkpoint-dir", &ckpt, "--exit-when-idle-ms", "3000"]);
    let status = wait_exit(&mut child, Duration::from_secs(240));
    assert!(status.success(), "{status}");
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let stats: Value = serde_json::from_str(stdout.trim()).expect("final stats on stdout");
    assert_eq!(stats, expected_stats, "the same statistics as the replay");
    let mut got = samples_in_topic(&brokers, &t.samples, expected.len());
    got.sort();
    assert_eq!(got.len(), expected.len(), "counted exactly");
    assert!(got == expected, "the same samples as the replay");
    let audited = consume_all(&brokers, &t.audit, 1, Duration::from_secs(2), Duration::from_secs(60));
    assert_eq!(audited.len() as u64, expected_stats["samples"]["audited"].as_u64().unwrap());
    let dead = consume_all(&brokers, &t.dead_letter, 1, Duration::from_secs(2), Duration::from_secs(60));
    assert_eq!(dead.len() as u64, expected_stats["malformed"].as_u64().unwrap(), "every malformed line dead-lettered");
}

/// Produces replay lines to the input topics, routed by their `stream` field (lines
/// without one to the exposure topic) and keyed by `pv_id`, as `odl simulate --kafka`.
fn produce_lines(brokers: &str, t: &Topics, lines: &[&str]) {
    let mut sinks: BTreeMap<&str, KafkaSink> = BTreeMap::new();
    for line in lines {
        let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        let stream = STREAMS.into_iter().find(|s| v["stream"].as_str() == Some(*s)).unwrap_or("exposure");
        let topic = &t.inputs[stream];
        let sink = sinks.entry(stream).or_insert_with(|| KafkaSink::create(&config(brokers), topic).unwrap());
        sink.send(v["pv_id"].as_str().map(str::as_bytes), line.as_bytes()).unwrap();
    }
    sinks.values_mut().for_each(|s| s.flush().unwrap());
}

#[test]
fn a_joiner_killed_mid_stream_loses_no_sample_and_reports_its_duplicates() {
    let Some(brokers) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (file, expected, expected_stats) = simulate_and_replay(dir.path(), 30_000);
    let text = std::fs::read_to_string(file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (a, b, c) = (lines.len() / 2, lines.len() * 3 / 4, lines.len());
    let t = Topics::new();
    let cfg = t.joiner_config(dir.path(), &brokers, 5_000);
    let ckpt = dir.path().join("ckpt").display().to_string();

    // Run 1: the first half, then (right after a checkpoint) a quarter more, killed as
    // soon as it has read that quarter: what it emitted since the checkpoint is in the
    // topic but not in the checkpoint.
    let names: Vec<(&str, i32)> = t.inputs.values().map(|n| (n.as_str(), 3)).collect();
    odl_proto::stream::kafka::ensure_topics(&config(&brokers), &names).unwrap();
    produce_lines(&brokers, &t, &lines[..a]);
    let (mut child, addr, _log) = start_joiner(&["--config", &cfg, "--checkpoint-dir", &ckpt]);
    // Lines read: every well-formed event is received by its stream, the rest malformed.
    let read = |addr: &str| {
        let s = get_json(addr, "/stats");
        STREAMS.iter().map(|k| s[k]["received"].as_u64().unwrap()).sum::<u64>() + s["malformed"].as_u64().unwrap()
    };
    wait_until(Duration::from_secs(120), "the first half read", || read(&addr) == a as u64);
    let checkpoints = |addr: &str| get_json(addr, "/v1/recovery")["checkpoints_written"].as_u64().unwrap();
    let before = checkpoints(&addr);
    wait_until(Duration::from_secs(30), "a checkpoint", || checkpoints(&addr) > before);
    produce_lines(&brokers, &t, &lines[a..b]);
    wait_until(Duration::from_secs(60), "the next quarter read", || read(&addr) == b as u64);
    // The HTTP face while it runs.
    let (status, _) = http_get(&addr, "/readyz");
    assert_eq!(status, 200);
    let (status, metrics) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("odl_joiner_checkpoints_written") && metrics.contains("odl_joiner_samples_emitted"));
    let stats = get_json(&addr, "/stats");
    assert_eq!(stats.as_object().unwrap().len(), 6, "JOIN.md's statistics JSON, nothing more: {stats}");
    child.kill().unwrap(); // SIGKILL: no final checkpoint
    child.wait().unwrap();
    let emitted_before_kill = samples_in_topic(&brokers, &t.samples, 1).len();
    assert!(emitted_before_kill > 0);

    // Run 2: restarted on the same checkpoint, with the rest of the stream, drained.
    produce_lines(&brokers, &t, &lines[b..c]);
    let (mut child, _addr, log) =
        start_joiner(&["--config", &cfg, "--checkpoint-dir", &ckpt, "--exit-when-idle-ms", "3000"]);
    let status = wait_exit(&mut child, Duration::from_secs(240));
    assert!(status.success(), "{status}");
    let log: Vec<String> = log.try_iter().collect();
    let reported: u64 = log
        .iter()
        .find_map(|l| l.split_whitespace().find_map(|f| f.strip_prefix("reemitted_samples=")))
        .unwrap_or_else(|| panic!("no restore line in the log:\n{}", log.join("\n")))
        .parse()
        .unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let stats: Value = serde_json::from_str(stdout.trim()).expect("final stats on stdout");
    assert_eq!(stats, expected_stats, "the checkpoint carried the statistics across the crash");

    let got = samples_in_topic(&brokers, &t.samples, expected.len());
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for s in &got {
        *counts.entry(s.as_str()).or_default() += 1;
    }
    for s in &expected {
        assert!(counts.contains_key(s.as_str()), "sample lost: {s}");
    }
    assert_eq!(counts.len(), expected.len(), "no sample the replay does not have");
    let duplicates = got.len() as u64 - expected.len() as u64;
    eprintln!("{} samples before the kill, {duplicates} emitted twice, {reported} reported", emitted_before_kill);
    assert_eq!(duplicates, reported, "the re-emitted samples are counted exactly");
    assert!(duplicates > 0, "the kill came after samples that no checkpoint covered");

    // A trainer worker on the samples topic learns each sample once: the re-emitted
    // copies are recognised by their sample_id and skipped.
    let shard = ps_support::start(&ps_support::shard_args(0, 1, ps_support::free_port(), &dir.path().join("ps"), 3600, dir.path()));
    let wcfg = kafka_support::worker_config(dir.path(), "w", 0, &brokers, &shard.grpc, &t.samples, &unique("trainers"));
    let mut w = kafka_support::start_worker(&wcfg, &["--exit-when-idle-ms", "3000"]);
    assert!(wait_exit(&mut w.child, Duration::from_secs(240)).success());
    let report: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("w-report.json")).unwrap()).unwrap();
    assert_eq!(report["samples"].as_u64().unwrap(), expected.len() as u64, "each sample trained once");
    let log: Vec<String> = w.log.try_iter().collect();
    let skipped = log.iter().find_map(|l| l.strip_prefix("duplicates: ")).unwrap_or_else(|| panic!("{}", log.join("\n")));
    assert!(skipped.starts_with(&format!("{duplicates} ")), "{skipped}");
}
