//! Cutting versions out of the parameter store, and the timers that drive it inside
//! the PS process: a full version at warm start (or restart), dense increments every
//! `dense_send_interval_time` and sparse increments every `sparse_send_interval_time`
//! after `first_trigger_time`, a periodic full version, plus rebase and rollback on
//! request. Every publish passes the gates first; a skipped sparse publish puts its
//! changed rows back so the next one carries them.

use super::config::PublishConfig;
use super::gates::{auc_gate, gate_auc, numerics_gate};
use super::payload::{self, Content, Layout, RowSet};
use super::source::{PublishSource, TableChanges};
use super::status::{now_ms, NewVersion, Registry};
use super::store::StoredVersion;
use super::{PublishError, Result};
use odl_proto::version::{GateAuc, Version, VersionKind};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often pending versions are checked against the switch timeout.
const EXPIRE_TICK: Duration = Duration::from_millis(250);

/// Why a full version is cut.
#[derive(Clone, Debug, PartialEq)]
pub enum FullCause {
    /// First start: the warm-start checkpoint (or the initial state) is version 1.
    WarmStart,
    /// The PS restarted: its restored state becomes the new base.
    Restart,
    /// `full_version_interval_time` elapsed.
    Periodic,
    /// A batch checkpoint was loaded.
    Rebase(PathBuf),
}

/// Whether this PS process cuts versions, or only hands its part to the shard that does.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Runs the timers and gates, numbers and writes versions (shard 0, or the only shard).
    Publishing,
    /// Another shard of a cluster: answers the publishing shard's part calls only.
    Part,
}

/// What a publisher reads and where it writes, besides its config.
pub struct Wiring {
    /// What versions are cut from (every shard's parameters for the publishing shard).
    pub source: Arc<dyn PublishSource>,
    /// This process's own store, which other shards' part calls read.
    pub local: Arc<dyn PublishSource>,
    pub role: Role,
    /// Kafka transport; `None`: versions reach nodes over gRPC subscriptions only.
    pub kafka: Option<super::kafka::KafkaTransport>,
}

pub struct Publisher {
    cfg: PublishConfig,
    source: Arc<dyn PublishSource>,
    local: Arc<dyn PublishSource>,
    role: Role,
    kafka: Option<super::kafka::KafkaTransport>,
    registry: Arc<Registry>,
    model_config: String,
    /// One cut at a time (timers, rebase and rollback race otherwise).
    cutting: Mutex<()>,
    /// After a rollback, publishing pauses until a rebase: serving keeps the full
    /// version it returned to, "plus nothing after it".
    held_after: Mutex<Option<Version>>,
    /// Cancelled when publishing stops, so subscription streams end and a graceful
    /// gRPC shutdown does not wait on them forever.
    closing: CancellationToken,
    /// The dense tensors of the last full or dense cut (published or skipped): an
    /// unchanged snapshot (no training since) is not published again.
    last_dense: Mutex<Option<DenseSnapshot>>,
    /// A version could not be written to Kafka: increments are held back from Kafka
    /// until a full version is written, so a node never applies an increment on top
    /// of a missing one.
    kafka_gap: std::sync::atomic::AtomicBool,
}

/// Every dense tensor by name, as the store hands them out.
type DenseSnapshot = Vec<(String, Vec<f32>)>;

fn same_dense(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((na, va), (nb, vb))| {
            na == nb
                && va.len() == vb.len()
                && va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits())
        })
}

impl Publisher {
    /// Open the version store under `store_dir` and read the model config that travels
    /// with full versions.
    pub fn open(
        cfg: PublishConfig,
        store_dir: &Path,
        source: Arc<dyn PublishSource>,
    ) -> Result<Arc<Publisher>> {
        let wiring = Wiring {
            local: source.clone(),
            source,
            role: Role::Publishing,
            kafka: None,
        };
        Self::open_wired(cfg, store_dir, wiring)
    }

    /// [`Publisher::open`] with a cluster source, a role and a transport.
    pub fn open_wired(cfg: PublishConfig, store_dir: &Path, w: Wiring) -> Result<Arc<Publisher>> {
        cfg.validate()?;
        let model_config = if cfg.extensions.model_config.is_empty() {
            String::new()
        } else {
            std::fs::read_to_string(&cfg.extensions.model_config).map_err(|e| {
                PublishError::Config(format!(
                    "cannot read extensions.model_config {}: {e}",
                    cfg.extensions.model_config
                ))
            })?
        };
        std::fs::create_dir_all(store_dir).map_err(|e| {
            PublishError::Config(format!("cannot create {}: {e}", store_dir.display()))
        })?;
        let registry = Arc::new(Registry::open(
            store_dir,
            cfg.switch_timeout_time,
            cfg.extensions.confirm_nodes.clone(),
            cfg.extensions.keep_full_versions,
        )?);
        Ok(Arc::new(Publisher {
            cfg,
            source: w.source,
            local: w.local,
            role: w.role,
            kafka: w.kafka,
            registry,
            model_config,
            cutting: Mutex::new(()),
            held_after: Mutex::new(None),
            closing: CancellationToken::new(),
            last_dense: Mutex::new(None),
            kafka_gap: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    pub fn config(&self) -> &PublishConfig {
        &self.cfg
    }

    /// This process's own store (what other shards' part calls read).
    pub fn local(&self) -> &Arc<dyn PublishSource> {
        &self.local
    }

    pub fn is_publishing(&self) -> bool {
        self.role == Role::Publishing
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Cancelled once the publisher stops: subscription streams end with it.
    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    /// End every subscription stream (the PS is shutting down).
    pub fn close(&self) {
        self.closing.cancel();
    }

    fn cut_lock(&self) -> MutexGuard<'_, ()> {
        self.cutting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn held(&self) -> Option<Version> {
        *self.held_after.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_held(&self, v: Option<Version>) {
        *self.held_after.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }

    /// The full version increments currently build on.
    pub fn base(&self) -> Result<Option<Version>> {
        Ok(self.registry.latest_full()?.map(|v| v.version()))
    }

    fn layout(
        &self,
        kind: VersionKind,
        samples_through: u64,
        created_at_ms: i64,
    ) -> impl Fn(Version, Version) -> Layout {
        let (count, strategy) = (self.cfg.update_partition_count, self.cfg.part_strategy);
        move |version, base| Layout {
            version,
            kind,
            base,
            created_at_ms,
            samples_through,
            partition_count: count,
            strategy,
        }
    }

    /// Record `content` as a new version, or as `SKIPPED` if `skip` names a reason.
    fn finish(
        &self,
        kind: VersionKind,
        content: Content,
        auc: GateAuc,
        samples_through: u64,
        skip: Option<String>,
        reason: Option<String>,
    ) -> Result<StoredVersion> {
        let created_ms = now_ms();
        let base = if kind == VersionKind::Full {
            None
        } else {
            self.base()?
        };
        let new = NewVersion {
            kind,
            base,
            reason: skip.clone().or(reason),
            rows: content.row_count(),
            samples_through,
            auc,
            created_ms,
        };
        if let Some(why) = skip {
            tracing::warn!(kind = payload::kind_str(kind), reason = %why, "publish skipped");
            return self.registry.record_skipped(new);
        }
        let layout = self.layout(kind, samples_through, created_ms);
        let t0 = std::time::Instant::now();
        let mut encode_ms = 0;
        let sv = self.registry.record_published(new, |v, b| {
            let u = payload::encode(&layout(v, b), &content);
            encode_ms = t0.elapsed().as_millis() as u64;
            u
        })?;
        self.to_kafka(&sv);
        let ms = t0.elapsed().as_millis() as u64;
        tracing::info!(
            version = sv.version().0,
            kind = payload::kind_str(kind),
            rows = sv.record.rows,
            encode_ms,
            ms,
            "published"
        );
        Ok(sv)
    }

    /// Write a published version to Kafka (with that transport). Failures are logged:
    /// the version stays `PUSH_ONLINE` (then `SWITCH_TIMEOUT`), and increments wait
    /// for the next full version.
    fn to_kafka(&self, sv: &StoredVersion) {
        use std::sync::atomic::Ordering;
        let Some(k) = &self.kafka else { return };
        if self.kafka_gap.load(Ordering::SeqCst) && !sv.is_full() {
            tracing::warn!(version = sv.version().0, "not written to kafka: an earlier version is missing there; waiting for a full version");
            return;
        }
        let t0 = std::time::Instant::now();
        let written = self
            .registry
            .payload(sv.version())
            .and_then(|p| k.write(sv.version(), &p, &self.closing));
        match written {
            Ok(a) => {
                self.kafka_gap.store(false, Ordering::SeqCst);
                tracing::info!(
                    version = a.version,
                    records = a.parts.iter().map(|p| p.records).sum::<u64>(),
                    partitions = a.parts.len(),
                    ms = t0.elapsed().as_millis() as u64,
                    "written to kafka"
                );
            }
            Err(e) => {
                self.kafka_gap.store(true, Ordering::SeqCst);
                tracing::error!(version = sv.version().0, error = %e, "writing the version to kafka failed");
            }
        }
    }

    /// Cut a full version of everything the store holds.
    pub fn cut_full(&self, cause: FullCause) -> Result<StoredVersion> {
        let _g = self.cut_lock();
        let progress = self.source.progress();
        let auc = gate_auc(&progress);
        let changes = self.source.take_changes()?;
        let read = || -> Result<Content> {
            Ok(Content {
                schema: Some(self.source.schema()?),
                model_config: self
                    .source
                    .model_config()
                    .unwrap_or_else(|| self.model_config.clone()),
                dense: self.source.dense_snapshot()?,
                rows: self.source.full_rows()?,
            })
        };
        let content = match read() {
            Ok(c) => c,
            Err(e) => {
                self.source.restore_changes(&changes);
                return Err(e);
            }
        };
        *self.last_dense.lock().unwrap_or_else(|p| p.into_inner()) = Some(content.dense.clone());
        // Warm start, restart and rebase load a model an operator chose: only the
        // numerics gate applies. A periodic cut is trained state like any increment.
        let mut skip = if cause == FullCause::Periodic {
            auc_gate(&self.cfg, auc)
        } else {
            None
        };
        if skip.is_none() {
            skip = numerics_gate(&self.cfg, &content);
        }
        if skip.is_some() {
            self.source.restore_changes(&changes);
        }
        let reason = match &cause {
            FullCause::Rebase(dir) => Some(format!("rebase from {}", dir.display())),
            _ => None,
        };
        self.finish(
            VersionKind::Full,
            content,
            auc,
            progress.samples,
            skip,
            reason,
        )
    }

    /// Publish every dense tensor. `None`: nothing to publish (no dense tensors yet,
    /// or publishing is held after a rollback).
    pub fn publish_dense(&self) -> Result<Option<StoredVersion>> {
        let _g = self.cut_lock();
        if self.held().is_some() {
            return Ok(None);
        }
        let dense = self.source.dense_snapshot()?;
        if dense.is_empty() {
            return Ok(None);
        }
        {
            let mut last = self.last_dense.lock().unwrap_or_else(|p| p.into_inner());
            if last.as_deref().is_some_and(|l| same_dense(l, &dense)) {
                return Ok(None);
            }
            *last = Some(dense.clone());
        }
        let progress = self.source.progress();
        let auc = gate_auc(&progress);
        let content = Content {
            schema: Some(self.source.schema()?),
            dense,
            ..Default::default()
        };
        let skip = auc_gate(&self.cfg, auc).or_else(|| numerics_gate(&self.cfg, &content));
        self.finish(
            VersionKind::Dense,
            content,
            auc,
            progress.samples,
            skip,
            None,
        )
        .map(Some)
    }

    /// Publish the rows changed since the previous sparse publish. `None`: no row
    /// changed (or publishing is held after a rollback).
    pub fn publish_sparse(&self) -> Result<Option<StoredVersion>> {
        let _g = self.cut_lock();
        if self.held().is_some() {
            return Ok(None);
        }
        let t0 = std::time::Instant::now();
        let changes = self.source.take_changes()?;
        if changes
            .iter()
            .all(|c| c.upserted.is_empty() && c.deleted.is_empty())
        {
            return Ok(None);
        }
        let progress = self.source.progress();
        let auc = gate_auc(&progress);
        let took = t0.elapsed();
        let content = match self.changed_rows(&changes) {
            Ok(c) => c,
            Err(e) => {
                self.source.restore_changes(&changes);
                return Err(e);
            }
        };
        let read = t0.elapsed();
        let skip = auc_gate(&self.cfg, auc).or_else(|| numerics_gate(&self.cfg, &content));
        if skip.is_some() {
            self.source.restore_changes(&changes);
        }
        tracing::debug!(
            take_ms = took.as_millis() as u64,
            read_ms = (read - took).as_millis() as u64,
            "sparse rows read"
        );
        match self.finish(
            VersionKind::Sparse,
            content,
            auc,
            progress.samples,
            skip,
            None,
        ) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                self.source.restore_changes(&changes);
                Err(e)
            }
        }
    }

    fn changed_rows(&self, changes: &[TableChanges]) -> Result<Content> {
        let schema = self.source.schema()?;
        let mut rows = Vec::new();
        for c in changes {
            let dim = schema
                .tables
                .iter()
                .find(|t| t.name == c.table)
                .map(|t| t.dim)
                .ok_or_else(|| {
                    PublishError::Source(format!("changes for undeclared table {}", c.table))
                })?;
            let (present, values) = self.source.read_rows(&c.table, &c.upserted)?;
            let mut deleted: Vec<u64> = c.deleted.iter().map(|k| k.0).collect();
            if present.len() < c.upserted.len() {
                // Changed, then evicted before this publish: a deletion for serving.
                let have: HashSet<u64> = present.iter().map(|k| k.0).collect();
                deleted.extend(c.upserted.iter().map(|k| k.0).filter(|k| !have.contains(k)));
            }
            rows.push(RowSet {
                table: c.table.clone(),
                dim,
                keys: present.iter().map(|k| k.0).collect(),
                values,
                deleted,
            });
        }
        Ok(Content {
            rows,
            ..Default::default()
        })
    }

    /// Load a batch checkpoint into the store and cut it as a new full version;
    /// publishing resumes if it was held after a rollback.
    pub fn rebase(&self, checkpoint: &Path) -> Result<StoredVersion> {
        self.source.rebase(checkpoint)?;
        let v = self.cut_full(FullCause::Rebase(checkpoint.to_path_buf()))?;
        if v.published() {
            self.set_held(None);
        }
        Ok(v)
    }

    /// Make serving return to full version `target`: its payload is published again
    /// as a new full version, and publishing holds until a rebase.
    pub fn rollback(&self, target: Version, token: Option<&str>) -> Result<StoredVersion> {
        let expected = &self.cfg.extensions.rollback_token;
        if expected.is_empty() || token != Some(expected.as_str()) {
            return Err(PublishError::Unauthorized);
        }
        let _g = self.cut_lock();
        let sv = self.registry.stored(target)?;
        if !sv.is_full() || !sv.published() {
            return Err(PublishError::NotRollbackable(
                target,
                "not a published full version".to_string(),
            ));
        }
        let old = self.registry.payload(target)?;
        let content = payload::decode(&old).ok_or_else(|| PublishError::Corrupt {
            key: format!("payload {target}"),
            message: "undecodable".into(),
        })?;
        let created_ms = now_ms();
        let samples = sv.record.samples_through;
        let new = NewVersion {
            kind: VersionKind::Full,
            base: None,
            reason: Some(format!("rollback to version {target}")),
            rows: sv.record.rows,
            samples_through: samples,
            auc: sv.record.auc,
            created_ms,
        };
        let layout = self.layout(VersionKind::Full, samples, created_ms);
        let out = self
            .registry
            .record_published(new, |v, b| payload::encode(&layout(v, b), &content))?;
        self.to_kafka(&out);
        self.set_held(Some(target));
        tracing::warn!(
            version = out.version().0,
            target = target.0,
            "rolled back; publishing held until a rebase"
        );
        Ok(out)
    }

    /// Drive publishing until `cancel`: the first full version, then the timers.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> Result<()> {
        // A cut blocked on a broker outage must see the shutdown too.
        let (closing, stop) = (self.closing.clone(), cancel.clone());
        tokio::spawn(async move {
            stop.cancelled().await;
            closing.cancel();
        });
        let r = self.clone().run_timers(cancel).await;
        self.close();
        r
    }

    async fn run_timers(self: Arc<Self>, cancel: CancellationToken) -> Result<()> {
        if !self.cfg.open {
            tracing::info!("odl_model_update.open is false: not publishing");
            cancel.cancelled().await;
            return Ok(());
        }
        let cause = if self.registry.is_empty()? {
            FullCause::WarmStart
        } else {
            FullCause::Restart
        };
        // Increments need a full version under them; with several shards the others
        // may not answer yet, so the first one is retried until it is cut.
        while !self.step(Step::Full(cause.clone())).await && self.base()?.is_none() {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        let start = tokio::time::Instant::now();
        let first = start + Duration::from_secs(self.cfg.first_trigger_time);
        let dense_every = Duration::from_secs(self.cfg.dense_send_interval_time);
        let sparse_every = Duration::from_secs(self.cfg.sparse_send_interval_time);
        let full_every = Duration::from_secs(self.cfg.extensions.full_version_interval_time);
        let (mut next_dense, mut next_sparse) = (first, first);
        let mut next_full = (!full_every.is_zero()).then(|| start + full_every);
        let mut next_expire = start;
        loop {
            let mut wake = next_dense.min(next_sparse).min(next_expire);
            if let Some(f) = next_full {
                wake = wake.min(f);
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep_until(wake) => {}
            }
            let now = tokio::time::Instant::now();
            if now >= next_expire {
                let reg = self.registry.clone();
                match tokio::task::spawn_blocking(move || reg.expire(now_ms())).await {
                    Ok(Ok(v)) if !v.is_empty() => tracing::warn!(versions = ?v, "switch timeout"),
                    Ok(Err(e)) => tracing::error!(error = %e, "switch-timeout check failed"),
                    _ => {}
                }
                next_expire = now + EXPIRE_TICK;
            }
            if next_full.is_some_and(|f| now >= f) {
                self.step(Step::Full(FullCause::Periodic)).await;
                next_full = Some(now + full_every);
                // A full version carries everything; increments restart after it.
                next_dense = next_dense.max(now + dense_every);
                next_sparse = next_sparse.max(now + sparse_every);
            }
            if now >= next_dense {
                self.step(Step::Dense).await;
                next_dense = now + dense_every;
            }
            if now >= next_sparse {
                self.step(Step::Sparse).await;
                next_sparse = now + sparse_every;
            }
        }
        self.registry.expire(now_ms())?;
        Ok(())
    }

    /// Run one publishing step off the async threads; `false` if it failed.
    async fn step(self: &Arc<Self>, step: Step) -> bool {
        let me = self.clone();
        let done = tokio::task::spawn_blocking(move || match step {
            Step::Full(cause) => me.cut_full(cause).map(Some),
            Step::Dense => me.publish_dense(),
            Step::Sparse => me.publish_sparse(),
        })
        .await;
        match done {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "publish failed");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "publish task panicked");
                false
            }
        }
    }
}

enum Step {
    Full(FullCause),
    Dense,
    Sparse,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::source::MemorySource;
    use odl_proto::params::{
        DenseSpec, ModelSchema, Optimizer, TableSpec, TaskProgress, TrainProgress,
    };
    use odl_proto::version::VersionStatus;

    fn schema() -> ModelSchema {
        let opt = Optimizer::Adagrad {
            lr: 0.1,
            initial_accumulator: 0.1,
        };
        ModelSchema {
            tables: vec![TableSpec {
                name: "emb".into(),
                dim: 2,
                optimizer: opt.clone(),
                init_std: 0.0,
            }],
            dense: vec![DenseSpec {
                name: "w".into(),
                shape: vec![2],
                optimizer: opt,
                init: vec![0.5, 0.5],
            }],
        }
    }

    fn progress(auc: f64) -> TrainProgress {
        TrainProgress {
            samples: 100,
            tasks: vec![TaskProgress {
                task: "click".into(),
                samples: 100,
                global_auc: auc,
                current_auc: auc,
            }],
        }
    }

    fn setup(cfg: PublishConfig) -> (tempfile::TempDir, Arc<MemorySource>, Arc<Publisher>) {
        let dir = tempfile::tempdir().unwrap();
        let src = Arc::new(MemorySource::new(schema()));
        let p = Publisher::open(cfg, dir.path(), src.clone()).unwrap();
        (dir, src, p)
    }

    #[test]
    fn warm_start_then_gated_increments_carry_base_rows_and_auc() {
        let (_d, src, p) = setup(PublishConfig {
            update_partition_count: 4,
            ..Default::default()
        });
        src.set_rows("emb", &[1, 2, 3], &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]);
        let full = p.cut_full(FullCause::WarmStart).unwrap();
        assert_eq!(
            (full.version(), full.record.kind, full.record.rows),
            (Version(1), VersionKind::Full, 3)
        );
        // The full version consumed the pending changes.
        assert!(p.publish_sparse().unwrap().is_none());
        src.set_rows("emb", &[2], &[9.0, 9.0]);
        src.delete_rows("emb", &[3]);
        src.set_progress(progress(0.75));
        let s = p.publish_sparse().unwrap().unwrap();
        assert_eq!(s.record.status, VersionStatus::PushOnline);
        assert_eq!(
            (s.record.kind, s.record.base, s.record.rows),
            (VersionKind::Sparse, Version(1), 2)
        );
        assert_eq!(
            s.record.auc,
            GateAuc {
                global: 0.75,
                current: 0.75
            }
        );
        assert_eq!(s.record.samples_through, 100);
        let content = payload::decode(&p.registry().payload(s.version()).unwrap()).unwrap();
        assert_eq!(content.rows[0].keys, vec![2]);
        assert_eq!(content.rows[0].deleted, vec![3]);
        // Unchanged dense tensors (no training since the full version): no version.
        assert!(p.publish_dense().unwrap().is_none());
        src.set_dense("w", vec![0.25, 0.5]);
        let d = p.publish_dense().unwrap().unwrap();
        assert_eq!(
            (d.version(), d.record.kind),
            (Version(3), VersionKind::Dense)
        );
        assert!(p.publish_dense().unwrap().is_none());
    }

    #[test]
    fn a_failed_auc_gate_skips_with_reason_and_keeps_rows_pending() {
        let (_d, src, p) = setup(PublishConfig::default());
        p.cut_full(FullCause::WarmStart).unwrap();
        src.set_rows("emb", &[5, 6], &[1.0; 4]);
        src.set_progress(progress(0.55));
        let s = p.publish_sparse().unwrap().unwrap();
        assert_eq!(s.record.status, VersionStatus::Skipped);
        assert!(s
            .record
            .reason
            .as_deref()
            .unwrap()
            .contains("global_auc_threshold"));
        assert_eq!(src.pending("emb"), 2);
        src.set_dense("w", vec![0.1, 0.1]);
        let d = p.publish_dense().unwrap().unwrap();
        assert_eq!(d.record.status, VersionStatus::Skipped);
        // Once the model is good enough, the pending rows go out.
        src.set_progress(progress(0.8));
        let s = p.publish_sparse().unwrap().unwrap();
        assert_eq!(
            (s.record.status, s.record.rows),
            (VersionStatus::PushOnline, 2)
        );
        assert_eq!(src.pending("emb"), 0);
        // A periodic full version is gated too.
        src.set_progress(progress(0.1));
        assert_eq!(
            p.cut_full(FullCause::Periodic).unwrap().record.status,
            VersionStatus::Skipped
        );
    }

    #[test]
    fn check_numerics_skips_nan_dense_and_inf_rows() {
        let (_d, src, p) = setup(PublishConfig {
            global_auc_threshold: 0.0,
            current_auc_threshold: 0.0,
            ..Default::default()
        });
        p.cut_full(FullCause::WarmStart).unwrap();
        src.set_dense("w", vec![0.1, f32::NAN]);
        let d = p.publish_dense().unwrap().unwrap();
        assert_eq!(d.record.status, VersionStatus::Skipped);
        assert_eq!(
            d.record.reason.as_deref(),
            Some("non-finite value in dense tensor w")
        );
        src.set_rows("emb", &[7], &[f32::INFINITY, 0.0]);
        let s = p.publish_sparse().unwrap().unwrap();
        assert_eq!(
            s.record.reason.as_deref(),
            Some("non-finite value in sparse table emb")
        );
        assert_eq!(src.pending("emb"), 1);
        // A full cut with the NaN is refused too, and serving keeps version 1.
        assert_eq!(
            p.cut_full(FullCause::Restart).unwrap().record.status,
            VersionStatus::Skipped
        );
        assert_eq!(p.base().unwrap(), Some(Version(1)));
    }

    #[test]
    fn rollback_needs_the_token_republishes_the_full_version_and_holds_publishing() {
        let mut cfg = PublishConfig {
            global_auc_threshold: 0.0,
            current_auc_threshold: 0.0,
            ..Default::default()
        };
        cfg.extensions.rollback_token = "s3cret".into();
        let (_d, src, p) = setup(cfg);
        src.set_rows("emb", &[1], &[1.0, 1.0]);
        p.cut_full(FullCause::WarmStart).unwrap();
        src.set_rows("emb", &[1], &[2.0, 2.0]);
        p.publish_sparse().unwrap().unwrap();
        assert!(matches!(
            p.rollback(Version(1), None),
            Err(PublishError::Unauthorized)
        ));
        assert!(matches!(
            p.rollback(Version(1), Some("nope")),
            Err(PublishError::Unauthorized)
        ));
        assert!(matches!(
            p.rollback(Version(2), Some("s3cret")),
            Err(PublishError::NotRollbackable(..))
        ));
        assert!(matches!(
            p.rollback(Version(9), Some("s3cret")),
            Err(PublishError::UnknownVersion(_))
        ));
        let r = p.rollback(Version(1), Some("s3cret")).unwrap();
        assert_eq!(
            (r.version(), r.record.kind, r.record.base),
            (Version(3), VersionKind::Full, Version(3))
        );
        assert_eq!(r.record.reason.as_deref(), Some("rollback to version 1"));
        let c = payload::decode(&p.registry().payload(Version(3)).unwrap()).unwrap();
        assert_eq!(c.rows[0].values, vec![1.0, 1.0]);
        src.set_rows("emb", &[1], &[3.0, 3.0]);
        assert!(p.publish_sparse().unwrap().is_none());
        assert!(p.publish_dense().unwrap().is_none());
        // In-memory sources cannot rebase: the error surfaces, the hold stays.
        assert!(p.rebase(Path::new("/nonexistent")).is_err());
        assert!(p.publish_sparse().unwrap().is_none());
    }

    #[test]
    fn the_local_store_publishes_changed_rows_with_the_weights_it_serves() {
        use odl_proto::hashing::FeatureId;
        use odl_proto::params::ParamRead;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::LocalStore::default());
        store.declare_schema(&schema()).unwrap();
        store
            .push_rows("emb", &[FeatureId(1), FeatureId(2)], &[0.5, -0.5, 1.0, 1.0])
            .unwrap();
        let cfg = PublishConfig {
            global_auc_threshold: 0.0,
            current_auc_threshold: 0.0,
            ..Default::default()
        };
        let p = Publisher::open(cfg, dir.path(), store.clone()).unwrap();
        let full = p.cut_full(FullCause::WarmStart).unwrap();
        assert_eq!(full.record.rows, 2);
        let c = payload::decode(&p.registry().payload(full.version()).unwrap()).unwrap();
        assert_eq!(c.schema.as_ref().unwrap().tables[0].name, "emb");
        assert_eq!(c.dense.len(), 1);
        store
            .push_rows("emb", &[FeatureId(3)], &[0.25, 0.25])
            .unwrap();
        let s = p.publish_sparse().unwrap().unwrap();
        let c = payload::decode(&p.registry().payload(s.version()).unwrap()).unwrap();
        assert_eq!(c.rows[0].keys, vec![3]);
        let mut want = [0f32; 2];
        store
            .pull_sparse("emb", &[FeatureId(3)], &mut want)
            .unwrap();
        assert_eq!(c.rows[0].values, want.to_vec());
    }

    #[tokio::test]
    async fn timers_publish_the_full_version_then_dense_and_sparse_increments() {
        let cfg = PublishConfig {
            global_auc_threshold: 0.0,
            current_auc_threshold: 0.0,
            first_trigger_time: 0,
            dense_send_interval_time: 1,
            sparse_send_interval_time: 1,
            switch_timeout_time: 3600,
            ..Default::default()
        };
        let (_d, src, p) = setup(cfg);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(p.clone().run(cancel.clone()));
        let reg = p.registry().clone();
        let wait_for = |n: usize| {
            let reg = reg.clone();
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                while tokio::time::Instant::now() < deadline {
                    if reg.list().unwrap().len() >= n {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                panic!("no {n} versions");
            }
        };
        wait_for(1).await;
        assert_eq!(reg.list().unwrap()[0].kind, VersionKind::Full);
        // Training changes the dense tensors and some rows: the timers publish both.
        src.set_dense("w", vec![0.7, 0.7]);
        src.set_rows("emb", &[5], &[1.0, 1.0]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let kinds: Vec<VersionKind> = reg.list().unwrap().iter().map(|v| v.kind).collect();
            if kinds.contains(&VersionKind::Dense) && kinds.contains(&VersionKind::Sparse) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no dense and sparse versions: {kinds:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Nothing changed since: no further versions, however long the timers run.
        let n = reg.list().unwrap().len();
        assert!(n <= 3, "{n}");
        cancel.cancel();
        task.await.unwrap().unwrap();
    }
}
