//! The model configuration (`configs/model.toml` is the embedded default; the files in
//! `configs/models/` overlay it). Typed, unknown keys denied; the optimizer sections are
//! flat (every kind's keys present) so that overlaying a file that switches the kind
//! never leaves a stray key of the default's kind behind.

use crate::error::{Result, TrainError};
use odl_proto::params::Optimizer;
use odl_proto::sample::TASKS;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The embedded default model configuration (mmoe).
pub const DEFAULT_MODEL_TOML: &str = include_str!("../../configs/model.toml");

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Lr,
    Deepfm,
    Mmoe,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    Mean,
    Sum,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    Sparse,
    Dense,
    Bucketized,
    /// The cartesian product of the ids of the sparse fields named `a*b[*c…]`.
    Cross,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    pub name: String,
    pub kind: FieldKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling: Option<Pooling>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boundaries: Vec<f64>,
}

impl FieldConfig {
    /// For a cross, the fields it crosses: its name split at `*`.
    pub fn cross_sources(&self) -> Vec<&str> {
        match self.kind {
            FieldKind::Cross => self.name.split('*').collect(),
            _ => Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Adagrad,
    Adam,
    Ftrl,
}

/// All optimizer hyper-parameters; `kind` picks which ones apply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub lr: f32,
    pub initial_accumulator: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub alpha: f32,
    pub beta: f32,
    pub l1: f32,
    pub l2: f32,
}

impl OptimizerConfig {
    pub fn to_optimizer(&self) -> Optimizer {
        match self.kind {
            OptimizerKind::Adagrad => Optimizer::Adagrad {
                lr: self.lr,
                initial_accumulator: self.initial_accumulator,
            },
            OptimizerKind::Adam => Optimizer::Adam {
                lr: self.lr,
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
            },
            OptimizerKind::Ftrl => Optimizer::Ftrl {
                alpha: self.alpha,
                beta: self.beta,
                l1: self.l1,
                l2: self.l2,
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrConfig {
    pub optimizer: OptimizerConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeepFmConfig {
    pub hidden: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmoeConfig {
    pub experts: usize,
    pub expert_units: usize,
    pub tower_units: Vec<usize>,
}

/// See `configs/model.toml` for what every key means.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub model: ModelKind,
    pub tasks: Vec<String>,
    pub batch_size: usize,
    pub embedding_dim: usize,
    pub init_std: f32,
    pub seed: u64,
    pub pooling: Pooling,
    pub logit_clamp: f32,
    pub current_window: usize,
    pub discover_samples: usize,
    pub fields: Vec<FieldConfig>,
    pub sparse_optimizer: OptimizerConfig,
    pub dense_optimizer: OptimizerConfig,
    pub lr: LrConfig,
    pub deepfm: DeepFmConfig,
    pub mmoe: MmoeConfig,
}

impl ModelConfig {
    /// The embedded default overlaid with `path` (TOML or JSON), then validated.
    pub fn load(path: Option<&Path>) -> Result<ModelConfig> {
        let cfg: ModelConfig = odl_proto::config::load(DEFAULT_MODEL_TOML, path)
            .map_err(|e| TrainError::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The tasks the model has heads for: deepfm predicts only the first.
    pub fn model_tasks(&self) -> &[String] {
        match self.model {
            ModelKind::Deepfm => &self.tasks[..self.tasks.len().min(1)],
            _ => &self.tasks,
        }
    }

    /// Whether `key` is a label copy that must never reach the model: `<task>_label`
    /// for a task of this model or of odl's task list.
    pub fn is_label_key(&self, key: &str) -> bool {
        key.strip_suffix("_label")
            .is_some_and(|prefix| TASKS.contains(&prefix) || self.tasks.iter().any(|t| t == prefix))
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.tasks.is_empty() {
            return bad("`tasks` is empty".into());
        }
        if self.batch_size == 0 || self.embedding_dim == 0 || self.current_window == 0 {
            return bad("batch_size, embedding_dim and current_window must be > 0".into());
        }
        if !(self.logit_clamp > 0.0 && self.logit_clamp.is_finite()) {
            return bad("logit_clamp must be a positive number".into());
        }
        if !(self.init_std >= 0.0 && self.init_std.is_finite()) {
            return bad("init_std must be >= 0".into());
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.fields {
            if self.is_label_key(&f.name) {
                return bad(format!(
                    "field `{}` is a label copy; it would leak the label",
                    f.name
                ));
            }
            if !seen.insert(f.name.as_str()) {
                return bad(format!("field `{}` is listed twice", f.name));
            }
            match f.kind {
                FieldKind::Bucketized
                    if f.boundaries.is_empty()
                        || f.boundaries
                            .windows(2)
                            .any(|w| w[0].partial_cmp(&w[1]) != Some(std::cmp::Ordering::Less)) =>
                {
                    return bad(format!(
                        "field `{}`: bucketized needs strictly increasing boundaries",
                        f.name
                    ));
                }
                FieldKind::Bucketized => {}
                _ if !f.boundaries.is_empty() => {
                    return bad(format!(
                        "field `{}`: boundaries only apply to bucketized",
                        f.name
                    ));
                }
                _ => {}
            }
            let sources = f.cross_sources();
            let sources_ok = sources.iter().all(|src| {
                self.fields.iter().any(|g| {
                    g.name == *src && matches!(g.kind, FieldKind::Sparse | FieldKind::Bucketized)
                })
            });
            match f.kind {
                FieldKind::Cross if sources.len() < 2 || !sources_ok => {
                    return bad(format!(
                        "cross `{}`: needs the names of two or more listed sparse fields joined by `*`",
                        f.name
                    ));
                }
                _ => {}
            }
        }
        if self.fields.is_empty() && self.discover_samples == 0 {
            return bad("no fields listed and discover_samples = 0".into());
        }
        if self.model == ModelKind::Mmoe
            && (!(1..=64).contains(&self.mmoe.experts) || self.mmoe.expert_units == 0)
        {
            return bad("mmoe needs 1..=64 experts and expert_units > 0".into());
        }
        let layers = self.deepfm.hidden.iter().chain(&self.mmoe.tower_units);
        if layers.copied().any(|u| u == 0) {
            return bad("hidden layer widths must be > 0".into());
        }
        for o in [
            &self.sparse_optimizer,
            &self.dense_optimizer,
            &self.lr.optimizer,
        ] {
            let vals = [
                o.lr,
                o.initial_accumulator,
                o.beta1,
                o.beta2,
                o.eps,
                o.alpha,
                o.beta,
                o.l1,
                o.l2,
            ];
            if vals.iter().any(|v| !v.is_finite() || *v < 0.0) {
                return bad("optimizer hyper-parameters must be finite and >= 0".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
    }

    #[test]
    fn every_model_config_parses() {
        let d = ModelConfig::load(None).unwrap();
        assert_eq!(d.model, ModelKind::Mmoe);
        let mut n = 0;
        for entry in std::fs::read_dir(configs_dir().join("models")).unwrap() {
            let p = entry.unwrap().path();
            let c = ModelConfig::load(Some(&p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let stem = p.file_stem().unwrap().to_str().unwrap();
            assert_eq!(
                serde_json::to_value(c.model).unwrap(),
                stem,
                "{}",
                p.display()
            );
            n += 1;
        }
        assert!(n >= 3);
        // The standalone default is complete on its own, without any overlay.
        let full: ModelConfig =
            odl_proto::config::parse_str(DEFAULT_MODEL_TOML, "model.toml").unwrap();
        assert_eq!(full, d);
    }

    #[test]
    fn label_fields_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.toml");
        std::fs::write(
            &p,
            "fields = [{ name = \"click_label\", kind = \"sparse\" }]\n",
        )
        .unwrap();
        let e = ModelConfig::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("click_label"), "{e}");
        std::fs::write(
            &p,
            "fields = [{ name = \"a\", kind = \"bucketized\", boundaries = [2.0, 1.0] }]\n",
        )
        .unwrap();
        assert!(ModelConfig::load(Some(&p)).is_err());
        std::fs::write(&p, "batch_size = 0\n").unwrap();
        assert!(ModelConfig::load(Some(&p)).is_err());
        std::fs::write(&p, "bogus = 1\n").unwrap();
        assert!(ModelConfig::load(Some(&p))
            .unwrap_err()
            .to_string()
            .contains("bogus"));
        std::fs::write(&p, "[dense_optimizer]\nlr = -1.0\n").unwrap();
        assert!(ModelConfig::load(Some(&p)).is_err());
    }

    #[test]
    fn label_keys_are_recognised() {
        let c = ModelConfig::load(None).unwrap();
        assert!(c.is_label_key("click_label"));
        assert!(c.is_label_key("detail_click_label"));
        assert!(!c.is_label_key("price_label"));
        assert!(!c.is_label_key("click"));
    }
}
