//! `odl dashboard`: serves the live page over the services its config names.

use anyhow::Context;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct DashboardArgs {
    /// Dashboard config (TOML or JSON), laid over configs/dashboard.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override `listen_addr` (port 0: any free port; the bound one is printed).
    #[arg(long)]
    pub listen_addr: Option<String>,
}

pub fn run(args: DashboardArgs) -> anyhow::Result<()> {
    let mut cfg = crate::dashboard::DashboardConfig::load(args.config.as_deref())?;
    if let Some(a) = args.listen_addr {
        cfg.listen_addr = a;
    }
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(async move {
        let cancel = tokio_util::sync::CancellationToken::new();
        crate::cli::cancel_on_signal(cancel.clone())?;
        let listener = tokio::net::TcpListener::bind(&cfg.listen_addr)
            .await
            .with_context(|| format!("binding the dashboard to {}", cfg.listen_addr))?;
        let addr = listener.local_addr()?;
        let services = cfg.services().count();
        eprintln!(
            "odl dashboard ready http://{addr}/ (polling {services} services every {} ms)",
            cfg.poll_interval_ms
        );
        crate::dashboard::serve(cfg, listener, cancel).await
    })
}
