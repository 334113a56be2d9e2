//! Property test: the operator against a brute-force reference join written straight
//! from JOIN.md. Any arrival order whose disorder stays within the allowed lateness
//! must give the reference's samples and statistics.

use super::*;
use proptest::prelude::*;
use serde_json::{json, Value};

const LATENESS: i64 = 100;

fn config() -> JoinerConfig {
    JoinerConfig {
        allowed_lateness_ms: LATENESS as u64,
        click_wait_ms: 300,
        detail_click_wait_ms: 200,
        feature_lookback_ms: 300,
        feature_grace_ms: 50,
        audit_rate: 0.5,
        stats_interval_ms: 1000,
        ..JoinerConfig::default()
    }
}

#[derive(Clone, Debug)]
struct Ev {
    stream: StreamKind,
    pv: u8,
    item: u8,
    ts: i64,
    tag: usize,
}

impl Ev {
    fn line(&self) -> String {
        let (pv, item) = (format!("p{}", self.pv), format!("i{}", self.item));
        match self.stream {
            StreamKind::Exposure => json!({"stream": "exposure", "pv_id": pv, "item_id": item,
                                           "user_id": format!("u{}", self.pv), "ts": self.ts}),
            StreamKind::Feature => json!({"stream": "feature", "pv_id": pv, "item_id": item, "ts": self.ts,
                                          "features": {"tag": self.tag, "s": format!("v{}", self.tag)}}),
            s => json!({"stream": s.as_str(), "pv_id": pv, "item_id": item, "ts": self.ts}),
        }
        .to_string()
    }
}

/// JOIN.md, brute force over the whole (on-time) event set.
fn reference(events: &[Ev], c: &JoinerConfig) -> (Vec<Value>, JoinStats) {
    let mut s = JoinStats::default();
    let (cw, dw, lb, gr) = (
        c.click_wait_ms as i64,
        c.detail_click_wait_ms as i64,
        c.feature_lookback_ms as i64,
        c.feature_grace_ms as i64,
    );
    let mut samples = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for e in events.iter().filter(|e| e.stream == StreamKind::Exposure) {
        s.exposure.received += 1;
        if !seen.insert((e.pv, e.item)) {
            s.exposure.duplicate += 1;
        }
    }
    let same = |a: &Ev, b: &Ev| a.pv == b.pv && a.item == b.item;
    let of = |k: StreamKind| events.iter().filter(move |e| e.stream == k);
    let mut first_exposures: Vec<&Ev> = Vec::new();
    for e in of(StreamKind::Exposure) {
        if !first_exposures.iter().any(|x| same(x, e)) {
            first_exposures.push(e);
        }
    }
    let joins = |x: &Ev, k: StreamKind, before: i64, after: i64| {
        first_exposures.iter().any(|e| same(e, x) && e.ts - before <= x.ts && x.ts <= e.ts + after)
            && x.stream == k
    };
    for x in of(StreamKind::Click) {
        s.click.received += 1;
        if joins(x, StreamKind::Click, 0, cw) {
            s.click.joined += 1
        } else {
            s.click.unjoined += 1
        }
    }
    for x in of(StreamKind::DetailClick) {
        s.detail_click.received += 1;
        if joins(x, StreamKind::DetailClick, 0, dw) {
            s.detail_click.joined += 1
        } else {
            s.detail_click.unjoined += 1
        }
    }
    s.feature.received = of(StreamKind::Feature).count() as u64;
    let audit = Joiner::new(c);
    for e in &first_exposures {
        let cands: Vec<&Ev> = of(StreamKind::Feature)
            .filter(|f| same(f, e) && e.ts - lb <= f.ts && f.ts <= e.ts + gr)
            .collect();
        let before = cands.iter().filter(|f| f.ts <= e.ts).max_by_key(|f| f.ts);
        let chosen = before.or_else(|| cands.iter().filter(|f| f.ts > e.ts).min_by_key(|f| f.ts));
        let Some(f) = chosen else {
            s.exposure.unjoined += 1;
            continue;
        };
        s.exposure.joined += 1;
        s.feature.joined += 1;
        let click = of(StreamKind::Click).any(|x| same(x, e) && e.ts <= x.ts && x.ts <= e.ts + cw) as u8;
        let detail =
            of(StreamKind::DetailClick).any(|x| same(x, e) && e.ts <= x.ts && x.ts <= e.ts + dw) as u8;
        let id = format!("p{}:i{}", e.pv, e.item);
        s.samples.emitted += 1;
        s.samples.audited += audit.audits(&id) as u64;
        samples.push(json!({"sample_id": id, "ts": e.ts, "user_id": format!("u{}", e.pv),
            "item_id": format!("i{}", e.item), "labels": {"click": click, "detail_click": detail},
            "features": {"tag": f.tag, "s": format!("v{}", f.tag), "click_label": click, "detail_click_label": detail}}));
    }
    s.feature.unjoined = s.feature.received - s.feature.joined;
    samples.sort_by(|a, b| a["sample_id"].as_str().cmp(&b["sample_id"].as_str()));
    (samples, s)
}

fn operator(lines: &[String], c: &JoinerConfig) -> (Vec<Value>, JoinStats, Vec<String>) {
    let mut j = Joiner::new(c);
    let mut samples = Vec::new();
    let mut audited = Vec::new();
    let mut collect = |j: &mut Joiner| {
        j.drain_ready(|o| -> Result<(), ()> {
            if let Output::Sample { json, audit, .. } = o {
                let v: Value = serde_json::from_slice(json).unwrap();
                if audit {
                    audited.push(v["sample_id"].as_str().unwrap().to_string());
                }
                samples.push(v);
            }
            Ok(())
        })
        .unwrap()
    };
    for l in lines {
        j.push(l.as_bytes());
        collect(&mut j);
    }
    j.finish();
    collect(&mut j);
    let ts: Vec<i64> = samples.iter().map(|s| s["ts"].as_i64().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "samples in exposure-time order");
    samples.sort_by(|a, b| a["sample_id"].as_str().cmp(&b["sample_id"].as_str()));
    audited.sort();
    (samples, *j.stats(), audited)
}

fn events() -> impl Strategy<Value = Vec<Ev>> {
    let exposures = proptest::collection::vec((0u8..4, 0u8..3, 0i64..3000, 1usize..3), 0..10);
    let clicks = proptest::collection::vec((0u8..4, 0u8..3, 0i64..3600, prop::bool::ANY), 0..25);
    let features = proptest::collection::vec((0u8..4, 0u8..3, 0i64..3400, 1usize..3), 0..20);
    (exposures, clicks, features).prop_map(|(ex, cl, fe)| {
        let mut v = Vec::new();
        let mut keys = std::collections::HashSet::new();
        for (pv, item, ts, copies) in ex {
            // One exposure per key, possibly re-sent as exact duplicates.
            if keys.insert((pv, item)) {
                for _ in 0..copies {
                    v.push(Ev { stream: StreamKind::Exposure, pv, item, ts, tag: 0 });
                }
            }
        }
        for (pv, item, ts, detail) in cl {
            let stream = if detail { StreamKind::DetailClick } else { StreamKind::Click };
            v.push(Ev { stream, pv, item, ts, tag: 0 });
        }
        let mut fts = std::collections::HashSet::new();
        for (n, (pv, item, ts, copies)) in fe.into_iter().enumerate() {
            // Distinct ts per key (a tie is decided by arrival), re-sends are exact copies.
            if fts.insert((pv, item, ts)) {
                for _ in 0..copies {
                    v.push(Ev { stream: StreamKind::Feature, pv, item, ts, tag: n });
                }
            }
        }
        v
    })
}

/// Arrival order: by `ts + delay`, delays within the allowed lateness, so no event is
/// late (an event can only follow events at most `LATENESS` younger than itself).
fn arrival(events: &[Ev], delays: &[i64]) -> Vec<String> {
    let mut idx: Vec<usize> = (0..events.len()).collect();
    idx.sort_by_key(|&i| (events[i].ts + delays[i % delays.len()], i));
    idx.into_iter().map(|i| events[i].line()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn any_order_within_lateness_matches_the_reference(
        evs in events(),
        d1 in proptest::collection::vec(0i64..=LATENESS, 1..60),
        d2 in proptest::collection::vec(0i64..=LATENESS, 1..60),
    ) {
        let c = config();
        let (want, want_stats) = reference(&evs, &c);
        let (got1, stats1, audited1) = operator(&arrival(&evs, &d1), &c);
        let (got2, stats2, audited2) = operator(&arrival(&evs, &d2), &c);
        prop_assert_eq!(stats1.exposure.late + stats1.click.late + stats1.feature.late + stats1.detail_click.late, 0);
        prop_assert_eq!(&got1, &want);
        prop_assert_eq!(stats1, want_stats);
        prop_assert_eq!(&got2, &want);
        prop_assert_eq!(stats2, want_stats);
        prop_assert_eq!(audited1, audited2);
        prop_assert!(stats1.balanced());
    }
}
