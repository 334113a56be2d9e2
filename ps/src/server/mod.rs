//! One PS shard as a network service: gRPC (`odl.ps.ParameterServer` and the standard
//! `grpc.health.v1`) and HTTP, both stopping when the shutdown token is cancelled.
//!
//! [`serve`] only serves a store it is given; [`crate::shard`] builds that store
//! (resume, warm start), checkpoints it and runs the TTL sweeper.

pub mod grpc;
pub mod http;
pub mod metrics;
mod status;

use crate::error::{PsError, Result};
use crate::local::LocalStore;
use crate::routing::ShardId;
use odl_proto::ps_rpc::parameter_server_server::ParameterServerServer;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

/// Largest gRPC message accepted or sent: a pull of 1M dim-16 rows is 64 MB.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// HTTP/2 flow-control window (stream and connection) on both sides.
pub const WINDOW_BYTES: u32 = 16 << 20;

/// The two listening sockets of a shard, bound by the caller (port 0 is fine).
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
}

impl Listeners {
    /// Binds both addresses.
    pub async fn bind(grpc: &str, http: &str) -> Result<Listeners> {
        let bind = |a: &str| {
            let a = a.to_string();
            async move {
                TcpListener::bind(&a).await.map_err(|source| PsError::Io {
                    context: format!("binding {a}"),
                    source,
                })
            }
        };
        Ok(Listeners {
            grpc: bind(grpc).await?,
            http: bind(http).await?,
        })
    }

    /// The bound (gRPC, HTTP) addresses.
    pub fn addrs(&self) -> Result<(SocketAddr, SocketAddr)> {
        let addr = |l: &TcpListener| {
            l.local_addr().map_err(|source| PsError::Io {
                context: "reading the bound address".into(),
                source,
            })
        };
        Ok((addr(&self.grpc)?, addr(&self.http)?))
    }
}

/// Accepted connections with Nagle's algorithm off: tonic's `tcp_nodelay` only applies
/// to listeners it binds itself, and with Nagle on every small response waits for the
/// peer's delayed ACK (~40 ms per call).
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(conn)
    })
}

/// Serves `store` as shard `shard` until `shutdown` is cancelled (or a server fails,
/// which cancels the other).
pub async fn serve(
    store: Arc<LocalStore>,
    shard: ShardId,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<()> {
    serve_with_publisher(store, shard, listeners, shutdown, None).await
}

/// [`serve`], plus the publisher's gRPC service (`odl.publish.Publisher`) and HTTP
/// routes (`/v1/versions`) when `publisher` is given.
pub async fn serve_with_publisher(
    store: Arc<LocalStore>,
    shard: ShardId,
    listeners: Listeners,
    shutdown: CancellationToken,
    publisher: Option<Arc<crate::publish::Publisher>>,
) -> Result<()> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ParameterServerServer<grpc::PsService>>()
        .await;
    let metrics = metrics::PsMetrics::default();
    let ps = ParameterServerServer::new(grpc::PsService::new(store.clone(), shard).with_metrics(&metrics))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let grpc_stop = shutdown.clone();
    let grpc = tonic::transport::Server::builder()
        // Batches are hundreds of KB: HTTP/2's default 64 KB windows would cost a
        // round trip per 64 KB.
        .initial_stream_window_size(WINDOW_BYTES)
        .initial_connection_window_size(WINDOW_BYTES)
        .add_service(health_service)
        .add_service(ps)
        .add_optional_service(
            publisher
                .clone()
                .map(|p| crate::publish::service::PublishService::new(p).into_server()),
        )
        .serve_with_incoming_shutdown(incoming(listeners.grpc), async move {
            grpc_stop.cancelled().await
        });
    let mut app = http::router(store, shard, publisher.clone(), &metrics);
    if let Some(p) = publisher {
        app = app.merge(crate::publish::http::router(p));
    }
    let http_stop = shutdown.clone();
    let http = async move {
        axum::serve(listeners.http, app)
            .with_graceful_shutdown(async move { http_stop.cancelled().await })
            .await
    };
    let (g, h) = tokio::join!(
        async {
            let r = grpc.await;
            shutdown.cancel();
            r
        },
        async {
            let r = http.await;
            shutdown.cancel();
            r
        }
    );
    g.map_err(|e| PsError::Internal(format!("gRPC server: {e}")))?;
    h.map_err(|source| PsError::Io {
        context: "HTTP server".into(),
        source,
    })?;
    Ok(())
}
