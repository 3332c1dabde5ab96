// masked.wgsl: the trainable masked layer of DST (METHOD.md sections 1-3).
//
// A weight W viewed as rows x cols, a threshold t per row:
//   Q = |W| - t[row],  M = S(Q) (strict step),  P = W * M   (the layer computes with P)
// Forward is two dispatches: `mask_forward` (one pass over W: P and per-row keep counts) and
// `mask_reset` (the dead-layer reset: when the layer keeps <= 1% of W, thresholds go to 0 and P
// is recomputed, all on the GPU). `mask_forward_rowwise` is the CPU-adapter variant, and on CPU
// adapters a small weight takes both in one dispatch (`mask_pass_small4`). Backward is one pass
// over G = dL/dP: `mask_backward` (CPU adapters) or `mask_backward_rows` (GPUs) writes dL/dW and
// dL/dt (penalty term included); a narrow linear layer on a CPU adapter computes G itself in the
// same dispatch (`narrow_weight_grad`). `penalty` accumulates alpha * sum exp(-t).
// Every reduction runs in a fixed order (no atomics): same inputs, same bits.

// Keep in sync with `MaskParams` in src/kernels/masked.rs.
struct MaskParams {
    rows: u32,
    cols: u32,
    alpha: f32,   // mask_backward, penalty: times alpha_scale[0] (the trainer's alpha control)
    groups: u32,  // mask_reset: the rows form `groups` stacked matrices of rows/groups rows each
    policy: u32,  // mask_reset: 0 the paper's reset, 1 the floor, 2 none, 3 count only
    n_switch: u32,   // mask_reset: dispatches whose sizes the matrix's keep count decides
    sparse_max: u32, // mask_reset: a count at most this runs the sparse products
    p_transposed: u32, // mask_forward*, mask_reset: P stored transposed (cols x rows), one matrix
    penalty: u32,      // mask_reset: also add the penalty's value to stats[1] (one matrix)
    recompute: u32,    // mask_reset, floor: layer_keep[4 ..] holds the recompute dispatch (below)
    batch: u32,        // narrow_weight_grad: the samples summed over
    _pad2: u32,
}

const RESET_PAPER: u32 = 0u;
const RESET_FLOOR: u32 = 1u;
const RESET_NONE: u32 = 2u;
const RESET_COUNT: u32 = 3u;

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
@group(0) @binding(10) var<storage, read> alpha_scale: array<f32>;
@group(0) @binding(11) var<storage, read_write> switch_args: array<u32>;
@group(0) @binding(12) var<storage, read_write> weight4: array<vec4<f32>>; // weight as vec4s (rowwise4; read_write as `weight`: it shares the arena with the thresholds)
@group(0) @binding(13) var<storage, read> nw_dy: array<f32>;         // narrow_weight_grad: dy, batch x rows
@group(0) @binding(14) var<storage, read> nw_x4: array<vec4<f32>>;   // narrow_weight_grad: x, batch x cols, as vec4s
@group(0) @binding(15) var<storage, read_write> nw_db: array<f32>;   // narrow_weight_grad: the bias gradient
// threshold_grad: threshold, d_masked and d_threshold as vec4s (read_write as `threshold`: the
// arena views they are)
@group(0) @binding(16) var<storage, read_write> threshold4: array<vec4<f32>>;
@group(0) @binding(17) var<storage, read_write> d_masked4: array<vec4<f32>>;
@group(0) @binding(18) var<storage, read_write> d_threshold4: array<vec4<f32>>;

const WG: u32 = 64u;

// Where P's element (row, col) lives: row-major like W, or transposed (a linear layer's P, so
// that its forward reads it along the output index: the fast GEMM form on CPU adapters).
fn p_at(row: u32, col: u32) -> u32 {
    if (mp.p_transposed != 0u) {
        return col * mp.rows + row;
    }
    return row * mp.cols + col;
}

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

// One workgroup per row. Reads weight, threshold; writes masked_weight (P = W * S(|W| - t)),
// row_keep[row] (the row's count of kept weights) and row_keep[rows + row] (the row's largest
// |w|, as f32 bits: what the floor policy needs, found while every weight is read anyway).
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
    var big = 0.0;
    for (var j = lid.x; j < mp.cols; j += WG) {
        let w = weight[base + j];
        let m = dst_step(abs(w) - t);
        masked_weight[p_at(row, j)] = w * m;
        kept += u32(m);
        big = max(big, abs(w));
    }
    // Both reductions in one tree (half the barriers; a sum of integers and a maximum: exact in
    // any order).
    red_u[lid.x] = kept;
    red_f[lid.x] = big;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid.x < s) {
            red_u[lid.x] = red_u[lid.x] + red_u[lid.x + s];
            red_f[lid.x] = max(red_f[lid.x], red_f[lid.x + s]);
        }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        row_keep[row] = red_u[0];
        row_keep[mp.rows + row] = bitcast<u32>(red_f[0]);
    }
}

// The switch between a layer's dense and sparse products (shaders/sparse.wgsl), for a single
// matrix (groups == 1): `n_switch` dispatches, each with a template of 4 words (workgroups x, y,
// z, and its path: 0 dense, 1 sparse) at switch_args[3 n_switch + 4 i]; its live workgroup counts
// switch_args[3 i ..] (what the indirect dispatch reads) become the template when its path is
// the one this step takes (sparse when the matrix keeps at most `sparse_max` weights), else 0.
// Slots of path 2 (the input-sparse product) are left to `input_lists`.
fn set_switch(lane: u32, kept: u32) {
    // Path 2: a dispatch another pass routes (sparse.wgsl's `input_lists`), left alone.
    if (lane < mp.n_switch && switch_args[3u * mp.n_switch + 4u * lane + 3u] != 2u) {
        let t = 3u * mp.n_switch + 4u * lane;
        let on = (switch_args[t + 3u] == 1u) == (kept <= mp.sparse_max);
        for (var a = 0u; a < 3u; a++) {
            switch_args[3u * lane + a] = select(0u, switch_args[t + a], on);
        }
    }
}

// The floor's recompute (`recompute` set: the floor of a one-matrix mask): the mask pass records
// its second `mask_forward` as an indirect dispatch whose workgroup counts are layer_keep[4 ..
// 6], template at layer_keep[7 .. 9]: the counts become the template when the floor acted (the
// thresholds moved, P must follow), else 0 (P is already right: the pass does no work, though an
// indirect dispatch still costs lavapipe about 30 us: BENCHMARKS.md, sixth round).
fn set_recompute(lane: u32, acted: bool) {
    if (mp.recompute != 0u && mp.policy == RESET_FLOOR && lane < 3u) {
        layer_keep[4u + lane] = select(0u, layer_keep[7u + lane], acted);
    }
}

// The penalty's value, fused into the mask pass of a one-matrix layer in training (`penalty` set
// on the pass's last `mask_reset`, after any reset of this forward): stats[1] += alpha *
// alpha_scale[0] * sum_i exp(-t[i]), summed as `penalty` does. All invocations call it.
fn add_penalty(lane: u32) {
    if (mp.penalty == 0u) {
        return;
    }
    var part = 0.0;
    for (var i = lane; i < mp.rows; i += WG) {
        part += exp(-threshold[i]);
    }
    let s = reduce_f32(lane, part);
    if (lane == 0u) {
        stats[1] = stats[1] + mp.alpha * alpha_scale[0] * s;
    }
}

// After `mask_forward`, one workgroup of 64 per matrix: the rows form `groups` stacked matrices
// of rows/groups rows each (1 for a linear or conv layer; 4 for an LSTM's gate-stacked weight),
// each with its own decision. Sums its rows' row_keep (in a fixed order) to the matrix's keep
// count; if count / numel <= 0.01 the matrix is dying and `policy` acts (a rare event, so one
// workgroup does it):
//   paper: its thresholds are set to 0 and P and row_keep's counts are recomputed (METHOD.md
//          section 3);
//   floor: every row keeps at least its strongest weight: a threshold at or above the row's
//          largest |w| (found by `mask_forward`) comes down to 0.999 of it, the others stay, so
//          the matrix cannot die and
//          does not jump back to dense; P and row_keep are not recomputed here: the layer records
//          `mask_forward` and a `count` pass after this one (`Masked::mask_pass`);
//   none:  nothing happens (a matrix may die);
//   count: no decision at all: layer_keep[4g+1] = the count (the pass after a floor).
// For matrix g writes layer_keep[4g] = count before the decision, layer_keep[4g+1] = count after
// it (what the matrix keeps in this forward; for floor: written by the count pass),
// layer_keep[4g+2] += 1 when the policy acted. Where it writes the count after, it also sets
// the layer's switch (`set_switch`; `n_switch` = 0: none) and adds the penalty (`add_penalty`).
@compute @workgroup_size(64, 1, 1)
fn mask_reset(@builtin(local_invocation_id) lid: vec3<u32>,
              @builtin(workgroup_id) wid: vec3<u32>) {
    reset_matrix(lid.x, wid.x);
}

// `mask_reset`'s work for matrix g, by the 64 lanes of one workgroup (`lane`: the caller's
// local index).
fn reset_matrix(lane: u32, g: u32) {
    let grows = mp.rows / mp.groups;
    let r0 = g * grows;
    var part = 0u;
    for (var r = lane; r < grows; r += WG) {
        part += row_keep[r0 + r];
    }
    let before = reduce_u32(lane, part);
    let numel = grows * mp.cols;
    let e0 = r0 * mp.cols;
    if (mp.policy == RESET_COUNT) {
        if (lane == 0u) {
            layer_keep[4u * g + 1u] = before;
        }
        set_switch(lane, before);
        add_penalty(lane);
        return;
    }
    // keep ratio <= 1%, in integers: exactly torch's f32 test `sum / numel <= 0.01` (an f32
    // division may be off by ulps in WGSL).
    let dying = before <= numel / 100u;
    if (!dying || mp.policy == RESET_NONE) {
        if (lane == 0u) {
            layer_keep[4u * g] = before;
            layer_keep[4u * g + 1u] = before;
        }
        set_recompute(lane, false);
        set_switch(lane, before);
        add_penalty(lane);
        return;
    }
    if (mp.policy == RESET_FLOOR) {
        // Every row keeps at least its strongest weight: a threshold at or above the row's
        // largest |w| comes down to 0.999 of it (rows are independent: one invocation per row).
        for (var r = lane; r < grows; r += WG) {
            let m = bitcast<f32>(row_keep[mp.rows + r0 + r]); // the row's largest |w|
            threshold[r0 + r] = min(threshold[r0 + r], m * 0.999);
        }
        if (lane == 0u) {
            layer_keep[4u * g] = before;
            layer_keep[4u * g + 2u] = layer_keep[4u * g + 2u] + 1u;
        }
        set_recompute(lane, true);
        return;
    }
    // The paper's reset: thresholds to 0, P and its rows' keep counts recomputed (a row per
    // lane at a time: the input-sparse forward's compaction reads the counts).
    var kept = 0u;
    for (var r = lane; r < grows; r += WG) {
        var row_kept = 0u;
        for (var c = 0u; c < mp.cols; c++) {
            let i = r * mp.cols + c;
            let w = weight[e0 + i];
            let m = dst_step(abs(w));
            // e0 = 0 when P is transposed (one matrix).
            masked_weight[p_at((e0 + i) / mp.cols, (e0 + i) % mp.cols)] = w * m;
            row_kept += u32(m);
        }
        row_keep[r0 + r] = row_kept;
        kept += row_kept;
    }
    for (var r = lane; r < grows; r += WG) {
        threshold[r0 + r] = 0.0;
    }
    let after = reduce_u32(lane, kept);
    if (lane == 0u) {
        layer_keep[4u * g] = before;
        layer_keep[4u * g + 1u] = after;
        layer_keep[4u * g + 2u] = layer_keep[4u * g + 2u] + 1u;
    }
    set_switch(lane, after);
    add_penalty(lane);
}

// The switch of a weight of `groups` stacked matrices (an LSTM's four gates, each reset on its
// own by `mask_reset`): after the mask pass, sets it from the weight's keep count, the sum of
// the matrices' counts after their decisions (layer_keep[4g + 1]). One workgroup.
@compute @workgroup_size(64, 1, 1)
fn switch_from_groups(@builtin(local_invocation_id) lid: vec3<u32>) {
    var kept = 0u;
    for (var g = 0u; g < mp.groups; g++) {
        kept += layer_keep[4u * g + 1u];
    }
    set_switch(lid.x, kept);
}

// Eight rows per workgroup, eight invocations per row (columns strided by 8, partial sums
// reduced in a fixed order). Reads d_masked (G = dL/dP), weight, threshold, alpha_scale; writes
//   d_weight[i][j]  = G*M + G*|W|*H(Q)
//   d_threshold[i]  = -sum_j G*W*H(Q) - alpha * exp(-t[i])    (alpha = mp.alpha * alpha_scale[0])
// with Q = |W| - t and M = S(Q).
@compute @workgroup_size(8, 8, 1)
fn mask_backward(@builtin(local_invocation_id) lid: vec3<u32>,
                 @builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = (wid.x + wid.y * nwg.x) * 8u + lid.y;
    var part = 0.0;
    var t = 0.0;
    if (row < mp.rows) {
        t = threshold[row];
        let base = row * mp.cols;
        for (var j = lid.x; j < mp.cols; j += 8u) {
            let r = mask_grads(d_masked[base + j], weight[base + j], t);
            d_weight[base + j] = r.x;
            part += r.y;
        }
    }
    let slot = lid.y * 8u + lid.x;
    red_f[slot] = part;
    workgroupBarrier();
    for (var st = 4u; st > 0u; st = st / 2u) {
        if (lid.x < st) {
            red_f[slot] = red_f[slot] + red_f[slot + st];
        }
        workgroupBarrier();
    }
    if (lid.x == 0u && row < mp.rows) {
        d_threshold[row] = -red_f[slot] - mp.alpha * alpha_scale[0] * exp(-t);
    }
}

// GPU variant of `mask_backward` (same reads and writes): one workgroup of 64 per row, columns
// strided by 64 (coalesced), the row's partial sums reduced in a fixed order. The 8 x 8 form
// above gives a GPU too few workgroups (38 for LeNet-300-100's fc1, 98 columns per invocation:
// 32 us on an H100 against about 6 here; BENCHMARKS.md); CPU adapters keep it.
@compute @workgroup_size(64, 1, 1)
fn mask_backward_rows(@builtin(local_invocation_id) lid: vec3<u32>,
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
        let r = mask_grads(d_masked[base + j], weight[base + j], t);
        d_weight[base + j] = r.x;
        part += r.y;
    }
    let s = reduce_f32(lid.x, part);
    if (lid.x == 0u) {
        d_threshold[row] = -s - mp.alpha * alpha_scale[0] * exp(-t);
    }
}

// The rowwise mask passes (CPU adapters): one invocation per row, columns in order, no workgroup
// memory or barriers (cheaper than reductions on lavapipe). Writes row_keep (the row's count and
// its largest |w|) and, with `write_p` (a constant at each call: each entry point compiles its own
// form), P.
fn rowwise_pass(gid: vec3<u32>, nwg: vec3<u32>, write_p: bool) {
    let row = gid.x + gid.y * nwg.x * WG;
    if (row >= mp.rows) {
        return;
    }
    let t = threshold[row];
    let base = row * mp.cols;
    var kept = 0u;
    var big = 0.0;
    for (var j = 0u; j < mp.cols; j++) {
        let w = weight[base + j];
        let m = dst_step(abs(w) - t);
        if (write_p) {
            masked_weight[p_at(row, j)] = w * m;
        }
        kept += u32(m);
        big = max(big, abs(w));
    }
    row_keep[row] = kept;
    row_keep[mp.rows + row] = bitcast<u32>(big);
}

// `rowwise_pass` reading each row's weights four at a time (mp.cols % 4 == 0, weight 16-byte
// aligned): a quarter of the load instructions, which lavapipe issues per lane. The same values
// in the same order.
fn rowwise_pass4(gid: vec3<u32>, nwg: vec3<u32>, write_p: bool) {
    let row = gid.x + gid.y * nwg.x * WG;
    if (row >= mp.rows) {
        return;
    }
    row_pass4(row, write_p);
}

// `rowwise_pass4`'s work for one row.
fn row_pass4(row: u32, write_p: bool) {
    let t = threshold[row];
    let base4 = row * (mp.cols / 4u);
    var kept = 0u;
    var big = 0.0;
    for (var j4 = 0u; j4 < mp.cols / 4u; j4++) {
        let w4 = weight4[base4 + j4];
        for (var c = 0u; c < 4u; c++) {
            let w = w4[c];
            let m = dst_step(abs(w) - t);
            if (write_p) {
                masked_weight[p_at(row, 4u * j4 + c)] = w * m;
            }
            kept += u32(m);
            big = max(big, abs(w));
        }
    }
    row_keep[row] = kept;
    row_keep[mp.rows + row] = bitcast<u32>(big);
}

// CPU-adapter variant of `mask_forward` (same reads and writes, row maxima included).
@compute @workgroup_size(64, 1, 1)
fn mask_forward_rowwise(@builtin(global_invocation_id) gid: vec3<u32>,
                        @builtin(num_workgroups) nwg: vec3<u32>) {
    rowwise_pass(gid, nwg, true);
}

// `mask_forward_rowwise` reading each row's weights four at a time.
@compute @workgroup_size(64, 1, 1)
fn mask_forward_rowwise4(@builtin(global_invocation_id) gid: vec3<u32>,
                         @builtin(num_workgroups) nwg: vec3<u32>) {
    rowwise_pass4(gid, nwg, true);
}

// `mask_forward_rowwise` without P: row_keep only (counts and maxima; P stays bound, as the
// shared body names it). For a layer whose P^T nothing reads (the plan's first layer on a CPU
// adapter: sparse.wgsl's `masked_columns` writes the columns its forward reads): the pass reads
// W once and writes two words per row where the full pass writes every element of P (on
// lavapipe, fc1 of LeNet-300-100: about 0.13 against 0.44-0.54 ms, `dst bench --profile`).
@compute @workgroup_size(64, 1, 1)
fn mask_count_rowwise(@builtin(global_invocation_id) gid: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>) {
    rowwise_pass(gid, nwg, false);
}

// Rows per workgroup of `mask_count_rowwise4` (src/kernels/masked.rs too): lavapipe hands whole
// workgroups to its threads, and fc1's 300 rows in 5 workgroups of 64 split 3:2 over two cores;
// in 19 of 16, evenly (0.16 -> 0.14 ms, `dst bench --profile`).
const COUNT_WG: u32 = 16u;

// `mask_count_rowwise` reading each row's weights four at a time, COUNT_WG rows per workgroup.
@compute @workgroup_size(COUNT_WG, 1, 1)
fn mask_count_rowwise4(@builtin(global_invocation_id) gid: vec3<u32>,
                       @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * COUNT_WG;
    if (row >= mp.rows) {
        return;
    }
    row_pass4(row, false);
}

// The mask pass of a small one-matrix weight (at most `SMALL_PASS_ROWS` rows, src/kernels/
// masked.rs: LeNet-300-100's fc2 and fc3, LeNet-5's fc4) in one dispatch instead of two: one
// workgroup, lane l the rowwise passes of rows l, l + 64, ... (`row_pass4`: mp.cols % 4 == 0,
// weight 16-byte aligned), then, once every row's counters are written, `mask_reset`'s work for
// the matrix. The same reads and writes as `mask_forward_rowwise4` (or `mask_count_rowwise4`)
// followed by `mask_reset`. lavapipe charges about 25-40 us per dispatch besides its work (`dst
// bench`'s dispatch overhead line); fc2's 100 rows in one workgroup instead of two took the
// time of its two passes (0.09-0.10 ms, `dst bench --profile`). The body of both entry points
// below.
fn small_pass(lane: u32, write_p: bool) {
    for (var row = lane; row < mp.rows; row += WG) {
        row_pass4(row, write_p);
    }
    storageBarrier();
    reset_matrix(lane, 0u);
}

// `mask_forward_rowwise4` and `mask_reset` of a small weight (`small_pass`).
@compute @workgroup_size(64, 1, 1)
fn mask_pass_small4(@builtin(local_invocation_id) lid: vec3<u32>) {
    small_pass(lid.x, true);
}

// `mask_count_rowwise4` and `mask_reset` of a small weight (`small_pass`).
@compute @workgroup_size(64, 1, 1)
fn mask_count_pass_small4(@builtin(local_invocation_id) lid: vec3<u32>) {
    small_pass(lid.x, false);
}

// One workgroup. Reads threshold, alpha_scale; stats[1] += alpha * alpha_scale[0] * sum_i exp(-t[i]) (the penalty's value; stats is the loss stats buffer).
@compute @workgroup_size(64, 1, 1)
fn penalty(@builtin(local_invocation_id) lid: vec3<u32>) {
    var part = 0.0;
    for (var i = lid.x; i < mp.rows; i += WG) {
        part += exp(-threshold[i]);
    }
    let s = reduce_f32(lid.x, part);
    if (lid.x == 0u) {
        stats[1] = stats[1] + mp.alpha * alpha_scale[0] * s;
    }
}

// Invocations (four rows each) per workgroup of `threshold_grad` (src/kernels/masked.rs too).
const THRESHOLD_WG: u32 = 16u;

// The thresholds' gradient after a weight-gradient product that applied the mask's backward
// itself (`gemm_tn_sgd`): d_masked holds its partial row sums, mp.cols x rows (mp.cols: the
// product's column blocks; block-major). Each row sums them in order:
//   d_threshold[i] = -sum_b d_masked[b][i] - alpha * exp(-t[i])    (alpha as in mask_backward)
// Four rows per invocation (mp.rows % 4 == 0, the buffers 16-byte aligned, as the product
// wants them): a vec4 per block (a quarter of the loads, which lavapipe issues per lane; fc1 of
// LeNet-300-100, 98 blocks: 0.069 -> 0.046 ms, `dst bench --profile`). Workgroups of
// THRESHOLD_WG invocations: fc1's 75 in 5 of them, which two CPU threads share evenly.
// Reads threshold4, d_masked4, alpha_scale; writes d_threshold4.
@compute @workgroup_size(THRESHOLD_WG, 1, 1)
fn threshold_grad(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r4 = gid.x;
    if (4u * r4 >= mp.rows) {
        return;
    }
    let n4 = mp.rows / 4u;
    var s = vec4<f32>(0.0);
    for (var b = 0u; b < mp.cols; b++) {
        s += d_masked4[b * n4 + r4];
    }
    d_threshold4[r4] = -s - mp.alpha * alpha_scale[0] * exp(-threshold4[r4]);
}

// ---- A narrow layer's weight gradient with the mask's backward (CPU adapters) ----
//
// A masked linear layer with few outputs (a classifier's 10: LeNet-300-100's fc3, LeNet-5's fc4)
// has too few rows for the vec4 weight-gradient forms (`gemm_tn_vec4` wants them in fours) and
// took three dispatches: dP = dy^T x (`gemm_regblock`), db (`bias_backward`) and
// `mask_backward`. Here one: a workgroup per row r of W (mp.rows rows, mp.cols % 4 == 0), lane l
// the columns 4q .. 4q + 3 for q = l, l + 64, ... (GPUs keep their two passes, the tiled product
// with db and `mask_backward_rows`: this form was slower there, `Masked::narrow_weight_grad_takes`):
//   G[r][c]  = sum over k < mp.batch of dy[k][r] * x[k][c]   (fma in k order: the sums of
//              `gemm_regblock` and `gemm_tiled`, the same bits)
//   d_weight = G*S(Q) + G*|W|*H(Q)                           (`mask_grads`, as `mask_backward`)
//   d_threshold[r] = -sum_c G*W*H(Q) - alpha * exp(-t[r])    (reduced over the workgroup in a
//              fixed order: `mask_backward`'s value up to float reassociation)
//   db[r]    = sum over k of dy[k][r]                        (in k order: the bits of
//              `bias_backward` and of `gemm_tiled`'s bias gradient)
// The optimiser pass then updates W, b and t as after the three passes.

// Reads nw_dy, nw_x4, weight, threshold, alpha_scale; writes d_weight, d_threshold, nw_db.
@compute @workgroup_size(64, 1, 1)
fn narrow_weight_grad(@builtin(local_invocation_id) lid: vec3<u32>,
                      @builtin(workgroup_id) wid: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= mp.rows) {
        return;
    }
    let t = threshold[row];
    let c4 = mp.cols / 4u;
    var part = 0.0;
    for (var q = lid.x; q < c4; q += WG) {
        var g = vec4<f32>(0.0);
        for (var k = 0u; k < mp.batch; k++) {
            g = fma(vec4<f32>(nw_dy[k * mp.rows + row]), nw_x4[k * c4 + q], g);
        }
        let base = row * mp.cols + 4u * q;
        for (var i = 0u; i < 4u; i++) {
            let r = mask_grads(g[i], weight[base + i], t);
            d_weight[base + i] = r.x;
            part += r.y;
        }
    }
    let s = reduce_f32(lid.x, part);
    if (lid.x == 0u) {
        d_threshold[row] = -s - mp.alpha * alpha_scale[0] * exp(-t);
        var db = 0.0;
        for (var k = 0u; k < mp.batch; k++) {
            db = db + nw_dy[k * mp.rows + row];
        }
        nw_db[row] = db;
    }
}
