//! The joiner's HTTP face in `odl run`: `GET /stats` (JOIN.md's statistics JSON, as of
//! the joiner's last stats tick) and `/healthz`; plus the PS versions summary for the
//! progress line.

use axum::{extract::State, routing::get, Json, Router};
use odl_joiner::JoinStats;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

pub async fn serve(
    listener: tokio::net::TcpListener,
    stats: Arc<Mutex<JoinStats>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/stats", get(current))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(stats);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await?;
    Ok(())
}

async fn current(State(stats): State<Arc<Mutex<JoinStats>>>) -> Json<JoinStats> {
    Json(stats.lock().unwrap_or_else(|e| e.into_inner()).clone())
}

/// "N (k FINISHED, newest #v STATUS)" from the PS's `GET /v1/versions`.
pub async fn version_summary(ps_http: SocketAddr) -> String {
    let fetched = tokio::task::spawn_blocking(move || -> Option<Vec<serde_json::Value>> {
        let mut c = crate::serve::client::HttpClient::connect(&ps_http.to_string()).ok()?;
        let (status, body) = c.get("/v1/versions").ok()?;
        (status == 200).then_some(())?;
        serde_json::from_slice(&body).ok()
    })
    .await
    .ok()
    .flatten();
    let Some(versions) = fetched else {
        return "unavailable".into();
    };
    let finished = versions.iter().filter(|v| v["status"] == "FINISHED").count();
    match versions.first() {
        Some(v) => format!(
            "{} ({finished} FINISHED, newest #{} {} {})",
            versions.len(),
            v["version"],
            v["kind"].as_str().unwrap_or("?"),
            v["status"].as_str().unwrap_or("?")
        ),
        None => "none yet".into(),
    }
}
