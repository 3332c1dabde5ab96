use dst::gpu::Tensor;
use dst::kernels::pool::PoolShape;
use dst::kernels::run_once;
use dst::reference::pool as reference;
use dst::rng::Rng;
use serde_json::Value;

use crate::common::*;
use crate::masked::flat;

const fn shape(
    batch: usize,
    channels: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
) -> PoolShape {
    PoolShape {
        batch,
        channels,
        h,
        w,
        k,
        stride,
        pad,
    }
}

/// Non-overlapping, overlapping (k3 s2 p1, k3 s1 p1, k2 s1), padded, floor mode dropping a border.
const SHAPES: &[PoolShape] = &[
    shape(2, 3, 6, 5, 2, 2, 0),
    shape(2, 3, 6, 5, 3, 2, 1),
    shape(1, 2, 7, 7, 3, 1, 1),
    shape(3, 1, 9, 8, 4, 4, 0),
    shape(1, 1, 5, 5, 5, 1, 2),
    shape(2, 4, 8, 8, 2, 1, 0),
    shape(1, 3, 13, 11, 3, 2, 0),
];

struct Run {
    max_y: Vec<f32>,
    max_dx: Vec<f32>,
    avg_y: Vec<f32>,
    avg_dx: Vec<f32>,
}

fn run_pool(c: &Ctx, s: &PoolShape, x: &[f32], gy: &[f32]) -> Run {
    let xs = [s.batch, s.channels, s.h, s.w];
    let ys = [s.batch, s.channels, s.out_h(), s.out_w()];
    let xt = c.tensor("x", &xs, x);
    let gt = c.tensor("gy", &ys, gy);
    let (my, mdx, ay, adx) = (
        c.poisoned("max_y", &ys),
        c.poisoned("max_dx", &xs),
        c.poisoned("avg_y", &ys),
        c.poisoned("avg_dx", &xs),
    );
    let p = &c.k.pool;
    let ds = [
        p.max_forward(&c.gpu, s, false, &xt, &my).unwrap(),
        p.max_backward(&c.gpu, s, false, &xt, &gt, &mdx).unwrap(),
        p.avg_forward(&c.gpu, s, &xt, &ay).unwrap(),
        p.avg_backward(&c.gpu, s, &gt, &adx).unwrap(),
    ];
    run_once(&c.gpu, &ds, 0).unwrap();
    Run {
        max_y: c.read(&my),
        max_dx: c.read(&mdx),
        avg_y: c.read(&ay),
        avg_dx: c.read(&adx),
    }
}

/// Inputs in multiples of 0.5 in [-1.5, 1.5]: many ties inside windows.
#[test]
fn pool_matches_reference() {
    let c = ctx();
    let mut rng = Rng::new(53);
    for s in SHAPES {
        let n = s.batch * s.channels * s.h * s.w;
        let x: Vec<f32> = (0..n).map(|_| rng.below(7) as f32 * 0.5 - 1.5).collect();
        let gy = rand_vec(
            &mut rng,
            s.batch * s.channels * s.out_h() * s.out_w(),
            -1.0,
            1.0,
        );
        let r = run_pool(&c, s, &x, &gy);
        let (xd, gd) = (to_f64(&x), to_f64(&gy));
        let tag = format!("{s:?}");
        assert_close(
            &format!("max_forward {tag}"),
            &r.max_y,
            &reference::max_forward(s, &xd),
            0.0,
            0.0,
        );
        assert_close(
            &format!("max_backward {tag}"),
            &r.max_dx,
            &reference::max_backward(s, &xd, &gd),
            1e-6,
            1e-6,
        );
        assert_close(
            &format!("avg_forward {tag}"),
            &r.avg_y,
            &reference::avg_forward(s, &xd),
            1e-6,
            1e-6,
        );
        assert_close(
            &format!("avg_backward {tag}"),
            &r.avg_dx,
            &reference::avg_backward(s, &gd),
            1e-6,
            1e-6,
        );
    }
}

/// x (multiples of 0.5 in [-1.5, 1.5]: ties and zeros) and dy for `s`, on the host and the GPU,
/// with their shapes.
#[allow(clippy::type_complexity)]
fn tied_problem(
    c: &Ctx,
    rng: &mut Rng,
    s: &PoolShape,
) -> ([usize; 4], [usize; 4], Vec<f32>, Vec<f32>, Tensor, Tensor) {
    let xs = [s.batch, s.channels, s.h, s.w];
    let ys = [s.batch, s.channels, s.out_h(), s.out_w()];
    let n = xs.iter().product();
    let x: Vec<f32> = (0..n).map(|_| rng.below(7) as f32 * 0.5 - 1.5).collect();
    let gy = rand_vec(rng, ys.iter().product(), -1.0, 1.0);
    let xt = c.tensor("x", &xs, &x);
    let gt = c.tensor("gy", &ys, &gy);
    (xs, ys, x, gy, xt, gt)
}

/// Windows that tile the input (stride == k, no padding) take `max_backward_windows`: the same
/// bits as the per-element gather, every dx written (NaN-poisoned outputs), the border that floor
/// mode leaves outside every window (bottom rows, right columns, both) zero.
#[test]
fn max_backward_windows_equals_gather() {
    let c = ctx();
    let mut rng = Rng::new(59);
    let shapes = [
        shape(2, 3, 6, 5, 2, 2, 0),
        shape(3, 1, 9, 8, 4, 4, 0),
        shape(2, 3, 7, 9, 2, 2, 0),
        shape(1, 2, 12, 12, 3, 3, 0),
        shape(4, 5, 24, 24, 2, 2, 0),
        shape(1, 1, 3, 3, 1, 1, 0),
    ];
    let p = &c.k.pool;
    for s in &shapes {
        let (xs, _, x, gy, xt, gt) = tied_problem(&c, &mut rng, s);
        let (dw, dg) = (c.poisoned("dx_windows", &xs), c.poisoned("dx_gather", &xs));
        let ds = [
            p.max_backward(&c.gpu, s, false, &xt, &gt, &dw).unwrap(),
            p.max_backward_gather(&c.gpu, s, false, &xt, &gt, &dg)
                .unwrap(),
        ];
        assert_eq!(ds[0].label, "pool.max_backward_windows", "{s:?}");
        assert_eq!(ds[1].label, "pool.max_backward", "{s:?}");
        run_once(&c.gpu, &ds, 0).unwrap();
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        let (w, g) = (bits(c.read(&dw)), bits(c.read(&dg)));
        assert!(w == g, "{s:?}: windows {w:?} vs gather {g:?}");
        let want = reference::max_backward(s, &to_f64(&x), &to_f64(&gy));
        assert_close(&format!("{s:?}"), &c.read(&dw), &want, 0.0, 0.0);
    }
    // Overlapping or padded windows keep the gather.
    let s = shape(1, 1, 5, 5, 3, 2, 1);
    let t = c.tensor("x", &[1, 1, 5, 5], &[0.0; 25]);
    let g = c.tensor("gy", &[1, 1, 3, 3], &[0.0; 9]);
    let dx = c.poisoned("dx", &[1, 1, 5, 5]);
    let d = p.max_backward(&c.gpu, &s, false, &t, &g, &dx).unwrap();
    assert_eq!(d.label, "pool.max_backward");
}

/// Max pooling with its ReLU fused (`relu`: pooling relu(x)) gives the same bits as a ReLU pass,
/// the pooling, its backward and the ReLU's backward, with both backward kernels (windows that
/// tile and the gather), on inputs with many ties and zeros; and the f64 composition.
#[test]
fn max_pool_with_relu_equals_relu_then_pool() {
    let c = ctx();
    let mut rng = Rng::new(61);
    let p = &c.k.pool;
    let a = &c.k.act;
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    let mut shapes = SHAPES.to_vec();
    shapes.push(shape(4, 5, 24, 24, 2, 2, 0));
    for s in &shapes {
        let (xs, ys, x, gy, xt, gt) = tied_problem(&c, &mut rng, s);
        // Unfused: r = relu(x), y = pool(r), dr = pool'(dy), dx = relu'(dr).
        let r = c.poisoned("r", &xs);
        let (y0, dr, dx0) = (
            c.poisoned("y0", &ys),
            c.poisoned("dr", &xs),
            c.poisoned("dx0", &xs),
        );
        // Fused, with the adapter's backward kernel and with the gather.
        let (y1, dx1, dx2) = (
            c.poisoned("y1", &ys),
            c.poisoned("dx1", &xs),
            c.poisoned("dx2", &xs),
        );
        let ds = [
            a.relu_forward(&c.gpu, &xt, &r).unwrap(),
            p.max_forward(&c.gpu, s, false, &r, &y0).unwrap(),
            p.max_backward(&c.gpu, s, false, &r, &gt, &dr).unwrap(),
            a.relu_backward(&c.gpu, &dr, &r, &dx0).unwrap(),
            p.max_forward(&c.gpu, s, true, &xt, &y1).unwrap(),
            p.max_backward(&c.gpu, s, true, &xt, &gt, &dx1).unwrap(),
            p.max_backward_gather(&c.gpu, s, true, &xt, &gt, &dx2)
                .unwrap(),
        ];
        run_once(&c.gpu, &ds, 0).unwrap();
        let tag = format!("{s:?}");
        assert!(bits(c.read(&y0)) == bits(c.read(&y1)), "{tag}: forward");
        let want = bits(c.read(&dx0));
        assert!(want == bits(c.read(&dx1)), "{tag}: backward");
        assert!(want == bits(c.read(&dx2)), "{tag}: backward, gather");
        let rd: Vec<f64> = x.iter().map(|&v| (v as f64).max(0.0)).collect();
        let y_ref = reference::max_forward(s, &rd);
        assert_close(&format!("{tag} y"), &c.read(&y1), &y_ref, 0.0, 0.0);
        let dx_ref: Vec<f64> = reference::max_backward(s, &rd, &to_f64(&gy))
            .into_iter()
            .zip(&x)
            .map(|(d, &v)| if v > 0.0 { d } else { 0.0 })
            .collect();
        assert_close(&format!("{tag} dx"), &c.read(&dx1), &dx_ref, 1e-6, 1e-6);
        assert!(c
            .read(&dx1)
            .iter()
            .zip(&x)
            .all(|(d, &v)| v > 0.0 || *d == 0.0));
    }
}

/// On a tie the whole gradient goes to the first maximum in scan order (row-major in the window).
#[test]
fn max_pool_ties_go_to_first_element() {
    let c = ctx();
    // Constant input, 2x2 windows: each window's top-left element takes its gradient.
    let s = shape(1, 1, 4, 4, 2, 2, 0);
    let r = run_pool(&c, &s, &[1.0; 16], &[1.0, 2.0, 3.0, 4.0]);
    let want = [
        1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0,
    ];
    assert_close("tie 2x2/2", &r.max_dx, &want, 0.0, 0.0);
    // Overlapping 3x3/1 windows with padding on a constant input: the first in-image element of
    // each window; windows (0,0),(0,1),(1,0),(1,1) all start at (0,0); others at their top-left.
    let s = shape(1, 1, 3, 3, 3, 1, 1);
    let gy: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let r = run_pool(&c, &s, &[0.5; 9], &gy);
    let want = [
        1.0 + 2.0 + 4.0 + 5.0,
        3.0 + 6.0,
        0.0,
        7.0 + 8.0,
        9.0,
        0.0,
        0.0,
        0.0,
        0.0,
    ];
    assert_close("tie 3x3/1 pad 1", &r.max_dx, &want, 0.0, 0.0);
    // A later equal value never takes over; a strictly larger one does.
    let s = shape(1, 1, 1, 4, 1, 1, 0);
    let s2 = shape(1, 1, 2, 2, 2, 1, 0);
    let r = run_pool(&c, &s2, &[2.0, 2.0, 3.0, 3.0], &[5.0]);
    assert_close(
        "first of the strict maxima",
        &r.max_dx,
        &[0.0, 0.0, 5.0, 0.0],
        0.0,
        0.0,
    );
    let r = run_pool(&c, &s, &[1.0, 2.0, 3.0, 4.0], &[1.0, 2.0, 3.0, 4.0]);
    assert_close("k1 identity", &r.max_dx, &[1.0, 2.0, 3.0, 4.0], 0.0, 0.0);
}

/// The PyTorch golden values (floor mode, inputs full of ties).
#[test]
fn pool_matches_golden() {
    let g: Value = serde_json::from_str(include_str!("../golden/golden_conv.json")).unwrap();
    let case = &g["pooling"];
    let x: Vec<f32> = flat(&case["x"]).iter().map(|&v| v as f32).collect();
    let c = ctx();
    for (key, k, stride, pad, max) in [
        ("max_pool_k2_s2", 2, 2, 0, true),
        ("max_pool_k3_s2_p1", 3, 2, 1, true),
        ("avg_pool_k2_s2", 2, 2, 0, false),
        ("avg_pool_k4_s4", 4, 4, 0, false),
    ] {
        let s = shape(2, 3, 6, 5, k, stride, pad);
        let gy: Vec<f32> = flat(&case[key]["grad_y"])
            .iter()
            .map(|&v| v as f32)
            .collect();
        let r = run_pool(&c, &s, &x, &gy);
        let (y, dx) = if max {
            (r.max_y, r.max_dx)
        } else {
            (r.avg_y, r.avg_dx)
        };
        assert_close(
            &format!("golden {key} y"),
            &y,
            &flat(&case[key]["y"]),
            1e-6,
            1e-6,
        );
        assert_close(
            &format!("golden {key} grad_x"),
            &dx,
            &flat(&case[key]["grad_x"]),
            1e-6,
            1e-6,
        );
    }
}
