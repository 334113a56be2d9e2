//! Optimizers applied where the parameters live: each sparse row and each dense tensor
//! is one flat `[f32]` "record" holding the weights' storage and the optimizer state,
//! so a row moves (checkpoint, eviction, re-sharding) as one slice.
//!
//! Record layouts for `d` coordinates:
//! - Adagrad: `[w; d][acc; d]`
//! - Adam: `[w; d][m; d][v; d][t]` (`t` = update count as `u32` bits; per row, i.e.
//!   "lazy" Adam: a row only steps when it receives a gradient)
//! - FTRL-proximal: `[z; d][n; d]`; the weight is the closed form of McMahan et al.
//!   (2013), computed on read, so a pulled FTRL value is the weight, never `z`.
//!
//! Updates are computed into a scratch record and committed only if every value is
//! finite, so an overflowing update leaves the row exactly as it was.

use crate::error::{PsError, Result};
use odl_proto::params::Optimizer;

/// Floats in one record of `dim` coordinates.
pub fn record_len(opt: &Optimizer, dim: usize) -> usize {
    match opt {
        Optimizer::Adagrad { .. } | Optimizer::Ftrl { .. } => 2 * dim,
        Optimizer::Adam { .. } => 3 * dim + 1,
    }
}

/// Whether two optimizers store the same record layout (hyperparameters may differ:
/// a warm start may continue with another learning rate).
pub fn same_layout(a: &Optimizer, b: &Optimizer) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// Rejects hyperparameters that would produce NaN or never learn.
pub fn validate(opt: &Optimizer) -> Result<()> {
    let ok = |c: bool, what: &str| {
        if c {
            Ok(())
        } else {
            Err(PsError::invalid(format!("optimizer {opt:?}: {what}")))
        }
    };
    let pos = |x: f32| x.is_finite() && x > 0.0;
    let nonneg = |x: f32| x.is_finite() && x >= 0.0;
    match *opt {
        Optimizer::Adagrad {
            lr,
            initial_accumulator,
        } => {
            ok(pos(lr), "lr must be finite and > 0")?;
            ok(
                nonneg(initial_accumulator),
                "initial_accumulator must be finite and >= 0",
            )
        }
        Optimizer::Adam {
            lr,
            beta1,
            beta2,
            eps,
        } => {
            ok(pos(lr), "lr must be finite and > 0")?;
            ok(nonneg(beta1) && beta1 < 1.0, "beta1 must be in [0, 1)")?;
            ok(nonneg(beta2) && beta2 < 1.0, "beta2 must be in [0, 1)")?;
            ok(pos(eps), "eps must be finite and > 0")
        }
        Optimizer::Ftrl {
            alpha,
            beta,
            l1,
            l2,
        } => {
            ok(pos(alpha), "alpha must be finite and > 0")?;
            ok(nonneg(beta), "beta must be finite and >= 0")?;
            ok(nonneg(l1), "l1 must be finite and >= 0")?;
            ok(nonneg(l2), "l2 must be finite and >= 0")
        }
    }
}

/// Fills `record` (`record_len` floats) for a parameter whose weights start at `init`.
pub fn init_record(opt: &Optimizer, init: &[f32], record: &mut [f32]) {
    let d = init.len();
    match *opt {
        Optimizer::Adagrad {
            initial_accumulator,
            ..
        } => {
            record[..d].copy_from_slice(init);
            record[d..2 * d].fill(initial_accumulator);
        }
        Optimizer::Adam { .. } => {
            record[..d].copy_from_slice(init);
            record[d..].fill(0.0);
            record[3 * d] = f32::from_bits(0);
        }
        Optimizer::Ftrl {
            alpha,
            beta,
            l1,
            l2,
        } => {
            // Choose z so that the closed form at n = 0 gives back `init` exactly.
            let denom = beta / alpha + l2;
            for (z, &w) in record[..d].iter_mut().zip(init) {
                *z = if w == 0.0 {
                    0.0
                } else {
                    -(w * denom + w.signum() * l1)
                };
            }
            record[d..2 * d].fill(0.0);
        }
    }
}

#[inline]
fn ftrl_weight(z: f32, n: f32, alpha: f32, beta: f32, l1: f32, l2: f32) -> f32 {
    if z.abs() <= l1 {
        0.0
    } else {
        -(z - z.signum() * l1) / ((beta + n.sqrt()) / alpha + l2)
    }
}

/// The weights a record holds, into `out` (`dim` floats).
#[inline]
pub fn read_weights(opt: &Optimizer, record: &[f32], out: &mut [f32]) {
    let d = out.len();
    match *opt {
        Optimizer::Adagrad { .. } | Optimizer::Adam { .. } => out.copy_from_slice(&record[..d]),
        Optimizer::Ftrl {
            alpha,
            beta,
            l1,
            l2,
        } => {
            let (z, n) = record[..2 * d].split_at(d);
            for ((o, &z), &n) in out.iter_mut().zip(z).zip(n) {
                *o = ftrl_weight(z, n, alpha, beta, l1, l2);
            }
        }
    }
}

/// Applies one gradient (`dim` floats, already checked finite) to `record`, computing
/// into `scratch` (resized as needed). Returns false, leaving `record` untouched, if the
/// result would not be finite.
pub fn apply(opt: &Optimizer, record: &mut [f32], grad: &[f32], scratch: &mut Vec<f32>) -> bool {
    let d = grad.len();
    scratch.clear();
    scratch.extend_from_slice(record);
    let s = &mut scratch[..];
    match *opt {
        Optimizer::Adagrad { lr, .. } => {
            let (w, acc) = s.split_at_mut(d);
            for ((w, a), &g) in w.iter_mut().zip(acc.iter_mut()).zip(grad) {
                *a += g * g;
                if *a > 0.0 {
                    *w -= lr * g / a.sqrt();
                }
            }
        }
        Optimizer::Adam {
            lr,
            beta1,
            beta2,
            eps,
        } => {
            let t = s[3 * d].to_bits().saturating_add(1);
            s[3 * d] = f32::from_bits(t);
            let c1 = 1.0 - beta1.powi(t.min(i32::MAX as u32) as i32);
            let c2 = 1.0 - beta2.powi(t.min(i32::MAX as u32) as i32);
            let (w, rest) = s.split_at_mut(d);
            let (m, rest) = rest.split_at_mut(d);
            let v = &mut rest[..d];
            for i in 0..d {
                let g = grad[i];
                m[i] = beta1 * m[i] + (1.0 - beta1) * g;
                v[i] = beta2 * v[i] + (1.0 - beta2) * g * g;
                let mh = m[i] / c1;
                let vh = v[i] / c2;
                w[i] -= lr * mh / (vh.sqrt() + eps);
            }
        }
        Optimizer::Ftrl {
            alpha,
            beta,
            l1,
            l2,
        } => {
            let (z, n) = s.split_at_mut(d);
            for i in 0..d {
                let g = grad[i];
                let w = ftrl_weight(z[i], n[i], alpha, beta, l1, l2);
                let n_new = n[i] + g * g;
                let sigma = (n_new.sqrt() - n[i].sqrt()) / alpha;
                z[i] += g - sigma * w;
                n[i] = n_new;
            }
        }
    }
    // The Adam step counter is stored as bits and may look like NaN; skip it.
    let checked = match opt {
        Optimizer::Adam { .. } => &scratch[..3 * d],
        _ => &scratch[..],
    };
    if checked.iter().all(|x| x.is_finite()) {
        record.copy_from_slice(scratch);
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADAGRAD: Optimizer = Optimizer::Adagrad {
        lr: 0.1,
        initial_accumulator: 0.1,
    };
    const ADAM: Optimizer = Optimizer::Adam {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
    };
    const FTRL: Optimizer = Optimizer::Ftrl {
        alpha: 0.05,
        beta: 1.0,
        l1: 0.1,
        l2: 1.0,
    };

    fn weights(opt: &Optimizer, rec: &[f32], d: usize) -> Vec<f32> {
        let mut w = vec![0.0; d];
        read_weights(opt, rec, &mut w);
        w
    }

    /// Reference values computed by hand from the textbook update rules.
    #[test]
    fn adagrad_matches_reference() {
        let mut rec = vec![0.0; 2];
        init_record(&ADAGRAD, &[0.5], &mut rec);
        let mut s = Vec::new();
        assert!(apply(&ADAGRAD, &mut rec, &[0.2], &mut s));
        // acc = 0.1 + 0.04 = 0.14; w = 0.5 - 0.1 * 0.2 / sqrt(0.14)
        let want = 0.5 - 0.1 * 0.2 / 0.14f32.sqrt();
        assert!((rec[0] - want).abs() < 1e-7, "{} vs {want}", rec[0]);
        assert!((rec[1] - 0.14).abs() < 1e-7);
    }

    #[test]
    fn adam_first_step_moves_by_lr() {
        let mut rec = vec![0.0; 4];
        init_record(&ADAM, &[1.0], &mut rec);
        let mut s = Vec::new();
        assert!(apply(&ADAM, &mut rec, &[3.0], &mut s));
        // Bias-corrected first step is lr * sign(g) (up to eps).
        assert!((rec[0] - (1.0 - 0.01)).abs() < 1e-6, "{}", rec[0]);
        assert_eq!(rec[3].to_bits(), 1);
        assert!(apply(&ADAM, &mut rec, &[3.0], &mut s));
        assert_eq!(rec[3].to_bits(), 2);
    }

    #[test]
    fn ftrl_init_round_trips_and_l1_sparsifies() {
        let init = [0.3, -0.2, 0.0, 1e-3];
        let mut rec = vec![0.0; 8];
        init_record(&FTRL, &init, &mut rec);
        let w = weights(&FTRL, &rec, 4);
        for (a, b) in w.iter().zip(init) {
            assert!((a - b).abs() < 1e-6, "{w:?}");
        }
        // A tiny gradient on a zero weight keeps it at zero (|z| <= l1).
        let mut rec = vec![0.0; 2];
        init_record(&FTRL, &[0.0], &mut rec);
        let mut s = Vec::new();
        assert!(apply(&FTRL, &mut rec, &[0.05], &mut s));
        assert_eq!(weights(&FTRL, &rec, 1), vec![0.0]);
        // Consistent large gradients push the weight against the gradient.
        for _ in 0..20 {
            assert!(apply(&FTRL, &mut rec, &[1.0], &mut s));
        }
        assert!(weights(&FTRL, &rec, 1)[0] < 0.0);
    }

    #[test]
    fn overflowing_update_leaves_record_untouched() {
        let mut rec = vec![0.0; 2];
        init_record(&ADAGRAD, &[0.5], &mut rec);
        let before = rec.clone();
        let mut s = Vec::new();
        assert!(!apply(&ADAGRAD, &mut rec, &[1e30], &mut s));
        assert_eq!(rec, before);
    }

    #[test]
    fn bad_hyperparameters_are_rejected() {
        assert!(validate(&ADAGRAD).is_ok());
        assert!(validate(&Optimizer::Adagrad {
            lr: 0.0,
            initial_accumulator: 0.1
        })
        .is_err());
        assert!(validate(&Optimizer::Adam {
            lr: 0.1,
            beta1: 1.0,
            beta2: 0.9,
            eps: 1e-8
        })
        .is_err());
        assert!(validate(&Optimizer::Ftrl {
            alpha: f32::NAN,
            beta: 1.0,
            l1: 0.0,
            l2: 0.0
        })
        .is_err());
    }
}
