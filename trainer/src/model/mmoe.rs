//! `mmoe` (Ma et al. 2018), the default: shared field embeddings; `experts` ReLU
//! experts over the concatenated embeddings and dense inputs; per task a softmax gate
//! mixing the experts and a ReLU tower ending in one logit.
//!
//! The experts and all gates read the same input, so their weights are multiplied in
//! one GEMM each (`experts.w` is `in × experts·units`, `gates.w` is `in × tasks·experts`).

use super::{LossGrad, SchemaBuilder};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::features::Batch;
use crate::nn::{
    input_matrix, relu_backward, relu_inplace, scatter_pooled, Grads, Init, Linear, Params,
};
use ndarray::{s, Array2, Axis};

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

    pub(crate) fn run(
        &self,
        batch: &Batch,
        p: &Params,
        dloss: Option<LossGrad>,
    ) -> Result<(Vec<Vec<f32>>, Option<Grads>)> {
        let (b, ne, u) = (batch.len, self.n_experts, self.units);
        let x = input_matrix(batch, &p.tables[self.emb], self.dim)?;
        let mut h = self.experts.forward(p, x.view())?;
        relu_inplace(&mut h);
        let mut gate = self.gates.forward(p, x.view())?;
        // Softmax per (sample, task) over the experts, in place.
        for mut row in gate.axis_iter_mut(Axis(0)) {
            for t in 0..self.towers.len() {
                let mut g = row.slice_mut(s![t * ne..(t + 1) * ne]);
                let m = g.fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                g.mapv_inplace(|v| (v - m).exp());
                let sum = g.sum();
                g.mapv_inplace(|v| v / sum);
            }
        }
        let mut logits = Vec::with_capacity(self.towers.len());
        // Per task: mixed expert output and tower activations.
        let mut caches = Vec::with_capacity(self.towers.len());
        for (t, (layers, out)) in self.towers.iter().enumerate() {
            let mut mix = Array2::<f32>::zeros((b, u));
            for i in 0..b {
                let hr = h.row(i);
                let mut mr = mix.row_mut(i);
                for e in 0..ne {
                    let w = gate[[i, t * ne + e]];
                    let he = hr.slice(s![e * u..(e + 1) * u]);
                    mr.scaled_add(w, &he);
                }
            }
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
        let mut dh = Array2::<f32>::zeros(h.dim());
        let mut dgate = Array2::<f32>::zeros(gate.dim());
        for (t, ((layers, out), (mix, acts))) in self.towers.iter().zip(&caches).enumerate() {
            let dzt = Array2::from_shape_vec((b, 1), dz[t].clone())
                .map_err(|e| crate::error::TrainError::Shape(e.to_string()))?;
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
            // mix_i = Σ_e g_ie h_ie: ∂h_ie += g_ie ∂mix_i; ∂g_ie = <∂mix_i, h_ie>;
            // then through the softmax: ∂a_ie = g_ie (∂g_ie − Σ_e' g_ie' ∂g_ie').
            for i in 0..b {
                let dm = dmix.row(i);
                let mut dgs = [0f32; 64];
                // `experts` <= 64 is checked by `ModelConfig::validate`.
                let dgs = &mut dgs[..ne];
                for e in 0..ne {
                    let w = gate[[i, t * ne + e]];
                    let he = h.slice(s![i, e * u..(e + 1) * u]);
                    dgs[e] = dm.dot(&he);
                    dh.slice_mut(s![i, e * u..(e + 1) * u]).scaled_add(w, &dm);
                }
                let dot: f32 = (0..ne).map(|e| gate[[i, t * ne + e]] * dgs[e]).sum();
                for e in 0..ne {
                    let gv = gate[[i, t * ne + e]];
                    dgate[[i, t * ne + e]] = gv * (dgs[e] - dot);
                }
            }
        }
        relu_backward(&mut dh, &h);
        let mut dx = self
            .experts
            .backward(p, x.view(), dh.view(), &mut g, true)?
            .unwrap_or_else(|| Array2::zeros(x.dim()));
        if let Some(dxg) = self
            .gates
            .backward(p, x.view(), dgate.view(), &mut g, true)?
        {
            dx += &dxg;
        }
        scatter_pooled(batch, dx.view(), self.dim, &mut g.tables[self.emb]);
        Ok((logits, Some(g)))
    }
}
