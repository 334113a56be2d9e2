//! `odl join --kafka`: the streaming joiner on a blocking thread, its HTTP routes on
//! a small tokio runtime, SIGTERM/SIGINT turned into the loop's stop flag.

use anyhow::Context;
use odl_joiner::kafka::{self, Ending, Handles};
use odl_joiner::JoinerConfig;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub fn run(config: JoinerConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    rt.block_on(serve(config))
}

async fn serve(config: JoinerConfig) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    crate::cli::cancel_on_signal(cancel.clone())?;
    let stop = Arc::new(AtomicBool::new(false));
    let handles = Handles::default();
    let listener = tokio::net::TcpListener::bind(&config.streaming.http_addr)
        .await
        .with_context(|| format!("binding the joiner's HTTP address {}", config.streaming.http_addr))?;
    let addr = listener.local_addr()?;
    let app = odl_joiner::http::router_with(handles.observations.clone(), vec![handles.recovery.collector()])
        .merge(handles.recovery.routes());
    let http_stop = CancellationToken::new();
    let server = {
        let http_stop = http_stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app).with_graceful_shutdown(async move { http_stop.cancelled().await }).await
        })
    };
    {
        let (cancel, stop) = (cancel.clone(), stop.clone());
        tokio::spawn(async move {
            cancel.cancelled().await;
            stop.store(true, Ordering::Relaxed);
        });
    }
    tracing::info!(
        brokers = %config.kafka.brokers,
        checkpoint_dir = %config.streaming.checkpoint_dir.display(),
        "kafka joiner starting"
    );
    eprintln!("odl join ready http={addr}");
    let joined = {
        let (stop, handles) = (stop.clone(), handles.clone());
        tokio::task::spawn_blocking(move || kafka::run(&config, &handles, &stop)).await
    };
    http_stop.cancel();
    let _ = server.await;
    let (ending, stats) = joined.context("the joiner thread panicked")?.context("kafka joiner")?;
    let r = handles.recovery.report();
    tracing::info!(
        ending = ?ending,
        samples = stats.samples.emitted,
        reemitted_samples = r.reemitted.samples,
        checkpoints = r.checkpoints_written,
        "odl join --kafka done"
    );
    if ending == Ending::Drained {
        println!("{}", stats.to_json());
    }
    Ok(())
}
