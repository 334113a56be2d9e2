//! Building blocks of the hand-written networks: parameter buffers pulled for one batch,
//! their gradients, dense layers with forward and backward, pooling of field embeddings
//! and the loss. Matrices are row-major ndarray views over the flat tensors the
//! parameter store holds, multiplied by matrixmultiply.

use crate::error::{Result, TrainError};
use crate::features::Batch;
use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis};
use rand::{Rng, SeedableRng};

/// The parameters one batch needs: per model table the rows of `batch.keys`
/// (`keys.len() * dim`), and every dense tensor, in schema order.
#[derive(Clone, Debug, Default)]
pub struct Params {
    pub tables: Vec<Vec<f32>>,
    /// Shared, so a worker can reuse one pull of the dense tensors for several batches.
    pub dense: std::sync::Arc<Vec<Vec<f32>>>,
}

/// Gradients with the same layout as [`Params`].
#[derive(Clone, Debug, Default)]
pub struct Grads {
    pub tables: Vec<Vec<f32>>,
    pub dense: Vec<Vec<f32>>,
}

impl Grads {
    pub fn zeros_like(p: &Params) -> Grads {
        Grads {
            tables: p.tables.iter().map(|t| vec![0.0; t.len()]).collect(),
            dense: p.dense.iter().map(|t| vec![0.0; t.len()]).collect(),
        }
    }
}

pub fn view2<'a>(data: &'a [f32], rows: usize, cols: usize) -> Result<ArrayView2<'a, f32>> {
    ArrayView2::from_shape((rows, cols), data)
        .map_err(|_| TrainError::Shape(format!("{} values are not {rows}x{cols}", data.len())))
}

fn view2_mut<'a>(data: &'a mut [f32], rows: usize, cols: usize) -> Result<ArrayViewMut2<'a, f32>> {
    let n = data.len();
    ArrayViewMut2::from_shape((rows, cols), data)
        .map_err(|_| TrainError::Shape(format!("{n} values are not {rows}x{cols}")))
}

/// How a dense tensor starts (before any warm start or other worker).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Zeros,
    /// He uniform, for layers followed by a ReLU.
    He,
    /// Xavier (Glorot) uniform, for gates and output layers.
    Xavier,
}

/// Deterministic initial values: seeded by the model seed and the tensor's name, so
/// adding a tensor never changes another's initial value.
pub fn init_values(seed: u64, name: &str, fan_in: usize, fan_out: usize, init: Init) -> Vec<f32> {
    let n = fan_in * fan_out;
    let bound = match init {
        Init::Zeros => return vec![0.0; n],
        Init::He => (6.0 / fan_in.max(1) as f64).sqrt(),
        Init::Xavier => (6.0 / (fan_in + fan_out).max(1) as f64).sqrt(),
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ odl_proto::hashing::field_seed(name));
    (0..n)
        .map(|_| rng.gen_range(-bound..bound) as f32)
        .collect()
}

/// A fully connected layer `y = x W + b` over dense tensors `w` (`n_in x n_out`) and
/// `b` (`n_out`), given as indices into [`Params::dense`].
#[derive(Clone, Debug)]
pub struct Linear {
    pub w: usize,
    pub b: usize,
    pub n_in: usize,
    pub n_out: usize,
}

impl Linear {
    pub fn forward(&self, p: &Params, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        let w = view2(&p.dense[self.w], self.n_in, self.n_out)?;
        let b = view2(&p.dense[self.b], 1, self.n_out)?;
        if self.n_out == 1 {
            // A GEMM with one output column is all packing: plain dot products.
            let (w, b) = (&p.dense[self.w], p.dense[self.b][0]);
            let col: Vec<f32> = x
                .rows()
                .into_iter()
                .map(|r| b + r.iter().zip(w).map(|(a, b)| a * b).sum::<f32>())
                .collect();
            return Array2::from_shape_vec((x.nrows(), 1), col)
                .map_err(|e| TrainError::Shape(e.to_string()));
        }
        let mut y = Array2::<f32>::zeros((x.nrows(), self.n_out));
        y.assign(
            &b.broadcast((x.nrows(), self.n_out))
                .ok_or_else(|| TrainError::Shape("bias".into()))?,
        );
        general_mat_mul(1.0, &x, &w, 1.0, &mut y);
        Ok(y)
    }

    /// Accumulates dW and db into `g`; returns dx when asked.
    pub fn backward(
        &self,
        p: &Params,
        x: ArrayView2<f32>,
        dy: ArrayView2<f32>,
        g: &mut Grads,
        want_dx: bool,
    ) -> Result<Option<Array2<f32>>> {
        if self.n_out == 1 {
            let w = &p.dense[self.w];
            if w.len() != self.n_in || g.dense[self.w].len() != self.n_in {
                return Err(TrainError::Shape(format!("layer of {} inputs", self.n_in)));
            }
            let mut dx = want_dx.then(|| Array2::<f32>::zeros((x.nrows(), self.n_in)));
            for (i, (xr, &d)) in x.rows().into_iter().zip(dy.column(0)).enumerate() {
                g.dense[self.b][0] += d;
                for (gw, xv) in g.dense[self.w].iter_mut().zip(xr) {
                    *gw += d * xv;
                }
                if let Some(dx) = dx.as_mut() {
                    dx.row_mut(i)
                        .iter_mut()
                        .zip(w)
                        .for_each(|(o, wv)| *o = d * wv);
                }
            }
            return Ok(dx);
        }
        {
            let mut dw = view2_mut(&mut g.dense[self.w], self.n_in, self.n_out)?;
            general_mat_mul(1.0, &x.t(), &dy, 1.0, &mut dw);
        }
        for (acc, s) in g.dense[self.b].iter_mut().zip(dy.sum_axis(Axis(0))) {
            *acc += s;
        }
        if !want_dx {
            return Ok(None);
        }
        let w = view2(&p.dense[self.w], self.n_in, self.n_out)?;
        let mut dx = Array2::<f32>::zeros((x.nrows(), self.n_in));
        general_mat_mul(1.0, &dy, &w.t(), 0.0, &mut dx);
        Ok(Some(dx))
    }
}

pub fn relu_inplace(a: &mut Array2<f32>) {
    match a.as_slice_mut() {
        Some(s) => s.iter_mut().for_each(|v| *v = v.max(0.0)),
        None => a.mapv_inplace(|v| v.max(0.0)),
    }
}

/// `d *= (a > 0)` where `a` is the ReLU's output.
pub fn relu_backward(d: &mut Array2<f32>, a: &Array2<f32>) {
    if let (Some(ds), Some(as_)) = (d.as_slice_mut(), a.as_slice()) {
        for (d, &a) in ds.iter_mut().zip(as_) {
            if a <= 0.0 {
                *d = 0.0
            }
        }
        return;
    }
    ndarray::Zip::from(d).and(a).for_each(|d, &a| {
        if a <= 0.0 {
            *d = 0.0
        }
    });
}

/// The model input: pooled field embeddings (`n_sparse * dim`) then the dense values.
pub fn input_matrix(batch: &Batch, rows: &[f32], dim: usize) -> Result<Array2<f32>> {
    let width = batch.n_sparse * dim + batch.n_dense;
    let mut x = vec![0f32; batch.len * width];
    for (i, xr) in x.chunks_exact_mut(width.max(1)).enumerate().take(batch.len) {
        for f in 0..batch.n_sparse {
            let (items, scale) = batch.bag(i, f);
            let out = &mut xr[f * dim..(f + 1) * dim];
            for &k in items {
                let row = &rows[k as usize * dim..(k as usize + 1) * dim];
                for (o, r) in out.iter_mut().zip(row) {
                    *o += scale * r;
                }
            }
        }
        xr[batch.n_sparse * dim..]
            .copy_from_slice(&batch.dense[i * batch.n_dense..(i + 1) * batch.n_dense]);
    }
    Array2::from_shape_vec((batch.len, width), x).map_err(|e| TrainError::Shape(e.to_string()))
}

/// Scatter the gradient of the pooled embeddings (the first `n_sparse * dim` columns of
/// `dx`) back to the unique rows: one gradient row per key, summed over its uses.
pub fn scatter_pooled(batch: &Batch, dx: ArrayView2<f32>, dim: usize, grad_rows: &mut [f32]) {
    for (i, dr) in dx.axis_iter(Axis(0)).enumerate() {
        for f in 0..batch.n_sparse {
            let (items, scale) = batch.bag(i, f);
            for &k in items {
                let g = &mut grad_rows[k as usize * dim..(k as usize + 1) * dim];
                for (d, gv) in g.iter_mut().enumerate() {
                    *gv += scale * dr[f * dim + d];
                }
            }
        }
    }
}

#[inline]
pub fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// Per task: the predictions (sigmoid of the clamped logits) and the gradient of the
/// loss with respect to each logit. The loss of a task is the binary cross-entropy
/// over the samples labelled for it, summed (`mean = false`, FTRL's per-example
/// convention) or averaged over them. The clamp guards the prediction only: its
/// gradient passes straight through, so a saturated wrong logit is still pulled back.
pub fn loss_grad(
    batch: &Batch,
    logits: &[Vec<f32>],
    clamp: f32,
    mean: bool,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut preds = Vec::with_capacity(logits.len());
    let mut grads = Vec::with_capacity(logits.len());
    for (t, z) in logits.iter().enumerate() {
        let has = &batch.has_label[t];
        let n = has.iter().filter(|&&h| h).count().max(1) as f32;
        let scale = if mean { 1.0 / n } else { 1.0 };
        let p: Vec<f32> = z
            .iter()
            .map(|&z| {
                let z = if z.is_nan() {
                    0.0
                } else {
                    z.clamp(-clamp, clamp)
                };
                sigmoid(z)
            })
            .collect();
        let g = (0..batch.len)
            .map(|i| {
                if has[i] {
                    (p[i] - batch.labels[t][i]) * scale
                } else {
                    0.0
                }
            })
            .collect();
        preds.push(p);
        grads.push(g);
    }
    (preds, grads)
}

/// The loss `loss_grad` differentiates (without the clamp), in f64: for gradient checks.
pub fn loss_value(batch: &Batch, logits: &[Vec<f32>], mean: bool) -> f64 {
    let mut total = 0.0;
    for (t, z) in logits.iter().enumerate() {
        let has = &batch.has_label[t];
        let n = has.iter().filter(|&&h| h).count().max(1) as f64;
        let mut s = 0.0;
        for i in 0..batch.len {
            if has[i] {
                let z = z[i] as f64;
                let y = batch.labels[t][i] as f64;
                // log(1 + e^z) - y z, stably.
                s += z.max(0.0) + (-z.abs()).exp().ln_1p() - y * z;
            }
        }
        total += if mean { s / n } else { s };
    }
    total
}
