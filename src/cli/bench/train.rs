//! `odl bench train`: simulate a stream and join it into samples (not timed), then
//! train the default model (mmoe) on them in file mode (`odl train`, 2 threads, the
//! PS in-process) and as a cluster of 2 `odl ps` shards and 2 `odl train --config`
//! workers on loopback gRPC, each in child processes. Prints samples/s (from the
//! trainers' reports: training time only, process start-up excluded) and the peak RSS
//! of each process (VmHWM, sampled from /proc while it runs).
//! Targets (issue 5): file mode ≥ 150,000 samples/s; cluster ≥ 0.6× file mode.

use anyhow::{bail, Context};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct BenchTrainArgs {
    /// Events simulated (about 0.45 samples per event after the join).
    #[arg(long, default_value_t = 1_500_000)]
    pub events: u64,
    /// Simulator seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Training threads in file mode.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Model config (default: configs/model.toml, mmoe).
    #[arg(long)]
    pub model_config: Option<PathBuf>,
    /// Training threads of each cluster worker (2: `threads` in configs/trainer.toml;
    /// a thread waiting on a shard leaves its core to the other).
    #[arg(long, default_value_t = 2)]
    pub worker_threads: usize,
    /// Skip the cluster measurement.
    #[arg(long)]
    pub no_cluster: bool,
}

/// Kills and reaps the child when dropped (error paths included).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Wait for all `children`, sampling their peak RSS; fails if one fails.
fn wait_all(children: &mut [&mut Proc], what: &str) -> anyhow::Result<Vec<u64>> {
    let mut peaks = vec![0u64; children.len()];
    let mut done = vec![false; children.len()];
    while done.iter().any(|d| !d) {
        for (i, c) in children.iter_mut().enumerate() {
            if done[i] {
                continue;
            }
            if let Some(kb) = vm_hwm_kb(c.0.id()) {
                peaks[i] = peaks[i].max(kb);
            }
            if let Some(status) = c.0.try_wait()? {
                if !status.success() {
                    bail!("{what} {i} failed: {status}");
                }
                done[i] = true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(peaks)
}

fn report(path: &Path) -> anyhow::Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

fn click_auc(r: &serde_json::Value) -> f64 {
    r["tasks"]["click"]["current"]["auc"]
        .as_f64()
        .unwrap_or(f64::NAN)
}

/// Start an `odl ps` shard on free ports; its gRPC address once it is ready.
fn start_shard(exe: &Path, dir: &Path, i: usize, n: usize) -> anyhow::Result<(Proc, String)> {
    let cfg = dir.join(format!("ps-{i}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "shard_index = {i}\nshard_count = {n}\ngrpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\n[odl_model_update]\nopen = false\n"
        ),
    )?;
    let mut child = Proc(
        Command::new(exe)
            .args(["ps", "--config", &cfg.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting odl ps")?,
    );
    let stderr = child.0.stderr.take().context("shard stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("odl ps ready grpc=").nth(1) {
                tx.send(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                )
                .ok();
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .with_context(|| format!("shard {i} not ready within 60 s"))?;
    Ok((child, addr))
}

pub fn run(args: BenchTrainArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the odl binary")?;
    let tmp = tempfile_dir()?;
    let dir = tmp.path.clone();
    let s = |p: &Path| p.display().to_string();
    let (events, samples) = (dir.join("events.jsonl"), dir.join("samples.jsonl"));
    let t = Instant::now();
    let status = Command::new(&exe)
        .args([
            "simulate",
            "--seed",
            &args.seed.to_string(),
            "--events",
            &args.events.to_string(),
            "--out",
            &s(&events),
        ])
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("odl simulate failed");
    }
    let status = Command::new(&exe)
        .args([
            "join",
            "--input",
            &s(&events),
            "--out",
            &s(&samples),
            "--audit",
            "/dev/null",
        ])
        .args(["--stats", &s(&dir.join("stats.json"))])
        .env("RUST_LOG", "warn")
        .status()?;
    if !status.success() {
        bail!("odl join failed");
    }
    std::fs::remove_file(&events).ok();
    eprintln!(
        "simulated and joined {} events in {:.1} s (not timed)",
        args.events,
        t.elapsed().as_secs_f64()
    );

    // File mode.
    let file_report = dir.join("file.json");
    let mut cmd = Command::new(&exe);
    cmd.args([
        "train",
        "--samples",
        &s(&samples),
        "--report",
        &s(&file_report),
    ])
    .args(["--threads", &args.threads.to_string()])
    .env("RUST_LOG", "warn");
    if let Some(m) = &args.model_config {
        cmd.args(["--model-config", &s(m)]);
    }
    let mut child = Proc(cmd.spawn().context("starting odl train")?);
    let peak = wait_all(&mut [&mut child], "odl train")?[0];
    let fr = report(&file_report)?;
    let file_sps = fr["samples_per_second"].as_f64().unwrap_or(0.0);
    let mut summary = serde_json::json!({
        "events": args.events,
        "samples": fr["samples"],
        "file_mode": {
            "threads": args.threads,
            "samples_per_second": file_sps,
            "seconds": fr["seconds"],
            "peak_rss_mb": peak as f64 / 1024.0,
            "click_current_auc": click_auc(&fr),
        },
    });
    eprintln!(
        "file mode: {:.0} samples/s ({} threads), peak RSS {:.0} MB, click current AUC {:.4}",
        file_sps,
        args.threads,
        peak as f64 / 1024.0,
        click_auc(&fr)
    );

    if !args.no_cluster {
        let (s0, a0) = start_shard(&exe, &dir, 0, 2)?;
        let (s1, a1) = start_shard(&exe, &dir, 1, 2)?;
        let mut workers = Vec::new();
        for i in 0..2 {
            let cfg = dir.join(format!("worker-{i}.toml"));
            let mut text = format!(
                "ps = [\"{a0}\", \"{a1}\"]\nsamples = \"{}\"\nworker = \"{i}/2\"\nthreads = {}\nreport = \"{}\"\n",
                s(&samples),
                args.worker_threads,
                s(&dir.join(format!("w{i}.json")))
            );
            if let Some(m) = &args.model_config {
                text.push_str(&format!("model_config = \"{}\"\n", s(m)));
            }
            std::fs::write(&cfg, text)?;
            workers.push(Proc(
                Command::new(&exe)
                    .args(["train", "--config", &s(&cfg)])
                    .env("RUST_LOG", "warn")
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting a worker")?,
            ));
        }
        let started = Instant::now();
        let (w0, w1) = workers.split_at_mut(1);
        let worker_peaks = wait_all(&mut [&mut w0[0], &mut w1[0]], "worker")?;
        let wall = started.elapsed().as_secs_f64();
        let shard_peaks: Vec<u64> = [&s0, &s1]
            .iter()
            .map(|p| vm_hwm_kb(p.0.id()).unwrap_or(0))
            .collect();
        let reports = (0..2)
            .map(|i| report(&dir.join(format!("w{i}.json"))))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let total: f64 = reports
            .iter()
            .map(|r| r["samples"].as_f64().unwrap_or(0.0))
            .sum();
        let slowest = reports
            .iter()
            .map(|r| r["seconds"].as_f64().unwrap_or(f64::INFINITY))
            .fold(0.0, f64::max);
        let sps = total / slowest.max(1e-9);
        eprintln!(
            "cluster (2 shards, 2 workers x {} threads): {sps:.0} samples/s ({:.2}x file mode; wall {wall:.1} s incl. start-up), worker RSS {:.0}/{:.0} MB, shard RSS {:.0}/{:.0} MB, click current AUC {:.4}/{:.4}",
            args.worker_threads,
            sps / file_sps.max(1e-9),
            worker_peaks[0] as f64 / 1024.0,
            worker_peaks[1] as f64 / 1024.0,
            shard_peaks[0] as f64 / 1024.0,
            shard_peaks[1] as f64 / 1024.0,
            click_auc(&reports[0]),
            click_auc(&reports[1]),
        );
        summary["cluster"] = serde_json::json!({
            "worker_threads": args.worker_threads,
            "samples_per_second": sps,
            "ratio_to_file_mode": sps / file_sps.max(1e-9),
            "worker_peak_rss_mb": worker_peaks.iter().map(|k| *k as f64 / 1024.0).collect::<Vec<_>>(),
            "shard_peak_rss_mb": shard_peaks.iter().map(|k| *k as f64 / 1024.0).collect::<Vec<_>>(),
            "click_current_auc": reports.iter().map(click_auc).collect::<Vec<_>>(),
        });
    }
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

/// A temporary directory removed on drop (the root package has no tempfile dependency
/// outside tests).
struct TmpDir {
    path: PathBuf,
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.path).ok();
    }
}

fn tempfile_dir() -> anyhow::Result<TmpDir> {
    let path = std::env::temp_dir().join(format!("odl-bench-train-{}", std::process::id()));
    std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok(TmpDir { path })
}
