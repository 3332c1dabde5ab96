use dst::export::Csr;
use dst::gpu::Tensor;
use dst::kernels::sparse::{CsrTensors, Major};
use dst::kernels::{run_once, Kernels};
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
fn to_feature_major_transposes_every_shape() {
    // The 4 x 4 vec4 blocks (batch and width multiples of 4: LeNet-300-100's fc1, an LSTM's
    // time-major gates, 2800 x 512) and the scalar copy (either not; 1 x 4,194,560 values fold
    // its grid into y past 65,535 workgroups).
    let c = ctx();
    let mut rng = Rng::new(41);
    for &(batch, cols) in &[
        (4, 4),
        (8, 12),
        (64, 784),
        (2800, 512),
        (5, 8),
        (8, 5),
        (1, 64),
        (3, 3),
        (1, 4_194_560),
    ] {
        let x = rand_vec(&mut rng, batch * cols, -1.0, 1.0);
        let xt = c.tensor("x", &[batch * cols], &x);
        let y = c.poisoned("y", &[batch * cols]);
        let d =
            c.k.sparse
                .to_feature_major(&c.gpu, batch, cols, &xt, &y)
                .unwrap();
        let vec4 = batch % 4 == 0 && cols % 4 == 0;
        assert_eq!(
            d.label,
            if vec4 {
                "sparse.to_feature_major4"
            } else {
                "sparse.to_feature_major"
            },
            "{batch}x{cols}"
        );
        run_once(&c.gpu, &[d], 0).unwrap();
        assert!(
            c.read(&y) == transpose(&x, batch, cols),
            "to_feature_major {batch}x{cols}"
        );
    }
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

/// A `rows x cols` P keeping about `density` of its entries (zeros elsewhere), rows `r % 3 == 1`
/// and columns `c % 5 == 2` emptied.
fn random_p(rng: &mut Rng, rows: usize, cols: usize, density: f64) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| {
            let (r, c) = (i / cols, i % cols);
            let v = rng.range(-1.0, 1.0) as f32;
            let keep = rng.range(0.0, 1.0) < density;
            if r % 3 != 1 && c % 5 != 2 && keep {
                v
            } else {
                0.0
            }
        })
        .collect()
}

#[test]
fn ell_lists_and_products_match_reference() {
    // The training path of a masked linear layer: lists of P's nonzeros by row (forward) and by
    // column (product to the input), then y = x P^T + b and dx = dy P from them, at batches that
    // take the scalar (7, 5) and the vec4 path (64, 12), every density, empty rows and columns.
    let c = ctx();
    let mut rng = Rng::new(31);
    for &(rows, cols, batch) in &[
        (1, 1, 4),
        (7, 13, 5),
        (33, 65, 12),
        (300, 784, 64),
        (10, 100, 7),
    ] {
        for &density in DENSITIES {
            let p = random_p(&mut rng, rows, cols, density);
            // Half the cases build the lists from P stored transposed (a linear layer's layout).
            let transposed = rows % 2 == 1;
            let pt = if transposed {
                c.tensor("p_t", &[cols, rows], &transpose(&p, rows, cols))
            } else {
                c.tensor("p", &[rows, cols], &p)
            };
            let lists =
                dst::kernels::sparse::EllLists::new(&c.gpu, "t", rows, cols, transposed).unwrap();
            // Poison the lists: only what the counts cover may be read.
            c.gpu.write(&lists.idx, &vec![u32::MAX; 2 * rows * cols]);
            c.gpu.write(&lists.val, &vec![f32::NAN; 2 * rows * cols]);
            c.gpu.write(&lists.cnt, &vec![u32::MAX; rows + cols]);
            let x = rand_vec(&mut rng, batch * cols, -1.0, 1.0);
            let dy = rand_vec(&mut rng, batch * rows, -1.0, 1.0);
            let b = rand_vec(&mut rng, rows, -1.0, 1.0);
            let (xt, dyt, bt) = (
                c.tensor("x", &[batch * cols], &x),
                c.tensor("dy", &[batch * rows], &dy),
                c.tensor("b", &[rows], &b),
            );
            let (x_fm, dy_fm) = (
                c.poisoned("x_fm", &[batch * cols]),
                c.poisoned("dy_fm", &[batch * rows]),
            );
            let (y, dx) = (
                c.poisoned("y", &[batch * rows]),
                c.poisoned("dx", &[batch * cols]),
            );
            // Half the cases fuse a ReLU into the forward product.
            let relu = batch % 2 == 0;
            let sp = &c.k.sparse;
            let ds = [
                sp.ell_build(&c.gpu, &pt, &lists, true).unwrap(),
                sp.ell_build(&c.gpu, &pt, &lists, false).unwrap(),
                sp.to_feature_major(&c.gpu, batch, cols, &xt, &x_fm)
                    .unwrap(),
                sp.to_feature_major(&c.gpu, batch, rows, &dyt, &dy_fm)
                    .unwrap(),
                sp.ell_product(
                    &c.gpu,
                    &lists,
                    true,
                    batch,
                    &x_fm,
                    Some(&bt),
                    &y,
                    relu,
                    &c.k.dummy,
                )
                .unwrap(),
                sp.ell_product(
                    &c.gpu, &lists, false, batch, &dy_fm, None, &dx, false, &c.k.dummy,
                )
                .unwrap(),
            ];
            run_once(&c.gpu, &ds, 0).unwrap();
            let what = format!("{rows}x{cols} batch {batch} density {density}");
            let p64 = to_f64(&p);
            let (idx, val, cnt) = (
                c.read_u32(&lists.idx),
                c.read(&lists.val),
                c.read_u32(&lists.cnt),
            );
            for by_rows in [true, false] {
                let want = reference::ell_lists(&p64, rows, cols, by_rows);
                let (base, cbase, cap) = if by_rows {
                    (0, 0, cols)
                } else {
                    (rows * cols, rows, rows)
                };
                for (l, list) in want.iter().enumerate() {
                    assert_eq!(
                        cnt[cbase + l] as usize,
                        list.len(),
                        "{what}: count of list {l} (by rows {by_rows})"
                    );
                    for (k, &(i, v)) in list.iter().enumerate() {
                        let at = base + l * cap + k;
                        assert_eq!(
                            (idx[at], val[at] as f64),
                            (i, v),
                            "{what}: list {l} entry {k}"
                        );
                    }
                }
            }
            let rows_l = reference::ell_lists(&p64, rows, cols, true);
            let cols_l = reference::ell_lists(&p64, rows, cols, false);
            let want_y =
                reference::ell_product(&rows_l, &to_f64(&x), cols, Some(&to_f64(&b)), batch);
            let want_dx = reference::ell_product(&cols_l, &to_f64(&dy), rows, None, batch);
            // The same as the dense products of the GEMM reference.
            let gemm_y = dst::reference::gemm::forward(
                &to_f64(&x),
                &p64,
                Some(&to_f64(&b)),
                batch,
                rows,
                cols,
            );
            let gemm_dx =
                dst::reference::gemm::backward_input(&to_f64(&dy), &p64, batch, rows, cols);
            for (a, g) in want_y
                .iter()
                .zip(&gemm_y)
                .chain(want_dx.iter().zip(&gemm_dx))
            {
                assert!(
                    (a - g).abs() < 1e-9,
                    "{what}: list products vs dense products"
                );
            }
            let scale = |v: &[f64]| v.iter().fold(1.0f64, |m, x| m.max(x.abs()));
            let want_y: Vec<f64> = if relu {
                want_y.iter().map(|v| v.max(0.0)).collect()
            } else {
                want_y
            };
            assert_close(
                &format!("ell y {what} relu {relu}"),
                &c.read(&y),
                &want_y,
                TOL * scale(&want_y),
                0.0,
            );
            assert_close(
                &format!("ell dx {what}"),
                &c.read(&dx),
                &want_dx,
                TOL * scale(&want_dx),
                0.0,
            );
        }
    }
}

#[test]
fn the_mask_pass_switches_a_layer_between_dense_and_sparse_products() {
    // A one-matrix mask pass with a switch of 3 dispatches (paths sparse, sparse, dense): at a
    // keep count at most `sparse_max` the sparse ones get their workgroup counts and the dense
    // one gets 0; above it, the reverse. Under every reset policy (the pass that writes the final
    // count decides), and the floor's count pass included.
    use dst::kernels::masked::ResetPolicy;
    use dst::kernels::sparse::{Path, Switch};
    let c = ctx();
    let (rows, cols) = (20, 50);
    let mut rng = Rng::new(5);
    let w = rand_vec(&mut rng, rows * cols, -1.0, 1.0);
    // Thresholds 0.5: about half of U(-1, 1) is kept, 500 of 1000.
    let t = vec![0.5f32; rows];
    for policy in [ResetPolicy::Paper, ResetPolicy::Floor, ResetPolicy::None] {
        for (sparse_max, sparse) in [(1000u32, true), (600, true), (300, false), (0, false)] {
            let wt = c.tensor("w", &[rows, cols], &w);
            let tt = c.tensor("t", &[rows], &t);
            let p = c.poisoned("p", &[rows, cols]);
            let rk = c.poisoned("rk", &[2 * rows]);
            let lk = c.tensor_u32("lk", &[4], &[0; 4]);
            let sw = Switch::new(&c.gpu, "sw", 3, sparse_max).unwrap();
            let ds =
                c.k.masked
                    .mask_pass(
                        &c.gpu,
                        &wt,
                        &tt,
                        &p,
                        &rk,
                        &lk,
                        1,
                        policy,
                        dst::kernels::masked::PassExtras {
                            switch: Some(&sw),
                            ..Default::default()
                        },
                    )
                    .unwrap();
            // Three routed dispatches (never run: the live counts are what is checked).
            let probe = |n: u32| {
                let mut d =
                    c.k.sparse
                        .to_feature_major(&c.gpu, 1, 64 * n as usize, &p, &p)
                        .unwrap();
                d.workgroups = [n, 1, 1];
                d
            };
            let routed = [
                sw.route(&c.gpu, 0, Path::Sparse, probe(3)),
                sw.route(&c.gpu, 1, Path::Sparse, probe(5)),
                sw.route(&c.gpu, 2, Path::Dense, probe(7)),
            ];
            assert!(routed.iter().all(|d| d.indirect.is_some()));
            // Before any mask pass: the dense path.
            assert_eq!(
                sw.live(&c.gpu).unwrap(),
                vec![[0, 0, 0], [0, 0, 0], [7, 1, 1]]
            );
            run_once(&c.gpu, &ds, 0).unwrap();
            let kept = c.read_u32(&lk)[1];
            assert!((400..600).contains(&kept), "kept {kept}");
            let want = if sparse {
                vec![[3, 1, 1], [5, 1, 1], [0, 0, 0]]
            } else {
                vec![[0, 0, 0], [0, 0, 0], [7, 1, 1]]
            };
            assert_eq!(
                sw.live(&c.gpu).unwrap(),
                want,
                "{policy:?} sparse_max {sparse_max}"
            );
        }
    }
}

/// The input-sparse forward: `input_lists` lists, per block of 8 samples, the inputs nonzero in
/// any of them (an all-zero block among them) and `ell_input_product` computes act(x P^T + b)
/// from them, equal to the dense product over the
/// same transposed P (bit for bit on CPU adapters, where the GEMM adds the same products in the
/// same order; an all-zero and an all-nonzero sample included). `input_lists` also switches: at
/// most `input_max` listed inputs (lengths times samples per block) turn its slot on and the
/// forward's other slots off, whichever (dense or weight-sparse) the mask pass chose; more leave
/// them as they were and turn its slot off. A mask pass afterwards sets the weight slots and leaves the input slot alone.
#[test]
fn input_sparse_forward_equals_the_dense_product_and_switches() {
    use dst::kernels::masked::{PassExtras, ResetPolicy};
    use dst::kernels::sparse::{InputLists, Path, Switch};
    use dst::kernels::GemmVariant;
    let c = ctx();
    let mut rng = Rng::new(19);
    for &(batch, width, n) in &[(64usize, 784usize, 300usize), (5, 30, 12), (3, 17, 8)] {
        for relu in [false, true] {
            let tag = format!("{batch}x{width}x{n} relu {relu}");
            let mut x: Vec<f32> = (0..batch * width)
                .map(|_| {
                    let v = rng.range(-1.0, 1.0) as f32;
                    if rng.range(0.0, 1.0) < 0.2 {
                        v
                    } else {
                        0.0
                    }
                })
                .collect();
            x[..width].iter_mut().for_each(|v| *v = 0.0); // sample 0: all zeros
            if batch >= 16 {
                x[8 * width..16 * width].iter_mut().for_each(|v| *v = 0.0); // block 1: all zeros
            }
            let last = (batch - 1) * width;
            x[last..].iter_mut().for_each(|v| *v = 0.5); // last sample: none
                                                         // Per block of 8 samples: the columns nonzero in any of them; the listed work.
            let block = InputLists::BLOCK;
            let nnz: Vec<u32> = x
                .chunks(block * width)
                .map(|bx| {
                    (0..width)
                        .filter(|&i| bx.chunks(width).any(|r| r[i] != 0.0))
                        .count() as u32
                })
                .collect();
            // Each block's two list segments: the columns below half the width's vec4s (rounded
            // up; the width where that is past it) and the others.
            let half = width.min(4 * width.div_ceil(8));
            let segments: Vec<u32> = x
                .chunks(block * width)
                .flat_map(|bx| {
                    [0..half, half..width].map(|cols| {
                        cols.filter(|&i| bx.chunks(width).any(|r| r[i] != 0.0))
                            .count() as u32
                    })
                })
                .collect();
            let total: u32 = nnz
                .iter()
                .enumerate()
                .map(|(blk, &n)| n * block.min(batch - blk * block) as u32)
                .sum();
            let pt = rand_vec(&mut rng, width * n, -1.0, 1.0);
            let b = rand_vec(&mut rng, n, -1.0, 1.0);
            let (xt, ptt, bt) = (
                c.tensor("x", &[batch, width], &x),
                c.tensor("pt", &[width, n], &pt),
                c.tensor("b", &[n], &b),
            );
            let (y_dense, y_sparse) =
                (c.poisoned("yd", &[batch, n]), c.poisoned("ys", &[batch, n]));
            let lists = InputLists::new(&c.gpu, "il", batch, width, n).unwrap();
            let dense =
                c.k.gemm
                    .linear(
                        &c.gpu,
                        &xt,
                        &ptt,
                        true,
                        Some(&bt),
                        &y_dense,
                        relu,
                        &c.k.dummy,
                    )
                    .unwrap();
            let product =
                c.k.sparse
                    .ell_input_product(
                        &c.gpu,
                        &lists,
                        &ptt,
                        Some(&bt),
                        &y_sparse,
                        relu,
                        false,
                        &c.k.dummy,
                    )
                    .unwrap();
            // (input_max, the mask pass chose the weight-sparse forward, input-sparse expected)
            for (input_max, weight_sparse, on) in [
                (total, false, true),
                (total - 1, false, false),
                (u32::MAX, true, true),
                (total - 1, true, false),
            ] {
                let sw = Switch::new(&c.gpu, "sw", 9, 0).unwrap();
                let probe = |k: u32| {
                    let mut d = product.clone();
                    d.workgroups = [k, 1, 1];
                    d
                };
                for (slot, path, k) in [
                    (0, Path::Sparse, 3),
                    (1, Path::Sparse, 4),
                    (2, Path::Sparse, 5),
                    (3, Path::Dense, 6),
                    (8, Path::Input, 7),
                ] {
                    let _ = sw.route(&c.gpu, slot, path, probe(k));
                }
                if weight_sparse {
                    // What a mask pass writes for a layer that keeps at most sparse_max weights.
                    let live: [u32; 12] = [3, 1, 1, 4, 1, 1, 5, 1, 1, 0, 0, 0];
                    c.gpu
                        .queue
                        .write_buffer(&sw.args.buffer, 0, bytemuck::cast_slice(&live));
                }
                let before = sw.live(&c.gpu).unwrap();
                let build =
                    c.k.sparse
                        .input_lists(&c.gpu, &xt, &lists, &sw, input_max, 4, 8, None)
                        .unwrap();
                run_once(&c.gpu, &[dense.clone(), build, product.clone()], 0).unwrap();
                assert_eq!(c.read_u32(&lists.cnt), segments, "{tag}: list lengths");
                let live = sw.live(&c.gpu).unwrap();
                let mut want = before.clone();
                if on {
                    want[..4].iter_mut().for_each(|s| *s = [0; 3]);
                    want[8] = [7, 1, 1];
                } else {
                    want[8] = [0; 3];
                }
                assert_eq!(
                    live, want,
                    "{tag}: switch with input_max {input_max}, weight-sparse {weight_sparse}"
                );
                let (yd, ys) = (c.read(&y_dense), c.read(&y_sparse));
                if c.k.gemm.variant == GemmVariant::RegBlock {
                    assert!(
                        yd.iter().zip(&ys).all(|(a, b)| a == b),
                        "{tag}: not bit-equal"
                    );
                }
                let mut want_y = dst::reference::gemm::forward(
                    &to_f64(&x),
                    &to_f64(&transpose(&pt, width, n)),
                    Some(&to_f64(&b)),
                    batch,
                    n,
                    width,
                );
                if relu {
                    want_y.iter_mut().for_each(|v| *v = v.max(0.0));
                }
                assert_close_norm(&format!("{tag}: y"), &ys, &want_y, 1e-5);
                // A mask pass now (a matrix that keeps more than sparse_max = 0: dense) sets the
                // weight slots and leaves the input slot as `input_lists` set it.
                let (rows, cols) = (4usize, 8usize);
                let w = c.tensor(
                    "w",
                    &[rows, cols],
                    &rand_vec(&mut rng, rows * cols, -1.0, 1.0),
                );
                let t = c.tensor("t", &[rows], &[0.1; 4]);
                let p = c.poisoned("p", &[rows, cols]);
                let rk = c.poisoned("rk", &[2 * rows]);
                let lk = c.tensor_u32("lk", &[4], &[0; 4]);
                let ds =
                    c.k.masked
                        .mask_pass(
                            &c.gpu,
                            &w,
                            &t,
                            &p,
                            &rk,
                            &lk,
                            1,
                            ResetPolicy::Paper,
                            PassExtras {
                                switch: Some(&sw),
                                ..Default::default()
                            },
                        )
                        .unwrap();
                run_once(&c.gpu, &ds, 0).unwrap();
                let after = sw.live(&c.gpu).unwrap();
                assert_eq!(after[..3], [[0; 3]; 3], "{tag}: weight-sparse slots");
                assert_eq!(after[3], [6, 1, 1], "{tag}: dense slot");
                assert_eq!(
                    after[8], want[8],
                    "{tag}: the input slot is input_lists' own"
                );
            }
        }
    }
}

/// P^T (width x n) whose row r of P keeps weights where `keeps(r, n)`, about half of each such
/// row's entries (the others pruned too).
fn pruned_pt(rng: &mut Rng, width: usize, n: usize, keeps: fn(usize, usize) -> bool) -> Vec<f32> {
    (0..width * n)
        .map(|i| {
            let v = rng.range(-1.0, 1.0) as f32;
            if keeps(i % n, n) && rng.range(0.0, 1.0) < 0.5 {
                v
            } else {
                0.0
            }
        })
        .collect()
}

/// The input-sparse forward over the rows of P that keep a weight: `input_lists` with a
/// compaction orders the rows (those with a nonzero count first, then the others, each
/// ascending; their number last) and routes: the compaction's two slots on and the plain
/// product's off when the input-sparse product runs and at most `max_active` rows keep a weight,
/// else the plain product as before. `compact_columns` + the compacted `ell_input_product` give
/// the plain product's y bit for bit (rows that keep nothing: act(bias)), for row patterns with
/// none, some, all but one and all rows empty, rows that keep one weight, a group of 8 that
/// straddles the kept rows' end, and 300 rows (300 % 8 = 4: the last group half outside).
/// `input_lists_counted` (two workgroups, no switch) gives the same lists, order and y.
#[test]
fn compacted_input_sparse_forward_equals_the_plain_one() {
    use dst::kernels::sparse::{Compaction, InputLists, Path, Switch};
    let c = ctx();
    let mut rng = Rng::new(29);
    for &(batch, width, n) in &[
        (64usize, 784usize, 300usize),
        (13, 30, 12),
        (8, 9, 4),
        (13, 28, 12),
    ] {
        type Pattern = fn(usize, usize) -> bool;
        let patterns: [(&str, Pattern); 6] = [
            ("every row", |_, _| true),
            ("every third row", |r, _| r % 3 == 0),
            ("the last row", |r, n| r + 1 == n),
            ("no row", |_, _| false),
            ("all but the first", |r, _| r != 0),
            ("the first 9", |r, _| r < 9),
        ];
        for (name, keeps) in patterns {
            for relu in [false, true] {
                let tag = format!("{batch}x{width}x{n} {name} relu {relu}");
                let x: Vec<f32> = (0..batch * width)
                    .map(|_| {
                        let v = rng.range(-1.0, 1.0) as f32;
                        if rng.range(0.0, 1.0) < 0.3 {
                            v
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let pt = pruned_pt(&mut rng, width, n, keeps);
                // Rows r % 5 == 2 that keep weights keep exactly one (the count 1).
                let mut pt = pt;
                for r in (2..n).step_by(5) {
                    if let Some(first) = (0..width).find(|&i| pt[i * n + r] != 0.0) {
                        (first + 1..width).for_each(|i| pt[i * n + r] = 0.0);
                    }
                }
                let counts: Vec<u32> = (0..n)
                    .map(|r| (0..width).filter(|&i| pt[i * n + r] != 0.0).count() as u32)
                    .collect();
                let active: Vec<u32> = (0..n as u32).filter(|&r| counts[r as usize] > 0).collect();
                let empty: Vec<u32> = (0..n as u32).filter(|&r| counts[r as usize] == 0).collect();
                let b = rand_vec(&mut rng, n, -1.0, 1.0);
                let xt = c.tensor("x", &[batch, width], &x);
                let ptt = c.tensor("pt", &[width, n], &pt);
                let bt = c.tensor("b", &[n], &b);
                let ct = c.tensor_u32("counts", &[n], &counts);
                let pt_c = c.poisoned("pt_c", &[width, n]);
                let lists = InputLists::new(&c.gpu, "il", batch, width, n).unwrap();
                for max_active in [n as u32 / 2, n as u32] {
                    let sw = Switch::new(&c.gpu, "sw", 11, 0).unwrap();
                    let (y_plain, y_c) =
                        (c.poisoned("yp", &[batch, n]), c.poisoned("yc", &[batch, n]));
                    let sp = &c.k.sparse;
                    let plain = sp
                        .ell_input_product(
                            &c.gpu,
                            &lists,
                            &ptt,
                            Some(&bt),
                            &y_plain,
                            relu,
                            false,
                            &c.k.dummy,
                        )
                        .unwrap();
                    let routed = [
                        sw.route(&c.gpu, 8, Path::Input, plain.clone()),
                        sw.route(
                            &c.gpu,
                            9,
                            Path::Input,
                            sp.compact_columns(&c.gpu, &lists, &ptt, &pt_c).unwrap(),
                        ),
                        sw.route(
                            &c.gpu,
                            10,
                            Path::Input,
                            sp.ell_input_product(
                                &c.gpu,
                                &lists,
                                &pt_c,
                                Some(&bt),
                                &y_c,
                                relu,
                                true,
                                &c.k.dummy,
                            )
                            .unwrap(),
                        ),
                    ];
                    let compaction = Compaction {
                        row_counts: &ct,
                        max_active,
                        slot: 9,
                        product_slot: 10,
                    };
                    let build = sp
                        .input_lists(&c.gpu, &xt, &lists, &sw, u32::MAX, 4, 8, Some(&compaction))
                        .unwrap();
                    let mut ds = vec![build];
                    ds.extend(routed);
                    ds.push(plain.clone()); // the plain product, always, for the comparison
                    run_once(&c.gpu, &ds, 0).unwrap();
                    let order = c.read_u32(&lists.order);
                    let compact = active.len() as u32 <= max_active;
                    let want: Vec<u32> = active
                        .iter()
                        .chain(&empty)
                        .copied()
                        .chain([active.len() as u32])
                        .collect();
                    assert_eq!(order, want, "{tag}: order");
                    let live = sw.live(&c.gpu).unwrap();
                    assert_eq!(
                        live[8] == [0; 3],
                        compact,
                        "{tag} max {max_active}: plain slot"
                    );
                    assert_eq!(
                        live[10] == [0; 3],
                        !compact,
                        "{tag} max {max_active}: compacted slot"
                    );
                    let groups = (active.len().div_ceil(64) * 16).min(n / 4);
                    let want_copy = if compact {
                        [
                            width.div_ceil(dst::kernels::sparse::COMPACT_ROWS) as u32,
                            1,
                            1,
                        ]
                    } else {
                        [0; 3]
                    };
                    assert_eq!(live[9], want_copy, "{tag} max {max_active}: copy slot");
                    let yp = c.read(&y_plain);
                    assert!(yp.iter().all(|v| v.is_finite()), "{tag}: plain y");
                    let product = |k: &Kernels, pt: &Tensor, y: &Tensor, compacted: bool| {
                        let d = k.sparse.ell_input_product(
                            &c.gpu,
                            &lists,
                            pt,
                            Some(&bt),
                            y,
                            relu,
                            compacted,
                            &k.dummy,
                        );
                        vec![d.unwrap()]
                    };
                    c.plain_forms_agree(
                        &format!("{tag}: y"),
                        |k| product(k, &ptt, &y_plain, false),
                        &y_plain,
                        &yp,
                    );
                    if compact {
                        let yc = c.read(&y_c);
                        c.plain_forms_agree(
                            &format!("{tag}: compacted y"),
                            |k| product(k, &pt_c, &y_c, true),
                            &y_c,
                            &yc,
                        );
                        assert!(
                            yp.iter().zip(&yc).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{tag}: compacted y differs from the plain product's"
                        );
                        // The two-workgroup build of a forward that always runs compacted: the
                        // same list lengths and order, and from them the same y; where the
                        // width allows, with the weight gradient's lists of the samples
                        // nonzero per block of 8 inputs (checked below).
                        // Without them, where they are built, the same again (the build alone:
                        // its vec4 form at these widths).
                        let counted = |k_lists: Option<&Tensor>, what: &str| {
                            let lists2 = InputLists::new(&c.gpu, "il2", batch, width, n).unwrap();
                            let y2 = c.poisoned("y2", &[batch, n]);
                            let ds = [
                                sp.input_lists_counted(&c.gpu, &xt, &lists2, &ct, k_lists)
                                    .unwrap(),
                                sp.ell_input_product(
                                    &c.gpu,
                                    &lists2,
                                    &pt_c,
                                    Some(&bt),
                                    &y2,
                                    relu,
                                    true,
                                    &c.k.dummy,
                                )
                                .unwrap(),
                            ];
                            run_once(&c.gpu, &ds, 0).unwrap();
                            let cnt = c.read_u32(&lists2.cnt);
                            assert_eq!(cnt, c.read_u32(&lists.cnt), "{tag} {what}");
                            let got = c.read_u32(&lists2.order);
                            assert_eq!(got, order, "{tag} {what}: counted order");
                            assert!(
                                c.read(&y2)
                                    .iter()
                                    .zip(&yc)
                                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                                "{tag} {what}: y from the counted lists"
                            );
                        };
                        let k_words = dst::kernels::gemm::Gemm::k_list_words(width, batch);
                        let k_lists = width
                            .is_multiple_of(4)
                            .then(|| c.tensor_u32("k_lists", &[k_words], &vec![u32::MAX; k_words]));
                        counted(k_lists.as_ref(), "with the weight gradient's lists");
                        if let Some(kl) = &k_lists {
                            let got = c.read_u32(kl);
                            let nb = width.div_ceil(8);
                            for blk in 0..nb {
                                let cols = 8 * blk..(8 * blk + 8).min(width);
                                let want: Vec<u32> = (0..batch)
                                    .filter(|&k| cols.clone().any(|i| x[k * width + i] != 0.0))
                                    .map(|k| k as u32)
                                    .collect();
                                assert_eq!(got[blk] as usize, want.len(), "{tag}: block {blk}");
                                assert_eq!(
                                    got[nb + blk * batch..][..want.len()],
                                    want[..],
                                    "{tag}: block {blk}'s samples"
                                );
                            }
                            counted(None, "alone");
                        }
                        // Only the copied columns are read: they hold P^T's, in order.
                        let got = c.read(&pt_c);
                        for i in 0..width {
                            for k in 0..4 * groups {
                                assert_eq!(
                                    got[i * n + k].to_bits(),
                                    pt[i * n + order[k] as usize].to_bits(),
                                    "{tag}: compacted P^T ({i}, {k})"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A layer whose mask pass only counts writes the compacted columns of P^T from W: `mask_count`
/// writes `mask_forward`'s counters (counts and row maxima) and leaves P alone; after
/// `input_lists` with a compaction, `masked_columns` writes the columns of P^T the compacted
/// product reads, in the lists' order, each element w * S(|w| - t) with `mask_forward`'s bits,
/// and nothing past them. For row patterns with none, some and
/// all rows pruned whole, thresholds that prune part of a row and keep all of it, and shapes with
/// a width that is no multiple of 16 (the last workgroup's block short) or of 4 (W read as
/// scalars; as vec4s where it is: 784 and 28).
#[test]
fn masked_columns_write_the_compacted_columns_from_w() {
    use dst::kernels::sparse::{Compaction, InputLists, Switch};
    let c = ctx();
    let mut rng = Rng::new(31);
    for &(batch, width, n) in &[
        (64usize, 784usize, 300usize),
        (13, 30, 12),
        (8, 9, 4),
        (13, 28, 12),
    ] {
        type Pattern = fn(usize) -> f32;
        let patterns: [(&str, Pattern); 4] = [
            // Thresholds differ from row to row among the rows that keep weights.
            ("part of every row", |r| 0.07 * (r % 13) as f32),
            ("every third row whole", |r| {
                if r % 3 == 0 {
                    0.1 * (r % 4) as f32
                } else {
                    100.0
                }
            }),
            ("no row", |_| 100.0),
            ("the first 9 rows", |r| {
                if r < 9 {
                    0.15 * (r % 5) as f32
                } else {
                    100.0
                }
            }),
        ];
        for (name, thr) in patterns {
            let tag = format!("{n}x{width} {name}");
            let w = rand_vec(&mut rng, n * width, -1.0, 1.0);
            let t: Vec<f32> = (0..n).map(thr).collect();
            // P^T and the counters as `mask_forward` computes them (f32, strict step).
            let mut pt = vec![0.0f32; width * n];
            let mut counts = vec![0u32; n];
            let mut maxima = vec![0.0f32; n];
            for r in 0..n {
                for i in 0..width {
                    let v = w[r * width + i];
                    let m = if v.abs() - t[r] > 0.0 { 1.0f32 } else { 0.0 };
                    pt[i * n + r] = v * m;
                    counts[r] += m as u32;
                    maxima[r] = maxima[r].max(v.abs());
                }
            }
            let active: Vec<usize> = (0..n).filter(|&r| counts[r] > 0).collect();
            let wt = c.tensor("w", &[n, width], &w);
            let tt = c.tensor("t", &[n], &t);
            let x: Vec<f32> = (0..batch * width)
                .map(|_| if rng.range(0.0, 1.0) < 0.3 { 1.0 } else { 0.0 })
                .collect();
            let xt = c.tensor("x", &[batch, width], &x);
            // The order as `forward_counted` asks for it: every row may be compacted.
            let p = c.poisoned("p", &[width, n]);
            let pt_c = c.poisoned("pt_c", &[width, n]);
            let row_keep = c.tensor_u32("row_keep", &[2 * n], &vec![7u32; 2 * n]);
            let lists = InputLists::new(&c.gpu, "il", batch, width, n).unwrap();
            let sw = Switch::new(&c.gpu, "sw", 11, 0).unwrap();
            let compaction = Compaction {
                row_counts: &row_keep,
                max_active: n as u32,
                slot: 9,
                product_slot: 10,
            };
            let sp = &c.k.sparse;
            let ds = vec![
                c.k.masked
                    .mask_count(&c.gpu, &wt, &tt, &p, &row_keep)
                    .unwrap(),
                sp.input_lists(&c.gpu, &xt, &lists, &sw, u32::MAX, 4, 8, Some(&compaction))
                    .unwrap(),
                sp.masked_columns(&c.gpu, &lists, &wt, &tt, &pt_c).unwrap(),
            ];
            run_once(&c.gpu, &ds, 0).unwrap();
            let rk = c.read_u32(&row_keep);
            assert_eq!(&rk[..n], &counts[..], "{tag}: counts");
            let got_max: Vec<f32> = rk[n..].iter().map(|&b| f32::from_bits(b)).collect();
            assert_eq!(got_max, maxima, "{tag}: row maxima");
            assert!(c.read(&p).iter().all(|v| v.is_nan()), "{tag}: P written");
            let order = c.read_u32(&lists.order);
            assert_eq!(
                order[n] as usize,
                active.len(),
                "{tag}: rows that keep a weight"
            );
            let got_c = c.read(&pt_c);
            let cols = (active.len().div_ceil(64) * 64).min(n);
            for i in 0..width {
                for k in 0..cols {
                    assert_eq!(
                        got_c[i * n + k].to_bits(),
                        pt[i * n + order[k] as usize].to_bits(),
                        "{tag}: compacted P^T ({i}, {k})"
                    );
                }
                // Columns past the copied workgroups: untouched.
                assert!(got_c[i * n + cols..(i + 1) * n].iter().all(|v| v.is_nan()));
            }
        }
    }
}

/// The product to the input over the rows of P that keep a weight: after `input_lists` with a
/// compaction and `compact_columns`, `ordered_input_grad` gives `dx = dy P` gated by the ReLU
/// output before the layer (0 where it is 0), against the f64 reference and the dense gated
/// GEMM over P^T, up to float reassociation, with dy nonzero in the rows that keep nothing too
/// (their products are zeros all the same). Row patterns with all, some, one and no rows
/// keeping weights (then dx is 0); batches that are no multiple of 4 and widths no multiple of
/// 8 (the last invocations clamped and storing one vec4 of their two; the kernel takes widths
/// in fours), and LeNet-300-100's fc2 (100 rows, 61 keeping weights:
/// the ordered rows of one workgroup of 64).
#[test]
fn ordered_input_grad_equals_the_dense_gated_product() {
    use dst::kernels::sparse::{Compaction, InputLists, Switch};
    let c = ctx();
    // The device's form is the subgroup one exactly where it has 8-lane subgroups (lavapipe):
    // then the plain form is compared with it below.
    let sp = &c.k.sparse;
    assert_eq!(sp.ordered_input_grad_sg_k.is_some(), c.gpu.subgroups8);
    assert_eq!(sp.ell_input_product_sg_k.is_some(), c.gpu.subgroups8);
    assert_eq!(
        sp.ell_input_product_compacted_sg_k.is_some(),
        c.gpu.subgroups8
    );
    assert_eq!(c.k.gemm.tn_sgd_listed_sg.is_some(), c.gpu.subgroups8);
    assert_eq!(c.k.gemm.tn_sgd_sg.is_some(), c.gpu.subgroups8);
    let mut rng = Rng::new(37);
    for &(batch, width, n) in &[(64usize, 300usize, 100usize), (13, 28, 12), (5, 12, 8)] {
        type Pattern = fn(usize, usize) -> bool;
        let patterns: [(&str, Pattern); 5] = [
            ("every row", |_, _| true),
            ("61 of them", |r, n| n != 100 || (r * 7) % 100 < 61),
            ("every third row", |r, _| r % 3 == 0),
            ("the last row", |r, n| r + 1 == n),
            ("no row", |_, _| false),
        ];
        for (name, keeps) in patterns {
            let tag = format!("{batch}x{width}x{n} {name}");
            let pt = pruned_pt(&mut rng, width, n, keeps);
            let counts: Vec<u32> = (0..n)
                .map(|r| (0..width).filter(|&i| pt[i * n + r] != 0.0).count() as u32)
                .collect();
            let dy = rand_vec(&mut rng, batch * n, -1.0, 1.0);
            // The ReLU's output before the layer: about half of it 0.
            let relu_out: Vec<f32> = (0..batch * width)
                .map(|_| (rng.range(-1.0, 1.0) as f32).max(0.0))
                .collect();
            let x = rand_vec(&mut rng, batch * width, -1.0, 1.0);
            let (xt, ptt, dyt, rt) = (
                c.tensor("x", &[batch, width], &x),
                c.tensor("pt", &[width, n], &pt),
                c.tensor("dy", &[batch, n], &dy),
                c.tensor("relu_out", &[batch, width], &relu_out),
            );
            let ct = c.tensor_u32("counts", &[n], &counts);
            let pt_c = c.poisoned("pt_c", &[width, n]);
            let (dx, dx_dense) = (
                c.poisoned("dx", &[batch, width]),
                c.poisoned("dxd", &[batch, width]),
            );
            let lists = InputLists::new(&c.gpu, "il", batch, width, n).unwrap();
            let sw = Switch::new(&c.gpu, "sw", 11, 0).unwrap();
            let compaction = Compaction {
                row_counts: &ct,
                max_active: n as u32,
                slot: 9,
                product_slot: 10,
            };
            let sp = &c.k.sparse;
            let ds = [
                sp.input_lists(&c.gpu, &xt, &lists, &sw, u32::MAX, 4, 8, Some(&compaction))
                    .unwrap(),
                sp.compact_columns(&c.gpu, &lists, &ptt, &pt_c).unwrap(),
                sp.ordered_input_grad(&c.gpu, &lists.order, &dyt, &pt_c, &rt, &dx)
                    .unwrap(),
                c.k.gemm
                    .backward_input_gated(&c.gpu, &dyt, &ptt, true, &rt, &dx_dense)
                    .unwrap(),
            ];
            run_once(&c.gpu, &ds, 0).unwrap();
            let p = transpose(&pt, width, n); // n x width
            let mut want =
                dst::reference::gemm::backward_input(&to_f64(&dy), &to_f64(&p), batch, n, width);
            want.iter_mut()
                .zip(&relu_out)
                .filter(|(_, r)| **r <= 0.0)
                .for_each(|(v, _)| *v = 0.0);
            let got = c.read(&dx);
            assert_close_norm(&format!("{tag}: dx"), &got, &want, 1e-5);
            c.plain_forms_agree(
                &format!("{tag}: dx"),
                |k| {
                    let d =
                        k.sparse
                            .ordered_input_grad(&c.gpu, &lists.order, &dyt, &pt_c, &rt, &dx);
                    vec![d.unwrap()]
                },
                &dx,
                &got,
            );
            assert_close_norm(
                &format!("{tag}: the dense gated product"),
                &c.read(&dx_dense),
                &want,
                1e-5,
            );
            // Gated outputs are exact zeros, and so is all of dx when no row keeps a weight.
            for (i, (g, r)) in got.iter().zip(&relu_out).enumerate() {
                if *r <= 0.0 || counts.iter().all(|&k| k == 0) {
                    assert_eq!(g.to_bits(), 0, "{tag}: dx[{i}]");
                }
            }
        }
    }
}
