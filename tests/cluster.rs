//! Cluster mode through real processes: 2 `odl ps` shards and a training worker; one
//! shard is SIGKILLed mid-training and restarted from its checkpoint. Training
//! completes, the worker reports the reconnect, and the rows the shard checkpointed
//! before the kill are all there after the restart (TRAIN.md "Parameter server",
//! issue 5 "Tests").

#[path = "ps_support/mod.rs"]
mod support;

use odl_ps::checkpoint;
use odl_ps::LocalStore;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

fn ok(args: &[&str]) {
    let out = Command::new(ODL)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "odl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn rows_of(shard: &Shard) -> u64 {
    let v: Value = serde_json::from_str(&shard.get("/v1/shard").1).unwrap();
    v["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["rows"].as_u64().unwrap())
        .sum()
}

#[test]
fn a_shard_killed_mid_training_restarts_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (events, samples) = (d.join("events.jsonl"), d.join("samples.jsonl"));
    ok(&[
        "simulate",
        "--seed",
        "5",
        "--events",
        "150000",
        "--out",
        s(&events),
        "--truth",
        s(&d.join("truth.jsonl")),
    ]);
    ok(&[
        "join",
        "--input",
        s(&events),
        "--out",
        s(&samples),
        "--audit",
        "/dev/null",
        "--stats",
        s(&d.join("stats.json")),
    ]);
    let n_samples = std::fs::read_to_string(&samples).unwrap().lines().count() as u64;
    assert!(n_samples > 30_000, "{n_samples} samples");

    // Two shards on fixed ports (a restart must come back at the same address),
    // checkpointing every second, publishing off.
    let ports = [free_port(), free_port()];
    let args: Vec<Vec<String>> = (0..2u32)
        .map(|i| {
            let a = shard_args(i, 2, ports[i as usize], &d.join(format!("ck-{i}")), 1, d);
            let cfg = d.join(format!("ps-{i}.toml"));
            let mut text = std::fs::read_to_string(&cfg).unwrap();
            text.push_str("[odl_model_update]\nopen = false\n");
            std::fs::write(&cfg, text).unwrap();
            a
        })
        .collect();
    let s0 = start(&args[0]);
    let s1 = start(&args[1]);
    let worker_cfg = d.join("worker.toml");
    std::fs::write(
        &worker_cfg,
        format!(
            "ps = [\"{}\", \"{}\"]\nsamples = \"{}\"\nworker = \"0/1\"\nthreads = 1\nepochs = 3\nretry_deadline_secs = 120\nreport = \"{}\"\n",
            s0.grpc,
            s1.grpc,
            s(&samples),
            s(&d.join("report.json"))
        ),
    )
    .unwrap();
    let worker = Command::new(ODL)
        .args(["train", "--config", s(&worker_cfg)])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Mid-training: shard 1 has checkpointed rows the worker pushed.
    let ck1 = d.join("ck-1");
    wait_until(
        Duration::from_secs(120),
        "shard 1 to checkpoint trained rows",
        || checkpoint::read_manifest(&ck1).is_ok_and(|(_, m)| m.rows.values().sum::<u64>() > 100),
    );
    s1.kill();
    // What the killed shard had on disk (a copy, read while nothing writes there).
    let saved = LocalStore::load_checkpoint(&ck1, Some((1, 2))).unwrap();
    let saved_rows: u64 = saved.table_stats().iter().map(|t| t.rows).sum();
    assert!(saved_rows > 100);
    let s1 = start(&args[1]);
    let resumed = rows_of(&s1);
    assert!(
        resumed >= saved_rows,
        "restarted shard holds {resumed} rows, its checkpoint {saved_rows}"
    );

    let out = worker.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "worker failed:\n{err}");
    let reconnects: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("reconnects: "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no reconnect report in:\n{err}"));
    assert!(reconnects >= 1, "the worker reports the reconnect:\n{err}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("report.json")).unwrap()).unwrap();
    assert!(report["samples"].as_u64().unwrap() >= n_samples, "{report}");
    assert!(s0.terminate().success());
    assert!(s1.terminate().success(), "SIGTERM: last checkpoint, exit 0");
    // Every row the pre-kill checkpoint held is on the restarted shard at the end
    // (read from the checkpoint its SIGTERM wrote; no TTL, so nothing was evicted).
    let fin = LocalStore::load_checkpoint(&ck1, Some((1, 2))).unwrap();
    // The worker declared its model config with the schema, so every shard's
    // checkpoint (and so its full versions) carries it, as file mode's does.
    let shard0 = LocalStore::load_checkpoint(&d.join("ck-0"), Some((0, 2))).unwrap();
    for (i, store) in [&shard0, &fin].into_iter().enumerate() {
        let text = store
            .attribute("model_config")
            .unwrap_or_else(|| panic!("shard {i}: no model_config"));
        let cfg: Value = serde_json::from_str(&text).unwrap();
        assert!(
            cfg["fields"].as_array().is_some_and(|f| !f.is_empty()),
            "shard {i}: {cfg}"
        );
    }
    for chunk in saved.full_snapshot() {
        let present = fin.read_rows(&chunk.table, &chunk.keys).unwrap();
        assert_eq!(
            present.keys.len(),
            chunk.keys.len(),
            "table {}",
            chunk.table
        );
    }
}
