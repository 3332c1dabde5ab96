// conv.wgsl: 2-D convolution (NCHW, f32, any kernel size kh x kw, stride, zero padding) and its
// three gradients, as implicit GEMMs (patch indices computed in the kernels) or through a patch
// matrix (im2col / col2im).
//
//   x (batch, c_in, h, w)   weight W (c_out, c_in, kh, kw) = (c_out, cols), cols = c_in kh kw
//   y, dy (batch, c_out, oh, ow)   oh = (h + 2 pad - kh) / stride + 1 (floor), ow likewise
//   X(n, ci, iy, ix) = x[n][ci][iy][ix] inside the image, 0 in the padding
//
//   forward          y[n][co][oy][ox]  = bias[co] + sum_{ci,ky,kx} W[co][ci][ky][kx] X(n, ci, oy s - pad + ky, ox s - pad + kx)
//   backward_input   dx[n][ci][iy][ix] = sum_{co,ky,kx} W[co][ci][ky][kx] dy[n][co][oy][ox]
//                                        over oy s - pad + ky = iy, ox s - pad + kx = ix (in range)
//   backward_weight  dW[co][ci][ky][kx] = sum_{n,oy,ox} dy[n][co][oy][ox] X(n, ci, oy s - pad + ky, ox s - pad + kx)
//   bias_backward    db[co] = sum_{n,oy,ox} dy[n][co][oy][ox]
//
// Every entry point writes (never accumulates) every element of its output, without atomics; each
// sum runs in a fixed order, so results are bit-deterministic. Variants: `*_regblock` (CPU adapters
// such as lavapipe: several outputs per invocation in registers, no workgroup memory), `*_cols`
// with `conv_im2col` / `conv_col2im` (CPU adapters when oh ow % 4 == 0: a patch matrix the layer
// owns and vec4 GEMM-like products over it; faster than the implicit forms there; with
// `*_cols_listed`, the forward and input-gradient products from the lists of a pruned P's
// nonzeros) and `*_tiled` (GPUs: workgroup-memory tiles of 16x16 outputs, one per invocation, or
// 32x32, 2x2 per invocation (`*_2x2`), over one tile loop; the input gradient through a patch
// matrix (`conv_backward_input_cols_tiled` + `conv_col2im`) where most implicit taps miss the
// output; the weight gradient split over runs of positions (`conv_backward_weight_tiled` +
// `conv_weight_parts_sum`) for layers with many weights, otherwise `conv_backward_weight_split`:
// one workgroup per weight-gradient element with a fixed-order tree reduction, 256 invocations
// wide instead of 64 for sums over many positions, as in the bias gradient). Grids are 1-D block
// counts folded into y past 65535 workgroups (`grid_1d` in src/kernels/mod.rs).
// The file's closing section (from its `==== Subgroup forms` line on) holds forms of the three
// `*_cols` products that share a SIMD group's common loads by `subgroupBroadcast`: compiled only
// on Vulkan CPU adapters whose subgroups are exactly 8 lanes (lavapipe: `Gpu::subgroups8`,
// `kernels::module_source`), with the plain forms' bits.

// Keep in sync with `ConvParams` in src/kernels/conv.rs.
struct ConvParams {
    batch: u32,
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    oh: u32,
    ow: u32,
    has_bias: u32, // forward: add the bias; the split weight gradients: also write db
    // `conv_backward_weight_tiled` and `conv_weight_parts_sum` only: positions per split (a
    // multiple of 32) and the number of splits; 0 elsewhere.
    run: u32,
    splits: u32,
}

@group(0) @binding(0) var<uniform> cp: ConvParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> dy: array<f32>;
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;
@group(0) @binding(7) var<storage, read_write> dw: array<f32>;
@group(0) @binding(8) var<storage, read_write> db: array<f32>;

// X(n, ci, iy, ix): zero outside the image (iy, ix may be negative).
fn x_at(n: u32, ci: u32, iy: i32, ix: i32) -> f32 {
    if (iy < 0 || ix < 0 || iy >= i32(cp.h) || ix >= i32(cp.w)) {
        return 0.0;
    }
    return x[((n * cp.c_in + ci) * cp.h + u32(iy)) * cp.w + u32(ix)];
}

// dy[n][co][oy][ox] with oy s - pad + ky = iy and ox s - pad + kx = ix, or 0 when no such output.
fn dy_from(n: u32, co: u32, iy: u32, ix: u32, ky: u32, kx: u32) -> f32 {
    let ty = i32(iy + cp.pad) - i32(ky);
    let tx = i32(ix + cp.pad) - i32(kx);
    if (ty < 0 || tx < 0) {
        return 0.0;
    }
    let uy = u32(ty);
    let ux = u32(tx);
    if (uy % cp.stride != 0u || ux % cp.stride != 0u) {
        return 0.0;
    }
    let oy = uy / cp.stride;
    let ox = ux / cp.stride;
    if (oy >= cp.oh || ox >= cp.ow) {
        return 0.0;
    }
    return dy[((n * cp.c_out + co) * cp.oh + oy) * cp.ow + ox];
}

// ---------------------------------------------------------------- CPU variants (register blocks)

const FCO: u32 = 4u; // forward: output channels per invocation
const FP: u32 = 8u;  // forward: consecutive output columns (one output row) per invocation

// x[row_base + ix] of one input row, 0 outside it.
fn x_row(row_base: u32, ix: i32) -> f32 {
    if (ix < 0 || ix >= i32(cp.w)) {
        return 0.0;
    }
    return x[row_base + u32(ix)];
}

// dy[row_base + ox] of one output row, 0 outside it.
fn dy_row(row_base: u32, ox: i32) -> f32 {
    if (ox < 0 || ox >= i32(cp.ow)) {
        return 0.0;
    }
    return dy[row_base + u32(ox)];
}

// acc[i][j] += a[i] b[j] for a 4 x 8 register block.
fn mac_4x8(acc: ptr<function, array<array<f32, 8>, 4>>, a: array<f32, 4>, b: array<f32, 8>) {
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 8u; j++) {
            (*acc)[i][j] = fma(a[i], b[j], (*acc)[i][j]);
        }
    }
}

// Reads x, weight, bias; writes y. One invocation: 4 output channels x 8 consecutive columns of
// one output row (n, oy); each workgroup covers one channel block and 64 row blocks. Taps whose input
// row is padding are skipped (they add 0). Stride 1 slides a register window along kx (one new x
// load per tap instead of eight).
@compute @workgroup_size(64, 1, 1)
fn conv_forward_regblock(@builtin(local_invocation_id) lid: vec3<u32>,
                         @builtin(workgroup_id) wid: vec3<u32>,
                         @builtin(num_workgroups) nwg: vec3<u32>) {
    let per_row = (cp.ow + FP - 1u) / FP;
    let p_blocks = cp.batch * cp.oh * per_row;
    let p_groups = (p_blocks + 63u) / 64u;
    let co_blocks = (cp.c_out + FCO - 1u) / FCO;
    // The channel block comes from the workgroup index alone: weight loads are uniform.
    let g = wid.x + wid.y * nwg.x;
    let pb = (g % p_groups) * 64u + lid.x;
    if (g >= p_groups * co_blocks || pb >= p_blocks) {
        return;
    }
    let co0 = (g / p_groups) * FCO;
    let row = pb / per_row; // n * oh + oy
    let ox0 = (pb % per_row) * FP;
    let n = row / cp.oh;
    let oy = row % cp.oh;
    let cols = cp.c_in * cp.kh * cp.kw;
    let hw = cp.h * cp.w;
    let s = cp.stride;
    let iy0 = i32(oy * s) - i32(cp.pad);
    let ix0 = i32(ox0 * s) - i32(cp.pad);
    var wb: array<u32, 4>;
    for (var i = 0u; i < FCO; i++) {
        wb[i] = min(co0 + i, cp.c_out - 1u) * cols;
    }
    var acc: array<array<f32, 8>, 4>;
    for (var i = 0u; i < FCO; i++) {
        for (var j = 0u; j < FP; j++) {
            acc[i][j] = 0.0;
        }
    }
    for (var ci = 0u; ci < cp.c_in; ci++) {
        for (var ky = 0u; ky < cp.kh; ky++) {
            let iy = iy0 + i32(ky);
            if (iy < 0 || iy >= i32(cp.h)) {
                continue;
            }
            let xrow = (n * cp.c_in + ci) * hw + u32(iy) * cp.w;
            let kbase = (ci * cp.kh + ky) * cp.kw;
            var xv: array<f32, 8>;
            if (s == 1u) {
                for (var j = 0u; j < FP; j++) {
                    xv[j] = x_row(xrow, ix0 + i32(j));
                }
            }
            for (var kx = 0u; kx < cp.kw; kx++) {
                if (s == 1u) {
                    if (kx > 0u) {
                        for (var j = 0u; j + 1u < FP; j++) {
                            xv[j] = xv[j + 1u];
                        }
                        xv[FP - 1u] = x_row(xrow, ix0 + i32(FP - 1u + kx));
                    }
                } else {
                    for (var j = 0u; j < FP; j++) {
                        xv[j] = x_row(xrow, ix0 + i32(j * s + kx));
                    }
                }
                var wv: array<f32, 4>;
                for (var i = 0u; i < FCO; i++) {
                    wv[i] = weight[wb[i] + kbase + kx];
                }
                mac_4x8(&acc, wv, xv);
            }
        }
    }
    for (var i = 0u; i < FCO; i++) {
        let co = co0 + i;
        if (co >= cp.c_out) {
            break;
        }
        var bv = 0.0;
        if (cp.has_bias != 0u) {
            bv = bias[co];
        }
        let yrow = ((n * cp.c_out + co) * cp.oh + oy) * cp.ow;
        for (var j = 0u; j < FP; j++) {
            if (ox0 + j < cp.ow) {
                y[yrow + ox0 + j] = acc[i][j] + bv;
            }
        }
    }
}

const ICI: u32 = 4u; // backward_input: input channels per invocation
const IQ: u32 = 8u;  // backward_input: consecutive input columns (one input row) per invocation

// Reads dy, weight; writes dx. One invocation: 4 input channels x 8 consecutive columns of one
// input row (n, iy), each workgroup one channel block and 64 row blocks; the sum runs over (co, ky, kx) in order, skipping taps whose output row does
// not exist. Stride 1 slides a register window of dy along kx (one new dy load per tap).
@compute @workgroup_size(64, 1, 1)
fn conv_backward_input_regblock(@builtin(local_invocation_id) lid: vec3<u32>,
                                @builtin(workgroup_id) wid: vec3<u32>,
                                @builtin(num_workgroups) nwg: vec3<u32>) {
    let per_row = (cp.w + IQ - 1u) / IQ;
    let q_blocks = cp.batch * cp.h * per_row;
    let q_groups = (q_blocks + 63u) / 64u;
    let ci_blocks = (cp.c_in + ICI - 1u) / ICI;
    // The channel block comes from the workgroup index alone: weight loads are uniform.
    let g = wid.x + wid.y * nwg.x;
    let qb = (g % q_groups) * 64u + lid.x;
    if (g >= q_groups * ci_blocks || qb >= q_blocks) {
        return;
    }
    let ci0 = (g / q_groups) * ICI;
    let row = qb / per_row; // n * h + iy
    let ix0 = (qb % per_row) * IQ;
    let n = row / cp.h;
    let iy = row % cp.h;
    let khw = cp.kh * cp.kw;
    let cols = cp.c_in * khw;
    let ohw = cp.oh * cp.ow;
    let s = cp.stride;
    // Output column of input column ix0 + j at tap kx: (ix0 + j + pad - kx) / s when divisible.
    let tx0 = i32(ix0 + cp.pad);
    var wb: array<u32, 4>;
    for (var i = 0u; i < ICI; i++) {
        wb[i] = min(ci0 + i, cp.c_in - 1u) * khw;
    }
    var acc: array<array<f32, 8>, 4>;
    for (var i = 0u; i < ICI; i++) {
        for (var j = 0u; j < IQ; j++) {
            acc[i][j] = 0.0;
        }
    }
    for (var co = 0u; co < cp.c_out; co++) {
        for (var ky = 0u; ky < cp.kh; ky++) {
            let ty = i32(iy + cp.pad) - i32(ky);
            if (ty < 0) {
                continue;
            }
            // Output row; no integer division at stride 1 (CPUs have no vector divide).
            var oy = u32(ty);
            if (s != 1u) {
                if (oy % s != 0u) {
                    continue;
                }
                oy = oy / s;
            }
            if (oy >= cp.oh) {
                continue;
            }
            let drow = (n * cp.c_out + co) * ohw + oy * cp.ow;
            let kbase = co * cols + ky * cp.kw;
            var gv: array<f32, 8>;
            if (s == 1u) {
                for (var j = 0u; j < IQ; j++) {
                    gv[j] = dy_row(drow, tx0 + i32(j));
                }
            }
            for (var kx = 0u; kx < cp.kw; kx++) {
                if (s == 1u) {
                    if (kx > 0u) {
                        // An ascending constant-trip loop (unrolled like the forward's shift).
                        for (var j = 0u; j + 1u < IQ; j++) {
                            gv[IQ - 1u - j] = gv[IQ - 2u - j];
                        }
                        gv[0] = dy_row(drow, tx0 - i32(kx));
                    }
                } else {
                    for (var j = 0u; j < IQ; j++) {
                        let tx = tx0 + i32(j) - i32(kx);
                        var v = 0.0;
                        if (tx >= 0 && u32(tx) % s == 0u) {
                            v = dy_row(drow, i32(u32(tx) / s));
                        }
                        gv[j] = v;
                    }
                }
                var wv: array<f32, 4>;
                for (var i = 0u; i < ICI; i++) {
                    wv[i] = weight[kbase + wb[i] + kx];
                }
                mac_4x8(&acc, wv, gv);
            }
        }
    }
    for (var i = 0u; i < ICI; i++) {
        let ci = ci0 + i;
        if (ci >= cp.c_in) {
            break;
        }
        let xrow = ((n * cp.c_in + ci) * cp.h + iy) * cp.w;
        for (var j = 0u; j < IQ; j++) {
            if (ix0 + j < cp.w) {
                dx[xrow + ix0 + j] = acc[i][j];
            }
        }
    }
}

const WCO: u32 = 4u; // backward_weight: output channels per invocation
const WK: u32 = 4u;  // backward_weight: consecutive weight columns (ci, ky, kx) per invocation

// Reads dy, x; writes dw. One invocation: 4 filters x 4 consecutive columns of the (c_out, cols)
// weight, each summed over (n, oy, ox) in order. A 32-invocation workgroup covers one filter block
// (from the workgroup index alone: dy loads are uniform) and 32 column blocks, so even LeNet-sized
// gradients (20 x 25) spread over several workgroups.
@compute @workgroup_size(32, 1, 1)
fn conv_backward_weight_regblock(@builtin(local_invocation_id) lid: vec3<u32>,
                                 @builtin(workgroup_id) wid: vec3<u32>,
                                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let khw = cp.kh * cp.kw;
    let cols = cp.c_in * khw;
    let k_blocks = (cols + WK - 1u) / WK;
    let k_groups = (k_blocks + 31u) / 32u;
    let co_blocks = (cp.c_out + WCO - 1u) / WCO;
    let g = wid.x + wid.y * nwg.x;
    let kb = (g % k_groups) * 32u + lid.x;
    if (g >= k_groups * co_blocks || kb >= k_blocks) {
        return;
    }
    let k0 = kb * WK;
    let co0 = (g / k_groups) * WCO;
    let hw = cp.h * cp.w;
    let ohw = cp.oh * cp.ow;
    let wi = i32(cp.w);
    let hi = i32(cp.h);
    let s = cp.stride;
    var xc: array<i32, 4>;  // ci * hw of each column
    var oyo: array<i32, 4>; // ky - pad
    var oxo: array<i32, 4>; // kx - pad
    for (var j = 0u; j < WK; j++) {
        let k = min(k0 + j, cols - 1u);
        let rem = k % khw;
        xc[j] = i32((k / khw) * hw);
        oyo[j] = i32(rem / cp.kw) - i32(cp.pad);
        oxo[j] = i32(rem % cp.kw) - i32(cp.pad);
    }
    var dc: array<u32, 4>;
    for (var i = 0u; i < WCO; i++) {
        dc[i] = min(co0 + i, cp.c_out - 1u) * ohw;
    }
    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < WCO; i++) {
        for (var j = 0u; j < WK; j++) {
            acc[i][j] = 0.0;
        }
    }
    for (var n = 0u; n < cp.batch; n++) {
        let xn = i32(n * cp.c_in * hw);
        let dn = n * cp.c_out * ohw;
        for (var oy = 0u; oy < cp.oh; oy++) {
            var rb: array<i32, 4>;
            for (var j = 0u; j < WK; j++) {
                let iy = i32(oy * s) + oyo[j];
                rb[j] = select(-1, xn + xc[j] + iy * wi, iy >= 0 && iy < hi);
            }
            let drow = dn + oy * cp.ow;
            for (var ox = 0u; ox < cp.ow; ox++) {
                var gv: array<f32, 4>;
                for (var i = 0u; i < WCO; i++) {
                    gv[i] = dy[dc[i] + drow + ox];
                }
                var xv: array<f32, 4>;
                for (var j = 0u; j < WK; j++) {
                    let ix = i32(ox * s) + oxo[j];
                    var v = 0.0;
                    if (rb[j] >= 0 && ix >= 0 && ix < wi) {
                        v = x[u32(rb[j] + ix)];
                    }
                    xv[j] = v;
                }
                for (var i = 0u; i < WCO; i++) {
                    for (var j = 0u; j < WK; j++) {
                        acc[i][j] = fma(gv[i], xv[j], acc[i][j]);
                    }
                }
            }
        }
    }
    for (var i = 0u; i < WCO; i++) {
        let co = co0 + i;
        if (co >= cp.c_out) {
            break;
        }
        for (var j = 0u; j < WK; j++) {
            let k = k0 + j;
            if (k < cols) {
                dw[co * cols + k] = acc[i][j];
            }
        }
    }
}

// ------------------------------------------- CPU variants through a patch matrix (im2col + GEMM)
//
// A patch matrix `cols` (cols x np, np = batch oh ow), row k = (ci, ky, kx), column P = n oh ow + p:
// cols[k][P] = X(n, ci, oy s - pad + ky, ox s - pad + kx). The layer owns it (src/nn/conv.rs); the
// forward fills it, the weight gradient reads it, and the input gradient then reuses it for
// dcols = W^T dy before gathering dx from it (col2im). The products read four consecutive P as one
// vec4: the host takes this path only when oh ow % 4 == 0 (four consecutive P stay in one image,
// 16-byte aligned in y and dy). Weights (forward, input gradient) and dy (weight gradient) are
// indexed by the workgroup alone: those loads are uniform.

@group(0) @binding(9) var<storage, read_write> cols_w: array<f32>;
@group(0) @binding(10) var<storage, read> cols_r: array<f32>;
@group(0) @binding(11) var<storage, read> cols4: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read> dy4: array<vec4<f32>>;

// Reads x; writes cols_w (every element). One invocation per patch-matrix row segment (k, n, oy):
// its ow consecutive columns.
@compute @workgroup_size(64, 1, 1)
fn conv_im2col(@builtin(global_invocation_id) gid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = gid.x + gid.y * nwg.x * 64u;
    let khw = cp.kh * cp.kw;
    let rows = cp.c_in * khw * cp.batch * cp.oh;
    if (g >= rows) {
        return;
    }
    let k = g / (cp.batch * cp.oh);
    let r = g % (cp.batch * cp.oh); // n * oh + oy
    let n = r / cp.oh;
    let oy = r % cp.oh;
    let ci = k / khw;
    let ky = (k % khw) / cp.kw;
    let kx = k % cp.kw;
    let np = cp.batch * cp.oh * cp.ow;
    let out = k * np + r * cp.ow;
    let iy = i32(oy * cp.stride + ky) - i32(cp.pad);
    let ix0 = i32(kx) - i32(cp.pad);
    let inside = iy >= 0 && iy < i32(cp.h);
    let xrow = ((n * cp.c_in + ci) * cp.h + u32(max(iy, 0))) * cp.w;
    for (var ox = 0u; ox < cp.ow; ox++) {
        let ix = ix0 + i32(ox * cp.stride);
        var v = 0.0;
        if (inside && ix >= 0 && ix < i32(cp.w)) {
            v = x[xrow + u32(ix)];
        }
        cols_w[out + ox] = v;
    }
}

const CB: u32 = 8u; // cols products: rows (filters or patch rows) per invocation, 8 columns P

// Index in y / dy of (n, co, p) for column P: ((n c_out + co) oh ow + p).
fn out_index(co: u32, pcol: u32) -> u32 {
    let ohw = cp.oh * cp.ow;
    return ((pcol / ohw) * cp.c_out + co) * ohw + pcol % ohw;
}

// Reads cols4, weight, bias; writes y. y[n][co][p] = bias[co] + sum_k W[co][k] cols[k][P], k in
// order. One invocation: 8 filters (from the workgroup index) x 8 consecutive columns (two vec4).
// Consecutive workgroups take the filter blocks of one column slice (the slice of the patch
// matrix stays in cache across them: LeNet-5's two conv forwards 33-43 -> 31-33 ms per step on
// lavapipe).
@compute @workgroup_size(64, 1, 1)
fn conv_forward_cols(@builtin(local_invocation_id) lid: vec3<u32>,
                     @builtin(workgroup_id) wid: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>) {
    let np4 = cp.batch * cp.oh * cp.ow / 4u;
    let p_blocks = (np4 + 1u) / 2u;
    let p_groups = (p_blocks + 63u) / 64u;
    let co_blocks = (cp.c_out + CB - 1u) / CB;
    let g = wid.x + wid.y * nwg.x;
    let pb = (g / co_blocks) * 64u + lid.x;
    if (g >= p_groups * co_blocks || pb >= p_blocks) {
        return;
    }
    let co0 = (g % co_blocks) * CB;
    let q0 = pb * 2u;
    let q1 = min(q0 + 1u, np4 - 1u);
    let kdim = cp.c_in * cp.kh * cp.kw;
    var wb: array<u32, 8>;
    for (var i = 0u; i < CB; i++) {
        wb[i] = min(co0 + i, cp.c_out - 1u) * kdim;
    }
    var acc: array<vec4<f32>, 16>; // filter i: acc[2i] columns 0-3, acc[2i+1] columns 4-7
    for (var i = 0u; i < 16u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    for (var k = 0u; k < kdim; k++) {
        let b0 = cols4[k * np4 + q0];
        let b1 = cols4[k * np4 + q1];
        for (var i = 0u; i < CB; i++) {
            let wv = vec4<f32>(weight[wb[i] + k]);
            acc[2u * i] = fma(wv, b0, acc[2u * i]);
            acc[2u * i + 1u] = fma(wv, b1, acc[2u * i + 1u]);
        }
    }
    forward_cols_store(&acc, co0, q0, np4);
}

// The stores of a `conv_forward_cols` invocation: filters co0.., column vec4s q0, q0 + 1 (those
// below np4), plus the bias.
fn forward_cols_store(acc: ptr<function, array<vec4<f32>, 16>>, co0: u32, q0: u32, np4: u32) {
    for (var i = 0u; i < CB; i++) {
        let co = co0 + i;
        if (co >= cp.c_out) {
            break;
        }
        var bv = 0.0;
        if (cp.has_bias != 0u) {
            bv = bias[co];
        }
        for (var h = 0u; h < 2u; h++) {
            let q = q0 + h;
            if (q < np4) {
                let o = out_index(co, q * 4u);
                let v = (*acc)[2u * i + h];
                for (var j = 0u; j < 4u; j++) {
                    y[o + j] = v[j] + bv;
                }
            }
        }
    }
}

// Reads dy4, cols4; writes dw. dW[co][k] = sum_P dy(n, co, p) cols[k][P], over n, then p four at
// a time (a dot product per four). One invocation: 8 filters (from the workgroup index: dy loads
// are uniform) x 4 consecutive patch rows k.
@compute @workgroup_size(32, 1, 1)
fn conv_backward_weight_cols(@builtin(local_invocation_id) lid: vec3<u32>,
                             @builtin(workgroup_id) wid: vec3<u32>,
                             @builtin(num_workgroups) nwg: vec3<u32>) {
    let kdim = cp.c_in * cp.kh * cp.kw;
    let k_blocks = (kdim + 3u) / 4u;
    let k_groups = (k_blocks + 31u) / 32u;
    let co_blocks = (cp.c_out + CB - 1u) / CB;
    let g = wid.x + wid.y * nwg.x;
    let kb = (g % k_groups) * 32u + lid.x;
    if (g >= k_groups * co_blocks || kb >= k_blocks) {
        return;
    }
    let k0 = kb * 4u;
    let co0 = (g / k_groups) * CB;
    let ohw4 = cp.oh * cp.ow / 4u;
    let np4 = cp.batch * ohw4;
    var cb: array<u32, 4>;
    for (var j = 0u; j < 4u; j++) {
        cb[j] = min(k0 + j, kdim - 1u) * np4;
    }
    var db4: array<u32, 8>;
    for (var i = 0u; i < CB; i++) {
        db4[i] = min(co0 + i, cp.c_out - 1u) * ohw4;
    }
    var acc: array<array<f32, 4>, 8>;
    for (var i = 0u; i < CB; i++) {
        for (var j = 0u; j < 4u; j++) {
            acc[i][j] = 0.0;
        }
    }
    for (var n = 0u; n < cp.batch; n++) {
        let dn = n * cp.c_out * ohw4;
        let pn = n * ohw4;
        for (var q = 0u; q < ohw4; q++) {
            var bv: array<vec4<f32>, 4>;
            for (var j = 0u; j < 4u; j++) {
                bv[j] = cols4[cb[j] + pn + q];
            }
            for (var i = 0u; i < CB; i++) {
                let gv = dy4[dn + db4[i] + q];
                for (var j = 0u; j < 4u; j++) {
                    acc[i][j] += dot(gv, bv[j]);
                }
            }
        }
    }
    weight_cols_store(&acc, co0, k0, kdim);
}

// The stores of a `conv_backward_weight_cols` invocation: filters co0.., patch rows k0..k0 + 3
// (those below kdim).
fn weight_cols_store(acc: ptr<function, array<array<f32, 4>, 8>>, co0: u32, k0: u32, kdim: u32) {
    for (var i = 0u; i < CB; i++) {
        let co = co0 + i;
        if (co >= cp.c_out) {
            break;
        }
        for (var j = 0u; j < 4u; j++) {
            let k = k0 + j;
            if (k < kdim) {
                dw[co * kdim + k] = (*acc)[i][j];
            }
        }
    }
}

// Reads dy4, weight; writes cols_w = dcols. dcols[k][P] = sum_co W[co][k] dy(n, co, p), co in
// order. One invocation: 8 patch rows k (from the workgroup index: weight loads are uniform) x 8
// consecutive columns (two vec4 of dy).
@compute @workgroup_size(64, 1, 1)
fn conv_backward_input_cols(@builtin(local_invocation_id) lid: vec3<u32>,
                            @builtin(workgroup_id) wid: vec3<u32>,
                            @builtin(num_workgroups) nwg: vec3<u32>) {
    let ohw = cp.oh * cp.ow;
    let np4 = cp.batch * ohw / 4u;
    let p_blocks = (np4 + 1u) / 2u;
    let p_groups = (p_blocks + 63u) / 64u;
    let kdim = cp.c_in * cp.kh * cp.kw;
    let k_blocks = (kdim + CB - 1u) / CB;
    let g = wid.x + wid.y * nwg.x;
    let pb = (g % p_groups) * 64u + lid.x;
    if (g >= p_groups * k_blocks || pb >= p_blocks) {
        return;
    }
    let k0 = (g / p_groups) * CB;
    let q0 = pb * 2u;
    let q1 = min(q0 + 1u, np4 - 1u);
    // dy4 index of column block q at channel 0: (n c_out oh ow + p) / 4; channel co adds co oh ow / 4.
    let ohw4 = ohw / 4u;
    let d0 = (q0 / ohw4) * cp.c_out * ohw4 + q0 % ohw4;
    let d1 = (q1 / ohw4) * cp.c_out * ohw4 + q1 % ohw4;
    var kk: array<u32, 8>;
    for (var i = 0u; i < CB; i++) {
        kk[i] = min(k0 + i, kdim - 1u);
    }
    var acc: array<vec4<f32>, 16>; // row i: acc[2i] columns 0-3, acc[2i+1] columns 4-7
    for (var i = 0u; i < 16u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    for (var co = 0u; co < cp.c_out; co++) {
        let b0 = dy4[d0 + co * ohw4];
        let b1 = dy4[d1 + co * ohw4];
        let wrow = co * kdim;
        for (var i = 0u; i < CB; i++) {
            let wv = vec4<f32>(weight[wrow + kk[i]]);
            acc[2u * i] = fma(wv, b0, acc[2u * i]);
            acc[2u * i + 1u] = fma(wv, b1, acc[2u * i + 1u]);
        }
    }
    input_cols_store(&acc, k0, q0, np4, kdim);
}

// The stores of a `conv_backward_input_cols` invocation: patch rows k0.. (below kdim), column
// vec4s q0, q0 + 1 (below np4).
fn input_cols_store(acc: ptr<function, array<vec4<f32>, 16>>, k0: u32, q0: u32, np4: u32,
                    kdim: u32) {
    let np = np4 * 4u;
    for (var i = 0u; i < CB; i++) {
        let k = k0 + i;
        if (k >= kdim) {
            break;
        }
        for (var h = 0u; h < 2u; h++) {
            let q = q0 + h;
            if (q < np4) {
                let v = (*acc)[2u * i + h];
                for (var j = 0u; j < 4u; j++) {
                    cols_w[k * np + q * 4u + j] = v[j];
                }
            }
        }
    }
}

// Reads cols_r = dcols; writes dx. dx[n][ci][iy][ix] = sum over (ky, kx) in order of
// dcols[(ci, ky, kx)][(n, oy, ox)] with oy s - pad + ky = iy, ox s - pad + kx = ix (in range).
// One invocation per dx element.
@compute @workgroup_size(64, 1, 1)
fn conv_col2im(@builtin(global_invocation_id) gid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    let hw = cp.h * cp.w;
    if (i >= cp.batch * cp.c_in * hw) {
        return;
    }
    let plane = i / hw; // n * c_in + ci
    let r = i % hw;
    let n = plane / cp.c_in;
    let ci = plane % cp.c_in;
    let iy = r / cp.w;
    let ix = r % cp.w;
    let ohw = cp.oh * cp.ow;
    let np = cp.batch * ohw;
    let pn = n * ohw;
    let s = cp.stride;
    var acc = 0.0;
    if (s == 1u) {
        // Stride 1: the (ky, kx) with an output in range form a rectangle, walked in the same
        // order without the tests (oy = iy + pad - ky in [0, oh), ox likewise).
        let ty = i32(iy + cp.pad);
        let tx = i32(ix + cp.pad);
        let ky0 = u32(max(ty - i32(cp.oh) + 1, 0));
        let ky1 = u32(min(ty + 1, i32(cp.kh)));
        let kx0 = u32(max(tx - i32(cp.ow) + 1, 0));
        let kx1 = u32(min(tx + 1, i32(cp.kw)));
        for (var ky = ky0; ky < ky1; ky++) {
            let krow = (ci * cp.kh + ky) * cp.kw;
            let at = pn + (u32(ty) - ky) * cp.ow + u32(tx);
            for (var kx = kx0; kx < kx1; kx++) {
                acc += cols_r[(krow + kx) * np + at - kx];
            }
        }
        dx[i] = acc;
        return;
    }
    for (var ky = 0u; ky < cp.kh; ky++) {
        let ty = i32(iy + cp.pad) - i32(ky);
        if (ty < 0) {
            continue;
        }
        var oy = u32(ty);
        if (s != 1u) {
            if (oy % s != 0u) {
                continue;
            }
            oy = oy / s;
        }
        if (oy >= cp.oh) {
            continue;
        }
        let krow = (ci * cp.kh + ky) * cp.kw;
        for (var kx = 0u; kx < cp.kw; kx++) {
            let tx = i32(ix + cp.pad) - i32(kx);
            if (tx < 0) {
                continue;
            }
            var ox = u32(tx);
            if (s != 1u) {
                if (ox % s != 0u) {
                    continue;
                }
                ox = ox / s;
            }
            if (ox < cp.ow) {
                acc += cols_r[(krow + kx) * np + pn + oy * cp.ow + ox];
            }
        }
    }
    dx[i] = acc;
}

// ---------------------------------- The cols products from P's kept weights (a masked conv's lists)
//
// Once DST has pruned a conv, its forward and its input gradient need only P's nonzeros: the
// lists `ell_build` (shaders/sparse.wgsl) writes from P (c_out x cols, row-major) each step, row
// lists (list co at co cols, count list_cnt[co]: filter co's kept k, ascending) and column lists
// (list k at c_out cols + k c_out, count list_cnt[c_out + k]: patch row k's kept filters,
// ascending), each entry an index and P's value there. The two kernels below are
// `conv_forward_cols` and `conv_backward_input_cols` without their products with zero: the same
// fma chains in the same order minus terms that add +0, so the same sums (up to the sign of a
// zero). One invocation: one list (from the workgroup index: its loads are uniform) x 16
// consecutive columns (LQ = 4 vec4: each list entry's two loads serve 16 multiply-adds; on
// lavapipe LeNet-5's conv2 at 10 % kept, 3.7-3.9 ms forward and 5.3 ms input gradient against
// 3.9-4.4 and 6.0-6.4 ms with two vec4); consecutive workgroups take consecutive lists over one
// column slice, which stays in cache. Work is proportional to the kept weights.

const LQ: u32 = 4u; // vec4s of columns per invocation (`LISTED_Q` in src/kernels/conv.rs)

@group(0) @binding(13) var<storage, read> list_idx: array<u32>;
@group(0) @binding(14) var<storage, read> list_val: array<f32>;
@group(0) @binding(15) var<storage, read> list_cnt: array<u32>;

// Reads list_idx, list_val, list_cnt (the row lists), cols4, bias; writes y (every element).
// y[n][co][p] = bias[co] + sum over the kept k of filter co, ascending, of P[co][k] cols[k][P].
@compute @workgroup_size(64, 1, 1)
fn conv_forward_cols_listed(@builtin(local_invocation_id) lid: vec3<u32>,
                            @builtin(workgroup_id) wid: vec3<u32>,
                            @builtin(num_workgroups) nwg: vec3<u32>) {
    let np4 = cp.batch * cp.oh * cp.ow / 4u;
    let p_blocks = (np4 + LQ - 1u) / LQ;
    let p_groups = (p_blocks + 63u) / 64u;
    let g = wid.x + wid.y * nwg.x;
    let pb = (g / cp.c_out) * 64u + lid.x;
    if (g >= p_groups * cp.c_out || pb >= p_blocks) {
        return;
    }
    let co = g % cp.c_out;
    var q: array<u32, LQ>;
    for (var i = 0u; i < LQ; i++) {
        q[i] = min(pb * LQ + i, np4 - 1u);
    }
    let base = co * cp.c_in * cp.kh * cp.kw;
    let n = list_cnt[co];
    var acc: array<vec4<f32>, LQ>;
    for (var i = 0u; i < LQ; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    for (var j = 0u; j < n; j++) {
        let row = list_idx[base + j] * np4;
        let wv = vec4<f32>(list_val[base + j]);
        for (var i = 0u; i < LQ; i++) {
            acc[i] = fma(wv, cols4[row + q[i]], acc[i]);
        }
    }
    var bv = 0.0;
    if (cp.has_bias != 0u) {
        bv = bias[co];
    }
    for (var i = 0u; i < LQ; i++) {
        let qi = pb * LQ + i;
        if (qi < np4) {
            let o = out_index(co, qi * 4u);
            for (var j = 0u; j < 4u; j++) {
                y[o + j] = acc[i][j] + bv;
            }
        }
    }
}

// Reads list_idx, list_val, list_cnt (the column lists), dy4; writes cols_w = dcols (every
// element). dcols[k][P] = sum over the kept filters co of patch row k, ascending, of
// P[co][k] dy(n, co, p).
@compute @workgroup_size(64, 1, 1)
fn conv_backward_input_cols_listed(@builtin(local_invocation_id) lid: vec3<u32>,
                                   @builtin(workgroup_id) wid: vec3<u32>,
                                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let ohw = cp.oh * cp.ow;
    let np4 = cp.batch * ohw / 4u;
    let p_blocks = (np4 + LQ - 1u) / LQ;
    let p_groups = (p_blocks + 63u) / 64u;
    let kdim = cp.c_in * cp.kh * cp.kw;
    let g = wid.x + wid.y * nwg.x;
    let pb = (g / kdim) * 64u + lid.x;
    if (g >= p_groups * kdim || pb >= p_blocks) {
        return;
    }
    let k = g % kdim;
    // dy4 index of column block q at channel 0: (n c_out oh ow + p) / 4; channel co adds co oh ow / 4.
    let ohw4 = ohw / 4u;
    var d: array<u32, LQ>;
    for (var i = 0u; i < LQ; i++) {
        let q = min(pb * LQ + i, np4 - 1u);
        d[i] = (q / ohw4) * cp.c_out * ohw4 + q % ohw4;
    }
    let base = cp.c_out * kdim + k * cp.c_out;
    let n = list_cnt[cp.c_out + k];
    var acc: array<vec4<f32>, LQ>;
    for (var i = 0u; i < LQ; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    for (var j = 0u; j < n; j++) {
        let ch = list_idx[base + j] * ohw4;
        let wv = vec4<f32>(list_val[base + j]);
        for (var i = 0u; i < LQ; i++) {
            acc[i] = fma(wv, dy4[d[i] + ch], acc[i]);
        }
    }
    let np = np4 * 4u;
    for (var i = 0u; i < LQ; i++) {
        let qi = pb * LQ + i;
        if (qi < np4) {
            for (var j = 0u; j < 4u; j++) {
                cols_w[k * np + qi * 4u + j] = acc[i][j];
            }
        }
    }
}

// ---------------------------------------------------------------- GPU variants (workgroup memory)
//
// Every GPU tile product is one loop over a GEMM view C[m][n] = sum_k A[m][k] B[k][n] of the
// convolution, its operands read through `tile_a` / `tile_b` for the product's kind:
//
//   KIND_FORWARD     y      A = W [co][(ci,ky,kx)]          B = patches [(ci,ky,kx)][(n,oy,ox)]
//   KIND_INPUT       dx     A = W taps [ci][(co,ky,kx)]     B = dy taps [(co,ky,kx)][(n,iy,ix)]
//   KIND_INPUT_COLS  dcols  A = W^T [(ci,ky,kx)][co]        B = dy [co][(n,oy,ox)]
//   KIND_WEIGHT      dW     A = dy [co][(n,oy,ox)]          B = patches^T [(n,oy,ox)][(ci,ky,kx)]
//
// (a tap that hits no output or the padding reads 0). Three tile forms of the one loop: 16x16
// outputs per workgroup, one per invocation, slices 32 deep (`tile_sum`: many workgroups for small
// layers), 32x32 outputs, 2x2 per invocation, slices 16 deep (`tile_sum_2x2`: a quarter of the
// staged loads and index arithmetic per output, for layers with many tiles), and 64x64 outputs, 4x4
// per invocation, slices 8 deep (`tile_sum_4x4`: half the 2x2 form's again, for layers with many
// more). All add each output's terms over k in order, one fma each (a slice's zero padding adds
// +0), so the three forms give the same bits. Every tile entry point binds x, weight and dy (the
// operands of all kinds; the host binds an operand the kind does not read to one it does).

const KIND_FORWARD: u32 = 0u;
const KIND_INPUT: u32 = 1u;
const KIND_INPUT_COLS: u32 = 2u;
const KIND_WEIGHT: u32 = 3u;

var<workgroup> a_tile: array<f32, 544>; // [k][m], rows padded by one against bank conflicts
var<workgroup> b_tile: array<f32, 544>; // [k][n]

// Rows (m) and columns (n) of the product `kind`; its depth is the caller's k_end.
fn tile_rows(kind: u32) -> u32 {
    switch kind {
        case 0u, 3u: {
            return cp.c_out;
        }
        case 1u: {
            return cp.c_in;
        }
        default: {
            return cp.c_in * cp.kh * cp.kw;
        }
    }
}

fn tile_cols(kind: u32) -> u32 {
    switch kind {
        case 1u: {
            return cp.batch * cp.h * cp.w;
        }
        case 3u: {
            return cp.c_in * cp.kh * cp.kw;
        }
        default: {
            return cp.batch * cp.oh * cp.ow;
        }
    }
}

// X at patch row k = (ci, ky, kx) and output position p = (n, oy, ox).
fn patch_at(k: u32, p: u32) -> f32 {
    let khw = cp.kh * cp.kw;
    let ohw = cp.oh * cp.ow;
    let rem = k % khw;
    let r2 = p % ohw;
    return x_at(p / ohw, k / khw,
                i32((r2 / cp.ow) * cp.stride + rem / cp.kw) - i32(cp.pad),
                i32((r2 % cp.ow) * cp.stride + rem % cp.kw) - i32(cp.pad));
}

// A[m][k] of the product `kind`, 0 past its rows or k_end.
fn tile_a(kind: u32, m: u32, k: u32, k_end: u32) -> f32 {
    if (m >= tile_rows(kind) || k >= k_end) {
        return 0.0;
    }
    let khw = cp.kh * cp.kw;
    let kdim = cp.c_in * khw;
    switch kind {
        case 0u: {
            return weight[m * kdim + k];
        }
        case 1u: {
            return weight[(k / khw) * kdim + m * khw + k % khw];
        }
        case 2u: {
            return weight[k * kdim + m];
        }
        default: {
            let ohw = cp.oh * cp.ow;
            return dy[((k / ohw) * cp.c_out + m) * ohw + k % ohw];
        }
    }
}

// B[k][n] of the product `kind`, 0 past its columns or k_end.
fn tile_b(kind: u32, k: u32, n: u32, k_end: u32) -> f32 {
    if (k >= k_end || n >= tile_cols(kind)) {
        return 0.0;
    }
    switch kind {
        case 0u: {
            return patch_at(k, n);
        }
        case 1u: {
            let khw = cp.kh * cp.kw;
            let hw = cp.h * cp.w;
            let rem = k % khw;
            let r2 = n % hw;
            return dy_from(n / hw, k / khw, r2 / cp.w, r2 % cp.w, rem / cp.kw, rem % cp.kw);
        }
        case 2u: {
            let ohw = cp.oh * cp.ow;
            return dy[((n / ohw) * cp.c_out + k) * ohw + n % ohw];
        }
        default: {
            return patch_at(n, k);
        }
    }
}

// Stages slice [k0, k0 + tk) of the product `kind` for the tile at (row0, col0): A as a_tile[k][m]
// (ts x tk) and B as b_tile[k][n] (tk x ts), two elements of each per invocation (ts tk = 512; rows
// of ts + 1, at most 8 x 65 = 520 of the 544). Neighbouring invocations read neighbouring
// addresses: A along k (along m for KIND_INPUT_COLS, whose A is W^T), B along n.
fn stage(kind: u32, t: u32, row0: u32, col0: u32, k0: u32, k_end: u32, ts: u32, tk: u32) {
    for (var r = 0u; r < 2u; r++) {
        let e = t + r * 256u;
        var am = e / tk;
        var ak = e % tk;
        if (kind == KIND_INPUT_COLS) {
            am = e % ts;
            ak = e / ts;
        }
        a_tile[ak * (ts + 1u) + am] = tile_a(kind, row0 + am, k0 + ak, k_end);
        let bk = e / ts;
        let bn = e % ts;
        b_tile[bk * (ts + 1u) + bn] = tile_b(kind, k0 + bk, col0 + bn, k_end);
    }
}

// The 16x16 form: output (row0 + lid.y, col0 + lid.x), summed over k in [k_begin, k_end).
fn tile_sum(kind: u32, lid: vec3<u32>, row0: u32, col0: u32, k_begin: u32, k_end: u32) -> f32 {
    let t = lid.y * 16u + lid.x;
    var acc = 0.0;
    for (var k0 = k_begin; k0 < k_end; k0 += 32u) {
        stage(kind, t, row0, col0, k0, k_end, 16u, 32u);
        workgroupBarrier();
        for (var kk = 0u; kk < 32u; kk++) {
            acc = fma(a_tile[kk * 17u + lid.y], b_tile[kk * 17u + lid.x], acc);
        }
        workgroupBarrier();
    }
    return acc;
}

// The 32x32 form: outputs (row0 + lid.y + 16 i, col0 + lid.x + 16 j) in component 2 i + j.
fn tile_sum_2x2(kind: u32, lid: vec3<u32>, row0: u32, col0: u32, k_begin: u32,
                k_end: u32) -> vec4<f32> {
    let t = lid.y * 16u + lid.x;
    var acc = vec4<f32>(0.0);
    for (var k0 = k_begin; k0 < k_end; k0 += 16u) {
        stage(kind, t, row0, col0, k0, k_end, 32u, 16u);
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk++) {
            let a0 = a_tile[kk * 33u + lid.y];
            let a1 = a_tile[kk * 33u + lid.y + 16u];
            let b0 = b_tile[kk * 33u + lid.x];
            let b1 = b_tile[kk * 33u + lid.x + 16u];
            acc = fma(vec4<f32>(a0, a0, a1, a1), vec4<f32>(b0, b1, b0, b1), acc);
        }
        workgroupBarrier();
    }
    return acc;
}

// The 64x64 form: outputs (row0 + lid.y + 16 i, col0 + lid.x + 16 j) in element 4 i + j.
fn tile_sum_4x4(kind: u32, lid: vec3<u32>, row0: u32, col0: u32, k_begin: u32,
                k_end: u32) -> array<f32, 16> {
    let t = lid.y * 16u + lid.x;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = k_begin; k0 < k_end; k0 += 8u) {
        stage(kind, t, row0, col0, k0, k_end, 64u, 8u);
        workgroupBarrier();
        for (var kk = 0u; kk < 8u; kk++) {
            let r = kk * 65u;
            let b = vec4<f32>(b_tile[r + lid.x], b_tile[r + lid.x + 16u],
                              b_tile[r + lid.x + 32u], b_tile[r + lid.x + 48u]);
            for (var i = 0u; i < 4u; i++) {
                acc[i] = fma(vec4<f32>(a_tile[r + lid.y + 16u * i]), b, acc[i]);
            }
        }
        workgroupBarrier();
    }
    var out: array<f32, 16>;
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            out[4u * i + j] = acc[i][j];
        }
    }
    return out;
}

// The tile of workgroup `wid` in a grid of ts x ts tiles over rows x cols (folded 1-D grid):
// (row0, col0), or (-1) past the last tile.
fn tile_origin(wid: vec3<u32>, nwg: vec3<u32>, rows: u32, cols: u32, ts: u32) -> vec2<i32> {
    let tiles_n = (cols + ts - 1u) / ts;
    let tiles_m = (rows + ts - 1u) / ts;
    let tile = wid.x + wid.y * nwg.x;
    if (tile >= tiles_n * tiles_m) {
        return vec2<i32>(-1);
    }
    return vec2<i32>(i32((tile / tiles_n) * ts), i32((tile % tiles_n) * ts));
}

// The outputs of one invocation: 1 (ts 16), 2x2 (ts 32) or 4x4 (ts 64), (ts / 16)^2; output i
// at (out_m, out_n).
fn tile_outputs(ts: u32) -> u32 {
    return (ts / 16u) * (ts / 16u);
}

fn out_m(lid: vec3<u32>, o: vec2<i32>, ts: u32, i: u32) -> u32 {
    return u32(o.x) + lid.y + 16u * (i / (ts / 16u));
}

fn out_n(lid: vec3<u32>, o: vec2<i32>, ts: u32, i: u32) -> u32 {
    return u32(o.y) + lid.x + 16u * (i % (ts / 16u));
}

// The sums of one invocation for the product `kind` (the first `tile_outputs` elements).
fn tile_sums(kind: u32, lid: vec3<u32>, o: vec2<i32>, ts: u32, k_begin: u32,
             k_end: u32) -> array<f32, 16> {
    if (ts == 64u) {
        return tile_sum_4x4(kind, lid, u32(o.x), u32(o.y), k_begin, k_end);
    }
    var out: array<f32, 16>;
    if (ts == 32u) {
        let v = tile_sum_2x2(kind, lid, u32(o.x), u32(o.y), k_begin, k_end);
        out[0] = v.x;
        out[1] = v.y;
        out[2] = v.z;
        out[3] = v.w;
    } else {
        out[0] = tile_sum(kind, lid, u32(o.x), u32(o.y), k_begin, k_end);
    }
    return out;
}

// y: the forward on a ts x ts tile (reads x, weight, bias; writes y).
fn forward_tile(lid: vec3<u32>, wid: vec3<u32>, nwg: vec3<u32>, ts: u32) {
    let ohw = cp.oh * cp.ow;
    let np = cp.batch * ohw;
    let o = tile_origin(wid, nwg, cp.c_out, np, ts);
    if (o.x < 0) {
        return;
    }
    let v = tile_sums(KIND_FORWARD, lid, o, ts, 0u, cp.c_in * cp.kh * cp.kw);
    for (var i = 0u; i < tile_outputs(ts); i++) {
        let co = out_m(lid, o, ts, i);
        let p = out_n(lid, o, ts, i);
        if (co < cp.c_out && p < np) {
            var bv = 0.0;
            if (cp.has_bias != 0u) {
                bv = bias[co];
            }
            y[((p / ohw) * cp.c_out + co) * ohw + p % ohw] = v[i] + bv;
        }
    }
}

// Reads x, weight, bias; writes y. GEMM view: rows = output channels, columns = output positions
// (n, oy, ox), k = (ci, ky, kx).
@compute @workgroup_size(16, 16, 1)
fn conv_forward_tiled(@builtin(local_invocation_id) lid: vec3<u32>,
                      @builtin(workgroup_id) wid: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>) {
    forward_tile(lid, wid, nwg, 16u);
}

// `conv_forward_tiled` on 32x32 tiles, 2x2 outputs per invocation. Reads x, weight, bias; writes y.
@compute @workgroup_size(16, 16, 1)
fn conv_forward_tiled_2x2(@builtin(local_invocation_id) lid: vec3<u32>,
                          @builtin(workgroup_id) wid: vec3<u32>,
                          @builtin(num_workgroups) nwg: vec3<u32>) {
    forward_tile(lid, wid, nwg, 32u);
}

// `conv_forward_tiled` on 64x64 tiles, 4x4 outputs per invocation. Reads x, weight, bias; writes y.
@compute @workgroup_size(16, 16, 1)
fn conv_forward_tiled_4x4(@builtin(local_invocation_id) lid: vec3<u32>,
                          @builtin(workgroup_id) wid: vec3<u32>,
                          @builtin(num_workgroups) nwg: vec3<u32>) {
    forward_tile(lid, wid, nwg, 64u);
}

// dx: the implicit input gradient on a ts x ts tile (reads dy, weight; writes dx).
fn input_tile(lid: vec3<u32>, wid: vec3<u32>, nwg: vec3<u32>, ts: u32) {
    let hw = cp.h * cp.w;
    let nq = cp.batch * hw;
    let o = tile_origin(wid, nwg, cp.c_in, nq, ts);
    if (o.x < 0) {
        return;
    }
    let v = tile_sums(KIND_INPUT, lid, o, ts, 0u, cp.c_out * cp.kh * cp.kw);
    for (var i = 0u; i < tile_outputs(ts); i++) {
        let ci = out_m(lid, o, ts, i);
        let q = out_n(lid, o, ts, i);
        if (ci < cp.c_in && q < nq) {
            dx[((q / hw) * cp.c_in + ci) * hw + q % hw] = v[i];
        }
    }
}

// Reads dy, weight; writes dx. GEMM view: rows = input channels, columns = input positions
// (n, iy, ix), k = (co, ky, kx) (taps that hit no output read 0).
@compute @workgroup_size(16, 16, 1)
fn conv_backward_input_tiled(@builtin(local_invocation_id) lid: vec3<u32>,
                             @builtin(workgroup_id) wid: vec3<u32>,
                             @builtin(num_workgroups) nwg: vec3<u32>) {
    input_tile(lid, wid, nwg, 16u);
}

// `conv_backward_input_tiled` on 32x32 tiles, 2x2 outputs per invocation. Reads dy, weight; writes dx.
@compute @workgroup_size(16, 16, 1)
fn conv_backward_input_tiled_2x2(@builtin(local_invocation_id) lid: vec3<u32>,
                                 @builtin(workgroup_id) wid: vec3<u32>,
                                 @builtin(num_workgroups) nwg: vec3<u32>) {
    input_tile(lid, wid, nwg, 32u);
}

// `conv_backward_input_tiled` on 64x64 tiles, 4x4 outputs per invocation. Reads dy, weight;
// writes dx.
@compute @workgroup_size(16, 16, 1)
fn conv_backward_input_tiled_4x4(@builtin(local_invocation_id) lid: vec3<u32>,
                                 @builtin(workgroup_id) wid: vec3<u32>,
                                 @builtin(num_workgroups) nwg: vec3<u32>) {
    input_tile(lid, wid, nwg, 64u);
}

const RED: u32 = 64u;    // invocations per reduction workgroup
const RED_W: u32 = 256u; // invocations per wide reduction workgroup
var<workgroup> red: array<f32, 256>;

// Fixed-order tree sum of red[0..lanes] into red[0] (lanes RED or RED_W, the workgroup's size;
// all its invocations call it).
fn tree_reduce(t: u32, lanes: u32) {
    for (var half = lanes / 2u; half > 0u; half = half / 2u) {
        workgroupBarrier();
        if (t < half) {
            red[t] = red[t] + red[t + half];
        }
    }
    workgroupBarrier();
}

// Invocation t's share of weight element o's gradient: positions p = t, t + lanes, ... in order;
// with `with_bias`, also its share of channel co's bias gradient: the dy values it reads, summed
// in the same order (y of the result).
fn weight_grad_part(o: u32, t: u32, lanes: u32, with_bias: bool) -> vec2<f32> {
    let khw = cp.kh * cp.kw;
    let cols = cp.c_in * khw;
    let co = o / cols;
    let k = o % cols;
    let ci = k / khw;
    let ky = (k % khw) / cp.kw;
    let kx = k % cp.kw;
    let ohw = cp.oh * cp.ow;
    let np = cp.batch * ohw;
    var s = 0.0;
    var b = 0.0;
    for (var p = t; p < np; p += lanes) {
        let n = p / ohw;
        let r = p % ohw;
        let iy = i32((r / cp.ow) * cp.stride + ky) - i32(cp.pad);
        let ix = i32((r % cp.ow) * cp.stride + kx) - i32(cp.pad);
        let g = dy[(n * cp.c_out + co) * ohw + r];
        s = fma(g, x_at(n, ci, iy, ix), s);
        if (with_bias) {
            b = b + g;
        }
    }
    return vec2<f32>(s, b);
}

// Invocation t's share of channel co's bias gradient: dy[n][co][r] for r = t, t + lanes, ...
// over n in order.
fn bias_grad_part(co: u32, t: u32, lanes: u32) -> f32 {
    let ohw = cp.oh * cp.ow;
    var s = 0.0;
    for (var n = 0u; n < cp.batch; n++) {
        let base = (n * cp.c_out + co) * ohw;
        for (var r = t; r < ohw; r += lanes) {
            s = s + dy[base + r];
        }
    }
    return s;
}

// The weight-gradient element of workgroup `wid`, summed by `lanes` invocations: invocation t
// sums positions p = t, t + lanes, ... (coalesced), then a fixed-order tree sum into dw. With
// cp.has_bias, the workgroup of each channel's first weight element (ci, ky, kx all 0) also
// writes the channel's bias gradient db[co], from the dy it reads (`weight_grad_part`), by a
// second tree sum: no pass of its own over dy (a GPU's `conv_bias_backward_wide` ran 20
// workgroups over LeNet-5's conv1, 0.035 ms on an H200).
fn weight_grad_reduce(lid: vec3<u32>, wid: vec3<u32>, nwg: vec3<u32>, lanes: u32) {
    let o = wid.x + wid.y * nwg.x;
    let cols = cp.c_in * cp.kh * cp.kw;
    if (o >= cp.c_out * cols) {
        return;
    }
    let with_bias = cp.has_bias != 0u && o % cols == 0u;
    let part = weight_grad_part(o, lid.x, lanes, with_bias);
    red[lid.x] = part.x;
    tree_reduce(lid.x, lanes);
    if (lid.x == 0u) {
        dw[o] = red[0];
    }
    if (with_bias) {
        workgroupBarrier();
        red[lid.x] = part.y;
        tree_reduce(lid.x, lanes);
        if (lid.x == 0u) {
            db[o / cols] = red[0];
        }
    }
}

// The bias-gradient element of workgroup `wid` (a channel), summed by `lanes` invocations:
// invocation t sums dy[n][co][r] for r = t, t + lanes, ... over n in order, then a fixed-order
// tree sum into db.
fn bias_grad_reduce(lid: vec3<u32>, wid: vec3<u32>, nwg: vec3<u32>, lanes: u32) {
    let co = wid.x + wid.y * nwg.x;
    if (co >= cp.c_out) {
        return;
    }
    red[lid.x] = bias_grad_part(co, lid.x, lanes);
    tree_reduce(lid.x, lanes);
    if (lid.x == 0u) {
        db[co] = red[0];
    }
}

// Reads dy, x; writes dw (and, with cp.has_bias, db: `weight_grad_reduce`). One 64-invocation
// workgroup per weight element (co, ci, ky, kx).
@compute @workgroup_size(64, 1, 1)
fn conv_backward_weight_split(@builtin(local_invocation_id) lid: vec3<u32>,
                              @builtin(workgroup_id) wid: vec3<u32>,
                              @builtin(num_workgroups) nwg: vec3<u32>) {
    weight_grad_reduce(lid, wid, nwg, RED);
}

// `conv_backward_weight_split` with 256 invocations per weight element: for long sums (a GPU
// layer over many positions, LeNet-5's conv1: 36,864 per weight, 576 per invocation at 64).
// Reads dy, x; writes dw (and, with cp.has_bias, db).
@compute @workgroup_size(256, 1, 1)
fn conv_backward_weight_split_wide(@builtin(local_invocation_id) lid: vec3<u32>,
                                   @builtin(workgroup_id) wid: vec3<u32>,
                                   @builtin(num_workgroups) nwg: vec3<u32>) {
    weight_grad_reduce(lid, wid, nwg, RED_W);
}

// Reads dy; writes db. One 64-invocation workgroup per output channel.
@compute @workgroup_size(64, 1, 1)
fn conv_bias_backward(@builtin(local_invocation_id) lid: vec3<u32>,
                      @builtin(workgroup_id) wid: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>) {
    bias_grad_reduce(lid, wid, nwg, RED);
}

// `conv_bias_backward` with 256 invocations per channel (long sums on GPUs). Reads dy; writes db.
@compute @workgroup_size(256, 1, 1)
fn conv_bias_backward_wide(@builtin(local_invocation_id) lid: vec3<u32>,
                           @builtin(workgroup_id) wid: vec3<u32>,
                           @builtin(num_workgroups) nwg: vec3<u32>) {
    bias_grad_reduce(lid, wid, nwg, RED_W);
}

// ------------------------------------------------ GPU forms of the patch-matrix products
//
// Where most of the implicit input gradient's taps fall outside the output (an unpadded conv on a
// small image: LeNet-5's conv2 reads 44 % useful taps, and its 20 input channels fill 20 of 32
// tile rows), GPUs take the patch-matrix route too: `conv_backward_input_cols_tiled` writes dcols
// = W^T dy with no wasted taps, then `conv_col2im` gathers dx. Its sums are those of
// `conv_backward_input_cols` (over co in order, one fma each), so the two paths give the same
// bits. The weight gradient's GPU form over many weights, `conv_backward_weight_tiled`, is a
// tile product whose sum over positions is cut into `splits` fixed runs, each written to its own
// slice of a partial buffer, then `conv_weight_parts_sum` adds the slices in order.

// dcols on a ts x ts tile (reads dy, weight; writes cols_w).
fn input_cols_tile(lid: vec3<u32>, wid: vec3<u32>, nwg: vec3<u32>, ts: u32) {
    let np = cp.batch * cp.oh * cp.ow;
    let kdim = cp.c_in * cp.kh * cp.kw;
    let o = tile_origin(wid, nwg, kdim, np, ts);
    if (o.x < 0) {
        return;
    }
    let v = tile_sums(KIND_INPUT_COLS, lid, o, ts, 0u, cp.c_out);
    for (var i = 0u; i < tile_outputs(ts); i++) {
        let k = out_m(lid, o, ts, i);
        let q = out_n(lid, o, ts, i);
        if (k < kdim && q < np) {
            cols_w[k * np + q] = v[i];
        }
    }
}

// Reads dy, weight; writes cols_w = dcols. GEMM view: rows = patch rows k = (ci, ky, kx),
// columns = positions P = (n, oy, ox), sum over co.
@compute @workgroup_size(16, 16, 1)
fn conv_backward_input_cols_tiled(@builtin(local_invocation_id) lid: vec3<u32>,
                                  @builtin(workgroup_id) wid: vec3<u32>,
                                  @builtin(num_workgroups) nwg: vec3<u32>) {
    input_cols_tile(lid, wid, nwg, 16u);
}

// `conv_backward_input_cols_tiled` on 32x32 tiles, 2x2 outputs per invocation. Reads dy, weight;
// writes cols_w = dcols.
@compute @workgroup_size(16, 16, 1)
fn conv_backward_input_cols_tiled_2x2(@builtin(local_invocation_id) lid: vec3<u32>,
                                      @builtin(workgroup_id) wid: vec3<u32>,
                                      @builtin(num_workgroups) nwg: vec3<u32>) {
    input_cols_tile(lid, wid, nwg, 32u);
}

// `conv_backward_input_cols_tiled` on 64x64 tiles, 4x4 outputs per invocation. Reads dy, weight;
// writes cols_w = dcols.
@compute @workgroup_size(16, 16, 1)
fn conv_backward_input_cols_tiled_4x4(@builtin(local_invocation_id) lid: vec3<u32>,
                                      @builtin(workgroup_id) wid: vec3<u32>,
                                      @builtin(num_workgroups) nwg: vec3<u32>) {
    input_cols_tile(lid, wid, nwg, 64u);
}

@group(0) @binding(17) var<storage, read_write> parts: array<f32>;
@group(0) @binding(18) var<storage, read> parts_r: array<f32>;

// Split z's sums of dW on a ts x ts tile: workgroup (tile, z) of a grid of tiles x splits
// (folded 1-D, split-major) sums positions [z run, (z + 1) run) in order (`run`, `splits`:
// ConvParams) and writes parts[z][co][k] (reads dy, x).
fn weight_tile(lid: vec3<u32>, wid: vec3<u32>, nwg: vec3<u32>, ts: u32) {
    let np = cp.batch * cp.oh * cp.ow;
    let kdim = cp.c_in * cp.kh * cp.kw;
    let tiles = ((cp.c_out + ts - 1u) / ts) * ((kdim + ts - 1u) / ts);
    let g = wid.x + wid.y * nwg.x;
    let z = g / tiles;
    if (z >= cp.splits) {
        return;
    }
    let o = tile_origin(vec3<u32>(g % tiles, 0u, 0u), vec3<u32>(tiles, 1u, 1u), cp.c_out, kdim,
                        ts);
    let v = tile_sums(KIND_WEIGHT, lid, o, ts, z * cp.run, min((z + 1u) * cp.run, np));
    for (var i = 0u; i < tile_outputs(ts); i++) {
        let co = out_m(lid, o, ts, i);
        let k = out_n(lid, o, ts, i);
        if (co < cp.c_out && k < kdim) {
            parts[(z * cp.c_out + co) * kdim + k] = v[i];
        }
    }
}

// Reads dy, x; writes parts (or dw itself, bound there, over one run). GEMM view: rows = filters
// co, columns = patch rows k, sum over positions P.
@compute @workgroup_size(16, 16, 1)
fn conv_backward_weight_tiled(@builtin(local_invocation_id) lid: vec3<u32>,
                              @builtin(workgroup_id) wid: vec3<u32>,
                              @builtin(num_workgroups) nwg: vec3<u32>) {
    weight_tile(lid, wid, nwg, 16u);
}

// `conv_backward_weight_tiled` on 32x32 tiles, 2x2 outputs per invocation. Reads dy, x; writes parts
// (or dw itself, bound there, over one run).
@compute @workgroup_size(16, 16, 1)
fn conv_backward_weight_tiled_2x2(@builtin(local_invocation_id) lid: vec3<u32>,
                                  @builtin(workgroup_id) wid: vec3<u32>,
                                  @builtin(num_workgroups) nwg: vec3<u32>) {
    weight_tile(lid, wid, nwg, 32u);
}

// `conv_backward_weight_tiled` on 64x64 tiles, 4x4 outputs per invocation. Reads dy, x; writes
// parts (or dw itself, bound there, over one run).
@compute @workgroup_size(16, 16, 1)
fn conv_backward_weight_tiled_4x4(@builtin(local_invocation_id) lid: vec3<u32>,
                                  @builtin(workgroup_id) wid: vec3<u32>,
                                  @builtin(num_workgroups) nwg: vec3<u32>) {
    weight_tile(lid, wid, nwg, 64u);
}

// Reads parts_r; writes dw. dw[o] = parts[0][o] + parts[1][o] + ..., in order.
@compute @workgroup_size(64, 1, 1)
fn conv_weight_parts_sum(@builtin(global_invocation_id) gid: vec3<u32>,
                         @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = gid.x + gid.y * nwg.x * 64u;
    let n = cp.c_out * cp.c_in * cp.kh * cp.kw;
    if (o >= n) {
        return;
    }
    var s = parts_r[o];
    for (var z = 1u; z < cp.splits; z++) {
        s = s + parts_r[z * n + o];
    }
    dw[o] = s;
}

// ==== Subgroup forms (compiled only on CPU adapters with 8-lane subgroups) ====
//
// lavapipe runs a workgroup as SIMD groups of 8 lanes and issues every load of a storage
// buffer one lane at a time, a load to the same address in all 8 lanes included. The cols
// products load the 8 filters' (or patch rows') values of their workgroup alike in every lane:
// here each lane of a subgroup loads one of them and `subgroupBroadcast` (a register move)
// hands them round. The same values and fma chains: the same bits. Lanes past the columns run
// the loops too (their loads clamped: their shares feed the others) and store nothing; a
// subgroup all past them returns (`sl`: the lane's index in its subgroup of 8 consecutive lanes).

// `conv_forward_cols` with the weights shared: per k, lane l loads filter co0 + l's (clamped),
// 1 load instead of 8.
@compute @workgroup_size(64, 1, 1)
fn conv_forward_cols_sg(@builtin(local_invocation_id) lid: vec3<u32>,
                        @builtin(workgroup_id) wid: vec3<u32>,
                        @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(subgroup_invocation_id) sl: u32) {
    let np4 = cp.batch * cp.oh * cp.ow / 4u;
    let p_blocks = (np4 + 1u) / 2u;
    let p_groups = (p_blocks + 63u) / 64u;
    let co_blocks = (cp.c_out + CB - 1u) / CB;
    let g = wid.x + wid.y * nwg.x;
    if (g >= p_groups * co_blocks) {
        return;
    }
    let pb = (g / co_blocks) * 64u + lid.x;
    if (pb - sl >= p_blocks) {
        return; // the whole subgroup is past the columns
    }
    let co0 = (g % co_blocks) * CB;
    let q0 = pb * 2u;
    let l0 = min(q0, np4 - 1u);
    let l1 = min(q0 + 1u, np4 - 1u);
    let kdim = cp.c_in * cp.kh * cp.kw;
    let w_at = min(co0 + sl, cp.c_out - 1u) * kdim;
    var acc: array<vec4<f32>, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    for (var k = 0u; k < kdim; k++) {
        let b0 = cols4[k * np4 + l0];
        let b1 = cols4[k * np4 + l1];
        let wl = weight[w_at + k];
        cols_fma8(&acc, wl, b0, b1);
    }
    if (pb < p_blocks) {
        forward_cols_store(&acc, co0, q0, np4);
    }
}

// The 8 rows' multiply-adds of one k of a cols product: row i's value from lane i's `wl`.
fn cols_fma8(acc: ptr<function, array<vec4<f32>, 16>>, wl: f32, b0: vec4<f32>, b1: vec4<f32>) {
    let w0 = vec4<f32>(subgroupBroadcast(wl, 0u));
    let w1 = vec4<f32>(subgroupBroadcast(wl, 1u));
    let w2 = vec4<f32>(subgroupBroadcast(wl, 2u));
    let w3 = vec4<f32>(subgroupBroadcast(wl, 3u));
    let w4 = vec4<f32>(subgroupBroadcast(wl, 4u));
    let w5 = vec4<f32>(subgroupBroadcast(wl, 5u));
    let w6 = vec4<f32>(subgroupBroadcast(wl, 6u));
    let w7 = vec4<f32>(subgroupBroadcast(wl, 7u));
    (*acc)[0] = fma(w0, b0, (*acc)[0]);
    (*acc)[1] = fma(w0, b1, (*acc)[1]);
    (*acc)[2] = fma(w1, b0, (*acc)[2]);
    (*acc)[3] = fma(w1, b1, (*acc)[3]);
    (*acc)[4] = fma(w2, b0, (*acc)[4]);
    (*acc)[5] = fma(w2, b1, (*acc)[5]);
    (*acc)[6] = fma(w3, b0, (*acc)[6]);
    (*acc)[7] = fma(w3, b1, (*acc)[7]);
    (*acc)[8] = fma(w4, b0, (*acc)[8]);
    (*acc)[9] = fma(w4, b1, (*acc)[9]);
    (*acc)[10] = fma(w5, b0, (*acc)[10]);
    (*acc)[11] = fma(w5, b1, (*acc)[11]);
    (*acc)[12] = fma(w6, b0, (*acc)[12]);
    (*acc)[13] = fma(w6, b1, (*acc)[13]);
    (*acc)[14] = fma(w7, b0, (*acc)[14]);
    (*acc)[15] = fma(w7, b1, (*acc)[15]);
}

// `conv_backward_input_cols` with the weights shared: per filter co, lane l loads patch row
// k0 + l's weight (clamped), 1 load instead of 8.
@compute @workgroup_size(64, 1, 1)
fn conv_backward_input_cols_sg(@builtin(local_invocation_id) lid: vec3<u32>,
                               @builtin(workgroup_id) wid: vec3<u32>,
                               @builtin(num_workgroups) nwg: vec3<u32>,
                               @builtin(subgroup_invocation_id) sl: u32) {
    let ohw = cp.oh * cp.ow;
    let np4 = cp.batch * ohw / 4u;
    let p_blocks = (np4 + 1u) / 2u;
    let p_groups = (p_blocks + 63u) / 64u;
    let kdim = cp.c_in * cp.kh * cp.kw;
    let k_blocks = (kdim + CB - 1u) / CB;
    let g = wid.x + wid.y * nwg.x;
    if (g >= p_groups * k_blocks) {
        return;
    }
    let pb = (g % p_groups) * 64u + lid.x;
    if (pb - sl >= p_blocks) {
        return; // the whole subgroup is past the columns
    }
    let k0 = (g / p_groups) * CB;
    let q0 = pb * 2u;
    let l0 = min(q0, np4 - 1u);
    let l1 = min(q0 + 1u, np4 - 1u);
    let ohw4 = ohw / 4u;
    let d0 = (l0 / ohw4) * cp.c_out * ohw4 + l0 % ohw4;
    let d1 = (l1 / ohw4) * cp.c_out * ohw4 + l1 % ohw4;
    let kl = min(k0 + sl, kdim - 1u);
    var acc: array<vec4<f32>, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    for (var co = 0u; co < cp.c_out; co++) {
        let b0 = dy4[d0 + co * ohw4];
        let b1 = dy4[d1 + co * ohw4];
        let wl = weight[co * kdim + kl];
        cols_fma8(&acc, wl, b0, b1);
    }
    if (pb < p_blocks) {
        input_cols_store(&acc, k0, q0, np4, kdim);
    }
}

// `conv_backward_weight_cols` with dy shared: per (n, q), lane l loads filter co0 + l's vec4 of
// dy (clamped), 1 load instead of 8; the 4 patch rows' vec4 of cols per lane as there.
@compute @workgroup_size(32, 1, 1)
fn conv_backward_weight_cols_sg(@builtin(local_invocation_id) lid: vec3<u32>,
                                @builtin(workgroup_id) wid: vec3<u32>,
                                @builtin(num_workgroups) nwg: vec3<u32>,
                                @builtin(subgroup_invocation_id) sl: u32) {
    let kdim = cp.c_in * cp.kh * cp.kw;
    let k_blocks = (kdim + 3u) / 4u;
    let k_groups = (k_blocks + 31u) / 32u;
    let co_blocks = (cp.c_out + CB - 1u) / CB;
    let g = wid.x + wid.y * nwg.x;
    if (g >= k_groups * co_blocks) {
        return;
    }
    let kb = (g % k_groups) * 32u + lid.x;
    if (kb - sl >= k_blocks) {
        return; // the whole subgroup is past the patch rows
    }
    let k0 = kb * 4u;
    let co0 = (g / k_groups) * CB;
    let ohw4 = cp.oh * cp.ow / 4u;
    let np4 = cp.batch * ohw4;
    var cb: array<u32, 4>;
    for (var j = 0u; j < 4u; j++) {
        cb[j] = min(k0 + j, kdim - 1u) * np4;
    }
    let d_at = min(co0 + sl, cp.c_out - 1u) * ohw4;
    var acc: array<array<f32, 4>, 8>;
    for (var i = 0u; i < CB; i++) {
        for (var j = 0u; j < 4u; j++) {
            acc[i][j] = 0.0;
        }
    }
    for (var n = 0u; n < cp.batch; n++) {
        let dn = n * cp.c_out * ohw4;
        let pn = n * ohw4;
        for (var q = 0u; q < ohw4; q++) {
            var bv: array<vec4<f32>, 4>;
            for (var j = 0u; j < 4u; j++) {
                bv[j] = cols4[cb[j] + pn + q];
            }
            let gl = dy4[dn + d_at + q];
            var gv: array<vec4<f32>, 8>;
            gv[0] = subgroupBroadcast(gl, 0u);
            gv[1] = subgroupBroadcast(gl, 1u);
            gv[2] = subgroupBroadcast(gl, 2u);
            gv[3] = subgroupBroadcast(gl, 3u);
            gv[4] = subgroupBroadcast(gl, 4u);
            gv[5] = subgroupBroadcast(gl, 5u);
            gv[6] = subgroupBroadcast(gl, 6u);
            gv[7] = subgroupBroadcast(gl, 7u);
            for (var i = 0u; i < CB; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i][j] += dot(gv[i], bv[j]);
                }
            }
        }
    }
    if (kb < k_blocks) {
        weight_cols_store(&acc, co0, k0, kdim);
    }
}
