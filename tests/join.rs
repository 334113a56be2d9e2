//! `odl join` through the real binary: exit codes, dead letters, the stats file.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const ODL: &str = env!("CARGO_BIN_EXE_odl");

struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn new(input: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("events.jsonl"), input).unwrap();
        Run { dir }
    }
    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn join(&self, extra: &[&str]) -> Output {
        let mut args: Vec<String> = vec!["join".into()];
        for (flag, name) in [
            ("--input", "events.jsonl"),
            ("--out", "samples.jsonl"),
            ("--audit", "audit.jsonl"),
            ("--stats", "stats.json"),
            ("--dead-letter", "dead.jsonl"),
        ] {
            if !extra.contains(&flag) {
                args.push(flag.into());
                args.push(self.p(name).display().to_string());
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Command::new(ODL).args(&args).env("RUST_LOG", "warn").output().unwrap()
    }
    fn lines(&self, name: &str) -> Vec<Value> {
        read_lines(&self.p(name))
    }
    fn stats(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.p("stats.json")).unwrap()).unwrap()
    }
}

fn read_lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

const MALFORMED: &[&str] = &[
    "this is not json",
    "{\"stream\": \"click\", \"pv_id\": \"p\"",
    "[1, 2, 3]",
    "\"a string\"",
    "12",
    r#"{"pv_id":"p","item_id":"i","ts":1}"#,
    r#"{"stream":"purchase","pv_id":"p","item_id":"i","ts":1}"#,
    r#"{"stream":"click","item_id":"i","ts":1}"#,
    r#"{"stream":"click","pv_id":"p","ts":1}"#,
    r#"{"stream":"click","pv_id":"p","item_id":"i"}"#,
    r#"{"stream":"exposure","pv_id":"p","item_id":"i","ts":1}"#,
    r#"{"stream":"click","pv_id":42,"item_id":"i","ts":1}"#,
    r#"{"stream":"click","pv_id":"p","item_id":"i","ts":"1"}"#,
    r#"{"stream":"click","pv_id":"p","item_id":"i","ts":1.25}"#,
    r#"{"stream":"feature","pv_id":"p","item_id":"i","ts":1}"#,
    r#"{"stream":"feature","pv_id":"p","item_id":"i","ts":1,"features":"f"}"#,
];

fn good_events() -> Vec<String> {
    vec![
        r#"{"stream":"feature","pv_id":"p1","item_id":"i1","ts":1000,"features":{"device":"ios","position":2}}"#,
        r#"{"stream":"exposure","pv_id":"p1","item_id":"i1","user_id":"u1","ts":2000}"#,
        r#"{"stream":"click","pv_id":"p1","item_id":"i1","user_id":"u1","ts":5000}"#,
        r#"{"stream":"exposure","pv_id":"p1","item_id":"i1","user_id":"u1","ts":2000}"#,
        r#"{"stream":"feature","pv_id":"p2","item_id":"i1","ts":900000,"features":{}}"#,
        r#"{"stream":"exposure","pv_id":"p2","item_id":"i1","user_id":"u2","ts":900500}"#,
        r#"{"stream":"click","pv_id":"p1","item_id":"i1","ts":3000}"#,
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

#[test]
fn every_malformed_kind_exits_zero_and_lands_in_the_dead_letter_file() {
    let mut lines = good_events();
    for (n, m) in MALFORMED.iter().enumerate() {
        lines.insert(1 + 2 * n.min(3), m.to_string());
    }
    let r = Run::new(&(lines.join("\n") + "\n\n"));
    let out = r.join(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dead = r.lines("dead.jsonl");
    let reasons: Vec<&str> = dead.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    // One dead letter per malformed line, plus the late click (ts 3000 after ts 900500).
    assert_eq!(dead.len(), MALFORMED.len() + 1, "{reasons:?}");
    for m in MALFORMED {
        assert!(dead.iter().any(|d| d["line"] == *m && d["reason"] != "late"), "{m}");
    }
    let late = dead.iter().find(|d| d["reason"] == "late").unwrap();
    assert_eq!(late["stream"], "click");
    let s = r.stats();
    assert_eq!(s["malformed"], MALFORMED.len());
    assert_eq!(s["exposure"]["duplicate"], 1);
    assert_eq!(s["click"]["late"], 1);
    for k in ["click", "detail_click", "feature"] {
        let v = &s[k];
        assert_eq!(
            v["received"],
            v["late"].as_u64().unwrap() + v["joined"].as_u64().unwrap() + v["unjoined"].as_u64().unwrap(),
            "{k}"
        );
    }
    let samples = r.lines("samples.jsonl");
    assert_eq!(samples.len(), 2);
    assert_eq!(s["samples"]["emitted"], 2);
    assert_eq!(samples[0]["labels"]["click"], 1);
    assert_eq!(samples[0]["features"]["device"], "ios");
    assert_eq!(samples[1]["features"], serde_json::json!({"click_label": 0, "detail_click_label": 0}));
}

#[test]
fn standard_input_and_no_dead_letter_file() {
    let r = Run::new("");
    let mut child = Command::new(ODL)
        .args(["join", "--input", "-"])
        .args(["--out", r.p("samples.jsonl").to_str().unwrap()])
        .args(["--audit", r.p("audit.jsonl").to_str().unwrap()])
        .args(["--stats", r.p("stats.json").to_str().unwrap()])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all((good_events().join("\n") + "\nnot json\n").as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(r.lines("samples.jsonl").len(), 2);
    assert_eq!(r.stats()["malformed"], 1);
}

#[test]
fn audit_file_is_the_same_subset_on_every_replay() {
    let mut lines = Vec::new();
    for n in 0..2000 {
        lines.push(format!(
            r#"{{"stream":"feature","pv_id":"pv{n}","item_id":"i","ts":{n},"features":{{"n":{n}}}}}"#
        ));
        lines
            .push(format!(r#"{{"stream":"exposure","pv_id":"pv{n}","item_id":"i","user_id":"u","ts":{n}}}"#));
    }
    let r = Run::new(&lines.join("\n"));
    assert!(r.join(&[]).status.success());
    let first = std::fs::read(r.p("audit.jsonl")).unwrap();
    assert!(r.join(&[]).status.success());
    assert_eq!(std::fs::read(r.p("audit.jsonl")).unwrap(), first);
    let audited = r.lines("audit.jsonl");
    assert!((120..280).contains(&audited.len()), "{}", audited.len());
    let samples = r.lines("samples.jsonl");
    assert!(audited.iter().all(|a| samples.contains(a)));
    assert_eq!(r.stats()["samples"]["audited"], audited.len());
}

fn assert_fails_naming(out: &Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {err}");
    assert!(err.contains(what), "stderr should name {what}: {err}");
}

#[test]
fn unreadable_input_exits_non_zero_naming_the_file() {
    let r = Run::new("");
    let missing = r.p("missing.jsonl").display().to_string();
    assert_fails_naming(&r.join(&["--input", &missing]), "missing.jsonl");
    let dir = r.dir.path().display().to_string();
    assert_fails_naming(&r.join(&["--input", &dir]), &dir);
}

#[test]
fn unwritable_outputs_exit_non_zero_naming_the_file() {
    let r = Run::new(&good_events().join("\n"));
    for flag in ["--out", "--audit", "--dead-letter", "--stats"] {
        let bad = r.p("no-such-dir").join("target.json").display().to_string();
        assert_fails_naming(&r.join(&[flag, &bad]), &bad);
    }
}

#[test]
fn bad_config_exits_non_zero_naming_the_file() {
    let r = Run::new(&good_events().join("\n"));
    std::fs::write(r.p("bad.toml"), "click_wait = 3\n").unwrap();
    assert_fails_naming(&r.join(&["--config", r.p("bad.toml").to_str().unwrap()]), "bad.toml");
    assert_fails_naming(&r.join(&["--config", r.p("none.toml").to_str().unwrap()]), "none.toml");
    std::fs::write(r.p("short.toml"), "click_wait_ms = 2000\n").unwrap();
    let out = r.join(&["--config", r.p("short.toml").to_str().unwrap()]);
    assert!(out.status.success());
    // The click at +3 s is now outside the 2 s window (the one at +1 s arrives late).
    assert_eq!(r.lines("samples.jsonl")[0]["labels"]["click"], 0);
    assert_eq!(r.stats()["click"]["unjoined"], 1);
}

#[test]
fn stats_file_is_rewritten_while_the_replay_runs() {
    use std::io::{BufRead, Write};
    use std::time::{Duration, Instant};
    let r = Run::new("");
    std::fs::write(r.p("fast.toml"), "stats_interval_ms = 1\n").unwrap();
    // At debug the joiner logs each rewrite: the test follows those lines, not a timer.
    let mut child = Command::new(ODL)
        .args(["join", "--input", "-", "--config", r.p("fast.toml").to_str().unwrap()])
        .args(["--out", r.p("samples.jsonl").to_str().unwrap()])
        .args(["--audit", r.p("audit.jsonl").to_str().unwrap()])
        .args(["--stats", r.p("stats.json").to_str().unwrap()])
        .env("RUST_LOG", "odl=debug")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rewrites) = std::sync::mpsc::channel();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("stats file rewritten") && tx.send(()).is_err() {
                break;
            }
        }
    });
    let received = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = std::fs::read_to_string(r.p("stats.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok());
            if s.as_ref().is_some_and(|s| s["exposure"]["received"] == n) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(rewrites.recv_timeout(left).is_ok(), "stats never showed {n} exposures");
        }
    };
    for n in 1..=3u64 {
        let line = format!(r#"{{"stream":"exposure","pv_id":"p{n}","item_id":"i","user_id":"u","ts":{n}}}"#);
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
        // The stdin pipe stays open: this is the mid-run file, not the final one.
        received(n);
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
    assert_eq!(r.stats()["exposure"]["unjoined"], 3);
}
