//! `deepfm` (Guo et al. 2017): logit = linear part (a dim-1 table over the sparse ids,
//! weights over the dense inputs, a bias) + factorization machine over the pooled
//! field embeddings + an MLP over the concatenated embeddings and dense inputs.
//! One task (the config's first).

use super::{LossGrad, SchemaBuilder};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::features::Batch;
use crate::nn::{
    input_matrix, relu_backward, relu_inplace, scatter_pooled, Grads, Init, Linear, Params,
};
use ndarray::{Array2, Axis};

pub(crate) struct DeepFm {
    dim: usize,
    n_sparse: usize,
    n_dense: usize,
    emb: usize,
    linear: usize,
    bias: usize,
    dense_linear: Option<usize>,
    mlp: Vec<Linear>,
    out: Linear,
}

impl DeepFm {
    pub(crate) fn new(
        sb: &mut SchemaBuilder,
        cfg: &ModelConfig,
        n_sparse: usize,
        n_dense: usize,
    ) -> DeepFm {
        let (so, dop, dim) = (
            &cfg.sparse_optimizer,
            &cfg.dense_optimizer,
            cfg.embedding_dim,
        );
        let emb = sb.table("deepfm.emb", dim, so, cfg.init_std);
        let linear = sb.table("deepfm.linear", 1, so, 0.0);
        let bias = sb.tensor("deepfm.bias", vec![1], Init::Zeros, dop);
        let dense_linear = (n_dense > 0)
            .then(|| sb.tensor("deepfm.dense_linear", vec![n_dense], Init::Zeros, dop));
        let mut n_in = n_sparse * dim + n_dense;
        let mut mlp = Vec::new();
        for (l, &units) in cfg.deepfm.hidden.iter().enumerate() {
            mlp.push(sb.linear(&format!("deepfm.mlp.{l}"), n_in, units, Init::He, dop));
            n_in = units;
        }
        let out = sb.linear("deepfm.out", n_in, 1, Init::Xavier, dop);
        DeepFm {
            dim,
            n_sparse,
            n_dense,
            emb,
            linear,
            bias,
            dense_linear,
            mlp,
            out,
        }
    }

    pub(crate) fn run(
        &self,
        batch: &Batch,
        p: &Params,
        dloss: Option<LossGrad>,
    ) -> Result<(Vec<Vec<f32>>, Option<Grads>)> {
        let (d, fs) = (self.dim, self.n_sparse);
        let x = input_matrix(batch, &p.tables[self.emb], d)?;
        let lw = &p.tables[self.linear];
        let mut z = vec![p.dense[self.bias][0]; batch.len];
        let mut sums = vec![0f32; batch.len * d];
        for (i, zi) in z.iter_mut().enumerate() {
            for f in 0..fs {
                let (items, scale) = batch.bag(i, f);
                *zi += scale * items.iter().map(|&k| lw[k as usize]).sum::<f32>();
            }
            if let Some(dl) = self.dense_linear {
                let xd = &batch.dense[i * self.n_dense..(i + 1) * self.n_dense];
                *zi += xd.iter().zip(&p.dense[dl]).map(|(a, b)| a * b).sum::<f32>();
            }
            // FM: ½ Σ_d ((Σ_f e_fd)² − Σ_f e_fd²).
            let row = x.row(i);
            let s = &mut sums[i * d..(i + 1) * d];
            let mut sq = 0f32;
            for f in 0..fs {
                for (k, sk) in s.iter_mut().enumerate() {
                    let e = row[f * d + k];
                    *sk += e;
                    sq += e * e;
                }
            }
            *zi += 0.5 * (s.iter().map(|v| v * v).sum::<f32>() - sq);
        }
        let mut acts: Vec<Array2<f32>> = Vec::with_capacity(self.mlp.len());
        for layer in &self.mlp {
            let input = acts.last().map_or(x.view(), |a| a.view());
            let mut a = layer.forward(p, input)?;
            relu_inplace(&mut a);
            acts.push(a);
        }
        let last = acts.last().map_or(x.view(), |a| a.view());
        let mlp_out = self.out.forward(p, last)?;
        for (zi, m) in z.iter_mut().zip(mlp_out.column(0)) {
            *zi += m;
        }
        let logits = vec![z];
        let Some(dloss) = dloss else {
            return Ok((logits, None));
        };
        let dz = dloss(&logits).swap_remove(0);
        let mut g = Grads::zeros_like(p);
        // Linear part.
        for (i, &dzi) in dz.iter().enumerate() {
            g.dense[self.bias][0] += dzi;
            for f in 0..fs {
                let (items, scale) = batch.bag(i, f);
                for &k in items {
                    g.tables[self.linear][k as usize] += dzi * scale;
                }
            }
            if let Some(dl) = self.dense_linear {
                let xd = &batch.dense[i * self.n_dense..(i + 1) * self.n_dense];
                for (gw, xv) in g.dense[dl].iter_mut().zip(xd) {
                    *gw += dzi * xv;
                }
            }
        }
        // MLP, back to its input.
        let dzm = Array2::from_shape_vec((batch.len, 1), dz.clone())
            .map_err(|e| crate::error::TrainError::Shape(e.to_string()))?;
        let last = acts.last().map_or(x.view(), |a| a.view());
        let mut dcur = self.out.backward(p, last, dzm.view(), &mut g, true)?;
        for (l, layer) in self.mlp.iter().enumerate().rev() {
            let Some(mut da) = dcur else { break };
            relu_backward(&mut da, &acts[l]);
            let input = if l == 0 { x.view() } else { acts[l - 1].view() };
            dcur = layer.backward(p, input, da.view(), &mut g, true)?;
        }
        let mut dx = match dcur {
            Some(dx) => dx,
            None => Array2::zeros(x.dim()),
        };
        // FM: ∂/∂e_fd = s_d − e_fd.
        for (i, mut dr) in dx.axis_iter_mut(Axis(0)).enumerate() {
            let s = &sums[i * d..(i + 1) * d];
            for f in 0..fs {
                for k in 0..d {
                    dr[f * d + k] += dz[i] * (s[k] - x[[i, f * d + k]]);
                }
            }
        }
        scatter_pooled(batch, dx.view(), d, &mut g.tables[self.emb]);
        Ok((logits, Some(g)))
    }
}
