//! `odl ps` as a real process: port 0 and the readiness line, RemoteStore declare /
//! push / pull, bad requests refused with the row intact, HTTP endpoints, SIGTERM
//! writing a checkpoint and exiting 0, and SIGKILL + restart from the checkpoint with a
//! client that reconnects without being recreated.

#[path = "ps_support/mod.rs"]
mod support;

use odl_proto::hashing::FeatureId;
use odl_proto::params::{
    DenseSpec, ModelSchema, Optimizer, ParamError, ParamRead, ParamStore, TableSpec,
};
use odl_ps::checkpoint;
use odl_ps::{RemoteOptions, RemoteStore};
use std::time::Duration;
use support::*;

fn schema() -> ModelSchema {
    let adagrad = Optimizer::Adagrad {
        lr: 0.05,
        initial_accumulator: 0.1,
    };
    ModelSchema {
        tables: vec![TableSpec {
            name: "emb".into(),
            dim: 8,
            optimizer: adagrad.clone(),
            init_std: 0.01,
        }],
        dense: vec![DenseSpec {
            name: "w".into(),
            shape: vec![4],
            optimizer: adagrad,
            init: vec![0.5; 4],
        }],
    }
}

fn keys(n: u64) -> Vec<FeatureId> {
    (0..n)
        .map(|i| FeatureId(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
        .collect()
}

fn pull(s: &RemoteStore, ks: &[FeatureId]) -> Vec<f32> {
    let mut out = vec![0.0; ks.len() * 8];
    s.pull_sparse("emb", ks, &mut out).unwrap();
    out
}

#[test]
fn shard_serves_validates_and_checkpoints_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let shard = start(&[
        "--grpc-addr".into(),
        "127.0.0.1:0".into(),
        "--http-addr".into(),
        "127.0.0.1:0".into(),
        "--checkpoint-dir".into(),
        ck.display().to_string(),
    ]);
    let store = RemoteStore::connect(RemoteOptions::new(vec![shard.grpc.clone()], "t")).unwrap();
    store.declare(&schema()).unwrap();
    let ks = keys(500);
    store.push_sparse("emb", &ks, &vec![0.25; 500 * 8]).unwrap();
    store.push_dense(&[("w".into(), vec![1.0; 4])]).unwrap();
    let before = pull(&store, &ks);
    assert!(before.iter().all(|x| x.is_finite()));
    // Bad requests: error with a message, nothing changed.
    let mut g = vec![0.25; 500 * 8];
    g[100] = f32::NAN;
    match store.push_sparse("emb", &ks, &g) {
        Err(ParamError::Invalid(m)) => assert!(m.contains("not finite"), "{m}"),
        other => panic!("{other:?}"),
    }
    match store.push_sparse("other", &ks, &vec![0.25; 500 * 8]) {
        Err(ParamError::Invalid(m)) => assert!(m.contains("unknown table"), "{m}"),
        other => panic!("{other:?}"),
    }
    match store.pull_dense(&["nope".into()]) {
        Err(ParamError::Invalid(m)) => assert!(m.contains("unknown dense"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(pull(&store, &ks), before);
    let (code, body) = shard.get("/v1/shard");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["tables"][0]["rows"], 500);
    assert_eq!(v["shards"], 1);
    assert_eq!(shard.get("/healthz").0, 200);
    assert_eq!(shard.get("/readyz").0, 200);
    let status = shard.terminate();
    assert!(status.success(), "SIGTERM exit: {status:?}");
    let (_, m) = checkpoint::read_manifest(&ck).unwrap();
    assert_eq!(m.rows["emb"], 500);
}

#[test]
fn killed_shard_restarts_from_its_checkpoint_and_the_client_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let port = free_port();
    let args = shard_args(0, 1, port, &ck, 1, dir.path());
    let shard = start(&args);
    let mut opts = RemoteOptions::new(vec![shard.grpc.clone()], "t");
    opts.retry_deadline = Duration::from_secs(60);
    let store = RemoteStore::connect(opts).unwrap();
    store.declare(&schema()).unwrap();
    let ks = keys(2000);
    store.push_sparse("emb", &ks, &vec![0.5; 2000 * 8]).unwrap();
    let checkpointed = pull(&store, &ks);
    // Wait for a periodic checkpoint holding these rows (interval 1 s).
    wait_until(
        Duration::from_secs(30),
        "a checkpoint with 2000 rows",
        || checkpoint::read_manifest(&ck).is_ok_and(|(_, m)| m.rows.get("emb") == Some(&2000)),
    );
    shard.kill();
    // While the shard is down, a pull blocks in retries; restart it on the same port.
    let pulled = std::thread::scope(|s| {
        let h = s.spawn(|| pull(&store, &ks));
        // Restart only once the client has seen the shard down (deterministic order).
        wait_until(
            Duration::from_secs(30),
            "the client to notice the outage",
            || store.retries() > 0,
        );
        let restarted = start(&args);
        let got = h.join().unwrap();
        (got, restarted)
    });
    let (got, restarted) = pulled;
    assert_eq!(
        got, checkpointed,
        "rows checkpointed before the kill are intact"
    );
    assert_eq!(store.reconnects(), 1, "one outage, one reconnect");
    // The same client keeps training against the restarted shard.
    store.push_sparse("emb", &ks[..10], &vec![0.5; 80]).unwrap();
    assert_ne!(pull(&store, &ks[..10]), checkpointed[..80].to_vec());
    assert!(restarted.terminate().success());
}

#[test]
fn a_file_mode_checkpoint_warm_starts_two_shards() {
    use odl_ps::LocalStore;
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("batch");
    let batch = LocalStore::default();
    batch.declare(&schema()).unwrap();
    let ks = keys(3000);
    let g: Vec<f32> = (0..3000 * 8)
        .map(|i| ((i % 13) as f32 - 6.0) / 10.0)
        .collect();
    batch.push_sparse("emb", &ks, &g).unwrap();
    batch.push_dense(&[("w".into(), vec![0.3; 4])]).unwrap();
    batch.save_checkpoint(&ck).unwrap();
    let mut want = vec![0.0; 3000 * 8];
    batch.pull_sparse("emb", &ks, &mut want).unwrap();
    let want_w = batch.pull_dense(&["w".into()]).unwrap();

    let shards: Vec<Shard> = (0..2)
        .map(|i| {
            let mut a = shard_args(i, 2, 0, &dir.path().join(format!("ck-{i}")), 60, dir.path());
            a.extend(["--warm-start".into(), ck.display().to_string()]);
            start(&a)
        })
        .collect();
    let store = RemoteStore::connect(RemoteOptions::new(
        shards.iter().map(|s| s.grpc.clone()).collect(),
        "t",
    ))
    .unwrap();
    assert_eq!(
        pull(&store, &ks),
        want,
        "every row on its shard, with the batch values"
    );
    assert_eq!(store.pull_dense(&["w".into()]).unwrap(), want_w);
    let rows: Vec<u64> = shards
        .iter()
        .map(|s| {
            let v: serde_json::Value = serde_json::from_str(&s.get("/v1/shard").1).unwrap();
            v["tables"][0]["rows"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(
        rows.iter().sum::<u64>(),
        3000,
        "disjoint and complete: {rows:?}"
    );
    assert!(rows.iter().all(|&r| r > 1000), "{rows:?}");
    // Declaring the same schema on top of the warm start keeps the rows.
    store.declare(&schema()).unwrap();
    assert_eq!(pull(&store, &ks), want);
}

#[test]
fn bad_configs_and_missing_warm_starts_fail_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(ODL)
            .arg("ps")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "shard_index = 3\nshard_count = 2\n").unwrap();
    let (ok, err) = run(&["--config", bad.to_str().unwrap()]);
    assert!(!ok && err.contains("shard_index"), "{err}");
    std::fs::write(&bad, "shard_indx = 0\n").unwrap();
    let (ok, err) = run(&["--config", bad.to_str().unwrap()]);
    assert!(!ok && err.contains("shard_indx"), "{err}");
    let missing = dir.path().join("nothing-here");
    let (ok, err) = run(&[
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--warm-start",
        missing.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("no checkpoint"), "{err}");
}
