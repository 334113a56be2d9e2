//! What the Kafka joiner reports about its crash safety and its broker: the checkpoint
//! it restored, how many records it emits again because the previous run had emitted
//! them after its last checkpoint (at-least-once, same `sample_id`), the checkpoints it
//! writes, and broker errors. Served as `GET /v1/recovery` and as `/metrics` series
//! (JOIN.md's statistics JSON stays exactly as specified, so this is kept apart).

use crate::http::{counters, gauges};
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use serde::Serialize;
use std::sync::{Arc, Mutex};

/// Records per output topic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PerOutput {
    pub samples: u64,
    pub audit: u64,
    pub dead_letter: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RecoveryReport {
    /// Whether this run started from a checkpoint.
    pub restored: bool,
    /// Generation of the checkpoint restored (0: none).
    pub restored_generation: u64,
    /// Records the previous run emitted after that checkpoint (counted from the
    /// output topics' ends at startup); this run emits each of them again, with the
    /// same key (`sample_id` for samples and audit).
    pub reemitted: PerOutput,
    pub checkpoints_written: u64,
    pub last_checkpoint_generation: u64,
    pub last_checkpoint_bytes: u64,
    pub last_checkpoint_seconds: f64,
    /// Broker calls that failed and were retried (polls, flushes, metadata).
    pub broker_errors: u64,
    /// The last broker error while it lasts; `None` once calls succeed again.
    pub broker_unavailable: Option<String>,
}

/// Shared between the joiner loop (writes) and the HTTP routes (read). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct RecoveryObservations {
    inner: Arc<Mutex<RecoveryReport>>,
}

impl RecoveryObservations {
    pub fn update(&self, f: impl FnOnce(&mut RecoveryReport)) {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn report(&self) -> RecoveryReport {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `GET /v1/recovery`.
    pub fn routes(&self) -> Router {
        Router::new().route("/v1/recovery", get(recovery)).with_state(self.clone())
    }

    /// The `/metrics` series of this report.
    pub fn collector(&self) -> Box<dyn Collector> {
        Box::new(RecoveryCollector(self.clone()))
    }
}

async fn recovery(State(r): State<RecoveryObservations>) -> Json<RecoveryReport> {
    Json(r.report())
}

#[derive(Debug)]
struct RecoveryCollector(RecoveryObservations);

impl Collector for RecoveryCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let r = self.0.report();
        let out = |n: &str| vec![("output", n.to_string())];
        counters(
            &mut enc,
            "odl_joiner_reemitted_records",
            "Records emitted again after a restart from a checkpoint (same key), per output.",
            &[
                (out("samples"), r.reemitted.samples),
                (out("audit"), r.reemitted.audit),
                (out("dead_letter"), r.reemitted.dead_letter),
            ],
        )?;
        counters(&mut enc, "odl_joiner_checkpoints_written", "Checkpoints (state + offsets) written.", &[(
            vec![],
            r.checkpoints_written,
        )])?;
        gauges(&mut enc, "odl_joiner_checkpoint_bytes", "Size of the last checkpoint.", &[(
            vec![],
            r.last_checkpoint_bytes as f64,
        )])?;
        gauges(
            &mut enc,
            "odl_joiner_checkpoint_duration_seconds",
            "Time the last checkpoint took (flush of the outputs included).",
            &[(vec![], r.last_checkpoint_seconds)],
        )?;
        counters(&mut enc, "odl_joiner_broker_errors", "Broker calls that failed and were retried.", &[(
            vec![],
            r.broker_errors,
        )])?;
        gauges(&mut enc, "odl_joiner_broker_up", "0 while broker calls fail.", &[(
            vec![],
            r.broker_unavailable.is_none() as u8 as f64,
        )])
    }
}
