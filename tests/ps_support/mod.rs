//! Starting `odl ps` shard processes in tests: free ports, the readiness line on
//! stderr (waited for with a deadline, no sleeps), SIGTERM/SIGKILL, tiny HTTP GETs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const ODL: &str = env!("CARGO_BIN_EXE_odl");

/// A port nobody listens on right now (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Shard {
    pub child: Child,
    pub grpc: String,
    pub http: String,
    /// Every stderr line so far is forwarded here after readiness.
    pub log: mpsc::Receiver<String>,
}

/// Starts `odl ps` with `args` and waits (up to 60 s) for `odl ps ready ...`.
pub fn start(args: &[String]) -> Shard {
    let mut child = Command::new(ODL)
        .arg("ps")
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn odl ps");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix("odl ps ready ") {
                    let field = |k: &str| {
                        rest.split_whitespace()
                            .find_map(|f| f.strip_prefix(k))
                            .unwrap()
                            .to_string()
                    };
                    return Shard {
                        grpc: field("grpc="),
                        http: field("http="),
                        child,
                        log: rx,
                    };
                }
                seen.push(line);
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("odl ps never became ready; stderr:\n{}", seen.join("\n"));
            }
        }
    }
}

/// Standard args for shard `i` of `n` with a checkpoint dir and fixed gRPC port.
pub fn shard_args(
    i: u32,
    n: u32,
    grpc_port: u16,
    ckpt: &Path,
    interval_secs: u64,
    dir: &Path,
) -> Vec<String> {
    let cfg = dir.join(format!("ps-{i}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "shard_index = {i}\nshard_count = {n}\ncheckpoint_interval_secs = {interval_secs}\n"
        ),
    )
    .unwrap();
    vec![
        "--config".into(),
        cfg.display().to_string(),
        "--grpc-addr".into(),
        format!("127.0.0.1:{grpc_port}"),
        "--http-addr".into(),
        "127.0.0.1:0".into(),
        "--checkpoint-dir".into(),
        ckpt.display().to_string(),
    ]
}

impl Shard {
    /// SIGTERM and wait for the exit status (bounded).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        wait_exit(&mut self.child, Duration::from_secs(60))
    }

    /// SIGKILL: no chance to checkpoint.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.http, path)
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit in {limit:?}"
        );
        std::thread::yield_now();
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

/// Polls `cond` until it holds or `limit` passes.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

/// A minimal HTTP/1.0 GET: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

pub fn tmp_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}
