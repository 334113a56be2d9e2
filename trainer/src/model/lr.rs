//! `lr`: logistic regression on hashed features, one dim-1 weight table per task, a
//! bias and dense-field weights per task, all learnt by the configured optimizer
//! (FTRL-proximal by default) on the store.

use super::{LossGrad, SchemaBuilder};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::features::Batch;
use crate::nn::{Grads, Init, Params};

pub(crate) struct Lr {
    /// Per task: (table, bias tensor, dense weights tensor).
    heads: Vec<(usize, usize, Option<usize>)>,
    n_dense: usize,
}

impl Lr {
    pub(crate) fn new(
        sb: &mut SchemaBuilder,
        cfg: &ModelConfig,
        tasks: &[String],
        n_dense: usize,
    ) -> Lr {
        let opt = &cfg.lr.optimizer;
        let heads = tasks
            .iter()
            .map(|t| {
                let table = sb.table(&format!("lr.w.{t}"), 1, opt, 0.0);
                let bias = sb.tensor(&format!("lr.b.{t}"), vec![1], Init::Zeros, opt);
                let dense = (n_dense > 0)
                    .then(|| sb.tensor(&format!("lr.dense.{t}"), vec![n_dense], Init::Zeros, opt));
                (table, bias, dense)
            })
            .collect();
        Lr { heads, n_dense }
    }

    pub(crate) fn run(
        &self,
        batch: &Batch,
        p: &Params,
        dloss: Option<LossGrad>,
    ) -> Result<(Vec<Vec<f32>>, Option<Grads>)> {
        let mut logits = Vec::with_capacity(self.heads.len());
        for &(table, bias, dense) in &self.heads {
            let w = &p.tables[table];
            let mut z = vec![p.dense[bias][0]; batch.len];
            for (i, zi) in z.iter_mut().enumerate() {
                for f in 0..batch.n_sparse {
                    let (items, scale) = batch.bag(i, f);
                    *zi += scale * items.iter().map(|&k| w[k as usize]).sum::<f32>();
                }
                if let Some(d) = dense {
                    let x = &batch.dense[i * self.n_dense..(i + 1) * self.n_dense];
                    *zi += x.iter().zip(&p.dense[d]).map(|(a, b)| a * b).sum::<f32>();
                }
            }
            logits.push(z);
        }
        let Some(dloss) = dloss else {
            return Ok((logits, None));
        };
        let dz = dloss(&logits);
        let mut g = Grads::zeros_like(p);
        for (t, &(table, bias, dense)) in self.heads.iter().enumerate() {
            for (i, &d) in dz[t].iter().enumerate().take(batch.len) {
                if d == 0.0 {
                    continue;
                }
                for f in 0..batch.n_sparse {
                    let (items, scale) = batch.bag(i, f);
                    for &k in items {
                        g.tables[table][k as usize] += d * scale;
                    }
                }
                g.dense[bias][0] += d;
                if let Some(dw) = dense {
                    let x = &batch.dense[i * self.n_dense..(i + 1) * self.n_dense];
                    for (gw, xv) in g.dense[dw].iter_mut().zip(x) {
                        *gw += d * xv;
                    }
                }
            }
        }
        Ok((logits, Some(g)))
    }
}
