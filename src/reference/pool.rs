//! Twin of shaders/pool.wgsl: max and average pooling (NCHW, floor mode) and their gradients, in
//! the scatter form (each window sends its gradient to its inputs), independent of the shaders'
//! gather form.

use crate::kernels::pool::PoolShape;

/// In-image elements (plane-relative index) of window (oy, ox), in scan order (row-major).
fn window(s: &PoolShape, oy: usize, ox: usize) -> Vec<usize> {
    let mut v = Vec::new();
    for ky in 0..s.k {
        for kx in 0..s.k {
            let iy = (oy * s.stride + ky) as isize - s.pad as isize;
            let ix = (ox * s.stride + kx) as isize - s.pad as isize;
            if iy >= 0 && ix >= 0 && iy < s.h as isize && ix < s.w as isize {
                v.push(iy as usize * s.w + ix as usize);
            }
        }
    }
    v
}

/// Calls `f(plane, oy, ox, window)` for every output, planes (n, c) in order.
fn each_window(s: &PoolShape, mut f: impl FnMut(usize, usize, usize, &[usize])) {
    for plane in 0..s.batch * s.channels {
        for oy in 0..s.out_h() {
            for ox in 0..s.out_w() {
                f(plane, oy, ox, &window(s, oy, ox));
            }
        }
    }
}

/// Plane-relative index of the first maximum of `win` (strict >, padding -inf).
fn argmax(x: &[f64], base: usize, win: &[usize]) -> usize {
    let mut best = (f64::NEG_INFINITY, usize::MAX);
    for &i in win {
        if best.1 == usize::MAX || x[base + i] > best.0 {
            best = (x[base + i], i);
        }
    }
    best.1
}

pub fn max_forward(s: &PoolShape, x: &[f64]) -> Vec<f64> {
    let mut y = Vec::with_capacity(s.batch * s.channels * s.out_h() * s.out_w());
    let hw = s.h * s.w;
    each_window(s, |plane, _, _, win| {
        y.push(x[plane * hw + argmax(x, plane * hw, win)])
    });
    y
}

/// Each window's dy goes to its first maximum; overlapping windows add.
pub fn max_backward(s: &PoolShape, x: &[f64], dy: &[f64]) -> Vec<f64> {
    let hw = s.h * s.w;
    let mut dx = vec![0.0; x.len()];
    let mut o = 0;
    each_window(s, |plane, _, _, win| {
        dx[plane * hw + argmax(x, plane * hw, win)] += dy[o];
        o += 1;
    });
    dx
}

/// Window sum / (k k) (count_include_pad).
pub fn avg_forward(s: &PoolShape, x: &[f64]) -> Vec<f64> {
    let hw = s.h * s.w;
    let mut y = Vec::new();
    each_window(s, |plane, _, _, win| {
        y.push(win.iter().map(|&i| x[plane * hw + i]).sum::<f64>() / (s.k * s.k) as f64)
    });
    y
}

pub fn avg_backward(s: &PoolShape, dy: &[f64]) -> Vec<f64> {
    let hw = s.h * s.w;
    let mut dx = vec![0.0; s.batch * s.channels * hw];
    let mut o = 0;
    each_window(s, |plane, _, _, win| {
        for &i in win {
            dx[plane * hw + i] += dy[o] / (s.k * s.k) as f64;
        }
        o += 1;
    });
    dx
}
