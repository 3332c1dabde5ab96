// optim.wgsl: optimisers over a whole parameter arena, one invocation per element, with
// PyTorch's semantics (METHOD.md section 5). Padding between tensors holds zeros in all arenas and
// stays zero. The learning rate and Adam's bias corrections come from the step's StepInfo.

// Keep in sync with `OptimParams` in src/kernels/optim.rs.
struct OptimParams {
    n: u32,
    momentum: f32,     // SGD
    weight_decay: f32,
    beta1: f32,        // Adam
    beta2: f32,
    eps: f32,
    one_minus_beta1: f32, // computed on the host in f64, as torch passes them
    one_minus_beta2: f32,
}

@group(0) @binding(0) var<uniform> op: OptimParams;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> moment1: array<f32>;
@group(0) @binding(4) var<storage, read_write> moment2: array<f32>;
@group(1) @binding(0) var<uniform> si: StepInfo;

fn elem(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// SGD with momentum (dampening 0, no Nesterov). Reads grad; updates param and moment1 (velocity):
//   g = grad + wd * p;  v = momentum * v + g  (v starts at 0, so the first step gives v = g);
//   p = p - lr * v  (`sgd_velocity`, shared with the fused products of gemm.wgsl).
@compute @workgroup_size(256, 1, 1)
fn sgd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = elem(gid, nwg);
    if (i >= op.n) {
        return;
    }
    sgd_at(i);
}

fn sgd_at(i: u32) {
    let p = param[i];
    let v = sgd_velocity(grad[i], p, moment1[i], op.momentum, op.weight_decay);
    moment1[i] = v;
    param[i] = p - si.lr * v;
}

// Ranges of the arena whose elements `sgd` updates (the rest were updated by fused products,
// `gemm_tn_sgd`): ranges[0] = R, then for r < R: ranges[1 + 2r] = the range's first index in the
// op.n elements of all ranges together (ascending from 0), ranges[2 + 2r] = its arena offset.
@group(0) @binding(7) var<storage, read> ranges: array<u32>;

// `sgd` over the elements the ranges list, one invocation per element (binary search of its range).
@compute @workgroup_size(256, 1, 1)
fn sgd_ranges(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = elem(gid, nwg);
    if (i >= op.n) {
        return;
    }
    var lo = 0u;
    var hi = ranges[0];
    while (hi - lo > 1u) {
        let mid = (lo + hi) / 2u;
        if (ranges[1u + 2u * mid] <= i) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    sgd_at(ranges[2u + 2u * lo] + (i - ranges[1u + 2u * lo]));
}

// Adam (bias-corrected, eps added after the square root). Reads grad; updates param, moment1 (m)
// and moment2 (v):
//   g = grad + wd * p;  m = m + (1 - b1) (g - m)  (torch's lerp_);  v = b2 v + (1 - b2) g^2;
//   both moments flushed (`flush_subnormal`: g^2 of a gradient below 1e-19 is subnormal);
//   p = p - step_size * m / (sqrt(v) / bc2_sqrt + eps),  step_size = lr / (1 - b1^t).
@compute @workgroup_size(256, 1, 1)
fn adam(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = elem(gid, nwg);
    if (i >= op.n) {
        return;
    }
    let p = param[i];
    var g = grad[i];
    if (op.weight_decay != 0.0) {
        g = g + op.weight_decay * p;
    }
    let m0 = moment1[i];
    let m = flush_subnormal(m0 + op.one_minus_beta1 * (g - m0));
    let v = flush_subnormal(op.beta2 * moment2[i] + op.one_minus_beta2 * g * g);
    moment1[i] = m;
    moment2[i] = v;
    let denom = sqrt(v) / si.adam_bc2_sqrt + op.eps;
    param[i] = p - si.adam_step_size * (m / denom);
}

// The divergence guard over the arenas (run once per log window, not per step).
@group(0) @binding(5) var<storage, read_write> partial: array<u32>;
@group(0) @binding(6) var<storage, read_write> stats: array<u32>;

const CHECK_WG: u32 = 256u;
var<workgroup> check_any: array<u32, 256>;

// NaN or +-inf: all exponent bits set (a bit test, immune to fast-math folding).
fn non_finite(x: f32) -> u32 {
    return select(0u, 1u, (bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u);
}

// `num_workgroups.x` workgroups of 256 stride over elements [0, n) of param, moment1 and (when it
// is as long as param) moment2; writes partial[workgroup] = 1 if any of them is NaN or infinite,
// else 0 (an OR in a fixed tree order). `grad` is bound but not read.
@compute @workgroup_size(256, 1, 1)
fn check_finite(@builtin(local_invocation_id) lid: vec3<u32>,
                @builtin(workgroup_id) wid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let with_m2 = arrayLength(&moment2) >= op.n;
    var bad = 0u;
    for (var i = wid.x * CHECK_WG + lid.x; i < op.n; i += nwg.x * CHECK_WG) {
        bad |= non_finite(param[i]) | non_finite(moment1[i]);
        if (with_m2) {
            bad |= non_finite(moment2[i]);
        }
    }
    check_any[lid.x] = bad;
    workgroupBarrier();
    for (var s = CHECK_WG / 2u; s > 0u; s = s / 2u) {
        if (lid.x < s) {
            check_any[lid.x] = check_any[lid.x] | check_any[lid.x + s];
        }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        partial[wid.x] = check_any[0];
    }
}

// One workgroup, after `check_finite`; here `op.n` is the number of partial flags. Reads
// partial[0, n); sets stats[5] = 1 (sticky until the host clears the stats) if any flag is set.
@compute @workgroup_size(256, 1, 1)
fn check_reduce(@builtin(local_invocation_id) lid: vec3<u32>) {
    var bad = 0u;
    for (var i = lid.x; i < op.n; i += CHECK_WG) {
        bad |= partial[i];
    }
    check_any[lid.x] = bad;
    workgroupBarrier();
    for (var s = CHECK_WG / 2u; s > 0u; s = s / 2u) {
        if (lid.x < s) {
            check_any[lid.x] = check_any[lid.x] | check_any[lid.x + s];
        }
        workgroupBarrier();
    }
    if (lid.x == 0u && check_any[0] != 0u) {
        stats[5] = 1u;
    }
}
