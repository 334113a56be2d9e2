//! The serving node's REST API, in TensorFlow Serving's shape (PUBLISH.md):
//! `POST /v1/models/{model}:predict` with `{"instances": [{...features...}]}` answers
//! `{"predictions": [{"click": p, "detail_click": p}], "version": n}`, and
//! `GET /v1/models/{model}` the version served, its state and the node's lag.
//! Every request error is a 4xx with a JSON `{"error": ...}`; a prediction that is not
//! finite is never sent.

use super::node::Node;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use odl_trainer::TrainError;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::sync::Arc;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/models/{spec}", get(status).post(predict))
        .with_state(node)
}

fn error(status: StatusCode, message: impl ToString) -> Response {
    (status, axum::Json(json!({ "error": message.to_string() }))).into_response()
}

/// A 404 unless `name` is the model this node serves.
fn check_model(node: &Node, name: &str) -> Option<Response> {
    (name != node.cfg.model_name).then(|| {
        error(
            StatusCode::NOT_FOUND,
            format!(
                "model {name:?} not found; this node serves {:?}",
                node.cfg.model_name
            ),
        )
    })
}

async fn status(State(node): State<Arc<Node>>, Path(spec): Path<String>) -> Response {
    if let Some(r) = check_model(&node, &spec) {
        return r;
    }
    let lag = node.lag();
    match node.current() {
        Some(v) => {
            let state = if v.model.is_some() {
                "AVAILABLE"
            } else {
                "LOADING"
            };
            axum::Json(json!({
                "model_version_status": [{
                    "version": v.version.0.to_string(),
                    "state": state,
                    "status": {"error_code": "OK", "error_message": ""}
                }],
                "version": v.version.0,
                "state": state,
                "kind": v.kind,
                "base": v.base.0,
                "rows": v.rows(),
                "samples_through": v.samples_through,
                "node_id": node.node_id,
                "partitions": node.cfg.partitions,
                "lag": lag,
            }))
            .into_response()
        }
        None => axum::Json(json!({
            "model_version_status": [],
            "version": null,
            "state": "LOADING",
            "node_id": node.node_id,
            "partitions": node.cfg.partitions,
            "lag": lag,
        }))
        .into_response(),
    }
}

async fn predict(State(node): State<Arc<Node>>, Path(spec): Path<String>, body: Bytes) -> Response {
    let Some(name) = spec.strip_suffix(":predict") else {
        return error(
            StatusCode::NOT_FOUND,
            format!("unknown method in {spec:?}; POST /v1/models/{{model}}:predict"),
        );
    };
    if let Some(r) = check_model(&node, name) {
        return r;
    }
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("request body is not valid JSON: {e}"),
            )
        }
    };
    let Some(instances) = req.get("instances").and_then(Value::as_array) else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected a JSON object {\"instances\": [{...features...}, ...]}",
        );
    };
    if let Some(i) = instances.iter().position(|x| !x.is_object()) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("instance {i} is not an object of features"),
        );
    }
    let Some(version) = node.current() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no version applied yet");
    };
    let Some(model) = version.model.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no model config received yet",
        );
    };
    let preds = match model.predict(version.as_ref(), instances) {
        Ok(p) => p,
        Err(TrainError::Sample(m)) => {
            return error(StatusCode::BAD_REQUEST, format!("bad instance: {m}"))
        }
        Err(TrainError::Params(e)) if e.retryable() => {
            return error(StatusCode::SERVICE_UNAVAILABLE, e)
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    if preds.iter().flatten().any(|p| !p.is_finite()) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "version {} produced a non-finite prediction; not returned",
                version.version
            ),
        );
    }
    let tasks = model.tasks();
    let mut out = String::with_capacity(32 + preds.len() * 48);
    out.push_str("{\"predictions\":[");
    for (i, row) in preds.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('{');
        for (j, (t, p)) in tasks.iter().zip(row).enumerate() {
            if j > 0 {
                out.push(',');
            }
            let _ = write!(out, "{}:{}", Value::String(t.clone()), p);
        }
        out.push('}');
    }
    let _ = write!(out, "],\"version\":{}}}", version.version.0);
    ([(header::CONTENT_TYPE, "application/json")], out).into_response()
}
