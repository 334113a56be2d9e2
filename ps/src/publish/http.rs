//! The versions HTTP API on the PS HTTP port (PUBLISH.md): `GET /v1/versions` (every
//! version, newest first, exactly the JSON of the spec), `GET /v1/versions/{n}`, and
//! `POST /v1/versions/{n}:rollback` with the configured bearer token.

use super::publisher::Publisher;
use super::PublishError;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use odl_proto::version::Version;
use std::sync::Arc;

/// Routes to merge into the PS's HTTP router.
pub fn router(publisher: Arc<Publisher>) -> Router {
    Router::new()
        .route("/v1/versions", get(list))
        .route("/v1/versions/{n}", get(one).post(action))
        .with_state(publisher)
}

fn error(status: StatusCode, message: impl ToString) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": message.to_string() })),
    )
        .into_response()
}

impl IntoResponse for PublishError {
    fn into_response(self) -> Response {
        let status = match &self {
            PublishError::UnknownVersion(_) => StatusCode::NOT_FOUND,
            PublishError::Unauthorized => StatusCode::UNAUTHORIZED,
            PublishError::NotRollbackable(..) => StatusCode::CONFLICT,
            PublishError::Invalid(_) | PublishError::Config(_) => StatusCode::BAD_REQUEST,
            PublishError::Storage(_) | PublishError::Source(_) => StatusCode::SERVICE_UNAVAILABLE,
            PublishError::Corrupt { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        error(status, self)
    }
}

async fn run<T: Send + 'static>(
    f: impl FnOnce() -> super::Result<T> + Send + 'static,
) -> super::Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(PublishError::Source(format!("task failed: {e}"))),
    }
}

fn parse_version(s: &str) -> super::Result<Version> {
    s.parse::<u64>()
        .map(Version)
        .map_err(|_| PublishError::Invalid(format!("version must be a number, got {s:?}")))
}

async fn list(State(p): State<Arc<Publisher>>) -> Response {
    let reg = p.registry().clone();
    match run(move || reg.list()).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn one(State(p): State<Arc<Publisher>>, Path(n): Path<String>) -> Response {
    let v = match parse_version(&n) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let reg = p.registry().clone();
    match run(move || reg.get(v)).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /v1/versions/{n}:rollback`.
async fn action(
    State(p): State<Arc<Publisher>>,
    Path(n): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(num) = n.strip_suffix(":rollback") else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no action in {n:?}; POST /v1/versions/{{n}}:rollback"),
        );
    };
    let v = match parse_version(num) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    match run(move || p.rollback(v, token.as_deref())).await {
        Ok(sv) => (StatusCode::OK, Json(sv.record)).into_response(),
        Err(e) => e.into_response(),
    }
}
