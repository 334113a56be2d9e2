//! Publishing through Kafka with real processes (issue 7, PUBLISH.md): two `odl ps`
//! shards (shard 0 cuts versions of both, `extensions.transport = "kafka"`), serving
//! nodes (`odl serve`, `transport = "kafka"`) reading the param-update topic, each
//! test on its own topics. Parameters are written by a `RemoteStore` client, as a
//! trainer worker would, so every row's shard is known.

#[path = "kafka_support/mod.rs"]
mod kafka_support;
#[path = "ps_support/mod.rs"]
mod ps_support;

use odl::cli::bench::serve::{bench_instance, bench_model};
use odl::serve::client::HttpClient;
use odl::serve::harness::{wait_for, LocalPublisher, ServeProcess};
use odl_proto::hashing::{feature_id, FeatureId};
use odl_proto::params::{ModelSchema, ParamStore, TaskProgress, TrainProgress};
use odl_proto::version::VersionStatus;
use odl_ps::publish::kafka::KafkaTransport;
use odl_ps::publish::publisher::FullCause;
use odl_ps::publish::source::MemorySource;
use odl_ps::publish::{PublishConfig, Role, Wiring};
use odl_ps::{RemoteOptions, RemoteStore};
use ps_support::{free_port, start, Shard};
use rand::SeedableRng;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(120);
const PARTITIONS: u32 = 4;

struct Cluster {
    shards: Vec<Shard>,
    brokers: String,
    update_topic: String,
    control_topic: String,
    dir: tempfile::TempDir,
    model_config: String,
    schema: ModelSchema,
}

/// Two shards publishing through Kafka every second, gates open, nodes `confirm`
/// required for every version.
fn cluster(brokers: &str, confirm: &[&str]) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let update_topic = kafka_support::unique("odl.param_updates");
    let control_topic = kafka_support::unique("odl.param_control");
    let ports = [free_port(), free_port()];
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("\"http://127.0.0.1:{p}\""))
        .collect();
    let (model_config, model) = bench_model().unwrap();
    let mc_path = dir.path().join("model.json");
    std::fs::write(&mc_path, &model_config).unwrap();
    let mut shards = Vec::new();
    for i in 0..2u32 {
        let cfg = dir.path().join(format!("ps-{i}.toml"));
        let confirm: Vec<String> = confirm.iter().map(|n| format!("\"{n}\"")).collect();
        std::fs::write(
            &cfg,
            format!(
                "shard_index = {i}\nshard_count = 2\ngrpc_addr = \"127.0.0.1:{port}\"\nhttp_addr = \"127.0.0.1:0\"\n\
                 checkpoint_dir = \"{ck}\"\n\
                 [odl_model_update]\nfirst_trigger_time = 1\ndense_send_interval_time = 1\n\
                 sparse_send_interval_time = 1\nglobal_auc_threshold = 0.0\ncurrent_auc_threshold = 0.0\n\
                 update_partition_count = {PARTITIONS}\n\
                 [odl_model_update.extensions]\nfull_version_interval_time = 4\ntransport = \"kafka\"\n\
                 update_topic = \"{update_topic}\"\ncontrol_topic = \"{control_topic}\"\n\
                 shard_grpc = [{urls}]\nconfirm_nodes = [{confirm}]\nmodel_config = \"{mc}\"\n\
                 [kafka]\nbrokers = \"{brokers}\"\n",
                port = ports[i as usize],
                ck = dir.path().join(format!("ck-{i}")).display(),
                urls = urls.join(", "),
                confirm = confirm.join(", "),
                mc = mc_path.display(),
            ),
        )
        .unwrap();
        shards.push(start(&["--config".into(), cfg.display().to_string()]));
    }
    Cluster {
        shards,
        brokers: brokers.to_string(),
        update_topic,
        control_topic,
        dir,
        model_config,
        schema: model.schema().clone(),
    }
}

impl Cluster {
    fn store(&self) -> RemoteStore {
        let urls = self
            .shards
            .iter()
            .map(|s| format!("http://{}", s.grpc))
            .collect();
        let mut opts = RemoteOptions::new(urls, "test-worker");
        opts.attributes
            .insert("model_config".into(), self.model_config.clone());
        RemoteStore::connect(opts).unwrap()
    }

    /// An `odl serve` following the topics, owning `partitions` (empty: all).
    fn node(&self, id: &str, partitions: &[u32]) -> ServeProcess {
        let cfg = self.dir.path().join(format!("serve-{id}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "ps_grpc = \"http://{ps}\"\nnode_id = \"{id}\"\npartitions = {partitions:?}\n\
                 transport = \"kafka\"\nupdate_topic = \"{u}\"\ncontrol_topic = \"{c}\"\nreconnect_ms = 200\n\
                 [kafka]\nbrokers = \"{b}\"\n",
                ps = self.shards[0].grpc,
                u = self.update_topic,
                c = self.control_topic,
                b = self.brokers,
            ),
        )
        .unwrap();
        let exe = PathBuf::from(env!("CARGO_BIN_EXE_odl"));
        ServeProcess::spawn(&exe, &["--config", cfg.to_str().unwrap()]).unwrap()
    }

    fn versions(&self) -> Vec<Value> {
        let (code, body) = self.shards[0].get("/v1/versions");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<Value>(&body)
            .unwrap()
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Rows per shard, summed over tables (`/v1/shard`).
    fn shard_rows(&self) -> Vec<u64> {
        self.shards
            .iter()
            .map(|s| {
                let v: Value = serde_json::from_str(&s.get("/v1/shard").1).unwrap();
                v["tables"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t["rows"].as_u64().unwrap())
                    .sum()
            })
            .collect()
    }
}

fn progress(auc: f64) -> TrainProgress {
    TrainProgress {
        samples: 1000,
        tasks: ["click", "detail_click"]
            .iter()
            .map(|t| TaskProgress {
                task: t.to_string(),
                samples: 1000,
                global_auc: auc,
                current_auc: auc,
            })
            .collect(),
    }
}

fn instances(n: usize) -> Vec<Value> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    (0..n).map(|_| bench_instance(&mut rng)).collect()
}

/// Train a little: a gradient for every key the instances hit plus spread keys (both
/// shards' ranges), in every table, and every dense tensor.
fn push_some(store: &RemoteStore, schema: &ModelSchema, insts: &[Value], scale: f32) {
    let mut keys: Vec<FeatureId> = (1..=400u64)
        .map(|i| FeatureId(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
        .collect();
    for inst in insts {
        for (field, v) in inst.as_object().unwrap() {
            let vals: Vec<String> = match v {
                Value::Array(a) => a
                    .iter()
                    .map(|x| x.as_str().unwrap_or_default().to_string())
                    .collect(),
                Value::String(s) => vec![s.clone()],
                other => vec![other.to_string()],
            };
            keys.extend(vals.iter().map(|s| feature_id(field, s)));
        }
    }
    keys.sort();
    keys.dedup();
    for t in &schema.tables {
        let grads: Vec<f32> = (0..keys.len() * t.dim)
            .map(|i| scale * ((i % 7) as f32 - 3.0) / 10.0)
            .collect();
        store.push_sparse(&t.name, &keys, &grads).unwrap();
    }
    let dense: Vec<(String, Vec<f32>)> = schema
        .dense
        .iter()
        .map(|d| (d.name.clone(), vec![scale * 0.01; d.shape.iter().product()]))
        .collect();
    store.push_dense(&dense).unwrap();
}

fn model_status(node: &ServeProcess) -> Option<Value> {
    let mut c = HttpClient::connect(&node.rest_addr).ok()?;
    let (code, body) = c.get("/v1/models/rank_mmoe_odl").ok()?;
    (code == 200)
        .then(|| serde_json::from_slice(&body).ok())
        .flatten()
}

fn node_rows(node: &ServeProcess) -> u64 {
    model_status(node)
        .and_then(|s| s["rows"].as_u64())
        .unwrap_or(0)
}

fn predict(node: &ServeProcess, insts: &[Value]) -> Value {
    let mut c = HttpClient::connect(&node.rest_addr).unwrap();
    let body = serde_json::json!({ "instances": insts }).to_string();
    let (code, out) = c
        .post("/v1/models/rank_mmoe_odl:predict", body.as_bytes())
        .unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&out));
    serde_json::from_slice::<Value>(&out).unwrap()["predictions"].clone()
}

fn status_of(v: &Value) -> &str {
    v["status"].as_str().unwrap_or_default()
}

#[test]
fn two_shards_publish_through_kafka_and_nodes_apply_both_shards_rows() {
    let Some(brokers) = kafka_support::brokers() else {
        return;
    };
    let c = cluster(&brokers, &["part", "all"]);
    let store = c.store();
    store.declare(&c.schema).unwrap();
    store.report_progress(&progress(0.8)).unwrap();
    let insts = instances(16);
    let part = c.node("part", &[0, 1]);
    let all = c.node("all", &[]);
    push_some(&store, &c.schema, &insts, 1.0);
    let rows = c.shard_rows();
    assert!(
        rows[0] > 0 && rows[1] > 0,
        "both shards hold rows: {rows:?}"
    );
    let total: u64 = rows.iter().sum();

    // The node owning every partition ends up with every row of both shards.
    wait_for(
        "the all-partitions node to hold both shards' rows",
        T,
        || (node_rows(&all) == total).then_some(()),
    )
    .unwrap();
    // The other owns partitions 0 and 1 of 4 (div: the lower half of the key space):
    // some of the rows, not all.
    wait_for("the partial node to apply a version", T, || {
        (node_rows(&part) > 0).then_some(())
    })
    .unwrap();
    assert!(node_rows(&part) < total, "{} of {total}", node_rows(&part));

    // Versions reach FINISHED through the topics: both nodes confirmed them. (A full
    // version may take the first changes: keep training until increments carry some.)
    let mut polls = 0u64;
    wait_for("a sparse and a dense version FINISHED", T, || {
        polls += 1;
        if polls % 50 == 0 {
            push_some(&store, &c.schema, &insts, 0.5);
        }
        let vs = c.versions();
        let done = |kind: &str| {
            vs.iter()
                .any(|v| v["kind"] == kind && status_of(v) == "FINISHED")
        };
        (done("sparse") && done("dense")).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:#?}", c.versions()));
    // Every version published before the nodes applied their current one is FINISHED.
    let served = model_status(&all).unwrap()["version"].as_u64().unwrap();
    wait_for(
        "every published version up to the served one FINISHED",
        T,
        || {
            c.versions()
                .iter()
                .filter(|v| v["version"].as_u64().unwrap() <= served && status_of(v) != "SKIPPED")
                .all(|v| status_of(v) == "FINISHED")
                .then_some(())
        },
    )
    .unwrap();

    // More training: the next increments carry it.
    push_some(&store, &c.schema, &insts, 2.0);
    let before = predict(&all, &insts);
    wait_for("the new rows to be served", T, || {
        (predict(&all, &insts) != before).then_some(())
    })
    .unwrap();

    // A node started now catches up from the newest full version (plus increments)
    // and serves what the early node serves.
    wait_for("a periodic full version", T, || {
        let fulls = c
            .versions()
            .iter()
            .filter(|v| v["kind"] == "full" && status_of(v) == "FINISHED")
            .count();
        (fulls >= 2).then_some(())
    })
    .unwrap();
    let late = c.node("late", &[]);
    wait_for("the late node to hold every row", T, || {
        (node_rows(&late) == total).then_some(())
    })
    .unwrap();
    wait_for("the late and early nodes to predict alike", T, || {
        (predict(&late, &insts) == predict(&all, &insts)).then_some(())
    })
    .unwrap();
    let p = predict(&late, &insts);
    assert_eq!(p.as_array().unwrap().len(), insts.len());
    assert!(p[0]["click"].as_f64().unwrap().is_finite());
}

/// The numerics gate through Kafka: a version carrying a NaN is SKIPPED, never
/// written to the topics, and a node keeps serving the version before it.
#[test]
fn a_version_with_a_nan_is_skipped_and_never_applied() {
    let Some(brokers) = kafka_support::brokers() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (model_config, model) = bench_model().unwrap();
    let (update_topic, control_topic) = (
        kafka_support::unique("odl.param_updates"),
        kafka_support::unique("odl.param_control"),
    );
    let mut cfg = PublishConfig {
        global_auc_threshold: 0.0,
        current_auc_threshold: 0.0,
        update_partition_count: PARTITIONS,
        ..Default::default()
    };
    let mc = dir.path().join("model.json");
    std::fs::write(&mc, &model_config).unwrap();
    cfg.extensions.model_config = mc.display().to_string();
    let source = Arc::new(MemorySource::new(model.schema().clone()));
    let t = model.schema().tables[0].clone();
    let keys = [1u64, u64::MAX / 2, u64::MAX - 1];
    source.set_rows(&t.name, &keys, &vec![0.5; keys.len() * t.dim]);
    let kafka = KafkaTransport::new(
        &kafka_support::config(&brokers),
        &update_topic,
        &control_topic,
        PARTITIONS,
    )
    .unwrap();
    let wiring = Wiring {
        source: source.clone(),
        local: source.clone(),
        role: Role::Publishing,
        kafka: Some(kafka),
    };
    let publisher =
        LocalPublisher::start_wired(cfg, &dir.path().join("versions"), wiring, false).unwrap();
    let p = publisher.publisher.clone();
    p.cut_full(FullCause::WarmStart).unwrap();
    let node_cfg = dir.path().join("serve.toml");
    std::fs::write(
        &node_cfg,
        format!(
            "ps_grpc = \"{}\"\nnode_id = \"n\"\ntransport = \"kafka\"\nupdate_topic = \"{update_topic}\"\n\
             control_topic = \"{control_topic}\"\nreconnect_ms = 200\n[kafka]\nbrokers = \"{brokers}\"\n",
            publisher.grpc_url()
        ),
    )
    .unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_odl"));
    let node = ServeProcess::spawn(&exe, &["--config", node_cfg.to_str().unwrap()]).unwrap();
    let status = |v: u64| {
        p.registry()
            .get(odl_proto::version::Version(v))
            .unwrap()
            .status
    };
    wait_for("version 1 FINISHED through kafka", T, || {
        (status(1) == VersionStatus::Finished).then_some(())
    })
    .unwrap();
    // A good increment, then one with a NaN (on the row of the upper key range).
    source.set_rows(&t.name, &[7], &vec![0.25; t.dim]);
    let good = p.publish_sparse().unwrap().unwrap();
    let mut bad_row = vec![0.1; t.dim];
    bad_row[0] = f32::NAN;
    source.set_rows(&t.name, &[u64::MAX - 1], &bad_row);
    let bad = p.publish_sparse().unwrap().unwrap();
    assert_eq!(bad.record.status, VersionStatus::Skipped);
    assert!(bad
        .record
        .reason
        .as_deref()
        .unwrap_or_default()
        .contains("non-finite"));
    // A later good version is published after it; the node applies it, never the NaN one.
    source.set_rows(&t.name, &[u64::MAX - 1], &vec![0.3; t.dim]);
    let after = p.publish_sparse().unwrap().unwrap();
    assert_eq!(after.record.status, VersionStatus::PushOnline);
    wait_for("the version after the skipped one FINISHED", T, || {
        (status(after.version().0) == VersionStatus::Finished).then_some(())
    })
    .unwrap();
    assert_eq!(status(good.version().0), VersionStatus::Finished);
    assert_eq!(status(bad.version().0), VersionStatus::Skipped);
    let served = model_status(&node).unwrap();
    assert_eq!(served["version"].as_u64(), Some(after.version().0));
    assert_eq!(served["rows"].as_u64(), Some(4));
    let preds = predict(&node, &instances(4));
    assert!(preds
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["click"].as_f64().unwrap().is_finite()));
}
