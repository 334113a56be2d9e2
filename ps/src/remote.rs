//! [`RemoteStore`]: the trainer's [`ParamStore`] over gRPC to N shards.
//!
//! - **Routing** ([`crate::routing`]): each key goes to the shard owning its range, each
//!   dense tensor to `xxh3(name) % n`; a batch is split per shard, the per-shard
//!   requests run in parallel and the answers are merged back in the caller's order.
//! - **Failures**: a shard that is down or restarting answers `Unavailable` (or the
//!   connection breaks). The request is retried with exponential backoff
//!   (`initial_backoff` doubling up to `max_backoff`) until `retry_deadline`; only then
//!   does the call fail with [`ParamError::Unavailable`]. When a shard answers again
//!   after failing, the client first re-sends its declared schema (a shard restarted
//!   without a checkpoint knows no tables), counts a reconnect
//!   ([`RemoteStore::reconnects`]) and logs it, so the worker can report it. A push
//!   interrupted by a crash may be applied twice or not at all: at most the batch in
//!   flight is affected. Invalid requests are never retried.
//! - **Threads**: the store owns a small tokio runtime and its methods block on it, so
//!   synchronous trainer threads call it directly (several at once). Calling it from
//!   inside an async runtime would block that runtime's thread, so it refuses with
//!   [`ParamError::Internal`]; async code should wrap calls in `spawn_blocking`.

use crate::routing::{shard_of_dense, shard_of_key};
use crate::server::{MAX_MESSAGE_BYTES, WINDOW_BYTES};
use bytes::{BufMut, Bytes, BytesMut};
use odl_proto::hashing::FeatureId;
use odl_proto::params::{self, ModelSchema, ParamError, ParamRead, ParamStore, TrainProgress};
use odl_proto::ps_rpc as rpc;
use odl_proto::ps_rpc::parameter_server_client::ParameterServerClient;
use odl_proto::wire;
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// How to reach the shards and how hard to try.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// gRPC address of each shard, in shard order (`host:port` or `http://host:port`).
    pub shards: Vec<String>,
    /// This worker's name in progress reports.
    pub worker: String,
    /// How long a call keeps retrying an unavailable shard before failing.
    pub retry_deadline: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Per-attempt limits.
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Checkpoint attributes sent with every declaration (also the re-declaration
    /// after a shard restart), e.g. the model config serving builds its model from.
    pub attributes: BTreeMap<String, String>,
}

impl RemoteOptions {
    /// Defaults: retry for 60 s, backoff 50 ms doubling to 2 s, connect 2 s, request 30 s.
    pub fn new(shards: Vec<String>, worker: impl Into<String>) -> RemoteOptions {
        RemoteOptions {
            shards,
            worker: worker.into(),
            retry_deadline: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            attributes: BTreeMap::new(),
        }
    }
}

struct ShardConn {
    addr: String,
    client: ParameterServerClient<Channel>,
    /// The last attempt failed for a transport reason; cleared (and counted as a
    /// reconnect) by the next success.
    down: AtomicBool,
}

struct Inner {
    opts: RemoteOptions,
    shards: Vec<ShardConn>,
    /// The schema last declared (as sent, and parsed), re-sent to a shard after it
    /// comes back and used to validate pushes before anything is sent.
    schema_json: RwLock<Option<Bytes>>,
    schema: RwLock<Option<ModelSchema>>,
    reconnects: AtomicU64,
    retries: AtomicU64,
}

pub struct RemoteStore {
    inner: Arc<Inner>,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStore")
            .field("shards", &self.inner.opts.shards)
            .field("reconnects", &self.reconnects())
            .finish()
    }
}

/// Transport-level failures worth retrying: the shard is down, restarting, or the
/// connection broke mid-call.
fn transient(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
    )
}

fn to_param_error(shard: usize, addr: &str, s: Status) -> ParamError {
    let msg = format!("shard {shard} ({addr}): {}", s.message());
    match s.code() {
        Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition | Code::OutOfRange => {
            ParamError::Invalid(msg)
        }
        _ if transient(&s) => ParamError::Unavailable(msg),
        _ => ParamError::Internal(msg),
    }
}

impl RemoteStore {
    /// Creates the client; connections are made lazily, so shards need not be up yet
    /// (the first call waits for them within `retry_deadline`).
    pub fn connect(opts: RemoteOptions) -> params::Result<RemoteStore> {
        if opts.shards.is_empty() {
            return Err(ParamError::Invalid(
                "RemoteStore needs at least one shard address".into(),
            ));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("odl-ps-client")
            .enable_all()
            .build()
            .map_err(|e| ParamError::Internal(format!("client runtime: {e}")))?;
        let shards = {
            let _guard = rt.enter();
            opts.shards
                .iter()
                .map(|a| {
                    let uri = if a.contains("://") {
                        a.clone()
                    } else {
                        format!("http://{a}")
                    };
                    let ep = Endpoint::from_shared(uri)
                        .map_err(|e| ParamError::Invalid(format!("shard address {a:?}: {e}")))?
                        .connect_timeout(opts.connect_timeout)
                        .timeout(opts.request_timeout)
                        .tcp_nodelay(true)
                        .initial_stream_window_size(WINDOW_BYTES)
                        .initial_connection_window_size(WINDOW_BYTES);
                    let client = ParameterServerClient::new(ep.connect_lazy())
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_MESSAGE_BYTES);
                    Ok(ShardConn {
                        addr: a.clone(),
                        client,
                        down: AtomicBool::new(false),
                    })
                })
                .collect::<params::Result<Vec<_>>>()?
        };
        Ok(RemoteStore {
            inner: Arc::new(Inner {
                opts,
                shards,
                schema_json: RwLock::new(None),
                schema: RwLock::new(None),
                reconnects: AtomicU64::new(0),
                retries: AtomicU64::new(0),
            }),
            rt,
        })
    }

    pub fn shard_count(&self) -> usize {
        self.inner.shards.len()
    }

    /// Times a shard answered again after failing (each outage counts once).
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Relaxed)
    }

    /// Attempts that failed for a transport reason and were retried.
    pub fn retries(&self) -> u64 {
        self.inner.retries.load(Ordering::Relaxed)
    }

    fn block<T>(&self, f: impl Future<Output = params::Result<T>>) -> params::Result<T> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(ParamError::Internal(
                "RemoteStore is blocking; call it from a plain thread (e.g. spawn_blocking), \
                 not from async code"
                    .into(),
            ));
        }
        self.rt.block_on(f)
    }

    /// Health of shard `i` (one attempt, no retries).
    pub fn health(&self, i: usize) -> params::Result<rpc::HealthResponse> {
        let conn = self.conn(i)?;
        let mut c = conn.client.clone();
        self.block(async move {
            c.health(rpc::HealthRequest {})
                .await
                .map(|r| r.into_inner())
                .map_err(|s| to_param_error(i, &conn.addr, s))
        })
    }

    /// Key range, rows and bytes of shard `i` (retried like any call).
    pub fn shard_info(&self, i: usize) -> params::Result<rpc::ShardInfoResponse> {
        self.conn(i)?;
        let inner = self.inner.clone();
        self.block(async move {
            inner
                .call(i, |mut c| async move {
                    c.shard_info(rpc::ShardInfoRequest {}).await
                })
                .await
        })
    }

    fn conn(&self, i: usize) -> params::Result<&ShardConn> {
        self.inner
            .shards
            .get(i)
            .ok_or_else(|| ParamError::Invalid(format!("no shard {i}")))
    }
}

impl Inner {
    /// One request to shard `i`, retried while the failure is transient and the
    /// deadline allows; re-declares the schema to a shard that comes back.
    async fn call<T, F, Fut>(&self, i: usize, mut f: F) -> params::Result<T>
    where
        F: FnMut(ParameterServerClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let conn = &self.shards[i];
        let start = Instant::now();
        let mut backoff = self.opts.initial_backoff;
        let mut failures = 0u32;
        let mut redeclared = false;
        loop {
            let force_declare = redeclared;
            let attempt = async {
                if force_declare || conn.down.load(Ordering::Relaxed) {
                    let schema = self.schema_json.read().clone();
                    if let Some(schema_json) = schema {
                        conn.client
                            .clone()
                            .declare(rpc::DeclareRequest {
                                schema_json,
                                shards: self.shards.len() as u32,
                                attributes: self.opts.attributes.clone().into_iter().collect(),
                            })
                            .await?;
                    }
                }
                f(conn.client.clone()).await
            };
            match attempt.await {
                Ok(r) => {
                    if conn.down.swap(false, Ordering::Relaxed) {
                        let n = self.reconnects.fetch_add(1, Ordering::Relaxed) + 1;
                        tracing::warn!(
                            shard = i,
                            addr = %conn.addr,
                            failed_attempts = failures,
                            outage_ms = start.elapsed().as_millis() as u64,
                            reconnects = n,
                            "reconnected to parameter-server shard"
                        );
                    }
                    return Ok(r.into_inner());
                }
                Err(s) if transient(&s) => {
                    failures += 1;
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    if !conn.down.swap(true, Ordering::Relaxed) {
                        tracing::warn!(shard = i, addr = %conn.addr, error = %s.message(),
                            "parameter-server shard unavailable; retrying with backoff");
                    }
                    if start.elapsed() + backoff > self.opts.retry_deadline {
                        return Err(to_param_error(i, &conn.addr, s));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.opts.max_backoff);
                }
                // A shard that restarted without a checkpoint between two calls may
                // answer before any transport error was seen: it knows no tables.
                // Re-declare once and retry.
                Err(s)
                    if !redeclared
                        && s.code() == Code::InvalidArgument
                        && (s.message().contains("unknown table")
                            || s.message().contains("unknown dense"))
                        && self.schema_json.read().is_some() =>
                {
                    redeclared = true;
                }
                Err(s) => return Err(to_param_error(i, &conn.addr, s)),
            }
        }
    }

    /// Runs `per_shard(i)` for each shard index in `which` concurrently; results in
    /// the order of `which`.
    async fn fan_out<T, F, Fut>(
        self: &Arc<Self>,
        which: Vec<usize>,
        per_shard: F,
    ) -> params::Result<Vec<T>>
    where
        T: Send + 'static,
        F: Fn(Arc<Inner>, usize) -> Fut,
        Fut: Future<Output = params::Result<T>> + Send + 'static,
    {
        if which.len() == 1 {
            return Ok(vec![per_shard(self.clone(), which[0]).await?]);
        }
        let handles: Vec<_> = which
            .iter()
            .map(|&i| tokio::spawn(per_shard(self.clone(), i)))
            .collect();
        let mut out = Vec::with_capacity(handles.len());
        let mut first_err = None;
        for h in handles {
            match h.await {
                Ok(Ok(v)) => out.push(v),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    first_err
                        .get_or_insert(ParamError::Internal(format!("shard request task: {e}")));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

/// A push spans shards, and shards validate independently: a bad part would be
/// refused by one shard after another applied its part. So everything checkable is
/// checked here first, and a bad push reaches no shard.
fn check_sparse_push(
    schema: Option<&ModelSchema>,
    table: &str,
    keys: usize,
    grads: &[f32],
) -> params::Result<()> {
    if let Some(i) = grads.iter().position(|g| !g.is_finite()) {
        return Err(ParamError::Invalid(format!(
            "push_sparse {table:?}: gradient {i} is not finite ({}); batch rejected",
            grads[i]
        )));
    }
    if let Some(schema) = schema {
        let t = schema
            .tables
            .iter()
            .find(|t| t.name == table)
            .ok_or_else(|| ParamError::Invalid(format!("push_sparse: unknown table {table:?}")))?;
        if grads.len() != keys * t.dim {
            return Err(ParamError::Invalid(format!(
                "push_sparse {table:?}: {} gradient floats for {keys} keys of dim {}",
                grads.len(),
                t.dim
            )));
        }
    }
    Ok(())
}

fn check_dense_push(
    schema: Option<&ModelSchema>,
    grads: &[(String, Vec<f32>)],
) -> params::Result<()> {
    for (name, g) in grads {
        if g.iter().any(|x| !x.is_finite()) {
            return Err(ParamError::Invalid(format!(
                "push_dense {name:?}: gradient is not finite"
            )));
        }
        if let Some(schema) = schema {
            let d = schema
                .dense
                .iter()
                .find(|d| &d.name == name)
                .ok_or_else(|| {
                    ParamError::Invalid(format!("push_dense: unknown dense tensor {name:?}"))
                })?;
            if g.len() != d.init.len() {
                return Err(ParamError::Invalid(format!(
                    "push_dense {name:?}: gradient has {} values, tensor has {}",
                    g.len(),
                    d.init.len()
                )));
            }
        }
    }
    Ok(())
}

/// One shard's part of a sparse push: shard, keys, gradients (as sent).
type ShardPush = (usize, Bytes, Bytes);

/// A batch of keys split by shard: per shard, its keys (encoded for the wire) and
/// their positions in the batch.
fn split_keys(keys: &[FeatureId], n: usize) -> Vec<(usize, Bytes, Vec<usize>)> {
    let mut per: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (pos, k) in keys.iter().enumerate() {
        per[shard_of_key(*k, n as u32) as usize].push(pos);
    }
    per.into_iter()
        .enumerate()
        .filter(|(_, pos)| !pos.is_empty())
        .map(|(i, pos)| (i, wire::u64s_to_bytes(pos.iter().map(|&p| keys[p].0)), pos))
        .collect()
}

/// The rows at `pos` (of `dim` floats each) of `values`, encoded for the wire.
fn gather_rows(values: &[f32], pos: &[usize], dim: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(pos.len() * dim * 4);
    for &p in pos {
        for v in &values[p * dim..(p + 1) * dim] {
            b.put_f32_le(*v);
        }
    }
    b.freeze()
}

fn wire_error(e: wire::WireError) -> ParamError {
    ParamError::Invalid(format!("shard answer: {e}"))
}

impl ParamRead for RemoteStore {
    fn pull_sparse(&self, table: &str, keys: &[FeatureId], out: &mut [f32]) -> params::Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        if !out.len().is_multiple_of(keys.len()) {
            return Err(ParamError::Invalid(format!(
                "pull_sparse {table:?}: output of {} floats for {} keys",
                out.len(),
                keys.len()
            )));
        }
        let dim = out.len() / keys.len();
        let parts = split_keys(keys, self.shard_count());
        let which: Vec<usize> = parts.iter().map(|p| p.0).collect();
        let requests: Arc<Vec<(usize, Bytes)>> =
            Arc::new(parts.iter().map(|(i, k, _)| (*i, k.clone())).collect());
        let table_s = table.to_string();
        let inner = self.inner.clone();
        let answers = self.block(async move {
            inner
                .fan_out(which, move |inner, i| {
                    let requests = requests.clone();
                    let table = table_s.clone();
                    async move {
                        let keys = requests
                            .iter()
                            .find(|r| r.0 == i)
                            .map(|r| r.1.clone())
                            .unwrap_or_default();
                        inner
                            .call(i, |mut c| {
                                let req = rpc::PullSparseRequest {
                                    table: table.clone(),
                                    keys: keys.clone(),
                                };
                                async move { c.pull_sparse(req).await }
                            })
                            .await
                    }
                })
                .await
        })?;
        for ((i, _, pos), ans) in parts.iter().zip(answers) {
            let got = wire::f32_count("values", &ans.values).map_err(wire_error)?;
            if got != pos.len() * dim {
                return Err(ParamError::Invalid(format!(
                    "pull_sparse {table:?}: shard {i} returned {got} floats for {} keys; \
                     table dim is not {dim}",
                    pos.len()
                )));
            }
            for (row, &p) in ans.values.chunks_exact(dim * 4).zip(pos) {
                wire::f32s_into("values", row, &mut out[p * dim..(p + 1) * dim])
                    .map_err(wire_error)?;
            }
        }
        Ok(())
    }

    fn pull_dense(&self, names: &[String]) -> params::Result<Vec<Vec<f32>>> {
        let n = self.shard_count() as u32;
        let mut per: Vec<Vec<String>> = vec![Vec::new(); n as usize];
        for name in names {
            per[shard_of_dense(name, n) as usize].push(name.clone());
        }
        let which: Vec<usize> = (0..n as usize).filter(|&i| !per[i].is_empty()).collect();
        if which.is_empty() {
            return Ok(Vec::new());
        }
        let per = Arc::new(per);
        let inner = self.inner.clone();
        let p2 = per.clone();
        let answers = self.block(async move {
            inner
                .fan_out(which, move |inner, i| {
                    let names = p2[i].clone();
                    async move {
                        inner
                            .call(i, |mut c| {
                                let req = rpc::PullDenseRequest {
                                    names: names.clone(),
                                };
                                async move { c.pull_dense(req).await }
                            })
                            .await
                    }
                })
                .await
        })?;
        let mut got = answers
            .into_iter()
            .flat_map(|a| a.tensors)
            .map(|t| {
                Ok((
                    t.name,
                    wire::bytes_to_f32s("dense values", &t.values).map_err(wire_error)?,
                ))
            })
            .collect::<params::Result<std::collections::HashMap<String, Vec<f32>>>>()?;
        names
            .iter()
            .map(|name| {
                got.remove(name).ok_or_else(|| {
                    ParamError::Internal(format!("pull_dense: no answer for {name:?}"))
                })
            })
            .collect()
    }
}

impl ParamStore for RemoteStore {
    /// Declares on every shard (each keeps the dense tensors it owns) and remembers the
    /// schema to re-declare on shards that restart.
    fn declare(&self, schema: &ModelSchema) -> params::Result<()> {
        let json = Bytes::from(
            serde_json::to_vec(schema)
                .map_err(|e| ParamError::Invalid(format!("schema does not serialize: {e}")))?,
        );
        let shards = self.shard_count() as u32;
        let inner = self.inner.clone();
        let sent = json.clone();
        self.block(async move {
            inner
                .fan_out((0..shards as usize).collect(), move |inner, i| {
                    let json = json.clone();
                    async move {
                        let attributes: std::collections::HashMap<_, _> =
                            inner.opts.attributes.clone().into_iter().collect();
                        inner
                            .call(i, |mut c| {
                                let req = rpc::DeclareRequest {
                                    schema_json: json.clone(),
                                    shards,
                                    attributes: attributes.clone(),
                                };
                                async move { c.declare(req).await }
                            })
                            .await
                    }
                })
                .await
        })?;
        *self.inner.schema_json.write() = Some(sent);
        *self.inner.schema.write() = Some(schema.clone());
        Ok(())
    }

    fn push_sparse(&self, table: &str, keys: &[FeatureId], grads: &[f32]) -> params::Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        if !grads.len().is_multiple_of(keys.len()) {
            return Err(ParamError::Invalid(format!(
                "push_sparse {table:?}: {} gradient floats for {} keys",
                grads.len(),
                keys.len()
            )));
        }
        check_sparse_push(self.inner.schema.read().as_ref(), table, keys.len(), grads)?;
        let dim = grads.len() / keys.len();
        let parts = split_keys(keys, self.shard_count());
        let which: Vec<usize> = parts.iter().map(|p| p.0).collect();
        let requests: Arc<Vec<ShardPush>> = Arc::new(
            parts
                .into_iter()
                .map(|(i, k, pos)| (i, k, gather_rows(grads, &pos, dim)))
                .collect(),
        );
        let table_s = table.to_string();
        let inner = self.inner.clone();
        self.block(async move {
            inner
                .fan_out(which, move |inner, i| {
                    let requests = requests.clone();
                    let table = table_s.clone();
                    async move {
                        let Some(r) = requests.iter().find(|r| r.0 == i) else {
                            return Ok(());
                        };
                        inner
                            .call(i, |mut c| {
                                let req = rpc::PushSparseRequest {
                                    table: table.clone(),
                                    keys: r.1.clone(),
                                    grads: r.2.clone(),
                                };
                                async move { c.push_sparse(req).await }
                            })
                            .await
                            .map(|_| ())
                    }
                })
                .await
        })?;
        Ok(())
    }

    fn push_dense(&self, grads: &[(String, Vec<f32>)]) -> params::Result<()> {
        check_dense_push(self.inner.schema.read().as_ref(), grads)?;
        let n = self.shard_count() as u32;
        let mut per: Vec<Vec<rpc::DenseTensor>> = vec![Vec::new(); n as usize];
        for (name, g) in grads {
            per[shard_of_dense(name, n) as usize].push(rpc::DenseTensor {
                name: name.clone(),
                values: wire::f32s_to_bytes(g),
            });
        }
        let which: Vec<usize> = (0..n as usize).filter(|&i| !per[i].is_empty()).collect();
        if which.is_empty() {
            return Ok(());
        }
        let per = Arc::new(per);
        let inner = self.inner.clone();
        self.block(async move {
            inner
                .fan_out(which, move |inner, i| {
                    let per = per.clone();
                    async move {
                        inner
                            .call(i, |mut c| {
                                let req = rpc::PushDenseRequest {
                                    grads: per[i].clone(),
                                };
                                async move { c.push_dense(req).await }
                            })
                            .await
                            .map(|_| ())
                    }
                })
                .await
        })?;
        Ok(())
    }

    /// Sent to every shard: each shard's publisher gates on the merged progress.
    fn report_progress(&self, progress: &TrainProgress) -> params::Result<()> {
        let req = rpc::ReportProgressRequest {
            worker: self.inner.opts.worker.clone(),
            samples: progress.samples,
            tasks: progress
                .tasks
                .iter()
                .map(|t| rpc::TaskProgress {
                    task: t.task.clone(),
                    samples: t.samples,
                    global_auc: t.global_auc,
                    current_auc: t.current_auc,
                })
                .collect(),
        };
        let inner = self.inner.clone();
        let n = self.shard_count();
        self.block(async move {
            inner
                .fan_out((0..n).collect(), move |inner, i| {
                    let req = req.clone();
                    async move {
                        inner
                            .call(i, |mut c| {
                                let req = req.clone();
                                async move { c.report_progress(req).await }
                            })
                            .await
                            .map(|_| ())
                    }
                })
                .await
        })?;
        Ok(())
    }
}
