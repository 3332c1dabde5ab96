// masked.wgsl: the trainable masked layer of DST (method.md sections 1-3).
//
// A weight W viewed as rows x cols, a threshold t per row:
//   Q = |W| - t[row],  M = S(Q) (strict step),  P = W * M   (the layer computes with P)
// Forward is two dispatches: `mask_forward` (one pass over W: P and per-row keep counts) and
// `mask_reset` (the dead-layer reset: when the layer keeps <= 1% of W, thresholds go to 0 and P
// is recomputed, all on the GPU). Backward is one pass over G = dL/dP: `mask_backward` writes
// dL/dW and dL/dt (penalty term included). `penalty` accumulates alpha * sum exp(-t).
// Every reduction runs in a fixed order (no atomics): same inputs, same bits.

// Keep in sync with `MaskParams` in src/kernels/masked.rs.
struct MaskParams {
    rows: u32,
    cols: u32,
    alpha: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> mp: MaskParams;
@group(0) @binding(1) var<storage, read_write> weight: array<f32>;
@group(0) @binding(2) var<storage, read_write> threshold: array<f32>;
@group(0) @binding(3) var<storage, read_write> masked_weight: array<f32>;
@group(0) @binding(4) var<storage, read_write> row_keep: array<u32>;
@group(0) @binding(5) var<storage, read_write> layer_keep: array<u32>;
@group(0) @binding(6) var<storage, read_write> d_masked: array<f32>;
@group(0) @binding(7) var<storage, read_write> d_weight: array<f32>;
@group(0) @binding(8) var<storage, read_write> d_threshold: array<f32>;
@group(0) @binding(9) var<storage, read_write> stats: array<f32>;

const WG: u32 = 64u;
var<workgroup> red_u: array<u32, 64>;
var<workgroup> red_f: array<f32, 64>;

fn reduce_u32(lid: u32, v: u32) -> u32 {
    red_u[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red_u[lid] = red_u[lid] + red_u[lid + s];
        }
        workgroupBarrier();
    }
    let r = workgroupUniformLoad(&red_u[0]);
    workgroupBarrier();
    return r;
}

fn reduce_f32(lid: u32, v: f32) -> f32 {
    red_f[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red_f[lid] = red_f[lid] + red_f[lid + s];
        }
        workgroupBarrier();
    }
    let r = workgroupUniformLoad(&red_f[0]);
    workgroupBarrier();
    return r;
}

// One workgroup per row. Reads weight, threshold; writes masked_weight (P = W * S(|W| - t)) and
// row_keep[row] (the row's count of kept weights).
@compute @workgroup_size(64, 1, 1)
fn mask_forward(@builtin(local_invocation_id) lid: vec3<u32>,
                @builtin(workgroup_id) wid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= mp.rows) {
        return;
    }
    let t = threshold[row];
    let base = row * mp.cols;
    var kept = 0u;
    for (var j = lid.x; j < mp.cols; j += WG) {
        let w = weight[base + j];
        let m = dst_step(abs(w) - t);
        masked_weight[base + j] = w * m;
        kept += u32(m);
    }
    let total = reduce_u32(lid.x, kept);
    if (lid.x == 0u) {
        row_keep[row] = total;
    }
}

// One workgroup per row, after `mask_forward`. Every workgroup sums row_keep (in row order) to
// the layer's keep count; if count / numel <= 0.01 the layer is reset: its thresholds are set to
// 0 and its row of P is recomputed with t = 0. Writes layer_keep[0] = count before the decision,
// layer_keep[1] = count after it (what the layer keeps in this forward), layer_keep[2] += 1 on
// a reset (a running count of resets).
@compute @workgroup_size(64, 1, 1)
fn mask_reset(@builtin(local_invocation_id) lid: vec3<u32>,
              @builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= mp.rows) {
        return;
    }
    var part = 0u;
    for (var r = lid.x; r < mp.rows; r += WG) {
        part += row_keep[r];
    }
    let before = reduce_u32(lid.x, part);
    let numel = mp.rows * mp.cols;
    let reset = f32(before) / f32(numel) <= 0.01;
    let base = row * mp.cols;
    if (reset) {
        for (var j = lid.x; j < mp.cols; j += WG) {
            let w = weight[base + j];
            masked_weight[base + j] = w * dst_step(abs(w));
        }
    }
    if (reset && lid.x == 0u) {
        threshold[row] = 0.0;
    }
    // Workgroup 0 publishes the layer's counts; the after-reset total needs every row's count, so
    // it is recomputed here from W alone (t = 0), in row order.
    if (row == 0u) {
        var after = before;
        if (reset) {
            var part2 = 0u;
            for (var i = lid.x; i < numel; i += WG) {
                part2 += u32(dst_step(abs(weight[i])));
            }
            after = reduce_u32(lid.x, part2);
        }
        if (lid.x == 0u) {
            layer_keep[0] = before;
            layer_keep[1] = after;
            if (reset) {
                layer_keep[2] = layer_keep[2] + 1u;
            }
        }
    }
}

// One workgroup per row. Reads d_masked (G = dL/dP), weight, threshold; writes
//   d_weight[i][j]  = G*M + G*|W|*H(Q)
//   d_threshold[i]  = -sum_j G*W*H(Q) - alpha * exp(-t[i])
// with Q = |W| - t and M = S(Q), summed over j in a fixed order.
@compute @workgroup_size(64, 1, 1)
fn mask_backward(@builtin(local_invocation_id) lid: vec3<u32>,
                 @builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= mp.rows) {
        return;
    }
    let t = threshold[row];
    let base = row * mp.cols;
    var part = 0.0;
    for (var j = lid.x; j < mp.cols; j += WG) {
        let w = weight[base + j];
        let g = d_masked[base + j];
        let q = abs(w) - t;
        let h = long_tail(q);
        d_weight[base + j] = g * dst_step(q) + g * abs(w) * h;
        part += g * w * h;
    }
    let s = reduce_f32(lid.x, part);
    if (lid.x == 0u) {
        d_threshold[row] = -s - mp.alpha * exp(-t);
    }
}

// One workgroup. Reads threshold; stats[1] += alpha * sum_i exp(-t[i]) (the penalty's value; stats is the loss stats buffer).
@compute @workgroup_size(64, 1, 1)
fn penalty(@builtin(local_invocation_id) lid: vec3<u32>) {
    var part = 0.0;
    for (var i = lid.x; i < mp.rows; i += WG) {
        part += exp(-threshold[i]);
    }
    let s = reduce_f32(lid.x, part);
    if (lid.x == 0u) {
        stats[1] = stats[1] + mp.alpha * s;
    }
}
