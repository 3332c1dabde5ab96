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

/// `ell_build` (the row lists with `by_rows`, else the column lists) of `p` (`rows x cols`): per list (a row, or a column), the
/// indices and values of its nonzeros in ascending order.
pub fn ell_lists(p: &[f64], rows: usize, cols: usize, by_rows: bool) -> Vec<Vec<(u32, f64)>> {
    let (n, len) = if by_rows { (rows, cols) } else { (cols, rows) };
    (0..n)
        .map(|l| {
            (0..len)
                .filter_map(|i| {
                    let v = if by_rows {
                        p[l * cols + i]
                    } else {
                        p[i * cols + l]
                    };
                    (v != 0.0).then_some((i as u32, v))
                })
                .collect()
        })
        .collect()
}

/// `ell_product` from lists: `y[b][l] = bias[l] + sum over list l of val * x[b][idx]`, `x`
/// batch-major (`batch x n_in`), `y` batch-major (`batch x lists`).
pub fn ell_product(
    lists: &[Vec<(u32, f64)>],
    x: &[f64],
    n_in: usize,
    bias: Option<&[f64]>,
    batch: usize,
) -> Vec<f64> {
    let n = lists.len();
    let mut y = vec![0.0; batch * n];
    for b in 0..batch {
        for (l, list) in lists.iter().enumerate() {
            let mut s: f64 = list
                .iter()
                .map(|&(i, v)| v * x[b * n_in + i as usize])
                .sum();
            if let Some(bias) = bias {
                s += bias[l];
            }
            y[b * n + l] = s;
        }
    }
    y
}
