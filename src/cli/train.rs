//! `odl train` and `odl eval` (TRAIN.md "Running it").
//!
//! File mode: `--samples FILE`, the parameter store in-process (`odl_ps::LocalStore`),
//! optional warm start from and checkpoint to a directory; the checkpoint carries the
//! resolved model config as its `model_config` attribute (JSON), so `odl eval` and
//! serving need only the checkpoint. Cluster mode: `--config worker.toml`, the store
//! being the PS shards over gRPC (`odl_ps::RemoteStore`).

use anyhow::{bail, Context};
use odl_proto::params::ParamStore;
use odl_ps::remote::{RemoteOptions, RemoteStore};
use odl_ps::LocalStore;
use odl_trainer::train::{resolve_fields, run_file, Report, RunOptions, RunStats};
use odl_trainer::worker_config::{parse_share, SampleSource, TrainerConfig};
use odl_trainer::{Model, ModelConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod http;
mod kafka;

/// The checkpoint attribute holding the model config (JSON of `ModelConfig`).
pub const MODEL_CONFIG_ATTRIBUTE: &str = "model_config";

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Samples file (JSON Lines as `odl join` writes them): file mode.
    #[arg(long)]
    pub samples: Option<PathBuf>,
    /// Model config laid over configs/model.toml (default: the checkpoint's when warm
    /// starting, else configs/model.toml).
    #[arg(long)]
    pub model_config: Option<PathBuf>,
    /// Checkpoint directory to start from.
    #[arg(long)]
    pub warm_start: Option<PathBuf>,
    /// Write a checkpoint (with the model config) here at the end.
    #[arg(long)]
    pub checkpoint_out: Option<PathBuf>,
    /// Passes over the samples file (default 1).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Where to write report.json.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Training threads (Hogwild over the in-process store).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Cluster worker: configs/cluster/worker-*.toml (laid over configs/trainer.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This worker's share of the samples, `i/n` (overrides the config's `worker`).
    #[arg(long)]
    pub worker: Option<String>,
    /// Cluster mode: the worker's HTTP address (overrides the config's `http_addr`;
    /// port 0 picks a free one, printed as `http=HOST:PORT`).
    #[arg(long)]
    pub http_addr: Option<String>,
    /// Cluster mode with `source = "kafka"`: stop (committing, writing the report)
    /// once no sample arrived for this long; without it the worker runs until SIGTERM.
    #[arg(long)]
    pub exit_when_idle_ms: Option<u64>,
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint directory (written by `odl train --checkpoint-out`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Samples file to predict, without learning.
    #[arg(long)]
    pub samples: PathBuf,
    /// Where to write report.json.
    #[arg(long)]
    pub report: PathBuf,
    /// Prediction threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    if args.config.is_some() {
        return run_worker(args);
    }
    let Some(samples) = args.samples.as_deref() else {
        bail!("odl train needs --samples FILE (file mode) or --config worker.toml (cluster mode)");
    };
    let (report, stats) = train_file(&args, samples)?;
    finish(&report, &stats, args.report.as_deref())
}

/// File mode; returns the report (also used by `odl bench train`).
pub fn train_file(args: &TrainArgs, samples: &Path) -> anyhow::Result<(Report, RunStats)> {
    if !samples.is_file() {
        bail!("cannot read samples file {}", samples.display());
    }
    let share = match &args.worker {
        Some(w) => parse_share(w)?,
        None => (0, 1),
    };
    let (store, ckpt_cfg) = match &args.warm_start {
        Some(dir) => {
            let store = LocalStore::load_checkpoint(dir, None)
                .with_context(|| format!("cannot warm start from {}", dir.display()))?;
            let cfg = checkpoint_config(&store, dir)?;
            (store, Some(cfg))
        }
        None => (LocalStore::default(), None),
    };
    let mut cfg = match (&args.model_config, ckpt_cfg.as_ref()) {
        (None, Some(c)) => c.clone(),
        (p, _) => ModelConfig::load(p.as_deref()).context("bad model config")?,
    };
    if let (true, Some(c)) = (cfg.fields.is_empty(), ckpt_cfg.as_ref()) {
        cfg.fields = c.fields.clone();
    }
    resolve_fields(&mut cfg, samples)?;
    let model = Model::from_config(&cfg).context("bad model config")?;
    store
        .declare(model.schema())
        .context("the model does not fit the warm-start checkpoint")?;
    let opts = RunOptions {
        learn: true,
        epochs: args.epochs.unwrap_or(1),
        threads: args.threads.max(1),
        share,
        ..RunOptions::default()
    };
    let (report, stats) = run_file(&model, &store, samples, &opts)
        .with_context(|| format!("training on {} failed", samples.display()))?;
    if let Some(dir) = &args.checkpoint_out {
        store.set_attribute(MODEL_CONFIG_ATTRIBUTE, &serde_json::to_string(&cfg)?);
        store
            .save_checkpoint(dir)
            .with_context(|| format!("cannot write checkpoint {}", dir.display()))?;
        tracing::info!("checkpoint written to {}", dir.display());
    }
    Ok((report, stats))
}

/// The model config a checkpoint was trained with.
pub fn checkpoint_config(store: &LocalStore, dir: &Path) -> anyhow::Result<ModelConfig> {
    let text = store.attribute(MODEL_CONFIG_ATTRIBUTE).with_context(|| {
        format!(
            "checkpoint {} has no model config (not written by odl train?)",
            dir.display()
        )
    })?;
    let cfg: ModelConfig = serde_json::from_str(&text)
        .with_context(|| format!("checkpoint {}: unreadable model config", dir.display()))?;
    cfg.validate()
        .with_context(|| format!("checkpoint {}: bad model config", dir.display()))?;
    Ok(cfg)
}

pub fn run_eval(args: EvalArgs) -> anyhow::Result<()> {
    if !args.samples.is_file() {
        bail!("cannot read samples file {}", args.samples.display());
    }
    let store = LocalStore::load_checkpoint(&args.checkpoint, None)
        .with_context(|| format!("cannot load checkpoint {}", args.checkpoint.display()))?;
    let cfg = checkpoint_config(&store, &args.checkpoint)?;
    let model = Model::from_config(&cfg).context("bad model config in checkpoint")?;
    let opts = RunOptions {
        learn: false,
        threads: args.threads.max(1),
        ..RunOptions::default()
    };
    let (report, stats) = run_file(&model, &store, &args.samples, &opts)
        .with_context(|| format!("evaluating on {} failed", args.samples.display()))?;
    finish(&report, &stats, Some(&args.report))
}

/// Write the report (atomically) and print a summary on stderr.
pub fn finish(report: &Report, stats: &RunStats, path: Option<&Path>) -> anyhow::Result<()> {
    if stats.bad_lines > 0 {
        tracing::warn!(
            "{} lines were not usable samples and were skipped",
            stats.bad_lines
        );
    }
    if stats.retries > 0 {
        eprintln!("reconnects: {} store calls were retried", stats.retries);
    }
    let json = serde_json::to_string_pretty(report)?;
    eprintln!(
        "done: {} samples in {:.1}s ({:.0}/s); {}",
        report.samples,
        report.seconds,
        report.samples_per_second,
        report
            .tasks
            .iter()
            .map(|(t, r)| format!(
                "{t} auc {} (current {})",
                fmt_auc(r.global.auc),
                fmt_auc(r.current.auc)
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(p) = path {
        write_atomic(p, json.as_bytes())?;
    }
    Ok(())
}

fn fmt_auc(a: Option<f64>) -> String {
    a.map_or_else(|| "n/a".into(), |a| format!("{a:.4}"))
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Cluster mode: a worker against the PS shards over gRPC (`odl_ps::RemoteStore`,
/// which retries an unavailable shard and re-declares the schema when it is back),
/// reading its share of a samples file or, as a consumer-group member, the samples topic.
fn run_worker(args: TrainArgs) -> anyhow::Result<()> {
    let tc = worker_config(&args)?;
    let share = tc.share()?;
    let model_path = (!tc.model_config.is_empty()).then(|| PathBuf::from(&tc.model_config));
    let mut cfg = ModelConfig::load(model_path.as_deref()).context("bad model config")?;
    let samples = PathBuf::from(&tc.samples);
    match tc.source {
        SampleSource::File if !samples.is_file() => {
            bail!("cannot read samples file {}", samples.display())
        }
        SampleSource::File => resolve_fields(&mut cfg, &samples)?,
        SampleSource::Kafka if cfg.fields.is_empty() => bail!(
            "source = \"kafka\" needs the model's fields listed in its config: workers reading a topic would each discover their own"
        ),
        SampleSource::Kafka => {}
    }
    let model = Model::from_config(&cfg).context("bad model config")?;
    let retry = Duration::from_secs(tc.retry_deadline_secs);
    let mut ropts = RemoteOptions::new(tc.ps.clone(), format!("worker-{}-of-{}", share.0, share.1));
    ropts.retry_deadline = retry;
    // As file mode does: the shards' checkpoints and full versions carry the model.
    ropts
        .attributes
        .insert(MODEL_CONFIG_ATTRIBUTE.into(), serde_json::to_string(&cfg)?);
    let obs = http::WorkerObservations::new(format!("{}/{}", share.0, share.1));
    let _http = http::spawn(&tc.http_addr, obs.clone());
    let store = RemoteStore::connect(ropts).context("cannot set up the PS client")?;
    let declared = store.declare(model.schema());
    obs.set_ready(declared.as_ref().map(|_| ()).map_err(|e| e.to_string()));
    declared.context("cannot declare the model on the PS shards")?;
    eprintln!(
        "odl train worker {}/{} ready: {} shards",
        share.0,
        share.1,
        store.shard_count()
    );
    let opts = RunOptions {
        learn: true,
        epochs: tc.epochs,
        threads: tc.threads,
        dense_refresh_batches: tc.dense_refresh_batches,
        share,
        progress_interval: Duration::from_secs(tc.progress_interval_secs),
        retry_deadline: retry,
    };
    let observed = http::ObservedStore { inner: &store, obs: obs.clone() };
    let (report, mut stats) = match tc.source {
        SampleSource::File => run_file(&model, &observed, &samples, &opts)
            .with_context(|| format!("training on {} failed", samples.display()))?,
        SampleSource::Kafka => {
            let idle = args.exit_when_idle_ms.map(Duration::from_millis);
            kafka::train(&tc, &model, &observed, &opts, &obs, idle)?
        }
    };
    stats.retries += store.retries();
    eprintln!("reconnects: {}", store.reconnects());
    if stats.duplicates > 0 {
        eprintln!("duplicates: {} samples already trained were skipped", stats.duplicates);
    }
    let path = (!tc.report.is_empty()).then(|| PathBuf::from(&tc.report));
    finish(&report, &stats, path.as_deref())
}

/// The worker's config: the file laid over configs/trainer.toml, then the flags.
fn worker_config(args: &TrainArgs) -> anyhow::Result<TrainerConfig> {
    let mut tc = TrainerConfig::load(args.config.as_deref()).context("bad trainer config")?;
    if let Some(s) = &args.samples {
        tc.samples = s.display().to_string();
    }
    if let Some(m) = &args.model_config {
        tc.model_config = m.display().to_string();
    }
    if let Some(w) = &args.worker {
        tc.worker = w.clone();
    }
    if let Some(r) = &args.report {
        tc.report = r.display().to_string();
    }
    if let Some(e) = args.epochs {
        tc.epochs = e;
    }
    if let Some(a) = &args.http_addr {
        tc.http_addr = a.clone();
    }
    tc.validate().context("bad trainer config")?;
    Ok(tc)
}
