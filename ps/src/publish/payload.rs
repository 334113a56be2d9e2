//! What a version carries and its wire form. A version is cut once into a sequence of
//! [`Update`] messages (header, dense tensors, row chunks of at most ~1 MiB, end); the
//! same messages are persisted in sled and streamed to every subscriber, filtered to
//! the partitions it owns. Keys and values travel as little-endian byte strings: a
//! million rows decode with a copy, not a million varints.

use super::config::PartStrategy;
use super::partition::partition_of;
use odl_proto::params::ModelSchema;
use odl_proto::publish_rpc::{self as rpc, update::Body};
use odl_proto::version::{Version, VersionKind};

/// Target size of one row chunk on the wire.
const CHUNK_BYTES: usize = 1 << 20;

/// Current values of some rows of one table, and the rows it no longer holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RowSet {
    pub table: String,
    pub dim: usize,
    pub keys: Vec<u64>,
    /// `keys.len() * dim` values, row-major.
    pub values: Vec<f32>,
    /// Rows deleted (evicted) since the previous publish.
    pub deleted: Vec<u64>,
}

impl RowSet {
    pub fn rows(&self) -> u64 {
        (self.keys.len() + self.deleted.len()) as u64
    }
}

/// Everything a version publishes, before it is chunked.
#[derive(Clone, Debug, Default)]
pub struct Content {
    /// Carried by full and dense versions, so a node always knows the shapes.
    pub schema: Option<ModelSchema>,
    pub model_config: String,
    pub dense: Vec<(String, Vec<f32>)>,
    pub rows: Vec<RowSet>,
}

impl Content {
    /// Rows as `GET /v1/versions` counts them: sparse rows plus deletions.
    pub fn row_count(&self) -> u64 {
        self.rows.iter().map(RowSet::rows).sum()
    }

    /// The first tensor or table holding a NaN or infinity, for `check_numerics`.
    pub fn first_non_finite(&self) -> Option<String> {
        for (name, v) in &self.dense {
            if v.iter().any(|x| !x.is_finite()) {
                return Some(format!("dense tensor {name}"));
            }
        }
        for r in &self.rows {
            if r.values.iter().any(|x| !x.is_finite()) {
                return Some(format!("sparse table {}", r.table));
            }
        }
        None
    }
}

/// How a version is laid out, besides its content.
#[derive(Clone, Debug)]
pub struct Layout {
    pub version: Version,
    pub kind: VersionKind,
    pub base: Version,
    pub created_at_ms: i64,
    pub samples_through: u64,
    pub partition_count: u32,
    pub strategy: PartStrategy,
}

pub fn kind_str(k: VersionKind) -> &'static str {
    match k {
        VersionKind::Full => "full",
        VersionKind::Dense => "dense",
        VersionKind::Sparse => "sparse",
    }
}

pub fn parse_kind(s: &str) -> Option<VersionKind> {
    match s {
        "full" => Some(VersionKind::Full),
        "dense" => Some(VersionKind::Dense),
        "sparse" => Some(VersionKind::Sparse),
        _ => None,
    }
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

pub fn u64_bytes(v: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 8);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Little-endian f32s; `None` if the length is not a multiple of 4.
pub fn bytes_f32(b: &[u8]) -> Option<Vec<f32>> {
    if !b.chunks_exact(4).remainder().is_empty() {
        return None;
    }
    Some(
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// Little-endian u64s; `None` if the length is not a multiple of 8.
pub fn bytes_u64(b: &[u8]) -> Option<Vec<u64>> {
    if !b.chunks_exact(8).remainder().is_empty() {
        return None;
    }
    Some(
        b.chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
    )
}

fn msg(version: Version, body: Body) -> rpc::Update {
    rpc::Update {
        version: version.0,
        body: Some(body),
    }
}

/// Cut `content` into the messages of one version: header, dense tensors, row chunks
/// grouped by table and partition, end.
pub fn encode(layout: &Layout, content: &Content) -> Vec<rpc::Update> {
    let v = layout.version;
    let schema_json = content
        .schema
        .as_ref()
        .and_then(|s| serde_json::to_string(s).ok())
        .unwrap_or_default();
    let mut out = vec![msg(
        v,
        Body::Header(rpc::Header {
            kind: kind_str(layout.kind).to_string(),
            base: layout.base.0,
            created_at_ms: layout.created_at_ms,
            samples_through: layout.samples_through,
            partition_count: layout.partition_count,
            part_strategy: layout.strategy.as_str().to_string(),
            schema_json,
            model_config: content.model_config.clone(),
            latest: v.0,
            latest_created_at_ms: layout.created_at_ms,
        }),
    )];
    for (name, values) in &content.dense {
        out.push(msg(
            v,
            Body::Dense(rpc::DenseTensor {
                name: name.clone(),
                values: f32_bytes(values),
            }),
        ));
    }
    let count = layout.partition_count.max(1);
    for set in &content.rows {
        let dim = set.dim.max(1);
        // Bucket row indices and deletions by partition.
        let mut by_part: Vec<(Vec<usize>, Vec<u64>)> =
            vec![(Vec::new(), Vec::new()); count as usize];
        for (i, &k) in set.keys.iter().enumerate() {
            by_part[partition_of(k, count, layout.strategy) as usize]
                .0
                .push(i);
        }
        for &k in &set.deleted {
            by_part[partition_of(k, count, layout.strategy) as usize]
                .1
                .push(k);
        }
        let rows_per_chunk = (CHUNK_BYTES / (8 + 4 * dim)).max(1);
        for (p, (idx, deleted)) in by_part.into_iter().enumerate() {
            let chunk = |keys: Vec<u8>, values: Vec<u8>, deleted: Vec<u8>| {
                msg(
                    v,
                    Body::Rows(rpc::RowChunk {
                        table: set.table.clone(),
                        partition: p as u32,
                        dim: set.dim as u32,
                        keys,
                        values,
                        deleted,
                    }),
                )
            };
            for c in idx.chunks(rows_per_chunk) {
                let mut keys = Vec::with_capacity(c.len() * 8);
                let mut values = Vec::with_capacity(c.len() * set.dim * 4);
                for &i in c {
                    keys.extend_from_slice(&set.keys[i].to_le_bytes());
                    for x in &set.values[i * set.dim..(i + 1) * set.dim] {
                        values.extend_from_slice(&x.to_le_bytes());
                    }
                }
                out.push(chunk(keys, values, Vec::new()));
            }
            for c in deleted.chunks(CHUNK_BYTES / 8) {
                out.push(chunk(Vec::new(), Vec::new(), u64_bytes(c)));
            }
        }
    }
    out.push(msg(
        v,
        Body::End(rpc::End {
            rows: content.row_count(),
        }),
    ));
    out
}

/// Rebuild the content of a stored version (rollback copies a full version).
pub fn decode(updates: &[rpc::Update]) -> Option<Content> {
    let mut c = Content::default();
    let mut sets: Vec<RowSet> = Vec::new();
    for u in updates {
        match u.body.as_ref()? {
            Body::Header(h) => {
                if !h.schema_json.is_empty() {
                    c.schema = Some(serde_json::from_str(&h.schema_json).ok()?);
                }
                c.model_config = h.model_config.clone();
            }
            Body::Dense(d) => c.dense.push((d.name.clone(), bytes_f32(&d.values)?)),
            Body::Rows(r) => {
                let i = match sets.iter().position(|s| s.table == r.table) {
                    Some(i) => i,
                    None => {
                        sets.push(RowSet {
                            table: r.table.clone(),
                            dim: r.dim as usize,
                            ..Default::default()
                        });
                        sets.len() - 1
                    }
                };
                let s = &mut sets[i];
                s.keys.extend(bytes_u64(&r.keys)?);
                s.values.extend(bytes_f32(&r.values)?);
                s.deleted.extend(bytes_u64(&r.deleted)?);
            }
            Body::End(_) => {}
        }
    }
    c.rows = sets;
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(strategy: PartStrategy, count: u32) -> Layout {
        Layout {
            version: Version(3),
            kind: VersionKind::Sparse,
            base: Version(1),
            created_at_ms: 5,
            samples_through: 10,
            partition_count: count,
            strategy,
        }
    }

    #[test]
    fn encode_partitions_rows_and_decode_restores_them() {
        let keys: Vec<u64> = (0..1000u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        let values: Vec<f32> = (0..keys.len() * 4).map(|i| i as f32).collect();
        let set = RowSet {
            table: "emb".into(),
            dim: 4,
            keys: keys.clone(),
            values,
            deleted: vec![7, 8],
        };
        let content = Content {
            rows: vec![set],
            dense: vec![("w".into(), vec![1.0, 2.0])],
            ..Default::default()
        };
        assert_eq!(content.row_count(), 1002);
        for strategy in [PartStrategy::Div, PartStrategy::Mod] {
            let ups = encode(&layout(strategy, 8), &content);
            assert!(matches!(ups[0].body, Some(Body::Header(_))));
            assert!(
                matches!(ups.last().and_then(|u| u.body.as_ref()), Some(Body::End(e)) if e.rows == 1002)
            );
            for u in &ups {
                if let Some(Body::Rows(r)) = &u.body {
                    for k in bytes_u64(&r.keys)
                        .unwrap()
                        .into_iter()
                        .chain(bytes_u64(&r.deleted).unwrap())
                    {
                        assert_eq!(partition_of(k, 8, strategy), r.partition);
                    }
                }
            }
            let back = decode(&ups).unwrap();
            let mut got: Vec<(u64, Vec<f32>)> = back.rows[0]
                .keys
                .iter()
                .enumerate()
                .map(|(i, &k)| (k, back.rows[0].values[i * 4..i * 4 + 4].to_vec()))
                .collect();
            got.sort_by_key(|x| x.0);
            let mut want: Vec<(u64, Vec<f32>)> = keys
                .iter()
                .enumerate()
                .map(|(i, &k)| (k, content.rows[0].values[i * 4..i * 4 + 4].to_vec()))
                .collect();
            want.sort_by_key(|x| x.0);
            assert_eq!(got, want);
            let mut del = back.rows[0].deleted.clone();
            del.sort();
            assert_eq!(del, vec![7, 8]);
            assert_eq!(back.dense, content.dense);
        }
    }

    #[test]
    fn large_sets_are_chunked_below_the_target_size() {
        let n = 100_000usize;
        let set = RowSet {
            table: "t".into(),
            dim: 16,
            keys: (0..n as u64).collect(),
            values: vec![0.5; n * 16],
            deleted: vec![],
        };
        let ups = encode(
            &layout(PartStrategy::Mod, 2),
            &Content {
                rows: vec![set],
                ..Default::default()
            },
        );
        let chunks: Vec<_> = ups
            .iter()
            .filter_map(|u| match &u.body {
                Some(Body::Rows(r)) => Some(r),
                _ => None,
            })
            .collect();
        assert!(chunks.len() >= 6, "{}", chunks.len());
        assert!(chunks
            .iter()
            .all(|r| r.keys.len() + r.values.len() <= CHUNK_BYTES));
        assert_eq!(chunks.iter().map(|r| r.keys.len() / 8).sum::<usize>(), n);
    }

    #[test]
    fn non_finite_values_are_named() {
        let mut c = Content {
            dense: vec![("tower.w".into(), vec![0.0, f32::NAN])],
            ..Default::default()
        };
        assert_eq!(
            c.first_non_finite().as_deref(),
            Some("dense tensor tower.w")
        );
        c.dense.clear();
        c.rows.push(RowSet {
            table: "emb".into(),
            dim: 1,
            keys: vec![1],
            values: vec![f32::INFINITY],
            deleted: vec![],
        });
        assert_eq!(c.first_non_finite().as_deref(), Some("sparse table emb"));
        assert!(bytes_f32(&[1, 2, 3]).is_none());
        assert!(bytes_u64(&[1; 9]).is_none());
    }
}
