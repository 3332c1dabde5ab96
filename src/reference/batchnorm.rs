//! Twin of shaders/batchnorm.wgsl: batch normalisation over `(batch, channels, spatial)` and its
//! gradients as plain f64 loops. Rows `n >= valid` are the padding of a short last batch: they are
//! normalised but enter no statistic and no sum, and get dx = 0.

use crate::kernels::batchnorm::{BnShape, EPS, MOMENTUM};

/// Index of element (n, c, r).
fn idx(s: &BnShape, n: usize, c: usize, r: usize) -> usize {
    (n * s.channels + c) * s.spatial + r
}

/// The values of channel `c` in rows below `valid`, in (n, r) order.
fn channel(s: &BnShape, valid: usize, v: &[f64], c: usize) -> Vec<f64> {
    (0..valid)
        .flat_map(|n| (0..s.spatial).map(move |r| (n, r)))
        .map(|(n, r)| v[idx(s, n, c, r)])
        .collect()
}

/// Per-channel statistics a forward normalises with.
#[derive(Clone, Debug)]
pub struct Stats {
    pub mean: Vec<f64>,
    pub inv_std: Vec<f64>,
}

/// Training statistics (`bn_batch_stats`): mean and 1 / sqrt(biased variance + eps) over the rows
/// below `valid`, and the running statistics after the momentum-0.1 update with the unbiased
/// variance (unchanged when only one value per channel is valid).
pub fn batch_stats(
    s: &BnShape,
    valid: usize,
    x: &[f64],
    running_mean: &[f64],
    running_var: &[f64],
) -> (Stats, Vec<f64>, Vec<f64>) {
    let eps = EPS as f64;
    let m = valid * s.spatial;
    let (mut mean, mut inv_std) = (Vec::new(), Vec::new());
    let (mut rm, mut rv) = (running_mean.to_vec(), running_var.to_vec());
    for c in 0..s.channels {
        let v = channel(s, valid, x, c);
        let mu = v.iter().sum::<f64>() / m as f64;
        let sq: f64 = v.iter().map(|a| (a - mu) * (a - mu)).sum();
        mean.push(mu);
        inv_std.push(1.0 / (sq / m as f64 + eps).sqrt());
        if m > 1 {
            rm[c] = MOMENTUM * mu + (1.0 - MOMENTUM) * rm[c];
            rv[c] = MOMENTUM * sq / (m - 1) as f64 + (1.0 - MOMENTUM) * rv[c];
        }
    }
    (Stats { mean, inv_std }, rm, rv)
}

/// Evaluation statistics (`bn_running_stats`): the running mean and 1 / sqrt(running var + eps).
pub fn running_stats(running_mean: &[f64], running_var: &[f64]) -> Stats {
    Stats {
        mean: running_mean.to_vec(),
        inv_std: running_var
            .iter()
            .map(|v| 1.0 / (v + EPS as f64).sqrt())
            .collect(),
    }
}

/// `y = (x - mean) inv_std gamma + beta` on every row.
pub fn forward(s: &BnShape, x: &[f64], st: &Stats, gamma: &[f64], beta: &[f64]) -> Vec<f64> {
    let mut y = vec![0.0; s.len()];
    for n in 0..s.batch {
        for c in 0..s.channels {
            for r in 0..s.spatial {
                let i = idx(s, n, c, r);
                y[i] = (x[i] - st.mean[c]) * st.inv_std[c] * gamma[c] + beta[c];
            }
        }
    }
    y
}

/// Gradients given `dy`: (dx, dgamma, dbeta). `train`: the statistics are the batch's (from
/// `batch_stats` with the same `valid`), so dx goes through them too; otherwise they are constants.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    s: &BnShape,
    valid: usize,
    train: bool,
    x: &[f64],
    dy: &[f64],
    st: &Stats,
    gamma: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let m = (valid * s.spatial) as f64;
    let mut dx = vec![0.0; s.len()];
    let (mut dgamma, mut dbeta) = (Vec::new(), Vec::new());
    for (c, &g) in gamma.iter().enumerate().take(s.channels) {
        let xhat = |i: usize| (x[i] - st.mean[c]) * st.inv_std[c];
        let (mut sg, mut sgx) = (0.0, 0.0);
        for n in 0..valid {
            for r in 0..s.spatial {
                let i = idx(s, n, c, r);
                sg += dy[i];
                sgx += dy[i] * xhat(i);
            }
        }
        dgamma.push(sgx);
        dbeta.push(sg);
        for n in 0..valid {
            for r in 0..s.spatial {
                let i = idx(s, n, c, r);
                let k = g * st.inv_std[c];
                dx[i] = if train {
                    k / m * (m * dy[i] - sg - xhat(i) * sgx)
                } else {
                    k * dy[i]
                };
            }
        }
    }
    (dx, dgamma, dbeta)
}
