// gemm.wgsl: general f32 matrix products with run-time strides, and the bias gradient.
//
//   C[m][n] = (accumulate ? C[m][n] : 0) + sum_k A(m, k) * B(k, n) + (has_bias ? bias[n] : 0),
//   then max(., 0) with `relu`
//   A(m, k) = a[m * a_rs + k * a_cs]      B(k, n) = b[k * b_rs + n * b_cs]      C row-major (M x N)
//
// One entry point serves all three products of a linear layer by choice of strides:
//   forward         Y  = X W^T + b   A = X (M x K),  B(k, n) = W[n][k]
//   backward_input  dX = G W         A = G (M x N),  B(k, n) = W[k][n]
//   backward_weight dW = G^T X       A(m, k) = G[k][m],  B = X
// Variants: `gemm_regblock` (8x8 outputs per invocation in registers, no workgroup memory:
// fastest on CPU adapters such as lavapipe) and `gemm_tiled` (16x16 workgroup tiles staged in
// workgroup memory with coalesced loads, one output per invocation: the GPU kernel; with few
// output tiles and a long k, `gemm_tiled_split` splits k four ways inside a workgroup). All write
// every C element.
// The file's closing section (from its `==== Subgroup forms` line on) holds forms of the kernels
// above that share a SIMD group's common loads by `subgroupBroadcast`: compiled only on Vulkan
// CPU adapters whose subgroups are exactly 8 lanes (lavapipe: `Gpu::subgroups8`,
// `kernels::module_source`), with the plain forms' bits.

// Keep in sync with `GemmParams` in src/kernels/gemm.rs.
struct GemmParams {
    m: u32,
    n: u32,
    k: u32,
    a_rs: u32,
    a_cs: u32,
    b_rs: u32,
    b_cs: u32,
    accumulate: u32,
    has_bias: u32,
    bias_grad: u32, // gemm_tn_vec4 and the tiled forms: also write db = sum over k of A(m, k) (a
                    // linear layer's bias gradient)
    relu: u32,      // store C as max(C, 0) (a linear layer's ReLU, fused into its forward)
    masked: u32,    // gemm_tn_sgd: C is dL/dP of a DST-masked weight (mask backward applied first)
    momentum: f32,  // gemm_tn_sgd: SGD's momentum and weight decay
    weight_decay: f32,
    gate: u32,      // store C where bias[row * N + col] > 0, else 0 (the ReLU's backward of the
                    // layer whose output is this product's input; bias then holds that output)
    _pad3: u32,
    _pad4: u32,
    _pad5: u32,
}

@group(0) @binding(0) var<uniform> gp: GemmParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

fn store_c(row: u32, col: u32, v: f32) {
    if (row < gp.m && col < gp.n) {
        var r = v;
        if (gp.has_bias != 0u) {
            r = r + bias[col];
        }
        let i = row * gp.n + col;
        if (gp.accumulate != 0u) {
            r = c[i] + r;
        }
        if (gp.relu != 0u) {
            r = max(r, 0.0);
        }
        if (gp.gate != 0u) {
            r = select(0.0, r, bias[i] > 0.0);
        }
        c[i] = r;
    }
}

const RB: u32 = 8u; // outputs per invocation along each axis (regblock)

// Reads A, B, bias; writes (or accumulates into) C. Workgroup 8x8 invocations, 64x64 outputs.
@compute @workgroup_size(8, 8, 1)
fn gemm_regblock(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * RB;
    let col0 = gid.x * RB;
    if (row0 >= gp.m || col0 >= gp.n) {
        return;
    }
    // Clamp out-of-range rows/columns to the last valid one: loads stay in bounds, stores skip them.
    var a_base: array<u32, 8>;
    var b_base: array<u32, 8>;
    for (var i = 0u; i < RB; i++) {
        a_base[i] = min(row0 + i, gp.m - 1u) * gp.a_rs;
        b_base[i] = min(col0 + i, gp.n - 1u) * gp.b_cs;
    }
    var acc: array<array<f32, 8>, 8>;
    for (var i = 0u; i < RB; i++) {
        for (var j = 0u; j < RB; j++) {
            acc[i][j] = 0.0;
        }
    }
    for (var kk = 0u; kk < gp.k; kk++) {
        let ak = kk * gp.a_cs;
        let bk = kk * gp.b_rs;
        var av: array<f32, 8>;
        var bv: array<f32, 8>;
        for (var i = 0u; i < RB; i++) {
            av[i] = a[a_base[i] + ak];
            bv[i] = b[b_base[i] + bk];
        }
        for (var i = 0u; i < RB; i++) {
            for (var j = 0u; j < RB; j++) {
                acc[i][j] = fma(av[i], bv[j], acc[i][j]);
            }
        }
    }
    for (var i = 0u; i < RB; i++) {
        for (var j = 0u; j < RB; j++) {
            store_c(row0 + i, col0 + j, acc[i][j]);
        }
    }
}

// Products with fewer than 64 columns on CPU adapters (a classifier's 10 outputs): one output
// per invocation over a flat index, so that every lane has work (`gemm_regblock`'s lanes run
// along blocks of 8 columns: with 10 columns, 6 of its 8 lanes idle, and each busy one loads 16
// scalars per k). The same sums in the same order. Workgroups: `grid_1d(ceil(M N / 64))`.
@compute @workgroup_size(64, 1, 1)
fn gemm_small(@builtin(global_invocation_id) gid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= gp.m * gp.n) {
        return;
    }
    let row = idx / gp.n;
    let col = idx % gp.n;
    var acc = 0.0;
    for (var kk = 0u; kk < gp.k; kk++) {
        acc = fma(a[row * gp.a_rs + kk * gp.a_cs], b[kk * gp.b_rs + col * gp.b_cs], acc);
    }
    store_c(row, col, acc);
}

const TS: u32 = 16u;  // outputs per workgroup along each axis (tiled), one per invocation
const TK: u32 = 32u;  // k-depth of one staged slice
var<workgroup> a_tile: array<f32, 544>; // TK x (TS + 1), [k][m], padded against bank conflicts
var<workgroup> b_tile: array<f32, 544>; // TK x (TS + 1), [k][n]

// One staged value of a slice of A (`stage_a`) or B (`stage_b`) for the tiled kernels: element e
// of a slice `side` wide (rows of A from row0, columns of B from col0) and TK deep from k0, walked
// along whichever index of the operand is contiguous (k when a_cs / b_rs is 1, else m / n), so
// neighbouring invocations load neighbouring addresses; zero outside the matrix and from k_end.
// `at`: its place in a [k][side + 1] tile (padded against bank conflicts).
struct Staged {
    at: u32,
    v: f32,
}

fn stage_a(row0: u32, k0: u32, k_end: u32, e: u32, side: u32) -> Staged {
    var kk = e / side;
    var mm = e % side;
    if (gp.a_cs == 1u) {
        kk = e % TK;
        mm = e / TK;
    }
    var v = 0.0;
    if (k0 + kk < k_end && row0 + mm < gp.m) {
        v = a[(row0 + mm) * gp.a_rs + (k0 + kk) * gp.a_cs];
    }
    return Staged(kk * (side + 1u) + mm, v);
}

fn stage_b(col0: u32, k0: u32, k_end: u32, e: u32, side: u32) -> Staged {
    var kk = e / side;
    var nn = e % side;
    if (gp.b_rs == 1u) {
        kk = e % TK;
        nn = e / TK;
    }
    var v = 0.0;
    if (k0 + kk < k_end && col0 + nn < gp.n) {
        v = b[(k0 + kk) * gp.b_rs + (col0 + nn) * gp.b_cs];
    }
    return Staged(kk * (side + 1u) + nn, v);
}

// The bias gradient in the tiled forms (`bias_grad` set: a linear layer's weight gradient, A(m, k)
// = G[k][m], db[m] = sum over k of A(m, k), all of G's rows): in the first column of workgroups
// (wid.x == 0, which stage every slice of A's rows), the invocations with lid.x == `lane` each sum
// one staged row of A over the slice, in k order, after the slice's products (the zero padding
// past k adds nothing). So each db element is one chain over k in order (per quarter of k in
// `gemm_tiled_split`, then the quarters in order): deterministic, no extra dispatch.
fn bias_grad_lane(wid_x: u32, lid_x: u32, lane: u32) -> bool {
    return gp.bias_grad != 0u && wid_x == 0u && lid_x == lane;
}

fn store_db(row: u32, v: f32) {
    if (row < gp.m) {
        db[row] = v;
    }
}

// Reads A, B, bias; writes (or accumulates into) C. Workgroup 16x16 invocations, 16x16 outputs,
// one per invocation: small tiles give the skinny products of a batch-64 layer (M = 64) enough
// workgroups to fill a GPU. Each staged slice is read from storage coalesced (`stage_a`,
// `stage_b`) for all three products of a layer. k is summed in order.
@compute @workgroup_size(16, 16, 1)
fn gemm_tiled(@builtin(local_invocation_id) lid: vec3<u32>,
              @builtin(workgroup_id) wid: vec3<u32>) {
    let row0 = wid.y * TS;
    let col0 = wid.x * TS;
    let t = lid.y * 16u + lid.x;
    // With `bias_grad`, the first column of workgroups also sums its rows of A (`bias_lane`).
    let bias_lane = bias_grad_lane(wid.x, lid.x, 0u);
    var acc = 0.0;
    var bsum = 0.0;
    for (var k0 = 0u; k0 < gp.k; k0 += TK) {
        // 256 invocations stage 512 values of each operand (2 each).
        for (var r = 0u; r < 2u; r++) {
            let e = t + r * 256u;
            let sa = stage_a(row0, k0, gp.k, e, TS);
            a_tile[sa.at] = sa.v;
            let sb = stage_b(col0, k0, gp.k, e, TS);
            b_tile[sb.at] = sb.v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            acc = fma(a_tile[kk * (TS + 1u) + lid.y], b_tile[kk * (TS + 1u) + lid.x], acc);
        }
        if (bias_lane) {
            for (var kk = 0u; kk < TK; kk++) {
                bsum = bsum + a_tile[kk * (TS + 1u) + lid.y];
            }
        }
        workgroupBarrier();
    }
    store_c(row0 + lid.y, col0 + lid.x, acc);
    if (bias_lane) {
        store_db(row0 + lid.y, bsum);
    }
}

const T2: u32 = 32u;  // outputs per workgroup along each axis (tiled 2x2), four per invocation
var<workgroup> a_tile2: array<f32, 1056>; // TK x (T2 + 1), [k][m], padded against bank conflicts
var<workgroup> b_tile2: array<f32, 1056>; // TK x (T2 + 1), [k][n]

// GPU variant of `gemm_tiled` for products with many output tiles: workgroup 16 x 16, 32 x 32
// outputs, invocation (x, y) the 2 x 2 outputs (y + 16 i, x + 16 j). Each staged slice (TK deep,
// staged along the contiguous index as `gemm_tiled` does) feeds four multiply-adds per pair of
// loads from workgroup memory instead of one. Each output is the same chain of multiply-adds over
// the same zero-padded slices as in `gemm_tiled`: the same bits.
@compute @workgroup_size(16, 16, 1)
fn gemm_tiled_2x2(@builtin(local_invocation_id) lid: vec3<u32>,
                  @builtin(workgroup_id) wid: vec3<u32>) {
    let row0 = wid.y * T2;
    let col0 = wid.x * T2;
    let t = lid.y * 16u + lid.x;
    // With `bias_grad`: lanes x = 0 and 1 of the first column of workgroups sum A's rows y and
    // y + 16.
    let bias_lane = bias_grad_lane(wid.x, lid.x / 2u, 0u);
    let bias_row = lid.y + 16u * lid.x;
    var bsum = 0.0;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0); // [2 i + j]
    for (var k0 = 0u; k0 < gp.k; k0 += TK) {
        // 256 invocations stage 1024 values of each operand (4 each).
        for (var r = 0u; r < 4u; r++) {
            let e = t + r * 256u;
            let sa = stage_a(row0, k0, gp.k, e, T2);
            a_tile2[sa.at] = sa.v;
            let sb = stage_b(col0, k0, gp.k, e, T2);
            b_tile2[sb.at] = sb.v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let at = kk * (T2 + 1u);
            let a0 = a_tile2[at + lid.y];
            let a1 = a_tile2[at + lid.y + 16u];
            let b0 = b_tile2[at + lid.x];
            let b1 = b_tile2[at + lid.x + 16u];
            acc[0] = fma(a0, b0, acc[0]);
            acc[1] = fma(a0, b1, acc[1]);
            acc[2] = fma(a1, b0, acc[2]);
            acc[3] = fma(a1, b1, acc[3]);
        }
        if (bias_lane) {
            for (var kk = 0u; kk < TK; kk++) {
                bsum = bsum + a_tile2[kk * (T2 + 1u) + bias_row];
            }
        }
        workgroupBarrier();
    }
    store_c(row0 + lid.y, col0 + lid.x, acc[0]);
    store_c(row0 + lid.y, col0 + lid.x + 16u, acc[1]);
    store_c(row0 + lid.y + 16u, col0 + lid.x, acc[2]);
    store_c(row0 + lid.y + 16u, col0 + lid.x + 16u, acc[3]);
    if (bias_lane) {
        store_db(row0 + bias_row, bsum);
    }
}

const SS: u32 = 8u;     // outputs per workgroup along each axis (split-k)
const SPLIT: u32 = 4u;  // k-ranges per workgroup (split-k)
var<workgroup> a_split: array<f32, 1152>; // SPLIT x TK x (SS + 1), [z][k][m], padded
var<workgroup> b_split: array<f32, 1152>; // SPLIT x TK x (SS + 1), [z][k][n]
var<workgroup> acc_split: array<f32, 256>; // SPLIT x SS x SS partial sums
var<workgroup> db_split: array<f32, 32>;    // SPLIT x SS partial bias-gradient sums

// GPU variant of `gemm_tiled` for products with few output tiles and a long k (a batch-64 layer's
// forward: 64 x 300 outputs over k = 784 are 76 tiles of 16 x 16, each a chain of 25 staged slices
// that leaves a GPU mostly waiting on loads). Workgroup 8 x 8 x 4: 8 x 8 outputs, and the four
// layers z of invocations each sum one contiguous quarter of k's slices (staged as `gemm_tiled`
// does, along the contiguous index); then invocation (x, y, 0) adds the four partial sums in order
// z = 0..3 and stores. Four times the workgroups, a quarter of the chain; the sums' order is fixed
// (deterministic), not `gemm_tiled`'s. Same reads and writes.
@compute @workgroup_size(8, 8, 4)
fn gemm_tiled_split(@builtin(local_invocation_id) lid: vec3<u32>,
                    @builtin(workgroup_id) wid: vec3<u32>) {
    let row0 = wid.y * SS;
    let col0 = wid.x * SS;
    let z = lid.z;
    let t = lid.y * SS + lid.x;
    let slices = (gp.k + TK - 1u) / TK;
    let per = (slices + SPLIT - 1u) / SPLIT; // slices per layer (uniform: every layer loops alike)
    let k_begin = z * per * TK;
    let k_end = min(gp.k, k_begin + per * TK);
    let base = z * TK * (SS + 1u);
    // With `bias_grad`: lane x = 0 of each layer z in the first column of workgroups sums its
    // quarter of row y of A.
    let bias_lane = bias_grad_lane(wid.x, lid.x, 0u);
    var bsum = 0.0;
    var acc = 0.0;
    for (var s = 0u; s < per; s++) {
        let k0 = k_begin + s * TK;
        // A layer's 64 invocations stage 256 values of each operand (4 each), zero past the
        // layer's range.
        for (var r = 0u; r < 4u; r++) {
            let e = t + r * 64u;
            let sa = stage_a(row0, k0, k_end, e, SS);
            a_split[base + sa.at] = sa.v;
            let sb = stage_b(col0, k0, k_end, e, SS);
            b_split[base + sb.at] = sb.v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            acc = fma(a_split[base + kk * (SS + 1u) + lid.y], b_split[base + kk * (SS + 1u) + lid.x], acc);
        }
        if (bias_lane) {
            for (var kk = 0u; kk < TK; kk++) {
                bsum = bsum + a_split[base + kk * (SS + 1u) + lid.y];
            }
        }
        workgroupBarrier();
    }
    acc_split[z * 64u + t] = acc;
    if (bias_lane) {
        db_split[z * SS + lid.y] = bsum;
    }
    workgroupBarrier();
    if (z == 0u) {
        var sum = acc_split[t];
        for (var q = 1u; q < SPLIT; q++) {
            sum = sum + acc_split[q * 64u + t];
        }
        store_c(row0 + lid.y, col0 + lid.x, sum);
        if (bias_lane) {
            var b = db_split[lid.y];
            for (var q = 1u; q < SPLIT; q++) {
                b = b + db_split[q * SS + lid.y];
            }
            store_db(row0 + lid.y, b);
        }
    }
}

// Bias gradient: c[n] = sum over rows m < M of a[m * N + n] (db = sum_rows G).
// Reads a (M x N); writes c (N). One invocation per column, rows summed in order (deterministic).
// Uses gp.m, gp.n only.
@compute @workgroup_size(64, 1, 1)
fn bias_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    if (col >= gp.n) {
        return;
    }
    var s = 0.0;
    for (var r = 0u; r < gp.m; r++) {
        s = s + a[r * gp.n + col];
    }
    c[col] = s;
}

var<workgroup> bias_part: array<f32, 256>; // [g][col], for bias_backward_split

// GPU variant of `bias_backward`: workgroup 16 x 16 over 16 columns; invocation (col, g) sums rows
// g, g + 16, ... in order, then invocation (col, 0) adds the 16 partial sums in order g = 0..15
// (fixed order: deterministic). The serial chain is M / 16 long: a GPU sums the bias gradient of
// an LSTM over all T x B rows without a long latency-bound loop on a few workgroups.
@compute @workgroup_size(16, 16, 1)
fn bias_backward_split(@builtin(local_invocation_id) lid: vec3<u32>,
                       @builtin(workgroup_id) wid: vec3<u32>) {
    let col = wid.x * 16u + lid.x;
    var s = 0.0;
    if (col < gp.n) {
        for (var r = lid.y; r < gp.m; r += 16u) {
            s = s + a[r * gp.n + col];
        }
    }
    bias_part[lid.y * 16u + lid.x] = s;
    workgroupBarrier();
    if (lid.y == 0u && col < gp.n) {
        var t = 0.0;
        for (var g = 0u; g < 16u; g++) {
            t = t + bias_part[g * 16u + lid.x];
        }
        c[col] = t;
    }
}

// ---- lavapipe fast paths: vec4 loads along a contiguous dimension (CPU adapters) ----
// Same GemmParams; these read A and B as vec4 arrays (binding offsets are 16-byte aligned).
@group(0) @binding(5) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> db: array<f32>;

// C = A B^T form (linear forward): A(m, k) = a[m*K + k], B(k, n) = b[n*K + k], K % 4 == 0.
// Reads a4, b4, bias; writes (or accumulates into) C. Each invocation: 4 rows x 8 columns
// (fewer live registers than 8x8, measured faster on lavapipe), k consumed four at a time as dot
// products of vec4s. Workgroup 8x8 invocations: 32 rows x 64 columns.
@compute @workgroup_size(8, 8, 1)
fn gemm_nt_vec4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * RB;
    if (row0 >= gp.m || col0 >= gp.n) {
        return;
    }
    let k4 = gp.k / 4u;
    var a_base: array<u32, 4>;
    var b_base: array<u32, 8>;
    for (var i = 0u; i < 4u; i++) {
        a_base[i] = min(row0 + i, gp.m - 1u) * k4;
    }
    for (var i = 0u; i < RB; i++) {
        b_base[i] = min(col0 + i, gp.n - 1u) * k4;
    }
    var acc: array<array<f32, 8>, 4>;
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < RB; j++) {
            acc[i][j] = 0.0;
        }
    }
    for (var kk = 0u; kk < k4; kk++) {
        var av: array<vec4<f32>, 4>;
        var bv: array<vec4<f32>, 8>;
        for (var i = 0u; i < 4u; i++) {
            av[i] = a4[a_base[i] + kk];
        }
        for (var i = 0u; i < RB; i++) {
            bv[i] = b4[b_base[i] + kk];
        }
        for (var i = 0u; i < 4u; i++) {
            for (var j = 0u; j < RB; j++) {
                acc[i][j] += dot(av[i], bv[j]);
            }
        }
    }
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < RB; j++) {
            store_c(row0 + i, col0 + j, acc[i][j]);
        }
    }
}

// The 4 x 8 outputs of the A^T B form at (row0, col0): row i in tile[2i] (columns 0-3) and
// tile[2i + 1] (columns 4-7); M % 4 == 0, N % 4 == 0, columns past N clamped (stores skip them).
fn tn_tile(row0: u32, col0: u32) -> array<vec4<f32>, 8> {
    let m4 = gp.m / 4u;
    let n4 = gp.n / 4u;
    let ra = row0 / 4u;
    let ca = min(col0 / 4u, n4 - 1u);
    let cb = min(col0 / 4u + 1u, n4 - 1u);
    var acc: array<vec4<f32>, 8>;
    for (var i = 0u; i < 8u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    for (var kk = 0u; kk < gp.k; kk++) {
        let a0 = a4[kk * m4 + ra];
        let b0 = b4[kk * n4 + ca];
        let b1 = b4[kk * n4 + cb];
        for (var i = 0u; i < 4u; i++) {
            acc[2u * i] = fma(vec4<f32>(a0[i]), b0, acc[2u * i]);
            acc[2u * i + 1u] = fma(vec4<f32>(a0[i]), b1, acc[2u * i + 1u]);
        }
    }
    return acc;
}

// With `bias_grad`, by the first column block only (a second pass over the invocation's four rows
// of A, so that the main loop stays as it is for every other invocation): db[m] = sum over k of
// A(m, k) in order (the same sums as `bias_backward`).
fn tn_bias_grad(row0: u32, first_block: bool) {
    if (gp.bias_grad != 0u && first_block) {
        let m4 = gp.m / 4u;
        var dsum = vec4<f32>(0.0);
        for (var kk = 0u; kk < gp.k; kk++) {
            dsum = dsum + a4[kk * m4 + row0 / 4u];
        }
        for (var i = 0u; i < 4u; i++) {
            db[row0 + i] = dsum[i];
        }
    }
}

// C = A^T B form (linear weight gradient): A(m, k) = a[k*M + m], B(k, n) = b[k*N + n],
// M % 4 == 0, N % 4 == 0. Reads a4, b4; writes (or accumulates into) C and, with `bias_grad`,
// db[m] = sum over k of A(m, k) in order (the bias gradient, by the invocations of the first
// column block; the same sums as `bias_backward`). Each invocation:
// 4 rows x 8 columns as outer products of one vec4 of A and two of B per k (8 vec4 accumulators,
// half of what 8 x 8 outputs need: fewer live registers on lavapipe). Workgroup 8x8 invocations:
// 32 rows x 64 columns.
@compute @workgroup_size(8, 8, 1)
fn gemm_tn_vec4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * RB;
    if (row0 >= gp.m || col0 >= gp.n) {
        return;
    }
    let acc = tn_tile(row0, col0);
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            store_c(row0 + i, col0 + j, acc[2u * i][j]);
            store_c(row0 + i, col0 + 4u + j, acc[2u * i + 1u][j]);
        }
    }
    tn_bias_grad(row0, gid.x == 0u);
}

// C = A B form (linear input gradient): A(m, k) = a[m*K + k], B(k, n) = b[k*N + n],
// K % 4 == 0, N % 4 == 0. Reads a4, b4; writes (or accumulates into) C. Each invocation: 8 rows x
// 8 columns; per four k, eight vec4 of A and eight vec4 of B. Workgroup 8x8 invocations.
@compute @workgroup_size(8, 8, 1)
fn gemm_nn_vec4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * RB;
    let col0 = gid.x * RB;
    if (row0 >= gp.m || col0 >= gp.n) {
        return;
    }
    let k4 = gp.k / 4u;
    let n4 = gp.n / 4u;
    var a_base: array<u32, 8>;
    for (var i = 0u; i < RB; i++) {
        a_base[i] = min(row0 + i, gp.m - 1u) * k4;
    }
    let ca = min(col0 / 4u, n4 - 1u);
    let cb = min(col0 / 4u + 1u, n4 - 1u);
    var acc: array<vec4<f32>, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    for (var kq = 0u; kq < k4; kq++) {
        let bv = nn_b_rows(kq, ca, cb, n4);
        for (var i = 0u; i < RB; i++) {
            nn_row(&acc, i, a4[a_base[i] + kq], bv);
        }
    }
    nn_store(&acc, row0, col0);
}

// B's four rows 4 kq..4 kq + 3 at an `gemm_nn_vec4` invocation's two column vec4s (ca, cb):
// bv[2q] (columns 0-3) and bv[2q + 1] (4-7) of row 4 kq + q.
fn nn_b_rows(kq: u32, ca: u32, cb: u32, n4: u32) -> array<vec4<f32>, 8> {
    var bv: array<vec4<f32>, 8>;
    for (var q = 0u; q < 4u; q++) {
        let krow = (kq * 4u + q) * n4;
        bv[2u * q] = b4[krow + ca];
        bv[2u * q + 1u] = b4[krow + cb];
    }
    return bv;
}

// Row i of a `gemm_nn_vec4` invocation's outputs: four k of A's row (av) times B's four rows
// (`nn_b_rows`), fma'd into acc[2i] (columns 0-3) and acc[2i + 1] (4-7), k ascending.
fn nn_row(acc: ptr<function, array<vec4<f32>, 16>>, i: u32, av: vec4<f32>,
          bv: array<vec4<f32>, 8>) {
    var lo = (*acc)[2u * i];
    var hi = (*acc)[2u * i + 1u];
    for (var q = 0u; q < 4u; q++) {
        lo = fma(vec4<f32>(av[q]), bv[2u * q], lo);
        hi = fma(vec4<f32>(av[q]), bv[2u * q + 1u], hi);
    }
    (*acc)[2u * i] = lo;
    (*acc)[2u * i + 1u] = hi;
}

// The stores of a `gemm_nn_vec4` invocation's 8 x 8 outputs (those in range).
fn nn_store(acc: ptr<function, array<vec4<f32>, 16>>, row0: u32, col0: u32) {
    for (var i = 0u; i < RB; i++) {
        for (var j = 0u; j < 4u; j++) {
            store_c(row0 + i, col0 + j, (*acc)[2u * i][j]);
            store_c(row0 + i, col0 + 4u + j, (*acc)[2u * i + 1u][j]);
        }
    }
}

// ---- the weight-gradient product fused with the optimiser step (CPU adapters) ----
@group(0) @binding(8) var<storage, read_write> upd_param: array<vec4<f32>>;     // W, M x N
@group(0) @binding(9) var<storage, read_write> upd_velocity: array<vec4<f32>>;  // W's SGD velocity
// t (M; M % 4 == 0), when masked, and the partial row sums of dL/dt: ceil(N / 8) x M, block-major
// (an invocation's 8 rows of one block are two vec4, read and written as such).
@group(0) @binding(10) var<storage, read_write> upd_threshold: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read_write> upd_dt_part: array<vec4<f32>>;
@group(1) @binding(0) var<uniform> si: StepInfo;

// Four elements of `gemm_tn_sgd` at (row, col..col + 3) (none past N: N % 4 == 0): C = g there
// (row threshold t) into W's SGD step, W and its velocity read and written as one vec4 each (a
// quarter of the memory instructions of four scalar elements: lavapipe issues one per lane).
// Returns their terms of the row's partial sum of dL/dt (0 when not masked).
fn tn_sgd_four(row: u32, col: u32, g: vec4<f32>, t: f32) -> f32 {
    if (col >= gp.n) {
        return 0.0;
    }
    let e4 = (row * gp.n + col) / 4u;
    let w = upd_param[e4];
    let v_old = upd_velocity[e4];
    var dw = g;
    var part = vec4<f32>(0.0);
    if (gp.masked != 0u) {
        for (var i = 0u; i < 4u; i++) {
            let r = mask_grads(g[i], w[i], t);
            dw[i] = r.x;
            part[i] = r.y;
        }
    }
    var v: vec4<f32>;
    for (var i = 0u; i < 4u; i++) {
        v[i] = sgd_velocity(dw[i], w[i], v_old[i], gp.momentum, gp.weight_decay);
    }
    upd_velocity[e4] = v;
    upd_param[e4] = w - si.lr * v;
    return part.x + part.y + part.z + part.w;
}

// One row of a `gemm_tn_sgd` invocation (threshold t): columns col..col + 7 from lo (0-3) and
// hi (4-7). Returns the row's partial sum of dL/dt over them.
fn tn_sgd_row(row: u32, col: u32, lo: vec4<f32>, hi: vec4<f32>, t: f32) -> f32 {
    return tn_sgd_four(row, col, lo, t) + tn_sgd_four(row, col + 4u, hi, t);
}

// Four rows (row0..row0 + 3, row0 % 4 == 0) of a `gemm_tn_sgd` invocation, columns 0-3 of
// row i in lo[i], 4-7 in hi[i]: their thresholds one vec4, their partial sums of dL/dt one vec4
// at upd_dt_part[block][row0 / 4] (4 memory instructions per invocation where one per row took
// 16). Takes values, not a pointer into the accumulators with a computed index: that index kept
// them in memory (the listed product took 6 ms instead of 1.7 on lavapipe).
fn tn_sgd_rows4(lo: array<vec4<f32>, 4>, hi: array<vec4<f32>, 4>, row0: u32, col0: u32,
                block: u32) {
    var t = vec4<f32>(0.0);
    if (gp.masked != 0u) {
        t = upd_threshold[row0 / 4u];
    }
    let part = vec4<f32>(tn_sgd_row(row0, col0, lo[0], hi[0], t.x),
                         tn_sgd_row(row0 + 1u, col0, lo[1], hi[1], t.y),
                         tn_sgd_row(row0 + 2u, col0, lo[2], hi[2], t.z),
                         tn_sgd_row(row0 + 3u, col0, lo[3], hi[3], t.w));
    if (gp.masked != 0u) {
        upd_dt_part[block * (gp.m / 4u) + row0 / 4u] = part;
    }
}

// `gemm_tn_vec4`'s product C = A^T B (a linear layer's dW = G^T X, or dP when `masked`), whose
// outputs never reach memory: each element goes straight into the weight's SGD step, the same
// arithmetic as `mask_backward` followed by `optim.sgd` (shared functions `mask_grads`,
// `sgd_velocity`), with one pass over W and its velocity instead of four passes over W, dP, dW:
//   masked: dW = G*S(Q) + G*|W|*H(Q), and upd_dt_part[gid.x][i] = sum over this invocation's 8
//           columns of G*W*H(Q) (`masked.threshold_grad` finishes dL/dt);
//   then    v = momentum * v + (dW + wd * W);  W = W - lr * v.
// W's gradient arena is not written. `bias_grad` writes db as `gemm_tn_vec4` does. Reads a4, b4,
// threshold; updates W and its velocity. Each invocation: 8 rows x 8 columns, two vec4 of A and
// two of B per k (twice the multiply-adds per load of `gemm_tn_vec4`'s 4 x 8: measured 12-20 %
// faster on lavapipe with this epilogue); rows past M (M % 8 == 4) are loaded clamped and skipped.
// Workgroup 8x8 invocations: 64 rows x 64 columns.
@compute @workgroup_size(8, 8, 1)
fn gemm_tn_sgd(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 8u;
    let col0 = gid.x * RB;
    if (row0 >= gp.m || col0 >= gp.n) {
        return;
    }
    var acc: array<vec4<f32>, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    for (var kk = 0u; kk < gp.k; kk++) {
        tn_sgd_k(&acc, kk, row0, col0);
    }
    tn_sgd_store(&acc, row0, col0, gid.x);
}

// One k of a `gemm_tn_sgd` invocation: the outer products of rows row0..row0 + 7 of A^T (two
// vec4, the second clamped when M % 8 == 4) and columns col0..col0 + 7 of B.
fn tn_sgd_k(acc: ptr<function, array<vec4<f32>, 16>>, kk: u32, row0: u32, col0: u32) {
    let m4 = gp.m / 4u;
    let n4 = gp.n / 4u;
    let ra = row0 / 4u;
    let a0 = a4[kk * m4 + ra];
    let a1 = a4[kk * m4 + min(ra + 1u, m4 - 1u)];
    let b0 = b4[kk * n4 + min(col0 / 4u, n4 - 1u)];
    let b1 = b4[kk * n4 + min(col0 / 4u + 1u, n4 - 1u)];
    for (var i = 0u; i < 4u; i++) {
        (*acc)[2u * i] = fma(vec4<f32>(a0[i]), b0, (*acc)[2u * i]);
        (*acc)[2u * i + 1u] = fma(vec4<f32>(a0[i]), b1, (*acc)[2u * i + 1u]);
        (*acc)[8u + 2u * i] = fma(vec4<f32>(a1[i]), b0, (*acc)[8u + 2u * i]);
        (*acc)[9u + 2u * i] = fma(vec4<f32>(a1[i]), b1, (*acc)[9u + 2u * i]);
    }
}

// The epilogue of a `gemm_tn_sgd` invocation: its 8 x 8 outputs into the SGD step, db.
fn tn_sgd_store(acc: ptr<function, array<vec4<f32>, 16>>, row0: u32, col0: u32, block: u32) {
    tn_sgd_rows4(array((*acc)[0], (*acc)[2], (*acc)[4], (*acc)[6]),
                 array((*acc)[1], (*acc)[3], (*acc)[5], (*acc)[7]), row0, col0, block);
    if (row0 + 4u < gp.m) {
        tn_sgd_rows4(array((*acc)[8], (*acc)[10], (*acc)[12], (*acc)[14]),
                     array((*acc)[9], (*acc)[11], (*acc)[13], (*acc)[15]), row0 + 4u, col0, block);
    }
    tn_bias_grad(row0, block == 0u);
    if (row0 + 4u < gp.m) {
        tn_bias_grad(row0 + 4u, block == 0u);
    }
}

// ---- the same product over B's nonzero rows only (the input's zeros skipped) ----
// k_list: for each block of 8 columns of B (nb = ceil(N / 8) blocks), first the counts
// (k_list[blk]), then the lists (k_list[nb + blk * K ..]): the k, ascending, whose row of B has a
// nonzero in the block's columns. A k left out adds only zeros to that block's sums (a * 0 = +-0,
// and s + +-0 == s), so the listed product equals the full one bit for bit.
@group(0) @binding(12) var<storage, read_write> k_list: array<u32>;

// Builds k_list from B (b4): one invocation per column block, a scan over the K rows.
@compute @workgroup_size(64, 1, 1)
fn tn_k_lists(@builtin(global_invocation_id) gid: vec3<u32>) {
    let nb = (gp.n + RB - 1u) / RB;
    let blk = gid.x;
    if (blk >= nb) {
        return;
    }
    let n4 = gp.n / 4u;
    let ca = min(blk * 2u, n4 - 1u);
    let cb = min(blk * 2u + 1u, n4 - 1u);
    let base = nb + blk * gp.k;
    var count = 0u;
    for (var kk = 0u; kk < gp.k; kk++) {
        let zero = vec4<f32>(0.0);
        if (any(b4[kk * n4 + ca] != zero) | any(b4[kk * n4 + cb] != zero)) {
            k_list[base + count] = kk;
            count++;
        }
    }
    k_list[blk] = count;
}

// `gemm_tn_sgd` with the k loop over the column block's list (`tn_k_lists`): for a weight
// gradient dW = G^T X whose input X is mostly zeros (MNIST's pixels: 81 %), the work follows the
// nonzeros. A workgroup is 8 row blocks of one column block: one SIMD row of lanes on lavapipe
// (which puts the x axis across its lanes), so every lane runs the same list.
@compute @workgroup_size(8, 1, 1)
fn gemm_tn_sgd_listed(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.x * 8u;
    let blk = gid.y;
    let col0 = blk * RB;
    if (row0 >= gp.m || col0 >= gp.n) {
        return;
    }
    var acc: array<vec4<f32>, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    let nb = (gp.n + RB - 1u) / RB;
    let count = k_list[blk];
    let base = nb + blk * gp.k;
    for (var e = 0u; e < count; e++) {
        tn_sgd_k(&acc, k_list[base + e], row0, col0);
    }
    tn_sgd_store(&acc, row0, col0, blk);
}

// ==== Subgroup forms (compiled only on CPU adapters with 8-lane subgroups) ====
//
// lavapipe runs a workgroup as SIMD groups of 8 lanes and issues every load of a storage
// buffer one lane at a time, a load to the same address in all 8 lanes included. Here each
// lane loads one share of what its group uses alike and `subgroupBroadcast` (a register move)
// hands it round: the same values and arithmetic, the same bits, in fewer loads.

// One k of `gemm_tn_sgd_listed_sg`: the column block's 8 values of B's row kk come from one
// load per lane (lane l: the vec4 holding column col0 + l, clamped as `tn_sgd_k` clamps), A's
// as in `tn_sgd_k`.
fn tn_sgd_k_sg(acc: ptr<function, array<vec4<f32>, 16>>, kk: u32, row0: u32, col0: u32, l: u32) {
    let m4 = gp.m / 4u;
    let n4 = gp.n / 4u;
    let ra = min(row0 / 4u, m4 - 1u);
    let a0 = a4[kk * m4 + ra];
    let a1 = a4[kk * m4 + min(ra + 1u, m4 - 1u)];
    let bl = b4[kk * n4 + min(col0 / 4u + (l >> 2u), n4 - 1u)][l & 3u];
    let b0 = vec4<f32>(subgroupBroadcast(bl, 0u), subgroupBroadcast(bl, 1u),
                       subgroupBroadcast(bl, 2u), subgroupBroadcast(bl, 3u));
    let b1 = vec4<f32>(subgroupBroadcast(bl, 4u), subgroupBroadcast(bl, 5u),
                       subgroupBroadcast(bl, 6u), subgroupBroadcast(bl, 7u));
    for (var i = 0u; i < 4u; i++) {
        (*acc)[2u * i] = fma(vec4<f32>(a0[i]), b0, (*acc)[2u * i]);
        (*acc)[2u * i + 1u] = fma(vec4<f32>(a0[i]), b1, (*acc)[2u * i + 1u]);
        (*acc)[8u + 2u * i] = fma(vec4<f32>(a1[i]), b0, (*acc)[8u + 2u * i]);
        (*acc)[9u + 2u * i] = fma(vec4<f32>(a1[i]), b1, (*acc)[9u + 2u * i]);
    }
}

// `gemm_tn_sgd_listed` with the group's shared loads shared: the list entries 8 at a time (lane
// l loads entry e + l, the 8 steps take them by broadcast) and B's values per k (`tn_sgd_k_sg`).
// The same k in the same order, the same sums. Lanes past M run the loop too (their shares feed
// the others) and store nothing.
@compute @workgroup_size(8, 1, 1)
fn gemm_tn_sgd_listed_sg(@builtin(global_invocation_id) gid: vec3<u32>,
                         @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = gid.x * 8u;
    let blk = gid.y;
    let col0 = blk * RB;
    let l = lid.x;
    var acc: array<vec4<f32>, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    let nb = (gp.n + RB - 1u) / RB;
    let count = k_list[blk];
    let base = nb + blk * gp.k;
    let full = count & ~7u;
    for (var e = 0u; e < full; e += 8u) {
        let kl = k_list[base + e + l];
        tn_sgd_k_sg(&acc, subgroupBroadcast(kl, 0u), row0, col0, l);
        tn_sgd_k_sg(&acc, subgroupBroadcast(kl, 1u), row0, col0, l);
        tn_sgd_k_sg(&acc, subgroupBroadcast(kl, 2u), row0, col0, l);
        tn_sgd_k_sg(&acc, subgroupBroadcast(kl, 3u), row0, col0, l);
        tn_sgd_k_sg(&acc, subgroupBroadcast(kl, 4u), row0, col0, l);
        tn_sgd_k_sg(&acc, subgroupBroadcast(kl, 5u), row0, col0, l);
        tn_sgd_k_sg(&acc, subgroupBroadcast(kl, 6u), row0, col0, l);
        tn_sgd_k_sg(&acc, subgroupBroadcast(kl, 7u), row0, col0, l);
    }
    for (var e = full; e < count; e++) {
        tn_sgd_k_sg(&acc, k_list[base + e], row0, col0, l);
    }
    if (row0 >= gp.m) {
        return;
    }
    tn_sgd_store(&acc, row0, col0, blk);
}

// The 8 x 8 outputs (rows row0..row0 + 7, columns col0..col0 + 7) of a `gemm_tn_sgd`-shaped
// invocation with A's values shared: per k, the 8 rows of A come from one load per lane (lane l:
// the vec4 holding row row0 + l, clamped as `tn_sgd_k` clamps) by broadcast, B's two vec4 per
// lane as there. The same sums as `tn_sgd_k` in the same order. Every lane of the group must call
// it (their shares feed the others): a lane past N calls it and stores nothing.
fn tn_tile8_sg(row0: u32, col0: u32, l: u32) -> array<vec4<f32>, 16> {
    let m4 = gp.m / 4u;
    let n4 = gp.n / 4u;
    let ra = min(row0 / 4u + (l >> 2u), m4 - 1u);
    let cb0 = min(col0 / 4u, n4 - 1u);
    let cb1 = min(col0 / 4u + 1u, n4 - 1u);
    var acc: array<vec4<f32>, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    for (var kk = 0u; kk < gp.k; kk++) {
        let al = a4[kk * m4 + ra][l & 3u];
        let a0 = vec4<f32>(subgroupBroadcast(al, 0u), subgroupBroadcast(al, 1u),
                           subgroupBroadcast(al, 2u), subgroupBroadcast(al, 3u));
        let a1 = vec4<f32>(subgroupBroadcast(al, 4u), subgroupBroadcast(al, 5u),
                           subgroupBroadcast(al, 6u), subgroupBroadcast(al, 7u));
        let b0 = b4[kk * n4 + cb0];
        let b1 = b4[kk * n4 + cb1];
        for (var i = 0u; i < 4u; i++) {
            acc[2u * i] = fma(vec4<f32>(a0[i]), b0, acc[2u * i]);
            acc[2u * i + 1u] = fma(vec4<f32>(a0[i]), b1, acc[2u * i + 1u]);
            acc[8u + 2u * i] = fma(vec4<f32>(a1[i]), b0, acc[8u + 2u * i]);
            acc[9u + 2u * i] = fma(vec4<f32>(a1[i]), b1, acc[9u + 2u * i]);
        }
    }
    return acc;
}

// `gemm_tn_sgd` with A's values shared (`tn_tile8_sg`). The subgroup is the workgroup's x row
// (one row0); lanes past N run the loop too and store nothing.
@compute @workgroup_size(8, 8, 1)
fn gemm_tn_sgd_sg(@builtin(global_invocation_id) gid: vec3<u32>,
                  @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = gid.y * 8u;
    let col0 = gid.x * RB;
    if (row0 >= gp.m) {
        return;
    }
    var acc = tn_tile8_sg(row0, col0, lid.x);
    if (col0 >= gp.n) {
        return;
    }
    tn_sgd_store(&acc, row0, col0, gid.x);
}

// `gemm_tn_vec4`'s product C = A^T B (and, with `bias_grad`, db) over 8 x 8 outputs per
// invocation with A's values shared (`tn_tile8_sg`): the plain form's 4 x 8 outputs load A's
// vec4 in every lane of a group alike, one load per k for 32 multiply-adds; here one load per
// lane per k feeds 64 in each lane. The same sums in the same order as `gemm_tn_vec4` (each
// output's k ascending, one fma each): the same bits. Workgroup 8x8 invocations: 64 rows x 64
// columns; rows past M (M % 8 == 4) are loaded clamped and not stored.
@compute @workgroup_size(8, 8, 1)
fn gemm_tn_vec4_sg(@builtin(global_invocation_id) gid: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = gid.y * 8u;
    let col0 = gid.x * RB;
    if (row0 >= gp.m) {
        return;
    }
    let acc = tn_tile8_sg(row0, col0, lid.x);
    if (col0 >= gp.n) {
        return;
    }
    for (var i = 0u; i < 8u; i++) {
        for (var j = 0u; j < 4u; j++) {
            store_c(row0 + i, col0 + j, acc[2u * i][j]);
            store_c(row0 + i, col0 + 4u + j, acc[2u * i + 1u][j]);
        }
    }
    tn_bias_grad(row0, gid.x == 0u);
    if (row0 + 4u < gp.m) {
        tn_bias_grad(row0 + 4u, gid.x == 0u);
    }
}

// `gemm_nt_vec4` (C = A B^T, a linear forward; 4 rows x 8 columns per lane) with A's values
// shared: every lane of a group (the workgroup's x row: one row0) needs the same 4 vec4 of A per
// four k, and lanes 0-3 (4-7 alike) load one each, handed round by broadcast; B's 8 vec4 per lane
// as there. 9 loads per lane per four k instead of 12 (8 x 8 outputs per lane with A shared was
// slower on lavapipe: its 64 accumulators spill). Each output adds the same dot products in the
// same order as `gemm_nt_vec4`: the same bits. Lanes past N run the loop too (their shares feed
// the others) and store nothing. Workgroup 8x8 invocations: 32 rows x 64 columns.
@compute @workgroup_size(8, 8, 1)
fn gemm_nt_vec4_sg(@builtin(global_invocation_id) gid: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * RB;
    if (row0 >= gp.m) {
        return;
    }
    let k4 = gp.k / 4u;
    let a_at = min(row0 + (lid.x & 3u), gp.m - 1u) * k4;
    var b_base: array<u32, 8>;
    for (var j = 0u; j < RB; j++) {
        b_base[j] = min(col0 + j, gp.n - 1u) * k4;
    }
    var acc: array<array<f32, 8>, 4>;
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < RB; j++) {
            acc[i][j] = 0.0;
        }
    }
    for (var kk = 0u; kk < k4; kk++) {
        let al = a4[a_at + kk];
        var bv: array<vec4<f32>, 8>;
        for (var j = 0u; j < RB; j++) {
            bv[j] = b4[b_base[j] + kk];
        }
        acc[0] = nt_sg_row(acc[0], subgroupBroadcast(al, 0u), bv);
        acc[1] = nt_sg_row(acc[1], subgroupBroadcast(al, 1u), bv);
        acc[2] = nt_sg_row(acc[2], subgroupBroadcast(al, 2u), bv);
        acc[3] = nt_sg_row(acc[3], subgroupBroadcast(al, 3u), bv);
    }
    if (col0 >= gp.n) {
        return;
    }
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < RB; j++) {
            store_c(row0 + i, col0 + j, acc[i][j]);
        }
    }
}

// One row of `gemm_nt_vec4_sg`'s outputs: acc[j] + dot(av, bv[j]) for its 8 columns (by value:
// naga 30's SPIR-V writer failed on a pointer to a row of the accumulator array).
fn nt_sg_row(acc: array<f32, 8>, av: vec4<f32>, bv: array<vec4<f32>, 8>) -> array<f32, 8> {
    var out = acc;
    for (var j = 0u; j < RB; j++) {
        out[j] += dot(av, bv[j]);
    }
    return out;
}

// `gemm_nn_vec4` (C = A B, a linear product to the input; 8 rows x 8 columns per lane) with A's
// values shared: every lane of a group (the workgroup's x row: one row0) needs the same 8 vec4 of
// A per four k; lane l loads row row0 + l's (clamped) and broadcast hands them round, B's 8 vec4
// per lane as there: 9 loads per lane per four k instead of 16. Each output adds the same fma
// chain in the same order as `gemm_nn_vec4` (`nn_row`, both forms): the same bits. Lanes past N run the loop too (their
// shares feed the others) and store nothing. Workgroup 8x8 invocations: 64 rows x 64 columns.
@compute @workgroup_size(8, 8, 1)
fn gemm_nn_vec4_sg(@builtin(global_invocation_id) gid: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = gid.y * RB;
    let col0 = gid.x * RB;
    if (row0 >= gp.m) {
        return;
    }
    let k4 = gp.k / 4u;
    let n4 = gp.n / 4u;
    let a_at = min(row0 + lid.x, gp.m - 1u) * k4;
    let ca = min(col0 / 4u, n4 - 1u);
    let cb = min(col0 / 4u + 1u, n4 - 1u);
    var acc: array<vec4<f32>, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    for (var kq = 0u; kq < k4; kq++) {
        let bv = nn_b_rows(kq, ca, cb, n4);
        let al = a4[a_at + kq];
        nn_row(&acc, 0u, subgroupBroadcast(al, 0u), bv);
        nn_row(&acc, 1u, subgroupBroadcast(al, 1u), bv);
        nn_row(&acc, 2u, subgroupBroadcast(al, 2u), bv);
        nn_row(&acc, 3u, subgroupBroadcast(al, 3u), bv);
        nn_row(&acc, 4u, subgroupBroadcast(al, 4u), bv);
        nn_row(&acc, 5u, subgroupBroadcast(al, 5u), bv);
        nn_row(&acc, 6u, subgroupBroadcast(al, 6u), bv);
        nn_row(&acc, 7u, subgroupBroadcast(al, 7u), bv);
    }
    if (col0 >= gp.n) {
        return;
    }
    nn_store(&acc, row0, col0);
}

const NARROW: u32 = 12u; // most columns of `gemm_nt_narrow_sg`

// `gemm_nt_vec4`'s product C = A B^T (a linear forward) for N <= NARROW (a classifier's few
// outputs, where `gemm_nt_vec4` keeps 2 of a group's 8 lanes busy): one invocation per row of
// C, all its columns. Per four k, the lane's vec4 of A and the N vec4 of B that every lane uses
// alike, from two loads per lane (lane l: those of columns l and 8 + l, clamped) by broadcast.
// The same dot products added in the same order as `gemm_nt_vec4`: the same bits. Reads a4, b4,
// bias; writes (or accumulates into) C. Rows past M run the loop too and store nothing.
@compute @workgroup_size(8, 1, 1)
fn gemm_nt_narrow_sg(@builtin(global_invocation_id) gid: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = gid.x;
    let l = lid.x;
    let k4 = gp.k / 4u;
    let a_at = min(row, gp.m - 1u) * k4;
    let lo_at = min(l, gp.n - 1u) * k4;
    let hi_at = min(8u + l, gp.n - 1u) * k4;
    var acc: array<f32, 12>;
    for (var j = 0u; j < NARROW; j++) {
        acc[j] = 0.0;
    }
    for (var kk = 0u; kk < k4; kk++) {
        let av = a4[a_at + kk];
        let lo = b4[lo_at + kk];
        let hi = b4[hi_at + kk];
        acc[0] += dot(av, subgroupBroadcast(lo, 0u));
        acc[1] += dot(av, subgroupBroadcast(lo, 1u));
        acc[2] += dot(av, subgroupBroadcast(lo, 2u));
        acc[3] += dot(av, subgroupBroadcast(lo, 3u));
        acc[4] += dot(av, subgroupBroadcast(lo, 4u));
        acc[5] += dot(av, subgroupBroadcast(lo, 5u));
        acc[6] += dot(av, subgroupBroadcast(lo, 6u));
        acc[7] += dot(av, subgroupBroadcast(lo, 7u));
        acc[8] += dot(av, subgroupBroadcast(hi, 0u));
        acc[9] += dot(av, subgroupBroadcast(hi, 1u));
        acc[10] += dot(av, subgroupBroadcast(hi, 2u));
        acc[11] += dot(av, subgroupBroadcast(hi, 3u));
    }
    if (row >= gp.m) {
        return;
    }
    for (var j = 0u; j < NARROW; j++) {
        store_c(row, j, acc[j]);
    }
}
