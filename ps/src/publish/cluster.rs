//! Several PS shards, one version stream. Each shard holds only its own rows and dense
//! tensors, yet a serving node must apply versions of the whole model, each one a
//! single cut of every shard. The design: shard 0 is the **publishing shard**. It runs
//! the timers and the gates (workers report their progress to every shard, so shard 0
//! holds the merged progress), and it reads the other shards' parts of each version
//! over gRPC through a [`ClusterSource`]: the same [`PublishSource`] the publisher
//! reads a single store through, so cutting, gating, numbering, status and both
//! transports (gRPC subscriptions, Kafka) are the single-shard code unchanged. A
//! version is written (and announced) only after every shard's part was read; if a
//! shard cannot be reached the cut fails, every shard's taken changes are restored,
//! and the next tick tries again — a node never gets a version missing a shard's rows.
//! The other shards publish nothing themselves; they answer [`PartServer`] calls.
//!
//! Taken changes survive a lost answer: a shard keeps the keys of its last take
//! ("in flight") until the next take says the previous one was published (or a
//! restore returns them), and sends them again otherwise. Re-sending a row is harmless:
//! it carries its current value.
//!
//! The cost of this design is that every published row crosses shard 0's network link
//! once more than if each shard wrote its own part to Kafka; in exchange there is one
//! writer per version, no cross-shard commit protocol, and gRPC-mode serving nodes
//! (which follow shard 0) get every shard's rows too.

use super::payload::{bytes_f32, bytes_u64, f32_bytes, u64_bytes, RowSet};
use super::source::{PublishSource, TableChanges};
use super::{PublishError, Result};
use crate::routing::{shard_of_key, ShardId};
use odl_proto::hashing::FeatureId;
use odl_proto::params::{ModelSchema, TrainProgress};
use odl_proto::publish_rpc::{self as rpc, publisher_client::PublisherClient};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Rows per `ReadRows` / `FullRows` message: about 4 MiB at dim 16.
const ROWS_PER_CALL: usize = 50_000;
/// How long one call to another shard may take before the cut fails and is retried.
const PEER_TIMEOUT: Duration = Duration::from_secs(120);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn to_wire(changes: &[TableChanges]) -> rpc::ChangedKeys {
    let ids = |v: &[FeatureId]| u64_bytes(&v.iter().map(|k| k.0).collect::<Vec<_>>());
    rpc::ChangedKeys {
        tables: changes
            .iter()
            .map(|c| rpc::TableKeys {
                table: c.table.clone(),
                upserted: ids(&c.upserted),
                deleted: ids(&c.deleted),
            })
            .collect(),
    }
}

pub fn from_wire(keys: &rpc::ChangedKeys) -> Result<Vec<TableChanges>> {
    let ids = |b: &[u8]| {
        bytes_u64(b)
            .map(|v| v.into_iter().map(FeatureId).collect::<Vec<_>>())
            .ok_or_else(|| PublishError::Invalid("changed keys are not u64s".into()))
    };
    keys.tables
        .iter()
        .map(|t| {
            Ok(TableChanges {
                table: t.table.clone(),
                upserted: ids(&t.upserted)?,
                deleted: ids(&t.deleted)?,
            })
        })
        .collect()
}

/// `older` then `newer`, per table: a key's latest change wins (an upsert after a
/// deletion is an upsert, and the other way round).
pub fn merge_changes(older: &[TableChanges], newer: &[TableChanges]) -> Vec<TableChanges> {
    let mut by_table: BTreeMap<String, (BTreeSet<u64>, BTreeSet<u64>)> = BTreeMap::new();
    for c in older.iter().chain(newer) {
        let (up, del) = by_table.entry(c.table.clone()).or_default();
        for k in &c.upserted {
            del.remove(&k.0);
            up.insert(k.0);
        }
        for k in &c.deleted {
            up.remove(&k.0);
            del.insert(k.0);
        }
    }
    by_table
        .into_iter()
        .map(|(table, (up, del))| TableChanges {
            table,
            upserted: up.into_iter().map(FeatureId).collect(),
            deleted: del.into_iter().map(FeatureId).collect(),
        })
        .collect()
}

/// A shard's side of the cluster cut: its own store, read for shard 0.
pub struct PartServer {
    source: Arc<dyn PublishSource>,
    /// The last take, until shard 0 says it was published or restores it.
    in_flight: Mutex<Option<Vec<TableChanges>>>,
}

impl PartServer {
    pub fn new(source: Arc<dyn PublishSource>) -> PartServer {
        PartServer {
            source,
            in_flight: Mutex::new(None),
        }
    }

    pub fn schema_json(&self) -> Result<String> {
        serde_json::to_string(&self.source.schema()?)
            .map_err(|e| PublishError::Source(format!("schema: {e}")))
    }

    /// The keys changed since the previous take, plus the previous take itself unless
    /// it was published.
    pub fn take(&self, previous_published: bool) -> Result<Vec<TableChanges>> {
        let mut in_flight = lock(&self.in_flight);
        if previous_published {
            *in_flight = None;
        }
        let new = self.source.take_changes()?;
        let all = match in_flight.take() {
            Some(old) => merge_changes(&old, &new),
            None => new,
        };
        *in_flight = Some(all.clone());
        Ok(all)
    }

    pub fn restore(&self, changes: &[TableChanges]) {
        let mut in_flight = lock(&self.in_flight);
        self.source.restore_changes(changes);
        *in_flight = None;
    }

    pub fn read_rows(&self, table: &str, keys: &[u8]) -> Result<rpc::RowChunk> {
        let keys: Vec<FeatureId> = bytes_u64(keys)
            .ok_or_else(|| PublishError::Invalid("keys are not u64s".into()))?
            .into_iter()
            .map(FeatureId)
            .collect();
        let (present, values) = self.source.read_rows(table, &keys)?;
        let dim = values.len().checked_div(present.len()).unwrap_or(0);
        Ok(rpc::RowChunk {
            table: table.to_string(),
            partition: 0,
            dim: dim as u32,
            keys: u64_bytes(&present.iter().map(|k| k.0).collect::<Vec<_>>()),
            values: f32_bytes(&values),
            deleted: Vec::new(),
        })
    }

    pub fn dense(&self) -> Result<Vec<rpc::DenseTensor>> {
        Ok(self
            .source
            .dense_snapshot()?
            .into_iter()
            .map(|(name, v)| rpc::DenseTensor {
                name,
                values: f32_bytes(&v),
            })
            .collect())
    }

    /// Every row, in chunks of at most [`ROWS_PER_CALL`] rows.
    pub fn full_rows(&self) -> Result<Vec<rpc::RowChunk>> {
        let mut out = Vec::new();
        for set in self.source.full_rows()? {
            let dim = set.dim.max(1);
            for (i, keys) in set.keys.chunks(ROWS_PER_CALL).enumerate() {
                let at = i * ROWS_PER_CALL * dim;
                out.push(rpc::RowChunk {
                    table: set.table.clone(),
                    partition: 0,
                    dim: set.dim as u32,
                    keys: u64_bytes(keys),
                    values: f32_bytes(&set.values[at..at + keys.len() * dim]),
                    deleted: Vec::new(),
                });
            }
            if set.keys.is_empty() {
                // The table exists even when empty, so its dim reaches shard 0.
                out.push(rpc::RowChunk {
                    table: set.table.clone(),
                    dim: set.dim as u32,
                    ..Default::default()
                });
            }
        }
        Ok(out)
    }

    pub fn rebase(&self, checkpoint: &Path) -> Result<()> {
        self.source.rebase(checkpoint)
    }
}

/// Another shard, as shard 0 reaches it.
struct Peer {
    index: u32,
    url: String,
    client: PublisherClient<Channel>,
    /// Its last take was not restored (so it was published, or held no change).
    unsettled: AtomicBool,
}

/// Every shard's parameters as one [`PublishSource`], for the publishing shard.
pub struct ClusterSource {
    local: Arc<dyn PublishSource>,
    me: ShardId,
    peers: Vec<Peer>,
    rt: tokio::runtime::Handle,
}

fn peer_error(p: &Peer, what: &str, s: tonic::Status) -> PublishError {
    PublishError::Source(format!(
        "shard {} ({}): {what}: {}",
        p.index,
        p.url,
        s.message()
    ))
}

impl ClusterSource {
    /// `shard_grpc[i]` is shard i's gRPC URL; this shard's own entry is not used.
    /// Connections are made lazily (and again after a failure), so shards may start
    /// in any order. Must be called inside a tokio runtime; the source's methods must
    /// then be called off its async threads (the publisher uses `spawn_blocking`).
    pub fn new(
        local: Arc<dyn PublishSource>,
        me: ShardId,
        shard_grpc: &[String],
    ) -> Result<ClusterSource> {
        if shard_grpc.len() != me.count as usize {
            return Err(PublishError::Config(format!(
                "extensions.shard_grpc lists {} addresses for {} shards",
                shard_grpc.len(),
                me.count
            )));
        }
        let mut peers = Vec::new();
        for (i, url) in shard_grpc.iter().enumerate() {
            if i as u32 == me.index {
                continue;
            }
            let channel = Endpoint::from_shared(url.clone())
                .map_err(|e| PublishError::Config(format!("extensions.shard_grpc {url:?}: {e}")))?
                .connect_timeout(Duration::from_secs(5))
                .timeout(PEER_TIMEOUT)
                .connect_lazy();
            peers.push(Peer {
                index: i as u32,
                url: url.clone(),
                client: PublisherClient::new(channel)
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20),
                unsettled: AtomicBool::new(false),
            });
        }
        Ok(ClusterSource {
            local,
            me,
            peers,
            rt: tokio::runtime::Handle::try_current()
                .map_err(|e| PublishError::Config(format!("cluster source: {e}")))?,
        })
    }

    fn call<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    fn peer(&self, index: u32) -> Option<&Peer> {
        self.peers.iter().find(|p| p.index == index)
    }

    /// `changes` split by the shard owning each key.
    fn split(&self, changes: &[TableChanges]) -> BTreeMap<u32, Vec<TableChanges>> {
        fn slot<'a>(
            per: &'a mut BTreeMap<u32, TableChanges>,
            table: &str,
            shard: u32,
        ) -> &'a mut TableChanges {
            per.entry(shard).or_insert_with(|| TableChanges {
                table: table.to_string(),
                ..Default::default()
            })
        }
        let n = self.me.count;
        let mut out: BTreeMap<u32, Vec<TableChanges>> = BTreeMap::new();
        for c in changes {
            let mut per: BTreeMap<u32, TableChanges> = BTreeMap::new();
            for &k in &c.upserted {
                slot(&mut per, &c.table, shard_of_key(k, n))
                    .upserted
                    .push(k);
            }
            for &k in &c.deleted {
                slot(&mut per, &c.table, shard_of_key(k, n)).deleted.push(k);
            }
            for (s, t) in per {
                out.entry(s).or_default().push(t);
            }
        }
        out
    }

    fn restore_peer(&self, p: &Peer, changes: &[TableChanges]) {
        p.unsettled.store(false, Ordering::SeqCst);
        let mut c = p.client.clone();
        if let Err(s) = self.call(c.restore_changes(to_wire(changes))) {
            // The shard keeps them in flight and sends them again with the next take.
            tracing::warn!(shard = p.index, error = %s.message(), "restoring changes on a shard failed");
        }
    }
}

impl PublishSource for ClusterSource {
    fn schema(&self) -> Result<ModelSchema> {
        let mut schema = self.local.schema()?;
        for p in &self.peers {
            let mut c = p.client.clone();
            let r = self
                .call(c.part_schema(rpc::PartSchemaRequest {}))
                .map_err(|s| peer_error(p, "schema", s))?
                .into_inner();
            let theirs: ModelSchema = serde_json::from_str(&r.schema_json)
                .map_err(|e| PublishError::Source(format!("shard {} schema: {e}", p.index)))?;
            for d in theirs.dense {
                if !schema.dense.iter().any(|x| x.name == d.name) {
                    schema.dense.push(d);
                }
            }
            for t in theirs.tables {
                if !schema.tables.iter().any(|x| x.name == t.name) {
                    schema.tables.push(t);
                }
            }
        }
        Ok(schema)
    }

    fn take_changes(&self) -> Result<Vec<TableChanges>> {
        let mine = self.local.take_changes()?;
        let mut taken: Vec<(&Peer, Vec<TableChanges>)> = Vec::new();
        for p in &self.peers {
            let mut c = p.client.clone();
            let req = rpc::TakeChangesRequest {
                previous_published: p.unsettled.load(Ordering::SeqCst),
            };
            let got = self
                .call(c.take_changes(req))
                .map_err(|s| peer_error(p, "taking changes", s))
                .and_then(|r| from_wire(&r.into_inner()));
            match got {
                Ok(t) => {
                    p.unsettled.store(true, Ordering::SeqCst);
                    taken.push((p, t));
                }
                Err(e) => {
                    self.local.restore_changes(&mine);
                    for (q, t) in &taken {
                        self.restore_peer(q, t);
                    }
                    return Err(e);
                }
            }
        }
        let mut all = mine;
        for (_, t) in taken {
            all = merge_changes(&all, &t);
        }
        Ok(all)
    }

    fn restore_changes(&self, changes: &[TableChanges]) {
        let mut by_shard = self.split(changes);
        self.local
            .restore_changes(&by_shard.remove(&self.me.index).unwrap_or_default());
        for p in &self.peers {
            self.restore_peer(p, &by_shard.remove(&p.index).unwrap_or_default());
        }
    }

    fn read_rows(&self, table: &str, keys: &[FeatureId]) -> Result<(Vec<FeatureId>, Vec<f32>)> {
        let mut by_shard: BTreeMap<u32, Vec<FeatureId>> = BTreeMap::new();
        for &k in keys {
            by_shard
                .entry(shard_of_key(k, self.me.count))
                .or_default()
                .push(k);
        }
        let (mut present, mut values) = match by_shard.remove(&self.me.index) {
            Some(k) => self.local.read_rows(table, &k)?,
            None => (Vec::new(), Vec::new()),
        };
        for (s, ks) in by_shard {
            let p = self
                .peer(s)
                .ok_or_else(|| PublishError::Source(format!("no address for shard {s}")))?;
            for batch in ks.chunks(ROWS_PER_CALL) {
                let mut c = p.client.clone();
                let req = rpc::ReadRowsRequest {
                    table: table.to_string(),
                    keys: u64_bytes(&batch.iter().map(|k| k.0).collect::<Vec<_>>()),
                };
                let r = self
                    .call(c.read_rows(req))
                    .map_err(|s| peer_error(p, "reading rows", s))?
                    .into_inner();
                let bad = || PublishError::Source(format!("shard {s}: malformed rows"));
                present.extend(
                    bytes_u64(&r.keys)
                        .ok_or_else(bad)?
                        .into_iter()
                        .map(FeatureId),
                );
                values.extend(bytes_f32(&r.values).ok_or_else(bad)?);
            }
        }
        Ok((present, values))
    }

    fn dense_snapshot(&self) -> Result<Vec<(String, Vec<f32>)>> {
        let mut all = self.local.dense_snapshot()?;
        for p in &self.peers {
            let mut c = p.client.clone();
            let r = self
                .call(c.dense_snapshot(rpc::DenseSnapshotRequest {}))
                .map_err(|s| peer_error(p, "dense snapshot", s))?
                .into_inner();
            for t in r.tensors {
                let v = bytes_f32(&t.values).ok_or_else(|| {
                    PublishError::Source(format!("shard {}: dense {} not f32s", p.index, t.name))
                })?;
                all.push((t.name, v));
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    fn full_rows(&self) -> Result<Vec<RowSet>> {
        let mut sets: BTreeMap<String, RowSet> = self
            .local
            .full_rows()?
            .into_iter()
            .map(|s| (s.table.clone(), s))
            .collect();
        for p in &self.peers {
            let chunks = self.call(async {
                let mut c = p.client.clone();
                let mut stream = c.full_rows(rpc::FullRowsRequest {}).await?.into_inner();
                let mut out = Vec::new();
                while let Some(chunk) = stream.message().await? {
                    out.push(chunk);
                }
                Ok::<_, tonic::Status>(out)
            });
            for r in chunks.map_err(|s| peer_error(p, "full rows", s))? {
                let bad = || PublishError::Source(format!("shard {}: malformed rows", p.index));
                let set = sets.entry(r.table.clone()).or_insert_with(|| RowSet {
                    table: r.table.clone(),
                    dim: r.dim as usize,
                    ..Default::default()
                });
                set.keys.extend(bytes_u64(&r.keys).ok_or_else(bad)?);
                set.values.extend(bytes_f32(&r.values).ok_or_else(bad)?);
            }
        }
        Ok(sets.into_values().collect())
    }

    fn progress(&self) -> TrainProgress {
        // Workers report to every shard: this one's merge covers them all.
        self.local.progress()
    }

    fn rebase(&self, checkpoint: &Path) -> Result<()> {
        self.local.rebase(checkpoint)?;
        for p in &self.peers {
            let mut c = p.client.clone();
            self.call(c.rebase(rpc::RebaseRequest {
                checkpoint: checkpoint.display().to_string(),
            }))
            .map_err(|s| peer_error(p, "rebase", s))?;
        }
        Ok(())
    }

    fn model_config(&self) -> Option<String> {
        self.local.model_config()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tc(table: &str, up: &[u64], del: &[u64]) -> TableChanges {
        TableChanges {
            table: table.into(),
            upserted: up.iter().map(|&k| FeatureId(k)).collect(),
            deleted: del.iter().map(|&k| FeatureId(k)).collect(),
        }
    }

    #[test]
    fn merged_changes_keep_each_keys_latest_change() {
        let m = merge_changes(
            &[tc("a", &[1, 2], &[3]), tc("b", &[9], &[])],
            &[tc("a", &[3], &[1])],
        );
        assert_eq!(m, vec![tc("a", &[2, 3], &[1]), tc("b", &[9], &[])]);
        let back = from_wire(&to_wire(&m)).unwrap();
        assert_eq!(back, m);
        let bad = rpc::ChangedKeys {
            tables: vec![rpc::TableKeys {
                table: "a".into(),
                upserted: vec![1, 2, 3],
                deleted: vec![],
            }],
        };
        assert!(from_wire(&bad).is_err());
    }

    #[test]
    fn a_take_that_was_not_published_is_sent_again() {
        use super::super::source::MemorySource;
        use odl_proto::params::{Optimizer, TableSpec};
        let src = Arc::new(MemorySource::new(ModelSchema {
            tables: vec![TableSpec {
                name: "t".into(),
                dim: 1,
                optimizer: Optimizer::Adagrad {
                    lr: 0.1,
                    initial_accumulator: 0.1,
                },
                init_std: 0.0,
            }],
            dense: vec![],
        }));
        let part = PartServer::new(src.clone());
        src.set_rows("t", &[1], &[1.0]);
        assert_eq!(part.take(false).unwrap(), vec![tc("t", &[1], &[])]);
        // The answer was lost: shard 0 never says it published; key 1 comes again.
        src.set_rows("t", &[2], &[2.0]);
        assert_eq!(part.take(false).unwrap(), vec![tc("t", &[1, 2], &[])]);
        // Published: only new changes.
        src.set_rows("t", &[3], &[3.0]);
        assert_eq!(part.take(true).unwrap(), vec![tc("t", &[3], &[])]);
        // Restored: pending in the store again, nothing in flight.
        part.restore(&[tc("t", &[3], &[])]);
        assert_eq!(src.pending("t"), 1);
        assert_eq!(part.take(false).unwrap(), vec![tc("t", &[3], &[])]);
        let rows = part.read_rows("t", &u64_bytes(&[3, 77])).unwrap();
        assert_eq!(bytes_u64(&rows.keys).unwrap(), vec![3]);
        assert_eq!(bytes_f32(&rows.values).unwrap(), vec![3.0]);
        assert!(part.read_rows("t", &[1, 2]).is_err());
        let full = part.full_rows().unwrap();
        assert_eq!(bytes_u64(&full[0].keys).unwrap().len(), 3);
    }
}
