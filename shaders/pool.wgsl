// pool.wgsl: 2-D max and average pooling (NCHW, f32, square window k, stride, zero padding,
// floor mode as PyTorch) and their input gradients.
//
//   x, dx (batch, channels, h, w)   y, dy (batch, channels, oh, ow)
//   oh = (h + 2 pad - k) / stride + 1 (floor), ow likewise; window (oy, ox) covers input rows
//   oy s - pad .. oy s - pad + k - 1 and the same columns
//
//   max_forward   y = max over the window's in-image elements (padding counts as -inf; the host
//                 requires 2 pad <= k, so every window holds one)
//   max_backward  dx[i] = sum of dy over the windows whose FIRST maximum in scan order (row-major
//                 within the window, strict >) is element i, as PyTorch; overlapping windows sum
//                 (`max_backward_windows` where the windows tile the input)
//   relu != 0     max pooling of relu(x), fused (a ReLU before a max pool): y = max(window max, 0)
//                 and dx[i] as above where x[i] > 0, else 0. The same values as a ReLU pass, the
//                 pooling, its backward and the ReLU's backward: max and ReLU commute, a window
//                 whose maximum is <= 0 sends no gradient through the ReLU, and one whose maximum
//                 is positive has the same first maximum in x as in relu(x).
//   avg_forward   y = (sum of the window's in-image elements) / (k k)   (count_include_pad)
//   avg_backward  dx[i] = sum over the windows holding i of dy / (k k)
//
// One invocation per output element; the backward passes gather (each dx element finds the windows
// that hold it, in (oy, ox) order), so every element is written, without atomics, deterministically.
// 1-D grids folded into y past 65535 workgroups (`grid_1d` in src/kernels/mod.rs).

// Keep in sync with `PoolParams` in src/kernels/pool.rs.
struct PoolParams {
    batch: u32,
    channels: u32,
    h: u32,
    w: u32,
    k: u32,
    stride: u32,
    pad: u32,
    oh: u32,
    ow: u32,
    relu: u32, // max pooling of relu(x) (see the header)
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> pp: PoolParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;

// Index (within its plane) of the first maximum of window (oy, ox) of the plane at `base` in x.
fn window_argmax(base: u32, oy: u32, ox: u32) -> u32 {
    var best = 0.0;
    var at = 0u;
    var found = false;
    for (var ky = 0u; ky < pp.k; ky++) {
        let iy = i32(oy * pp.stride + ky) - i32(pp.pad);
        if (iy < 0 || iy >= i32(pp.h)) {
            continue;
        }
        for (var kx = 0u; kx < pp.k; kx++) {
            let ix = i32(ox * pp.stride + kx) - i32(pp.pad);
            if (ix < 0 || ix >= i32(pp.w)) {
                continue;
            }
            let i = u32(iy) * pp.w + u32(ix);
            let v = x[base + i];
            if (!found || v > best) {
                best = v;
                at = i;
                found = true;
            }
        }
    }
    return at;
}

// First and one-past-last output index along an axis whose windows hold input index i.
fn window_range(i: u32, outs: u32) -> vec2<u32> {
    let t = i32(i + pp.pad) - i32(pp.k) + 1;
    var lo = 0u;
    if (t > 0) {
        lo = (u32(t) + pp.stride - 1u) / pp.stride;
    }
    let hi = min((i + pp.pad) / pp.stride + 1u, outs);
    return vec2<u32>(lo, hi);
}

// Reads x; writes y = max over each window (first maximum kept on ties). One invocation per y.
@compute @workgroup_size(64, 1, 1)
fn max_forward(@builtin(global_invocation_id) gid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = gid.x + gid.y * nwg.x * 64u;
    let ohw = pp.oh * pp.ow;
    if (o >= pp.batch * pp.channels * ohw) {
        return;
    }
    let plane = o / ohw;
    let r = o % ohw;
    let base = plane * pp.h * pp.w;
    var v = x[base + window_argmax(base, r / pp.ow, r % pp.ow)];
    if (pp.relu != 0u) {
        v = max(v, 0.0);
    }
    y[o] = v;
}

// Reads x, dy; writes dx. One invocation per dx element: sums dy over the windows holding it whose
// first maximum it is, windows in (oy, ox) order.
@compute @workgroup_size(64, 1, 1)
fn max_backward(@builtin(global_invocation_id) gid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    let hw = pp.h * pp.w;
    if (i >= pp.batch * pp.channels * hw) {
        return;
    }
    let plane = i / hw;
    let r = i % hw;
    let base = plane * hw;
    if (pp.relu != 0u && !(x[base + r] > 0.0)) {
        dx[i] = 0.0;
        return;
    }
    let ry = window_range(r / pp.w, pp.oh);
    let rx = window_range(r % pp.w, pp.ow);
    var s = 0.0;
    for (var oy = ry.x; oy < ry.y; oy++) {
        for (var ox = rx.x; ox < rx.y; ox++) {
            if (window_argmax(base, oy, ox) == r) {
                s = s + dy[(plane * pp.oh + oy) * pp.ow + ox];
            }
        }
    }
    dx[i] = s;
}

// Reads x, dy; writes dx. Windows that tile the input (stride == k, pad == 0: no overlap, no
// padding): one invocation per window writes its k x k elements of dx, dy to the window's first
// maximum and 0 to the others, the same values as `max_backward` (which finds the one window of
// each element and its maximum again per element: k k argmax scans per window). The last row and
// column of windows also zero the border that floor mode leaves outside every window.
@compute @workgroup_size(64, 1, 1)
fn max_backward_windows(@builtin(global_invocation_id) gid: vec3<u32>,
                        @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = gid.x + gid.y * nwg.x * 64u;
    let ohw = pp.oh * pp.ow;
    if (o >= pp.batch * pp.channels * ohw) {
        return;
    }
    let plane = o / ohw;
    let r = o % ohw;
    let oy = r / pp.ow;
    let ox = r % pp.ow;
    let base = plane * pp.h * pp.w;
    let at = window_argmax(base, oy, ox);
    var g = 0.0 + dy[o];
    if (pp.relu != 0u && !(x[base + at] > 0.0)) {
        g = 0.0;
    }
    // Rows and columns this invocation writes: its window's, extended to the border past the
    // last window.
    let y0 = oy * pp.k;
    var y1 = y0 + pp.k;
    if (oy + 1u == pp.oh) {
        y1 = pp.h;
    }
    let x0 = ox * pp.k;
    var x1 = x0 + pp.k;
    if (ox + 1u == pp.ow) {
        x1 = pp.w;
    }
    for (var iy = y0; iy < y1; iy++) {
        for (var ix = x0; ix < x1; ix++) {
            let i = iy * pp.w + ix;
            dx[base + i] = select(0.0, g, i == at);
        }
    }
}

// Reads x; writes y = (sum of each window's in-image elements, row-major) / (k k).
@compute @workgroup_size(64, 1, 1)
fn avg_forward(@builtin(global_invocation_id) gid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = gid.x + gid.y * nwg.x * 64u;
    let ohw = pp.oh * pp.ow;
    if (o >= pp.batch * pp.channels * ohw) {
        return;
    }
    let plane = o / ohw;
    let r = o % ohw;
    let base = plane * pp.h * pp.w;
    var s = 0.0;
    for (var ky = 0u; ky < pp.k; ky++) {
        let iy = i32((r / pp.ow) * pp.stride + ky) - i32(pp.pad);
        if (iy < 0 || iy >= i32(pp.h)) {
            continue;
        }
        for (var kx = 0u; kx < pp.k; kx++) {
            let ix = i32((r % pp.ow) * pp.stride + kx) - i32(pp.pad);
            if (ix >= 0 && ix < i32(pp.w)) {
                s = s + x[base + u32(iy) * pp.w + u32(ix)];
            }
        }
    }
    y[o] = s / f32(pp.k * pp.k);
}

// Reads dy; writes dx = sum over the windows holding each element, in (oy, ox) order, of dy / (k k).
@compute @workgroup_size(64, 1, 1)
fn avg_backward(@builtin(global_invocation_id) gid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    let hw = pp.h * pp.w;
    if (i >= pp.batch * pp.channels * hw) {
        return;
    }
    let plane = i / hw;
    let r = i % hw;
    let ry = window_range(r / pp.w, pp.oh);
    let rx = window_range(r % pp.w, pp.ow);
    let div = f32(pp.k * pp.k);
    var s = 0.0;
    for (var oy = ry.x; oy < ry.y; oy++) {
        for (var ox = rx.x; ox < rx.y; ox++) {
            s = s + dy[(plane * pp.oh + oy) * pp.ow + ox] / div;
        }
    }
    dx[i] = s;
}
