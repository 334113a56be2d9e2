//! `odl join`: replay a JSON Lines file (or stdin) of the four streams through the
//! joiner into samples, audit and dead-letter files, with the stats file rewritten
//! atomically while it runs (JOIN.md "Running it").
//!
//! Without `--dead-letter`, malformed and late lines are counted in the stats but not
//! kept (a warning says how many): writing a file nobody asked for next to `--out`
//! would fail when `--out` is a device such as /dev/null.

use anyhow::Context;
use odl_joiner::service::{self, Sinks};
use odl_joiner::{JoinStats, JoinerConfig};
use odl_proto::stream::{FileSink, FileSource, RecordSink};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct JoinArgs {
    /// Replay file of all four streams in arrival order (`-` = standard input).
    #[arg(long)]
    pub input: String,
    /// Samples, one JSON object per line (`-` = standard output).
    #[arg(long)]
    pub out: String,
    /// The audited share of the samples.
    #[arg(long)]
    pub audit: String,
    /// Join statistics (JSON), rewritten atomically during the run and at its end.
    #[arg(long)]
    pub stats: PathBuf,
    /// Malformed and late lines with their reason; counted only if absent.
    #[arg(long)]
    pub dead_letter: Option<String>,
    /// Joiner config overriding configs/joiner.toml (TOML or JSON).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub fn run(args: JoinArgs) -> anyhow::Result<()> {
    let config = JoinerConfig::load(args.config.as_deref()).context("bad joiner config")?;
    let stats = run_files(&config, &args)?;
    tracing::info!(stats = %stats.to_json(), "join finished");
    Ok(())
}

/// The replay with files; also what `odl bench join` times.
pub fn run_files(config: &JoinerConfig, args: &JoinArgs) -> anyhow::Result<JoinStats> {
    let started = Instant::now();
    let mut source = FileSource::open(&args.input)?;
    let mut samples = FileSink::create(&args.out)?;
    let mut audit = FileSink::create(&args.audit)?;
    let mut dead = match &args.dead_letter {
        Some(p) => Some(FileSink::create(p)?),
        None => None,
    };
    let stats_path = args.stats.clone();
    let sinks = Sinks {
        samples: &mut samples,
        audit: &mut audit,
        dead_letter: dead.as_mut().map(|d| d as &mut dyn RecordSink),
    };
    let stats = service::run(config, &mut source, sinks, |s| {
        odl_joiner::stats::write_atomic(&stats_path, s)
            .map_err(|source| odl_joiner::Error::Stats { path: stats_path.display().to_string(), source })
    })?;
    let secs = started.elapsed().as_secs_f64();
    let events = stats.malformed
        + stats.exposure.received
        + stats.click.received
        + stats.detail_click.received
        + stats.feature.received;
    tracing::info!(
        events,
        seconds = format!("{secs:.3}"),
        events_per_sec = (events as f64 / secs.max(1e-9)) as u64,
        samples = stats.samples.emitted,
        "replay done"
    );
    Ok(stats)
}
