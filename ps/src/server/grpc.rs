//! The `odl.ps.ParameterServer` gRPC service over one shard's [`LocalStore`]. Every
//! request is validated by the store (tables, lengths, finite values, key ownership)
//! before anything changes; store calls are short CPU work and run on the handler task.

use super::metrics::{labels, PsMetrics, Timed};
use crate::error::PsError;
use crate::local::LocalStore;
use crate::routing::ShardId;
use odl_proto::hashing::FeatureId;
use odl_proto::params::{ModelSchema, TaskProgress, TrainProgress};
use odl_proto::ps_rpc as rpc;
use odl_proto::ps_rpc::parameter_server_server::ParameterServer;
use odl_proto::wire;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct PsService {
    store: Arc<LocalStore>,
    shard: ShardId,
    metrics: PsMetrics,
}

impl PsService {
    pub fn new(store: Arc<LocalStore>, shard: ShardId) -> PsService {
        PsService {
            store,
            shard,
            metrics: PsMetrics::default(),
        }
    }

    /// Observe pull and push latencies into `metrics` (the shard's `/metrics`).
    pub fn with_metrics(mut self, metrics: &PsMetrics) -> PsService {
        self.metrics = metrics.clone();
        self
    }

    fn time_pull(&self, kind: &str) -> Timed {
        Timed::start(&self.metrics.pull, &labels(&[("kind", kind)]))
    }

    fn time_push(&self, kind: &str) -> Timed {
        Timed::start(&self.metrics.push, &labels(&[("kind", kind)]))
    }
}

/// Keys on the wire are little-endian u64s; the store speaks [`FeatureId`] (a
/// transparent newtype).
fn ids(keys: &[u8]) -> Result<Vec<FeatureId>, PsError> {
    Ok(wire::bytes_to_u64s("keys", keys)?
        .into_iter()
        .map(FeatureId)
        .collect())
}

/// What `ShardInfo` and `/v1/shard` report.
pub fn shard_info(store: &LocalStore, shard: ShardId) -> rpc::ShardInfoResponse {
    let (key_lo, key_hi) = shard.key_range();
    let progress = store.merged_progress();
    rpc::ShardInfoResponse {
        shard: shard.index,
        shards: shard.count,
        key_lo,
        key_hi,
        tables: store
            .table_stats()
            .into_iter()
            .map(|t| rpc::TableInfo {
                name: t.name,
                dim: t.dim as u32,
                rows: t.rows,
                heap_bytes: t.heap_bytes,
            })
            .collect(),
        dense: store.schema().dense.into_iter().map(|d| d.name).collect(),
        heap_bytes: store.heap_bytes(),
        samples_trained: progress.samples,
        workers: store.workers() as u32,
    }
}

#[tonic::async_trait]
impl ParameterServer for PsService {
    async fn declare(
        &self,
        req: Request<rpc::DeclareRequest>,
    ) -> Result<Response<rpc::DeclareResponse>, Status> {
        let req = req.into_inner();
        if req.shards != self.shard.count {
            return Err(PsError::Invalid(format!(
                "client routes over {} shards, this is shard {} of {}",
                req.shards, self.shard.index, self.shard.count
            ))
            .into());
        }
        let schema: ModelSchema = serde_json::from_slice(&req.schema_json)
            .map_err(|e| PsError::Invalid(format!("schema_json: {e}")))?;
        check_attributes(&req.attributes)?;
        self.store.declare_schema(&schema)?;
        for (k, v) in &req.attributes {
            self.store.set_attribute(k, v);
        }
        Ok(Response::new(rpc::DeclareResponse {}))
    }

    async fn pull_sparse(
        &self,
        req: Request<rpc::PullSparseRequest>,
    ) -> Result<Response<rpc::PullSparseResponse>, Status> {
        let _timed = self.time_pull("sparse");
        let req = req.into_inner();
        let keys = ids(&req.keys)?;
        let dim = self.store.table(&req.table)?.dim();
        let mut values = vec![0.0; keys.len() * dim];
        self.store.pull_rows(&req.table, &keys, &mut values)?;
        Ok(Response::new(rpc::PullSparseResponse {
            values: wire::f32s_to_bytes(&values),
        }))
    }

    async fn push_sparse(
        &self,
        req: Request<rpc::PushSparseRequest>,
    ) -> Result<Response<rpc::PushSparseResponse>, Status> {
        let _timed = self.time_push("sparse");
        let req = req.into_inner();
        let grads = wire::bytes_to_f32s("grads", &req.grads).map_err(PsError::from)?;
        self.store.push_rows(&req.table, &ids(&req.keys)?, &grads)?;
        Ok(Response::new(rpc::PushSparseResponse {}))
    }

    async fn pull_dense(
        &self,
        req: Request<rpc::PullDenseRequest>,
    ) -> Result<Response<rpc::PullDenseResponse>, Status> {
        let _timed = self.time_pull("dense");
        let names = req.into_inner().names;
        let values = self.store.pull_dense_tensors(&names)?;
        let tensors = names
            .into_iter()
            .zip(values)
            .map(|(name, values)| rpc::DenseTensor {
                name,
                values: wire::f32s_to_bytes(&values),
            })
            .collect();
        Ok(Response::new(rpc::PullDenseResponse { tensors }))
    }

    async fn push_dense(
        &self,
        req: Request<rpc::PushDenseRequest>,
    ) -> Result<Response<rpc::PushDenseResponse>, Status> {
        let _timed = self.time_push("dense");
        let grads = req
            .into_inner()
            .grads
            .into_iter()
            .map(|t| Ok((t.name, wire::bytes_to_f32s("dense grads", &t.values)?)))
            .collect::<Result<Vec<(String, Vec<f32>)>, PsError>>()?;
        self.store.push_dense_grads(&grads)?;
        Ok(Response::new(rpc::PushDenseResponse {}))
    }

    async fn report_progress(
        &self,
        req: Request<rpc::ReportProgressRequest>,
    ) -> Result<Response<rpc::ReportProgressResponse>, Status> {
        let req = req.into_inner();
        if req.worker.is_empty() {
            return Err(PsError::invalid("report_progress: worker must be named").into());
        }
        let bad_auc = |x: f64| !(0.0..=1.0).contains(&x);
        if req
            .tasks
            .iter()
            .any(|t| bad_auc(t.global_auc) || bad_auc(t.current_auc))
        {
            return Err(PsError::invalid("report_progress: AUC outside [0, 1]").into());
        }
        let p = TrainProgress {
            samples: req.samples,
            tasks: req
                .tasks
                .into_iter()
                .map(|t| TaskProgress {
                    task: t.task,
                    samples: t.samples,
                    global_auc: t.global_auc,
                    current_auc: t.current_auc,
                })
                .collect(),
        };
        self.store.report_progress_from(&req.worker, &p);
        Ok(Response::new(rpc::ReportProgressResponse {}))
    }

    async fn health(
        &self,
        _req: Request<rpc::HealthRequest>,
    ) -> Result<Response<rpc::HealthResponse>, Status> {
        Ok(Response::new(rpc::HealthResponse {
            ready: true,
            shard: self.shard.index,
            shards: self.shard.count,
        }))
    }

    async fn shard_info(
        &self,
        _req: Request<rpc::ShardInfoRequest>,
    ) -> Result<Response<rpc::ShardInfoResponse>, Status> {
        Ok(Response::new(shard_info(&self.store, self.shard)))
    }
}

/// Attributes are small metadata (a model config is a few KB): refuse empty names and
/// anything large enough to bloat every checkpoint manifest.
fn check_attributes(attrs: &std::collections::HashMap<String, String>) -> Result<(), PsError> {
    const MAX_BYTES: usize = 1 << 20;
    for (k, v) in attrs {
        if k.is_empty() || k.len() > 256 {
            return Err(PsError::Invalid(format!(
                "attribute name {k:?} must be 1..=256 bytes"
            )));
        }
        if v.len() > MAX_BYTES {
            return Err(PsError::Invalid(format!(
                "attribute {k:?} is {} bytes, over {MAX_BYTES}",
                v.len()
            )));
        }
    }
    Ok(())
}
