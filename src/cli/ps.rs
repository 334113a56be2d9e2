//! `odl ps`: run one parameter-server shard (TRAIN.md "Parameter server", "Cluster
//! mode"). Loads the config (configs/ps.toml overlaid by `--config`, then the flags),
//! binds gRPC and HTTP (port 0 allowed), loads the store (own checkpoint, else warm
//! start), prints `odl ps ready grpc=ADDR http=ADDR` on stderr, and serves until
//! SIGINT/SIGTERM, when it writes a last checkpoint and exits 0.

use anyhow::Context;
use odl_ps::config::PsConfig;
use odl_ps::server::Listeners;
use odl_ps::shard::{Origin, Shard};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug)]
pub struct PsArgs {
    /// Shard config overriding configs/ps.toml (TOML or JSON).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Overrides `grpc_addr` (e.g. 127.0.0.1:0 for a free port).
    #[arg(long)]
    pub grpc_addr: Option<String>,
    /// Overrides `http_addr`.
    #[arg(long)]
    pub http_addr: Option<String>,
    /// Overrides `checkpoint_dir`.
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    /// Overrides `warm_start` (repeat for several checkpoint directories).
    #[arg(long)]
    pub warm_start: Vec<PathBuf>,
    /// Operator calls to a running PS instead of running one.
    #[command(subcommand)]
    pub action: Option<PsAction>,
}

#[derive(clap::Subcommand, Debug)]
pub enum PsAction {
    /// Load a new batch checkpoint into a running PS while training continues and cut
    /// it as a new full version (PUBLISH.md); prints the version as JSON.
    Rebase {
        /// Batch checkpoint directory (as `odl train --checkpoint-out` writes it).
        #[arg(long)]
        checkpoint: PathBuf,
        /// The PS's gRPC address.
        #[arg(long, default_value = "http://127.0.0.1:8601")]
        grpc: String,
    },
}

pub fn run(args: PsArgs) -> anyhow::Result<()> {
    if let Some(PsAction::Rebase { checkpoint, grpc }) = &args.action {
        let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
        let v = rt
            .block_on(odl_ps::publish::client::rebase(grpc, checkpoint))
            .map_err(anyhow::Error::msg)?;
        let out = serde_json::json!({"version": v.version, "kind": v.kind, "status": v.status});
        println!("{out}");
        return Ok(());
    }
    let mut config = PsConfig::load(args.config.as_deref()).context("bad ps config")?;
    if let Some(a) = args.grpc_addr {
        config.grpc_addr = a;
    }
    if let Some(a) = args.http_addr {
        config.http_addr = a;
    }
    if let Some(d) = args.checkpoint_dir {
        config.checkpoint_dir = d;
    }
    if !args.warm_start.is_empty() {
        config.warm_start = args.warm_start;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("odl-ps")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(config))
}

async fn serve(config: PsConfig) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&config.grpc_addr, &config.http_addr).await?;
    let (grpc, http) = listeners.addrs()?;
    let shutdown = CancellationToken::new();
    super::cancel_on_signal(shutdown.clone())?;
    let c = config.clone();
    let shard = tokio::task::spawn_blocking(move || Shard::open(c))
        .await
        .context("loading the store")?
        .context("loading the store")?;
    let id = shard.id();
    match shard.origin() {
        Origin::Empty => tracing::info!("starting empty"),
        Origin::Resumed(d) => tracing::info!(dir = %d.display(), "resumed from own checkpoint"),
        Origin::WarmStart(ds) => tracing::info!(dirs = ?ds, "warm-started"),
    }
    tracing::info!(shard = id.index, shards = id.count, %grpc, %http, "serving");
    // The line tests and scripts wait for (stable format).
    eprintln!(
        "odl ps ready grpc={grpc} http={http} shard={}/{}",
        id.index, id.count
    );
    shard.run(listeners, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}
