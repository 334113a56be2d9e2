//! `odl dashboard` through the real binary: its API reports an unreachable service as
//! down with the reason while the others' answers come through; and, in Debian's
//! chromium driven by tests/browser/dashboard.mjs (playwright-core), the page of a
//! running `odl run` shows join ratios, AUC and versions that match the services' own
//! JSON, and a service the dashboard cannot reach shows as down without blanking the
//! page. Screenshots: target/dashboard.png and target/dashboard-down.png.
//!
//! The browser tests need `node`, `/usr/bin/chromium` (or `ODL_CHROMIUM`) and
//! `npm ci` in tests/browser; `.ci/run` installs them. Without them the browser tests
//! fail when `CI` is set and are skipped with a message otherwise.

use odl::serve::client::HttpClient;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const STATS: &str = r#"{"exposure": {"received": 1000, "late": 10, "duplicate": 20, "joined": 700, "unjoined": 270},
 "click": {"received": 90, "late": 3, "joined": 80, "unjoined": 7},
 "detail_click": {"received": 0, "late": 0, "joined": 0, "unjoined": 0},
 "feature": {"received": 950, "late": 5, "joined": 700, "unjoined": 245},
 "malformed": 4, "samples": {"emitted": 700, "audited": 70}}"#;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A process whose stderr lines arrive on a channel (and are echoed to ours); killed
/// when dropped so a failed test leaves nothing running.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn start(args: &[&str]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_odl"))
            .args(args)
            // The dashboard's debug line per poll round is what tests wait on.
            .env("RUST_LOG", "info,odl::dashboard=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("{line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines }
    }

    /// The first line satisfying `pred` within `timeout`.
    fn wait_line(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) if pred(&l) => return l,
                Ok(_) => {}
                Err(e) => panic!("no matching line: {e}"),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// "http://host:port" of the first URL in `line`.
fn base_url(line: &str) -> String {
    let start = line
        .find("http://")
        .unwrap_or_else(|| panic!("no URL in {line:?}"));
    let rest = &line[start + "http://".len()..];
    let end = rest
        .find(|c: char| c == '/' || c.is_whitespace())
        .unwrap_or(rest.len());
    format!("http://{}", &rest[..end])
}

fn get(base: &str, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    HttpClient::connect(base.trim_start_matches("http://"))?.get(path)
}

/// `GET base/healthz` answers 200. The ready line is printed once the listener is
/// bound, so the first request is queued on it rather than refused: no retry needed.
fn assert_healthy(base: &str) {
    let (status, _) = get(base, "/healthz").unwrap();
    assert_eq!(status, 200, "{base}/healthz");
}

/// A port nothing listens on (bound, then released).
fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A stand-in joiner on a free port: `/stats` answers [`STATS`], nothing else exists.
fn fake_joiner() -> (String, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/stats",
        axum::routing::get(|| async { ([("content-type", "application/json")], STATS) }),
    );
    rt.spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), rt)
}

/// `odl dashboard` over the fake joiner (up) and a PS on an unused port (down).
fn dashboard_with_one_down(dir: &Path, joiner: &str) -> (Proc, String) {
    let cfg = dir.join("dashboard.toml");
    let text = format!(
        "listen_addr = \"127.0.0.1:0\"\npoll_interval_ms = 200\nrequest_timeout_ms = 1000\nserving = []\n\
         [[joiners]]\nname = \"joiner-a\"\nurl = \"{joiner}\"\n\
         [[ps]]\nname = \"ps-gone\"\nurl = \"http://127.0.0.1:{}\"\n",
        unused_port()
    );
    std::fs::write(&cfg, text).unwrap();
    let p = Proc::start(&["dashboard", "--config", cfg.to_str().unwrap()]);
    let ready = p.wait_line(Duration::from_secs(30), |l| {
        l.starts_with("odl dashboard ready")
    });
    let base = base_url(&ready);
    assert_healthy(&base);
    (p, base)
}

fn api_state(base: &str) -> serde_json::Value {
    let (status, body) = get(base, "/api/state").unwrap();
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn api_state_reports_the_unreachable_service_as_down_and_the_other_with_its_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let (joiner, _rt) = fake_joiner();
    let (dash, base) = dashboard_with_one_down(dir.path(), &joiner);
    for _ in 0..2 {
        dash.wait_line(Duration::from_secs(20), |l| l.contains("dashboard poll recorded"));
    }
    let state = api_state(&base);
    assert!(
        state["services"].as_array().unwrap().iter().all(|x| x["health"] != "pending"),
        "two rounds recorded, yet a service is pending: {state}"
    );
    // Another round may land before this request: at least the two seen.
    assert!(state["services"][0]["history"]["t"].as_array().unwrap().len() >= 2, "{state}");
    let (j, ps) = (&state["services"][0], &state["services"][1]);
    assert_eq!(
        (j["name"].as_str(), j["kind"].as_str(), j["health"].as_str()),
        (Some("joiner-a"), Some("joiner"), Some("up"))
    );
    let stats: serde_json::Value = serde_json::from_str(STATS).unwrap();
    assert_eq!(j["endpoints"]["/stats"]["body"], stats);
    assert_eq!(
        j["endpoints"]["/v1/quality"]["status"], 404,
        "an endpoint the service lacks is kept as its status"
    );
    let ratio = j["history"]["series"]["join_ratio.exposure"]
        .as_array()
        .unwrap();
    assert_eq!(ratio.last().unwrap().as_f64(), Some(0.7));
    assert_eq!(
        (ps["name"].as_str(), ps["health"].as_str()),
        (Some("ps-gone"), Some("down"))
    );
    let err = ps["error"].as_str().unwrap().to_lowercase();
    assert!(err.contains("refused"), "the reason is missing: {err}");

    // Only newer points after `since`; a malformed query is a 400, not a crash.
    let last = j["history"]["t"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_u64()
        .unwrap();
    let (status, body) = get(&base, &format!("/api/state?since={last}")).unwrap();
    assert_eq!(status, 200);
    let newer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(newer["services"][0]["history"]["t"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t.as_u64().unwrap() > last));
    assert_eq!(get(&base, "/api/state?since=yesterday").unwrap().0, 400);
    assert_eq!(get(&base, "/api/state?what=1").unwrap().0, 400);

    // The page and its assets come from the binary.
    let (status, page) = get(&base, "/").unwrap();
    assert_eq!(status, 200);
    let page = String::from_utf8(page).unwrap();
    assert!(
        page.contains("data-testid=\"join-ratio-chart\"")
            && page.contains("/assets/uPlot.iife.min.js")
    );
    let (status, js) = get(&base, "/assets/uPlot.iife.min.js").unwrap();
    assert_eq!(status, 200);
    assert!(js.starts_with(b"/*! https://github.com/leeoniya/uPlot"));
    assert_eq!(get(&base, "/assets/nope.js").unwrap().0, 404);
}

#[test]
fn a_bad_config_exits_non_zero_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("d.toml");
    for (text, says) in [
        ("poll_interval_ms = 2000\nno_such_key = 1\n", "no_such_key"),
        ("[[ps]]\nname = \"p\"\nurl = \"ftp://h:1\"\n", "http://"),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_odl"))
            .args([
                "dashboard",
                "--config",
                cfg.to_str().unwrap(),
                "--listen-addr",
                "127.0.0.1:0",
            ])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
    }
}

// ---- in the browser -----------------------------------------------------------------

/// `node` and the browser script's dependencies, or why not. With `CI` set a missing
/// piece fails the test; locally the test is skipped with the reason.
fn browser() -> Option<PathBuf> {
    let chromium = std::env::var("ODL_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let missing = if !node_ok {
        Some("node is not on PATH".to_string())
    } else if !Path::new(&chromium).exists() {
        Some(format!(
            "{chromium} does not exist (apt-get install chromium)"
        ))
    } else if !repo()
        .join("tests/browser/node_modules/playwright-core")
        .is_dir()
    {
        Some("tests/browser/node_modules is missing (cd tests/browser && npm ci)".into())
    } else {
        None
    };
    match missing {
        None => Some(repo().join("tests/browser/dashboard.mjs")),
        Some(why) if std::env::var_os("CI").is_some() => {
            panic!("browser test cannot run in CI: {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED: browser test: {why}");
            None
        }
    }
}

/// Runs the browser script; its stdout (a JSON summary) when it succeeded.
fn run_browser(script: &Path, args: &[&str], timeout: Duration) -> String {
    let mut child = Command::new("node")
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    // A thread waits on the child, so the test wakes on its exit or at the deadline.
    let pid = child.id();
    let (tx, exited) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match exited.recv_timeout(timeout) {
        Ok(s) => s.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("the browser test ran past {timeout:?}");
        }
    };
    let out = reader.join().unwrap();
    eprintln!("browser: {out}");
    assert!(
        status.success(),
        "the browser checks failed ({status}); see stderr"
    );
    out
}

#[test]
fn in_the_browser_an_unreachable_service_is_down_and_the_page_still_renders() {
    let Some(script) = browser() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (joiner, _rt) = fake_joiner();
    let (_dash, base) = dashboard_with_one_down(dir.path(), &joiner);
    let stats = dir.path().join("stats.json");
    std::fs::write(&stats, STATS).unwrap();
    let shot = repo().join("target/dashboard-down.png");
    let url = format!("{base}/");
    run_browser(
        &script,
        &[
            "down",
            "--url",
            &url,
            "--down",
            "ps-gone",
            "--up",
            "joiner-a",
            "--expect-stats",
            stats.to_str().unwrap(),
            "--screenshot",
            shot.to_str().unwrap(),
            "--timeout-secs",
            "60",
        ],
        Duration::from_secs(120),
    );
    assert!(shot.is_file());
}

/// `odl run` on free ports with its dashboard; fast publishing so versions appear.
fn start_pipeline(dir: &Path) -> Proc {
    let cfg = dir.join("run.toml");
    let text = format!(
        "data_dir = {:?}\njoiner_http_addr = \"127.0.0.1:0\"\nevents_per_sec = 20000.0\n\
         [simulate]\npaced_time_scale = 50.0\n\
         [ps]\ngrpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\n\
         [ps.odl_model_update]\nfirst_trigger_time = 1\ndense_send_interval_time = 2\nsparse_send_interval_time = 3\n\
         [serve]\nrest_addr = \"127.0.0.1:0\"\n\
         [dashboard]\nlisten_addr = \"127.0.0.1:0\"\npoll_interval_ms = 500\n",
        dir.join("data").display().to_string()
    );
    std::fs::write(&cfg, text).unwrap();
    Proc::start(&["run", "--config", cfg.to_str().unwrap()])
}

#[test]
fn in_the_browser_a_running_pipeline_shows_join_ratios_auc_and_versions_that_match_its_services() {
    let Some(script) = browser() else { return };
    let dir = tempfile::tempdir().unwrap();
    let run = start_pipeline(dir.path());
    let (mut dash, mut joiner, mut ps) = (None, None, None);
    while dash.is_none() || joiner.is_none() || ps.is_none() {
        let l = run.wait_line(Duration::from_secs(60), |l| l.contains("http://"));
        if l.contains("dashboard:") {
            dash = Some(base_url(&l));
        } else if l.contains("joiner stats:") {
            joiner = Some(base_url(&l));
        } else if l.contains("/v1/versions") {
            ps = Some(base_url(&l));
        }
    }
    let (dash, joiner, ps) = (dash.unwrap(), joiner.unwrap(), ps.unwrap());
    assert_healthy(&dash);
    let shot = repo().join("target/dashboard.png");
    let url = format!("{dash}/");
    let out = run_browser(
        &script,
        &[
            "live",
            "--url",
            &url,
            "--joiner",
            &joiner,
            "--ps",
            &ps,
            "--screenshot",
            shot.to_str().unwrap(),
            "--timeout-secs",
            "180",
        ],
        Duration::from_secs(240),
    );
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["ok"], true);
    assert!(summary["versions"].as_u64().unwrap() >= 1);
    assert!(shot.is_file());
}
