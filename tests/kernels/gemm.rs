use dst::gpu::Tensor;
use dst::kernels::gemm::{tiled_form, Gemm, GemmParams, TiledForm};
use dst::kernels::{run_once, GemmVariant};
use dst::reference::gemm as reference;
use dst::rng::Rng;

use crate::common::*;

/// Shapes that are not tile multiples, including the LeNet-300-100 ones.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (3, 7, 5),
    (7, 65, 3),
    (65, 3, 300),
    (64, 300, 784),
    (13, 100, 300),
    (64, 10, 100),
];

/// f32 GEMM tolerance: 1e-5 of the reference's largest magnitude (sums of up to 784 products).
const TOL: f64 = 1e-5;

/// The host values of a product check: x, w, the optional bias, g.
type Operands<'a> = (&'a [f32], &'a [f32], Option<&'a [f32]>, &'a [f32]);

/// Checks y = x w^T (+ b), dx = g w and dw = g^T x read back from the GPU against the reference.
#[allow(clippy::too_many_arguments)]
fn assert_products(
    c: &Ctx,
    tag: &str,
    (m, n, k): (usize, usize, usize),
    (x, w, b, g): Operands<'_>,
    y: &Tensor,
    dx: &Tensor,
    dw: &Tensor,
) {
    let (xd, wd, gd) = (to_f64(x), to_f64(w), to_f64(g));
    let bd = b.map(to_f64);
    let checks = [
        (
            "forward",
            y,
            reference::forward(&xd, &wd, bd.as_deref(), m, n, k),
        ),
        (
            "backward_input",
            dx,
            reference::backward_input(&gd, &wd, m, n, k),
        ),
        (
            "backward_weight",
            dw,
            reference::backward_weight(&gd, &xd, m, n, k),
        ),
    ];
    for (what, t, want) in checks {
        assert_close_norm(&format!("{what} {tag}"), &c.read(t), &want, TOL);
    }
}

fn check_linear(variant: GemmVariant) {
    check_linear_shapes(variant, SHAPES);
}

fn check_linear_shapes(variant: GemmVariant, shapes: &[(usize, usize, usize)]) {
    let c = ctx();
    let mut rng = Rng::new(7);
    for &(m, n, k) in shapes {
        let x = rand_vec(&mut rng, m * k, -1.0, 1.0);
        let w = rand_vec(&mut rng, n * k, -1.0, 1.0);
        let b = rand_vec(&mut rng, n, -1.0, 1.0);
        let g = rand_vec(&mut rng, m * n, -1.0, 1.0);
        let (xt, wt, bt, gt) = (
            c.tensor("x", &[m, k], &x),
            c.tensor("w", &[n, k], &w),
            c.tensor("b", &[n], &b),
            c.tensor("g", &[m, n], &g),
        );
        let gd = to_f64(&g);
        let y = c.poisoned("y", &[m, n]);
        let dx = c.poisoned("dx", &[m, k]);
        let dw = c.poisoned("dw", &[n, k]);
        let db = c.poisoned("db", &[n]);
        let gemm = &c.k.gemm;
        let pf = GemmParams::linear_forward(m, n, k, true);
        let pi = GemmParams::linear_backward_input(m, n, k, false);
        let pw = GemmParams::linear_backward_weight(m, n, k, false);
        let ds = [
            gemm.matmul(&c.gpu, variant, pf, &xt, &wt, &bt, &y).unwrap(),
            gemm.matmul(&c.gpu, variant, pi, &gt, &wt, &c.k.dummy, &dx)
                .unwrap(),
            gemm.matmul(&c.gpu, variant, pw, &gt, &xt, &c.k.dummy, &dw)
                .unwrap(),
            gemm.bias_backward_with(&c.gpu, variant, &gt, &db).unwrap(),
        ];
        if variant == GemmVariant::RegBlock {
            // The vec4 fast paths are taken exactly when the sizes allow them; otherwise a
            // product with fewer than 64 output columns takes gemm_small.
            let expect = |ok: bool, fast: &str, out_cols: usize| {
                if ok {
                    format!("gemm.{fast}")
                } else if out_cols < 64 {
                    "gemm.gemm_small".to_string()
                } else {
                    "gemm.gemm_regblock".to_string()
                }
            };
            // With 8-lane subgroups, a forward of at most `Gemm::NARROW` columns takes their
            // narrow form.
            let narrow = c.gpu.subgroups8 && n as u32 <= Gemm::NARROW;
            let nt = match (narrow, c.gpu.subgroups8) {
                (true, _) => "gemm_nt_narrow_sg",
                (false, true) => "gemm_nt_vec4_sg",
                (false, false) => "gemm_nt_vec4",
            };
            assert_eq!(
                ds[0].label,
                expect(k % 4 == 0, nt, n),
                "forward m{m} n{n} k{k}"
            );
            // With 8-lane subgroups, the product to the input and the weight gradient take
            // their subgroup forms.
            let (nn, tn) = if c.gpu.subgroups8 {
                ("gemm_nn_vec4_sg", "gemm_tn_vec4_sg")
            } else {
                ("gemm_nn_vec4", "gemm_tn_vec4")
            };
            assert_eq!(
                ds[1].label,
                expect(n % 4 == 0 && k % 4 == 0, nn, k),
                "backward_input m{m} n{n} k{k}"
            );
            assert_eq!(
                ds[2].label,
                expect(n % 4 == 0 && k % 4 == 0, tn, k),
                "backward_weight m{m} n{n} k{k}"
            );
        }
        if variant == GemmVariant::Tiled {
            // k split four ways exactly where the shape has few output tiles and a long k, 2 x 2
            // outputs per invocation where it has many.
            for (d, p, what) in [
                (&ds[0], pf, "forward"),
                (&ds[1], pi, "backward_input"),
                (&ds[2], pw, "backward_weight"),
            ] {
                let tiles16 = p.m.div_ceil(16) * p.n.div_ceil(16);
                let (want, label) = if tiles16 < 256 && p.k >= 64 {
                    (TiledForm::SplitK, "gemm.gemm_tiled_split")
                } else if p.m.div_ceil(32) * p.n.div_ceil(32) >= 256 {
                    (TiledForm::TwoByTwo, "gemm.gemm_tiled_2x2")
                } else {
                    (TiledForm::Tiled, "gemm.gemm_tiled")
                };
                assert_eq!(tiled_form(&p), want, "{what} m{m} n{n} k{k}");
                assert_eq!(d.label, label, "{what} m{m} n{n} k{k}");
            }
        }
        run_once(&c.gpu, &ds, 0).unwrap();
        let tag = format!("{variant:?} m{m} n{n} k{k}");
        assert_products(&c, &tag, (m, n, k), (&x, &w, Some(&b), &g), &y, &dx, &dw);
        // The three products' subgroup forms give the plain forms' bits.
        let y_got = c.read(&y);
        c.plain_forms_agree(
            &format!("forward {tag}"),
            |k| {
                vec![k
                    .gemm
                    .matmul(&c.gpu, variant, pf, &xt, &wt, &bt, &y)
                    .unwrap()]
            },
            &y,
            &y_got,
        );
        let dx_got = c.read(&dx);
        c.plain_forms_agree(
            &format!("backward_input {tag}"),
            |k| {
                vec![k
                    .gemm
                    .matmul(&c.gpu, variant, pi, &gt, &wt, &c.k.dummy, &dx)
                    .unwrap()]
            },
            &dx,
            &dx_got,
        );
        let dw_got = c.read(&dw);
        c.plain_forms_agree(
            &format!("backward_weight {tag}"),
            |k| {
                vec![k
                    .gemm
                    .matmul(&c.gpu, variant, pw, &gt, &xt, &c.k.dummy, &dw)
                    .unwrap()]
            },
            &dw,
            &dw_got,
        );
        assert_close_norm(
            &format!("bias_backward {tag}"),
            &c.read(&db),
            &reference::bias_backward(&gd, m, n),
            TOL,
        );
    }
}

#[test]
fn gemm_regblock_matches_reference() {
    check_linear(GemmVariant::RegBlock);
}

/// The vec4 fast paths of the CPU variant on shapes that take them (multiples of 4, odd row
/// counts, more than one 8x8 block per axis, a partial last block).
#[test]
fn gemm_vec4_paths_match_reference() {
    check_linear_shapes(
        GemmVariant::RegBlock,
        &[
            (4, 4, 4),
            (5, 12, 8),
            (64, 300, 784),
            (33, 100, 300),
            (9, 20, 44),
            // A classifier's 10 outputs (the narrow form: rows past the last group of 8 too).
            (64, 10, 100),
            (13, 10, 84),
            (6, 1, 8),
        ],
    );
}

/// The generic scalar kernel on every shape, bound directly (the registry prefers vec4 paths).
#[test]
fn gemm_regblock_generic_matches_reference() {
    let c = ctx();
    let mut rng = Rng::new(9);
    for &(m, n, k) in SHAPES.iter().chain(&[(8, 8, 8), (64, 100, 300)]) {
        let x = rand_vec(&mut rng, m * k, -1.0, 1.0);
        let w = rand_vec(&mut rng, n * k, -1.0, 1.0);
        let g = rand_vec(&mut rng, m * n, -1.0, 1.0);
        let (xt, wt, gt) = (
            c.tensor("x", &[m, k], &x),
            c.tensor("w", &[n, k], &w),
            c.tensor("g", &[m, n], &g),
        );
        let (y, dx, dw) = (
            c.poisoned("y", &[m, n]),
            c.poisoned("dx", &[m, k]),
            c.poisoned("dw", &[n, k]),
        );
        let groups = |p: &GemmParams| [p.n.div_ceil(64), p.m.div_ceil(64), 1];
        let r = &c.k.gemm.regblock;
        let pf = GemmParams::linear_forward(m, n, k, false);
        let pi = GemmParams::linear_backward_input(m, n, k, false);
        let pw = GemmParams::linear_backward_weight(m, n, k, false);
        let ds = [
            r.bind(&c.gpu, &pf, &[&xt, &wt, &c.k.dummy, &y], None, groups(&pf))
                .unwrap(),
            r.bind(&c.gpu, &pi, &[&gt, &wt, &c.k.dummy, &dx], None, groups(&pi))
                .unwrap(),
            r.bind(&c.gpu, &pw, &[&gt, &xt, &c.k.dummy, &dw], None, groups(&pw))
                .unwrap(),
        ];
        run_once(&c.gpu, &ds, 0).unwrap();
        let tag = format!("generic m{m} n{n} k{k}");
        assert_products(&c, &tag, (m, n, k), (&x, &w, None, &g), &y, &dx, &dw);
    }
}

/// The GPU product on every shape, plus one whose forward has 289 output tiles of 32 x 32 (the
/// 2 x 2 form).
#[test]
fn gemm_tiled_matches_reference() {
    check_linear(GemmVariant::Tiled);
    check_linear_shapes(GemmVariant::Tiled, &[(520, 520, 37)]);
}

/// Every GPU form bound directly on every shape, with and without a bias, ReLU or accumulation:
/// `gemm_tiled`, `gemm_tiled_split` (k split four ways; k shorter than four slices leaves layers
/// of invocations without any, k not a multiple of the slice ends a layer early) and
/// `gemm_tiled_2x2` (32 x 32 outputs per workgroup; shapes that end inside a tile, in either half
/// of it), which gives `gemm_tiled`'s bits.
#[test]
fn gemm_tiled_forms_match_reference() {
    let c = ctx();
    let mut rng = Rng::new(11);
    let shapes = SHAPES.iter().chain(&[
        (8, 8, 8),
        (64, 500, 800),
        (9, 20, 129),
        (16, 16, 257),
        (40, 33, 70),
        (100, 130, 31),
    ]);
    for &(m, n, k) in shapes {
        let x = rand_vec(&mut rng, m * k, -1.0, 1.0);
        let w = rand_vec(&mut rng, n * k, -1.0, 1.0);
        let b = rand_vec(&mut rng, n, -1.0, 1.0);
        let g = rand_vec(&mut rng, m * n, -1.0, 1.0);
        let (xt, wt, bt, gt) = (
            c.tensor("x", &[m, k], &x),
            c.tensor("w", &[n, k], &w),
            c.tensor("b", &[n], &b),
            c.tensor("g", &[m, n], &g),
        );
        let (xd, wd, gd) = (to_f64(&x), to_f64(&w), to_f64(&g));
        let y_ref: Vec<f64> = reference::forward(&xd, &wd, Some(&to_f64(&b)), m, n, k)
            .iter()
            .map(|v| v.max(0.0))
            .collect();
        let dx_ref: Vec<f64> = reference::backward_input(&gd, &wd, m, n, k)
            .iter()
            .map(|v| v + 0.5)
            .collect();
        let dw_ref = reference::backward_weight(&gd, &xd, m, n, k);
        let mut outputs = Vec::new();
        for form in TiledForm::ALL {
            let (y, dx) = (
                c.poisoned("y", &[m, n]),
                c.tensor("dx", &[m, k], &vec![0.5; m * k]),
            );
            let dw = c.poisoned("dw", &[n, k]);
            let gemm = &c.k.gemm;
            let mut pf = GemmParams::linear_forward(m, n, k, true);
            pf.relu = 1;
            let pi = GemmParams::linear_backward_input(m, n, k, true);
            let pw = GemmParams::linear_backward_weight(m, n, k, false);
            let ds = [
                gemm.tiled_with(&c.gpu, form, pf, &xt, &wt, &bt, &y)
                    .unwrap(),
                gemm.tiled_with(&c.gpu, form, pi, &gt, &wt, &c.k.dummy, &dx)
                    .unwrap(),
                gemm.tiled_with(&c.gpu, form, pw, &gt, &xt, &c.k.dummy, &dw)
                    .unwrap(),
            ];
            run_once(&c.gpu, &ds, 0).unwrap();
            let tag = format!("{form:?} m{m} n{n} k{k}");
            let got = [c.read(&y), c.read(&dx), c.read(&dw)];
            assert_close_norm(&format!("forward+relu {tag}"), &got[0], &y_ref, TOL);
            assert_close_norm(&format!("backward_input+acc {tag}"), &got[1], &dx_ref, TOL);
            assert_close_norm(&format!("backward_weight {tag}"), &got[2], &dw_ref, TOL);
            outputs.push(got.map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()));
        }
        assert!(
            outputs[2] == outputs[0],
            "m{m} n{n} k{k}: gemm_tiled_2x2 and gemm_tiled differ in their bits"
        );
    }
}

/// The registry's typed wrappers (default variant) and accumulation into an existing output.
#[test]
fn gemm_wrappers_and_accumulate() {
    let c = ctx();
    let mut rng = Rng::new(11);
    let (m, n, k) = (9, 17, 33);
    let g = rand_vec(&mut rng, m * n, -1.0, 1.0);
    let x = rand_vec(&mut rng, m * k, -1.0, 1.0);
    let w = rand_vec(&mut rng, n * k, -1.0, 1.0);
    let prior = rand_vec(&mut rng, n * k, -1.0, 1.0);
    let (gt, xt, wt) = (
        c.tensor("g", &[m, n], &g),
        c.tensor("x", &[m, k], &x),
        c.tensor("w", &[n, k], &w),
    );
    let dw = c.tensor("dw", &[n, k], &prior);
    let y = c.poisoned("y", &[m, n]);
    let ds = [
        c.k.gemm
            .backward_weight(&c.gpu, &gt, &xt, &dw, true, &c.k.dummy)
            .unwrap(),
        c.k.gemm
            .forward(&c.gpu, &xt, &wt, None, &y, &c.k.dummy)
            .unwrap(),
    ];
    run_once(&c.gpu, &ds, 0).unwrap();
    let mut want = to_f64(&prior);
    for (o, d) in want.iter_mut().zip(reference::backward_weight(
        &to_f64(&g),
        &to_f64(&x),
        m,
        n,
        k,
    )) {
        *o += d;
    }
    assert_close_norm("backward_weight accumulate", &c.read(&dw), &want, TOL);
    assert_close_norm(
        "forward without bias",
        &c.read(&y),
        &reference::forward(&to_f64(&x), &to_f64(&w), None, m, n, k),
        TOL,
    );
}

/// The products of a masked linear layer, whose P is stored transposed (`forward_t`,
/// `backward_input_t`), and the weight and bias gradients in one call (`backward_weight_bias`:
/// one dispatch on GPUs and where the vec4 weight-gradient form applies, else two), against the
/// reference.
#[test]
fn transposed_weight_products_and_fused_bias_gradient_match_reference() {
    let c = ctx();
    let mut rng = Rng::new(41);
    for &(m, n, k) in SHAPES {
        let x = rand_vec(&mut rng, m * k, -1.0, 1.0);
        let w = rand_vec(&mut rng, n * k, -1.0, 1.0);
        let b = rand_vec(&mut rng, n, -1.0, 1.0);
        let g = rand_vec(&mut rng, m * n, -1.0, 1.0);
        let wt: Vec<f32> = (0..n * k).map(|i| w[(i % n) * k + i / n]).collect(); // k x n
        let (xt, wtt, bt, gt) = (
            c.tensor("x", &[m, k], &x),
            c.tensor("wt", &[k, n], &wt),
            c.tensor("b", &[n], &b),
            c.tensor("g", &[m, n], &g),
        );
        let (y, dx, dw, db) = (
            c.poisoned("y", &[m, n]),
            c.poisoned("dx", &[m, k]),
            c.poisoned("dw", &[n, k]),
            c.poisoned("db", &[n]),
        );
        let gemm = &c.k.gemm;
        let mut ds = vec![
            gemm.forward_t(&c.gpu, &xt, &wtt, Some(&bt), &y, &c.k.dummy)
                .unwrap(),
            gemm.backward_input_t(&c.gpu, &gt, &wtt, &dx, false, &c.k.dummy)
                .unwrap(),
        ];
        let wb = gemm
            .backward_weight_bias(&c.gpu, &gt, &xt, &dw, &db, &c.k.dummy)
            .unwrap();
        // The GPU forms write db in the product's dispatch whatever the shape.
        let fused = gemm.variant == GemmVariant::Tiled || (n % 4 == 0 && k % 4 == 0);
        assert_eq!(wb.len(), if fused { 1 } else { 2 }, "{m}x{n}x{k}");
        ds.extend(wb);
        run_once(&c.gpu, &ds, 0).unwrap();
        let tag = format!("m{m} n{n} k{k}");
        assert_products(&c, &tag, (m, n, k), (&x, &w, Some(&b), &g), &y, &dx, &dw);
        let db_got = c.read(&db);
        assert_close_norm(
            &format!("bias gradient {tag}"),
            &db_got,
            &reference::bias_backward(&to_f64(&g), m, n),
            TOL,
        );
        // The subgroup form of the fused weight and bias gradients gives the plain form's bits.
        let dw_got = c.read(&dw);
        let plain = |k: &dst::kernels::Kernels| {
            k.gemm
                .backward_weight_bias(&c.gpu, &gt, &xt, &dw, &db, &c.k.dummy)
                .unwrap()
        };
        c.plain_forms_agree(&format!("dw, fused {tag}"), plain, &dw, &dw_got);
        c.plain_forms_agree(&format!("db, fused {tag}"), plain, &db, &db_got);
    }
}

/// The GPU weight-gradient products write the bias gradient in the same dispatch
/// (`backward_weight_bias_with` on `Tiled`, `bias_grad` set): one dispatch on each tiled form,
/// dw with the bits of the product alone, db against the f64 reference; and with `bias_grad`
/// off, the forms leave the bias buffer alone.
#[test]
fn tiled_weight_gradients_write_the_bias_gradient_in_the_same_dispatch() {
    let c = ctx();
    let mut rng = Rng::new(43);
    // (batch m, out n, in k): the product is n x k over the batch.
    let shapes = [
        ((64, 300, 784), TiledForm::Tiled),
        ((37, 300, 784), TiledForm::Tiled),
        ((64, 100, 300), TiledForm::SplitK),
        ((130, 13, 45), TiledForm::SplitK),
        ((70, 530, 523), TiledForm::TwoByTwo),
    ];
    for ((m, n, k), form) in shapes {
        let tag = format!("m{m} n{n} k{k} {form:?}");
        let x = rand_vec(&mut rng, m * k, -1.0, 1.0);
        let g = rand_vec(&mut rng, m * n, -1.0, 1.0);
        let (xt, gt) = (c.tensor("x", &[m, k], &x), c.tensor("g", &[m, n], &g));
        let (dw, db) = (c.poisoned("dw", &[n, k]), c.poisoned("db", &[n]));
        let (dw_alone, db_untouched) = (c.poisoned("dw alone", &[n, k]), c.poisoned("db", &[n]));
        let gemm = &c.k.gemm;
        let fused = gemm
            .backward_weight_bias_with(&c.gpu, GemmVariant::Tiled, &gt, &xt, &dw, &db, &c.k.dummy)
            .unwrap();
        let pw = GemmParams::linear_backward_weight(m, n, k, false);
        assert_eq!(tiled_form(&pw), form, "{tag}");
        let label = match form {
            TiledForm::Tiled => "gemm.gemm_tiled",
            TiledForm::SplitK => "gemm.gemm_tiled_split",
            TiledForm::TwoByTwo => "gemm.gemm_tiled_2x2",
        };
        assert_eq!(fused.len(), 1, "{tag}: one dispatch");
        assert_eq!(fused[0].label, label, "{tag}");
        let alone = gemm
            .matmul(
                &c.gpu,
                GemmVariant::Tiled,
                pw,
                &gt,
                &xt,
                &c.k.dummy,
                &dw_alone,
            )
            .unwrap();
        run_once(&c.gpu, &[fused[0].clone(), alone], 0).unwrap();
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        assert!(
            bits(c.read(&dw)) == bits(c.read(&dw_alone)),
            "{tag}: dw differs from the product alone"
        );
        let (gd, xd) = (to_f64(&g), to_f64(&x));
        assert_close_norm(
            &format!("dw {tag}"),
            &c.read(&dw),
            &reference::backward_weight(&gd, &xd, m, n, k),
            TOL,
        );
        assert_close_norm(
            &format!("db {tag}"),
            &c.read(&db),
            &reference::bias_backward(&gd, m, n),
            TOL,
        );
        // Each db element is one chain over the batch in order (by quarters in the split form):
        // exactly the f32 sums computed here the same way.
        let (parts, per) = match form {
            TiledForm::SplitK => (4, m.div_ceil(32).div_ceil(4) * 32),
            _ => (1, m),
        };
        let quarters: Vec<_> = (0..parts)
            .map(|z| (z * per).min(m)..((z + 1) * per).min(m))
            .collect();
        let want: Vec<u32> = (0..n)
            .map(|j| {
                let parts = quarters
                    .iter()
                    .map(|r| r.clone().fold(0.0f32, |s, i| s + g[i * n + j]));
                parts.reduce(|a, b| a + b).unwrap().to_bits()
            })
            .collect();
        assert!(
            bits(c.read(&db)) == want,
            "{tag}: db is not the sum in order"
        );
        // Without `bias_grad`, the product writes no bias gradient.
        let before = bits(c.read(&db_untouched));
        run_once(
            &c.gpu,
            &[gemm
                .tiled_with(&c.gpu, form, pw, &gt, &xt, &c.k.dummy, &dw_alone)
                .unwrap()],
            0,
        )
        .unwrap();
        assert!(bits(c.read(&db_untouched)) == before, "{tag}: db written");
    }
}

/// The product to the input with the previous layer's ReLU backward in its store
/// (`backward_input_gated`): the same bits as `backward_input` (or `_t`) followed by
/// `relu_backward`, on the vec4 shapes and on ones only the general kernels take (fc3's 10
/// outputs), against the f64 reference of dx = (g w) * [relu_out > 0].
#[test]
fn gated_input_gradient_equals_product_then_relu_backward() {
    let c = ctx();
    let mut rng = Rng::new(41);
    for &(m, n, k) in &[(64, 100, 300), (64, 10, 100), (5, 7, 9), (64, 300, 784)] {
        for transposed in [false, true] {
            let tag = format!("{m}x{n}x{k} transposed {transposed}");
            let g = rand_vec(&mut rng, m * n, -1.0, 1.0);
            let w = rand_vec(&mut rng, n * k, -1.0, 1.0);
            // A ReLU output: about half zeros.
            let r: Vec<f32> = rand_vec(&mut rng, m * k, -1.0, 1.0)
                .into_iter()
                .map(|v| v.max(0.0))
                .collect();
            let w_stored = if transposed {
                transpose(&w, n, k)
            } else {
                w.clone()
            };
            let shape = if transposed { [k, n] } else { [n, k] };
            let (gt, wt, rt) = (
                c.tensor("g", &[m, n], &g),
                c.tensor("w", &shape, &w_stored),
                c.tensor("relu_out", &[m, k], &r),
            );
            let (gated, plain, masked) = (
                c.poisoned("gated", &[m, k]),
                c.poisoned("plain", &[m, k]),
                c.poisoned("masked", &[m, k]),
            );
            let gemm = &c.k.gemm;
            let product = if transposed {
                gemm.backward_input_t(&c.gpu, &gt, &wt, &plain, false, &c.k.dummy)
            } else {
                gemm.backward_input(&c.gpu, &gt, &wt, &plain, false, &c.k.dummy)
            };
            let ds = [
                gemm.backward_input_gated(&c.gpu, &gt, &wt, transposed, &rt, &gated)
                    .unwrap(),
                product.unwrap(),
                c.k.act.relu_backward(&c.gpu, &plain, &rt, &masked).unwrap(),
            ];
            run_once(&c.gpu, &ds, 0).unwrap();
            let (got, want) = (c.read(&gated), c.read(&masked));
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{tag}: not the bits of the product then relu_backward"
            );
            let mut want64 = reference::backward_input(&to_f64(&g), &to_f64(&w), m, n, k);
            for (v, &ri) in want64.iter_mut().zip(&r) {
                if ri <= 0.0 {
                    *v = 0.0;
                }
            }
            assert_close_norm(&tag, &got, &want64, TOL);
        }
    }
}

/// `v` (rows x cols, row-major) transposed.
fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| v[(i % rows) * cols + i / rows])
        .collect()
}
