//! `odl bench join`: simulate a stream to a temporary file (not timed), then replay it
//! through `odl join` in a child process, end to end (read, parse, join, write files),
//! and print events/s and the child's peak RSS (VmHWM, sampled from /proc while it
//! runs; the simulation's memory does not count). For the profile, it also times a
//! read-only and a read+parse-only pass over the same file in this process.
//! Target (issue 4): at least 1,000,000 events/s on one core. On a shared machine the
//! wall clock also counts time the join waited for a core, so the report gives events
//! per CPU-second of the child (user + system, all its threads) as well, and per user
//! CPU-second (the joiner's own work). `--runs` repeats the join; the median is the
//! figure.

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
    /// Joins of the same replay; the report gives each and the median (by events per
    /// CPU-second). The first usually pays extra kernel time: on a VM, page-cache pages
    /// the guest has never touched cost more to fill the first time.
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
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
    // The replay's writeback would otherwise run during the join and inflate its system
    // time by a varying amount (seen here: 0.8 to 2.8 s for the same 5M events).
    std::fs::File::open(&input)?.sync_all().context("flushing the replay to disk")?;
    let bytes = std::fs::metadata(&input)?.len();
    eprintln!("simulated {} events ({} MB) in {:.1} s", args.events, bytes >> 20, t.elapsed().as_secs_f64());

    let (read_eps, parse_eps) = if args.no_profile { (None, None) } else { profile(&input_s)? };

    let mut runs = Vec::new();
    for _ in 0..args.runs.max(1) {
        runs.push(join_once(&exe, &input_s, dir.path(), args.events)?);
    }
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("stats.json"))?)?;
    let mut by_rate: Vec<&serde_json::Value> = runs.iter().collect();
    by_rate.sort_by_key(|r| r["events_per_cpu_sec"].as_u64());
    let median = by_rate[by_rate.len() / 2].clone();
    let report = serde_json::json!({
        "events": args.events,
        "input_mb": bytes >> 20,
        "median": median,
        "runs": runs,
        "samples": stats["samples"]["emitted"],
        "profile": {"read_only_events_per_sec": read_eps, "read_and_parse_events_per_sec": parse_eps},
        "simulated": {"exposures": sim.exposures, "malformed": sim.malformed},
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// One `odl join` of the replay in a child process, into fresh output files in `dir`.
fn join_once(exe: &Path, input: &str, dir: &Path, events: u64) -> anyhow::Result<serde_json::Value> {
    let out = |n: &str| dir.join(n).display().to_string();
    for name in ["samples.jsonl", "audit.jsonl", "dead.jsonl", "stats.json"] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let started = Instant::now();
    let mut child = Command::new(exe)
        .args(["join", "--input", input, "--out", &out("samples.jsonl"), "--audit", &out("audit.jsonl")])
        .args(["--stats", &out("stats.json"), "--dead-letter", &out("dead.jsonl")])
        .env("RUST_LOG", "warn")
        .spawn()
        .context("starting odl join")?;
    let mut peak_kb = 0u64;
    let mut cpu = CpuTicks::default();
    let status = loop {
        if let Some(kb) = vm_hwm_kb(child.id()) {
            peak_kb = peak_kb.max(kb);
        }
        // Read before reaping: an exited child (a zombie) still shows its final times.
        if let Some(ticks) = cpu_ticks_of(child.id()) {
            cpu = cpu.later(ticks);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(status.success(), "odl join failed: {status}");
    let (user_secs, cpu_secs) = (cpu.user as f64 / CLOCK_TICKS_PER_SEC, cpu.total() as f64 / CLOCK_TICKS_PER_SEC);
    let rate = |s: f64| (events as f64 / s.max(0.01)) as u64;
    Ok(serde_json::json!({
        "seconds": secs,
        "events_per_sec": rate(secs),
        "cpu_seconds": cpu_secs,
        "events_per_cpu_sec": rate(cpu_secs),
        // The joiner's own work, without the kernel's (mostly copying the output into
        // the page cache).
        "user_seconds": user_secs,
        "events_per_user_cpu_sec": rate(user_secs),
        "peak_rss_mb": peak_kb / 1024,
    }))
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

/// CPU time of a whole process so far, in clock ticks.
#[derive(Clone, Copy, Debug, Default)]
struct CpuTicks {
    user: u64,
    system: u64,
}

impl CpuTicks {
    fn total(self) -> u64 {
        self.user + self.system
    }

    /// The later of two readings of one process (the one with more time in all).
    fn later(self, other: CpuTicks) -> CpuTicks {
        if other.total() > self.total() {
            other
        } else {
            self
        }
    }
}

/// User and system time of a process (`/proc/PID/stat` fields 14 and 15; the name
/// before them is in parentheses and may hold spaces).
fn cpu_ticks_of(pid: u32) -> Option<CpuTicks> {
    let stat = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(CpuTicks { user: utime, system: stime })
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
