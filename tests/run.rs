//! `odl run` through the real binary: the whole pipeline in one process finishes a
//! bounded stream with a trained model, published versions and a checkpoint, and a
//! SIGTERM mid-stream shuts it down cleanly (exit 0, checkpoint written).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Every address on port 0, so tests never collide with each other or the defaults.
fn config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let p = dir.join("run.toml");
    let text = format!(
        "data_dir = {:?}\njoiner_http_addr = \"127.0.0.1:0\"\nprogress_interval_secs = 1\n{extra}\n\
         [ps]\ngrpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\n\
         [ps.odl_model_update]\nfirst_trigger_time = 1\ndense_send_interval_time = 1\nsparse_send_interval_time = 1\n\
         [serve]\nrest_addr = \"127.0.0.1:0\"\n",
        dir.join("data").display().to_string()
    );
    std::fs::write(&p, text).unwrap();
    p
}

/// Starts `odl run` and forwards its stderr lines to a channel (and to ours).
fn start(cfg: &Path, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_odl"))
        .arg("run")
        .arg("--config")
        .arg(cfg)
        .args(args)
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

/// Lines until one satisfies `pred`, within `timeout`.
fn wait_line(rx: &mpsc::Receiver<String>, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if pred(&l) => return l,
            Ok(_) => {}
            Err(e) => panic!("no matching line from odl run: {e}"),
        }
    }
}

/// The child's exit status, waited for on a thread so the deadline needs no polling.
fn wait_exit(mut child: Child, timeout: Duration) -> std::process::ExitStatus {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(timeout) {
        Ok(status) => status.unwrap(),
        Err(_) => panic!("odl run did not exit in {timeout:?}"),
    }
}

#[test]
fn a_bounded_stream_trains_publishes_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let (child, rx) = start(&cfg, &["--max-events", "400000", "--rate", "0"]);
    let report = wait_line(&rx, Duration::from_secs(240), |l| l.starts_with("odl run: trainer report "));
    let json: serde_json::Value =
        serde_json::from_str(report.trim_start_matches("odl run: trainer report ")).unwrap();
    let samples = json["samples"].as_u64().unwrap();
    assert!(samples > 50_000, "trained only {samples} samples");
    let auc = json["tasks"]["click"]["global"]["auc"].as_f64().unwrap();
    assert!(auc > 0.6 && auc < 0.95, "click AUC {auc}: not learning, or a leaked label");
    wait_line(&rx, Duration::from_secs(60), |l| l == "odl run: stopped cleanly");
    assert!(wait_exit(child, Duration::from_secs(30)).success());
    let data = dir.path().join("data");
    assert!(data.join("ps").is_dir(), "no checkpoint written");
    let audit = std::fs::read_to_string(data.join("audit.jsonl")).unwrap();
    let audited = audit.lines().count() as f64;
    let share = audited / samples as f64;
    assert!((0.07..0.13).contains(&share), "audit share {share}");
}

#[test]
fn sigterm_mid_stream_exits_zero_with_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "events_per_sec = 20000.0\n[simulate]\npaced_time_scale = 50.0\n");
    let (child, rx) = start(&cfg, &[]);
    // Samples are flowing: the trainer has reported progress to the store.
    wait_line(&rx, Duration::from_secs(120), |l| {
        l.starts_with("odl run: events") && !l.contains("trained 0,")
    });
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = wait_exit(child, Duration::from_secs(60));
    assert!(status.success(), "exit status {status}");
    assert!(dir.path().join("data/ps").is_dir(), "no checkpoint on shutdown");
}
