//! `odl ps`: one shard's lifecycle. [`Shard::open`] builds the store — resuming from
//! the shard's own checkpoint if there is one, else warm-starting from the configured
//! checkpoints (re-sharded on load), else empty — and [`Shard::run`] serves it while
//! checkpointing every `checkpoint_interval_secs` and sweeping TTL-expired rows, then
//! writes a last checkpoint when the shutdown token is cancelled (SIGINT/SIGTERM).

use crate::checkpoint;
use crate::config::PsConfig;
use crate::error::{PsError, Result};
use crate::local::LocalStore;
use crate::publish::cluster::ClusterSource;
use crate::publish::kafka::KafkaTransport;
use crate::publish::{Role, Transport, Wiring};
use crate::routing::ShardId;
use crate::server::{self, Listeners};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Where the store's parameters came from, for the startup log and tests.
#[derive(Clone, Debug, PartialEq)]
pub enum Origin {
    Empty,
    /// Resumed from the shard's own checkpoint.
    Resumed(PathBuf),
    /// Warm-started from these checkpoints.
    WarmStart(Vec<PathBuf>),
}

pub struct Shard {
    config: PsConfig,
    id: ShardId,
    store: Arc<LocalStore>,
    origin: Origin,
}

impl Shard {
    /// Validates the config and loads the store (blocking: a large checkpoint takes a
    /// while; call before serving).
    pub fn open(config: PsConfig) -> Result<Shard> {
        config.validate()?;
        let id = config
            .shard()
            .ok_or_else(|| PsError::invalid("config: bad shard index/count"))?;
        let store = LocalStore::new(config.store_options());
        let origin = match config.checkpoint_dir() {
            Some(dir) if checkpoint::exists(dir) => {
                store.load_from(dir)?;
                Origin::Resumed(dir.to_path_buf())
            }
            _ if !config.warm_start.is_empty() => {
                for d in &config.warm_start {
                    store.load_from(d)?;
                }
                Origin::WarmStart(config.warm_start.clone())
            }
            _ => Origin::Empty,
        };
        Ok(Shard {
            config,
            id,
            store: Arc::new(store),
            origin,
        })
    }

    pub fn store(&self) -> Arc<LocalStore> {
        self.store.clone()
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    pub fn id(&self) -> ShardId {
        self.id
    }

    /// Serves until `shutdown` is cancelled, then writes a final checkpoint.
    pub async fn run(self, listeners: Listeners, shutdown: CancellationToken) -> Result<()> {
        let interval = Duration::from_secs(self.config.checkpoint_interval_secs);
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(dir) = self.config.checkpoint_dir().map(|d| d.to_path_buf()) {
            let store = self.store.clone();
            let stop = shutdown.clone();
            tasks.spawn(async move {
                let mut tick =
                    tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                // A checkpoint slower than the interval must not trigger a burst of
                // catch-up checkpoints.
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {
                            // Failures are logged and retried at the next tick: serving goes on.
                            let _ = save(store.clone(), dir.clone()).await;
                        }
                    }
                }
            });
        }
        if let Some(ttl) = self.store.options().ttl {
            let store = self.store.clone();
            let stop = shutdown.clone();
            let every = (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
            tasks.spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {
                            let s = store.clone();
                            if let Ok(n) = tokio::task::spawn_blocking(move || s.evict_expired()).await {
                                if n > 0 {
                                    tracing::info!(rows = n, "evicted rows past their ttl");
                                }
                            }
                        }
                    }
                }
            });
        }
        let publisher = match self.open_publisher() {
            Ok(p) => p,
            Err(e) => {
                shutdown.cancel();
                while tasks.join_next().await.is_some() {}
                return Err(e);
            }
        };
        if let Some(p) = publisher.clone() {
            let stop = shutdown.clone();
            tasks.spawn(async move {
                if !p.is_publishing() {
                    tracing::info!(
                        "publishing: shard 0 cuts versions; this shard hands it its part"
                    );
                    stop.cancelled().await;
                    p.close();
                    return;
                }
                if let Err(e) = p.run(stop.clone()).await {
                    tracing::error!(error = %e, "publisher failed");
                    stop.cancel();
                }
            });
        }
        let served = server::serve_with_publisher(
            self.store.clone(),
            self.id,
            listeners,
            shutdown.clone(),
            publisher,
        )
        .await;
        shutdown.cancel();
        while tasks.join_next().await.is_some() {}
        let saved = match self.config.checkpoint_dir() {
            Some(dir) => save(self.store.clone(), dir.to_path_buf())
                .await
                .map(|_| ()),
            None => Ok(()),
        };
        served?;
        saved
    }
}

impl Shard {
    /// The publisher of `odl_model_update` (PUBLISH.md), its versions in
    /// `extensions.store_dir`, else next to the checkpoint directory.
    fn open_publisher(&self) -> Result<Option<Arc<crate::publish::Publisher>>> {
        let cfg = &self.config.odl_model_update;
        let dir = if !cfg.extensions.store_dir.is_empty() {
            PathBuf::from(&cfg.extensions.store_dir)
        } else if let Some(c) = self.config.checkpoint_dir() {
            let mut d = c.as_os_str().to_owned();
            d.push("-versions");
            PathBuf::from(d)
        } else {
            let d = std::env::temp_dir().join(format!("odl-ps-versions-{}", std::process::id()));
            tracing::warn!(dir = %d.display(), "no checkpoint_dir nor store_dir: version history is not kept across restarts");
            d
        };
        let err = |e: crate::publish::PublishError| PsError::Internal(format!("publisher: {e}"));
        let local: Arc<dyn crate::publish::PublishSource> = self.store.clone();
        let cluster = !cfg.extensions.shard_grpc.is_empty() && self.id.count > 1;
        let (source, role): (Arc<dyn crate::publish::PublishSource>, _) = match cluster {
            false => {
                if self.id.count > 1 {
                    tracing::warn!("several shards but no odl_model_update.extensions.shard_grpc: this shard publishes only its own rows");
                }
                (local.clone(), Role::Publishing)
            }
            true if self.id.index == 0 => {
                let c = ClusterSource::new(local.clone(), self.id, &cfg.extensions.shard_grpc)
                    .map_err(err)?;
                (Arc::new(c), Role::Publishing)
            }
            true => (local.clone(), Role::Part),
        };
        let kafka = match (cfg.extensions.transport, role) {
            (Transport::Kafka, Role::Publishing) => Some(
                KafkaTransport::new(
                    &self.config.kafka,
                    &cfg.extensions.update_topic,
                    &cfg.extensions.control_topic,
                    cfg.update_partition_count,
                )
                .map_err(err)?,
            ),
            _ => None,
        };
        let wiring = Wiring {
            source,
            local,
            role,
            kafka,
        };
        let p = crate::publish::Publisher::open_wired(cfg.clone(), &dir, wiring).map_err(err)?;
        Ok(Some(p))
    }
}

/// Writes a checkpoint off the async threads and logs the outcome.
async fn save(store: Arc<LocalStore>, dir: PathBuf) -> Result<()> {
    let t0 = Instant::now();
    let d = dir.clone();
    let r = tokio::task::spawn_blocking(move || store.save_checkpoint(&d))
        .await
        .map_err(|e| PsError::Internal(format!("checkpoint task: {e}")))
        .and_then(|r| r);
    match &r {
        Ok(m) => tracing::info!(
            dir = %dir.display(),
            rows = m.rows.values().sum::<u64>(),
            ms = t0.elapsed().as_millis() as u64,
            "checkpoint written"
        ),
        Err(e) => tracing::error!(dir = %dir.display(), error = %e, "checkpoint failed"),
    }
    r.map(|_| ())
}
