//! Streaming evaluation (TRAIN.md "Streaming evaluation"): per task, samples seen, AUC
//! and logloss over everything since the start (`global`) and over the latest window
//! (`current`), from predictions made before the model learnt from the batch.
//!
//! `current` is exact: the window's (prediction, label) pairs sit in a ring buffer and
//! the AUC is computed by sorting them, ties counted as half (the Mann-Whitney
//! statistic). `global` must run forever in bounded memory, so its AUC counts
//! positives and negatives per bucket of the prediction's f32 bit pattern with the low
//! 12 mantissa bits dropped: buckets are 2^-11 wide relative to the prediction, a
//! pair is misordered only when both fall in one bucket (counted as a tie), and the
//! table is 2 × 260,097 counters per task. Its logloss is exact.

use serde::Serialize;

/// Predictions are clamped to this distance from 0 and 1 for logloss and bucketing.
pub const PRED_EPS: f64 = 1e-7;
const BUCKET_SHIFT: u32 = 12;
const BUCKETS: usize = (0x3F80_0000u32 >> BUCKET_SHIFT) as usize + 1;

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Metrics {
    /// `None` (JSON `null`) while the samples hold only one class: AUC is undefined.
    pub auc: Option<f64>,
    pub logloss: f64,
}

/// One task's figures in `report.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TaskReport {
    pub samples: u64,
    pub skipped: u64,
    pub global: Metrics,
    pub current: Metrics,
}

#[inline]
fn clamp(p: f32) -> f32 {
    p.clamp(PRED_EPS as f32, (1.0 - PRED_EPS) as f32)
}

#[inline]
fn logloss_term(p: f32, y: bool) -> f64 {
    let p = (p as f64).clamp(PRED_EPS, 1.0 - PRED_EPS);
    if y {
        -p.ln()
    } else {
        -(1.0 - p).ln()
    }
}

/// Exact AUC of `(prediction, label)` pairs with ties counted half; sorts `pairs`.
pub fn exact_auc(pairs: &mut [(f32, bool)]) -> Option<f64> {
    pairs.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let (mut neg_below, mut acc, mut pos_total) = (0f64, 0f64, 0f64);
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        let (mut pos, mut neg) = (0f64, 0f64);
        while j < pairs.len() && pairs[j].0 == pairs[i].0 {
            if pairs[j].1 {
                pos += 1.0
            } else {
                neg += 1.0
            }
            j += 1;
        }
        acc += pos * (neg_below + 0.5 * neg);
        neg_below += neg;
        pos_total += pos;
        i = j;
    }
    let neg_total = neg_below;
    (pos_total > 0.0 && neg_total > 0.0).then(|| acc / (pos_total * neg_total))
}

/// Evaluation state of one task.
#[derive(Clone, Debug)]
pub struct TaskEval {
    samples: u64,
    skipped: u64,
    loss_sum: f64,
    /// Interleaved (negatives, positives) per bucket.
    hist: Vec<u64>,
    window: Vec<(f32, bool)>,
    head: usize,
    scratch: Vec<(f32, bool)>,
    capacity: usize,
}

impl TaskEval {
    pub fn new(window: usize) -> TaskEval {
        TaskEval {
            samples: 0,
            skipped: 0,
            loss_sum: 0.0,
            hist: vec![0; 2 * BUCKETS],
            window: Vec::with_capacity(window.min(1 << 20)),
            head: 0,
            scratch: Vec::new(),
            capacity: window.max(1),
        }
    }

    #[inline]
    pub fn record(&mut self, p: f32, y: bool) {
        let p = if p.is_nan() { 0.5 } else { clamp(p) };
        self.samples += 1;
        self.loss_sum += logloss_term(p, y);
        let bucket = (p.to_bits() >> BUCKET_SHIFT) as usize;
        self.hist[2 * bucket + y as usize] += 1;
        if self.window.len() < self.capacity {
            self.window.push((p, y));
        } else {
            self.window[self.head] = (p, y);
            self.head = (self.head + 1) % self.capacity;
        }
    }

    pub fn skip(&mut self, n: u64) {
        self.skipped += n;
    }

    pub fn samples(&self) -> u64 {
        self.samples
    }

    pub fn global_auc(&self) -> Option<f64> {
        let (mut neg_below, mut acc, mut pos_total) = (0f64, 0f64, 0f64);
        for b in self.hist.chunks_exact(2) {
            let (neg, pos) = (b[0] as f64, b[1] as f64);
            acc += pos * (neg_below + 0.5 * neg);
            neg_below += neg;
            pos_total += pos;
        }
        (pos_total > 0.0 && neg_below > 0.0).then(|| acc / (pos_total * neg_below))
    }

    pub fn report(&mut self) -> TaskReport {
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.window);
        let current_loss = self
            .scratch
            .iter()
            .map(|&(p, y)| logloss_term(p, y))
            .sum::<f64>();
        let n = self.scratch.len().max(1) as f64;
        TaskReport {
            samples: self.samples,
            skipped: self.skipped,
            global: Metrics {
                auc: self.global_auc(),
                logloss: self.loss_sum / self.samples.max(1) as f64,
            },
            current: Metrics {
                auc: exact_auc(&mut self.scratch),
                logloss: current_loss / n,
            },
        }
    }
}

/// All tasks of a model, fed batch by batch.
#[derive(Clone, Debug)]
pub struct Evaluator {
    tasks: Vec<(String, TaskEval)>,
}

impl Evaluator {
    pub fn new(tasks: &[String], window: usize) -> Evaluator {
        Evaluator {
            tasks: tasks
                .iter()
                .map(|t| (t.clone(), TaskEval::new(window)))
                .collect(),
        }
    }

    /// Record one batch: `preds[t][i]` is task `t`'s prediction for sample `i`, made
    /// before the batch was learnt. Samples without a label for a task are counted as
    /// skipped for it.
    pub fn record(&mut self, batch: &crate::features::Batch, preds: &[Vec<f32>]) {
        for (t, (_, ev)) in self.tasks.iter_mut().enumerate() {
            let (labels, has) = (&batch.labels[t], &batch.has_label[t]);
            for i in 0..batch.len {
                if has[i] {
                    ev.record(preds[t][i], labels[i] > 0.5);
                } else {
                    ev.skip(1);
                }
            }
        }
    }

    pub fn task(&self, t: usize) -> &TaskEval {
        &self.tasks[t].1
    }

    pub fn report(&mut self) -> Vec<(String, TaskReport)> {
        self.tasks
            .iter_mut()
            .map(|(n, e)| (n.clone(), e.report()))
            .collect()
    }

    /// The figures the publisher's AUC gates read (undefined AUCs as 0.5).
    pub fn progress(&mut self, samples: u64) -> odl_proto::params::TrainProgress {
        let tasks = self
            .report()
            .into_iter()
            .map(|(task, r)| odl_proto::params::TaskProgress {
                task,
                samples: r.samples,
                global_auc: r.global.auc.unwrap_or(0.5),
                current_auc: r.current.auc.unwrap_or(0.5),
            })
            .collect();
        odl_proto::params::TrainProgress { samples, tasks }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn brute(pairs: &[(f32, bool)]) -> Option<f64> {
        let (mut num, mut den) = (0f64, 0f64);
        for a in pairs.iter().filter(|p| p.1) {
            for b in pairs.iter().filter(|p| !p.1) {
                den += 1.0;
                num += if a.0 > b.0 {
                    1.0
                } else if a.0 == b.0 {
                    0.5
                } else {
                    0.0
                };
            }
        }
        (den > 0.0).then(|| num / den)
    }

    #[test]
    fn exact_auc_matches_pairwise_with_ties() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for n in [2usize, 5, 50, 400] {
            for levels in [2u32, 5, 1000] {
                let pairs: Vec<(f32, bool)> = (0..n)
                    .map(|_| {
                        let p = rng.gen_range(0..levels) as f32 / levels as f32;
                        (p, rng.gen_bool((p as f64 * 0.8 + 0.1).min(1.0)))
                    })
                    .collect();
                let want = brute(&pairs);
                let got = exact_auc(&mut pairs.clone());
                match (want, got) {
                    (Some(w), Some(g)) => assert!((w - g).abs() < 1e-12, "{w} {g}"),
                    (None, None) => {}
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(exact_auc(&mut [(0.3, true), (0.3, false)]), Some(0.5));
        assert_eq!(exact_auc(&mut [(0.3, true), (0.4, true)]), None);
        assert_eq!(exact_auc(&mut [(0.1, false), (0.9, true)]), Some(1.0));
    }

    #[test]
    fn window_is_exact_and_global_is_close() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut ev = TaskEval::new(1000);
        let mut all = Vec::new();
        for _ in 0..5000 {
            let p: f32 = rng.gen::<f32>() * 0.3;
            let y = rng.gen_bool(p as f64 * 2.0);
            ev.record(p, y);
            all.push((p, y));
        }
        let r = ev.report();
        assert_eq!(r.samples, 5000);
        let last = &all[4000..];
        assert!((r.current.auc.unwrap() - brute(last).unwrap()).abs() < 1e-12);
        let ll = last.iter().map(|&(p, y)| logloss_term(p, y)).sum::<f64>() / 1000.0;
        assert!((r.current.logloss - ll).abs() < 1e-9);
        assert!((r.global.auc.unwrap() - brute(&all).unwrap()).abs() < 1e-3);
        let gl = all.iter().map(|&(p, y)| logloss_term(p, y)).sum::<f64>() / 5000.0;
        assert!((r.global.logloss - gl).abs() < 1e-9);
    }

    #[test]
    fn extreme_and_nan_predictions_stay_finite() {
        let mut ev = TaskEval::new(10);
        ev.record(0.0, true);
        ev.record(1.0, false);
        ev.record(f32::NAN, true);
        ev.skip(2);
        let r = ev.report();
        assert!(r.global.logloss.is_finite() && r.current.logloss.is_finite());
        assert_eq!(r.skipped, 2);
        assert_eq!(r.samples, 3);
        let mut empty = TaskEval::new(10);
        let r = empty.report();
        assert_eq!(r.global.auc, None);
        assert_eq!(r.current.logloss, 0.0);
    }
}
