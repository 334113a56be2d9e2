//! From samples (or serving instances) to model inputs: label dropping, feature hashing,
//! multi-hot pooling, the dense transform, and batching with the unique keys a batch
//! pulls from the parameter store.
//!
//! Training lines and serving instances go through the same [`BatchBuilder`] (one
//! `FeaturesSeed` deserializing either JSON text or a `serde_json::Value`), so a served
//! prediction hashes exactly what the trainer hashed. Parsing streams over the JSON
//! (borrowed strings, no `Value` tree) and writes ids straight into the batch.

use crate::config::{FieldKind, ModelConfig, Pooling};
use crate::error::{Result, TrainError};
use crate::fasthash::FxHashMap;
use odl_proto::hashing::{feature_id_seeded, field_seed, FeatureId};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// `sign(x)·ln(1+|x|)`: compresses heavy-tailed counts and prices into a range a
/// network learns from without scaling statistics.
#[inline]
pub fn dense_transform(x: f64) -> f32 {
    if !x.is_finite() {
        return 0.0;
    }
    (x.signum() * x.abs().ln_1p()) as f32
}

#[derive(Clone, Copy, Debug)]
enum Slot {
    Sparse(u32),
    Dense(u32),
}

#[derive(Clone, Debug)]
struct SparseField {
    seed: u64,
    mean: bool,
    /// Non-empty for bucketized fields.
    boundaries: Vec<f64>,
    /// Non-empty for cross fields: the sparse slots crossed.
    cross: Vec<u32>,
}

/// The resolved input layout of a model: which feature keys are sparse or dense fields,
/// in which order, and which tasks' labels are read.
#[derive(Clone, Debug)]
pub struct Featurizer {
    sparse: Vec<SparseField>,
    sparse_names: Vec<String>,
    dense_names: Vec<String>,
    lookup: FxHashMap<String, Slot>,
    tasks: Vec<String>,
    /// The sparse slots that are crosses.
    crosses: Vec<u32>,
}

impl Featurizer {
    /// The layout of `cfg`'s field list (which must be resolved: non-empty).
    pub fn new(cfg: &ModelConfig) -> Result<Featurizer> {
        if cfg.fields.is_empty() {
            return Err(TrainError::Config(
                "the field list is empty (discover the fields first)".into(),
            ));
        }
        let mut f = Featurizer {
            sparse: Vec::new(),
            sparse_names: Vec::new(),
            dense_names: Vec::new(),
            lookup: FxHashMap::default(),
            tasks: cfg.model_tasks().to_vec(),
            crosses: Vec::new(),
        };
        for fc in &cfg.fields {
            if cfg.is_label_key(&fc.name) {
                return Err(TrainError::Config(format!(
                    "field `{}` is a label copy",
                    fc.name
                )));
            }
            let slot = match fc.kind {
                FieldKind::Dense => {
                    f.dense_names.push(fc.name.clone());
                    Slot::Dense(f.dense_names.len() as u32 - 1)
                }
                FieldKind::Sparse | FieldKind::Bucketized | FieldKind::Cross => {
                    f.sparse.push(SparseField {
                        seed: field_seed(&fc.name),
                        mean: fc.pooling.unwrap_or(cfg.pooling) == Pooling::Mean,
                        boundaries: fc.boundaries.clone(),
                        cross: Vec::new(),
                    });
                    f.sparse_names.push(fc.name.clone());
                    Slot::Sparse(f.sparse.len() as u32 - 1)
                }
            };
            // A cross has no key of its own in the features object.
            if fc.kind != FieldKind::Cross {
                f.lookup.insert(fc.name.clone(), slot);
            }
        }
        for fc in cfg.fields.iter().filter(|fc| fc.kind == FieldKind::Cross) {
            let slot_of = |name: &str| match f.lookup.get(name) {
                Some(Slot::Sparse(i)) => Ok(*i),
                _ => Err(TrainError::Config(format!(
                    "cross `{}`: `{name}` is not a sparse field",
                    fc.name
                ))),
            };
            let sources = fc
                .cross_sources()
                .into_iter()
                .map(slot_of)
                .collect::<Result<Vec<u32>>>()?;
            if let Some(i) = f.sparse_names.iter().position(|n| *n == fc.name) {
                f.sparse[i].cross = sources;
            }
        }
        f.crosses = (0..f.sparse.len() as u32)
            .filter(|&i| !f.sparse[i as usize].cross.is_empty())
            .collect();
        Ok(f)
    }

    pub fn sparse_fields(&self) -> &[String] {
        &self.sparse_names
    }
    pub fn dense_fields(&self) -> &[String] {
        &self.dense_names
    }
    pub fn tasks(&self) -> &[String] {
        &self.tasks
    }
}

/// A batch of featurized samples: the unique sparse keys, per (sample, sparse field) a
/// bag of indices into them, the dense inputs and the labels.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub len: usize,
    pub n_sparse: usize,
    pub n_dense: usize,
    /// Unique sparse ids of the batch, in first-seen order.
    pub keys: Vec<FeatureId>,
    /// `len * n_sparse + 1` offsets into `bag_items`, sample-major.
    pub bag_offsets: Vec<u32>,
    /// Indices into `keys`.
    pub bag_items: Vec<u32>,
    /// Per bag: the pooling weight of each item (1/n for mean, 1 for sum, 0 if empty).
    pub bag_scale: Vec<f32>,
    /// `len * n_dense`, transformed.
    pub dense: Vec<f32>,
    /// Per task: label (0/1) of each sample; meaningful where `has_label`.
    pub labels: Vec<Vec<f32>>,
    pub has_label: Vec<Vec<bool>>,
}

impl Batch {
    /// The items of the bag of sample `i`, sparse field `f`.
    #[inline]
    pub fn bag(&self, i: usize, f: usize) -> (&[u32], f32) {
        let b = i * self.n_sparse + f;
        let (lo, hi) = (
            self.bag_offsets[b] as usize,
            self.bag_offsets[b + 1] as usize,
        );
        (&self.bag_items[lo..hi], self.bag_scale[b])
    }
}

/// Fills a [`Batch`] one sample at a time; a sample that fails to parse leaves no trace.
pub struct BatchBuilder<'f> {
    fz: &'f Featurizer,
    batch: Batch,
    key_index: FxHashMap<u64, u32>,
    /// (sparse field, id) pairs of the row being parsed.
    pairs: Vec<(u32, u64)>,
    /// Dense values of the row being parsed.
    dense_row: Vec<f32>,
    row_labels: Vec<Option<f32>>,
    /// Scratch text of cross ids.
    text: String,
}

/// At most this many ids per cross field and sample (multi-hot sources multiply).
pub const MAX_CROSS_IDS: usize = 64;

impl<'f> BatchBuilder<'f> {
    pub fn new(fz: &'f Featurizer) -> Self {
        let mut b = BatchBuilder {
            fz,
            batch: Batch::default(),
            key_index: FxHashMap::default(),
            pairs: Vec::new(),
            dense_row: vec![0.0; fz.dense_names.len()],
            row_labels: vec![None; fz.tasks.len()],
            text: String::new(),
        };
        b.reset();
        b
    }

    fn reset(&mut self) {
        let fz = self.fz;
        let b = &mut self.batch;
        b.len = 0;
        b.n_sparse = fz.sparse.len();
        b.n_dense = fz.dense_names.len();
        b.keys.clear();
        b.bag_offsets.clear();
        b.bag_offsets.push(0);
        b.bag_items.clear();
        b.bag_scale.clear();
        b.dense.clear();
        b.labels.resize(fz.tasks.len(), Vec::new());
        b.has_label.resize(fz.tasks.len(), Vec::new());
        b.labels.iter_mut().for_each(Vec::clear);
        b.has_label.iter_mut().for_each(Vec::clear);
        self.key_index.clear();
    }

    pub fn len(&self) -> usize {
        self.batch.len
    }
    pub fn is_empty(&self) -> bool {
        self.batch.len == 0
    }

    /// The batch built so far; the builder starts a new one.
    pub fn take(&mut self) -> Batch {
        let fresh = Batch::default();
        let out = std::mem::replace(&mut self.batch, fresh);
        self.reset();
        out
    }

    /// Like [`take`](Self::take), but reuses `into`'s buffers for the next batch.
    pub fn swap_into(&mut self, into: &mut Batch) {
        std::mem::swap(&mut self.batch, into);
        self.reset();
    }

    fn begin_row(&mut self) {
        self.pairs.clear();
        self.dense_row.fill(0.0);
        self.row_labels.fill(None);
    }

    fn commit_row(&mut self) {
        let fz = self.fz;
        // Keys arrive in the sample's key order; bags are laid out in field order.
        self.pairs.sort_by_key(|p| p.0);
        if !fz.crosses.is_empty() {
            self.add_crosses();
            self.pairs.sort_by_key(|p| p.0);
        }
        let b = &mut self.batch;
        let mut p = 0;
        for (f, field) in fz.sparse.iter().enumerate() {
            let start = b.bag_items.len();
            while p < self.pairs.len() && self.pairs[p].0 as usize == f {
                let id = self.pairs[p].1;
                let next = b.keys.len() as u32;
                let idx = *self.key_index.entry(id).or_insert(next);
                if idx == next {
                    b.keys.push(FeatureId(id));
                }
                b.bag_items.push(idx);
                p += 1;
            }
            let n = b.bag_items.len() - start;
            b.bag_offsets.push(b.bag_items.len() as u32);
            b.bag_scale.push(match n {
                0 => 0.0,
                _ if field.mean => 1.0 / n as f32,
                _ => 1.0,
            });
        }
        b.dense.extend_from_slice(&self.dense_row);
        for (t, l) in self.row_labels.iter().enumerate() {
            b.labels[t].push(l.unwrap_or(0.0));
            b.has_label[t].push(l.is_some());
        }
        b.len += 1;
    }

    /// Cross ids of the row: for each cross field, every combination of one id of
    /// each source (capped at [`MAX_CROSS_IDS`]), hashed as the text of the source ids.
    fn add_crosses(&mut self) {
        use std::fmt::Write;
        let fz = self.fz;
        let n = self.pairs.len();
        for &c in &fz.crosses {
            let field = &fz.sparse[c as usize];
            let ranges: Vec<(usize, usize)> = field
                .cross
                .iter()
                .map(|&src| {
                    let lo = self.pairs[..n].partition_point(|p| p.0 < src);
                    let hi = self.pairs[..n].partition_point(|p| p.0 <= src);
                    (lo, hi)
                })
                .collect();
            if ranges.iter().any(|(lo, hi)| lo == hi) {
                continue; // a missing source: the cross is missing too
            }
            let mut idx: Vec<usize> = ranges.iter().map(|r| r.0).collect();
            'combos: for _ in 0..MAX_CROSS_IDS {
                self.text.clear();
                for &i in &idx {
                    let _ = write!(self.text, "{:016x}.", self.pairs[i].1);
                }
                self.pairs
                    .push((c, feature_id_seeded(field.seed, &self.text).0));
                // Odometer over the sources' ids.
                let mut k = idx.len();
                loop {
                    if k == 0 {
                        break 'combos;
                    }
                    k -= 1;
                    idx[k] += 1;
                    if idx[k] < ranges[k].1 {
                        break;
                    }
                    idx[k] = ranges[k].0;
                }
            }
        }
    }

    /// One sample line as the joiner writes it (`labels` and `features`).
    pub fn push_sample_json(&mut self, line: &str) -> Result<()> {
        self.begin_row();
        let mut de = serde_json::Deserializer::from_str(line);
        let r = SampleSeed { row: self }
            .deserialize(&mut de)
            .and_then(|seen| {
                de.end()?;
                Ok(seen)
            });
        match r {
            Ok(true) => {
                self.commit_row();
                Ok(())
            }
            Ok(false) => Err(TrainError::Sample("no `features` object".into())),
            Err(e) => Err(TrainError::Sample(e.to_string())),
        }
    }

    /// One serving instance: a sample's `features` object as JSON text (no labels).
    pub fn push_features_json(&mut self, features: &str) -> Result<()> {
        self.begin_row();
        let mut de = serde_json::Deserializer::from_str(features);
        let r = FeaturesSeed { row: self }
            .deserialize(&mut de)
            .and_then(|()| de.end());
        r.map_err(|e| TrainError::Sample(e.to_string()))?;
        self.commit_row();
        Ok(())
    }

    /// One serving instance already parsed into a JSON value (an object).
    pub fn push_features_value(&mut self, features: &serde_json::Value) -> Result<()> {
        self.begin_row();
        FeaturesSeed { row: self }
            .deserialize(features)
            .map_err(|e| TrainError::Sample(e.to_string()))?;
        self.commit_row();
        Ok(())
    }

    #[inline]
    fn add_text(&mut self, slot: Slot, text: &str) {
        if let Slot::Sparse(f) = slot {
            let field = &self.fz.sparse[f as usize];
            if field.boundaries.is_empty() {
                self.pairs.push((f, feature_id_seeded(field.seed, text).0));
            }
        }
    }

    #[inline]
    fn add_number(&mut self, slot: Slot, x: f64, text: &dyn Fn() -> String) {
        match slot {
            Slot::Dense(j) => self.dense_row[j as usize] = dense_transform(x),
            Slot::Sparse(f) => {
                let field = &self.fz.sparse[f as usize];
                let id = if field.boundaries.is_empty() {
                    feature_id_seeded(field.seed, &text())
                } else {
                    if !x.is_finite() {
                        return;
                    }
                    let bucket = field.boundaries.partition_point(|&b| b <= x);
                    feature_id_seeded(field.seed, &format!("#{bucket}"))
                };
                self.pairs.push((f, id.0));
            }
        }
    }

    #[inline]
    fn add_bool(&mut self, slot: Slot, v: bool) {
        match slot {
            Slot::Dense(j) => self.dense_row[j as usize] = if v { 1.0 } else { 0.0 },
            Slot::Sparse(_) => self.add_text(slot, if v { "true" } else { "false" }),
        }
    }
}

/// The canonical text of a JSON number, as serde_json prints it (integers as written,
/// floats shortest round-trip): what a categorical number hashes by.
fn number_text_u64(v: u64) -> String {
    v.to_string()
}
fn number_text_i64(v: i64) -> String {
    v.to_string()
}
fn number_text_f64(v: f64) -> String {
    serde_json::Number::from_f64(v).map_or_else(String::new, |n| n.to_string())
}

/// A map key, borrowed from the input when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(
                self,
                v: &'de str,
            ) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The top-level sample object: `labels` and `features`; everything else is skipped.
/// Yields whether a `features` object was present.
struct SampleSeed<'a, 'f> {
    row: &'a mut BatchBuilder<'f>,
}

impl<'de> DeserializeSeed<'de> for SampleSeed<'_, '_> {
    type Value = bool;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> std::result::Result<bool, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for SampleSeed<'_, '_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sample object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<bool, A::Error> {
        let mut seen_features = false;
        while let Some(Key(k)) = map.next_key::<Key>()? {
            match &*k {
                "features" => {
                    map.next_value_seed(FeaturesSeed {
                        row: &mut *self.row,
                    })?;
                    seen_features = true;
                }
                "labels" => map.next_value_seed(LabelsSeed {
                    row: &mut *self.row,
                })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(seen_features)
    }
}

/// `labels`: a usable label is 0/1 (integer, float) or false/true; anything else, or
/// a missing task, leaves the task without a label for this sample.
struct LabelsSeed<'a, 'f> {
    row: &'a mut BatchBuilder<'f>,
}

impl<'de> DeserializeSeed<'de> for LabelsSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for LabelsSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a labels object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        while let Some(Key(k)) = map.next_key::<Key>()? {
            let task = self.row.fz.tasks.iter().position(|t| *t == *k);
            let v = map.next_value::<LabelValue>()?;
            if let Some(t) = task {
                self.row.row_labels[t] = v.0;
            }
        }
        Ok(())
    }
}

struct LabelValue(Option<f32>);

impl<'de> de::Deserialize<'de> for LabelValue {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LabelValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a label")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<LabelValue, E> {
                Ok(LabelValue(match v {
                    0 => Some(0.0),
                    1 => Some(1.0),
                    _ => None,
                }))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<LabelValue, E> {
                Ok(LabelValue(match v {
                    0 => Some(0.0),
                    1 => Some(1.0),
                    _ => None,
                }))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<LabelValue, E> {
                Ok(LabelValue(if v == 0.0 || v == 1.0 {
                    Some(v as f32)
                } else {
                    None
                }))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<LabelValue, E> {
                Ok(LabelValue(Some(if v { 1.0 } else { 0.0 })))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> std::result::Result<LabelValue, E> {
                Ok(LabelValue(None))
            }
            fn visit_unit<E: de::Error>(self) -> std::result::Result<LabelValue, E> {
                Ok(LabelValue(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> std::result::Result<LabelValue, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LabelValue(None))
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<LabelValue, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LabelValue(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// The `features` object: each key that is a configured field is hashed or transformed
/// into the row; label copies and unknown keys are skipped.
struct FeaturesSeed<'a, 'f> {
    row: &'a mut BatchBuilder<'f>,
}

impl<'de> DeserializeSeed<'de> for FeaturesSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FeaturesSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a features object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        while let Some(Key(k)) = map.next_key::<Key>()? {
            // Label copies are never fields (config validation refuses them), so this
            // lookup is where a `<task>_label` key is dropped.
            match self.row.fz.lookup.get(&*k).copied() {
                Some(slot) => map.next_value_seed(ValueSeed {
                    row: &mut *self.row,
                    slot,
                    nested: false,
                })?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// One feature value (or array element when `nested`).
struct ValueSeed<'a, 'f> {
    row: &'a mut BatchBuilder<'f>,
    slot: Slot,
    nested: bool,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a feature value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<(), E> {
        self.row.add_text(self.slot, v);
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<(), E> {
        self.row
            .add_number(self.slot, v as f64, &|| number_text_u64(v));
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<(), E> {
        self.row
            .add_number(self.slot, v as f64, &|| number_text_i64(v));
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<(), E> {
        self.row.add_number(self.slot, v, &|| number_text_f64(v));
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<(), E> {
        self.row.add_bool(self.slot, v);
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> std::result::Result<(), A::Error> {
        // Multi-hot: each element is one id of the field's bag. A dense field reads an
        // array as missing; nested arrays and objects are skipped.
        let usable = !self.nested && matches!(self.slot, Slot::Sparse(_));
        if usable {
            while s
                .next_element_seed(ValueSeed {
                    row: &mut *self.row,
                    slot: self.slot,
                    nested: true,
                })?
                .is_some()
            {}
        } else {
            while s.next_element::<IgnoredAny>()?.is_some() {}
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<(), A::Error> {
        while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

/// Resolve an empty field list from sample lines: every non-label feature key seen,
/// sorted by name; numbers are dense, anything else sparse (a key seen as both is
/// sparse). Lines that do not parse are ignored here (training counts them).
pub fn discover_fields<'a>(
    cfg: &ModelConfig,
    lines: impl IntoIterator<Item = &'a str>,
) -> Vec<crate::config::FieldConfig> {
    use std::collections::BTreeMap;
    let mut kinds: BTreeMap<String, FieldKind> = BTreeMap::new();
    #[derive(serde::Deserialize)]
    struct Only {
        features: Option<serde_json::Map<String, serde_json::Value>>,
    }
    for line in lines {
        let Ok(Only {
            features: Some(map),
        }) = serde_json::from_str::<Only>(line)
        else {
            continue;
        };
        for (k, v) in map {
            if cfg.is_label_key(&k) {
                continue;
            }
            let kind = match v {
                serde_json::Value::Number(_) => FieldKind::Dense,
                serde_json::Value::Null | serde_json::Value::Object(_) => continue,
                _ => FieldKind::Sparse,
            };
            let e = kinds.entry(k).or_insert(kind);
            if kind == FieldKind::Sparse {
                *e = FieldKind::Sparse;
            }
        }
    }
    kinds
        .into_iter()
        .map(|(name, kind)| crate::config::FieldConfig {
            name,
            kind,
            pooling: None,
            boundaries: Vec::new(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FieldConfig;
    use odl_proto::hashing::feature_id;

    fn cfg(fields: &[(&str, FieldKind)]) -> ModelConfig {
        let mut c = ModelConfig::load(None).unwrap();
        c.fields = fields
            .iter()
            .map(|(n, k)| FieldConfig {
                name: n.to_string(),
                kind: *k,
                pooling: None,
                boundaries: vec![],
            })
            .collect();
        c
    }

    fn one(fz: &Featurizer, line: &str) -> Batch {
        let mut b = BatchBuilder::new(fz);
        b.push_sample_json(line).unwrap();
        b.take()
    }

    const LINE: &str = r#"{"sample_id":"p:i","ts":1,"user_id":"u","item_id":"i","labels":{"click":1,"detail_click":0},"features":{"user":"u1","tags":["a","b","a"],"price":12.5,"n":3,"flag":true}}"#;

    #[test]
    fn hashes_pools_and_transforms() {
        let c = cfg(&[
            ("user", FieldKind::Sparse),
            ("tags", FieldKind::Sparse),
            ("n", FieldKind::Sparse),
            ("flag", FieldKind::Sparse),
            ("missing", FieldKind::Sparse),
            ("price", FieldKind::Dense),
        ]);
        let fz = Featurizer::new(&c).unwrap();
        let b = one(&fz, LINE);
        assert_eq!(b.len, 1);
        let ids = |f: usize| -> Vec<FeatureId> {
            b.bag(0, f).0.iter().map(|&i| b.keys[i as usize]).collect()
        };
        assert_eq!(ids(0), vec![feature_id("user", "u1")]);
        assert_eq!(
            ids(1),
            vec![
                feature_id("tags", "a"),
                feature_id("tags", "b"),
                feature_id("tags", "a")
            ]
        );
        assert_eq!(b.bag(0, 1).1, 1.0 / 3.0);
        assert_eq!(ids(2), vec![feature_id("n", "3")]);
        assert_eq!(ids(3), vec![feature_id("flag", "true")]);
        assert!(ids(4).is_empty());
        assert_eq!(b.bag(0, 4).1, 0.0);
        assert_eq!(b.keys.len(), 5, "duplicates share one key");
        assert!((b.dense[0] - 13.5f32.ln()).abs() < 1e-6);
        assert_eq!(b.labels[0], vec![1.0]);
        assert_eq!(b.labels[1], vec![0.0]);
        assert!(b.has_label[0][0] && b.has_label[1][0]);
    }

    #[test]
    fn dense_transform_is_signed_log() {
        assert_eq!(dense_transform(0.0), 0.0);
        assert!((dense_transform(-3.0) + 4f32.ln()).abs() < 1e-6);
        assert_eq!(dense_transform(f64::NAN), 0.0);
    }

    #[test]
    fn sum_pooling_and_buckets_and_float_text() {
        let mut c = cfg(&[
            ("tags", FieldKind::Sparse),
            ("price", FieldKind::Bucketized),
            ("x", FieldKind::Sparse),
        ]);
        c.fields[0].pooling = Some(Pooling::Sum);
        c.fields[1].boundaries = vec![10.0, 20.0];
        let fz = Featurizer::new(&c).unwrap();
        let b = one(
            &fz,
            r#"{"labels":{},"features":{"tags":["a","b"],"price":12.5,"x":2.50}}"#,
        );
        assert_eq!(b.bag(0, 0).1, 1.0);
        assert_eq!(b.keys[b.bag(0, 1).0[0] as usize], feature_id("price", "#1"));
        assert_eq!(b.keys[b.bag(0, 2).0[0] as usize], feature_id("x", "2.5"));
        assert!(!b.has_label[0][0], "missing label is no label");
    }

    #[test]
    fn leaked_label_keys_change_nothing() {
        let c = cfg(&[("user", FieldKind::Sparse), ("price", FieldKind::Dense)]);
        let fz = Featurizer::new(&c).unwrap();
        let with = one(
            &fz,
            r#"{"labels":{"click":1},"features":{"user":"u","price":2,"click_label":1,"detail_click_label":1}}"#,
        );
        let without = one(
            &fz,
            r#"{"labels":{"click":1},"features":{"user":"u","price":2}}"#,
        );
        assert_eq!(with.keys, without.keys);
        assert_eq!(with.bag_items, without.bag_items);
        assert_eq!(with.dense, without.dense);
        // Discovery never turns a label copy into a field either.
        let found = discover_fields(
            &c,
            [r#"{"features":{"a":"x","click_label":1,"detail_click_label":0,"p":1.5}}"#],
        );
        let names: Vec<_> = found.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a", "p"]);
        assert_eq!(found[1].kind, FieldKind::Dense);
    }

    #[test]
    fn bad_lines_leave_no_partial_row() {
        let c = cfg(&[("user", FieldKind::Sparse)]);
        let fz = Featurizer::new(&c).unwrap();
        let mut b = BatchBuilder::new(&fz);
        b.push_sample_json(r#"{"labels":{"click":1},"features":{"user":"a"}}"#)
            .unwrap();
        for bad in [
            r#"{"labels":{"click":1},"features":{"user":"b""#,
            "not json",
            "[1,2]",
            r#"{"labels":{}}"#,
            r#"{"features":{}} x"#,
        ] {
            assert!(
                matches!(b.push_sample_json(bad), Err(TrainError::Sample(_))),
                "{bad}"
            );
        }
        b.push_sample_json(r#"{"labels":{"click":"yes"},"features":{"user":"c"}}"#)
            .unwrap();
        let batch = b.take();
        assert_eq!(batch.len, 2);
        assert_eq!(
            batch.keys,
            vec![feature_id("user", "a"), feature_id("user", "c")]
        );
        assert_eq!(batch.bag_offsets, vec![0, 1, 2]);
        assert_eq!(batch.has_label[0], vec![true, false]);
    }

    #[test]
    fn serving_instances_hash_like_training_samples() {
        let c = cfg(&[
            ("user", FieldKind::Sparse),
            ("tags", FieldKind::Sparse),
            ("price", FieldKind::Dense),
            ("k", FieldKind::Sparse),
        ]);
        let fz = Featurizer::new(&c).unwrap();
        let feats = r#"{"user":"u\"1","tags":["a",7,1.25],"price":-4,"k":18446744073709551615}"#;
        let train = one(
            &fz,
            &format!(r#"{{"labels":{{"click":0}},"features":{feats}}}"#),
        );
        let mut b = BatchBuilder::new(&fz);
        b.push_features_json(feats).unwrap();
        let v: serde_json::Value = serde_json::from_str(feats).unwrap();
        b.push_features_value(&v).unwrap();
        let serve = b.take();
        assert_eq!(serve.len, 2);
        for i in 0..2 {
            for f in 0..3 {
                let a: Vec<_> = train
                    .bag(0, f)
                    .0
                    .iter()
                    .map(|&k| train.keys[k as usize])
                    .collect();
                let s: Vec<_> = serve
                    .bag(i, f)
                    .0
                    .iter()
                    .map(|&k| serve.keys[k as usize])
                    .collect();
                assert_eq!(a, s);
            }
            assert_eq!(serve.dense[i], train.dense[0]);
        }
        assert_eq!(
            train.keys[train.bag(0, 0).0[0] as usize],
            feature_id("user", "u\"1")
        );
        assert_eq!(
            train.keys[train.bag(0, 1).0[2] as usize],
            feature_id("tags", "1.25")
        );
    }

    #[test]
    fn crosses_combine_every_pair_of_source_ids() {
        let mut c = cfg(&[
            ("seg", FieldKind::Sparse),
            ("tags", FieldKind::Sparse),
            ("seg*tags", FieldKind::Cross),
            ("seg*missing", FieldKind::Cross),
        ]);
        assert!(
            c.validate().is_err(),
            "a cross of an unlisted field is refused"
        );
        let mut single = c.clone();
        single.fields.truncate(2);
        single.fields.push(FieldConfig {
            name: "seg".into(),
            kind: FieldKind::Cross,
            pooling: None,
            boundaries: vec![],
        });
        assert!(single.validate().is_err(), "a cross needs two sources");
        c.fields.push(FieldConfig {
            name: "missing".into(),
            kind: FieldKind::Sparse,
            pooling: None,
            boundaries: vec![],
        });
        c.validate().unwrap();
        let fz = Featurizer::new(&c).unwrap();
        let b = one(
            &fz,
            r#"{"labels":{},"features":{"tags":["a","b"],"seg":"s1"}}"#,
        );
        let ids = |f: usize| -> Vec<FeatureId> {
            b.bag(0, f).0.iter().map(|&i| b.keys[i as usize]).collect()
        };
        let (s1, ta, tb) = (
            feature_id("seg", "s1"),
            feature_id("tags", "a"),
            feature_id("tags", "b"),
        );
        let want = |p: FeatureId, q: FeatureId| {
            feature_id("seg*tags", &format!("{:016x}.{:016x}.", p.0, q.0))
        };
        assert_eq!(ids(2), vec![want(s1, ta), want(s1, tb)]);
        assert!(
            ids(3).is_empty(),
            "a cross with a missing source is missing"
        );
        assert_eq!(b.bag(0, 2).1, 0.5);
    }
}
