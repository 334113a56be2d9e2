//! A serving node's live state and its subscription to the PS: versions arrive as
//! header, dense tensors, row chunks and an end marker; each is built aside
//! ([`ServedVersion`]) and swapped in with one pointer store, then confirmed. On
//! (re)connect the node asks for the version after the one it holds, so the PS sends
//! the increments it missed or, if those are gone, the newest full version and the
//! increments after it.

use super::config::ServeConfig;
use super::state::ServedVersion;
use anyhow::{anyhow, bail, Context};
use odl_proto::publish_rpc::publisher_client::PublisherClient;
use odl_proto::publish_rpc::{update::Body, ConfirmRequest, Header, SubscribeRequest, Update};
use odl_proto::version::Version;
use odl_ps::publish::payload::{bytes_f32, bytes_u64};
use odl_trainer::{Model, ModelConfig};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// How far behind the PS the node is.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Lag {
    pub versions: u64,
    pub seconds: f64,
}

/// Build a model from a model config's text: JSON with every key (as checkpoints
/// carry it) or TOML laid over the trainer's defaults like `--model-config`.
pub fn model_from_text(text: &str) -> anyhow::Result<Model> {
    let cfg: ModelConfig = match serde_json::from_str(text) {
        Ok(c) => c,
        Err(json_err) => {
            let mut base: toml::Table = odl_trainer::config::DEFAULT_MODEL_TOML.parse()?;
            let top: toml::Table = text
                .parse()
                .map_err(|e| anyhow!("model config is neither JSON ({json_err}) nor TOML ({e})"))?;
            overlay(&mut base, top);
            toml::Value::Table(base)
                .try_into()
                .context("model config")?
        }
    };
    cfg.validate()?;
    Ok(Model::from_config(&cfg)?)
}

fn overlay(base: &mut toml::Table, top: toml::Table) {
    for (k, v) in top {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => overlay(b, t),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

pub struct Node {
    pub cfg: ServeConfig,
    pub node_id: String,
    current: RwLock<Option<Arc<ServedVersion>>>,
    lag: Mutex<Lag>,
    /// The model of `cfg.model_config`, for versions that carry none.
    fallback: Option<Arc<Model>>,
}

impl Node {
    pub fn new(cfg: ServeConfig, node_id: String) -> anyhow::Result<Node> {
        let fallback = if cfg.model_config.is_empty() {
            None
        } else {
            let cfg = ModelConfig::load(Some(Path::new(&cfg.model_config)))?;
            Some(Arc::new(Model::from_config(&cfg)?))
        };
        Ok(Node {
            cfg,
            node_id,
            current: RwLock::new(None),
            lag: Mutex::new(Lag::default()),
            fallback,
        })
    }

    /// The version requests are answered with (one pointer load).
    pub fn current(&self) -> Option<Arc<ServedVersion>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn lag(&self) -> Lag {
        *self.lag.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn install(&self, v: ServedVersion) {
        let v = Arc::new(v);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(v);
    }

    fn note_latest(&self, h: &Header, applied: &ServedVersion) {
        let versions = h.latest.saturating_sub(applied.version.0);
        let seconds = if versions == 0 {
            0.0
        } else {
            (h.latest_created_at_ms - applied.created_at_ms).max(0) as f64 / 1000.0
        };
        *self.lag.lock().unwrap_or_else(|p| p.into_inner()) = Lag { versions, seconds };
    }

    /// Start building version `v` from its header.
    fn begin(&self, v: Version, h: &Header) -> anyhow::Result<ServedVersion> {
        let current = self.current();
        let mut next = if h.kind == "full" {
            let mut s = ServedVersion::empty(v);
            // Keep the model unless the full version brings another config.
            if let Some(c) = &current {
                s.model = c.model.clone();
                s.model_config = c.model_config.clone();
            }
            s
        } else {
            match &current {
                Some(c) => c.as_ref().clone(),
                None => bail!("version {v} ({}) arrived before any full version", h.kind),
            }
        };
        next.version = v;
        next.base = Version(h.base);
        next.kind = h.kind.clone();
        next.created_at_ms = h.created_at_ms;
        next.samples_through = h.samples_through;
        if !h.schema_json.is_empty() {
            next.schema = serde_json::from_str(&h.schema_json).context("schema of the version")?;
        }
        if !h.model_config.is_empty() && h.model_config != next.model_config {
            next.model = Some(Arc::new(
                model_from_text(&h.model_config).context("model config of the version")?,
            ));
            next.model_config = h.model_config.clone();
        }
        if next.model.is_none() {
            next.model = self.fallback.clone();
        }
        Ok(next)
    }

    /// Subscribe until `cancel`, reconnecting after any failure.
    pub async fn subscribe_loop(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            match self.session(&cancel).await {
                Ok(()) if cancel.is_cancelled() => return,
                Ok(()) => tracing::warn!("publisher stream ended; reconnecting"),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "subscription failed; reconnecting")
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(self.cfg.reconnect_ms)) => {}
            }
        }
    }

    async fn confirm(
        &self,
        client: &mut PublisherClient<Channel>,
        v: Version,
    ) -> anyhow::Result<()> {
        if !self.cfg.confirm {
            return Ok(());
        }
        client
            .confirm(ConfirmRequest {
                node_id: self.node_id.clone(),
                version: v.0,
            })
            .await
            .with_context(|| format!("confirming version {v}"))?;
        Ok(())
    }

    async fn session(&self, cancel: &CancellationToken) -> anyhow::Result<()> {
        let channel = Endpoint::from_shared(self.cfg.ps_grpc.clone())?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to {}", self.cfg.ps_grpc))?;
        let mut client = PublisherClient::new(channel).max_decoding_message_size(64 << 20);
        let held = self.current().map(|c| c.version);
        let from = held.map_or(0, |v| v.0 + 1);
        let mut stream = client
            .subscribe(SubscribeRequest {
                node_id: self.node_id.clone(),
                from_version: from,
                partitions: self.cfg.partitions.clone(),
            })
            .await
            .context("subscribing")?
            .into_inner();
        tracing::info!(node = %self.node_id, from, "subscribed to the publisher");
        if let Some(v) = held {
            // The PS may have restarted or lost our last confirmation.
            self.confirm(&mut client, v).await?;
        }
        let mut building: Building = None;
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                m = stream.message() => m.context("reading the publisher stream")?,
            };
            let Some(u) = msg else { return Ok(()) };
            if let Some(v) = self.feed(&mut building, u)? {
                self.confirm(&mut client, v).await?;
            }
        }
    }

    /// One message of a version (gRPC stream or a version assembled from Kafka):
    /// header, dense tensors and row chunks build the next version aside; the end
    /// marker installs it. Returns the version installed, if this message did.
    pub fn feed(&self, building: &mut Building, u: Update) -> anyhow::Result<Option<Version>> {
        let v = Version(u.version);
        match u.body {
            Some(Body::Header(h)) => *building = Some((self.begin(v, &h)?, h)),
            Some(Body::Dense(d)) => {
                let (b, _) = building
                    .as_mut()
                    .ok_or_else(|| anyhow!("dense tensor outside a version"))?;
                let values = bytes_f32(&d.values)
                    .ok_or_else(|| anyhow!("dense tensor {} is not f32s", d.name))?;
                b.dense.insert(d.name, Arc::new(values));
            }
            Some(Body::Rows(r)) => {
                let (b, _) = building
                    .as_mut()
                    .ok_or_else(|| anyhow!("rows outside a version"))?;
                let deleted =
                    bytes_u64(&r.deleted).ok_or_else(|| anyhow!("deleted keys are not u64s"))?;
                b.table_mut(&r.table, r.dim as usize)
                    .and_then(|t| t.apply_bytes(&r.keys, &r.values, &deleted))
                    .map_err(|e| anyhow!("version {v}: {e}"))?;
            }
            Some(Body::End(_)) => {
                let (b, h) = building
                    .take()
                    .ok_or_else(|| anyhow!("end outside a version"))?;
                if b.version != v {
                    bail!("end of version {v} while building {}", b.version);
                }
                let rows = b.rows();
                self.note_latest(&h, &b);
                self.install(b);
                tracing::info!(version = v.0, kind = %h.kind, rows, "applied version");
                return Ok(Some(v));
            }
            None => bail!("empty message from the publisher"),
        }
        Ok(None)
    }
}

/// The version being built from its messages, and its header.
pub type Building = Option<(ServedVersion, Header)>;
