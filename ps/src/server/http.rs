//! The shard's HTTP side: `/healthz` (the process is up), `/readyz` (the store is
//! loaded and gRPC is being served: this router only runs then), `/v1/shard` (key
//! range, rows and bytes per table, dense tensors, trained samples), `/v1/progress`
//! (the merged streaming evaluation the AUC gates read, with the gate thresholds) and
//! `/metrics` (Prometheus text, see [`super::metrics`]).

use super::grpc::shard_info;
use super::metrics::PsMetrics;
use crate::local::LocalStore;
use crate::publish::Publisher;
use crate::routing::ShardId;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use std::sync::Arc;

#[derive(Clone)]
struct Ctx {
    store: Arc<LocalStore>,
    shard: ShardId,
    publisher: Option<Arc<Publisher>>,
    registry: Arc<Registry>,
}

/// The shard's routes; `publisher` (when this shard publishes) adds the gate
/// thresholds to `/v1/progress` and the versions to `/metrics`.
pub fn router(
    store: Arc<LocalStore>,
    shard: ShardId,
    publisher: Option<Arc<Publisher>>,
    metrics: &PsMetrics,
) -> Router {
    let registry = Arc::new(metrics.registry(store.clone(), shard, publisher.clone()));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/v1/shard", get(shard_json))
        .route("/v1/progress", get(progress))
        .route("/metrics", get(metrics_text))
        .with_state(Ctx {
            store,
            shard,
            publisher,
            registry,
        })
}

async fn progress(State(c): State<Ctx>) -> Json<Value> {
    let p = c.store.merged_progress();
    let gates = c.publisher.as_ref().map(|p| {
        let cfg = p.config();
        json!({
            "global_auc_threshold": cfg.global_auc_threshold,
            "current_auc_threshold": cfg.current_auc_threshold,
        })
    });
    Json(json!({"samples": p.samples, "tasks": p.tasks, "gates": gates}))
}

/// Rendered off the async workers: the versions come from sled.
async fn metrics_text(State(c): State<Ctx>) -> Response {
    let registry = c.registry.clone();
    tokio::task::spawn_blocking(move || super::metrics::render(&registry))
        .await
        .unwrap_or_else(|e| {
            axum::response::IntoResponse::into_response((
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("metrics task failed: {e}"),
            ))
        })
}

async fn ready(State(c): State<Ctx>) -> Json<Value> {
    Json(json!({"ready": true, "shard": c.shard.index, "shards": c.shard.count}))
}

async fn shard_json(State(c): State<Ctx>) -> Json<Value> {
    let i = shard_info(&c.store, c.shard);
    Json(json!({
        "shard": i.shard,
        "shards": i.shards,
        "key_lo": i.key_lo.to_string(),
        "key_hi": i.key_hi.to_string(),
        "tables": i.tables.iter().map(|t| json!({
            "name": t.name, "dim": t.dim, "rows": t.rows, "heap_bytes": t.heap_bytes,
        })).collect::<Vec<_>>(),
        "dense": i.dense,
        "heap_bytes": i.heap_bytes,
        "samples_trained": i.samples_trained,
        "workers": i.workers,
    }))
}
