//! `odl simulate`: write a simulated replay file (and the ground truth), print the
//! summary (JSON) on stdout. With `--kafka`, the lines go to one topic per stream
//! instead (created if missing), at `--rate` or as fast as the broker takes them.

use crate::simulate::kafka::{KafkaRouter, StreamTopics};
use crate::simulate::{generate, SimConfig, SimOptions};
use odl_proto::stream::kafka::KafkaConfig;
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
    #[arg(long, required_unless_present = "kafka")]
    pub out: Option<String>,
    /// One line per exposure with its true click and detail-click probabilities.
    #[arg(long)]
    pub truth: Option<String>,
    /// Simulator config overriding configs/simulate.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Produce to Kafka, one topic per stream, instead of writing a replay file.
    #[arg(long, conflicts_with = "out")]
    pub kafka: bool,
    /// Kafka mode: bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092", requires = "kafka")]
    pub brokers: String,
    /// Kafka mode: partitions of a topic created because it is missing.
    #[arg(long, default_value_t = 4, requires = "kafka")]
    pub partitions: i32,
    #[arg(long, default_value = "odl.exposure", requires = "kafka")]
    pub exposure_topic: String,
    #[arg(long, default_value = "odl.click", requires = "kafka")]
    pub click_topic: String,
    #[arg(long, default_value = "odl.detail_click", requires = "kafka")]
    pub detail_click_topic: String,
    #[arg(long, default_value = "odl.feature", requires = "kafka")]
    pub feature_topic: String,
}

pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let config = SimConfig::load(args.config.as_deref()).context("bad simulator config")?;
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        anyhow::bail!("--rate must be a positive number of events per second");
    }
    let mut out: Box<dyn RecordSink> = match &args.out {
        Some(path) => Box::new(FileSink::create(path)?),
        None => {
            let topics = StreamTopics {
                exposure: args.exposure_topic.clone(),
                click: args.click_topic.clone(),
                detail_click: args.detail_click_topic.clone(),
                feature: args.feature_topic.clone(),
            };
            let cfg = KafkaConfig::new(&args.brokers);
            Box::new(KafkaRouter::create(&cfg, &topics, args.partitions).context("connecting to Kafka")?)
        }
    };
    let mut truth = match &args.truth {
        Some(p) => Some(FileSink::create(p)?),
        None => None,
    };
    let opts = SimOptions { seed: args.seed, events: args.events, rate: args.rate };
    let summary = generate(&config, &opts, &mut out, truth.as_mut().map(|t| t as &mut dyn RecordSink))?;
    let text = serde_json::to_string_pretty(&summary)?;
    if args.out.as_deref() == Some("-") {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
    Ok(())
}
