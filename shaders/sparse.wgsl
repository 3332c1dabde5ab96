// sparse.wgsl: a fully connected layer computed from its compressed-sparse-row (CSR) weight.
//
//   W (rows x cols) as CSR: crow (rows + 1, crow[0] = 0, non-decreasing), col and val (nnz each;
//   the columns of row r are col[crow[r] .. crow[r + 1]], strictly increasing, all < cols)
//   y(b, r) = act(bias[r] + sum over j in row r of val[j] * x(b, col[j]))     b < batch
//   x(b, c) = x[b * x_bs + c * x_fs]     y(b, r) = y[b * y_bs + r * y_fs]    act = ReLU or none
//
// Strided x and y let a chain of layers keep activations feature-major, (features, batch): then
// the QUAD samples one invocation computes sit next to each other in memory, so every kept weight
// costs one value, one index and QUAD adjacent activation loads (one cache line), and the row's
// indices and values are read once for QUAD samples. The first layer reads the batch-major input
// (x_bs = cols, x_fs = 1); the last writes batch-major logits (y_bs = rows, y_fs = 1).
// One invocation per (row, quad of samples), rows outer: the invocations of a workgroup share a
// row's index range when the batch is large (broadcast loads, no divergence) and spread over rows
// when it is small (batch 1: one row per invocation). Work is proportional to nnz * batch; empty
// rows write bias (or act(bias)). Every output in range is written; no atomics, fixed order.
// `csr_linear_fm` is the fast path between feature-major activations when the batch is a multiple
// of 4: x and y as vec4 arrays, VQ vec4s (16 samples) per invocation, so each kept weight costs
// one value, one index and VQ vector loads for 16 multiply-adds.
// `to_feature_major` turns a batch-major input into the feature-major layout first: a copy of
// batch x cols values is cheap next to the nnz x batch products it makes cache-friendly.
// 1-D grids folded into y past 65535 workgroups (`grid_1d` in src/kernels/mod.rs).
// The file's closing section (from its `==== Subgroup forms` line on) holds forms of the kernels
// above that share a SIMD group's common loads by `subgroupBroadcast`: compiled only on Vulkan
// CPU adapters whose subgroups are exactly 8 lanes (lavapipe: `Gpu::subgroups8`,
// `kernels::module_source`), with the plain forms' bits.

// Keep in sync with `SparseParams` in src/kernels/sparse.rs.
struct SparseParams {
    rows: u32,
    cols: u32,
    batch: u32,
    quads: u32,   // ceil(batch / QUAD)
    x_bs: u32,
    x_fs: u32,
    y_bs: u32,
    y_fs: u32,
    relu: u32,    // 1: y = max(., 0)
    has_bias: u32,
    list_base: u32, // ell_*: where the lists start in list_idx / list_val
    cnt_base: u32,  // ell_*: where their counts start in list_cnt
    p_transposed: u32, // ell_build: p is stored transposed (cols x rows)
    by_rows: u32,      // ell_build: the row lists (else the column lists)
    input_max: u32,    // input_lists: at most this much listed work (inputs x samples) takes the input-sparse product
    n_switch: u32,     // input_lists: the slots of the layer's switch (shaders/masked.wgsl)
    fwd_slots: u32,    // input_lists: slots [0, fwd_slots) are the forward's other paths
    input_slot: u32,   // input_lists: the slot of `ell_input_product`
    outputs: u32,      // input_lists: the layer's outputs (P's rows), for the compaction
    compact: u32,      // input_lists: 1 when the layer has the compacted product (below)
    compact_max: u32,  // input_lists: compact when at most this many rows of P keep a weight
    compact_slot: u32, // input_lists: the slot of `compact_columns`
    compact_product_slot: u32, // input_lists: the slot of the compacted `ell_input_product`
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> sp: SparseParams;
@group(0) @binding(1) var<storage, read> crow: array<u32>;
@group(0) @binding(2) var<storage, read> col: array<u32>;
@group(0) @binding(3) var<storage, read> val: array<f32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;
@group(0) @binding(7) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> y4: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read> p: array<f32>;
@group(0) @binding(10) var<storage, read_write> list_idx: array<u32>;
@group(0) @binding(11) var<storage, read_write> list_val: array<f32>;
@group(0) @binding(12) var<storage, read_write> list_cnt: array<u32>;
@group(0) @binding(13) var<storage, read_write> switch_args: array<u32>;
@group(0) @binding(14) var<storage, read> w4: array<vec4<f32>>;
@group(0) @binding(15) var<storage, read> list_val4: array<vec4<f32>>; // list_val as vec4s
@group(0) @binding(16) var<storage, read> row_cnt: array<u32>; // input_lists: P's per-row keep counts
@group(0) @binding(17) var<storage, read_write> order: array<u32>; // the compaction's row order
@group(0) @binding(18) var<storage, read> thr: array<f32>; // masked_columns: P's row thresholds
@group(0) @binding(19) var<storage, read_write> list_val4w: array<vec4<f32>>; // input_lists: list_val as vec4s
@group(0) @binding(20) var<storage, read_write> k_list: array<u32>; // input_lists_split_klists: the weight gradient's lists
@group(0) @binding(21) var<storage, read> gate4: array<vec4<f32>>; // ordered_input_grad: the ReLU's output as vec4s

const WG: u32 = 64u;
const WG_LOG2: u32 = 6u; // log2(WG): the steps of `compaction_order`'s scan
const QUAD: u32 = 4u;

// Reads crow, col, val (the CSR weight), x and bias; writes y for one row and up to QUAD samples.
@compute @workgroup_size(64, 1, 1)
fn csr_linear(@builtin(global_invocation_id) gid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= sp.rows * sp.quads) {
        return;
    }
    let r = i / sp.quads;
    let b0 = (i % sp.quads) * QUAD;
    // Samples past the batch read the last valid sample (loads stay in bounds); stores skip them.
    let last = sp.batch - 1u;
    let xb = vec4<u32>(b0, min(b0 + 1u, last), min(b0 + 2u, last), min(b0 + 3u, last)) * sp.x_bs;
    var acc = vec4<f32>(0.0);
    let end = crow[r + 1u];
    for (var j = crow[r]; j < end; j++) {
        let v = val[j];
        let c = col[j] * sp.x_fs;
        acc += v * vec4<f32>(x[xb.x + c], x[xb.y + c], x[xb.z + c], x[xb.w + c]);
    }
    if (sp.has_bias != 0u) {
        acc += vec4<f32>(bias[r]);
    }
    if (sp.relu != 0u) {
        acc = max(acc, vec4<f32>(0.0));
    }
    let yr = r * sp.y_fs;
    for (var q = 0u; q < QUAD; q++) {
        let b = b0 + q;
        if (b < sp.batch) {
            y[b * sp.y_bs + yr] = acc[q];
        }
    }
}

const VQ: u32 = 4u;

// Reads crow, col, val, x4 (cols x batch, feature-major) and bias; writes y4 (rows x batch,
// feature-major) for one row and up to VQ * 4 samples. Requires batch % 4 == 0; `quads` is
// ceil(batch / (4 VQ)); the strides are unused.
@compute @workgroup_size(64, 1, 1)
fn csr_linear_fm(@builtin(global_invocation_id) gid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= sp.rows * sp.quads) {
        return;
    }
    let r = i / sp.quads;
    let bv = sp.batch / 4u;
    let g0 = (i % sp.quads) * VQ;
    // vec4 groups past the batch read the last valid one; stores skip them.
    let g1 = min(g0 + 1u, bv - 1u);
    let g2 = min(g0 + 2u, bv - 1u);
    let g3 = min(g0 + 3u, bv - 1u);
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    let end = crow[r + 1u];
    for (var j = crow[r]; j < end; j++) {
        let v = val[j];
        let c = col[j] * bv;
        a0 += v * x4[c + g0];
        a1 += v * x4[c + g1];
        a2 += v * x4[c + g2];
        a3 += v * x4[c + g3];
    }
    var b = vec4<f32>(0.0);
    if (sp.has_bias != 0u) {
        b = vec4<f32>(bias[r]);
    }
    var lo = vec4<f32>(-3.4e38);
    if (sp.relu != 0u) {
        lo = vec4<f32>(0.0);
    }
    let yr = r * bv;
    y4[yr + g0] = max(a0 + b, lo);
    if (g0 + 1u < bv) {
        y4[yr + g0 + 1u] = max(a1 + b, lo);
    }
    if (g0 + 2u < bv) {
        y4[yr + g0 + 2u] = max(a2 + b, lo);
    }
    if (g0 + 3u < bv) {
        y4[yr + g0 + 3u] = max(a3 + b, lo);
    }
}

// Reads x (batch x cols, batch-major); writes y (cols x batch): y[c * batch + b] = x[b * cols + c].
// One invocation per element of y (consecutive invocations: consecutive samples of one feature).
@compute @workgroup_size(64, 1, 1)
fn to_feature_major(@builtin(global_invocation_id) gid: vec3<u32>,
                    @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= sp.batch * sp.cols) {
        return;
    }
    let c = i / sp.batch;
    let b = i % sp.batch;
    y[i] = x[b * sp.cols + c];
}

// `to_feature_major` for `batch % 4 == 0` and `cols % 4 == 0`, x and y as vec4s: one invocation
// per 4 x 4 block (4 samples x 4 features), four vec4 loads of x's rows, the block transposed in
// registers, four vec4 stores of y's rows (consecutive invocations: consecutive sample quads of
// one feature quad). The same copy with a sixteenth of the scalar version's invocations and a
// quarter of its memory instructions.
@compute @workgroup_size(64, 1, 1)
fn to_feature_major4(@builtin(global_invocation_id) gid: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    let bq = sp.batch / 4u;
    let cq = sp.cols / 4u;
    if (i >= bq * cq) {
        return;
    }
    let c = i / bq;
    let b = (i % bq) * 4u;
    let r0 = x4[b * cq + c];
    let r1 = x4[(b + 1u) * cq + c];
    let r2 = x4[(b + 2u) * cq + c];
    let r3 = x4[(b + 3u) * cq + c];
    let at = 4u * c * bq + b / 4u;
    y4[at] = vec4<f32>(r0.x, r1.x, r2.x, r3.x);
    y4[at + bq] = vec4<f32>(r0.y, r1.y, r2.y, r3.y);
    y4[at + 2u * bq] = vec4<f32>(r0.z, r1.z, r2.z, r3.z);
    y4[at + 3u * bq] = vec4<f32>(r0.w, r1.w, r2.w, r3.w);
}

// ---- Sparse products in training (a layer that keeps few weights computes with them) ----
//
// A masked layer's P (rows x cols, mostly zeros once DST has pruned it) as per-row lists of its
// nonzeros, ELL-style: row r's list is list_idx/list_val[list_base + r * cols ..][.. n] with
// n = list_cnt[cnt_base + r], columns ascending. `ell_build` with `by_rows` builds them (forward:
// y = x P^T + b needs each output row's kept inputs), without it the per-column lists of P (the
// product to the input, dx = dy P, needs each input column's kept outputs): list c at
// list_base + c * rows, rows ascending. One invocation per list, scanning it in order: same P,
// same lists. `ell_product` / `ell_product4` then compute, for each list r (an output) and
// sample b,
//   y[b * rows + r] = bias[r] + sum_k list_val[k] * x(list_idx[k], b)     (k over list r, in order)
// (then max(., 0) with `relu`) with x feature-major (`to_feature_major` first): the forward with
// the row lists and x (a fused ReLU: `relu`), the product to the input with the column lists and
// dy (no bias). Work is proportional to the kept
// weights; the results equal the dense products up to float reassociation (the dense GEMM adds
// the zeros too, in its own order). Whether a layer runs these or the dense GEMMs is decided on
// the GPU each step by `mask_reset` (shaders/masked.wgsl) from the layer's keep count.

// P's element (r, c): p row-major, or transposed (a linear layer's P, see shaders/masked.wgsl).
// (One load at an index picked by `select`: lavapipe runs both sides of a branch, both loads.)
fn p_elem(r: u32, c: u32) -> f32 {
    return p[select(r * sp.cols + c, c * sp.rows + r, sp.p_transposed != 0u)];
}

// Reads p (rows x cols); writes the row lists (`by_rows`: list r, the columns where row r is
// nonzero) or the column lists (list c, the rows where column c is nonzero), and their counts.
// `rows`, `cols`, `list_base`, `cnt_base`, `p_transposed`, `by_rows`. One invocation per list.
@compute @workgroup_size(64, 1, 1)
fn ell_build(@builtin(global_invocation_id) gid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let l = gid.x + gid.y * nwg.x * WG;
    let by_rows = sp.by_rows != 0u;
    var lists = sp.cols;
    var len = sp.rows;
    if (by_rows) {
        lists = sp.rows;
        len = sp.cols;
    }
    if (l >= lists) {
        return;
    }
    let dst = sp.list_base + l * len;
    var n = 0u;
    for (var i = 0u; i < len; i++) {
        // One load, its place picked by `select` (lavapipe runs both sides of a branch).
        let v = p_elem(select(i, l, by_rows), select(l, i, by_rows));
        if (v != 0.0) {
            list_idx[dst + n] = i;
            list_val[dst + n] = v;
            n++;
        }
    }
    list_cnt[sp.cnt_base + l] = n;
}

// Reads the lists (`rows` of them, `cols` slots apart), x (batch x features, feature-major: x[f *
// batch + b]) and bias; writes y (batch x rows, batch-major) for one list and up to QUAD samples.
// `quads` = ceil(batch / QUAD).
@compute @workgroup_size(64, 1, 1)
fn ell_product(@builtin(global_invocation_id) gid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= sp.rows * sp.quads) {
        return;
    }
    let r = i / sp.quads;
    let b0 = (i % sp.quads) * QUAD;
    let last = sp.batch - 1u;
    let b = vec4<u32>(b0, min(b0 + 1u, last), min(b0 + 2u, last), min(b0 + 3u, last));
    var acc = vec4<f32>(0.0);
    let at = sp.list_base + r * sp.cols;
    let n = list_cnt[sp.cnt_base + r];
    for (var k = at; k < at + n; k++) {
        let v = list_val[k];
        let f = list_idx[k] * sp.batch;
        acc += v * vec4<f32>(x[f + b.x], x[f + b.y], x[f + b.z], x[f + b.w]);
    }
    if (sp.has_bias != 0u) {
        acc += vec4<f32>(bias[r]);
    }
    if (sp.relu != 0u) {
        acc = max(acc, vec4<f32>(0.0));
    }
    for (var q = 0u; q < QUAD; q++) {
        if (b0 + q < sp.batch) {
            y[(b0 + q) * sp.rows + r] = acc[q];
        }
    }
}

// `ell_product` for a batch that is a multiple of 4: x as vec4s (x4), VQ vec4s (16 samples) per
// invocation; `quads` = ceil(batch / (4 VQ)).
@compute @workgroup_size(64, 1, 1)
fn ell_product4(@builtin(global_invocation_id) gid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= sp.rows * sp.quads) {
        return;
    }
    let r = i / sp.quads;
    let bv = sp.batch / 4u;
    let g0 = (i % sp.quads) * VQ;
    let g1 = min(g0 + 1u, bv - 1u);
    let g2 = min(g0 + 2u, bv - 1u);
    let g3 = min(g0 + 3u, bv - 1u);
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    let at = sp.list_base + r * sp.cols;
    let n = list_cnt[sp.cnt_base + r];
    for (var k = at; k < at + n; k++) {
        let v = list_val[k];
        let f = list_idx[k] * bv;
        a0 += v * x4[f + g0];
        a1 += v * x4[f + g1];
        a2 += v * x4[f + g2];
        a3 += v * x4[f + g3];
    }
    var bb = vec4<f32>(0.0);
    if (sp.has_bias != 0u) {
        bb = vec4<f32>(bias[r]);
    }
    var lo = vec4<f32>(-3.4e38);
    if (sp.relu != 0u) {
        lo = vec4<f32>(0.0);
    }
    var acc = array<vec4<f32>, 4>(max(a0 + bb, lo), max(a1 + bb, lo), max(a2 + bb, lo), max(a3 + bb, lo));
    for (var g = 0u; g < VQ; g++) {
        if (g0 + g < bv) {
            for (var q = 0u; q < 4u; q++) {
                y[(4u * (g0 + g) + q) * sp.rows + r] = acc[g][q];
            }
        }
    }
}

// ---- Input-sparse forward (CPU adapters): skip the input's zeros ----
//
// A layer's input often holds many exact zeros (MNIST's background pixels, about 81 % of them).
// lavapipe runs a branch over all lanes whatever the data, but a loop only as long as its longest
// lane: so the zeros are skipped by lists, not by tests. `input_lists` lists, for each block of
// IB samples, the inputs that are nonzero in at least one of them (MNIST: 46 % of the pixels
// for 8 samples) and decides, from the listed work, whether the layer's forward takes
// `ell_input_product` this step; `ell_input_product` then computes
//   y[b][o] = act(bias[o] + sum_i x[b][i] * Pt[i][o])   (i over the list of b's block)
// from P stored transposed (Pt, inputs x outputs: a masked linear layer's P), an outer product
// of IB inputs and 8 outputs per listed i, adding the products in the order the dense GEMM
// (`gemm_nn_vec4`) does, minus products with zeros: the same values (the dense path's
// fma(0, p, acc) leaves acc as it is).

const IB: u32 = 8u; // samples per list (and per `ell_input_product` invocation)

// Where the second of a block's two list segments starts: inputs below it are listed from the
// block's start, the others from here on (two segments, so that `input_lists_split` can build
// them in two workgroups, one per CPU core on lavapipe). A multiple of 4 (half the input's vec4s,
// rounded up), so that `list_segment4` starts both segments on a vec4; the width where that is
// past it (widths below 8).
fn list_half() -> u32 {
    return min(sp.cols, 4u * ((sp.cols + 7u) / 8u));
}

// Lists segment `seg` of block r (inputs [0, half) or [half, cols)): the inputs nonzero in at
// least one of its samples, ascending, at list_idx[r * cols + seg * half ..], with the block's
// IB values of each at list_val (0 past the batch), their number at list_cnt[2 r + seg].
// Returns the segment's listed work (its length x the block's samples).
fn list_segment(r: u32, seg: u32) -> u32 {
    let b0 = r * IB;
    let nb = min(IB, sp.rows - b0);
    let half = list_half();
    let i0 = seg * half;
    let i1 = select(half, sp.cols, seg == 1u);
    let at = r * sp.cols + i0;
    var n = 0u;
    // Each value is loaded once (rows past the batch read row b0 again and count as 0), as
    // two vec4 from offsets fixed before the loop, and stored as two vec4; the test is a
    // bitwise or: `||` would branch per sample.
    let c = sp.cols;
    let j0 = vec4<u32>(0u, 1u, 2u, 3u);
    let j1 = j0 + vec4<u32>(4u);
    let in0 = j0 < vec4<u32>(nb);
    let in1 = j1 < vec4<u32>(nb);
    let o0 = (vec4<u32>(b0) + select(vec4<u32>(0u), j0, in0)) * c;
    let o1 = (vec4<u32>(b0) + select(vec4<u32>(0u), j1, in1)) * c;
    let zero = vec4<f32>(0.0);
    for (var i = i0; i < i1; i++) {
        let lo = select(zero, vec4<f32>(x[o0.x + i], x[o0.y + i], x[o0.z + i], x[o0.w + i]), in0);
        let hi = select(zero, vec4<f32>(x[o1.x + i], x[o1.y + i], x[o1.z + i], x[o1.w + i]), in1);
        if (any(lo != zero) | any(hi != zero)) {
            list_idx[at + n] = i;
            list_val4w[2u * (at + n)] = lo;
            list_val4w[2u * (at + n) + 1u] = hi;
            n++;
        }
    }
    list_cnt[2u * r + seg] = n;
    return n * nb;
}

// `list_segment` for an input whose width is a multiple of 4 (read as vec4s, x4, from a 16-byte
// aligned offset): four inputs per iteration from one vec4 load per sample, a quarter of the
// loads (lavapipe issues each lane by lane: at batch 64 on fc1 they were most of the lists'
// time). The same lists, values and counts.
fn list_segment4(r: u32, seg: u32) -> u32 {
    let b0 = r * IB;
    let nb = min(IB, sp.rows - b0);
    let half = list_half();
    let q0 = seg * half / 4u;
    let q1 = select(half, sp.cols, seg == 1u) / 4u;
    let at = r * sp.cols;
    var n = seg * half;
    let c4 = sp.cols / 4u;
    let j0 = vec4<u32>(0u, 1u, 2u, 3u);
    let j1 = j0 + vec4<u32>(4u);
    let in0 = j0 < vec4<u32>(nb);
    let in1 = j1 < vec4<u32>(nb);
    let o0 = (vec4<u32>(b0) + select(vec4<u32>(0u), j0, in0)) * c4;
    let o1 = (vec4<u32>(b0) + select(vec4<u32>(0u), j1, in1)) * c4;
    for (var q = q0; q < q1; q++) {
        let s0 = x4[o0.x + q];
        let s1 = x4[o0.y + q];
        let s2 = x4[o0.z + q];
        let s3 = x4[o0.w + q];
        let s4 = x4[o1.x + q];
        let s5 = x4[o1.y + q];
        let s6 = x4[o1.z + q];
        let s7 = x4[o1.w + q];
        let i = 4u * q;
        n = list_one(at, n, i, in0, in1, vec4<f32>(s0.x, s1.x, s2.x, s3.x),
                     vec4<f32>(s4.x, s5.x, s6.x, s7.x));
        n = list_one(at, n, i + 1u, in0, in1, vec4<f32>(s0.y, s1.y, s2.y, s3.y),
                     vec4<f32>(s4.y, s5.y, s6.y, s7.y));
        n = list_one(at, n, i + 2u, in0, in1, vec4<f32>(s0.z, s1.z, s2.z, s3.z),
                     vec4<f32>(s4.z, s5.z, s6.z, s7.z));
        n = list_one(at, n, i + 3u, in0, in1, vec4<f32>(s0.w, s1.w, s2.w, s3.w),
                     vec4<f32>(s4.w, s5.w, s6.w, s7.w));
    }
    let count = n - seg * half;
    list_cnt[2u * r + seg] = count;
    return count * nb;
}

// Input i of `list_segment4` (its block's values lo: samples 0-3, hi: 4-7, those past the batch
// zeroed by in0, in1) written at list entry at + n, which the next input takes again unless one
// of them is nonzero; returns the next entry. Written whatever the values: lavapipe runs a
// branch's stores anyway, lane by lane under a mask (the entry past a segment's count may hold
// such a zero entry; no reader looks past the count, and the entry is at most the input's own).
fn list_one(at: u32, n: u32, i: u32, in0: vec4<bool>, in1: vec4<bool>, lo_all: vec4<f32>,
            hi_all: vec4<f32>) -> u32 {
    let zero = vec4<f32>(0.0);
    let lo = select(zero, lo_all, in0);
    let hi = select(zero, hi_all, in1);
    list_idx[at + n] = i;
    list_val4w[2u * (at + n)] = lo;
    list_val4w[2u * (at + n) + 1u] = hi;
    return n + u32(any(lo != zero) | any(hi != zero));
}

// One workgroup. x is batch x cols (sp.rows = batch, sp.cols = its width): lane l builds the
// lists of sample blocks l, l + 64, ... (both segments: `list_segment`). Then the listed work
// (sum over blocks of length x samples) picks the
// path: input-sparse when at most `input_max`, whichever forward the mask pass chose (on lavapipe
// this product at MNIST's 46 % listed inputs costs less than the weight-sparse lists, whose
// build alone scans all of P and whose loop runs as long as a lane group's longest row, from
// trained checkpoints at 7.90 % and 3.02 % kept: BENCHMARKS.md). The switch's slot `input_slot` runs its template when
// input-sparse, else nothing; slots [0, fwd_slots) (the forward's weight-sparse and dense
// dispatches, as `mask_reset` set them) are turned off when input-sparse, else left as they are.
@compute @workgroup_size(64, 1, 1)
fn input_lists(@builtin(local_invocation_id) lid: vec3<u32>) {
    var total = 0u;
    let blocks = (sp.rows + IB - 1u) / IB;
    for (var r = lid.x; r < blocks; r += WG) {
        total += list_segment(r, 0u) + list_segment(r, 1u);
    }
    set_switch(lid.x, total);
}

// `input_lists` for an input whose width is a multiple of 4, read as vec4s (x4, 16-byte
// aligned: `list_segment4`). The same lists, order and switch. (Its own entry point: naga keeps
// both sides of a branch on a constant argument, and the scalar form binds no x4.)
@compute @workgroup_size(64, 1, 1)
fn input_lists4(@builtin(local_invocation_id) lid: vec3<u32>) {
    var total = 0u;
    let blocks = (sp.rows + IB - 1u) / IB;
    for (var r = lid.x; r < blocks; r += WG) {
        total += list_segment4(r, 0u) + list_segment4(r, 1u);
    }
    set_switch(lid.x, total);
}

// The end of `input_lists` for lane `lane`, its blocks' listed work `total`: the path, the order.
fn set_switch(lane: u32, total: u32) {
    red_total[lane] = total;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lane < s) {
            red_total[lane] = red_total[lane] + red_total[lane + s];
        }
        workgroupBarrier();
    }
    storageBarrier();
    let on = red_total[0] <= sp.input_max;
    var compact = false;
    var n_active = 0u;
    if (sp.compact != 0u) {
        n_active = compaction_order(lane);
        compact = on && n_active <= sp.compact_max;
    }
    let slot = lane;
    let t = 3u * sp.n_switch + 4u * slot;
    if (slot == sp.input_slot) {
        for (var a = 0u; a < 3u; a++) {
            switch_args[3u * slot + a] = select(0u, switch_args[t + a], on && !compact);
        }
    } else if (sp.compact != 0u && slot == sp.compact_product_slot) {
        for (var a = 0u; a < 3u; a++) {
            switch_args[3u * slot + a] = select(0u, switch_args[t + a], compact);
        }
    } else if (sp.compact != 0u && slot == sp.compact_slot) {
        // `compact_columns`: its template (one invocation per row of P^T) when it runs.
        for (var a = 0u; a < 3u; a++) {
            switch_args[3u * slot + a] = select(0u, switch_args[t + a], compact);
        }
    } else if (slot < sp.fwd_slots && on) {
        for (var a = 0u; a < 3u; a++) {
            switch_args[3u * slot + a] = 0u;
        }
    }
}

// `input_lists` for a layer whose input-sparse forward runs at every step, compacted (a
// CPU adapter's `Linear::forward_counted`: no path to pick, no switch to set): two workgroups,
// workgroup s the segments s of every block (lane l: blocks l, l + 64, ...), and the first also
// writes the compaction's `order`. The same lists and order.
@compute @workgroup_size(64, 1, 1)
fn input_lists_split(@builtin(local_invocation_id) lid: vec3<u32>,
                     @builtin(workgroup_id) wid: vec3<u32>) {
    let blocks = (sp.rows + IB - 1u) / IB;
    for (var r = lid.x; r < blocks; r += WG) {
        list_segment(r, wid.x);
    }
    if (wid.x == 0u) {
        compaction_order(lid.x);
    }
}

// `input_lists_split` for an input whose width is a multiple of 4, read as vec4s (x4, 16-byte
// aligned: `list_segment4`). The same lists and order.
@compute @workgroup_size(64, 1, 1)
fn input_lists_split4(@builtin(local_invocation_id) lid: vec3<u32>,
                      @builtin(workgroup_id) wid: vec3<u32>) {
    split_lists4(lid.x, wid.x);
}

// The work of `input_lists_split4`'s workgroup s (0 or 1) for lane `lane`.
fn split_lists4(lane: u32, s: u32) {
    let blocks = (sp.rows + IB - 1u) / IB;
    for (var r = lane; r < blocks; r += WG) {
        list_segment4(r, s);
    }
    if (s == 0u) {
        compaction_order(lane);
    }
}

// `input_lists_split` that also lists, in its workgroups past the first two, what the layer's
// weight gradient skips the input's zeros by (`weight_grad_lists`: gemm.wgsl's `tn_k_lists`,
// word for word): the same work in one dispatch per step less (fc1 on lavapipe: 0.195 ms
// against 0.109 + 0.075-0.08 for the two, `dst bench --profile`; a dispatch costs some 25-40 us
// besides).
@compute @workgroup_size(64, 1, 1)
fn input_lists_split_klists(@builtin(local_invocation_id) lid: vec3<u32>,
                            @builtin(workgroup_id) wid: vec3<u32>) {
    if (wid.x >= 2u) {
        weight_grad_lists((wid.x - 2u) * WG + lid.x);
        return;
    }
    split_lists4(lid.x, wid.x);
}

// For block `blk` of 8 input columns of x (sp.rows samples x sp.cols inputs, read as vec4s:
// sp.cols % 4 == 0), the samples with a nonzero there, ascending, at k_list[nb + blk * sp.rows
// ..], their number at k_list[blk] (nb = ceil(sp.cols / 8) blocks; the last block's second vec4
// clamped to the last): the lists `gemm_tn_sgd_listed` reads, as gemm.wgsl's `tn_k_lists`
// builds them.
fn weight_grad_lists(blk: u32) {
    let nb = (sp.cols + 7u) / 8u;
    if (blk >= nb) {
        return;
    }
    let n4 = sp.cols / 4u;
    let ca = min(2u * blk, n4 - 1u);
    let cb = min(2u * blk + 1u, n4 - 1u);
    let base = nb + blk * sp.rows;
    let zero = vec4<f32>(0.0);
    var count = 0u;
    for (var k = 0u; k < sp.rows; k++) {
        if (any(x4[k * n4 + ca] != zero) | any(x4[k * n4 + cb] != zero)) {
            k_list[base + count] = k;
            count++;
        }
    }
    k_list[blk] = count;
}

var<workgroup> red_total: array<u32, 64>;

// ---- The input-sparse forward over the rows of P that keep a weight ----
//
// A DST layer prunes whole rows (LeNet-300-100's fc1 at 8 % kept: 199 of its 300 rows keep
// nothing), whose outputs are act(bias) whatever the input. Where at most `compact_max` rows
// keep a weight, `input_lists` orders the rows (`order`: those that keep a weight first, then
// the others, each ascending; order[outputs] = how many keep one), `compact_columns` copies P^T's
// columns into that order, and `ell_input_product_compacted` loops only in the workgroups (64
// ordered rows) that hold a row that keeps one: per row the same fma chain as over P^T, so the
// same values; rows that keep nothing get act(0 + bias), as from a sum of zero products.

var<workgroup> scan: array<u32, 64>;

// vec4 columns of the compacted P^T that the product reads: the rows of every workgroup of 64
// ordered rows that holds one that keeps a weight (`outputs`: the layer's, in both kernels that
// call it).
fn compact_width(n_active: u32) -> u32 {
    return min(sp.outputs / 4u, 16u * ((n_active + 63u) / 64u));
}

// All 64 lanes: writes `order` from row_cnt (contiguous chunks of rows per lane, their counts
// scanned in lane order) and returns how many rows keep a weight.
fn compaction_order(lane: u32) -> u32 {
    let n = sp.outputs;
    let chunk = (n + WG - 1u) / WG;
    let r0 = min(lane * chunk, n);
    let r1 = min(r0 + chunk, n);
    var mine = 0u;
    for (var r = r0; r < r1; r++) {
        mine += u32(row_cnt[r] != 0u);
    }
    // The lanes' counts scanned in lane order, in log2(WG) steps (each lane reading all WG
    // counts cost as much as listing a sample's 784 inputs on lavapipe).
    scan[lane] = mine;
    workgroupBarrier();
    for (var s = 0u; s < WG_LOG2; s++) {
        let d = 1u << s;
        let add = select(0u, scan[max(lane, d) - d], lane >= d);
        workgroupBarrier();
        scan[lane] += add;
        workgroupBarrier();
    }
    let before = scan[lane] - mine;
    let total = scan[WG - 1u];
    var a = before;          // this lane's rows that keep a weight go here...
    var e = total + r0 - before; // ...and those that keep none here
    for (var r = r0; r < r1; r++) {
        let keeps = row_cnt[r] != 0u;
        order[select(e, a, keeps)] = r; // one store, no branch (both sides would run)
        a += u32(keeps);
        e += u32(!keeps);
    }
    if (lane == 0u) {
        order[n] = total;
    }
    storageBarrier();
    return total;
}

const COMPACT_ROWS: u32 = 32u; // rows of P^T per workgroup of `compact_columns` (src/kernels/sparse.rs too)

// Reads p (P^T: sp.cols x sp.rows) and `order`; writes y4 (the compacted P^T, the same shape
// as vec4s): row i's first compact_width vec4s hold P^T[i][order[k]], k ascending. A workgroup
// copies COMPACT_ROWS rows, lane q the vec4s q, q + 64, ... of each: it reads its four entries
// of `order` once for all the rows, and the lanes gather from one row of P^T at a time.
// (One vec4 per invocation on a 2-D grid cost as much as the mask pass on lavapipe, whose cost
// per workgroup is high; one row per invocation, half that.)
@compute @workgroup_size(64, 1, 1)
fn compact_columns(@builtin(local_invocation_id) lid: vec3<u32>,
                   @builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = wid.x + wid.y * nwg.x;
    let w = compact_width(order[sp.rows]);
    let n4 = sp.rows / 4u;
    let c0 = g * COMPACT_ROWS;
    let c1 = min(c0 + COMPACT_ROWS, sp.cols);
    for (var q = lid.x; q < w; q += WG) {
        let k = 4u * q;
        let o = vec4<u32>(order[k], order[k + 1u], order[k + 2u], order[k + 3u]);
        for (var c = c0; c < c1; c++) {
            let base = c * sp.rows;
            y4[c * n4 + q] = vec4<f32>(p[base + o.x], p[base + o.y], p[base + o.z], p[base + o.w]);
        }
    }
}

// The rows of four outputs o..o + 3 of `ell_input_product` (o + 3 < sp.rows: sp.rows % 4 == 0):
// order[o..o + 3] where `compacted` (a constant at every call: each entry point compiles its
// own form).
fn input_product_rows(o: u32, compacted: bool) -> vec4<u32> {
    if (compacted) {
        return vec4<u32>(order[o], order[o + 1u], order[o + 2u], order[o + 3u]);
    }
    return vec4<u32>(o, o + 1u, o + 2u, o + 3u);
}

// The bias of four output rows (zeros without one: not added, see `store_input_product`).
fn input_product_bias(rows: vec4<u32>) -> vec4<f32> {
    if (sp.has_bias != 0u) {
        return vec4<f32>(bias[rows.x], bias[rows.y], bias[rows.z], bias[rows.w]);
    }
    return vec4<f32>(0.0);
}

// Four outputs of `ell_input_product` at sample b, rows `rows`, their bias bv.
fn store_input_product(b: u32, rows: vec4<u32>, v: vec4<f32>, bv: vec4<f32>) {
    var r = v;
    if (sp.has_bias != 0u) {
        r = r + bv;
    }
    if (sp.relu != 0u) {
        r = max(r, vec4<f32>(0.0));
    }
    let at = b * sp.rows;
    y[at + rows.x] = r.x;
    y[at + rows.y] = r.y;
    y[at + rows.z] = r.z;
    y[at + rows.w] = r.w;
}

// The stores of an `ell_input_product` invocation: its IB samples (those in the batch) x 8
// outputs (the second four where o0 + 4 < sp.rows) from acc (`input_product`'s layout). The
// rows and their bias are loaded once for all the samples (16 loads per invocation where
// loading them per sample took 128: lavapipe issues each load per lane).
fn store_input_products(acc: ptr<function, array<vec4<f32>, 16>>, b0: u32, o0: u32,
                        compacted: bool) {
    let two = o0 + 4u < sp.rows;
    let rows_lo = input_product_rows(o0, compacted);
    let bias_lo = input_product_bias(rows_lo);
    var rows_hi = rows_lo;
    var bias_hi = bias_lo;
    if (two) {
        rows_hi = input_product_rows(o0 + 4u, compacted);
        bias_hi = input_product_bias(rows_hi);
    }
    for (var j = 0u; j < IB; j++) {
        if (b0 + j < sp.batch) {
            store_input_product(b0 + j, rows_lo, (*acc)[2u * j], bias_lo);
            if (two) {
                store_input_product(b0 + j, rows_hi, (*acc)[2u * j + 1u], bias_hi);
            }
        }
    }
}

// Reads the block lists (`input_lists`; sp.cols apart, with the block's IB values of each listed
// input as two vec4), w4 (Pt: sp.cols x sp.rows as vec4s, sp.rows % 4 == 0) and bias; writes y
// (sp.batch x sp.rows, batch-major). Each invocation: IB samples x 8 outputs, per listed input
// two vec4 of Pt and the two of x (the same for every lane of the workgroup): 64 multiply-adds
// for five loads (lavapipe's cost is in its loads: x read as 8 scalars took 2.7x as long). Workgroup 8 x 1: its lanes share their sample block,
// so their loop has one length (lavapipe puts the x axis across its lanes). The body of both
// entry points below; `compacted` is a constant at each.
fn input_product(gid: vec3<u32>, wid: vec3<u32>, compacted: bool) {
    let o0 = gid.x * 8u;
    let blk = gid.y;
    let b0 = blk * IB;
    if (o0 >= sp.rows || b0 >= sp.batch) {
        return;
    }
    let n4 = sp.rows / 4u;
    let c0 = o0 / 4u;
    let c1 = min(c0 + 1u, n4 - 1u);
    var acc: array<vec4<f32>, 16>;
    for (var j = 0u; j < 16u; j++) {
        acc[j] = vec4<f32>(0.0);
    }
    let at = blk * sp.cols;
    // The block's two list segments, the second from `list_half` on: entry t of the loop is
    // list entry at + t of the first segment, then at + half + (t - n0) of the second.
    let n0 = list_cnt[2u * blk];
    var n = n0 + list_cnt[2u * blk + 1u];
    let jump = list_half() - n0;
    // A workgroup (64 ordered rows) whose rows all keep nothing: act(bias). Decided per
    // workgroup, so the loop's bound stays uniform. Its other lanes read the copied columns of
    // rows that keep nothing: zeros (`compact_width` copies whole workgroups' columns).
    if (compacted && wid.x * 64u >= order[sp.rows]) {
        n = 0u;
    }
    for (var t = 0u; t < n; t++) {
        let e = at + t + select(0u, jump, t >= n0);
        let i = list_idx[e];
        let p0 = w4[i * n4 + c0];
        let p1 = w4[i * n4 + c1];
        let lo = list_val4[2u * e];
        let hi = list_val4[2u * e + 1u];
        for (var j = 0u; j < 4u; j++) {
            acc[2u * j] = fma(vec4<f32>(lo[j]), p0, acc[2u * j]);
            acc[2u * j + 1u] = fma(vec4<f32>(lo[j]), p1, acc[2u * j + 1u]);
            acc[8u + 2u * j] = fma(vec4<f32>(hi[j]), p0, acc[8u + 2u * j]);
            acc[9u + 2u * j] = fma(vec4<f32>(hi[j]), p1, acc[9u + 2u * j]);
        }
    }
    store_input_products(&acc, b0, o0, compacted);
}

// Reads the block lists, w4 (P^T) and bias; writes y (`input_product` above).
@compute @workgroup_size(8, 1, 1)
fn ell_input_product(@builtin(global_invocation_id) gid: vec3<u32>) {
    input_product(gid, vec3<u32>(0u), false);
}

// Reads the block lists, w4 (`compact_columns`' copy: P^T's columns in `order`'s order),
// `order` and bias; writes y: `ell_input_product`'s values.
// (A form of its own: a branch on a parameter in the one kernel made lavapipe's plain product
// 1.7x slower.)
@compute @workgroup_size(8, 1, 1)
fn ell_input_product_compacted(@builtin(global_invocation_id) gid: vec3<u32>,
                               @builtin(workgroup_id) wid: vec3<u32>) {
    input_product(gid, wid, true);
}

// ---- The compacted columns of P^T written from W (CPU adapters) ----
//
// A layer whose mask pass only counted (masked.wgsl's `mask_count_rowwise`; the plan's first
// layer, whose product to the input nobody computes, so nothing reads P^T) writes the columns
// of P^T that the compacted product reads here, after `input_lists` has ordered the rows:
// `compact_columns`' copy, computed from W and t instead of gathered from P^T. It reads each
// lane's four rows of W along their columns, a vec4 of outputs at a time. Each element is
// w * S(|w| - t), as in the mask pass: the same bits.

// Reads p (W: sp.rows x sp.cols, row-major), thr (t, one per row of W) and `order` (`input_lists`
// with a compaction); writes y4 as `compact_columns` does: row c's first compact_width vec4s hold
// P^T[c][order[k]], k ascending. sp.outputs = sp.rows (rows % 4 == 0). A workgroup writes
// COMPACT_ROWS rows of P^T (inputs), lane q the vec4s q, q + 64, ... of each.
@compute @workgroup_size(64, 1, 1)
fn masked_columns(@builtin(local_invocation_id) lid: vec3<u32>,
                  @builtin(workgroup_id) wid: vec3<u32>,
                  @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = wid.x + wid.y * nwg.x;
    let c0 = g * COMPACT_ROWS;
    let c1 = min(c0 + COMPACT_ROWS, sp.cols);
    let n4 = sp.rows / 4u;
    let width = compact_width(order[sp.rows]);
    for (var q = lid.x; q < width; q += WG) {
        let k = 4u * q;
        let o = vec4<u32>(order[k], order[k + 1u], order[k + 2u], order[k + 3u]);
        let t = vec4<f32>(thr[o.x], thr[o.y], thr[o.z], thr[o.w]);
        let r = o * sp.cols;
        for (var c = c0; c < c1; c++) {
            let w = vec4<f32>(p[r.x + c], p[r.y + c], p[r.z + c], p[r.w + c]);
            y4[c * n4 + q] = w * select(vec4<f32>(0.0), vec4<f32>(1.0), abs(w) - t > vec4<f32>(0.0));
        }
    }
}

// ---- The product to the input over the rows of P that keep a weight (CPU adapters) ----
//
// A layer that took the compacted forward (`ell_input_product_compacted`, its columns of P^T
// written by `masked_columns`) computes its product to the input from the same columns:
//   dx[b][i] = gate(b, i) * sum over k < K of dy[b][order[k]] * Pc[i][k]
// Pc: the compacted P^T (sp.cols x sp.rows, the first compact_width vec4s of each row valid),
// K = 4 compact_width (the ordered rows of every workgroup of 64 that holds one that keeps a
// weight: the others keep nothing, their products are zeros), gate(b, i) = 1 where the output of
// the ReLU before the layer (bias, sp.batch x sp.cols) is positive, else 0. The sum runs over
// the ordered rows four at a time as dot products of vec4s (`gemm_nt_vec4`'s form: the dense
// product's values up to float reassociation, its zero products skipped).

// Reads x (dy: sp.batch x sp.rows), w4 (Pc as vec4s), `order`, gate4 (the ReLU's output);
// writes y4 (dx: sp.batch x sp.cols; sp.cols % 4 == 0). Each invocation: 4 samples x 8 inputs;
// workgroup 8 x 8, the x axis along the inputs (lavapipe's lanes: each lane's samples, and so
// its loads of dy and `order`, are its group's).
@compute @workgroup_size(8, 8, 1)
fn ordered_input_grad(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b0 = gid.y * 4u;
    let i0 = gid.x * 8u;
    if (b0 >= sp.batch || i0 >= sp.cols) {
        return;
    }
    let n4 = sp.rows / 4u;
    let k4 = compact_width(order[sp.rows]);
    var rows: array<u32, 4>;
    for (var r = 0u; r < 4u; r++) {
        rows[r] = min(b0 + r, sp.batch - 1u) * sp.rows;
    }
    var cols: array<u32, 8>;
    for (var j = 0u; j < 8u; j++) {
        cols[j] = min(i0 + j, sp.cols - 1u) * n4;
    }
    var acc: array<array<f32, 8>, 4>;
    for (var r = 0u; r < 4u; r++) {
        for (var j = 0u; j < 8u; j++) {
            acc[r][j] = 0.0;
        }
    }
    for (var kk = 0u; kk < k4; kk++) {
        let o = vec4<u32>(order[4u * kk], order[4u * kk + 1u], order[4u * kk + 2u], order[4u * kk + 3u]);
        var av: array<vec4<f32>, 4>;
        for (var r = 0u; r < 4u; r++) {
            let at = rows[r];
            av[r] = vec4<f32>(x[at + o.x], x[at + o.y], x[at + o.z], x[at + o.w]);
        }
        var bv: array<vec4<f32>, 8>;
        for (var j = 0u; j < 8u; j++) {
            bv[j] = w4[cols[j] + kk];
        }
        for (var r = 0u; r < 4u; r++) {
            for (var j = 0u; j < 8u; j++) {
                acc[r][j] += dot(av[r], bv[j]);
            }
        }
    }
    ordered_input_grad_store(&acc, b0, i0);
}

// The stores of an `ordered_input_grad` invocation: samples b0..b0 + 3 x inputs i0..i0 + 7 (those
// in range: sp.cols % 4 == 0), each gated by the ReLU's output (gate4), four inputs per load
// and store (16 memory instructions per invocation where one per element took 64).
fn ordered_input_grad_store(acc: ptr<function, array<array<f32, 8>, 4>>, b0: u32, i0: u32) {
    if (i0 >= sp.cols) {
        return;
    }
    let c4 = sp.cols / 4u;
    let zero = vec4<f32>(0.0);
    for (var r = 0u; r < 4u; r++) {
        if (b0 + r < sp.batch) {
            let at = (b0 + r) * c4 + i0 / 4u;
            let lo = vec4<f32>((*acc)[r][0], (*acc)[r][1], (*acc)[r][2], (*acc)[r][3]);
            y4[at] = select(zero, lo, gate4[at] > zero);
            if (i0 + 4u < sp.cols) {
                let hi = vec4<f32>((*acc)[r][4], (*acc)[r][5], (*acc)[r][6], (*acc)[r][7]);
                y4[at + 1u] = select(zero, hi, gate4[at + 1u] > zero);
            }
        }
    }
}

// `masked_columns` for a width that is a multiple of 4 (W read as vec4s: w4, its offset 16-byte
// aligned): lane q reads its four rows of W four columns at a time, one vec4 per row, and writes
// the four rows of P^T they make (a 4 x 4 transpose in registers): a quarter of the loads, which
// lavapipe issues one per lane. The same elements, the same bits.
@compute @workgroup_size(64, 1, 1)
fn masked_columns4(@builtin(local_invocation_id) lid: vec3<u32>,
                   @builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = wid.x + wid.y * nwg.x;
    let c0 = g * COMPACT_ROWS;
    let c1 = min(c0 + COMPACT_ROWS, sp.cols);
    let n4 = sp.rows / 4u;
    let cols4 = sp.cols / 4u;
    let width = compact_width(order[sp.rows]);
    let zero = vec4<f32>(0.0);
    for (var q = lid.x; q < width; q += WG) {
        let k = 4u * q;
        let o = vec4<u32>(order[k], order[k + 1u], order[k + 2u], order[k + 3u]);
        let r = o * cols4;
        let tx = vec4<f32>(thr[o.x]);
        let ty = vec4<f32>(thr[o.y]);
        let tz = vec4<f32>(thr[o.z]);
        let tw = vec4<f32>(thr[o.w]);
        for (var c = c0; c < c1; c += 4u) {
            let c4 = c / 4u;
            let wx = w4[r.x + c4];
            let wy = w4[r.y + c4];
            let wz = w4[r.z + c4];
            let ww = w4[r.w + c4];
            // Row j of W (ordered row k + j) masked: w * S(|w| - t).
            let px = wx * select(zero, vec4<f32>(1.0), abs(wx) - tx > zero);
            let py = wy * select(zero, vec4<f32>(1.0), abs(wy) - ty > zero);
            let pz = wz * select(zero, vec4<f32>(1.0), abs(wz) - tz > zero);
            let pw = ww * select(zero, vec4<f32>(1.0), abs(ww) - tw > zero);
            y4[c * n4 + q] = vec4<f32>(px.x, py.x, pz.x, pw.x);
            y4[(c + 1u) * n4 + q] = vec4<f32>(px.y, py.y, pz.y, pw.y);
            y4[(c + 2u) * n4 + q] = vec4<f32>(px.z, py.z, pz.z, pw.z);
            y4[(c + 3u) * n4 + q] = vec4<f32>(px.w, py.w, pz.w, pw.w);
        }
    }
}

// ==== Subgroup forms (compiled only on CPU adapters with 8-lane subgroups) ====
//
// lavapipe runs a workgroup as SIMD groups of 8 lanes and issues every load of a storage
// buffer one lane at a time, a load to the same address in all 8 lanes included. The forms
// below let each lane load one share of the values its group uses alike and hand them round
// with `subgroupBroadcast` (a register move): the same values, the same arithmetic, the same
// bits, in fewer loads.

// `ordered_input_grad` with the group's dy values and `order` entries loaded once: per four
// ordered rows, lane l loads order[4 kk + l % 4] and dy at that row for samples l / 4 and
// l / 4 + 2 of the group's four (2 loads instead of 16, 1 instead of 4), then the 16 values of
// dy and the 8 vec4 of Pc per lane as there. The subgroup is the workgroup's x row (8 lanes).
@compute @workgroup_size(8, 8, 1)
fn ordered_input_grad_sg(@builtin(global_invocation_id) gid: vec3<u32>,
                         @builtin(local_invocation_id) lid: vec3<u32>) {
    let sl = lid.x;
    let b0 = gid.y * 4u;
    let i0 = gid.x * 8u;
    // Lanes past the inputs still load their share (a partial group's broadcasts read them);
    // the stores skip them.
    let n4 = sp.rows / 4u;
    let k4 = compact_width(order[sp.rows]);
    let c = sl & 3u;
    let r_lo = min(b0 + (sl >> 2u), sp.batch - 1u) * sp.rows;
    let r_hi = min(b0 + (sl >> 2u) + 2u, sp.batch - 1u) * sp.rows;
    var cols: array<u32, 8>;
    for (var j = 0u; j < 8u; j++) {
        cols[j] = min(i0 + j, sp.cols - 1u) * n4;
    }
    var acc: array<array<f32, 8>, 4>;
    for (var r = 0u; r < 4u; r++) {
        for (var j = 0u; j < 8u; j++) {
            acc[r][j] = 0.0;
        }
    }
    for (var kk = 0u; kk < k4; kk++) {
        let o = order[4u * kk + c];
        let lo = x[r_lo + o];
        let hi = x[r_hi + o];
        var av: array<vec4<f32>, 4>;
        av[0] = vec4<f32>(subgroupBroadcast(lo, 0u), subgroupBroadcast(lo, 1u),
                          subgroupBroadcast(lo, 2u), subgroupBroadcast(lo, 3u));
        av[1] = vec4<f32>(subgroupBroadcast(lo, 4u), subgroupBroadcast(lo, 5u),
                          subgroupBroadcast(lo, 6u), subgroupBroadcast(lo, 7u));
        av[2] = vec4<f32>(subgroupBroadcast(hi, 0u), subgroupBroadcast(hi, 1u),
                          subgroupBroadcast(hi, 2u), subgroupBroadcast(hi, 3u));
        av[3] = vec4<f32>(subgroupBroadcast(hi, 4u), subgroupBroadcast(hi, 5u),
                          subgroupBroadcast(hi, 6u), subgroupBroadcast(hi, 7u));
        var bv: array<vec4<f32>, 8>;
        for (var j = 0u; j < 8u; j++) {
            bv[j] = w4[cols[j] + kk];
        }
        for (var r = 0u; r < 4u; r++) {
            for (var j = 0u; j < 8u; j++) {
                acc[r][j] += dot(av[r], bv[j]);
            }
        }
    }
    ordered_input_grad_store(&acc, b0, i0);
}

// List entry t of block blk's two segments (`input_product`'s indexing).
fn list_entry(at: u32, t: u32, n0: u32, jump: u32) -> u32 {
    return at + t + select(0u, jump, t >= n0);
}

// One listed input of `input_product_sg`: its row i of Pt (two vec4 per lane), the block's IB
// values lo (samples 0-3) and hi (4-7) as broadcast; the same fma chain as `input_product`.
fn input_product_step(acc: ptr<function, array<vec4<f32>, 16>>, i: u32, n4: u32, c0: u32,
                      c1: u32, lo: vec4<f32>, hi: vec4<f32>) {
    let p0 = w4[i * n4 + c0];
    let p1 = w4[i * n4 + c1];
    for (var j = 0u; j < 4u; j++) {
        (*acc)[2u * j] = fma(vec4<f32>(lo[j]), p0, (*acc)[2u * j]);
        (*acc)[2u * j + 1u] = fma(vec4<f32>(lo[j]), p1, (*acc)[2u * j + 1u]);
        (*acc)[8u + 2u * j] = fma(vec4<f32>(hi[j]), p0, (*acc)[8u + 2u * j]);
        (*acc)[9u + 2u * j] = fma(vec4<f32>(hi[j]), p1, (*acc)[9u + 2u * j]);
    }
}

// `input_product` with the group's shared loads shared, 8 list entries at a time: lane l loads
// entry l's input index and the vec4 (l % 2) of the values of entries l / 2 (va) and 4 + l / 2
// (vb); each entry then takes them by broadcast (3 loads per lane per 8 entries instead of 24).
// The same entries in the same order, the same sums. Lanes past the outputs run the loop too
// (their shares feed the others) and store nothing.
fn input_product_sg(gid: vec3<u32>, wid: vec3<u32>, l: u32, compacted: bool) {
    let o0 = gid.x * 8u;
    let blk = gid.y;
    let b0 = blk * IB;
    if (b0 >= sp.batch) {
        return;
    }
    let n4 = sp.rows / 4u;
    let c0 = min(o0 / 4u, n4 - 1u);
    let c1 = min(o0 / 4u + 1u, n4 - 1u);
    var acc: array<vec4<f32>, 16>;
    for (var j = 0u; j < 16u; j++) {
        acc[j] = vec4<f32>(0.0);
    }
    let at = blk * sp.cols;
    let n0 = list_cnt[2u * blk];
    var n = n0 + list_cnt[2u * blk + 1u];
    let jump = list_half() - n0;
    if (compacted && wid.x * 64u >= order[sp.rows]) {
        n = 0u;
    }
    let full = n & ~7u;
    for (var t = 0u; t < full; t += 8u) {
        let il = list_idx[list_entry(at, t + l, n0, jump)];
        let va = list_val4[2u * list_entry(at, t + (l >> 1u), n0, jump) + (l & 1u)];
        let vb = list_val4[2u * list_entry(at, t + 4u + (l >> 1u), n0, jump) + (l & 1u)];
        input_product_step(&acc, subgroupBroadcast(il, 0u), n4, c0, c1,
                           subgroupBroadcast(va, 0u), subgroupBroadcast(va, 1u));
        input_product_step(&acc, subgroupBroadcast(il, 1u), n4, c0, c1,
                           subgroupBroadcast(va, 2u), subgroupBroadcast(va, 3u));
        input_product_step(&acc, subgroupBroadcast(il, 2u), n4, c0, c1,
                           subgroupBroadcast(va, 4u), subgroupBroadcast(va, 5u));
        input_product_step(&acc, subgroupBroadcast(il, 3u), n4, c0, c1,
                           subgroupBroadcast(va, 6u), subgroupBroadcast(va, 7u));
        input_product_step(&acc, subgroupBroadcast(il, 4u), n4, c0, c1,
                           subgroupBroadcast(vb, 0u), subgroupBroadcast(vb, 1u));
        input_product_step(&acc, subgroupBroadcast(il, 5u), n4, c0, c1,
                           subgroupBroadcast(vb, 2u), subgroupBroadcast(vb, 3u));
        input_product_step(&acc, subgroupBroadcast(il, 6u), n4, c0, c1,
                           subgroupBroadcast(vb, 4u), subgroupBroadcast(vb, 5u));
        input_product_step(&acc, subgroupBroadcast(il, 7u), n4, c0, c1,
                           subgroupBroadcast(vb, 6u), subgroupBroadcast(vb, 7u));
    }
    for (var t = full; t < n; t++) {
        let e = list_entry(at, t, n0, jump);
        input_product_step(&acc, list_idx[e], n4, c0, c1, list_val4[2u * e], list_val4[2u * e + 1u]);
    }
    if (o0 >= sp.rows) {
        return;
    }
    store_input_products(&acc, b0, o0, compacted);
}

// `ell_input_product` in the subgroup form (`input_product_sg`).
@compute @workgroup_size(8, 1, 1)
fn ell_input_product_sg(@builtin(global_invocation_id) gid: vec3<u32>,
                        @builtin(local_invocation_id) lid: vec3<u32>) {
    input_product_sg(gid, vec3<u32>(0u), lid.x, false);
}

// `ell_input_product_compacted` in the subgroup form (`input_product_sg`).
@compute @workgroup_size(8, 1, 1)
fn ell_input_product_compacted_sg(@builtin(global_invocation_id) gid: vec3<u32>,
                                  @builtin(workgroup_id) wid: vec3<u32>,
                                  @builtin(local_invocation_id) lid: vec3<u32>) {
    input_product_sg(gid, wid, lid.x, true);
}
