//! Twin of shaders/masked.wgsl (METHOD.md sections 1-3). Mask bits and the long-tailed bands are
//! decided on `|w| - t` computed in f32, as the shader does; values are then carried in f64.

/// `Q = |W| - t` in f32, as the shader computes it.
pub fn q_f32(w: f64, t: f64) -> f32 {
    (w as f32).abs() - t as f32
}

pub fn step(q: f32) -> f64 {
    if q > 0.0 {
        1.0
    } else {
        0.0
    }
}

/// Long-tailed derivative estimator H(q), bands decided in f32.
pub fn long_tail(q: f32) -> f64 {
    let a = q.abs();
    if a <= 0.4 {
        2.0 - 4.0 * a as f64
    } else if a <= 1.0 {
        0.4
    } else {
        0.0
    }
}

/// `(P = W * M, per-row kept counts)`.
pub fn mask_forward(w: &[f64], t: &[f64], rows: usize, cols: usize) -> (Vec<f64>, Vec<u32>) {
    let mut p = vec![0.0; rows * cols];
    let mut keep = vec![0u32; rows];
    for i in 0..rows {
        for j in 0..cols {
            let m = step(q_f32(w[i * cols + j], t[i]));
            p[i * cols + j] = w[i * cols + j] * m;
            keep[i] += m as u32;
        }
    }
    (p, keep)
}

/// The dead-layer reset: if the layer keeps <= 1%, thresholds become 0 and P is recomputed.
/// Returns (P, thresholds used, [count before, count after], reset fired).
pub fn mask_reset(
    w: &[f64],
    t: &[f64],
    rows: usize,
    cols: usize,
) -> (Vec<f64>, Vec<f64>, [u32; 2], bool) {
    let (p, keep) = mask_forward(w, t, rows, cols);
    let before: u32 = keep.iter().sum();
    // The shader's integer form of torch's `sum / numel <= 0.01` (same answers for any size).
    if before as usize <= (rows * cols) / 100 {
        let zeros = vec![0.0; rows];
        let (p2, keep2) = mask_forward(w, &zeros, rows, cols);
        (p2, zeros, [before, keep2.iter().sum()], true)
    } else {
        (p, t.to_vec(), [before, before], false)
    }
}

/// `mask_reset` for `groups` stacked matrices of rows/groups rows each, each reset on its own.
/// Returns (P, thresholds used, [before, after] per matrix, reset fired per matrix).
#[allow(clippy::type_complexity)]
pub fn mask_reset_groups(
    w: &[f64],
    t: &[f64],
    rows: usize,
    cols: usize,
    groups: usize,
) -> (Vec<f64>, Vec<f64>, Vec<[u32; 2]>, Vec<bool>) {
    let gr = rows / groups;
    let (mut p, mut tu, mut counts, mut resets) = (vec![], vec![], vec![], vec![]);
    for g in 0..groups {
        let (pg, tg, c, r) = mask_reset(
            &w[g * gr * cols..(g + 1) * gr * cols],
            &t[g * gr..(g + 1) * gr],
            gr,
            cols,
        );
        p.extend(pg);
        tu.extend(tg);
        counts.push(c);
        resets.push(r);
    }
    (p, tu, counts, resets)
}

/// The floor policy's thresholds for a dying matrix: each row's threshold becomes
/// min(t, 0.999 * max_j |w|), in f32 as the shader computes it.
pub fn floor_thresholds(w: &[f64], t: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    (0..rows)
        .map(|r| {
            let m = (0..cols)
                .map(|j| (w[r * cols + j] as f32).abs())
                .fold(0.0f32, f32::max);
            (t[r] as f32).min(m * 0.999) as f64
        })
        .collect()
}

/// `mask_reset` with a policy (0 paper, 1 floor, 2 none) for `groups` stacked matrices.
/// Returns (P, thresholds after, [before, after] per matrix, acted per matrix).
#[allow(clippy::type_complexity)]
pub fn mask_reset_policy(
    w: &[f64],
    t: &[f64],
    rows: usize,
    cols: usize,
    groups: usize,
    policy: u32,
) -> (Vec<f64>, Vec<f64>, Vec<[u32; 2]>, Vec<bool>) {
    if policy == 0 {
        return mask_reset_groups(w, t, rows, cols, groups);
    }
    let gr = rows / groups;
    let (mut p, mut tu, mut counts, mut acted) = (vec![], vec![], vec![], vec![]);
    for g in 0..groups {
        let (wg, tg) = (
            &w[g * gr * cols..(g + 1) * gr * cols],
            &t[g * gr..(g + 1) * gr],
        );
        let (pg, keep) = mask_forward(wg, tg, gr, cols);
        let before: u32 = keep.iter().sum();
        let dying = before as usize <= (gr * cols) / 100;
        match (dying && policy == 1).then(|| floor_thresholds(wg, tg, gr, cols)) {
            Some(t2) => {
                let (p2, keep2) = mask_forward(wg, &t2, gr, cols);
                p.extend(p2);
                tu.extend(t2);
                counts.push([before, keep2.iter().sum()]);
                acted.push(true);
            }
            None => {
                p.extend(pg);
                tu.extend(tg);
                counts.push([before, before]);
                acted.push(false);
            }
        }
    }
    (p, tu, counts, acted)
}

/// `(dL/dW, dL/dt)` from G = dL/dP (METHOD.md section 1, penalty term included).
pub fn mask_backward(
    w: &[f64],
    t: &[f64],
    g: &[f64],
    rows: usize,
    cols: usize,
    alpha: f64,
) -> (Vec<f64>, Vec<f64>) {
    let mut dw = vec![0.0; rows * cols];
    let mut dt = vec![0.0; rows];
    for i in 0..rows {
        let mut s = 0.0;
        for j in 0..cols {
            let k = i * cols + j;
            let q = q_f32(w[k], t[i]);
            let h = long_tail(q);
            dw[k] = g[k] * step(q) + g[k] * w[k].abs() * h;
            s += g[k] * w[k] * h;
        }
        dt[i] = -s - alpha * (-t[i]).exp();
    }
    (dw, dt)
}

/// `alpha * sum exp(-t)`.
pub fn penalty(t: &[f64], alpha: f64) -> f64 {
    alpha * t.iter().map(|v| (-v).exp()).sum::<f64>()
}

/// The whole masked linear layer in f64 with a smooth objective, for finite differences:
/// `y = x P^T + b`, objective `sum(gy * y) + alpha * sum exp(-t)`. The mask is the step function,
/// so finite differences see only the performance term; see the tests for how each part is checked.
#[allow(clippy::too_many_arguments)]
pub fn objective(
    x: &[f64],
    w: &[f64],
    t: &[f64],
    b: &[f64],
    gy: &[f64],
    batch: usize,
    rows: usize,
    cols: usize,
    alpha: f64,
) -> f64 {
    let (p, _) = mask_forward(w, t, rows, cols);
    let y = super::gemm::forward(x, &p, Some(b), batch, rows, cols);
    y.iter().zip(gy).map(|(a, b)| a * b).sum::<f64>() + penalty(t, alpha)
}
