// act.wgsl: element-wise activations and sums. n = ap.n elements, one invocation each.

// Keep in sync with `ActParams` in src/kernels/act.rs.
struct ActParams {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> ap: ActParams;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> src2: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// Reads src (x); writes dst = max(x, 0).
@compute @workgroup_size(256, 1, 1)
fn relu_forward(@builtin(global_invocation_id) gid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i < ap.n) {
        dst[i] = max(src[i], 0.0);
    }
}

// Reads src (dy) and src2 (y, the forward's output); writes dst = dy where y > 0, else 0.
@compute @workgroup_size(256, 1, 1)
fn relu_backward(@builtin(global_invocation_id) gid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i < ap.n) {
        dst[i] = select(0.0, src[i], src2[i] > 0.0);
    }
}

// Reads src (a) and src2 (b); writes dst = a + b (a residual sum, or two gradients meeting).
@compute @workgroup_size(256, 1, 1)
fn add(@builtin(global_invocation_id) gid: vec3<u32>,
       @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i < ap.n) {
        dst[i] = src[i] + src2[i];
    }
}
