//! The rules of JOIN.md, one test each, by pushing events through the operator and
//! asserting what is ready now (no clock, no I/O).

use super::*;
use serde_json::{json, Value};

const S: i64 = 1000;

fn cfg() -> JoinerConfig {
    JoinerConfig { audit_rate: 0.0, ..JoinerConfig::default() }
}

fn exposure(pv: &str, item: &str, user: &str, ts: i64) -> String {
    json!({"stream": "exposure", "pv_id": pv, "item_id": item, "user_id": user, "ts": ts}).to_string()
}
fn click(pv: &str, item: &str, ts: i64) -> String {
    json!({"stream": "click", "pv_id": pv, "item_id": item, "ts": ts}).to_string()
}
fn detail(pv: &str, item: &str, ts: i64) -> String {
    json!({"stream": "detail_click", "pv_id": pv, "item_id": item, "ts": ts}).to_string()
}
fn feature(pv: &str, item: &str, ts: i64, tag: i64) -> String {
    json!({"stream": "feature", "pv_id": pv, "item_id": item, "ts": ts, "features": {"tag": tag}}).to_string()
}

#[derive(Default, Debug)]
struct Drained {
    samples: Vec<Value>,
    audited: Vec<String>,
    dead: Vec<Value>,
}

fn drain(j: &mut Joiner) -> Drained {
    let mut d = Drained::default();
    j.drain_ready(|o| -> Result<(), ()> {
        match o {
            Output::Sample { key, json, audit } => {
                let v: Value = serde_json::from_slice(json).unwrap();
                assert_eq!(v["sample_id"].as_str().unwrap().as_bytes(), key);
                if audit {
                    d.audited.push(v["sample_id"].as_str().unwrap().to_string());
                }
                d.samples.push(v);
            }
            Output::DeadLetter(l) => d.dead.push(serde_json::from_slice(l).unwrap()),
        }
        Ok(())
    })
    .unwrap();
    d
}

fn run(config: &JoinerConfig, lines: &[String]) -> (Drained, JoinStats) {
    let mut j = Joiner::new(config);
    for l in lines {
        j.push(l.as_bytes());
    }
    j.finish();
    let d = drain(&mut j);
    let s = *j.stats();
    assert!(s.balanced(), "{s:?}");
    (d, s)
}

fn labels(s: &Value) -> (i64, i64) {
    (s["labels"]["click"].as_i64().unwrap(), s["labels"]["detail_click"].as_i64().unwrap())
}

#[test]
fn sample_has_exactly_the_spec_shape() {
    let lines = [
        feature("p", "i", 90 * S, 7),
        exposure("p", "i", "u", 100 * S),
        click("p", "i", 101 * S),
        detail("p", "i", 102 * S),
    ];
    let (d, s) = run(&cfg(), &lines.map(String::from));
    assert_eq!(d.samples.len(), 1);
    assert_eq!(
        d.samples[0],
        json!({"sample_id": "p:i", "ts": 100 * S, "user_id": "u", "item_id": "i",
               "labels": {"click": 1, "detail_click": 1},
               "features": {"tag": 7, "click_label": 1, "detail_click_label": 1}})
    );
    assert_eq!((s.exposure.joined, s.click.joined, s.detail_click.joined, s.feature.joined), (1, 1, 1, 1));
}

#[test]
fn click_window_edges_are_inclusive() {
    let t = 1_000 * S;
    let cw = 630 * S;
    // Lateness wide enough that arrival order alone decides nothing.
    let c = JoinerConfig { allowed_lateness_ms: 10_000_000, ..cfg() };
    for (ts, joined) in [(t - 1, false), (t, true), (t + cw, true), (t + cw + 1, false)] {
        for click_first in [false, true] {
            let mut lines = vec![feature("p", "i", t, 0), exposure("p", "i", "u", t)];
            if click_first {
                lines.insert(0, click("p", "i", ts));
            } else {
                lines.push(click("p", "i", ts));
            }
            let (d, s) = run(&c, &lines);
            assert_eq!(labels(&d.samples[0]).0, joined as i64, "ts {ts} first {click_first}");
            assert_eq!((s.click.joined, s.click.unjoined), (joined as u64, !joined as u64));
        }
    }
}

#[test]
fn detail_click_window_has_its_own_wait() {
    let t = 1_000 * S;
    let c = JoinerConfig { detail_click_wait_ms: 10_000, ..cfg() };
    for (ts, joined) in [(t, true), (t + 10 * S, true), (t + 10 * S + 1, false), (t - 1, false)] {
        let lines = [feature("p", "i", t, 0), exposure("p", "i", "u", t), detail("p", "i", ts)];
        let (d, s) = run(&c, &lines.map(String::from));
        assert_eq!(labels(&d.samples[0]), (0, joined as i64), "ts {ts}");
        assert_eq!(s.detail_click.joined, joined as u64);
    }
}

#[test]
fn several_clicks_all_join_and_label_is_one() {
    let t = 1_000 * S;
    let lines = [
        click("p", "i", t + 5),
        feature("p", "i", t, 0),
        exposure("p", "i", "u", t),
        click("p", "i", t + 1),
        click("p", "i", t + 2),
    ];
    let (d, s) = run(&cfg(), &lines.map(String::from));
    assert_eq!(labels(&d.samples[0]), (1, 0));
    assert_eq!((s.click.joined, s.click.unjoined), (3, 0));
}

#[test]
fn feature_choice_greatest_at_or_before_else_smallest_after() {
    let t = 1_000 * S;
    let tag = |d: &Drained| d.samples[0]["features"]["tag"].as_i64().unwrap();
    // Several at or before tE: the greatest ts wins, whatever the arrival order.
    let mut lines = vec![
        feature("p", "i", t - 100 * S, 1),
        feature("p", "i", t, 2),
        feature("p", "i", t - 5, 3),
        feature("p", "i", t + 10, 4),
        exposure("p", "i", "u", t),
    ];
    let (d, s) = run(&cfg(), &lines);
    assert_eq!(tag(&d), 2);
    assert_eq!((s.feature.joined, s.feature.unjoined), (1, 3));
    lines.reverse();
    assert_eq!(tag(&run(&cfg(), &lines).0), 2);
    // None at or before: the smallest after.
    let lines = [
        exposure("p", "i", "u", t),
        feature("p", "i", t + 30 * S, 5),
        feature("p", "i", t + 1, 6),
        feature("p", "i", t + 2, 7),
    ];
    assert_eq!(tag(&run(&cfg(), &lines.map(String::from)).0), 6);
    // Equal ts: the first to arrive.
    let lines = [feature("p", "i", t - 1, 8), feature("p", "i", t - 1, 9), exposure("p", "i", "u", t)];
    assert_eq!(tag(&run(&cfg(), &lines.map(String::from)).0), 8);
}

#[test]
fn feature_lookback_and_grace_edges() {
    let t = 2_000 * S;
    let (lb, gr) = (630 * S, 60 * S);
    let c = JoinerConfig { allowed_lateness_ms: 10_000_000, ..cfg() };
    for (ts, joined) in [(t - lb - 1, false), (t - lb, true), (t + gr, true), (t + gr + 1, false)] {
        for feature_first in [true, false] {
            let mut lines = vec![exposure("p", "i", "u", t)];
            if feature_first {
                lines.insert(0, feature("p", "i", ts, 1));
            } else {
                lines.push(feature("p", "i", ts, 1));
            }
            let (d, s) = run(&c, &lines);
            assert_eq!(d.samples.len(), joined as usize, "ts {ts} first {feature_first}");
            assert_eq!((s.feature.joined, s.feature.unjoined), (joined as u64, !joined as u64));
            assert_eq!((s.exposure.joined, s.exposure.unjoined), (joined as u64, !joined as u64));
        }
    }
}

#[test]
fn feature_kept_until_watermark_passes_ts_plus_lookback() {
    let lb = 630 * S;
    let l = 60 * S;
    let mut j = Joiner::new(&cfg());
    j.push(feature("p", "i", 0, 1).as_bytes());
    // Watermark reaches exactly 0 + lookback: the feature is still kept...
    j.push(click("x", "y", lb + l).as_bytes());
    // ...so an on-time exposure at tE = lookback still finds it.
    j.push(exposure("p", "i", "u", lb).as_bytes());
    j.finish();
    assert_eq!(drain(&mut j).samples.len(), 1);

    let mut j = Joiner::new(&cfg());
    j.push(feature("p", "i", 0, 1).as_bytes());
    j.push(click("x", "y", lb + l + 1).as_bytes());
    assert_eq!(j.stats().feature.unjoined, 1, "dropped once the watermark passed ts + lookback");
}

#[test]
fn sample_is_ready_only_after_the_watermark_passes_te_plus_wait() {
    let t = 10_000 * S;
    let w = 630 * S;
    let l = 60 * S;
    let mut j = Joiner::new(&cfg());
    j.push(feature("p", "i", t, 0).as_bytes());
    j.push(exposure("p", "i", "u", t).as_bytes());
    j.push(click("z", "z", t + w + l).as_bytes()); // watermark = tE + wait: pending
    assert!(drain(&mut j).samples.is_empty());
    j.push(click("p", "i", t + w).as_bytes()); // still on time, joins
    assert!(drain(&mut j).samples.is_empty());
    j.push(click("z", "z", t + w + l + 1).as_bytes()); // watermark passes: ready
    let d = drain(&mut j);
    assert_eq!(d.samples.len(), 1);
    assert_eq!(labels(&d.samples[0]), (1, 0));
    assert_eq!(j.buffered_keys(), 1, "only the orphan click key is left");
}

#[test]
fn end_of_input_flushes_everything_pending() {
    let mut j = Joiner::new(&cfg());
    let lines =
        [feature("p", "i", 5, 0), exposure("p", "i", "u", 10), click("q", "i", 10), feature("r", "i", 10, 1)];
    for l in &lines {
        j.push(l.as_bytes());
    }
    assert!(drain(&mut j).samples.is_empty());
    j.finish();
    assert_eq!(drain(&mut j).samples.len(), 1);
    let s = j.stats();
    assert!(s.balanced());
    assert_eq!((s.click.unjoined, s.feature.unjoined, s.feature.joined), (1, 1, 1));
    assert_eq!(j.buffered_keys(), 0);
}

#[test]
fn late_events_per_stream_are_counted_dead_lettered_and_do_not_move_the_watermark() {
    let t = 1_000 * S;
    let mut j = Joiner::new(&cfg());
    j.push(click("z", "z", t).as_bytes());
    assert_eq!(j.watermark(), t - 60 * S);
    let late = t - 60 * S - 1;
    j.push(exposure("p", "i", "u", late).as_bytes());
    j.push(click("p", "i", late).as_bytes());
    j.push(detail("p", "i", late).as_bytes());
    j.push(feature("p", "i", late, 0).as_bytes());
    // Exactly at the watermark is on time.
    j.push(exposure("q", "i", "u", t - 60 * S).as_bytes());
    assert_eq!(j.watermark(), t - 60 * S);
    let s = *j.stats();
    assert_eq!((s.exposure.late, s.click.late, s.detail_click.late, s.feature.late), (1, 1, 1, 1));
    let d = drain(&mut j);
    let streams: Vec<&str> = d.dead.iter().map(|v| v["stream"].as_str().unwrap()).collect();
    assert_eq!(streams, ["exposure", "click", "detail_click", "feature"]);
    assert!(d.dead.iter().all(|v| v["reason"] == "late"));
    assert_eq!(d.dead[1]["line"], click("p", "i", late));
    j.finish();
    let s = j.stats();
    assert!(s.balanced());
    assert_eq!((s.exposure.received, s.exposure.unjoined), (2, 1));
}

#[test]
fn duplicate_exposures_first_wins() {
    let t = 1_000 * S;
    let lines = [
        feature("p", "i", t, 0),
        exposure("p", "i", "first", t),
        exposure("p", "i", "second", t),
        exposure("p", "i", "third", t + 5 * S),
        click("p", "i", t + 1),
    ];
    let (d, s) = run(&cfg(), &lines.map(String::from));
    assert_eq!(d.samples.len(), 1);
    assert_eq!(d.samples[0]["user_id"], "first");
    assert_eq!((s.exposure.received, s.exposure.duplicate, s.exposure.joined), (3, 2, 1));
}

#[test]
fn orphans_and_exposures_without_features() {
    let t = 1_000 * S;
    let lines = [
        click("nobody", "i", t),
        detail("nobody", "i", t),
        feature("nobody", "i", t, 0),
        exposure("p", "i", "u", t),
        click("p", "i", t + 1),
    ];
    let (d, s) = run(&cfg(), &lines.map(String::from));
    assert!(d.samples.is_empty());
    assert_eq!((s.exposure.joined, s.exposure.unjoined), (0, 1));
    assert_eq!((s.click.joined, s.click.unjoined), (1, 1));
    assert_eq!((s.detail_click.unjoined, s.feature.unjoined), (1, 1));
    assert_eq!(s.samples.emitted, 0);
}

#[test]
fn every_malformed_kind_is_counted_and_dead_lettered() {
    let lines = [
        ("{oops", None),
        ("[1]", None),
        ("3", None),
        (r#"{"pv_id":"p","item_id":"i","ts":1}"#, None),
        (r#"{"stream":"view","pv_id":"p","item_id":"i","ts":1}"#, None),
        (r#"{"stream":"click","item_id":"i","ts":1}"#, Some("click")),
        (r#"{"stream":"click","pv_id":1,"item_id":"i","ts":1}"#, Some("click")),
        (r#"{"stream":"exposure","pv_id":"p","item_id":"i","ts":1}"#, Some("exposure")),
        (r#"{"stream":"detail_click","pv_id":"p","item_id":"i","ts":"1"}"#, Some("detail_click")),
        (r#"{"stream":"click","pv_id":"p","item_id":"i","ts":1.5}"#, Some("click")),
        (r#"{"stream":"feature","pv_id":"p","item_id":"i","ts":1,"features":[]}"#, Some("feature")),
        (r#"{"stream":"feature","pv_id":"p","item_id":"i","ts":1}"#, Some("feature")),
    ];
    let mut j = Joiner::new(&cfg());
    for (l, _) in &lines {
        j.push(l.as_bytes());
    }
    j.push(b"\xff\xfe not utf-8");
    j.finish();
    let d = drain(&mut j);
    assert_eq!(j.stats().malformed, lines.len() as u64 + 1);
    assert_eq!(j.stats().click.received, 0, "malformed lines are not received events");
    assert_eq!(d.dead.len(), lines.len() + 1);
    for ((line, stream), dl) in lines.iter().zip(&d.dead) {
        assert_eq!(dl["line"], *line);
        assert_eq!(dl["stream"].as_str(), *stream, "{line}");
        assert!(dl["reason"].as_str().is_some_and(|r| !r.is_empty() && r != "late"));
    }
    assert_eq!(j.watermark(), i64::MIN, "malformed lines never move the watermark");
}

#[test]
fn audit_is_a_deterministic_function_of_the_sample_id() {
    let c = JoinerConfig { audit_rate: 0.1, ..cfg() };
    let lines: Vec<String> = (0..5000)
        .flat_map(|n| {
            let pv = format!("pv{n}");
            [feature(&pv, "i", n, 0), exposure(&pv, "i", "u", n)]
        })
        .collect();
    let (a, sa) = run(&c, &lines);
    let (b, _) = run(&c, &lines);
    assert_eq!(a.audited, b.audited);
    assert_eq!(sa.samples.audited, a.audited.len() as u64);
    let j = Joiner::new(&c);
    for s in &a.samples {
        let id = s["sample_id"].as_str().unwrap();
        assert_eq!(j.audits(id), a.audited.iter().any(|x| x == id));
    }
    let share = a.audited.len() as f64 / a.samples.len() as f64;
    assert!((0.08..0.12).contains(&share), "{share}");
    let none = run(&JoinerConfig { audit_rate: 0.0, ..cfg() }, &lines).0;
    let all = run(&JoinerConfig { audit_rate: 1.0, ..cfg() }, &lines).0;
    assert_eq!((none.audited.len(), all.audited.len()), (0, 5000));
}

#[test]
fn ids_with_escapes_and_label_keys_already_in_features() {
    let f = json!({"stream": "feature", "pv_id": "p\"1", "item_id": "i\\é", "ts": 1,
                   "features": {"click_label": 9, "x": [1, "a"]}})
    .to_string();
    let e =
        r#"{"stream":"exposure","pv_id":"p\"1","item_id":"i\\\u00e9","user_id":"u\n","ts":2}"#.to_string();
    let c = json!({"stream": "click", "pv_id": "p\"1", "item_id": "i\\é", "ts": 3}).to_string();
    let (d, s) = run(&cfg(), &[f, e, c]);
    assert_eq!(s.samples.emitted, 1);
    let v = &d.samples[0];
    assert_eq!(v["sample_id"], "p\"1:i\\é");
    assert_eq!(v["user_id"], "u\n");
    assert_eq!(v["features"], json!({"click_label": 1, "detail_click_label": 0, "x": [1, "a"]}));
}

#[test]
fn state_is_dropped_as_the_watermark_passes() {
    let mut j = Joiner::new(&cfg());
    let mut peak = 0;
    for n in 0..200_000i64 {
        let t = n * 100; // 10 exposures per second of event time
        let pv = format!("p{n}");
        j.push(feature(&pv, "i", t - 50, 0).as_bytes());
        j.push(exposure(&pv, "i", "u", t).as_bytes());
        if n % 10 == 0 {
            j.push(click(&pv, "i", t + 10).as_bytes());
        }
        peak = peak.max(j.buffered_keys());
    }
    // Held state spans tE .. tE + 630 s + 60 s lateness: about 6,900 keys here.
    assert!(peak < 8_000, "{peak}");
    j.finish();
    let d = drain(&mut j);
    assert_eq!(d.samples.len(), 200_000);
    let ts: Vec<i64> = d.samples.iter().map(|s| s["ts"].as_i64().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "samples leave in exposure-time order");
}

#[test]
fn a_joiner_without_quality_joins_the_same_and_keeps_no_quality() {
    let lines = [
        feature("p", "i", 90 * S, 7),
        exposure("p", "i", "u", 100 * S),
        click("p", "i", 101 * S),
        detail("p", "i", 102 * S),
        click("q", "i", 200 * S),
        exposure("q", "i", "u", 199 * S),
    ]
    .map(String::from);
    let (with, with_stats) = run(&cfg(), &lines);
    let mut j = Joiner::new(&cfg());
    j.set_observe_quality(false);
    for l in &lines {
        j.push(l.as_bytes());
    }
    j.finish();
    let without = drain(&mut j);
    assert_eq!((without.samples, *j.stats()), (with.samples, with_stats));
    let q = j.quality();
    assert_eq!((q.samples, q.inspected, q.click_delay.joined_count()), (0, 0, 0));
    assert!(q.fields.is_empty());
}

#[test]
fn feature_objects_with_plain_escapes_are_copied_byte_for_byte() {
    let f = r#"{"stream":"feature","pv_id":"p","item_id":"i","ts":1000,"features":{"z":"a\"b\\c\n","a":[1,"\/"]}}"#;
    let e = exposure("p", "i", "u", 2000);
    let mut j = Joiner::new(&cfg());
    j.push(f.as_bytes());
    j.push(e.as_bytes());
    j.finish();
    let mut sample = Vec::new();
    j.drain_ready(|o| -> Result<(), ()> {
        if let Output::Sample { json, .. } = o {
            sample = json.to_vec();
        }
        Ok(())
    })
    .unwrap();
    let text = String::from_utf8(sample).unwrap();
    let want = r#""features":{"z":"a\"b\\c\n","a":[1,"\/"],"click_label":0,"detail_click_label":0}}"#;
    assert!(text.ends_with(want), "{text}");
}

#[test]
fn timestamps_are_written_as_display_writes_them() {
    for v in [0, 7, -7, 10, 1_767_225_600_000, -1_767_225_600_000, i64::MAX, i64::MIN] {
        let mut out = Vec::new();
        push_decimal(&mut out, v);
        assert_eq!(String::from_utf8(out).unwrap(), v.to_string());
    }
}

/// The timer wheel pops exactly what a sorted list would, in `(deadline, seq)` order,
/// whatever the mix of pushes into the bucket being consumed, later buckets, and
/// (defensively) earlier ones.
#[test]
fn timers_pop_in_deadline_order_like_a_sorted_list() {
    let mut timers = Timers::default();
    let mut reference: Vec<(i64, u64)> = Vec::new();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |m: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % m
    };
    let mut wm = 0i64;
    let mut due = Vec::new();
    for seq in 0..20_000u64 {
        let deadline = wm - 2_000 + next(700_000) as i64 * (next(4) == 0) as i64 + next(3_000) as i64;
        timers.push(Timer::new(deadline, seq, seq as u128, TimerKind::Click));
        reference.push((deadline, seq));
        if next(3) == 0 {
            wm += next(900) as i64;
            due.clear();
            timers.pop_due(Some(wm), &mut due);
            reference.sort_unstable();
            let n = reference.partition_point(|&(d, _)| d < wm);
            let want: Vec<(i64, u64)> = reference.drain(..n).collect();
            assert_eq!(due.iter().map(|t| (t.deadline, t.seq())).collect::<Vec<_>>(), want, "at {wm}");
        }
    }
    assert_eq!(timers.iter().count(), reference.len());
    due.clear();
    timers.pop_due(None, &mut due);
    reference.sort_unstable();
    assert_eq!(due.iter().map(|t| (t.deadline, t.seq())).collect::<Vec<_>>(), reference);
    assert_eq!(timers.iter().count(), 0);
}

/// A timer gives back the sequence number, key and kind it was made of, and orders by
/// `(deadline, seq)` whatever its kind.
#[test]
fn a_packed_timer_keeps_its_parts_and_its_order() {
    let key: Key = 0xfedc_ba98_7654_3210_0123_4567_89ab_cdef;
    for kind in TimerKind::ALL {
        let t = Timer::new(-5, (1 << 62) - 1, key, kind);
        assert_eq!((t.deadline, t.seq(), t.key(), t.kind()), (-5, (1 << 62) - 1, key, kind));
    }
    let early = Timer::new(10, 7, key, TimerKind::Feature);
    let later = Timer::new(10, 8, 0, TimerKind::Exposure);
    assert!(early.order() < later.order(), "same deadline: the earlier event first, whatever the kind");
    assert!(later.order() < Timer::new(11, 0, key, TimerKind::Exposure).order());
}
