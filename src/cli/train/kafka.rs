//! A cluster worker on the samples topic (`source = "kafka"`): each training thread is
//! its own member of the workers' consumer group, so the group spreads the topic's
//! partitions over every thread of every worker and moves them when one comes or goes.
//! The loop itself (dedup, commit after push, outage backoff) is
//! `odl_trainer::train::run_sources`; this file wires it to the broker, the signals and
//! the worker's HTTP view.

use super::http::WorkerObservations;
use anyhow::Context;
use odl_proto::params::ParamStore;
use odl_proto::stream::kafka::{partition_count, KafkaSource};
use odl_proto::stream::{Poll, RecordSource};
use odl_trainer::train::{run_sources, Report, RunOptions, RunStats, StreamRun};
use odl_trainer::worker_config::TrainerConfig;
use odl_trainer::Model;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub fn train(
    tc: &TrainerConfig,
    model: &Model,
    store: &dyn ParamStore,
    opts: &RunOptions,
    obs: &Arc<WorkerObservations>,
    idle_exit: Option<Duration>,
) -> anyhow::Result<(Report, RunStats)> {
    let stream = StreamRun {
        idle_exit,
        dedup_window: tc.dedup_window,
        ..StreamRun::default()
    };
    let _signals = stop_on_signal(&stream)?;
    obs.follow_stream(tc.threads, stream.duplicates.clone());
    wait_for_topic(tc, obs, &stream);
    let mut sources: Vec<Box<dyn RecordSource>> = Vec::with_capacity(tc.threads);
    for member in 0..tc.threads {
        let mut inner = KafkaSource::subscribe(&tc.kafka, &tc.samples_topic, &tc.group)
            .with_context(|| format!("cannot join group {} on {}", tc.group, tc.samples_topic))?;
        inner.set_commit_interval(tc.commit_interval());
        sources.push(Box::new(Member { inner, member, obs: obs.clone() }));
    }
    eprintln!(
        "odl train worker {}: consuming {} as {} member(s) of group {}",
        tc.worker, tc.samples_topic, tc.threads, tc.group
    );
    run_sources(model, store, sources, opts, &stream)
        .with_context(|| format!("training on topic {} failed", tc.samples_topic))
}

/// Subscribing to a topic that does not exist yet (workers started before the joiner
/// created it) would leave the members without partitions until librdkafka's next
/// metadata refresh, minutes later: wait for it instead, not ready meanwhile.
fn wait_for_topic(tc: &TrainerConfig, obs: &WorkerObservations, stream: &StreamRun) {
    let mut logged = false;
    while !stream.stop.load(Ordering::Relaxed) {
        match partition_count(&tc.kafka, &tc.samples_topic, Duration::from_secs(5)) {
            Ok(_) => {
                obs.set_broker(Ok(()));
                return;
            }
            Err(e) => {
                if !logged {
                    tracing::warn!("waiting for topic {} ({e})", tc.samples_topic);
                    logged = true;
                }
                obs.set_broker(Err(format!("waiting for topic {}: {e}", tc.samples_topic)));
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// SIGTERM/SIGINT set the run's stop flag: each thread finishes its batch, commits,
/// and the worker writes its report and exits 0. The runtime lives as long as the run.
fn stop_on_signal(stream: &StreamRun) -> anyhow::Result<tokio::runtime::Runtime> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("worker-signals")
        .enable_all()
        .build()
        .context("starting the signal runtime")?;
    let token = tokio_util::sync::CancellationToken::new();
    rt.block_on(async { crate::cli::cancel_on_signal(token.clone()) })?;
    let stop = stream.stop.clone();
    rt.spawn(async move {
        token.cancelled().await;
        stop.store(true, Ordering::Relaxed);
    });
    Ok(rt)
}

/// One group member, telling the worker's HTTP view which partitions it owns and
/// whether the broker answers.
struct Member {
    inner: KafkaSource,
    member: usize,
    obs: Arc<WorkerObservations>,
}

impl RecordSource for Member {
    fn poll(&mut self, max: usize, timeout: Duration) -> odl_proto::stream::Result<Poll> {
        let polled = self.inner.poll(max, timeout);
        self.obs.set_partitions(self.member, self.inner.assignment());
        self.obs.set_broker(polled.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        polled
    }

    fn commit(&mut self) -> odl_proto::stream::Result<()> {
        self.inner.commit()
    }
}
