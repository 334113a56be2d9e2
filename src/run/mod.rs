//! `odl run`: the whole pipeline in one process — simulator (paced), joiner, trainer
//! with an in-process parameter-server shard and its publisher, one serving node — on
//! the default addresses, wired by in-process channels behind the same stream traits
//! Kafka implements.
//!
//! Shutdown (SIGINT/SIGTERM, or `max_events` reached): the simulator stops, its channel
//! closes, the joiner flushes what it holds, the trainer drains the samples, then the
//! shard writes its final checkpoint and the servers stop. Exit 0.

pub mod config;
mod dashboard;
mod kafka;
mod versions;

use anyhow::Context;
use odl_joiner::JoinerObservations;
use odl_proto::params::ParamStore;
use odl_proto::stream::{channel, file::FileSink, RecordSink, RecordSource, StreamError};
use odl_ps::server::Listeners;
use odl_ps::shard::Shard;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use config::RunConfig;

/// Records in flight between two stages: enough to smooth bursts, small enough that
/// a stalled stage pushes back on the simulator instead of filling memory.
const CHANNEL_CAPACITY: usize = 65_536;

pub fn run(cfg: RunConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data_dir {}", cfg.data_dir.display()))?;
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let cancel = CancellationToken::new();
    rt.block_on(async { crate::cli::cancel_on_signal(cancel.clone()) })?;
    rt.block_on(pipeline(cfg, cancel))
}

async fn pipeline(mut cfg: RunConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    let model = odl_trainer::Model::from_config(&cfg.model).context("model config")?;
    if cfg.ps.checkpoint_dir.as_os_str().is_empty() {
        cfg.ps.checkpoint_dir = cfg.data_dir.join("ps");
    }
    let ps_cfg = cfg.ps.clone();
    let shard = tokio::task::spawn_blocking(move || Shard::open(ps_cfg))
        .await?
        .context("opening the parameter-server shard")?;
    let store = shard.store();
    store.set_attribute(
        crate::cli::train::MODEL_CONFIG_ATTRIBUTE,
        &serde_json::to_string(model.config())?,
    );
    store.declare(model.schema()).context("declaring the model on the store")?;
    let listeners = Listeners::bind(&cfg.ps.grpc_addr, &cfg.ps.http_addr).await?;
    let (grpc, http) = listeners.addrs()?;
    let serve_listener = tokio::net::TcpListener::bind(&cfg.serve.rest_addr)
        .await
        .with_context(|| format!("binding serving REST {}", cfg.serve.rest_addr))?;
    let rest = serve_listener.local_addr()?;
    cfg.serve.ps_grpc = format!("http://{grpc}");
    let observations = JoinerObservations::default();
    let stats_listener = tokio::net::TcpListener::bind(&cfg.joiner_http_addr)
        .await
        .with_context(|| format!("binding joiner HTTP {}", cfg.joiner_http_addr))?;
    let joiner_addr = stats_listener.local_addr()?;

    let servers = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(named("parameter server", shard.run(listeners, servers.clone())));
    tasks.spawn(named(
        "serving node",
        crate::serve::run(cfg.serve.clone(), serve_listener, servers.clone()),
    ));
    let joiner_app = odl_joiner::http::router(observations.clone());
    let stop = servers.clone();
    tasks.spawn(named(
        "joiner http",
        async move {
            axum::serve(stats_listener, joiner_app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        },
    ));

    let dashboard_cfg = dashboard::for_pipeline(cfg.dashboard.clone(), joiner_addr, http, rest);
    let dashboard_addr = match dashboard::bind(&dashboard_cfg).await {
        Some(l) => {
            let addr = l.local_addr()?;
            tasks.spawn(named("dashboard", crate::dashboard::serve(dashboard_cfg, l, servers.clone())));
            Some(addr)
        }
        None => None,
    };

    eprintln!("odl run: pipeline up (data in {})", cfg.data_dir.display());
    if let Some(addr) = dashboard_addr {
        eprintln!("  dashboard:        http://{addr}/");
    }
    eprintln!("  parameter server: versions http://{http}/v1/versions (gRPC {grpc})");
    eprintln!("  joiner stats:     http://{joiner_addr}/stats (also /v1/quality, /metrics)");
    eprintln!("  serving node:     http://{rest}/v1/models/{}", cfg.serve.model_name);
    eprintln!(
        "  predict:          curl -s -X POST http://{rest}/v1/models/{}:predict -d '{{\"instances\": [{{\"item_cat\": \"c3\", \"user_segment\": \"s1\", \"device\": \"ios\"}}]}}'",
        cfg.serve.model_name
    );

    let streams = match cfg.transport {
        config::Transport::Channel => spawn_streams(&cfg, model, store.clone(), observations.clone(), cancel.clone())?,
        config::Transport::Kafka => kafka::spawn_streams(&cfg, model, store.clone(), observations.clone(), cancel.clone())?,
    };
    let progress = tokio::spawn(log_progress(
        observations.clone(),
        store.clone(),
        http,
        Duration::from_secs(cfg.progress_interval_secs.max(1)),
        cancel.clone(),
    ));
    let drained = tokio::task::spawn_blocking(move || streams.join()).await?;
    cancel.cancel();
    progress.abort();
    servers.cancel();
    let mut failed = drained.err();
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r? {
            failed.get_or_insert(e);
        }
    }
    match failed {
        Some(e) => Err(e),
        None => {
            eprintln!("odl run: stopped cleanly");
            Ok(())
        }
    }
}

async fn named<F>(what: &'static str, f: F) -> anyhow::Result<()>
where
    F: std::future::Future,
    F::Output: IntoAnyhow,
{
    f.await.into_anyhow().with_context(|| format!("{what} failed"))
}

/// The services' own error types, for [`named`].
trait IntoAnyhow {
    fn into_anyhow(self) -> anyhow::Result<()>;
}
impl<E: Into<anyhow::Error>> IntoAnyhow for Result<(), E> {
    fn into_anyhow(self) -> anyhow::Result<()> {
        self.map_err(Into::into)
    }
}

/// The three CPU-bound stages, each on its own thread.
struct Streams {
    threads: Vec<(&'static str, std::thread::JoinHandle<anyhow::Result<()>>)>,
}

impl Streams {
    /// Waits for every stage; the first failure wins.
    fn join(self) -> anyhow::Result<()> {
        let mut first = None;
        for (name, t) in self.threads {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("{name} panicked")))
                .with_context(|| format!("{name} failed"));
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

fn spawn_streams(
    cfg: &RunConfig,
    model: odl_trainer::Model,
    store: Arc<odl_ps::LocalStore>,
    observations: JoinerObservations,
    cancel: CancellationToken,
) -> anyhow::Result<Streams> {
    let (events_tx, mut events_rx) = channel::channel("events", CHANNEL_CAPACITY);
    let (samples_tx, samples_rx) = channel::channel("samples", CHANNEL_CAPACITY);
    let audit_path = cfg.data_dir.join("audit.jsonl").display().to_string();
    let dead_path = cfg.data_dir.join("dead-letter.jsonl").display().to_string();
    let mut audit = FileSink::create(&audit_path)?;
    let mut dead = FileSink::create(&dead_path)?;

    let simulator = spawn_simulator(cfg, move |_: &CancellationToken| Ok(Some(events_tx)), cancel.clone());

    let joiner_cfg = cfg.joiner.clone();
    let joiner = std::thread::spawn(move || -> anyhow::Result<()> {
        let mut samples = samples_tx;
        let sinks = odl_joiner::service::Sinks {
            samples: &mut samples,
            audit: &mut audit,
            dead_letter: Some(&mut dead),
        };
        odl_joiner::service::run_observed(&joiner_cfg, &mut events_rx, sinks, Some(&observations), |_| Ok(()))?;
        Ok(())
    });

    let trainer = std::thread::spawn(move || -> anyhow::Result<()> {
        let source: Box<dyn RecordSource> = Box::new(samples_rx);
        let opts = odl_trainer::train::RunOptions::default();
        let (report, _) = odl_trainer::train::run_source(&model, store.as_ref(), source, &opts)?;
        eprintln!("odl run: trainer report {}", serde_json::to_string(&report)?);
        Ok(())
    });
    Ok(Streams {
        threads: vec![("simulator", simulator), ("joiner", joiner), ("trainer", trainer)],
    })
}

/// The paced simulator on its own thread, writing to the sink `open` makes until
/// `max_events` or until the pipeline is asked to stop. `open` runs on that thread (a
/// broker that does not answer holds up only the simulator); `None` from it means the
/// pipeline stopped first.
fn spawn_simulator<S, F>(cfg: &RunConfig, open: F, cancel: CancellationToken) -> std::thread::JoinHandle<anyhow::Result<()>>
where
    S: RecordSink + 'static,
    F: FnOnce(&CancellationToken) -> anyhow::Result<Option<S>> + Send + 'static,
{
    let sim_cfg = cfg.simulate.clone();
    let opts = crate::simulate::SimOptions {
        seed: cfg.seed,
        events: if cfg.max_events == 0 { u64::MAX } else { cfg.max_events },
        rate: (cfg.events_per_sec > 0.0).then_some(cfg.events_per_sec),
    };
    std::thread::spawn(move || -> anyhow::Result<()> {
        let Some(sink) = open(&cancel)? else { return Ok(()) };
        let mut sink = StopOnCancel { inner: sink, cancel };
        match crate::simulate::generate(&sim_cfg, &opts, &mut sink, None) {
            Ok(_) => Ok(()),
            Err(_) if sink.cancel.is_cancelled() => Ok(()),
            Err(e) => Err(e.into()),
        }
    })
}

/// Ends the simulator's stream when the pipeline is asked to stop: the next send fails,
/// the simulator returns, and the closed channel tells the joiner to flush.
struct StopOnCancel<S> {
    inner: S,
    cancel: CancellationToken,
}

impl<S: RecordSink> RecordSink for StopOnCancel<S> {
    fn send(&mut self, key: Option<&[u8]>, value: &[u8]) -> odl_proto::stream::Result<()> {
        if self.cancel.is_cancelled() {
            return Err(StreamError::Closed { name: "events".into() });
        }
        self.inner.send(key, value)
    }
    fn flush(&mut self) -> odl_proto::stream::Result<()> {
        self.inner.flush()
    }
}

/// One line every interval: what the joiner did, how the model learns, what serving has.
async fn log_progress(
    observations: JoinerObservations,
    store: Arc<odl_ps::LocalStore>,
    ps_http: std::net::SocketAddr,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let s = observations.stats();
        let received = s.exposure.received + s.click.received + s.detail_click.received + s.feature.received;
        let progress = store.merged_progress();
        let aucs: Vec<String> = progress
            .tasks
            .iter()
            .map(|t| format!("{} auc {:.4}/{:.4}", t.task, t.global_auc, t.current_auc))
            .collect();
        let versions = crate::run::versions::version_summary(ps_http).await;
        eprintln!(
            "odl run: events {received}, samples {}, trained {}, {}, versions {versions}",
            s.samples.emitted,
            progress.samples,
            if aucs.is_empty() { "auc n/a".to_string() } else { aucs.join(", ") },
        );
    }
}
