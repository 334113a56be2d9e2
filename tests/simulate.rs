//! `odl simulate` then `odl join` through the real binary: the pipeline's first half.

use serde_json::Value;
use std::process::Command;

const ODL: &str = env!("CARGO_BIN_EXE_odl");

fn simulate(dir: &std::path::Path, name: &str, seed: &str) -> Value {
    let out = Command::new(ODL)
        .args(["simulate", "--seed", seed, "--events", "60000"])
        .arg("--out")
        .arg(dir.join(name))
        .arg("--truth")
        .arg(dir.join(format!("{name}.truth")))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn simulated_stream_joins_with_balanced_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let summary = simulate(d, "a.jsonl", "11");
    assert_eq!(summary["events"], 60000);
    assert!(summary["oracle_auc"]["click"].as_f64().unwrap() > 0.6);
    let again = simulate(d, "b.jsonl", "11");
    assert_eq!(summary, again);
    assert_eq!(std::fs::read(d.join("a.jsonl")).unwrap(), std::fs::read(d.join("b.jsonl")).unwrap());

    let out = Command::new(ODL)
        .args(["join", "--input"])
        .arg(d.join("a.jsonl"))
        .arg("--out")
        .arg(d.join("samples.jsonl"))
        .arg("--audit")
        .arg(d.join("audit.jsonl"))
        .arg("--stats")
        .arg(d.join("stats.json"))
        .arg("--dead-letter")
        .arg(d.join("dead.jsonl"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s: Value = serde_json::from_str(&std::fs::read_to_string(d.join("stats.json")).unwrap()).unwrap();
    let n = |v: &Value| v.as_u64().unwrap();
    let e = &s["exposure"];
    assert_eq!(n(&e["received"]), n(&e["late"]) + n(&e["duplicate"]) + n(&e["joined"]) + n(&e["unjoined"]));
    for k in ["click", "detail_click", "feature"] {
        let v = &s[k];
        assert_eq!(n(&v["received"]), n(&v["late"]) + n(&v["joined"]) + n(&v["unjoined"]), "{k}");
    }
    assert_eq!(s["malformed"], summary["malformed"]);
    assert_eq!(n(&e["received"]), n(&summary["streams"]["exposure"]));
    // About 3% of exposures have no feature event; a few are late or duplicated.
    let joined = n(&e["joined"]) as f64 / n(&e["received"]) as f64;
    assert!((0.93..0.99).contains(&joined), "{joined}");
    let samples = std::fs::read_to_string(d.join("samples.jsonl")).unwrap();
    assert_eq!(samples.lines().count() as u64, n(&s["samples"]["emitted"]));
    let dead = std::fs::read_to_string(d.join("dead.jsonl")).unwrap();
    let late: u64 = ["exposure", "click", "detail_click", "feature"].iter().map(|k| n(&s[k]["late"])).sum();
    assert_eq!(dead.lines().count() as u64, n(&s["malformed"]) + late);
    // Every sample has its truth line (same sample id).
    let truth = std::fs::read_to_string(d.join("a.jsonl.truth")).unwrap();
    let ids: std::collections::HashSet<String> = truth
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["sample_id"].as_str().unwrap().into())
        .collect();
    for l in samples.lines().take(2000) {
        let v: Value = serde_json::from_str(l).unwrap();
        assert!(ids.contains(v["sample_id"].as_str().unwrap()));
    }
}

#[test]
fn bad_simulator_config_and_unwritable_output_fail_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sim.toml");
    std::fs::write(&cfg, "rescore_share = 2.0\n").unwrap();
    let out = Command::new(ODL)
        .args(["simulate", "--events", "10", "--out"])
        .arg(dir.path().join("e.jsonl"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rescore_share"));
    let bad = dir.path().join("nodir").join("e.jsonl");
    let out = Command::new(ODL).args(["simulate", "--events", "10", "--out"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("e.jsonl"));
}
