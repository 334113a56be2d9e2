//! Shared fixtures: small schemas with each optimizer.

use odl_proto::params::{DenseSpec, ModelSchema, Optimizer, TableSpec};

pub const ADAGRAD: Optimizer = Optimizer::Adagrad {
    lr: 0.05,
    initial_accumulator: 0.1,
};

pub fn table(name: &str, dim: usize, optimizer: Optimizer) -> TableSpec {
    TableSpec {
        name: name.into(),
        dim,
        optimizer,
        init_std: 0.01,
    }
}

/// Three tables (Adagrad, Adam, FTRL) and two dense tensors.
pub fn schema() -> ModelSchema {
    ModelSchema {
        tables: vec![
            table("emb", 4, ADAGRAD),
            table(
                "adam",
                3,
                Optimizer::Adam {
                    lr: 0.01,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                },
            ),
            table(
                "lr",
                1,
                Optimizer::Ftrl {
                    alpha: 0.05,
                    beta: 1.0,
                    l1: 0.01,
                    l2: 0.1,
                },
            ),
        ],
        dense: vec![
            DenseSpec {
                name: "mlp.w".into(),
                shape: vec![2, 3],
                optimizer: ADAGRAD,
                init: vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
            },
            DenseSpec {
                name: "mlp.b".into(),
                shape: vec![3],
                optimizer: Optimizer::Adam {
                    lr: 0.01,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                },
                init: vec![0.0; 3],
            },
        ],
    }
}

/// A deterministic gradient for `key` of `dim` floats.
pub fn grad(key: u64, dim: usize) -> Vec<f32> {
    (0..dim)
        .map(|i| ((key.wrapping_mul(31).wrapping_add(i as u64) % 17) as f32 - 8.0) / 10.0)
        .collect()
}
