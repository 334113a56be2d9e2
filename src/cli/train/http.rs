//! A cluster worker's HTTP face (`http_addr` of configs/trainer.toml): `/v1/progress`
//! (samples, samples/s, AUC per task), `/metrics` (Prometheus text: the same figures
//! plus pull/push latency as this worker sees it), `/healthz`, `/readyz` (503 until the
//! PS shards have answered the schema declaration).
//!
//! The figures are the trainer's own: [`ObservedStore`] wraps the worker's parameter
//! store, times each call and keeps the progress the training loop reports to the PS.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use odl_proto::hashing::FeatureId;
use odl_proto::params::{self, ModelSchema, ParamRead, ParamStore, TrainProgress};
use odl_ps::server::metrics::{self, labels, latency_family, Labels, LatencyFamily, Timed};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What the worker's routes render; shared with [`ObservedStore`].
pub struct WorkerObservations {
    /// `"i/n"`.
    worker: String,
    started: Instant,
    state: Mutex<WorkerState>,
    pull: LatencyFamily,
    push: LatencyFamily,
}

struct WorkerState {
    /// An error (the reason) until the PS shards have answered.
    ready: Result<(), String>,
    /// A worker on the samples topic: an error while the broker does not answer.
    broker: Result<(), String>,
    /// A worker on the samples topic: the partitions each group member owns.
    partitions: Vec<Vec<i32>>,
    /// A worker on the samples topic: samples skipped as trained already.
    duplicates: Option<Arc<AtomicU64>>,
    progress: TrainProgress,
    /// When the progress was reported, for samples/s.
    reported: Option<Instant>,
}

impl WorkerObservations {
    pub fn new(worker: String) -> Arc<WorkerObservations> {
        Arc::new(WorkerObservations {
            worker,
            started: Instant::now(),
            state: Mutex::new(WorkerState {
                ready: Err("the parameter-server shards have not answered yet".into()),
                broker: Ok(()),
                partitions: Vec::new(),
                duplicates: None,
                progress: TrainProgress::default(),
                reported: None,
            }),
            pull: latency_family(),
            push: latency_family(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WorkerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_ready(&self, r: Result<(), String>) {
        self.lock().ready = r;
    }

    /// The worker reads the samples topic with `members` group members.
    pub fn follow_stream(&self, members: usize, duplicates: Arc<AtomicU64>) {
        let mut s = self.lock();
        s.partitions = vec![Vec::new(); members];
        s.duplicates = Some(duplicates);
    }

    pub fn set_partitions(&self, member: usize, partitions: Vec<i32>) {
        let mut s = self.lock();
        let Some(p) = s.partitions.get_mut(member) else { return };
        if *p == partitions {
            return;
        }
        *p = partitions;
        let owned: usize = s.partitions.iter().map(Vec::len).sum();
        // One line per change: an operator sees a rebalance land (and a test waits
        // for it) without polling /v1/progress.
        tracing::info!(owned, "trainer: the partitions this worker owns changed");
    }

    pub fn set_broker(&self, r: Result<(), String>) {
        self.lock().broker = r;
    }

    /// Ready once the PS answered and while the broker (if any) does.
    fn readiness(&self) -> Result<(), String> {
        let s = self.lock();
        s.ready.clone()?;
        s.broker.clone().map_err(|e| format!("samples topic unavailable: {e}"))
    }

    /// The partitions the worker's members own (sorted), and the duplicates skipped.
    fn stream_view(&self) -> (Vec<i32>, u64) {
        let s = self.lock();
        let mut parts: Vec<i32> = s.partitions.iter().flatten().copied().collect();
        parts.sort_unstable();
        let dups = s.duplicates.as_ref().map_or(0, |d| d.load(Ordering::Relaxed));
        (parts, dups)
    }

    fn progress(&self) -> (TrainProgress, f64) {
        let s = self.lock();
        let secs = s
            .reported
            .map_or(0.0, |t| t.duration_since(self.started).as_secs_f64());
        let rate = if secs > 0.0 {
            s.progress.samples as f64 / secs
        } else {
            0.0
        };
        (s.progress.clone(), rate)
    }

    fn worker_labels(&self) -> Labels {
        labels(&[("worker", &self.worker)])
    }
}

/// The worker's store, timed and with its progress reports kept for the routes.
pub struct ObservedStore<'a, S> {
    pub inner: &'a S,
    pub obs: Arc<WorkerObservations>,
}

impl<S> ObservedStore<'_, S> {
    fn timed(&self, family: &LatencyFamily, kind: &str) -> Timed {
        Timed::start(family, &labels(&[("kind", kind)]))
    }
}

impl<S: ParamStore> ParamRead for ObservedStore<'_, S> {
    fn pull_sparse(&self, table: &str, keys: &[FeatureId], out: &mut [f32]) -> params::Result<()> {
        let _t = self.timed(&self.obs.pull, "sparse");
        self.inner.pull_sparse(table, keys, out)
    }

    fn pull_dense(&self, names: &[String]) -> params::Result<Vec<Vec<f32>>> {
        let _t = self.timed(&self.obs.pull, "dense");
        self.inner.pull_dense(names)
    }
}

impl<S: ParamStore> ParamStore for ObservedStore<'_, S> {
    fn declare(&self, schema: &ModelSchema) -> params::Result<()> {
        self.inner.declare(schema)
    }

    fn push_sparse(&self, table: &str, keys: &[FeatureId], grads: &[f32]) -> params::Result<()> {
        let _t = self.timed(&self.obs.push, "sparse");
        self.inner.push_sparse(table, keys, grads)
    }

    fn push_dense(&self, grads: &[(String, Vec<f32>)]) -> params::Result<()> {
        let _t = self.timed(&self.obs.push, "dense");
        self.inner.push_dense(grads)
    }

    fn report_progress(&self, progress: &TrainProgress) -> params::Result<()> {
        {
            let mut s = self.obs.lock();
            s.progress = progress.clone();
            s.reported = Some(Instant::now());
        }
        self.inner.report_progress(progress)
    }
}

#[derive(Clone)]
struct Ctx {
    obs: Arc<WorkerObservations>,
    registry: Arc<Registry>,
}

pub fn router(obs: Arc<WorkerObservations>) -> Router {
    let mut registry = Registry::default();
    registry.register(
        "odl_trainer_pull_seconds",
        "Pull latency seen by the worker, by kind (sparse, dense).",
        obs.pull.clone(),
    );
    registry.register(
        "odl_trainer_push_seconds",
        "Push latency seen by the worker, by kind (sparse, dense).",
        obs.push.clone(),
    );
    registry.register_collector(Box::new(WorkerCollector(obs.clone())));
    Router::new()
        .route("/v1/progress", get(progress))
        .route(
            "/metrics",
            get(|State(c): State<Ctx>| async move { metrics::render(&c.registry) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(Ctx {
            obs,
            registry: Arc::new(registry),
        })
}

async fn progress(State(c): State<Ctx>) -> Json<serde_json::Value> {
    let (p, rate) = c.obs.progress();
    let (partitions, duplicates) = c.obs.stream_view();
    Json(json!({
        "worker": c.obs.worker,
        "samples": p.samples,
        "samples_per_sec": rate,
        "tasks": p.tasks,
        "partitions": partitions,
        "duplicates_skipped": duplicates,
    }))
}

async fn ready(State(c): State<Ctx>) -> Response {
    match c.obs.readiness() {
        Ok(()) => Json(json!({"ready": true})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": reason})),
        )
            .into_response(),
    }
}

struct WorkerCollector(Arc<WorkerObservations>);

impl std::fmt::Debug for WorkerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("WorkerCollector")
            .field(&self.0.worker)
            .finish()
    }
}

impl Collector for WorkerCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let o = &self.0;
        let (p, rate) = o.progress();
        let w = o.worker_labels();
        metrics::counters(
            &mut enc,
            "odl_trainer_samples",
            "Samples trained by this worker.",
            &[(w.clone(), p.samples)],
        )?;
        metrics::gauges(
            &mut enc,
            "odl_trainer_samples_per_second",
            "Samples per second since start.",
            &[(w.clone(), rate)],
        )?;
        let per_task = |f: fn(&params::TaskProgress) -> f64| {
            p.tasks
                .iter()
                .map(|t| (labels(&[("worker", &o.worker), ("task", &t.task)]), f(t)))
                .collect::<Vec<_>>()
        };
        metrics::gauges(
            &mut enc,
            "odl_trainer_global_auc",
            "Streaming AUC since start, per task.",
            &per_task(|t| t.global_auc),
        )?;
        metrics::gauges(
            &mut enc,
            "odl_trainer_current_auc",
            "Streaming AUC over the recent window, per task.",
            &per_task(|t| t.current_auc),
        )?;
        let (partitions, duplicates) = o.stream_view();
        metrics::counters(
            &mut enc,
            "odl_trainer_duplicate_samples",
            "Samples skipped because their sample_id was trained already (samples topic).",
            &[(w.clone(), duplicates)],
        )?;
        metrics::gauges(
            &mut enc,
            "odl_trainer_partitions",
            "Samples-topic partitions this worker's group members own.",
            &[(w.clone(), partitions.len() as f64)],
        )?;
        let ready = o.readiness().is_ok();
        metrics::gauges(
            &mut enc,
            "odl_trainer_ready",
            "1 when /readyz answers 200.",
            &[(w, ready as u8 as f64)],
        )?;
        Ok(())
    }
}

/// Serves the worker's routes on `addr` from a small runtime of its own (the training
/// loop is synchronous). A bind failure is a warning: training goes on without HTTP.
pub fn spawn(addr: &str, obs: Arc<WorkerObservations>) -> Option<tokio::runtime::Runtime> {
    if addr.is_empty() {
        return None;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("worker-http")
        .enable_all()
        .build()
        .map_err(|e| tracing::warn!(error = %e, "no runtime for the worker's HTTP server"))
        .ok()?;
    let listener = match rt.block_on(tokio::net::TcpListener::bind(addr)) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(addr, error = %e, "cannot bind the worker's HTTP address; training without it");
            return None;
        }
    };
    if let Ok(a) = listener.local_addr() {
        eprintln!("odl train worker {} http={a}", obs.worker);
    }
    rt.spawn(async move {
        if let Err(e) = axum::serve(listener, router(obs)).await {
            tracing::warn!(error = %e, "worker HTTP server stopped");
        }
    });
    Some(rt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_or_empty_address_means_no_server_and_no_failure() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        assert!(spawn(&addr, WorkerObservations::new("0/1".into())).is_none());
        assert!(spawn("", WorkerObservations::new("0/1".into())).is_none());
        assert!(spawn("127.0.0.1:0", WorkerObservations::new("0/1".into())).is_some());
    }

    #[test]
    fn readiness_and_progress_follow_the_store() {
        let obs = WorkerObservations::new("1/2".into());
        assert!(obs.lock().ready.is_err());
        obs.set_ready(Ok(()));
        let store = odl_ps::LocalStore::default();
        let observed = ObservedStore {
            inner: &store,
            obs: obs.clone(),
        };
        let p = TrainProgress {
            samples: 10,
            tasks: vec![],
        };
        observed.report_progress(&p).unwrap();
        assert_eq!(obs.progress().0, p);
        assert!(obs.lock().ready.is_ok());
    }
}
