//! Wiring for benchmarks and tests of publishing and serving: a publisher with its
//! gRPC service in this process (over any [`PublishSource`]), and `odl serve` child
//! processes on free loopback ports, killed when dropped.

use anyhow::{bail, Context};
use odl_ps::publish::service::PublishService;
use odl_ps::publish::{PublishConfig, PublishSource, Publisher, Role, Wiring};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A publisher serving gRPC on a free loopback port, on its own runtime.
pub struct LocalPublisher {
    pub publisher: Arc<Publisher>,
    pub grpc_addr: SocketAddr,
    cancel: CancellationToken,
    runtime: Option<tokio::runtime::Runtime>,
}

impl LocalPublisher {
    /// Open a publisher on `source` (versions under `store_dir`) and serve its gRPC
    /// API. `timers`: also run the publishing timers (else the caller cuts versions).
    pub fn start(
        cfg: PublishConfig,
        store_dir: &Path,
        source: Arc<dyn PublishSource>,
        timers: bool,
    ) -> anyhow::Result<LocalPublisher> {
        let wiring = Wiring {
            local: source.clone(),
            source,
            role: Role::Publishing,
            kafka: None,
        };
        Self::start_wired(cfg, store_dir, wiring, timers)
    }

    /// [`LocalPublisher::start`] with a chosen wiring (e.g. the Kafka transport).
    pub fn start_wired(
        cfg: PublishConfig,
        store_dir: &Path,
        wiring: Wiring,
        timers: bool,
    ) -> anyhow::Result<LocalPublisher> {
        let publisher = Publisher::open_wired(cfg, store_dir, wiring)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let cancel = CancellationToken::new();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let grpc_addr = listener.local_addr()?;
        let svc = PublishService::new(publisher.clone()).into_server();
        let c = cancel.clone();
        runtime.spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let r = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, c.cancelled())
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "publisher gRPC server failed");
            }
        });
        if timers {
            runtime.spawn(publisher.clone().run(cancel.clone()));
        }
        Ok(LocalPublisher {
            publisher,
            grpc_addr,
            cancel,
            runtime: Some(runtime),
        })
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }
}

impl Drop for LocalPublisher {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.publisher.close();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// An `odl serve` child process; killed on drop.
pub struct ServeProcess {
    pub child: Child,
    pub rest_addr: String,
}

impl ServeProcess {
    /// Start `exe serve` with `args` and `--rest-addr 127.0.0.1:0`, and wait (bounded)
    /// for the address it bound.
    pub fn spawn(exe: &Path, args: &[&str]) -> anyhow::Result<ServeProcess> {
        let mut child = Command::new(exe)
            .arg("serve")
            .args(["--rest-addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(l)) = lines.next() {
                let _ = tx.send(l);
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                bail!("odl serve did not report its address within 30 s");
            }
        };
        let rest_addr = line
            .rsplit("http://")
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        Ok(ServeProcess { child, rest_addr })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in bytes (Linux `/proc`), if readable.
    pub fn rss_bytes(&self) -> Option<u64> {
        proc_rss(self.pid())
    }

    /// CPU seconds (user + system) the process used so far (Linux `/proc`).
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        let after = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some(ticks / 100.0)
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn proc_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Poll `f` every 10 ms until it returns `Some`, or fail after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
