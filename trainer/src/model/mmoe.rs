//! `mmoe` (Ma et al. 2018), the default: shared field embeddings; `experts` ReLU
//! experts over the concatenated embeddings and dense inputs; per task a softmax gate
//! mixing the experts and a ReLU tower ending in one logit.
//!
//! The experts and all gates read the same input, so their weights are multiplied in
//! one GEMM each (`experts.w` is `in × experts·units`, `gates.w` is `in × tasks·experts`).

use super::{LossGrad, SchemaBuilder};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::error::TrainError;
use crate::features::Batch;
use crate::nn::{
    input_matrix, relu_backward, relu_inplace, scatter_pooled, Grads, Init, Linear, Params,
};
use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, Axis};

pub(crate) struct Mmoe {
    dim: usize,
    n_experts: usize,
    units: usize,
    emb: usize,
    experts: Linear,
    gates: Linear,
    /// Per task: hidden layers and the output layer.
    towers: Vec<(Vec<Linear>, Linear)>,
}

impl Mmoe {
    pub(crate) fn new(
        sb: &mut SchemaBuilder,
        cfg: &ModelConfig,
        tasks: &[String],
        n_sparse: usize,
        n_dense: usize,
    ) -> Mmoe {
        let (so, dop, dim) = (
            &cfg.sparse_optimizer,
            &cfg.dense_optimizer,
            cfg.embedding_dim,
        );
        let (e, u) = (cfg.mmoe.experts, cfg.mmoe.expert_units);
        let n_in = n_sparse * dim + n_dense;
        let emb = sb.table("mmoe.emb", dim, so, cfg.init_std);
        let experts = sb.linear("mmoe.experts", n_in, e * u, Init::He, dop);
        let gates = sb.linear("mmoe.gates", n_in, tasks.len() * e, Init::Xavier, dop);
        let towers = tasks
            .iter()
            .map(|t| {
                let mut n = u;
                let mut layers = Vec::new();
                for (l, &units) in cfg.mmoe.tower_units.iter().enumerate() {
                    layers.push(sb.linear(&format!("mmoe.tower.{t}.{l}"), n, units, Init::He, dop));
                    n = units;
                }
                (
                    layers,
                    sb.linear(&format!("mmoe.tower.{t}.out"), n, 1, Init::Xavier, dop),
                )
            })
            .collect();
        Mmoe {
            dim,
            n_experts: e,
            units: u,
            emb,
            experts,
            gates,
            towers,
        }
    }

    /// `[experts.w | gates.w]` row by row (`in × (E·U + T·E)`) and the joint bias, so
    /// both read the input in one GEMM.
    fn fused_weights(&self, p: &Params) -> Result<(Array2<f32>, Vec<f32>)> {
        let (we, wg) = (&p.dense[self.experts.w], &p.dense[self.gates.w]);
        let (ce, cg, n_in) = (self.experts.n_out, self.gates.n_out, self.experts.n_in);
        if we.len() != n_in * ce || wg.len() != n_in * cg {
            return Err(TrainError::Shape("mmoe expert/gate weights".into()));
        }
        let mut w = Vec::with_capacity(n_in * (ce + cg));
        for r in 0..n_in {
            w.extend_from_slice(&we[r * ce..(r + 1) * ce]);
            w.extend_from_slice(&wg[r * cg..(r + 1) * cg]);
        }
        let mut b = p.dense[self.experts.b].clone();
        b.extend_from_slice(&p.dense[self.gates.b]);
        let w = Array2::from_shape_vec((n_in, ce + cg), w)
            .map_err(|e| TrainError::Shape(e.to_string()))?;
        Ok((w, b))
    }

    pub(crate) fn run(
        &self,
        batch: &Batch,
        p: &Params,
        dloss: Option<LossGrad>,
    ) -> Result<(Vec<Vec<f32>>, Option<Grads>)> {
        let (b, ne, u) = (batch.len, self.n_experts, self.units);
        let (ce, cg) = (self.experts.n_out, self.gates.n_out);
        let cols = ce + cg;
        let x = input_matrix(batch, &p.tables[self.emb], self.dim)?;
        let (w, bias) = self.fused_weights(p)?;
        let mut y = Array2::<f32>::zeros((b, cols));
        {
            let ys = y
                .as_slice_mut()
                .ok_or_else(|| TrainError::Shape("layout".into()))?;
            for row in ys.chunks_exact_mut(cols) {
                row.copy_from_slice(&bias);
            }
        }
        general_mat_mul(1.0, &x, &w, 1.0, &mut y);
        // Per row: ReLU on the experts, softmax per task over the gate logits.
        let ys = y
            .as_slice_mut()
            .ok_or_else(|| TrainError::Shape("layout".into()))?;
        for row in ys.chunks_exact_mut(cols) {
            let (h, g) = row.split_at_mut(ce);
            h.iter_mut().for_each(|v| *v = v.max(0.0));
            for gt in g.chunks_exact_mut(ne) {
                let m = gt.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                let mut sum = 0.0;
                for v in gt.iter_mut() {
                    *v = (*v - m).exp();
                    sum += *v;
                }
                gt.iter_mut().for_each(|v| *v /= sum);
            }
        }
        let ys: &[f32] = ys;
        let mut logits = Vec::with_capacity(self.towers.len());
        let mut caches = Vec::with_capacity(self.towers.len());
        for (t, (layers, out)) in self.towers.iter().enumerate() {
            let mut mix = vec![0f32; b * u];
            for (row, m) in ys.chunks_exact(cols).zip(mix.chunks_exact_mut(u)) {
                let gates = &row[ce + t * ne..ce + (t + 1) * ne];
                for (e, &gv) in gates.iter().enumerate() {
                    for (mv, hv) in m.iter_mut().zip(&row[e * u..(e + 1) * u]) {
                        *mv += gv * hv;
                    }
                }
            }
            let mix = Array2::from_shape_vec((b, u), mix)
                .map_err(|e| TrainError::Shape(e.to_string()))?;
            let mut acts: Vec<Array2<f32>> = Vec::with_capacity(layers.len());
            for layer in layers {
                let input = acts.last().unwrap_or(&mix).view();
                let mut a = layer.forward(p, input)?;
                relu_inplace(&mut a);
                acts.push(a);
            }
            let z = out.forward(p, acts.last().unwrap_or(&mix).view())?;
            logits.push(z.column(0).to_vec());
            caches.push((mix, acts));
        }
        let Some(dloss) = dloss else {
            return Ok((logits, None));
        };
        let dz = dloss(&logits);
        let mut g = Grads::zeros_like(p);
        let mut dy = vec![0f32; b * cols];
        for (t, ((layers, out), (mix, acts))) in self.towers.iter().zip(&caches).enumerate() {
            let dzt = Array2::from_shape_vec((b, 1), dz[t].clone())
                .map_err(|e| TrainError::Shape(e.to_string()))?;
            let mut dcur = out.backward(
                p,
                acts.last().unwrap_or(mix).view(),
                dzt.view(),
                &mut g,
                true,
            )?;
            for (l, layer) in layers.iter().enumerate().rev() {
                let Some(mut da) = dcur else { break };
                relu_backward(&mut da, &acts[l]);
                let input = if l == 0 {
                    mix.view()
                } else {
                    acts[l - 1].view()
                };
                dcur = layer.backward(p, input, da.view(), &mut g, true)?;
            }
            let Some(dmix) = dcur else { continue };
            let dms = dmix
                .as_slice()
                .ok_or_else(|| TrainError::Shape("layout".into()))?;
            // mix = Σ_e g_e h_e: ∂h_e += g_e ∂mix; ∂g_e = <∂mix, h_e>; then through the
            // softmax: ∂a_e = g_e (∂g_e − Σ_e' g_e' ∂g_e').
            for ((row, drow), dm) in ys
                .chunks_exact(cols)
                .zip(dy.chunks_exact_mut(cols))
                .zip(dms.chunks_exact(u))
            {
                let gates = &row[ce + t * ne..ce + (t + 1) * ne];
                let mut dgs = [0f32; 64];
                // `experts` <= 64 is checked by `ModelConfig::validate`.
                let dgs = &mut dgs[..ne];
                let (dh, dg) = drow.split_at_mut(ce);
                for (e, &gv) in gates.iter().enumerate() {
                    let he = &row[e * u..(e + 1) * u];
                    let mut dot = 0f32;
                    for ((dhv, &hv), &dmv) in dh[e * u..(e + 1) * u].iter_mut().zip(he).zip(dm) {
                        dot += dmv * hv;
                        *dhv += gv * dmv;
                    }
                    dgs[e] = dot;
                }
                let s: f32 = gates.iter().zip(dgs.iter()).map(|(a, b)| a * b).sum();
                for (e, &gv) in gates.iter().enumerate() {
                    dg[t * ne + e] = gv * (dgs[e] - s);
                }
            }
        }
        // Through the experts' ReLU (h is the ReLU output).
        for (row, drow) in ys.chunks_exact(cols).zip(dy.chunks_exact_mut(cols)) {
            for (d, &h) in drow[..ce].iter_mut().zip(&row[..ce]) {
                if h <= 0.0 {
                    *d = 0.0;
                }
            }
        }
        let dy =
            Array2::from_shape_vec((b, cols), dy).map_err(|e| TrainError::Shape(e.to_string()))?;
        let mut dw = Array2::<f32>::zeros((w.nrows(), cols));
        general_mat_mul(1.0, &x.t(), &dy, 0.0, &mut dw);
        let dws = dw
            .as_slice()
            .ok_or_else(|| TrainError::Shape("layout".into()))?;
        for (r, row) in dws.chunks_exact(cols).enumerate() {
            g.dense[self.experts.w][r * ce..(r + 1) * ce].copy_from_slice(&row[..ce]);
            g.dense[self.gates.w][r * cg..(r + 1) * cg].copy_from_slice(&row[ce..]);
        }
        let db = dy.sum_axis(Axis(0));
        for (k, v) in db.iter().enumerate() {
            match k.checked_sub(ce) {
                None => g.dense[self.experts.b][k] = *v,
                Some(j) => g.dense[self.gates.b][j] = *v,
            }
        }
        let mut dx = Array2::<f32>::zeros(x.dim());
        general_mat_mul(1.0, &dy, &w.t(), 0.0, &mut dx);
        scatter_pooled(batch, dx.view(), self.dim, &mut g.tables[self.emb]);
        Ok((logits, Some(g)))
    }
}
