//! The gRPC `Publisher` service (publish.proto): version queries, the subscription
//! stream serving nodes apply versions from, confirmations, rebase and rollback.
//!
//! A subscription first sends the catch-up chain (the newest full version and the
//! increments after it, or every version from the one the node asked for), then each
//! new version as it is published. Row chunks are filtered to the partitions the node
//! owns. Each header is re-stamped with the newest version so the node can report lag.

use super::cluster::{from_wire, to_wire, PartServer};
use super::payload::kind_str;
use super::publisher::Publisher;
use super::status::Registry;
use super::{PublishError, Result};
use odl_proto::publish_rpc::publisher_server::{Publisher as PublisherRpc, PublisherServer};
use odl_proto::publish_rpc::{self as rpc, update::Body};
use odl_proto::version::{Version, VersionRecord, VersionStatus};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Messages buffered per subscriber: enough to keep the socket busy, few enough that
/// a slow node does not hold many megabytes.
const SUBSCRIBER_BUFFER: usize = 16;

pub fn status_str(s: VersionStatus) -> &'static str {
    match s {
        VersionStatus::PushOnline => "PUSH_ONLINE",
        VersionStatus::Finished => "FINISHED",
        VersionStatus::SwitchTimeout => "SWITCH_TIMEOUT",
        VersionStatus::Skipped => "SKIPPED",
    }
}

pub fn info(r: &VersionRecord) -> rpc::VersionInfo {
    rpc::VersionInfo {
        version: r.version.0,
        kind: kind_str(r.kind).to_string(),
        base: r.base.0,
        status: status_str(r.status).to_string(),
        reason: r.reason.clone(),
        created_at: r.created_at.clone(),
        effective_at: r.effective_at.clone(),
        rows: r.rows,
        samples_through: r.samples_through,
        auc_global: r.auc.global,
        auc_current: r.auc.current,
    }
}

#[derive(Clone)]
pub struct PublishService {
    publisher: Arc<Publisher>,
    /// This shard's own store, read by the publishing shard (cluster.rs).
    part: Arc<PartServer>,
}

impl PublishService {
    pub fn new(publisher: Arc<Publisher>) -> PublishService {
        let part = Arc::new(PartServer::new(publisher.local().clone()));
        PublishService { publisher, part }
    }

    /// The tonic service to mount next to the PS's own.
    pub fn into_server(self) -> PublisherServer<PublishService> {
        PublisherServer::new(self)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20)
    }

    fn registry(&self) -> Arc<Registry> {
        self.publisher.registry().clone()
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> std::result::Result<T, Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Status::from),
        Err(e) => Err(Status::internal(format!("task failed: {e}"))),
    }
}

/// Unsubscribes the node when its stream task ends, however it ends.
struct Subscription {
    registry: Arc<Registry>,
    node: String,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.registry.unsubscribe(&self.node);
        tracing::info!(node = %self.node, "serving node unsubscribed");
    }
}

/// Send one version's messages, filtered to `parts` (empty: all). `false`: the
/// subscriber is gone.
async fn send_version(
    registry: &Arc<Registry>,
    v: Version,
    parts: &HashSet<u32>,
    tx: &mpsc::Sender<std::result::Result<rpc::Update, Status>>,
) -> std::result::Result<bool, Status> {
    let reg = registry.clone();
    let payload = blocking(move || reg.payload(v)).await?;
    let latest = registry.latest_published();
    let latest_ms = if latest == v {
        None
    } else {
        let reg = registry.clone();
        blocking(move || reg.stored(latest))
            .await
            .ok()
            .map(|s| s.created_ms)
    };
    for u in payload.iter() {
        let mut u = match &u.body {
            Some(Body::Rows(r)) if !parts.is_empty() && !parts.contains(&r.partition) => continue,
            _ => u.clone(),
        };
        if let Some(Body::Header(h)) = &mut u.body {
            h.latest = latest.0.max(v.0);
            if let Some(ms) = latest_ms {
                h.latest_created_at_ms = ms;
            }
        }
        if tx.send(Ok(u)).await.is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn stream_versions(
    closing: tokio_util::sync::CancellationToken,
    registry: Arc<Registry>,
    node: String,
    from: Version,
    parts: HashSet<u32>,
    tx: mpsc::Sender<std::result::Result<rpc::Update, Status>>,
) {
    registry.subscribe(&node);
    let _sub = Subscription {
        registry: registry.clone(),
        node: node.clone(),
    };
    let mut latest = registry.watch_latest();
    let mut next = from;
    loop {
        latest.mark_unchanged();
        let (reg, n) = (registry.clone(), node.clone());
        let chain = blocking(move || {
            let chain = reg.chain(next)?;
            reg.require(&n, &chain)?;
            Ok(chain)
        })
        .await;
        let chain = match chain {
            Ok(c) => c,
            Err(s) => {
                let _ = tx.send(Err(s)).await;
                return;
            }
        };
        for v in chain {
            match send_version(&registry, v, &parts, &tx).await {
                Ok(true) => next = v.next(),
                Ok(false) => return,
                Err(s) => {
                    let _ = tx.send(Err(s)).await;
                    return;
                }
            }
        }
        if registry.latest_published() >= next {
            continue;
        }
        tokio::select! {
            _ = tx.closed() => return,
            _ = closing.cancelled() => {
                let _ = tx.send(Err(Status::unavailable("the PS is shutting down"))).await;
                return;
            }
            changed = latest.changed() => if changed.is_err() { return },
        }
    }
}

#[tonic::async_trait]
impl PublisherRpc for PublishService {
    async fn list_versions(
        &self,
        _req: Request<rpc::ListVersionsRequest>,
    ) -> std::result::Result<Response<rpc::ListVersionsResponse>, Status> {
        let reg = self.registry();
        let list = blocking(move || reg.list()).await?;
        Ok(Response::new(rpc::ListVersionsResponse {
            versions: list.iter().map(info).collect(),
        }))
    }

    async fn get_version(
        &self,
        req: Request<rpc::GetVersionRequest>,
    ) -> std::result::Result<Response<rpc::VersionInfo>, Status> {
        let (reg, v) = (self.registry(), Version(req.into_inner().version));
        let r = blocking(move || reg.get(v)).await?;
        Ok(Response::new(info(&r)))
    }

    type SubscribeStream = ReceiverStream<std::result::Result<rpc::Update, Status>>;

    async fn subscribe(
        &self,
        req: Request<rpc::SubscribeRequest>,
    ) -> std::result::Result<Response<Self::SubscribeStream>, Status> {
        let req = req.into_inner();
        if req.node_id.is_empty() {
            return Err(PublishError::Invalid("node_id must not be empty".into()).into());
        }
        let count = self.publisher.config().update_partition_count;
        if let Some(p) = req.partitions.iter().find(|&&p| p >= count) {
            return Err(PublishError::Invalid(format!(
                "partition {p} out of range: update_partition_count is {count}"
            ))
            .into());
        }
        tracing::info!(node = %req.node_id, from = req.from_version, partitions = ?req.partitions, "serving node subscribed");
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        tokio::spawn(stream_versions(
            self.publisher.closing().clone(),
            self.registry(),
            req.node_id,
            Version(req.from_version),
            req.partitions.into_iter().collect(),
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn confirm(
        &self,
        req: Request<rpc::ConfirmRequest>,
    ) -> std::result::Result<Response<rpc::ConfirmResponse>, Status> {
        let req = req.into_inner();
        if req.node_id.is_empty() {
            return Err(PublishError::Invalid("node_id must not be empty".into()).into());
        }
        let reg = self.registry();
        let finished = blocking(move || reg.confirm(&req.node_id, Version(req.version))).await?;
        if !finished.is_empty() {
            tracing::info!(versions = ?finished, "versions finished");
        }
        Ok(Response::new(rpc::ConfirmResponse { accepted: true }))
    }

    async fn rebase(
        &self,
        req: Request<rpc::RebaseRequest>,
    ) -> std::result::Result<Response<rpc::VersionInfo>, Status> {
        let dir = PathBuf::from(req.into_inner().checkpoint);
        if dir.as_os_str().is_empty() {
            return Err(PublishError::Invalid("checkpoint must name a directory".into()).into());
        }
        if !self.publisher.is_publishing() {
            // A shard that does not publish only loads its part; the publishing shard
            // cuts the version.
            let part = self.part.clone();
            blocking(move || part.rebase(&dir)).await?;
            return Ok(Response::new(rpc::VersionInfo::default()));
        }
        let p = self.publisher.clone();
        let v = blocking(move || p.rebase(&dir)).await?;
        Ok(Response::new(info(&v.record)))
    }

    async fn rollback(
        &self,
        req: Request<rpc::RollbackRequest>,
    ) -> std::result::Result<Response<rpc::VersionInfo>, Status> {
        let req = req.into_inner();
        let p = self.publisher.clone();
        let v = blocking(move || p.rollback(Version(req.version), Some(&req.token))).await?;
        Ok(Response::new(info(&v.record)))
    }

    async fn part_schema(
        &self,
        _req: Request<rpc::PartSchemaRequest>,
    ) -> std::result::Result<Response<rpc::PartSchemaResponse>, Status> {
        let part = self.part.clone();
        let schema_json = blocking(move || part.schema_json()).await?;
        Ok(Response::new(rpc::PartSchemaResponse { schema_json }))
    }

    async fn take_changes(
        &self,
        req: Request<rpc::TakeChangesRequest>,
    ) -> std::result::Result<Response<rpc::ChangedKeys>, Status> {
        let (part, published) = (self.part.clone(), req.into_inner().previous_published);
        let taken = blocking(move || part.take(published)).await?;
        Ok(Response::new(to_wire(&taken)))
    }

    async fn restore_changes(
        &self,
        req: Request<rpc::ChangedKeys>,
    ) -> std::result::Result<Response<rpc::RestoreChangesResponse>, Status> {
        let changes = from_wire(&req.into_inner())?;
        let part = self.part.clone();
        blocking(move || {
            part.restore(&changes);
            Ok(())
        })
        .await?;
        Ok(Response::new(rpc::RestoreChangesResponse {}))
    }

    async fn read_rows(
        &self,
        req: Request<rpc::ReadRowsRequest>,
    ) -> std::result::Result<Response<rpc::RowChunk>, Status> {
        let (part, req) = (self.part.clone(), req.into_inner());
        let rows = blocking(move || part.read_rows(&req.table, &req.keys)).await?;
        Ok(Response::new(rows))
    }

    async fn dense_snapshot(
        &self,
        _req: Request<rpc::DenseSnapshotRequest>,
    ) -> std::result::Result<Response<rpc::DenseSnapshotResponse>, Status> {
        let part = self.part.clone();
        let tensors = blocking(move || part.dense()).await?;
        Ok(Response::new(rpc::DenseSnapshotResponse { tensors }))
    }

    type FullRowsStream =
        tokio_stream::Iter<std::vec::IntoIter<std::result::Result<rpc::RowChunk, Status>>>;

    async fn full_rows(
        &self,
        _req: Request<rpc::FullRowsRequest>,
    ) -> std::result::Result<Response<Self::FullRowsStream>, Status> {
        let part = self.part.clone();
        let chunks = blocking(move || part.full_rows()).await?;
        let items: Vec<_> = chunks.into_iter().map(Ok).collect();
        Ok(Response::new(tokio_stream::iter(items)))
    }
}
