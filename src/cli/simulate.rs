//! `odl simulate`: write a simulated replay file (and the ground truth), print the
//! summary (JSON) on stdout.

use crate::simulate::{generate, SimConfig, SimOptions};
use anyhow::Context;
use odl_proto::stream::{FileSink, RecordSink};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// Seed of the world and of every draw: same seed, same stream.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Lines to write (events, duplicates and malformed lines).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Lines per second of wall clock (event time then follows the clock); default:
    /// as fast as possible.
    #[arg(long)]
    pub rate: Option<f64>,
    /// The replay file (`-` = standard output).
    #[arg(long)]
    pub out: String,
    /// One line per exposure with its true click and detail-click probabilities.
    #[arg(long)]
    pub truth: Option<String>,
    /// Simulator config overriding configs/simulate.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let config = SimConfig::load(args.config.as_deref()).context("bad simulator config")?;
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        anyhow::bail!("--rate must be a positive number of events per second");
    }
    let mut out = FileSink::create(&args.out)?;
    let mut truth = match &args.truth {
        Some(p) => Some(FileSink::create(p)?),
        None => None,
    };
    let opts = SimOptions { seed: args.seed, events: args.events, rate: args.rate };
    let summary = generate(&config, &opts, &mut out, truth.as_mut().map(|t| t as &mut dyn RecordSink))?;
    let text = serde_json::to_string_pretty(&summary)?;
    if args.out == "-" {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
    Ok(())
}
