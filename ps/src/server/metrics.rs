//! `GET /metrics` of a PS shard (Prometheus text): request latencies observed by the
//! gRPC handlers, and at scrape time the shard's own typed figures (rows and bytes per
//! table, trained samples, the merged streaming AUC the gates read, versions by status)
//! rendered by a collector, so nothing is counted twice.
//!
//! The small family helpers are public: the serving node and trainer workers render
//! their own figures with them.

use crate::local::LocalStore;
use crate::publish::Publisher;
use crate::routing::ShardId;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// Content type of the OpenMetrics text prometheus-client writes (Prometheus reads it).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A label set of a series.
pub type Labels = Vec<(&'static str, String)>;

/// `[(key, value)]` as [`Labels`].
pub fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// Request latency buckets: 100 µs .. ~3.3 s, doubling.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// A family of latency histograms keyed by labels.
pub type LatencyFamily = Family<Labels, Histogram, fn() -> Histogram>;

pub fn latency_family() -> LatencyFamily {
    Family::new_with_constructor(latency_histogram as fn() -> Histogram)
}

/// Observes the time from its creation to its drop into a histogram (a handler that
/// returns early with an error is timed too).
pub struct Timed(Histogram, Instant);

impl Timed {
    pub fn start(family: &LatencyFamily, l: &Labels) -> Timed {
        Timed(family.get_or_create_owned(l), Instant::now())
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        self.0.observe(self.1.elapsed().as_secs_f64());
    }
}

/// One counter family (`_total` is appended to `name`).
pub fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, u64)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    match series {
        [(l, v)] if l.is_empty() => ConstCounter::new(*v).encode(m),
        _ => series
            .iter()
            .try_for_each(|(l, v)| ConstCounter::new(*v).encode(m.encode_family(l)?)),
    }
}

/// One gauge family.
pub fn gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, f64)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    match series {
        [(l, v)] if l.is_empty() => ConstGauge::new(*v).encode(m),
        _ => series
            .iter()
            .try_for_each(|(l, v)| ConstGauge::new(*v).encode(m.encode_family(l)?)),
    }
}

/// One histogram from per-bucket counts (upper bound, count; the last bound +Inf).
pub fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    sum: f64,
    buckets: &[(f64, u64)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    let count = buckets.iter().map(|b| b.1).sum();
    m.encode_histogram::<NoLabelSet>(sum, count, buckets, None)
}

/// A registry rendered as a `/metrics` response.
pub fn render(registry: &Registry) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed",
        )
            .into_response(),
    }
}

/// The latencies a shard's gRPC handlers observe (server side).
#[derive(Clone)]
pub struct PsMetrics {
    pub pull: LatencyFamily,
    pub push: LatencyFamily,
}

impl Default for PsMetrics {
    fn default() -> Self {
        PsMetrics {
            pull: latency_family(),
            push: latency_family(),
        }
    }
}

impl PsMetrics {
    /// The registry of one shard: these latencies plus the shard's figures at scrape time.
    pub fn registry(
        &self,
        store: Arc<LocalStore>,
        shard: ShardId,
        publisher: Option<Arc<Publisher>>,
    ) -> Registry {
        let mut r = Registry::default();
        r.register(
            "odl_ps_pull_seconds",
            "Pull request latency on the shard, by kind (sparse, dense).",
            self.pull.clone(),
        );
        r.register(
            "odl_ps_push_seconds",
            "Push request latency on the shard, by kind (sparse, dense).",
            self.push.clone(),
        );
        r.register_collector(Box::new(ShardCollector {
            store,
            shard,
            publisher,
        }));
        r
    }
}

struct ShardCollector {
    store: Arc<LocalStore>,
    shard: ShardId,
    publisher: Option<Arc<Publisher>>,
}

impl fmt::Debug for ShardCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardCollector")
            .field("shard", &self.shard.index)
            .finish()
    }
}

impl Collector for ShardCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let shard = self.shard.index.to_string();
        let tables = self.store.table_stats();
        let per_table = |f: fn(&crate::local::TableStats) -> f64| {
            tables
                .iter()
                .map(|t| (labels(&[("shard", &shard), ("table", &t.name)]), f(t)))
                .collect::<Vec<_>>()
        };
        gauges(
            &mut enc,
            "odl_ps_rows",
            "Sparse rows held, per table.",
            &per_table(|t| t.rows as f64),
        )?;
        gauges(
            &mut enc,
            "odl_ps_table_bytes",
            "Heap bytes of a sparse table.",
            &per_table(|t| t.heap_bytes as f64),
        )?;
        let sh = labels(&[("shard", &shard)]);
        gauges(
            &mut enc,
            "odl_ps_heap_bytes",
            "Heap bytes of the shard's parameters.",
            &[(sh.clone(), self.store.heap_bytes() as f64)],
        )?;
        gauges(
            &mut enc,
            "odl_ps_workers",
            "Workers that reported progress.",
            &[(sh.clone(), self.store.workers() as f64)],
        )?;
        let p = self.store.merged_progress();
        counters(
            &mut enc,
            "odl_ps_samples_trained",
            "Samples trained, as the workers report them.",
            &[(sh, p.samples)],
        )?;
        let per_task = |f: fn(&odl_proto::params::TaskProgress) -> f64| {
            p.tasks
                .iter()
                .map(|t| (labels(&[("task", &t.task)]), f(t)))
                .collect::<Vec<_>>()
        };
        gauges(
            &mut enc,
            "odl_ps_global_auc",
            "Streaming AUC since start, per task (the gate's input).",
            &per_task(|t| t.global_auc),
        )?;
        gauges(
            &mut enc,
            "odl_ps_current_auc",
            "Streaming AUC over the recent window, per task.",
            &per_task(|t| t.current_auc),
        )?;
        if let Some(publisher) = &self.publisher {
            let c = publisher.config();
            gauges(
                &mut enc,
                "odl_ps_gate_auc_threshold",
                "AUC a version must reach to be published.",
                &[
                    (labels(&[("gate", "global")]), c.global_auc_threshold),
                    (labels(&[("gate", "current")]), c.current_auc_threshold),
                ],
            )?;
            // A storage error leaves the series out of this scrape rather than failing it.
            if let Ok(list) = publisher.registry().list() {
                let mut by_status: BTreeMap<String, u64> =
                    ["PUSH_ONLINE", "FINISHED", "SWITCH_TIMEOUT", "SKIPPED"]
                        .iter()
                        .map(|s| (s.to_string(), 0))
                        .collect();
                for v in &list {
                    let s = serde_json::to_value(v.status)
                        .ok()
                        .and_then(|s| s.as_str().map(str::to_string));
                    *by_status.entry(s.unwrap_or_default()).or_default() += 1;
                }
                let series: Vec<(Labels, f64)> = by_status
                    .iter()
                    .map(|(s, n)| (labels(&[("status", s)]), *n as f64))
                    .collect();
                gauges(&mut enc, "odl_ps_versions", "Versions by status.", &series)?;
                let latest = list.iter().map(|v| v.version.0).max().unwrap_or(0);
                gauges(
                    &mut enc,
                    "odl_ps_latest_version",
                    "Newest version number.",
                    &[(vec![], latest as f64)],
                )?;
            }
        }
        Ok(())
    }
}
