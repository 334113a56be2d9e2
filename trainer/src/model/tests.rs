//! Gradient checks against central finite differences for every model, and a check
//! that each model learns a planted signal through a parameter store.

use super::*;
use crate::config::{FieldConfig, FieldKind};
use crate::eval::Evaluator;
use crate::memstore::MemStore;
use rand::{Rng, SeedableRng};

fn small_config(kind: ModelKind) -> ModelConfig {
    let mut c = ModelConfig::load(None).unwrap();
    c.model = kind;
    c.embedding_dim = 4;
    c.init_std = 0.3;
    c.mmoe.experts = 3;
    c.mmoe.expert_units = 5;
    c.mmoe.tower_units = vec![4];
    c.deepfm.hidden = vec![6, 4];
    c.fields = [
        ("user", FieldKind::Sparse),
        ("item", FieldKind::Sparse),
        ("tags", FieldKind::Sparse),
        ("price", FieldKind::Dense),
    ]
    .iter()
    .map(|(n, k)| FieldConfig {
        name: n.to_string(),
        kind: *k,
        pooling: None,
        boundaries: vec![],
    })
    .collect();
    if kind == ModelKind::Deepfm {
        c.tasks = vec!["click".into()];
    }
    c
}

/// Planted truth: click depends on user and item affinities and the price.
fn sample_line(rng: &mut impl Rng, n_users: u32, n_items: u32) -> String {
    let u = rng.gen_range(0..n_users);
    let i = rng.gen_range(0..n_items);
    let price: f64 = rng.gen_range(1.0..100.0);
    let aff = ((u % 7) as f64 - 3.0) * 0.5
        + ((i % 5) as f64 - 2.0) * 0.6
        + if (u + i) % 3 == 0 { 1.2 } else { -0.4 }
        - 0.3 * price.ln();
    let p = 1.0 / (1.0 + (-aff).exp());
    let click = rng.gen_bool(p) as u8;
    let detail = (click == 1 && rng.gen_bool(0.5)) as u8;
    format!(
        r#"{{"sample_id":"p:{i}","ts":0,"labels":{{"click":{click},"detail_click":{detail}}},"features":{{"user":"u{u}","item":"i{i}","tags":["t{}","t{}"],"price":{price:.2},"click_label":{click},"detail_click_label":{detail}}}}}"#,
        i % 4,
        u % 3
    )
}

fn batch_of(model: &Model, lines: &[String]) -> Batch {
    let mut b = model.batch_builder();
    for l in lines {
        b.push_sample_json(l).unwrap();
    }
    b.take()
}

fn grad_check(kind: ModelKind) {
    let cfg = small_config(kind);
    let model = Model::from_config(&cfg).unwrap();
    let store = MemStore::default();
    store.declare(model.schema()).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut lines: Vec<String> = (0..6).map(|_| sample_line(&mut rng, 4, 4)).collect();
    // One sample without a detail_click label: it must not contribute to that head.
    lines.push(r#"{"labels":{"click":1},"features":{"user":"u1","item":"i2","price":3}}"#.into());
    let batch = batch_of(&model, &lines);
    let mut p = model.pull(&store, &batch, None).unwrap();
    // Non-zero linear/lr weights and biases so every path carries gradient.
    for t in p.tables.iter_mut() {
        if t.iter().all(|&v| v == 0.0) {
            t.iter_mut().for_each(|v| *v = rng.gen_range(-0.5..0.5));
        }
    }
    for d in Arc::make_mut(&mut p.dense).iter_mut() {
        if d.iter().all(|&v| v == 0.0) {
            d.iter_mut().for_each(|v| *v = rng.gen_range(-0.3..0.3));
        }
    }
    let (_, g) = model.gradients(&batch, &p).unwrap();
    let eps = 1e-2f32;
    let (mut checked, mut bad) = (0, Vec::new());
    let mut check = |analytic: f32, plus: f64, minus: f64, what: String| {
        let numeric = (plus - minus) / (2.0 * eps as f64);
        let a = analytic as f64;
        checked += 1;
        if (a - numeric).abs() > 2e-3 + 0.03 * a.abs().max(numeric.abs()) {
            bad.push(format!("{what}: analytic {a:.6} numeric {numeric:.6}"));
        }
    };
    for t in 0..p.tables.len() {
        for j in 0..p.tables[t].len() {
            let orig = p.tables[t][j];
            p.tables[t][j] = orig + eps;
            let plus = model.loss(&batch, &p).unwrap();
            p.tables[t][j] = orig - eps;
            let minus = model.loss(&batch, &p).unwrap();
            p.tables[t][j] = orig;
            check(g.tables[t][j], plus, minus, format!("table {t}[{j}]"));
        }
    }
    for d in 0..p.dense.len() {
        let n = p.dense[d].len();
        let picks: Vec<usize> = if n <= 40 {
            (0..n).collect()
        } else {
            (0..40).map(|_| rng.gen_range(0..n)).collect()
        };
        for j in picks {
            let orig = p.dense[d][j];
            Arc::make_mut(&mut p.dense)[d][j] = orig + eps;
            let plus = model.loss(&batch, &p).unwrap();
            Arc::make_mut(&mut p.dense)[d][j] = orig - eps;
            let minus = model.loss(&batch, &p).unwrap();
            Arc::make_mut(&mut p.dense)[d][j] = orig;
            check(
                g.dense[d][j],
                plus,
                minus,
                format!("dense {}[{j}]", model.schema().dense[d].name),
            );
        }
    }
    // ReLU kinks within eps of a pre-activation can spoil a handful of coordinates.
    assert!(
        bad.len() * 50 <= checked,
        "{kind:?}: {} of {checked} gradients off:\n{}",
        bad.len(),
        bad.join("\n")
    );
    assert!(checked > 20, "only {checked} coordinates checked");
}

#[test]
fn lr_gradients_match_finite_differences() {
    grad_check(ModelKind::Lr);
}

#[test]
fn deepfm_gradients_match_finite_differences() {
    grad_check(ModelKind::Deepfm);
}

#[test]
fn mmoe_gradients_match_finite_differences() {
    grad_check(ModelKind::Mmoe);
}

fn learns(kind: ModelKind) -> f64 {
    let mut cfg = small_config(kind);
    cfg.init_std = 0.01;
    cfg.sparse_optimizer.lr = 0.05;
    cfg.dense_optimizer.lr = 0.01;
    cfg.lr.optimizer.alpha = 0.1;
    let model = Model::from_config(&cfg).unwrap();
    let store = MemStore::default();
    store.declare(model.schema()).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut ev = Evaluator::new(model.tasks(), 3000);
    for _ in 0..150 {
        let lines: Vec<String> = (0..64).map(|_| sample_line(&mut rng, 30, 20)).collect();
        let batch = batch_of(&model, &lines);
        let preds = model.train_batch(&store, &batch, None).unwrap();
        assert!(preds
            .iter()
            .flatten()
            .all(|p| p.is_finite() && *p > 0.0 && *p < 1.0));
        ev.record(&batch, &preds);
    }
    let r = ev.report();
    r[0].1.current.auc.unwrap()
}

#[test]
fn every_model_learns_a_planted_signal() {
    for kind in [ModelKind::Lr, ModelKind::Deepfm, ModelKind::Mmoe] {
        let auc = learns(kind);
        assert!(auc > 0.75 && auc < 0.97, "{kind:?}: current AUC {auc}");
    }
}

#[test]
fn predict_on_instances_equals_the_training_forward() {
    let cfg = small_config(ModelKind::Mmoe);
    let model = Model::from_config(&cfg).unwrap();
    let store = MemStore::default();
    store.declare(model.schema()).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for _ in 0..5 {
        let lines: Vec<String> = (0..32).map(|_| sample_line(&mut rng, 10, 10)).collect();
        model
            .train_batch(&store, &batch_of(&model, &lines), None)
            .unwrap();
    }
    let lines: Vec<String> = (0..8).map(|_| sample_line(&mut rng, 10, 10)).collect();
    let batch = batch_of(&model, &lines);
    let trained = model.predict_batch(&store, &batch).unwrap();
    let instances: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["features"].clone())
        .collect();
    let served = model.predict(&store, &instances).unwrap();
    for i in 0..8 {
        for t in 0..2 {
            assert_eq!(served[i][t], trained[t][i]);
        }
    }
}

#[test]
fn extreme_parameters_never_give_nan() {
    let cfg = small_config(ModelKind::Deepfm);
    let model = Model::from_config(&cfg).unwrap();
    let store = MemStore::default();
    store.declare(model.schema()).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let lines: Vec<String> = (0..8).map(|_| sample_line(&mut rng, 4, 4)).collect();
    let batch = batch_of(&model, &lines);
    let mut p = model.pull(&store, &batch, None).unwrap();
    for t in p.tables.iter_mut() {
        t.iter_mut().for_each(|v| *v = 1e6);
    }
    let (preds, g) = model.gradients(&batch, &p).unwrap();
    assert!(preds[0]
        .iter()
        .all(|p| p.is_finite() && *p > 0.0 && *p < 1.0));
    assert!(g.dense.iter().flatten().all(|v| !v.is_nan()));
}

#[test]
fn mismatched_store_shapes_are_errors() {
    let model = Model::from_config(&small_config(ModelKind::Mmoe)).unwrap();
    let mut other = small_config(ModelKind::Mmoe);
    other.mmoe.expert_units = 7;
    let other = Model::from_config(&other).unwrap();
    let store = MemStore::default();
    store.declare(other.schema()).unwrap();
    assert!(matches!(
        model.pull_dense(&store),
        Err(TrainError::Shape(_))
    ));
    let empty = MemStore::default();
    assert!(matches!(
        model.pull_dense(&empty),
        Err(TrainError::Params(_))
    ));
}
