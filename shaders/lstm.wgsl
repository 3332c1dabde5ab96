// lstm.wgsl: one LSTM layer over a sequence, forward and backpropagation through time
// (METHOD.md sections 1, 5 and 9). Gate order i, f, g (candidate, tanh), o, as PyTorch's nn.LSTM.
//
// Layouts (all row-major, time-major: row (t, b) = t * batch + b):
//   xproj  (T, B, 4H)   x_t P_ih^T + bias for every step, one GEMM before the steps
//   w_hh   (4H, H)      the recurrent weight the layer computes with (P_hh when masked)
//   h_pad  (T+1, B, H)  slot 0 = zeros (h_{-1}), slot t+1 = h_t
//   c_pad  (T+1, B, H)  slot 0 = zeros (c_{-1}), slot t+1 = c_t
//   gates  (T, B, 4H)   the activations i, f, g, o of every step (kept for the backward)
// Step t:  z = xproj[t] + h_{t-1} P_hh^T;  i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g)
//          c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t)
// The forward is one `lstm_step` dispatch per step, the backward one `lstm_step_backward` per
// step in reverse (the step index is baked into each dispatch's uniform). Every dot product runs
// in a fixed order (no atomics): same inputs, same bits. One invocation per (b, j) reads the row
// of h (forward) or dgates (backward) it needs straight from storage: all invocations of a
// workgroup read the same element at once (a broadcast on GPUs), and without workgroup tiles and
// barriers the kernels run twice as fast on CPU adapters (lavapipe).

// Keep in sync with `LstmParams` in src/kernels/lstm.rs.
struct LstmParams {
    batch: u32,
    hidden: u32,
    steps: u32,
    t: u32,        // the step this dispatch computes
    out_seq: u32,  // 1: y / dy is the sequence (T, B, H); 0: the last step's h only (B, H)
    d0: u32,       // swap01: source dims (d0, d1, d2)
    d1: u32,
    d2: u32,
}

@group(0) @binding(0) var<uniform> lp: LstmParams;
@group(0) @binding(1) var<storage, read> xproj: array<f32>;
@group(0) @binding(2) var<storage, read> w_hh: array<f32>;
@group(0) @binding(3) var<storage, read_write> h_pad: array<f32>;
@group(0) @binding(4) var<storage, read_write> c_pad: array<f32>;
@group(0) @binding(5) var<storage, read_write> gates: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;
@group(0) @binding(7) var<storage, read> dy: array<f32>;
@group(0) @binding(8) var<storage, read_write> dgates: array<f32>;
@group(0) @binding(9) var<storage, read_write> dc: array<f32>;
@group(0) @binding(10) var<storage, read> src: array<f32>;
@group(0) @binding(11) var<storage, read_write> dst: array<f32>;

const WG: u32 = 64u;

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

// tanh on a clamped argument: some back ends evaluate tanh through exp and overflow to NaN for
// large |x|; tanh(15) is 1 in f32 already.
fn tanh_c(x: f32) -> f32 {
    return tanh(clamp(x, -15.0, 15.0));
}

// One invocation per (batch row b, hidden unit j), 64 units per workgroup, at step t = lp.t.
// Reads xproj[t], src = w_hh transposed to (H, 4H) (one `swap01` per pass), h_pad[t] (h_{t-1}) and c_pad[t]; writes h_pad[t+1], c_pad[t+1],
// gates[t], and y: y[t] (sequence output) or, at the last step, y[b] (last-h output). At t = 0
// also writes slot 0 of h_pad and c_pad (zeros), so no state is carried over from an earlier
// batch.
@compute @workgroup_size(64, 1, 1)
fn lstm_step(@builtin(local_invocation_id) lid: vec3<u32>,
             @builtin(workgroup_id) wid: vec3<u32>) {
    let hs = lp.hidden;
    let t = lp.t;
    let b = wid.y;
    let j = wid.x * WG + lid.x;
    if (j >= hs || b >= lp.batch) {
        return;
    }
    let g4 = 4u * hs;
    let row = t * lp.batch + b;
    let z = xproj_z(row, j);
    var zi = z.x;
    var zf = z.y;
    var zg = z.z;
    var zo = z.w;
    let prev = row * hs; // slot t of h_pad / c_pad: h_{t-1}, c_{t-1}
    if (t > 0u) {
        // src = w_hh^T (H, 4H): neighbouring invocations (j) read neighbouring addresses.
        for (var col = 0u; col < hs; col++) {
            let hv = h_pad[prev + col];
            let wr = col * g4 + j;
            zi = fma(hv, src[wr], zi);
            zf = fma(hv, src[wr + hs], zf);
            zg = fma(hv, src[wr + 2u * hs], zg);
            zo = fma(hv, src[wr + 3u * hs], zo);
        }
    }
    forward_cell(b, j, zi, zf, zg, zo);
}

// The four gates' input projections (i, f, g, o) of unit j at row (t, b) of xproj.
fn xproj_z(row: u32, j: u32) -> vec4<f32> {
    let hs = lp.hidden;
    let xr = row * 4u * hs;
    return vec4<f32>(xproj[xr + j], xproj[xr + hs + j], xproj[xr + 2u * hs + j], xproj[xr + 3u * hs + j]);
}

// The cell part of the forward step t = lp.t for (b, j), given the four pre-activations z.
fn forward_cell(b: u32, j: u32, zi: f32, zf: f32, zg: f32, zo: f32) {
    let hs = lp.hidden;
    let t = lp.t;
    let row = t * lp.batch + b;
    let xr = row * 4u * hs;
    let prev = row * hs;
    let ig = sigmoid(zi);
    let fg = sigmoid(zf);
    let gg = tanh_c(zg);
    let og = sigmoid(zo);
    var c_prev = 0.0;
    if (t > 0u) {
        c_prev = c_pad[prev + j];
    } else {
        h_pad[b * hs + j] = 0.0;
        c_pad[b * hs + j] = 0.0;
    }
    let c = fg * c_prev + ig * gg;
    let h = og * tanh_c(c);
    let out = (row + lp.batch) * hs + j;
    c_pad[out] = c;
    h_pad[out] = h;
    gates[xr + j] = ig;
    gates[xr + hs + j] = fg;
    gates[xr + 2u * hs + j] = gg;
    gates[xr + 3u * hs + j] = og;
    if (lp.out_seq != 0u) {
        y[row * hs + j] = h;
    } else if (t + 1u == lp.steps) {
        y[b * hs + j] = h;
    }
}

// The cell part of the backward step t = lp.t for (b, j), given the recurrent term of dh_t:
// adds dy, then writes dc[t] and dgates[t] (the equations above `lstm_step_backward`).
fn backward_cell(b: u32, j: u32, dh_rec: f32) {
    let hs = lp.hidden;
    let g4 = 4u * hs;
    let row = lp.t * lp.batch + b;
    let last = lp.t + 1u == lp.steps;
    var dh = dh_rec;
    if (lp.out_seq != 0u) {
        dh += dy[row * hs + j];
    } else if (last) {
        dh += dy[b * hs + j];
    }
    let gr = row * g4;
    let ig = gates[gr + j];
    let fg = gates[gr + hs + j];
    let gg = gates[gr + 2u * hs + j];
    let og = gates[gr + 3u * hs + j];
    let c_prev = c_pad[row * hs + j];
    let tc = tanh_c(c_pad[(row + lp.batch) * hs + j]);
    var dct = dh * og * (1.0 - tc * tc);
    if (!last) {
        let nxt = row + lp.batch;
        dct += dc[nxt * hs + j] * gates[nxt * g4 + hs + j];
    }
    dc[row * hs + j] = dct;
    dgates[gr + j] = dct * gg * ig * (1.0 - ig);
    dgates[gr + hs + j] = dct * c_prev * fg * (1.0 - fg);
    dgates[gr + 2u * hs + j] = dct * ig * (1.0 - gg * gg);
    dgates[gr + 3u * hs + j] = dh * tc * og * (1.0 - og);
}

// One invocation per (batch row b, hidden unit j), 64 units per workgroup, at step t = lp.t, run
// for t = T-1 down to 0.
// Reads dy (dy[t] of a sequence output, or dy[b] at the last step of a last-h output), w_hh,
// gates[t] and gates[t+1], c_pad[t] and c_pad[t+1], dgates[t+1] and dc[t+1]; writes dc[t] (dL/dc_t)
// and dgates[t] (dL/dz of the four gates, pre-activation):
//   dh_t = dy_t + sum_k dgates[t+1][b][k] w_hh[k][j]      (recurrent term when t < T-1)
//   dc_t = dh_t * o * (1 - tanh(c_t)^2) + dc_{t+1} * f_{t+1}
//   dz_i = dc_t g i (1-i),  dz_f = dc_t c_{t-1} f (1-f),  dz_g = dc_t i (1-g^2),
//   dz_o = dh_t tanh(c_t) o (1-o)
@compute @workgroup_size(64, 1, 1)
fn lstm_step_backward(@builtin(local_invocation_id) lid: vec3<u32>,
                      @builtin(workgroup_id) wid: vec3<u32>) {
    let hs = lp.hidden;
    let t = lp.t;
    let b = wid.y;
    let j = wid.x * WG + lid.x;
    if (j >= hs || b >= lp.batch) {
        return;
    }
    let g4 = 4u * hs;
    let row = t * lp.batch + b;
    let last = t + 1u == lp.steps;
    var dh = 0.0;
    if (!last) {
        let base = (row + lp.batch) * g4;
        for (var k = 0u; k < g4; k++) {
            dh = fma(dgates[base + k], w_hh[k * hs + j], dh);
        }
    }
    backward_cell(b, j, dh);
}

// Register-blocked forms of the two steps for CPU adapters, over vec4 views of the same buffers
// (H % 4 == 0, 16-byte aligned). lavapipe runs a workgroup's invocations as SIMD lanes along x
// and issues every load per lane, so the plain kernels spend more on loads than on arithmetic
// (`lstm_step`: 1.25 scalar loads per multiply-add). The same sums in the same order as the plain
// kernels (each accumulator's multiply-adds in increasing k), hence the same bits; rows past the
// batch are clamped for the loads and skipped for the stores.
@group(0) @binding(12) var<storage, read> src4: array<vec4<f32>>;         // w_hh^T (H, 4H)
@group(0) @binding(13) var<storage, read_write> h4: array<vec4<f32>>;     // h_pad
@group(0) @binding(14) var<storage, read> w_hh4: array<vec4<f32>>;        // w_hh (4H, H)
@group(0) @binding(15) var<storage, read_write> dgates4: array<vec4<f32>>; // dgates

const FB: u32 = 2u; // lstm_step_blocked: batch rows per invocation (x 4 units x 4 gates)

// Invocation (x, y) computes units [4x, 4x + 4) of batch rows [FB y, FB y + FB): per four steps
// of the length-H sums FB vec4 of h_{t-1}, and per step 4 vec4 of w_hh^T (one per gate), into
// 4 FB vec4 accumulators (on lavapipe 4 rows took 1.3-1.8x as long as 2, 1 row 1.5x: registers
// against loads). Workgroups: (ceil(H / 32), ceil(B / FB)). Bindings: `lstm_step`'s with src4
// (w_hh^T) in place of src, plus h4 = h_pad.
@compute @workgroup_size(8, 1, 1)
fn lstm_step_blocked(@builtin(global_invocation_id) gid: vec3<u32>) {
    let hs = lp.hidden;
    let t = lp.t;
    let j0 = gid.x * 4u;
    let b0 = gid.y * FB;
    if (j0 >= hs || b0 >= lp.batch) {
        return;
    }
    let g4 = 4u * hs;
    let h4s = hs / 4u; // vec4 per row of h, per gate block of w_hh^T's rows
    var hb: array<u32, FB>; // h_{t-1} row of each batch row, in vec4 (clamped)
    var acc: array<vec4<f32>, 8>; // [row * 4 + gate], FB = 2
    for (var r = 0u; r < FB; r++) {
        let row = t * lp.batch + min(b0 + r, lp.batch - 1u);
        hb[r] = row * h4s;
        for (var q = 0u; q < 4u; q++) {
            let z = row * g4 + q * hs + j0;
            acc[r * 4u + q] = vec4<f32>(xproj[z], xproj[z + 1u], xproj[z + 2u], xproj[z + 3u]);
        }
    }
    if (t > 0u) {
        let jq = gid.x;
        for (var kq = 0u; kq < h4s; kq++) {
            var hv: array<vec4<f32>, FB>;
            for (var r = 0u; r < FB; r++) {
                hv[r] = h4[hb[r] + kq];
            }
            for (var k = 0u; k < 4u; k++) {
                let w_row = (kq * 4u + k) * 4u * h4s; // row 4 kq + k of w_hh^T, in vec4
                var wv: array<vec4<f32>, 4>; // [gate]
                for (var q = 0u; q < 4u; q++) {
                    wv[q] = src4[w_row + q * h4s + jq];
                }
                for (var r = 0u; r < FB; r++) {
                    let hk = vec4<f32>(hv[r][k]);
                    for (var q = 0u; q < 4u; q++) {
                        acc[r * 4u + q] = fma(hk, wv[q], acc[r * 4u + q]);
                    }
                }
            }
        }
    }
    for (var r = 0u; r < FB; r++) {
        if (b0 + r < lp.batch) {
            for (var u = 0u; u < 4u; u++) {
                forward_cell(b0 + r, j0 + u, acc[r * 4u][u], acc[r * 4u + 1u][u],
                             acc[r * 4u + 2u][u], acc[r * 4u + 3u][u]);
            }
        }
    }
}

const BB: u32 = 8u; // lstm_step_backward_blocked: batch rows per invocation (x 8 units)

// Invocation (x, y) computes the recurrent dh of units [8x, 8x + 8) and batch rows
// [BB y, BB y + BB): per four steps of the length-4H sums, BB vec4 of dgates[t+1] and 8 of w_hh
// (4 k x 2 unit quads) into 2 BB vec4 accumulators; then finishes each as `lstm_step_backward`
// does. Workgroups: (ceil(H / 64), ceil(B / BB)). Bindings: `lstm_step_backward`'s with w_hh4
// in place of w_hh, plus dgates4 = dgates.
@compute @workgroup_size(8, 1, 1)
fn lstm_step_backward_blocked(@builtin(global_invocation_id) gid: vec3<u32>) {
    let hs = lp.hidden;
    let t = lp.t;
    let j0 = gid.x * 8u;
    let b0 = gid.y * BB;
    if (j0 >= hs || b0 >= lp.batch) {
        return;
    }
    let h4s = hs / 4u;
    var acc: array<vec4<f32>, 16>; // [row * 2 + unit quad], BB = 8
    for (var i = 0u; i < 2u * BB; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    if (t + 1u < lp.steps) {
        let qa = gid.x * 2u;
        let qb = min(qa + 1u, h4s - 1u);
        var db: array<u32, BB>; // dgates[t+1] row of each batch row, in vec4 (clamped)
        for (var r = 0u; r < BB; r++) {
            db[r] = ((t + 1u) * lp.batch + min(b0 + r, lp.batch - 1u)) * h4s * 4u;
        }
        for (var kq = 0u; kq < hs; kq++) { // 4H / 4 quads of k
            var wv: array<vec4<f32>, 8>; // [k within the quad * 2 + unit quad]
            for (var k = 0u; k < 4u; k++) {
                let w_row = (kq * 4u + k) * h4s;
                wv[2u * k] = w_hh4[w_row + qa];
                wv[2u * k + 1u] = w_hh4[w_row + qb];
            }
            for (var r = 0u; r < BB; r++) {
                let dv = dgates4[db[r] + kq];
                var lo = acc[2u * r];
                var hi = acc[2u * r + 1u];
                for (var k = 0u; k < 4u; k++) {
                    lo = fma(vec4<f32>(dv[k]), wv[2u * k], lo);
                    hi = fma(vec4<f32>(dv[k]), wv[2u * k + 1u], hi);
                }
                acc[2u * r] = lo;
                acc[2u * r + 1u] = hi;
            }
        }
    }
    for (var r = 0u; r < BB; r++) {
        for (var u = 0u; u < 8u; u++) {
            if (b0 + r < lp.batch && j0 + u < hs) {
                backward_cell(b0 + r, j0 + u, acc[2u * r + u / 4u][u % 4u]);
            }
        }
    }
}

// The ways the GPU steps split their recurrent sums, forward and backward: 4 fits the WebGPU
// default of 256 invocations per workgroup; `kernels::lstm::source` rewrites these lines to 8
// and 16 for adapters whose workgroups hold 512 and 1024. The partial sums of invocation (j, q)
// sit at [q][j].
const SPLIT: u32 = 4u;
const SPLIT_BACK: u32 = 4u;
var<workgroup> z_part: array<vec4<f32>, WG * SPLIT>; // for lstm_step_split

// GPU variant of `lstm_step` (same bindings, same results up to the order of the recurrent
// sums): workgroup 64 x SPLIT; invocation (j, q) sums part q of the H-long recurrent dot products
// of the four gates (part 0 from the input projection, the others from 0), the partial sums are
// added in order q = 0, 1, ..., and invocation (j, 0) finishes as `lstm_step` does. A serial
// chain SPLIT times shorter and SPLIT times the invocations: one invocation per (b, j) leaves a
// GPU a few warps per multiprocessor, each waiting on an H-long chain of loads.
@compute @workgroup_size(64, SPLIT, 1)
fn lstm_step_split(@builtin(local_invocation_id) lid: vec3<u32>,
                   @builtin(workgroup_id) wid: vec3<u32>) {
    let hs = lp.hidden;
    let t = lp.t;
    let b = wid.y;
    let j = wid.x * WG + lid.x;
    let q = lid.y;
    let g4 = 4u * hs;
    let row = t * lp.batch + b;
    let live = j < hs && b < lp.batch;
    var z = vec4<f32>(0.0);
    if (live && q == 0u) {
        z = xproj_z(row, j);
    }
    if (live && t > 0u) {
        let prev = row * hs;
        let chunk = (hs + SPLIT - 1u) / SPLIT;
        let k1 = min((q + 1u) * chunk, hs);
        for (var col = q * chunk; col < k1; col++) {
            let hv = h_pad[prev + col];
            let wr = col * g4 + j;
            z.x = fma(hv, src[wr], z.x);
            z.y = fma(hv, src[wr + hs], z.y);
            z.z = fma(hv, src[wr + 2u * hs], z.z);
            z.w = fma(hv, src[wr + 3u * hs], z.w);
        }
    }
    z_part[q * WG + lid.x] = z;
    workgroupBarrier();
    if (!live || q != 0u) {
        return;
    }
    var s = z_part[lid.x];
    for (var p = 1u; p < SPLIT; p++) {
        s += z_part[p * WG + lid.x];
    }
    forward_cell(b, j, s.x, s.y, s.z, s.w);
}

var<workgroup> dh_part: array<f32, WG * SPLIT_BACK>; // for lstm_step_backward_split

// GPU variant of `lstm_step_backward` (same bindings, same results up to the order of the
// recurrent sum): workgroup 64 x SPLIT_BACK; invocation (j, q) sums part q of the 4H-long
// recurrent dot product, the partial sums are added in order q = 0, 1, ..., and invocation (j, 0)
// finishes as `lstm_step_backward` does. A serial chain SPLIT_BACK times shorter: the backward is
// latency-bound on a GPU. (CPU adapters run the plain kernel: barriers cost more than they save.)
@compute @workgroup_size(64, SPLIT_BACK, 1)
fn lstm_step_backward_split(@builtin(local_invocation_id) lid: vec3<u32>,
                            @builtin(workgroup_id) wid: vec3<u32>) {
    let hs = lp.hidden;
    let t = lp.t;
    let b = wid.y;
    let j = wid.x * WG + lid.x;
    let q = lid.y;
    let g4 = 4u * hs;
    let row = t * lp.batch + b;
    let last = t + 1u == lp.steps;
    let live = j < hs && b < lp.batch;
    var part = 0.0;
    if (live && !last) {
        let base = (row + lp.batch) * g4;
        let chunk = (g4 + SPLIT_BACK - 1u) / SPLIT_BACK;
        let k1 = min((q + 1u) * chunk, g4);
        for (var k = q * chunk; k < k1; k++) {
            part = fma(dgates[base + k], w_hh[k * hs + j], part);
        }
    }
    dh_part[q * WG + lid.x] = part;
    workgroupBarrier();
    if (!live || q != 0u) {
        return;
    }
    var dh = dh_part[lid.x];
    for (var p = 1u; p < SPLIT_BACK; p++) {
        dh += dh_part[p * WG + lid.x];
    }
    backward_cell(b, j, dh);
}

// One invocation per element. Reads src (d0, d1, d2); writes dst (d1, d0, d2) with
// dst[a1][a0][c] = src[a0][a1][c] (batch-major <-> time-major).
@compute @workgroup_size(256, 1, 1)
fn swap01(@builtin(global_invocation_id) gid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    let n = lp.d0 * lp.d1 * lp.d2;
    if (i >= n) {
        return;
    }
    let c = i % lp.d2;
    let r = i / lp.d2;
    let a0 = r % lp.d0;
    let a1 = r / lp.d0;
    dst[i] = src[(a0 * lp.d1 + a1) * lp.d2 + c];
}

// ---- The recurrent products from P_hh's kept weights (a masked layer that keeps few) ----
//
// `ell_build` (shaders/sparse.wgsl) lists P_hh's (4H x H, row-major) nonzeros each step: row
// lists (row r = gH + j: its kept columns k ascending, at r H, count list_cnt[r]) and column
// lists (column j: its kept rows ascending, at 4H H + j 4H, count list_cnt[4H + j]). The two
// kernels below are `lstm_step` and `lstm_step_backward` with their recurrent sums over those
// lists: the same fma chains in the same order without the terms whose weight is zero (which
// leave a sum as it is), so the same bits. One invocation per (b, j) as in the plain kernels,
// but a workgroup is one unit j over 64 batch rows: its lists are the same for every lane (one
// load for all), and only the h (dgates) loads differ per lane. With the lanes along j (each
// lane its own rows' lists, the loop as long as the longest) LSTM-a's 56 listed forward steps
// took 42-44 ms per training step on lavapipe, 28-34 ms this way; the backward 33-35 and 26-31.
@group(0) @binding(16) var<storage, read> list_idx: array<u32>;
@group(0) @binding(17) var<storage, read> list_val: array<f32>;
@group(0) @binding(18) var<storage, read> list_cnt: array<u32>;

// z_g += sum over the kept k of row gH + j of h_{t-1}[b][k] P_hh[gH + j][k].
fn listed_row_sum(z: f32, r: u32, prev: u32) -> f32 {
    let hs = lp.hidden;
    let base = r * hs;
    let n = list_cnt[r];
    var acc = z;
    for (var e = 0u; e < n; e++) {
        acc = fma(h_pad[prev + list_idx[base + e]], list_val[base + e], acc);
    }
    return acc;
}

// Reads xproj[t], the row lists, h_pad[t], c_pad[t]; writes what `lstm_step` writes.
@compute @workgroup_size(64, 1, 1)
fn lstm_step_listed(@builtin(local_invocation_id) lid: vec3<u32>,
                    @builtin(workgroup_id) wid: vec3<u32>) {
    let hs = lp.hidden;
    let t = lp.t;
    let b = wid.y * WG + lid.x;
    let j = wid.x;
    if (j >= hs || b >= lp.batch) {
        return;
    }
    let row = t * lp.batch + b;
    let z = xproj_z(row, j);
    var zi = z.x;
    var zf = z.y;
    var zg = z.z;
    var zo = z.w;
    if (t > 0u) {
        let prev = row * hs;
        zi = listed_row_sum(zi, j, prev);
        zf = listed_row_sum(zf, hs + j, prev);
        zg = listed_row_sum(zg, 2u * hs + j, prev);
        zo = listed_row_sum(zo, 3u * hs + j, prev);
    }
    forward_cell(b, j, zi, zf, zg, zo);
}

// Reads dy, the column lists, gates[t] and gates[t+1], c_pad[t] and c_pad[t+1], dgates[t+1] and
// dc[t+1]; writes what `lstm_step_backward` writes: the recurrent term of dh_t is the sum over
// the kept rows k of column j of dgates[t+1][b][k] P_hh[k][j].
@compute @workgroup_size(64, 1, 1)
fn lstm_step_backward_listed(@builtin(local_invocation_id) lid: vec3<u32>,
                             @builtin(workgroup_id) wid: vec3<u32>) {
    let hs = lp.hidden;
    let t = lp.t;
    let b = wid.y * WG + lid.x;
    let j = wid.x;
    if (j >= hs || b >= lp.batch) {
        return;
    }
    let g4 = 4u * hs;
    let row = t * lp.batch + b;
    var dh = 0.0;
    if (t + 1u != lp.steps) {
        let base = (row + lp.batch) * g4;
        let lb = g4 * hs + j * g4;
        let n = list_cnt[g4 + j];
        for (var e = 0u; e < n; e++) {
            dh = fma(dgates[base + list_idx[lb + e]], list_val[lb + e], dh);
        }
    }
    backward_cell(b, j, dh);
}
