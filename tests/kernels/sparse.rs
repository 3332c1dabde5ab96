use dst::export::Csr;
use dst::kernels::run_once;
use dst::kernels::sparse::{CsrTensors, Major};
use dst::reference::sparse as reference;
use dst::rng::Rng;

use crate::common::*;

/// (rows, cols, batch): odd shapes, a single row/column, LeNet-300-100's fc1 at small batches.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (7, 13, 3),
    (33, 65, 5),
    (10, 100, 64),
    (300, 784, 7),
];

const DENSITIES: &[f64] = &[0.0, 0.01, 0.1, 1.0];

/// As the GEMM tests: 1e-5 of the reference's largest magnitude (f32 sums of up to 784 products),
/// and exact zeros where that magnitude is 0 (density 0 without bias).
const TOL: f64 = 1e-5;

/// A random `rows x cols` matrix keeping about `density` of its entries; rows `r % 3 == 1` are
/// emptied (empty rows at every density).
fn random_csr(rng: &mut Rng, rows: usize, cols: usize, density: f64) -> Csr {
    let dense = rand_vec(rng, rows * cols, -1.0, 1.0);
    let keep: Vec<bool> = (0..rows * cols)
        .map(|i| (i / cols) % 3 != 1 && rng.range(0.0, 1.0) < density)
        .collect();
    Csr::from_dense_where(rows, cols, &dense, |r, c| keep[r * cols + c])
}

fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = v[r * cols + c];
        }
    }
    t
}

#[test]
fn csr_linear_matches_reference_at_every_density_and_layout() {
    let c = ctx();
    let mut rng = Rng::new(11);
    for &(rows, cols, batch) in SHAPES {
        for &density in DENSITIES {
            let w = random_csr(&mut rng, rows, cols, density);
            if rows > 1 {
                assert!(w.crow[2] == w.crow[1], "row 1 is empty");
            }
            let x = rand_vec(&mut rng, batch * cols, -1.0, 1.0);
            let b = rand_vec(&mut rng, rows, -1.0, 1.0);
            let gpu_w = CsrTensors {
                rows,
                cols,
                crow: c.tensor_u32("crow", &[rows + 1], &w.crow),
                col: c.tensor_u32(
                    "col",
                    &[w.nnz().max(1)],
                    &if w.nnz() == 0 { vec![0] } else { w.col.clone() },
                ),
                val: c.tensor(
                    "val",
                    &[w.nnz().max(1)],
                    &if w.nnz() == 0 {
                        vec![0.0]
                    } else {
                        w.val.clone()
                    },
                ),
            };
            for (xm, ym, relu, bias) in [
                (Major::Batch, Major::Batch, false, true),
                (Major::Batch, Major::Feature, true, true),
                (Major::Feature, Major::Feature, true, false),
                (Major::Feature, Major::Batch, false, false),
            ] {
                let xs = match xm {
                    Major::Batch => x.clone(),
                    Major::Feature => transpose(&x, batch, cols),
                };
                let xt = c.tensor("x", &[batch * cols], &xs);
                let bt = c.tensor("b", &[rows], &b);
                let y = c.poisoned("y", &[batch * rows]);
                let d =
                    c.k.sparse
                        .csr_linear(
                            &c.gpu,
                            &gpu_w,
                            batch,
                            &xt,
                            xm,
                            bias.then_some(&bt),
                            &y,
                            ym,
                            relu,
                            &c.k.dummy,
                        )
                        .unwrap();
                run_once(&c.gpu, &[d], 0).unwrap();
                let want = reference::csr_linear(
                    rows,
                    cols,
                    &w.crow,
                    &w.col,
                    &to_f64(&w.val),
                    &to_f64(&x),
                    bias.then(|| to_f64(&b)).as_deref(),
                    batch,
                    relu,
                );
                let mut got = c.read(&y);
                if ym == Major::Feature {
                    got = transpose(&got, rows, batch);
                }
                assert_close_norm(
                    &format!("csr_linear {rows}x{cols} batch {batch} density {density} {xm:?}->{ym:?} relu {relu} bias {bias}"),
                    &got,
                    &want,
                    TOL,
                );
            }
        }
    }
}

#[test]
fn csr_linear_equals_the_dense_product_of_its_expansion() {
    // The CSR matrix and its dense expansion give the same layer (what export + infer rely on).
    let c = ctx();
    let mut rng = Rng::new(5);
    let (rows, cols, batch) = (31, 47, 9);
    let w = random_csr(&mut rng, rows, cols, 0.2);
    let x = to_f64(&rand_vec(&mut rng, batch * cols, -1.0, 1.0));
    let dense = to_f64(&w.to_dense());
    let want = dst::reference::gemm::forward(&x, &dense, None, batch, rows, cols);
    let got = reference::csr_linear(
        rows,
        cols,
        &w.crow,
        &w.col,
        &to_f64(&w.val),
        &x,
        None,
        batch,
        false,
    );
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-12);
    }
    drop(c);
}

#[test]
fn csr_linear_fm_and_to_feature_major_match_reference() {
    // The vec4 fast path: batches that are multiples of 4 (one, several and a partial group of
    // 16 samples per invocation), every density, empty rows; fed by `to_feature_major`.
    let c = ctx();
    let mut rng = Rng::new(23);
    for &(rows, cols, batch) in &[
        (1, 1, 4),
        (7, 13, 12),
        (33, 65, 20),
        (300, 784, 64),
        (10, 100, 36),
    ] {
        for &density in DENSITIES {
            let w = random_csr(&mut rng, rows, cols, density);
            let x = rand_vec(&mut rng, batch * cols, -1.0, 1.0);
            let b = rand_vec(&mut rng, rows, -1.0, 1.0);
            let gpu_w = CsrTensors {
                rows,
                cols,
                crow: c.tensor_u32("crow", &[rows + 1], &w.crow),
                col: c.tensor_u32(
                    "col",
                    &[w.nnz().max(1)],
                    &if w.nnz() == 0 { vec![0] } else { w.col.clone() },
                ),
                val: c.tensor(
                    "val",
                    &[w.nnz().max(1)],
                    &if w.nnz() == 0 {
                        vec![0.0]
                    } else {
                        w.val.clone()
                    },
                ),
            };
            let xt = c.tensor("x", &[batch * cols], &x);
            let xf = c.poisoned("x_fm", &[batch * cols]);
            let bt = c.tensor("b", &[rows], &b);
            for (relu, bias) in [(true, true), (false, false)] {
                let y = c.poisoned("y", &[batch * rows]);
                let ds = [
                    c.k.sparse
                        .to_feature_major(&c.gpu, batch, cols, &xt, &xf)
                        .unwrap(),
                    c.k.sparse
                        .csr_linear_fm(
                            &c.gpu,
                            &gpu_w,
                            batch,
                            &xf,
                            bias.then_some(&bt),
                            &y,
                            relu,
                            &c.k.dummy,
                        )
                        .unwrap(),
                ];
                run_once(&c.gpu, &ds, 0).unwrap();
                let xfm = c.read(&xf);
                assert_eq!(
                    xfm,
                    transpose(&x, batch, cols),
                    "to_feature_major {batch}x{cols}"
                );
                let want = reference::csr_linear(
                    rows,
                    cols,
                    &w.crow,
                    &w.col,
                    &to_f64(&w.val),
                    &to_f64(&x),
                    bias.then(|| to_f64(&b)).as_deref(),
                    batch,
                    relu,
                );
                assert_close_norm(
                    &format!(
                        "csr_linear_fm {rows}x{cols} batch {batch} density {density} relu {relu}"
                    ),
                    &transpose(&c.read(&y), rows, batch),
                    &want,
                    TOL,
                );
            }
        }
    }
}
