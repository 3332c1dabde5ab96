//! Twin of shaders/sparse.wgsl.

/// `y = act(x W^T + b)`, W (rows x cols) as CSR (`crow`, `col`, `val`); `x` is `batch x cols`
/// and `y` `batch x rows`, both batch-major.
#[allow(clippy::too_many_arguments)]
pub fn csr_linear(
    rows: usize,
    cols: usize,
    crow: &[u32],
    col: &[u32],
    val: &[f64],
    x: &[f64],
    bias: Option<&[f64]>,
    batch: usize,
    relu: bool,
) -> Vec<f64> {
    let mut y = vec![0.0; batch * rows];
    for b in 0..batch {
        for r in 0..rows {
            let mut s = 0.0;
            for j in crow[r] as usize..crow[r + 1] as usize {
                s += val[j] * x[b * cols + col[j] as usize];
            }
            if let Some(bias) = bias {
                s += bias[r];
            }
            y[b * rows + r] = if relu { s.max(0.0) } else { s };
        }
    }
    y
}
