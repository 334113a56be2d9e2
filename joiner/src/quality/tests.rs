use super::*;

#[test]
fn label_delays_fall_in_exactly_one_bucket() {
    let mut q = Quality::default();
    for ms in [0, 1_000, 1_001, 60_000, 60_001, 600_000, 600_001, 629_000] {
        q.label_joined(false, ms);
    }
    q.label_past_window(false);
    q.label_joined(true, 5_000);
    let r = q.report(Pending::default(), &BTreeMap::new());
    let c = r.label_delay.click;
    assert_eq!(
        (c.le_1s, c.le_60s, c.le_600s, c.in_window, c.past_window),
        (2, 2, 2, 2, 1)
    );
    assert_eq!(q.click_delay.joined_count(), 8);
    assert_eq!(r.label_delay.detail_click.le_60s, 1);
}

#[test]
fn positive_rate_sample_delay_and_coverage() {
    let mut q = Quality::default();
    let f = br#"{"user_id":"u1","hour":3,"tags":["a","b"],"nested":{"x":1},"click_label":1}"#;
    q.sample(1_000, 631_000, true, false, Some(f));
    q.sample(2_000, 632_000, false, false, Some(br#"{"user_id":"u1"}"#));
    q.sample(3_000, 633_000, true, true, Some(br#"{"user_id":"u\"2"}"#));
    q.sample(4_000, 634_000, false, false, Some(b"not json"));
    let r = q.report(Pending::default(), &BTreeMap::new());
    assert_eq!(r.positive_rate.click, 0.5);
    assert_eq!(r.positive_rate.detail_click, 0.25);
    assert_eq!(r.sample_delay_seconds.count, 4);
    assert!(
        (r.sample_delay_seconds.p50 - 630.0).abs() < 630.0 * 0.02,
        "{:?}",
        r.sample_delay_seconds
    );
    let cov: BTreeMap<_, _> = r
        .feature_coverage
        .iter()
        .map(|c| (c.field.as_str(), c))
        .collect();
    assert!(!cov.contains_key("click_label"));
    assert_eq!(cov["user_id"].share, 1.0);
    assert!((cov["hour"].share - 1.0 / 3.0).abs() < 1e-12);
    assert_eq!(
        cov["user_id"].top[0],
        ValueCount {
            value: "u1".into(),
            count: 2
        }
    );
    assert_eq!(cov["user_id"].top[1].value, "u\"2");
    let tags: Vec<&str> = cov["tags"].top.iter().map(|v| v.value.as_str()).collect();
    assert_eq!(tags, ["a", "b"]);
    assert_eq!(cov["hour"].top[0].value, "3");
    let buckets = q.sample_delay_buckets();
    assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 4);
    assert_eq!(buckets.last().unwrap().0, f64::INFINITY);
}

#[test]
fn memory_stays_bounded() {
    let mut q = Quality::default();
    for i in 0..10_000 {
        let f = format!(r#"{{"f{}":"{}","v":"{}"}}"#, i, "x".repeat(i % 200), i);
        q.sample(0, 0, false, false, Some(f.as_bytes()));
    }
    assert_eq!(q.fields.len(), MAX_FIELDS);
    assert!(q
        .fields
        .values()
        .all(|f| f.top.candidates.len() <= TOP_CAPACITY));
    assert!(q
        .fields
        .values()
        .flat_map(|f| &f.top.candidates)
        .all(|(v, _)| v.len() <= MAX_VALUE_BYTES));
    assert_eq!(q.fields["v"].present, 10_000);
}

#[test]
fn space_saving_keeps_the_heavy_hitters() {
    let mut t = TopValues::default();
    for i in 0..5_000u32 {
        let cold = i.to_string();
        t.observe(if i % 2 == 0 {
            "hot"
        } else if i % 5 == 0 {
            "warm"
        } else {
            &cold
        });
    }
    let top = t.top();
    assert_eq!(top[0].value, "hot");
    assert!(top[0].count >= 2_500);
    assert_eq!(top[1].value, "warm");
}

#[test]
fn the_operator_feeds_it_consistently_with_the_stats() {
    let mut j = crate::Joiner::new(&crate::JoinerConfig::default());
    let lines = [
        r#"{"stream":"feature","pv_id":"p","item_id":"i","ts":0,"features":{"user_id":"u1"}}"#,
        r#"{"stream":"exposure","pv_id":"p","item_id":"i","ts":1000,"user_id":"u1"}"#,
        r#"{"stream":"click","pv_id":"p","item_id":"i","ts":1500}"#,
        r#"{"stream":"click","pv_id":"p","item_id":"i","ts":31000}"#,
        r#"{"stream":"detail_click","pv_id":"p","item_id":"i","ts":701000}"#,
    ];
    for l in &lines[..4] {
        j.push(l.as_bytes());
    }
    assert_eq!(
        j.pending(),
        Pending {
            exposures: 1,
            clicks: 0,
            detail_clicks: 0,
            features: 1
        }
    );
    j.push(lines[4].as_bytes());
    // The watermark passed the exposure's window: the sample left, the detail click waits.
    assert_eq!(
        j.pending(),
        Pending {
            exposures: 0,
            clicks: 0,
            detail_clicks: 1,
            features: 0
        }
    );
    j.finish();
    j.drain_ready(|_| Ok::<_, ()>(())).unwrap();
    let (s, q) = (j.stats(), j.quality());
    assert_eq!(q.click_delay.joined_count(), s.click.joined);
    assert_eq!(q.click_delay.report().le_1s, 1);
    assert_eq!(q.click_delay.report().le_60s, 1);
    assert_eq!(q.detail_click_delay.past_window, 1);
    assert_eq!(s.detail_click.unjoined, 1);
    assert_eq!((q.samples, q.click_positive), (1, 1));
    assert_eq!(j.pending(), Pending::default());
}

#[test]
fn a_sample_outside_the_inspected_share_counts_everywhere_but_in_coverage() {
    let mut q = Quality::default();
    q.sample(1_000, 631_000, true, false, Some(br#"{"user_id":"u1"}"#));
    q.sample(2_000, 632_000, false, false, None);
    let r = q.report(Pending::default(), &BTreeMap::new());
    assert_eq!((q.samples, q.inspected), (2, 1));
    assert_eq!(r.positive_rate.click, 0.5);
    assert_eq!(r.sample_delay_seconds.count, 2);
    let user = r.feature_coverage.iter().find(|c| c.field == "user_id").unwrap();
    assert_eq!((user.share, user.top[0].count), (1.0, 1), "shares are over the inspected samples");
}
