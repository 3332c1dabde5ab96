//! Twin of shaders/gemm.wgsl.

/// `c = [c +] A B [+ bias]` with `A(m, k) = a[m*a_rs + k*a_cs]`, `B(k, n) = b[k*b_rs + n*b_cs]`.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    m: usize,
    n: usize,
    k: usize,
    a: &[f64],
    (a_rs, a_cs): (usize, usize),
    b: &[f64],
    (b_rs, b_cs): (usize, usize),
    bias: Option<&[f64]>,
    c: &mut [f64],
    accumulate: bool,
) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0;
            for kk in 0..k {
                s += a[i * a_rs + kk * a_cs] * b[kk * b_rs + j * b_cs];
            }
            if let Some(bias) = bias {
                s += bias[j];
            }
            let o = &mut c[i * n + j];
            *o = if accumulate { *o + s } else { s };
        }
    }
}

/// `y = x w^T + b`: x (m x k), w (n x k).
pub fn forward(x: &[f64], w: &[f64], b: Option<&[f64]>, m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut y = vec![0.0; m * n];
    matmul(m, n, k, x, (k, 1), w, (1, k), b, &mut y, false);
    y
}

/// `dx = g w`: g (m x n), w (n x k).
pub fn backward_input(g: &[f64], w: &[f64], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut dx = vec![0.0; m * k];
    matmul(m, k, n, g, (n, 1), w, (k, 1), None, &mut dx, false);
    dx
}

/// `dw = g^T x`: g (m x n), x (m x k).
pub fn backward_weight(g: &[f64], x: &[f64], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut dw = vec![0.0; n * k];
    matmul(n, k, m, g, (1, n), x, (k, 1), None, &mut dw, false);
    dw
}

/// `db[j] = sum_i g[i][j]`.
pub fn bias_backward(g: &[f64], m: usize, n: usize) -> Vec<f64> {
    (0..n).map(|j| (0..m).map(|i| g[i * n + j]).sum()).collect()
}
