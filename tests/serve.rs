//! Publishing and serving with real `odl serve` processes (PUBLISH.md, issue 6): the
//! publisher runs in this process over an in-memory source the test controls (so the
//! expected parameters of every version are known), or as a real `odl ps`.

use odl::cli::bench::serve::{bench_instance, bench_model};
use odl::serve::client::HttpClient;
use odl::serve::harness::{wait_for, LocalPublisher, ServeProcess};
use odl_proto::hashing::{feature_id, FeatureId};
use odl_proto::params::{init_row, ModelSchema, ParamError, ParamRead};
use odl_proto::version::{Version, VersionStatus};
use odl_ps::publish::publisher::FullCause;
use odl_ps::publish::source::MemorySource;
use odl_ps::publish::PublishConfig;
use odl_trainer::Model;
use rand::SeedableRng;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MODEL: &str = "rank_mmoe_odl";
const T: Duration = Duration::from_secs(60);

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_odl"))
}

/// The parameters a version should hold, as the test set them: the reference the
/// served predictions are compared with (through the trainer's own forward pass).
#[derive(Clone)]
struct Truth {
    schema: ModelSchema,
    dense: HashMap<String, Vec<f32>>,
    rows: HashMap<(String, u64), Vec<f32>>,
}

impl Truth {
    fn new(schema: &ModelSchema) -> Truth {
        let dense = schema
            .dense
            .iter()
            .map(|d| (d.name.clone(), d.init.clone()))
            .collect();
        Truth {
            schema: schema.clone(),
            dense,
            rows: HashMap::new(),
        }
    }

    /// Set rows of every table for `keys` (value depends on `salt`), in both places.
    fn set_rows(&mut self, src: &MemorySource, keys: &[u64], salt: f32) {
        for t in &self.schema.tables {
            let mut values = Vec::new();
            for (i, k) in keys.iter().enumerate() {
                let row: Vec<f32> = (0..t.dim)
                    .map(|j| ((i * 7 + j) % 13) as f32 * 0.01 * salt - 0.05)
                    .collect();
                self.rows.insert((t.name.clone(), *k), row.clone());
                values.extend(row);
            }
            src.set_rows(&t.name, keys, &values);
        }
    }

    fn scale_dense(&mut self, src: &MemorySource, factor: f32) {
        for (name, v) in self.dense.iter_mut() {
            v.iter_mut().for_each(|x| *x *= factor);
            src.set_dense(name, v.clone());
        }
    }
}

impl ParamRead for Truth {
    fn pull_sparse(
        &self,
        table: &str,
        keys: &[FeatureId],
        out: &mut [f32],
    ) -> Result<(), ParamError> {
        let spec = self
            .schema
            .tables
            .iter()
            .find(|t| t.name == table)
            .ok_or_else(|| ParamError::Invalid(table.into()))?;
        for (k, o) in keys.iter().zip(out.chunks_exact_mut(spec.dim)) {
            match self.rows.get(&(table.to_string(), k.0)) {
                Some(r) => o.copy_from_slice(r),
                None => init_row(*k, spec.init_std, o),
            }
        }
        Ok(())
    }
    fn pull_dense(&self, names: &[String]) -> Result<Vec<Vec<f32>>, ParamError> {
        names
            .iter()
            .map(|n| {
                self.dense
                    .get(n)
                    .cloned()
                    .ok_or_else(|| ParamError::Invalid(n.clone()))
            })
            .collect()
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    model: Model,
    src: Arc<MemorySource>,
    truth: Truth,
    local: LocalPublisher,
}

fn setup(mut cfg: PublishConfig) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (json, model) = bench_model().unwrap();
    let model_path = dir.path().join("model.json");
    std::fs::write(&model_path, json).unwrap();
    cfg.extensions.model_config = model_path.display().to_string();
    let src = Arc::new(MemorySource::new(model.schema().clone()));
    let mut truth = Truth::new(model.schema());
    truth.set_rows(&src, &user_keys(0..50), 1.0);
    let local =
        LocalPublisher::start(cfg, &dir.path().join("versions"), src.clone(), false).unwrap();
    local.publisher.cut_full(FullCause::WarmStart).unwrap();
    Setup {
        _dir: dir,
        model,
        src,
        truth,
        local,
    }
}

fn open_gates() -> PublishConfig {
    PublishConfig {
        global_auc_threshold: 0.0,
        current_auc_threshold: 0.0,
        ..Default::default()
    }
}

fn user_keys(r: std::ops::Range<usize>) -> Vec<u64> {
    r.map(|i| feature_id("user_id", &format!("u{i}")).0)
        .collect()
}

/// Instances whose users have published rows.
fn instances(n: usize) -> Vec<Value> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    (0..n)
        .map(|i| {
            let mut x = bench_instance(&mut rng);
            x["user_id"] = Value::String(format!("u{}", i % 50));
            x
        })
        .collect()
}

fn node(url: &str, id: &str, extra: &[&str]) -> ServeProcess {
    let mut args = vec!["--ps-grpc", url, "--node-id", id];
    args.extend_from_slice(extra);
    ServeProcess::spawn(&exe(), &args).unwrap()
}

fn get_json(addr: &str, path: &str) -> (u16, Value) {
    let mut c = HttpClient::connect(addr).unwrap();
    let (s, b) = c.get(path).unwrap();
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

fn served_version(addr: &str) -> Option<u64> {
    let mut c = HttpClient::connect(addr).ok()?;
    let (s, b) = c.get(&format!("/v1/models/{MODEL}")).ok()?;
    let v: Value = serde_json::from_slice(&b).ok()?;
    (s == 200 && v["state"] == "AVAILABLE")
        .then(|| v["version"].as_u64())
        .flatten()
}

fn wait_served(addr: &str, at_least: u64) {
    wait_for(&format!("{addr} to serve version {at_least}"), T, || {
        served_version(addr).filter(|v| *v >= at_least)
    })
    .unwrap();
}

fn predict(c: &mut HttpClient, body: &[u8]) -> (u64, Vec<[f64; 2]>) {
    let (s, b) = c
        .post(&format!("/v1/models/{MODEL}:predict"), body)
        .unwrap();
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    let v: Value = serde_json::from_slice(&b).unwrap();
    let preds = v["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            [
                p["click"].as_f64().unwrap(),
                p["detail_click"].as_f64().unwrap(),
            ]
        })
        .collect();
    (v["version"].as_u64().unwrap(), preds)
}

fn expected(model: &Model, truth: &Truth, inst: &[Value]) -> Vec<[f64; 2]> {
    model
        .predict(truth, inst)
        .unwrap()
        .iter()
        .map(|p| [p[0] as f64, p[1] as f64])
        .collect()
}

fn assert_close(got: &[[f64; 2]], want: &[[f64; 2]], what: &str) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        for t in 0..2 {
            assert!(
                (g[t] - w[t]).abs() <= 1e-6,
                "{what}: served {} vs trainer {}",
                g[t],
                w[t]
            );
        }
    }
}

fn status(local: &LocalPublisher, v: u64) -> VersionStatus {
    local.publisher.registry().get(Version(v)).unwrap().status
}

fn wait_status(local: &LocalPublisher, v: u64, want: VersionStatus) {
    wait_for(&format!("version {v} to be {want:?}"), T, || {
        (status(local, v) == want).then_some(())
    })
    .unwrap();
}

/// Two nodes apply every version and confirm it (FINISHED); while versions are
/// applied under load, every response matches the trainer's prediction with the
/// parameters of the version it reports, to 1e-6.
#[test]
fn two_nodes_finish_every_version_and_answers_match_the_version_they_report() {
    let mut s = setup(open_gates());
    let url = s.local.grpc_url();
    let (a, b) = (node(&url, "node-a", &[]), node(&url, "node-b", &[]));
    wait_served(&a.rest_addr, 1);
    wait_served(&b.rest_addr, 1);
    wait_status(&s.local, 1, VersionStatus::Finished);

    let inst = instances(40);
    let body = serde_json::to_vec(&serde_json::json!({ "instances": inst })).unwrap();
    let mut truths: HashMap<u64, Truth> = HashMap::from([(1, s.truth.clone())]);
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (addr, body, stop) = (a.rest_addr.clone(), body.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut c = HttpClient::connect(&addr).unwrap();
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                seen.push(predict(&mut c, &body));
            }
            seen
        })
    };
    let mut last = 1;
    for k in 1..=6 {
        s.truth.scale_dense(&s.src, 1.0 + 0.05 * k as f32);
        let d = s.local.publisher.publish_dense().unwrap().unwrap();
        truths.insert(d.version().0, s.truth.clone());
        s.truth.set_rows(&s.src, &user_keys(0..50), 1.0 + k as f32);
        let sp = s.local.publisher.publish_sparse().unwrap().unwrap();
        truths.insert(sp.version().0, s.truth.clone());
        last = sp.version().0;
        wait_served(&a.rest_addr, last);
    }
    wait_served(&b.rest_addr, last);
    stop.store(true, Ordering::Relaxed);
    let seen = load.join().unwrap();
    let versions: std::collections::BTreeSet<u64> = seen.iter().map(|(v, _)| *v).collect();
    assert!(
        versions.len() >= 3,
        "responses covered versions {versions:?}"
    );
    for (v, preds) in &seen {
        assert_close(
            preds,
            &expected(&s.model, &truths[v], &inst),
            &format!("version {v}"),
        );
    }
    for v in 1..=last {
        wait_status(&s.local, v, VersionStatus::Finished);
        let rec = s.local.publisher.registry().get(Version(v)).unwrap();
        assert!(rec.effective_at.is_some());
    }
    // Node b, same answers for the newest version.
    let mut c = HttpClient::connect(&b.rest_addr).unwrap();
    let (v, preds) = predict(&mut c, &body);
    assert_eq!(v, last);
    assert_close(&preds, &expected(&s.model, &s.truth, &inst), "node b");
}

/// A gate above the achievable AUC: only SKIPPED versions with reasons, serving
/// keeps the warm-start version. A NaN in a dense weight is caught by check_numerics.
#[test]
fn gates_skip_with_reasons_and_serving_keeps_its_version() {
    let cfg = PublishConfig {
        global_auc_threshold: 0.99,
        current_auc_threshold: 0.99,
        ..Default::default()
    };
    let mut s = setup(cfg);
    s.src.set_progress(odl_proto::params::TrainProgress {
        samples: 1000,
        tasks: vec![odl_proto::params::TaskProgress {
            task: "click".into(),
            samples: 1000,
            global_auc: 0.72,
            current_auc: 0.7,
        }],
    });
    let n = node(&s.local.grpc_url(), "gated", &[]);
    wait_served(&n.rest_addr, 1);
    let inst = instances(5);
    let body = serde_json::to_vec(&serde_json::json!({ "instances": inst })).unwrap();
    s.truth.scale_dense(&s.src, 2.0);
    s.truth.set_rows(&s.src, &user_keys(0..50), 3.0);
    let d = s.local.publisher.publish_dense().unwrap().unwrap();
    let sp = s.local.publisher.publish_sparse().unwrap().unwrap();
    for v in [&d, &sp] {
        assert_eq!(v.record.status, VersionStatus::Skipped);
        let r = v.record.reason.as_deref().unwrap();
        assert!(
            r.contains("global AUC 0.7200 < global_auc_threshold 0.9900"),
            "{r}"
        );
    }
    let mut c = HttpClient::connect(&n.rest_addr).unwrap();
    let (v, _) = predict(&mut c, &body);
    assert_eq!(v, 1);
    let list = s.local.publisher.registry().list().unwrap();
    assert!(list
        .iter()
        .filter(|r| r.version.0 > 1)
        .all(|r| r.status == VersionStatus::Skipped));

    // check_numerics: a NaN pushed into a dense weight never reaches the node.
    let mut s = setup(open_gates());
    let n = node(&s.local.grpc_url(), "numerics", &[]);
    wait_served(&n.rest_addr, 1);
    let name = s.truth.schema.dense[0].name.clone();
    let mut bad = s.truth.dense[&name].clone();
    bad[0] = f32::NAN;
    s.src.set_dense(&name, bad);
    let d = s.local.publisher.publish_dense().unwrap().unwrap();
    assert_eq!(d.record.status, VersionStatus::Skipped);
    assert_eq!(
        d.record.reason.as_deref(),
        Some(format!("non-finite value in dense tensor {name}").as_str())
    );
    let mut c = HttpClient::connect(&n.rest_addr).unwrap();
    let (v, preds) = predict(&mut c, &body);
    assert_eq!(v, 1);
    assert!(preds.iter().flatten().all(|p| p.is_finite()));
    assert_close(
        &preds,
        &expected(&s.model, &s.truth, &inst),
        "after the NaN",
    );
    s.truth.scale_dense(&s.src, 1.0);
    assert_eq!(
        s.local
            .publisher
            .publish_dense()
            .unwrap()
            .unwrap()
            .record
            .status,
        VersionStatus::PushOnline
    );
}

/// A node killed and restarted catches up (newest full version + increments) and
/// confirms, finishing the versions published while it was down.
#[test]
fn a_restarted_node_catches_up_and_confirms() {
    let mut s = setup(open_gates());
    let url = s.local.grpc_url();
    let n = node(&url, "phoenix", &[]);
    wait_served(&n.rest_addr, 1);
    wait_status(&s.local, 1, VersionStatus::Finished);
    drop(n);
    wait_for("the node to unsubscribe", T, || {
        s.local
            .publisher
            .registry()
            .subscribers()
            .is_empty()
            .then_some(())
    })
    .unwrap();
    s.truth.scale_dense(&s.src, 1.5);
    let d = s
        .local
        .publisher
        .publish_dense()
        .unwrap()
        .unwrap()
        .version()
        .0;
    s.truth.set_rows(&s.src, &user_keys(0..50), 2.0);
    let sp = s
        .local
        .publisher
        .publish_sparse()
        .unwrap()
        .unwrap()
        .version()
        .0;
    assert_eq!(status(&s.local, d), VersionStatus::PushOnline);
    let n = node(&url, "phoenix", &[]);
    wait_served(&n.rest_addr, sp);
    wait_status(&s.local, d, VersionStatus::Finished);
    wait_status(&s.local, sp, VersionStatus::Finished);
    let inst = instances(10);
    let body = serde_json::to_vec(&serde_json::json!({ "instances": inst })).unwrap();
    let mut c = HttpClient::connect(&n.rest_addr).unwrap();
    let (v, preds) = predict(&mut c, &body);
    assert_eq!(v, sp);
    assert_close(&preds, &expected(&s.model, &s.truth, &inst), "caught up");
    let (code, st) = get_json(&n.rest_addr, &format!("/v1/models/{MODEL}"));
    assert_eq!(code, 200);
    assert_eq!(st["lag"]["versions"], 0);
}

/// A node that never confirms turns the versions it was sent to SWITCH_TIMEOUT.
#[test]
fn a_node_that_never_confirms_times_versions_out() {
    let cfg = PublishConfig {
        switch_timeout_time: 1,
        ..open_gates()
    };
    let s = setup(cfg);
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("silent.toml");
    std::fs::write(&conf, "confirm = false\n").unwrap();
    let run = s.local.publisher.clone();
    let cancel = tokio_util::sync::CancellationToken::new();
    let timer = {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            // Only the switch-timeout checks matter here; increments wait 10 min.
            rt.block_on(run.run(cancel))
        })
    };
    let n = node(
        &s.local.grpc_url(),
        "silent",
        &["--config", conf.to_str().unwrap()],
    );
    wait_served(&n.rest_addr, 1);
    wait_status(&s.local, 1, VersionStatus::SwitchTimeout);
    cancel.cancel();
    timer.join().unwrap().unwrap();
    let rec = s.local.publisher.registry().get(Version(1)).unwrap();
    assert!(rec.effective_at.is_none());
}

/// Bad requests get 4xx with a message, never a crash.
#[test]
fn bad_requests_get_4xx_with_a_message() {
    let s = setup(open_gates());
    let n = node(&s.local.grpc_url(), "strict", &[]);
    wait_served(&n.rest_addr, 1);
    let mut c = HttpClient::connect(&n.rest_addr).unwrap();
    let path = format!("/v1/models/{MODEL}:predict");
    for (body, code) in [
        (&b"not json"[..], 400),
        (b"{\"inputs\": []}", 400),
        (b"{\"instances\": [1, 2]}", 400),
        (b"{\"instances\": [{\"price\": 1e999}]}", 400),
        (b"[]", 400),
    ] {
        let (s, b) = c.post(&path, body).unwrap();
        assert_eq!(s, code, "{}", String::from_utf8_lossy(body));
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (s, _) = c
        .post("/v1/models/other:predict", b"{\"instances\": []}")
        .unwrap();
    assert_eq!(s, 404);
    let (s, _) = c.get("/v1/models/other").unwrap();
    assert_eq!(s, 404);
    let (s, _) = c
        .post(&format!("/v1/models/{MODEL}:classify"), b"{}")
        .unwrap();
    assert_eq!(s, 404);
    // Still serving after all that.
    let (s, b) = c
        .post(&path, b"{\"instances\": [{\"user_id\": \"u1\"}]}")
        .unwrap();
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
}

// ---- a real `odl ps` ----

struct Ps {
    child: std::process::Child,
    grpc: String,
    http: String,
}

impl Drop for Ps {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_ps(dir: &Path, config: &Path) -> Ps {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(exe())
        .args(["ps", "--config", config.to_str().unwrap()])
        .args(["--checkpoint-dir", dir.join("ckpt").to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            if l.starts_with("odl ps ready") {
                let _ = tx.send(l);
            }
        }
    });
    let line = rx.recv_timeout(T).expect("odl ps ready line");
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap()
            .to_string()
    };
    Ps {
        grpc: format!("http://{}", field("grpc=")),
        http: field("http="),
        child,
    }
}

/// SIGTERM, and the PS must exit by itself (checkpoint written, streams closed).
fn stop_ps(mut ps: Ps) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &ps.child.id().to_string()])
        .status();
    let exited = wait_for("odl ps to exit on SIGTERM", T, || {
        ps.child.try_wait().ok().flatten()
    });
    assert!(
        exited.is_ok_and(|s| s.success()),
        "odl ps did not exit cleanly on SIGTERM"
    );
}

/// A loopback address free right now: the restarted PS must come back where the
/// serving node looks for it.
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn versions(http: &str) -> Vec<Value> {
    let (code, v) = get_json(http, "/v1/versions");
    assert_eq!(code, 200);
    v.as_array().unwrap().clone()
}

/// `odl ps` publishes its warm start; after a restart its history and statuses are
/// intact and numbering continues; rollback needs the token; rebase cuts a new full
/// version; a serving node follows all of it.
#[test]
fn odl_ps_keeps_history_across_a_restart_and_rolls_back_and_rebases() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ps.toml");
    std::fs::write(
        &cfg,
        format!(
            "grpc_addr = \"{}\"\nhttp_addr = \"{}\"\n[odl_model_update]\nglobal_auc_threshold = 0.0\n\
             current_auc_threshold = 0.0\n[odl_model_update.extensions]\nrollback_token = \"t0k\"\n",
            free_addr(),
            free_addr()
        ),
    )
    .unwrap();
    let ps = start_ps(dir.path(), &cfg);
    wait_for("version 1", T, || {
        (versions(&ps.http).len() == 1).then_some(())
    })
    .unwrap();
    let n = node(&ps.grpc, "follower", &[]);
    wait_for("version 1 to finish", T, || {
        (versions(&ps.http)[0]["status"] == "FINISHED").then_some(())
    })
    .unwrap();
    let v1 = versions(&ps.http)[0].clone();
    for key in [
        "version",
        "kind",
        "base",
        "status",
        "reason",
        "created_at",
        "effective_at",
        "rows",
        "samples_through",
        "auc",
    ] {
        assert!(v1.get(key).is_some(), "missing {key} in {v1}");
    }
    assert_eq!(v1.as_object().unwrap().len(), 10);
    stop_ps(ps);

    // The node notices and retries; the restarted PS cuts full version 2.
    let ps = start_ps(dir.path(), &cfg);
    wait_for("version 2", T, || {
        (versions(&ps.http).len() == 2).then_some(())
    })
    .unwrap();
    let list = versions(&ps.http);
    assert_eq!(list[0]["version"], 2);
    assert_eq!(list[0]["kind"], "full");
    assert_eq!(list[1]["version"], 1);
    assert_eq!(list[1]["status"], "FINISHED");
    assert_eq!(list[1]["effective_at"], v1["effective_at"]);
    wait_for("the node to follow to version 2", T, || {
        let (_, st) = get_json(&n.rest_addr, &format!("/v1/models/{MODEL}"));
        (st["version"] == 2).then_some(())
    })
    .unwrap();

    // Rollback: 401 without or with a wrong token, then a new full version.
    let mut c = HttpClient::connect(&ps.http).unwrap();
    let (s, _) = c
        .request("POST", "/v1/versions/1:rollback", &[], b"")
        .unwrap();
    assert_eq!(s, 401);
    let (s, _) = c
        .request(
            "POST",
            "/v1/versions/1:rollback",
            &[("Authorization", "Bearer nope")],
            b"",
        )
        .unwrap();
    assert_eq!(s, 401);
    let (s, b) = c
        .request(
            "POST",
            "/v1/versions/1:rollback",
            &[("Authorization", "Bearer t0k")],
            b"",
        )
        .unwrap();
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    let r: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(
        (r["version"].as_u64(), r["kind"].as_str()),
        (Some(3), Some("full"))
    );
    assert_eq!(r["reason"], "rollback to version 1");
    let (s, _) = c.get("/v1/versions/x1").unwrap();
    assert_eq!(s, 400);
    let (s, _) = c.get("/v1/versions/77").unwrap();
    assert_eq!(s, 404);

    // Rebase from the PS's own checkpoint directory (a batch checkpoint).
    let out = std::process::Command::new(exe())
        .args([
            "ps",
            "rebase",
            "--checkpoint",
            dir.path().join("ckpt").to_str().unwrap(),
            "--grpc",
            &ps.grpc,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rb: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (rb["version"].as_u64(), rb["kind"].as_str()),
        (Some(4), Some("full"))
    );
    let bad = std::process::Command::new(exe())
        .args([
            "ps",
            "rebase",
            "--checkpoint",
            "/nonexistent/ckpt",
            "--grpc",
            &ps.grpc,
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    wait_for("version 4 to finish", T, || {
        (versions(&ps.http)[0]["status"] == "FINISHED" && versions(&ps.http)[0]["version"] == 4)
            .then_some(())
    })
    .unwrap();
    drop(n);
    stop_ps(ps);
}

fn odl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new(exe())
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "odl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// simulate → join → batch train (warm start) → `odl ps` publishing every second while
/// a cluster worker trains → two serving nodes; every published version reaches
/// FINISHED and the nodes serve the newest one. With a gate above the achievable AUC
/// the same run yields only SKIPPED increments, with reasons, and serving keeps the
/// warm-start version.
#[test]
fn end_to_end_simulate_join_train_publish_serve() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    odl(d, &["simulate", "--events", "60000", "--out", "ev.jsonl"]);
    odl(
        d,
        &[
            "join", "--input", "ev.jsonl", "--out", "s.jsonl", "--audit", "a.jsonl", "--stats",
            "st.json",
        ],
    );
    let samples = std::fs::read_to_string(d.join("s.jsonl")).unwrap();
    let lines: Vec<&str> = samples.lines().collect();
    assert!(lines.len() > 10_000, "{} samples", lines.len());
    std::fs::write(d.join("batch.jsonl"), lines[..6000].join("\n") + "\n").unwrap();
    std::fs::write(d.join("stream.jsonl"), lines[6000..].join("\n") + "\n").unwrap();
    odl(
        d,
        &[
            "train",
            "--samples",
            "batch.jsonl",
            "--checkpoint-out",
            "batch",
            "--report",
            "br.json",
        ],
    );

    for (run, threshold) in [("open", 0.5), ("gated", 0.95)] {
        let (grpc, http) = (free_addr(), free_addr());
        let cfg = d.join(format!("ps-{run}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "grpc_addr = \"{grpc}\"\nhttp_addr = \"{http}\"\nwarm_start = [\"{}\"]\n[odl_model_update]\n\
                 first_trigger_time = 1\ndense_send_interval_time = 1\nsparse_send_interval_time = 1\n\
                 global_auc_threshold = {threshold}\ncurrent_auc_threshold = {threshold}\n",
                d.join("batch").display()
            ),
        )
        .unwrap();
        let ps_dir = d.join(run);
        std::fs::create_dir_all(&ps_dir).unwrap();
        let ps = start_ps(&ps_dir, &cfg);
        let a = node(&ps.grpc, &format!("{run}-a"), &[]);
        let b = node(&ps.grpc, &format!("{run}-b"), &[]);
        wait_served(&a.rest_addr, 1);
        wait_served(&b.rest_addr, 1);
        let worker = d.join(format!("worker-{run}.toml"));
        std::fs::write(
            &worker,
            format!("ps = [\"{grpc}\"]\nsamples = \"stream.jsonl\"\nworker = \"0/1\"\nreport = \"wr-{run}.json\"\n"),
        )
        .unwrap();
        odl(d, &["train", "--config", worker.to_str().unwrap()]);
        // The increments after training: a dense and a sparse one.
        wait_for("increments after training", T, || {
            let v = versions(&ps.http);
            let kinds: Vec<&str> = v
                .iter()
                .filter(|x| x["samples_through"].as_u64() > Some(0))
                .filter_map(|x| x["kind"].as_str())
                .collect();
            (kinds.contains(&"dense") && kinds.contains(&"sparse")).then_some(())
        })
        .unwrap();
        let inst: Vec<Value> = lines[6000..6010]
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["features"].clone())
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({ "instances": inst })).unwrap();
        if run == "open" {
            wait_for("every published version to finish", T, || {
                let v = versions(&ps.http);
                v.iter()
                    .filter(|x| x["status"] != "SKIPPED")
                    .all(|x| x["status"] == "FINISHED")
                    .then_some(v)
            })
            .unwrap();
            let newest = versions(&ps.http)
                .into_iter()
                .find(|x| x["status"] == "FINISHED")
                .unwrap();
            let newest = newest["version"].as_u64().unwrap();
            assert!(newest > 1);
            for n in [&a, &b] {
                wait_served(&n.rest_addr, newest);
                let mut c = HttpClient::connect(&n.rest_addr).unwrap();
                let (v, preds) = predict(&mut c, &body);
                assert_eq!(v, newest);
                assert!(preds
                    .iter()
                    .flatten()
                    .all(|p| p.is_finite() && *p > 0.0 && *p < 1.0));
            }
            let fin = versions(&ps.http)
                .into_iter()
                .find(|x| x["kind"] == "sparse" && x["status"] == "FINISHED")
                .unwrap();
            assert!(fin["auc"]["global"].as_f64().unwrap() >= 0.5);
            assert!(fin["rows"].as_u64().unwrap() > 0);
            assert_eq!(fin["base"], 1);
        } else {
            let v = versions(&ps.http);
            assert!(v.len() >= 3);
            for x in v.iter().filter(|x| x["version"] != 1) {
                assert_eq!(x["status"], "SKIPPED", "{x}");
                assert!(x["reason"].as_str().unwrap().contains("AUC"), "{x}");
            }
            let mut c = HttpClient::connect(&a.rest_addr).unwrap();
            assert_eq!(predict(&mut c, &body).0, 1);
        }
        drop((a, b));
        stop_ps(ps);
    }
}

/// A node owning a subset of the partitions receives only those rows; rows of other
/// partitions read as their initial value, exactly like the trainer's unseen rows.
#[test]
fn a_node_owning_some_partitions_gets_only_their_rows() {
    let cfg = PublishConfig {
        update_partition_count: 4,
        part_strategy: odl_ps::publish::PartStrategy::Mod,
        ..open_gates()
    };
    let s = setup(cfg);
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("part.toml");
    std::fs::write(&conf, "partitions = [1, 3]\n").unwrap();
    let url = s.local.grpc_url();
    let part = node(&url, "odd", &["--config", conf.to_str().unwrap()]);
    let all = node(&url, "all", &[]);
    wait_served(&part.rest_addr, 1);
    wait_served(&all.rest_addr, 1);
    let rows = |addr: &str| {
        get_json(addr, &format!("/v1/models/{MODEL}")).1["rows"]
            .as_u64()
            .unwrap()
    };
    let tables = s.truth.schema.tables.len() as u64;
    let odd = user_keys(0..50).iter().filter(|k| *k % 2 == 1).count() as u64;
    assert_eq!(rows(&all.rest_addr), 50 * tables);
    assert_eq!(rows(&part.rest_addr), odd * tables);
    wait_status(&s.local, 1, VersionStatus::Finished);
}
