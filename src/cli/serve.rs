//! `odl serve`: a serving node (PUBLISH.md). Loads `ServeConfig`, binds the REST
//! address, and runs until SIGINT/SIGTERM.

use anyhow::Context;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Serving config (TOML or JSON), laid over configs/serve.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override `rest_addr` (e.g. 127.0.0.1:0 for a free port; the bound address is logged).
    #[arg(long)]
    pub rest_addr: Option<String>,
    /// Override `ps_grpc`.
    #[arg(long)]
    pub ps_grpc: Option<String>,
    /// Override `node_id`.
    #[arg(long)]
    pub node_id: Option<String>,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = crate::serve::ServeConfig::load(args.config.as_deref())?;
    if let Some(a) = args.rest_addr {
        cfg.rest_addr = a;
    }
    if let Some(a) = args.ps_grpc {
        cfg.ps_grpc = a;
    }
    if let Some(n) = args.node_id {
        cfg.node_id = n;
    }
    cfg.validate()?;
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(async move {
        let cancel = tokio_util::sync::CancellationToken::new();
        super::cancel_on_signal(cancel.clone())?;
        let listener = tokio::net::TcpListener::bind(&cfg.rest_addr)
            .await
            .with_context(|| format!("binding the REST address {}", cfg.rest_addr))?;
        // The bound address on stdout, so a caller that asked for port 0 can find it.
        println!("odl serve listening on http://{}", listener.local_addr()?);
        crate::serve::run(cfg, listener, cancel).await
    })
}
