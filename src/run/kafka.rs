//! `odl run` over a broker (`transport = "kafka"`, `configs/local-kafka.toml`): the same
//! stages as the in-process pipeline, with the topics of the cluster in between. The
//! simulator produces the four event topics, the joiner runs its Kafka mode (state and
//! offsets checkpointed under `data_dir`), the trainer is one member of `trainer_group`
//! on the samples topic, and the `[ps]` and `[serve]` sections publish and follow
//! versions through the param-update topics when they say `transport = "kafka"`.

use super::{spawn_simulator, RunConfig, Streams};
use anyhow::Context;
use odl_joiner::JoinerObservations;
use odl_proto::stream::kafka::{partition_count, KafkaConfig, KafkaSource};
use odl_proto::stream::RecordSource;
use odl_trainer::train::{run_sources, RunOptions, StreamRun};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// With `max_events`, how long the joiner waits on quiet, fully read inputs before it
/// emits everything pending and ends (as at the end of a replay file), and how long the
/// trainer waits on a quiet samples topic after that.
const JOINER_DRAIN: Duration = Duration::from_secs(3);
const TRAINER_DRAIN: Duration = Duration::from_secs(15);

pub(super) fn spawn_streams(
    cfg: &RunConfig,
    model: odl_trainer::Model,
    store: Arc<odl_ps::LocalStore>,
    observations: JoinerObservations,
    cancel: CancellationToken,
) -> anyhow::Result<Streams> {
    let mut joiner_cfg = cfg.joiner.clone();
    joiner_cfg.streaming.checkpoint_dir = cfg.data_dir.join("joiner");
    if cfg.max_events > 0 {
        joiner_cfg.streaming.exit_when_idle_ms = JOINER_DRAIN.as_millis() as u64;
    }
    let topics = crate::simulate::kafka::StreamTopics {
        exposure: joiner_cfg.topics.exposure.clone(),
        click: joiner_cfg.topics.click.clone(),
        detail_click: joiner_cfg.topics.detail_click.clone(),
        feature: joiner_cfg.topics.feature.clone(),
    };
    let (kafka, partitions) = (joiner_cfg.kafka.clone(), joiner_cfg.topics.partitions);
    let open = move |cancel: &CancellationToken| {
        retry_until_cancelled(cancel, "creating the event topics", || {
            crate::simulate::kafka::KafkaRouter::create(&kafka, &topics, partitions)
        })
    };
    let simulator = spawn_simulator(cfg, open, cancel.clone());

    let joiner_stop = stop_flag(&cancel);
    let handles = odl_joiner::kafka::Handles { observations, ..Default::default() };
    let joiner_kafka = joiner_cfg.kafka.clone();
    let samples_topic = joiner_cfg.topics.samples.clone();
    let joiner = std::thread::spawn(move || -> anyhow::Result<()> {
        let (ending, stats) = odl_joiner::kafka::run(&joiner_cfg, &handles, &joiner_stop).context("kafka joiner")?;
        tracing::info!(?ending, samples = stats.samples.emitted, "odl run: joiner stopped");
        Ok(())
    });

    let stream = StreamRun {
        stop: stop_flag(&cancel),
        idle_exit: (cfg.max_events > 0).then_some(TRAINER_DRAIN),
        dedup_window: cfg.trainer_dedup_window,
        ..StreamRun::default()
    };
    let group = cfg.trainer_group.clone();
    let trainer = std::thread::spawn(move || -> anyhow::Result<()> {
        if !wait_for_topic(&joiner_kafka, &samples_topic, &stream.stop) {
            return Ok(());
        }
        let source = KafkaSource::subscribe(&joiner_kafka, &samples_topic, &group)
            .with_context(|| format!("joining group {group} on {samples_topic}"))?;
        let sources: Vec<Box<dyn RecordSource>> = vec![Box::new(source)];
        let (report, stats) = run_sources(&model, store.as_ref(), sources, &RunOptions::default(), &stream)?;
        eprintln!("odl run: trainer report {}", serde_json::to_string(&report)?);
        eprintln!("odl run: trainer skipped {} duplicate samples", stats.duplicates);
        Ok(())
    });
    Ok(Streams {
        threads: vec![("simulator", simulator), ("joiner", joiner), ("trainer", trainer)],
    })
}

/// `f` until it succeeds (a broker that is down or not there yet: warned about, tried
/// again with backoff up to 5 s); `None` once the pipeline is asked to stop.
fn retry_until_cancelled<T, E: std::fmt::Display>(
    cancel: &CancellationToken,
    what: &str,
    mut f: impl FnMut() -> Result<T, E>,
) -> anyhow::Result<Option<T>> {
    let mut backoff = Duration::from_millis(200);
    while !cancel.is_cancelled() {
        match f() {
            Ok(t) => return Ok(Some(t)),
            Err(e) => {
                tracing::warn!("odl run: {what} failed ({e}); retrying in {backoff:?}");
                let until = std::time::Instant::now() + backoff;
                while std::time::Instant::now() < until && !cancel.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    Ok(None)
}

/// A flag raised when the pipeline is asked to stop (the Kafka loops poll flags).
fn stop_flag(cancel: &CancellationToken) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let (cancel, set) = (cancel.clone(), flag.clone());
    tokio::spawn(async move {
        cancel.cancelled().await;
        set.store(true, Ordering::Relaxed);
    });
    flag
}

/// The joiner creates the samples topic; subscribing before it exists would leave the
/// trainer without partitions until librdkafka's next metadata refresh (minutes).
/// False when the pipeline was stopped first.
fn wait_for_topic(cfg: &KafkaConfig, topic: &str, stop: &AtomicBool) -> bool {
    let mut warned = false;
    while !stop.load(Ordering::Relaxed) {
        match partition_count(cfg, topic, Duration::from_secs(5)) {
            Ok(_) => return true,
            Err(e) if !warned => {
                tracing::warn!("odl run: waiting for topic {topic} ({e})");
                warned = true;
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    false
}
