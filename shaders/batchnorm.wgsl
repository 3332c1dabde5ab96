// batchnorm.wgsl: batch normalisation over (batch, channels, spatial) inputs, PyTorch's
// BatchNorm1d (spatial = 1, input (N, C)) and BatchNorm2d (spatial = h w, input NCHW), its
// statistics, the running-statistics update and its gradients.
//
//   x, y, dy, dx (batch, channels, spatial)   element (n, c, r) at (n channels + c) spatial + r
//   gamma, beta, dgamma, dbeta, running_mean, running_var (channels)
//   stats (2, channels): [0][c] = mean_c, [1][c] = inv_std_c, written by the forward for the backward
//   Rows n < valid are the batch (valid = min(StepInfo.valid, batch)); rows n >= valid are the padding
//   of a short last batch: they are normalised like the others but enter no sum and get dx = 0.
//   m = valid spatial, the values per channel.
//
//   batch_stats    (training) mean_c = sum x / m, var_c = sum (x - mean_c)^2 / m (biased; two passes),
//                  inv_std_c = 1 / sqrt(var_c + eps); running_mean = momentum mean + (1 - momentum)
//                  running_mean, running_var = momentum var m / (m - 1) + (1 - momentum) running_var
//                  (PyTorch's momentum 0.1, unbiased running variance). With m = 1 (PyTorch refuses
//                  it; only a short last batch of one sample can get here) the running statistics are
//                  left as they are.
//   running_stats  (evaluation) mean_c = running_mean_c, inv_std_c = 1 / sqrt(running_var_c + eps)
//   forward        y = (x - mean_c) inv_std_c gamma_c + beta_c
//   backward_params  xhat = (x - mean_c) inv_std_c; dgamma_c = sum dy xhat; dbeta_c = sum dy
//   backward_input   training: dx = gamma_c inv_std_c (dy - dbeta_c / m - xhat dgamma_c / m)
//                    (= gamma inv_std / m (m dy - sum dy - xhat sum dy xhat), the batch statistics'
//                    dependence on x included); evaluation: dx = gamma_c inv_std_c dy
//
// Every entry point writes (never accumulates) every element of its outputs, without atomics. The
// per-channel sums run in one 256-invocation workgroup per channel: invocation t adds the channel's
// values p = t, t + 256, ... (p = n spatial + r) in order, then a fixed-order tree sum, so results
// are bit-deterministic. Grids are 1-D block counts folded into y past 65535 workgroups (`grid_1d`
// in src/kernels/mod.rs).

// Keep in sync with `BnParams` in src/kernels/batchnorm.rs.
struct BnParams {
    batch: u32,
    channels: u32,
    spatial: u32,
    train: u32,     // backward_input: 1 = batch statistics (training), 0 = running statistics
    eps: f32,
    momentum: f32,
    keep: f32,      // 1 - momentum, computed on the host in f64
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> bp: BnParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> stats_w: array<f32>;
@group(0) @binding(6) var<storage, read> stats: array<f32>;
@group(0) @binding(7) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(8) var<storage, read_write> running_var: array<f32>;
@group(0) @binding(9) var<storage, read> dy: array<f32>;
@group(0) @binding(10) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(11) var<storage, read_write> dbeta: array<f32>;
@group(0) @binding(12) var<storage, read_write> dx: array<f32>;
@group(0) @binding(13) var<storage, read> dgamma_r: array<f32>;
@group(0) @binding(14) var<storage, read> dbeta_r: array<f32>;
@group(1) @binding(0) var<uniform> si: StepInfo;

const RED: u32 = 256u; // invocations per reduction workgroup
var<workgroup> red_a: array<f32, 256>;
var<workgroup> red_b: array<f32, 256>;

// Fixed-order tree sums of red_a[0..256] into red_a[0] and red_b[0..256] into red_b[0] (all
// invocations of the workgroup call it; it ends with a barrier, so every invocation may read [0]).
fn tree_reduce2(t: u32) {
    for (var half = RED / 2u; half > 0u; half = half / 2u) {
        workgroupBarrier();
        if (t < half) {
            red_a[t] = red_a[t] + red_a[t + half];
            red_b[t] = red_b[t] + red_b[t + half];
        }
    }
    workgroupBarrier();
}

// Rows of the batch (the rest is padding).
fn valid_rows() -> u32 {
    return min(si.valid, bp.batch);
}

// Index in x (dy, ...) of value p = n spatial + r of channel c.
fn at(c: u32, p: u32) -> u32 {
    let n = p / bp.spatial;
    return (n * bp.channels + c) * bp.spatial + (p - n * bp.spatial);
}

// Training. Reads x (rows < valid); writes stats; updates running_mean and running_var. One
// workgroup per channel.
@compute @workgroup_size(256, 1, 1)
fn bn_batch_stats(@builtin(local_invocation_id) lid: vec3<u32>,
                  @builtin(workgroup_id) wid: vec3<u32>,
                  @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = wid.x + wid.y * nwg.x;
    if (c >= bp.channels) {
        return;
    }
    let m = valid_rows() * bp.spatial;
    let t = lid.x;
    var s = 0.0;
    for (var p = t; p < m; p += RED) {
        s = s + x[at(c, p)];
    }
    red_a[t] = s;
    red_b[t] = 0.0;
    tree_reduce2(t);
    let mean = red_a[0] / f32(max(m, 1u));
    // Everyone has read red_a[0] before it is overwritten.
    workgroupBarrier();
    var q = 0.0;
    for (var p = t; p < m; p += RED) {
        let d = x[at(c, p)] - mean;
        q = fma(d, d, q);
    }
    red_a[t] = q;
    tree_reduce2(t);
    if (t == 0u) {
        let sq = red_a[0];
        stats_w[c] = mean;
        stats_w[bp.channels + c] = 1.0 / sqrt(sq / f32(max(m, 1u)) + bp.eps);
        if (m > 1u) {
            running_mean[c] = bp.momentum * mean + bp.keep * running_mean[c];
            running_var[c] = bp.momentum * (sq / f32(m - 1u)) + bp.keep * running_var[c];
        }
    }
}

// Evaluation. Reads running_mean, running_var; writes stats. One invocation per channel.
@compute @workgroup_size(64, 1, 1)
fn bn_running_stats(@builtin(global_invocation_id) gid: vec3<u32>,
                    @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = gid.x + gid.y * nwg.x * 64u;
    if (c >= bp.channels) {
        return;
    }
    stats_w[c] = running_mean[c];
    stats_w[bp.channels + c] = 1.0 / sqrt(running_var[c] + bp.eps);
}

// Reads x, stats, gamma, beta; writes every y (padding rows included). One invocation per element.
@compute @workgroup_size(256, 1, 1)
fn bn_forward(@builtin(global_invocation_id) gid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= bp.batch * bp.channels * bp.spatial) {
        return;
    }
    let c = (i / bp.spatial) % bp.channels;
    y[i] = (x[i] - stats[c]) * stats[bp.channels + c] * gamma[c] + beta[c];
}

// Reads x, dy, stats (rows < valid); writes dgamma, dbeta. One workgroup per channel.
@compute @workgroup_size(256, 1, 1)
fn bn_backward_params(@builtin(local_invocation_id) lid: vec3<u32>,
                      @builtin(workgroup_id) wid: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = wid.x + wid.y * nwg.x;
    if (c >= bp.channels) {
        return;
    }
    let m = valid_rows() * bp.spatial;
    let mean = stats[c];
    let inv_std = stats[bp.channels + c];
    let t = lid.x;
    var sg = 0.0;
    var sgx = 0.0;
    for (var p = t; p < m; p += RED) {
        let i = at(c, p);
        let g = dy[i];
        sg = sg + g;
        sgx = fma(g, (x[i] - mean) * inv_std, sgx);
    }
    red_a[t] = sgx;
    red_b[t] = sg;
    tree_reduce2(t);
    if (t == 0u) {
        dgamma[c] = red_a[0];
        dbeta[c] = red_b[0];
    }
}

// Reads x, dy, stats, gamma, dgamma_r, dbeta_r (the sums bn_backward_params wrote); writes every
// dx (0 on padding rows). One invocation per element.
@compute @workgroup_size(256, 1, 1)
fn bn_backward_input(@builtin(global_invocation_id) gid: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    let cs = bp.channels * bp.spatial;
    if (i >= bp.batch * cs) {
        return;
    }
    if (i / cs >= valid_rows()) {
        dx[i] = 0.0;
        return;
    }
    let c = (i / bp.spatial) % bp.channels;
    let inv_std = stats[bp.channels + c];
    let scale = gamma[c] * inv_std;
    if (bp.train == 0u) {
        dx[i] = scale * dy[i];
        return;
    }
    let m = f32(valid_rows() * bp.spatial);
    let xhat = (x[i] - stats[c]) * inv_std;
    dx[i] = scale * (dy[i] - dbeta_r[c] / m - xhat * (dgamma_r[c] / m));
}
