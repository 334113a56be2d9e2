//! Observability of every service through the real `odl` binary (issue 8): `/metrics`
//! parses as Prometheus text (a strict check below, not a lenient regex) and carries
//! the series the issue lists; `/readyz` says not-ready while a dependency is missing;
//! `/v1/quality` agrees with `/stats`; every metric the Grafana board queries is one a
//! service exports (names taken from real scrapes).

mod ps_support;

use ps_support::{free_port, http_get, wait_until, ODL};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------
// A strict reader of the text exposition format.

/// One scrape: sample name -> (labels, value) for every sample line (an empty list for
/// a declared family without series).
type Scrape = BTreeMap<String, Vec<(BTreeMap<String, String>, f64)>>;

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

/// `k="v",...` with `\\`, `\"` and `\n` escapes.
fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (k, r) = rest
            .split_once("=\"")
            .ok_or(format!("label without =\" in {s:?}"))?;
        if !valid_name(k) || k.starts_with("__") {
            return Err(format!("bad label name {k:?}"));
        }
        let mut v = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => v.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => v.push(c),
                    other => return Err(format!("bad escape {other:?} in {s:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => v.push(c),
                None => return Err(format!("unterminated label value in {s:?}")),
            }
        };
        if out.insert(k.to_string(), v).is_some() {
            return Err(format!("label {k} twice in {s:?}"));
        }
        rest = &r[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Ok(out)
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v.parse().map_err(|_| format!("bad value {v:?}")),
    }
}

/// Parses `text` or says what is wrong with it: every sample belongs to a family
/// declared by `# TYPE` before it, histogram buckets are cumulative and end with +Inf
/// equal to `_count`, the exposition ends with `# EOF`.
fn parse_exposition(text: &str) -> Result<Scrape, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut scrape = Scrape::new();
    let mut eof = false;
    for line in text.lines() {
        if eof {
            return Err(format!("line after # EOF: {line:?}"));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(c) = line.strip_prefix("# ") {
            let mut parts = c.splitn(3, ' ');
            let (kw, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            match kw {
                "TYPE" => {
                    let t = parts.next().unwrap_or("");
                    let known = [
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "info",
                        "stateset",
                        "unknown",
                    ];
                    if !valid_name(name) || !known.contains(&t) {
                        return Err(format!("bad TYPE line {line:?}"));
                    }
                    if types.insert(name.to_string(), t.to_string()).is_some() {
                        return Err(format!("family {name} declared twice"));
                    }
                    // A declared family is exported even while it has no series (e.g.
                    // consumer lag outside Kafka mode): its sample names are known.
                    let suffixes: &[&str] = match t {
                        "counter" => &["_total"],
                        "histogram" => &["_bucket", "_sum", "_count"],
                        _ => &[""],
                    };
                    for suffix in suffixes {
                        scrape.entry(format!("{name}{suffix}")).or_default();
                    }
                }
                "HELP" | "UNIT" if valid_name(name) => {}
                _ => return Err(format!("bad comment line {line:?}")),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or(format!("no value in {line:?}"))?;
        let value = parse_value(value)?;
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (
                n,
                parse_labels(
                    l.strip_suffix('}')
                        .ok_or(format!("unclosed labels in {line:?}"))?,
                )?,
            ),
            None => (series, BTreeMap::new()),
        };
        if !valid_name(name) {
            return Err(format!("bad metric name in {line:?}"));
        }
        let family = ["_total", "_bucket", "_sum", "_count", "_created", "_info"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
            .unwrap_or(name);
        let t = types
            .get(family)
            .ok_or(format!("sample {name} of no declared family"))?;
        let suffix_ok = match t.as_str() {
            "counter" => name.ends_with("_total") || name.ends_with("_created"),
            "histogram" => ["_bucket", "_sum", "_count", "_created"]
                .iter()
                .any(|s| name.ends_with(s)),
            "gauge" => name == family,
            _ => true,
        };
        if !suffix_ok {
            return Err(format!("sample {name} does not fit its {t} family"));
        }
        if t == "counter" && (value.is_nan() || value < 0.0) {
            return Err(format!("negative counter in {line:?}"));
        }
        scrape
            .entry(name.to_string())
            .or_default()
            .push((labels, value));
    }
    if !eof {
        return Err("no # EOF at the end".into());
    }
    check_histograms(&scrape, &types)?;
    Ok(scrape)
}

fn check_histograms(scrape: &Scrape, types: &BTreeMap<String, String>) -> Result<(), String> {
    for (family, _) in types.iter().filter(|(_, t)| *t == "histogram") {
        let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for (labels, v) in scrape
            .get(&format!("{family}_bucket"))
            .into_iter()
            .flatten()
        {
            let mut key = labels.clone();
            let le = key
                .remove("le")
                .ok_or(format!("{family}_bucket without le"))?;
            series.entry(key).or_default().push((parse_value(&le)?, *v));
        }
        for (key, buckets) in series {
            let ordered = buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
            let last = buckets.last().ok_or("empty histogram")?;
            let count = scrape
                .get(&format!("{family}_count"))
                .and_then(|c| c.iter().find(|(l, _)| *l == key))
                .map(|x| x.1);
            if !ordered || last.0 != f64::INFINITY || count != Some(last.1) {
                return Err(format!("histogram {family}{key:?} is not cumulative/closed: {buckets:?} count {count:?}"));
            }
        }
    }
    Ok(())
}

#[test]
fn the_exposition_check_rejects_what_prometheus_would() {
    let good = "# HELP a_total x\n# TYPE a counter\na_total{k=\"v\\\"q\"} 3\n# EOF\n";
    assert_eq!(parse_exposition(good).unwrap()["a_total"][0].0["k"], "v\"q");
    for bad in [
        "a_total 1\n# EOF\n",                  // undeclared family
        "# TYPE a counter\na 1\n# EOF\n",      // counter without _total
        "# TYPE a counter\na_total 1\n",       // no EOF
        "# TYPE a gauge\na{k=\"v} 1\n# EOF\n", // unterminated label
        "# TYPE a gauge\na one\n# EOF\n",      // bad value
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n# EOF\n", // not cumulative
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

/// GET `path` of `addr`, parsed strictly.
fn scrape(addr: &str) -> Scrape {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{addr}/metrics: {body}");
    parse_exposition(&body)
        .unwrap_or_else(|e| panic!("{addr}/metrics is not valid exposition text: {e}\n{body}"))
}

/// The value of the sample `name` whose labels include `want`.
fn value(s: &Scrape, name: &str, want: &[(&str, &str)]) -> f64 {
    s.get(name)
        .and_then(|v| {
            v.iter().find(|(l, _)| {
                want.iter()
                    .all(|(k, x)| l.get(*k).map(String::as_str) == Some(*x))
            })
        })
        .map(|x| x.1)
        .unwrap_or_else(|| {
            panic!(
                "no sample {name}{want:?} in {:?}",
                s.keys().collect::<Vec<_>>()
            )
        })
}

fn get_json(addr: &str, path: &str) -> (u16, Value) {
    let (status, body) = http_get(addr, path);
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{addr}{path}: {e}: {body}")),
    )
}

// ---------------------------------------------------------------------------------
// The Grafana board.

fn grafana_metric_names() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/grafana/odl.json");
    let board: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&board, &mut exprs);
    assert!(exprs.len() >= 10, "the board has {} queries", exprs.len());
    let mut names = BTreeSet::new();
    for e in exprs {
        let mut word = String::new();
        for c in e.chars().chain([' ']) {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                word.push(c);
            } else {
                if word.starts_with("odl_") {
                    names.insert(std::mem::take(&mut word));
                }
                word.clear();
            }
        }
    }
    names
}

fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(e)) = m.get("expr") {
                out.push(e.clone());
            }
            m.values().for_each(|x| collect_exprs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_exprs(x, out)),
        _ => {}
    }
}

/// Every name the board queries with one of `prefixes` is in one of `scrapes`.
fn assert_board_covered(prefixes: &[&str], scrapes: &[&Scrape]) {
    let names = grafana_metric_names();
    let known = ["odl_joiner_", "odl_ps_", "odl_serve_", "odl_trainer_"];
    for n in &names {
        assert!(
            known.iter().any(|p| n.starts_with(p)),
            "{n} belongs to no service"
        );
        if prefixes.iter().any(|p| n.starts_with(p)) {
            assert!(
                scrapes.iter().any(|s| s.contains_key(n)),
                "the board queries {n}, which no scrape has"
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// Processes.

fn spawn_logged(args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(ODL)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// The first `key=ADDR` or `key ADDR`-style address after `marker` in a line.
fn wait_addr(rx: &mpsc::Receiver<String>, marker: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no line with {marker:?}: {e}"));
        if let Some(rest) = line.split_once(marker).map(|x| x.1) {
            let addr: String = rest
                .trim_start_matches([' ', '='])
                .trim_start_matches("http://")
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            return addr;
        }
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sigterm(c: &Child) {
    Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status()
        .unwrap();
}

// ---------------------------------------------------------------------------------

/// `odl run` with small windows (samples leave within a second of wall time): the
/// joiner, PS and serving node of one process, scraped while it runs.
#[test]
fn odl_run_exports_metrics_quality_and_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("run.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\nevents_per_sec = 20000.0\njoiner_http_addr = \"127.0.0.1:0\"\n\
             [joiner]\nclick_wait_ms = 20000\ndetail_click_wait_ms = 20000\nfeature_grace_ms = 5000\n\
             feature_lookback_ms = 20000\nstats_interval_ms = 200\n\
             [ps]\ngrpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\n\
             [ps.odl_model_update]\nfirst_trigger_time = 1\ndense_send_interval_time = 1\nsparse_send_interval_time = 1\n\
             global_auc_threshold = 0.0\ncurrent_auc_threshold = 0.0\n\
             [serve]\nrest_addr = \"127.0.0.1:0\"\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let (child, rx) = spawn_logged(&["run", "--config", cfg.to_str().unwrap()]);
    let child = Killed(child);
    let ps = wait_addr(&rx, "versions http://");
    let joiner = wait_addr(&rx, "joiner stats:");
    let serve = wait_addr(&rx, "serving node:");
    std::thread::spawn(move || while rx.recv().is_ok() {});

    assert_eq!(http_get(&joiner, "/healthz").0, 200);
    wait_until(Duration::from_secs(60), "the joiner to be ready", || {
        http_get(&joiner, "/readyz").0 == 200
    });
    // A serving node is ready once a version with a model is applied; then predict.
    wait_until(
        Duration::from_secs(120),
        "the serving node to be ready",
        || http_get(&serve, "/readyz").0 == 200,
    );
    wait_until(
        Duration::from_secs(120),
        "samples, labels past their window and trained samples",
        || {
            let q = get_json(&joiner, "/v1/quality").1;
            let p = get_json(&ps, "/v1/progress").1;
            q["sample_delay_seconds"]["count"].as_u64() > Some(1000)
                && p["samples"].as_u64() > Some(0)
        },
    );
    let mut c = odl::serve::client::HttpClient::connect(&serve).unwrap();
    let (status, body) = c
        .post(
            "/v1/models/rank_mmoe_odl:predict",
            br#"{"instances": [{"item_cat": "c3", "device": "ios"}]}"#,
        )
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, _) = c
        .post("/v1/models/rank_mmoe_odl:predict", b"not json")
        .unwrap();
    assert_eq!(status, 400);

    // /v1/quality carries the counters of its own snapshot (`as_of`); /stats is
    // refreshed after every batch, so it is never behind them.
    let quality = get_json(&joiner, "/v1/quality").1;
    let live = get_json(&joiner, "/stats").1;
    let stats = quality["as_of"].clone();
    let expected_keys = [
        "click",
        "detail_click",
        "exposure",
        "feature",
        "malformed",
        "samples",
    ];
    for counters in [&stats, &live] {
        assert_eq!(
            counters.as_object().unwrap().keys().collect::<Vec<_>>(),
            expected_keys
        );
    }
    assert!(
        live["exposure"]["received"].as_u64() >= stats["exposure"]["received"].as_u64(),
        "/stats {live} is behind /v1/quality's as_of {stats}"
    );
    for label in ["click", "detail_click"] {
        let d = &quality["label_delay"][label];
        let in_window: u64 = ["le_1s", "le_60s", "le_600s", "in_window"]
            .iter()
            .map(|b| d[b].as_u64().unwrap())
            .sum();
        assert_eq!(
            in_window,
            stats[label]["joined"].as_u64().unwrap(),
            "{label}: {d} vs {}",
            stats[label]
        );
        assert!(
            d["past_window"].as_u64().unwrap()
                <= stats[label]["unjoined"].as_u64().unwrap()
                    + stats[label]["received"].as_u64().unwrap()
        );
    }
    assert_eq!(
        quality["label_delay"]["click"]["in_window"], 0,
        "the window is 20 s: nothing can be in (600 s, window]"
    );
    let sd = &quality["sample_delay_seconds"];
    assert!(sd["count"].as_u64() <= stats["samples"]["emitted"].as_u64());
    // Samples leave once the watermark passes tE + 20 s.
    assert!(
        sd["p50"].as_f64().unwrap() >= 19.0 && sd["p50"].as_f64().unwrap() < 40.0,
        "{sd}"
    );
    let rate = quality["positive_rate"]["click"].as_f64().unwrap();
    assert!(rate > 0.0 && rate < 0.5, "{rate}");
    let coverage = quality["feature_coverage"].as_array().unwrap();
    let user = coverage
        .iter()
        .find(|c| c["field"] == "user_id")
        .expect("user_id coverage");
    assert!(user["share"].as_f64().unwrap() > 0.9);
    assert!(
        !user["top"].as_array().unwrap().is_empty() && user["top"].as_array().unwrap().len() <= 5
    );
    assert_eq!(quality["consumer_lag"], serde_json::json!({}));
    let pending = &quality["pending"];
    assert!(pending["exposures"].as_u64() > Some(0), "{pending}");

    // Metrics of the three services.
    let j = scrape(&joiner);
    for stream in ["exposure", "click", "detail_click", "feature"] {
        assert!(
            value(
                &j,
                "odl_joiner_events_received_total",
                &[("stream", stream)]
            ) > 0.0
        );
        for what in ["late", "joined", "unjoined"] {
            value(
                &j,
                &format!("odl_joiner_events_{what}_total"),
                &[("stream", stream)],
            );
        }
    }
    value(
        &j,
        "odl_joiner_events_duplicate_total",
        &[("stream", "exposure")],
    );
    assert!(
        value(&j, "odl_joiner_malformed_total", &[]) > 0.0,
        "the simulator sends malformed lines"
    );
    assert!(value(&j, "odl_joiner_samples_emitted_total", &[]) > 0.0);
    value(&j, "odl_joiner_samples_audited_total", &[]);
    for label in ["click", "detail_click"] {
        assert!(
            value(
                &j,
                "odl_joiner_label_delay_seconds_count",
                &[("label", label)]
            ) > 0.0
        );
        value(
            &j,
            "odl_joiner_label_delay_seconds_bucket",
            &[("label", label), ("le", "60.0")],
        );
        value(
            &j,
            "odl_joiner_label_past_window_total",
            &[("label", label)],
        );
    }
    assert!(value(&j, "odl_joiner_sample_delay_seconds_count", &[]) > 0.0);
    value(&j, "odl_joiner_pending_events", &[("kind", "exposure")]);
    value(&j, "odl_joiner_positive_ratio", &[("task", "click")]);
    assert!(
        value(
            &j,
            "odl_joiner_feature_coverage_ratio",
            &[("field", "user_id")]
        ) > 0.9
    );
    assert_eq!(value(&j, "odl_joiner_ready", &[]), 1.0);

    let p = scrape(&ps);
    assert!(value(&p, "odl_ps_rows", &[("shard", "0")]) > 0.0);
    value(&p, "odl_ps_table_bytes", &[("shard", "0")]);
    assert!(value(&p, "odl_ps_heap_bytes", &[("shard", "0")]) > 0.0);
    assert!(value(&p, "odl_ps_samples_trained_total", &[("shard", "0")]) > 0.0);
    for task in ["click", "detail_click"] {
        let auc = value(&p, "odl_ps_global_auc", &[("task", task)]);
        assert!((0.0..=1.0).contains(&auc));
        value(&p, "odl_ps_current_auc", &[("task", task)]);
    }
    assert_eq!(
        value(&p, "odl_ps_gate_auc_threshold", &[("gate", "global")]),
        0.0
    );
    assert!(value(&p, "odl_ps_versions", &[("status", "FINISHED")]) >= 1.0);
    value(&p, "odl_ps_versions", &[("status", "SKIPPED")]);
    assert!(value(&p, "odl_ps_latest_version", &[]) >= 1.0);
    let progress = get_json(&ps, "/v1/progress").1;
    assert_eq!(progress["gates"]["global_auc_threshold"], 0.0);
    assert_eq!(progress["tasks"].as_array().unwrap().len(), 2);

    let s = scrape(&serve);
    assert!(value(&s, "odl_serve_version", &[]) >= 1.0);
    value(&s, "odl_serve_lag_versions", &[]);
    value(&s, "odl_serve_lag_seconds", &[]);
    assert!(value(&s, "odl_serve_predict_seconds_count", &[]) >= 2.0);
    assert_eq!(value(&s, "odl_serve_predictions_total", &[]), 1.0);
    assert_eq!(
        value(&s, "odl_serve_predict_errors_total", &[("code", "400")]),
        1.0
    );
    assert_eq!(value(&s, "odl_serve_ready", &[]), 1.0);
    let node = get_json(&serve, "/v1/node").1;
    assert_eq!(
        (node["predictions"].as_u64(), node["errors"].as_u64()),
        (Some(1), Some(1)),
        "{node}"
    );
    assert_eq!(node["model"], "rank_mmoe_odl");
    assert!(node["version"].as_u64() >= Some(1));
    assert!(node["lag"]["versions"].is_u64() && node["lag"]["seconds"].is_f64());

    // The in-process trainer of `odl run` pulls without gRPC: the PS latencies are
    // checked against a cluster shard in the test below.
    assert_board_covered(&["odl_joiner_", "odl_serve_"], &[&j, &s]);
    sigterm(&child.0);
}

/// Samples for the cluster test: simulate and join a small stream.
fn samples(dir: &Path) -> PathBuf {
    let ev = dir.join("events.jsonl");
    let out = dir.join("samples.jsonl");
    let run = |args: &[&str]| assert!(Command::new(ODL).args(args).status().unwrap().success());
    run(&[
        "simulate",
        "--seed",
        "3",
        "--events",
        "150000",
        "--out",
        ev.to_str().unwrap(),
    ]);
    let audit = dir.join("audit.jsonl");
    let stats = dir.join("stats.json");
    run(&[
        "join",
        "--input",
        ev.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--audit",
        audit.to_str().unwrap(),
        "--stats",
        stats.to_str().unwrap(),
    ]);
    out
}

/// A cluster worker and a serving node started before their PS: both say not-ready
/// with a reason, then ready once it is up; their metrics and the shard's.
#[test]
fn cluster_worker_and_serving_node_wait_for_the_ps() {
    let dir = tempfile::tempdir().unwrap();
    let samples = samples(dir.path());
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/models/lr.toml");
    let grpc = format!("127.0.0.1:{}", free_port());
    let worker_cfg = dir.path().join("worker.toml");
    std::fs::write(
        &worker_cfg,
        format!(
            "ps = [{grpc:?}]\nmodel_config = {:?}\nsamples = {:?}\nworker = \"0/1\"\nthreads = 1\nepochs = 1000\n\
             progress_interval_secs = 1\nretry_deadline_secs = 120\nhttp_addr = \"127.0.0.1:0\"\n",
            model.display().to_string(),
            samples.display().to_string()
        ),
    )
    .unwrap();
    let (w, wrx) = spawn_logged(&["train", "--config", worker_cfg.to_str().unwrap()]);
    let _w = Killed(w);
    let worker = wait_addr(&wrx, " http=");
    std::thread::spawn(move || while wrx.recv().is_ok() {});
    let serve_cfg = dir.path().join("serve.toml");
    std::fs::write(
        &serve_cfg,
        format!(
            "model_config = {:?}\nreconnect_ms = 100\n",
            model.display().to_string()
        ),
    )
    .unwrap();
    let serve = format!("127.0.0.1:{}", free_port());
    let (sv, _srx) = spawn_logged(&[
        "serve",
        "--config",
        serve_cfg.to_str().unwrap(),
        "--rest-addr",
        &serve,
        "--ps-grpc",
        &format!("http://{grpc}"),
    ]);
    let _sv = Killed(sv);
    wait_until(Duration::from_secs(60), "the serving node's HTTP", || {
        std::net::TcpStream::connect(&serve).is_ok()
    });

    for addr in [&worker, &serve] {
        assert_eq!(http_get(addr, "/healthz").0, 200);
        let (status, body) = get_json(addr, "/readyz");
        assert_eq!(status, 503, "{addr}: {body}");
        assert_eq!(body["ready"], false);
        assert!(!body["reason"].as_str().unwrap().is_empty());
    }
    let s = scrape(&serve);
    assert_eq!(value(&s, "odl_serve_ready", &[]), 0.0);
    assert_eq!(value(&s, "odl_serve_version", &[]), 0.0);

    let ps_cfg = dir.path().join("ps.toml");
    std::fs::write(
        &ps_cfg,
        "[odl_model_update]\nfirst_trigger_time = 1\ndense_send_interval_time = 1\nsparse_send_interval_time = 1\n\
         global_auc_threshold = 0.0\ncurrent_auc_threshold = 0.0\n",
    )
    .unwrap();
    let shard = ps_support::start(&[
        "--config".into(),
        ps_cfg.display().to_string(),
        "--grpc-addr".into(),
        grpc.clone(),
        "--http-addr".into(),
        "127.0.0.1:0".into(),
    ]);
    wait_until(
        Duration::from_secs(120),
        "the worker to reach the PS",
        || http_get(&worker, "/readyz").0 == 200,
    );
    wait_until(Duration::from_secs(120), "worker progress", || {
        get_json(&worker, "/v1/progress").1["samples"].as_u64() > Some(0)
    });
    wait_until(
        Duration::from_secs(120),
        "the serving node to be ready",
        || http_get(&serve, "/readyz").0 == 200,
    );

    let progress = get_json(&worker, "/v1/progress").1;
    assert_eq!(progress["worker"], "0/1");
    assert!(progress["samples_per_sec"].as_f64().unwrap() > 0.0);
    let tasks: Vec<&str> = progress["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task"].as_str().unwrap())
        .collect();
    assert_eq!(tasks, ["click", "detail_click"]);
    let w = scrape(&worker);
    assert!(value(&w, "odl_trainer_samples_total", &[("worker", "0/1")]) > 0.0);
    assert!(value(&w, "odl_trainer_samples_per_second", &[("worker", "0/1")]) > 0.0);
    value(
        &w,
        "odl_trainer_global_auc",
        &[("worker", "0/1"), ("task", "click")],
    );
    value(
        &w,
        "odl_trainer_current_auc",
        &[("worker", "0/1"), ("task", "detail_click")],
    );
    for kind in ["sparse", "dense"] {
        assert!(value(&w, "odl_trainer_pull_seconds_count", &[("kind", kind)]) > 0.0);
        assert!(value(&w, "odl_trainer_push_seconds_count", &[("kind", kind)]) > 0.0);
    }
    assert_eq!(value(&w, "odl_trainer_ready", &[]), 1.0);

    let p = scrape(&shard.http);
    for kind in ["sparse", "dense"] {
        assert!(value(&p, "odl_ps_pull_seconds_count", &[("kind", kind)]) > 0.0);
        assert!(value(&p, "odl_ps_push_seconds_count", &[("kind", kind)]) > 0.0);
    }
    assert!(value(&p, "odl_ps_workers", &[("shard", "0")]) >= 1.0);
    let ps_progress = get_json(&shard.http, "/v1/progress").1;
    assert!(ps_progress["samples"].as_u64() > Some(0));
    assert_eq!(ps_progress["gates"]["current_auc_threshold"], 0.0);

    let s = scrape(&serve);
    assert!(value(&s, "odl_serve_version", &[]) >= 1.0);
    assert_eq!(value(&s, "odl_serve_ready", &[]), 1.0);
    assert_board_covered(&["odl_trainer_", "odl_ps_"], &[&w, &p]);
}

/// `/v1/quality` of a deterministic replay against the samples it wrote: positive
/// rates recounted from the samples file, field coverage from the audit file (by
/// default the quality report reads the audited samples' features), label-delay
/// buckets against `/stats`.
#[test]
fn quality_matches_the_samples_of_a_deterministic_replay() {
    let dir = tempfile::tempdir().unwrap();
    let ev = dir.path().join("events.jsonl");
    assert!(Command::new(ODL)
        .args([
            "simulate",
            "--seed",
            "5",
            "--events",
            "60000",
            "--out",
            ev.to_str().unwrap()
        ])
        .status()
        .unwrap()
        .success());
    let out = dir.path().join("samples.jsonl");
    let cfg = odl_joiner::JoinerConfig::default();
    let mut source = odl_proto::stream::FileSource::open(ev.to_str().unwrap()).unwrap();
    let mut samples = odl_proto::stream::FileSink::create(out.to_str().unwrap()).unwrap();
    let audit_file = dir.path().join("a.jsonl");
    let mut audit = odl_proto::stream::FileSink::create(audit_file.to_str().unwrap()).unwrap();
    let obs = odl_joiner::JoinerObservations::default();
    let sinks = odl_joiner::service::Sinks {
        samples: &mut samples,
        audit: &mut audit,
        dead_letter: None,
    };
    let stats = odl_joiner::service::run_observed(&cfg, &mut source, sinks, Some(&obs), |_| Ok(()))
        .unwrap();
    let q = serde_json::to_value(obs.quality()).unwrap();
    assert_eq!(obs.stats(), stats);

    let text = std::fs::read_to_string(&out).unwrap();
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len() as u64, stats.samples.emitted);
    assert!(rows.len() > 1000);
    for task in ["click", "detail_click"] {
        let positives = rows.iter().filter(|r| r["labels"][task] == 1).count();
        let want = positives as f64 / rows.len() as f64;
        assert!(
            (q["positive_rate"][task].as_f64().unwrap() - want).abs() < 1e-12,
            "{task}"
        );
    }
    assert_eq!(cfg.quality_feature_rate, cfg.audit_rate);
    drop(audit);
    let audited: Vec<Value> = std::fs::read_to_string(&audit_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(audited.len() > 100 && audited.len() < rows.len() / 5);
    for c in q["feature_coverage"].as_array().unwrap() {
        let field = c["field"].as_str().unwrap();
        let carrying = audited
            .iter()
            .filter(|r| r["features"].get(field).is_some())
            .count();
        assert!(
            (c["share"].as_f64().unwrap() - carrying as f64 / audited.len() as f64).abs() < 1e-12,
            "{field}"
        );
    }
    let device = q["feature_coverage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["field"] == "device")
        .unwrap();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for r in &audited {
        if let Some(d) = r["features"]["device"].as_str() {
            *counts.entry(d.to_string()).or_default() += 1;
        }
    }
    // Few distinct devices: the sketch holds them all, so its counts are exact.
    let top = &device["top"][0];
    let best = counts.iter().max_by_key(|(_, n)| **n).unwrap();
    assert!(counts.len() <= 16);
    assert_eq!(
        (
            top["value"].as_str().unwrap(),
            top["count"].as_u64().unwrap()
        ),
        (best.0.as_str(), *best.1)
    );

    let d = &q["label_delay"]["click"];
    let joined: u64 = ["le_1s", "le_60s", "le_600s", "in_window"]
        .iter()
        .map(|b| d[b].as_u64().unwrap())
        .sum();
    assert_eq!(joined, stats.click.joined);
    assert_eq!(
        q["sample_delay_seconds"]["count"].as_u64(),
        Some(stats.samples.emitted)
    );
    assert_eq!(
        q["pending"],
        serde_json::json!({"exposures": 0, "clicks": 0, "detail_clicks": 0, "features": 0})
    );
}
