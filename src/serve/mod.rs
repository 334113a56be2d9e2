//! The serving node (`odl serve`): subscribes to published versions, applies each
//! atomically, confirms it, and answers predictions in the TensorFlow Serving REST
//! shape (PUBLISH.md) with the trainer's own forward pass.
//!
//! - [`config`]: `ServeConfig` (`configs/serve.toml`);
//! - [`state`]: the parameters of one applied version, read through `ParamRead`;
//! - [`node`]: the live version pointer, the gRPC subscription, confirmations, lag;
//! - [`kafka`]: following the publisher through the param-update and control topics;
//! - [`http`]: the REST API;
//! - [`harness`]: an in-process publisher and `odl serve` children for benchmarks and tests;
//! - [`client`]: a minimal keep-alive HTTP/1.1 client for benchmarks and tests.

pub mod client;
pub mod config;
pub mod harness;
pub mod http;
pub mod kafka;
pub mod node;
pub mod state;

pub use config::ServeConfig;
pub use node::Node;

use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Run a serving node on `listener` until `cancel`.
pub async fn run(
    cfg: ServeConfig,
    listener: tokio::net::TcpListener,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let port = listener.local_addr()?.port();
    let node = Arc::new(Node::new(cfg.clone(), cfg.node_id_for(port))?);
    tracing::info!(node = %node.node_id, rest = %listener.local_addr()?, ps = %cfg.ps_grpc, transport = ?cfg.transport, "serving node up");
    let sub = match cfg.transport {
        odl_ps::publish::Transport::Grpc => {
            tokio::spawn(node.clone().subscribe_loop(cancel.clone()))
        }
        odl_ps::publish::Transport::Kafka => {
            let (n, c, rt) = (
                node.clone(),
                cancel.clone(),
                tokio::runtime::Handle::current(),
            );
            tokio::task::spawn_blocking(move || kafka::follow(n, c, rt))
        }
    };
    let app = http::router(node);
    let c = cancel.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { c.cancelled().await })
        .await?;
    cancel.cancel();
    let _ = sub.await;
    Ok(())
}
