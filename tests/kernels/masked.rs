use dst::kernels::gemm::{GemmParams, TiledForm};
use dst::kernels::loss::STATS_WORDS;
use dst::kernels::{run_once, GemmVariant};
use dst::reference::{gemm as rgemm, masked as reference, optim as roptim};
use dst::rng::Rng;
use serde_json::Value;

use crate::common::*;

/// Element-wise kernels with one f32 rounding per operation: 1e-6 absolute + 1e-5 relative.
const ATOL: f64 = 1e-6;
const RTOL: f64 = 1e-5;

const SHAPES: &[(usize, usize)] = &[
    (1, 1),
    (3, 7),
    (7, 65),
    (65, 3),
    (9, 1),
    (100, 300),
    (300, 784),
];

struct Layer {
    w: dst::gpu::Tensor,
    t: dst::gpu::Tensor,
    p: dst::gpu::Tensor,
    row_keep: dst::gpu::Tensor,
    layer_keep: dst::gpu::Tensor,
}

fn layer(c: &Ctx, w: &[f32], t: &[f32], rows: usize, cols: usize) -> Layer {
    Layer {
        w: c.tensor("w", &[rows, cols], w),
        t: c.tensor("t", &[rows], t),
        p: c.poisoned("p", &[rows, cols]),
        row_keep: c.tensor_u32("row_keep", &[2 * rows], &vec![u32::MAX; 2 * rows]),
        layer_keep: c.tensor_u32("layer_keep", &[4], &[u32::MAX, u32::MAX, 0, 0]),
    }
}

fn forward(c: &Ctx, l: &Layer) {
    forward_with(c, l, c.k.masked.rowwise);
}

fn forward_with(c: &Ctx, l: &Layer, rowwise: bool) {
    let m = &c.k.masked;
    let ds = [
        m.mask_forward_with(rowwise, &c.gpu, &l.w, &l.t, &l.p, &l.row_keep)
            .unwrap(),
        m.mask_reset(&c.gpu, &l.w, &l.t, &l.p, &l.row_keep, &l.layer_keep)
            .unwrap(),
    ];
    run_once(&c.gpu, &ds, 0).unwrap();
}

#[test]
fn mask_forward_reset_backward_match_reference() {
    let c = ctx();
    let mut rng = Rng::new(3);
    // Both variants of mask_forward (workgroup per row; one invocation per row).
    for (&(rows, cols), rowwise) in SHAPES.iter().flat_map(|s| [(s, false), (s, true)]) {
        let w = rand_vec(&mut rng, rows * cols, -1.0, 1.0);
        let t = rand_vec(&mut rng, rows, -0.1, 0.4);
        let g = rand_vec(&mut rng, rows * cols, -1.0, 1.0);
        let (wd, td, gd) = (to_f64(&w), to_f64(&t), to_f64(&g));
        let l = layer(&c, &w, &t, rows, cols);
        forward_with(&c, &l, rowwise);
        let (_, keep_ref) = reference::mask_forward(&wd, &td, rows, cols);
        // P as the layer uses it: after the reset decision (tiny layers may reset).
        let (p_ref, t_used, counts, reset) = reference::mask_reset(&wd, &td, rows, cols);
        let tag = format!("{rows}x{cols} rowwise={rowwise}");
        assert_close(
            &format!("mask_forward P {tag}"),
            &c.read(&l.p),
            &p_ref,
            0.0,
            0.0,
        );
        // The rows' keep counts of P as the layer uses it: mask_forward's, or after a reset, the
        // reset's (it recounts them).
        let row_counts: Vec<u32> = if reset {
            (0..rows)
                .map(|r| (0..cols).filter(|&j| p_ref[r * cols + j] != 0.0).count() as u32)
                .collect()
        } else {
            keep_ref.clone()
        };
        assert_eq!(
            c.read_u32(&l.row_keep)[..rows],
            row_counts[..],
            "row keep counts {tag}"
        );
        // The row maxima the floor policy uses: each row's largest |w|, exactly.
        let maxima: Vec<f32> = c.read_u32(&l.row_keep)[rows..]
            .iter()
            .map(|&b| f32::from_bits(b))
            .collect();
        for (r, &m) in maxima.iter().enumerate() {
            let want = w[r * cols..(r + 1) * cols]
                .iter()
                .fold(0.0f32, |a, x| a.max(x.abs()));
            assert_eq!(m, want, "row {r} largest |w| {tag}");
        }
        assert!(
            !reset || rows * cols < 100,
            "random thresholds should not reset {tag}"
        );
        let lk = c.read_u32(&l.layer_keep);
        assert_eq!([lk[0], lk[1]], counts, "layer keep {tag}");
        assert_eq!(lk[2], reset as u32, "reset count {tag}");

        let alpha = 0.1;
        let dw = c.poisoned("dw", &[rows, cols]);
        let dt = c.poisoned("dt", &[rows]);
        let dg = c.tensor("g", &[rows, cols], &g);
        let stats = c.tensor_u32("stats", &[STATS_WORDS], &[0; STATS_WORDS]);
        let m = &c.k.masked;
        let ds = [
            // The same two forms of mask_backward (8 x 8 on CPU adapters; workgroup per row).
            m.mask_backward_with(
                rowwise,
                &c.gpu,
                [&l.w, &l.t, &dg, &dw, &dt],
                alpha as f32,
                &m.one,
            )
            .unwrap(),
            m.penalty(&c.gpu, &l.t, &stats, alpha as f32).unwrap(),
        ];
        run_once(&c.gpu, &ds, 0).unwrap();
        let (dw_ref, dt_ref) = reference::mask_backward(&wd, &t_used, &gd, rows, cols, alpha);
        assert_close(
            &format!("mask_backward d_weight {tag}"),
            &c.read(&dw),
            &dw_ref,
            ATOL,
            RTOL,
        );
        // d_threshold sums `cols` products: error bound scaled by the row's magnitude.
        assert_close(
            &format!("mask_backward d_threshold {tag}"),
            &c.read(&dt),
            &dt_ref,
            1e-5 * cols as f64 / 64.0 + ATOL,
            1e-4,
        );
        let pen = f32::from_bits(c.read_u32(&stats)[1]) as f64;
        let pen_ref = reference::penalty(&t_used, alpha);
        assert!(
            (pen - pen_ref).abs() <= 1e-5 * pen_ref,
            "penalty {tag}: {pen} vs {pen_ref}"
        );
    }
}

/// A layer pushed to <= 1% comes back dense with zero thresholds, in the same forward.
#[test]
fn mask_reset_revives_dead_layer() {
    let c = ctx();
    let mut rng = Rng::new(5);
    let (rows, cols) = (300, 784);
    let w = rand_vec(&mut rng, rows * cols, -1.0, 1.0);
    // Thresholds keep ~0.5% of the weights (|w| > 0.995).
    let t = vec![0.995f32; rows];
    let l = layer(&c, &w, &t, rows, cols);
    forward(&c, &l);
    let (p_ref, t_used, counts, reset) =
        reference::mask_reset(&to_f64(&w), &to_f64(&t), rows, cols);
    assert!(reset && counts[0] > 0 && counts[0] as usize <= (rows * cols) / 100);
    assert_eq!(counts[1] as usize, rows * cols, "reset layer is dense");
    assert_close("reset thresholds", &c.read(&l.t), &t_used, 0.0, 0.0);
    assert_close("reset P", &c.read(&l.p), &p_ref, 0.0, 0.0);
    let lk = c.read_u32(&l.layer_keep);
    assert_eq!([lk[0], lk[1], lk[2]], [counts[0], counts[1], 1]);
    // Just above 1%: no reset.
    let t2 = vec![0.98f32; rows];
    let l2 = layer(&c, &w, &t2, rows, cols);
    forward(&c, &l2);
    assert_close("no reset above 1%", &c.read(&l2.t), &to_f64(&t2), 0.0, 0.0);
    assert_eq!(c.read_u32(&l2.layer_keep)[2], 0);
}

fn golden() -> Value {
    serde_json::from_str(include_str!("../golden/golden_masked_linear.json")).unwrap()
}

pub fn flat(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(a) => a.iter().flat_map(flat).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        Value::Bool(b) => vec![*b as u8 as f64],
        _ => panic!("not numeric: {v}"),
    }
}

fn f32s(v: &Value) -> Vec<f32> {
    flat(v).iter().map(|&x| x as f32).collect()
}

/// The whole masked linear layer (mask, reset, GEMMs, mask backward, bias, penalty) on the GPU
/// against the float64 golden values of the PyTorch reference.
fn check_golden_case(case: &Value) {
    let c = ctx();
    let (rows, cols, batch) = (7, 5, 3);
    let alpha = case["alpha"].as_f64().unwrap() as f32;
    let l = layer(
        &c,
        &f32s(&case["weight"]),
        &f32s(&case["threshold"]),
        rows,
        cols,
    );
    let x = c.tensor("x", &[batch, cols], &f32s(&case["x"]));
    let b = c.tensor("b", &[rows], &f32s(&case["bias"]));
    let gy = c.tensor("gy", &[batch, rows], &f32s(&case["grad_y"]));
    let y = c.poisoned("y", &[batch, rows]);
    let dx = c.poisoned("dx", &[batch, cols]);
    let dp = c.poisoned("dp", &[rows, cols]);
    let dw = c.poisoned("dw", &[rows, cols]);
    let dt = c.poisoned("dt", &[rows]);
    let db = c.poisoned("db", &[rows]);
    let stats = c.tensor_u32("stats", &[STATS_WORDS], &[0; STATS_WORDS]);
    let (k, m) = (&c.k, &c.k.masked);
    let ds = [
        m.mask_forward(&c.gpu, &l.w, &l.t, &l.p, &l.row_keep)
            .unwrap(),
        m.mask_reset(&c.gpu, &l.w, &l.t, &l.p, &l.row_keep, &l.layer_keep)
            .unwrap(),
        k.gemm
            .forward(&c.gpu, &x, &l.p, Some(&b), &y, &k.dummy)
            .unwrap(),
        m.penalty(&c.gpu, &l.t, &stats, alpha).unwrap(),
        k.gemm
            .backward_input(&c.gpu, &gy, &l.p, &dx, false, &k.dummy)
            .unwrap(),
        k.gemm
            .backward_weight(&c.gpu, &gy, &x, &dp, false, &k.dummy)
            .unwrap(),
        m.mask_backward(&c.gpu, &l.w, &l.t, &dp, &dw, &dt, alpha)
            .unwrap(),
        k.gemm.bias_backward(&c.gpu, &gy, &db).unwrap(),
    ];
    run_once(&c.gpu, &ds, 0).unwrap();
    let tol = 1e-5;
    assert_close(
        "golden threshold_used",
        &c.read(&l.t),
        &flat(&case["threshold_used"]),
        0.0,
        0.0,
    );
    assert_close(
        "golden masked_weight",
        &c.read(&l.p),
        &flat(&case["masked_weight"]),
        1e-7,
        0.0,
    );
    assert_close("golden y", &c.read(&y), &flat(&case["y"]), tol, tol);
    assert_close(
        "golden grad_x",
        &c.read(&dx),
        &flat(&case["grad_x"]),
        tol,
        tol,
    );
    assert_close(
        "golden grad_weight",
        &c.read(&dw),
        &flat(&case["grad_weight"]),
        tol,
        tol,
    );
    assert_close(
        "golden grad_threshold",
        &c.read(&dt),
        &flat(&case["grad_threshold"]),
        tol,
        tol,
    );
    assert_close(
        "golden grad_bias",
        &c.read(&db),
        &flat(&case["grad_bias"]),
        tol,
        tol,
    );
    let lk = c.read_u32(&l.layer_keep);
    let keep = flat(&case["keep_ratio"])[0];
    assert_eq!(
        lk[1] as f64 / (rows * cols) as f64,
        keep,
        "golden keep ratio"
    );
    assert_eq!(
        lk[2],
        case["reset"].as_bool().unwrap() as u32,
        "golden reset flag"
    );
    let pen = f32::from_bits(c.read_u32(&stats)[1]) as f64;
    let pen_ref = case["penalty"].as_f64().unwrap();
    assert!(
        (pen - pen_ref).abs() <= 1e-6 * pen_ref.abs().max(1.0),
        "golden penalty {pen} vs {pen_ref}"
    );
}

#[test]
fn masked_layer_matches_golden() {
    let g = golden();
    check_golden_case(&g);
    assert!(!g["reset"].as_bool().unwrap());
}

#[test]
fn masked_layer_reset_matches_golden() {
    let g = golden();
    let case = &g["extra_cases"]["reset"];
    assert!(case["reset"].as_bool().unwrap());
    check_golden_case(case);
}

/// The golden SGD steps: the f64 reference optimiser reproduces them exactly (the GPU optimiser is
/// checked against the same reference in optim.rs).
#[test]
fn golden_sgd_steps_match_reference_optimiser() {
    let g = golden();
    for (name, grad) in [
        ("weight", "grad_weight"),
        ("bias", "grad_bias"),
        ("threshold", "grad_threshold"),
    ] {
        let mut p = flat(&g[name]);
        let gr = flat(&g[grad]);
        let mut v = vec![0.0; p.len()];
        for step in ["after_step1", "after_step2"] {
            roptim::sgd(&mut p, &gr, &mut v, 0.01, 0.9, 0.0);
            let want = flat(&g["sgd"][name][step]);
            for (a, b) in p.iter().zip(&want) {
                assert!((a - b).abs() < 1e-12, "sgd {name} {step}: {a} vs {b}");
            }
        }
    }
}

// ---- finite differences of the f64 reference (no GPU) ----

/// Antiderivative of the long-tailed estimator: S~(q) = integral_0^q H, so d S~/dq = H.
pub fn smooth_step(q: f64) -> f64 {
    let a = q.abs();
    let v = if a <= 0.4 {
        2.0 * a - 2.0 * a * a
    } else if a <= 1.0 {
        0.48 + 0.4 * (a - 0.4)
    } else {
        0.72
    };
    v * q.signum()
}

/// The estimator is the exact gradient of J(W, t) = sum G*(W*M0 + W0*S~(|W| - t)) + alpha*sum exp(-t)
/// with M0, W0 frozen at the point: finite differences of J check dW and dt of `mask_backward`.
#[test]
fn mask_backward_matches_finite_differences() {
    let mut rng = Rng::new(17);
    let (rows, cols, alpha) = (6, 9, 0.3);
    let t: Vec<f64> = (0..rows).map(|_| rng.range(-0.2, 0.5)).collect();
    let mut w = vec![0.0; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            // Keep q away from the jumps of S and the kinks of H (0, +-0.4, +-1).
            loop {
                let v = rng.range(-1.6, 1.6);
                let q = v.abs() - t[i];
                if [0.0, 0.4, 1.0].iter().all(|e| (q.abs() - e).abs() > 1e-3) && v.abs() > 1e-3 {
                    w[i * cols + j] = v as f32 as f64;
                    break;
                }
            }
        }
    }
    let g: Vec<f64> = (0..rows * cols).map(|_| rng.normal()).collect();
    let (m0, _) = reference::mask_forward(&w, &t, rows, cols);
    let w0 = w.clone();
    let j = |w: &[f64], t: &[f64]| -> f64 {
        let mut s = 0.0;
        for (i, &ti) in t.iter().enumerate().take(rows) {
            for c in 0..cols {
                let k = i * cols + c;
                let mask0 = if m0[k] != 0.0 { 1.0 } else { 0.0 };
                s += g[k] * (w[k] * mask0 + w0[k] * smooth_step(w[k].abs() - ti));
            }
        }
        s + reference::penalty(t, alpha)
    };
    let (dw, dt) = reference::mask_backward(&w, &t, &g, rows, cols, alpha);
    let h = 1e-6;
    for k in 0..rows * cols {
        let (mut wp, mut wm) = (w.clone(), w.clone());
        wp[k] += h;
        wm[k] -= h;
        let fd = (j(&wp, &t) - j(&wm, &t)) / (2.0 * h);
        assert!((fd - dw[k]).abs() < 1e-6, "dW[{k}]: fd {fd} vs {}", dw[k]);
    }
    for i in 0..rows {
        let (mut tp, mut tm) = (t.clone(), t.clone());
        tp[i] += h;
        tm[i] -= h;
        let fd = (j(&w, &tp) - j(&w, &tm)) / (2.0 * h);
        assert!((fd - dt[i]).abs() < 1e-6, "dt[{i}]: fd {fd} vs {}", dt[i]);
    }
}

/// Finite differences of the true layer objective w.r.t. x and bias (smooth there) agree with the
/// reference GEMM backward, and w.r.t. W (mask locally constant) with the performance term G*M.
#[test]
fn masked_linear_reference_matches_finite_differences() {
    let mut rng = Rng::new(23);
    let (batch, rows, cols, alpha) = (3, 4, 5, 0.1);
    let x: Vec<f64> = (0..batch * cols).map(|_| rng.normal()).collect();
    let t: Vec<f64> = (0..rows).map(|_| rng.range(0.0, 0.3)).collect();
    let w: Vec<f64> = (0..rows * cols)
        .map(|_| loop {
            let v = rng.range(-1.0, 1.0);
            if (v.abs() - 0.3).abs() > 0.05 && v.abs() > 0.05 {
                break v;
            }
        })
        .collect();
    let b: Vec<f64> = (0..rows).map(|_| rng.normal()).collect();
    let gy: Vec<f64> = (0..batch * rows).map(|_| rng.normal()).collect();
    let obj = |x: &[f64], w: &[f64], b: &[f64]| {
        reference::objective(x, w, &t, b, &gy, batch, rows, cols, alpha)
    };
    let (p, _) = reference::mask_forward(&w, &t, rows, cols);
    let dx = rgemm::backward_input(&gy, &p, batch, rows, cols);
    let db = rgemm::bias_backward(&gy, batch, rows);
    let gp = rgemm::backward_weight(&gy, &x, batch, rows, cols);
    let h = 1e-6;
    let fd = |f: &dyn Fn(f64) -> f64| (f(h) - f(-h)) / (2.0 * h);
    for k in 0..x.len() {
        let d = fd(&|e| {
            let mut x2 = x.clone();
            x2[k] += e;
            obj(&x2, &w, &b)
        });
        assert!((d - dx[k]).abs() < 1e-7, "dx[{k}] {d} vs {}", dx[k]);
    }
    for k in 0..b.len() {
        let d = fd(&|e| {
            let mut b2 = b.clone();
            b2[k] += e;
            obj(&x, &w, &b2)
        });
        assert!((d - db[k]).abs() < 1e-7, "db[{k}] {d} vs {}", db[k]);
    }
    for k in 0..w.len() {
        let d = fd(&|e| {
            let mut w2 = w.clone();
            w2[k] += e;
            obj(&x, &w2, &b)
        });
        let m = if p[k] != 0.0 { 1.0 } else { 0.0 };
        assert!(
            (d - gp[k] * m).abs() < 1e-7,
            "performance term dW[{k}] {d} vs {}",
            gp[k] * m
        );
    }
}

/// A weight stacking four matrices (an LSTM's gates): each matrix takes its own reset decision
/// and keeps its own counters; here two of the four are nearly empty and reset, two do not.
#[test]
fn mask_reset_groups_resets_each_matrix_on_its_own() {
    let c = ctx();
    let mut rng = Rng::new(44);
    let (groups, gr, cols) = (4usize, 5usize, 7usize);
    let rows = groups * gr;
    let w = rand_vec(&mut rng, rows * cols, -1.0, 1.0);
    // Matrices 1 and 3: thresholds above every |w| (keep 0% -> reset); 0 and 2: small ones.
    let t: Vec<f32> = (0..rows)
        .map(|r| {
            if (r / gr) % 2 == 1 {
                2.0
            } else {
                0.1 + 0.01 * r as f32
            }
        })
        .collect();
    let l = layer(&c, &w, &t, rows, cols);
    // Counters: before/after poisoned, the running reset count starting at 0.
    let mut init = vec![u32::MAX; 4 * groups];
    for g in 0..groups {
        init[4 * g + 2] = 0;
    }
    let lk = c.tensor_u32("layer_keep", &[4 * groups], &init);
    let m = &c.k.masked;
    let ds = [
        m.mask_forward(&c.gpu, &l.w, &l.t, &l.p, &l.row_keep)
            .unwrap(),
        m.mask_reset_policy(
            &c.gpu,
            &l.w,
            &l.t,
            &l.p,
            &l.row_keep,
            &lk,
            groups,
            dst::kernels::masked::ResetPolicy::Paper,
            Default::default(),
        )
        .unwrap(),
    ];
    run_once(&c.gpu, &ds, 0).unwrap();
    let (p_ref, t_ref, counts, resets) =
        reference::mask_reset_groups(&to_f64(&w), &to_f64(&t), rows, cols, groups);
    assert_eq!(resets, vec![false, true, false, true]);
    assert_close("grouped P", &c.read(&l.p), &p_ref, 0.0, 0.0);
    assert_close("grouped thresholds", &c.read(&l.t), &t_ref, 0.0, 0.0);
    let k = c.read_u32(&lk);
    for g in 0..groups {
        assert_eq!(
            [k[4 * g], k[4 * g + 1], k[4 * g + 2]],
            [counts[g][0], counts[g][1], resets[g] as u32],
            "matrix {g} counters"
        );
    }
}

/// The reset policies on dying and healthy matrices against the f64 reference: `floor` lowers a
/// dying matrix's too-high thresholds so that every row keeps at least its strongest weight (bit
/// for bit as the reference), `none` leaves it dying, `paper` zeroes its thresholds, and none of
/// them touches a healthy matrix. Also with stacked matrices (an LSTM's gates), where only the
/// dying ones act. A small one-matrix weight (`SMALL_PASS_ROWS`) on a CPU adapter takes
/// the pass and its reset in one dispatch (`mask_pass_small4`), also counting only (P not
/// written, as `Linear::forward_counted` asks).
#[test]
fn reset_policies_match_reference() {
    use dst::kernels::masked::{ResetPolicy, SMALL_PASS_ROWS};
    let c = ctx();
    let mut rng = Rng::new(19);
    for &(groups, gr, cols) in &[
        (1usize, 7usize, 65usize),
        (1, 300, 784),
        (4, 5, 33),
        (1, 10, 100),
        (1, 64, 32),
        (1, 100, 12),
    ] {
        let rows = groups * gr;
        let w = rand_vec(&mut rng, rows * cols, -1.0, 1.0);
        // Matrix g dying when g is even (thresholds near the largest |w|), healthy otherwise.
        let t: Vec<f32> = (0..rows)
            .map(|r| {
                if (r / gr) % 2 == 0 {
                    0.993 + 0.0001 * (r % 7) as f32
                } else {
                    0.2
                }
            })
            .collect();
        // A linear layer's P is stored transposed (one matrix): the same values, cols x rows.
        let layouts: &[bool] = if groups == 1 {
            &[false, true]
        } else {
            &[false]
        };
        // The count-only pass is a CPU adapter's (rowwise) form.
        let counting: &[bool] = if groups == 1 && c.k.masked.rowwise {
            &[false, true]
        } else {
            &[false]
        };
        let small =
            c.k.masked.rowwise && groups == 1 && rows <= SMALL_PASS_ROWS && cols.is_multiple_of(4);
        for ((&policy, &transposed), &count_only) in
            [ResetPolicy::Floor, ResetPolicy::None, ResetPolicy::Paper]
                .iter()
                .flat_map(|p| layouts.iter().map(move |t| (p, t)))
                .flat_map(|pt| counting.iter().map(move |c| (pt, c)))
        {
            let l = layer(&c, &w, &t, rows, cols);
            let stats = c.tensor("stats", &[4], &[0.0, 0.5, 0.0, 0.0]);
            let scale = c.tensor("alpha_scale", &[1], &[2.0]);
            let mut init = vec![u32::MAX; 4 * groups];
            for g in 0..groups {
                init[4 * g + 2] = 0;
            }
            let lk = c.tensor_u32("layer_keep", &[4 * groups], &init);
            let m = &c.k.masked;
            let ds = m
                .mask_pass(
                    &c.gpu,
                    &l.w,
                    &l.t,
                    &l.p,
                    &l.row_keep,
                    &lk,
                    groups,
                    policy,
                    dst::kernels::masked::PassExtras {
                        p_transposed: transposed,
                        // One matrix: the pass adds the penalty's value after its reset.
                        penalty: (groups == 1).then_some(dst::kernels::masked::PenaltyInto {
                            stats: &stats,
                            alpha: 0.25,
                            alpha_scale: &scale,
                        }),
                        count_only,
                        ..Default::default()
                    },
                )
                .unwrap();
            let floor = policy == ResetPolicy::Floor;
            let first = if small { 1 } else { 2 };
            assert_eq!(
                ds.len(),
                first + 2 * floor as usize,
                "{policy:?} {groups}x{gr}x{cols}: dispatches"
            );
            run_once(&c.gpu, &ds, 0).unwrap();
            let (p_ref, t_ref, counts, acted) = reference::mask_reset_policy(
                &to_f64(&w),
                &to_f64(&t),
                rows,
                cols,
                groups,
                policy as u32,
            );
            let tag = format!(
                "{policy:?} {groups}x{gr}x{cols} transposed P {transposed} count only {count_only}"
            );
            let st = c.read(&stats);
            if groups == 1 {
                // 0.5 already there + alpha 0.25 x scale 2 x sum exp(-t) over the final thresholds.
                let want = 0.5 + 0.5 * t_ref.iter().map(|t| (-t).exp()).sum::<f64>();
                assert_close(&format!("penalty {tag}"), &st[1..2], &[want], 0.0, 1e-5);
            } else {
                assert_eq!(st[1], 0.5, "{tag}: no fused penalty for stacked matrices");
            }
            let mut p_got = c.read(&l.p);
            if transposed {
                p_got = (0..rows * cols)
                    .map(|i| p_got[(i % cols) * rows + i / cols])
                    .collect();
            }
            if count_only && policy == ResetPolicy::None {
                // Nothing wrote P (the floor's recompute and the paper's reset of this dying
                // matrix write it in full).
                assert!(p_got.iter().all(|v| v.is_nan()), "{tag}: P written");
            } else {
                assert_close(&format!("P {tag}"), &p_got, &p_ref, 0.0, 0.0);
            }
            assert_close(&format!("t {tag}"), &c.read(&l.t), &t_ref, 0.0, 0.0);
            // Every policy leaves each row's keep count as P has it (the input-sparse forward's
            // compaction reads them).
            let row_counts: Vec<u32> = (0..rows)
                .map(|r| (0..cols).filter(|&j| p_ref[r * cols + j] != 0.0).count() as u32)
                .collect();
            assert_eq!(
                c.read_u32(&l.row_keep)[..rows],
                row_counts[..],
                "{tag}: row counts"
            );
            let k = c.read_u32(&lk);
            for g in 0..groups {
                let dying = g % 2 == 0;
                assert!(
                    counts[g][0] as usize <= gr * cols / 100 || !dying,
                    "{tag}: setup"
                );
                assert_eq!(
                    acted[g],
                    dying && policy != ResetPolicy::None,
                    "{tag} matrix {g}"
                );
                assert_eq!(
                    [k[4 * g], k[4 * g + 1], k[4 * g + 2]],
                    [counts[g][0], counts[g][1], acted[g] as u32],
                    "{tag} matrix {g} counters"
                );
                if policy == ResetPolicy::Floor && dying {
                    let after = counts[g][1] as usize;
                    assert!(
                        after >= gr && after <= gr * cols / 100 + gr,
                        "{tag}: floor keeps {after}, at least one per row"
                    );
                }
            }
        }
    }
}

/// The weight-gradient product fused with the mask's backward and the weight's SGD step
/// (`gemm_tn_sgd`, CPU adapters) and `threshold_grad` after it, against the f64 reference chain
/// dP = G^T X, (dW, dt) = mask_backward(dP), one SGD step (momentum, with and without weight
/// decay, from a nonzero velocity); the same product on an unmasked weight is dW = G^T X and SGD.
/// Shapes include a column count that is not a multiple of the 8-column blocks (k = 20). The
/// listed form (`tn_k_lists` + `gemm_tn_sgd_listed`, the input's zeros skipped) gives the same
/// bits as the full one, on inputs dense, mostly zero (whole samples and column blocks of zeros
/// among them, as MNIST's borders) and all zero.
#[test]
fn fused_weight_gradient_sgd_matches_reference() {
    use dst::kernels::gemm::{Gemm, SgdTarget};
    use dst::kernels::{GemmVariant, StepInfo};
    let c = ctx();
    let mut rng = Rng::new(77);
    let (lr, momentum, alpha) = (0.05f32, 0.9f32, 5e-3f32);
    c.set_step(StepInfo {
        lr,
        step: 3,
        ..Default::default()
    });
    let shapes = [
        (64, 300, 784, 1.0),
        (64, 300, 784, 0.2),
        (13, 100, 300, 0.3),
        (5, 12, 20, 0.5),
        (64, 4, 12, 1.0),
        (9, 8, 16, 0.0),
    ];
    for &(m, n, k, density) in &shapes {
        for (masked, wd) in [(true, 0.0f32), (true, 5e-4), (false, 0.0), (false, 5e-4)] {
            let tag = format!("{m}x{n}x{k} density {density} masked {masked} wd {wd}");
            let g = rand_vec(&mut rng, m * n, -1.0, 1.0);
            let mut x = rand_vec(&mut rng, m * k, -1.0, 1.0);
            if density < 1.0 {
                let keep = rand_vec(&mut rng, m * k, 0.0, 1.0);
                for (i, xi) in x.iter_mut().enumerate() {
                    let (sample, col) = (i / k, i % k);
                    if keep[i] >= density || sample % 4 == 1 || col / 8 == 1 {
                        *xi = 0.0;
                    }
                }
            }
            let w = rand_vec(&mut rng, n * k, -1.5, 1.5);
            let v = rand_vec(&mut rng, n * k, -0.1, 0.1);
            let t = rand_vec(&mut rng, n, 0.0, 0.5);
            let (gt, xt, tt) = (
                c.tensor("g", &[m, n], &g),
                c.tensor("x", &[m, k], &x),
                c.tensor("t", &[n], &t),
            );
            let mut results = Vec::new();
            // The full product and the listed one and, where the device runs their subgroup
            // forms, their plain forms.
            let mut runs = vec![(false, c.k.clone()), (true, c.k.clone())];
            if let Some(plain) = c.plain_kernels() {
                runs.extend([(false, plain.clone()), (true, plain)]);
            }
            for (listed, kernels) in runs {
                let (wt, vt) = (c.tensor("w", &[n, k], &w), c.tensor("v", &[n, k], &v));
                let parts = c.poisoned("parts", &[n, Gemm::dt_blocks(k)]);
                let (db, dt) = (c.poisoned("db", &[n]), c.poisoned("dt", &[n]));
                let lists = c.poisoned("k lists", &[Gemm::k_list_words(k, m)]);
                let target = SgdTarget {
                    weight: &wt,
                    velocity: &vt,
                    momentum,
                    weight_decay: wd,
                    mask: masked.then_some((&tt, &parts)),
                };
                let fused = kernels
                    .gemm
                    .backward_weight_sgd(
                        &c.gpu,
                        &gt,
                        &xt,
                        &db,
                        &target,
                        listed.then_some(dst::kernels::gemm::KLists::Build(&lists)),
                        &c.step,
                        &kernels.dummy,
                    )
                    .unwrap();
                let Some(mut ds) = fused else {
                    assert_ne!(
                        c.k.gemm.variant,
                        GemmVariant::RegBlock,
                        "{tag}: no fused kernel"
                    );
                    return;
                };
                assert_eq!(ds.len(), 1 + listed as usize, "{tag}: dispatches");
                if masked {
                    ds.push(
                        c.k.masked
                            .threshold_grad(&c.gpu, &tt, &parts, &dt, alpha, &c.k.masked.one)
                            .unwrap(),
                    );
                }
                run_once(&c.gpu, &ds, 0).unwrap();
                if listed {
                    let counts = c.read_u32(&lists);
                    for (blk, &count) in counts.iter().take(Gemm::dt_blocks(k)).enumerate() {
                        let want = (0..m)
                            .filter(|&s| {
                                (blk * 8..(blk * 8 + 8).min(k)).any(|j| x[s * k + j] != 0.0)
                            })
                            .count();
                        assert_eq!(count as usize, want, "{tag}: samples listed in block {blk}");
                    }
                }
                let dt_got = if masked { c.read(&dt) } else { Vec::new() };
                results.push([c.read(&wt), c.read(&vt), c.read(&db), dt_got]);
            }
            for (form, result) in results.iter().enumerate().skip(1) {
                for (what, (full, listed)) in ["weight", "velocity", "db", "dt"]
                    .iter()
                    .zip(results[0].iter().zip(result.iter()))
                {
                    let same = full.len() == listed.len()
                        && full
                            .iter()
                            .zip(listed)
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{tag}: {what} of run {form} (1: the device's listed form; 2, 3: the \
                         plain full and listed forms) differs from the device's full form's"
                    );
                }
            }
            assert_eq!(
                results.len(),
                2 + 2 * c.gpu.subgroups8 as usize,
                "{tag}: runs"
            );
            let [w_got, v_got, db_got, dt_got] = &results[0];
            let (gd, xd, td) = (to_f64(&g), to_f64(&x), to_f64(&t));
            let dp = rgemm::backward_weight(&gd, &xd, m, n, k);
            let (mut p_ref, mut v_ref) = (to_f64(&w), to_f64(&v));
            let dw = if masked {
                let (dw, dt_ref) = reference::mask_backward(&p_ref, &td, &dp, n, k, alpha as f64);
                assert_close_norm(&format!("dt {tag}"), dt_got, &dt_ref, 1e-5);
                dw
            } else {
                dp
            };
            roptim::sgd(
                &mut p_ref,
                &dw,
                &mut v_ref,
                lr as f64,
                momentum as f64,
                wd as f64,
            );
            assert_close_norm(&format!("velocity {tag}"), v_got, &v_ref, 1e-5);
            assert_close_norm(&format!("weight {tag}"), w_got, &p_ref, 1e-5);
            assert_close_norm(
                &format!("bias gradient {tag}"),
                db_got,
                &rgemm::bias_backward(&gd, m, n),
                1e-5,
            );
        }
    }
}

/// Under the floor, a one-matrix mask pass with the recompute dispatch (`PassExtras::recompute`:
/// the second `mask_forward` indirect, its counts written by the floor's reset) gives the same P,
/// thresholds, row and layer counts and penalty as the pass that always recomputes, on a dying
/// matrix (the floor acts: the counts are the template) and on a healthy one (it does not: 0, the
/// second pass costs nothing). Also for a weight whose first pass and reset are one dispatch
/// (`mask_pass_small4`, CPU adapters).
#[test]
fn floor_recompute_runs_only_when_the_floor_acts() {
    let c = ctx();
    let mut rng = Rng::new(23);
    for (rows, cols) in [(7usize, 65usize), (10, 100)] {
        floor_recompute_case(&c, &mut rng, rows, cols);
    }
}

fn floor_recompute_case(c: &Ctx, rng: &mut Rng, rows: usize, cols: usize) {
    use dst::kernels::masked::{PassExtras, PenaltyInto, ResetPolicy, RECOMPUTE_WORDS};
    let w = rand_vec(rng, rows * cols, -1.0, 1.0);
    for (dying, t0) in [(true, 0.995f32), (false, 0.2)] {
        let t = vec![t0; rows];
        let mut results = Vec::new();
        for recompute in [false, true] {
            let l = layer(c, &w, &t, rows, cols);
            let stats = c.tensor("stats", &[4], &[0.0; 4]);
            let lk = if recompute {
                let words = [0u32; RECOMPUTE_WORDS];
                dst::gpu::Tensor {
                    buffer: std::sync::Arc::new(c.gpu.indirect_init("lk", &words).unwrap()),
                    offset: 0,
                    shape: vec![RECOMPUTE_WORDS],
                    label: "lk".into(),
                }
            } else {
                c.tensor_u32("lk", &[4], &[0; 4])
            };
            let ds =
                c.k.masked
                    .mask_pass(
                        &c.gpu,
                        &l.w,
                        &l.t,
                        &l.p,
                        &l.row_keep,
                        &lk,
                        1,
                        ResetPolicy::Floor,
                        PassExtras {
                            recompute,
                            penalty: Some(PenaltyInto {
                                stats: &stats,
                                alpha: 0.5,
                                alpha_scale: &c.k.masked.one,
                            }),
                            ..Default::default()
                        },
                    )
                    .unwrap();
            // The first pass and its reset: one dispatch for a small weight on a CPU adapter.
            let small = c.k.masked.rowwise && cols.is_multiple_of(4);
            assert_eq!(ds.len(), 4 - small as usize);
            let again = &ds[ds.len() - 2];
            assert_eq!(again.indirect.is_some(), recompute);
            run_once(&c.gpu, &ds, 0).unwrap();
            let k = c.read_u32(&lk);
            if recompute {
                let template = &k[7..10];
                assert_eq!(template, &again.workgroups[..], "template");
                let live = if dying { template.to_vec() } else { vec![0; 3] };
                assert_eq!(&k[4..7], &live[..], "dying {dying}: the recompute's counts");
            }
            assert_eq!(k[2], dying as u32, "dying {dying}: the floor acted");
            results.push((
                c.read(&l.p),
                c.read(&l.t),
                c.read_u32(&l.row_keep),
                k[..4].to_vec(),
                c.read(&stats),
            ));
        }
        assert!(
            results[0] == results[1],
            "dying {dying}: recompute changes the pass"
        );
    }
}

/// A small masked layer's weight gradient, the mask's backward and db in one dispatch
/// (`narrow_weight_grad`) against the passes it replaces: on CPU adapters their own three
/// (`Gemm`'s weight gradient, `bias_backward`, `mask_backward`), on every adapter the GPU's two
/// (the 16 x 16 tiled product with its bias gradient, `mask_backward_rows`): dL/dW and db bit for
/// bit (each a chain over the batch in order), dL/dt up to float reassociation; and the f64
/// reference. Shapes: LeNet-300-100's fc3 and fc2, LeNet-5's fc4, rows the vec4 product takes
/// (12), a short batch, more rows than a workgroup's lanes, tiny.
#[test]
fn narrow_weight_grad_equals_the_passes_it_replaces() {
    let c = ctx();
    let m = &c.k.masked;
    let mut rng = Rng::new(31);
    for &(batch, rows, cols) in &[
        (64usize, 10usize, 100usize),
        (64, 100, 300),
        (64, 10, 500),
        (7, 12, 20),
        (13, 70, 8),
        (1, 3, 4),
    ] {
        let tag = format!("{batch}x{rows}x{cols}");
        let w = rand_vec(&mut rng, rows * cols, -1.0, 1.0);
        // Thresholds spread so that Q = |w| - t falls in every piece of the estimator.
        let t = rand_vec(&mut rng, rows, -0.2, 0.8);
        let dy = rand_vec(&mut rng, batch * rows, -1.0, 1.0);
        // The input after a ReLU: a third zeros.
        let x: Vec<f32> = rand_vec(&mut rng, batch * cols, -0.5, 1.0)
            .into_iter()
            .map(|v| v.max(0.0))
            .collect();
        let l = layer(&c, &w, &t, rows, cols);
        let (dyt, xt) = (
            c.tensor("dy", &[batch, rows], &dy),
            c.tensor("x", &[batch, cols], &x),
        );
        assert!(m.narrow_weight_grad_fits(cols, &xt), "{tag}");
        let alpha = 0.3f32;
        let scale = c.tensor("alpha_scale", &[1], &[1.5]);
        let dp = c.poisoned("dp", &[rows, cols]);
        let (dw1, dt1, db1) = (
            c.poisoned("dw1", &[rows, cols]),
            c.poisoned("dt1", &[rows]),
            c.poisoned("db1", &[rows]),
        );
        let (dw2, dt2, db2) = (
            c.poisoned("dw2", &[rows, cols]),
            c.poisoned("dt2", &[rows]),
            c.poisoned("db2", &[rows]),
        );
        let ds = [
            c.k.gemm
                .backward_weight(&c.gpu, &dyt, &xt, &dp, false, &c.k.dummy)
                .unwrap(),
            c.k.gemm.bias_backward(&c.gpu, &dyt, &db1).unwrap(),
            m.mask_backward_scaled(&c.gpu, &l.w, &l.t, &dp, &dw1, &dt1, alpha, &scale)
                .unwrap(),
            m.narrow_weight_grad(
                &c.gpu, &dyt, &xt, &l.w, &l.t, &dw2, &dt2, &db2, alpha, &scale,
            )
            .unwrap(),
        ];
        // The GPU's passes: the 16 x 16 tiled product writing db, then `mask_backward_rows`.
        let (dp3, dw3, dt3, db3) = (
            c.poisoned("dp3", &[rows, cols]),
            c.poisoned("dw3", &[rows, cols]),
            c.poisoned("dt3", &[rows]),
            c.poisoned("db3", &[rows]),
        );
        let mut pw = GemmParams::linear_backward_weight(batch, rows, cols, false);
        pw.bias_grad = 1;
        let gpu_ds = [
            c.k.gemm
                .tiled_db(
                    &c.gpu,
                    TiledForm::Tiled,
                    pw,
                    &dyt,
                    &xt,
                    &c.k.dummy,
                    &dp3,
                    &db3,
                )
                .unwrap(),
            m.mask_backward_with(false, &c.gpu, [&l.w, &l.t, &dp3, &dw3, &dt3], alpha, &scale)
                .unwrap(),
        ];
        assert_eq!(gpu_ds[1].label, "masked.mask_backward_rows");
        run_once(&c.gpu, &ds, 0).unwrap();
        run_once(&c.gpu, &gpu_ds, 0).unwrap();
        let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let mut passes = vec![("GPU", &dw3, &dt3, &db3)];
        if c.k.gemm.variant == GemmVariant::RegBlock {
            passes.push(("CPU", &dw1, &dt1, &db1));
        }
        for (class, dw, dt, db) in passes {
            assert_eq!(
                bits(c.read(&dw2)),
                bits(c.read(dw)),
                "{tag}: dL/dW ({class})"
            );
            assert_eq!(bits(c.read(&db2)), bits(c.read(db)), "{tag}: db ({class})");
            assert_close_norm(
                &format!("dL/dt {tag} ({class})"),
                &c.read(&dt2),
                &to_f64(&c.read(dt)),
                1e-6,
            );
        }
        // The f64 reference: dP = dy^T x, the mask's backward (penalty alpha x 1.5), db.
        let (wd, td, dyd, xd) = (to_f64(&w), to_f64(&t), to_f64(&dy), to_f64(&x));
        let dp_ref = rgemm::backward_weight(&dyd, &xd, batch, rows, cols);
        let (dw_ref, dt_ref) =
            reference::mask_backward(&wd, &td, &dp_ref, rows, cols, alpha as f64 * 1.5);
        assert_close_norm(
            &format!("dL/dW {tag} (reference)"),
            &c.read(&dw2),
            &dw_ref,
            1e-5,
        );
        assert_close_norm(
            &format!("dL/dt {tag} (reference)"),
            &c.read(&dt2),
            &dt_ref,
            1e-5,
        );
        assert_close_norm(
            &format!("db {tag} (reference)"),
            &c.read(&db2),
            &rgemm::bias_backward(&dyd, batch, rows),
            1e-5,
        );
    }
}
