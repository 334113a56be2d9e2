//! `odl bench kafka`: simulated events through the broker into the joiner (a child
//! `odl join --kafka`) and samples out, against the broker's own produce→consume rate
//! measured in the same run with the same messages and no joiner.
//!
//! - broker baseline: the N simulated lines produced to one topic and consumed back;
//!   events/s from the first send to the last record read;
//! - broker baseline in the pipeline's layout: the same N lines routed to four fresh
//!   stream topics keyed by `pv_id` (as the end-to-end run produces them) and read back
//!   by plain consumers, no joiner: the rate a joiner that cost nothing would reach;
//! - end to end: the joiner started and idle first, then the same N lines produced to
//!   the four input topics; events/s from the first send until the joiner's `/stats`
//!   has received all N (each joined, dead-lettered or pending), and the joiner's CPU
//!   time as a share of that wall time, its peak resident memory and its minor page
//!   faults (from /proc);
//! - target (issue 7): end to end at least 80% of the one-topic baseline (the joiner
//!   is not the bottleneck); against the four-topic baseline, the share left to the
//!   joiner alone;
//! - `read_when_produced`: how many lines the baseline's consumer and the joiner had
//!   read when the last send was acknowledged, which tells whether a run was bound by
//!   what the broker serves while it is taking writes (tansu 0.6 served the baseline's
//!   consumer almost nothing until the writes were done) or by the joiner afterwards;
//! - catch-up: a second joiner, on a fresh checkpoint and output topics, reading the
//!   same input topics from their beginning once every line is there: the joiner's own
//!   rate when no producer shares the machine (a joiner catching up on a backlog after
//!   an outage), against a plain consumer reading the same four topics the same way;
//! - late events per stream, beside those of a file replay of the same lines: Kafka
//!   mode must not call more events late than the replay does (a watermark that races
//!   ahead on one topic would, and would make a fast run look good).
//!
//! Needs a broker (`scripts/kafka-up`); every run uses fresh topics.

use crate::serve::client::HttpClient;
use crate::simulate::kafka::{KafkaRouter, StreamTopics};
use crate::simulate::{generate, SimConfig, SimOptions, VecSink};
use anyhow::{bail, Context};
use odl_proto::stream::kafka::{ensure_topics, KafkaConfig, KafkaSink, KafkaSource, Offsets};
use odl_proto::stream::{Poll, RecordSink, RecordSource};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct BenchKafkaArgs {
    /// Events in the simulated stream.
    #[arg(long, default_value_t = 500_000)]
    pub events: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Partitions of each topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
}

pub fn run(args: BenchKafkaArgs) -> anyhow::Result<()> {
    let cfg = KafkaConfig::new(&args.brokers);
    odl_proto::stream::kafka::check_connection(&cfg, Duration::from_secs(5))
        .with_context(|| format!("no broker at {} (scripts/kafka-up starts one)", args.brokers))?;
    let t = Instant::now();
    let mut lines = VecSink::default();
    let opts = SimOptions { seed: args.seed, events: args.events, rate: None };
    generate(&SimConfig::load(None)?, &opts, &mut lines, None)?;
    let lines = lines.lines;
    let bytes: usize = lines.iter().map(Vec::len).sum();
    eprintln!("simulated {} events ({} MB) in {:.1} s", lines.len(), bytes >> 20, t.elapsed().as_secs_f64());
    let tag = format!("bench-{}-{}", std::process::id(), t.elapsed().as_nanos());

    let machine = MachineCpu::now();
    let (baseline, baseline_read_when_produced) =
        broker_round_trip(&cfg, &format!("{tag}-baseline"), args.partitions, &lines)?;
    let baseline_machine = machine.map(|m| m.since());
    eprintln!("broker produce->consume: {:.0} events/s", lines.len() as f64 / baseline);
    let machine = MachineCpu::now();
    let (routed, routed_read_when_produced) =
        broker_round_trip_routed(&cfg, &format!("{tag}-routed"), args.partitions, &lines)?;
    let routed_machine = machine.map(|m| m.since());
    eprintln!("broker produce->consume, four stream topics: {:.0} events/s", lines.len() as f64 / routed);
    let topics = stream_topics(&tag);
    let machine = MachineCpu::now();
    let e2e = through_joiner(&cfg, &tag, &topics, args.partitions, &lines)?;
    let e2e_machine = machine.map(|m| m.since());
    let consume_seconds = consume_all(&cfg, &topics, lines.len())?;
    let catch_up = catch_up(&cfg, &format!("{tag}-catch-up"), &topics, args.partitions, lines.len())?;
    let replay_late = late_in_a_file_replay(&lines)?;

    let n = lines.len() as f64;
    let report = serde_json::json!({
        "events": lines.len(),
        "mb": bytes >> 20,
        "partitions": args.partitions,
        "broker_produce_consume_events_per_sec": (n / baseline) as u64,
        "end_to_end_events_per_sec": (n / e2e.seconds) as u64,
        "end_to_end_vs_broker": ((baseline / e2e.seconds) * 1000.0).round() / 1000.0,
        "end_to_end_seconds": e2e.seconds,
        "produce_seconds": e2e.produce_seconds,
        "broker_four_topics_produce_consume_events_per_sec": (n / routed) as u64,
        "end_to_end_vs_broker_four_topics": ((routed / e2e.seconds) * 1000.0).round() / 1000.0,
        "read_when_produced": {
            "broker_consumer": baseline_read_when_produced,
            "broker_four_topics_consumers": routed_read_when_produced,
            "joiner": e2e.received_when_produced,
        },
        "joiner_cpu_seconds": e2e.joiner_cpu_seconds,
        "joiner_cpu_share_of_wall": ((e2e.joiner_cpu_seconds / e2e.seconds) * 1000.0).round() / 1000.0,
        "joiner_cpu_seconds_by_thread": e2e.joiner_threads,
        "joiner_peak_rss_mb": e2e.joiner_peak_rss_mb,
        "joiner_minor_page_faults": e2e.joiner_minor_faults,
        "broker_machine_cpu": baseline_machine.map(MachineUse::to_json),
        "broker_four_topics_machine_cpu": routed_machine.map(MachineUse::to_json),
        "end_to_end_machine_cpu": e2e_machine.map(MachineUse::to_json),
        "samples_emitted_when_all_received": e2e.samples,
        "joiner_checkpoints": e2e.checkpoints,
        "broker_consume_four_topics_events_per_sec": (n / consume_seconds) as u64,
        "catch_up_events_per_sec": (n / catch_up.seconds) as u64,
        "catch_up_vs_broker_consume": ((consume_seconds / catch_up.seconds) * 1000.0).round() / 1000.0,
        "catch_up_vs_broker": ((baseline / catch_up.seconds) * 1000.0).round() / 1000.0,
        "catch_up_joiner_cpu_seconds": catch_up.joiner_cpu_seconds,
        "catch_up_startup_seconds": catch_up.startup_seconds,
        "late": e2e.late,
        "late_in_a_file_replay": replay_late,
        "target": "end_to_end_vs_broker >= 0.8 (issue 7); end_to_end_vs_broker_four_topics isolates the joiner's cost",
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    let more_late = STREAMS.iter().any(|k| e2e.late[k].as_u64() > replay_late[k].as_u64());
    anyhow::ensure!(!more_late, "the Kafka joiner called more events late than a file replay: a watermark bug");
    Ok(())
}

/// The whole machine's CPU counters (/proc/stat), to tell a run that waited from one
/// that had every core busy: with the cores saturated, only less CPU work per event
/// makes it faster, not more threads.
#[derive(Clone, Copy)]
struct MachineCpu {
    busy: u64,
    total: u64,
}

/// What the machine did between two readings.
#[derive(Clone, Copy)]
struct MachineUse {
    /// CPU seconds of every process (and the kernel) on the machine.
    cpu_seconds: f64,
    /// Of all the cores' time, the share that was busy.
    busy_share: f64,
}

impl MachineCpu {
    fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let total: u64 = ticks.iter().take(8).sum();
        let idle = ticks.get(3)? + ticks.get(4).unwrap_or(&0);
        Some(MachineCpu { busy: total - idle, total })
    }

    fn since(self) -> MachineUse {
        let now = MachineCpu::now().unwrap_or(self);
        let busy = now.busy.saturating_sub(self.busy) as f64;
        let total = now.total.saturating_sub(self.total).max(1) as f64;
        // /proc/stat counts USER_HZ ticks, 100 per second on Linux.
        MachineUse { cpu_seconds: busy / 100.0, busy_share: busy / total }
    }
}

impl MachineUse {
    fn to_json(self) -> serde_json::Value {
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        serde_json::json!({ "cpu_seconds": round(self.cpu_seconds), "busy_share": round(self.busy_share) })
    }
}

const STREAMS: [&str; 4] = ["exposure", "click", "detail_click", "feature"];

/// Lines the joiner has taken in: every event it received, and every malformed line.
fn received(stats: &serde_json::Value) -> u64 {
    STREAMS.iter().map(|k| stats[k]["received"].as_u64().unwrap_or(0)).sum::<u64>()
        + stats["malformed"].as_u64().unwrap_or(0)
}

/// Late events per stream in `stats` (the joiner's /stats shape).
fn late_per_stream(stats: &serde_json::Value) -> serde_json::Value {
    STREAMS.iter().map(|k| (k.to_string(), stats[k]["late"].clone())).collect()
}

/// Late events per stream when the same lines are joined as a replay file, in process.
fn late_in_a_file_replay(lines: &[Vec<u8>]) -> anyhow::Result<serde_json::Value> {
    let (mut tx, mut rx) = odl_proto::stream::channel::channel("bench", lines.len() + 1);
    for l in lines {
        tx.send(None, l)?;
    }
    drop(tx);
    let (mut samples, mut audit, mut dead) = (Discard, Discard, Discard);
    let sinks = odl_joiner::service::Sinks { samples: &mut samples, audit: &mut audit, dead_letter: Some(&mut dead) };
    let stats = odl_joiner::service::run(&odl_joiner::JoinerConfig::default(), &mut rx, sinks, |_| Ok(()))?;
    Ok(late_per_stream(&serde_json::from_str(&stats.to_json())?))
}

/// A sink that keeps nothing (the replay is run for its statistics).
struct Discard;

impl RecordSink for Discard {
    fn send(&mut self, _: Option<&[u8]>, _: &[u8]) -> odl_proto::stream::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> odl_proto::stream::Result<()> {
        Ok(())
    }
}

/// Produces `lines` to a fresh topic and consumes them all back, at once: seconds from
/// the first send to the last record read, and how many records had been read when
/// the last send was acknowledged.
fn broker_round_trip(cfg: &KafkaConfig, topic: &str, partitions: i32, lines: &[Vec<u8>]) -> anyhow::Result<(f64, usize)> {
    ensure_topics(cfg, &[(topic, partitions)])?;
    let mut sources = [KafkaSource::assign(cfg, topic, &Offsets::new())?];
    round_trip(KafkaSink::create(cfg, topic)?, &mut sources, lines)
}

/// [`broker_round_trip`] through the pipeline's own layout: the lines routed to the
/// four stream topics keyed by `pv_id`, as the end-to-end run produces them, and read
/// back by plain consumers of those topics: what the broker and the producer cost for
/// that layout with no joiner at all, the rate a joiner that cost nothing would reach.
/// It tells whether the one-topic baseline asks less of the broker than the pipeline's
/// 16 keyed partitions can ever get (on tansu 0.6 it does not: the two rates are close).
fn broker_round_trip_routed(cfg: &KafkaConfig, tag: &str, partitions: i32, lines: &[Vec<u8>]) -> anyhow::Result<(f64, usize)> {
    let topics = stream_topics(tag);
    let router = KafkaRouter::create(cfg, &topics, partitions)?;
    let names = [&topics.exposure, &topics.click, &topics.detail_click, &topics.feature];
    let mut sources =
        names.iter().map(|t| KafkaSource::assign(cfg, t, &Offsets::new())).collect::<Result<Vec<_>, _>>()?;
    round_trip(router, &mut sources, lines)
}

/// Sends `lines` through `sink` on a thread of its own while `sources` are read in
/// turn (waiting only after a round that brought nothing): seconds from the first
/// send to the last record read, and how many records had been read when the last
/// send was acknowledged.
fn round_trip(mut sink: impl RecordSink, sources: &mut [KafkaSource], lines: &[Vec<u8>]) -> anyhow::Result<(f64, usize)> {
    let produced = AtomicBool::new(false);
    let started = Instant::now();
    let read_when_produced = std::thread::scope(|s| -> anyhow::Result<usize> {
        let producer = s.spawn(|| -> anyhow::Result<()> {
            send_all(&mut sink, lines)?;
            produced.store(true, Ordering::Release);
            Ok(())
        });
        let (mut read, mut read_when_produced, mut busy) = (0, None, false);
        let deadline = Instant::now() + Duration::from_secs(600);
        while read < lines.len() {
            if Instant::now() > deadline {
                bail!("consumed only {read} of {} records in 10 minutes", lines.len());
            }
            if read_when_produced.is_none() && produced.load(Ordering::Acquire) {
                read_when_produced = Some(read);
            }
            let (before, wait) = (read, if busy { Duration::ZERO } else { Duration::from_millis(5) });
            for source in sources.iter_mut() {
                if let Poll::Records(rs) = source.poll(10_000, wait)? {
                    read += rs.len();
                }
            }
            busy = read > before;
        }
        producer.join().map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
        Ok(read_when_produced.unwrap_or(read))
    })?;
    Ok((started.elapsed().as_secs_f64(), read_when_produced))
}

struct EndToEnd {
    seconds: f64,
    produce_seconds: f64,
    /// Lines in the joiner's `/stats` when the last send was acknowledged.
    received_when_produced: u64,
    joiner_cpu_seconds: f64,
    joiner_threads: BTreeMap<String, f64>,
    joiner_peak_rss_mb: Option<f64>,
    joiner_minor_faults: Option<u64>,
    samples: u64,
    /// Late events per stream when every line had been received.
    late: serde_json::Value,
    /// The joiner's checkpoint figures then (`/v1/recovery`).
    checkpoints: serde_json::Value,
}

fn stream_topics(tag: &str) -> StreamTopics {
    StreamTopics {
        exposure: format!("{tag}-exposure"),
        click: format!("{tag}-click"),
        detail_click: format!("{tag}-detail_click"),
        feature: format!("{tag}-feature"),
    }
}

/// A joiner config on `inputs`, with output topics and a checkpoint of its own under
/// `dir` (named by `tag`).
fn joiner_config(cfg: &KafkaConfig, dir: &std::path::Path, tag: &str, inputs: &StreamTopics, partitions: i32) -> anyhow::Result<std::path::PathBuf> {
    let topic = |s: &str| format!("{tag}-{s}");
    let config = dir.join("joiner.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\n[topics]\nexposure = \"{}\"\nclick = \"{}\"\n\
             detail_click = \"{}\"\nfeature = \"{}\"\nsamples = \"{}\"\naudit = \"{}\"\ndead_letter = \"{}\"\n\
             partitions = {partitions}\n[streaming]\ncheckpoint_dir = \"{}\"\n",
            cfg.brokers,
            inputs.exposure,
            inputs.click,
            inputs.detail_click,
            inputs.feature,
            topic("samples"),
            topic("audit"),
            topic("dead"),
            dir.join("ckpt").display()
        ),
    )?;
    Ok(config)
}

/// The joiner as a child process on fresh topics, idle first; then the lines produced
/// to the input topics; timed until its /stats has received every line.
fn through_joiner(cfg: &KafkaConfig, tag: &str, topics: &StreamTopics, partitions: i32, lines: &[Vec<u8>]) -> anyhow::Result<EndToEnd> {
    let dir = std::env::temp_dir().join(tag);
    std::fs::create_dir_all(&dir)?;
    let config = joiner_config(cfg, &dir, tag, topics, partitions)?;
    let mut router = KafkaRouter::create(cfg, topics, partitions)?;
    let mut joiner = Joiner::start(&config)?;
    let started = Instant::now();
    produce_on_a_thread(&mut router, lines)?;
    let produce_seconds = started.elapsed().as_secs_f64();
    let received_when_produced = received(&joiner.stats()?);
    let stats = joiner.wait_until_received(lines.len() as u64)?;
    let seconds = started.elapsed().as_secs_f64();
    let joiner_cpu_seconds = joiner.cpu_seconds().unwrap_or(f64::NAN);
    let joiner_threads = joiner.thread_cpu_seconds();
    let (joiner_peak_rss_mb, joiner_minor_faults) = joiner.memory().map_or((None, None), |(m, f)| (Some(m), Some(f)));
    let checkpoints = joiner.recovery()?;
    drop(joiner);
    let _ = std::fs::remove_dir_all(&dir);
    let samples = stats["samples"]["emitted"].as_u64().unwrap_or(0);
    let late = late_per_stream(&stats);
    Ok(EndToEnd {
        seconds,
        produce_seconds,
        received_when_produced,
        joiner_cpu_seconds,
        joiner_threads,
        joiner_peak_rss_mb,
        joiner_minor_faults,
        samples,
        late,
        checkpoints,
    })
}

/// [`send_all`] on a thread of its own, as the broker baselines' producers run, so
/// that the producers of all three runs run alike.
fn produce_on_a_thread(sink: &mut impl RecordSink, lines: &[Vec<u8>]) -> anyhow::Result<()> {
    std::thread::scope(|s| {
        let producer = s.spawn(|| send_all(sink, lines));
        producer.join().map_err(|_| anyhow::anyhow!("producer thread panicked"))?
    })
}

/// Sends every line, then waits until the broker acknowledged them all.
fn send_all(sink: &mut impl RecordSink, lines: &[Vec<u8>]) -> anyhow::Result<()> {
    for l in lines {
        sink.send(None, l)?;
    }
    Ok(sink.flush()?)
}

struct CatchUp {
    /// From the joiner's ready line (consumers assigned, as the plain consumers are
    /// when their clock starts) until it has received every line.
    seconds: f64,
    /// From the process start to its ready line (topics checked, clients opened).
    startup_seconds: f64,
    joiner_cpu_seconds: f64,
}

/// A second joiner on the filled input topics, from their beginning (a fresh
/// checkpoint), timed until it has received all `n` lines.
fn catch_up(cfg: &KafkaConfig, tag: &str, inputs: &StreamTopics, partitions: i32, n: usize) -> anyhow::Result<CatchUp> {
    let dir = std::env::temp_dir().join(tag);
    std::fs::create_dir_all(&dir)?;
    let config = joiner_config(cfg, &dir, tag, inputs, partitions)?;
    let launched = Instant::now();
    let mut joiner = Joiner::start(&config)?;
    let ready = Instant::now();
    joiner.wait_until_received(n as u64)?;
    let seconds = ready.elapsed().as_secs_f64();
    let joiner_cpu_seconds = joiner.cpu_seconds().unwrap_or(f64::NAN);
    drop(joiner);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(CatchUp { seconds, startup_seconds: (ready - launched).as_secs_f64(), joiner_cpu_seconds })
}

/// Seconds for plain consumers, polled in turn as the joiner polls its inputs (no wait
/// after a round that brought records), to read the `n` records of the four input
/// topics from their beginning.
fn consume_all(cfg: &KafkaConfig, topics: &StreamTopics, n: usize) -> anyhow::Result<f64> {
    let names = [&topics.exposure, &topics.click, &topics.detail_click, &topics.feature];
    let started = Instant::now();
    let mut sources =
        names.iter().map(|t| KafkaSource::assign(cfg, t, &Offsets::new())).collect::<Result<Vec<_>, _>>()?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut read, mut busy) = (0, false);
    while read < n {
        if Instant::now() > deadline {
            bail!("consumed only {read} of {n} records in 10 minutes");
        }
        let before = read;
        let wait = if busy { Duration::ZERO } else { Duration::from_millis(5) };
        for s in &mut sources {
            if let Poll::Records(rs) = s.poll(8192, wait)? {
                read += rs.len();
            }
        }
        busy = read > before;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The `odl join --kafka` child; killed on drop.
struct Joiner {
    child: Child,
    http: HttpClient,
}

impl Joiner {
    fn start(config: &std::path::Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the odl binary")?;
        let mut child = Command::new(exe)
            .args(["join", "--kafka", "--http-addr", "127.0.0.1:0", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting odl join --kafka")?;
        let stderr = child.stderr.take().context("joiner stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(a) = l.strip_prefix("odl join ready http=") {
                        break a.trim().to_string();
                    }
                }
                _ => bail!("odl join --kafka exited before it was ready"),
            }
        };
        // Keep draining its stderr so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let mut j = Joiner { child, http: HttpClient::connect(&addr)? };
        let deadline = Instant::now() + Duration::from_secs(60);
        while j.http.get("/readyz")?.0 != 200 {
            if Instant::now() > deadline {
                bail!("the joiner did not become ready (broker?)");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(j)
    }

    fn stats(&mut self) -> anyhow::Result<serde_json::Value> {
        self.get_json("/stats")
    }

    /// Polls `/stats` until `n` events have been received (joined, dead-lettered or
    /// pending); returns those statistics.
    fn wait_until_received(&mut self, n: u64) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            let s = self.stats()?;
            let received = received(&s);
            if received >= n {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("the joiner received {received} of {n} events in 15 minutes");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Checkpoints written so far, and the size and time of the last one.
    fn recovery(&mut self) -> anyhow::Result<serde_json::Value> {
        let r = self.get_json("/v1/recovery")?;
        let keys = ["checkpoints_written", "last_checkpoint_bytes", "last_checkpoint_seconds"];
        Ok(keys.iter().map(|k| (k.to_string(), r[k].clone())).collect())
    }

    fn get_json(&mut self, path: &str) -> anyhow::Result<serde_json::Value> {
        let (status, body) = self.http.get(path)?;
        anyhow::ensure!(status == 200, "GET {path}: {status}");
        Ok(serde_json::from_slice(&body)?)
    }

    /// The child's peak resident memory in MB (VmHWM) and its minor page faults so
    /// far: every page it touched first costs a fault, so a joiner that holds more
    /// than its windows need pays for it in CPU as well as in memory.
    fn memory(&self) -> Option<(f64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb: f64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        let faults = stat.rsplit_once(')')?.1.split_whitespace().nth(7)?.parse().ok()?;
        Some(((kb / 1024.0).round(), faults))
    }

    /// utime + stime of the child (/proc/PID/stat, clock ticks of 1/100 s).
    fn cpu_seconds(&self) -> Option<f64> {
        stat_cpu_seconds(&std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?)
    }

    /// The child's CPU seconds per kind of thread (its name without digits: the
    /// loop, its reader threads, librdkafka's broker threads), to see which one a
    /// run spent its time in.
    fn thread_cpu_seconds(&self) -> BTreeMap<String, f64> {
        let mut by_kind = BTreeMap::new();
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id())).into_iter().flatten().flatten();
        for task in tasks {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
            let name = stat.split_once('(').and_then(|(_, r)| r.rsplit_once(')')).map_or("?", |(n, _)| n);
            let kind: String = name.split('-').take(2).collect::<Vec<_>>().join("-");
            let kind = kind.trim_end_matches(|c: char| c.is_ascii_digit() || c == ':').to_string();
            let seconds = stat_cpu_seconds(&stat).unwrap_or(0.0);
            *by_kind.entry(kind).or_insert(0.0) += seconds;
        }
        by_kind.values_mut().for_each(|s| *s = (*s * 100.0).round() / 100.0);
        by_kind
    }
}

/// utime + stime from a /proc stat line (clock ticks of 1/100 s).
fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

impl Drop for Joiner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
