use dst::gpu::AdapterClass;
use dst::kernels::conv::{ConvShape, ConvVariant};
use dst::kernels::{run_once, Kernels};
use dst::reference::{conv as reference, masked as rmasked};
use dst::rng::Rng;
use serde_json::Value;

use crate::common::*;
use crate::masked::{flat, smooth_step};

/// f32 products: 1e-5 of the reference's largest magnitude.
const TOL: f64 = 1e-5;

#[allow(clippy::too_many_arguments)]
const fn shape(
    batch: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    (kh, kw): (usize, usize),
    stride: usize,
    pad: usize,
) -> ConvShape {
    ConvShape {
        batch,
        c_in,
        h,
        w,
        c_out,
        kh,
        kw,
        stride,
        pad,
    }
}

/// Odd sizes, non-square inputs and kernels, padding 0/1/2, stride 1/2, kernel 1/3/5, batch 1 and
/// 3, channels 1/3/7, stride 3, rows wider than one 8-column block, more than one 64-wide tile and
/// partial register blocks on every axis.
const SHAPES: &[ConvShape] = &[
    shape(1, 1, 5, 5, 1, (1, 1), 1, 0),
    shape(3, 3, 7, 5, 7, (3, 3), 1, 1),
    shape(1, 7, 9, 6, 3, (5, 5), 2, 2),
    shape(3, 3, 8, 7, 1, (3, 3), 2, 0),
    shape(1, 1, 4, 4, 3, (3, 3), 1, 2),
    shape(3, 7, 11, 13, 7, (5, 5), 1, 0),
    shape(1, 3, 6, 7, 5, (1, 3), 2, 1),
    shape(3, 1, 5, 9, 7, (3, 1), 1, 0),
    shape(1, 3, 7, 7, 7, (1, 1), 2, 0),
    shape(2, 3, 10, 9, 70, (3, 3), 1, 1),
    shape(3, 20, 12, 12, 50, (5, 5), 1, 0),
    shape(1, 2, 11, 10, 3, (4, 2), 3, 1),
    shape(2, 3, 5, 20, 5, (3, 3), 1, 1),
    shape(1, 1, 3, 17, 2, (2, 5), 2, 2),
];

/// x, weight, optional bias, dy.
type Inputs<'a> = (&'a [f32], &'a [f32], Option<&'a [f32]>, &'a [f32]);

struct Run {
    y: Vec<f32>,
    dx: Vec<f32>,
    dw: Vec<f32>,
    db: Vec<f32>,
}

/// Runs the four entry points of `variant` on fresh NaN-poisoned outputs.
fn run_conv(c: &Ctx, variant: ConvVariant, s: &ConvShape, (x, w, b, gy): Inputs<'_>) -> Run {
    let (oh, ow) = (s.out_h(), s.out_w());
    let xt = c.tensor("x", &[s.batch, s.c_in, s.h, s.w], x);
    let wt = c.tensor("w", &[s.c_out, s.cols()], w);
    let bt = b.map(|b| c.tensor("b", &[s.c_out], b));
    let gt = c.tensor("gy", &[s.batch, s.c_out, oh, ow], gy);
    let y = c.poisoned("y", &[s.batch, s.c_out, oh, ow]);
    let dx = c.poisoned("dx", &[s.batch, s.c_in, s.h, s.w]);
    let dw = c.poisoned("dw", &[s.c_out, s.cols()]);
    let db = c.poisoned("db", &[s.c_out]);
    let k = &c.k.conv;
    let ds = [
        k.forward_with(variant, &c.gpu, s, &xt, &wt, bt.as_ref(), &y, &c.k.dummy)
            .unwrap(),
        k.backward_input_with(variant, &c.gpu, s, &gt, &wt, &dx)
            .unwrap(),
        k.backward_weight_with(variant, &c.gpu, s, &gt, &xt, &dw)
            .unwrap(),
        k.bias_backward(&c.gpu, s, &gt, &db).unwrap(),
    ];
    let names = match variant {
        ConvVariant::RegBlock => [
            "forward_regblock",
            "backward_input_regblock",
            "backward_weight_regblock",
        ],
        ConvVariant::Tiled => [
            "forward_tiled",
            "backward_input_tiled",
            "backward_weight_split",
        ],
    };
    for (d, n) in ds.iter().zip(names) {
        assert_eq!(d.label, format!("conv.conv_{n}"), "{variant:?}");
    }
    run_once(&c.gpu, &ds, 0).unwrap();
    Run {
        y: c.read(&y),
        dx: c.read(&dx),
        dw: c.read(&dw),
        db: c.read(&db),
    }
}

fn check_variant(variant: ConvVariant) {
    let c = ctx();
    let mut rng = Rng::new(31);
    for (i, s) in SHAPES.iter().enumerate() {
        let x = rand_vec(&mut rng, s.batch * s.c_in * s.h * s.w, -1.0, 1.0);
        let w = rand_vec(&mut rng, s.c_out * s.cols(), -1.0, 1.0);
        let b = rand_vec(&mut rng, s.c_out, -1.0, 1.0);
        let gy = rand_vec(
            &mut rng,
            s.batch * s.c_out * s.out_h() * s.out_w(),
            -1.0,
            1.0,
        );
        // Every other shape without a bias.
        let with_bias = i % 2 == 0;
        let r = run_conv(&c, variant, s, (&x, &w, with_bias.then_some(&b[..]), &gy));
        let (xd, wd, bd, gd) = (to_f64(&x), to_f64(&w), to_f64(&b), to_f64(&gy));
        let tag = format!("{variant:?} {s:?}");
        let bias = with_bias.then_some(&bd[..]);
        assert_close_norm(
            &format!("forward {tag}"),
            &r.y,
            &reference::forward(s, &xd, &wd, bias),
            TOL,
        );
        assert_close_norm(
            &format!("backward_input {tag}"),
            &r.dx,
            &reference::backward_input(s, &gd, &wd),
            TOL,
        );
        assert_close_norm(
            &format!("backward_weight {tag}"),
            &r.dw,
            &reference::backward_weight(s, &gd, &xd),
            TOL,
        );
        assert_close_norm(
            &format!("bias_backward {tag}"),
            &r.db,
            &reference::bias_backward(s, &gd),
            TOL,
        );
    }
}

/// The GPU weight and bias gradients in both widths (a workgroup of 64 or 256 invocations per
/// sum), bound directly, also with the bias gradient written by the weight gradient's dispatch
/// (dw the same bits), on every shape and on one with more than 8,192 positions per sum (which
/// the Tiled variant gives the wide form).
#[test]
fn conv_gradient_sums_in_both_widths_match_reference() {
    let c = ctx();
    let mut rng = Rng::new(37);
    let long = shape(10, 2, 30, 30, 3, (3, 3), 1, 1);
    assert!(dst::kernels::conv::wide_sums(&long));
    for (s, wide) in SHAPES
        .iter()
        .chain([&long])
        .flat_map(|s| [(s, false), (s, true)])
    {
        let x = rand_vec(&mut rng, s.batch * s.c_in * s.h * s.w, -1.0, 1.0);
        let gy = rand_vec(
            &mut rng,
            s.batch * s.c_out * s.out_h() * s.out_w(),
            -1.0,
            1.0,
        );
        let xt = c.tensor("x", &[s.batch, s.c_in, s.h, s.w], &x);
        let gt = c.tensor("gy", &[s.batch, s.c_out, s.out_h(), s.out_w()], &gy);
        let dw = c.poisoned("dw", &[s.c_out, s.cols()]);
        let db = c.poisoned("db", &[s.c_out]);
        // The same product writing the bias gradient too (GPUs' `backward_weight_bias`).
        let (dw2, db2) = (
            c.poisoned("dw2", &[s.c_out, s.cols()]),
            c.poisoned("db2", &[s.c_out]),
        );
        let k = &c.k.conv;
        let ds = [
            k.backward_weight_reduction(&c.gpu, wide, s, &gt, &xt, &dw, None)
                .unwrap(),
            k.bias_backward_with(&c.gpu, wide, s, &gt, &db).unwrap(),
            k.backward_weight_reduction(&c.gpu, wide, s, &gt, &xt, &dw2, Some(&db2))
                .unwrap(),
        ];
        run_once(&c.gpu, &ds, 0).unwrap();
        let (xd, gd) = (to_f64(&x), to_f64(&gy));
        let tag = format!("wide={wide} {s:?}");
        assert_close_norm(
            &format!("backward_weight {tag}"),
            &c.read(&dw),
            &reference::backward_weight(s, &gd, &xd),
            TOL,
        );
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        assert!(
            bits(c.read(&dw2)) == bits(c.read(&dw)),
            "{tag}: dw with the bias gradient differs"
        );
        for (what, got) in [
            ("bias_backward", &db),
            ("bias with the weight gradient", &db2),
        ] {
            assert_close_norm(
                &format!("{what} {tag}"),
                &c.read(got),
                &reference::bias_backward(s, &gd),
                TOL,
            );
        }
    }
    // The Tiled variant takes the wide form exactly for long sums.
    let (xt, gt) = (
        c.tensor(
            "x",
            &[long.batch * long.c_in * long.h * long.w],
            &vec![0.0; long.batch * long.c_in * long.h * long.w],
        ),
        c.tensor(
            "gy",
            &[long.batch * long.c_out * long.out_h() * long.out_w()],
            &vec![0.0; long.batch * long.c_out * long.out_h() * long.out_w()],
        ),
    );
    let dw = c.poisoned("dw", &[long.c_out, long.cols()]);
    let d =
        c.k.conv
            .backward_weight_with(ConvVariant::Tiled, &c.gpu, &long, &gt, &xt, &dw)
            .unwrap();
    assert_eq!(d.label, "conv.conv_backward_weight_split_wide");
}

/// The GPU forms of the input gradient through a patch matrix (`backward_input_cols_tiled` +
/// col2im) and of the split weight gradient (`backward_weight_tiled` + the partial sums' sum),
/// bound directly on NaN-poisoned outputs and scratch: on every test shape and on one whose sums
/// are cut into several runs with a short last run, against the f64 reference; where the CPU
/// patch-matrix path applies, dx bit for bit against it (the same sums in the same order). Then
/// the shape rules and which layers take the forms.
#[test]
fn conv_gpu_patch_matrix_and_split_forms_match_reference() {
    use dst::kernels::conv::{input_via_cols, weight_grad_tiled, weight_splits, Conv};
    let c = ctx();
    let mut rng = Rng::new(53);
    let split = shape(4, 3, 20, 20, 20, (3, 3), 1, 1);
    let (run, splits) = weight_splits(&split);
    assert!(
        splits > 2 && !(split.batch * 400).is_multiple_of(run),
        "{run} {splits}"
    );
    for s in SHAPES.iter().chain([&split]) {
        let np = s.batch * s.out_h() * s.out_w();
        let (run, splits) = weight_splits(s);
        assert!(run % 32 == 0 && run >= 256 && splits * run >= np && (splits - 1) * run < np);
        let x = rand_vec(&mut rng, s.batch * s.c_in * s.h * s.w, -1.0, 1.0);
        let w = rand_vec(&mut rng, s.c_out * s.cols(), -1.0, 1.0);
        let gy = rand_vec(&mut rng, np * s.c_out, -1.0, 1.0);
        let xt = c.tensor("x", &[s.batch, s.c_in, s.h, s.w], &x);
        let wt = c.tensor("w", &[s.c_out, s.cols()], &w);
        let gt = c.tensor("gy", &[s.batch, s.c_out, s.out_h(), s.out_w()], &gy);
        let dx = c.poisoned("dx", &[s.batch, s.c_in, s.h, s.w]);
        let dw = c.poisoned("dw", &[s.c_out, s.cols()]);
        let dcols = c.poisoned("dcols", &[s.cols_len()]);
        // A partial-sum scratch only where the positions take more than one run.
        assert_eq!(Conv::weight_parts_len(s) > 0, splits > 1);
        let parts = (splits > 1).then(|| c.poisoned("parts", &[Conv::weight_parts_len(s)]));
        let k = &c.k.conv;
        let mut ds = k
            .backward_input_cols_tiled(&c.gpu, s, &gt, &wt, &dcols, &dx)
            .unwrap()
            .to_vec();
        ds.extend(
            k.backward_weight_tiled(&c.gpu, s, &gt, &xt, parts.as_ref(), &dw)
                .unwrap(),
        );
        assert_eq!(ds.len(), 3 + usize::from(splits > 1));
        let names = [
            "backward_input_cols_tiled",
            "col2im",
            "backward_weight_tiled",
            "weight_parts_sum",
        ];
        for (d, n) in ds.iter().zip(names) {
            assert_eq!(d.label, format!("conv.conv_{n}"));
        }
        run_once(&c.gpu, &ds, 0).unwrap();
        let (xd, wd, gd) = (to_f64(&x), to_f64(&w), to_f64(&gy));
        let got_dx = c.read(&dx);
        assert_close_norm(
            &format!("backward_input_cols_tiled {s:?}"),
            &got_dx,
            &reference::backward_input(s, &gd, &wd),
            TOL,
        );
        assert_close_norm(
            &format!("backward_weight_tiled {s:?}"),
            &c.read(&dw),
            &reference::backward_weight(s, &gd, &xd),
            TOL,
        );
        if (s.out_h() * s.out_w()) % 4 == 0 {
            let dx_cols = c.poisoned("dx_cols", &[s.batch, s.c_in, s.h, s.w]);
            let ds = k
                .backward_input_cols(&c.gpu, s, &gt, &wt, &dcols, &dx_cols)
                .unwrap();
            run_once(&c.gpu, &ds, 0).unwrap();
            let want = c.read(&dx_cols);
            for (i, (a, b)) in got_dx.iter().zip(&want).enumerate() {
                assert!(a == b, "{s:?} dx[{i}]: tiled {a} cols {b}");
            }
        }
    }
    // The rules: LeNet-5's conv2 takes both forms, its conv1 neither (few weights; it needs no
    // input gradient), a padded 3x3 conv the split weight gradient only; CPU adapters neither.
    let (conv1, conv2) = (
        shape(64, 1, 28, 28, 20, (5, 5), 1, 0),
        shape(64, 20, 12, 12, 50, (5, 5), 1, 0),
    );
    let vgg = shape(64, 64, 16, 16, 64, (3, 3), 1, 1);
    assert!(input_via_cols(&c.gpu, &conv2) && weight_grad_tiled(&conv2));
    assert!(!input_via_cols(&c.gpu, &conv1) && !weight_grad_tiled(&conv1));
    assert!(!input_via_cols(&c.gpu, &vgg) && weight_grad_tiled(&vgg));
    assert!(!input_via_cols(
        &c.gpu,
        &shape(64, 20, 24, 24, 50, (5, 5), 2, 0)
    ));
    let gpu = c.gpu.class == AdapterClass::Gpu;
    assert_eq!(k_uses(&c, &conv2), (gpu, gpu));
    assert_eq!(k_uses(&c, &conv1), (false, false));
}

/// The GPU tile products in all three tile forms (16x16 outputs per workgroup, one per
/// invocation; 32x32, 2x2 per invocation; 64x64, 4x4 per invocation), bound directly on
/// NaN-poisoned outputs: the same bits on every test shape, the split shape above and shapes
/// with more than one 64x64 tile on each axis of each product and partial tiles (the One form
/// against the f64 reference in the tests above). Then which form the wrappers take.
#[test]
fn conv_tile_forms_give_the_same_bits() {
    use dst::kernels::conv::{weight_splits, Conv, TileForm, TILES_2X2, TILES_4X4};
    let c = ctx();
    let mut rng = Rng::new(59);
    let extra = [
        shape(4, 3, 20, 20, 20, (3, 3), 1, 1),
        shape(2, 40, 9, 11, 70, (3, 3), 1, 1),
        shape(3, 20, 12, 12, 50, (5, 5), 1, 0),
        // Two 64x64 tiles down every product (70 input channels, 70 filters), partial ones.
        shape(2, 70, 9, 7, 70, (3, 3), 1, 1),
    ];
    for s in SHAPES.iter().chain(&extra) {
        let np = s.batch * s.out_h() * s.out_w();
        let x = rand_vec(&mut rng, s.batch * s.c_in * s.h * s.w, -1.0, 1.0);
        let w = rand_vec(&mut rng, s.c_out * s.cols(), -1.0, 1.0);
        let b = rand_vec(&mut rng, s.c_out, -1.0, 1.0);
        let gy = rand_vec(&mut rng, np * s.c_out, -1.0, 1.0);
        let xt = c.tensor("x", &[s.batch, s.c_in, s.h, s.w], &x);
        let wt = c.tensor("w", &[s.c_out, s.cols()], &w);
        let bt = c.tensor("b", &[s.c_out], &b);
        let gt = c.tensor("gy", &[s.batch, s.c_out, s.out_h(), s.out_w()], &gy);
        let k = &c.k.conv;
        let mut outs: Vec<Vec<Vec<f32>>> = Vec::new();
        for form in TileForm::ALL {
            let y = c.poisoned("y", &[s.batch, s.c_out, s.out_h(), s.out_w()]);
            let dx = c.poisoned("dx", &[s.batch, s.c_in, s.h, s.w]);
            let dx_cols = c.poisoned("dx_cols", &[s.batch, s.c_in, s.h, s.w]);
            let dw = c.poisoned("dw", &[s.c_out, s.cols()]);
            let dcols = c.poisoned("dcols", &[s.cols_len()]);
            let parts_len = Conv::weight_parts_len(s);
            let parts = (parts_len > 0).then(|| c.poisoned("parts", &[parts_len]));
            let mut ds = vec![
                k.forward_tiled_with(form, &c.gpu, s, &xt, &wt, Some(&bt), &y, &c.k.dummy)
                    .unwrap(),
                k.backward_input_tiled_with(form, &c.gpu, s, &gt, &wt, &dx)
                    .unwrap(),
            ];
            ds.extend(
                k.backward_input_cols_tiled_with(form, &c.gpu, s, &gt, &wt, &dcols, &dx_cols)
                    .unwrap(),
            );
            ds.extend(
                k.backward_weight_tiled_with(form, &c.gpu, s, &gt, &xt, parts.as_ref(), &dw)
                    .unwrap(),
            );
            let suffix = form.suffix();
            for (d, n) in ds.iter().zip([
                "forward_tiled",
                "backward_input_tiled",
                "backward_input_cols_tiled",
            ]) {
                assert_eq!(d.label, format!("conv.conv_{n}{suffix}"));
            }
            run_once(&c.gpu, &ds, 0).unwrap();
            outs.push(vec![c.read(&y), c.read(&dx), c.read(&dx_cols), c.read(&dw)]);
        }
        for (form, out) in TileForm::ALL.iter().zip(&outs).skip(1) {
            let name = form.name();
            assert_close_norm(
                &format!("forward {name} {s:?}"),
                &out[0],
                &reference::forward(s, &to_f64(&x), &to_f64(&w), Some(&to_f64(&b))),
                TOL,
            );
            for (what, (one, other)) in ["y", "dx", "dx (cols)", "dw"]
                .iter()
                .zip(outs[0].iter().zip(out))
            {
                for (i, (a, b)) in one.iter().zip(other).enumerate() {
                    assert!(a == b, "{s:?} {what}[{i}]: 16x16 {a} {name} {b}");
                }
            }
        }
    }
    // The wrappers' choice: 4x4 from TILES_4X4 tiles of 64x64 (times the splits) on where the
    // rows fill one, else 2x2 from TILES_2X2 tiles of 32x32 on. Rows that fill no 64x64 tile keep
    // 2x2 (LeNet-5's conv1 forward: 20 x 36,864 at batch 64).
    use TileForm::{FourByFour, One, TwoByTwo};
    for (rows, cols, splits, form) in [
        (64 * TILES_4X4, 64, 1, FourByFour),
        (64 * TILES_4X4 - 64, 64, 1, TwoByTwo),
        (64, 64 * (TILES_4X4 / 4), 4, FourByFour),
        (63, 64 * TILES_4X4, 1, TwoByTwo),
        (20, 36864, 1, TwoByTwo),
        (32 * TILES_2X2, 32, 1, TwoByTwo),
        (32 * TILES_2X2 - 32, 32, 1, One),
        (32, 32 * (TILES_2X2 / 4), 4, TwoByTwo),
    ] {
        assert_eq!(
            TileForm::for_shape(rows, cols, splits),
            form,
            "{rows} x {cols} outputs over {splits} runs"
        );
    }
    // LeNet-5 at batch 64: conv2's forward (50 x 4,096) and split weight gradient (50 x 500, 8
    // runs) take 2x2, conv1's split weight gradient (20 x 25, 64 runs) would not.
    let conv2 = shape(64, 20, 12, 12, 50, (5, 5), 1, 0);
    assert_eq!(weight_splits(&conv2).1, 8);
    assert_eq!(TileForm::for_shape(50, 4096, 1), TileForm::TwoByTwo);
    assert_eq!(TileForm::for_shape(50, 500, 8), TileForm::TwoByTwo);
    assert_eq!(TileForm::for_shape(20, 25, 64), TileForm::One);
    let vgg = shape(64, 64, 16, 16, 64, (3, 3), 1, 1);
    let d =
        c.k.conv
            .forward_with(
                ConvVariant::Tiled,
                &c.gpu,
                &vgg,
                &c.poisoned("x", &[64 * 64 * 256]),
                &c.poisoned("w", &[64 * 576]),
                None,
                &c.poisoned("y", &[64 * 64 * 256]),
                &c.k.dummy,
            )
            .unwrap();
    // VGG-like 64 -> 64 channels on 16 x 16 at batch 64: 64 x 16,384 outputs, 256 tiles of 64x64.
    assert_eq!(d.label, "conv.conv_forward_tiled_4x4");
    assert!(weight_splits(&vgg).1 >= 1);
}

/// Whether this device's layers take the GPU input-gradient and weight-gradient forms for `s`.
fn k_uses(c: &Ctx, s: &ConvShape) -> (bool, bool) {
    (
        c.k.conv.use_input_cols_tiled(&c.gpu, s),
        c.k.conv.use_weight_tiled(s),
    )
}

#[test]
fn conv_regblock_matches_reference() {
    check_variant(ConvVariant::RegBlock);
}

#[test]
fn conv_tiled_matches_reference() {
    check_variant(ConvVariant::Tiled);
}

/// The test shapes the patch-matrix path takes (oh ow % 4 == 0: strides 1-3, padding 0-2,
/// partial blocks), with `lenet` (a LeNet-5-like shape) and an odd count of 4-column groups.
fn cols_shapes(lenet: ConvShape) -> Vec<ConvShape> {
    let extra = [lenet, shape(3, 2, 4, 4, 9, (3, 3), 1, 1)];
    let shapes: Vec<ConvShape> = SHAPES
        .iter()
        .chain(&extra)
        .copied()
        .filter(|s| (s.out_h() * s.out_w()) % 4 == 0)
        .collect();
    assert!(shapes.len() >= 8);
    shapes
}

/// Runs the patch-matrix path (im2col + forward product, weight gradient from the same patch
/// matrix, then input gradient through it) on fresh NaN-poisoned outputs and patch matrix.
fn run_cols(c: &Ctx, s: &ConvShape, inputs: Inputs<'_>) -> Run {
    run_cols_on(c, &c.k, s, inputs)
}

/// `run_cols` on the given kernels (the device's, or the plain forms: `Ctx::plain_kernels`).
fn run_cols_on(c: &Ctx, kernels: &Kernels, s: &ConvShape, (x, w, b, gy): Inputs<'_>) -> Run {
    let (oh, ow) = (s.out_h(), s.out_w());
    let xt = c.tensor("x", &[s.batch, s.c_in, s.h, s.w], x);
    let wt = c.tensor("w", &[s.c_out, s.cols()], w);
    let bt = b.map(|b| c.tensor("b", &[s.c_out], b));
    let gt = c.tensor("gy", &[s.batch, s.c_out, oh, ow], gy);
    let y = c.poisoned("y", &[s.batch, s.c_out, oh, ow]);
    let dx = c.poisoned("dx", &[s.batch, s.c_in, s.h, s.w]);
    let dw = c.poisoned("dw", &[s.c_out, s.cols()]);
    let db = c.poisoned("db", &[s.c_out]);
    let scratch = c.poisoned("cols", &[s.cols_len()]);
    let k = &kernels.conv;
    let mut ds = k
        .forward_cols(
            &c.gpu,
            s,
            &xt,
            &wt,
            bt.as_ref(),
            &y,
            &scratch,
            &kernels.dummy,
        )
        .unwrap()
        .to_vec();
    ds.push(
        k.backward_weight_cols(&c.gpu, s, &gt, &scratch, &dw)
            .unwrap(),
    );
    ds.extend(
        k.backward_input_cols(&c.gpu, s, &gt, &wt, &scratch, &dx)
            .unwrap(),
    );
    ds.push(k.bias_backward(&c.gpu, s, &gt, &db).unwrap());
    let names = [
        "im2col",
        "forward_cols",
        "backward_weight_cols",
        "backward_input_cols",
        "col2im",
        "bias_backward",
    ];
    // The three products in their subgroup forms where the kernels have them.
    let sg = k.forward_cols_sg.is_some();
    for (d, n) in ds.iter().zip(names) {
        let form = if sg && n.ends_with("_cols") {
            "_sg"
        } else {
            ""
        };
        assert_eq!(d.label, format!("conv.conv_{n}{form}"));
    }
    run_once(&c.gpu, &ds, 0).unwrap();
    Run {
        y: c.read(&y),
        dx: c.read(&dx),
        dw: c.read(&dw),
        db: c.read(&db),
    }
}

/// The patch-matrix path on every test shape it applies to (oh ow % 4 == 0: strides 1-3, padding
/// 0-2, partial blocks), a LeNet-5 conv1-like shape and an odd count of 4-column groups.
#[test]
fn conv_cols_matches_reference() {
    let c = ctx();
    let mut rng = Rng::new(43);
    let shapes = cols_shapes(shape(2, 1, 28, 28, 20, (5, 5), 1, 0));
    for (i, s) in shapes.iter().enumerate() {
        let x = rand_vec(&mut rng, s.batch * s.c_in * s.h * s.w, -1.0, 1.0);
        let w = rand_vec(&mut rng, s.c_out * s.cols(), -1.0, 1.0);
        let b = rand_vec(&mut rng, s.c_out, -1.0, 1.0);
        let gy = rand_vec(
            &mut rng,
            s.batch * s.c_out * s.out_h() * s.out_w(),
            -1.0,
            1.0,
        );
        let with_bias = i % 2 == 0;
        let inputs = (&x[..], &w[..], with_bias.then_some(&b[..]), &gy[..]);
        let r = run_cols(&c, s, inputs);
        let (xd, wd, bd, gd) = (to_f64(&x), to_f64(&w), to_f64(&b), to_f64(&gy));
        let tag = format!("cols {s:?}");
        // Where the device runs the products' subgroup forms: the plain forms' bits.
        assert_eq!(c.k.conv.forward_cols_sg.is_some(), c.gpu.subgroups8);
        if let Some(plain) = c.plain_kernels() {
            let p = run_cols_on(&c, &plain, s, inputs);
            for (what, a, b) in [
                ("y", &r.y, &p.y),
                ("dx", &r.dx, &p.dx),
                ("dw", &r.dw, &p.dw),
                ("db", &r.db, &p.db),
            ] {
                let same = a.len() == b.len()
                    && a.iter()
                        .zip(b.iter())
                        .all(|(u, v)| u.to_bits() == v.to_bits());
                assert!(
                    same,
                    "{tag}: {what} of the subgroup forms differs from the plain's"
                );
            }
        }
        let bias = with_bias.then_some(&bd[..]);
        assert_close_norm(
            &format!("forward {tag}"),
            &r.y,
            &reference::forward(s, &xd, &wd, bias),
            TOL,
        );
        assert_close_norm(
            &format!("backward_input {tag}"),
            &r.dx,
            &reference::backward_input(s, &gd, &wd),
            TOL,
        );
        assert_close_norm(
            &format!("backward_weight {tag}"),
            &r.dw,
            &reference::backward_weight(s, &gd, &xd),
            TOL,
        );
        assert_close_norm(
            &format!("bias_backward {tag}"),
            &r.db,
            &reference::bias_backward(s, &gd),
            TOL,
        );
    }
    // The layer's choice: CPU adapters only, and only where oh ow % 4 == 0.
    let lenet2 = shape(64, 20, 12, 12, 50, (5, 5), 1, 0);
    assert_eq!(
        c.k.conv.use_cols(&c.gpu, &lenet2),
        c.gpu.class == AdapterClass::Cpu
    );
    assert!(!c.k.conv.use_cols(&c.gpu, &SHAPES[1]));
}

/// The cols products from P's lists (a pruned conv's forward and input gradient) give the dense
/// cols products' values: on every patch-matrix test shape and LeNet-5's conv2 (stride, padding,
/// partial filter and column blocks, an odd count of 4-column groups), at keeps 0, 3 %, 30 % and
/// 100 %, with an all-zero filter and an all-zero patch row; compared element by element (`==`:
/// the listed sums leave out terms that add +0, so at most a zero's sign differs) on NaN-poisoned
/// outputs (every y and every dcols written), and against the f64 reference.
#[test]
fn conv_listed_products_equal_the_dense_cols_products() {
    use dst::kernels::sparse::EllLists;
    let c = ctx();
    let mut rng = Rng::new(47);
    let shapes = cols_shapes(shape(3, 20, 12, 12, 50, (5, 5), 1, 0));
    let k = &c.k.conv;
    let same = |a: &[f32], b: &[f32]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y);
    for (i, s) in shapes.iter().enumerate() {
        let (oh, ow) = (s.out_h(), s.out_w());
        let (rows, cols) = (s.c_out, s.cols());
        let x_shape = [s.batch, s.c_in, s.h, s.w];
        let y_shape = [s.batch, rows, oh, ow];
        for keep in [0.0, 0.03, 0.3, 1.0] {
            let tag = format!("{s:?} keep {keep}");
            let x = rand_vec(&mut rng, s.batch * s.c_in * s.h * s.w, -1.0, 1.0);
            let b = rand_vec(&mut rng, rows, -1.0, 1.0);
            let gy = rand_vec(&mut rng, s.batch * rows * oh * ow, -1.0, 1.0);
            let mut p: Vec<f32> = (0..rows * cols)
                .map(|_| {
                    let v = rng.range(-1.0, 1.0) as f32;
                    if rng.range(0.0, 1.0) < keep {
                        v
                    } else {
                        0.0
                    }
                })
                .collect();
            // An empty filter (the last) and an empty patch row (the first), where others remain.
            if rows > 1 {
                p[(rows - 1) * cols..].fill(0.0);
            }
            if cols > 1 {
                (0..rows).for_each(|r| p[r * cols] = 0.0);
            }
            let with_bias = i % 2 == 0;
            let bias = with_bias.then(|| c.tensor("b", &[rows], &b));
            let xt = c.tensor("x", &x_shape, &x);
            let pt = c.tensor("p", &[rows, cols], &p);
            let gt = c.tensor("gy", &y_shape, &gy);
            let patches = c.poisoned("cols", &[s.cols_len()]);
            let (y_dense, y_listed) = (c.poisoned("y", &y_shape), c.poisoned("y2", &y_shape));
            let (dcols_dense, dcols_listed) = (
                c.poisoned("dcols", &[s.cols_len()]),
                c.poisoned("dcols2", &[s.cols_len()]),
            );
            let (dx_dense, dx_listed) = (c.poisoned("dx", &x_shape), c.poisoned("dx2", &x_shape));
            let lists = EllLists::new(&c.gpu, "p", rows, cols, false).unwrap();
            let sp = &c.k.sparse;
            let mut ds = k
                .forward_cols(
                    &c.gpu,
                    s,
                    &xt,
                    &pt,
                    bias.as_ref(),
                    &y_dense,
                    &patches,
                    &c.k.dummy,
                )
                .unwrap()
                .to_vec();
            ds.push(sp.ell_build(&c.gpu, &pt, &lists, true).unwrap());
            ds.push(sp.ell_build(&c.gpu, &pt, &lists, false).unwrap());
            ds.push(
                k.forward_cols_listed(
                    &c.gpu,
                    s,
                    &lists,
                    &patches,
                    bias.as_ref(),
                    &y_listed,
                    &c.k.dummy,
                )
                .unwrap(),
            );
            ds.extend(
                k.backward_input_cols(&c.gpu, s, &gt, &pt, &dcols_dense, &dx_dense)
                    .unwrap(),
            );
            ds.push(
                k.backward_input_cols_listed(&c.gpu, s, &lists, &gt, &dcols_listed)
                    .unwrap(),
            );
            ds.push(k.gather_dx(&c.gpu, s, &dcols_listed, &dx_listed).unwrap());
            let labels: Vec<&str> = ds.iter().map(|d| d.label.as_str()).collect();
            let dense_input = if c.gpu.subgroups8 {
                "conv.conv_backward_input_cols_sg"
            } else {
                "conv.conv_backward_input_cols"
            };
            assert_eq!(
                labels[4..],
                [
                    "conv.conv_forward_cols_listed",
                    dense_input,
                    "conv.conv_col2im",
                    "conv.conv_backward_input_cols_listed",
                    "conv.conv_col2im"
                ]
            );
            run_once(&c.gpu, &ds, 0).unwrap();
            let yl = c.read(&y_listed);
            assert!(same(&c.read(&y_dense), &yl), "forward {tag}");
            let dxl = c.read(&dx_listed);
            assert!(
                same(&c.read(&dcols_dense), &c.read(&dcols_listed)),
                "dcols {tag}"
            );
            assert!(same(&c.read(&dx_dense), &dxl), "backward_input {tag}");
            let (pd, bd) = (to_f64(&p), to_f64(&b));
            assert_close_norm(
                &format!("forward {tag}"),
                &yl,
                &reference::forward(s, &to_f64(&x), &pd, with_bias.then_some(&bd[..])),
                TOL,
            );
            assert_close_norm(
                &format!("backward_input {tag}"),
                &dxl,
                &reference::backward_input(s, &to_f64(&gy), &pd),
                TOL,
            );
        }
    }
}

/// The plain wrappers use the adapter's variant; the same inputs give the same bits twice.
#[test]
fn conv_wrappers_are_deterministic() {
    let c = ctx();
    let mut rng = Rng::new(37);
    let s = shape(3, 7, 11, 13, 7, (5, 5), 1, 0);
    let (oh, ow) = (s.out_h(), s.out_w());
    let xt = c.tensor(
        "x",
        &[s.batch, s.c_in, s.h, s.w],
        &rand_vec(&mut rng, s.batch * s.c_in * s.h * s.w, -1.0, 1.0),
    );
    let wt = c.tensor(
        "w",
        &[s.c_out, s.cols()],
        &rand_vec(&mut rng, s.c_out * s.cols(), -1.0, 1.0),
    );
    let gt = c.tensor(
        "gy",
        &[s.batch, s.c_out, oh, ow],
        &rand_vec(&mut rng, s.batch * s.c_out * oh * ow, -1.0, 1.0),
    );
    let mut runs = Vec::new();
    for _ in 0..2 {
        let y = c.poisoned("y", &[s.batch, s.c_out, oh, ow]);
        let dx = c.poisoned("dx", &[s.batch, s.c_in, s.h, s.w]);
        let dw = c.poisoned("dw", &[s.c_out, s.cols()]);
        let db = c.poisoned("db", &[s.c_out]);
        let k = &c.k.conv;
        let ds = [
            k.forward(&c.gpu, &s, &xt, &wt, None, &y, &c.k.dummy)
                .unwrap(),
            k.backward_input(&c.gpu, &s, &gt, &wt, &dx).unwrap(),
            k.backward_weight(&c.gpu, &s, &gt, &xt, &dw).unwrap(),
            k.bias_backward(&c.gpu, &s, &gt, &db).unwrap(),
        ];
        run_once(&c.gpu, &ds, 0).unwrap();
        let bits = |t| c.read(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        runs.push([bits(&y), bits(&dx), bits(&dw), bits(&db)]);
    }
    assert_eq!(c.k.conv.variant, ConvVariant::for_class(c.gpu.class));
    assert!(
        runs[0] == runs[1],
        "conv results differ between two identical runs"
    );
}

/// More than 65535 workgroups: the weight-gradient reduction's grid folds into y (73,728 elements,
/// one workgroup each), and the register-block grids stay correct on the same shape.
#[test]
fn conv_large_grid_folds() {
    let c = ctx();
    let mut rng = Rng::new(41);
    let s = shape(1, 128, 3, 3, 64, (3, 3), 1, 0);
    assert!(s.c_out * s.cols() > 65535);
    let x = rand_vec(&mut rng, s.batch * s.c_in * s.h * s.w, -1.0, 1.0);
    let w = rand_vec(&mut rng, s.c_out * s.cols(), -1.0, 1.0);
    let gy = rand_vec(&mut rng, s.batch * s.c_out, -1.0, 1.0);
    let (xd, wd, gd) = (to_f64(&x), to_f64(&w), to_f64(&gy));
    for variant in ConvVariant::ALL {
        let r = run_conv(&c, variant, &s, (&x, &w, None, &gy));
        let tag = format!("{variant:?} large grid");
        assert_close_norm(
            &format!("forward {tag}"),
            &r.y,
            &reference::forward(&s, &xd, &wd, None),
            TOL,
        );
        assert_close_norm(
            &format!("backward_input {tag}"),
            &r.dx,
            &reference::backward_input(&s, &gd, &wd),
            TOL,
        );
        assert_close_norm(
            &format!("backward_weight {tag}"),
            &r.dw,
            &reference::backward_weight(&s, &gd, &xd),
            TOL,
        );
    }
}

fn golden() -> Value {
    serde_json::from_str(include_str!("../golden/golden_conv.json")).unwrap()
}

fn f32s(v: &Value) -> Vec<f32> {
    flat(v).iter().map(|&x| x as f32).collect()
}

/// The PyTorch masked conv2d: mask, conv forward with the masked weight and bias, input gradient,
/// dL/dP from the weight-gradient kernel turned into dL/dW and dL/dt (penalty included) by the
/// masked kernels on the weight viewed as (c_out, c_in kh kw), bias gradient; every variant.
#[test]
fn masked_conv_matches_golden() {
    let g = golden();
    let case = &g["masked_conv2d"];
    let u = |k: &str| case[k].as_u64().unwrap() as usize;
    let k = u("kernel");
    let s = shape(
        u("batch"),
        u("c_in"),
        u("h"),
        u("w"),
        u("c_out"),
        (k, k),
        u("stride"),
        u("padding"),
    );
    let alpha = case["alpha"].as_f64().unwrap() as f32;
    let (rows, cols) = (s.c_out, s.cols());
    let c = ctx();
    // Every variant, then (None) the patch-matrix path with a NaN-poisoned patch matrix.
    assert!(c.k.conv.use_cols(&c.gpu, &s) || c.gpu.class != AdapterClass::Cpu);
    for variant in ConvVariant::ALL.map(Some).into_iter().chain([None]) {
        let w = c.tensor("w", &[rows, cols], &f32s(&case["weight"]));
        let t = c.tensor("t", &[rows], &f32s(&case["threshold"]));
        let p = c.poisoned("p", &[rows, cols]);
        let row_keep = c.tensor_u32("row_keep", &[2 * rows], &vec![u32::MAX; 2 * rows]);
        let layer_keep = c.tensor_u32("layer_keep", &[4], &[u32::MAX, u32::MAX, 0, 0]);
        let x = c.tensor("x", &[s.batch, s.c_in, s.h, s.w], &f32s(&case["x"]));
        let b = c.tensor("b", &[rows], &f32s(&case["bias"]));
        let (oh, ow) = (s.out_h(), s.out_w());
        let gy = c.tensor("gy", &[s.batch, rows, oh, ow], &f32s(&case["grad_y"]));
        let y = c.poisoned("y", &[s.batch, rows, oh, ow]);
        let dx = c.poisoned("dx", &[s.batch, s.c_in, s.h, s.w]);
        let dp = c.poisoned("dp", &[rows, cols]);
        let dw = c.poisoned("dw", &[rows, cols]);
        let dt = c.poisoned("dt", &[rows]);
        let db = c.poisoned("db", &[rows]);
        let (m, cv) = (&c.k.masked, &c.k.conv);
        let mut ds = vec![
            m.mask_forward(&c.gpu, &w, &t, &p, &row_keep).unwrap(),
            m.mask_reset(&c.gpu, &w, &t, &p, &row_keep, &layer_keep)
                .unwrap(),
        ];
        match variant {
            Some(variant) => ds.extend([
                cv.forward_with(variant, &c.gpu, &s, &x, &p, Some(&b), &y, &c.k.dummy)
                    .unwrap(),
                cv.backward_input_with(variant, &c.gpu, &s, &gy, &p, &dx)
                    .unwrap(),
                cv.backward_weight_with(variant, &c.gpu, &s, &gy, &x, &dp)
                    .unwrap(),
            ]),
            None => {
                let scratch = c.poisoned("cols", &[s.cols_len()]);
                ds.extend(
                    cv.forward_cols(&c.gpu, &s, &x, &p, Some(&b), &y, &scratch, &c.k.dummy)
                        .unwrap(),
                );
                ds.push(
                    cv.backward_weight_cols(&c.gpu, &s, &gy, &scratch, &dp)
                        .unwrap(),
                );
                ds.extend(
                    cv.backward_input_cols(&c.gpu, &s, &gy, &p, &scratch, &dx)
                        .unwrap(),
                );
            }
        }
        ds.extend([
            m.mask_backward(&c.gpu, &w, &t, &dp, &dw, &dt, alpha)
                .unwrap(),
            cv.bias_backward(&c.gpu, &s, &gy, &db).unwrap(),
        ]);
        run_once(&c.gpu, &ds, 0).unwrap();
        let tag = format!("golden masked_conv2d {variant:?} (None: cols)");
        let mask = flat(&case["mask"]);
        let want_p: Vec<f64> = flat(&case["weight"])
            .iter()
            .zip(&mask)
            .map(|(w, m)| w * m)
            .collect();
        // The file's weights are f64 (not all f32-representable): one f32 rounding.
        assert_close(
            &format!("{tag} masked weight"),
            &c.read(&p),
            &want_p,
            1e-7,
            0.0,
        );
        let lk = c.read_u32(&layer_keep);
        assert_eq!(lk[2], 0, "{tag}: no reset");
        assert_eq!(
            lk[1] as f64 / (rows * cols) as f64,
            case["keep_ratio"].as_f64().unwrap(),
            "{tag} keep ratio"
        );
        for (what, got, key) in [
            ("y", &y, "y"),
            ("grad_x", &dx, "grad_x"),
            ("grad_weight", &dw, "grad_weight"),
            ("grad_bias", &db, "grad_bias"),
            ("grad_threshold", &dt, "grad_threshold"),
        ] {
            assert_close_norm(
                &format!("{tag} {what}"),
                &c.read(got),
                &flat(&case[key]),
                TOL,
            );
        }
    }
}

// ---- finite differences of the f64 reference (no GPU) ----

fn rand_f64(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.normal()).collect()
}

/// `sum(gy * conv(x, w) + b)`: its gradients are exactly the reference backward passes.
#[test]
fn conv_reference_matches_finite_differences() {
    let mut rng = Rng::new(43);
    for s in [
        shape(2, 2, 5, 4, 3, (3, 2), 2, 1),
        shape(1, 3, 6, 6, 2, (3, 3), 1, 2),
    ] {
        let x = rand_f64(&mut rng, s.batch * s.c_in * s.h * s.w);
        let w = rand_f64(&mut rng, s.c_out * s.cols());
        let b = rand_f64(&mut rng, s.c_out);
        let gy = rand_f64(&mut rng, s.batch * s.c_out * s.out_h() * s.out_w());
        let obj = |x: &[f64], w: &[f64], b: &[f64]| -> f64 {
            reference::forward(&s, x, w, Some(b))
                .iter()
                .zip(&gy)
                .map(|(a, g)| a * g)
                .sum()
        };
        let dx = reference::backward_input(&s, &gy, &w);
        let dw = reference::backward_weight(&s, &gy, &x);
        let db = reference::bias_backward(&s, &gy);
        let h = 1e-6;
        let fd = |v: &[f64], k: usize, f: &dyn Fn(&[f64]) -> f64| {
            let (mut p, mut m) = (v.to_vec(), v.to_vec());
            p[k] += h;
            m[k] -= h;
            (f(&p) - f(&m)) / (2.0 * h)
        };
        for (k, &want) in dx.iter().enumerate() {
            let d = fd(&x, k, &|x| obj(x, &w, &b));
            assert!((d - want).abs() < 1e-6, "{s:?} dx[{k}] fd {d} vs {want}");
        }
        for (k, &want) in dw.iter().enumerate() {
            let d = fd(&w, k, &|w| obj(&x, w, &b));
            assert!((d - want).abs() < 1e-6, "{s:?} dW[{k}] fd {d} vs {want}");
        }
        for (k, &want) in db.iter().enumerate() {
            let d = fd(&b, k, &|b| obj(&x, &w, b));
            assert!((d - want).abs() < 1e-6, "{s:?} db[{k}] fd {d} vs {want}");
        }
    }
}

/// The masked conv through `reference::masked`'s closed form: with M0 and W0 frozen at the point,
/// J(W, t) = sum gy * conv(x, W M0 + W0 S~(|W| - t)) + alpha sum exp(-t) has exactly the gradients
/// `mask_backward(W, t, dP)`, dP = the conv weight gradient; and the true objective (P = W M)
/// has dW = dP M, mask locally constant. Probes stay away from the mask's jumps and H's kinks.
#[test]
fn masked_conv_reference_matches_finite_differences() {
    let mut rng = Rng::new(47);
    let s = shape(2, 2, 5, 6, 3, (3, 3), 2, 1);
    let (rows, cols, alpha) = (s.c_out, s.cols(), 0.2);
    let t: Vec<f64> = (0..rows).map(|_| rng.range(-0.2, 0.5)).collect();
    let mut w = vec![0.0; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            w[i * cols + j] = loop {
                let v = rng.range(-1.6, 1.6);
                let q = v.abs() - t[i];
                if [0.0, 0.4, 1.0].iter().all(|e| (q.abs() - e).abs() > 1e-3) && v.abs() > 1e-3 {
                    break v as f32 as f64;
                }
            };
        }
    }
    let x = rand_f64(&mut rng, s.batch * s.c_in * s.h * s.w);
    let gy = rand_f64(&mut rng, s.batch * rows * s.out_h() * s.out_w());
    let (m0, _) = rmasked::mask_forward(&w, &t, rows, cols);
    let w0 = w.clone();
    let conv_obj = |p: &[f64]| -> f64 {
        reference::forward(&s, &x, p, None)
            .iter()
            .zip(&gy)
            .map(|(a, g)| a * g)
            .sum()
    };
    let j = |w: &[f64], t: &[f64]| -> f64 {
        let p: Vec<f64> = (0..rows * cols)
            .map(|k| {
                let on = if m0[k] != 0.0 { 1.0 } else { 0.0 };
                w[k] * on + w0[k] * smooth_step(w[k].abs() - t[k / cols])
            })
            .collect();
        conv_obj(&p) + rmasked::penalty(t, alpha)
    };
    let true_obj = |w: &[f64]| conv_obj(&rmasked::mask_forward(w, &t, rows, cols).0);
    let dp = reference::backward_weight(&s, &gy, &x);
    let (dw, dt) = rmasked::mask_backward(&w, &t, &dp, rows, cols, alpha);
    let h = 1e-6;
    for k in 0..rows * cols {
        let (mut wp, mut wm) = (w.clone(), w.clone());
        wp[k] += h;
        wm[k] -= h;
        let d = (j(&wp, &t) - j(&wm, &t)) / (2.0 * h);
        assert!((d - dw[k]).abs() < 1e-6, "dW[{k}]: fd {d} vs {}", dw[k]);
        let d = (true_obj(&wp) - true_obj(&wm)) / (2.0 * h);
        let on = if m0[k] != 0.0 { 1.0 } else { 0.0 };
        assert!(
            (d - dp[k] * on).abs() < 1e-6,
            "performance term dW[{k}]: fd {d} vs {}",
            dp[k] * on
        );
    }
    for i in 0..rows {
        let (mut tp, mut tm) = (t.clone(), t.clone());
        tp[i] += h;
        tm[i] -= h;
        let d = (j(&w, &tp) - j(&w, &tm)) / (2.0 * h);
        assert!((d - dt[i]).abs() < 1e-6, "dt[{i}]: fd {d} vs {}", dt[i]);
    }
}
