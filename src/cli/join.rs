//! `odl join`: replay a JSON Lines file (or stdin) of the four streams through the
//! joiner into samples, audit and dead-letter files, with the stats file rewritten
//! atomically while it runs (JOIN.md "Running it").
//!
//! `odl join [--kafka] [--config FILE]` (Kafka mode is implied without replay files):
//! the streaming joiner over the topics of the
//! config's `[kafka]`/`[topics]`/`[streaming]` sections ([`odl_joiner::kafka`]), with
//! its HTTP routes (`/stats`, `/v1/quality`, `/v1/recovery`, `/metrics`, `/healthz`,
//! `/readyz`). It prints `odl join ready http=ADDR` on stderr once the routes are up
//! and the signal handlers installed; SIGTERM/SIGINT write a final checkpoint and exit 0.
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

mod kafka;

#[derive(clap::Args, Debug)]
pub struct JoinArgs {
    /// Replay file of all four streams in arrival order (`-` = standard input).
    #[arg(long)]
    pub input: Option<String>,
    /// Samples, one JSON object per line (`-` = standard output).
    #[arg(long)]
    pub out: Option<String>,
    /// The audited share of the samples.
    #[arg(long)]
    pub audit: Option<String>,
    /// Join statistics (JSON), rewritten atomically during the run and at its end.
    #[arg(long)]
    pub stats: Option<PathBuf>,
    /// Malformed and late lines with their reason; counted only if absent.
    #[arg(long)]
    pub dead_letter: Option<String>,
    /// Joiner config overriding configs/joiner.toml (TOML or JSON).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Stream from Kafka (the config's [kafka], [topics], [streaming]) instead of
    /// replaying a file; implied when none of the replay files is given.
    #[arg(long, conflicts_with_all = ["input", "out", "audit", "stats", "dead_letter"])]
    pub kafka: bool,
    /// Kafka mode: HTTP address, overriding streaming.http_addr (port 0: any free one).
    #[arg(long, conflicts_with = "input")]
    pub http_addr: Option<String>,
    /// Kafka mode: checkpoint directory, overriding streaming.checkpoint_dir.
    #[arg(long, conflicts_with = "input")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Kafka mode: overrides streaming.exit_when_idle_ms (drain and exit once every
    /// input is read to its end and quiet this long; 0 = run until stopped).
    #[arg(long, conflicts_with = "input")]
    pub exit_when_idle_ms: Option<u64>,
}

/// The files of a replay.
pub struct ReplayFiles {
    pub input: String,
    pub out: String,
    pub audit: String,
    pub stats: PathBuf,
    pub dead_letter: Option<String>,
}

pub fn run(args: JoinArgs) -> anyhow::Result<()> {
    let mut config = JoinerConfig::load(args.config.as_deref()).context("bad joiner config")?;
    let replay = args.input.is_some() || args.out.is_some() || args.audit.is_some() || args.stats.is_some();
    if args.kafka || !replay {
        let s = &mut config.streaming;
        s.http_addr = args.http_addr.unwrap_or(std::mem::take(&mut s.http_addr));
        s.checkpoint_dir = args.checkpoint_dir.unwrap_or(std::mem::take(&mut s.checkpoint_dir));
        s.exit_when_idle_ms = args.exit_when_idle_ms.unwrap_or(s.exit_when_idle_ms);
        return kafka::run(config);
    }
    let (Some(input), Some(out), Some(audit), Some(stats)) = (args.input, args.out, args.audit, args.stats) else {
        anyhow::bail!("a replay needs all of --input, --out, --audit and --stats (or none of them for Kafka mode)");
    };
    let files = ReplayFiles { input, out, audit, stats, dead_letter: args.dead_letter };
    let stats = run_files(&config, &files)?;
    tracing::info!(stats = %stats.to_json(), "join finished");
    Ok(())
}

/// The replay with files; also what `odl bench join` times.
pub fn run_files(config: &JoinerConfig, args: &ReplayFiles) -> anyhow::Result<JoinStats> {
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
            .map_err(|source| odl_joiner::Error::Stats { path: stats_path.display().to_string(), source })?;
        // At debug, each rewrite is an event an operator (or a test) can follow
        // instead of polling the file.
        tracing::debug!(path = %stats_path.display(), exposures = s.exposure.received, "stats file rewritten");
        Ok(())
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
