//! The publish gates of PUBLISH.md: the streaming AUC over everything since warm start
//! and over the latest window must reach their thresholds, and with `check_numerics`
//! nothing non-finite may be published. A failed gate yields the reason recorded on
//! the `SKIPPED` version.

use super::config::PublishConfig;
use super::payload::Content;
use odl_proto::params::TrainProgress;
use odl_proto::version::GateAuc;

/// The task whose AUC the gates read: the first-hop click, the production setup's
/// primary objective; a model without it is gated on its first task.
pub const GATE_TASK: &str = "click";

/// The AUC figures of the gate task (zeros before any progress is reported).
pub fn gate_auc(p: &TrainProgress) -> GateAuc {
    let task = p
        .tasks
        .iter()
        .find(|t| t.task == GATE_TASK)
        .or_else(|| p.tasks.first());
    match task {
        Some(t) => GateAuc {
            global: sanitize(t.global_auc),
            current: sanitize(t.current_auc),
        },
        None => GateAuc::default(),
    }
}

fn sanitize(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

/// Why the AUC gates refuse a publish, if they do.
pub fn auc_gate(cfg: &PublishConfig, auc: GateAuc) -> Option<String> {
    if auc.global < cfg.global_auc_threshold {
        return Some(format!(
            "global AUC {:.4} < global_auc_threshold {:.4}",
            auc.global, cfg.global_auc_threshold
        ));
    }
    if auc.current < cfg.current_auc_threshold {
        return Some(format!(
            "current AUC {:.4} < current_auc_threshold {:.4}",
            auc.current, cfg.current_auc_threshold
        ));
    }
    None
}

/// Why `check_numerics` refuses `content`, if it does.
pub fn numerics_gate(cfg: &PublishConfig, content: &Content) -> Option<String> {
    if !cfg.check_numerics {
        return None;
    }
    content
        .first_non_finite()
        .map(|what| format!("non-finite value in {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use odl_proto::params::TaskProgress;

    fn progress(global: f64, current: f64) -> TrainProgress {
        TrainProgress {
            samples: 10,
            tasks: vec![
                TaskProgress {
                    task: "detail_click".into(),
                    samples: 10,
                    global_auc: 0.99,
                    current_auc: 0.99,
                },
                TaskProgress {
                    task: "click".into(),
                    samples: 10,
                    global_auc: global,
                    current_auc: current,
                },
            ],
        }
    }

    #[test]
    fn gates_read_the_click_task_and_name_the_failing_threshold() {
        let cfg = PublishConfig::default();
        assert_eq!(
            gate_auc(&progress(0.7, 0.69)),
            GateAuc {
                global: 0.7,
                current: 0.69
            }
        );
        assert!(auc_gate(&cfg, gate_auc(&progress(0.7, 0.69))).is_none());
        let r = auc_gate(&cfg, gate_auc(&progress(0.6, 0.9))).unwrap();
        assert!(
            r.starts_with("global AUC 0.6000 < global_auc_threshold 0.6800"),
            "{r}"
        );
        let r = auc_gate(&cfg, gate_auc(&progress(0.9, 0.5))).unwrap();
        assert!(r.starts_with("current AUC"), "{r}");
        assert_eq!(gate_auc(&TrainProgress::default()), GateAuc::default());
        assert!(auc_gate(&cfg, gate_auc(&progress(f64::NAN, 0.9))).is_some());
        let open = PublishConfig {
            global_auc_threshold: 0.0,
            current_auc_threshold: 0.0,
            ..Default::default()
        };
        assert!(auc_gate(&open, GateAuc::default()).is_none());
    }

    #[test]
    fn numerics_gate_names_the_tensor_unless_disabled() {
        let c = Content {
            dense: vec![("mlp.w0".into(), vec![f32::NAN])],
            ..Default::default()
        };
        assert_eq!(
            numerics_gate(&PublishConfig::default(), &c).unwrap(),
            "non-finite value in dense tensor mlp.w0"
        );
        let off = PublishConfig {
            check_numerics: false,
            ..Default::default()
        };
        assert!(numerics_gate(&off, &c).is_none());
    }
}
