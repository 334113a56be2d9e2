//! The joiner's HTTP face, the same in every mode (`odl run`, a Kafka joiner): `GET
//! /stats` (JOIN.md's statistics JSON, nothing more), `/v1/quality` (sample quality, see
//! [`crate::quality`]), `/metrics` (Prometheus text, rendered from the same snapshot at
//! scrape time), `/healthz` and `/readyz`.
//!
//! The service loop publishes its typed statistics into a [`JoinerObservations`] every
//! stats interval; the routes only read that snapshot, so `/stats`, `/v1/quality` and
//! `/metrics` always agree with each other.

use crate::operator::Joiner;
use crate::quality::{Pending, Quality, QualityReport, LABEL_DELAY_BOUNDS_MS};
use crate::stats::JoinStats;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// Content type of the OpenMetrics text prometheus-client writes (Prometheus reads it).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether the joiner is doing its work; anything but `Ready` makes `/readyz` a 503
/// with the reason.
#[derive(Clone, Debug, PartialEq)]
pub enum Readiness {
    /// The service loop has not published yet.
    Starting,
    Ready,
    /// E.g. "broker unreachable" (set by the source's owner).
    NotReady(String),
}

#[derive(Debug)]
struct Observed {
    stats: JoinStats,
    /// The counters when `quality` and `pending` were taken (`stats` is newer).
    as_of: JoinStats,
    quality: Quality,
    pending: Pending,
    consumer_lag: BTreeMap<String, u64>,
    readiness: Readiness,
}

/// The live view of one joiner that its HTTP routes render: updated by the service
/// loop ([`JoinerObservations::publish`]), read by the handlers. Cheap to clone.
#[derive(Clone, Debug)]
pub struct JoinerObservations {
    inner: Arc<Mutex<Observed>>,
}

impl Default for JoinerObservations {
    fn default() -> Self {
        JoinerObservations {
            inner: Arc::new(Mutex::new(Observed {
                stats: JoinStats::default(),
                as_of: JoinStats::default(),
                quality: Quality::default(),
                pending: Pending::default(),
                consumer_lag: BTreeMap::new(),
                readiness: Readiness::Starting,
            })),
        }
    }
}

impl JoinerObservations {
    fn lock(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the operator's counters alone: a copy of a few dozen integers, cheap enough
    /// after every batch, so `/stats` is never a stats interval behind. (A full
    /// [`publish`](Self::publish) walks every pending key and clones three histograms:
    /// at a 10 ms interval that was a tenth of the Kafka joiner's CPU in
    /// `odl bench kafka`.)
    pub fn publish_stats(&self, stats: &JoinStats) {
        self.lock().stats = *stats;
    }

    /// Takes the operator's statistics, quality and state sizes (every stats interval
    /// and at the end). The first publish makes a starting joiner ready.
    pub fn publish(&self, joiner: &Joiner) {
        let (stats, quality, pending) =
            (*joiner.stats(), joiner.quality().clone(), joiner.pending());
        let mut o = self.lock();
        o.stats = stats;
        o.as_of = stats;
        o.quality = quality;
        o.pending = pending;
        if o.readiness == Readiness::Starting {
            o.readiness = Readiness::Ready;
        }
    }

    /// Messages behind the high watermark per input topic (Kafka mode).
    pub fn set_consumer_lag(&self, lag: BTreeMap<String, u64>) {
        self.lock().consumer_lag = lag;
    }

    pub fn set_readiness(&self, r: Readiness) {
        self.lock().readiness = r;
    }

    pub fn readiness(&self) -> Readiness {
        self.lock().readiness.clone()
    }

    pub fn stats(&self) -> JoinStats {
        self.lock().stats
    }

    pub fn quality(&self) -> QualityView {
        let o = self.lock();
        QualityView { report: o.quality.report(o.pending, &o.consumer_lag), as_of: o.as_of }
    }
}

/// `GET /v1/quality`: the quality figures and the counters of the same snapshot.
/// `/stats` is refreshed after every batch but these only every stats interval, so
/// a reader relating the two (label delays against joined labels, say) takes the
/// counters from `as_of`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QualityView {
    #[serde(flatten)]
    pub report: QualityReport,
    pub as_of: JoinStats,
}

/// The routes of this module over `observations`.
pub fn router(observations: JoinerObservations) -> Router {
    router_with(observations, Vec::new())
}

/// [`router`] whose `/metrics` also renders `extra` collectors (the Kafka joiner's
/// checkpoint and broker series).
pub fn router_with(observations: JoinerObservations, extra: Vec<Box<dyn Collector>>) -> Router {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(JoinerCollector(observations.clone())));
    for c in extra {
        registry.register_collector(c);
    }
    let ctx = Ctx {
        observations,
        registry: Arc::new(registry),
    };
    Router::new()
        .route("/stats", get(stats))
        .route("/v1/quality", get(quality))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(ctx)
}

#[derive(Clone)]
struct Ctx {
    observations: JoinerObservations,
    registry: Arc<Registry>,
}

async fn stats(State(c): State<Ctx>) -> Json<JoinStats> {
    Json(c.observations.stats())
}

async fn quality(State(c): State<Ctx>) -> Json<QualityView> {
    Json(c.observations.quality())
}

async fn ready(State(c): State<Ctx>) -> Response {
    match c.observations.readiness() {
        Readiness::Ready => Json(serde_json::json!({"ready": true})).into_response(),
        Readiness::Starting => not_ready("the join loop has not started"),
        Readiness::NotReady(reason) => not_ready(&reason),
    }
}

fn not_ready(reason: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({"ready": false, "reason": reason})),
    )
        .into_response()
}

async fn metrics(State(c): State<Ctx>) -> Response {
    render_metrics(&c.registry)
}

/// A registry rendered as a `/metrics` response.
pub fn render_metrics(registry: &Registry) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed",
        )
            .into_response(),
    }
}

/// Renders the observations at scrape time: no second bookkeeping.
#[derive(Debug)]
struct JoinerCollector(JoinerObservations);

type Labels = Vec<(&'static str, String)>;

fn l(key: &'static str, value: &str) -> Labels {
    vec![(key, value.to_string())]
}

/// One counter family.
pub fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, u64)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    match series {
        [(labels, v)] if labels.is_empty() => ConstCounter::new(*v).encode(m),
        _ => series
            .iter()
            .try_for_each(|(labels, v)| ConstCounter::new(*v).encode(m.encode_family(labels)?)),
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
        [(labels, v)] if labels.is_empty() => ConstGauge::new(*v).encode(m),
        _ => series
            .iter()
            .try_for_each(|(labels, v)| ConstGauge::new(*v).encode(m.encode_family(labels)?)),
    }
}

/// One histogram series per label set: `(labels, sum, per-bucket counts with their
/// upper bounds, the last +Inf)`.
pub type HistogramSeries = (Labels, f64, Vec<(f64, u64)>);

pub fn histograms(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[HistogramSeries],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    let count = |b: &[(f64, u64)]| b.iter().map(|x| x.1).sum();
    match series {
        [(labels, sum, b)] if labels.is_empty() => {
            m.encode_histogram::<NoLabelSet>(*sum, count(b), b, None)
        }
        _ => series.iter().try_for_each(|(labels, sum, b)| {
            m.encode_family(labels)?
                .encode_histogram::<NoLabelSet>(*sum, count(b), b, None)
        }),
    }
}

impl Collector for JoinerCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let o = self.0.lock();
        let s = &o.stats;
        let streams = [(
            "exposure",
            s.exposure.received,
            s.exposure.late,
            s.exposure.joined,
            s.exposure.unjoined,
        )]
        .into_iter()
        .chain(
            [
                ("click", &s.click),
                ("detail_click", &s.detail_click),
                ("feature", &s.feature),
            ]
            .map(|(n, st)| (n, st.received, st.late, st.joined, st.unjoined)),
        )
        .collect::<Vec<_>>();
        let per = |f: fn(&(&str, u64, u64, u64, u64)) -> u64| {
            streams
                .iter()
                .map(|x| (l("stream", x.0), f(x)))
                .collect::<Vec<_>>()
        };
        counters(
            &mut enc,
            "odl_joiner_events_received",
            "Events read per stream.",
            &per(|x| x.1),
        )?;
        counters(
            &mut enc,
            "odl_joiner_events_late",
            "Events behind the watermark (dead letters).",
            &per(|x| x.2),
        )?;
        counters(
            &mut enc,
            "odl_joiner_events_joined",
            "Events that joined.",
            &per(|x| x.3),
        )?;
        counters(
            &mut enc,
            "odl_joiner_events_unjoined",
            "Events decided without a partner.",
            &per(|x| x.4),
        )?;
        counters(
            &mut enc,
            "odl_joiner_events_duplicate",
            "Exposures of a key already held.",
            &[(l("stream", "exposure"), s.exposure.duplicate)],
        )?;
        counters(
            &mut enc,
            "odl_joiner_malformed",
            "Lines that are no event.",
            &[(vec![], s.malformed)],
        )?;
        counters(
            &mut enc,
            "odl_joiner_samples_emitted",
            "Samples written.",
            &[(vec![], s.samples.emitted)],
        )?;
        counters(
            &mut enc,
            "odl_joiner_samples_audited",
            "Samples also written to the audit sink.",
            &[(vec![], s.samples.audited)],
        )?;
        let q = &o.quality;
        let delays = [
            ("click", &q.click_delay),
            ("detail_click", &q.detail_click_delay),
        ];
        let label_series: Vec<HistogramSeries> = delays
            .iter()
            .map(|(name, d)| {
                let mut buckets: Vec<(f64, u64)> = LABEL_DELAY_BOUNDS_MS
                    .iter()
                    .zip(d.buckets)
                    .map(|(b, n)| (*b as f64 / 1000.0, n))
                    .collect();
                buckets.push((f64::INFINITY, d.buckets[5]));
                (l("label", name), d.sum_seconds, buckets)
            })
            .collect();
        histograms(
            &mut enc,
            "odl_joiner_label_delay_seconds",
            "Delay from the exposure to a label that joined it.",
            &label_series,
        )?;
        counters(
            &mut enc,
            "odl_joiner_label_past_window",
            "Labels that reached their held exposure after its window.",
            &delays.map(|(n, d)| (l("label", n), d.past_window)),
        )?;
        histograms(
            &mut enc,
            "odl_joiner_sample_delay_seconds",
            "Exposure event time to the watermark when its sample left.",
            &[(vec![], q.sample_delay_sum_seconds, q.sample_delay_buckets())],
        )?;
        let p = o.pending;
        gauges(
            &mut enc,
            "odl_joiner_pending_events",
            "Events held in the join state.",
            &[
                (l("kind", "exposure"), p.exposures as f64),
                (l("kind", "click"), p.clicks as f64),
                (l("kind", "detail_click"), p.detail_clicks as f64),
                (l("kind", "feature"), p.features as f64),
            ],
        )?;
        let report = q.report(p, &o.consumer_lag);
        gauges(
            &mut enc,
            "odl_joiner_positive_ratio",
            "Share of emitted samples labelled positive, per task.",
            &[
                (l("task", "click"), report.positive_rate.click),
                (l("task", "detail_click"), report.positive_rate.detail_click),
            ],
        )?;
        let coverage: Vec<(Labels, f64)> = report
            .feature_coverage
            .iter()
            .map(|c| (l("field", &c.field), c.share))
            .collect();
        gauges(
            &mut enc,
            "odl_joiner_feature_coverage_ratio",
            "Share of samples carrying the field.",
            &coverage,
        )?;
        let lag: Vec<(Labels, f64)> = o
            .consumer_lag
            .iter()
            .map(|(t, n)| (l("topic", t), *n as f64))
            .collect();
        gauges(
            &mut enc,
            "odl_joiner_consumer_lag_messages",
            "Messages behind the high watermark per topic.",
            &lag,
        )?;
        gauges(
            &mut enc,
            "odl_joiner_ready",
            "1 when /readyz answers 200.",
            &[(vec![], (o.readiness == Readiness::Ready) as u8 as f64)],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_starts_false_and_a_reason_set_by_the_source_sticks() {
        let obs = JoinerObservations::default();
        assert_eq!(obs.readiness(), Readiness::Starting);
        let mut j = Joiner::new(&crate::JoinerConfig::default());
        obs.publish(&j);
        assert_eq!(obs.readiness(), Readiness::Ready);
        obs.set_readiness(Readiness::NotReady("broker unreachable".into()));
        j.push(br#"{"stream":"click","pv_id":"p","item_id":"i","ts":5}"#);
        obs.publish(&j);
        assert_eq!(
            obs.readiness(),
            Readiness::NotReady("broker unreachable".into())
        );
        assert_eq!(obs.stats().click.received, 1);
    }

    #[test]
    fn published_counters_are_served_before_the_next_full_publish() {
        let obs = JoinerObservations::default();
        let mut j = Joiner::new(&crate::JoinerConfig::default());
        obs.publish(&j);
        j.push(br#"{"stream":"click","pv_id":"p","item_id":"i","ts":5}"#);
        assert_eq!(obs.stats().click.received, 0);
        obs.publish_stats(j.stats());
        assert_eq!(obs.stats().click.received, 1);
        assert_eq!(obs.readiness(), Readiness::Ready);
    }

    #[test]
    fn metrics_render_the_published_snapshot() {
        let obs = JoinerObservations::default();
        let mut j = Joiner::new(&crate::JoinerConfig::default());
        j.push(b"not an event");
        obs.publish(&j);
        obs.set_consumer_lag(BTreeMap::from([("clicks".to_string(), 7)]));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(JoinerCollector(obs.clone())));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("\nodl_joiner_malformed_total 1\n"), "{text}");
        assert!(
            text.contains("odl_joiner_consumer_lag_messages{topic=\"clicks\"} 7.0\n"),
            "{text}"
        );
        assert!(
            text.contains("odl_joiner_label_delay_seconds_bucket{le=\"+Inf\",label=\"click\"} 0\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(obs.quality().report.consumer_lag["clicks"], 7);
    }
}
