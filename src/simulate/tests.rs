//! The simulator's promises: deterministic per seed, exactly N lines, realistic shares,
//! a learnable click model with a sensible oracle AUC.

use super::*;

fn run(seed: u64, events: u64) -> (VecSink, VecSink, Summary) {
    let c = SimConfig::load(None).unwrap();
    let (mut ev, mut tr) = (VecSink::default(), VecSink::default());
    let opts = SimOptions { seed, events, rate: None };
    let s = generate(&c, &opts, &mut ev, Some(&mut tr)).unwrap();
    (ev, tr, s)
}

#[test]
fn same_seed_same_stream_other_seed_other_stream() {
    let (a, ta, sa) = run(3, 20_000);
    let (b, tb, _) = run(3, 20_000);
    let (c, _, _) = run(4, 20_000);
    assert_eq!(a.lines, b.lines);
    assert_eq!(ta.lines, tb.lines);
    assert_ne!(a.lines, c.lines);
    assert_eq!(a.lines.len(), 20_000);
    assert_eq!(ta.lines.len() as u64, sa.exposures);
}

#[test]
fn shares_and_rates_are_realistic() {
    let (ev, truth, s) = run(1, 300_000);
    let n = s.events as f64;
    let st = &s.streams;
    assert_eq!(st.exposure + st.click + st.detail_click + st.feature + s.malformed, s.events);
    assert!((0.0005..0.002).contains(&(s.malformed as f64 / n)), "{}", s.malformed);
    assert!((0.003..0.007).contains(&(s.duplicates as f64 / n)), "{}", s.duplicates);
    assert!((0.05..0.10).contains(&s.click_rate), "{}", s.click_rate);
    let detail_share = s.detail_click_rate / s.click_rate;
    assert!((0.25..0.35).contains(&detail_share), "{detail_share}");
    let feature_per_exposure = st.feature as f64 / st.exposure as f64;
    assert!((1.0..1.15).contains(&feature_per_exposure), "{feature_per_exposure}");
    let auc = s.oracle_auc.click.unwrap();
    assert!((0.68..0.85).contains(&auc), "{auc}");
    assert!(s.oracle_auc.detail_click.unwrap() > 0.65);
    // Every well-formed line is an event of JOIN.md's shape.
    let mut parser = odl_joiner::parse::Parser::default();
    let bad = ev.lines.iter().filter(|l| parser.parse(l).is_err()).count();
    assert_eq!(bad as u64, s.malformed);
    let t: serde_json::Value = serde_json::from_slice(&truth.lines[0]).unwrap();
    assert!(t["sample_id"].as_str().unwrap().contains(':'));
    assert!(t["click"].as_f64().unwrap() > t["detail_click"].as_f64().unwrap());
}

#[test]
fn feature_events_carry_the_documented_fields() {
    let (ev, _, _) = run(2, 2_000);
    let f = ev
        .lines
        .iter()
        .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .find(|v| v["stream"] == "feature")
        .unwrap();
    let feats = f["features"].as_object().unwrap();
    for k in ["user_id", "item_id", "item_cat", "user_segment", "user_age_bucket", "device"] {
        assert!(feats[k].is_string(), "{k}");
    }
    for k in ["hour", "weekday", "position", "item_price"] {
        assert!(feats[k].is_number(), "{k}");
    }
    assert!(feats["user_tags"].as_array().unwrap().iter().all(|t| t.is_string()));
}

#[test]
fn the_hidden_model_drifts() {
    let c = SimConfig::load(None).unwrap();
    let w = World::new(1, &c);
    let (u, i) = (w.user(5), w.item(7));
    let x = Context { user: &u, item: &i, device: 0, position: 0, hour: 12 };
    let quarter = c.drift_period_hours * 3_600_000.0 / 4.0;
    let a = w.click_logit(&x, 0.0);
    let b = w.click_logit(&x, quarter);
    let full = w.click_logit(&x, 4.0 * quarter);
    assert!((a - b).abs() > 1e-3);
    assert!((a - full).abs() < 1e-9, "periodic");
}

#[test]
fn sink_errors_stop_the_simulator() {
    struct Full;
    impl RecordSink for Full {
        fn send(&mut self, _: Option<&[u8]>, _: &[u8]) -> odl_proto::stream::Result<()> {
            Err(StreamError::Closed { name: "full".into() })
        }
        fn flush(&mut self) -> odl_proto::stream::Result<()> {
            Ok(())
        }
    }
    let c = SimConfig::load(None).unwrap();
    let opts = SimOptions { seed: 1, events: 10, rate: None };
    assert!(generate(&c, &opts, &mut Full, None).is_err());
    let mut bad = c.clone();
    bad.items_per_page_min = 0;
    assert!(generate(&bad, &opts, &mut VecSink::default(), None).is_err());
}
