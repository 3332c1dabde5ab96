//! Twin of shaders/optim.wgsl: PyTorch's SGD (momentum, dampening 0) and Adam.

/// An optimiser state value below the smallest normal f32 as 0 (`flush_subnormal` in
/// shaders/common.wgsl; METHOD.md section 9, item 9).
pub fn flush_subnormal(x: f64) -> f64 {
    if x.abs() < f32::MIN_POSITIVE as f64 {
        0.0
    } else {
        x
    }
}

/// One SGD step; `v` starts at zero (equivalent to PyTorch's `v = g` on the first step); a
/// subnormal velocity is stored as 0.
pub fn sgd(p: &mut [f64], g: &[f64], v: &mut [f64], lr: f64, momentum: f64, wd: f64) {
    for i in 0..p.len() {
        let gi = g[i] + wd * p[i];
        v[i] = flush_subnormal(momentum * v[i] + gi);
        p[i] -= lr * v[i];
    }
}

/// One Adam step number `step` (1-based), bias-corrected, eps after the square root; subnormal
/// moments stored as 0.
#[allow(clippy::too_many_arguments)]
pub fn adam(
    p: &mut [f64],
    g: &[f64],
    m: &mut [f64],
    v: &mut [f64],
    step: u32,
    lr: f64,
    (beta1, beta2, eps): (f64, f64, f64),
    wd: f64,
) {
    let bc1 = 1.0 - beta1.powi(step as i32);
    let bc2_sqrt = (1.0 - beta2.powi(step as i32)).sqrt();
    for i in 0..p.len() {
        let gi = g[i] + wd * p[i];
        m[i] = flush_subnormal(beta1 * m[i] + (1.0 - beta1) * gi);
        v[i] = flush_subnormal(beta2 * v[i] + (1.0 - beta2) * gi * gi);
        p[i] -= (lr / bc1) * m[i] / (v[i].sqrt() / bc2_sqrt + eps);
    }
}

/// Host-side per-step Adam values `(lr / (1 - b1^t), sqrt(1 - b2^t))` in f64.
pub fn adam_step_values(step: u32, lr: f64, beta1: f64, beta2: f64) -> (f64, f64) {
    (
        lr / (1.0 - beta1.powi(step as i32)),
        (1.0 - beta2.powi(step as i32)).sqrt(),
    )
}
