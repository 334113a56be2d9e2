//! `odl run`: the whole pipeline in one process on its embedded default
//! (`configs/run.toml`), or as `--config` says.

use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Pipeline config (TOML or JSON), laid over configs/run.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override `data_dir` (checkpoints, versions, audit and dead-letter files).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Override `max_events`: stop after this many simulated events (0: until Ctrl-C).
    #[arg(long)]
    pub max_events: Option<u64>,
    /// Override `events_per_sec` (0: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut cfg = crate::run::RunConfig::load(args.config.as_deref())?;
    if let Some(d) = args.data_dir {
        cfg.data_dir = d;
    }
    if let Some(n) = args.max_events {
        cfg.max_events = n;
    }
    if let Some(r) = args.rate {
        cfg.events_per_sec = r;
    }
    crate::run::run(cfg)
}
