//! The numbers the charts plot, read from one poll of a service. Ratios are cumulative
//! (they equal what the service's own JSON gives at that moment, so the page can be
//! checked against it); rates are per second between two polls of the same service.

use super::config::ServiceKind;
use super::poll::Fetched;
use serde_json::Value;
use std::collections::BTreeMap;

pub type Point = BTreeMap<String, f64>;

const STREAMS: [&str; 4] = ["exposure", "click", "detail_click", "feature"];

/// Gauges and cumulative counters of one poll; `Rates` turns the counters named in
/// [`RATES`] into per-second rates.
pub fn extract(kind: ServiceKind, endpoints: &BTreeMap<&'static str, Fetched>) -> Point {
    let mut p = Point::new();
    let body = |path: &str| endpoints.get(path).and_then(Fetched::ok_json);
    match kind {
        ServiceKind::Joiner => {
            if let Some(s) = body("/stats") {
                join_stats(s, &mut p);
            }
            if let Some(q) = body("/v1/quality") {
                quality(q, &mut p);
            }
        }
        ServiceKind::Ps | ServiceKind::Worker => {
            if let Some(pr) = body("/v1/progress") {
                progress(pr, &mut p);
            }
            if let Some(s) = body("/v1/shard") {
                shard(s, &mut p);
            }
        }
        ServiceKind::Serving => {
            if let Some(n) = body("/v1/node") {
                put(&mut p, "version", &n["version"]);
                put(&mut p, "lag.versions", &n["lag"]["versions"]);
                put(&mut p, "lag.seconds", &n["lag"]["seconds"]);
                put(&mut p, "predictions", &n["predictions"]);
                put(&mut p, "errors", &n["errors"]);
            }
        }
    }
    p
}

/// Counter → the rate series computed from it.
const RATES: [(&str, &str); 4] = [
    ("samples.emitted", "sample_rate"),
    ("samples.audited", "audit_rate"),
    ("samples", "samples_per_sec"),
    ("predictions", "predictions_per_sec"),
];

/// Rates are taken over this span, not between two polls: services refresh their
/// counters on their own ticks (the joiner every couple of seconds), so a rate between
/// two neighbouring polls would jump between 0 and twice the truth.
const RATE_SPAN_MS: u64 = 10_000;

/// Recent polls of one service, for rates.
#[derive(Default)]
pub struct Rates {
    recent: std::collections::VecDeque<(u64, Point)>,
}

impl Rates {
    /// Adds the rate series to `p` (polled at `t_ms`): the counter's increase per
    /// second since the oldest poll within [`RATE_SPAN_MS`]. A counter that went down
    /// (the service restarted) starts over rather than giving a negative rate.
    pub fn derive(&mut self, t_ms: u64, p: &mut Point) {
        while self.recent.len() > 1 && self.recent[1].0 + RATE_SPAN_MS <= t_ms {
            self.recent.pop_front();
        }
        let restarted = self.recent.back().is_some_and(|(_, last)| {
            RATES
                .iter()
                .any(|(c, _)| matches!((last.get(*c), p.get(*c)), (Some(a), Some(b)) if b < a))
        });
        if restarted {
            self.recent.clear();
        }
        if let Some((t0, first)) = self.recent.front() {
            let dt = t_ms.saturating_sub(*t0) as f64 / 1000.0;
            for (counter, rate) in RATES {
                if let (Some(a), Some(b)) = (first.get(counter), p.get(counter)) {
                    if dt > 0.0 {
                        p.insert(rate.to_string(), (b - a) / dt);
                    }
                }
            }
        }
        let counters = RATES
            .iter()
            .filter_map(|(c, _)| p.get(*c).map(|v| (c.to_string(), *v)));
        self.recent.push_back((t_ms, counters.collect()));
    }
}

fn put(p: &mut Point, name: &str, v: &Value) {
    if let Some(x) = v.as_f64() {
        p.insert(name.to_string(), x);
    }
}

fn ratio(p: &mut Point, name: String, num: &Value, den: &Value) {
    if let (Some(n), Some(d)) = (num.as_f64(), den.as_f64()) {
        if d > 0.0 {
            p.insert(name, n / d);
        }
    }
}

fn join_stats(s: &Value, p: &mut Point) {
    for stream in STREAMS {
        let st = &s[stream];
        for field in ["received", "late", "duplicate", "joined", "unjoined"] {
            put(p, &format!("{stream}.{field}"), &st[field]);
        }
        ratio(
            p,
            format!("join_ratio.{stream}"),
            &st["joined"],
            &st["received"],
        );
        ratio(
            p,
            format!("late_share.{stream}"),
            &st["late"],
            &st["received"],
        );
        if !st["duplicate"].is_null() {
            ratio(
                p,
                format!("duplicate_share.{stream}"),
                &st["duplicate"],
                &st["received"],
            );
        }
    }
    put(p, "malformed", &s["malformed"]);
    put(p, "samples.emitted", &s["samples"]["emitted"]);
    put(p, "samples.audited", &s["samples"]["audited"]);
    ratio(
        p,
        "audit_share".into(),
        &s["samples"]["audited"],
        &s["samples"]["emitted"],
    );
}

fn quality(q: &Value, p: &mut Point) {
    for pct in ["p50", "p90", "p99"] {
        put(
            p,
            &format!("sample_delay.{pct}"),
            &q["sample_delay_seconds"][pct],
        );
    }
    for (map, prefix) in [
        ("positive_rate", "positive_rate"),
        ("consumer_lag", "consumer_lag"),
    ] {
        if let Some(m) = q[map].as_object() {
            for (k, v) in m {
                put(p, &format!("{prefix}.{k}"), v);
            }
        }
    }
    if let Some(m) = q["pending"].as_object() {
        for (k, v) in m {
            put(p, &format!("pending.{k}"), v);
        }
    }
}

fn progress(pr: &Value, p: &mut Point) {
    put(p, "samples", &pr["samples"]);
    // A worker's own figure is its average since start; the chart wants the recent
    // rate, which `Rates` derives from `samples` like every other rate.
    put(p, "reported_samples_per_sec", &pr["samples_per_sec"]);
    for t in pr["tasks"].as_array().into_iter().flatten() {
        let Some(task) = t["task"].as_str() else {
            continue;
        };
        put(p, &format!("auc.{task}.global"), &t["global_auc"]);
        put(p, &format!("auc.{task}.current"), &t["current_auc"]);
    }
    put(p, "gate.global", &pr["gates"]["global_auc_threshold"]);
    put(p, "gate.current", &pr["gates"]["current_auc_threshold"]);
}

fn shard(s: &Value, p: &mut Point) {
    let tables = s["tables"].as_array().into_iter().flatten();
    let rows: f64 = tables.filter_map(|t| t["rows"].as_f64()).sum();
    p.insert("rows".into(), rows);
    put(p, "heap_bytes", &s["heap_bytes"]);
    if !p.contains_key("samples") {
        put(p, "samples", &s["samples_trained"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answers(pairs: &[(&'static str, Value)]) -> BTreeMap<&'static str, Fetched> {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    *k,
                    Fetched::Answer {
                        status: 200,
                        body: v.clone(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn join_ratios_are_the_stats_own_quotients() {
        let stats = json!({
            "exposure": {"received": 200, "late": 2, "duplicate": 10, "joined": 150, "unjoined": 38},
            "click": {"received": 40, "late": 4, "joined": 30, "unjoined": 6},
            "detail_click": {"received": 0, "late": 0, "joined": 0, "unjoined": 0},
            "feature": {"received": 100, "late": 0, "joined": 90, "unjoined": 10},
            "malformed": 3, "samples": {"emitted": 150, "audited": 15}});
        let p = extract(ServiceKind::Joiner, &answers(&[("/stats", stats)]));
        assert_eq!(p["join_ratio.exposure"], 0.75);
        assert_eq!(p["duplicate_share.exposure"], 0.05);
        assert_eq!(p["late_share.click"], 0.1);
        assert!(
            !p.contains_key("join_ratio.detail_click"),
            "0/0 is no ratio"
        );
        assert!(!p.contains_key("duplicate_share.click"));
        assert_eq!(p["audit_share"], 0.1);
    }

    #[test]
    fn failed_or_non_2xx_endpoints_give_no_points() {
        let mut e = answers(&[]);
        e.insert(
            "/stats",
            Fetched::Failed {
                error: "refused".into(),
            },
        );
        e.insert(
            "/v1/quality",
            Fetched::Answer {
                status: 404,
                body: json!("not found"),
            },
        );
        assert!(extract(ServiceKind::Joiner, &e).is_empty());
    }

    #[test]
    fn progress_gives_auc_per_task_and_gates() {
        let pr = json!({"samples": 10, "tasks": [{"task": "click", "samples": 10, "global_auc": 0.7, "current_auc": 0.65}],
                        "gates": {"global_auc_threshold": 0.68, "current_auc_threshold": 0.6}});
        let p = extract(ServiceKind::Ps, &answers(&[("/v1/progress", pr)]));
        assert_eq!(p["auc.click.global"], 0.7);
        assert_eq!(p["auc.click.current"], 0.65);
        assert_eq!(p["gate.current"], 0.6);
        let worker = json!({"worker": "0/2", "samples": 5, "samples_per_sec": 2.5, "tasks": []});
        let w = extract(ServiceKind::Worker, &answers(&[("/v1/progress", worker)]));
        assert_eq!((w["samples"], w["reported_samples_per_sec"]), (5.0, 2.5));
        assert!(
            !w.contains_key("samples_per_sec"),
            "the chart's rate is derived, not the average"
        );
        let no_gates = json!({"samples": 1, "tasks": [], "gates": null});
        assert!(
            !extract(ServiceKind::Ps, &answers(&[("/v1/progress", no_gates)]))
                .contains_key("gate.global")
        );
    }

    #[test]
    fn rates_are_per_second_over_the_span_and_skip_a_counter_reset() {
        let mut r = Rates::default();
        let emitted = |v: f64| Point::from([("samples.emitted".to_string(), v)]);
        let mut a = emitted(100.0);
        r.derive(1_000, &mut a);
        assert!(!a.contains_key("sample_rate"));
        let mut b = emitted(300.0);
        r.derive(3_000, &mut b);
        assert_eq!(b["sample_rate"], 100.0);
        // A step counter (refreshed every 2 s, polled every 1 s) still gives a steady rate.
        let mut c = emitted(300.0);
        r.derive(4_000, &mut c);
        assert_eq!(c["sample_rate"], 200.0 / 3.0);
        // Past the span the oldest poll is dropped.
        let mut d = emitted(1_300.0);
        r.derive(13_000, &mut d);
        assert_eq!(d["sample_rate"], 1_000.0 / 10.0);
        let mut e = emitted(5.0);
        r.derive(15_000, &mut e);
        assert!(
            !e.contains_key("sample_rate"),
            "restart is not a negative rate"
        );
        let mut f = emitted(25.0);
        r.derive(17_000, &mut f);
        assert_eq!(f["sample_rate"], 10.0);
    }
}
