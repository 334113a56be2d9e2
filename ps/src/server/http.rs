//! The shard's HTTP side: `/healthz` (the process is up), `/readyz` (the store is
//! loaded and gRPC is being served: this router only runs then) and `/v1/shard` (key
//! range, rows and bytes per table, dense tensors, trained samples).

use super::grpc::shard_info;
use crate::local::LocalStore;
use crate::routing::ShardId;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

#[derive(Clone)]
struct Ctx {
    store: Arc<LocalStore>,
    shard: ShardId,
}

pub fn router(store: Arc<LocalStore>, shard: ShardId) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/v1/shard", get(shard_json))
        .with_state(Ctx { store, shard })
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
