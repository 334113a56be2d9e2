//! The serving node's REST API, in TensorFlow Serving's shape (PUBLISH.md):
//! `POST /v1/models/{model}:predict` with `{"instances": [{...features...}]}` answers
//! `{"predictions": [{"click": p, "detail_click": p}], "version": n}`, and
//! `GET /v1/models/{model}` the version served, its state and the node's lag.
//! Every request error is a 4xx with a JSON `{"error": ...}`; a prediction that is not
//! finite is never sent.
//!
//! Operations: `/healthz`, `/readyz` (503 until a version with a model is applied),
//! `GET /v1/node` (version, lag, prediction and error counts) and `/metrics`
//! (Prometheus text: version, lag, predict latency histogram, predictions, errors).

use super::node::Node;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use odl_ps::server::metrics::{self, labels, latency_family, Labels, LatencyFamily, Timed};
use odl_trainer::TrainError;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::sync::Arc;

/// What the REST handlers count, rendered by `/metrics` and `/v1/node`.
struct ServeMetrics {
    latency: LatencyFamily,
    predictions: Counter,
    errors: Family<Labels, Counter>,
}

#[derive(Clone)]
struct Ctx {
    node: Arc<Node>,
    metrics: Arc<ServeMetrics>,
    registry: Arc<Registry>,
}

impl axum::extract::FromRef<Ctx> for Arc<Node> {
    fn from_ref(c: &Ctx) -> Arc<Node> {
        c.node.clone()
    }
}

pub fn router(node: Arc<Node>) -> Router {
    let metrics = Arc::new(ServeMetrics {
        latency: latency_family(),
        predictions: Counter::default(),
        errors: Family::default(),
    });
    let mut registry = Registry::default();
    registry.register(
        "odl_serve_predict_seconds",
        "Predict request latency.",
        metrics.latency.clone(),
    );
    registry.register(
        "odl_serve_predictions",
        "Predict requests answered with predictions.",
        metrics.predictions.clone(),
    );
    registry.register(
        "odl_serve_predict_errors",
        "Predict requests answered with an error, by HTTP code.",
        metrics.errors.clone(),
    );
    registry.register_collector(Box::new(NodeCollector(node.clone())));
    let ctx = Ctx {
        node,
        metrics,
        registry: Arc::new(registry),
    };
    Router::new()
        .route("/v1/models/{spec}", get(status).post(predict))
        .route("/v1/node", get(node_json))
        .route(
            "/metrics",
            get(|State(c): State<Ctx>| async move { metrics::render(&c.registry) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(ctx)
}

/// Ready once a version with a model is applied: before that every predict is a 503.
async fn ready(State(node): State<Arc<Node>>) -> Response {
    match node.current() {
        Some(v) if v.model.is_some() => {
            axum::Json(json!({"ready": true, "version": v.version.0})).into_response()
        }
        Some(_) => not_ready("no model config received yet"),
        None => not_ready("no version applied yet"),
    }
}

fn not_ready(reason: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"ready": false, "reason": reason})),
    )
        .into_response()
}

async fn node_json(State(c): State<Ctx>) -> Response {
    let errors: u64 = ERROR_CODES
        .iter()
        .filter_map(|code| c.metrics.errors.get(&code_labels(*code)).map(|n| n.get()))
        .sum();
    axum::Json(json!({
        "node_id": c.node.node_id,
        "model": c.node.cfg.model_name,
        "version": c.node.current().map(|v| v.version.0),
        "lag": c.node.lag(),
        "predictions": c.metrics.predictions.get(),
        "errors": errors,
    }))
    .into_response()
}

/// The codes a predict can answer with besides 200.
const ERROR_CODES: [u16; 4] = [400, 404, 500, 503];

fn code_labels(code: u16) -> Labels {
    labels(&[("code", &code.to_string())])
}

async fn predict(State(c): State<Ctx>, path: Path<String>, body: Bytes) -> Response {
    let timed = Timed::start(&c.metrics.latency, &labels(&[("node", &c.node.node_id)]));
    let r = predict_once(State(c.node.clone()), path, body).await;
    drop(timed);
    match r.status() {
        StatusCode::OK => {
            c.metrics.predictions.inc();
        }
        s => {
            c.metrics
                .errors
                .get_or_create(&code_labels(s.as_u16()))
                .inc();
        }
    }
    r
}

/// The node's own figures at scrape time.
struct NodeCollector(Arc<Node>);

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("NodeCollector")
            .field(&self.0.node_id)
            .finish()
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let node = &self.0;
        let l = labels(&[("node", &node.node_id)]);
        let current = node.current();
        let lag = node.lag();
        let version = current.as_ref().map_or(0.0, |v| v.version.0 as f64);
        let rows = current.as_ref().map_or(0.0, |v| v.rows() as f64);
        let ready = current.as_ref().is_some_and(|v| v.model.is_some());
        metrics::gauges(
            &mut enc,
            "odl_serve_version",
            "Version served (0: none yet).",
            &[(l.clone(), version)],
        )?;
        metrics::gauges(
            &mut enc,
            "odl_serve_lag_versions",
            "Versions the node is behind the PS.",
            &[(l.clone(), lag.versions as f64)],
        )?;
        metrics::gauges(
            &mut enc,
            "odl_serve_lag_seconds",
            "Age of the served version against the PS's newest.",
            &[(l.clone(), lag.seconds)],
        )?;
        metrics::gauges(
            &mut enc,
            "odl_serve_rows",
            "Sparse rows of the served version.",
            &[(l.clone(), rows)],
        )?;
        metrics::gauges(
            &mut enc,
            "odl_serve_ready",
            "1 when /readyz answers 200.",
            &[(l, ready as u8 as f64)],
        )?;
        Ok(())
    }
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

async fn predict_once(
    State(node): State<Arc<Node>>,
    Path(spec): Path<String>,
    body: Bytes,
) -> Response {
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
