//! Sample quality as a production team monitors it (the joiner's `GET /v1/quality` and
//! the quality series of `/metrics`): how late labels arrive, how old samples are when
//! they leave, the positive rate per task, and which feature fields the samples carry
//! with their most frequent values. The operator feeds it at two points (a click joins,
//! a sample is emitted); memory is bounded whatever the stream holds.
//!
//! Label delay is measured from the exposure for both clicks and detail clicks (a
//! detail click's delay is therefore exposure → detail click, not click → detail
//! click: the operator does not pair a detail click with one click). Each label falls
//! in exactly one bucket; `past_window` counts the labels that reached a held exposure
//! of their key after its window had closed (the late ones the joiner can attribute;
//! a label arriving after the exposure left is only counted `unjoined` in `/stats`).

use serde::Serialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Upper bounds (ms) of the label-delay buckets; a delay above the last one but within
/// the window is `in_window`.
pub const LABEL_DELAY_BOUNDS_MS: [i64; 5] = [1_000, 10_000, 60_000, 300_000, 600_000];

/// Upper bounds (s) of the sample-delay histogram of `/metrics`.
pub const SAMPLE_DELAY_BOUNDS_S: [f64; 11] = [
    1.0, 10.0, 60.0, 120.0, 300.0, 600.0, 630.0, 660.0, 900.0, 1800.0, 3600.0,
];

/// Fields tracked for coverage; further field names are ignored (a stream with
/// unbounded field names must not grow the joiner's memory).
pub const MAX_FIELDS: usize = 64;
/// Candidate values kept per field (space-saving sketch); the top 5 are reported.
const TOP_CAPACITY: usize = 16;
const TOP_REPORTED: usize = 5;
/// Longer values are cut to this many bytes before counting.
const MAX_VALUE_BYTES: usize = 64;

/// Labels of one kind by delay since their exposure, each in exactly one bucket.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelDelay {
    /// Per bucket of [`LABEL_DELAY_BOUNDS_MS`], then `in_window`.
    pub buckets: [u64; 6],
    pub past_window: u64,
    /// Sum of the in-window delays, seconds (the histogram's `_sum`).
    pub sum_seconds: f64,
}

impl LabelDelay {
    fn joined(&mut self, delay_ms: i64) {
        let delay_ms = delay_ms.max(0);
        let i = LABEL_DELAY_BOUNDS_MS
            .iter()
            .position(|&b| delay_ms <= b)
            .unwrap_or(5);
        self.buckets[i] += 1;
        self.sum_seconds += delay_ms as f64 / 1000.0;
    }

    /// Labels that joined (every bucket but `past_window`).
    pub fn joined_count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    pub fn report(&self) -> LabelDelayReport {
        let b = &self.buckets;
        LabelDelayReport {
            le_1s: b[0],
            le_60s: b[1] + b[2],
            le_600s: b[3] + b[4],
            in_window: b[5],
            past_window: self.past_window,
        }
    }
}

/// Bounded top-k of a field's values (Metwally et al.'s space-saving: a new value
/// replaces the rarest candidate and inherits its count, so counts are upper bounds
/// and every value more frequent than 1/capacity of the stream is kept).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopValues {
    candidates: Vec<(String, u64)>,
}

impl TopValues {
    fn observe(&mut self, value: &str) {
        if let Some(c) = self.candidates.iter_mut().find(|(v, _)| v == value) {
            c.1 += 1;
            return;
        }
        let value = truncate(value).to_string();
        if self.candidates.len() < TOP_CAPACITY {
            self.candidates.push((value, 1));
        } else if let Some(min) = self.candidates.iter_mut().min_by_key(|(_, n)| *n) {
            *min = (value, min.1 + 1);
        }
    }

    pub fn top(&self) -> Vec<ValueCount> {
        let mut v: Vec<&(String, u64)> = self.candidates.iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.into_iter()
            .take(TOP_REPORTED)
            .map(|(value, count)| ValueCount {
                value: value.clone(),
                count: *count,
            })
            .collect()
    }
}

fn truncate(s: &str) -> &str {
    if s.len() <= MAX_VALUE_BYTES {
        return s;
    }
    let mut end = MAX_VALUE_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldCoverage {
    /// Samples carrying the field.
    pub present: u64,
    pub top: TopValues,
}

/// Everything `/v1/quality` reports except the pending sizes and consumer lag (which
/// the operator's state and the source hold).
#[derive(Clone, Debug)]
pub struct Quality {
    pub click_delay: LabelDelay,
    pub detail_click_delay: LabelDelay,
    /// Exposure event time → watermark at emission, ms.
    pub sample_delay: hdrhistogram::Histogram<u64>,
    pub sample_delay_sum_seconds: f64,
    pub samples: u64,
    pub click_positive: u64,
    pub detail_click_positive: u64,
    /// Samples whose feature object was read: those of `quality_feature_rate` whose
    /// feature object was JSON. Feature coverage shares are over these.
    pub inspected: u64,
    pub fields: BTreeMap<String, FieldCoverage>,
}

impl Default for Quality {
    fn default() -> Self {
        Quality {
            click_delay: LabelDelay::default(),
            detail_click_delay: LabelDelay::default(),
            // 1 ms .. 30 days at 2 significant digits: a few KB.
            sample_delay: hdrhistogram::Histogram::new_with_bounds(1, 30 * 86_400_000, 2)
                .expect("static histogram bounds"),
            sample_delay_sum_seconds: 0.0,
            samples: 0,
            click_positive: 0,
            detail_click_positive: 0,
            inspected: 0,
            fields: BTreeMap::new(),
        }
    }
}

impl Quality {
    /// A label joined its exposure `delay_ms` after it.
    #[inline]
    pub fn label_joined(&mut self, detail: bool, delay_ms: i64) {
        self.delay_mut(detail).joined(delay_ms);
    }

    /// A label reached a held exposure of its key after the exposure's window.
    #[inline]
    pub fn label_past_window(&mut self, detail: bool) {
        self.delay_mut(detail).past_window += 1;
    }

    fn delay_mut(&mut self, detail: bool) -> &mut LabelDelay {
        if detail {
            &mut self.detail_click_delay
        } else {
            &mut self.click_delay
        }
    }

    /// A sample left the joiner: exposure at `ts`, watermark `watermark`, its labels
    /// and, if it is one of the inspected share, its raw feature object.
    pub fn sample(
        &mut self,
        ts: i64,
        watermark: i64,
        click: bool,
        detail_click: bool,
        features: Option<&[u8]>,
    ) {
        self.samples += 1;
        self.click_positive += click as u64;
        self.detail_click_positive += detail_click as u64;
        let delay_ms = watermark.saturating_sub(ts).max(0) as u64;
        self.sample_delay.saturating_record(delay_ms.max(1));
        self.sample_delay_sum_seconds += delay_ms as f64 / 1000.0;
        if let Some(raw) = features {
            self.features(raw);
        }
    }

    fn features(&mut self, raw: &[u8]) {
        let Ok(map) = serde_json::from_slice::<BTreeMap<Cow<'_, str>, &RawValue>>(raw) else {
            return;
        };
        self.inspected += 1;
        for (name, value) in map {
            if name.ends_with("_label") {
                continue;
            }
            if !self.fields.contains_key(name.as_ref()) && self.fields.len() < MAX_FIELDS {
                self.fields
                    .insert(name.to_string(), FieldCoverage::default());
            }
            let Some(field) = self.fields.get_mut(name.as_ref()) else {
                continue;
            };
            field.present += 1;
            observe_value(&mut field.top, value.get());
        }
    }

    /// The JSON of `/v1/quality`, with the operator's pending sizes and the source's lag.
    pub fn report(&self, pending: Pending, consumer_lag: &BTreeMap<String, u64>) -> QualityReport {
        let rate = |n: u64| {
            if self.samples == 0 {
                0.0
            } else {
                n as f64 / self.samples as f64
            }
        };
        let q = |p: f64| self.sample_delay.value_at_quantile(p) as f64 / 1000.0;
        let count = self.sample_delay.len();
        QualityReport {
            label_delay: LabelDelays {
                click: self.click_delay.report(),
                detail_click: self.detail_click_delay.report(),
            },
            sample_delay_seconds: SampleDelay {
                count,
                p50: if count == 0 { 0.0 } else { q(0.5) },
                p90: if count == 0 { 0.0 } else { q(0.9) },
                p99: if count == 0 { 0.0 } else { q(0.99) },
            },
            positive_rate: PositiveRate {
                click: rate(self.click_positive),
                detail_click: rate(self.detail_click_positive),
            },
            feature_coverage: self
                .fields
                .iter()
                .map(|(field, c)| Coverage {
                    field: field.clone(),
                    share: if self.inspected == 0 {
                        0.0
                    } else {
                        c.present as f64 / self.inspected as f64
                    },
                    top: c.top.top(),
                })
                .collect(),
            pending,
            consumer_lag: consumer_lag.clone(),
        }
    }

    /// Per-bucket counts of the sample delay at [`SAMPLE_DELAY_BOUNDS_S`] (then +Inf),
    /// for the Prometheus histogram.
    pub fn sample_delay_buckets(&self) -> Vec<(f64, u64)> {
        let mut out = Vec::with_capacity(SAMPLE_DELAY_BOUNDS_S.len() + 1);
        let mut below = 0;
        for b in SAMPLE_DELAY_BOUNDS_S {
            let le = self.sample_delay.count_between(0, (b * 1000.0) as u64);
            out.push((b, le.saturating_sub(below)));
            below = le.max(below);
        }
        out.push((f64::INFINITY, self.sample_delay.len().saturating_sub(below)));
        out
    }
}

/// A string is counted by its text, a number or boolean by its literal, an array by
/// each of its scalar items, an object by its (cut) JSON.
fn observe_value(top: &mut TopValues, raw: &str) {
    match raw.as_bytes().first() {
        Some(b'"') => match serde_json::from_str::<Cow<'_, str>>(raw) {
            Ok(s) => top.observe(&s),
            Err(_) => top.observe(raw),
        },
        Some(b'[') => {
            if let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(raw) {
                for item in items {
                    if !item.get().starts_with(['[', '{']) {
                        observe_value(top, item.get());
                    }
                }
            }
        }
        _ => top.observe(raw),
    }
}

/// Events the operator holds (its state size).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Pending {
    pub exposures: u64,
    pub clicks: u64,
    pub detail_clicks: u64,
    pub features: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LabelDelayReport {
    pub le_1s: u64,
    pub le_60s: u64,
    pub le_600s: u64,
    pub in_window: u64,
    pub past_window: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LabelDelays {
    pub click: LabelDelayReport,
    pub detail_click: LabelDelayReport,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SampleDelay {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PositiveRate {
    pub click: f64,
    pub detail_click: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ValueCount {
    pub value: String,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Coverage {
    pub field: String,
    pub share: f64,
    pub top: Vec<ValueCount>,
}

/// `GET /v1/quality` (the contract shared with the dashboard).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QualityReport {
    pub label_delay: LabelDelays,
    pub sample_delay_seconds: SampleDelay,
    pub positive_rate: PositiveRate,
    pub feature_coverage: Vec<Coverage>,
    pub pending: Pending,
    pub consumer_lag: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests;
