//! Training progress as the workers report it, merged for the publisher's AUC gates:
//! sample counts add up, AUCs are averaged weighted by each worker's samples of the
//! task (each worker evaluates a disjoint share of the stream).

use odl_proto::params::{TaskProgress, TrainProgress};
use std::collections::BTreeMap;

#[derive(Default)]
pub struct ProgressBoard {
    latest: BTreeMap<String, TrainProgress>,
}

impl ProgressBoard {
    /// Keeps `p` as `worker`'s latest report (reports are cumulative, so the newest
    /// replaces the previous one).
    pub fn report(&mut self, worker: &str, p: &TrainProgress) {
        self.latest.insert(worker.to_string(), p.clone());
    }

    pub fn workers(&self) -> usize {
        self.latest.len()
    }

    pub fn merged(&self) -> TrainProgress {
        let mut samples = 0u64;
        // task -> (samples, Σ w·global, Σ w·current, Σ w)
        let mut tasks: BTreeMap<&str, (u64, f64, f64, f64)> = BTreeMap::new();
        for p in self.latest.values() {
            samples += p.samples;
            for t in &p.tasks {
                let e = tasks.entry(&t.task).or_default();
                let w = t.samples.max(1) as f64;
                e.0 += t.samples;
                e.1 += w * t.global_auc;
                e.2 += w * t.current_auc;
                e.3 += w;
            }
        }
        TrainProgress {
            samples,
            tasks: tasks
                .into_iter()
                .map(|(task, (s, g, c, w))| TaskProgress {
                    task: task.to_string(),
                    samples: s,
                    global_auc: g / w,
                    current_auc: c / w,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(samples: u64, auc: f64) -> TrainProgress {
        TrainProgress {
            samples,
            tasks: vec![TaskProgress {
                task: "click".into(),
                samples,
                global_auc: auc,
                current_auc: auc - 0.1,
            }],
        }
    }

    #[test]
    fn merge_is_sample_weighted_and_latest_wins() {
        let mut b = ProgressBoard::default();
        b.report("w0", &p(10, 0.9));
        b.report("w0", &p(100, 0.7));
        b.report("w1", &p(300, 0.8));
        let m = b.merged();
        assert_eq!(m.samples, 400);
        assert_eq!(m.tasks.len(), 1);
        assert!((m.tasks[0].global_auc - (100.0 * 0.7 + 300.0 * 0.8) / 400.0).abs() < 1e-12);
        assert!((m.tasks[0].current_auc - (100.0 * 0.6 + 300.0 * 0.7) / 400.0).abs() < 1e-12);
        assert_eq!(b.workers(), 2);
    }
}
