//! `odl bench join`: simulate a stream to a temporary file (not timed), then replay it
//! through `odl join` in a child process, end to end (read, parse, join, write files),
//! and print events/s and the child's peak RSS (VmHWM, sampled from /proc while it
//! runs; the simulation's memory does not count). For the profile, it also times a
//! read-only and a read+parse-only pass over the same file in this process.
//! Target (issue 4): at least 1,000,000 events/s on one core. On a shared machine the
//! wall clock also counts time the join waited for a core, so the report gives events
//! per CPU-second of the child (user + system, all its threads) as well.

use crate::simulate::{generate, SimConfig, SimOptions};
use anyhow::Context;
use odl_joiner::parse::Parser;
use odl_proto::stream::{FileSink, FileSource, Poll, RecordSource};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct BenchJoinArgs {
    /// Events in the simulated replay.
    #[arg(long, default_value_t = 5_000_000)]
    pub events: u64,
    /// Simulator seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Skip the read-only and parse-only passes.
    #[arg(long)]
    pub no_profile: bool,
}

pub fn run(args: BenchJoinArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the odl binary")?;
    let dir = TempDir::new()?;
    let input = dir.path().join("events.jsonl");
    let input_s = input.display().to_string();

    let t = Instant::now();
    let config = SimConfig::load(None)?;
    let mut sink = FileSink::create(&input_s)?;
    let opts = SimOptions { seed: args.seed, events: args.events, rate: None };
    let sim = generate(&config, &opts, &mut sink, None)?;
    drop(sink);
    let bytes = std::fs::metadata(&input)?.len();
    eprintln!("simulated {} events ({} MB) in {:.1} s", args.events, bytes >> 20, t.elapsed().as_secs_f64());

    let (read_eps, parse_eps) = if args.no_profile { (None, None) } else { profile(&input_s)? };

    let out = |n: &str| dir.path().join(n).display().to_string();
    let started = Instant::now();
    let mut child = Command::new(&exe)
        .args(["join", "--input", &input_s, "--out", &out("samples.jsonl"), "--audit", &out("audit.jsonl")])
        .args(["--stats", &out("stats.json"), "--dead-letter", &out("dead.jsonl")])
        .env("RUST_LOG", "warn")
        .spawn()
        .context("starting odl join")?;
    let mut peak_kb = 0u64;
    let mut cpu_ticks = 0u64;
    let status = loop {
        if let Some(kb) = vm_hwm_kb(child.id()) {
            peak_kb = peak_kb.max(kb);
        }
        // Read before reaping: an exited child (a zombie) still shows its final times.
        if let Some(ticks) = cpu_ticks_of(child.id()) {
            cpu_ticks = cpu_ticks.max(ticks);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let cpu_secs = cpu_ticks as f64 / CLOCK_TICKS_PER_SEC;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(status.success(), "odl join failed: {status}");
    let stats: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out("stats.json"))?)?;
    let report = serde_json::json!({
        "events": args.events,
        "input_mb": bytes >> 20,
        "seconds": secs,
        "events_per_sec": (args.events as f64 / secs) as u64,
        "cpu_seconds": cpu_secs,
        "events_per_cpu_sec": (args.events as f64 / cpu_secs.max(0.01)) as u64,
        "mb_per_sec": (bytes as f64 / 1_048_576.0 / secs) as u64,
        "peak_rss_mb": peak_kb / 1024,
        "samples": stats["samples"]["emitted"],
        "profile": {"read_only_events_per_sec": read_eps, "read_and_parse_events_per_sec": parse_eps},
        "simulated": {"exposures": sim.exposures, "malformed": sim.malformed},
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Events/s of reading only, and of reading and parsing (no join, no output).
fn profile(input: &str) -> anyhow::Result<(Option<u64>, Option<u64>)> {
    let pass = |parse: bool| -> anyhow::Result<u64> {
        let t = Instant::now();
        let mut src = FileSource::open(input)?;
        let mut parser = Parser::default();
        let (mut n, mut ok) = (0u64, 0u64);
        loop {
            match src.poll(8192, Duration::from_secs(5))? {
                Poll::Records(rs) => {
                    n += rs.len() as u64;
                    if parse {
                        ok += rs.iter().filter(|r| parser.parse(&r.value).is_ok()).count() as u64;
                    }
                }
                Poll::Idle => {}
                Poll::End => break,
            }
        }
        std::hint::black_box(ok);
        Ok((n as f64 / t.elapsed().as_secs_f64()) as u64)
    };
    Ok((Some(pass(false)?), Some(pass(true)?)))
}

/// Linux reports /proc times in USER_HZ, which is 100 on every architecture it runs on.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// User plus system time of the whole process so far, in clock ticks (`/proc/PID/stat`
/// fields 14 and 15; the name before them is in parentheses and may hold spaces).
fn cpu_ticks_of(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The bench's scratch directory, removed when the bench ends (or fails).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let p = std::env::temp_dir().join(format!("odl-bench-join-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p))
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
