//! The joiner service loop: records from a source through the operator into the
//! samples, audit and dead-letter sinks, with the statistics handed out every
//! `stats_interval_ms` and at the end. File replay, `odl run` and Kafka differ only in
//! the source and sinks they pass in.

use crate::config::JoinerConfig;
use crate::http::JoinerObservations;
use crate::operator::{Joiner, Output};
use crate::stats::JoinStats;
use crate::Result;
use odl_proto::stream::{Poll, RecordSink, RecordSource};
use std::time::{Duration, Instant};

/// Records asked of the source per poll.
const BATCH: usize = 8192;
/// How long a poll may wait on a live source before the loop checks the stats timer.
const POLL_WAIT: Duration = Duration::from_millis(200);

/// Where the joiner writes. Without a dead-letter sink, dead letters are only counted.
pub struct Sinks<'a> {
    pub samples: &'a mut dyn RecordSink,
    pub audit: &'a mut dyn RecordSink,
    pub dead_letter: Option<&'a mut dyn RecordSink>,
}

/// Runs until the source ends; returns the final statistics. `on_stats` is called
/// every stats interval and once at the end (after the sinks are flushed).
pub fn run(
    config: &JoinerConfig,
    source: &mut dyn RecordSource,
    sinks: Sinks<'_>,
    on_stats: impl FnMut(&JoinStats) -> Result<()>,
) -> Result<JoinStats> {
    run_observed(config, source, sinks, None, on_stats)
}

/// [`run`], also publishing the statistics, quality and state sizes into
/// `observations` (what the joiner's HTTP routes serve) at every stats tick.
pub fn run_observed(
    config: &JoinerConfig,
    source: &mut dyn RecordSource,
    sinks: Sinks<'_>,
    observations: Option<&JoinerObservations>,
    mut on_stats: impl FnMut(&JoinStats) -> Result<()>,
) -> Result<JoinStats> {
    let publish = |j: &Joiner| {
        if let Some(o) = observations {
            o.publish(j);
        }
    };
    let mut joiner = Joiner::new(config);
    joiner.set_observe_quality(observations.is_some());
    let Sinks { samples, audit, dead_letter } = sinks;
    let mut discard = Discard;
    let has_dead_letter = dead_letter.is_some();
    let dead_letter: &mut dyn RecordSink = match dead_letter {
        Some(d) => d,
        None => &mut discard,
    };
    let interval = Duration::from_millis(config.stats_interval_ms);
    let mut last_stats = Instant::now();
    publish(&joiner);
    on_stats(joiner.stats())?;
    loop {
        match source.poll(BATCH, POLL_WAIT)? {
            Poll::Records(records) => {
                for r in &records {
                    joiner.push_bytes(&r.value);
                }
                drain(&mut joiner, samples, audit, dead_letter)?;
                if let Some(o) = observations {
                    o.publish_stats(joiner.stats());
                }
            }
            Poll::Idle => {}
            Poll::End => break,
        }
        if last_stats.elapsed() >= interval {
            publish(&joiner);
            on_stats(joiner.stats())?;
            last_stats = Instant::now();
        }
    }
    joiner.finish();
    drain(&mut joiner, samples, audit, dead_letter)?;
    samples.flush()?;
    audit.flush()?;
    dead_letter.flush()?;
    if !has_dead_letter && stats_dead_letters(joiner.stats()) > 0 {
        tracing::warn!(
            dead_letters = stats_dead_letters(joiner.stats()),
            "malformed and late events were counted but not kept (no dead-letter sink)"
        );
    }
    source.commit()?;
    let stats = *joiner.stats();
    publish(&joiner);
    on_stats(&stats)?;
    Ok(stats)
}

fn drain(
    joiner: &mut Joiner,
    samples: &mut dyn RecordSink,
    audit: &mut dyn RecordSink,
    dead_letter: &mut dyn RecordSink,
) -> Result<()> {
    joiner.drain_ready(|out| -> Result<()> {
        match out {
            Output::Sample { key, json, audit: a } => {
                samples.send(Some(key), json)?;
                if a {
                    audit.send(Some(key), json)?;
                }
            }
            Output::DeadLetter(line) => {
                dead_letter.send(None, line)?;
            }
        }
        Ok(())
    })
}

fn stats_dead_letters(s: &JoinStats) -> u64 {
    s.malformed + s.exposure.late + s.click.late + s.detail_click.late + s.feature.late
}

/// Stands in for a missing dead-letter sink.
struct Discard;

impl RecordSink for Discard {
    fn send(&mut self, _key: Option<&[u8]>, _value: &[u8]) -> odl_proto::stream::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> odl_proto::stream::Result<()> {
        Ok(())
    }
}
