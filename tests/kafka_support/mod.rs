//! The real Kafka-protocol broker the integration tests share: tansu, started by
//! `scripts/kafka-up` (which `.ci/run` runs before the tests). Every test creates its
//! own uniquely named topics and consumer groups, so tests share one broker and run in
//! parallel.
//!
//! `ODL_KAFKA_BROKERS` overrides the address (default 127.0.0.1:9092). Without a
//! broker a test fails under CI (`CI` set, as in `.ci/run`) and is skipped with a
//! message elsewhere, so a laptop without tansu can still run the rest of the suite.
#![allow(dead_code)]

use odl_proto::stream::kafka::{KafkaConfig, KafkaSink, KafkaSource, Offsets};
use odl_proto::stream::{Poll, RecordSink, RecordSource};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The broker address, or `None` (test skipped) when none listens outside CI.
pub fn brokers() -> Option<String> {
    let brokers = std::env::var("ODL_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let first = brokers.split(',').next().unwrap_or_default().to_string();
    let reachable = first
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    if reachable {
        return Some(brokers);
    }
    if std::env::var_os("CI").is_some() {
        panic!("no Kafka broker at {brokers}: .ci/run starts one with scripts/kafka-up");
    }
    eprintln!("SKIPPED: no Kafka broker at {brokers} (run scripts/kafka-up)");
    None
}

pub fn config(brokers: &str) -> KafkaConfig {
    KafkaConfig::new(brokers)
}

/// A topic (or group) name no other test or earlier run uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Produce `values` (one message each, unkeyed) to `topic`, acknowledged.
pub fn produce<'a>(brokers: &str, topic: &str, values: impl IntoIterator<Item = &'a [u8]>) {
    let mut sink = KafkaSink::create(&config(brokers), topic).expect("producer");
    for v in values {
        sink.send(None, v).expect("send");
    }
    sink.flush().expect("flush");
}

/// Read every partition of `topic` from the beginning until `expected` messages
/// arrived and then `quiet` passed without another one (so extra messages are seen
/// too), or `timeout` passed. Returns (key, value) pairs in arrival order.
pub fn consume_all(
    brokers: &str,
    topic: &str,
    expected: usize,
    quiet: Duration,
    timeout: Duration,
) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    let mut source =
        KafkaSource::assign(&config(brokers), topic, &Offsets::new()).expect("consumer");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut last = Instant::now();
    while Instant::now() < deadline {
        match source
            .poll(10_000, Duration::from_millis(200))
            .expect("poll")
        {
            Poll::Records(rs) => {
                last = Instant::now();
                out.extend(
                    rs.into_iter()
                        .map(|r| (r.key.map(|k| k.to_vec()), r.value.to_vec())),
                );
            }
            Poll::Idle | Poll::End => {
                if out.len() >= expected && last.elapsed() >= quiet {
                    break;
                }
            }
        }
    }
    out
}

/// A trainer worker reading a samples topic (`odl train --config`, `source = "kafka"`).
pub struct Worker {
    pub child: std::process::Child,
    /// Its HTTP address (`/v1/progress`, `/metrics`, `/readyz`).
    pub http: String,
    /// Its stderr lines after the start.
    pub log: std::sync::mpsc::Receiver<String>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A worker config on `topic` as a member of `group`, against the PS shard at `ps_grpc`;
/// its report goes to `<dir>/<name>-report.json`; `worker = "<index>/<index+1>"` names
/// it, so the PS tells the workers' progress apart.
pub fn worker_config(dir: &std::path::Path, name: &str, index: usize, brokers: &str, ps_grpc: &str, topic: &str, group: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let report = dir.join(format!("{name}-report.json"));
    std::fs::write(
        &path,
        format!(
            "ps = [\"{ps_grpc}\"]\nsource = \"kafka\"\nsamples_topic = \"{topic}\"\ngroup = \"{group}\"\n\
             worker = \"{index}/{}\"\nthreads = 1\nprogress_interval_secs = 1\nhttp_addr = \"127.0.0.1:0\"\n\
             report = \"{}\"\n[kafka]\nbrokers = \"{brokers}\"\n",
            index + 1,
            report.display()
        ),
    )
    .expect("write worker config");
    path
}

/// Starts `odl train --config <config> <extra>` and waits (up to 60 s) until the PS
/// answered it (it joins the group once its topic exists).
pub fn start_worker(config: &std::path::Path, extra: &[&str]) -> Worker {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_odl"))
        .arg("train")
        .arg("--config")
        .arg(config)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn odl train");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut http, mut seen) = (None, Vec::new());
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            panic!("odl train never became ready; stderr:\n{}", seen.join("\n"));
        };
        if let Some(addr) = line.split_once(" http=").map(|(_, a)| a.trim().to_string()) {
            http = Some(addr);
        }
        if line.contains(" ready: ") {
            if let Some(http) = http {
                return Worker { child, http, log: rx };
            }
        }
        seen.push(line);
    }
}
