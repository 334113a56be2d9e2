//! The dashboard of `odl run`: the same service as `odl dashboard`, polling the
//! in-process services on the ports they actually bound (so port 0 works too).

use crate::dashboard::config::ServiceAddr;
use crate::dashboard::DashboardConfig;
use std::net::SocketAddr;

/// The `[dashboard]` section with its service lists replaced by this pipeline's.
pub fn for_pipeline(
    mut cfg: DashboardConfig,
    joiner: SocketAddr,
    ps_http: SocketAddr,
    serving: SocketAddr,
) -> DashboardConfig {
    let one = |name: &str, addr: SocketAddr| {
        vec![ServiceAddr {
            name: name.into(),
            url: format!("http://{addr}"),
        }]
    };
    cfg.joiners = one("joiner", joiner);
    cfg.ps = one("ps-0", ps_http);
    cfg.serving = one("serve-0", serving);
    cfg
}

/// The dashboard's listener, or `None` with a warning: the dashboard only watches, so
/// a taken port (another `odl run`, a test) must not stop the pipeline itself.
pub async fn bind(cfg: &DashboardConfig) -> Option<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(&cfg.listen_addr).await {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!(
                "odl run: warning: dashboard not started, cannot bind {}: {e}",
                cfg.listen_addr
            );
            None
        }
    }
}
